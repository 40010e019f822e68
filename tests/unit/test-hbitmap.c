/* The hierarchical bitmap (src/util/hbitmap.c) against a naive model: one byte per
 * granule, every operation done both ways. Random sets, resets, lookups, searches for the
 * next dirty and clean byte and dirty runs, counts, merges (same and other granularity)
 * and serialisation round trips, at granularities from 512 B to 2 MiB, over sizes that are
 * and are not whole granules; a sparse bitmap over 1 TiB is searched end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/hbitmap.h"

typedef struct model {
    uint64_t size, gran, n;
    uint8_t *bit;
} model;

static void model_init(model *m, uint64_t size, uint64_t gran)
{
    m->size = size;
    m->gran = gran;
    m->n = (size + gran - 1) / gran;
    m->bit = calloc(m->n ? m->n : 1, 1);
    assert_non_null(m->bit);
}

static void model_op(model *m, uint64_t off, uint64_t len, uint8_t v)
{
    if (len == 0 || off >= m->size) {
        return;
    }
    uint64_t end = len > m->size - off ? m->size : off + len;
    for (uint64_t g = off / m->gran; g <= (end - 1) / m->gran; g++) {
        m->bit[g] = v;
    }
}

static uint64_t model_count(const model *m)
{
    uint64_t c = 0;
    for (uint64_t g = 0; g < m->n; g++) {
        c += m->bit[g] ? m->gran : 0;
    }
    return c;
}

/* The first byte offset in [off, end) whose granule has value v, as the bitmap rounds. */
static int64_t model_next(const model *m, uint64_t off, uint64_t end, uint8_t v)
{
    end = end < m->size ? end : m->size;
    for (uint64_t g = off / m->gran; off < end && g * m->gran < end; g++) {
        if (m->bit[g] == v) {
            uint64_t b = g * m->gran;
            return (int64_t)(b > off ? b : off);
        }
    }
    return -1;
}

static uint64_t rnd(uint64_t n)
{
    uint64_t r = ((uint64_t)random() << 31) ^ (uint64_t)random();
    return n ? r % n : 0;
}

static void check_same(const vd_hbitmap *hb, const model *m)
{
    assert_int_equal(vd_hbitmap_count(hb), model_count(m));
    for (uint64_t g = 0; g < m->n; g++) {
        if (vd_hbitmap_get(hb, g * m->gran) != (m->bit[g] != 0)) {
            fail_msg("granule %llu differs", (unsigned long long)g);
        }
    }
}

static void random_ops(uint64_t size, uint64_t gran, int rounds)
{
    vd_hbitmap *hb = vd_hbitmap_new(size, gran);
    assert_non_null(hb);
    model m;
    model_init(&m, size, gran);
    for (int i = 0; i < rounds; i++) {
        uint64_t off = rnd(size + gran);
        uint64_t len = rnd(rnd(8) ? 8 * gran : size + 1);
        switch (rnd(9)) {
        case 0:
        case 1:
        case 2:
            vd_hbitmap_set(hb, off, len);
            model_op(&m, off, len, 1);
            break;
        case 3:
        case 4:
            vd_hbitmap_reset(hb, off, len);
            model_op(&m, off, len, 0);
            break;
        case 5: {
            uint64_t end = off + len;
            assert_int_equal(vd_hbitmap_next_dirty(hb, off, end), model_next(&m, off, end, 1));
            assert_int_equal(vd_hbitmap_next_zero(hb, off, end), model_next(&m, off, end, 0));
            uint64_t s, l;
            int64_t want = model_next(&m, off, end, 1);
            bool got = vd_hbitmap_next_dirty_area(hb, off, end, &s, &l);
            assert_int_equal(got, want >= 0);
            if (got) {
                assert_int_equal(s, (uint64_t)want);
                int64_t z = model_next(&m, s, end, 0);
                uint64_t e = z < 0 ? (end < size ? end : size) : (uint64_t)z;
                assert_int_equal(l, e - s);
            }
            break;
        }
        case 6: {
            /* Serialise a stretch of granules and put it back into a fresh bitmap. */
            uint64_t first = rnd(m.n + 1);
            uint64_t count = rnd(m.n - first + 1);
            uint8_t *buf = malloc((size_t)(count + 7) / 8 + 1);
            assert_non_null(buf);
            vd_hbitmap_serialize(hb, first, count, buf);
            for (uint64_t k = 0; k < count; k++) {
                assert_int_equal((buf[k / 8] >> (k % 8)) & 1, m.bit[first + k]);
            }
            vd_hbitmap *copy = vd_hbitmap_new(size, gran);
            assert_non_null(copy);
            vd_hbitmap_set(copy, 0, size);
            vd_hbitmap_deserialize(copy, first, count, buf);
            for (uint64_t g = 0; g < m.n; g++) {
                bool want_bit = g >= first && g < first + count ? m.bit[g] : true;
                assert_int_equal(vd_hbitmap_get(copy, g * gran), want_bit);
            }
            vd_hbitmap_free(copy);
            free(buf);
            break;
        }
        case 7: {
            /* A resized copy keeps the granules both sizes have; the rest is clean. */
            uint64_t ns = rnd(2 * size + 1);
            vd_hbitmap *r = vd_hbitmap_resized(hb, ns);
            assert_non_null(r);
            model mr;
            model_init(&mr, ns, gran);
            for (uint64_t g = 0; g < mr.n && g < m.n; g++) {
                mr.bit[g] = m.bit[g];
            }
            check_same(r, &mr);
            assert_int_equal(vd_hbitmap_next_dirty(r, 0, ns), model_next(&mr, 0, ns, 1));
            vd_hbitmap_free(r);
            free(mr.bit);
            break;
        }
        default:
            vd_hbitmap_reset_all(hb);
            memset(m.bit, 0, m.n);
            break;
        }
        if (i % 64 == 0) {
            check_same(hb, &m);
        }
    }
    check_same(hb, &m);
    vd_hbitmap_free(hb);
    free(m.bit);
}

