/* Streaming compression for unbounded data in pieces (the migration stream): zlib format
 * via zlib for deflate, zstd frames via the zstd streaming API. Output only ever goes
 * into the caller's buffers; the decoders' own memory is bounded by the format (zlib's
 * 32 KiB window, zstd's window limit). */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "compress/codec.h"

struct vd_cstream {
    const vd_codec *codec;
    bool compress;
    bool ended;
    z_stream z;
    bool z_done;       /* deflate has finished the stream (some may still be staged) */
    uint8_t stage[64]; /* compressor output for callers with little room (see zlib_run) */
    size_t stage_pos, stage_len;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
};

#define ZLIB_WINDOW_BITS 15
#define ZLIB_MEM_LEVEL 8

vd_cstream *vd_cstream_new(const vd_codec *c, bool compress, int level, vd_error **errp)
{
    if (compress && vd_codec_check_level(c, level, errp) < 0) {
        return NULL;
    }
    vd_cstream *s = calloc(1, sizeof(*s));
    if (!s) {
        goto nomem;
    }
    s->codec = c;
    s->compress = compress;
    if (c->id == VD_CODEC_DEFLATE) {
        int r = compress ? deflateInit2(&s->z, level, Z_DEFLATED, ZLIB_WINDOW_BITS,
                                        ZLIB_MEM_LEVEL, Z_DEFAULT_STRATEGY)
                         : inflateInit2(&s->z, ZLIB_WINDOW_BITS);
        if (r != Z_OK) {
            free(s);
            goto nomem;
        }
        return s;
    }
    if (compress) {
        s->cctx = ZSTD_createCCtx();
        if (!s->cctx ||
            ZSTD_isError(ZSTD_CCtx_setParameter(s->cctx, ZSTD_c_compressionLevel, level))) {
            ZSTD_freeCCtx(s->cctx);
            free(s);
            goto nomem;
        }
    } else {
        s->dctx = ZSTD_createDCtx();
        if (!s->dctx) {
            free(s);
            goto nomem;
        }
    }
    return s;

nomem:
    vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "cannot allocate a %s %s stream", c->name,
                 compress ? "compression" : "decompression");
    return NULL;
}

void vd_cstream_free(vd_cstream *s)
{
    if (!s) {
        return;
    }
    if (s->codec->id == VD_CODEC_DEFLATE) {
        if (s->compress) {
            deflateEnd(&s->z);
        } else {
            inflateEnd(&s->z);
        }
    }
    ZSTD_freeCCtx(s->cctx);
    ZSTD_freeDCtx(s->dctx);
    free(s);
}

/* Moves the caller's cursors past what a library call used and made. Callers may pass
 * NULL buffers of length 0, and NULL + 0 is not valid C, hence the tests. */
static void advance(const uint8_t **in, size_t *in_len, size_t used, uint8_t **out,
                    size_t *out_len, size_t made)
{
    if (used) {
        *in += used;
        *in_len -= used;
    }
    if (made) {
        *out += made;
        *out_len -= made;
    }
}

/* zlib counts in uInt: hand it at most that much per call and loop. */
static uInt clamp_uint(size_t n)
{
    return n > UINT_MAX ? UINT_MAX : (uInt)n;
}

/* One zlib pass over *in into out[0..*out_len): loops until the input is used up, the
 * output is full or zlib can do nothing more. Returns 1 at the end of the stream, 0, or
 * -errno. */
static int zlib_pass(vd_cstream *s, const uint8_t **in, size_t *in_len, uint8_t **out,
                     size_t *out_len, int flush)
{
    for (;;) {
        uInt in_n = clamp_uint(*in_len), out_n = clamp_uint(*out_len);
        s->z.next_in = (Bytef *)*in;
        s->z.avail_in = in_n;
        s->z.next_out = *out;
        s->z.avail_out = out_n;
        /* Until the last slice of a huge input, ask for no flush: zlib would otherwise
         * think the flush is done when only this slice is. */
        bool last = in_n == *in_len;
        int r = s->compress ? deflate(&s->z, last ? flush : Z_NO_FLUSH)
                            : inflate(&s->z, Z_NO_FLUSH);
        size_t used = in_n - s->z.avail_in, made = out_n - s->z.avail_out;
        advance(in, in_len, used, out, out_len, made);
        if (r == Z_STREAM_END) {
            return 1;
        }
        if (r == Z_MEM_ERROR) {
            return -ENOMEM;
        }
        if (r != Z_OK && r != Z_BUF_ERROR) {
            return -EIO; /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
        }
        /* Z_BUF_ERROR is "no progress possible": input used up or output full. */
        if (r == Z_BUF_ERROR || *out_len == 0 || (*in_len == 0 && s->z.avail_out > 0) ||
            (used == 0 && made == 0)) {
            return 0;
        }
    }
}

