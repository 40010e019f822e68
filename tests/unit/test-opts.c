/* Unit tests of the option-list parser (qemu-img -o syntax), the typed getters, and the
 * size parser and printer in include/vdisk/vdisk.h. Expected values are qemu-img 7.2's
 * behaviour for the same input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "vdisk/vdisk.h"

/* Parses text into a fresh list, asserting success (and freeing everything first when it
 * fails, so that a failing case does not also report leaks). */
static vd_opts *parse_ok(const char *text)
{
    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    assert_non_null(o);
    int r = vd_opts_parse(o, text, &err);
    if (r != 0 || err) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", err && vd_error_msg(err) ? vd_error_msg(err) : "");
        vd_error_free(err);
        vd_opts_free(o);
        fail_msg("vd_opts_parse(\"%s\") = %d: %s", text, r, msg);
    }
    return o;
}

static void test_parse_basic(void **state)
{
    (void)state;
    vd_opts *o = parse_ok("cluster_size=4k,compat=0.10,lazy_refcounts=on");
    assert_int_equal(vd_opts_count(o), 3);
    assert_string_equal(vd_opts_get(o, "cluster_size"), "4k");
    assert_string_equal(vd_opts_get(o, "compat"), "0.10");
    assert_string_equal(vd_opts_get(o, "lazy_refcounts"), "on");
    assert_null(vd_opts_get(o, "refcount_bits"));
    assert_null(vd_opts_get(o, "cluster"));  /* no prefix matching */
    vd_opts_free(o);

    o = parse_ok("");
    assert_int_equal(vd_opts_count(o), 0);
    vd_opts_free(o);
}

static void test_parse_later_key_wins(void **state)
{
    (void)state;
    vd_opts *o = parse_ok("a=1,b=2,a=3");
    assert_int_equal(vd_opts_count(o), 2);
    assert_string_equal(vd_opts_get(o, "a"), "3");
    vd_error *err = NULL;
    assert_int_equal(vd_opts_parse(o, "b=4,c=5", &err), 0);
    assert_null(err);
    assert_int_equal(vd_opts_count(o), 3);
    assert_string_equal(vd_opts_get(o, "a"), "3");
    assert_string_equal(vd_opts_get(o, "b"), "4");
    assert_string_equal(vd_opts_get(o, "c"), "5");
    vd_opts_free(o);
}

static void test_parse_comma_escape(void **state)
{
    (void)state;
    vd_opts *o = parse_ok("backing_file=a,,b.qcow2,backing_fmt=qcow2");
    assert_string_equal(vd_opts_get(o, "backing_file"), "a,b.qcow2");
    assert_string_equal(vd_opts_get(o, "backing_fmt"), "qcow2");
    vd_opts_free(o);

    o = parse_ok("x=,,,,,y=1");
    assert_string_equal(vd_opts_get(o, "x"), ",,");
    assert_string_equal(vd_opts_get(o, "y"), "1");
    vd_opts_free(o);

    /* '=' inside a value is part of the value. */
    o = parse_ok("backing_file=a=b");
    assert_string_equal(vd_opts_get(o, "backing_file"), "a=b");
    vd_opts_free(o);
}

static void test_parse_empty_value(void **state)
{
    (void)state;
    vd_opts *o = parse_ok("backing_file=,size=1M");
    assert_non_null(vd_opts_get(o, "backing_file"));
    assert_string_equal(vd_opts_get(o, "backing_file"), "");
    assert_string_equal(vd_opts_get(o, "size"), "1M");
    vd_opts_free(o);
}

static void test_parse_help(void **state)
{
    (void)state;
    vd_opts *o = parse_ok("help");
    assert_non_null(vd_opts_get(o, "help"));
    vd_opts_free(o);

    o = parse_ok("cluster_size=4k,help");
    assert_non_null(vd_opts_get(o, "help"));
    assert_string_equal(vd_opts_get(o, "cluster_size"), "4k");
    vd_opts_free(o);
}

/* qemu-img takes a bare key as "key=on": `-o lazy_refcounts` enables lazy refcounts. */
static void test_parse_bare_key_means_on(void **state)
{
    (void)state;
    vd_opts *o = parse_ok("lazy_refcounts,cluster_size=4k");
    assert_non_null(vd_opts_get(o, "lazy_refcounts"));
    assert_string_equal(vd_opts_get(o, "lazy_refcounts"), "on");
    assert_string_equal(vd_opts_get(o, "cluster_size"), "4k");
    vd_opts_free(o);
}

