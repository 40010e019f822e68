/* Block replication's operations (QEMU's replication_start/do_checkpoint/get_error/stop),
 * on every replication node of an engine, newest first, stopping at the first error.
 *
 * A secondary's failover commits what its active and hidden disks hold into the
 * secondary disk while its I/O goes on: a write notifier on the active disk marks what
 * the secondary writes meanwhile, a first pass copies everything the two layers hold,
 * then the marked ranges are copied until none is left; the last of them are copied with
 * the node's requests held back at its gate, the secondary disk is flushed, and the node
 * takes the secondary disk as its file child. The layers above then go. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/cbw.h"
#include "block/copy.h"
#include "block/disk.h"
#include "block/engine.h"
#include "block/replication.h"
#include "util/common.h"

#define MAX_NODES 64
#define MAX_USERS 64
#define COPY_CHUNK (4u << 20)
#define DIRTY_GRANULE 65536u
#define LIVE_SWEEPS 4             /* copies of what the secondary writes during a failover */
#define HELD_BYTES (8u << 20)     /* what is left for the copy with its requests held */

/* Applies op to every replication node of the engine, newest first, stopping at the
 * first error (QEMU's replication_*_all). The nodes are held by a reference meanwhile. */
typedef int (*repl_op)(vd_repl *r, const void *arg, vd_error **errp);

static int for_each_node(vd_engine *e, repl_op op, const void *arg, vd_error **errp)
{
    vd_node *nodes[MAX_NODES];
    size_t nb = 0;
    pthread_mutex_lock(&e->graph_lock);
    for (vd_node *n = e->graph; n && nb < MAX_NODES; n = n->graph_next) {
        if (vd_repl_of(n)) {
            n->refcnt++;
            nodes[nb++] = n;
        }
    }
    pthread_mutex_unlock(&e->graph_lock);
    int ret = 0;
    for (size_t i = 0; i < nb; i++) {
        if (ret == 0) {
            ret = op(vd_repl_of(nodes[i]), arg, errp);
        }
        vd_node_unref(nodes[i]);
    }
    return ret;
}

static repl_stage stage_of(vd_repl *r)
{
    pthread_mutex_lock(&r->lock);
    repl_stage s = r->stage;
    pthread_mutex_unlock(&r->lock);
    return s;
}

static void set_stage(vd_repl *r, repl_stage s, int error)
{
    pthread_mutex_lock(&r->lock);
    r->stage = s;
    r->error = error;
    pthread_mutex_unlock(&r->lock);
}

static void record_error(vd_repl *r, int error)
{
    pthread_mutex_lock(&r->lock);
    r->error = r->error ? r->error : error;
    pthread_mutex_unlock(&r->lock);
}

/* ---- the secondary's layers ------------------------------------------------------------- */

void repl_secondary_release(vd_repl *r)
{
    vd_node *nodes[3] = {r->cbw, r->hidden, r->secondary};
    r->cbw = r->hidden = r->secondary = NULL;
    if (nodes[1] && r->hidden_was_ro && r->node->file != nodes[2]) {
        vd_node_reopen_rw(nodes[1], false, NULL);
    }
    r->hidden_was_ro = false;
    /* The filter first: its notifier leaves the secondary disk with every writer held. */
    for (int i = 0; i < 3; i++) {
        if (nodes[i]) {
            vd_node_unref(nodes[i]);
        }
    }
}

/* Empties the active disk, then the hidden disk (the caller holds every request back). */
static int empty_layers(vd_repl *r, vd_error **errp)
{
    vd_node *active = r->node->file;
    int ret = active->drv->make_empty(active, errp);
    return ret < 0 ? ret : r->hidden->drv->make_empty(r->hidden, errp);
}

/* Empties the active and hidden disks with the node's requests and the secondary disk's
 * writers held still, and makes every cluster of the secondary disk to be saved again. */
static int secondary_checkpoint(vd_repl *r, vd_error **errp)
{
    vd_cbw *c = vd_cbw_of(r->cbw);
    if (!c) {
        return vd_error_set(errp, VD_ERR_GENERIC, EIO, "Backup job was cancelled "
                            "unexpectedly");
    }
    repl_gate_close(r);
    vd_disk *users[MAX_USERS];
    size_t nb = vd_node_users_drain_begin(r->secondary, NULL, users, MAX_USERS);
    vd_node_drain_writes(r->secondary);
    vd_cbw_rearm(c);
    int ret = empty_layers(r, errp);
    vd_disks_drain_end(users, nb);
    repl_gate_open(r);
    if (ret < 0) {
        record_error(r, ret);
    }
    return ret;
}

