/* The backup job: a point-in-time copy of a source node into a target node while the
 * source is in use. A copy-before-write filter over the source keeps the point in time
 * (block/cbw.h): before a write changes a cluster the copy still needs, its old data goes
 * to the target. The job copies the rest, a cluster run at a time, with worker threads,
 * taking each run from the filter's set of what is left, so the filter and the job never
 * copy one cluster twice.
 *
 * Sync modes: full copies everything, top what the source's top layer holds, bitmap what
 * a dirty bitmap marked (the bitmap is frozen meanwhile: writes go to a successor, and at
 * the end the bitmap becomes what was written since, or gets its bits back, per
 * bitmap-mode), none nothing but what the filter copies (fleecing: the job runs until
 * cancelled). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/cbw.h"
#include "block/dirty-bitmap.h"
#include "block/disk.h"
#include "jobs/job.h"
#include "util/common.h"
#include "vdisk/graph.h"

#define MAX_WORKERS 64
#define DEFAULT_WORKERS 16
#define DEFAULT_CHUNK (1u << 20)
#define IDLE_NS 10000000u             /* a wait for copies that others hold */
#define RETRY_NS 10000000u            /* after an ignored error, before copying again */
/* The target is flushed as the copy goes, every so many bytes, so the flush that ends
 * the job (a backup is durable when it completes) has little left to write. */
#define FLUSH_EVERY (256u << 20)

typedef struct backup_op {
    uint64_t off, len;
    struct backup_op *next;
} backup_op;

typedef struct backup {
    vd_job job;                       /* first: the core's part */
    vd_node *src, *target, *filter;   /* references the job holds */
    vd_cbw *cbw;
    vd_disk *src_h;                   /* the job's handle: its claim, never its I/O */
    vd_perm_claim *src_claim;
    vd_backup_sync sync;
    vd_dirty_bitmap *bitmap;          /* frozen for the job (sync=bitmap, or one to clear) */
    vd_bitmap_sync_mode bitmap_mode;
    vd_job_on_error on_source_error, on_target_error;
    uint64_t size, cluster, chunk;
    unsigned max_workers, nb_workers;
    pthread_t workers[MAX_WORKERS];
    pthread_cond_t work;
    char *drop_target;                /* a node drive-backup made: deleted at the end */
    bool job_made, blockers_on;
    /* Under job.lock. */
    backup_op *queue, **queue_tail;
    unsigned in_flight;
    bool workers_stop, retry_later;
    uint64_t unflushed;               /* bytes copied since the last flush began */
    bool flushing;
    uint64_t cursor;
    int ret;
} backup;

static backup *of(vd_job *job)
{
    return (backup *)job;
}

/* ---- copying ----------------------------------------------------------------------------- */

static void update_progress(backup *b, uint64_t done)
{
    vd_job_progress(&b->job, done, vd_cbw_todo_bytes(b->cbw));
}

/* The filter copied len bytes for a write: the job's progress too. */
static void filter_copied(void *opaque, uint64_t len)
{
    backup *b = opaque;
    pthread_mutex_lock(&b->job.lock);
    update_progress(b, len);
    pthread_mutex_unlock(&b->job.lock);
}

static void *worker(void *arg)
{
    backup *b = arg;
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, b->chunk) != 0) {
        buf = NULL;
    }
    pthread_mutex_lock(&b->job.lock);
    for (;;) {
        while (!b->queue && !b->workers_stop) {
            pthread_cond_wait(&b->work, &b->job.lock);
        }
        backup_op *op = b->queue;
        if (!op) {
            break;
        }
        b->queue = op->next;
        if (!b->queue) {
            b->queue_tail = &b->queue;
        }
        pthread_mutex_unlock(&b->job.lock);
        bool is_read = false;
        int r = buf ? vd_cbw_copy(b->cbw, buf, b->chunk, op->off, op->len, &is_read)
                    : -ENOMEM;
        vd_cbw_release(b->cbw, op->off, op->len, r == 0);
        pthread_mutex_lock(&b->job.lock);
        b->in_flight--;
        if (r < 0) {
            vd_job_action act = vd_job_error_action(&b->job, is_read ? b->on_source_error
                                                                      : b->on_target_error,
                                                    is_read, -r);
            if (act == VD_JOB_ACT_REPORT && b->ret == 0) {
                b->ret = r;
            } else if (act == VD_JOB_ACT_IGNORE) {
                b->retry_later = true;
            }
        } else {
            update_progress(b, op->len);
            b->unflushed += op->len;
            if (b->unflushed >= FLUSH_EVERY && !b->flushing) {
                /* A failure here is left to the last flush, which reports it. */
                b->flushing = true;
                b->unflushed = 0;
                pthread_mutex_unlock(&b->job.lock);
                (void)vd_node_flush(b->target);
                pthread_mutex_lock(&b->job.lock);
                b->flushing = false;
            }
        }
        pthread_cond_broadcast(&b->job.cond);
        free(op);
    }
    pthread_mutex_unlock(&b->job.lock);
    free(buf);
    return NULL;
}

