/* qcow2 cluster mapping: L1/L2 lookups, entry types, allocation and copy-on-write of L2
 * tables, L1 growth, and the metadata-only range operations (discard, zeroing) that change
 * L2 entries without touching guest data. All calls hold the metadata lock. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

#define L1_CHUNK 4096u

qcow2_sc_type qcow2_sc_type_of(const qcow2_state *s, uint64_t e, uint64_t bitmap, unsigned sc)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_SC_COMPRESSED;
    }
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    if (!s->extl2) {
        if (e & QCOW2_OFLAG_ZERO) {
            if (s->h.version < 3) {
                return QCOW2_SC_INVALID;
            }
            return host ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
        }
        return host ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOC_PLAIN;
    }
    bool alloc = (bitmap >> sc) & 1;
    bool zero = (bitmap >> (32 + sc)) & 1;
    if (host) {
        if (alloc && zero) {
            return QCOW2_SC_INVALID;
        }
        return alloc ? QCOW2_SC_NORMAL : zero ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_UNALLOC_ALLOC;
    }
    if (bitmap & QCOW2_EXTL2_ALLOC_ALL) {
        return QCOW2_SC_INVALID;
    }
    return zero ? QCOW2_SC_ZERO_PLAIN : QCOW2_SC_UNALLOC_PLAIN;
}

/* Entry checks QEMU makes when it uses an entry; violations mark the image corrupt. */
int qcow2_check_entry(qcow2_state *s, uint64_t e, uint64_t bitmap, uint64_t gci)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        return 0;
    }
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    if (host & (s->cluster_size - 1)) {
        return qcow2_signal_corruption(s, "Cluster allocation offset %#" PRIx64 " unaligned "
                                       "(guest offset: %#" PRIx64 ")", host,
                                       gci << s->cluster_bits);
    }
    if (!s->extl2 && (e & QCOW2_OFLAG_ZERO) && s->h.version < 3) {
        return qcow2_signal_corruption(s, "Zero cluster entry found in pre-v3 image (guest "
                                       "offset: %#" PRIx64 ")", gci << s->cluster_bits);
    }
    if (s->extl2) {
        if (!host && (bitmap & QCOW2_EXTL2_ALLOC_ALL)) {
            return qcow2_signal_corruption(s, "Invalid cluster entry found (guest offset: "
                                           "%#" PRIx64 "): allocated subclusters without a "
                                           "host cluster", gci << s->cluster_bits);
        }
        if (bitmap & (bitmap >> 32) & QCOW2_EXTL2_ALLOC_ALL) {
            return qcow2_signal_corruption(s, "Invalid cluster entry found (guest offset: "
                                           "%#" PRIx64 "): subcluster both allocated and zero",
                                           gci << s->cluster_bits);
        }
    }
    return 0;
}

void qcow2_l1_mark_dirty(qcow2_state *s, uint32_t idx)
{
    size_t chunk = (size_t)idx * 8 / L1_CHUNK;
    if (!s->l1_dirty[chunk]) {
        s->l1_dirty[chunk] = 1;
        s->l1_nb_dirty++;
    }
}

int qcow2_write_l1_dirty(qcow2_state *s)
{
    if (s->l1_nb_dirty == 0) {
        return 0;
    }
    uint8_t buf[L1_CHUNK];
    uint64_t total = (uint64_t)s->l1_size * 8;
    size_t chunks = (size_t)((total + L1_CHUNK - 1) / L1_CHUNK);
    for (size_t c = 0; c < chunks; c++) {
        if (!s->l1_dirty[c]) {
            continue;
        }
        uint64_t start = (uint64_t)c * L1_CHUNK;
        uint64_t len = total - start < L1_CHUNK ? total - start : L1_CHUNK;
        for (uint64_t i = 0; i < len / 8; i++) {
            vd_put_be64(buf + i * 8, s->l1[start / 8 + i]);
        }
        vd_node_event(s->file, "l1_update");
        int ret = vd_node_pwrite(s->file, buf, len, s->l1_offset + start, 0);
        if (ret < 0) {
            vd_node_set_error(s->node, "%s: could not write the L1 table at 0x%" PRIx64 ": %s", s->name,
                            s->l1_offset + start, strerror(-ret));
            return ret;
        }
        s->l1_dirty[c] = 0;
        s->l1_nb_dirty--;
    }
    return 0;
}

/* Gives L1 entry l1_idx a private L2 table: a new empty one, or a copy of a shared one
 * (the reference to the shared one is dropped once the L1 change is durable). */
