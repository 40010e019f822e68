/* The mirror job: copies a source node to a target node while the source is in use, and
 * on job-complete moves every user of the source to the target (the pivot).
 *
 * A write notifier on the source marks what its users write in the job's own dirty bitmap
 * (one bit per granule). The run loop takes dirty runs from it, clears them, and hands
 * them as copy operations to a set of worker threads (up to 16 in flight, within the
 * buffer size); a worker reads the source's chain status, writes zeros where it reads
 * zeros and copies the rest. A write that lands meanwhile marks its granules again, so
 * they are copied again; two copies of one granule never run at once (the busy bitmap),
 * so an older copy cannot land after a newer one. When nothing is dirty or in flight the
 * job flushes the target and is ready. In write-blocking mode the notifier also copies
 * each write's granules to the target before the write completes to its user, so the job
 * converges under any write load.
 *
 * Whole target clusters: when the target's backing is named in its image but not open,
 * and its clusters are larger than the granularity, a first copy into a target cluster is
 * widened to the whole cluster, so the target never fills the rest of the cluster itself
 * (with zeros that would hide its backing once that is opened). The cow bitmap records
 * which target clusters were copied whole.
 *
 * The pivot runs with every user of the source drained: what is still dirty is copied,
 * the target flushed, and the users' handles pointed at the target. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/disk.h"
#include "jobs/chain.h"
#include "jobs/job.h"
#include "util/common.h"
#include "util/hbitmap.h"
#include "util/iobuf.h"
#include "vdisk/graph.h"

#define MAX_IN_FLIGHT 16
#define PIECE_BYTES (1u << 20)      /* the copies outside the buffer: active ones, the rest */
#define MAX_OP_BYTES (8u << 20)     /* one copy at most (large writes keep the file system's
                                     * appending writes few) */
#define DEFAULT_BUF_SIZE (16u << 20)
#define IDLE_NS 100000000u            /* a ready job looks at its bitmap this often */
#define RETRY_NS 10000000u            /* after an ignored error, before copying again */
#define MAX_USERS 64

typedef struct mirror_op {
    uint64_t off, len;
    uint8_t *buf;                     /* its part of the job's buffer, or its own */
    uint64_t slot, slot_len;          /* that part (slot_len 0: its own) */
    struct mirror_op *next;
} mirror_op;

typedef struct mirror {
    vd_job job;                       /* first: the core's part */
    vd_node *src, *target;            /* references the job holds */
    vd_disk *src_h, *tgt_h;           /* the job's handles: its claims, never its I/O */
    vd_perm_claim *src_claim, *tgt_claim;
    vd_mirror_sync sync;
    uint64_t size, gran, buf_size;
    uint8_t *arena;                   /* buf_size bytes the copies take their data room from */
    vd_hbitmap *arena_used;           /* its granules in use (under job.lock) */
    vd_job_on_error on_source_error, on_target_error;
    bool write_blocking, unmap;
    bool zero_target;                 /* the target may hold data of its own */
    bool blockers_on;
    bool job_made;
    bool commit;                      /* an active commit: the target is in src's chain */
    int base_depth;                   /* its depth there */
    bool base_was_ro;                 /* reopened read-write for the job */                    /* the core's part exists (vd_job_create) */
    uint64_t cow_size;                /* target cluster size when copies are widened */
    vd_write_notifier nt;
    bool notifier_on;
    pthread_t workers[MAX_IN_FLIGHT];
    unsigned nb_workers;
    pthread_cond_t work;              /* workers wait here for operations */
    /* Under job.lock, all of what follows. */
    vd_hbitmap *dirty;                /* granules to copy */
    vd_hbitmap *busy;                 /* granules a copy is running for */
    vd_hbitmap *cow;                  /* target clusters copied whole (NULL: not needed) */
    mirror_op *queue, **queue_tail;
    unsigned in_flight;               /* the run loop's copies, queued or running */
    unsigned active_in_flight;        /* writes being copied in write-blocking mode (they
                                       * do not hold back READY, as in QEMU) */
    unsigned busy_waiters;            /* writes waiting for a copy over their granules */
    uint64_t bytes_in_flight;
    bool workers_stop;
    bool should_complete;
    bool retry_later;
    struct active_op *active;         /* write-blocking copies of writes in progress */
    uint64_t batch_left;              /* of the buffer's worth sent between rate checks */
    int ret;                          /* the error that fails the job (report) */
    uint64_t cursor;
} mirror;

static mirror *of(vd_job *job)
{
    return (mirror *)job;
}

/* ---- copying ----------------------------------------------------------------------------- */

