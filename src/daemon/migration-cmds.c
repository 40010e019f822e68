/* QEMU's migration commands for disks (vdisk/migration.h): migrate moves every exported
 * node to a vdiskd started with --incoming (or told migrate-incoming), which has nodes of
 * the same names and sizes; at the end the destination exports them under the same names
 * and this daemon removes its exports. Parameters, capabilities, statuses, statistics and
 * events have QEMU's names. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "util/common.h"
#include "vdisk/graph.h"
#include "vdisk/migration.h"

static int tree_of(json_object *o, vd_tree **out, vd_error **errp)
{
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    return vd_tree_parse_json(text, strlen(text), out, errp);
}

static json_object *json_of(const vd_tree *t)
{
    char *s = vd_tree_to_json(t);
    json_object *o = json_tokener_parse(s);
    free(s);
    return o;
}

static bool out_active(void)
{
    return vdiskd.mig_out && !vd_migration_finished(vdiskd.mig_out);
}

static bool in_active(void)
{
    return vdiskd.mig_in && !vd_mig_incoming_finished(vdiskd.mig_in);
}

static int in_progress(vd_error **errp)
{
    return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "There's a migration process in "
                        "progress");
}

int migration_before_command(const char *name, vd_error **errp)
{
    static const char *const blocked[] = {
        "blockdev-snapshot", "blockdev-snapshot-sync", "transaction", "blockdev-mirror",
        "drive-mirror", "block-commit", "block-stream", "x-blockdev-change", "block_resize",
        "blockdev-reopen", "xen-set-replication", NULL,
    };
    if (!out_active()) {
        return 0;
    }
    for (size_t i = 0; blocked[i]; i++) {
        if (!strcmp(name, blocked[i])) {
            return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Command '%s' is not allowed "
                                "while a migration is in progress", name);
        }
    }
    return 0;
}

/* ---- parameters and capabilities ----------------------------------------------------- */

static int cmd_migrate_set_parameters(qmp_session *qs, json_object *args, json_object **ret,
                                      vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_tree *t = NULL;
    int r = tree_of(args, &t, errp);
    if (r == 0) {
        r = vd_mig_params_set(&vdiskd.mig_params, t, errp);
    }
    vd_tree_free(t);
    return r;
}

static int cmd_query_migrate_parameters(qmp_session *qs, json_object *args, json_object **ret,
                                        vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    vd_tree *t = vd_mig_params_query(&vdiskd.mig_params);
    *ret = json_of(t);
    vd_tree_free(t);
    return 0;
}

static int cmd_migrate_set_capabilities(qmp_session *qs, json_object *args, json_object **ret,
                                        vd_error **errp)
{
    (void)qs;
    (void)ret;
    if (out_active() || in_active()) {
        return in_progress(errp);
    }
    json_object *list = NULL;
    json_object_object_get_ex(args, "capabilities", &list);
    vd_tree *t = NULL;
    int r = tree_of(list, &t, errp);
    if (r == 0) {
        r = vd_mig_caps_set(&vdiskd.mig_caps, t, errp);
    }
    vd_tree_free(t);
    return r;
}

static int cmd_query_migrate_capabilities(qmp_session *qs, json_object *args,
                                          json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    vd_tree *t = vd_mig_caps_query(&vdiskd.mig_caps);
    *ret = json_of(t);
    vd_tree_free(t);
    return 0;
}

/* ---- addresses ------------------------------------------------------------------------ */

/* The URI of `uri` or of QEMU's later `channels` ([{channel-type: main, addr: {transport:
 * socket, type: inet|unix, ...}}]); the caller frees it. */
