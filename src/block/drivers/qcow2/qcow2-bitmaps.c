/* Persistent dirty bitmaps in qcow2 (the bitmaps extension): loaded into the node's
 * bitmaps at open, flagged in use in the image while it is open read-write, stored at
 * close, removed from the image when removed from the node. What QEMU 7.2 does, in the
 * same places.
 *
 * Ordering, so that a crash leaves an image that may leak but never lies:
 * - at a read-write open, the in-use flags are written (in place) and synced before any
 *   guest write can happen, so a bitmap that missed writes is never trusted later;
 * - a store writes every new table and data cluster and the new directory to fresh
 *   clusters and syncs them before the header points at the directory; what the old
 *   directory reached is freed only after the header no longer does. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/dirty-bitmap.h"
#include "block/drivers/qcow2/qcow2-check.h"
#include "block/drivers/qcow2/qcow2.h"

#define BM_IN_USE 1u
#define BM_AUTO 2u
#define BM_TYPE_DIRTY 1
#define SECTOR_SIZE 512u

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static void bms_free(qcow2_bm *bms, uint32_t nb)
{
    for (uint32_t i = 0; bms && i < nb; i++) {
        free(bms[i].name);
    }
    free(bms);
}

void qcow2_bitmaps_free(qcow2_state *s)
{
    bms_free(s->bms, s->nb_bms);
    s->bms = NULL;
    s->nb_bms = 0;
}

/* Does the image's directory hold a bitmap of this name? */
static bool stored(const qcow2_state *s, const char *name)
{
    for (uint32_t i = 0; i < s->nb_bms; i++) {
        if (!strcmp(s->bms[i].name, name)) {
            return true;
        }
    }
    return false;
}

/* ---- the directory -------------------------------------------------------------------- */

static uint64_t entry_len(const qcow2_bm *b)
{
    return round_up(BITMAP_DIR_ENTRY_LEN + strlen(b->name), 8);
}

static uint64_t dir_len(const qcow2_bm *bms, uint32_t nb)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < nb; i++) {
        n += entry_len(&bms[i]);
    }
    return n;
}

static void dir_encode(const qcow2_bm *bms, uint32_t nb, uint8_t *buf)
{
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        const qcow2_bm *b = &bms[i];
        uint8_t *e = buf + pos;
        size_t nl = strlen(b->name);
        memset(e, 0, entry_len(b));
        vd_put_be64(e, b->table_off);
        vd_put_be32(e + 8, b->table_size);
        vd_put_be32(e + 12, b->flags);
        e[16] = BM_TYPE_DIRTY;
        e[17] = b->gran_bits;
        vd_put_be16(e + 18, (uint16_t)nl);
        memcpy(e + BITMAP_DIR_ENTRY_LEN, b->name, nl);
        pos += entry_len(b);
    }
}

/* Bitmap table entries a bitmap of `size` bytes at 2^gran_bits needs. */
static uint64_t table_entries(const qcow2_state *s, uint64_t size, unsigned gran_bits)
{
    uint64_t granules = (size + (1ull << gran_bits) - 1) >> gran_bits;
    return round_up((granules + 7) / 8, s->cluster_size) / s->cluster_size;
}

/* Decodes and checks the directory as QEMU's loader does; every refusal names the image
 * and what is wrong. */
