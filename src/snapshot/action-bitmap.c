/* The bitmap actions of a transaction (QMP's block-dirty-bitmap-* inside `transaction`):
 * the change is made in prepare, while the disks are drained, and undone by abort. */
#include "block/dirty-bitmap.h"
#include "snapshot/actions.h"

static int bitmap_prepare(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    return vd_bitmap_action_prepare(s->act, &s->bitmap_undo, errp);
}

static int bitmap_abort(vd_txn_action *a, vd_error **errp)
{
    (void)errp;
    vd_snap_action *s = a->opaque;
    vd_bitmap_action_abort(s->bitmap_undo);
    return 0;
}

static void bitmap_clean(vd_txn_action *a)
{
    vd_snap_action *s = a->opaque;
    vd_bitmap_action_clean(s->bitmap_undo);
    s->bitmap_undo = NULL;
}

static const vd_txn_ops bitmap_ops = {
    .prepare = bitmap_prepare,
    .abort = bitmap_abort,
    .clean = bitmap_clean,
};

void vd_snap_action_bitmap(vd_txn_action *a, vd_snap_action *s)
{
    a->ops = &bitmap_ops;
    a->disk = s->act->disk;
    a->label = "";
    a->opaque = s;
}