static int uri_arg(json_object *args, char **out, vd_error **errp)
{
    json_object *uri = NULL, *channels = NULL;
    bool has_uri = json_object_object_get_ex(args, "uri", &uri);
    bool has_ch = json_object_object_get_ex(args, "channels", &channels);
    if (has_uri && has_ch) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "'uri' and 'channels' arguments "
                            "are mutually exclusive; exactly one of the two should be "
                            "present in 'migrate' qmp command ");
    }
    if (has_uri) {
        *out = vd_xstrdup(json_object_get_string(uri));
        return 0;
    }
    if (!has_ch) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "need either 'uri' or 'channels' "
                            "argument");
    }
    if (json_object_array_length(channels) != 1) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Channel list has more than one "
                            "entries");
    }
    json_object *ch = json_object_array_get_idx(channels, 0), *addr = NULL;
    const char *type = opt_str(ch, "channel-type");
    if (!type || strcmp(type, "main") || !json_object_object_get_ex(ch, "addr", &addr)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'channels' expects a "
                            "main channel with an address");
    }
    const char *transport = opt_str(addr, "transport");
    const char *atype = opt_str(addr, "type");
    if (!transport || strcmp(transport, "socket") || !atype) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'transport' expects "
                            "'socket'");
    }
    char *s = NULL;
    int n = -1;
    if (!strcmp(atype, "inet") && opt_str(addr, "host") && opt_str(addr, "port")) {
        const char *host = opt_str(addr, "host");
        n = asprintf(&s, strchr(host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", host,
                     opt_str(addr, "port"));
    } else if (!strcmp(atype, "unix") && opt_str(addr, "path")) {
        n = asprintf(&s, "unix:%s", opt_str(addr, "path"));
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'type' expects 'inet' "
                            "with host and port or 'unix' with path");
    }
    if (n < 0) {
        abort();
    }
    *out = s;
    return 0;
}

/* ---- the source ----------------------------------------------------------------------- */

/* Once the destination took over: the migrated nodes' exports go (their clients are cut
 * off; the nodes refuse writes now), with BLOCK_EXPORT_DELETED. */
static void remove_exports(void *arg)
{
    (void)arg;
    for (dexport **p = &vdiskd.exports; *p;) {
        dexport *e = *p;
        if (!e->migrating) {
            p = &e->next;
            continue;
        }
        vd_nbd_export_remove(vdiskd.nbd, e->name, true, NULL);
        *p = e->next;
        export_deleted(e);
    }
}

static void committed(void *opaque)
{
    (void)opaque;
    qmp_run_exclusive(vdiskd.qmp, remove_exports, NULL);
}

static int tls_client(const char *id, const vd_tls_client_creds **out, vd_error **errp)
{
    *out = NULL;
    if (!id[0]) {
        return 0;
    }
    *out = vd_engine_tls_client_creds(vdiskd.engine, id);
    if (*out) {
        return 0;
    }
    if (tls_find(id)) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Expecting TLS credentials with a "
                            "client endpoint");
    }
    return vd_error_set(errp, VD_ERR_GENERIC, ENOENT, "No TLS credentials with id '%s'", id);
}

static int cmd_migrate(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)ret;
    if (out_active()) {
        return in_progress(errp);
    }
    if (in_active()) {
        return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "Guest is waiting for an incoming "
                            "migration");
    }
    bool inc = false, resume = false;
    int r;
    if ((r = opt_bool(args, "inc", false, &inc, errp)) < 0 ||
        (r = opt_bool(args, "resume", false, &resume, errp)) < 0) {
        return r;
    }
    if (resume) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Cannot resume if there is no "
                            "paused migration");
    }
    if (inc) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Parameter 'inc' is not "
                            "supported: vdisk moves each exported node whole");
    }
    char *uri = NULL;
    if ((r = uri_arg(args, &uri, errp)) < 0) {
        return r;
    }
    const vd_tls_client_creds *tls = NULL;
    if ((r = tls_client(vdiskd.mig_params.tls_creds, &tls, errp)) < 0) {
        free(uri);
        return r;
    }
    /* Every exported node, with its exports. */
    size_t nb = 0, nb_ex = 0;
    for (dexport *e = vdiskd.exports; e; e = e->next) {
        nb_ex++;
    }
    vd_mig_disk_opts *disks = calloc(nb_ex ? nb_ex : 1, sizeof(*disks));
    vd_mig_export *exs = calloc(nb_ex ? nb_ex : 1, sizeof(*exs));
    if (!disks || !exs) {
        abort();
    }
    /* Oldest export first, so the destination lists them as this daemon does. */
    size_t k = nb_ex;
    for (dexport *e = vdiskd.exports; e; e = e->next) {
        exs[--k] = (vd_mig_export){e->id, e->name, e->writable};
    }
    vd_mig_export *sorted = calloc(nb_ex ? nb_ex : 1, sizeof(*sorted));
    if (!sorted) {
        abort();
    }
    size_t used = 0;
    for (size_t i = 0; i < nb_ex; i++) {
        const char *node = NULL;
        for (dexport *e = vdiskd.exports; e; e = e->next) {
            if (!strcmp(e->id, exs[i].id)) {
                node = vd_disk_node_name(e->h->disk);
            }
        }
        size_t d = 0;
        while (d < nb && strcmp(disks[d].node_name, node)) {
            d++;
        }
        if (d == nb) {
            disks[nb++].node_name = node;
        }
    }
    for (size_t d = 0; d < nb; d++) {
        disks[d].exports = sorted + used;
        for (size_t i = 0; i < nb_ex; i++) {
            for (dexport *e = vdiskd.exports; e; e = e->next) {
                if (!strcmp(e->id, exs[i].id) &&
                    !strcmp(vd_disk_node_name(e->h->disk), disks[d].node_name)) {
                    sorted[used++] = exs[i];
                    disks[d].nb_exports++;
                }
            }
        }
    }
    vd_mig_send_opts o = {.uri = uri, .params = vdiskd.mig_params, .caps = vdiskd.mig_caps,
                          .tls = tls, .disks = disks, .nb_disks = nb,
                          .committed = committed};
    vd_migration *m = NULL;
    r = vd_migration_start(vdiskd.engine, &o, &m, errp);
    free(uri);
    free(disks);
    free(exs);
    free(sorted);
    if (r < 0) {
        return r;
    }
    vd_migration_free(vdiskd.mig_out);
    vdiskd.mig_out = m;
    for (dexport *e = vdiskd.exports; e; e = e->next) {
        e->migrating = true;
    }
    return 0;
}

