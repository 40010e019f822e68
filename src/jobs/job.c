/* The job core: QEMU's job state machine, its verbs and events, a thread per job, pause
 * points, the rate limit and the error policies. A job's thread runs it from start to its
 * end in the null state: the work, then finalize (at once, or when job-finalize comes),
 * then dismiss (at once, or when job-dismiss comes); so no other thread ever touches a
 * job's nodes on its behalf. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobs/job.h"
#include "util/common.h"

static const char *const status_names[] = {
    [VD_JOB_UNDEFINED] = "undefined", [VD_JOB_CREATED] = "created",
    [VD_JOB_RUNNING] = "running",     [VD_JOB_PAUSED] = "paused",
    [VD_JOB_READY] = "ready",         [VD_JOB_STANDBY] = "standby",
    [VD_JOB_WAITING] = "waiting",     [VD_JOB_PENDING] = "pending",
    [VD_JOB_ABORTING] = "aborting",   [VD_JOB_CONCLUDED] = "concluded",
    [VD_JOB_NULL] = "null",
};

const char *vd_job_status_name(vd_job_status s)
{
    return s <= VD_JOB_NULL ? status_names[s] : "undefined";
}

int vd_job_on_error_parse(const char *s, vd_job_on_error *out)
{
    static const char *const names[] = {"report", "ignore", "enospc", "stop", "auto"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcmp(s, names[i])) {
            *out = (vd_job_on_error)i;
            return 0;
        }
    }
    return -EINVAL;
}

uint64_t vd_job_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- states and verbs (QEMU's tables) ------------------------------------------------- */

#define S(x) (1u << VD_JOB_##x)
static const unsigned transitions[] = {
    [VD_JOB_UNDEFINED] = S(CREATED),
    [VD_JOB_CREATED] = S(RUNNING) | S(ABORTING) | S(NULL),
    [VD_JOB_RUNNING] = S(PAUSED) | S(READY) | S(WAITING) | S(ABORTING),
    [VD_JOB_PAUSED] = S(RUNNING),
    [VD_JOB_READY] = S(STANDBY) | S(WAITING) | S(ABORTING),
    [VD_JOB_STANDBY] = S(READY),
    [VD_JOB_WAITING] = S(PENDING) | S(ABORTING),
    [VD_JOB_PENDING] = S(ABORTING) | S(CONCLUDED),
    [VD_JOB_ABORTING] = S(ABORTING) | S(CONCLUDED),
    [VD_JOB_CONCLUDED] = S(NULL),
    [VD_JOB_NULL] = 0,
};

typedef enum { VERB_CANCEL, VERB_PAUSE, VERB_RESUME, VERB_SET_SPEED, VERB_COMPLETE,
               VERB_FINALIZE, VERB_DISMISS } job_verb;
static const char *const verb_names[] = {"cancel", "pause", "resume", "set-speed",
                                         "complete", "finalize", "dismiss"};
static const unsigned verbs[] = {
    [VERB_CANCEL] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) | S(STANDBY) |
                    S(WAITING) | S(PENDING),
    [VERB_PAUSE] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) | S(STANDBY),
    [VERB_RESUME] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) | S(STANDBY),
    [VERB_SET_SPEED] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) | S(STANDBY),
    [VERB_COMPLETE] = S(READY) | S(STANDBY),
    [VERB_FINALIZE] = S(PENDING),
    [VERB_DISMISS] = S(CONCLUDED),
};
#undef S

static void emit(vd_job *job, vd_event *ev)
{
    ev->job_id = job->id;
    ev->job_type = job->drv->type;
    ev->job_status = vd_job_status_name(job->status);
    ev->job_len = job->progress_total;
    ev->job_offset = job->progress_current;
    ev->job_speed = job->speed;
    ev->offset = ev->size = -1;
    ev->synchronous = job->callers_waiting > 0;
    vd_engine_emit(job->engine, ev);
}

static void emit_type(vd_job *job, const char *type)
{
    vd_event ev = {.type = type};
    emit(job, &ev);
}

