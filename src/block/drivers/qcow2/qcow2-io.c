/* qcow2 data paths: reads, allocating writes with copy-on-write, write-zeroes, discard and
 * block status. Mapping and L2 updates happen under the metadata lock; guest data I/O runs
 * outside it, guarded by in-flight records (qcow2.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

/* ---- in-flight bookkeeping ------------------------------------------------------------ */

void qcow2_io_begin(qcow2_state *s, qcow2_io_rec *io)
{
    io->seq = ++s->io_seq;
    io->next = NULL;
    io->prev = s->io_tail;
    if (s->io_tail) {
        s->io_tail->next = io;
    } else {
        s->io_head = io;
    }
    s->io_tail = io;
}

void qcow2_io_end(qcow2_state *s, qcow2_io_rec *io)
{
    if (io->prev) {
        io->prev->next = io->next;
    } else {
        s->io_head = io->next;
    }
    if (io->next) {
        io->next->prev = io->prev;
    } else {
        s->io_tail = io->prev;
    }
    if (s->nb_frees) {
        qcow2_frees_apply(s);
    }
    if (s->draining && !s->io_head) {
        pthread_cond_broadcast(&s->cond);
    }
}

static bool alloc_overlaps(qcow2_state *s, uint64_t first, uint64_t count)
{
    for (qcow2_alloc_rec *a = s->allocs; a; a = a->next) {
        if (first < a->first + a->count && a->first < first + count) {
            return true;
        }
    }
    return false;
}

bool qcow2_alloc_wait(qcow2_state *s, uint64_t first, uint64_t count)
{
    bool waited = false;
    while (alloc_overlaps(s, first, count)) {
        pthread_cond_wait(&s->cond, &s->lock);
        waited = true;
    }
    return waited;
}

void qcow2_alloc_insert(qcow2_state *s, qcow2_alloc_rec *a, uint64_t first, uint64_t count)
{
    a->first = first;
    a->count = count;
    a->prev = NULL;
    a->next = s->allocs;
    if (s->allocs) {
        s->allocs->prev = a;
    }
    s->allocs = a;
}

void qcow2_alloc_remove(qcow2_state *s, qcow2_alloc_rec *a)
{
    if (a->prev) {
        a->prev->next = a->next;
    } else {
        s->allocs = a->next;
    }
    if (a->next) {
        a->next->prev = a->prev;
    }
    pthread_cond_broadcast(&s->cond);
}

/* New requests wait while a control operation drains the node. */
void qcow2_enter_locked(qcow2_state *s)
{
    while (s->draining && !pthread_equal(s->drain_owner, pthread_self())) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
}

/* The mapping rejects invalid entries; this guards the switch over entry types. */
static int invalid_entry_error(qcow2_state *s, uint64_t guest_off)
{
    vd_node_set_error(s->node, "%s: invalid cluster entry at guest offset 0x%" PRIx64, s->name,
                    guest_off);
    return -EIO;
}

/* ---- reads ---------------------------------------------------------------------------- */

static int read_backing(qcow2_state *s, void *buf, uint64_t len, uint64_t off)
{
    if (!s->node->backing) {
        memset(buf, 0, len);
        return 0;
    }
    return vd_node_pread_zero_pad(s->node->backing, buf, len, off);
}

