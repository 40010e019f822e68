/* Private declarations of `vdisk io` (qemu-io compatible): the session state, the command
 * table shared by the command loop (io.c) and the commands (io-cmds.c), and the number and
 * report formatting helpers that must print exactly what qemu-io 7.2 prints. */
#ifndef VD_CLI_IO_CMDS_H
#define VD_CLI_IO_CMDS_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "vdisk/tree.h"
#include "vdisk/vdisk.h"

/* qemu's BDRV_REQUEST_MAX_BYTES: the largest single request qemu-io accepts. */
#define IO_REQUEST_MAX_BYTES 2147483136ULL

/* One open session: at most one image at a time, as in qemu-io. */
typedef struct io_state {
    vd_engine *engine;
    vd_disk *disk;     /* NULL while no file is open */
    unsigned flags;    /* VD_OPEN_* the image was opened with */
    const char *format;/* -f / open -o driver=, or NULL to probe */
    bool misalign;     /* -m: buffers deliberately not aligned */
    bool snapshot;     /* -s: the disk is an unlinked temporary overlay */
    vd_tree *opts;     /* the block options it was opened with (-o, --image-opts), or NULL
                        * for a filename alone */
    bool cor;          /* -C: the next open puts a copy-on-read filter on top */
    bool quit;
} io_state;

enum {
    IO_CMD_GLOBAL = 1 << 0,     /* runs whether or not a file is open (help, quit) */
    IO_CMD_NOFILE_OK = 1 << 1,  /* needs no file (open, sleep, sigraise, abort) */
    IO_CMD_WRITE = 1 << 2,      /* needs a writable image (qemu's BLK_PERM_WRITE) */
};

typedef struct io_cmd {
    const char *name;
    const char *altname;
    int (*fn)(io_state *s, int argc, char **argv);
    int argmin;
    int argmax;  /* -1: no limit */
    unsigned flags;
    const char *args;
    const char *oneline;
    void (*help)(void);
} io_cmd;

/* The commands, sorted by name as qemu-io lists them. */
extern const io_cmd io_cmds[];
extern const size_t io_ncmds;

/* Prints "<name> <args> -- <oneline>" and returns -EINVAL (qemu's usage reply). */
int io_usage(const io_cmd *c);
const io_cmd *io_find_cmd(const char *name);

/* qemu's cvtnum: a byte count with optional suffix; -EINVAL or -ERANGE on error. */
int64_t io_cvtnum(const char *s);
/* Prints qemu-io's message for a failed io_cvtnum. */
void io_print_cvtnum_err(int64_t rc, const char *arg);
/* qemu-io's human size: "64 KiB", "1.500 KiB", "513 bytes". */
void io_cvtstr(double value, char *buf, size_t len);
/* The elapsed time between two CLOCK_MONOTONIC readings. */
struct timespec io_tsub(struct timespec t2, struct timespec t1);
/* "wrote 4096/4096 bytes at offset 0" and the statistics line (or the -C line). */
void io_print_report(const char *op, const struct timespec *t, int64_t offset, int64_t count,
                     int64_t total, int cnt, bool cflag);
/* The -v hex dump. */
void io_dump_buffer(const void *buf, int64_t offset, int64_t len);

/* "<progname>: <message>" on stderr, the stream qemu-io's error_report uses. */
void io_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Opens `name` into s (the "open" command and the command line); `snapshot` puts a temporary
 * overlay on top so the image itself is never written. Returns 0 or -errno after printing
 * why. */
/* Opens name (a filename or a json: name); display names it in messages ("can't open
 * device DISPLAY: ..."), NULL when the options name no file ("can't open: ..."). */
int io_open_image(io_state *s, const char *name, const char *display, const char *format,
                  unsigned flags, bool native_aio, bool snapshot);
/* Block options (io-opts.c). Appends an -o list to *list (comma-joined). */
void io_append_optlist(char **list, const char *more);
/* Opens from a block option list (open -o, --image-opts) plus an optional filename. */
int io_open_optlist(io_state *s, const char *optlist, const char *file, unsigned flags,
                    bool native_aio);
/* The json: name of name (a filename or json: name, in format or probed) under a
 * copy-on-read filter; NULL after printing an error. */
char *io_cor_name(const char *name, const char *format);
/* reopen with options: the open's options with optlist's on top, and QEMU's refusals. */
int io_reopen_opts(io_state *s, const char *optlist, unsigned flags, bool has_rw,
                   bool has_cache);
void io_close_image(io_state *s);
/* -d MODE (qemu's bdrv_parse_discard_flags): updates VD_OPEN_UNMAP; -1 if unknown. */
int io_parse_discard(const char *mode, unsigned *flags);
/* -i MODE: 1 for "native", 0 for "threads"/"io_uring", -1 if unknown. */
int io_parse_aio(const char *mode);

/* Session and miscellaneous commands (io.c); the I/O commands live in io-cmds.c. */
void io_open_help(void);
int io_open_f(io_state *s, int argc, char **argv);
int io_close_f(io_state *s, int argc, char **argv);
void io_reopen_help(void);
int io_reopen_f(io_state *s, int argc, char **argv);
int io_quit_f(io_state *s, int argc, char **argv);
int io_break_f(io_state *s, int argc, char **argv);
int io_remove_break_f(io_state *s, int argc, char **argv);
int io_resume_f(io_state *s, int argc, char **argv);
int io_wait_break_f(io_state *s, int argc, char **argv);
int io_abort_f(io_state *s, int argc, char **argv);
void io_sigraise_help(void);
int io_sigraise_f(io_state *s, int argc, char **argv);
int io_sleep_f(io_state *s, int argc, char **argv);
int io_help_f(io_state *s, int argc, char **argv);

#endif
