/* Unit tests of the JSON parser and printer for options trees (include/vdisk/tree.h): the
 * dialect QEMU accepts (single quotes, its escapes, its nesting limit), the integer/number
 * split, every class of error with its offset, and parse(print(t)) == t. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vdisk/tree.h"

/* Parses exactly len bytes from a heap copy of that size, so that ASan catches any read past
 * the end (the parser must not rely on a terminating NUL). */
static int parse_n(const char *text, size_t len, vd_tree **out, vd_error **errp)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    int r = vd_tree_parse_json(copy, len, out, errp);
    free(copy);
    return r;
}

static vd_tree *parse_ok(const char *text)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    int r = parse_n(text, strlen(text), &t, &err);
    if (r != 0 || err || !t) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", err && vd_error_msg(err) ? vd_error_msg(err) : "");
        vd_error_free(err);
        vd_tree_free(t);
        fail_msg("parse(\"%s\") = %d: %s", text, r, msg);
    }
    return t;
}

/* Asserts that len bytes of text fail to parse, leave *out alone, and give a message that
 * starts with "JSON parse error at offset " and contains want (when given). */
static void parse_fails_n(const char *text, size_t len, const char *want)
{
    vd_tree *sentinel = vd_tree_new(VD_TREE_NULL);
    vd_tree *t = sentinel;
    vd_error *err = NULL;
    int r = parse_n(text, len, &t, &err);
    const char *msg = err ? vd_error_msg(err) : NULL;
    if (r != -EINVAL || t != sentinel || !err || !msg ||
        strncmp(msg, "JSON parse error at offset ", 27) != 0 || err->errnum != EINVAL ||
        err->cls != VD_ERR_INVALID || (want && !strstr(msg, want))) {
        char m[512];
        snprintf(m, sizeof(m), "%s", msg ? msg : "(no message)");
        vd_error_free(err);
        if (t != sentinel) {
            vd_tree_free(t);
        }
        vd_tree_free(sentinel);
        fail_msg("parse(\"%.*s\") = %d, message \"%s\", wanted \"%s\"", (int)len, text, r, m,
                 want ? want : "");
    }
    vd_error_free(err);
    vd_tree_free(sentinel);
}

static void parse_fails(const char *text, const char *want)
{
    parse_fails_n(text, strlen(text), want);
}

static bool tree_equal(const vd_tree *a, const vd_tree *b)
{
    if (vd_tree_type_of(a) != vd_tree_type_of(b)) {
        return false;
    }
    switch (vd_tree_type_of(a)) {
    case VD_TREE_NULL:
        return true;
    case VD_TREE_BOOL:
        return vd_tree_bool(a) == vd_tree_bool(b);
    case VD_TREE_INT:
        return vd_tree_int(a) == vd_tree_int(b);
    case VD_TREE_NUMBER:
        return vd_tree_number(a) == vd_tree_number(b) &&
               signbit(vd_tree_number(a)) == signbit(vd_tree_number(b));
    case VD_TREE_STRING:
        return strcmp(vd_tree_string(a), vd_tree_string(b)) == 0;
    case VD_TREE_OBJECT:
    case VD_TREE_LIST:
        if (vd_tree_size(a) != vd_tree_size(b)) {
            return false;
        }
        for (size_t i = 0; i < vd_tree_size(a); i++) {
            if (vd_tree_type_of(a) == VD_TREE_OBJECT &&
                strcmp(vd_tree_key(a, i), vd_tree_key(b, i)) != 0) {
                return false;
            }
            if (!tree_equal(vd_tree_at(a, i), vd_tree_at(b, i))) {
                return false;
            }
        }
        return true;
    }
    return false;
}

static const char iotest_doc[] =
    "{'driver': 'qcow2', 'file': {'driver': 'blkdebug', 'inject-error': [{'event': "
    "'write_aio', 'errno': 28, 'once': true}], 'image': {'driver': 'file', 'filename': "
    "'a'}}}";

