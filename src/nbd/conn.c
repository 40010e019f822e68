/* One NBD client: the fixed-newstyle handshake (option haggling, STARTTLS, INFO/GO,
 * meta contexts) and transmission. The connection's thread reads requests and hands them
 * to the server's workers (nbd_req_run), which reply under the connection's write lock,
 * so many requests of one client run at once and replies may come out of order. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "nbd/nbd-int.h"
#include "nbd/nbd-proto.h"

/* Known options carry at most this much data (names and queries are <= 4 KiB each);
 * longer ones are read and dropped. */
#define MAX_OPTION_DATA (1u << 20)


/* ---- socket I/O (plain or TLS) ------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads exactly len bytes. deadline_ms 0: none. Returns 0, or -1 on EOF, error or
 * timeout. */
static int conn_read(nbd_conn *c, void *buf, size_t len, int64_t deadline_ms)
{
    uint8_t *p = buf;
    while (len > 0) {
        if (deadline_ms && !(c->tls && nbd_tls_pending(c->tls))) {
            int64_t left = deadline_ms - now_ms();
            if (left <= 0) {
                return -1;
            }
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
            int r = poll(&pfd, 1, (int)left);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                return -1;
            }
        }
        ssize_t n = c->tls ? nbd_tls_recv(c->tls, p, len) : recv(c->fd, p, len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads and drops len bytes (option data or a payload that is refused). */
static int conn_skip(nbd_conn *c, uint64_t len, int64_t deadline_ms)
{
    uint8_t buf[4096];
    while (len > 0) {
        size_t now = len < sizeof(buf) ? (size_t)len : sizeof(buf);
        if (conn_read(c, buf, now, deadline_ms) < 0) {
            return -1;
        }
        len -= now;
    }
    return 0;
}

/* Writes the buffers in order, with the write lock held by the caller. */
static int conn_writev_locked(nbd_conn *c, struct iovec *iov, int n)
{
    if (c->write_failed) {
        return -1;
    }
    while (n > 0) {
        ssize_t w;
        if (c->tls) {
            w = nbd_tls_send(c->tls, iov[0].iov_base, iov[0].iov_len);
        } else {
            /* A sparse read can have more pieces than one call takes. */
            struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(n < IOV_MAX ? n : IOV_MAX)};
            w = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            c->write_failed = true;
            return -1;
        }
        size_t done = (size_t)w;
        while (n > 0 && done >= iov[0].iov_len) {
            done -= iov[0].iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov[0].iov_base = (uint8_t *)iov[0].iov_base + done;
            iov[0].iov_len -= done;
        }
    }
    return 0;
}

static int conn_write(nbd_conn *c, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    pthread_mutex_lock(&c->wlock);
    int ret = conn_writev_locked(c, &iov, 1);
    pthread_mutex_unlock(&c->wlock);
    return ret;
}

/* ---- option replies ------------------------------------------------------------------------ */

static int send_rep(nbd_conn *c, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
    uint8_t h[20];
    vd_put_be64(h, NBD_REP_MAGIC);
    vd_put_be32(h + 8, opt);
    vd_put_be32(h + 12, type);
    vd_put_be32(h + 16, len);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)data, len}};
    pthread_mutex_lock(&c->wlock);
    int ret = conn_writev_locked(c, iov, len ? 2 : 1);
    pthread_mutex_unlock(&c->wlock);
    return ret;
}

static int send_rep_err(nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int send_rep_err(nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    } else if ((size_t)n >= sizeof(msg)) {
        n = sizeof(msg) - 1;
    }
    return send_rep(c, opt, type, msg, (uint32_t)n);
}

static uint16_t export_flags(nbd_conn *c, const nbd_export *e)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_SEND_CACHE;
    /* No per-connection cache: a flush on any connection covers every completed write. */
    if (c->srv->max_connections != 1) {
        f |= NBD_FLAG_CAN_MULTI_CONN;
    }
    if (e->writable) {
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    } else {
        f |= NBD_FLAG_READ_ONLY;
    }
    if (c->structured) {
        f |= NBD_FLAG_SEND_DF;
    }
    return f;
}

/* The export's size: the disk's from the export's offset on. */
static uint64_t export_size(const nbd_export *e)
{
    uint64_t size = vd_disk_size(e->disk);
    return size > e->offset ? size - e->offset : 0;
}

/* ---- options ---------------------------------------------------------------------------------- */

enum { OPT_CONTINUE, OPT_TRANSMISSION, OPT_CLOSE };

static nbd_export *export_get(nbd_conn *c, const char *name)
{
    vd_nbd_server *s = c->srv;
    pthread_mutex_lock(&s->lock);
    nbd_export *e = nbd_export_find_locked(s, name);
    if (e) {
        e->refs++;
    }
    pthread_mutex_unlock(&s->lock);
    return e;
}

static void export_put(nbd_conn *c, nbd_export *e)
{
    vd_nbd_server *s = c->srv;
    pthread_mutex_lock(&s->lock);
    nbd_export_unref_locked(s, e);
    pthread_mutex_unlock(&s->lock);
}

