/* Block replication (src/block/replication.c, drivers/replication.c): the cases of QEMU's
 * own test (primary and secondary: I/O before start, start, stop, checkpoint, error), with
 * every read compared byte for byte, plus the refusals of a wrong graph or a wrong order,
 * and a failover under a writer. Patterns: 0x11 is the secondary disk as formatted, 0x22
 * a write arriving from the primary (straight to the secondary disk, second half), 0x33 a
 * write of the secondary's own top (first half). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "vdisk/graph.h"
#include "vdisk/replication.h"
#include "vdisk/vdisk.h"

#define SIZE (64u << 20)
#define HALF (SIZE / 2)

static char dir[] = "/tmp/vdisk-test-replication.XXXXXX";
static char p_img[128], s_local[128], s_active[128], s_hidden[128];

typedef struct fixture {
    vd_engine *e;
    vd_disk *top;            /* the replication node's user */
    vd_disk *local;          /* the secondary disk's user (the NBD export in a daemon) */
    vd_perm_claim *top_claim, *local_claim;
} fixture;

static void make_image(vd_engine *e, const char *path, uint64_t size)
{
    vd_error *err = NULL;
    if (vd_create(e, path, "qcow2", size, NULL, 0, &err) < 0) {
        fail_msg("create %s: %s", path, vd_error_msg(err));
    }
}

static int add(vd_engine *e, const char *json, const char *msg)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tree_parse_json(json, strlen(json), &t, &err), 0);
    int ret = vd_blockdev_add(e, t, VD_OPEN_RDWR, &err);
    if (!msg) {
        if (ret < 0) {
            fail_msg("%s: %s", json, vd_error_msg(err));
        }
        return ret;
    }
    assert_true(ret < 0);
    assert_string_equal(vd_error_msg(err), msg);
    vd_error_free(err);
    return ret;
}

static vd_disk *user(vd_engine *e, const char *name, vd_perm_claim **c)
{
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_blockdev_open(e, name, &d, &err) < 0 ||
        vd_disk_claim(d, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE, VD_PERM_ALL, c, &err) < 0) {
        fail_msg("%s: %s", name, vd_error_msg(err));
    }
    return d;
}

/* Reads [off, off+len) and compares every byte with pattern (the read must succeed). */
static void expect_pattern(vd_disk *d, uint8_t pattern, uint64_t off, uint64_t len)
{
    uint8_t *buf = malloc(len), *want = malloc(len);
    assert_non_null(buf);
    assert_non_null(want);
    memset(want, pattern, len);
    assert_int_equal(vd_pread(d, buf, len, off), 0);
    if (memcmp(buf, want, len) != 0) {
        uint64_t i = 0;
        while (buf[i] == want[i]) {
            i++;
        }
        fail_msg("offset %" PRIu64 ": read 0x%02x, expected 0x%02x", off + i, buf[i],
                 pattern);
    }
    free(buf);
    free(want);
}

static int write_pattern(vd_disk *d, uint8_t pattern, uint64_t off, uint64_t len)
{
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    memset(buf, pattern, len);
    int ret = vd_pwrite(d, buf, len, off, 0);
    free(buf);
    return ret;
}

static int read_any(vd_disk *d, uint64_t off, uint64_t len)
{
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    int ret = vd_pread(d, buf, len, off);
    free(buf);
    return ret;
}

/* The error comes through a pointer: C leaves open whether an argument `err` would be
 * read before or after the call beside it fills it. */
static void expect_error(int ret, vd_error **err, const char *msg)
{
    assert_true(ret < 0);
    assert_string_equal(vd_error_msg(*err), msg);
    vd_error_free(*err);
    *err = NULL;
}

static void ok(int ret, vd_error **err)
{
    if (ret < 0) {
        fail_msg("%s", vd_error_msg(*err));
    }
}

static void fixture_close(fixture *f)
{
    if (f->top) {
        vd_disk_unclaim(f->top, f->top_claim);
        vd_close(f->top);
    }
    if (f->local) {
        vd_disk_unclaim(f->local, f->local_claim);
        vd_close(f->local);
    }
    vd_engine_free(f->e);
    memset(f, 0, sizeof(*f));
}

