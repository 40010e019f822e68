/* The external snapshot action (QMP blockdev-snapshot-sync): prepare creates and opens a new
 * overlay backed by the handle's current top; commit flushes the old top, hangs it under
 * the overlay and points the handle at the overlay; abort puts the old top back and
 * removes the overlay file. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot/actions.h"
#include "vdisk/graph.h"

/* The open flags the overlay takes over from the old top: how the handle was opened, not
 * the one-shot check/repair modes. Its backing is attached by hand at commit. */
#define INHERITED_FLAGS (VD_OPEN_RDWR | VD_OPEN_NOCACHE | VD_OPEN_WRITETHROUGH | \
                         VD_OPEN_UNMAP | VD_OPEN_NO_FLUSH)

/* The backing name the overlay stores. A reader resolves a relative name against the
 * overlay's directory, so the old top's name works as given only when it is absolute or
 * the overlay lies in the current directory; otherwise its canonical path is stored. */
static char *backing_name(const char *overlay, const vd_node *top)
{
    const char *name = top->filename;
    if (name[0] != '/' && strchr(overlay, '/')) {
        name = top->realpath;
    }
    return name ? strdup(name) : NULL;
}

static int create_overlay(vd_disk *d, const char *overlay, const char *fmt, vd_error **errp)
{
    vd_node *top = d->node;
    char *bname = backing_name(overlay, top);
    if (!bname) {
        return vd_error_set(errp, VD_ERR_IO, ENOENT, "Could not find the path of '%s' to "
                            "store as the backing file of '%s'", top->filename, overlay);
    }
    vd_opts *o = vd_opts_new();
    int ret = vd_opts_set(o, "backing_file", bname);
    if (ret == 0) {
        ret = vd_opts_set(o, "backing_fmt", top->drv->name);
    }
    if (ret < 0) {
        ret = vd_error_set(errp, VD_ERR_NOMEM, -ret, "Could not create '%s': %s", overlay,
                           strerror(-ret));
    } else {
        /* Unsafe: the backing file is this process's open top; its size and format are
         * known, so it is not opened a second time. */
        ret = vd_create(d->engine, overlay, fmt, top->size, o, VD_CREATE_UNSAFE, errp);
    }
    vd_opts_free(o);
    free(bname);
    return ret;
}

/* An overlay that is a node already (QMP blockdev-snapshot), with QEMU's refusals. */
static int prepare_overlay_node(vd_snap_action *s, vd_disk *d, vd_node *top, vd_error **errp)
{
    vd_node *ov = NULL;
    int ret = vd_graph_ref(d->engine, s->act->overlay_node, &ov, errp);
    if (ret < 0) {
        return ret;
    }
    if (vd_graph_has_claims(ov)) {
        ret = vd_error_set(errp, VD_ERR_BUSY, EBUSY, "The overlay is already in use");
    } else if (ov->backing) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The overlay already has a backing "
                           "image");
    } else if (!ov->drv->is_format || !ov->drv->set_backing) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The overlay does not support "
                           "backing images");
    } else if (!(ov->open_flags & VD_OPEN_RDWR)) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EACCES, "Block node is read-only");
    }
    for (vd_node *p = top; ret == 0 && p; p = p->backing) {
        if (p == ov) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Making '%s' a backing child of "
                               "'%s' would create a cycle", top->node_name, ov->node_name);
        }
    }
    if (ret < 0) {
        vd_node_close(ov);
        return ret;
    }
    s->overlay = ov;
    s->old_top = vd_disk_new(d->engine, top, false);
    s->swapped = false;
    return 0;
}