static int dir_decode(qcow2_state *s, const uint8_t *buf, uint64_t len, uint32_t nb,
                      qcow2_bm **out, vd_error **errp)
{
    qcow2_bm *bms = calloc(nb, sizeof(*bms));
    if (!bms) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    uint64_t pos = 0;
    uint32_t i = 0;
    const char *why = NULL;
    for (; i < nb && !why; i++) {
        if (len - pos < BITMAP_DIR_ENTRY_LEN) {
            why = "the bitmap directory ends inside an entry";
            break;
        }
        const uint8_t *e = buf + pos;
        qcow2_bm *b = &bms[i];
        b->table_off = vd_be64(e);
        b->table_size = vd_be32(e + 8);
        b->flags = vd_be32(e + 12);
        b->gran_bits = e[17];
        uint16_t nl = vd_be16(e + 18);
        uint32_t extra = vd_be32(e + 20);
        uint64_t elen = round_up(BITMAP_DIR_ENTRY_LEN + (uint64_t)nl + extra, 8);
        if (extra) {
            why = "Bitmap extra data is not supported";
        } else if (elen > len - pos) {
            why = "the bitmap directory ends inside an entry";
        } else if (b->table_off == 0 || b->table_size == 0 ||
                   (b->table_off & (s->cluster_size - 1)) ||
                   b->table_size > BITMAP_MAX_TABLE_SIZE ||
                   (uint64_t)b->table_size * s->cluster_size > BITMAP_MAX_PHYS_SIZE ||
                   b->gran_bits < 9 || b->gran_bits > 31 || (b->flags & ~(BM_IN_USE | BM_AUTO)) ||
                   nl == 0 || nl > VD_BITMAP_MAX_NAME || e[16] != BM_TYPE_DIRTY) {
            why = "Bitmap directory entry is invalid";
        } else if (!(b->flags & BM_IN_USE) &&
                   b->table_size < table_entries(s, s->h.size, b->gran_bits)) {
            why = "Bitmap table is too small for the image size";
        } else {
            b->name = malloc(nl + 1u);
            if (!b->name) {
                abort();
            }
            memcpy(b->name, e + BITMAP_DIR_ENTRY_LEN, nl);
            b->name[nl] = '\0';
            for (uint32_t j = 0; j < i && !why; j++) {
                if (!strcmp(bms[j].name, b->name)) {
                    why = "Bitmap names in the directory are not unique";
                }
            }
            pos += elen;
        }
    }
    if (!why && pos != len) {
        why = "the bitmap directory size does not match its entries";
    }
    if (why) {
        bms_free(bms, nb);
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL, "%s: Could not load bitmaps: %s",
                            s->name, why);
    }
    *out = bms;
    return 0;
}

/* ---- loading ---------------------------------------------------------------------------- */

static int read_table(qcow2_state *s, const qcow2_bm *b, uint64_t **out)
{
    uint64_t *t = calloc(b->table_size ? b->table_size : 1, 8);
    if (!t) {
        return -ENOMEM;
    }
    int ret = vd_node_pread(s->file, t, (uint64_t)b->table_size * 8, b->table_off);
    for (uint32_t i = 0; ret == 0 && i < b->table_size; i++) {
        t[i] = vd_be64((const uint8_t *)&t[i]);
        uint64_t off = t[i] & QCOW2_L2E_OFFSET_MASK;
        if ((t[i] & BITMAP_TABLE_RESERVED) || (off && ((t[i] & 1) || (off & (s->cluster_size - 1))))) {
            ret = -EINVAL;
        }
    }
    if (ret < 0) {
        free(t);
        return ret;
    }
    *out = t;
    return 0;
}

/* Fills hb from the bitmap's clusters: each table entry covers cluster_size * 8 granules;
 * offset 0 reads as all clean (bit 0 clear) or all dirty (bit 0 set). */
static int load_data(qcow2_state *s, const qcow2_bm *b, vd_hbitmap *hb)
{
    uint64_t *t;
    int ret = read_table(s, b, &t);
    if (ret < 0) {
        return ret;
    }
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf) {
        free(t);
        return -ENOMEM;
    }
    uint64_t granules = vd_hbitmap_granules(hb), per = s->cluster_size * 8;
    for (uint32_t i = 0; ret == 0 && i < b->table_size && (uint64_t)i * per < granules; i++) {
        uint64_t first = (uint64_t)i * per;
        uint64_t count = granules - first < per ? granules - first : per;
        uint64_t off = t[i] & QCOW2_L2E_OFFSET_MASK;
        if (off) {
            ret = vd_node_pread(s->file, buf, s->cluster_size, off);
        } else {
            memset(buf, (t[i] & 1) ? 0xff : 0, s->cluster_size);
        }
        if (ret == 0) {
            vd_hbitmap_deserialize(hb, first, count, buf);
        }
    }
    free(buf);
    free(t);
    return ret;
}

/* Writes the directory over itself (same size: only flags change), synced. */
static int dir_write_in_place(qcow2_state *s)
{
    uint8_t *buf = calloc(1, s->bm_dir_size);
    if (!buf) {
        return -ENOMEM;
    }
    dir_encode(s->bms, s->nb_bms, buf);
    vd_node_event(s->file, "bitmap_dir_update");
    int ret = vd_node_pwrite(s->file, buf, s->bm_dir_size, s->bm_dir_off, 0);
    free(buf);
    return ret < 0 ? ret : qcow2_sync(s);
}

