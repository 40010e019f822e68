/* qcow2 consistency check and repair, as `qemu-img check [-r leaks|all]` in QEMU 7.2: the
 * reference count of every host cluster is rebuilt in memory from the metadata and compared
 * with the on-disk refcounts; leaks, refcount errors, COPIED flags, whole refcount
 * structures and the snapshot table can be repaired. Works on the image file node alone. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-check.h"
#include "util/zero.h"

/* ---- small helpers ------------------------------------------------------------------- */

/* Formats one line and hands it over, as qemu-img would print it on stderr; a report
 * (error_report() in qemu-img) starts with the program's name when the caller gave one.
 * Most lines fit the stack buffer; one naming a long snapshot ID is formatted again on the
 * heap. */
static void chk_vlog(chk *k, bool report, const char *fmt, va_list ap)
{
    chk_sink *s = k->log;
    if (!s->fn) {
        return;
    }
    if (s->refused) {
        s->dropped++;
        return;
    }
    char line[512], *p = line;
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(line, sizeof(line), fmt, aq);
    va_end(aq);
    if (n < 0) {
        return;
    }
    if ((size_t)n >= sizeof(line)) {
        char *big = malloc((size_t)n + 1);
        if (big) {  /* else the cut line is still worth showing */
            vsnprintf(big, (size_t)n + 1, fmt, ap);
            p = big;
        }
    }
    if (report && s->program_name) {
        size_t len = strlen(s->program_name) + 2 + strlen(p) + 1;
        char *named = malloc(len);
        if (named) {  /* else the message without the name is still worth showing */
            snprintf(named, len, "%s: %s", s->program_name, p);
            if (p != line) {
                free(p);
            }
            p = named;
        }
    }
    if (!s->fn(s->opaque, p)) {
        s->refused = true;
        s->dropped++;
    }
    if (p != line) {
        free(p);
    }
}

void qcow2_chk_log(chk *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    chk_vlog(k, false, fmt, ap);
    va_end(ap);
}

void qcow2_chk_report(chk *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    chk_vlog(k, true, fmt, ap);
    va_end(ap);
}

uint64_t qcow2_chk_clusters(const chk *k, uint64_t size)
{
    return (size >> k->cbits) + ((size & (k->cs - 1)) != 0);
}

static void add_counts(counts *out, const counts *in)
{
    out->corruptions += in->corruptions;
    out->leaks += in->leaks;
    out->check_errors += in->check_errors;
    out->corruptions_fixed += in->corruptions_fixed;
    out->leaks_fixed += in->leaks_fixed;
}

/* QEMU's block layer refuses requests that end past INT64_MAX rounded down to 1 GiB (its
 * largest request alignment): reading them fails with -EIO. */
#define QEMU_MAX_LENGTH ((uint64_t)INT64_MAX & ~((1ull << 30) - 1))

static bool bad_range(uint64_t off, uint64_t len)
{
    return off > QEMU_MAX_LENGTH || len > QEMU_MAX_LENGTH - off;
}

uint64_t qcow2_chk_in_file(const chk *k, uint64_t off)
{
    return off < k->file_len ? k->file_len - off : 0;
}

/* Reads [off, off+len) of the file; bytes past its end read as zeros, as in QEMU. Offsets
 * QEMU's block layer refuses fail with -EIO without touching the file. */
int qcow2_chk_read(chk *k, void *buf, uint64_t len, uint64_t off)
{
    if (bad_range(off, len)) {
        return -EIO;
    }
    uint64_t avail = qcow2_chk_in_file(k, off);
    uint64_t now = len < avail ? len : avail;
    if (now < len) {
        memset((uint8_t *)buf + now, 0, len - now);
    }
    return now ? vd_node_pread(k->file, buf, now, off) : 0;
}

/* Reads the L2 table at off into k->l2. Returns 1 when the table is all zeros (nothing in
 * it to count or repair, so callers skip it; k->l2 is then left as it was when the table lies
 * wholly past the end of the file), 0 when it holds entries, or -errno. Hostile images point
 * many L1 entries at empty or missing tables; skipping them keeps a check cheap. */
int qcow2_chk_read_l2(chk *k, uint64_t off)
{
    if (qcow2_chk_in_file(k, off) == 0 && !bad_range(off, k->cs)) {
        return 1;
    }
    int ret = qcow2_chk_read(k, k->l2, k->cs, off);
    if (ret < 0) {
        return ret;
    }
    return vd_buf_is_zero(k->l2, k->cs) ? 1 : 0;
}

int qcow2_chk_write(chk *k, const void *buf, uint64_t len, uint64_t off)
{
    int ret = vd_node_pwrite(k->file, buf, len, off, 0);
    if (ret == 0 && off + len > k->file_len) {
        k->file_len = off + len;
    }
    return ret;
}

/* QEMU's qcow2_signal_corruption(fatal): mark the image corrupt (when writable) and make
 * the rest of the session fail, as the driver is dropped from the node. */
void qcow2_chk_corruption(chk *k, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (k->signalled) {
        return;
    }
    k->signalled = true;
    if (!k->fix) {
        /* Read-only: QEMU reports it as non-fatal and carries on. */
        qcow2_chk_log(k, "qcow2: Image is corrupt: %s; further non-fatal corruption events will "
                      "be suppressed", msg);
        return;
    }
    qcow2_chk_log(k, "qcow2: Marking image as corrupt: %s; further corruption events will be "
                  "suppressed", msg);
    k->dead = true;
    if (k->h.version >= 3) {
        uint8_t b[8];
        k->h.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
        vd_put_be64(b, k->h.incompatible_features);
        if (qcow2_chk_write(k, b, 8, 72) == 0) {
            vd_node_flush(k->file);
        }
    }
}

