/* `vdisk io`: a qemu-io 7.2 compatible exerciser. This file holds the command line, the
 * command loop (-c strings or lines from stdin), dispatch, the session commands (open, close,
 * reopen, help, quit, sigraise...) and the number and report formatting shared with the I/O
 * commands in io-cmds.c, all worded exactly as qemu-io words them so that qemu-io scripts and
 * their output filters carry over unchanged. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli-util.h"
#include "cli/io-cmds.h"

/* qemu-io reads commands with fgets into a buffer of this size; longer lines are split. */
#define IO_MAX_LINE 1024

void io_error(const char *fmt, ...)
{
    va_list ap;
    /* No flush of stdout first: qemu-io does not flush either, and scripts that capture
     * both streams into one file see qemu-io's ordering only if we buffer the same way. */
    fprintf(stderr, "%s: ", cli_progname());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---- numbers ---------------------------------------------------------------------------- */

/* Power-of-two multiplier of a size suffix, or -1 when c is not one. */
static int suffix_shift(char c)
{
    switch (c) {
    case 'B': case 'b': return 0;
    case 'K': case 'k': return 10;
    case 'M': case 'm': return 20;
    case 'G': case 'g': return 30;
    case 'T': case 't': return 40;
    case 'P': case 'p': return 50;
    case 'E': case 'e': return 60;
    default: return -1;
    }
}

/* qemu's qemu_strtosz() with the default suffix 'B', including its corner cases: a fraction
 * needs a unit ("1.5k" but not "1.5"), "1." is fine, hex takes no fraction, an exponent is
 * refused, and the fraction is kept as 64-bit fixed point and rounded half up. */
int64_t io_cvtnum(const char *s)
{
    char *end = NULL;
    uint64_t val;
    uint64_t valf = 0;
    bool hex = false;
    int64_t ret = 0;

    errno = 0;
    val = strtoull(s, &end, 10);
    if (end == s) {
        return -EINVAL;
    }
    if (errno == ERANGE) {
        ret = -ERANGE;
        goto out;
    }
    if (memchr(s, '-', (size_t)(end - s))) {
        return -EINVAL;
    }
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        errno = 0;
        val = strtoull(s, &end, 16);
        if (errno == ERANGE) {
            ret = -ERANGE;
            goto out;
        }
        if (*end == '.') {
            return -EINVAL;
        }
        hex = true;
    } else if (*end == '.') {
        char *f = end;
        double fraction;
        errno = 0;
        fraction = strtod(f, &end);
        if (end == f) {
            /* No digits after the dot: "1." and "1.k" are accepted. */
            end = f + 1;
        } else if (memchr(f, 'e', (size_t)(end - f)) || memchr(f, 'E', (size_t)(end - f))) {
            return -EINVAL;
        } else if (fraction < 1.0) {
            /* A fraction that rounds up to 1.0 overflows qemu's conversion to 0 on x86. */
            valf = (uint64_t)(fraction * 0x1p64);
        }
    }
    int shift = suffix_shift(*end);
    if (shift >= 0) {
        if (hex) {
            io_error("warning: Using a multiplier suffix on hex numbers is deprecated: %s", s);
        }
        end++;
    } else {
        shift = 0;
    }
    if (shift == 0) {
        if (valf != 0) {
            return -EINVAL;
        }
    } else {
        unsigned __int128 r = (unsigned __int128)val << shift;
        unsigned __int128 fr = (unsigned __int128)valf << shift;
        r += fr >> 64;
        r += ((uint64_t)fr) >> 63;  /* round half up */
        if (r >> 64) {
            ret = -ERANGE;
            goto out;
        }
        val = (uint64_t)r;
    }
out:
    if (*end) {
        return -EINVAL;
    }
    if (ret < 0) {
        return ret;
    }
    if (val > INT64_MAX) {
        return -ERANGE;
    }
    return (int64_t)val;
}

