/* QEMU's null-co and null-aio protocols: a disk of a given size (1 GiB unless told) that
 * forgets what is written and reads as zeros with read-zeroes=on, or leaves the buffer as
 * it was without (the fastest read there is, for benchmarks of the layers above). An
 * optional latency-ns delays each request. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/block.h"

typedef struct null_state {
    bool read_zeroes;
    uint64_t latency_ns;
} null_state;

static const char *const null_runtime_opts[] = {"size", "read-zeroes", "latency-ns", NULL};

static int null_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    uint64_t size, latency;
    bool zeroes;
    int ret = vd_tree_get_size(n->options, "size", NULL, 1ull << 30, &size, errp);
    if (ret == 0) {
        ret = vd_tree_get_bool(n->options, "read-zeroes", NULL, false, &zeroes, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_uint(n->options, "latency-ns", NULL, 0, &latency, errp);
    }
    if (ret < 0) {
        return ret;
    }
    if (size > INT64_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "size must be at most %lld",
                            (long long)INT64_MAX);
    }
    null_state *s = calloc(1, sizeof(*s));
    if (!s) {
        abort();
    }
    s->read_zeroes = zeroes;
    s->latency_ns = latency;
    n->opaque = s;
    n->size = size;
    free(n->filename);
    n->filename = strdup(n->drv->name[5] == 'c' ? "null-co://" : "null-aio://");
    if (!n->filename) {
        abort();
    }
    return 0;
}

static void null_close(vd_node *n)
{
    free(n->opaque);
}

static void delay(const vd_node *n)
{
    const null_state *s = n->opaque;
    if (s->latency_ns) {
        struct timespec ts = {(time_t)(s->latency_ns / 1000000000u),
                              (long)(s->latency_ns % 1000000000u)};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
    }
}

static int null_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    (void)off;
    const null_state *s = n->opaque;
    delay(n);
    if (s->read_zeroes) {
        memset(buf, 0, len);
    }
    return 0;
}

static int null_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    (void)buf, (void)len, (void)off, (void)flags;
    delay(n);
    return 0;
}

static int null_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    return null_pwrite(n, NULL, len, off, flags);
}

static int null_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    return null_pwrite(n, NULL, len, off, 0);
}

static int null_flush(vd_node *n)
{
    delay(n);
    return 0;
}

/* As QEMU answers: every byte is "here" at its own offset, and zero with read-zeroes. */
static int null_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    const null_state *s = n->opaque;
    st->pnum = len;
    st->flags = VD_BS_ALLOCATED | VD_BS_OFFSET | (s->read_zeroes ? VD_BS_ZERO : 0);
    st->offset = off;
    st->file = n;
    return 0;
}

static int64_t null_allocated_size(vd_node *n)
{
    (void)n;
    return 0;
}

#define NULL_DRIVER(NAME)                                                                    \
    {                                                                                        \
        .name = NAME, .is_format = false, .runtime_opts = null_runtime_opts,                 \
        .open = null_open, .close = null_close, .pread = null_pread, .pwrite = null_pwrite,  \
        .pwrite_zeroes = null_pwrite_zeroes, .pdiscard = null_pdiscard, .flush = null_flush, \
        .block_status = null_block_status, .allocated_size = null_allocated_size,           \
    }

const vd_driver vd_null_co_driver = NULL_DRIVER("null-co");
const vd_driver vd_null_aio_driver = NULL_DRIVER("null-aio");
