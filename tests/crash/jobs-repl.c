/* kind "replication": COLO block replication on the secondary host, recorded for crash
 * states. The secondary disk (file 0) is a registered qcow2 node that a handle writes as
 * the primary's forwarded writes arrive (the NBD export in a daemon); a replication node
 * sits over the active disk (file 2), whose backing is the hidden disk (file 1), whose
 * backing is the secondary disk, and the secondary's own writes go through it. All three
 * files share one log. check-repl.c says what a crash state of them must hold. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/block.h"
#include "block/cbw.h"
#include "block/logwrites.h"
#include "vdisk/graph.h"
#include "vdisk/replication.h"
#include "workload.h"

#define WINDOW_BEFORE 4     /* the secondary's ops before the failover begins */
#define WINDOW_AFTER 12     /* ...and after it returned, still from its own thread */
#define POST_OPS 12         /* then, from the workload's thread */

typedef struct repl_wl {
    wl *w;
    repl_journal *r;
    vd_disk *pd, *rd;       /* the primary's handle on the secondary disk; the secondary's
                             * on the replication node */
    vd_perm_claim *pc, *rc;
    uint32_t *smodel;       /* what the secondary disk reads now */
    uint32_t *vmodel;       /* what the secondary's view (the replication node) reads now */
    uint64_t sectors;
} repl_wl;

static repl_op *repl_add(repl_journal *r, repl_kind kind, uint64_t start)
{
    r->ops = realloc(r->ops, (r->nb_ops + 1) * sizeof(*r->ops));
    if (!r->ops) {
        abort();
    }
    repl_op *o = &r->ops[r->nb_ops++];
    memset(o, 0, sizeof(*o));
    o->kind = kind;
    o->start = start;
    o->durable_at = UINT64_MAX;
    o->in_active = true;
    return o;
}

static uint32_t *copy_vals(const uint32_t *v, uint64_t n)
{
    uint32_t *c = xmalloc(n * sizeof(uint32_t));
    memcpy(c, v, n * sizeof(uint32_t));
    return c;
}

/* Compares what d reads in [first, first+count) with want. */
static int expect_tags(vd_disk *d, const uint32_t *want, uint64_t first, uint64_t count,
                       const char *what)
{
    uint32_t *got = xmalloc(count * sizeof(uint32_t));
    int ret = read_tags(d, first, count, got) < 0 ? fail(what, vd_disk_last_error(d)) : 0;
    for (uint64_t i = 0; i < count && ret == 0; i++) {
        if (got[i] != want[i]) {
            char msg[200];
            snprintf(msg, sizeof(msg), "sector %llu reads tag %u, the model %u",
                     (unsigned long long)(first + i), got[i], want[i]);
            ret = fail(what, msg);
        }
    }
    free(got);
    return ret;
}

/* A write, write zeroes or discard of the secondary disk by the primary: journalled on
 * the secondary disk's journal by the shared ops, and on the view's as RK_PRIMARY. The
 * view must not change (the copy-before-write rule, live). */
static int primary_op(repl_wl *s)
{
    wl *w = s->w;
    uint64_t x = rng_below(&w->r, 100);
    int ret = x < 80 ? op_write(w) : op_zero_discard(w, x < 90);
    if (ret < 0) {
        return ret;
    }
    const gop *g = &w->j->ops[w->j->nb_ops - 1];
    repl_op *o = repl_add(s->r, RK_PRIMARY, g->start);
    o->end = g->end;
    o->first = g->first;
    o->count = g->count;
    o->vals = copy_vals(g->vals, g->count);
    memcpy(s->smodel + g->first, g->vals, g->count * sizeof(uint32_t));
    return expect_tags(s->rd, s->vmodel + g->first, g->first, g->count,
                       "the view changed under a primary write");
}

static int primary_flush(repl_wl *s)
{
    if (op_flush(s->w, OP_FLUSH) < 0) {
        return -1;
    }
    const gop *g = &s->w->j->ops[s->w->j->nb_ops - 1];
    repl_add(s->r, RK_PRIMARY_FLUSH, g->start)->end = g->end;
    return 0;
}

