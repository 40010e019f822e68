/* vdiskd's backup commands: blockdev-backup and drive-backup, on their own and as actions
 * of a transaction (QEMU runs each as a transaction of one, and so does vdiskd: the job's
 * point in time is taken with the source's writers held back). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"

/* The arguments the two commands share, into o (strings point into args). */
static int backup_opts(json_object *args, vd_backup_opts *o, vd_error **errp)
{
    static const char *const syncs[] = {"full", "top", "none", "bitmap", "incremental",
                                        NULL};
    static const char *const modes[] = {"on-success", "never", "always", NULL};
    int sync, mode, r;
    memset(o, 0, sizeof(*o));
    o->job_id = opt_str(args, "job-id");
    o->device = opt_str(args, "device");
    o->bitmap = opt_str(args, "bitmap");
    o->filter_node_name = opt_str(args, "filter-node-name");
    o->has_bitmap_mode = opt_str(args, "bitmap-mode") != NULL;
    if ((r = job_enum_arg(args, "sync", syncs, 0, &sync, errp)) < 0 ||
        (r = job_enum_arg(args, "bitmap-mode", modes, 0, &mode, errp)) < 0 ||
        (r = job_on_error_arg(args, "on-source-error", &o->on_source_error, errp)) < 0 ||
        (r = job_on_error_arg(args, "on-target-error", &o->on_target_error, errp)) < 0 ||
        (r = opt_bool(args, "auto-finalize", true, &o->auto_finalize, errp)) < 0 ||
        (r = opt_bool(args, "auto-dismiss", true, &o->auto_dismiss, errp)) < 0 ||
        (r = opt_bool(args, "compress", false, &o->compress, errp)) < 0) {
        return r;
    }
    o->bitmap_mode = (vd_bitmap_sync_mode)mode;
    if ((sync == 3 || sync == 4) && !o->bitmap) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "must provide a valid bitmap name "
                            "for '%s' sync mode", syncs[sync]);
    }
    if (sync == 4) {
        /* incremental is bitmap with on-success, and only that. */
        if (o->has_bitmap_mode && o->bitmap_mode != VD_BITMAP_SYNC_ON_SUCCESS) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap sync mode must be "
                                "'on-success' when using sync mode 'incremental'");
        }
        o->has_bitmap_mode = true;
        o->bitmap_mode = VD_BITMAP_SYNC_ON_SUCCESS;
        sync = 3;
    }
    o->sync = (vd_backup_sync)sync;
    o->speed = job_int_arg(args, "speed", 0);
    json_object *perf = NULL;
    if (json_object_object_get_ex(args, "x-perf", &perf)) {
        if (!json_object_is_type(perf, json_type_object)) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                                "'x-perf', expected: object");
        }
        o->max_workers = job_int_arg(perf, "max-workers", 0);
        o->max_chunk = job_int_arg(perf, "max-chunk", 0);
        if (json_object_object_get_ex(perf, "max-workers", NULL) && o->max_workers < 1) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "max-workers must be between "
                                "1 and %d", INT32_MAX);
        }
    }
    return job_filter_name_check(args, errp);
}

/* drive-backup: the target file is created unless mode=existing (with the source's
 * backing for sync=top, the source itself for sync=none, as QEMU makes it) and opened as
 * a node the job deletes at its end. */
static int drive_target(json_object *args, vd_backup_opts *o, char *node_name, size_t len,
                        vd_error **errp)
{
    const char *path = opt_str(args, "target");
    const char *fmt = opt_str(args, "format");
    const char *mode = opt_str(args, "mode");
    if (mode && strcmp(mode, "existing") && strcmp(mode, "absolute-paths")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'mode' does not accept "
                            "value '%s'", mode);
    }
    if (!o->job_id || !*o->job_id) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid job ID ''");
    }
    dhandle *h = NULL;
    int r = node_handle(o->device, &h, errp);
    if (r < 0) {
        return r;
    }
    if (!fmt) {
        fmt = vd_disk_format(h->disk);
    }
    if (!mode || !strcmp(mode, "absolute-paths")) {
        vd_opts *co = vd_opts_new();
        vd_image_info info;
        vd_error *err = NULL;
        memset(&info, 0, sizeof(info));
        if (o->sync == VD_BACKUP_SYNC_NONE) {
            vd_opts_set(co, "backing_file", vd_disk_filename(h->disk));
            vd_opts_set(co, "backing_fmt", vd_disk_format(h->disk));
        } else if (o->sync == VD_BACKUP_SYNC_TOP) {
            if (vd_get_info(h->disk, &info, &err) == 0 && info.full_backing_filename) {
                vd_opts_set(co, "backing_file", info.full_backing_filename);
                if (info.backing_format) {
                    vd_opts_set(co, "backing_fmt", info.backing_format);
                }
            } else {
                o->sync = VD_BACKUP_SYNC_FULL;  /* nothing under the top: QEMU's full */
            }
        }
        vd_error_free(err);
        err = NULL;
        r = vd_create(vdiskd.engine, path, fmt, vd_disk_size(h->disk), co, 0, &err);
        vd_image_info_clear(&info);
        vd_opts_free(co);
        if (r < 0) {
            vd_error_free(err);
            return vd_error_set(errp, VD_ERR_IO, -r, "Could not create '%s': %s", path,
                                strerror(-r));
        }
    }
    snprintf(node_name, len, "backup-target-%s", o->job_id);
    json_object *add = json_object_new_object();
    json_object_object_add(add, "driver", json_object_new_string(fmt));
    json_object_object_add(add, "node-name", json_object_new_string(node_name));
    json_object *file = json_object_new_object();
    json_object_object_add(file, "driver", json_object_new_string("file"));
    json_object_object_add(file, "filename", json_object_new_string(path));
    json_object_object_add(add, "file", file);
    r = blockdev_add(add, errp);
    json_object_put(add);
    if (r < 0) {
        return r;
    }
    o->target = node_name;
    o->own_target = node_name;
    return 0;
}

