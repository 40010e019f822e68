/* Fault injection (QEMU's blkdebug, in a simpler form): a protocol filter between a format
 * node and its file that counts the I/O reaching the file and fails chosen requests, so
 * tests (and users, from any CLI command) can prove what happens when a write or a flush
 * fails at a given point. Opened by a filename `blkdebug:RULES:PATH`, where RULES is
 * `;`-separated `OP#N=ERR` with OP read|write|flush|event:NAME: the Nth such request fails
 * with ERR (for event:NAME, the first request after the Nth occurrence of that event).
 * Each rule fires once. write_zeroes, discard and truncate count as writes; block status
 * and size queries are no I/O and are not counted; failed requests count too. With the
 * engine's blkdebug_count_file set (the CLI's VDISK_BLKDEBUG_COUNT), the counts are
 * appended there at close ("reads=R writes=W flushes=F") so a test can learn how many
 * requests an operation makes and loop over them. A CONFIG file in QEMU's format (blkdebug-config.h) may stand in for
 * RULES: `blkdebug:CONFIG:PATH`, told apart by having neither '#' nor '='. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/blkdebug.h"
#include "block/engine.h"
#include "block/drivers/blkdebug-config.h"

#define MAX_RULES 64
#define MAX_EVENT_NAME 63

typedef enum { OP_READ, OP_WRITE, OP_FLUSH, OP_EVENT } rule_op;

typedef struct rule {
    rule_op op;
    char event[MAX_EVENT_NAME + 1];
    uint64_t n;          /* fire on the Nth request / after the Nth event */
    int err;             /* positive errno */
    uint64_t seen;       /* events seen (OP_EVENT) */
    bool armed;          /* OP_EVENT: the next request fails */
    bool fired;
} rule;

typedef struct blkdebug_state {
    pthread_mutex_t lock;
    rule rules[MAX_RULES];
    int nb_rules;
    bd_qrule *qrules;
    int nb_qrules;
    int64_t qstate;      /* the config rules' state, 1 at the start as in QEMU */
    uint64_t reads, writes, flushes;
    char *count_file;
} blkdebug_state;

static const struct {
    const char *name;
    int err;
} errnames[] = {
    {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EPERM", EPERM},     {"EACCES", EACCES},
    {"EROFS", EROFS},   {"EINVAL", EINVAL}, {"ENOMEM", ENOMEM},   {"EFBIG", EFBIG},
    {"EDQUOT", EDQUOT}, {"EAGAIN", EAGAIN}, {"ENOTSUP", ENOTSUP}, {"EBUSY", EBUSY},
    {"ENXIO", ENXIO},   {"ETIMEDOUT", ETIMEDOUT},
};
#define NB_ERRNAMES (sizeof(errnames) / sizeof(errnames[0]))

static const char *errname(int err)
{
    for (size_t i = 0; i < NB_ERRNAMES; i++) {
        if (errnames[i].err == err) {
            return errnames[i].name;
        }
    }
    return "error";
}

static const char *op_name(rule_op op)
{
    static const char *const names[] = {"read", "write", "flush", "event"};
    return names[op];
}

/* Length of the rule text at s: up to the next ';' or ':' (the ':' of "event:" excepted). */
static size_t rule_len(const char *s)
{
    size_t skip = strncmp(s, "event:", 6) == 0 ? 6 : 0;
    return skip + strcspn(s + skip, ";:");
}

static bool all_digits(const char *s, size_t len)
{
    return len > 0 && strspn(s, "0123456789") >= len;
}

/* Parses the rule text [s, s+len) (`OP#N=ERR`) into r; errors quote the rule. */
static int parse_rule(const char *s, size_t len, rule *r, vd_error **errp)
{
    int rl = (int)len;
    memset(r, 0, sizeof(*r));
    const char *hash = memchr(s, '#', len);
    if (len == 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: empty rule (expected "
                            "OP#N=ERR between ';')");
    }
    if (!hash) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: bad rule '%.*s': "
                            "expected OP#N=ERR", rl, s);
    }
    size_t oplen = (size_t)(hash - s);
    if (oplen == 4 && !strncmp(s, "read", 4)) {
        r->op = OP_READ;
    } else if (oplen == 5 && !strncmp(s, "write", 5)) {
        r->op = OP_WRITE;
    } else if (oplen == 5 && !strncmp(s, "flush", 5)) {
        r->op = OP_FLUSH;
    } else if (oplen >= 6 && !strncmp(s, "event:", 6)) {
        size_t nlen = oplen - 6;
        if (nlen == 0 || nlen > MAX_EVENT_NAME ||
            strspn(s + 6, "abcdefghijklmnopqrstuvwxyz0123456789_") < nlen) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: bad rule '%.*s': an "
                                "event name is 1 to %d characters of a-z, 0-9 and '_'", rl, s,
                                MAX_EVENT_NAME);
        }
        r->op = OP_EVENT;
        memcpy(r->event, s + 6, nlen);
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: bad rule '%.*s': unknown "
                            "operation '%.*s' (expected read, write, flush or event:NAME)", rl,
                            s, (int)oplen, s);
    }

    const char *num = hash + 1;
    const char *eq = memchr(num, '=', len - oplen - 1);
    size_t numlen = eq ? (size_t)(eq - num) : len - oplen - 1;
    errno = 0;
    unsigned long long n = all_digits(num, numlen) ? strtoull(num, NULL, 10) : 0;
    if (n == 0 || errno == ERANGE) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: bad rule '%.*s': N must "
                            "be a positive number", rl, s);
    }
    r->n = n;
    if (!eq) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: bad rule '%.*s': "
                            "expected =ERR after #N", rl, s);
    }

    const char *e = eq + 1;
    size_t elen = len - (size_t)(e - s);
    for (size_t i = 0; i < NB_ERRNAMES; i++) {
        if (strlen(errnames[i].name) == elen && !strncmp(errnames[i].name, e, elen)) {
            r->err = errnames[i].err;
        }
    }
    if (!r->err) {
        char known[256] = "";
        for (size_t i = 0; i < NB_ERRNAMES; i++) {
            size_t used = strlen(known);
            snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
                     errnames[i].name);
        }
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: bad rule '%.*s': unknown "
                            "errno name '%.*s' (known: %s)", rl, s, (int)elen, e, known);
    }
    return 0;
}

