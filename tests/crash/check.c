/* The checker: on one crash state, qemu-img check and vdisk's check must find no corruption
 * (leaks are allowed); vdisk must open the image read-write (a dirty image is repaired on
 * that open, by vdisk or, for every other one, first by QEMU); every write that was
 * acknowledged and then flushed before the crash must read back (a sector may also hold
 * what a later, unflushed operation wrote there); and after a new write the image must
 * still check clean. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crash.h"
#include "vdisk/bitmap.h"
#include "vdisk/vdisk.h"
#include "tools/engine-env.h"

extern char **environ;

static int qemu_img_check(const check_ctx *c, char *out, size_t out_len)
{
    char log[4200];
    snprintf(log, sizeof(log), "%s.qemu-img", c->state_path);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char *argv[] = {(char *)c->qemu_img, "check", "-f", "qcow2", (char *)c->state_path, NULL};
    pid_t pid;
    int ret = posix_spawnp(&pid, c->qemu_img, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (ret != 0) {
        snprintf(out, out_len, "could not run %s: %s", c->qemu_img, strerror(ret));
        return -1;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    out[0] = '\0';
    FILE *f = fopen(log, "r");
    if (f) {
        size_t n = fread(out, 1, out_len - 1, f);
        out[n] = '\0';
        fclose(f);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void keep_failure(const check_ctx *c, check_totals *t, const char *why)
{
    (void)t;
    fprintf(stderr, "crash-test: FAIL %s: %s\n", c->what, why);
}

/* qemu-img check: 0 clean, 3 leaks only (a failure unless leaks_ok); else a failure. */
static bool run_qemu_img(const check_ctx *c, check_totals *t, const char *when, bool leaks_ok)
{
    char out[2048], why[2300];
    int rc = qemu_img_check(c, out, sizeof(out));
    if (rc == 0 || (rc == 3 && leaks_ok)) {
        return true;
    }
    snprintf(why, sizeof(why), "qemu-img check %s exited %d:\n%.1500s", when, rc, out);
    keep_failure(c, t, why);
    return false;
}

/* vdisk's own check, in process; adds leaked clusters to the totals when count_leaks;
 * leaks are a failure unless leaks_ok. */
static bool run_vd_check(const check_ctx *c, check_totals *t, vd_engine *e, bool count_leaks,
                         bool leaks_ok)
{
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_CHECK | VD_OPEN_NO_REPAIR};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    char why[1200];
    if (vd_open(e, c->state_path, &oo, &d, &err) < 0) {
        snprintf(why, sizeof(why), "vdisk check could not open it: %s", vd_error_msg(err));
        vd_error_free(err);
        keep_failure(c, t, why);
        return false;
    }
    vd_check_result res = {0};
    int ret = vd_check(d, 0, &res, &err);
    vd_close(d);
    bool ok = ret == 0 && res.corruptions == 0 && res.check_errors == 0 &&
              (leaks_ok || res.leaks == 0);
    if (!ok) {
        snprintf(why, sizeof(why), "vdisk check: %s, %lld corruptions, %lld check errors, "
                 "%lld leaks:\n%.800s", ret < 0 ? vd_error_msg(err) : "ran",
                 (long long)res.corruptions, (long long)res.check_errors,
                 (long long)res.leaks, res.log ? res.log : "");
        keep_failure(c, t, why);
    } else if (count_leaks) {
        t->leaks += (uint64_t)res.leaks;
    }
    vd_error_free(err);
    vd_check_result_clear(&res);
    return ok;
}

/* What the guest may read at the crash point (crash.h): base and base_size from the ops
 * before the last completed flush, the ops from `extra` on adding what they may have left. */
void expect_build(const journal *j, uint64_t crash_pos, expect *x)
{
    size_t flushed = 0;   /* ops before the last completed flush */
    for (size_t i = 0; i < j->nb_ops; i++) {
        const gop *o = &j->ops[i];
        if ((o->kind == OP_FLUSH || o->kind == OP_CLOSE) && o->end <= crash_pos) {
            flushed = i;
        }
    }
    x->max_size = j->size0;
    for (size_t i = 0; i < j->nb_ops; i++) {
        if (j->ops[i].size_after > x->max_size) {
            x->max_size = j->ops[i].size_after;
        }
    }
    x->base = calloc(x->max_size / SECTOR, sizeof(uint32_t));
    if (!x->base) {
        abort();
    }
    memcpy(x->base, j->vals0, j->size0 / SECTOR * sizeof(uint32_t));
    x->base_size = j->size0;
    for (size_t i = 0; i < flushed; i++) {
        const gop *o = &j->ops[i];
        if (o->maybe) {
            continue;
        }
        memcpy(x->base + o->first, o->vals, o->count * sizeof(uint32_t));
        if (o->kind != OP_CLOSE) {
            x->base_size = o->size_after;
        }
    }
    x->extra = flushed;
}

void expect_free(expect *x)
{
    free(x->base);
    x->base = NULL;
}