/* ---- the in-memory refcount table ---------------------------------------------------- */

uint64_t qcow2_chk_imrt_bytes(const chk *k, uint64_t clusters)
{
    uint64_t bytes = ((clusters << k->rorder) + 7) / 8;
    /* Whole clusters, so that any refblock-sized slice can be written out directly. */
    return qcow2_chk_clusters(k, bytes) * k->cs;
}

int qcow2_chk_imrt_resize(chk *k, int64_t clusters)
{
    if (clusters > INT_MAX) {
        return -EFBIG;
    }
    uint64_t old_bytes = k->imrt ? qcow2_chk_imrt_bytes(k, (uint64_t)k->imrt_clusters) : 0;
    uint64_t new_bytes = qcow2_chk_imrt_bytes(k, (uint64_t)clusters);
    if (new_bytes > SIZE_MAX) {
        return -ENOMEM;
    }
    if (new_bytes != old_bytes || !k->imrt) {
        uint8_t *p = realloc(k->imrt, new_bytes ? new_bytes : 1);
        if (!p) {
            return -ENOMEM;
        }
        if (new_bytes > old_bytes) {
            memset(p + old_bytes, 0, new_bytes - old_bytes);
        }
        k->imrt = p;
    }
    k->imrt_clusters = clusters;
    return 0;
}

uint64_t qcow2_chk_imrt_get(const chk *k, int64_t cluster)
{
    return qcow2_refcount_get(k->imrt, k->rorder, (uint64_t)cluster);
}

/* QEMU's qcow2_inc_refcounts_imrt: +1 for every cluster [offset, offset+size) touches. */
static int inc_refcounts(chk *k, uint64_t offset, uint64_t size)
{
    if (size == 0) {
        return 0;
    }
    if (offset + size < offset || offset + size >= k->file_len + k->cs) {
        qcow2_chk_log(k, "ERROR: counting reference for region exceeding the end of the file by "
                      "one cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64, offset, size);
        k->c.corruptions++;
        return 0;
    }
    uint64_t first = offset >> k->cbits;
    uint64_t last = (offset + size - 1) >> k->cbits;
    for (uint64_t cl = first; cl <= last; cl++) {
        if ((int64_t)cl >= k->imrt_clusters) {
            int ret = qcow2_chk_imrt_resize(k, (int64_t)cl + 1);
            if (ret < 0) {
                k->c.check_errors++;
                return ret;
            }
        }
        uint64_t rc = qcow2_chk_imrt_get(k, (int64_t)cl);
        if (rc == k->rmax) {
            qcow2_chk_log(k, "ERROR: overflow cluster offset=0x%" PRIx64, cl << k->cbits);
            qcow2_chk_log(k, "Use qemu-img amend to increase the refcount entry width or qemu-img "
                          "convert to create a clean copy if the image cannot be opened for "
                          "writing");
            k->c.corruptions++;
            continue;
        }
        qcow2_refcount_set(k->imrt, k->rorder, cl, rc + 1);
    }
    return 0;
}

/* ---- metadata overlap (QEMU's "cached" template) ---------------------------------------- */

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    if (!alen || !blen) {
        return false;
    }
    return a >= b ? a - b < blen : b - a < alen;  /* no sums: offsets come from the file */
}

/* Returns the name of the metadata structure [off, off+len) would overwrite, or NULL. */
const char *qcow2_chk_overlap(chk *k, unsigned ign, uint64_t off, uint64_t len)
{
    uint64_t start = off & ~(k->cs - 1);
    uint64_t span = ((off - start + len + k->cs - 1) >> k->cbits) << k->cbits;

    if (off < k->cs) {
        return "qcow2_header";
    }
    if (!(ign & OL_ACTIVE_L1) &&
        ranges_overlap(start, span, k->l1_offset, (uint64_t)k->l1_size * 8)) {
        return "active L1 table";
    }
    if (!(ign & OL_REFTABLE) && ranges_overlap(start, span, k->rt_offset, k->rt_entries * 8)) {
        return "refcount table";
    }
    /* QEMU's order: the constant-time checks first. */
    if (ranges_overlap(start, span, k->sn_offset, k->sn_size)) {
        return "snapshot table";
    }
    for (uint32_t i = 0; i < k->nb_sn; i++) {
        if (ranges_overlap(start, span, k->sn[i].l1_table_offset,
                           (uint64_t)k->sn[i].l1_size * 8)) {
            return "inactive L1 table";
        }
    }
    if (!(ign & OL_ACTIVE_L2)) {
        for (uint32_t i = 0; i < k->l1_size; i++) {
            uint64_t l2 = k->l1[i] & QCOW2_L1E_OFFSET_MASK;
            if (l2 && ranges_overlap(start, span, l2, k->cs)) {
                return "active L2 table";
            }
        }
    }
    for (uint64_t i = 0; !(ign & OL_REFBLOCK) && i < k->rt_entries; i++) {
        uint64_t rb = k->rt[i] & QCOW2_REFT_OFFSET_MASK;
        if (rb && ranges_overlap(start, span, rb, k->cs)) {
            return "refcount block";
        }
    }
    if (k->nb_bitmaps && ranges_overlap(start, span, k->bm_dir_offset, k->bm_dir_size)) {
        return "bitmap directory";
    }
    return NULL;
}

/* ---- walking the L1/L2 tables ------------------------------------------------------------ */

uint64_t qcow2_chk_l2_entry(const chk *k, const uint8_t *tbl, uint64_t i)
{
    return vd_be64(tbl + i * k->l2e_bytes);
}

