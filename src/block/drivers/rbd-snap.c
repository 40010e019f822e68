/* RBD snapshots as the node's internal snapshots (a raw node passes them down), in the two
 * phases the transaction engine asks for. A snapshot's id is its name, as QEMU shows them.
 * Creation is done in commit and undone by removing it; a deletion renames the snapshot
 * out of the way in commit (undone by renaming it back) and removes it in clean, so a
 * group that fails later loses nothing. */
#ifdef VD_HAVE_RBD

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/rbd.h"

/* QEMU keeps snapshot names in 128-byte fields. */
#define SNAP_NAME_MAX 127
/* Where a deleted snapshot waits for the end of its transaction. */
#define DELETING_PREFIX ".vdisk-deleting."

typedef struct rbdd_snap_txn {
    bool create;
    char *name;
    char *parked;            /* delete: the name it waits under after commit */
    bool replace_old;        /* create with replace: an old snapshot of that name exists */
    bool committed;
} rbdd_snap_txn;

/* The image's snapshots (caller frees with list_free). */
static int list(rbdd_state *s, rbd_snap_info_t **out, int *nb, vd_error **errp)
{
    int max = 16;
    for (;;) {
        rbd_snap_info_t *snaps = calloc((size_t)max, sizeof(*snaps));
        if (!snaps) {
            abort();
        }
        int r = rbd_snap_list(s->image, snaps, &max);
        if (r >= 0) {
            *out = snaps;
            *nb = r;
            return 0;
        }
        free(snaps);
        if (r != -ERANGE || max > (1 << 20)) {
            return vd_error_set(errp, VD_ERR_IO, -r, "error listing snapshots of %s: %s",
                                s->desc, strerror(-r));
        }
    }
}

static void list_free(rbd_snap_info_t *snaps)
{
    rbd_snap_list_end(snaps);
    free(snaps);
}

static bool parked_name(const char *name)
{
    return !strncmp(name, DELETING_PREFIX, strlen(DELETING_PREFIX));
}

/* 0 if the image has a snapshot of that name (one being deleted does not count), -ENOENT
 * (no error set) if not, another -errno with the error set if the list failed. */
static int lookup(rbdd_state *s, const char *name, vd_error **errp)
{
    if (parked_name(name)) {
        return -ENOENT;
    }
    rbd_snap_info_t *snaps;
    int nb;
    int ret = list(s, &snaps, &nb, errp);
    if (ret < 0) {
        return ret;
    }
    ret = -ENOENT;
    for (int i = 0; i < nb && ret; i++) {
        ret = strcmp(snaps[i].name, name) ? -ENOENT : 0;
    }
    list_free(snaps);
    return ret;
}

int rbdd_snapshot_list(vd_node *n, vd_snapshot_info **out, size_t *nbp, vd_error **errp)
{
    rbdd_state *s = n->opaque;
    rbd_snap_info_t *snaps;
    int nb;
    int ret = list(s, &snaps, &nb, errp);
    if (ret < 0) {
        return ret;
    }
    vd_snapshot_info *v = calloc((size_t)nb + 1, sizeof(*v));
    if (!v) {
        abort();
    }
    size_t k = 0;
    for (int i = 0; i < nb; i++) {
        if (parked_name(snaps[i].name)) {
            continue;  /* being deleted */
        }
        /* RBD keeps no date, clock, icount or VM state (QEMU shows the image size as
         * its VM size, and zeros for the rest). */
        v[k].id = strdup(snaps[i].name);
        v[k].name = strdup(snaps[i].name);
        if (!v[k].id || !v[k].name) {
            abort();
        }
        v[k].vm_state_size = snaps[i].size;
        v[k].disk_size = snaps[i].size;
        v[k].icount = 0;
        k++;
    }
    list_free(snaps);
    *out = v;
    *nbp = k;
    return 0;
}

static rbdd_snap_txn *new_txn(bool create, const char *name)
{
    rbdd_snap_txn *t = calloc(1, sizeof(*t));
    if (!t || !(t->name = strdup(name))) {
        abort();
    }
    t->create = create;
    return t;
}

