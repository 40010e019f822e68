/* Unit tests for the fault-injection filter (`blkdebug:RULES:PATH`): the rule parser and
 * its messages, failing the Nth read/write/flush and the request after a named event, the
 * counts file, and that raw and qcow2 images work through the filter as without it. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/blkdebug.h"
#include "block/disk.h"

#define MiB (1024 * 1024)
#define BLK 4096

typedef struct fixture {
    char dir[256];
    char raw[300], qcow2[300], counts[300];
    vd_engine *e;
} fixture;

static void create_image(fixture *f, const char *path, const char *fmt)
{
    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    int ret = vd_create(f->e, path, fmt, 4 * MiB, o, 0, &err);
    if (ret < 0) {
        fail_msg("create %s: %s", path, err ? vd_error_msg(err) : strerror(-ret));
    }
    vd_opts_free(o);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "%s/blkdebug-XXXXXX", getenv("TMPDIR") ?: "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->raw, sizeof(f->raw), "%s/a.raw", f->dir);
    snprintf(f->qcow2, sizeof(f->qcow2), "%s/a.qcow2", f->dir);
    snprintf(f->counts, sizeof(f->counts), "%s/counts", f->dir);
    f->e = vd_engine_new();
    create_image(f, f->raw, "raw");
    create_image(f, f->qcow2, "qcow2");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    unlink(f->raw);
    unlink(f->qcow2);
    unlink(f->counts);
    rmdir(f->dir);
    vd_engine_free(f->e);
    free(f);
    return 0;
}

/* Makes the fixture's engine one whose blkdebug filters count into path (NULL: do not
 * count). Every disk of the old engine is closed by then. */
static void count_into(fixture *f, const char *path)
{
    vd_engine_free(f->e);
    vd_engine_settings st = {.blkdebug_count_file = path};
    f->e = vd_engine_new_with(&st);
}

/* Opens `blkdebug:RULES:PATH` read-write (format NULL: probed through the filter). */
static vd_disk *open_rules(fixture *f, const char *rules, const char *path, const char *fmt,
                           unsigned flags)
{
    char spec[640];
    snprintf(spec, sizeof(spec), "blkdebug:%s:%s", rules, path);
    vd_open_opts o = {.format = fmt, .flags = VD_OPEN_RDWR | flags};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    int ret = vd_open(f->e, spec, &o, &d, &err);
    if (ret < 0) {
        fail_msg("open %s: %s", spec, err ? vd_error_msg(err) : strerror(-ret));
    }
    return d;
}

/* The error vd_open gives for spec (which must fail). Caller frees. */
static char *open_error(fixture *f, const char *spec)
{
    vd_open_opts o = {.flags = 0};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    int ret = vd_open(f->e, spec, &o, &d, &err);
    assert_true(ret < 0);
    assert_null(d);
    assert_non_null(err);
    char *msg = strdup(vd_error_msg(err));
    vd_error_free(err);
    return msg;
}

static void fill(uint8_t *buf, uint8_t v)
{
    memset(buf, v, BLK);
}

static void assert_block(vd_disk *d, uint64_t off, uint8_t v)
{
    uint8_t buf[BLK], want[BLK];
    fill(want, v);
    assert_int_equal(vd_pread(d, buf, BLK, off), 0);
    assert_memory_equal(buf, want, BLK);
}

static void assert_io_error(vd_disk *d, const char *want)
{
    const char *msg = vd_disk_last_error(d);
    assert_non_null(msg);
    if (!strstr(msg, want)) {
        fail_msg("I/O error '%s' does not contain '%s'", msg, want);
    }
}

static vd_disk *open_plain(fixture *f, const char *path, unsigned flags)
{
    vd_open_opts o = {.flags = flags};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_open(f->e, path, &o, &d, &err), 0);
    return d;
}

/* ---- parser ------------------------------------------------------------------------------ */