static uint64_t l2_bitmap(const chk *k, const uint8_t *tbl, uint64_t i)
{
    return k->extl2 ? vd_be64(tbl + i * k->l2e_bytes + 8) : 0;
}

enum ctype qcow2_chk_type(const chk *k, uint64_t e)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        return CT_COMPRESSED;
    }
    if ((e & QCOW2_OFLAG_ZERO) && !k->extl2) {
        return (e & QCOW2_L2E_OFFSET_MASK) ? CT_ZERO_ALLOC : CT_ZERO_PLAIN;
    }
    return (e & QCOW2_L2E_OFFSET_MASK) ? CT_NORMAL : CT_UNALLOCATED;
}

/* Replaces an unaligned preallocated-zero entry by a plain zero one (QEMU's
 * fix_l2_entry_by_zero). Returns 1 when an overlap stopped it: the caller aborts. */
static int fix_l2_entry_by_zero(chk *k, uint64_t l2_offset, uint64_t i, bool active)
{
    uint8_t *e = k->l2 + i * k->l2e_bytes;
    uint64_t where = l2_offset + i * k->l2e_bytes;

    if (k->extl2) {
        uint64_t bm = vd_be64(e + 8);
        bm = (bm | (bm << 32)) & QCOW2_EXTL2_ZERO_ALL;
        vd_put_be64(e + 8, bm);
        vd_put_be64(e, 0);
    } else {
        vd_put_be64(e, QCOW2_OFLAG_ZERO);
    }
    /* Inactive L2 tables are not in QEMU's default overlap template, active ones are. */
    const char *ol = qcow2_chk_overlap(k, active ? OL_ACTIVE_L2 : 0, where, k->l2e_bytes);
    if (ol) {
        qcow2_chk_corruption(k, "Preventing invalid write on metadata (overlaps with %s)", ol);
        qcow2_chk_log(k, "ERROR: Overlap check failed");
        k->c.check_errors++;
        return 1;
    }
    int ret = qcow2_chk_write(k, e, k->l2e_bytes, where);
    if (ret == 0) {
        ret = vd_node_flush(k->file);
    }
    if (ret < 0) {
        qcow2_chk_log(k, "ERROR: Failed to overwrite L2 table entry: %s", strerror(-ret));
        k->c.check_errors++;
        return ret;
    }
    k->c.corruptions--;
    k->c.corruptions_fixed++;
    return 0;
}

/* Charges `n` entries to the pass's work budget; fails the check once it is spent. */
static int spend(chk *k, uint64_t n)
{
    k->work += n;
    if (k->work > WORK_MAX) {
        qcow2_chk_log(k, "ERROR: the metadata references more than %llu table entries; refusing "
                      "to check further", (unsigned long long)WORK_MAX);
        k->c.check_errors++;
        return -EFBIG;
    }
    return 0;
}

