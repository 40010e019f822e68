/* Unit tests of the streaming codecs (vd_cstream_* in src/compress/codec.h): round trips
 * with input and output in pieces of a few bytes, FLUSH making everything so far
 * decodable, END, the standard formats (zlib, zstd frames) as the reference libraries see
 * them, and corrupt or truncated input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>
#include <zstd.h>

#include "compress/codec.h"

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

static void fill_text(uint8_t *p, size_t len, uint64_t seed)
{
    static const char *const words[] = {"stream", "page", "dirty", "ram", "device", "state",
                                        "the", "of", "migration", "zero", "a", "block"};
    rng_state = seed;
    size_t n = 0;
    while (n < len) {
        const char *w = words[rnd() % (sizeof(words) / sizeof(words[0]))];
        for (size_t k = 0; w[k] && n < len; k++) {
            p[n++] = (uint8_t)w[k];
        }
        if (n < len) {
            p[n++] = rnd() % 10 ? ' ' : '\n';
        }
    }
}

static void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
    rng_state = seed;
    for (size_t i = 0; i < len; i++) {
        p[i] = (uint8_t)rnd();
    }
}

/* A growing output buffer for the test's side. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf;

static void buf_reserve(buf *b, size_t more)
{
    if (!b->p || b->len + more > b->cap) {
        b->cap = (b->len + more) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
}

/* Piece sizes 1..max, drawn from their own generator so data and pieces are independent. */
static uint64_t piece_state;

static size_t piece(size_t max)
{
    piece_state = piece_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return 1 + (size_t)((piece_state >> 33) % max);
}

/* Feeds src[0..len) to a compressor in pieces of 1..in_max bytes with output room of
 * 1..out_max bytes per call, then runs op (FLUSH or END) to completion, appending the
 * output to b. Checks the return-value contract on every call. */
static void compress_feed(vd_cstream *s, const uint8_t *src, size_t len, size_t in_max,
                          size_t out_max, vd_cstream_op op, buf *b)
{
    uint8_t room[64];
    assert_true(out_max <= sizeof(room));
    size_t pos = 0;
    while (pos < len) {
        size_t n = piece(in_max);
        if (n > len - pos) {
            n = len - pos;
        }
        const uint8_t *in = src + pos;
        size_t in_len = n;
        for (;;) {
            uint8_t *out = room;
            size_t out_len = piece(out_max);
            size_t given = out_len;
            int r = vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_RUN);
            assert_int_equal(r, 0);
            assert_ptr_equal(out, room + (given - out_len));
            buf_reserve(b, given - out_len);
            memcpy(b->p + b->len, room, given - out_len);
            b->len += given - out_len;
            /* 0 means: input consumed, or output full. */
            assert_true(in_len == 0 || out_len == 0);
            if (in_len == 0 && out_len > 0) {
                break;
            }
        }
        assert_ptr_equal(in, src + pos + n);
        pos += n;
    }
    for (;;) {
        const uint8_t *in = NULL;
        size_t in_len = 0;
        uint8_t *out = room;
        size_t out_len = piece(out_max);
        size_t given = out_len;
        int r = vd_cstream_run(s, &in, &in_len, &out, &out_len, op);
        assert_true(r == 0 || r == 1);
        buf_reserve(b, given - out_len);
        memcpy(b->p + b->len, room, given - out_len);
        b->len += given - out_len;
        if (op == VD_CSTREAM_END && r == 1) {
            break;
        }
        if (op == VD_CSTREAM_FLUSH) {
            assert_int_equal(r, 0);
        }
        /* END unfinished must mean the output was full. */
        if (op == VD_CSTREAM_END) {
            assert_int_equal(out_len, 0);
        }
        if (out_len > 0) {
            break; /* FLUSH done */
        }
    }
}

/* Feeds src to a decompressor in pieces, output room 1..out_max per call, appending to b.
 * Returns the last result (1 at the end of the stream, 0 when input ran out, or -errno);
 * *used is how much input was consumed. */
