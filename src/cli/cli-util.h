/* Helpers shared by the qemu-img compatible verbs: argument errors worded as qemu-img words
 * them, -o option lists checked against a format's option table, a JSON writer that orders
 * keys exactly as qemu-img's QDict output does, the progress line, and image opening. */
#ifndef VD_CLI_UTIL_H
#define VD_CLI_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cli/cli.h"
#include "vdisk/nbd.h"
#include "vdisk/tree.h"

#ifndef VDISK_VERSION
#define VDISK_VERSION "0.1.0"
#endif

/* Long-option values above the range of short options, shared by the verbs. */
enum {
    OPT_OUTPUT = 256,
    OPT_BACKING_CHAIN,
    OPT_SIZE,
    OPT_PREALLOCATION,
    OPT_SHRINK,
    OPT_START_OFFSET,
    OPT_MAX_LENGTH,
    OPT_TARGET_IS_ZERO,
    OPT_FORCE,
};

/* ---- program name ----------------------------------------------------------------------- */

/* A library engine whose events (a corrupt image) are printed as QEMU's tools print them. */
vd_engine *cli_engine_new(void);

/* The name the command answers to in its messages, usage and version lines: "vdisk", or
 * "qemu-img", "qemu-io" or "qemu-nbd" when started through a link of that name. main() sets
 * it once, before anything is printed; one value per process is all the CLI needs. */
const char *cli_progname(void);
/* `verb`: the verb the name stands for ("io" for qemu-io, "nbd" for qemu-nbd), or NULL for
 * a name that takes verbs (vdisk, qemu-img). */
void cli_set_progname(const char *name, const char *verb);
/* How usage text names the command that runs `verb`: "qemu-io" for io when started as
 * qemu-io, otherwise "<progname> <verb>" ("vdisk io"). */
const char *cli_command_name(const char *verb);

/* ---- errors ----------------------------------------------------------------------------- */

/* Prints "<progname>: msg", then "Try '<progname> --help' for more information", and exits
 * 1: the reply to a malformed command line (qemu-img's error_exit). */
