/* The migration stream's framing (src/migration/stream.c): the channel hello and chunk
 * headers round-trip, and every malformed field is refused with a message naming it; a
 * channel's sequence, disks and ranges are enforced; payloads round-trip through each
 * codec (falling back to stored data that does not shrink), and corrupt or oversized
 * compressed data and checksum mismatches are refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "migration/stream.h"

static void expect_msg(int ret, vd_error **err, const char *part)
{
    assert_true(ret < 0);
    if (!strstr(vd_error_msg(*err), part)) {
        fail_msg("'%s' does not say '%s'", vd_error_msg(*err), part);
    }
    vd_error_free(*err);
    *err = NULL;
}

static void test_hello(void **state)
{
    (void)state;
    /* The standard CRC-32C, which docs/migration-stream.md names. */
    assert_int_equal(vd_mig_crc((const uint8_t *)"123456789", 9), 0xe3069283u);
    vd_mig_hello h = {.channel = 3, .nb_channels = 4}, g;
    memset(h.migration_id, 0xab, 16);
    uint8_t b[VD_MIG_HELLO_SIZE];
    vd_error *err = NULL;
    vd_mig_hello_encode(&h, b);
    assert_int_equal(vd_mig_hello_decode(b, &g, &err), 0);
    assert_int_equal(g.channel, 3);
    assert_int_equal(g.nb_channels, 4);
    assert_memory_equal(g.migration_id, h.migration_id, 16);

    uint8_t x[VD_MIG_HELLO_SIZE];
    memcpy(x, b, sizeof(x));
    x[0] ^= 1;
    expect_msg(vd_mig_hello_decode(x, &g, &err), &err, "bad magic");
    memcpy(x, b, sizeof(x));
    x[20] ^= 1;
    expect_msg(vd_mig_hello_decode(x, &g, &err), &err, "checksum");
    h.channel = 4;
    vd_mig_hello_encode(&h, x);
    expect_msg(vd_mig_hello_decode(x, &g, &err), &err, "channel 4 of 4");
    h.channel = 0;
    h.flags = 1;
    vd_mig_hello_encode(&h, x);
    expect_msg(vd_mig_hello_decode(x, &g, &err), &err, "unknown channel flags");
    /* A later version: refused by number, its checksum right. */
    h.flags = 0;
    vd_mig_hello_encode(&h, x);
    x[11] = 2;
    uint32_t crc = vd_mig_crc(x, 44);
    x[44] = (uint8_t)(crc >> 24);
    x[45] = (uint8_t)(crc >> 16);
    x[46] = (uint8_t)(crc >> 8);
    x[47] = (uint8_t)crc;
    expect_msg(vd_mig_hello_decode(x, &g, &err), &err, "version 2 is not supported");
}

static int decode(const vd_mig_chunk *c, vd_mig_chunk *out, vd_error **err)
{
    uint8_t b[VD_MIG_HEADER_SIZE];
    vd_mig_header_encode(c, b);
    return vd_mig_header_decode(b, out, err);
}

