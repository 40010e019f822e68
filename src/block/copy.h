/* The copy engine every job and command that moves data between images shares: backup,
 * commit, stream and the CLI's convert, commit and rebase. One range at a time
 * (vd_copy_range, for jobs that plan their own work), or a whole image with worker
 * threads (vd_copy_all). A range is read through the source's chain: what reads as zeros
 * becomes a write of zeros (or nothing, on a target that already reads zeros), the rest
 * is copied, compressed when asked. */
#ifndef VD_BLOCK_COPY_H
#define VD_BLOCK_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

typedef struct vd_copy_spec {
    vd_node *src;          /* read through its whole chain */
    vd_node *dst;
    /* > 0: only what the layers above this depth of src's chain allocate (a commit's or
     * a stream's base sits at that depth); 0: everything src reads. */
    int above_depth;
    bool dst_is_zero;      /* dst reads zeros where nothing was written: zeros are skipped */
    bool unmap;            /* zeros may be unmapped in dst */
    bool compress;         /* data goes to dst as compressed clusters */
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
 * returning false (-ECANCELED). The first failure stops it too. */
typedef struct vd_copy_job {
    const vd_copy_spec *spec;
    uint64_t off, end;
    unsigned workers;      /* 0: 8 */
    uint64_t chunk;        /* 0: 2 MiB; rounded up to dst clusters when compressing */
    bool (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
} vd_copy_job;
int vd_copy_all(const vd_copy_job *j, vd_error **errp);

#endif