/* ---- primary ---------------------------------------------------------------------------- */

static void primary_open(fixture *f)
{
    f->e = vd_engine_new();
    make_image(f->e, p_img, SIZE);
    char json[512];
    snprintf(json, sizeof(json), "{\"driver\":\"replication\",\"node-name\":\"rp\","
             "\"mode\":\"primary\",\"file\":{\"driver\":\"qcow2\",\"node-name\":\"p-disk\","
             "\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}}", p_img);
    add(f->e, json, NULL);
    f->top = user(f->e, "rp", &f->top_claim);
}

static void test_primary_read(void **state)
{
    (void)state;
    fixture f = {0};
    primary_open(&f);
    assert_int_equal(read_any(f.top, 0, SIZE), -EIO);
    fixture_close(&f);
}

static void test_primary_write(void **state)
{
    (void)state;
    fixture f = {0};
    primary_open(&f);
    assert_int_equal(write_pattern(f.top, 0x22, 0, SIZE), -EIO);
    fixture_close(&f);
}

static void test_primary_start(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    primary_open(&f);
    ok(vd_replication_start_all(f.e, VD_REPLICATION_PRIMARY, &err), &err);
    /* A primary node forwards writes only: the quorum above reads its local child. */
    assert_int_equal(read_any(f.top, 0, SIZE), -EIO);
    assert_int_equal(write_pattern(f.top, 0x22, 0, SIZE), 0);
    expect_error(vd_replication_start_all(f.e, VD_REPLICATION_PRIMARY, &err), &err,
                 "Block replication is running or done");
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    fixture_close(&f);
    /* The writes reached the node below (the NBD client in a real primary). */
    vd_engine *e = vd_engine_new();
    vd_disk *d = NULL;
    vd_open_opts o = {.format = "qcow2", .flags = 0};
    ok(vd_open(e, p_img, &o, &d, &err), &err);
    expect_pattern(d, 0x22, 0, SIZE);
    vd_close(d);
    vd_engine_free(e);
}

static void test_primary_stop(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    primary_open(&f);
    ok(vd_replication_start_all(f.e, VD_REPLICATION_PRIMARY, &err), &err);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    /* Stopped: nothing is forwarded any more, and a second stop says it is over. */
    assert_int_equal(write_pattern(f.top, 0x22, 0, 65536), -EIO);
    expect_error(vd_replication_stop_all(f.e, false, &err), &err,
                 "Block replication is not running");
    fixture_close(&f);
}

static void test_primary_do_checkpoint(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    primary_open(&f);
    ok(vd_replication_start_all(f.e, VD_REPLICATION_PRIMARY, &err), &err);
    ok(vd_replication_do_checkpoint_all(f.e, &err), &err);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    fixture_close(&f);
}

static void test_primary_get_error_all(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    primary_open(&f);
    expect_error(vd_replication_get_error_all(f.e, &err), &err,
                 "Block replication is not running");
    ok(vd_replication_start_all(f.e, VD_REPLICATION_PRIMARY, &err), &err);
    ok(vd_replication_get_error_all(f.e, &err), &err);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    fixture_close(&f);
}

/* ---- secondary -------------------------------------------------------------------------- */

/* The secondary disk formatted with 0x11 and used (as an NBD export would), the buffers
 * empty, and the replication node over them (not started). With failing_flush the
 * secondary disk is raw and every flush of its file fails (a blkdebug filter below it). */