/* Enters transmission on e (its reference passes to the connection). */
static int start_transmission(nbd_conn *c, nbd_export *e)
{
    vd_nbd_server *s = c->srv;
    pthread_mutex_lock(&s->lock);
    if (e->removed || c->closing) {
        nbd_export_unref_locked(s, e);
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    e->clients++;
    c->exp = e;
    c->negotiated = true;
    if (c->meta_export && strcmp(c->meta_export, e->name) != 0) {
        c->meta = 0;  /* contexts were chosen for another export */
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int opt_list(nbd_conn *c, uint32_t opt, uint32_t len)
{
    if (len) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "request must not have data");
    }
    vd_nbd_export_info *list = NULL;
    size_t nb = 0;
    vd_nbd_export_list(c->srv, &list, &nb);
    int ret = 0;
    for (size_t i = 0; i < nb && ret == 0; i++) {
        size_t nl = strlen(list[i].name);
        size_t dl = list[i].description ? strlen(list[i].description) : 0;
        uint8_t *p = malloc(4 + nl + dl);
        if (!p) {
            abort();
        }
        vd_put_be32(p, (uint32_t)nl);
        memcpy(p + 4, list[i].name, nl);
        if (dl) {
            memcpy(p + 4 + nl, list[i].description, dl);
        }
        ret = send_rep(c, opt, NBD_REP_SERVER, p, (uint32_t)(4 + nl + dl));
        free(p);
    }
    vd_nbd_export_list_free(list, nb);
    return ret ? ret : send_rep(c, opt, NBD_REP_ACK, NULL, 0);
}

static int send_info(nbd_conn *c, uint32_t opt, uint16_t type, const void *body, size_t len)
{
    uint8_t buf[2 + NBD_MAX_STRING];
    vd_put_be16(buf, type);
    memcpy(buf + 2, body, len);
    return send_rep(c, opt, NBD_REP_INFO, buf, (uint32_t)(2 + len));
}

/* INFO and GO: name, then the info types the client asks for. */
static int opt_info_go(nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len, bool *go)
{
    *go = false;
    if (len < 6) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    uint32_t nl = vd_be32(d);
    if (nl > len - 6 || nl > NBD_MAX_STRING) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "name length %u too long", nl);
    }
    uint16_t nreq = vd_be16(d + 4 + nl);
    if ((uint64_t)4 + nl + 2 + 2ull * nreq != len) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "option length %u does not match "
                            "its contents", len);
    }
    char name[NBD_MAX_STRING + 1];
    memcpy(name, d + 4, nl);
    name[nl] = '\0';
    bool want_name = false;
    for (uint16_t i = 0; i < nreq; i++) {
        if (vd_be16(d + 4 + nl + 2 + 2 * i) == NBD_INFO_NAME) {
            want_name = true;
        }
    }
    nbd_export *e = export_get(c, name);
    if (!e) {
        return send_rep_err(c, opt, NBD_REP_ERR_UNKNOWN, "export '%s' not present", name);
    }
    uint8_t b[12];
    vd_put_be64(b, export_size(e));
    vd_put_be16(b + 8, export_flags(c, e));
    int ret = send_info(c, opt, NBD_INFO_EXPORT, b, 10);
    if (ret == 0 && want_name) {
        ret = send_info(c, opt, NBD_INFO_NAME, e->name, strlen(e->name));
    }
    if (ret == 0 && e->description && *e->description) {
        ret = send_info(c, opt, NBD_INFO_DESCRIPTION, e->description,
                        strlen(e->description));
    }
    if (ret == 0) {
        /* Any byte alignment works unless the owner asked for more; 4 KiB is what the
         * formats like; 32 MiB per request. */
        vd_put_be32(b, e->min_block);
        vd_put_be32(b + 4, NBD_PREFERRED_BLOCK);
        vd_put_be32(b + 8, NBD_MAX_PAYLOAD);
        ret = send_info(c, opt, NBD_INFO_BLOCK_SIZE, b, 12);
    }
    if (ret == 0) {
        ret = send_rep(c, opt, NBD_REP_ACK, NULL, 0);
    }
    if (ret == 0 && opt == NBD_OPT_GO) {
        *go = true;
        return start_transmission(c, e);
    }
    export_put(c, e);
    return ret;
}

/* The contexts (bit 1 << id) one query names, as QEMU reads it: "base:allocation",
 * "qemu:allocation-depth" (when the export offers it) and "qemu:dirty-bitmap:NAME" (a
 * bitmap it offers) exactly; in a LIST, a bare namespace ("base:", "qemu:") or
 * "qemu:dirty-bitmap:" names all of those contexts. */
static unsigned meta_query(const char *q, uint32_t ql, bool list, const nbd_export *e)
{
    static const char bm[] = "qemu:dirty-bitmap:";
    const uint32_t bml = sizeof(bm) - 1;
    unsigned depth = e->allocation_depth ? 1u << NBD_META_ID_ALLOCATION_DEPTH : 0;
    unsigned all_bitmaps = 0;
    for (size_t i = 0; i < e->nb_bitmaps; i++) {
        all_bitmaps |= 1u << (NBD_META_ID_BITMAP0 + i);
    }
    if (ql == 15 && memcmp(q, "base:allocation", 15) == 0) {
        return 1u << NBD_META_ID_BASE_ALLOCATION;
    }
    if (ql == 21 && memcmp(q, "qemu:allocation-depth", 21) == 0) {
        return depth;
    }
    if (list && ql == 5 && memcmp(q, "base:", 5) == 0) {
        return 1u << NBD_META_ID_BASE_ALLOCATION;
    }
    if (list && ql == 5 && memcmp(q, "qemu:", 5) == 0) {
        return depth | all_bitmaps;
    }
    if (ql >= bml && memcmp(q, bm, bml) == 0) {
        if (ql == bml) {
            return list ? all_bitmaps : 0;
        }
        for (size_t i = 0; i < e->nb_bitmaps; i++) {
            const char *name = vd_dirty_bitmap_name(e->bitmaps[i]);
            if (ql - bml == strlen(name) && memcmp(q + bml, name, ql - bml) == 0) {
                return 1u << (NBD_META_ID_BITMAP0 + i);
            }
        }
    }
    return 0;
}

