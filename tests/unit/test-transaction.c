/* Unit tests for the transaction engine: the exact prepare/commit/abort/clean order with
 * scripted failures (fake actions), irreversible actions last, error naming, the drain,
 * the public vd_transaction's checks, and — once the qcow2 driver has its snapshot ops —
 * all-or-nothing group snapshots of three images with fault injection on one member. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/block.h"
#include "block/disk.h"
#include "snapshot/transaction.h"
#include "vdisk/snapshot.h"

/* ---- fake actions ------------------------------------------------------------------- */

typedef struct call_log {
    char text[1024];
} call_log;

typedef struct fake {
    int id;
    call_log *log;
    int fail_prepare;   /* errno to fail with; 0 = succeed */
    int fail_commit;
    int fail_abort;
    bool no_message;    /* fail without setting *errp */
    bool prefixed;      /* the message already names the disk */
    int prepared;       /* prepares minus cleans: 0 at the end or a clean is missing */
} fake;

static void log_call(fake *f, char what)
{
    char buf[16];
    snprintf(buf, sizeof(buf), "%s%c%d", f->log->text[0] ? " " : "", what, f->id);
    strncat(f->log->text, buf, sizeof(f->log->text) - strlen(f->log->text) - 1);
}

static int fake_fail(fake *f, int err, const char *step, vd_error **errp)
{
    if (f->no_message) {
        return -err;
    }
    if (f->prefixed) {
        return vd_error_set(errp, VD_ERR_IO, err, "disk%d: %s failed", f->id, step);
    }
    return vd_error_set(errp, VD_ERR_IO, err, "%s failed: %s", step, strerror(err));
}

static int fake_prepare(vd_txn_action *a, vd_error **errp)
{
    fake *f = a->opaque;
    log_call(f, 'P');
    if (f->fail_prepare) {
        return fake_fail(f, f->fail_prepare, "prepare", errp);
    }
    f->prepared++;
    return 0;
}

static int fake_commit(vd_txn_action *a, vd_error **errp)
{
    fake *f = a->opaque;
    log_call(f, 'C');
    return f->fail_commit ? fake_fail(f, f->fail_commit, "commit", errp) : 0;
}

static int fake_abort(vd_txn_action *a, vd_error **errp)
{
    fake *f = a->opaque;
    log_call(f, 'A');
    return f->fail_abort ? fake_fail(f, f->fail_abort, "abort", errp) : 0;
}

static void fake_clean(vd_txn_action *a)
{
    fake *f = a->opaque;
    log_call(f, 'K');
    f->prepared--;
}

static const vd_txn_ops fake_ops = {
    .prepare = fake_prepare,
    .commit = fake_commit,
    .abort = fake_abort,
    .clean = fake_clean,
};

#define MAX_FAKES 8

typedef struct fake_set {
    call_log log;
    fake f[MAX_FAKES];
    vd_txn_action a[MAX_FAKES];
    char labels[MAX_FAKES][16];
    size_t n;
} fake_set;

static void fakes_init(fake_set *s, size_t n)
{
    memset(s, 0, sizeof(*s));
    s->n = n;
    for (size_t i = 0; i < n; i++) {
        s->f[i].id = (int)i;
        s->f[i].log = &s->log;
        snprintf(s->labels[i], sizeof(s->labels[i]), "disk%zu", i);
        s->a[i].ops = &fake_ops;
        s->a[i].label = s->labels[i];
        s->a[i].opaque = &s->f[i];
    }
}

static void assert_all_cleaned(const fake_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        assert_int_equal(s->f[i].prepared, 0);
    }
}

static void test_all_commit(void **state)
{
    (void)state;
    fake_set s;
    fakes_init(&s, 3);
    vd_error *err = NULL;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), 0);
    assert_null(err);
    assert_string_equal(s.log.text, "P0 P1 P2 C0 C1 C2 K0 K1 K2");
    assert_all_cleaned(&s);
}

static void test_empty(void **state)
{
    (void)state;
    vd_error *err = NULL;
    assert_int_equal(vd_txn_run(NULL, 0, &err), 0);
    assert_null(err);
}

static void test_prepare_fails(void **state)
{
    (void)state;
    fake_set s;
    fakes_init(&s, 4);
    s.f[2].fail_prepare = ENOSPC;
    vd_error *err = NULL;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -ENOSPC);
    /* The failed prepare cleaned up after itself: no abort, no clean for it; nothing
     * after it ran. */
    assert_string_equal(s.log.text, "P0 P1 P2 A1 A0 K0 K1");
    assert_non_null(err);
    assert_int_equal(err->errnum, ENOSPC);
    assert_string_equal(err->msg, "disk2: prepare failed: No space left on device");
    vd_error_free(err);
    assert_all_cleaned(&s);
}

static void test_first_prepare_fails(void **state)
{
    (void)state;
    fake_set s;
    fakes_init(&s, 3);
    s.f[0].fail_prepare = EACCES;
    vd_error *err = NULL;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -EACCES);
    assert_string_equal(s.log.text, "P0");
    assert_string_equal(err->msg, "disk0: prepare failed: Permission denied");
    vd_error_free(err);
}

static void test_commit_fails(void **state)
{
    (void)state;
    fake_set s;
    fakes_init(&s, 3);
    s.f[1].fail_commit = EIO;
    vd_error *err = NULL;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -EIO);
    /* Every prepared action aborts, the committed one too, in reverse order. */
    assert_string_equal(s.log.text, "P0 P1 P2 C0 C1 A2 A1 A0 K0 K1 K2");
    assert_int_equal(err->errnum, EIO);
    assert_string_equal(err->msg, "disk1: commit failed: Input/output error");
    vd_error_free(err);
    assert_all_cleaned(&s);
}

