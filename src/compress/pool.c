/* The batch runner behind pool.h. Batches wait in a FIFO; a thread (worker or caller) takes
 * the next unclaimed index of the oldest batch under the pool mutex, runs it unlocked, and
 * counts it done. A batch leaves the FIFO once its last index is claimed and its caller
 * returns once every index is done, so the batch (on the caller's stack) is never touched
 * after that. Workers start at the first batch and are joined when the pool is freed. */
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

struct vd_pool {
    pthread_mutex_t lock;
    pthread_cond_t work_cv; /* a batch was queued, or the pool stops */
    batch *head, *tail;     /* batches with unclaimed indices */
    unsigned wanted;        /* workers to start */
    unsigned workers;       /* started */
    pthread_t *tids;
    bool started, stopping;
    unsigned active_callers; /* threads inside vd_pool_run right now */
};

vd_pool *vd_pool_new(unsigned threads)
{
    vd_pool *p = calloc(1, sizeof(*p));
    if (!p) {
        abort();
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    if (threads >= 1 && threads <= MAX_THREADS) {
        p->wanted = threads - 1;
    } else {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p->wanted = n > 0 && n < MAX_THREADS ? (unsigned)n : 1;
    }
    return p;
}

/* Takes the next index of the oldest batch; lock held. False when nothing is queued. */
static bool claim_locked(vd_pool *p, batch **b, size_t *i)
{
    batch *h = p->head;
    if (!h) {
        return false;
    }
    *b = h;
    *i = h->next++;
    if (h->next == h->n) {
        p->head = h->q_next;
        if (!p->head) {
            p->tail = NULL;
        }
    }
    return true;
}

/* Runs task i of b unlocked and counts it; lock held on entry and on return. */
static void run_task_locked(vd_pool *p, batch *b, size_t i)
{
    pthread_mutex_unlock(&p->lock);
    b->fn(b->arg, i);
    pthread_mutex_lock(&p->lock);
    if (++b->done == b->n) {
        pthread_cond_signal(&b->done_cv);
    }
}

static void *worker_main(void *opaque)
{
    vd_pool *p = opaque;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        batch *b;
        size_t i;
        if (claim_locked(p, &b, &i)) {
            run_task_locked(p, b, i);
        } else if (p->stopping) {
            break;
        } else {
            pthread_cond_wait(&p->work_cv, &p->lock);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Starts the workers once, at the first batch (lock held). An engine that never compresses
 * starts no thread. */
static void start_locked(vd_pool *p)
{
    if (p->started) {
        return;
    }
    p->started = true;
    p->tids = calloc(p->wanted ? p->wanted : 1, sizeof(*p->tids));
    if (!p->tids) {
        abort();
    }
    for (unsigned k = 0; k < p->wanted; k++) {
        if (pthread_create(&p->tids[k], NULL, worker_main, p) != 0) {
            break; /* run with what we have; the callers make progress regardless */
        }
        p->workers++;
    }
}

void vd_pool_free(vd_pool *p)
{
    if (!p) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->lock);
    for (unsigned k = 0; k < p->workers; k++) {
        pthread_join(p->tids[k], NULL);
    }
    free(p->tids);
    pthread_cond_destroy(&p->work_cv);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

unsigned vd_pool_threads(vd_pool *p)
{
    if (!p) {
        return 1;
    }
    pthread_mutex_lock(&p->lock);
    start_locked(p);
    unsigned n = p->workers + 1;
    pthread_mutex_unlock(&p->lock);
    return n;
}

void vd_pool_run(vd_pool *p, size_t n, void (*fn)(void *arg, size_t i), void *arg)
{
    if (n == 0) {
        return;
    }
    unsigned workers = 0;
    if (p) {
        pthread_mutex_lock(&p->lock);
        start_locked(p);
        workers = p->workers;
        pthread_mutex_unlock(&p->lock);
    }
    /* When as many callers as there are workers already run batches (e.g. convert's
     * reader threads each decompressing their own request), the cores are busy: handing
     * tasks over would only add locking and wake-ups, so the caller runs its batch. */
    unsigned busy = p ? __atomic_add_fetch(&p->active_callers, 1, __ATOMIC_RELAXED) : 1;
    if (n == 1 || workers == 0 || busy > workers) {
        for (size_t i = 0; i < n; i++) {
            fn(arg, i);
        }
        if (p) {
            __atomic_sub_fetch(&p->active_callers, 1, __ATOMIC_RELAXED);
        }
        return;
    }

    batch b = {.fn = fn, .arg = arg, .n = n};
    pthread_cond_init(&b.done_cv, NULL);
    pthread_mutex_lock(&p->lock);
    if (p->tail) {
        p->tail->q_next = &b;
    } else {
        p->head = &b;
    }
    p->tail = &b;
    /* Wake no more workers than there are tasks for them (the caller takes one). */
    if (n - 1 >= workers) {
        pthread_cond_broadcast(&p->work_cv);
    } else {
        for (size_t k = 0; k < n - 1; k++) {
            pthread_cond_signal(&p->work_cv);
        }
    }
    /* The caller works on its own batch only: it must return as soon as that is done, not
     * get stuck in another caller's long task. */
    while (b.next < b.n) {
        size_t i = b.next++;
        if (b.next == b.n) {
            /* The last index: unlink b, wherever it sits in the FIFO. */
            batch **pp = &p->head, *prev = NULL;
            while (*pp != &b) {
                prev = *pp;
                pp = &(*pp)->q_next;
            }
            *pp = b.q_next;
            if (p->tail == &b) {
                p->tail = prev;
            }
        }
        run_task_locked(p, &b, i);
    }
    while (b.done < b.n) {
        pthread_cond_wait(&b.done_cv, &p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    pthread_cond_destroy(&b.done_cv);
    __atomic_sub_fetch(&p->active_callers, 1, __ATOMIC_RELAXED);
}
