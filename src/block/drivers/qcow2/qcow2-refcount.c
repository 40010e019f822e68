/* qcow2 refcounts: reading and updating refcount entries through the refcount cache, the
 * first-fit cluster allocator (new refcount blocks, refcount table growth), the metadata
 * overlap check and the queue of deferred frees. All calls hold the metadata lock. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

/* Host offsets are 56-bit in L1/L2 entries. */
#define MAX_HOST_OFFSET (1ull << 56)

static uint64_t rb_slice_entries(const qcow2_state *s)
{
    return ((uint64_t)s->slice_size * 8) >> s->refcount_order;
}

/* Index of the first refcount block at or after off in the sorted list. */
static size_t refblock_lower_bound(const qcow2_state *s, uint64_t off)
{
    size_t lo = 0, hi = s->nb_refblocks;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->refblocks[mid] < off) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static void refblocks_insert(qcow2_state *s, uint64_t off)
{
    size_t lo = refblock_lower_bound(s, off);
    if (lo < s->nb_refblocks && s->refblocks[lo] == off) {
        return;
    }
    uint64_t *n = realloc(s->refblocks, (s->nb_refblocks + 1) * sizeof(*n));
    if (!n) {
        abort();
    }
    s->refblocks = n;
    memmove(n + lo + 1, n + lo, (s->nb_refblocks - lo) * sizeof(*n));
    n[lo] = off;
    s->nb_refblocks++;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void qcow2_refblocks_free(qcow2_state *s)
{
    free(s->refblocks);
    s->refblocks = NULL;
    s->nb_refblocks = 0;
}

int qcow2_refcount_load(qcow2_state *s, vd_error **errp)
{
    uint64_t bytes = (uint64_t)s->h.refcount_table_clusters * s->cluster_size;
    uint8_t *raw = malloc(bytes);
    if (!raw) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory for the refcount "
                            "table (%" PRIu64 " bytes)", s->name, bytes);
    }
    int ret = vd_node_pread(s->file, raw, bytes, s->h.refcount_table_offset);
    if (ret < 0) {
        free(raw);
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not read the refcount table at "
                            "0x%" PRIx64 ": %s", s->name, s->h.refcount_table_offset,
                            strerror(-ret));
    }
    uint64_t n = bytes / 8;
    uint64_t *t = malloc(n * sizeof(*t));
    if (!t) {
        abort();
    }
    qcow2_refblocks_free(s);
    s->refblocks = malloc(n * sizeof(*s->refblocks));
    if (!s->refblocks) {
        abort();
    }
    for (uint64_t i = 0; i < n; i++) {
        t[i] = vd_be64(raw + i * 8);
        uint64_t off = t[i] & QCOW2_REFT_OFFSET_MASK;
        if (off) {
            s->refblocks[s->nb_refblocks++] = off;
        }
    }
    free(raw);
    qsort(s->refblocks, s->nb_refblocks, sizeof(*s->refblocks), cmp_u64);
    free(s->reftable);
    s->reftable = t;
    s->reftable_entries = n;
    s->reftable_offset = s->h.refcount_table_offset;
    s->reftable_clusters = s->h.refcount_table_clusters;
    return 0;
}

/* The refcount block of block index bi: 0 when there is none. */
static int refblock_of(qcow2_state *s, uint64_t bi, uint64_t *rb)
{
    *rb = 0;
    if (bi >= s->reftable_entries) {
        return 0;
    }
    uint64_t off = s->reftable[bi] & QCOW2_REFT_OFFSET_MASK;
    if (off & (s->cluster_size - 1)) {
        return qcow2_signal_corruption(s, "Refblock offset %#" PRIx64 " unaligned (reftable "
                                       "index: %#" PRIx64 ")", off, bi);
    }
    if (off >= MAX_HOST_OFFSET) {
        return qcow2_signal_corruption(s, "Refblock offset %#" PRIx64 " is beyond the "
                                       "maximum host offset (reftable index: %#" PRIx64 ")",
                                       off, bi);
    }
    *rb = off;
    return 0;
}