/* A maybe op's values are no longer allowed once the log reached its `until`. */
static bool superseded(const gop *o, uint64_t crash_pos)
{
    return o->maybe && o->until && crash_pos >= o->until;
}

bool expect_allows(const journal *j, const expect *x, uint64_t crash_pos, uint64_t s,
                   uint32_t v)
{
    if (v == x->base[s]) {
        return true;
    }
    for (size_t i = 0; i < x->extra && j->ops[i].start < crash_pos; i++) {
        const gop *o = &j->ops[i];
        if (o->maybe && !superseded(o, crash_pos) && s >= o->first &&
            s < o->first + o->count && o->vals[s - o->first] == v) {
            return true;
        }
    }
    for (size_t i = x->extra; i < j->nb_ops && j->ops[i].start < crash_pos; i++) {
        const gop *o = &j->ops[i];
        if (!superseded(o, crash_pos) && s >= o->first && s < o->first + o->count &&
            o->vals[s - o->first] == v) {
            return true;
        }
    }
    return false;
}

static bool allowed_size(const journal *j, const expect *x, uint64_t crash_pos, uint64_t size)
{
    if (size == x->base_size) {
        return true;
    }
    for (size_t i = x->extra; i < j->nb_ops && j->ops[i].start < crash_pos; i++) {
        if (j->ops[i].kind != OP_CLOSE && j->ops[i].size_after == size) {
            return true;
        }
    }
    return false;
}

/* Opens the state read-write and checks what it reads. Returns 0 if all is well, 1 if
 * flushed data was lost, -1 on any other failure. */
/* leak_free: also check (while the image is open, after the repair a read-write open of a
 * dirty image makes and before its close stores bitmaps) that no leak is left. */
static int verify_data(const check_ctx *c, check_totals *t, vd_engine *e, bool leak_free)
{
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR | VD_OPEN_UNMAP};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    char why[1200];
    if (vd_open(e, c->state_path, &oo, &d, &err) < 0) {
        snprintf(why, sizeof(why), "vdisk could not open it read-write: %s",
                 vd_error_msg(err));
        vd_error_free(err);
        keep_failure(c, t, why);
        return -1;
    }
    expect x;
    expect_build(c->j, c->crash_pos, &x);
    uint64_t size = vd_disk_size(d);
    bool ok = true;
    /* A stored bitmap that is not flagged in use claims to know every write: only true
     * before the first guest operation (the open flags them in use, synced, first) or
     * once the close has begun storing them. */
    vd_bitmap_info *bl = NULL;
    size_t nb_bl = 0;
    uint64_t first_op = c->j->nb_ops ? c->j->ops[0].start : 0, close_start = UINT64_MAX;
    for (size_t i = 0; i < c->j->nb_ops; i++) {
        if (c->j->ops[i].kind == OP_CLOSE) {
            close_start = c->j->ops[i].start;
        }
    }
    if (vd_disk_bitmap_list(d, &bl, &nb_bl, NULL) == 0) {
        for (size_t i = 0; ok && i < nb_bl; i++) {
            if (bl[i].persistent && !bl[i].inconsistent && c->crash_pos > first_op &&
                c->crash_pos < close_start) {
                snprintf(why, sizeof(why), "bitmap '%s' is not flagged in use between the "
                         "first guest write and the close", bl[i].name);
                ok = false;
            }
        }
        vd_bitmap_list_free(bl, nb_bl);
    }
    if (!allowed_size(c->j, &x, c->crash_pos, size) || size > x.max_size) {
        snprintf(why, sizeof(why), "the disk has %llu bytes; %llu were flushed",
                 (unsigned long long)size, (unsigned long long)x.base_size);
        ok = false;
    }
    uint8_t *buf = malloc(256 * SECTOR);
    uint64_t lost = 0, first_bad = 0;
    uint32_t bad_val = 0;
    for (uint64_t s = 0; ok && s < size / SECTOR; s += 256) {
        uint64_t n = size / SECTOR - s < 256 ? size / SECTOR - s : 256;
        if (vd_pread(d, buf, n * SECTOR, s * SECTOR) < 0) {
            snprintf(why, sizeof(why), "read failed at sector %llu: %s",
                     (unsigned long long)s, vd_disk_last_error(d));
            ok = false;
            break;
        }
        for (uint64_t k = 0; k < n; k++) {
            uint32_t v = tag_decode(buf + k * SECTOR, s + k);
            if (!expect_allows(c->j, &x, c->crash_pos, s + k, v)) {
                if (!lost++) {
                    first_bad = s + k;
                    bad_val = v;
                }
            }
        }
    }
    if (ok && lost) {
        snprintf(why, sizeof(why), "%llu sectors lost flushed data; the first, sector %llu, "
                 "reads tag %d where flushed tag %u was expected", (unsigned long long)lost,
                 (unsigned long long)first_bad, bad_val == TAG_GARBAGE ? -1 : (int)bad_val,
                 x.base[first_bad]);
        ok = false;
    }
    free(buf);
    expect_free(&x);
    if (ok && leak_free && !run_vd_check(c, t, e, false, false)) {
        vd_close(d);
        return -1;
    }
    if (vd_close(d) < 0 && ok) {
        snprintf(why, sizeof(why), "closing after recovery failed");
        ok = false;
    }
    if (!ok) {
        keep_failure(c, t, why);
    }
    return ok ? 0 : lost ? 1 : -1;
}

