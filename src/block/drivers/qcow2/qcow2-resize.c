/* qcow2 whole-image operations on the cluster map: resize (with preallocation of the new
 * range), make_empty, and the zero-cluster expansion a downgrade to compat=0.10 needs.
 * The caller holds the metadata lock and has drained the node. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

static uint64_t l1_entries_for(const qcow2_state *s, uint64_t size)
{
    uint32_t bits = s->cluster_bits + s->l2_bits;
    return (size >> bits) + ((size & ((1ull << bits) - 1)) != 0);
}

static int io_err(qcow2_state *s, int ret, const char *what, vd_error **errp)
{
    char detail[512];
    bool have = vd_node_get_error(s->node, detail, sizeof(detail));
    return vd_error_set(errp, VD_ERR_IO, -ret, "%s: %s: %s", s->name, what,
                        have ? detail : strerror(-ret));
}

/* Shrinks the file to the last cluster in use. */
static int trim_file(qcow2_state *s, vd_error **errp)
{
    int64_t last = qcow2_last_used_cluster(s);
    if (last < 0) {
        return last == -1 ? 0 : io_err(s, (int)last, "could not scan the refcounts", errp);
    }
    uint64_t end = ((uint64_t)last + 1) << s->cluster_bits;
    int64_t flen = vd_node_file_length(s->file);
    if (flen < 0 || (uint64_t)flen <= end) {
        return 0;
    }
    int ret = vd_node_truncate(s->file, end, true, "off", errp);
    if (ret < 0) {
        return ret;
    }
    if (s->zero_from > end) {
        s->zero_from = end;
    }
    return 0;
}

static int write_size(qcow2_state *s, uint64_t size)
{
    uint8_t b[8];
    vd_put_be64(b, size);
    int ret = vd_node_pwrite(s->file, b, sizeof(b), 24, 0);
    if (ret == 0) {
        ret = qcow2_sync(s);
    }
    return ret;
}

/* Allocates data clusters for the unallocated clusters of [start, end) (cluster-aligned
 * guest offsets), as plain allocated entries. metadata: sparse file, reused clusters get
 * zeroed. falloc/full: one contiguous run, the file extended with that mode. */