/* The cached slice holding the refcount of cluster c inside refblock rb. */
static int rb_slice(qcow2_state *s, uint64_t rb, uint64_t c, qcow2_slice **sl,
                    uint64_t *idx)
{
    uint64_t in_block = c & ((1ull << s->rb_bits) - 1);
    uint64_t per = rb_slice_entries(s);
    *idx = in_block % per;
    return qcow2_cache_get(s, s->rb_cache, rb + (in_block / per) * s->slice_size, sl);
}

int qcow2_get_refcount(qcow2_state *s, uint64_t cluster, uint64_t *rc)
{
    uint64_t rb;
    *rc = 0;
    int ret = refblock_of(s, cluster >> s->rb_bits, &rb);
    if (ret < 0 || rb == 0) {
        return ret;
    }
    qcow2_slice *sl;
    uint64_t idx;
    ret = rb_slice(s, rb, cluster, &sl, &idx);
    if (ret < 0) {
        return ret;
    }
    *rc = qcow2_refcount_get(sl->data, s->refcount_order, idx);
    qcow2_cache_put(s->rb_cache, sl);
    return 0;
}

/* First fit: the lowest run of n clusters with refcount 0 at or after the free hint.
 * Clusters without a refcount block (or beyond the table) are free. Moves the hint to the
 * first free cluster seen. */
static int find_free_run(qcow2_state *s, uint64_t n, uint64_t *start)
{
    uint64_t c = s->free_hint;
    uint64_t run_start = c, run_len = 0, first_free = UINT64_MAX;
    uint64_t per_block = 1ull << s->rb_bits;
    uint64_t max_cluster = MAX_HOST_OFFSET >> s->cluster_bits;

    while (run_len < n) {
        if (c >= max_cluster) {
            vd_node_set_error(s->node, "%s: no room for %" PRIu64 " more clusters below the maximum host "
                            "offset", s->name, n);
            return -EFBIG;
        }
        uint64_t rb;
        int ret = refblock_of(s, c >> s->rb_bits, &rb);
        if (ret < 0) {
            return ret;
        }
        if (rb == 0) {
            uint64_t end = ((c >> s->rb_bits) + 1) * per_block;
            if (run_len == 0) {
                run_start = c;
            }
            if (first_free == UINT64_MAX) {
                first_free = c;
            }
            run_len += end - c;
            c = end;
            continue;
        }
        qcow2_slice *sl;
        uint64_t idx;
        ret = rb_slice(s, rb, c, &sl, &idx);
        if (ret < 0) {
            return ret;
        }
        uint64_t per = rb_slice_entries(s);
        for (; idx < per && run_len < n; idx++, c++) {
            if (qcow2_refcount_get(sl->data, s->refcount_order, idx) == 0) {
                if (run_len == 0) {
                    run_start = c;
                }
                if (first_free == UINT64_MAX) {
                    first_free = c;
                }
                run_len++;
            } else {
                run_len = 0;
            }
        }
        qcow2_cache_put(s->rb_cache, sl);
    }
    if (first_free != UINT64_MAX) {
        s->free_hint = first_free;
    }
    *start = run_start;
    return 0;
}

static int pwrite_sync_err(qcow2_state *s, const char *what, uint64_t off, int ret)
{
    vd_node_set_error(s->node, "%s: could not write the %s at 0x%" PRIx64 ": %s", s->name, what, off,
                    strerror(-ret));
    return ret;
}

static bool block_missing(qcow2_state *s, uint64_t bi)
{
    return bi >= s->reftable_entries || (s->reftable[bi] & QCOW2_REFT_OFFSET_MASK) == 0;
}

/* Entries of a grown refcount table: 1.5 times the old size, at least `need`. */
static uint64_t grown_entries(const qcow2_state *s, uint64_t need)
{
    uint64_t n = s->reftable_entries + s->reftable_entries / 2;
    return n < need ? need : n;
}

