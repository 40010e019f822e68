/* QEMU's blkdebug configuration files (`blkdebug:CONFIG:PATH`), private to the blkdebug
 * filter: [inject-error] and [set-state] sections, parsed into rules that blkdebug.c runs.
 *
 * How the rules run, as in QEMU: the filter has a state, 1 at the start. When a named
 * event happens, every rule for it whose state is 0 or the current one acts: the
 * inject-error rules among them become the active set (replacing the previous one), and a
 * set-state rule sets the state the filter takes once all have acted. Each request to the
 * file is then checked against the active rules in order: the first whose sector (if any)
 * lies in the request and whose I/O types include the request's fails it with its errno;
 * a `once` rule is then gone for good. */
#ifndef VD_BLKDEBUG_CONFIG_H
#define VD_BLKDEBUG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

#define BD_EVENT_NAME_MAX 63

/* I/O types, as QEMU's iotype option names them. */
enum {
    BD_IO_READ = 1u << 0,
    BD_IO_WRITE = 1u << 1,
    BD_IO_WRITE_ZEROES = 1u << 2,
    BD_IO_DISCARD = 1u << 3,
    BD_IO_FLUSH = 1u << 4,
    BD_IO_BLOCK_STATUS = 1u << 5,
};

typedef enum { BD_INJECT_ERROR, BD_SET_STATE } bd_action;

typedef struct bd_qrule {
    bd_action action;
    char event[BD_EVENT_NAME_MAX + 1];
    int64_t state;        /* 0: any state */
    int err;              /* inject: positive errno; 0 injects nothing */
    int64_t offset;       /* inject: byte offset a request must cover, or -1 for any */
    bool once;
    unsigned iotypes;     /* inject: BD_IO_* mask */
    int64_t new_state;    /* set-state */
    /* run time */
    bool active;
    bool gone;
} bd_qrule;

/* Reads and parses the config file at path (a name that ends at len bytes). Errors name
 * the file, the line and what is wrong. */
int bd_config_parse(const char *path, size_t len, bd_qrule **out, int *nb, vd_error **errp);
/* Parses config text (len bytes, not NUL-terminated; `what` names it in errors). */
int bd_config_parse_text(const char *text, size_t len, const char *what, bd_qrule **out,
                         int *nb, vd_error **errp);

#endif