static int secondary_start(vd_repl *r, vd_error **errp)
{
    vd_node *n = r->node, *active = n->file;
    if (!active->backing) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Active disk doesn't have "
                            "backing file");
    }
    vd_node *hidden = active->backing;
    if (!hidden->backing) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Hidden disk doesn't have "
                            "backing file");
    }
    vd_node *secondary = hidden->backing;
    if (!vd_graph_has_claims(secondary)) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "The secondary disk doesn't have "
                            "block backend");
    }
    if (active->size != hidden->size || hidden->size != secondary->size) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Active disk, hidden disk, "
                            "secondary disk's length are not the same");
    }
    if (!active->drv->make_empty || !hidden->drv->make_empty) {
        return vd_error_set(errp, VD_ERR_GENERIC, ENOTSUP, "Active disk or hidden disk "
                            "doesn't support make_empty");
    }
    vd_node *top = NULL;
    bool top_ok = vd_graph_ref(n->engine, r->top_id, &top, NULL) == 0 &&
                  vd_graph_root_above(top, n);
    if (top) {
        vd_node_unref(top);
    }
    if (!top_ok) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "No top_bs or it is invalid");
    }
    /* The hidden disk was opened as a backing file: read-only until now. */
    bool hidden_ro = !(hidden->open_flags & VD_OPEN_RDWR);
    int ret = vd_node_reopen_rw(hidden, true, errp);
    if (ret == 0 && !(secondary->open_flags & VD_OPEN_RDWR)) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, EACCES, "The secondary disk '%s' is "
                           "read-only", secondary->node_name ? secondary->node_name : "");
    }
    if (ret < 0) {
        if (hidden_ro) {
            vd_node_reopen_rw(hidden, false, NULL);
        }
        return ret;
    }
    vd_node_ref(hidden);
    vd_node_ref(secondary);
    r->hidden = hidden;
    r->secondary = secondary;
    r->hidden_was_ro = hidden_ro;
    /* QEMU's replication runs a sync=none backup from the secondary disk into the hidden
     * disk: its copy-before-write filter is all of it. */
    vd_node_ref(hidden);
    vd_node_ref(secondary);
    vd_cbw_params p = {.source = secondary, .target = hidden,
                       .on_error = VD_CBW_BREAK_GUEST_WRITE};
    if ((ret = vd_cbw_new(n->engine, &p, &r->cbw, errp)) < 0) {
        vd_node_unref(hidden);
        vd_node_unref(secondary);
        r->cbw = NULL;
        repl_secondary_release(r);
        return ret;
    }
    set_stage(r, REPL_RUNNING, 0);
    ret = secondary_checkpoint(r, errp);
    if (ret == 0) {
        set_stage(r, REPL_RUNNING, 0);
    }
    return ret;
}

static int start_one(vd_repl *r, const void *arg, vd_error **errp)
{
    vd_replication_mode mode = *(const vd_replication_mode *)arg;
    repl_stage s = stage_of(r);
    if (s == REPL_DONE && r->promoted) {
        return 0;              /* a secondary that failed over serves as a primary's disk */
    }
    if (s != REPL_NONE) {
        return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Block replication is running or "
                            "done");
    }
    if (r->mode != mode) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "The parameter mode's value is "
                            "invalid, needs %d, but got %d", (int)r->mode, (int)mode);
    }
    if (mode == VD_REPLICATION_PRIMARY) {
        set_stage(r, REPL_RUNNING, 0);
        return 0;
    }
    return secondary_start(r, errp);
}

int vd_replication_start_all(vd_engine *e, vd_replication_mode mode, vd_error **errp)
{
    return for_each_node(e, start_one, &mode, errp);
}

static int checkpoint_one(vd_repl *r, const void *arg, vd_error **errp)
{
    (void)arg;
    if (r->promoted || r->mode == VD_REPLICATION_PRIMARY) {
        return 0;              /* nothing to do (QEMU's rule, for both) */
    }
    if (stage_of(r) != REPL_RUNNING) {
        /* QEMU's would empty the layers of a secondary that never started. */
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Block replication is not "
                            "running");
    }
    return secondary_checkpoint(r, errp);
}

int vd_replication_do_checkpoint_all(vd_engine *e, vd_error **errp)
{
    return for_each_node(e, checkpoint_one, NULL, errp);
}

static int error_one(vd_repl *r, const void *arg, vd_error **errp)
{
    (void)arg;
    pthread_mutex_lock(&r->lock);
    repl_stage s = r->stage;
    int err = r->error;
    pthread_mutex_unlock(&r->lock);
    if (s == REPL_NONE) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Block replication is not "
                            "running");
    }
    return err ? vd_error_set(errp, VD_ERR_GENERIC, -err, "I/O error occurred") : 0;
}

int vd_replication_get_error_all(vd_engine *e, vd_error **errp)
{
    return for_each_node(e, error_one, NULL, errp);
}

/* ---- failover ------------------------------------------------------------------------------ */

static void secondary_wrote(vd_write_notifier *nt, vd_node *n, const vd_write_req *req,
                            int ret)
{
    (void)n;
    (void)ret;
    vd_repl *r = (vd_repl *)((char *)nt - offsetof(vd_repl, nt));
    if (req->kind == VD_WRITE_TRUNCATE) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    vd_hbitmap_set(r->dirty, req->off, req->len);
    pthread_mutex_unlock(&r->lock);
}

/* One sweep over the marked ranges, copying each (a write meanwhile marks its range
 * again, behind or ahead of the sweep). */