/* Copies [off, off+len) from the source (through its chain) to the target: zeros where
 * the source reads zeros, data elsewhere. No lock held. */
static int copy_range(mirror *m, uint8_t *buf, uint64_t buflen, uint64_t off, uint64_t len,
                      bool *is_read)
{
    uint64_t end = off + len;
    while (off < end) {
        vd_extent st;
        int r = vd_node_chain_status(m->src, off, end - off, &st);
        if (r < 0) {
            *is_read = true;
            return r;
        }
        uint64_t n = st.length && st.length < end - off ? st.length : end - off;
        if ((st.flags & VD_BS_ZERO) && !(st.flags & VD_BS_DATA)) {
            r = vd_node_pwrite_zeroes(m->target, off, n, m->unmap ? VD_REQ_MAY_UNMAP : 0);
            if (r < 0) {
                *is_read = false;
                return r;
            }
        } else {
            for (uint64_t done = 0; done < n;) {
                uint64_t k = n - done < buflen ? n - done : buflen;
                r = vd_node_pread(m->src, buf, k, off + done);
                if (r < 0) {
                    *is_read = true;
                    return r;
                }
                r = vd_node_pwrite(m->target, buf, k, off + done, 0);
                if (r < 0) {
                    *is_read = false;
                    return r;
                }
                done += k;
            }
        }
        off += n;
    }
    return 0;
}

/* The range to copy for [*off, *off+*len): widened to whole target clusters while any of
 * them has not been copied whole yet. */
static void widen(mirror *m, uint64_t *off, uint64_t *len)
{
    if (!m->cow) {
        return;
    }
    uint64_t c = m->cow_size;
    uint64_t s = *off / c * c;
    uint64_t e = (*off + *len + c - 1) / c * c;
    if (e > m->size) {
        e = m->size;
    }
    if (vd_hbitmap_next_zero(m->cow, s, e) >= 0) {
        *off = s;
        *len = e - s;
    }
}

/* After a copy of [off, off+len) that succeeded: the target clusters it covered whole. */
static void mark_cow(mirror *m, uint64_t off, uint64_t len)
{
    if (!m->cow) {
        return;
    }
    uint64_t c = m->cow_size;
    uint64_t s = (off + c - 1) / c * c;
    uint64_t e = off + len == m->size ? m->size : (off + len) / c * c;
    if (s < e) {
        vd_hbitmap_set(m->cow, s, e - s);
    }
}

static void update_progress(mirror *m, uint64_t done)
{
    vd_job_progress(&m->job, done, vd_hbitmap_count(m->dirty) + m->bytes_in_flight);
}

/* The end of one copy, lock held: the range is no longer busy; on failure it is dirty
 * again and the policy says what the job does. */
static void copy_done(mirror *m, uint64_t off, uint64_t len, int r, bool is_read)
{
    vd_hbitmap_reset(m->busy, off, len);
    m->in_flight--;
    m->bytes_in_flight -= len;
    if (r < 0) {
        vd_hbitmap_set(m->dirty, off, len);
        vd_job_action act = vd_job_error_action(&m->job, is_read ? m->on_source_error
                                                                 : m->on_target_error,
                                                is_read, -r);
        if (act == VD_JOB_ACT_REPORT && m->ret == 0) {
            m->ret = r;
        } else if (act == VD_JOB_ACT_IGNORE) {
            m->retry_later = true;
        }
        update_progress(m, 0);
    } else {
        mark_cow(m, off, len);
        update_progress(m, len);
    }
    pthread_cond_broadcast(&m->job.cond);
}

static void *worker(void *arg)
{
    mirror *m = arg;
    pthread_mutex_lock(&m->job.lock);
    for (;;) {
        while (!m->queue && !m->workers_stop) {
            pthread_cond_wait(&m->work, &m->job.lock);
        }
        mirror_op *op = m->queue;
        if (!op) {
            break;
        }
        m->queue = op->next;
        if (!m->queue) {
            m->queue_tail = &m->queue;
        }
        pthread_mutex_unlock(&m->job.lock);
        bool is_read = false;
        uint64_t room = op->slot_len ? op->slot_len : op->len;
        int r = copy_range(m, op->buf, room, op->off, op->len, &is_read);
        pthread_mutex_lock(&m->job.lock);
        if (op->slot_len) {
            vd_hbitmap_reset(m->arena_used, op->slot, op->slot_len);
        } else {
            free(op->buf);
        }
        copy_done(m, op->off, op->len, r, is_read);
        free(op);
    }
    pthread_mutex_unlock(&m->job.lock);
    return NULL;
}