/* A context's name: QEMU's for ids 0 and 1, qemu:dirty-bitmap:NAME for a bitmap. */
static void meta_name(const nbd_export *e, unsigned id, char *buf, size_t len)
{
    if (id == NBD_META_ID_BASE_ALLOCATION) {
        snprintf(buf, len, "base:allocation");
    } else if (id == NBD_META_ID_ALLOCATION_DEPTH) {
        snprintf(buf, len, "qemu:allocation-depth");
    } else {
        snprintf(buf, len, "qemu:dirty-bitmap:%s",
                 vd_dirty_bitmap_name(e->bitmaps[id - NBD_META_ID_BITMAP0]));
    }
}

static int send_meta_context(nbd_conn *c, uint32_t opt, uint32_t id, const char *name)
{
    uint8_t b[4 + NBD_MAX_STRING];
    size_t nl = strlen(name);
    vd_put_be32(b, id);
    memcpy(b + 4, name, nl);
    return send_rep(c, opt, NBD_REP_META_CONTEXT, b, (uint32_t)(4 + nl));
}

/* LIST_META_CONTEXT and SET_META_CONTEXT: base:allocation, and qemu:allocation-depth on
 * exports that offer it. */
static int opt_meta(nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    if (set) {
        /* Each SET replaces the selection, even when it fails. */
        c->meta = 0;
        free(c->meta_export);
        c->meta_export = NULL;
    }
    if (!c->structured) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "use of meta contexts requires "
                            "structured replies");
    }
    if (len < 8) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    uint32_t nl = vd_be32(d);
    if (nl > len - 8 || nl > NBD_MAX_STRING) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "name length %u too long", nl);
    }
    char name[NBD_MAX_STRING + 1];
    memcpy(name, d + 4, nl);
    name[nl] = '\0';
    nbd_export *e = export_get(c, name);
    if (!e) {
        return send_rep_err(c, opt, NBD_REP_ERR_UNKNOWN, "export '%s' not present", name);
    }
    uint32_t nq = vd_be32(d + 4 + nl);
    uint64_t pos = 8 + (uint64_t)nl;
    unsigned sel = 0;
    if (nq == 0 && !set) {
        /* LIST with no query lists everything. */
        sel = meta_query("base:", 5, true, e) | meta_query("qemu:", 5, true, e);
    }
    int ret = 0;
    for (uint32_t i = 0; i < nq && ret == 0; i++) {
        /* Each query takes at least its length field, so a huge count fails soon. */
        uint32_t ql = pos + 4 <= len ? vd_be32(d + pos) : 0;
        pos += 4;
        if (pos > len || ql > len - pos || ql > NBD_MAX_STRING) {
            ret = send_rep_err(c, opt, NBD_REP_ERR_INVALID, "query %u runs past the option",
                               i);
            goto out;
        }
        sel |= meta_query((const char *)d + pos, ql, !set, e);
        pos += ql;
    }
    if (pos != len) {
        ret = send_rep_err(c, opt, NBD_REP_ERR_INVALID, "option length %u does not match "
                           "its contents", len);
        goto out;
    }
    /* QEMU's order and ids; a LIST reply carries id 0. */
    for (unsigned id = 0; id < 32 && ret == 0; id++) {
        if (sel & (1u << id)) {
            char cname[NBD_MAX_STRING + 1];
            meta_name(e, id, cname, sizeof(cname));
            ret = send_meta_context(c, opt, set ? id : 0, cname);
        }
    }
    if (ret == 0 && set && sel) {
        c->meta = sel;
        c->meta_export = strdup(name);
        if (!c->meta_export) {
            abort();
        }
    }
    if (ret == 0) {
        ret = send_rep(c, opt, NBD_REP_ACK, NULL, 0);
    }
out:
    export_put(c, e);
    return ret;
}

static int opt_export_name(nbd_conn *c, const uint8_t *d, uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    if (len > NBD_MAX_STRING) {
        return -1;
    }
    if (len) {
        memcpy(name, d, len);
    }
    name[len] = '\0';
    nbd_export *e = export_get(c, name);
    if (!e) {
        return -1;   /* the protocol has no way to say no here */
    }
    uint8_t b[10 + 124];
    memset(b, 0, sizeof(b));
    vd_put_be64(b, export_size(e));
    vd_put_be16(b + 8, export_flags(c, e));
    if (conn_write(c, b, c->no_zeroes ? 10 : sizeof(b)) < 0) {
        export_put(c, e);
        return -1;
    }
    return start_transmission(c, e);
}

static int opt_starttls(nbd_conn *c, uint32_t opt, uint32_t len, int64_t deadline)
{
    if (len) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "request must not have data");
    }
    if (!c->srv->tls) {
        return send_rep_err(c, opt, NBD_REP_ERR_POLICY, "TLS not configured");
    }
    if (c->tls) {
        return send_rep_err(c, opt, NBD_REP_ERR_INVALID, "TLS already enabled");
    }
    if (send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0) {
        return -1;
    }
    char err[256];
    int left = (int)(deadline - now_ms());
    if (nbd_tls_start(c->srv->tls, c->fd, left > 0 ? left : 1, &c->tls, err,
                      sizeof(err)) < 0) {
        return -1;
    }
    /* Nothing negotiated in plaintext survives. */
    c->structured = false;
    c->meta = 0;
    free(c->meta_export);
    c->meta_export = NULL;
    return 0;
}

