/* Unit tests for the qcow2 header codec (qcow2-header.c): QEMU's exact bytes for a default
 * image, round trips with extensions and unknown fields, every rejection, refcount entry
 * packing and compressed descriptors. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "block/drivers/qcow2/qcow2-format.h"
#include "block/drivers/qcow2/qcow2-layout.h"

#define CS 65536

/* Cluster 0 of `qemu-img create -f qcow2 a.qcow2 1G` (QEMU 7.2), up to the end marker;
 * the rest of the cluster is zero. */
static const char default_1g_hex[] =
    "514649fb0000000300000000000000000000000000000010000000004000"
    "000000000000000000020000000000030000000000000001000000000001"
    "000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000040000007000000000000000006803f85700000180"
    "000064697274792062697400000000000000000000000000000000000000"
    "0000000000000000000000000000000000000001636f7272757074206269"
    "740000000000000000000000000000000000000000000000000000000000"
    "000000000000000265787465726e616c20646174612066696c6500000000"
    "0000000000000000000000000000000000000000000000000003636f6d70"
    "72657373696f6e2074797065000000000000000000000000000000000000"
    "0000000000000000000000000004657874656e646564204c3220656e7472"
    "696573000000000000000000000000000000000000000000000000000000"
    "01006c617a7920726566636f756e74730000000000000000000000000000"
    "00000000000000000000000000000000000002006269746d617073000000"
    "000000000000000000000000000000000000000000000000000000000000"
    "00000000000002017261772065787465726e616c20646174610000000000";

static uint8_t *qemu_default_cluster(void)
{
    uint8_t *buf = calloc(1, CS);
    size_t n = strlen(default_1g_hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(default_1g_hex + 2 * i, "%2x", &v);
        buf[i] = (uint8_t)v;
    }
    return buf;
}

/* The header qcow2_create would build for a default 1 GiB image. */
static void default_header(qcow2_header *h)
{
    memset(h, 0, sizeof(*h));
    h->version = 3;
    h->cluster_bits = 16;
    h->size = 1ull << 30;
    h->l1_size = 2;
    h->l1_table_offset = 0x30000;
    h->refcount_table_offset = 0x10000;
    h->refcount_table_clusters = 1;
    h->refcount_order = 4;
}

static void test_encode_default(void **state)
{
    (void)state;
    qcow2_header h;
    uint8_t *want = qemu_default_cluster();
    uint8_t *buf = malloc(CS);

    default_header(&h);
    assert_int_equal(qcow2_header_encode(&h, buf, CS), 0);
    assert_memory_equal(buf, want, CS);
    assert_int_equal(h.header_length, 112);
    assert_int_equal(h.backing_file_offset, 0);
    free(buf);
    free(want);
}

static void test_decode_default(void **state)
{
    (void)state;
    qcow2_header h;
    vd_error *err = NULL;
    uint8_t *c = qemu_default_cluster();

    assert_int_equal(qcow2_header_decode(c, CS, 0x30010, "a.qcow2", &h, &err), 0);
    assert_null(err);
    assert_int_equal(h.version, 3);
    assert_int_equal(h.cluster_bits, 16);
    assert_int_equal(h.size, 1ull << 30);
    assert_int_equal(h.l1_size, 2);
    assert_int_equal(h.l1_table_offset, 0x30000);
    assert_int_equal(h.refcount_table_offset, 0x10000);
    assert_int_equal(h.refcount_table_clusters, 1);
    assert_int_equal(h.refcount_order, 4);
    assert_int_equal(h.header_length, 112);
    assert_int_equal(h.compression_type, 0);
    assert_null(h.backing_file);
    assert_null(h.backing_format);
    assert_int_equal(h.nb_unknown_exts, 0);
    assert_int_equal(h.nb_feature_names, 8);
    assert_string_equal(h.feature_names[4].name, "extended L2 entries");
    assert_int_equal(h.feature_names[7].type, 2);
    assert_int_equal(h.feature_names[7].bit, 1);

    /* Re-encoding gives the same cluster. */
    uint8_t *buf = malloc(CS);
    assert_int_equal(qcow2_header_encode(&h, buf, CS), 0);
    assert_memory_equal(buf, c, CS);
    qcow2_header_clear(&h);
    free(buf);
    free(c);
}