static void test_irreversible_last(void **state)
{
    (void)state;
    fake_set s;
    fakes_init(&s, 4);
    s.a[0].irreversible = true;
    s.a[2].irreversible = true;
    assert_int_equal(vd_txn_run(s.a, s.n, NULL), 0);
    assert_string_equal(s.log.text, "P1 P3 P0 P2 C1 C3 C0 C2 K1 K3 K0 K2");
    assert_all_cleaned(&s);
}

static void test_irreversible_prepare_fails(void **state)
{
    (void)state;
    fake_set s;
    fakes_init(&s, 3);
    s.a[0].irreversible = true;
    s.f[0].fail_prepare = EEXIST;
    vd_error *err = NULL;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -EEXIST);
    assert_string_equal(s.log.text, "P1 P2 P0 A2 A1 K1 K2");
    vd_error_free(err);
    assert_all_cleaned(&s);
}

static void test_irreversible_commit_fails(void **state)
{
    (void)state;
    fake_set s;
    fakes_init(&s, 4);
    s.a[0].irreversible = true;
    s.a[2].irreversible = true;
    s.f[2].fail_commit = EIO;
    vd_error *err = NULL;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -EIO);
    assert_string_equal(s.log.text, "P1 P3 P0 P2 C1 C3 C0 C2 A2 A0 A3 A1 K1 K3 K0 K2");
    vd_error_free(err);
    assert_all_cleaned(&s);
}

static void test_error_naming(void **state)
{
    (void)state;
    fake_set s;
    vd_error *err = NULL;

    /* No message: the errno's text, with the errno kept. */
    fakes_init(&s, 2);
    s.f[1].fail_prepare = EROFS;
    s.f[1].no_message = true;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -EROFS);
    assert_string_equal(err->msg, "disk1: Read-only file system");
    assert_int_equal(err->errnum, EROFS);
    vd_error_freep(&err);

    /* A message that names the disk already is not prefixed twice. */
    fakes_init(&s, 2);
    s.f[1].fail_commit = EIO;
    s.f[1].prefixed = true;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -EIO);
    assert_string_equal(err->msg, "disk1: commit failed");
    vd_error_freep(&err);

    /* A failed rollback is reported after the cause; the other actions still roll back. */
    fakes_init(&s, 3);
    s.f[2].fail_prepare = EIO;
    s.f[1].fail_abort = ENOSPC;
    assert_int_equal(vd_txn_run(s.a, s.n, &err), -EIO);
    assert_string_equal(s.log.text, "P0 P1 P2 A1 A0 K0 K1");
    assert_string_equal(err->msg, "disk2: prepare failed: Input/output error (undoing disk1 "
                                  "failed too: disk1: abort failed: No space left on device)");
    assert_int_equal(err->errnum, EIO);
    vd_error_freep(&err);
    assert_all_cleaned(&s);

    /* An error set already by the caller stays; errp NULL is fine. */
    fakes_init(&s, 1);
    s.f[0].fail_prepare = EIO;
    assert_int_equal(vd_txn_run(s.a, s.n, NULL), -EIO);
}

/* ---- scratch images ------------------------------------------------------------------- */

static char g_dir[64];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/vd-txn-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *path(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", g_dir, name) < 0) {
        abort();
    }
    return p;
}

static vd_disk *open_image(vd_engine *e, const char *file, unsigned flags)
{
    vd_disk *d = NULL;
    vd_error *err = NULL;
    vd_open_opts oo = {.format = NULL, .flags = flags};
    int ret = vd_open(e, file, &oo, &d, &err);
    if (ret < 0) {
        fail_msg("open %s: %s", file, vd_error_msg(err));
    }
    return d;
}

static void create_image(vd_engine *e, const char *file, const char *fmt, uint64_t size)
{
    vd_error *err = NULL;
    int ret = vd_create(e, file, fmt, size, NULL, 0, &err);
    if (ret < 0) {
        fail_msg("create %s: %s", file, vd_error_msg(err));
    }
}

/* ---- the drain ---------------------------------------------------------------------- */

typedef struct drain_probe {
    vd_disk *disk;
    int entered;        /* set by the I/O thread once it got in */
    int in_prepare;     /* the transaction's prepare ran */
    int entered_in_commit; /* what commit saw of `entered` (cmocka asserts in main only) */
} drain_probe;

static void *io_thread(void *arg)
{
    drain_probe *p = arg;
    vd_disk_enter(p->disk);
    __atomic_store_n(&p->entered, 1, __ATOMIC_SEQ_CST);
    vd_disk_leave(p->disk);
    return NULL;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
    nanosleep(&ts, NULL);
}

static pthread_t g_io;

static int drain_prepare(vd_txn_action *a, vd_error **errp)
{
    (void)errp;
    drain_probe *p = a->opaque;
    p->in_prepare = 1;
    /* I/O that starts now must wait until the transaction ends. */
    pthread_create(&g_io, NULL, io_thread, p);
    sleep_ms(100);
    return 0;
}

static int drain_commit(vd_txn_action *a, vd_error **errp)
{
    (void)errp;
    drain_probe *p = a->opaque;
    sleep_ms(50);
    p->entered_in_commit = __atomic_load_n(&p->entered, __ATOMIC_SEQ_CST);
    return 0;
}

static const vd_txn_ops drain_ops = {.prepare = drain_prepare, .commit = drain_commit};

typedef struct txn_thread_arg {
    vd_txn_action *acts;
    size_t n;
    int ret;
} txn_thread_arg;

