/* qcow2 metadata cache: write-back caches of L2 tables and refcount blocks kept in slices,
 * with hash lookup and LRU eviction. Writing a dirty L2 slice first makes the refcounts it
 * depends on durable (DESIGN.md, "Crash consistency"). All calls hold the metadata lock. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/drivers/qcow2/qcow2.h"

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        abort();
    }
    return p;
}

qcow2_cache *qcow2_cache_new(const char *name, bool is_l2, uint32_t slice_size,
                             size_t max_bytes)
{
    qcow2_cache *c = xcalloc(1, sizeof(*c));
    c->name = name;
    c->is_l2 = is_l2;
    c->slice_size = slice_size;
    c->max_slices = max_bytes / slice_size;
    if (c->max_slices < 32) {
        c->max_slices = 32;
    }
    /* The table starts small and grows with the slices (hash_insert): most opens touch a
     * few slices, and a table sized for the capacity (16384 buckets for 512 B clusters)
     * would cost every open 128 KiB to allocate and clear. */
    c->nb_buckets = 64;
    c->buckets = xcalloc(c->nb_buckets, sizeof(*c->buckets));
    return c;
}

static size_t bucket_of(const qcow2_cache *c, uint64_t offset)
{
    uint64_t key = offset / c->slice_size;
    key *= 0x9e3779b97f4a7c15ull;
    return (size_t)(key >> 32) & (c->nb_buckets - 1);
}

static qcow2_slice *lookup(qcow2_cache *c, uint64_t offset)
{
    for (qcow2_slice *sl = c->buckets[bucket_of(c, offset)]; sl; sl = sl->hash_next) {
        if (sl->offset == offset) {
            return sl;
        }
    }
    return NULL;
}

static void hash_remove(qcow2_cache *c, qcow2_slice *sl)
{
    qcow2_slice **pp = &c->buckets[bucket_of(c, sl->offset)];
    while (*pp && *pp != sl) {
        pp = &(*pp)->hash_next;
    }
    if (*pp) {
        *pp = sl->hash_next;
    }
    sl->hash_next = NULL;
}

/* Doubles the table once it holds two slices per bucket, up to a quarter of the capacity
 * in buckets: chains stay short without paying up front. */
static void hash_grow(qcow2_cache *c)
{
    size_t old_n = c->nb_buckets;
    qcow2_slice **old = c->buckets;
    c->nb_buckets = old_n * 2;
    c->buckets = xcalloc(c->nb_buckets, sizeof(*c->buckets));
    for (size_t i = 0; i < old_n; i++) {
        for (qcow2_slice *sl = old[i], *next; sl; sl = next) {
            next = sl->hash_next;
            size_t b = bucket_of(c, sl->offset);
            sl->hash_next = c->buckets[b];
            c->buckets[b] = sl;
        }
    }
    free(old);
}

static void hash_insert(qcow2_cache *c, qcow2_slice *sl)
{
    if (c->nb_slices > 2 * c->nb_buckets && c->nb_buckets < c->max_slices / 4) {
        hash_grow(c);
    }
    size_t b = bucket_of(c, sl->offset);
    sl->hash_next = c->buckets[b];
    c->buckets[b] = sl;
}

static void lru_unlink(qcow2_cache *c, qcow2_slice *sl)
{
    if (sl->lru_prev) {
        sl->lru_prev->lru_next = sl->lru_next;
    } else {
        c->lru_head = sl->lru_next;
    }
    if (sl->lru_next) {
        sl->lru_next->lru_prev = sl->lru_prev;
    } else {
        c->lru_tail = sl->lru_prev;
    }
    sl->lru_prev = sl->lru_next = NULL;
}

static void lru_push_head(qcow2_cache *c, qcow2_slice *sl)
{
    sl->lru_prev = NULL;
    sl->lru_next = c->lru_head;
    if (c->lru_head) {
        c->lru_head->lru_prev = sl;
    } else {
        c->lru_tail = sl;
    }
    c->lru_head = sl;
}

/* Makes every refcount update, and the data of every linked allocation (rb_unsynced),
 * durable before an L2 slice that may reference them is written. With lazy refcounts the
 * dirty bit covers stale refcounts, but data must still come first. */
