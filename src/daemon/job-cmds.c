/* vdiskd's block job commands: blockdev-mirror and drive-mirror start a mirror; job-* and
 * the legacy block-job-* verbs drive jobs; query-jobs and query-block-jobs list them.
 * Jobs live in the engine (vdisk/job.h); their events reach QMP through events.c. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "daemon/daemon.h"
#include "vdisk/job.h"

int64_t job_int_arg(json_object *args, const char *key, int64_t def)
{
    json_object *v = NULL;
    return json_object_object_get_ex(args, key, &v) ? json_object_get_int64(v) : def;
}

int job_enum_arg(json_object *args, const char *key, const char *const *names, int def,
                 int *out, vd_error **errp)
{
    const char *s = opt_str(args, key);
    *out = def;
    if (!s) {
        return 0;
    }
    for (int i = 0; names[i]; i++) {
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    }
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' does not accept value "
                        "'%s'", key, s);
}

int job_on_error_arg(json_object *args, const char *key, vd_job_on_error *out,
                     vd_error **errp)
{
    static const char *const names[] = {"report", "ignore", "enospc", "stop", "auto", NULL};
    int v;
    int r = job_enum_arg(args, key, names, VD_JOB_ON_ERROR_REPORT, &v, errp);
    *out = (vd_job_on_error)v;
    return r;
}

/* The arguments blockdev-mirror and drive-mirror share. */
static int mirror_opts(json_object *args, vd_mirror_opts *o, vd_error **errp)
{
    static const char *const syncs[] = {"top", "full", "none", "incremental", "bitmap", NULL};
    static const char *const modes[] = {"background", "write-blocking", NULL};
    int sync, mode, r;
    memset(o, 0, sizeof(*o));
    o->job_id = opt_str(args, "job-id");
    o->device = opt_str(args, "device");
    o->replaces = opt_str(args, "replaces");
    if ((r = job_enum_arg(args, "sync", syncs, 1, &sync, errp)) < 0 ||
        (r = job_enum_arg(args, "copy-mode", modes, 0, &mode, errp)) < 0 ||
        (r = job_on_error_arg(args, "on-source-error", &o->on_source_error, errp)) < 0 ||
        (r = job_on_error_arg(args, "on-target-error", &o->on_target_error, errp)) < 0 ||
        (r = opt_bool(args, "auto-finalize", true, &o->auto_finalize, errp)) < 0 ||
        (r = opt_bool(args, "auto-dismiss", true, &o->auto_dismiss, errp)) < 0 ||
        (r = opt_bool(args, "unmap", true, &o->unmap, errp)) < 0) {
        return r;
    }
    if (sync == 3 || sync == 4) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Sync mode '%s' not supported",
                            syncs[sync]);
    }
    o->sync = sync == 0 ? VD_MIRROR_SYNC_TOP : sync == 1 ? VD_MIRROR_SYNC_FULL
                                                         : VD_MIRROR_SYNC_NONE;
    o->write_blocking = mode == 1;
    int64_t speed = job_int_arg(args, "speed", 0);
    int64_t gran = job_int_arg(args, "granularity", 0);
    int64_t buf = job_int_arg(args, "buf-size", 0);
    if (gran < 0 || gran > UINT32_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'granularity' expects "
                            "uint32_t");
    }
    if (buf < 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter 'buf-size'");
    }
    /* A negative speed is refused by the job itself, as QEMU's is (after it was made). */
    o->speed = speed;
    o->granularity = (uint64_t)gran;
    o->buf_size = (uint64_t)buf;
    return 0;
}

/* vdisk puts no filter node over the source, but a name given for one is checked as QEMU
 * checks it, so a script that passes a bad one learns it here too. */
int job_filter_name_check(json_object *args, vd_error **errp)
{
    const char *f = opt_str(args, "filter-node-name");
    if (!f) {
        return 0;
    }
    if (!vd_id_wellformed(f)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid node-name: '%s'", f);
    }
    if (vd_blockdev_exists(vdiskd.engine, f)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Duplicate nodes with "
                            "node-name='%s'", f);
    }
    return 0;
}

