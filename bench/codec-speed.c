/*
 * Codec micro-benchmark behind vdisk's choice of compression libraries: per library and
 * level, single-thread speed and output size on the non-zero 64 KiB clusters of a raw image,
 * one cluster at a time, as qcow2 compresses them. Built and run by bench/codec.sh:
 *   cc -O2 bench/codec-speed.c -lz -lzstd -lisal -ldeflate -lpthread
 *   codec-speed [-s SAMPLE_MIB] [-t MIN_SECONDS] IMAGE
 * Prints markdown tables. Speeds are MB/s (10^6 bytes) of uncompressed data per second of
 * this process's CPU time, so other load on the machine disturbs them less than wall time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <isa-l/igzip_lib.h>
#include <libdeflate.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define CLUSTER 65536
/* qcow2 stores a cluster uncompressed unless its stream fits in cluster_size - 1 bytes. */
#define MAX_STREAM (CLUSTER - 1)
/* QEMU inflates the "zlib" type with 12 window bits: writers may look back 4 KiB only. */
#define QCOW2_WINDOW_BITS 12

enum lib { LIB_ZLIB, LIB_ISAL, LIB_LIBDEFLATE, LIB_ZSTD };

struct codec {
    enum lib lib;
    int level;
    const char *window; /* the window the library is set to look back */
    /* state, made by codec_open */
    z_stream zs;
    uint8_t *isal_buf;
    uint32_t isal_buf_size;
    struct libdeflate_compressor *ld;
    ZSTD_CCtx *zc;
};

static struct codec codecs[] = {
    { .lib = LIB_ZLIB, .level = 1, .window = "4 KiB" },
    { .lib = LIB_ZLIB, .level = 6, .window = "4 KiB" },
    { .lib = LIB_ZLIB, .level = 9, .window = "4 KiB" },
    { .lib = LIB_ISAL, .level = 0, .window = "4 KiB" },
    { .lib = LIB_ISAL, .level = 1, .window = "4 KiB" },
    { .lib = LIB_ISAL, .level = 2, .window = "4 KiB" },
    { .lib = LIB_ISAL, .level = 3, .window = "4 KiB" },
    { .lib = LIB_LIBDEFLATE, .level = 1, .window = "32 KiB" },
    { .lib = LIB_LIBDEFLATE, .level = 6, .window = "32 KiB" },
    { .lib = LIB_LIBDEFLATE, .level = 12, .window = "32 KiB" },
    { .lib = LIB_ZSTD, .level = 1, .window = "frame" },
    { .lib = LIB_ZSTD, .level = 3, .window = "frame" },
    { .lib = LIB_ZSTD, .level = 9, .window = "frame" },
};
#define NCODECS (sizeof(codecs) / sizeof(codecs[0]))

static const char *lib_name[] = { "zlib", "ISA-L igzip", "libdeflate", "zstd" };

static void die(const char *what)
{
    fprintf(stderr, "codec-speed: %s\n", what);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        die("out of memory");
    }
    return p;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void codec_open(struct codec *c)
{
    switch (c->lib) {
    case LIB_ZLIB:
        /* QEMU's parameters: raw deflate, 12 window bits, memLevel 9. */
        if (deflateInit2(&c->zs, c->level, Z_DEFLATED, -QCOW2_WINDOW_BITS, 9,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            die("deflateInit2 failed");
        }
        break;
    case LIB_ISAL: {
        static const uint32_t sizes[] = { ISAL_DEF_LVL0_DEFAULT, ISAL_DEF_LVL1_DEFAULT,
                                          ISAL_DEF_LVL2_DEFAULT, ISAL_DEF_LVL3_DEFAULT };
        c->isal_buf_size = sizes[c->level];
        c->isal_buf = c->isal_buf_size ? xmalloc(c->isal_buf_size) : NULL;
        break;
    }
    case LIB_LIBDEFLATE:
        c->ld = libdeflate_alloc_compressor(c->level);
        if (!c->ld) {
            die("libdeflate_alloc_compressor failed");
        }
        break;
    case LIB_ZSTD:
        c->zc = ZSTD_createCCtx();
        if (!c->zc ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->zc, ZSTD_c_compressionLevel, c->level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->zc, ZSTD_c_checksumFlag, 0))) {
            die("zstd context setup failed");
        }
        break;
    }
}

