/* Backing-chain helpers that commit and stream share: finding layers by node or file name,
 * and dropping layers out of a chain (the overlay's image and node both then name the new
 * backing). */
#ifndef VD_JOBS_CHAIN_H
#define VD_JOBS_CHAIN_H

#include "block/block.h"
#include "block/disk.h"

#define CHAIN_MAX_USERS 64

/* The depth of n in top's backing chain (top: 0), or -1 if it is not in it. */
int chain_depth(vd_node *top, const vd_node *n);
/* The layer of top's chain (below top) whose file is name, as QEMU's
 * bdrv_find_backing_image matches it; NULL if none. */
vd_node *chain_find_file(vd_node *top, const char *name);
/* The bottom layer of top's chain, or NULL when top has no backing. */
vd_node *chain_bottom(vd_node *top);
/* Makes nb (or none) overlay's backing: the image's backing name becomes name (with nb's
 * format), opening the overlay read-write for the write if it is read-only, then the node
 * links change. The caller has drained overlay's readers. */
int chain_set_backing(vd_node *overlay, vd_node *nb, const char *name, vd_error **errp);

#endif