/* A write through the replication node into o (the caller's record) and the view model;
 * taken to reach the active disk until the failover's log says otherwise. */
static int secondary_write(wl *w, vd_disk *rd, uint32_t *vmodel, repl_op *o)
{
    uint64_t first, count;
    pick_extent(w, max_sectors(w), &first, &count);
    uint8_t *buf = xmalloc(count * SECTOR);
    fill_tags(w, buf, first, count);
    memset(o, 0, sizeof(*o));
    o->kind = RK_SECONDARY;
    o->durable_at = UINT64_MAX;
    o->in_active = true;
    o->start = log_len(w);
    int ret = vd_pwrite(rd, buf, count * SECTOR, first * SECTOR, 0);
    o->end = log_len(w);
    free(buf);
    if (ret < 0) {
        return fail("secondary write", vd_disk_last_error(rd));
    }
    o->first = first;
    o->count = count;
    o->vals = xmalloc(count * sizeof(uint32_t));
    for (uint64_t i = 0; i < count; i++) {
        o->vals[i] = vmodel[first + i] = w->id;
    }
    return expect_tags(rd, o->vals, first, count, "secondary write");
}

static int secondary_flush(wl *w, vd_disk *rd, repl_op *o)
{
    memset(o, 0, sizeof(*o));
    o->kind = RK_SECONDARY_FLUSH;
    o->durable_at = UINT64_MAX;
    o->in_active = true;
    o->start = log_len(w);
    int ret = vd_flush(rd);
    o->end = log_len(w);
    return ret < 0 ? fail("secondary flush", vd_disk_last_error(rd)) : 0;
}

/* Start (first) or a checkpoint: the view becomes the secondary disk. */
static int checkpoint(repl_wl *s, bool first)
{
    vd_error *err = NULL;
    repl_op *o = repl_add(s->r, RK_CHECKPOINT, log_len(s->w));
    size_t at = s->r->nb_ops - 1;
    int ret = first ? vd_replication_start_all(s->w->e, VD_REPLICATION_SECONDARY, &err)
                    : vd_replication_do_checkpoint_all(s->w->e, &err);
    o = &s->r->ops[at];
    o->end = log_len(s->w);
    if (ret < 0) {
        ret = fail(first ? "replication start" : "checkpoint", vd_error_msg(err));
        vd_error_free(err);
        return ret;
    }
    o->first = 0;
    o->count = s->sectors;
    o->vals = copy_vals(s->smodel, s->sectors);
    memcpy(s->vmodel, s->smodel, s->sectors * sizeof(uint32_t));
    return expect_tags(s->rd, s->vmodel, 0, s->sectors, "the view after a checkpoint");
}

/* The filter's cluster size, in sectors, from the copy-before-write node replication
 * started on the secondary disk. */
static int filter_cluster(repl_wl *s)
{
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    if (vd_blockdev_list(s->w->e, &list, &nb) < 0) {
        return fail("replication", "could not list the nodes");
    }
    for (size_t i = 0; i < nb && !s->r->cbw_cluster; i++) {
        vd_node *n = NULL;
        if (strcmp(list[i].driver, "copy-before-write") ||
            vd_graph_ref(s->w->e, list[i].node_name, &n, NULL) < 0) {
            continue;
        }
        vd_cbw *c = vd_cbw_of(n);
        s->r->cbw_cluster = c ? vd_cbw_cluster(c) / SECTOR : 0;
        vd_node_unref(n);
    }
    vd_blockdev_list_free(list, nb);
    return s->r->cbw_cluster ? 0 : fail("replication", "no copy-before-write node");
}

/* ---- the failover under the secondary's writes ---------------------------------------- */