static void secondary_open_with(fixture *f, bool failing_flush)
{
    f->e = vd_engine_new();
    if (failing_flush) {
        /* raw: qcow2 flushes for its own write ordering, which would fail long before. */
        vd_error *err = NULL;
        assert_int_equal(vd_create(f->e, s_local, "raw", SIZE, NULL, 0, &err), 0);
    } else {
        make_image(f->e, s_local, SIZE);
    }
    make_image(f->e, s_active, SIZE);
    make_image(f->e, s_hidden, SIZE);
    char json[1024];
    if (failing_flush) {
        snprintf(json, sizeof(json), "{\"driver\":\"raw\",\"node-name\":\"s-local\","
                 "\"file\":{\"driver\":\"blkdebug\",\"inject-error\":[{\"event\":"
                 "\"none\",\"iotype\":\"flush\",\"errno\":5}],\"image\":{\"driver\":\"file\","
                 "\"filename\":\"%s\"}}}", s_local);
    } else {
        snprintf(json, sizeof(json), "{\"driver\":\"qcow2\",\"node-name\":\"s-local\","
                 "\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}", s_local);
    }
    add(f->e, json, NULL);
    f->local = user(f->e, "s-local", &f->local_claim);
    assert_int_equal(write_pattern(f->local, 0x11, 0, SIZE), 0);
    snprintf(json, sizeof(json), "{\"driver\":\"replication\",\"node-name\":\"rs\","
             "\"mode\":\"secondary\",\"top-id\":\"rs\",\"file\":{\"driver\":\"qcow2\","
             "\"node-name\":\"active\",\"file\":{\"driver\":\"file\",\"filename\":\"%s\"},"
             "\"backing\":{\"driver\":\"qcow2\",\"node-name\":\"hidden\",\"file\":{"
             "\"driver\":\"file\",\"filename\":\"%s\"},\"backing\":\"s-local\"}}}",
             s_active, s_hidden);
    add(f->e, json, NULL);
    f->top = user(f->e, "rs", &f->top_claim);
}

static void secondary_open(fixture *f)
{
    secondary_open_with(f, false);
}

/* Started, then a write from the primary (0x22, second half, on the secondary disk) and
 * one of the secondary itself (0x33, first half, through the top). */
static void secondary_start_and_write(fixture *f)
{
    vd_error *err = NULL;
    ok(vd_replication_start_all(f->e, VD_REPLICATION_SECONDARY, &err), &err);
    expect_pattern(f->top, 0x11, 0, SIZE);
    assert_int_equal(write_pattern(f->local, 0x22, HALF, HALF), 0);
    /* The old data went to the hidden disk first: the top still reads the checkpoint. */
    expect_pattern(f->top, 0x11, HALF, HALF);
    assert_int_equal(write_pattern(f->top, 0x33, 0, HALF), 0);
    expect_pattern(f->top, 0x33, 0, HALF);
    /* The secondary's own writes stay in its active disk. */
    expect_pattern(f->local, 0x11, 0, HALF);
    expect_pattern(f->local, 0x22, HALF, HALF);
}

static void test_secondary_read(void **state)
{
    (void)state;
    fixture f = {0};
    secondary_open(&f);
    assert_int_equal(read_any(f.top, 0, SIZE), -EIO);
    fixture_close(&f);
}

static void test_secondary_write(void **state)
{
    (void)state;
    fixture f = {0};
    secondary_open(&f);
    assert_int_equal(write_pattern(f.top, 0x22, 0, SIZE), -EIO);
    fixture_close(&f);
}

static void test_secondary_start(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open(&f);
    secondary_start_and_write(&f);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    fixture_close(&f);
}

/* After a failover the top is the secondary's own view committed into the secondary
 * disk: its writes (0x33) and, where the primary wrote after the checkpoint, the data the
 * hidden disk kept (0x11), not the primary's later write (0x22). */
static void expect_failed_over(fixture *f)
{
    expect_pattern(f->top, 0x33, 0, HALF);
    expect_pattern(f->top, 0x11, HALF, HALF);
    expect_pattern(f->local, 0x33, 0, HALF);
    expect_pattern(f->local, 0x11, HALF, HALF);
    /* The node now reads the secondary disk; the layers above it are gone. */
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    assert_int_equal(vd_blockdev_list(f->e, &list, &nb), 0);
    bool seen_rs = false;
    for (size_t i = 0; i < nb; i++) {
        assert_string_not_equal(list[i].node_name, "active");
        assert_string_not_equal(list[i].node_name, "hidden");
        if (!strcmp(list[i].node_name, "rs")) {
            seen_rs = true;
            assert_non_null(list[i].file_child);
            assert_string_equal(list[i].file_child, "s-local");
        }
    }
    assert_true(seen_rs);
    vd_blockdev_list_free(list, nb);
}

