/* The qcow2 driver: open (validation, dirty-image repair, backing chain), close, header
 * rewrites, flush ordering, corruption handling, and the control ops (info, check,
 * set_backing, make_empty), plus the driver table. Data paths live in qcow2-io.c, amend in
 * qcow2-amend.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"
#include "block/engine.h"

/* ---- header writes ------------------------------------------------------------------- */

int qcow2_sync(qcow2_state *s)
{
    vd_node_event(s->file, "flush_to_disk");
    int ret = vd_node_flush(s->file);
    if (ret < 0) {
        vd_node_set_error(s->node, "%s: could not flush the image file: %s", s->name, strerror(-ret));
        return ret;
    }
    s->rb_unsynced = false;
    return 0;
}

int qcow2_write_header(qcow2_state *s)
{
    uint8_t *buf = calloc(1, s->cluster_size);
    if (!buf) {
        return -ENOMEM;
    }
    int ret = qcow2_header_encode(&s->h, buf, s->cluster_size);
    if (ret < 0) {
        vd_node_set_error(s->node, "%s: the header and its extensions do not fit in one cluster",
                        s->name);
        free(buf);
        return ret;
    }
    vd_node_event(s->file, "header_update");
    ret = vd_node_pwrite(s->file, buf, s->cluster_size, 0, 0);
    free(buf);
    if (ret < 0) {
        vd_node_set_error(s->node, "%s: could not write the header: %s", s->name, strerror(-ret));
        return ret;
    }
    return qcow2_sync(s);
}

int qcow2_write_incompat(qcow2_state *s, uint64_t bits)
{
    uint8_t b[8];
    vd_put_be64(b, bits);
    vd_node_event(s->file, "header_update");
    int ret = vd_node_pwrite(s->file, b, sizeof(b), 72, 0);
    if (ret < 0) {
        vd_node_set_error(s->node, "%s: could not write the header: %s", s->name, strerror(-ret));
        return ret;
    }
    return qcow2_sync(s);
}

int qcow2_mark_dirty_locked(qcow2_state *s)
{
    if (s->dirty_on_disk || s->h.version < 3 || !s->lazy_refcounts) {
        return 0;
    }
    int ret = qcow2_write_incompat(s, s->h.incompatible_features | QCOW2_INCOMPAT_DIRTY);
    if (ret < 0) {
        return ret;
    }
    s->h.incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    s->dirty_on_disk = true;
    s->dirty_ours = true;
    return 0;
}