static int cmd_migrate_cancel(qmp_session *qs, json_object *args, json_object **ret,
                              vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)ret;
    (void)errp;
    if (out_active()) {
        vd_migration_cancel(vdiskd.mig_out);
        for (dexport *e = vdiskd.exports; e; e = e->next) {
            e->migrating = false;
        }
    }
    return 0;
}

static int cmd_migrate_continue(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)ret;
    const char *state = opt_str(args, "state");
    if (strcmp(state, "pre-switchover")) {
        /* QEMU checks the state named against the migration's. */
        vd_mig_info i = {.status = VD_MIG_STATUS_NONE};
        if (vdiskd.mig_out) {
            vd_migration_info(vdiskd.mig_out, &i);
        }
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Migration not in expected state: "
                            "%s", vd_mig_status_name(i.status));
    }
    if (!vdiskd.mig_out) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Migration not in expected state: "
                            "none");
    }
    return vd_migration_continue(vdiskd.mig_out, errp);
}

/* ---- the destination ------------------------------------------------------------------ */

typedef struct export_call {
    const char *node;
    const vd_mig_export *ex;
    bool make;
    int ret;
    vd_error *err;
} export_call;

static void export_call_run(void *arg)
{
    export_call *c = arg;
    if (!c->make) {
        if (!vdiskd.nbd) {
            c->ret = vd_error_set(&c->err, VD_ERR_INVALID, EINVAL, "NBD server not running");
            return;
        }
        for (dexport *e = vdiskd.exports; e && c->ret == 0; e = e->next) {
            if (!strcmp(e->id, c->ex->id)) {
                c->ret = vd_error_set(&c->err, VD_ERR_INVALID, EEXIST, "Block export id '%s' "
                                      "is already in use", e->id);
            } else if (!strcmp(e->name, c->ex->name)) {
                c->ret = vd_error_set(&c->err, VD_ERR_INVALID, EEXIST, "NBD export '%s' "
                                      "already exists", e->name);
            }
        }
        return;
    }
    json_object *a = json_object_new_object();
    json_object_object_add(a, "type", json_object_new_string("nbd"));
    json_object_object_add(a, "id", json_object_new_string(c->ex->id));
    json_object_object_add(a, "node-name", json_object_new_string(c->node));
    json_object_object_add(a, "name", json_object_new_string(c->ex->name));
    json_object_object_add(a, "writable", json_object_new_boolean(c->ex->writable));
    c->ret = export_add(a, &c->err);
    json_object_put(a);
}

static int export_call_do(const char *node, const vd_mig_export *ex, bool make,
                          vd_error **errp)
{
    export_call c = {node, ex, make, 0, NULL};
    qmp_run_exclusive(vdiskd.qmp, export_call_run, &c);
    if (c.ret < 0) {
        vd_error_propagate(errp, c.err);
    }
    return c.ret;
}