typedef struct writer {
    wl *w;
    vd_disk *rd;
    uint32_t *vmodel;
    repl_op *ops;           /* its own, merged into the journals once it is done */
    size_t nb;
    int done, stop, ret;    /* atomics: ops completed; asked to stop; its failure */
    int quiet;              /* atomic: no flushes (from the failover's start on) */
} writer;

/* The secondary keeps writing through the replication node before, during and after the
 * failover, a fifth of a millisecond between ops (unpaced, its writes after the switch
 * would fill the log); before the failover it also flushes now and then. From the
 * failover's start on it does not: a flush of its own that reached the
 * secondary disk after the switch would hide whether the failover made the view durable
 * before it returned. The workload's thread does nothing else with w meanwhile. */
static void *write_loop(void *opaque)
{
    writer *wr = opaque;
    int ret = 0;
    while (!__atomic_load_n(&wr->stop, __ATOMIC_ACQUIRE) && ret == 0) {
        wr->ops = realloc(wr->ops, (wr->nb + 1) * sizeof(*wr->ops));
        if (!wr->ops) {
            abort();
        }
        repl_op *o = &wr->ops[wr->nb];
        bool flush = rng_below(&wr->w->r, 6) == 0 &&
                     !__atomic_load_n(&wr->quiet, __ATOMIC_ACQUIRE);
        ret = flush ? secondary_flush(wr->w, wr->rd, o)
                    : secondary_write(wr->w, wr->rd, wr->vmodel, o);
        __atomic_store_n(&wr->ret, ret, __ATOMIC_RELEASE);
        wr->nb++;
        __atomic_add_fetch(&wr->done, 1, __ATOMIC_RELEASE);
        nanosleep(&(struct timespec){0, 200000}, NULL);
    }
    return NULL;
}

static bool wait_done(writer *wr, int n)
{
    for (int t = 0; __atomic_load_n(&wr->done, __ATOMIC_ACQUIRE) < n; t++) {
        if (__atomic_load_n(&wr->ret, __ATOMIC_ACQUIRE) < 0 || t > 60000) {
            return false;
        }
        nanosleep(&(struct timespec){0, 200000}, NULL);
    }
    return true;
}

/* Whether a write record of the active disk in [o->start, o->end) carries o's tags: the
 * write went to the active disk (before the failover's switch), not to the secondary
 * disk. Other records of the active disk in that window (its close, after the switch) do
 * not carry them. */
static bool reached_active(const wlog *l, const repl_op *o)
{
    for (size_t i = 0; i < l->nb; i++) {
        const logrec *rec = &l->recs[i];
        if (rec->pos < o->start || rec->pos >= o->end || rec->file != 2 ||
            rec->type != VD_LOGW_WRITE) {
            continue;
        }
        for (uint64_t k = 0; k + SECTOR <= rec->len; k += SECTOR) {
            if (tag_id(rec->data + k) == o->vals[0]) {
                return true;
            }
        }
    }
    return false;
}

static gop *s_op(wl *w, op_kind kind, uint64_t start, uint64_t end, bool maybe)
{
    gop *g = add_op(w, kind, start);
    g->end = end;
    g->size_after = w->size;
    g->maybe = maybe;
    g->vals = xmalloc(0);
    return g;
}

static void s_op_vals(gop *g, uint64_t first, uint64_t count, const uint32_t *vals)
{
    free(g->vals);
    g->first = first;
    g->count = count;
    g->vals = copy_vals(vals, count);
}

/* The secondary disk's journal over the failover: the commit may write what the view held
 * when it began (vpre) and any write that reached the active disk, from the failover's
 * start on, until it returned; the switch flushed the view as of then (vpre and the
 * writes to the active disk), which covers all of those; writes after the switch went
 * straight to the secondary disk, and a flush of the replication node that began after
 * the failover returned flushes it. */
