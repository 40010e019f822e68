/* The process-wide batch runner behind pool.h. Batches wait in a FIFO; a thread (worker or
 * caller) takes the next unclaimed index of the oldest batch under the pool mutex, runs
 * it unlocked, and counts it done. A batch leaves the FIFO once its last index is claimed
 * and its caller returns once every index is done, so the batch (on the caller's stack) is
 * never touched after that. Workers are detached and live until the process exits; they
 * allocate nothing, so leak checkers have nothing to report. */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "compress/pool.h"

#define MAX_THREADS 1024

typedef struct batch {
    void (*fn)(void *arg, size_t i);
    void *arg;
    size_t n, next, done;
    pthread_cond_t done_cv; /* signalled when done reaches n */
    struct batch *q_next;
} batch;

static struct {
    pthread_once_t once;
    pthread_mutex_t lock;
    pthread_cond_t work_cv; /* a batch was queued */
    batch *head, *tail;     /* batches with unclaimed indices */
    unsigned workers;
} pool = {PTHREAD_ONCE_INIT, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL,
          0};

/* Threads per batch: VDISK_THREADS when valid, else one worker per online core (plus
 * the caller). */
/* Threads inside vd_pool_run right now. */
static unsigned active_callers;

static unsigned wanted_workers(void)
{
    const char *env = getenv("VDISK_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v >= 1 && v <= MAX_THREADS) {
            return (unsigned)v - 1;
        }
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < MAX_THREADS ? (unsigned)n : 1;
}

/* Takes the next index of the oldest batch; lock held. False when nothing is queued. */
static bool claim_locked(batch **b, size_t *i)
{
    batch *h = pool.head;
    if (!h) {
        return false;
    }
    *b = h;
    *i = h->next++;
    if (h->next == h->n) {
        pool.head = h->q_next;
        if (!pool.head) {
            pool.tail = NULL;
        }
    }
    return true;
}

/* Runs task i of b unlocked and counts it; lock held on entry and on return. */
static void run_task_locked(batch *b, size_t i)
{
    pthread_mutex_unlock(&pool.lock);
    b->fn(b->arg, i);
    pthread_mutex_lock(&pool.lock);
    if (++b->done == b->n) {
        pthread_cond_signal(&b->done_cv);
    }
}

static void *worker_main(void *opaque)
{
    (void)opaque;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        batch *b;
        size_t i;
        if (claim_locked(&b, &i)) {
            run_task_locked(b, i);
        } else {
            pthread_cond_wait(&pool.work_cv, &pool.lock);
        }
    }
    return NULL;
}

static void pool_start(void)
{
    unsigned want = wanted_workers();
    pthread_attr_t attr;
    if (want == 0 || pthread_attr_init(&attr) != 0) {
        return;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    unsigned started = 0;
    for (unsigned k = 0; k < want; k++) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker_main, NULL) != 0) {
            break; /* run with what we have; the callers make progress regardless */
        }
        started++;
    }
    pthread_attr_destroy(&attr);
    pthread_mutex_lock(&pool.lock);
    pool.workers = started;
    pthread_mutex_unlock(&pool.lock);
}

unsigned vd_pool_threads(void)
{
    pthread_once(&pool.once, pool_start);
    pthread_mutex_lock(&pool.lock);
    unsigned n = pool.workers + 1;
    pthread_mutex_unlock(&pool.lock);
    return n;
}

void vd_pool_run(size_t n, void (*fn)(void *arg, size_t i), void *arg)
{
    if (n == 0) {
        return;
    }
    pthread_once(&pool.once, pool_start);
    pthread_mutex_lock(&pool.lock);
    unsigned workers = pool.workers;
    pthread_mutex_unlock(&pool.lock);
    /* When as many callers as there are workers already run batches (e.g. convert's
     * reader threads each decompressing their own request), the cores are busy: handing
     * tasks over would only add locking and wake-ups, so the caller runs its batch. */
    unsigned busy = __atomic_add_fetch(&active_callers, 1, __ATOMIC_RELAXED);
    if (n == 1 || workers == 0 || busy > workers) {
        for (size_t i = 0; i < n; i++) {
            fn(arg, i);
        }
        __atomic_sub_fetch(&active_callers, 1, __ATOMIC_RELAXED);
        return;
    }

    batch b = {.fn = fn, .arg = arg, .n = n};
    pthread_cond_init(&b.done_cv, NULL);
    pthread_mutex_lock(&pool.lock);
    if (pool.tail) {
        pool.tail->q_next = &b;
    } else {
        pool.head = &b;
    }
    pool.tail = &b;
    /* Wake no more workers than there are tasks for them (the caller takes one). */
    if (n - 1 >= workers) {
        pthread_cond_broadcast(&pool.work_cv);
    } else {
        for (size_t k = 0; k < n - 1; k++) {
            pthread_cond_signal(&pool.work_cv);
        }
    }
    /* The caller works on its own batch only: it must return as soon as that is done, not
     * get stuck in another caller's long task. */
    while (b.next < b.n) {
        size_t i = b.next++;
        if (b.next == b.n) {
            /* The last index: unlink b, wherever it sits in the FIFO. */
            batch **pp = &pool.head, *prev = NULL;
            while (*pp != &b) {
                prev = *pp;
                pp = &(*pp)->q_next;
            }
            *pp = b.q_next;
            if (pool.tail == &b) {
                pool.tail = prev;
            }
        }
        run_task_locked(&b, i);
    }
    while (b.done < b.n) {
        pthread_cond_wait(&b.done_cv, &pool.lock);
    }
    pthread_mutex_unlock(&pool.lock);
    pthread_cond_destroy(&b.done_cv);
    __atomic_sub_fetch(&active_callers, 1, __ATOMIC_RELAXED);
}
