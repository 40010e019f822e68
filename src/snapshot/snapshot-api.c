/* The public snapshot API (include/vdisk/snapshot.h): vd_transaction turns the caller's
 * actions into engine actions with one shared timestamp; single snapshot operations are
 * transactions of one action; apply, list, VM state and the temporary (read-only) load of
 * a snapshot go to the driver directly. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "snapshot/actions.h"
#include "jobs/job.h"

/* Same image in two actions: the driver's two-phase ops hold one pending change per node
 * (a second prepare would not see the first), and an external snapshot moves the handle,
 * so the order of two actions on one image would matter. Refused, before anything runs. */
static bool same_image(const vd_disk *a, const vd_disk *b)
{
    if (a == b || a->node == b->node) {
        return true;
    }
    return a->node->realpath && b->node->realpath &&
           strcmp(a->node->realpath, b->node->realpath) == 0;
}

static bool is_bitmap_action(const vd_action *a)
{
    return a->kind >= VD_ACTION_BITMAP_ADD && a->kind <= VD_ACTION_BITMAP_MERGE;
}

/* Actions on the engine's named nodes: several may name one node. */
static bool is_node_action(const vd_action *a)
{
    return is_bitmap_action(a) || a->kind == VD_ACTION_BACKUP;
}

static int check_action(const vd_action *acts, size_t i, vd_error **errp)
{
    const vd_action *a = &acts[i];
    if (is_node_action(a)) {
        /* Several may name one node (QEMU runs them in order); their disk only drains. */
        return a->engine ? 0 : vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Action %zu of "
                                            "the transaction has no engine", i + 1);
    }
    if (!a->disk) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Action %zu of the transaction has "
                            "no disk", i + 1);
    }
    const char *file = a->disk->node->filename;
    for (size_t j = 0; j < i; j++) {
        if (!is_node_action(&acts[j]) && acts[j].disk &&
            same_image(acts[j].disk, a->disk)) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: the image is in more "
                                "than one action of the transaction", file);
        }
    }
    switch (a->kind) {
    case VD_ACTION_SNAPSHOT_INTERNAL:
        if (a->vm_state_size && !a->vm_state) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: VM state of %llu bytes "
                                "given without a buffer", file,
                                (unsigned long long)a->vm_state_size);
        }
        return 0;
    case VD_ACTION_SNAPSHOT_DELETE_INTERNAL:
        if (!a->id && !a->name) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Name or id must be "
                                "provided", file);
        }
        return 0;
    case VD_ACTION_SNAPSHOT_EXTERNAL:
        return 0;
    default:
        break;
    }
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: unknown action kind %d", file,
                        (int)a->kind);
}

/* The group's timestamp, with microsecond precision as qemu-img stores it, and the name
 * QEMU's savevm makes from it (local time). */
static void group_time(uint32_t *sec, uint32_t *nsec, char *name, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *sec = (uint32_t)ts.tv_sec;
    *nsec = (uint32_t)(ts.tv_nsec / 1000 * 1000);
    struct tm tm;
    tzset();
    time_t t = ts.tv_sec;
    localtime_r(&t, &tm);
    strftime(name, len, "vm-%Y%m%d%H%M%S", &tm);
}

int vd_transaction(const vd_action *acts, size_t n, vd_error **errp)
{
    return vd_transaction_grouped(acts, n, false, errp);
}

