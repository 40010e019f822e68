/* The nbd client's data path. Many threads issue requests at once on one libnbd handle:
 * each queues its command with an nbd_aio_* call (which takes the handle lock only while
 * queueing and sending) and sleeps until its completion callback runs. A poll thread owns
 * the waiting: libnbd's synchronous calls would hold the handle lock for a whole round
 * trip, and nbd_poll holds it while blocked, so neither allows requests in flight together.
 *
 *   requester:  nbd_aio_X(cb) --> write wake_fd --> sleep on its condvar until done
 *   poll thread: poll(wake_fd, socket in nbd_aio_get_direction()) --> nbd_aio_notify_*
 *                --> libnbd runs completion callbacks --> done = true, signal
 *
 * When the server goes away libnbd completes every command in flight with ENOTCONN, and
 * refuses new ones; both become -EIO here, so nothing waits on a dead connection. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "block/drivers/nbd.h"

/* One request in flight: its waiter's state. */
typedef struct nbdc_wait {
    nbdc_client *c;
    pthread_cond_t cond;
    bool done;
    int err;
    /* block status: the first extent of base:allocation */
    bool have_extent;
    uint64_t ext_len;
    uint32_t ext_flags;
} nbdc_wait;

static void wake(nbdc_client *c)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: the thread will wake anyway. */
    while (write(c->wake_fd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
}

static void *poll_thread(void *opaque)
{
    nbdc_client *c = opaque;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        bool stop = c->stopping;
        pthread_mutex_unlock(&c->lock);
        if (stop) {
            break;
        }
        bool live = !nbd_aio_is_dead(c->h) && !nbd_aio_is_closed(c->h);
        unsigned dir = live ? nbd_aio_get_direction(c->h) : 0;
        int fd = live && dir ? nbd_aio_get_fd(c->h) : -1;
        if (!live) {
            pthread_mutex_lock(&c->lock);
            c->ended = true;
            pthread_cond_broadcast(&c->idle);
            pthread_mutex_unlock(&c->lock);
        }
        struct pollfd pfd[2] = {
            {.fd = c->wake_fd, .events = POLLIN},
            {.fd = fd,
             .events = (short)((dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                               (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0))},
        };
        if (poll(pfd, fd >= 0 ? 2 : 1, -1) < 0) {
            continue;  /* EINTR; nothing else can fail with valid arguments */
        }
        if (pfd[0].revents & POLLIN) {
            uint64_t v;
            (void)!read(c->wake_fd, &v, sizeof(v));
        }
        if (fd < 0) {
            continue;
        }
        /* A hang-up or error is noticed by whichever side libnbd is waiting on; it then
         * marks the connection dead and completes what was in flight. */
        short rev = pfd[1].revents;
        if ((dir & LIBNBD_AIO_DIRECTION_READ) && (rev & (POLLIN | POLLHUP | POLLERR))) {
            nbd_aio_notify_read(c->h);
        } else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (rev & (POLLOUT | POLLHUP | POLLERR))) {
            nbd_aio_notify_write(c->h);
        }
    }
    return NULL;
}

int nbdc_poller_start(nbdc_client *c, vd_error **errp)
{
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake_fd < 0) {
        return vd_error_set(errp, VD_ERR_IO, errno, "%s: cannot create an eventfd: %s",
                            c->desc, strerror(errno));
    }
    int ret = pthread_create(&c->poller, NULL, poll_thread, c);
    if (ret) {
        return vd_error_set(errp, VD_ERR_IO, ret, "%s: cannot start the poll thread: %s",
                            c->desc, strerror(ret));
    }
    c->poller_started = true;
    return 0;
}

void nbdc_wait_ended(nbdc_client *c, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    wake(c);
    pthread_mutex_lock(&c->lock);
    while (!c->ended && pthread_cond_timedwait(&c->idle, &c->lock, &ts) == 0) {
    }
    pthread_mutex_unlock(&c->lock);
}

void nbdc_poller_stop(nbdc_client *c)
{
    if (c->poller_started) {
        pthread_mutex_lock(&c->lock);
        c->stopping = true;
        pthread_mutex_unlock(&c->lock);
        wake(c);
        pthread_join(c->poller, NULL);
        c->poller_started = false;
    }
}

