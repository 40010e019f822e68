/* The client half of `vdisk nbd --list`: learns a server's exports the way qemu-nbd --list
 * does, with qemu-nbd's error messages, so the command's output and complaints match it.
 *
 *   greeting -> [fixed newstyle] STRUCTURED_REPLY -> LIST -> for each export:
 *               INFO (block sizes asked for) -> [structured] LIST_META_CONTEXT (all;
 *               then "qemu:" when the first answer had none) -> ABORT
 *            -> [newstyle, not fixed] error: no export lists
 *            -> [old style] size and flags of the one export -> DISC
 *
 * Everything the server sends is checked and bounded before it is stored. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "nbd/nbd-client.h"
#include "nbd/nbd-proto.h"

/* The longest reply payload accepted (QEMU's limit), and its old-style server magic. */
#define CLIENT_MAX_REPLY (32u << 20)
#define NBD_OLDSTYLE_MAGIC 0x0000420281861253ull

typedef struct client {
    const nbd_client_io *io;
    vd_error **errp;
} client;


/* QEMU's names for options and replies, which its messages quote. */
static const char *opt_name(uint32_t opt)
{
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        return "export name";
    case NBD_OPT_ABORT:
        return "abort";
    case NBD_OPT_LIST:
        return "list";
    case NBD_OPT_STARTTLS:
        return "starttls";
    case NBD_OPT_INFO:
        return "info";
    case NBD_OPT_GO:
        return "go";
    case NBD_OPT_STRUCTURED_REPLY:
        return "structured reply";
    case NBD_OPT_LIST_META_CONTEXT:
        return "list meta context";
    case NBD_OPT_SET_META_CONTEXT:
        return "set meta context";
    default:
        return "<unknown>";
    }
}

static const char *rep_name(uint32_t rep)
{
    switch (rep) {
    case NBD_REP_ACK:
        return "ack";
    case NBD_REP_SERVER:
        return "server";
    case NBD_REP_INFO:
        return "info";
    case NBD_REP_META_CONTEXT:
        return "meta context";
    case NBD_REP_ERR_UNSUP:
        return "unsupported";
    case NBD_REP_ERR_POLICY:
        return "denied by policy";
    case NBD_REP_ERR_INVALID:
        return "invalid";
    case NBD_REP_ERR_PLATFORM:
        return "platform lacks support";
    case NBD_REP_ERR_TLS_REQD:
        return "TLS required";
    case NBD_REP_ERR_UNKNOWN:
        return "export unknown";
    case NBD_REP_ERR_SHUTDOWN:
        return "server shutting down";
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
        return "block size required";
    default:
        return "<unknown>";
    }
}

/* ---- transport ------------------------------------------------------------------------- */

/* Reads len bytes; what (may be NULL) names them in the error, as QEMU's nbd_read does. */
static int rd(client *c, void *buf, size_t len, const char *what)
{
    bool eof = false;
    errno = 0;
    if (len == 0 || c->io->read(c->io->opaque, buf, len, &eof) == 0) {
        return 0;
    }
    int err = errno ? errno : EIO;
    char why[128];
    if (eof) {
        snprintf(why, sizeof(why), "Unexpected end-of-file before all data were read");
    } else {
        snprintf(why, sizeof(why), "Unable to read from socket: %s", strerror(err));
    }
    if (what) {
        return vd_error_set(c->errp, VD_ERR_IO, EIO, "Failed to read %s: %s", what, why);
    }
    return vd_error_set(c->errp, VD_ERR_IO, EIO, "%s", why);
}

static int drop(client *c, uint32_t len)
{
    uint8_t buf[4096];
    while (len > 0) {
        uint32_t now = len < sizeof(buf) ? len : (uint32_t)sizeof(buf);
        if (rd(c, buf, now, NULL) < 0) {
            return -EIO;
        }
        len -= now;
    }
    return 0;
}

