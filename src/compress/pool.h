/* A process-wide pool of worker threads that runs batches of independent tasks: the
 * clusters of a compressed write, the compressed clusters of a read. One worker per core,
 * started on first use. VDISK_THREADS=N sets the threads a batch can use in all (N-1
 * workers plus the caller; 1 runs everything in the caller). The calling thread works on its own batch too, so a batch always makes progress
 * even when every worker is busy with other callers' batches, and many threads may run
 * batches at once. */
#ifndef VD_POOL_H
#define VD_POOL_H

#include <stddef.h>

/* Runs fn(arg, i) for every i in [0, n), in any order and on any thread, and returns once
 * all have finished. Never fails: without workers (thread creation failed) the caller runs
 * every task itself. */
void vd_pool_run(size_t n, void (*fn)(void *arg, size_t i), void *arg);
/* Number of threads a batch can use (workers + the caller), >= 1. */
unsigned vd_pool_threads(void);

#endif
