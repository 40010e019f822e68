/* The I/O commands of `vdisk io` and the command table, each with qemu-io 7.2's syntax,
 * options, checks and messages in qemu's order, so that a qemu-io script gives the same
 * output here. Asynchronous commands (aio_read, aio_write) complete before they
 * return: they print what qemu-io prints when the request completes. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli-util.h"
#include "cli/io-cmds.h"

#define MISALIGN_OFFSET 16
#define SECTOR_SIZE 512

/* ---- helpers ---------------------------------------------------------------------------- */

/* A pattern-filled buffer, aligned for O_DIRECT, or deliberately misaligned with -m. */
static void *io_alloc(io_state *s, size_t len, int pattern)
{
    size_t extra = s->misalign ? MISALIGN_OFFSET : 0;
    char *buf = cli_alloc_io_buffer(len + extra);
    memset(buf, pattern, len + extra);
    return buf + extra;
}

static void io_free(io_state *s, void *p)
{
    if (p) {
        free((char *)p - (s->misalign ? MISALIGN_OFFSET : 0));
    }
}

/* qemu's parse_pattern: a byte value in any base strtol accepts. */
static int parse_pattern(const char *arg)
{
    char *end = NULL;
    long pattern = strtol(arg, &end, 0);
    if (pattern < 0 || pattern > UCHAR_MAX || *end != '\0') {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)pattern;
}

/* qemu's blk_check_byte_request: requests must lie inside the disk. */
static int check_range(io_state *s, int64_t offset, int64_t bytes)
{
    uint64_t len = vd_disk_size(s->disk);
    if (offset < 0 || bytes < 0 || (uint64_t)offset > len || len - (uint64_t)offset <
        (uint64_t)bytes) {
        return -EIO;
    }
    return 0;
}

static void now(struct timespec *t)
{
    clock_gettime(CLOCK_MONOTONIC, t);
}

static int do_pread(io_state *s, void *buf, int64_t offset, int64_t count)
{
    int ret = check_range(s, offset, count);
    return ret < 0 ? ret : vd_pread(s->disk, buf, (uint64_t)count, (uint64_t)offset);
}

static int do_pwrite(io_state *s, const void *buf, int64_t offset, int64_t count,
                     unsigned flags)
{
    int ret = check_range(s, offset, count);
    return ret < 0 ? ret : vd_pwrite(s->disk, buf, (uint64_t)count, (uint64_t)offset, flags);
}

/* qemu-io's do_write_compressed: whole clusters, or the last partial one; a length of 0
 * pads the image file to whole sectors. */
static int do_pwrite_compressed(io_state *s, const void *buf, int64_t offset, int64_t count)
{
    int ret = check_range(s, offset, count);
    return ret < 0 ? ret : vd_pwrite_compressed(s->disk, buf, (uint64_t)count,
                                                (uint64_t)offset);
}

static int do_pwrite_zeroes(io_state *s, int64_t offset, int64_t count, unsigned flags)
{
    int ret = check_range(s, offset, count);
    return ret < 0 ? ret : vd_pwrite_zeroes(s->disk, (uint64_t)offset, (uint64_t)count, flags);
}

/* qemu's BDRV_MAX_LENGTH: INT64_MAX rounded down to 1 GiB, the end of any request. */
#define IO_MAX_LENGTH (INT64_MAX & ~(int64_t)((1 << 30) - 1))

/* read -b / write -b: the VM state area instead of the disk (qemu-io's do_load_vmstate and
 * do_save_vmstate). Positions are not bounded by the disk size, only as qemu bounds them. */
static int do_vmstate_rw(io_state *s, void *buf, int64_t offset, int64_t count, bool write)
{
    if (offset > IO_MAX_LENGTH || count > IO_MAX_LENGTH - offset) {
        return -EIO;
    }
    vd_error *err = NULL;
    int ret;
    if (count == 0) {
        /* qemu asks the format even for nothing: a raw image refuses an empty request too.
         * The library answers an empty request without asking, so a one-byte read (which
         * changes nothing) finds out whether the format keeps VM state at all. */
        uint8_t probe;
        ret = vd_vmstate_read(s->disk, &probe, 1, 0, &err);
        vd_error_free(err);
        return ret == -ENOTSUP ? ret : 0;
    }
    ret = write ? vd_vmstate_write(s->disk, buf, (uint64_t)count, (uint64_t)offset, &err)
                : vd_vmstate_read(s->disk, buf, (uint64_t)count, (uint64_t)offset, &err);
    vd_error_free(err);
    if (ret == -EINVAL) {
        /* The library refuses positions that no L1 table can map. Nothing is stored there:
         * qemu reads zeros, and fails a write when it cannot grow the L1 table that far. */
        if (!write) {
            memset(buf, 0, (size_t)count);
            return 0;
        }
        return -EFBIG;
    }
    if (ret == 0 && write && (s->flags & VD_OPEN_WRITETHROUGH)) {
        /* qemu flushes a VM state write when the write cache is off. */
        ret = vd_flush(s->disk);
    }
    return ret;
}

