/* The NBD server: listening sockets and the accept thread, the export registry, the
 * connection list and the worker pool that runs every connection's requests. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd/nbd-int.h"
#include "nbd/nbd-proto.h"
#include "util/socket.h"
#include "util/common.h"

/* Per connection: requests and payload bytes queued or running before the reader stops
 * reading, so a client cannot make the server buffer without bound. */
#define CONN_MAX_INFLIGHT 64
#define CONN_MAX_INFLIGHT_BYTES (64u << 20)

/* ---- worker pool ------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    vd_nbd_server *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->q_head && !s->workers_exit) {
            pthread_cond_wait(&s->q_cond, &s->lock);
        }
        nbd_req *r = s->q_head;
        if (!r) {
            break;   /* every connection is gone and nothing is left */
        }
        s->q_head = r->next;
        if (!s->q_head) {
            s->q_tail = NULL;
        }
        pthread_mutex_unlock(&s->lock);
        nbd_req_run(r);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Counts a request as in flight on its connection (lock held). */
static void count_locked(nbd_req *r)
{
    r->c->inflight++;
    r->c->inflight_bytes += nbd_req_bytes(r);
}

/* Appends a counted request to the workers' queue (lock held). */
static void enqueue_locked(vd_nbd_server *s, nbd_req *r)
{
    r->next = NULL;
    if (s->q_tail) {
        s->q_tail->next = r;
    } else {
        s->q_head = r;
    }
    s->q_tail = r;
    pthread_cond_signal(&s->q_cond);
}

