/* qcow2 header codec: decodes and validates cluster 0 (header fields, extensions, backing
 * file name) and encodes it back exactly as QEMU 7.2 writes it. Also the small pure helpers
 * for refcount entries and compressed L2 descriptors. No I/O happens here. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-format.h"

#define FEATURE_ENTRY_LEN 48
#define FEATURE_NAME_LEN 46
#define BITMAPS_EXT_LEN 24
#define CRYPTO_EXT_LEN 16
/* QEMU's limits on the bitmaps extension. */
#define MAX_BITMAPS 65535
#define MAX_BITMAP_DIRECTORY_SIZE (1024u * 65535u)
/* sizeof(QCowSnapshotHeader) in QEMU, which it uses to bound nb_snapshots. */
#define SNAPSHOT_HEADER_LEN 40

/* The table QEMU writes into every v3 image with clusters larger than 4 KiB. */
static const struct {
    uint8_t type, bit;
    const char *name;
} feature_table[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        abort();
    }
    return p;
}

static char *dup_string(const uint8_t *p, size_t len)
{
    /* Image strings have no NUL; an embedded one ends the string, as in QEMU. */
    size_t n = strnlen((const char *)p, len);
    char *s = xmalloc(n + 1);
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

void qcow2_header_clear(qcow2_header *h)
{
    if (!h) {
        return;
    }
    free(h->unknown_fields);
    free(h->backing_file);
    free(h->backing_format);
    free(h->data_file);
    for (size_t i = 0; i < h->nb_unknown_exts; i++) {
        free(h->unknown_exts[i].data);
    }
    free(h->unknown_exts);
    free(h->feature_names);
    memset(h, 0, sizeof(*h));
}

/* Builds QEMU's "Unsupported qcow2 feature(s): ..." text: names from the image's own
 * feature table first, then the remaining bits as a hex mask. */
static int report_unsupported(const qcow2_header *h, const char *what, uint64_t mask,
                              vd_error **errp)
{
    char list[1024] = "";
    size_t used = 0;

    for (size_t i = 0; i < h->nb_feature_names && used < sizeof(list); i++) {
        uint8_t bit = h->feature_names[i].bit;
        if (h->feature_names[i].type != 0 || bit >= 64 || !(mask & (1ull << bit))) {
            continue;
        }
        int n = snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "",
                         h->feature_names[i].name);
        used += n > 0 ? (size_t)n : 0;
        mask &= ~(1ull << bit);
    }
    if (mask && used < sizeof(list)) {
        snprintf(list + used, sizeof(list) - used, "%sUnknown incompatible feature: %" PRIx64,
                 used ? ", " : "", mask);
    }
    return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                        "%s: Unsupported qcow2 feature(s): %s", what, list);
}

static int add_unknown_ext(qcow2_header *h, uint32_t type, const uint8_t *data, uint32_t len)
{
    qcow2_ext *n = h->unknown_exts;
    size_t nb = h->nb_unknown_exts;
    /* The array doubles when its count reaches a power of two: a hostile header packs
     * thousands of empty extensions into one cluster. */
    if ((nb & (nb - 1)) == 0) {
        n = realloc(n, (nb ? 2 * (size_t)nb : 1) * sizeof(*n));
        if (!n) {
            abort();
        }
        h->unknown_exts = n;
    }
    n[h->nb_unknown_exts].type = type;
    n[h->nb_unknown_exts].len = len;
    n[h->nb_unknown_exts].data = xmalloc(len);
    memcpy(n[h->nb_unknown_exts].data, data, len);
    h->nb_unknown_exts++;
    return 0;
}

