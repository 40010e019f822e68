/* The codec registry: one entry per compression type, shared by qcow2 compressed clusters
 * (whole-buffer use, one cluster at a time, on many threads) and, later, the migration
 * stream (streaming use). Each codec has its own level range. Contexts hold a codec's
 * working memory so a thread compressing cluster after cluster allocates nothing per call;
 * a context is used by one thread at a time. */
#ifndef VD_CODEC_H
#define VD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vdisk/vdisk.h"

/* Ids are qcow2's compression_type values. */
enum { VD_CODEC_DEFLATE = 0, VD_CODEC_ZSTD = 1 };

typedef struct vd_codec_ctx vd_codec_ctx;
typedef struct vd_cstream vd_cstream;

typedef struct vd_codec {
    int id;
    const char *name;          /* qcow2's name for the type: "zlib" (raw deflate), "zstd" */
    int min_level, max_level, default_level;
    /* Largest compressed size of len input bytes (for buffers that must never overflow). */
    size_t (*bound)(size_t len);
} vd_codec;

/* NULL for an unknown id or name. */
const vd_codec *vd_codec_by_id(int id);
const vd_codec *vd_codec_by_name(const char *name);
/* "zlib, zstd": the known names, for messages. */
const char *vd_codec_names(void);
/* Checks that level is in the codec's range; else -EINVAL with
 * "compression level N is out of range for NAME (MIN to MAX)". */
int vd_codec_check_level(const vd_codec *c, int level, vd_error **errp);

/* A context for whole-buffer compression at one level (and decompression). NULL on ENOMEM.
 * level must have passed vd_codec_check_level. */
vd_codec_ctx *vd_codec_ctx_new(const vd_codec *c, int level);
void vd_codec_ctx_free(vd_codec_ctx *ctx);
const vd_codec *vd_codec_ctx_codec(const vd_codec_ctx *ctx);
int vd_codec_ctx_level(const vd_codec_ctx *ctx);

/* A cache of idle contexts (each engine has one), for threads that compress one cluster at
 * a time (pool workers, many request threads): get one for (codec, level), use it, put it
 * back. NULL on ENOMEM. A NULL cache makes get a new context and put free it. */
typedef struct vd_codec_cache vd_codec_cache;
vd_codec_cache *vd_codec_cache_new(void);
void vd_codec_cache_free(vd_codec_cache *cache);
vd_codec_ctx *vd_codec_ctx_get(vd_codec_cache *cache, const vd_codec *c, int level);
void vd_codec_ctx_put(vd_codec_cache *cache, vd_codec_ctx *ctx);

/* Compresses src[0..len) into dst as one self-contained stream readable by QEMU for that
 * qcow2 compression type (deflate: raw, window <= 4 KiB; zstd: one frame with the content
 * size). Returns the compressed length, or -ENOSPC when it does not fit in cap bytes (the
 * caller then stores the data uncompressed), or another -errno. */
ssize_t vd_codec_compress(vd_codec_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
                          size_t cap);
/* Decodes src into exactly dst_len bytes. Trailing input after the stream is ignored
 * (qcow2's sector-rounded length over-reads). A malformed stream, one that cannot fill
 * dst, or one whose content is larger than dst_len (a decompression bomb) gives -EIO.
 * Never writes past dst_len and never reads past src_len. */
int vd_codec_decompress(vd_codec_ctx *ctx, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len);
/* Same, with a context from cache (or a new one when cache is NULL: slower; for one-off
 * use and the fuzzer). */
int vd_codec_decompress_once(vd_codec_cache *cache, const vd_codec *c, const uint8_t *src,
                             size_t src_len, uint8_t *dst, size_t dst_len);

/* ---- streaming (the migration stream): unbounded input in pieces ---------------------- */

typedef enum { VD_CSTREAM_RUN, VD_CSTREAM_FLUSH, VD_CSTREAM_END } vd_cstream_op;

/* compress: true to compress at level, false to decompress (level ignored). The format is
 * the codec's standard stream: zlib format (RFC 1950) for deflate, zstd frames for zstd. */
vd_cstream *vd_cstream_new(const vd_codec *c, bool compress, int level, vd_error **errp);
void vd_cstream_free(vd_cstream *s);
/* Consumes input from *in (advancing *in, decreasing *in_len) and produces output into
 * *out (advancing it, decreasing *out_len). op FLUSH makes everything consumed so far
 * decodable by the other side; END finishes the stream. Returns 1 when the stream has
 * ended (compress: END fully written; decompress: end of stream reached), 0 when more
 * calls are needed (output full, or input consumed), or -errno (-EIO on corrupt input).
 * For compression, call again with the same op while it returns 0 and *out_len == 0. */
int vd_cstream_run(vd_cstream *s, const uint8_t **in, size_t *in_len, uint8_t **out,
                   size_t *out_len, vd_cstream_op op);

#endif
