/* The shared copy engine (see copy.h). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "block/copy.h"
#include "block/disk.h"
#include "vdisk/copy.h"
#include "util/common.h"
#include "util/iobuf.h"

#define DEFAULT_WORKERS 8
#define DEFAULT_CHUNK (2u << 20)
#define MAX_WORKERS 64

/* Does the spec copy what this status describes? */
static bool wanted(const vd_copy_spec *s, const vd_extent *st)
{
    if (s->above_depth > 0) {
        return (st->flags & VD_BS_ALLOCATED) && st->depth < s->above_depth;
    }
    return true;
}

static bool reads_zero(const vd_extent *st)
{
    return (st->flags & VD_BS_ZERO) && !(st->flags & VD_BS_DATA);
}

/* Writes buf's [0, n) at off: compressed clusters when asked (whole ones; the image's
 * tail may be a partial cluster), plain otherwise. */
static int put(const vd_copy_spec *s, const uint8_t *buf, uint64_t n, uint64_t off)
{
    if (s->compress) {
        return vd_node_pwrite_compressed(s->dst, buf, n, off);
    }
    return vd_node_pwrite(s->dst, buf, n, off, 0);
}

int vd_copy_range(const vd_copy_spec *s, void *buf, uint64_t buflen, uint64_t off,
                  uint64_t len, bool *is_read)
{
    uint64_t end = off + len;
    uint64_t cs = s->compress ? vd_node_cluster_size(s->dst) : 0;
    if (cs && buflen >= cs) {
        buflen = buflen / cs * cs;   /* every compressed piece but the last is whole */
    }
    while (off < end) {
        vd_extent st;
        int r = vd_node_chain_status(s->src, off, end - off, &st);
        if (r < 0) {
            *is_read = true;
            return r;
        }
        uint64_t n = st.length && st.length < end - off ? st.length : end - off;
        /* A compressed copy keeps to whole clusters: a cluster status splits is copied
         * whole, as data. */
        if (cs && (off % cs || (n % cs && off + n != s->dst->size))) {
            uint64_t ce = (off / cs + 1) * cs;
            n = (ce < end ? ce : end) - off;
            st.flags = VD_BS_DATA | VD_BS_ALLOCATED;
        }
        if (!wanted(s, &st)) {
            off += n;
            continue;
        }
        if (reads_zero(&st)) {
            if (!s->dst_is_zero) {
                r = vd_node_pwrite_zeroes(s->dst, off, n, s->unmap ? VD_REQ_MAY_UNMAP : 0);
                if (r < 0) {
                    *is_read = false;
                    return r;
                }
            }
            off += n;
            continue;
        }
        for (uint64_t done = 0; done < n;) {
            uint64_t k = n - done < buflen ? n - done : buflen;
            r = vd_node_pread(s->src, buf, k, off + done);
            if (r < 0) {
                *is_read = true;
                return r;
            }
            r = put(s, buf, k, off + done);
            if (r < 0) {
                *is_read = false;
                return r;
            }
            done += k;
        }
        off += n;
    }
    return 0;
}

int vd_copy_next(const vd_copy_spec *s, uint64_t off, uint64_t end, uint64_t *start,
                 uint64_t *len)
{
    uint64_t size = s->src->size < end ? s->src->size : end;
    while (off < size) {
        vd_extent st;
        int r = vd_node_chain_status(s->src, off, size - off, &st);
        if (r < 0) {
            return r;
        }
        uint64_t n = st.length ? st.length : size - off;
        bool skip = !wanted(s, &st) || (s->dst_is_zero && reads_zero(&st));
        if (!skip) {
            /* Runs of the same kind that follow join this one. */
            *start = off;
            *len = n;
            return 1;
        }
        off += n;
    }
    return 0;
}

/* ---- many workers ------------------------------------------------------------------------ */

typedef struct copy_run {
    const vd_copy_job *job;
    uint64_t chunk;
    pthread_mutex_t lock;
    uint64_t cursor;                  /* where the next run is looked for */
    uint64_t pend_start, pend_len;    /* a run found and not yet handed out in full */
    uint64_t done, total;
    int ret;                          /* the first failure */
    bool is_read;
} copy_run;

/* The next piece to copy, lock held: false when there is none or the copy stops. */
static bool take(copy_run *c, uint64_t *off, uint64_t *len)
{
    if (c->ret < 0) {
        return false;
    }
    if (c->pend_len == 0) {
        int r = vd_copy_next(c->job->spec, c->cursor, c->job->end, &c->pend_start,
                             &c->pend_len);
        if (r <= 0) {
            if (r < 0) {
                c->ret = r;
                c->is_read = true;
            }
            return false;
        }
        c->cursor = c->pend_start + c->pend_len;
    }
    *off = c->pend_start;
    *len = c->pend_len < c->chunk ? c->pend_len : c->chunk;
    /* Pieces of a compressed copy end on cluster boundaries. */
    uint64_t cs = c->job->spec->compress ? vd_node_cluster_size(c->job->spec->dst) : 0;
    if (cs && *len < c->pend_len && (*off + *len) % cs) {
        uint64_t e = (*off + *len) / cs * cs;
        *len = e > *off ? e - *off : cs - *off % cs;
    }
    if (*len > c->pend_len) {
        *len = c->pend_len;
    }
    c->pend_start += *len;
    c->pend_len -= *len;
    return true;
}

