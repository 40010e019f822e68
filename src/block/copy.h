/* The copy engine every job and command that moves data between images shares: backup,
 * commit, stream and the CLI's commit and rebase. One range at a time (vd_copy_range, for
 * jobs that plan their own work), or a whole image with worker threads (vd_copy_all). A
 * range is read through the source's chain: what reads as zeros becomes a write of zeros
 * (or nothing, on a target that already reads zeros), the rest is copied, compressed when
 * asked. A compared copy (rebase) writes only what differs from a third image. */
#ifndef VD_BLOCK_COPY_H
#define VD_BLOCK_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

/* Which step of a copy failed. */
typedef enum copy_failure {
    COPY_OK = 0,
    COPY_FAILED_STATUS,    /* the source's block status */
    COPY_FAILED_READ,      /* a read of the source */
    COPY_FAILED_COMPARE,   /* a read of the compared node */
    COPY_FAILED_WRITE,     /* a write (or flush) of the target */
} copy_failure;

typedef struct vd_copy_spec {
    vd_node *src;          /* read through its whole chain */
    vd_node *dst;
    /* Which ranges are copied, by the depth in src's chain of the layer that supplies them:
     * the layer that allocates the range, or the shorter layer whose end makes it read as
     * zeros (nothing allocated anywhere: below the bottom, which no bound includes).
     * above_depth > 0: only what layers above that depth supply (a commit's or a stream's
     * base sits at it); 0: no upper bound, and unallocated ranges are copied too.
     * from_depth > 0: only what layers at that depth or below supply (a rebase leaves
     * what the image itself allocates). */
    int above_depth;
    int from_depth;
    bool dst_is_zero;      /* dst reads zeros where nothing was written: zeros are skipped */
    bool unmap;            /* zeros may be unmapped in dst */
    bool compress;         /* data goes to dst as compressed clusters */
    bool flush_each;       /* dst is writethrough: every write is flushed */
    /* A compared copy: only the 512-byte sectors where src differs from what `compare`
     * reads (NULL: zeros; past its end: zeros) are written. Zeros that src reads because
     * nothing at from_depth or below stores them are written as zeros, everything else
     * as data (qemu-img rebase's rule). */
    bool compared;
    vd_node *compare;
} vd_copy_spec;

/* Copies [off, off+len) under the spec through buf (buflen bytes, at least one dst
 * cluster when compressing; a compressed range starts on a dst cluster). On failure
 * *is_read says which side failed. */
int vd_copy_range(const vd_copy_spec *s, void *buf, uint64_t buflen, uint64_t off,
                  uint64_t len, bool *is_read);

/* The first run in [off, end) that the spec copies: 1 with *start, *len; 0 if none; or
 * -errno from the source's block status. */
int vd_copy_next(const vd_copy_spec *s, uint64_t off, uint64_t end, uint64_t *start,
                 uint64_t *len);

/* A whole copy of [off, end) with worker threads, each taking the next run (up to chunk
 * bytes) in order. progress, if set, hears the bytes done and the total (counted before
 * the copy starts) after each run, from one thread at a time, and stops the copy by
 * returning false (-ECANCELED). The first failure stops it too; *failure (if given) then
 * says which step failed. With in_order, reads run in parallel but the writes reach dst
 * in offset order, so the target's layout is that of a sequential copy. */
typedef struct vd_copy_job {
    const vd_copy_spec *spec;
    uint64_t off, end;
    unsigned workers;      /* 0: 8 */
    uint64_t chunk;        /* 0: 2 MiB; rounded up to dst clusters when compressing */
    bool in_order;
    bool (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
    copy_failure *failure;
} vd_copy_job;
int vd_copy_all(const vd_copy_job *j, vd_error **errp);

#endif