static int check_refcounts_l2(chk *k, uint64_t l2_offset, int flags, bool active)
{
    uint64_t next_contiguous = 0;
    int ret = spend(k, k->l2_entries);

    if (ret < 0) {
        return ret;
    }
    ret = qcow2_chk_read_l2(k, l2_offset);
    if (ret < 0) {
        qcow2_chk_log(k, "ERROR: I/O error in check_refcounts_l2");
        k->c.check_errors++;
        return ret;
    }
    if (ret == 1) {
        return 0;  /* all entries unallocated */
    }
    for (uint64_t i = 0; i < k->l2_entries; i++) {
        uint64_t e = qcow2_chk_l2_entry(k, k->l2, i);
        uint64_t bm = l2_bitmap(k, k->l2, i);
        enum ctype t = qcow2_chk_type(k, e);

        if (t != CT_COMPRESSED && (e & QCOW2_L2E_RESERVED_MASK)) {
            qcow2_chk_log(k, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
            k->c.corruptions++;
        }
        switch (t) {
        case CT_COMPRESSED: {
            if (e & QCOW2_OFLAG_COPIED) {
                qcow2_chk_log(k, "ERROR: coffset=0x%" PRIx64 ": copied flag must never be set for "
                              "compressed clusters", e & k->coff_mask);
                e &= ~QCOW2_OFLAG_COPIED;
                k->c.corruptions++;
            }
            if (bm) {
                qcow2_chk_log(k, "ERROR compressed cluster %d with non-zero subcluster allocation "
                              "bitmap, entry=0x%" PRIx64, (int)i, e);
                k->c.corruptions++;
                break;
            }
            uint64_t coff = e & k->coff_mask;
            uint64_t nsect = ((e >> k->csize_shift) & k->csize_mask) + 1;
            uint64_t csize = nsect * 512 - (coff & 511);
            ret = inc_refcounts(k, coff, csize);
            if (ret < 0) {
                return ret;
            }
            if (flags & CHECK_FRAG_INFO) {
                k->f.allocated++;
                k->f.compressed++;
                k->f.fragmented++;  /* compressed clusters are fragmented by nature */
            }
            break;
        }
        case CT_ZERO_ALLOC:
        case CT_NORMAL: {
            uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            if ((bm >> 32) & bm) {
                k->c.corruptions++;
                qcow2_chk_log(k, "ERROR offset=%" PRIx64 ": Allocated cluster has corrupted "
                              "subcluster allocation bitmap", off);
            }
            if (off & (k->cs - 1)) {
                bool has_data = k->extl2 ? (bm & QCOW2_EXTL2_ALLOC_ALL) != 0
                                         : !(e & QCOW2_OFLAG_ZERO);
                k->c.corruptions++;
                if (!has_data) {
                    bool repair = (k->fix & VD_FIX_ERRORS) != 0;
                    qcow2_chk_log(k, "%s offset=%" PRIx64 ": Preallocated cluster is not properly "
                                  "aligned; L2 entry corrupted.", repair ? "Repairing" : "ERROR",
                                  off);
                    if (repair) {
                        ret = fix_l2_entry_by_zero(k, l2_offset, i, active);
                        if (ret == 1) {
                            return -EIO;
                        }
                        if (ret == 0) {
                            continue;  /* the cluster is not used any more */
                        }
                    }
                } else {
                    qcow2_chk_log(k, "ERROR offset=%" PRIx64 ": Data cluster is not properly "
                                  "aligned; L2 entry corrupted.", off);
                }
            }
            if (flags & CHECK_FRAG_INFO) {
                k->f.allocated++;
                if (next_contiguous && off != next_contiguous) {
                    k->f.fragmented++;
                }
                next_contiguous = off + k->cs;
            }
            ret = inc_refcounts(k, off, k->cs);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        case CT_ZERO_PLAIN:
            break;
        case CT_UNALLOCATED:
            if (bm & QCOW2_EXTL2_ALLOC_ALL) {
                k->c.corruptions++;
                qcow2_chk_log(k, "ERROR: Unallocated cluster has non-zero subcluster allocation "
                              "map");
            }
            break;
        }
    }
    return 0;
}

static int check_refcounts_l1(chk *k, uint64_t l1_offset, uint32_t l1_size, int flags,
                              bool active)
{
    uint64_t bytes = (uint64_t)l1_size * 8;
    uint64_t *l1 = NULL;
    int ret;

    if (l1_size == 0) {
        return 0;
    }
    ret = spend(k, l1_size);
    if (ret < 0) {
        return ret;
    }
    ret = inc_refcounts(k, l1_offset, bytes);
    if (ret < 0) {
        return ret;
    }
    uint32_t n = l1_size;
    if (active) {
        l1 = k->l1;
    } else {
        /* Entries past the end of the file read as zeros and count nothing, so only the
         * part inside the file is read: a hostile snapshot cannot make the check fill a
         * 32 MiB table of zeros. Offsets QEMU refuses still fail as a read of it all would. */
        uint64_t avail = qcow2_chk_in_file(k, l1_offset);
        if (avail / 8 < n) {
            n = (uint32_t)((avail + 7) / 8);
        }
        uint8_t *raw = NULL;
        if (bad_range(l1_offset, bytes)) {
            ret = -EIO;
        } else if (!(raw = malloc(n ? (uint64_t)n * 8 : 1))) {
            k->c.check_errors++;
            return -ENOMEM;
        } else {
            ret = qcow2_chk_read(k, raw, (uint64_t)n * 8, l1_offset);
        }
        if (ret < 0) {
            free(raw);
            qcow2_chk_log(k, "ERROR: I/O error in check_refcounts_l1");
            k->c.check_errors++;
            return ret;
        }
        l1 = (uint64_t *)(void *)raw;
        for (uint32_t i = 0; i < n; i++) {
            l1[i] = vd_be64(raw + (uint64_t)i * 8);
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!l1[i]) {
            continue;
        }
        if (l1[i] & QCOW2_L1E_RESERVED_MASK) {
            qcow2_chk_log(k, "ERROR found L1 entry with reserved bits set: %" PRIx64, l1[i]);
            k->c.corruptions++;
        }
        uint64_t l2_offset = l1[i] & QCOW2_L1E_OFFSET_MASK;
        ret = inc_refcounts(k, l2_offset, k->cs);
        if (ret < 0) {
            break;
        }
        if (l2_offset & (k->cs - 1)) {
            qcow2_chk_log(k, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry "
                          "corrupted", l2_offset);
            k->c.corruptions++;
        }
        ret = check_refcounts_l2(k, l2_offset, flags, active);
        if (ret < 0) {
            break;
        }
    }
    if (!active) {
        free(l1);
    }
    return ret < 0 ? ret : 0;
}

/* ---- persistent dirty bitmaps -------------------------------------------------------- */

static int check_bitmap_entry(uint64_t e, uint64_t cs)
{
    uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
    if (e & BITMAP_TABLE_RESERVED) {
        return -EINVAL;
    }
    if (off && ((e & 1) || (off & (cs - 1)))) {
        return -EINVAL;
    }
    return 0;
}

/* Refcounts the bitmap directory, each bitmap table and its data clusters. A directory
 * QEMU could not load makes the check fail, as in qcow2_check_bitmaps_refcounts. */
static int check_bitmaps_refcounts(chk *k)
{
    uint8_t *dir = NULL;
    int ret;

    if (k->nb_bitmaps == 0) {
        return 0;
    }
    ret = inc_refcounts(k, k->bm_dir_offset, k->bm_dir_size);
    if (ret < 0) {
        return ret;
    }
    ret = -EINVAL;
    if (k->bm_dir_size == 0 || k->bm_dir_size > BITMAP_MAX_DIR_SIZE) {
        goto corrupt;
    }
    dir = malloc(k->bm_dir_size);
    if (!dir) {
        k->c.check_errors++;
        return -ENOMEM;
    }
    ret = qcow2_chk_read(k, dir, k->bm_dir_size, k->bm_dir_offset);
    if (ret < 0) {
        goto corrupt;
    }
    ret = -EINVAL;
    uint64_t pos = 0;
    uint32_t n = 0;
    while (pos < k->bm_dir_size) {
        const uint8_t *e = dir + pos;
        if (k->bm_dir_size - pos < BITMAP_DIR_ENTRY_LEN || ++n > k->nb_bitmaps) {
            goto corrupt;
        }
        uint64_t toff = vd_be64(e);
        uint32_t tsize = vd_be32(e + 8);
        uint32_t flags = vd_be32(e + 12);
        uint8_t type = e[16], gran = e[17];
        uint16_t name_size = vd_be16(e + 18);
        uint32_t extra = vd_be32(e + 20);
        uint64_t esize = (BITMAP_DIR_ENTRY_LEN + (uint64_t)name_size + extra + 7) & ~7ull;
        if (esize > k->bm_dir_size - pos || extra != 0 || tsize == 0 || toff == 0 ||
            (toff & (k->cs - 1)) || tsize > BITMAP_MAX_TABLE_SIZE || gran > 31 || gran < 9 ||
            (flags & ~3u) || name_size > 1023 || type != 1 ||
            (uint64_t)tsize * k->cs > BITMAP_MAX_PHYS_SIZE) {
            goto corrupt;
        }
        if (!(flags & 1) && k->h.size > (((uint64_t)tsize * k->cs * 8) << gran)) {
            goto corrupt;
        }
        ret = inc_refcounts(k, toff, (uint64_t)tsize * 8);
        if (ret < 0) {
            goto out;
        }
        uint8_t *tbl = malloc((uint64_t)tsize * 8);
        if (!tbl) {
            k->c.check_errors++;
            ret = -ENOMEM;
            goto out;
        }
        ret = qcow2_chk_read(k, tbl, (uint64_t)tsize * 8, toff);
        for (uint32_t i = 0; ret == 0 && i < tsize; i++) {
            if (check_bitmap_entry(vd_be64(tbl + (uint64_t)i * 8), k->cs) < 0) {
                ret = -EINVAL;
            }
        }
        if (ret < 0) {
            free(tbl);
            goto corrupt;
        }
        for (uint32_t i = 0; i < tsize; i++) {
            uint64_t off = vd_be64(tbl + (uint64_t)i * 8) & QCOW2_L2E_OFFSET_MASK;
            if (off) {
                ret = inc_refcounts(k, off, k->cs);
                if (ret < 0) {
                    break;
                }
            }
        }
        free(tbl);
        if (ret < 0) {
            goto out;
        }
        pos += esize;
    }
    if (n != k->nb_bitmaps) {
        ret = -EINVAL;
        goto corrupt;
    }
    ret = 0;
    goto out;

corrupt:
    k->c.corruptions++;
out:
    free(dir);
    return ret;
}

/* ---- refblocks, the whole count and the comparison ------------------------------------ */

static int check_refblocks(chk *k, bool *rebuild)
{
    /* How far a repair may grow the file to reach a refblock: fixed before any growth, so
     * that a chain of refblocks each just past the last cannot walk the file outwards. The
     * IMRT covers the file and every cluster the metadata references by now. */
    uint64_t reach = (uint64_t)k->imrt_clusters + REPAIR_GROW_CLUSTERS;
    int ret;

    for (uint64_t i = 0; i < k->rt_entries; i++) {
        uint64_t off = k->rt[i] & QCOW2_REFT_OFFSET_MASK;
        uint64_t cluster = off >> k->cbits;

        if (k->rt[i] & QCOW2_REFT_RESERVED_MASK) {
            qcow2_chk_log(k, "ERROR refcount table entry %" PRIu64 " has reserved bits set", i);
            k->c.corruptions++;
            *rebuild = true;
            continue;
        }
        if (off & (k->cs - 1)) {
            qcow2_chk_log(k, "ERROR refcount block %" PRIu64 " is not cluster aligned; refcount "
                          "table entry corrupted", i);
            k->c.corruptions++;
            *rebuild = true;
            continue;
        }
        if (cluster >= (uint64_t)k->imrt_clusters) {
            bool repair = (k->fix & VD_FIX_ERRORS) != 0;
            k->c.corruptions++;
            qcow2_chk_log(k, "%s refcount block %" PRIu64 " is outside image",
                          repair ? "Repairing" : "ERROR", i);
            if (!repair) {
                continue;
            }
            vd_error *err = NULL;
            if (off > (uint64_t)INT64_MAX - k->cs) {
                ret = -EINVAL;
            } else if (cluster >= reach || qcow2_chk_clusters(k, off + k->cs) > INT_MAX) {
                /* Far past the used area: QEMU would grow the file (sparsely) up to it and
                 * count every cluster on the way, in memory and time without bound. We
                 * answer as QEMU does when that resize fails (as it does for offsets the
                 * file system cannot reach): the rebuild below replaces the entry. */
                ret = -EFBIG;
                qcow2_chk_report(k, "Could not resize file: %s", strerror(EFBIG));
            } else {
                ret = vd_node_truncate(k->file, off + k->cs, false, "off", &err);
                vd_error_free(err);
                if (ret < 0) {
                    qcow2_chk_report(k, "Could not resize file: %s", strerror(-ret));
                }
            }
            if (ret == 0) {
                int64_t len = vd_node_file_length(k->file);
                ret = len < 0 ? (int)len : 0;
                if (ret == 0) {
                    k->file_len = (uint64_t)len;
                    uint64_t nb = qcow2_chk_clusters(k, k->file_len);
                    if ((int64_t)nb > k->imrt_clusters) {
                        ret = qcow2_chk_imrt_resize(k, (int64_t)nb);
                        if (ret < 0) {
                            k->c.check_errors++;
                            return ret;
                        }
                    }
                    ret = cluster < (uint64_t)k->imrt_clusters ? 0 : -EINVAL;
                }
            }
            if (ret == 0) {
                k->c.corruptions--;
                k->c.corruptions_fixed++;
                ret = inc_refcounts(k, off, k->cs);
                if (ret < 0) {
                    return ret;
                }
                continue;
            }
            *rebuild = true;
            qcow2_chk_log(k, "ERROR could not resize image: %s", strerror(-ret));
            if (ret == -EFBIG) {
                /* The rebuild puts its new structures after the used area, maybe right
                 * where this entry points: it goes first. */
                qcow2_chk_drop_refblock(k, i);
            }
            continue;
        }
        if (off != 0) {
            ret = inc_refcounts(k, off, k->cs);
            if (ret < 0) {
                return ret;
            }
            uint64_t rc = qcow2_chk_imrt_get(k, (int64_t)cluster);
            if (rc != 1) {
                qcow2_chk_log(k, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64, i, rc);
                k->c.corruptions++;
                *rebuild = true;
            }
        }
    }
    return 0;
}

static int calculate_refcounts(chk *k, bool *rebuild)
{
    int ret;

    if (!k->imrt) {
        ret = qcow2_chk_imrt_resize(k, k->imrt_clusters);
        if (ret < 0) {
            k->c.check_errors++;
            return ret;
        }
    }
    ret = inc_refcounts(k, 0, k->cs);
    if (ret < 0) {
        return ret;
    }
    ret = check_refcounts_l1(k, k->l1_offset, k->l1_size, CHECK_FRAG_INFO, true);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t i = 0; i < k->nb_sn; i++) {
        const qcow2_snapshot *s = &k->sn[i];
        if (s->l1_table_offset & (k->cs - 1)) {
            qcow2_chk_log(k, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is not "
                          "cluster aligned; snapshot table entry corrupted", s->id, s->name,
                          s->l1_table_offset);
            k->c.corruptions++;
            continue;
        }
        if (s->l1_size > QCOW2_MAX_L1_BYTES / 8) {
            qcow2_chk_log(k, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is too large; "
                          "snapshot table entry corrupted", s->id, s->name, s->l1_size);
            k->c.corruptions++;
            continue;
        }
        ret = check_refcounts_l1(k, s->l1_table_offset, s->l1_size, 0, false);
        if (ret < 0) {
            return ret;
        }
    }
    ret = inc_refcounts(k, k->sn_offset, k->sn_size);
    if (ret < 0) {
        return ret;
    }
    ret = inc_refcounts(k, k->rt_offset, k->rt_entries * 8);
    if (ret < 0) {
        return ret;
    }
    ret = check_bitmaps_refcounts(k);
    if (ret < 0) {
        return ret;
    }
    return check_refblocks(k, rebuild);
}

static void compare_refcounts(chk *k, unsigned fix, bool *rebuild, int64_t *highest)
{
    *highest = 0;
    for (int64_t i = 0; i < k->imrt_clusters; i++) {
        uint64_t rc1, rc2;
        int ret = qcow2_chk_get_refcount(k, (uint64_t)i, &rc1);
        if (ret < 0) {
            qcow2_chk_log(k, "Can't get refcount for cluster %" PRId64 ": %s", i, strerror(-ret));
            k->c.check_errors++;
            continue;
        }
        rc2 = qcow2_chk_imrt_get(k, i);
        if (rc1 > 0 || rc2 > 0) {
            *highest = i;
        }
        if (rc1 == rc2) {
            continue;
        }
        int64_t *fixed = NULL;
        if (rc1 == 0) {
            *rebuild = true;
        } else if (rc1 > rc2 && (fix & VD_FIX_LEAKS)) {
            fixed = &k->c.leaks_fixed;
        } else if (rc1 < rc2 && (fix & VD_FIX_ERRORS)) {
            fixed = &k->c.corruptions_fixed;
        }
        qcow2_chk_log(k, "%s cluster %" PRId64 " refcount=%" PRIu64 " reference=%" PRIu64,
                      fixed ? "Repairing" : rc1 < rc2 ? "ERROR" : "Leaked", i, rc1, rc2);
        if (fixed && qcow2_chk_set_refcount(k, (uint64_t)i, rc2) == 0) {
            if (rc2 == 0) {
                qcow2_chk_discard(k, (uint64_t)i);
            }
            (*fixed)++;
            continue;
        }
        if (rc1 < rc2) {
            k->c.corruptions++;
        } else {
            k->c.leaks++;
        }
    }
}

/* Refcounts of clusters past the end of the file: no check counts them (QEMU's neither),
 * but the allocator skips such clusters for good, so once the file grows past them they
 * are leaks. A crash leaves them when a refcount block reached the disk and the clusters
 * it counts did not. A leak repair clears them; only refcount blocks that reach past the
 * end are read. */
static void clear_past_eof(chk *k)
{
    uint64_t per_rb = 1ull << k->rb_bits, end = (uint64_t)k->imrt_clusters;
    for (uint64_t idx = end >> k->rb_bits; idx < k->rt_entries; idx++) {
        if (!(k->rt[idx] & QCOW2_REFT_OFFSET_MASK)) {
            continue;
        }
        for (uint64_t c = idx * per_rb > end ? idx * per_rb : end; c < (idx + 1) * per_rb;
             c++) {
            uint64_t rc;
            if (qcow2_chk_get_refcount(k, c, &rc) < 0 || rc == 0) {
                continue;
            }
            qcow2_chk_log(k, "Repairing cluster %" PRIu64 " refcount=%" PRIu64 " reference=0 "
                          "(past the end of the file)", c, rc);
            if (qcow2_chk_set_refcount(k, c, 0) == 0) {
                k->c.leaks_fixed++;
            }
        }
    }
}

/* ---- qcow2_check_refcounts ------------------------------------------------------------ */

static int check_refcounts(chk *k)
{
    counts pre;
    bool rebuild = false;
    int64_t highest = 0;
    int ret;

    uint64_t nb = qcow2_chk_clusters(k, k->file_len);
    if (nb > INT_MAX) {
        k->c.check_errors++;
        return -EFBIG;
    }
    k->imrt_clusters = (int64_t)nb;
    k->f.total = (int64_t)qcow2_chk_clusters(k, k->h.size & ~511ull);

    ret = calculate_refcounts(k, &rebuild);
    if (ret < 0) {
        return ret;
    }
    pre = k->c;
    compare_refcounts(k, 0, &rebuild, &highest);

    if (rebuild && (k->fix & VD_FIX_ERRORS)) {
        counts old = k->c;
        int64_t fresh_leaks = 0;

        qcow2_chk_log(k, "Rebuilding refcount structure");
        ret = qcow2_chk_rebuild(k);
        if (ret < 0) {
            return ret;
        }
        k->c.corruptions = 0;
        k->c.leaks = 0;
        rebuild = false;
        memset(k->imrt, 0, qcow2_chk_imrt_bytes(k, (uint64_t)k->imrt_clusters));
        unsigned fix = k->fix;
        k->fix = 0;
        ret = calculate_refcounts(k, &rebuild);
        k->fix = fix;
        if (ret < 0) {
            return ret;
        }
        if (k->fix & VD_FIX_LEAKS) {
            counts saved = k->c;
            memset(&k->c, 0, sizeof(k->c));
            compare_refcounts(k, VD_FIX_LEAKS, &rebuild, &highest);
            if (rebuild) {
                qcow2_chk_log(k, "ERROR rebuilt refcount structure is still broken");
            }
            fresh_leaks = k->c.leaks;
            k->c = saved;
        }
        if (k->c.corruptions < old.corruptions) {
            k->c.corruptions_fixed += old.corruptions - k->c.corruptions;
        }
        if (k->c.leaks < old.leaks) {
            k->c.leaks_fixed += old.leaks - k->c.leaks;
        }
        k->c.leaks += fresh_leaks;
    } else if (k->fix) {
        if (rebuild) {
            qcow2_chk_log(k, "ERROR need to rebuild refcount structures");
            k->c.check_errors++;
            return -EIO;
        }
        if (k->c.leaks || k->c.corruptions) {
            k->c = pre;
            compare_refcounts(k, k->fix, &rebuild, &highest);
        }
        if (k->fix & VD_FIX_LEAKS) {
            clear_past_eof(k);
        }
    }
    if (k->fix) {
        ret = vd_node_flush(k->file);
        if (ret < 0) {
            k->c.check_errors++;
            return ret;
        }
    }
    ret = qcow2_chk_oflag_copied(k);
    if (ret < 0) {
        return ret;
    }
    k->image_end_offset = (highest + 1) << k->cbits;
    return 0;
}

/* ---- one pass ---------------------------------------------------------------------------- */

static void chk_clear(chk *k)
{
    qcow2_header_clear(&k->h);
    free(k->l1);
    free(k->rt);
    qcow2_snapshots_free(k->sn, k->nb_sn);
    free(k->imrt);
    free(k->rb);
    free(k->l2);
}

int qcow2_header_read_check(struct vd_node *file, const char *what, qcow2_header *h,
                            uint64_t *file_len, vd_error **errp)
{
    int64_t len = vd_node_file_length(file);
    if (len < 0) {
        return vd_error_set(errp, VD_ERR_IO, (int)-len, "%s: cannot get the file length: %s",
                            what, strerror((int)-len));
    }
    *file_len = (uint64_t)len;

    uint8_t *hbuf;
    size_t hlen;
    int ret = qcow2_read_cluster0(file, *file_len, &hbuf, &hlen);
    if (ret < 0) {
        return vd_error_set(errp, ret == -ENOMEM ? VD_ERR_NOMEM : VD_ERR_IO, -ret,
                            "%s: cannot read the header: %s", what, strerror(-ret));
    }
    uint8_t raw[72] = {0};
    memcpy(raw, hbuf, hlen < sizeof(raw) ? hlen : sizeof(raw));
    bool no_reftable = hlen >= 60 && vd_be32(raw + 56) == 0;
    if (no_reftable) {
        vd_put_be32(hbuf + 56, 1);
    }
    if (hlen >= 72) {
        memset(hbuf + 60, 0, 12);
    }
    ret = qcow2_header_decode(hbuf, hlen, UINT64_MAX, what, h, errp);
    free(hbuf);
    if (ret < 0) {
        return ret;
    }
    if (no_reftable) {
        h->refcount_table_clusters = 0;
    }
    h->nb_snapshots = vd_be32(raw + 60);
    h->snapshots_offset = vd_be64(raw + 64);
    return 0;
}

/* What QEMU's open does in check mode: decode and validate the header leniently, then
 * load the active L1 and the reftable. */
static int load_image(chk *k, vd_error **errp)
{
    int ret = qcow2_header_read_check(k->file, k->what, &k->h, &k->file_len, errp);
    if (ret < 0) {
        return ret;
    }

    k->cbits = k->h.cluster_bits;
    k->cs = qcow2_cluster_size(&k->h);
    k->rorder = k->h.refcount_order;
    k->rmax = k->rorder == 6 ? UINT64_MAX : (1ull << (1u << k->rorder)) - 1;
    k->rb_bits = k->cbits + 3 - k->rorder;
    k->extl2 = qcow2_has_extl2(&k->h);
    k->l2e_bytes = k->extl2 ? 16 : 8;
    k->l2_entries = qcow2_l2_entries(&k->h);
    k->csize_shift = 62 - (k->cbits - 8);
    k->csize_mask = (1ull << (k->cbits - 8)) - 1;
    k->coff_mask = (1ull << k->csize_shift) - 1;
    k->l1_size = k->h.l1_size;
    k->l1_offset = k->h.l1_table_offset;
    k->rt_offset = k->h.refcount_table_offset;
    k->rt_entries = (uint64_t)k->h.refcount_table_clusters << (k->cbits - 3);
    if (k->h.has_bitmaps_ext && (k->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        k->nb_bitmaps = vd_be32(k->h.bitmaps_ext);
        k->bm_dir_size = vd_be64(k->h.bitmaps_ext + 8);
        k->bm_dir_offset = vd_be64(k->h.bitmaps_ext + 16);
    }

    k->rb = malloc(k->cs);
    k->l2 = malloc(k->cs);
    k->l1 = calloc(k->l1_size ? k->l1_size : 1, 8);
    k->rt = calloc(k->rt_entries ? k->rt_entries : 1, 8);
    if (!k->rb || !k->l2 || !k->l1 || !k->rt) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", k->what);
    }
    ret = qcow2_chk_read(k, k->l1, (uint64_t)k->l1_size * 8, k->l1_offset);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: cannot read the L1 table at 0x%"
                            PRIx64 ": %s", k->what, k->l1_offset, strerror(-ret));
    }
    for (uint32_t i = 0; i < k->l1_size; i++) {
        k->l1[i] = vd_be64((const uint8_t *)&k->l1[i]);
    }
    ret = qcow2_chk_read(k, k->rt, k->rt_entries * 8, k->rt_offset);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: cannot read the refcount table at 0x%"
                            PRIx64 ": %s", k->what, k->rt_offset, strerror(-ret));
    }
    for (uint64_t i = 0; i < k->rt_entries; i++) {
        k->rt[i] = vd_be64((const uint8_t *)&k->rt[i]);
    }
    return 0;
}

