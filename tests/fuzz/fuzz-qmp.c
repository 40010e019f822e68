/* libFuzzer target for the QMP wire layer: each input is the byte stream a client sends
 * (after the greeting) to a session on a socket pair; the session parses it into commands,
 * checks them against a command table and dispatches them. The table here has harmless
 * commands of every argument type, so what is fuzzed is the framing, the JSON parsing
 * limits, negotiation and argument checking — not vdiskd's handlers, which touch files.
 * FUZZ_EXTRA: src/qmp/qmp-server.c -ljson-c */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qmp/qmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int echo(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)errp;
    *ret = json_object_get(args);
    return 0;
}

static int refuse(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)ret;
    return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "DeviceNotFound: no such thing");
}

static int event(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)ret;
    (void)errp;
    qmp_event(qmp_session_server(qs), "FUZZ_EVENT", json_object_get(args));
    return 0;
}

static const qmp_arg typed[] = {
    {"s", QMP_STR, false, ""}, {"i", QMP_INT, true, ""}, {"b", QMP_BOOL, true, ""},
    {"o", QMP_OBJ, true, ""},  {"a", QMP_ARRAY, true, ""}, {"x", QMP_ANY, true, ""},
    {NULL, 0, false, NULL}};
static const qmp_arg none[] = {{NULL, 0, false, NULL}};
static const qmp_arg caps[] = {{"enable", QMP_ARRAY, true, ""}, {NULL, 0, false, NULL}};

const qmp_command qmp_commands[] = {
    {"qmp_capabilities", echo, caps, false, ""},
    {"typed", echo, typed, false, ""},
    {"open", echo, none, true, ""},
    {"refuse", refuse, none, false, ""},
    {"event", event, none, true, ""},
};
const size_t qmp_nb_commands = sizeof(qmp_commands) / sizeof(qmp_commands[0]);

static qmp_server *server;

/* The client side. The input is written to a fresh socket pair on the fuzzer's thread
 * before the session starts (the socket buffers are enlarged so that it normally fits),
 * then the session runs on the fuzzer's thread, as before. Replies stay in the socket
 * buffer and are dropped with it. A helper thread, made once and reused (a thread per
 * input costs more than the input under ASan), writes what did not fit and, every
 * millisecond while a session runs, drains the replies, so a session never stays
 * blocked on a full buffer. Waking a client thread for every reply, as a blocking reader
 * does, made the socket ping-pong most of the cost of an input. */
typedef struct feed {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int fd;               /* the client end while a session runs, else -1 */
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
            job.rest_size = 0;   /* the session is gone */
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

static void setup(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&job.lock, NULL);
    pthread_cond_init(&job.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_t t;
    if (qmp_server_new(&server, NULL) < 0 || pthread_create(&t, NULL, client, NULL) != 0) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!server) {
        setup();
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return 0;
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
    qmp_serve_fd(server, sv[0]);   /* returns at end of input; closes sv[0] */
    pthread_mutex_lock(&job.lock);
    job.fd = -1;
    job.rest_size = 0;
    pthread_mutex_unlock(&job.lock);
    close(sv[1]);
    return 0;
}