/* Queues the next free run for the workers, lock held. false: none free now. */
static bool issue_next(backup *b, bool *pending)
{
    uint64_t off, len;
    if (!vd_cbw_claim(b->cbw, b->cursor, b->chunk, &off, &len, pending)) {
        if (b->cursor == 0 || !vd_cbw_claim(b->cbw, 0, b->chunk, &off, &len, pending)) {
            return false;
        }
    }
    backup_op *op = calloc(1, sizeof(*op));
    if (!op) {
        abort();
    }
    op->off = off;
    op->len = len;
    b->cursor = off + len;
    b->in_flight++;
    vd_job_rate_charge(&b->job, len);
    *b->queue_tail = op;
    b->queue_tail = &op->next;
    pthread_cond_signal(&b->work);
    return true;
}

/* sync=top: what the top layer does not hold is not the job's to copy (the target reads
 * it from the same backing, or as unallocated, as QEMU leaves it even without a backing).
 * No lock held. */
static int skip_unallocated(backup *b)
{
    vd_node *top = vd_node_skip_filters(b->src);
    for (uint64_t off = 0; off < b->size;) {
        vd_node_status st;
        int r = vd_node_block_status(top, off, b->size - off, &st);
        if (r < 0) {
            return r;
        }
        if (!(st.flags & VD_BS_ALLOCATED)) {
            vd_cbw_drop(b->cbw, off, st.pnum);
        }
        off += st.pnum;
    }
    return 0;
}

static int backup_run(vd_job *job)
{
    backup *b = of(job);
    int r = b->sync == VD_BACKUP_SYNC_TOP ? skip_unallocated(b) : 0;
    pthread_mutex_lock(&job->lock);
    if (r < 0) {
        b->ret = r;
    }
    update_progress(b, 0);
    for (;;) {
        if (vd_job_is_cancelled(job) || b->ret < 0) {
            break;
        }
        if (vd_job_pause_pending(job)) {
            if (b->in_flight == 0) {
                vd_job_pause_point(job);
            } else {
                vd_job_wait(job, 0);
            }
            continue;
        }
        if (b->sync == VD_BACKUP_SYNC_NONE) {
            vd_job_sleep(job, 0);     /* the filter does the work, until a cancel */
            continue;
        }
        if (b->retry_later) {
            b->retry_later = false;
            vd_job_wait(job, RETRY_NS);
            continue;
        }
        uint64_t delay = vd_job_rate_delay(job);
        if (delay) {
            vd_job_sleep(job, delay);
            continue;
        }
        bool pending = false;
        if (b->in_flight < b->max_workers && issue_next(b, &pending)) {
            continue;
        }
        if (b->in_flight > 0) {
            vd_job_wait(job, 0);
            continue;
        }
        if (pending || vd_cbw_todo_bytes(b->cbw) > 0) {
            vd_job_wait(job, IDLE_NS);  /* copies for writes hold the rest */
            continue;
        }
        break;
    }
    while (b->in_flight > 0) {
        vd_job_wait(job, 0);
    }
    int ret = vd_job_is_cancelled(job) ? -ECANCELED : b->ret;
    pthread_mutex_unlock(&job->lock);
    if (ret == 0 && (r = vd_node_flush(b->target)) < 0) {
        ret = r;
    }
    return ret;
}

/* ---- the end ------------------------------------------------------------------------------- */

/* The bitmap at the end (QEMU's rules): a success, or a failure with always, hands it what
 * was written meanwhile, unless the mode is never; a failure with always keeps what was
 * not copied too; otherwise it gets everything back. */
static void bitmap_end(backup *b, bool ok)
{
    if (!b->bitmap) {
        return;
    }
    bool abdicate = (ok || b->bitmap_mode == VD_BITMAP_SYNC_ALWAYS) &&
                    b->bitmap_mode != VD_BITMAP_SYNC_NEVER;
    vd_hbitmap *left = NULL;
    if (!ok && b->bitmap_mode == VD_BITMAP_SYNC_ALWAYS) {
        left = vd_cbw_todo_copy(b->cbw);
    }
    vd_bitmap_thaw(b->bitmap, abdicate, left);
    vd_hbitmap_free(left);
    b->bitmap = NULL;
}

static int backup_prepare(vd_job *job, vd_error **errp)
{
    (void)errp;
    bitmap_end(of(job), true);
    return 0;
}

static void backup_abort(vd_job *job)
{
    bitmap_end(of(job), false);
}

/* The target is the job's alone (QEMU's blocker on it); the source takes more backups,
 * and the filter over it keeps other jobs and blockdev-del off. */