static void test_encode_backing(void **state)
{
    (void)state;
    qcow2_header h;
    uint8_t *buf = malloc(CS);

    default_header(&h);
    h.backing_file = strdup("base.qcow2");
    h.backing_format = strdup("qcow2");
    assert_int_equal(qcow2_header_encode(&h, buf, CS), 0);
    /* As qemu-img create -b base.qcow2 -F qcow2 lays it out (notes 1.4). */
    assert_int_equal(vd_be32(buf + 0x70), QCOW2_EXT_BACKING_FORMAT);
    assert_int_equal(vd_be32(buf + 0x74), 5);
    assert_memory_equal(buf + 0x78, "qcow2\0\0\0", 8);
    assert_int_equal(vd_be32(buf + 0x80), QCOW2_EXT_FEATURE_TABLE);
    assert_int_equal(vd_be64(buf + 0x208), 0);
    assert_memory_equal(buf + 0x210, "base.qcow2", 10);
    assert_int_equal(vd_be64(buf + 8), 0x210);
    assert_int_equal(vd_be32(buf + 16), 10);

    qcow2_header d;
    vd_error *err = NULL;
    assert_int_equal(qcow2_header_decode(buf, CS, 0x30010, "b", &d, &err), 0);
    assert_string_equal(d.backing_file, "base.qcow2");
    assert_string_equal(d.backing_format, "qcow2");
    qcow2_header_clear(&d);

    /* v2: 72-byte header, backing format at 0x48, end at 0x58, name at 0x60. */
    h.version = 2;
    assert_int_equal(qcow2_header_encode(&h, buf, CS), 0);
    assert_int_equal(vd_be32(buf + 0x48), QCOW2_EXT_BACKING_FORMAT);
    assert_int_equal(vd_be64(buf + 0x58), 0);
    assert_int_equal(vd_be64(buf + 8), 0x60);
    free(h.backing_file);
    free(h.backing_format);
    free(buf);
}

static void test_encode_small_clusters(void **state)
{
    (void)state;
    qcow2_header h;
    uint8_t buf[4096];

    default_header(&h);
    h.cluster_bits = 12;
    assert_int_equal(qcow2_header_encode(&h, buf, sizeof(buf)), 0);
    /* No feature table at 4 KiB: the end marker follows the header directly. */
    assert_int_equal(vd_be64(buf + 112), 0);
    for (size_t i = 112; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0);
    }

    /* 512-byte clusters: a 1023-byte name cannot fit. */
    uint8_t small[512];
    char name[1024];
    memset(name, 'x', 1023);
    name[1023] = '\0';
    h.cluster_bits = 9;
    h.backing_file = name;
    assert_int_equal(qcow2_header_encode(&h, small, sizeof(small)), -EFBIG);
    name[200] = '\0';
    assert_int_equal(qcow2_header_encode(&h, small, sizeof(small)), 0);
    assert_int_equal(vd_be64(small + 8), 120);
}

static void test_unknown_exts_and_fields(void **state)
{
    (void)state;
    uint8_t *c = qemu_default_cluster();
    qcow2_header h;
    vd_error *err = NULL;

    /* header_length 128 with 16 bytes of unknown fields, then two unknown extensions. */
    memset(c + 112, 0, CS - 112);
    vd_put_be32(c + 100, 128);
    memset(c + 112, 0xab, 16);
    vd_put_be32(c + 128, 0x11111111);
    vd_put_be32(c + 132, 3);
    memcpy(c + 136, "abc", 3);
    vd_put_be32(c + 144, 0x22222222);
    vd_put_be32(c + 148, 8);
    memcpy(c + 152, "12345678", 8);
    assert_int_equal(qcow2_header_decode(c, CS, 0x30010, "u", &h, &err), 0);
    assert_int_equal(h.unknown_fields_len, 16);
    assert_int_equal(h.nb_unknown_exts, 2);
    assert_int_equal(h.unknown_exts[0].type, 0x11111111);
    assert_int_equal(h.unknown_exts[1].len, 8);
    assert_int_equal(h.nb_feature_names, 0);

    uint8_t *buf = malloc(CS);
    assert_int_equal(qcow2_header_encode(&h, buf, CS), 0);
    assert_int_equal(vd_be32(buf + 100), 128);
    assert_memory_equal(buf + 112, c + 112, 16);
    /* Feature table first, then the unknown extensions reversed, as QEMU writes them. */
    assert_int_equal(vd_be32(buf + 128), QCOW2_EXT_FEATURE_TABLE);
    size_t pos = 128 + 8 + 384;
    assert_int_equal(vd_be32(buf + pos), 0x22222222);
    assert_int_equal(vd_be32(buf + pos + 16), 0x11111111);
    assert_memory_equal(buf + pos + 24, "abc\0\0\0\0\0", 8);
    assert_int_equal(vd_be64(buf + pos + 32), 0);
    qcow2_header_clear(&h);
    free(buf);
    free(c);
}