/* ---- as transaction actions ------------------------------------------------------------ */

typedef struct backup_action_state {
    vd_backup_opts opts;
    char target_node[160];
} backup_action_state;

bool backup_action_type(const char *type)
{
    return !strcmp(type, "blockdev-backup") || !strcmp(type, "drive-backup");
}

int backup_action(const char *type, json_object *data, vd_action *a, vd_error **errp)
{
    backup_action_state *st = calloc(1, sizeof(*st));
    if (!st) {
        abort();
    }
    a->kind = VD_ACTION_BACKUP;
    a->engine = vdiskd.engine;
    a->backup = &st->opts;
    int r = backup_opts(data, &st->opts, errp);
    if (r < 0) {
        return r;
    }
    if (!strcmp(type, "drive-backup")) {
        r = drive_target(data, &st->opts, st->target_node, sizeof(st->target_node), errp);
    } else {
        st->opts.target = opt_str(data, "target");
    }
    if (r == 0) {
        /* The daemon's handle on the source carries its writers (its exports): held back
         * for the transaction with the others. */
        dhandle *h = handle_of(st->opts.device ? st->opts.device : "");
        a->disk = h ? h->disk : NULL;
    }
    return r;
}

void backup_action_free(vd_action *a)
{
    if (a->kind == VD_ACTION_BACKUP) {
        free((backup_action_state *)(void *)a->backup);
        a->backup = NULL;
    }
}

/* ---- the commands ------------------------------------------------------------------------ */

static int run_one(const char *type, json_object *args, vd_error **errp)
{
    vd_action a;
    memset(&a, 0, sizeof(a));
    int r = backup_action(type, args, &a, errp);
    if (r == 0) {
        r = vd_transaction(&a, 1, errp);
    }
    if (r < 0 && a.backup && a.backup->own_target) {
        blockdev_del(a.backup->own_target, NULL);
    }
    backup_action_free(&a);
    return r;
}

static int cmd_blockdev_backup(qmp_session *qs, json_object *args, json_object **ret,
                               vd_error **errp)
{
    (void)qs;
    (void)ret;
    return run_one("blockdev-backup", args, errp);
}

static int cmd_drive_backup(qmp_session *qs, json_object *args, json_object **ret,
                            vd_error **errp)
{
    (void)qs;
    (void)ret;
    return run_one("drive-backup", args, errp);
}

#define BACKUP_ARGS                                                                          \
    {"job-id", QMP_STR, true, "the job's id (required by vdiskd's nodes)"},                 \
    {"device", QMP_STR, false, "the source node"},                                          \
    {"sync", QMP_STR, false, "full, top, none, bitmap or incremental"},                     \
    {"speed", QMP_INT, true, "bytes per second, 0: unlimited"},                             \
    {"bitmap", QMP_STR, true, "the source's dirty bitmap (sync=bitmap, or one to clear)"},  \
    {"bitmap-mode", QMP_STR, true, "on-success, always or never"},                          \
    {"compress", QMP_BOOL, true, "compressed clusters on the target"},                      \
    {"on-source-error", QMP_STR, true, "report, ignore, stop, enospc"},                     \
    {"on-target-error", QMP_STR, true, "report, ignore, stop, enospc"},                     \
    {"auto-finalize", QMP_BOOL, true, "default true"},                                      \
    {"auto-dismiss", QMP_BOOL, true, "default true"},                                       \
    {"filter-node-name", QMP_STR, true, "the copy-before-write filter's name"},             \
    {"x-perf", QMP_OBJ, true, "{max-workers, max-chunk, use-copy-range}"}

static const qmp_arg blockdev_backup_args[] = {
    BACKUP_ARGS,
    {"target", QMP_STR, false, "the target node (same size)"},
    {NULL, 0, false, NULL}};
static const qmp_arg drive_backup_args[] = {
    BACKUP_ARGS,
    {"target", QMP_STR, false, "the target file"},
    {"format", QMP_STR, true, "the target's format (default: the source's)"},
    {"mode", QMP_STR, true, "absolute-paths (create the file) or existing"},
    {NULL, 0, false, NULL}};

static const qmp_command backup_commands[] = {
    {"blockdev-backup", cmd_blockdev_backup, blockdev_backup_args, false,
     "backup job: a point-in-time copy of a node in use into another"},
    {"drive-backup", cmd_drive_backup, drive_backup_args, false,
     "backup job into a file it creates (or an existing one)"},
};
const qmp_command_table backup_command_table = {
    backup_commands, sizeof(backup_commands) / sizeof(backup_commands[0]),
    &history_command_table, NULL,    NULL,
};
