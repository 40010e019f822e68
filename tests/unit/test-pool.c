/* Unit tests of the batch runner (src/compress/pool.h): every task runs exactly once and
 * has finished when vd_pool_run returns, batches from many threads at once, nested
 * batches, a caller finishing its batch while every worker is stuck in someone else's, the
 * threads setting (pools of different sizes side by side, and none), and the codec context
 * cache used from pool tasks. */
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

#include "compress/codec.h"
#include "compress/pool.h"

/* The pool the tests share (made in main). */
static vd_pool *P;

/* ---- every task once ------------------------------------------------------------------ */

typedef struct {
    unsigned *hits; /* one counter per task, incremented atomically */
    size_t n;
} marks;

static void mark(void *arg, size_t i)
{
    marks *m = arg;
    if (i >= m->n) {
        fail_msg("task index %zu out of range (n = %zu)", i, m->n);
    }
    __atomic_add_fetch(&m->hits[i], 1, __ATOMIC_RELAXED);
}

static void run_and_check(size_t n)
{
    marks m = {calloc(n ? n : 1, sizeof(unsigned)), n};
    assert_non_null(m.hits);
    vd_pool_run(P, n, mark, &m);
    /* Plain reads: vd_pool_run's return must already order every task before it. */
    for (size_t i = 0; i < n; i++) {
        if (m.hits[i] != 1) {
            fail_msg("n = %zu: task %zu ran %u times", n, i, m.hits[i]);
        }
    }
    free(m.hits);
}

static void never(void *arg, size_t i)
{
    (void)arg;
    fail_msg("task %zu of an empty batch ran", i);
}

static void test_counts(void **state)
{
    (void)state;
    assert_true(vd_pool_threads(P) >= 1);
    vd_pool_run(P, 0, never, NULL);
    run_and_check(1);
    run_and_check(2);
    run_and_check(3);
    run_and_check(10000);
    for (size_t n = 0; n < 40; n++) {
        run_and_check(n);
    }
}

/* Tasks that take a moment spread over the threads when there are several. */
typedef struct {
    pthread_t who[64];
} owners;

static void slow_task(void *arg, size_t i)
{
    owners *o = arg;
    usleep(2000);
    o->who[i] = pthread_self();
}

static void test_uses_workers(void **state)
{
    (void)state;
    owners o;
    memset(&o, 0, sizeof(o));
    vd_pool_run(P, 64, slow_task, &o);
    size_t distinct = 0;
    for (size_t i = 0; i < 64; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++) {
            seen = pthread_equal(o.who[i], o.who[j]);
        }
        distinct += !seen;
    }
    assert_true(distinct >= 1 && distinct <= vd_pool_threads(P));
    if (vd_pool_threads(P) > 1) {
        assert_true(distinct > 1);
    }
}

/* ---- many callers --------------------------------------------------------------------- */

static void *caller_main(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int b = 0; b < 60; b++) {
        seed = seed * 1103515245u + 12345u;
        run_and_check((seed >> 16) % 400);
    }
    return NULL;
}

static void test_many_callers(void **state)
{
    (void)state;
    enum { CALLERS = 12 };
    pthread_t t[CALLERS];
    for (uintptr_t k = 0; k < CALLERS; k++) {
        assert_int_equal(pthread_create(&t[k], NULL, caller_main, (void *)(k + 1)), 0);
    }
    for (int k = 0; k < CALLERS; k++) {
        assert_int_equal(pthread_join(t[k], NULL), 0);
    }
}

/* A task may run a batch of its own. */
static void nested_outer(void *arg, size_t i)
{
    (void)arg;
    (void)i;
    run_and_check(100);
}

static void test_nested(void **state)
{
    (void)state;
    vd_pool_run(P, 8, nested_outer, NULL);
}

/* ---- a caller is never held up by other batches ------------------------------------------ */

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open;
static unsigned blocked_running;

static void blocking_task(void *arg, size_t i)
{
    (void)arg;
    (void)i;
    pthread_mutex_lock(&gate_lock);
    blocked_running++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open) {
        pthread_cond_wait(&gate_cv, &gate_lock);
    }
    pthread_mutex_unlock(&gate_lock);
}

static void *blocking_caller(void *arg)
{
    vd_pool_run(P, (size_t)(uintptr_t)arg, blocking_task, NULL);
    return NULL;
}

static void test_caller_progress(void **state)
{
    (void)state;
    /* More blocking tasks than threads, so every worker ends up stuck in them. */
    size_t n = vd_pool_threads(P) + 2;
    gate_open = false;
    blocked_running = 0;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocking_caller, (void *)(uintptr_t)n), 0);
    pthread_mutex_lock(&gate_lock);
    while (blocked_running < vd_pool_threads(P)) { /* the workers and that caller */
        pthread_cond_wait(&gate_cv, &gate_lock);
    }
    pthread_mutex_unlock(&gate_lock);
    /* This batch can only be run by this thread now, and must still finish. */
    run_and_check(500);
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_lock);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(blocked_running, n);
}

/* ---- the threads setting -------------------------------------------------------------- */

static void record_thread(void *arg, size_t i)
{
    pthread_t *who = arg;
    who[i] = pthread_self();
}

