/* Library tests for external snapshots: an overlay created under an open handle, which
 * keeps reading and writing through it; what the base and the overlay hold afterwards
 * (checked by vdisk and, where installed, by qemu-img and qemu-io); relative backing
 * names; refusals before anything changes; rollback when a commit fails in a group; and
 * I/O from another thread across the switch. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
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

#include "block/disk.h"
#include "vdisk/snapshot.h"

#define IMG_SIZE (4u << 20)

static char g_dir[64];
static char g_cwd[4096];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/vd-ext-XXXXXX");
    if (!mkdtemp(g_dir) || !getcwd(g_cwd, sizeof(g_cwd))) {
        return -1;
    }
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    return chdir(g_cwd) == 0 && system(cmd) == 0 ? 0 : -1;
}

static char *path(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", g_dir, name) < 0) {
        abort();
    }
    return p;
}

static bool exists(const char *file)
{
    struct stat st;
    return stat(file, &st) == 0;
}

static vd_disk *open_image(vd_engine *e, const char *file, unsigned flags)
{
    vd_disk *d = NULL;
    vd_error *err = NULL;
    vd_open_opts oo = {.format = NULL, .flags = flags};
    if (vd_open(e, file, &oo, &d, &err) < 0) {
        fail_msg("open %s: %s", file, vd_error_msg(err));
    }
    return d;
}

static void create_image(vd_engine *e, const char *file, const char *fmt, uint64_t size)
{
    vd_error *err = NULL;
    if (vd_create(e, file, fmt, size, NULL, 0, &err) < 0) {
        fail_msg("create %s: %s", file, vd_error_msg(err));
    }
}

static void write_pattern(vd_disk *d, uint64_t off, uint64_t len, int byte)
{
    void *buf = malloc(len);
    memset(buf, byte, len);
    assert_int_equal(vd_pwrite(d, buf, len, off, 0), 0);
    free(buf);
}

static void expect_pattern(vd_disk *d, uint64_t off, uint64_t len, int byte)
{
    uint8_t *buf = malloc(len);
    assert_int_equal(vd_pread(d, buf, len, off), 0);
    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] != byte) {
            fail_msg("%s: byte %llu is 0x%02x, expected 0x%02x", vd_disk_filename(d),
                     (unsigned long long)(off + i), buf[i], byte);
        }
    }
    free(buf);
}

/* Runs a shell command (qemu-img, qemu-io) when the tool is installed; fails the test
 * when it exits non-zero or prints `bad` (NULL: anything goes). */
static bool have_tool(const char *tool)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
    return system(cmd) == 0;
}

