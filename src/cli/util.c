/* Helpers shared by the vdisk verbs: qemu-img worded argument errors, -o option lists,
 * a JSON writer with qemu's key order and layout, the progress line, and image opening. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "util/iobuf.h"
#include "tools/engine-env.h"

/* ---- program name ------------------------------------------------------------------------ */

static const char *progname = "vdisk";
static const char *progname_verb;

const char *cli_progname(void)
{
    return progname;
}

void cli_set_progname(const char *name, const char *verb)
{
    progname = name;
    progname_verb = verb;
}

const char *cli_command_name(const char *verb)
{
    static char buf[64];
    if (progname_verb && !strcmp(progname_verb, verb)) {
        return progname;
    }
    snprintf(buf, sizeof(buf), "%s %s", progname, verb);
    return buf;
}

/* ---- allocation ------------------------------------------------------------------------ */

void *cli_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", cli_progname());
        abort();
    }
    return p;
}

void *cli_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", cli_progname());
        abort();
    }
    return p;
}

char *cli_xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", cli_progname());
        abort();
    }
    return p;
}

void *cli_alloc_io_buffer(size_t n)
{
    void *p = vd_io_buffer_alloc(n);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", cli_progname());
        abort();
    }
    return p;
}

void cli_qprintf(bool quiet, const char *fmt, ...)
{
    if (quiet) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

/* ---- errors ------------------------------------------------------------------------------ */

void cli_error_exit(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information\n", progname);
    exit(1);
}

void cli_missing_argument(const char *option)
{
    cli_error_exit("missing argument for option '%s'", option);
}

void cli_unrecognized_option(const char *option)
{
    cli_error_exit("unrecognized option '%s'", option);
}

void cli_bad_option(int c, char **argv)
{
    if (c == ':') {
        cli_missing_argument(argv[optind - 1]);
    }
    cli_unrecognized_option(argv[optind - 1]);
}

static void report_err(vd_error *err, const char *name, const char *prefix_fmt, va_list ap)
{
    fprintf(stderr, "%s: ", progname);
    if (prefix_fmt) {
        vfprintf(stderr, prefix_fmt, ap);
    }
    const char *msg = err ? vd_error_msg(err) : NULL;
    if (!msg || !*msg) {
        msg = "Unknown error";
    }
    size_t n = name ? strlen(name) : 0;
    if (n && !strncmp(msg, name, n) && msg[n] == ':' && msg[n + 1] == ' ') {
        msg += n + 2;
    }
    fprintf(stderr, "%s\n", msg);
    /* QEMU's tools print the hint QMP leaves out of an inconsistent bitmap's error. */
    static const char inconsistent[] = "is inconsistent and cannot be used";
    size_t ml = strlen(msg), il = sizeof(inconsistent) - 1;
    if (ml >= il && !strcmp(msg + ml - il, inconsistent)) {
        fprintf(stderr, "Try block-dirty-bitmap-remove to delete this bitmap from disk\n");
    }
    vd_error_free(err);
}

void cli_report_err(vd_error *err, const char *prefix_fmt, ...)
{
    va_list ap;
    va_start(ap, prefix_fmt);
    report_err(err, NULL, prefix_fmt, ap);
    va_end(ap);
}

void cli_report_err_for(vd_error *err, const char *name, const char *prefix_fmt, ...)
{
    va_list ap;
    va_start(ap, prefix_fmt);
    report_err(err, name, prefix_fmt, ap);
    va_end(ap);
}

/* ---- numbers and option lists ------------------------------------------------------------ */

int cli_cvtnum(const char *what, const char *value, int64_t *out)
{
    uint64_t v = 0;
    int ret = vd_parse_size(value, &v);
    if (ret == -ERANGE || (ret == 0 && v > INT64_MAX)) {
        cli_error("Invalid %s specified. Must be between 0 and %" PRId64 ".", what, INT64_MAX);
        return -1;
    }
    if (ret < 0) {
        cli_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", what);
        cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

int cli_parse_output(const char *s)
{
    if (!s || !strcmp(s, "human")) {
        return 0;
    }
    if (!strcmp(s, "json")) {
        return 1;
    }
    cli_error("--output must be used with human or json as argument.");
    return -1;
}

bool cli_valid_option_list(const char *s)
{
    size_t len = strlen(s);
    size_t i = len;
    if (len == 0 || s[0] == ',') {
        return false;
    }
    /* An odd number of trailing commas leaves a dangling separator. */
    while (i > 0 && s[i - 1] == ',') {
        i--;
    }
    return (len - i) % 2 == 0;
}

int cli_add_option_list(char **list, const char *arg)
{
    if (!cli_valid_option_list(arg)) {
        cli_error("Invalid option list: %s", arg);
        return -1;
    }
    if (!*list) {
        *list = cli_xstrdup(arg);
    } else {
        char *joined = cli_xmalloc(strlen(*list) + strlen(arg) + 2);
        sprintf(joined, "%s,%s", *list, arg);
        free(*list);
        *list = joined;
    }
    return 0;
}

/* Reads one value up to an unescaped ',' (",," stands for a comma). Returns the position of
 * the separator (or the terminating NUL). */
static const char *scan_value(const char *p, char *out)
{
    size_t n = 0;
    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                break;
            }
            p++;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
    return p;
}

/* Reads a key up to '=' or ','. */
static const char *scan_key(const char *p, char *out)
{
    size_t n = strcspn(p, "=,");
    memcpy(out, p, n);
    out[n] = '\0';
    return p + n;
}

bool cli_has_help_option(const char *list)
{
    char *v = cli_xmalloc(strlen(list) + 1);
    const char *p = list;
    bool found = false;
    while (*p && !found) {
        p = scan_value(p, v);
        if (*p) {
            p++;
        }
        found = !strcmp(v, "help") || !strcmp(v, "?");
    }
    free(v);
    return found;
}

/* The image the options being parsed will create (its protocol may add options). */
static const char *option_target;

void cli_set_option_target(const char *filename)
{
    option_target = filename;
}

static const vd_create_option *find_option(const char *fmt, const char *key)
{
    size_t n = 0;
    const vd_create_option *t = vd_create_options_for(fmt, option_target, &n);
    for (size_t i = 0; t && i < n; i++) {
        if (!strcmp(t[i].name, key)) {
            return &t[i];
        }
    }
    return NULL;
}

bool cli_has_option(const char *fmt, const char *name)
{
    return find_option(fmt, name) != NULL;
}

static cli_opt_type type_from_name(const char *t)
{
    if (!t) {
        return CLI_OPT_STR;
    }
    if (!strcmp(t, "bool")) {
        return CLI_OPT_BOOL;
    }
    if (!strcmp(t, "size")) {
        return CLI_OPT_SIZE;
    }
    if (!strcmp(t, "num")) {
        return CLI_OPT_NUM;
    }
    return CLI_OPT_STR;
}

cli_opt_type cli_option_type(const char *fmt, const char *key)
{
    const vd_create_option *opt = find_option(fmt, key);
    return opt ? type_from_name(opt->type) : CLI_OPT_STR;
}

static bool in_list(const char *const *list, const char *key)
{
    for (size_t i = 0; list && list[i]; i++) {
        if (!strcmp(list[i], key)) {
            return true;
        }
    }
    return false;
}

/* Checks a value against its option type with qemu's messages. */
static int check_value(const char *prefix, const char *key, const char *value, cli_opt_type t)
{
    switch (t) {
    case CLI_OPT_BOOL:
        if (strcmp(value, "on") && strcmp(value, "off") && strcmp(value, "true") &&
            strcmp(value, "false") && strcmp(value, "yes") && strcmp(value, "no") &&
            strcmp(value, "y") && strcmp(value, "n")) {
            cli_error("%sParameter '%s' expects 'on' or 'off'", prefix, key);
            return -1;
        }
        return 0;
    case CLI_OPT_SIZE: {
        uint64_t v;
        int ret = vd_parse_size(value, &v);
        if (ret == -ERANGE) {
            cli_error("%sValue '%s' is out of range for parameter '%s'", prefix, value, key);
            return -1;
        }
        if (ret < 0) {
            cli_error("%sParameter '%s' expects a non-negative number below 2^64", prefix, key);
            fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                    "tera-, peta-\nand exabytes, respectively.\n");
            return -1;
        }
        return 0;
    }
    case CLI_OPT_NUM: {
        char *end = NULL;
        errno = 0;
        (void)strtoull(value, &end, 0);
        if (errno || end == value || *end) {
            cli_error("%sParameter '%s' expects a number", prefix, key);
            return -1;
        }
        return 0;
    }
    case CLI_OPT_STR:
        return 0;
    }
    return 0;
}

int cli_parse_options(const char *fmt, const char *list, const char *const *allowed,
                      bool create_only_hint, const char *prefix, vd_opts *o)
{
    size_t len = strlen(list);
    char *key = cli_xmalloc(len + 3);
    char *value = cli_xmalloc(len + 3);
    const char *p = list;
    int ret = 0;

    while (*p) {
        p = scan_key(p, key);
        if (*p == '=') {
            p = scan_value(p + 1, value);
        } else if (!strncmp(key, "no", 2)) {
            /* qemu's short boolean form: "nofoo" means foo=off, "foo" means foo=on. */
            memmove(key, key + 2, strlen(key + 2) + 1);
            strcpy(value, "off");
        } else {
            strcpy(value, "on");
        }
        if (*p == ',') {
            p++;
        }
        if (!strcmp(key, "help") || !strcmp(key, "?")) {
            continue;
        }
        const vd_create_option *opt = find_option(fmt, key);
        if (!opt || (allowed && !in_list(allowed, key))) {
            cli_error("%sInvalid parameter '%s'", prefix, key);
            if (opt && create_only_hint) {
                fprintf(stderr, "This option is only supported for image creation\n");
            }
            ret = -1;
            break;
        }
        if (check_value(prefix, key, value, type_from_name(opt->type)) < 0) {
            ret = -1;
            break;
        }
        vd_opts_set(o, key, value);
    }
    free(key);
    free(value);
    return ret;
}

void cli_normalize_bools(const char *fmt, vd_opts *o)
{
    for (size_t i = 0; i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        const char *v = vd_opts_value(o, i);
        if (cli_option_type(fmt, k) != CLI_OPT_BOOL) {
            continue;
        }
        bool on = !strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes") ||
                  !strcmp(v, "y");
        char *key = cli_xstrdup(k);
        vd_opts_set(o, key, on ? "on" : "off");
        free(key);
    }
}

static const char *type_label(const char *t)
{
    switch (type_from_name(t)) {
    case CLI_OPT_BOOL:
        return "bool (on/off)";
    case CLI_OPT_SIZE:
        return "size";
    case CLI_OPT_NUM:
        return "num";
    case CLI_OPT_STR:
        break;
    }
    return "str";
}

static int cmp_option(const void *a, const void *b)
{
    const vd_create_option *x = *(const vd_create_option *const *)a;
    const vd_create_option *y = *(const vd_create_option *const *)b;
    return strcmp(x->name, y->name);
}

/* Options qemu takes from the protocol layer (the file driver), listed for raw only once a
 * filename says which protocol is used. */
static bool protocol_level(const char *fmt, const char *name)
{
    return (!strcmp(fmt, "raw") && !strcmp(name, "preallocation")) ||
           !strcmp(name, "extent_size_hint") || !strcmp(name, "nocow");
}

int cli_print_option_help(const char *fmt, const char *filename, const char *const *only,
                          bool amend_title)
{
    return cli_print_option_help_extra(fmt, filename, only, amend_title, NULL, 0);
}

int cli_print_option_help_extra(const char *fmt, const char *filename,
                                const char *const *only, bool amend_title,
                                const vd_create_option *extra, size_t nb_extra)
{
    size_t n = 0;
    const vd_create_option *t = vd_create_options_for(fmt, filename, &n);
    if (!t) {
        cli_error("Unknown file format '%s'", fmt);
        return 1;
    }
    const vd_create_option **sorted = cli_xcalloc(n + nb_extra, sizeof(*sorted));
    size_t m = 0;
    for (size_t i = 0; i < nb_extra; i++) {
        sorted[m++] = &extra[i];
    }
    for (size_t i = 0; i < n; i++) {
        if (only && !in_list(only, t[i].name)) {
            continue;
        }
        if (!only && !filename && protocol_level(fmt, t[i].name)) {
            continue;
        }
        sorted[m++] = &t[i];
    }
    qsort(sorted, m, sizeof(*sorted), cmp_option);

    if (amend_title) {
        printf("Amend options for '%s':\n", fmt);
    } else if (filename) {
        printf("Supported options:\n");
    } else {
        printf("Supported %s options:\n", fmt);
    }
    for (size_t i = 0; i < m; i++) {
        char head[128];
        int len = snprintf(head, sizeof(head), "  %s=<%s>", sorted[i]->name,
                           type_label(sorted[i]->type));
        if (len < 0) {
            len = 0;
        }
        if (sorted[i]->help) {
            printf("%s%*s - %s\n", head, len < 24 ? 24 - len : 0, "", sorted[i]->help);
        } else {
            printf("%s\n", head);
        }
    }
    if (!filename && !amend_title) {
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    }
    free(sorted);
    return 0;
}

/* ---- JSON --------------------------------------------------------------------------------- */

typedef enum { J_OBJ, J_ARR, J_STR, J_INT, J_BOOL } json_type;

struct cli_json {
    json_type type;
    char *key;
    char *str;
    int64_t num;
    bool flag;
    cli_json **items;
    size_t n, cap;
};

static cli_json *json_new(json_type t)
{
    cli_json *j = cli_xcalloc(1, sizeof(*j));
    j->type = t;
    return j;
}

cli_json *cli_json_object(void)
{
    return json_new(J_OBJ);
}

cli_json *cli_json_array(void)
{
    return json_new(J_ARR);
}

void cli_json_free(cli_json *j)
{
    if (!j) {
        return;
    }
    for (size_t i = 0; i < j->n; i++) {
        cli_json_free(j->items[i]);
    }
    free(j->items);
    free(j->key);
    free(j->str);
    free(j);
}

void cli_json_add(cli_json *parent, const char *key, cli_json *child)
{
    if (parent->n == parent->cap) {
        parent->cap = parent->cap ? parent->cap * 2 : 8;
        parent->items = realloc(parent->items, parent->cap * sizeof(*parent->items));
        if (!parent->items) {
            abort();
        }
    }
    free(child->key);
    child->key = key ? cli_xstrdup(key) : NULL;
    parent->items[parent->n++] = child;
}

void cli_json_add_str(cli_json *parent, const char *key, const char *v)
{
    cli_json *j = json_new(J_STR);
    j->str = cli_xstrdup(v ? v : "");
    cli_json_add(parent, key, j);
}

void cli_json_add_int(cli_json *parent, const char *key, int64_t v)
{
    cli_json *j = json_new(J_INT);
    j->num = v;
    cli_json_add(parent, key, j);
}

void cli_json_add_bool(cli_json *parent, const char *key, bool v)
{
    cli_json *j = json_new(J_BOOL);
    j->flag = v;
    cli_json_add(parent, key, j);
}

/* qemu keeps dictionary members in 512 hash buckets and walks them in bucket order; members
 * that share a bucket come out newest first. This is the TDB string hash QEMU uses. */
static unsigned json_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);
    for (size_t i = 0; key[i]; i++) {
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512u;
}

