/* The copy-before-write state (QEMU's block-copy under its copy-before-write filter): which
 * clusters of the source still hold data the point-in-time copy needs, and the rule that
 * keeps it: before a write changes such a cluster, its old data goes to the target. The
 * filter node (drivers/cbw.c) owns it; a backup job copies the rest through it, and a
 * snapshot-access node reads the point in time through it.
 *
 * Crash ordering: the old data is written to the target before the guest's write is sent
 * to the source, and a flush of the source flushes the target first, so no overwrite
 * becomes durable before the data it replaced is durable in the target. */
#ifndef VD_BLOCK_CBW_H
#define VD_BLOCK_CBW_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"
#include "util/hbitmap.h"

typedef struct vd_cbw vd_cbw;

typedef enum vd_cbw_on_error {
    VD_CBW_BREAK_GUEST_WRITE,   /* the guest's write fails */
    VD_CBW_BREAK_SNAPSHOT,      /* the write goes on; the point in time is lost */
} vd_cbw_on_error;

typedef struct vd_cbw_params {
    vd_node *source, *target;   /* references handed to the filter */
    const char *node_name;      /* NULL: an automatic "#blockNNN" */
    /* Part of the point in time (NULL: all of it), at the filter's cluster size or finer;
     * copied. */
    const vd_hbitmap *bitmap;
    vd_cbw_on_error on_error;
    uint32_t timeout_s;         /* a copy taking longer fails (0: no limit) */
    bool compress;              /* the target gets compressed clusters */
} vd_cbw_params;

/* A registered filter node over p->source (which keeps its users: the rule holds for every
 * write to it, whoever sends it). */
int vd_cbw_new(vd_engine *e, const vd_cbw_params *p, vd_node **out, vd_error **errp);
/* The state of a copy-before-write node, or NULL for another node. */
vd_cbw *vd_cbw_of(vd_node *n);
uint64_t vd_cbw_cluster(const vd_cbw *c);
vd_node *vd_cbw_source(const vd_cbw *c);
vd_node *vd_cbw_target(const vd_cbw *c);

/* ---- for a backup job -------------------------------------------------------------------- */

/* What a job hears of the copies the filter makes for writes: progress, and failures. */
typedef struct vd_cbw_listener {
    void (*copied)(void *opaque, uint64_t len);
    void *opaque;
} vd_cbw_listener;
void vd_cbw_listen(vd_cbw *c, const vd_cbw_listener *l);

/* Takes clusters out of what is still to copy (a sync=top job's unallocated ones). */
void vd_cbw_drop(vd_cbw *c, uint64_t off, uint64_t len);
uint64_t vd_cbw_todo_bytes(vd_cbw *c);
/* Claims the next run still to copy at or after from (up to max bytes, whole clusters)
 * that no copy holds; false when none is free. *pending: some are held by copies now. */
bool vd_cbw_claim(vd_cbw *c, uint64_t from, uint64_t max, uint64_t *off, uint64_t *len,
                  bool *pending);
/* Copies a claimed run to the target; *is_read says which side failed. */
int vd_cbw_copy(vd_cbw *c, void *buf, uint64_t buflen, uint64_t off, uint64_t len,
                bool *is_read);
/* Ends a claim: copied (it is done) or not (still to copy). */
void vd_cbw_release(vd_cbw *c, uint64_t off, uint64_t len, bool copied);
/* A copy of what is still to copy (a bitmap-mode=always backup that failed keeps it). */
vd_hbitmap *vd_cbw_todo_copy(vd_cbw *c);
/* A new point in time: every cluster is to be copied again before it is overwritten, and
 * a broken snapshot is whole again (replication's checkpoint, after it emptied the
 * target). The caller holds every writer of the source still. */
void vd_cbw_rearm(vd_cbw *c);

/* ---- for snapshot-access ----------------------------------------------------------------- */

/* Reads the point in time (EINVAL outside it, EACCES once it broke). */
int vd_cbw_snapshot_read(vd_cbw *c, void *buf, uint64_t len, uint64_t off);
int vd_cbw_snapshot_status(vd_cbw *c, uint64_t off, uint64_t len, vd_node_status *st);
/* The reader is done with [off, off+len) for good: no longer kept (whole clusters). */
int vd_cbw_snapshot_discard(vd_cbw *c, uint64_t off, uint64_t len);

#endif