/* Switches the header to the new refcount table at new_off and frees the old one. */
static int install_reftable(qcow2_state *s, uint64_t *table, uint64_t entries,
                            uint64_t new_off, uint32_t clusters)
{
    uint8_t hdr[12];
    vd_put_be64(hdr, new_off);
    vd_put_be32(hdr + 8, clusters);
    int ret = vd_node_pwrite(s->file, hdr, sizeof(hdr), 48, 0);
    if (ret < 0) {
        return pwrite_sync_err(s, "header", 48, ret);
    }
    ret = qcow2_sync(s);
    if (ret < 0) {
        return ret;
    }
    uint64_t old_off = s->reftable_offset;
    uint64_t old_bytes = (uint64_t)s->reftable_clusters * s->cluster_size;
    free(s->reftable);
    s->reftable = table;
    s->reftable_entries = entries;
    s->reftable_offset = new_off;
    s->reftable_clusters = clusters;
    s->h.refcount_table_offset = new_off;
    s->h.refcount_table_clusters = clusters;
    /* The header no longer points at the old table: it can go at once. */
    return qcow2_update_refcount(s, old_off, old_bytes, -1, false);
}

/* Makes sure every refcount block covering the free run [start, start+n) exists. Missing
 * blocks, and a grown refcount table when the old one is too small, are laid out at the
 * start of the run (the allocation then moves behind them, as QEMU's refcount area does):
 * [new refcount blocks][new refcount table]. They are written and synced before anything
 * points at them. Returns 1 when it created anything (the caller searches again), 0 when
 * nothing was missing. */
