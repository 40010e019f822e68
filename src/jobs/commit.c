/* block-commit: merges the layers from top down to (not including) base into base.
 *
 * With top the active layer this is an active commit, which is a mirror in commit mode
 * (mirror.c). Otherwise the job here copies, in one pass (pass.c), what the layers above
 * base allocate into base: nobody writes those layers (the guest writes the active layer
 * above them), and what base gets is what readers of the chain already see there. At
 * prepare the layers drop out: top's overlay names base as its backing file, in its image
 * and in the graph, and the dropped nodes are released unless someone still holds them.
 * base is reopened read-write for the job and read-only again afterwards if it was. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/copy.h"
#include "jobs/chain.h"
#include "jobs/pass.h"
#include "util/common.h"
#include "vdisk/graph.h"

typedef struct commit_job {
    vd_job job;                       /* first: the core's part */
    vd_node *device, *top, *base, *overlay;   /* references the job holds */
    vd_copy_spec spec;
    char *backing_name;
    vd_job_on_error on_error;
    bool base_was_ro;
    bool blockers_on;
} commit_job;

static commit_job *of(vd_job *job)
{
    return (commit_job *)job;
}

static int pass_next(void *opaque, uint64_t off, uint64_t end, uint64_t *start,
                     uint64_t *len)
{
    return vd_copy_next(&((commit_job *)opaque)->spec, off, end, start, len);
}

static int pass_copy(void *opaque, void *buf, uint64_t buflen, uint64_t off, uint64_t len,
                     bool *is_read)
{
    return vd_copy_range(&((commit_job *)opaque)->spec, buf, buflen, off, len, is_read);
}

static int commit_run(vd_job *job)
{
    commit_job *c = of(job);
    job_pass p = {
        .job = job, .size = c->top->size, .on_error = c->on_error,
        .next = pass_next, .copy = pass_copy, .opaque = c,
    };
    int r = job_pass_run(&p);
    if (r == 0 && (r = vd_node_flush(c->base)) < 0) {
        pthread_mutex_lock(&job->lock);
        vd_job_error_action(job, c->on_error, false, -r);
        pthread_mutex_unlock(&job->lock);
    }
    return r;
}

/* The layers drop out: with every reader of the chain drained, top's overlay takes base
 * as its backing. */
static int commit_prepare(vd_job *job, vd_error **errp)
{
    commit_job *c = of(job);
    vd_disk *users[CHAIN_MAX_USERS];
    size_t nb = vd_node_users_drain_begin(c->device, NULL, users, CHAIN_MAX_USERS);
    int r = chain_set_backing(c->overlay, c->base, c->backing_name, errp);
    vd_disks_drain_end(users, nb);
    return r;
}

static void set_blockers(commit_job *c, bool on)
{
    pthread_mutex_lock(&c->device->engine->graph_lock);
    c->device->job_blocker = on ? "commit" : NULL;
    c->base->job_target = on;
    pthread_mutex_unlock(&c->device->engine->graph_lock);
}

static void commit_clean(vd_job *job)
{
    commit_job *c = of(job);
    if (c->blockers_on) {
        set_blockers(c, false);
        c->blockers_on = false;
    }
    if (c->base_was_ro) {
        vd_node_reopen_rw(c->base, false, NULL);
        c->base_was_ro = false;
    }
    vd_node *nodes[4] = {c->device, c->top, c->base, c->overlay};
    c->device = c->top = c->base = c->overlay = NULL;
    for (int i = 0; i < 4; i++) {
        if (nodes[i]) {
            vd_node_unref(nodes[i]);
        }
    }
}

static void commit_free(vd_job *job)
{
    commit_job *c = of(job);
    free(c->backing_name);
    free(c);
}

static const vd_job_driver commit_driver = {
    .type = "commit",
    .run = commit_run,
    .prepare = commit_prepare,
    .clean = commit_clean,
    .free = commit_free,
};

/* ---- the start: QEMU's checks in QEMU's order --------------------------------------------- */

static int busy(vd_node *n, vd_error **errp)
{
    if (n->job_blocker || n->job_target) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: block device is "
                            "in use by block job: %s", n->node_name ? n->node_name : "",
                            n->job_blocker ? n->job_blocker : "commit");
    }
    return 0;
}