int vd_transaction_grouped(const vd_action *acts, size_t n, bool grouped, vd_error **errp)
{
    if (n == 0) {
        return 0;
    }
    if (!acts) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "No actions given");
    }
    for (size_t i = 0; i < n; i++) {
        int ret = check_action(acts, i, errp);
        if (ret < 0) {
            return ret;
        }
    }
    uint32_t sec, nsec;
    char auto_name[32];
    group_time(&sec, &nsec, auto_name, sizeof(auto_name));

    vd_job_group *group = NULL;
    vd_snap_action *states = calloc(n, sizeof(*states));
    vd_txn_action *tacts = calloc(n, sizeof(*tacts));
    if (!states || !tacts) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        vd_snap_action *s = &states[i];
        s->act = &acts[i];
        switch (acts[i].kind) {
        case VD_ACTION_SNAPSHOT_INTERNAL:
            s->params.name = acts[i].name ? acts[i].name : auto_name;
            s->params.date_sec = sec;
            s->params.date_nsec = nsec;
            s->params.vm_clock_nsec = acts[i].vm_clock_nsec;
            s->params.icount = acts[i].icount;
            s->params.vm_state = acts[i].vm_state;
            s->params.vm_state_size = acts[i].vm_state_size;
            s->params.replace = acts[i].replace;
            vd_snap_action_internal_create(&tacts[i], s);
            break;
        case VD_ACTION_SNAPSHOT_DELETE_INTERNAL:
            vd_snap_action_internal_delete(&tacts[i], s);
            break;
        case VD_ACTION_SNAPSHOT_EXTERNAL:
            vd_snap_action_external(&tacts[i], s);
            break;
        case VD_ACTION_BACKUP:
            if (grouped && !group) {
                group = vd_job_group_new();
            }
            s->group = group;
            vd_snap_action_backup(&tacts[i], s);
            break;
        default:
            vd_snap_action_bitmap(&tacts[i], s);
            break;
        }
    }
    int ret = vd_txn_run(tacts, n, errp);
    if (group) {
        vd_job_group_unref(group);
    }
    free(tacts);
    free(states);
    return ret;
}

int vd_snapshot_create(vd_disk *d, const char *name, const void *vm_state,
                       uint64_t vm_state_size, bool replace, vd_error **errp)
{
    vd_action a = {
        .kind = VD_ACTION_SNAPSHOT_INTERNAL,
        .disk = d,
        .name = name,
        .replace = replace,
        .vm_state = vm_state,
        .vm_state_size = vm_state_size,
    };
    return vd_transaction(&a, 1, errp);
}

int vd_snapshot_delete(vd_disk *d, const char *id, const char *name, vd_error **errp)
{
    vd_action a = {
        .kind = VD_ACTION_SNAPSHOT_DELETE_INTERNAL,
        .disk = d,
        .id = id,
        .name = name,
    };
    return vd_transaction(&a, 1, errp);
}

int vd_snapshot_external(vd_disk *d, const char *overlay, const char *overlay_format,
                         vd_error **errp)
{
    vd_action a = {
        .kind = VD_ACTION_SNAPSHOT_EXTERNAL,
        .disk = d,
        .overlay = overlay,
        .overlay_format = overlay_format,
    };
    return vd_transaction(&a, 1, errp);
}

static int unsupported(vd_node *n, vd_error **errp)
{
    return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "%s: Block format '%s' does not "
                        "support internal snapshots", n->filename, n->drv->name);
}

/* Apply changes what every reader sees, so it runs drained, but it is one driver call:
 * nothing to prepare or undo. */
int vd_snapshot_apply(vd_disk *d, const char *id_or_name, vd_error **errp)
{
    if (!id_or_name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: no snapshot given to apply",
                            vd_disk_filename(d));
    }
    vd_disk *disks[1] = {d};
    vd_disks_drain_begin(disks, 1);
    vd_node *n = d->node;
    vd_error *err = NULL;
    int ret;
    if (!n->drv->snapshot_apply) {
        ret = unsupported(n, &err);
    } else {
        ret = vd_snap_need_writable(d, "apply a snapshot", &err);
        if (ret == 0) {
            ret = n->drv->snapshot_apply(n, id_or_name, &err);
        }
        if (ret < 0) {
            ret = vd_txn_name_error(n->filename, ret, &err);
        }
    }
    vd_disks_drain_end(disks, 1);
    if (ret < 0) {
        vd_error_propagate(errp, err);
    }
    return ret;
}