int vd_blkdebug_parse(const char *spec, vd_blkdebug_rules *out, vd_error **errp)
{
    memset(out, 0, sizeof(*out));
    if (strncmp(spec, VD_BLKDEBUG_PREFIX, strlen(VD_BLKDEBUG_PREFIX)) != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "not a blkdebug filename: '%s'",
                            spec);
    }
    const char *p = spec + strlen(VD_BLKDEBUG_PREFIX);
    size_t first = rule_len(p);
    if (first > 0 && p[first] == ':' && !memchr(p, '#', first) && !memchr(p, '=', first)) {
        int ret = bd_config_parse(p, first, (bd_qrule **)&out->qrules, &out->nb_qrules, errp);
        if (ret < 0) {
            return ret;
        }
        if (p[first + 1] == '\0') {
            vd_blkdebug_rules_free(out);
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: no image path in "
                                "'%s'", spec);
        }
        out->path = p + first + 1;
        return 0;
    }
    rule *rules = calloc(MAX_RULES, sizeof(*rules));
    if (!rules) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    int nb = 0;
    /* An empty RULES (`blkdebug::PATH`) is a pass-through that only counts. */
    while (*p != ':') {
        size_t len = rule_len(p);
        int ret = 0;
        if (p[len] == '\0') {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: missing ':PATH' in "
                               "'%s' (expected blkdebug:RULES:PATH)", spec);
        } else if (nb == MAX_RULES) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: more than %d rules",
                               MAX_RULES);
        } else {
            ret = parse_rule(p, len, &rules[nb], errp);
        }
        if (ret < 0) {
            free(rules);
            return ret;
        }
        nb++;
        p += len;
        if (*p == ';') {
            p++;
        }
    }
    if (p[1] == '\0') {
        free(rules);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkdebug: no image path in '%s'",
                            spec);
    }
    out->rules = rules;
    out->nb_rules = nb;
    out->path = p + 1;
    return 0;
}

/* The config rules' verdict on a request (lock held): the first active rule that covers
 * it fails it; a `once` rule goes. Returns 0 or -errno. */