int qcow2_pread(vd_node *node, void *buf, uint64_t len, uint64_t off)
{
    qcow2_state *s = node->opaque;
    uint8_t *p = buf;
    int ret = 0;
    /* Compressed clusters are collected while the rest of the request is served, then
     * read and decompressed together, in parallel. */
    qcow2_cread cb;
    qcow2_cread_init(s, &cb);

    pthread_mutex_lock(&s->lock);
    qcow2_enter_locked(s);
    while (len > 0 && ret == 0) {
        qcow2_run r;
        ret = qcow2_map_locked(s, off, len, &r);
        if (ret < 0) {
            break;
        }
        qcow2_io_rec io;
        switch (r.type) {
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC:
            /* Zeros or backing data; large fills happen outside the lock. */
            if (r.bytes < 65536 && (!s->node->backing || r.type == QCOW2_SC_ZERO_PLAIN ||
                                    r.type == QCOW2_SC_ZERO_ALLOC)) {
                memset(p, 0, r.bytes);
                break;
            }
            pthread_mutex_unlock(&s->lock);
            if (r.type == QCOW2_SC_ZERO_PLAIN || r.type == QCOW2_SC_ZERO_ALLOC) {
                memset(p, 0, r.bytes);
            } else {
                ret = read_backing(s, p, r.bytes, off);
            }
            pthread_mutex_lock(&s->lock);
            break;
        case QCOW2_SC_NORMAL:
            qcow2_io_begin(s, &io);
            pthread_mutex_unlock(&s->lock);
            vd_node_event(s->file, "read_aio");
            ret = vd_node_pread(s->file, p, r.bytes, r.host);
            pthread_mutex_lock(&s->lock);
            qcow2_io_end(s, &io);
            break;
        case QCOW2_SC_COMPRESSED: {
            uint64_t in = off & (s->cluster_size - 1);
            if (r.bytes > s->cluster_size - in) {
                r.bytes = s->cluster_size - in;
            }
            ret = qcow2_cread_add(s, &cb, r.l2e, off - in, p, in, r.bytes);
            if (ret > 0) {
                ret = qcow2_cread_flush(s, &cb, true);
            }
            break;
        }
        default:
            ret = invalid_entry_error(s, off);
            break;
        }
        p += r.bytes;
        off += r.bytes;
        len -= r.bytes;
    }
    int fret = qcow2_cread_flush(s, &cb, ret == 0);
    pthread_mutex_unlock(&s->lock);
    qcow2_cread_free(&cb);
    return ret < 0 ? ret : fret;
}

/* ---- allocating writes ---------------------------------------------------------------- */

typedef enum { SEG_INPLACE, SEG_NEW, SEG_REUSE } seg_kind;

/* Subclusters of a cluster touched by the bytes [a, b) of it. */
static uint32_t touched_mask(const qcow2_state *s, uint64_t a, uint64_t b)
{
    unsigned first = (unsigned)(a >> s->sc_bits);
    unsigned last = (unsigned)((b - 1) >> s->sc_bits);
    uint64_t m = (last >= 31 ? 0xffffffffull : ((2ull << last) - 1)) & ~((1ull << first) - 1);
    return (uint32_t)m;
}

static seg_kind classify(const qcow2_state *s, bool l1_copied, uint64_t e, uint64_t bm,
                         uint64_t a, uint64_t b)
{
    uint64_t host = qcow2_entry_host(e);
    if (!l1_copied || !host || !(e & QCOW2_OFLAG_COPIED)) {
        return SEG_NEW;
    }
    if (!s->extl2) {
        return (e & QCOW2_OFLAG_ZERO) ? SEG_REUSE : SEG_INPLACE;
    }
    uint32_t t = touched_mask(s, a, b);
    return ((uint32_t)bm & t) == t ? SEG_INPLACE : SEG_REUSE;
}

/* Whether the old contents of bytes [a, b) of a cluster (entry e/bm at guest offset g)
 * are zeros without reading anything. */
static bool old_is_zero(qcow2_state *s, uint64_t e, uint64_t bm, uint64_t g, uint64_t a,
                        uint64_t b)
{
    for (uint64_t x = a; x < b;) {
        qcow2_sc_type t = qcow2_sc_type_of(s, e, bm, (unsigned)(x >> s->sc_bits));
        uint64_t next = s->extl2 ? (x | (s->sc_size - 1)) + 1 : s->cluster_size;
        switch (t) {
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            break;
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC:
            if (s->node->backing && g + x < s->node->backing->size) {
                return false;
            }
            break;
        default:
            return false;
        }
        x = next;
    }
    return true;
}

