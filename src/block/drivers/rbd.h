/* Private to the rbd protocol driver (rbd.c: options, connection, open/close, the
 * exclusive lock, create; rbd-io.c: the data path, block status and resize; rbd-snap.c:
 * RBD snapshots as the node's internal snapshots). Names start rbdd_ as librbd owns rbd_. */
#ifndef VD_RBD_DRIVER_H
#define VD_RBD_DRIVER_H

#include <pthread.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

typedef struct rbdd_state {
    rados_t cluster;
    rados_ioctx_t io;
    rbd_image_t image;
    char *desc;              /* "pool/[namespace/]image[@snap]", for messages */
    char *snap;              /* the snapshot the node reads, or NULL */
    uint64_t object_size;
    bool locked;             /* this node holds the image's exclusive lock */
    /* Requests past the end grow the image (as QEMU's driver does, so a format on top can
     * append); the lock keeps two growers from shrinking each other's result. */
    pthread_mutex_t resize_lock;
} rbdd_state;

/* Every request waits for its own completion: callers are many threads, so many requests
 * are in flight at once, each thread blocked on its own. */
int rbdd_pread(vd_node *n, void *buf, uint64_t len, uint64_t off);
int rbdd_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags);
int rbdd_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags);
int rbdd_pdiscard(vd_node *n, uint64_t off, uint64_t len);
int rbdd_flush(vd_node *n);
int rbdd_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st);
int rbdd_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                  vd_error **errp);

int rbdd_snapshot_list(vd_node *n, vd_snapshot_info **out, size_t *nb, vd_error **errp);
int rbdd_snapshot_create_prepare(vd_node *n, const vd_snap_params *p, void **txn,
                                 vd_error **errp);
int rbdd_snapshot_delete_prepare(vd_node *n, const char *id, const char *name, void **txn,
                                 vd_error **errp);
int rbdd_snapshot_commit(vd_node *n, void *txn, vd_error **errp);
int rbdd_snapshot_abort(vd_node *n, void *txn, vd_error **errp);
void rbdd_snapshot_clean(vd_node *n, void *txn);
int rbdd_snapshot_apply(vd_node *n, const char *id_or_name, vd_error **errp);

/* Takes the image's exclusive lock for a writer; with break_dead, a lock another client
 * holds is broken first (its owner blocklisted, so nothing it still sends lands). */
int rbdd_lock(vd_node *n, bool break_dead, vd_error **errp);

#endif
