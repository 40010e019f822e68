/* The repairing half of the qcow2 check: on-disk refcount access, the refcount structure
 * rebuild, COPIED flags, and reading and rewriting the snapshot table as check does. Every
 * write is ordered so that a crash in the middle leaves at worst leaked clusters. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-check.h"

/* Finds the refblock holding cluster's refcount: 0 with *rb_off = 0 when there is none. */
int qcow2_chk_refblock_of(chk *k, uint64_t cluster, uint64_t *rb_off)
{
    uint64_t idx = cluster >> k->rb_bits;

    *rb_off = 0;
    if (idx >= k->rt_entries) {
        return 0;
    }
    uint64_t off = k->rt[idx] & QCOW2_REFT_OFFSET_MASK;
    if (off && (off & (k->cs - 1))) {
        qcow2_chk_corruption(k, "Refblock offset %#" PRIx64 " unaligned (reftable index: %#"
                             PRIx64 ")", off, idx);
        return -EIO;
    }
    *rb_off = off;
    return 0;
}

static int load_refblock(chk *k, uint64_t off)
{
    if (k->rb_valid && k->rb_offset == off) {
        return 0;
    }
    k->rb_valid = false;
    int ret = qcow2_chk_read(k, k->rb, k->cs, off);
    if (ret < 0) {
        return ret;
    }
    k->rb_offset = off;
    k->rb_valid = true;
    return 0;
}

int qcow2_chk_get_refcount(chk *k, uint64_t cluster, uint64_t *rc)
{
    uint64_t off;
    int ret = qcow2_chk_refblock_of(k, cluster, &off);

    *rc = 0;
    if (ret < 0 || off == 0) {
        return ret;
    }
    ret = load_refblock(k, off);
    if (ret < 0) {
        return ret;
    }
    *rc = qcow2_refcount_get(k->rb, k->rorder, cluster & ((1ull << k->rb_bits) - 1));
    return 0;
}

/* Sets one on-disk refcount; writes only the bytes of that entry. */
int qcow2_chk_set_refcount(chk *k, uint64_t cluster, uint64_t value)
{
    uint64_t off;
    int ret = qcow2_chk_refblock_of(k, cluster, &off);

    if (ret < 0) {
        return ret;
    }
    if (off == 0) {
        return -EIO;  /* callers only change counts that a refblock already holds */
    }
    if (k->rb_safe != off) {
        /* QEMU checks each refblock it writes back against the other metadata. */
        const char *ol = qcow2_chk_overlap(k, OL_REFBLOCK, off, k->cs);
        if (ol) {
            qcow2_chk_corruption(k, "Preventing invalid write on metadata (overlaps with %s)",
                                 ol);
            return -EIO;
        }
        k->rb_safe = off;
    }
    ret = load_refblock(k, off);
    if (ret < 0) {
        return ret;
    }
    uint64_t idx = cluster & ((1ull << k->rb_bits) - 1);
    uint64_t byte = k->rorder < 3 ? (idx << k->rorder) / 8 : idx << (k->rorder - 3);
    uint64_t nbytes = k->rorder < 3 ? 1 : 1ull << (k->rorder - 3);
    qcow2_refcount_set(k->rb, k->rorder, idx, value);
    ret = qcow2_chk_write(k, k->rb + byte, nbytes, off + byte);
    if (ret < 0) {
        k->rb_valid = false;
    }
    return ret;
}

/* A cluster whose refcount dropped to 0 is discarded, as QEMU's repairs do (they use the
 * "always" discard type); whether that punches a hole is up to the file node. */
void qcow2_chk_discard(chk *k, uint64_t cluster)
{
    uint64_t off = cluster << k->cbits;
    /* Never the header: a hostile snapshot table at offset 0 must not wipe it. */
    if (off != 0 && off < k->file_len) {
        uint64_t len = k->file_len - off < k->cs ? k->file_len - off : k->cs;
        vd_node_pdiscard(k->file, off, len);
    }
}