/* Room for a copy of len bytes in the buffer (first fit, whole granules), lock held. */
static bool arena_take(mirror *m, uint64_t len, uint64_t *slot, uint64_t *slot_len)
{
    uint64_t need = (len + m->gran - 1) / m->gran * m->gran;
    for (uint64_t pos = 0; pos + need <= m->buf_size;) {
        int64_t z = vd_hbitmap_next_zero(m->arena_used, pos, m->buf_size);
        if (z < 0 || (uint64_t)z + need > m->buf_size) {
            return false;
        }
        int64_t d = vd_hbitmap_next_dirty(m->arena_used, (uint64_t)z, (uint64_t)z + need);
        if (d < 0) {
            vd_hbitmap_set(m->arena_used, (uint64_t)z, need);
            *slot = (uint64_t)z;
            *slot_len = need;
            return true;
        }
        pos = (uint64_t)d;
    }
    return false;
}

/* Queues the next dirty run for the workers, lock held. false when nothing can go now:
 * nothing dirty, the next run overlaps a running copy, or the buffer is used up. */
static bool issue_next(mirror *m)
{
    uint64_t start, len;
    if (!vd_hbitmap_next_dirty_area(m->dirty, m->cursor, m->size, &start, &len)) {
        m->cursor = 0;
        if (!vd_hbitmap_next_dirty_area(m->dirty, 0, m->size, &start, &len)) {
            return false;
        }
    }
    uint64_t max = m->buf_size / 2 < MAX_OP_BYTES ? m->buf_size / 2 : MAX_OP_BYTES;
    if (max < m->gran) {
        max = m->gran;
    }
    if (len > max) {
        len = max;
    }
    uint64_t wstart = start, wlen = len;
    widen(m, &wstart, &wlen);
    int64_t b = vd_hbitmap_next_dirty(m->busy, wstart, wstart + wlen);
    if (b >= 0) {
        if ((uint64_t)b == wstart || wstart != start || wlen != len) {
            return false;      /* wait for that copy to end */
        }
        wlen = (uint64_t)b - wstart;
    }
    mirror_op *op = calloc(1, sizeof(*op));
    if (!op) {
        abort();
    }
    if (arena_take(m, wlen, &op->slot, &op->slot_len)) {
        op->buf = m->arena + op->slot;
    } else if (m->in_flight > 0 || wlen <= m->buf_size) {
        free(op);          /* wait for room */
        return false;
    } else if (posix_memalign((void **)&op->buf, 4096, wlen) != 0) {
        abort();           /* a copy widened past the whole buffer: room of its own */
    }
    op->off = wstart;
    op->len = wlen;
    vd_hbitmap_reset(m->dirty, wstart, wlen);
    vd_hbitmap_set(m->busy, wstart, wlen);
    m->in_flight++;
    m->bytes_in_flight += wlen;
    m->cursor = wstart + wlen;
    vd_job_rate_charge(&m->job, wlen);
    m->batch_left = m->batch_left > wlen ? m->batch_left - wlen : 0;
    *m->queue_tail = op;
    m->queue_tail = &op->next;
    pthread_cond_signal(&m->work);
    return true;
}

/* ---- what the source's users write ------------------------------------------------------ */

static bool copying_actively(const mirror *m)
{
    return m->write_blocking && m->ret == 0 && !vd_job_cancel_requested(&m->job) &&
           !vd_job_pause_pending(&m->job) &&
           (m->job.status == VD_JOB_RUNNING || m->job.status == VD_JOB_READY);
}

/* Write-blocking, as QEMU's filter does it: before a write reaches the source, the job
 * waits until no copy runs over its granules and holds them (so none starts: two
 * overlapping writes go one after the other, and no older copy can land after this one);
 * once the source has it, the same data goes to the target, and only then does the write
 * complete to its sender. Writes so copied do not mark the dirty bitmap: new writes never
 * add to what is left, so the job converges under any write load. */
typedef struct active_op {
    const vd_write_req *req;
    uint64_t s, l;                    /* the granules held (whole target clusters if widened) */
    bool widened;
    struct active_op *next;
} active_op;