static int copy_dirty(vd_repl *r, const vd_copy_spec *spec, uint8_t *buf)
{
    for (uint64_t pos = 0;;) {
        uint64_t start, len;
        pthread_mutex_lock(&r->lock);
        bool found = vd_hbitmap_next_dirty_area(r->dirty, pos, r->node->size, &start, &len);
        if (found) {
            len = len < COPY_CHUNK ? len : COPY_CHUNK;
            vd_hbitmap_reset(r->dirty, start, len);
        }
        pthread_mutex_unlock(&r->lock);
        if (!found) {
            return 0;
        }
        bool is_read = false;
        int ret = vd_copy_range(spec, buf, COPY_CHUNK, start, len, &is_read);
        if (ret < 0) {
            return ret;
        }
        pos = start + len;
    }
}

static uint64_t dirty_bytes(vd_repl *r)
{
    pthread_mutex_lock(&r->lock);
    uint64_t n = vd_hbitmap_count(r->dirty);
    pthread_mutex_unlock(&r->lock);
    return n;
}

static void remove_notifier(vd_repl *r, vd_node *active)
{
    if (r->nt_on) {
        vd_node_drain_writes(active);
        vd_node_remove_write_notifier(active, &r->nt);
        r->nt_on = false;
    }
}

static int failover(vd_repl *r, vd_error **errp)
{
    vd_node *n = r->node, *active = n->file;
    vd_hbitmap_free(r->dirty);
    r->dirty = vd_hbitmap_new(n->size ? n->size : 1, DIRTY_GRANULE);
    uint8_t *buf = NULL;
    if (!r->dirty || posix_memalign((void **)&buf, 4096, COPY_CHUNK) != 0) {
        abort();
    }
    /* Marking starts before the first pass reads anything: a write it misses is marked. */
    r->nt = (vd_write_notifier){.after = secondary_wrote};
    vd_node_add_write_notifier(active, &r->nt);
    r->nt_on = true;
    vd_copy_spec spec = {.src = active, .dst = r->secondary, .above_depth = 2};
    vd_copy_job job = {.spec = &spec, .off = 0, .end = n->size};
    int ret = vd_copy_all(&job, errp);
    /* What the secondary wrote meanwhile, while it keeps writing: a few sweeps shrink it;
     * the rest is copied with its requests held (a busy writer would never let a live
     * copy end). */
    for (int sweep = 0; ret == 0 && sweep < LIVE_SWEEPS && dirty_bytes(r) > HELD_BYTES;
         sweep++) {
        if ((ret = copy_dirty(r, &spec, buf)) < 0) {
            vd_error_set(errp, VD_ERR_IO, -ret, "Could not commit the active and hidden "
                         "disks: %s", strerror(-ret));
        }
    }
    if (ret == 0) {
        repl_gate_close(r);
        ret = copy_dirty(r, &spec, buf);
        if (ret == 0) {
            ret = vd_node_flush(r->secondary);
        }
        if (ret < 0) {
            vd_error_set(errp, VD_ERR_IO, -ret, "Could not commit the active and hidden "
                         "disks: %s", strerror(-ret));
        } else {
            remove_notifier(r, active);
            vd_node *old = vd_graph_replace_file(n, r->secondary);
            repl_gate_open(r);
            /* The node no longer reads the layers: they go with their references. */
            vd_node_unref(old);
            free(buf);
            return 0;
        }
        repl_gate_open(r);
    }
    remove_notifier(r, active);
    free(buf);
    return ret;
}

static int stop_one(vd_repl *r, const void *arg, vd_error **errp)
{
    bool do_failover = *(const bool *)arg;
    repl_stage s = stage_of(r);
    if (r->promoted || s == REPL_FAILOVER) {
        return 0;              /* QEMU's rule: a secondary that failed over ignores it */
    }
    if (s != REPL_RUNNING) {
        /* QEMU's ignores a second stop too; a clear refusal says the first took effect. */
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Block replication is not "
                            "running");
    }
    if (r->mode == VD_REPLICATION_PRIMARY) {
        set_stage(r, REPL_DONE, 0);
        return 0;
    }
    /* The copies into the hidden disk end first. */
    vd_node *cbw = r->cbw;
    r->cbw = NULL;
    vd_node_unref(cbw);
    if (!do_failover) {
        repl_gate_close(r);
        int ret = empty_layers(r, errp);
        repl_gate_open(r);
        set_stage(r, REPL_DONE, ret);
        repl_secondary_release(r);
        return ret;
    }
    set_stage(r, REPL_FAILOVER, 0);
    int ret = failover(r, errp);
    if (ret < 0) {
        /* The buffers stay: new writes follow QEMU's failed-failover rule. */
        set_stage(r, REPL_FAILOVER_FAILED, -EIO);
        return ret;
    }
    pthread_mutex_lock(&r->lock);
    r->stage = REPL_DONE;
    r->error = 0;
    r->promoted = true;
    pthread_mutex_unlock(&r->lock);
    repl_secondary_release(r);
    return 0;
}

int vd_replication_stop_all(vd_engine *e, bool failover, vd_error **errp)
{
    return for_each_node(e, stop_one, &failover, errp);
}
