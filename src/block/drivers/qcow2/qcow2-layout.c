/* The preallocated qcow2 layout and `measure`. One function sizes the metadata (header,
 * reftable, refblocks, L1, every L2 table) for a virtual size; the writer puts all of it in
 * one contiguous region at the front of the file with the data clusters behind it in guest
 * order, generated arithmetically into large buffers and written sequentially. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-layout.h"

#define WRITE_CHUNK (8u << 20)

static uint64_t div_round_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

uint64_t qcow2_refcount_fixed_point(uint64_t clusters, uint32_t cluster_bits,
                                    uint32_t refcount_order, bool generous,
                                    uint64_t *refblocks, uint64_t *table_clusters)
{
    uint64_t per_table_cluster = (1ull << cluster_bits) / 8;
    uint64_t per_block = (1ull << cluster_bits) * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, n = 0, last;

    /* Same iteration as QEMU so measure agrees with qemu-img to the byte: the refcount
     * structures must also count themselves, so grow until nothing changes. */
    do {
        last = n;
        blocks = div_round_up(clusters + table + blocks, per_block);
        table = div_round_up(blocks, per_table_cluster);
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += div_round_up(table, 2);
            n = 0;
            generous = false;
        }
    } while (n != last);

    if (refblocks) {
        *refblocks = blocks;
    }
    if (table_clusters) {
        *table_clusters = table;
    }
    return blocks + table;
}

int qcow2_layout_compute(uint64_t size, uint32_t cluster_bits, uint32_t refcount_order,
                         bool extl2, qcow2_layout *l)
{
    memset(l, 0, sizeof(*l));
    l->cluster_bits = cluster_bits;
    l->refcount_order = refcount_order;
    l->extl2 = extl2;
    l->cluster_size = 1ull << cluster_bits;
    l->l2_entries = l->cluster_size / (extl2 ? 16 : 8);
    l->data_clusters = (size >> cluster_bits) + ((size & (l->cluster_size - 1)) != 0);
    l->l1_size = div_round_up(l->data_clusters, l->l2_entries);
    if (l->l1_size > QCOW2_MAX_L1_BYTES / 8) {
        return -EFBIG;
    }
    l->l1_clusters = div_round_up(l->l1_size * 8, l->cluster_size);

    uint64_t fixed = 1 + l->l1_clusters + l->l1_size + l->data_clusters;
    qcow2_refcount_fixed_point(fixed, cluster_bits, refcount_order, false, &l->refblocks,
                               &l->reftable_clusters);
    l->reftable_start = 1;
    l->refblock_start = l->reftable_start + l->reftable_clusters;
    l->l1_start = l->refblock_start + l->refblocks;
    l->l2_start = l->l1_start + l->l1_clusters;
    l->data_start = l->l2_start + l->l1_size;
    l->total_clusters = l->data_start + l->data_clusters;
    if (l->reftable_clusters * l->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        return -E2BIG;
    }
    return 0;
}

/* Fills one metadata cluster (index c < data_start) of the layout into out. */
static void fill_cluster(const qcow2_layout *l, const uint8_t *header, const uint8_t *ones,
                         uint64_t c, uint8_t *out)
{
    uint64_t cs = l->cluster_size;
    uint64_t per_cluster = cs / 8;

    if (c == 0) {
        memcpy(out, header, cs);
    } else if (c < l->refblock_start) {
        uint64_t first = (c - l->reftable_start) * per_cluster;
        memset(out, 0, cs);
        for (uint64_t j = 0; j < per_cluster && first + j < l->refblocks; j++) {
            vd_put_be64(out + j * 8, (l->refblock_start + first + j) << l->cluster_bits);
        }
    } else if (c < l->l1_start) {
        uint64_t per_block = cs * 8 >> l->refcount_order;
        uint64_t first = (c - l->refblock_start) * per_block;
        if (first + per_block <= l->total_clusters) {
            memcpy(out, ones, cs);
        } else {
            memset(out, 0, cs);
            for (uint64_t j = 0; first + j < l->total_clusters; j++) {
                qcow2_refcount_set(out, l->refcount_order, j, 1);
            }
        }
    } else if (c < l->l2_start) {
        uint64_t first = (c - l->l1_start) * per_cluster;
        memset(out, 0, cs);
        for (uint64_t j = 0; j < per_cluster && first + j < l->l1_size; j++) {
            uint64_t l2 = (l->l2_start + first + j) << l->cluster_bits;
            vd_put_be64(out + j * 8, l2 | QCOW2_OFLAG_COPIED);
        }
    } else {
        /* Preallocated like QEMU's metadata mode: NORMAL + COPIED, no zero flag; with
         * extended L2 the subcluster bitmap stays 0. */
        uint64_t first = (c - l->l2_start) * l->l2_entries;
        uint64_t esize = l->extl2 ? 16 : 8;
        memset(out, 0, cs);
        for (uint64_t j = 0; j < l->l2_entries && first + j < l->data_clusters; j++) {
            uint64_t host = (l->data_start + first + j) << l->cluster_bits;
            vd_put_be64(out + j * esize, host | QCOW2_OFLAG_COPIED);
        }
    }
}

