/* qcow2 internal snapshots: list, the two-phase create and delete the transaction engine
 * drives (block.h), apply, and the VM-state area.
 *
 * Ordering, so that a crash or a failed write leaves an image that may leak but never lies:
 * - everything a new snapshot needs (its L1 copy, the extra references, the new table) is
 *   written to fresh clusters and made durable in prepare; nothing points at it yet;
 * - commit is one 12-byte header write (nb_snapshots + snapshots_offset, one sector) and a
 *   flush; abort writes the old 12 bytes back and returns every reference prepare took;
 * - references are dropped only once the header no longer reaches them (clean).
 * Between a refcount change and the COPIED flags that follow it, `qemu-img check` would
 * see a mismatch, so v3 images carry the dirty bit across that window: a crash there is
 * repaired on the next read-write open (by QEMU or by us). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

/* What QEMU keeps of an id and a name (longer names are cut, as qemu-img does). */
#define MAX_ID_LEN 127
#define MAX_NAME_LEN 255

typedef enum { TXN_CREATE, TXN_DELETE } txn_kind;

typedef struct snap_txn {
    txn_kind kind;
    bool commit_tried;           /* the header may point at the new table */
    bool committed;
    bool set_dirty;              /* this action set the dirty bit; it clears it */

    /* The table before (as loaded) and after. */
    qcow2_snapshot *old_tab;
    uint32_t old_nb;
    uint64_t old_off, old_len;
    qcow2_snapshot *new_tab;     /* borrows old_tab's strings, except the new entry's */
    uint32_t new_nb;
    uint64_t new_off, new_len;

    /* create: the new snapshot's L1 (a copy of the active one) and what it referenced */
    uint64_t *l1_copy;
    uint32_t l1_copy_size;
    uint64_t l1_copy_off;        /* 0: not written */
    uint64_t refs_done;          /* items of the active tree given +1 */
    uint64_t vm_off, vm_len;     /* VM-state range written into the active tree */
    int replaced;                /* index in old_tab of a same-named snapshot, or -1 */
    qcow2_snapshot new_entry;

    /* delete */
    int deleted;                 /* index in old_tab */
} snap_txn;

static int io_err(qcow2_state *s, int ret, const char *what, vd_error **errp)
{
    char buf[512];
    const char *detail = vd_node_get_error(s->node, buf, sizeof(buf)) ? buf : NULL;
    size_t n = strlen(s->name);
    if (detail && strncmp(detail, s->name, n) == 0 && strncmp(detail + n, ": ", 2) == 0) {
        detail += n + 2;   /* named once is enough */
    }
    return vd_error_set(errp, ret == -ENOMEM ? VD_ERR_NOMEM : VD_ERR_IO, -ret, "%s: %s: %s",
                        s->name, what, detail ? detail : strerror(-ret));
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Bytes of guest space one L1 entry covers. */
static uint64_t l1_span(const qcow2_state *s)
{
    return (uint64_t)1 << (s->cluster_bits + s->l2_bits);
}

/* Where the VM state starts: the first L1 entry past the disk. */
static uint64_t vmstate_offset(const qcow2_state *s)
{
    return round_up(s->node->size, l1_span(s));
}

/* ---- the table ---------------------------------------------------------------------- */

static int load_table(qcow2_state *s, qcow2_snapshot **out, uint32_t *nb, vd_error **errp)
{
    *out = NULL;
    *nb = 0;
    if (s->nb_snapshots == 0) {
        return 0;
    }
    uint64_t len = s->snapshots_len;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    int ret = len ? vd_node_pread(s->file, buf, len, s->snapshots_offset) : 0;
    if (ret < 0) {
        free(buf);
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not read the snapshot table: "
                            "%s", s->name, strerror(-ret));
    }
    qcow2_snapshot_decode_opts opts = {.no_l1_checks = true};
    uint64_t table_len;
    ret = qcow2_snapshots_decode_ex(buf, len, s->nb_snapshots, &s->h, s->name, &opts, out, nb,
                                    &table_len, NULL, errp);
    free(buf);
    if (ret < 0) {
        return ret;
    }
    /* QEMU takes a missing disk size as the current one, and writes it so. */
    for (uint32_t i = 0; i < *nb; i++) {
        if ((*out)[i].disk_size == UINT64_MAX) {
            (*out)[i].disk_size = s->node->size;
        }
    }
    return 0;
}

/* Makes the in-memory view (what the overlap checks protect) match a table. */
static void set_table_state(qcow2_state *s, const qcow2_snapshot *tab, uint32_t nb,
                            uint64_t off, uint64_t len)
{
    s->nb_snapshots = nb;
    s->snapshots_offset = off;
    s->snapshots_len = len;
    s->h.nb_snapshots = nb;
    s->h.snapshots_offset = off;
    free(s->snap_l1);
    s->snap_l1 = calloc(nb ? nb : 1, sizeof(*s->snap_l1));
    if (!s->snap_l1) {
        abort();
    }
    s->nb_snap_l1 = 0;
    s->min_snap_extra = UINT32_MAX;
    for (uint32_t i = 0; i < nb; i++) {
        uint32_t extra = tab[i].extra_data_size > 24 ? tab[i].extra_data_size : 24;
        if (extra < s->min_snap_extra) {
            s->min_snap_extra = extra;
        }
        uint64_t bytes = (uint64_t)tab[i].l1_size * 8;
        if (!bytes || (tab[i].l1_table_offset & (s->cluster_size - 1)) ||
            bytes > QCOW2_MAX_L1_BYTES) {
            continue;
        }
        s->snap_l1[s->nb_snap_l1].offset = tab[i].l1_table_offset;
        s->snap_l1[s->nb_snap_l1].len = bytes;
        s->nb_snap_l1++;
    }
}

