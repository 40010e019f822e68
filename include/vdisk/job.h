/* Block jobs: long-running operations on the engine's graph (a mirror today), each on its
 * own threads, driven by QEMU's job verbs and reporting QEMU's job events. A job goes
 * through QEMU's states (created, running, paused, ready, standby, waiting, pending,
 * aborting, concluded, null); a verb a state does not allow is refused with QEMU's
 * message. Jobs are named by id in the engine; vd_engine_free cancels the ones left. */
#ifndef VDISK_JOB_H
#define VDISK_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

typedef enum vd_job_status {
    VD_JOB_UNDEFINED,
    VD_JOB_CREATED,
    VD_JOB_RUNNING,
    VD_JOB_PAUSED,
    VD_JOB_READY,
    VD_JOB_STANDBY,
    VD_JOB_WAITING,
    VD_JOB_PENDING,
    VD_JOB_ABORTING,
    VD_JOB_CONCLUDED,
    VD_JOB_NULL,
} vd_job_status;

/* QEMU's JobStatus names ("created", ...). */
const char *vd_job_status_name(vd_job_status s);

/* What a job does when a request fails (QEMU's BlockdevOnError): fail the job (report),
 * retry later (ignore), pause until resumed (stop), pause on ENOSPC only (enospc). auto
 * is report for jobs. */
typedef enum vd_job_on_error {
    VD_JOB_ON_ERROR_REPORT,
    VD_JOB_ON_ERROR_IGNORE,
    VD_JOB_ON_ERROR_ENOSPC,
    VD_JOB_ON_ERROR_STOP,
    VD_JOB_ON_ERROR_AUTO,
} vd_job_on_error;

/* The policy named s, or -EINVAL. */
int vd_job_on_error_parse(const char *s, vd_job_on_error *out);

/* A job as query-jobs and query-block-jobs show it. */
typedef struct vd_job_info {
    char *id;
    const char *type;          /* "mirror" */
    vd_job_status status;
    uint64_t current_progress, total_progress;
    uint64_t speed;            /* bytes per second, 0: unlimited */
    bool busy, paused, ready;
    bool auto_finalize, auto_dismiss;
    const char *io_status;     /* "ok", "failed", "nospace" */
    char *error;               /* why it failed, or NULL */
} vd_job_info;

/* Every job, oldest first. */
int vd_job_list(vd_engine *e, vd_job_info **out, size_t *nb);
void vd_job_list_free(vd_job_info *list, size_t nb);
bool vd_job_exists(vd_engine *e, const char *id);

/* The verbs (QEMU's job-* commands). Each returns once the job took the request; the
 * effect shows in events, except finalize and dismiss, which are done on return. An
 * unknown id: -ENOENT, "Job not found". cancel with force=false on a ready mirror ends it
 * as complete would but leaves the source in use (QEMU's soft cancel); a job in any
 * other state is always cancelled outright. */
int vd_job_pause(vd_engine *e, const char *id, vd_error **errp);
int vd_job_resume(vd_engine *e, const char *id, vd_error **errp);
int vd_job_cancel(vd_engine *e, const char *id, bool force, vd_error **errp);
int vd_job_complete(vd_engine *e, const char *id, vd_error **errp);
int vd_job_finalize(vd_engine *e, const char *id, vd_error **errp);
int vd_job_dismiss(vd_engine *e, const char *id, vd_error **errp);
int vd_job_set_speed(vd_engine *e, const char *id, int64_t speed, vd_error **errp);

/* The bitmaps jobs keep on the node named `node` (a mirror's, on its source), as
 * query-named-block-nodes lists them: anonymous (name NULL), newest job first. */
#include "vdisk/bitmap.h"
int vd_job_node_bitmaps(vd_engine *e, const char *node, vd_bitmap_info **out, size_t *nb);

/* Cancels every job and waits until each has ended (a daemon's quit). */
void vd_jobs_cancel_all(vd_engine *e);

/* ---- mirror ---------------------------------------------------------------------------- */

typedef enum vd_mirror_sync {
    VD_MIRROR_SYNC_FULL,   /* everything the source reads */
    VD_MIRROR_SYNC_TOP,    /* what the source's top layer holds (its backing stays) */
    VD_MIRROR_SYNC_NONE,   /* only what is written from now on */
} vd_mirror_sync;

/* blockdev-mirror's arguments. The target is a named node of the same size; when the job
 * completes, every user of the source (or of `replaces`) uses the target instead. */