static void decode_feature_table(qcow2_header *h, const uint8_t *p, uint32_t len)
{
    /* A last, partial entry counts, zero-padded (QEMU reads the table into a zeroed
     * buffer). */
    size_t n = (len + FEATURE_ENTRY_LEN - 1) / FEATURE_ENTRY_LEN;

    free(h->feature_names);
    h->feature_names = NULL;
    h->nb_feature_names = 0;
    if (n == 0) {
        return;
    }
    h->feature_names = xmalloc(n * sizeof(*h->feature_names));
    for (size_t i = 0; i < n; i++) {
        uint8_t e[FEATURE_ENTRY_LEN] = {0};
        size_t have = len - i * FEATURE_ENTRY_LEN;
        memcpy(e, p + i * FEATURE_ENTRY_LEN, have < sizeof(e) ? have : sizeof(e));
        if (e[2] == '\0') {
            /* QEMU stops at the first entry without a name. */
            break;
        }
        h->feature_names[i].type = e[0];
        h->feature_names[i].bit = e[1];
        size_t nl = strnlen((const char *)e + 2, FEATURE_NAME_LEN);
        memcpy(h->feature_names[i].name, e + 2, nl);
        h->feature_names[i].name[nl] = '\0';
        h->nb_feature_names = i + 1;
    }
}

/* Walks the extension area [start, end) of cluster 0 (c holds the whole cluster, zero
 * past the end of the file). With only_features, records the feature table and nothing
 * else and never fails (used to name unknown features before anything else is valid). */
static int walk_extensions(qcow2_header *h, const uint8_t *c, uint64_t start, uint64_t end,
                           bool only_features, const char *what, vd_error **errp)
{
    uint64_t off = start;

    while (off < end) {
        if (end - off < 8) {
            if (only_features) {
                return 0;
            }
            return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                "%s: Header extension too large", what);
        }
        uint32_t type = vd_be32(c + off);
        uint32_t len = vd_be32(c + off + 4);
        off += 8;
        if (len > end - off) {
            if (only_features) {
                return 0;
            }
            return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                "%s: Header extension too large", what);
        }
        const uint8_t *data = c + off;

        if (type == QCOW2_EXT_END) {
            return 0;
        }
        if (only_features) {
            if (type == QCOW2_EXT_FEATURE_TABLE) {
                decode_feature_table(h, data, len);
            }
            off += ((uint64_t)len + 7) & ~7ull;
            continue;
        }

        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len > QCOW2_MAX_BACKING_FMT) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: ERROR: ext_backing_format: len=%" PRIu32
                                    " too large (>=%d)", what, len,
                                    QCOW2_MAX_BACKING_FMT + 1);
            }
            free(h->backing_format);
            h->backing_format = dup_string(data, len);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            decode_feature_table(h, data, len);
            break;
        case QCOW2_EXT_CRYPTO:
            if (h->crypt_method != 2) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: CRYPTO header extension only expected with LUKS "
                                    "encryption method", what);
            }
            if (len != CRYPTO_EXT_LEN) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: CRYPTO header extension size %" PRIu32
                                    ", but expected size %d", what, len, CRYPTO_EXT_LEN);
            }
            memcpy(h->crypto_ext, data, CRYPTO_EXT_LEN);
            h->has_crypto_ext = true;
            break;
        case QCOW2_EXT_BITMAPS: {
            if (len != BITMAPS_EXT_LEN) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: bitmaps_ext: Invalid extension length %" PRIu32,
                                    what, len);
            }
            if (!(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
                /* Written by a program without bitmap support: QEMU ignores the
                 * bitmaps and drops the extension at the next header update. */
                break;
            }
            uint32_t nb = vd_be32(data);
            uint32_t reserved = vd_be32(data + 4);
            uint64_t dir_size = vd_be64(data + 8);
            uint64_t dir_off = vd_be64(data + 16);
            if (reserved != 0) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: bitmaps_ext: Reserved field is not zero", what);
            }
            if (nb > MAX_BITMAPS) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: bitmaps_ext: Image has %" PRIu32 " bitmaps, "
                                    "exceeding the QEMU supported maximum of %d",
                                    what, nb, MAX_BITMAPS);
            }
            if (nb == 0) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: found bitmaps extension with zero bitmaps", what);
            }
            if (dir_off & (qcow2_cluster_size(h) - 1)) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: bitmaps_ext: invalid bitmap directory offset "
                                    "0x%" PRIx64, what, dir_off);
            }
            if (dir_size > MAX_BITMAP_DIRECTORY_SIZE) {
                return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                    "%s: bitmaps_ext: bitmap directory size (%" PRIu64
                                    ") exceeds the maximum supported size (%u)",
                                    what, dir_size, MAX_BITMAP_DIRECTORY_SIZE);
            }
            memcpy(h->bitmaps_ext, data, BITMAPS_EXT_LEN);
            h->has_bitmaps_ext = true;
            break;
        }
        case QCOW2_EXT_DATA_FILE:
            free(h->data_file);
            h->data_file = dup_string(data, len);
            break;
        default:
            add_unknown_ext(h, type, data, len);
            break;
        }
        off += ((uint64_t)len + 7) & ~7ull;
    }
    return 0;
}

