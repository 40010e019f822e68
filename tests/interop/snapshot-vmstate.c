/* Test helper for test-snapshot.sh: the library's VM-state calls, which the vdisk command
 * does not expose (qemu-img cannot either).
 *   snapshot-vmstate save IMAGE NAME BLOB      create snapshot NAME with BLOB's bytes as VM state
 *   snapshot-vmstate load IMAGE NAME OUT LEN   apply NAME, write LEN bytes of its VM state to OUT
 * Built by the test script against the build's libvdisk.a. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/snapshot.h"
#include "vdisk/vdisk.h"

static int fail(const char *what, vd_error *err)
{
    fprintf(stderr, "snapshot-vmstate: %s: %s\n", what, err ? vd_error_msg(err) : "failed");
    vd_error_free(err);
    return 1;
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 5 || (strcmp(argv[1], "save") && strcmp(argv[1], "load")) ||
        (!strcmp(argv[1], "load") && argc != 6)) {
        fprintf(stderr, "usage: snapshot-vmstate save IMAGE NAME BLOB | "
                        "load IMAGE NAME OUT LEN\n");
        return 2;
    }
    vd_engine *e = vd_engine_new();
    vd_disk *d = NULL;
    vd_error *err = NULL;
    vd_open_opts o = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    int ret = 1;
    if (vd_open(e, argv[2], &o, &d, &err) < 0) {
        ret = fail(argv[2], err);
        goto out;
    }
    if (!strcmp(argv[1], "save")) {
        size_t len = 0;
        unsigned char *blob = read_file(argv[4], &len);
        if (!blob) {
            perror(argv[4]);
            goto out;
        }
        if (vd_snapshot_create(d, argv[3], blob, len, false, &err) < 0) {
            ret = fail("create", err);
        } else {
            ret = 0;
        }
        free(blob);
    } else {
        uint64_t len = strtoull(argv[5], NULL, 0);
        unsigned char *buf = calloc(1, len ? len : 1);
        FILE *f = NULL;
        if (vd_snapshot_apply(d, argv[3], &err) < 0) {
            ret = fail("apply", err);
        } else if (vd_vmstate_read(d, buf, len, 0, &err) < 0) {
            ret = fail("vmstate read", err);
        } else if (!(f = fopen(argv[4], "wb")) || fwrite(buf, 1, len, f) != len) {
            perror(argv[4]);
        } else {
            ret = 0;
        }
        if (f) {
            fclose(f);
        }
        free(buf);
    }
out:
    if (d && vd_close(d) < 0 && ret == 0) {
        fprintf(stderr, "snapshot-vmstate: close failed\n");
        ret = 1;
    }
    vd_engine_free(e);
    return ret;
}