void cli_error_exit(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* The getopt ':' and '?' cases. */
void cli_missing_argument(const char *option) __attribute__((noreturn));
void cli_unrecognized_option(const char *option) __attribute__((noreturn));
/* Reports an unknown getopt result: call from the verbs' switch defaults. */
void cli_bad_option(int c, char **argv) __attribute__((noreturn));
/* Prints the global help text and exits 0. */
void cli_help(void) __attribute__((noreturn));
/* "<progname>: <prefix><error message>" and any continuation lines, then frees the error. */
void cli_report_err(vd_error *err, const char *prefix_fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Same, for a prefix that already names `name`: a library message that starts with
 * "name: " loses that start so the file is not named twice. */
void cli_report_err_for(vd_error *err, const char *name, const char *prefix_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- numbers and option lists ----------------------------------------------------------- */

/* Parses a size argument as qemu-img's cvtnum does; on failure prints the qemu-img message
 * naming `what` ("image size", "start offset") and returns -1. */
int cli_cvtnum(const char *what, const char *value, int64_t *out);
/* --output=human|json: returns 0 (human), 1 (json); -1 after printing the error. */
int cli_parse_output(const char *s);
/* Rejects empty lists and odd trailing commas (qemu-img's is_valid_option_list). */
bool cli_valid_option_list(const char *s);
/* Appends one -o argument to *list ("a,b"), checking it; prints and returns -1 if bad. */
int cli_add_option_list(char **list, const char *arg);
/* True when the list asks for help ("help" or "?"). */
bool cli_has_help_option(const char *list);

/* One entry of a format's option table, with the type the CLI needs to check values. */
typedef enum { CLI_OPT_STR, CLI_OPT_BOOL, CLI_OPT_SIZE, CLI_OPT_NUM } cli_opt_type;

/* Names the image that options parsed from now on will create: a protocol there (rbd:)
 * may take options of its own. */
void cli_set_option_target(const char *filename);
/* Parses an option list ("k=v,k2,k3=a,,b") into `o`. A bare key means "on". Every key must be
 * in the format's option table (vd_create_options) unless `allowed` is given, in which case
 * the key must be in that NULL-terminated list too; values are checked by type. Errors are
 * printed as qemu-img prints them, prefixed by `prefix` (e.g. "file.qcow2: ") and return -1.
 * create_only_hint: add "This option is only supported for image creation" for keys that
 * are in the table but not in `allowed` (amend). */
int cli_parse_options(const char *fmt, const char *list, const char *const *allowed,
                      bool create_only_hint, const char *prefix, vd_opts *o);
/* Does the format's option table have this option? */
bool cli_has_option(const char *fmt, const char *name);
/* Rewrites boolean values in their canonical form ("on"/"off"): qemu accepts spellings
 * such as "yes" or "y" that the library need not know. */
void cli_normalize_bools(const char *fmt, vd_opts *o);
/* The type of a format's option, from the library's table (CLI_OPT_STR if unknown). */
cli_opt_type cli_option_type(const char *fmt, const char *key);
/* Prints `-o help` for a format: "Supported qcow2 options:" when filename is NULL. Returns the
 * exit code (1 for an unknown format). amend_title: print qemu-img amend's layout instead. */
int cli_print_option_help(const char *fmt, const char *filename, const char *const *only,
                          bool amend_title);
/* The same, with options of this listing only (amend's) added to the format's. */
int cli_print_option_help_extra(const char *fmt, const char *filename,
                                const char *const *only, bool amend_title,
                                const vd_create_option *extra, size_t nb_extra);

/* ---- JSON in qemu-img's layout ---------------------------------------------------------- */

typedef struct cli_json cli_json;

cli_json *cli_json_object(void);
cli_json *cli_json_array(void);
void cli_json_free(cli_json *j);
/* Add members. `key` is NULL when adding to an array. The child is owned by the parent. */
void cli_json_add(cli_json *parent, const char *key, cli_json *child);
void cli_json_add_str(cli_json *parent, const char *key, const char *v);
void cli_json_add_int(cli_json *parent, const char *key, int64_t v);
void cli_json_add_bool(cli_json *parent, const char *key, bool v);
/* Pretty prints (4-space indent, keys in qemu's hash-bucket order) plus a newline. */
void cli_json_print(FILE *f, const cli_json *j);
/* Prints an object the way qemu-img prints "Format specific information": one "key: value"
 * per line with dashes in keys shown as spaces, nested values indented by 4 more. */
void cli_json_dump_human(FILE *f, const cli_json *obj, int indent);
/* Writes a JSON string literal with qemu's escaping (non-ASCII as \uXXXX). */
void cli_json_write_string(FILE *f, const char *s);

/* ---- progress ------------------------------------------------------------------------- */

/* qemu-img's "    (12.34/100%)\r" progress line on stdout. */
typedef struct cli_progress {
    bool enabled;
    float min_skip;
    float current;
    float last_print;
} cli_progress;

void cli_progress_init(cli_progress *p, bool enabled, float min_skip);
/* max == 0: set the value to `delta`; otherwise add delta/100*max. */
void cli_progress_print(cli_progress *p, float delta, int max);
void cli_progress_end(cli_progress *p);

/* ---- images ----------------------------------------------------------------------------- */

/* Formats QEMU reads but cannot create or amend (bochs, cloop, dmg): qemu-img names them
 * so rather than calling them unknown. */
bool cli_read_only_format(const char *fmt);
/* Opens an image; prints "Could not open 'FILE': why" and returns -1 on failure. Opening a
 * probed raw image for writing prints qemu's warning about format probing first. */
/* --image-opts: file arguments are option lists (driver=qcow2,file.filename=a.qcow2), as
 * qemu-img takes them; cli_open reads them so. The target of convert follows
 * --target-image-opts instead (cli_open_target). Each setter returns the previous mode. */
bool cli_set_image_opts(bool on);
bool cli_set_target_image_opts(bool on);
/* Removes every `flag` argument before a "--" from argv; true if there was one. */
bool cli_take_flag(int *argc, char **argv, const char *flag);
/* Takes every `--object ARG` (TLS credentials for client connections) out of argv, for the
 * engines cli_engine_new makes. -1 after printing an error. */
int cli_take_objects(int *argc, char **argv);
/* One --object of a client's (tls-creds-*,endpoint=client), kept for cli_engine_new. */
int cli_add_client_object(const char *arg);
/* One --object of a server's (tls-creds-*,endpoint=server), appended to *objs (nbd.c). */
typedef struct cli_tls_object {
    char *id;
    vd_tls_creds *creds;
} cli_tls_object;
int cli_add_server_object(const char *arg, cli_tls_object **objs, size_t *nb);
/* qemu-img's warning when opening name read-write probes it as raw (display names it). */
void cli_warn_probed_raw(const char *name, const char *display);
/* An option list (a=b,c.d=e) as a tree, or NULL after printing the error. */
vd_tree *cli_parse_optlist(const char *optstr);
/* "json:{...}" naming the options of t (caller frees). */
char *cli_tree_json_name(const vd_tree *t);
/* An option list as a json: filename (NULL after printing an error). Caller frees. */
char *cli_opts_to_json(const char *optstr);
int cli_open_target(vd_engine *e, const char *filename, const char *fmt, unsigned flags,
                    vd_disk **out);
int cli_open(vd_engine *e, const char *filename, const char *fmt, unsigned flags,
             vd_disk **out);
/* Is `fmt` a format the library knows (has an option table)? */
bool cli_format_known(const char *fmt);
/* After a failed I/O or block status call on d (same thread): prints the driver's note when
 * it is one qemu would also have printed at that point (a "qcow2: ..." corruption event),
 * without the image name the library puts in front. */
void cli_print_io_detail(vd_disk *d);
/* Number of layers in d's open backing chain (1 = no backing). */
int cli_chain_length(vd_disk *d);

/* printf to stdout unless quiet. */
void cli_qprintf(bool quiet, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Allocation that aborts on failure (small internal allocations only). */
void *cli_xmalloc(size_t n);
void *cli_xcalloc(size_t n, size_t size);
char *cli_xstrdup(const char *s);
/* A buffer aligned for O_DIRECT I/O (4096), freed with free(). */
void *cli_alloc_io_buffer(size_t n);

#endif