/* One pass of QEMU's qcow2_co_check_locked. *out gets the counts even on failure. */
static int check_pass(vd_node *file, const char *what, unsigned fix, chk_sink *log,
                      vd_check_result *out, bool *dead, vd_error **errp)
{
    chk k = {.file = file, .what = what, .log = log, .fix = fix};
    counts total = {0}, snap = {0};
    int ret;

    ret = load_image(&k, errp);
    if (ret < 0) {
        chk_clear(&k);
        return ret;
    }
    ret = qcow2_chk_read_snapshots(&k, &snap);
    if (ret < 0) {
        add_counts(&total, &snap);
        goto out;
    }
    ret = check_refcounts(&k);
    add_counts(&total, &k.c);
    if (ret < 0) {
        add_counts(&total, &snap);
        goto out;
    }
    if (snap.corruptions && (fix & VD_FIX_ERRORS)) {
        ret = qcow2_chk_write_snapshots(&k);
        if (ret < 0) {
            snap.check_errors++;
            qcow2_chk_log(&k, "ERROR failed to update snapshot table: %s", strerror(-ret));
            add_counts(&total, &snap);
            goto out;
        }
        snap.corruptions_fixed += snap.corruptions;
        snap.corruptions = 0;
    }
    add_counts(&total, &snap);
    if (fix && total.check_errors == 0 && total.corruptions == 0) {
        ret = qcow2_chk_mark_clean(&k);
    }

out:
    out->corruptions = total.corruptions;
    out->leaks = total.leaks;
    out->check_errors = total.check_errors;
    out->corruptions_fixed = total.corruptions_fixed;
    out->leaks_fixed = total.leaks_fixed;
    out->image_end_offset = k.image_end_offset;
    out->total_clusters = k.f.total;
    out->allocated_clusters = k.f.allocated;
    out->fragmented_clusters = k.f.fragmented;
    out->compressed_clusters = k.f.compressed;
    *dead = k.dead;
    if (ret < 0) {
        vd_error_set(errp, ret == -EIO ? VD_ERR_CORRUPT : VD_ERR_IO, -ret,
                     "%s: Check failed: %s", what, strerror(-ret));
    }
    chk_clear(&k);
    return ret;
}