/* Reads the old contents of bytes [a, b) of a cluster into dst. */
static int read_old(qcow2_state *s, uint64_t e, uint64_t bm, uint64_t g, uint64_t a,
                    uint64_t b, uint8_t *dst)
{
    uint64_t host = qcow2_entry_host(e);
    while (a < b) {
        qcow2_sc_type t = qcow2_sc_type_of(s, e, bm, (unsigned)(a >> s->sc_bits));
        /* Extend over following subclusters of the same type. */
        uint64_t end = a;
        while (end < b) {
            uint64_t next = s->extl2 ? (end | (s->sc_size - 1)) + 1 : s->cluster_size;
            end = next < b ? next : b;
            if (end < b && qcow2_sc_type_of(s, e, bm, (unsigned)(end >> s->sc_bits)) != t) {
                break;
            }
        }
        int ret = 0;
        switch (t) {
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            memset(dst, 0, end - a);
            break;
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC:
            ret = read_backing(s, dst, end - a, g + a);
            break;
        case QCOW2_SC_NORMAL:
            vd_node_event(s->file, "read_aio");
            ret = vd_node_pread(s->file, dst, end - a, host + a);
            break;
        case QCOW2_SC_COMPRESSED: {
            uint8_t *cbuf = malloc(s->cluster_size);
            ret = cbuf ? qcow2_read_compressed(s, e, g, cbuf) : -ENOMEM;
            if (ret == 0) {
                memcpy(dst, cbuf + a, end - a);
            }
            free(cbuf);
            break;
        }
        default:
            ret = invalid_entry_error(s, g + a);
            break;
        }
        if (ret < 0) {
            return ret;
        }
        dst += end - a;
        a = end;
    }
    return 0;
}

/* What one allocating segment needs outside the lock. */
typedef struct seg {
    seg_kind kind;
    uint64_t gci;                /* first guest cluster */
    uint64_t count;
    uint64_t host;               /* host offset of the first cluster */
    bool fresh;                  /* host clusters read as zeros */
    uint64_t e_first, bm_first;  /* old entries of the first and last cluster */
    uint64_t e_last, bm_last;
} seg;

/* The COW range of the first cluster: [head_lo, ws). */
static uint64_t head_start(qcow2_state *s, const seg *g, uint64_t ws)
{
    if (ws == 0) {
        return 0;
    }
    if (!s->extl2 || (g->e_first & QCOW2_OFLAG_COMPRESSED)) {
        /* A compressed cluster has no subclusters: all of it moves to the new cluster. */
        return 0;
    }
    uint64_t sc = ws >> s->sc_bits;
    uint64_t lo = ws;
    bool allocated_here = (g->bm_first >> sc) & 1;
    if ((ws & (s->sc_size - 1)) && !(g->kind == SEG_REUSE && allocated_here)) {
        lo = sc << s->sc_bits;
    }
    if (g->kind == SEG_NEW && qcow2_entry_host(g->e_first)) {
        /* The new cluster replaces a shared one: its allocated subclusters move along. */
        uint32_t below = (uint32_t)g->bm_first & (uint32_t)((1ull << sc) - 1);
        if (below) {
            uint64_t j = (uint64_t)__builtin_ctz(below);
            if ((j << s->sc_bits) < lo) {
                lo = j << s->sc_bits;
            }
        }
    }
    return lo;
}

/* The COW range of the last cluster: [we, tail_hi), offsets relative to the run. */
static uint64_t tail_end(qcow2_state *s, const seg *g, uint64_t we)
{
    uint64_t cs = s->cluster_size;
    uint64_t lstart = (g->count - 1) * cs;
    uint64_t b = we - lstart;  /* 1..cs */
    if (b == cs) {
        return we;
    }
    if (!s->extl2 || (g->e_last & QCOW2_OFLAG_COMPRESSED)) {
        return lstart + cs;
    }
    uint64_t sc = (b - 1) >> s->sc_bits;
    uint64_t hi = we;
    bool allocated_here = (g->bm_last >> sc) & 1;
    if ((b & (s->sc_size - 1)) && !(g->kind == SEG_REUSE && allocated_here)) {
        hi = lstart + ((sc + 1) << s->sc_bits);
    }
    if (g->kind == SEG_NEW && qcow2_entry_host(g->e_last)) {
        uint32_t above = (uint32_t)g->bm_last & ~(uint32_t)((2ull << sc) - 1);
        if (above) {
            uint64_t j = 31 - (uint64_t)__builtin_clz(above);
            if (lstart + ((j + 1) << s->sc_bits) > hi) {
                hi = lstart + ((j + 1) << s->sc_bits);
            }
        }
    }
    return hi;
}