/* QEMU's qcow2_validate_table: entry count bounded, offset aligned and not near 2^63. */
static int validate_table(const qcow2_header *h, const char *what, const char *name,
                          uint64_t offset, uint64_t entries, uint64_t entry_len,
                          uint64_t max_bytes, vd_error **errp)
{
    if (entries > max_bytes / entry_len) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EFBIG, "%s: %s too large", what,
                            name);
    }
    if ((uint64_t)INT64_MAX - entries * entry_len < offset ||
        (offset & (qcow2_cluster_size(h) - 1)) != 0) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL, "%s: %s offset invalid",
                            what, name);
    }
    return 0;
}

static int check_inside_file(const char *what, const char *name, uint64_t offset,
                             uint64_t bytes, uint64_t file_len, vd_error **errp)
{
    if (offset > file_len || bytes > file_len - offset) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: %s offset 0x%" PRIx64 " (length %" PRIu64
                            ") is beyond the end of the file (0x%" PRIx64 ")",
                            what, name, offset, bytes, file_len);
    }
    return 0;
}

static int decode(const uint8_t *c, uint64_t file_len, const char *what, qcow2_header *h,
                  vd_error **errp)
{
    uint64_t cs = qcow2_cluster_size(h);
    int ret;

    if (h->version == 2) {
        h->incompatible_features = 0;
        h->compatible_features = 0;
        h->autoclear_features = 0;
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LEN;
    } else {
        h->incompatible_features = vd_be64(c + 72);
        h->compatible_features = vd_be64(c + 80);
        h->autoclear_features = vd_be64(c + 88);
        h->refcount_order = vd_be32(c + 96);
        h->header_length = vd_be32(c + 100);
        if (h->header_length < QCOW2_V3_HEADER_LEN) {
            return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                "%s: qcow2 header too short", what);
        }
    }
    if (h->header_length > cs) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: qcow2 header exceeds cluster size", what);
    }
    if (h->header_length > QCOW2_WRITE_HEADER_LEN) {
        h->unknown_fields_len = h->header_length - QCOW2_WRITE_HEADER_LEN;
        h->unknown_fields = xmalloc(h->unknown_fields_len);
        memcpy(h->unknown_fields, c + QCOW2_WRITE_HEADER_LEN, h->unknown_fields_len);
    }
    if (h->backing_file_offset > cs) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: Invalid backing file offset", what);
    }
    uint64_t ext_end = h->backing_file_offset ? h->backing_file_offset : cs;

    h->compression_type = h->header_length > QCOW2_V3_HEADER_LEN ? c[104] : 0;
    if (h->compression_type > QCOW2_COMPRESSION_ZSTD) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "%s: qcow2: unknown compression type: %u", what,
                            h->compression_type);
    }
    if (h->compression_type == QCOW2_COMPRESSION_ZLIB &&
        (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: qcow2: Compression type incompatible feature bit must not "
                            "be set", what);
    }
    if (h->compression_type != QCOW2_COMPRESSION_ZLIB &&
        !(h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: qcow2: Compression type incompatible feature bit must be "
                            "set", what);
    }

    if (h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN) {
        walk_extensions(h, c, h->header_length, ext_end, true, what, NULL);
        return report_unsupported(h, what, h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN,
                                  errp);
    }
    if (qcow2_has_extl2(h) && h->cluster_bits < 14) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: Unsupported subcluster size: %" PRIu64, what,
                            cs / QCOW2_SUBCLUSTERS);
    }
    if (h->refcount_order > 6) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: Reference count entry width too large; may not exceed 64 "
                            "bits (refcount_order %" PRIu32 ")", what, h->refcount_order);
    }
    if (h->crypt_method != 0) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "%s: encrypted images are not supported (crypt_method %" PRIu32
                            ")", what, h->crypt_method);
    }
    if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "%s: images with an external data file are not supported", what);
    }
    if (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL, "%s: data-file-raw requires a data "
                            "file", what);
    }

    if (h->refcount_table_clusters == 0) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: Image does not contain a reference count table", what);
    }
    ret = validate_table(h, what, "Reference count table", h->refcount_table_offset,
                         h->refcount_table_clusters, cs, QCOW2_MAX_REFTABLE_BYTES, errp);
    if (ret < 0) {
        return ret;
    }
    ret = validate_table(h, what, "Snapshot table", h->snapshots_offset, h->nb_snapshots,
                         SNAPSHOT_HEADER_LEN,
                         (uint64_t)SNAPSHOT_HEADER_LEN * QCOW2_MAX_SNAPSHOTS, errp);
    if (ret < 0) {
        return ret;
    }
    ret = validate_table(h, what, "Active L1 table", h->l1_table_offset, h->l1_size, 8,
                         QCOW2_MAX_L1_BYTES, errp);
    if (ret < 0) {
        return ret;
    }

    /* Entries one L1 entry covers: cluster_size * l2_entries bytes of guest data. */
    uint32_t l1_bits = h->cluster_bits + h->cluster_bits - (qcow2_has_extl2(h) ? 4 : 3);
    uint64_t l1_needed = (h->size >> l1_bits) + ((h->size & ((1ull << l1_bits) - 1)) != 0);
    if (l1_needed > INT32_MAX) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EFBIG,
                            "%s: Image is too big", what);
    }
    if (h->l1_size < l1_needed) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                            "%s: L1 table is too small", what);
    }

    /* Our addition to QEMU's checks: the tables must exist in the file. */
    ret = check_inside_file(what, "Reference count table", h->refcount_table_offset,
                            (uint64_t)h->refcount_table_clusters * cs, file_len, errp);
    if (ret < 0) {
        return ret;
    }
    if (h->l1_size > 0) {
        ret = check_inside_file(what, "Active L1 table", h->l1_table_offset,
                                (uint64_t)h->l1_size * 8, file_len, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (h->nb_snapshots > 0) {
        ret = check_inside_file(what, "Snapshot table", h->snapshots_offset,
                                (uint64_t)h->nb_snapshots * SNAPSHOT_HEADER_LEN, file_len,
                                errp);
        if (ret < 0) {
            return ret;
        }
    }

    ret = walk_extensions(h, c, h->header_length, ext_end, false, what, errp);
    if (ret < 0) {
        return ret;
    }

    if (h->backing_file_offset != 0) {
        uint64_t max = cs - h->backing_file_offset;
        if (max > QCOW2_MAX_BACKING_NAME) {
            max = QCOW2_MAX_BACKING_NAME;
        }
        if (h->backing_file_size > max) {
            return vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                "%s: Backing file name too long", what);
        }
        if (h->backing_file_size > 0) {
            h->backing_file = dup_string(c + h->backing_file_offset, h->backing_file_size);
            if (h->backing_file[0] == '\0') {
                free(h->backing_file);
                h->backing_file = NULL;
            }
        }
    }
    return 0;
}