static int source_writing(vd_write_notifier *nt, vd_node *n, const vd_write_req *req)
{
    (void)n;
    mirror *m = (mirror *)((char *)nt - offsetof(mirror, nt));
    if (!m->write_blocking || req->kind == VD_WRITE_TRUNCATE || req->off >= m->size) {
        return 0;
    }
    pthread_mutex_lock(&m->job.lock);
    if (copying_actively(m)) {
        uint64_t end = req->off + req->len < m->size ? req->off + req->len : m->size;
        uint64_t s = req->off / m->gran * m->gran;
        uint64_t e = (end + m->gran - 1) / m->gran * m->gran;
        uint64_t l = (e < m->size ? e : m->size) - s;
        uint64_t ws = s, wl = l;
        widen(m, &ws, &wl);
        /* Granules still to be copied, none of them now: the run loop copies them after
         * this write, so the write costs the target nothing now (and adds nothing to do). */
        bool ok = vd_hbitmap_next_zero(m->dirty, s, s + l) >= 0 ||
                  vd_hbitmap_next_dirty(m->busy, ws, ws + wl) >= 0;
        while (ok && vd_hbitmap_next_dirty(m->busy, ws, ws + wl) >= 0) {
            m->busy_waiters++;
            pthread_cond_wait(&m->job.cond, &m->job.lock);
            m->busy_waiters--;
            if (!(ok = copying_actively(m))) {
                break;
            }
        }
        if (ok) {
            active_op *op = calloc(1, sizeof(*op));
            if (!op) {
                abort();
            }
            *op = (active_op){req, ws, wl, ws != s || wl != l, m->active};
            m->active = op;
            vd_hbitmap_set(m->busy, ws, wl);
            m->active_in_flight++;
        }
    }
    pthread_mutex_unlock(&m->job.lock);
    return 0;
}

/* The target gets what the source got: the caller's data for a plain write; otherwise (a
 * write of zeros, a discard, a copy widened to whole clusters) the range as the source
 * now reads it. */
static int copy_active(mirror *m, const active_op *op, bool *is_read)
{
    const vd_write_req *req = op->req;
    uint64_t len = req->len < m->size - req->off ? req->len : m->size - req->off;
    if (!op->widened && req->buf && req->kind == VD_WRITE) {
        *is_read = false;
        return vd_node_pwrite(m->target, req->buf, len, req->off, 0);
    }
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, PIECE_BYTES) != 0) {
        return -ENOMEM;
    }
    int r = op->widened ? copy_range(m, buf, PIECE_BYTES, op->s, op->l, is_read)
                        : copy_range(m, buf, PIECE_BYTES, req->off, len, is_read);
    free(buf);
    return r;
}

static void source_written(vd_write_notifier *nt, vd_node *n, const vd_write_req *req,
                           int ret)
{
    (void)n;
    mirror *m = (mirror *)((char *)nt - offsetof(mirror, nt));
    if (req->kind == VD_WRITE_TRUNCATE || req->off >= m->size) {
        return;     /* the job's claim keeps the size; nothing to mark */
    }
    uint64_t len = req->len < m->size - req->off ? req->len : m->size - req->off;
    pthread_mutex_lock(&m->job.lock);
    active_op *op = NULL;
    for (active_op **p = &m->active; *p; p = &(*p)->next) {
        if ((*p)->req == req) {
            op = *p;
            *p = op->next;
            break;
        }
    }
    if (!op) {
        /* No wake-up: the run loop looks at the bitmap at least every IDLE_NS, and waking
         * it for each of thousands of writes a second costs more than it gains. */
        vd_hbitmap_set(m->dirty, req->off, len);
        pthread_mutex_unlock(&m->job.lock);
        return;
    }
    int r = ret;
    bool is_read = false;
    if (ret >= 0) {
        pthread_mutex_unlock(&m->job.lock);
        r = copy_active(m, op, &is_read);
        pthread_mutex_lock(&m->job.lock);
    }
    vd_hbitmap_reset(m->busy, op->s, op->l);
    m->active_in_flight--;
    if (r < 0) {
        /* The source has it, the target may not: copied again later. */
        vd_hbitmap_set(m->dirty, op->widened ? op->s : req->off, op->widened ? op->l : len);
        if (ret >= 0) {
            vd_job_action act = vd_job_error_action(&m->job, is_read ? m->on_source_error
                                                                     : m->on_target_error,
                                                    is_read, -r);
            if (act == VD_JOB_ACT_REPORT && m->ret == 0) {
                m->ret = r;
            }
        }
        update_progress(m, 0);
    } else {
        mark_cow(m, op->widened ? op->s : req->off, op->widened ? op->l : len);
        /* QEMU counts a write copied so in both the length and the progress. */
        update_progress(m, len);
    }
    if (m->busy_waiters || r < 0) {
        pthread_cond_broadcast(&m->job.cond);
    }
    pthread_mutex_unlock(&m->job.lock);
    free(op);
}

/* ---- the run ------------------------------------------------------------------------------ */