int qcow2_layout_write(vd_node *file, const qcow2_layout *l, qcow2_header *h,
                       const char *mode, vd_error **errp)
{
    uint64_t cs = l->cluster_size;
    uint8_t *header = calloc(1, cs);
    uint8_t *ones = calloc(1, cs);
    size_t chunk = WRITE_CHUNK > cs ? WRITE_CHUNK : cs;
    uint8_t *buf = malloc(chunk);
    int ret = 0;

    if (!header || !ones || !buf) {
        ret = vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", file->filename);
        goto out;
    }

    h->l1_size = (uint32_t)l->l1_size;
    h->l1_table_offset = l->l1_size ? l->l1_start << l->cluster_bits : 0;
    h->refcount_table_offset = l->reftable_start << l->cluster_bits;
    h->refcount_table_clusters = (uint32_t)l->reftable_clusters;
    ret = qcow2_header_encode(h, header, cs);
    if (ret < 0) {
        ret = vd_error_set(errp, VD_ERR_INVALID, -ret, "%s: the qcow2 header does not fit "
                           "in one cluster", file->filename);
        goto out;
    }
    for (uint64_t j = 0; j < (cs * 8 >> l->refcount_order); j++) {
        qcow2_refcount_set(ones, l->refcount_order, j, 1);
    }

    /* The whole metadata region, in large sequential writes. */
    uint64_t per_chunk = chunk / cs;
    for (uint64_t c = 0; c < l->data_start; c += per_chunk) {
        uint64_t n = l->data_start - c < per_chunk ? l->data_start - c : per_chunk;
        for (uint64_t i = 0; i < n; i++) {
            fill_cluster(l, header, ones, c + i, buf + i * cs);
        }
        ret = vd_node_pwrite(file, buf, n * cs, c * cs, 0);
        if (ret < 0) {
            ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not write qcow2 metadata: "
                               "%s", file->filename, strerror(-ret));
            goto out;
        }
    }

    /* The data area: holes, fallocated space, or written zeros (the file driver does the
     * last two for the range past the current end of the file). */
    const char *file_mode = strcmp(mode, "metadata") == 0 ? "off" : mode;
    ret = vd_node_truncate(file, l->total_clusters * cs, false, file_mode, errp);
    if (ret < 0) {
        /* The file driver names the file in its own words; other protocols (NBD) do not. */
        if (strcmp(file->drv->name, "file")) {
            vd_error_prepend(errp, "Could not resize image");
        }
        goto out;
    }
    ret = vd_node_flush(file);
    if (ret < 0) {
        ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not flush: %s", file->filename,
                           strerror(-ret));
    }
out:
    free(header);
    free(ones);
    free(buf);
    return ret;
}