static void test_iotest_shape(void **state)
{
    (void)state;
    vd_tree *t = parse_ok(iotest_doc);
    assert_int_equal(vd_tree_type_of(t), VD_TREE_OBJECT);
    assert_int_equal(vd_tree_size(t), 2);
    assert_string_equal(vd_tree_key(t, 0), "driver");
    assert_string_equal(vd_tree_key(t, 1), "file");
    assert_string_equal(vd_tree_string(vd_tree_get(t, "driver")), "qcow2");

    vd_tree *file = vd_tree_get(t, "file");
    assert_int_equal(vd_tree_type_of(file), VD_TREE_OBJECT);
    assert_int_equal(vd_tree_size(file), 3);
    assert_string_equal(vd_tree_string(vd_tree_get(file, "driver")), "blkdebug");

    vd_tree *inject = vd_tree_get(file, "inject-error");
    assert_int_equal(vd_tree_type_of(inject), VD_TREE_LIST);
    assert_int_equal(vd_tree_size(inject), 1);
    vd_tree *rule = vd_tree_at(inject, 0);
    assert_int_equal(vd_tree_size(rule), 3);
    assert_string_equal(vd_tree_string(vd_tree_get(rule, "event")), "write_aio");
    assert_int_equal(vd_tree_type_of(vd_tree_get(rule, "errno")), VD_TREE_INT);
    assert_int_equal(vd_tree_int(vd_tree_get(rule, "errno")), 28);
    assert_int_equal(vd_tree_type_of(vd_tree_get(rule, "once")), VD_TREE_BOOL);
    assert_true(vd_tree_bool(vd_tree_get(rule, "once")));

    vd_tree *image = vd_tree_get(file, "image");
    assert_string_equal(vd_tree_string(vd_tree_get(image, "driver")), "file");
    assert_string_equal(vd_tree_string(vd_tree_get(image, "filename")), "a");

    char *json = vd_tree_to_json(t);
    assert_string_equal(json,
                        "{\"driver\": \"qcow2\", \"file\": {\"driver\": \"blkdebug\", "
                        "\"inject-error\": [{\"event\": \"write_aio\", \"errno\": 28, "
                        "\"once\": true}], \"image\": {\"driver\": \"file\", "
                        "\"filename\": \"a\"}}}");
    free(json);
    vd_tree_free(t);

    /* The same document in double quotes, with white space everywhere it may go. */
    t = parse_ok(" \t\r\n{ \"driver\" : \"qcow2\" , \"file\" :{\"driver\":\"blkdebug\","
                 "\"inject-error\":[ {\"event\":\"write_aio\",\"errno\":28,\"once\":true} ],"
                 "\"image\":{\"driver\":\"file\",\"filename\":\"a\"}}}\n\n ");
    vd_tree *t2 = parse_ok(iotest_doc);
    assert_true(tree_equal(t, t2));
    vd_tree_free(t);
    vd_tree_free(t2);
}

static void test_scalars_and_empty_containers(void **state)
{
    (void)state;
    vd_tree *t = parse_ok("true");
    assert_int_equal(vd_tree_type_of(t), VD_TREE_BOOL);
    assert_true(vd_tree_bool(t));
    vd_tree_free(t);
    t = parse_ok("false");
    assert_int_equal(vd_tree_type_of(t), VD_TREE_BOOL);
    assert_false(vd_tree_bool(t));
    vd_tree_free(t);
    t = parse_ok(" null ");
    assert_int_equal(vd_tree_type_of(t), VD_TREE_NULL);
    vd_tree_free(t);
    t = parse_ok("{}");
    assert_int_equal(vd_tree_type_of(t), VD_TREE_OBJECT);
    assert_int_equal(vd_tree_size(t), 0);
    vd_tree_free(t);
    t = parse_ok("[ ]");
    assert_int_equal(vd_tree_type_of(t), VD_TREE_LIST);
    assert_int_equal(vd_tree_size(t), 0);
    vd_tree_free(t);
    t = parse_ok("[[], {}, [[]], '', \"\"]");
    assert_int_equal(vd_tree_size(t), 5);
    assert_int_equal(vd_tree_type_of(vd_tree_at(t, 0)), VD_TREE_LIST);
    assert_int_equal(vd_tree_type_of(vd_tree_at(t, 1)), VD_TREE_OBJECT);
    assert_int_equal(vd_tree_size(vd_tree_at(t, 2)), 1);
    assert_string_equal(vd_tree_string(vd_tree_at(t, 3)), "");
    assert_string_equal(vd_tree_string(vd_tree_at(t, 4)), "");
    vd_tree_free(t);
    /* An empty key is a key like any other. */
    t = parse_ok("{'': 1}");
    assert_string_equal(vd_tree_key(t, 0), "");
    vd_tree_free(t);
}

