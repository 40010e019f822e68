/* The quorum driver (src/block/drivers/quorum.c) and nodes with lists of children: its
 * options and messages (QEMU 7.2's quorum_open words, as qemu-img gives them for json:
 * names), reads by vote and in fifo order over a corrupted child, threshold failures of
 * reads, writes and flushes, rewrite-corrupted repairing a child, blkverify, block status,
 * children added and removed (vd_blockdev_change, QEMU's refusals) also while writes run,
 * and the QUORUM_REPORT_BAD / QUORUM_FAILURE events with their fields. */
#include <errno.h>
#include <fcntl.h>
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
#include "vdisk/vdisk.h"

#define SIZE (1u << 20)

static char dir[] = "/tmp/vdisk-test-quorum.XXXXXX";

/* ---- events ------------------------------------------------------------------------------ */

typedef struct seen_event {
    char type[32], node[64], op[16], error[64];
    bool has_error;
    int64_t sector, count;
} seen_event;

static struct {
    pthread_mutex_t lock;
    seen_event ev[256];
    int nb;
} seen = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void on_event(void *opaque, const vd_event *ev)
{
    (void)opaque;
    if (strncmp(ev->type, "QUORUM_", 7)) {
        return;
    }
    pthread_mutex_lock(&seen.lock);
    if (seen.nb < 256) {
        seen_event *s = &seen.ev[seen.nb++];
        memset(s, 0, sizeof(*s));
        snprintf(s->type, sizeof(s->type), "%s", ev->type);
        snprintf(s->node, sizeof(s->node), "%s", ev->node_name ? ev->node_name : "");
        snprintf(s->op, sizeof(s->op), "%s", ev->operation ? ev->operation : "");
        s->has_error = ev->error != NULL;
        snprintf(s->error, sizeof(s->error), "%s", ev->error ? ev->error : "");
        s->sector = ev->sector_num;
        s->count = ev->sectors_count;
    }
    pthread_mutex_unlock(&seen.lock);
}

static void events_reset(void)
{
    pthread_mutex_lock(&seen.lock);
    seen.nb = 0;
    pthread_mutex_unlock(&seen.lock);
}

/* The i-th event since the reset is this one (op/error "" for none; error "-": absent). */
static void expect_event(int i, const char *type, const char *node, const char *op,
                         const char *error, int64_t sector, int64_t count)
{
    assert_true(i < seen.nb);
    seen_event *s = &seen.ev[i];
    assert_string_equal(s->type, type);
    assert_string_equal(s->node, node);
    assert_string_equal(s->op, op);
    if (!strcmp(error, "-")) {
        assert_false(s->has_error);
    } else {
        assert_true(s->has_error);
        assert_string_equal(s->error, error);
    }
    assert_int_equal(s->sector, sector);
    assert_int_equal(s->count, count);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static vd_engine *engine(void)
{
    vd_engine *e = vd_engine_new();
    vd_engine_set_event_handler(e, on_event, NULL);
    events_reset();
    return e;
}

static char *path_of(int i)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/c%d.raw", dir, i) > 0);
    return p;
}

/* A raw image of SIZE bytes of 0x11, with byte value `bad` at [4096, 8192) unless 0. */
static void make_child(int i, uint64_t size, int bad)
{
    char *p = path_of(i);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    uint8_t *buf = malloc(size);
    memset(buf, 0x11, size);
    if (bad) {
        memset(buf + 4096, bad, 4096);
    }
    assert_int_equal(pwrite(fd, buf, size, 0), (ssize_t)size);
    free(buf);
    close(fd);
    free(p);
}

static int byte_at(int i, uint64_t off)
{
    char *p = path_of(i);
    int fd = open(p, O_RDONLY);
    uint8_t b = 0;
    assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
    close(fd);
    free(p);
    return b;
}

/* A child's options: raw over file (named r<i>), or over a blkdebug that fails every
 * request of iotype after its first event (QEMU's rule semantics). */