/* An active commit copies what the layers above its base hold. */
static int dirty_init_commit(mirror *m)
{
    for (uint64_t off = 0; off < m->size;) {
        vd_extent st;
        int r = vd_node_chain_status(m->src, off, m->size - off, &st);
        if (r < 0) {
            return r;
        }
        uint64_t n = st.length ? st.length : m->size - off;
        if ((st.flags & VD_BS_ALLOCATED) && st.depth < m->base_depth) {
            pthread_mutex_lock(&m->job.lock);
            vd_hbitmap_set(m->dirty, off, n);
            update_progress(m, 0);
            pthread_mutex_unlock(&m->job.lock);
        }
        off += n;
    }
    return 0;
}

/* What is to be copied at the start (QEMU's sync modes). No lock held: the notifier marks
 * concurrent writes meanwhile. A full copy onto a target that may hold data of its own
 * zeroes it first when it can unmap, else copies everything; onto a new one, or with
 * sync=top, it copies what is allocated (in the chain, or above the source's backing). */
static int dirty_init(mirror *m)
{
    if (m->sync == VD_MIRROR_SYNC_NONE) {
        return 0;
    }
    vd_node *top = vd_node_skip_filters(m->src);
    bool top_only = m->sync == VD_MIRROR_SYNC_TOP && top->backing;
    bool all = false;
    if (m->commit) {
        return dirty_init_commit(m);
    }
    if (!top_only && m->zero_target && m->size) {
        all = !(m->target->open_flags & VD_OPEN_UNMAP) ||
              vd_node_pwrite_zeroes(m->target, 0, m->size,
                                    VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK) < 0;
    }
    for (uint64_t off = 0; off < m->size;) {
        uint64_t n = m->size - off;
        bool dirty = true;
        if (!all) {
            if (top_only) {
                vd_node_status st;
                int r = vd_node_block_status(top, off, n, &st);
                if (r < 0) {
                    return r;
                }
                n = st.pnum;
                dirty = st.flags & VD_BS_ALLOCATED;
            } else {
                vd_extent st;
                int r = vd_node_chain_status(m->src, off, n, &st);
                if (r < 0) {
                    return r;
                }
                n = st.length ? st.length : n;
                dirty = st.flags & VD_BS_ALLOCATED;
            }
        }
        if (dirty) {
            pthread_mutex_lock(&m->job.lock);
            vd_hbitmap_set(m->dirty, off, n);
            update_progress(m, 0);
            pthread_mutex_unlock(&m->job.lock);
        }
        off += n;
    }
    return 0;
}

static int mirror_run(vd_job *job)
{
    mirror *m = of(job);
    if (m->target->size != m->size) {
        /* QEMU finds this once the job runs: it fails, with nothing copied. */
        pthread_mutex_lock(&job->lock);
        job->error = vd_xstrdup("Source and target image have different sizes");
        pthread_mutex_unlock(&job->lock);
        return -EINVAL;
    }
    int ret = dirty_init(m);
    pthread_mutex_lock(&job->lock);
    if (ret < 0) {
        m->ret = ret;
    }
    update_progress(m, 0);
    for (;;) {
        if (vd_job_is_cancelled(job) || m->ret < 0) {
            break;
        }
        if (vd_job_pause_pending(job)) {
            if (m->in_flight == 0) {
                vd_job_pause_point(job);
                m->batch_left = m->buf_size;  /* QEMU's resumed job copies a round at once */
            } else {
                vd_job_wait(job, 0);
            }
            continue;
        }
        if (m->retry_later) {
            m->retry_later = false;
            vd_job_wait(job, RETRY_NS);
            continue;
        }
        if (vd_hbitmap_count(m->dirty) > 0) {
            /* As QEMU's, the limit is looked at between rounds of a buffer's worth. */
            if (m->batch_left == 0) {
                uint64_t delay = vd_job_rate_delay(job);
                if (delay) {
                    vd_job_sleep(job, delay);
                    continue;
                }
                m->batch_left = m->buf_size;
            }
            if (m->in_flight < MAX_IN_FLIGHT && issue_next(m)) {
                continue;
            }
            m->batch_left = 0;
            vd_job_wait(job, IDLE_NS);
            continue;
        }
        if (m->in_flight > 0) {
            vd_job_wait(job, 0);
            continue;
        }
        /* In sync: ready once the target holds it durably; done when asked to be. */
        if (job->status == VD_JOB_RUNNING) {
            pthread_mutex_unlock(&job->lock);
            int r = vd_node_flush(m->target);
            pthread_mutex_lock(&job->lock);
            if (r < 0) {
                vd_job_action act = vd_job_error_action(job, m->on_target_error, false, -r);
                if (act == VD_JOB_ACT_REPORT) {
                    m->ret = r;
                }
                continue;
            }
            if (vd_hbitmap_count(m->dirty) > 0 || m->in_flight > 0) {
                continue;
            }
            vd_job_ready(job);
        }
        if (m->should_complete || vd_job_cancel_requested(job)) {
            break;
        }
        vd_job_sleep(job, IDLE_NS);
    }
    while (m->in_flight > 0) {
        vd_job_wait(job, 0);
    }
    ret = vd_job_is_cancelled(job) ? -ECANCELED : m->ret;
    pthread_mutex_unlock(&job->lock);
    return ret;
}

