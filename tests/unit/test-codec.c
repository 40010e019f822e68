/* Unit tests of the whole-buffer codecs (src/compress/codec.h): the registry and level
 * checks, round trips at every level, that the output is what QEMU can read (raw deflate
 * within a 4 KiB window; one zstd frame with the content size), -ENOSPC, and that the
 * decoders reject truncated, short, oversized and corrupt streams without writing past
 * the cluster buffer. */
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
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_getFrameHeader, to inspect the frame's flags */
#include <zstd.h>

#include "compress/codec.h"

#define CLUSTER (64 * 1024)
#define GUARD 256
#define GUARD_BYTE 0xa5

/* ---- test data ------------------------------------------------------------------------ */

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

enum { DATA_TEXT, DATA_RANDOM, DATA_ZEROS, DATA_MIXED, DATA_FAR, N_DATA };
static const char *const data_names[N_DATA] = {"text", "random", "zeros", "mixed", "far"};

/* DATA_FAR repeats one random block of this size: its only matches lie 6 KiB back, out of
 * reach of a 4 KiB window, so a deflate writer with a larger window would be caught. */
#define FAR_PERIOD (6 * 1024)

/* Text-like: words from a small vocabulary with punctuation and line breaks, which has the
 * redundancy of logs, sources and documents. */
static void fill_text(uint8_t *p, size_t len)
{
    static const char *const words[] = {
        "the", "block", "cluster", "qcow2", "image", "compressed", "of", "and", "to",
        "offset", "refcount", "table", "a", "is", "write", "read", "data", "L2", "entry",
        "snapshot", "backing", "file", "in", "for", "zero", "allocate", "guest", "host",
    };
    size_t n = 0;
    while (n < len) {
        const char *w = words[rnd() % (sizeof(words) / sizeof(words[0]))];
        for (size_t k = 0; w[k] && n < len; k++) {
            p[n++] = (uint8_t)w[k];
        }
        if (n < len) {
            uint32_t r = rnd() % 16;
            p[n++] = r == 0 ? '\n' : r == 1 ? ',' : r == 2 ? '.' : ' ';
        }
    }
}

static void fill(uint8_t *p, size_t len, int kind, uint64_t seed)
{
    rng_state = seed;
    switch (kind) {
    case DATA_TEXT:
        fill_text(p, len);
        break;
    case DATA_RANDOM:
        for (size_t i = 0; i < len; i++) {
            p[i] = (uint8_t)rnd();
        }
        break;
    case DATA_ZEROS:
        memset(p, 0, len);
        break;
    case DATA_FAR:
        for (size_t i = 0; i < len; i++) {
            p[i] = i < FAR_PERIOD ? (uint8_t)rnd() : p[i - FAR_PERIOD];
        }
        break;
    default:
        /* Runs of text, random bytes and zeros, like a real disk cluster. */
        for (size_t off = 0; off < len;) {
            size_t run = 512 + rnd() % 8192;
            if (run > len - off) {
                run = len - off;
            }
            int k = (int)(rnd() % 3);
            if (k == 0) {
                fill_text(p + off, run);
            } else if (k == 1) {
                for (size_t i = 0; i < run; i++) {
                    p[off + i] = (uint8_t)rnd();
                }
            } else {
                memset(p + off, 0, run);
            }
            off += run;
        }
        break;
    }
}

/* A destination with a guard region after it, to catch writes past dst_len. */
static uint8_t *guarded_new(size_t len)
{
    uint8_t *p = malloc(len + GUARD);
    assert_non_null(p);
    memset(p, GUARD_BYTE, len + GUARD);
    return p;
}

static void guard_check(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < GUARD; i++) {
        if (p[len + i] != GUARD_BYTE) {
            fail_msg("write past the end of the buffer at +%zu", i);
        }
    }
}

static const vd_codec *deflate_codec(void)
{
    const vd_codec *c = vd_codec_by_id(VD_CODEC_DEFLATE);
    assert_non_null(c);
    return c;
}

static const vd_codec *zstd_codec(void)
{
    const vd_codec *c = vd_codec_by_id(VD_CODEC_ZSTD);
    assert_non_null(c);
    return c;
}