void io_print_cvtnum_err(int64_t rc, const char *arg)
{
    switch (rc) {
    case -EINVAL:
        printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n",
               arg);
        break;
    case -ERANGE:
        printf("Parsing error: argument too large -- %s\n", arg);
        break;
    default:
        printf("Parsing error: %s\n", arg);
    }
}

void io_cvtstr(double value, char *str, size_t size)
{
    static const struct {
        int shift;
        const char *suffix;
    } units[] = {
        {60, " EiB"}, {50, " PiB"}, {40, " TiB"}, {30, " GiB"}, {20, " MiB"}, {10, " KiB"},
    };
    const char *suffix = " bytes";
    bool done = false;

    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        double unit = (double)(1ULL << units[i].shift);
        if (value >= unit) {
            suffix = units[i].suffix;
            snprintf(str, size - 4, "%.3f", value / unit);
            done = true;
            break;
        }
    }
    if (!done) {
        snprintf(str, size - 6, "%f", value);
    }
    /* qemu trims the first ".000" it finds, even inside "10000.000500". */
    char *trim = strstr(str, ".000");
    if (trim) {
        strcpy(trim, suffix);
    } else {
        strcat(str, suffix);
    }
}

struct timespec io_tsub(struct timespec t2, struct timespec t1)
{
    t2.tv_nsec -= t1.tv_nsec;
    if (t2.tv_nsec < 0) {
        t2.tv_nsec += 1000000000L;
        t2.tv_sec--;
    }
    t2.tv_sec -= t1.tv_sec;
    return t2;
}

static double tdiv(double value, const struct timespec *t)
{
    double seconds = (double)t->tv_sec + ((double)t->tv_nsec / 1e9);
    return value / seconds;
}

static void timestr(const struct timespec *t, char *ts, size_t size, bool verbose)
{
    double frac_sec = (double)t->tv_nsec / 1e9;
    unsigned sec = (unsigned)t->tv_sec;

    if (verbose || t->tv_sec) {
        snprintf(ts, size, "%u:%02u:%05.2f", sec / 3600, (sec % 3600) / 60,
                 (double)(sec % 60) + frac_sec);
    } else {
        snprintf(ts, size, "%05.2f sec", frac_sec);
    }
}

void io_print_report(const char *op, const struct timespec *t, int64_t offset, int64_t count,
                     int64_t total, int cnt, bool cflag)
{
    char s1[64], s2[64], ts[64];

    timestr(t, ts, sizeof(ts), cflag);
    if (!cflag) {
        io_cvtstr((double)total, s1, sizeof(s1));
        io_cvtstr(tdiv((double)total, t), s2, sizeof(s2));
        printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op, total, count,
               offset);
        printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", s1, cnt, ts, s2,
               tdiv((double)cnt, t));
    } else {
        printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, ts, tdiv((double)total, t),
               tdiv((double)cnt, t));
    }
}

