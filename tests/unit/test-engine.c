/* Two engines in one process share nothing: each has its own compression pool (sized by its
 * settings), codec cache and test aids; both run compressed I/O at the same time with
 * their own settings in force, and freeing one leaves the other's disks working. */
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

#include "block/engine.h"
#include "vdisk/vdisk.h"

enum { CL = 65536, NCL = 16, ROUNDS = 6 };

typedef struct worker {
    vd_engine *e;
    char image[400];     /* a file name, maybe with a blkdebug: prefix */
    uint8_t seed;
    int failures;
} worker;

static void fill(uint8_t *buf, size_t len, uint8_t seed, int round)
{
    for (size_t i = 0; i < len; i++) {
        /* Compressible, different for every cluster, round and engine. */
        buf[i] = (uint8_t)((i / 64) * 7 + seed + round * 13);
    }
}

/* Rounds of compressed writes of NCL clusters (a batch for the pool), each read back. */
static void *run(void *arg)
{
    worker *w = arg;
    uint8_t *buf = malloc((size_t)NCL * CL), *back = malloc((size_t)NCL * CL);
    vd_open_opts o = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    for (int r = 0; r < ROUNDS && buf && back; r++) {
        vd_disk *d = NULL;
        vd_error *err = NULL;
        if (vd_open(w->e, w->image, &o, &d, &err) < 0) {
            vd_error_free(err);
            w->failures++;
            break;
        }
        fill(buf, (size_t)NCL * CL, w->seed, r);
        w->failures += vd_pwrite_compressed(d, buf, (size_t)NCL * CL, 0) != 0;
        w->failures += vd_pread(d, back, (size_t)NCL * CL, 0) != 0;
        w->failures += memcmp(buf, back, (size_t)NCL * CL) != 0;
        w->failures += vd_close(d) != 0;
    }
    free(buf);
    free(back);
    return NULL;
}

static void make_image(vd_engine *e, const char *path)
{
    vd_error *err = NULL;
    assert_int_equal(vd_create(e, path, "qcow2", (uint64_t)NCL * CL, NULL, 0, &err), 0);
}

static void test_two_engines(void **state)
{
    (void)state;
    char dir[] = "/tmp/vdisk-engine-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char a_img[300], b_img[300], counts[300];
    snprintf(a_img, sizeof(a_img), "%s/a.qcow2", dir);
    snprintf(b_img, sizeof(b_img), "%s/b.qcow2", dir);
    snprintf(counts, sizeof(counts), "%s/counts", dir);

    vd_engine_settings sa = {.threads = 1};
    vd_engine_settings sb = {.threads = 3, .blkdebug_count_file = counts};
    vd_engine *a = vd_engine_new_with(&sa);
    vd_engine *b = vd_engine_new_with(&sb);
    make_image(a, a_img);
    make_image(b, b_img);
    assert_int_equal(vd_pool_threads(a->pool), 1);
    assert_int_equal(vd_pool_threads(b->pool), 3);
    assert_ptr_not_equal(a->codecs, b->codecs);

    /* Both at once: A through the image itself, B through blkdebug, which counts. */
    worker wa = {.e = a, .seed = 1}, wb = {.e = b, .seed = 2};
    snprintf(wa.image, sizeof(wa.image), "%s", a_img);
    snprintf(wb.image, sizeof(wb.image), "blkdebug::%s", b_img);
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, run, &wa), 0);
    assert_int_equal(pthread_create(&tb, NULL, run, &wb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(wa.failures, 0);
    assert_int_equal(wb.failures, 0);

    /* Only B counts: one line per blkdebug close, i.e. per round. */
    FILE *f = fopen(counts, "r");
    assert_non_null(f);
    char line[128];
    int lines = 0;
    while (fgets(line, sizeof(line), f)) {
        lines++;
    }
    fclose(f);
    assert_int_equal(lines, ROUNDS);

    /* A goes away while B works on. */
    vd_disk *d = NULL;
    vd_error *err = NULL;
    vd_open_opts o = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    assert_int_equal(vd_open(b, b_img, &o, &d, &err), 0);
    vd_engine_free(a);
    uint8_t *buf = malloc((size_t)NCL * CL), *back = malloc((size_t)NCL * CL);
    assert_non_null(buf);
    assert_non_null(back);
    fill(buf, (size_t)NCL * CL, 9, 9);
    assert_int_equal(vd_pwrite_compressed(d, buf, (size_t)NCL * CL, 0), 0);
    assert_int_equal(vd_pread(d, back, (size_t)NCL * CL, 0), 0);
    assert_memory_equal(buf, back, (size_t)NCL * CL);
    assert_int_equal(vd_close(d), 0);
    vd_engine_free(b);
    free(buf);
    free(back);

    unlink(a_img);
    unlink(b_img);
    unlink(counts);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_engines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