/* Parses the lengths of a vectored request (qemu's create_iovec) and returns one buffer of
 * their total size, or NULL after printing why. */
static void *create_iovec(io_state *s, char **argv, int nr_iov, int pattern, int64_t *total)
{
    uint64_t count = 0;
    for (int i = 0; i < nr_iov; i++) {
        int64_t len = io_cvtnum(argv[i]);
        if (len < 0) {
            io_print_cvtnum_err(len, argv[i]);
            return NULL;
        }
        if ((uint64_t)len > IO_REQUEST_MAX_BYTES) {
            printf("Argument '%s' exceeds maximum size %" PRIu64 "\n", argv[i],
                   (uint64_t)IO_REQUEST_MAX_BYTES);
            return NULL;
        }
        if (count > IO_REQUEST_MAX_BYTES - (uint64_t)len) {
            printf("The total number of bytes exceed the maximum size %" PRIu64 "\n",
                   (uint64_t)IO_REQUEST_MAX_BYTES);
            return NULL;
        }
        count += (uint64_t)len;
    }
    *total = (int64_t)count;
    return io_alloc(s, count, pattern);
}

/* Reads of a file and a pattern: reports a mismatch as qemu-io does. */
static bool pattern_matches(const uint8_t *buf, int pattern, int64_t len)
{
    for (int64_t i = 0; i < len; i++) {
        if (buf[i] != (uint8_t)pattern) {
            return false;
        }
    }
    return true;
}

/* The write buffer of `write -s FILE`: the file's first bytes, repeated to fill len. */
static void *alloc_from_file(io_state *s, size_t len, const char *file_name)
{
    FILE *f = fopen(file_name, "r");
    if (!f) {
        perror(file_name);
        return NULL;
    }
    char *buf = io_alloc(s, len, 0);
    size_t pattern_len = len ? fread(buf, 1, len, f) : 0;
    if (ferror(f)) {
        perror(file_name);
        goto error;
    }
    if (pattern_len == 0) {
        fprintf(stderr, "%s: file is empty\n", file_name);
        goto error;
    }
    fclose(f);
    for (size_t off = pattern_len; off < len; off += pattern_len) {
        size_t n = len - off < pattern_len ? len - off : pattern_len;
        memcpy(buf + off, buf, n);
    }
    return buf;
error:
    io_free(s, buf);
    fclose(f);
    return NULL;
}

/* Offset and length operands shared by read, write and discard; returns 0 or the error
 * (already printed). */
static int parse_off_len(char **argv, int idx, int64_t *offset, int64_t *count)
{
    *offset = io_cvtnum(argv[idx]);
    if (*offset < 0) {
        io_print_cvtnum_err(*offset, argv[idx]);
        return (int)*offset;
    }
    *count = io_cvtnum(argv[idx + 1]);
    if (*count < 0) {
        io_print_cvtnum_err(*count, argv[idx + 1]);
        return (int)*count;
    }
    return 0;
}

static int check_sector_aligned(int64_t offset, int64_t count)
{
    if (offset % SECTOR_SIZE) {
        printf("%" PRId64 " is not a sector-aligned value for 'offset'\n", offset);
        return -EINVAL;
    }
    if (count % SECTOR_SIZE) {
        printf("%" PRId64 " is not a sector-aligned value for 'count'\n", count);
        return -EINVAL;
    }
    return 0;
}

/* ---- read / readv / aio_read ---------------------------------------------------------- */

static void read_help(void)
{
    printf("\n"
           " reads a range of bytes from the given offset\n"
           "\n"
           " Example:\n"
           " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n"
           "\n"
           " Reads a segment of the currently open file, optionally dumping it to the\n"
           " standard output stream (with -v option) for subsequent inspection.\n"
           " -b, -- read from the VM state rather than the virtual disk\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -l, -- length for pattern verification (only with -P)\n"
           " -p, -- ignored for backwards compatibility\n"
           " -P, -- use a pattern to verify read data\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           " -s, -- start offset for pattern verification (only with -P)\n"
           " -v, -- dump buffer to standard output\n"
           "\n");
}