void io_dump_buffer(const void *buffer, int64_t offset, int64_t len)
{
    const uint8_t *p = buffer;

    for (int64_t i = 0; i < len; i += 16) {
        const uint8_t *s = p;
        int j;
        printf("%08" PRIx64 ":  ", (uint64_t)(offset + i));
        for (j = 0; j < 16 && i + j < len; j++, p++) {
            printf("%02x ", *p);
        }
        printf(" ");
        for (j = 0; j < 16 && i + j < len; j++, s++) {
            /* isalnum in the C locale, spelled out so no locale can change the dump. */
            bool alnum = (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
                         (*s >= 'A' && *s <= 'Z');
            putchar(alnum ? *s : '.');
        }
        printf("\n");
    }
}

/* ---- the image ------------------------------------------------------------------------- */

static int open_snapshot(io_state *s, const char *name, const char *format, unsigned flags);

int io_open_image(io_state *s, const char *name, const char *display, const char *format,
                  unsigned flags, bool native_aio, bool snapshot)
{
    if (s->disk) {
        io_error("file open already, try 'help close'");
        return -EINVAL;
    }
    if (native_aio && !(flags & VD_OPEN_NOCACHE)) {
        io_error("can't open device %s: aio=native was specified, but it requires "
                 "cache.direct=on, which was not specified.", display ? display : name);
        return -EINVAL;
    }
    if (snapshot) {
        return open_snapshot(s, name, format, flags);
    }
    char *cor_name = NULL;
    if (s->cor && !(flags & VD_OPEN_RDWR)) {
        s->cor = false;
        io_error("can't open device %s: Can't use copy-on-read on read-only device",
                 display ? display : name);
        return -EINVAL;
    }
    if (s->cor) {
        s->cor = false;
        cor_name = io_cor_name(name, format);
        if (!cor_name) {
            return -EINVAL;
        }
        name = cor_name;
        format = NULL;
    }
    if (!format && (flags & VD_OPEN_RDWR)) {
        cli_warn_probed_raw(name, display ? display : name);
    }
    vd_open_opts o = {.format = format, .flags = flags};
    vd_error *err = NULL;
    int ret = vd_open(s->engine, name, &o, &s->disk, &err);
    if (ret < 0) {
        const char *msg = err ? vd_error_msg(err) : strerror(-ret);
        size_t n = strlen(name);
        /* The library names the file first; qemu's message here already does. */
        if (!strncmp(msg, name, n) && !strncmp(msg + n, ": ", 2)) {
            msg += n + 2;
        }
        if (display) {
            io_error("can't open device %s: %s", display, msg);
        } else {
            io_error("can't open: %s", msg);
        }
        vd_error_free(err);
        free(cor_name);
        s->disk = NULL;
        return ret;
    }
    free(cor_name);
    s->flags = flags;
    return 0;
}

/* -s: writes go to a temporary qcow2 overlay over the image, which stays untouched (qemu's
 * snapshot=on). The overlay is unlinked once open, so nothing is left behind. */
static int open_snapshot(io_state *s, const char *name, const char *format, unsigned flags)
{
    const char *tmpdir = getenv("TMPDIR");
    char *tmp = NULL;
    char *base = realpath(name, NULL);
    vd_error *err = NULL;
    vd_opts *o = NULL;
    int ret;

    if (!base) {
        ret = -errno;
        io_error("can't open device %s: Could not open '%s': %s", name, name, strerror(errno));
        return ret;
    }
    if (!format) {
        ret = vd_probe_format(name, &format, &err);
        if (ret < 0) {
            goto fail;
        }
    }
    if (asprintf(&tmp, "%s/vl.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/var/tmp") < 0) {
        abort();
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        ret = -errno;
        vd_error_set(&err, VD_ERR_IO, errno, "Could not create temporary overlay '%s': %s",
                     tmp, strerror(errno));
        goto fail;
    }
    close(fd);
    o = vd_opts_new();
    vd_opts_set(o, "backing_file", base);
    vd_opts_set(o, "backing_fmt", format);
    ret = vd_create(s->engine, tmp, "qcow2", UINT64_MAX, o, 0, &err);
    if (ret == 0) {
        vd_open_opts oo = {.format = "qcow2", .flags = flags | VD_OPEN_RDWR};
        ret = vd_open(s->engine, tmp, &oo, &s->disk, &err);
    }
    unlink(tmp);
    if (ret == 0) {
        s->flags = flags | VD_OPEN_RDWR;
        s->snapshot = true;
    }
fail:
    if (ret < 0) {
        io_error("can't open device %s: %s", name, err ? vd_error_msg(err) : strerror(-ret));
        s->disk = NULL;
    }
    vd_error_free(err);
    vd_opts_free(o);
    free(tmp);
    free(base);
    return ret;
}

void io_close_image(io_state *s)
{
    if (s->disk) {
        vd_close(s->disk);
        s->disk = NULL;
    }
    vd_tree_free(s->opts);
    s->opts = NULL;
    s->snapshot = false;
}

/* ---- dispatch --------------------------------------------------------------------------- */

int io_usage(const io_cmd *c)
{
    printf("%s %s -- %s\n", c->name, c->args ? c->args : "", c->oneline);
    return -EINVAL;
}

const io_cmd *io_find_cmd(const char *name)
{
    for (size_t i = 0; i < io_ncmds; i++) {
        if (!strcmp(io_cmds[i].name, name) ||
            (io_cmds[i].altname && !strcmp(io_cmds[i].altname, name))) {
            return &io_cmds[i];
        }
    }
    return NULL;
}

static int run_cmd(io_state *s, const io_cmd *c, int argc, char **argv)
{
    if (!(c->flags & (IO_CMD_GLOBAL | IO_CMD_NOFILE_OK)) && !s->disk) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    if (argc - 1 < c->argmin || (c->argmax != -1 && argc - 1 > c->argmax)) {
        if (c->argmax == -1) {
            fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n",
                    argc - 1, argv[0], c->argmin);
        } else if (c->argmin == c->argmax) {
            fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", argc - 1,
                    argv[0], c->argmin);
        } else {
            fprintf(stderr, "bad argument count %d to %s, expected between %d and %d "
                    "arguments\n", argc - 1, argv[0], c->argmin, c->argmax);
        }
        return -EINVAL;
    }
    /* qemu asks for the write permission before the command parses its options. */
    if ((c->flags & IO_CMD_WRITE) && s->disk && !(s->flags & VD_OPEN_RDWR)) {
        io_error("Block node is read-only");
        return -EPERM;
    }
    optind = 0;  /* glibc: a fresh getopt scan for the command's own options */
    return c->fn(s, argc, argv);
}

