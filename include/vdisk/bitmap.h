/* Dirty bitmaps: which parts of a node were written since a point in time, at a chosen
 * granularity. A bitmap belongs to a named node of the engine's graph (vdisk/graph.h) and
 * records every write, write-zeroes and discard that passes that node, failed ones
 * included, while it is enabled. The operations and their refusals are QEMU's
 * block-dirty-bitmap-* commands, with QEMU's messages. An NBD export or a job that reads a
 * bitmap acquires it: it is then busy, and no command may change it. */
#ifndef VDISK_BITMAP_H
#define VDISK_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

/* Names are at most this long (QEMU's limit). */
#define VD_BITMAP_MAX_NAME 1023

typedef struct vd_bitmap_add_opts {
    uint64_t granularity;   /* a power of two, 512 B to 2 GiB; 0: from the node's cluster
                             * size, within 4-64 KiB (64 KiB without clusters), as QEMU */
    bool persistent;        /* stored in the image (a format that can) */
    bool disabled;          /* starts not recording */
} vd_bitmap_add_opts;

int vd_bitmap_add(vd_engine *e, const char *node, const char *name,
                  const vd_bitmap_add_opts *opts, vd_error **errp);
int vd_bitmap_remove(vd_engine *e, const char *node, const char *name, vd_error **errp);
/* Marks every granule clean. */
int vd_bitmap_clear(vd_engine *e, const char *node, const char *name, vd_error **errp);
int vd_bitmap_enable(vd_engine *e, const char *node, const char *name, vd_error **errp);
int vd_bitmap_disable(vd_engine *e, const char *node, const char *name, vd_error **errp);

/* A bitmap named in a merge: on `node`, or on the target's node when node is NULL. */
typedef struct vd_bitmap_ref {
    const char *node;
    const char *name;
} vd_bitmap_ref;

/* target |= every source (the target is not cleared first). The sizes must match; the
 * granularities may differ. On failure the target is unchanged. */
int vd_bitmap_merge(vd_engine *e, const char *node, const char *target,
                    const vd_bitmap_ref *sources, size_t nb_sources, vd_error **errp);

/* A bitmap as query-named-block-nodes shows it (BlockDirtyInfo). */
typedef struct vd_bitmap_info {
    char *name;
    uint64_t count;         /* dirty bytes: dirty granules times the granularity */
    uint64_t granularity;
    bool recording, busy, persistent, inconsistent;
} vd_bitmap_info;

/* The node's bitmaps, newest first (as QEMU lists them); none is not an error. */
int vd_bitmap_list(vd_engine *e, const char *node, vd_bitmap_info **out, size_t *nb,
                   vd_error **errp);
void vd_bitmap_list_free(vd_bitmap_info *list, size_t nb);

/* The same on the node a handle reads and writes (a tool's image, opened with vd_open):
 * qemu-img bitmap's verbs. A merge's source is bitmap `source` of src (NULL: d). */
int vd_disk_bitmap_add(vd_disk *d, const char *name, const vd_bitmap_add_opts *opts,
                       vd_error **errp);
int vd_disk_bitmap_remove(vd_disk *d, const char *name, vd_error **errp);
int vd_disk_bitmap_clear(vd_disk *d, const char *name, vd_error **errp);
int vd_disk_bitmap_enable(vd_disk *d, const char *name, bool on, vd_error **errp);
int vd_disk_bitmap_merge(vd_disk *d, const char *target, vd_disk *src, const char *source,
                         vd_error **errp);
int vd_disk_bitmap_list(vd_disk *d, vd_bitmap_info **out, size_t *nb, vd_error **errp);

/* ---- users of a bitmap's contents (NBD exports, jobs) -------------------------------- */

typedef struct vd_dirty_bitmap vd_dirty_bitmap;

/* Acquires bitmap `name` for a reader of the handle's data, making it busy until
 * vd_bitmap_release: looked for on `node` if given, else on the handle's node and down
 * its backing chain. Refused if busy or inconsistent, and if it is enabled on a writable
 * node while the reader is read-only (its contents could change under the reader). */
int vd_bitmap_acquire(vd_disk *d, const char *node, const char *name, bool read_only,
                      vd_dirty_bitmap **out, vd_error **errp);
void vd_bitmap_release(vd_dirty_bitmap *b);
const char *vd_dirty_bitmap_name(const vd_dirty_bitmap *b);
/* The first dirty run in [off, end): its start and length; false if there is none. */
bool vd_dirty_bitmap_next_dirty_area(vd_dirty_bitmap *b, uint64_t off, uint64_t end,
                                     uint64_t *start, uint64_t *len);

#endif