/* A pool made for `threads` has `expect` threads and works; with one, the caller runs it
 * all. */
static void check_pool(unsigned threads, unsigned expect)
{
    vd_pool *p = vd_pool_new(threads);
    assert_int_equal(vd_pool_threads(p), expect);
    enum { N = 1000 };
    pthread_t *who = calloc(N, sizeof(*who));
    assert_non_null(who);
    vd_pool_run(p, N, record_thread, who);
    for (size_t i = 0; i < N; i++) {
        if (expect == 1 && !pthread_equal(who[i], pthread_self())) {
            fail_msg("threads=%u: task %zu ran on another thread", threads, i);
        }
    }
    free(who);
    vd_pool_free(p);
}

static void test_threads_setting(void **state)
{
    (void)state;
    check_pool(1, 1);
    check_pool(2, 2);
    check_pool(5, 5);
    /* 0 (and anything out of range) is the default: one worker per CPU plus the caller. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned def = cpus > 0 ? (unsigned)cpus + 1 : 2;
    check_pool(0, def);
    check_pool(100000, def);
    /* No pool: the caller alone. */
    marks m = {calloc(10, sizeof(unsigned)), 10};
    assert_non_null(m.hits);
    assert_int_equal(vd_pool_threads(NULL), 1);
    vd_pool_run(NULL, 10, mark, &m);
    for (size_t i = 0; i < 10; i++) {
        assert_int_equal(m.hits[i], 1);
    }
    free(m.hits);
    /* A pool that never ran a batch starts no thread and frees at once. */
    vd_pool_free(vd_pool_new(8));
}

/* ---- the context cache from pool tasks ------------------------------------------------ */

enum { CL = 16 * 1024, NCL = 96 };

typedef struct {
    const vd_codec *codec;
    vd_codec_cache *cache;
    int level;
    uint8_t *plain, *comp, *back;
    size_t cap;
    ssize_t clen[NCL];
    int dret[NCL];
} cluster_job;

static void compress_cluster(void *arg, size_t i)
{
    cluster_job *j = arg;
    vd_codec_ctx *ctx = vd_codec_ctx_get(j->cache, j->codec, j->level);
    if (!ctx) {
        j->clen[i] = -ENOMEM;
        return;
    }
    j->clen[i] = vd_codec_compress(ctx, j->plain + i * CL, CL, j->comp + i * j->cap, j->cap);
    vd_codec_ctx_put(j->cache, ctx);
}

static void decompress_cluster(void *arg, size_t i)
{
    cluster_job *j = arg;
    vd_codec_ctx *ctx = vd_codec_ctx_get(j->cache, j->codec, j->level);
    if (!ctx) {
        j->dret[i] = -ENOMEM;
        return;
    }
    j->dret[i] = j->clen[i] < 0 ? j->clen[i] == -ENOSPC ? 0 : -EINVAL
                                : vd_codec_decompress(ctx, j->comp + i * j->cap,
                                                      (size_t)j->clen[i], j->back + i * CL, CL);
    if (j->clen[i] == -ENOSPC) {
        memcpy(j->back + i * CL, j->plain + i * CL, CL); /* stored uncompressed */
    }
    vd_codec_ctx_put(j->cache, ctx);
}

static void test_parallel_codec(void **state)
{
    (void)state;
    uint8_t *plain = malloc((size_t)NCL * CL);
    assert_non_null(plain);
    uint32_t x = 1;
    for (size_t i = 0; i < (size_t)NCL * CL; i++) {
        x = x * 1664525u + 1013904223u;
        size_t cl = i / CL;
        /* every third cluster random, the rest compressible */
        plain[i] = cl % 3 == 0 ? (uint8_t)(x >> 24) : (uint8_t)("abcabdabe"[(x >> 28) % 9]);
    }
    for (int id = 0; id < 2; id++) {
        cluster_job j = {.codec = vd_codec_by_id(id), .cache = vd_codec_cache_new()};
        j.level = j.codec->default_level;
        j.plain = plain;
        j.cap = CL - 512; /* worth storing compressed only if it saves a sector */
        j.comp = malloc(NCL * j.cap);
        j.back = malloc((size_t)NCL * CL);
        assert_non_null(j.comp);
        assert_non_null(j.back);
        vd_pool_run(P, NCL, compress_cluster, &j);
        for (size_t i = 0; i < NCL; i++) {
            if (i % 3 == 0) {
                assert_int_equal(j.clen[i], -ENOSPC);
            } else {
                assert_true(j.clen[i] > 0);
            }
        }
        vd_pool_run(P, NCL, decompress_cluster, &j);
        for (size_t i = 0; i < NCL; i++) {
            assert_int_equal(j.dret[i], 0);
        }
        assert_memory_equal(j.back, plain, (size_t)NCL * CL);
        free(j.comp);
        free(j.back);
        vd_codec_cache_free(j.cache);
    }
    free(plain);
}

int main(void)
{
    P = vd_pool_new(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_setting),
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_uses_workers),
        cmocka_unit_test(test_many_callers),
        cmocka_unit_test(test_nested),
        cmocka_unit_test(test_caller_progress),
        cmocka_unit_test(test_parallel_codec),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    vd_pool_free(P);
    return ret;
}