/* Mutates a valid default cluster, decodes it, and checks errno and message. */
typedef void (*mutator)(uint8_t *c);

static void expect_reject(mutator m, uint64_t file_len, int err_no, const char *text)
{
    uint8_t *c = qemu_default_cluster();
    qcow2_header h;
    vd_error *err = NULL;

    m(c);
    int ret = qcow2_header_decode(c, CS, file_len, "img.qcow2", &h, &err);
    if (ret != -err_no || !err || !strstr(err->msg, text) ||
        strncmp(err->msg, "img.qcow2: ", 11) != 0) {
        fail_msg("expected -%d \"%s\", got %d \"%s\"", err_no, text, ret,
                 err ? err->msg : "(none)");
    }
    vd_error_free(err);
    free(c);
}

static void m_magic(uint8_t *c) { c[0] = 'X'; }
static void m_version(uint8_t *c) { vd_put_be32(c + 4, 4); }
static void m_version1(uint8_t *c) { vd_put_be32(c + 4, 1); }
static void m_cbits_small(uint8_t *c) { vd_put_be32(c + 20, 8); }
static void m_cbits_big(uint8_t *c) { vd_put_be32(c + 20, 22); }
static void m_hlen_short(uint8_t *c) { vd_put_be32(c + 100, 100); }
static void m_hlen_big(uint8_t *c) { vd_put_be32(c + 100, CS + 8); }
static void m_refcount_order(uint8_t *c) { vd_put_be32(c + 96, 7); }
static void m_backing_off(uint8_t *c) { vd_put_be64(c + 8, CS + 1); }
static void m_backing_len(uint8_t *c)
{
    vd_put_be64(c + 8, 0x200);
    vd_put_be32(c + 16, 1024);
}
static void m_backing_len_cluster(uint8_t *c)
{
    vd_put_be64(c + 8, CS - 10);
    vd_put_be32(c + 16, 11);
}
static void m_backing_fmt_len(uint8_t *c)
{
    vd_put_be32(c + 112, QCOW2_EXT_BACKING_FORMAT);
    vd_put_be32(c + 116, 16);
    memset(c + 120, 0, CS - 120);
}
static void m_ext_too_large(uint8_t *c)
{
    vd_put_be32(c + 116, CS);
}
static void m_ext_past_backing(uint8_t *c)
{
    /* The extension area ends at the backing name. */
    vd_put_be64(c + 8, 0x100);
    vd_put_be32(c + 16, 4);
}
static void m_incompat_unknown(uint8_t *c) { c[79] = 0x21; }
static void m_incompat_named(uint8_t *c)
{
    c[79] = 0x20;
    /* Rename table entry 4 (bit 4) to bit 5 so the image names its own feature. */
    c[0x78 + 4 * 48 + 1] = 5;
    memcpy(c + 0x78 + 4 * 48 + 2, "fancy thing\0\0\0\0\0\0\0\0\0", 20);
}
static void m_incompat_partial_table(uint8_t *c)
{
    /* A feature table of 14 bytes: one entry cut short, the rest of it taken as zeros. */
    c[79] = 0x20;
    vd_put_be32(c + 116, 14);
    c[0x78] = 0;
    c[0x79] = 5;
    memcpy(c + 0x7a, "short entry", 12);
    memset(c + 0x88, 0, 8);
}
static void m_compression_unknown(uint8_t *c)
{
    c[104] = 2;
    c[79] = 0x08;
}
static void m_compression_bit_set(uint8_t *c) { c[79] = 0x08; }
static void m_compression_bit_clear(uint8_t *c) { c[104] = 1; }
static void m_crypt(uint8_t *c) { vd_put_be32(c + 32, 1); }
static void m_data_file(uint8_t *c) { c[79] = 0x04; }
static void m_raw_data(uint8_t *c) { c[95] = 0x02; }
static void m_reftable_zero(uint8_t *c) { vd_put_be32(c + 56, 0); }
static void m_reftable_unaligned(uint8_t *c) { vd_put_be64(c + 48, 0x10200); }
static void m_reftable_big(uint8_t *c) { vd_put_be32(c + 56, 129); }
static void m_reftable_eof(uint8_t *c) { vd_put_be64(c + 48, 0x40000); }
static void m_l1_big(uint8_t *c) { vd_put_be32(c + 36, 4 * 1024 * 1024 + 1); }
static void m_l1_unaligned(uint8_t *c) { vd_put_be64(c + 40, 0x30008); }
static void m_l1_small(uint8_t *c) { vd_put_be32(c + 36, 1); }
static void m_l1_eof(uint8_t *c) { vd_put_be32(c + 36, 3); }
static void m_too_big(uint8_t *c) { vd_put_be64(c + 24, 1ull << 62); }
static void m_snapshots_many(uint8_t *c) { vd_put_be32(c + 60, 65537); }
static void m_snapshots_unaligned(uint8_t *c)
{
    vd_put_be32(c + 60, 1);
    vd_put_be64(c + 64, 0x20100);
}
static void m_snapshots_eof(uint8_t *c)
{
    vd_put_be32(c + 60, 1);
    vd_put_be64(c + 64, 0x40000);
}
static void m_extl2_small(uint8_t *c)
{
    vd_put_be32(c + 20, 13);
    c[79] = 0x10;
    memset(c + 112, 0, CS - 112);
}
static void m_crypto_ext(uint8_t *c)
{
    vd_put_be32(c + 112, QCOW2_EXT_CRYPTO);
    vd_put_be32(c + 116, 16);
}
static void m_bitmaps_len(uint8_t *c)
{
    c[95] = 0x01;
    vd_put_be32(c + 112, QCOW2_EXT_BITMAPS);
    vd_put_be32(c + 116, 16);
}
static void m_bitmaps_zero(uint8_t *c)
{
    c[95] = 0x01;
    vd_put_be32(c + 112, QCOW2_EXT_BITMAPS);
    vd_put_be32(c + 116, 24);
    memset(c + 120, 0, 24);
    vd_put_be32(c + 144, 0);
    vd_put_be32(c + 148, 0);
}

