/* The checks of a migration's crash state (migration.c): the destination image as a crash
 * could leave it at some point of the migration. Every state must check clean (qemu-img
 * and vdisk, leaks allowed), open read-write, read what the rule below allows in every
 * sector, take a new write and check clean again.
 *
 * The rule, with P the last pass whose READY the receiver had promised before the crash
 * point (its durable callback ran, after the flush, before READY went out):
 *  - no READY yet: a sector reads zeros (the new image), the source's data from before
 *    the migration, or any write of the writer there. Nothing is promised, but nothing
 *    else was ever sent.
 *  - READY(P): everything of the passes through P is durable, and a pass sends what the
 *    source holds when it reads it, so the sector reads what the source held there at
 *    some moment from a point B on, where every write that had returned before B is
 *    surely in a pass through P: the newest write there that returned before B (or the
 *    source's data from before, if none), or any later write there. B is when pass
 *    P - 1 began (pass 1 for P = 1): a write that returned before pass q's event set its
 *    dirty bit before pass q + 1 took the bits (after the event), so it is in a pass
 *    through q + 1 (the bulk pass reads everything after its own event, and a write
 *    before it is there). Pass P's own event is not enough: it comes after P took its
 *    bits, so a write that returned between the two is only in pass P + 1. The order of
 *    "returned" and "began" is one atomic counter both step (crash.h).
 *  - from the first READY of the last pass (the switchover's: the users were held before
 *    it took the last bits, and every write after it was refused) on, COMMIT included:
 *    exactly what the source ended with, in every sector. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crash.h"
#include "vdisk/vdisk.h"
#include "tools/engine-env.h"

/* What a state at one crash point may read. */
typedef struct mig_rule {
    const mig_journal *m;
    uint64_t sectors;
    uint32_t pass;            /* P: the last pass promised durable (0: none) */
    bool final;               /* at or after the switchover's READY */
    long *floor;              /* per sector: the writer's newest write before B, or -1 */
    /* The writer's writes per sector, in order: those of sector s are
     * idx[off[s] .. off[s + 1]). */
    size_t *off, *idx;
} mig_rule;

static void rule_build(const mig_journal *m, uint64_t sectors, uint64_t pos, mig_rule *r)
{
    memset(r, 0, sizeof(*r));
    r->m = m;
    r->sectors = sectors;
    for (size_t i = 0; i < m->nb_ready; i++) {
        if (m->ready[i].pos <= pos && m->ready[i].pass > r->pass) {
            r->pass = m->ready[i].pass;
        }
    }
    r->final = pos >= m->final_pos;
    uint64_t b = r->pass ? m->pass_order[r->pass > 1 ? r->pass - 1 : 1] : 0;
    r->floor = malloc(sectors * sizeof(long));
    r->off = calloc(sectors + 1, sizeof(size_t));
    if (!r->floor || !r->off) {
        abort();
    }
    size_t total = 0;
    for (uint64_t s = 0; s < sectors; s++) {
        r->floor[s] = -1;
    }
    for (size_t i = 0; i < m->nb_writes; i++) {
        const mig_write *w = &m->writes[i];
        for (uint64_t s = w->first; s < w->first + w->count; s++) {
            r->off[s + 1]++;
            if (w->done < b) {
                r->floor[s] = (long)i;
            }
        }
        total += w->count;
    }
    for (uint64_t s = 0; s < sectors; s++) {
        r->off[s + 1] += r->off[s];
    }
    r->idx = malloc((total ? total : 1) * sizeof(size_t));
    size_t *fill = malloc((sectors ? sectors : 1) * sizeof(size_t));
    if (!r->idx || !fill) {
        abort();
    }
    memcpy(fill, r->off, sectors * sizeof(size_t));
    for (size_t i = 0; i < m->nb_writes; i++) {
        const mig_write *w = &m->writes[i];
        for (uint64_t s = w->first; s < w->first + w->count; s++) {
            r->idx[fill[s]++] = i;
        }
    }
    free(fill);
}

static void rule_free(mig_rule *r)
{
    free(r->floor);
    free(r->off);
    free(r->idx);
}

/* Whether a write of the writer after write `after` (-1: any) left v in sector s. */
static bool written_after(const mig_rule *r, uint64_t s, long after, uint32_t v)
{
    for (size_t k = r->off[s]; k < r->off[s + 1]; k++) {
        size_t i = r->idx[k];
        if ((long)i > after && r->m->writes[i].val == v) {
            return true;
        }
    }
    return false;
}