typedef struct {
    unsigned bucket;
    size_t index;
} json_order;

static int cmp_order(const void *a, const void *b)
{
    const json_order *x = a, *y = b;
    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    return x->index > y->index ? -1 : (x->index < y->index ? 1 : 0);
}

/* Member indexes of an object in output order. Caller frees. */
static size_t *object_order(const cli_json *obj)
{
    json_order *o = cli_xcalloc(obj->n, sizeof(*o));
    size_t *idx = cli_xcalloc(obj->n, sizeof(*idx));
    for (size_t i = 0; i < obj->n; i++) {
        o[i].bucket = json_bucket(obj->items[i]->key ? obj->items[i]->key : "");
        o[i].index = i;
    }
    qsort(o, obj->n, sizeof(*o), cmp_order);
    for (size_t i = 0; i < obj->n; i++) {
        idx[i] = o[i].index;
    }
    free(o);
    return idx;
}

/* Decodes one UTF-8 sequence; returns its length and stores the code point, or -1 in *cp
 * for an invalid sequence (which qemu replaces by U+FFFD). */
static size_t utf8_decode(const unsigned char *s, int32_t *cp)
{
    unsigned char c = s[0];
    size_t len;
    int32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        len = 2;
        v = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        v = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        v = c & 0x07;
    } else {
        *cp = -1;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *cp = -1;
            return i;
        }
        v = (v << 6) | (s[i] & 0x3f);
    }
    static const int32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) {
        *cp = -1;
        return len;
    }
    *cp = v;
    return len;
}