/* Compresses src at level with a fresh context into a new buffer; returns its length. */
static size_t compress_new(const vd_codec *c, int level, const uint8_t *src, size_t len,
                           uint8_t **out)
{
    size_t cap = c->bound(len);
    *out = malloc(cap + 1);
    assert_non_null(*out);
    vd_codec_ctx *ctx = vd_codec_ctx_new(c, level);
    assert_non_null(ctx);
    ssize_t n = vd_codec_compress(ctx, src, len, *out, cap);
    vd_codec_ctx_free(ctx);
    if (n < 0) {
        fail_msg("%s level %d: compress of %zu bytes failed: %zd", c->name, level, len, n);
    }
    return (size_t)n;
}

/* Inflates a raw deflate stream with zlib limited to a 4 KiB window, as QEMU does. The
 * output is handed out one byte per call: in a single call zlib lets matches reach back
 * into that call's own output whatever the window, so only this way does a match more than
 * 4 KiB back fail ("invalid distance too far back"). */
static int zlib_inflate_w12(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len,
                            size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(inflateInit2(&z, -12), Z_OK);
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    int r = Z_OK;
    size_t done = 0;
    while (r == Z_OK && done < dst_len) {
        z.avail_out = 1;
        r = inflate(&z, Z_NO_FLUSH);
        done = (size_t)(z.next_out - dst);
    }
    if (r == Z_OK && done == dst_len) {
        r = inflate(&z, Z_FINISH); /* no room left: Z_STREAM_END only if nothing remains */
    }
    *out_len = done;
    inflateEnd(&z);
    return r;
}

/* Raw deflate of src with zlib itself at a window of window_bits. */
static size_t zlib_deflate_raw(const uint8_t *src, size_t len, int level, int window_bits,
                               uint8_t *dst, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, level, Z_DEFLATED, -window_bits, 9, Z_DEFAULT_STRATEGY),
                     Z_OK);
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    size_t n = cap - z.avail_out;
    deflateEnd(&z);
    return n;
}

/* ---- registry and levels -------------------------------------------------------------- */

static void test_registry(void **state)
{
    (void)state;
    const vd_codec *d = deflate_codec(), *z = zstd_codec();
    assert_int_equal(d->id, 0);
    assert_string_equal(d->name, "zlib");
    assert_int_equal(d->min_level, 1);
    assert_int_equal(d->max_level, 9);
    assert_int_equal(d->default_level, 6);
    assert_int_equal(z->id, 1);
    assert_string_equal(z->name, "zstd");
    assert_int_equal(z->min_level, 1);
    assert_int_equal(z->max_level, 22);
    assert_int_equal(z->default_level, 3);

    assert_ptr_equal(vd_codec_by_name("zlib"), d);
    assert_ptr_equal(vd_codec_by_name("zstd"), z);
    assert_null(vd_codec_by_name("lz4"));
    assert_null(vd_codec_by_name("ZLIB"));
    assert_null(vd_codec_by_name(""));
    assert_null(vd_codec_by_name(NULL));
    assert_null(vd_codec_by_id(2));
    assert_null(vd_codec_by_id(-1));
    assert_string_equal(vd_codec_names(), "zlib, zstd");

    /* Bounds cover at least the input and grow with it. */
    const size_t lens[] = {0, 1, 511, 4096, 65536, 2 * 1024 * 1024};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        assert_true(d->bound(lens[i]) > lens[i]);
        assert_true(z->bound(lens[i]) > lens[i]);
        assert_true(z->bound(lens[i]) >= ZSTD_compressBound(lens[i]));
        assert_true(d->bound(lens[i]) >= compressBound((uLong)lens[i]));
    }
}

static void expect_level_error(const vd_codec *c, int level, const char *msg)
{
    vd_error *err = NULL;
    assert_int_equal(vd_codec_check_level(c, level, &err), -EINVAL);
    assert_non_null(err);
    assert_string_equal(vd_error_msg(err), msg);
    assert_int_equal(err->cls, VD_ERR_INVALID);
    assert_int_equal(err->errnum, EINVAL);
    vd_error_free(err);
    assert_int_equal(vd_codec_check_level(c, level, NULL), -EINVAL);
}