static void *txn_thread(void *arg)
{
    txn_thread_arg *t = arg;
    t->ret = vd_txn_run(t->acts, t->n, NULL);
    return NULL;
}

static void test_drain(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    char *file = path("drain.raw");
    create_image(e, file, "raw", 1 << 20);
    vd_disk *d = open_image(e, file, VD_OPEN_RDWR);
    drain_probe p = {.disk = d, .entered_in_commit = -1};
    /* The same disk twice in the engine's list is drained once. */
    vd_txn_action acts[2] = {
        {.ops = &drain_ops, .disk = d, .opaque = &p},
        {.ops = &fake_ops, .disk = d, .label = "x", .opaque = NULL},
    };
    fake f = {.id = 1};
    call_log log = {{0}};
    f.log = &log;
    acts[1].opaque = &f;

    /* A transaction waits for I/O in flight before it prepares anything. */
    vd_disk_enter(d);
    txn_thread_arg t = {.acts = acts, .n = 2, .ret = 1};
    pthread_t th;
    pthread_create(&th, NULL, txn_thread, &t);
    sleep_ms(100);
    assert_int_equal(p.in_prepare, 0);
    vd_disk_leave(d);
    pthread_join(th, NULL);
    assert_int_equal(t.ret, 0);
    assert_int_equal(p.in_prepare, 1);
    assert_int_equal(p.entered_in_commit, 0);  /* held back for the whole transaction */
    assert_string_equal(log.text, "P1 C1 K1");
    /* The I/O that waited got in once the transaction ended. */
    pthread_join(g_io, NULL);
    assert_int_equal(p.entered, 1);

    assert_int_equal(vd_close(d), 0);
    vd_engine_free(e);
    free(file);
}

/* ---- the public API's checks ---------------------------------------------------------- */

static bool qcow2_has_snapshots(void)
{
    const vd_driver *drv = vd_driver_find("qcow2");
    return drv && drv->snapshot_create_prepare && drv->snapshot_delete_prepare &&
           drv->snapshot_commit && drv->snapshot_abort && drv->snapshot_list;
}

static void test_public_checks(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    char *q = path("checks.qcow2"), *r = path("checks.raw");
    create_image(e, q, "qcow2", 1 << 20);
    create_image(e, r, "raw", 1 << 20);
    vd_disk *dq = open_image(e, q, VD_OPEN_RDWR), *dr = open_image(e, r, VD_OPEN_RDWR);
    vd_disk *dq2 = open_image(e, q, 0);
    vd_error *err = NULL;

    /* The same image twice (even through two handles) is refused before anything runs. */
    vd_action two[2] = {
        {.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = dq, .name = "s"},
        {.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = dq2, .name = "t"},
    };
    assert_int_equal(vd_transaction(two, 2, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "checks.qcow2: the image is in more than one action"));
    vd_error_freep(&err);

    vd_action del = {.kind = VD_ACTION_SNAPSHOT_DELETE_INTERNAL, .disk = dq};
    assert_int_equal(vd_transaction(&del, 1, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "Name or id must be provided"));
    vd_error_freep(&err);

    vd_action nodisk = {.kind = VD_ACTION_SNAPSHOT_INTERNAL, .name = "s"};
    assert_int_equal(vd_transaction(&nodisk, 1, &err), -EINVAL);
    vd_error_freep(&err);

    vd_action novm = {.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = dq, .vm_state_size = 5};
    assert_int_equal(vd_transaction(&novm, 1, &err), -EINVAL);
    vd_error_freep(&err);

    /* raw has no internal snapshots: create, delete and apply say so and name the file;
     * the list is empty. */
    assert_int_equal(vd_snapshot_create(dr, "s", NULL, 0, false, &err), -ENOTSUP);
    assert_non_null(strstr(err->msg, "checks.raw: Block format 'raw' does not support "
                                     "internal snapshots"));
    vd_error_freep(&err);
    assert_int_equal(vd_snapshot_delete(dr, NULL, "s", &err), -ENOTSUP);
    vd_error_freep(&err);
    assert_int_equal(vd_snapshot_apply(dr, "s", &err), -ENOTSUP);
    assert_non_null(strstr(err->msg, "checks.raw: "));
    vd_error_freep(&err);
    char buf[16];
    assert_int_equal(vd_vmstate_read(dr, buf, sizeof(buf), 0, &err), -ENOTSUP);
    vd_error_freep(&err);
    vd_snapshot_info *list = (vd_snapshot_info *)1;
    size_t nb = 99;
    assert_int_equal(vd_snapshot_list(dr, &list, &nb, &err), 0);
    assert_null(list);
    assert_int_equal(nb, 0);

    /* A raw member stops a group with a qcow2 member before anything changes. */
    vd_action group[2] = {
        {.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = dq, .name = "g"},
        {.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = dr, .name = "g"},
    };
    assert_int_equal(vd_transaction(group, 2, &err), -ENOTSUP);
    assert_non_null(strstr(err->msg, qcow2_has_snapshots() ? "checks.raw: Block format 'raw'"
                                                           : "checks.qcow2: "));
    vd_error_freep(&err);
    assert_int_equal(vd_snapshot_list(dq, &list, &nb, &err), 0);
    assert_int_equal(nb, 0);
    vd_snapshot_list_free(list, nb);

    vd_close(dq2);
    vd_close(dq);
    vd_close(dr);
    vd_engine_free(e);
    free(q);
    free(r);
}

/* ---- the internal snapshot actions over a fake format driver ---------------------------- */