static int cmd_blockdev_mirror(qmp_session *qs, json_object *args, json_object **ret,
                               vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_mirror_opts o;
    int r = mirror_opts(args, &o, errp);
    if (r < 0 || (r = job_filter_name_check(args, errp)) < 0) {
        return r;
    }
    o.target = opt_str(args, "target");
    return vd_mirror_start(vdiskd.engine, &o, errp);
}

/* drive-mirror: the target is a file, created here unless mode=existing, and opened as a
 * node of its own (named node-name, or "#mirror-target" + the job id). */
static int cmd_drive_mirror(qmp_session *qs, json_object *args, json_object **ret,
                            vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_mirror_opts o;
    int r = mirror_opts(args, &o, errp);
    if (r < 0) {
        return r;
    }
    const char *path = opt_str(args, "target");
    const char *fmt = opt_str(args, "format");
    const char *mode = opt_str(args, "mode");
    const char *node_name = opt_str(args, "node-name");
    if (mode && strcmp(mode, "existing") && strcmp(mode, "absolute-paths")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'mode' does not accept "
                            "value '%s'", mode);
    }
    /* Before any file is made: a refused job must not have emptied its target. */
    if (!o.job_id || !*o.job_id) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid job ID ''");
    }
    dhandle *h = NULL;
    if ((r = node_handle(o.device, &h, errp)) < 0) {
        return r;
    }
    uint64_t size = vd_disk_size(h->disk);
    if (!fmt) {
        fmt = vd_disk_format(h->disk);
    }
    if (!mode || !strcmp(mode, "absolute-paths")) {
        vd_error *err = NULL;
        if ((r = vd_create(vdiskd.engine, path, fmt, size, NULL, 0, &err)) < 0) {
            vd_error_free(err);
            return vd_error_set(errp, VD_ERR_IO, -r, "Could not create '%s': %s", path,
                                strerror(-r));
        }
        o.target_is_zero = true;
    }
    char auto_name[160];
    if (!node_name) {
        snprintf(auto_name, sizeof(auto_name), "mirror-target-%s", o.job_id);
        node_name = auto_name;
    }
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
    o.target = node_name;
    r = vd_mirror_start(vdiskd.engine, &o, errp);
    if (r < 0) {
        blockdev_del(node_name, NULL);
    }
    return r;
}

/* ---- verbs ---------------------------------------------------------------------------- */

/* The legacy block-job-* commands name the job `device` and report an unknown one as
 * DeviceNotActive. */
static int legacy_check(const char *id, vd_error **errp)
{
    if (!vd_job_exists(vdiskd.engine, id)) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "DeviceNotActive: Block job "
                            "'%s' not found", id);
    }
    return 0;
}

#define JOB_VERB(fn, call)                                                                 \
    static int fn(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp) \
    {                                                                                      \
        (void)qs;                                                                          \
        (void)ret;                                                                         \
        const char *id = opt_str(args, "id");                                              \
        return call;                                                                       \
    }

JOB_VERB(cmd_job_pause, vd_job_pause(vdiskd.engine, id, errp))
JOB_VERB(cmd_job_resume, vd_job_resume(vdiskd.engine, id, errp))
JOB_VERB(cmd_job_cancel, vd_job_cancel(vdiskd.engine, id, true, errp))
JOB_VERB(cmd_job_complete, vd_job_complete(vdiskd.engine, id, errp))
JOB_VERB(cmd_job_finalize, vd_job_finalize(vdiskd.engine, id, errp))
JOB_VERB(cmd_job_dismiss, vd_job_dismiss(vdiskd.engine, id, errp))

#define BLOCK_JOB_VERB(fn, key, call)                                                      \
    static int fn(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp) \
    {                                                                                      \
        (void)qs;                                                                          \
        (void)ret;                                                                         \
        const char *id = opt_str(args, key);                                               \
        int r = legacy_check(id, errp);                                                    \
        return r < 0 ? r : call;                                                           \
    }

