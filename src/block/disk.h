/* The disk handle behind the public vd_disk type, shared by disk.c (the public API) and
 * the code that changes which node a handle points at (external snapshots, src/snapshot/). */
#ifndef VD_DISK_H
#define VD_DISK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "block/block.h"

struct vd_disk {
    vd_engine *engine;
    vd_node *node;          /* top of the graph this handle reads and writes */
    bool owns_node;         /* false for the handles vd_disk_backing() hands out */
    struct vd_disk *backing;
    /* The handle-level drain: every public entry point that touches `node` holds it
     * shared; a transaction or a graph change (which may replace `node`) holds it
     * exclusively, so it waits for the requests in flight and holds back new ones.
     * Writer-preferring, so a steady stream of I/O cannot starve a snapshot; hence an
     * entry point must never take it twice in one thread. */
    pthread_rwlock_t drain;
    /* Accounting (vd_disk_get_stats), updated with atomics: no lock on the I/O path. */
    vd_disk_stats stats;
    uint64_t last_done_ns;       /* CLOCK_MONOTONIC of the last finished request; 0: none */
    char last_error[512];        /* vd_disk_last_error's copy */
};

/* Handles (disk-drain.c). vd_disk_new makes a handle over n; vd_disk_free frees the handle
 * alone (not its node, not its backing handles). */
vd_disk *vd_disk_new(vd_engine *e, vd_node *n, bool owns);
void vd_disk_free(vd_disk *d);

/* Shared side: around every public call on the handle. */
void vd_disk_enter(const vd_disk *d);
void vd_disk_leave(const vd_disk *d);

/* Exclusive side, for many handles at once: locks them in address order (so that two
 * transactions over overlapping sets cannot deadlock), skipping NULLs and repeats. The
 * array is sorted in place; pass the same array to vd_disks_drain_end. */
void vd_disks_drain_begin(vd_disk **disks, size_t n);
void vd_disks_drain_end(vd_disk **disks, size_t n);

/* Drains every handle that uses node n (except `except`), up to max of them, into users,
 * and returns how many; they cannot change while drained. End with vd_disks_drain_end. */
size_t vd_node_users_drain_begin(vd_node *n, const vd_disk *except, vd_disk **users,
                                 size_t max);

/* Points the handle at node n instead of its current top and returns the old top. The
 * caller holds the handle drained (vd_disks_drain_begin), so every request of its users
 * runs wholly on the old node or wholly on the new one: what an external snapshot, a
 * mirror pivot or an active commit needs. The nodes' own links (backing, overlay) are the
 * caller's to set. */
vd_node *vd_disk_replace_node_locked(vd_disk *d, vd_node *n);

#endif