void cli_json_write_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    while (*p) {
        int32_t cp;
        p += utf8_decode(p, &cp);
        switch (cp) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\b':
            fputs("\\b", f);
            break;
        case '\f':
            fputs("\\f", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (cp < 0) {
                cp = 0xfffd;
            }
            if (cp > 0xffff) {
                cp -= 0x10000;
                fprintf(f, "\\u%04X\\u%04X", 0xd800 | (cp >> 10), 0xdc00 | (cp & 0x3ff));
            } else if (cp < 0x20 || cp >= 0x7f) {
                fprintf(f, "\\u%04X", (unsigned)cp);
            } else {
                fputc(cp, f);
            }
        }
    }
    fputc('"', f);
}

static void json_newline(FILE *f, int level)
{
    fprintf(f, "\n%*s", level * 4, "");
}

static void json_print(FILE *f, const cli_json *j, int level)
{
    switch (j->type) {
    case J_STR:
        cli_json_write_string(f, j->str);
        return;
    case J_INT:
        fprintf(f, "%" PRId64, j->num);
        return;
    case J_BOOL:
        fputs(j->flag ? "true" : "false", f);
        return;
    case J_OBJ:
    case J_ARR:
        break;
    }
    bool obj = j->type == J_OBJ;
    size_t *order = obj ? object_order(j) : NULL;
    fputc(obj ? '{' : '[', f);
    for (size_t i = 0; i < j->n; i++) {
        const cli_json *m = j->items[order ? order[i] : i];
        if (i > 0) {
            fputc(',', f);
        }
        json_newline(f, level + 1);
        if (obj) {
            cli_json_write_string(f, m->key ? m->key : "");
            fputs(": ", f);
        }
        json_print(f, m, level + 1);
    }
    json_newline(f, level);
    fputc(obj ? '}' : ']', f);
    free(order);
}