static void run_tool(const char *bad, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void run_tool(const char *bad, const char *fmt, ...)
{
    char *cmd = NULL, *full = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&cmd, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    if (asprintf(&full, "%s 2>&1", cmd) < 0) {
        abort();
    }
    FILE *p = popen(full, "r");
    assert_non_null(p);
    char out[8192];
    size_t len = fread(out, 1, sizeof(out) - 1, p);
    out[len] = '\0';
    int status = pclose(p);
    if (status != 0 || (bad && strstr(out, bad))) {
        fail_msg("'%s' exited %d:\n%s", cmd, status, out);
    }
    free(cmd);
    free(full);
}

/* Write before, snapshot, write after: the base keeps the old data only, the overlay
 * reads both, the handle follows the overlay, and the chain passes qemu-img's checks. */
static void test_external_basic(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    char *base = path("base.qcow2"), *ov = path("ov.qcow2");
    vd_error *err = NULL;
    create_image(e, base, "qcow2", IMG_SIZE);
    vd_disk *d = open_image(e, base, VD_OPEN_RDWR);
    write_pattern(d, 0, 64 << 10, 0xaa);
    write_pattern(d, 1 << 20, 64 << 10, 0xbb);

    assert_int_equal(vd_snapshot_external(d, ov, NULL, &err), 0);
    assert_null(err);
    assert_string_equal(vd_disk_filename(d), ov);
    assert_string_equal(vd_disk_format(d), "qcow2");
    assert_int_equal(vd_disk_size(d), IMG_SIZE);
    vd_disk *b = vd_disk_backing(d);
    assert_non_null(b);
    assert_string_equal(vd_disk_filename(b), base);
    assert_null(vd_disk_backing(b));

    /* A partial-cluster write copies the rest of the cluster up from the base. */
    write_pattern(d, 0, 32 << 10, 0xcc);
    write_pattern(d, 2 << 20, 64 << 10, 0xdd);
    expect_pattern(d, 0, 32 << 10, 0xcc);
    expect_pattern(d, 32 << 10, 32 << 10, 0xaa);
    expect_pattern(d, 1 << 20, 64 << 10, 0xbb);
    expect_pattern(d, 2 << 20, 64 << 10, 0xdd);
    expect_pattern(d, 3 << 20, 64 << 10, 0);
    /* Nothing writes the old top any more. */
    uint8_t byte = 1;
    assert_int_equal(vd_pwrite(b, &byte, 1, 0, 0), -EACCES);

    vd_image_info info;
    assert_int_equal(vd_get_info(d, &info, &err), 0);
    assert_string_equal(info.backing_filename, base);
    assert_string_equal(info.backing_format, "qcow2");
    vd_image_info_clear(&info);
    vd_extent ext;
    assert_int_equal(vd_block_status_top(d, 1 << 20, 64 << 10, &ext), 0);
    assert_false(ext.flags & VD_BS_ALLOCATED);
    assert_int_equal(vd_block_status(d, 1 << 20, 64 << 10, &ext), 0);
    assert_int_equal(ext.depth, 1);
    assert_int_equal(vd_close(d), 0);

    /* The base alone has the data from before the snapshot only. */
    d = open_image(e, base, 0);
    expect_pattern(d, 0, 64 << 10, 0xaa);
    expect_pattern(d, 1 << 20, 64 << 10, 0xbb);
    expect_pattern(d, 2 << 20, 64 << 10, 0);
    vd_close(d);
    /* Reopened, the overlay finds its backing file by itself. */
    d = open_image(e, ov, 0);
    expect_pattern(d, 0, 32 << 10, 0xcc);
    expect_pattern(d, 32 << 10, 32 << 10, 0xaa);
    expect_pattern(d, 1 << 20, 64 << 10, 0xbb);
    expect_pattern(d, 2 << 20, 64 << 10, 0xdd);
    vd_close(d);

    if (have_tool("qemu-img")) {
        run_tool(NULL, "qemu-img check '%s'", base);
        run_tool(NULL, "qemu-img check '%s'", ov);
        run_tool(NULL, "qemu-img info --backing-chain '%s'", ov);
        run_tool(NULL, "qemu-img info '%s' | grep -qx 'backing file: %s'", ov, base);
        run_tool(NULL, "qemu-img info '%s' | grep -qx 'backing file format: qcow2'", ov);
    }
    if (have_tool("qemu-io")) {
        run_tool("verification failed", "qemu-io -r -f qcow2 -c 'read -P 0xcc 0 32k' "
                 "-c 'read -P 0xaa 32k 32k' -c 'read -P 0xbb 1M 64k' -c 'read -P 0xdd 2M 64k' "
                 "-c 'read -P 0 3M 64k' '%s'", ov);
        run_tool("verification failed", "qemu-io -r -f qcow2 -c 'read -P 0xaa 0 64k' "
                 "-c 'read -P 0 2M 64k' '%s'", base);
    }
    vd_engine_free(e);
    free(base);
    free(ov);
}

/* Relative names: the overlay must store a backing name that resolves from its own
 * directory. A chain of three made by two snapshots under one handle. */
static void test_external_relative(void **state)
{
    (void)state;
    assert_int_equal(chdir(g_dir), 0);
    assert_int_equal(mkdir("sub", 0755), 0);
    vd_engine *e = vd_engine_new();
    vd_error *err = NULL;
    create_image(e, "sub/base.qcow2", "qcow2", IMG_SIZE);
    vd_disk *d = open_image(e, "sub/base.qcow2", VD_OPEN_RDWR);
    write_pattern(d, 0, 64 << 10, 0x11);
    /* The overlay in another directory than the current one: a canonical path. */
    assert_int_equal(vd_snapshot_external(d, "sub/mid.qcow2", "qcow2", &err), 0);
    write_pattern(d, 64 << 10, 64 << 10, 0x22);
    /* The overlay in the current directory: the old top's name works as it is. */
    assert_int_equal(vd_snapshot_external(d, "top.qcow2", NULL, &err), 0);
    write_pattern(d, 128 << 10, 64 << 10, 0x33);
    assert_string_equal(vd_disk_filename(d), "top.qcow2");
    vd_disk *mid = vd_disk_backing(d);
    assert_string_equal(vd_disk_filename(mid), "sub/mid.qcow2");
    assert_string_equal(vd_disk_filename(vd_disk_backing(mid)), "sub/base.qcow2");
    assert_int_equal(vd_close(d), 0);

    d = open_image(e, "top.qcow2", 0);
    expect_pattern(d, 0, 64 << 10, 0x11);
    expect_pattern(d, 64 << 10, 64 << 10, 0x22);
    expect_pattern(d, 128 << 10, 64 << 10, 0x33);
    vd_image_info info;
    assert_int_equal(vd_get_info(d, &info, &err), 0);
    assert_string_equal(info.backing_filename, "sub/mid.qcow2");
    vd_image_info_clear(&info);
    assert_int_equal(vd_get_info(vd_disk_backing(d), &info, &err), 0);
    char *abs_base = path("sub/base.qcow2");
    char *real_base = realpath(abs_base, NULL);
    assert_string_equal(info.backing_filename, real_base);
    vd_image_info_clear(&info);
    vd_close(d);
    if (have_tool("qemu-img")) {
        run_tool(NULL, "qemu-img info --backing-chain top.qcow2");
        run_tool(NULL, "qemu-img check top.qcow2");
        run_tool(NULL, "qemu-img check sub/mid.qcow2");
    }
    vd_engine_free(e);
    free(abs_base);
    free(real_base);
    assert_int_equal(chdir(g_cwd), 0);
}

/* Everything that can be checked is checked before anything changes. */
static void test_external_refusals(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    char *base = path("r-base.qcow2"), *ov = path("r-ov.qcow2"), *taken = path("r-taken");
    char *base2 = path("r-base2.qcow2"), *ov2 = path("r-ov2.qcow2");
    vd_error *err = NULL;
    create_image(e, base, "qcow2", IMG_SIZE);
    create_image(e, base2, "qcow2", IMG_SIZE);
    FILE *f = fopen(taken, "w");
    assert_non_null(f);
    fputs("keep me", f);
    fclose(f);
    vd_disk *d = open_image(e, base, VD_OPEN_RDWR);
    vd_disk *d2 = open_image(e, base2, VD_OPEN_RDWR);

    /* The overlay exists: refused, the file and the handle untouched. */
    assert_int_equal(vd_snapshot_external(d, taken, NULL, &err), -EEXIST);
    assert_non_null(strstr(err->msg, base));
    assert_non_null(strstr(err->msg, "File exists"));
    vd_error_freep(&err);
    struct stat st;
    assert_int_equal(stat(taken, &st), 0);
    assert_int_equal(st.st_size, 7);
    assert_string_equal(vd_disk_filename(d), base);

    assert_int_equal(vd_snapshot_external(d, "", NULL, &err), -EINVAL);
    vd_error_freep(&err);
    /* A format that cannot have a backing file, and one that does not exist: no file is
     * left behind. */
    assert_true(vd_snapshot_external(d, ov, "raw", &err) < 0);
    vd_error_freep(&err);
    assert_false(exists(ov));
    assert_true(vd_snapshot_external(d, ov, "nosuch", &err) < 0);
    vd_error_freep(&err);
    assert_false(exists(ov));

    /* A backing file is not the top of its chain. */
    assert_int_equal(vd_snapshot_external(d, ov, NULL, &err), 0);
    vd_disk *b = vd_disk_backing(d);
    assert_int_equal(vd_snapshot_external(b, ov2, NULL, &err), -EBUSY);
    assert_non_null(strstr(err->msg, "Node is busy"));
    vd_error_freep(&err);
    assert_false(exists(ov2));

    /* In a group, the second member's refusal undoes the first one's new overlay. */
    char *ov3 = path("r-ov3.qcow2");
    vd_action acts[2] = {
        {.kind = VD_ACTION_SNAPSHOT_EXTERNAL, .disk = d2, .overlay = ov3},
        {.kind = VD_ACTION_SNAPSHOT_EXTERNAL, .disk = d, .overlay = taken},
    };
    assert_int_equal(vd_transaction(acts, 2, &err), -EEXIST);
    assert_non_null(strstr(err->msg, ov));  /* d's top is the overlay now */
    vd_error_freep(&err);
    assert_false(exists(ov3));
    assert_string_equal(vd_disk_filename(d2), base2);
    assert_null(vd_disk_backing(d2));
    write_pattern(d2, 0, 4096, 0x5a);
    expect_pattern(d2, 0, 4096, 0x5a);

    /* A mixed group: an internal snapshot on a raw image fails, the overlay goes. */
    char *raw = path("r.raw");
    create_image(e, raw, "raw", IMG_SIZE);
    vd_disk *dr = open_image(e, raw, VD_OPEN_RDWR);
    vd_action mixed[2] = {
        {.kind = VD_ACTION_SNAPSHOT_EXTERNAL, .disk = d2, .overlay = ov3},
        {.kind = VD_ACTION_SNAPSHOT_INTERNAL, .disk = dr, .name = "s"},
    };
    assert_int_equal(vd_transaction(mixed, 2, &err), -ENOTSUP);
    assert_non_null(strstr(err->msg, raw));
    vd_error_freep(&err);
    assert_false(exists(ov3));
    assert_string_equal(vd_disk_filename(d2), base2);

    vd_close(dr);
    assert_int_equal(vd_close(d), 0);
    assert_int_equal(vd_close(d2), 0);
    d2 = open_image(e, base2, 0);
    expect_pattern(d2, 0, 4096, 0x5a);
    vd_close(d2);
    vd_engine_free(e);
    free(base);
    free(ov);
    free(taken);
    free(base2);
    free(ov2);
    free(ov3);
    free(raw);
}

/* A commit that fails (the old top's flush) after another member committed: both switch
 * back, both overlays go, the handles write to their old tops. */
static void test_external_commit_fails(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    char *b1 = path("c-base1.qcow2"), *b2 = path("c-base2.qcow2");
    char *o1 = path("c-ov1.qcow2"), *o2 = path("c-ov2.qcow2");
    vd_error *err = NULL;
    create_image(e, b1, "qcow2", IMG_SIZE);
    create_image(e, b2, "qcow2", IMG_SIZE);
    vd_disk *d1 = open_image(e, b1, VD_OPEN_RDWR);
    write_pattern(d1, 0, 64 << 10, 0x71);
    vd_disk *d2 = open_image(e, b2, VD_OPEN_RDWR);
    write_pattern(d2, 0, 64 << 10, 0x72);
    assert_int_equal(vd_close(d2), 0);
    char *spec = NULL;
    assert_true(asprintf(&spec, "blkdebug:flush#1=EIO:%s", b2) > 0);
    d2 = open_image(e, spec, VD_OPEN_RDWR);
    /* Something to flush: a flush with nothing written since the last one is skipped. */
    write_pattern(d2, 64 << 10, 4096, 0x73);

    vd_action acts[2] = {
        {.kind = VD_ACTION_SNAPSHOT_EXTERNAL, .disk = d1, .overlay = o1},
        {.kind = VD_ACTION_SNAPSHOT_EXTERNAL, .disk = d2, .overlay = o2},
    };
    assert_int_equal(vd_transaction(acts, 2, &err), -EIO);
    assert_non_null(strstr(err->msg, b2));
    assert_non_null(strstr(err->msg, strerror(EIO)));
    vd_error_freep(&err);
    assert_false(exists(o1));
    assert_false(exists(o2));
    assert_string_equal(vd_disk_filename(d1), b1);
    assert_string_equal(vd_disk_filename(d2), b2);
    assert_null(vd_disk_backing(d1));
    assert_null(vd_disk_backing(d2));
    write_pattern(d1, 1 << 20, 64 << 10, 0x81);
    write_pattern(d2, 1 << 20, 64 << 10, 0x82);
    assert_int_equal(vd_close(d1), 0);
    assert_int_equal(vd_close(d2), 0);

    /* The rule fired once; the same group goes through now. */
    d1 = open_image(e, b1, VD_OPEN_RDWR);
    d2 = open_image(e, b2, VD_OPEN_RDWR);
    acts[0].disk = d1;
    acts[1].disk = d2;
    assert_int_equal(vd_transaction(acts, 2, &err), 0);
    assert_string_equal(vd_disk_filename(d1), o1);
    assert_string_equal(vd_disk_filename(d2), o2);
    assert_int_equal(vd_close(d1), 0);
    assert_int_equal(vd_close(d2), 0);

    d1 = open_image(e, b1, 0);
    expect_pattern(d1, 0, 64 << 10, 0x71);
    expect_pattern(d1, 1 << 20, 64 << 10, 0x81);
    vd_close(d1);
    d2 = open_image(e, o2, 0);
    expect_pattern(d2, 0, 64 << 10, 0x72);
    expect_pattern(d2, 1 << 20, 64 << 10, 0x82);
    vd_close(d2);
    if (have_tool("qemu-img")) {
        run_tool(NULL, "qemu-img check '%s'", o1);
        run_tool(NULL, "qemu-img check '%s'", b2);
    }
    vd_engine_free(e);
    free(spec);
    free(b1);
    free(b2);
    free(o1);
    free(o2);
}

/* ---- I/O from another thread across the switch ------------------------------------------ */

#define NB_BLOCKS 60
#define BLOCK (64u << 10)

typedef struct writer {
    vd_disk *d;
    int ret;
    int done;           /* writes completed, published for the main thread */
    int go;             /* the main thread is about to switch: write on */
} writer;

static void *writer_thread(void *arg)
{
    writer *w = arg;
    uint8_t *buf = malloc(BLOCK);
    for (int i = 0; i < NB_BLOCKS && w->ret == 0; i++) {
        memset(buf, i + 1, BLOCK);
        w->ret = vd_pwrite(w->d, buf, BLOCK, (uint64_t)i * BLOCK, 0);
        __atomic_store_n(&w->done, i + 1, __ATOMIC_SEQ_CST);
        while (i == 7 && !__atomic_load_n(&w->go, __ATOMIC_SEQ_CST)) {
            sched_yield();  /* so that the switch lands in the middle of the stream */
        }
    }
    free(buf);
    return NULL;
}

typedef struct probe {
    vd_disk *d;
    int done;
} probe;

static void *probe_thread(void *arg)
{
    probe *p = arg;
    uint8_t b;
    vd_pread(p->d, &b, 1, 0);
    __atomic_store_n(&p->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* Whether vd_pread waits while the handle is drained (disk.c takes the handle lock). */
static bool io_waits_for_drain(vd_disk *d)
{
    vd_disk *disks[1] = {d};
    probe p = {.d = d};
    pthread_t th;
    vd_disks_drain_begin(disks, 1);
    pthread_create(&th, NULL, probe_thread, &p);
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};
    nanosleep(&ts, NULL);
    int done = __atomic_load_n(&p.done, __ATOMIC_SEQ_CST);
    vd_disks_drain_end(disks, 1);
    pthread_join(th, NULL);
    return !done;
}

static void test_external_concurrent_io(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    char *base = path("io-base.qcow2"), *ov = path("io-ov.qcow2");
    vd_error *err = NULL;
    create_image(e, base, "qcow2", IMG_SIZE);
    vd_disk *d = open_image(e, base, VD_OPEN_RDWR);
    if (!io_waits_for_drain(d)) {
        vd_close(d);
        vd_engine_free(e);
        free(base);
        free(ov);
        skip();  /* the handle's I/O entry points do not take the drain lock yet */
    }
    writer w = {.d = d};
    pthread_t th;
    pthread_create(&th, NULL, writer_thread, &w);
    /* Switch while the stream is running: a few writes in, many to come. */
    while (__atomic_load_n(&w.done, __ATOMIC_SEQ_CST) < 8 && w.ret == 0) {
        sched_yield();
    }
    __atomic_store_n(&w.go, 1, __ATOMIC_SEQ_CST);
    assert_int_equal(vd_snapshot_external(d, ov, NULL, &err), 0);
    pthread_join(th, NULL);
    assert_int_equal(w.ret, 0);
    for (int i = 0; i < NB_BLOCKS; i++) {
        expect_pattern(d, (uint64_t)i * BLOCK, BLOCK, i + 1);
    }
    assert_int_equal(vd_close(d), 0);

    /* Sequential writes: the base holds a prefix of them, the overlay the rest, and no
     * write is split between the two. */
    vd_disk *b = open_image(e, base, 0);
    d = open_image(e, ov, 0);
    uint8_t *buf = malloc(BLOCK);
    int in_base = 0;
    for (int i = 0; i < NB_BLOCKS; i++) {
        assert_int_equal(vd_pread(b, buf, BLOCK, (uint64_t)i * BLOCK), 0);
        int want = buf[0] ? i + 1 : 0;
        for (uint32_t k = 0; k < BLOCK; k++) {
            assert_int_equal(buf[k], want);
        }
        if (want) {
            assert_int_equal(in_base, i);  /* a prefix */
            in_base++;
        }
        vd_extent ext;
        assert_int_equal(vd_block_status_top(d, (uint64_t)i * BLOCK, BLOCK, &ext), 0);
        assert_int_equal((ext.flags & VD_BS_ALLOCATED) != 0, !want);
    }
    assert_true(in_base >= 8 && in_base < NB_BLOCKS);
    print_message("%d of %d writes went to the base\n", in_base, NB_BLOCKS);
    free(buf);
    vd_close(b);
    vd_close(d);
    if (have_tool("qemu-img")) {
        run_tool(NULL, "qemu-img check '%s'", ov);
    }
    vd_engine_free(e);
    free(base);
    free(ov);
}

/* 16 threads each writing their own run of blocks in order while the node is replaced:
 * every write lands wholly in the old node or wholly in the new one, each thread's old
 * node holds a prefix of its writes and the new one the rest, and the handle reads all. */
#define NB_WRITERS 16
#define PER_WRITER 16

typedef struct run_writer {
    vd_disk *d;
    int id;
    int ret;
    int done;
    int *go;
} run_writer;

static int run_byte(int id, int i)
{
    return (id * PER_WRITER + i) % 250 + 1;
}

static void *run_writer_thread(void *arg)
{
    run_writer *w = arg;
    uint8_t *buf = malloc(BLOCK);
    for (int i = 0; i < PER_WRITER && w->ret == 0; i++) {
        memset(buf, run_byte(w->id, i), BLOCK);
        uint64_t off = ((uint64_t)w->id * PER_WRITER + (uint64_t)i) * BLOCK;
        w->ret = vd_pwrite(w->d, buf, BLOCK, off, 0);
        __atomic_store_n(&w->done, i + 1, __ATOMIC_SEQ_CST);
        while (i == 3 && !__atomic_load_n(w->go, __ATOMIC_SEQ_CST)) {
            sched_yield();  /* the replace lands in the middle of every stream */
        }
    }
    free(buf);
    return NULL;
}

static void test_replace_under_16_writers(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    char *base = path("w16-base.qcow2"), *ov = path("w16-ov.qcow2");
    vd_error *err = NULL;
    create_image(e, base, "qcow2", (uint64_t)NB_WRITERS * PER_WRITER * BLOCK);
    vd_disk *d = open_image(e, base, VD_OPEN_RDWR);
    run_writer w[NB_WRITERS];
    pthread_t th[NB_WRITERS];
    int go = 0;
    for (int t = 0; t < NB_WRITERS; t++) {
        w[t] = (run_writer){.d = d, .id = t, .go = &go};
        pthread_create(&th[t], NULL, run_writer_thread, &w[t]);
    }
    for (int t = 0; t < NB_WRITERS; t++) {
        while (__atomic_load_n(&w[t].done, __ATOMIC_SEQ_CST) < 4 && w[t].ret == 0) {
            sched_yield();
        }
    }
    __atomic_store_n(&go, 1, __ATOMIC_SEQ_CST);
    assert_int_equal(vd_snapshot_external(d, ov, NULL, &err), 0);
    for (int t = 0; t < NB_WRITERS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(w[t].ret, 0);
    }
    for (int t = 0; t < NB_WRITERS; t++) {
        for (int i = 0; i < PER_WRITER; i++) {
            expect_pattern(d, ((uint64_t)t * PER_WRITER + (uint64_t)i) * BLOCK, BLOCK,
                           run_byte(t, i));
        }
    }
    assert_int_equal(vd_close(d), 0);

    vd_disk *b = open_image(e, base, 0);
    d = open_image(e, ov, 0);
    uint8_t *buf = malloc(BLOCK);
    int total_in_base = 0;
    for (int t = 0; t < NB_WRITERS; t++) {
        int in_base = 0;
        for (int i = 0; i < PER_WRITER; i++) {
            uint64_t off = ((uint64_t)t * PER_WRITER + (uint64_t)i) * BLOCK;
            assert_int_equal(vd_pread(b, buf, BLOCK, off), 0);
            int want = buf[0] ? run_byte(t, i) : 0;
            for (uint32_t k = 0; k < BLOCK; k++) {
                assert_int_equal(buf[k], want);   /* never half a write */
            }
            if (want) {
                assert_int_equal(in_base, i);     /* a prefix of this thread's writes */
                in_base++;
            }
            vd_extent ext;
            assert_int_equal(vd_block_status_top(d, off, BLOCK, &ext), 0);
            assert_int_equal((ext.flags & VD_BS_ALLOCATED) != 0, !want);
        }
        assert_true(in_base >= 4);
        total_in_base += in_base;
    }
    /* The threads wrote on after the replace: the new node has some of it. */
    assert_true(total_in_base < NB_WRITERS * PER_WRITER);
    print_message("%d of %d writes went to the old node\n", total_in_base,
                  NB_WRITERS * PER_WRITER);
    free(buf);
    vd_close(b);
    vd_close(d);
    vd_engine_free(e);
    free(base);
    free(ov);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_external_basic),
        cmocka_unit_test(test_external_relative),
        cmocka_unit_test(test_external_refusals),
        cmocka_unit_test(test_external_commit_fails),
        cmocka_unit_test(test_external_concurrent_io),
        cmocka_unit_test(test_replace_under_16_writers),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