/* Writes the guest data of a segment and the copied-on-write parts around it, as one host
 * write where that is cheap. ws/we are offsets of the data inside the run. */
static int seg_write(qcow2_state *s, const seg *g, const uint8_t *buf, uint64_t ws,
                     uint64_t we)
{
    uint64_t cs = s->cluster_size;
    uint64_t g0 = g->gci << s->cluster_bits;
    uint64_t lstart = (g->count - 1) * cs;
    uint64_t lo = head_start(s, g, ws);
    uint64_t hi = tail_end(s, g, we);
    bool head_zero = lo < ws && old_is_zero(s, g->e_first, g->bm_first, g0, lo, ws);
    bool tail_zero = we < hi && old_is_zero(s, g->e_last, g->bm_last, g0 + lstart,
                                            we - lstart, hi - lstart);

    if (g->fresh) {
        /* The new clusters already read as zeros. */
        if (head_zero) {
            lo = ws;
        }
        if (tail_zero) {
            hi = we;
        }
        if ((lo > 0 || hi < g->count * cs) && (s->file->open_flags & VD_OPEN_NOCACHE)) {
            /* With O_DIRECT, writes that extend the file (or fill holes) are serialised
             * by the file system; allocating the clusters first lets them run in parallel.
             * Advisory: the clusters read as zeros either way. */
            vd_node_pwrite_zeroes(s->file, g->host, g->count * cs, VD_REQ_NO_FALLBACK);
        }
    }
    vd_node_event(s->file, "write_aio");
    if (lo == ws && hi == we) {
        return vd_node_pwrite(s->file, buf, we - ws, g->host + ws, 0);
    }
    int ret;
    if (hi - lo <= QCOW2_MAX_BOUNCE_BYTES) {
        uint8_t *bb = malloc(hi - lo);
        if (!bb) {
            return -ENOMEM;
        }
        ret = 0;
        if (lo < ws) {
            ret = head_zero ? (memset(bb, 0, ws - lo), 0)
                            : read_old(s, g->e_first, g->bm_first, g0, lo, ws, bb);
        }
        memcpy(bb + (ws - lo), buf, we - ws);
        if (ret == 0 && we < hi) {
            uint8_t *t = bb + (we - lo);
            ret = tail_zero ? (memset(t, 0, hi - we), 0)
                            : read_old(s, g->e_last, g->bm_last, g0 + lstart, we - lstart,
                                       hi - lstart, t);
        }
        if (ret == 0) {
            ret = vd_node_pwrite(s->file, bb, hi - lo, g->host + lo, 0);
        }
        free(bb);
        return ret;
    }
    /* Large data: write head and tail separately rather than copying the data. */
    if (lo < ws) {
        uint8_t *hb = calloc(1, ws - lo);
        if (!hb) {
            return -ENOMEM;
        }
        ret = head_zero ? 0 : read_old(s, g->e_first, g->bm_first, g0, lo, ws, hb);
        if (ret == 0) {
            ret = vd_node_pwrite(s->file, hb, ws - lo, g->host + lo, 0);
        }
        free(hb);
        if (ret < 0) {
            return ret;
        }
    }
    ret = vd_node_pwrite(s->file, buf, we - ws, g->host + ws, 0);
    if (ret < 0 || we == hi) {
        return ret;
    }
    uint8_t *tb = calloc(1, hi - we);
    if (!tb) {
        return -ENOMEM;
    }
    ret = tail_zero ? 0 : read_old(s, g->e_last, g->bm_last, g0 + lstart, we - lstart,
                                   hi - lstart, tb);
    if (ret == 0) {
        ret = vd_node_pwrite(s->file, tb, hi - we, g->host + we, 0);
    }
    free(tb);
    return ret;
}

