/* `vdisk convert`: qemu-img convert. Sources (concatenated when several) are walked by
 * block status; data ranges are read and written by a pool of worker threads with bounded
 * buffers, zero and unallocated ranges are skipped or written as zeroes, and runs of zero
 * sectors inside data are detected (-S) so the target stays sparse. Writes reach the target
 * in order unless -W allows any order. With -c, data goes out in requests of whole
 * clusters as compressed writes; the library compresses the clusters of one request on
 * every core. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli-util.h"
#include "vdisk/bitmap.h"
#include "util/zero.h"

#define SECTOR 512
#define IO_BUF_SECTORS 4096           /* 2 MiB per worker, as qemu-img */
#define MAX_BUF_SECTORS 32768         /* the largest -S */
#define REQUEST_MAX_SECTORS 2097152   /* 1 GiB per block status step */
#define MAX_WORKERS 16

/* Long options only convert has. */
enum { OPT_COMPRESSION_LEVEL = 1024, OPT_SALVAGE, OPT_BITMAPS, OPT_SKIP_BROKEN };

typedef enum { BLK_DATA, BLK_ZERO, BLK_BACKING_FILE } blk_status;

typedef struct convert_state {
    vd_disk **src;
    int64_t *src_sectors;  /* sizes rounded up to whole sectors, as qemu counts them */
    uint64_t *src_bytes;
    int src_num;
    int64_t total_sectors;
    int64_t allocated_sectors;
    int64_t allocated_done;
    vd_disk *target;
    bool has_zero_init;
    bool target_has_backing;
    int64_t target_backing_sectors;  /* negative if unknown */
    bool wr_in_order;
    int min_sparse;   /* sectors; 0 disables zero detection */
    int alignment;    /* sectors */
    int64_t buf_sectors;
    bool compressed;
    bool salvage;     /* --salvage: unreadable sectors become zeros, with a warning */
    bool quiet;
    int64_t cluster_sectors;  /* with compressed: the target's cluster, in sectors */
    int num_workers;
    cli_progress *prog;

    /* Everything below is guarded by lock. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* In-order writes: the workers waiting for their turn, each on its own condition
     * variable, so finishing a write wakes only the worker whose range comes next. */
    struct order_waiter *waiters[MAX_WORKERS];
    int nb_waiters;
    int64_t sector_num;          /* next sector to hand out */
    int64_t wr_offs;             /* in-order writes: next sector that may be written */
    blk_status status;           /* status of [.., sector_next_status) */
    int64_t sector_next_status;
    int running;
    int ret;                     /* -EINPROGRESS while copying */
} convert_state;

/* Does the first sector hold data? *pnum: sectors from the start with the same state,
 * with the end moved to an `alignment` boundary (data runs grow, zero runs shrink) so that
 * writes stay aligned. Mirrors qemu-img's sparse detection so targets come out alike. */
static bool allocated_sectors(const uint8_t *buf, int64_t n, int64_t *pnum, int64_t sector_num,
                              int alignment)
{
    if (n <= 0) {
        *pnum = 0;
        return false;
    }
    bool zero = vd_buf_is_zero(buf, SECTOR);
    int64_t i;
    for (i = 1; i < n; i++) {
        buf += SECTOR;
        if (zero != vd_buf_is_zero(buf, SECTOR)) {
            break;
        }
    }
    if (i == n) {
        /* The whole buffer is alike: nothing to split, so no boundary to move to. */
        *pnum = i;
        return !zero;
    }
    int64_t tail = (sector_num + i) & (alignment - 1);
    if (tail) {
        if (zero && i <= tail) {
            /* A zero run too short to reach the next boundary is written as data. */
            zero = false;
        }
        if (!zero) {
            i += alignment - tail;
            if (i > n) {
                i = n;
            }
        } else {
            i -= tail;
        }
    }
    *pnum = i;
    return !zero;
}

/* Like allocated_sectors, but a data run swallows zero runs shorter than `min` sectors so
 * that small holes do not split writes. */
static bool allocated_sectors_min(const uint8_t *buf, int64_t n, int64_t *pnum, int64_t min,
                                  int64_t sector_num, int alignment)
{
    if (n < min) {
        min = n;
    }
    if (!allocated_sectors(buf, n, pnum, sector_num, alignment)) {
        return false;
    }
    int64_t used = *pnum, checked = *pnum;
    buf += SECTOR * *pnum;
    n -= *pnum;
    sector_num += *pnum;
    while (n > 0) {
        bool data = allocated_sectors(buf, n, pnum, sector_num, alignment);
        buf += SECTOR * *pnum;
        n -= *pnum;
        sector_num += *pnum;
        checked += *pnum;
        if (data) {
            used = checked;
        } else if (*pnum >= min) {
            break;
        }
    }
    *pnum = used;
    return true;
}

/* ---- the walk over the sources -------------------------------------------------------- */

static void select_part(const convert_state *s, int64_t sector_num, int *cur, int64_t *cur_off)
{
    *cur = 0;
    *cur_off = 0;
    while (*cur < s->src_num - 1 && sector_num - *cur_off >= s->src_sectors[*cur]) {
        *cur_off += s->src_sectors[*cur];
        (*cur)++;
    }
}