static int ensure_refblocks(qcow2_state *s, uint64_t start, uint64_t n, uint64_t room)
{
    uint64_t cs = s->cluster_size;
    uint64_t k = 0, t = 0, entries = s->reftable_entries;
    int ret;

    /* Fixed point: k blocks and t table clusters at the front, covering themselves and
     * the n clusters behind them. */
    for (;;) {
        uint64_t missing = 0, last_bi = 0;
        uint64_t end = start + k + t + n;
        for (uint64_t bi = start >> s->rb_bits; bi <= (end - 1) >> s->rb_bits; bi++) {
            if (block_missing(s, bi)) {
                missing++;
                last_bi = bi;
            }
        }
        uint64_t nt = 0, ne = s->reftable_entries;
        if (missing && last_bi >= s->reftable_entries) {
            ne = grown_entries(s, last_bi + 1);
            nt = (ne * 8 + cs - 1) / cs;
            if (nt * cs > QCOW2_MAX_REFTABLE_BYTES) {
                vd_node_set_error(s->node, "%s: the refcount table would exceed %u bytes", s->name,
                                QCOW2_MAX_REFTABLE_BYTES);
                return -EFBIG;
            }
        }
        if (missing <= k && nt <= t) {
            break;
        }
        k = missing > k ? missing : k;
        t = nt > t ? nt : t;
        entries = ne > entries ? ne : entries;
    }
    if (k == 0 || k + t > room) {
        return 0;
    }
    if (start + k + t > (MAX_HOST_OFFSET >> s->cluster_bits)) {
        vd_node_set_error(s->node, "%s: the refcount structures would lie beyond the maximum host "
                        "offset", s->name);
        return -EFBIG;
    }
    const char *ov = qcow2_metadata_overlap_mask(s, start * cs, (k + t) * cs, QCOW2_OL_ALL);
    if (ov) {
        return qcow2_signal_corruption(s, "Preventing invalid allocation of refcount "
                                       "structures at offset %#" PRIx64 " (overlaps with %s)",
                                       start * cs, ov);
    }
    if (t) {
        entries = t * cs / 8;
    }
    uint64_t *bis = calloc(k, sizeof(*bis));
    uint8_t *area = calloc(k + t, cs);
    uint64_t *table = t ? calloc(entries, sizeof(*table)) : NULL;
    if (!bis || !area || (t && !table)) {
        abort();
    }
    uint64_t nb = 0;
    for (uint64_t bi = start >> s->rb_bits; nb < k; bi++) {
        if (block_missing(s, bi)) {
            bis[nb++] = bi;
        }
    }
    /* Each new cluster's refcount lives in a new block or in an existing one. */
    for (uint64_t c = start; c < start + k + t; c++) {
        uint64_t b = c >> s->rb_bits;
        uint64_t j = 0;
        while (j < k && bis[j] != b) {
            j++;
        }
        if (j < k) {
            qcow2_refcount_set(area + j * cs, s->refcount_order, c & ((1ull << s->rb_bits) - 1),
                               1);
        } else {
            ret = qcow2_update_refcount(s, c * cs, cs, 1, false);
            if (ret < 0) {
                goto out;
            }
        }
    }
    if (t) {
        memcpy(table, s->reftable, s->reftable_entries * sizeof(*table));
        for (uint64_t j = 0; j < k; j++) {
            table[bis[j]] = (start + j) * cs;
        }
        for (uint64_t i = 0; i < entries; i++) {
            vd_put_be64(area + k * cs + i * 8, table[i]);
        }
    }
    ret = qcow2_cache_writeback(s, s->rb_cache);
    if (ret < 0) {
        goto out;
    }
    qcow2_cache_discard_range(s->rb_cache, start * cs, (k + t) * cs);
    qcow2_cache_discard_range(s->l2_cache, start * cs, (k + t) * cs);
    ret = vd_node_pwrite(s->file, area, (k + t) * cs, start * cs, 0);
    if (ret < 0) {
        pwrite_sync_err(s, "new refcount structures", start * cs, ret);
        goto out;
    }
    ret = qcow2_sync(s);
    if (ret < 0) {
        goto out;
    }
    if (s->zero_from < (start + k + t) * cs) {
        s->zero_from = (start + k + t) * cs;
    }
    if (s->free_hint == start) {
        s->free_hint = start + k + t;
    }
    for (uint64_t j = 0; j < k; j++) {
        refblocks_insert(s, (start + j) * cs);
    }
    if (t) {
        ret = install_reftable(s, table, entries, (start + k) * cs, (uint32_t)t);
        table = NULL;
        if (ret < 0) {
            goto out;
        }
    } else {
        for (uint64_t j = 0; j < k; j++) {
            s->reftable[bis[j]] = (start + j) * cs;
        }
        /* Written through; a later sync orders the entries before any table that
         * depends on the new refcounts. */
        uint64_t lo = bis[0], hi = bis[k - 1] + 1;
        uint8_t *ent = malloc((hi - lo) * 8);
        if (!ent) {
            abort();
        }
        for (uint64_t i = lo; i < hi; i++) {
            vd_put_be64(ent + (i - lo) * 8, s->reftable[i]);
        }
        ret = vd_node_pwrite(s->file, ent, (hi - lo) * 8, s->reftable_offset + lo * 8, 0);
        free(ent);
        if (ret < 0) {
            pwrite_sync_err(s, "refcount table", s->reftable_offset + lo * 8, ret);
            goto out;
        }
        s->rb_unsynced = true;
    }
    ret = 1;
out:
    free(bis);
    free(area);
    free(table);
    return ret;
}

/* Holes to punch for clusters whose refcount reached 0, merged while they are adjacent:
 * punching cluster by cluster frees nothing where clusters are smaller than the file
 * system's blocks. */
typedef struct punch_acc {
    uint64_t start, len;
    qcow2_punch_later *later;   /* collect the holes instead of punching them now */
} punch_acc;

static void punch_flush(qcow2_state *s, punch_acc *p)
{
    if (p->len && p->later) {
        qcow2_punch_later *l = p->later;
        if (l->n == l->cap) {
            l->cap = l->cap ? l->cap * 2 : 16;
            l->r = realloc(l->r, l->cap * sizeof(*l->r));
            if (!l->r) {
                abort();
            }
        }
        l->r[l->n++] = (qcow2_range){p->start, p->len};
    } else if (p->len) {
        /* Advisory: a failed punch only costs space. */
        vd_node_pdiscard(s->file, p->start, p->len);
    }
    p->len = 0;
}

