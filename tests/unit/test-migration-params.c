/* Migration parameters and capabilities (src/migration/params.c): QEMU's defaults, the
 * seed's compress-type with its per-type compress-level ranges, QEMU 7.2's multifd names
 * as the same settings, QEMU's type and range messages, all-or-nothing setting, and the
 * capabilities with their one conflict. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "migration/params.h"

static vd_tree *json(const char *s)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tree_parse_json(s, strlen(s), &t, &err), 0);
    return t;
}

static void set_ok(vd_mig_params *p, const char *args)
{
    vd_tree *t = json(args);
    vd_error *err = NULL;
    if (vd_mig_params_set(p, t, &err) < 0) {
        fail_msg("%s: %s", args, vd_error_msg(err));
    }
    vd_tree_free(t);
}

/* Refused with exactly msg, and nothing changed. */
static void set_refused(vd_mig_params *p, const char *args, const char *msg)
{
    vd_mig_params before = *p;
    vd_tree *t = json(args);
    vd_error *err = NULL;
    assert_true(vd_mig_params_set(p, t, &err) < 0);
    assert_string_equal(vd_error_msg(err), msg);
    assert_memory_equal(&before, p, sizeof(before));
    vd_error_free(err);
    vd_tree_free(t);
}

static void expect_query(const vd_mig_params *p, const char *want)
{
    vd_tree *t = vd_mig_params_query(p);
    char *s = vd_tree_to_json(t);
    assert_string_equal(s, want);
    free(s);
    vd_tree_free(t);
}

static void test_defaults(void **state)
{
    (void)state;
    vd_mig_params p;
    vd_mig_params_init(&p);
    expect_query(&p, "{\"compress-type\": \"none\", \"compress-level\": 1, "
                 "\"compress-threads\": 8, \"compress-wait-thread\": true, "
                 "\"decompress-threads\": 2, \"throttle-trigger-threshold\": 50, "
                 "\"cpu-throttle-initial\": 20, \"cpu-throttle-increment\": 10, "
                 "\"tls-creds\": \"\", \"tls-hostname\": \"\", \"max-bandwidth\": 134217728, "
                 "\"downtime-limit\": 300, \"multifd-channels\": 2, \"max-cpu-throttle\": 99, "
                 "\"multifd-compression\": \"none\", \"multifd-zlib-level\": 1, "
                 "\"multifd-zstd-level\": 1}");
}

static void test_levels_per_type(void **state)
{
    (void)state;
    vd_mig_params p;
    vd_mig_params_init(&p);
    set_ok(&p, "{\"compress-type\": \"zlib\", \"compress-level\": 9}");
    assert_int_equal(p.zlib_level, 9);
    set_refused(&p, "{\"compress-level\": 10}",
                "Parameter 'compress_level' expects values from 0 to 9 for compress_type zlib");
    set_ok(&p, "{\"compress-type\": \"zstd\", \"compress-level\": 19}");
    assert_int_equal(p.zstd_level, 19);
    assert_int_equal(p.zlib_level, 9);
    assert_int_equal(vd_mig_params_level(&p), 19);
    set_refused(&p, "{\"compress-level\": 21}",
                "Parameter 'compress_level' expects values from 0 to 20 for compress_type zstd");
    /* A level valid for the new type, given with it, is judged by that type. */
    set_ok(&p, "{\"compress-type\": \"zlib\", \"compress-level\": 0}");
    assert_int_equal(p.zlib_level, 0);
    set_refused(&p, "{\"compress-type\": \"zlib\", \"compress-level\": 15}",
                "Parameter 'compress_level' expects values from 0 to 9 for compress_type zlib");
    set_refused(&p, "{\"compress-type\": \"lz4\"}",
                "Parameter 'compress-type' does not accept value 'lz4'");
    set_refused(&p, "{\"compress-level\": 300}", "Parameter 'compress-level' expects uint8_t");
    set_refused(&p, "{\"compress-level\": \"3\"}",
                "Invalid parameter type for 'compress-level', expected: integer");
}

static void test_multifd_names(void **state)
{
    (void)state;
    vd_mig_params p;
    vd_mig_params_init(&p);
    set_ok(&p, "{\"multifd-compression\": \"zstd\", \"multifd-zstd-level\": 7, "
           "\"multifd-channels\": 4}");
    assert_int_equal(p.compress_type, VD_MIG_CODEC_ZSTD);
    assert_int_equal(vd_mig_params_level(&p), 7);
    assert_int_equal(p.multifd_channels, 4);
    set_refused(&p, "{\"multifd-zlib-level\": 10}",
                "Parameter 'multifd_zlib_level' expects a value between 0 and 9");
    set_refused(&p, "{\"multifd-zstd-level\": 21}",
                "Parameter 'multifd_zstd_level' expects a value between 0 and 20");
    set_refused(&p, "{\"multifd-channels\": 0}",
                "Parameter 'multifd_channels' expects a value between 1 and 255");
    set_refused(&p, "{\"compress-type\": \"zlib\", \"multifd-compression\": \"zstd\"}",
                "Parameters 'compress-type' and 'multifd-compression' name one setting and "
                "differ");
}

