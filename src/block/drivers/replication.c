/* QEMU's `replication` filter: options, and the I/O rules of each stage (see
 * block/replication.h). A primary node only forwards writes: reads fail, and once a
 * forwarded write failed the node stops forwarding (the secondary has to be brought in
 * sync again anyway) and fails the rest at once, so a quorum above reports the child
 * without waiting on a dead peer each time. A secondary node passes its I/O to its file
 * child: the active disk while replicating, the secondary disk after a failover. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/replication.h"
#include "vdisk/graph.h"
#include "util/common.h"

extern const vd_driver vd_replication_driver;

vd_repl *vd_repl_of(vd_node *n)
{
    return n && n->drv == &vd_replication_driver ? n->opaque : NULL;
}

/* ---- the gate ------------------------------------------------------------------------------ */

repl_stage repl_gate_enter(vd_repl *r, int *error)
{
    pthread_mutex_lock(&r->lock);
    while (r->gate_closed) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    r->in_flight++;
    repl_stage stage = r->stage;
    if (error) {
        *error = r->error;
    }
    pthread_mutex_unlock(&r->lock);
    return stage;
}

void repl_gate_exit(vd_repl *r)
{
    pthread_mutex_lock(&r->lock);
    if (--r->in_flight == 0 && r->gate_closed) {
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
}

void repl_gate_close(vd_repl *r)
{
    pthread_mutex_lock(&r->lock);
    while (r->gate_closed) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    r->gate_closed = true;
    while (r->in_flight) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
}

void repl_gate_open(vd_repl *r)
{
    pthread_mutex_lock(&r->lock);
    r->gate_closed = false;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* ---- open and close ------------------------------------------------------------------------ */

static const char *const repl_runtime_opts[] = {"file", "mode", "top-id", NULL};

static int repl_options(vd_node *n, vd_replication_mode *mode, const char **top_id,
                        vd_error **errp)
{
    const char *m = NULL;
    int r = vd_tree_get_str(n->options, "mode", NULL, &m, errp);
    if (r < 0 || (r = vd_tree_get_str(n->options, "top-id", NULL, top_id, errp)) < 0) {
        return r;
    }
    if (!m) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'mode' is missing");
    }
    if (!strcmp(m, "primary")) {
        *mode = VD_REPLICATION_PRIMARY;
        if (*top_id) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The primary side does not "
                                "support option top-id");
        }
    } else if (!strcmp(m, "secondary")) {
        *mode = VD_REPLICATION_SECONDARY;
        if (!*top_id) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Missing the option top-id");
        }
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'mode' does not accept "
                            "value '%s'", m);
    }
    return 0;
}

static int repl_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    vd_replication_mode mode = VD_REPLICATION_PRIMARY;
    const char *top_id = NULL;
    /* QEMU opens the child first: a bad child is reported before a bad mode. */
    int r = vd_node_open_child(n, "file", &n->file, errp);
    if (r < 0) {
        return r;
    }
    if ((r = repl_options(n, &mode, &top_id, errp)) < 0) {
        vd_node_close(n->file);     /* a filter's child is its own to close */
        n->file = NULL;
        return r;
    }
    vd_repl *rs = calloc(1, sizeof(*rs));
    if (!rs) {
        abort();
    }
    rs->node = n;
    rs->mode = mode;
    rs->top_id = top_id ? vd_xstrdup(top_id) : NULL;
    pthread_mutex_init(&rs->lock, NULL);
    pthread_cond_init(&rs->cond, NULL);
    n->opaque = rs;
    n->size = n->file->size;
    n->request_alignment = n->file->request_alignment;
    n->max_transfer = n->file->max_transfer;
    free(n->filename);
    n->filename = vd_xstrdup(n->file->filename);
    return 0;
}

static void repl_close(vd_node *n)
{
    vd_repl *r = n->opaque;
    if (!r) {
        return;
    }
    repl_secondary_release(r);
    vd_hbitmap_free(r->dirty);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r->top_id);
    free(r);
    n->opaque = NULL;
}

/* ---- I/O ------------------------------------------------------------------------------------ */

typedef enum req_kind { REQ_WRITE, REQ_ZEROES, REQ_DISCARD } req_kind;

typedef struct req {
    req_kind kind;
    const void *buf;
    uint64_t off, len;
    unsigned flags;
} req;

static int send_to(vd_node *to, const req *q, uint64_t off, uint64_t len)
{
    const uint8_t *buf = q->buf ? (const uint8_t *)q->buf + (off - q->off) : NULL;
    switch (q->kind) {
    case REQ_WRITE:
        return vd_node_pwrite(to, buf, len, off, q->flags);
    case REQ_ZEROES:
        return vd_node_pwrite_zeroes(to, off, len, q->flags);
    default:
        return vd_node_pdiscard(to, off, len);
    }
}

