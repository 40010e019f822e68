/* The public API: disk handles over node graphs, chain-wide block status, and dispatch of
 * control operations (info, check, create, measure, amend, resize) to the drivers. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/disk.h"
#include "block/drivers/rbd-filename.h"
#include "compress/codec.h"

static vd_disk *disk_wrap(vd_engine *e, vd_node *n, bool owns)
{
    return vd_disk_new(e, n, owns);
}

int vd_open(vd_engine *e, const char *filename, const vd_open_opts *opts, vd_disk **out,
            vd_error **errp)
{
    vd_node *n = NULL;
    int ret = vd_node_open(e, filename, opts ? opts->format : NULL, opts ? opts->flags : 0,
                           &n, errp);
    if (ret < 0) {
        return ret;
    }
    *out = disk_wrap(e, n, true);
    return 0;
}

static void disk_free_wrappers(vd_disk *d)
{
    while (d) {
        vd_disk *next = d->backing;
        vd_disk_free(d);
        d = next;
    }
}

int vd_close(vd_disk *d)
{
    if (!d) {
        return 0;
    }
    int ret = d->owns_node ? vd_node_close(d->node) : 0;
    disk_free_wrappers(d->backing);
    vd_disk_free(d);
    return ret;
}

vd_disk *vd_disk_backing(vd_disk *d)
{
    vd_disk_enter(d);
    vd_disk *b = NULL;
    vd_node *cow = vd_node_skip_filters(d->node);
    if (cow->backing) {
        /* Made on first use, maybe by two threads at once (the drain lock is shared):
         * the first handle published wins, a second one is freed. */
        b = __atomic_load_n(&d->backing, __ATOMIC_ACQUIRE);
        if (!b) {
            vd_disk *made = disk_wrap(d->engine, cow->backing, false);
            vd_disk *none = NULL;
            if (__atomic_compare_exchange_n(&d->backing, &none, made, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                b = made;
            } else {
                vd_disk_free(made);
                b = none;
            }
        }
    }
    vd_disk_leave(d);
    return b;
}

uint64_t vd_disk_size(const vd_disk *d)
{
    vd_disk_enter(d);
    uint64_t size = d->node->size;
    vd_disk_leave(d);
    return size;
}

/* The name lives as long as the handle: an external snapshot keeps the old top open. */
const char *vd_disk_filename(const vd_disk *d)
{
    vd_disk_enter(d);
    const char *name = d->node->filename;
    vd_disk_leave(d);
    return name;
}

const char *vd_disk_format(const vd_disk *d)
{
    vd_disk_enter(d);
    const char *name = d->node->drv->name;
    vd_disk_leave(d);
    return name;
}

bool vd_disk_read_only(const vd_disk *d)
{
    vd_disk_enter(d);
    bool ro = !(d->node->open_flags & VD_OPEN_RDWR);
    vd_disk_leave(d);
    return ro;
}

/* Whether a request through n may wait for a device or a peer: a cache.direct node
 * anywhere below it (a qcow2 node over a cache.direct file), or a network client (NBD: a
 * quorum's replication child, a mirror target; RBD), through every kind of child. */
static bool node_waits(const vd_node *n)
{
    if ((n->open_flags & VD_OPEN_NOCACHE) || n->drv->remote) {
        return true;
    }
    vd_node *kid;
    const char *role;
    for (size_t i = 0; vd_node_child_at(n, i, &kid, &role); i++) {
        if (kid && node_waits(kid)) {
            return true;
        }
    }
    return false;
}

bool vd_disk_direct(const vd_disk *d)
{
    vd_disk_enter(d);
    bool direct = node_waits(d->node);
    vd_disk_leave(d);
    return direct;
}

const char *vd_disk_last_error(vd_disk *d)
{
    vd_disk_enter(d);
    bool have = vd_node_get_error(d->node, d->last_error, sizeof(d->last_error));
    vd_disk_leave(d);
    return have ? d->last_error : NULL;
}

/* ---- accounting ------------------------------------------------------------------------ */

enum acct_kind { ACCT_READ, ACCT_WRITE, ACCT_FLUSH, ACCT_UNMAP };

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void add(uint64_t *field, uint64_t v)
{
    __atomic_fetch_add(field, v, __ATOMIC_RELAXED);
}

