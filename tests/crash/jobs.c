/* The job kinds' workloads: a backup job (kind "backup": copy-before-write) from a source
 * the guest writes into a new target, and an intermediate commit (kind "commit") of
 * base <- mid <- top while the guest writes top. All of a kind's image files are recorded
 * in one shared log (block/logwrites.h), so that a crash state is one moment of them all;
 * check-jobs.c checks those states. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "block/cbw.h"
#include "vdisk/bitmap.h"
#include "vdisk/graph.h"
#include "workload.h"

/* Names the next file of the shared log and keeps its contents before recording. */
int add_file(wl *w, const char *name)
{
    journal *j = w->j;
    jfile *f = &j->files[j->nb_files++];
    char path[4200];
    snprintf(f->name, sizeof(f->name), "%s", name);
    snprintf(path, sizeof(path), "%s/%s", w->cfg->dir, name);
    return load_file(path, &f->base, &f->base_size);
}

/* The qcow2 node `node` over file `name` of the shared log, read-only when ro, over the
 * named node `backing` (NULL: none). */
static int add_logged_node(wl *w, const char *node, const char *name, bool ro,
                           const char *backing)
{
    char json[9000], log[4200], back[128] = "";
    uint32_t file = w->j->nb_files - 1;
    if (file == 0) {
        snprintf(log, sizeof(log), "%s", w->j->log);
    } else {
        snprintf(log, sizeof(log), "%s#%u", w->j->log, file);
    }
    if (backing) {
        snprintf(back, sizeof(back), ", \"backing\": \"%s\"", backing);
    }
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"%s\", "
             "\"read-only\": %s, \"filename\": \"logwrites:%s:%s/%s\"%s}", node,
             ro ? "true" : "false", log, w->cfg->dir, name, back);
    return add_node(w, json);
}

/* Waits for job id to conclude, then dismisses it; -1 if it failed. */
static int finish_job(wl *w, const char *id)
{
    for (int t = 0;; t++) {
        vd_job_status st = job_status(w->e, id);
        if (st == VD_JOB_CONCLUDED) {
            break;
        }
        if (st == VD_JOB_NULL || t > 120000) {
            return fail(id, "the job vanished or did not end");
        }
        nap_ms(1);
    }
    vd_job_info *list = NULL;
    size_t nb = 0;
    vd_job_list(w->e, &list, &nb);
    int ret = 0;
    for (size_t i = 0; i < nb; i++) {
        if (!strcmp(list[i].id, id) && list[i].error) {
            ret = fail(id, list[i].error);
        }
    }
    vd_job_list_free(list, nb);
    vd_error *err = NULL;
    if (vd_job_dismiss(w->e, id, &err) < 0) {
        ret = fail(id, vd_error_msg(err));
        vd_error_free(err);
    }
    return ret;
}

/* The guest's operations while a job runs: writes, write zeroes, discards and flushes. */
static int guest_op(wl *w)
{
    uint64_t x = rng_below(&w->r, 100);
    int r = x < 65 ? op_write(w) : x < 73 ? op_zero_discard(w, false)
          : x < 80 ? op_zero_discard(w, true) : op_flush(w, OP_FLUSH);
    nap_ms(1 + (long)rng_below(&w->r, 8));   /* spread over the job */
    return r;
}

/* Ends the recording: every handle closed and the engine freed (which flushes and closes
 * the nodes), journalled like a flush on each journal given. */
int close_all(wl *w, journal *other)
{
    uint64_t start = log_len(w);
    vd_close(w->d);
    w->d = NULL;
    vd_engine_free(w->e);
    w->e = NULL;
    journal *js[2] = {w->j, other};
    for (int i = 0; i < 2 && js[i]; i++) {
        journal *save = w->j;
        w->j = js[i];
        gop *o = add_op(w, OP_CLOSE, start);
        o->size_after = w->size;
        o->end = log_len(w);
        w->j = save;
    }
    return 0;
}

/* ---- backup ------------------------------------------------------------------------------- */

/* What the target may and must hold: the source at the job's start (pit) in every cluster
 * of the copy set, zeros elsewhere. */
typedef struct backup_model {
    journal *t;
    uint32_t *pit;
    uint8_t *in_set;             /* per filter cluster */
    uint64_t cluster;            /* the filter's, in sectors */
} backup_model;

static uint32_t target_value(const backup_model *m, uint64_t s)
{
    return m->in_set[s / m->cluster] ? m->pit[s] : 0;
}

/* The target's side of the source op just journalled: a write, write zeroes or discard
 * copies the old data of its clusters first (the copy-before-write rule), and a flush of
 * the source flushes the target first, so after it those clusters hold the point in
 * time for good. */