static int l2_allocate(qcow2_state *s, uint64_t l1_idx)
{
    uint64_t old = s->l1[l1_idx] & QCOW2_L1E_OFFSET_MASK;
    uint64_t off;
    int ret = qcow2_alloc_clusters_for(s, 1, &off, NULL, "L2 table");
    if (ret < 0) {
        return ret;
    }
    for (uint64_t k = 0; k < s->cluster_size; k += s->slice_size) {
        qcow2_slice *dst, *src;
        ret = qcow2_cache_get_empty(s, s->l2_cache, off + k, &dst);
        if (ret < 0) {
            return ret;
        }
        if (old) {
            ret = qcow2_cache_get(s, s->l2_cache, old + k, &src);
            if (ret < 0) {
                qcow2_cache_put(s->l2_cache, dst);
                return ret;
            }
            memcpy(dst->data, src->data, s->slice_size);
            qcow2_cache_put(s->l2_cache, src);
        }
        qcow2_cache_put(s->l2_cache, dst);
    }
    s->l1[l1_idx] = off | QCOW2_OFLAG_COPIED;
    qcow2_l1_mark_dirty(s, (uint32_t)l1_idx);
    if (old) {
        qcow2_free_deferred(s, old, s->cluster_size, false);
    }
    return 0;
}

int qcow2_l2_slice(qcow2_state *s, uint64_t gci, bool for_write, qcow2_slice **sl,
                   unsigned *idx, unsigned *avail)
{
    uint64_t l1_idx = gci >> s->l2_bits;
    uint64_t l2_idx = gci & (s->l2_entries - 1);
    uint32_t per = s->l2_slice_entries;

    *sl = NULL;
    *idx = (unsigned)(l2_idx % per);
    *avail = per - *idx;
    if (l1_idx >= s->l1_size) {
        if (!for_write) {
            return 0;
        }
        vd_node_set_error(s->node, "%s: guest offset %#" PRIx64 " is beyond the L1 table", s->name,
                        gci << s->cluster_bits);
        return -EIO;
    }
    uint64_t l1e = s->l1[l1_idx];
    uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
    if (l2 & (s->cluster_size - 1)) {
        return qcow2_signal_corruption(s, "L2 table offset %#" PRIx64 " unaligned (L1 index: "
                                       "%#" PRIx64 ")", l2, l1_idx);
    }
    if (for_write) {
        if (l2 == 0 || !(l1e & QCOW2_OFLAG_COPIED)) {
            int ret = l2_allocate(s, l1_idx);
            if (ret < 0) {
                return ret;
            }
            l2 = s->l1[l1_idx] & QCOW2_L1E_OFFSET_MASK;
        } else {
            const char *ov = qcow2_metadata_overlap(s, l2, s->cluster_size);
            if (ov) {
                return qcow2_signal_corruption_at(s, l2, s->cluster_size, "Preventing "
                                                  "invalid write on metadata (L2 table at %#"
                                                  PRIx64 " overlaps with %s)", l2, ov);
            }
        }
    } else if (l2 == 0) {
        return 0;
    }
    uint64_t slice_off = l2 + (l2_idx / per) * s->slice_size;
    return qcow2_cache_get(s, s->l2_cache, slice_off, sl);
}

static bool has_host(qcow2_sc_type t)
{
    return t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC || t == QCOW2_SC_UNALLOC_ALLOC;
}

