/* The checks of a job kind's crash state (jobs.c): every image checks clean (leaks
 * allowed), the guest's flushed writes are there, and what the job promises holds.
 * backup: the target holds the point in time in every cluster the job or the filter had
 * copied and flushed, and nothing but the point in time or zeros anywhere. commit: the
 * chain read through top is the guest's (a commit never changes it), and the commit run
 * again from the crashed state to its end leaves the same contents and top naming base.
 * replication has its own file (check-repl.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crash.h"
#include "vdisk/graph.h"
#include "vdisk/job.h"
#include "vdisk/vdisk.h"
#include "tools/engine-env.h"

/* One file of the state, under its own description. */
check_ctx file_ctx(const check_ctx *c, const journal *j, const char *dir, const char *name,
                   char *path, size_t path_len, char *what, size_t what_len)
{
    snprintf(path, path_len, "%s/%s", dir, name);
    snprintf(what, what_len, "%s, %s", c->what, name);
    check_ctx f = *c;
    f.j = j;
    f.state_path = path;
    f.what = what;
    return f;
}

static bool check_backup(const check_ctx *c, const char *dir, check_totals *t)
{
    char sp[4400], tp[4400], sw[700], tw[800];
    check_ctx s = file_ctx(c, c->j, dir, "source.qcow2", sp, sizeof(sp), sw, sizeof(sw));
    check_ctx g = file_ctx(c, c->j->target, dir, "target.qcow2", tp, sizeof(tp), tw,
                           sizeof(tw));
    /* The target's expected contents are the copy-before-write rule: say so when they
     * are not there. */
    snprintf(tw + strlen(tw), sizeof(tw) - strlen(tw), " (copy-before-write: a cluster "
             "copied and flushed must hold the point in time)");
    bool ok = check_state(&s, t);
    return check_state(&g, t) && ok;
}

int read_chain(vd_engine *e, const char *top, uint32_t **vals, uint64_t *sectors,
               char **backing, char *why, size_t why_len)
{
    vd_open_opts oo = {.format = "qcow2"};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_open(e, top, &oo, &d, &err) < 0) {
        snprintf(why, why_len, "could not open top with its chain: %s", vd_error_msg(err));
        vd_error_free(err);
        return -1;
    }
    *sectors = vd_disk_size(d) / SECTOR;
    *vals = calloc(*sectors ? *sectors : 1, sizeof(uint32_t));
    uint8_t *buf = malloc(256 * SECTOR);
    int ret = 0;
    for (uint64_t s = 0; s < *sectors && ret == 0; s += 256) {
        uint64_t n = *sectors - s < 256 ? *sectors - s : 256;
        ret = vd_pread(d, buf, n * SECTOR, s * SECTOR);
        for (uint64_t k = 0; k < n && ret == 0; k++) {
            (*vals)[s + k] = tag_decode(buf + k * SECTOR, s + k);
        }
    }
    free(buf);
    if (ret < 0) {
        snprintf(why, why_len, "reading the chain failed: %s", vd_disk_last_error(d));
    }
    vd_image_info info;
    if (ret == 0 && backing) {
        if (vd_get_info(d, &info, &err) < 0) {
            snprintf(why, why_len, "info: %s", vd_error_msg(err));
            vd_error_free(err);
            ret = -1;
        } else {
            *backing = info.backing_filename ? strdup(info.backing_filename) : NULL;
            vd_image_info_clear(&info);
        }
    }
    vd_close(d);
    return ret;
}

int add_json(vd_engine *e, const char *json, char *why, size_t why_len)
{
    vd_tree *tr = NULL;
    vd_error *err = NULL;
    int ret = vd_tree_parse_json(json, strlen(json), &tr, &err);
    if (ret == 0) {
        ret = vd_blockdev_add(e, tr, VD_OPEN_RDWR | VD_OPEN_UNMAP, &err);
    }
    if (ret < 0) {
        snprintf(why, why_len, "blockdev-add: %s", vd_error_msg(err));
        vd_error_free(err);
    }
    return ret;
}

int add_layer(vd_engine *e, const char *dir, const char *file, const char *node,
              const char *backing, bool ro, char *why, size_t why_len)
{
    char json[9000], back[160] = "";
    if (backing) {
        snprintf(back, sizeof(back), "\"backing\": \"%s\", ", backing);
    }
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"%s\", "
             "\"read-only\": %s, %s\"file\": {\"driver\": \"file\", \"filename\": "
             "\"%s/%s\"}}", node, ro ? "true" : "false", back, dir, file);
    return add_json(e, json, why, why_len);
}

