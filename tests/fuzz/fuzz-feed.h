/* The client side of the socket targets (fuzz-nbd, fuzz-qmp): an input is written to a
 * fresh socket pair on the fuzzer's thread before the server side runs there (the socket
 * buffers are enlarged so that it normally fits); replies stay in the socket buffer and go
 * with it. A helper thread, made once and reused (a thread per input costs more than the
 * input under ASan), writes what did not fit and, every millisecond while a connection
 * runs, drains the replies, so the server never stays blocked on a full buffer. Waking a
 * client thread for every reply, as a blocking reader does, made the socket ping-pong most
 * of the cost of an input.
 *
 *     int fd = feed_begin(data, size);   // the server's end, or -1
 *     serve(fd);                          // must close fd
 *     feed_end();
 *
 * Header-only: each target is built from one source file (build.sh). */
#ifndef FUZZ_FEED_H
#define FUZZ_FEED_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct feed {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int fd;               /* the client end while a connection runs, else -1 */
    const uint8_t *rest;  /* input not written yet */
    size_t rest_size;
    bool started;
} feed;

static feed feed_job = {.fd = -1};

/* With the lock held: writes what fits of the rest of the input, half-closes once it is
 * all written, and reads whatever replies there are. Never blocks. */
static void feed_pump(void)
{
    while (feed_job.rest_size) {
        ssize_t w = send(feed_job.fd, feed_job.rest, feed_job.rest_size,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w <= 0) {
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                break;
            }
            feed_job.rest_size = 0;   /* the server dropped us */
            break;
        }
        feed_job.rest += w;
        feed_job.rest_size -= (size_t)w;
        if (!feed_job.rest_size) {
            shutdown(feed_job.fd, SHUT_WR);
        }
    }
    static char buf[65536];
    while (recv(feed_job.fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
    }
}

static void *feed_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&feed_job.lock);
    for (;;) {
        if (feed_job.fd >= 0) {
            feed_pump();
        }
        if (feed_job.fd >= 0 && feed_job.rest_size) {
            /* Input still to write: wait for room (or replies), holding the lock so the
             * socket stays open; the fuzzer's thread waits at most this long for it. */
            struct pollfd p = {.fd = feed_job.fd, .events = POLLIN | POLLOUT};
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
        pthread_cond_timedwait(&feed_job.cond, &feed_job.lock, &ts);
    }
    return NULL;
}

/* Starts feeding data to a new connection; returns the server's end (-1 on failure). */
static int feed_begin(const uint8_t *data, size_t size)
{
    if (!feed_job.started) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_mutex_init(&feed_job.lock, NULL);
        pthread_cond_init(&feed_job.cond, &ca);
        pthread_condattr_destroy(&ca);
        pthread_t t;
        if (pthread_create(&t, NULL, feed_main, NULL) != 0) {
            abort();
        }
        feed_job.started = true;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return -1;
    }
    /* Best effort: where the limit is lower, the helper's draining covers the rest. */
    int big = 4 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    pthread_mutex_lock(&feed_job.lock);
    feed_job.fd = sv[1];
    feed_job.rest = data;
    feed_job.rest_size = size;
    if (size) {
        feed_pump();
    } else {
        shutdown(sv[1], SHUT_WR);
    }
    if (feed_job.rest_size) {
        pthread_cond_signal(&feed_job.cond);
    }
    pthread_mutex_unlock(&feed_job.lock);
    return sv[0];
}

/* After the server's side has returned (and closed its end). */
static void feed_end(void)
{
    pthread_mutex_lock(&feed_job.lock);
    int fd = feed_job.fd;
    feed_job.fd = -1;
    feed_job.rest_size = 0;
    pthread_mutex_unlock(&feed_job.lock);
    close(fd);
}

#endif