/* top and base, referenced; device too. */
static int find_nodes(vd_engine *e, const vd_commit_opts *o, vd_node **dev, vd_node **top,
                      vd_node **base, vd_error **errp)
{
    if (vd_graph_ref(e, o->device, dev, NULL) < 0) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Device '%s' not found",
                            o->device);
    }
    int r = busy(*dev, errp);
    if (r < 0) {
        return r;
    }
    if (o->top_node && o->top) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'top-node' and 'top' are "
                            "mutually exclusive");
    }
    if (o->top_node) {
        if ((r = vd_graph_ref(e, o->top_node, top, NULL)) < 0) {
            return vd_error_set(errp, VD_ERR_GENERIC, ENOENT, "Cannot find device='' nor "
                                "node-name='%s'", o->top_node);
        }
        if (chain_depth(*dev, *top) < 0) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'%s' is not in this backing "
                                "file chain", o->top_node);
        }
    } else if (o->top) {
        vd_node *t = chain_find_file(*dev, o->top);
        if (!t && strcmp(o->top, (*dev)->filename ? (*dev)->filename : "") != 0) {
            return vd_error_set(errp, VD_ERR_INVALID, ENOENT, "Top image file %s not found",
                                o->top);
        }
        *top = t ? t : *dev;
        vd_node_ref(*top);
    } else {
        *top = *dev;
        vd_node_ref(*top);
    }
    if (o->base_node && o->base) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'base-node' and 'base' are "
                            "mutually exclusive");
    }
    if (o->base_node) {
        if ((r = vd_graph_ref(e, o->base_node, base, NULL)) < 0) {
            return vd_error_set(errp, VD_ERR_GENERIC, ENOENT, "Cannot find device='' nor "
                                "node-name='%s'", o->base_node);
        }
        if (chain_depth(*top, *base) < 0) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'%s' is not in this backing "
                                "file chain", o->base_node);
        }
    } else if (o->base) {
        if (!(*base = chain_find_file(*top, o->base))) {
            return vd_error_set(errp, VD_ERR_INVALID, ENOENT, "Can't find '%s' in the "
                                "backing chain", o->base);
        }
        vd_node_ref(*base);
    } else {
        /* With no backing at all top is its own base (refused below as QEMU does). */
        *base = chain_bottom(*top) ? chain_bottom(*top) : *top;
        vd_node_ref(*base);
    }
    for (vd_node *p = *top; p && p != *base; p = vd_node_skip_filters(p)->backing) {
        if (p != *dev && (r = busy(p, errp)) < 0) {
            return r;
        }
    }
    if ((r = busy(*base, errp)) < 0) {
        return r;
    }
    bool parents;
    vd_disk *none[1];
    vd_graph_users(*dev, NULL, none, 0, &parents);
    if (*top == *dev && parents) {
        /* An active commit is a mirror, which QEMU starts only from a root node. */
        return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Need a root block node");
    }
    if (*top == *base) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "cannot commit an image into "
                            "itself");
    }
    return 0;
}

static void unref_all(vd_node **nodes, int n)
{
    for (int i = 0; i < n; i++) {
        if (nodes[i]) {
            vd_node_unref(nodes[i]);
        }
    }
}

static int start_active(vd_engine *e, const vd_commit_opts *o, vd_node *base,
                        vd_error **errp)
{
    if (o->backing_file) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'backing-file' specified, but "
                            "'top' is the active layer");
    }
    vd_mirror_opts m = {
        .job_id = o->job_id, .device = o->device, .target = base->node_name,
        .sync = VD_MIRROR_SYNC_TOP, .speed = o->speed, .on_source_error = o->on_error,
        .on_target_error = o->on_error, .unmap = true, .auto_finalize = o->auto_finalize,
        .auto_dismiss = o->auto_dismiss, .commit = true,
    };
    return vd_mirror_start(e, &m, errp);
}

int vd_commit_start(vd_engine *e, const vd_commit_opts *o, vd_error **errp)
{
    vd_node *nodes[3] = {NULL, NULL, NULL};
    int r = find_nodes(e, o, &nodes[0], &nodes[1], &nodes[2], errp);
    if (r < 0) {
        unref_all(nodes, 3);
        return r;
    }
    if (nodes[1] == nodes[0]) {
        r = start_active(e, o, nodes[2], errp);
        unref_all(nodes, 3);
        return r;
    }
    commit_job *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->device = nodes[0];
    c->top = nodes[1];
    c->base = nodes[2];
    /* The layer whose backing top is: its image will name base. */
    for (vd_node *p = c->device; p; p = vd_node_skip_filters(p)->backing) {
        if (vd_node_skip_filters(p)->backing == c->top) {
            c->overlay = vd_node_skip_filters(p);
            break;
        }
    }
    vd_node_ref(c->overlay);
    vd_node *b = vd_node_skip_filters(c->base);
    c->backing_name = vd_xstrdup(o->backing_file ? o->backing_file : b->filename);
    c->on_error = o->on_error;
    c->spec = (vd_copy_spec){.src = c->top, .dst = c->base,
                             .above_depth = chain_depth(c->top, c->base)};
    r = vd_job_create(e, &c->job, &commit_driver, o->job_id ? o->job_id : "",
                      o->auto_finalize, o->auto_dismiss, o->speed < 0 ? 0 : (uint64_t)o->speed,
                      errp);
    if (r < 0) {
        commit_clean(&c->job);
        commit_free(&c->job);
        return r;
    }
    if (o->speed < 0) {
        /* QEMU makes the job before it looks at the speed (created, then null). */
        commit_clean(&c->job);
        vd_job_discard(&c->job);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'speed' expects a "
                            "non-negative value");
    }
    c->base_was_ro = !(c->base->open_flags & VD_OPEN_RDWR);
    if ((r = vd_node_reopen_rw(c->base, true, errp)) < 0) {
        c->base_was_ro = false;
        commit_clean(&c->job);
        vd_job_discard(&c->job);
        return r;
    }
    set_blockers(c, true);
    c->blockers_on = true;
    r = vd_job_start(&c->job, errp);
    if (r < 0) {
        commit_clean(&c->job);
        vd_job_discard(&c->job);
    }
    return r;
}