/* The recovered image must take a new write and read it back. */
bool write_after_recovery(const check_ctx *c, check_totals *t, vd_engine *e)
{
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR | VD_OPEN_UNMAP};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    char why[1200];
    if (vd_open(e, c->state_path, &oo, &d, &err) < 0) {
        snprintf(why, sizeof(why), "vdisk could not reopen it: %s", vd_error_msg(err));
        vd_error_free(err);
        keep_failure(c, t, why);
        return false;
    }
    uint8_t buf[SECTOR];
    uint64_t sectors = vd_disk_size(d) / SECTOR, s = (c->crash_pos * 7919) % sectors;
    tag_fill(buf, c->write_id, s);
    bool ok = vd_pwrite(d, buf, SECTOR, s * SECTOR, 0) == 0 && vd_flush(d) == 0 &&
              vd_pread(d, buf, SECTOR, s * SECTOR) == 0 && tag_decode(buf, s) == c->write_id;
    if (!ok) {
        snprintf(why, sizeof(why), "a write after recovery failed: %s", vd_disk_last_error(d));
    }
    if (vd_close(d) < 0 && ok) {
        snprintf(why, sizeof(why), "closing after a write after recovery failed");
        ok = false;
    }
    if (!ok) {
        keep_failure(c, t, why);
    }
    return ok;
}

/* The dirty bit (incompatible feature bit 0): refcounts may be stale until a repair. */
static bool state_dirty(const char *path)
{
    uint8_t b[8] = {0};
    FILE *f = fopen(path, "rb");
    bool ok = f && fseek(f, 72, SEEK_SET) == 0 && fread(b, 1, 8, f) == 8;
    if (f) {
        fclose(f);
    }
    return ok && (b[7] & 1);
}

/* QEMU's repair on open: qemu-io opens the image read-write, which repairs a dirty image. */
static bool qemu_repair(const check_ctx *c, check_totals *t)
{
    char cmd[8600];
    snprintf(cmd, sizeof(cmd), "'%s' -f qcow2 -c flush '%s' >'%s.qemu-io' 2>&1", c->qemu_io,
             c->state_path, c->state_path);
    int rc = system(cmd);
    if (rc != 0) {
        keep_failure(c, t, "qemu-io could not open the dirty image read-write to repair it");
        return false;
    }
    return true;
}

bool check_state(const check_ctx *c, check_totals *t)
{
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    bool ok = true;
    /* A dirty image (lazy_refcounts, or a v3 image inside a snapshot's refcount and COPIED
     * window) may have stale refcounts until it is repaired on the next read-write open:
     * by QEMU for every other such state, else by vdisk. Its checks come after that. */
    bool dirty = state_dirty(c->state_path);
    if (dirty) {
        t->dirty++;
        if (c->qemu_img && c->qemu_io && t->dirty % 2 == 0) {
            t->dirty_qemu++;
            ok = qemu_repair(c, t);
        }
    } else {
        ok = (!c->qemu_img || run_qemu_img(c, t, "of the crash state", true)) &&
             run_vd_check(c, t, e, true, true);
    }
    /* A repaired dirty image must be clean, leaks included, before anything is written:
     * checked while verify_data holds it open, before its close stores bitmaps
     * (refcounts that a crash left past the end of the file are outside what any check
     * sees, QEMU's included; a later allocation can turn them into leaks). */
    int data = ok ? verify_data(c, t, e, dirty) : -1;
    if (data == 0) {
        data = run_vd_check(c, t, e, false, true) && write_after_recovery(c, t, e) ? 0 : -1;
    }
    if (data == 0) {
        /* qemu-img costs a process start: after recovery it checks every dirty state
         * (not checked before) and every fourth other one; vdisk checks them all. */
        bool qemu_after = c->qemu_img && (dirty || t->states % 4 == 0);
        ok = run_vd_check(c, t, e, false, true) &&
             (!qemu_after || run_qemu_img(c, t, "after recovery and a write", true));
    }
    if (data == 1) {
        t->lost++;
    } else if (data < 0 || !ok) {
        t->corruptions++;
    }
    t->states++;
    vd_engine_free(e);
    return data == 0 && ok;
}

void check_fail(const check_ctx *c, const char *why)
{
    keep_failure(c, NULL, why);
}

bool check_image(const check_ctx *c, check_totals *t)
{
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    bool ok = (!c->qemu_img || run_qemu_img(c, t, "of the crash state", true)) &&
              run_vd_check(c, t, e, true, true);
    vd_engine_free(e);
    return ok;
}

bool check_image_vdisk(const check_ctx *c, check_totals *t)
{
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    bool ok = run_vd_check(c, t, e, false, true);
    vd_engine_free(e);
    return ok;
}