/* A move the tables do not allow is a bug in this file or a driver. */
static void set_status(vd_job *job, vd_job_status to)
{
    if (!(transitions[job->status] & (1u << to))) {
        fprintf(stderr, "vdisk: job '%s': no transition from %s to %s\n", job->id,
                vd_job_status_name(job->status), vd_job_status_name(to));
        abort();
    }
    job->status = to;
    pthread_cond_broadcast(&job->cond);
    emit_type(job, "JOB_STATUS_CHANGE");
}

static int verb_check(vd_job *job, job_verb v, vd_error **errp)
{
    if (verbs[v] & (1u << job->status)) {
        return 0;
    }
    return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Job '%s' in state '%s' cannot accept "
                        "command verb '%s'", job->id, vd_job_status_name(job->status),
                        verb_names[v]);
}

/* ---- the list ------------------------------------------------------------------------- */

static vd_job *find_locked(vd_engine *e, const char *id)
{
    for (vd_job *j = e->jobs; j; j = j->next) {
        if (!strcmp(j->id, id)) {
            return j;
        }
    }
    return NULL;
}

static void unlist_locked(vd_job *job)
{
    vd_engine *e = job->engine;
    for (vd_job **p = &e->jobs; *p; p = &(*p)->next) {
        if (*p == job) {
            *p = job->next;
            break;
        }
    }
    job->unlisted = true;
}

int vd_job_create(vd_engine *e, vd_job *job, const vd_job_driver *drv, const char *id,
                  bool auto_finalize, bool auto_dismiss, uint64_t speed, vd_error **errp)
{
    if (!vd_id_wellformed(id)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid job ID '%s'", id);
    }
    pthread_mutex_lock(&e->job_lock);
    if (find_locked(e, id)) {
        pthread_mutex_unlock(&e->job_lock);
        return vd_error_set(errp, VD_ERR_GENERIC, EEXIST, "Job ID '%s' already in use", id);
    }
    job->engine = e;
    job->drv = drv;
    job->id = vd_xstrdup(id);
    pthread_mutex_init(&job->lock, NULL);
    pthread_cond_init(&job->cond, NULL);
    job->auto_finalize = auto_finalize;
    job->auto_dismiss = auto_dismiss;
    job->io_status = "ok";
    job->speed = speed;
    job->busy = true;
    job->next = e->jobs;    /* newest first, as QEMU lists and cancels them */
    e->jobs = job;
    pthread_mutex_lock(&job->lock);
    set_status(job, VD_JOB_CREATED);
    pthread_mutex_unlock(&job->lock);
    pthread_mutex_unlock(&e->job_lock);
    return 0;
}

static void job_free(vd_job *job)
{
    pthread_mutex_destroy(&job->lock);
    pthread_cond_destroy(&job->cond);
    free(job->id);
    free(job->error);
    job->drv->free(job);
}

void vd_job_discard(vd_job *job)
{
    vd_engine *e = job->engine;
    pthread_mutex_lock(&job->lock);
    set_status(job, VD_JOB_NULL);
    pthread_mutex_unlock(&job->lock);
    pthread_mutex_lock(&e->job_lock);
    unlist_locked(job);
    pthread_mutex_unlock(&e->job_lock);
    job_free(job);
}

/* QEMU runs a new job's coroutine until it first yields before the command returns: the
 * starter waits for this thread's first wait likewise. */
static void yield_first(vd_job *job)
{
    if (!job->yielded) {
        job->yielded = true;
        job->callers_waiting--;
        pthread_cond_broadcast(&job->cond);
    }
}

/* ---- groups ----------------------------------------------------------------------------- */

struct vd_job_group {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned refs;
    vd_job *members;
    unsigned nb, finished;
    bool failed;
};

vd_job_group *vd_job_group_new(void)
{
    vd_job_group *g = calloc(1, sizeof(*g));
    if (!g) {
        abort();
    }
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->refs = 1;
    return g;
}

void vd_job_group_join(vd_job_group *g, vd_job *job)
{
    pthread_mutex_lock(&g->lock);
    g->refs++;
    g->nb++;
    job->group = g;
    job->group_next = g->members;
    g->members = job;
    pthread_mutex_unlock(&g->lock);
}

void vd_job_group_unref(vd_job_group *g)
{
    pthread_mutex_lock(&g->lock);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->lock);
    if (last) {
        pthread_mutex_destroy(&g->lock);
        pthread_cond_destroy(&g->cond);
        free(g);
    }
}

