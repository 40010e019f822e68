/* Unit tests of rbd filenames (rbd:pool/[namespace/]image[@snapshot][:key=value...]) as
 * qemu-img 7.2 reads them: the parts and their backslash escapes, the options (id, conf,
 * and the rest as ordered JSON pairs), and QEMU's errors. Each case compares the whole
 * options tree through its JSON form; the pairs' own JSON text is checked apart. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "block/drivers/rbd-filename.h"

/* The JSON of name's options, or "ERR: message". Caller frees. */
static char *rbd(const char *name)
{
    vd_tree *t = (vd_tree *)(uintptr_t)1;  /* a failure must leave it as it is */
    vd_error *err = NULL;
    char *out = NULL;
    if (vd_rbd_filename_options(name, &t, &err) < 0) {
        assert_true(t == (vd_tree *)(uintptr_t)1);
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

static void expect(const char *name, const char *want)
{
    char *got = rbd(name);
    if (strcmp(got, want)) {
        char copy[512];
        snprintf(copy, sizeof(copy), "%s", got);
        free(got);
        fail_msg("\"%s\" gave %s, want %s", name, copy, want);
    }
    free(got);
}

/* The "=keyvalue-pairs" text of name's options ("" when there is none). */
static void expect_pairs(const char *name, const char *want)
{
    vd_tree *t = NULL;
    assert_int_equal(vd_rbd_filename_options(name, &t, NULL), 0);
    const vd_tree *pairs = vd_tree_get(t, "=keyvalue-pairs");
    const char *got = pairs ? vd_tree_string(pairs) : "";
    assert_non_null(got);
    if (strcmp(got, want)) {
        char copy[512];
        snprintf(copy, sizeof(copy), "%s", got);
        vd_tree_free(t);
        fail_msg("\"%s\" gave pairs %s, want %s", name, copy, want);
    }
    vd_tree_free(t);
}

static void test_parts(void **state)
{
    (void)state;
    expect("rbd:pool/image", "{\"driver\": \"rbd\", \"pool\": \"pool\", \"namespace\": \"\", "
           "\"image\": \"image\"}");
    /* Only the first '/' after the pool's starts a namespace; the image keeps the rest. */
    expect("rbd:pool/ns/image", "{\"driver\": \"rbd\", \"pool\": \"pool\", \"namespace\": "
           "\"ns\", \"image\": \"image\"}");
    expect("rbd:pool/ns/a/b", "{\"driver\": \"rbd\", \"pool\": \"pool\", \"namespace\": "
           "\"ns\", \"image\": \"a/b\"}");
    expect("rbd:pool/image@snap", "{\"driver\": \"rbd\", \"pool\": \"pool\", \"namespace\": "
           "\"\", \"image\": \"image\", \"snapshot\": \"snap\"}");
    expect("rbd:pool/ns/image@snap:id=admin", "{\"driver\": \"rbd\", \"pool\": \"pool\", "
           "\"namespace\": \"ns\", \"image\": \"image\", \"snapshot\": \"snap\", \"user\": "
           "\"admin\"}");
    /* The pool goes up to the first '/', ':' or not. */
    expect("rbd:p:q/i", "{\"driver\": \"rbd\", \"pool\": \"p:q\", \"namespace\": \"\", "
           "\"image\": \"i\"}");
    assert_true(vd_rbd_filename_prefix("rbd:"));
    assert_false(vd_rbd_filename_prefix("rbd"));
    assert_false(vd_rbd_filename_prefix("RBD:p/i"));
}

static void test_escapes(void **state)
{
    (void)state;
    expect("rbd:po\\/ol/im\\:a\\@ge", "{\"driver\": \"rbd\", \"pool\": \"po/ol\", "
           "\"namespace\": \"\", \"image\": \"im:a@ge\"}");
    /* An escaped '/' stays in the namespace; the unescaped one ends it. */
    expect("rbd:p/n\\/s/i", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"n/s\", "
           "\"image\": \"i\"}");
    /* "\\" is one backslash, and the ':' after it still separates. */
    expect("rbd:p/a\\\\:id=x", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", "
           "\"image\": \"a\\\\\", \"user\": \"x\"}");
    /* A backslash escapes any character, and one at the very end stays. */
    expect("rbd:p/\\i\\", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", "
           "\"image\": \"i\\\\\"}");
    expect("rbd:p/i@s\\:t:conf=c\\:d", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": "
           "\"\", \"image\": \"i\", \"snapshot\": \"s:t\", \"conf\": \"c:d\"}");
    expect_pairs("rbd:p/i:a\\=b=c\\:d", "[\"a=b\", \"c:d\"]");
}

static void test_options(void **state)
{
    (void)state;
    expect("rbd:p/i:id=admin:conf=/etc/ceph/ceph.conf", "{\"driver\": \"rbd\", \"pool\": "
           "\"p\", \"namespace\": \"\", \"image\": \"i\", \"user\": \"admin\", \"conf\": "
           "\"/etc/ceph/ceph.conf\"}");
    /* Other keys go to rados in the order given, beside id and conf. */
    expect("rbd:p/i:mon_host=10.0.0.1\\:6789:conf=/c:auth_supported=none:id=u:b=2",
           "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", \"image\": \"i\", "
           "\"conf\": \"/c\", \"user\": \"u\", \"=keyvalue-pairs\": \"[\\\"mon_host\\\", "
           "\\\"10.0.0.1:6789\\\", \\\"auth_supported\\\", \\\"none\\\", \\\"b\\\", "
           "\\\"2\\\"]\"}");
    expect_pairs("rbd:p/i:z=1:a=2:z=3", "[\"z\", \"1\", \"a\", \"2\", \"z\", \"3\"]");
    /* A later conf or id wins. */
    expect("rbd:p/i:conf=a:conf=b", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": "
           "\"\", \"image\": \"i\", \"conf\": \"b\"}");
    /* QEMU looks for the '=' before the ':' that ends a value: "a:b=c" is key "a:b", and
     * a value keeps any '=' after the first. */
    expect_pairs("rbd:p/i:a:b=c", "[\"a:b\", \"c\"]");
    expect_pairs("rbd:p/i:a=b=c", "[\"a\", \"b=c\"]");
    expect_pairs("rbd:p/i:id=x", "");
}

static void test_pairs_json(void **state)
{
    (void)state;
    /* Written as QEMU writes JSON: ASCII only, \uXXXX for the rest, U+FFFD for bytes
     * that are no UTF-8 (one for each broken sequence), surrogate pairs beyond U+FFFF. */
    expect_pairs("rbd:p/i:k=\"\\\\\t\x01\x7f", "[\"k\", \"\\\"\\\\\\t\\u0001\\u007F\"]");
    expect_pairs("rbd:p/i:k=\xc3\xa9\xf0\x9f\x98\x80", "[\"k\", \"\\u00E9\\uD83D\\uDE00\"]");
    expect_pairs("rbd:p/i:k=\xff\xc3(\xc0\x80\xed\xa0\x80\xef\xbf\xbe",
                 "[\"k\", \"\\uFFFD\\uFFFD(\\uFFFD\\uFFFD\\uFFFD\"]");
    /* And it reads back as the strings it came from. */
    vd_tree *t = NULL, *list = NULL;
    assert_int_equal(vd_rbd_filename_options("rbd:p/i:\xc3\xa9=\xf0\x9f\x98\x80\n", &t, NULL),
                     0);
    const char *json = vd_tree_string(vd_tree_get(t, "=keyvalue-pairs"));
    assert_int_equal(vd_tree_parse_json(json, strlen(json), &list, NULL), 0);
    assert_int_equal(vd_tree_size(list), 2);
    assert_string_equal(vd_tree_string(vd_tree_at(list, 0)), "\xc3\xa9");
    assert_string_equal(vd_tree_string(vd_tree_at(list, 1)), "\xf0\x9f\x98\x80\n");
    vd_tree_free(list);
    vd_tree_free(t);
}

static void test_errors(void **state)
{
    (void)state;
    expect("rbd:", "ERR: Pool name is required");
    expect("rbd:pool", "ERR: Pool name is required");
    expect("rbd:pool:image", "ERR: Pool name is required");
    expect("rbd:p\\/i", "ERR: Pool name is required");
    expect("nbd:p/i", "ERR: File name must start with 'rbd:'");
    expect("rbd:p/i:id", "ERR: conf option id has no value");
    expect("rbd:p/i:a=1:b", "ERR: conf option b has no value");
    /* An empty option, and a name shown as written, escapes included. */
    expect("rbd:p/i:", "ERR: conf option  has no value");
    expect("rbd:p/i:a=b:", "ERR: conf option  has no value");
    expect("rbd:p/i:a\\:b", "ERR: conf option a\\:b has no value");
}

static void test_at_sign(void **state)
{
    (void)state;
    /* An unescaped '@' anywhere after the pool makes a snapshot, even one among the
     * options: the image part then runs over the ':' up to it. */
    expect("rbd:p/i:conf=/x@y", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": "
           "\"i:conf=\", \"image\": \"x\", \"snapshot\": \"y\"}");
    /* An escaped '@' alone is no snapshot... */
    expect("rbd:p/i\\@s:conf=/c", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": "
           "\"\", \"image\": \"i@s\", \"conf\": \"/c\"}");
    /* ...but with an unescaped one after it, the image goes up to that one. */
    expect("rbd:p/i\\@s@t", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", "
           "\"image\": \"i@s\", \"snapshot\": \"t\"}");
    expect("rbd:p/i@s@t", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", "
           "\"image\": \"i\", \"snapshot\": \"s@t\"}");
}

static void test_empty_parts(void **state)
{
    (void)state;
    /* Empty names are the driver's to refuse (QEMU gets as far as connecting). */
    expect("rbd:/", "{\"driver\": \"rbd\", \"pool\": \"\", \"namespace\": \"\", \"image\": "
           "\"\"}");
    expect("rbd:p/@", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", \"image\": "
           "\"\", \"snapshot\": \"\"}");
    expect("rbd:p//i", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", "
           "\"image\": \"i\"}");
    expect("rbd:p/i:id=:conf=", "{\"driver\": \"rbd\", \"pool\": \"p\", \"namespace\": \"\", "
           "\"image\": \"i\", \"user\": \"\", \"conf\": \"\"}");
    expect_pairs("rbd:p/i:=v", "[\"\", \"v\"]");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_pairs_json),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_at_sign),
        cmocka_unit_test(test_empty_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