/* Option haggling until transmission starts (returns 0) or the connection ends (-1). */
static int negotiate(nbd_conn *c)
{
    int64_t deadline = now_ms() + NBD_HANDSHAKE_SECS * 1000;
    uint8_t g[18];
    vd_put_be64(g, NBD_INIT_MAGIC);
    vd_put_be64(g + 8, NBD_OPTS_MAGIC);
    vd_put_be16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (conn_write(c, g, sizeof(g)) < 0) {
        return -1;
    }
    uint8_t cf[4];
    if (conn_read(c, cf, 4, deadline) < 0) {
        return -1;
    }
    uint32_t flags = vd_be32(cf);
    if (flags & ~(uint32_t)(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)) {
        return -1;   /* unknown client flags: the spec says drop */
    }
    c->fixed = flags & NBD_FLAG_FIXED_NEWSTYLE;
    c->no_zeroes = flags & NBD_FLAG_NO_ZEROES;

    for (;;) {
        uint8_t h[16];
        if (conn_read(c, h, sizeof(h), deadline) < 0 || vd_be64(h) != NBD_OPTS_MAGIC) {
            return -1;
        }
        uint32_t opt = vd_be32(h + 8), len = vd_be32(h + 12);
        if (len > NBD_MAX_OPTION) {
            return -1;
        }
        bool known = opt == NBD_OPT_EXPORT_NAME || opt == NBD_OPT_ABORT ||
                     opt == NBD_OPT_LIST || opt == NBD_OPT_STARTTLS || opt == NBD_OPT_INFO ||
                     opt == NBD_OPT_GO || opt == NBD_OPT_STRUCTURED_REPLY ||
                     opt == NBD_OPT_LIST_META_CONTEXT || opt == NBD_OPT_SET_META_CONTEXT;
        bool tls_missing = c->srv->tls && !c->tls;
        if (!known || len > MAX_OPTION_DATA ||
            (tls_missing && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT)) {
            if (conn_skip(c, len, deadline) < 0) {
                return -1;
            }
            int ret;
            if (opt == NBD_OPT_EXPORT_NAME || !c->fixed) {
                return -1;   /* no way to refuse these but hanging up */
            } else if (tls_missing) {
                ret = send_rep_err(c, opt, NBD_REP_ERR_TLS_REQD, "Option 0x%x not permitted "
                                   "before TLS", opt);
            } else if (!known) {
                ret = send_rep_err(c, opt, NBD_REP_ERR_UNSUP, "Unsupported option %u", opt);
            } else {
                ret = send_rep_err(c, opt, NBD_REP_ERR_TOO_BIG, "option too long");
            }
            if (ret < 0) {
                return -1;
            }
            continue;
        }
        uint8_t *d = len ? malloc(len) : NULL;
        if (len && !d) {
            return -1;
        }
        if (conn_read(c, d, len, deadline) < 0) {
            free(d);
            return -1;
        }
        int ret = 0;
        bool go = false;
        switch (opt) {
        case NBD_OPT_EXPORT_NAME:
            ret = opt_export_name(c, d, len);
            free(d);
            return ret;
        case NBD_OPT_ABORT:
            send_rep(c, opt, NBD_REP_ACK, NULL, 0);
            free(d);
            return -1;
        case NBD_OPT_LIST:
            ret = opt_list(c, opt, len);
            break;
        case NBD_OPT_STARTTLS:
            ret = opt_starttls(c, opt, len, deadline);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            ret = opt_info_go(c, opt, d, len, &go);
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len) {
                ret = send_rep_err(c, opt, NBD_REP_ERR_INVALID, "request must not have data");
            } else if (c->structured) {
                ret = send_rep_err(c, opt, NBD_REP_ERR_INVALID, "structured reply already "
                                   "negotiated");
            } else {
                c->structured = true;
                ret = send_rep(c, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            ret = opt_meta(c, opt, d, len);
            break;
        }
        free(d);
        if (ret < 0) {
            return -1;
        }
        if (go) {
            return 0;
        }
    }
}

/* ---- transmission: replies -------------------------------------------------------------- */

static uint32_t nbd_errno(int err)
{
    switch (err) {
    case EPERM:
    case EROFS:
    case EACCES:
        return NBD_EPERM;
    case EIO:
        return NBD_EIO;
    case ENOMEM:
        return NBD_ENOMEM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EINVAL;
    }
}

static int reply_simple(nbd_conn *c, uint64_t cookie, uint32_t err, const void *data,
                        uint32_t len)
{
    uint8_t h[16];
    vd_put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
    vd_put_be32(h + 4, err);
    vd_put_be64(h + 8, cookie);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)data, len}};
    pthread_mutex_lock(&c->wlock);
    int ret = conn_writev_locked(c, iov, data && len ? 2 : 1);
    pthread_mutex_unlock(&c->wlock);
    return ret;
}

static void chunk_header(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie,
                         uint32_t len)
{
    vd_put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
    vd_put_be16(h + 4, flags);
    vd_put_be16(h + 6, type);
    vd_put_be64(h + 8, cookie);
    vd_put_be32(h + 16, len);
}

static int reply_error(nbd_conn *c, const nbd_req *r, uint32_t err, const char *msg)
{
    if (!c->structured) {
        return reply_simple(c, r->cookie, err, NULL, 0);
    }
    size_t ml = msg ? strlen(msg) : 0;
    if (ml > 1024) {
        ml = 1024;
    }
    uint8_t h[20 + 6];
    chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie, (uint32_t)(6 + ml));
    vd_put_be32(h + 20, err);
    vd_put_be16(h + 24, (uint16_t)ml);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)msg, ml}};
    pthread_mutex_lock(&c->wlock);
    int ret = conn_writev_locked(c, iov, ml ? 2 : 1);
    pthread_mutex_unlock(&c->wlock);
    return ret;
}