/* Leaves the group once its job is over (lock not held). */
static void group_leave(vd_job *job)
{
    vd_job_group *g = job->group;
    if (!g) {
        return;
    }
    pthread_mutex_lock(&g->lock);
    for (vd_job **p = &g->members; *p; p = &(*p)->group_next) {
        if (*p == job) {
            *p = job->group_next;
            break;
        }
    }
    pthread_mutex_unlock(&g->lock);
    job->group = NULL;
    vd_job_group_unref(g);
}

static void cancel_locked(vd_job *job, bool force);
static void unpark(vd_job *job);

/* The group's verdict on a job whose run ended with ret (job lock held, and dropped while
 * it waits for the others): a failure cancels the others; a success waits until every
 * member succeeded, or turns into a cancel when one failed. */
static int group_verdict(vd_job *job, int ret)
{
    vd_job_group *g = job->group;
    if (!g) {
        return ret;
    }
    pthread_mutex_unlock(&job->lock);
    pthread_mutex_lock(&g->lock);
    if (ret < 0) {
        if (!g->failed) {
            g->failed = true;
            for (vd_job *m = g->members; m; m = m->group_next) {
                if (m != job) {
                    pthread_mutex_lock(&m->lock);
                    cancel_locked(m, true);
                    pthread_mutex_unlock(&m->lock);
                }
            }
        }
    } else {
        g->finished++;
        while (g->finished < g->nb && !g->failed) {
            pthread_cond_wait(&g->cond, &g->lock);
        }
        if (g->failed) {
            ret = -ECANCELED;
        }
    }
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
    pthread_mutex_lock(&job->lock);
    return ret;
}

/* ---- the job's thread ---------------------------------------------------------------- */

static void fail_with(vd_job *job, int ret, vd_error *err)
{
    if (!job->error) {
        job->error = vd_xstrdup(err ? vd_error_msg(err) : strerror(-ret));
    }
}

static void *job_thread(void *arg)
{
    vd_job *job = arg;
    vd_engine *e = job->engine;
    int ret = job->drv->run(job);
    pthread_mutex_lock(&job->lock);
    yield_first(job);
    job->busy = false;
    if (ret == 0 && job->cancelled && job->force_cancel) {
        ret = -ECANCELED;
    }
    if (ret == 0 && job->group) {
        set_status(job, VD_JOB_WAITING);
    }
    ret = group_verdict(job, ret);
    if (ret == 0) {
        if (!job->group) {
            set_status(job, VD_JOB_WAITING);
        }
        set_status(job, VD_JOB_PENDING);
        if (!job->auto_finalize) {
            emit_type(job, "BLOCK_JOB_PENDING");
            while (!job->finalize_requested && !job->cancelled) {
                pthread_cond_wait(&job->cond, &job->lock);
            }
            if (job->cancelled) {
                ret = -ECANCELED;
            }
        }
    }
    if (ret == 0) {
        pthread_mutex_unlock(&job->lock);
        vd_error *err = NULL;
        ret = job->drv->prepare(job, &err);
        pthread_mutex_lock(&job->lock);
        if (ret < 0) {
            fail_with(job, ret, err);
        }
        vd_error_free(err);
    }
    if (ret < 0) {
        fail_with(job, ret, NULL);      /* a cancelled job shows "Operation canceled" */
        set_status(job, VD_JOB_ABORTING);
        if (job->drv->abort) {
            pthread_mutex_unlock(&job->lock);
            job->drv->abort(job);
            pthread_mutex_lock(&job->lock);
        }
    }
    pthread_mutex_unlock(&job->lock);
    job->drv->clean(job);
    pthread_mutex_lock(&job->lock);
    if (ret == -ECANCELED) {
        emit_type(job, "BLOCK_JOB_CANCELLED");
    } else {
        vd_event ev = {.type = "BLOCK_JOB_COMPLETED", .job_error = job->error};
        emit(job, &ev);
    }
    set_status(job, VD_JOB_CONCLUDED);
    /* A dismiss (or a finalize with auto-dismiss) takes the job to null itself. */
    while (!job->auto_dismiss && job->status != VD_JOB_NULL && !job->shutting_down) {
        pthread_cond_wait(&job->cond, &job->lock);
    }
    pthread_mutex_unlock(&job->lock);

    /* Null and off the list in one step, so no query sees a job in the null state. */
    pthread_mutex_lock(&e->job_lock);
    pthread_mutex_lock(&job->lock);
    if (job->status != VD_JOB_NULL) {
        set_status(job, VD_JOB_NULL);
    }
    pthread_mutex_unlock(&job->lock);
    if (!job->unlisted) {
        unlist_locked(job);
    }
    e->job_threads--;
    pthread_cond_broadcast(&e->job_cond);
    pthread_mutex_unlock(&e->job_lock);
    group_leave(job);
    job_free(job);
    return NULL;
}