int qcow2_bitmaps_load(qcow2_state *s, vd_error **errp)
{
    if (!s->h.has_bitmaps_ext) {
        return 0;
    }
    uint32_t nb = vd_be32(s->h.bitmaps_ext);
    uint64_t len = vd_be64(s->h.bitmaps_ext + 8);
    uint64_t off = vd_be64(s->h.bitmaps_ext + 16);
    if (len == 0 || len > BITMAP_MAX_DIR_SIZE || (uint64_t)nb * BITMAP_DIR_ENTRY_LEN > len) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL, "%s: Could not load bitmaps: the "
                            "bitmap directory size %" PRIu64 " is invalid", s->name, len);
    }
    uint8_t *buf = malloc(len);
    if (!buf) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
    }
    int ret = vd_node_pread(s->file, buf, len, off);
    if (ret < 0) {
        free(buf);
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not read the bitmap directory: "
                            "%s", s->name, strerror(-ret));
    }
    qcow2_bm *bms = NULL;
    ret = dir_decode(s, buf, len, nb, &bms, errp);
    free(buf);
    if (ret < 0) {
        return ret;
    }
    s->bms = bms;
    s->nb_bms = nb;
    s->bm_dir_off = off;
    s->bm_dir_size = len;
    /* Each becomes one of the node's bitmaps, in directory order (so listed newest
     * first, as QEMU lists them). One left in use by a crash is kept but never read. */
    bool mark = false;
    for (uint32_t i = 0; i < nb && ret == 0; i++) {
        qcow2_bm *b = &bms[i];
        bool in_use = (b->flags & BM_IN_USE) != 0;
        vd_dirty_bitmap *db = vd_node_bitmap_load(s->node, b->name, 1ull << b->gran_bits,
                                                  (b->flags & BM_AUTO) != 0, in_use);
        if (!db) {
            ret = vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: Could not load bitmap '%s': "
                               "out of memory", s->name, b->name);
        } else if (!in_use) {
            ret = load_data(s, b, db->hb);
            if (ret < 0) {
                ret = vd_error_set(errp, VD_ERR_CORRUPT, -ret, "%s: Could not load bitmap "
                                   "'%s': %s", s->name, b->name,
                                   ret == -EINVAL ? "invalid bitmap table" : strerror(-ret));
            } else if (s->writable) {
                b->flags |= BM_IN_USE;
                mark = true;
            }
        }
    }
    if (ret == 0 && mark) {
        ret = dir_write_in_place(s);
        if (ret < 0) {
            ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not mark the bitmaps in use: "
                               "%s", s->name, strerror(-ret));
        }
    }
    return ret;
}

/* ---- storing ---------------------------------------------------------------------------- */

/* Frees a stored bitmap's table and data clusters (the header no longer reaches them). */
static void drop_clusters(qcow2_state *s, const qcow2_bm *b)
{
    uint64_t *t;
    if (read_table(s, b, &t) == 0) {
        for (uint32_t i = 0; i < b->table_size; i++) {
            uint64_t off = t[i] & QCOW2_L2E_OFFSET_MASK;
            if (off) {
                qcow2_update_refcount(s, off, s->cluster_size, -1, false);
            }
        }
        free(t);
    }
    /* A table that cannot be read leaks its data clusters; check -r gets them back. */
    qcow2_update_refcount(s, b->table_off, (uint64_t)b->table_size * 8, -1, false);
}

/* Writes hb's bits and a table for them to fresh clusters (not synced); clean clusters
 * take no space. */
