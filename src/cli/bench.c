/* `vdisk bench`: qemu-img bench 7.2 compatible. The same options, output and work: COUNT
 * requests of BUFFER_SIZE bytes at offsets start, start+step, ... wrapping at the disk size,
 * DEPTH at a time, with the same flushes. qemu keeps DEPTH requests in flight through its
 * AIO thread pool; here a pool of worker threads claims request indices from one atomic
 * counter, so there is no per-request allocation and no lock on the request path. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli-util.h"
#include "cli/io-cmds.h"

/* With O_DIRECT a request waits for the device, so as many threads as qemu's AIO pool (64)
 * keep the queue full. Through the page cache a request is CPU work: more threads than CPUs
 * only add switching (measured on 2 cores: 1-2 threads beat 16-64 for cached reads and
 * writes, 16-64 beat 1-8 for -t none). VDISK_BENCH_THREADS overrides it for experiments. */
#define BENCH_DIRECT_THREADS 64

enum {
    OPT_FLUSH_INTERVAL = 300,
    OPT_PATTERN,
    OPT_NO_DRAIN,
};

typedef struct bench {
    vd_disk *disk;
    uint64_t image_size;
    uint64_t start;      /* -o */
    uint64_t step;
    uint64_t bufsize;
    int64_t count;
    int64_t depth;
    bool write;
    int pattern;
    int64_t flush_interval;
    bool drain;

    /* The current segment: requests [next, end) run before the next drain-and-flush. */
    _Atomic int64_t next;
    int64_t end;
    _Atomic int64_t tail_flushes;  /* --no-drain: flushes issued once all are submitted */
    int64_t tail_flush_count;
    _Atomic int error;             /* first failure (negative errno), 0 if none */
    /* qemu skips a flush when no write completed since the last one (its write_gen and
     * flushed_gen); counting writes is only needed when flushes are issued. */
    _Atomic uint64_t write_gen;
    uint64_t flushed_gen;
    pthread_mutex_t flush_lock;
    bool finished;                 /* no more segments: workers exit */
    pthread_barrier_t start_barrier;
    pthread_barrier_t end_barrier;
} bench;

typedef struct bench_worker {
    bench *b;
    uint8_t *buf;
    pthread_t thread;
} bench_worker;

/* Offset of request i: qemu adds the step after each request and wraps at the disk size,
 * but never wraps the start offset itself. */
static uint64_t request_offset(const bench *b, int64_t i)
{
    if (i == 0) {
        return b->start;
    }
    if (b->image_size == 0) {
        return 0;  /* qemu 7.2 divides by zero here */
    }
    /* i and step are below 2^31, so i * step cannot overflow. */
    uint64_t size = b->image_size;
    return (b->start % size + (uint64_t)i * b->step % size) % size;
}

/* qemu's blk_check_byte_request, then the request itself. */
static int do_request(bench *b, uint8_t *buf, uint64_t off)
{
    if (off > b->image_size || b->image_size - off < b->bufsize) {
        return -EIO;
    }
    return b->write ? vd_pwrite(b->disk, buf, b->bufsize, off, 0)
                    : vd_pread(b->disk, buf, b->bufsize, off);
}

static int bench_flush(bench *b)
{
    int ret = 0;
    pthread_mutex_lock(&b->flush_lock);
    uint64_t gen = atomic_load(&b->write_gen);
    if (gen != b->flushed_gen) {
        ret = vd_flush(b->disk);
        if (ret == 0) {
            b->flushed_gen = gen;
        }
    }
    pthread_mutex_unlock(&b->flush_lock);
    return ret;
}

static void set_error(bench *b, int ret)
{
    int expected = 0;
    atomic_compare_exchange_strong(&b->error, &expected, ret);
}

/* Without draining, qemu flushes on the completion that follows each submission that leaves
 * a multiple of the interval unsubmitted (and on every completion once all are submitted). */
static bool undrained_flush_due(const bench *b, int64_t i)
{
    int64_t submitted = i + 1;
    int64_t first = b->depth < b->count ? b->depth : b->count;
    return b->flush_interval && !b->drain && submitted >= first && submitted < b->count &&
           (b->count - submitted) % b->flush_interval == 0;
}

static void run_segment(bench_worker *w)
{
    bench *b = w->b;
    for (;;) {
        if (atomic_load_explicit(&b->error, memory_order_relaxed)) {
            return;
        }
        int64_t i = atomic_fetch_add_explicit(&b->next, 1, memory_order_relaxed);
        if (i >= b->end) {
            break;
        }
        int ret = do_request(b, w->buf, request_offset(b, i));
        if (ret == 0 && b->write && b->flush_interval) {
            atomic_fetch_add_explicit(&b->write_gen, 1, memory_order_relaxed);
        }
        if (ret == 0 && undrained_flush_due(b, i)) {
            ret = bench_flush(b);
        }
        if (ret < 0) {
            set_error(b, ret);
            return;
        }
    }
    if (b->flush_interval && !b->drain) {
        while (atomic_fetch_add(&b->tail_flushes, 1) < b->tail_flush_count) {
            int ret = bench_flush(b);
            if (ret < 0) {
                set_error(b, ret);
                return;
            }
        }
    }
}