static void account(vd_disk *d, enum acct_kind k, uint64_t start, uint64_t off, uint64_t len,
                    int ret)
{
    vd_disk_stats *st = &d->stats;
    uint64_t end = now_ns();
    uint64_t t = end - start;
    switch (k) {
    case ACCT_READ:
        add(ret < 0 ? &st->failed_rd_operations : &st->rd_operations, 1);
        if (ret == 0) {
            add(&st->rd_bytes, len);
            add(&st->rd_total_time_ns, t);
        }
        break;
    case ACCT_WRITE:
        add(ret < 0 ? &st->failed_wr_operations : &st->wr_operations, 1);
        if (ret == 0) {
            add(&st->wr_bytes, len);
            add(&st->wr_total_time_ns, t);
            uint64_t hi = __atomic_load_n(&st->wr_highest_offset, __ATOMIC_RELAXED);
            while (off + len > hi &&
                   !__atomic_compare_exchange_n(&st->wr_highest_offset, &hi, off + len, true,
                                                __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            }
        }
        break;
    case ACCT_FLUSH:
        add(ret < 0 ? &st->failed_flush_operations : &st->flush_operations, 1);
        if (ret == 0) {
            add(&st->flush_total_time_ns, t);
        }
        break;
    case ACCT_UNMAP:
        add(ret < 0 ? &st->failed_unmap_operations : &st->unmap_operations, 1);
        if (ret == 0) {
            add(&st->unmap_bytes, len);
            add(&st->unmap_total_time_ns, t);
        }
        break;
    }
    __atomic_store_n(&d->last_done_ns, end, __ATOMIC_RELAXED);
}

void vd_disk_get_stats(vd_disk *d, vd_disk_stats *out)
{
    vd_disk_stats *st = &d->stats;
    uint64_t *src = (uint64_t *)st, *dst = (uint64_t *)out;
    /* Every field but the last is a uint64_t counter. */
    for (size_t i = 0; i < offsetof(vd_disk_stats, idle_time_ns) / sizeof(uint64_t); i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
    uint64_t last = __atomic_load_n(&d->last_done_ns, __ATOMIC_RELAXED);
    out->idle_time_ns = last ? (int64_t)(now_ns() - last) : -1;
}

static int disk_pread(vd_disk *d, void *buf, uint64_t len, uint64_t off)
{
    return vd_node_pread(d->node, buf, len, off);
}

int vd_pread(vd_disk *d, void *buf, uint64_t len, uint64_t off)
{
    uint64_t t = now_ns();
    vd_disk_enter(d);
    int ret = disk_pread(d, buf, len, off);
    vd_disk_leave(d);
    account(d, ACCT_READ, t, off, len, ret);
    return ret;
}

static int after_write(vd_disk *d, int ret)
{
    if (ret == 0 && (d->node->open_flags & VD_OPEN_WRITETHROUGH)) {
        ret = vd_node_flush(d->node);
    }
    return ret;
}

static int disk_pwrite(vd_disk *d, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    return after_write(d, vd_node_pwrite(d->node, buf, len, off, flags));
}

int vd_pwrite(vd_disk *d, const void *buf, uint64_t len, uint64_t off, unsigned flags)
{
    uint64_t t = now_ns();
    vd_disk_enter(d);
    int ret = disk_pwrite(d, buf, len, off, flags);
    vd_disk_leave(d);
    account(d, ACCT_WRITE, t, off, len, ret);
    return ret;
}

static int disk_pwrite_zeroes(vd_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
    if (!(d->node->open_flags & VD_OPEN_UNMAP)) {
        flags &= ~VD_REQ_MAY_UNMAP;  /* as QEMU without discard=unmap */
    }
    return after_write(d, vd_node_pwrite_zeroes(d->node, off, len, flags));
}

int vd_pwrite_zeroes(vd_disk *d, uint64_t off, uint64_t len, unsigned flags)
{
    uint64_t t = now_ns();
    vd_disk_enter(d);
    int ret = disk_pwrite_zeroes(d, off, len, flags);
    vd_disk_leave(d);
    account(d, ACCT_WRITE, t, off, len, ret);
    return ret;
}

static int disk_pdiscard(vd_disk *d, uint64_t off, uint64_t len)
{
    if (!(d->node->open_flags & VD_OPEN_UNMAP)) {
        return 0;  /* discard is advisory; QEMU ignores it unless opened with discard=unmap */
    }
    return after_write(d, vd_node_pdiscard(d->node, off, len));
}

int vd_pdiscard(vd_disk *d, uint64_t off, uint64_t len)
{
    uint64_t t = now_ns();
    vd_disk_enter(d);
    int ret = disk_pdiscard(d, off, len);
    vd_disk_leave(d);
    account(d, ACCT_UNMAP, t, off, len, ret);
    return ret;
}

static int disk_pwrite_compressed(vd_disk *d, const void *buf, uint64_t len, uint64_t off)
{
    return after_write(d, vd_node_pwrite_compressed(d->node, buf, len, off));
}

int vd_pwrite_compressed(vd_disk *d, const void *buf, uint64_t len, uint64_t off)
{
    uint64_t t = now_ns();
    vd_disk_enter(d);
    int ret = disk_pwrite_compressed(d, buf, len, off);
    vd_disk_leave(d);
    account(d, ACCT_WRITE, t, off, len, ret);
    return ret;
}

int vd_compression_check(const char *type, int level, vd_error **errp)
{
    const char *name = type ? type : "zlib";
    const vd_codec *c = vd_codec_by_name(name);
    if (!c) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'compression-type' does "
                            "not accept value '%s' (known types: %s)", name,
                            vd_codec_names());
    }
    if (level == VD_COMPRESSION_LEVEL_DEFAULT) {
        return 0;
    }
    return vd_codec_check_level(c, level, errp);
}