static void test_secondary_stop(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open(&f);
    secondary_start_and_write(&f);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    expect_failed_over(&f);
    /* It serves as an ordinary disk now. */
    assert_int_equal(write_pattern(f.top, 0x44, 0, 65536), 0);
    expect_pattern(f.local, 0x44, 0, 65536);
    fixture_close(&f);
}

static void test_secondary_continuous_replication(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open(&f);
    secondary_start_and_write(&f);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    /* Promoted to primary: the secondary's operations are accepted and do nothing. */
    ok(vd_replication_start_all(f.e, VD_REPLICATION_PRIMARY, &err), &err);
    ok(vd_replication_do_checkpoint_all(f.e, &err), &err);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    expect_failed_over(&f);
    fixture_close(&f);
}

static void test_secondary_do_checkpoint(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open(&f);
    ok(vd_replication_start_all(f.e, VD_REPLICATION_SECONDARY, &err), &err);
    assert_int_equal(write_pattern(f.local, 0x22, HALF, HALF), 0);
    assert_int_equal(write_pattern(f.top, 0x33, 0, 65536), 0);
    expect_pattern(f.top, 0x11, HALF, HALF);
    ok(vd_replication_do_checkpoint_all(f.e, &err), &err);
    /* The checkpoint drops both buffers: the top reads the secondary disk again. */
    expect_pattern(f.top, 0x22, HALF, HALF);
    expect_pattern(f.top, 0x11, 0, HALF);
    /* And the old data is saved again for the next interval. */
    assert_int_equal(write_pattern(f.local, 0x55, HALF, 65536), 0);
    expect_pattern(f.top, 0x22, HALF, HALF);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    fixture_close(&f);
}

static void test_secondary_get_error_all(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open(&f);
    expect_error(vd_replication_get_error_all(f.e, &err), &err,
                 "Block replication is not running");
    ok(vd_replication_start_all(f.e, VD_REPLICATION_SECONDARY, &err), &err);
    ok(vd_replication_get_error_all(f.e, &err), &err);
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    fixture_close(&f);
}

/* A failover whose commit fails (the secondary disk cannot be flushed): the error is
 * returned and kept, the layers stay and still read the secondary's view, and new writes
 * follow QEMU's failed-failover rule (what the layers hold is written there, not to the
 * secondary disk). */
static void test_failover_fails(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open_with(&f, true);
    secondary_start_and_write(&f);
    expect_error(vd_replication_stop_all(f.e, true, &err), &err,
                 "Could not commit the active and hidden disks: Input/output error");
    expect_error(vd_replication_get_error_all(f.e, &err), &err, "I/O error occurred");
    expect_pattern(f.top, 0x33, 0, HALF);
    expect_pattern(f.top, 0x11, HALF, HALF);
    assert_int_equal(write_pattern(f.top, 0x44, 0, 65536), 0);
    expect_pattern(f.top, 0x44, 0, 65536);
    expect_pattern(f.local, 0x33, 0, 65536);
    expect_error(vd_replication_stop_all(f.e, true, &err), &err,
                 "Block replication is not running");
    fixture_close(&f);
}

/* ---- refusals ---------------------------------------------------------------------------- */

static void test_wrong_mode_and_order(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open(&f);
    expect_error(vd_replication_stop_all(f.e, true, &err), &err,
                 "Block replication is not running");
    expect_error(vd_replication_do_checkpoint_all(f.e, &err), &err,
                 "Block replication is not running");
    expect_error(vd_replication_start_all(f.e, VD_REPLICATION_PRIMARY, &err), &err,
                 "The parameter mode's value is invalid, needs 1, but got 0");
    ok(vd_replication_start_all(f.e, VD_REPLICATION_SECONDARY, &err), &err);
    expect_error(vd_replication_start_all(f.e, VD_REPLICATION_SECONDARY, &err), &err,
                 "Block replication is running or done");
    ok(vd_replication_stop_all(f.e, false, &err), &err);
    /* Stopped without failover: the buffers were emptied and the secondary disk kept. */
    expect_pattern(f.top, 0x11, 0, SIZE);
    expect_error(vd_replication_stop_all(f.e, false, &err), &err,
                 "Block replication is not running");
    fixture_close(&f);
}