/* Links the written clusters into the L2 table and drops the old references. */
static int seg_link(qcow2_state *s, const seg *g, uint64_t off, uint64_t n)
{
    uint64_t cs = s->cluster_size;
    qcow2_slice *sl;
    unsigned idx, avail;
    int ret = qcow2_l2_slice(s, g->gci, true, &sl, &idx, &avail);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t k = 0; k < g->count; k++) {
        unsigned i = idx + (unsigned)k;
        uint64_t e = qcow2_l2_get(s, sl->data, i);
        uint64_t bm = qcow2_l2_get_bitmap(s, sl->data, i);
        uint64_t cstart = (g->gci + k) << s->cluster_bits;
        uint64_t a = off > cstart ? off - cstart : 0;
        uint64_t b = off + n - cstart < cs ? off + n - cstart : cs;
        uint64_t hk = g->kind == SEG_NEW ? g->host + k * cs : g->host;
        uint64_t ne = hk | QCOW2_OFLAG_COPIED;
        uint64_t nbm = 0;
        if (s->extl2) {
            uint64_t t = touched_mask(s, a, b);
            if (e & QCOW2_OFLAG_COMPRESSED) {
                nbm = QCOW2_EXTL2_ALLOC_ALL;
            } else {
                nbm = (bm | t) & ~(t << 32);
            }
        }
        qcow2_l2_set(s, sl->data, i, ne, nbm);
        if (g->kind == SEG_NEW && qcow2_entry_allocated(e)) {
            qcow2_free_entry(s, e, s->pass_discard_other);
        }
    }
    qcow2_cache_mark_dirty(s->l2_cache, sl);
    qcow2_cache_put(s->l2_cache, sl);
    /* The data may not be durable yet, even if the refcounts are (another request's flush
     * may have run while it was written): the L2 slice must wait for a sync. */
    s->rb_unsynced = true;
    return 0;
}

/* Plans the segment that starts at off: a run of clusters in one L2 slice that are all
 * written in place (host-contiguous), or all get new clusters, or one cluster whose
 * preallocated host cluster is reused. Waits for overlapping allocations first. */
static int plan_segment(qcow2_state *s, uint64_t off, uint64_t len, seg *g)
{
    uint64_t cs = s->cluster_size;
    uint64_t max_new = QCOW2_MAX_ALLOC_BYTES >> s->cluster_bits;
    if (max_new == 0) {
        max_new = 1;
    }
    for (;;) {
        uint64_t gci = off >> s->cluster_bits;
        uint64_t in_cl = off & (cs - 1);
        uint64_t l1_idx = gci >> s->l2_bits;
        bool l1_copied = l1_idx < s->l1_size && (s->l1[l1_idx] & QCOW2_OFLAG_COPIED) &&
                         (s->l1[l1_idx] & QCOW2_L1E_OFFSET_MASK);
        qcow2_slice *sl;
        unsigned idx, avail;
        int ret = qcow2_l2_slice(s, gci, false, &sl, &idx, &avail);
        if (ret < 0) {
            return ret;
        }
        uint64_t want = (in_cl + len + cs - 1) >> s->cluster_bits;
        uint64_t maxc = want < avail ? want : avail;
        memset(g, 0, sizeof(*g));
        g->gci = gci;
        uint64_t host0 = 0;
        for (uint64_t k = 0; k < maxc; k++) {
            uint64_t e = sl ? qcow2_l2_get(s, sl->data, idx + (unsigned)k) : 0;
            uint64_t bm = sl ? qcow2_l2_get_bitmap(s, sl->data, idx + (unsigned)k) : 0;
            ret = qcow2_check_entry(s, e, bm, gci + k);
            if (ret < 0) {
                qcow2_cache_put(s->l2_cache, sl);
                return ret;
            }
            uint64_t cstart = (gci + k) << s->cluster_bits;
            uint64_t a = k == 0 ? in_cl : 0;
            uint64_t b = off + len - cstart < cs ? off + len - cstart : cs;
            seg_kind kind = classify(s, l1_copied, e, bm, a, b);
            if (k == 0) {
                g->kind = kind;
                g->e_first = e;
                g->bm_first = bm;
                host0 = qcow2_entry_host(e);
            } else if (kind != g->kind || kind == SEG_REUSE ||
                       (kind == SEG_INPLACE && qcow2_entry_host(e) != host0 + k * cs) ||
                       (kind == SEG_NEW && k >= max_new)) {
                break;
            }
            g->e_last = e;
            g->bm_last = bm;
            g->count++;
        }
        if (sl) {
            qcow2_cache_put(s->l2_cache, sl);
        }
        g->host = host0;
        if (!qcow2_alloc_wait(s, gci, g->count)) {
            return 0;
        }
        /* The world may have changed while we slept: a drain may have begun. */
        qcow2_enter_locked(s);
    }
}