/* Writes a table to fresh clusters (not synced). An empty table takes no space. */
static int write_table(qcow2_state *s, const qcow2_snapshot *tab, uint32_t nb, uint64_t *off,
                       uint64_t *len)
{
    *off = 0;
    *len = 0;
    if (nb == 0) {
        return 0;
    }
    uint64_t bytes = qcow2_snapshots_encoded_len(tab, nb);
    if (bytes > QCOW2_MAX_SNAPSHOT_TABLE_BYTES) {
        vd_node_set_error(s->node, "%s: the snapshot table would exceed %u bytes", s->name,
                        QCOW2_MAX_SNAPSHOT_TABLE_BYTES);
        return -EFBIG;
    }
    uint8_t *buf = calloc(1, bytes);
    if (!buf) {
        return -ENOMEM;
    }
    qcow2_snapshots_encode(tab, nb, buf);
    uint64_t where;
    int ret = qcow2_alloc_clusters(s, round_up(bytes, s->cluster_size) >> s->cluster_bits,
                                   &where, NULL);
    if (ret == 0) {
        vd_node_event(s->file, "snapshot_table_update");
        ret = vd_node_pwrite(s->file, buf, bytes, where, 0);
        if (ret < 0) {
            vd_node_set_error(s->node, "%s: could not write the snapshot table: %s", s->name,
                            strerror(-ret));
            qcow2_update_refcount(s, where, bytes, -1, false);
        }
    }
    free(buf);
    if (ret == 0) {
        *off = where;
        *len = bytes;
    }
    return ret;
}

/* Points the header at a table: one write inside the first sector, synced. */
static int write_table_pointer(qcow2_state *s, uint32_t nb, uint64_t off)
{
    uint8_t b[12];
    vd_put_be32(b, nb);
    vd_put_be64(b + 4, off);
    vd_node_event(s->file, "header_update");
    int ret = vd_node_pwrite(s->file, b, sizeof(b), 60, 0);
    if (ret < 0) {
        vd_node_set_error(s->node, "%s: could not write the header: %s", s->name, strerror(-ret));
        return ret;
    }
    return qcow2_sync(s);
}

