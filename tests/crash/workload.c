/* Workloads: a seeded sequence of guest operations on a fresh image opened through the
 * logwrites filter, with a journal of where each one starts and ends in the log and what
 * the guest reads in the sectors it touched once it has completed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "crash.h"
#include "vdisk/bitmap.h"
#include "vdisk/graph.h"
#include "vdisk/job.h"
#include "vdisk/snapshot.h"
#include "vdisk/vdisk.h"
#include "tools/engine-env.h"

#include "workload.h"

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        abort();
    }
    return p;
}

uint64_t log_len(const wl *w)
{
    struct stat st;
    return stat(w->j->log, &st) == 0 ? (uint64_t)st.st_size : 0;
}

int fail(const char *what, const char *msg)
{
    fprintf(stderr, "crash-test: workload: %s: %s\n", what, msg);
    return -1;
}

/* Reads sectors [first, first+count) of d as tags into vals. */
int read_tags(vd_disk *d, uint64_t first, uint64_t count, uint32_t *vals)
{
    const uint64_t batch = 256;
    uint8_t *buf = xmalloc(batch * SECTOR);
    int ret = 0;
    for (uint64_t i = 0; i < count && ret == 0; i += batch) {
        uint64_t n = count - i < batch ? count - i : batch;
        ret = vd_pread(d, buf, n * SECTOR, (first + i) * SECTOR);
        for (uint64_t k = 0; k < n && ret == 0; k++) {
            vals[i + k] = tag_decode(buf + k * SECTOR, first + i + k);
        }
    }
    free(buf);
    return ret;
}

gop *add_op(wl *w, op_kind kind, uint64_t start)
{
    journal *j = w->j;
    j->ops = realloc(j->ops, (j->nb_ops + 1) * sizeof(*j->ops));
    if (!j->ops) {
        abort();
    }
    gop *o = &j->ops[j->nb_ops++];
    memset(o, 0, sizeof(*o));
    o->kind = kind;
    o->start = start;
    return o;
}

/* Ends an op: records the log position and what the guest now reads in [first, +count). */
int end_op(wl *w, gop *o, uint64_t first, uint64_t count)
{
    o->end = log_len(w);
    o->size_after = vd_disk_size(w->d);
    o->first = first;
    o->count = count;
    o->vals = xmalloc(count * sizeof(uint32_t));
    return read_tags(w->d, first, count, o->vals);
}

/* A random extent of 1..max sectors inside the disk; now and then over a recent write. */
void pick_extent(wl *w, uint64_t max, uint64_t *first, uint64_t *count)
{
    uint64_t sectors = w->size / SECTOR;
    uint64_t n = 1 + rng_below(&w->r, max);
    uint64_t s;
    if (rng_below(&w->r, 100) < 30 && w->recent[0]) {
        s = w->recent[rng_below(&w->r, 16)] + rng_below(&w->r, 8);
    } else {
        s = rng_below(&w->r, sectors);
    }
    if (s >= sectors) {
        s = sectors - 1;
    }
    if (n > sectors - s) {
        n = sectors - s;
    }
    *first = s;
    *count = n;
}

void fill_tags(wl *w, uint8_t *buf, uint64_t first, uint64_t count)
{
    w->id++;
    for (uint64_t i = 0; i < count; i++) {
        tag_fill(buf + i * SECTOR, w->id, first + i);
    }
    memmove(&w->recent[1], &w->recent[0], sizeof(w->recent) - sizeof(w->recent[0]));
    w->recent[0] = first;
}

/* Checks that what the guest reads after a write is what was written. */
static int verify_written(const gop *o, uint32_t id, const char *what)
{
    for (uint64_t i = 0; i < o->count; i++) {
        if (o->vals[i] != id) {
            char msg[128];
            snprintf(msg, sizeof(msg), "sector %llu reads tag %u after writing %u",
                     (unsigned long long)(o->first + i), o->vals[i], id);
            return fail(what, msg);
        }
    }
    return 0;
}

