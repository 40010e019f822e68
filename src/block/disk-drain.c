/* Disk handles and their drain lock: I/O on a handle runs under the lock's shared side;
 * transactions and graph changes take the exclusive side of every handle they touch. */
#include <stdint.h>
#include <stdlib.h>

#include "block/disk.h"

vd_disk *vd_disk_new(vd_engine *e, vd_node *n, bool owns)
{
    vd_disk *d = calloc(1, sizeof(*d));
    if (!d) {
        abort();
    }
    d->engine = e;
    d->node = n;
    d->owns_node = owns;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&d->drain, &attr);
    pthread_rwlockattr_destroy(&attr);
    return d;
}

void vd_disk_free(vd_disk *d)
{
    if (d) {
        pthread_rwlock_destroy(&d->drain);
        free(d);
    }
}

/* The lock is state of the handle, not of the disk it describes: const callers such as
 * vd_disk_size() still take it. */
void vd_disk_enter(const vd_disk *d)
{
    pthread_rwlock_rdlock((pthread_rwlock_t *)&d->drain);
}

void vd_disk_leave(const vd_disk *d)
{
    pthread_rwlock_unlock((pthread_rwlock_t *)&d->drain);
}

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(vd_disk *const *)a;
    uintptr_t y = (uintptr_t)*(vd_disk *const *)b;
    return x < y ? -1 : x > y;
}

void vd_disks_drain_begin(vd_disk **disks, size_t n)
{
    qsort(disks, n, sizeof(*disks), by_address);
    for (size_t i = 0; i < n; i++) {
        if (disks[i] && (i == 0 || disks[i] != disks[i - 1])) {
            pthread_rwlock_wrlock(&disks[i]->drain);
        }
    }
}

void vd_disks_drain_end(vd_disk **disks, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        if (disks[i] && (i == 0 || disks[i] != disks[i - 1])) {
            pthread_rwlock_unlock(&disks[i]->drain);
        }
    }
}

vd_node *vd_disk_replace_node_locked(vd_disk *d, vd_node *n)
{
    vd_node *old = d->node;
    vd_graph_move_claims(d, old, n);
    /* Readers take the handle's lock shared, which orders this store before their loads;
     * the release store keeps the new node's setup visible all the same. */
    __atomic_store_n(&d->node, n, __ATOMIC_RELEASE);
    return old;
}

size_t vd_node_users_drain_begin(vd_node *n, const vd_disk *except, vd_disk **users,
                                 size_t max)
{
    vd_disk **again = calloc(max ? max : 1, sizeof(*again));
    if (!again) {
        abort();
    }
    for (;;) {
        bool parents;
        size_t nb = vd_graph_users(n, except, users, max, &parents);
        vd_disks_drain_begin(users, nb);
        /* A user that came or went before the drain took hold: again. */
        size_t nb2 = vd_graph_users(n, except, again, max, &parents);
        bool same = nb2 == nb;
        for (size_t i = 0; i < nb && same; i++) {
            bool found = false;
            for (size_t j = 0; j < nb2 && !found; j++) {
                found = again[j] == users[i];
            }
            same = found;
        }
        if (same) {
            free(again);
            return nb;
        }
        vd_disks_drain_end(users, nb);
    }
}