static void test_check_level(void **state)
{
    (void)state;
    const vd_codec *d = deflate_codec(), *z = zstd_codec();
    for (int l = 1; l <= 9; l++) {
        vd_error *err = NULL;
        assert_int_equal(vd_codec_check_level(d, l, &err), 0);
        assert_null(err);
    }
    for (int l = 1; l <= 22; l++) {
        vd_error *err = NULL;
        assert_int_equal(vd_codec_check_level(z, l, &err), 0);
        assert_null(err);
    }
    expect_level_error(d, 12, "compression level 12 is out of range for zlib (1 to 9)");
    expect_level_error(d, 0, "compression level 0 is out of range for zlib (1 to 9)");
    expect_level_error(d, 10, "compression level 10 is out of range for zlib (1 to 9)");
    expect_level_error(d, -1, "compression level -1 is out of range for zlib (1 to 9)");
    expect_level_error(z, 0, "compression level 0 is out of range for zstd (1 to 22)");
    expect_level_error(z, 23, "compression level 23 is out of range for zstd (1 to 22)");
    expect_level_error(z, -5, "compression level -5 is out of range for zstd (1 to 22)");
}

/* ---- round trips ---------------------------------------------------------------------- */

static void check_roundtrip(const vd_codec *c, int level, int kind, size_t len)
{
    uint8_t *src = malloc(len ? len : 1);
    assert_non_null(src);
    fill(src, len, kind, 1000u * (unsigned)level + (unsigned)kind);
    uint8_t *comp;
    size_t clen = compress_new(c, level, src, len, &comp);
    assert_true(clen <= c->bound(len));

    /* Our decoder, through a cached context and the one-off call. */
    uint8_t *dst = guarded_new(len);
    vd_codec_cache *cache = vd_codec_cache_new();
    vd_codec_ctx *ctx = vd_codec_ctx_get(cache, c, level);
    assert_non_null(ctx);
    assert_int_equal(vd_codec_decompress(ctx, comp, clen, dst, len), 0);
    vd_codec_ctx_put(cache, ctx);
    assert_memory_equal(dst, src, len);
    guard_check(dst, len);
    memset(dst, 0, len);
    assert_int_equal(vd_codec_decompress_once(cache, c, comp, clen, dst, len), 0);
    assert_memory_equal(dst, src, len);
    memset(dst, 0, len);
    assert_int_equal(vd_codec_decompress_once(NULL, c, comp, clen, dst, len), 0);
    assert_memory_equal(dst, src, len);
    vd_codec_cache_free(cache);

    /* The reference decoders, with QEMU's settings. */
    if (c->id == VD_CODEC_DEFLATE) {
        size_t got = 0;
        memset(dst, 0, len);
        int r = zlib_inflate_w12(comp, clen, dst, len + 1, &got);
        if (r != Z_STREAM_END || got != len) {
            fail_msg("zlib level %d %s: inflate with a 4 KiB window: %d, %zu bytes", level,
                     data_names[kind], r, got);
        }
        assert_memory_equal(dst, src, len);
    } else {
        assert_int_equal(ZSTD_getFrameContentSize(comp, clen), len);
        ZSTD_frameHeader fh;
        assert_int_equal(ZSTD_getFrameHeader(&fh, comp, clen), 0);
        assert_int_equal(fh.checksumFlag, 0);
        assert_int_equal(ZSTD_findFrameCompressedSize(comp, clen), clen); /* one frame */
        memset(dst, 0, len);
        assert_int_equal(ZSTD_decompress(dst, len, comp, clen), len);
        assert_memory_equal(dst, src, len);
    }

    /* Sanity of the ratio: zeros and text shrink a lot, random data does not grow much. */
    if (len >= 4096) {
        if (kind == DATA_ZEROS) {
            assert_true(clen < len / 100);
        } else if (kind == DATA_TEXT) {
            assert_true(clen < len / 2);
        } else if (kind == DATA_RANDOM) {
            assert_true(clen > len - len / 100);
        } else if (kind == DATA_FAR) {
            /* deflate cannot see the repeats; zstd's window reaches them */
            assert_true(c->id == VD_CODEC_DEFLATE ? clen > len - len / 100 : clen < len / 4);
        }
    }
    free(dst);
    free(comp);
    free(src);
}

static void test_deflate_roundtrip_all_levels(void **state)
{
    (void)state;
    for (int level = 1; level <= 9; level++) {
        for (int kind = 0; kind < N_DATA; kind++) {
            check_roundtrip(deflate_codec(), level, kind, CLUSTER);
        }
        check_roundtrip(deflate_codec(), level, DATA_TEXT, 512);
        check_roundtrip(deflate_codec(), level, DATA_MIXED, 2 * 1024 * 1024);
    }
}

