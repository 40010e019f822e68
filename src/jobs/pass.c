/* The one-pass copy loop of commit and stream (pass.h). The run loop owns the cursor and
 * queues chunks; workers copy them. A failed chunk goes back on a retry list (ignore, stop)
 * or fails the job (report); a pause waits for the chunks in flight first, so a paused job
 * does no I/O. */
#include <errno.h>
#include <stdlib.h>

#include "jobs/pass.h"
#include "util/iobuf.h"

#define MAX_WORKERS 16
#define RETRY_NS 10000000u

typedef struct pass_op {
    uint64_t off, len;
    struct pass_op *next;
} pass_op;

typedef struct pass_state {
    const job_pass *p;
    pthread_cond_t work;
    pass_op *queue, **tail;
    pass_op *retry;
    unsigned in_flight;
    bool stop;
    bool retry_later;
    int ret;
} pass_state;

static void push(pass_op **list, uint64_t off, uint64_t len)
{
    pass_op *op = calloc(1, sizeof(*op));
    if (!op) {
        abort();
    }
    op->off = off;
    op->len = len;
    op->next = *list;
    *list = op;
}

static void *worker(void *arg)
{
    pass_state *ps = arg;
    vd_job *job = ps->p->job;
    uint64_t buflen = ps->p->chunk;
    void *buf = vd_io_buffer_alloc(buflen);
    if (!buf) {
        abort();
    }
    pthread_mutex_lock(&job->lock);
    for (;;) {
        while (!ps->queue && !ps->stop) {
            pthread_cond_wait(&ps->work, &job->lock);
        }
        pass_op *op = ps->queue;
        if (!op) {
            break;
        }
        ps->queue = op->next;
        if (!ps->queue) {
            ps->tail = &ps->queue;
        }
        pthread_mutex_unlock(&job->lock);
        bool is_read = false;
        int r = ps->p->copy(ps->p->opaque, buf, buflen, op->off, op->len, &is_read);
        pthread_mutex_lock(&job->lock);
        ps->in_flight--;
        if (r < 0) {
            vd_job_action act = vd_job_error_action(job, ps->p->on_error, is_read, -r);
            if (act == VD_JOB_ACT_REPORT) {
                if (ps->ret == 0) {
                    ps->ret = r;
                }
                free(op);
            } else {
                ps->retry_later = act == VD_JOB_ACT_IGNORE;
                op->next = ps->retry;
                ps->retry = op;
            }
        } else {
            job->progress_current += op->len;
            free(op);
        }
        pthread_cond_broadcast(&job->cond);
    }
    pthread_mutex_unlock(&job->lock);
    free(buf);
    return NULL;
}

static void queue_op(pass_state *ps, pass_op *op)
{
    op->next = NULL;
    *ps->tail = op;
    ps->tail = &op->next;
    ps->in_flight++;
    vd_job_rate_charge(ps->p->job, op->len);
    pthread_cond_signal(&ps->work);
}

int job_pass_run(const job_pass *p_in)
{
    job_pass p = *p_in;
    if (!p.chunk) {
        p.chunk = 1u << 20;
    }
    if (!p.workers || p.workers > MAX_WORKERS) {
        p.workers = 8;
    }
    pass_state ps = {.p = &p};
    ps.tail = &ps.queue;
    pthread_cond_init(&ps.work, NULL);
    vd_job *job = p.job;
    pthread_t threads[MAX_WORKERS];
    unsigned nb = 0;
    for (; nb < p.workers; nb++) {
        if (pthread_create(&threads[nb], NULL, worker, &ps) != 0) {
            break;
        }
    }
    pthread_mutex_lock(&job->lock);
    job->progress_total = p.size;
    if (nb == 0) {
        ps.ret = -EAGAIN;
    }
    uint64_t cursor = 0, run_start = 0, run_len = 0;
    for (;;) {
        if (vd_job_is_cancelled(job) || ps.ret < 0) {
            break;
        }
        if (vd_job_pause_pending(job)) {
            if (ps.in_flight == 0) {
                vd_job_pause_point(job);
            } else {
                vd_job_wait(job, 0);
            }
            continue;
        }
        if (ps.retry_later) {
            ps.retry_later = false;
            vd_job_wait(job, RETRY_NS);
            continue;
        }
        if (ps.in_flight >= nb) {
            vd_job_wait(job, 0);
            continue;
        }
        uint64_t delay = vd_job_rate_delay(job);
        if (delay) {
            vd_job_sleep(job, delay);
            continue;
        }
        if (ps.retry) {
            pass_op *op = ps.retry;
            ps.retry = op->next;
            queue_op(&ps, op);
            continue;
        }
        if (run_len == 0) {
            if (cursor >= p.size) {
                if (ps.in_flight == 0 && !ps.retry) {
                    break;
                }
                vd_job_wait(job, 0);
                continue;
            }
            pthread_mutex_unlock(&job->lock);
            int r = p.next(p.opaque, cursor, p.size, &run_start, &run_len);
            pthread_mutex_lock(&job->lock);
            if (r < 0) {
                vd_job_action act = vd_job_error_action(job, p.on_error, true, -r);
                if (act == VD_JOB_ACT_REPORT) {
                    ps.ret = r;
                } else if (act == VD_JOB_ACT_IGNORE) {
                    ps.retry_later = true;
                }
                run_len = 0;
                continue;
            }
            if (r == 0) {
                run_start = p.size;
                run_len = 0;
            }
            /* What the pass skips is done too, as QEMU counts it. */
            job->progress_current += run_start - cursor;
            cursor = run_start;
            if (run_len == 0) {
                continue;
            }
        }
        /* Chunks end on chunk boundaries, so copies line up with clusters. */
        uint64_t n = p.chunk - run_start % p.chunk;
        if (n > run_len) {
            n = run_len;
        }
        pass_op *op = NULL;
        push(&op, run_start, n);
        queue_op(&ps, op);
        run_start += n;
        run_len -= n;
        cursor = run_start;
    }
    ps.stop = true;
    pthread_cond_broadcast(&ps.work);
    while (ps.in_flight > 0) {
        vd_job_wait(job, 0);
    }
    pthread_mutex_unlock(&job->lock);
    for (unsigned i = 0; i < nb; i++) {
        pthread_join(threads[i], NULL);
    }
    while (ps.queue || ps.retry) {
        pass_op **l = ps.queue ? &ps.queue : &ps.retry;
        pass_op *op = *l;
        *l = op->next;
        free(op);
    }
    pthread_cond_destroy(&ps.work);
    pthread_mutex_lock(&job->lock);
    int ret = vd_job_is_cancelled(job) ? -ECANCELED : ps.ret;
    pthread_mutex_unlock(&job->lock);
    return ret;
}
