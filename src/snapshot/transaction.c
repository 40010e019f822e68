/* The transaction engine: prepare all, then commit all; on any failure abort in reverse
 * order what prepared, so every disk ends as it was. Disks stay drained throughout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/disk.h"
#include "snapshot/transaction.h"

static const char *action_label(const vd_txn_action *a)
{
    if (a->label) {
        return a->label;
    }
    return a->disk ? a->disk->node->filename : "transaction";
}

int vd_txn_name_error(const char *label, int ret, vd_error **err)
{
    if (ret >= 0) {
        ret = -EIO;  /* a step that failed must say so with a negative errno */
    }
    if (!*err) {
        return vd_error_set(err, VD_ERR_IO, -ret, "%s: %s", label, strerror(-ret));
    }
    size_t len = strlen(label);
    if (len == 0) {
        return ret;   /* the action's errors stand as they are */
    }
    const char *msg = (*err)->msg;
    if (strncmp(msg, label, len) != 0 || strncmp(msg + len, ": ", 2) != 0) {
        vd_error_prepend(err, "%s", label);
    }
    return ret;
}

static int name_error(const vd_txn_action *a, int ret, vd_error **err)
{
    return vd_txn_name_error(action_label(a), ret, err);
}

/* Undoes the actions order[0..nb) in reverse order and cleans them. A rollback that fails
 * cannot be retried; its cause is added to the error being returned. */
static void rollback(vd_txn_action *acts, const size_t *order, size_t nb, vd_error *err)
{
    for (size_t i = nb; i-- > 0;) {
        vd_txn_action *a = &acts[order[i]];
        if (!a->ops->abort) {
            continue;
        }
        vd_error *aerr = NULL;
        int ret = a->ops->abort(a, &aerr);
        if (ret < 0) {
            name_error(a, ret, &aerr);
            char *msg = NULL;
            if (asprintf(&msg, "%s (undoing %s failed too: %s)", err->msg, action_label(a),
                         aerr->msg) < 0) {
                abort();
            }
            free(err->msg);
            err->msg = msg;
            vd_error_free(aerr);
        }
    }
    for (size_t i = 0; i < nb; i++) {
        vd_txn_action *a = &acts[order[i]];
        if (a->ops->clean) {
            a->ops->clean(a);
        }
    }
}

static int run_locked(vd_txn_action *acts, const size_t *order, size_t n, vd_error **errp)
{
    vd_error *err = NULL;
    size_t prepared = 0;
    for (; prepared < n; prepared++) {
        vd_txn_action *a = &acts[order[prepared]];
        int ret = a->ops->prepare(a, &err);
        if (ret < 0) {
            ret = name_error(a, ret, &err);
            rollback(acts, order, prepared, err);
            vd_error_propagate(errp, err);
            return ret;
        }
    }
    for (size_t i = 0; i < n; i++) {
        vd_txn_action *a = &acts[order[i]];
        int ret = a->ops->commit ? a->ops->commit(a, &err) : 0;
        if (ret < 0) {
            ret = name_error(a, ret, &err);
            rollback(acts, order, n, err);
            vd_error_propagate(errp, err);
            return ret;
        }
    }
    for (size_t i = 0; i < n; i++) {
        vd_txn_action *a = &acts[order[i]];
        if (a->ops->clean) {
            a->ops->clean(a);
        }
    }
    return 0;
}

int vd_txn_run(vd_txn_action *acts, size_t n, vd_error **errp)
{
    if (n == 0) {
        return 0;
    }
    /* The run order: what can be undone first, so that an action whose commit cannot be
     * undone only commits once every other one has committed. */
    size_t *order = calloc(n, sizeof(*order));
    vd_disk **disks = calloc(n, sizeof(*disks));
    if (!order || !disks) {
        abort();
    }
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            if (acts[i].irreversible == (pass == 1)) {
                order[k++] = i;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        disks[i] = acts[i].disk;
    }
    vd_disks_drain_begin(disks, n);
    int ret = run_locked(acts, order, n, errp);
    vd_disks_drain_end(disks, n);
    free(disks);
    free(order);
    return ret;
}
