/* Copying one image's contents into another, with worker threads: the engine behind
 * convert, commit and rebase, and the block jobs' copies. What the source reads as zeros
 * is written as zeros (or skipped when the target already reads zeros); the rest is read
 * through the source's backing chain and written, compressed if asked. */
#ifndef VDISK_COPY_H
#define VDISK_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

typedef struct vd_copy_opts {
    /* > 0: only what the source's layers above this chain depth allocate (0 is the
     * source itself): a commit into the layer at that depth, a rebase onto it. */
    int above_depth;
    bool target_is_zero;   /* the target reads zeros wherever nothing is written */
    bool unmap;            /* zeros may be unmapped in the target */
    bool compress;         /* the target gets compressed clusters */
    unsigned workers;      /* threads (0: 8) */
    uint64_t chunk;        /* bytes per request (0: 2 MiB) */
    /* Optional: hears bytes done out of the total after each piece; false stops the
     * copy (-ECANCELED). */
    bool (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
} vd_copy_opts;

/* Copies [off, off+len) of src into dst at the same offsets. The range must lie within
 * both; dst must be writable. */
int vd_disk_copy(vd_disk *src, vd_disk *dst, uint64_t off, uint64_t len,
                 const vd_copy_opts *o, vd_error **errp);

#endif