static void test_parse_ok(void **state)
{
    (void)state;
    vd_blkdebug_rules r;
    vd_error *err = NULL;
    assert_int_equal(vd_blkdebug_parse("blkdebug::img", &r, &err), 0);
    assert_int_equal(r.nb_rules, 0);
    assert_string_equal(r.path, "img");
    vd_blkdebug_rules_free(&r);

    assert_int_equal(vd_blkdebug_parse("blkdebug:write#3=EIO;read#1=ENOSPC;flush#2=EPERM;"
                                       "event:l1_update#1=EDQUOT:dir/a:b.qcow2", &r, &err), 0);
    assert_int_equal(r.nb_rules, 4);
    assert_string_equal(r.path, "dir/a:b.qcow2");  /* the first ':' after the rules ends them */
    vd_blkdebug_rules_free(&r);

    const char *names[] = {"EIO", "ENOSPC", "EPERM", "EACCES", "EROFS", "EINVAL", "ENOMEM",
                           "EFBIG", "EDQUOT"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char spec[64];
        snprintf(spec, sizeof(spec), "blkdebug:write#18446744073709551615=%s:x", names[i]);
        assert_int_equal(vd_blkdebug_parse(spec, &r, &err), 0);
        assert_int_equal(r.nb_rules, 1);
        vd_blkdebug_rules_free(&r);
    }
    assert_null(err);
}

static void test_parse_errors(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *spec;
        const char *msg;
    } cases[] = {
        {"blkdebug:write#x=EIO:img", "blkdebug: bad rule 'write#x=EIO': N must be a positive "
                                     "number"},
        {"blkdebug:write#0=EIO:img", "bad rule 'write#0=EIO': N must be a positive number"},
        {"blkdebug:write#-1=EIO:img", "bad rule 'write#-1=EIO': N must be a positive number"},
        {"blkdebug:write#+1=EIO:img", "bad rule 'write#+1=EIO': N must be a positive number"},
        {"blkdebug:write#=EIO:img", "bad rule 'write#=EIO': N must be a positive number"},
        {"blkdebug:write#99999999999999999999=EIO:img", "N must be a positive number"},
        {"blkdebug:write#1=EFOO:img", "bad rule 'write#1=EFOO': unknown errno name 'EFOO'"},
        {"blkdebug:write#1=eio:img", "unknown errno name 'eio'"},
        {"blkdebug:write#1=:img", "unknown errno name ''"},
        {"blkdebug:write#1:img", "bad rule 'write#1': expected =ERR after #N"},
        {"blkdebug:write=EIO:img", "bad rule 'write=EIO': expected OP#N=ERR"},
        {"blkdebug:bogus#1=EIO:img", "unknown operation 'bogus'"},
        {"blkdebug:event:#1=EIO:img", "bad rule 'event:#1=EIO': an event name is"},
        {"blkdebug:event:L1#1=EIO:img", "an event name is 1 to 63 characters"},
        {"blkdebug:read#1=EIO;;write#1=EIO:img", "blkdebug: empty rule"},
        {"blkdebug:img", "missing ':PATH' in 'blkdebug:img'"},
        {"blkdebug:write#1=EIO", "missing ':PATH'"},
        {"blkdebug:write#1=EIO:", "blkdebug: no image path in 'blkdebug:write#1=EIO:'"},
        {"blkdebug::", "no image path"},
        {"blkdebug:read#1=EIO;write#2=EIO:nonexistent.img", "Could not open "
                                                            "'nonexistent.img'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *msg = open_error(f, cases[i].spec);
        if (!strstr(msg, cases[i].msg)) {
            fail_msg("%s: got '%s', wanted '%s'", cases[i].spec, msg, cases[i].msg);
        }
        free(msg);
    }
}

/* 65 rules are refused (the limit is 64), and a long garbage spec does not overrun. */
static void test_parse_limits(void **state)
{
    (void)state;
    char spec[2048] = "blkdebug:";
    for (int i = 0; i < 65; i++) {
        strcat(spec, "read#1=EIO;");
    }
    strcat(spec, ":img");
    vd_blkdebug_rules r;
    vd_error *err = NULL;
    assert_true(vd_blkdebug_parse(spec, &r, &err) < 0);
    assert_non_null(strstr(vd_error_msg(err), "more than 64 rules"));
    vd_error_free(err);
    err = NULL;

    char big[1200] = "blkdebug:event:";
    memset(big + strlen(big), 'a', 1000);
    strcat(big, "#1=EIO:img");
    assert_true(vd_blkdebug_parse(big, &r, &err) < 0);
    assert_non_null(strstr(vd_error_msg(err), "an event name is"));
    vd_error_free(err);
}