static void punch_add(qcow2_state *s, punch_acc *p, uint64_t off, uint64_t len)
{
    if (p->len && p->start + p->len == off) {
        p->len += len;
        return;
    }
    punch_flush(s, p);
    p->start = off;
    p->len = len;
}

static int update_refcount(qcow2_state *s, uint64_t offset, uint64_t len, int64_t addend,
                           punch_acc *punch)
{
    if (len == 0 || addend == 0) {
        return 0;
    }
    uint64_t cs = s->cluster_size;
    uint64_t c = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    int ret = 0;

    if (addend < 0) {
        vd_node_event(s->file, "cluster_free");
    }
    while (c <= last) {
        uint64_t rb;
        ret = refblock_of(s, c >> s->rb_bits, &rb);
        if (ret < 0) {
            break;
        }
        if (rb == 0) {
            /* Allocation creates blocks before it counts; anything else only touches
             * clusters that are counted already. */
            vd_node_set_error(s->node, "%s: cluster %" PRIu64 " has no refcount block (refcount 0)",
                            s->name, c);
            ret = -EINVAL;
            break;
        }
        qcow2_slice *sl;
        uint64_t idx;
        ret = rb_slice(s, rb, c, &sl, &idx);
        if (ret < 0) {
            break;
        }
        uint64_t per = rb_slice_entries(s);
        bool changed = false;
        for (; idx < per && c <= last; idx++, c++) {
            uint64_t v = qcow2_refcount_get(sl->data, s->refcount_order, idx);
            uint64_t nv;
            if (addend < 0) {
                if (v < (uint64_t)-addend) {
                    vd_node_set_error(s->node, "%s: refcount of cluster %" PRIu64 " would drop below 0",
                                    s->name, c);
                    ret = -EINVAL;
                    break;
                }
                nv = v - (uint64_t)-addend;
            } else {
                if (s->refcount_max - v < (uint64_t)addend) {
                    vd_node_set_error(s->node, "%s: refcount of cluster %" PRIu64 " would overflow "
                                    "(maximum %" PRIu64 ")", s->name, c, s->refcount_max);
                    ret = -ERANGE;
                    break;
                }
                nv = v + (uint64_t)addend;
            }
            qcow2_refcount_set(sl->data, s->refcount_order, idx, nv);
            changed = true;
            if (nv == 0) {
                if (c < s->free_hint) {
                    s->free_hint = c;
                }
                if (s->free_byte_offset && c == s->free_byte_offset >> s->cluster_bits) {
                    /* The cluster may be reused for anything now: stop packing into it. */
                    s->free_byte_offset = 0;
                }
                qcow2_cache_discard_range(s->l2_cache, c * cs, cs);
                if (punch) {
                    punch_add(s, punch, c * cs, cs);
                }
            }
        }
        if (changed) {
            qcow2_cache_mark_dirty(s->rb_cache, sl);
        }
        qcow2_cache_put(s->rb_cache, sl);
        if (ret < 0) {
            break;
        }
    }
    return ret;
}

int qcow2_update_refcount(qcow2_state *s, uint64_t offset, uint64_t len, int64_t addend,
                          bool punch)
{
    punch_acc acc = {0, 0, NULL};
    int ret = update_refcount(s, offset, len, addend, punch ? &acc : NULL);
    punch_flush(s, &acc);
    return ret;
}

int qcow2_update_refcount_later(qcow2_state *s, uint64_t offset, uint64_t len,
                                int64_t addend, qcow2_punch_later *later)
{
    punch_acc acc = {0, 0, later};
    int ret = update_refcount(s, offset, len, addend, later ? &acc : NULL);
    punch_flush(s, &acc);
    return ret;
}

void qcow2_punch_later_flush(qcow2_state *s, qcow2_punch_later *later)
{
    punch_acc acc = {0, 0, NULL};
    for (size_t i = 0; i < later->n; i++) {
        punch_add(s, &acc, later->r[i].offset, later->r[i].len);
    }
    punch_flush(s, &acc);
    free(later->r);
    memset(later, 0, sizeof(*later));
}