static int decompress_feed(vd_cstream *s, const uint8_t *src, size_t len, size_t in_max,
                           size_t out_max, buf *b, size_t *used)
{
    uint8_t room[64 + 16];
    assert_true(out_max <= 64);
    size_t pos = 0;
    int r = 0;
    for (;;) {
        size_t n = piece(in_max);
        if (n > len - pos) {
            n = len - pos;
        }
        const uint8_t *in = src + pos;
        size_t in_len = n;
        memset(room, 0xa5, sizeof(room));
        uint8_t *out = room;
        size_t out_len = piece(out_max);
        size_t given = out_len;
        r = vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_RUN);
        for (size_t i = given; i < sizeof(room); i++) {
            assert_int_equal(room[i], 0xa5); /* nothing past the room given */
        }
        pos += n - in_len;
        buf_reserve(b, given - out_len);
        memcpy(b->p + b->len, room, given - out_len);
        b->len += given - out_len;
        if (r != 0) {
            break;
        }
        assert_true(in_len == 0 || out_len == 0);
        if (pos == len && out_len > 0) {
            break; /* input used up and nothing more pending */
        }
    }
    *used = pos;
    return r;
}

static const vd_codec *codec(int id)
{
    const vd_codec *c = vd_codec_by_id(id);
    assert_non_null(c);
    return c;
}

static vd_cstream *new_stream(int id, bool compress, int level)
{
    vd_error *err = NULL;
    vd_cstream *s = vd_cstream_new(codec(id), compress, level, &err);
    if (!s) {
        fail_msg("vd_cstream_new: %s", vd_error_msg(err));
    }
    assert_null(err);
    return s;
}

/* The output is the standard format: zlib's uncompress / ZSTD_decompress read it. */
static void check_reference(int id, const buf *comp, const uint8_t *src, size_t len)
{
    uint8_t *back = malloc(len + 1);
    assert_non_null(back);
    if (id == VD_CODEC_DEFLATE) {
        uLongf n = (uLongf)len + 1;
        assert_int_equal(uncompress(back, &n, comp->p, (uLong)comp->len), Z_OK);
        assert_int_equal(n, len);
    } else {
        assert_int_equal(ZSTD_decompress(back, len + 1, comp->p, comp->len), len);
    }
    assert_memory_equal(back, src, len);
    free(back);
}

static void roundtrip(int id, int level, const uint8_t *src, size_t len, size_t in_max,
                      size_t out_max)
{
    vd_cstream *s = new_stream(id, true, level);
    buf comp = {0};
    compress_feed(s, src, len, in_max, out_max, VD_CSTREAM_END, &comp);
    vd_cstream_free(s);
    check_reference(id, &comp, src, len);

    /* Our decoder, with a few bytes of trailing data that must be left unconsumed. */
    buf_reserve(&comp, 5);
    memcpy(comp.p + comp.len, "TRAIL", 5);
    s = new_stream(id, false, 0);
    buf out = {0};
    size_t used = 0;
    int r = decompress_feed(s, comp.p, comp.len + 5, in_max, out_max, &out, &used);
    assert_int_equal(r, 1);
    assert_int_equal(used, comp.len);
    assert_int_equal(out.len, len);
    assert_memory_equal(out.p, src, len);
    vd_cstream_free(s);
    free(out.p);
    free(comp.p);
}

static void test_roundtrip_small_pieces(void **state)
{
    (void)state;
    enum { LEN = 24 * 1024 };
    uint8_t *text = malloc(LEN), *rand_data = malloc(LEN);
    assert_non_null(text);
    assert_non_null(rand_data);
    fill_text(text, LEN, 1);
    fill_random(rand_data, LEN, 2);
    const int levels[2][3] = {{1, 6, 9}, {1, 3, 19}};
    for (int id = 0; id < 2; id++) {
        for (int li = 0; li < 3; li++) {
            piece_state = (uint64_t)(id * 10 + li);
            roundtrip(id, levels[id][li], text, LEN, 7, 7);
            roundtrip(id, levels[id][li], rand_data, 4096, 7, 7);
            roundtrip(id, levels[id][li], text, LEN, 1, 1);
            roundtrip(id, levels[id][li], text, LEN, 64, 64);
            roundtrip(id, levels[id][li], text, 0, 1, 3); /* empty stream */
        }
    }
    free(text);
    free(rand_data);
}

