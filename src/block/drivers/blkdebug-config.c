/* Parser of QEMU's blkdebug configuration files (see blkdebug-config.h):
 *
 *     # comment
 *     [inject-error]
 *     event = "l2_update"
 *     errno = "5"
 *     once = "on"
 *
 * Sections are [inject-error] and [set-state]; values are quoted. The file is untrusted
 * input: it is read up to a fixed size and every line is checked. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/blkdebug-config.h"

#define MAX_CONFIG_BYTES (1u << 20)
#define MAX_QRULES 256

/* QEMU 7.2's event names (older spellings with '.' are taken as '_'), and the ones only
 * vdisk's qcow2 announces. */
static const char *const event_names[] = {
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
    "vmstate_load", "vmstate_save", "cow_read", "cow_write", "reftable_load",
    "reftable_grow", "reftable_update", "refblock_load", "refblock_update",
    "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup",
    "refblock_alloc_write", "refblock_alloc_write_blocks", "refblock_alloc_write_table",
    "refblock_alloc_switch_table", "cluster_alloc", "cluster_alloc_bytes", "cluster_free",
    "flush_to_os", "flush_to_disk", "pwritev_rmw_head", "pwritev_rmw_after_head",
    "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev", "pwritev_zero", "pwritev_done",
    "empty_image_prepare", "l1_shrink_write_table", "l1_shrink_free_l2_clusters",
    "cor_write", "cluster_alloc_space", "none",
    "header_update", "snapshot_table_update",
};

static const struct {
    const char *name;
    unsigned bit;
} io_types[] = {
    {"read", BD_IO_READ},       {"write", BD_IO_WRITE},   {"write-zeroes", BD_IO_WRITE_ZEROES},
    {"discard", BD_IO_DISCARD}, {"flush", BD_IO_FLUSH}, {"block-status", BD_IO_BLOCK_STATUS},
};

typedef struct parse_ctx {
    const char *path;
    int line;
    vd_error **errp;
} parse_ctx;

static int bad(const parse_ctx *c, const char *what, const char *detail)
{
    return vd_error_set(c->errp, VD_ERR_INVALID, EINVAL, "blkdebug: %s line %d: %s%s",
                        c->path, c->line, what, detail);
}

static int parse_int(const parse_ctx *c, const char *key, const char *v, int64_t min,
                     int64_t max, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 0);
    if (end == v || *end || errno || n < min || n > max) {
        char msg[96];
        snprintf(msg, sizeof(msg), "'%s' expects a number from %lld to %lld", key,
                 (long long)min, (long long)max);
        return bad(c, msg, "");
    }
    *out = n;
    return 0;
}

static int parse_bool(const parse_ctx *c, const char *key, const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false")) {
        *out = false;
    } else {
        char msg[96];
        snprintf(msg, sizeof(msg), "'%s' expects 'on' or 'off', not ", key);
        return bad(c, msg, v);
    }
    return 0;
}

static int parse_event(const parse_ctx *c, const char *v, char *out)
{
    char name[BD_EVENT_NAME_MAX + 1];
    size_t len = strlen(v);
    if (len > BD_EVENT_NAME_MAX) {
        return bad(c, "event name too long: ", v);
    }
    for (size_t i = 0; i <= len; i++) {
        name[i] = v[i] == '.' ? '_' : v[i];
    }
    for (size_t i = 0; i < sizeof(event_names) / sizeof(event_names[0]); i++) {
        if (!strcmp(name, event_names[i])) {
            memcpy(out, name, len + 1);
            return 0;
        }
    }
    return bad(c, "unknown event name ", v);
}

static int parse_iotypes(const parse_ctx *c, const char *v, unsigned *out)
{
    *out = 0;
    while (*v) {
        size_t len = strcspn(v, ",");
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof(io_types) / sizeof(io_types[0]); i++) {
            if (strlen(io_types[i].name) == len && !strncmp(io_types[i].name, v, len)) {
                bit = io_types[i].bit;
            }
        }
        if (!bit) {
            return bad(c, "unknown iotype in ", v);
        }
        *out |= bit;
        v += len + (v[len] == ',');
    }
    return 0;
}

/* One `key = "value"` line of the current section into r. */
static int parse_key(const parse_ctx *c, bd_qrule *r, const char *key, const char *v)
{
    bool inject = r->action == BD_INJECT_ERROR;
    int64_t n;
    int ret;
    if (!strcmp(key, "event")) {
        return parse_event(c, v, r->event);
    }
    if (!strcmp(key, "state")) {
        return parse_int(c, key, v, 0, INT64_MAX, &r->state);
    }
    if (inject && !strcmp(key, "errno")) {
        ret = parse_int(c, key, v, 0, 4095, &n);
        r->err = (int)n;
        return ret;
    }
    if (inject && !strcmp(key, "sector")) {
        ret = parse_int(c, key, v, -1, INT64_MAX / 512, &n);
        r->offset = n < 0 ? -1 : n * 512;
        return ret;
    }
    if (inject && !strcmp(key, "once")) {
        return parse_bool(c, key, v, &r->once);
    }
    if (inject && !strcmp(key, "immediately")) {
        bool ignored;  /* when the error is reported: no difference without coroutines */
        return parse_bool(c, key, v, &ignored);
    }
    if (inject && !strcmp(key, "iotype")) {
        return parse_iotypes(c, v, &r->iotypes);
    }
    if (!inject && !strcmp(key, "new_state")) {
        return parse_int(c, key, v, 0, INT64_MAX, &r->new_state);
    }
    return bad(c, "unknown key ", key);
}

