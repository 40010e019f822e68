/* Raw deflate for qcow2's "zlib" compression type. QEMU reads it with a 4 KiB window, so
 * every writer here keeps matches within 4 KiB. Levels on zlib's scale:
 *   1-2 ISA-L igzip level 1, 3-4 ISA-L 2, 5 ISA-L 3: 6-10x zlib's speed, 6-9% larger;
 *   6 (default) ISA-L 3 for most clusters and zlib level 5 for a fixed share of them,
 *     picked by a hash of their content: on real filesystem data this stays within 4%
 *     of QEMU's zlib-6 output at more than twice ISA-L-3-alone's cost per byte, still
 *     ~2.5x zlib's speed (measured in bench/codec-speed.c and issue 3's note);
 *   7-9 zlib with a 4 KiB window, QEMU's own encoder, for the smallest output.
 * Decoding uses libdeflate, which is bounded on both buffers and needs no per-call setup. */
#include <errno.h>
#include <isa-l/igzip_lib.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "compress/codec-impl.h"

#define DEFLATE_WINDOW_BITS 12 /* QEMU's: a 4 KiB window */
#define ZLIB_MEM_LEVEL 9
#define ISAL_TOP_LEVEL 6 /* highest zlib-scale level served (mostly) by ISA-L */
#define BLEND_LEVEL 6     /* the level that mixes in zlib ... */
#define BLEND_ZLIB_LEVEL 5
#define BLEND_PERCENT 40  /* ... for this share of clusters */

typedef struct deflate_cstate {
    bool use_zlib;       /* levels 7..9: zlib only */
    bool blend;          /* level 6: ISA-L, and zlib for BLEND_PERCENT of the inputs */
    z_stream z;          /* levels 6..9: initialised once, reset per call */
    uint32_t isal_level; /* levels 1..6 */
    uint8_t *level_buf;
    uint32_t level_buf_size;
    struct isal_zstream zs;
} deflate_cstate;

/* zlib-scale level -> ISA-L level and the working buffer ISA-L wants for it. */
static void isal_level_for(int level, uint32_t *isal_level, uint32_t *buf_size)
{
    if (level <= 2) {
        *isal_level = 1;
        *buf_size = ISAL_DEF_LVL1_DEFAULT;
    } else if (level <= 4) {
        *isal_level = 2;
        *buf_size = ISAL_DEF_LVL2_DEFAULT;
    } else {
        *isal_level = 3;
        *buf_size = ISAL_DEF_LVL3_DEFAULT;
    }
}

