/* The checks of a replication crash state (jobs-repl.c): secondary.qcow2, hidden.qcow2 and
 * active.qcow2 in one directory, active naming hidden and hidden naming secondary as their
 * backing files. V, the secondary's view, is what the replication node read; "the chain"
 * is what active.qcow2 reads through hidden.qcow2 and secondary.qcow2 in the state.
 *
 * (0) Every image opens and checks with no corruption (leaks allowed).
 * (1) The secondary disk alone reads what its journal (j) allows, check.c's rule: the
 *     primary's flushed writes are never lost; from the failover's start the commit may
 *     have written anything the view held then or the secondary wrote into the active
 *     disk since; once the failover returned, its switch had flushed the view as of then,
 *     so that must be there, with the secondary's later writes once a flush of them ended.
 * (2) The chain, in every sector x, at a crash in the epoch the last completed checkpoint
 *     C began (rule_allows()): if a flush of the active disk ended after a write w of the
 *     secondary to x since C, w or a later write of the secondary; else V(x) as of C, a
 *     write of the secondary since, or, unless a flush of the secondary disk (which
 *     flushes the hidden disk first) ended after the primary first wrote x's filter
 *     cluster since C, anything the secondary disk alone may read (1). That last part is
 *     what the design gives, not slack: with no flush between them a primary write may
 *     reach the disk before its copy does, and a checkpoint does not flush the secondary
 *     disk, whose unflushed writes from before C may be lost. While a checkpoint empties
 *     the two layers, the view before it and (1) may show. The failover writes only the
 *     secondary disk, below what the layers show, so (2) holds during and after it.
 * (3) Before the failover returned: the failover's commit run again from the state (what
 *     active and hidden hold copied into the secondary disk by the library's copy
 *     engine, as failover() copies it) leaves the secondary disk alone reading what the
 *     chain read, and the chain unchanged. (After it returned the layers are stale: the
 *     secondary disk alone is the view, which (1) checks.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crash.h"
#include "vdisk/copy.h"
#include "vdisk/graph.h"
#include "vdisk/vdisk.h"
#include "tools/engine-env.h"

/* What the chain may read at one crash point (pos), built once per state. */
typedef struct view_rule {
    const journal *j;         /* the secondary disk's, for what it alone may read */
    const repl_journal *r;
    expect sx;                /* (1) at pos */
    uint64_t pos;
    const uint32_t *at_cp;    /* V at the last completed checkpoint */
    uint64_t epoch_start;     /* that checkpoint's end: the epoch's ops start after it */
    bool emptying;            /* a checkpoint had begun and not ended */
    long *req;                /* per sector: the newest write of the secondary that a flush
                               * made durable in the active disk (op index), else -1 */
    uint8_t *copied;          /* per filter cluster: its copy in the hidden disk is durable */
} view_rule;

static void rule_build(const journal *j, uint64_t pos, uint64_t sectors, view_rule *v)
{
    const repl_journal *r = j->repl;
    memset(v, 0, sizeof(*v));
    v->j = j;
    v->r = r;
    v->pos = pos;
    v->at_cp = j->vals0;
    expect_build(j, pos, &v->sx);
    for (size_t i = 0; i < r->nb_ops; i++) {
        const repl_op *o = &r->ops[i];
        if (o->kind == RK_CHECKPOINT && o->end <= pos) {
            v->at_cp = o->vals;
            v->epoch_start = o->end;
        } else if (o->kind == RK_CHECKPOINT && o->start < pos) {
            v->emptying = true;
        }
    }
    v->req = malloc((sectors ? sectors : 1) * sizeof(long));
    v->copied = calloc(sectors / r->cbw_cluster + 1, 1);
    if (!v->req || !v->copied) {
        abort();
    }
    for (uint64_t s = 0; s < sectors; s++) {
        v->req[s] = -1;
    }
    for (size_t i = 0; i < r->nb_ops && !v->emptying; i++) {
        const repl_op *o = &r->ops[i];
        if (o->start < v->epoch_start || o->start >= pos || o->durable_at > pos) {
            continue;
        }
        if (o->kind == RK_SECONDARY && o->in_active) {
            for (uint64_t s = o->first; s < o->first + o->count; s++) {
                v->req[s] = (long)i;
            }
        } else if (o->kind == RK_PRIMARY && o->count) {
            uint64_t c0 = o->first / r->cbw_cluster;
            uint64_t c1 = (o->first + o->count - 1) / r->cbw_cluster;
            memset(v->copied + c0, 1, c1 - c0 + 1);
        }
    }
}