/* Per-node script and record: what the driver was asked, in order. */
typedef struct fake_node {
    call_log *log;
    int id;
    int fail_prepare, fail_commit;
    vd_snap_params seen;       /* the last create's parameters */
    char seen_name[64];
    char seen_delete[64];
    int txns;                  /* handles given out and not yet cleaned */
    char applied[64];
    uint8_t vmstate[64];
} fake_node;

static void fn_log(vd_node *n, const char *what)
{
    fake_node *f = n->opaque;
    char buf[32];
    snprintf(buf, sizeof(buf), "%s%s%d", f->log->text[0] ? " " : "", what, f->id);
    strncat(f->log->text, buf, sizeof(f->log->text) - strlen(f->log->text) - 1);
}

static int fn_create_prepare(vd_node *n, const vd_snap_params *p, void **txn, vd_error **errp)
{
    fake_node *f = n->opaque;
    fn_log(n, "P");
    f->seen = *p;
    snprintf(f->seen_name, sizeof(f->seen_name), "%s", p->name);
    f->seen.name = f->seen_name;
    if (f->fail_prepare) {
        return vd_error_set(errp, VD_ERR_INVALID, f->fail_prepare, "Snapshot with name '%s' "
                            "already exists", p->name);
    }
    *txn = f;
    f->txns++;
    return 0;
}

static int fn_delete_prepare(vd_node *n, const char *id, const char *name, void **txn,
                             vd_error **errp)
{
    fake_node *f = n->opaque;
    fn_log(n, "D");
    snprintf(f->seen_delete, sizeof(f->seen_delete), "%s/%s", id ? id : "-",
             name ? name : "-");
    if (f->fail_prepare) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, f->fail_prepare, "%s: snapshot not "
                            "found", n->filename);
    }
    *txn = f;
    f->txns++;
    return 0;
}

static int fn_commit(vd_node *n, void *txn, vd_error **errp)
{
    fake_node *f = n->opaque;
    assert_ptr_equal(txn, f);
    fn_log(n, "C");
    return f->fail_commit ? vd_error_set(errp, VD_ERR_IO, f->fail_commit, "could not write "
                                         "the header: %s", strerror(f->fail_commit)) : 0;
}

static int fn_abort(vd_node *n, void *txn, vd_error **errp)
{
    (void)errp;
    assert_ptr_equal(txn, n->opaque);
    fn_log(n, "A");
    return 0;
}

static void fn_clean(vd_node *n, void *txn)
{
    fake_node *f = n->opaque;
    assert_ptr_equal(txn, f);
    fn_log(n, "K");
    f->txns--;
}

static int fn_apply(vd_node *n, const char *id_or_name, vd_error **errp)
{
    (void)errp;
    fake_node *f = n->opaque;
    snprintf(f->applied, sizeof(f->applied), "%s", id_or_name);
    return 0;
}

static int fn_list(vd_node *n, vd_snapshot_info **out, size_t *nb, vd_error **errp)
{
    (void)errp;
    (void)n;
    vd_snapshot_info *l = calloc(2, sizeof(*l));
    l[0].id = strdup("1");
    l[0].name = strdup("one");
    l[1].id = strdup("2");
    l[1].name = strdup("two");
    *out = l;
    *nb = 2;
    return 0;
}

static int fn_vmstate(vd_node *n, void *buf, uint64_t len, uint64_t pos, bool write,
                      vd_error **errp)
{
    fake_node *f = n->opaque;
    if (pos + len > sizeof(f->vmstate)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "beyond the VM state area");
    }
    if (write) {
        memcpy(f->vmstate + pos, buf, len);
    } else {
        memcpy(buf, f->vmstate + pos, len);
    }
    return 0;
}

static const vd_driver fake_format = {
    .name = "fakefmt",
    .is_format = true,
    .snapshot_list = fn_list,
    .snapshot_create_prepare = fn_create_prepare,
    .snapshot_delete_prepare = fn_delete_prepare,
    .snapshot_commit = fn_commit,
    .snapshot_abort = fn_abort,
    .snapshot_clean = fn_clean,
    .snapshot_apply = fn_apply,
    .vmstate_rw = fn_vmstate,
};

#define NB_FAKE_DISKS 3

typedef struct fake_disks {
    call_log log;
    fake_node f[NB_FAKE_DISKS];
    vd_node n[NB_FAKE_DISKS];
    char names[NB_FAKE_DISKS][16];
    vd_disk *d[NB_FAKE_DISKS];
} fake_disks;

static void fake_disks_init(fake_disks *s)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < NB_FAKE_DISKS; i++) {
        s->f[i].log = &s->log;
        s->f[i].id = i;
        snprintf(s->names[i], sizeof(s->names[i]), "f%d.img", i);
        s->n[i].drv = &fake_format;
        s->n[i].opaque = &s->f[i];
        s->n[i].filename = s->names[i];
        s->n[i].open_flags = VD_OPEN_RDWR;
        s->n[i].size = 1 << 20;
        s->d[i] = vd_disk_new(NULL, &s->n[i], false);
    }
}

static void fake_disks_free(fake_disks *s)
{
    for (int i = 0; i < NB_FAKE_DISKS; i++) {
        assert_int_equal(s->f[i].txns, 0);  /* every handle cleaned */
        vd_disk_free(s->d[i]);
    }
}

static void group_create(fake_disks *s, vd_action *acts, const char *name)
{
    for (int i = 0; i < NB_FAKE_DISKS; i++) {
        acts[i] = (vd_action){.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = s->d[i],
                              .name = name};
    }
}