static void test_zstd_roundtrip_all_levels(void **state)
{
    (void)state;
    for (int level = 1; level <= 22; level++) {
        for (int kind = 0; kind < N_DATA; kind++) {
            check_roundtrip(zstd_codec(), level, kind, CLUSTER);
        }
        check_roundtrip(zstd_codec(), level, DATA_TEXT, 512);
    }
    for (int level = 1; level <= 3; level++) {
        check_roundtrip(zstd_codec(), level, DATA_MIXED, 2 * 1024 * 1024);
    }
}

/* Empty input still gives a valid stream that decodes to nothing. */
static void test_empty_input(void **state)
{
    (void)state;
    uint8_t out[128], back[8];
    vd_codec_ctx *ctx = vd_codec_ctx_new(deflate_codec(), 6);
    assert_non_null(ctx);
    ssize_t n = vd_codec_compress(ctx, (const uint8_t *)"", 0, out, sizeof(out));
    assert_true(n > 0);
    size_t got = 1;
    assert_int_equal(zlib_inflate_w12(out, (size_t)n, back, sizeof(back), &got), Z_STREAM_END);
    assert_int_equal(got, 0);
    vd_codec_ctx_free(ctx);

    ctx = vd_codec_ctx_new(zstd_codec(), 3);
    assert_non_null(ctx);
    n = vd_codec_compress(ctx, (const uint8_t *)"", 0, out, sizeof(out));
    assert_true(n > 0);
    assert_int_equal(ZSTD_getFrameContentSize(out, (size_t)n), 0);
    assert_int_equal(ZSTD_decompress(back, sizeof(back), out, (size_t)n), 0);
    vd_codec_ctx_free(ctx);
}

/* The deflate level mapping: higher levels are never worse than the fastest on text, and
 * levels 7..9 (zlib) are at least as good as zlib's own level 6 at the same window. */
static void test_deflate_level_ratio(void **state)
{
    (void)state;
    uint8_t *src = malloc(CLUSTER);
    assert_non_null(src);
    fill(src, CLUSTER, DATA_TEXT, 77);
    size_t sizes[10];
    for (int level = 1; level <= 9; level++) {
        uint8_t *comp;
        sizes[level] = compress_new(deflate_codec(), level, src, CLUSTER, &comp);
        free(comp);
    }
    uint8_t *ref = malloc(compressBound(CLUSTER));
    assert_non_null(ref);
    size_t z6 = zlib_deflate_raw(src, CLUSTER, 6, 12, ref, compressBound(CLUSTER));
    for (int level = 7; level <= 9; level++) {
        assert_true(sizes[level] <= z6 + z6 / 100);
    }
    assert_true(sizes[9] <= sizes[1]);
    assert_true(sizes[5] <= sizes[1]);
    free(ref);
    free(src);
}

/* A context compresses cluster after cluster, and mixes with decompression. */
static void test_context_reuse(void **state)
{
    (void)state;
    const vd_codec *cs[2] = {deflate_codec(), zstd_codec()};
    const int levels[2][3] = {{1, 4, 8}, {1, 3, 12}};
    uint8_t *src = malloc(CLUSTER), *dst = guarded_new(CLUSTER);
    assert_non_null(src);
    for (int ci = 0; ci < 2; ci++) {
        size_t cap = cs[ci]->bound(CLUSTER);
        uint8_t *comp = malloc(cap);
        assert_non_null(comp);
        for (int li = 0; li < 3; li++) {
            vd_codec_ctx *ctx = vd_codec_ctx_new(cs[ci], levels[ci][li]);
            assert_non_null(ctx);
            assert_ptr_equal(vd_codec_ctx_codec(ctx), cs[ci]);
            assert_int_equal(vd_codec_ctx_level(ctx), levels[ci][li]);
            for (int round = 0; round < 8; round++) {
                fill(src, CLUSTER, round % N_DATA, (uint64_t)round * 31 + (uint64_t)li);
                ssize_t n = vd_codec_compress(ctx, src, CLUSTER, comp, cap);
                assert_true(n > 0);
                memset(dst, 0, CLUSTER);
                assert_int_equal(vd_codec_decompress(ctx, comp, (size_t)n, dst, CLUSTER), 0);
                assert_memory_equal(dst, src, CLUSTER);
                /* A failed (-ENOSPC) call leaves the context usable. */
                if (round % N_DATA == DATA_RANDOM) {
                    assert_int_equal(vd_codec_compress(ctx, src, CLUSTER, comp, CLUSTER / 2),
                                     -ENOSPC);
                }
            }
            vd_codec_ctx_free(ctx);
        }
        free(comp);
    }
    guard_check(dst, CLUSTER);
    free(dst);
    free(src);
}