static void codec_close(struct codec *c)
{
    switch (c->lib) {
    case LIB_ZLIB:
        deflateEnd(&c->zs);
        break;
    case LIB_ISAL:
        free(c->isal_buf);
        break;
    case LIB_LIBDEFLATE:
        libdeflate_free_compressor(c->ld);
        break;
    case LIB_ZSTD:
        ZSTD_freeCCtx(c->zc);
        break;
    }
}

/* Compresses one cluster into out (MAX_STREAM bytes); returns the stream's length, or 0 when
 * it does not fit and qcow2 would store the cluster uncompressed. */
static size_t codec_compress(struct codec *c, const uint8_t *in, uint8_t *out)
{
    switch (c->lib) {
    case LIB_ZLIB:
        if (deflateReset(&c->zs) != Z_OK) {
            die("deflateReset failed");
        }
        c->zs.next_in = (uint8_t *)in;
        c->zs.avail_in = CLUSTER;
        c->zs.next_out = out;
        c->zs.avail_out = MAX_STREAM;
        return deflate(&c->zs, Z_FINISH) == Z_STREAM_END ? c->zs.total_out : 0;
    case LIB_ISAL: {
        struct isal_zstream s;
        isal_deflate_stateless_init(&s);
        s.level = c->level;
        s.level_buf = c->isal_buf;
        s.level_buf_size = c->isal_buf_size;
        s.hist_bits = QCOW2_WINDOW_BITS;
        s.gzip_flag = IGZIP_DEFLATE;
        s.end_of_stream = 1;
        s.flush = NO_FLUSH;
        s.next_in = (uint8_t *)in;
        s.avail_in = CLUSTER;
        s.next_out = out;
        s.avail_out = MAX_STREAM;
        int ret = isal_deflate_stateless(&s);
        if (ret == STATELESS_OVERFLOW) {
            return 0;
        }
        if (ret != COMP_OK) {
            die("isal_deflate_stateless failed");
        }
        return s.total_out;
    }
    case LIB_LIBDEFLATE:
        return libdeflate_deflate_compress(c->ld, in, CLUSTER, out, MAX_STREAM);
    case LIB_ZSTD: {
        size_t n = ZSTD_compress2(c->zc, out, MAX_STREAM, in, CLUSTER);
        return ZSTD_isError(n) ? 0 : n;
    }
    }
    return 0;
}

/* The sample: non-zero clusters of the image, and their compressed forms for the
 * decompression runs. */
static uint8_t *data;
static size_t nclusters;

struct streams {
    uint8_t *buf;
    size_t *off, *len; /* len 0 = stored uncompressed */
};

static void streams_alloc(struct streams *s)
{
    s->buf = xmalloc(nclusters * (size_t)MAX_STREAM);
    s->off = xmalloc(nclusters * sizeof(size_t));
    s->len = xmalloc(nclusters * sizeof(size_t));
}

/* Whether a raw deflate stream only looks back 4 KiB. zlib's inflate refuses a distance
 * reaching before its window plus what the current call wrote, so inflating one byte per
 * call with a 4 KiB window checks every match exactly (slowly: see WINDOW_CHECKS). */
static bool window_4k_ok(const uint8_t *in, size_t len, uint8_t *out)
{
    z_stream zs = { 0 };
    if (inflateInit2(&zs, -QCOW2_WINDOW_BITS) != Z_OK) {
        die("inflateInit2 failed");
    }
    zs.next_in = (uint8_t *)in;
    zs.avail_in = len;
    zs.next_out = out;
    int ret = Z_OK;
    while (ret == Z_OK && zs.total_out < CLUSTER) {
        zs.avail_out = 1;
        ret = inflate(&zs, Z_NO_FLUSH);
    }
    bool ok = (ret == Z_OK || ret == Z_STREAM_END) && zs.total_out == CLUSTER;
    inflateEnd(&zs);
    return ok;
}

/* Streams checked per codec with window_4k_ok, evenly spaced. */
#define WINDOW_CHECKS 256

struct cresult {
    double mbs;
    uint64_t out_bytes;
    size_t stored;
    int window; /* 1 = every stream within 4 KiB, 0 = some reach further, -1 = not deflate */
};