static int find_by_id(const qcow2_snapshot *tab, uint32_t nb, const char *id)
{
    for (uint32_t i = 0; i < nb; i++) {
        if (strcmp(tab[i].id, id) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static int find_by_name(const qcow2_snapshot *tab, uint32_t nb, const char *name)
{
    for (uint32_t i = 0; i < nb; i++) {
        if (strcmp(tab[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* ---- references of a tree of tables ----------------------------------------------------- */

/* Adds addend to one referenced range. Increases are checked first, so an overflow
 * changes nothing (refcount_bits=1 cannot hold a second reference). Frees go into punch
 * (when given), to become holes after the walk. */
static int ref_range(qcow2_state *s, uint64_t off, uint64_t len, int64_t addend,
                     qcow2_punch_later *punch)
{
    if (addend > 0) {
        for (uint64_t c = off >> s->cluster_bits; c <= (off + len - 1) >> s->cluster_bits;
             c++) {
            uint64_t rc;
            int ret = qcow2_get_refcount(s, c, &rc);
            if (ret < 0) {
                return ret;
            }
            if (s->refcount_max - rc < (uint64_t)addend) {
                vd_node_set_error(s->node, "%s: cluster %" PRIu64 " would need more than %" PRIu64
                                " references (refcount_bits=%u)", s->name, c,
                                s->refcount_max, 1u << s->refcount_order);
                return -ERANGE;
            }
        }
    }
    return qcow2_update_refcount_later(s, off, len, addend, punch);
}

/* Adds addend to everything a tree references: each L2 table of l1, then each host range
 * of its entries, in a fixed order. Stops after `limit` items; *done counts the items
 * changed, so a failed pass is undone exactly by the opposite pass limited to *done. */
static int tree_refs_punch(qcow2_state *s, const uint64_t *l1, uint32_t l1_size,
                           int64_t addend, uint64_t limit, uint64_t *done,
                           qcow2_punch_later *punch)
{
    uint64_t cs = s->cluster_size;
    uint64_t n = 0;
    int ret = 0;

    for (uint32_t i = 0; i < l1_size && n < limit && ret == 0; i++) {
        uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        if (l2 & (cs - 1)) {
            vd_node_set_error(s->node, "%s: L2 table offset %#" PRIx64 " unaligned (L1 index %" PRIu32
                            ")", s->name, l2, i);
            ret = -EIO;
            break;
        }
        /* The table, then its entries: the same order for every pass, so that a
         * limited pass covers exactly the items of the pass it undoes. */
        ret = ref_range(s, l2, cs, addend, punch);
        if (ret < 0) {
            break;
        }
        n++;
        for (uint64_t k = 0; k < cs && n < limit && ret == 0; k += s->slice_size) {
            qcow2_slice *sl;
            ret = qcow2_cache_get(s, s->l2_cache, l2 + k, &sl);
            if (ret < 0) {
                break;
            }
            for (unsigned j = 0; j < s->l2_slice_entries && n < limit; j++) {
                uint64_t e = qcow2_l2_get(s, sl->data, j);
                uint64_t host, len;
                if (e & QCOW2_OFLAG_COMPRESSED) {
                    qcow2_compressed_decode(e, s->cluster_bits, &host, &len);
                } else {
                    host = e & QCOW2_L2E_OFFSET_MASK;
                    len = cs;
                    if (!host) {
                        continue;
                    }
                    if (host & (cs - 1)) {
                        vd_node_set_error(s->node, "%s: data cluster offset %#" PRIx64 " unaligned",
                                        s->name, host);
                        ret = -EIO;
                        break;
                    }
                }
                ret = ref_range(s, host, len, addend, punch);
                if (ret < 0) {
                    break;
                }
                n++;
            }
            qcow2_cache_put(s->l2_cache, sl);
        }
        uint64_t rc;
        if (addend < 0 && qcow2_get_refcount(s, l2 >> s->cluster_bits, &rc) == 0 && rc == 0) {
            /* A freed table must not come back from the cache if the cluster is reused
             * (read only now: its entries were needed above). */
            qcow2_cache_discard_range(s->l2_cache, l2, cs);
        }
    }
    *done = n;
    return ret;
}

static int tree_refs(qcow2_state *s, const uint64_t *l1, uint32_t l1_size, int64_t addend,
                     uint64_t limit, uint64_t *done)
{
    return tree_refs_punch(s, l1, l1_size, addend, limit, done, NULL);
}

/* Drops every reference of a tree that nothing durable refers to any more; the clusters
 * freed become holes afterwards with pass-discard-snapshot (the walk reads the tables it
 * frees, so they are punched only at the end, as QEMU queues its discards). */
static int tree_drop(qcow2_state *s, const uint64_t *l1, uint32_t l1_size, uint64_t *done)
{
    qcow2_punch_later later = {0};
    int ret = tree_refs_punch(s, l1, l1_size, -1, UINT64_MAX, done,
                              s->pass_discard_snapshot ? &later : NULL);
    qcow2_punch_later_flush(s, &later);
    return ret;
}

/* Sets COPIED exactly where the refcount is 1, in the active L1 and the L2 tables it
 * reaches (QEMU does the same after every snapshot operation). */
static int fix_copied(qcow2_state *s)
{
    uint64_t cs = s->cluster_size;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        uint64_t rc;
        int ret = qcow2_get_refcount(s, l2 >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        uint64_t want = l2 | (rc == 1 ? QCOW2_OFLAG_COPIED : 0);
        if (s->l1[i] != want) {
            s->l1[i] = want;
            qcow2_l1_mark_dirty(s, i);
        }
        for (uint64_t k = 0; k < cs; k += s->slice_size) {
            qcow2_slice *sl;
            ret = qcow2_cache_get(s, s->l2_cache, l2 + k, &sl);
            if (ret < 0) {
                return ret;
            }
            bool dirty = false;
            for (unsigned j = 0; j < s->l2_slice_entries; j++) {
                uint64_t e = qcow2_l2_get(s, sl->data, j);
                uint64_t host = qcow2_entry_host(e);
                if (!host) {
                    continue;
                }
                ret = qcow2_get_refcount(s, host >> s->cluster_bits, &rc);
                if (ret < 0) {
                    break;
                }
                uint64_t ne = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
                if (ne != e) {
                    qcow2_l2_set(s, sl->data, j, ne, qcow2_l2_get_bitmap(s, sl->data, j));
                    dirty = true;
                }
            }
            if (dirty) {
                qcow2_cache_mark_dirty(s->l2_cache, sl);
            }
            qcow2_cache_put(s->l2_cache, sl);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* Reads and decodes a snapshot's L1 table (its offset and size already checked by the
 * caller); zero_pad: bytes past the end of the file read as zeros. Returns 0 or -errno. */
static int load_l1(qcow2_state *s, const qcow2_snapshot *sn, bool zero_pad, uint64_t **out)
{
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, sizeof(*l1));
    uint8_t *buf = malloc(bytes ? bytes : 1);
    int ret = !l1 || !buf ? -ENOMEM : 0;
    if (ret == 0 && bytes) {
        ret = zero_pad ? vd_node_pread_zero_pad(s->file, buf, bytes, sn->l1_table_offset)
                       : vd_node_pread(s->file, buf, bytes, sn->l1_table_offset);
    }
    for (uint32_t i = 0; ret == 0 && i < sn->l1_size; i++) {
        l1[i] = vd_be64(buf + (size_t)i * 8);
    }
    free(buf);
    if (ret < 0) {
        free(l1);
        return ret;
    }
    *out = l1;
    return 0;
}

/* Reads a snapshot's L1 table (host-endian), after checking where it claims to be. */
static int read_snap_l1(qcow2_state *s, const qcow2_snapshot *sn, uint64_t **out,
                        vd_error **errp)
{
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    *out = NULL;
    if (sn->l1_table_offset & (s->cluster_size - 1)) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL, "%s: Snapshot L1 table offset "
                            "invalid", s->name);
    }
    if (bytes > QCOW2_MAX_L1_BYTES) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EFBIG, "%s: Snapshot L1 table too large",
                            s->name);
    }
    int64_t flen = vd_node_file_length(s->file);
    if (bytes && (flen < 0 || sn->l1_table_offset > (uint64_t)flen ||
                  bytes > (uint64_t)flen - sn->l1_table_offset)) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL, "%s: Snapshot L1 table of snapshot "
                            "%s lies outside the image file", s->name, sn->id);
    }
    int ret = load_l1(s, sn, false, out);
    if (ret == -ENOMEM) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not read the L1 table of "
                            "snapshot %s: %s", s->name, sn->id, strerror(-ret));
    }
    return 0;
}

/* ---- dirty bit across a refcount/COPIED window ------------------------------------------ */

static int dirty_begin(qcow2_state *s, bool *set)
{
    *set = false;
    if (s->h.version < 3 || (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    int ret = qcow2_write_incompat(s, s->h.incompatible_features | QCOW2_INCOMPAT_DIRTY);
    if (ret < 0) {
        return ret;
    }
    s->h.incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    s->dirty_on_disk = true;
    s->dirty_ours = true;
    *set = true;
    return 0;
}

/* Flushes, then clears the bit this operation set. */
static int dirty_end(qcow2_state *s, bool *set)
{
    int ret = qcow2_flush_locked(s);
    if (ret < 0 || !*set) {
        return ret;
    }
    ret = qcow2_write_incompat(s, s->h.incompatible_features & ~QCOW2_INCOMPAT_DIRTY);
    if (ret < 0) {
        return ret;
    }
    s->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    s->dirty_on_disk = false;
    s->dirty_ours = false;
    *set = false;
    return 0;
}

/* Finishing work that can no longer be undone: a failed write there (a passing fault) is
 * tried once more, since what is lost otherwise is space, and then it is left as a leak. */
static void finish(qcow2_state *s, bool *dirty_set)
{
    if (dirty_end(s, dirty_set) < 0) {
        dirty_end(s, dirty_set);
    }
}

/* ---- common checks ---------------------------------------------------------------------- */

static int check_usable(qcow2_state *s, vd_error **errp)
{
    if (!s->writable) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: image is read-only", s->name);
    }
    if (s->broken || !s->loaded) {
        return vd_error_set(errp, VD_ERR_IO, EIO, "%s: the image is marked corrupt; "
                            "snapshots are refused", s->name);
    }
    if (s->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "%s: internal snapshots are "
                            "not supported with an external data file", s->name);
    }
    return 0;
}

static void txn_free(snap_txn *t)
{
    if (!t) {
        return;
    }
    qcow2_snapshots_free(t->old_tab, t->old_nb);
    free(t->new_tab);
    free(t->new_entry.id);
    free(t->new_entry.name);
    free(t->l1_copy);
    free(t);
}

/* ---- create ----------------------------------------------------------------------------- */

/* Undoes what create's prepare (and commit) did, newest first. */
static int create_undo(qcow2_state *s, snap_txn *t)
{
    int ret = 0;
    if (t->commit_tried) {
        ret = write_table_pointer(s, t->old_nb, t->old_off);
        if (ret < 0) {
            return ret;   /* the new snapshot may stay; the image is consistent */
        }
        set_table_state(s, t->old_tab, t->old_nb, t->old_off, t->old_len);
        t->commit_tried = t->committed = false;
    }
    if (t->new_len) {
        qcow2_update_refcount(s, t->new_off, t->new_len, -1, false);
        t->new_len = 0;
    }
    if (t->refs_done) {
        uint64_t undone;
        ret = tree_refs(s, t->l1_copy, t->l1_copy_size, -1, t->refs_done, &undone);
        if (ret < 0) {
            return ret;
        }
        t->refs_done = 0;
    }
    if (t->l1_copy_off) {
        qcow2_update_refcount(s, t->l1_copy_off, (uint64_t)t->l1_copy_size * 8, -1, false);
        t->l1_copy_off = 0;
    }
    ret = fix_copied(s);
    if (ret == 0 && t->vm_len) {
        ret = qcow2_discard_locked(s, t->vm_off, t->vm_len, true);
        t->vm_len = 0;
    }
    if (ret == 0) {
        ret = dirty_end(s, &t->set_dirty);
    }
    return ret;
}

static char *next_id(const qcow2_snapshot *tab, uint32_t nb)
{
    unsigned long max = 0;
    for (uint32_t i = 0; i < nb; i++) {
        unsigned long v = strtoul(tab[i].id, NULL, 10);
        if (v > max) {
            max = v;
        }
    }
    char buf[32];
    snprintf(buf, sizeof(buf), "%lu", max + 1);
    return strdup(buf);
}

static int create_prepare_locked(qcow2_state *s, const vd_snap_params *p, snap_txn *t,
                                 vd_error **errp)
{
    int ret = load_table(s, &t->old_tab, &t->old_nb, errp);
    if (ret < 0) {
        return ret;
    }
    t->old_off = s->snapshots_offset;
    t->old_len = s->snapshots_len;
    t->replaced = -1;

    char name[MAX_NAME_LEN + 1];
    snprintf(name, sizeof(name), "%s", p->name ? p->name : "");
    int same = find_by_name(t->old_tab, t->old_nb, name);
    if (same >= 0 && !p->replace) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "%s: Snapshot with name '%s' "
                            "already exists", s->name, name);
    }
    t->replaced = same;
    uint64_t nb = (uint64_t)t->old_nb + 1 - (same >= 0);
    if (nb > QCOW2_MAX_SNAPSHOTS) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "%s: Too many snapshots (at most "
                            "%u)", s->name, QCOW2_MAX_SNAPSHOTS);
    }
    if (p->vm_state_size > (uint64_t)QCOW2_MAX_L1_BYTES / 8 * l1_span(s) ||
        vmstate_offset(s) + p->vm_state_size > (uint64_t)QCOW2_MAX_L1_BYTES / 8 * l1_span(s)) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "%s: VM state of %" PRIu64 " bytes "
                            "does not fit in the image", s->name, p->vm_state_size);
    }

    ret = qcow2_flush_locked(s);
    if (ret == 0) {
        ret = dirty_begin(s, &t->set_dirty);
    }
    if (ret < 0) {
        return io_err(s, ret, "could not prepare the snapshot", errp);
    }

    /* The VM state goes into the active tree, where the copy below picks it up. */
    if (p->vm_state_size) {
        uint64_t off = vmstate_offset(s);
        ret = qcow2_grow_l1_locked(s, (off + p->vm_state_size + l1_span(s) - 1) /
                                          l1_span(s), false);
        if (ret == 0) {
            t->vm_off = off;
            t->vm_len = round_up(p->vm_state_size, s->cluster_size);
            ret = qcow2_pwrite_locked(s, p->vm_state, p->vm_state_size, off);
        }
        if (ret == 0) {
            ret = qcow2_flush_locked(s);
        }
        if (ret < 0) {
            return io_err(s, ret, "could not save the VM state", errp);
        }
    }

    /* The snapshot's L1: a verbatim copy of the active one, now durable on disk. */
    t->l1_copy_size = s->l1_size;
    t->l1_copy = calloc(s->l1_size ? s->l1_size : 1, sizeof(uint64_t));
    if (!t->l1_copy) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    memcpy(t->l1_copy, s->l1, (size_t)s->l1_size * sizeof(uint64_t));
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    uint64_t l1_off = 0;
    if (l1_bytes) {
        ret = qcow2_alloc_clusters(s, round_up(l1_bytes, s->cluster_size) >> s->cluster_bits,
                                   &l1_off, NULL);
        if (ret < 0) {
            return io_err(s, ret, "could not allocate the snapshot's L1 table", errp);
        }
        t->l1_copy_off = l1_off;
        uint8_t *buf = malloc(l1_bytes);
        if (!buf) {
            return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
        }
        for (uint32_t i = 0; i < s->l1_size; i++) {
            vd_put_be64(buf + (size_t)i * 8, s->l1[i]);
        }
        vd_node_event(s->file, "l1_update");
        ret = vd_node_pwrite(s->file, buf, l1_bytes, l1_off, 0);
        free(buf);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not write the snapshot's "
                                "L1 table: %s", s->name, strerror(-ret));
        }
    }

    /* One more reference on everything the active tree holds; shared now, so no COPIED. */
    ret = tree_refs(s, t->l1_copy, t->l1_copy_size, 1, UINT64_MAX, &t->refs_done);
    if (ret == 0) {
        ret = fix_copied(s);
    }
    if (ret < 0) {
        return io_err(s, ret, "could not add the snapshot's references", errp);
    }

    /* The new table: the old entries (less a replaced one) and the new entry last. */
    qcow2_snapshot *e = &t->new_entry;
    e->l1_table_offset = l1_off;
    e->l1_size = t->l1_copy_size;
    e->id = next_id(t->old_tab, t->old_nb);
    e->name = strdup(name);
    t->new_tab = calloc(nb, sizeof(*t->new_tab));
    if (!e->id || !e->name || !t->new_tab) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    e->date_sec = p->date_sec;
    e->date_nsec = p->date_nsec;
    e->vm_clock_nsec = p->vm_clock_nsec;
    e->vm_state_size = p->vm_state_size;
    e->disk_size = s->node->size;
    e->icount = p->icount;
    uint32_t k = 0;
    for (uint32_t i = 0; i < t->old_nb; i++) {
        if ((int)i != same) {
            t->new_tab[k++] = t->old_tab[i];
        }
    }
    t->new_tab[k++] = *e;
    t->new_nb = k;
    ret = write_table(s, t->new_tab, t->new_nb, &t->new_off, &t->new_len);
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        return io_err(s, ret, "could not write the snapshot table", errp);
    }
    return 0;
}

