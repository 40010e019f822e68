/* The snapshot actions a transaction is built from (private to src/snapshot/): internal
 * snapshot create and delete over the format driver's two-phase ops, and the external
 * snapshot that puts a new overlay under an open handle. */
#ifndef VD_SNAPSHOT_ACTIONS_H
#define VD_SNAPSHOT_ACTIONS_H

#include "block/disk.h"
#include "snapshot/transaction.h"

/* One action's state; the transaction's vd_txn_action points at it (opaque). The caller
 * owns it and the strings it refers to for the length of the run. */
typedef struct vd_snap_action {
    const vd_action *act;
    vd_snap_params params;      /* internal create: name and timestamp resolved */
    void *txn;                  /* the driver's handle between prepare and clean */
    vd_node *node;              /* the node the driver ops run on */
    /* External snapshot. */
    vd_node *overlay;           /* opened in prepare */
    vd_disk *old_top;           /* handle for the old top, linked into the chain at commit */
    unsigned old_flags;         /* old top's open flags before commit */
    unsigned old_file_flags;    /* and its file's, which turns read-only with it */
    bool swapped;
    /* Bitmap actions. */
    struct vd_bitmap_undo *bitmap_undo;
    /* Backup: the job made in prepare, and the group it joins. */
    struct vd_job *job;
    bool started;
    struct vd_job_group *group;
} vd_snap_action;

/* Fill a with the ops of an action on s->act->disk (a->opaque = s). */
void vd_snap_action_internal_create(vd_txn_action *a, vd_snap_action *s);
void vd_snap_action_internal_delete(vd_txn_action *a, vd_snap_action *s);
void vd_snap_action_external(vd_txn_action *a, vd_snap_action *s);
/* The bitmap kinds (action-bitmap.c); s->act->disk may be NULL. */
void vd_snap_action_bitmap(vd_txn_action *a, vd_snap_action *s);
/* The backup kind (action-backup.c). */
void vd_snap_action_backup(vd_txn_action *a, vd_snap_action *s);

/* Shared checks: the handle's top is writable (EACCES otherwise). */
int vd_snap_need_writable(vd_disk *d, const char *what, vd_error **errp);

#endif