static int ext_prepare(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    vd_disk *d = s->act->disk;
    vd_node *top = d->node;
    const char *overlay = s->act->overlay;
    const char *fmt = s->act->overlay_format ? s->act->overlay_format : "qcow2";

    if (!overlay || !overlay[0]) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "An external snapshot needs the "
                            "name of the overlay file");
    }
    if (top->overlay || !d->owns_node) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node is busy: it is the backing file "
                            "of '%s'", top->overlay ? top->overlay->filename : "another image");
    }
    if (s->act->overlay_node) {
        return prepare_overlay_node(s, d, top, errp);
    }
    if (top->registered && s->act->overlay_node_name &&
        vd_blockdev_exists(d->engine, s->act->overlay_node_name)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "New overlay node-name already "
                            "in use");
    }
    bool exists = s->act->overlay_exists;
    struct stat st;
    int err = lstat(overlay, &st) == 0 ? EEXIST : (errno == ENOENT ? 0 : errno);
    if (exists ? err != EEXIST : err != 0) {
        err = exists ? (err ? err : ENOENT) : err;
        return vd_error_set(errp, VD_ERR_INVALID, err, "Could not %s '%s': %s",
                            exists ? "open" : "create", overlay, strerror(err));
    }
    int ret = exists ? 0 : create_overlay(d, overlay, fmt, errp);
    if (ret == 0) {
        unsigned flags = (top->open_flags & INHERITED_FLAGS) | VD_OPEN_NO_BACKING;
        ret = vd_node_open(d->engine, overlay, fmt, flags, &s->overlay, errp);
    }
    if (ret < 0) {
        if (!exists) {
            /* The file did not exist a moment ago: whatever is there now is ours. */
            unlink(overlay);
        }
        return ret;
    }
    s->old_top = vd_disk_new(d->engine, top, false);
    s->swapped = false;
    return 0;
}

static int ext_commit(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    vd_disk *d = s->act->disk;
    vd_node *top = d->node;
    /* Everything written so far belongs to the snapshot: make it durable before the old
     * top turns into a read-only backing file. */
    int ret = vd_node_flush(top);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "Could not flush the image before the "
                            "snapshot: %s", strerror(-ret));
    }
    s->old_flags = top->open_flags;
    top->open_flags &= ~VD_OPEN_RDWR;
    /* In a graph of named nodes, the old top's own file turns read-only with it, as QEMU
     * reopens the two (a file other nodes share keeps its mode). */
    if (top->registered && top->file && top->file->parents &&
        !top->file->parents->next) {
        s->old_file_flags = top->file->open_flags;
        top->file->open_flags &= ~VD_OPEN_RDWR;
    } else {
        s->old_file_flags = 0;
    }
    top->overlay = s->overlay;
    s->overlay->backing = top;
    s->overlay->open_flags &= ~VD_OPEN_NO_BACKING;
    /* The handle's settings move with it. */
    s->overlay->compress_level = __atomic_load_n(&top->compress_level, __ATOMIC_RELAXED);
    /* Backing handles already handed out stay valid: the old top's handle goes in front. */
    s->old_top->backing = d->backing;
    d->backing = s->old_top;
    vd_disk_replace_node_locked(d, s->overlay);
    if (top->registered) {
        vd_graph_link_overlay(s->overlay, s->act->overlay_node_name);
    }
    s->swapped = true;
    return 0;
}

static int ext_abort(vd_txn_action *a, vd_error **errp)
{
    vd_snap_action *s = a->opaque;
    vd_disk *d = s->act->disk;
    if (s->swapped) {
        vd_node *top = s->old_top->node;
        vd_disk_replace_node_locked(d, top);
        d->backing = s->old_top->backing;
        s->old_top->backing = NULL;
        top->open_flags = s->old_flags;
        if (s->old_file_flags) {
            top->file->open_flags = s->old_file_flags;
        }
        top->overlay = NULL;
        vd_graph_unlink_backing(s->overlay);
        s->overlay->backing = NULL;
        s->swapped = false;
    }
    /* Nothing was written to the overlay through the handle (the transaction holds it),
     * so closing it can only fail on its own empty metadata; the file goes anyway. */
    vd_node_close(s->overlay);
    s->overlay = NULL;
    if (s->act->overlay_exists || s->act->overlay_node) {
        return 0;   /* not ours to remove */
    }
    if (unlink(s->act->overlay) < 0) {
        return vd_error_set(errp, VD_ERR_IO, errno, "Could not remove '%s': %s",
                            s->act->overlay, strerror(errno));
    }
    return 0;
}

static void ext_clean(vd_txn_action *a)
{
    vd_snap_action *s = a->opaque;
    if (!s->swapped) {
        vd_disk_free(s->old_top);  /* not linked into the handle's chain */
    }
    s->old_top = NULL;
}

static const vd_txn_ops external_ops = {
    .prepare = ext_prepare,
    .commit = ext_commit,
    .abort = ext_abort,
    .clean = ext_clean,
};

void vd_snap_action_external(vd_txn_action *a, vd_snap_action *s)
{
    memset(a, 0, sizeof(*a));
    a->ops = &external_ops;
    a->disk = s->act->disk;
    a->label = a->disk->node->filename;
    a->opaque = s;
}