static void assert_string_parses_to(const char *json, const char *want)
{
    vd_tree *t = parse_ok(json);
    assert_int_equal(vd_tree_type_of(t), VD_TREE_STRING);
    assert_string_equal(vd_tree_string(t), want);
    vd_tree_free(t);
}

static void test_strings_and_escapes(void **state)
{
    (void)state;
    assert_string_parses_to("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t.\"", "a\"b\\c/d\b\f\n\r\t.");
    assert_string_parses_to("'a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t.'", "a\"b\\c/d\b\f\n\r\t.");
    /* Each quote may appear unescaped inside the other, and \' works in both. */
    assert_string_parses_to("'say \"hi\"'", "say \"hi\"");
    assert_string_parses_to("\"it's\"", "it's");
    assert_string_parses_to("'it\\'s'", "it's");
    assert_string_parses_to("\"it\\'s\"", "it's");
    /* \u to UTF-8, 1 to 4 bytes, hex digits in either case, surrogate pairs combined. */
    assert_string_parses_to("\"\\u0041\\u00e9\\u00E9\\u20ac\"", "A\xc3\xa9\xc3\xa9\xe2\x82\xac");
    assert_string_parses_to("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80");
    assert_string_parses_to("'\\uD800\\uDC00\\uDBFF\\uDFFF'", "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf");
    assert_string_parses_to("\"\\u001f\\u007f\\uffff\"", "\x1f\x7f\xef\xbf\xbf");
    /* Raw UTF-8 passes through; DEL is not a control character for JSON. */
    assert_string_parses_to("\"caf\xc3\xa9 \xf0\x9f\x98\x80 \x7f\"", "caf\xc3\xa9 \xf0\x9f\x98\x80 \x7f");
    /* Keys decode the same way. */
    vd_tree *t = parse_ok("{'k\\u00e9\\n': 'v'}");
    assert_string_equal(vd_tree_key(t, 0), "k\xc3\xa9\n");
    vd_tree_free(t);
}