static void test_ctx_cache(void **state)
{
    (void)state;
    const vd_codec *d = deflate_codec(), *z = zstd_codec();
    vd_codec_cache *cache = vd_codec_cache_new();
    vd_codec_ctx *a = vd_codec_ctx_get(cache, d, 6);
    vd_codec_ctx *b = vd_codec_ctx_get(cache, d, 6);
    vd_codec_ctx *c = vd_codec_ctx_get(cache, z, 6);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_ptr_not_equal(a, b);
    assert_ptr_equal(vd_codec_ctx_codec(c), z);
    assert_int_equal(vd_codec_ctx_level(c), 6);
    vd_codec_ctx_put(cache, a);
    vd_codec_ctx_put(cache, c);
    /* An idle context comes back for its own key only. */
    vd_codec_ctx *a2 = vd_codec_ctx_get(cache, d, 6);
    assert_ptr_equal(a2, a);
    vd_codec_ctx *d7 = vd_codec_ctx_get(cache, d, 7);
    assert_ptr_not_equal(d7, c);
    assert_ptr_equal(vd_codec_ctx_codec(d7), d);
    assert_int_equal(vd_codec_ctx_level(d7), 7);
    vd_codec_ctx *c2 = vd_codec_ctx_get(cache, z, 6);
    assert_ptr_equal(c2, c);
    vd_codec_ctx_put(cache, a2);
    vd_codec_ctx_put(cache, b);
    vd_codec_ctx_put(cache, c2);
    vd_codec_ctx_put(cache, d7);
    vd_codec_ctx_put(cache, NULL);

    /* Putting back far more than the cache keeps frees the rest (ASan/LSan would notice a
     * leak); all of them work. */
    enum { MANY = 600 };
    vd_codec_ctx **many = calloc(MANY, sizeof(*many));
    assert_non_null(many);
    uint8_t src[4096], comp[8192], back[4096];
    fill(src, sizeof(src), DATA_TEXT, 5);
    for (int i = 0; i < MANY; i++) {
        many[i] = vd_codec_ctx_get(cache, z, 1);
        assert_non_null(many[i]);
    }
    for (int i = 0; i < MANY; i += 50) {
        ssize_t n = vd_codec_compress(many[i], src, sizeof(src), comp, sizeof(comp));
        assert_true(n > 0);
        assert_int_equal(vd_codec_decompress(many[i], comp, (size_t)n, back, sizeof(back)), 0);
        assert_memory_equal(back, src, sizeof(src));
    }
    for (int i = 0; i < MANY; i++) {
        vd_codec_ctx_put(cache, many[i]);
    }
    free(many);
    vd_codec_cache_free(cache);
}

/* ---- -ENOSPC -------------------------------------------------------------------------- */

static void test_enospc(void **state)
{
    (void)state;
    uint8_t *src = malloc(CLUSTER);
    assert_non_null(src);
    const vd_codec *cs[2] = {deflate_codec(), zstd_codec()};
    for (int ci = 0; ci < 2; ci++) {
        for (int level = 1; level <= cs[ci]->max_level; level++) {
            fill(src, CLUSTER, DATA_RANDOM, (uint64_t)level);
            vd_codec_ctx *ctx = vd_codec_ctx_get(NULL, cs[ci], level);
            assert_non_null(ctx);
            uint8_t *dst = guarded_new(CLUSTER - 1);
            assert_int_equal(vd_codec_compress(ctx, src, CLUSTER, dst, CLUSTER - 1), -ENOSPC);
            guard_check(dst, CLUSTER - 1);
            assert_int_equal(vd_codec_compress(ctx, src, CLUSTER, dst, 0), -ENOSPC);
            assert_int_equal(vd_codec_compress(ctx, src, CLUSTER, dst, 16), -ENOSPC);
            guard_check(dst, CLUSTER - 1);
            /* Compressible data still fits in the same room afterwards. */
            fill(src, CLUSTER, DATA_TEXT, (uint64_t)level);
            ssize_t n = vd_codec_compress(ctx, src, CLUSTER, dst, CLUSTER - 1);
            assert_true(n > 0 && n < CLUSTER / 2);
            guard_check(dst, CLUSTER - 1);
            uint8_t *back = guarded_new(CLUSTER);
            assert_int_equal(vd_codec_decompress(ctx, dst, (size_t)n, back, CLUSTER), 0);
            assert_memory_equal(back, src, CLUSTER);
            free(back);
            free(dst);
            vd_codec_ctx_put(NULL, ctx);
        }
    }
    free(src);
}