/* Splits `key = "value"` (spaces allowed around '='); returns false if it is not that. */
static bool split_line(char *s, char **key, char **value)
{
    *key = s;
    s += strcspn(s, " \t=");
    char *key_end = s;
    s += strspn(s, " \t");
    if (*s != '=') {
        return false;
    }
    s++;
    s += strspn(s, " \t");
    if (*s != '"') {
        return false;
    }
    *value = ++s;
    char *q = strchr(s, '"');
    if (!q || key_end == *key) {
        return false;
    }
    *q = '\0';
    q++;
    if (q[strspn(q, " \t\r")] != '\0') {
        return false;
    }
    *key_end = '\0';
    return true;
}

static int finish_rule(const parse_ctx *c, const bd_qrule *r)
{
    if (!r->event[0]) {
        return bad(c, "a section has no event", "");
    }
    if (r->action == BD_SET_STATE && r->new_state == 0) {
        return bad(c, "a [set-state] section needs new_state", "");
    }
    return 0;
}

static int parse_text(char *text, parse_ctx *c, bd_qrule *rules, int *nb)
{
    bd_qrule *cur = NULL;
    char *save = NULL;
    c->line = 0;
    for (char *line = text; line; line = save) {
        save = strchr(line, '\n');
        if (save) {
            *save++ = '\0';
        }
        c->line++;
        line += strspn(line, " \t\r");
        if (!*line || *line == '#') {
            continue;
        }
        if (*line == '[') {
            if (cur && finish_rule(c, cur) < 0) {
                return -EINVAL;
            }
            bd_action a;
            if (!strncmp(line, "[inject-error]", 14)) {
                a = BD_INJECT_ERROR;
            } else if (!strncmp(line, "[set-state]", 11)) {
                a = BD_SET_STATE;
            } else {
                return bad(c, "unknown section ", line);
            }
            if (*nb == MAX_QRULES) {
                return bad(c, "too many sections", "");
            }
            cur = &rules[(*nb)++];
            memset(cur, 0, sizeof(*cur));
            cur->action = a;
            cur->err = EIO;
            cur->offset = -1;
            cur->iotypes = BD_IO_READ | BD_IO_WRITE | BD_IO_WRITE_ZEROES | BD_IO_DISCARD |
                           BD_IO_FLUSH;
            continue;
        }
        char *key, *value;
        if (!split_line(line, &key, &value)) {
            return bad(c, "expected key = \"value\": ", line);
        }
        if (!cur) {
            return bad(c, "a key outside any section: ", key);
        }
        int ret = parse_key(c, cur, key, value);
        if (ret < 0) {
            return ret;
        }
    }
    return cur ? finish_rule(c, cur) : 0;
}

int bd_config_parse_text(const char *text, size_t len, const char *what, bd_qrule **out,
                         int *nb, vd_error **errp)
{
    *out = NULL;
    *nb = 0;
    if (len > MAX_CONFIG_BYTES) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "blkdebug: config file '%s' is larger "
                            "than %u bytes", what, MAX_CONFIG_BYTES);
    }
    if (memchr(text, '\0', len)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: config file '%s' is not "
                            "text", what);
    }
    char *copy = strndup(text, len);
    bd_qrule *rules = calloc(MAX_QRULES, sizeof(*rules));
    int ret;
    if (!copy || !rules) {
        ret = vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    } else {
        parse_ctx c = {.path = what, .errp = errp};
        ret = parse_text(copy, &c, rules, nb);
    }
    free(copy);
    if (ret < 0) {
        free(rules);
        *nb = 0;
        return ret;
    }
    *out = rules;
    return 0;
}

int bd_config_parse(const char *path, size_t len, bd_qrule **out, int *nb, vd_error **errp)
{
    *out = NULL;
    *nb = 0;
    char *name = strndup(path, len);
    if (!name) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    FILE *f = fopen(name, "r");
    if (!f) {
        int e = errno;
        vd_error_set(errp, VD_ERR_IO, e, "blkdebug: could not read config file '%s': %s", name,
                     strerror(e));
        free(name);
        return -e;
    }
    /* One byte more than allowed, so that a file too large is told apart. */
    char *text = malloc(MAX_CONFIG_BYTES + 1);
    size_t got = text ? fread(text, 1, MAX_CONFIG_BYTES + 1, f) : 0;
    fclose(f);
    int ret = text ? bd_config_parse_text(text, got, name, out, nb, errp)
                   : vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    free(text);
    free(name);
    return ret;
}