/* Writes the part of [off, off+len) one segment covers; *done gets its length. */
static int write_segment(qcow2_state *s, const uint8_t *buf, uint64_t off, uint64_t len,
                         uint64_t *done)
{
    uint64_t cs = s->cluster_size;
    uint64_t in_cl = off & (cs - 1);
    seg g;
    qcow2_io_rec io;
    int ret = plan_segment(s, off, len, &g);
    if (ret < 0) {
        return ret;
    }
    uint64_t n = g.count * cs - in_cl;
    if (n > len) {
        n = len;
    }
    *done = n;

    if (g.kind == SEG_INPLACE) {
        const char *ov = qcow2_metadata_overlap(s, g.host + in_cl, n);
        if (ov) {
            return qcow2_signal_corruption_at(s, g.host + in_cl, n, "Preventing invalid write "
                                              "on metadata (overlaps with %s)", ov);
        }
        qcow2_io_begin(s, &io);
        pthread_mutex_unlock(&s->lock);
        vd_node_event(s->file, "write_aio");
        ret = vd_node_pwrite(s->file, buf, n, g.host + in_cl, 0);
        pthread_mutex_lock(&s->lock);
        qcow2_io_end(s, &io);
        return ret;
    }

    ret = qcow2_mark_dirty_locked(s);
    if (ret < 0) {
        return ret;
    }
    /* Allocate or copy the L2 table now, so linking after the data write cannot fail for
     * lack of space. Entries keep their values. */
    qcow2_slice *sl;
    unsigned idx, avail;
    ret = qcow2_l2_slice(s, g.gci, true, &sl, &idx, &avail);
    if (ret < 0) {
        return ret;
    }
    qcow2_cache_put(s->l2_cache, sl);
    if (g.kind == SEG_NEW) {
        ret = qcow2_alloc_clusters(s, g.count, &g.host, &g.fresh);
        if (ret < 0) {
            return ret;
        }
    } else {
        const char *ov = qcow2_metadata_overlap(s, g.host, cs);
        if (ov) {
            return qcow2_signal_corruption_at(s, g.host, cs, "Preventing invalid write on "
                                              "metadata (preallocated cluster %#" PRIx64
                                              " overlaps with %s)", g.host, ov);
        }
    }
    qcow2_alloc_rec rec;
    qcow2_alloc_insert(s, &rec, g.gci, g.count);
    qcow2_io_begin(s, &io);
    pthread_mutex_unlock(&s->lock);
    ret = seg_write(s, &g, buf, in_cl, in_cl + n);
    pthread_mutex_lock(&s->lock);
    if (ret == 0) {
        ret = seg_link(s, &g, off, n);
    }
    if (ret < 0 && g.kind == SEG_NEW) {
        /* Never referenced: the clusters can go back at once. */
        qcow2_update_refcount(s, g.host, g.count * cs, -1, false);
    }
    qcow2_alloc_remove(s, &rec);
    qcow2_io_end(s, &io);
    return ret;
}

int qcow2_pwrite_locked(qcow2_state *s, const void *buf, uint64_t len, uint64_t off)
{
    const uint8_t *p = buf;
    if (s->broken) {
        vd_node_set_error(s->node, "%s: the image is marked corrupt; writes are refused", s->name);
        return -EIO;
    }
    while (len > 0) {
        uint64_t done = 0;
        int ret = write_segment(s, p, off, len, &done);
        if (ret < 0) {
            return ret;
        }
        p += done;
        off += done;
        len -= done;
    }
    return 0;
}

