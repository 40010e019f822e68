/* block-stream: copies into a disk's top layer what its backing layers above base hold,
 * while the disk is in use, then makes base (or nothing) the top's backing.
 *
 * The job goes once over the disk (pass.c). A copy never lands over a newer write of the
 * disk's users: a worker claims its range (whole clusters of the top) once no user write
 * is in flight over it, then copies only what the top still does not hold; a user write
 * over a claimed range waits in the write notifier's `before` until the claim ends. The
 * job's own writes to the top pass the notifier too, and are known by their thread. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/copy.h"
#include "jobs/chain.h"
#include "jobs/pass.h"
#include "util/common.h"
#include "vdisk/graph.h"

typedef struct range {
    uint64_t s, e;                    /* [s, e), whole clusters of the top */
    const void *key;                  /* the user write (its request), or NULL for a claim */
    pthread_t owner;                  /* a claim's worker */
    struct range *next;
} range;

typedef struct stream_job {
    vd_job job;                       /* first: the core's part */
    vd_node *device, *top, *base;     /* top: the format layer under device */
    vd_copy_spec spec;                /* from top's backing into top */
    bool nothing;                     /* top's backing is base already */
    char *backing_name;
    vd_job_on_error on_error;
    uint64_t cluster;
    bool top_was_ro;
    bool blockers_on;
    vd_write_notifier nt;
    bool notifier_on;
    range *ranges;                    /* user writes in flight and claims, under job.lock */
} stream_job;

static stream_job *of(vd_job *job)
{
    return (stream_job *)job;
}

static bool overlaps(const stream_job *st, uint64_t s, uint64_t e, bool claims,
                     bool writes)
{
    for (const range *r = st->ranges; r; r = r->next) {
        bool mine = r->key == NULL && pthread_equal(r->owner, pthread_self());
        if (r->s < e && s < r->e && !mine && ((r->key && writes) || (!r->key && claims))) {
            return true;
        }
    }
    return false;
}

static range *add_range(stream_job *st, uint64_t s, uint64_t e, const void *key)
{
    range *r = calloc(1, sizeof(*r));
    if (!r) {
        abort();
    }
    *r = (range){s, e, key, pthread_self(), st->ranges};
    st->ranges = r;
    return r;
}

static void drop_range(stream_job *st, range *x)
{
    for (range **p = &st->ranges; *p; p = &(*p)->next) {
        if (*p == x) {
            *p = x->next;
            free(x);
            return;
        }
    }
}

static void widen(const stream_job *st, uint64_t off, uint64_t len, uint64_t *s, uint64_t *e)
{
    *s = off / st->cluster * st->cluster;
    *e = (off + len + st->cluster - 1) / st->cluster * st->cluster;
}

/* ---- the users' writes -------------------------------------------------------------------- */

static int top_writing(vd_write_notifier *nt, vd_node *n, const vd_write_req *req)
{
    (void)n;
    stream_job *st = (stream_job *)((char *)nt - offsetof(stream_job, nt));
    uint64_t s, e;
    widen(st, req->off, req->len ? req->len : 1, &s, &e);
    pthread_mutex_lock(&st->job.lock);
    /* The job's own copies are not users' writes; they hold their claim already. */
    bool own = false;
    for (const range *r = st->ranges; r && !own; r = r->next) {
        own = r->key == NULL && pthread_equal(r->owner, pthread_self());
    }
    if (!own) {
        while (overlaps(st, s, e, true, false)) {
            pthread_cond_wait(&st->job.cond, &st->job.lock);
        }
        add_range(st, s, e, req);
    }
    pthread_mutex_unlock(&st->job.lock);
    return 0;
}

static void top_written(vd_write_notifier *nt, vd_node *n, const vd_write_req *req, int ret)
{
    (void)n;
    (void)ret;
    stream_job *st = (stream_job *)((char *)nt - offsetof(stream_job, nt));
    pthread_mutex_lock(&st->job.lock);
    for (range *r = st->ranges; r; r = r->next) {
        if (r->key == req) {
            drop_range(st, r);
            pthread_cond_broadcast(&st->job.cond);
            break;
        }
    }
    pthread_mutex_unlock(&st->job.lock);
}

/* ---- the copy ----------------------------------------------------------------------------- */

static int pass_next(void *opaque, uint64_t off, uint64_t end, uint64_t *start,
                     uint64_t *len)
{
    stream_job *st = opaque;
    return st->nothing ? 0 : vd_copy_next(&st->spec, off, end, start, len);
}

