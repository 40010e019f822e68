/* The rbd driver's data path on librbd's asynchronous API, block status from the image's
 * object map (rbd_diff_iterate2), and resize. */
#ifdef VD_HAVE_RBD

#include <errno.h>
#include <string.h>

#include "block/drivers/rbd.h"

/* Issues nothing itself: waits for the request c was given to, and frees it. */
static int finish(rbd_completion_t c)
{
    rbd_aio_wait_for_complete(c);
    ssize_t r = rbd_aio_get_return_value(c);
    rbd_aio_release(c);
    return r < 0 ? (int)r : 0;
}

/* The end of every request: issued is what the rbd_aio_* call returned (it refused the
 * request, or c now tracks it). */
static int await(rbd_completion_t c, int issued)
{
    if (issued < 0) {
        rbd_aio_release(c);
        return issued;
    }
    return finish(c);
}

static int new_completion(rbd_completion_t *c)
{
    return rbd_aio_create_completion(NULL, NULL, c);
}

static uint64_t node_size(const vd_node *n)
{
    return __atomic_load_n(&n->size, __ATOMIC_ACQUIRE);
}

/* A write past the end grows the image first: a format on top appends that way (QEMU's
 * driver does the same), and librbd refuses requests past the end. */
static int grow_to(vd_node *n, uint64_t end)
{
    rbdd_state *s = n->opaque;
    if (end <= node_size(n)) {
        return 0;
    }
    pthread_mutex_lock(&s->resize_lock);
    int ret = 0;
    if (end > node_size(n)) {
        ret = rbd_resize(s->image, end);
        if (ret == 0) {
            __atomic_store_n(&n->size, end, __ATOMIC_RELEASE);
        } else {
            vd_node_set_error(n, "error resizing %s: %s", s->desc, strerror(-ret));
        }
    }
    pthread_mutex_unlock(&s->resize_lock);
    return ret;
}

static int io_error(vd_node *n, const char *what, int ret)
{
    rbdd_state *s = n->opaque;
    if (ret == -ESHUTDOWN) {
        vd_node_set_error(n, "%s %s: this client was blocklisted (another host broke its "
                          "lock)", what, s->desc);
    } else {
        vd_node_set_error(n, "%s %s: %s", what, s->desc, strerror(-ret));
    }
    return ret;
}

int rbdd_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    rbdd_state *s = n->opaque;
    uint64_t size = node_size(n);
    /* Past the end reads as zeros, as a file does. */
    if (off >= size) {
        memset(buf, 0, len);
        return 0;
    }
    if (len > size - off) {
        memset((char *)buf + (size - off), 0, len - (size - off));
        len = size - off;
    }
    rbd_completion_t c;
    int ret = new_completion(&c);
    if (ret == 0) {
        ret = await(c, rbd_aio_read(s->image, off, len, buf, c));
    }
    return ret < 0 ? io_error(n, "error reading", ret) : 0;
}

int rbdd_flush(vd_node *n)
{
    rbdd_state *s = n->opaque;
    if (n->open_flags & VD_OPEN_NO_FLUSH) {
        return 0;  /* cache=unsafe */
    }
    rbd_completion_t c;
    int ret = new_completion(&c);
    if (ret == 0) {
        ret = await(c, rbd_aio_flush(s->image, c));
    }
    return ret < 0 ? io_error(n, "error flushing", ret) : 0;
}

/* A write of buf, or of zeroes when buf is NULL. */
static int write_or_zero(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                         unsigned flags)
{
    rbdd_state *s = n->opaque;
    int ret = grow_to(n, off + len);
    if (ret < 0) {
        return ret;
    }
    rbd_completion_t c;
    ret = new_completion(&c);
    if (ret == 0) {
        /* librbd decides whether zeroes deallocate (an object that does not exist stays
         * so), as with QEMU 7.2: thick provisioning would allocate objects QEMU leaves
         * out. */
        ret = await(c, buf ? rbd_aio_write(s->image, off, len, buf, c)
                           : rbd_aio_write_zeroes(s->image, off, len, c, 0, 0));
    }
    if (!buf && (ret == -ENOTSUP || ret == -EOPNOTSUPP)) {
        return -ENOTSUP;
    }
    if (ret < 0) {
        return io_error(n, buf ? "error writing" : "error zeroing", ret);
    }
    return (flags & VD_REQ_FUA) ? rbdd_flush(n) : 0;
}