/* ---- QEMU config files ------------------------------------------------------------------- */

static void write_config(fixture *f, const char *text)
{
    snprintf(f->counts, sizeof(f->counts), "%s/bd.conf", f->dir);
    FILE *c = fopen(f->counts, "w");
    assert_non_null(c);
    assert_int_equal(fputs(text, c) >= 0, 1);
    assert_int_equal(fclose(c), 0);
}

/* read_aio with once=off fails every data read after it; the file is otherwise intact. */
static void test_config_read_aio(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    write_config(f, "# a comment\n[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n"
                    "once =\"off\"\n");
    vd_disk *d = open_rules(f, f->counts, f->raw, "raw", 0);
    fill(buf, 3);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    assert_int_equal(vd_pread(d, buf, BLK, 0), -EIO);
    assert_int_equal(vd_pread(d, buf, BLK, 0), -EIO);
    /* Active rules stay active: the next write fails too (no iotype given: all types). */
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), -EIO);
    vd_close(d);
    d = open_plain(f, f->raw, 0);
    assert_block(d, 0, 3);
    vd_close(d);
}

/* once=on fires a single time; sector limits it to requests covering that sector; iotype
 * to that kind of request. */
static void test_config_once_sector_iotype(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    write_config(f, "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\n"
                    "once = \"on\"\nsector = \"16\"\niotype = \"write\"\n");
    vd_disk *d = open_rules(f, f->counts, f->raw, "raw", 0);
    fill(buf, 4);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);         /* sectors 0-7 */
    assert_int_equal(vd_pread(d, buf, BLK, 2 * BLK), 0);       /* a read, not a write */
    assert_int_equal(vd_pwrite(d, buf, BLK, 2 * BLK, 0), -ENOSPC); /* sectors 16-23 */
    assert_int_equal(vd_pwrite(d, buf, BLK, 2 * BLK, 0), 0);   /* once: gone */
    vd_close(d);
}

/* set-state: the error rule only acts in state 2, which the first flush_to_disk enters. */
static void test_config_states(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    write_config(f, "[set-state]\nevent = \"flush_to_disk\"\nstate = \"1\"\n"
                    "new_state = \"2\"\n\n[inject-error]\nevent = \"write_aio\"\n"
                    "state = \"2\"\nerrno = \"1\"\n");
    vd_disk *d = open_rules(f, f->counts, f->raw, "raw", 0);
    fill(buf, 5);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    assert_int_equal(vd_flush(d), 0);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), -EPERM);
    vd_close(d);
}

static void test_config_errors(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *text;
        const char *msg;
    } cases[] = {
        {"[inject-error]\nevent = \"no_such_event\"\n", "line 2: unknown event name "
                                                           "no_such_event"},
        {"[inject-error]\nevent = read_aio\n", "line 2: expected key = \"value\""},
        {"[inject-error]\nerrno = \"5\"\n", "line 3: a section has no event"},
        {"[bogus]\n", "line 1: unknown section [bogus]"},
        {"event = \"read_aio\"\n", "line 1: a key outside any section"},
        {"[inject-error]\nevent = \"read_aio\"\nerrno = \"x\"\n", "'errno' expects a "
                                                                       "number"},
        {"[inject-error]\nevent = \"read_aio\"\nonce = \"maybe\"\n", "'once' expects"},
        {"[inject-error]\nevent = \"read_aio\"\nnew_state = \"2\"\n", "unknown key "
                                                                          "new_state"},
        {"[set-state]\nevent = \"read_aio\"\n", "needs new_state"},
        {"[inject-error]\nevent = \"read_aio\"\niotype = \"read,bogus\"\n",
         "unknown iotype"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_config(f, cases[i].text);
        char spec[700];
        snprintf(spec, sizeof(spec), "blkdebug:%s:%s", f->counts, f->raw);
        char *msg = open_error(f, spec);
        if (!strstr(msg, cases[i].msg)) {
            fail_msg("case %zu: got '%s', wanted '%s'", i, msg, cases[i].msg);
        }
        free(msg);
    }
    char *msg = open_error(f, "blkdebug:/no/such/config:img");
    assert_non_null(strstr(msg, "could not read config file '/no/such/config'"));
    free(msg);
}