static int write_bitmap(qcow2_state *s, vd_hbitmap *hb, qcow2_bm *b)
{
    uint64_t n = table_entries(s, vd_hbitmap_size(hb), b->gran_bits);
    uint64_t granules = vd_hbitmap_granules(hb), per = s->cluster_size * 8;
    uint64_t *t = calloc(n ? n : 1, 8);
    uint8_t *buf = malloc(s->cluster_size);
    int ret = t && buf ? 0 : -ENOMEM;
    for (uint64_t i = 0; ret == 0 && i < n; i++) {
        uint64_t first = i * per;
        uint64_t count = granules - first < per ? granules - first : per;
        if (vd_hbitmap_next_dirty(hb, first << b->gran_bits,
                                  (first + count) << b->gran_bits) < 0) {
            continue;
        }
        memset(buf, 0, s->cluster_size);
        vd_hbitmap_serialize(hb, first, count, buf);
        uint64_t off;
        ret = qcow2_alloc_clusters(s, 1, &off, NULL);
        if (ret == 0) {
            ret = vd_node_pwrite(s->file, buf, s->cluster_size, off, 0);
            vd_put_be64((uint8_t *)&t[i], off);
            if (ret < 0) {
                qcow2_update_refcount(s, off, s->cluster_size, -1, false);
                t[i] = 0;
            }
        }
    }
    uint64_t toff = 0;
    if (ret == 0) {
        ret = qcow2_alloc_clusters(s, round_up(n * 8, s->cluster_size) >> s->cluster_bits,
                                   &toff, NULL);
    }
    if (ret == 0) {
        ret = vd_node_pwrite(s->file, t, n * 8, toff, 0);
        if (ret < 0) {
            qcow2_update_refcount(s, toff, n * 8, -1, false);
        }
    }
    if (ret < 0) {
        for (uint64_t i = 0; t && i < n; i++) {
            uint64_t off = vd_be64((const uint8_t *)&t[i]);
            if (off) {
                qcow2_update_refcount(s, off, s->cluster_size, -1, false);
            }
        }
    } else {
        b->table_off = toff;
        b->table_size = (uint32_t)n;
    }
    free(buf);
    free(t);
    return ret;
}

/* Writes the header after a change from `old` (s->h is the new one). When the bytes that
 * differ lie in one sector, only that sector is written, so a crash leaves the old header
 * or the new one, never a mix; otherwise the whole header goes out, as QEMU writes it. */
static int write_header_min(qcow2_state *s, const qcow2_header *old)
{
    qcow2_header o = *old, n = s->h;
    uint8_t *a = calloc(1, s->cluster_size), *b = calloc(1, s->cluster_size);
    int ret = a && b ? 0 : -ENOMEM;
    if (ret == 0 && (qcow2_header_encode(&o, a, s->cluster_size) < 0 ||
                     qcow2_header_encode(&n, b, s->cluster_size) < 0)) {
        ret = -EFBIG;
    }
    if (ret == 0) {
        s->h = n;   /* with the offsets and lengths the encoding set */
    }
    uint64_t first = s->cluster_size, last = 0;
    for (uint64_t i = 0; ret == 0 && i < s->cluster_size; i++) {
        if (a[i] != b[i]) {
            first = first < i ? first : i;
            last = i;
        }
    }
    if (ret == 0 && first <= last && first / SECTOR_SIZE == last / SECTOR_SIZE) {
        uint64_t sec = first / SECTOR_SIZE * SECTOR_SIZE;
        vd_node_event(s->file, "header_update");
        ret = vd_node_pwrite(s->file, b + sec, SECTOR_SIZE, sec, 0);
        ret = ret < 0 ? ret : qcow2_sync(s);
    } else if (ret == 0 && first <= last) {
        ret = qcow2_write_header(s);
    }
    free(a);
    free(b);
    return ret;
}

/* The header after the bitmaps extension changed. Adding or dropping the extension moves
 * what follows it, usually across a sector boundary (QEMU's feature table ends near 512),
 * and a torn write of two sectors could pair an extension header with the wrong data. So
 * the autoclear bit, which lives in the first sector, goes through a safe middle state:
 * an extension whose bit is clear is ignored by every reader (QEMU included). Adding:
 * the extension with the bit clear, then the bit. Dropping: the bit, then the extension.
 * With a backing file name or unknown extensions after it, which would move too, the
 * header is written in one go, as QEMU does. */
static int write_header_change(qcow2_state *s, const qcow2_header *old)
{
    bool adding = !old->has_bitmaps_ext && s->h.has_bitmaps_ext;
    bool dropping = old->has_bitmaps_ext && !s->h.has_bitmaps_ext;
    if ((!adding && !dropping) || s->h.backing_file || s->h.nb_unknown_exts) {
        return write_header_min(s, old);
    }
    qcow2_header target = s->h, mid = adding ? s->h : *old;
    mid.autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
    s->h = mid;
    int ret = write_header_min(s, old);
    if (ret == 0) {
        mid = s->h;
        s->h = target;
        ret = write_header_min(s, &mid);
    }
    return ret;
}