/* Large input in one call with ample output: everything in one go. */
static void test_roundtrip_large(void **state)
{
    (void)state;
    enum { LEN = 4 * 1024 * 1024 };
    uint8_t *src = malloc(LEN);
    assert_non_null(src);
    fill_text(src, LEN, 3);
    for (int id = 0; id < 2; id++) {
        vd_cstream *s = new_stream(id, true, codec(id)->default_level);
        size_t cap = codec(id)->bound(LEN) + 1024;
        uint8_t *comp = malloc(cap);
        assert_non_null(comp);
        const uint8_t *in = src;
        size_t in_len = LEN;
        uint8_t *out = comp;
        size_t out_len = cap;
        assert_int_equal(vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_END), 1);
        assert_int_equal(in_len, 0);
        size_t clen = cap - out_len;
        /* A finished stream: END again says so; more data is refused. */
        assert_int_equal(vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_END), 1);
        in_len = 1;
        assert_int_equal(vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_RUN),
                         -EINVAL);
        vd_cstream_free(s);
        buf cb = {comp, clen, cap};
        check_reference(id, &cb, src, LEN);

        s = new_stream(id, false, 0);
        uint8_t *back = malloc(LEN);
        assert_non_null(back);
        in = comp;
        in_len = clen;
        out = back;
        out_len = LEN;
        assert_int_equal(vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_RUN), 1);
        assert_int_equal(in_len, 0);
        assert_int_equal(out_len, 0);
        assert_memory_equal(back, src, LEN);
        vd_cstream_free(s);
        free(back);
        free(comp);
    }
    free(src);
}

/* FLUSH: the decoder, given exactly what the encoder has written so far, reproduces all
 * input so far, without waiting for END. */
static void test_flush(void **state)
{
    (void)state;
    enum { PART = 5000, PARTS = 4 };
    uint8_t *src = malloc(PART * PARTS);
    assert_non_null(src);
    fill_text(src, PART * PARTS, 4);
    for (int id = 0; id < 2; id++) {
        for (size_t out_max = 1; out_max <= 64; out_max *= 8) {
            piece_state = out_max;
            vd_cstream *enc = new_stream(id, true, codec(id)->default_level);
            vd_cstream *dec = new_stream(id, false, 0);
            buf comp = {0}, plain = {0};
            size_t fed = 0;
            for (int p = 0; p < PARTS; p++) {
                compress_feed(enc, src + p * PART, PART, 7, out_max, VD_CSTREAM_FLUSH, &comp);
                size_t used = 0;
                int r = decompress_feed(dec, comp.p + fed, comp.len - fed, 7, out_max, &plain,
                                        &used);
                assert_int_equal(r, 0);
                assert_int_equal(used, comp.len - fed);
                fed = comp.len;
                assert_int_equal(plain.len, (size_t)(p + 1) * PART);
                assert_memory_equal(plain.p, src, plain.len);
                /* A second FLUSH with nothing new adds nothing the decoder would output. */
                compress_feed(enc, NULL, 0, 1, out_max, VD_CSTREAM_FLUSH, &comp);
            }
            compress_feed(enc, NULL, 0, 1, out_max, VD_CSTREAM_END, &comp);
            size_t used = 0;
            assert_int_equal(
                decompress_feed(dec, comp.p + fed, comp.len - fed, 7, out_max, &plain, &used),
                1);
            assert_int_equal(plain.len, (size_t)PART * PARTS);
            assert_memory_equal(plain.p, src, plain.len);
            check_reference(id, &comp, src, PART * PARTS);
            vd_cstream_free(enc);
            vd_cstream_free(dec);
            free(comp.p);
            free(plain.p);
        }
    }
    free(src);
}

/* The decoder hands out no more than the room it is given, however much the input
 * expands: 8 MiB of zeros come out 100 bytes at a time. */
static void test_bounded_output(void **state)
{
    (void)state;
    enum { LEN = 8 * 1024 * 1024 };
    uint8_t *zeros = calloc(1, LEN);
    assert_non_null(zeros);
    for (int id = 0; id < 2; id++) {
        size_t cap = codec(id)->bound(LEN);
        uint8_t *comp = malloc(cap);
        assert_non_null(comp);
        vd_cstream *s = new_stream(id, true, 1);
        const uint8_t *in = zeros;
        size_t in_len = LEN;
        uint8_t *out = comp;
        size_t out_len = cap;
        assert_int_equal(vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_END), 1);
        size_t clen = cap - out_len;
        vd_cstream_free(s);
        assert_true(clen < 64 * 1024);

        s = new_stream(id, false, 0);
        in = comp;
        in_len = clen;
        size_t total = 0;
        uint8_t room[100 + 32];
        for (;;) {
            memset(room, 0x5a, sizeof(room));
            out = room;
            out_len = 100;
            int r = vd_cstream_run(s, &in, &in_len, &out, &out_len, VD_CSTREAM_RUN);
            assert_true(r == 0 || r == 1);
            for (size_t i = 100; i < sizeof(room); i++) {
                assert_int_equal(room[i], 0x5a);
            }
            for (size_t i = 0; i < 100 - out_len; i++) {
                assert_int_equal(room[i], 0);
            }
            total += 100 - out_len;
            if (r == 1) {
                break;
            }
            assert_int_equal(out_len, 0);
        }
        assert_int_equal(total, LEN);
        vd_cstream_free(s);
        free(comp);
    }
    free(zeros);
}