int rbdd_snapshot_create_prepare(vd_node *n, const vd_snap_params *p, void **txn,
                                 vd_error **errp)
{
    rbdd_state *s = n->opaque;
    if (p->vm_state_size) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "RBD snapshots cannot hold VM "
                            "state");
    }
    if (!p->name || !p->name[0]) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "rbd needs a name for a snapshot");
    }
    if (strlen(p->name) > SNAP_NAME_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, ERANGE, "snapshot name '%s' is too long",
                            p->name);
    }
    if (parked_name(p->name)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "snapshot names starting with "
                            "'%s' are vdisk's own", DELETING_PREFIX);
    }
    int ret = lookup(s, p->name, errp);
    if (ret < 0 && ret != -ENOENT) {
        return ret;
    }
    bool found = ret == 0;
    if (found && !p->replace) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Snapshot with name '%s' already "
                            "exists", p->name);
    }
    rbdd_snap_txn *t = new_txn(true, p->name);
    t->replace_old = found;
    *txn = t;
    return 0;
}

int rbdd_snapshot_delete_prepare(vd_node *n, const char *id, const char *name, void **txn,
                                 vd_error **errp)
{
    rbdd_state *s = n->opaque;
    /* Ids are names here: both given, they must agree. */
    if (id && name && strcmp(id, name)) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "%s: snapshot not found",
                            n->filename);
    }
    const char *want = name ? name : id;
    int ret = lookup(s, want, errp);
    if (ret == -ENOENT) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "%s: snapshot not found",
                            n->filename);
    }
    if (ret < 0) {
        return ret;
    }
    int prot = 0;
    if (rbd_snap_is_protected(s->image, want, &prot) == 0 && prot) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "snapshot '%s' is protected (it has "
                            "clones or is kept by 'rbd snap protect')", want);
    }
    rbdd_snap_txn *t = new_txn(false, want);
    if (asprintf(&t->parked, DELETING_PREFIX "%s", want) < 0) {
        abort();
    }
    *txn = t;
    return 0;
}

int rbdd_snapshot_commit(vd_node *n, void *txn, vd_error **errp)
{
    rbdd_state *s = n->opaque;
    rbdd_snap_txn *t = txn;
    int ret;
    if (t->create) {
        /* Replace: the old one goes first (names are unique); this cannot be undone, which
         * is why the engine runs replacing actions last. */
        if (t->replace_old && (ret = rbd_snap_remove(s->image, t->name)) < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "failed to remove snapshot '%s': %s",
                                t->name, strerror(-ret));
        }
        ret = rbd_snap_create(s->image, t->name);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "failed to create snap: %s",
                                strerror(-ret));
        }
    } else {
        ret = rbd_snap_rename(s->image, t->name, t->parked);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "failed to delete snapshot '%s': %s",
                                t->name, strerror(-ret));
        }
    }
    t->committed = true;
    return 0;
}

int rbdd_snapshot_abort(vd_node *n, void *txn, vd_error **errp)
{
    rbdd_state *s = n->opaque;
    rbdd_snap_txn *t = txn;
    if (!t->committed) {
        return 0;
    }
    int ret = t->create ? rbd_snap_remove(s->image, t->name)
                        : rbd_snap_rename(s->image, t->parked, t->name);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "failed to undo the snapshot '%s': %s",
                            t->name, strerror(-ret));
    }
    t->committed = false;
    return 0;
}

void rbdd_snapshot_clean(vd_node *n, void *txn)
{
    rbdd_state *s = n->opaque;
    rbdd_snap_txn *t = txn;
    if (!t->create && t->committed) {
        /* A failure leaves it parked: listed by rbd, hidden by vdisk, like leaked space. */
        (void)rbd_snap_remove(s->image, t->parked);
    }
    free(t->name);
    free(t->parked);
    free(t);
}

int rbdd_snapshot_apply(vd_node *n, const char *id_or_name, vd_error **errp)
{
    rbdd_state *s = n->opaque;
    int ret = lookup(s, id_or_name, errp);
    if (ret == -ENOENT) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "%s: Failed to load snapshot: %s",
                            n->filename, strerror(ENOENT));
    }
    if (ret < 0) {
        return ret;
    }
    ret = rbd_snap_rollback(s->image, id_or_name);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "failed to rollback to snapshot '%s': %s",
                            id_or_name, strerror(-ret));
    }
    uint64_t size;
    if (rbd_get_size(s->image, &size) == 0) {
        __atomic_store_n(&n->size, size, __ATOMIC_RELEASE);  /* the snapshot's size now */
    }
    return 0;
}

#endif