/* Compresses the sample with c: one pass to size and (when keep) keep the streams, then
 * timed passes until min_secs of CPU time have been spent. */
static struct cresult run_compress(struct codec *c, double min_secs, struct streams *keep)
{
    struct cresult r = { 0 };
    uint8_t *out = xmalloc(MAX_STREAM);
    uint8_t *check = xmalloc(CLUSTER);
    size_t pos = 0;

    codec_open(c);
    r.window = c->lib == LIB_ZSTD ? -1 : 1;
    double t0 = cpu_now();
    for (size_t i = 0; i < nclusters; i++) {
        size_t n = codec_compress(c, data + i * CLUSTER, out);
        r.out_bytes += n ? n : CLUSTER;
        r.stored += !n;
        if (keep) {
            keep->off[i] = pos;
            keep->len[i] = n;
            memcpy(keep->buf + pos, out, n);
            pos += n;
        }
    }
    double spent = cpu_now() - t0;
    uint64_t bytes = (uint64_t)nclusters * CLUSTER;
    int passes = 1;
    while (spent < min_secs) {
        for (size_t i = 0; i < nclusters; i++) {
            codec_compress(c, data + i * CLUSTER, out);
        }
        passes++;
        spent = cpu_now() - t0;
    }
    r.mbs = bytes * (double)passes / 1e6 / spent;
    /* Untimed: does every stream keep within the 4 KiB window? */
    if (r.window == 1) {
        size_t step = nclusters > WINDOW_CHECKS ? nclusters / WINDOW_CHECKS : 1;
        for (size_t i = 0; i < nclusters && r.window == 1; i += step) {
            size_t n = codec_compress(c, data + i * CLUSTER, out);
            if (n && !window_4k_ok(out, n, check)) {
                r.window = 0;
            }
        }
    }
    codec_close(c);
    free(out);
    free(check);
    return r;
}

enum dec { DEC_ZLIB, DEC_LIBDEFLATE, DEC_ISAL, DEC_ZSTD };

static const char *dec_name[] = {
    "zlib inflate (raw, 12 window bits)",
    "libdeflate_deflate_decompress_ex",
    "ISA-L isal_inflate_stateless",
    "zstd ZSTD_decompressDCtx",
};