static void mirror_complete(vd_job *job)
{
    of(job)->should_complete = true;
}

/* ---- the end ---------------------------------------------------------------------------- */

/* With the source's users drained: nothing is in flight, so the rest is copied here. */
static int copy_rest(mirror *m, vd_error **errp)
{
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, PIECE_BYTES) != 0) {
        abort();
    }
    int r = 0;
    pthread_mutex_lock(&m->job.lock);
    uint64_t start, len;
    while (r == 0 && vd_hbitmap_next_dirty_area(m->dirty, 0, m->size, &start, &len)) {
        widen(m, &start, &len);
        vd_hbitmap_reset(m->dirty, start, len);
        pthread_mutex_unlock(&m->job.lock);
        bool is_read = false;
        r = copy_range(m, buf, PIECE_BYTES, start, len, &is_read);
        pthread_mutex_lock(&m->job.lock);
        if (r == 0) {
            mark_cow(m, start, len);
            update_progress(m, len);
        } else {
            vd_hbitmap_set(m->dirty, start, len);
            vd_error_set(errp, VD_ERR_IO, -r, "%s", strerror(-r));
        }
    }
    pthread_mutex_unlock(&m->job.lock);
    free(buf);
    if (r == 0 && (r = vd_node_flush(m->target)) < 0) {
        vd_error_set(errp, VD_ERR_IO, -r, "%s", strerror(-r));
    }
    return r;
}

static void remove_notifier(mirror *m)
{
    if (!m->notifier_on) {
        return;
    }
    vd_disk *users[MAX_USERS];
    size_t nb = vd_node_users_drain_begin(m->src, m->src_h, users, MAX_USERS);
    vd_node_drain_writes(m->src);
    vd_node_remove_write_notifier(m->src, &m->nt);
    m->notifier_on = false;
    vd_disks_drain_end(users, nb);
}

/* The pivot: every user of the source moves to the target. */
static int mirror_prepare(vd_job *job, vd_error **errp)
{
    mirror *m = of(job);
    if (!m->should_complete) {
        return 0;      /* a soft cancel: the target is a copy, the source stays in use */
    }
    vd_disk *users[MAX_USERS];
    size_t nb = vd_node_users_drain_begin(m->src, m->src_h, users, MAX_USERS);
    vd_node_drain_writes(m->src);
    int r = copy_rest(m, errp);
    if (r == 0) {
        vd_node_remove_write_notifier(m->src, &m->nt);
        m->notifier_on = false;
        /* The job's own use of the target ends first: the users take it over. */
        vd_disk_unclaim(m->tgt_h, m->tgt_claim);
        m->tgt_claim = NULL;
        for (size_t i = 0; i < nb; i++) {
            vd_node_ref(m->target);
            vd_node_unref(vd_disk_replace_node_locked(users[i], m->target));
        }
    }
    vd_disks_drain_end(users, nb);
    return r;
}

static void set_blockers(mirror *m, bool on)
{
    pthread_mutex_lock(&m->src->engine->graph_lock);
    m->src->job_blocker = on ? m->job.drv->type : NULL;
    m->target->job_target = on;
    pthread_mutex_unlock(&m->src->engine->graph_lock);
}

static void mirror_clean(vd_job *job)
{
    mirror *m = of(job);
    remove_notifier(m);
    if (m->blockers_on) {
        set_blockers(m, false);
        m->blockers_on = false;
    }
    if (m->nb_workers) {
        pthread_mutex_lock(&job->lock);
        m->workers_stop = true;
        pthread_cond_broadcast(&m->work);
        pthread_mutex_unlock(&job->lock);
        for (unsigned i = 0; i < m->nb_workers; i++) {
            pthread_join(m->workers[i], NULL);
        }
        m->nb_workers = 0;
    }
    if (m->tgt_claim) {
        vd_disk_unclaim(m->tgt_h, m->tgt_claim);
    }
    if (m->src_claim) {
        vd_disk_unclaim(m->src_h, m->src_claim);
    }
    m->tgt_claim = m->src_claim = NULL;
    vd_close(m->src_h);
    vd_close(m->tgt_h);
    m->src_h = m->tgt_h = NULL;
    /* Out of the job's sight first: a query may be looking at m->src under the lock (which
     * exists once the job was made). */
    if (m->job_made) {
        pthread_mutex_lock(&job->lock);
    }
    vd_node *nodes[2] = {m->src, m->target};
    m->src = m->target = NULL;
    if (m->job_made) {
        pthread_mutex_unlock(&job->lock);
    }
    for (int i = 0; i < 2; i++) {
        if (nodes[i]) {
            vd_node_unref(nodes[i]);
        }
    }
}