static int reply_read(nbd_conn *c, const nbd_req *r, const uint8_t *data)
{
    if (!c->structured) {
        return reply_simple(c, r->cookie, 0, data, r->len);
    }
    uint8_t h[20 + 8];
    if (r->len == 0) {
        chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r->cookie, 0);
        return conn_write(c, h, 20);
    }
    chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie, 8 + r->len);
    vd_put_be64(h + 20, r->off);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)data, r->len}};
    pthread_mutex_lock(&c->wlock);
    int ret = conn_writev_locked(c, iov, 2);
    pthread_mutex_unlock(&c->wlock);
    return ret;
}

/* One run of a structured read: bytes that read as zeros (a hole chunk) or data. */
typedef struct read_span {
    uint64_t off;
    uint32_t len;
    bool hole;
} read_span;

/* A structured read as qemu-nbd answers it: the ranges that read as zeros (holes and zero
 * clusters) go out as OFFSET_HOLE chunks and the rest as OFFSET_DATA chunks, the last one
 * flagged DONE. Everything is read before the first chunk goes out, so a failure is still
 * one plain error reply. r->len is at most NBD_MAX_PAYLOAD and not 0. */
static int reply_sparse_read(nbd_conn *c, const nbd_req *r)
{
    vd_disk *d = c->exp->disk;
    uint64_t base = c->exp->offset;
    uint64_t off = r->off, end = r->off + r->len, data_bytes = 0;
    size_t n = 0, cap = 8;
    read_span *spans = malloc(cap * sizeof(*spans));
    uint8_t *hdrs = NULL, *buf = NULL;
    struct iovec *iov = NULL;
    int ret = 0;
    if (!spans) {
        return reply_error(c, r, NBD_ENOMEM, "out of memory");
    }
    while (off < end) {
        vd_extent ext;
        ret = vd_block_status(d, base + off, end - off, &ext);
        if (ret == 0 && ext.length == 0) {
            ret = -EIO;
        }
        if (ret < 0) {
            goto fail;
        }
        uint32_t l = (uint32_t)(ext.length < end - off ? ext.length : end - off);
        bool hole = ext.flags & VD_BS_ZERO;
        if (n > 0 && spans[n - 1].hole == hole) {
            spans[n - 1].len += l;
        } else {
            if (n == cap) {
                cap *= 2;
                read_span *ns = realloc(spans, cap * sizeof(*spans));
                if (!ns) {
                    ret = -ENOMEM;
                    goto fail;
                }
                spans = ns;
            }
            spans[n++] = (read_span){.off = off, .len = l, .hole = hole};
        }
        data_bytes += hole ? 0 : l;
        off += l;
    }
    hdrs = malloc(n * 32);
    iov = malloc(n * 2 * sizeof(*iov));
    buf = data_bytes ? malloc(data_bytes) : NULL;
    if (!hdrs || !iov || (data_bytes && !buf)) {
        ret = -ENOMEM;
        goto fail;
    }
    int niov = 0;
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++) {
        uint8_t *h = hdrs + i * 32;
        uint16_t flags = i + 1 == n ? NBD_REPLY_FLAG_DONE : 0;
        if (spans[i].hole) {
            chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie, 12);
            vd_put_be64(h + 20, spans[i].off);
            vd_put_be32(h + 28, spans[i].len);
            iov[niov++] = (struct iovec){h, 32};
            continue;
        }
        ret = vd_pread(d, p, spans[i].len, base + spans[i].off);
        if (ret < 0) {
            goto fail;
        }
        chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie, 8 + spans[i].len);
        vd_put_be64(h + 20, spans[i].off);
        iov[niov++] = (struct iovec){h, 28};
        iov[niov++] = (struct iovec){p, spans[i].len};
        p += spans[i].len;
    }
    pthread_mutex_lock(&c->wlock);
    ret = conn_writev_locked(c, iov, niov);
    pthread_mutex_unlock(&c->wlock);
    free(spans);
    free(hdrs);
    free(iov);
    free(buf);
    return ret;

fail:
    free(spans);
    free(hdrs);
    free(iov);
    free(buf);
    return reply_error(c, r, nbd_errno(-ret), ret == -ENOMEM ? "out of memory" : "read failed");
}

/* QEMU counts the zeros read past the end of a backing image shorter than the image above
 * as allocated in that backing image: its depth, or 0 when off is within every image.
 * Only asked where nothing is allocated, so every image down to that one is reached. The
 * lock keeps walks apart: a walk may create the disk's backing handles. */
static uint32_t past_short_backing(nbd_export *e, uint64_t off)
{
    uint32_t depth = 1, ret = 0;
    pthread_mutex_lock(&e->chain_lock);
    for (vd_disk *b = vd_disk_backing(e->disk); b && !ret; b = vd_disk_backing(b)) {
        depth++;
        if (off >= vd_disk_size(b)) {
            ret = depth;
        }
    }
    pthread_mutex_unlock(&e->chain_lock);
    return ret;
}

/* Whether the top image alone reads as zeros at off where it has nothing allocated, as
 * QEMU's status of one image says: with no backing image, or past the backing's end. */
static bool top_hole_reads_zero(nbd_export *e, uint64_t off)
{
    pthread_mutex_lock(&e->chain_lock);
    vd_disk *b = vd_disk_backing(e->disk);
    bool zero = !b || off >= vd_disk_size(b);
    pthread_mutex_unlock(&e->chain_lock);
    return zero;
}