/* How many sectors from sector_num share one status (kept in s->status); called with the
 * lock held. Returns a count > 0 or -errno. */
static int64_t iteration_sectors(convert_state *s, int64_t sector_num)
{
    int cur;
    int64_t cur_off;
    bool post_backing_zero = false;
    select_part(s, sector_num, &cur, &cur_off);

    int64_t n = s->total_sectors - sector_num;
    if (n > REQUEST_MAX_SECTORS) {
        n = REQUEST_MAX_SECTORS;
    }
    if (s->target_backing_sectors >= 0) {
        if (sector_num >= s->target_backing_sectors) {
            /* Past the end of the target's backing file the target reads zeros anyway. */
            post_backing_zero = true;
        } else if (sector_num + n > s->target_backing_sectors) {
            n = s->target_backing_sectors - sector_num;
        }
    }

    if (s->sector_next_status <= sector_num) {
        uint64_t offset = (uint64_t)(sector_num - cur_off) * SECTOR;
        uint64_t count = (uint64_t)n * SECTOR;
        unsigned flags;
        if (offset >= s->src_bytes[cur]) {
            /* The padding up to a whole sector past the end of a source. */
            count = (uint64_t)(s->src_sectors[cur] - (sector_num - cur_off)) * SECTOR;
            flags = VD_BS_ZERO;
        } else {
            if (count > s->src_bytes[cur] - offset) {
                count = s->src_bytes[cur] - offset;
            }
            vd_extent st;
            int ret;
            for (;;) {
                ret = s->target_has_backing
                          ? vd_block_status_top(s->src[cur], offset, count, &st)
                          : vd_block_status(s->src[cur], offset, count, &st);
                if (ret == 0 && st.length == 0) {
                    ret = -EIO;
                }
                if (ret == 0 || !s->salvage || count <= SECTOR) {
                    break;
                }
                /* Salvaging: narrow down to the sector whose status cannot be read. */
                count = (count / SECTOR + 3) / 4 * SECTOR;
            }
            if (ret < 0 && s->salvage) {
                if (!s->quiet) {
                    fprintf(stderr, "%s: warning: error while reading block status at offset "
                            "%" PRIu64 ": %s\n", cli_progname(), offset, strerror(-ret));
                }
                /* Just try to read the data, then. */
                st.length = count;
                st.flags = VD_BS_DATA;
                ret = 0;
            }
            if (ret < 0) {
                cli_print_io_detail(s->src[cur]);
                cli_error("error while reading block status at offset %" PRIu64 ": %s",
                          offset, strerror(-ret));
                return ret;
            }
            count = st.length;
            flags = st.flags;
        }
        n = (int64_t)((count + SECTOR - 1) / SECTOR);
        if (flags & VD_BS_ZERO) {
            s->status = post_backing_zero ? BLK_BACKING_FILE : BLK_ZERO;
        } else if (flags & VD_BS_DATA) {
            s->status = BLK_DATA;
        } else {
            s->status = s->target_has_backing ? BLK_BACKING_FILE : BLK_DATA;
        }
        s->sector_next_status = sector_num + n;
    }
    if (n > s->sector_next_status - sector_num) {
        n = s->sector_next_status - sector_num;
    }
    if (s->status == BLK_DATA && n > s->buf_sectors) {
        n = s->buf_sectors;
    }
    if (s->compressed) {
        if (!s->min_sparse && s->status == BLK_ZERO && n > s->buf_sectors) {
            n = s->buf_sectors;
        }
        /* Compressed writes take whole clusters: a range shorter than a cluster (which
         * then ends inside it) is copied as data for the whole cluster, longer ones stop
         * at a cluster boundary, as in qemu-img, so the targets match. */
        if (n < s->cluster_sectors) {
            n = s->cluster_sectors;
            if (n > s->total_sectors - sector_num) {
                n = s->total_sectors - sector_num;
            }
            s->status = BLK_DATA;
        } else {
            n -= n % s->cluster_sectors;
        }
    }
    return n;
}

/* Salvaging read of [off, off+len) of one source: a failing range is read again in
 * quarters down to single sectors, and a sector that cannot be read becomes zeros. */
static int salvage_read(convert_state *s, vd_disk *d, uint8_t *buf, uint64_t len, uint64_t off)
{
    int ret = vd_pread(d, buf, len, off);
    if (ret == 0) {
        return 0;
    }
    if (len <= SECTOR) {
        if (!s->quiet) {
            pthread_mutex_lock(&s->lock);
            fprintf(stderr, "%s: warning: error while reading offset %" PRIu64 ": %s\n",
                    cli_progname(), off, strerror(-ret));
            pthread_mutex_unlock(&s->lock);
        }
        memset(buf, 0, len);
        return 0;
    }
    uint64_t step = (len / SECTOR + 3) / 4 * SECTOR;
    for (uint64_t done = 0; done < len; done += step) {
        uint64_t n = len - done < step ? len - done : step;
        salvage_read(s, d, buf + done, n, off + done);
    }
    return 0;
}

