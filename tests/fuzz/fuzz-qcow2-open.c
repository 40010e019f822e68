/* libFuzzer target for the image opener: each input is an image file, opened as qcow2
 * (forced and probed), read at a few places, walked with block status, checked, and
 * written once; any crash, sanitizer report or leak is a bug. Backing files are never
 * opened, so a hostile name cannot make the fuzzer touch other files. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/vdisk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static vd_engine *engine;
static int image_fd = -1;
static char image_path[64];
static uint8_t buf[64 * 1024];

/* The image lives in a memfd (no disk I/O), reopened by vdisk through /proc/self/fd. */
static void setup(void)
{
    engine = vd_engine_new();
    image_fd = memfd_create("fuzz-image", MFD_CLOEXEC);
    if (image_fd < 0) {
        char tmpl[] = "/tmp/fuzz-qcow2-XXXXXX";
        image_fd = mkstemp(tmpl);
        if (image_fd < 0) {
            perror("fuzz-qcow2-open: mkstemp");
            abort();
        }
        unlink(tmpl);
    }
    snprintf(image_path, sizeof(image_path), "/proc/self/fd/%d", image_fd);
    if (!engine) {
        abort();
    }
}

static void store_input(const uint8_t *data, size_t size)
{
    if (ftruncate(image_fd, 0) < 0) {
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(image_fd, data + done, size - done, (off_t)done);
        if (n <= 0) {
            abort();
        }
        done += (size_t)n;
    }
}

static vd_disk *open_image(const char *format, unsigned flags)
{
    vd_open_opts opts = {.format = format, .flags = flags | VD_OPEN_NO_BACKING};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    int ret = vd_open(engine, image_path, &opts, &d, &err);
    if (ret < 0) {
        /* A refused image must come with a message. */
        if (!err || !vd_error_msg(err) || !vd_error_msg(err)[0]) {
            fprintf(stderr, "vd_open failed (%d) without an error message\n", ret);
            abort();
        }
        vd_error_free(err);
        return NULL;
    }
    if (err || !d) {
        abort();  /* success must not leave an error behind */
    }
    return d;
}

static void read_range(vd_disk *d, uint64_t off, uint64_t len)
{
    uint64_t size = vd_disk_size(d);
    if (off >= size) {
        return;
    }
    if (len > size - off) {
        len = size - off;
    }
    if (len > sizeof(buf)) {
        len = sizeof(buf);
    }
    if (len) {
        (void)vd_pread(d, buf, len, off);
    }
}

static void walk_status(vd_disk *d, uint64_t off, int max_steps)
{
    uint64_t size = vd_disk_size(d);
    for (int i = 0; i < max_steps && off < size; i++) {
        vd_extent st;
        memset(&st, 0, sizeof(st));
        if (vd_block_status(d, off, size - off, &st) < 0) {
            break;
        }
        if (st.length == 0 || st.length > size - off) {
            fprintf(stderr, "block status length %llu at %llu is out of range\n",
                    (unsigned long long)st.length, (unsigned long long)off);
            abort();
        }
        off += st.length;
    }
}

#define MSG_MAX 2000

typedef struct msg_seen {
    uint64_t taken;
    bool refused;
} msg_seen;

/* Counts the check's lines; once refused, the check must stop sending them. */
static bool take_msg(void *opaque, const char *line)
{
    msg_seen *m = opaque;
    if (m->refused) {
        fprintf(stderr, "check sent a line after it was refused: %s\n", line);
        abort();
    }
    if (strlen(line) > (1u << 20)) {
        abort();  /* a line names at most a 64 KiB snapshot ID */
    }
    if (m->taken >= MSG_MAX) {
        m->refused = true;
        return false;
    }
    m->taken++;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!engine) {
        setup();
    }
    store_input(data, size);

    /* 1. Forced qcow2, read-only: reads at the start, middle and end, status, info. */
    vd_disk *d = open_image("qcow2", 0);
    if (d) {
        uint64_t vsize = vd_disk_size(d);
        read_range(d, 0, 65536);
        read_range(d, (vsize / 2) & ~511ull, 4096 + 7);
        read_range(d, vsize > 8192 ? vsize - 8192 : 0, 8192);
        read_range(d, 12345, 777);
        walk_status(d, 0, 64);
        walk_status(d, vsize / 3, 8);
        vd_extent st;
        if (vsize) {
            (void)vd_block_status_top(d, 0, vsize, &st);
        }
        vd_image_info info;
        memset(&info, 0, sizeof(info));
        vd_error *err = NULL;
        if (vd_get_info(d, &info, &err) == 0) {
            vd_image_info_clear(&info);
        } else {
            vd_error_free(err);
        }
        vd_close(d);
    }

    /* 2. Probed format, read-only. */
    d = open_image(NULL, 0);
    if (d) {
        read_range(d, 0, 4096);
        walk_status(d, 0, 16);
        vd_close(d);
    }

    /* 3. Consistency check without repair. Its messages are read, and refused after the
     * first MSG_MAX: a hostile image of a few KiB can yield millions of lines, whose
     * formatting would then be all the fuzzer does. */
    d = open_image("qcow2", VD_OPEN_CHECK);
    if (d) {
        vd_check_result res;
        memset(&res, 0, sizeof(res));
        vd_error *err = NULL;
        msg_seen seen = {0};
        vd_check_hooks hooks = {.msg = take_msg, .opaque = &seen};
        if (vd_check_stream(d, 0, &hooks, &res, &err) < 0) {
            vd_error_free(err);
        }
        if (res.log || (res.messages_dropped > 0) != seen.refused) {
            fprintf(stderr, "check dropped %lld lines after %llu, refused: %d\n",
                    (long long)res.messages_dropped, (unsigned long long)seen.taken,
                    seen.refused);
            abort();
        }
        vd_check_result_clear(&res);
        vd_close(d);
    }

    /* 4. Read-write: the open may repair; then an allocating write, zeroes, discard. The
     * memfd is private, so writing to it is harmless. */
    d = open_image("qcow2", VD_OPEN_RDWR);
    if (d) {
        uint64_t vsize = vd_disk_size(d);
        memset(buf, 0xa5, 4096);
        if (vsize >= 4096) {
            (void)vd_pwrite(d, buf, 4096, 0, 0);
            (void)vd_pwrite(d, buf, 1000, (vsize / 2) & ~511ull, 0);
            (void)vd_pwrite_zeroes(d, vsize - 4096, 4096, VD_REQ_MAY_UNMAP);
            (void)vd_pdiscard(d, 0, vsize < 1048576 ? vsize : 1048576);
        }
        (void)vd_flush(d);
        vd_close(d);
    }
    return 0;
}