void vd_job_hold(vd_job *job)
{
    pthread_mutex_lock(&job->lock);
    job->pause_count++;
    pthread_mutex_unlock(&job->lock);
}

void vd_job_release(vd_job *job)
{
    pthread_mutex_lock(&job->lock);
    job->pause_count--;
    unpark(job);
    pthread_cond_broadcast(&job->cond);
    pthread_mutex_unlock(&job->lock);
}

/* The clean-up of an abandoned job, on a thread of its own. */
static void *abandon_thread(void *arg)
{
    vd_job *job = arg;
    vd_engine *e = job->engine;
    if (job->drv->abort) {
        job->drv->abort(job);
    }
    job->drv->clean(job);
    group_leave(job);
    pthread_mutex_lock(&e->job_lock);
    e->job_threads--;
    pthread_cond_broadcast(&e->job_cond);
    pthread_mutex_unlock(&e->job_lock);
    job_free(job);
    return NULL;
}

void vd_job_abandon(vd_job *job)
{
    vd_engine *e = job->engine;
    /* Its end shows at once, as the caller's events (QEMU's are before the reply). */
    pthread_mutex_lock(&e->job_lock);
    pthread_mutex_lock(&job->lock);
    job->callers_waiting++;
    set_status(job, VD_JOB_ABORTING);
    set_status(job, VD_JOB_CONCLUDED);
    set_status(job, VD_JOB_NULL);
    job->callers_waiting--;
    pthread_mutex_unlock(&job->lock);
    unlist_locked(job);
    e->job_threads++;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&job->thread, &attr, abandon_thread, job);
    pthread_attr_destroy(&attr);
    pthread_mutex_unlock(&e->job_lock);
    if (r != 0) {
        abandon_thread(job);    /* no thread: here, which is safe when nothing holds its
                                 * disks */
    }
}

int vd_job_start(vd_job *job, vd_error **errp)
{
    vd_engine *e = job->engine;
    pthread_mutex_lock(&e->job_lock);
    pthread_mutex_lock(&job->lock);
    set_status(job, VD_JOB_RUNNING);
    job->callers_waiting++;     /* until the thread first yields */
    pthread_mutex_unlock(&job->lock);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&job->thread, &attr, job_thread, job);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        pthread_mutex_unlock(&e->job_lock);
        job->callers_waiting--;
        return vd_error_set(errp, VD_ERR_GENERIC, r, "Could not start the job: %s",
                            strerror(r));
    }
    e->job_threads++;
    pthread_mutex_unlock(&e->job_lock);
    pthread_mutex_lock(&job->lock);
    while (!job->yielded) {
        pthread_cond_wait(&job->cond, &job->lock);
    }
    pthread_mutex_unlock(&job->lock);
    return 0;
}

/* ---- for the run loops ---------------------------------------------------------------- */

bool vd_job_is_cancelled(const vd_job *job)
{
    return job->cancelled && job->force_cancel;
}

bool vd_job_cancel_requested(const vd_job *job)
{
    return job->cancelled;
}

bool vd_job_pause_pending(const vd_job *job)
{
    return job->pause_count > 0 && !vd_job_is_cancelled(job);
}

void vd_job_sleep(vd_job *job, uint64_t ns)
{
    job->busy = false;
    vd_job_wait(job, ns);
    job->busy = true;
}

void vd_job_wait(vd_job *job, uint64_t ns)
{
    yield_first(job);
    if (ns == 0) {
        pthread_cond_wait(&job->cond, &job->lock);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t t = (uint64_t)ts.tv_nsec + ns;
        ts.tv_sec += (time_t)(t / 1000000000u);
        ts.tv_nsec = (long)(t % 1000000000u);
        pthread_cond_timedwait(&job->cond, &job->lock, &ts);
    }
}