int nbd_queue_request(vd_nbd_server *s, nbd_req *r)
{
    nbd_conn *c = r->c;
    pthread_mutex_lock(&s->lock);
    /* Closing ends the wait: the reply could not be sent anyway, and a reader that waits
     * for room while the server stops would hold up the shutdown. */
    while (!c->closing && (c->inflight >= CONN_MAX_INFLIGHT ||
                           (c->inflight && c->inflight_bytes + nbd_req_bytes(r) >
                                               CONN_MAX_INFLIGHT_BYTES))) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    if (c->closing) {
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    count_locked(r);
    enqueue_locked(s, r);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

void nbd_queue_counted(vd_nbd_server *s, nbd_req *r)
{
    pthread_mutex_lock(&s->lock);
    enqueue_locked(s, r);
    pthread_mutex_unlock(&s->lock);
}

int nbd_run_now(vd_nbd_server *s, nbd_req *r)
{
    pthread_mutex_lock(&s->lock);
    if (r->c->closing) {
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    count_locked(r);
    pthread_mutex_unlock(&s->lock);
    r->on_reader = true;
    nbd_req_run(r);
    return 0;
}

void nbd_request_done(vd_nbd_server *s, nbd_conn *c, uint32_t bytes)
{
    pthread_mutex_lock(&s->lock);
    c->inflight--;
    c->inflight_bytes -= bytes;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* ---- exports --------------------------------------------------------------------------- */

nbd_export *nbd_export_find_locked(vd_nbd_server *s, const char *name)
{
    for (nbd_export *e = s->exports; e; e = e->next) {
        if (!e->removed && strcmp(e->name, name) == 0) {
            return e;
        }
    }
    return NULL;
}

static void export_free(nbd_export *e)
{
    for (size_t i = 0; i < e->nb_bitmaps; i++) {
        vd_bitmap_release(e->bitmaps[i]);
    }
    free(e->bitmaps);
    free(e->name);
    free(e->description);
    pthread_mutex_destroy(&e->chain_lock);
    free(e);
}

void nbd_export_unref_locked(vd_nbd_server *s, nbd_export *e)
{
    if (--e->refs > 0) {
        return;
    }
    for (nbd_export **p = &s->exports; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    export_free(e);
    pthread_cond_broadcast(&s->cond);
}

int vd_nbd_export_add(vd_nbd_server *s, const vd_nbd_export_opts *o, vd_error **errp)
{
    const char *name = o->name ? o->name : "";
    if (strlen(name) > NBD_MAX_STRING) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "export name too long (more "
                            "than %d bytes)", NBD_MAX_STRING);
    }
    if (o->description && strlen(o->description) > NBD_MAX_STRING) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "export description too long "
                            "(more than %d bytes)", NBD_MAX_STRING);
    }
    if (!o->disk) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "export '%s' has no disk", name);
    }
    if ((o->min_block & (o->min_block - 1)) != 0 || o->min_block > NBD_PREFERRED_BLOCK) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "export '%s': minimum block size "
                            "%u is not a power of two up to %u", name, o->min_block,
                            NBD_PREFERRED_BLOCK);
    }
    if (o->offset > vd_disk_size(o->disk)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "export '%s': offset %" PRIu64
                            " is beyond the end of the disk (%" PRIu64 " bytes)", name,
                            o->offset, vd_disk_size(o->disk));
    }
    if (o->nb_bitmaps > NBD_META_MAX_BITMAPS) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "export '%s': more than %u "
                            "bitmaps", name, NBD_META_MAX_BITMAPS);
    }
    pthread_mutex_lock(&s->lock);
    if (nbd_export_find_locked(s, name)) {
        pthread_mutex_unlock(&s->lock);
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "NBD server already has export "
                            "named '%s'", name);
    }
    nbd_export *e = calloc(1, sizeof(*e));
    if (!e) {
        abort();
    }
    e->name = vd_xstrdup(name ? name : "");
    e->description = o->description ? vd_xstrdup(o->description) : NULL;
    e->disk = o->disk;
    e->direct = vd_disk_direct(o->disk);
    e->writable = o->writable;
    e->min_block = o->min_block ? o->min_block : 1;
    e->offset = o->offset;
    e->allocation_depth = o->allocation_depth;
    if (o->nb_bitmaps) {
        e->bitmaps = calloc(o->nb_bitmaps, sizeof(*e->bitmaps));
        if (!e->bitmaps) {
            abort();
        }
        memcpy(e->bitmaps, o->bitmaps, o->nb_bitmaps * sizeof(*e->bitmaps));
        e->nb_bitmaps = o->nb_bitmaps;
    }
    pthread_mutex_init(&e->chain_lock, NULL);
    e->refs = 1;
    nbd_export **p = &s->exports;
    while (*p) {
        p = &(*p)->next;
    }
    *p = e;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int vd_nbd_export_remove(vd_nbd_server *s, const char *name, bool hard, vd_error **errp)
{
    pthread_mutex_lock(&s->lock);
    nbd_export *e = nbd_export_find_locked(s, name ? name : "");
    if (!e) {
        pthread_mutex_unlock(&s->lock);
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Export '%s' is not found",
                            name ? name : "");
    }
    if (e->clients && !hard) {
        pthread_mutex_unlock(&s->lock);
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "export '%s' still in use", e->name);
    }
    e->removed = true;
    /* Its clients lose the connection now; they drop their references as they go. */
    for (nbd_conn *c = s->conns; c; c = c->next) {
        if (c->exp == e) {
            nbd_conn_shutdown_locked(s, c);
        }
    }
    while (e->clients) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    nbd_export_unref_locked(s, e);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int vd_nbd_export_list(vd_nbd_server *s, vd_nbd_export_info **out, size_t *nb)
{
    pthread_mutex_lock(&s->lock);
    size_t n = 0;
    for (nbd_export *e = s->exports; e; e = e->next) {
        n += !e->removed;
    }
    vd_nbd_export_info *list = calloc(n ? n : 1, sizeof(*list));
    if (!list) {
        abort();
    }
    size_t i = 0;
    for (nbd_export *e = s->exports; e; e = e->next) {
        if (e->removed) {
            continue;
        }
        list[i].name = vd_xstrdup(e->name);
        list[i].description = e->description ? vd_xstrdup(e->description) : NULL;
        list[i].disk = e->disk;
        list[i].writable = e->writable;
        list[i].clients = e->clients;
        i++;
    }
    pthread_mutex_unlock(&s->lock);
    *out = list;
    *nb = n;
    return 0;
}

void vd_nbd_export_list_free(vd_nbd_export_info *list, size_t nb)
{
    if (!list) {
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        free(list[i].name);
        free(list[i].description);
    }
    free(list);
}