static void test_string_errors(void **state)
{
    (void)state;
    parse_fails("\"a\nb\"", "control character 0x0a");
    parse_fails("'\x01'", "control character 0x01");
    parse_fails("\"\t\"", "control character 0x09");
    parse_fails_n("\"a\0b\"", 5, "control character 0x00");
    parse_fails("\"\\ud800\"", "lone surrogate");
    parse_fails("\"\\udc00\"", "lone surrogate");
    parse_fails("\"\\ude00\\ud83d\"", "lone surrogate");
    parse_fails("\"\\ud800\\u0041\"", "lone surrogate");
    parse_fails("\"\\ud800\\ud800\"", "lone surrogate");
    parse_fails("\"\\ud800x\"", "lone surrogate");
    parse_fails("\"\\ud800\\n\"", "lone surrogate");
    parse_fails("\"\\u0000\"", "\\u0000");
    parse_fails("\"\\u12\"", "four hex digits");
    parse_fails("\"\\u12g4\"", "four hex digits");
    parse_fails("\"\\ud800\\u12\"", "four hex digits");
    parse_fails("\"\\x41\"", "invalid escape");
    parse_fails("\"\\a\"", "invalid escape");
    parse_fails("\"\\U0041\"", "invalid escape");
    parse_fails("\"abc", "unterminated string");
    parse_fails("'abc\"", "unterminated string");
    parse_fails("\"abc\\", "unterminated string");
    /* Malformed UTF-8: stray continuation, overlong, encoded surrogate, too large, cut. */
    parse_fails("\"\x80\"", "invalid UTF-8");
    parse_fails("\"\xc0\x80\"", "invalid UTF-8");
    parse_fails("\"\xe0\x80\xaf\"", "invalid UTF-8");
    parse_fails("\"\xed\xa0\x80\"", "invalid UTF-8");
    parse_fails("\"\xf4\x90\x80\x80\"", "invalid UTF-8");
    parse_fails("\"\xff\"", "invalid UTF-8");
    parse_fails("\"\xe2\x82\"", "invalid UTF-8");
    parse_fails_n("\"\xe2\x82", 3, "invalid UTF-8");
    /* The offset is that of the offending byte or escape. */
    parse_fails("[\"ab\\q\"]", "offset 4:");
    parse_fails("['ab\\ud800']", "offset 4:");
}

static void assert_int_parses(const char *json, int64_t want)
{
    vd_tree *t = parse_ok(json);
    if (vd_tree_type_of(t) != VD_TREE_INT) {
        vd_tree_free(t);
        fail_msg("%s: not an integer", json);
    }
    assert_true(vd_tree_int(t) == want);
    vd_tree_free(t);
}

static void assert_number_parses(const char *json, double want)
{
    vd_tree *t = parse_ok(json);
    if (vd_tree_type_of(t) != VD_TREE_NUMBER) {
        vd_tree_free(t);
        fail_msg("%s: not a number", json);
    }
    assert_true(vd_tree_number(t) == want);
    assert_true(signbit(vd_tree_number(t)) == signbit(want));
    vd_tree_free(t);
}

static void test_numbers(void **state)
{
    (void)state;
    assert_int_parses("0", 0);
    assert_int_parses("-0", 0);
    assert_int_parses("42", 42);
    assert_int_parses("-17", -17);
    assert_int_parses("9223372036854775807", INT64_MAX);
    assert_int_parses("-9223372036854775808", INT64_MIN);
    assert_int_parses("-9223372036854775807", -INT64_MAX);
    /* One past either end of int64 becomes a double, as in QEMU. */
    assert_number_parses("9223372036854775808", 9223372036854775808.0);
    assert_number_parses("-9223372036854775809", -9223372036854775809.0);
    assert_number_parses("18446744073709551616", 18446744073709551616.0);
    assert_number_parses("100000000000000000000000000000", 1e29);
    /* Fraction or exponent: a double even when the value is whole. */
    assert_number_parses("1.5", 1.5);
    assert_number_parses("1.0", 1.0);
    assert_number_parses("-0.0", -0.0);
    assert_number_parses("1e3", 1000.0);
    assert_number_parses("1E+2", 100.0);
    assert_number_parses("2.5e-3", 2.5e-3);
    assert_number_parses("0e0", 0.0);
    assert_number_parses("-1.25E-1", -0.125);
    assert_number_parses("1e-400", 0.0);  /* underflow is only a loss of precision */

    vd_tree *t = parse_ok("[1, 1.0, -2, 3e0]");
    assert_int_equal(vd_tree_type_of(vd_tree_at(t, 0)), VD_TREE_INT);
    assert_int_equal(vd_tree_type_of(vd_tree_at(t, 1)), VD_TREE_NUMBER);
    assert_int_equal(vd_tree_type_of(vd_tree_at(t, 2)), VD_TREE_INT);
    assert_int_equal(vd_tree_type_of(vd_tree_at(t, 3)), VD_TREE_NUMBER);
    vd_tree_free(t);
}