/* The value sector s must at least hold under READY(P). */
static uint32_t floor_val(const mig_rule *r, uint64_t s)
{
    return r->floor[s] < 0 ? r->m->src0[s] : r->m->writes[r->floor[s]].val;
}

static bool rule_allows(const mig_rule *r, uint64_t s, uint32_t v)
{
    if (r->final) {
        return v == r->m->final[s];
    }
    if (r->pass == 0) {
        return v == 0 || v == r->m->src0[s] || written_after(r, s, -1, v);
    }
    return v == floor_val(r, s) || written_after(r, s, r->floor[s], v);
}

static int tag_int(uint32_t v)
{
    return v == TAG_GARBAGE ? -1 : (int)v;
}

/* Opens the state read-write and reads it against the rule: 0 when it holds, 1 when a
 * sector reads what the rule does not allow, -1 when the state could not be read. */
static int check_data(const check_ctx *c, vd_engine *e, char *why, size_t why_len)
{
    const journal *j = c->j;
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR | VD_OPEN_UNMAP};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_open(e, c->state_path, &oo, &d, &err) < 0) {
        snprintf(why, why_len, "vdisk could not open it read-write: %s", vd_error_msg(err));
        vd_error_free(err);
        return -1;
    }
    uint64_t sectors = j->size0 / SECTOR;
    if (vd_disk_size(d) != j->size0) {
        snprintf(why, why_len, "the disk has %llu bytes, not %llu",
                 (unsigned long long)vd_disk_size(d), (unsigned long long)j->size0);
        vd_close(d);
        return 1;
    }
    uint32_t *vals = malloc(sectors * sizeof(uint32_t));
    uint8_t *buf = malloc(256 * SECTOR);
    if (!vals || !buf) {
        abort();
    }
    int ret = 0;
    for (uint64_t s = 0; s < sectors && ret == 0; s += 256) {
        uint64_t n = sectors - s < 256 ? sectors - s : 256;
        if (vd_pread(d, buf, n * SECTOR, s * SECTOR) < 0) {
            snprintf(why, why_len, "read failed at sector %llu: %s", (unsigned long long)s,
                     vd_disk_last_error(d));
            ret = -1;
        }
        for (uint64_t k = 0; k < n && ret == 0; k++) {
            vals[s + k] = tag_decode(buf + k * SECTOR, s + k);
        }
    }
    free(buf);
    if (vd_close(d) < 0 && ret == 0) {
        snprintf(why, why_len, "closing after recovery failed");
        ret = -1;
    }
    mig_rule r;
    rule_build(j->mig, sectors, c->crash_pos, &r);
    uint64_t bad = 0, first = 0;
    for (uint64_t s = 0; s < sectors && ret == 0; s++) {
        if (!rule_allows(&r, s, vals[s]) && !bad++) {
            first = s;
        }
    }
    if (bad && r.final) {
        snprintf(why, why_len, "%llu sectors differ from the source's final contents after "
                 "the switchover's READY; the first, sector %llu, reads tag %d, not %u",
                 (unsigned long long)bad, (unsigned long long)first, tag_int(vals[first]),
                 j->mig->final[first]);
    } else if (bad && r.pass == 0) {
        snprintf(why, why_len, "%llu sectors hold what the source never held; the first, "
                 "sector %llu, reads tag %d", (unsigned long long)bad,
                 (unsigned long long)first, tag_int(vals[first]));
    } else if (bad) {
        snprintf(why, why_len, "%llu sectors lost what READY(%u) promised durable; the "
                 "first, sector %llu, reads tag %d where tag %u (or a later write of the "
                 "source's writer) was expected", (unsigned long long)bad, r.pass,
                 (unsigned long long)first, tag_int(vals[first]), floor_val(&r, first));
    }
    rule_free(&r);
    free(vals);
    return ret < 0 ? -1 : bad ? 1 : 0;
}

bool check_migration(const check_ctx *c, check_totals *t)
{
    vd_engine_settings st = vd_engine_settings_from_env();
    vd_engine *e = vd_engine_new_with(&st);
    char why[1200];
    /* The destination is made without lazy refcounts and never dirty: checked as it is. */
    bool ok = check_image(c, t);
    int data = -1;
    if (ok) {
        data = check_data(c, e, why, sizeof(why));
        if (data != 0) {
            check_fail(c, why);
        }
    }
    if (data == 0) {
        /* qemu-img costs a process start: after the write, every fourth state. Leaks were
         * counted before it. */
        check_ctx v = *c;
        if (t->states % 4) {
            v.qemu_img = NULL;
        }
        uint64_t leaks = t->leaks;
        ok = write_after_recovery(c, t, e) && check_image(&v, t);
        t->leaks = leaks;
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