static int disk_set_compression_level(vd_disk *d, int level, vd_error **errp)
{
    vd_node *n = d->node;
    if (!n->drv->pwrite_compressed || !n->drv->get_info) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Format driver '%s' does not "
                            "support compressed writes", n->drv->name);
    }
    if (level != VD_COMPRESSION_LEVEL_DEFAULT) {
        /* The level's range depends on the image's compression type. */
        vd_image_info info;
        memset(&info, 0, sizeof(info));
        int ret = n->drv->get_info(n, &info, errp);
        if (ret == 0) {
            ret = vd_compression_check(info.compression_type[0] ? info.compression_type : NULL,
                                       level, errp);
        }
        vd_image_info_clear(&info);
        if (ret < 0) {
            return ret;
        }
    }
    __atomic_store_n(&n->compress_level, level, __ATOMIC_RELAXED);
    return 0;
}

int vd_set_compression_level(vd_disk *d, int level, vd_error **errp)
{
    vd_disk_enter(d);
    int ret = disk_set_compression_level(d, level, errp);
    vd_disk_leave(d);
    return ret;
}

static int disk_flush(vd_disk *d)
{
    return vd_node_flush(d->node);
}

int vd_flush(vd_disk *d)
{
    uint64_t t = now_ns();
    vd_disk_enter(d);
    int ret = disk_flush(d);
    vd_disk_leave(d);
    account(d, ACCT_FLUSH, t, 0, 0, ret);
    return ret;
}

/* A format node's data may sit in a hole of its file: then it reads as zeros, which
 * qemu-img map reports as zero=true (preallocation=metadata shows this). */
static int refine_with_file(vd_node_status *s)
{
    if (!(s->flags & VD_BS_RECURSE)) {
        return 0;
    }
    s->flags &= ~VD_BS_RECURSE;
    if (!(s->flags & VD_BS_OFFSET) || !(s->flags & VD_BS_DATA) || !s->file ||
        s->file->drv->is_format || !s->file->drv->block_status) {
        return 0;
    }
    vd_node_status fs;
    memset(&fs, 0, sizeof(fs));
    int ret = s->file->drv->block_status(s->file, s->offset, s->pnum, &fs);
    if (ret < 0) {
        return 0;  /* the answer without refinement is still right */
    }
    if (fs.pnum > 0 && fs.pnum < s->pnum) {
        s->pnum = fs.pnum;
    }
    if (fs.flags & VD_BS_ZERO) {
        s->flags |= VD_BS_ZERO;
    }
    return 0;
}

