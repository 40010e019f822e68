/* libFuzzer target for the qcow2 header parser: the first 8 bytes of an input give the file
 * length the table offsets are checked against (low 40 bits), the rest is cluster 0. A
 * refusal must name the image and leave nothing allocated; an accepted header must hold
 * every promise the driver relies on (qcow2-format.h), and must encode and decode again to
 * the same fields and, with the reversed order of unknown extensions undone, the same
 * bytes: what vdisk writes back (amend, dirty bit, corrupt bit) is what it read. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-format.h"
#include "fuzz-require.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define WHAT "fuzz.qcow2"

static void require_refusal(int ret, const vd_error *err, const qcow2_header *h)
{
    REQUIRE(ret < 0);
    REQUIRE(err && vd_error_msg(err));
    REQUIRE(ret == -err->errnum);
    /* Messages name the object ("image.qcow2: ..."). */
    REQUIRE(strncmp(vd_error_msg(err), WHAT ": ", strlen(WHAT) + 2) == 0);
    REQUIRE(vd_error_msg(err)[strlen(WHAT) + 2] != '\0');
    /* A refused header owns nothing, so a caller need not clear it. */
    REQUIRE(!h->unknown_fields && !h->backing_file && !h->backing_format && !h->data_file &&
            !h->unknown_exts && !h->feature_names);
}

static bool inside(uint64_t off, uint64_t len, uint64_t file_len)
{
    return off <= file_len && len <= file_len - off;
}

