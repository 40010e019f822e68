/* QEMU's copy-before-write filter (see block/cbw.h for the state it keeps). The filter
 * node passes reads and writes to its `file` child; the rule itself sits in a write
 * notifier on that child, so it holds for every write the source gets, through the filter
 * or past it (an export that was attached to the source before the filter came). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/cbw.h"
#include "block/copy.h"
#include "block/disk.h"
#include "block/dirty-bitmap.h"
#include "block/engine.h"
#include "util/common.h"

#define DEFAULT_CLUSTER 65536u
#define MAX_COPY (1u << 20)          /* the most one copy for a write reads at once */
#define MAX_USERS 64

struct vd_cbw {
    vd_node *node, *source, *target;
    uint64_t cluster, size;
    vd_copy_spec spec;
    vd_cbw_on_error on_error;
    uint64_t timeout_ns;
    vd_write_notifier nt;
    bool notifier_on;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* Under lock. */
    vd_hbitmap *todo;                /* clusters whose old data the target still needs */
    vd_hbitmap *busy;                /* clusters a copy or a snapshot read holds */
    vd_hbitmap *access;              /* clusters of the point in time (NULL: all) */
    bool broken;                     /* break-snapshot after a failed copy */
    bool unflushed;                  /* copies since the target's last flush */
    vd_cbw_listener listener;
};

extern const vd_driver vd_cbw_driver;

vd_cbw *vd_cbw_of(vd_node *n)
{
    return n && n->drv == &vd_cbw_driver ? n->opaque : NULL;
}

uint64_t vd_cbw_cluster(const vd_cbw *c)
{
    return c->cluster;
}

vd_node *vd_cbw_source(const vd_cbw *c)
{
    return c->source;
}

vd_node *vd_cbw_target(const vd_cbw *c)
{
    return c->target;
}

/* [off, off+len) widened to whole clusters and clipped to the disk. */
static void to_clusters(const vd_cbw *c, uint64_t off, uint64_t len, uint64_t *s, uint64_t *e)
{
    uint64_t end = off + len < c->size ? off + len : c->size;
    *s = off / c->cluster * c->cluster;
    *e = (end + c->cluster - 1) / c->cluster * c->cluster;
    if (*e > c->size) {
        *e = c->size;
    }
}

static void wait_not_busy(vd_cbw *c, uint64_t s, uint64_t e)
{
    while (vd_hbitmap_next_dirty(c->busy, s, e) >= 0) {
        pthread_cond_wait(&c->cond, &c->lock);
    }
}

/* ---- the rule ------------------------------------------------------------------------------ */

typedef struct run {
    uint64_t off, len;
} run;

/* Copies a run out of the todo set, lock not held; the caller holds it busy. */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int copy_run(vd_cbw *c, uint8_t *buf, uint64_t buflen, uint64_t off, uint64_t len,
                    bool *is_read)
{
    uint64_t t0 = c->timeout_ns ? now_ns() : 0;
    int r = vd_copy_range(&c->spec, buf, buflen, off, len, is_read);
    if (r == 0 && c->timeout_ns && now_ns() - t0 > c->timeout_ns) {
        r = -ETIMEDOUT;        /* judged when the copy ends: it cannot be taken back */
    }
    return r;
}

static void finish_run(vd_cbw *c, uint64_t off, uint64_t len, bool copied)
{
    vd_hbitmap_reset(c->busy, off, len);
    if (copied) {
        vd_hbitmap_reset(c->todo, off, len);
        c->unflushed = true;
    }
    pthread_cond_broadcast(&c->cond);
}