void cli_json_print(FILE *f, const cli_json *j)
{
    json_print(f, j, 0);
    fputc('\n', f);
}

static void dump_value(FILE *f, const cli_json *j, int indent);

static void dump_member(FILE *f, const char *label, const cli_json *m, int indent)
{
    bool composite = m->type == J_OBJ || m->type == J_ARR;
    fprintf(f, "%*s%s:%c", indent * 4, "", label, composite ? '\n' : ' ');
    dump_value(f, m, indent + 1);
    if (!composite) {
        fputc('\n', f);
    }
}

static void dump_value(FILE *f, const cli_json *j, int indent)
{
    switch (j->type) {
    case J_STR:
        fputs(j->str, f);
        return;
    case J_INT:
        fprintf(f, "%" PRId64, j->num);
        return;
    case J_BOOL:
        fputs(j->flag ? "true" : "false", f);
        return;
    case J_ARR:
        for (size_t i = 0; i < j->n; i++) {
            char label[32];
            snprintf(label, sizeof(label), "[%zu]", i);
            dump_member(f, label, j->items[i], indent);
        }
        return;
    case J_OBJ: {
        size_t *order = object_order(j);
        for (size_t i = 0; i < j->n; i++) {
            const cli_json *m = j->items[order[i]];
            /* Keys show with spaces for dashes ("lazy refcounts"). */
            char *label = cli_xstrdup(m->key ? m->key : "");
            for (char *c = label; *c; c++) {
                if (*c == '-') {
                    *c = ' ';
                }
            }
            dump_member(f, label, m, indent);
            free(label);
        }
        free(order);
        return;
    }
    }
}