/* The job parks here; whoever ends the pause (a resume, a cancel) moves it back to
 * running or ready at once, so that event comes before that command's reply, as in QEMU. */
void vd_job_pause_point(vd_job *job)
{
    if (!vd_job_pause_pending(job)) {
        return;
    }
    /* Paused, then yielded: a job held from its start shows paused to its starter. */
    job->parked_from = job->status;
    set_status(job, job->status == VD_JOB_READY ? VD_JOB_STANDBY : VD_JOB_PAUSED);
    yield_first(job);
    job->parked = true;
    job->busy = false;
    while (job->parked) {
        pthread_cond_wait(&job->cond, &job->lock);
    }
    job->busy = true;
}

static void unpark(vd_job *job)
{
    if (job->parked && !vd_job_pause_pending(job)) {
        job->parked = false;
        set_status(job, job->parked_from);
    }
}

void vd_job_ready(vd_job *job)
{
    set_status(job, VD_JOB_READY);
    emit_type(job, "BLOCK_JOB_READY");
}

/* The speed limit as a schedule: each byte sent moves the next allowed start by
 * 1/speed s; up to one 100 ms slice of sending may be owed at once (QEMU's slice quota). */
#define RATE_SLICE_NS 100000000u

void vd_job_rate_charge(vd_job *job, uint64_t bytes)
{
    if (job->speed == 0) {
        return;
    }
    uint64_t now = vd_job_now_ns();
    if (job->rate_next_ns + RATE_SLICE_NS < now) {
        job->rate_next_ns = now - RATE_SLICE_NS;
    }
    job->rate_next_ns += (uint64_t)((unsigned __int128)bytes * 1000000000u / job->speed);
}

uint64_t vd_job_rate_delay(const vd_job *job)
{
    uint64_t now = vd_job_now_ns();
    return job->speed && job->rate_next_ns > now ? job->rate_next_ns - now : 0;
}

void vd_job_progress(vd_job *job, uint64_t done, uint64_t remaining)
{
    job->progress_current += done;
    job->progress_total = job->progress_current + remaining;
}

vd_job_action vd_job_error_action(vd_job *job, vd_job_on_error policy, bool is_read,
                                  int err)
{
    vd_job_action act;
    switch (policy) {
    case VD_JOB_ON_ERROR_ENOSPC:
        act = err == ENOSPC ? VD_JOB_ACT_STOP : VD_JOB_ACT_REPORT;
        break;
    case VD_JOB_ON_ERROR_STOP:
        act = VD_JOB_ACT_STOP;
        break;
    case VD_JOB_ON_ERROR_IGNORE:
        act = VD_JOB_ACT_IGNORE;
        break;
    default:
        act = VD_JOB_ACT_REPORT;
    }
    static const char *const names[] = {"report", "ignore", "stop"};
    vd_event ev = {.type = "BLOCK_JOB_ERROR", .operation = is_read ? "read" : "write",
                   .action = names[act]};
    emit(job, &ev);
    if (act == VD_JOB_ACT_STOP && !job->user_paused) {
        job->user_paused = true;
        job->pause_count++;
        job->io_status = err == ENOSPC ? "nospace" : "failed";
        pthread_cond_broadcast(&job->cond);
    }
    return act;
}

/* ---- verbs ------------------------------------------------------------------------------ */

/* Runs fn on the job named id with both locks held. */
static int with_job(vd_engine *e, const char *id, job_verb verb,
                    int (*fn)(vd_job *, void *, vd_error **), void *arg, vd_error **errp)
{
    pthread_mutex_lock(&e->job_lock);
    vd_job *job = find_locked(e, id);
    if (!job) {
        pthread_mutex_unlock(&e->job_lock);
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Job not found");
    }
    pthread_mutex_lock(&job->lock);
    int ret = verb_check(job, verb, errp);
    if (ret == 0) {
        ret = fn(job, arg, errp);
    }
    bool gone = job->status == VD_JOB_NULL;
    pthread_mutex_unlock(&job->lock);
    if (gone) {
        unlist_locked(job);   /* its thread frees it once we let go of the list */
    }
    pthread_mutex_unlock(&e->job_lock);
    return ret;
}