static void test_internal_actions(void **state)
{
    (void)state;
    fake_disks s;
    vd_action acts[NB_FAKE_DISKS];
    vd_error *err = NULL;

    /* No name: one vm-YYYYMMDDHHMMSS name and one timestamp for the whole group, in
     * microseconds as qemu-img stores it, vm clock 0. */
    fake_disks_init(&s);
    group_create(&s, acts, NULL);
    struct timespec t0, t1;
    clock_gettime(CLOCK_REALTIME, &t0);
    assert_int_equal(vd_transaction(acts, NB_FAKE_DISKS, &err), 0);
    clock_gettime(CLOCK_REALTIME, &t1);
    assert_string_equal(s.log.text, "P0 P1 P2 C0 C1 C2 K0 K1 K2");
    const vd_snap_params *p0 = &s.f[0].seen;
    assert_true(p0->date_sec >= (uint32_t)t0.tv_sec && p0->date_sec <= (uint32_t)t1.tv_sec);
    assert_int_equal(p0->date_nsec % 1000, 0);
    assert_int_equal(p0->vm_clock_nsec, 0);
    assert_false(p0->replace);
    struct tm tm;
    time_t t = p0->date_sec;
    char want[32];
    localtime_r(&t, &tm);
    strftime(want, sizeof(want), "vm-%Y%m%d%H%M%S", &tm);
    for (int i = 0; i < NB_FAKE_DISKS; i++) {
        assert_string_equal(s.f[i].seen.name, want);
        assert_int_equal(s.f[i].seen.date_sec, p0->date_sec);
        assert_int_equal(s.f[i].seen.date_nsec, p0->date_nsec);
    }
    fake_disks_free(&s);

    /* A replace cannot be undone: that member prepares and commits last. A commit failure
     * then rolls back every member, in reverse order, and the error names the disk. */
    fake_disks_init(&s);
    group_create(&s, acts, "snap");
    acts[0].replace = true;
    acts[0].vm_state = "state";
    acts[0].vm_state_size = 5;
    s.f[2].fail_commit = EIO;
    assert_int_equal(vd_transaction(acts, NB_FAKE_DISKS, &err), -EIO);
    assert_string_equal(s.log.text, "P1 P2 P0 C1 C2 A0 A2 A1 K1 K2 K0");
    assert_string_equal(err->msg, "f2.img: could not write the header: Input/output error");
    vd_error_freep(&err);
    assert_true(s.f[0].seen.replace);
    assert_int_equal(s.f[0].seen.vm_state_size, 5);
    assert_string_equal(s.f[1].seen.name, "snap");
    fake_disks_free(&s);

    /* A name clash on one member stops everything in prepare. */
    fake_disks_init(&s);
    group_create(&s, acts, "snap");
    s.f[1].fail_prepare = EEXIST;
    assert_int_equal(vd_transaction(acts, NB_FAKE_DISKS, &err), -EEXIST);
    assert_string_equal(s.log.text, "P0 P1 A0 K0");
    assert_string_equal(err->msg, "f1.img: Snapshot with name 'snap' already exists");
    vd_error_freep(&err);
    fake_disks_free(&s);

    /* A read-only member is refused before its driver is asked. */
    fake_disks_init(&s);
    group_create(&s, acts, "snap");
    s.n[2].open_flags = 0;
    assert_int_equal(vd_transaction(acts, NB_FAKE_DISKS, &err), -EACCES);
    assert_string_equal(s.log.text, "P0 P1 A1 A0 K0 K1");
    assert_non_null(strstr(err->msg, "f2.img: "));
    assert_non_null(strstr(err->msg, "read-only"));
    vd_error_freep(&err);
    fake_disks_free(&s);

    /* Delete passes id and name through; the driver's own "FILE: " is not doubled. */
    fake_disks_init(&s);
    for (int i = 0; i < NB_FAKE_DISKS; i++) {
        acts[i] = (vd_action){.kind = VD_ACTION_SNAPSHOT_DELETE_INTERNAL, .disk = s.d[i],
                              .id = i == 1 ? "7" : NULL, .name = i == 1 ? NULL : "snap"};
    }
    assert_int_equal(vd_transaction(acts, NB_FAKE_DISKS, &err), 0);
    assert_string_equal(s.log.text, "D0 D1 D2 C0 C1 C2 K0 K1 K2");
    assert_string_equal(s.f[0].seen_delete, "-/snap");
    assert_string_equal(s.f[1].seen_delete, "7/-");
    s.log.text[0] = '\0';
    s.f[2].fail_prepare = ENOENT;
    assert_int_equal(vd_transaction(acts, NB_FAKE_DISKS, &err), -ENOENT);
    assert_string_equal(s.log.text, "D0 D1 D2 A1 A0 K0 K1");
    assert_string_equal(err->msg, "f2.img: snapshot not found");
    vd_error_freep(&err);
    fake_disks_free(&s);

    /* Apply, list and VM state go straight to the driver. */
    fake_disks_init(&s);
    assert_int_equal(vd_snapshot_apply(s.d[0], "two", &err), 0);
    assert_string_equal(s.f[0].applied, "two");
    vd_snapshot_info *list = NULL;
    size_t nb = 0;
    assert_int_equal(vd_snapshot_list(s.d[0], &list, &nb, &err), 0);
    assert_int_equal(nb, 2);
    assert_string_equal(list[1].name, "two");
    vd_snapshot_list_free(list, nb);
    char buf[8] = {0};
    assert_int_equal(vd_vmstate_write(s.d[1], "abcdef", 6, 10, &err), 0);
    assert_int_equal(vd_vmstate_read(s.d[1], buf, 6, 10, &err), 0);
    assert_string_equal(buf, "abcdef");
    assert_int_equal(vd_vmstate_read(s.d[1], buf, 8, 60, &err), -EINVAL);
    assert_string_equal(err->msg, "f1.img: beyond the VM state area");
    vd_error_freep(&err);
    s.n[1].open_flags = 0;
    assert_int_equal(vd_vmstate_write(s.d[1], "x", 1, 0, &err), -EACCES);
    vd_error_freep(&err);
    assert_int_equal(vd_snapshot_apply(s.d[1], "one", &err), -EACCES);
    assert_string_equal(s.f[1].applied, "");
    vd_error_freep(&err);
    fake_disks_free(&s);
}