/* Flushes everything and clears the dirty bit (a full header rewrite, as QEMU does). */
int qcow2_mark_clean_locked(qcow2_state *s)
{
    int ret = qcow2_flush_locked(s);
    if (ret < 0 || !(s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return ret;
    }
    if (!s->dirty_ours) {
        /* Dirty since before this open and not repaired (check mode): its refcounts may
         * be stale, so the bit must stay until a repair. */
        vd_node_set_error(s->node, "%s: the image is dirty and must be repaired first (check -r all)",
                        s->name);
        return -EBUSY;
    }
    s->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    ret = qcow2_write_header(s);
    if (ret < 0) {
        s->h.incompatible_features |= QCOW2_INCOMPAT_DIRTY;
        return ret;
    }
    s->dirty_on_disk = false;
    s->dirty_ours = false;
    return 0;
}

static int signal_corruption(qcow2_state *s, int64_t offset, int64_t size, const char *fmt,
                             va_list ap)
{
    char msg[400];
    vsnprintf(msg, sizeof(msg), fmt, ap);

    bool first = !s->broken;
    s->broken = true;
    if (first && s->writable && !(s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
        s->h.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
        qcow2_write_header(s);
    }
    if (first) {
        vd_event ev = {.type = "BLOCK_IMAGE_CORRUPTED", .image = s->name, .msg = msg,
                       .fatal = s->writable, .offset = offset, .size = size};
        vd_engine_emit(s->node->engine, &ev);
    }
    if (s->writable) {
        vd_node_set_error(s->node, "%s: qcow2: Marking image as corrupt: %s; further corruption events "
                        "will be suppressed", s->name, msg);
    } else {
        vd_node_set_error(s->node, "%s: qcow2: Image is corrupt: %s", s->name, msg);
    }
    return -EIO;
}

int qcow2_signal_corruption(qcow2_state *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = signal_corruption(s, -1, -1, fmt, ap);
    va_end(ap);
    return ret;
}

int qcow2_signal_corruption_at(qcow2_state *s, uint64_t offset, uint64_t size,
                               const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = signal_corruption(s, (int64_t)offset, (int64_t)size, fmt, ap);
    va_end(ap);
    return ret;
}

/* ---- flush and drain ----------------------------------------------------------------- */

int qcow2_flush_locked(qcow2_state *s)
{
    if (!s->writable) {
        return 0;
    }
    if (s->broken || !s->loaded) {
        /* The metadata may be wrong: keep it off the disk, but make data durable. */
        return qcow2_sync(s);
    }
    bool tables = s->l2_cache->nb_dirty || s->l1_nb_dirty;
    int ret = s->break_ordering ? qcow2_cache_writeback(s, s->l2_cache) : 0;
    if (ret == 0) {
        ret = qcow2_cache_writeback(s, s->rb_cache);
    }
    if (ret < 0) {
        return ret;
    }
    /* Data and refcount increases before the tables that reference them. */
    if (tables || s->nb_unsynced_frees) {
        ret = qcow2_sync(s);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_cache_writeback(s, s->l2_cache);
    if (ret < 0) {
        return ret;
    }
    if (s->l1_nb_dirty) {
        /* New L2 tables before the L1 entries pointing at them. */
        ret = qcow2_sync(s);
        if (ret == 0) {
            ret = qcow2_write_l1_dirty(s);
        }
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_sync(s);
    if (ret < 0) {
        return ret;
    }
    s->headroom_checked = false;  /* little is dirty now: a cheap moment for a new block */
    /* Every dropped reference is durable now; decrease the refcounts. */
    qcow2_frees_mark_synced(s);
    if (qcow2_frees_apply(s) && s->rb_cache->nb_dirty) {
        ret = qcow2_cache_writeback(s, s->rb_cache);
        if (ret == 0) {
            ret = qcow2_sync(s);
        }
    }
    return ret;
}

static int qcow2_flush(vd_node *node)
{
    qcow2_state *s = node->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_flush_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

void qcow2_drain_locked(qcow2_state *s)
{
    while (s->draining && !pthread_equal(s->drain_owner, pthread_self())) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    s->draining++;
    s->drain_owner = pthread_self();
    while (s->io_head || s->allocs) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
}

void qcow2_undrain_locked(qcow2_state *s)
{
    s->draining--;
    pthread_cond_broadcast(&s->cond);
}

const uint8_t *qcow2_zeros(qcow2_state *s)
{
    /* The engine's read-only zero pages cost no memory; a node without an engine (never
     * written in practice) makes its own on first use. */
    const uint8_t *z = vd_engine_zeros(s->node->engine, QCOW2_MAX_BOUNCE_BYTES);
    if (!z && !s->own_zeros) {
        if (posix_memalign((void **)&s->own_zeros, 4096, QCOW2_MAX_BOUNCE_BYTES) != 0) {
            abort();
        }
        memset(s->own_zeros, 0, QCOW2_MAX_BOUNCE_BYTES);
    }
    return z ? z : s->own_zeros;
}

/* ---- loading the image --------------------------------------------------------------- */

static void free_tables(qcow2_state *s)
{
    s->loaded = false;
    if (s->l2_cache) {
        qcow2_cache_free(s->l2_cache);
        s->l2_cache = NULL;
    }
    if (s->rb_cache) {
        qcow2_cache_free(s->rb_cache);
        s->rb_cache = NULL;
    }
    free(s->l1);
    s->l1 = NULL;
    free(s->l1_dirty);
    s->l1_dirty = NULL;
    s->l1_nb_dirty = 0;
    free(s->reftable);
    s->reftable = NULL;
    qcow2_refblocks_free(s);
    free(s->snap_l1);
    s->snap_l1 = NULL;
    s->nb_snap_l1 = 0;
    qcow2_header_clear(&s->h);
}

int qcow2_read_cluster0(struct vd_node *file, uint64_t file_len, uint8_t **out,
                        size_t *out_len)
{
    enum { FIRST = 512 };  /* the smallest cluster: usually all there is to read */
    size_t n = file_len < FIRST ? (size_t)file_len : FIRST;
    uint8_t *buf = malloc(FIRST);
    if (!buf) {
        return -ENOMEM;
    }
    int ret = n ? vd_node_pread(file, buf, n, 0) : 0;
    size_t want = n;
    uint32_t bits = n >= 24 ? vd_be32(buf + 20) : 0;
    if (ret == 0 && bits >= QCOW2_MIN_CLUSTER_BITS && bits <= QCOW2_MAX_CLUSTER_BITS) {
        want = file_len < (1ull << bits) ? (size_t)file_len : (size_t)1 << bits;
    }
    if (ret == 0 && want > n) {
        uint8_t *grown = realloc(buf, want);
        if (!grown) {
            free(buf);
            return -ENOMEM;
        }
        buf = grown;
        ret = vd_node_pread(file, buf + n, want - n, n);
    }
    if (ret < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    *out_len = want;
    return 0;
}

static int read_header(qcow2_state *s, uint64_t file_len, vd_error **errp)
{
    uint8_t *buf;
    size_t len;
    int ret = qcow2_read_cluster0(s->file, file_len, &buf, &len);
    if (ret < 0) {
        return vd_error_set(errp, ret == -ENOMEM ? VD_ERR_NOMEM : VD_ERR_IO, -ret,
                            "%s: could not read the header: %s", s->name, strerror(-ret));
    }
    ret = qcow2_header_decode(buf, len, file_len, s->name, &s->h, errp);
    free(buf);
    return ret;
}

/* Reads and validates the snapshot table; keeps what protects its metadata from writes. */
static int load_snapshots(qcow2_state *s, uint64_t file_len, vd_error **errp)
{
    s->nb_snapshots = s->h.nb_snapshots;
    s->snapshots_offset = s->h.snapshots_offset;
    s->snapshots_len = 0;
    s->min_snap_extra = UINT32_MAX;
    if (s->nb_snapshots == 0) {
        return 0;
    }
    uint64_t avail = file_len > s->snapshots_offset ? file_len - s->snapshots_offset : 0;
    if (avail > QCOW2_MAX_SNAPSHOT_TABLE_BYTES) {
        avail = QCOW2_MAX_SNAPSHOT_TABLE_BYTES;
    }
    uint64_t len = (uint64_t)s->nb_snapshots * 256;
    qcow2_snapshot_decode_opts opts = {.no_l1_checks = true};
    for (;;) {
        if (len > avail) {
            len = avail;
        }
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf) {
            return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", s->name);
        }
        int ret = len ? vd_node_pread(s->file, buf, len, s->snapshots_offset) : 0;
        if (ret < 0) {
            free(buf);
            return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not read the snapshot "
                                "table: %s", s->name, strerror(-ret));
        }
        qcow2_snapshot *snaps = NULL;
        uint32_t nb = 0;
        vd_error *err = NULL;
        ret = qcow2_snapshots_decode_ex(buf, len, s->nb_snapshots, &s->h, s->name, &opts,
                                        &snaps, &nb, &s->snapshots_len, NULL, &err);
        free(buf);
        if (ret == -ERANGE && len < avail) {
            vd_error_free(err);
            len *= 4;
            continue;
        }
        if (ret < 0) {
            if (errp && !*errp) {
                *errp = err;
            } else {
                vd_error_free(err);
            }
            return ret;
        }
        s->snap_l1 = calloc(nb ? nb : 1, sizeof(*s->snap_l1));
        if (!s->snap_l1) {
            abort();
        }
        s->nb_snap_l1 = 0;
        for (uint32_t i = 0; i < nb; i++) {
            uint64_t off = snaps[i].l1_table_offset;
            uint64_t bytes = (uint64_t)snaps[i].l1_size * 8;
            if (snaps[i].extra_data_size < s->min_snap_extra) {
                s->min_snap_extra = snaps[i].extra_data_size;
            }
            if ((off & (s->cluster_size - 1)) || bytes > QCOW2_MAX_L1_BYTES || !bytes) {
                continue;
            }
            s->snap_l1[s->nb_snap_l1].offset = off;
            s->snap_l1[s->nb_snap_l1].len = bytes;
            s->nb_snap_l1++;
        }
        qcow2_snapshots_free(snaps, nb);
        return 0;
    }
}

static int load_l1(qcow2_state *s, vd_error **errp)
{
    uint64_t n = s->h.l1_size;
    uint64_t bytes = n * 8;
    size_t chunks = (size_t)((bytes + 4095) / 4096);
    s->l1 = calloc(n ? n : 1, sizeof(*s->l1));
    s->l1_dirty = calloc(chunks ? chunks : 1, 1);
    if (!s->l1 || !s->l1_dirty) {
        abort();
    }
    s->l1_size = (uint32_t)n;
    s->l1_offset = s->h.l1_table_offset;
    s->l1_nb_dirty = 0;
    if (!n) {
        return 0;
    }
    uint8_t *raw = malloc(bytes);
    if (!raw) {
        abort();
    }
    int ret = vd_node_pread(s->file, raw, bytes, s->l1_offset);
    if (ret < 0) {
        free(raw);
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not read the L1 table at 0x%"
                            PRIx64 ": %s", s->name, s->l1_offset, strerror(-ret));
    }
    for (uint64_t i = 0; i < n; i++) {
        s->l1[i] = vd_be64(raw + i * 8);
    }
    free(raw);
    return 0;
}

/* Derives the geometry from a decoded header. */
static void set_geometry(qcow2_state *s)
{
    const qcow2_header *h = &s->h;
    s->cluster_bits = h->cluster_bits;
    s->cluster_size = 1ull << h->cluster_bits;
    s->extl2 = qcow2_has_extl2(h);
    s->l2e_size = s->extl2 ? 16 : 8;
    s->l2_bits = h->cluster_bits - (s->extl2 ? 4 : 3);
    s->l2_entries = 1ull << s->l2_bits;
    s->sc_bits = s->extl2 ? h->cluster_bits - 5 : h->cluster_bits;
    s->sc_size = 1ull << s->sc_bits;
    s->slice_size = s->cluster_size < QCOW2_SLICE_MAX ? (uint32_t)s->cluster_size
                                                       : QCOW2_SLICE_MAX;
    s->l2_slice_entries = s->slice_size / s->l2e_size;
    s->refcount_order = h->refcount_order;
    s->rb_bits = h->cluster_bits + 3 - h->refcount_order;
    s->refcount_max = h->refcount_order == 6 ? UINT64_MAX : (1ull << (1u << h->refcount_order)) - 1;
    s->dirty_on_disk = (h->incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
    s->dirty_ours = false;
}

/* VD_OPEN_CHECK: only the header, decoded as leniently as the check itself does, so that
 * images whose tables are unusable still reach the check, which loads them itself. Tables
 * stay unloaded and the node refuses I/O (broken) until a repair reloads it fully. */
static int load_header_check(qcow2_state *s, vd_error **errp)
{
    free_tables(s);
    uint64_t file_len;
    int ret = qcow2_header_read_check(s->file, s->name, &s->h, &file_len, errp);
    if (ret < 0) {
        return ret;
    }
    set_geometry(s);
    s->broken = true;
    return 0;
}

/* Reads header and tables and sets up the geometry and caches. */
static int load_image(qcow2_state *s, vd_error **errp)
{
    free_tables(s);
    int64_t flen = vd_node_file_length(s->file);
    if (flen < 0) {
        return vd_error_set(errp, VD_ERR_IO, (int)-flen, "%s: could not get the file length: "
                            "%s", s->name, strerror((int)-flen));
    }
    uint64_t file_len = (uint64_t)flen;
    int ret = read_header(s, file_len, errp);
    if (ret < 0) {
        return ret;
    }
    set_geometry(s);

    ret = load_snapshots(s, file_len, errp);
    if (ret == 0) {
        ret = load_l1(s, errp);
    }
    if (ret == 0) {
        ret = qcow2_refcount_load(s, errp);
    }
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_read_options(s, s->node->options, errp);
    if (ret < 0) {
        return ret;
    }
    s->l2_cache = qcow2_cache_new("L2", true, s->slice_size, s->l2_cache_bytes);
    s->rb_cache = qcow2_cache_new("refcount", false, s->slice_size, s->rb_cache_bytes);
    qcow2_cache_set_clean_interval(s->l2_cache, s->cache_clean_interval);
    qcow2_cache_set_clean_interval(s->rb_cache, s->cache_clean_interval);
    s->rb_unsynced = false;
    s->free_hint = 0;
    s->free_byte_offset = 0;
    s->zero_from = (file_len + s->cluster_size - 1) & ~(s->cluster_size - 1);
    s->headroom_checked = false;
    s->loaded = true;
    return 0;
}

/* ---- open / close -------------------------------------------------------------------- */

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    if (len >= 8 && vd_be32(buf) == QCOW2_MAGIC && vd_be32(buf + 4) >= 2) {
        return 100;
    }
    return 0;
}

static void state_free(qcow2_state *s)
{
    free_tables(s);
    free(s->own_zeros);
    free(s->frees);
    qcow2_bitmaps_free(s);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

static void set_node_backing_names(qcow2_state *s)
{
    free(s->node->backing_filename);
    free(s->node->backing_format);
    s->node->backing_filename = vd_xstrdup(s->h.backing_file);
    s->node->backing_format = vd_xstrdup(s->h.backing_format);
}

/* What a close writes: the persistent bitmaps (if that fails they stay flagged in use in
 * the image: inconsistent, never trusted, for the next reader), then a flush. */
static void store_and_flush(qcow2_state *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->writable && !s->broken && !s->check_only) {
        qcow2_bitmaps_store(s);
    }
    if (s->writable && !s->broken) {
        int ret = qcow2_flush_locked(s);
        if (ret == 0 && s->dirty_ours) {
            qcow2_mark_clean_locked(s);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

static int qcow2_open(vd_node *node, unsigned flags, vd_error **errp)
{
    qcow2_state *s = calloc(1, sizeof(*s));
    if (!s) {
        abort();
    }
    s->node = node;
    s->file = node->file;
    s->name = node->filename;
    s->writable = (flags & VD_OPEN_RDWR) != 0;
    s->break_ordering = node->engine && node->engine->break_write_ordering;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->check_only = (flags & VD_OPEN_CHECK) != 0;

    int ret = s->check_only ? load_header_check(s, errp) : load_image(s, errp);
    if (ret < 0) {
        goto fail;
    }
    if ((s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) && s->writable &&
        !(flags & VD_OPEN_CHECK)) {
        ret = vd_error_set(errp, VD_ERR_CORRUPT, EACCES,
                           "qcow2: Image is corrupt; cannot be opened read/write");
        goto fail;
    }
    if ((s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) && s->writable &&
        !(flags & (VD_OPEN_CHECK | VD_OPEN_NO_REPAIR))) {
        /* Lazy refcounts were not written back: rebuild them, as QEMU does silently. */
        vd_check_result res;
        memset(&res, 0, sizeof(res));
        free_tables(s);
        ret = qcow2_check_image(s->file, s->name, VD_FIX_LEAKS | VD_FIX_ERRORS, NULL, &res,
                                errp);
        vd_check_result_clear(&res);
        if (ret < 0) {
            vd_error_prepend(errp, "%s: Could not repair dirty image", s->name);
            goto fail;
        }
        ret = load_image(s, errp);
        if (ret < 0) {
            goto fail;
        }
        if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
            ret = vd_error_set(errp, VD_ERR_CORRUPT, EIO, "%s: Could not repair dirty image: "
                               "the dirty bit is still set", s->name);
            goto fail;
        }
    }
    /* Autoclear bits name extensions a writer keeps consistent: the ones we do not know
     * go (QEMU's rule). A bitmaps bit without its extension goes too. */
    uint64_t kept_autoclear = QCOW2_AUTOCLEAR_KNOWN;
    if (!s->h.has_bitmaps_ext) {
        kept_autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    }
    if (s->writable && (s->h.autoclear_features & ~kept_autoclear)) {
        s->h.autoclear_features &= kept_autoclear;
        ret = qcow2_write_header(s);
        if (ret < 0) {
            ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not update the header: %s",
                               s->name, strerror(-ret));
            goto fail;
        }
    }
    node->size = s->h.size;
    node->request_alignment = 1;
    if (!s->check_only) {
        /* Before any write: a read-write open flags the bitmaps in use first. */
        ret = qcow2_bitmaps_load(s, errp);
        if (ret < 0) {
            vd_node_free_bitmaps(node);
            goto fail;
        }
    }
    node->opaque = s;
    set_node_backing_names(s);
    /* A backing given in the options counts even when the image names none (QEMU). */
    if (s->h.backing_file || (node->options && vd_tree_get(node->options, "backing"))) {
        ret = vd_node_open_backing(node, s->h.backing_file, s->h.backing_format, errp);
        if (ret < 0) {
            /* The bitmaps were flagged in use: a failed open stores them back, as QEMU's
             * close of a half-open image does, or they would come back inconsistent. */
            store_and_flush(s);
            vd_node_free_bitmaps(node);
            node->opaque = NULL;
            goto fail;
        }
    }
    return 0;

fail:
    state_free(s);
    return ret;
}

static void qcow2_close(vd_node *node)
{
    qcow2_state *s = node->opaque;
    if (!s) {
        return;
    }
    store_and_flush(s);
    state_free(s);
    node->opaque = NULL;
}

/* ---- control ops --------------------------------------------------------------------- */

static int qcow2_get_info(vd_node *node, vd_image_info *info, vd_error **errp)
{
    (void)errp;
    qcow2_state *s = node->opaque;
    pthread_mutex_lock(&s->lock);
    info->has_cluster_size = true;
    info->cluster_size = s->cluster_size;
    info->has_dirty_flag = true;
    info->dirty_flag = (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
    info->encrypted = s->h.crypt_method != 0;
    info->is_qcow2 = true;
    snprintf(info->compat, sizeof(info->compat), "%s", s->h.version >= 3 ? "1.1" : "0.10");
    snprintf(info->compression_type, sizeof(info->compression_type), "%s",
             s->h.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    info->lazy_refcounts = (s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    info->refcount_bits = 1u << s->refcount_order;
    info->corrupt = (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) != 0;
    info->extended_l2 = s->extl2;
    info->nb_snapshots = (int)s->nb_snapshots;
    uint32_t version = s->h.version;
    pthread_mutex_unlock(&s->lock);
    if (version >= 3) {
        info->has_bitmaps = true;
        return qcow2_bitmaps_info(s, &info->bitmaps, &info->nb_bitmaps);
    }
    return 0;
}

static int64_t qcow2_allocated_size(vd_node *node)
{
    vd_node *f = node->file;
    if (!f || !f->drv->allocated_size) {
        return -ENOTSUP;
    }
    return f->drv->allocated_size(f);
}

/* After a check of a VD_OPEN_CHECK node: a successful repair may have made the image
 * loadable, so try a full load; otherwise (or if that fails) keep the header-only state.
 * Never an error: the check's result is what the caller asked for. */
static void check_only_reload(qcow2_state *s, unsigned fix, int check_ret)
{
    vd_error *err = NULL;
    if (fix && check_ret == 0 && load_image(s, &err) == 0) {
        s->broken = false;
        s->node->size = s->h.size;
        return;
    }
    vd_error_free(err);
    err = NULL;
    if (fix && load_header_check(s, &err) == 0) {
        s->node->size = s->h.size;
    }
    vd_error_free(err);
    s->broken = true;
}

static int qcow2_check(vd_node *node, unsigned fix, const vd_check_hooks *hooks,
                       vd_check_result *res, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    if (fix && !s->writable) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: the image must be opened "
                            "read/write to repair it", s->name);
    }
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = 0;
    if (s->writable && !s->broken) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not flush before the check: %s",
                           s->name, strerror(-ret));
        goto out;
    }
    if (s->loaded) {
        qcow2_cache_drop_all(s->l2_cache);
        qcow2_cache_drop_all(s->rb_cache);
    }
    ret = qcow2_check_image(s->file, s->name, fix, hooks, res, errp);
    if (s->check_only) {
        check_only_reload(s, fix, ret);
        goto out;
    }
    /* Whatever happened, the file is the truth now. */
    vd_error *err = NULL;
    int r = load_image(s, &err);
    if (r < 0) {
        s->broken = true;
        if (ret == 0) {
            ret = r;
            if (errp && !*errp) {
                *errp = err;
                err = NULL;
            }
        }
        vd_error_free(err);
    } else {
        s->broken = false;
        node->size = s->h.size;
    }
out:
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_set_backing_locked(qcow2_state *s, const char *backing, const char *fmt,
                             vd_error **errp)
{
    if (backing && strlen(backing) > QCOW2_MAX_BACKING_NAME) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: backing file name too long "
                            "(%zu bytes, at most %d)", s->name, strlen(backing),
                            QCOW2_MAX_BACKING_NAME);
    }
    if (fmt && !backing) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: a backing format needs a "
                            "backing file", s->name);
    }
    if (fmt && strlen(fmt) > QCOW2_MAX_BACKING_FMT) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: backing format name '%s' is "
                            "too long", s->name, fmt);
    }
    char *old_file = s->h.backing_file;
    char *old_fmt = s->h.backing_format;
    s->h.backing_file = vd_xstrdup(backing);
    s->h.backing_format = vd_xstrdup(fmt);
    int ret = qcow2_write_header(s);
    if (ret < 0) {
        free(s->h.backing_file);
        free(s->h.backing_format);
        s->h.backing_file = old_file;
        s->h.backing_format = old_fmt;
        if (ret == -EFBIG) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: the backing file name "
                                "does not fit in the header cluster", s->name);
        }
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not update the header: %s",
                            s->name, strerror(-ret));
    }
    free(old_file);
    free(old_fmt);
    set_node_backing_names(s);
    return 0;
}

