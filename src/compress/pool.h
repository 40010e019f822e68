/* A pool of worker threads that runs batches of independent tasks: the clusters of a
 * compressed write, the compressed clusters of a read. Each engine has one; its workers
 * start at the first batch and stop when the pool is freed. The calling thread works on
 * its own batch too, so a batch always makes progress even when every worker is busy with
 * other callers' batches, and many threads may run batches at once. */
#ifndef VD_POOL_H
#define VD_POOL_H

#include <stddef.h>

typedef struct vd_pool vd_pool;

/* threads: what one batch may use in all, the caller included (1: the caller alone);
 * 0: one worker per online core plus the caller. */
vd_pool *vd_pool_new(unsigned threads);
/* Stops and joins the workers. No batch may be running. NULL is ignored. */
void vd_pool_free(vd_pool *p);
/* Runs fn(arg, i) for every i in [0, n), in any order and on any thread, and returns once
 * all have finished. Never fails: without a pool or without workers (thread creation
 * failed) the caller runs every task itself. */
void vd_pool_run(vd_pool *p, size_t n, void (*fn)(void *arg, size_t i), void *arg);
/* Number of threads a batch can use (workers + the caller), >= 1; 1 for NULL. */
unsigned vd_pool_threads(vd_pool *p);

#endif