static int do_pause(vd_job *job, void *arg, vd_error **errp)
{
    (void)arg;
    if (job->user_paused) {
        return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Job is already paused");
    }
    job->user_paused = true;
    job->pause_count++;
    pthread_cond_broadcast(&job->cond);
    return 0;
}

static void resume_locked(vd_job *job)
{
    job->user_paused = false;
    job->io_status = "ok";
    job->pause_count--;
    unpark(job);
    pthread_cond_broadcast(&job->cond);
}

static int do_resume(vd_job *job, void *arg, vd_error **errp)
{
    (void)arg;
    if (!job->user_paused) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Can't resume a job that was not "
                            "paused");
    }
    resume_locked(job);
    return 0;
}

static void cancel_locked(vd_job *job, bool force)
{
    /* Only a ready job can end softly; before that, any cancel is outright. */
    if (job->status != VD_JOB_READY && job->status != VD_JOB_STANDBY) {
        force = true;
    }
    if (job->user_paused) {
        resume_locked(job);
    }
    if (!job->cancelled) {
        job->force_cancel = force;
        job->cancelled = true;
    } else if (force) {
        job->force_cancel = true;
    }
    unpark(job);
    pthread_cond_broadcast(&job->cond);
}

/* concluded -> null, done by the verb (its caller takes the job off the list). */
static void dismiss_locked(vd_job *job)
{
    set_status(job, VD_JOB_NULL);
    pthread_cond_broadcast(&job->cond);
}

static int do_cancel(vd_job *job, void *arg, vd_error **errp)
{
    (void)errp;
    cancel_locked(job, *(bool *)arg);
    return 0;
}

static int do_complete(vd_job *job, void *arg, vd_error **errp)
{
    (void)arg;
    if (job->cancelled) {
        return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Job '%s' has been cancelled",
                            job->id);
    }
    job->drv->complete(job);
    pthread_cond_broadcast(&job->cond);
    return 0;
}

/* Finalize and dismiss are done when they return, as QEMU's are. */
static int do_finalize(vd_job *job, void *arg, vd_error **errp)
{
    (void)errp;
    (void)arg;
    job->finalize_requested = true;
    job->callers_waiting++;
    pthread_cond_broadcast(&job->cond);
    while (job->status != VD_JOB_CONCLUDED && job->status != VD_JOB_NULL) {
        pthread_cond_wait(&job->cond, &job->lock);
    }
    job->callers_waiting--;
    if (job->status == VD_JOB_CONCLUDED && job->auto_dismiss) {
        dismiss_locked(job);
    }
    return 0;
}

static int do_dismiss(vd_job *job, void *arg, vd_error **errp)
{
    (void)errp;
    (void)arg;
    dismiss_locked(job);
    return 0;
}

static int do_set_speed(vd_job *job, void *arg, vd_error **errp)
{
    (void)errp;
    job->speed = *(uint64_t *)arg;
    job->rate_next_ns = 0;
    pthread_cond_broadcast(&job->cond);
    return 0;
}

int vd_job_pause(vd_engine *e, const char *id, vd_error **errp)
{
    return with_job(e, id, VERB_PAUSE, do_pause, NULL, errp);
}

int vd_job_resume(vd_engine *e, const char *id, vd_error **errp)
{
    return with_job(e, id, VERB_RESUME, do_resume, NULL, errp);
}

int vd_job_cancel(vd_engine *e, const char *id, bool force, vd_error **errp)
{
    return with_job(e, id, VERB_CANCEL, do_cancel, &force, errp);
}

int vd_job_complete(vd_engine *e, const char *id, vd_error **errp)
{
    return with_job(e, id, VERB_COMPLETE, do_complete, NULL, errp);
}

int vd_job_finalize(vd_engine *e, const char *id, vd_error **errp)
{
    return with_job(e, id, VERB_FINALIZE, do_finalize, NULL, errp);
}

int vd_job_dismiss(vd_engine *e, const char *id, vd_error **errp)
{
    return with_job(e, id, VERB_DISMISS, do_dismiss, NULL, errp);
}

int vd_job_set_speed(vd_engine *e, const char *id, int64_t speed, vd_error **errp)
{
    if (speed < 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'speed' expects a "
                            "non-negative value");
    }
    uint64_t s = (uint64_t)speed;
    return with_job(e, id, VERB_SET_SPEED, do_set_speed, &s, errp);
}