/* Creates the refcount block after the one the allocation front is in, if missing.
 * A new block must be synced before the table entry that points at it, and fdatasync
 * writes out every dirty page of the file: crossing into a missing block in the middle of
 * a stream of writes (every 2 GiB with 64 KiB clusters) stalls for all the data written
 * since the last flush. Made here instead, at the first allocation after an open or a
 * flush, the sync finds next to nothing dirty. */
static int refcount_headroom(qcow2_state *s)
{
    uint64_t front = s->zero_from >> s->cluster_bits;
    uint64_t bi = front >> s->rb_bits;
    if (block_missing(s, bi) || !block_missing(s, bi + 1)) {
        return 0;  /* the allocation will create the front's own block, or both exist */
    }
    /* Only for an image that can reach the next block: every guest cluster and its L2
     * share allocated behind the front. A small image keeps QEMU's layout and I/O. */
    uint64_t guest = (s->h.size >> s->cluster_bits) + 1;
    uint64_t reach = front + guest + guest / (s->cluster_size / 8) + 1;
    if (reach <= (bi + 1) << s->rb_bits) {
        return 0;
    }
    /* The block goes into the first free run that can also hold a grown table. */
    enum { ROOM = 8 };
    uint64_t start;
    int ret = find_free_run(s, ROOM, &start);
    if (ret < 0) {
        return ret;
    }
    /* A range from the run to the first cluster of the next block: it is the only block
     * missing there (the new structures take at most ROOM clusters, far less than a
     * block covers, so they cannot reach the one after). */
    uint64_t first = (bi + 1) << s->rb_bits;
    ret = ensure_refblocks(s, start, start <= first ? first + 1 - start : 1, ROOM);
    return ret < 0 ? ret : 0;
}

int qcow2_alloc_clusters(qcow2_state *s, uint64_t n, uint64_t *offset, bool *fresh)
{
    return qcow2_alloc_clusters_for(s, n, offset, fresh, NULL);
}

int qcow2_alloc_clusters_for(qcow2_state *s, uint64_t n, uint64_t *offset, bool *fresh,
                             const char *what)
{
    uint64_t cs = s->cluster_size;
    uint64_t start;
    int ret;

    if (n == 0) {
        return -EINVAL;
    }
    if (!s->headroom_checked) {
        s->headroom_checked = true;
        ret = refcount_headroom(s);
        if (ret < 0) {
            return ret;
        }
    }
    for (;;) {
        ret = find_free_run(s, n, &start);
        if (ret < 0) {
            return ret;
        }
        if (start + n > (MAX_HOST_OFFSET >> s->cluster_bits)) {
            vd_node_set_error(s->node, "%s: no room for %" PRIu64 " clusters below the maximum host "
                            "offset", s->name, n);
            return -EFBIG;
        }
        /* Every block of the run must exist before the refcounts are set; new blocks
         * take the front of the run, so search again afterwards. */
        ret = ensure_refblocks(s, start, n, UINT64_MAX);
        if (ret < 0) {
            return ret;
        }
        if (ret == 0) {
            break;
        }
    }
    if (start == 0 && what) {
        /* Refcounts that call the header free: QEMU's words for it. */
        return qcow2_signal_corruption(s, "Preventing invalid allocation of %s at offset 0",
                                       what);
    }
    const char *ov = qcow2_metadata_overlap_mask(s, start * cs, n * cs, QCOW2_OL_ALL);
    if (ov) {
        return qcow2_signal_corruption(s, "Preventing invalid allocation of %" PRIu64
                                       " clusters at offset %#" PRIx64 " (overlaps with %s)",
                                       n, start * cs, ov);
    }
    ret = qcow2_update_refcount(s, start * cs, n * cs, 1, false);
    if (ret < 0) {
        return ret;
    }
    if (fresh) {
        *fresh = start * cs >= s->zero_from;
    }
    if (s->zero_from < (start + n) * cs) {
        s->zero_from = (start + n) * cs;
    }
    if (s->free_hint == start) {
        s->free_hint = start + n;
    }
    /* Stale cached slices of a cluster that was an L2 table before it was freed. */
    qcow2_cache_discard_range(s->l2_cache, start * cs, n * cs);
    *offset = start * cs;
    return 0;
}