static void journal_failover(repl_wl *s, const writer *wr, const uint32_t *vpre)
{
    wl *w = s->w;
    repl_journal *r = s->r;
    uint64_t f0 = r->failover_start, f1 = r->failover_end, sw0 = f1;
    uint32_t *vsw = copy_vals(vpre, s->sectors);
    gop *g = s_op(w, OP_WRITE, f0, f0, true);
    g->until = f1;
    s_op_vals(g, 0, s->sectors, vpre);
    /* Nothing the writer did reached the secondary disk before the failover began: its
     * ops are taken as starting then at the earliest (which keeps j sorted by start). */
    for (size_t i = 0; i < wr->nb; i++) {
        const repl_op *o = &wr->ops[i];
        uint64_t st = o->start > f0 ? o->start : f0;
        if (o->kind == RK_SECONDARY && o->in_active) {
            g = s_op(w, OP_WRITE, st, o->end, true);
            g->until = f1;
            s_op_vals(g, o->first, o->count, o->vals);
            memcpy(vsw + o->first, o->vals, o->count * sizeof(uint32_t));
        } else if (o->kind == RK_SECONDARY && st < sw0) {
            sw0 = st;
        }
    }
    s_op_vals(s_op(w, OP_WRITE, sw0, f1, false), 0, s->sectors, vsw);
    s_op(w, OP_FLUSH, sw0, f1, false);
    free(vsw);
    for (size_t i = 0; i < wr->nb; i++) {
        const repl_op *o = &wr->ops[i];
        if (o->kind == RK_SECONDARY && !o->in_active) {
            s_op_vals(s_op(w, OP_WRITE, o->start > f0 ? o->start : f0, o->end, false),
                      o->first, o->count, o->vals);
        } else if (o->kind == RK_SECONDARY_FLUSH && o->start >= f1) {
            s_op(w, OP_FLUSH, o->start, o->end, false);
        }
    }
}

/* Where each of the writer's ops went, from the log: writes by their tags; a flush surely
 * flushed the active disk if it ended before the failover began or before a write that
 * reached the active disk began (the switch comes after that write). */
static int classify(repl_wl *s, writer *wr)
{
    wlog l;
    if (wlog_load(s->w->j->log, &l) < 0) {
        return fail("replication", "could not load the log");
    }
    uint64_t last_active = 0;
    bool switched = false;
    int ret = 0;
    for (size_t i = 0; i < wr->nb; i++) {
        repl_op *o = &wr->ops[i];
        if (o->kind != RK_SECONDARY) {
            continue;
        }
        o->in_active = reached_active(&l, o);
        if (o->in_active && switched) {
            ret = fail("replication", "a write reached the active disk after one had "
                       "reached the secondary disk");
        }
        if (!o->in_active && o->end <= s->r->failover_start) {
            ret = fail("replication", "a write before the failover missed the active disk");
        }
        switched |= !o->in_active;
        last_active = o->in_active ? o->start : last_active;
    }
    for (size_t i = 0; i < wr->nb; i++) {
        repl_op *o = &wr->ops[i];
        if (o->kind == RK_SECONDARY_FLUSH) {
            o->in_active = o->end <= s->r->failover_start || o->end <= last_active;
        }
    }
    wlog_free(&l);
    return ret;
}