static void fill_status(vd_extent *st, const vd_node_status *s, int depth)
{
    st->length = s->pnum;
    st->flags = s->flags & ~VD_BS_RECURSE;
    st->offset = s->offset;
    st->depth = depth;
    st->file = s->file ? s->file->filename : NULL;
}

static int disk_block_status_top(vd_disk *d, uint64_t off, uint64_t len, vd_extent *st)
{
    memset(st, 0, sizeof(*st));
    if (off >= d->node->size || len == 0) {
        return 0;
    }
    vd_node_status s;
    int ret = vd_node_block_status(d->node, off, len, &s);
    if (ret < 0) {
        return ret;
    }
    refine_with_file(&s);
    fill_status(st, &s, 0);
    return 0;
}

int vd_block_status_top(vd_disk *d, uint64_t off, uint64_t len, vd_extent *st)
{
    vd_disk_enter(d);
    int ret = disk_block_status_top(d, off, len, st);
    vd_disk_leave(d);
    return ret;
}

int vd_node_chain_status(vd_node *top, uint64_t off, uint64_t len, vd_extent *st)
{
    return vd_node_chain_status_above(top, 0, off, len, st);
}

int vd_node_chain_status_above(vd_node *top, int stop_depth, uint64_t off, uint64_t len,
                               vd_extent *st)
{
    memset(st, 0, sizeof(*st));
    if (off >= top->size || len == 0) {
        return 0;
    }
    if (len > top->size - off) {
        len = top->size - off;
    }
    int depth = 0;
    vd_node_status prev;
    memset(&prev, 0, sizeof(prev));
    /* A layer is asked through its filters (blkdebug may fail the query); its backing is
     * the one of the format node under them, as QEMU counts layers. */
    for (vd_node *n = top; n; n = vd_node_skip_filters(n)->backing, depth++) {
        vd_node_status s;
        if (stop_depth > 0 && depth == stop_depth) {
            /* Nothing above the stop holds it; the layers below are not asked. */
            st->length = len;
            st->depth = depth;
            return 0;
        }
        if (off >= n->size) {
            /* Past the end of a shorter backing file: reads as zeros. QEMU answers with the
             * status of the layer above (keeping a preallocated offset) and its depth. */
            fill_status(st, &prev, depth - 1);
            st->length = len;
            st->flags = (prev.flags & ~(VD_BS_DATA | VD_BS_RECURSE)) | VD_BS_ZERO;
            return 0;
        }
        int ret = vd_node_block_status(n, off, len, &s);
        if (ret < 0) {
            return ret;
        }
        len = s.pnum;
        if ((s.flags & VD_BS_ALLOCATED) || !vd_node_skip_filters(n)->backing) {
            refine_with_file(&s);
            fill_status(st, &s, depth);
            if (!(s.flags & VD_BS_ALLOCATED)) {
                /* Unallocated at the bottom of a format's chain reads as zeros; a protocol
                 * node that holds nothing there (an NBD hole) says nothing of the data. */
                st->flags = vd_node_skip_filters(n)->drv->is_format
                                ? (st->flags & ~VD_BS_DATA) | VD_BS_ZERO : 0;
            }
            return 0;
        }
        prev = s;
    }
    return -EIO;  /* not reached: the loop returns at the bottom of the chain */
}

static int disk_block_status(vd_disk *d, uint64_t off, uint64_t len, vd_extent *st)
{
    return vd_node_chain_status(d->node, off, len, st);
}

int vd_block_status(vd_disk *d, uint64_t off, uint64_t len, vd_extent *st)
{
    vd_disk_enter(d);
    int ret = disk_block_status(d, off, len, st);
    vd_disk_leave(d);
    return ret;
}