static int l2_dependency(qcow2_state *s)
{
    if (s->break_ordering) {
        return 0;
    }
    if (!s->dirty_on_disk && s->rb_cache->nb_dirty) {
        int ret = qcow2_cache_writeback(s, s->rb_cache);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->rb_unsynced) {
        return qcow2_sync(s);
    }
    return 0;
}

static int slice_write(qcow2_state *s, qcow2_cache *c, qcow2_slice *sl)
{
    int ret;

    if (c->is_l2) {
        ret = l2_dependency(s);
        if (ret < 0) {
            return ret;
        }
    }
    vd_node_event(s->file, c->is_l2 ? "l2_update" : "refblock_update");
    ret = vd_node_pwrite(s->file, sl->data, c->slice_size, sl->offset, 0);
    if (ret < 0) {
        vd_node_set_error(s->node, "%s: could not write %s table slice at 0x%llx: %s", s->name,
                        c->name, (unsigned long long)sl->offset, strerror(-ret));
        return ret;
    }
    if (!c->is_l2) {
        s->rb_unsynced = true;
    }
    sl->dirty = false;
    c->nb_dirty--;
    return 0;
}

static void slice_destroy(qcow2_cache *c, qcow2_slice *sl)
{
    if (sl->dirty) {
        c->nb_dirty--;
    }
    free(sl->data);
    free(sl);
    c->nb_slices--;
}

/* A free slice structure: a new one while under the bound, else the least recently used
 * unpinned one, written back first if dirty. */
static int obtain_slice(qcow2_state *s, qcow2_cache *c, qcow2_slice **out)
{
    if (c->nb_slices < c->max_slices) {
        qcow2_slice *sl = xcalloc(1, sizeof(*sl));
        if (posix_memalign((void **)&sl->data, 4096, c->slice_size) != 0) {
            abort();
        }
        c->nb_slices++;
        *out = sl;
        return 0;
    }
    qcow2_slice *victim = c->lru_tail;
    while (victim && victim->pins) {
        victim = victim->lru_prev;
    }
    if (!victim) {
        vd_node_set_error(s->node, "%s: every %s cache slice is in use", s->name, c->name);
        return -ENOMEM;
    }
    if (victim->dirty) {
        /* Pin it: writing an L2 slice may flush the refcount cache, and nothing else
         * should pick it meanwhile. */
        victim->pins++;
        int ret = slice_write(s, c, victim);
        victim->pins--;
        if (ret < 0) {
            return ret;
        }
    }
    lru_unlink(c, victim);
    hash_remove(c, victim);
    victim->offset = UINT64_MAX;
    *out = victim;
    return 0;
}

static uint64_t coarse_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void qcow2_cache_set_clean_interval(qcow2_cache *c, uint64_t seconds)
{
    c->clean_interval_ns = seconds * 1000000000u;
    c->next_clean_ns = seconds ? coarse_now_ns() + c->clean_interval_ns : 0;
}

/* Frees the slices that stayed unused for a whole interval; the rest start a new one. */
static void clean_unused(qcow2_cache *c)
{
    qcow2_slice *sl = c->lru_tail;
    while (sl) {
        qcow2_slice *prev = sl->lru_prev;
        if (!sl->used && !sl->pins && !sl->dirty) {
            lru_unlink(c, sl);
            hash_remove(c, sl);
            slice_destroy(c, sl);
        } else {
            sl->used = false;
        }
        sl = prev;
    }
}

