/* qcow2 compressed clusters: the compressed write path (the clusters of a request are
 * compressed in parallel, their streams packed back to back by a byte allocator and linked
 * with QEMU's descriptor encoding) and the read batches that fetch the compressed clusters
 * of one read request together and decompress them in parallel. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"
#include "block/engine.h"
#include "compress/codec.h"
#include "compress/pool.h"

/* ---- descriptors and the byte allocator ------------------------------------------------ */

/* Width of the descriptor's offset field: bits 0..x-1 with x = 62 - (cluster_bits - 8). */
static uint32_t offset_bits(uint32_t cluster_bits)
{
    return 62 - (cluster_bits - 8);
}

uint64_t qcow2_compressed_encode(uint64_t off, uint64_t len, uint32_t cluster_bits)
{
    /* Sector boundaries the stream crosses; the reader's length bound is then the rest of
     * the sector the stream ends in. */
    uint64_t sectors = (off + len - 1) / 512 - off / 512;
    return QCOW2_OFLAG_COMPRESSED | (sectors << offset_bits(cluster_bits)) | off;
}

int qcow2_alloc_bytes(qcow2_state *s, uint64_t size, uint64_t *offset)
{
    uint64_t cs = s->cluster_size;
    uint64_t off = s->free_byte_offset;
    uint64_t start;
    int ret;

    if (off) {
        uint64_t rc;
        ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        /* A cluster at the maximum refcount cannot count one more stream (refcount_bits=1:
         * one stream per cluster). Refcount 0 means its streams are gone and the cluster
         * may have been reused; update_refcount resets the offset then, this is a guard. */
        if (rc == 0 || rc >= s->refcount_max) {
            off = 0;
        }
    }
    uint64_t room = off ? cs - (off & (cs - 1)) : 0;
    if (off && room >= size) {
        ret = qcow2_update_refcount(s, off, size, 1, false);
        if (ret < 0) {
            return ret;
        }
        start = off;
    } else {
        uint64_t nc;
        ret = qcow2_alloc_clusters(s, 1, &nc, NULL);
        if (ret < 0) {
            return ret;
        }
        start = nc;
        if (off && nc == off + room) {
            /* The new cluster follows the partly filled one: the stream continues into it,
             * so the old cluster gets one more reference too. */
            ret = qcow2_update_refcount(s, off, room, 1, false);
            if (ret < 0) {
                qcow2_update_refcount(s, nc, cs, -1, false);
                return ret;
            }
            start = off;
        }
    }
    if (start + size > (1ull << offset_bits(s->cluster_bits))) {
        qcow2_update_refcount(s, start, size, -1, false);
        vd_node_set_error(s->node, "%s: host offset %#" PRIx64 " does not fit in a compressed cluster "
                        "descriptor", s->name, start);
        return -EFBIG;
    }
    s->free_byte_offset = ((start + size) & (cs - 1)) ? start + size : 0;
    *offset = start;
    return 0;
}

/* ---- compressed writes ---------------------------------------------------------------- */

/* One guest cluster of a compressed write. */
typedef struct citem {
    const uint8_t *src;          /* cluster_size bytes of guest data (zero-padded at the end) */
    uint8_t *out;                /* its compressed stream */
    ssize_t clen;                /* stream length; -ENOSPC: stored uncompressed; <0: error */
    uint64_t host;               /* where it goes */
    bool allocated;              /* host space counted but not yet referenced by L2 */
} citem;

typedef struct cwrite {
    qcow2_state *s;
    const vd_codec *codec;
    int level;
    citem *items;
} cwrite;

static uint64_t item_len(const qcow2_state *s, const citem *it)
{
    return it->clen >= 0 ? (uint64_t)it->clen : s->cluster_size;
}

static const uint8_t *item_data(const citem *it)
{
    return it->clen >= 0 ? it->out : it->src;
}

static void compress_task(void *arg, size_t i)
{
    cwrite *w = arg;
    citem *it = &w->items[i];
    vd_codec_cache *cache = vd_engine_codecs(w->s->node->engine);
    vd_codec_ctx *ctx = vd_codec_ctx_get(cache, w->codec, w->level);
    if (!ctx) {
        it->clen = -ENOMEM;
        return;
    }
    /* A stream must be smaller than a cluster to be worth a descriptor (QEMU's rule). */
    it->clen = vd_codec_compress(ctx, it->src, w->s->cluster_size, it->out,
                                 w->s->cluster_size - 1);
    vd_codec_ctx_put(cache, ctx);
    if (it->clen == 0) {
        it->clen = -ENOSPC;  /* no codec does this; a descriptor needs at least a byte */
    }
}