static int read_f(io_state *s, int argc, char **argv)
{
    bool cflag = false, qflag = false, vflag = false;
    bool pflag = false, sflag = false, lflag = false, bflag = false;
    int pattern = 0;
    int64_t pattern_offset = 0, pattern_count = 0;
    int64_t offset, count;
    int c, ret;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'C':
            cflag = true;
            break;
        case 'l':
            lflag = true;
            pattern_count = io_cvtnum(optarg);
            if (pattern_count < 0) {
                io_print_cvtnum_err(pattern_count, optarg);
                return (int)pattern_count;
            }
            break;
        case 'p':
            break;  /* ignored for backwards compatibility */
        case 'P':
            pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 's':
            sflag = true;
            pattern_offset = io_cvtnum(optarg);
            if (pattern_offset < 0) {
                io_print_cvtnum_err(pattern_offset, optarg);
                return (int)pattern_offset;
            }
            break;
        case 'v':
            vflag = true;
            break;
        default:
            return io_usage(io_find_cmd("read"));
        }
    }
    if (optind != argc - 2) {
        return io_usage(io_find_cmd("read"));
    }
    ret = parse_off_len(argv, optind, &offset, &count);
    if (ret < 0) {
        return ret;
    }
    if ((uint64_t)count > IO_REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n", (uint64_t)IO_REQUEST_MAX_BYTES,
               argv[optind + 1]);
        return -EINVAL;
    }
    if (!pflag && (lflag || sflag)) {
        return io_usage(io_find_cmd("read"));
    }
    if (!lflag) {
        pattern_count = count - pattern_offset;
    }
    if (pattern_count < 0 || pattern_count + pattern_offset > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (bflag && (ret = check_sector_aligned(offset, count)) < 0) {
        return ret;
    }

    uint8_t *buf = io_alloc(s, (size_t)count, 0xab);
    struct timespec t1, t2;
    now(&t1);
    ret = bflag ? do_vmstate_rw(s, buf, offset, count, false) : do_pread(s, buf, offset, count);
    now(&t2);
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        goto out;
    }
    if (pflag && !pattern_matches(buf + pattern_offset, pattern, pattern_count)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n",
               offset + pattern_offset, pattern_count);
        ret = -EINVAL;
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        io_dump_buffer(buf, offset, count);
    }
    t2 = io_tsub(t2, t1);
    io_print_report("read", &t2, offset, count, count, 1, cflag);
out:
    io_free(s, buf);
    return ret;
}

static void readv_help(void)
{
    printf("\n"
           " reads a range of bytes from the given offset into multiple buffers\n"
           "\n"
           " Example:\n"
           " 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
           "\n"
           " Reads a segment of the currently open file, optionally dumping it to the\n"
           " standard output stream (with -v option) for subsequent inspection.\n"
           " Uses multiple iovec buffers if more than one byte range is specified.\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -P, -- use a pattern to verify read data\n"
           " -v, -- dump buffer to standard output\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           "\n");
}

/* readv and aio_read share everything but the option letters and the failure wording;
 * `aio` also makes the command succeed once "submitted", as qemu-io's does. */
static int readv_common(io_state *s, int argc, char **argv, bool aio)
{
    const io_cmd *cmd = io_find_cmd(aio ? "aio_read" : "readv");
    bool cflag = false, qflag = false, vflag = false, pflag = false;
    int pattern = 0;
    int c, ret;

    while ((c = getopt(argc, argv, aio ? "CP:iqv" : "CP:qv")) != -1) {
        switch (c) {
        case 'C':
            cflag = true;
            break;
        case 'P':
            pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid read request\n");
            return 0;
        case 'q':
            qflag = true;
            break;
        case 'v':
            vflag = true;
            break;
        default:
            return io_usage(cmd);
        }
    }
    if (optind > argc - 2) {
        return io_usage(cmd);
    }
    int64_t offset = io_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;
    int64_t size = 0;
    uint8_t *buf = create_iovec(s, &argv[optind], argc - optind, 0xab, &size);
    if (!buf) {
        return -EINVAL;
    }
    struct timespec t1, t2;
    now(&t1);
    ret = do_pread(s, buf, offset, size);
    now(&t2);
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    if (pflag && !pattern_matches(buf, pattern, size)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n", offset,
               size);
        ret = -EINVAL;
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        io_dump_buffer(buf, offset, size);
    }
    t2 = io_tsub(t2, t1);
    io_print_report("read", &t2, offset, size, size, 1, cflag);
out:
    io_free(s, buf);
    return aio ? 0 : ret;
}