/* ---- group snapshots with fault injection (needs the qcow2 snapshot ops) ------------- */

#define IMG_SIZE (4u << 20)
#define NB_MEMBERS 3
static const char *const member_names[NB_MEMBERS] = {"a.qcow2", "b.qcow2", "c.qcow2"};

static void copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(in >= 0 && out >= 0);
    char buf[65536];
    ssize_t r;
    while ((r = read(in, buf, sizeof(buf))) > 0) {
        assert_int_equal(write(out, buf, (size_t)r), r);
    }
    assert_int_equal(r, 0);
    close(in);
    assert_int_equal(close(out), 0);
}

static void write_pattern(vd_disk *d, uint64_t off, uint64_t len, int byte)
{
    void *buf = malloc(len);
    memset(buf, byte, len);
    assert_int_equal(vd_pwrite(d, buf, len, off, 0), 0);
    free(buf);
}

/* What an image is, for "unchanged": its guest data and its snapshot table. */
typedef struct image_state {
    uint8_t *data;
    char names[512];
} image_state;

static void snapshot_names(vd_disk *d, char *out, size_t len)
{
    vd_snapshot_info *list = NULL;
    size_t nb = 0;
    vd_error *err = NULL;
    if (vd_snapshot_list(d, &list, &nb, &err) < 0) {
        fail_msg("list: %s", vd_error_msg(err));
    }
    out[0] = '\0';
    for (size_t i = 0; i < nb; i++) {
        char item[300];
        snprintf(item, sizeof(item), "%s%s=%s", i ? " " : "", list[i].id, list[i].name);
        strncat(out, item, len - strlen(out) - 1);
    }
    vd_snapshot_list_free(list, nb);
}

static void image_state_read(vd_engine *e, const char *file, image_state *st)
{
    /* Checked first: no corruption and no leak, as qemu-img check wants. */
    vd_disk *c = open_image(e, file, VD_OPEN_CHECK | VD_OPEN_NO_REPAIR);
    vd_check_result res;
    vd_error *err = NULL;
    assert_int_equal(vd_check(c, 0, &res, &err), 0);
    if (res.corruptions || res.leaks || res.check_errors) {
        fail_msg("%s: check found %lld corruptions, %lld leaks, %lld errors:\n%s", file,
                 (long long)res.corruptions, (long long)res.leaks,
                 (long long)res.check_errors, res.log ? res.log : "");
    }
    vd_check_result_clear(&res);
    vd_close(c);

    vd_disk *d = open_image(e, file, 0);
    st->data = malloc(IMG_SIZE);
    assert_int_equal(vd_pread(d, st->data, IMG_SIZE, 0), 0);
    snapshot_names(d, st->names, sizeof(st->names));
    vd_close(d);
}

static void assert_same_state(const char *file, const image_state *want, const image_state *got)
{
    if (strcmp(want->names, got->names) != 0) {
        fail_msg("%s: snapshots '%s', expected '%s'", file, got->names, want->names);
    }
    if (memcmp(want->data, got->data, IMG_SIZE) != 0) {
        fail_msg("%s: guest data changed", file);
    }
}

typedef struct group {
    vd_engine *e;
    char *orig[NB_MEMBERS];   /* the members as they start each round */
    char *work[NB_MEMBERS];   /* the copies a round works on */
    image_state want[NB_MEMBERS];
} group;

static void group_init(group *g, const char *tag, bool with_g1)
{
    memset(g, 0, sizeof(*g));
    g->e = vd_engine_new();
    for (int m = 0; m < NB_MEMBERS; m++) {
        char name[64];
        snprintf(name, sizeof(name), "%s-orig-%s", tag, member_names[m]);
        g->orig[m] = path(name);
        g->work[m] = path(member_names[m]);
        create_image(g->e, g->orig[m], "qcow2", IMG_SIZE);
        vd_disk *d = open_image(g->e, g->orig[m], VD_OPEN_RDWR);
        write_pattern(d, 0, 256 << 10, 0x11 + m);
        write_pattern(d, (uint64_t)(m + 1) << 20, 192 << 10, 0x21 + m);
        vd_error *err = NULL;
        if (vd_snapshot_create(d, "pre", NULL, 0, false, &err) < 0) {
            fail_msg("snapshot pre: %s", vd_error_msg(err));
        }
        write_pattern(d, 64 << 10, 64 << 10, 0x31 + m);
        write_pattern(d, 3 << 20, 64 << 10, 0x41 + m);
        if (with_g1 && vd_snapshot_create(d, "g1", NULL, 0, false, &err) < 0) {
            fail_msg("snapshot g1: %s", vd_error_msg(err));
        }
        assert_int_equal(vd_close(d), 0);
        image_state_read(g->e, g->orig[m], &g->want[m]);
    }
}

static void group_free(group *g)
{
    for (int m = 0; m < NB_MEMBERS; m++) {
        unlink(g->orig[m]);
        unlink(g->work[m]);
        free(g->orig[m]);
        free(g->work[m]);
        free(g->want[m].data);
    }
    vd_engine_free(g->e);
}