/* Writes bms as the image's directory: to fresh clusters, synced, then the header points
 * at it (or drops the extension when there is none left), then the old directory's
 * clusters are freed. On success the state takes bms and the caller gets the old entries
 * (*old, *old_nb) to free what only they reach. */
static int dir_replace(qcow2_state *s, qcow2_bm *bms, uint32_t nb, qcow2_bm **old,
                       uint32_t *old_nb)
{
    uint64_t len = dir_len(bms, nb), off = 0;
    int ret = 0;
    if (len > BITMAP_MAX_DIR_SIZE) {
        return -EFBIG;
    }
    if (nb) {
        uint8_t *buf = calloc(1, len);
        if (!buf) {
            return -ENOMEM;
        }
        dir_encode(bms, nb, buf);
        ret = qcow2_alloc_clusters(s, round_up(len, s->cluster_size) >> s->cluster_bits, &off,
                                   NULL);
        if (ret == 0) {
            vd_node_event(s->file, "bitmap_dir_update");
            ret = vd_node_pwrite(s->file, buf, len, off, 0);
        }
        free(buf);
    }
    /* The new clusters' refcounts and contents are durable before the header points at
     * them (a sync alone would leave the refcount cache behind). */
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret == 0) {
        qcow2_header old = s->h;
        if (nb) {
            vd_put_be32(s->h.bitmaps_ext, nb);
            vd_put_be32(s->h.bitmaps_ext + 4, 0);
            vd_put_be64(s->h.bitmaps_ext + 8, len);
            vd_put_be64(s->h.bitmaps_ext + 16, off);
            s->h.has_bitmaps_ext = true;
            s->h.autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
        } else {
            s->h.has_bitmaps_ext = false;
            s->h.autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
        }
        ret = write_header_change(s, &old);
        if (ret < 0) {
            s->h = old;
        }
    }
    if (ret < 0) {
        if (off) {
            qcow2_update_refcount(s, off, len, -1, false);
        }
        return ret;
    }
    if (s->nb_bms) {
        qcow2_update_refcount(s, s->bm_dir_off, s->bm_dir_size, -1, false);
    }
    *old = s->bms;
    *old_nb = s->nb_bms;
    s->bms = bms;
    s->nb_bms = nb;
    s->bm_dir_off = off;
    s->bm_dir_size = len;
    return 0;
}

static vd_dirty_bitmap *node_bitmap(qcow2_state *s, const char *name)
{
    for (vd_dirty_bitmap *b = s->node->bitmaps; b; b = b->next) {
        if (b->persistent && !strcmp(b->name, name)) {
            return b;
        }
    }
    return NULL;
}

/* One bitmap's entry, with its bits written out. */
static int store_one(qcow2_state *s, vd_dirty_bitmap *b, qcow2_bm *e)
{
    unsigned bits = (unsigned)__builtin_ctzll(vd_hbitmap_granularity(b->hb));
    if (table_entries(s, vd_hbitmap_size(b->hb), bits) * s->cluster_size >
        BITMAP_MAX_PHYS_SIZE) {
        return -EFBIG;   /* grown past what the format holds: not stored (QEMU's rule) */
    }
    e->name = vd_xstrdup(b->name);
    e->gran_bits = (uint8_t)__builtin_ctzll(vd_hbitmap_granularity(b->hb));
    e->flags = b->enabled ? BM_AUTO : 0;
    int ret = write_bitmap(s, b->hb, e);
    if (ret < 0) {
        free(e->name);
        e->name = NULL;
    }
    return ret;
}

/* At close: every persistent bitmap of the node goes into the image, not in use; those
 * the image had first, in their order, then new ones newest first. One that was
 * inconsistent keeps its old entry. */