static int qcow2_set_backing(vd_node *node, const char *backing, const char *fmt,
                             vd_error **errp)
{
    qcow2_state *s = node->opaque;
    if (!s->writable || s->broken) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: image is read-only", s->name);
    }
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = qcow2_set_backing_locked(s, backing, fmt, errp);
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Read-write: what a read-write open does to a clean image (unknown autoclear bits go,
 * bitmaps are flagged in use); read-only: what a close writes (bitmaps stored, flushed,
 * a dirty bit we set cleared). A corrupt image stays read-only, as QEMU refuses it. */
static int qcow2_reopen_rw(vd_node *node, bool rw, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    if (s->check_only) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "%s: opened for a check",
                            s->name);
    }
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = 0;
    if (rw && !s->writable) {
        if (s->broken || (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
            ret = vd_error_set(errp, VD_ERR_CORRUPT, EACCES,
                               "qcow2: Image is corrupt; cannot be opened read/write");
            goto out;
        }
        s->writable = true;
        uint64_t kept = QCOW2_AUTOCLEAR_KNOWN;
        if (!s->h.has_bitmaps_ext) {
            kept &= ~QCOW2_AUTOCLEAR_BITMAPS;
        }
        if (s->h.autoclear_features & ~kept) {
            s->h.autoclear_features &= kept;
            ret = qcow2_write_header(s);
        }
        if (ret == 0) {
            ret = qcow2_bitmaps_mark_in_use(s);
        }
        if (ret < 0) {
            s->writable = false;
            ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not update the header: %s",
                               s->name, strerror(-ret));
        }
    } else if (!rw && s->writable) {
        if (!s->broken) {
            qcow2_bitmaps_store(s);
            ret = qcow2_flush_locked(s);
            if (ret == 0 && s->dirty_ours) {
                ret = qcow2_mark_clean_locked(s);
            }
        }
        if (ret < 0) {
            ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not flush: %s", s->name,
                               strerror(-ret));
        } else {
            s->writable = false;
        }
    }