static void test_number_errors(void **state)
{
    (void)state;
    parse_fails("01", "leading zero");
    parse_fails("-01", "leading zero");
    parse_fails("00", "leading zero");
    parse_fails("[007]", "offset 1: number has a leading zero");
    parse_fails("+1", "expected a value");
    parse_fails("-", "expected a digit after '-', found end of input");
    parse_fails("- 1", "expected a digit after '-'");
    parse_fails("-x", "expected a digit after '-'");
    parse_fails(".5", "expected a value, found '.'");
    parse_fails("5.", "expected a digit after '.'");
    parse_fails("1.e5", "expected a digit after '.'");
    parse_fails("1e", "expected a digit in the exponent");
    parse_fails("1e+", "expected a digit in the exponent");
    parse_fails("1E-x", "expected a digit in the exponent");
    parse_fails("0x10", "offset 1: expected end of input");
    parse_fails("1e400", "out of range");
    parse_fails("-1e400", "out of range");
    parse_fails("Infinity", "expected a value");
    parse_fails("NaN", "expected a value");
    parse_fails("[-]", "expected a digit after '-'");
}

static void test_syntax_errors(void **state)
{
    (void)state;
    parse_fails("", "offset 0: expected a value, found end of input");
    parse_fails(" \t\r\n", "offset 4: expected a value, found end of input");
    parse_fails("tru", "expected a value");
    parse_fails("True", "expected a value");
    parse_fails("nul", "expected a value");
    parse_fails("undefined", "expected a value");
    parse_fails("nulll", "offset 4: expected end of input after the value, found 'l'");
    parse_fails("{} x", "offset 3: expected end of input after the value, found 'x'");
    parse_fails("1 2", "offset 2: expected end of input");
    parse_fails("{}{}", "offset 2: expected end of input");
    parse_fails_n("1\0", 2, "offset 1: expected end of input after the value, found byte 0x00");
    parse_fails("\f1", "found byte 0x0c");  /* form feed is not JSON white space */
    parse_fails("\v1", "found byte 0x0b");
    parse_fails("[1,]", "offset 3: expected a value, found ']'");
    parse_fails("[,1]", "offset 1: expected a value");
    parse_fails("[1 2]", "offset 3: expected ',' or ']' after array element, found '2'");
    parse_fails("[1", "offset 2: expected ',' or ']' after array element, found end of input");
    parse_fails("{,}", "offset 1: expected a string as object key");
    parse_fails("{'a': 1,}", "offset 8: expected a string as object key, found '}'");
    parse_fails("{1: 2}", "expected a string as object key");
    parse_fails("{a: 2}", "expected a string as object key");
    parse_fails("{'a' 1}", "offset 5: expected ':' after object key, found '1'");
    parse_fails("{'a':}", "offset 5: expected a value, found '}'");
    parse_fails("{'a': 1 'b': 2}", "offset 8: expected ',' or '}' after object member");
    parse_fails("{'a': 1]", "expected ',' or '}'");
    parse_fails("[1}", "expected ',' or ']'");
    parse_fails("}", "offset 0: expected a value, found '}'");
    parse_fails("\xc3\xa9", "offset 0: expected a value, found byte 0xc3");
}

static void test_duplicate_key(void **state)
{
    (void)state;
    parse_fails("{'x': 1, 'x': 2}", "offset 9: Duplicate key 'x'");
    parse_fails("{\"driver\": \"qcow2\", 'driver': 'raw'}", "Duplicate key 'driver'");
    /* An escape that decodes to the same key is the same key. */
    parse_fails("{'ab': 1, 'a\\u0062': 2}", "Duplicate key 'ab'");
    /* The same key in different objects is fine. */
    vd_tree *t = parse_ok("{'x': {'x': 1}, 'y': [{'x': 2}, {'x': 3}]}");
    assert_int_equal(vd_tree_int(vd_tree_get(vd_tree_get(t, "x"), "x")), 1);
    assert_int_equal(vd_tree_int(vd_tree_get(vd_tree_at(vd_tree_get(t, "y"), 1), "x")), 3);
    vd_tree_free(t);
}