/* ---- raw through the filter -------------------------------------------------------------- */

static void test_raw_write(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_rules(f, "write#2=EIO", f->raw, "raw", 0);
    assert_string_equal(vd_disk_format(d), "raw");
    assert_int_equal(vd_disk_size(d), 4 * MiB);
    for (int i = 1; i <= 3; i++) {
        fill(buf, (uint8_t)i);
        int ret = vd_pwrite(d, buf, BLK, (uint64_t)i * BLK, 0);
        if (i == 2) {
            assert_int_equal(ret, -EIO);
            assert_io_error(d, "blkdebug: injected EIO on write #2");
        } else {
            assert_int_equal(ret, 0);  /* the rule fires once */
        }
    }
    assert_int_equal(vd_close(d), 0);

    d = open_plain(f, f->raw, 0);
    assert_block(d, 1 * BLK, 1);
    assert_block(d, 2 * BLK, 0);  /* the failed write never reached the file */
    assert_block(d, 3 * BLK, 3);
    vd_close(d);
}

static void *last_error_thread(void *arg)
{
    const char *msg = vd_disk_last_error(arg);
    return msg ? strdup(msg) : NULL;
}

static void test_raw_read(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_rules(f, "read#2=ENOSPC", f->raw, "raw", 0);
    assert_int_equal(vd_pread(d, buf, BLK, 0), 0);
    assert_int_equal(vd_pread(d, buf, BLK, 0), -ENOSPC);
    assert_io_error(d, "blkdebug: injected ENOSPC on read #2");
    /* The message belongs to the disk, not to the thread: another handle has none, and
     * another thread reads this one's. */
    vd_disk *other = open_plain(f, f->raw, 0);
    assert_null(vd_disk_last_error(other));
    vd_close(other);
    pthread_t t;
    char *seen = NULL;
    assert_int_equal(pthread_create(&t, NULL, last_error_thread, d), 0);
    assert_int_equal(pthread_join(t, (void **)&seen), 0);
    assert_non_null(seen);
    assert_non_null(strstr(seen, "blkdebug: injected ENOSPC on read #2"));
    free(seen);
    assert_int_equal(vd_pread(d, buf, BLK, 0), 0);
    vd_close(d);
}

static void test_raw_flush(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_rules(f, "flush#1=EROFS;flush#3=EDQUOT", f->raw, "raw", 0);
    fill(buf, 7);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    assert_int_equal(vd_flush(d), -EROFS);
    assert_io_error(d, "injected EROFS on flush #1");
    assert_int_equal(vd_flush(d), 0);
    /* Nothing is written since that flush: a flush now has nothing to do and is not sent. */
    assert_int_equal(vd_flush(d), 0);
    /* After a write, the flush at close is flush #3. */
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    assert_int_equal(vd_close(d), -EDQUOT);
}

/* write_zeroes and discard are writes; block status is no I/O and passes through. */
static void test_raw_zeroes_discard(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_rules(f, "write#2=EFBIG;write#3=EPERM", f->raw, "raw", VD_OPEN_UNMAP);
    fill(buf, 9);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    assert_int_equal(vd_pwrite_zeroes(d, 0, BLK, 0), -EFBIG);
    assert_int_equal(vd_pdiscard(d, 0, BLK), -EPERM);
    assert_block(d, 0, 9);
    assert_int_equal(vd_pwrite_zeroes(d, 0, BLK, 0), 0);
    assert_block(d, 0, 0);
    vd_extent ext;
    assert_int_equal(vd_block_status(d, 0, 4 * MiB, &ext), 0);
    assert_true(ext.length > 0);
    vd_close(d);
}

/* ---- qcow2 through the filter ------------------------------------------------------------ */

