/* QEMU's copy-on-read filter: reads of ranges that the image below ("file", a format node)
 * does not hold itself come from its backing chain and are then written into it, whole
 * clusters at a time, so the next read finds them in the top image. Data that reads as
 * zeros is written as zeros (a zero cluster, no data). Writes pass through.
 *
 * A copy must not overwrite a write that lands between its read and its write, so copies
 * and writes through the filter take turns (one lock); reads of data the top image holds
 * take no lock. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "util/zero.h"

#define COR_CHUNK (16u << 20)   /* the most copied in one go, as QEMU's bounce buffer */

typedef struct cor_state {
    pthread_mutex_t lock;
    uint64_t cluster;        /* the unit copied: the image's cluster size */
} cor_state;

static const char *const cor_runtime_opts[] = {"file", NULL};

static int cor_open(vd_node *n, unsigned flags, vd_error **errp)
{
    /* It writes what it reads: QEMU's permission check refuses it read-only. */
    if (!(flags & VD_OPEN_RDWR)) {
        return vd_error_set(errp, VD_ERR_INVALID, EPERM, "Block node is read-only");
    }
    vd_node *child = NULL;
    int ret = vd_node_open_child(n, "file", &child, errp);
    if (ret < 0) {
        return ret;
    }
    cor_state *s = calloc(1, sizeof(*s));
    if (!s) {
        abort();
    }
    pthread_mutex_init(&s->lock, NULL);
    s->cluster = 65536;
    vd_image_info info;
    memset(&info, 0, sizeof(info));
    if (child->drv->get_info && child->drv->get_info(child, &info, NULL) == 0 &&
        info.has_cluster_size && info.cluster_size) {
        s->cluster = info.cluster_size;
    }
    vd_image_info_clear(&info);
    n->opaque = s;
    n->file = child;
    n->size = child->size;
    n->request_alignment = child->request_alignment;
    n->max_transfer = child->max_transfer;
    free(n->filename);
    n->filename = strdup(child->filename);
    n->realpath = child->realpath ? strdup(child->realpath) : NULL;
    if (!n->filename) {
        abort();
    }
    return 0;
}

static void cor_close(vd_node *n)
{
    cor_state *s = n->opaque;
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Copies [off, off+len) (cluster-aligned, inside the disk) from the chain into the top
 * image, unless the top image came to hold it meanwhile; buf gets the data. */
static int copy_up(vd_node *n, uint8_t *buf, uint64_t off, uint64_t len)
{
    cor_state *s = n->opaque;
    vd_node *child = n->file;
    pthread_mutex_lock(&s->lock);
    int ret = vd_node_pread(child, buf, len, off);
    if (ret == 0) {
        vd_node_status st;
        ret = vd_node_block_status(child, off, len, &st);
        /* Allocated by a write since the caller looked: it is the top image's now. */
        if (ret == 0 && !(st.flags & VD_BS_ALLOCATED && st.pnum >= len)) {
            ret = vd_buf_is_zero(buf, len) ? vd_node_pwrite_zeroes(child, off, len, 0)
                                       : vd_node_pwrite(child, buf, len, off, 0);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int cor_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    cor_state *s = n->opaque;
    vd_node *child = n->file;
    uint64_t start = off / s->cluster * s->cluster;
    uint64_t end = (off + len + s->cluster - 1) / s->cluster * s->cluster;
    end = end < n->size ? end : n->size;
    uint8_t *bounce = NULL;
    int ret = 0;
    for (uint64_t pos = start; pos < end && ret == 0;) {
        vd_node_status st;
        ret = vd_node_block_status(child, pos, end - pos, &st);
        if (ret < 0) {
            break;
        }
        uint64_t run = st.pnum < COR_CHUNK ? st.pnum : COR_CHUNK;
        uint64_t lo = pos > off ? pos : off;
        uint64_t hi = pos + run < off + len ? pos + run : off + len;
        if (st.flags & VD_BS_ALLOCATED) {
            ret = hi > lo ? vd_node_pread(child, (uint8_t *)buf + (lo - off), hi - lo, lo) : 0;
        } else {
            if (run < s->cluster && pos + run < end) {
                run = s->cluster - pos % s->cluster;  /* whole clusters */
            }
            if (!bounce && !(bounce = malloc(COR_CHUNK))) {
                return -ENOMEM;
            }
            ret = copy_up(n, bounce, pos, run);
            if (ret == 0 && hi > lo) {
                memcpy((uint8_t *)buf + (lo - off), bounce + (lo - pos), hi - lo);
            }
        }
        pos += run;
    }
    free(bounce);
    return ret;
}

static int cor_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    cor_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = vd_node_pwrite(n->file, buf, len, off, flags);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int cor_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    cor_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = vd_node_pwrite_zeroes(n->file, off, len, flags);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int cor_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    cor_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = vd_node_pdiscard(n->file, off, len);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int cor_flush(vd_node *n)
{
    return vd_node_flush(n->file);
}

const vd_driver vd_copy_on_read_driver = {
    .name = "copy-on-read",
    .is_format = false,
    .runtime_opts = cor_runtime_opts,
    .open = cor_open,
    .close = cor_close,
    .pread = cor_pread,
    .pwrite = cor_pwrite,
    .pwrite_zeroes = cor_pwrite_zeroes,
    .pdiscard = cor_pdiscard,
    .flush = cor_flush,
    .block_status = vd_filter_block_status,
    .allocated_size = vd_filter_allocated_size,
};