static int check_export(void *opaque, const char *node, const vd_mig_export *ex,
                        vd_error **errp)
{
    (void)opaque;
    return export_call_do(node, ex, false, errp);
}

static int make_export(void *opaque, const char *node, const vd_mig_export *ex,
                       vd_error **errp)
{
    (void)opaque;
    return export_call_do(node, ex, true, errp);
}

int migration_incoming_start(const char *uri, vd_error **errp)
{
    if (vdiskd.mig_in) {
        return vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "The incoming migration has already "
                            "been started");
    }
    if (out_active()) {
        return in_progress(errp);
    }
    const char *id = vdiskd.mig_params.tls_creds;
    vd_tls_creds *tls = NULL;
    if (id[0] && !(tls = tls_find(id))) {
        if (vd_engine_tls_client_creds(vdiskd.engine, id)) {
            return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Expecting TLS credentials "
                                "with a server endpoint");
        }
        return vd_error_set(errp, VD_ERR_GENERIC, ENOENT, "No TLS credentials with id '%s'",
                            id);
    }
    vd_mig_incoming_opts o = {.uri = uri, .params = vdiskd.mig_params,
                              .caps = vdiskd.mig_caps, .tls = tls,
                              .check_export = check_export, .make_export = make_export};
    return vd_mig_incoming_start(vdiskd.engine, &o, &vdiskd.mig_in, errp);
}

static int cmd_migrate_incoming(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)ret;
    char *uri = NULL;
    int r = uri_arg(args, &uri, errp);
    if (r == 0) {
        r = migration_incoming_start(uri, errp);
    }
    free(uri);
    return r;
}

/* ---- query-migrate -------------------------------------------------------------------- */

static void put_int(json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

static json_object *info_json(const vd_mig_info *i, bool source)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string(vd_mig_status_name(i->status)));
    if (i->status == VD_MIG_STATUS_SETUP) {
        return o;
    }
    bool done = i->status == VD_MIG_STATUS_COMPLETED;
    put_int(o, "setup-time", i->setup_time_ms);
    if (done && source) {
        put_int(o, "downtime", i->downtime_ms);
    } else if (source && i->status == VD_MIG_STATUS_ACTIVE) {
        put_int(o, "expected-downtime", i->expected_downtime_ms);
    }
    put_int(o, "total-time", i->total_time_ms);
    /* QEMU's "ram" statistics, for the disks: pages are 4 KiB of guest data. */
    json_object *d = json_object_new_object();
    put_int(d, "transferred", i->transferred);
    put_int(d, "remaining", i->remaining);
    put_int(d, "total", i->total);
    put_int(d, "duplicate", i->zero_bytes / 4096);
    put_int(d, "zero-bytes", i->zero_bytes);
    put_int(d, "skipped", 0);
    put_int(d, "normal", i->normal_bytes / 4096);
    put_int(d, "normal-bytes", i->normal_bytes);
    put_int(d, "dirty-pages-rate", i->dirty_bytes_rate / 4096);
    json_object_object_add(d, "mbps", json_object_new_double(i->mbps));
    put_int(d, "dirty-sync-count", i->dirty_sync_count);
    put_int(d, "postcopy-requests", 0);
    put_int(d, "page-size", 4096);
    put_int(d, "multifd-bytes", i->transferred);
    put_int(d, "precopy-bytes", i->precopy_bytes);
    put_int(d, "downtime-bytes", i->downtime_bytes);
    put_int(d, "postcopy-bytes", 0);
    json_object_object_add(o, "disk", d);
    if (source && vdiskd.mig_params.compress_type != VD_MIG_CODEC_NONE) {
        json_object *c = json_object_new_object();
        put_int(c, "pages", i->compressed_input / 4096);
        put_int(c, "busy", i->compress_busy);
        json_object_object_add(c, "busy-rate",
                               json_object_new_double(i->compressed_chunks + i->compress_busy
                                   ? (double)i->compress_busy /
                                         (double)(i->compressed_chunks + i->compress_busy)
                                   : 0));
        put_int(c, "compressed-size", i->compressed_size);
        json_object_object_add(c, "compression-rate",
                               json_object_new_double(i->compressed_size
                                   ? (double)i->compressed_input / (double)i->compressed_size
                                   : 0));
        json_object_object_add(o, "compression", c);
    }
    if (source && vdiskd.mig_caps.auto_converge && i->status == VD_MIG_STATUS_ACTIVE) {
        put_int(o, "cpu-throttle-percentage", i->throttle_pct);
    }
    if (i->error[0]) {
        json_object_object_add(o, "error-desc", json_object_new_string(i->error));
    }
    return o;
}