static void test_model_granularities(void **state)
{
    (void)state;
    srandom(20261207);
    static const uint64_t grans[] = {512, 4096, 65536, 2u << 20};
    for (size_t i = 0; i < sizeof(grans) / sizeof(grans[0]); i++) {
        uint64_t g = grans[i];
        random_ops(g * 700, g, 2000);            /* whole granules, several words */
        random_ops(g * 4097 + 123, g, 2000);     /* a partial last granule, 3 levels */
        random_ops(g * 63 + 1, g, 500);          /* under one word */
    }
}

static void test_merge(void **state)
{
    (void)state;
    srandom(7);
    uint64_t size = (64u << 20) + 4096 * 3;
    for (int round = 0; round < 40; round++) {
        uint64_t ga = 1ull << (9 + rnd(8)), gb = rnd(2) ? ga : 1ull << (9 + rnd(8));
        vd_hbitmap *a = vd_hbitmap_new(size, ga), *b = vd_hbitmap_new(size, gb);
        assert_non_null(a);
        assert_non_null(b);
        model ma, mb;
        model_init(&ma, size, ga);
        model_init(&mb, size, gb);
        for (int i = 0; i < 30; i++) {
            uint64_t off = rnd(size), len = rnd(1 << 20);
            vd_hbitmap_set(a, off, len);
            model_op(&ma, off, len, 1);
            off = rnd(size);
            len = rnd(1 << 20);
            vd_hbitmap_set(b, off, len);
            model_op(&mb, off, len, 1);
        }
        assert_true(vd_hbitmap_merge(a, b));
        /* a's granule is dirty if it was, or if any byte of it was dirty in b. */
        for (uint64_t g = 0; g < mb.n; g++) {
            if (mb.bit[g]) {
                model_op(&ma, g * gb, gb, 1);
            }
        }
        check_same(a, &ma);
        vd_hbitmap_free(a);
        vd_hbitmap_free(b);
        free(ma.bit);
        free(mb.bit);
    }
    vd_hbitmap *x = vd_hbitmap_new(4096, 512), *y = vd_hbitmap_new(8192, 512);
    assert_false(vd_hbitmap_merge(x, y));
    vd_hbitmap_free(x);
    vd_hbitmap_free(y);
}

/* 1 TiB at 64 KiB: three dirty runs found in a few steps each, and the counts right. */
static void test_sparse_large(void **state)
{
    (void)state;
    uint64_t size = 1ull << 40;
    vd_hbitmap *hb = vd_hbitmap_new(size, 65536);
    assert_non_null(hb);
    vd_hbitmap_set(hb, 5ull << 30, 100);
    vd_hbitmap_set(hb, (700ull << 30) + 70000, 200000);
    vd_hbitmap_set(hb, size - 1, 1);
    uint64_t s, l, off = 0;
    uint64_t want[3][2] = {{5ull << 30, 65536},
                           {(700ull << 30) + 65536, 4 * 65536},
                           {size - 65536, 65536}};
    for (int i = 0; i < 3; i++) {
        assert_true(vd_hbitmap_next_dirty_area(hb, off, size, &s, &l));
        assert_int_equal(s, want[i][0]);
        assert_int_equal(l, want[i][1]);
        off = s + l;
    }
    assert_false(vd_hbitmap_next_dirty_area(hb, off, size, &s, &l));
    assert_int_equal(vd_hbitmap_count(hb), 6 * 65536);
    vd_hbitmap_reset(hb, 0, size);
    assert_int_equal(vd_hbitmap_count(hb), 0);
    assert_int_equal(vd_hbitmap_next_dirty(hb, 0, size), -1);
    vd_hbitmap_free(hb);
}

/* A summary bit stays while any word under it is dirty: two dirty words under one bit of
 * the second level, one cleared, and a search from the start still finds the other. */
static void test_summary_kept(void **state)
{
    (void)state;
    vd_hbitmap *hb = vd_hbitmap_new(512ull * 64 * 64 * 4, 512);  /* 3 levels */
    assert_non_null(hb);
    uint64_t g1 = 64 * 64 + 3, g2 = 64 * 64 + 64 * 5 + 9;  /* level-1 word 1, two words */
    vd_hbitmap_set(hb, g1 * 512, 512);
    vd_hbitmap_set(hb, g2 * 512, 512);
    vd_hbitmap_reset(hb, g1 * 512, 512);
    assert_int_equal(vd_hbitmap_next_dirty(hb, 0, vd_hbitmap_size(hb)), (int64_t)(g2 * 512));
    vd_hbitmap_free(hb);
}

static void test_bad_granularity(void **state)
{
    (void)state;
    assert_null(vd_hbitmap_new(1 << 20, 256));
    assert_null(vd_hbitmap_new(1 << 20, 3000));
    assert_null(vd_hbitmap_new(1 << 20, 4ull << 30));
    vd_hbitmap *hb = vd_hbitmap_new(0, 512);
    assert_non_null(hb);
    vd_hbitmap_set(hb, 0, 100);
    assert_int_equal(vd_hbitmap_count(hb), 0);
    assert_int_equal(vd_hbitmap_next_dirty(hb, 0, 100), -1);
    vd_hbitmap_free(hb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_granularities),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_sparse_large),
        cmocka_unit_test(test_summary_kept),
        cmocka_unit_test(test_bad_granularity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