int qcow2_header_decode(const uint8_t *buf, size_t len, uint64_t file_len, const char *what,
                        qcow2_header *h, vd_error **errp)
{
    uint8_t fixed[QCOW2_WRITE_HEADER_LEN] = {0};
    uint8_t *c = NULL;
    int ret;

    memset(h, 0, sizeof(*h));
    what = what ? what : "image";

    /* Bytes past the end of the file read as zeros, as they do for QEMU. */
    memcpy(fixed, buf, len < sizeof(fixed) ? len : sizeof(fixed));
    if (vd_be32(fixed) != QCOW2_MAGIC) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Image is not in qcow2 format",
                            what);
    }
    h->version = vd_be32(fixed + 4);
    if (h->version < 2 || h->version > 3) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "%s: Unsupported qcow2 version %" PRIu32, what, h->version);
    }
    h->backing_file_offset = vd_be64(fixed + 8);
    h->backing_file_size = vd_be32(fixed + 16);
    h->cluster_bits = vd_be32(fixed + 20);
    h->size = vd_be64(fixed + 24);
    h->crypt_method = vd_be32(fixed + 32);
    h->l1_size = vd_be32(fixed + 36);
    h->l1_table_offset = vd_be64(fixed + 40);
    h->refcount_table_offset = vd_be64(fixed + 48);
    h->refcount_table_clusters = vd_be32(fixed + 56);
    h->nb_snapshots = vd_be32(fixed + 60);
    h->snapshots_offset = vd_be64(fixed + 64);
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        uint32_t bits = h->cluster_bits;
        memset(h, 0, sizeof(*h));
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "%s: Unsupported cluster size: 2^%" PRIu32, what, bits);
    }

    /* Work on a whole cluster so every later read is in bounds: the caller's buffer if it
     * holds one, else a zero-padded copy. */
    uint64_t cs = qcow2_cluster_size(h);
    if (len >= cs) {
        ret = decode(buf, file_len, what, h, errp);
    } else {
        c = calloc(1, cs);
        if (!c) {
            return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", what);
        }
        memcpy(c, buf, len);
        ret = decode(c, file_len, what, h, errp);
        free(c);
    }
    if (ret < 0) {
        qcow2_header_clear(h);
    }
    return ret;
}

