/* The engine's graph of named nodes (src/block/graph.c): nodes shared by name as a file or
 * backing child, QEMU's permission rules with its messages (each one as
 * qemu-storage-daemon 7.2 gave it for the same commands), the refusals of blockdev-del,
 * listing, one node seen by every user that shares it, and registries that stay per
 * engine. */
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

#include "vdisk/graph.h"
#include "vdisk/vdisk.h"

static char dir[] = "/tmp/vdisk-test-graph.XXXXXX";
static char img_a[128], img_b[128];

static void make_image(vd_engine *e, const char *path)
{
    vd_error *err = NULL;
    assert_int_equal(vd_create(e, path, "qcow2", 64u << 20, NULL, 0, &err), 0);
}

/* blockdev-add of a JSON object, expecting success (msg NULL) or exactly msg. */
static void add(vd_engine *e, const char *json, const char *msg)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tree_parse_json(json, strlen(json), &t, &err), 0);
    int ret = vd_blockdev_add(e, t, VD_OPEN_RDWR, &err);
    if (!msg) {
        if (ret < 0) {
            fail_msg("%s: %s", json, vd_error_msg(err));
        }
        return;
    }
    assert_true(ret < 0);
    assert_string_equal(vd_error_msg(err), msg);
    vd_error_free(err);
}

static void del(vd_engine *e, const char *name, const char *msg)
{
    vd_error *err = NULL;
    int ret = vd_blockdev_del(e, name, &err);
    if (!msg) {
        if (ret < 0) {
            fail_msg("del %s: %s", name, vd_error_msg(err));
        }
        return;
    }
    assert_true(ret < 0);
    assert_string_equal(vd_error_msg(err), msg);
    vd_error_free(err);
}

static vd_disk *handle(vd_engine *e, const char *name)
{
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_blockdev_open(e, name, &d, &err) < 0) {
        fail_msg("open %s: %s", name, vd_error_msg(err));
    }
    return d;
}

static char *json(const char *fmt, const char *path)
{
    char *s = NULL;
    assert_true(asprintf(&s, fmt, path) > 0);
    return s;
}

static void add_f0_q1(vd_engine *e)
{
    char *f0 = json("{\"driver\": \"file\", \"node-name\": \"f0\", \"filename\": \"%s\"}",
                    img_a);
    add(e, f0, NULL);
    add(e, "{\"driver\": \"qcow2\", \"node-name\": \"q1\", \"file\": \"f0\"}", NULL);
    free(f0);
}

static void test_shared_file(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    add_f0_q1(e);
    add(e, "{\"driver\": \"qcow2\", \"node-name\": \"q2\", \"file\": \"f0\"}",
        "Permission conflict on node 'f0': permissions 'write, resize' are both required by "
        "node 'q1' (uses node 'f0' as 'file' child) and unshared by node 'q2' (uses node "
        "'f0' as 'file' child).");
    add(e, "{\"driver\": \"qcow2\", \"node-name\": \"q3\", \"file\": \"f0\", "
           "\"read-only\": true}",
        "Permission conflict on node 'f0': permissions 'write, resize' are both required by "
        "node 'q1' (uses node 'f0' as 'file' child) and unshared by node 'q3' (uses node "
        "'f0' as 'file' child).");
    /* raw passes its users' permissions through: none yet. */
    add(e, "{\"driver\": \"raw\", \"node-name\": \"r1\", \"file\": \"f0\"}", NULL);
    add(e, "{\"driver\": \"raw\", \"node-name\": \"r2\", \"file\": \"nosuch\"}",
        "Cannot find device='nosuch' nor node-name='nosuch'");
    add(e, "{\"driver\": \"raw\", \"node-name\": \"q1\", \"file\": \"f0\"}",
        "Duplicate nodes with node-name='q1'");

    vd_blockdev_info *l = NULL;
    size_t nb = 0;
    assert_int_equal(vd_blockdev_list(e, &l, &nb), 0);
    assert_int_equal(nb, 3);
    assert_string_equal(l[0].node_name, "r1");
    assert_string_equal(l[1].node_name, "q1");
    assert_string_equal(l[2].node_name, "f0");
    assert_string_equal(l[1].driver, "qcow2");
    assert_string_equal(l[1].file_child, "f0");
    assert_string_equal(l[0].file_child, "f0");
    assert_null(l[2].file_child);
    assert_true(l[1].added && !l[1].read_only);
    vd_blockdev_list_free(l, nb);

    del(e, "f0", "Block device f0 is in use");
    del(e, "q1", NULL);
    del(e, "f0", "Block device f0 is in use");
    del(e, "r1", NULL);
    del(e, "f0", NULL);
    del(e, "f0", "Failed to find node with node-name='f0'");
    assert_int_equal(vd_blockdev_list(e, &l, &nb), 0);
    assert_int_equal(nb, 0);
    vd_blockdev_list_free(l, nb);
    vd_engine_free(e);
}

/* A backing file given by name is the same node: data written through its own handle is
 * what the overlay reads where it has nothing of its own. */