/* Splits at single spaces like qemu-io's breakline (no quoting, tabs are not separators),
 * then runs the command. Returns the command's result (negative on failure). */
static int run_line(io_state *s, const char *line)
{
    char *input = cli_xstrdup(line);
    size_t cap = 8;
    int argc = 0;
    char **argv = cli_xcalloc(cap, sizeof(char *));
    char *save = input;
    char *tok;
    int ret = 0;

    while ((tok = strsep(&save, " ")) != NULL) {
        if (!*tok) {
            continue;
        }
        if ((size_t)argc + 2 > cap) {
            cap *= 2;
            char **n = realloc(argv, cap * sizeof(char *));
            if (!n) {
                abort();
            }
            argv = n;
        }
        argv[argc++] = tok;
        argv[argc] = NULL;
    }
    if (argc > 0) {
        const io_cmd *c = io_find_cmd(argv[0]);
        if (c) {
            ret = run_cmd(s, c, argc, argv);
        } else {
            fprintf(stderr, "command \"%s\" not found\n", argv[0]);
            ret = -EINVAL;
        }
    }
    free(argv);
    free(input);
    return ret;
}

static int command_loop(io_state *s, char **cmds, int ncmds)
{
    int last_error = 0;

    if (ncmds > 0) {
        for (int i = 0; !s->quit && i < ncmds; i++) {
            int ret = run_line(s, cmds[i]);
            if (ret < 0) {
                last_error = ret;
            }
        }
        return last_error;
    }

    /* No -c: read commands from stdin, prompting before each as qemu-io does even when
     * stdin is not a terminal. */
    char line[IO_MAX_LINE];
    bool tty = isatty(STDIN_FILENO);
    while (!s->quit) {
        printf("qemu-io> ");
        fflush(stdout);
        if (!fgets(line, sizeof(line), stdin)) {
            if (tty) {
                printf("\n");
            }
            break;
        }
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\n') {
            line[n - 1] = '\0';
        }
        int ret = run_line(s, line);
        if (ret < 0) {
            last_error = ret;
        }
    }
    return last_error;
}

