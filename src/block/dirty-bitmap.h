/* Dirty bitmaps inside libvdisk (the public side is vdisk/bitmap.h): the bitmap object a
 * node holds, and the steps a transaction runs for the bitmap actions. */
#ifndef VD_DIRTY_BITMAP_H
#define VD_DIRTY_BITMAP_H

#include "block/block.h"
#include "util/hbitmap.h"
#include "vdisk/bitmap.h"
#include "vdisk/snapshot.h"

/* Under its node's bitmap_lock, all of it. */
struct vd_dirty_bitmap {
    vd_node *node;
    char *name;
    vd_hbitmap *hb;
    bool enabled;
    bool persistent;
    bool inconsistent;       /* loaded from an image that was not closed cleanly */
    unsigned busy;           /* readers that acquired it (NBD exports, jobs) */
    vd_dirty_bitmap *next;
};

/* For format drivers at open: a bitmap the image holds, put on n's list (clean; the
 * driver fills b->hb unless it is inconsistent); NULL without the memory. */
vd_dirty_bitmap *vd_node_bitmap_load(vd_node *n, const char *name, uint64_t granularity,
                                     bool enabled, bool inconsistent);

/* A bitmap action of a transaction: prepare makes the change (the disks are drained),
 * abort undoes it, clean frees what the undo kept (and, for a removal that stood, the
 * bitmap). */
typedef struct vd_bitmap_undo vd_bitmap_undo;
int vd_bitmap_action_prepare(const vd_action *a, vd_bitmap_undo **out, vd_error **errp);
void vd_bitmap_action_abort(vd_bitmap_undo *u);
void vd_bitmap_action_clean(vd_bitmap_undo *u);

#endif