static void test_rejections(void **state)
{
    (void)state;
    uint64_t len = 0x30010;
    expect_reject(m_magic, len, EINVAL, "Image is not in qcow2 format");
    expect_reject(m_version, len, ENOTSUP, "Unsupported qcow2 version 4");
    expect_reject(m_version1, len, ENOTSUP, "Unsupported qcow2 version 1");
    expect_reject(m_cbits_small, len, EINVAL, "Unsupported cluster size: 2^8");
    expect_reject(m_cbits_big, len, EINVAL, "Unsupported cluster size: 2^22");
    expect_reject(m_hlen_short, len, EINVAL, "qcow2 header too short");
    expect_reject(m_hlen_big, len, EINVAL, "qcow2 header exceeds cluster size");
    expect_reject(m_refcount_order, len, EINVAL, "Reference count entry width too large");
    expect_reject(m_backing_off, len, EINVAL, "Invalid backing file offset");
    expect_reject(m_backing_len, len, EINVAL, "Backing file name too long");
    expect_reject(m_backing_len_cluster, len, EINVAL, "Backing file name too long");
    expect_reject(m_backing_fmt_len, len, EINVAL, "ext_backing_format: len=16 too large");
    expect_reject(m_ext_too_large, len, EINVAL, "Header extension too large");
    expect_reject(m_ext_past_backing, len, EINVAL, "Header extension too large");
    expect_reject(m_incompat_unknown, len, ENOTSUP,
                  "Unsupported qcow2 feature(s): Unknown incompatible feature: 20");
    expect_reject(m_incompat_named, len, ENOTSUP, "Unsupported qcow2 feature(s): fancy thing");
    expect_reject(m_incompat_partial_table, len, ENOTSUP,
                  "Unsupported qcow2 feature(s): short entry");
    expect_reject(m_compression_unknown, len, ENOTSUP, "unknown compression type: 2");
    expect_reject(m_compression_bit_set, len, EINVAL, "bit must not be set");
    expect_reject(m_compression_bit_clear, len, EINVAL, "bit must be set");
    expect_reject(m_crypt, len, ENOTSUP, "encrypted images are not supported");
    expect_reject(m_data_file, len, ENOTSUP, "external data file");
    expect_reject(m_raw_data, len, EINVAL, "data-file-raw requires a data file");
    expect_reject(m_reftable_zero, len, EINVAL, "does not contain a reference count table");
    expect_reject(m_reftable_unaligned, len, EINVAL, "Reference count table offset invalid");
    expect_reject(m_reftable_big, len, EFBIG, "Reference count table too large");
    expect_reject(m_reftable_eof, len, EINVAL, "is beyond the end of the file");
    expect_reject(m_l1_big, len, EFBIG, "Active L1 table too large");
    expect_reject(m_l1_unaligned, len, EINVAL, "Active L1 table offset invalid");
    expect_reject(m_l1_small, len, EINVAL, "L1 table is too small");
    expect_reject(m_l1_eof, len, EINVAL, "Active L1 table offset 0x30000");
    expect_reject(m_too_big, len, EFBIG, "Image is too big");
    expect_reject(m_snapshots_many, len, EFBIG, "Snapshot table too large");
    expect_reject(m_snapshots_unaligned, len, EINVAL, "Snapshot table offset invalid");
    expect_reject(m_snapshots_eof, len, EINVAL, "Snapshot table offset 0x40000");
    expect_reject(m_extl2_small, len, EINVAL, "Unsupported subcluster size: 256");
    expect_reject(m_crypto_ext, len, EINVAL, "CRYPTO header extension only expected");
    expect_reject(m_bitmaps_len, len, EINVAL, "bitmaps_ext: Invalid extension length");
    expect_reject(m_bitmaps_zero, len, EINVAL, "found bitmaps extension with zero bitmaps");
}

