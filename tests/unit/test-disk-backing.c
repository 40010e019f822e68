/* Unit test for vd_disk_backing() under concurrency: the backing handle is made on first
 * use, and threads asking for it at the same moment (as an NBD server's workers do) must
 * all get the same handle, with none made twice and leaked. */
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

#include "vdisk/vdisk.h"

#define THREADS 8
#define ROUNDS 100

typedef struct race {
    vd_disk *top;
    pthread_barrier_t start;
    vd_disk *seen[THREADS];
} race;

typedef struct arg {
    race *r;
    int i;
} arg;

static void *ask(void *p)
{
    arg *a = p;
    pthread_barrier_wait(&a->r->start);
    a->r->seen[a->i] = vd_disk_backing(a->r->top);
    return NULL;
}

static void test_backing_handle_race(void **state)
{
    (void)state;
    char dir[] = "/tmp/vdisk-backing-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char base[64], top[64];
    snprintf(base, sizeof(base), "%s/base.qcow2", dir);
    snprintf(top, sizeof(top), "%s/top.qcow2", dir);

    vd_engine *e = vd_engine_new();
    vd_error *err = NULL;
    vd_opts *o = vd_opts_new();
    assert_int_equal(vd_create(e, base, "qcow2", 1 << 20, o, 0, &err), 0);
    vd_opts_set(o, "backing_file", base);
    vd_opts_set(o, "backing_fmt", "qcow2");
    assert_int_equal(vd_create(e, top, "qcow2", 1 << 20, o, 0, &err), 0);
    vd_opts_free(o);

    int differed = 0;
    for (int round = 0; round < ROUNDS; round++) {
        race r;
        memset(&r, 0, sizeof(r));
        vd_open_opts oo = {.format = "qcow2"};
        assert_int_equal(vd_open(e, top, &oo, &r.top, &err), 0);
        pthread_barrier_init(&r.start, NULL, THREADS);
        pthread_t t[THREADS];
        arg a[THREADS];
        for (int i = 0; i < THREADS; i++) {
            a[i] = (arg){&r, i};
            assert_int_equal(pthread_create(&t[i], NULL, ask, &a[i]), 0);
        }
        for (int i = 0; i < THREADS; i++) {
            pthread_join(t[i], NULL);
        }
        pthread_barrier_destroy(&r.start);
        for (int i = 0; i < THREADS; i++) {
            assert_non_null(r.seen[i]);
            differed += r.seen[i] != r.seen[0];
        }
        /* The handle stays what it was handed out as. */
        assert_ptr_equal(vd_disk_backing(r.top), r.seen[0]);
        assert_int_equal(vd_close(r.top), 0);
    }
    assert_int_equal(differed, 0);
    vd_engine_free(e);
    unlink(top);
    unlink(base);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backing_handle_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
