/* The generic request path: every node op passes here once. It checks bounds, splits by
 * max_transfer, does read-modify-write for nodes that need aligned requests, and supplies
 * the write-zeroes fallback, so drivers never re-check what block.h promises them. Every
 * request that changes data passes vd_write_prepare/finish (write-path.c) once, with the
 * range its caller asked for; the splitting and fallbacks below it do not pass again. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "block/engine.h"

#define ZERO_CHUNK (1u << 20)

void vd_node_set_error(vd_node *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0) {
        msg = NULL;   /* out of memory: the errno alone will have to do */
    }
    va_end(ap);
    /* Without an engine (a probe) the order among nodes does not matter. */
    uint64_t seq = n->engine ? __atomic_add_fetch(&n->engine->err_seq, 1, __ATOMIC_RELAXED)
                             : 1;
    pthread_mutex_lock(&n->err_lock);
    free(n->err_msg);
    n->err_msg = msg;
    n->err_seq = msg ? seq : 0;
    pthread_mutex_unlock(&n->err_lock);
}

/* The newest message under n: its sequence, copied into buf (0: none). */
static uint64_t newest_error(vd_node *n, char *buf, size_t len, uint64_t best)
{
    if (!n) {
        return best;
    }
    pthread_mutex_lock(&n->err_lock);
    if (n->err_msg && n->err_seq > best) {
        best = n->err_seq;
        snprintf(buf, len, "%s", n->err_msg);
    }
    pthread_mutex_unlock(&n->err_lock);
    best = newest_error(n->file, buf, len, best);
    return newest_error(n->backing, buf, len, best);
}

bool vd_node_get_error(vd_node *n, char *buf, size_t len)
{
    if (len) {
        buf[0] = '\0';
    }
    return newest_error(n, buf, len, 0) != 0;
}

/* Format nodes have a fixed virtual size; protocol nodes (files) grow with writes, and
 * reads past their end return zeros, so only format nodes are bounds-checked. */
static int check_range(vd_node *n, uint64_t off, uint64_t len)
{
    if (off + len < off) {
        return -EINVAL;
    }
    if (n->drv->is_format && off + len > n->size) {
        vd_node_set_error(n, "%s: request [%llu, +%llu) is beyond the end of the disk (%llu)",
                        n->filename, (unsigned long long)off, (unsigned long long)len,
                        (unsigned long long)n->size);
        return -EINVAL;
    }
    return 0;
}

/* What every data-changing request checks first: 1 to go on, 0 when there is nothing to
 * do (len 0), or -errno. */
static int write_checks(vd_node *n, uint64_t off, uint64_t len)
{
    if (!(n->open_flags & VD_OPEN_RDWR)) {
        return -EACCES;
    }
    if (len == 0) {
        return 0;
    }
    int ret = check_range(n, off, len);
    return ret < 0 ? ret : 1;
}

static void *aligned_buf(size_t align, size_t len)
{
    void *p = NULL;
    if (posix_memalign(&p, align < 4096 ? 4096 : align, len ? len : 1) != 0) {
        return NULL;
    }
    return p;
}

static bool is_aligned(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    uint64_t a = n->request_alignment;
    return a <= 1 || ((off | len | (uintptr_t)buf) & (a - 1)) == 0;
}

static int split_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    uint64_t max = n->max_transfer ? n->max_transfer : len;
    while (len > 0) {
        uint64_t chunk = len < max ? len : max;
        int ret = n->drv->pread(n, buf, chunk, off);
        if (ret < 0) {
            return ret;
        }
        buf = (char *)buf + chunk;
        off += chunk;
        len -= chunk;
    }
    return 0;
}

static int split_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                        unsigned flags)
{
    uint64_t max = n->max_transfer ? n->max_transfer : len;
    while (len > 0) {
        uint64_t chunk = len < max ? len : max;
        int ret = n->drv->pwrite(n, buf, chunk, off, flags);
        if (ret < 0) {
            return ret;
        }
        buf = (const char *)buf + chunk;
        off += chunk;
        len -= chunk;
    }
    return 0;
}

int vd_node_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    if (len == 0) {
        return 0;
    }
    int ret = check_range(n, off, len);
    if (ret < 0) {
        return ret;
    }
    if (is_aligned(n, off, len, buf)) {
        return split_pread(n, buf, len, off);
    }
    uint64_t a = n->request_alignment;
    uint64_t start = off & ~(a - 1);
    uint64_t end = (off + len + a - 1) & ~(a - 1);
    char *bounce = aligned_buf(a, end - start);
    if (!bounce) {
        return -ENOMEM;
    }
    ret = split_pread(n, bounce, end - start, start);
    if (ret == 0) {
        memcpy(buf, bounce + (off - start), len);
    }
    free(bounce);
    return ret;
}

