/* zstd for qcow2's "zstd" compression type: one frame per cluster with the content size in
 * its header and no checksum, as QEMU writes. The compressor is a reused ZSTD_CCtx with the
 * level set once. Decoding goes frame by frame straight into the cluster buffer, so the
 * decoder needs no window buffer of its own: its memory does not depend on what a hostile
 * frame header claims, which matters for contexts that sit in the idle cache. */
#include <errno.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "compress/codec-impl.h"

size_t vd_zstd_bound(size_t len)
{
    size_t b = ZSTD_compressBound(len);
    return ZSTD_isError(b) ? SIZE_MAX : b;
}

static ZSTD_CCtx *cctx_new(int level)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (!cctx) {
        return NULL;
    }
    if (ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0))) {
        ZSTD_freeCCtx(cctx);
        return NULL;
    }
    return cctx;
}

ssize_t vd_zstd_compress(vd_codec_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
                         size_t cap)
{
    if (!ctx->cstate) {
        ctx->cstate = cctx_new(ctx->level);
        if (!ctx->cstate) {
            return -ENOMEM;
        }
    }
    /* One-shot: the frame header gets the content size, and the parameters adapt to len. */
    size_t r = ZSTD_compress2(ctx->cstate, dst, cap, src, len);
    if (ZSTD_isError(r)) {
        if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall) {
            return -ENOSPC;
        }
        /* A failed call may leave the session half done; start the next one afresh. */
        ZSTD_CCtx_reset(ctx->cstate, ZSTD_reset_session_only);
        return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? -ENOMEM : -EIO;
    }
    return (ssize_t)r;
}

int vd_zstd_decompress(vd_codec_ctx *ctx, const uint8_t *src, size_t src_len, uint8_t *dst,
                       size_t dst_len)
{
    if (!ctx->dstate) {
        ctx->dstate = ZSTD_createDCtx();
        if (!ctx->dstate) {
            return -ENOMEM;
        }
    }
    /* Frames are decoded until dst is full; what follows is qcow2's padding (or the head of
     * the next cluster) and is never looked at. A frame must lie wholly inside src, and its
     * content must fit in what is left of dst: a larger declared size or more actual content
     * (a bomb) fails in ZSTD_decompressDCtx. Each frame consumes at least its header, so
     * the loop ends. */
    size_t in_pos = 0, out_pos = 0;
    while (out_pos < dst_len) {
        if (in_pos >= src_len) {
            return -EIO; /* the frames ended before dst was full */
        }
        size_t fsize = ZSTD_findFrameCompressedSize(src + in_pos, src_len - in_pos);
        if (ZSTD_isError(fsize) || fsize == 0) {
            return -EIO;
        }
        size_t n = ZSTD_decompressDCtx(ctx->dstate, dst + out_pos, dst_len - out_pos,
                                       src + in_pos, fsize);
        if (ZSTD_isError(n)) {
            return ZSTD_getErrorCode(n) == ZSTD_error_memory_allocation ? -ENOMEM : -EIO;
        }
        in_pos += fsize;
        out_pos += n;
    }
    return 0;
}

void vd_zstd_release(vd_codec_ctx *ctx)
{
    ZSTD_freeCCtx(ctx->cstate);
    ctx->cstate = NULL;
    ZSTD_freeDCtx(ctx->dstate);
    ctx->dstate = NULL;
}