/* Appends one extension at *pos (8-aligned, zero padded); -EFBIG if it does not fit. */
static int put_ext(uint8_t *buf, size_t size, size_t *pos, uint32_t type, const void *data,
                   size_t len)
{
    size_t total = 8 + ((len + 7) & ~(size_t)7);

    if (len > UINT32_MAX || total > size - *pos) {
        return -EFBIG;
    }
    vd_put_be32(buf + *pos, type);
    vd_put_be32(buf + *pos + 4, (uint32_t)len);
    if (len) {
        memcpy(buf + *pos + 8, data, len);
    }
    *pos += total;
    return 0;
}

int qcow2_header_encode(qcow2_header *h, uint8_t *buf, size_t cluster_size)
{
    size_t pos;
    int ret;

    if (cluster_size < QCOW2_WRITE_HEADER_LEN) {
        return -EFBIG;
    }
    memset(buf, 0, cluster_size);
    vd_put_be32(buf, QCOW2_MAGIC);
    vd_put_be32(buf + 4, h->version);
    vd_put_be32(buf + 20, h->cluster_bits);
    vd_put_be64(buf + 24, h->size);
    vd_put_be32(buf + 32, h->crypt_method);
    vd_put_be32(buf + 36, h->l1_size);
    vd_put_be64(buf + 40, h->l1_table_offset);
    vd_put_be64(buf + 48, h->refcount_table_offset);
    vd_put_be32(buf + 56, h->refcount_table_clusters);
    vd_put_be32(buf + 60, h->nb_snapshots);
    vd_put_be64(buf + 64, h->snapshots_offset);

    if (h->version >= 3) {
        if (h->unknown_fields_len > cluster_size - QCOW2_WRITE_HEADER_LEN) {
            return -EFBIG;
        }
        h->header_length = QCOW2_WRITE_HEADER_LEN + h->unknown_fields_len;
        vd_put_be64(buf + 72, h->incompatible_features);
        vd_put_be64(buf + 80, h->compatible_features);
        vd_put_be64(buf + 88, h->autoclear_features);
        vd_put_be32(buf + 96, h->refcount_order);
        vd_put_be32(buf + 100, h->header_length);
        buf[104] = h->compression_type;
        if (h->unknown_fields_len) {
            memcpy(buf + QCOW2_WRITE_HEADER_LEN, h->unknown_fields, h->unknown_fields_len);
        }
        pos = h->header_length;
    } else {
        h->header_length = QCOW2_V2_HEADER_LEN;
        pos = QCOW2_V2_HEADER_LEN;
    }

    if (h->backing_format) {
        ret = put_ext(buf, cluster_size, &pos, QCOW2_EXT_BACKING_FORMAT, h->backing_format,
                      strlen(h->backing_format));
        if (ret < 0) {
            return ret;
        }
    }
    if (h->data_file && (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)) {
        ret = put_ext(buf, cluster_size, &pos, QCOW2_EXT_DATA_FILE, h->data_file,
                      strlen(h->data_file));
        if (ret < 0) {
            return ret;
        }
    }
    if (h->has_crypto_ext) {
        ret = put_ext(buf, cluster_size, &pos, QCOW2_EXT_CRYPTO, h->crypto_ext, CRYPTO_EXT_LEN);
        if (ret < 0) {
            return ret;
        }
    }
    /* QEMU leaves the table out at 4 KiB and below so small clusters keep room for a
     * backing file name. */
    if (h->version >= 3 && cluster_size > 4096) {
        uint8_t table[sizeof(feature_table) / sizeof(feature_table[0]) * FEATURE_ENTRY_LEN];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < sizeof(feature_table) / sizeof(feature_table[0]); i++) {
            uint8_t *e = table + i * FEATURE_ENTRY_LEN;
            e[0] = feature_table[i].type;
            e[1] = feature_table[i].bit;
            memcpy(e + 2, feature_table[i].name, strlen(feature_table[i].name));
        }
        ret = put_ext(buf, cluster_size, &pos, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
        if (ret < 0) {
            return ret;
        }
    }
    if (h->has_bitmaps_ext) {
        ret = put_ext(buf, cluster_size, &pos, QCOW2_EXT_BITMAPS, h->bitmaps_ext,
                      BITMAPS_EXT_LEN);
        if (ret < 0) {
            return ret;
        }
    }
    /* QEMU keeps unknown extensions on a list it prepends to, so a rewrite emits them in
     * the reverse of the order it read them. */
    for (size_t i = h->nb_unknown_exts; i-- > 0;) {
        ret = put_ext(buf, cluster_size, &pos, h->unknown_exts[i].type,
                      h->unknown_exts[i].data, h->unknown_exts[i].len);
        if (ret < 0) {
            return ret;
        }
    }
    ret = put_ext(buf, cluster_size, &pos, QCOW2_EXT_END, NULL, 0);
    if (ret < 0) {
        return ret;
    }

    h->backing_file_offset = 0;
    h->backing_file_size = 0;
    if (h->backing_file) {
        size_t n = strlen(h->backing_file);
        if (n > QCOW2_MAX_BACKING_NAME || n > cluster_size - pos) {
            return -EFBIG;
        }
        memcpy(buf + pos, h->backing_file, n);
        h->backing_file_offset = pos;
        h->backing_file_size = (uint32_t)n;
    }
    vd_put_be64(buf + 8, h->backing_file_offset);
    vd_put_be32(buf + 16, h->backing_file_size);
    return 0;
}

