/* vdiskd's commands that change a disk's history: block-commit (merge layers into a lower
 * one) and block-stream (pull lower layers up into the top). The jobs are the library's
 * (vdisk/job.h); their verbs, queries and events are the other jobs'. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "daemon/daemon.h"
#include "vdisk/job.h"

static int common_args(json_object *args, int64_t *speed, vd_job_on_error *on_error,
                       bool *af, bool *ad, vd_error **errp)
{
    json_object *v = NULL;
    *speed = json_object_object_get_ex(args, "speed", &v) ? json_object_get_int64(v) : 0;
    const char *oe = opt_str(args, "on-error");
    *on_error = VD_JOB_ON_ERROR_REPORT;
    if (oe && vd_job_on_error_parse(oe, on_error) < 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'on-error' does not "
                            "accept value '%s'", oe);
    }
    int r;
    if ((r = opt_bool(args, "auto-finalize", true, af, errp)) < 0 ||
        (r = opt_bool(args, "auto-dismiss", true, ad, errp)) < 0) {
        return r;
    }
    /* vdisk puts no filter node in the chain; a name given for one is checked as QEMU
     * checks it and otherwise ignored. */
    return job_filter_name_check(args, errp);
}

static int cmd_block_commit(qmp_session *qs, json_object *args, json_object **ret,
                            vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_commit_opts o = {
        .job_id = opt_str(args, "job-id"), .device = opt_str(args, "device"),
        .base_node = opt_str(args, "base-node"), .base = opt_str(args, "base"),
        .top_node = opt_str(args, "top-node"), .top = opt_str(args, "top"),
        .backing_file = opt_str(args, "backing-file"),
    };
    int r = common_args(args, &o.speed, &o.on_error, &o.auto_finalize, &o.auto_dismiss, errp);
    if (r < 0) {
        return r;
    }
    if (!vd_blockdev_exists(vdiskd.engine, o.device)) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "DeviceNotFound: Device '%s' not "
                            "found", o.device);
    }
    return vd_commit_start(vdiskd.engine, &o, errp);
}

static int cmd_block_stream(qmp_session *qs, json_object *args, json_object **ret,
                            vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_stream_opts o = {
        .job_id = opt_str(args, "job-id"), .device = opt_str(args, "device"),
        .base_node = opt_str(args, "base-node"), .base = opt_str(args, "base"),
        .bottom = opt_str(args, "bottom"), .backing_file = opt_str(args, "backing-file"),
    };
    int r = common_args(args, &o.speed, &o.on_error, &o.auto_finalize, &o.auto_dismiss, errp);
    if (r < 0) {
        return r;
    }
    return vd_stream_start(vdiskd.engine, &o, errp);
}

#define COMMON_ARGS                                                                          \
    {"job-id", QMP_STR, true, "the job's id (required here: nodes have no device name)"},  \
    {"device", QMP_STR, false, "the active layer (a node name)"},                         \
    {"base-node", QMP_STR, true, "the base, by node name"},                               \
    {"base", QMP_STR, true, "the base, by file name (deprecated)"},                       \
    {"backing-file", QMP_STR, true, "the backing name to store (default: base's file)"},  \
    {"speed", QMP_INT, true, "bytes per second, 0: unlimited"},                           \
    {"on-error", QMP_STR, true, "report, ignore, stop, enospc"},                          \
    {"filter-node-name", QMP_STR, true, "checked as QEMU does (vdisk inserts no filter node)"}, \
    {"auto-finalize", QMP_BOOL, true, "default true"},                                    \
    {"auto-dismiss", QMP_BOOL, true, "default true"}

static const qmp_arg commit_args[] = {
    COMMON_ARGS,
    {"top-node", QMP_STR, true, "the top layer committed, by node name (default: active)"},
    {"top", QMP_STR, true, "the top layer committed, by file name (deprecated)"},
    {NULL, 0, false, NULL}};
static const qmp_arg stream_args[] = {
    COMMON_ARGS,
    {"bottom", QMP_STR, true, "the lowest layer streamed (instead of a base)"},
    {NULL, 0, false, NULL}};

static const qmp_command history_commands[] = {
    {"block-commit", cmd_block_commit, commit_args, false,
     "commit job: merges layers into a lower one (active: a mirror into base, then pivot)"},
    {"block-stream", cmd_block_stream, stream_args, false,
     "stream job: copies backing layers into the top, then drops them from its chain"},
};
const qmp_command_table history_command_table = {
    history_commands, sizeof(history_commands) / sizeof(history_commands[0]),
    &change_command_table, NULL,    NULL,
};