static int cmd_query_migrate(qmp_session *qs, json_object *args, json_object **ret,
                             vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    vd_mig_info i;
    if (vdiskd.mig_out) {
        vd_migration_info(vdiskd.mig_out, &i);
        *ret = info_json(&i, true);
    } else if (vdiskd.mig_in) {
        vd_mig_incoming_info(vdiskd.mig_in, &i);
        *ret = info_json(&i, false);
    } else {
        *ret = json_object_new_object();
    }
    return 0;
}

void migration_shutdown(void)
{
    vd_migration_free(vdiskd.mig_out);
    vdiskd.mig_out = NULL;
    vd_mig_incoming_free(vdiskd.mig_in);
    vdiskd.mig_in = NULL;
}

static const qmp_arg migrate_args[] = {
    {"uri", QMP_STR, true, "tcp:HOST:PORT or unix:PATH"},
    {"channels", QMP_ARRAY, true, "[{channel-type: main, addr: {transport: socket, type: "
                                  "inet|unix, host, port | path}}] (instead of uri)"},
    {"blk", QMP_BOOL, true, "accepted; every exported node moves anyway"},
    {"inc", QMP_BOOL, true, "not supported"},
    {"detach", QMP_BOOL, true, "ignored (the command always returns at once)"},
    {"resume", QMP_BOOL, true, "not supported (no postcopy)"},
    {NULL, 0, false, NULL}};

static const qmp_arg incoming_args[] = {
    {"uri", QMP_STR, true, "tcp:HOST:PORT or unix:PATH to listen on"},
    {"channels", QMP_ARRAY, true, "as migrate's (instead of uri)"},
    {NULL, 0, false, NULL}};

static const qmp_arg continue_args[] = {
    {"state", QMP_STR, false, "the state it is paused in: pre-switchover"},
    {NULL, 0, false, NULL}};

static const qmp_arg caps_args[] = {
    {"capabilities", QMP_ARRAY, false, "[{capability: compress|multifd|zero-blocks|events, "
                                       "state}]"},
    {NULL, 0, false, NULL}};

static const qmp_command migration_commands[] = {
    {"migrate", cmd_migrate, migrate_args, false,
     "moves every exported node to the destination's same-named node, live; returns at once (query-migrate, MIGRATION events)"},
    {"migrate-incoming", cmd_migrate_incoming, incoming_args, false,
     "listens for a migration (the daemon's nodes of the source's names and sizes receive it)"},
    {"migrate-cancel", cmd_migrate_cancel, NULL, false,
     "cancels the outgoing migration: the source keeps serving as before"},
    {"migrate-continue", cmd_migrate_continue, continue_args, false,
     "a migration paused in pre-switchover (capability pause-before-switchover) goes on"},
    {"query-migrate", cmd_query_migrate, NULL, false,
     "status and statistics: {status, setup-time, downtime, total-time, disk: {...}, compression: {...}, error-desc}"},
    {"migrate-set-parameters", cmd_migrate_set_parameters, NULL, true,
     "compress-type, compress-level, compress-threads, decompress-threads, compress-wait-thread, multifd-channels, multifd-compression, multifd-zlib-level, multifd-zstd-level, max-bandwidth, downtime-limit, tls-creds, tls-hostname, throttle-trigger-threshold, cpu-throttle-initial, cpu-throttle-increment, max-cpu-throttle"},
    {"query-migrate-parameters", cmd_query_migrate_parameters, NULL, false,
     "the migration parameters"},
    {"migrate-set-capabilities", cmd_migrate_set_capabilities, caps_args, false,
     "compress, multifd, zero-blocks, events, pause-before-switchover, auto-converge"},
    {"query-migrate-capabilities", cmd_query_migrate_capabilities, NULL, false,
     "the migration capabilities"},
};
const qmp_command_table migration_command_table = {
    migration_commands, sizeof(migration_commands) / sizeof(migration_commands[0]), NULL,
    NULL,    NULL,
};
