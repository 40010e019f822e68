/* The job core inside libvdisk (the public side is vdisk/job.h): the job object a driver
 * (mirror.c) embeds, its state machine, and what a driver's run loop calls — pause points,
 * sleeps that verbs interrupt, the rate limit, progress, the error policies. One lock per
 * job guards all of it, the driver's own state included, and one condition variable wakes
 * whoever waits on the job (its run loop, its workers, a verb). */
#ifndef VD_JOBS_JOB_H
#define VD_JOBS_JOB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/engine.h"
#include "vdisk/job.h"

typedef struct vd_job vd_job;

typedef struct vd_job_driver {
    const char *type;                    /* QEMU's JobType name */
    /* query-block-jobs shows it paused while pending (QEMU's mirror: its drained end
     * holds a pause); other jobs are not. */
    bool paused_when_pending;
    /* The work, on the job's thread, called without the lock. 0 when done (or when a
     * soft cancel ended it), -ECANCELED when cancelled, else -errno with job->error set
     * or left to strerror. */
    int (*run)(vd_job *job);
    /* job-complete was accepted (lock held): the run loop should finish. */
    void (*complete)(vd_job *job);
    /* At finalize, after a run that succeeded (no lock): the change the job was for (a
     * mirror's pivot). A failure turns into an abort. */
    int (*prepare)(vd_job *job, vd_error **errp);
    /* After a failed or cancelled run, or a failed prepare (no lock); optional. */
    void (*abort)(vd_job *job);
    /* Last, either way (no lock): releases nodes and claims. Then free. */
    void (*clean)(vd_job *job);
    void (*free)(vd_job *job);
    /* Optional, lock held: the job's own bitmap on the named node, if it keeps one. */
    bool (*bitmap_info)(vd_job *job, const char *node, vd_bitmap_info *info);
} vd_job_driver;

struct vd_job {
    vd_engine *engine;
    const vd_job_driver *drv;
    char *id;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    vd_job_status status;
    bool auto_finalize, auto_dismiss;
    /* Pausing: requests (verbs and error stops) against pause points. */
    unsigned pause_count;
    bool user_paused;
    bool parked;                         /* waiting in a pause point */
    bool yielded;                        /* the thread waited once (or its run ended) */
    unsigned callers_waiting;            /* a start or verb waits on the job: its events
                                          * are that call's (vd_event.synchronous) */
    vd_job_status parked_from;
    bool busy;
    /* Cancelling: a soft cancel (of a ready job) is cancelled without force_cancel. */
    bool cancelled, force_cancel;
    bool finalize_requested, shutting_down;
    bool unlisted;                       /* taken out of the engine's list */
    char *error;                         /* the failure, once it failed */
    const char *io_status;               /* "ok", "failed", "nospace" */
    uint64_t progress_current, progress_total;
    uint64_t speed;
    uint64_t rate_next_ns;               /* the speed limit: when the next send may go */
    pthread_t thread;
    vd_job *next;                        /* in the engine's list, oldest first */
    /* A grouped transaction's jobs (completion-mode grouped): they finish together, or a
     * failure cancels the rest. */
    struct vd_job_group *group;
    vd_job *group_next;
};

/* A group of jobs of one transaction. Made with one reference, which the transaction
 * drops once every job joined (vd_job_group_unref); each member holds one too. */
typedef struct vd_job_group vd_job_group;
vd_job_group *vd_job_group_new(void);
void vd_job_group_join(vd_job_group *g, vd_job *job);
void vd_job_group_unref(vd_job_group *g);
/* A created job its transaction gave up: it goes created -> aborting -> concluded -> null
 * on its own thread (its clean-up may wait for the disks the transaction holds), with no
 * job event but the status changes. */
void vd_job_abandon(vd_job *job);

/* Fills the core of a new job (status created, with its event) and puts it on the
 * engine's list: -EINVAL for an id QEMU refuses, -EEXIST for one in use. */
int vd_job_create(vd_engine *e, vd_job *job, const vd_job_driver *drv, const char *id,
                  bool auto_finalize, bool auto_dismiss, uint64_t speed, vd_error **errp);
/* Starts its thread (status running). On failure the job is taken off the list. */
int vd_job_start(vd_job *job, vd_error **errp);
/* Takes a created job off the list again and frees it (a start that failed half-way). */
void vd_job_discard(vd_job *job);

/* ---- for the drivers' run loops; all with the lock held ------------------------------ */

/* Cancelled outright (force, or any cancel before ready)? */
bool vd_job_is_cancelled(const vd_job *job);
/* Any cancel at all, a soft one of a ready job included? */
bool vd_job_cancel_requested(const vd_job *job);
/* Pauses here if asked to, until resumed or cancelled (running -> paused -> running,
 * ready -> standby -> ready). */
void vd_job_pause_point(vd_job *job);
bool vd_job_pause_pending(const vd_job *job);
/* Waits on the job's condition up to ns (0: until woken); a verb wakes it. A sleep is a
 * wait with nothing to do (the job is not busy meanwhile, as query-block-jobs shows). */
void vd_job_wait(vd_job *job, uint64_t ns);
void vd_job_sleep(vd_job *job, uint64_t ns);
/* running -> ready, with BLOCK_JOB_READY. */
void vd_job_ready(vd_job *job);
/* The speed limit: charge what was sent; how long to wait before the next send (0: now). */
void vd_job_rate_charge(vd_job *job, uint64_t bytes);
uint64_t vd_job_rate_delay(const vd_job *job);
void vd_job_progress(vd_job *job, uint64_t done, uint64_t remaining);

/* What a failed request makes the job do, under policy (BLOCK_JOB_ERROR is sent): for
 * STOP the job is paused as by job-pause, with io-status failed (nospace for ENOSPC). */
typedef enum { VD_JOB_ACT_REPORT, VD_JOB_ACT_IGNORE, VD_JOB_ACT_STOP } vd_job_action;
vd_job_action vd_job_error_action(vd_job *job, vd_job_on_error policy, bool is_read,
                                  int err);

uint64_t vd_job_now_ns(void);

/* A backup job made and checked but not started (a transaction's prepare): its filter
 * already keeps the point in time. Then vd_job_start, or vd_job_abandon. */
int vd_backup_prepare(vd_engine *e, const vd_backup_opts *o, vd_job_group *group,
                      vd_job **out, vd_error **errp);
/* A pause held by the caller, not a user's (a transaction's drained section: the job
 * it starts pauses at its first pause point and goes on at the release). */
void vd_job_hold(vd_job *job);
void vd_job_release(vd_job *job);

#endif