static int send_option(client *c, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    vd_put_be64(h, NBD_OPTS_MAGIC);
    vd_put_be32(h + 8, opt);
    vd_put_be32(h + 12, len);
    if (c->io->write(c->io->opaque, h, sizeof(h)) < 0) {
        return vd_error_set(c->errp, VD_ERR_IO, EIO, "Failed to send option request header: "
                            "Unable to write to socket: %s", strerror(errno ? errno : EIO));
    }
    if (len && c->io->write(c->io->opaque, data, len) < 0) {
        return vd_error_set(c->errp, VD_ERR_IO, EIO, "Failed to send option request data: "
                            "Unable to write to socket: %s", strerror(errno ? errno : EIO));
    }
    return 0;
}

/* A courtesy before hanging up; whether it arrives does not matter. */
static void send_abort(client *c)
{
    vd_error *ignored = NULL;
    client quiet = {.io = c->io, .errp = &ignored};
    send_option(&quiet, NBD_OPT_ABORT, NULL, 0);
    vd_error_free(ignored);
}

/* Fails after telling the server we give up, as QEMU does on a bad reply. */
static int fail_abort(client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_abort(client *c, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    send_abort(c);
    return vd_error_set(c->errp, VD_ERR_IO, EIO, "%s", msg);
}

/* ---- option replies ---------------------------------------------------------------------- */

typedef struct reply {
    uint32_t opt, type, len;
} reply;

static int read_reply(client *c, uint32_t opt, reply *r)
{
    uint8_t h[20];
    if (rd(c, h, sizeof(h), "option reply") < 0) {
        send_abort(c);
        return -EIO;
    }
    r->opt = vd_be32(h + 8);
    r->type = vd_be32(h + 12);
    r->len = vd_be32(h + 16);
    if (vd_be64(h) != NBD_REP_MAGIC) {
        return fail_abort(c, "Unexpected option reply magic");
    }
    if (r->opt != opt) {
        return fail_abort(c, "Unexpected option type %u (%s), expected %u (%s)", r->opt,
                          opt_name(r->opt), opt, opt_name(opt));
    }
    return 0;
}

/* 1: not an error reply. 0: an error the caller falls back from (unsupported, or any with
 * !strict), its message consumed. <0: a failure, reported as QEMU words it. */
static int reply_error(client *c, const reply *r, bool strict)
{
    if (!(r->type & (1u << 31))) {
        return 1;
    }
    char *msg = NULL;
    if (r->len) {
        if (r->len > CLIENT_MAX_REPLY) {
            return fail_abort(c, "server error %" PRIu32 " (%s) message is too long", r->type,
                              rep_name(r->type));
        }
        msg = malloc((size_t)r->len + 1);
        if (!msg) {
            return fail_abort(c, "out of memory");
        }
        if (rd(c, msg, r->len, NULL) < 0) {
            free(msg);
            vd_error_prepend(c->errp, "Failed to read option error %" PRIu32 " (%s) message",
                             r->type, rep_name(r->type));
            send_abort(c);
            return -EIO;
        }
        msg[r->len] = '\0';
    }
    if (r->type == NBD_REP_ERR_UNSUP || !strict) {
        free(msg);
        return 0;
    }
    char text[256];
    const char *hint = "";
    switch (r->type) {
    case NBD_REP_ERR_POLICY:
        snprintf(text, sizeof(text), "Denied by server for option %" PRIu32 " (%s)", r->opt,
                 opt_name(r->opt));
        break;
    case NBD_REP_ERR_INVALID:
        snprintf(text, sizeof(text), "Invalid parameters for option %" PRIu32 " (%s)", r->opt,
                 opt_name(r->opt));
        break;
    case NBD_REP_ERR_PLATFORM:
        snprintf(text, sizeof(text), "Server lacks support for option %" PRIu32 " (%s)",
                 r->opt, opt_name(r->opt));
        break;
    case NBD_REP_ERR_TLS_REQD:
        snprintf(text, sizeof(text), "TLS negotiation required before option %" PRIu32
                 " (%s)", r->opt, opt_name(r->opt));
        hint = "\nDid you forget a valid tls-creds?";
        break;
    case NBD_REP_ERR_UNKNOWN:
        snprintf(text, sizeof(text), "Requested export not available");
        break;
    case NBD_REP_ERR_SHUTDOWN:
        snprintf(text, sizeof(text), "Server shutting down before option %" PRIu32 " (%s)",
                 r->opt, opt_name(r->opt));
        break;
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
        snprintf(text, sizeof(text), "Server requires INFO_BLOCK_SIZE for option %" PRIu32
                 " (%s)", r->opt, opt_name(r->opt));
        break;
    default:
        snprintf(text, sizeof(text), "Unknown error code when asking for option %" PRIu32
                 " (%s)", r->opt, opt_name(r->opt));
        break;
    }
    send_abort(c);
    /* QEMU prints the server's message as a hint line under the error. */
    int ret = vd_error_set(c->errp, VD_ERR_IO, EIO, "%s%s%s%s", text, hint,
                           msg ? "\nserver reported: " : "", msg ? msg : "");
    free(msg);
    return ret;
}

/* A simple option (no data) that the server may refuse: 1 done, 0 refused, <0 failure. */
static int simple_option(client *c, uint32_t opt)
{
    reply r;
    if (send_option(c, opt, NULL, 0) < 0 || read_reply(c, opt, &r) < 0) {
        return -EIO;
    }
    int ret = reply_error(c, &r, false);
    if (ret <= 0) {
        return ret;
    }
    if (r.type != NBD_REP_ACK) {
        return fail_abort(c, "Server answered option %d (%s) with unexpected reply %" PRIu32
                          " (%s)", (int)opt, opt_name(opt), r.type, rep_name(r.type));
    }
    if (r.len != 0) {
        return fail_abort(c, "Option %d ('%s') response length is %" PRIu32 " (it should be "
                          "zero)", (int)opt, opt_name(opt), r.len);
    }
    return 1;
}

/* ---- the list ------------------------------------------------------------------------------ */

static void *xrealloc_array(void *p, size_t n, size_t size)
{
    void *q = realloc(p, n * size);
    if (!q) {
        abort();
    }
    return q;
}

/* One NBD_OPT_LIST reply: 1 with *name (and *desc) set, 0 at the end, <0 failure. */
static int list_one(client *c, char **name, char **desc)
{
    reply r;
    if (read_reply(c, NBD_OPT_LIST, &r) < 0) {
        return -EIO;
    }
    int ret = reply_error(c, &r, true);
    if (ret <= 0) {
        return ret;
    }
    if (r.type == NBD_REP_ACK) {
        if (r.len != 0) {
            return fail_abort(c, "length too long for option end");
        }
        return 0;
    }
    if (r.type != NBD_REP_SERVER) {
        return fail_abort(c, "Unexpected reply type %u (%s), expected %u (%s)", r.type,
                          rep_name(r.type), NBD_REP_SERVER, rep_name(NBD_REP_SERVER));
    }
    if (r.len < 4 || r.len > CLIENT_MAX_REPLY) {
        return fail_abort(c, "incorrect option length %" PRIu32, r.len);
    }
    uint8_t b[4];
    if (rd(c, b, 4, "option name length") < 0) {
        send_abort(c);
        return -EIO;
    }
    uint32_t nl = vd_be32(b), left = r.len - 4;
    if (nl > left || nl > NBD_MAX_STRING) {
        return fail_abort(c, "incorrect name length in server's list response");
    }
    char *n = malloc((size_t)nl + 1);
    if (!n) {
        abort();
    }
    if (rd(c, n, nl, "export name") < 0) {
        free(n);
        send_abort(c);
        return -EIO;
    }
    n[nl] = '\0';
    left -= nl;
    char *d = NULL;
    if (left) {
        if (left > NBD_MAX_STRING) {
            free(n);
            return fail_abort(c, "incorrect description length in server's list response");
        }
        d = malloc((size_t)left + 1);
        if (!d) {
            abort();
        }
        if (rd(c, d, left, "export description") < 0) {
            free(n);
            free(d);
            send_abort(c);
            return -EIO;
        }
        d[left] = '\0';
    }
    *name = n;
    *desc = d;
    return 1;
}

static bool is_pow2(uint32_t v)
{
    return v && !(v & (v - 1));
}

/* NBD_OPT_INFO asking for block sizes: 1 filled in, 0 unsupported, <0 failure. */
static int info_one(client *c, vd_nbd_export_desc *e)
{
    size_t nl = strlen(e->name);
    uint8_t *q = malloc(4 + nl + 4);
    if (!q) {
        abort();
    }
    vd_put_be32(q, (uint32_t)nl);
    memcpy(q + 4, e->name, nl);
    vd_put_be16(q + 4 + nl, 1);
    vd_put_be16(q + 4 + nl + 2, NBD_INFO_BLOCK_SIZE);
    int ret = send_option(c, NBD_OPT_INFO, q, (uint32_t)(4 + nl + 4));
    free(q);
    if (ret < 0) {
        return ret;
    }
    /* A server must send NBD_INFO_EXPORT, whose flags have at least HAS_FLAGS. */
    e->flags = 0;
    for (;;) {
        reply r;
        if (read_reply(c, NBD_OPT_INFO, &r) < 0) {
            return -EIO;
        }
        ret = reply_error(c, &r, true);
        if (ret <= 0) {
            return ret;
        }
        if (r.type == NBD_REP_ACK) {
            if (r.len) {
                return vd_error_set(c->errp, VD_ERR_IO, EIO, "server sent invalid "
                                    "NBD_REP_ACK");
            }
            if (!e->flags) {
                return vd_error_set(c->errp, VD_ERR_IO, EIO, "broken server omitted "
                                    "NBD_INFO_EXPORT");
            }
            return 1;
        }
        if (r.type != NBD_REP_INFO) {
            return fail_abort(c, "unexpected reply type %u (%s), expected %u (%s)", r.type,
                              rep_name(r.type), NBD_REP_INFO, rep_name(NBD_REP_INFO));
        }
        if (r.len < 2) {
            return fail_abort(c, "NBD_REP_INFO length %" PRIu32 " is too short", r.len);
        }
        uint8_t b[12];
        if (rd(c, b, 2, "info type") < 0) {
            send_abort(c);
            return -EIO;
        }
        uint16_t type = vd_be16(b);
        uint32_t len = r.len - 2;
        if (type == NBD_INFO_EXPORT) {
            if (len != 10) {
                return fail_abort(c, "remaining export info len %" PRIu32 " is unexpected "
                                  "size", len);
            }
            if (rd(c, b, 8, "info size") < 0 || rd(c, b + 8, 2, "info flags") < 0) {
                send_abort(c);
                return -EIO;
            }
            e->size = vd_be64(b);
            e->flags = vd_be16(b + 8);
            if (e->min_block && e->size % e->min_block) {
                return fail_abort(c, "export size %" PRIu64 " is not multiple of minimum "
                                  "block size %" PRIu32, e->size, e->min_block);
            }
        } else if (type == NBD_INFO_BLOCK_SIZE) {
            if (len != 12) {
                return fail_abort(c, "remaining export info len %" PRIu32 " is unexpected "
                                  "size", len);
            }
            if (rd(c, b, 4, "info minimum block size") < 0) {
                send_abort(c);
                return -EIO;
            }
            e->min_block = vd_be32(b);
            if (!is_pow2(e->min_block)) {
                return fail_abort(c, "server minimum block size %" PRIu32 " is not a power "
                                  "of two", e->min_block);
            }
            if (rd(c, b, 4, "info preferred block size") < 0) {
                send_abort(c);
                return -EIO;
            }
            e->opt_block = vd_be32(b);
            if (!is_pow2(e->opt_block) || e->opt_block < e->min_block) {
                return fail_abort(c, "server preferred block size %" PRIu32 " is not valid",
                                  e->opt_block);
            }
            if (rd(c, b, 4, "info maximum block size") < 0) {
                send_abort(c);
                return -EIO;
            }
            e->max_block = vd_be32(b);
            if (e->max_block < e->min_block) {
                return fail_abort(c, "server maximum block size %" PRIu32 " is not valid",
                                  e->max_block);
            }
        } else if (drop(c, len) < 0) {
            vd_error_prepend(c->errp, "Failed to read info payload");
            send_abort(c);
            return -EIO;
        }
    }
}

static int send_meta_list(client *c, const char *export, const char *query)
{
    size_t el = strlen(export), ql = query ? strlen(query) : 0;
    size_t len = 4 + el + 4 + (query ? 4 + ql : 0);
    uint8_t *q = malloc(len);
    if (!q) {
        abort();
    }
    vd_put_be32(q, (uint32_t)el);
    memcpy(q + 4, export, el);
    vd_put_be32(q + 4 + el, query ? 1 : 0);
    if (query) {
        vd_put_be32(q + 8 + el, (uint32_t)ql);
        memcpy(q + 12 + el, query, ql);
    }
    int ret = send_option(c, NBD_OPT_LIST_META_CONTEXT, q, (uint32_t)len);
    free(q);
    return ret;
}

/* One LIST_META_CONTEXT reply: 1 with *name set, 0 at the end (or refused), <0 failure. */
static int meta_one(client *c, char **name)
{
    reply r;
    if (read_reply(c, NBD_OPT_LIST_META_CONTEXT, &r) < 0) {
        return -EIO;
    }
    int ret = reply_error(c, &r, false);
    if (ret <= 0) {
        return ret;
    }
    if (r.type == NBD_REP_ACK) {
        if (r.len != 0) {
            return fail_abort(c, "Unexpected length to ACK response");
        }
        return 0;
    }
    if (r.type != NBD_REP_META_CONTEXT) {
        return fail_abort(c, "Unexpected reply type %u (%s), expected %u (%s)", r.type,
                          rep_name(r.type), NBD_REP_META_CONTEXT,
                          rep_name(NBD_REP_META_CONTEXT));
    }
    if (r.len <= 4 || r.len > CLIENT_MAX_REPLY) {
        return fail_abort(c, "Failed to negotiate meta context, server answered with "
                          "unexpected length %" PRIu32, r.len);
    }
    uint8_t b[4];
    if (rd(c, b, 4, "context id") < 0) {
        return -EIO;
    }
    char *n = malloc(r.len - 4 + 1);
    if (!n) {
        abort();
    }
    if (rd(c, n, r.len - 4, "context name") < 0) {
        free(n);
        return -EIO;
    }
    n[r.len - 4] = '\0';
    *name = n;
    return 1;
}

/* Every context the server lists. Servers from QEMU 3.0 forgot the "qemu:" ones when asked
 * for all, so a list with some but none of those is followed by a "qemu:" query. */
static int meta_list(client *c, vd_nbd_export_desc *e)
{
    bool seen_any = false, seen_qemu = false;
    if (send_meta_list(c, e->name, NULL) < 0) {
        return -EIO;
    }
    for (;;) {
        char *name = NULL;
        int ret = meta_one(c, &name);
        if (ret == 0 && seen_any && !seen_qemu) {
            seen_qemu = true;
            if (send_meta_list(c, e->name, "qemu:") < 0) {
                return -EIO;
            }
            continue;
        }
        if (ret <= 0) {
            return ret;
        }
        seen_any = true;
        if (!strncmp(name, "qemu:", 5)) {
            seen_qemu = true;
        }
        e->contexts = xrealloc_array(e->contexts, e->nb_contexts + 1, sizeof(char *));
        e->contexts[e->nb_contexts++] = name;
    }
}

static int oldstyle(client *c, vd_nbd_export_desc *e)
{
    uint8_t b[8];
    if (rd(c, b, 8, "export length") < 0) {
        return -EIO;
    }
    e->size = vd_be64(b);
    if (rd(c, b, 4, "export flags") < 0) {
        return -EIO;
    }
    uint32_t flags = vd_be32(b);
    if (flags & ~0xffffu) {
        /* QEMU's format string has a stray "x" after the number. */
        return vd_error_set(c->errp, VD_ERR_IO, EIO, "Unexpected export flags %xx", flags);
    }
    e->flags = (uint16_t)flags;
    /* A courtesy NBD_CMD_DISC once the padding is read; failures no longer matter. */
    vd_error *ignored = NULL;
    client quiet = {.io = c->io, .errp = &ignored};
    if (drop(&quiet, 124) == 0) {
        uint8_t rq[28];
        memset(rq, 0, sizeof(rq));
        vd_put_be32(rq, NBD_REQUEST_MAGIC);
        vd_put_be16(rq + 6, NBD_CMD_DISC);
        c->io->write(c->io->opaque, rq, sizeof(rq));
    }
    vd_error_free(ignored);
    return 0;
}

void vd_nbd_export_desc_free(vd_nbd_export_desc *list, size_t nb)
{
    for (size_t i = 0; list && i < nb; i++) {
        free(list[i].name);
        free(list[i].description);
        for (size_t j = 0; j < list[i].nb_contexts; j++) {
            free(list[i].contexts[j]);
        }
        free(list[i].contexts);
    }
    free(list);
}

int nbd_client_list(const nbd_client_io *io, vd_nbd_export_desc **out, size_t *nb,
                    vd_error **errp)
{
    client cl = {.io = io, .errp = errp}, *c = &cl;
    vd_nbd_export_desc *list = NULL;
    size_t n = 0;
    uint8_t b[8];
    int ret = -EIO;
    *out = NULL;
    *nb = 0;
    if (rd(c, b, 8, "initial magic") < 0) {
        goto out;
    }
    if (vd_be64(b) != NBD_INIT_MAGIC) {
        vd_error_set(errp, VD_ERR_IO, EIO, "Bad initial magic received: 0x%" PRIx64,
                     vd_be64(b));
        goto out;
    }
    if (rd(c, b, 8, "server magic") < 0) {
        goto out;
    }
    uint64_t magic = vd_be64(b);
    if (magic == NBD_OLDSTYLE_MAGIC) {
        list = calloc(1, sizeof(*list));
        if (!list) {
            abort();
        }
        n = 1;
        list[0].name = strdup("");
        if (!list[0].name) {
            abort();
        }
        ret = oldstyle(c, &list[0]);
        goto out;
    }
    if (magic != NBD_OPTS_MAGIC) {
        vd_error_set(errp, VD_ERR_IO, EIO, "Bad server magic received: 0x%" PRIx64, magic);
        goto out;
    }
    if (rd(c, b, 2, "server flags") < 0) {
        goto out;
    }
    uint16_t gflags = vd_be16(b);
    uint32_t cflags = gflags & (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    vd_put_be32(b, cflags);
    if (io->write(io->opaque, b, 4) < 0) {
        vd_error_set(errp, VD_ERR_IO, EIO, "Failed to send clientflags field: Unable to "
                     "write to socket: %s", strerror(errno ? errno : EIO));
        goto out;
    }
    if (!(gflags & NBD_FLAG_FIXED_NEWSTYLE)) {
        vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Server does not support export "
                     "lists");
        goto out;
    }
    int structured = simple_option(c, NBD_OPT_STRUCTURED_REPLY);
    if (structured < 0 || send_option(c, NBD_OPT_LIST, NULL, 0) < 0) {
        goto out;
    }
    for (;;) {
        char *name = NULL, *desc = NULL;
        int r = list_one(c, &name, &desc);
        if (r < 0) {
            goto out;
        }
        if (r == 0) {
            break;
        }
        list = xrealloc_array(list, n + 1, sizeof(*list));
        memset(&list[n], 0, sizeof(*list));
        list[n].name = name;
        list[n].description = desc;
        n++;
    }
    for (size_t i = 0; i < n; i++) {
        int r = info_one(c, &list[i]);
        if (r < 0) {
            goto out;
        }
        if (r == 0) {
            break;   /* no INFO: meta contexts are unlikely to work either */
        }
        if (structured && meta_list(c, &list[i]) < 0) {
            goto out;
        }
    }
    send_abort(c);
    ret = 0;
out:
    if (ret < 0) {
        vd_nbd_export_desc_free(list, n);
        return ret;
    }
    *out = list;
    *nb = n;
    return 0;
}

/* ---- over a socket ------------------------------------------------------------------------ */

static int fd_read(void *opaque, void *buf, size_t len, bool *eof)
{
    int fd = *(int *)opaque;
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t r = recv(fd, p, len, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            *eof = r == 0;
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

static int fd_write(void *opaque, const void *buf, size_t len)
{
    int fd = *(int *)opaque;
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int vd_nbd_list_exports(int fd, vd_nbd_export_desc **out, size_t *nb, vd_error **errp)
{
    nbd_client_io io = {.read = fd_read, .write = fd_write, .opaque = &fd};
    return nbd_client_list(&io, out, nb, errp);
}