uint64_t max_sectors(const wl *w)
{
    uint64_t m = 2ull * w->cfg->cluster_size / SECTOR;
    return m < 16 ? 16 : m > 512 ? 512 : m;
}

int op_write(wl *w)
{
    uint64_t first, count;
    pick_extent(w, max_sectors(w), &first, &count);
    uint8_t *buf = xmalloc(count * SECTOR);
    fill_tags(w, buf, first, count);
    gop *o = add_op(w, OP_WRITE, log_len(w));
    int ret = vd_pwrite(w->d, buf, count * SECTOR, first * SECTOR, 0);
    free(buf);
    if (ret < 0) {
        return fail("write", vd_disk_last_error(w->d));
    }
    return end_op(w, o, first, count) < 0 ? -1 : verify_written(o, w->id, "write");
}

static int op_compress(wl *w)
{
    uint64_t cs = w->cfg->cluster_size, clusters = w->size / cs;
    uint64_t first = rng_below(&w->r, clusters) * (cs / SECTOR), count = cs / SECTOR;
    uint8_t *buf = xmalloc(cs);
    fill_tags(w, buf, first, count);
    gop *o = add_op(w, OP_COMPRESS, log_len(w));
    int ret = vd_pwrite_compressed(w->d, buf, cs, first * SECTOR);
    free(buf);
    if (ret < 0) {
        return fail("compressed write", vd_disk_last_error(w->d));
    }
    return end_op(w, o, first, count) < 0 ? -1 : verify_written(o, w->id, "compressed write");
}

/* Write zeroes or discard over 1..4 clusters, cluster-aligned half of the time. */
int op_zero_discard(wl *w, bool discard)
{
    uint64_t cs = w->cfg->cluster_size / SECTOR, first, count;
    pick_extent(w, 4 * cs, &first, &count);
    if (rng_below(&w->r, 2)) {
        first -= first % cs;
        count = (count + cs - 1) / cs * cs;
        if (first + count > w->size / SECTOR) {
            count = w->size / SECTOR - first;
        }
    }
    gop *o = add_op(w, discard ? OP_DISCARD : OP_ZERO, log_len(w));
    int ret = discard ? vd_pdiscard(w->d, first * SECTOR, count * SECTOR)
                      : vd_pwrite_zeroes(w->d, first * SECTOR, count * SECTOR,
                                         rng_below(&w->r, 2) ? VD_REQ_MAY_UNMAP : 0);
    if (ret < 0) {
        return fail(discard ? "discard" : "write zeroes", vd_disk_last_error(w->d));
    }
    if (end_op(w, o, first, count) < 0) {
        return -1;
    }
    return discard ? 0 : verify_written(o, 0, "write zeroes");
}

int op_flush(wl *w, op_kind kind)
{
    gop *o = add_op(w, kind, log_len(w));
    if (vd_flush(w->d) < 0) {
        return fail("flush", vd_disk_last_error(w->d));
    }
    return end_op(w, o, 0, 0);
}

/* Grows the disk by 1..size/4 (at least one cluster), so that the L1 table and, with small
 * clusters, the refcount table must grow. */