/* Decompresses one stream into a cluster; false unless it fills the cluster exactly. */
static bool decompress_one(enum dec d, void *ctx, const uint8_t *in, size_t len, uint8_t *out)
{
    switch (d) {
    case DEC_ZLIB: {
        z_stream *zs = ctx;
        if (inflateReset(zs) != Z_OK) {
            return false;
        }
        zs->next_in = (uint8_t *)in;
        zs->avail_in = len;
        zs->next_out = out;
        zs->avail_out = CLUSTER;
        int ret = inflate(zs, Z_FINISH);
        return (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && zs->total_out == CLUSTER;
    }
    case DEC_LIBDEFLATE: {
        size_t used_in, used_out;
        return libdeflate_deflate_decompress_ex(ctx, in, len, out, CLUSTER, &used_in,
                                                &used_out) == LIBDEFLATE_SUCCESS &&
               used_out == CLUSTER;
    }
    case DEC_ISAL: {
        struct inflate_state *st = ctx;
        isal_inflate_init(st);
        st->crc_flag = ISAL_DEFLATE;
        st->next_in = (uint8_t *)in;
        st->avail_in = len;
        st->next_out = out;
        st->avail_out = CLUSTER;
        int ret = isal_inflate_stateless(st);
        return (ret == ISAL_DECOMP_OK || ret == ISAL_END_INPUT) && st->total_out == CLUSTER;
    }
    case DEC_ZSTD:
        return ZSTD_decompressDCtx(ctx, out, CLUSTER, in, len) == CLUSTER;
    }
    return false;
}

/* MB/s of output over the compressed clusters of s; the first pass also checks every
 * cluster against the original. */
static double run_decompress(enum dec d, const struct streams *s, double min_secs)
{
    z_stream zs = { 0 };
    struct inflate_state isal;
    void *ctx = NULL;
    switch (d) {
    case DEC_ZLIB:
        if (inflateInit2(&zs, -QCOW2_WINDOW_BITS) != Z_OK) {
            die("inflateInit2 failed");
        }
        ctx = &zs;
        break;
    case DEC_LIBDEFLATE:
        ctx = libdeflate_alloc_decompressor();
        break;
    case DEC_ISAL:
        ctx = &isal;
        break;
    case DEC_ZSTD:
        ctx = ZSTD_createDCtx();
        break;
    }
    if (!ctx) {
        die("cannot make a decompression context");
    }
    uint8_t *out = xmalloc(CLUSTER);
    uint64_t bytes = 0;
    for (size_t i = 0; i < nclusters; i++) {
        if (s->len[i] == 0) {
            continue;
        }
        if (!decompress_one(d, ctx, s->buf + s->off[i], s->len[i], out) ||
            memcmp(out, data + i * CLUSTER, CLUSTER) != 0) {
            fprintf(stderr, "codec-speed: %s: cluster %zu does not decompress to its data\n",
                    dec_name[d], i);
            exit(1);
        }
        bytes += CLUSTER;
    }
    double t0 = cpu_now(), spent;
    int passes = 0;
    do {
        for (size_t i = 0; i < nclusters; i++) {
            if (s->len[i]) {
                decompress_one(d, ctx, s->buf + s->off[i], s->len[i], out);
            }
        }
        passes++;
        spent = cpu_now() - t0;
    } while (spent < min_secs);
    free(out);
    if (d == DEC_ZLIB) {
        inflateEnd(&zs);
    } else if (d == DEC_LIBDEFLATE) {
        libdeflate_free_decompressor(ctx);
    } else if (d == DEC_ZSTD) {
        ZSTD_freeDCtx(ctx);
    }
    return spent > 0 ? bytes * (double)passes / 1e6 / spent : 0;
}

static bool all_zero(const uint8_t *p)
{
    static const uint8_t zero[CLUSTER];
    return memcmp(p, zero, CLUSTER) == 0;
}

/* Reads the non-zero clusters of the image, evenly spaced over it, up to sample_bytes. */
static void load_sample(const char *path, uint64_t sample_bytes, size_t *total_nonzero)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        exit(1);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        die("fstat failed");
    }
    size_t n = st.st_size / CLUSTER, count = 0;
    uint32_t *nonzero = xmalloc((n + 1) * sizeof(uint32_t));
    uint8_t *buf = xmalloc(CLUSTER);
    for (size_t i = 0; i < n; i++) {
        if (pread(fd, buf, CLUSTER, (off_t)i * CLUSTER) != CLUSTER) {
            die("short read from the image");
        }
        if (!all_zero(buf)) {
            nonzero[count++] = i;
        }
    }
    if (count == 0) {
        die("the image has no non-zero 64 KiB cluster");
    }
    *total_nonzero = count;
    size_t want = sample_bytes / CLUSTER;
    nclusters = want && want < count ? want : count;
    data = xmalloc(nclusters * (size_t)CLUSTER);
    for (size_t j = 0; j < nclusters; j++) {
        size_t i = nonzero[(uint64_t)j * count / nclusters];
        if (pread(fd, data + j * CLUSTER, CLUSTER, (off_t)i * CLUSTER) != CLUSTER) {
            die("short read from the image");
        }
    }
    free(buf);
    free(nonzero);
    close(fd);
}

/* Checks that the 4 KiB window test can tell: a stream with 8 KiB matches must fail it. */
static void self_test(void)
{
    uint8_t *in = xmalloc(CLUSTER), *out = xmalloc(CLUSTER + 1024), *chk = xmalloc(CLUSTER);
    uint32_t x = 12345;
    for (size_t i = 0; i < 8192; i++) {
        x = x * 1103515245 + 12345;
        in[i] = x >> 24;
    }
    for (size_t i = 8192; i < CLUSTER; i++) {
        in[i] = in[i - 8192];
    }
    z_stream zs = { 0 };
    if (deflateInit2(&zs, 6, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
        die("deflateInit2 failed");
    }
    zs.next_in = in;
    zs.avail_in = CLUSTER;
    zs.next_out = out;
    zs.avail_out = CLUSTER + 1024;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        die("self-test deflate failed");
    }
    if (window_4k_ok(out, zs.total_out, chk)) {
        die("self-test: the 4 KiB window check accepted an 8 KiB distance");
    }
    deflateEnd(&zs);
    free(in);
    free(out);
    free(chk);
}