int qcow2_snapshot_create_prepare(vd_node *node, const vd_snap_params *p, void **txn,
                                         vd_error **errp)
{
    qcow2_state *s = node->opaque;
    snap_txn *t = calloc(1, sizeof(*t));
    if (!t) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    t->kind = TXN_CREATE;
    t->deleted = -1;
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = check_usable(s, errp);
    if (ret == 0) {
        ret = create_prepare_locked(s, p, t, errp);
        if (ret < 0) {
            /* Nothing may stay behind: undo the part that was done. */
            if (create_undo(s, t) < 0) {
                create_undo(s, t);
            }
        }
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        txn_free(t);
        return ret;
    }
    *txn = t;
    return 0;
}

/* Drops a replaced snapshot's references once the header no longer reaches it. */
static void drop_snapshot_refs(qcow2_state *s, const qcow2_snapshot *sn)
{
    uint64_t *l1 = NULL;
    vd_error *err = NULL;
    if (read_snap_l1(s, sn, &l1, &err) < 0) {
        vd_error_free(err);   /* its clusters leak */
        return;
    }
    uint64_t done;
    if (tree_drop(s, l1, sn->l1_size, &done) == 0 && sn->l1_size) {
        qcow2_update_refcount(s, sn->l1_table_offset, (uint64_t)sn->l1_size * 8, -1, false);
    }
    free(l1);
}