/* One round: fresh copies, member `faulty` opened through blkdebug with `rule` (NULL: no
 * filter), the group operation run. Returns its result; *errp gets its error. */
static int group_round(group *g, int faulty, const char *rule, bool del, const char *name,
                       vd_error **errp)
{
    vd_disk *d[NB_MEMBERS];
    vd_action acts[NB_MEMBERS];
    for (int m = 0; m < NB_MEMBERS; m++) {
        copy_file(g->orig[m], g->work[m]);
    }
    for (int m = 0; m < NB_MEMBERS; m++) {
        char *spec = NULL;
        if (m == faulty && rule) {
            if (asprintf(&spec, "blkdebug:%s:%s", rule, g->work[m]) < 0) {
                abort();
            }
        }
        d[m] = open_image(g->e, spec ? spec : g->work[m], VD_OPEN_RDWR);
        free(spec);
        memset(&acts[m], 0, sizeof(acts[m]));
        acts[m].kind = del ? VD_ACTION_SNAPSHOT_DELETE_INTERNAL : VD_ACTION_SNAPSHOT_INTERNAL;
        acts[m].disk = d[m];
        acts[m].name = name;
    }
    int ret = vd_transaction(acts, NB_MEMBERS, errp);
    for (int m = 0; m < NB_MEMBERS; m++) {
        vd_close(d[m]);
    }
    return ret;
}

static void assert_group_unchanged(group *g, const char *what)
{
    for (int m = 0; m < NB_MEMBERS; m++) {
        image_state got;
        image_state_read(g->e, g->work[m], &got);
        if (strcmp(g->want[m].names, got.names) || memcmp(g->want[m].data, got.data,
                                                          IMG_SIZE)) {
            print_error("after %s:\n", what);
        }
        assert_same_state(g->work[m], &g->want[m], &got);
        free(got.data);
    }
}

/* Fails the Nth `op` of each member in turn, for N = 1, 2, ... until the group operation
 * no longer reaches an Nth one and succeeds; every failed round must leave all three
 * images as they were, with an error naming the faulty one and the cause. */
static void group_faults(bool del, const char *op)
{
    if (!qcow2_has_snapshots()) {
        skip();
    }
    group g;
    group_init(&g, del ? "del" : "create", del);
    for (int m = 0; m < NB_MEMBERS; m++) {
        int n;
        for (n = 1; n < 1000; n++) {
            char rule[64], what[128];
            snprintf(rule, sizeof(rule), "%s#%d=EIO", op, n);
            vd_error *err = NULL;
            int ret = group_round(&g, m, rule, del, del ? "g1" : "g2", &err);
            if (ret == 0) {
                break;
            }
            snprintf(what, sizeof(what), "%s with %s on %s", del ? "delete g1" : "create g2",
                     rule, member_names[m]);
            if (ret != -EIO || !strstr(err->msg, g.work[m]) ||
                !strstr(err->msg, strerror(EIO))) {
                fail_msg("%s: returned %d, message '%s'", what, ret, vd_error_msg(err));
            }
            vd_error_free(err);
            assert_group_unchanged(&g, what);
        }
        /* The operation did at least one such request on the member, and then succeeded:
         * every member has the change. */
        assert_true(n > 1 && n < 1000);
        for (int k = 0; k < NB_MEMBERS; k++) {
            image_state got;
            image_state_read(g.e, g.work[k], &got);
            assert_true(strcmp(got.names, g.want[k].names) != 0);
            assert_int_equal(memcmp(got.data, g.want[k].data, IMG_SIZE), 0);
            bool has_g = strstr(got.names, del ? "=g1" : "=g2") != NULL;
            assert_true(has_g != del);
            free(got.data);
        }
        print_message("%s: %s of %s fails at %d points, all rolled back\n",
                      del ? "delete" : "create", op, member_names[m], n - 1);
    }
    group_free(&g);
}

static void test_group_create_write_faults(void **state)
{
    (void)state;
    group_faults(false, "write");
}

static void test_group_create_flush_faults(void **state)
{
    (void)state;
    group_faults(false, "flush");
}

static void test_group_delete_write_faults(void **state)
{
    (void)state;
    group_faults(true, "write");
}

static void test_group_delete_flush_faults(void **state)
{
    (void)state;
    group_faults(true, "flush");
}

/* Checks that need no fault: a read-only member, a snapshot missing on one member and a
 * name clash on one member all stop the group in prepare, with nothing changed. */