int main(int argc, char **argv)
{
    uint64_t sample_mib = 128;
    double min_secs = 0.5;
    int opt;
    while ((opt = getopt(argc, argv, "s:t:")) != -1) {
        if (opt == 's') {
            sample_mib = strtoull(optarg, NULL, 10);
        } else if (opt == 't') {
            min_secs = strtod(optarg, NULL);
        } else {
            fprintf(stderr, "usage: %s [-s SAMPLE_MIB] [-t MIN_SECONDS] IMAGE\n", argv[0]);
            return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: %s [-s SAMPLE_MIB] [-t MIN_SECONDS] IMAGE\n", argv[0]);
        return 2;
    }
    self_test();
    size_t total_nonzero;
    load_sample(argv[optind], sample_mib << 20, &total_nonzero);
    uint64_t in_bytes = (uint64_t)nclusters * CLUSTER;

    printf("Sample: %zu non-zero 64 KiB clusters (%.1f MiB) of the %zu in %s, evenly "
           "spaced. Libraries: zlib %s, libdeflate %s, zstd %s.\n\n",
           nclusters, in_bytes / 1048576.0, total_nonzero, argv[optind], zlibVersion(),
           LIBDEFLATE_VERSION_STRING,
           ZSTD_versionString());
    printf("Compression, one cluster at a time on one thread. Output counts a cluster that "
           "does not shrink below 64 KiB as stored (64 KiB), as qcow2 does. \"4 KiB window\" "
           "= no match in the deflate streams reaches back further than 4 KiB (checked on "
           "up to 256 evenly spaced clusters by inflating them with zlib's 4 KiB window one "
           "byte at a time); only such streams may be written as qcow2's zlib type.\n\n");
    printf("| library | level | window | compress MB/s | output / input | size vs zlib 6 "
           "| stored | 4 KiB window |\n");
    printf("|---|---|---|---|---|---|---|---|\n");

    struct streams zlib6 = { 0 }, zstd3 = { 0 };
    streams_alloc(&zlib6);
    streams_alloc(&zstd3);
    uint64_t zlib6_bytes = 0;
    for (size_t k = 0; k < NCODECS; k++) {
        struct codec *c = &codecs[k];
        struct streams *keep = NULL;
        if (c->lib == LIB_ZLIB && c->level == 6) {
            keep = &zlib6;
        } else if (c->lib == LIB_ZSTD && c->level == 3) {
            keep = &zstd3;
        }
        struct cresult r = run_compress(c, min_secs, keep);
        if (keep == &zlib6) {
            zlib6_bytes = r.out_bytes;
        }
        char vs[32] = "-";
        if (zlib6_bytes) {
            snprintf(vs, sizeof(vs), "%+.1f%%", 100.0 * r.out_bytes / zlib6_bytes - 100.0);
        }
        printf("| %s | %d | %s | %.0f | %.1f%% | %s | %.1f%% | %s |\n", lib_name[c->lib],
               c->level, c->window, r.mbs, 100.0 * r.out_bytes / in_bytes, vs,
               100.0 * r.stored / nclusters,
               r.window < 0 ? "n/a" : r.window ? "yes" : "**no**");
        fflush(stdout);
    }

    printf("\nDecompression of the same clusters (those that compressed) on one thread, "
           "MB/s of output; every cluster is checked against its data first.\n\n");
    printf("| decoder | data | MB/s |\n|---|---|---|\n");
    static const enum dec decs[] = { DEC_ZLIB, DEC_LIBDEFLATE, DEC_ISAL };
    for (size_t k = 0; k < sizeof(decs) / sizeof(decs[0]); k++) {
        printf("| %s | zlib level 6, 4 KiB window (as QEMU writes) | %.0f |\n",
               dec_name[decs[k]], run_decompress(decs[k], &zlib6, min_secs));
        fflush(stdout);
    }
    printf("| %s | zstd level 3 (as QEMU writes) | %.0f |\n", dec_name[DEC_ZSTD],
           run_decompress(DEC_ZSTD, &zstd3, min_secs));
    return 0;
}
