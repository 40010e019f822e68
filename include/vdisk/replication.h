/* Block replication (QEMU's COLO disk replication): `replication` nodes in the engine's
 * graph, driven all together as QEMU drives them. A primary node forwards the writes of
 * a quorum's second child to the secondary host (an NBD client below it); a secondary
 * node sits over the active disk, whose backing is the hidden disk, whose backing is the
 * secondary disk the primary's writes land on. While replication runs, old data of the
 * secondary disk is copied into the hidden disk before a primary write changes it, so
 * the secondary's top reads the state of the last checkpoint plus its own writes.
 *
 * Each operation is applied to every replication node of the engine, newest first, and
 * stops at the first error (QEMU's replication_*_all). */
#ifndef VDISK_REPLICATION_H
#define VDISK_REPLICATION_H

#include <stdbool.h>

#include "vdisk/vdisk.h"

/* QEMU's ReplicationMode values (its messages print them as numbers). */
typedef enum vd_replication_mode {
    VD_REPLICATION_PRIMARY = 0,
    VD_REPLICATION_SECONDARY = 1,
} vd_replication_mode;

/* Starts replication on every node in the given mode. A secondary node checks its graph
 * (active -> hidden -> secondary disk, equal sizes, a user of the secondary disk, top-id
 * naming a root above it), starts copy-before-write from the secondary disk into the
 * hidden disk and empties both buffers. Nodes already failed over are left alone. */
int vd_replication_start_all(vd_engine *e, vd_replication_mode mode, vd_error **errp);

/* A checkpoint: a secondary node empties its active and hidden disks, with the node's
 * I/O and the secondary disk's writers held still, and copies again from now on. A
 * primary node has nothing to do. */
int vd_replication_do_checkpoint_all(vd_engine *e, vd_error **errp);

/* Fails ("Block replication is not running", "I/O error occurred") if a node is not
 * started or had an error (a forwarded write, a copy, a checkpoint, a failover). */
int vd_replication_get_error_all(vd_engine *e, vd_error **errp);

/* Stops replication. A secondary node with failover commits its active and hidden disks
 * into the secondary disk while its I/O goes on, then reads and writes the secondary
 * disk alone; it returns once that is done. Without failover it empties the buffers and
 * keeps them. */
int vd_replication_stop_all(vd_engine *e, bool failover, vd_error **errp);

#endif