/* A checked write, split and aligned as the node needs; no notifier sees it again (the
 * caller's request already did). */
static int pwrite_body(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                       unsigned flags)
{
    int ret = 0;
    __atomic_store_n(&n->unflushed, true, __ATOMIC_RELAXED);
    if (is_aligned(n, off, len, buf)) {
        return split_pwrite(n, buf, len, off, flags);
    }
    /* Read-modify-write of the aligned span around the request. */
    uint64_t a = n->request_alignment;
    uint64_t start = off & ~(a - 1);
    uint64_t end = (off + len + a - 1) & ~(a - 1);
    char *bounce = aligned_buf(a, end - start);
    if (!bounce) {
        return -ENOMEM;
    }
    /* Only the buffer is unaligned: a copy, and nothing to read, so nothing to serialise
     * (O_DIRECT writes then run side by side). */
    if (start == off && end == off + len) {
        memcpy(bounce, buf, len);
        ret = split_pwrite(n, bounce, len, off, flags);
        free(bounce);
        return ret;
    }
    /* Two unaligned writes into one block must not both read the old block and then
     * overwrite each other's bytes, so the read-modify-write runs under a lock. */
    pthread_mutex_lock(&n->rmw_lock);
    ret = split_pread(n, bounce, end - start, start);
    if (ret == 0) {
        memcpy(bounce + (off - start), buf, len);
        ret = split_pwrite(n, bounce, end - start, start, flags);
    }
    pthread_mutex_unlock(&n->rmw_lock);
    free(bounce);
    return ret;
}

int vd_node_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    int ret = write_checks(n, off, len);
    if (ret <= 0) {
        return ret;
    }
    vd_write_req req = {VD_WRITE, off, len, flags, buf};
    ret = vd_write_prepare(n, &req);
    return ret < 0 ? ret : vd_write_finish(n, &req, pwrite_body(n, buf, len, off, flags));
}

/* The first piece of [off, off+len) for a node that takes at most max bytes per request
 * (max > 0) and prefers pieces on multiples of align (0: any): up to the next boundary,
 * then whole multiples of align, as QEMU splits write-zeroes and discards. */
static uint64_t split_len(uint64_t off, uint64_t len, uint64_t max, uint64_t align)
{
    uint64_t piece = len < max ? len : max;
    if (align > 1 && align <= max) {
        if (off % align) {
            uint64_t head = align - off % align;
            return head < piece ? head : piece;
        }
        if (piece < len) {
            piece -= piece % align;
        }
    }
    return piece;
}

/* One piece of a write-zeroes: the driver's, or zeros written when it has none. */
static int zeroes_piece(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    int ret = -ENOTSUP;
    if (n->drv->pwrite_zeroes) {
        ret = n->drv->pwrite_zeroes(n, off, len, flags);
    }
    if (ret != -ENOTSUP || (flags & VD_REQ_NO_FALLBACK)) {
        return ret;
    }
    size_t chunk = len < ZERO_CHUNK ? (size_t)len : ZERO_CHUNK;
    void *zeros = aligned_buf(n->request_alignment, chunk);
    if (!zeros) {
        return -ENOMEM;
    }
    memset(zeros, 0, chunk);
    ret = 0;
    while (len > 0 && ret == 0) {
        uint64_t now = len < chunk ? len : chunk;
        ret = pwrite_body(n, zeros, now, off, flags & VD_REQ_FUA);
        off += now;
        len -= now;
    }
    free(zeros);
    return ret;
}

static int zeroes_body(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    __atomic_store_n(&n->unflushed, true, __ATOMIC_RELAXED);
    if (!n->max_pwrite_zeroes) {
        return zeroes_piece(n, off, len, flags);
    }
    int ret = 0;
    while (len > 0 && ret == 0) {
        uint64_t now = split_len(off, len, n->max_pwrite_zeroes, n->pwrite_zeroes_alignment);
        ret = zeroes_piece(n, off, now, flags);
        off += now;
        len -= now;
    }
    return ret;
}

int vd_node_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    int ret = write_checks(n, off, len);
    if (ret <= 0) {
        return ret;
    }
    vd_write_req req = {VD_WRITE_ZEROES, off, len, flags, NULL};
    ret = vd_write_prepare(n, &req);
    return ret < 0 ? ret : vd_write_finish(n, &req, zeroes_body(n, off, len, flags));
}

static int discard_body(vd_node *n, uint64_t off, uint64_t len)
{
    __atomic_store_n(&n->unflushed, true, __ATOMIC_RELAXED);
    if (!n->drv->pdiscard) {
        return 0;  /* discard is advisory */
    }
    int ret = 0;
    while (len > 0 && ret == 0) {
        uint64_t now = n->max_pdiscard ? split_len(off, len, n->max_pdiscard,
                                                   n->pdiscard_alignment) : len;
        ret = n->drv->pdiscard(n, off, now);
        ret = ret == -ENOTSUP ? 0 : ret;
        off += now;
        len -= now;
    }
    return ret;
}