static int readv_f(io_state *s, int argc, char **argv)
{
    return readv_common(s, argc, argv, false);
}

static void aio_read_help(void)
{
    printf("\n"
           " asynchronously reads a range of bytes from the given offset\n"
           "\n"
           " Example:\n"
           " 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
           "\n"
           " Reads a segment of the currently open file, optionally dumping it to the\n"
           " standard output stream (with -v option) for subsequent inspection.\n"
           " The read is performed asynchronously and the aio_flush command must be\n"
           " used to ensure all outstanding aio requests have been completed.\n"
           " Note that due to its asynchronous nature, this command will be\n"
           " considered successful once the request is submitted, independently\n"
           " of potential I/O errors or pattern mismatches.\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -P, -- use a pattern to verify read data\n"
           " -i, -- treat request as invalid, for exercising stats\n"
           " -v, -- dump buffer to standard output\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           "\n");
}

static int aio_read_f(io_state *s, int argc, char **argv)
{
    return readv_common(s, argc, argv, true);
}

/* ---- write / writev / aio_write -------------------------------------------------------- */

static void write_help(void)
{
    printf("\n"
           " writes a range of bytes from the given offset\n"
           "\n"
           " Example:\n"
           " 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
           "\n"
           " Writes into a segment of the currently open file, using a buffer\n"
           " filled with a set pattern (0xcdcdcdcd).\n"
           " -b, -- write to the VM state rather than the virtual disk\n"
           " -c, -- write compressed data with blk_write_compressed\n"
           " -f, -- use Force Unit Access semantics\n"
           " -n, -- with -z, don't allow slow fallback\n"
           " -p, -- ignored for backwards compatibility\n"
           " -P, -- use different pattern to fill file\n"
           " -s, -- use a pattern file to fill the write buffer\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           " -u, -- with -z, allow unmapping\n"
           " -z, -- write zeroes using blk_co_pwrite_zeroes\n"
           "\n");
}

static int write_f(io_state *s, int argc, char **argv)
{
    bool cflag_stats = false, qflag = false, bflag = false;
    bool pflag = false, zflag = false, compressed = false, sflag = false;
    unsigned flags = 0;
    int pattern = 0xcd;
    const char *file_name = NULL;
    int64_t offset, count;
    int c, ret;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'c':
            compressed = true;
            break;
        case 'C':
            cflag_stats = true;
            break;
        case 'f':
            flags |= VD_REQ_FUA;
            break;
        case 'n':
            flags |= VD_REQ_NO_FALLBACK;
            break;
        case 'p':
            break;  /* ignored for backwards compatibility */
        case 'P':
            pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 's':
            sflag = true;
            file_name = optarg;
            break;
        case 'u':
            flags |= VD_REQ_MAY_UNMAP;
            break;
        case 'z':
            zflag = true;
            break;
        default:
            return io_usage(io_find_cmd("write"));
        }
    }
    if (optind != argc - 2) {
        return io_usage(io_find_cmd("write"));
    }
    if (bflag && zflag) {
        printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & VD_REQ_FUA) && (bflag || compressed)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & VD_REQ_NO_FALLBACK) && !zflag) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if ((flags & VD_REQ_MAY_UNMAP) && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if ((int)zflag + (int)pflag + (int)sflag > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -EINVAL;
    }
    ret = parse_off_len(argv, optind, &offset, &count);
    if (ret < 0) {
        return ret;
    }
    if ((uint64_t)count > IO_REQUEST_MAX_BYTES && !(flags & VD_REQ_NO_FALLBACK)) {
        printf("length cannot exceed %" PRIu64 " without -n, given %s\n",
               (uint64_t)IO_REQUEST_MAX_BYTES, argv[optind + 1]);
        return -EINVAL;
    }
    if ((bflag || compressed) && (ret = check_sector_aligned(offset, count)) < 0) {
        return ret;
    }

    void *buf = NULL;
    if (!zflag) {
        if (sflag) {
            buf = alloc_from_file(s, (size_t)count, file_name);
            if (!buf) {
                return -EINVAL;
            }
        } else {
            buf = io_alloc(s, (size_t)count, pattern);
        }
    }
    struct timespec t1, t2;
    now(&t1);
    if (bflag) {
        ret = do_vmstate_rw(s, buf, offset, count, true);
    } else if (zflag) {
        ret = do_pwrite_zeroes(s, offset, count, flags);
    } else if (compressed) {
        ret = do_pwrite_compressed(s, buf, offset, count);
    } else {
        ret = do_pwrite(s, buf, offset, count, flags);
    }
    now(&t2);
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        goto out;
    }
    if (!qflag) {
        t2 = io_tsub(t2, t1);
        io_print_report("wrote", &t2, offset, count, count, 1, cflag_stats);
    }