static void test_parse_empty_key_fails(void **state)
{
    (void)state;
    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    assert_true(vd_opts_parse(o, "=4k", &err) < 0);
    assert_non_null(err);
    assert_non_null(vd_error_msg(err));
    assert_true(strlen(vd_error_msg(err)) > 0);
    vd_error_free(err);
    vd_opts_free(o);

    /* A NULL errp is allowed and still reports the failure. */
    o = vd_opts_new();
    assert_true(vd_opts_parse(o, "=4k", NULL) < 0);
    vd_opts_free(o);
}

static void test_set_get_del(void **state)
{
    (void)state;
    vd_opts *o = vd_opts_new();
    assert_int_equal(vd_opts_set(o, "size", "1G"), 0);
    assert_int_equal(vd_opts_set(o, "compat", "1.1"), 0);
    assert_int_equal(vd_opts_set(o, "size", "2G"), 0);
    assert_int_equal(vd_opts_count(o), 2);
    assert_string_equal(vd_opts_get(o, "size"), "2G");

    /* Iteration visits every pair exactly once. */
    bool seen_size = false, seen_compat = false;
    for (size_t i = 0; i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        const char *v = vd_opts_value(o, i);
        assert_non_null(k);
        assert_non_null(v);
        if (strcmp(k, "size") == 0) {
            assert_false(seen_size);
            assert_string_equal(v, "2G");
            seen_size = true;
        } else if (strcmp(k, "compat") == 0) {
            assert_false(seen_compat);
            assert_string_equal(v, "1.1");
            seen_compat = true;
        } else {
            fail_msg("unexpected key %s", k);
        }
    }
    assert_true(seen_size && seen_compat);

    assert_int_equal(vd_opts_del(o, "size"), 0);
    assert_null(vd_opts_get(o, "size"));
    assert_int_equal(vd_opts_count(o), 1);
    assert_string_equal(vd_opts_key(o, 0), "compat");
    assert_string_equal(vd_opts_get(o, "compat"), "1.1");
    vd_opts_free(o);
    vd_opts_free(NULL);  /* like free(NULL) */
}

static void test_get_bool(void **state)
{
    (void)state;
    static const struct { const char *text; bool want; } ok[] = {
        {"on", true}, {"off", false}, {"true", true}, {"false", false},
        {"yes", true}, {"no", false},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        vd_opts *o = vd_opts_new();
        vd_opts_set(o, "lazy_refcounts", ok[i].text);
        vd_error *err = NULL;
        bool v = !ok[i].want;
        assert_int_equal(vd_opts_get_bool(o, "lazy_refcounts", !ok[i].want, &v, &err), 0);
        assert_null(err);
        assert_int_equal(v, ok[i].want);
        vd_opts_free(o);
    }

    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    bool v = false;
    assert_int_equal(vd_opts_get_bool(o, "absent", true, &v, &err), 0);
    assert_true(v);
    assert_int_equal(vd_opts_get_bool(o, "absent", false, &v, &err), 0);
    assert_false(v);
    assert_null(err);

    vd_opts_set(o, "extended_l2", "maybe");
    assert_int_equal(vd_opts_get_bool(o, "extended_l2", false, &v, &err), -EINVAL);
    assert_non_null(err);
    assert_int_equal(err->cls, VD_ERR_INVALID);
    assert_int_equal(err->errnum, EINVAL);
    assert_non_null(strstr(vd_error_msg(err), "extended_l2"));
    vd_error_free(err);
    vd_opts_free(o);
}

