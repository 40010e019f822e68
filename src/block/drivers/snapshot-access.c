/* QEMU's snapshot-access: a read-only view of the point in time a copy-before-write
 * filter keeps (its `file`), for a backup tool to pull over NBD while the guest writes
 * (fleecing). Discards tell the filter a range was read and is no longer needed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/cbw.h"
#include "util/common.h"

static const char *const sa_runtime_opts[] = {"file", NULL};

static int sa_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    vd_node *child = NULL;
    int r = vd_node_open_child(n, "file", &child, errp);
    if (r < 0) {
        return r;
    }
    n->file = child;
    if (!vd_cbw_of(child)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'%s' is not a copy-before-write "
                            "filter: snapshot-access reads the point in time of one",
                            child->node_name ? child->node_name : child->filename);
    }
    free(n->filename);
    n->filename = vd_xstrdup(child->filename);
    n->size = child->size;
    n->open_flags &= ~VD_OPEN_RDWR;
    return 0;
}

static int sa_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    return vd_cbw_snapshot_read(vd_cbw_of(n->file), buf, len, off);
}

static int sa_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    return vd_cbw_snapshot_status(vd_cbw_of(n->file), off, len, st);
}

static int sa_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    return vd_cbw_snapshot_discard(vd_cbw_of(n->file), off, len);
}

const vd_driver vd_snapshot_access_driver = {
    .name = "snapshot-access",
    .is_format = false,
    .runtime_opts = sa_runtime_opts,
    .open = sa_open,
    .pread = sa_pread,
    .pdiscard = sa_pdiscard,
    .block_status = sa_block_status,
};
