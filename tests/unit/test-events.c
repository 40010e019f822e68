/* Unit tests for the engine's events: a qcow2 image found corrupt on a write reports
 * BLOCK_IMAGE_CORRUPTED once (fatal, naming the image and the overlap), and an engine
 * without a handler just fails the request. */
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

#include "vdisk/vdisk.h"

#define CLUSTER 65536

typedef struct seen {
    int count;
    char type[64], image[300], msg[400];
    bool fatal;
} seen;

static void on_event(void *opaque, const vd_event *ev)
{
    seen *s = opaque;
    s->count++;
    snprintf(s->type, sizeof(s->type), "%s", ev->type);
    snprintf(s->image, sizeof(s->image), "%s", ev->image);
    snprintf(s->msg, sizeof(s->msg), "%s", ev->msg);
    s->fatal = ev->fatal;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

/* An image whose first L2 entry points into its own L1 table. */
static void make_corrupt(const char *path)
{
    vd_engine *e = vd_engine_new();
    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    assert_int_equal(vd_create(e, path, "qcow2", 16 * CLUSTER, o, 0, &err), 0);
    vd_opts_free(o);
    vd_disk *d = NULL;
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    assert_int_equal(vd_open(e, path, &oo, &d, &err), 0);
    static uint8_t buf[CLUSTER];
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(vd_pwrite(d, buf, sizeof(buf), 0, 0), 0);
    assert_int_equal(vd_close(d), 0);
    vd_engine_free(e);

    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    uint8_t hdr[48];
    assert_int_equal(fread(hdr, 1, sizeof(hdr), f), sizeof(hdr));
    uint64_t l1 = be64(hdr + 40);
    uint8_t l1e[8];
    assert_int_equal(fseek(f, (long)l1, SEEK_SET), 0);
    assert_int_equal(fread(l1e, 1, 8, f), 8);
    uint64_t l2 = be64(l1e) & 0x00fffffffffffe00ull;
    uint64_t bad = (1ull << 63) | l1;   /* COPIED, host cluster = the L1 table */
    uint8_t e8[8];
    for (int i = 0; i < 8; i++) {
        e8[i] = (uint8_t)(bad >> (56 - 8 * i));
    }
    assert_int_equal(fseek(f, (long)l2, SEEK_SET), 0);
    assert_int_equal(fwrite(e8, 1, 8, f), 8);
    assert_int_equal(fclose(f), 0);
}

static void test_corruption_reported_once(void **state)
{
    (void)state;
    char path[] = "/tmp/vdisk-events-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    make_corrupt(path);

    vd_engine *e = vd_engine_new();
    seen s;
    memset(&s, 0, sizeof(s));
    vd_engine_set_event_handler(e, on_event, &s);
    vd_disk *d = NULL;
    vd_error *err = NULL;
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    assert_int_equal(vd_open(e, path, &oo, &d, &err), 0);
    static uint8_t buf[CLUSTER];
    memset(buf, 0x6b, sizeof(buf));
    assert_int_equal(vd_pwrite(d, buf, sizeof(buf), 0, 0), -EIO);
    assert_int_equal(vd_pwrite(d, buf, sizeof(buf), 0, 0), -EIO);
    assert_int_equal(s.count, 1);
    assert_string_equal(s.type, "BLOCK_IMAGE_CORRUPTED");
    assert_string_equal(s.image, path);
    assert_true(s.fatal);
    assert_non_null(strstr(s.msg, "active L1 table"));
    vd_close(d);

    /* Without a handler the request just fails (a fresh copy: the first is marked corrupt
     * now and no longer opens read-write). */
    make_corrupt(path);
    memset(&s, 0, sizeof(s));
    vd_engine_set_event_handler(e, NULL, NULL);
    assert_int_equal(vd_open(e, path, &oo, &d, &err), 0);
    assert_int_equal(vd_pwrite(d, buf, sizeof(buf), 0, 0), -EIO);
    assert_int_equal(s.count, 0);
    vd_close(d);
    vd_engine_free(e);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corruption_reported_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