/* ---- delete ----------------------------------------------------------------------------- */

static int delete_prepare_locked(qcow2_state *s, const char *id, const char *name,
                                 snap_txn *t, vd_error **errp)
{
    int ret = load_table(s, &t->old_tab, &t->old_nb, errp);
    if (ret < 0) {
        return ret;
    }
    t->old_off = s->snapshots_offset;
    t->old_len = s->snapshots_len;
    t->deleted = -1;
    for (uint32_t i = 0; i < t->old_nb; i++) {
        if ((!id || strcmp(t->old_tab[i].id, id) == 0) &&
            (!name || strcmp(t->old_tab[i].name, name) == 0)) {
            t->deleted = (int)i;
            break;
        }
    }
    if (t->deleted < 0) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "%s: snapshot not found", s->name);
    }
    t->new_tab = calloc(t->old_nb, sizeof(*t->new_tab));
    if (!t->new_tab) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    for (uint32_t i = 0; i < t->old_nb; i++) {
        if ((int)i != t->deleted) {
            t->new_tab[t->new_nb++] = t->old_tab[i];
        }
    }
    ret = qcow2_flush_locked(s);
    if (ret == 0) {
        ret = write_table(s, t->new_tab, t->new_nb, &t->new_off, &t->new_len);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        if (t->new_len) {
            qcow2_update_refcount(s, t->new_off, t->new_len, -1, false);
            t->new_len = 0;
            qcow2_flush_locked(s);
        }
        return io_err(s, ret, "could not write the snapshot table", errp);
    }
    return 0;
}