bool vd_job_exists(vd_engine *e, const char *id)
{
    pthread_mutex_lock(&e->job_lock);
    bool found = find_locked(e, id) != NULL;
    pthread_mutex_unlock(&e->job_lock);
    return found;
}

void vd_jobs_cancel_all(vd_engine *e)
{
    pthread_mutex_lock(&e->job_lock);
    for (vd_job *j = e->jobs; j; j = j->next) {
        pthread_mutex_lock(&j->lock);
        j->shutting_down = true;
        j->callers_waiting++;    /* never taken back: the job ends while we wait */
        /* QEMU drains the graph first, which pauses and resumes a job that runs. */
        if ((j->status == VD_JOB_RUNNING || j->status == VD_JOB_READY) && !j->parked) {
            vd_job_status st = j->status;
            set_status(j, st == VD_JOB_READY ? VD_JOB_STANDBY : VD_JOB_PAUSED);
            set_status(j, st);
        }
        if (j->status != VD_JOB_CONCLUDED && j->status != VD_JOB_NULL) {
            cancel_locked(j, true);
        }
        pthread_cond_broadcast(&j->cond);
        pthread_mutex_unlock(&j->lock);
    }
    while (e->job_threads > 0) {
        pthread_cond_wait(&e->job_cond, &e->job_lock);
    }
    pthread_mutex_unlock(&e->job_lock);
}

int vd_job_node_bitmaps(vd_engine *e, const char *node, vd_bitmap_info **out, size_t *nb)
{
    size_t n = 0, cap = 4;
    vd_bitmap_info *list = calloc(cap, sizeof(*list));
    if (!list) {
        abort();
    }
    pthread_mutex_lock(&e->job_lock);
    for (vd_job *j = e->jobs; j; j = j->next) {
        if (!j->drv->bitmap_info) {
            continue;
        }
        if (n == cap && !(list = realloc(list, (cap *= 2) * sizeof(*list)))) {
            abort();
        }
        memset(&list[n], 0, sizeof(list[n]));
        pthread_mutex_lock(&j->lock);
        n += j->drv->bitmap_info(j, node, &list[n]);
        pthread_mutex_unlock(&j->lock);
    }
    pthread_mutex_unlock(&e->job_lock);
    *out = list;
    *nb = n;
    return 0;
}

int vd_job_list(vd_engine *e, vd_job_info **out, size_t *nb)
{
    pthread_mutex_lock(&e->job_lock);
    size_t n = 0;
    for (vd_job *j = e->jobs; j; j = j->next) {
        n++;
    }
    vd_job_info *list = calloc(n ? n : 1, sizeof(*list));
    if (!list) {
        abort();
    }
    size_t i = 0;
    for (vd_job *j = e->jobs; j; j = j->next) {
        pthread_mutex_lock(&j->lock);
        if (j->status == VD_JOB_CONCLUDED && j->auto_dismiss) {
            /* On its way to null: QEMU's main loop takes it there in the same step. */
            pthread_mutex_unlock(&j->lock);
            continue;
        }
        vd_job_info *x = &list[i++];
        x->id = vd_xstrdup(j->id);
        x->type = j->drv->type;
        x->status = j->status;
        x->current_progress = j->progress_current;
        x->total_progress = j->progress_total;
        x->speed = j->speed;
        x->busy = j->busy;
        x->paused = j->pause_count > 0 ||
                    (j->status == VD_JOB_PENDING && j->drv->paused_when_pending);
        x->ready = j->status == VD_JOB_READY || j->status == VD_JOB_STANDBY;
        x->auto_finalize = j->auto_finalize;
        x->auto_dismiss = j->auto_dismiss;
        x->io_status = j->io_status;
        x->error = vd_xstrdup(j->error);
        pthread_mutex_unlock(&j->lock);
    }
    pthread_mutex_unlock(&e->job_lock);
    *out = list;
    *nb = i;
    return 0;
}

void vd_job_list_free(vd_job_info *list, size_t nb)
{
    for (size_t i = 0; i < nb; i++) {
        free(list[i].id);
        free(list[i].error);
    }
    free(list);
}
