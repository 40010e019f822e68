/* QEMU's compress filter: every write through it is stored compressed by the format below
 * ("file", which must support compressed writes). Requests are aligned to that format's
 * cluster size (the core reads and rewrites the rest of a partly written cluster), since
 * compressed data is stored a whole cluster at a time. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"

static const char *const compress_runtime_opts[] = {"file", NULL};

static int compress_open(vd_node *n, unsigned flags, vd_error **errp)
{
    vd_node *child = NULL;
    int ret = vd_node_open_child(n, "file", &child, errp);
    if (ret < 0) {
        return ret;
    }
    vd_image_info info;
    memset(&info, 0, sizeof(info));
    if (!child->drv->pwrite_compressed || !child->drv->get_info ||
        child->drv->get_info(child, &info, NULL) < 0 || !info.has_cluster_size) {
        vd_image_info_clear(&info);
        ret = vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Compression is not supported "
                           "for underlying format: %s", child->drv->name);
        vd_node_close(child);
        return ret;
    }
    uint64_t cluster = info.cluster_size;
    vd_image_info_clear(&info);
    /* A last partial cluster could not be written whole: QEMU's permission check refuses
     * such a disk read-write. */
    if ((flags & VD_OPEN_RDWR) && child->size % cluster) {
        vd_node_close(child);
        return vd_error_set(errp, VD_ERR_INVALID, EPERM, "Cannot get 'write' permission "
                            "without 'resize': Image size is not a multiple of request "
                            "alignment");
    }
    n->file = child;
    n->size = child->size;
    n->request_alignment = (uint32_t)cluster;
    free(n->filename);
    n->filename = strdup(child->filename);
    n->realpath = child->realpath ? strdup(child->realpath) : NULL;
    if (!n->filename) {
        abort();
    }
    return 0;
}

static int compress_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    return vd_node_pread(n->file, buf, len, off);
}

static int compress_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                           unsigned flags)
{
    int ret = vd_node_pwrite_compressed(n->file, buf, len, off);
    return ret == 0 && (flags & VD_REQ_FUA) ? vd_node_flush(n->file) : ret;
}

static int compress_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    return vd_node_pwrite_zeroes(n->file, off, len, flags);
}

static int compress_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    return vd_node_pdiscard(n->file, off, len);
}

static int compress_flush(vd_node *n)
{
    return vd_node_flush(n->file);
}

const vd_driver vd_compress_driver = {
    .name = "compress",
    .is_format = false,
    .runtime_opts = compress_runtime_opts,
    .open = compress_open,
    .pread = compress_pread,
    .pwrite = compress_pwrite,
    .pwrite_zeroes = compress_pwrite_zeroes,
    .pdiscard = compress_pdiscard,
    .flush = compress_flush,
    .block_status = vd_filter_block_status,
    .allocated_size = vd_filter_allocated_size,
};