static int qrule_check(blkdebug_state *s, unsigned iotype, uint64_t off, uint64_t len)
{
    for (int i = 0; i < s->nb_qrules; i++) {
        bd_qrule *r = &s->qrules[i];
        if (!r->active || r->gone) {
            continue;
        }
        bool covers = r->offset < 0 ||
                      (len && (uint64_t)r->offset >= off && (uint64_t)r->offset - off < len);
        if (!covers || !(r->iotypes & iotype)) {
            continue;
        }
        if (r->once) {
            r->active = false;
            r->gone = true;
        }
        return -r->err;
    }
    return 0;
}

/* Counts a request of kind op and decides whether it fails: returns 0 or -errno. A request
 * is failed by the first rule due for it: a count rule for this op whose N is reached, or an
 * event rule whose event has happened N times; then the config rules. */
static int account(vd_node *n, rule_op op, unsigned iotype, uint64_t off, uint64_t len)
{
    blkdebug_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    uint64_t nth = op == OP_READ ? ++s->reads : op == OP_WRITE ? ++s->writes : ++s->flushes;
    rule *hit = NULL;
    for (int i = 0; i < s->nb_rules && !hit; i++) {
        rule *r = &s->rules[i];
        if (!r->fired && ((r->op == op && r->n == nth) || (r->op == OP_EVENT && r->armed))) {
            r->fired = true;
            hit = r;
        }
    }
    rule fired = hit ? *hit : (rule){0};
    int qret = hit ? 0 : qrule_check(s, iotype, off, len);
    pthread_mutex_unlock(&s->lock);
    if (!hit) {
        return qret;  /* as QEMU: the bare errno, no message of ours */
    }
    if (fired.op == OP_EVENT) {
        vd_node_set_error(n, "blkdebug: injected %s on %s #%" PRIu64 " after event %s #%" PRIu64,
                        errname(fired.err), op_name(op), nth, fired.event, fired.n);
    } else {
        vd_node_set_error(n, "blkdebug: injected %s on %s #%" PRIu64, errname(fired.err),
                        op_name(op), nth);
    }
    return -fired.err;
}

static int blkdebug_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    int ret = account(n, OP_READ, BD_IO_READ, off, len);
    return ret < 0 ? ret : vd_node_pread(n->file, buf, len, off);
}

static void blkdebug_event(vd_node *n, const char *name);

/* QEMU's block layer announces every write to the node it writes: the filter hears
 * "pwritev" (or "pwritev_zero") for each request it is given, before it runs. */
static int blkdebug_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                           unsigned flags)
{
    blkdebug_event(n, "pwritev");
    int ret = account(n, OP_WRITE, BD_IO_WRITE, off, len);
    return ret < 0 ? ret : vd_node_pwrite(n->file, buf, len, off, flags);
}

static int blkdebug_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    /* As QEMU's blkdebug: pieces shorter than the preferred alignment are refused, so the
     * layer above falls back to writing zeros (which tests that fallback). */
    uint64_t align = n->pwrite_zeroes_alignment > n->request_alignment
                         ? n->pwrite_zeroes_alignment : n->request_alignment;
    if (len < align) {
        return -ENOTSUP;
    }
    blkdebug_event(n, "pwritev_zero");
    int ret = account(n, OP_WRITE, BD_IO_WRITE_ZEROES, off, len);
    return ret < 0 ? ret : vd_node_pwrite_zeroes(n->file, off, len, flags);
}

static int blkdebug_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    int ret = account(n, OP_WRITE, BD_IO_DISCARD, off, len);
    return ret < 0 ? ret : vd_node_pdiscard(n->file, off, len);
}

/* Status queries are no I/O and are not counted, but a config rule for the block-status
 * I/O type fails them, as in QEMU. */
static int blkdebug_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    blkdebug_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = qrule_check(s, BD_IO_BLOCK_STATUS, off, len);
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? ret : vd_filter_block_status(n, off, len, st);
}

static int blkdebug_flush(vd_node *n)
{
    int ret = account(n, OP_FLUSH, BD_IO_FLUSH, 0, 0);
    return ret < 0 ? ret : vd_node_flush(n->file);
}

static int blkdebug_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                             vd_error **errp)
{
    int ret = account(n, OP_WRITE, BD_IO_WRITE, size, 0);
    if (ret < 0) {
        char detail[512];
        vd_node_get_error(n, detail, sizeof(detail));
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not resize file: %s (%s)",
                            n->filename, strerror(-ret), detail);
    }
    ret = vd_node_truncate(n->file, size, shrink, prealloc, errp);
    n->size = n->file->size;
    return ret;
}