/* ---- open / close / reopen / quit ---------------------------------------------------------- */

void io_open_help(void)
{
    printf("\n"
           " opens a new file in the requested mode\n"
           "\n"
           " Example:\n"
           " 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached\n"
           "\n"
           " Opens a file for subsequent use by all of the other qemu-io commands.\n"
           " -r, -- open file read-only\n"
           " -s, -- use snapshot file\n"
           " -C, -- use copy-on-read\n"
           " -n, -- disable host cache, short for -t none\n"
           " -U, -- force shared permissions\n"
           " -k, -- use kernel AIO implementation (Linux only, prefer use of -i)\n"
           " -i, -- use AIO mode (threads, native or io_uring)\n"
           " -t, -- use the given cache mode for the image\n"
           " -d, -- use the given discard mode for the image\n"
           " -o, -- options to be given to the block driver"
           "\n");
}

int io_open_f(io_state *s, int argc, char **argv)
{
    unsigned flags = VD_OPEN_UNMAP | VD_OPEN_WRITETHROUGH;
    bool readonly = false, native_aio = false, force_share = false, snapshot = false;
    bool cor = false;
    char *optlist = NULL;
    int c;

    while ((c = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        switch (c) {
        case 's':
            snapshot = true;
            break;
        case 'n':
            flags = (flags | VD_OPEN_NOCACHE) & ~(unsigned)VD_OPEN_WRITETHROUGH;
            break;
        case 'C':
            cor = true;
            break;
        case 'U':
            force_share = true;
            break;
        case 'r':
            readonly = true;
            break;
        case 'k':
            native_aio = true;
            break;
        case 't':
            if (cli_parse_cache(optarg, &flags) < 0) {
                io_error("Invalid cache option: %s", optarg);
                return -EINVAL;
            }
            break;
        case 'd':
            if (io_parse_discard(optarg, &flags) < 0) {
                io_error("Invalid discard option: %s", optarg);
                return -EINVAL;
            }
            break;
        case 'i': {
            int a = io_parse_aio(optarg);
            if (a < 0) {
                io_error("Invalid aio option: %s", optarg);
                return -EINVAL;
            }
            native_aio = native_aio || a == 1;  /* qemu only ever adds the flag */
            break;
        }
        case 'o':
            io_append_optlist(&optlist, optarg);
            break;
        default:
            free(optlist);
            io_usage(io_find_cmd("open"));
            return -EINVAL;
        }
    }
    if (!readonly) {
        flags |= VD_OPEN_RDWR;
    }
    const char *file = optind == argc - 1 ? argv[optind] : NULL;
    if (optind < argc - 1 || (!file && !optlist)) {
        if (!file && !optlist) {
            io_error("can't open: A block device must be specified for \"file\"");
        } else {
            io_usage(io_find_cmd("open"));
        }
        free(optlist);
        return -EINVAL;
    }
    if (force_share && !readonly) {
        io_error("can't open device %s: force-share=on can only be used with read-only images",
                 file ? file : "");
        free(optlist);
        return -EINVAL;
    }
    s->cor = cor;
    int ret = optlist ? io_open_optlist(s, optlist, file, flags, native_aio)
                      : io_open_image(s, file, file, NULL, flags, native_aio, snapshot);
    free(optlist);
    return ret < 0 ? -EINVAL : 0;
}

int io_close_f(io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    io_close_image(s);
    return 0;
}

void io_reopen_help(void)
{
    printf("\n"
           " Changes the open options of an already opened image\n"
           "\n"
           " Example:\n"
           " 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 "
           "image\n"
           "\n"
           " -r, -- Reopen the image read-only\n"
           " -w, -- Reopen the image read-write\n"
           " -c, -- Change the cache mode to the given value\n"
           " -o, -- Changes block driver options (cf. 'open' command)\n"
           "\n");
}

/* Reopening is a flush, a close and an open with the new flags; the old flags come back if
 * the new open fails, so the session keeps its image as qemu's does. */
int io_reopen_f(io_state *s, int argc, char **argv)
{
    unsigned flags = s->flags;
    bool has_rw = false, has_cache = false;
    char *optlist = NULL;
    int c;

    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c':
            if (cli_parse_cache(optarg, &flags) < 0) {
                io_error("Invalid cache option: %s", optarg);
                free(optlist);
                return -EINVAL;
            }
            has_cache = true;
            break;
        case 'o':
            io_append_optlist(&optlist, optarg);
            break;
        case 'r':
        case 'w':
            if (has_rw) {
                io_error("Only one -r/-w option may be given");
                free(optlist);
                return -EINVAL;
            }
            flags = c == 'r' ? flags & ~(unsigned)VD_OPEN_RDWR : flags | VD_OPEN_RDWR;
            has_rw = true;
            break;
        default:
            free(optlist);
            return io_usage(io_find_cmd("reopen"));
        }
    }
    if (optind != argc) {
        free(optlist);
        return io_usage(io_find_cmd("reopen"));
    }
    if (s->snapshot) {
        free(optlist);
        io_error("Cannot reopen a temporary snapshot overlay");
        return -ENOTSUP;
    }
    if (optlist || s->opts) {
        int ret = io_reopen_opts(s, optlist, flags, has_rw, has_cache);
        free(optlist);
        return ret;
    }
    char *name = cli_xstrdup(vd_disk_filename(s->disk));
    char *format = cli_xstrdup(vd_disk_format(s->disk));
    unsigned old_flags = s->flags;
    int ret = vd_close(s->disk);
    s->disk = NULL;
    if (ret < 0) {
        io_error("Could not flush '%s': %s", name, strerror(-ret));
    }
    ret = io_open_image(s, name, name, format, flags, false, false);
    if (ret < 0 && io_open_image(s, name, name, format, old_flags, false, false) < 0) {
        s->disk = NULL;
    }
    free(name);
    free(format);
    return ret;
}