/* Drops the space of items that were allocated but never linked: nothing references it. */
static void release_items(qcow2_state *s, cwrite *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        citem *it = &w->items[i];
        if (it->allocated) {
            qcow2_update_refcount(s, it->host, item_len(s, it), -1, false);
            it->allocated = false;
        }
    }
}

/* Checks the entries that will be replaced and makes the L2 tables writable (allocated or
 * copied), then allocates host space for every item in guest order, as QEMU interleaves
 * them. Lock held; on failure nothing stays allocated. */
static int batch_alloc_locked(qcow2_state *s, cwrite *w, uint64_t gci, size_t n)
{
    uint64_t slice_end = gci;
    int ret = 0;
    for (size_t i = 0; i < n; i++) {
        citem *it = &w->items[i];
        if (gci + i >= slice_end) {
            qcow2_slice *sl;
            unsigned idx, avail;
            ret = qcow2_l2_slice(s, gci + i, true, &sl, &idx, &avail);
            if (ret < 0) {
                goto fail;
            }
            for (unsigned k = 0; k < avail && i + k < n && ret == 0; k++) {
                ret = qcow2_check_entry(s, qcow2_l2_get(s, sl->data, idx + k),
                                        qcow2_l2_get_bitmap(s, sl->data, idx + k),
                                        gci + i + k);
            }
            qcow2_cache_put(s->l2_cache, sl);
            if (ret < 0) {
                goto fail;
            }
            slice_end = gci + i + avail;
        }
        if (it->clen >= 0) {
            ret = qcow2_alloc_bytes(s, (uint64_t)it->clen, &it->host);
        } else {
            ret = qcow2_alloc_clusters(s, 1, &it->host, NULL);
        }
        if (ret < 0) {
            goto fail;
        }
        it->allocated = true;
        if (it->clen >= 0) {
            const char *ov = qcow2_metadata_overlap(s, it->host, (uint64_t)it->clen);
            if (ov) {
                ret = qcow2_signal_corruption_at(s, it->host, (uint64_t)it->clen,
                                                 "Preventing invalid write on metadata "
                                                 "(compressed data at %#" PRIx64 " overlaps "
                                                 "with %s)", it->host, ov);
                goto fail;
            }
        }
    }
    return 0;
fail:
    release_items(s, w, n);
    return ret;
}

/* Writes the items' data, one host write per run of host-contiguous items. No lock. */
static int batch_write(qcow2_state *s, cwrite *w, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const citem *first = &w->items[i];
        uint64_t end = first->host + item_len(s, first);
        size_t j = i + 1;
        while (j < n && w->items[j].host == end) {
            end += item_len(s, &w->items[j]);
            j++;
        }
        int ret;
        if (j == i + 1) {
            ret = vd_node_pwrite(s->file, item_data(first), end - first->host, first->host, 0);
        } else {
            uint8_t *bb = malloc(end - first->host);
            if (!bb) {
                return -ENOMEM;
            }
            for (size_t k = i; k < j; k++) {
                const citem *it = &w->items[k];
                memcpy(bb + (it->host - first->host), item_data(it), item_len(s, it));
            }
            ret = vd_node_pwrite(s->file, bb, end - first->host, first->host, 0);
            free(bb);
        }
        if (ret < 0) {
            vd_node_set_error(s->node, "%s: could not write compressed data at %#" PRIx64 ": %s",
                            s->name, first->host, strerror(-ret));
            return ret;
        }
        i = j;
    }
    return 0;
}

/* Points the L2 entries at the written items and queues the release of what they replace.
 * Lock held. Items left unlinked after a failure stay marked allocated. */
static int batch_link_locked(qcow2_state *s, cwrite *w, uint64_t gci, size_t n)
{
    size_t i = 0;
    while (i < n) {
        qcow2_slice *sl;
        unsigned idx, avail;
        int ret = qcow2_l2_slice(s, gci + i, true, &sl, &idx, &avail);
        if (ret < 0) {
            return ret;
        }
        for (unsigned k = 0; k < avail && i < n; k++, i++) {
            citem *it = &w->items[i];
            uint64_t e = qcow2_l2_get(s, sl->data, idx + k);
            uint64_t ne, nbm = 0;
            if (it->clen >= 0) {
                /* Never COPIED, and no subcluster bits: the stream may be shared. */
                ne = qcow2_compressed_encode(it->host, (uint64_t)it->clen, s->cluster_bits);
            } else {
                ne = it->host | QCOW2_OFLAG_COPIED;
                nbm = QCOW2_EXTL2_ALLOC_ALL;
            }
            qcow2_l2_set(s, sl->data, idx + k, ne, nbm);
            it->allocated = false;
            if (qcow2_entry_allocated(e)) {
                qcow2_free_entry(s, e, s->pass_discard_other);
            }
        }
        qcow2_cache_mark_dirty(s->l2_cache, sl);
        qcow2_cache_put(s->l2_cache, sl);
    }
    /* Data before the L2 entries: a sync must precede the slice's write even when the
     * refcounts became durable while the data was being written. */
    s->rb_unsynced = true;
    return 0;
}

