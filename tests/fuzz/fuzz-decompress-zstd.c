/* libFuzzer target for the zstd cluster decoder: the first byte picks the cluster size
 * (512 bytes to 2 MiB) and a compression level, the rest is the compressed data (frames,
 * skippable frames, trailing bytes). The decoder must return 0 or -EIO and never touch
 * memory outside its buffers: both end at an inaccessible page, since the decoding
 * libraries are not built with ASan. Whatever it accepts must come back unchanged from a
 * compress and decompress round trip at that level. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compress/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CODEC_ID 1
#define MAX_ROUNDTRIP_LEVEL 9 /* higher levels are too slow for fuzzing 2 MiB clusters */

/* One decoder context for the whole run, as a cached context is reused across clusters:
 * a bad stream must not leave it unable to decode the next one. */
static vd_codec_ctx *ctx;

/* len bytes that end exactly where an inaccessible page begins. */
typedef struct {
    uint8_t *map;
    size_t map_len;
} fenced;

static uint8_t *fenced_alloc(fenced *f, size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (len + page - 1) / page * page;
    f->map_len = body + page;
    f->map = mmap(NULL, f->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->map == MAP_FAILED || mprotect(f->map + body, page, PROT_NONE) != 0) {
        abort();
    }
    return f->map + body - len;
}

static void fenced_free(fenced *f)
{
    munmap(f->map, f->map_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const vd_codec *c = vd_codec_by_id(CODEC_ID);
    if (!c || size < 1) {
        return 0;
    }
    /* Low nibble: the cluster size, 512 B .. 2 MiB; high nibble: the level. */
    size_t dst_len = (size_t)512 << ((data[0] & 0x0f) % 13);
    int level = c->min_level + (data[0] >> 4) % MAX_ROUNDTRIP_LEVEL;
    if (level > c->max_level) {
        level = c->max_level;
    }
    if (!ctx) {
        ctx = vd_codec_ctx_new(c, level);
        if (!ctx) {
            abort();
        }
    }
    size_t src_len = size - 1;
    fenced src_f, dst_f;
    uint8_t *src = fenced_alloc(&src_f, src_len);
    uint8_t *dst = fenced_alloc(&dst_f, dst_len);
    memcpy(src, data + 1, src_len);
    int r = vd_codec_decompress(ctx, src, src_len, dst, dst_len);
    if (r != 0 && r != -EIO) {
        fprintf(stderr, "decompress returned %d\n", r);
        abort();
    }
    if (r == 0) {
        /* The one-off entry point agrees. */
        uint8_t *again = malloc(dst_len);
        if (!again || vd_codec_decompress_once(NULL, c, src, src_len, again, dst_len) != 0 ||
            memcmp(again, dst, dst_len) != 0) {
            abort();
        }
        /* Round trip what was accepted. */
        size_t cap = c->bound(dst_len);
        uint8_t *comp = malloc(cap);
        vd_codec_ctx *cctx = vd_codec_ctx_get(NULL, c, level);
        if (!comp || !cctx) {
            abort();
        }
        ssize_t n = vd_codec_compress(cctx, dst, dst_len, comp, cap);
        vd_codec_ctx_put(NULL, cctx);
        if (n <= 0 || vd_codec_decompress(ctx, comp, (size_t)n, again, dst_len) != 0 ||
            memcmp(again, dst, dst_len) != 0) {
            fprintf(stderr, "round trip of an accepted cluster failed (%zd)\n", n);
            abort();
        }
        free(comp);
        free(again);
    }
    fenced_free(&dst_f);
    fenced_free(&src_f);
    return 0;
}