void cli_json_dump_human(FILE *f, const cli_json *obj, int indent)
{
    dump_value(f, obj, indent);
}

/* ---- progress ------------------------------------------------------------------------------ */

void cli_progress_init(cli_progress *p, bool enabled, float min_skip)
{
    p->enabled = enabled;
    p->min_skip = min_skip;
    p->current = 0;
    p->last_print = 0;
}

void cli_progress_print(cli_progress *p, float delta, int max)
{
    if (!p->enabled) {
        return;
    }
    float current = max == 0 ? delta : p->current + delta / 100 * (float)max;
    if (current > 100) {
        current = 100;
    }
    p->current = current;
    if (current > p->last_print + p->min_skip || current < p->last_print - p->min_skip ||
        current == 0 || current == 100) {
        p->last_print = current;
        printf("    (%3.2f/100%%)\r", (double)current);
        fflush(stdout);
    }
}

void cli_progress_end(cli_progress *p)
{
    if (p->enabled) {
        printf("\n");
        fflush(stdout);
    }
}

/* ---- images ---------------------------------------------------------------------------------- */

bool cli_read_only_format(const char *fmt)
{
    return fmt && (!strcmp(fmt, "bochs") || !strcmp(fmt, "cloop") || !strcmp(fmt, "dmg"));
}