int qcow2_check_image(struct vd_node *file, const char *what, unsigned fix,
                      const vd_check_hooks *hooks, vd_check_result *res, vd_error **errp)
{
    chk_sink log = {.fn = hooks ? hooks->msg : NULL, .opaque = hooks ? hooks->opaque : NULL};
    log.program_name = hooks ? hooks->program_name : NULL;
    bool dead = false;
    int ret;

    what = what ? what : file->filename;
    memset(res, 0, sizeof(*res));
    ret = check_pass(file, what, fix, &log, res, &dead, errp);
    if (ret == 0 && (res->corruptions_fixed || res->leaks_fixed)) {
        /* As qemu-img: report a second, read-only pass, with the first pass's fix counts. */
        int64_t cf = res->corruptions_fixed, lf = res->leaks_fixed;
        if (hooks && hooks->recheck) {
            hooks->recheck(hooks->opaque, lf, cf);
        }
        if (dead) {
            /* QEMU dropped the driver after a fatal corruption: the re-check cannot run. */
            ret = vd_error_set(errp, VD_ERR_CORRUPT, ENOMEDIUM, "%s: Check failed: %s", what,
                               strerror(ENOMEDIUM));
        } else {
            memset(res, 0, sizeof(*res));
            ret = check_pass(file, what, 0, &log, res, &dead, errp);
        }
        res->corruptions_fixed = cf;
        res->leaks_fixed = lf;
    }
    res->messages_dropped = (int64_t)log.dropped;
    return ret;
}
