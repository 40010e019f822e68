/* The one place every request that changes a node's data passes: counted in flight (so a
 * drain can wait for it) and shown to the node's write notifiers before and after. The
 * common case, no notifier, costs two atomic operations. */
#include <pthread.h>

#include "block/block.h"

/* Writers of the list take drain_lock; readers walk it without one, so a new notifier is
 * complete before it is published at the head. */
void vd_node_add_write_notifier(vd_node *n, vd_write_notifier *nt)
{
    pthread_mutex_lock(&n->drain_lock);
    nt->next = n->notifiers;
    __atomic_store_n(&n->notifiers, nt, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&n->drain_lock);
}

void vd_node_remove_write_notifier(vd_node *n, vd_write_notifier *nt)
{
    pthread_mutex_lock(&n->drain_lock);
    for (vd_write_notifier **p = &n->notifiers; *p; p = &(*p)->next) {
        if (*p == nt) {
            __atomic_store_n(p, nt->next, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&n->drain_lock);
}

int vd_write_prepare(vd_node *n, const vd_write_req *req)
{
    __atomic_add_fetch(&n->in_flight, 1, __ATOMIC_ACQ_REL);
    vd_write_notifier *first = __atomic_load_n(&n->notifiers, __ATOMIC_ACQUIRE);
    for (vd_write_notifier *nt = first; nt; nt = nt->next) {
        int ret = nt->before ? nt->before(nt, n, req) : 0;
        if (ret < 0) {
            /* Refused before anything changed: the ones that saw `before` see it end. */
            for (vd_write_notifier *p = first; p != nt; p = p->next) {
                if (p->before && p->after) {
                    p->after(p, n, req, ret);
                }
            }
            vd_write_finish(n, NULL, 0);
            return ret;
        }
    }
    return 0;
}

int vd_write_finish(vd_node *n, const vd_write_req *req, int ret)
{
    for (vd_write_notifier *nt = req ? __atomic_load_n(&n->notifiers, __ATOMIC_ACQUIRE)
                                     : NULL;
         nt; nt = nt->next) {
        if (nt->after) {
            nt->after(nt, n, req, ret);
        }
    }
    /* The last request out wakes a drain that waits (it checks under the lock, so the
     * wake-up cannot fall between its check and its wait). */
    if (__atomic_sub_fetch(&n->in_flight, 1, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n(&n->drain_waiters, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&n->drain_lock);
        pthread_cond_broadcast(&n->drained);
        pthread_mutex_unlock(&n->drain_lock);
    }
    return ret;
}

int vd_write_flush_notify(vd_node *n)
{
    if (!__atomic_load_n(&n->notifiers, __ATOMIC_ACQUIRE)) {
        return 0;
    }
    __atomic_add_fetch(&n->in_flight, 1, __ATOMIC_ACQ_REL);
    int ret = 0;
    for (vd_write_notifier *nt = __atomic_load_n(&n->notifiers, __ATOMIC_ACQUIRE);
         nt && ret == 0; nt = nt->next) {
        ret = nt->flush ? nt->flush(nt, n) : 0;
    }
    vd_write_finish(n, NULL, 0);
    return ret;
}

void vd_node_drain_writes(vd_node *n)
{
    pthread_mutex_lock(&n->drain_lock);
    /* Sequentially consistent with the finisher's pair: one of the two sees the other. */
    __atomic_add_fetch(&n->drain_waiters, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&n->in_flight, __ATOMIC_SEQ_CST)) {
        pthread_cond_wait(&n->drained, &n->drain_lock);
    }
    __atomic_sub_fetch(&n->drain_waiters, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_unlock(&n->drain_lock);
}