static int decode_all(int id, const uint8_t *src, size_t len, vd_cstream_op op)
{
    vd_cstream *s = new_stream(id, false, 0);
    uint8_t *room = malloc(1 << 20);
    assert_non_null(room);
    const uint8_t *in = src;
    size_t in_len = len;
    int r;
    do {
        uint8_t *out = room;
        size_t out_len = 1 << 20;
        r = vd_cstream_run(s, &in, &in_len, &out, &out_len, op);
        if (r == 0 && in_len == 0 && out_len > 0) {
            break;
        }
    } while (r == 0);
    vd_cstream_free(s);
    free(room);
    return r;
}

static void test_corrupt(void **state)
{
    (void)state;
    enum { LEN = 100000 };
    uint8_t *src = malloc(LEN);
    assert_non_null(src);
    fill_text(src, LEN, 5);
    for (int id = 0; id < 2; id++) {
        vd_cstream *s = new_stream(id, true, 3);
        buf comp = {0};
        piece_state = 9;
        compress_feed(s, src, LEN, 64, 64, VD_CSTREAM_END, &comp);
        vd_cstream_free(s);
        assert_int_equal(decode_all(id, comp.p, comp.len, VD_CSTREAM_RUN), 1);

        /* A bad header. */
        uint8_t *bad = malloc(comp.len);
        assert_non_null(bad);
        memcpy(bad, comp.p, comp.len);
        bad[0] ^= 0xff;
        bad[1] ^= 0x5a;
        assert_int_equal(decode_all(id, bad, comp.len, VD_CSTREAM_RUN), -EIO);
        /* Garbage. */
        rng_state = 77;
        for (size_t i = 0; i < comp.len; i++) {
            bad[i] = (uint8_t)rnd();
        }
        assert_int_equal(decode_all(id, bad, comp.len, VD_CSTREAM_RUN), -EIO);
        /* Truncated, told it is the end: -EIO; without END it just wants more. */
        assert_int_equal(decode_all(id, comp.p, comp.len / 2, VD_CSTREAM_END), -EIO);
        assert_int_equal(decode_all(id, comp.p, comp.len - 1, VD_CSTREAM_END), -EIO);
        assert_int_equal(decode_all(id, comp.p, comp.len / 2, VD_CSTREAM_RUN), 0);
        free(bad);
        free(comp.p);
    }

    /* zlib's trailer is a checksum, so damage anywhere in the body is caught. */
    vd_cstream *s = new_stream(VD_CODEC_DEFLATE, true, 6);
    buf comp = {0};
    piece_state = 10;
    compress_feed(s, src, LEN, 64, 64, VD_CSTREAM_END, &comp);
    vd_cstream_free(s);
    comp.p[comp.len / 2] ^= 0x10;
    assert_int_equal(decode_all(VD_CODEC_DEFLATE, comp.p, comp.len, VD_CSTREAM_RUN), -EIO);
    free(comp.p);
    free(src);
}

static void test_new_errors(void **state)
{
    (void)state;
    vd_error *err = NULL;
    assert_null(vd_cstream_new(codec(VD_CODEC_DEFLATE), true, 10, &err));
    assert_non_null(err);
    assert_string_equal(vd_error_msg(err),
                        "compression level 10 is out of range for zlib (1 to 9)");
    vd_error_free(err);
    err = NULL;
    assert_null(vd_cstream_new(codec(VD_CODEC_ZSTD), true, 0, &err));
    assert_non_null(err);
    assert_string_equal(vd_error_msg(err),
                        "compression level 0 is out of range for zstd (1 to 22)");
    vd_error_free(err);
    /* Decompression ignores the level. */
    err = NULL;
    vd_cstream *s = vd_cstream_new(codec(VD_CODEC_ZSTD), false, 99, &err);
    assert_non_null(s);
    assert_null(err);
    vd_cstream_free(s);
    vd_cstream_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_small_pieces),
        cmocka_unit_test(test_roundtrip_large),
        cmocka_unit_test(test_flush),
        cmocka_unit_test(test_bounded_output),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_new_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