static void assert_check_clean(fixture *f)
{
    vd_disk *d = open_plain(f, f->qcow2, VD_OPEN_CHECK);
    vd_check_result res;
    memset(&res, 0, sizeof(res));
    vd_error *err = NULL;
    assert_int_equal(vd_check(d, 0, &res, &err), 0);
    assert_int_equal(res.corruptions, 0);
    assert_int_equal(res.check_errors, 0);
    vd_check_result_clear(&res);
    vd_close(d);
}

static void test_qcow2_passthrough(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_rules(f, "", f->qcow2, NULL, 0);  /* probed through the filter */
    assert_string_equal(vd_disk_format(d), "qcow2");
    assert_int_equal(vd_disk_size(d), 4 * MiB);
    assert_string_equal(vd_disk_filename(d), f->qcow2);
    fill(buf, 0x5a);
    assert_int_equal(vd_pwrite(d, buf, BLK, MiB, 0), 0);
    assert_block(d, MiB, 0x5a);
    vd_extent ext;
    assert_int_equal(vd_block_status(d, MiB, BLK, &ext), 0);
    assert_true(ext.flags & VD_BS_DATA);
    vd_image_info info;
    memset(&info, 0, sizeof(info));
    vd_error *err = NULL;
    assert_int_equal(vd_get_info(d, &info, &err), 0);
    assert_true(info.actual_size > 0);
    vd_image_info_clear(&info);
    assert_int_equal(vd_close(d), 0);

    d = open_plain(f, f->qcow2, 0);
    assert_block(d, MiB, 0x5a);
    vd_close(d);
    assert_check_clean(f);
}

/* Failing each write of an allocating qcow2 write in turn: the request fails, and the image
 * is never corrupted (leaks are allowed) and keeps the data written before. */
static void test_qcow2_each_write(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_plain(f, f->qcow2, VD_OPEN_RDWR);
    fill(buf, 0x11);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    vd_close(d);

    count_into(f, f->counts);
    d = open_rules(f, "", f->qcow2, NULL, 0);
    fill(buf, 0x22);
    assert_int_equal(vd_pwrite(d, buf, BLK, 2 * MiB, 0), 0);
    assert_int_equal(vd_close(d), 0);
    count_into(f, NULL);
    unsigned long reads = 0, writes = 0, flushes = 0;
    FILE *cf = fopen(f->counts, "r");
    assert_non_null(cf);
    assert_int_equal(fscanf(cf, "reads=%lu writes=%lu flushes=%lu", &reads, &writes, &flushes),
                     3);
    fclose(cf);
    unlink(f->counts);
    assert_true(writes >= 2);  /* at least the data and an L2 entry */

    /* Each run allocates a fresh cluster under the same, existing L2 table, so it makes the
     * same requests as the counted run. */
    for (unsigned long n = 1; n <= writes; n++) {
        char rules[32];
        snprintf(rules, sizeof(rules), "write#%lu=EIO", n);
        d = open_rules(f, rules, f->qcow2, NULL, 0);
        fill(buf, 0x33);
        int ret = vd_pwrite(d, buf, BLK, (uint64_t)(n + 2) * 64 * 1024 + 2 * MiB, 0);
        int cret = vd_close(d);
        assert_true(ret == -EIO || cret == -EIO);
        assert_check_clean(f);
        vd_disk *p = open_plain(f, f->qcow2, 0);
        assert_block(p, 0, 0x11);
        assert_block(p, 2 * MiB, 0x22);
        vd_close(p);
    }
}

/* event:NAME#N fails the first request after the Nth announcement of NAME; vd_node_event
 * reaches the filter under a format node, and is harmless without a filter. */
static void test_event(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_rules(f, "event:my_event#2=EACCES", f->raw, "raw", 0);
    fill(buf, 1);
    vd_node_event(d->node, "my_event");
    vd_node_event(d->node, "other_event");
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    vd_node_event(d->node, "my_event");
    assert_int_equal(vd_pread(d, buf, BLK, 0), -EACCES);  /* any request: a read here */
    assert_io_error(d, "injected EACCES on read #1 after event my_event #2");
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    vd_node_event(d->node, "my_event");
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);  /* fired once */
    vd_close(d);

    d = open_plain(f, f->raw, VD_OPEN_RDWR);
    vd_node_event(d->node, "my_event");
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    vd_close(d);
}