int qcow2_map_locked(qcow2_state *s, uint64_t off, uint64_t max, qcow2_run *r)
{
    uint64_t cs = s->cluster_size;
    uint64_t gci = off >> s->cluster_bits;
    uint64_t in_cl = off & (cs - 1);
    qcow2_slice *sl;
    unsigned idx, avail;

    memset(r, 0, sizeof(*r));
    int ret = qcow2_l2_slice(s, gci, false, &sl, &idx, &avail);
    if (ret < 0) {
        return ret;
    }
    if (!sl) {
        uint64_t left = (s->l2_entries - (gci & (s->l2_entries - 1))) * cs - in_cl;
        r->type = QCOW2_SC_UNALLOC_PLAIN;
        r->bytes = left < max ? left : max;
        return 0;
    }
    uint64_t bytes = 0;
    bool first = true, stop = false;
    for (unsigned i = idx; i < idx + avail && !stop && bytes < max; i++, gci++) {
        uint64_t e = qcow2_l2_get(s, sl->data, i);
        uint64_t bm = qcow2_l2_get_bitmap(s, sl->data, i);
        ret = qcow2_check_entry(s, e, bm, gci);
        if (ret < 0) {
            qcow2_cache_put(s->l2_cache, sl);
            return ret;
        }
        uint64_t host = qcow2_entry_host(e);
        if (!first && (e & QCOW2_OFLAG_COMPRESSED)) {
            break;
        }
        while (in_cl < cs && bytes < max) {
            unsigned sc = (unsigned)(in_cl >> s->sc_bits);
            qcow2_sc_type t = qcow2_sc_type_of(s, e, bm, sc);
            uint64_t unit = s->extl2 ? s->sc_size - (in_cl & (s->sc_size - 1)) : cs - in_cl;
            if (first) {
                r->type = t;
                r->l2e = e;
                r->host = has_host(t) ? host + in_cl : 0;
                first = false;
            } else if (t != r->type || (has_host(t) && host + in_cl != r->host + bytes)) {
                stop = true;
                break;
            }
            bytes += unit;
            in_cl += unit;
        }
        in_cl = 0;
    }
    qcow2_cache_put(s->l2_cache, sl);
    if (r->type == QCOW2_SC_INVALID) {
        return qcow2_signal_corruption(s, "Invalid cluster entry found (guest offset: %#"
                                       PRIx64 ")", off);
    }
    r->bytes = bytes < max ? bytes : max;
    return 0;
}

void qcow2_free_entry(qcow2_state *s, uint64_t e, bool punch)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t host, csize;
        qcow2_compressed_decode(e, s->cluster_bits, &host, &csize);
        qcow2_free_deferred(s, host, csize, punch);
        return;
    }
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    if (host) {
        qcow2_free_deferred(s, host, s->cluster_size, punch);
    }
}

/* New entry for a discarded cluster, as QEMU 7.2 makes it. */
static void discard_entry(qcow2_state *s, uint64_t e, uint64_t bm, bool full, uint64_t *ne,
                          uint64_t *nbm)
{
    *ne = e;
    *nbm = bm;
    if (full) {
        *ne = 0;
        *nbm = 0;
    } else if (s->node->backing || qcow2_entry_allocated(e)) {
        if (s->extl2) {
            *ne = 0;
            *nbm = QCOW2_EXTL2_ZERO_ALL;
        } else {
            *ne = s->h.version >= 3 ? QCOW2_OFLAG_ZERO : 0;
        }
    }
}

int qcow2_discard_locked(qcow2_state *s, uint64_t off, uint64_t len, bool full)
{
    uint64_t cs = s->cluster_size;
    uint64_t gci = off >> s->cluster_bits;
    uint64_t n = (len + cs - 1) >> s->cluster_bits;
    bool punch = full || s->pass_discard_request;

    while (n > 0) {
        qcow2_slice *sl;
        unsigned idx, avail;
        int ret = qcow2_l2_slice(s, gci, false, &sl, &idx, &avail);
        if (ret < 0) {
            return ret;
        }
        uint64_t chunk = n < avail ? n : avail;
        bool change = false;
        if (!sl) {
            /* No L2 table: the entries are 0 and change only when they must read zeros
             * over a backing file. */
            uint64_t ne, nbm;
            discard_entry(s, 0, 0, full, &ne, &nbm);
            change = ne != 0 || nbm != 0;
            if (!change) {
                uint64_t left = s->l2_entries - (gci & (s->l2_entries - 1));
                chunk = n < left ? n : left;
            }
        } else {
            for (unsigned i = idx; i < idx + chunk && !change; i++) {
                uint64_t e = qcow2_l2_get(s, sl->data, i);
                uint64_t bm = qcow2_l2_get_bitmap(s, sl->data, i);
                uint64_t ne, nbm;
                discard_entry(s, e, bm, full, &ne, &nbm);
                change = ne != e || nbm != bm;
            }
            qcow2_cache_put(s->l2_cache, sl);
        }
        if (change) {
            ret = qcow2_l2_slice(s, gci, true, &sl, &idx, &avail);
            if (ret < 0) {
                return ret;
            }
            for (unsigned i = idx; i < idx + chunk; i++) {
                uint64_t e = qcow2_l2_get(s, sl->data, i);
                uint64_t bm = qcow2_l2_get_bitmap(s, sl->data, i);
                uint64_t ne, nbm;
                discard_entry(s, e, bm, full, &ne, &nbm);
                if (ne == e && nbm == bm) {
                    continue;
                }
                qcow2_l2_set(s, sl->data, i, ne, nbm);
                qcow2_cache_mark_dirty(s->l2_cache, sl);
                if (qcow2_entry_allocated(e)) {
                    qcow2_free_entry(s, e, punch);
                }
            }
            qcow2_cache_put(s->l2_cache, sl);
        }
        gci += chunk;
        n -= chunk;
    }
    return 0;
}