int vd_node_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    int ret = write_checks(n, off, len);
    if (ret <= 0) {
        return ret;
    }
    vd_write_req req = {VD_WRITE_DISCARD, off, len, 0, NULL};
    ret = vd_write_prepare(n, &req);
    return ret < 0 ? ret : vd_write_finish(n, &req, discard_body(n, off, len));
}

int vd_node_pwrite_compressed(vd_node *n, const void *buf, uint64_t len, uint64_t off)
{
    if (!(n->open_flags & VD_OPEN_RDWR)) {
        return -EACCES;
    }
    int ret = check_range(n, off, len);  /* len 0 is a request too: it pads the file */
    if (ret < 0) {
        return ret;
    }
    if (!n->drv->pwrite_compressed) {
        vd_node_set_error(n, "%s: the %s format does not support compressed writes", n->filename,
                        n->drv->name);
        return -ENOTSUP;
    }
    __atomic_store_n(&n->unflushed, true, __ATOMIC_RELAXED);
    int level = __atomic_load_n(&n->compress_level, __ATOMIC_RELAXED);
    if (len == 0) {
        return n->drv->pwrite_compressed(n, buf, 0, off, level);  /* padding, no data */
    }
    vd_write_req req = {VD_WRITE_COMPRESSED, off, len, 0, buf};
    ret = vd_write_prepare(n, &req);
    return ret < 0 ? ret
                   : vd_write_finish(n, &req, n->drv->pwrite_compressed(n, buf, len, off,
                                                                        level));
}

int vd_node_flush(vd_node *n)
{
    if (!(n->open_flags & VD_OPEN_RDWR) || !n->drv->flush) {
        return 0;
    }
    int ret = vd_write_flush_notify(n);
    if (ret < 0) {
        return ret;
    }
    if (n->drv->is_format) {
        return n->drv->flush(n);   /* its caches decide; its file's flush may be skipped */
    }
    if (!__atomic_exchange_n(&n->unflushed, false, __ATOMIC_ACQ_REL)) {
        return 0;
    }
    ret = n->drv->flush(n);
    if (ret < 0) {
        __atomic_store_n(&n->unflushed, true, __ATOMIC_RELAXED);
    }
    return ret;
}

int vd_node_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    memset(st, 0, sizeof(*st));
    if (off >= n->size || len == 0) {
        return -EINVAL;
    }
    if (len > n->size - off) {
        len = n->size - off;
    }
    if (!n->drv->block_status) {
        st->pnum = len;
        st->flags = VD_BS_DATA | VD_BS_ALLOCATED;
        return 0;
    }
    int ret = n->drv->block_status(n, off, len, st);
    if (ret == 0 && (st->pnum == 0 || st->pnum > len)) {
        st->pnum = len;  /* a driver bug must not make callers loop forever */
    }
    return ret;
}

int vd_node_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                     vd_error **errp)
{
    if (!(n->open_flags & VD_OPEN_RDWR)) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: image is read-only",
                            n->filename);
    }
    if (!n->drv->truncate) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "%s: this driver does not support resizing", n->filename);
    }
    if (size < n->size && !shrink && n->drv->is_format) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "Use the --shrink option to perform a shrink operation.");
    }
    uint64_t old = n->size;
    vd_write_req req = {VD_WRITE_TRUNCATE, old < size ? old : size,
                        old < size ? size - old : old - size, 0, NULL};
    int ret = vd_write_prepare(n, &req);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: resize refused: %s", n->filename,
                            strerror(-ret));
    }
    __atomic_store_n(&n->unflushed, true, __ATOMIC_RELAXED);
    return vd_write_finish(n, &req,
                           n->drv->truncate(n, size, shrink, prealloc ? prealloc : "off",
                                            errp));
}

int vd_node_pread_zero_pad(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    uint64_t avail = off >= n->size ? 0 : n->size - off;
    uint64_t now = len < avail ? len : avail;
    if (now < len) {
        memset((char *)buf + now, 0, len - now);
    }
    return now ? vd_node_pread(n, buf, now, off) : 0;
}

int vd_filter_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    vd_node *f = n->file;
    if (!f->drv->block_status) {
        st->pnum = len;
        st->flags = VD_BS_DATA | VD_BS_ALLOCATED;
        return 0;
    }
    return f->drv->block_status(f, off, len, st);
}

int64_t vd_filter_allocated_size(vd_node *n)
{
    return n->file->drv->allocated_size ? n->file->drv->allocated_size(n->file) : -ENOTSUP;
}