static deflate_cstate *cstate_new(int level)
{
    deflate_cstate *cs = calloc(1, sizeof(*cs));
    if (!cs) {
        return NULL;
    }
    if (level > ISAL_TOP_LEVEL) {
        cs->use_zlib = true;
        if (deflateInit2(&cs->z, level, Z_DEFLATED, -DEFLATE_WINDOW_BITS, ZLIB_MEM_LEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            free(cs);
            return NULL;
        }
        return cs;
    }
    isal_level_for(level, &cs->isal_level, &cs->level_buf_size);
    cs->level_buf = malloc(cs->level_buf_size);
    if (!cs->level_buf) {
        free(cs);
        return NULL;
    }
    if (level == BLEND_LEVEL) {
        if (deflateInit2(&cs->z, BLEND_ZLIB_LEVEL, Z_DEFLATED, -DEFLATE_WINDOW_BITS,
                         ZLIB_MEM_LEVEL, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(cs->level_buf);
            free(cs);
            return NULL;
        }
        cs->blend = true;
    }
    return cs;
}

static void cstate_free(deflate_cstate *cs)
{
    if (!cs) {
        return;
    }
    if (cs->use_zlib || cs->blend) {
        deflateEnd(&cs->z);
    }
    free(cs->level_buf);
    free(cs);
}

size_t vd_deflate_bound(size_t len)
{
    if (len > SIZE_MAX / 4) {
        return SIZE_MAX;
    }
    /* zlib with a small window falls back to fixed Huffman codes at worst (a 9-bit code per
     * literal plus block headers); stored blocks cost 5 bytes per 64 KiB and ISA-L stays
     * within input plus stored headers. Take the largest, with slack for the headers. */
    size_t fixed = len + (len >> 3) + (len >> 8) + (len >> 9) + 4;
    size_t stored = len + 5 * (len / 65535 + 1) + 7;
    size_t isal = len + 5 * (len / 65535 + 1) + ISAL_DEF_MAX_HDR_SIZE;
    size_t b = fixed > stored ? fixed : stored;
    return (b > isal ? b : isal) + 16;
}

static ssize_t compress_zlib(deflate_cstate *cs, const uint8_t *src, size_t len, uint8_t *dst,
                             size_t cap)
{
    if (deflateReset(&cs->z) != Z_OK) {
        return -EIO;
    }
    cs->z.next_in = (Bytef *)src;
    cs->z.avail_in = (uInt)len;
    cs->z.next_out = dst;
    cs->z.avail_out = (uInt)cap;
    int r = deflate(&cs->z, Z_FINISH);
    if (r == Z_STREAM_END) {
        return (ssize_t)(cap - cs->z.avail_out);
    }
    /* Z_OK or Z_BUF_ERROR with the output full: it does not fit. */
    return (r == Z_OK || r == Z_BUF_ERROR) ? -ENOSPC : -EIO;
}

static ssize_t compress_isal(deflate_cstate *cs, const uint8_t *src, size_t len, uint8_t *dst,
                             size_t cap)
{
    struct isal_zstream *zs = &cs->zs;
    isal_deflate_stateless_init(zs);
    zs->level = cs->isal_level;
    zs->level_buf = cs->level_buf;
    zs->level_buf_size = cs->level_buf_size;
    zs->hist_bits = DEFLATE_WINDOW_BITS;
    zs->gzip_flag = IGZIP_DEFLATE;
    zs->flush = NO_FLUSH;
    zs->end_of_stream = 1;
    zs->next_in = (uint8_t *)src;
    zs->avail_in = (uint32_t)len;
    zs->next_out = dst;
    zs->avail_out = (uint32_t)cap;
    int r = isal_deflate_stateless(zs);
    if (r == COMP_OK) {
        return (ssize_t)zs->total_out;
    }
    return r == STATELESS_OVERFLOW ? -ENOSPC : -EIO;
}

/* Level 6's choice for one input: a hash of a few words spread over it, so the same data
 * always gets the same encoder (reproducible images) whichever thread compresses it, and
 * the share is spread evenly over all kinds of data. */
static bool blend_pick(const uint8_t *src, size_t len)
{
    uint64_t x = 0x9e3779b97f4a7c15ull ^ len;
    size_t step = len / 16 >= 8 ? len / 16 : 8;
    for (size_t i = 0; i + 8 <= len; i += step) {
        uint64_t w;
        memcpy(&w, src + i, sizeof(w));
        x = (x ^ w) * 0xff51afd7ed558ccdull;
        x ^= x >> 33;
    }
    return x % 100 < BLEND_PERCENT;
}

ssize_t vd_deflate_compress(vd_codec_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
                            size_t cap)
{
    /* Both backends count in 32 bits; clusters are at most 2 MiB. */
    if (len > UINT32_MAX) {
        return -EINVAL;
    }
    if (cap > UINT32_MAX) {
        cap = UINT32_MAX;
    }
    if (!ctx->cstate) {
        ctx->cstate = cstate_new(ctx->level);
        if (!ctx->cstate) {
            return -ENOMEM;
        }
    }
    deflate_cstate *cs = ctx->cstate;
    bool zlib = cs->use_zlib || (cs->blend && blend_pick(src, len));
    return zlib ? compress_zlib(cs, src, len, dst, cap) : compress_isal(cs, src, len, dst, cap);
}

int vd_deflate_decompress(vd_codec_ctx *ctx, const uint8_t *src, size_t src_len, uint8_t *dst,
                          size_t dst_len)
{
    if (!ctx->dstate) {
        ctx->dstate = libdeflate_alloc_decompressor();
        if (!ctx->dstate) {
            return -ENOMEM;
        }
    }
    size_t in_used = 0;
    /* Without an actual-output pointer libdeflate insists on exactly dst_len bytes: shorter
     * content is SHORT_OUTPUT and longer (a bomb) is INSUFFICIENT_SPACE, both -EIO. The
     * _ex variant stops at the end of the stream, ignoring qcow2's sector padding. */
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(ctx->dstate, src, src_len, dst,
                                                                dst_len, &in_used, NULL);
    return r == LIBDEFLATE_SUCCESS ? 0 : -EIO;
}

void vd_deflate_release(vd_codec_ctx *ctx)
{
    cstate_free(ctx->cstate);
    ctx->cstate = NULL;
    if (ctx->dstate) {
        libdeflate_free_decompressor(ctx->dstate);
        ctx->dstate = NULL;
    }
}