/* Claims the range, then copies the parts the top does not hold. */
static int pass_copy(void *opaque, void *buf, uint64_t buflen, uint64_t off, uint64_t len,
                     bool *is_read)
{
    stream_job *st = opaque;
    uint64_t s, e;
    widen(st, off, len, &s, &e);
    pthread_mutex_lock(&st->job.lock);
    while (overlaps(st, s, e, true, true)) {
        pthread_cond_wait(&st->job.cond, &st->job.lock);
    }
    range *claim = add_range(st, s, e, NULL);
    pthread_mutex_unlock(&st->job.lock);
    int r = 0;
    for (uint64_t end = off + len; r == 0 && off < end;) {
        vd_node_status ns;
        r = vd_node_block_status(st->top, off, end - off, &ns);
        if (r < 0) {
            *is_read = true;
            break;
        }
        uint64_t n = ns.pnum < end - off ? ns.pnum : end - off;
        if (!(ns.flags & VD_BS_ALLOCATED)) {
            r = vd_copy_range(&st->spec, buf, buflen, off, n, is_read);
        }
        off += n;
    }
    pthread_mutex_lock(&st->job.lock);
    drop_range(st, claim);
    pthread_cond_broadcast(&st->job.cond);
    pthread_mutex_unlock(&st->job.lock);
    return r;
}

static int stream_run(vd_job *job)
{
    stream_job *st = of(job);
    job_pass p = {
        .job = job, .size = st->top->size, .on_error = st->on_error,
        .next = pass_next, .copy = pass_copy, .opaque = st,
    };
    int r = job_pass_run(&p);
    if (r == 0 && (r = vd_node_flush(st->top)) < 0) {
        pthread_mutex_lock(&job->lock);
        vd_job_error_action(job, st->on_error, false, -r);
        pthread_mutex_unlock(&job->lock);
    }
    return r;
}

/* The top holds everything above base now: base becomes its backing. */
static int stream_prepare(vd_job *job, vd_error **errp)
{
    stream_job *st = of(job);
    vd_disk *users[CHAIN_MAX_USERS];
    size_t nb = vd_node_users_drain_begin(st->device, NULL, users, CHAIN_MAX_USERS);
    int r = chain_set_backing(st->top, st->base, st->backing_name, errp);
    vd_disks_drain_end(users, nb);
    return r;
}

static void set_blockers(stream_job *st, bool on)
{
    pthread_mutex_lock(&st->device->engine->graph_lock);
    st->device->job_blocker = on ? "stream" : NULL;
    pthread_mutex_unlock(&st->device->engine->graph_lock);
}

static void stream_clean(vd_job *job)
{
    stream_job *st = of(job);
    if (st->notifier_on) {
        vd_disk *users[CHAIN_MAX_USERS];
        size_t nb = vd_node_users_drain_begin(st->device, NULL, users, CHAIN_MAX_USERS);
        vd_node_drain_writes(st->device);
        vd_node_remove_write_notifier(st->device, &st->nt);
        st->notifier_on = false;
        vd_disks_drain_end(users, nb);
    }
    if (st->blockers_on) {
        set_blockers(st, false);
        st->blockers_on = false;
    }
    if (st->top_was_ro) {
        vd_node_reopen_rw(st->top, false, NULL);
        st->top_was_ro = false;
    }
    vd_node *nodes[3] = {st->device, st->top, st->base};
    st->device = st->top = st->base = NULL;
    for (int i = 0; i < 3; i++) {
        if (nodes[i]) {
            vd_node_unref(nodes[i]);
        }
    }
}

static void stream_free(vd_job *job)
{
    stream_job *st = of(job);
    while (st->ranges) {
        drop_range(st, st->ranges);
    }
    free(st->backing_name);
    free(st);
}

static const vd_job_driver stream_driver = {
    .type = "stream",
    .run = stream_run,
    .prepare = stream_prepare,
    .clean = stream_clean,
    .free = stream_free,
};

/* ---- the start: QEMU's checks in QEMU's order --------------------------------------------- */

/* QEMU looks base-node and bottom up as nodes, with no device name. */
static int not_found(const char *name, vd_error **errp)
{
    return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Cannot find device='' nor "
                        "node-name='%s'", name);
}

