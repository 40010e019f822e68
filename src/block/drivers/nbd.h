/* Private to the nbd client driver (nbd.c: options, connection, open/close; nbd-io.c: the
 * poll thread and the data ops). Names start nbdc_ as libnbd owns the nbd_ prefix. */
#ifndef VD_NBD_CLIENT_H
#define VD_NBD_CLIENT_H

#include <libnbd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

typedef struct nbdc_client {
    struct nbd_handle *h;
    vd_node *node;           /* for its error messages */
    char *desc;              /* the node's URI-like name, for messages */
    /* What the server offers, read once after the handshake. */
    bool can_fua, can_flush, can_trim, can_zero, can_fast_zero, base_allocation;
    /* The meta context block status reads: base:allocation, or QEMU's x-dirty-bitmap
     * (another context whose bits are read as base:allocation's). */
    char *meta_context;
    uint32_t align;          /* request alignment (server minimum block size, or 1/512) */

    /* The poll thread drives the connection: it waits on the socket (in the direction
     * libnbd asks for) and on wake_fd, an eventfd that requesters write after queueing a
     * command so that the wait includes the new command's direction, and that close
     * writes to stop it. */
    pthread_t poller;
    bool poller_started;
    int wake_fd;
    pthread_mutex_t lock;    /* guards the fields below and every nbdc_wait.done */
    pthread_cond_t idle;     /* signalled when the poll thread sees the connection end */
    bool stopping;           /* close asks the poll thread to exit */
    bool ended;              /* the connection is closed or dead */
} nbdc_client;

/* Starts / stops the poll thread (stop: bounded, it only waits for the thread's poll()
 * to see wake_fd). */
int nbdc_poller_start(nbdc_client *c, vd_error **errp);
void nbdc_poller_stop(nbdc_client *c);
/* Waits at most timeout_ms for the poll thread to see the connection end. */
void nbdc_wait_ended(nbdc_client *c, int timeout_ms);

extern const vd_driver vd_nbd_driver;

int nbdc_io_pread(vd_node *n, void *buf, uint64_t len, uint64_t off);
int nbdc_io_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags);
int nbdc_io_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags);
int nbdc_io_pdiscard(vd_node *n, uint64_t off, uint64_t len);
int nbdc_io_flush(vd_node *n);
int nbdc_io_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st);

#endif