/* The status of one extent of the export as a context describes it: NBD_STATE_* bits for
 * base:allocation, QEMU's depth for qemu:allocation-depth (0 unallocated, N from the Nth
 * image of the chain). With an offset qemu-nbd reads through a raw node whose status is the
 * top image's alone, so that is what is reported then. */
static int export_status(nbd_export *e, unsigned id, uint64_t off, uint64_t len,
                         uint64_t *plen, uint32_t *val)
{
    if (id >= NBD_META_ID_BITMAP0) {
        /* A dirty run from here, or the clean stretch up to the next one. */
        vd_dirty_bitmap *b = e->bitmaps[id - NBD_META_ID_BITMAP0];
        uint64_t from = e->offset + off, end = from + len, start, dlen;
        if (!vd_dirty_bitmap_next_dirty_area(b, from, end, &start, &dlen)) {
            start = end;
        }
        *val = start == from ? NBD_STATE_DIRTY : 0;
        *plen = start == from ? dlen : start - from;
        return 0;
    }
    vd_extent ext;
    int ret = e->offset ? vd_block_status_top(e->disk, e->offset + off, len, &ext)
                        : vd_block_status(e->disk, off, len, &ext);
    if (ret < 0) {
        return ret;
    }
    if (ext.length == 0) {
        return -EIO;
    }
    *plen = ext.length;
    if (e->offset && !(ext.flags & (VD_BS_ALLOCATED | VD_BS_DATA | VD_BS_ZERO)) &&
        top_hole_reads_zero(e, e->offset + off)) {
        ext.flags |= VD_BS_ZERO;
    }
    if (id >= NBD_META_ID_BITMAP0) {
        /* Checked above for a bitmap. */
    } else if (id == NBD_META_ID_ALLOCATION_DEPTH) {
        if (ext.flags & VD_BS_ALLOCATED) {
            *val = (uint32_t)ext.depth + 1;
        } else {
            *val = e->offset ? 0 : past_short_backing(e, off);
        }
    } else {
        *val = (ext.flags & VD_BS_DATA ? 0 : NBD_STATE_HOLE) |
               (ext.flags & VD_BS_ZERO ? NBD_STATE_ZERO : 0);
    }
    return 0;
}

/* One BLOCK_STATUS chunk for context id: extents from r->off, consecutive, merged when
 * equal, at most one with REQ_ONE (and then not past the request). Returns the chunk in
 * *out (its header still to fill) and its size, or -errno. */
static int build_extents(nbd_conn *c, const nbd_req *r, unsigned id, uint8_t **out,
                         size_t *outlen)
{
    nbd_export *e = c->exp;
    uint64_t size = export_size(e);
    uint64_t off = r->off, end = r->off + r->len;
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;
    size_t cap = 64, n = 0;
    uint8_t *buf = malloc(20 + 4 + cap * 8);
    if (!buf) {
        return -ENOMEM;
    }
    uint32_t last = 0;
    int ret = 0;
    while (off < end && n < NBD_MAX_EXTENTS) {
        uint64_t l;
        uint32_t v;
        ret = export_status(e, id, off, (end < size ? end : size) - off, &l, &v);
        if (ret < 0) {
            break;
        }
        if (n > 0 && v == last && vd_be32(buf + 24 + (n - 1) * 8) + l <= UINT32_MAX) {
            vd_put_be32(buf + 24 + (n - 1) * 8, (uint32_t)(vd_be32(buf + 24 + (n - 1) * 8) + l));
        } else {
            if (one && n == 1) {
                break;   /* REQ_ONE: equal extents merge into the one, as in QEMU */
            }
            if (l > UINT32_MAX - 511) {
                l = (UINT32_MAX - 511) & ~511ull;   /* an extent length is 32 bits */
            }
            if (n == cap) {
                cap *= 2;
                uint8_t *nb = realloc(buf, 20 + 4 + cap * 8);
                if (!nb) {
                    ret = -ENOMEM;
                    break;
                }
                buf = nb;
            }
            vd_put_be32(buf + 24 + n * 8, (uint32_t)l);
            vd_put_be32(buf + 24 + n * 8 + 4, v);
            n++;
            last = v;
        }
        off += l;
    }
    if (ret == 0 && n == 0) {
        ret = -EIO;
    }
    if (ret < 0) {
        free(buf);
        return ret;
    }
    if (one && vd_be32(buf + 24) > r->len) {
        vd_put_be32(buf + 24, r->len);
    }
    vd_put_be32(buf + 20, id);
    *out = buf;
    *outlen = 24 + n * 8;
    return 0;
}

/* One chunk per selected context, in id order (QEMU's), the last flagged DONE. Every
 * chunk is built before the first goes out, so a failure is one plain error reply. */
static int reply_block_status(nbd_conn *c, const nbd_req *r)
{
    uint8_t *bufs[32] = {NULL};
    size_t lens[32] = {0};
    unsigned ids[32], n = 0;
    int ret = 0;
    for (unsigned id = 0; id < 32; id++) {
        if (c->meta & (1u << id)) {
            ids[n++] = id;
        }
    }
    for (unsigned i = 0; i < n && ret == 0; i++) {
        ret = build_extents(c, r, ids[i], &bufs[i], &lens[i]);
    }
    if (ret < 0) {
        for (unsigned i = 0; i < n; i++) {
            free(bufs[i]);
        }
        return reply_error(c, r, nbd_errno(-ret), ret == -ENOMEM ? "out of memory"
                                                                 : "block status failed");
    }
    struct iovec iov[32];
    for (unsigned i = 0; i < n; i++) {
        chunk_header(bufs[i], i + 1 == n ? NBD_REPLY_FLAG_DONE : 0,
                     NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie, (uint32_t)(lens[i] - 20));
        iov[i] = (struct iovec){bufs[i], lens[i]};
    }
    pthread_mutex_lock(&c->wlock);
    ret = conn_writev_locked(c, iov, (int)n);
    pthread_mutex_unlock(&c->wlock);
    for (unsigned i = 0; i < n; i++) {
        free(bufs[i]);
    }
    return ret;
}