static int preallocate(qcow2_state *s, uint64_t start, uint64_t end, const char *mode,
                       vd_error **errp)
{
    uint64_t cs = s->cluster_size;
    bool metadata = !strcmp(mode, "metadata");
    uint64_t run = 0, run_left = 0;
    uint64_t max_end = 0;
    int ret;

    if (start >= end) {
        return 0;
    }
    if (!metadata) {
        uint64_t n = (end - start) >> s->cluster_bits;
        bool fresh;
        ret = qcow2_alloc_clusters(s, n, &run, &fresh);
        if (ret < 0) {
            return io_err(s, ret, "could not allocate the preallocated area", errp);
        }
        run_left = n;
        int64_t flen = vd_node_file_length(s->file);
        if (flen < 0) {
            return io_err(s, (int)flen, "could not get the file length", errp);
        }
        uint64_t run_end = run + n * cs;
        if (!fresh && run < (uint64_t)flen) {
            uint64_t zend = run_end < (uint64_t)flen ? run_end : (uint64_t)flen;
            ret = vd_node_pwrite_zeroes(s->file, run, zend - run, 0);
            if (ret < 0) {
                return io_err(s, ret, "could not zero the preallocated area", errp);
            }
        }
        if (run_end > (uint64_t)flen) {
            ret = vd_node_truncate(s->file, run_end, false, mode, errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    for (uint64_t off = start; off < end;) {
        uint64_t gci = off >> s->cluster_bits;
        qcow2_slice *sl;
        unsigned idx, avail;
        ret = qcow2_l2_slice(s, gci, true, &sl, &idx, &avail);
        if (ret < 0) {
            return io_err(s, ret, "could not allocate an L2 table", errp);
        }
        uint64_t n = (end - off) >> s->cluster_bits;
        if (n > avail) {
            n = avail;
        }
        if (metadata) {
            uint64_t need = 0;
            for (uint64_t k = 0; k < n; k++) {
                need += !qcow2_entry_allocated(qcow2_l2_get(s, sl->data, idx + (unsigned)k));
            }
            if (need) {
                bool fresh;
                ret = qcow2_alloc_clusters(s, need, &run, &fresh);
                if (ret < 0) {
                    qcow2_cache_put(s->l2_cache, sl);
                    return io_err(s, ret, "could not preallocate clusters", errp);
                }
                if (!fresh && !s->extl2) {
                    /* Reused clusters hold old data; the entries must read zeros. */
                    ret = vd_node_pwrite_zeroes(s->file, run, need * cs, 0);
                    if (ret < 0) {
                        qcow2_cache_put(s->l2_cache, sl);
                        return io_err(s, ret, "could not zero preallocated clusters", errp);
                    }
                }
                run_left = need;
                if (run + need * cs > max_end) {
                    max_end = run + need * cs;
                }
            }
        }
        for (uint64_t k = 0; k < n; k++) {
            unsigned i = idx + (unsigned)k;
            uint64_t e = qcow2_l2_get(s, sl->data, i);
            if (qcow2_entry_allocated(e) || run_left == 0) {
                continue;
            }
            uint64_t bm = metadata ? 0 : QCOW2_EXTL2_ALLOC_ALL;
            qcow2_l2_set(s, sl->data, i, run | QCOW2_OFLAG_COPIED, bm);
            run += cs;
            run_left--;
        }
        qcow2_cache_mark_dirty(s->l2_cache, sl);
        qcow2_cache_put(s->l2_cache, sl);
        off += n << s->cluster_bits;
    }
    if (metadata && max_end) {
        int64_t flen = vd_node_file_length(s->file);
        if (flen >= 0 && (uint64_t)flen < max_end) {
            ret = vd_node_truncate(s->file, max_end, false, "off", errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* Makes [from, to) read as zeros, hiding a longer backing file (what QEMU does when a
 * resize would otherwise expose backing data). */
static int zero_new_area(qcow2_state *s, uint64_t from, uint64_t to, vd_error **errp)
{
    uint64_t a = (from + s->sc_size - 1) & ~(s->sc_size - 1);
    int ret = 0;
    if (a > to) {
        a = to;
    }
    if (from < a) {
        const uint8_t *z = qcow2_zeros(s);
        ret = qcow2_pwrite_locked(s, z, a - from, from);
    }
    if (ret == 0 && a < to) {
        ret = qcow2_zeroize_locked(s, a, to - a, 0);
        if (ret == -ENOTSUP) {
            const uint8_t *z = qcow2_zeros(s);
            for (uint64_t o = a; o < to && ret <= 0;) {
                uint64_t now = to - o < QCOW2_MAX_BOUNCE_BYTES ? to - o : QCOW2_MAX_BOUNCE_BYTES;
                ret = qcow2_pwrite_locked(s, z, now, o);
                if (ret < 0) {
                    break;
                }
                o += now;
            }
        }
    }
    if (ret < 0) {
        return io_err(s, ret, "Failed to zero out new clusters", errp);
    }
    return 0;
}

int qcow2_truncate_locked(qcow2_state *s, uint64_t size, bool shrink, const char *prealloc,
                          vd_error **errp)
{
    uint64_t cs = s->cluster_size;
    uint64_t old = s->h.size;
    int ret;

    if (strcmp(prealloc, "off") && strcmp(prealloc, "metadata") && strcmp(prealloc, "falloc") &&
        strcmp(prealloc, "full")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unsupported preallocation mode '%s'",
                            prealloc);
    }
    if (size & 511) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "The new size must be a multiple of 512");
    }
    if (size == old) {
        return 0;
    }
    if (s->nb_snapshots && s->h.version < 3) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "Can't resize a v2 image which has snapshots");
    }
    int bret = qcow2_bitmaps_truncate_check(s, errp);
    if (bret < 0) {
        return bret;
    }
    if (l1_entries_for(s, size) > QCOW2_MAX_L1_BYTES / 8) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "%s: the size %" PRIu64 " needs an "
                            "L1 table larger than %u bytes", s->name, size,
                            QCOW2_MAX_L1_BYTES);
    }

    if (size < old) {
        if (!shrink) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                                "Use the --shrink option to perform a shrink operation.");
        }
        if (strcmp(prealloc, "off")) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                                "Preallocation can't be used for shrinking an image");
        }
        uint64_t from = (size + cs - 1) & ~(cs - 1);
        if (from < old) {
            ret = qcow2_discard_locked(s, from, old - from, true);
            if (ret < 0) {
                return io_err(s, ret, "Failed to discard cropped clusters", errp);
            }
        }
        /* L2 tables wholly past the end go too. */
        for (uint64_t i = l1_entries_for(s, size); i < s->l1_size; i++) {
            uint64_t l2 = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
            if (!l2) {
                continue;
            }
            s->l1[i] = 0;
            qcow2_l1_mark_dirty(s, (uint32_t)i);
            if (!(l2 & (cs - 1))) {
                qcow2_free_deferred(s, l2, cs, true);
            }
        }
        ret = qcow2_flush_locked(s);
        if (ret < 0) {
            return io_err(s, ret, "could not write the shrunk tables", errp);
        }
        ret = write_size(s, size);
        if (ret < 0) {
            return io_err(s, ret, "Failed to update the image size", errp);
        }
        s->h.size = size;
        s->node->size = size;
        ret = qcow2_drop_empty_refblocks_locked(s);
        if (ret == 0) {
            ret = qcow2_flush_locked(s);
        }
        if (ret < 0) {
            return io_err(s, ret, "could not drop unused refcount blocks", errp);
        }
        return trim_file(s, errp);
    }

    if (s->node->backing && s->node->backing->size > old && s->h.version < 3) {
        /* The new area would show backing data, and v2 has no zero clusters to hide it;
         * QEMU 7.2 refuses the same way. */
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "Failed to zero out new clusters: Operation not supported");
    }
    ret = qcow2_grow_l1_locked(s, l1_entries_for(s, size), true);
    if (ret < 0) {
        return io_err(s, ret, "Failed to grow the L1 table", errp);
    }
    if (strcmp(prealloc, "off")) {
        ret = preallocate(s, (old + cs - 1) & ~(cs - 1), (size + cs - 1) & ~(cs - 1), prealloc,
                          errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = write_size(s, size);
    if (ret < 0) {
        return io_err(s, ret, "Failed to update the image size", errp);
    }
    s->h.size = size;
    s->node->size = size;
    if (s->node->backing && s->node->backing->size > old) {
        ret = zero_new_area(s, old, size, errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_flush_locked(s);
    if (ret < 0) {
        return io_err(s, ret, "could not flush the resized image", errp);
    }
    return 0;
}

int qcow2_make_empty_locked(qcow2_state *s, vd_error **errp)
{
    uint64_t cs = s->cluster_size;
    int ret;

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1[i];
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        if (l2 & (cs - 1)) {
            ret = qcow2_signal_corruption(s, "L2 table offset %#" PRIx64 " unaligned (L1 index: "
                                          "%#" PRIx32 ")", l2, i);
            return io_err(s, ret, "could not empty the image", errp);
        }
        if (l1e & QCOW2_OFLAG_COPIED) {
            /* The table is ours alone: its references go with it. */
            for (uint64_t k = 0; k < cs; k += s->slice_size) {
                qcow2_slice *sl;
                ret = qcow2_cache_get(s, s->l2_cache, l2 + k, &sl);
                if (ret < 0) {
                    return io_err(s, ret, "could not read an L2 table", errp);
                }
                for (unsigned j = 0; j < s->l2_slice_entries; j++) {
                    uint64_t e = qcow2_l2_get(s, sl->data, j);
                    if (qcow2_entry_allocated(e)) {
                        qcow2_free_entry(s, e, true);
                    }
                }
                qcow2_cache_put(s->l2_cache, sl);
            }
        }
        s->l1[i] = 0;
        qcow2_l1_mark_dirty(s, i);
        qcow2_free_deferred(s, l2, cs, true);
    }
    ret = qcow2_flush_locked(s);
    if (ret < 0) {
        return io_err(s, ret, "could not empty the image", errp);
    }
    return trim_file(s, errp);
}

/* Whether any L2 entry of any internal snapshot's tree matches pred. */
static int snapshot_l2_any(qcow2_state *s, bool (*pred)(uint64_t e), bool *found)
{
    uint64_t cs = s->cluster_size;
    uint8_t *l2 = malloc(cs);
    if (!l2) {
        abort();
    }
    int ret = 0;
    *found = false;
    for (uint32_t n = 0; n < s->nb_snap_l1 && ret == 0 && !*found; n++) {
        uint64_t len = s->snap_l1[n].len;
        uint8_t *l1 = malloc(len);
        if (!l1) {
            abort();
        }
        ret = vd_node_pread(s->file, l1, len, s->snap_l1[n].offset);
        for (uint64_t i = 0; ret == 0 && !*found && i < len / 8; i++) {
            uint64_t off = vd_be64(l1 + i * 8) & QCOW2_L1E_OFFSET_MASK;
            if (!off || (off & (cs - 1))) {
                continue;
            }
            ret = vd_node_pread(s->file, l2, cs, off);
            for (uint64_t j = 0; ret == 0 && !*found && j < s->l2_entries; j++) {
                *found = pred(vd_be64(l2 + j * s->l2e_size));
            }
        }
        free(l1);
    }
    free(l2);
    return ret;
}

static bool is_zero_entry(uint64_t e)
{
    return !(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_OFLAG_ZERO);
}

static bool is_compressed_entry(uint64_t e)
{
    return (e & QCOW2_OFLAG_COMPRESSED) != 0;
}

/* Refuses a downgrade when a snapshot's tables hold zero clusters (they would need to be
 * expanded as well, which is not supported yet). */
static int check_snapshot_zeros(qcow2_state *s, vd_error **errp)
{
    bool found;
    int ret = snapshot_l2_any(s, is_zero_entry, &found);
    if (ret < 0) {
        return io_err(s, ret, "could not read a snapshot's tables", errp);
    }
    if (found) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "%s: cannot downgrade: an "
                            "internal snapshot contains zero clusters (not supported yet)",
                            s->name);
    }
    return 0;
}