/* qcow2 announces l2_update before it writes an L2 slice: failing the request after it
 * fails the write that allocates, and leaves the image consistent. */
static void test_qcow2_event(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    vd_disk *d = open_rules(f, "event:l2_update#1=EIO", f->qcow2, NULL, 0);
    fill(buf, 0x44);
    int ret = vd_pwrite(d, buf, BLK, 0, 0);
    if (ret == 0) {
        ret = vd_flush(d);  /* the L2 update may be written back at the flush */
    }
    assert_int_equal(ret, -EIO);
    vd_close(d);
    assert_check_clean(f);
}

/* ---- counts -------------------------------------------------------------------------------- */

static void test_counts(void **state)
{
    fixture *f = *state;
    uint8_t buf[BLK];
    count_into(f, f->counts);
    /* Raw with the format given: no probe, so every request here is one of ours. */
    vd_disk *d = open_rules(f, "write#2=EIO;read#1=EIO", f->raw, "raw", VD_OPEN_UNMAP);
    fill(buf, 3);
    assert_int_equal(vd_pread(d, buf, BLK, 0), -EIO);  /* failed requests count too */
    assert_int_equal(vd_pread(d, buf, BLK, 0), 0);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), 0);
    assert_int_equal(vd_pwrite(d, buf, BLK, 0, 0), -EIO);
    assert_int_equal(vd_pwrite_zeroes(d, 0, BLK, 0), 0);
    assert_int_equal(vd_pdiscard(d, 0, BLK), 0);
    assert_int_equal(vd_flush(d), 0);
    vd_close(d);  /* nothing written since the flush: no flush at close */

    d = open_rules(f, "", f->raw, "raw", 0);  /* no requests at all */
    vd_close(d);
    d = open_rules(f, "", f->raw, NULL, 0);   /* probing reads through the filter */
    vd_close(d);
    count_into(f, NULL);

    char text[256] = "";
    FILE *cf = fopen(f->counts, "r");
    assert_non_null(cf);
    size_t n = fread(text, 1, sizeof(text) - 1, cf);
    fclose(cf);
    text[n] = '\0';
    assert_string_equal(text, "reads=2 writes=4 flushes=1\n"
                              "reads=0 writes=0 flushes=0\n"
                              "reads=1 writes=0 flushes=0\n");
}

/* Requests from many threads are all counted. */
typedef struct reader_arg {
    vd_disk *d;
    int n;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    uint8_t buf[512];
    for (int i = 0; i < a->n; i++) {
        if (vd_pread(a->d, buf, sizeof(buf), (uint64_t)i * 512) != 0) {
            return p;
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    fixture *f = *state;
    count_into(f, f->counts);
    vd_open_opts o = {.format = "raw", .flags = 0};
    char spec[320];
    snprintf(spec, sizeof(spec), "blkdebug::%s", f->raw);
    vd_disk *d = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_open(f->e, spec, &o, &d, &err), 0);
    pthread_t t[4];
    reader_arg a = {.d = d, .n = 2000};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&t[i], NULL, reader, &a), 0);
    }
    for (int i = 0; i < 4; i++) {
        void *r = &a;
        pthread_join(t[i], &r);
        assert_null(r);
    }
    vd_close(d);
    count_into(f, NULL);
    char text[128] = "";
    FILE *cf = fopen(f->counts, "r");
    assert_non_null(cf);
    assert_non_null(fgets(text, sizeof(text), cf));
    fclose(cf);
    assert_string_equal(text, "reads=8000 writes=0 flushes=0\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),
        cmocka_unit_test_setup_teardown(test_parse_errors, setup, teardown),
        cmocka_unit_test(test_parse_limits),
        cmocka_unit_test_setup_teardown(test_config_read_aio, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_once_sector_iotype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_states, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_zeroes_discard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qcow2_passthrough, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qcow2_each_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qcow2_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