/* Hands staged compressor output to the caller; true when none is left. */
static bool stage_drain(vd_cstream *s, uint8_t **out, size_t *out_len)
{
    size_t n = s->stage_len - s->stage_pos;
    if (n > *out_len) {
        n = *out_len;
    }
    if (n) {
        memcpy(*out, s->stage + s->stage_pos, n);
        s->stage_pos += n;
        *out += n;
        *out_len -= n;
    }
    return s->stage_pos == s->stage_len;
}

/* zlib treats a flush that ends exactly at the end of the output room as unfinished and,
 * called again as its contract requires, writes another flush marker; with rooms smaller
 * than a marker that never ends. So small rooms are served from a staging buffer larger
 * than any marker: the flush always completes inside it. */
static int zlib_run(vd_cstream *s, const uint8_t **in, size_t *in_len, uint8_t **out,
                    size_t *out_len, vd_cstream_op op)
{
    int flush = op == VD_CSTREAM_END ? Z_FINISH : op == VD_CSTREAM_FLUSH ? Z_SYNC_FLUSH
                                                                        : Z_NO_FLUSH;
    if (!s->compress) {
        return zlib_pass(s, in, in_len, out, out_len, Z_NO_FLUSH);
    }
    if (!stage_drain(s, out, out_len)) {
        return 0;
    }
    if (s->z_done) {
        return 1;
    }
    if (*out_len >= sizeof(s->stage)) {
        int r = zlib_pass(s, in, in_len, out, out_len, flush);
        s->z_done = r == 1;
        return r;
    }
    for (;;) {
        uint8_t *st = s->stage;
        size_t st_len = sizeof(s->stage);
        int r = zlib_pass(s, in, in_len, &st, &st_len, flush);
        if (r < 0) {
            return r;
        }
        s->z_done = r == 1;
        s->stage_pos = 0;
        s->stage_len = sizeof(s->stage) - st_len;
        if (!stage_drain(s, out, out_len) || s->z_done) {
            return s->z_done && s->stage_pos == s->stage_len ? 1 : 0;
        }
        /* Everything staged went out and there is room left: done unless zlib stopped
         * only because the stage was full. */
        if (st_len > 0 || *out_len == 0) {
            return 0;
        }
    }
}

static int zstd_run(vd_cstream *s, const uint8_t **in, size_t *in_len, uint8_t **out,
                    size_t *out_len, vd_cstream_op op)
{
    ZSTD_EndDirective dir = op == VD_CSTREAM_END     ? ZSTD_e_end
                            : op == VD_CSTREAM_FLUSH ? ZSTD_e_flush
                                                     : ZSTD_e_continue;
    for (;;) {
        ZSTD_inBuffer ib = {*in, *in_len, 0};
        ZSTD_outBuffer ob = {*out, *out_len, 0};
        size_t r = s->compress ? ZSTD_compressStream2(s->cctx, &ob, &ib, dir)
                               : ZSTD_decompressStream(s->dctx, &ob, &ib);
        advance(in, in_len, ib.pos, out, out_len, ob.pos);
        if (ZSTD_isError(r)) {
            return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? -ENOMEM : -EIO;
        }
        if (s->compress) {
            /* For flush and end, 0 means everything is out; for continue, the input has
             * been taken once it is all consumed. */
            if (dir == ZSTD_e_end && r == 0) {
                return 1;
            }
            if ((dir != ZSTD_e_continue && r == 0) ||
                (dir == ZSTD_e_continue && *in_len == 0) || *out_len == 0 ||
                (ib.pos == 0 && ob.pos == 0)) {
                return 0;
            }
        } else {
            if (r == 0) {
                return 1; /* a frame is complete and fully flushed */
            }
            if (*in_len == 0 || *out_len == 0 || (ib.pos == 0 && ob.pos == 0)) {
                return 0;
            }
        }
    }
}

int vd_cstream_run(vd_cstream *s, const uint8_t **in, size_t *in_len, uint8_t **out,
                   size_t *out_len, vd_cstream_op op)
{
    if (s->ended) {
        /* Finished: more END calls just confirm it; more data is a caller error. */
        return *in_len == 0 ? 1 : -EINVAL;
    }
    int r = s->codec->id == VD_CODEC_DEFLATE ? zlib_run(s, in, in_len, out, out_len, op)
                                             : zstd_run(s, in, in_len, out, out_len, op);
    if (r == 1) {
        s->ended = true;
    }
    /* A decoder told END with all input consumed, room left and the stream unfinished has
     * been given a truncated stream. */
    if (r == 0 && !s->compress && op == VD_CSTREAM_END && *in_len == 0 && *out_len > 0) {
        return -EIO;
    }
    return r;
}