void qcow2_free_deferred(qcow2_state *s, uint64_t offset, uint64_t len, bool punch)
{
    if (s->nb_frees == s->cap_frees) {
        size_t cap = s->cap_frees ? s->cap_frees * 2 : 64;
        qcow2_free *n = realloc(s->frees, cap * sizeof(*n));
        if (!n) {
            abort();
        }
        s->frees = n;
        s->cap_frees = cap;
    }
    s->frees[s->nb_frees++] = (qcow2_free){
        .offset = offset, .len = len, .seq = s->io_seq, .punch = punch, .synced = false,
    };
    s->nb_unsynced_frees++;
}

void qcow2_frees_mark_synced(qcow2_state *s)
{
    for (size_t i = 0; i < s->nb_frees; i++) {
        s->frees[i].synced = true;
    }
    s->nb_unsynced_frees = 0;
}

bool qcow2_frees_apply(qcow2_state *s)
{
    /* Called after every data I/O: cheap when nothing can be applied yet. */
    if (s->nb_frees == 0 || s->nb_unsynced_frees == s->nb_frees) {
        return false;
    }
    uint64_t oldest = s->io_head ? s->io_head->seq : UINT64_MAX;
    bool applied = false;
    size_t j = 0;
    punch_acc acc = {0, 0, NULL};
    for (size_t i = 0; i < s->nb_frees; i++) {
        qcow2_free f = s->frees[i];
        if (f.synced && f.seq < oldest) {
            /* A failure leaks the clusters, which check -r repairs; nothing is lost. */
            update_refcount(s, f.offset, f.len, -1, f.punch ? &acc : NULL);
            applied = true;
        } else {
            s->frees[j++] = f;
        }
    }
    s->nb_frees = j;
    punch_flush(s, &acc);
    return applied;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* Whether a refcount block lies in [start, end). */
static bool overlaps_refblock(const qcow2_state *s, uint64_t start, uint64_t end)
{
    size_t lo = refblock_lower_bound(s, start);
    return lo < s->nb_refblocks && s->refblocks[lo] < end;
}

const char *qcow2_metadata_overlap(qcow2_state *s, uint64_t offset, uint64_t len)
{
    return s->overlap_mask ? qcow2_metadata_overlap_mask(s, offset, len, s->overlap_mask)
                           : NULL;
}

const char *qcow2_metadata_overlap_mask(qcow2_state *s, uint64_t offset, uint64_t len,
                                        unsigned mask)
{
    uint64_t cs = s->cluster_size;
    /* Whole clusters: metadata owns every cluster it touches. */
    uint64_t start = offset & ~(cs - 1);
    uint64_t end = (offset + len + cs - 1) & ~(cs - 1);
    uint64_t rlen = end - start;

    if ((mask & QCOW2_OL_MAIN_HEADER) && start < cs) {
        return "qcow2_header";
    }
    if ((mask & QCOW2_OL_ACTIVE_L1) && s->l1_size &&
        ranges_overlap(start, rlen, s->l1_offset & ~(cs - 1),
                       (uint64_t)s->l1_size * 8 + (s->l1_offset & (cs - 1)))) {
        return "active L1 table";
    }
    if ((mask & QCOW2_OL_REFCOUNT_TABLE) &&
        ranges_overlap(start, rlen, s->reftable_offset, (uint64_t)s->reftable_clusters * cs)) {
        return "refcount table";
    }
    if ((mask & QCOW2_OL_REFCOUNT_BLOCK) && overlaps_refblock(s, start, end)) {
        return "refcount block";
    }
    if ((mask & QCOW2_OL_SNAPSHOT_TABLE) && s->nb_snapshots &&
        ranges_overlap(start, rlen, s->snapshots_offset & ~(cs - 1),
                       s->snapshots_len + (s->snapshots_offset & (cs - 1)))) {
        return "snapshot table";
    }
    for (uint32_t i = 0; (mask & QCOW2_OL_INACTIVE_L1) && i < s->nb_snap_l1; i++) {
        if (ranges_overlap(start, rlen, s->snap_l1[i].offset, s->snap_l1[i].len)) {
            return "inactive L1 table";
        }
    }
    return NULL;
}

static void refblocks_remove(qcow2_state *s, uint64_t off)
{
    for (size_t i = 0; i < s->nb_refblocks; i++) {
        if (s->refblocks[i] == off) {
            memmove(s->refblocks + i, s->refblocks + i + 1,
                    (s->nb_refblocks - i - 1) * sizeof(*s->refblocks));
            s->nb_refblocks--;
            return;
        }
    }
}

/* Whether refcount block bi counts nothing but, perhaps, itself. */
static int refblock_empty(qcow2_state *s, uint64_t bi, uint64_t rb, bool *empty)
{
    uint64_t per_block = 1ull << s->rb_bits;
    uint64_t self = rb >> s->cluster_bits;
    *empty = true;
    for (uint64_t c = bi * per_block; c < (bi + 1) * per_block && *empty; c++) {
        uint64_t rc;
        int ret = qcow2_get_refcount(s, c, &rc);
        if (ret < 0) {
            return ret;
        }
        *empty = rc == 0 || (c == self && rc == 1);
    }
    return 0;
}

int qcow2_drop_empty_refblocks_locked(qcow2_state *s)
{
    uint64_t cs = s->cluster_size;
    uint64_t *dropped = NULL;   /* the unhooked blocks, by table index (0: kept) */
    bool any = false;
    int ret = 0;
    for (uint64_t bi = 0; bi < s->reftable_entries && ret == 0; bi++) {
        uint64_t rb = s->reftable[bi] & QCOW2_REFT_OFFSET_MASK;
        bool empty;
        if (!rb || (ret = refblock_empty(s, bi, rb, &empty)) < 0 || !empty) {
            continue;
        }
        if (!dropped && !(dropped = calloc(s->reftable_entries, sizeof(*dropped)))) {
            return -ENOMEM;
        }
        /* Unhooked first, all of them under one sync: a crash after it leaks them at most. */
        static const uint8_t zero[8];
        ret = vd_node_pwrite(s->file, zero, sizeof(zero), s->reftable_offset + bi * 8, 0);
        if (ret < 0) {
            ret = pwrite_sync_err(s, "refcount table", s->reftable_offset + bi * 8, ret);
            break;
        }
        dropped[bi] = rb;
        any = true;
    }
    bool synced = false;
    if (any) {
        int sret = qcow2_sync(s);
        synced = sret == 0;
        ret = ret < 0 ? ret : sret;
    }
    for (uint64_t bi = 0; any && bi < s->reftable_entries; bi++) {
        uint64_t rb = dropped[bi];
        if (!rb) {
            continue;
        }
        /* The file's table may no longer reach it, so ours must not either; its cluster
         * is freed only once that is durable (else it leaks). */
        s->reftable[bi] = 0;
        refblocks_remove(s, rb);
        qcow2_cache_discard_range(s->rb_cache, rb, cs);
        if (!synced) {
            continue;
        }
        if (((rb >> s->cluster_bits) >> s->rb_bits) == bi) {
            vd_node_pdiscard(s->file, rb, cs);  /* it counted itself: nothing else to do */
        } else {
            int fret = qcow2_update_refcount(s, rb, cs, -1, true);
            ret = ret < 0 ? ret : fret;
        }
    }
    free(dropped);
    return ret;
}

int64_t qcow2_last_used_cluster(qcow2_state *s)
{
    uint64_t per_block = 1ull << s->rb_bits;
    for (uint64_t bi = s->reftable_entries; bi-- > 0;) {
        uint64_t rb;
        if (refblock_of(s, bi, &rb) < 0 || rb == 0) {
            continue;
        }
        for (uint64_t c = (bi + 1) * per_block; c-- > bi * per_block;) {
            uint64_t rc;
            int ret = qcow2_get_refcount(s, c, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc) {
                return (int64_t)c;
            }
        }
    }
    return -1;
}