int io_quit_f(io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    s->quit = true;
    return 0;
}

/* ---- blkdebug, signals, sleep, help --------------------------------------------------- */

/* Breakpoints need QEMU's blkdebug driver; without it qemu-io reports ENOTSUP too. */
int io_break_f(io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    (void)argv;
    printf("Could not set breakpoint: %s\n", strerror(ENOTSUP));
    return -ENOTSUP;
}

int io_remove_break_f(io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    printf("Could not remove breakpoint %s: %s\n", argv[1], strerror(ENOTSUP));
    return -ENOTSUP;
}

int io_resume_f(io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    (void)argv;
    printf("Could not resume request: %s\n", strerror(ENOTSUP));
    return -ENOTSUP;
}

int io_wait_break_f(io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    /* qemu-io would wait forever for a breakpoint that cannot be set. */
    io_error("Could not wait for breakpoint %s: %s", argv[1], strerror(ENOTSUP));
    return -ENOTSUP;
}

int io_abort_f(io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    (void)argv;
    abort();
}

void io_sigraise_help(void)
{
    printf("\n"
           " raises the given signal\n"
           "\n"
           " Example:\n"
           " 'sigraise %i' - raises SIGTERM\n"
           "\n"
           " Invokes raise(signal), where \"signal\" is the mandatory integer argument\n"
           " given to sigraise.\n"
           "\n", SIGTERM);
}

int io_sigraise_f(io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    int64_t sig = io_cvtnum(argv[1]);
    if (sig < 0) {
        io_print_cvtnum_err(sig, argv[1]);
        return (int)sig;
    } else if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n", argv[1]);
        return -EINVAL;
    }
    /* raise() need not flush stdio: do it so that the output so far survives a kill. */
    fflush(stdout);
    fflush(stderr);
    raise((int)sig);
    return 0;
}