static void test_options(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    make_image(e, s_local, SIZE);
    char json[512];
    snprintf(json, sizeof(json), "{\"driver\":\"replication\",\"node-name\":\"r\","
             "\"mode\":\"secondary\",\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}",
             s_local);
    add(e, json, "Missing the option top-id");
    snprintf(json, sizeof(json), "{\"driver\":\"replication\",\"node-name\":\"r\","
             "\"mode\":\"primary\",\"top-id\":\"x\",\"file\":{\"driver\":\"file\","
             "\"filename\":\"%s\"}}", s_local);
    add(e, json, "The primary side does not support option top-id");
    snprintf(json, sizeof(json), "{\"driver\":\"replication\",\"node-name\":\"r\","
             "\"mode\":\"both\",\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}",
             s_local);
    add(e, json, "Parameter 'mode' does not accept value 'both'");
    vd_engine_free(e);
}

/* A secondary node over a graph of the wrong shape: refused at start, nothing changed. */
static void start_refused(const char *file_json, bool use_local, const char *top_id,
                          uint64_t hidden_size, const char *msg)
{
    vd_engine *e = vd_engine_new();
    vd_error *err = NULL;
    make_image(e, s_local, SIZE);
    make_image(e, s_active, SIZE);
    make_image(e, s_hidden, hidden_size);
    char json[1024];
    snprintf(json, sizeof(json), "{\"driver\":\"qcow2\",\"node-name\":\"s-local\","
             "\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}", s_local);
    add(e, json, NULL);
    vd_perm_claim *lc = NULL, *tc = NULL;
    vd_disk *local = use_local ? user(e, "s-local", &lc) : NULL;
    snprintf(json, sizeof(json), "{\"driver\":\"replication\",\"node-name\":\"rs\","
             "\"mode\":\"secondary\",\"top-id\":\"%s\",\"file\":%s}", top_id, file_json);
    add(e, json, NULL);
    vd_disk *top = user(e, "rs", &tc);
    expect_error(vd_replication_start_all(e, VD_REPLICATION_SECONDARY, &err), &err, msg);
    expect_error(vd_replication_get_error_all(e, &err), &err,
                 "Block replication is not running");
    assert_int_equal(read_any(top, 0, 65536), -EIO);
    vd_disk_unclaim(top, tc);
    vd_close(top);
    if (local) {
        vd_disk_unclaim(local, lc);
        vd_close(local);
    }
    vd_engine_free(e);
}

static void test_wrong_graph(void **state)
{
    (void)state;
    char file[1024];
    snprintf(file, sizeof(file), "{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
             "\"filename\":\"%s\"}}", s_active);
    start_refused(file, true, "rs", SIZE, "Active disk doesn't have backing file");
    snprintf(file, sizeof(file), "{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
             "\"filename\":\"%s\"},\"backing\":{\"driver\":\"qcow2\",\"file\":{\"driver\":"
             "\"file\",\"filename\":\"%s\"},\"backing\":null}}", s_active, s_hidden);
    start_refused(file, true, "rs", SIZE, "Hidden disk doesn't have backing file");
    snprintf(file, sizeof(file), "{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
             "\"filename\":\"%s\"},\"backing\":{\"driver\":\"qcow2\",\"file\":{\"driver\":"
             "\"file\",\"filename\":\"%s\"},\"backing\":\"s-local\"}}", s_active, s_hidden);
    start_refused(file, false, "rs", SIZE, "The secondary disk doesn't have block backend");
    start_refused(file, true, "nowhere", SIZE, "No top_bs or it is invalid");
    start_refused(file, true, "s-local", SIZE, "No top_bs or it is invalid");
    start_refused(file, true, "rs", SIZE / 2, "Active disk, hidden disk, secondary disk's length are "
                  "not the same");
}