int qcow2_has_compressed_locked(qcow2_state *s, bool *found, vd_error **errp)
{
    *found = false;
    uint64_t total = (uint64_t)s->l1_size << s->l2_bits;
    for (uint64_t gci = 0; gci < total && !*found;) {
        qcow2_slice *sl;
        unsigned idx, avail;
        int ret = qcow2_l2_slice(s, gci, false, &sl, &idx, &avail);
        if (ret < 0) {
            return io_err(s, ret, "could not read an L2 table", errp);
        }
        if (!sl) {
            gci += s->l2_entries - (gci & (s->l2_entries - 1));
            continue;
        }
        for (unsigned i = idx; i < idx + avail && !*found; i++) {
            *found = is_compressed_entry(qcow2_l2_get(s, sl->data, i));
        }
        qcow2_cache_put(s->l2_cache, sl);
        gci += avail;
    }
    if (*found) {
        return 0;
    }
    /* QEMU looks at the active tree only; a snapshot's compressed clusters would be just as
     * unreadable after a downgrade to zlib, so they count too. */
    int ret = snapshot_l2_any(s, is_compressed_entry, found);
    return ret < 0 ? io_err(s, ret, "could not read a snapshot's tables", errp) : 0;
}

/* Zero cluster -> unallocated (no backing file) or a cluster of real zeros. */
static int expand_entry(qcow2_state *s, uint64_t e, uint64_t *ne)
{
    uint64_t cs = s->cluster_size;
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    int ret;

    if (!host && !s->node->backing) {
        *ne = 0;
        return 0;
    }
    bool reuse = host && (e & QCOW2_OFLAG_COPIED);
    uint64_t target = host;
    if (!reuse) {
        ret = qcow2_alloc_clusters(s, 1, &target, NULL);
        if (ret < 0) {
            return ret;
        }
    }
    ret = vd_node_pwrite_zeroes(s->file, target, cs, 0);
    if (ret < 0) {
        if (!reuse) {
            qcow2_update_refcount(s, target, cs, -1, false);
        }
        return ret;
    }
    if (!reuse && host) {
        qcow2_free_entry(s, e, false);
    }
    *ne = target | QCOW2_OFLAG_COPIED;
    return 0;
}

