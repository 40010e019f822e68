/* Unit tests of options trees from key=value text (--image-opts, qemu-io -o): dotted keys
 * nest, numbered keys become lists, conflicts are refused with the key named, and the
 * typed getters accept what QEMU's do and refuse the rest with its words. Each case checks
 * the tree through its JSON form, so the whole shape is compared at once. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vdisk/tree.h"

/* The JSON of text's tree, or "ERR: message". Caller frees. */
static char *keyval(const char *text, const char *implied)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    char *out = NULL;
    if (vd_tree_parse_keyval(text, implied, &t, &err) < 0) {
        assert_non_null(err);
        assert_int_equal(err->errnum, EINVAL);
        if (asprintf(&out, "ERR: %s", vd_error_msg(err)) < 0) {
            abort();
        }
        vd_error_free(err);
        return out;
    }
    assert_null(err);
    out = vd_tree_to_json(t);
    vd_tree_free(t);
    return out;
}

static void expect(const char *text, const char *implied, const char *want)
{
    char *got = keyval(text, implied);
    if (strcmp(got, want)) {
        char copy[512];
        snprintf(copy, sizeof(copy), "%s", got);
        free(got);
        fail_msg("\"%s\" gave %s, want %s", text, copy, want);
    }
    free(got);
}

static void test_nesting(void **state)
{
    (void)state;
    expect("driver=qcow2,file.driver=file,file.filename=a.qcow2",  NULL,
           "{\"driver\": \"qcow2\", \"file\": {\"driver\": \"file\", \"filename\": "
           "\"a.qcow2\"}}");
    expect("a.b.c=1,a.b.d=2,a.e=3", NULL, "{\"a\": {\"b\": {\"c\": \"1\", \"d\": \"2\"}, "
           "\"e\": \"3\"}}");
    /* A later key wins, as in QemuOpts; ",," is a comma in a value. */
    expect("x=1,x=2", NULL, "{\"x\": \"2\"}");
    expect("filename=a,,b,driver=raw", NULL, "{\"filename\": \"a,b\", \"driver\": \"raw\"}");
    /* A bare key is a flag that is on; the first bare word can be the implied key. */
    expect("a.qcow2,lazy-refcounts", "filename",
           "{\"filename\": \"a.qcow2\", \"lazy-refcounts\": \"on\"}");
    expect("", NULL, "{}");
}

static void test_lists(void **state)
{
    (void)state;
    expect("inject-error.0.event=l2_load,inject-error.1.event=read_aio,"
           "inject-error.1.errno=5", NULL,
           "{\"inject-error\": [{\"event\": \"l2_load\"}, {\"event\": \"read_aio\", "
           "\"errno\": \"5\"}]}");
    /* Order of indices in the text does not matter; gaps and mixtures do. */
    expect("l.1=b,l.0=a", NULL, "{\"l\": [\"a\", \"b\"]}");
    expect("l.0=a,l.2=c", NULL, "ERR: Missing list index 1");
    expect("l.0=a,l.x=c", NULL, "ERR: Cannot mix list and non-list keys");
}

static void test_conflicts(void **state)
{
    (void)state;
    /* A key with a value and dotted keys under it: both kept, the dotted ones flat, as in
     * QEMU's flat option dictionaries (in either order). */
    expect("overlap-check=constant,overlap-check.template=all", NULL,
           "{\"overlap-check\": \"constant\", \"overlap-check.template\": \"all\"}");
    expect("o.t.a=1,o.b=2,o=x", NULL,
           "{\"o.t.a\": \"1\", \"o.b\": \"2\", \"o\": \"x\"}");
    expect("a..b=1", NULL, "ERR: Invalid parameter 'a..b'");
    expect("a.=1", NULL, "ERR: Invalid parameter 'a.'");
    expect("=1", NULL, "ERR: Invalid parameter ''");
}

/* blockdev-add arguments may mix nested objects and dotted keys; crumple merges them. */
static void test_crumple_mixed(void **state)
{
    (void)state;
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree *file = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(file, "driver", vd_tree_new_string("file"));
    vd_tree_put(t, "file", file);
    vd_tree_put(t, "file.filename", vd_tree_new_string("a"));
    vd_tree_put(t, "cache.direct", vd_tree_new_bool(true));
    vd_error *err = NULL;
    assert_int_equal(vd_tree_crumple(t, &err), 0);
    char *json = vd_tree_to_json(t);
    assert_string_equal(json, "{\"file\": {\"driver\": \"file\", \"filename\": \"a\"}, "
                              "\"cache\": {\"direct\": true}}");
    free(json);
    vd_tree_free(t);
}

static void test_getters(void **state)
{
    (void)state;
    vd_tree *t = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tree_parse_keyval("on=on,off=off,bad=yes,n=0x10,size=1M,neg=-1", NULL,
                                          &t, &err), 0);
    vd_tree_put(t, "typed", vd_tree_new_bool(true));
    vd_tree_put(t, "num", vd_tree_new_int(42));
    bool b = false;
    uint64_t u = 0;
    assert_int_equal(vd_tree_get_bool(t, "on", NULL, false, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_tree_get_bool(t, "off", NULL, true, &b, &err), 0);
    assert_false(b);
    assert_int_equal(vd_tree_get_bool(t, "typed", NULL, false, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_tree_get_bool(t, "absent", NULL, true, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_tree_get_bool(t, "bad", "file.bad", false, &b, &err), -EINVAL);
    assert_string_equal(vd_error_msg(err), "Parameter 'file.bad' expects 'on' or 'off'");
    vd_error_freep(&err);
    assert_int_equal(vd_tree_get_uint(t, "n", NULL, 0, &u, &err), 0);
    assert_int_equal(u, 16);
    assert_int_equal(vd_tree_get_uint(t, "num", NULL, 0, &u, &err), 0);
    assert_int_equal(u, 42);
    assert_int_equal(vd_tree_get_uint(t, "size", NULL, 7, &u, &err), -EINVAL);
    assert_int_equal(u, 7);
    assert_string_equal(vd_error_msg(err), "Parameter 'size' expects a number");
    vd_error_freep(&err);
    assert_int_equal(vd_tree_get_size(t, "size", NULL, 0, &u, &err), 0);
    assert_int_equal(u, 1 << 20);
    assert_int_equal(vd_tree_get_size(t, "neg", NULL, 0, &u, &err), -EINVAL);
    assert_string_equal(vd_error_msg(err),
                        "Parameter 'neg' expects a non-negative number below 2^64");
    vd_error_freep(&err);
    const char *s = NULL;
    assert_int_equal(vd_tree_get_str(t, "num", NULL, &s, &err), -EINVAL);
    assert_string_equal(vd_error_msg(err), "Invalid parameter type for 'num', expected: string");
    vd_error_freep(&err);
    vd_tree_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_conflicts),
        cmocka_unit_test(test_crumple_mixed),
        cmocka_unit_test(test_getters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