static void test_headers(void **state)
{
    (void)state;
    vd_error *err = NULL;
    vd_mig_chunk out;
    const vd_mig_chunk good[] = {
        {VD_MIG_DISK, VD_MIG_CODEC_NONE, 0, 0, 1u << 30, 0, 5, 77, 0},
        {VD_MIG_DATA, VD_MIG_CODEC_NONE, 1, 9, 4096, 65536, 65536, 123, 2},
        {VD_MIG_DATA, VD_MIG_CODEC_ZSTD, 2, 10, 0, VD_MIG_MAX_CHUNK, 1000, 5, 2},
        {VD_MIG_ZERO, VD_MIG_CODEC_NONE, 0, 11, 1u << 20, 1ull << 40, 0, 0, 0},
        {VD_MIG_HOLE, VD_MIG_CODEC_NONE, 0, 12, 0, 512, 0, 0, 0},
        {VD_MIG_SYNC, VD_MIG_CODEC_NONE, 0, 13, 0, 0, 0, 0, 3},
        {VD_MIG_FLUSH, VD_MIG_CODEC_NONE, 0, 14, 0, 0, 0, 0, 3},
        {VD_MIG_END, VD_MIG_CODEC_NONE, 0, 15, 0, 0, 0, 0, 3},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (decode(&good[i], &out, &err) < 0) {
            fail_msg("case %zu: %s", i, vd_error_msg(err));
        }
        assert_memory_equal(&out, &good[i], sizeof(out));
    }
    struct {
        vd_mig_chunk c;
        const char *msg;
    } badc[] = {
        {{VD_MIG_ZERO, VD_MIG_CODEC_ZLIB, 0, 1, 0, 512, 0, 0, 0}, "only data chunks"},
        {{VD_MIG_ZERO, VD_MIG_CODEC_NONE, 0, 1, 0, 512, 8, 0, 0}, "no payload"},
        {{VD_MIG_ZERO, VD_MIG_CODEC_NONE, 0, 1, 0, 0, 0, 0, 0}, "range is empty"},
        {{VD_MIG_HOLE, VD_MIG_CODEC_NONE, 0, 1, UINT64_MAX - 10, 100, 0, 0, 0}, "past the"},
        {{VD_MIG_SYNC, VD_MIG_CODEC_NONE, 0, 1, 4096, 0, 0, 0, 0}, "names no range"},
        {{VD_MIG_END, VD_MIG_CODEC_NONE, 1, 1, 0, 0, 0, 0, 0}, "names no range"},
        {{VD_MIG_DISK, VD_MIG_CODEC_NONE, 0, 1, 4096, 0, 32, 0, 0}, "1 to 31 bytes"},
        {{VD_MIG_DISK, VD_MIG_CODEC_NONE, 0, 1, 4096, 0, 0, 0, 0}, "1 to 31 bytes"},
        {{VD_MIG_DATA, VD_MIG_CODEC_NONE, 0, 1, 0, VD_MIG_MAX_CHUNK + 1, VD_MIG_MAX_CHUNK + 1,
          0, 0}, "more than 8 MiB"},
        {{VD_MIG_DATA, VD_MIG_CODEC_NONE, 0, 1, 0, 4096, 4095, 0, 0}, "payload length"},
        {{VD_MIG_DATA, VD_MIG_CODEC_ZLIB, 0, 1, 0, 4096, 4096, 0, 0}, "payload length"},
        {{VD_MIG_DATA, VD_MIG_CODEC_ZLIB, 0, 1, 0, 4096, 0, 0, 0}, "payload length"},
        {{VD_MIG_DATA, VD_MIG_CODEC_NONE, VD_MIG_MAX_DISKS, 1, 0, 4096, 4096, 0, 0},
         "disk index"},
    };
    for (size_t i = 0; i < sizeof(badc) / sizeof(badc[0]); i++) {
        expect_msg(decode(&badc[i].c, &out, &err), &err, badc[i].msg);
    }
    uint8_t b[VD_MIG_HEADER_SIZE];
    vd_mig_header_encode(&good[1], b);
    b[4] = 9;
    expect_msg(vd_mig_header_decode(b, &out, &err), &err, "checksum");
    b[4] = 2;
    b[0] = 'X';
    expect_msg(vd_mig_header_decode(b, &out, &err), &err, "bad magic");
}

static int feed(vd_mig_channel *ch, vd_mig_disks *d, const vd_mig_chunk *c,
                const uint8_t *payload, vd_error **err)
{
    int r = vd_mig_chunk_check(ch, d, c, err);
    return r < 0 ? r : vd_mig_chunk_accept(ch, d, c, payload, err);
}

static vd_mig_chunk disk_chunk(uint64_t seq, uint16_t idx, const char *name, uint64_t size)
{
    vd_mig_chunk c = {.type = VD_MIG_DISK, .disk = idx, .seq = seq, .offset = size,
                      .payload_len = (uint32_t)strlen(name)};
    c.data_crc = vd_mig_crc((const uint8_t *)name, strlen(name));
    return c;
}

static void test_channel(void **state)
{
    (void)state;
    vd_error *err = NULL;
    vd_mig_channel ch = {0};
    static vd_mig_disks d;
    memset(&d, 0, sizeof(d));
    vd_mig_chunk c = disk_chunk(0, 0, "disk0", 1 << 20);
    assert_int_equal(feed(&ch, &d, &c, (const uint8_t *)"disk0", &err), 0);
    assert_int_equal(d.nb, 1);
    assert_string_equal(d.disk[0].name, "disk0");
    c = disk_chunk(1, 1, "disk0", 1 << 20);
    expect_msg(feed(&ch, &d, &c, (const uint8_t *)"disk0", &err), &err, "announced already");
    c = disk_chunk(1, 1, "0disk", 1 << 20);
    expect_msg(feed(&ch, &d, &c, (const uint8_t *)"0disk", &err), &err, "not a node name");
    c = disk_chunk(1, 1, "d/1", 1 << 20);
    expect_msg(feed(&ch, &d, &c, (const uint8_t *)"d/1", &err), &err, "not a node name");
    c = disk_chunk(1, 1, "disk1", 1 << 20);
    c.data_crc ^= 1;
    expect_msg(feed(&ch, &d, &c, (const uint8_t *)"disk1", &err), &err, "checksum");
    c = disk_chunk(1, 2, "disk1", 1 << 20);
    expect_msg(feed(&ch, &d, &c, (const uint8_t *)"disk1", &err), &err, "in order");
    vd_mig_chunk z = {.type = VD_MIG_ZERO, .seq = 2, .offset = 0, .length = 4096};
    expect_msg(feed(&ch, &d, &z, NULL, &err), &err, "came where chunk 1 was due");
    z.seq = 1;
    z.offset = (1 << 20) - 4095;
    expect_msg(feed(&ch, &d, &z, NULL, &err), &err, "past the end of disk 'disk0'");
    z.offset = 0;
    z.disk = 1;
    expect_msg(feed(&ch, &d, &z, NULL, &err), &err, "not announced");
    z.disk = 0;
    assert_int_equal(feed(&ch, &d, &z, NULL, &err), 0);
    vd_mig_chunk e = {.type = VD_MIG_END, .seq = 2};
    assert_int_equal(feed(&ch, &d, &e, NULL, &err), 0);
    e.seq = 3;
    expect_msg(feed(&ch, &d, &e, NULL, &err), &err, "already ended");
}