static void target_op(wl *w, backup_model *m)
{
    const gop *g = &w->j->ops[w->j->nb_ops - 1];
    journal *save = w->j;
    w->j = m->t;
    gop *o = add_op(w, g->kind == OP_FLUSH ? OP_FLUSH : OP_WRITE, g->start);
    o->end = g->end;
    o->size_after = w->size;
    o->vals = xmalloc(0);
    if (g->kind != OP_FLUSH && g->count) {
        free(o->vals);
        uint64_t sectors = w->size / SECTOR;
        o->first = g->first / m->cluster * m->cluster;
        uint64_t e = (g->first + g->count + m->cluster - 1) / m->cluster * m->cluster;
        o->count = (e < sectors ? e : sectors) - o->first;
        o->vals = xmalloc(o->count * sizeof(uint32_t));
        for (uint64_t k = 0; k < o->count; k++) {
            o->vals[k] = target_value(m, o->first + k);
        }
    }
    w->j = save;
}

/* The filter's cluster size, in sectors, from its node. */
static int filter_cluster(wl *w, uint64_t *sectors)
{
    vd_node *n = NULL;
    if (vd_graph_ref(w->e, "cbw", &n, NULL) < 0) {
        return fail("backup", "no copy-before-write node 'cbw'");
    }
    vd_cbw *c = vd_cbw_of(n);
    *sectors = c ? vd_cbw_cluster(c) / SECTOR : 0;
    vd_node_unref(n);
    return *sectors ? 0 : fail("backup", "'cbw' is not a copy-before-write node");
}

/* kind "backup": the guest writes the source (file 0) while a backup job copies it into a
 * new target (file 1) with the copy-before-write filter on the source. By --backup-mode
 * or else the seed: sync=full or sync=bitmap (a bitmap added before some writes the job
 * then copies), either with compressed clusters or not. The source's journal is the
 * guest's; the target's (j->target) says what the target may hold: the point in time or
 * zeros, and the point in time for good in every cluster the guest changed before a
 * completed flush of the source, and everywhere in the copy set once the job has ended. */