static int source_writing(vd_write_notifier *nt, vd_node *n, const vd_write_req *req)
{
    (void)n;
    vd_cbw *c = (vd_cbw *)((char *)nt - offsetof(vd_cbw, nt));
    if (req->kind == VD_WRITE_TRUNCATE || req->off >= c->size) {
        return 0;
    }
    uint64_t s, e;
    to_clusters(c, req->off, req->len, &s, &e);
    pthread_mutex_lock(&c->lock);
    if (c->broken || vd_hbitmap_next_dirty(c->todo, s, e) < 0) {
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    /* Once no copy holds the range, everything in it still to copy is this write's. */
    wait_not_busy(c, s, e);
    run runs[64];
    size_t nb = 0;
    uint64_t claimed_end = s;
    for (uint64_t pos = s, rs, rl;
         nb < 64 && vd_hbitmap_next_dirty_area(c->todo, pos, e, &rs, &rl); pos = rs + rl) {
        runs[nb++] = (run){rs, rl};
        vd_hbitmap_set(c->busy, rs, rl);
        claimed_end = rs + rl;
    }
    pthread_mutex_unlock(&c->lock);
    int ret = 0;
    uint64_t most = 0;
    for (size_t i = 0; i < nb; i++) {
        most = runs[i].len > most ? runs[i].len : most;
    }
    uint64_t buflen = most < MAX_COPY ? most : MAX_COPY;
    uint8_t *buf = malloc(buflen ? buflen : 1);
    for (size_t i = 0; i < nb; i++) {
        bool is_read = false;
        int r = buf ? copy_run(c, buf, buflen, runs[i].off, runs[i].len, &is_read) : -ENOMEM;
        pthread_mutex_lock(&c->lock);
        finish_run(c, runs[i].off, runs[i].len, r == 0);
        if (r < 0 && c->on_error == VD_CBW_BREAK_SNAPSHOT) {
            c->broken = true;
        } else if (r < 0 && ret == 0) {
            ret = r;
        }
        vd_cbw_listener l = c->listener;
        pthread_mutex_unlock(&c->lock);
        if (r == 0 && l.copied) {
            l.copied(l.opaque, runs[i].len);
        }
    }
    free(buf);
    /* More than 64 runs in one write (a huge discard over a scattered todo set): the rest
     * is done the same way, one batch after another. */
    if (ret == 0 && claimed_end < e && nb == 64) {
        vd_write_req rest = *req;
        rest.off = claimed_end;
        rest.len = e - claimed_end;
        ret = source_writing(nt, n, &rest);
    }
    return ret;
}

/* Old data durable before the writes that replaced it are. */
static int source_flushing(vd_write_notifier *nt, vd_node *n)
{
    (void)n;
    vd_cbw *c = (vd_cbw *)((char *)nt - offsetof(vd_cbw, nt));
    pthread_mutex_lock(&c->lock);
    bool need = c->unflushed;
    c->unflushed = false;
    pthread_mutex_unlock(&c->lock);
    int r = need ? vd_node_flush(c->target) : 0;
    if (r < 0) {
        pthread_mutex_lock(&c->lock);
        c->unflushed = true;
        pthread_mutex_unlock(&c->lock);
    }
    return r;
}

/* ---- for a backup job ------------------------------------------------------------------------ */

void vd_cbw_listen(vd_cbw *c, const vd_cbw_listener *l)
{
    pthread_mutex_lock(&c->lock);
    c->listener = l ? *l : (vd_cbw_listener){0};
    pthread_mutex_unlock(&c->lock);
}

void vd_cbw_drop(vd_cbw *c, uint64_t off, uint64_t len)
{
    uint64_t s = (off + c->cluster - 1) / c->cluster * c->cluster;
    uint64_t e = off + len >= c->size ? c->size : (off + len) / c->cluster * c->cluster;
    if (s >= e) {
        return;
    }
    pthread_mutex_lock(&c->lock);
    /* A cluster a copy holds is left to it. */
    for (uint64_t pos = s, rs, rl; vd_hbitmap_next_dirty_area(c->todo, pos, e, &rs, &rl);
         pos = rs + rl) {
        for (uint64_t p = rs; p < rs + rl; p += c->cluster) {
            if (!vd_hbitmap_get(c->busy, p)) {
                vd_hbitmap_reset(c->todo, p, c->cluster);
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
}

uint64_t vd_cbw_todo_bytes(vd_cbw *c)
{
    pthread_mutex_lock(&c->lock);
    uint64_t n = vd_hbitmap_count(c->todo);
    pthread_mutex_unlock(&c->lock);
    return n;
}

bool vd_cbw_claim(vd_cbw *c, uint64_t from, uint64_t max, uint64_t *off, uint64_t *len,
                  bool *pending)
{
    pthread_mutex_lock(&c->lock);
    *pending = vd_hbitmap_count(c->busy) > 0;
    bool found = false;
    for (uint64_t pos = from, rs, rl;
         !found && vd_hbitmap_next_dirty_area(c->todo, pos, c->size, &rs, &rl);
         pos = rs + rl) {
        int64_t b = vd_hbitmap_next_zero(c->busy, rs, rs + rl);
        if (b < 0) {
            continue;                        /* all of the run is held */
        }
        uint64_t start = (uint64_t)b;
        int64_t bend = vd_hbitmap_next_dirty(c->busy, start, rs + rl);
        uint64_t end = bend < 0 ? rs + rl : (uint64_t)bend;
        uint64_t m = max < c->cluster ? c->cluster : max / c->cluster * c->cluster;
        if (end - start > m) {
            end = start + m;
        }
        vd_hbitmap_set(c->busy, start, end - start);
        *off = start;
        *len = end - start;
        found = true;
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

int vd_cbw_copy(vd_cbw *c, void *buf, uint64_t buflen, uint64_t off, uint64_t len,
                bool *is_read)
{
    return vd_copy_range(&c->spec, buf, buflen, off, len, is_read);
}

void vd_cbw_release(vd_cbw *c, uint64_t off, uint64_t len, bool copied)
{
    pthread_mutex_lock(&c->lock);
    finish_run(c, off, len, copied);
    pthread_mutex_unlock(&c->lock);
}

vd_hbitmap *vd_cbw_todo_copy(vd_cbw *c)
{
    pthread_mutex_lock(&c->lock);
    vd_hbitmap *h = vd_hbitmap_resized(c->todo, vd_hbitmap_size(c->todo));
    pthread_mutex_unlock(&c->lock);
    if (!h) {
        abort();
    }
    return h;
}

void vd_cbw_rearm(vd_cbw *c)
{
    pthread_mutex_lock(&c->lock);
    vd_hbitmap_reset_all(c->todo);
    if (c->access) {
        vd_hbitmap_merge(c->todo, c->access);
    } else {
        vd_hbitmap_set(c->todo, 0, c->size);
    }
    c->broken = false;
    pthread_mutex_unlock(&c->lock);
}

/* ---- the point in time ----------------------------------------------------------------------- */

/* The run of clusters from cluster-aligned pos up to end that read from one place, with
 * them held when they come from the source (the caller releases them). Lock held. */
static int snapshot_run(vd_cbw *c, uint64_t pos, uint64_t end, uint64_t *rend, bool *source)
{
    if (c->broken) {
        return -EACCES;
    }
    uint64_t ce = pos + c->cluster < c->size ? pos + c->cluster : c->size;
    if (c->access && vd_hbitmap_next_zero(c->access, pos, ce) >= 0) {
        return -EINVAL;
    }
    wait_not_busy(c, pos, ce);
    if (c->broken) {
        return -EACCES;
    }
    *source = vd_hbitmap_get(c->todo, pos);
    int64_t x = *source ? vd_hbitmap_next_zero(c->todo, pos, end)
                        : vd_hbitmap_next_dirty(c->todo, pos, end);
    uint64_t e = x < 0 ? end : (uint64_t)x;
    if (*source) {
        int64_t b = vd_hbitmap_next_dirty(c->busy, pos, e);
        e = b < 0 ? e : (uint64_t)b;
        vd_hbitmap_set(c->busy, pos, e - pos);
    }
    if (c->access) {
        int64_t z = vd_hbitmap_next_zero(c->access, pos, e);
        e = z < 0 ? e : (uint64_t)z;
    }
    *rend = e;
    return 0;
}

int vd_cbw_snapshot_read(vd_cbw *c, void *buf, uint64_t len, uint64_t off)
{
    uint64_t end = off + len;
    uint64_t s, e;
    to_clusters(c, off, len, &s, &e);
    for (uint64_t pos = s; pos < e;) {
        uint64_t rend;
        bool source;
        pthread_mutex_lock(&c->lock);
        int r = snapshot_run(c, pos, e, &rend, &source);
        pthread_mutex_unlock(&c->lock);
        if (r < 0) {
            return r;
        }
        uint64_t lo = pos > off ? pos : off;
        uint64_t hi = rend < end ? rend : end;
        r = vd_node_pread_zero_pad(source ? c->source : c->target, (uint8_t *)buf + (lo - off),
                                   hi - lo, lo);
        if (source) {
            pthread_mutex_lock(&c->lock);
            vd_hbitmap_reset(c->busy, pos, rend - pos);
            pthread_cond_broadcast(&c->cond);
            pthread_mutex_unlock(&c->lock);
        }
        if (r < 0) {
            return r;
        }
        pos = rend;
    }
    return 0;
}

int vd_cbw_snapshot_status(vd_cbw *c, uint64_t off, uint64_t len, vd_node_status *st)
{
    uint64_t s, e, rend;
    bool source;
    to_clusters(c, off, len, &s, &e);
    pthread_mutex_lock(&c->lock);
    int r = snapshot_run(c, s, e, &rend, &source);
    if (r == 0 && source) {
        vd_hbitmap_reset(c->busy, s, rend - s);   /* a status needs no hold */
        pthread_cond_broadcast(&c->cond);
    }
    pthread_mutex_unlock(&c->lock);
    if (r < 0) {
        return r;
    }
    uint64_t want = (rend < off + len ? rend : off + len) - off;
    vd_extent x;
    r = vd_node_chain_status(source ? c->source : c->target, off, want, &x);
    if (r < 0) {
        return r;
    }
    memset(st, 0, sizeof(*st));
    st->pnum = x.length && x.length < want ? x.length : want;
    /* A read-only view holds everything it shows (nothing under it to look at). */
    st->flags = VD_BS_ALLOCATED | (x.flags & (VD_BS_DATA | VD_BS_ZERO));
    if (!(st->flags & (VD_BS_DATA | VD_BS_ZERO))) {
        st->flags |= VD_BS_DATA;
    }
    return 0;
}

int vd_cbw_snapshot_discard(vd_cbw *c, uint64_t off, uint64_t len)
{
    uint64_t s = (off + c->cluster - 1) / c->cluster * c->cluster;
    uint64_t e = off + len >= c->size ? c->size : (off + len) / c->cluster * c->cluster;
    if (s >= e) {
        return 0;
    }
    pthread_mutex_lock(&c->lock);
    wait_not_busy(c, s, e);
    vd_hbitmap_reset(c->todo, s, e - s);
    if (!c->access) {
        c->access = vd_hbitmap_new(c->size, c->cluster);
        if (c->access) {
            vd_hbitmap_set(c->access, 0, c->size);
        }
    }
    if (c->access) {
        vd_hbitmap_reset(c->access, s, e - s);
    }
    pthread_mutex_unlock(&c->lock);
    /* Advisory on the target: what it held there is no longer needed. */
    (void)vd_node_pdiscard(c->target, s, e - s);
    return 0;
}

/* ---- the node -------------------------------------------------------------------------------- */

/* The filter's state over its children, with its notifier on the source. */
static int cbw_setup(vd_node *n, const vd_hbitmap *bitmap, vd_cbw_on_error on_error,
                     uint32_t timeout_s, bool compress, vd_error **errp)
{
    vd_cbw *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->node = n;
    c->source = n->file;
    c->target = n->target;
    c->size = c->source->size;
    uint64_t tc = vd_node_cluster_size(vd_node_skip_filters(c->target));
    c->cluster = tc > DEFAULT_CLUSTER ? tc : DEFAULT_CLUSTER;
    c->on_error = on_error;
    c->timeout_ns = (uint64_t)timeout_s * 1000000000u;
    c->spec = (vd_copy_spec){.src = c->source, .dst = c->target, .compress = compress};
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    uint64_t sz = c->size ? c->size : 1;
    c->todo = vd_hbitmap_new(sz, c->cluster);
    c->busy = vd_hbitmap_new(sz, c->cluster);
    if (!c->todo || !c->busy) {
        abort();
    }
    if (bitmap) {
        c->access = vd_hbitmap_new(sz, c->cluster);
        if (!c->access) {
            abort();
        }
        vd_hbitmap_merge(c->access, bitmap);
        vd_hbitmap_merge(c->todo, c->access);
    } else {
        vd_hbitmap_set(c->todo, 0, c->size);
    }
    if (compress && !c->target->drv->pwrite_compressed) {
        const char *name = c->target->node_name ? c->target->node_name : "";
        vd_hbitmap_free(c->todo);
        vd_hbitmap_free(c->busy);
        vd_hbitmap_free(c->access);
        free(c);
        return vd_error_set(errp, VD_ERR_INVALID, ENOTSUP, "Compression is not supported "
                            "for this drive %s", name);
    }
    n->opaque = c;
    n->size = c->size;
    n->request_alignment = c->source->request_alignment;
    n->max_transfer = c->source->max_transfer;
    c->nt.before = source_writing;
    c->nt.flush = source_flushing;
    vd_node_add_write_notifier(c->source, &c->nt);
    c->notifier_on = true;
    return 0;
}

static const char *const cbw_runtime_opts[] = {"file", "target", "bitmap", "on-cbw-error",
                                               "cbw-timeout", NULL};

static int open_options(vd_node *n, vd_hbitmap **bitmap, vd_cbw_on_error *on_error,
                        uint32_t *timeout, vd_error **errp)
{
    const char *mode = NULL;
    int r = vd_tree_get_str(n->options, "on-cbw-error", NULL, &mode, errp);
    if (r < 0) {
        return r;
    }
    if (mode && strcmp(mode, "break-guest-write") && strcmp(mode, "break-snapshot")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'on-cbw-error' does not "
                            "accept value '%s'", mode);
    }
    *on_error = mode && !strcmp(mode, "break-snapshot") ? VD_CBW_BREAK_SNAPSHOT
                                                        : VD_CBW_BREAK_GUEST_WRITE;
    uint64_t t = 0;
    r = vd_tree_get_uint(n->options, "cbw-timeout", NULL, 0, &t, errp);
    if (r < 0) {
        return r;
    }
    if (t > UINT32_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'cbw-timeout' expects "
                            "uint32_t");
    }
    *timeout = (uint32_t)t;
    const vd_tree *bm = vd_tree_get(n->options, "bitmap");
    if (!bm) {
        return 0;
    }
    const char *node = NULL, *name = NULL;
    if (vd_tree_type_of(bm) != VD_TREE_OBJECT ||
        (r = vd_tree_get_str(bm, "node", "bitmap.node", &node, errp)) < 0 ||
        (r = vd_tree_get_str(bm, "name", "bitmap.name", &name, errp)) < 0 || !node || !name) {
        return r < 0 ? r : vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'bitmap' "
                                        "expects an object with 'node' and 'name'");
    }
    return vd_bitmap_copy_bits(n->engine, node, name, bitmap, errp);
}

static int cbw_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    vd_hbitmap *bitmap = NULL;
    vd_cbw_on_error on_error = VD_CBW_BREAK_GUEST_WRITE;
    uint32_t timeout = 0;
    int r = open_options(n, &bitmap, &on_error, &timeout, errp);
    if (r < 0) {
        return r;
    }
    if ((r = vd_node_open_child(n, "file", &n->file, errp)) < 0 ||
        (r = vd_node_open_child(n, "target", &n->target, errp)) < 0) {
        vd_hbitmap_free(bitmap);
        return r;
    }
    free(n->filename);
    n->filename = vd_xstrdup(n->file->filename);
    r = cbw_setup(n, bitmap, on_error, timeout, false, errp);
    vd_hbitmap_free(bitmap);
    return r;
}

int vd_cbw_new(vd_engine *e, const vd_cbw_params *p, vd_node **out, vd_error **errp)
{
    vd_node *n = vd_node_alloc(e, &vd_cbw_driver, p->source->filename, VD_OPEN_RDWR);
    n->file = p->source;
    n->target = p->target;
    n->node_name = p->node_name ? vd_xstrdup(p->node_name) : NULL;
    int r = cbw_setup(n, p->bitmap, p->on_error, p->timeout_s, p->compress, errp);
    if (r == 0) {
        r = vd_graph_register_filter(n, errp);
        if (r < 0) {
            n->drv->close(n);
            n->opaque = NULL;
        }
    }
    if (r < 0) {
        /* The references stay the caller's. */
        n->file = n->target = NULL;
        free(n->node_name);
        n->node_name = NULL;
        vd_node_release(n);
        return r;
    }
    *out = n;
    return 0;
}

/* The notifier goes with every user of the source held still, so no request is walking
 * past it. */
static void cbw_close(vd_node *n)
{
    vd_cbw *c = n->opaque;
    if (!c) {
        return;
    }
    if (c->notifier_on) {
        vd_disk *users[MAX_USERS];
        size_t nb = vd_node_users_drain_begin(c->source, NULL, users, MAX_USERS);
        vd_node_drain_writes(c->source);
        vd_node_remove_write_notifier(c->source, &c->nt);
        vd_disks_drain_end(users, nb);
    }
    vd_hbitmap_free(c->todo);
    vd_hbitmap_free(c->busy);
    vd_hbitmap_free(c->access);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
    n->opaque = NULL;
}

static int cbw_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    return vd_node_pread(n->file, buf, len, off);
}

static int cbw_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    return vd_node_pwrite(n->file, buf, len, off, flags);
}

static int cbw_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    return vd_node_pwrite_zeroes(n->file, off, len, flags);
}

static int cbw_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    return vd_node_pdiscard(n->file, off, len);
}

static int cbw_flush(vd_node *n)
{
    return vd_node_flush(n->file);
}

const vd_driver vd_cbw_driver = {
    .name = "copy-before-write",
    .is_format = false,
    .runtime_opts = cbw_runtime_opts,
    .open = cbw_open,
    .close = cbw_close,
    .pread = cbw_pread,
    .pwrite = cbw_pwrite,
    .pwrite_zeroes = cbw_pwrite_zeroes,
    .pdiscard = cbw_pdiscard,
    .flush = cbw_flush,
    .block_status = vd_filter_block_status,
    .allocated_size = vd_filter_allocated_size,
};