static char *child_json(int i, const char *fail_event, const char *iotype)
{
    char *p = path_of(i), *s = NULL;
    if (fail_event) {
        assert_true(asprintf(&s, "{\"driver\": \"raw\", \"node-name\": \"r%d\", \"file\": "
                             "{\"driver\": \"blkdebug\", \"inject-error\": [{\"event\": "
                             "\"%s\", \"iotype\": \"%s\", \"errno\": 28}], \"image\": "
                             "{\"driver\": \"file\", \"filename\": \"%s\"}}}", i, fail_event,
                             iotype, p) > 0);
    } else {
        assert_true(asprintf(&s, "{\"driver\": \"raw\", \"node-name\": \"r%d\", \"file\": "
                             "{\"driver\": \"file\", \"filename\": \"%s\"}}", i, p) > 0);
    }
    free(p);
    return s;
}

/* blockdev-add of JSON text: success (msg NULL) or exactly msg. */
static void add(vd_engine *e, const char *json, const char *msg)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tree_parse_json(json, strlen(json), &t, &err), 0);
    int ret = vd_blockdev_add(e, t, VD_OPEN_RDWR, &err);
    if (!msg) {
        if (ret < 0) {
            fail_msg("%s: %s", json, vd_error_msg(err));
        }
        return;
    }
    if (ret == 0) {
        fail_msg("%s: succeeded, expected: %s", json, msg);
    }
    assert_string_equal(vd_error_msg(err), msg);
    vd_error_free(err);
}

/* A quorum q0 over children given as JSON texts, with extra members. */
static void add_quorum(vd_engine *e, const char *name, const char *extra, char **kids,
                       int nb, const char *msg)
{
    size_t len = 256 + strlen(extra);
    for (int i = 0; i < nb; i++) {
        len += strlen(kids[i]) + 2;
    }
    char *json = malloc(len);
    int at = snprintf(json, len, "{\"driver\": \"quorum\", \"node-name\": \"%s\"%s%s, "
                      "\"children\": [", name, *extra ? ", " : "", extra);
    for (int i = 0; i < nb; i++) {
        at += snprintf(json + at, len - (size_t)at, "%s%s", i ? ", " : "", kids[i]);
    }
    snprintf(json + at, len - (size_t)at, "]}");
    add(e, json, msg);
    free(json);
}

static void free_kids(char **kids, int nb)
{
    for (int i = 0; i < nb; i++) {
        free(kids[i]);
    }
}

static vd_disk *handle(vd_engine *e, const char *name)
{
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_blockdev_open(e, name, &d, &err) < 0) {
        fail_msg("open %s: %s", name, vd_error_msg(err));
    }
    return d;
}

static void change(vd_engine *e, const char *parent, const char *child, const char *node,
                   const char *msg)
{
    vd_error *err = NULL;
    int ret = vd_blockdev_change(e, parent, child, node, &err);
    if (!msg) {
        if (ret < 0) {
            fail_msg("change %s: %s", parent, vd_error_msg(err));
        }
        return;
    }
    assert_true(ret < 0);
    assert_string_equal(vd_error_msg(err), msg);
    vd_error_free(err);
}

/* Reads len bytes at off through d and checks they are all `val`. */
static void read_expect(vd_disk *d, uint64_t off, uint64_t len, int val)
{
    uint8_t *buf = malloc(len);
    assert_int_equal(vd_pread(d, buf, len, off), 0);
    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] != val) {
            fail_msg("byte %llu is 0x%02x, expected 0x%02x", (unsigned long long)(off + i),
                     buf[i], val);
        }
    }
    free(buf);
}

/* ---- options ----------------------------------------------------------------------------- */

