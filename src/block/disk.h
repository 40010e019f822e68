/* The disk handle behind the public vd_disk type, shared by disk.c (the public API) and
 * the code that changes which node a handle points at (external snapshots, src/snapshot/). */
#ifndef VD_DISK_H
#define VD_DISK_H

#include <stdbool.h>

#include "block/block.h"

struct vd_disk {
    vd_engine *engine;
    vd_node *node;          /* top of the graph this handle reads and writes */
    bool owns_node;         /* false for the handles vd_disk_backing() hands out */
    struct vd_disk *backing;
};

#endif