static void test_qemu_checks(void **state)
{
    (void)state;
    vd_mig_params p;
    vd_mig_params_init(&p);
    set_refused(&p, "{\"compress-threads\": 0}",
                "Parameter 'compress_threads' expects a value between 1 and 255");
    set_refused(&p, "{\"decompress-threads\": 0}",
                "Parameter 'decompress_threads' expects a value between 1 and 255");
    set_refused(&p, "{\"compress-threads\": 256}", "Parameter 'compress-threads' expects uint8_t");
    set_refused(&p, "{\"downtime-limit\": 2000001}",
                "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * "
                "1000) ms");
    set_refused(&p, "{\"max-bandwidth\": -1}", "Parameter 'max-bandwidth' expects uint64");
    set_refused(&p, "{\"compress-wait-thread\": 1}",
                "Invalid parameter type for 'compress-wait-thread', expected: boolean");
    set_refused(&p, "{\"xbzrle-cache-size\": 1}", "Parameter 'xbzrle-cache-size' is unexpected");
    /* All or nothing: a good member beside a bad one is not applied. */
    set_refused(&p, "{\"compress-threads\": 4, \"decompress-threads\": 0}",
                "Parameter 'decompress_threads' expects a value between 1 and 255");
    assert_int_equal(p.compress_threads, 8);
    set_ok(&p, "{\"max-bandwidth\": 1000000, \"downtime-limit\": 100, \"tls-creds\": \"t0\", "
           "\"compress-wait-thread\": false}");
    assert_int_equal(p.max_bandwidth, 1000000);
    assert_int_equal(p.downtime_limit, 100);
    assert_string_equal(p.tls_creds, "t0");
    assert_false(p.compress_wait_thread);
    set_ok(&p, "{\"tls-creds\": null}");
    assert_string_equal(p.tls_creds, "");
    set_ok(&p, "{\"tls-hostname\": \"dst.example\"}");
    assert_string_equal(p.tls_hostname, "dst.example");
    /* auto-converge's parameters, QEMU's ranges and words. */
    set_refused(&p, "{\"throttle-trigger-threshold\": 0}",
                "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 "
                "to 100");
    set_refused(&p, "{\"throttle-trigger-threshold\": 101}",
                "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 "
                "to 100");
    set_refused(&p, "{\"cpu-throttle-initial\": 100}",
                "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99");
    set_refused(&p, "{\"cpu-throttle-increment\": 0}",
                "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99");
    set_refused(&p, "{\"cpu-throttle-initial\": 50, \"max-cpu-throttle\": 40}",
                "Parameter 'max_cpu_throttle' expects an integer in the range of "
                "cpu_throttle_initial to 99");
    set_ok(&p, "{\"cpu-throttle-initial\": 30, \"cpu-throttle-increment\": 20, "
           "\"max-cpu-throttle\": 90, \"throttle-trigger-threshold\": 40}");
    assert_int_equal(p.cpu_throttle_initial, 30);
    assert_int_equal(p.max_cpu_throttle, 90);
}

static void test_capabilities(void **state)
{
    (void)state;
    vd_mig_caps c = {0};
    vd_error *err = NULL;
    vd_tree *t = json("[{\"capability\": \"multifd\", \"state\": true}, "
                      "{\"capability\": \"zero-blocks\", \"state\": true}]");
    assert_int_equal(vd_mig_caps_set(&c, t, &err), 0);
    vd_tree_free(t);
    assert_true(c.multifd && c.zero_blocks && !c.compress);
    t = json("[{\"capability\": \"compress\", \"state\": true}]");
    assert_true(vd_mig_caps_set(&c, t, &err) < 0);
    assert_string_equal(vd_error_msg(err), "Multifd is not compatible with compress");
    vd_error_free(err);
    err = NULL;
    vd_tree_free(t);
    assert_false(c.compress);
    t = json("[{\"capability\": \"postcopy-ram\", \"state\": true}]");
    assert_true(vd_mig_caps_set(&c, t, &err) < 0);
    assert_string_equal(vd_error_msg(err),
                        "Parameter 'capability' does not accept value 'postcopy-ram'");
    vd_error_free(err);
    vd_tree_free(t);
    vd_tree *q = vd_mig_caps_query(&c);
    char *s = vd_tree_to_json(q);
    assert_string_equal(s, "[{\"capability\": \"compress\", \"state\": false}, {\"capability\": "
                        "\"multifd\", \"state\": true}, {\"capability\": \"zero-blocks\", "
                        "\"state\": true}, {\"capability\": \"events\", \"state\": false}, "
                        "{\"capability\": \"pause-before-switchover\", \"state\": false}, "
                        "{\"capability\": \"auto-converge\", \"state\": false}]");
    free(s);
    vd_tree_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_levels_per_type),
        cmocka_unit_test(test_multifd_names), cmocka_unit_test(test_qemu_checks),
        cmocka_unit_test(test_capabilities),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