static int cache_get(qcow2_state *s, qcow2_cache *c, uint64_t offset, bool empty,
                     qcow2_slice **out)
{
    if (c->clean_interval_ns) {
        uint64_t now = coarse_now_ns();
        if (now >= c->next_clean_ns) {
            clean_unused(c);
            c->next_clean_ns = now + c->clean_interval_ns;
        }
    }
    qcow2_slice *sl = lookup(c, offset);
    if (sl) {
        sl->used = true;
        if (c->lru_head != sl) {
            lru_unlink(c, sl);
            lru_push_head(c, sl);
        }
        if (empty) {
            memset(sl->data, 0, c->slice_size);
            if (!sl->dirty) {
                sl->dirty = true;
                c->nb_dirty++;
            }
        }
        sl->pins++;
        *out = sl;
        return 0;
    }
    int ret = obtain_slice(s, c, &sl);
    if (ret < 0) {
        return ret;
    }
    if (empty) {
        memset(sl->data, 0, c->slice_size);
    } else {
        /* QEMU's event names, so blkdebug rules for them fire at the same reads. */
        vd_node_event(s->file, c->is_l2 ? "l2_load" : "refblock_load");
        ret = vd_node_pread(s->file, sl->data, c->slice_size, offset);
        if (ret < 0) {
            vd_node_set_error(s->node, "%s: could not read %s table slice at 0x%llx: %s", s->name,
                            c->name, (unsigned long long)offset, strerror(-ret));
            free(sl->data);
            free(sl);
            c->nb_slices--;
            return ret;
        }
    }
    sl->offset = offset;
    sl->pins = 1;
    sl->used = true;
    sl->dirty = empty;
    if (empty) {
        c->nb_dirty++;
    }
    hash_insert(c, sl);
    lru_push_head(c, sl);
    *out = sl;
    return 0;
}

int qcow2_cache_get(qcow2_state *s, qcow2_cache *c, uint64_t offset, qcow2_slice **out)
{
    return cache_get(s, c, offset, false, out);
}

int qcow2_cache_get_empty(qcow2_state *s, qcow2_cache *c, uint64_t offset, qcow2_slice **out)
{
    return cache_get(s, c, offset, true, out);
}

void qcow2_cache_put(qcow2_cache *c, qcow2_slice *sl)
{
    (void)c;
    if (sl && sl->pins > 0) {
        sl->pins--;
    }
}

void qcow2_cache_mark_dirty(qcow2_cache *c, qcow2_slice *sl)
{
    if (!sl->dirty) {
        sl->dirty = true;
        c->nb_dirty++;
    }
}

static int cmp_slice_offset(const void *a, const void *b)
{
    const qcow2_slice *x = *(qcow2_slice *const *)a;
    const qcow2_slice *y = *(qcow2_slice *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int qcow2_cache_writeback(qcow2_state *s, qcow2_cache *c)
{
    if (c->nb_dirty == 0) {
        return 0;
    }
    if (c->is_l2) {
        int ret = l2_dependency(s);
        if (ret < 0) {
            return ret;
        }
    }
    /* In offset order, so a table written in one go reaches the disk sequentially. */
    size_t n = 0;
    qcow2_slice **list = xcalloc(c->nb_dirty, sizeof(*list));
    for (qcow2_slice *sl = c->lru_head; sl && n < c->nb_dirty; sl = sl->lru_next) {
        if (sl->dirty) {
            list[n++] = sl;
        }
    }
    qsort(list, n, sizeof(*list), cmp_slice_offset);
    int ret = 0;
    for (size_t i = 0; i < n && ret == 0; i++) {
        ret = slice_write(s, c, list[i]);
    }
    free(list);
    return ret;
}

void qcow2_cache_discard_range(qcow2_cache *c, uint64_t offset, uint64_t len)
{
    if (c->nb_slices == 0) {
        return;
    }
    uint64_t start = offset - offset % c->slice_size;
    for (uint64_t o = start; o < offset + len; o += c->slice_size) {
        qcow2_slice *sl = lookup(c, o);
        if (!sl) {
            continue;
        }
        if (sl->pins) {
            /* Still in use by the caller that freed it: just forget the contents. */
            if (sl->dirty) {
                sl->dirty = false;
                c->nb_dirty--;
            }
            continue;
        }
        hash_remove(c, sl);
        lru_unlink(c, sl);
        slice_destroy(c, sl);
    }
}

void qcow2_cache_drop_all(qcow2_cache *c)
{
    qcow2_slice *sl = c->lru_head;
    while (sl) {
        qcow2_slice *next = sl->lru_next;
        slice_destroy(c, sl);
        sl = next;
    }
    c->lru_head = c->lru_tail = NULL;
    memset(c->buckets, 0, c->nb_buckets * sizeof(*c->buckets));
    c->nb_dirty = 0;
}

void qcow2_cache_free(qcow2_cache *c)
{
    if (!c) {
        return;
    }
    qcow2_cache_drop_all(c);
    free(c->buckets);
    free(c);
}