int qcow2_pwrite(vd_node *node, const void *buf, uint64_t len, uint64_t off,
                 unsigned flags)
{
    qcow2_state *s = node->opaque;
    pthread_mutex_lock(&s->lock);
    qcow2_enter_locked(s);
    int ret = qcow2_pwrite_locked(s, buf, len, off);
    if (ret == 0 && (flags & VD_REQ_FUA)) {
        ret = qcow2_flush_locked(s);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- write zeroes, discard -------------------------------------------------------------- */

/* Writes real zeros through the allocating write path. */
static int write_zero_buffer(qcow2_state *s, uint64_t off, uint64_t len)
{
    const uint8_t *z = qcow2_zeros(s);
    while (len > 0) {
        uint64_t now = len < QCOW2_MAX_BOUNCE_BYTES ? len : QCOW2_MAX_BOUNCE_BYTES;
        int ret = qcow2_pwrite_locked(s, z, now, off);
        if (ret < 0) {
            return ret;
        }
        off += now;
        len -= now;
    }
    return 0;
}

/* A part of the request smaller than a (sub)cluster: nothing to do if it already reads as
 * zeros, else real zeros are written. */
/* Zeroes part of one subcluster. As QEMU does: when the rest of the subcluster already
 * reads as zeros and it holds no data of its own (unallocated or a zero entry), the whole
 * subcluster becomes a zero entry; otherwise zeros are written into it. */
static int zero_partial(qcow2_state *s, uint64_t off, uint64_t len, unsigned flags)
{
    uint64_t sc_start = off & ~(s->sc_size - 1);
    uint64_t sc_end = sc_start + s->sc_size;
    if (sc_end > s->node->size) {
        sc_end = s->node->size;
    }
    qcow2_alloc_wait(s, off >> s->cluster_bits, 1);
    bool head_zero = true, tail_zero = true;
    int ret = 0;
    if (off > sc_start) {
        ret = qcow2_reads_zero_locked(s, sc_start, off - sc_start, &head_zero);
    }
    if (ret == 0 && off + len < sc_end) {
        ret = qcow2_reads_zero_locked(s, off + len, sc_end - off - len, &tail_zero);
    }
    if (ret < 0) {
        return ret;
    }
    if (head_zero && tail_zero) {
        qcow2_run r;
        ret = qcow2_map_locked(s, sc_start, sc_end - sc_start, &r);
        if (ret < 0) {
            return ret;
        }
        if (r.type == QCOW2_SC_ZERO_PLAIN || r.type == QCOW2_SC_ZERO_ALLOC ||
            r.type == QCOW2_SC_UNALLOC_PLAIN || r.type == QCOW2_SC_UNALLOC_ALLOC) {
            ret = qcow2_mark_dirty_locked(s);
            if (ret == 0) {
                ret = qcow2_zeroize_locked(s, sc_start, sc_end - sc_start, flags);
            }
            if (ret != -ENOTSUP) {
                return ret;
            }
        }
    }
    if (flags & VD_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    return write_zero_buffer(s, off, len);
}

int qcow2_pwrite_zeroes(vd_node *node, uint64_t off, uint64_t len, unsigned flags)
{
    qcow2_state *s = node->opaque;
    uint64_t unit = s->sc_size;
    uint64_t end = off + len;
    uint64_t a = (off + unit - 1) & ~(unit - 1);
    uint64_t b = end == node->size ? end : end & ~(unit - 1);
    int ret = 0;

    if (a > end) {
        a = end;
    }
    if (b < a) {
        b = a;
    }
    pthread_mutex_lock(&s->lock);
    qcow2_enter_locked(s);
    if (s->broken) {
        pthread_mutex_unlock(&s->lock);
        vd_node_set_error(s->node, "%s: the image is marked corrupt; writes are refused", s->name);
        return -EIO;
    }
    if (off < a) {
        ret = zero_partial(s, off, a - off, flags);
    }
    if (ret == 0 && a < b) {
        uint64_t first = a >> s->cluster_bits;
        uint64_t last = (b - 1) >> s->cluster_bits;
        qcow2_alloc_wait(s, first, last - first + 1);
        ret = qcow2_mark_dirty_locked(s);
        if (ret == 0) {
            ret = qcow2_zeroize_locked(s, a, b - a, flags);
        }
        if (ret == -ENOTSUP && !(flags & VD_REQ_NO_FALLBACK)) {
            ret = write_zero_buffer(s, a, b - a);
        }
    }
    if (ret == 0 && b < end) {
        ret = zero_partial(s, b, end - b, flags);
    }
    if (ret == 0 && s->nb_unsynced_frees > QCOW2_MAX_UNSYNCED_FREES) {
        ret = qcow2_flush_locked(s);
    }
    if (ret == 0 && (flags & VD_REQ_FUA)) {
        ret = qcow2_flush_locked(s);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_pdiscard(vd_node *node, uint64_t off, uint64_t len)
{
    qcow2_state *s = node->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t end = off + len;
    uint64_t start = (off + cs - 1) & ~(cs - 1);
    uint64_t stop = end & ~(cs - 1);

    /* Only whole clusters, plus the final partial cluster when all of it is covered. */
    if ((node->size & (cs - 1)) && end >= node->size && off <= (node->size & ~(cs - 1))) {
        stop = node->size;
    }
    /* Without a zero flag, a discarded cluster would show stale backing data (QEMU 7.2
     * ignores such discards too). */
    if (start >= stop || (s->h.version < 3 && node->backing)) {
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    qcow2_enter_locked(s);
    if (s->broken) {
        pthread_mutex_unlock(&s->lock);
        vd_node_set_error(s->node, "%s: the image is marked corrupt; writes are refused", s->name);
        return -EIO;
    }
    uint64_t first = start >> s->cluster_bits;
    qcow2_alloc_wait(s, first, ((stop - 1) >> s->cluster_bits) - first + 1);
    int ret = qcow2_discard_locked(s, start, stop - start, false);
    if (ret == 0 && s->nb_unsynced_frees > QCOW2_MAX_UNSYNCED_FREES) {
        ret = qcow2_flush_locked(s);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- block status ----------------------------------------------------------------------- */

/* QEMU's test for a metadata-preallocated image: clearly more clusters are in use by the
 * refcounts than the file system has allocated, so data clusters may be holes (which read
 * as zeros and are reported so). Decided once, at the first block status query. */
static void detect_metadata_prealloc(qcow2_state *s)
{
    s->prealloc_checked = true;
    s->metadata_prealloc = false;
    int64_t flen = vd_node_file_length(s->file);
    int64_t alloc = s->file->drv->allocated_size ? s->file->drv->allocated_size(s->file) : -1;
    if (flen < 0 || alloc < 0) {
        return;
    }
    uint64_t real = (uint64_t)alloc / s->cluster_size;
    uint64_t threshold = real * 10 / 9 > real + 2 ? real * 10 / 9 : real + 2;
    uint64_t end = ((uint64_t)flen + s->cluster_size - 1) >> s->cluster_bits;
    uint64_t count = 0;
    for (uint64_t c = 0; c < end && count < threshold; c++) {
        uint64_t rc;
        if (qcow2_get_refcount(s, c, &rc) < 0) {
            return;
        }
        count += rc != 0;
    }
    s->metadata_prealloc = count >= threshold;
}

int qcow2_block_status(vd_node *node, uint64_t off, uint64_t len, vd_node_status *st)
{
    qcow2_state *s = node->opaque;
    qcow2_run r;

    pthread_mutex_lock(&s->lock);
    if (!s->prealloc_checked) {
        detect_metadata_prealloc(s);
    }
    bool recurse = s->metadata_prealloc;
    int ret = qcow2_map_locked(s, off, len, &r);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    memset(st, 0, sizeof(*st));
    st->pnum = r.bytes;
    switch (r.type) {
    case QCOW2_SC_UNALLOC_PLAIN:
        break;
    case QCOW2_SC_UNALLOC_ALLOC:
        st->flags = VD_BS_OFFSET;
        break;
    case QCOW2_SC_ZERO_PLAIN:
        st->flags = VD_BS_ALLOCATED | VD_BS_ZERO;
        break;
    case QCOW2_SC_ZERO_ALLOC:
        st->flags = VD_BS_ALLOCATED | VD_BS_ZERO | VD_BS_OFFSET;
        break;
    case QCOW2_SC_NORMAL:
        st->flags = VD_BS_ALLOCATED | VD_BS_DATA | VD_BS_OFFSET;
        break;
    default:
        st->flags = VD_BS_ALLOCATED | VD_BS_DATA | VD_BS_COMPRESSED;
        break;
    }
    if (st->flags & VD_BS_OFFSET) {
        st->offset = r.host;
        st->file = s->file;
        if (recurse && (st->flags & VD_BS_DATA)) {
            st->flags |= VD_BS_RECURSE;
        }
    }
    return 0;
}