bool cli_format_known(const char *fmt)
{
    size_t n = 0;
    return fmt && vd_create_options(fmt, &n) != NULL;
}

/* The library reports a corrupt image once, as it finds it; QEMU's tools print this line
 * then (with no program name), and so do we. */
static char reported_corruption[512];   /* the message that line gave, not to repeat it */

static void on_engine_event(void *opaque, const vd_event *ev)
{
    (void)opaque;
    if (!strcmp(ev->type, "BLOCK_IMAGE_CORRUPTED")) {
        fprintf(stderr, "qcow2: %s: %s; further %scorruption events will be suppressed\n",
                ev->fatal ? "Marking image as corrupt" : "Image is corrupt", ev->msg,
                ev->fatal ? "" : "non-fatal ");
        snprintf(reported_corruption, sizeof(reported_corruption), "%s", ev->msg);
    }
}

/* --object tls-creds-x509 / tls-creds-psk with endpoint=client, for the engines this run
 * makes (the client side of driver=nbd, tls-creds=ID). */
static vd_tls_client_creds *client_objs;
static size_t nb_client_objs;

static char *opt_dup(const vd_opts *o, const char *key)
{
    const char *v = vd_opts_get(o, key);
    return v ? cli_xstrdup(v) : NULL;
}

int cli_add_client_object(const char *arg)
{
    char *copy = cli_xstrdup(arg);
    char *comma = strchr(copy, ',');
    if (comma) {
        *comma = '\0';
    }
    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    int ret = 0;
    bool verify = true;
    if (strchr(copy, '=')) {
        cli_error("--object: the first item must be the object type");
        ret = -1;
    } else if (comma && vd_opts_parse(o, comma + 1, &err) < 0) {
        cli_report_err(err, "--object: ");
        ret = -1;
    } else if (!vd_opts_get(o, "id")) {
        cli_error("Parameter 'id' is missing");
        ret = -1;
    } else if (!strcmp(copy, "secret")) {
        /* A secret (for encrypted images, which vdisk refuses to open) is checked and
         * kept by no one. */
        if (!vd_opts_get(o, "data") == !vd_opts_get(o, "file")) {
            cli_error("Either 'file' or 'data' must be provided");
            ret = -1;
        }
        vd_opts_free(o);
        free(copy);
        return ret;
    } else if (strcmp(copy, "tls-creds-x509") && strcmp(copy, "tls-creds-psk")) {
        cli_error("invalid object type: %s", copy);
        ret = -1;
    } else if (vd_opts_get(o, "endpoint") && strcmp(vd_opts_get(o, "endpoint"), "client")) {
        cli_error("Expecting TLS credentials with a client endpoint");
        ret = -1;
    } else if (vd_opts_get_bool(o, "verify-peer", true, &verify, &err) < 0) {
        cli_report_err(err, "--object: ");
        ret = -1;
    }
    if (ret == 0) {
        client_objs = realloc(client_objs, (nb_client_objs + 1) * sizeof(*client_objs));
        if (!client_objs) {
            abort();
        }
        client_objs[nb_client_objs++] = (vd_tls_client_creds){
            .id = opt_dup(o, "id"),
            .psk = !strcmp(copy, "tls-creds-psk"),
            .dir = opt_dup(o, "dir"),
            .verify_peer = verify,
            .username = opt_dup(o, "username"),
        };
    }
    vd_opts_free(o);
    free(copy);
    return ret;
}

