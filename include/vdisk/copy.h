/* Copying one image's contents into another, with worker threads: the engine behind
 * the CLI's commit and rebase, and the block jobs' copies. What the source reads as zeros
 * is written as zeros (or skipped when the target already reads zeros); the rest is read
 * through the source's backing chain and written, compressed if asked. A compared copy
 * writes only what differs from a third image (a rebase onto it). */
#ifndef VDISK_COPY_H
#define VDISK_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

/* The step of a failed copy, for callers that word the error their own way. */
typedef enum vd_copy_failure {
    VD_COPY_OK = 0,
    VD_COPY_FAILED_STATUS,   /* reading the source's allocation */
    VD_COPY_FAILED_READ,     /* reading the source */
    VD_COPY_FAILED_COMPARE,  /* reading the compared image */
    VD_COPY_FAILED_WRITE,    /* writing the target */
} vd_copy_failure;

typedef struct vd_copy_opts {
    /* Which ranges, by the chain depth (0 is the source itself) of the layer that supplies
     * them: the one allocating them, or a shorter one whose end makes them read as zeros.
     * above_depth > 0: only what layers above that depth supply (a commit into the layer
     * at that depth); 0: everything, unallocated ranges included. from_depth > 0: only
     * what layers at that depth or below supply (a rebase keeps what the image holds). */
    int above_depth;
    int from_depth;
    bool target_is_zero;   /* the target reads zeros wherever nothing is written */
    bool unmap;            /* zeros may be unmapped in the target (if it was opened so) */
    bool compress;         /* the target gets compressed clusters */
    unsigned workers;      /* threads (0: 8) */
    uint64_t chunk;        /* bytes per request (0: 2 MiB) */
    /* Reads run in parallel, writes reach the target in offset order (its layout is then
     * that of a sequential copy, as qemu-img's). */
    bool in_order;
    /* A compared copy: only the 512-byte sectors where the source differs from what
     * `compare` reads (NULL: zeros; past its end: zeros) are written; zeros the source
     * reads because no layer at from_depth or below stores them are written as zeros,
     * the rest as data. The source may be the target itself (a rebase of it). */
    bool compared;
    vd_disk *compare;
    /* Optional: hears bytes done out of the total after each piece; false stops the
     * copy (-ECANCELED). */
    bool (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
    vd_copy_failure *failure;  /* optional: set to the failed step */
} vd_copy_opts;

/* Copies [off, off+len) of src into dst at the same offsets. The range must lie within
 * both; dst must be writable. A target opened writethrough has every write flushed. */
int vd_disk_copy(vd_disk *src, vd_disk *dst, uint64_t off, uint64_t len,
                 const vd_copy_opts *o, vd_error **errp);

#endif