out:
    io_free(s, buf);
    return ret;
}

static void writev_help(void)
{
    printf("\n"
           " writes a range of bytes from the given offset source from multiple buffers\n"
           "\n"
           " Example:\n"
           " 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
           "\n"
           " Writes into a segment of the currently open file, using a buffer\n"
           " filled with a set pattern (0xcdcdcdcd).\n"
           " -P, -- use different pattern to fill file\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -f, -- use Force Unit Access semantics\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           "\n");
}

static int writev_f(io_state *s, int argc, char **argv)
{
    bool cflag = false, qflag = false;
    unsigned flags = 0;
    int pattern = 0xcd;
    int c, ret;

    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        switch (c) {
        case 'C':
            cflag = true;
            break;
        case 'f':
            flags |= VD_REQ_FUA;
            break;
        case 'q':
            qflag = true;
            break;
        case 'P':
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        default:
            return io_usage(io_find_cmd("writev"));
        }
    }
    if (optind > argc - 2) {
        return io_usage(io_find_cmd("writev"));
    }
    int64_t offset = io_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;
    int64_t size = 0;
    void *buf = create_iovec(s, &argv[optind], argc - optind, pattern, &size);
    if (!buf) {
        return -EINVAL;
    }
    struct timespec t1, t2;
    now(&t1);
    ret = do_pwrite(s, buf, offset, size, flags);
    now(&t2);
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        goto out;
    }
    if (!qflag) {
        t2 = io_tsub(t2, t1);
        io_print_report("wrote", &t2, offset, size, size, 1, cflag);
    }
out:
    io_free(s, buf);
    return ret;
}

static void aio_write_help(void)
{
    printf("\n"
           " asynchronously writes a range of bytes from the given offset source\n"
           " from multiple buffers\n"
           "\n"
           " Example:\n"
           " 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
           "\n"
           " Writes into a segment of the currently open file, using a buffer\n"
           " filled with a set pattern (0xcdcdcdcd).\n"
           " The write is performed asynchronously and the aio_flush command must be\n"
           " used to ensure all outstanding aio requests have been completed.\n"
           " Note that due to its asynchronous nature, this command will be\n"
           " considered successful once the request is submitted, independently\n"
           " of potential I/O errors or pattern mismatches.\n"
           " -P, -- use different pattern to fill file\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -f, -- use Force Unit Access semantics\n"
           " -i, -- treat request as invalid, for exercising stats\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           " -u, -- with -z, allow unmapping\n"
           " -z, -- write zeroes using blk_aio_pwrite_zeroes\n"
           "\n");
}