static void test_short_buffer(void **state)
{
    (void)state;
    uint8_t *c = qemu_default_cluster();
    qcow2_header h;
    vd_error *err = NULL;

    /* A 100-byte file: the rest reads as zero, so header_length (at 100) is 0. */
    assert_int_equal(qcow2_header_decode(c, 100, 100, "s", &h, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "qcow2 header too short"));
    vd_error_freep(&err);
    assert_int_equal(qcow2_header_decode(c, 3, 3, "s", &h, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "not in qcow2 format"));
    vd_error_freep(&err);
    free(c);
}

static void test_refcounts(void **state)
{
    (void)state;
    uint8_t b[64];
    /* Clusters 0..3 at refcount 1, as verified against QEMU (notes 3.1). */
    static const uint8_t want0[] = {0x0f};
    static const uint8_t want1[] = {0x55};
    static const uint8_t want2[] = {0x11, 0x11};
    static const uint8_t want4[] = {0, 1, 0, 1, 0, 1, 0, 1};
    const uint8_t *want[] = {want0, want1, want2, NULL, want4};
    const size_t want_len[] = {1, 1, 2, 0, 8};

    for (uint32_t order = 0; order <= 6; order++) {
        memset(b, 0, sizeof(b));
        for (uint64_t i = 0; i < 4; i++) {
            qcow2_refcount_set(b, order, i, 1);
        }
        if (order < 5 && want[order]) {
            assert_memory_equal(b, want[order], want_len[order]);
        }
        uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
        qcow2_refcount_set(b, order, 2, max);
        assert_int_equal(qcow2_refcount_get(b, order, 1), 1);
        assert_int_equal(qcow2_refcount_get(b, order, 2), max);
        assert_int_equal(qcow2_refcount_get(b, order, 3), 1);
        qcow2_refcount_set(b, order, 2, 0);
        assert_int_equal(qcow2_refcount_get(b, order, 2), 0);
        assert_int_equal(qcow2_refcount_get(b, order, 3), 1);
    }
}