static void mirror_free(vd_job *job)
{
    mirror *m = of(job);
    vd_hbitmap_free(m->dirty);
    vd_hbitmap_free(m->busy);
    vd_hbitmap_free(m->cow);
    vd_hbitmap_free(m->arena_used);
    free(m->arena);
    pthread_cond_destroy(&m->work);
    free(m);
}

/* QEMU's mirror keeps an anonymous dirty bitmap on its source, and lists it there; this
 * job's is its own, shown the same way (disabled in write-blocking mode, as QEMU's). */
static bool mirror_bitmap_info(vd_job *job, const char *node, vd_bitmap_info *info)
{
    mirror *m = of(job);
    if (!m->src || !m->src->node_name || strcmp(m->src->node_name, node)) {
        return false;
    }
    info->granularity = m->gran;
    info->count = vd_hbitmap_count(m->dirty);
    info->recording = !m->write_blocking;
    return true;
}

static void mirror_abort(vd_job *job);

static const vd_job_driver mirror_driver = {
    .type = "mirror",
    .paused_when_pending = true,
    .run = mirror_run,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .abort = mirror_abort,
    .clean = mirror_clean,
    .free = mirror_free,
    .bitmap_info = mirror_bitmap_info,
};

static void mirror_abort(vd_job *job)
{
    mirror *m = of(job);
    if (m->commit && m->base_was_ro) {
        /* An active commit that did not pivot leaves its base as it found it. */
        vd_node_reopen_rw(m->target, false, NULL);
        m->base_was_ro = false;
    }
}

static const vd_job_driver commit_driver = {
    .type = "commit",
    .paused_when_pending = true,
    .run = mirror_run,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .abort = mirror_abort,
    .clean = mirror_clean,
    .free = mirror_free,
    .bitmap_info = mirror_bitmap_info,
};

/* ---- the start ---------------------------------------------------------------------------- */