int vd_snapshot_list(vd_disk *d, vd_snapshot_info **out, size_t *nb, vd_error **errp)
{
    *out = NULL;
    *nb = 0;
    vd_disk_enter(d);
    vd_node *n = d->node;
    int ret = 0;
    if (n->drv->snapshot_list) {
        vd_error *err = NULL;
        ret = n->drv->snapshot_list(n, out, nb, &err);
        if (ret < 0) {
            ret = vd_txn_name_error(n->filename, ret, &err);
            *out = NULL;
            *nb = 0;
            vd_error_propagate(errp, err);
        }
    }
    vd_disk_leave(d);
    return ret;
}

void vd_snapshot_list_free(vd_snapshot_info *list, size_t nb)
{
    if (!list) {
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        free(list[i].id);
        free(list[i].name);
    }
    free(list);
}

/* VM state goes through the driver's own locking like guest data, so the handle is held
 * shared: a snapshot (exclusive) waits for it, other I/O does not. */
static int vmstate_rw(vd_disk *d, void *buf, uint64_t len, uint64_t pos, bool write,
                      vd_error **errp)
{
    if (len == 0) {
        return 0;
    }
    if (!buf) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: no buffer for %llu bytes of "
                            "VM state", vd_disk_filename(d), (unsigned long long)len);
    }
    vd_disk_enter(d);
    vd_node *n = d->node;
    vd_error *err = NULL;
    int ret;
    if (!n->drv->vmstate_rw) {
        ret = vd_error_set(&err, VD_ERR_UNSUPPORTED, ENOTSUP, "%s: Block format '%s' does not "
                           "support VM state", n->filename, n->drv->name);
    } else {
        ret = write ? vd_snap_need_writable(d, "save VM state", &err) : 0;
        if (ret == 0) {
            ret = n->drv->vmstate_rw(n, buf, len, pos, write, &err);
        }
        if (ret < 0) {
            ret = vd_txn_name_error(n->filename, ret, &err);
        }
    }
    vd_disk_leave(d);
    if (ret < 0) {
        vd_error_propagate(errp, err);
    }
    return ret;
}

int vd_vmstate_read(vd_disk *d, void *buf, uint64_t len, uint64_t pos, vd_error **errp)
{
    return vmstate_rw(d, buf, len, pos, false, errp);
}

int vd_vmstate_write(vd_disk *d, const void *buf, uint64_t len, uint64_t pos,
                     vd_error **errp)
{
    return vmstate_rw(d, (void *)buf, len, pos, true, errp);
}

/* ---- temporary load ------------------------------------------------------------------------ */

/* The node serves the snapshot from now on, so nothing may read it half-switched: the
 * handle is drained, as for apply. */
int vd_snapshot_load_tmp(vd_disk *d, const char *id, const char *name, vd_error **errp)
{
    vd_disk *disks[1] = {d};
    vd_disks_drain_begin(disks, 1);
    vd_node *n = d->node;
    vd_error *err = NULL;
    int ret;
    /* QEMU's order of checks, and its words. */
    if (!id && !name) {
        ret = vd_error_set(&err, VD_ERR_INVALID, EINVAL, "snapshot_id and name are both NULL");
    } else if (n->open_flags & VD_OPEN_RDWR) {
        /* The swapped table would be the one a write updates and a flush writes back. */
        ret = vd_error_set(&err, VD_ERR_INVALID, EINVAL, "Device is not readonly");
    } else if (!n->drv->snapshot_load_tmp) {
        /* A library handle has no device name; QEMU's tools print the empty one too. */
        ret = vd_error_set(&err, VD_ERR_UNSUPPORTED, ENOTSUP, "Block format '%s' used by "
                           "device '' does not support temporarily loading internal "
                           "snapshots", n->drv->name);
    } else {
        ret = n->drv->snapshot_load_tmp(n, id, name, &err);
    }
    if (ret < 0) {
        ret = vd_txn_name_error(n->filename, ret, &err);
    }
    vd_disks_drain_end(disks, 1);
    if (ret < 0) {
        vd_error_propagate(errp, err);
    }
    return ret;
}