/* libnbd calls this once per command, from whichever thread moves the state machine. */
static int complete_cb(void *opaque, int *error)
{
    nbdc_wait *w = opaque;
    nbdc_client *c = w->c;  /* w is gone once the waiter sees done */
    pthread_mutex_lock(&c->lock);
    w->err = *error;
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&c->lock);
    return 1;  /* retire the command: nobody calls nbd_aio_command_completed */
}

static int io_error(nbdc_client *c, const char *op, uint64_t len, uint64_t off, int err)
{
    if (err == ENOTCONN || err == ESHUTDOWN || err == EPIPE || err == ECONNRESET ||
        nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h)) {
        vd_node_set_error(c->node, "%s: the connection to the NBD server is lost (%s of %" PRIu64
                        " bytes at offset %" PRIu64 ")", c->desc, op, len, off);
        return -EIO;
    }
    vd_node_set_error(c->node, "%s: %s of %" PRIu64 " bytes at offset %" PRIu64 " failed: %s", c->desc,
                    op, len, off, strerror(err));
    return -err;
}

/* Waits for the command that nbd_aio_X queued (cookie: its result). */
static int finish(nbdc_client *c, nbdc_wait *w, int64_t cookie, const char *op, uint64_t len,
                  uint64_t off)
{
    int err;
    if (cookie < 0) {
        /* Not queued; libnbd did not and will not call the callback. */
        err = nbd_get_errno() ? nbd_get_errno() : EIO;
        if (!nbd_aio_is_dead(c->h) && !nbd_aio_is_closed(c->h)) {
            vd_node_set_error(c->node, "%s: %s of %" PRIu64 " bytes at offset %" PRIu64 " failed: %s",
                            c->desc, op, len, off, nbd_get_error());
            pthread_cond_destroy(&w->cond);
            return -err;
        }
    } else {
        wake(c);
        pthread_mutex_lock(&c->lock);
        while (!w->done) {
            pthread_cond_wait(&w->cond, &c->lock);
        }
        pthread_mutex_unlock(&c->lock);
        err = w->err;
    }
    pthread_cond_destroy(&w->cond);
    return err ? io_error(c, op, len, off, err) : 0;
}

static void wait_init(nbdc_wait *w, nbdc_client *c)
{
    memset(w, 0, sizeof(*w));
    w->c = c;
    pthread_cond_init(&w->cond, NULL);
}

#define COMPLETION(w) ((nbd_completion_callback){.callback = complete_cb, .user_data = (w)})

int nbdc_io_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    nbdc_client *c = n->opaque;
    nbdc_wait w;
    wait_init(&w, c);
    int64_t cookie = nbd_aio_pread(c->h, buf, len, off, COMPLETION(&w), 0);
    return finish(c, &w, cookie, "read", len, off);
}

int nbdc_io_flush(vd_node *n)
{
    nbdc_client *c = n->opaque;
    if (!c->can_flush) {
        return 0;  /* the server writes through, as QEMU assumes */
    }
    nbdc_wait w;
    wait_init(&w, c);
    int64_t cookie = nbd_aio_flush(c->h, COMPLETION(&w), 0);
    return finish(c, &w, cookie, "flush", 0, 0);
}

/* FUA the server cannot do is a flush after the write (what QEMU's block layer does). */
static int fua_fallback(vd_node *n, int ret, unsigned flags)
{
    const nbdc_client *c = n->opaque;
    return ret == 0 && (flags & VD_REQ_FUA) && !c->can_fua ? nbdc_io_flush(n) : ret;
}

int nbdc_io_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    nbdc_client *c = n->opaque;
    nbdc_wait w;
    wait_init(&w, c);
    uint32_t f = (flags & VD_REQ_FUA) && c->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
    int64_t cookie = nbd_aio_pwrite(c->h, buf, len, off, COMPLETION(&w), f);
    return fua_fallback(n, finish(c, &w, cookie, "write", len, off), flags);
}