static void *worker_main(void *opaque)
{
    bench_worker *w = opaque;
    bench *b = w->b;
    for (;;) {
        pthread_barrier_wait(&b->start_barrier);
        if (b->finished) {
            return NULL;
        }
        run_segment(w);
        pthread_barrier_wait(&b->end_barrier);
    }
}

/* The submitted-request counts after which qemu drains and flushes, in order: every count s
 * from the first full queue on that leaves a multiple of the interval unsubmitted. Returns
 * the next boundary after `from`, or count. */
static int64_t next_boundary(const bench *b, int64_t from)
{
    if (!b->flush_interval || !b->drain) {
        return b->count;
    }
    int64_t first = b->depth < b->count ? b->depth : b->count;
    int64_t s = from + 1 > first ? from + 1 : first;
    int64_t rem = (b->count - s) % b->flush_interval;
    s += rem;
    return s < b->count ? s : b->count;
}

static int run_bench(bench *b, int nthreads, double *elapsed)
{
    bench_worker *w = cli_xcalloc((size_t)nthreads, sizeof(*w));
    struct timespec t1, t2;
    int ret = 0;

    pthread_mutex_init(&b->flush_lock, NULL);
    pthread_barrier_init(&b->start_barrier, NULL, (unsigned)nthreads + 1);
    pthread_barrier_init(&b->end_barrier, NULL, (unsigned)nthreads + 1);
    /* One buffer for all workers, as qemu-img bench has, on huge pages where it is big
     * enough: with O_DIRECT, a 1 MiB request from scattered 4 KiB pages needs 256 segments,
     * more than a virtio disk takes (254), so the kernel splits it into two device requests;
     * physically contiguous pages keep it one. */
    size_t slot = ((size_t)b->bufsize + 4095) & ~(size_t)4095;  /* O_DIRECT alignment */
    slot = slot ? slot : 4096;
    uint8_t *bufs = cli_alloc_io_buffer(slot * (size_t)nthreads);
    memset(bufs, b->pattern, slot * (size_t)nthreads);
    for (int t = 0; t < nthreads; t++) {
        w[t].b = b;
        w[t].buf = bufs + slot * (size_t)t;
        if (pthread_create(&w[t].thread, NULL, worker_main, &w[t]) != 0) {
            cli_error("Could not start worker threads: %s", strerror(errno));
            abort();
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);
    bool final_flush = false;
    int64_t done = 0;
    while (done < b->count) {
        int64_t end = next_boundary(b, done);
        atomic_store(&b->next, done);
        b->end = end;
        pthread_barrier_wait(&b->start_barrier);
        pthread_barrier_wait(&b->end_barrier);
        ret = atomic_load(&b->error);
        if (ret < 0) {
            break;
        }
        done = end;
        if (b->flush_interval && b->drain && (b->count - end) % b->flush_interval == 0) {
            if (end == b->count) {
                /* qemu issues this last flush, but stops its clock before it completes. */
                final_flush = true;
            } else if ((ret = bench_flush(b)) < 0) {
                break;
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);

    b->finished = true;
    pthread_barrier_wait(&b->start_barrier);
    for (int t = 0; t < nthreads; t++) {
        pthread_join(w[t].thread, NULL);
    }
    free(bufs);
    free(w);
    pthread_barrier_destroy(&b->start_barrier);
    pthread_barrier_destroy(&b->end_barrier);
    if (ret == 0 && final_flush) {
        ret = bench_flush(b);
    }
    pthread_mutex_destroy(&b->flush_lock);
    *elapsed = (double)(t2.tv_sec - t1.tv_sec) + (double)(t2.tv_nsec - t1.tv_nsec) / 1e9;
    return ret;
}

/* qemu_strtoul(s, NULL, 0, &v) with v <= max: any base, whole string. */
static bool parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno || end == s || *end || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* qemu-img's cvtnum_full: prints its two kinds of complaint and returns -1 on error. */
static int parse_size(const char *name, const char *s, int64_t max, int64_t *out)
{
    int64_t v = io_cvtnum(s);
    if (v < 0 && v != -ERANGE) {
        cli_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", name);
        cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if (v < 0 || v > max) {
        cli_error("Invalid %s specified. Must be between 0 and %" PRId64 ".", name, max);
        return -1;
    }
    *out = v;
    return 0;
}

static int bench_threads(int64_t depth, unsigned flags)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t n = (flags & VD_OPEN_NOCACHE) ? BENCH_DIRECT_THREADS : (ncpu > 0 ? ncpu : 1);
    const char *env = getenv("VDISK_BENCH_THREADS");
    if (env && atoi(env) > 0) {
        n = atoi(env);
    }
    return (int)(depth < n ? depth : n);
}

int cmd_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL},
        {"pattern", required_argument, NULL, OPT_PATTERN},
        {"no-drain", no_argument, NULL, OPT_NO_DRAIN},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    bench b = {.count = 75000, .depth = 64, .bufsize = 4096, .drain = true};
    const char *fmt = NULL;
    unsigned flags = 0;  /* qemu-img bench: read-only, cache=writeback */
    bool native_aio = false;
    int64_t step = 0;
    int c;

    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_options, NULL)) != -1) {
        unsigned long v;
        int64_t sz;
        switch (c) {
        case 'h':
            cli_help();
        case 'c':
            if (!parse_ulong(optarg, INT_MAX, &v)) {
                cli_error("Invalid request count specified");
                return 1;
            }
            b.count = (int64_t)v;
            break;
        case 'd':
            /* qemu 7.2 accepts a depth of 0 and then never sends a request; refuse it. */
            if (!parse_ulong(optarg, INT_MAX, &v) || v == 0) {
                cli_error("Invalid queue depth specified");
                return 1;
            }
            b.depth = (int64_t)v;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'n':
            native_aio = true;
            break;
        case 'i': {
            int a = io_parse_aio(optarg);
            if (a < 0) {
                cli_error("Invalid aio option: %s", optarg);
                return 1;
            }
            native_aio = native_aio || a == 1;  /* qemu only ever adds the flag */
            break;
        }
        case 'o':
            if (parse_size("offset", optarg, INT64_MAX, &sz) < 0) {
                return 1;
            }
            b.start = (uint64_t)sz;
            break;
        case 'q':
            break;  /* qemu-img bench prints its lines even when quiet */
        case 's':
            if (parse_size("buffer size", optarg, INT_MAX, &sz) < 0) {
                return 1;
            }
            b.bufsize = (uint64_t)sz;
            break;
        case 'S':
            if (parse_size("step_size", optarg, INT_MAX, &sz) < 0) {
                return 1;
            }
            step = sz;
            break;
        case 't':
            if (cli_parse_cache(optarg, &flags) < 0) {
                cli_error("Invalid cache mode");
                return 1;
            }
            break;
        case 'w':
            flags |= VD_OPEN_RDWR;
            b.write = true;
            break;
        case 'U':
            break;  /* vdisk takes no image locks to share */
        case OPT_PATTERN:
            if (!parse_ulong(optarg, 0xff, &v)) {
                cli_error("Invalid pattern byte specified");
                return 1;
            }
            b.pattern = (int)v;
            break;
        case OPT_FLUSH_INTERVAL:
            if (!parse_ulong(optarg, INT_MAX, &v)) {
                cli_error("Invalid flush interval specified");
                return 1;
            }
            b.flush_interval = (int64_t)v;
            break;
        case OPT_NO_DRAIN:
            b.drain = false;
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        cli_error_exit("Expecting one image file name");
    }
    const char *filename = argv[argc - 1];
    if (!b.write && b.flush_interval) {
        cli_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (b.flush_interval && b.flush_interval < b.depth) {
        cli_error("Flush interval can't be smaller than depth");
        return 1;
    }
    if (native_aio && !(flags & VD_OPEN_NOCACHE)) {
        cli_error("Could not open '%s': aio=native was specified, but it requires "
                  "cache.direct=on, which was not specified.", filename);
        return 1;
    }

    vd_engine *e = cli_engine_new();
    if (!e) {
        cli_error("out of memory");
        return 1;
    }
    if (cli_open(e, filename, fmt, flags, &b.disk) < 0) {
        vd_engine_free(e);
        return 1;
    }
    b.image_size = vd_disk_size(b.disk);
    b.step = step ? (uint64_t)step : b.bufsize;
    b.tail_flush_count = b.depth < b.count ? b.depth : b.count;

    printf("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %" PRId64
           ", step size %d)\n", (int)b.count, b.write ? "write" : "read", (int)b.bufsize,
           (int)b.depth, (int64_t)b.start, (int)b.step);
    if (b.flush_interval) {
        printf("Sending flush every %d requests\n", (int)b.flush_interval);
    }

    double elapsed = 0;
    int ret = run_bench(&b, bench_threads(b.depth, flags), &elapsed);
    if (ret < 0) {
        /* Unlike cli_error, no flush of stdout first: qemu-img's stdout stays buffered, so in
         * a log of both streams its error comes before the "Sending" line. */
        fprintf(stderr, "%s: Failed request: %s\n", cli_progname(), strerror(-ret));
    } else {
        printf("Run completed in %3.3f seconds.\n", elapsed);
    }
    /* Closing flushes a written image, as qemu-img's blk_unref does after its clock stops. */
    vd_close(b.disk);
    vd_engine_free(e);
    return ret < 0 ? 1 : 0;
}