/* Options measure understands; the rest of the create options are accepted and unused. */
static int measure_opts(const vd_opts *opts, uint32_t *cluster_bits, uint32_t *order,
                        bool *extl2, const char **prealloc, bool *backing, vd_error **errp)
{
    static const char *const known[] = {
        "backing_file", "backing_fmt", "cluster_size", "compat", "compression_type",
        "extended_l2", "lazy_refcounts", "preallocation", "refcount_bits", "size",
        "encryption", "encrypt.format",
    };
    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        const char *k = vd_opts_key(opts, i);
        bool ok = false;
        for (size_t j = 0; j < sizeof(known) / sizeof(known[0]); j++) {
            ok = ok || strcmp(k, known[j]) == 0;
        }
        if (!ok) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'", k);
        }
    }

    int ret = vd_opts_get_bool(opts, "extended_l2", false, extl2, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t cs;
    ret = vd_opts_get_size(opts, "cluster_size", 65536, &cs, errp);
    if (ret < 0) {
        return ret;
    }
    if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)) != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cluster size must be a power of "
                            "two between 512 and 2048k");
    }
    if (*extl2 && cs < 16384) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Extended L2 entries are only "
                            "supported with cluster sizes of at least 16384 bytes");
    }
    *cluster_bits = (uint32_t)__builtin_ctzll(cs);

    const char *compat = vd_opts_get(opts, "compat");
    int version = 3;
    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))) {
        version = 2;
    } else if (compat && strcmp(compat, "1.1") != 0 && strcmp(compat, "v3") != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "Invalid compatibility level: '%s'", compat);
    }

    const char *rb = vd_opts_get(opts, "refcount_bits");
    uint64_t bits = 16;
    if (rb) {
        char *end = NULL;
        bits = strtoull(rb, &end, 0);
        if (end == rb || *end != '\0') {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                                "Parameter 'refcount_bits' expects a number");
        }
    }
    if (bits == 0 || bits > 64 || (bits & (bits - 1)) != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Refcount width must be a power of "
                            "two and may not exceed 64 bits");
    }
    if (version < 3 && bits != 16) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Different refcount widths than 16 "
                            "bits require compatibility level 1.1 or above (use compat=1.1 or "
                            "greater)");
    }
    *order = (uint32_t)__builtin_ctzll(bits);

    *prealloc = vd_opts_get(opts, "preallocation");
    if (!*prealloc) {
        *prealloc = "off";
    }
    if (strcmp(*prealloc, "off") && strcmp(*prealloc, "metadata") &&
        strcmp(*prealloc, "falloc") && strcmp(*prealloc, "full")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "Parameter 'preallocation' does not accept value '%s'", *prealloc);
    }
    *backing = vd_opts_get(opts, "backing_file") != NULL;

    const char *enc = vd_opts_get(opts, "encrypt.format");
    bool encryption = false;
    ret = vd_opts_get_bool(opts, "encryption", false, &encryption, errp);
    if (ret < 0) {
        return ret;
    }
    if (enc || encryption) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "encrypted images are not supported");
    }
    return 0;
}

int qcow2_measure(const vd_opts *opts, uint64_t size, vd_disk *src, vd_measure_result *res,
                  vd_error **errp)
{
    uint32_t cluster_bits = 16, order = 4;
    bool extl2 = false, backing = false;
    const char *prealloc = "off";
    qcow2_layout l;

    memset(res, 0, sizeof(*res));
    int ret = measure_opts(opts, &cluster_bits, &order, &extl2, &prealloc, &backing, errp);
    if (ret < 0) {
        return ret;
    }
    ret = vd_opts_get_size(opts, "size", size == UINT64_MAX ? 0 : size, &size, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t cs = 1ull << cluster_bits;
    if (src) {
        size = vd_disk_size(src);
    }
    if (size > INT64_MAX - cs) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "The image size is too large (try "
                            "using a larger cluster size)");
    }
    uint64_t virtual_size = (size + cs - 1) & ~(cs - 1);
    if (qcow2_layout_compute(virtual_size, cluster_bits, order, extl2, &l) == -EFBIG) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "The image size is too large (try "
                            "using a larger cluster size)");
    }

    /* Data the copy needs, counted as qemu-img does: whole clusters around every extent
     * that is allocated data in the source chain, nothing for zeros. */
    uint64_t required = 0;
    if (src && backing) {
        required = virtual_size;
    } else if (src) {
        uint64_t off = 0;
        while (off < size) {
            vd_extent st;
            ret = vd_block_status(src, off, size - off, &st);
            if (ret < 0) {
                return vd_error_set(errp, VD_ERR_IO, -ret, "Unable to get block status: %s",
                                    strerror(-ret));
            }
            uint64_t pnum = st.length ? st.length : size - off;
            if (st.flags & VD_BS_ZERO) {
                /* Skipped: zeros need no data cluster when there is no backing file. */
            } else if ((st.flags & (VD_BS_DATA | VD_BS_ALLOCATED)) ==
                       (VD_BS_DATA | VD_BS_ALLOCATED)) {
                uint64_t end = ((off + pnum + cs - 1) & ~(cs - 1));
                pnum = end - off;
                required += off % cs + pnum;
            }
            off += pnum;
        }
    }
    if (!strcmp(prealloc, "full") || !strcmp(prealloc, "falloc")) {
        required = virtual_size;
    }
    res->fully_allocated = l.total_clusters * cs;
    res->required = res->fully_allocated - virtual_size + required;
    return 0;
}