int qcow2_snapshot_delete_prepare(vd_node *node, const char *id, const char *name,
                                         void **txn, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    if (!id && !name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Name or id must be provided");
    }
    snap_txn *t = calloc(1, sizeof(*t));
    if (!t) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    t->kind = TXN_DELETE;
    t->replaced = -1;
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = check_usable(s, errp);
    if (ret == 0) {
        ret = delete_prepare_locked(s, id, name, t, errp);
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        txn_free(t);
        return ret;
    }
    *txn = t;
    return 0;
}

/* ---- commit, abort, clean (both kinds) --------------------------------------------------- */

int qcow2_snapshot_commit(vd_node *node, void *txn, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    snap_txn *t = txn;
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    t->commit_tried = true;
    int ret = write_table_pointer(s, t->new_nb, t->new_off);
    if (ret < 0) {
        ret = io_err(s, ret, t->kind == TXN_CREATE ? "could not add the snapshot"
                                                   : "could not delete the snapshot", errp);
    } else {
        set_table_state(s, t->new_tab, t->new_nb, t->new_off, t->new_len);
        t->committed = true;
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_snapshot_abort(vd_node *node, void *txn, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    snap_txn *t = txn;
    int ret = 0;
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    if (t->kind == TXN_CREATE) {
        ret = create_undo(s, t);
        if (ret < 0) {
            ret = create_undo(s, t);   /* a passing fault: once more */
        }
    } else {
        if (t->commit_tried) {
            ret = write_table_pointer(s, t->old_nb, t->old_off);
            if (ret < 0) {
                ret = write_table_pointer(s, t->old_nb, t->old_off);
            }
            if (ret == 0) {
                set_table_state(s, t->old_tab, t->old_nb, t->old_off, t->old_len);
                t->commit_tried = t->committed = false;
            }
        }
        if (ret == 0 && t->new_len) {
            qcow2_update_refcount(s, t->new_off, t->new_len, -1, false);
            t->new_len = 0;
            if (qcow2_flush_locked(s) < 0) {
                ret = qcow2_flush_locked(s);
            }
        }
    }
    if (ret < 0) {
        ret = io_err(s, ret, "could not undo the snapshot operation", errp);
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

void qcow2_snapshot_clean(vd_node *node, void *txn)
{
    qcow2_state *s = node->opaque;
    snap_txn *t = txn;
    if (!t) {
        return;
    }
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    if (t->committed) {
        /* The header reaches none of this any more. */
        if (t->kind == TXN_DELETE && dirty_begin(s, &t->set_dirty) < 0) {
            dirty_begin(s, &t->set_dirty);
        }
        if (t->old_len) {
            qcow2_update_refcount(s, t->old_off, t->old_len, -1, false);
        }
        if (t->kind == TXN_CREATE) {
            if (t->replaced >= 0) {
                drop_snapshot_refs(s, &t->old_tab[t->replaced]);
            }
            /* The state lives on in the snapshot; the active tree need not COW it. */
            if (t->vm_len) {
                qcow2_discard_locked(s, t->vm_off, t->vm_len, true);
            }
        } else {
            drop_snapshot_refs(s, &t->old_tab[t->deleted]);
        }
        fix_copied(s);
    }
    finish(s, &t->set_dirty);
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    txn_free(t);
}

/* ---- apply ------------------------------------------------------------------------------- */

static int apply_locked(qcow2_state *s, const char *id_or_name, vd_error **errp)
{
    qcow2_snapshot *tab = NULL;
    uint32_t nb = 0;
    uint64_t *sl1 = NULL, *new_l1 = NULL, *old_l1 = NULL;
    uint64_t refs = 0;
    bool dirty = false;
    int ret = load_table(s, &tab, &nb, errp);
    if (ret < 0) {
        return ret;
    }
    int i = find_by_id(tab, nb, id_or_name);
    if (i < 0) {
        i = find_by_name(tab, nb, id_or_name);
    }
    if (i < 0) {
        ret = vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "%s: Failed to load snapshot: %s",
                           s->name, strerror(ENOENT));
        goto out;
    }
    qcow2_snapshot *sn = &tab[i];
    ret = read_snap_l1(s, sn, &sl1, errp);
    if (ret < 0) {
        goto out;
    }
    if (sn->disk_size != s->node->size) {
        ret = qcow2_truncate_locked(s, sn->disk_size, true, "off", errp);
        if (ret < 0) {
            goto out;
        }
    }
    uint32_t size = sn->l1_size > s->l1_size ? sn->l1_size : s->l1_size;
    new_l1 = calloc(size ? size : 1, sizeof(*new_l1));
    old_l1 = calloc(s->l1_size ? s->l1_size : 1, sizeof(*old_l1));
    if (!new_l1 || !old_l1) {
        ret = vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    for (uint32_t k = 0; k < sn->l1_size; k++) {
        new_l1[k] = sl1[k] & ~QCOW2_OFLAG_COPIED;   /* shared with the snapshot */
    }
    uint32_t old_size = s->l1_size;
    memcpy(old_l1, s->l1, (size_t)old_size * sizeof(*old_l1));

    ret = qcow2_flush_locked(s);
    if (ret == 0) {
        ret = dirty_begin(s, &dirty);
    }
    if (ret == 0) {
        ret = tree_refs(s, sl1, sn->l1_size, 1, UINT64_MAX, &refs);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret == 0) {
        ret = qcow2_l1_install_locked(s, new_l1, size);
    }
    if (ret < 0) {
        /* Not switched: give the references back. */
        uint64_t undone;
        if (refs) {
            tree_refs(s, sl1, sn->l1_size, -1, refs, &undone);
        }
        if (dirty_end(s, &dirty) < 0) {
            dirty_end(s, &dirty);
        }
        ret = io_err(s, ret, "could not apply the snapshot", errp);
        goto out;
    }
    new_l1 = NULL;   /* the active table now */
    /* The old active tree is unreachable: drop it, then leaks at worst. */
    tree_drop(s, old_l1, old_size, &refs);
    fix_copied(s);
    finish(s, &dirty);
out:
    free(sl1);
    free(new_l1);
    free(old_l1);
    qcow2_snapshots_free(tab, nb);
    return ret;
}

int qcow2_snapshot_apply(vd_node *node, const char *id_or_name, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = check_usable(s, errp);
    if (ret == 0) {
        ret = apply_locked(s, id_or_name, errp);
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- temporary load (read-only) ---------------------------------------------------------- */

/* QEMU's rule: both given, both must match; else the one given. */
static int find_by_id_and_name(const qcow2_snapshot *tab, uint32_t nb, const char *id,
                               const char *name)
{
    for (uint32_t i = 0; i < nb; i++) {
        if ((!id || strcmp(tab[i].id, id) == 0) && (!name || strcmp(tab[i].name, name) == 0)) {
            return (int)i;
        }
    }
    return -1;
}

/* QEMU's largest request end: INT64_MAX rounded down to its largest alignment (1 GiB). */
#define TMP_MAX_REQUEST_END (INT64_MAX & ~(((uint64_t)1 << 30) - 1))

/* Reads a snapshot's L1 table for reading through it. The checks and their words are
 * QEMU's (its callers retry by name on EINVAL, so the errno matters too). Bytes past the end
 * of the file read as zeros, as they do in QEMU: such entries are unallocated; a range QEMU's
 * block layer would not even try to read fails as its read does (EIO). */
static int read_tmp_l1(qcow2_state *s, const qcow2_snapshot *sn, uint64_t **out,
                       vd_error **errp)
{
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    *out = NULL;
    if (bytes > QCOW2_MAX_L1_BYTES) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EFBIG, "%s: Snapshot L1 table too large",
                            s->name);
    }
    if ((uint64_t)INT64_MAX - bytes < sn->l1_table_offset ||
        (sn->l1_table_offset & (s->cluster_size - 1))) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL, "%s: Snapshot L1 table offset "
                            "invalid", s->name);
    }
    if (sn->l1_table_offset > TMP_MAX_REQUEST_END ||
        bytes > TMP_MAX_REQUEST_END - sn->l1_table_offset) {
        return vd_error_set(errp, VD_ERR_IO, EIO, "%s: Failed to read l1 table for snapshot",
                            s->name);
    }
    int ret = load_l1(s, sn, true, out);
    if (ret == -ENOMEM) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: Failed to read l1 table for snapshot",
                            s->name);
    }
    return 0;
}

