/* The engine's graph of named nodes, as a storage daemon keeps it: nodes added from
 * options trees of QEMU's blockdev shape, looked up by name, shared as children (a
 * "file" or "backing" given as a node name), used through handles that claim permissions
 * (QEMU's consistent-read, write, write-unchanged, resize), and deleted when nothing uses
 * them any more. Conflicting uses are refused with QEMU's messages. */
#ifndef VDISK_GRAPH_H
#define VDISK_GRAPH_H

#include <stdbool.h>
#include <stddef.h>

#include "vdisk/tree.h"
#include "vdisk/vdisk.h"

/* Permissions, as QEMU names them: what a user of a node does (perm) and lets others do
 * (shared). */
#define VD_PERM_CONSISTENT_READ 0x1u
#define VD_PERM_WRITE 0x2u
#define VD_PERM_WRITE_UNCHANGED 0x4u
#define VD_PERM_RESIZE 0x8u
#define VD_PERM_ALL 0xfu

/* Opens the graph the options describe (opts: consumed) and adds every node in it to the
 * engine's registry: under its "node-name", or an automatic "#blockNNN". The root must be
 * named; the registry holds it until vd_blockdev_del. A child given as a string is the
 * named node of that name, shared. flags: VD_OPEN_* defaults the options may override
 * (a storage daemon passes VD_OPEN_RDWR). */
int vd_blockdev_add(vd_engine *e, vd_tree *opts, unsigned flags, vd_error **errp);

/* Removes a node added by vd_blockdev_add, refused (QEMU's messages) while a handle claims
 * it, another node uses it, or it was not added by vd_blockdev_add itself. */
int vd_blockdev_del(vd_engine *e, const char *node_name, vd_error **errp);

bool vd_blockdev_exists(vd_engine *e, const char *node_name);

/* QMP x-blockdev-change: gives the parent node (a quorum) the named node as a new child
 * (node given), or takes away its child in role `child` ("children.1"); exactly one of
 * child and node. The new child must have no parent; a removed child goes away unless
 * something else holds it (vd_blockdev_add, another parent). QEMU's messages. */
int vd_blockdev_change(vd_engine *e, const char *parent, const char *child, const char *node,
                       vd_error **errp);

/* A handle on a named node; it keeps the node open until vd_close. It claims nothing
 * until vd_disk_claim. "Cannot find device='NAME' nor node-name='NAME'" if there is
 * none. */
int vd_blockdev_open(vd_engine *e, const char *node_name, vd_disk **out, vd_error **errp);

/* The name of the node a handle reads and writes (it changes with an external snapshot),
 * or NULL for a handle on a graph outside the registry. Valid until the graph changes. */
const char *vd_disk_node_name(const vd_disk *d);

/* Claims permissions on the handle's node for one user of the handle (an export, a job):
 * refused with QEMU's "Permission conflict on node ..." message when another use of the
 * node does not share what this one needs, or needs what this one does not share. The
 * claim moves with the handle when its node is replaced. */
typedef struct vd_perm_claim vd_perm_claim;
int vd_disk_claim(vd_disk *d, unsigned perm, unsigned shared, vd_perm_claim **out,
                  vd_error **errp);
void vd_disk_unclaim(vd_disk *d, vd_perm_claim *c);

/* One registered node, as query-named-block-nodes shows it. */
typedef struct vd_blockdev_info {
    char *node_name;
    char *driver;
    char *filename;
    bool read_only, direct, no_flush;
    bool added;              /* by vd_blockdev_add (QEMU: owned by the monitor) */
    char *file_child;        /* node names of the children, or NULL */
    char *backing_child;
} vd_blockdev_info;

/* Every registered node, newest first (as QEMU lists them). */
int vd_blockdev_list(vd_engine *e, vd_blockdev_info **out, size_t *nb);
void vd_blockdev_list_free(vd_blockdev_info *list, size_t nb);

#endif