static int aio_write_f(io_state *s, int argc, char **argv)
{
    bool cflag = false, qflag = false, pflag = false, zflag = false;
    unsigned flags = 0;
    int pattern = 0xcd;
    int c, ret;

    while ((c = getopt(argc, argv, "CfiqP:uz")) != -1) {
        switch (c) {
        case 'C':
            cflag = true;
            break;
        case 'f':
            flags |= VD_REQ_FUA;
            break;
        case 'q':
            qflag = true;
            break;
        case 'u':
            flags |= VD_REQ_MAY_UNMAP;
            break;
        case 'P':
            pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid write request\n");
            return 0;
        case 'z':
            zflag = true;
            break;
        default:
            return io_usage(io_find_cmd("aio_write"));
        }
    }
    if (optind > argc - 2) {
        return io_usage(io_find_cmd("aio_write"));
    }
    if (zflag && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        return -EINVAL;
    }
    if ((flags & VD_REQ_MAY_UNMAP) && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    /* qemu-io means to refuse -z with -P here, but its check never fires: -z wins. */
    (void)pflag;
    int64_t offset = io_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;

    int64_t size = 0;
    void *buf = NULL;
    if (zflag) {
        size = io_cvtnum(argv[optind]);
        if (size < 0) {
            io_print_cvtnum_err(size, argv[optind]);
            return (int)size;
        }
    } else {
        buf = create_iovec(s, &argv[optind], argc - optind, pattern, &size);
        if (!buf) {
            return -EINVAL;
        }
    }
    struct timespec t1, t2;
    now(&t1);
    ret = zflag ? do_pwrite_zeroes(s, offset, size, flags)
                : do_pwrite(s, buf, offset, size, flags);
    now(&t2);
    if (ret < 0) {
        printf("aio_write failed: %s\n", strerror(-ret));
    } else if (!qflag) {
        t2 = io_tsub(t2, t1);
        io_print_report("wrote", &t2, offset, size, size, 1, cflag);
    }
    io_free(s, buf);
    return 0;
}

static int aio_flush_f(io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    (void)argv;
    return 0;  /* every request has completed already */
}

static int flush_f(io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return vd_flush(s->disk);
}

/* ---- discard / truncate / length / info ------------------------------------------------- */

static void discard_help(void)
{
    printf("\n"
           " discards a range of bytes from the given offset\n"
           "\n"
           " Example:\n"
           " 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
           "\n"
           " Discards a segment of the currently open file.\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           "\n");
}

static int discard_f(io_state *s, int argc, char **argv)
{
    bool cflag = false, qflag = false;
    int64_t offset, bytes;
    int c, ret;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C':
            cflag = true;
            break;
        case 'q':
            qflag = true;
            break;
        default:
            return io_usage(io_find_cmd("discard"));
        }
    }
    if (optind != argc - 2) {
        return io_usage(io_find_cmd("discard"));
    }
    ret = parse_off_len(argv, optind, &offset, &bytes);
    if (ret < 0) {
        return ret;
    }
    if ((uint64_t)bytes > IO_REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n", (uint64_t)IO_REQUEST_MAX_BYTES,
               argv[optind + 1]);
        return -EINVAL;
    }
    struct timespec t1, t2;
    now(&t1);
    ret = check_range(s, offset, bytes);
    if (ret == 0) {
        /* The library ignores it unless the disk was opened with discard=unmap, as qemu. */
        ret = vd_pdiscard(s->disk, (uint64_t)offset, (uint64_t)bytes);
    }
    now(&t2);
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!qflag) {
        t2 = io_tsub(t2, t1);
        io_print_report("discard", &t2, offset, bytes, bytes, 1, cflag);
    }
    return 0;
}

static int truncate_f(io_state *s, int argc, char **argv)
{
    const char *prealloc = "off";
    int c;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            if (strcmp(optarg, "off") && strcmp(optarg, "metadata") &&
                strcmp(optarg, "falloc") && strcmp(optarg, "full")) {
                io_error("Invalid preallocation mode '%s'", optarg);
                return -EINVAL;
            }
            prealloc = optarg;
            break;
        default:
            return io_usage(io_find_cmd("truncate"));
        }
    }
    /* Like qemu-io, extra operands after the size are ignored. */
    if (optind >= argc) {
        return io_usage(io_find_cmd("truncate"));
    }
    int64_t offset = io_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    vd_error *err = NULL;
    int ret = vd_truncate(s->disk, (uint64_t)offset, true, prealloc, &err);
    if (ret < 0) {
        io_error("%s", err ? vd_error_msg(err) : strerror(-ret));
        vd_error_free(err);
        return ret;
    }
    return 0;
}

static int length_f(io_state *s, int argc, char **argv)
{
    char s1[64];
    (void)argc;
    (void)argv;
    io_cvtstr((double)vd_disk_size(s->disk), s1, sizeof(s1));
    printf("%s\n", s1);
    return 0;
}