/* ---- failover under a writer --------------------------------------------------------------- */

#define BLOCK 4096u
#define NB_BLOCKS (SIZE / BLOCK)

typedef struct writer {
    vd_disk *d;
    uint8_t *model;          /* per block: the pattern last written (0: none) */
    volatile int stop;
    unsigned seed;
    unsigned writes;
} writer;

static void *write_loop(void *opaque)
{
    writer *w = opaque;
    uint8_t buf[BLOCK];
    while (!w->stop) {
        uint32_t b = (uint32_t)rand_r(&w->seed) % NB_BLOCKS;
        uint8_t pat = (uint8_t)(0x60 + rand_r(&w->seed) % 64);
        memset(buf, pat, BLOCK);
        assert_int_equal(vd_pwrite(w->d, buf, BLOCK, (uint64_t)b * BLOCK, 0), 0);
        w->model[b] = pat;
        w->writes++;
    }
    return NULL;
}

static void test_failover_under_writes(void **state)
{
    (void)state;
    fixture f = {0};
    vd_error *err = NULL;
    secondary_open(&f);
    secondary_start_and_write(&f);
    writer w = {.d = f.top, .model = calloc(NB_BLOCKS, 1), .seed = 7};
    assert_non_null(w.model);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, write_loop, &w), 0);
    while (w.writes < 200) {
        usleep(1000);
    }
    ok(vd_replication_stop_all(f.e, true, &err), &err);
    unsigned at_end = w.writes;
    while (w.writes < at_end + 200) {
        usleep(1000);
    }
    w.stop = 1;
    pthread_join(t, NULL);
    /* Every block: the writer's last pattern, else the failover's view; on the top and on
     * the secondary disk alike. */
    uint8_t *buf = malloc(BLOCK);
    assert_non_null(buf);
    for (uint32_t b = 0; b < NB_BLOCKS; b++) {
        uint64_t off = (uint64_t)b * BLOCK;
        uint8_t want = w.model[b] ? w.model[b] : off < HALF ? 0x33 : 0x11;
        for (int side = 0; side < 2; side++) {
            assert_int_equal(vd_pread(side ? f.local : f.top, buf, BLOCK, off), 0);
            for (uint32_t i = 0; i < BLOCK; i++) {
                if (buf[i] != want) {
                    fail_msg("%s block %u: 0x%02x, expected 0x%02x", side ? "disk" : "top",
                             b, buf[i], want);
                }
            }
        }
    }
    free(buf);
    free(w.model);
    fixture_close(&f);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        return 1;
    }
    snprintf(p_img, sizeof(p_img), "%s/p.qcow2", dir);
    snprintf(s_local, sizeof(s_local), "%s/s_local.qcow2", dir);
    snprintf(s_active, sizeof(s_active), "%s/s_active.qcow2", dir);
    snprintf(s_hidden, sizeof(s_hidden), "%s/s_hidden.qcow2", dir);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_primary_read),
        cmocka_unit_test(test_primary_write),
        cmocka_unit_test(test_primary_start),
        cmocka_unit_test(test_primary_stop),
        cmocka_unit_test(test_primary_do_checkpoint),
        cmocka_unit_test(test_primary_get_error_all),
        cmocka_unit_test(test_secondary_read),
        cmocka_unit_test(test_secondary_write),
        cmocka_unit_test(test_secondary_start),
        cmocka_unit_test(test_secondary_stop),
        cmocka_unit_test(test_secondary_continuous_replication),
        cmocka_unit_test(test_secondary_do_checkpoint),
        cmocka_unit_test(test_secondary_get_error_all),
        cmocka_unit_test(test_wrong_mode_and_order),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_wrong_graph),
        cmocka_unit_test(test_failover_under_writes),
        cmocka_unit_test(test_failover_fails),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(p_img);
    unlink(s_local);
    unlink(s_active);
    unlink(s_hidden);
    rmdir(dir);
    return failed;
}