static void rule_free(view_rule *v)
{
    expect_free(&v->sx);
    free(v->req);
    free(v->copied);
}

/* Whether a write of the secondary to the active disk, from op `from` on in this epoch and
 * begun before the crash, left tag val in sector s. */
static bool secondary_wrote(const view_rule *v, size_t from, uint64_t s, uint32_t val)
{
    for (size_t i = from; i < v->r->nb_ops && v->r->ops[i].start < v->pos; i++) {
        const repl_op *o = &v->r->ops[i];
        if (o->kind == RK_SECONDARY && o->in_active && o->start >= v->epoch_start &&
            s >= o->first && s < o->first + o->count && o->vals[s - o->first] == val) {
            return true;
        }
    }
    return false;
}

/* The rule (2) for sector s reading val; else why not, in why. */
static bool rule_allows(const view_rule *v, uint64_t s, uint32_t val, char *why,
                        size_t why_len)
{
    if (v->req[s] >= 0) {
        const repl_op *o = &v->r->ops[v->req[s]];
        if (secondary_wrote(v, (size_t)v->req[s], s, val)) {
            return true;
        }
        snprintf(why, why_len, "the secondary's write %u there was flushed to the active "
                 "disk: only it or a later write of the secondary may show",
                 o->vals[s - o->first]);
        return false;
    }
    if (val == v->at_cp[s] || secondary_wrote(v, 0, s, val)) {
        return true;
    }
    bool copied = v->copied[s / v->r->cbw_cluster];
    if ((v->emptying || !copied) && expect_allows(v->j, &v->sx, v->pos, s, val)) {
        return true;
    }
    snprintf(why, why_len, "allowed: tag %u (the view at the last checkpoint), a write of "
             "the secondary since%s", v->at_cp[s],
             v->emptying ? ", or what the secondary disk may hold"
             : copied ? "; not the secondary disk's, whose old data the hidden disk "
                        "holds since a flush of the secondary disk (copy-before-write)"
                      : ", or what the secondary disk may hold");
    return false;
}

static int tag_int(uint32_t v)
{
    return v == TAG_GARBAGE ? -1 : (int)v;
}

/* The failover's commit again: what active and hidden hold, copied into the secondary disk
 * by the copy engine (above the secondary disk, as failover() copies), then flushed. */
static int commit_again(const char *dir, char *why, size_t why_len)
{
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    vd_disk *src = NULL, *dst = NULL;
    vd_error *err = NULL;
    int ret;
    if ((ret = add_layer(e, dir, "secondary.qcow2", "sd", NULL, false, why, why_len)) < 0 ||
        (ret = add_layer(e, dir, "hidden.qcow2", "hidden", "sd", true, why, why_len)) < 0 ||
        (ret = add_layer(e, dir, "active.qcow2", "active", "hidden", true, why, why_len)) < 0) {
        goto out;
    }
    if ((ret = vd_blockdev_open(e, "active", &src, &err)) < 0 ||
        (ret = vd_blockdev_open(e, "sd", &dst, &err)) < 0) {
        snprintf(why, why_len, "open for the commit: %s", vd_error_msg(err));
        goto out;
    }
    vd_copy_opts co = {.above_depth = 2};
    if ((ret = vd_disk_copy(src, dst, 0, vd_disk_size(src), &co, &err)) < 0) {
        snprintf(why, why_len, "the commit again: %s", vd_error_msg(err));
        goto out;
    }
    if ((ret = vd_flush(dst)) < 0) {
        snprintf(why, why_len, "flushing the secondary disk: %s", vd_disk_last_error(dst));
    }
out:
    vd_error_free(err);
    vd_close(src);
    vd_close(dst);
    vd_engine_free(e);
    return ret;
}