uint64_t qcow2_refcount_get(const uint8_t *block, uint32_t order, uint64_t index)
{
    if (order < 3) {
        uint32_t bits = 1u << order;
        uint64_t bitpos = index * bits;
        return (block[bitpos / 8] >> (bitpos % 8)) & ((1u << bits) - 1);
    }
    uint32_t bytes = 1u << (order - 3);
    const uint8_t *p = block + index * bytes;
    uint64_t v = 0;
    for (uint32_t i = 0; i < bytes; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

void qcow2_refcount_set(uint8_t *block, uint32_t order, uint64_t index, uint64_t value)
{
    if (order < 3) {
        uint32_t bits = 1u << order;
        uint64_t bitpos = index * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bitpos % 8));
        uint8_t *p = &block[bitpos / 8];
        *p = (uint8_t)((*p & ~mask) | ((value << (bitpos % 8)) & mask));
        return;
    }
    uint32_t bytes = 1u << (order - 3);
    uint8_t *p = block + index * bytes;
    for (uint32_t i = bytes; i-- > 0;) {
        p[i] = (uint8_t)value;
        value >>= 8;
    }
}

void qcow2_compressed_decode(uint64_t l2e, uint32_t cluster_bits, uint64_t *host_off,
                             uint64_t *csize)
{
    uint32_t shift = 62 - (cluster_bits - 8);
    uint64_t sectors = (l2e >> shift) & ((1ull << (cluster_bits - 8)) - 1);
    uint64_t off = l2e & ((1ull << shift) - 1);

    *host_off = off;
    *csize = (sectors + 1) * 512 - (off & 511);
}
