/* Internal snapshot create and delete as transaction actions: thin wrappers over the format
 * driver's two-phase snapshot ops (block.h), which do the real work. */
#include <errno.h>
#include <string.h>

#include "snapshot/actions.h"

int vd_snap_need_writable(vd_disk *d, const char *what, vd_error **errp)
{
    if (!(d->node->open_flags & VD_OPEN_RDWR)) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "Cannot %s: the image is opened "
                            "read-only", what);
    }
    return 0;
}

/* A driver that can prepare also commits and aborts (block.h); one that cannot, or does
 * half of it, has no internal snapshots as far as a transaction is concerned. */
static int need_snapshots(vd_node *n, const void *op, vd_error **errp)
{
    if (!op || !n->drv->snapshot_commit || !n->drv->snapshot_abort) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Block format '%s' does not "
                            "support internal snapshots", n->drv->name);
    }
    return 0;
}

static int create_prepare(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    vd_disk *d = s->act->disk;
    s->node = d->node;
    int ret = need_snapshots(s->node, (const void *)s->node->drv->snapshot_create_prepare,
                             errp);
    if (ret == 0) {
        ret = vd_snap_need_writable(d, "create a snapshot", errp);
    }
    if (ret == 0) {
        ret = s->node->drv->snapshot_create_prepare(s->node, &s->params, &s->txn, errp);
    }
    return ret;
}

static int delete_prepare(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    vd_disk *d = s->act->disk;
    s->node = d->node;
    int ret = need_snapshots(s->node, (const void *)s->node->drv->snapshot_delete_prepare,
                             errp);
    if (ret == 0) {
        ret = vd_snap_need_writable(d, "delete a snapshot", errp);
    }
    if (ret == 0) {
        ret = s->node->drv->snapshot_delete_prepare(s->node, s->act->id, s->act->name,
                                                    &s->txn, errp);
    }
    return ret;
}

static int snap_commit(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    return s->node->drv->snapshot_commit(s->node, s->txn, errp);
}

static int snap_abort(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    return s->node->drv->snapshot_abort(s->node, s->txn, errp);
}

static void snap_clean(vd_txn_action *a)
{
    vd_snap_action *s = a->opaque;
    if (s->node->drv->snapshot_clean) {
        s->node->drv->snapshot_clean(s->node, s->txn);
    }
    s->txn = NULL;
}

static const vd_txn_ops create_ops = {
    .prepare = create_prepare,
    .commit = snap_commit,
    .abort = snap_abort,
    .clean = snap_clean,
};

static const vd_txn_ops delete_ops = {
    .prepare = delete_prepare,
    .commit = snap_commit,
    .abort = snap_abort,
    .clean = snap_clean,
};

void vd_snap_action_internal_create(vd_txn_action *a, vd_snap_action *s)
{
    memset(a, 0, sizeof(*a));
    a->ops = &create_ops;
    a->disk = s->act->disk;
    a->label = a->disk->node->filename;
    a->irreversible = s->params.replace;  /* the old same-named snapshot goes at commit */
    a->opaque = s;
}

void vd_snap_action_internal_delete(vd_txn_action *a, vd_snap_action *s)
{
    memset(a, 0, sizeof(*a));
    a->ops = &delete_ops;
    a->disk = s->act->disk;
    a->label = a->disk->node->filename;
    a->opaque = s;
}
