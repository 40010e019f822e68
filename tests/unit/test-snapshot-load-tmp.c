/* Unit tests for vd_snapshot_load_tmp (QEMU's bdrv_snapshot_load_tmp): a disk opened
 * read-only reads an internal snapshot's data after writes changed the active image; the
 * lookup rules (id and name both matching, id then name for one string); refusals (writable
 * disk, unknown snapshot, a bad snapshot L1 table, a format without snapshots); and the
 * image file stays byte-identical throughout. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "vdisk/snapshot.h"
#include "vdisk/vdisk.h"

#define KIB 1024u
#define MIB (1024u * 1024u)

typedef struct fixture {
    char dir[64];
    char img[96];
    char raw[96];
    vd_engine *e;
} fixture;

/* FNV-1a over the whole file: enough to see any byte change. */
static uint64_t file_hash(const char *path)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    uint64_t h = 1469598103934665603ull;
    uint8_t buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            h = (h ^ buf[i]) * 1099511628211ull;
        }
    }
    assert_true(n == 0);
    close(fd);
    return h;
}

static vd_disk *open_disk(fixture *f, const char *path, const char *fmt, unsigned flags)
{
    vd_open_opts oo = {.format = fmt, .flags = flags};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    int ret = vd_open(f->e, path, &oo, &d, &err);
    if (ret < 0) {
        fail_msg("open %s: %s", path, vd_error_msg(err));
    }
    return d;
}

static void fill(vd_disk *d, uint8_t byte, uint64_t len, uint64_t off)
{
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    memset(buf, byte, len);
    assert_int_equal(vd_pwrite(d, buf, len, off, 0), 0);
    free(buf);
}

/* Whether [off, off+len) of the disk reads as `byte` everywhere. */
static bool reads_as(vd_disk *d, uint8_t byte, uint64_t len, uint64_t off)
{
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    assert_int_equal(vd_pread(d, buf, len, off), 0);
    bool ok = true;
    for (uint64_t i = 0; i < len; i++) {
        ok &= buf[i] == byte;
    }
    free(buf);
    return ok;
}

static void write_be(const char *path, uint64_t off, unsigned bytes, uint64_t v)
{
    uint8_t b[8];
    for (unsigned i = 0; i < bytes; i++) {
        b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    }
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, b, bytes, (off_t)off), (ssize_t)bytes);
    close(fd);
}

static uint64_t read_be64(const char *path, uint64_t off)
{
    uint8_t b[8];
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, b, 8, (off_t)off), 8);
    close(fd);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | b[i];
    }
    return v;
}

/* Takes errp, not the error: the call in `ret` sets it, and arguments have no order. */
static void expect_error(int ret, int err_no, vd_error **errp, const char *text)
{
    assert_int_equal(ret, -err_no);
    assert_non_null(*errp);
    if (!strstr(vd_error_msg(*errp), text)) {
        fail_msg("message '%s' lacks '%s'", vd_error_msg(*errp), text);
    }
    vd_error_free(*errp);
    *errp = NULL;
}

/* Snapshot "s1" (id 1): 0x11 at 0, 0x12 at 1 MiB. Snapshot "1" (id 2): 0x22 at 0, 0x12 at
 * 1 MiB, 0x23 at 2 MiB. Active: 0x33 at 0, the rest as in "1", 0x34 at 3 MiB. */
static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/vd-loadtmp-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->img, sizeof(f->img), "%s/a.qcow2", f->dir);
    snprintf(f->raw, sizeof(f->raw), "%s/a.raw", f->dir);
    f->e = vd_engine_new();
    vd_error *err = NULL;
    assert_int_equal(vd_create(f->e, f->img, "qcow2", 4 * MIB, NULL, 0, &err), 0);
    assert_int_equal(vd_create(f->e, f->raw, "raw", 1 * MIB, NULL, 0, &err), 0);
    vd_disk *d = open_disk(f, f->img, "qcow2", VD_OPEN_RDWR);
    fill(d, 0x11, 64 * KIB, 0);
    fill(d, 0x12, 4 * KIB, 1 * MIB);
    assert_int_equal(vd_snapshot_create(d, "s1", NULL, 0, false, &err), 0);
    fill(d, 0x22, 64 * KIB, 0);
    fill(d, 0x23, 64 * KIB, 2 * MIB);
    assert_int_equal(vd_snapshot_create(d, "1", NULL, 0, false, &err), 0);
    fill(d, 0x33, 64 * KIB, 0);
    fill(d, 0x34, 4 * KIB, 3 * MIB);
    assert_int_equal(vd_close(d), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    unlink(f->img);
    unlink(f->raw);
    char bad[128];
    snprintf(bad, sizeof(bad), "%s/bad.qcow2", f->dir);
    unlink(bad);
    rmdir(f->dir);
    vd_engine_free(f->e);
    free(f);
    return 0;
}

