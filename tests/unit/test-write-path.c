/* The one write path (src/block/write-path.c): a node's write notifiers see every write,
 * write-zeroes, discard, compressed write and resize exactly once, with the range the
 * caller asked for, although qcow2 splits requests by cluster and segment and an O_DIRECT
 * file makes unaligned writes read-modify-write; a notifier that refuses a write fails it
 * and nothing changes; a drain waits for the writes in flight. */
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

#include "block/disk.h"
#include "vdisk/vdisk.h"

#define MAXREC 64
#define CS 65536u

typedef struct recorder {
    vd_write_notifier nt;    /* first: the callbacks get this pointer */
    vd_write_req before[MAXREC], after[MAXREC];
    int nb_before, nb_after;
    int after_ret[MAXREC];
    /* Refuse writes that touch [deny_off, deny_off + deny_len) with -EPERM. */
    uint64_t deny_off, deny_len;
    /* Block `before` until released (the drain test). */
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool hold, held, released;
    int seq, after_seq;
} recorder;

static int rec_before(vd_write_notifier *nt, vd_node *n, const vd_write_req *r)
{
    (void)n;
    recorder *rc = (recorder *)nt;
    if (rc->deny_len && r->off < rc->deny_off + rc->deny_len &&
        rc->deny_off < r->off + r->len) {
        return -EPERM;
    }
    pthread_mutex_lock(&rc->lock);
    if (rc->nb_before < MAXREC) {
        rc->before[rc->nb_before++] = *r;
    }
    if (rc->hold) {
        rc->held = true;
        pthread_cond_broadcast(&rc->cv);
        while (!rc->released) {
            pthread_cond_wait(&rc->cv, &rc->lock);
        }
    }
    pthread_mutex_unlock(&rc->lock);
    return 0;
}

static void rec_after(vd_write_notifier *nt, vd_node *n, const vd_write_req *r, int ret)
{
    (void)n;
    recorder *rc = (recorder *)nt;
    pthread_mutex_lock(&rc->lock);
    if (rc->nb_after < MAXREC) {
        rc->after_ret[rc->nb_after] = ret;
        rc->after[rc->nb_after++] = *r;
    }
    rc->after_seq = ++rc->seq;
    pthread_mutex_unlock(&rc->lock);
}

static void rec_init(recorder *rc)
{
    memset(rc, 0, sizeof(*rc));
    rc->nt.before = rec_before;
    rc->nt.after = rec_after;
    pthread_mutex_init(&rc->lock, NULL);
    pthread_cond_init(&rc->cv, NULL);
}