int qcow2_zeroize_locked(qcow2_state *s, uint64_t off, uint64_t len, unsigned flags)
{
    uint64_t cs = s->cluster_size;
    uint64_t end = off + len;
    bool punch = s->pass_discard_request;

    if (s->h.version < 3) {
        /* No zero flag: without a backing file an unallocated cluster reads as zeros. */
        if (s->node->backing) {
            return -ENOTSUP;
        }
        return qcow2_discard_locked(s, off, len, false);
    }
    while (off < end) {
        uint64_t gci = off >> s->cluster_bits;
        qcow2_slice *sl;
        unsigned idx, avail;
        int ret = qcow2_l2_slice(s, gci, true, &sl, &idx, &avail);
        if (ret < 0) {
            return ret;
        }
        for (unsigned i = idx; i < idx + avail && off < end; i++, gci++) {
            uint64_t cstart = gci << s->cluster_bits;
            uint64_t a = off - cstart;
            uint64_t b = end - cstart < cs ? end - cstart : cs;
            /* Up to the end of the disk counts as the whole cluster, except with
             * subclusters: then only those the disk reaches become zero, as in QEMU. */
            bool whole = a == 0 && (b == cs || (end >= s->node->size && !s->extl2));
            uint64_t e = qcow2_l2_get(s, sl->data, i);
            uint64_t bm = qcow2_l2_get_bitmap(s, sl->data, i);
            uint64_t ne = e, nbm = bm;
            bool unmap = false;
            if (whole) {
                unmap = (e & QCOW2_OFLAG_COMPRESSED) ||
                        ((flags & VD_REQ_MAY_UNMAP) && qcow2_entry_allocated(e));
                ne = unmap ? 0 : e;
                if (s->extl2) {
                    nbm = QCOW2_EXTL2_ZERO_ALL;
                } else {
                    ne |= QCOW2_OFLAG_ZERO;
                }
            } else {
                /* Subcluster-aligned part of a cluster (extended L2 only). */
                if (e & QCOW2_OFLAG_COMPRESSED) {
                    qcow2_cache_put(s->l2_cache, sl);
                    return -ENOTSUP;
                }
                unsigned first = (unsigned)(a >> s->sc_bits);
                unsigned last = (unsigned)((b + s->sc_size - 1) >> s->sc_bits);
                uint64_t mask = (last >= 32 ? 0xffffffffull : ((1ull << last) - 1)) &
                                ~((1ull << first) - 1);
                nbm = (bm & ~mask) | (mask << 32);
            }
            off = cstart + b;
            if (ne == e && nbm == bm) {
                continue;
            }
            qcow2_l2_set(s, sl->data, i, ne, nbm);
            qcow2_cache_mark_dirty(s->l2_cache, sl);
            if (unmap) {
                qcow2_free_entry(s, e, punch);
            }
        }
        qcow2_cache_put(s->l2_cache, sl);
    }
    return 0;
}

/* Whether the backing chain from n down reads [off, off+len) as zeros by its metadata
 * alone (no data is read): a zero or hole status, or past the end of a layer, or nothing
 * allocated down to the bottom. As QEMU's fast zero test does. */
static int chain_reads_zero(vd_node *n, uint64_t off, uint64_t len, bool *zero)
{
    *zero = true;
    while (n && len > 0 && off < n->size) {
        uint64_t now = len < n->size - off ? len : n->size - off;
        vd_node_status st;
        int ret = vd_node_block_status(n, off, now, &st);
        if (ret < 0) {
            return ret;
        }
        if (st.flags & VD_BS_ALLOCATED) {
            if (!(st.flags & VD_BS_ZERO)) {
                *zero = false;
                return 0;
            }
        } else {
            ret = chain_reads_zero(n->backing, off, st.pnum, zero);
            if (ret < 0 || !*zero) {
                return ret;
            }
        }
        off += st.pnum;
        len -= st.pnum;
    }
    return 0;
}

