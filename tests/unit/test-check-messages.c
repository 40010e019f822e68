/* Unit tests for how a check hands out its messages: vd_check_stream passes every line, in
 * the order vd_check's log has them; a callback that refuses a line gets no more, and the
 * rest are counted; without a callback the counts are the same and no line is made;
 * vd_check keeps a 64 MiB prefix and counts the rest. The images have L2 tables whose 8192
 * entries all have a reserved bit set (one line each). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "vdisk/vdisk.h"

#define MiB (1024 * 1024)
#define CLUSTER 65536
#define L2_ENTRIES (CLUSTER / 8)

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) {
        p[i] = (uint8_t)v;
    }
}

typedef struct fixture {
    char dir[256];
    char path[300];
    vd_engine *e;
} fixture;

static void must(int ret, vd_error *err, const char *what)
{
    if (ret < 0) {
        fail_msg("%s: %s", what, err ? vd_error_msg(err) : strerror(-ret));
    }
}

static vd_disk *open_image(fixture *f, unsigned flags)
{
    vd_open_opts o = {.format = "qcow2", .flags = flags};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    must(vd_open(f->e, f->path, &o, &d, &err), err, "open");
    return d;
}

static uint8_t bad_table[CLUSTER];

static fixture *new_fixture(uint64_t size)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "%s/checkmsg-XXXXXX", getenv("TMPDIR") ?: "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/a.qcow2", f->dir);
    f->e = vd_engine_new();
    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    must(vd_create(f->e, f->path, "qcow2", size, o, 0, &err), err, "create");
    vd_opts_free(o);
    for (int i = 0; i < L2_ENTRIES; i++) {
        put_be64(bad_table + 8 * i, 2);  /* unallocated, reserved bit 1 set */
    }
    return f;
}

