/* The shared copy engine (see copy.h). A piece of a copy is planned from the source's
 * block status into segments (zeros to write, data to read and write), read, and then
 * written; splitting the two lets a parallel copy keep its writes in order. */
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
#define SECTOR 512

/* The depth of the layer that supplies what this status describes: the allocating one,
 * or the shorter layer below the answering one whose end makes the range read zeros
 * (below the bottom when nothing is allocated at all). */
static int supplier_depth(const vd_extent *st)
{
    return (st->flags & VD_BS_ALLOCATED) ? st->depth : st->depth + 1;
}

/* Does the spec copy what this status describes? */
static bool wanted(const vd_copy_spec *s, const vd_extent *st)
{
    if (s->above_depth <= 0 && s->from_depth <= 0) {
        return true;
    }
    int d = supplier_depth(st);
    if (s->above_depth > 0 && d >= s->above_depth) {
        return false;
    }
    return d >= s->from_depth;
}

static bool reads_zero(const vd_extent *st)
{
    return (st->flags & VD_BS_ZERO) != 0;
}

/* ---- one piece: plan, read, write -------------------------------------------------------- */

enum {
    SEG_ZERO,        /* reads as zeros: a write of zeros */
    SEG_DATA,        /* read from src and written */
    SEG_ZERO_DATA,   /* compared copies: zeros a layer stores, compared and written as data */
};

typedef struct copy_seg {
    uint64_t off, len;
    int kind;
} copy_seg;

typedef struct seg_list {
    copy_seg *v;
    size_t n, cap;
} seg_list;

