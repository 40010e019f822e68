/* The codec registry: one entry per qcow2 compression type. This issue needs decoding only
 * (reading compressed clusters that qemu-img wrote); the compression issue adds encoders,
 * level ranges and the threaded pool to the same table. */
#ifndef VD_CODEC_H
#define VD_CODEC_H

#include <stddef.h>
#include <stdint.h>

typedef struct vd_codec {
    int id;            /* qcow2 compression_type: 0 deflate ("zlib"), 1 zstd */
    const char *name;
    /* Decodes src into exactly dst_len bytes. Trailing input after the stream is ignored
     * (qcow2's sector-rounded length over-reads); a stream that cannot fill dst, or that is
     * malformed, gives -EIO. Never writes past dst_len. */
    int (*decompress)(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len);
} vd_codec;

/* NULL for an unknown id. */
const vd_codec *vd_codec_by_id(int id);

#endif