/* ---- hostile and odd streams ---------------------------------------------------------- */

static int decode(const vd_codec *c, const uint8_t *src, size_t src_len, size_t dst_len)
{
    uint8_t *dst = guarded_new(dst_len);
    int r = vd_codec_decompress_once(NULL, c, src, src_len, dst, dst_len);
    guard_check(dst, dst_len);
    free(dst);
    return r;
}

static void test_trailing_input(void **state)
{
    (void)state;
    const vd_codec *cs[2] = {deflate_codec(), zstd_codec()};
    uint8_t *src = malloc(CLUSTER);
    assert_non_null(src);
    fill(src, CLUSTER, DATA_MIXED, 9);
    for (int ci = 0; ci < 2; ci++) {
        uint8_t *comp;
        size_t clen = compress_new(cs[ci], cs[ci]->default_level, src, CLUSTER, &comp);
        /* qcow2 rounds the stored length up to a sector boundary: padding follows. */
        size_t padded = clen + 1000;
        uint8_t *buf = malloc(padded);
        assert_non_null(buf);
        memcpy(buf, comp, clen);
        for (int fillk = 0; fillk < 3; fillk++) {
            for (size_t i = clen; i < padded; i++) {
                buf[i] = fillk == 0 ? 0 : fillk == 1 ? 0xff : (uint8_t)rnd();
            }
            uint8_t *dst = guarded_new(CLUSTER);
            assert_int_equal(vd_codec_decompress_once(NULL, cs[ci], buf, padded, dst, CLUSTER), 0);
            assert_memory_equal(dst, src, CLUSTER);
            guard_check(dst, CLUSTER);
            free(dst);
        }
        /* A second whole stream after the first is trailing input too. */
        memcpy(buf + clen, comp, padded - clen < clen ? padded - clen : clen);
        assert_int_equal(decode(cs[ci], buf, padded, CLUSTER), 0);
        free(buf);
        free(comp);
    }
    free(src);
}

static void test_truncated_and_short(void **state)
{
    (void)state;
    const vd_codec *cs[2] = {deflate_codec(), zstd_codec()};
    uint8_t *src = malloc(2 * CLUSTER);
    assert_non_null(src);
    for (int ci = 0; ci < 2; ci++) {
        for (int kind = 0; kind < N_DATA; kind++) {
            fill(src, 2 * CLUSTER, kind, 40 + (uint64_t)kind);
            uint8_t *comp;
            size_t clen = compress_new(cs[ci], cs[ci]->default_level, src, CLUSTER, &comp);
            /* Cut anywhere before the end: never a full cluster. */
            const size_t cuts[] = {0, 1, 2, clen / 3, clen / 2, clen - 2, clen - 1};
            for (size_t k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
                if (decode(cs[ci], comp, cuts[k], CLUSTER) != -EIO) {
                    fail_msg("%s %s: %zu of %zu bytes decoded", cs[ci]->name, data_names[kind],
                             cuts[k], clen);
                }
            }
            free(comp);

            /* Complete streams of less than a cluster: short. */
            clen = compress_new(cs[ci], cs[ci]->default_level, src, CLUSTER / 2, &comp);
            assert_int_equal(decode(cs[ci], comp, clen, CLUSTER), -EIO);
            assert_int_equal(decode(cs[ci], comp, clen, CLUSTER / 2 + 1), -EIO);
            assert_int_equal(decode(cs[ci], comp, clen, CLUSTER / 2), 0);
            free(comp);

            /* A bomb: twice a cluster of content. */
            clen = compress_new(cs[ci], cs[ci]->default_level, src, 2 * CLUSTER, &comp);
            assert_int_equal(decode(cs[ci], comp, clen, CLUSTER), -EIO);
            assert_int_equal(decode(cs[ci], comp, clen, 2 * CLUSTER - 1), -EIO);
            assert_int_equal(decode(cs[ci], comp, clen, 2 * CLUSTER), 0);
            free(comp);
        }
    }
    free(src);
}