/* Compresses, allocates, writes and links n clusters starting at guest cluster gci. */
static int write_batch(qcow2_state *s, cwrite *w, uint64_t gci, size_t n)
{
    if (n > 1) {
        vd_pool_run(vd_engine_pool(s->node->engine), n, compress_task, w);
    } else {
        compress_task(w, 0);
    }
    for (size_t i = 0; i < n; i++) {
        citem *it = &w->items[i];
        it->allocated = false;
        if (it->clen < 0 && it->clen != -ENOSPC) {
            vd_node_set_error(s->node, "%s: could not compress the cluster at guest offset %#" PRIx64
                            ": %s", s->name, (gci + i) << s->cluster_bits,
                            strerror((int)-it->clen));
            return (int)it->clen;
        }
    }

    qcow2_alloc_rec rec;
    qcow2_io_rec io;
    pthread_mutex_lock(&s->lock);
    do {
        qcow2_enter_locked(s);
    } while (qcow2_alloc_wait(s, gci, n));
    if (s->broken) {
        pthread_mutex_unlock(&s->lock);
        vd_node_set_error(s->node, "%s: the image is marked corrupt; writes are refused", s->name);
        return -EIO;
    }
    qcow2_alloc_insert(s, &rec, gci, n);
    int ret = qcow2_mark_dirty_locked(s);
    if (ret == 0) {
        ret = batch_alloc_locked(s, w, gci, n);
    }
    if (ret < 0) {
        qcow2_alloc_remove(s, &rec);
        pthread_mutex_unlock(&s->lock);
        return ret;
    }
    qcow2_io_begin(s, &io);
    pthread_mutex_unlock(&s->lock);

    /* Data first; the L2 entries follow under the lock, and the metadata cache writes them
     * only after the refcounts (and the data) are durable. */
    ret = batch_write(s, w, n);

    pthread_mutex_lock(&s->lock);
    if (ret == 0) {
        ret = batch_link_locked(s, w, gci, n);
    }
    release_items(s, w, n);
    qcow2_alloc_remove(s, &rec);
    qcow2_io_end(s, &io);
    if (ret == 0 && s->nb_unsynced_frees > QCOW2_MAX_UNSYNCED_FREES) {
        ret = qcow2_flush_locked(s);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* qemu-img convert -c ends with an empty compressed write: the file grows to whole
 * sectors, so sector-based readers of the last stream stay inside it. */
static int pad_file(qcow2_state *s)
{
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    int ret = 0;
    int64_t flen = vd_node_file_length(s->file);
    if (s->broken) {
        vd_node_set_error(s->node, "%s: the image is marked corrupt; writes are refused", s->name);
        ret = -EIO;
    } else if (flen < 0) {
        ret = (int)flen;
    } else if (flen % 512) {
        vd_error *err = NULL;
        uint64_t want = ((uint64_t)flen + 511) & ~511ull;
        ret = vd_node_truncate(s->file, want, false, "off", &err);
        if (ret < 0) {
            vd_node_set_error(s->node, "%s: could not pad the image file: %s", s->name,
                            err ? vd_error_msg(err) : strerror(-ret));
            vd_error_free(err);
        }
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_pwrite_compressed(vd_node *node, const void *buf, uint64_t len, uint64_t off,
                            int level)
{
    qcow2_state *s = node->opaque;
    uint64_t cs = s->cluster_size;

    if (s->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
        vd_node_set_error(s->node, "%s: compressed writes are not supported with an external data file",
                        s->name);
        return -ENOTSUP;
    }
    if (len == 0) {
        return pad_file(s);
    }
    if ((off & (cs - 1)) || ((len & (cs - 1)) && off + len != node->size)) {
        vd_node_set_error(s->node, "%s: compressed write of %" PRIu64 " bytes at offset %" PRIu64 " is "
                        "not made of whole clusters (cluster size %" PRIu64 ")", s->name, len,
                        off, cs);
        return -EINVAL;
    }
    const vd_codec *codec = vd_codec_by_id(s->h.compression_type);
    if (!codec) {
        vd_node_set_error(s->node, "%s: unknown compression type %u", s->name, s->h.compression_type);
        return -ENOTSUP;
    }
    if (level == VD_COMPRESSION_LEVEL_DEFAULT) {
        level = codec->default_level;
    } else if (vd_codec_check_level(codec, level, NULL) < 0) {
        vd_node_set_error(s->node, "%s: compression level %d is out of range for %s (%d to %d)", s->name,
                        level, codec->name, codec->min_level, codec->max_level);
        return -EINVAL;
    }

    /* Enough clusters per batch to keep every thread busy, with bounded buffers. */
    uint64_t total = (len + cs - 1) >> s->cluster_bits;
    uint64_t per = QCOW2_MAX_ALLOC_BYTES >> s->cluster_bits;
    uint64_t min_per = 2ull * vd_pool_threads(vd_engine_pool(s->node->engine));
    if (per < min_per) {
        per = min_per;
    }
    if (per > total) {
        per = total;
    }
    cwrite w = {.s = s, .codec = codec, .level = level};
    w.items = calloc(per, sizeof(*w.items));
    uint8_t *out = malloc(per * cs);
    uint8_t *pad = (len & (cs - 1)) ? calloc(1, cs) : NULL;
    int ret = 0;
    if (!w.items || !out || ((len & (cs - 1)) && !pad)) {
        ret = -ENOMEM;
        goto out;
    }
    const uint8_t *p = buf;
    uint64_t gci = off >> s->cluster_bits;
    for (uint64_t done = 0; done < total && ret == 0;) {
        size_t n = (size_t)(total - done < per ? total - done : per);
        for (size_t i = 0; i < n; i++) {
            uint64_t at = (done + i) * cs;
            w.items[i].out = out + i * cs;
            if (len - at < cs) {
                /* The disk's final partial cluster is compressed zero-padded, as QEMU
                 * does. */
                memcpy(pad, p + at, len - at);
                w.items[i].src = pad;
            } else {
                w.items[i].src = p + at;
            }
        }
        ret = write_batch(s, &w, gci + done, n);
        done += n;
    }
out:
    free(w.items);
    free(out);
    free(pad);
    return ret;
}

/* ---- compressed reads ----------------------------------------------------------------- */

static const vd_codec *image_codec(qcow2_state *s, uint64_t guest_off)
{
    const vd_codec *codec = vd_codec_by_id(s->h.compression_type);
    if (!codec) {
        vd_node_set_error(s->node, "%s: compressed cluster at guest offset 0x%" PRIx64 ": unknown "
                        "compression type %u", s->name, guest_off, s->h.compression_type);
    }
    return codec;
}

static int decompress(qcow2_state *s, const vd_codec *codec, const uint8_t *src,
                      uint64_t src_len, uint8_t *dst, uint64_t dst_len)
{
    return vd_codec_decompress_once(vd_engine_codecs(s->node->engine), codec, src, src_len,
                                    dst, dst_len);
}

static int decompress_error(qcow2_state *s, uint64_t guest_off, uint64_t host)
{
    vd_node_set_error(s->node, "%s: compressed cluster at guest offset 0x%" PRIx64 " (host offset 0x%"
                    PRIx64 ") does not decompress to a full cluster", s->name, guest_off, host);
    return -EIO;
}

int qcow2_read_compressed(qcow2_state *s, uint64_t e, uint64_t guest_off, uint8_t *dst)
{
    uint64_t host, csize;
    qcow2_compressed_decode(e, s->cluster_bits, &host, &csize);
    const vd_codec *codec = image_codec(s, guest_off);
    if (!codec) {
        return -EIO;
    }
    /* csize is bounded by the descriptor's width (at most twice the cluster size). */
    uint8_t *src = malloc(csize);
    if (!src) {
        return -ENOMEM;
    }
    int ret = vd_node_pread(s->file, src, csize, host);  /* past EOF reads as zeros */
    if (ret == 0) {
        ret = decompress(s, codec, src, csize, dst, s->cluster_size);
        if (ret == -EIO) {
            ret = decompress_error(s, guest_off, host);
        }
    }
    free(src);
    return ret;
}

void qcow2_cread_init(qcow2_state *s, qcow2_cread *b)
{
    memset(b, 0, sizeof(*b));
    uint64_t max = QCOW2_MAX_ALLOC_BYTES >> s->cluster_bits;
    b->max = max < 4 ? 4 : max > 1024 ? 1024 : (size_t)max;
}

void qcow2_cread_free(qcow2_cread *b)
{
    free(b->jobs);
    b->jobs = NULL;
}

int qcow2_cread_add(qcow2_state *s, qcow2_cread *b, uint64_t l2e, uint64_t guest,
                    uint8_t *dst, uint64_t in, uint64_t bytes)
{
    if (b->nb == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        if (cap > b->max) {
            cap = b->max;
        }
        qcow2_cread_job *j = realloc(b->jobs, cap * sizeof(*j));
        if (!j) {
            return -ENOMEM;
        }
        b->jobs = j;
        b->cap = cap;
    }
    if (b->nb == 0) {
        /* The compressed bytes cannot be freed and reused until the batch is done. */
        qcow2_io_begin(s, &b->io);
    }
    qcow2_cread_job *j = &b->jobs[b->nb++];
    memset(j, 0, sizeof(*j));
    j->l2e = l2e;
    j->guest = guest;
    j->dst = dst;
    j->in = in;
    j->bytes = bytes;
    return b->nb == b->max;
}

typedef struct cread_run {
    qcow2_state *s;
    const vd_codec *codec;
    qcow2_cread_job *jobs;
} cread_run;

static void decompress_task(void *arg, size_t i)
{
    cread_run *r = arg;
    qcow2_cread_job *j = &r->jobs[i];
    j->ret = decompress(r->s, r->codec, j->src, j->csize, j->out, r->s->cluster_size);
}

/* Reads the compressed bytes of every job (overlapping or adjacent ranges in one read:
 * the sector-rounded lengths of packed streams overlap the next stream) and decompresses
 * them in parallel. No lock held. */
static int cread_run_batch(qcow2_state *s, qcow2_cread *b)
{
    uint64_t cs = s->cluster_size;
    const vd_codec *codec = image_codec(s, b->jobs[0].guest);
    if (!codec) {
        return -EIO;
    }
    uint64_t src_total = 0, tmp_total = 0;
    for (size_t i = 0; i < b->nb; i++) {
        qcow2_cread_job *j = &b->jobs[i];
        qcow2_compressed_decode(j->l2e, s->cluster_bits, &j->host, &j->csize);
        src_total += j->csize;
        if (j->in != 0 || j->bytes != cs) {
            tmp_total += cs;
        }
    }
    uint8_t *src = malloc(src_total ? src_total : 1);
    uint8_t *tmp = tmp_total ? malloc(tmp_total) : NULL;
    int ret = 0;
    if (!src || (tmp_total && !tmp)) {
        ret = -ENOMEM;
        goto out;
    }
    /* Group ranges that overlap or touch, in request order. */
    uint64_t used = 0, tmp_used = 0;
    size_t i = 0;
    while (i < b->nb && ret == 0) {
        uint64_t start = b->jobs[i].host;
        uint64_t end = start + b->jobs[i].csize;
        size_t k = i + 1;
        while (k < b->nb && b->jobs[k].host >= start && b->jobs[k].host <= end) {
            uint64_t e = b->jobs[k].host + b->jobs[k].csize;
            if (e > end) {
                end = e;
            }
            k++;
        }
        /* A group's span is at most the sum of its ranges, which src_total covers. */
        ret = vd_node_pread(s->file, src + used, end - start, start);
        for (size_t m = i; m < k; m++) {
            qcow2_cread_job *j = &b->jobs[m];
            j->src = src + used + (j->host - start);
            if (j->in != 0 || j->bytes != cs) {
                j->out = tmp + tmp_used;
                tmp_used += cs;
            } else {
                j->out = j->dst;
            }
        }
        used += end - start;
        i = k;
    }
    if (ret < 0) {
        goto out;
    }
    cread_run r = {.s = s, .codec = codec, .jobs = b->jobs};
    if (b->nb > 1) {
        vd_pool_run(vd_engine_pool(s->node->engine), b->nb, decompress_task, &r);
    } else {
        decompress_task(&r, 0);
    }
    for (i = 0; i < b->nb; i++) {
        qcow2_cread_job *j = &b->jobs[i];
        if (j->ret < 0) {
            ret = j->ret == -EIO ? decompress_error(s, j->guest, j->host) : j->ret;
            break;
        }
        if (j->out != j->dst) {
            memcpy(j->dst, j->out + j->in, j->bytes);
        }
    }
out:
    free(src);
    free(tmp);
    return ret;
}

int qcow2_cread_flush(qcow2_state *s, qcow2_cread *b, bool run)
{
    if (b->nb == 0) {
        return 0;
    }
    int ret = 0;
    if (run) {
        pthread_mutex_unlock(&s->lock);
        ret = cread_run_batch(s, b);
        pthread_mutex_lock(&s->lock);
    }
    qcow2_io_end(s, &b->io);
    b->nb = 0;
    return ret;
}