/* Reads n sectors of the concatenated sources; the bytes past a source's end read as zero. */
static int convert_read(convert_state *s, int64_t sector_num, int64_t nb, uint8_t *buf)
{
    while (nb > 0) {
        int cur;
        int64_t cur_off;
        select_part(s, sector_num, &cur, &cur_off);
        int64_t n = s->src_sectors[cur] - (sector_num - cur_off);
        if (n > nb) {
            n = nb;
        }
        uint64_t off = (uint64_t)(sector_num - cur_off) * SECTOR;
        uint64_t len = (uint64_t)n * SECTOR;
        uint64_t avail = off < s->src_bytes[cur] ? s->src_bytes[cur] - off : 0;
        if (avail > len) {
            avail = len;
        }
        if (avail > 0) {
            int ret = s->salvage ? salvage_read(s, s->src[cur], buf, avail, off)
                                 : vd_pread(s->src[cur], buf, avail, off);
            if (ret < 0) {
                return ret;
            }
        }
        if (avail < len) {
            memset(buf + avail, 0, len - avail);
        }
        sector_num += n;
        nb -= n;
        buf += len;
    }
    return 0;
}

static int write_zeroes(convert_state *s, int64_t sector_num, int64_t n)
{
    if (s->has_zero_init) {
        return 0;
    }
    return vd_pwrite_zeroes(s->target, (uint64_t)sector_num * SECTOR, (uint64_t)n * SECTOR,
                            s->target_has_backing ? 0 : VD_REQ_MAY_UNMAP);
}

/* Data for a compressed target (n sectors from a cluster boundary). qemu-img copies one
 * cluster per request and leaves out the clusters that are all zeros (unless -S 0); the
 * same clusters are left out here, but each run of the others goes out as one request so
 * that the library compresses its clusters in parallel. */
static int write_compressed(convert_state *s, int64_t sector_num, int64_t n,
                            const uint8_t *buf)
{
    int64_t done = 0;
    while (done < n) {
        bool zero = false;
        int64_t run = 0;
        while (done + run < n) {
            int64_t len = n - done - run;
            if (len > s->cluster_sectors) {
                len = s->cluster_sectors;
            }
            bool z = s->min_sparse &&
                     vd_buf_is_zero(buf + (done + run) * SECTOR, (size_t)len * SECTOR);
            if (run > 0 && z != zero) {
                break;
            }
            zero = z;
            run += len;
        }
        int ret = zero ? write_zeroes(s, sector_num + done, run)
                       : vd_pwrite_compressed(s->target, buf + done * SECTOR,
                                              (uint64_t)run * SECTOR,
                                              (uint64_t)(sector_num + done) * SECTOR);
        if (ret < 0) {
            return ret;
        }
        done += run;
    }
    return 0;
}