/* zstd streams other writers may produce: frames without a content size (streamed),
 * several frames, skippable frames, and frames with a checksum. */
static size_t zstd_stream_frame(const uint8_t *src, size_t len, uint8_t *dst, size_t cap,
                                bool checksum)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    assert_non_null(cctx);
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, checksum)));
    ZSTD_inBuffer in = {src, len, 0};
    ZSTD_outBuffer out = {dst, cap, 0};
    size_t r;
    /* Fed in pieces with no pledged size, so the header has no content size. */
    while (in.pos < in.size) {
        size_t piece = in.size - in.pos < 4096 ? in.size - in.pos : 4096;
        ZSTD_inBuffer p = {(const uint8_t *)in.src + in.pos, piece, 0};
        r = ZSTD_compressStream2(cctx, &out, &p, ZSTD_e_continue);
        assert_false(ZSTD_isError(r));
        in.pos += p.pos;
    }
    do {
        r = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
        assert_false(ZSTD_isError(r));
    } while (r != 0);
    ZSTD_freeCCtx(cctx);
    return out.pos;
}

static void test_zstd_other_frames(void **state)
{
    (void)state;
    const vd_codec *z = zstd_codec();
    uint8_t *src = malloc(2 * CLUSTER);
    size_t cap = ZSTD_compressBound(2 * CLUSTER) + 64;
    uint8_t *comp = malloc(3 * cap);
    assert_non_null(src);
    assert_non_null(comp);
    fill(src, 2 * CLUSTER, DATA_MIXED, 3);

    /* Streamed frame, no content size: decodes; as a bomb: -EIO. */
    size_t n = zstd_stream_frame(src, CLUSTER, comp, cap, false);
    assert_int_equal(ZSTD_getFrameContentSize(comp, n), ZSTD_CONTENTSIZE_UNKNOWN);
    uint8_t *dst = guarded_new(CLUSTER);
    assert_int_equal(vd_codec_decompress_once(NULL, z, comp, n, dst, CLUSTER), 0);
    assert_memory_equal(dst, src, CLUSTER);
    guard_check(dst, CLUSTER);
    n = zstd_stream_frame(src, 2 * CLUSTER, comp, cap, false);
    assert_int_equal(decode(z, comp, n, CLUSTER), -EIO);

    /* With a checksum: fine; a damaged checksum: -EIO. */
    n = zstd_stream_frame(src, CLUSTER, comp, cap, true);
    assert_int_equal(decode(z, comp, n, CLUSTER), 0);
    comp[n - 1] ^= 0x40;
    assert_int_equal(decode(z, comp, n, CLUSTER), -EIO);

    /* Two frames that exactly fill the cluster, with a skippable frame between. */
    size_t a = ZSTD_compress(comp, cap, src, CLUSTER / 4, 3);
    assert_false(ZSTD_isError(a));
    static const uint8_t skippable[12] = {0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4};
    memcpy(comp + a, skippable, sizeof(skippable));
    a += sizeof(skippable);
    size_t b = ZSTD_compress(comp + a, cap, src + CLUSTER / 4, CLUSTER - CLUSTER / 4, 3);
    assert_false(ZSTD_isError(b));
    memset(dst, 0, CLUSTER);
    assert_int_equal(vd_codec_decompress_once(NULL, z, comp, a + b, dst, CLUSTER), 0);
    assert_memory_equal(dst, src, CLUSTER);
    guard_check(dst, CLUSTER);
    /* ...and frames that together overflow it. */
    size_t c = ZSTD_compress(comp + a + b, cap, src, 16, 3);
    assert_false(ZSTD_isError(c));
    assert_int_equal(decode(z, comp, a + b + c, CLUSTER - 8), -EIO);
    /* Only the first frame: short. */
    assert_int_equal(decode(z, comp, a, CLUSTER), -EIO);

    /* A frame header declaring more content than the cluster. */
    n = ZSTD_compress(comp, cap, src, CLUSTER + 1, 3);
    assert_int_equal(ZSTD_getFrameContentSize(comp, n), CLUSTER + 1);
    assert_int_equal(decode(z, comp, n, CLUSTER), -EIO);
    free(dst);
    free(comp);
    free(src);
}