static void set_blockers(backup *b, bool on)
{
    pthread_mutex_lock(&b->src->engine->graph_lock);
    b->target->job_blocker = on ? "backup" : NULL;
    pthread_mutex_unlock(&b->src->engine->graph_lock);
}

static void backup_clean(vd_job *job)
{
    backup *b = of(job);
    bitmap_end(b, false);     /* a job that never ran */
    if (b->nb_workers) {
        pthread_mutex_lock(&job->lock);
        b->workers_stop = true;
        pthread_cond_broadcast(&b->work);
        pthread_mutex_unlock(&job->lock);
        for (unsigned i = 0; i < b->nb_workers; i++) {
            pthread_join(b->workers[i], NULL);
        }
        b->nb_workers = 0;
    }
    if (b->cbw) {
        vd_cbw_listen(b->cbw, NULL);
    }
    if (b->blockers_on) {
        set_blockers(b, false);
        b->blockers_on = false;
    }
    if (b->src_claim) {
        vd_disk_unclaim(b->src_h, b->src_claim);
        b->src_claim = NULL;
    }
    vd_close(b->src_h);
    b->src_h = NULL;
    if (b->job_made) {
        pthread_mutex_lock(&job->lock);
    }
    vd_node *nodes[3] = {b->filter, b->src, b->target};
    b->filter = b->src = b->target = NULL;
    b->cbw = NULL;
    if (b->job_made) {
        pthread_mutex_unlock(&job->lock);
    }
    /* The filter first: its notifier leaves the source with every user held still. */
    for (int i = 0; i < 3; i++) {
        if (nodes[i]) {
            vd_node_unref(nodes[i]);
        }
    }
    if (b->drop_target) {
        vd_blockdev_del(job->engine, b->drop_target, NULL);
    }
}

static void backup_free(vd_job *job)
{
    backup *b = of(job);
    pthread_cond_destroy(&b->work);
    free(b->drop_target);
    free(b);
}

static const vd_job_driver backup_driver = {
    .type = "backup",
    .run = backup_run,
    .prepare = backup_prepare,
    .abort = backup_abort,
    .clean = backup_clean,
    .free = backup_free,
};

/* ---- the start ---------------------------------------------------------------------------- */

/* blockdev-backup's argument checks, in QEMU's order (do_backup_common). */
static int check_args(vd_backup_opts *o, vd_error **errp)
{
    if (o->sync == VD_BACKUP_SYNC_BITMAP && !o->bitmap) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "must provide a valid bitmap name "
                            "for 'bitmap' sync mode");
    }
    if (o->bitmap) {
        if (!o->has_bitmap_mode) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap sync mode must be given "
                                "when providing a bitmap");
        }
        if (o->sync == VD_BACKUP_SYNC_NONE) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "sync mode 'none' does not "
                                "produce meaningful bitmap outputs");
        }
        if (o->bitmap_mode == VD_BITMAP_SYNC_NEVER && o->sync != VD_BACKUP_SYNC_BITMAP) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap sync mode 'never' has "
                                "no meaningful effect when combined with sync mode '%s'",
                                o->sync == VD_BACKUP_SYNC_FULL ? "full" : "top");
        }
    } else if (o->has_bitmap_mode) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot specify bitmap sync mode "
                            "without a bitmap");
    }
    return 0;
}