static void *copy_worker(void *arg)
{
    copy_run *c = arg;
    uint8_t *buf = vd_io_buffer_alloc(c->chunk);
    pthread_mutex_lock(&c->lock);
    uint64_t off, len;
    while (buf && take(c, &off, &len)) {
        pthread_mutex_unlock(&c->lock);
        bool is_read = false;
        int r = vd_copy_range(c->job->spec, buf, c->chunk, off, len, &is_read);
        pthread_mutex_lock(&c->lock);
        if (r < 0) {
            if (c->ret == 0) {
                c->ret = r;
                c->is_read = is_read;
            }
            break;
        }
        c->done += len;
        if (c->job->progress && c->ret == 0 &&
            !c->job->progress(c->job->opaque, c->done, c->total)) {
            c->ret = -ECANCELED;
        }
    }
    if (!buf && c->ret == 0) {
        c->ret = -ENOMEM;
    }
    pthread_mutex_unlock(&c->lock);
    free(buf);
    return NULL;
}

int vd_copy_all(const vd_copy_job *j, vd_error **errp)
{
    const vd_copy_spec *s = j->spec;
    copy_run c = {.job = j, .cursor = j->off, .chunk = j->chunk ? j->chunk : DEFAULT_CHUNK};
    uint64_t cs = s->compress ? vd_node_cluster_size(s->dst) : 0;
    if (cs) {
        c.chunk = (c.chunk + cs - 1) / cs * cs;
    }
    /* The total first, so progress can be shown as a share. */
    for (uint64_t off = j->off, start, len;; off = start + len) {
        int r = vd_copy_next(s, off, j->end, &start, &len);
        if (r < 0) {
            return vd_error_set(errp, VD_ERR_IO, -r, "Could not read the allocation of "
                                "'%s': %s", s->src->filename, strerror(-r));
        }
        if (r == 0) {
            break;
        }
        c.total += len;
    }
    if (j->progress && !j->progress(j->opaque, 0, c.total)) {
        return -ECANCELED;
    }
    pthread_mutex_init(&c.lock, NULL);
    unsigned nw = j->workers ? j->workers : DEFAULT_WORKERS;
    nw = nw > MAX_WORKERS ? MAX_WORKERS : nw;
    pthread_t th[MAX_WORKERS];
    unsigned started = 0;
    for (; started + 1 < nw; started++) {
        if (pthread_create(&th[started], NULL, copy_worker, &c) != 0) {
            break;
        }
    }
    copy_worker(&c);                  /* the caller is a worker too */
    for (unsigned i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_mutex_destroy(&c.lock);
    if (c.ret < 0 && c.ret != -ECANCELED) {
        vd_node *at = c.is_read ? s->src : s->dst;
        return vd_error_set(errp, VD_ERR_IO, -c.ret, "Could not %s '%s': %s",
                            c.is_read ? "read from" : "write to", at->filename,
                            strerror(-c.ret));
    }
    return c.ret;
}

/* ---- the public side --------------------------------------------------------------------- */

int vd_disk_copy(vd_disk *src, vd_disk *dst, uint64_t off, uint64_t len,
                 const vd_copy_opts *o, vd_error **errp)
{
    vd_disk_enter(src);
    if (dst != src) {
        vd_disk_enter(dst);
    }
    int ret;
    if (off > src->node->size || len > src->node->size - off ||
        off > dst->node->size || len > dst->node->size - off) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The range to copy lies outside "
                           "the images");
    } else if (!(dst->node->open_flags & VD_OPEN_RDWR)) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EACCES, "'%s' is read-only",
                           dst->node->filename);
    } else {
        vd_copy_spec s = {.src = src->node, .dst = dst->node, .above_depth = o->above_depth,
                          .dst_is_zero = o->target_is_zero, .unmap = o->unmap,
                          .compress = o->compress};
        vd_copy_job j = {.spec = &s, .off = off, .end = off + len, .workers = o->workers,
                         .chunk = o->chunk, .progress = o->progress, .opaque = o->opaque};
        ret = vd_copy_all(&j, errp);
    }
    if (dst != src) {
        vd_disk_leave(dst);
    }
    vd_disk_leave(src);
    return ret;
}