static int find_nodes(vd_engine *e, const vd_stream_opts *o, stream_job *st, vd_error **errp)
{
    if (o->base && o->base_node) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'base' and 'base-node' cannot be "
                            "specified at the same time");
    }
    if (o->base && o->bottom) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'base' and 'bottom' cannot be "
                            "specified at the same time");
    }
    if (o->bottom && o->base_node) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'bottom' and 'base-node' cannot be "
                            "specified at the same time");
    }
    int r = vd_graph_ref(e, o->device, &st->device, errp);
    if (r < 0) {
        return r;
    }
    st->top = vd_node_skip_filters(st->device);
    vd_node_ref(st->top);
    if (o->base) {
        if (!(st->base = chain_find_file(st->device, o->base))) {
            return vd_error_set(errp, VD_ERR_INVALID, ENOENT, "Can't find '%s' in the "
                                "backing chain", o->base);
        }
        vd_node_ref(st->base);
    }
    if (o->base_node) {
        if ((r = vd_graph_ref(e, o->base_node, &st->base, NULL)) < 0) {
            return not_found(o->base_node, errp);
        }
        if (chain_depth(st->device, st->base) <= 0) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node '%s' is not a backing "
                                "image of '%s'", o->base_node, o->device);
        }
    }
    if (o->bottom) {
        vd_node *bottom = NULL;
        if ((r = vd_graph_ref(e, o->bottom, &bottom, NULL)) < 0) {
            return not_found(o->bottom, errp);
        }
        bool filter = !bottom->drv->is_format && bottom->file;
        int d = chain_depth(st->device, bottom);
        vd_node *below = vd_node_skip_filters(bottom)->backing;
        vd_node_unref(bottom);
        if (filter) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node '%s' is a filter, use a "
                                "non-filter node as 'bottom'", o->bottom);
        }
        if (d < 0) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node '%s' is not in a chain "
                                "starting from '%s'", o->bottom, o->device);
        }
        if ((st->base = below)) {
            vd_node_ref(st->base);
        }
    }
    for (vd_node *p = st->device; p && p != st->base; p = vd_node_skip_filters(p)->backing) {
        if (p->job_blocker || p->job_target) {
            return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: block device "
                                "is in use by block job: %s", p->node_name ? p->node_name : "",
                                p->job_blocker ? p->job_blocker : "mirror");
        }
    }
    if (!st->base && o->backing_file) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "backing file specified, but "
                            "streaming the entire chain");
    }
    return 0;
}

int vd_stream_start(vd_engine *e, const vd_stream_opts *o, vd_error **errp)
{
    stream_job *st = calloc(1, sizeof(*st));
    if (!st) {
        abort();
    }
    int r = find_nodes(e, o, st, errp);
    if (r < 0) {
        stream_clean(&st->job);
        stream_free(&st->job);
        return r;
    }
    vd_node *below = st->top->backing;
    st->nothing = below == NULL || below == st->base;
    if (below) {
        int d = st->base ? chain_depth(below, st->base) : INT_MAX;
        st->spec = (vd_copy_spec){.src = below, .dst = st->top, .above_depth = d};
    }
    uint64_t cs = vd_node_cluster_size(st->top);
    st->cluster = cs ? cs : 65536;
    st->on_error = o->on_error;
    if (st->base) {
        vd_node *b = vd_node_skip_filters(st->base);
        st->backing_name = vd_xstrdup(o->backing_file ? o->backing_file : b->filename);
    }
    r = vd_job_create(e, &st->job, &stream_driver, o->job_id ? o->job_id : "",
                      o->auto_finalize, o->auto_dismiss, o->speed < 0 ? 0 : (uint64_t)o->speed,
                      errp);
    if (r < 0) {
        stream_clean(&st->job);
        stream_free(&st->job);
        return r;
    }
    if (o->speed < 0) {
        stream_clean(&st->job);
        vd_job_discard(&st->job);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'speed' expects a "
                            "non-negative value");
    }
    st->top_was_ro = !(st->top->open_flags & VD_OPEN_RDWR);
    if ((r = vd_node_reopen_rw(st->top, true, errp)) < 0) {
        st->top_was_ro = false;
        stream_clean(&st->job);
        vd_job_discard(&st->job);
        return r;
    }
    set_blockers(st, true);
    st->blockers_on = true;
    /* From here on every user write of the disk is seen. */
    st->nt.before = top_writing;
    st->nt.after = top_written;
    vd_disk *users[CHAIN_MAX_USERS];
    size_t nb = vd_node_users_drain_begin(st->device, NULL, users, CHAIN_MAX_USERS);
    vd_node_drain_writes(st->device);
    vd_node_add_write_notifier(st->device, &st->nt);
    st->notifier_on = true;
    vd_disks_drain_end(users, nb);
    r = vd_job_start(&st->job, errp);
    if (r < 0) {
        stream_clean(&st->job);
        vd_job_discard(&st->job);
    }
    return r;
}