/* levels opening brackets (lists, or objects with key "a" when obj) and their closers. */
static char *nested(int levels, bool obj)
{
    size_t per = obj ? 6 : 1;
    char *s = malloc((size_t)levels * (per + 1) + 2);
    assert_non_null(s);
    size_t n = 0;
    for (int i = 0; i < levels; i++) {
        memcpy(s + n, obj ? "{'a': " : "[", per);
        n += per;
    }
    s[n++] = '1';
    for (int i = 0; i < levels; i++) {
        s[n++] = obj ? '}' : ']';
    }
    s[n] = '\0';
    return s;
}

static void test_depth_limit(void **state)
{
    (void)state;
    for (int obj = 0; obj <= 1; obj++) {
        char *s = nested(1024, obj);
        vd_tree *t = parse_ok(s);
        int depth = 0;
        const vd_tree *n = t;
        while (vd_tree_type_of(n) == (obj ? VD_TREE_OBJECT : VD_TREE_LIST)) {
            n = vd_tree_at(n, 0);
            depth++;
        }
        assert_int_equal(depth, 1024);
        assert_int_equal(vd_tree_int(n), 1);
        vd_tree_free(t);
        free(s);

        s = nested(1025, obj);
        parse_fails(s, "nesting is deeper than 1024 levels");
        free(s);
    }
    /* Lists and objects count together. */
    char *s = nested(1023, false);
    char buf[2200];
    snprintf(buf, sizeof(buf), "{'x': %s}", s);
    vd_tree *t = parse_ok(buf);
    vd_tree_free(t);
    snprintf(buf, sizeof(buf), "{'x': {'y': %s}}", s);
    parse_fails(buf, "offset 1034: nesting is deeper than 1024 levels");
    free(s);
    /* Far deeper input fails the same way, without exhausting the stack. */
    s = nested(100000, false);
    parse_fails(s, "nesting is deeper");
    free(s);
}

/* Every proper prefix of a document that starts with a bracket is incomplete. */
static void assert_prefixes_fail(const char *doc)
{
    size_t len = strlen(doc);
    vd_tree *t = parse_ok(doc);
    vd_tree_free(t);
    for (size_t n = 0; n < len; n++) {
        parse_fails_n(doc, n, NULL);
    }
}

static void test_truncated_input(void **state)
{
    (void)state;
    assert_prefixes_fail(iotest_doc);
    assert_prefixes_fail("[\"a\\\"\\u00e9\\ud83d\\ude00\", -1.5e-3, 9223372036854775808, true, "
                         "false, null, {}, [], {\"k\": [0, -0, 12]}, 'x\\'y']");
    assert_prefixes_fail("{\"caf\xc3\xa9\": \"\xf0\x9f\x98\x80\"}");
}

static void assert_prints(const vd_tree *t, const char *want)
{
    char *json = vd_tree_to_json(t);
    assert_non_null(json);
    assert_string_equal(json, want);
    free(json);
}

