/* The raw format driver: guest offset = file offset. Also creates raw images with
 * preallocation off, falloc or full. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block.h"
#include "block/drivers/rbd-filename.h"

/* QEMU's raw options: the disk is the file's bytes [offset, offset + size). */
typedef struct raw_state {
    uint64_t offset;
    bool has_size;
} raw_state;

static const char *const raw_runtime_opts[] = {"offset", "size", NULL};

static uint64_t base(const vd_node *n)
{
    const raw_state *s = n->opaque;
    return s ? s->offset : 0;
}

static int raw_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    int64_t len = vd_node_file_length(n->file);
    if (len < 0) {
        return vd_error_set(errp, VD_ERR_IO, (int)-len, "%s: %s", n->filename,
                            strerror((int)-len));
    }
    uint64_t offset, size;
    bool has_size = vd_tree_get(n->options, "size") != NULL;
    int ret = vd_tree_get_size(n->options, "offset", NULL, 0, &offset, errp);
    if (ret == 0) {
        ret = vd_tree_get_size(n->options, "size", NULL, 0, &size, errp);
    }
    if (ret < 0) {
        return ret;
    }
    if (has_size && size % 512) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Specified size is not multiple of "
                            "512");
    }
    if (has_size && (offset > (uint64_t)len || size > (uint64_t)len - offset)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The sum of offset (%" PRIu64 ") "
                            "and size (%" PRIu64 ") has to be smaller or equal to the  actual "
                            "size of the containing file (%" PRId64 ")", offset, size, len);
    }
    if (!has_size && offset > (uint64_t)len) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Offset (%" PRIu64 ") cannot be "
                            "greater than size of the containing file (%" PRId64 ")", offset,
                            len);
    }
    if (offset || has_size) {
        raw_state *s = calloc(1, sizeof(*s));
        if (!s) {
            abort();
        }
        s->offset = offset;
        s->has_size = has_size;
        n->opaque = s;
    }
    /* QEMU counts disks in 512-byte sectors: a file of another length is a disk rounded
     * up, whose tail past the end of the file reads as zeros (the file node's reads do). */
    n->size = has_size ? size : (((uint64_t)len - offset) + 511) & ~511ull;
    n->request_alignment = n->file->request_alignment;
    return 0;
}

static void raw_close(vd_node *n)
{
    free(n->opaque);
    n->opaque = NULL;
}

static int raw_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    vd_node_event(n->file, "read_aio");
    return vd_node_pread(n->file, buf, len, base(n) + off);
}

static int raw_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    vd_node_event(n->file, "write_aio");
    return vd_node_pwrite(n->file, buf, len, base(n) + off, flags);
}

static int raw_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    return vd_node_pwrite_zeroes(n->file, base(n) + off, len, flags);
}

static int raw_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    return vd_node_pdiscard(n->file, base(n) + off, len);
}

static int raw_flush(vd_node *n)
{
    vd_node_event(n->file, "flush_to_disk");
    return vd_node_flush(n->file);
}

static int raw_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    int ret = n->file->drv->block_status(n->file, base(n) + off, len, st);
    st->flags |= VD_BS_ALLOCATED;
    return ret;
}

static int raw_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                        vd_error **errp)
{
    if (strcmp(prealloc, "off") && strcmp(prealloc, "falloc") && strcmp(prealloc, "full")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "Unsupported preallocation mode '%s' (allowed: off, falloc, full)",
                            prealloc);
    }
    const raw_state *s = n->opaque;
    if (s && s->has_size) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Cannot resize fixed-size raw "
                            "disks");
    }
    int ret = vd_node_truncate(n->file, base(n) + size, shrink, prealloc, errp);
    if (ret == 0) {
        n->size = size;
    }
    return ret;
}

static int64_t raw_allocated_size(vd_node *n)
{
    return n->file->drv->allocated_size(n->file);
}

/* Internal snapshots and the image details belong to the protocol (an RBD image's
 * snapshots and object size), as QEMU falls back to a raw node's file child. A file has
 * neither: the refusals then name raw, as before. */
static int no_snapshots(vd_node *n, vd_error **errp)
{
    return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Block format '%s' does not "
                        "support internal snapshots", n->drv->name);
}

static int raw_get_info(vd_node *n, vd_image_info *info, vd_error **errp)
{
    return n->file->drv->get_info ? n->file->drv->get_info(n->file, info, errp) : 0;
}

static int raw_snapshot_list(vd_node *n, vd_snapshot_info **out, size_t *nb, vd_error **errp)
{
    if (!n->file->drv->snapshot_list) {
        *out = NULL;
        *nb = 0;
        return 0;
    }
    return n->file->drv->snapshot_list(n->file, out, nb, errp);
}

static int raw_snapshot_create_prepare(vd_node *n, const vd_snap_params *p, void **txn,
                                       vd_error **errp)
{
    const vd_driver *d = n->file->drv;
    return d->snapshot_create_prepare && d->snapshot_commit
               ? d->snapshot_create_prepare(n->file, p, txn, errp) : no_snapshots(n, errp);
}

static int raw_snapshot_delete_prepare(vd_node *n, const char *id, const char *name,
                                       void **txn, vd_error **errp)
{
    const vd_driver *d = n->file->drv;
    return d->snapshot_delete_prepare && d->snapshot_commit
               ? d->snapshot_delete_prepare(n->file, id, name, txn, errp)
               : no_snapshots(n, errp);
}

