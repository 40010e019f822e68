/* Dirty bitmaps on the engine's nodes (src/block/dirty-bitmap.c): every kind of write
 * marks what it touched, at the bitmap's granularity; writers on four threads lose no mark
 * while bitmaps are added, listed, merged and removed beside them; a failed transaction
 * leaves every bitmap as it was; a reader holds a bitmap busy. */
#include <errno.h>
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

#include "vdisk/bitmap.h"
#include "vdisk/graph.h"
#include "vdisk/snapshot.h"
#include "vdisk/vdisk.h"

#define SIZE (64u << 20)
#define GRAN 65536u

static char dir[] = "/tmp/vdisk-test-bitmap.XXXXXX";
static char img[128];

typedef struct fixture {
    vd_engine *e;
    vd_disk *d;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->e = vd_engine_new();
    vd_error *err = NULL;
    snprintf(img, sizeof(img), "%s/a.qcow2", dir);
    unlink(img);
    assert_int_equal(vd_create(f->e, img, "qcow2", SIZE, NULL, 0, &err), 0);
    char json[256];
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"a\", \"discard\": \"unmap\", \"file\": "
             "{\"driver\": \"file\", \"filename\": \"%s\"}}", img);
    vd_tree *t = NULL;
    assert_int_equal(vd_tree_parse_json(json, strlen(json), &t, &err), 0);
    assert_int_equal(vd_blockdev_add(f->e, t, VD_OPEN_RDWR, &err), 0);
    assert_int_equal(vd_blockdev_open(f->e, "a", &f->d, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    vd_close(f->d);
    assert_int_equal(vd_blockdev_del(f->e, "a", NULL), 0);
    vd_engine_free(f->e);
    unlink(img);
    free(f);
    return 0;
}

static uint64_t count_of(vd_engine *e, const char *name)
{
    vd_bitmap_info *list;
    size_t nb;
    assert_int_equal(vd_bitmap_list(e, "a", &list, &nb, NULL), 0);
    uint64_t c = UINT64_MAX;
    for (size_t i = 0; i < nb; i++) {
        if (!strcmp(list[i].name, name)) {
            c = list[i].count;
        }
    }
    vd_bitmap_list_free(list, nb);
    assert_true(c != UINT64_MAX);
    return c;
}

/* The bitmap's dirty runs, as a byte per granule. */
static void read_bits(vd_disk *d, const char *name, uint8_t *bits)
{
    vd_dirty_bitmap *b;
    vd_error *err = NULL;
    if (vd_bitmap_acquire(d, NULL, name, false, &b, &err) < 0) {
        fail_msg("acquire %s: %s", name, vd_error_msg(err));
    }
    memset(bits, 0, SIZE / GRAN);
    uint64_t off = 0, start, len;
    while (vd_dirty_bitmap_next_dirty_area(b, off, SIZE, &start, &len)) {
        for (uint64_t g = start / GRAN; g < (start + len + GRAN - 1) / GRAN; g++) {
            bits[g] = 1;
        }
        off = start + len;
    }
    vd_bitmap_release(b);
}

static void mark(uint8_t *bits, uint64_t off, uint64_t len)
{
    for (uint64_t g = off / GRAN; g <= (off + len - 1) / GRAN; g++) {
        bits[g] = 1;
    }
}

static void test_every_kind_marks(void **state)
{
    fixture *f = *state;
    vd_error *err = NULL;
    vd_bitmap_add_opts o = {.granularity = GRAN};
    assert_int_equal(vd_bitmap_add(f->e, "a", "b", &o, &err), 0);
    o.disabled = true;
    assert_int_equal(vd_bitmap_add(f->e, "a", "off", &o, &err), 0);
    static uint8_t buf[8192];
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(vd_pwrite(f->d, buf, 1, 0, 0), 0);                 /* granule 0 */
    assert_int_equal(vd_pwrite(f->d, buf, 8192, 3 * GRAN - 4096, 0), 0); /* 2 and 3 */
    assert_int_equal(vd_pwrite_zeroes(f->d, 10 * GRAN, 2 * GRAN, 0), 0); /* 10, 11 */
    assert_int_equal(vd_pdiscard(f->d, 20 * GRAN + 512, 512), 0);       /* 20 */
    uint8_t *want = calloc(SIZE / GRAN, 1), *got = calloc(SIZE / GRAN, 1);
    mark(want, 0, 1);
    mark(want, 3 * GRAN - 4096, 8192);
    mark(want, 10 * GRAN, 2 * GRAN);
    mark(want, 20 * GRAN + 512, 512);
    read_bits(f->d, "b", got);
    assert_memory_equal(got, want, SIZE / GRAN);
    assert_int_equal(count_of(f->e, "b"), 6 * GRAN);
    assert_int_equal(count_of(f->e, "off"), 0);
    /* Growing keeps the bits and adds clean granules; shrinking drops the cut ones. */
    assert_int_equal(vd_truncate(f->d, SIZE + 4 * GRAN, false, NULL, &err), 0);
    assert_int_equal(count_of(f->e, "b"), 6 * GRAN);
    assert_int_equal(vd_truncate(f->d, 11 * GRAN, true, NULL, &err), 0);
    assert_int_equal(count_of(f->e, "b"), 4 * GRAN);
    assert_int_equal(vd_truncate(f->d, SIZE, false, NULL, &err), 0);
    assert_int_equal(vd_bitmap_clear(f->e, "a", "b", &err), 0);
    assert_int_equal(count_of(f->e, "b"), 0);
    free(want);
    free(got);
}

typedef struct writer {
    vd_disk *d;
    unsigned seed;
    uint8_t bits[SIZE / GRAN];
} writer;

static void *write_randomly(void *arg)
{
    writer *w = arg;
    static const uint8_t data[65536];
    for (int i = 0; i < 400; i++) {
        uint64_t len = 1 + (uint64_t)rand_r(&w->seed) % sizeof(data);
        uint64_t off = (uint64_t)rand_r(&w->seed) % (SIZE - len);
        int kind = rand_r(&w->seed) % 3;
        int ret = kind == 0   ? vd_pwrite(w->d, data, len, off, 0)
                  : kind == 1 ? vd_pwrite_zeroes(w->d, off, len, 0)
                              : vd_pdiscard(w->d, off, len);
        assert_int_equal(ret, 0);
        mark(w->bits, off, len);
    }
    return NULL;
}

/* Four writers; beside them bitmaps come and go, are listed and merged. The bitmap added
 * before they started has exactly the union of what they wrote. */
static void test_concurrent_writers(void **state)
{
    fixture *f = *state;
    vd_error *err = NULL;
    vd_bitmap_add_opts o = {.granularity = GRAN};
    assert_int_equal(vd_bitmap_add(f->e, "a", "all", &o, &err), 0);
    writer *w = calloc(4, sizeof(*w));
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i].d = f->d;
        w[i].seed = 1234u + (unsigned)i;
        assert_int_equal(pthread_create(&th[i], NULL, write_randomly, &w[i]), 0);
    }
    for (int i = 0; i < 200; i++) {
        vd_bitmap_add_opts t = {.granularity = 512u << (i % 8)};
        assert_int_equal(vd_bitmap_add(f->e, "a", "tmp", &t, &err), 0);
        vd_bitmap_ref src = {NULL, "all"};
        assert_int_equal(vd_bitmap_merge(f->e, "a", "tmp", &src, 1, &err), 0);
        vd_bitmap_info *list;
        size_t nb;
        assert_int_equal(vd_bitmap_list(f->e, "a", &list, &nb, &err), 0);
        assert_int_equal(nb, 2);
        vd_bitmap_list_free(list, nb);
        assert_int_equal(vd_bitmap_remove(f->e, "a", "tmp", &err), 0);
    }
    uint8_t *want = calloc(SIZE / GRAN, 1), *got = calloc(SIZE / GRAN, 1);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        for (size_t g = 0; g < SIZE / GRAN; g++) {
            want[g] |= w[i].bits[g];
        }
    }
    read_bits(f->d, "all", got);
    assert_memory_equal(got, want, SIZE / GRAN);
    free(want);
    free(got);
    free(w);
}

