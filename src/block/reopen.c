/* Reopening a format node and its file read-write and back, in place: a commit's base is a
 * backing node opened read-only that the job must write, and goes back to read-only after
 * an intermediate commit, as QEMU's does. */
#include <errno.h>

#include "block/block.h"

/* A filter without an op of its own (blkdebug, logwrites) passes the reopen to its
 * child: its own state does not depend on the mode. */
static bool passes_through(const vd_node *n)
{
    return !n->drv->reopen_rw && !n->drv->is_format && n->file;
}

static bool can_reopen(const vd_node *n)
{
    if (passes_through(n)) {
        return can_reopen(n->file);
    }
    return n->drv->reopen_rw && (!n->drv->is_format || (n->file && can_reopen(n->file)));
}

static void set_rw(vd_node *n, bool rw)
{
    if (rw) {
        n->open_flags |= VD_OPEN_RDWR;
    } else {
        n->open_flags &= ~(unsigned)VD_OPEN_RDWR;
    }
}

int vd_node_reopen_rw(vd_node *n, bool rw, vd_error **errp)
{
    if (((n->open_flags & VD_OPEN_RDWR) != 0) == rw) {
        return 0;
    }
    if (!can_reopen(n)) {
        const vd_node *bad = n->drv->reopen_rw && n->file ? n->file : n;
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Block format '%s' used by "
                            "node '%s' does not support reopening files", bad->drv->name,
                            bad->node_name ? bad->node_name : "");
    }
    if (passes_through(n)) {
        int ret = vd_node_reopen_rw(n->file, rw, errp);
        if (ret == 0) {
            set_rw(n, rw);
        }
        return ret;
    }
    vd_node *f = n->drv->is_format ? n->file : NULL;
    int ret;
    if (rw) {
        /* The file first: the format writes its header as it becomes writable. */
        if (f && (ret = vd_node_reopen_rw(f, true, errp)) < 0) {
            return ret;
        }
        ret = n->drv->reopen_rw(n, true, errp);
        if (ret < 0) {
            if (f) {
                vd_node_reopen_rw(f, false, NULL);
            }
            return ret;
        }
        set_rw(n, true);
        return 0;
    }
    /* The format first: it stores and flushes what it has before its file goes. */
    if ((ret = n->drv->reopen_rw(n, false, errp)) < 0) {
        return ret;
    }
    set_rw(n, false);
    if (f && (ret = vd_node_reopen_rw(f, false, errp)) < 0) {
        return ret;
    }
    return 0;
}
