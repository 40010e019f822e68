/* `vdisk dd`: qemu-img dd. Copies bs-sized blocks of an image (after skipping `skip` of them,
 * up to `count` of them) into a new image of format -O, with qemu-img 7.2's operands, output
 * size rules and messages. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

/* Which operands were given: qemu-img only looks at count and skip when they were. */
enum {
    DD_BS = 1 << 0,
    DD_COUNT = 1 << 1,
    DD_IF = 1 << 2,
    DD_OF = 1 << 3,
    DD_SKIP = 1 << 4,
};

/* The largest buffer one step of the copy uses. Any chunking of a block gives the same
 * output; this keeps bs=2G from needing 2 GiB of memory. */
#define DD_MAX_CHUNK (4 * 1024 * 1024)

typedef struct dd_args {
    unsigned given;        /* DD_* */
    int64_t bs;            /* block size, 1 .. INT_MAX */
    int64_t count;         /* blocks to copy, counted from the start of the input */
    int64_t skip;          /* blocks skipped at the start of the input */
    const char *in;
    const char *out;
} dd_args;

/* bs takes qemu-img's size syntax, bounded as qemu-img bounds it (it is a buffer size). */
static int parse_bs(const char *value, int64_t *out)
{
    uint64_t v = 0;
    int ret = vd_parse_size(value, &v);
    if (ret == -ERANGE || (ret == 0 && (v < 1 || v > INT_MAX))) {
        cli_error("Invalid bs specified. Must be between 1 and %d.", INT_MAX);
        return -1;
    }
    if (ret < 0) {
        cli_error("Invalid bs specified. You may use k, M, G, T, P or E suffixes for");
        cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/* One KEY=VALUE operand. Operands are taken in order and the first bad one ends the
 * command, so a later duplicate overrides an earlier one, as in qemu-img. */
static int parse_operand(const char *arg, dd_args *a)
{
    const char *eq = strchr(arg, '=');
    if (!eq) {
        cli_error("unrecognized operand %s", arg);
        return -1;
    }
    size_t klen = (size_t)(eq - arg);
    const char *value = eq + 1;
    int ret = 0;
    unsigned flag;
    if (klen == 2 && !strncmp(arg, "bs", klen)) {
        flag = DD_BS;
        ret = parse_bs(value, &a->bs);
    } else if (klen == 5 && !strncmp(arg, "count", klen)) {
        flag = DD_COUNT;
        ret = cli_cvtnum("count", value, &a->count);
    } else if (klen == 2 && !strncmp(arg, "if", klen)) {
        flag = DD_IF;
        a->in = value;
    } else if (klen == 2 && !strncmp(arg, "of", klen)) {
        flag = DD_OF;
        a->out = value;
    } else if (klen == 4 && !strncmp(arg, "skip", klen)) {
        flag = DD_SKIP;
        ret = cli_cvtnum("skip", value, &a->skip);
    } else {
        cli_error("unrecognized operand %.*s", (int)klen, arg);
        return -1;
    }
    if (ret < 0) {
        return -1;
    }
    a->given |= flag;
    return 0;
}

/* Does skipping take the input position past the end (or past what int64 can hold)? Then
 * qemu-img makes an empty output and says so, but does not fail. */
static bool skip_past_end(const dd_args *a, int64_t size)
{
    return (a->given & DD_SKIP) && (a->skip > INT64_MAX / a->bs || size < a->skip * a->bs);
}

/* Prints the library's error after `prefix`, without the "FILE: " it may start with (the
 * prefix names the file already), even when FILE is empty. */
static void report_create_error(vd_error *err, const char *filename)
{
    const char *msg = err ? vd_error_msg(err) : NULL;
    if (!msg || !*msg) {
        msg = "Unknown error";
    }
    size_t n = strlen(filename);
    if (!strncmp(msg, filename, n) && msg[n] == ':' && msg[n + 1] == ' ') {
        msg += n + 2;
    }
    cli_error("%s: error while creating output image: %s", filename, msg);
    vd_error_free(err);
}

static int copy_blocks(vd_disk *src, vd_disk *dst, int64_t in_pos, int64_t size, int64_t bs)
{
    size_t chunk = bs < DD_MAX_CHUNK ? (size_t)bs : DD_MAX_CHUNK;
    uint8_t *buf = cli_alloc_io_buffer(chunk);
    int64_t out_pos = 0;
    int ret = 0;
    while (in_pos < size) {
        int64_t n = size - in_pos < (int64_t)chunk ? size - in_pos : (int64_t)chunk;
        ret = vd_pread(src, buf, (uint64_t)n, (uint64_t)in_pos);
        if (ret < 0) {
            cli_error("error while reading from input image file: %s", strerror(-ret));
            break;
        }
        in_pos += n;
        ret = vd_pwrite(dst, buf, (uint64_t)n, (uint64_t)out_pos, 0);
        if (ret < 0) {
            cli_error("error while writing to output image file: %s", strerror(-ret));
            break;
        }
        out_pos += n;
    }
    free(buf);
    return ret;
}

static int img_dd(const dd_args *a, const char *fmt, const char *out_fmt)
{
    vd_engine *e = cli_engine_new();
    vd_disk *src = NULL, *dst = NULL;
    int ret = 1;

    if (!a->in[0]) {
        /* `if=` with nothing after it: qemu's file driver refuses the empty name before
         * anything looks for a file, and says so in its own words. */
        cli_error("Could not open '': The 'file' block driver requires a file name");
        goto out;
    }
    if (cli_open(e, a->in, fmt, 0, &src) < 0) {
        goto out;
    }
    if (!cli_format_known(out_fmt)) {
        cli_error("Unknown file format");
        goto out;
    }

    /* count limits the input (it counts from the start, before skip), then skip is taken
     * off what is left: qemu-img's arithmetic, kept for the same output sizes. */
    int64_t size = (int64_t)vd_disk_size(src);
    if ((a->given & DD_COUNT) && a->count <= INT64_MAX / a->bs && a->count * a->bs < size) {
        size = a->count * a->bs;
    }
    bool past_end = skip_past_end(a, size);
    int64_t in_pos = past_end ? size : (a->given & DD_SKIP) ? a->skip * a->bs : 0;
    uint64_t out_size = (uint64_t)(size - in_pos);

    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    int r = vd_create(e, a->out, out_fmt, out_size, o, 0, &err);
    vd_opts_free(o);
    if (r < 0) {
        report_create_error(err, a->out);
        goto out;
    }
    if (cli_open(e, a->out, out_fmt, VD_OPEN_RDWR, &dst) < 0) {
        goto out;
    }
    if (past_end) {
        cli_error("%s: cannot skip to specified offset", a->in);
    }
    if (copy_blocks(src, dst, in_pos, size, a->bs) < 0) {
        goto out;
    }
    r = vd_close(dst);
    dst = NULL;
    if (r < 0) {
        cli_error("error while writing to output image file: %s", strerror(-r));
        goto out;
    }
    ret = 0;
out:
    if (dst) {
        vd_close(dst);
    }
    if (src) {
        vd_close(src);
    }
    vd_engine_free(e);
    return ret;
}

int cmd_dd(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *out_fmt = "raw";
    dd_args a = {.bs = 512};
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:U", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'U':
            /* vdisk takes no image locks, so sharing needs no switch. */
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    for (int i = optind; i < argc; i++) {
        if (parse_operand(argv[i], &a) < 0) {
            return 1;
        }
    }
    if (!(a.given & DD_IF) || !(a.given & DD_OF)) {
        cli_error("Must specify both input and output files");
        return 1;
    }
    return img_dd(&a, fmt, out_fmt);
}