/* The reply to a write the reader ran itself. The reader must never wait on the socket (a
 * client may be busy sending while it does not read yet): the reply goes out now only if
 * the line is free and the socket takes it at once; otherwise a worker sends it. */
#define DEFERRED 1

static int reply_from_reader(nbd_conn *c, nbd_req *r, uint32_t err)
{
    if (!err && !c->tls && pthread_mutex_trylock(&c->wlock) == 0) {
        uint8_t h[16];
        vd_put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
        vd_put_be32(h + 4, 0);
        vd_put_be64(h + 8, r->cookie);
        ssize_t w = c->write_failed ? -1 : send(c->fd, h, sizeof(h), MSG_NOSIGNAL | MSG_DONTWAIT);
        int ret = 0;
        if (w > 0 && (size_t)w < sizeof(h)) {
            /* Part of 16 bytes went: the rest must follow before anything else. */
            struct iovec iov = {h + w, sizeof(h) - (size_t)w};
            ret = conn_writev_locked(c, &iov, 1);
        } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            c->write_failed = true;
            ret = -1;
        }
        pthread_mutex_unlock(&c->wlock);
        if (w > 0 || ret < 0) {
            return ret;
        }
    }
    r->reply_only = true;
    r->reply_err = err;
    free(r->data);
    r->data = NULL;
    nbd_queue_counted(c->srv, r);
    return DEFERRED;
}

/* ---- transmission: running a request -------------------------------------------------------- */

/* Which command flags each command may carry (FUA on any, as QEMU accepts). */
static bool flags_valid(const nbd_conn *c, const nbd_req *r)
{
    uint16_t allowed = NBD_CMD_FLAG_FUA;
    switch (r->type) {
    case NBD_CMD_READ:
        allowed |= c->structured ? NBD_CMD_FLAG_DF : 0;
        break;
    case NBD_CMD_WRITE_ZEROES:
        allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        break;
    case NBD_CMD_BLOCK_STATUS:
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    }
    return !(r->flags & ~allowed);
}

static int run(nbd_conn *c, nbd_req *r)
{
    nbd_export *e = c->exp;
    vd_disk *d = e->disk;
    uint64_t size = export_size(e), at = e->offset + r->off;
    bool writes = r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES ||
                  r->type == NBD_CMD_TRIM;
    bool fua = r->flags & NBD_CMD_FLAG_FUA;
    int ret;

    if (r->early_err) {
        return reply_error(c, r, (uint32_t)r->early_err, "request refused");
    }
    if (r->type > NBD_CMD_BLOCK_STATUS || r->type == NBD_CMD_DISC) {
        return reply_error(c, r, NBD_EINVAL, "unknown command");
    }
    if (!flags_valid(c, r)) {
        return reply_error(c, r, NBD_EINVAL, "invalid flags for the command");
    }
    if (writes && !e->writable) {
        return reply_error(c, r, NBD_EPERM, "export is read-only");
    }
    if (r->type != NBD_CMD_FLUSH && (r->off > size || r->len > size - r->off)) {
        return reply_error(c, r, writes && r->type != NBD_CMD_TRIM ? NBD_ENOSPC : NBD_EINVAL,
                           "request beyond the end of the export");
    }
    switch (r->type) {
    case NBD_CMD_READ: {
        if (r->len > NBD_MAX_PAYLOAD) {
            return reply_error(c, r, NBD_EINVAL, "read request too large");
        }
        if (fua && (ret = vd_flush(d)) < 0) {
            return reply_error(c, r, nbd_errno(-ret), "flush failed");
        }
        if (c->structured && !(r->flags & NBD_CMD_FLAG_DF) && r->len) {
            return reply_sparse_read(c, r);
        }
        uint8_t *buf = r->len ? malloc(r->len) : NULL;
        if (r->len && !buf) {
            return reply_error(c, r, NBD_ENOMEM, "out of memory");
        }
        ret = r->len ? vd_pread(d, buf, r->len, at) : 0;
        int w = ret < 0 ? reply_error(c, r, nbd_errno(-ret), "read failed")
                        : reply_read(c, r, buf);
        free(buf);
        return w;
    }
    case NBD_CMD_WRITE:
        ret = r->len ? vd_pwrite(d, r->data, r->len, at, fua ? VD_REQ_FUA : 0) : 0;
        break;
    case NBD_CMD_FLUSH:
        ret = vd_flush(d);
        break;
    case NBD_CMD_TRIM:
        ret = r->len ? vd_pdiscard(d, at, r->len) : 0;
        if (ret == 0 && fua) {
            ret = vd_flush(d);
        }
        break;
    case NBD_CMD_CACHE:
        ret = 0;   /* a hint; the page cache already holds what was read */
        break;
    case NBD_CMD_WRITE_ZEROES: {
        unsigned f = (r->flags & NBD_CMD_FLAG_NO_HOLE ? 0 : VD_REQ_MAY_UNMAP) |
                     (fua ? VD_REQ_FUA : 0) |
                     (r->flags & NBD_CMD_FLAG_FAST_ZERO ? VD_REQ_NO_FALLBACK : 0);
        ret = r->len ? vd_pwrite_zeroes(d, at, r->len, f) : 0;
        if (ret == -ENOTSUP && !(r->flags & NBD_CMD_FLAG_FAST_ZERO)) {
            ret = -EIO;   /* ENOTSUP is only for FAST_ZERO */
        }
        break;
    }
    case NBD_CMD_BLOCK_STATUS:
        if (!c->structured || !c->meta) {
            return reply_error(c, r, NBD_EINVAL, "no metadata context negotiated");
        }
        if (r->len == 0) {
            return reply_error(c, r, NBD_EINVAL, "need non-zero length");
        }
        return reply_block_status(c, r);
    default:
        return reply_error(c, r, NBD_EINVAL, "unknown command");
    }
    if (r->on_reader) {
        return reply_from_reader(c, r, ret < 0 ? nbd_errno(-ret) : 0);
    }
    if (ret < 0) {
        return reply_error(c, r, nbd_errno(-ret), strerror(-ret));
    }
    return reply_simple(c, r->cookie, 0, NULL, 0);
}