/* ---- listeners and accepting --------------------------------------------------------------- */

static void wake_acceptor(vd_nbd_server *s)
{
    char b = 0;
    ssize_t r = write(s->wake[1], &b, 1);
    (void)r;
}

void nbd_conn_shutdown_locked(vd_nbd_server *s, nbd_conn *c)
{
    __atomic_store_n(&c->closing, true, __ATOMIC_RELEASE);
    shutdown(c->fd, SHUT_RDWR);
    /* A reader waiting for room in the queue must see it. */
    pthread_cond_broadcast(&s->cond);
}

nbd_conn *nbd_conn_register_locked(vd_nbd_server *s, int fd)
{
    if (s->stopping || s->no_more_clients ||
        (s->max_connections && s->nb_conns >= s->max_connections)) {
        return NULL;
    }
    nbd_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->srv = s;
    c->fd = fd;
    pthread_mutex_init(&c->wlock, NULL);
    c->next = s->conns;
    if (s->conns) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->nb_conns++;
    s->nb_accepted++;
    return c;
}

static void accept_one(vd_nbd_server *s, int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  /* fails on unix: fine */
    pthread_mutex_lock(&s->lock);
    nbd_conn *c = nbd_conn_register_locked(s, fd);
    if (!c) {
        pthread_mutex_unlock(&s->lock);
        close(fd);
        return;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&c->thread, &attr, nbd_conn_main, c) != 0) {
        s->conns = c->next;
        if (s->conns) {
            s->conns->prev = NULL;
        }
        s->nb_conns--;
        pthread_mutex_destroy(&c->wlock);
        free(c);
        close(fd);
    }
    pthread_attr_destroy(&attr);
    pthread_mutex_unlock(&s->lock);
}

static void *accept_main(void *arg)
{
    vd_nbd_server *s = arg;
    struct pollfd *pfd = NULL;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        if (s->stopping || s->no_more_clients) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        size_t n = s->nb_listeners;
        struct pollfd *np = realloc(pfd, (n + 1) * sizeof(*pfd));
        if (!np) {
            abort();
        }
        pfd = np;
        pfd[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        for (size_t i = 0; i < n; i++) {
            pfd[i + 1] = (struct pollfd){.fd = s->listeners[i].fd, .events = POLLIN};
        }
        pthread_mutex_unlock(&s->lock);
        if (poll(pfd, n + 1, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (pfd[0].revents) {
            char buf[64];
            ssize_t r = read(s->wake[0], buf, sizeof(buf));
            (void)r;
        }
        for (size_t i = 0; i < n; i++) {
            if (pfd[i + 1].revents & POLLIN) {
                accept_one(s, pfd[i + 1].fd);
            }
        }
    }
    free(pfd);
    return NULL;
}

static int add_listener(vd_nbd_server *s, int fd, const char *unix_path)
{
    /* A client that resets between poll and accept must not leave the accept thread
     * blocked in accept (the server's free joins it). */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) {
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    pthread_mutex_lock(&s->lock);
    nbd_listener *l = realloc(s->listeners, (s->nb_listeners + 1) * sizeof(*l));
    if (!l) {
        abort();
    }
    s->listeners = l;
    l[s->nb_listeners].fd = fd;
    l[s->nb_listeners].unix_path = unix_path ? vd_xstrdup(unix_path) : NULL;
    s->nb_listeners++;
    pthread_mutex_unlock(&s->lock);
    wake_acceptor(s);
    return 0;
}

int vd_nbd_server_listen_unix(vd_nbd_server *s, const char *path, vd_error **errp)
{
    int fd = vd_unix_listen(path, 128, errp);
    return fd < 0 ? fd : add_listener(s, fd, path);
}

int vd_nbd_server_listen_fd(vd_nbd_server *s, int fd, vd_error **errp)
{
    int type = 0, listening = 0;
    socklen_t len = sizeof(type);
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
        return vd_error_set(errp, VD_ERR_INVALID, fd < 0 || errno == EBADF ? EBADF : ENOTSOCK,
                            "File descriptor '%d' is not a socket", fd);
    }
    len = sizeof(listening);
    if (type != SOCK_STREAM ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "File descriptor '%d' is not a "
                            "listening stream socket", fd);
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return add_listener(s, fd, NULL);
}

int vd_nbd_server_listen_inet(vd_nbd_server *s, const char *host, const char *port,
                              vd_error **errp)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    const char *p = port && *port ? port : "10809";
    int rc = getaddrinfo(host && *host ? host : NULL, p, &hints, &res);
    if (rc != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "address resolution failed for "
                            "%s:%s: %s", host ? host : "", p, gai_strerror(rc));
    }
    int err = 0, bound = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            err = errno;
            close(fd);
            continue;
        }
        add_listener(s, fd, NULL);
        bound++;
    }
    freeaddrinfo(res);
    if (!bound) {
        return vd_error_set(errp, VD_ERR_IO, err ? err : EADDRNOTAVAIL, "Failed to bind "
                            "socket: %s", strerror(err ? err : EADDRNOTAVAIL));
    }
    return 0;
}