/* Forgets reftable entry `idx`, a refblock past the end of the file that the repair could
 * not reach: it reads as zeros, so an empty entry means the same. The rebuild may then put
 * its new structures in that cluster; write_dropped() clears the entries on disk first, so
 * that the old reftable (live until the header points to the new one) never points into
 * them. Only the reftable copy in memory changes here: a hostile table may hold a million
 * such entries, and they are written in one go. */
void qcow2_chk_drop_refblock(chk *k, uint64_t idx)
{
    k->rt[idx] = 0;
    k->rb_safe = 0;
    k->rb_valid = false;
    if (k->rt_drop_hi == 0 || idx < k->rt_drop_lo) {
        k->rt_drop_lo = idx;
    }
    if (idx >= k->rt_drop_hi) {
        k->rt_drop_hi = idx + 1;
    }
}

/* Writes the span of reftable entries qcow2_chk_drop_refblock() cleared, then syncs. The
 * span lies inside the file (entries past its end read as zeros and are never dropped). A
 * reftable that overlaps other metadata there is left alone: QEMU would not write it. */
static int write_dropped(chk *k)
{
    uint64_t lo = k->rt_drop_lo, n = k->rt_drop_hi - k->rt_drop_lo;
    int ret;

    if (k->rt_drop_hi == 0) {
        return 0;
    }
    k->rt_drop_hi = 0;
    if (qcow2_chk_overlap(k, OL_REFTABLE, k->rt_offset + lo * 8, n * 8)) {
        return 0;
    }
    uint8_t *raw = malloc(n * 8);
    if (!raw) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        vd_put_be64(raw + i * 8, k->rt[lo + i]);
    }
    ret = qcow2_chk_write(k, raw, n * 8, k->rt_offset + lo * 8);
    free(raw);
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    return ret;
}

/* QEMU's alloc_clusters_imrt: first fit of `count` free clusters in the IMRT, growing it. */
static int64_t alloc_clusters_imrt(chk *k, int64_t count, int64_t *first_free)
{
    int64_t cl = *first_free, contiguous = 0;
    bool first_gap = true;

    for (; cl < k->imrt_clusters && contiguous < count; cl++) {
        if (!qcow2_chk_imrt_get(k, cl)) {
            contiguous++;
            if (first_gap) {
                *first_free = cl;
                first_gap = false;
            }
        } else {
            contiguous = 0;
        }
    }
    if (contiguous < count) {
        int ret = qcow2_chk_imrt_resize(k, cl + count - contiguous);
        if (ret < 0) {
            return ret;
        }
    }
    cl -= contiguous;
    for (int64_t i = 0; i < count; i++) {
        qcow2_refcount_set(k->imrt, k->rorder, (uint64_t)(cl + i), 1);
    }
    return cl << k->cbits;
}

/* Writes the refblocks covering the used clusters in [first, end), allocating the missing
 * ones in the IMRT. Returns 1 if the new reftable had to grow, 0, or -errno. */