/* What the driver may assume about a header that decoded. */
static void require_sane(const qcow2_header *h, uint64_t file_len)
{
    uint64_t cs = qcow2_cluster_size(h);

    REQUIRE(h->version == 2 || h->version == 3);
    REQUIRE(h->cluster_bits >= QCOW2_MIN_CLUSTER_BITS &&
            h->cluster_bits <= QCOW2_MAX_CLUSTER_BITS);
    REQUIRE(h->header_length <= cs);
    REQUIRE(h->version == 2 || h->header_length >= QCOW2_V3_HEADER_LEN);
    REQUIRE(h->crypt_method == 0);
    REQUIRE(!(h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN));
    REQUIRE(!(h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE));
    REQUIRE(!(h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW));
    REQUIRE(h->refcount_order <= 6);
    REQUIRE(h->compression_type <= QCOW2_COMPRESSION_ZSTD);
    REQUIRE((h->compression_type != QCOW2_COMPRESSION_ZLIB) ==
            ((h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) != 0));
    REQUIRE(!qcow2_has_extl2(h) || h->cluster_bits >= 14);

    REQUIRE(h->refcount_table_clusters > 0);
    REQUIRE((uint64_t)h->refcount_table_clusters * cs <= QCOW2_MAX_REFTABLE_BYTES);
    REQUIRE((h->refcount_table_offset & (cs - 1)) == 0);
    REQUIRE(inside(h->refcount_table_offset, (uint64_t)h->refcount_table_clusters * cs,
                   file_len));
    REQUIRE((uint64_t)h->l1_size * 8 <= QCOW2_MAX_L1_BYTES);
    REQUIRE((h->l1_table_offset & (cs - 1)) == 0);
    REQUIRE(h->l1_size == 0 || inside(h->l1_table_offset, (uint64_t)h->l1_size * 8, file_len));
    REQUIRE(h->nb_snapshots <= QCOW2_MAX_SNAPSHOTS);
    REQUIRE((h->snapshots_offset & (cs - 1)) == 0);
    REQUIRE(h->nb_snapshots == 0 ||
            inside(h->snapshots_offset, (uint64_t)h->nb_snapshots * 40, file_len));

    /* The L1 table covers the virtual size (at most 2^22 entries of 2^39 bytes each, so
     * the product cannot overflow). */
    uint32_t l1_bits = 2 * h->cluster_bits - (qcow2_has_extl2(h) ? 4 : 3);
    REQUIRE(((uint64_t)h->l1_size << l1_bits) >= h->size);

    REQUIRE(!h->backing_file || (h->backing_file[0] && strlen(h->backing_file) <= QCOW2_MAX_BACKING_NAME));
    REQUIRE(!h->backing_format || strlen(h->backing_format) <= QCOW2_MAX_BACKING_FMT);
    REQUIRE(!h->has_crypto_ext);
    REQUIRE(!h->has_bitmaps_ext || (h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS));
    REQUIRE((h->unknown_fields_len == 0) == (h->unknown_fields == NULL));
    REQUIRE(h->unknown_fields_len == 0 ||
            h->header_length == QCOW2_WRITE_HEADER_LEN + h->unknown_fields_len);
    for (size_t i = 0; i < h->nb_unknown_exts; i++) {
        REQUIRE(h->unknown_exts[i].len < cs);
    }
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* b is the decoding of a's encoding (a as encode left it: offsets of the name set). */
static void require_same(const qcow2_header *a, const qcow2_header *b)
{
    REQUIRE(b->version == a->version);
    REQUIRE(b->backing_file_offset == a->backing_file_offset);
    REQUIRE(b->backing_file_size == a->backing_file_size);
    REQUIRE(b->cluster_bits == a->cluster_bits);
    REQUIRE(b->size == a->size);
    REQUIRE(b->crypt_method == a->crypt_method);
    REQUIRE(b->l1_size == a->l1_size);
    REQUIRE(b->l1_table_offset == a->l1_table_offset);
    REQUIRE(b->refcount_table_offset == a->refcount_table_offset);
    REQUIRE(b->refcount_table_clusters == a->refcount_table_clusters);
    REQUIRE(b->nb_snapshots == a->nb_snapshots);
    REQUIRE(b->snapshots_offset == a->snapshots_offset);
    REQUIRE(b->incompatible_features == a->incompatible_features);
    REQUIRE(b->compatible_features == a->compatible_features);
    REQUIRE(b->autoclear_features == a->autoclear_features);
    REQUIRE(b->refcount_order == a->refcount_order);
    REQUIRE(b->header_length == a->header_length);
    REQUIRE(b->compression_type == a->compression_type);
    REQUIRE(b->unknown_fields_len == a->unknown_fields_len);
    REQUIRE(a->unknown_fields_len == 0 ||
            memcmp(b->unknown_fields, a->unknown_fields, a->unknown_fields_len) == 0);
    REQUIRE(same_str(b->backing_file, a->backing_file));
    REQUIRE(same_str(b->backing_format, a->backing_format));
    /* A data file name without the feature bit is dropped on rewrite, as QEMU does. */
    REQUIRE(b->data_file == NULL);
    REQUIRE(b->has_bitmaps_ext == a->has_bitmaps_ext);
    REQUIRE(!a->has_bitmaps_ext || memcmp(b->bitmaps_ext, a->bitmaps_ext, 24) == 0);
    REQUIRE(b->has_crypto_ext == a->has_crypto_ext);
    /* Unknown extensions come back in reverse order (QEMU's rewrite does the same). */
    REQUIRE(b->nb_unknown_exts == a->nb_unknown_exts);
    for (size_t i = 0, n = a->nb_unknown_exts; i < n; i++) {
        const qcow2_ext *x = &a->unknown_exts[i], *y = &b->unknown_exts[n - 1 - i];
        REQUIRE(x->type == y->type && x->len == y->len);
        REQUIRE(x->len == 0 || memcmp(x->data, y->data, x->len) == 0);
    }
}

static void reverse_exts(qcow2_header *h)
{
    for (size_t i = 0, n = h->nb_unknown_exts; i < n / 2; i++) {
        qcow2_ext t = h->unknown_exts[i];
        h->unknown_exts[i] = h->unknown_exts[n - 1 - i];
        h->unknown_exts[n - 1 - i] = t;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8) {
        return 0;
    }
    uint64_t file_len = vd_be64(data) & ((1ull << 40) - 1);
    data += 8;
    size -= 8;

    qcow2_header h;
    vd_error *err = NULL;
    int ret = qcow2_header_decode(data, size, file_len, WHAT, &h, &err);
    if (ret < 0) {
        require_refusal(ret, err, &h);
        vd_error_free(err);
        return 0;
    }
    REQUIRE(ret == 0 && err == NULL);
    require_sane(&h, file_len);

    /* Two buffers of the largest cluster, made once: fresh 2 MiB allocations would cost
     * more than the decoding. */
    static uint8_t *first, *second;
    if (!first) {
        first = malloc(1u << QCOW2_MAX_CLUSTER_BITS);
        second = malloc(1u << QCOW2_MAX_CLUSTER_BITS);
        REQUIRE(first && second);
    }
    size_t cs = (size_t)qcow2_cluster_size(&h);
    ret = qcow2_header_encode(&h, first, cs);
    /* Re-encoding may not fit: QEMU's feature table and the end marker are added (QEMU
     * refuses such a header update too). */
    REQUIRE(ret == 0 || ret == -EFBIG);
    if (ret == 0) {
        qcow2_header again;
        ret = qcow2_header_decode(first, cs, file_len, WHAT, &again, &err);
        if (ret < 0) {
            fprintf(stderr, "vdisk wrote a header it cannot read: %s\n", vd_error_msg(err));
            abort();
        }
        require_sane(&again, file_len);
        require_same(&h, &again);
        reverse_exts(&again);
        REQUIRE(qcow2_header_encode(&again, second, cs) == 0);
        REQUIRE(memcmp(first, second, cs) == 0);
        qcow2_header_clear(&again);
    }
    qcow2_header_clear(&h);
    return 0;
}