static void test_options(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        make_child(i, SIZE, 0);
    }
    vd_engine *e = engine();
    char *k[3] = {child_json(0, NULL, NULL), child_json(1, NULL, NULL),
                  child_json(2, NULL, NULL)};
    add(e, "{\"driver\": \"quorum\", \"node-name\": \"q0\", \"vote-threshold\": 1}",
        "Number of provided children must be 1 or more");
    add_quorum(e, "q0", "\"vote-threshold\": 1", k, 0,
               "Number of provided children must be 1 or more");
    char *obj = NULL;
    assert_true(asprintf(&obj, "{\"driver\": \"quorum\", \"node-name\": \"q0\", "
                         "\"vote-threshold\": 1, \"children\": {\"0\": %s, \"2\": %s}}", k[0],
                         k[1]) > 0);
    add(e, obj, "Option children is not a valid array");
    free(obj);
    add_quorum(e, "q0", "", k, 2, "Parameter 'vote-threshold' expects a value >= 1");
    add_quorum(e, "q0", "\"vote-threshold\": 0", k, 2,
               "Parameter 'vote-threshold' expects a value >= 1");
    add_quorum(e, "q0", "\"vote-threshold\": 3", k, 2,
               "threshold may not exceed children count");
    add_quorum(e, "q0", "\"vote-threshold\": 1, \"read-pattern\": \"x\"", k, 2,
               "Please set read-pattern as fifo or quorum");
    add_quorum(e, "q0", "\"vote-threshold\": 1, \"blkverify\": true", k, 2,
               "blkverify=on can only be set if there are exactly two files and "
               "vote-threshold is 2");
    add_quorum(e, "q0", "\"vote-threshold\": 2, \"blkverify\": true", k, 3,
               "blkverify=on can only be set if there are exactly two files and "
               "vote-threshold is 2");
    add_quorum(e, "q0", "\"vote-threshold\": 2, \"blkverify\": true, "
               "\"rewrite-corrupted\": true", k, 2,
               "rewrite-corrupted=on cannot be used with blkverify=on");
    add_quorum(e, "q0", "\"vote-threshold\": 1", (char *[]){"\"nosuch\""}, 1,
               "Cannot find device='nosuch' nor node-name='nosuch'");
    /* Children of different sizes: QEMU's getlength fails. */
    make_child(3, SIZE * 2, 0);
    char *big = child_json(3, NULL, NULL);
    add_quorum(e, "q0", "\"vote-threshold\": 1", (char *[]){k[0], big}, 2,
               "Could not refresh total sector count: Input/output error");
    free(big);
    /* Nothing of a failed open stays registered. */
    assert_false(vd_blockdev_exists(e, "r0"));
    /* fifo ignores blkverify, as QEMU does. */
    add_quorum(e, "q0", "\"vote-threshold\": 1, \"read-pattern\": \"fifo\", "
               "\"blkverify\": true", k, 3, NULL);
    assert_true(vd_blockdev_exists(e, "r2"));
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    assert_int_equal(vd_blockdev_list(e, &list, &nb), 0);
    /* QEMU's order, newest first: the quorum's children were opened after it. */
    assert_int_equal(nb, 7);
    assert_string_equal(list[0].node_name, "r2");
    assert_string_equal(list[6].node_name, "q0");
    assert_string_equal(list[6].driver, "quorum");
    assert_true(!strncmp(list[6].filename, "json:{\"children\": [{\"driver\": \"raw\"", 35));
    vd_blockdev_list_free(list, nb);
    vd_engine_free(e);
    free_kids(k, 3);
}

/* ---- reads ------------------------------------------------------------------------------- */