out:
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int qcow2_truncate(vd_node *node, uint64_t size, bool shrink, const char *prealloc,
                          vd_error **errp)
{
    qcow2_state *s = node->opaque;
    if (!s->writable || s->broken) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: image is read-only", s->name);
    }
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = qcow2_truncate_locked(s, size, shrink, prealloc, errp);
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int qcow2_make_empty(vd_node *node, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    if (!s->writable || s->broken) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: image is read-only", s->name);
    }
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = qcow2_make_empty_locked(s, errp);
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- driver table ---------------------------------------------------------------------- */

/* ---- I/O entry points ---------------------------------------------------------------- */

/* The tables are absent on a VD_OPEN_CHECK node (and after a failed reload): refuse I/O
 * rather than let the request path touch them. */
static bool tables_ready(vd_node *node)
{
    qcow2_state *s = node->opaque;
    pthread_mutex_lock(&s->lock);
    bool ok = s->loaded;
    pthread_mutex_unlock(&s->lock);
    if (!ok) {
        vd_node_set_error(s->node, "%s: the image metadata is not loaded (opened for check only)",
                        s->name);
    }
    return ok;
}

static int qcow2_pread_op(vd_node *node, void *buf, uint64_t len, uint64_t off)
{
    return tables_ready(node) ? qcow2_pread(node, buf, len, off) : -EIO;
}