static void test_reads_snapshot(void **state)
{
    fixture *f = *state;
    uint64_t before = file_hash(f->img);
    vd_disk *d = open_disk(f, f->img, "qcow2", 0);
    assert_true(reads_as(d, 0x33, 64 * KIB, 0));
    vd_error *err = NULL;

    assert_int_equal(vd_snapshot_load_tmp(d, "1", NULL, &err), 0);   /* id 1: s1 */
    assert_null(err);
    assert_int_equal(vd_disk_size(d), 4 * MIB);
    assert_true(reads_as(d, 0x11, 64 * KIB, 0));
    assert_true(reads_as(d, 0x12, 4 * KIB, 1 * MIB));
    assert_true(reads_as(d, 0, 64 * KIB, 2 * MIB));
    assert_true(reads_as(d, 0, 4 * KIB, 3 * MIB));

    assert_int_equal(vd_snapshot_load_tmp(d, NULL, "1", &err), 0);   /* name "1": id 2 */
    assert_true(reads_as(d, 0x22, 64 * KIB, 0));
    assert_true(reads_as(d, 0x23, 64 * KIB, 2 * MIB));
    assert_true(reads_as(d, 0, 4 * KIB, 3 * MIB));

    assert_int_equal(vd_snapshot_load_tmp(d, "1", "s1", &err), 0);   /* both match */
    assert_true(reads_as(d, 0x11, 64 * KIB, 0));

    /* One string: an id first, then a name. */
    assert_int_equal(vd_snapshot_load_tmp_by_id_or_name(d, "2", &err), 0);
    assert_true(reads_as(d, 0x22, 64 * KIB, 0));
    assert_int_equal(vd_snapshot_load_tmp_by_id_or_name(d, "s1", &err), 0);
    assert_true(reads_as(d, 0x11, 64 * KIB, 0));
    assert_int_equal(vd_close(d), 0);
    assert_true(file_hash(f->img) == before);
}

static void test_refusals(void **state)
{
    fixture *f = *state;
    uint64_t before = file_hash(f->img);
    vd_disk *d = open_disk(f, f->img, "qcow2", 0);
    vd_error *err = NULL;

    expect_error(vd_snapshot_load_tmp(d, "9", NULL, &err), ENOENT, &err, "Can't find snapshot");
    expect_error(vd_snapshot_load_tmp(d, NULL, "s9", &err), ENOENT, &err,
                 "Can't find snapshot");
    expect_error(vd_snapshot_load_tmp(d, "1", "1", &err), ENOENT, &err,   /* both must match */
                 "Can't find snapshot");
    expect_error(vd_snapshot_load_tmp_by_id_or_name(d, "nope", &err), ENOENT, &err,
                 "Can't find snapshot");
    expect_error(vd_snapshot_load_tmp(d, NULL, NULL, &err), EINVAL, &err,
                 "snapshot_id and name are both NULL");
    /* A failed load leaves the disk reading what it read. */
    assert_true(reads_as(d, 0x33, 64 * KIB, 0));
    assert_int_equal(vd_close(d), 0);
    assert_true(file_hash(f->img) == before);

    /* Writable: refused, and the disk still reads and writes the active image. */
    d = open_disk(f, f->img, "qcow2", VD_OPEN_RDWR);
    expect_error(vd_snapshot_load_tmp(d, "1", NULL, &err), EINVAL, &err, "Device is not readonly");
    expect_error(vd_snapshot_load_tmp_by_id_or_name(d, "s1", &err), EINVAL, &err,
                 "Device is not readonly");
    assert_true(reads_as(d, 0x33, 64 * KIB, 0));
    assert_int_equal(vd_close(d), 0);

    /* A format without internal snapshots. */
    d = open_disk(f, f->raw, "raw", 0);
    expect_error(vd_snapshot_load_tmp(d, "1", NULL, &err), ENOTSUP, &err,
                 "does not support temporarily loading internal snapshots");
    assert_int_equal(vd_close(d), 0);
}

