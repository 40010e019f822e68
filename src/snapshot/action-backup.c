/* The backup action of a transaction (QMP's blockdev-backup inside `transaction`, and
 * blockdev-backup itself, which QEMU runs as a transaction of one): the job and its
 * filter are made in prepare, while every disk of the transaction is held still, so all
 * the backups of one transaction share one point in time; commit starts them. A job
 * that must go again leaves on its own thread, since its filter's removal waits for the
 * disks the transaction still holds. */
#include <errno.h>
#include <stdlib.h>

#include "jobs/job.h"
#include "util/common.h"
#include "snapshot/actions.h"

static int backup_prepare(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    return vd_backup_prepare(s->act->engine, s->act->backup, s->group, &s->job, errp);
}

static int backup_commit(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    /* Held until the transaction is over, as QEMU's drained section holds it. */
    vd_job_hold(s->job);
    int r = vd_job_start(s->job, errp);
    s->started = r == 0;
    if (r < 0) {
        vd_job_release(s->job);
    }
    return r;
}

static int backup_abort(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    if (s->started) {
        /* A later action's commit failed: the running job is cancelled outright. */
        char *id = vd_xstrdup(s->job->id);
        s->started = false;
        vd_job_release(s->job);
        int r = vd_job_cancel(s->act->engine, id, true, errp);
        free(id);
        s->job = NULL;
        return r == -ENOENT ? 0 : r;
    }
    vd_job_abandon(s->job);
    s->job = NULL;
    return 0;
}

static void backup_clean(vd_txn_action *a)
{
    vd_snap_action *s = a->opaque;
    if (s->started) {
        vd_job_release(s->job);
    }
}

static const vd_txn_ops backup_ops = {
    .prepare = backup_prepare,
    .commit = backup_commit,
    .abort = backup_abort,
    .clean = backup_clean,
};

void vd_snap_action_backup(vd_txn_action *a, vd_snap_action *s)
{
    a->ops = &backup_ops;
    a->disk = s->act->disk;
    a->label = "";
    a->opaque = s;
}
