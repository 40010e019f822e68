/* Shared declarations of the vdisk command: one entry point per verb, and the helpers
 * every verb uses to report errors the way qemu-img does. */
#ifndef VD_CLI_H
#define VD_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/snapshot.h"
#include "vdisk/vdisk.h"

/* Each verb gets argv with argv[0] = verb name and returns the process exit code. */
int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_amend(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_nbd(int argc, char **argv);    /* src/cli/nbd.c: qemu-nbd compatible server */
int cmd_io(int argc, char **argv);     /* src/cli/io.c: qemu-io compatible */
int cmd_bench(int argc, char **argv);  /* src/cli/bench.c: qemu-img bench compatible */
int cmd_bitmap(int argc, char **argv);  /* src/cli/bench.c: qemu-img bench compatible */
int cmd_dd(int argc, char **argv);     /* src/cli/dd.c: qemu-img dd compatible */

/* "<progname>: " (see cli_progname) + formatted message + newline on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Parses a -t cache mode (none, writeback, writethrough, directsync, unsafe) into
 * VD_OPEN_* flags; returns -1 for an unknown mode. */
int cli_parse_cache(const char *mode, unsigned *flags);
/* Prints qemu-img's snapshot table to stdout (header row, then one row per snapshot), as
 * `snapshot -l` and `info` show it (src/cli/snapshot.c). */
void cli_print_snapshot_table(const vd_snapshot_info *list, size_t n);

#endif