/* (1) and (2) on what the state reads; (3) before the failover returned. Returns 0 when
 * they hold, 1 when one does not, -1 when the state could not be read or committed. */
static int check_data(const check_ctx *c, const char *dir, const char *sp, const char *ap,
                      char *why, size_t why_len)
{
    const journal *j = c->j;
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    uint32_t *sv = NULL, *cv = NULL, *sv2 = NULL, *cv2 = NULL;
    uint64_t ns = 0, nc = 0, n;
    if (read_chain(e, sp, &sv, &ns, NULL, why, why_len) < 0 ||
        read_chain(e, ap, &cv, &nc, NULL, why, why_len) < 0) {
        free(sv);
        free(cv);
        vd_engine_free(e);
        return -1;
    }
    bool ok = true, failed = false;
    if (ns != j->size0 / SECTOR || nc != ns) {
        snprintf(why, why_len, "sizes: the secondary disk has %llu sectors, the chain %llu",
                 (unsigned long long)ns, (unsigned long long)nc);
        ok = false;
    }
    view_rule v;
    rule_build(j, c->crash_pos, ns, &v);
    for (uint64_t s = 0; ok && s < ns; s++) {
        if (!expect_allows(j, &v.sx, c->crash_pos, s, sv[s])) {
            snprintf(why, why_len, "(1) the secondary disk alone: sector %llu reads tag %d, "
                     "flushed tag %u was expected (or a later write's)",
                     (unsigned long long)s, tag_int(sv[s]), v.sx.base[s]);
            ok = false;
        }
    }
    char rw[600];
    for (uint64_t s = 0; ok && s < ns; s++) {
        if (!rule_allows(&v, s, cv[s], rw, sizeof(rw))) {
            snprintf(why, why_len, "(2) the chain active -> hidden -> secondary: sector %llu "
                     "reads tag %d; %s", (unsigned long long)s, tag_int(cv[s]), rw);
            ok = false;
        }
    }
    rule_free(&v);
    if (ok && c->crash_pos < j->repl->failover_end) {
        failed = commit_again(dir, why, why_len) < 0 ||
                 read_chain(e, sp, &sv2, &n, NULL, why, why_len) < 0 ||
                 read_chain(e, ap, &cv2, &n, NULL, why, why_len) < 0;
        ok = !failed;
        for (uint64_t s = 0; ok && s < ns; s++) {
            if (sv2[s] != cv[s] || cv2[s] != cv[s]) {
                snprintf(why, why_len, "(3) after the failover's commit ran again from this "
                         "state, sector %llu of the secondary disk reads tag %d and the "
                         "chain %d, where the chain read %d", (unsigned long long)s,
                         tag_int(sv2[s]), tag_int(cv2[s]), tag_int(cv[s]));
                ok = false;
            }
        }
    }
    free(sv);
    free(cv);
    free(sv2);
    free(cv2);
    vd_engine_free(e);
    return ok ? 0 : failed ? -1 : 1;
}

bool check_replication(const check_ctx *c, const char *dir, check_totals *t)
{
    char sp[4400], hp[4400], ap[4400], sw[700], hw[700], aw[700], why[1500];
    check_ctx s = file_ctx(c, c->j, dir, "secondary.qcow2", sp, sizeof(sp), sw, sizeof(sw));
    check_ctx h = file_ctx(c, c->j, dir, "hidden.qcow2", hp, sizeof(hp), hw, sizeof(hw));
    check_ctx a = file_ctx(c, c->j, dir, "active.qcow2", ap, sizeof(ap), aw, sizeof(aw));
    /* qemu-img costs a process start: each image gets it every other state. */
    if (t->states % 2) {
        s.qemu_img = h.qemu_img = a.qemu_img = NULL;
    }
    if (!check_image(&s, t) || !check_image(&h, t) || !check_image(&a, t)) {
        return false;
    }
    int data = check_data(c, dir, sp, ap, why, sizeof(why));
    if (data != 0) {
        check_fail(c, why);
        /* A broken invariant counts as lost data, an unreadable state as a corruption. */
        t->lost += data > 0;
        return false;
    }
    /* The secondary disk after the commit ran again still checks clean. */
    return check_image_vdisk(&s, t);
}