int rbdd_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    return write_or_zero(n, buf, len, off, flags);
}

int rbdd_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    return write_or_zero(n, NULL, len, off, flags);
}

int rbdd_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    rbdd_state *s = n->opaque;
    uint64_t size = node_size(n);
    if (off >= size) {
        return 0;
    }
    if (len > size - off) {
        len = size - off;
    }
    rbd_completion_t c;
    int ret = new_completion(&c);
    if (ret == 0) {
        ret = await(c, rbd_aio_discard(s->image, off, len, c));
    }
    return ret < 0 ? io_error(n, "error discarding", ret) : 0;
}

/* The walk over the allocated extents from off: the longest run that is all data or all
 * holes. librbd reports the extents in order and stops when the callback returns < 0. */
typedef struct diff_walk {
    uint64_t off, end;       /* the range asked about */
    uint64_t upto;           /* data runs to here (data) or the first data starts here */
    bool data, done;
} diff_walk;

#define WALK_STOP (-ECANCELED)

static int diff_cb(uint64_t start, size_t len, int exists, void *arg)
{
    diff_walk *w = arg;
    if (!exists) {
        return 0;  /* a discarded object: a hole like any other */
    }
    uint64_t end = start + len;
    if (end <= w->off) {
        return 0;
    }
    if (start < w->off) {
        start = w->off;
    }
    if (!w->data) {
        if (start > w->off) {   /* a hole first: it ends here */
            w->upto = start;
            w->done = true;
            return WALK_STOP;
        }
        w->data = true;
    } else if (start > w->upto) {  /* data, then a hole: the data run ends */
        w->done = true;
        return WALK_STOP;
    }
    w->upto = end;
    return w->upto >= w->end ? WALK_STOP : 0;
}

int rbdd_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    rbdd_state *s = n->opaque;
    st->file = n;
    st->offset = off;
    st->flags = VD_BS_ALLOCATED | VD_BS_OFFSET | VD_BS_DATA;
    st->pnum = len;
    /* Without a valid fast-diff map, finding holes would read every object's existence
     * from the cluster: everything is data then, as QEMU says too. */
    uint64_t features = 0, flags = 0;
    if (rbd_get_features(s->image, &features) < 0 || !(features & RBD_FEATURE_FAST_DIFF) ||
        rbd_get_flags(s->image, &flags) < 0 || (flags & RBD_FLAG_FAST_DIFF_INVALID)) {
        return 0;
    }
    diff_walk w = {.off = off, .end = off + len, .upto = off + len};
    int ret = rbd_diff_iterate2(s->image, NULL, off, len, 1, 1, diff_cb, &w);
    if (ret < 0 && ret != WALK_STOP) {
        return 0;  /* the map could not be read: data, which is never wrong */
    }
    if (!w.data) {
        st->flags = VD_BS_ALLOCATED | VD_BS_OFFSET | VD_BS_ZERO;
    }
    uint64_t upto = w.upto < w.end ? w.upto : w.end;
    st->pnum = upto > off ? upto - off : len;
    return 0;
}

int rbdd_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                  vd_error **errp)
{
    (void)shrink;
    rbdd_state *s = n->opaque;
    if (strcmp(prealloc, "off")) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Unsupported preallocation "
                            "mode '%s'", prealloc);
    }
    pthread_mutex_lock(&s->resize_lock);
    int ret = rbd_resize(s->image, size);
    if (ret == 0) {
        __atomic_store_n(&n->size, size, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&s->resize_lock);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "failed to resize rbd image: %s",
                            strerror(-ret));
    }
    return 0;
}

#endif