int qcow2_reads_zero_locked(qcow2_state *s, uint64_t off, uint64_t len, bool *zero)
{
    *zero = true;
    while (len > 0) {
        qcow2_run r;
        int ret = qcow2_map_locked(s, off, len, &r);
        if (ret < 0) {
            return ret;
        }
        switch (r.type) {
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            break;
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC:
            ret = chain_reads_zero(s->node->backing, off, r.bytes, zero);
            if (ret < 0 || !*zero) {
                return ret;
            }
            break;
        default:
            *zero = false;
            return 0;
        }
        off += r.bytes;
        len -= r.bytes;
    }
    return 0;
}

int qcow2_l1_install_locked(qcow2_state *s, uint64_t *l1, uint32_t size)
{
    uint64_t cs = s->cluster_size;
    uint64_t bytes = (uint64_t)size * 8;
    uint64_t clusters = (bytes + cs - 1) / cs;
    uint64_t off;
    int ret = qcow2_alloc_clusters(s, clusters, &off, NULL);
    if (ret < 0) {
        return ret;
    }
    uint8_t *buf = calloc(1, bytes);
    size_t chunks = (size_t)((bytes + L1_CHUNK - 1) / L1_CHUNK);
    uint8_t *dirty = calloc(chunks, 1);
    if (!buf || !dirty) {
        abort();
    }
    for (uint64_t i = 0; i < size; i++) {
        vd_put_be64(buf + i * 8, l1[i]);
    }
    vd_node_event(s->file, "l1_update");
    ret = vd_node_pwrite(s->file, buf, bytes, off, 0);
    free(buf);
    if (ret == 0) {
        /* The new table and its refcount are durable before the header points at it. */
        ret = qcow2_cache_writeback(s, s->rb_cache);
    }
    if (ret == 0) {
        ret = qcow2_sync(s);
    }
    if (ret == 0) {
        /* One 12-byte write inside the first sector: the switch is atomic. */
        uint8_t hdr[12];
        vd_put_be32(hdr, size);
        vd_put_be64(hdr + 4, off);
        vd_node_event(s->file, "header_update");
        ret = vd_node_pwrite(s->file, hdr, sizeof(hdr), 36, 0);
        if (ret == 0) {
            ret = qcow2_sync(s);
        }
    }
    if (ret < 0) {
        free(dirty);
        qcow2_update_refcount(s, off, clusters * cs, -1, false);
        vd_node_set_error(s->node, "%s: could not write a new L1 table: %s", s->name, strerror(-ret));
        return ret;
    }
    uint64_t old_off = s->l1_offset;
    uint64_t old_bytes = (uint64_t)s->l1_size * 8;
    free(s->l1);
    free(s->l1_dirty);
    s->l1 = l1;
    s->l1_dirty = dirty;
    s->l1_nb_dirty = 0;
    s->l1_size = size;
    s->l1_offset = off;
    s->h.l1_size = size;
    s->h.l1_table_offset = off;
    if (old_bytes) {
        /* The header no longer references the old table. */
        qcow2_update_refcount(s, old_off, old_bytes, -1, false);
    }
    return 0;
}

int qcow2_grow_l1_locked(qcow2_state *s, uint64_t min_size, bool exact)
{
    if (min_size <= s->l1_size) {
        return 0;
    }
    if (min_size > QCOW2_MAX_L1_BYTES / 8) {
        vd_node_set_error(s->node, "%s: the L1 table would exceed %u bytes", s->name, QCOW2_MAX_L1_BYTES);
        return -EFBIG;
    }
    if (!exact) {
        /* A write past the table grows it by half again until it fits, as QEMU does, so
         * that a stream of such writes (VM state) grows it rarely; the same sizes result. */
        uint64_t n = s->l1_size ? s->l1_size : 1;
        while (n < min_size) {
            n = (n * 3 + 1) / 2;
        }
        min_size = n < QCOW2_MAX_L1_BYTES / 8 ? n : QCOW2_MAX_L1_BYTES / 8;
    }
    /* Everything the old table references must be durable before a copy of it is. */
    int ret = qcow2_flush_locked(s);
    if (ret < 0) {
        return ret;
    }
    uint64_t *l1 = calloc(min_size, sizeof(*l1));
    if (!l1) {
        abort();
    }
    if (s->l1_size) {
        memcpy(l1, s->l1, (size_t)s->l1_size * sizeof(*l1));
    }
    ret = qcow2_l1_install_locked(s, l1, (uint32_t)min_size);
    if (ret < 0) {
        free(l1);
    }
    return ret;
}