BLOCK_JOB_VERB(cmd_block_job_pause, "device", vd_job_pause(vdiskd.engine, id, errp))
BLOCK_JOB_VERB(cmd_block_job_resume, "device", vd_job_resume(vdiskd.engine, id, errp))
BLOCK_JOB_VERB(cmd_block_job_complete, "device", vd_job_complete(vdiskd.engine, id, errp))
BLOCK_JOB_VERB(cmd_block_job_finalize, "id", vd_job_finalize(vdiskd.engine, id, errp))
BLOCK_JOB_VERB(cmd_block_job_dismiss, "id", vd_job_dismiss(vdiskd.engine, id, errp))

static int cmd_block_job_cancel(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)ret;
    const char *id = opt_str(args, "device");
    bool force;
    int r = legacy_check(id, errp);
    if (r < 0 || (r = opt_bool(args, "force", false, &force, errp)) < 0) {
        return r;
    }
    return vd_job_cancel(vdiskd.engine, id, force, errp);
}

static int cmd_block_job_set_speed(qmp_session *qs, json_object *args, json_object **ret,
                                   vd_error **errp)
{
    (void)qs;
    (void)ret;
    const char *id = opt_str(args, "device");
    int r = legacy_check(id, errp);
    return r < 0 ? r : vd_job_set_speed(vdiskd.engine, id, job_int_arg(args, "speed", 0), errp);
}

/* ---- queries ---------------------------------------------------------------------------- */

static int cmd_query_jobs(qmp_session *qs, json_object *args, json_object **ret,
                          vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    vd_job_info *list = NULL;
    size_t nb = 0;
    vd_job_list(vdiskd.engine, &list, &nb);
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < nb; i++) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, "current-progress",
                               json_object_new_int64((int64_t)list[i].current_progress));
        json_object_object_add(j, "status",
                               json_object_new_string(vd_job_status_name(list[i].status)));
        json_object_object_add(j, "total-progress",
                               json_object_new_int64((int64_t)list[i].total_progress));
        json_object_object_add(j, "type", json_object_new_string(list[i].type));
        json_object_object_add(j, "id", json_object_new_string(list[i].id));
        if (list[i].error) {
            json_object_object_add(j, "error", json_object_new_string(list[i].error));
        }
        json_object_array_add(arr, j);
    }
    vd_job_list_free(list, nb);
    *ret = arr;
    return 0;
}

static int cmd_query_block_jobs(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    vd_job_info *list = NULL;
    size_t nb = 0;
    vd_job_list(vdiskd.engine, &list, &nb);
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < nb; i++) {
        vd_job_info *x = &list[i];
        json_object *j = json_object_new_object();
        json_object_object_add(j, "auto-finalize", json_object_new_boolean(x->auto_finalize));
        json_object_object_add(j, "io-status", json_object_new_string(x->io_status));
        json_object_object_add(j, "device", json_object_new_string(x->id));
        json_object_object_add(j, "auto-dismiss", json_object_new_boolean(x->auto_dismiss));
        json_object_object_add(j, "busy", json_object_new_boolean(x->busy));
        json_object_object_add(j, "len", json_object_new_int64((int64_t)x->total_progress));
        json_object_object_add(j, "offset",
                               json_object_new_int64((int64_t)x->current_progress));
        json_object_object_add(j, "status",
                               json_object_new_string(vd_job_status_name(x->status)));
        json_object_object_add(j, "paused", json_object_new_boolean(x->paused));
        json_object_object_add(j, "speed", json_object_new_int64((int64_t)x->speed));
        json_object_object_add(j, "ready", json_object_new_boolean(x->ready));
        json_object_object_add(j, "type", json_object_new_string(x->type));
        if (x->error) {
            json_object_object_add(j, "error", json_object_new_string(x->error));
        }
        json_object_array_add(arr, j);
    }
    vd_job_list_free(list, nb);
    *ret = arr;
    return 0;
}

/* ---- the table's part -------------------------------------------------------------------- */