static void test_get_size(void **state)
{
    (void)state;
    vd_opts *o = parse_ok("cluster_size=64k,size=1.5G,bad=12x,neg=-1");
    vd_error *err = NULL;
    uint64_t v = 0;
    assert_int_equal(vd_opts_get_size(o, "cluster_size", 0, &v, &err), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(vd_opts_get_size(o, "size", 0, &v, &err), 0);
    assert_int_equal(v, 1610612736ull);
    assert_int_equal(vd_opts_get_size(o, "absent", 12345, &v, &err), 0);
    assert_int_equal(v, 12345);
    assert_null(err);

    assert_true(vd_opts_get_size(o, "bad", 0, &v, &err) < 0);
    assert_non_null(err);
    assert_int_equal(err->cls, VD_ERR_INVALID);
    assert_non_null(strstr(vd_error_msg(err), "bad"));
    vd_error_free(err);
    err = NULL;
    assert_true(vd_opts_get_size(o, "neg", 0, &v, &err) < 0);
    assert_non_null(err);
    assert_non_null(strstr(vd_error_msg(err), "neg"));
    vd_error_free(err);
    vd_opts_free(o);
}

static void test_parse_size_valid(void **state)
{
    (void)state;
    static const struct { const char *text; uint64_t want; } cases[] = {
        {"0", 0},
        {"1", 1},
        {"512", 512},
        {"512b", 512},
        {"512B", 512},
        {"1k", 1024},
        {"1K", 1024},
        {"64k", 65536},
        {"1M", 1ull << 20},
        {"1m", 1ull << 20},
        {"2G", 2ull << 30},
        {"1T", 1ull << 40},
        {"1P", 1ull << 50},
        {"1E", 1ull << 60},
        {"15E", 15ull << 60},
        {"1.5M", 1572864},
        {"0.5k", 512},
        {"0x100000", 1048576},
        {"18446744073709551615", UINT64_MAX},
        {"16777215T", 16777215ull << 40},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 42;
        int r = vd_parse_size(cases[i].text, &v);
        if (r != 0 || v != cases[i].want) {
            fail_msg("vd_parse_size(\"%s\") = %d, %llu; want 0, %llu", cases[i].text, r,
                     (unsigned long long)v, (unsigned long long)cases[i].want);
        }
    }
}

static void test_parse_size_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "k", "abc", "12x", "1kb", "1 k", "-1", "-0", "1k2", "1.5.5M", "M1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 42;
        int r = vd_parse_size(bad[i], &v);
        if (r != -EINVAL) {
            fail_msg("vd_parse_size(\"%s\") = %d (value %llu), want -EINVAL", bad[i], r,
                     (unsigned long long)v);
        }
    }
    static const char *const big[] = {
        "16E", "18446744073709551616", "17179869184G", "99999999999999999999999",
        "16777216T",
    };
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        uint64_t v = 42;
        int r = vd_parse_size(big[i], &v);
        if (r != -ERANGE) {
            fail_msg("vd_parse_size(\"%s\") = %d (value %llu), want -ERANGE", big[i], r,
                     (unsigned long long)v);
        }
    }
}

static void test_format_size(void **state)
{
    (void)state;
    /* Expected strings follow qemu-img's size_to_str(): three significant digits, and the
     * next unit from 1000 of the current one on. */
    static const struct { uint64_t v; const char *want; } cases[] = {
        {0, "0 B"},
        {1, "1 B"},
        {512, "512 B"},
        {999, "999 B"},
        {1000, "0.977 KiB"},
        {1023, "0.999 KiB"},
        {1024, "1 KiB"},
        {1536, "1.5 KiB"},
        {65536, "64 KiB"},
        {196624, "192 KiB"},
        {1024000, "0.977 MiB"},
        {1048576, "1 MiB"},
        {1572864, "1.5 MiB"},
        {1072693248, "0.999 GiB"},
        {1073741824, "1 GiB"},
        {1099511627776ull, "1 TiB"},
        {10995239734549ull, "10 TiB"},
        {1ull << 60, "1 EiB"},
        {UINT64_MAX, "16 EiB"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64];
        memset(buf, 'X', sizeof(buf));
        vd_format_size(cases[i].v, buf, sizeof(buf));
        assert_non_null(memchr(buf, '\0', sizeof(buf)));
        if (strcmp(buf, cases[i].want) != 0) {
            fail_msg("vd_format_size(%llu) = \"%s\", want \"%s\"",
                     (unsigned long long)cases[i].v, buf, cases[i].want);
        }
    }
}

static void test_format_size_short_buffer(void **state)
{
    (void)state;
    /* A short buffer is never overrun and always terminated. */
    char buf[16];
    memset(buf, 'X', sizeof(buf));
    vd_format_size(1000, buf, 4);
    assert_int_equal(buf[3], '\0');
    assert_int_equal(strlen(buf), 3);
    for (size_t i = 4; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 'X');
    }
    memset(buf, 'X', sizeof(buf));
    vd_format_size(1073741824, buf, 1);
    assert_int_equal(buf[0], '\0');
    assert_int_equal(buf[1], 'X');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_basic),
        cmocka_unit_test(test_parse_later_key_wins),
        cmocka_unit_test(test_parse_comma_escape),
        cmocka_unit_test(test_parse_empty_value),
        cmocka_unit_test(test_parse_help),
        cmocka_unit_test(test_parse_bare_key_means_on),
        cmocka_unit_test(test_parse_empty_key_fails),
        cmocka_unit_test(test_set_get_del),
        cmocka_unit_test(test_get_bool),
        cmocka_unit_test(test_get_size),
        cmocka_unit_test(test_parse_size_valid),
        cmocka_unit_test(test_parse_size_invalid),
        cmocka_unit_test(test_format_size),
        cmocka_unit_test(test_format_size_short_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