static void roundtrip(vd_mig_codec codec, const uint8_t *data, size_t len, bool expect_packed)
{
    vd_error *err = NULL;
    const vd_codec *impl = vd_mig_codec_impl(codec);
    vd_codec_ctx *ctx = impl ? vd_codec_ctx_new(impl, impl->default_level) : NULL;
    uint8_t *pay = malloc(len), *out = malloc(len);
    assert_non_null(pay);
    assert_non_null(out);
    vd_mig_chunk c = {.type = VD_MIG_DATA, .seq = 4, .offset = 8192, .length = len};
    assert_int_equal(vd_mig_payload_encode(ctx, codec, data, len, pay, len, &c), 0);
    assert_int_equal(c.codec == codec && codec != VD_MIG_CODEC_NONE, expect_packed);
    /* What the receiver sees: the header decoded again, then the payload. */
    vd_mig_chunk r;
    assert_int_equal(decode(&c, &r, &err), 0);
    assert_int_equal(vd_mig_payload_decode(ctx, &r, pay, out, &err), 0);
    assert_memory_equal(out, data, len);
    if (c.payload_len > 8) {
        pay[c.payload_len / 2] ^= 0x5a;
        int ret = vd_mig_payload_decode(ctx, &r, pay, out, &err);
        assert_true(ret < 0);
        assert_true(strstr(vd_error_msg(err), "corrupt") ||
                    strstr(vd_error_msg(err), "checksum mismatch"));
        vd_error_free(err);
        err = NULL;
    }
    if (ctx) {
        /* The decoder of another codec is refused. */
        const vd_codec *other = vd_mig_codec_impl(codec == VD_MIG_CODEC_ZLIB ? VD_MIG_CODEC_ZSTD
                                                                             : VD_MIG_CODEC_ZLIB);
        vd_codec_ctx *octx = vd_codec_ctx_new(other, other->default_level);
        if (r.codec != VD_MIG_CODEC_NONE) {
            expect_msg(vd_mig_payload_decode(octx, &r, pay, out, &err), &err, "decoder");
        }
        vd_codec_ctx_free(octx);
        vd_codec_ctx_free(ctx);
    }
    free(pay);
    free(out);
}

static void test_payloads(void **state)
{
    (void)state;
    size_t len = 1 << 20;
    uint8_t *text = malloc(len), *noise = malloc(len);
    assert_non_null(text);
    assert_non_null(noise);
    unsigned seed = 1;
    for (size_t i = 0; i < len; i++) {
        text[i] = (uint8_t)("the quick brown fox jumps over the lazy dog\n"[i % 44]);
        noise[i] = (uint8_t)rand_r(&seed);
    }
    for (vd_mig_codec codec = VD_MIG_CODEC_NONE; codec <= VD_MIG_CODEC_ZSTD; codec++) {
        roundtrip(codec, text, len, codec != VD_MIG_CODEC_NONE);
        roundtrip(codec, noise, 65536, false);   /* does not shrink: stored */
        roundtrip(codec, text, 1, false);
    }
    free(text);
    free(noise);
}

/* Compressed data that would expand past the chunk's length (a bomb) is refused. */
static void test_bomb(void **state)
{
    (void)state;
    vd_error *err = NULL;
    for (vd_mig_codec codec = VD_MIG_CODEC_ZLIB; codec <= VD_MIG_CODEC_ZSTD; codec++) {
        const vd_codec *impl = vd_mig_codec_impl(codec);
        vd_codec_ctx *ctx = vd_codec_ctx_new(impl, impl->default_level);
        size_t big = 1 << 20;
        uint8_t *zeros = calloc(1, big), *pay = malloc(big), *out = malloc(big);
        assert_non_null(zeros);
        vd_mig_chunk c = {.type = VD_MIG_DATA, .length = big};
        assert_int_equal(vd_mig_payload_encode(ctx, codec, zeros, big, pay, big, &c), 0);
        assert_int_equal(c.codec, codec);
        vd_mig_chunk lie = c;
        lie.length = 4096;                    /* says 4 KiB, holds 1 MiB */
        lie.data_crc = vd_mig_crc(zeros, 4096);
        expect_msg(vd_mig_payload_decode(ctx, &lie, pay, out, &err), &err, "corrupt");
        free(zeros);
        free(pay);
        free(out);
        vd_codec_ctx_free(ctx);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello),    cmocka_unit_test(test_headers),
        cmocka_unit_test(test_channel),  cmocka_unit_test(test_payloads),
        cmocka_unit_test(test_bomb),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