/* The commit again, from the state in dir to its end. */
static int commit_again(const char *dir, char *why, size_t why_len)
{
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    int ret;
    if ((ret = add_layer(e, dir, "base.qcow2", "base", NULL, true, why, why_len)) < 0 ||
        (ret = add_layer(e, dir, "mid.qcow2", "mid", "base", true, why, why_len)) < 0 ||
        (ret = add_layer(e, dir, "top.qcow2", "top", "mid", false, why, why_len)) < 0) {
        goto out;
    }
    vd_commit_opts co = {.job_id = "c", .device = "top", .top_node = "mid",
                         .base_node = "base", .backing_file = "base.qcow2",
                         .auto_finalize = true};
    vd_error *err = NULL;
    if ((ret = vd_commit_start(e, &co, &err)) < 0) {
        snprintf(why, why_len, "block-commit: %s", vd_error_msg(err));
        vd_error_free(err);
        goto out;
    }
    for (int i = 0;; i++) {
        vd_job_info *list = NULL;
        size_t nb = 0;
        vd_job_list(e, &list, &nb);
        vd_job_status s = nb ? list[0].status : VD_JOB_NULL;
        if (s == VD_JOB_CONCLUDED && list[0].error) {
            snprintf(why, why_len, "the commit failed: %s", list[0].error);
            ret = -1;
        }
        vd_job_list_free(list, nb);
        if (s == VD_JOB_CONCLUDED || s == VD_JOB_NULL || ret < 0) {
            ret = ret < 0 ? ret : s == VD_JOB_CONCLUDED ? 0 : -1;
            if (s == VD_JOB_NULL) {
                snprintf(why, why_len, "the commit vanished");
            }
            break;
        }
        if (i > 600000) {
            snprintf(why, why_len, "the commit did not end");
            ret = -1;
            break;
        }
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
out:
    vd_engine_free(e);
    return ret;
}

static bool check_commit(const check_ctx *c, const char *dir, check_totals *t)
{
    char bp[4400], mp[4400], tp[4400], bw[700], mw[700], tw[700], why[1200];
    check_ctx b = file_ctx(c, c->j, dir, "base.qcow2", bp, sizeof(bp), bw, sizeof(bw));
    check_ctx m = file_ctx(c, c->j, dir, "mid.qcow2", mp, sizeof(mp), mw, sizeof(mw));
    check_ctx top = file_ctx(c, c->j, dir, "top.qcow2", tp, sizeof(tp), tw, sizeof(tw));
    /* qemu-img costs a process start: base and mid get it every fourth state. */
    if (t->states % 4) {
        b.qemu_img = m.qemu_img = NULL;
    }
    if (!check_image(&b, t) || !check_image(&m, t)) {
        return false;
    }
    /* Checks top, reads the chain through it against the journal, and writes a sector. */
    if (!check_state(&top, t)) {
        return false;
    }
    /* The restart: what the chain reads now must survive the commit run again. */
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    uint32_t *before = NULL, *after = NULL;
    uint64_t n1 = 0, n2 = 0;
    char *backing = NULL, *backing2 = NULL;
    bool ok = read_chain(e, tp, &before, &n1, &backing, why, sizeof(why)) == 0;
    if (ok && (!backing || (strcmp(backing, "mid.qcow2") && strcmp(backing, "base.qcow2")))) {
        snprintf(why, sizeof(why), "top names backing file '%s'", backing ? backing : "");
        ok = false;
    }
    if (ok && !strcmp(backing, "mid.qcow2")) {
        ok = commit_again(dir, why, sizeof(why)) == 0;
    }
    if (ok) {
        ok = read_chain(e, tp, &after, &n2, &backing2, why, sizeof(why)) == 0;
    }
    if (ok && (!backing2 || strcmp(backing2, "base.qcow2"))) {
        snprintf(why, sizeof(why), "after the commit ran again, top names backing file '%s'",
                 backing2 ? backing2 : "");
        ok = false;
    }
    for (uint64_t s = 0; ok && s < n1; s++) {
        if (n2 != n1 || after[s] != before[s]) {
            snprintf(why, sizeof(why), "the commit run again from this state changed what "
                     "the chain reads: sector %llu read tag %d, now %d (top named '%s')",
                     (unsigned long long)s, before[s] == TAG_GARBAGE ? -1 : (int)before[s],
                     n2 != n1 ? -2 : after[s] == TAG_GARBAGE ? -1 : (int)after[s], backing);
            ok = false;
        }
    }
    vd_engine_free(e);
    free(before);
    free(after);
    free(backing);
    free(backing2);
    if (!ok) {
        check_fail(&top, why);
        return false;
    }
    /* Every image of the finished chain checks clean (leaks allowed). */
    b.qemu_img = top.qemu_img = t->states % 4 == 1 ? c->qemu_img : NULL;
    return check_image(&b, t) && check_image(&top, t);
}

bool check_job_state(const check_ctx *c, const char *dir, check_totals *t)
{
    /* The per-file checks count states: this is one. */
    check_totals sub = *t;
    bool ok = !strcmp(c->j->job_kind, "backup")   ? check_backup(c, dir, &sub)
              : !strcmp(c->j->job_kind, "commit") ? check_commit(c, dir, &sub)
                                                  : check_replication(c, dir, &sub);
    t->leaks = sub.leaks;
    t->dirty = sub.dirty;
    t->dirty_qemu = sub.dirty_qemu;
    t->states++;
    if (!ok) {
        if (sub.lost > t->lost) {
            t->lost++;
        } else {
            t->corruptions++;
        }
    }
    return ok;
}