int cli_take_objects(int *argc, char **argv)
{
    int out = 0;
    bool done = false;
    for (int i = 0; i < *argc; i++) {
        done |= !strcmp(argv[i], "--");
        const char *arg = NULL;
        if (!done && i > 0 && !strcmp(argv[i], "--object") && i + 1 < *argc) {
            arg = argv[++i];
        } else if (!done && i > 0 && !strncmp(argv[i], "--object=", 9)) {
            arg = argv[i] + 9;
        }
        if (arg) {
            if (cli_add_client_object(arg) < 0) {
                return -1;
            }
            continue;
        }
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    *argc = out;
    return 0;
}

vd_engine *cli_engine_new(void)
{
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    vd_engine_set_event_handler(e, on_engine_event, NULL);
    for (size_t i = 0; i < nb_client_objs; i++) {
        vd_error *err = NULL;
        if (vd_engine_add_tls_client_creds(e, &client_objs[i], &err) < 0) {
            /* Only a duplicate id gets here, before any image is open. */
            cli_report_err(err, "--object: ");
            exit(1);
        }
    }
    return e;
}

/* Options that name their driver leave nothing to probe. */
static bool names_driver(const char *name)
{
    vd_tree *t = NULL;
    if (strncmp(name, "json:", 5) ||
        vd_tree_parse_json(name + 5, strlen(name + 5), &t, NULL) < 0) {
        return false;
    }
    bool named = vd_tree_get(t, "driver") != NULL;
    vd_tree_free(t);
    return named;
}

void cli_warn_probed_raw(const char *name, const char *display)
{
    const char *probed = NULL;
    vd_error *perr = NULL;
    if (!names_driver(name) && vd_probe_format(name, &probed, &perr) == 0 && probed &&
        !strcmp(probed, "raw")) {
        fprintf(stderr,
                "WARNING: Image format was not specified for '%s' and probing guessed "
                "raw.\n"
                "         Automatically detecting the format is dangerous for raw images, "
                "write operations on block 0 will be restricted.\n"
                "         Specify the 'raw' format explicitly to remove the "
                "restrictions.\n", display);
    }
    vd_error_free(perr);
}

/* How this run reads file arguments: set once by main before the verb runs. */
static bool image_opts, target_image_opts;

bool cli_set_image_opts(bool on)
{
    bool was = image_opts;
    image_opts = on;
    return was;
}

bool cli_set_target_image_opts(bool on)
{
    bool was = target_image_opts;
    target_image_opts = on;
    return was;
}

bool cli_take_flag(int *argc, char **argv, const char *flag)
{
    bool found = false;
    int out = 0;
    bool done = false;
    for (int i = 0; i < *argc; i++) {
        done |= !strcmp(argv[i], "--");
        if (!done && i > 0 && !strcmp(argv[i], flag)) {
            found = true;
            continue;
        }
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    *argc = out;
    return found;
}

vd_tree *cli_parse_optlist(const char *optstr)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    if (vd_tree_parse_keyval(optstr, NULL, &t, &err) < 0) {
        cli_report_err(err, "%s", "");
        return NULL;
    }
    return t;
}

char *cli_tree_json_name(const vd_tree *t)
{
    char *json = vd_tree_to_json(t);
    char *name = NULL;
    if (asprintf(&name, "json:%s", json) < 0) {
        abort();
    }
    free(json);
    return name;
}

char *cli_opts_to_json(const char *optstr)
{
    vd_tree *t = cli_parse_optlist(optstr);
    if (!t) {
        return NULL;
    }
    char *name = cli_tree_json_name(t);
    vd_tree_free(t);
    return name;
}

static int open_as(vd_engine *e, const char *filename, const char *fmt, unsigned flags,
                   vd_disk **out, bool opts);

int cli_open_target(vd_engine *e, const char *filename, const char *fmt, unsigned flags,
                    vd_disk **out)
{
    return open_as(e, filename, fmt, flags, out, target_image_opts);
}

int cli_open(vd_engine *e, const char *filename, const char *fmt, unsigned flags,
             vd_disk **out)
{
    return open_as(e, filename, fmt, flags, out, image_opts);
}

static int open_as(vd_engine *e, const char *filename, const char *fmt, unsigned flags,
                   vd_disk **out, bool opts)
{
    *out = NULL;
    if (opts) {
        if (fmt) {
            cli_error("--image-opts and --format are mutually exclusive");
            return -1;
        }
        char *json = cli_opts_to_json(filename);
        if (!json) {
            return -1;
        }
        vd_error *err = NULL;
        vd_open_opts o = {.flags = flags};
        int ret = vd_open(e, json, &o, out, &err);
        free(json);
        if (ret < 0) {
            cli_report_err_for(err, filename, "Could not open '%s': ", filename);
            *out = NULL;
            return -1;
        }
        return 0;
    }
    vd_error *err = NULL;
    if (!fmt && (flags & VD_OPEN_RDWR)) {
        cli_warn_probed_raw(filename, filename);
    }
    vd_open_opts o = {.format = fmt, .flags = flags};
    if (vd_open(e, filename, &o, out, &err) < 0) {
        cli_report_err_for(err, filename, "Could not open '%s': ", filename);
        *out = NULL;
        return -1;
    }
    return 0;
}


int cli_chain_length(vd_disk *d)
{
    int n = 0;
    for (vd_disk *b = d; b; b = vd_disk_backing(b)) {
        n++;
    }
    return n;
}

void cli_print_io_detail(vd_disk *d)
{
    const char *msg = d ? vd_disk_last_error(d) : NULL;
    if (!msg) {
        return;
    }
    /* The corruption line said it already, as QEMU says it once. */
    if (reported_corruption[0] && strstr(msg, reported_corruption)) {
        return;
    }
    /* Driver notes read "<image>: qcow2: ..."; errors all start with "<progname>: ". */
    fprintf(stderr, "%s: %s\n", progname, msg);
}
