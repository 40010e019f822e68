/* The transaction engine, private to libvdisk: runs a list of actions as one
 * all-or-nothing step. vd_transaction (snapshot-api.c) builds the actions from the public
 * vd_action list; unit tests inject their own actions to check the call order. */
#ifndef VD_TRANSACTION_H
#define VD_TRANSACTION_H

#include <stdbool.h>
#include <stddef.h>

#include "vdisk/vdisk.h"

typedef struct vd_txn_action vd_txn_action;

/* What an action does, in four steps (DESIGN.md, "Snapshots and transactions"):
 * - prepare: every check and every change that can be undone; nothing a user of the disk
 *   sees changes. On failure it leaves nothing behind (abort and clean are not called).
 * - commit: makes the change visible; called only when every action prepared.
 * - abort: undoes prepare, or prepare and a successful commit (a later action failed).
 * - clean: frees what prepare kept; exactly once per successful prepare, after commit or
 *   abort. Cannot fail.
 * Errors are negative errno with *errp set (the engine adds the disk's name in front). */
typedef struct vd_txn_ops {
    int (*prepare)(vd_txn_action *a, vd_error **errp);
    int (*commit)(vd_txn_action *a, vd_error **errp);
    int (*abort)(vd_txn_action *a, vd_error **errp);
    void (*clean)(vd_txn_action *a);
} vd_txn_ops;

struct vd_txn_action {
    const vd_txn_ops *ops;
    vd_disk *disk;          /* drained for the whole transaction; NULL: no disk */
    const char *label;      /* names the action in errors; NULL: the disk's filename;
                             * "": errors are not prefixed (QMP's bitmap actions) */
    bool irreversible;      /* its commit cannot be undone: prepared and committed last */
    void *opaque;           /* the action's own state */
};

/* Runs acts[0..n) as one transaction: drains every disk (exclusive side of its handle
 * lock, for the whole run), prepares the reversible actions in order and then the
 * irreversible ones; if a prepare fails, aborts the prepared ones in reverse order and
 * cleans them. Otherwise commits in the same order; if a commit fails, aborts every
 * action (committed or not) in reverse order and cleans them. On success cleans them all.
 * Returns 0 or the failing action's -errno with "LABEL: cause" in *errp. */
int vd_txn_run(vd_txn_action *acts, size_t n, vd_error **errp);

/* Makes a failed step's error read "LABEL: cause" (unless it already starts with LABEL)
 * and keeps its errno; with no message, the errno's text. Returns the negative errno. */
int vd_txn_name_error(const char *label, int ret, vd_error **err);

#endif
