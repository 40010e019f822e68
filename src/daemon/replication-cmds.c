/* QEMU's block replication commands (the system emulator's, for Xen's COLO; qemu-storage-
 * daemon has none, so its replication nodes can never start): they act on every
 * replication node of the daemon (vdisk/replication.h). */
#include <errno.h>
#include <string.h>

#include "daemon/daemon.h"
#include "vdisk/replication.h"

static int cmd_xen_set_replication(qmp_session *qs, json_object *args, json_object **ret,
                                   vd_error **errp)
{
    (void)qs;
    (void)ret;
    bool enable = false, primary = false, failover = false;
    json_object *v = NULL;
    bool has_failover = json_object_object_get_ex(args, "failover", &v);
    int r;
    if ((r = opt_bool(args, "enable", false, &enable, errp)) < 0 ||
        (r = opt_bool(args, "primary", false, &primary, errp)) < 0 ||
        (r = opt_bool(args, "failover", false, &failover, errp)) < 0) {
        return r;
    }
    if (enable && has_failover) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Parameter 'failover' is only for "
                            "stopping replication");
    }
    if (enable) {
        return vd_replication_start_all(vdiskd.engine, primary ? VD_REPLICATION_PRIMARY
                                                               : VD_REPLICATION_SECONDARY,
                                        errp);
    }
    /* QEMU's drops the error of a stop with failover; the caller is told here. The reply
     * comes once a failover's commit is done (I/O goes on meanwhile). */
    return vd_replication_stop_all(vdiskd.engine, failover, errp);
}

static int cmd_xen_colo_do_checkpoint(qmp_session *qs, json_object *args, json_object **ret,
                                      vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)ret;
    return vd_replication_do_checkpoint_all(vdiskd.engine, errp);
}

static int cmd_query_xen_replication_status(qmp_session *qs, json_object *args,
                                            json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    vd_error *err = NULL;
    json_object *o = json_object_new_object();
    bool failed = vd_replication_get_error_all(vdiskd.engine, &err) < 0;
    json_object_object_add(o, "error", json_object_new_boolean(failed));
    if (failed) {
        json_object_object_add(o, "desc", json_object_new_string(vd_error_msg(err)));
        vd_error_free(err);
    }
    *ret = o;
    return 0;
}

static const qmp_arg set_args[] = {
    {"enable", QMP_BOOL, false, "true: start, false: stop"},
    {"primary", QMP_BOOL, false, "the mode nodes start in (true: primary)"},
    {"failover", QMP_BOOL, true, "stopping a secondary: commit its buffers and serve alone"},
    {NULL, 0, false, NULL}};

static const qmp_command replication_commands[] = {
    {"xen-set-replication", cmd_xen_set_replication, set_args, false,
     "starts or stops block replication on every replication node; failover: a secondary commits its buffers and serves alone"},
    {"xen-colo-do-checkpoint", cmd_xen_colo_do_checkpoint, NULL, false,
     "a replication checkpoint: secondary nodes empty their active and hidden disks"},
    {"query-xen-replication-status", cmd_query_xen_replication_status, NULL, false,
     "replication errors: {error, desc}"},
};
const qmp_command_table replication_command_table = {
    replication_commands, sizeof(replication_commands) / sizeof(replication_commands[0]),
    &migration_command_table, NULL,    NULL,
};