void nbd_req_run(nbd_req *r)
{
    nbd_conn *c = r->c;
    uint32_t bytes = nbd_req_bytes(r);
    if (r->reply_only) {
        if (r->reply_err) {
            reply_error(c, r, r->reply_err, "write failed");
        } else {
            reply_simple(c, r->cookie, 0, NULL, 0);
        }
    } else if (nbd_conn_closing(c)) {
        /* Not started before the shutdown: not run at all. The socket is shut down, so
         * the reply fails at once (or is skipped after an earlier failure). */
        reply_error(c, r, NBD_ESHUTDOWN, "server shutting down");
    } else if (run(c, r) == DEFERRED) {
        return;   /* a worker sends the reply and finishes the request */
    }
    free(r->data);
    free(r);
    nbd_request_done(c->srv, c, bytes);
}

/* ---- the connection thread -------------------------------------------------------------------- */

static void transmission(nbd_conn *c)
{
    while (!nbd_conn_closing(c)) {
        uint8_t h[28];
        if (conn_read(c, h, sizeof(h), 0) < 0 || vd_be32(h) != NBD_REQUEST_MAGIC) {
            return;
        }
        nbd_req *r = calloc(1, sizeof(*r));
        if (!r) {
            return;
        }
        r->c = c;
        r->flags = vd_be16(h + 4);
        r->type = vd_be16(h + 6);
        r->cookie = vd_be64(h + 8);
        r->off = vd_be64(h + 16);
        r->len = vd_be32(h + 24);
        if (r->type == NBD_CMD_DISC) {
            free(r);
            return;
        }
        if (r->type == NBD_CMD_WRITE && r->len) {
            /* The payload is always consumed, or the stream loses its framing. */
            if (r->len > NBD_MAX_PAYLOAD) {
                if (conn_skip(c, r->len, 0) < 0) {
                    free(r);
                    return;
                }
                r->early_err = NBD_EINVAL;
                r->len = 0;
            } else {
                /* Page-aligned, so an O_DIRECT image takes it without a bounce copy. */
                void *data = NULL;
                r->data = posix_memalign(&data, 4096, r->len) == 0 ? data : NULL;
                if (!r->data || conn_read(c, r->data, r->len, 0) < 0) {
                    free(r->data);
                    free(r);
                    return;
                }
            }
        }
        /* Buffered writes to one file take turns in the kernel anyway: running them here
         * saves two thread switches per request. O_DIRECT writes run side by side in the
         * kernel, and writes that reach a peer (an NBD client below: a quorum's replication
         * child) wait on it, so those go to the workers with reads and the rest, where a
         * slow one does not hold up the requests behind it. Requests in flight at once are not ordered
         * against each other (as in QEMU, and as the NBD protocol allows), overlapping
         * writes included. Once the connection is closing, what the socket still holds is
         * dropped unread. */
        int ret = r->type == NBD_CMD_WRITE && !c->exp->direct
                      ? nbd_run_now(c->srv, r) : nbd_queue_request(c->srv, r);
        if (ret < 0) {
            free(r->data);
            free(r);
            return;
        }
    }
}

/* The end of a connection, in an order that lets the server's shutdown rely on it: the
 * requests in flight finish (their replies still go out); the TLS session ends while the
 * connection is still listed, so a server shutdown can still wake a close_notify that
 * blocks on a client that does not read; the connection leaves the list and its memory
 * and socket are released under the lock, so once the list is empty nothing of it runs. */
void *nbd_conn_main(void *arg)
{
    nbd_conn *c = arg;
    vd_nbd_server *s = c->srv;
    if (negotiate(c) == 0) {
        transmission(c);
    }
    pthread_mutex_lock(&s->lock);
    while (c->inflight) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    if (c->exp) {
        c->exp->clients--;
        nbd_export_unref_locked(s, c->exp);
        c->exp = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (c->tls) {
        nbd_tls_free(c->tls);
        c->tls = NULL;
    }
    pthread_mutex_lock(&s->lock);
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    s->nb_conns--;
    /* qemu-nbd without --persistent: the last client that got as far as transmission
     * ends the server; one that left during the handshake (a port probe) does not. */
    if (s->one_shot && c->negotiated && s->nb_conns == 0) {
        s->no_more_clients = true;
        char b = 0;
        ssize_t w = write(s->wake[1], &b, 1);
        (void)w;
    }
    close(c->fd);
    pthread_mutex_destroy(&c->wlock);
    free(c->meta_export);
    free(c);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}