static int op_resize(wl *w)
{
    uint64_t cs = w->cfg->cluster_size;
    uint64_t grow = (1 + rng_below(&w->r, w->size / 4 / cs + 1)) * cs;
    uint64_t old = w->size;
    gop *o = add_op(w, OP_RESIZE, log_len(w));
    vd_error *err = NULL;
    if (vd_truncate(w->d, old + grow, false, "off", &err) < 0) {
        int r = fail("resize", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    w->size = vd_disk_size(w->d);
    return end_op(w, o, old / SECTOR, (w->size - old) / SECTOR);
}

/* Shrinks the disk by one cluster to a quarter of it (never below a quarter of the size it
 * started with): the cut clusters are freed, refcount blocks left empty are dropped, and
 * the file is truncated. A later grow reads zeros there, which is what the op records. */
static int op_shrink(wl *w)
{
    uint64_t cs = w->cfg->cluster_size;
    uint64_t floor = w->j->size0 / 4 > cs ? w->j->size0 / 4 : cs;
    if (w->size <= floor + cs) {
        return op_resize(w);
    }
    uint64_t room = (w->size - floor) / cs;
    uint64_t most = w->size / 4 / cs + 1;
    uint64_t cut = (1 + rng_below(&w->r, room < most ? room : most)) * cs;
    uint64_t old = w->size;
    gop *o = add_op(w, OP_RESIZE, log_len(w));
    vd_error *err = NULL;
    if (vd_truncate(w->d, old - cut, true, "off", &err) < 0) {
        int r = fail("shrink", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    w->size = vd_disk_size(w->d);
    for (size_t i = 0; i < sizeof(w->recent) / sizeof(w->recent[0]); i++) {
        if (w->recent[i] >= w->size / SECTOR) {
            w->recent[i] = 0;
        }
    }
    o->end = log_len(w);
    o->size_after = w->size;
    o->first = w->size / SECTOR;
    o->count = (old - w->size) / SECTOR;
    o->vals = calloc(o->count ? o->count : 1, sizeof(uint32_t));  /* zeros after a regrow */
    if (!o->vals) {
        abort();
    }
    return 0;
}

static int op_snapshot(wl *w, op_kind kind)
{
    vd_error *err = NULL;
    int ret = 0;
    int pick = w->nb_snaps ? (int)rng_below(&w->r, (uint64_t)w->nb_snaps) : -1;
    if (kind != OP_SNAP_CREATE && pick < 0) {
        kind = OP_SNAP_CREATE;
    }
    if (kind == OP_SNAP_CREATE && w->nb_snaps == MAX_SNAPS) {
        kind = OP_SNAP_DELETE;
    }
    gop *o = add_op(w, kind, log_len(w));
    if (kind == OP_SNAP_CREATE) {
        snprintf(w->snaps[w->nb_snaps], sizeof(w->snaps[0]), "s%d", ++w->snap_seq);
        ret = vd_snapshot_create(w->d, w->snaps[w->nb_snaps], NULL, 0, false, &err);
        w->nb_snaps += ret == 0;
    } else if (kind == OP_SNAP_APPLY) {
        ret = vd_snapshot_apply(w->d, w->snaps[pick], &err);
    } else {
        ret = vd_snapshot_delete(w->d, NULL, w->snaps[pick], &err);
        if (ret == 0) {
            memmove(w->snaps[pick], w->snaps[pick + 1],
                    sizeof(w->snaps[0]) * (size_t)(w->nb_snaps - pick - 1));
            w->nb_snaps--;
        }
    }
    if (ret < 0) {
        ret = fail("snapshot", vd_error_msg(err));
        vd_error_free(err);
        return ret;
    }
    w->size = vd_disk_size(w->d);
    /* An apply changes what the whole disk reads. */
    return end_op(w, o, 0, kind == OP_SNAP_APPLY ? w->size / SECTOR : 0);
}

/* Changes the refcount width (amend -o refcount_bits) to another of 8, 16, 32 or 64 bits:
 * every refcount is rewritten and the header switches tables. A width the refcounts do
 * not fit is refused and changes nothing. */
static int op_amend(wl *w)
{
    static const char *const widths[] = {"8", "16", "32", "64"};
    vd_image_info info;
    vd_error *err = NULL;
    if (vd_get_info(w->d, &info, &err) < 0) {
        int r = fail("amend", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    unsigned cur = info.refcount_bits;
    vd_image_info_clear(&info);
    const char *to;
    do {
        to = widths[rng_below(&w->r, 4)];
    } while ((unsigned)atoi(to) == cur);
    gop *o = add_op(w, OP_AMEND, log_len(w));
    vd_opts *opts = vd_opts_new();
    vd_opts_set(opts, "refcount_bits", to);
    int ret = vd_amend(w->d, opts, &err);
    vd_opts_free(opts);
    if (ret < 0 && ret != -EINVAL) {
        ret = fail("amend", vd_error_msg(err));
        vd_error_free(err);
        return ret;
    }
    vd_error_free(err);
    return end_op(w, o, 0, 0);
}

/* A change to the persistent bitmaps: one added (stored at close), one removed (the image's
 * directory is rewritten at once when it was stored), cleared, merged, switched on or off.
 * Refusals (a full set, a name in use) change nothing. */
static int op_bitmap(wl *w)
{
    gop *o = add_op(w, OP_BITMAP, log_len(w));
    vd_error *err = NULL;
    int ret = 0;
    uint64_t what = w->nb_bitmaps ? rng_below(&w->r, 6) : 0;
    const char *name = w->nb_bitmaps ? w->bitmaps[rng_below(&w->r, (uint64_t)w->nb_bitmaps)]
                                     : NULL;
    if (what == 0 && w->nb_bitmaps < MAX_SNAPS) {
        char *n = w->bitmaps[w->nb_bitmaps];
        snprintf(n, 16, "b%d", w->bitmap_seq++);
        vd_bitmap_add_opts bo = {.granularity = 512ull << rng_below(&w->r, 8),
                                 .persistent = true, .disabled = rng_below(&w->r, 4) == 0};
        ret = vd_disk_bitmap_add(w->d, n, &bo, &err);
        w->nb_bitmaps += ret == 0;
    } else if (what == 1) {
        ret = vd_disk_bitmap_remove(w->d, name, &err);
        for (int i = 0; ret == 0 && i < w->nb_bitmaps; i++) {
            if (w->bitmaps[i] == name) {
                memmove(w->bitmaps[i], w->bitmaps[w->nb_bitmaps - 1], 16);
                w->nb_bitmaps--;
                break;
            }
        }
    } else if (what == 2) {
        ret = vd_disk_bitmap_clear(w->d, name, &err);
    } else if (what == 3) {
        const char *src = w->bitmaps[rng_below(&w->r, (uint64_t)w->nb_bitmaps)];
        ret = vd_disk_bitmap_merge(w->d, name, NULL, src, &err);
    } else if (what >= 4) {
        ret = vd_disk_bitmap_enable(w->d, name, what == 4, &err);
    }
    if (ret < 0) {
        ret = fail("bitmap", vd_error_msg(err));
        vd_error_free(err);
        return ret;
    }
    return end_op(w, o, 0, 0);
}

/* The image of a bitmaps workload starts with two stored bitmaps, so that the logged open
 * flags them in use and the close stores them over their old tables. */
static int make_stored_bitmaps(wl *w, const char *path)
{
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_open(w->e, path, &oo, &d, &err) < 0) {
        int r = fail("open for bitmaps", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    int ret = 0;
    for (int i = 0; i < 2 && ret == 0; i++) {
        char *n = w->bitmaps[w->nb_bitmaps];
        snprintf(n, 16, "b%d", w->bitmap_seq++);
        vd_bitmap_add_opts bo = {.granularity = i ? 4096 : 65536, .persistent = true};
        ret = vd_disk_bitmap_add(d, n, &bo, &err);
        w->nb_bitmaps += ret == 0;
    }
    uint8_t buf[4096];
    fill_tags(w, buf, 8, sizeof(buf) / SECTOR);
    if (ret == 0) {
        ret = vd_pwrite(d, buf, sizeof(buf), 8 * SECTOR, 0);
    }
    if (ret < 0) {
        fail("bitmaps", err ? vd_error_msg(err) : "write failed");
        vd_error_free(err);
    }
    if (vd_close(d) < 0 && ret == 0) {
        ret = fail("bitmaps", "close failed");
    }
    return ret;
}

typedef struct weights {
    int write, zero, discard, flush, compress, resize, snap_create, snap_apply, snap_delete;
    int amend, shrink, bitmap;
} weights;

static weights kind_weights(const char *kind)
{
    if (!strcmp(kind, "snap")) {
        return (weights){.write = 45, .zero = 5, .discard = 5, .flush = 10, .snap_create = 14,
                         .snap_apply = 8, .snap_delete = 13};
    }
    if (!strcmp(kind, "compress")) {
        return (weights){.write = 30, .zero = 7, .discard = 8, .flush = 10, .compress = 45};
    }
    if (!strcmp(kind, "resize")) {
        return (weights){.write = 56, .zero = 8, .discard = 7, .flush = 10, .resize = 12,
                         .shrink = 7};
    }
    if (!strcmp(kind, "amend")) {
        return (weights){.write = 50, .zero = 6, .discard = 6, .flush = 10, .compress = 8,
                         .snap_create = 6, .snap_delete = 6, .amend = 8};
    }
    if (!strcmp(kind, "bitmaps")) {
        return (weights){.write = 45, .zero = 6, .discard = 6, .flush = 10, .bitmap = 20,
                         .resize = 3, .snap_create = 5, .snap_delete = 5};
    }
    if (!strcmp(kind, "mixed")) {
        return (weights){.write = 40, .zero = 6, .discard = 6, .flush = 10, .compress = 15,
                         .resize = 5, .snap_create = 7, .snap_apply = 4, .snap_delete = 7};
    }
    return (weights){.write = 70, .zero = 8, .discard = 7, .flush = 15}; /* alloc, cow */
}

static int run_one(wl *w, const weights *wt)
{
    int total = wt->write + wt->zero + wt->discard + wt->flush + wt->compress + wt->resize +
                wt->snap_create + wt->snap_apply + wt->snap_delete + wt->amend + wt->shrink +
                wt->bitmap;
    int x = (int)rng_below(&w->r, (uint64_t)total);
    if ((x -= wt->write) < 0) {
        return op_write(w);
    }
    if ((x -= wt->zero) < 0) {
        return op_zero_discard(w, false);
    }
    if ((x -= wt->discard) < 0) {
        return op_zero_discard(w, true);
    }
    if ((x -= wt->flush) < 0) {
        return op_flush(w, OP_FLUSH);
    }
    if ((x -= wt->compress) < 0) {
        return op_compress(w);
    }
    if ((x -= wt->resize) < 0) {
        return op_resize(w);
    }
    if ((x -= wt->snap_create) < 0) {
        return op_snapshot(w, OP_SNAP_CREATE);
    }
    if ((x -= wt->snap_apply) < 0) {
        return op_snapshot(w, OP_SNAP_APPLY);
    }
    if ((x -= wt->amend) < 0) {
        return op_amend(w);
    }
    if ((x -= wt->shrink) < 0) {
        return op_shrink(w);
    }
    if ((x -= wt->bitmap) < 0) {
        return op_bitmap(w);
    }
    return op_snapshot(w, OP_SNAP_DELETE);
}

int create_image(wl *w, const char *path, uint64_t size, const char *backing,
                        bool lazy)
{
    vd_opts *o = vd_opts_new();
    char cs[32];
    snprintf(cs, sizeof(cs), "%u", w->cfg->cluster_size);
    vd_opts_set(o, "cluster_size", cs);
    vd_opts_set(o, "lazy_refcounts", lazy ? "on" : "off");
    if (backing) {
        vd_opts_set(o, "backing_file", backing);
        vd_opts_set(o, "backing_fmt", "qcow2");
    }
    vd_error *err = NULL;
    int ret = vd_create(w->e, path, "qcow2", backing ? UINT64_MAX : size, o, 0, &err);
    vd_opts_free(o);
    if (ret < 0) {
        ret = fail("create", vd_error_msg(err));
        vd_error_free(err);
    }
    return ret;
}

/* Writes tags over about tenths/10 of the 64 KiB pieces of the image at path. */
int fill_image(wl *w, const char *path, uint64_t size, int tenths)
{
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_open(w->e, path, &oo, &d, &err) < 0) {
        int r = fail("open to fill", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    uint64_t chunk = 64 * 1024, sectors = chunk / SECTOR;
    uint8_t *buf = xmalloc(chunk);
    int ret = 0;
    for (uint64_t off = 0; off < size && ret == 0; off += chunk) {
        if (rng_below(&w->r, 10) < (uint64_t)tenths) {
            fill_tags(w, buf, off / SECTOR, sectors);
            ret = vd_pwrite(d, buf, chunk, off, 0);
        }
    }
    free(buf);
    memset(w->recent, 0, sizeof(w->recent));
    if (vd_close(d) < 0 || ret < 0) {
        return fail("fill image", "I/O error");
    }
    return 0;
}

/* The backing file of a cow workload: most of the disk written with tags, so that partial
 * writes in the overlay must copy its data. */
int make_backing(wl *w, const char *path, uint64_t size)
{
    if (create_image(w, path, size, NULL, false) < 0) {
        return -1;
    }
    return fill_image(w, path, size, 7);
}

int load_file(const char *path, uint8_t **data, uint64_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return fail(path, strerror(errno));
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = xmalloc((size_t)n);
    *size = (uint64_t)n;
    size_t got = fread(*data, 1, (size_t)n, f);
    fclose(f);
    return got == (size_t)n ? 0 : fail(path, "short read");
}

static uint64_t disk_size(const workload_cfg *cfg)
{
    if (!strcmp(cfg->kind, "backup") || !strcmp(cfg->kind, "commit") ||
        !strcmp(cfg->kind, "replication") || !strcmp(cfg->kind, "migration")) {
        /* Two or three images, and a job copying much of one: kept small. */
        return cfg->cluster_size <= 4096    ? 2ull << 20
               : cfg->cluster_size <= 65536 ? 8ull << 20
                                            : 32ull << 20;
    }
    uint64_t base = cfg->cluster_size <= 4096 ? 4ull << 20
                  : 32ull << 20;
    /* resize starts small so that growing soon passes what the first L1 cluster and the
     * first refcount block cover. */
    return strcmp(cfg->kind, "resize") && strcmp(cfg->kind, "mixed") ? base : base / 4;
}

int add_node(wl *w, const char *json)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    int ret = vd_tree_parse_json(json, strlen(json), &t, &err);
    if (ret == 0) {
        ret = vd_blockdev_add(w->e, t, VD_OPEN_RDWR | VD_OPEN_UNMAP, &err);
    }
    if (ret < 0) {
        ret = fail("blockdev-add", vd_error_msg(err));
        vd_error_free(err);
    }
    return ret;
}

vd_job_status job_status(vd_engine *e, const char *id)
{
    vd_job_info *list = NULL;
    size_t nb = 0;
    vd_job_list(e, &list, &nb);
    vd_job_status st = VD_JOB_NULL;
    for (size_t i = 0; i < nb; i++) {
        if (!strcmp(list[i].id, id)) {
            st = list[i].status;
        }
    }
    vd_job_list_free(list, nb);
    return st;
}

void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* kind "mirror": the recorded image is the target of a mirror job from a tagged source
 * that the guest writes while the job copies (background, or write-blocking for odd
 * seeds). The journal holds the source's contents at the start and every guest write as
 * operations on the target, since any of them may be what a crash leaves in a sector
 * there, and the job's end (job-complete: the rest copied and flushed) as a flush, after
 * which the target must read as the source. */
static int run_mirror(wl *w, uint64_t size)
{
    journal *j = w->j;
    char src[4200], json[9000];
    snprintf(src, sizeof(src), "%s/source.qcow2", w->cfg->dir);
    if (make_backing(w, src, size) < 0 || create_image(w, j->image, size, NULL, false) < 0 ||
        load_file(j->image, &j->base, &j->base_size) < 0) {
        return -1;
    }
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"src\", "
             "\"file\": {\"driver\": \"file\", \"filename\": \"%s\"}}", src);
    if (add_node(w, json) < 0) {
        return -1;
    }
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"tgt\", "
             "\"filename\": \"logwrites:%s:%s\"}", j->log, j->image);
    vd_disk *sd = NULL;
    vd_error *err = NULL;
    if (add_node(w, json) < 0 || vd_blockdev_open(w->e, "src", &sd, &err) < 0 ||
        vd_blockdev_open(w->e, "tgt", &w->d, &err) < 0) {
        vd_close(sd);
        int r = fail("open", err ? vd_error_msg(err) : "blockdev-add");
        vd_error_free(err);
        return r;
    }
    uint64_t sectors = size / SECTOR;
    w->size = size;
    j->size0 = size;
    j->vals0 = xmalloc(sectors * sizeof(uint32_t));
    /* By index: add_op moves the journal's array, so no pointer into it outlives a call. */
    size_t first_op = j->nb_ops;
    gop *o = add_op(w, OP_WRITE, log_len(w));
    o->first = 0;
    o->count = sectors;
    o->size_after = size;
    o->vals = xmalloc(sectors * sizeof(uint32_t));
    int ret = -1;
    if (read_tags(w->d, 0, sectors, j->vals0) < 0 || read_tags(sd, 0, sectors, o->vals) < 0) {
        fail("read", "I/O error");
        goto out;
    }
    vd_mirror_opts mo = {.job_id = "m", .device = "src", .target = "tgt",
                         .sync = VD_MIRROR_SYNC_FULL, .unmap = true,
                         .write_blocking = w->cfg->seed & 1, .auto_finalize = true,
                         .auto_dismiss = true, .speed = (int64_t)size,
                         .buf_size = 4u * w->cfg->cluster_size};
    if (vd_mirror_start(w->e, &mo, &err) < 0) {
        fail("mirror", vd_error_msg(err));
        vd_error_free(err);
        goto out;
    }
    for (int i = 0; i < w->cfg->ops; i++) {
        uint64_t first, count;
        pick_extent(w, max_sectors(w), &first, &count);
        uint8_t *buf = xmalloc(count * SECTOR);
        fill_tags(w, buf, first, count);
        gop *g = add_op(w, OP_WRITE, log_len(w));
        int r = vd_pwrite(sd, buf, count * SECTOR, first * SECTOR, 0);
        free(buf);
        if (r < 0) {
            fail("write", vd_disk_last_error(sd));
            goto out;
        }
        g->end = log_len(w);
        g->first = first;
        g->count = count;
        g->size_after = size;
        g->vals = xmalloc(count * sizeof(uint32_t));
        for (uint64_t k = 0; k < count; k++) {
            g->vals[k] = w->id;
        }
        nap_ms(1 + (long)rng_below(&w->r, 8));   /* spread over the copy */
    }
    for (int t = 0; job_status(w->e, "m") != VD_JOB_READY; t++) {
        if (t > 60000 || job_status(w->e, "m") == VD_JOB_NULL) {
            fail("mirror", "the job did not get ready");
            goto out;
        }
        nap_ms(1);
    }
    if (vd_job_complete(w->e, "m", &err) < 0) {
        fail("job-complete", vd_error_msg(err));
        vd_error_free(err);
        goto out;
    }
    while (vd_job_exists(w->e, "m")) {
        nap_ms(1);
    }
    j->ops[first_op].end = log_len(w);
    gop *f = add_op(w, OP_FLUSH, j->ops[first_op].end);
    f->end = f->start;
    f->size_after = size;
    /* What the job left must be the source, sector for sector. */
    uint32_t *a = xmalloc(sectors * sizeof(uint32_t)), *b = xmalloc(sectors * sizeof(uint32_t));
    ret = read_tags(sd, 0, sectors, a) < 0 || read_tags(w->d, 0, sectors, b) < 0 ? -1 : 0;
    for (uint64_t k = 0; k < sectors && ret == 0; k++) {
        if (a[k] != b[k]) {
            char msg[128];
            snprintf(msg, sizeof(msg), "the target's sector %llu reads tag %u, the source's %u",
                     (unsigned long long)k, b[k], a[k]);
            ret = fail("mirror", msg);
        }
    }
    free(a);
    free(b);
out:
    vd_close(sd);
    return ret;
}

int workload_run(const workload_cfg *cfg, journal *j)
{
    memset(j, 0, sizeof(*j));
    wl w = {.cfg = cfg, .j = j, .r = {cfg->seed}};
    vd_engine_settings st = vd_engine_settings_from_env();
    w.e = vd_engine_new_with(&st);
    uint64_t size = disk_size(cfg);
    snprintf(j->image, sizeof(j->image), "%s/image.qcow2", cfg->dir);
    snprintf(j->log, sizeof(j->log), "%s/writes.log", cfg->dir);
    char backing[4096], spec[8300];
    snprintf(backing, sizeof(backing), "%s/backing.qcow2", cfg->dir);
    bool cow = !strcmp(cfg->kind, "cow");
    int ret = -1;
    if (!strcmp(cfg->kind, "mirror")) {
        if (run_mirror(&w, size) < 0) {
            goto out;
        }
        /* The close (the engine's, of the registered target) is journalled like a flush. */
        vd_close(w.d);
        w.d = NULL;
        gop *o = add_op(&w, OP_CLOSE, log_len(&w));
        o->size_after = w.size;
        vd_engine_free(w.e);
        w.e = NULL;
        o->end = log_len(&w);
        ret = 0;
        goto out;
    }
    if (!strcmp(cfg->kind, "backup") || !strcmp(cfg->kind, "commit") ||
        !strcmp(cfg->kind, "replication") || !strcmp(cfg->kind, "migration")) {
        ret = !strcmp(cfg->kind, "backup")        ? run_backup(&w, size)
              : !strcmp(cfg->kind, "commit")      ? run_commit(&w, size)
              : !strcmp(cfg->kind, "replication") ? run_replication(&w, size)
                                                  : run_migration(&w, size);
        goto out;
    }
    if (cow && make_backing(&w, backing, size) < 0) {
        goto out;
    }
    if (create_image(&w, j->image, size, cow ? backing : NULL, cfg->lazy) < 0 ||
        (!strcmp(cfg->kind, "bitmaps") && make_stored_bitmaps(&w, j->image) < 0) ||
        load_file(j->image, &j->base, &j->base_size) < 0) {
        goto out;
    }
    snprintf(spec, sizeof(spec), "logwrites:%s:%s", j->log, j->image);
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR | VD_OPEN_UNMAP};
    vd_error *err = NULL;
    if (vd_open(w.e, spec, &oo, &w.d, &err) < 0) {
        fail("open", vd_error_msg(err));
        vd_error_free(err);
        goto out;
    }
    w.size = vd_disk_size(w.d);
    j->size0 = w.size;
    j->vals0 = xmalloc(w.size / SECTOR * sizeof(uint32_t));
    if (read_tags(w.d, 0, w.size / SECTOR, j->vals0) < 0) {
        fail("read", vd_disk_last_error(w.d));
        goto out;
    }
    weights wt = kind_weights(cfg->kind);
    for (int i = 0; i < cfg->ops; i++) {
        if (run_one(&w, &wt) < 0) {
            goto out;
        }
    }
    /* Closing flushes and may rewrite the header: journalled like a flush. */
    gop *o = add_op(&w, OP_CLOSE, log_len(&w));
    o->size_after = w.size;
    ret = vd_close(w.d);
    w.d = NULL;
    o->end = log_len(&w);
    if (ret < 0) {
        fail("close", "flush failed");
    }
out:
    if (w.d) {
        vd_close(w.d);
    }
    if (w.e) {
        vd_engine_free(w.e);
    }
    j->next_id = w.id + 1;
    return ret;
}

void journal_free(journal *j)
{
    for (uint32_t f = 0; f < j->nb_files; f++) {
        free(j->files[f].base);
    }
    if (j->target) {
        journal_free(j->target);
        free(j->target);
    }
    if (j->mig) {
        free(j->mig->src0);
        free(j->mig->final);
        free(j->mig->writes);
        free(j->mig->pass_order);
        free(j->mig->ready);
        free(j->mig);
    }
    if (j->repl) {
        for (size_t i = 0; i < j->repl->nb_ops; i++) {
            free(j->repl->ops[i].vals);
        }
        free(j->repl->ops);
        free(j->repl);
    }
    for (size_t i = 0; i < j->nb_ops; i++) {
        free(j->ops[i].vals);
    }
    free(j->ops);
    free(j->vals0);
    free(j->base);
    memset(j, 0, sizeof(*j));
}
