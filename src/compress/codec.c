/* The codec registry (ids, names, level ranges), level checks, contexts and the cache of
 * idle contexts (one per engine). The backends live in codec-deflate.c and codec-zstd.c. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/codec-impl.h"

static const vd_codec codecs[] = {
    {VD_CODEC_DEFLATE, "zlib", 1, 9, 6, vd_deflate_bound},
    {VD_CODEC_ZSTD, "zstd", 1, 22, 3, vd_zstd_bound},
};
#define N_CODECS (sizeof(codecs) / sizeof(codecs[0]))
#define MAX_LEVEL 22 /* the largest max_level above: sizes the cache's key table */

const vd_codec *vd_codec_by_id(int id)
{
    for (size_t i = 0; i < N_CODECS; i++) {
        if (codecs[i].id == id) {
            return &codecs[i];
        }
    }
    return NULL;
}

const vd_codec *vd_codec_by_name(const char *name)
{
    for (size_t i = 0; name && i < N_CODECS; i++) {
        if (strcmp(codecs[i].name, name) == 0) {
            return &codecs[i];
        }
    }
    return NULL;
}

const char *vd_codec_names(void)
{
    return "zlib, zstd";
}

int vd_codec_check_level(const vd_codec *c, int level, vd_error **errp)
{
    if (level < c->min_level || level > c->max_level) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "compression level %d is out of range for %s (%d to %d)", level,
                            c->name, c->min_level, c->max_level);
    }
    return 0;
}

/* ---- contexts ------------------------------------------------------------------------- */

vd_codec_ctx *vd_codec_ctx_new(const vd_codec *c, int level)
{
    vd_codec_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx) {
        ctx->codec = c;
        ctx->level = level;
    }
    return ctx;
}

void vd_codec_ctx_free(vd_codec_ctx *ctx)
{
    if (!ctx) {
        return;
    }
    if (ctx->codec->id == VD_CODEC_DEFLATE) {
        vd_deflate_release(ctx);
    } else {
        vd_zstd_release(ctx);
    }
    free(ctx);
}

const vd_codec *vd_codec_ctx_codec(const vd_codec_ctx *ctx)
{
    return ctx->codec;
}

int vd_codec_ctx_level(const vd_codec_ctx *ctx)
{
    return ctx->level;
}

/* ---- the idle cache ------------------------------------------------------------------- */

/* One free list per (codec, level), owned by an engine. A list keeps at most `limit`
 * contexts: enough for every pool worker and a burst of request threads, while a one-off
 * spike of threads does not pin its contexts' memory forever. */
struct vd_codec_cache {
    pthread_mutex_t lock;
    unsigned limit;
    vd_codec_ctx *head[N_CODECS][MAX_LEVEL + 1];
    unsigned count[N_CODECS][MAX_LEVEL + 1];
};

vd_codec_cache *vd_codec_cache_new(void)
{
    vd_codec_cache *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    pthread_mutex_init(&c->lock, NULL);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->limit = (unsigned)(n > 0 && n < 4096 ? n : 1) * 4 + 8;
    return c;
}

void vd_codec_cache_free(vd_codec_cache *c)
{
    if (!c) {
        return;
    }
    for (size_t ci = 0; ci < N_CODECS; ci++) {
        for (int l = 0; l <= MAX_LEVEL; l++) {
            while (c->head[ci][l]) {
                vd_codec_ctx *ctx = c->head[ci][l];
                c->head[ci][l] = ctx->next;
                vd_codec_ctx_free(ctx);
            }
        }
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static size_t codec_index(const vd_codec *c)
{
    return (size_t)(c - codecs);
}

vd_codec_ctx *vd_codec_ctx_get(vd_codec_cache *cache, const vd_codec *c, int level)
{
    size_t ci = codec_index(c);
    vd_codec_ctx *ctx = NULL;
    if (cache && level >= 0 && level <= MAX_LEVEL) {
        pthread_mutex_lock(&cache->lock);
        ctx = cache->head[ci][level];
        if (ctx) {
            cache->head[ci][level] = ctx->next;
            cache->count[ci][level]--;
            ctx->next = NULL;
        }
        pthread_mutex_unlock(&cache->lock);
    }
    return ctx ? ctx : vd_codec_ctx_new(c, level);
}

void vd_codec_ctx_put(vd_codec_cache *cache, vd_codec_ctx *ctx)
{
    if (!ctx) {
        return;
    }
    size_t ci = codec_index(ctx->codec);
    int level = ctx->level;
    if (cache && level >= 0 && level <= MAX_LEVEL) {
        pthread_mutex_lock(&cache->lock);
        if (cache->count[ci][level] < cache->limit) {
            ctx->next = cache->head[ci][level];
            cache->head[ci][level] = ctx;
            cache->count[ci][level]++;
            ctx = NULL;
        }
        pthread_mutex_unlock(&cache->lock);
    }
    vd_codec_ctx_free(ctx);
}

/* ---- whole-buffer calls --------------------------------------------------------------- */

ssize_t vd_codec_compress(vd_codec_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
                          size_t cap)
{
    if (ctx->codec->id == VD_CODEC_DEFLATE) {
        return vd_deflate_compress(ctx, src, len, dst, cap);
    }
    return vd_zstd_compress(ctx, src, len, dst, cap);
}

int vd_codec_decompress(vd_codec_ctx *ctx, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len)
{
    if (ctx->codec->id == VD_CODEC_DEFLATE) {
        return vd_deflate_decompress(ctx, src, src_len, dst, dst_len);
    }
    return vd_zstd_decompress(ctx, src, src_len, dst, dst_len);
}

int vd_codec_decompress_once(vd_codec_cache *cache, const vd_codec *c, const uint8_t *src,
                             size_t src_len, uint8_t *dst, size_t dst_len)
{
    /* An idle cached context is as good as a new one and saves building a decoder per
     * call; it goes back to the cache afterwards. */
    vd_codec_ctx *ctx = vd_codec_ctx_get(cache, c, c->default_level);
    if (!ctx) {
        return -ENOMEM;
    }
    int ret = vd_codec_decompress(ctx, src, src_len, dst, dst_len);
    vd_codec_ctx_put(cache, ctx);
    return ret;
}