static void seg_add(seg_list *l, uint64_t off, uint64_t len, int kind)
{
    if (l->n && l->v[l->n - 1].kind == kind && l->v[l->n - 1].off + l->v[l->n - 1].len == off) {
        l->v[l->n - 1].len += len;
        return;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        copy_seg *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            abort();
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (copy_seg){.off = off, .len = len, .kind = kind};
}

/* The segments of [off, off+len) the spec copies. */
static int plan_piece(const vd_copy_spec *s, uint64_t off, uint64_t len, seg_list *l)
{
    uint64_t end = off + len;
    uint64_t cs = s->compress ? vd_node_cluster_size(s->dst) : 0;
    l->n = 0;
    while (off < end) {
        vd_extent st;
        int r = vd_node_chain_status_above(s->src, s->compared ? 0 : s->above_depth, off,
                                           end - off, &st);
        if (r < 0) {
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
        if (wanted(s, &st)) {
            int kind = SEG_DATA;
            if (reads_zero(&st)) {
                /* Zeros nothing stores at from_depth or below are "no data" to a compared
                 * copy; zeros a layer holds are compared as data. */
                bool stored = (st.flags & VD_BS_ALLOCATED) || supplier_depth(&st) > s->from_depth;
                kind = s->compared && stored ? SEG_ZERO_DATA : SEG_ZERO;
            }
            if (kind != SEG_ZERO || !s->dst_is_zero || s->compared) {
                seg_add(l, off, n, kind);
            }
        }
        off += n;
    }
    return 0;
}

/* Fills buf (and cbuf, for a compared copy) for the piece starting at base. */
static int read_piece(const vd_copy_spec *s, const seg_list *l, uint64_t base, uint8_t *buf,
                      uint8_t *cbuf, copy_failure *fail)
{
    for (size_t i = 0; i < l->n; i++) {
        const copy_seg *g = &l->v[i];
        uint8_t *p = buf + (g->off - base);
        if (g->kind == SEG_DATA) {
            int r = vd_node_pread(s->src, p, g->len, g->off);
            if (r < 0) {
                *fail = COPY_FAILED_READ;
                return r;
            }
        } else if (s->compared) {
            memset(p, 0, g->len);
        }
        if (s->compared) {
            uint8_t *q = cbuf + (g->off - base);
            int r = 0;
            if (s->compare) {
                r = vd_node_pread_zero_pad(s->compare, q, g->len, g->off);
            } else {
                memset(q, 0, g->len);
            }
            if (r < 0) {
                *fail = COPY_FAILED_COMPARE;
                return r;
            }
        }
    }
    return 0;
}

static int after_write(const vd_copy_spec *s, int r)
{
    if (r == 0 && s->flush_each) {
        r = vd_node_flush(s->dst);
    }
    return r;
}

static int write_zeros(const vd_copy_spec *s, uint64_t off, uint64_t len)
{
    return after_write(s, vd_node_pwrite_zeroes(s->dst, off, len,
                                                s->unmap ? VD_REQ_MAY_UNMAP : 0));
}

/* Writes buf's [0, n) at off: compressed clusters when asked (whole ones; the image's
 * tail may be a partial cluster), plain otherwise. */
static int write_data(const vd_copy_spec *s, const uint8_t *buf, uint64_t n, uint64_t off)
{
    if (s->compress) {
        return after_write(s, vd_node_pwrite_compressed(s->dst, buf, n, off));
    }
    return after_write(s, vd_node_pwrite(s->dst, buf, n, off, 0));
}

/* The length of the prefix of a and b, in whole sectors (or up to len), whose sectors
 * all differ or all match as the first one does; returns whether they differ. */
static bool sectors_differ(const uint8_t *a, const uint8_t *b, uint64_t len, uint64_t *run)
{
    uint64_t i = len < SECTOR ? len : SECTOR;
    bool differ = memcmp(a, b, i) != 0;
    while (i < len) {
        uint64_t k = len - i < SECTOR ? len - i : SECTOR;
        if ((memcmp(a + i, b + i, k) != 0) != differ) {
            break;
        }
        i += k;
    }
    *run = i;
    return differ;
}

/* A compared segment: the differing sectors only. */
static int write_differences(const vd_copy_spec *s, const copy_seg *g, const uint8_t *p,
                             const uint8_t *q)
{
    for (uint64_t done = 0; done < g->len;) {
        uint64_t run;
        if (sectors_differ(p + done, q + done, g->len - done, &run)) {
            int r = g->kind == SEG_ZERO ? write_zeros(s, g->off + done, run)
                                        : write_data(s, p + done, run, g->off + done);
            if (r < 0) {
                return r;
            }
        }
        done += run;
    }
    return 0;
}

static int write_piece(const vd_copy_spec *s, const seg_list *l, uint64_t base,
                       const uint8_t *buf, const uint8_t *cbuf, copy_failure *fail)
{
    for (size_t i = 0; i < l->n; i++) {
        const copy_seg *g = &l->v[i];
        int r;
        if (s->compared) {
            r = write_differences(s, g, buf + (g->off - base), cbuf + (g->off - base));
        } else if (g->kind == SEG_ZERO) {
            r = write_zeros(s, g->off, g->len);
        } else {
            r = write_data(s, buf + (g->off - base), g->len, g->off);
        }
        if (r < 0) {
            *fail = COPY_FAILED_WRITE;
            return r;
        }
    }
    return 0;
}

/* Plans and reads [off, off+len), which fits in the buffers. */
static int load_piece(const vd_copy_spec *s, seg_list *l, uint64_t off, uint64_t len,
                      uint8_t *buf, uint8_t *cbuf, copy_failure *fail)
{
    int r = plan_piece(s, off, len, l);
    if (r < 0) {
        *fail = COPY_FAILED_STATUS;
        return r;
    }
    return read_piece(s, l, off, buf, cbuf, fail);
}

/* The buffer a compared copy compares with, as large as the data buffer. */
static uint8_t *compare_buffer(const vd_copy_spec *s, uint64_t buflen)
{
    return s->compared ? vd_io_buffer_alloc(buflen) : NULL;
}

int vd_copy_range(const vd_copy_spec *s, void *buf, uint64_t buflen, uint64_t off,
                  uint64_t len, bool *is_read)
{
    uint64_t end = off + len;
    uint64_t cs = s->compress ? vd_node_cluster_size(s->dst) : 0;
    if (cs && buflen >= cs) {
        buflen = buflen / cs * cs;   /* every compressed piece but the last is whole */
    }
    uint8_t *cbuf = compare_buffer(s, buflen);
    if (s->compared && !cbuf) {
        *is_read = true;
        return -ENOMEM;
    }
    seg_list l = {0};
    copy_failure fail = COPY_OK;
    int r = 0;
    while (off < end && r == 0) {
        uint64_t n = end - off < buflen ? end - off : buflen;
        r = load_piece(s, &l, off, n, buf, cbuf, &fail);
        if (r == 0) {
            r = write_piece(s, &l, off, buf, cbuf, &fail);
        }
        off += n;
    }
    *is_read = fail != COPY_FAILED_WRITE;
    free(l.v);
    free(cbuf);
    return r;
}

int vd_copy_next(const vd_copy_spec *s, uint64_t off, uint64_t end, uint64_t *start,
                 uint64_t *len)
{
    uint64_t size = s->src->size < end ? s->src->size : end;
    while (off < size) {
        vd_extent st;
        int r = vd_node_chain_status_above(s->src, s->compared ? 0 : s->above_depth, off,
                                           size - off, &st);
        if (r < 0) {
            return r;
        }
        uint64_t n = st.length ? st.length : size - off;
        bool skip = !wanted(s, &st) || (s->dst_is_zero && !s->compared && reads_zero(&st));
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
    pthread_cond_t turn_cv;           /* in-order writes: the turn moved on, or a failure */
    uint64_t next_ticket;             /* pieces handed out so far */
    uint64_t turn;                    /* in-order writes: the piece that writes next */
    uint64_t cursor;                  /* where the next run is looked for */
    uint64_t pend_start, pend_len;    /* a run found and not yet handed out in full */
    uint64_t done, total;
    int ret;                          /* the first failure */
    copy_failure fail;
} copy_run;

static void fail_locked(copy_run *c, int r, copy_failure f)
{
    if (c->ret == 0) {
        c->ret = r;
        c->fail = f;
    }
    pthread_cond_broadcast(&c->turn_cv);
}

/* The next piece to copy, lock held: false when there is none or the copy stops. */
static bool take(copy_run *c, uint64_t *off, uint64_t *len, uint64_t *ticket)
{
    if (c->ret < 0) {
        return false;
    }
    if (c->pend_len == 0) {
        int r = vd_copy_next(c->job->spec, c->cursor, c->job->end, &c->pend_start,
                             &c->pend_len);
        if (r <= 0) {
            if (r < 0) {
                fail_locked(c, r, COPY_FAILED_STATUS);
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
    *ticket = c->next_ticket++;
    return true;
}

static void *copy_worker(void *arg)
{
    copy_run *c = arg;
    const vd_copy_spec *s = c->job->spec;
    uint8_t *buf = vd_io_buffer_alloc(c->chunk);
    uint8_t *cbuf = compare_buffer(s, c->chunk);
    seg_list l = {0};
    pthread_mutex_lock(&c->lock);
    if ((!buf || (s->compared && !cbuf)) && c->ret == 0) {
        fail_locked(c, -ENOMEM, COPY_FAILED_READ);
    }
    uint64_t off, len, ticket;
    while (take(c, &off, &len, &ticket)) {
        pthread_mutex_unlock(&c->lock);
        copy_failure fail = COPY_OK;
        int r = load_piece(s, &l, off, len, buf, cbuf, &fail);
        pthread_mutex_lock(&c->lock);
        if (c->job->in_order && r == 0) {
            while (c->turn != ticket && c->ret == 0) {
                pthread_cond_wait(&c->turn_cv, &c->lock);
            }
        }
        if (r == 0 && c->ret == 0) {
            pthread_mutex_unlock(&c->lock);
            r = write_piece(s, &l, off, buf, cbuf, &fail);
            pthread_mutex_lock(&c->lock);
        }
        if (c->job->in_order) {
            c->turn++;
            pthread_cond_broadcast(&c->turn_cv);
        }
        if (r < 0) {
            fail_locked(c, r, fail);
            break;
        }
        c->done += len;
        if (c->job->progress && c->ret == 0 &&
            !c->job->progress(c->job->opaque, c->done, c->total)) {
            fail_locked(c, -ECANCELED, COPY_OK);
        }
    }
    pthread_mutex_unlock(&c->lock);
    free(l.v);
    free(cbuf);
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
    if (j->failure) {
        *j->failure = COPY_OK;
    }
    /* The total first, so progress can be shown as a share. */
    for (uint64_t off = j->off, start, len;; off = start + len) {
        int r = vd_copy_next(s, off, j->end, &start, &len);
        if (r < 0) {
            if (j->failure) {
                *j->failure = COPY_FAILED_STATUS;
            }
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
    pthread_cond_init(&c.turn_cv, NULL);
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
    pthread_cond_destroy(&c.turn_cv);
    pthread_mutex_destroy(&c.lock);
    if (j->failure) {
        *j->failure = c.fail;
    }
    if (c.ret < 0 && c.ret != -ECANCELED) {
        static const char *const what[] = {
            [COPY_FAILED_STATUS] = "read the allocation of",
            [COPY_FAILED_READ] = "read from",
            [COPY_FAILED_COMPARE] = "read from",
            [COPY_FAILED_WRITE] = "write to",
        };
        copy_failure f = c.fail == COPY_OK ? COPY_FAILED_READ : c.fail;
        vd_node *at = f == COPY_FAILED_WRITE     ? s->dst
                      : f == COPY_FAILED_COMPARE ? s->compare
                                                 : s->src;
        return vd_error_set(errp, VD_ERR_IO, -c.ret, "Could not %s '%s': %s", what[f],
                            at ? at->filename : "", strerror(-c.ret));
    }
    return c.ret;
}

/* ---- the public side --------------------------------------------------------------------- */

static vd_copy_failure public_failure(copy_failure f)
{
    switch (f) {
    case COPY_FAILED_STATUS:
        return VD_COPY_FAILED_STATUS;
    case COPY_FAILED_READ:
        return VD_COPY_FAILED_READ;
    case COPY_FAILED_COMPARE:
        return VD_COPY_FAILED_COMPARE;
    case COPY_FAILED_WRITE:
        return VD_COPY_FAILED_WRITE;
    default:
        return VD_COPY_OK;
    }
}

int vd_disk_copy(vd_disk *src, vd_disk *dst, uint64_t off, uint64_t len,
                 const vd_copy_opts *o, vd_error **errp)
{
    vd_disk *cmp = o->compared ? o->compare : NULL;
    bool enter_dst = dst != src, enter_cmp = cmp && cmp != src && cmp != dst;
    vd_disk_enter(src);
    if (enter_dst) {
        vd_disk_enter(dst);
    }
    if (enter_cmp) {
        vd_disk_enter(cmp);
    }
    copy_failure fail = COPY_OK;
    int ret;
    if (off > src->node->size || len > src->node->size - off ||
        off > dst->node->size || len > dst->node->size - off) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The range to copy lies outside "
                           "the images");
    } else if (!(dst->node->open_flags & VD_OPEN_RDWR)) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EACCES, "'%s' is read-only",
                           dst->node->filename);
    } else {
        /* The handle's own rules for its writes, as vd_pwrite and vd_pwrite_zeroes keep
         * them: writethrough flushes, and MAY_UNMAP only where unmapping was asked for. */
        unsigned df = dst->node->open_flags;
        vd_copy_spec s = {.src = src->node, .dst = dst->node, .above_depth = o->above_depth,
                          .from_depth = o->from_depth, .dst_is_zero = o->target_is_zero,
                          .unmap = o->unmap && (df & VD_OPEN_UNMAP),
                          .compress = o->compress,
                          .flush_each = (df & VD_OPEN_WRITETHROUGH) != 0,
                          .compared = o->compared, .compare = cmp ? cmp->node : NULL};
        vd_copy_job j = {.spec = &s, .off = off, .end = off + len, .workers = o->workers,
                         .chunk = o->chunk, .in_order = o->in_order,
                         .progress = o->progress, .opaque = o->opaque, .failure = &fail};
        ret = vd_copy_all(&j, errp);
    }
    if (o->failure) {
        *o->failure = public_failure(fail);
    }
    if (enter_cmp) {
        vd_disk_leave(cmp);
    }
    if (enter_dst) {
        vd_disk_leave(dst);
    }
    vd_disk_leave(src);
    return ret;
}