static int convert_write(convert_state *s, int64_t sector_num, int64_t nb, const uint8_t *buf,
                         blk_status status)
{
    while (nb > 0) {
        int64_t n = nb;
        int ret;
        switch (status) {
        case BLK_BACKING_FILE:
            /* Left unallocated so that the target's backing file shows through. */
            break;
        case BLK_DATA:
            if (s->compressed) {
                ret = write_compressed(s, sector_num, n, buf);
                if (ret < 0) {
                    return ret;
                }
                break;
            }
            if (!s->min_sparse ||
                allocated_sectors_min(buf, n, &n, s->min_sparse, sector_num, s->alignment)) {
                ret = vd_pwrite(s->target, buf, (uint64_t)n * SECTOR,
                                (uint64_t)sector_num * SECTOR, 0);
                if (ret < 0) {
                    return ret;
                }
                break;
            }
            /* A zero run: handled like a zero range. */
            /* fall through */
        case BLK_ZERO:
            ret = write_zeroes(s, sector_num, n);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        sector_num += n;
        nb -= n;
        buf += n * SECTOR;
    }
    return 0;
}

typedef struct order_waiter {
    int64_t sector;
    pthread_cond_t cv;
} order_waiter;

/* Wakes the worker that may write next (all of them when the copy failed). */
static void wake_writers_locked(convert_state *s)
{
    for (int i = 0; i < s->nb_waiters; i++) {
        if (s->ret != -EINPROGRESS || s->waiters[i]->sector == s->wr_offs) {
            pthread_cond_signal(&s->waiters[i]->cv);
        }
    }
}

/* Waits until sector_num is the next range to write, or the copy failed. */
static void wait_turn_locked(convert_state *s, int64_t sector_num)
{
    if (s->wr_offs == sector_num || s->ret != -EINPROGRESS) {
        return;
    }
    order_waiter w = {.sector = sector_num};
    pthread_cond_init(&w.cv, NULL);
    s->waiters[s->nb_waiters++] = &w;
    while (s->wr_offs != sector_num && s->ret == -EINPROGRESS) {
        pthread_cond_wait(&w.cv, &s->lock);
    }
    for (int i = 0; i < s->nb_waiters; i++) {
        if (s->waiters[i] == &w) {
            s->waiters[i] = s->waiters[--s->nb_waiters];
            break;
        }
    }
    pthread_cond_destroy(&w.cv);
}

static void fail_locked(convert_state *s, int ret)
{
    if (s->ret == -EINPROGRESS) {
        s->ret = ret;
    }
    wake_writers_locked(s);
    pthread_cond_broadcast(&s->cond);
}

static void *convert_worker(void *opaque)
{
    convert_state *s = opaque;
    uint8_t *buf = cli_alloc_io_buffer((size_t)s->buf_sectors * SECTOR);

    for (;;) {
        pthread_mutex_lock(&s->lock);
        if (s->ret != -EINPROGRESS || s->sector_num >= s->total_sectors) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        int64_t n = iteration_sectors(s, s->sector_num);
        if (n < 0) {
            fail_locked(s, (int)n);
            pthread_mutex_unlock(&s->lock);
            break;
        }
        int64_t sector_num = s->sector_num;
        blk_status status = s->status;
        if (!s->min_sparse && status == BLK_ZERO && n > s->buf_sectors) {
            n = s->buf_sectors;
        }
        /* Hand the next range out now so other workers read while this one does. */
        s->sector_num += n;
        if (status == BLK_DATA || (!s->min_sparse && status == BLK_ZERO)) {
            s->allocated_done += n;
            cli_progress_print(s->prog, 100.0f * (float)s->allocated_done /
                               (float)s->allocated_sectors, 0);
        }
        pthread_mutex_unlock(&s->lock);

        int ret = 0;
        if (status == BLK_DATA) {
            ret = convert_read(s, sector_num, n, buf);
            if (ret < 0) {
                pthread_mutex_lock(&s->lock);
                cli_print_io_detail(s->src[0]);
                cli_error("error while reading at byte %" PRId64 ": %s", sector_num * SECTOR,
                          strerror(-ret));
                fail_locked(s, ret);
                pthread_mutex_unlock(&s->lock);
            }
        } else if (!s->min_sparse && status == BLK_ZERO) {
            /* -S 0: zeros are written as data so the target is fully allocated. */
            status = BLK_DATA;
            memset(buf, 0, (size_t)n * SECTOR);
        }

        pthread_mutex_lock(&s->lock);
        if (s->wr_in_order) {
            wait_turn_locked(s, sector_num);
        }
        bool go = s->ret == -EINPROGRESS;
        pthread_mutex_unlock(&s->lock);
        if (go) {
            ret = convert_write(s, sector_num, n, buf, status);
            if (ret < 0) {
                pthread_mutex_lock(&s->lock);
                cli_print_io_detail(s->target);
                cli_error("error while writing at byte %" PRId64 ": %s", sector_num * SECTOR,
                          strerror(-ret));
                fail_locked(s, ret);
                pthread_mutex_unlock(&s->lock);
            }
        }

        if (s->wr_in_order) {
            pthread_mutex_lock(&s->lock);
            s->wr_offs = sector_num + n;
            wake_writers_locked(s);
            pthread_mutex_unlock(&s->lock);
        }
    }

    free(buf);
    pthread_mutex_lock(&s->lock);
    s->running--;
    if (s->running == 0 && s->ret == -EINPROGRESS) {
        s->ret = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* A raw image in an object store (RBD: raw with an object size) is written a network round
 * trip per request, and the order of the writes means nothing to its layout: many
 * requests of whole objects go out at once, in any order (qemu-img's -m 16 -W, chosen
 * for the user unless -m or -W says otherwise). */
static void object_store_defaults(convert_state *s)
{
    vd_image_info info = {0};
    bool objects = vd_get_info(s->target, &info, NULL) == 0 && info.format &&
                   !strcmp(info.format, "raw") && info.has_cluster_size &&
                   info.cluster_size >= SECTOR;
    uint64_t object = objects ? info.cluster_size : 0;
    vd_image_info_clear(&info);
    if (!objects) {
        return;
    }
    s->wr_in_order = false;
    s->num_workers = MAX_WORKERS;
    int64_t n = (int64_t)(object / SECTOR);
    s->buf_sectors = n < IO_BUF_SECTORS ? IO_BUF_SECTORS : n > 2 * IO_BUF_SECTORS
                                                          ? 2 * IO_BUF_SECTORS : n;
}

static int convert_do_copy(convert_state *s)
{
    /* First pass: how much will be written, for the progress line. */
    for (int64_t sector = 0; sector < s->total_sectors;) {
        int64_t n = iteration_sectors(s, sector);
        if (n < 0) {
            return (int)n;
        }
        if (s->status == BLK_DATA || (!s->min_sparse && s->status == BLK_ZERO)) {
            s->allocated_sectors += n;
        }
        sector += n;
    }

    s->sector_next_status = 0;
    s->sector_num = 0;
    s->wr_offs = 0;
    s->ret = -EINPROGRESS;
    s->running = s->num_workers;

    pthread_t threads[MAX_WORKERS];
    int started = 0;
    for (int i = 0; i < s->num_workers; i++) {
        if (pthread_create(&threads[i], NULL, convert_worker, s) != 0) {
            pthread_mutex_lock(&s->lock);
            s->running -= s->num_workers - i;
            if (i == 0) {
                s->ret = -EAGAIN;
                cli_error("Could not start a worker thread");
            }
            pthread_mutex_unlock(&s->lock);
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    /* Workers stop early only on an error, which they record; otherwise all was copied
     * (even when fewer threads than asked for could be started). */
    if (s->ret == -EINPROGRESS) {
        s->ret = 0;
    }
    return s->ret;
}

/* ---- command line --------------------------------------------------------------------- */

typedef struct convert_args {
    const char *fmt, *out_fmt, *cache, *src_cache, *out_base, *out_basefmt;
    char *options;
    bool compress, progress, skip_create, target_is_zero;
    bool copy_range;             /* -C: nothing to offload to, but qemu-img's refusals hold */
    bool salvage;
    bool bitmaps, skip_broken;   /* --bitmaps, --skip-broken-bitmaps */
    int min_sparse;
    bool explicit_min_sparse;
    long num_workers;
    bool wr_in_order;
    bool parallel_given;    /* -m or -W: the user chose how the writes go out */
    bool quiet;
    const char *level_arg;  /* --compression-level, as given */
    int level;
    /* -l: a bare ID_OR_NAME, or (winning over it, as in qemu-img) the id and name of the
     * last "snapshot.id=...,snapshot.name=..." given. */
    const char *snapshot_name;
    bool sn_opts;
    char *sn_id, *sn_name;
} convert_args;

/* QEMU's deprecation warnings from the -l parser. */
static void snapshot_param_warn(const char *msg, void *opaque)
{
    (void)opaque;
    fprintf(stderr, "%s: warning: %s\n", cli_progname(), msg);
}

/* -l: qemu-img tells the option syntax by its "snapshot." prefix. */
static int parse_snapshot_param(convert_args *a, const char *param)
{
    if (strncmp(param, "snapshot.", 9) != 0) {
        a->snapshot_name = param;
        return 0;
    }
    char *id, *name;
    vd_error *err = NULL;
    if (vd_snapshot_param_parse(param, &id, &name, snapshot_param_warn, NULL, &err) < 0) {
        cli_report_err(err, NULL);
        cli_error("Failed in parsing snapshot param '%s'", param);
        return -1;
    }
    free(a->sn_id);
    free(a->sn_name);
    a->sn_id = id;
    a->sn_name = name;
    a->sn_opts = true;
    return 0;
}

/* Makes the first source read the snapshot -l named (qemu-img's order: after every source
 * is open, before the target is made). The sources are open read-only, as the load needs. */
static int load_snapshot(const convert_args *a, convert_state *s, const char *file)
{
    vd_error *err = NULL;
    int ret = 0;
    if (a->sn_opts) {
        ret = vd_snapshot_load_tmp(s->src[0], a->sn_id, a->sn_name, &err);
    } else if (a->snapshot_name) {
        if (s->src_num > 1) {
            cli_error("No support for concatenating multiple snapshot");
            return -1;
        }
        ret = vd_snapshot_load_tmp_by_id_or_name(s->src[0], a->snapshot_name, &err);
    }
    if (ret < 0) {
        cli_report_err_for(err, file, "Failed to load snapshot: ");
        return -1;
    }
    return 0;
}

/* Builds the target's creation options as qemu-img convert does. Returns 0 or 1 after
 * printing the error. */
static int target_options(const convert_args *a, const char **backing,
                          const char **backing_fmt, vd_opts **optsp)
{
    vd_opts *o = vd_opts_new();
    *optsp = o;
    if (!cli_format_known(a->out_fmt)) {
        cli_error("Unknown file format '%s'", a->out_fmt);
        return 1;
    }
    if (a->options && cli_parse_options(a->out_fmt, a->options, NULL, false, "", o) < 0) {
        return 1;
    }
    /* The size always comes from the sources. */
    vd_opts_del(o, "size");
    cli_normalize_bools(a->out_fmt, o);
    if (a->out_base) {
        if (!cli_has_option(a->out_fmt, "backing_file")) {
            cli_error("Backing file not supported for file format '%s'", a->out_fmt);
            return 1;
        }
        vd_opts_set(o, "backing_file", a->out_base);
    }
    if (a->out_basefmt) {
        if (!cli_has_option(a->out_fmt, "backing_fmt")) {
            cli_error("Backing file format not supported for file format '%s'", a->out_fmt);
            return 1;
        }
        vd_opts_set(o, "backing_fmt", a->out_basefmt);
    }
    *backing = vd_opts_get(o, "backing_file");
    *backing_fmt = vd_opts_get(o, "backing_fmt");
    return 0;
}

/* --bitmaps: an inconsistent bitmap stops the conversion before the target exists, or is
 * skipped with a warning (--skip-broken-bitmaps), as in qemu-img. */
static int check_bitmaps(vd_disk *src, bool skip_broken)
{
    vd_bitmap_info *list;
    size_t nb;
    if (vd_disk_bitmap_list(src, &list, &nb, NULL) < 0) {
        return 0;
    }
    int ret = 0;
    for (size_t i = 0; i < nb && ret == 0; i++) {
        if (!list[i].persistent || !list[i].inconsistent) {
            continue;
        }
        if (skip_broken) {
            fprintf(stderr, "%s: warning: Skipping inconsistent bitmap '%s'\n",
                    cli_progname(), list[i].name);
        } else {
            cli_error("Cannot copy inconsistent bitmap '%s'", list[i].name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to "
                    "delete it\n");
            ret = -1;
        }
    }
    vd_bitmap_list_free(list, nb);
    return ret;
}

/* Each persistent bitmap of the source, in the order qemu-img copies them (the source's
 * newest first), added to the target with its granularity and state and filled by a
 * merge; the target stores them when it is closed. */
static int copy_bitmaps(vd_disk *src, vd_disk *dst, bool skip_broken)
{
    vd_bitmap_info *list;
    size_t nb;
    vd_error *err = NULL;
    if (vd_disk_bitmap_list(src, &list, &nb, &err) < 0) {
        cli_report_err(err, NULL);
        return -EIO;
    }
    int ret = 0;
    for (size_t i = 0; i < nb && ret == 0; i++) {
        if (!list[i].persistent || (list[i].inconsistent && skip_broken)) {
            continue;
        }
        vd_bitmap_add_opts o = {.granularity = list[i].granularity, .persistent = true,
                                .disabled = !list[i].recording};
        if (vd_disk_bitmap_add(dst, list[i].name, &o, &err) < 0 ||
            vd_disk_bitmap_merge(dst, list[i].name, src, list[i].name, &err) < 0) {
            cli_report_err(err, "Failed to populate bitmap %s: ", list[i].name);
            ret = -EIO;
        }
    }
    vd_bitmap_list_free(list, nb);
    return ret;
}

int cmd_convert(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
        {"bitmaps", no_argument, NULL, OPT_BITMAPS},
        {"skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN},
        {"compression-level", required_argument, NULL, OPT_COMPRESSION_LEVEL},
        {"salvage", no_argument, NULL, OPT_SALVAGE},
        {NULL, 0, NULL, 0},
    };
    convert_args a = {
        .cache = "unsafe",
        .src_cache = "writeback",
        .min_sparse = 8,  /* 4 KiB of zeros make a hole */
        .num_workers = 8,
        .wr_in_order = true,
        .level = VD_COMPRESSION_LEVEL_DEFAULT,
    };
    int c;
    int ret = 1;

    while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            a.fmt = optarg;
            break;
        case 'O':
            a.out_fmt = optarg;
            break;
        case 'B':
            a.out_base = optarg;
            break;
        case 'F':
            a.out_basefmt = optarg;
            break;
        case 'C':
            /* Copy offloading is an optimisation; the plain copy gives the same result. */
            a.copy_range = true;
            break;
        case 'c':
            a.compress = true;
            break;
        case 'o':
            if (cli_add_option_list(&a.options, optarg) < 0) {
                goto fail_getopt;
            }
            break;
        case 'l':
            if (parse_snapshot_param(&a, optarg) < 0) {
                goto fail_getopt;
            }
            break;
        case 'S': {
            int64_t sval;
            if (cli_cvtnum("buffer size for sparse output", optarg, &sval) < 0) {
                goto fail_getopt;
            }
            if (sval % SECTOR || sval / SECTOR > MAX_BUF_SECTORS) {
                cli_error("Invalid buffer size for sparse output specified. Valid sizes are "
                          "multiples of %d up to %d. Select 0 to disable sparse detection "
                          "(fully allocates output).", SECTOR, MAX_BUF_SECTORS * SECTOR);
                goto fail_getopt;
            }
            a.min_sparse = (int)(sval / SECTOR);
            a.explicit_min_sparse = true;
            break;
        }
        case 'p':
            a.progress = true;
            break;
        case 't':
            a.cache = optarg;
            break;
        case 'T':
            a.src_cache = optarg;
            break;
        case 'q':
            a.quiet = true;
            break;
        case 'n':
            a.skip_create = true;
            break;
        case 'm': {
            char *end = NULL;
            errno = 0;
            a.num_workers = strtol(optarg, &end, 0);
            if (errno || end == optarg || *end || a.num_workers < 1 ||
                a.num_workers > MAX_WORKERS) {
                cli_error("Invalid number of coroutines. Allowed number of coroutines is "
                          "between 1 and %d", MAX_WORKERS);
                goto fail_getopt;
            }
            a.parallel_given = true;
            break;
        }
        case 'W':
            a.wr_in_order = false;
            a.parallel_given = true;
            break;
        case 'U':
            /* Images are not locked, so there is nothing to share. */
            break;
        case 'r': {
            int64_t rate;
            if (cli_cvtnum("rate limit", optarg, &rate) < 0) {
                goto fail_getopt;
            }
            break;
        }
        case OPT_TARGET_IS_ZERO:
            a.target_is_zero = true;
            break;
        case OPT_SALVAGE:
            a.salvage = true;
            break;
        case OPT_BITMAPS:
            a.bitmaps = true;
            break;
        case OPT_SKIP_BROKEN:
            a.skip_broken = true;
            break;
        case OPT_COMPRESSION_LEVEL: {
            char *end = NULL;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || v < INT_MIN || v > INT_MAX ||
                v == VD_COMPRESSION_LEVEL_DEFAULT) {
                cli_error("Invalid compression level '%s'", optarg);
                goto fail_getopt;
            }
            a.level_arg = optarg;
            a.level = (int)v;
            break;
        }
        default:
            cli_bad_option(c, argv);
        }
    }
    if (!a.out_fmt) {
        a.out_fmt = "raw";
    }
    if (a.compress && a.copy_range) {
        cli_error("Cannot enable copy offloading when -c is used");
        goto fail_getopt;
    }
    if (a.explicit_min_sparse && a.copy_range) {
        cli_error("Cannot enable copy offloading when -S is used");
        goto fail_getopt;
    }
    if (a.copy_range && a.salvage) {
        cli_error("Cannot use copy offloading in salvaging mode");
        goto fail_getopt;
    }
    if (a.skip_create && a.options) {
        cli_error("-o has no effect when skipping image creation");
        goto fail_getopt;
    }
    if (a.target_is_zero && !a.skip_create) {
        cli_error("--target-is-zero requires use of -n flag");
        goto fail_getopt;
    }

    int src_num = argc - optind - 1;
    const char *out_filename = src_num >= 1 ? argv[argc - 1] : NULL;
    if (a.bitmaps && src_num > 1) {
        cli_error("Copying bitmaps only possible with single source");
        goto fail_getopt;
    }
    if (a.options && cli_has_help_option(a.options)) {
        if (cli_read_only_format(a.out_fmt)) {
            cli_error("Format driver '%s' does not support image creation", a.out_fmt);
            goto fail_getopt;
        }
        ret = cli_print_option_help(a.out_fmt, out_filename, NULL, false);
        goto fail_getopt;
    }
    if (src_num < 1) {
        cli_error("Must specify image file name");
        goto fail_getopt;
    }
    unsigned src_flags = 0;
    if (cli_parse_cache(a.src_cache, &src_flags) < 0) {
        cli_error("Invalid source cache option: %s", a.src_cache);
        goto fail_getopt;
    }
    if (a.quiet) {
        a.progress = false;
    }
    /* QEMU opens the sources and then refuses a target format that cannot be created;
     * vdisk cannot read those formats (bochs, cloop, dmg) at all, so for sources that exist
     * the refusal comes first, to say what QEMU says. */
    bool sources_exist = true;
    for (int i = 0; i < src_num; i++) {
        sources_exist &= access(argv[optind + i], F_OK) == 0;
    }
    if (!a.skip_create && sources_exist && cli_read_only_format(a.out_fmt)) {
        cli_error("Format driver '%s' does not support image creation", a.out_fmt);
        goto fail_getopt;
    }

    cli_progress prog;
    cli_progress_init(&prog, a.progress, 1.0f);
    cli_progress_print(&prog, 0, 100);

    vd_engine *e = cli_engine_new();
    convert_state s = {
        .src_num = src_num,
        .min_sparse = a.min_sparse,
        .salvage = a.salvage,
        .quiet = a.quiet,
        .wr_in_order = a.wr_in_order,
        .num_workers = (int)a.num_workers,
        .buf_sectors = IO_BUF_SECTORS,
        .prog = &prog,
        .target_backing_sectors = -1,
    };
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    s.src = cli_xcalloc((size_t)src_num, sizeof(*s.src));
    s.src_sectors = cli_xcalloc((size_t)src_num, sizeof(*s.src_sectors));
    s.src_bytes = cli_xcalloc((size_t)src_num, sizeof(*s.src_bytes));
    vd_opts *o = NULL;
    ret = 1;

    for (int i = 0; i < src_num; i++) {
        if (cli_open(e, argv[optind + i], a.fmt, src_flags, &s.src[i]) < 0) {
            goto out;
        }
        s.src_bytes[i] = vd_disk_size(s.src[i]);
        s.src_sectors[i] = (int64_t)((s.src_bytes[i] + SECTOR - 1) / SECTOR);
        s.total_sectors += s.src_sectors[i];
    }
    if (load_snapshot(&a, &s, vd_disk_filename(s.src[0])) < 0) {
        goto out;
    }
    if (a.bitmaps && check_bitmaps(s.src[0], a.skip_broken) < 0) {
        goto out;
    }

    const char *backing = a.out_base, *backing_fmt = a.out_basefmt;
    if (!a.skip_create) {
        cli_set_option_target(out_filename);
        if (target_options(&a, &backing, &backing_fmt, &o)) {
            goto out;
        }
    }
    s.target_has_backing = backing != NULL;
    if (src_num > 1 && backing) {
        cli_error("Having a backing file for the target makes no sense when concatenating "
                  "multiple input images");
        goto out;
    }
    if (backing && !backing_fmt && !a.skip_create) {
        cli_error("Use of backing file requires explicit backing format");
        goto out;
    }
    if (a.compress && !a.skip_create) {
        const char *prealloc = vd_opts_get(o, "preallocation");
        if (strcmp(a.out_fmt, "qcow2") != 0) {
            cli_error("Compression not supported for this file format");
            goto out;
        }
        if (prealloc && strcmp(prealloc, "off") != 0) {
            cli_error("Compression and preallocation not supported at the same time");
            goto out;
        }
    }
    if (a.level_arg && !a.skip_create) {
        /* Refuse a bad level before the target exists. An unknown type is left to the
         * creation below, which reports it the way qemu-img does. */
        const char *type = o ? vd_opts_get(o, "compression_type") : NULL;
        vd_error *err = NULL;
        if (vd_compression_check(type, VD_COMPRESSION_LEVEL_DEFAULT, NULL) == 0 &&
            vd_compression_check(type, a.level, &err) < 0) {
            cli_report_err(err, NULL);
            goto out;
        }
    }

    unsigned flags = VD_OPEN_RDWR | (s.min_sparse ? VD_OPEN_UNMAP : 0);
    if (cli_parse_cache(a.cache, &flags) < 0) {
        cli_error("Invalid cache option: %s", a.cache);
        goto out;
    }
    if (!a.skip_create) {
        vd_error *err = NULL;
        /* The size is known, so the backing file need not be opened to create the target;
         * opening the target below checks it. */
        if (vd_create(e, out_filename, a.out_fmt, (uint64_t)s.total_sectors * SECTOR, o,
                      backing ? VD_CREATE_UNSAFE : 0, &err) < 0) {
            cli_report_err_for(err, out_filename, "%s: error while converting %s: ",
                               out_filename, a.out_fmt);
            goto out;
        }
    }
    if (cli_open_target(e, out_filename, a.out_fmt, flags, &s.target) < 0) {
        goto out;
    }
    if (a.compress && strcmp(vd_disk_format(s.target), "qcow2") != 0) {
        /* With -n the target's format is known only now. */
        cli_error("Compression not supported for this file format");
        goto out;
    }
    if (a.compress && a.level_arg) {
        vd_error *err = NULL;
        if (vd_set_compression_level(s.target, a.level, &err) < 0) {
            cli_report_err(err, NULL);
            goto out;
        }
    }
    if (a.bitmaps) {
        vd_image_info info = {0};
        bool ok = vd_get_info(s.target, &info, NULL) == 0 && info.has_bitmaps;
        vd_image_info_clear(&info);
        if (!ok) {
            cli_error("Format driver '%s' does not support bitmaps",
                      a.out_fmt ? a.out_fmt : vd_disk_format(s.target));
            goto out;
        }
    }
    if (a.skip_create) {
        int64_t out_sectors = (int64_t)(vd_disk_size(s.target) / SECTOR);
        if (out_sectors < s.total_sectors) {
            cli_error("output file is smaller than input file");
            goto out;
        }
    }
    if (a.target_is_zero) {
        if (s.target_has_backing) {
            cli_error("Cannot use --target-is-zero when the destination image has a backing "
                      "file");
            goto out;
        }
        s.has_zero_init = true;
    }
    if (s.target_has_backing) {
        vd_disk *tb = vd_disk_backing(s.target);
        if (tb) {
            s.target_backing_sectors = (int64_t)((vd_disk_size(tb) + SECTOR - 1) / SECTOR);
        }
    }
    /* A new target reads as zeros everywhere, so zero ranges need no writes. */
    if (!a.skip_create && s.min_sparse && !s.target_has_backing) {
        s.has_zero_init = true;
    }
    /* Aligning writes to the sparse granularity avoids read-modify-write in the target. */
    s.alignment = 1;
    while (s.alignment * 2 <= s.min_sparse) {
        s.alignment *= 2;
    }
    if (a.compress) {
        vd_image_info info = {0};
        int r = vd_get_info(s.target, &info, NULL);
        uint64_t cluster = info.has_cluster_size ? info.cluster_size : 0;
        vd_image_info_clear(&info);
        if (r < 0 || cluster < SECTOR) {
            cli_error("could not get block driver info");
            goto out;
        }
        s.compressed = true;
        s.cluster_sectors = (int64_t)(cluster / SECTOR);
        /* Requests of several whole clusters (2 MiB) give the library's compression pool
         * work for every core while the writes still go out in order. */
        s.buf_sectors = IO_BUF_SECTORS - IO_BUF_SECTORS % s.cluster_sectors;
        if (s.buf_sectors < s.cluster_sectors) {
            s.buf_sectors = s.cluster_sectors;
        }
    }

    if (!a.compress && !a.parallel_given) {
        object_store_defaults(&s);
    }

    int r = convert_do_copy(&s);
    if (r == 0 && s.compressed) {
        /* A last, empty compressed write pads the file to whole sectors, as qemu-img's. */
        r = vd_pwrite_compressed(s.target, NULL, 0, 0);
        if (r < 0) {
            cli_print_io_detail(s.target);
            cli_error("error while writing at byte %" PRId64 ": %s",
                      s.total_sectors * SECTOR, strerror(-r));
        }
    }
    if (r == 0 && a.bitmaps) {
        r = copy_bitmaps(s.src[0], s.target, a.skip_broken);
    }
    if (r == 0) {
        r = vd_flush(s.target);
        if (r < 0) {
            cli_error("error while flushing %s: %s", out_filename, strerror(-r));
        }
    }
    if (r == 0) {
        ret = 0;
    }
out:
    if (ret == 0) {
        cli_progress_print(&prog, 100, 0);
    }
    cli_progress_end(&prog);
    if (s.target && vd_close(s.target) < 0 && ret == 0) {
        cli_error("error while closing %s", out_filename);
        ret = 1;
    }
    for (int i = 0; i < src_num; i++) {
        if (s.src[i]) {
            vd_close(s.src[i]);
        }
    }
    free(s.src);
    free(s.src_sectors);
    free(s.src_bytes);
    vd_opts_free(o);
    pthread_mutex_destroy(&s.lock);
    pthread_cond_destroy(&s.cond);
    vd_engine_free(e);
fail_getopt:
    free(a.options);
    free(a.sn_id);
    free(a.sn_name);
    return ret;
}