/* Only reached after a prepare above succeeded, so the file's driver has them. */
static int raw_snapshot_commit(vd_node *n, void *txn, vd_error **errp)
{
    return n->file->drv->snapshot_commit(n->file, txn, errp);
}

static int raw_snapshot_abort(vd_node *n, void *txn, vd_error **errp)
{
    return n->file->drv->snapshot_abort(n->file, txn, errp);
}

static void raw_snapshot_clean(vd_node *n, void *txn)
{
    n->file->drv->snapshot_clean(n->file, txn);
}

static int raw_snapshot_apply(vd_node *n, const char *id_or_name, vd_error **errp)
{
    if (!n->file->drv->snapshot_apply) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "%s: Block format '%s' does "
                            "not support internal snapshots", n->filename, n->drv->name);
    }
    int ret = n->file->drv->snapshot_apply(n->file, id_or_name, errp);
    const raw_state *s = n->opaque;
    if (ret == 0 && !(s && s->has_size)) {
        n->size = n->file->size - base(n);  /* a snapshot of another size came back */
    }
    return ret;
}

static const vd_create_option raw_options[] = {
    {"size", "size", "Virtual disk size", NULL},
    {"preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)", "off"},
    {"extent_size_hint", "size", "Extent size hint for the image file, 0 to disable", NULL},
    {"nocow", "bool", "Turn off copy-on-write (valid only on btrfs)", NULL},
};

static int raw_create(vd_engine *e, const char *filename, uint64_t size, const vd_opts *opts,
                      unsigned flags, vd_error **errp)
{
    (void)flags;
    /* The options of a raw image at filename: raw's, or the protocol's there (RBD). */
    size_t nb_known = 0;
    const vd_create_option *known = vd_create_options_for("raw", filename, &nb_known);
    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        const char *k = vd_opts_key(opts, i);
        size_t j = 0;
        while (j < nb_known && strcmp(known[j].name, k)) {
            j++;
        }
        if (j == nb_known) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'", k);
        }
    }
    const char *prealloc = vd_opts_get(opts, "preallocation");
    if (!prealloc) {
        prealloc = "off";
    }
    if (strcmp(prealloc, "off") && strcmp(prealloc, "falloc") && strcmp(prealloc, "full")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "Parameter 'preallocation' does not accept value '%s' "
                            "(allowed values: off, falloc, full)", prealloc);
    }
    if (vd_opts_get(opts, "size")) {
        int ret = vd_opts_get_size(opts, "size", 0, &size, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (size == UINT64_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Image creation needs a size "
                            "parameter");
    }
    size = (size + 511) & ~511ull;
    int ret = vd_file_create(filename, opts, errp);
    if (ret < 0) {
        return ret;
    }
    vd_node *file = NULL;
    ret = vd_node_open_file(e, filename, VD_OPEN_RDWR, &file, errp);
    if (ret < 0) {
        return ret;
    }
    ret = vd_node_truncate(file, size, false, prealloc, errp);
    if (ret == 0 && size > 0 && !strcmp(prealloc, "off") && !vd_rbd_filename_prefix(filename)) {
        /* Like qemu-img, allocate the first block of a file so later alignment probing
         * finds real storage there (and `info` shows the same disk size). */
        static const char zeros[4096];
        uint64_t n = size < sizeof(zeros) ? size : sizeof(zeros);
        ret = vd_node_pwrite(file, zeros, n, 0, 0);
        if (ret < 0) {
            vd_error_set(errp, VD_ERR_IO, -ret, "%s: %s", filename, strerror(-ret));
        }
    }
    if (ret == 0) {
        ret = vd_node_flush(file);
        if (ret < 0) {
            vd_error_set(errp, VD_ERR_IO, -ret, "%s: %s", filename, strerror(-ret));
        }
    }
    vd_node_close(file);
    return ret;
}

static int raw_measure(const vd_opts *opts, uint64_t size, vd_disk *src, vd_measure_result *res,
                       vd_error **errp)
{
    (void)opts;
    (void)errp;
    if (src) {
        size = vd_disk_size(src);
    }
    size = (size + 511) & ~511ull;
    res->required = size;
    res->fully_allocated = size;
    return 0;
}

static int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1;  /* anything is raw, as a last resort */
}

const vd_driver vd_raw_driver = {
    .name = "raw",
    .is_format = true,
    .runtime_opts = raw_runtime_opts,
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .pdiscard = raw_pdiscard,
    .flush = raw_flush,
    .block_status = raw_block_status,
    .truncate = raw_truncate,
    .allocated_size = raw_allocated_size,
    .get_info = raw_get_info,
    .snapshot_list = raw_snapshot_list,
    .snapshot_create_prepare = raw_snapshot_create_prepare,
    .snapshot_delete_prepare = raw_snapshot_delete_prepare,
    .snapshot_commit = raw_snapshot_commit,
    .snapshot_abort = raw_snapshot_abort,
    .snapshot_clean = raw_snapshot_clean,
    .snapshot_apply = raw_snapshot_apply,
    .create = raw_create,
    .create_options = raw_options,
    .nb_create_options = sizeof(raw_options) / sizeof(raw_options[0]),
    .measure = raw_measure,
};