#define MIRROR_ARGS                                                                          \
    {"job-id", QMP_STR, true, "the job's id (required here: nodes have no device name)"},  \
    {"device", QMP_STR, false, "the source node"},                                        \
    {"sync", QMP_STR, false, "full, top or none"},                                        \
    {"replaces", QMP_STR, true, "the node whose users move to the target"},               \
    {"speed", QMP_INT, true, "bytes per second, 0: unlimited"},                           \
    {"granularity", QMP_INT, true, "bytes a dirty bit covers (512 B - 64 MiB)"},          \
    {"buf-size", QMP_INT, true, "bytes of copies in flight (default 16 MiB)"},            \
    {"on-source-error", QMP_STR, true, "report, ignore, stop, enospc"},                   \
    {"on-target-error", QMP_STR, true, "report, ignore, stop, enospc"},                   \
    {"copy-mode", QMP_STR, true, "background or write-blocking"},                         \
    {"auto-finalize", QMP_BOOL, true, "default true"},                                    \
    {"auto-dismiss", QMP_BOOL, true, "default true"},                                     \
    {"filter-node-name", QMP_STR, true, "checked as QEMU does (vdisk inserts no filter node)"}

static const qmp_arg blockdev_mirror_args[] = {
    MIRROR_ARGS,
    {"target", QMP_STR, false, "the target node (same size)"},
    {NULL, 0, false, NULL}};
static const qmp_arg drive_mirror_args[] = {
    MIRROR_ARGS,
    {"target", QMP_STR, false, "the target file"},
    {"format", QMP_STR, true, "the target's format (default: the source's)"},
    {"node-name", QMP_STR, true, "the target node's name"},
    {"mode", QMP_STR, true, "absolute-paths (create the file) or existing"},
    {"unmap", QMP_BOOL, true, "zeros may be unmapped on the target (default true)"},
    {NULL, 0, false, NULL}};
static const qmp_arg id_args[] = {
    {"id", QMP_STR, false, "the job"},
    {NULL, 0, false, NULL}};
static const qmp_arg device_args[] = {
    {"device", QMP_STR, false, "the job"},
    {NULL, 0, false, NULL}};
static const qmp_arg cancel_args[] = {
    {"device", QMP_STR, false, "the job"},
    {"force", QMP_BOOL, true, "false: a ready mirror ends without its pivot"},
    {NULL, 0, false, NULL}};
static const qmp_arg speed_args[] = {
    {"device", QMP_STR, false, "the job"},
    {"speed", QMP_INT, false, "bytes per second, 0: unlimited"},
    {NULL, 0, false, NULL}};
static const qmp_arg none_args[] = {{NULL, 0, false, NULL}};

static const qmp_command job_commands[] = {
    {"blockdev-mirror", cmd_blockdev_mirror, blockdev_mirror_args, false,
     "mirror job: copies a node to another while in use; job-complete moves its users"},
    {"drive-mirror", cmd_drive_mirror, drive_mirror_args, false,
     "mirror job to a file it creates (or an existing one)"},
    {"job-pause", cmd_job_pause, id_args, false, "pauses a job"},
    {"job-resume", cmd_job_resume, id_args, false, "resumes it"},
    {"job-cancel", cmd_job_cancel, id_args, false, "cancels it (always outright)"},
    {"job-complete", cmd_job_complete, id_args, false, "completes a ready job (the pivot)"},
    {"job-finalize", cmd_job_finalize, id_args, false, "finalizes a pending job"},
    {"job-dismiss", cmd_job_dismiss, id_args, false, "removes a concluded job"},
    {"block-job-pause", cmd_block_job_pause, device_args, false, "job-pause"},
    {"block-job-resume", cmd_block_job_resume, device_args, false, "job-resume"},
    {"block-job-cancel", cmd_block_job_cancel, cancel_args, false,
     "cancels; without force a ready mirror ends without its pivot"},
    {"block-job-complete", cmd_block_job_complete, device_args, false, "job-complete"},
    {"block-job-finalize", cmd_block_job_finalize, id_args, false, "job-finalize"},
    {"block-job-dismiss", cmd_block_job_dismiss, id_args, false, "job-dismiss"},
    {"block-job-set-speed", cmd_block_job_set_speed, speed_args, false,
     "changes a job's speed limit"},
    {"query-jobs", cmd_query_jobs, none_args, false, "every job"},
    {"query-block-jobs", cmd_query_block_jobs, none_args, false,
     "every block job (QEMU's BlockJobInfo)"},
};
const qmp_command_table job_command_table = {
    job_commands, sizeof(job_commands) / sizeof(job_commands[0]), &backup_command_table, NULL,    NULL,
};
