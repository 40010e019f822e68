/* libFuzzer target: the fast variant of fuzz-qcow2-open for long runs. Each input is a
 * small image (at most 64 KiB; run with -max_len=65536), opened once as qcow2, read-only,
 * read at a few places and walked with block status; then, if it opened, once more
 * read-write for one allocating write. The full target adds the probed open, check,
 * zeroes and discard on images up to 1 MiB, at a tenth of the speed. Backing files are
 * never opened. */
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
static uint8_t buf[16 * 1024];

static void setup(void)
{
    engine = vd_engine_new();
    image_fd = memfd_create("fuzz-image", MFD_CLOEXEC);
    if (!engine || image_fd < 0) {
        perror("fuzz-qcow2-read: setup");
        abort();
    }
    snprintf(image_path, sizeof(image_path), "/proc/self/fd/%d", image_fd);
}

static void store_input(const uint8_t *data, size_t size)
{
    if (ftruncate(image_fd, 0) < 0) {
        abort();
    }
    for (size_t done = 0; done < size;) {
        ssize_t n = pwrite(image_fd, data + done, size - done, (off_t)done);
        if (n <= 0) {
            abort();
        }
        done += (size_t)n;
    }
}

static vd_disk *open_image(unsigned flags)
{
    vd_open_opts opts = {.format = "qcow2", .flags = flags | VD_OPEN_NO_BACKING};
    vd_disk *d = NULL;
    vd_error *err = NULL;
    if (vd_open(engine, image_path, &opts, &d, &err) < 0) {
        if (!err || !vd_error_msg(err) || !vd_error_msg(err)[0] || d) {
            fprintf(stderr, "a refused open must give a message and no disk\n");
            abort();
        }
        vd_error_free(err);
        return NULL;
    }
    if (err || !d) {
        abort();
    }
    return d;
}

static void read_range(vd_disk *d, uint64_t off, uint64_t len)
{
    uint64_t size = vd_disk_size(d);
    if (off >= size) {
        return;
    }
    len = len < size - off ? len : size - off;
    len = len < sizeof(buf) ? len : sizeof(buf);
    if (len) {
        (void)vd_pread(d, buf, len, off);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!engine) {
        setup();
    }
    store_input(data, size);

    vd_disk *d = open_image(0);
    if (!d) {
        return 0;
    }
    uint64_t vsize = vd_disk_size(d);
    read_range(d, 0, sizeof(buf));
    read_range(d, (vsize / 2) & ~511ull, 4096 + 7);
    read_range(d, vsize > 4096 ? vsize - 4096 : 0, 4096);
    read_range(d, 12345, 777);
    uint64_t off = 0;
    for (int i = 0; i < 32 && off < vsize; i++) {
        vd_extent st;
        memset(&st, 0, sizeof(st));
        if (vd_block_status(d, off, vsize - off, &st) < 0) {
            break;
        }
        if (st.length == 0 || st.length > vsize - off) {
            fprintf(stderr, "block status length %llu at %llu is out of range\n",
                    (unsigned long long)st.length, (unsigned long long)off);
            abort();
        }
        off += st.length;
    }
    vd_close(d);

    /* The memfd is private to the process, so writing to it is harmless. */
    d = open_image(VD_OPEN_RDWR);
    if (d) {
        vsize = vd_disk_size(d);
        if (vsize >= 4096) {
            memset(buf, 0x5a, 4096);
            (void)vd_pwrite(d, buf, 4096, (vsize / 3) & ~511ull, 0);
        }
        (void)vd_flush(d);
        vd_close(d);
    }
    return 0;
}