static void blkdebug_event(vd_node *n, const char *name)
{
    blkdebug_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->nb_rules; i++) {
        rule *r = &s->rules[i];
        if (r->op == OP_EVENT && !r->fired && !strcmp(r->event, name) && ++r->seen == r->n) {
            r->armed = true;
        }
    }
    /* The config rules for this event, in QEMU's order (the last one written first). */
    bool injected = false;
    int64_t new_state = s->qstate;
    for (int i = s->nb_qrules; i-- > 0;) {
        bd_qrule *r = &s->qrules[i];
        if (r->gone || strcmp(r->event, name) || (r->state && r->state != s->qstate)) {
            continue;
        }
        if (r->action == BD_SET_STATE) {
            new_state = r->new_state;
            continue;
        }
        if (!injected) {
            for (int k = 0; k < s->nb_qrules; k++) {
                s->qrules[k].active = false;
            }
            injected = true;
        }
        r->active = true;
    }
    s->qstate = new_state;
    pthread_mutex_unlock(&s->lock);
}

static void blkdebug_close(vd_node *n)
{
    blkdebug_state *s = n->opaque;
    if (!s) {
        return;
    }
    if (s->count_file) {
        FILE *f = fopen(s->count_file, "a");
        if (f) {
            fprintf(f, "reads=%" PRIu64 " writes=%" PRIu64 " flushes=%" PRIu64 "\n", s->reads,
                    s->writes, s->flushes);
            fclose(f);
        }
        free(s->count_file);
    }
    pthread_mutex_destroy(&s->lock);
    free(s->qrules);
    free(s);
    n->opaque = NULL;
}

/* From options (driver=blkdebug); a `blkdebug:` filename goes through node.c. */
static int blkdebug_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    if (!n->options) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: blkdebug is opened with "
                            "options or a 'blkdebug:RULES:PATH' filename", n->filename);
    }
    return vd_blkdebug_open_options(n, errp);
}

const vd_driver vd_blkdebug_driver = {
    .name = "blkdebug",
    .is_format = false,
    .runtime_opts = vd_blkdebug_runtime_opts,
    .open = blkdebug_open,
    .close = blkdebug_close,
    .pread = blkdebug_pread,
    .pwrite = blkdebug_pwrite,
    .pwrite_zeroes = blkdebug_pwrite_zeroes,
    .pdiscard = blkdebug_pdiscard,
    .flush = blkdebug_flush,
    .block_status = blkdebug_block_status,
    .truncate = blkdebug_truncate,
    .allocated_size = vd_filter_allocated_size,
    .event = blkdebug_event,
};

int vd_blkdebug_wrap(vd_node *filter, vd_node *child, const vd_blkdebug_rules *rules)
{
    blkdebug_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    pthread_mutex_init(&s->lock, NULL);
    if (rules->nb_rules) {
        memcpy(s->rules, rules->rules, sizeof(rule) * (size_t)rules->nb_rules);
    }
    s->nb_rules = rules->nb_rules;
    s->qstate = 1;
    if (rules->nb_qrules) {
        s->qrules = malloc(sizeof(bd_qrule) * (size_t)rules->nb_qrules);
        if (!s->qrules) {
            pthread_mutex_destroy(&s->lock);
            free(s);
            return -ENOMEM;
        }
        memcpy(s->qrules, rules->qrules, sizeof(bd_qrule) * (size_t)rules->nb_qrules);
        s->nb_qrules = rules->nb_qrules;
    }
    const char *cf = filter->engine ? filter->engine->blkdebug_count_file : NULL;
    if (cf && *cf) {
        s->count_file = strdup(cf);
        if (!s->count_file) {
            pthread_mutex_destroy(&s->lock);
            free(s->qrules);
            free(s);
            return -ENOMEM;
        }
    }
    filter->opaque = s;
    /* QEMU's "none" event happens once, when the filter opens: its rules apply at once. */
    blkdebug_event(filter, "none");
    filter->file = child;
    filter->size = child->size;
    filter->request_alignment = child->request_alignment;
    filter->max_transfer = child->max_transfer;
    return 0;
}

void vd_blkdebug_rules_free(vd_blkdebug_rules *r)
{
    free(r->rules);
    free(r->qrules);
    r->rules = NULL;
    r->qrules = NULL;
    r->nb_qrules = 0;
}