/* Bit flips and garbage: the decoder returns 0 or -EIO, never overruns, never crashes
 * (ASan watches the reads). Garbage with no valid header is always -EIO. */
static void test_corrupt(void **state)
{
    (void)state;
    const vd_codec *cs[2] = {deflate_codec(), zstd_codec()};
    uint8_t *src = malloc(CLUSTER);
    assert_non_null(src);
    for (int ci = 0; ci < 2; ci++) {
        fill(src, CLUSTER, DATA_TEXT, 11);
        uint8_t *comp;
        size_t clen = compress_new(cs[ci], cs[ci]->default_level, src, CLUSTER, &comp);
        uint8_t *bad = malloc(clen);
        assert_non_null(bad);
        uint8_t *dst = guarded_new(CLUSTER);
        vd_codec_ctx *ctx = vd_codec_ctx_new(cs[ci], cs[ci]->default_level);
        assert_non_null(ctx);
        int failures = 0;
        rng_state = 12345;
        for (int iter = 0; iter < 400; iter++) {
            memcpy(bad, comp, clen);
            int flips = 1 + (int)(rnd() % 4);
            for (int f = 0; f < flips; f++) {
                bad[rnd() % clen] ^= (uint8_t)(1u << (rnd() % 8));
            }
            int r = vd_codec_decompress(ctx, bad, clen, dst, CLUSTER);
            assert_true(r == 0 || r == -EIO);
            failures += r == -EIO;
            guard_check(dst, CLUSTER);
        }
        /* Most damage is detected (zstd frames here carry no checksum, so not all). */
        assert_true(failures > 100);

        for (size_t i = 0; i < clen; i++) {
            bad[i] = (uint8_t)rnd();
        }
        if (ci == 1) {
            bad[0] ^= 0x01; /* certainly not a zstd magic number */
        }
        assert_int_equal(vd_codec_decompress(ctx, bad, clen, dst, CLUSTER), -EIO);
        memset(bad, 0xff, clen);
        assert_int_equal(vd_codec_decompress(ctx, bad, clen, dst, CLUSTER), -EIO);
        guard_check(dst, CLUSTER);
        /* Still decodes good input afterwards. */
        assert_int_equal(vd_codec_decompress(ctx, comp, clen, dst, CLUSTER), 0);
        assert_memory_equal(dst, src, CLUSTER);
        vd_codec_ctx_free(ctx);
        free(dst);
        free(bad);
        free(comp);
    }
    free(src);
}

/* A deflate stream using a 32 KiB window (not what QEMU writes, but valid) decodes. */
static void test_deflate_big_window_input(void **state)
{
    (void)state;
    uint8_t *src = malloc(CLUSTER);
    size_t cap = compressBound(CLUSTER);
    uint8_t *comp = malloc(cap);
    assert_non_null(src);
    assert_non_null(comp);
    fill(src, CLUSTER, DATA_TEXT, 8);
    memcpy(src + CLUSTER / 2, src, CLUSTER / 2); /* matches 32 KiB back */
    size_t n = zlib_deflate_raw(src, CLUSTER, 9, 15, comp, cap);
    uint8_t *dst = guarded_new(CLUSTER);
    assert_int_equal(vd_codec_decompress_once(NULL, deflate_codec(), comp, n, dst, CLUSTER), 0);
    assert_memory_equal(dst, src, CLUSTER);
    guard_check(dst, CLUSTER);
    free(dst);
    free(comp);
    free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_check_level),
        cmocka_unit_test(test_deflate_roundtrip_all_levels),
        cmocka_unit_test(test_zstd_roundtrip_all_levels),
        cmocka_unit_test(test_empty_input),
        cmocka_unit_test(test_deflate_level_ratio),
        cmocka_unit_test(test_context_reuse),
        cmocka_unit_test(test_ctx_cache),
        cmocka_unit_test(test_enospc),
        cmocka_unit_test(test_trailing_input),
        cmocka_unit_test(test_truncated_and_short),
        cmocka_unit_test(test_zstd_other_frames),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_deflate_big_window_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
