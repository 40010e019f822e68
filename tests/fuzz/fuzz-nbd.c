/* libFuzzer target for the NBD server: each input is the byte stream one client sends
 * (handshake, options, requests, payloads) on a fresh connection to a server that exports
 * a small writable raw image held in memory (a memfd). Any crash, sanitizer report, leak
 * or hang is a bug. The first 4 input bytes are sent as the client flags, so most inputs
 * get past the greeting.
 *
 * Speed: the connection is a socket pair registered as the accept thread registers an
 * accepted socket (nbd_conn_register_locked), and served by the server's own connection
 * code (nbd_conn_main) on the fuzzer's thread, with the server's worker pool as usual. The
 * accept path is left out because it creates a thread per connection, which under ASan
 * costs more than most inputs. The input is written before the connection is served and
 * the write side closed; replies stay in the socket buffer, drained every millisecond by
 * a helper thread made once, so the server never stays blocked on a full buffer. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd/nbd-int.h"
#include "vdisk/nbd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static vd_engine *engine;
static vd_disk *disk;
static vd_nbd_server *server;

static void setup(void)
{
    engine = vd_engine_new();
    int fd = memfd_create("fuzz-nbd", 0);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        abort();
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    vd_open_opts o = {.format = "raw", .flags = VD_OPEN_RDWR | VD_OPEN_UNMAP};
    if (vd_open(engine, path, &o, &disk, NULL) < 0) {
        abort();
    }
    vd_nbd_server_opts so = {.max_connections = 0};
    if (vd_nbd_server_new(&so, &server, NULL) < 0) {
        abort();
    }
    vd_nbd_export_opts eo = {.name = "", .description = "fuzz", .disk = disk,
                             .writable = true};
    vd_nbd_export_opts eo2 = {.name = "ro", .disk = disk, .writable = false};
    if (vd_nbd_export_add(server, &eo, NULL) < 0 || vd_nbd_export_add(server, &eo2, NULL) < 0) {
        abort();
    }
}

/* The client side: what is left to write of the input, and the replies to drop. */
typedef struct feed {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int fd;               /* the client end while a connection is served, else -1 */
    const uint8_t *rest;  /* input not written yet */
    size_t rest_size;
} feed;

static feed job = {.fd = -1};

/* With job.lock held: writes what fits of the rest of the input, half-closes once it is
 * all written, and reads whatever replies there are. Never blocks. */
static void pump(void)
{
    while (job.rest_size) {
        ssize_t w = send(job.fd, job.rest, job.rest_size, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w <= 0) {
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                break;
            }
            job.rest_size = 0;   /* the server dropped us */
            break;
        }
        job.rest += w;
        job.rest_size -= (size_t)w;
        if (!job.rest_size) {
            shutdown(job.fd, SHUT_WR);
        }
    }
    static char buf[65536];
    while (recv(job.fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
    }
}

static void *client(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&job.lock);
    for (;;) {
        if (job.fd >= 0) {
            pump();
        }
        if (job.fd >= 0 && job.rest_size) {
            /* Input still to write: wait for room (or replies), holding the lock so the
             * socket stays open; the fuzzer's thread waits at most this long for it. */
            struct pollfd p = {.fd = job.fd, .events = POLLIN | POLLOUT};
            poll(&p, 1, 1);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&job.cond, &job.lock, &ts);
    }
    return NULL;
}

static void setup_client(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&job.lock, NULL);
    pthread_cond_init(&job.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_t t;
    if (pthread_create(&t, NULL, client, NULL) != 0) {
        abort();
    }
}

/* A connection registered as the server registers an accepted socket. */
static nbd_conn *conn_new(int fd)
{
    pthread_mutex_lock(&server->lock);
    nbd_conn *c = nbd_conn_register_locked(server, fd);
    if (!c) {
        abort();
    }
    c->thread = pthread_self();
    pthread_mutex_unlock(&server->lock);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!server) {
        setup();
        setup_client();
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        abort();
    }
    /* Best effort: where the limit is lower, the helper's draining covers the rest. */
    int big = 4 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    pthread_mutex_lock(&job.lock);
    job.fd = sv[1];
    job.rest = data;
    job.rest_size = size;
    if (size) {
        pump();
    } else {
        shutdown(sv[1], SHUT_WR);
    }
    if (job.rest_size) {
        pthread_cond_signal(&job.cond);
    }
    pthread_mutex_unlock(&job.lock);
    nbd_conn_main(conn_new(sv[0]));   /* returns when the client is gone; closes sv[0] */
    pthread_mutex_lock(&job.lock);
    job.fd = -1;
    job.rest_size = 0;
    pthread_mutex_unlock(&job.lock);
    close(sv[1]);
    return 0;
}
