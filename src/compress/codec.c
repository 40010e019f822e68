/* Decoders for qcow2 compressed clusters: raw deflate (QEMU's "zlib" type) and zstd. */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "compress/codec.h"

/* QEMU writes raw deflate with a 4 KiB window; inflating with the largest window accepts
 * that and anything else a writer may have produced. Output must fill the cluster; extra
 * input is fine (it is the head of the next stream). */
static int deflate_decompress(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -15) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int r = inflate(&z, Z_FINISH);
    int ok = (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && z.avail_out == 0;
    inflateEnd(&z);
    return ok ? 0 : -EIO;
}

/* zstd: frames are decoded until the cluster is full; an error, an unfinished frame or no
 * progress is -EIO, so content larger than a cluster fails (as in QEMU). */
static int zstd_decompress(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx) {
        return -ENOMEM;
    }
    ZSTD_inBuffer in = {src, src_len, 0};
    ZSTD_outBuffer out = {dst, dst_len, 0};
    int ret = 0;
    while (out.pos < out.size) {
        size_t before_in = in.pos, before_out = out.pos;
        size_t r = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(r)) {
            ret = -EIO;
            break;
        }
        if (r == 0 && out.pos < out.size && in.pos >= in.size) {
            ret = -EIO;  /* the frames ended before the cluster was full */
            break;
        }
        if (in.pos == before_in && out.pos == before_out) {
            ret = -EIO;
            break;
        }
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

static const vd_codec codecs[] = {
    {0, "zlib", deflate_decompress},
    {1, "zstd", zstd_decompress},
};

const vd_codec *vd_codec_by_id(int id)
{
    for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++) {
        if (codecs[i].id == id) {
            return &codecs[i];
        }
    }
    return NULL;
}