/* The nodes and claims, with QEMU's refusals in QEMU's order. */
static int mirror_setup(vd_engine *e, mirror *m, const vd_mirror_opts *o, vd_error **errp)
{
    uint64_t g = o->granularity;
    if (g && (g & (g - 1))) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'granularity' expects "
                            "a power of 2");
    }
    if (g && (g < 512 || g > (64u << 20))) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'granularity' expects "
                            "a value in range [512B, 64MB]");
    }
    int r = vd_graph_ref(e, o->device, &m->src, errp);
    if (r < 0) {
        return r;
    }
    bool parents;
    vd_disk *none[1];
    vd_graph_users(m->src, NULL, none, 0, &parents);
    /* QEMU's mirror puts a filter over its source; a job's nodes are no root then. */
    if (parents || m->src->job_blocker || m->src->job_target) {
        return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Need a root block node");
    }
    if ((r = vd_graph_ref(e, o->target, &m->target, errp)) < 0) {
        return r;
    }
    if (m->target->job_blocker || m->target->job_target) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: block device is "
                            "in use by block job: mirror", o->target);
    }
    if (m->target == m->src) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Can't mirror node into itself");
    }
    if (o->replaces) {
        vd_node *rn = NULL;
        if (vd_graph_ref(e, o->replaces, &rn, NULL) < 0) {
            return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Failed to find node with "
                                "node-name='%s'", o->replaces);
        }
        vd_node_unref(rn);
        /* Only the source itself can be replaced without a visible jump in its data
         * (QEMU allows more for quorum children, which vdisk does not have). */
        if (rn != m->src) {
            return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Cannot replace '%s' by a node "
                                "mirrored from '%s', because it cannot be guaranteed that "
                                "doing so would not lead to an abrupt change of visible data",
                                o->replaces, o->device);
        }
    }
    m->size = m->src->size;
    if (o->commit) {
        /* The base of an active commit: written by the job while its overlays read it
         * (their uses stay; the job owns the layers between), grown if smaller. */
        m->commit = true;
        m->base_depth = chain_depth(m->src, m->target);
        m->base_was_ro = !(m->target->open_flags & VD_OPEN_RDWR);
        if ((r = vd_node_reopen_rw(m->target, true, errp)) < 0) {
            m->base_was_ro = false;
            return r;
        }
        if (m->target->size < m->size &&
            (r = vd_node_truncate(m->target, m->size, false, "off", errp)) < 0) {
            return r;
        }
    }
    /* The job reads the source and lets others do anything but resize it; it writes the
     * target and lets no one else write it. */
    if ((r = vd_blockdev_open(e, o->device, &m->src_h, errp)) < 0 ||
        (r = vd_disk_claim(m->src_h, VD_PERM_CONSISTENT_READ,
                           VD_PERM_ALL & ~VD_PERM_RESIZE, &m->src_claim, errp)) < 0 ||
        (r = vd_blockdev_open(e, o->target, &m->tgt_h, errp)) < 0 ||
        (!o->commit && (r = vd_disk_claim(m->tgt_h, VD_PERM_WRITE, VD_PERM_WRITE_UNCHANGED,
                                          &m->tgt_claim, errp)) < 0)) {
        return r;
    }
    m->sync = o->sync;
    uint64_t tc = vd_node_cluster_size(vd_node_skip_filters(m->target));
    m->gran = g ? g : !tc ? 65536 : tc < 4096 ? 4096 : tc > 65536 ? 65536 : tc;
    m->buf_size = o->buf_size ? o->buf_size : DEFAULT_BUF_SIZE;
    m->buf_size = (m->buf_size + m->gran - 1) / m->gran * m->gran;
    vd_node *tf = vd_node_skip_filters(m->target);
    if (tc > m->gran && !tf->backing && tf->backing_filename && *tf->backing_filename &&
        !e->mirror_no_whole_clusters) {
        m->cow_size = tc;
        if (m->buf_size < tc) {
            m->buf_size = tc;
        }
        m->cow = vd_hbitmap_new(m->size ? m->size : 1, tc);
    }
    m->dirty = vd_hbitmap_new(m->size ? m->size : 1, m->gran);
    m->busy = vd_hbitmap_new(m->size ? m->size : 1, m->gran);
    m->arena_used = vd_hbitmap_new(m->buf_size, m->gran);
    m->arena = vd_io_buffer_alloc(m->buf_size);
    if (!m->dirty || !m->busy || (m->cow_size && !m->cow) || !m->arena_used || !m->arena) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "Could not allocate the job's "
                            "bitmaps and buffer");
    }
    m->on_source_error = o->on_source_error;
    m->on_target_error = o->on_target_error;
    m->write_blocking = o->write_blocking;
    m->unmap = o->unmap;
    m->zero_target = !o->target_is_zero;
    return 0;
}


int vd_mirror_start(vd_engine *e, const vd_mirror_opts *o, vd_error **errp)
{
    mirror *m = calloc(1, sizeof(*m));
    if (!m) {
        abort();
    }
    m->queue_tail = &m->queue;
    pthread_cond_init(&m->work, NULL);
    int r = mirror_setup(e, m, o, errp);
    if (r == 0) {
        r = vd_job_create(e, &m->job, o->commit ? &commit_driver : &mirror_driver,
                          o->job_id ? o->job_id : "",
                          o->auto_finalize, o->auto_dismiss, o->speed < 0 ? 0 : (uint64_t)o->speed,
                          errp);
    }
    if (r < 0) {
        mirror_abort(&m->job);
        mirror_clean(&m->job);
        mirror_free(&m->job);
        return r;
    }
    m->job_made = true;
    if (o->speed < 0) {
        /* QEMU makes the job before it looks at the speed (created, then null). */
        mirror_abort(&m->job);
        mirror_clean(&m->job);
        vd_job_discard(&m->job);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'speed' expects a "
                            "non-negative value");
    }
    set_blockers(m, true);
    m->blockers_on = true;
    for (; m->nb_workers < MAX_IN_FLIGHT; m->nb_workers++) {
        if (pthread_create(&m->workers[m->nb_workers], NULL, worker, m) != 0) {
            break;
        }
    }
    if (m->nb_workers == 0) {
        mirror_abort(&m->job);
        mirror_clean(&m->job);
        vd_job_discard(&m->job);
        return vd_error_set(errp, VD_ERR_GENERIC, EAGAIN, "Could not start the job's "
                            "threads");
    }
    /* From here on every write to the source is seen. */
    m->nt.before = source_writing;
    m->nt.after = source_written;
    vd_node_add_write_notifier(m->src, &m->nt);
    m->notifier_on = true;
    r = vd_job_start(&m->job, errp);
    if (r < 0) {
        mirror_abort(&m->job);
        mirror_clean(&m->job);
        vd_job_discard(&m->job);
    }
    return r;
}