static int disk_get_info(vd_disk *d, vd_image_info *info, vd_error **errp)
{
    memset(info, 0, sizeof(*info));
    vd_node *n = d->node;
    info->filename = strdup(n->filename);
    info->format = strdup(n->drv->name);
    info->virtual_size = n->size;
    info->is_protocol = !n->drv->is_format;
    int64_t alloc = n->drv->allocated_size ? n->drv->allocated_size(n) : -1;
    info->actual_size = alloc > 0 ? (uint64_t)alloc : 0;
    info->actual_size_unknown = alloc == -ENOTSUP;
    if (n->backing_filename) {
        info->backing_filename = strdup(n->backing_filename);
        info->full_backing_filename = vd_backing_path(n->filename, n->backing_filename);
    }
    if (n->backing_format) {
        info->backing_format = strdup(n->backing_format);
    }
    if (n->drv->get_info) {
        int ret = n->drv->get_info(n, info, errp);
        if (ret < 0) {
            vd_image_info_clear(info);
            return ret;
        }
    }
    return 0;
}

int vd_get_info(vd_disk *d, vd_image_info *info, vd_error **errp)
{
    vd_disk_enter(d);
    int ret = disk_get_info(d, info, errp);
    vd_disk_leave(d);
    return ret;
}

void vd_image_info_clear(vd_image_info *info)
{
    free(info->filename);
    free(info->format);
    free(info->backing_filename);
    free(info->full_backing_filename);
    free(info->backing_format);
    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        free(info->bitmaps[i].name);
    }
    free(info->bitmaps);
    memset(info, 0, sizeof(*info));
}

static int disk_check(vd_disk *d, unsigned fix, const vd_check_hooks *hooks,
                      vd_check_result *res, vd_error **errp)
{
    memset(res, 0, sizeof(*res));
    if (!d->node->drv->check) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "This image format does not support checks");
    }
    if (fix && !(d->node->open_flags & VD_OPEN_RDWR)) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: repair needs a writable image",
                            d->node->filename);
    }
    return d->node->drv->check(d->node, fix, hooks, res, errp);
}

int vd_check_stream(vd_disk *d, unsigned fix, const vd_check_hooks *hooks,
                    vd_check_result *res, vd_error **errp)
{
    vd_disk_enter(d);
    int ret = disk_check(d, fix, hooks, res, errp);
    vd_disk_leave(d);
    return ret;
}

/* vd_check's message log: the lines joined by newlines, at most CHECK_LOG_MAX bytes with
 * room kept for the closing count. */
#define CHECK_LOG_MAX (64u << 20)

typedef struct check_log {
    char *s;
    size_t len, cap;
} check_log;

static bool check_log_put(check_log *b, const char *line, size_t limit)
{
    size_t n = strlen(line);
    if (b->len + n + 2 > limit) {
        return false;
    }
    if (b->len + n + 2 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 2 > cap) {
            cap *= 2;
        }
        char *s = realloc(b->s, cap);
        if (!s) {
            return false;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, line, n);
    b->len += n;
    b->s[b->len++] = '\n';
    b->s[b->len] = '\0';
    return true;
}

/* Refusing a line refuses all later ones too, so the log stays a prefix of qemu-img's. */
static bool check_log_add(void *opaque, const char *line)
{
    return check_log_put(opaque, line, CHECK_LOG_MAX - 128);
}

int vd_check(vd_disk *d, unsigned fix, vd_check_result *res, vd_error **errp)
{
    check_log log = {0};
    vd_check_hooks hooks = {.msg = check_log_add, .opaque = &log};
    int ret = vd_check_stream(d, fix, &hooks, res, errp);
    if (res->messages_dropped) {
        char line[64];
        snprintf(line, sizeof(line), "(%" PRId64 " more messages not shown)",
                 res->messages_dropped);
        (void)check_log_put(&log, line, CHECK_LOG_MAX);
    }
    res->log = log.s;
    return ret;
}

void vd_check_result_clear(vd_check_result *res)
{
    free(res->log);
    memset(res, 0, sizeof(*res));
}

static const vd_driver *format_driver(const char *fmt, vd_error **errp)
{
    const vd_driver *drv = fmt ? vd_driver_find(fmt) : NULL;
    if (!drv || !drv->is_format) {
        vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unknown file format '%s'",
                     fmt ? fmt : "(null)");
        return NULL;
    }
    return drv;
}