/* After a failed failover (QEMU's rule): what the active or hidden disk holds is written
 * there, the rest straight to the secondary disk, which then holds the newest data. */
static int failed_over_write(vd_repl *r, const req *q)
{
    vd_node *active = r->node->file;
    int depth = 2;
    for (uint64_t off = q->off, end = q->off + q->len; off < end;) {
        vd_extent st;
        int ret = vd_node_chain_status_above(active, depth, off, end - off, &st);
        if (ret < 0) {
            return ret;
        }
        uint64_t n = st.length && st.length < end - off ? st.length : end - off;
        bool above = st.depth < depth;
        ret = send_to(above ? active : r->secondary, q, off, n);
        if (ret < 0) {
            return ret;
        }
        off += n;
    }
    return 0;
}

static int primary_write(vd_repl *r, const req *q, repl_stage stage, int err)
{
    if (stage != REPL_RUNNING) {
        return -EIO;
    }
    if (err) {
        return err;
    }
    int ret = send_to(r->node->file, q, q->off, q->len);
    if (ret < 0) {
        pthread_mutex_lock(&r->lock);
        if (!r->error) {
            r->error = ret;
        }
        pthread_mutex_unlock(&r->lock);
    }
    return ret;
}

static int repl_write(vd_node *n, const req *q)
{
    vd_repl *r = n->opaque;
    int err = 0;
    repl_stage stage = repl_gate_enter(r, &err);
    int ret;
    if (r->mode == VD_REPLICATION_PRIMARY) {
        ret = primary_write(r, q, stage, err);
    } else {
        ret = stage == REPL_NONE              ? -EIO
              : stage == REPL_FAILOVER_FAILED ? failed_over_write(r, q)
                                              : send_to(n->file, q, q->off, q->len);
    }
    repl_gate_exit(r);
    return ret;
}

static int repl_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    req q = {REQ_WRITE, buf, off, len, flags};
    return repl_write(n, &q);
}

static int repl_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    req q = {REQ_ZEROES, NULL, off, len, flags};
    return repl_write(n, &q);
}

static int repl_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    req q = {REQ_DISCARD, NULL, off, len, 0};
    return repl_write(n, &q);
}

static int repl_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    vd_repl *r = n->opaque;
    if (r->mode == VD_REPLICATION_PRIMARY) {
        return -EIO;            /* the quorum above reads its local child */
    }
    repl_stage stage = repl_gate_enter(r, NULL);
    int ret = stage == REPL_NONE ? -EIO : vd_node_pread(n->file, buf, len, off);
    repl_gate_exit(r);
    return ret;
}

static int repl_flush(vd_node *n)
{
    vd_repl *r = n->opaque;
    int err = 0;
    repl_stage stage = repl_gate_enter(r, &err);
    int ret = 0;
    if (r->mode == VD_REPLICATION_PRIMARY) {
        if (stage == REPL_RUNNING && !err && (ret = vd_node_flush(n->file)) < 0) {
            pthread_mutex_lock(&r->lock);
            r->error = r->error ? r->error : ret;
            pthread_mutex_unlock(&r->lock);
        }
    } else {
        ret = vd_node_flush(n->file);
    }
    repl_gate_exit(r);
    return ret;
}

static int repl_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    vd_repl *r = n->opaque;
    repl_gate_enter(r, NULL);
    int ret = vd_filter_block_status(n, off, len, st);
    repl_gate_exit(r);
    return ret;
}

/* QEMU's rule: the node writes its child when it is writable, and lets others read and
 * write it whatever its own users allow (the secondary disk below the active disk takes
 * the primary's writes while the secondary's quorum lets no one else write). */
static void repl_child_perms(const vd_node *n, const char *role, unsigned *perm,
                             unsigned *shared)
{
    (void)role;
    *perm = VD_PERM_CONSISTENT_READ | ((n->open_flags & VD_OPEN_RDWR) ? VD_PERM_WRITE : 0);
    *shared = VD_PERM_CONSISTENT_READ | VD_PERM_WRITE | VD_PERM_WRITE_UNCHANGED;
}

const vd_driver vd_replication_driver = {
    .name = "replication",
    .is_format = false,
    .runtime_opts = repl_runtime_opts,
    .open = repl_open,
    .close = repl_close,
    .pread = repl_pread,
    .pwrite = repl_pwrite,
    .pwrite_zeroes = repl_pwrite_zeroes,
    .pdiscard = repl_pdiscard,
    .flush = repl_flush,
    .block_status = repl_block_status,
    .allocated_size = vd_filter_allocated_size,
    .child_perms = repl_child_perms,
};
