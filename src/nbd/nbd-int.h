/* Private state of the NBD server, shared by server.c (listeners, exports, worker pool),
 * conn.c (one client: handshake and transmission) and tls.c (GnuTLS sessions). */
#ifndef VD_NBD_INT_H
#define VD_NBD_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nbd/nbd-proto.h"
#include "vdisk/nbd.h"

typedef struct nbd_export {
    char *name;
    char *description;
    vd_disk *disk;
    bool writable;
    bool direct;                 /* O_DIRECT: writes run in parallel, on the workers */
    uint32_t min_block;          /* advertised minimum block size */
    uint64_t offset;             /* the export's byte 0 in the disk */
    bool allocation_depth;       /* offers qemu:allocation-depth */
    vd_dirty_bitmap **bitmaps;   /* offered as qemu:dirty-bitmap:NAME; released at free */
    size_t nb_bitmaps;
    pthread_mutex_t chain_lock;  /* one look down its backing chain at a time */
    unsigned clients;            /* connections in transmission on it */
    unsigned refs;               /* the registry's + one per connection using it */
    bool removed;                /* no longer listed; hard removal closes its clients */
    struct nbd_export *next;
} nbd_export;

typedef struct nbd_conn nbd_conn;

/* One request in flight, from the reader to a worker. */
typedef struct nbd_req {
    nbd_conn *c;
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t off;
    uint32_t len;
    uint8_t *data;               /* the WRITE payload */
    int early_err;               /* > 0: reply this NBD error without running it */
    bool on_reader;              /* run by the connection's reader thread */
    bool reply_only;             /* done; a worker only sends its reply (reply_err) */
    uint32_t reply_err;
    struct nbd_req *next;
} nbd_req;

/* Payload bytes a request holds in memory while in flight (its data or its reply). */
static inline uint32_t nbd_req_bytes(const nbd_req *r)
{
    return r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE ? r->len : 0;
}

typedef struct nbd_tls nbd_tls;

struct nbd_conn {
    vd_nbd_server *srv;
    int fd;
    nbd_tls *tls;                /* set once STARTTLS succeeded */
    pthread_t thread;
    pthread_mutex_t wlock;       /* one reply on the wire at a time */
    bool write_failed;

    /* Negotiated state. */
    bool fixed;
    bool no_zeroes;
    bool structured;
    unsigned meta;               /* NBD_META_* contexts selected ... */
    char *meta_export;           /* ... for this export name */
    nbd_export *exp;             /* the export in transmission (a reference held) */

    /* Requests queued or running (under srv->lock). */
    unsigned inflight;
    uint64_t inflight_bytes;
    /* Set (under srv->lock, read atomically elsewhere) when the server or a hard export
     * removal shuts the socket down: the reader stops, requests not started yet are
     * answered ESHUTDOWN (or dropped once the socket is gone) instead of run. */
    bool closing;
    bool negotiated;             /* reached transmission */
    struct nbd_conn *prev, *next;
};

typedef struct nbd_listener {
    int fd;
    char *unix_path;             /* removed at free */
} nbd_listener;

struct vd_nbd_server {
    pthread_mutex_t lock;
    pthread_cond_t cond;         /* connections gone, requests done, queue not full */
    unsigned max_connections;
    vd_tls_creds *tls;

    nbd_export *exports;         /* in order of addition */

    nbd_listener *listeners;
    size_t nb_listeners;
    int wake[2];                 /* wakes the accept thread (new listener, stop) */
    pthread_t accept_thread;
    bool stopping;               /* no more connections: the accept thread ends */
    bool no_more_clients;        /* one_shot's condition was met: accept no more */
    bool one_shot;

    nbd_conn *conns;
    unsigned nb_conns;
    uint64_t nb_accepted;

    /* The worker pool: requests of every connection, first come first served. */
    pthread_t *workers;
    unsigned nb_workers;
    nbd_req *q_head, *q_tail;
    pthread_cond_t q_cond;
    /* Set only once every connection is gone, so that no reader is ever left waiting on
     * a request that no worker will run. */
    bool workers_exit;
};

static inline bool nbd_conn_closing(const nbd_conn *c)
{
    return __atomic_load_n(&c->closing, __ATOMIC_ACQUIRE);
}

/* Marks a connection closing and shuts its socket down, which wakes its reader and any
 * thread blocked sending to it (server lock held). */
void nbd_conn_shutdown_locked(vd_nbd_server *s, nbd_conn *c);

/* conn.c: serves one accepted socket until the client leaves or the server stops; runs
 * on its own thread, and frees the connection at the end. */
void *nbd_conn_main(void *arg);
/* Registers a connection on an accepted socket fd (server lock held); NULL when the server
 * is stopping or has max_connections. The caller sets c->thread and runs nbd_conn_main,
 * which unregisters and frees c and closes fd when the client is gone. */
nbd_conn *nbd_conn_register_locked(vd_nbd_server *s, int fd);
/* Executes one request and sends its reply (worker threads). */
void nbd_req_run(nbd_req *r);

/* server.c */
nbd_export *nbd_export_find_locked(vd_nbd_server *s, const char *name);
void nbd_export_unref_locked(vd_nbd_server *s, nbd_export *e);
/* Queues a request for the workers; waits while the connection has too much in flight.
 * Returns -1 without queueing (the caller still owns r) once the connection is closing. */
int nbd_queue_request(vd_nbd_server *s, nbd_req *r);
/* Runs a request on the calling (reader) thread, counted as in flight like a queued one;
 * -1 (nothing run, r still the caller's) once the connection is closing. */
int nbd_run_now(vd_nbd_server *s, nbd_req *r);
/* Hands a request already counted as in flight to the workers (no waiting). */
void nbd_queue_counted(vd_nbd_server *s, nbd_req *r);
/* Called by a worker when a request is done (its reply sent or given up). */
void nbd_request_done(vd_nbd_server *s, nbd_conn *c, uint32_t bytes);

/* tls.c: a server-side TLS session on fd (handshake done, peer verified when asked). */
int nbd_tls_start(vd_tls_creds *creds, int fd, int timeout_ms, nbd_tls **out,
                  char *err, size_t errlen);
ssize_t nbd_tls_recv(nbd_tls *t, void *buf, size_t len);
ssize_t nbd_tls_send(nbd_tls *t, const void *buf, size_t len);
bool nbd_tls_pending(nbd_tls *t);
void nbd_tls_free(nbd_tls *t);

#endif