static int info_f(io_state *s, int argc, char **argv)
{
    vd_image_info info;
    vd_error *err = NULL;
    char s1[64], s2[64];
    (void)argc;
    (void)argv;

    memset(&info, 0, sizeof(info));
    printf("format name: %s\n", vd_disk_format(s->disk));
    int ret = vd_get_info(s->disk, &info, &err);
    if (ret < 0) {
        vd_error_free(err);
        return ret;
    }
    if (info.is_protocol) {
        /* qemu-io names a protocol driver twice (its format and its protocol name, the
         * same string), and has no format details for it. */
        printf("format name: %s\n", vd_disk_format(s->disk));
        vd_image_info_clear(&info);
        return -ENOTSUP;
    }
    uint64_t cluster = info.has_cluster_size ? info.cluster_size : 0;
    uint64_t vm_state = 0;
    if (info.is_qcow2 && cluster >= 512) {
        /* qcow2 puts the VM state just past the guest area that the L1 table covers. */
        uint64_t per_l1 = cluster * (cluster / (info.extended_l2 ? 16 : 8));
        vm_state = (info.virtual_size + per_l1 - 1) / per_l1 * per_l1;
    }
    io_cvtstr((double)cluster, s1, sizeof(s1));
    io_cvtstr((double)vm_state, s2, sizeof(s2));
    printf("cluster size: %s\n", s1);
    printf("vm state offset: %s\n", s2);
    if (info.is_qcow2) {
        bool v3 = strcmp(info.compat, "0.10") != 0;
        printf("Format specific information:\n");
        printf("    compat: %s\n", info.compat);
        printf("    compression type: %s\n", info.compression_type[0] ? info.compression_type
                                                                    : "zlib");
        if (v3) {
            printf("    lazy refcounts: %s\n", info.lazy_refcounts ? "true" : "false");
        }
        if (info.nb_bitmaps) {
            printf("    bitmaps:\n");
        }
        for (size_t i = 0; i < info.nb_bitmaps; i++) {
            const vd_image_bitmap *b = &info.bitmaps[i];
            printf("        [%zu]:\n            flags:\n", i);
            int k = 0;
            if (b->in_use) {
                printf("                [%d]: in-use\n", k++);
            }
            if (b->autoload) {
                printf("                [%d]: auto\n", k++);
            }
            printf("            name: %s\n            granularity: %" PRIu64 "\n", b->name,
                   b->granularity);
        }
        printf("    refcount bits: %u\n", info.refcount_bits);
        if (v3) {
            printf("    corrupt: %s\n", info.corrupt ? "true" : "false");
            printf("    extended l2: %s\n", info.extended_l2 ? "true" : "false");
        }
    }
    vd_image_info_clear(&info);
    return 0;
}

/* ---- alloc / map --------------------------------------------------------------------- */

/* qemu's bdrv_is_allocated on the top layer: 1 allocated, 0 not, negative on error; *pnum
 * is 0 at or past the end of the disk. */
static int is_allocated(io_state *s, int64_t offset, int64_t bytes, int64_t *pnum)
{
    vd_extent st;
    int ret = vd_block_status_top(s->disk, (uint64_t)offset, (uint64_t)bytes, &st);
    if (ret < 0) {
        return ret;
    }
    *pnum = (int64_t)(st.length < (uint64_t)bytes ? st.length : (uint64_t)bytes);
    return (st.flags & VD_BS_ALLOCATED) ? 1 : 0;
}

static int alloc_f(io_state *s, int argc, char **argv)
{
    int64_t offset, start, count, remaining, sum_alloc = 0, num = 0;
    char s1[64];

    start = offset = io_cvtnum(argv[1]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[1]);
        return (int)offset;
    }
    if (argc == 3) {
        count = io_cvtnum(argv[2]);
        if (count < 0) {
            io_print_cvtnum_err(count, argv[2]);
            return (int)count;
        }
    } else {
        count = SECTOR_SIZE;
    }
    remaining = count;
    while (remaining) {
        int ret = is_allocated(s, offset, remaining, &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        offset += num;
        remaining -= num;
        if (ret) {
            sum_alloc += num;
        }
        if (num == 0) {
            count -= remaining;
            remaining = 0;
        }
    }
    io_cvtstr((double)start, s1, sizeof(s1));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum_alloc, count, s1);
    return 0;
}

/* The longest run from offset with one allocation status (qemu's map_is_allocated). */
static int map_is_allocated(io_state *s, int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t num;
    int64_t chunk = bytes < (int64_t)IO_REQUEST_MAX_BYTES ? bytes : (int64_t)IO_REQUEST_MAX_BYTES;
    int ret = is_allocated(s, offset, chunk, &num);
    if (ret < 0) {
        return ret;
    }
    int firstret = ret;
    *pnum = num;
    while (bytes > 0 && ret == firstret) {
        offset += num;
        bytes -= num;
        chunk = bytes < (int64_t)IO_REQUEST_MAX_BYTES ? bytes : (int64_t)IO_REQUEST_MAX_BYTES;
        if (chunk == 0) {
            break;
        }
        ret = is_allocated(s, offset, chunk, &num);
        if (ret == firstret && num) {
            *pnum += num;
        } else {
            break;
        }
    }
    return firstret;
}

