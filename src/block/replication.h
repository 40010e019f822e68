/* The state of a `replication` node (QEMU's block replication), shared by its driver
 * (drivers/replication.c: options and I/O) and its operations (replication.c: start,
 * checkpoint, error, stop and failover). */
#ifndef VD_BLOCK_REPLICATION_H
#define VD_BLOCK_REPLICATION_H

#include <pthread.h>
#include <stdbool.h>

#include "block/block.h"
#include "util/hbitmap.h"
#include "vdisk/replication.h"

/* QEMU's stages. none: every request fails (EIO); running: a primary forwards writes, a
 * secondary reads and writes its active disk; failover: a secondary commits while its
 * I/O goes on; done: a primary refuses I/O, a secondary serves the secondary disk;
 * failover-failed: a secondary writes what its buffers hold there, the rest straight to
 * the secondary disk. */
typedef enum repl_stage {
    REPL_NONE,
    REPL_RUNNING,
    REPL_FAILOVER,
    REPL_FAILOVER_FAILED,
    REPL_DONE,
} repl_stage;

typedef struct vd_repl {
    vd_node *node;
    vd_replication_mode mode;
    char *top_id;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* Under lock. */
    repl_stage stage;
    int error;                   /* the failure get_error reports (-errno), 0: none */
    bool promoted;               /* a secondary that failed over: now a primary's disk */
    unsigned in_flight;          /* requests through the node (the gate) */
    bool gate_closed;            /* a checkpoint or a switch holds new requests back */
    /* A running secondary's layers (references), and the copy-before-write filter that
     * saves the secondary disk's old data into the hidden disk. */
    vd_node *hidden, *secondary;
    vd_node *cbw;
    bool hidden_was_ro;
    /* A failover: what the secondary's own writes dirty while the layers are committed. */
    vd_hbitmap *dirty;
    vd_write_notifier nt;
    bool nt_on;
} vd_repl;

/* The state of a replication node, or NULL for another node. */
vd_repl *vd_repl_of(vd_node *n);

/* The gate every request passes: closed, it holds new requests back and waits until none
 * is in flight, so a checkpoint or a failover changes the layers under no request. Entering
 * gives the stage (and the recorded error, when error is not NULL) under the same lock. */
repl_stage repl_gate_enter(vd_repl *r, int *error);
void repl_gate_exit(vd_repl *r);
void repl_gate_close(vd_repl *r);
void repl_gate_open(vd_repl *r);

/* Ends a secondary's copy-before-write and drops its references to the layers (close and
 * stop). */
void repl_secondary_release(vd_repl *r);

#endif