int qcow2_bitmaps_store(qcow2_state *s)
{
    vd_node *n = s->node;
    pthread_mutex_lock(&n->bitmap_lock);
    uint32_t extra = 0;
    for (vd_dirty_bitmap *b = n->bitmaps; b; b = b->next) {
        extra += b->persistent;
    }
    if (!s->nb_bms && !extra) {
        pthread_mutex_unlock(&n->bitmap_lock);
        return 0;
    }
    qcow2_bm *bms = calloc((size_t)s->nb_bms + extra, sizeof(*bms));
    if (!bms) {
        pthread_mutex_unlock(&n->bitmap_lock);
        return -ENOMEM;
    }
    uint32_t nb = 0;
    int ret = 0;
    /* The image's bitmaps keep their places; one left inconsistent keeps its entry. */
    for (uint32_t i = 0; i < s->nb_bms && ret == 0; i++) {
        vd_dirty_bitmap *db = node_bitmap(s, s->bms[i].name);
        if (db && db->inconsistent) {
            bms[nb] = s->bms[i];
            bms[nb++].name = vd_xstrdup(s->bms[i].name);
        } else if (db) {
            ret = store_one(s, db, &bms[nb]);
            if (ret == -EFBIG) {
                /* Kept as it was, in use: never trusted again, but the image opens. */
                bms[nb] = s->bms[i];
                bms[nb].name = vd_xstrdup(s->bms[i].name);
                ret = 0;
            }
            nb += ret == 0;
        }
    }
    /* New ones after them, newest first (QEMU's order). */
    for (vd_dirty_bitmap *b = n->bitmaps; b && ret == 0; b = b->next) {
        if (b->persistent && !stored(s, b->name)) {
            ret = store_one(s, b, &bms[nb]);
            nb += ret == 0;
            ret = ret == -EFBIG ? 0 : ret;
        }
    }
    pthread_mutex_unlock(&n->bitmap_lock);
    /* Nothing to store (every entry kept as it was, none new): leave the image alone. */
    bool same = ret == 0 && nb == s->nb_bms;
    for (uint32_t i = 0; same && i < nb; i++) {
        same = bms[i].table_off == s->bms[i].table_off && bms[i].flags == s->bms[i].flags;
    }
    if (same) {
        bms_free(bms, nb);
        return 0;
    }
    qcow2_bm *old = NULL;
    uint32_t old_nb = 0;
    if (ret == 0) {
        ret = dir_replace(s, bms, nb, &old, &old_nb);
    }
    if (ret < 0) {
        /* The image still points at the old directory; the new clusters leak. */
        bms_free(bms, nb);
        return ret;
    }
    /* What the old directory reached and the new one does not. */
    for (uint32_t i = 0; i < old_nb; i++) {
        bool kept = false;
        for (uint32_t j = 0; j < nb; j++) {
            kept = kept || bms[j].table_off == old[i].table_off;
        }
        if (!kept) {
            drop_clusters(s, &old[i]);
        }
    }
    bms_free(old, old_nb);
    return 0;
}

/* A read-only image becoming writable: its bitmaps are flagged in use, as a read-write
 * open flags them, before anything is written. One left inconsistent stays as it is. */
int qcow2_bitmaps_mark_in_use(qcow2_state *s)
{
    bool mark = false;
    pthread_mutex_lock(&s->node->bitmap_lock);
    for (uint32_t i = 0; i < s->nb_bms; i++) {
        vd_dirty_bitmap *db = node_bitmap(s, s->bms[i].name);
        if (db && !db->inconsistent && !(s->bms[i].flags & BM_IN_USE)) {
            s->bms[i].flags |= BM_IN_USE;
            mark = true;
        }
    }
    pthread_mutex_unlock(&s->node->bitmap_lock);
    return mark ? dir_write_in_place(s) : 0;
}

/* ---- driver ops -------------------------------------------------------------------------- */