static int write_refblocks(chk *k, int64_t first, int64_t end, uint64_t **rt,
                           uint64_t *rt_entries, const char **what_failed)
{
    int64_t first_free = 0;
    bool grown = false;
    uint64_t per_rb = 1ull << k->rb_bits;

    for (int64_t cl = first; cl < end; cl++) {
        if (!qcow2_chk_imrt_get(k, cl)) {
            continue;
        }
        uint64_t idx = (uint64_t)cl >> k->rb_bits;
        int64_t rb_start = (int64_t)(idx << k->rb_bits);
        uint64_t rb_off;

        if (*rt_entries > idx && (*rt)[idx]) {
            rb_off = (*rt)[idx];
        } else {
            if (first_free < rb_start) {
                first_free = rb_start;
            }
            int64_t o = alloc_clusters_imrt(k, 1, &first_free);
            if (o < 0) {
                *what_failed = "ERROR allocating refblock";
                return (int)o;
            }
            rb_off = (uint64_t)o;
            if ((int64_t)(rb_off >> k->cbits) >= end) {
                end = (int64_t)(rb_off >> k->cbits) + 1;
            }
            if (*rt_entries <= idx) {
                uint64_t n = (((idx + 1) * 8 + k->cs - 1) & ~(k->cs - 1)) / 8;
                if (n > QCOW2_MAX_REFTABLE_BYTES / 8) {
                    *what_failed = "ERROR allocating reftable memory";
                    return -EFBIG;
                }
                uint64_t *p = realloc(*rt, n * 8);
                if (!p) {
                    *what_failed = "ERROR allocating reftable memory";
                    return -ENOMEM;
                }
                memset(p + *rt_entries, 0, (n - *rt_entries) * 8);
                *rt = p;
                *rt_entries = n;
                grown = true;
            }
            (*rt)[idx] = rb_off;
        }
        const char *ol = qcow2_chk_overlap(k, 0, rb_off, k->cs);
        if (ol) {
            qcow2_chk_corruption(k, "Preventing invalid write on metadata (overlaps with %s)", ol);
            *what_failed = "ERROR writing refblock";
            return -EIO;
        }
        int ret = qcow2_chk_write(k, k->imrt + idx * k->cs, k->cs, rb_off);
        if (ret < 0) {
            *what_failed = "ERROR writing refblock";
            return ret;
        }
        cl = rb_start + (int64_t)per_rb - 1;
    }
    return grown ? 1 : 0;
}

int qcow2_chk_rebuild(chk *k)
{
    uint64_t *rt = NULL;
    uint64_t entries = 0;
    uint64_t rt_offset = 0, rt_clusters = 0;
    const char *what_failed = NULL;
    int ret;

    /* The old refblocks and reftable stay counted in the IMRT; the new ones go into free
     * clusters. Everything is written and synced before the header points to it. */
    k->rb_valid = false;
    ret = write_dropped(k);
    if (ret < 0) {
        what_failed = "ERROR clearing refcount table entries";
    } else {
        ret = write_refblocks(k, 0, k->imrt_clusters, &rt, &entries, &what_failed);
    }
    while (ret > 0) {
        int64_t first_free = 0;
        rt_clusters = qcow2_chk_clusters(k, entries * 8);
        int64_t o = alloc_clusters_imrt(k, (int64_t)rt_clusters, &first_free);
        if (o < 0) {
            what_failed = "ERROR allocating reftable";
            ret = (int)o;
            break;
        }
        rt_offset = (uint64_t)o;
        ret = write_refblocks(k, (int64_t)(rt_offset >> k->cbits),
                              (int64_t)((rt_offset >> k->cbits) + rt_clusters), &rt, &entries,
                              &what_failed);
        if (ret == 0) {
            ret = 2;  /* done: the reftable is placed and every refblock written */
            break;
        }
    }
    if (ret == 0) {
        ret = -EIO;   /* nothing is in use at all, which cannot be: cluster 0 is */
        what_failed = "ERROR rebuilding refcount structure";
    }
    if (ret < 0) {
        k->c.check_errors++;
        qcow2_chk_report(k, "%s: %s", what_failed, strerror(-ret));
        free(rt);
        return ret;
    }

    uint8_t *raw = calloc(1, entries * 8);
    if (!raw) {
        free(rt);
        k->c.check_errors++;
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < entries; i++) {
        vd_put_be64(raw + i * 8, rt[i]);
    }
    const char *ol = qcow2_chk_overlap(k, 0, rt_offset, entries * 8);
    if (ol) {
        qcow2_chk_corruption(k, "Preventing invalid write on metadata (overlaps with %s)", ol);
        ret = -EIO;
    } else {
        ret = qcow2_chk_write(k, raw, entries * 8, rt_offset);
    }
    free(raw);
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    if (ret < 0) {
        qcow2_chk_report(k, "ERROR writing reftable: %s", strerror(-ret));
        free(rt);
        return ret;
    }
    uint8_t hdr[12];
    vd_put_be64(hdr, rt_offset);
    vd_put_be32(hdr + 8, (uint32_t)rt_clusters);
    ret = qcow2_chk_write(k, hdr, sizeof(hdr), 48);
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    if (ret < 0) {
        qcow2_chk_report(k, "ERROR setting reftable: %s", strerror(-ret));
        free(rt);
        return ret;
    }
    free(k->rt);
    k->rt = rt;
    k->rb_safe = 0;
    k->rt_entries = entries;
    k->rt_offset = rt_offset;
    k->h.refcount_table_offset = rt_offset;
    k->h.refcount_table_clusters = (uint32_t)rt_clusters;
    k->rb_valid = false;
    return 0;
}