/* A transaction whose last action fails: the merge, clear, disable and removal before it
 * are undone and the added bitmap is gone. Without it, each action sees the ones before. */
static void test_failed_transaction(void **state)
{
    fixture *f = *state;
    vd_error *err = NULL;
    vd_bitmap_add_opts o = {.granularity = GRAN};
    assert_int_equal(vd_bitmap_add(f->e, "a", "x", &o, &err), 0);
    assert_int_equal(vd_bitmap_add(f->e, "a", "y", &o, &err), 0);
    assert_int_equal(vd_bitmap_add(f->e, "a", "z", &o, &err), 0);
    static const uint8_t data[512];
    assert_int_equal(vd_pwrite(f->d, data, 512, 5 * GRAN, 0), 0);
    assert_int_equal(vd_bitmap_clear(f->e, "a", "y", &err), 0);
    vd_bitmap_ref src = {NULL, "x"};
    vd_action acts[] = {
        {.kind = VD_ACTION_BITMAP_ADD, .engine = f->e, .node = "a", .bitmap = "new"},
        {.kind = VD_ACTION_BITMAP_MERGE, .engine = f->e, .node = "a", .bitmap = "y",
         .sources = &src, .nb_sources = 1},
        {.kind = VD_ACTION_BITMAP_CLEAR, .engine = f->e, .node = "a", .bitmap = "x",
         .disk = f->d},
        {.kind = VD_ACTION_BITMAP_DISABLE, .engine = f->e, .node = "a", .bitmap = "x"},
        {.kind = VD_ACTION_BITMAP_REMOVE, .engine = f->e, .node = "a", .bitmap = "z"},
        {.kind = VD_ACTION_BITMAP_ADD, .engine = f->e, .node = "a", .bitmap = "x"},
    };
    assert_true(vd_transaction(acts, 6, &err) < 0);
    assert_string_equal(vd_error_msg(err), "Bitmap already exists: x");
    vd_error_free(err);
    err = NULL;
    vd_bitmap_info *list;
    size_t nb;
    assert_int_equal(vd_bitmap_list(f->e, "a", &list, &nb, &err), 0);
    assert_int_equal(nb, 3);
    /* Newest first, in their places again. */
    assert_string_equal(list[0].name, "z");
    assert_string_equal(list[1].name, "y");
    assert_string_equal(list[2].name, "x");
    assert_int_equal(list[2].count, GRAN);
    assert_true(list[2].recording);
    assert_int_equal(list[1].count, 0);
    vd_bitmap_list_free(list, nb);
    /* The same without the failing action runs all of it. */
    assert_int_equal(vd_transaction(acts, 5, &err), 0);
    assert_int_equal(vd_bitmap_list(f->e, "a", &list, &nb, &err), 0);
    assert_int_equal(nb, 3);
    assert_string_equal(list[0].name, "new");
    assert_string_equal(list[1].name, "y");
    assert_int_equal(list[1].count, GRAN);
    assert_string_equal(list[2].name, "x");
    assert_int_equal(list[2].count, 0);
    assert_false(list[2].recording);
    vd_bitmap_list_free(list, nb);
}

/* A reader makes a bitmap busy: no command changes it until it is released. */
static void test_busy(void **state)
{
    fixture *f = *state;
    vd_error *err = NULL;
    assert_int_equal(vd_bitmap_add(f->e, "a", "b", NULL, &err), 0);
    vd_dirty_bitmap *b;
    assert_int_equal(vd_bitmap_acquire(f->d, NULL, "b", false, &b, &err), 0);
    assert_int_equal(vd_bitmap_remove(f->e, "a", "b", &err), -EBUSY);
    assert_string_equal(vd_error_msg(err), "Bitmap 'b' is currently in use by another "
                        "operation and cannot be used");
    vd_error_free(err);
    err = NULL;
    assert_true(vd_bitmap_acquire(f->d, NULL, "b", false, &b, &err) < 0);
    vd_error_free(err);
    err = NULL;
    vd_bitmap_release(b);
    assert_int_equal(vd_bitmap_remove(f->e, "a", "b", &err), 0);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_kind_marks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy, setup, teardown),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(dir);
    return ret;
}
