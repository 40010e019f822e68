/* Private to src/compress: the context layout shared by the registry (codec.c) and the
 * backends (codec-deflate.c, codec-zstd.c). Each backend keeps its compression state and
 * its decompression state apart and creates each on first use, so a context that only
 * ever decompresses never pays for a compressor. */
#ifndef VD_CODEC_IMPL_H
#define VD_CODEC_IMPL_H

#include "compress/codec.h"

struct vd_codec_ctx {
    const vd_codec *codec;
    int level;
    void *cstate;              /* backend compressor, NULL until the first compress */
    void *dstate;              /* backend decompressor, NULL until the first decompress */
    struct vd_codec_ctx *next; /* link in the idle cache */
};

size_t vd_deflate_bound(size_t len);
ssize_t vd_deflate_compress(vd_codec_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
                            size_t cap);
int vd_deflate_decompress(vd_codec_ctx *ctx, const uint8_t *src, size_t src_len, uint8_t *dst,
                          size_t dst_len);
void vd_deflate_release(vd_codec_ctx *ctx);

size_t vd_zstd_bound(size_t len);
ssize_t vd_zstd_compress(vd_codec_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
                         size_t cap);
int vd_zstd_decompress(vd_codec_ctx *ctx, const uint8_t *src, size_t src_len, uint8_t *dst,
                       size_t dst_len);
void vd_zstd_release(vd_codec_ctx *ctx);

#endif