int qcow2_chk_oflag_copied(chk *k)
{
    bool repair;
    int ret;

    if (k->fix & VD_FIX_ERRORS) {
        repair = true;
    } else if (k->fix & VD_FIX_LEAKS) {
        /* The refcounts were just repaired; trust them only if nothing else is wrong. */
        repair = !k->c.check_errors && !k->c.corruptions && !k->c.leaks;
    } else {
        repair = false;
    }
    for (uint32_t i = 0; i < k->l1_size; i++) {
        uint64_t l1e = k->l1[i];
        uint64_t l2_offset = l1e & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        int dirty = 0;

        if (!l2_offset) {
            continue;
        }
        if (qcow2_chk_get_refcount(k, l2_offset >> k->cbits, &rc) < 0) {
            continue;  /* compare_refcounts has reported it */
        }
        if ((rc == 1) != ((l1e & QCOW2_OFLAG_COPIED) != 0)) {
            k->c.corruptions++;
            qcow2_chk_log(k, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32 " l1_entry=%" PRIx64
                          " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", i, l1e, rc);
            if (repair) {
                uint8_t b[8];
                k->l1[i] = rc == 1 ? l1e | QCOW2_OFLAG_COPIED : l1e & ~QCOW2_OFLAG_COPIED;
                vd_put_be64(b, k->l1[i]);
                uint64_t where = k->l1_offset + (uint64_t)i * 8;
                const char *ol = qcow2_chk_overlap(k, OL_ACTIVE_L1, where, 8);
                if (ol) {
                    qcow2_chk_corruption(k, "Preventing invalid write on metadata (overlaps with "
                                         "%s)", ol);
                    ret = -EIO;
                } else {
                    ret = qcow2_chk_write(k, b, 8, where);
                    if (ret == 0) {
                        ret = vd_node_flush(k->file);
                    }
                }
                if (ret < 0) {
                    k->c.check_errors++;
                    return ret;
                }
                k->c.corruptions--;
                k->c.corruptions_fixed++;
            }
        }
        ret = qcow2_chk_read_l2(k, l2_offset);
        if (ret < 0) {
            qcow2_chk_log(k, "ERROR: Could not read L2 table: %s", strerror(-ret));
            k->c.check_errors++;
            return ret;
        }
        if (ret == 1) {
            continue;  /* all entries unallocated */
        }
        for (uint64_t j = 0; j < k->l2_entries; j++) {
            uint64_t e = qcow2_chk_l2_entry(k, k->l2, j);
            enum ctype t = qcow2_chk_type(k, e);
            if (t != CT_NORMAL && t != CT_ZERO_ALLOC) {
                continue;
            }
            if (qcow2_chk_get_refcount(k, (e & QCOW2_L2E_OFFSET_MASK) >> k->cbits, &rc) < 0) {
                continue;
            }
            if ((rc == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
                k->c.corruptions++;
                qcow2_chk_log(k, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
                              PRIu64, repair ? "Repairing" : "ERROR", e, rc);
                if (repair) {
                    vd_put_be64(k->l2 + j * k->l2e_bytes,
                                rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED);
                    dirty++;
                }
            }
        }
        if (dirty > 0) {
            const char *ol = qcow2_chk_overlap(k, OL_ACTIVE_L2, l2_offset, k->cs);
            if (ol) {
                qcow2_chk_corruption(k, "Preventing invalid write on metadata (overlaps with %s)",
                                     ol);
                qcow2_chk_log(k, "ERROR: Could not write L2 table; metadata overlap check failed: "
                              "%s", strerror(EIO));
                k->c.check_errors++;
                return -EIO;
            }
            ret = qcow2_chk_write(k, k->l2, k->cs, l2_offset);
            if (ret < 0) {
                qcow2_chk_log(k, "ERROR: Could not write L2 table: %s", strerror(-ret));
                k->c.check_errors++;
                return ret;
            }
            k->c.corruptions -= dirty;
            k->c.corruptions_fixed += dirty;
        }
    }
    return 0;
}

static void note_to_log(void *opaque, const char *msg)
{
    qcow2_chk_log(opaque, "%s", msg);
}

static int fetch_from_file(void *opaque, uint64_t off, void *buf, size_t len)
{
    chk *k = opaque;
    if (off > UINT64_MAX - k->sn_offset) {
        return -EIO;
    }
    return qcow2_chk_read(k, buf, len, k->sn_offset + off);
}

/* QEMU's qcow2_check_read_snapshot_table: reads the table tolerantly (check mode skips it
 * at open), dropping what `-r all` drops, and counts incomplete v3 entries. */
int qcow2_chk_read_snapshots(chk *k, counts *sr)
{
    uint32_t nb = k->h.nb_snapshots;
    uint64_t off = k->h.snapshots_offset;
    uint32_t reduced = 0, truncated = 0;
    bool repair = (k->fix & VD_FIX_ERRORS) != 0;
    int ret;

    if (nb > QCOW2_MAX_SNAPSHOTS && repair) {
        qcow2_chk_log(k, "Discarding %" PRIu32 " overhanging snapshots", nb - QCOW2_MAX_SNAPSHOTS);
        reduced += nb - QCOW2_MAX_SNAPSHOTS;
        nb = QCOW2_MAX_SNAPSHOTS;
    }
    if (nb > QCOW2_MAX_SNAPSHOTS) {
        sr->check_errors++;
        qcow2_chk_report(k, "ERROR snapshot table too large");
        qcow2_chk_log(k, "You can force-remove all %" PRIu32 " overhanging snapshots with "
                      "qemu-img check -r all", nb - QCOW2_MAX_SNAPSHOTS);
        return -EFBIG;
    }
    if ((uint64_t)INT64_MAX - (uint64_t)nb * SNAPSHOT_HEADER_LEN < off || (off & (k->cs - 1))) {
        sr->check_errors++;
        qcow2_chk_report(k, "ERROR snapshot table offset invalid");
        return -EINVAL;
    }
    k->sn_offset = off;
    if (nb == 0) {
        k->sn_size = 0;
    } else {
        qcow2_snapshot_decode_opts o = {
            .no_l1_checks = true, .repair = repair, .note = note_to_log,
            .fetch = fetch_from_file, .opaque = k,
        };
        /* Most tables fit in one read; the rest (huge extra data that -r all skips) is
         * fetched piecewise. Past the end of the file the table reads as zeros, fetched
         * too: a hostile count must not make a buffer of zeros. */
        uint64_t want = (uint64_t)nb * 128 + 4096;
        uint64_t avail = qcow2_chk_in_file(k, off);
        vd_error *err = NULL;
        if (want > SNAPSHOT_READ_MAX) {
            want = SNAPSHOT_READ_MAX;
        }
        if (want > avail) {
            want = avail;
        }
        uint8_t *buf = malloc(want ? want : 1);
        if (!buf) {
            sr->check_errors++;
            return -ENOMEM;
        }
        ret = qcow2_chk_read(k, buf, want, off);
        if (ret < 0) {
            vd_error_set(&err, VD_ERR_IO, -ret, "Failed to read snapshot table: %s",
                         strerror(-ret));  /* QEMU's words */
        } else {
            ret = qcow2_snapshots_decode_ex(buf, want, nb, &k->h, k->what, &o, &k->sn,
                                            &k->nb_sn, &k->sn_size, &truncated, &err);
        }
        free(buf);
        if (ret < 0) {
            const char *msg = err ? vd_error_msg(err) : strerror(-ret);
            size_t wl = strlen(k->what);
            /* qemu-img's line carries no file name. */
            if (err && strncmp(msg, k->what, wl) == 0 && strncmp(msg + wl, ": ", 2) == 0) {
                msg += wl + 2;
            }
            sr->check_errors++;
            qcow2_chk_report(k, "ERROR failed to read the snapshot table: %s", msg);
            vd_error_free(err);
            return ret;
        }
        reduced += nb - k->nb_sn;
    }
    sr->corruptions += reduced + truncated;
    if (reduced) {
        uint8_t b[4];
        vd_put_be32(b, k->nb_sn);
        ret = qcow2_chk_write(k, b, 4, 60);
        if (ret == 0) {
            ret = vd_node_flush(k->file);
        }
        if (ret < 0) {
            sr->check_errors++;
            qcow2_chk_log(k, "ERROR failed to update the snapshot count in the image header: %s",
                          strerror(-ret));
            return ret;
        }
        k->h.nb_snapshots = k->nb_sn;
        sr->corruptions_fixed += reduced;
        sr->corruptions -= reduced;
    }
    if (k->h.version >= 3) {
        for (uint32_t i = 0; i < k->nb_sn; i++) {
            if (k->sn[i].extra_data_size < 16) {
                sr->corruptions++;
                qcow2_chk_log(k, "%s snapshot table entry %" PRIu32 " is incomplete",
                              repair ? "Repairing" : "ERROR", i);
            }
        }
    }
    return 0;
}

/* First free cluster (on-disk refcount 0, or no refblock) from cluster `from`, within the
 * reach of the refcount table. */
static int first_free_cluster(chk *k, uint64_t from, uint64_t *out)
{
    uint64_t limit = k->rt_entries << k->rb_bits;

    for (uint64_t cl = from; cl < limit; cl++) {
        uint64_t rc;
        int ret = qcow2_chk_get_refcount(k, cl, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc == 0) {
            *out = cl;
            return 0;
        }
    }
    return -EFBIG;
}

/* Gives the refcount range `idx` a refblock, as QEMU's alloc_refcount_block does: in the
 * first free cluster, describing itself when it lies in its own range. The block is
 * written and synced before the reftable points to it. */
static int add_refblock(chk *k, uint64_t idx)
{
    uint64_t cl = 0;
    int ret = first_free_cluster(k, 0, &cl);

    if (ret < 0) {
        return ret;
    }
    uint8_t *blk = calloc(1, k->cs);
    if (!blk) {
        return -ENOMEM;
    }
    if ((cl >> k->rb_bits) == idx) {
        qcow2_refcount_set(blk, k->rorder, cl & ((1ull << k->rb_bits) - 1), 1);
    } else {
        uint64_t other;
        ret = qcow2_chk_refblock_of(k, cl, &other);
        ret = ret < 0 ? ret : other == 0 ? -ENOSPC : qcow2_chk_set_refcount(k, cl, 1);
    }
    if (ret == 0) {
        ret = qcow2_chk_write(k, blk, k->cs, cl << k->cbits);
    }
    free(blk);
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    if (ret == 0) {
        uint8_t e[8];
        vd_put_be64(e, cl << k->cbits);
        ret = qcow2_chk_write(k, e, 8, k->rt_offset + idx * 8);
    }
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    if (ret == 0) {
        k->rt[idx] = cl << k->cbits;
        k->rb_safe = 0;
    }
    return ret;
}

/* QEMU's qcow2_alloc_clusters: first fit of `n` contiguous free clusters, refblocks added
 * where a range has none (which may take the cluster wanted, so the search restarts), then
 * their refcounts set to 1. Growing the refcount table is not done: -EFBIG. */
static int alloc_clusters_ondisk(chk *k, uint64_t n, uint64_t *offset)
{
    uint64_t limit = k->rt_entries << k->rb_bits;

    for (int round = 0; round < 64; round++) {
        uint64_t run = 0, cl;
        for (cl = 0; cl < limit && run < n; cl++) {
            uint64_t rc;
            int ret = qcow2_chk_get_refcount(k, cl, &rc);
            if (ret < 0) {
                return ret;
            }
            run = rc == 0 ? run + 1 : 0;
        }
        if (run < n) {
            return -EFBIG;
        }
        uint64_t start = cl - n;
        bool restart = false;
        for (uint64_t idx = start >> k->rb_bits; idx <= (cl - 1) >> k->rb_bits; idx++) {
            uint64_t rb;
            int ret = qcow2_chk_refblock_of(k, idx << k->rb_bits, &rb);
            if (ret < 0) {
                return ret;
            }
            if (rb == 0) {
                ret = add_refblock(k, idx);
                if (ret < 0) {
                    return ret;
                }
                restart = true;
                break;
            }
        }
        if (restart) {
            continue;
        }
        for (uint64_t i = 0; i < n; i++) {
            int ret = qcow2_chk_set_refcount(k, start + i, 1);
            if (ret < 0) {
                return ret;
            }
        }
        *offset = start << k->cbits;
        return 0;
    }
    return -ENOSPC;
}

/* QEMU's qcow2_free_clusters: -1 on every cluster [off, off+len) touches, all or nothing.
 * A cluster already at 0 fails the call (EINVAL), and one without a refblock first gets
 * one, failing the call too (EAGAIN), as QEMU's update_refcount does; QEMU reports the
 * failure and goes on, and so do we. */
static void free_range_ondisk(chk *k, uint64_t off, uint64_t len)
{
    uint64_t first = off >> k->cbits, last;
    int ret = 0;

    if (len == 0) {
        return;
    }
    last = (off + len - 1) >> k->cbits;
    for (uint64_t cl = first; cl <= last && ret == 0; cl++) {
        uint64_t rb, rc;
        ret = qcow2_chk_refblock_of(k, cl, &rb);
        if (ret == 0 && rb == 0) {
            uint64_t idx = cl >> k->rb_bits;
            if (idx < k->rt_entries) {
                ret = add_refblock(k, idx);
                ret = ret < 0 ? ret : -EAGAIN;
            } else {
                ret = -EFBIG;  /* QEMU would have to grow the refcount table first */
            }
        }
        if (ret == 0) {
            ret = qcow2_chk_get_refcount(k, cl, &rc);
        }
        if (ret == 0 && rc == 0) {
            ret = -EINVAL;
        }
    }
    for (uint64_t cl = first; cl <= last && ret == 0; cl++) {
        uint64_t rc;
        ret = qcow2_chk_get_refcount(k, cl, &rc);
        if (ret == 0) {
            ret = qcow2_chk_set_refcount(k, cl, rc - 1);
        }
        if (ret == 0 && rc == 1) {
            qcow2_chk_discard(k, cl);
        }
    }
    if (ret < 0) {
        qcow2_chk_log(k, "qcow2_free_clusters failed: %s", strerror(-ret));
    }
}

/* QEMU's qcow2_write_snapshots: a fresh table (every entry complete, extra data at least
 * 24 bytes) in new clusters, synced before the header points to it; the old one freed. */
int qcow2_chk_write_snapshots(chk *k)
{
    uint64_t size = 0, table_off = 0;
    uint8_t *buf;
    int ret;

    for (uint32_t i = 0; i < k->nb_sn; i++) {
        const qcow2_snapshot *s = &k->sn[i];
        size = (size + 7) & ~7ull;
        size += SNAPSHOT_HEADER_LEN;
        size += s->extra_data_size > SNAPSHOT_EXTRA_KNOWN ? s->extra_data_size
                                                          : SNAPSHOT_EXTRA_KNOWN;
        size += strlen(s->id) + strlen(s->name);
        if (size > QCOW2_MAX_SNAPSHOT_TABLE_BYTES) {
            return -EFBIG;
        }
    }
    buf = calloc(1, size ? size : 1);
    if (!buf) {
        return -ENOMEM;
    }
    uint64_t pos = 0;
    for (uint32_t i = 0; i < k->nb_sn; i++) {
        const qcow2_snapshot *s = &k->sn[i];
        uint32_t extra = s->extra_data_size > SNAPSHOT_EXTRA_KNOWN ? s->extra_data_size
                                                                   : SNAPSHOT_EXTRA_KNOWN;
        size_t id_len = strlen(s->id), name_len = strlen(s->name);
        uint8_t *p;

        pos = (pos + 7) & ~7ull;
        p = buf + pos;
        vd_put_be64(p, s->l1_table_offset);
        vd_put_be32(p + 8, s->l1_size);
        vd_put_be16(p + 12, (uint16_t)id_len);
        vd_put_be16(p + 14, (uint16_t)name_len);
        vd_put_be32(p + 16, s->date_sec);
        vd_put_be32(p + 20, s->date_nsec);
        vd_put_be64(p + 24, s->vm_clock_nsec);
        vd_put_be32(p + 32, s->vm_state_size <= UINT32_MAX ? (uint32_t)s->vm_state_size : 0);
        vd_put_be32(p + 36, extra);
        vd_put_be64(p + 40, s->vm_state_size);
        vd_put_be64(p + 48, s->disk_size == UINT64_MAX ? (k->h.size & ~511ull) : s->disk_size);
        vd_put_be64(p + 56, (uint64_t)s->icount);
        if (s->extra_data_size > SNAPSHOT_EXTRA_KNOWN) {
            memcpy(p + 64, s->extra_data + SNAPSHOT_EXTRA_KNOWN,
                   s->extra_data_size - SNAPSHOT_EXTRA_KNOWN);
        }
        pos += SNAPSHOT_HEADER_LEN + extra;
        memcpy(buf + pos, s->id, id_len);
        pos += id_len;
        memcpy(buf + pos, s->name, name_len);
        pos += name_len;
    }

    if (size) {
        ret = alloc_clusters_ondisk(k, qcow2_chk_clusters(k, size), &table_off);
        if (ret == 0) {
            ret = vd_node_flush(k->file);
        }
        if (ret == 0) {
            const char *ol = qcow2_chk_overlap(k, 0, table_off, size);
            if (ol) {
                qcow2_chk_corruption(k, "Preventing invalid write on metadata (overlaps with %s)",
                                     ol);
                ret = -EIO;
            }
        }
        if (ret == 0) {
            ret = qcow2_chk_write(k, buf, size, table_off);
        }
        if (ret == 0) {
            ret = vd_node_flush(k->file);
        }
    } else {
        ret = 0;
    }
    free(buf);
    if (ret < 0) {
        return ret;
    }
    uint8_t hdr[12];
    vd_put_be32(hdr, k->nb_sn);
    vd_put_be64(hdr + 4, table_off);
    ret = qcow2_chk_write(k, hdr, sizeof(hdr), 60);
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    if (ret < 0) {
        return ret;
    }
    free_range_ondisk(k, k->sn_offset, k->sn_size);
    k->sn_offset = table_off;
    k->rb_safe = 0;
    k->sn_size = size;
    return 0;
}

/* Clears the dirty and corrupt bits (v3 only has them): one 8-byte write, then a flush. */
int qcow2_chk_mark_clean(chk *k)
{
    uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
    if (k->h.version < 3 || !(k->h.incompatible_features & bits)) {
        return 0;
    }
    int ret = vd_node_flush(k->file);
    if (ret < 0) {
        return ret;
    }
    uint8_t b[8];
    k->h.incompatible_features &= ~bits;
    vd_put_be64(b, k->h.incompatible_features);
    ret = qcow2_chk_write(k, b, 8, 72);
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    return ret;
}