typedef struct fixture {
    char dir[64], path[128];
    vd_engine *e;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/vdisk-wpath-XXXXXX");
    if (!f || !mkdtemp(f->dir)) {
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/w.qcow2", f->dir);
    f->e = vd_engine_new();
    vd_error *err = NULL;
    if (vd_create(f->e, f->path, "qcow2", 16u * CS, NULL, 0, &err) < 0) {
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    vd_engine_free(f->e);
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static vd_disk *open_disk(fixture *f, unsigned flags)
{
    vd_open_opts o = {.format = "qcow2", .flags = VD_OPEN_RDWR | VD_OPEN_UNMAP | flags};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_open(f->e, f->path, &o, &d, &err), 0);
    return d;
}

static void expect_req(const vd_write_req *r, vd_write_kind kind, uint64_t off, uint64_t len)
{
    assert_int_equal(r->kind, kind);
    assert_int_equal(r->off, off);
    assert_int_equal(r->len, len);
}

/* Each kind of request, shaped so the layers below split or align it, seen once each. */
static void test_every_request_once(void **state)
{
    fixture *f = *state;
    /* O_DIRECT: the file node takes 4 KiB-aligned requests only, so unaligned guest
     * writes become read-modify-write below qcow2. */
    vd_disk *d = open_disk(f, VD_OPEN_NOCACHE);
    recorder rc;
    rec_init(&rc);
    vd_node_add_write_notifier(d->node, &rc.nt);

    uint8_t *buf = calloc(1, 3 * CS);
    assert_non_null(buf);
    memset(buf, 0x5a, 3 * CS);
    /* Three clusters from the middle of one: qcow2 allocates in segments. */
    assert_int_equal(vd_pwrite(d, buf, 3 * CS, CS / 2, 0), 0);
    /* Unaligned bytes inside an allocated cluster. */
    assert_int_equal(vd_pwrite(d, buf, 1000, 100, 0), 0);
    /* Zeroes over whole and partial clusters, a discard, compressed clusters, a resize. */
    assert_int_equal(vd_pwrite_zeroes(d, 300, 2 * CS + 5, 0), 0);
    assert_int_equal(vd_pdiscard(d, 4 * CS, 2 * CS), 0);
    assert_int_equal(vd_pwrite_compressed(d, buf, 2 * CS, 8 * CS), 0);
    vd_error *err = NULL;
    assert_int_equal(vd_truncate(d, 20u * CS, false, "off", &err), 0);

    vd_write_kind kinds[] = {VD_WRITE, VD_WRITE, VD_WRITE_ZEROES, VD_WRITE_DISCARD,
                             VD_WRITE_COMPRESSED, VD_WRITE_TRUNCATE};
    uint64_t offs[] = {CS / 2, 100, 300, 4 * CS, 8 * CS, 16u * CS};
    uint64_t lens[] = {3 * CS, 1000, 2 * CS + 5, 2 * CS, 2 * CS, 4u * CS};
    assert_int_equal(rc.nb_before, 6);
    assert_int_equal(rc.nb_after, 6);
    for (int i = 0; i < 6; i++) {
        expect_req(&rc.before[i], kinds[i], offs[i], lens[i]);
        expect_req(&rc.after[i], kinds[i], offs[i], lens[i]);
        assert_int_equal(rc.after_ret[i], 0);
    }
    /* Reads are no writes. */
    assert_int_equal(vd_pread(d, buf, CS, 0), 0);
    assert_int_equal(rc.nb_before, 6);
    vd_node_remove_write_notifier(d->node, &rc.nt);
    assert_int_equal(vd_close(d), 0);
    free(buf);
}

/* O_DIRECT with buffers that are not aligned: aligned ranges are copied and written
 * without the read-modify-write lock, unaligned ones still read around; four threads do
 * both at once, and every byte reads back. */
typedef struct direct_arg {
    vd_disk *d;
    int id;
} direct_arg;

static void *direct_writer(void *p)
{
    direct_arg *a = p;
    uint8_t *mem = malloc(4096 + 1);
    if (!mem) {
        return (void *)1;
    }
    uint8_t *buf = mem + 1;   /* never aligned */
    for (int i = 0; i < 32; i++) {
        uint64_t blk = (uint64_t)(a->id * 32 + i);
        memset(buf, (int)(blk & 0xff) | 1, 4096);
        if (vd_pwrite(a->d, buf, 4096, blk * 4096, 0) < 0) {
            free(mem);
            return (void *)1;
        }
        /* Bytes 100..299 of the same block again, unaligned: read-modify-write. */
        memset(buf, 0xee, 200);
        if (vd_pwrite(a->d, buf, 200, blk * 4096 + 100, 0) < 0) {
            free(mem);
            return (void *)1;
        }
    }
    free(mem);
    return NULL;
}

static void test_direct_unaligned_buffers(void **state)
{
    fixture *f = *state;
    vd_disk *d = open_disk(f, VD_OPEN_NOCACHE);
    pthread_t t[4];
    direct_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (direct_arg){.d = d, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, direct_writer, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        void *ret = NULL;
        assert_int_equal(pthread_join(t[i], &ret), 0);
        assert_null(ret);
    }
    uint8_t got[4096], want[4096];
    for (uint64_t blk = 0; blk < 128; blk++) {
        memset(want, (int)(blk & 0xff) | 1, sizeof(want));
        memset(want + 100, 0xee, 200);
        assert_int_equal(vd_pread(d, got, sizeof(got), blk * 4096), 0);
        assert_memory_equal(got, want, sizeof(want));
    }
    assert_int_equal(vd_close(d), 0);
}

/* A refused write fails with the notifier's error and changes nothing. */
static void test_refusal_changes_nothing(void **state)
{
    fixture *f = *state;
    vd_disk *d = open_disk(f, 0);
    uint8_t old[4096], mine[4096], back[4096];
    memset(old, 0x11, sizeof(old));
    assert_int_equal(vd_pwrite(d, old, sizeof(old), 2 * CS, 0), 0);

    recorder rc;
    rec_init(&rc);
    rc.deny_off = 2 * CS + 100;
    rc.deny_len = 1;
    vd_node_add_write_notifier(d->node, &rc.nt);
    memset(mine, 0x22, sizeof(mine));
    assert_int_equal(vd_pwrite(d, mine, sizeof(mine), 2 * CS, 0), -EPERM);
    assert_int_equal(vd_pwrite_zeroes(d, 2 * CS, CS, 0), -EPERM);
    assert_int_equal(vd_pdiscard(d, 2 * CS, CS), -EPERM);
    /* Elsewhere writes go through. */
    assert_int_equal(vd_pwrite(d, mine, sizeof(mine), 3 * CS, 0), 0);
    assert_int_equal(rc.nb_after, 1);
    assert_int_equal(vd_pread(d, back, sizeof(back), 2 * CS), 0);
    assert_memory_equal(back, old, sizeof(old));
    vd_node_remove_write_notifier(d->node, &rc.nt);
    assert_int_equal(vd_close(d), 0);
}

typedef struct writer_arg {
    vd_disk *d;
    int ret;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *w = p;
    uint8_t buf[4096];
    memset(buf, 0x33, sizeof(buf));
    w->ret = vd_pwrite(w->d, buf, sizeof(buf), 5 * CS, 0);
    return NULL;
}

typedef struct drainer_arg {
    vd_node *n;
    recorder *rc;
    int seq;      /* the recorder's sequence when the drain returned */
} drainer_arg;

static void *drainer(void *p)
{
    drainer_arg *a = p;
    vd_node_drain_writes(a->n);
    pthread_mutex_lock(&a->rc->lock);
    a->seq = ++a->rc->seq;
    pthread_mutex_unlock(&a->rc->lock);
    return NULL;
}

/* A drain returns only after the write in flight (held in its `before`) is done. */
static void test_drain_waits(void **state)
{
    fixture *f = *state;
    vd_disk *d = open_disk(f, 0);
    recorder rc;
    rec_init(&rc);
    rc.hold = true;
    vd_node_add_write_notifier(d->node, &rc.nt);
    writer_arg w = {.d = d};
    pthread_t tw, td;
    assert_int_equal(pthread_create(&tw, NULL, writer, &w), 0);
    pthread_mutex_lock(&rc.lock);
    while (!rc.held) {
        pthread_cond_wait(&rc.cv, &rc.lock);
    }
    pthread_mutex_unlock(&rc.lock);
    drainer_arg da = {.n = d->node, .rc = &rc};
    assert_int_equal(pthread_create(&td, NULL, drainer, &da), 0);
    /* Give a drain that does not wait the time to return too early (not a timing
     * assertion: the order below is what is checked). */
    usleep(50000);
    pthread_mutex_lock(&rc.lock);
    rc.released = true;
    pthread_cond_broadcast(&rc.cv);
    pthread_mutex_unlock(&rc.lock);
    pthread_join(tw, NULL);
    pthread_join(td, NULL);
    assert_int_equal(w.ret, 0);
    assert_true(rc.after_seq > 0);
    assert_true(da.seq > rc.after_seq);
    vd_node_remove_write_notifier(d->node, &rc.nt);
    assert_int_equal(vd_close(d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_request_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_unaligned_buffers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_waits, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