static int failover(repl_wl *s)
{
    wl *w = s->w;
    writer wr = {.w = w, .rd = s->rd, .vmodel = s->vmodel};
    uint32_t *vpre = copy_vals(s->vmodel, s->sectors);
    pthread_t t;
    if (pthread_create(&t, NULL, write_loop, &wr) != 0) {
        free(vpre);
        return fail("failover", "could not start the writer");
    }
    int ret = wait_done(&wr, WINDOW_BEFORE) ? 0 : fail("failover", "the writer stalled");
    vd_error *err = NULL;
    if (ret == 0) {
        __atomic_store_n(&wr.quiet, 1, __ATOMIC_RELEASE);
        s->r->failover_start = log_len(w);
        ret = vd_replication_stop_all(w->e, true, &err);
        s->r->failover_end = log_len(w);
        if (ret < 0) {
            ret = fail("failover", vd_error_msg(err));
            vd_error_free(err);
        }
    }
    int at_end = __atomic_load_n(&wr.done, __ATOMIC_ACQUIRE);
    if (ret == 0 && !wait_done(&wr, at_end + WINDOW_AFTER)) {
        ret = fail("failover", "the writer stalled after the failover");
    }
    __atomic_store_n(&wr.stop, 1, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    ret = ret == 0 ? wr.ret : ret;
    /* Every write of the secondary is in the view, which the secondary disk alone now
     * holds. */
    if (ret == 0) {
        ret = expect_tags(s->rd, s->vmodel, 0, s->sectors, "the view after the failover");
    }
    if (ret == 0) {
        ret = expect_tags(s->pd, s->vmodel, 0, s->sectors,
                          "the secondary disk after the failover");
    }
    if (ret == 0) {
        ret = classify(s, &wr);
    }
    if (ret == 0) {
        journal_failover(s, &wr, vpre);
    }
    /* The view's journal takes the writer's ops as they are (they started in order). */
    for (size_t i = 0; i < wr.nb; i++) {
        repl_op *o = repl_add(s->r, wr.ops[i].kind, 0);
        *o = wr.ops[i];
    }
    free(wr.ops);
    free(vpre);
    return ret;
}

/* After the failover: the replication node writes the secondary disk alone. */
static int post_op(repl_wl *s, bool flush)
{
    repl_op o;
    int ret = flush ? secondary_flush(s->w, s->rd, &o)
                    : secondary_write(s->w, s->rd, s->vmodel, &o);
    if (ret < 0) {
        free(o.vals);
        return ret;
    }
    o.in_active = false;
    *repl_add(s->r, o.kind, 0) = o;
    gop *g = s_op(s->w, flush ? OP_FLUSH : OP_WRITE, o.start, o.end, false);
    if (!flush) {
        s_op_vals(g, o.first, o.count, o.vals);
    }
    return 0;
}

/* durable_at of every write: the end of the first flush that began after it ended and
 * flushed the layer the view reads it from. */
static void set_durable(repl_journal *r)
{
    for (size_t i = 0; i < r->nb_ops; i++) {
        repl_op *o = &r->ops[i];
        repl_kind by = o->kind == RK_PRIMARY ? RK_PRIMARY_FLUSH : RK_SECONDARY_FLUSH;
        if ((o->kind != RK_PRIMARY && o->kind != RK_SECONDARY) || !o->in_active) {
            continue;
        }
        for (size_t k = i + 1; k < r->nb_ops; k++) {
            const repl_op *f = &r->ops[k];
            if (f->kind == by && (by == RK_PRIMARY_FLUSH || f->in_active) &&
                f->start >= o->end && f->end < o->durable_at) {
                o->durable_at = f->end;
            }
        }
    }
}

static int open_claimed(wl *w, const char *node, vd_disk **d, vd_perm_claim **c)
{
    vd_error *err = NULL;
    if (vd_blockdev_open(w->e, node, d, &err) < 0 ||
        vd_disk_claim(*d, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE, VD_PERM_ALL, c, &err) < 0) {
        int r = fail(node, vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    return 0;
}

static int setup(repl_wl *s, uint64_t size)
{
    wl *w = s->w;
    journal *j = w->j;
    const char *dir = w->cfg->dir;
    char sec[4200], hid[4200], act[4200], json[20000];
    snprintf(sec, sizeof(sec), "%s/secondary.qcow2", dir);
    snprintf(hid, sizeof(hid), "%s/hidden.qcow2", dir);
    snprintf(act, sizeof(act), "%s/active.qcow2", dir);
    snprintf(j->image, sizeof(j->image), "%s/secondary.qcow2", dir);
    if (make_backing(w, sec, size) < 0 || create_overlay(w, hid, size, "secondary.qcow2") < 0 ||
        create_overlay(w, act, size, "hidden.qcow2") < 0 ||
        add_file(w, "secondary.qcow2") < 0 || add_file(w, "hidden.qcow2") < 0 ||
        add_file(w, "active.qcow2") < 0) {
        return -1;
    }
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"sd\", "
             "\"filename\": \"logwrites:%s:%s\"}", j->log, sec);
    if (add_node(w, json) < 0 || open_claimed(w, "sd", &s->pd, &s->pc) < 0) {
        return -1;
    }
    snprintf(json, sizeof(json), "{\"driver\": \"replication\", \"node-name\": \"rs\", "
             "\"mode\": \"secondary\", \"top-id\": \"rs\", \"file\": {\"driver\": \"qcow2\", "
             "\"node-name\": \"active\", \"filename\": \"logwrites:%s#2:%s\", "
             "\"backing\": {\"driver\": \"qcow2\", \"node-name\": \"hidden\", "
             "\"filename\": \"logwrites:%s#1:%s\", \"backing\": \"sd\"}}}", j->log, act,
             j->log, hid);
    return add_node(w, json) < 0 || open_claimed(w, "rs", &s->rd, &s->rc) < 0 ? -1 : 0;
}

/* kind "replication": the secondary disk formatted with tags; replication started; the
 * primary's writes (write, write zeroes, discard) on the secondary disk and the
 * secondary's writes through the replication node, each side flushing now and then, with
 * checkpoints at a third and two thirds of the ops; then the failover while the secondary
 * keeps writing from its own thread, and more of its writes and flushes after. Journals:
 * j is the secondary disk's own (what it alone reads), j->repl the view's history. */
int run_replication(wl *w, uint64_t size)
{
    journal *j = w->j;
    repl_wl s = {.w = w, .sectors = size / SECTOR};
    j->job_kind = "replication";
    j->data_file = 0;
    j->repl = calloc(1, sizeof(*j->repl));
    s.r = j->repl;
    s.smodel = xmalloc(s.sectors * sizeof(uint32_t));
    s.vmodel = xmalloc(s.sectors * sizeof(uint32_t));
    int ret = setup(&s, size);
    w->d = s.pd;
    w->size = size;
    j->size0 = size;
    j->vals0 = xmalloc(s.sectors * sizeof(uint32_t));
    if (ret == 0 && read_tags(s.pd, 0, s.sectors, j->vals0) < 0) {
        ret = fail("read", vd_disk_last_error(s.pd));
    }
    if (ret == 0) {
        memcpy(s.smodel, j->vals0, s.sectors * sizeof(uint32_t));
        ret = checkpoint(&s, true);
    }
    if (ret == 0) {
        ret = filter_cluster(&s);
    }
    for (int i = 0; i < w->cfg->ops && ret == 0; i++) {
        if (i && (i == w->cfg->ops / 3 || i == 2 * w->cfg->ops / 3)) {
            ret = checkpoint(&s, false);
        }
        uint64_t x = rng_below(&w->r, 100);
        if (ret < 0) {
            break;
        } else if (x < 42) {
            ret = primary_op(&s);
        } else if (x < 84) {
            ret = secondary_write(w, s.rd, s.vmodel, repl_add(s.r, RK_SECONDARY, 0));
        } else if (x < 92) {
            ret = primary_flush(&s);
        } else {
            ret = secondary_flush(w, s.rd, repl_add(s.r, RK_SECONDARY_FLUSH, 0));
        }
    }
    if (ret == 0) {
        ret = failover(&s);
    }
    for (int i = 0; i < POST_OPS && ret == 0; i++) {
        ret = post_op(&s, i == POST_OPS - 1 || rng_below(&w->r, 4) == 0);
    }
    if (ret == 0) {
        ret = expect_tags(s.pd, s.vmodel, 0, s.sectors, "the secondary disk at the end");
    }
    set_durable(s.r);
    if (s.rd) {
        vd_disk_unclaim(s.rd, s.rc);
        vd_close(s.rd);
    }
    if (s.pd) {
        vd_disk_unclaim(s.pd, s.pc);
    }
    if (ret == 0) {
        ret = close_all(w, NULL);
    }
    free(s.smodel);
    free(s.vmodel);
    return ret;
}