int qcow2_bitmap_can_store(vd_node *node, const char *name, uint64_t granularity,
                           vd_error **errp)
{
    qcow2_state *s = node->opaque;
    const char *why = NULL;
    char buf[96];
    /* The image's lock, then the node's bitmaps: the order a store takes them in. */
    pthread_mutex_lock(&s->lock);
    uint32_t count = s->nb_bms;
    pthread_mutex_lock(&node->bitmap_lock);
    for (vd_dirty_bitmap *b = node->bitmaps; b; b = b->next) {
        count += b->persistent && !stored(s, b->name);
    }
    pthread_mutex_unlock(&node->bitmap_lock);
    pthread_mutex_unlock(&s->lock);
    if (s->h.version < 3) {
        why = "Cannot store dirty bitmaps in qcow2 v2 files";
    } else if (granularity > (1ull << 31)) {
        snprintf(buf, sizeof(buf), "Granularity exceeds maximum (%llu bytes)", 1ull << 31);
        why = buf;
    } else if (strlen(name) > VD_BITMAP_MAX_NAME) {
        snprintf(buf, sizeof(buf), "Name length exceeds maximum (%u characters)",
                 VD_BITMAP_MAX_NAME);
        why = buf;
    } else if ((uint64_t)table_entries(s, node->size, (unsigned)__builtin_ctzll(granularity)) *
                   s->cluster_size > BITMAP_MAX_PHYS_SIZE) {
        why = "Too much space will be occupied by the bitmap. Use larger granularity";
    } else if (count >= 65535) {
        why = "Maximum number of persistent bitmaps is already reached";
    } else if (dir_len(s->bms, s->nb_bms) + round_up(BITMAP_DIR_ENTRY_LEN + strlen(name), 8) >
               BITMAP_MAX_DIR_SIZE) {
        why = "Not enough space in the bitmap directory";
    }
    if (why) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Can't make bitmap '%s' persistent "
                            "in '%s': %s", name, node->node_name ? node->node_name
                                                                 : node->filename, why);
    }
    return 0;
}

int qcow2_bitmap_remove_stored(vd_node *node, const char *name, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = 0;
    uint32_t idx = s->nb_bms;
    for (uint32_t i = 0; i < s->nb_bms; i++) {
        if (!strcmp(s->bms[i].name, name)) {
            idx = i;
        }
    }
    if (idx < s->nb_bms) {
        qcow2_bm *bms = calloc(s->nb_bms, sizeof(*bms));
        qcow2_bm gone = s->bms[idx];
        uint32_t nb = 0;
        for (uint32_t i = 0; bms && i < s->nb_bms; i++) {
            if (i != idx) {
                bms[nb] = s->bms[i];
                bms[nb++].name = vd_xstrdup(s->bms[i].name);
            }
        }
        qcow2_bm *old = NULL;
        uint32_t old_nb = 0;
        ret = bms ? dir_replace(s, bms, nb, &old, &old_nb) : -ENOMEM;
        if (ret == 0) {
            drop_clusters(s, &gone);
            bms_free(old, old_nb);
            ret = qcow2_flush_locked(s);
        } else {
            bms_free(bms, nb);
        }
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "Failed to remove bitmap '%s' from the "
                            "image: %s", name, strerror(-ret));
    }
    return 0;
}

int qcow2_bitmaps_truncate_check(qcow2_state *s, vd_error **errp)
{
    vd_node *n = s->node;
    int ret = 0;
    pthread_mutex_lock(&n->bitmap_lock);
    for (uint32_t i = 0; i < s->nb_bms && ret == 0; i++) {
        vd_dirty_bitmap *b = node_bitmap(s, s->bms[i].name);
        if (!b) {
            ret = vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Cannot resize qcow2 with "
                               "persistent bitmaps that were not loaded");
        } else if (b->busy) {
            ret = vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Bitmap '%s' is currently in use "
                               "by another operation and cannot be used", b->name);
        } else if (b->inconsistent) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap '%s' is inconsistent "
                               "and cannot be used", b->name);
        }
    }
    pthread_mutex_unlock(&n->bitmap_lock);
    return ret;
}

int qcow2_bitmaps_info(qcow2_state *s, vd_image_bitmap **out, size_t *nb)
{
    pthread_mutex_lock(&s->lock);
    vd_image_bitmap *list = calloc(s->nb_bms ? s->nb_bms : 1, sizeof(*list));
    if (!list) {
        pthread_mutex_unlock(&s->lock);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->nb_bms; i++) {
        list[i].name = vd_xstrdup(s->bms[i].name);
        list[i].granularity = 1ull << s->bms[i].gran_bits;
        list[i].in_use = (s->bms[i].flags & BM_IN_USE) != 0;
        list[i].autoload = (s->bms[i].flags & BM_AUTO) != 0;
    }
    *out = list;
    *nb = s->nb_bms;
    pthread_mutex_unlock(&s->lock);
    return 0;
}