int vd_create(vd_engine *e, const char *filename, const char *fmt, uint64_t size,
              const vd_opts *opts, unsigned flags, vd_error **errp)
{
    const vd_driver *drv = format_driver(fmt, errp);
    if (!drv) {
        return -EINVAL;
    }
    if (!drv->create) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Format driver '%s' does not "
                            "support image creation", fmt);
    }
    return drv->create(e, vd_strip_file_prefix(filename), size, opts, flags, errp);
}

/* A raw image on RBD takes the protocol's options instead of a host file's (QEMU merges
 * the format's and the protocol's lists): the object size. */
static const vd_create_option raw_on_rbd_options[] = {
    {"cluster_size", "size", "RBD object size", NULL},
    {"size", "size", "Virtual disk size", NULL},
};

const vd_create_option *vd_create_options(const char *fmt, size_t *count)
{
    return vd_create_options_for(fmt, NULL, count);
}

const vd_create_option *vd_create_options_for(const char *fmt, const char *filename,
                                              size_t *count)
{
    if (fmt && filename && !strcmp(fmt, "raw") && vd_rbd_filename_prefix(filename)) {
        *count = sizeof(raw_on_rbd_options) / sizeof(raw_on_rbd_options[0]);
        return raw_on_rbd_options;
    }
    const vd_driver *drv = fmt ? vd_driver_find(fmt) : NULL;
    if (!drv || !drv->is_format) {
        *count = 0;
        return NULL;
    }
    *count = drv->nb_create_options;
    return drv->create_options;
}

int vd_measure(const char *fmt, const vd_opts *opts, uint64_t size, vd_disk *src,
               vd_measure_result *res, vd_error **errp)
{
    memset(res, 0, sizeof(*res));
    const vd_driver *drv = format_driver(fmt, errp);
    if (!drv) {
        return -EINVAL;
    }
    if (!drv->measure) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Format driver '%s' does not "
                            "support measure", fmt);
    }
    return drv->measure(opts, size, src, res, errp);
}

static int need_op(vd_disk *d, const void *op, const char *what, vd_error **errp)
{
    if (!op) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Format driver '%s' does not "
                            "support %s", d->node->drv->name, what);
    }
    if (!(d->node->open_flags & VD_OPEN_RDWR)) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: image is opened read-only",
                            d->node->filename);
    }
    return 0;
}

static int disk_amend(vd_disk *d, const vd_opts *opts, vd_error **errp)
{
    int ret = need_op(d, (const void *)d->node->drv->amend, "option amendment", errp);
    return ret < 0 ? ret : d->node->drv->amend(d->node, opts, errp);
}

int vd_amend(vd_disk *d, const vd_opts *opts, vd_error **errp)
{
    vd_disk_enter(d);
    int ret = disk_amend(d, opts, errp);
    vd_disk_leave(d);
    return ret;
}

static int disk_truncate(vd_disk *d, uint64_t size, bool shrink, const char *prealloc,
                         vd_error **errp)
{
    return vd_node_truncate(d->node, size, shrink, prealloc, errp);
}

int vd_truncate(vd_disk *d, uint64_t size, bool shrink, const char *prealloc, vd_error **errp)
{
    vd_disk_enter(d);
    int ret = disk_truncate(d, size, shrink, prealloc, errp);
    vd_disk_leave(d);
    return ret;
}

static int disk_set_backing(vd_disk *d, const char *backing, const char *backing_fmt,
                            vd_error **errp)
{
    int ret = need_op(d, (const void *)d->node->drv->set_backing, "changing the backing file",
                      errp);
    return ret < 0 ? ret : d->node->drv->set_backing(d->node, backing, backing_fmt, errp);
}

int vd_set_backing(vd_disk *d, const char *backing, const char *backing_fmt, vd_error **errp)
{
    vd_disk_enter(d);
    int ret = disk_set_backing(d, backing, backing_fmt, errp);
    vd_disk_leave(d);
    return ret;
}

static int disk_make_empty(vd_disk *d, vd_error **errp)
{
    int ret = need_op(d, (const void *)d->node->drv->make_empty, "emptying the image", errp);
    return ret < 0 ? ret : d->node->drv->make_empty(d->node, errp);
}

int vd_make_empty(vd_disk *d, vd_error **errp)
{
    vd_disk_enter(d);
    int ret = disk_make_empty(d, errp);
    vd_disk_leave(d);
    return ret;
}