/* ---- server ------------------------------------------------------------------------------ */

void vd_nbd_server_counts(vd_nbd_server *s, unsigned *open, uint64_t *accepted)
{
    pthread_mutex_lock(&s->lock);
    *open = s->nb_conns;
    *accepted = s->nb_accepted;
    pthread_mutex_unlock(&s->lock);
}

bool vd_nbd_server_finished(vd_nbd_server *s)
{
    pthread_mutex_lock(&s->lock);
    bool done = s->no_more_clients;
    pthread_mutex_unlock(&s->lock);
    return done;
}

int vd_nbd_server_new(const vd_nbd_server_opts *opts, vd_nbd_server **out, vd_error **errp)
{
    vd_nbd_server *s = calloc(1, sizeof(*s));
    if (!s) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    /* A client that goes away mid-reply must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    s->max_connections = opts ? opts->max_connections : 0;
    s->tls = opts ? opts->tls : NULL;
    s->one_shot = opts && opts->one_shot;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_cond_init(&s->q_cond, NULL);
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        int err = errno;
        free(s);
        return vd_error_set(errp, VD_ERR_IO, err, "pipe: %s", strerror(err));
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    /* Requests block in pread/pwrite and fsync: more threads than cores keeps the disk
     * busy while some wait. */
    s->nb_workers = (unsigned)(cpus > 0 ? cpus : 1) * 4;
    if (s->nb_workers < 8) {
        s->nb_workers = 8;
    }
    if (opts && opts->workers) {
        s->nb_workers = opts->workers;
    }
    s->workers = calloc(s->nb_workers, sizeof(*s->workers));
    if (!s->workers) {
        abort();
    }
    for (unsigned i = 0; i < s->nb_workers; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) {
            abort();
        }
    }
    if (pthread_create(&s->accept_thread, NULL, accept_main, s) != 0) {
        abort();
    }
    *out = s;
    return 0;
}

/* The order matters: no new connection; every connection shut down, so that readers,
 * senders and handshakes return and readers stop queueing; the connections drain what
 * is queued with the workers still running (a request never waits for a worker that is
 * gone) and tear themselves down; only then the workers end. */
void vd_nbd_server_free(vd_nbd_server *s)
{
    if (!s) {
        return;
    }
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_mutex_unlock(&s->lock);
    wake_acceptor(s);
    pthread_join(s->accept_thread, NULL);
    for (size_t i = 0; i < s->nb_listeners; i++) {
        close(s->listeners[i].fd);
        if (s->listeners[i].unix_path) {
            unlink(s->listeners[i].unix_path);
            free(s->listeners[i].unix_path);
        }
    }
    free(s->listeners);

    pthread_mutex_lock(&s->lock);
    for (nbd_conn *c = s->conns; c; c = c->next) {
        nbd_conn_shutdown_locked(s, c);
    }
    while (s->conns) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    s->workers_exit = true;
    pthread_cond_broadcast(&s->q_cond);
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < s->nb_workers; i++) {
        pthread_join(s->workers[i], NULL);
    }
    free(s->workers);
    while (s->exports) {
        nbd_export *e = s->exports;
        s->exports = e->next;
        export_free(e);
    }
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_cond_destroy(&s->q_cond);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