int qcow2_expand_zero_clusters_locked(qcow2_state *s, vd_error **errp)
{
    int ret = qcow2_flush_locked(s);
    if (ret < 0) {
        return io_err(s, ret, "could not flush", errp);
    }
    ret = check_snapshot_zeros(s, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t total = (uint64_t)s->l1_size << s->l2_bits;
    for (uint64_t gci = 0; gci < total;) {
        qcow2_slice *sl;
        unsigned idx, avail;
        ret = qcow2_l2_slice(s, gci, false, &sl, &idx, &avail);
        if (ret < 0) {
            return io_err(s, ret, "could not read an L2 table", errp);
        }
        if (!sl) {
            gci += s->l2_entries - (gci & (s->l2_entries - 1));
            continue;
        }
        bool any = false;
        for (unsigned i = idx; i < idx + avail && !any; i++) {
            uint64_t e = qcow2_l2_get(s, sl->data, i);
            any = !(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_OFLAG_ZERO);
        }
        qcow2_cache_put(s->l2_cache, sl);
        if (any) {
            ret = qcow2_l2_slice(s, gci, true, &sl, &idx, &avail);
            if (ret < 0) {
                return io_err(s, ret, "could not copy an L2 table", errp);
            }
            for (unsigned i = idx; i < idx + avail; i++) {
                uint64_t e = qcow2_l2_get(s, sl->data, i);
                if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO)) {
                    continue;
                }
                uint64_t ne;
                ret = expand_entry(s, e, &ne);
                if (ret < 0) {
                    qcow2_cache_put(s->l2_cache, sl);
                    return io_err(s, ret, "could not expand a zero cluster", errp);
                }
                qcow2_l2_set(s, sl->data, i, ne, 0);
                qcow2_cache_mark_dirty(s->l2_cache, sl);
            }
            qcow2_cache_put(s->l2_cache, sl);
        }
        gci += avail;
    }
    ret = qcow2_flush_locked(s);
    if (ret < 0) {
        return io_err(s, ret, "could not flush", errp);
    }
    return 0;
}