static int backup_setup(vd_engine *e, backup *b, vd_backup_opts *o, vd_error **errp)
{
    int r = vd_graph_ref(e, o->device, &b->src, errp);
    if (r < 0 || (r = check_args(o, errp)) < 0) {
        return r;
    }
    vd_hbitmap *bits = NULL;
    if (o->bitmap) {
        r = vd_bitmap_freeze(b->src, o->bitmap, o->bitmap_mode != VD_BITMAP_SYNC_NEVER,
                             &b->bitmap, &bits, errp);
        if (r < 0) {
            return r;
        }
        b->bitmap_mode = o->bitmap_mode;
    }
    if ((r = vd_graph_ref(e, o->target, &b->target, errp)) < 0) {
        goto out;
    }
    if (b->target == b->src) {
        r = vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Source and target cannot be the "
                         "same");
        goto out;
    }
    if (b->src->job_target) {
        r = vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: block device is in "
                         "use by block job: mirror", o->device);
        goto out;
    }
    if (b->target->job_blocker || b->target->job_target) {
        r = vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: block device is in "
                         "use by block job: %s", o->target,
                         b->target->job_blocker ? b->target->job_blocker : "mirror");
        goto out;
    }
    if (o->compress && !vd_node_skip_filters(b->target)->drv->pwrite_compressed) {
        r = vd_error_set(errp, VD_ERR_INVALID, ENOTSUP, "Compression is not supported for "
                         "this drive ");
        goto out;
    }
    b->size = b->src->size;
    if (b->target->size != b->size) {
        r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Source and target image have "
                         "different sizes");
        goto out;
    }
    if (o->max_workers < 0 || o->max_workers > INT32_MAX) {
        r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "max-workers must be between 1 and "
                         "%d", INT32_MAX);
        goto out;
    }
    if (o->max_chunk < 0) {
        r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "max-chunk must be zero (which means "
                         "no limit) or positive");
        goto out;
    }
    /* The job reads the source and lets others do anything but resize it. */
    if ((r = vd_blockdev_open(e, o->device, &b->src_h, errp)) < 0 ||
        (r = vd_disk_claim(b->src_h, VD_PERM_CONSISTENT_READ, VD_PERM_ALL & ~VD_PERM_RESIZE,
                           &b->src_claim, errp)) < 0) {
        goto out;
    }
    /* The filter: from here on every write to the source keeps the point in time. It takes
     * references of its own to the two nodes. */
    vd_node_ref(b->src);
    vd_node_ref(b->target);
    vd_cbw_params p = {.source = b->src, .target = b->target,
                       .node_name = o->filter_node_name, .bitmap = bits,
                       .on_error = VD_CBW_BREAK_GUEST_WRITE, .compress = o->compress};
    if ((r = vd_cbw_new(e, &p, &b->filter, errp)) < 0) {
        vd_node_unref(b->src);
        vd_node_unref(b->target);
        goto out;
    }
    b->cbw = vd_cbw_of(b->filter);
    b->cluster = vd_cbw_cluster(b->cbw);
    if (o->max_chunk && (uint64_t)o->max_chunk < b->cluster) {
        r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Required max-chunk (%" PRIi64 ") is "
                         "less than backup cluster size (%" PRIu64 ")", o->max_chunk,
                         b->cluster);
        goto out;
    }
    b->chunk = o->max_chunk ? (uint64_t)o->max_chunk : DEFAULT_CHUNK;
    b->chunk = b->chunk < b->cluster ? b->cluster : b->chunk / b->cluster * b->cluster;
    /* More threads than MAX_WORKERS buy nothing but memory: QEMU's coroutines are cheap,
     * threads are not. */
    b->max_workers = !o->max_workers ? DEFAULT_WORKERS
                     : o->max_workers > MAX_WORKERS ? MAX_WORKERS : (unsigned)o->max_workers;
    b->sync = o->sync;
    b->on_source_error = o->on_source_error;
    b->on_target_error = o->on_target_error;
out:
    vd_hbitmap_free(bits);
    return r;
}

int vd_backup_prepare(vd_engine *e, const vd_backup_opts *opts, vd_job_group *group,
                      vd_job **out, vd_error **errp)
{
    vd_backup_opts o = *opts;
    backup *b = calloc(1, sizeof(*b));
    if (!b) {
        abort();
    }
    b->queue_tail = &b->queue;
    pthread_cond_init(&b->work, NULL);
    int r = backup_setup(e, b, &o, errp);
    if (r == 0) {
        r = vd_job_create(e, &b->job, &backup_driver, o.job_id ? o.job_id : "",
                          o.auto_finalize, o.auto_dismiss, o.speed < 0 ? 0 : (uint64_t)o.speed,
                          errp);
    }
    if (r < 0) {
        backup_clean(&b->job);
        backup_free(&b->job);
        return r;
    }
    b->job_made = true;
    if (o.speed < 0) {
        backup_clean(&b->job);
        vd_job_discard(&b->job);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'speed' expects a "
                            "non-negative value");
    }
    set_blockers(b, true);
    b->blockers_on = true;
    vd_cbw_listener l = {filter_copied, b};
    vd_cbw_listen(b->cbw, &l);
    if (o.sync != VD_BACKUP_SYNC_NONE) {
        for (; b->nb_workers < b->max_workers; b->nb_workers++) {
            if (pthread_create(&b->workers[b->nb_workers], NULL, worker, b) != 0) {
                break;
            }
        }
        if (b->nb_workers == 0) {
            backup_clean(&b->job);
            vd_job_discard(&b->job);
            return vd_error_set(errp, VD_ERR_GENERIC, EAGAIN, "Could not start the job's "
                                "threads");
        }
        b->max_workers = b->nb_workers;
    }
    if (o.own_target) {
        b->drop_target = vd_xstrdup(o.own_target);
    }
    if (group) {
        vd_job_group_join(group, &b->job);
    }
    *out = &b->job;
    return 0;
}

int vd_backup_start(vd_engine *e, const vd_backup_opts *o, vd_error **errp)
{
    vd_job *job;
    int r = vd_backup_prepare(e, o, NULL, &job, errp);
    if (r == 0 && (r = vd_job_start(job, errp)) < 0) {
        vd_job_abandon(job);
    }
    return r;
}