int run_backup(wl *w, uint64_t size)
{
    journal *j = w->j;
    char src[4200], tgt[4200];
    static const char *const modes[] = {"full", "bitmap", "full-compress", "bitmap-compress"};
    const char *mode = w->cfg->backup_mode ? w->cfg->backup_mode : modes[w->cfg->seed % 4];
    bool bitmap = !strncmp(mode, "bitmap", 6);
    bool compress = strstr(mode, "compress") != NULL;
    snprintf(src, sizeof(src), "%s/source.qcow2", w->cfg->dir);
    snprintf(tgt, sizeof(tgt), "%s/target.qcow2", w->cfg->dir);
    snprintf(j->image, sizeof(j->image), "%s/source.qcow2", w->cfg->dir);
    if (make_backing(w, src, size) < 0 || create_image(w, tgt, size, NULL, false) < 0 ||
        add_file(w, "source.qcow2") < 0 || add_logged_node(w, "src", "source.qcow2", false,
                                                           NULL) < 0 ||
        add_file(w, "target.qcow2") < 0 || add_logged_node(w, "tgt", "target.qcow2", false,
                                                           NULL) < 0) {
        return -1;
    }
    j->job_kind = "backup";
    j->data_file = 0;
    j->target = xmalloc(sizeof(*j->target));
    memset(j->target, 0, sizeof(*j->target));
    journal *t = j->target;
    snprintf(t->image, sizeof(t->image), "%s/target.qcow2", w->cfg->dir);
    snprintf(t->log, sizeof(t->log), "%s", j->log);
    t->data_file = 1;
    vd_error *err = NULL;
    if (vd_blockdev_open(w->e, "src", &w->d, &err) < 0) {
        int r = fail("open", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    uint64_t sectors = size / SECTOR;
    w->size = size;
    j->size0 = t->size0 = size;
    j->vals0 = xmalloc(sectors * sizeof(uint32_t));
    t->vals0 = calloc(sectors, sizeof(uint32_t));   /* a new target reads zeros */
    backup_model m = {.t = t, .pit = xmalloc(sectors * sizeof(uint32_t))};
    uint8_t *marked = calloc(sectors, 1);          /* what the bitmap marks, by sector */
    int ret = -1;
    if (!t->vals0 || !marked) {
        abort();
    }
    if (read_tags(w->d, 0, sectors, j->vals0) < 0) {
        fail("read", "I/O error");
        goto out;
    }
    uint64_t gran = 0;
    if (bitmap) {
        gran = 4096ull << rng_below(&w->r, 6);      /* 4 KiB to 128 KiB */
        vd_bitmap_add_opts bo = {.granularity = gran};
        if (vd_disk_bitmap_add(w->d, "inc", &bo, &err) < 0) {
            fail("bitmap", vd_error_msg(err));
            vd_error_free(err);
            goto out;
        }
        /* Writes since the last (here: no) backup: what an incremental one copies. */
        for (int i = 0; i < 12; i++) {
            if (op_write(w) < 0) {
                goto out;
            }
            const gop *g = &j->ops[j->nb_ops - 1];
            uint64_t gs = gran / SECTOR, s = g->first / gs * gs;
            uint64_t e = (g->first + g->count + gs - 1) / gs * gs;
            memset(marked + s, 1, (e < sectors ? e : sectors) - s);
        }
    }
    if (read_tags(w->d, 0, sectors, m.pit) < 0) {
        fail("read", "I/O error");
        goto out;
    }
    /* The job's own copies may land any time from its start: one op that is never
     * required, filled in once the filter's cluster size is known. */
    uint64_t job_start = log_len(w);
    vd_backup_opts bo = {.job_id = "b", .device = "src", .target = "tgt",
                         .sync = bitmap ? VD_BACKUP_SYNC_BITMAP : VD_BACKUP_SYNC_FULL,
                         .bitmap = bitmap ? "inc" : NULL, .has_bitmap_mode = bitmap,
                         .bitmap_mode = VD_BITMAP_SYNC_ON_SUCCESS, .compress = compress,
                         .speed = (int64_t)(bitmap ? size / 8 : size * 2),
                         .auto_finalize = true, .filter_node_name = "cbw",
                         .max_workers = 4};
    if (vd_backup_start(w->e, &bo, &err) < 0) {
        fail("backup", vd_error_msg(err));
        vd_error_free(err);
        goto out;
    }
    if (filter_cluster(w, &m.cluster) < 0) {
        goto out;
    }
    uint64_t nc = (sectors + m.cluster - 1) / m.cluster;
    m.in_set = calloc(nc, 1);
    for (uint64_t s = 0; s < sectors; s++) {
        m.in_set[s / m.cluster] |= !bitmap || marked[s];
    }
    journal *save = w->j;
    w->j = t;
    gop *o = add_op(w, OP_WRITE, job_start);
    w->j = save;
    o->maybe = true;
    o->end = job_start;
    o->first = 0;
    o->count = sectors;
    o->size_after = size;
    o->vals = xmalloc(sectors * sizeof(uint32_t));
    for (uint64_t s = 0; s < sectors; s++) {
        o->vals[s] = target_value(&m, s);
    }
    for (int i = 0; i < w->cfg->ops; i++) {
        if (guest_op(w) < 0) {
            goto out;
        }
        target_op(w, &m);
    }
    if (finish_job(w, "b") < 0) {
        goto out;
    }
    /* The job flushed the target as it ended: all of the copy set is there for good. */
    uint64_t end = log_len(w);
    w->j = t;
    o = add_op(w, OP_WRITE, end);
    o->end = end;
    o->first = 0;
    o->count = sectors;
    o->size_after = size;
    o->vals = xmalloc(sectors * sizeof(uint32_t));
    for (uint64_t s = 0; s < sectors; s++) {
        o->vals[s] = target_value(&m, s);
    }
    o = add_op(w, OP_FLUSH, end);
    o->vals = xmalloc(0);
    o->end = end;
    o->size_after = size;
    w->j = save;
    /* What the job left must be the point in time. */
    vd_disk *td = NULL;
    uint32_t *got = xmalloc(sectors * sizeof(uint32_t));
    if (vd_blockdev_open(w->e, "tgt", &td, &err) < 0 || read_tags(td, 0, sectors, got) < 0) {
        fail("read target", err ? vd_error_msg(err) : "I/O error");
        vd_error_free(err);
        vd_close(td);
        free(got);
        goto out;
    }
    vd_close(td);
    ret = 0;
    for (uint64_t s = 0; s < sectors && ret == 0; s++) {
        if (got[s] != target_value(&m, s)) {
            char msg[160];
            snprintf(msg, sizeof(msg), "the target's sector %llu reads tag %u, the point in "
                     "time %u", (unsigned long long)s, got[s], target_value(&m, s));
            ret = fail("backup", msg);
        }
    }
    free(got);
    if (ret == 0) {
        ret = close_all(w, t);
    }
out:
    free(m.pit);
    free(m.in_set);
    free(marked);
    return ret;
}

/* ---- commit ------------------------------------------------------------------------------- */

int create_overlay(wl *w, const char *path, uint64_t size, const char *backing)
{
    vd_opts *o = vd_opts_new();
    char cs[32];
    snprintf(cs, sizeof(cs), "%u", w->cfg->cluster_size);
    vd_opts_set(o, "cluster_size", cs);
    vd_opts_set(o, "backing_file", backing);
    vd_opts_set(o, "backing_fmt", "qcow2");
    vd_error *err = NULL;
    int ret = vd_create(w->e, path, "qcow2", size, o, 0, &err);
    vd_opts_free(o);
    if (ret < 0) {
        ret = fail("create", vd_error_msg(err));
        vd_error_free(err);
    }
    return ret;
}

/* kind "commit": base (file 0) <- mid (file 1) <- top (file 2), named by relative backing
 * file names; an intermediate commit merges mid into base while the guest writes top,
 * then top names base ("base.qcow2"). The journal is what the guest reads through top,
 * which the commit never changes. */
int run_commit(wl *w, uint64_t size)
{
    journal *j = w->j;
    char base[4200], mid[4200], top[4200];
    snprintf(base, sizeof(base), "%s/base.qcow2", w->cfg->dir);
    snprintf(mid, sizeof(mid), "%s/mid.qcow2", w->cfg->dir);
    snprintf(top, sizeof(top), "%s/top.qcow2", w->cfg->dir);
    snprintf(j->image, sizeof(j->image), "%s/top.qcow2", w->cfg->dir);
    if (make_backing(w, base, size) < 0 || create_overlay(w, mid, size, "base.qcow2") < 0 ||
        fill_image(w, mid, size, 4) < 0 || create_overlay(w, top, size, "mid.qcow2") < 0 ||
        add_file(w, "base.qcow2") < 0 ||
        add_logged_node(w, "base", "base.qcow2", true, NULL) < 0 ||
        add_file(w, "mid.qcow2") < 0 ||
        add_logged_node(w, "mid", "mid.qcow2", true, "base") < 0 ||
        add_file(w, "top.qcow2") < 0 || add_logged_node(w, "top", "top.qcow2", false, "mid") < 0) {
        return -1;
    }
    j->job_kind = "commit";
    j->data_file = 2;
    vd_error *err = NULL;
    if (vd_blockdev_open(w->e, "top", &w->d, &err) < 0) {
        int r = fail("open", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    uint64_t sectors = size / SECTOR;
    w->size = size;
    j->size0 = size;
    j->vals0 = xmalloc(sectors * sizeof(uint32_t));
    if (read_tags(w->d, 0, sectors, j->vals0) < 0) {
        return fail("read", "I/O error");
    }
    vd_commit_opts co = {.job_id = "c", .device = "top", .top_node = "mid",
                         .base_node = "base", .backing_file = "base.qcow2",
                         .speed = (int64_t)size, .auto_finalize = true};
    if (vd_commit_start(w->e, &co, &err) < 0) {
        int r = fail("commit", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    for (int i = 0; i < w->cfg->ops; i++) {
        if (guest_op(w) < 0) {
            return -1;
        }
    }
    if (finish_job(w, "c") < 0) {
        return -1;
    }
    /* The chain reads what the guest's operations left, and top names base. */
    uint32_t *want = xmalloc(sectors * sizeof(uint32_t)), *got = xmalloc(sectors * 4);
    memcpy(want, j->vals0, sectors * sizeof(uint32_t));
    for (size_t i = 0; i < j->nb_ops; i++) {
        memcpy(want + j->ops[i].first, j->ops[i].vals, j->ops[i].count * sizeof(uint32_t));
    }
    int ret = read_tags(w->d, 0, sectors, got) < 0 ? fail("read", "I/O error") : 0;
    for (uint64_t s = 0; s < sectors && ret == 0; s++) {
        if (got[s] != want[s]) {
            char msg[160];
            snprintf(msg, sizeof(msg), "after the commit, sector %llu reads tag %u, not %u",
                     (unsigned long long)s, got[s], want[s]);
            ret = fail("commit", msg);
        }
    }
    free(want);
    free(got);
    vd_image_info info;
    if (ret == 0 && vd_get_info(w->d, &info, &err) == 0) {
        if (!info.backing_filename || strcmp(info.backing_filename, "base.qcow2")) {
            ret = fail("commit", "top does not name base.qcow2 as its backing file");
        }
        vd_image_info_clear(&info);
    } else if (ret == 0) {
        ret = fail("info", vd_error_msg(err));
        vd_error_free(err);
    }
    return ret == 0 ? close_all(w, NULL) : ret;
}