static void test_group_prepare_checks(void **state)
{
    (void)state;
    if (!qcow2_has_snapshots()) {
        skip();
    }
    group g;
    group_init(&g, "checks", true);
    vd_error *err = NULL;
    vd_disk *d[NB_MEMBERS];
    vd_action acts[NB_MEMBERS];

    /* Read-only c. */
    for (int m = 0; m < NB_MEMBERS; m++) {
        copy_file(g.orig[m], g.work[m]);
        d[m] = open_image(g.e, g.work[m], m == 2 ? 0 : VD_OPEN_RDWR);
        acts[m] = (vd_action){.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = d[m], .name = "x"};
    }
    assert_int_equal(vd_transaction(acts, NB_MEMBERS, &err), -EACCES);
    assert_non_null(strstr(err->msg, g.work[2]));
    vd_error_freep(&err);
    for (int m = 0; m < NB_MEMBERS; m++) {
        vd_close(d[m]);
    }
    assert_group_unchanged(&g, "read-only member");

    /* Name clash on b: it has "pre" already; so do the others, so give b its own name. */
    vd_disk *b = open_image(g.e, g.work[1], VD_OPEN_RDWR);
    assert_int_equal(vd_snapshot_create(b, "clash", NULL, 0, false, &err), 0);
    vd_close(b);
    image_state b_state;
    image_state_read(g.e, g.work[1], &b_state);
    for (int m = 0; m < NB_MEMBERS; m++) {
        if (m != 1) {
            copy_file(g.orig[m], g.work[m]);
        }
        d[m] = open_image(g.e, g.work[m], VD_OPEN_RDWR);
        acts[m] = (vd_action){.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = d[m],
                              .name = "clash"};
    }
    int ret = vd_transaction(acts, NB_MEMBERS, &err);
    assert_true(ret < 0);
    assert_non_null(strstr(err->msg, g.work[1]));
    vd_error_freep(&err);

    /* Snapshot missing on b for delete: the others keep theirs. */
    for (int m = 0; m < NB_MEMBERS; m++) {
        acts[m] = (vd_action){.kind = VD_ACTION_SNAPSHOT_DELETE_INTERNAL, .disk = d[m],
                              .name = m == 1 ? "nosuch" : "g1"};
    }
    ret = vd_transaction(acts, NB_MEMBERS, &err);
    assert_true(ret < 0);
    assert_non_null(strstr(err->msg, g.work[1]));
    vd_error_freep(&err);
    for (int m = 0; m < NB_MEMBERS; m++) {
        vd_close(d[m]);
    }
    for (int m = 0; m < NB_MEMBERS; m++) {
        image_state got;
        image_state_read(g.e, g.work[m], &got);
        assert_same_state(g.work[m], m == 1 ? &b_state : &g.want[m], &got);
        free(got.data);
    }
    free(b_state.data);

    /* Replace: the clash goes away, each member ends with one "g1", made now. */
    for (int m = 0; m < NB_MEMBERS; m++) {
        copy_file(g.orig[m], g.work[m]);
        d[m] = open_image(g.e, g.work[m], VD_OPEN_RDWR);
        acts[m] = (vd_action){.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = d[m],
                              .name = "g1", .replace = true};
    }
    assert_int_equal(vd_transaction(acts, NB_MEMBERS, &err), 0);
    for (int m = 0; m < NB_MEMBERS; m++) {
        char names[512];
        snapshot_names(d[m], names, sizeof(names));
        const char *first = strstr(names, "=g1");
        assert_non_null(first);
        assert_null(strstr(first + 1, "=g1"));
        vd_close(d[m]);
    }
    group_free(&g);
}

/* A group without names: one vm-YYYYMMDDHHMMSS name and one timestamp for all. */
static void test_group_auto_name(void **state)
{
    (void)state;
    if (!qcow2_has_snapshots()) {
        skip();
    }
    group g;
    group_init(&g, "auto", false);
    vd_error *err = NULL;
    vd_disk *d[NB_MEMBERS];
    vd_action acts[NB_MEMBERS];
    time_t before = time(NULL);
    for (int m = 0; m < NB_MEMBERS; m++) {
        copy_file(g.orig[m], g.work[m]);
        d[m] = open_image(g.e, g.work[m], VD_OPEN_RDWR);
        acts[m] = (vd_action){.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = d[m]};
    }
    assert_int_equal(vd_transaction(acts, NB_MEMBERS, &err), 0);
    time_t after = time(NULL);
    vd_snapshot_info first;
    memset(&first, 0, sizeof(first));
    char first_name[64] = "";
    for (int m = 0; m < NB_MEMBERS; m++) {
        vd_snapshot_info *list = NULL;
        size_t nb = 0;
        assert_int_equal(vd_snapshot_list(d[m], &list, &nb, &err), 0);
        assert_int_equal(nb, 2);
        vd_snapshot_info *s = &list[1];
        assert_int_equal(strlen(s->name), strlen("vm-YYYYMMDDHHMMSS"));
        assert_int_equal(strncmp(s->name, "vm-", 3), 0);
        assert_true(s->date_sec >= before && s->date_sec <= after);
        assert_int_equal(s->date_nsec % 1000, 0);
        assert_int_equal(s->vm_clock_nsec, 0);
        /* The name is the timestamp in local time. */
        struct tm tm;
        time_t t = s->date_sec;
        char want[32];
        localtime_r(&t, &tm);
        strftime(want, sizeof(want), "vm-%Y%m%d%H%M%S", &tm);
        assert_string_equal(s->name, want);
        if (m == 0) {
            first = *s;
            snprintf(first_name, sizeof(first_name), "%s", s->name);
        } else {
            assert_string_equal(s->name, first_name);
            assert_int_equal(s->date_sec, first.date_sec);
            assert_int_equal(s->date_nsec, first.date_nsec);
        }
        vd_snapshot_list_free(list, nb);
        vd_close(d[m]);
    }
    group_free(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_commit),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_prepare_fails),
        cmocka_unit_test(test_first_prepare_fails),
        cmocka_unit_test(test_commit_fails),
        cmocka_unit_test(test_irreversible_last),
        cmocka_unit_test(test_irreversible_prepare_fails),
        cmocka_unit_test(test_irreversible_commit_fails),
        cmocka_unit_test(test_error_naming),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_public_checks),
        cmocka_unit_test(test_internal_actions),
        cmocka_unit_test(test_group_prepare_checks),
        cmocka_unit_test(test_group_auto_name),
        cmocka_unit_test(test_group_create_write_faults),
        cmocka_unit_test(test_group_create_flush_faults),
        cmocka_unit_test(test_group_delete_write_faults),
        cmocka_unit_test(test_group_delete_flush_faults),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