static int map_f(io_state *s, int argc, char **argv)
{
    int64_t offset = 0;
    int64_t bytes = (int64_t)vd_disk_size(s->disk);
    (void)argc;
    (void)argv;

    while (bytes) {
        int64_t num = 0;
        char s1[64], s2[64];
        int ret = map_is_allocated(s, offset, bytes, &num);
        if (ret < 0) {
            io_error("Failed to get allocation status: %s", strerror(-ret));
            return ret;
        } else if (!num) {
            io_error("Unexpected end of image");
            return -EIO;
        }
        io_cvtstr((double)num, s1, sizeof(s1));
        io_cvtstr((double)offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n", s1, (uint64_t)num,
               ret ? "    allocated" : "not allocated", s2, (uint64_t)offset);
        offset += num;
        bytes -= num;
    }
    return 0;
}

/* ---- the table ------------------------------------------------------------------------- */

/* Sorted by name, as qemu-io keeps its table (help lists it in this order). */
const io_cmd io_cmds[] = {
    {"abort", NULL, io_abort_f, 0, 0, IO_CMD_NOFILE_OK, NULL,
     "simulate a program crash using abort(3)", NULL},
    {"aio_flush", NULL, aio_flush_f, 0, 0, 0, NULL, "completes all outstanding aio requests",
     NULL},
    {"aio_read", NULL, aio_read_f, 2, -1, 0, "[-Ciqv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes", aio_read_help},
    {"aio_write", NULL, aio_write_f, 2, -1, IO_CMD_WRITE,
     "[-Cfiquz] [-P pattern] off len [len..]", "asynchronously writes a number of bytes",
     aio_write_help},
    {"alloc", "a", alloc_f, 1, 2, 0, "offset [count]",
     "checks if offset is allocated in the file", NULL},
    {"break", NULL, io_break_f, 2, 2, 0, "event tag",
     "sets a breakpoint on event and tags the stopped request as tag", NULL},
    {"close", "c", io_close_f, 0, 0, 0, NULL, "close the current open file", NULL},
    {"discard", "d", discard_f, 2, -1, IO_CMD_WRITE, "[-Cq] off len",
     "discards a number of bytes at a specified offset", discard_help},
    {"flush", "f", flush_f, 0, 0, 0, NULL, "flush all in-core file state to disk", NULL},
    {"help", "?", io_help_f, 0, 1, IO_CMD_GLOBAL, "[command]", "help for one or all commands",
     NULL},
    {"info", "i", info_f, 0, 0, 0, NULL, "prints information about the current file", NULL},
    {"length", "l", length_f, 0, 0, 0, NULL, "gets the length of the current file", NULL},
    {"map", NULL, map_f, 0, 0, 0, "", "prints the allocated areas of a file", NULL},
    {"open", "o", io_open_f, 1, -1, IO_CMD_NOFILE_OK,
     "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]", "open the file specified by path",
     io_open_help},
    {"quit", "q", io_quit_f, -1, -1, IO_CMD_GLOBAL, NULL, "exit the program", NULL},
    {"read", "r", read_f, 2, -1, 0, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset", read_help},
    {"readv", NULL, readv_f, 2, -1, 0, "[-Cqv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset", readv_help},
    {"remove_break", NULL, io_remove_break_f, 1, 1, 0, "tag", "remove a breakpoint by tag", NULL},
    {"reopen", NULL, io_reopen_f, 0, -1, 0, "[(-r|-w)] [-c cache] [-o options]",
     "reopens an image with new options", io_reopen_help},
    {"resume", NULL, io_resume_f, 1, 1, 0, "tag", "resumes the request tagged as tag", NULL},
    {"sigraise", NULL, io_sigraise_f, 1, 1, IO_CMD_NOFILE_OK, "signal", "raises a signal",
     io_sigraise_help},
    {"sleep", NULL, io_sleep_f, 1, 1, IO_CMD_NOFILE_OK, NULL,
     "waits for the given value in milliseconds", NULL},
    {"truncate", "t", truncate_f, 1, 3, IO_CMD_WRITE, "[-m prealloc_mode] off",
     "truncates the current file at the given offset", NULL},
    {"wait_break", NULL, io_wait_break_f, 1, 1, 0, "tag", "waits for the suspension of a request",
     NULL},
    {"write", "w", write_f, 2, -1, IO_CMD_WRITE,
     "[-bcCfnquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset", write_help},
    {"writev", NULL, writev_f, 2, -1, IO_CMD_WRITE, "[-Cfq] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset", writev_help},
};

const size_t io_ncmds = sizeof(io_cmds) / sizeof(io_cmds[0]);
