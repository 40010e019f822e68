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
    vd_hbitmap *successor;   /* frozen by a backup: what is written meanwhile goes here */
    vd_dirty_bitmap *next;
};

/* For format drivers at open: a bitmap the image holds, put on n's list (clean; the
 * driver fills b->hb unless it is inconsistent); NULL without the memory. */
vd_dirty_bitmap *vd_node_bitmap_load(vd_node *n, const char *name, uint64_t granularity,
                                     bool enabled, bool inconsistent);

/* A copy of the bits of bitmap `name` on node `node` (QEMU's refusals for an unknown node
 * or bitmap). */
int vd_bitmap_copy_bits(vd_engine *e, const char *node, const char *name, vd_hbitmap **out,
                        vd_error **errp);

/* A backup's use of a bitmap (QEMU's successor): the bitmap is busy and keeps its bits;
 * what is written meanwhile is recorded beside it (if it records). *bits gets a copy of
 * its bits. QEMU's refusals: not found, busy, inconsistent, and with check_writable a
 * read-only persistent one. */
int vd_bitmap_freeze(vd_node *n, const char *name, bool check_writable,
                     vd_dirty_bitmap **out, vd_hbitmap **bits, vd_error **errp);
/* The end of it: abdicate makes the bitmap what was written meanwhile (the backup holds
 * the rest); otherwise the two are merged. extra, if given, is merged in too. */
void vd_bitmap_thaw(vd_dirty_bitmap *b, bool abdicate, const vd_hbitmap *extra);

/* A bitmap action of a transaction: prepare makes the change (the disks are drained),
 * abort undoes it, clean frees what the undo kept (and, for a removal that stood, the
 * bitmap). */
typedef struct vd_bitmap_undo vd_bitmap_undo;
int vd_bitmap_action_prepare(const vd_action *a, vd_bitmap_undo **out, vd_error **errp);
void vd_bitmap_action_abort(vd_bitmap_undo *u);
void vd_bitmap_action_clean(vd_bitmap_undo *u);

#endif