typedef struct vd_mirror_opts {
    const char *job_id;          /* required */
    const char *device;          /* the source node */
    const char *target;          /* the target node */
    const char *replaces;        /* the node whose users move to the target; NULL: device */
    vd_mirror_sync sync;
    int64_t speed;               /* bytes per second, 0: unlimited (< 0: refused) */
    uint64_t granularity;        /* 0: the target's cluster size within 4-64 KiB */
    uint64_t buf_size;           /* 0: 16 MiB */
    vd_job_on_error on_source_error, on_target_error;
    bool write_blocking;         /* copy-mode write-blocking (active mirroring) */
    bool unmap;                  /* zeros may be unmapped on the target (drive-mirror's) */
    bool target_is_zero;         /* a new target that reads zeros: only what the source
                                  * holds is copied (drive-mirror's new image) */
    bool auto_finalize, auto_dismiss;
    bool commit;                 /* set by vd_commit_start only: an active commit (job type
                                  * "commit", the target is a layer of the source's chain
                                  * below it, reopened read-write; only what lies above it
                                  * is copied) */
} vd_mirror_opts;

/* Starts the job (it is running on return), with QEMU's refusals and messages. */
int vd_mirror_start(vd_engine *e, const vd_mirror_opts *o, vd_error **errp);

/* ---- backup ---------------------------------------------------------------------------- */

typedef enum vd_backup_sync {
    VD_BACKUP_SYNC_FULL,      /* everything the source reads */
    VD_BACKUP_SYNC_TOP,       /* what the source's top layer holds */
    VD_BACKUP_SYNC_NONE,      /* only old data before it is overwritten (fleecing) */
    VD_BACKUP_SYNC_BITMAP,    /* what a dirty bitmap marks (incremental) */
} vd_backup_sync;

/* What a backup does to its bitmap at the end (QEMU's BitmapSyncMode): on-success clears
 * what it copied when it succeeds; always also when it fails; never leaves it. */
typedef enum vd_bitmap_sync_mode {
    VD_BITMAP_SYNC_ON_SUCCESS,
    VD_BITMAP_SYNC_NEVER,
    VD_BITMAP_SYNC_ALWAYS,
} vd_bitmap_sync_mode;

/* blockdev-backup's arguments. The target is a named node of the same size; a
 * copy-before-write filter over the source keeps the point in time the job started at. */
typedef struct vd_backup_opts {
    const char *job_id;          /* required */
    const char *device;          /* the source node */
    const char *target;          /* the target node */
    vd_backup_sync sync;
    const char *bitmap;          /* on the source; NULL: none */
    bool has_bitmap_mode;
    vd_bitmap_sync_mode bitmap_mode;
    bool compress;               /* compressed clusters on the target */
    int64_t speed;               /* bytes per second, 0: unlimited (< 0: refused) */
    vd_job_on_error on_source_error, on_target_error;
    bool auto_finalize, auto_dismiss;
    const char *filter_node_name; /* the filter's name (NULL: "#blockNNN") */
    int64_t max_workers;         /* copies in flight (0: 16) */
    int64_t max_chunk;           /* bytes per copy (0: 1 MiB, at least a cluster) */
    const char *own_target;      /* the target is this node the job deletes at its end
                                  * (drive-backup's); NULL: none */
} vd_backup_opts;

/* Starts a backup job (running on return): QEMU's checks and messages. */
int vd_backup_start(vd_engine *e, const vd_backup_opts *o, vd_error **errp);

/* ---- commit and stream ---------------------------------------------------------------- */

/* block-commit's arguments. The layers from top down to (not including) base are merged
 * into base and drop out of device's chain. With top the active layer (or omitted) this
 * is an active commit: a mirror of type "commit" that becomes ready and, on job-complete,
 * moves every user of the active layer onto base. Otherwise the job ends by itself, and
 * top's overlay then names base (or backing_file) as its backing file. */
typedef struct vd_commit_opts {
    const char *job_id;
    const char *device;          /* the active layer (a node name) */
    const char *base_node, *base;/* base by node or by file name (not both); neither: the
                                  * bottom of the chain */
    const char *top_node, *top;  /* top likewise; neither: the active layer */
    const char *backing_file;    /* the name the overlay stores; NULL: base's filename */
    int64_t speed;
    vd_job_on_error on_error;
    bool auto_finalize, auto_dismiss;
} vd_commit_opts;
int vd_commit_start(vd_engine *e, const vd_commit_opts *o, vd_error **errp);

/* block-stream's arguments: what device's backing layers above base hold is copied into
 * device (where it has nothing of its own) while it is in use; then device's backing
 * becomes base (none when NULL), named backing_file or base's filename. bottom instead of
 * base: the lowest layer streamed. */
typedef struct vd_stream_opts {
    const char *job_id;
    const char *device;
    const char *base_node, *base, *bottom;
    const char *backing_file;
    int64_t speed;
    vd_job_on_error on_error;
    bool auto_finalize, auto_dismiss;
} vd_stream_opts;
int vd_stream_start(vd_engine *e, const vd_stream_opts *o, vd_error **errp);

#endif