int nbdc_io_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    nbdc_client *c = n->opaque;
    /* -ENOTSUP lets the core write zeros itself, or tells a NO_FALLBACK caller that
     * zeroing would not be fast. */
    if (!c->can_zero || ((flags & VD_REQ_NO_FALLBACK) && !c->can_fast_zero)) {
        return -ENOTSUP;
    }
    uint32_t f = (flags & VD_REQ_FUA) && c->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
    f |= flags & VD_REQ_MAY_UNMAP ? 0 : LIBNBD_CMD_FLAG_NO_HOLE;
    f |= flags & VD_REQ_NO_FALLBACK ? LIBNBD_CMD_FLAG_FAST_ZERO : 0;
    nbdc_wait w;
    wait_init(&w, c);
    int64_t cookie = nbd_aio_zero(c->h, len, off, COMPLETION(&w), f);
    int ret = finish(c, &w, cookie, "write zeroes", len, off);
    if (ret == -ENOTSUP && (flags & VD_REQ_NO_FALLBACK)) {
        return ret;  /* the server says it cannot zero fast: not an error to report */
    }
    return fua_fallback(n, ret, flags);
}

int nbdc_io_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    nbdc_client *c = n->opaque;
    if (!c->can_trim) {
        return 0;  /* advisory */
    }
    nbdc_wait w;
    wait_init(&w, c);
    int64_t cookie = nbd_aio_trim(c->h, len, off, COMPLETION(&w), 0);
    return finish(c, &w, cookie, "discard", len, off);
}

static int extent_cb(void *opaque, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr_entries, int *error)
{
    (void)offset, (void)error;
    nbdc_wait *w = opaque;
    /* With REQ_ONE a server sends one extent per context; keep the first we get. */
    if (!strcmp(metacontext, w->c->meta_context) && nr_entries >= 2 && !w->have_extent) {
        w->have_extent = true;
        w->ext_len = entries[0];
        w->ext_flags = entries[1];
    }
    return 0;
}

int nbdc_io_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    nbdc_client *c = n->opaque;
    st->offset = off;
    st->file = n;
    if (!c->base_allocation) {
        /* Nothing known: all data, as QEMU answers. */
        st->pnum = len;
        st->flags = VD_BS_DATA | VD_BS_ALLOCATED | VD_BS_OFFSET;
        return 0;
    }
    /* QEMU asks for at most INT_MAX bytes (aligned down), one extent. */
    uint64_t cap = (uint64_t)INT32_MAX / c->align * c->align;
    uint64_t want = len < cap ? len : cap;
    nbdc_wait w;
    wait_init(&w, c);
    int64_t cookie = nbd_aio_block_status(
        c->h, want, off, (nbd_extent_callback){.callback = extent_cb, .user_data = &w},
        COMPLETION(&w), LIBNBD_CMD_FLAG_REQ_ONE);
    int ret = finish(c, &w, cookie, "block status", want, off);
    if (ret < 0) {
        return ret;
    }
    if (!w.have_extent || w.ext_len == 0) {
        vd_node_set_error(c->node, "%s: the server sent no %s extent for offset %" PRIu64, c->desc,
                        c->meta_context, off);
        return -EIO;
    }
    uint64_t elen = w.ext_len;
    uint32_t eflags = w.ext_flags;
    /* An unaligned extent breaks the protocol, but old qemu-nbd sends one at an unaligned
     * EOF; QEMU works around it so: round down, or up to one block of plain data. */
    if (elen % c->align) {
        if (elen > c->align) {
            elen -= elen % c->align;
        } else {
            elen = c->align;
            eflags = 0;
        }
    }
    st->pnum = elen < want ? elen : want;
    st->flags = VD_BS_OFFSET | (eflags & LIBNBD_STATE_HOLE ? 0 : VD_BS_DATA) |
                (eflags & LIBNBD_STATE_ZERO ? VD_BS_ZERO : 0);
    /* A protocol node holds what reads as data or as zeros; a hole that may read as
     * anything is not there (QEMU: allocated iff data or zero). */
    if (st->flags & (VD_BS_DATA | VD_BS_ZERO)) {
        st->flags |= VD_BS_ALLOCATED;
    }
    return 0;
}