int vd_snapshot_load_tmp_by_id_or_name(vd_disk *d, const char *id_or_name, vd_error **errp)
{
    vd_error *err = NULL;
    int ret = vd_snapshot_load_tmp(d, id_or_name, NULL, &err);
    if (ret == -ENOENT || ret == -EINVAL) {
        vd_error_free(err);
        err = NULL;
        ret = vd_snapshot_load_tmp(d, NULL, id_or_name, &err);
    }
    if (ret < 0) {
        vd_error_propagate(errp, err);
    }
    return ret;
}

/* ---- SNAPSHOT_PARAM -------------------------------------------------------------------- */

/* One "key=value" or "key" item of QEMU's option syntax at p. A key ends at '=' or ','; a
 * value at a single ',' (",," stands for one). A bare key is a flag: "key" is key=on and
 * "nokey" key=off. Returns where the next item starts; *flag tells a bare key. */
static const char *param_item(const char *p, char **key, char **value, bool *flag)
{
    size_t len = strcspn(p, "=,");
    *key = strndup(p, len);
    if (!*key) {
        abort();
    }
    p += len;
    *flag = *p != '=';
    if (*flag) {
        bool no = strncmp(*key, "no", 2) == 0;
        if (no) {
            memmove(*key, *key + 2, strlen(*key + 2) + 1);
        }
        *value = strdup(no ? "off" : "on");
    } else {
        p++;
        size_t cap = strlen(p) + 1, n = 0;
        *value = malloc(cap);
        if (*value) {
            while (*p && !(p[0] == ',' && p[1] != ',')) {
                if (p[0] == ',') {
                    p++;   /* ",," */
                }
                (*value)[n++] = *p++;
            }
            (*value)[n] = '\0';
        }
    }
    if (!*value) {
        abort();
    }
    return *p == ',' ? p + 1 : p;
}

int vd_snapshot_param_parse(const char *param, char **id, char **name,
                            void (*warn)(const char *msg, void *opaque), void *opaque,
                            vd_error **errp)
{
    *id = NULL;
    *name = NULL;
    char *key, *value;
    bool flag;
    /* QEMU looks for the options group's own "id=" first (quietly), and checks it. */
    for (const char *p = param; *p;) {
        p = param_item(p, &key, &value, &flag);
        bool is_id = strcmp(key, "id") == 0;
        bool ok = !is_id || vd_id_wellformed(value);
        free(key);
        free(value);
        if (!ok) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'id' expects an "
                                "identifier\nIdentifiers consist of letters, digits, '-', "
                                "'.', '_', starting with a letter.");
        }
        if (is_id) {
            break;
        }
    }
    for (const char *p = param; *p;) {
        p = param_item(p, &key, &value, &flag);
        if (flag && warn) {
            char *msg = NULL;
            bool off = strcmp(value, "off") == 0;
            if (asprintf(&msg, "short-form boolean option '%s%s' deprecated\nPlease use "
                         "%s=%s instead", off ? "no" : "", key, key, value) < 0) {
                abort();
            }
            warn(msg, opaque);
            free(msg);
        }
        char **slot = strcmp(key, "snapshot.id") == 0     ? id
                      : strcmp(key, "snapshot.name") == 0 ? name
                                                          : NULL;
        if (slot) {
            free(*slot);
            *slot = value;
        } else {
            free(value);
        }
        if (!slot && strcmp(key, "id") != 0) {
            int ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'",
                                   key);
            free(key);
            free(*id);
            free(*name);
            *id = *name = NULL;
            return ret;
        }
        free(key);
    }
    return 0;
}