static int qcow2_pwrite_op(vd_node *node, const void *buf, uint64_t len, uint64_t off,
                           unsigned flags)
{
    return tables_ready(node) ? qcow2_pwrite(node, buf, len, off, flags) : -EIO;
}

static int qcow2_pwrite_zeroes_op(vd_node *node, uint64_t off, uint64_t len, unsigned flags)
{
    return tables_ready(node) ? qcow2_pwrite_zeroes(node, off, len, flags) : -EIO;
}

static int qcow2_pdiscard_op(vd_node *node, uint64_t off, uint64_t len)
{
    return tables_ready(node) ? qcow2_pdiscard(node, off, len) : -EIO;
}

static int qcow2_pwrite_compressed_op(vd_node *node, const void *buf, uint64_t len,
                                      uint64_t off, int level)
{
    return tables_ready(node) ? qcow2_pwrite_compressed(node, buf, len, off, level) : -EIO;
}

static int qcow2_block_status_op(vd_node *node, uint64_t off, uint64_t len, vd_node_status *st)
{
    return tables_ready(node) ? qcow2_block_status(node, off, len, st) : -EIO;
}

const vd_driver vd_qcow2_driver = {
    .name = "qcow2",
    .is_format = true,
    .runtime_opts = qcow2_runtime_opts,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .pread = qcow2_pread_op,
    .pwrite = qcow2_pwrite_op,
    .pwrite_zeroes = qcow2_pwrite_zeroes_op,
    .pdiscard = qcow2_pdiscard_op,
    .pwrite_compressed = qcow2_pwrite_compressed_op,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status_op,
    .truncate = qcow2_truncate,
    .get_info = qcow2_get_info,
    .bitmap_can_store = qcow2_bitmap_can_store,
    .bitmap_remove_stored = qcow2_bitmap_remove_stored,
    .check = qcow2_check,
    .amend = qcow2_amend,
    .set_backing = qcow2_set_backing,
    .reopen_rw = qcow2_reopen_rw,
    .make_empty = qcow2_make_empty,
    .allocated_size = qcow2_allocated_size,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_create_prepare = qcow2_snapshot_create_prepare,
    .snapshot_delete_prepare = qcow2_snapshot_delete_prepare,
    .snapshot_commit = qcow2_snapshot_commit,
    .snapshot_abort = qcow2_snapshot_abort,
    .snapshot_clean = qcow2_snapshot_clean,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .vmstate_rw = qcow2_vmstate_rw,
    .create = qcow2_create,
    .create_options = qcow2_create_options,
    .nb_create_options = QCOW2_NB_CREATE_OPTIONS,
    .measure = qcow2_measure,
};