/* A 4 MiB image with 64 KiB of data at 0, then its L2 table overwritten with bad entries. */
static int setup(void **state)
{
    fixture *f = new_fixture(4 * MiB);
    vd_disk *d = open_image(f, VD_OPEN_RDWR);
    static uint8_t data[CLUSTER];
    memset(data, 0x5a, sizeof(data));
    assert_int_equal(vd_pwrite(d, data, sizeof(data), 0, 0), 0);
    assert_int_equal(vd_close(d), 0);

    int fd = open(f->path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b[8];
    assert_int_equal(pread(fd, b, 8, 40), 8);  /* l1_table_offset */
    assert_int_equal(pread(fd, b, 8, (off_t)get_be64(b)), 8);
    uint64_t l2 = get_be64(b) & 0x00fffffffffffe00ull;
    assert_true(l2 != 0);
    assert_int_equal(pwrite(fd, bad_table, CLUSTER, (off_t)l2), CLUSTER);
    close(fd);
    *state = f;
    return 0;
}

/* A 100 GiB image whose first 200 L1 entries point at bad L2 tables appended to the file:
 * 1.6 million lines, more than vd_check keeps. */
#define MANY_TABLES 200

static int setup_many(void **state)
{
    fixture *f = new_fixture(100ull << 30);
    int fd = open(f->path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b[8];
    assert_int_equal(pread(fd, b, 8, 40), 8);
    uint64_t l1 = get_be64(b);
    off_t end = lseek(fd, 0, SEEK_END);
    assert_true(end > 0);
    end = (end + CLUSTER - 1) / CLUSTER * CLUSTER;
    for (int i = 0; i < MANY_TABLES; i++) {
        uint64_t at = (uint64_t)end + (uint64_t)i * CLUSTER;
        assert_int_equal(pwrite(fd, bad_table, CLUSTER, (off_t)at), CLUSTER);
        put_be64(b, at | 1ull << 63);  /* COPIED */
        assert_int_equal(pwrite(fd, b, 8, (off_t)(l1 + 8u * i)), 8);
    }
    close(fd);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    vd_engine_free(f->e);
    free(f);
    return 0;
}

typedef struct lines {
    char *text;              /* every line taken, each ended by a newline */
    size_t len, cap;
    uint64_t calls, taken, limit;
} lines;

static bool take(void *opaque, const char *line)
{
    lines *l = opaque;
    l->calls++;
    assert_null(strchr(line, '\n'));
    if (l->taken >= l->limit) {
        return false;
    }
    size_t n = strlen(line);
    if (l->len + n + 2 > l->cap) {
        l->cap = (l->len + n + 2) * 2;
        l->text = realloc(l->text, l->cap);
        assert_non_null(l->text);
    }
    memcpy(l->text + l->len, line, n);
    l->len += n;
    l->text[l->len++] = '\n';
    l->text[l->len] = '\0';
    l->taken++;
    return true;
}

static void run_stream(fixture *f, bool (*fn)(void *, const char *), lines *l,
                       vd_check_result *res)
{
    vd_disk *d = open_image(f, VD_OPEN_CHECK);
    vd_error *err = NULL;
    vd_check_hooks hooks = {.msg = fn, .opaque = l};
    memset(res, 0, sizeof(*res));
    must(vd_check_stream(d, 0, &hooks, res, &err), err, "check");
    assert_null(res->log);
    vd_close(d);
}

static void run_check(fixture *f, vd_check_result *res)
{
    vd_disk *d = open_image(f, VD_OPEN_CHECK);
    vd_error *err = NULL;
    memset(res, 0, sizeof(*res));
    must(vd_check(d, 0, res, &err), err, "check");
    vd_close(d);
    assert_non_null(res->log);
}

static void assert_same_counts(const vd_check_result *a, const vd_check_result *b)
{
    assert_int_equal(a->corruptions, b->corruptions);
    assert_int_equal(a->leaks, b->leaks);
    assert_int_equal(a->check_errors, b->check_errors);
    assert_int_equal(a->image_end_offset, b->image_end_offset);
    assert_int_equal(a->allocated_clusters, b->allocated_clusters);
}

static void test_stream_equals_log(void **state)
{
    fixture *f = *state;
    lines all = {.limit = UINT64_MAX};
    vd_check_result s;
    run_stream(f, take, &all, &s);
    assert_true(all.taken >= L2_ENTRIES);
    assert_int_equal(all.calls, all.taken);
    assert_int_equal(s.messages_dropped, 0);
    assert_true(s.corruptions >= L2_ENTRIES);
    assert_non_null(strstr(all.text, "ERROR found l2 entry with reserved bits set: 2\n"));

    vd_check_result r;
    run_check(f, &r);
    assert_string_equal(r.log, all.text);
    assert_int_equal(r.messages_dropped, 0);
    assert_same_counts(&r, &s);
    vd_check_result_clear(&r);
    free(all.text);
}

static void test_refused_lines_are_counted(void **state)
{
    fixture *f = *state;
    lines all = {.limit = UINT64_MAX}, some = {.limit = 10};
    vd_check_result a, s;
    run_stream(f, take, &all, &a);
    run_stream(f, take, &some, &s);
    assert_int_equal(some.taken, 10);
    assert_int_equal(some.calls, 11);  /* the refused line, then nothing */
    assert_int_equal(s.messages_dropped, (int64_t)(all.taken - 10));
    assert_memory_equal(some.text, all.text, some.len);
    assert_same_counts(&a, &s);
    free(all.text);
    free(some.text);
}

static void test_no_callback(void **state)
{
    fixture *f = *state;
    lines all = {.limit = UINT64_MAX};
    vd_check_result a, s;
    run_stream(f, take, &all, &a);
    run_stream(f, NULL, NULL, &s);
    assert_int_equal(s.messages_dropped, 0);
    assert_same_counts(&a, &s);
    free(all.text);
}

/* vd_check keeps at most 64 MiB: a prefix of the stream's lines, then one line that counts
 * the rest. */
static void test_log_cap(void **state)
{
    fixture *f = *state;
    lines all = {.limit = UINT64_MAX};
    vd_check_result s;
    run_stream(f, take, &all, &s);
    assert_true(all.len > (64u << 20));
    assert_int_equal(s.messages_dropped, 0);

    vd_check_result r;
    run_check(f, &r);
    size_t len = strlen(r.log);
    assert_true(len <= (64u << 20));
    assert_true(r.messages_dropped > 0);
    char *last = r.log + len - 1;
    assert_int_equal(*last, '\n');
    *last = '\0';
    char *tail = strrchr(r.log, '\n') + 1;
    char want[64];
    snprintf(want, sizeof(want), "(%lld more messages not shown)", (long long)r.messages_dropped);
    assert_string_equal(tail, want);
    size_t kept = (size_t)(tail - r.log);
    assert_memory_equal(r.log, all.text, kept);
    uint64_t kept_lines = 0;
    for (size_t i = 0; i < kept; i++) {
        kept_lines += r.log[i] == '\n';
    }
    assert_int_equal(kept_lines + (uint64_t)r.messages_dropped, all.taken);
    assert_same_counts(&r, &s);
    vd_check_result_clear(&r);
    free(all.text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream_equals_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_lines_are_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_cap, setup_many, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