static void test_reads(void **state)
{
    (void)state;
    make_child(0, SIZE, 0);
    make_child(1, SIZE, 0);
    make_child(2, SIZE, 0x22);
    vd_engine *e = engine();
    char *k[3] = {child_json(0, NULL, NULL), child_json(1, NULL, NULL),
                  child_json(2, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 2", k, 3, NULL);
    vd_disk *d = handle(e, "q0");
    assert_int_equal(vd_disk_size(d), SIZE);
    /* The vote: two against one; the one is reported, with no error member. */
    read_expect(d, 1000, 8000, 0x11);
    assert_int_equal(seen.nb, 1);
    expect_event(0, "QUORUM_REPORT_BAD", "r2", "read", "-", 1, 17);
    /* Agreement: no event. */
    events_reset();
    read_expect(d, 0, 4096, 0x11);
    assert_int_equal(seen.nb, 0);
    vd_close(d);
    free_kids(k, 3);

    /* fifo: the first child answers, whatever the others hold. */
    char *f[3] = {child_json(2, NULL, NULL), child_json(0, NULL, NULL),
                  child_json(1, NULL, NULL)};
    vd_engine *e2 = engine();
    add_quorum(e2, "q1", "\"vote-threshold\": 2, \"read-pattern\": \"fifo\"", f, 3, NULL);
    d = handle(e2, "q1");
    read_expect(d, 4096, 4096, 0x22);
    assert_int_equal(seen.nb, 0);
    vd_close(d);
    free_kids(f, 3);
    vd_engine_free(e2);

    /* Block status: zero only where every child says so. */
    vd_extent x;
    d = handle(e, "q0");
    assert_int_equal(vd_block_status(d, 0, SIZE, &x), 0);
    assert_true(x.flags & VD_BS_DATA);
    assert_int_equal(x.length, SIZE);
    vd_close(d);
    vd_engine_free(e);
}

/* Reads that cannot reach the threshold, and fifo past failing children. */
static void test_read_failures(void **state)
{
    (void)state;
    make_child(0, SIZE, 0);
    make_child(1, SIZE, 0x33);
    make_child(2, SIZE, 0x22);
    vd_engine *e = engine();
    char *k[3] = {child_json(0, NULL, NULL), child_json(1, NULL, NULL),
                  child_json(2, "read_aio", "read")};
    add_quorum(e, "q0", "\"vote-threshold\": 2", k, 3, NULL);
    vd_disk *d = handle(e, "q0");
    uint8_t buf[4096];
    /* r2 fails, r0 and r1 disagree: no version reaches 2. */
    assert_int_equal(vd_pread(d, buf, 4096, 4096), -EIO);
    assert_int_equal(seen.nb, 2);
    expect_event(0, "QUORUM_REPORT_BAD", "r2", "read", "No space left on device", 8, 8);
    expect_event(1, "QUORUM_FAILURE", "q0", "", "-", 8, 8);
    /* Where r0 and r1 agree, two votes carry it despite r2's error. */
    events_reset();
    read_expect(d, 0, 4096, 0x11);
    assert_int_equal(seen.nb, 1);
    expect_event(0, "QUORUM_REPORT_BAD", "r2", "read", "No space left on device", 0, 8);
    vd_close(d);
    vd_engine_free(e);
    free_kids(k, 3);

    /* Too few successes: the error most children gave. */
    e = engine();
    char *f[3] = {child_json(0, "read_aio", "read"), child_json(1, "read_aio", "read"),
                  child_json(2, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 2", f, 3, NULL);
    d = handle(e, "q0");
    assert_int_equal(vd_pread(d, buf, 512, 0), -ENOSPC);
    assert_int_equal(seen.nb, 3);
    expect_event(0, "QUORUM_REPORT_BAD", "r0", "read", "No space left on device", 0, 1);
    expect_event(1, "QUORUM_REPORT_BAD", "r1", "read", "No space left on device", 0, 1);
    expect_event(2, "QUORUM_FAILURE", "q0", "", "-", 0, 1);
    vd_close(d);
    vd_engine_free(e);
    free_kids(f, 3);

    /* fifo goes on to the next child past a failure, reporting it. */
    e = engine();
    char *g[2] = {child_json(0, "read_aio", "read"), child_json(1, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 1, \"read-pattern\": \"fifo\"", g, 2, NULL);
    d = handle(e, "q0");
    read_expect(d, 4096, 4096, 0x33);
    assert_int_equal(seen.nb, 1);
    expect_event(0, "QUORUM_REPORT_BAD", "r0", "read", "No space left on device", 8, 8);
    vd_close(d);
    vd_engine_free(e);
    free_kids(g, 2);
}

/* ---- writes and flushes ------------------------------------------------------------------ */

static void test_writes(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        make_child(i, SIZE, 0);
    }
    vd_engine *e = engine();
    char *k[3] = {child_json(0, NULL, NULL), child_json(1, "write_aio", "write"),
                  child_json(2, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 2", k, 3, NULL);
    vd_disk *d = handle(e, "q0");
    uint8_t buf[4096];
    memset(buf, 0x55, sizeof(buf));
    /* One of three fails: the write stands, the child is reported. */
    assert_int_equal(vd_pwrite(d, buf, 4096, 8192, 0), 0);
    assert_int_equal(seen.nb, 1);
    expect_event(0, "QUORUM_REPORT_BAD", "r1", "write", "No space left on device", 16, 8);
    assert_int_equal(byte_at(0, 8192), 0x55);
    assert_int_equal(byte_at(1, 8192), 0x11);
    assert_int_equal(byte_at(2, 8192), 0x55);
    /* Write zeroes reach every child too (r1's rule is for writes only, as QEMU's
     * blkdebug iotype=write). */
    events_reset();
    assert_int_equal(vd_pwrite_zeroes(d, 8192, 512, 0), 0);
    assert_int_equal(seen.nb, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(byte_at(i, 8192), 0);
    }
    vd_close(d);
    vd_engine_free(e);
    free_kids(k, 3);

    /* Two of three fail with threshold 2: the write fails with their error. */
    e = engine();
    char *f[3] = {child_json(0, "write_aio", "write"), child_json(1, NULL, NULL),
                  child_json(2, "write_aio", "write")};
    add_quorum(e, "q0", "\"vote-threshold\": 2", f, 3, NULL);
    d = handle(e, "q0");
    assert_int_equal(vd_pwrite(d, buf, 100, 1000, 0), -ENOSPC);
    assert_int_equal(seen.nb, 3);
    expect_event(0, "QUORUM_REPORT_BAD", "r0", "write", "No space left on device", 1, 2);
    expect_event(1, "QUORUM_REPORT_BAD", "r2", "write", "No space left on device", 1, 2);
    expect_event(2, "QUORUM_FAILURE", "q0", "", "-", 1, 2);
    vd_close(d);
    vd_engine_free(e);
    free_kids(f, 3);

    /* Flushes: failures reported with an empty range, and fatal only below threshold. */
    e = engine();
    char *g[2] = {child_json(0, NULL, NULL), child_json(1, "flush_to_disk", "flush")};
    add_quorum(e, "q0", "\"vote-threshold\": 1", g, 2, NULL);
    d = handle(e, "q0");
    assert_int_equal(vd_pwrite(d, buf, 512, 0, 0), 0);
    assert_int_equal(vd_flush(d), 0);
    assert_int_equal(seen.nb, 1);
    expect_event(0, "QUORUM_REPORT_BAD", "r1", "flush", "No space left on device", 0, 0);
    vd_close(d);
    vd_engine_free(e);
    free_kids(g, 2);
}

/* ---- repairs and blkverify --------------------------------------------------------------- */

static void test_rewrite(void **state)
{
    (void)state;
    make_child(0, SIZE, 0);
    make_child(1, SIZE, 0x22);
    make_child(2, SIZE, 0);
    vd_engine *e = engine();
    char *k[3] = {child_json(0, NULL, NULL), child_json(1, NULL, NULL),
                  child_json(2, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 2, \"rewrite-corrupted\": true", k, 3, NULL);
    vd_disk *d = handle(e, "q0");
    read_expect(d, 4096, 8192, 0x11);
    assert_int_equal(seen.nb, 1);
    expect_event(0, "QUORUM_REPORT_BAD", "r1", "read", "-", 8, 16);
    assert_int_equal(byte_at(1, 4096), 0x11);
    /* Repaired: the next read finds all three agreeing. */
    events_reset();
    read_expect(d, 4096, 8192, 0x11);
    assert_int_equal(seen.nb, 0);
    vd_close(d);
    vd_engine_free(e);
    free_kids(k, 3);
}

static void test_blkverify(void **state)
{
    (void)state;
    make_child(0, SIZE, 0);
    make_child(1, SIZE, 0x22);
    vd_engine *e = engine();
    char *k[2] = {child_json(0, NULL, NULL), child_json(1, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 2, \"blkverify\": true", k, 2, NULL);
    vd_disk *d = handle(e, "q0");
    read_expect(d, 0, 4096, 0x11);
    uint8_t buf[8192];
    /* QEMU exits here; the library fails the read and says where. */
    assert_int_equal(vd_pread(d, buf, 8192, 1024), -EIO);
    assert_string_equal(vd_disk_last_error(d),
                        "quorum: offset=1024 bytes=8192 contents mismatch at offset 4096");
    assert_int_equal(seen.nb, 0);
    change(e, "q0", NULL, "r0", "The node r0 already has a parent");
    add(e, "{\"driver\": \"null-co\", \"node-name\": \"n0\", \"size\": 1048576}", NULL);
    change(e, "q0", NULL, "n0", "Cannot add a child to a quorum in blkverify mode");
    change(e, "q0", "children.0", NULL,
           "The number of children cannot be lower than the vote threshold 2");
    vd_close(d);
    vd_engine_free(e);
    free_kids(k, 2);
}

/* ---- children added and removed ---------------------------------------------------------- */

static void test_change(void **state)
{
    (void)state;
    for (int i = 0; i < 6; i++) {
        make_child(i, SIZE, 0);
    }
    vd_engine *e = engine();
    char *k[2] = {child_json(0, NULL, NULL), child_json(1, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 1", k, 2, NULL);
    /* Named children to add, made by blockdev-add. */
    for (int i = 2; i < 5; i++) {
        char *p = path_of(i), *j = NULL;
        assert_true(asprintf(&j, "{\"driver\": \"raw\", \"node-name\": \"a%d\", \"file\": "
                             "{\"driver\": \"file\", \"filename\": \"%s\"}}", i, p) > 0);
        add(e, j, NULL);
        free(j);
        free(p);
    }
    add(e, "{\"driver\": \"raw\", \"node-name\": \"top\", \"file\": \"q0\"}", NULL);

    change(e, "nosuch", "children.0", NULL, "Cannot find device='nosuch' nor "
           "node-name='nosuch'");
    change(e, "q0", "children.0", "a2", "The parameters child and node are in conflict");
    change(e, "q0", NULL, NULL, "Either child or node must be specified");
    change(e, "q0", "children.5", NULL, "Node 'q0' does not have child 'children.5'");
    change(e, "q0", NULL, "nosuch", "Node 'nosuch' not found");
    change(e, "a2", "file", NULL, "The node a2 does not support removing a child");
    change(e, "a2", NULL, "a3", "The node a2 does not support adding a child");
    change(e, "q0", NULL, "r0", "The node r0 already has a parent");
    change(e, "q0", NULL, "top", "Making 'top' a children.2 child of 'q0' would create a "
           "cycle");

    change(e, "q0", NULL, "a2", NULL);                 /* children.2 */
    change(e, "q0", NULL, "a3", NULL);                 /* children.3 */
    vd_error *err = NULL;
    assert_true(vd_blockdev_del(e, "a2", &err) < 0);
    assert_string_equal(vd_error_msg(err), "Block device a2 is in use");
    vd_error_free(err);
    /* Writes reach the new children. */
    vd_disk *d = handle(e, "q0");
    uint8_t buf[512];
    memset(buf, 0x66, sizeof(buf));
    assert_int_equal(vd_pwrite(d, buf, 512, 0, 0), 0);
    assert_int_equal(byte_at(3, 0), 0x66);
    /* Removal compacts the list; the names stay. A nested child goes with it. */
    change(e, "q0", "children.1", NULL, NULL);
    assert_false(vd_blockdev_exists(e, "r1"));
    change(e, "q0", NULL, "a4", NULL);                 /* children.4 */
    change(e, "q0", "children.4", NULL, NULL);         /* the last: its number is free */
    change(e, "q0", NULL, "a4", NULL);                 /* children.4 again */
    change(e, "q0", "children.1", NULL, "Node 'q0' does not have child 'children.1'");
    change(e, "q0", "children.2", NULL, NULL);
    assert_true(vd_blockdev_exists(e, "a2"));          /* blockdev-add's node stays */
    assert_int_equal(vd_blockdev_del(e, "a2", NULL), 0);
    change(e, "q0", "children.3", NULL, NULL);
    change(e, "q0", "children.0", NULL, NULL);
    change(e, "q0", "children.4", NULL,
           "The number of children cannot be lower than the vote threshold 1");
    assert_false(vd_blockdev_exists(e, "r0"));
    memset(buf, 0x77, sizeof(buf));
    assert_int_equal(vd_pwrite(d, buf, 512, 0, 0), 0);
    assert_int_equal(byte_at(4, 0), 0x77);
    assert_int_equal(byte_at(3, 0), 0x66);
    vd_close(d);
    vd_engine_free(e);
    free_kids(k, 2);
}

typedef struct writer {
    vd_disk *d;
    bool stop;
    int failures, done;      /* atomics: the test thread reads them */
} writer;

static void *write_loop(void *arg)
{
    writer *w = arg;
    uint8_t buf[4096];
    memset(buf, 0x5a, sizeof(buf));
    for (int i = 0; !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE); i++) {
        if (vd_pwrite(w->d, buf, sizeof(buf), (uint64_t)(i % 256) * 4096, 0) < 0) {
            __atomic_add_fetch(&w->failures, 1, __ATOMIC_RELAXED);
        }
        __atomic_add_fetch(&w->done, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Waits until the writer has finished another write. */
static void writer_progress(writer *w)
{
    int before = __atomic_load_n(&w->done, __ATOMIC_ACQUIRE);
    for (int i = 0; i < 10000 && __atomic_load_n(&w->done, __ATOMIC_ACQUIRE) == before; i++) {
        usleep(100);
    }
}

/* Children come and go under a stream of writes (threshold 1): every write succeeds. */
static void test_change_under_writes(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        make_child(i, SIZE, 0);
    }
    vd_engine *e = engine();
    char *k[1] = {child_json(0, NULL, NULL)};
    add_quorum(e, "q0", "\"vote-threshold\": 1, \"read-pattern\": \"fifo\"", k, 1, NULL);
    for (int i = 1; i < 3; i++) {
        char *p = path_of(i), *j = NULL;
        assert_true(asprintf(&j, "{\"driver\": \"raw\", \"node-name\": \"a%d\", \"file\": "
                             "{\"driver\": \"file\", \"filename\": \"%s\"}}", i, p) > 0);
        add(e, j, NULL);
        free(j);
        free(p);
    }
    writer w = {.d = handle(e, "q0")};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, write_loop, &w), 0);
    for (int round = 0; round < 50; round++) {
        writer_progress(&w);
        change(e, "q0", NULL, "a1", NULL);
        change(e, "q0", NULL, "a2", NULL);
        writer_progress(&w);
        /* Newest first, so that both numbers are free again (QEMU's naming rule). */
        change(e, "q0", "children.2", NULL, NULL);
        change(e, "q0", "children.1", NULL, NULL);
    }
    __atomic_store_n(&w.stop, true, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    assert_int_equal(w.failures, 0);
    assert_true(w.done >= 100);
    vd_close(w.d);
    vd_engine_free(e);
    free_kids(k, 1);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_reads),
        cmocka_unit_test(test_read_failures),
        cmocka_unit_test(test_writes),
        cmocka_unit_test(test_rewrite),
        cmocka_unit_test(test_blkverify),
        cmocka_unit_test(test_change),
        cmocka_unit_test(test_change_under_writes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