static void test_compressed(void **state)
{
    (void)state;
    uint64_t off, csize;

    qcow2_compressed_decode(0x4040000000050000ull, 16, &off, &csize);
    assert_int_equal(off, 0x50000);
    assert_int_equal(csize, 1024);
    qcow2_compressed_decode(0x404000000005023dull, 16, &off, &csize);
    assert_int_equal(off, 0x5023d);
    assert_int_equal(csize, 1024 - 0x3d);
    qcow2_compressed_decode(0x4008000000a00000ull, 21, &off, &csize);
    assert_int_equal(off, 0xa00000);
    assert_int_equal(csize, 5 * 512);
    /* 512-byte clusters: one sector-count bit at 61. */
    qcow2_compressed_decode(0x6000000000000400ull, 9, &off, &csize);
    assert_int_equal(off, 0x400);
    assert_int_equal(csize, 1024);
}

/* The preallocated layout's file size must equal `qemu-img measure`'s fully allocated size
 * (values taken from qemu-img 7.2), and its regions must be contiguous. */
static void test_layout_sizes(void **state)
{
    (void)state;
    static const struct {
        uint64_t size;
        uint32_t cluster_bits, refcount_order;
        bool extl2;
        uint64_t want;
    } cases[] = {
        {1ull << 30, 16, 4, false, 1074135040ull},
        {0, 16, 4, false, 196608ull},
        {1ull << 30, 9, 4, false, 1095127040ull},
        {1ull << 40, 16, 0, false, 1099648204800ull},
        {100ull << 30, 21, 6, true, 107384668160ull},
        {5ull << 30, 12, 3, false, 5380538368ull},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        qcow2_layout l;
        assert_int_equal(qcow2_layout_compute(cases[i].size, cases[i].cluster_bits,
                                              cases[i].refcount_order, cases[i].extl2, &l), 0);
        assert_int_equal(l.total_clusters << cases[i].cluster_bits, cases[i].want);
        assert_int_equal(l.reftable_start, 1);
        assert_int_equal(l.refblock_start, 1 + l.reftable_clusters);
        assert_int_equal(l.l1_start, l.refblock_start + l.refblocks);
        assert_int_equal(l.l2_start, l.l1_start + l.l1_clusters);
        assert_int_equal(l.data_start, l.l2_start + l.l1_size);
        /* The refblocks cover every cluster of the file, the reftable every refblock. */
        uint64_t per_block = (1ull << cases[i].cluster_bits) * 8 >> cases[i].refcount_order;
        assert_true(l.refblocks * per_block >= l.total_clusters);
        assert_true(l.reftable_clusters * ((1ull << cases[i].cluster_bits) / 8) >= l.refblocks);
    }
    /* 512-byte clusters: the L1 may not exceed 32 MiB (128 GiB of guest data). */
    qcow2_layout l;
    assert_int_equal(qcow2_layout_compute(128ull << 30, 9, 0, false, &l), 0);
    /* With 16-bit refcounts its preallocated reftable would pass 8 MiB. */
    assert_int_equal(qcow2_layout_compute(128ull << 30, 9, 4, false, &l), -E2BIG);
    assert_int_equal(qcow2_layout_compute((128ull << 30) + 512, 9, 0, false, &l), -EFBIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_default),
        cmocka_unit_test(test_decode_default),
        cmocka_unit_test(test_encode_backing),
        cmocka_unit_test(test_encode_small_clusters),
        cmocka_unit_test(test_unknown_exts_and_fields),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_short_buffer),
        cmocka_unit_test(test_refcounts),
        cmocka_unit_test(test_compressed),
        cmocka_unit_test(test_layout_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