/* Snapshot 1's table entry with one field changed (offset 0: L1 offset, 8: L1 size). */
static void make_bad(fixture *f, char *bad, size_t len, unsigned field, unsigned bytes,
                     uint64_t v)
{
    snprintf(bad, len, "%s/bad.qcow2", f->dir);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", f->img, bad);
    assert_int_equal(system(cmd), 0);
    uint64_t table = read_be64(bad, 64);
    write_be(bad, table + field, bytes, v);
}

static void test_bad_l1(void **state)
{
    fixture *f = *state;
    char bad[128];
    vd_error *err = NULL;

    /* Not cluster aligned: EINVAL, so one string falls back to the name "1" (id 2). */
    make_bad(f, bad, sizeof(bad), 0, 8, 0x10200);
    uint64_t before = file_hash(bad);
    vd_disk *d = open_disk(f, bad, "qcow2", 0);
    expect_error(vd_snapshot_load_tmp(d, "1", NULL, &err), EINVAL, &err,
                 "Snapshot L1 table offset invalid");
    expect_error(vd_snapshot_load_tmp(d, NULL, "s1", &err), EINVAL, &err,
                 "Snapshot L1 table offset invalid");
    assert_true(reads_as(d, 0x33, 64 * KIB, 0));
    assert_int_equal(vd_snapshot_load_tmp_by_id_or_name(d, "1", &err), 0);
    assert_true(reads_as(d, 0x22, 64 * KIB, 0));
    assert_int_equal(vd_close(d), 0);
    assert_true(file_hash(bad) == before);

    /* Too large (64 MiB of entries). */
    make_bad(f, bad, sizeof(bad), 8, 4, 0x800000);
    before = file_hash(bad);
    d = open_disk(f, bad, "qcow2", 0);
    expect_error(vd_snapshot_load_tmp(d, "1", NULL, &err), EFBIG, &err,
                 "Snapshot L1 table too large");
    expect_error(vd_snapshot_load_tmp_by_id_or_name(d, "s1", &err), EFBIG, &err,
                 "Snapshot L1 table too large");
    assert_true(reads_as(d, 0x33, 64 * KIB, 0));
    assert_int_equal(vd_close(d), 0);
    assert_true(file_hash(bad) == before);

    /* Where no read may go: fails as QEMU's read does. */
    make_bad(f, bad, sizeof(bad), 0, 8, 0x7fffffffffff0000ull);
    before = file_hash(bad);
    d = open_disk(f, bad, "qcow2", 0);
    expect_error(vd_snapshot_load_tmp(d, "1", NULL, &err), EIO, &err,
                 "Failed to read l1 table for snapshot");
    assert_int_equal(vd_close(d), 0);
    assert_true(file_hash(bad) == before);

    /* Past the end of the file: the table reads as zeros, so everything is unallocated. */
    make_bad(f, bad, sizeof(bad), 0, 8, 0x40000000);
    before = file_hash(bad);
    d = open_disk(f, bad, "qcow2", 0);
    assert_int_equal(vd_snapshot_load_tmp(d, "1", NULL, &err), 0);
    assert_true(reads_as(d, 0, 64 * KIB, 0));
    assert_int_equal(vd_close(d), 0);
    assert_true(file_hash(bad) == before);

    /* At offset 0: the header read as L1 entries. Reads may fail as corrupt, but nothing
     * is written (the image is read-only: no corrupt bit either). */
    make_bad(f, bad, sizeof(bad), 0, 8, 0);
    before = file_hash(bad);
    d = open_disk(f, bad, "qcow2", 0);
    assert_int_equal(vd_snapshot_load_tmp(d, "1", NULL, &err), 0);
    uint8_t buf[4096];
    for (uint64_t off = 0; off < 4 * MIB; off += 512 * KIB) {
        (void)vd_pread(d, buf, sizeof(buf), off);
    }
    assert_int_equal(vd_close(d), 0);
    assert_true(file_hash(bad) == before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reads_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_l1, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