static void test_to_json(void **state)
{
    (void)state;
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    assert_prints(t, "{}");
    vd_tree_put(t, "s", vd_tree_new_string("a\"b\\c/d\n\t\r\b\f\x01\x1f\x7f\xc3\xa9'"));
    vd_tree_put(t, "i", vd_tree_new_int(INT64_MIN));
    vd_tree_put(t, "j", vd_tree_new_int(INT64_MAX));
    vd_tree_put(t, "n", vd_tree_new(VD_TREE_NULL));
    vd_tree_put(t, "b", vd_tree_new_bool(false));
    vd_tree *l = vd_tree_new(VD_TREE_LIST);
    assert_prints(l, "[]");
    vd_tree_append(l, vd_tree_new_number(0.5));
    vd_tree_append(l, vd_tree_new_number(3.0));
    vd_tree_append(l, vd_tree_new_number(-0.0));
    vd_tree_append(l, vd_tree_new_number(1e20));
    vd_tree_append(l, vd_tree_new_number(1e-7));
    vd_tree_append(l, vd_tree_new_number(0.1));
    vd_tree_append(l, vd_tree_new(VD_TREE_LIST));
    vd_tree_put(t, "l", l);
    vd_tree_put(t, "k\"ey\n", vd_tree_new_bool(true));
    assert_prints(t, "{\"s\": \"a\\\"b\\\\c/d\\n\\t\\r\\b\\f\\u0001\\u001f\x7f\xc3\xa9'\", "
                     "\"i\": -9223372036854775808, \"j\": 9223372036854775807, \"n\": null, "
                     "\"b\": false, \"l\": [0.5, 3.0, -0.0, 1e+20, 9.9999999999999995e-08, "
                     "0.10000000000000001, []], \"k\\\"ey\\n\": true}");
    vd_tree_free(t);

    /* A non-finite double has no JSON form; the output stays valid JSON. */
    t = vd_tree_new_number(INFINITY);
    assert_prints(t, "null");
    vd_tree_free(t);
}

/* parse(to_json(t)) is t, and printing that again gives the same text. */
static void assert_round_trip(const vd_tree *t)
{
    char *json = vd_tree_to_json(t);
    vd_tree *back = parse_ok(json);
    if (!tree_equal(t, back)) {
        char *again = vd_tree_to_json(back);
        char m[1024];
        snprintf(m, sizeof(m), "%s -> %s", json, again);
        free(again);
        free(json);
        vd_tree_free(back);
        fail_msg("round trip changed the tree: %s", m);
    }
    char *again = vd_tree_to_json(back);
    assert_string_equal(json, again);
    free(again);
    free(json);
    vd_tree_free(back);
}

static void test_round_trip(void **state)
{
    (void)state;
    static const char *const docs[] = {
        iotest_doc,
        "{'a': [1, 2.5, -0.0, 1e300, 5e-324, 9223372036854775808, -9223372036854775808]}",
        "['\\u0001\\u001f\\\"\\\\\\/\\b\\f\\n\\r\\t', '\\ud83d\\ude00 caf\\u00e9', 'it\\'s']",
        "{'nested': {'deeper': {'list': [[[], {}], [null, true, false]]}}, '': ''}",
        "[0.1, 0.2, 0.30000000000000004, 1.7976931348623157e308, 123456789012345678]",
        "\"just a string\"",
        "-42",
        "null",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        vd_tree *t = parse_ok(docs[i]);
        assert_round_trip(t);
        vd_tree_free(t);
    }

    /* Trees built through the API, not from text. */
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(t, "driver", vd_tree_new_string("qcow2"));
    vd_tree_put(t, "whole", vd_tree_new_number(42.0));
    vd_tree_put(t, "neg-zero", vd_tree_new_number(-0.0));
    vd_tree_put(t, "min", vd_tree_new_int(INT64_MIN));
    vd_tree_put(t, "ctl", vd_tree_new_stringn("\x01\x02\x7f\n", 4));
    vd_tree *l = vd_tree_new(VD_TREE_LIST);
    for (int i = 0; i < 10; i++) {
        vd_tree_append(l, i % 2 ? vd_tree_new_int(i) : vd_tree_new_number(i / 3.0));
    }
    vd_tree_put(t, "l", l);
    assert_round_trip(t);
    vd_tree_free(t);

    char *s = nested(1024, true);
    t = parse_ok(s);
    assert_round_trip(t);
    vd_tree_free(t);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iotest_shape),
        cmocka_unit_test(test_scalars_and_empty_containers),
        cmocka_unit_test(test_strings_and_escapes),
        cmocka_unit_test(test_string_errors),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_number_errors),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_truncated_input),
        cmocka_unit_test(test_to_json),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