/* Only the in-memory view changes: the active L1 table is replaced by the snapshot's. The
 * guest size stays, as in QEMU (reads past the snapshot's table are unallocated). Cached L2
 * slices stay valid: they are keyed by host offset. Nothing is written, and nothing can be
 * later: the node is read-only for its whole life, so the swapped table never reaches the
 * file and the close writes nothing. */
int qcow2_snapshot_load_tmp(vd_node *node, const char *id, const char *name, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    qcow2_snapshot *tab = NULL;
    uint32_t nb = 0;
    uint64_t *l1 = NULL;
    uint8_t *l1_dirty = NULL;

    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret;
    /* The core refuses a writable node; this is the driver's own guard against ever writing
     * a foreign table back as the active one. */
    if (s->writable) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Device is not readonly");
        goto out;
    }
    if (!s->loaded) {
        ret = vd_error_set(errp, VD_ERR_IO, EIO, "%s: the image metadata is not loaded",
                           s->name);
        goto out;
    }
    ret = load_table(s, &tab, &nb, errp);
    if (ret < 0) {
        goto out;
    }
    int i = find_by_id_and_name(tab, nb, id, name);
    if (i < 0) {
        ret = vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "%s: Can't find snapshot", s->name);
        goto out;
    }
    ret = read_tmp_l1(s, &tab[i], &l1, errp);
    if (ret < 0) {
        goto out;
    }
    /* One flag per 4 KiB chunk of the table, as the loader sizes it. */
    size_t chunks = ((size_t)tab[i].l1_size * 8 + 4095) / 4096;
    l1_dirty = calloc(chunks ? chunks : 1, 1);
    if (!l1_dirty) {
        ret = vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    free(s->l1);
    free(s->l1_dirty);
    s->l1 = l1;
    s->l1_dirty = l1_dirty;
    s->l1_nb_dirty = 0;
    s->l1_size = tab[i].l1_size;
    s->l1_offset = tab[i].l1_table_offset;
    l1 = NULL;
    l1_dirty = NULL;
out:
    free(l1);
    free(l1_dirty);
    qcow2_snapshots_free(tab, nb);
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- list, VM state ------------------------------------------------------------------------ */

int qcow2_snapshot_list(vd_node *node, vd_snapshot_info **out, size_t *nbp,
                               vd_error **errp)
{
    qcow2_state *s = node->opaque;
    qcow2_snapshot *tab = NULL;
    uint32_t nb = 0;
    *out = NULL;
    *nbp = 0;
    pthread_mutex_lock(&s->lock);
    int ret = load_table(s, &tab, &nb, errp);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0 || nb == 0) {
        return ret;
    }
    vd_snapshot_info *list = calloc(nb, sizeof(*list));
    if (!list) {
        qcow2_snapshots_free(tab, nb);
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    for (uint32_t i = 0; i < nb; i++) {
        list[i].id = tab[i].id;
        list[i].name = tab[i].name;
        tab[i].id = tab[i].name = NULL;
        list[i].vm_state_size = tab[i].vm_state_size;
        list[i].date_sec = tab[i].date_sec;
        list[i].date_nsec = tab[i].date_nsec;
        list[i].vm_clock_nsec = tab[i].vm_clock_nsec;
        list[i].disk_size = tab[i].disk_size;
        list[i].icount = tab[i].icount;
    }
    qcow2_snapshots_free(tab, nb);
    *out = list;
    *nbp = nb;
    return 0;
}

int qcow2_vmstate_rw(vd_node *node, void *buf, uint64_t len, uint64_t pos, bool write,
                            vd_error **errp)
{
    qcow2_state *s = node->opaque;
    uint64_t limit = (uint64_t)QCOW2_MAX_L1_BYTES / 8 * l1_span(s);
    uint64_t base = vmstate_offset(s);
    if (pos > limit || len > limit - pos || base > limit - pos - len) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: beyond the VM state area",
                            s->name);
    }
    uint64_t off = base + pos;
    if (!write) {
        int ret = qcow2_pread(node, buf, len, off);
        return ret < 0 ? io_err(s, ret, "could not read the VM state", errp) : 0;
    }
    pthread_mutex_lock(&s->lock);
    qcow2_enter_locked(s);
    int ret = check_usable(s, errp);
    if (ret == 0) {
        ret = qcow2_grow_l1_locked(s, (off + len + l1_span(s) - 1) / l1_span(s), false);
        if (ret == 0) {
            ret = qcow2_pwrite_locked(s, buf, len, off);
        }
        if (ret < 0) {
            ret = io_err(s, ret, "could not write the VM state", errp);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- what a change of version needs of the table (amend) ------------------------------ */

int qcow2_snapshots_check_v2_locked(qcow2_state *s, vd_error **errp)
{
    qcow2_snapshot *tab;
    uint32_t nb;
    int ret = load_table(s, &tab, &nb, errp);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t i = 0; i < nb && ret == 0; i++) {
        if (tab[i].vm_state_size > UINT32_MAX || tab[i].disk_size != s->node->size) {
            ret = vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                               "Internal snapshots prevent downgrade of image");
        }
    }
    qcow2_snapshots_free(tab, nb);
    return ret;
}

int qcow2_snapshots_make_v3_locked(qcow2_state *s, vd_error **errp)
{
    /* 16 bytes of extra data hold the 64-bit VM state size and the disk size. */
    if (s->nb_snapshots == 0 || s->min_snap_extra >= 16) {
        return 0;
    }
    qcow2_snapshot *tab;
    uint32_t nb;
    int ret = load_table(s, &tab, &nb, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t old_off = s->snapshots_offset, old_len = s->snapshots_len;
    uint64_t off, len;
    /* The encoder writes every entry with full extra data; the new table is durable before
     * the header points at it, and the old one is freed only after. */
    ret = write_table(s, tab, nb, &off, &len);
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret == 0) {
        ret = write_table_pointer(s, nb, off);
    }
    if (ret < 0) {
        qcow2_snapshots_free(tab, nb);
        return io_err(s, ret, "could not rewrite the snapshot table", errp);
    }
    set_table_state(s, tab, nb, off, len);
    qcow2_snapshots_free(tab, nb);
    if (old_len) {
        qcow2_update_refcount(s, old_off, old_len, -1, false);
    }
    return 0;
}