static void test_backing_by_name(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    add_f0_q1(e);
    char *b1 = json("{\"driver\": \"qcow2\", \"node-name\": \"b1\", \"backing\": \"q1\", "
                    "\"file\": {\"driver\": \"file\", \"filename\": \"%s\"}}", img_b);
    add(e, b1, NULL);
    free(b1);

    vd_blockdev_info *l = NULL;
    size_t nb = 0;
    assert_int_equal(vd_blockdev_list(e, &l, &nb), 0);
    assert_int_equal(nb, 4);
    assert_string_equal(l[0].node_name, "b1");
    assert_string_equal(l[0].backing_child, "q1");
    assert_true(l[1].node_name[0] == '#');            /* b1's file, named automatically */
    assert_string_equal(l[0].file_child, l[1].node_name);
    char *auto_name = strdup(l[1].node_name);
    vd_blockdev_list_free(l, nb);

    vd_disk *top = handle(e, "b1"), *base = handle(e, "q1");
    uint8_t buf[4096], got[4096];
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(vd_pwrite(base, buf, sizeof(buf), 1 << 20, 0), 0);
    assert_int_equal(vd_pread(top, got, sizeof(got), 1 << 20), 0);
    assert_memory_equal(got, buf, sizeof(buf));
    memset(buf, 0xa5, sizeof(buf));
    assert_int_equal(vd_pwrite(top, buf, sizeof(buf), 0, 0), 0);
    assert_int_equal(vd_pread(base, got, sizeof(got), 0), 0);
    memset(buf, 0, sizeof(buf));
    assert_memory_equal(got, buf, sizeof(buf));

    del(e, "q1", "Node 'q1' is busy: node is used as backing hd of 'b1'");
    char msg[96];
    snprintf(msg, sizeof(msg), "Node %s is not owned by the monitor", auto_name);
    del(e, auto_name, msg);
    free(auto_name);
    assert_int_equal(vd_close(base), 0);
    assert_int_equal(vd_close(top), 0);
    /* The registry's references go with the engine. */
    vd_engine_free(e);
}

/* Handles claim what their users need, as exports and block_resize do in QEMU. */
static void test_claims(void **state)
{
    (void)state;
    vd_engine *e = vd_engine_new();
    add_f0_q1(e);
    vd_disk *f = handle(e, "f0");
    vd_perm_claim *c = NULL, *c2 = NULL;
    vd_error *err = NULL;
    /* A writable export of the file under q1. */
    assert_true(vd_disk_claim(f, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE,
                              VD_PERM_ALL & ~VD_PERM_RESIZE, &c, &err) < 0);
    assert_string_equal(vd_error_msg(err), "Permission conflict on node 'f0': "
                        "permissions 'write' are both required by an unnamed block device "
                        "(uses node 'f0' as 'root' child) and unshared by node 'q1' (uses "
                        "node 'f0' as 'file' child).");
    vd_error_free(err);
    err = NULL;
    /* A read-only one. */
    assert_true(vd_disk_claim(f, VD_PERM_CONSISTENT_READ, VD_PERM_ALL & ~VD_PERM_RESIZE, &c,
                              &err) < 0);
    assert_string_equal(vd_error_msg(err), "Permission conflict on node 'f0': "
                        "permissions 'resize' are both required by node 'q1' (uses node "
                        "'f0' as 'file' child) and unshared by an unnamed block device "
                        "(uses node 'f0' as 'root' child).");
    vd_error_free(err);
    err = NULL;
    assert_int_equal(vd_close(f), 0);

    vd_disk *q = handle(e, "q1");
    assert_int_equal(vd_disk_claim(q, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE,
                                   VD_PERM_ALL & ~VD_PERM_RESIZE, &c, &err), 0);
    del(e, "q1", "Node q1 is in use");
    assert_true(vd_disk_claim(q, VD_PERM_RESIZE, VD_PERM_ALL, &c2, &err) < 0);
    assert_string_equal(vd_error_msg(err), "Permission conflict on node 'q1': "
                        "permissions 'resize' are both required by an unnamed block device "
                        "(uses node 'q1' as 'root' child) and unshared by an unnamed block "
                        "device (uses node 'q1' as 'root' child).");
    vd_error_free(err);
    err = NULL;
    vd_disk_unclaim(q, c);
    assert_int_equal(vd_disk_claim(q, VD_PERM_RESIZE, VD_PERM_ALL, &c2, &err), 0);
    vd_disk_unclaim(q, c2);
    del(e, "q1", "Block device q1 is in use");   /* the handle still holds it */
    assert_int_equal(vd_close(q), 0);
    del(e, "q1", NULL);
    del(e, "f0", NULL);
    vd_engine_free(e);
}

/* Each engine has its own registry. */
static void test_engines(void **state)
{
    (void)state;
    vd_engine *e1 = vd_engine_new(), *e2 = vd_engine_new();
    add_f0_q1(e1);
    assert_true(vd_blockdev_exists(e1, "q1"));
    assert_false(vd_blockdev_exists(e2, "q1"));
    add(e2, "{\"driver\": \"qcow2\", \"node-name\": \"x\", \"file\": \"f0\"}",
        "Cannot find device='f0' nor node-name='f0'");
    vd_engine_free(e1);
    vd_engine_free(e2);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir)) {
        return -1;
    }
    snprintf(img_a, sizeof(img_a), "%s/a.qcow2", dir);
    snprintf(img_b, sizeof(img_b), "%s/b.qcow2", dir);
    vd_engine *e = vd_engine_new();
    make_image(e, img_a);
    make_image(e, img_b);
    vd_engine_free(e);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(img_a);
    unlink(img_b);
    rmdir(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_file),
        cmocka_unit_test(test_backing_by_name),
        cmocka_unit_test(test_claims),
        cmocka_unit_test(test_engines),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
