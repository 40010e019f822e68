/* qcow2: changing the refcount width (amend -o refcount_bits=N). A new refcount table and
 * new refcount blocks of the new width are written past everything in use, counting
 * themselves and no longer counting the old ones; once they are durable, one header write
 * switches to them. A crash before that switch leaves the old structures in charge and the
 * new ones as unreferenced bytes past the end; after it, the old structures are free
 * clusters. All calls hold the metadata lock. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

/* Reads every refcount below `end` clusters into rc[], checking each fits the new width. */
static int collect_refcounts(qcow2_state *s, uint32_t order, uint64_t end, uint64_t *rc,
                             vd_error **errp)
{
    uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
    for (uint64_t c = 0; c < end; c++) {
        int ret = qcow2_get_refcount(s, c, &rc[c]);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not read a refcount: %s",
                                s->name, strerror(-ret));
        }
        if (rc[c] > max) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot decrease refcount entry "
                                "width to %u bits: Cluster at offset %#" PRIx64 " has a "
                                "refcount of %" PRIu64, 1u << order, c << s->cluster_bits,
                                rc[c]);
        }
    }
    /* The old table and blocks are no longer referenced once the header switches. */
    for (uint32_t i = 0; i < s->reftable_clusters; i++) {
        uint64_t c = (s->reftable_offset >> s->cluster_bits) + i;
        if (c < end) {
            rc[c] = 0;
        }
    }
    for (size_t i = 0; i < s->nb_refblocks; i++) {
        uint64_t c = s->refblocks[i] >> s->cluster_bits;
        if (c < end) {
            rc[c] = 0;
        }
    }
    return 0;
}

/* Writes nb refcount blocks at cluster `first` and the table right after them. */
static int write_structures(qcow2_state *s, uint32_t order, const uint64_t *rc, uint64_t end,
                            uint64_t first, uint64_t nb, uint64_t nt)
{
    uint64_t cs = s->cluster_size;
    uint64_t per_block = (cs * 8) >> order;
    uint8_t *buf = malloc(cs);
    uint8_t *table = calloc(nt, cs);
    if (!buf || !table) {
        free(buf);
        free(table);
        return -ENOMEM;
    }
    int ret = 0;
    for (uint64_t b = 0; b < nb && ret == 0; b++) {
        memset(buf, 0, cs);
        for (uint64_t i = 0; i < per_block; i++) {
            uint64_t c = b * per_block + i;
            /* The new structures themselves, then what the old ones counted. */
            uint64_t v = c >= first && c < first + nb + nt ? 1 : c < end ? rc[c] : 0;
            if (v) {
                qcow2_refcount_set(buf, order, i, v);
            }
        }
        uint64_t off = (first + b) * cs;
        vd_put_be64(table + b * 8, off);
        vd_node_event(s->file, "refblock_update");
        ret = vd_node_pwrite(s->file, buf, cs, off, 0);
    }
    if (ret == 0) {
        vd_node_event(s->file, "refblock_update");
        ret = vd_node_pwrite(s->file, table, nt * cs, (first + nb) * cs, 0);
    }
    free(buf);
    free(table);
    return ret;
}

int qcow2_change_refcount_order_locked(qcow2_state *s, uint32_t order, vd_error **errp)
{
    uint64_t cs = s->cluster_size;
    int ret = qcow2_flush_locked(s);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not flush: %s", s->name,
                            strerror(-ret));
    }
    int64_t flen = vd_node_file_length(s->file);
    if (flen < 0) {
        return vd_error_set(errp, VD_ERR_IO, (int)-flen, "%s: %s", s->name,
                            strerror((int)-flen));
    }
    /* The new structures go past everything ever written. */
    uint64_t end = div_up((uint64_t)flen > s->zero_from ? (uint64_t)flen : s->zero_from, cs);

    /* How many blocks and table clusters: they must also count themselves. */
    uint64_t per_block = (cs * 8) >> order;
    uint64_t nb = 0, nt = 0;
    for (;;) {
        uint64_t nb2 = div_up(end + nb + nt, per_block);
        uint64_t nt2 = div_up(nb2 * 8, cs);
        if (nb2 == nb && nt2 == nt) {
            break;
        }
        nb = nb2;
        nt = nt2;
    }
    if (nt * cs > QCOW2_MAX_REFTABLE_BYTES) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "This operation would make the "
                            "refcount table grow beyond the maximum size supported by QEMU, "
                            "aborting");
    }

    uint64_t *rc = calloc(end ? end : 1, sizeof(*rc));
    if (!rc) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory for %" PRIu64
                            " refcounts", s->name, end);
    }
    ret = collect_refcounts(s, order, end, rc, errp);
    if (ret < 0) {
        free(rc);
        return ret;
    }
    ret = write_structures(s, order, rc, end, end, nb, nt);
    free(rc);
    if (ret == 0) {
        ret = qcow2_sync(s);
    }
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not write the new refcount "
                            "structures: %s", s->name, strerror(-ret));
    }

    /* The switch: order, table offset and size sit in the header's first sector. */
    qcow2_header old = s->h;
    s->h.refcount_order = order;
    s->h.refcount_table_offset = (end + nb) * cs;
    s->h.refcount_table_clusters = (uint32_t)nt;
    ret = qcow2_write_header(s);
    if (ret < 0) {
        s->h = old;
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not update the header: %s",
                            s->name, strerror(-ret));
    }

    /* The cache holds old-width slices, all clean after the flush above. */
    qcow2_cache_drop_all(s->rb_cache);
    s->refcount_order = order;
    s->rb_bits = s->cluster_bits + 3 - order;
    s->refcount_max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
    s->zero_from = (end + nb + nt) * cs;
    s->free_hint = 0;
    s->headroom_checked = false;
    ret = qcow2_refcount_load(s, errp);
    if (ret < 0) {
        s->broken = true;  /* the file is right, our view of it is not: no more writes */
    }
    return ret;
}