int io_sleep_f(io_state *s, int argc, char **argv)
{
    char *end = NULL;
    (void)s;
    (void)argc;
    long ms = strtol(argv[1], &end, 0);
    if (ms < 0 || *end != '\0') {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    return 0;
}

static void help_oneline(const char *cmd, const io_cmd *c)
{
    printf("%s ", cmd);
    if (c->args) {
        printf("%s ", c->args);
    }
    printf("-- %s\n", c->oneline);
}

int io_help_f(io_state *s, int argc, char **argv)
{
    (void)s;
    if (argc == 1) {
        for (size_t i = 0; i < io_ncmds; i++) {
            help_oneline(io_cmds[i].name, &io_cmds[i]);
        }
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    const io_cmd *c = io_find_cmd(argv[1]);
    if (!c) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_oneline(argv[1], c);
    if (c->help) {
        c->help();
    }
    return 0;
}

/* ---- command line ------------------------------------------------------------------------ */

static void usage(void)
{
    const char *cmd = cli_command_name("io");
    printf("Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
           "vdisk disk exerciser (qemu-io compatible)\n"
           "\n"
           "  --object OBJECTDEF   accepted for compatibility (no objects are needed)\n"
           "  --image-opts         treat file as option string\n"
           "  -c, --cmd STRING     execute command with its arguments\n"
           "                       from the given string\n"
           "  -f, --format FMT     specifies the block driver to use\n"
           "  -r, --read-only      export read-only\n"
           "  -s, --snapshot       use snapshot file\n"
           "  -n, --nocache        disable host cache, short for -t none\n"
           "  -C, --copy-on-read   enable copy-on-read (accepted, no effect)\n"
           "  -m, --misalign       misalign allocations for O_DIRECT\n"
           "  -k, --native-aio     use kernel AIO implementation\n"
           "                       (Linux only, prefer use of -i)\n"
           "  -i, --aio=MODE       use AIO mode (threads, native or io_uring)\n"
           "  -t, --cache=MODE     use the given cache mode for the image\n"
           "  -d, --discard=MODE   use the given discard mode for the image\n"
           "  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
           "                       accepted for compatibility (no tracing)\n"
           "  -U, --force-share    force shared permissions\n"
           "  -h, --help           display this help and exit\n"
           "  -V, --version        output version information and exit\n"
           "\n"
           "See '%s -c help' for information on available commands.\n",
           cmd, cmd);
}

/* qemu's bdrv_parse_discard_flags. */
int io_parse_discard(const char *mode, unsigned *flags)
{
    if (!strcmp(mode, "off") || !strcmp(mode, "ignore")) {
        *flags &= ~(unsigned)VD_OPEN_UNMAP;
    } else if (!strcmp(mode, "on") || !strcmp(mode, "unmap")) {
        *flags |= VD_OPEN_UNMAP;
    } else {
        return -1;
    }
    return 0;
}

/* qemu's bdrv_parse_aio: returns 1 for native, 0 for the others, -1 if unknown. */
int io_parse_aio(const char *mode)
{
    if (!strcmp(mode, "native")) {
        return 1;
    }
    if (!strcmp(mode, "threads") || !strcmp(mode, "io_uring")) {
        return 0;
    }
    return -1;
}

enum { OPT_IO_IMAGE_OPTS = 256 };

int cmd_io(int argc, char **argv)
{
    static const struct option lopt[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"cmd", required_argument, NULL, 'c'},
        {"format", required_argument, NULL, 'f'},
        {"read-only", no_argument, NULL, 'r'},
        {"snapshot", no_argument, NULL, 's'},
        {"nocache", no_argument, NULL, 'n'},
        {"copy-on-read", no_argument, NULL, 'C'},
        {"misalign", no_argument, NULL, 'm'},
        {"native-aio", no_argument, NULL, 'k'},
        {"aio", required_argument, NULL, 'i'},
        {"discard", required_argument, NULL, 'd'},
        {"cache", required_argument, NULL, 't'},
        {"trace", required_argument, NULL, 'T'},
        {"image-opts", no_argument, NULL, OPT_IO_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    /* qemu-io's defaults: read-write, writethrough, discard=unmap. */
    unsigned flags = VD_OPEN_WRITETHROUGH | VD_OPEN_UNMAP;
    bool readonly = false;
    bool native_aio = false;
    bool cor = false;
    bool snapshot = false;
    bool image_opts = false;
    bool force_share = false;
    bool s_misalign = false;
    const char *format = NULL;
    char **cmds = cli_xcalloc((size_t)argc + 1, sizeof(char *));
    int ncmds = 0;
    int c;

    /* getopt names the program in its messages: make that the program name, not the verb
     * or the path it was started by. */
    char *argv0 = argv[0];
    argv[0] = (char *)cli_progname();
    while ((c = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U", lopt, NULL)) != -1) {
        switch (c) {
        case 's':
            snapshot = true;
            break;
        case 'n':
            flags = (flags | VD_OPEN_NOCACHE) & ~(unsigned)VD_OPEN_WRITETHROUGH;
            break;
        case 'm':
            s_misalign = true;
            break;
        case 'U':
            force_share = true;
            break;
        case 'C':
            cor = true;
            break;
        case 'T':
            /* Tracing changes nothing that vdisk io's output shows. */
            break;
        case 'd':
            if (io_parse_discard(optarg, &flags) < 0) {
                io_error("Invalid discard option: %s", optarg);
                free(cmds);
                return 1;
            }
            break;
        case 'f':
            format = optarg;
            break;
        case 'c':
            cmds[ncmds++] = optarg;
            break;
        case 'r':
            readonly = true;
            break;
        case 'k':
            native_aio = true;
            break;
        case 'i': {
            int a = io_parse_aio(optarg);
            if (a < 0) {
                io_error("Invalid aio option: %s", optarg);
                free(cmds);
                return 1;
            }
            native_aio = native_aio || a == 1;  /* qemu only ever adds the flag */
            break;
        }
        case 't':
            if (cli_parse_cache(optarg, &flags) < 0) {
                io_error("Invalid cache option: %s", optarg);
                free(cmds);
                return 1;
            }
            break;
        case 'V':
            printf("%s version " VDISK_VERSION " (qemu-io 7.2 compatible)\n",
                   cli_command_name("io"));
            free(cmds);
            return 0;
        case 'h':
            usage();
            free(cmds);
            return 0;
        case OPT_IO_IMAGE_OPTS:
            image_opts = true;
            break;
        default:
            usage();
            free(cmds);
            return 1;
        }
    }
    argv[0] = argv0;

    if (argc - optind > 1) {
        usage();
        free(cmds);
        return 1;
    }
    if (format && image_opts) {
        io_error("--image-opts and -f are mutually exclusive");
        free(cmds);
        return 1;
    }
    if (!readonly) {
        flags |= VD_OPEN_RDWR;
    }

    io_state s = {.engine = cli_engine_new(), .format = format, .misalign = s_misalign,
                  .cor = cor};
    if (!s.engine) {
        io_error("out of memory");
        free(cmds);
        return 1;
    }
    int ret = 0;
    if (argc - optind == 1) {
        if (force_share && !readonly) {
            io_error("can't open device %s: force-share=on can only be used with read-only "
                     "images", argv[optind]);
            ret = -EINVAL;
        } else {
            ret = image_opts ? io_open_optlist(&s, argv[optind], NULL, flags, native_aio)
                             : io_open_image(&s, argv[optind], argv[optind], format, flags,
                                             native_aio, snapshot);
        }
    }
    if (ret == 0) {
        ret = command_loop(&s, cmds, ncmds);
    } else {
        ret = -EINVAL;
    }
    fflush(stdout);
    io_close_image(&s);
    vd_engine_free(s.engine);
    free(cmds);
    return ret < 0 ? 1 : 0;
}
