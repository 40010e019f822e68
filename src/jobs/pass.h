/* One pass over a disk for jobs that copy runs of it once (commit, stream): the run loop
 * finds the next run, cuts it in chunks and hands them to worker threads, between pause
 * points, under the speed limit and the error policy. Progress counts the whole disk, as
 * QEMU's commit and stream count it: skipped bytes too. */
#ifndef VD_JOBS_PASS_H
#define VD_JOBS_PASS_H

#include "jobs/job.h"

typedef struct job_pass {
    vd_job *job;
    uint64_t size;
    uint64_t chunk;                 /* bytes per copy (0: 1 MiB) */
    unsigned workers;               /* 0: 8 */
    vd_job_on_error on_error;
    /* The first run to copy in [off, end): 1 with *start and *len, 0 if none, -errno.
     * No lock held. */
    int (*next)(void *opaque, uint64_t off, uint64_t end, uint64_t *start, uint64_t *len);
    /* Copies [off, off+len) through buf (buflen bytes); *is_read says which side failed.
     * From worker threads, no lock held. */
    int (*copy)(void *opaque, void *buf, uint64_t buflen, uint64_t off, uint64_t len,
                bool *is_read);
    void *opaque;
} job_pass;

/* Runs the pass from the job's run callback (no lock held): 0 when all was copied,
 * -ECANCELED when cancelled, else the error that failed it (policy report). */
int job_pass_run(const job_pass *p);

#endif
