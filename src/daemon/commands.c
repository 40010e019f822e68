/* vdiskd's QMP commands: each described once in qmp_commands[] (arguments, handler, one
 * line of documentation), with QEMU's names, argument names and error messages. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/daemon.h"
#include "vdisk/snapshot.h"
#include "tools/engine-env.h"

static int64_t opt_int(json_object *o, const char *key, int64_t def)
{
    json_object *v = NULL;
    if (!o || !json_object_object_get_ex(o, key, &v)) {
        return def;
    }
    if (json_object_is_type(v, json_type_string)) {
        return strtoll(json_object_get_string(v), NULL, 10);
    }
    return json_object_get_int64(v);
}

/* The node a "device" / "node-name" pair names (vdiskd has no devices: both name nodes),
 * through the daemon's handle on it. */
static int find_disk(const char *device, const char *node_name, dhandle **out,
                     vd_error **errp)
{
    const char *name = node_name ? node_name : device;
    if (!name || !vd_blockdev_exists(vdiskd.engine, name)) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Cannot find device='%s' nor "
                            "node-name='%s'", device ? device : "", name ? name : "");
    }
    return node_handle(name, out, errp);
}

/* ---- general ------------------------------------------------------------------------------ */

static int cmd_qmp_capabilities(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)ret;
    (void)errp;
    return 0;
}

static int cmd_query_version(qmp_session *qs, json_object *args, json_object **ret,
                             vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    json_object *q = json_object_new_object();
    json_object_object_add(q, "micro", json_object_new_int(0));
    json_object_object_add(q, "minor", json_object_new_int(2));
    json_object_object_add(q, "major", json_object_new_int(7));
    *ret = json_object_new_object();
    json_object_object_add(*ret, "qemu", q);
    json_object_object_add(*ret, "package", json_object_new_string("vdiskd " VDISK_VERSION_STR));
    return 0;
}

static int cmd_query_commands(qmp_session *qs, json_object *args, json_object **ret,
                              vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    *ret = json_object_new_array();
    for (const qmp_command_table *t = &vdiskd_commands; t; t = t->next) {
        for (size_t i = 0; i < t->nb; i++) {
            json_object *c = json_object_new_object();
            json_object_object_add(c, "name", json_object_new_string(t->commands[i].name));
            json_object_array_add(*ret, c);
        }
    }
    return 0;
}

static int cmd_quit(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)args;
    (void)ret;
    (void)errp;
    /* As QEMU's quit, the jobs end first, and their events go before the reply. */
    vd_jobs_cancel_all(vdiskd.engine);
    qmp_request_quit(qmp_session_server(qs));
    return 0;
}

/* ---- nodes ---------------------------------------------------------------------------------- */

static int cmd_blockdev_add(qmp_session *qs, json_object *args, json_object **ret,
                            vd_error **errp)
{
    (void)qs;
    (void)ret;
    return blockdev_add(args, errp);
}

static int cmd_blockdev_del(qmp_session *qs, json_object *args, json_object **ret,
                            vd_error **errp)
{
    (void)qs;
    (void)ret;
    return blockdev_del(opt_str(args, "node-name"), errp);
}

static int cmd_query_named_block_nodes(qmp_session *qs, json_object *args, json_object **ret,
                                       vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    vd_blockdev_list(vdiskd.engine, &list, &nb);
    *ret = json_object_new_array();
    for (size_t i = 0; i < nb; i++) {
        json_object_array_add(*ret, node_info(&list[i]));
    }
    vd_blockdev_list_free(list, nb);
    return 0;
}

static json_object *stats_json(vd_disk *d)
{
    vd_disk_stats st;
    memset(&st, 0, sizeof(st));
    st.idle_time_ns = -1;   /* no request yet: QEMU leaves the member out */
    if (d) {
        vd_disk_get_stats(d, &st);
    }
    json_object *s = json_object_new_object();
#define STAT(k, v) json_object_object_add(s, k, json_object_new_int64((int64_t)(v)))
    STAT("rd_bytes", st.rd_bytes);
    STAT("wr_bytes", st.wr_bytes);
    STAT("unmap_bytes", st.unmap_bytes);
    STAT("rd_operations", st.rd_operations);
    STAT("wr_operations", st.wr_operations);
    STAT("flush_operations", st.flush_operations);
    STAT("unmap_operations", st.unmap_operations);
    STAT("rd_merged", 0);
    STAT("wr_merged", 0);
    STAT("unmap_merged", 0);
    STAT("rd_total_time_ns", st.rd_total_time_ns);
    STAT("wr_total_time_ns", st.wr_total_time_ns);
    STAT("flush_total_time_ns", st.flush_total_time_ns);
    STAT("unmap_total_time_ns", st.unmap_total_time_ns);
    STAT("wr_highest_offset", st.wr_highest_offset);
    STAT("failed_rd_operations", st.failed_rd_operations);
    STAT("failed_wr_operations", st.failed_wr_operations);
    STAT("failed_flush_operations", st.failed_flush_operations);
    STAT("failed_unmap_operations", st.failed_unmap_operations);
    STAT("invalid_rd_operations", 0);
    STAT("invalid_wr_operations", 0);
    STAT("invalid_flush_operations", 0);
    STAT("invalid_unmap_operations", 0);
    if (st.idle_time_ns >= 0) {
        STAT("idle_time_ns", st.idle_time_ns);
    }
#undef STAT
    json_object_object_add(s, "account_invalid", json_object_new_boolean(false));
    json_object_object_add(s, "account_failed", json_object_new_boolean(false));
    json_object_object_add(s, "timed_stats", json_object_new_array());
    return s;
}

/* A storage daemon has nodes but no devices (QEMU's BlockBackends with a name): the
 * device list is empty, as qemu-storage-daemon's. */
static int cmd_query_block(qmp_session *qs, json_object *args, json_object **ret,
                           vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    *ret = json_object_new_array();
    return 0;
}

static const vd_blockdev_info *info_of(const vd_blockdev_info *list, size_t nb,
                                      const char *name)
{
    for (size_t i = 0; i < nb && name; i++) {
        if (!strcmp(list[i].node_name, name)) {
            return &list[i];
        }
    }
    return NULL;
}

/* One node's entry: the counters of the daemon's handle on it (exports count there);
 * protocol nodes carry the file driver's own counters, as QEMU's do. */
static json_object *node_stats(const vd_blockdev_info *list, size_t nb,
                               const vd_blockdev_info *n)
{
    json_object *o = json_object_new_object();
    dhandle *h = handle_of(n->node_name);
    json_object_object_add(o, "stats", stats_json(h ? h->disk : NULL));
    json_object_object_add(o, "node-name", json_object_new_string(n->node_name));
    const vd_blockdev_info *file = info_of(list, nb, n->file_child);
    if (!file) {
        json_object *ds = json_object_new_object();
        json_object_object_add(ds, "driver", json_object_new_string("file"));
        json_object_object_add(ds, "discard-nb-ok", json_object_new_int(0));
        json_object_object_add(ds, "discard-nb-failed", json_object_new_int(0));
        json_object_object_add(ds, "discard-bytes-ok", json_object_new_int(0));
        json_object_object_add(o, "driver-specific", ds);
    } else {
        json_object_object_add(o, "parent", node_stats(list, nb, file));
    }
    return o;
}

/* Without query-nodes QEMU lists block devices, which a storage daemon has none of. */
static int cmd_query_blockstats(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    bool nodes = false;
    int r = opt_bool(args, "query-nodes", false, &nodes, errp);
    if (r < 0) {
        return r;
    }
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    vd_blockdev_list(vdiskd.engine, &list, &nb);
    *ret = json_object_new_array();
    for (size_t i = 0; i < nb && nodes; i++) {
        json_object_array_add(*ret, node_stats(list, nb, &list[i]));
    }
    vd_blockdev_list_free(list, nb);
    return 0;
}

static int cmd_block_resize(qmp_session *qs, json_object *args, json_object **ret,
                            vd_error **errp)
{
    (void)qs;
    (void)ret;
    dhandle *h;
    int r = find_disk(opt_str(args, "device"), opt_str(args, "node-name"), &h, errp);
    if (r < 0) {
        return r;
    }
    /* As QEMU's block_resize, a user that resizes and shares everything: an export, whose
     * clients cached the size, does not share resizing. */
    vd_perm_claim *c = NULL;
    r = vd_disk_claim(h->disk, VD_PERM_RESIZE, VD_PERM_ALL, &c, errp);
    if (r < 0) {
        return r;
    }
    int64_t size = opt_int(args, "size", -1);
    if (size < 0) {
        r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'size' expects a value "
                         ">= 0");
    } else {
        r = vd_truncate(h->disk, (uint64_t)size, true, "off", errp);
    }
    vd_disk_unclaim(h->disk, c);
    return r;
}

/* ---- NBD ------------------------------------------------------------------------------------- */

int nbd_server_listen(json_object *addr, vd_error **errp)
{
    const char *type = opt_str(addr, "type");
    /* QMP's legacy form wraps the members in "data"; the command line has them flat. */
    json_object *data = NULL;
    if (!json_object_object_get_ex(addr, "data", &data) ||
        !json_object_is_type(data, json_type_object)) {
        data = addr;
    }
    if (type && !strcmp(type, "unix")) {
        return vd_nbd_server_listen_unix(vdiskd.nbd, opt_str(data, "path"), errp);
    }
    if (type && !strcmp(type, "inet")) {
        return vd_nbd_server_listen_inet(vdiskd.nbd, opt_str(data, "host"),
                                         opt_str(data, "port"), errp);
    }
    if (type && !strcmp(type, "fd")) {
        /* A listening socket the daemon inherited, by number (names of fds passed over
         * QMP with getfd are not supported). */
        const char *str = opt_str(data, "str");
        char *end = NULL;
        long fd = str ? strtol(str, &end, 10) : -1;
        if (!str || !*str || *end || fd < 0 || fd > INT_MAX) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unable to parse FD number %s",
                                str ? str : "");
        }
        return vd_nbd_server_listen_fd(vdiskd.nbd, (int)fd, errp);
    }
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'type' does not accept "
                        "value '%s'", type ? type : "");
}

int nbd_server_start(json_object *addr, const char *tls_creds, int64_t max_conn,
                     vd_error **errp)
{
    if (vdiskd.nbd) {
        return vd_error_set(errp, VD_ERR_INVALID, EBUSY, "NBD server already running");
    }
    const char *type = opt_str(addr, "type");
    if (!type || (strcmp(type, "unix") && strcmp(type, "inet") && strcmp(type, "fd"))) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'type' does not accept "
                            "value '%s'", type ? type : "");
    }
    vd_tls_creds *tls = NULL;
    if (tls_creds) {
        tls = tls_find(tls_creds);
        if (!tls) {
            return vd_error_set(errp, VD_ERR_INVALID, ENOENT, "No TLS credentials with id "
                                "'%s'", tls_creds);
        }
    }
    vd_nbd_server_opts o = {.max_connections = max_conn < 0 ? 100 : (unsigned)max_conn,
                            .tls = tls, .workers = vd_nbd_workers_from_env()};
    int ret = vd_nbd_server_new(&o, &vdiskd.nbd, errp);
    if (ret < 0) {
        return ret;
    }
    ret = nbd_server_listen(addr, errp);
    if (ret < 0) {
        vd_nbd_server_free(vdiskd.nbd);
        vdiskd.nbd = NULL;
    }
    return ret;
}

static int cmd_nbd_server_start(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)ret;
    json_object *addr = NULL;
    json_object_object_get_ex(args, "addr", &addr);
    return nbd_server_start(addr, opt_str(args, "tls-creds"),
                            opt_int(args, "max-connections", -1), errp);
}

void export_deleted(dexport *e)
{
    if (vdiskd.qmp) {
        json_object *data = json_object_new_object();
        json_object_object_add(data, "id", json_object_new_string(e->id));
        qmp_event(vdiskd.qmp, "BLOCK_EXPORT_DELETED", data);
    }
    vd_disk_unclaim(e->h->disk, e->claim);
    e->h->users--;
    free(e->id);
    free(e->name);
    free(e);
}

static int cmd_nbd_server_stop(qmp_session *qs, json_object *args, json_object **ret,
                               vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)ret;
    if (!vdiskd.nbd) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "NBD server not running");
    }
    vd_nbd_server_free(vdiskd.nbd);
    vdiskd.nbd = NULL;
    while (vdiskd.exports) {
        dexport *e = vdiskd.exports;
        vdiskd.exports = e->next;
        export_deleted(e);
    }
    return 0;
}

static dexport *export_find(const char *id)
{
    for (dexport *e = vdiskd.exports; e; e = e->next) {
        if (!strcmp(e->id, id)) {
            return e;
        }
    }
    return NULL;
}

int export_add(json_object *args, vd_error **errp)
{
    const char *type = opt_str(args, "type");
    const char *id = opt_str(args, "id");
    const char *node_name = opt_str(args, "node-name");
    if (!type || strcmp(type, "nbd")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'type' does not accept "
                            "value '%s'", type ? type : "");
    }
    if (!id || !node_name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is missing",
                            !id ? "id" : "node-name");
    }
    if (!vdiskd.nbd) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "NBD server not running");
    }
    if (export_find(id)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Block export id '%s' is already "
                            "in use", id);
    }
    bool writable = false;
    int ret = opt_bool(args, "writable", false, &writable, errp);
    if (ret < 0) {
        return ret;
    }
    dhandle *h;
    ret = find_disk(NULL, node_name, &h, errp);
    if (ret < 0) {
        return ret;
    }
    if (writable && vd_disk_read_only(h->disk)) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "Cannot export read-only node as "
                            "writable");
    }
    /* QEMU's export: it reads consistently, writes if writable, and lets no one resize
     * the node under its clients. */
    vd_perm_claim *claim = NULL;
    ret = vd_disk_claim(h->disk, VD_PERM_CONSISTENT_READ | (writable ? VD_PERM_WRITE : 0),
                        VD_PERM_ALL & ~VD_PERM_RESIZE, &claim, errp);
    if (ret < 0) {
        return ret;
    }
    bool depth = false;
    ret = opt_bool(args, "allocation-depth", false, &depth, errp);
    /* The command line's bitmaps.0=NAME arrives as an object with keys "0", "1"... */
    json_object *bitmaps = NULL, *list = NULL;
    if (ret == 0 && json_object_object_get_ex(args, "bitmaps", &bitmaps) &&
        json_object_is_type(bitmaps, json_type_object)) {
        list = json_object_new_array();
        char key[24];
        json_object *v;
        for (int i = 0; snprintf(key, sizeof(key), "%d", i),
                 json_object_object_get_ex(bitmaps, key, &v); i++) {
            json_object_array_add(list, json_object_get(v));
        }
        bitmaps = list;
    }
    vd_dirty_bitmap **bms = NULL;
    size_t nb_bms = 0;
    if (ret == 0) {
        ret = export_bitmaps(bitmaps, h->disk, !writable, &bms, &nb_bms, errp);
    }
    json_object_put(list);
    const char *name = opt_str(args, "name");
    vd_nbd_export_opts o = {.name = name ? name : node_name,
                            .description = opt_str(args, "description"),
                            .disk = h->disk, .writable = writable,
                            .allocation_depth = depth, .bitmaps = bms,
                            .nb_bitmaps = nb_bms};
    if (ret == 0) {
        ret = vd_nbd_export_add(vdiskd.nbd, &o, errp);
    }
    if (ret < 0) {
        for (size_t i = 0; bms && i < nb_bms; i++) {
            vd_bitmap_release(bms[i]);
        }
        free(bms);
        vd_disk_unclaim(h->disk, claim);
        return ret;
    }
    free(bms);
    dexport *e = calloc(1, sizeof(*e));
    if (!e || !(e->id = strdup(id)) || !(e->name = strdup(o.name))) {
        abort();
    }
    e->h = h;
    e->claim = claim;
    e->writable = writable;
    h->users++;
    /* Newest first, as qemu-storage-daemon lists them. */
    e->next = vdiskd.exports;
    vdiskd.exports = e;
    return 0;
}

static int cmd_block_export_add(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)ret;
    return export_add(args, errp);
}

static int cmd_block_export_del(qmp_session *qs, json_object *args, json_object **ret,
                                vd_error **errp)
{
    (void)qs;
    (void)ret;
    const char *id = opt_str(args, "id");
    const char *mode = opt_str(args, "mode");
    dexport *e = export_find(id);
    if (!e) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Export '%s' is not found", id);
    }
    if (mode && strcmp(mode, "safe") && strcmp(mode, "hard")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'mode' does not accept "
                            "value '%s'", mode);
    }
    int r = vd_nbd_export_remove(vdiskd.nbd, e->name, mode && !strcmp(mode, "hard"), errp);
    if (r < 0) {
        return r;
    }
    for (dexport **p = &vdiskd.exports; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    export_deleted(e);
    return 0;
}

static int cmd_query_block_exports(qmp_session *qs, json_object *args, json_object **ret,
                                   vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)errp;
    *ret = json_object_new_array();
    for (dexport *e = vdiskd.exports; e; e = e->next) {
        json_object *o = json_object_new_object();
        const char *node = vd_disk_node_name(e->h->disk);
        json_object_object_add(o, "node-name", json_object_new_string(node ? node : ""));
        json_object_object_add(o, "shutting-down", json_object_new_boolean(false));
        json_object_object_add(o, "type", json_object_new_string("nbd"));
        json_object_object_add(o, "id", json_object_new_string(e->id));
        json_object_array_add(*ret, o);
    }
    return 0;
}

void daemon_stop_all(void)
{
    if (vdiskd.nbd) {
        vd_nbd_server_free(vdiskd.nbd);
        vdiskd.nbd = NULL;
    }
    while (vdiskd.exports) {
        dexport *e = vdiskd.exports;
        vdiskd.exports = e->next;
        vd_disk_unclaim(e->h->disk, e->claim);
        e->h->users--;
        free(e->id);
        free(e->name);
        free(e);
    }
    nodes_close_all();
    while (vdiskd.tls) {
        dtls *t = vdiskd.tls;
        vdiskd.tls = t->next;
        vd_tls_creds_free(t->creds);
        free(t->id);
        free(t);
    }
}

/* ---- snapshots -------------------------------------------------------------------------------- */

/* QEMU's refusal to put an overlay on a node that is another node's backing file. */
static int busy_as_backing(const char *name, vd_error **errp)
{
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    int ret = 0;
    vd_blockdev_list(vdiskd.engine, &list, &nb);
    for (size_t i = 0; i < nb && ret == 0; i++) {
        if (list[i].backing_child && !strcmp(list[i].backing_child, name)) {
            ret = vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: node is used "
                               "as backing hd of '%s'", name, list[i].node_name);
        }
    }
    vd_blockdev_list_free(list, nb);
    return ret;
}

/* The checks QEMU makes on an existing overlay, in its order and words. */
static int overlay_checks(const char *name, vd_error **errp)
{
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    int ret = 0;
    vd_blockdev_list(vdiskd.engine, &list, &nb);
    const vd_blockdev_info *ov = info_of(list, nb, name);
    dhandle *h = handle_of(name);
    if (!ov) {
        ret = vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Cannot find device='%s' nor "
                           "node-name='%s'", name, name);
    } else if (h && h->users) {
        ret = vd_error_set(errp, VD_ERR_BUSY, EBUSY, "The overlay is already in use");
    } else if (ov->backing_child) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The overlay already has a backing "
                           "image");
    }
    vd_blockdev_list_free(list, nb);
    return ret;
}

/* One QMP snapshot action onto a vd_action; the strings stay owned by `data`. */
static int snapshot_action(const char *type, json_object *data, vd_action *a, vd_error **errp)
{
    memset(a, 0, sizeof(*a));
    dhandle *h;
    int ret;
    if (!strcmp(type, "blockdev-snapshot-internal-sync")) {
        const char *device = opt_str(data, "device"), *name = opt_str(data, "name");
        if (!device || !name) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is missing",
                                !device ? "device" : "name");
        }
        ret = find_disk(device, NULL, &h, errp);
        a->kind = VD_ACTION_SNAPSHOT_INTERNAL;
        a->name = name;
        /* As QEMU's QMP stores them: the guest clock (without a guest, qemu-storage-daemon
         * reads the host's) and no record/replay icount. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        a->vm_clock_nsec = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        a->icount = -1;
    } else if (!strcmp(type, "blockdev-snapshot-sync")) {
        const char *file = opt_str(data, "snapshot-file");
        const char *mode = opt_str(data, "mode");
        if (!file) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'snapshot-file' is "
                                "missing");
        }
        if (mode && strcmp(mode, "absolute-paths")) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "mode '%s' is not "
                                "supported", mode);
        }
        const char *snode = opt_str(data, "snapshot-node-name");
        if (opt_str(data, "node-name") && !snode) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "New overlay node-name "
                                "missing");
        }
        if (snode && vd_blockdev_exists(vdiskd.engine, snode)) {
            return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "New overlay node-name "
                                "already in use");
        }
        const char *target = opt_str(data, "node-name") ? opt_str(data, "node-name")
                                                         : opt_str(data, "device");
        ret = target && vd_blockdev_exists(vdiskd.engine, target)
                  ? busy_as_backing(target, errp) : 0;
        if (ret == 0) {
            ret = find_disk(opt_str(data, "device"), opt_str(data, "node-name"), &h, errp);
        }
        a->kind = VD_ACTION_SNAPSHOT_EXTERNAL;
        a->overlay = file;
        a->overlay_format = opt_str(data, "format");
        a->overlay_node_name = snode;
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'", type);
    }
    if (ret < 0) {
        return ret;
    }
    a->disk = h->disk;
    return 0;
}

/* QEMU's errors for the internal snapshot checks it makes before anything runs. */
static int internal_checks(const vd_action *a, const char *device, vd_error **errp)
{
    if (a->kind != VD_ACTION_SNAPSHOT_INTERNAL) {
        return 0;
    }
    vd_snapshot_info *list = NULL;
    size_t nb = 0;
    if (vd_snapshot_list(a->disk, &list, &nb, NULL) == 0) {
        for (size_t i = 0; i < nb; i++) {
            if (!strcmp(list[i].name, a->name)) {
                vd_snapshot_list_free(list, nb);
                return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Snapshot with name '%s' "
                                    "already exists on device '%s'", a->name, device);
            }
        }
    }
    vd_snapshot_list_free(list, nb);
    return 0;
}

static int cmd_snapshot_internal(qmp_session *qs, json_object *args, json_object **ret,
                                 vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_action a;
    int r = snapshot_action("blockdev-snapshot-internal-sync", args, &a, errp);
    if (r == 0) {
        r = internal_checks(&a, opt_str(args, "device"), errp);
    }
    return r < 0 ? r : vd_transaction(&a, 1, errp);
}

static int cmd_snapshot_sync(qmp_session *qs, json_object *args, json_object **ret,
                             vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_action a;
    int r = snapshot_action("blockdev-snapshot-sync", args, &a, errp);
    return r < 0 ? r : vd_transaction(&a, 1, errp);
}

/* blockdev-snapshot: an existing node, added with backing: null, goes on top of node;
 * the users of node (its exports) read and write through it from then on. */
static int blockdev_snapshot(const char *node_name, const char *overlay_name, vd_error **errp)
{
    if (!vd_blockdev_exists(vdiskd.engine, node_name)) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Cannot find device='%s' nor "
                            "node-name='%s'", node_name, node_name);
    }
    int r = busy_as_backing(node_name, errp);
    if (r == 0) {
        r = overlay_checks(overlay_name, errp);
    }
    dhandle *h;
    if (r == 0) {
        r = find_disk(NULL, node_name, &h, errp);
    }
    if (r < 0) {
        return r;
    }
    vd_action a = {.kind = VD_ACTION_SNAPSHOT_EXTERNAL, .disk = h->disk,
                   .overlay = overlay_name, .overlay_node = overlay_name};
    return vd_transaction(&a, 1, errp);
}

static int cmd_blockdev_snapshot(qmp_session *qs, json_object *args, json_object **ret,
                                 vd_error **errp)
{
    (void)qs;
    (void)ret;
    return blockdev_snapshot(opt_str(args, "node"), opt_str(args, "overlay"), errp);
}

static json_object *snapshot_info_json(const vd_snapshot_info *s)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "vm-clock-nsec",
                           json_object_new_int64((int64_t)(s->vm_clock_nsec % 1000000000u)));
    json_object_object_add(o, "name", json_object_new_string(s->name));
    json_object_object_add(o, "date-sec", json_object_new_int64(s->date_sec));
    json_object_object_add(o, "date-nsec", json_object_new_int64(s->date_nsec));
    json_object_object_add(o, "vm-clock-sec",
                           json_object_new_int64((int64_t)(s->vm_clock_nsec / 1000000000u)));
    json_object_object_add(o, "id", json_object_new_string(s->id));
    json_object_object_add(o, "vm-state-size", json_object_new_int64((int64_t)s->vm_state_size));
    if (s->icount != -1) {
        json_object_object_add(o, "icount", json_object_new_int64(s->icount));
    }
    return o;
}

static int cmd_snapshot_delete_internal(qmp_session *qs, json_object *args, json_object **ret,
                                        vd_error **errp)
{
    (void)qs;
    const char *device = opt_str(args, "device");
    const char *id = opt_str(args, "id"), *name = opt_str(args, "name");
    dhandle *n;
    int r = find_disk(device, NULL, &n, errp);
    if (r < 0) {
        return r;
    }
    if (!id && !name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Name or id must be provided");
    }
    vd_snapshot_info *list = NULL;
    size_t nb = 0;
    r = vd_snapshot_list(n->disk, &list, &nb, errp);
    if (r < 0) {
        return r;
    }
    size_t i;
    for (i = 0; i < nb; i++) {
        if ((!id || !strcmp(list[i].id, id)) && (!name || !strcmp(list[i].name, name))) {
            break;
        }
    }
    if (i == nb) {
        vd_snapshot_list_free(list, nb);
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Snapshot with id '%s' and name "
                            "'%s' does not exist on device '%s'", id ? id : "null",
                            name ? name : "null", device);
    }
    json_object *info = snapshot_info_json(&list[i]);
    vd_snapshot_list_free(list, nb);
    r = vd_snapshot_delete(n->disk, id, name, errp);
    if (r < 0) {
        json_object_put(info);
        return r;
    }
    *ret = info;
    return 0;
}

static int cmd_transaction(qmp_session *qs, json_object *args, json_object **ret,
                           vd_error **errp)
{
    (void)qs;
    (void)ret;
    json_object *actions = NULL;
    json_object_object_get_ex(args, "actions", &actions);
    size_t n = json_object_array_length(actions);
    vd_action *acts = calloc(n ? n : 1, sizeof(*acts));
    if (!acts) {
        abort();
    }
    int r = 0;
    bool grouped = false;
    json_object *props = NULL;
    if (json_object_object_get_ex(args, "properties", &props)) {
        const char *mode = opt_str(props, "completion-mode");
        if (mode && strcmp(mode, "individual") && strcmp(mode, "grouped")) {
            r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'completion-mode' does "
                             "not accept value '%s'", mode);
        }
        grouped = mode && !strcmp(mode, "grouped");
    }
    for (size_t i = 0; i < n && r == 0; i++) {
        json_object *act = json_object_array_get_idx(actions, i);
        const char *type = opt_str(act, "type");
        json_object *data = NULL;
        if (!type || !json_object_object_get_ex(act, "data", &data) ||
            !json_object_is_type(data, json_type_object)) {
            r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is missing",
                             !type ? "type" : "data");
            break;
        }
        if (!strcmp(type, "abort")) {
            r = vd_error_set(errp, VD_ERR_GENERIC, ECANCELED, "Transaction aborted using "
                             "Abort action");
            break;
        }
        if (grouped && !backup_action_type(type)) {
            /* Only jobs can finish as a group. */
            r = vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Action '%s' does not support "
                             "Transaction property completion-mode = grouped", type);
            break;
        }
        if (backup_action_type(type)) {
            r = backup_action(type, data, &acts[i], errp);
            continue;
        }
        if (bitmap_action_type(type)) {
            r = bitmap_action(type, data, i, &acts[i], errp);
            continue;
        }
        r = snapshot_action(type, data, &acts[i], errp);
        if (r == 0) {
            r = internal_checks(&acts[i], opt_str(data, "device"), errp);
        }
    }
    if (r == 0) {
        r = vd_transaction_grouped(acts, n, grouped, errp);
    }
    for (size_t i = 0; i < n; i++) {
        if (r < 0 && acts[i].backup && acts[i].backup->own_target) {
            blockdev_del(acts[i].backup->own_target, NULL);
        }
        bitmap_action_free(&acts[i]);
        backup_action_free(&acts[i]);
    }
    free(acts);
    return r;
}

/* ---- the table -------------------------------------------------------------------------------- */

static const qmp_arg no_args[] = {{NULL, 0, false, NULL}};
static const qmp_arg caps_args[] = {
    {"enable", QMP_ARRAY, true, "capabilities (none is offered but oob)"},
    {NULL, 0, false, NULL}};
static const qmp_arg nodes_args[] = {
    {"flat", QMP_BOOL, true, "accepted (nodes are listed flat)"}, {NULL, 0, false, NULL}};
static const qmp_arg blockdev_del_args[] = {
    {"node-name", QMP_STR, false, "the node"}, {NULL, 0, false, NULL}};
static const qmp_arg resize_args[] = {
    {"device", QMP_STR, true, "node (legacy name)"},
    {"node-name", QMP_STR, true, "node"},
    {"size", QMP_INT, false, "new size in bytes"},
    {NULL, 0, false, NULL}};
static const qmp_arg stats_args[] = {
    {"query-nodes", QMP_BOOL, true, "list nodes"}, {NULL, 0, false, NULL}};
static const qmp_arg nbd_start_args[] = {
    {"addr", QMP_OBJ, false, "{type: unix|inet|fd, data: {path} | {host, port} | {str}}"},
    {"tls-creds", QMP_STR, true, "id of a tls-creds object"},
    {"tls-authz", QMP_STR, true, "not supported"},
    {"max-connections", QMP_INT, true, "default 100"},
    {NULL, 0, false, NULL}};
static const qmp_arg export_add_args[] = {
    {"type", QMP_STR, false, "nbd"},
    {"id", QMP_STR, false, "export id"},
    {"node-name", QMP_STR, false, "the node"},
    {"name", QMP_STR, true, "NBD export name (default: node-name)"},
    {"description", QMP_STR, true, "NBD description"},
    {"writable", QMP_BOOL, true, "default false"},
    {"writethrough", QMP_BOOL, true, "accepted"},
    {"allocation-depth", QMP_BOOL, true, "offer qemu:allocation-depth"},
    {"bitmaps", QMP_ANY, true, "[name | {node, name}]: offered as qemu:dirty-bitmap:NAME"},
    {NULL, 0, false, NULL}};
static const qmp_arg export_del_args[] = {
    {"id", QMP_STR, false, "export id"},
    {"mode", QMP_STR, true, "safe (default) or hard"},
    {NULL, 0, false, NULL}};
static const qmp_arg snap_internal_args[] = {
    {"device", QMP_STR, false, "the node"},
    {"name", QMP_STR, false, "snapshot name"},
    {NULL, 0, false, NULL}};
static const qmp_arg snap_delete_args[] = {
    {"device", QMP_STR, false, "the node"},
    {"id", QMP_STR, true, "snapshot id"},
    {"name", QMP_STR, true, "snapshot name"},
    {NULL, 0, false, NULL}};
static const qmp_arg snap_sync_args[] = {
    {"device", QMP_STR, true, "the node (legacy name)"},
    {"node-name", QMP_STR, true, "the node"},
    {"snapshot-file", QMP_STR, false, "the new overlay, created"},
    {"snapshot-node-name", QMP_STR, true, "accepted"},
    {"format", QMP_STR, true, "default qcow2"},
    {"mode", QMP_STR, true, "absolute-paths only"},
    {NULL, 0, false, NULL}};
static const qmp_arg snap_args[] = {
    {"node", QMP_STR, false, "the node to snapshot"},
    {"overlay", QMP_STR, false, "a node added with backing: null"},
    {NULL, 0, false, NULL}};
static const qmp_arg transaction_args[] = {
    {"actions", QMP_ARRAY, false, "[{type, data}]: blockdev-snapshot-internal-sync, "
                                  "blockdev-snapshot-sync, block-dirty-bitmap-add, "
                                  "-remove, -clear, -enable, -disable, -merge, "
                                  "blockdev-backup, drive-backup, abort"},
    {"properties", QMP_OBJ, true, "{completion-mode: individual | grouped}"},
    {NULL, 0, false, NULL}};

static const qmp_arg bitmap_add_args[] = {
    {"node", QMP_STR, false, "the node"},
    {"name", QMP_STR, false, "the bitmap"},
    {"granularity", QMP_ANY, true, "bytes a bit covers: a power of two, 512 B to 2 GiB"},
    {"persistent", QMP_BOOL, true, "stored in the image"},
    {"disabled", QMP_BOOL, true, "starts not recording"},
    {NULL, 0, false, NULL}};
static const qmp_arg bitmap_args[] = {
    {"node", QMP_STR, false, "the node"},
    {"name", QMP_STR, false, "the bitmap"},
    {NULL, 0, false, NULL}};
static const qmp_arg bitmap_merge_args[] = {
    {"node", QMP_STR, false, "the node"},
    {"target", QMP_STR, false, "the bitmap merged into"},
    {"bitmaps", QMP_ARRAY, false, "[name | {node, name}]"},
    {NULL, 0, false, NULL}};

static const qmp_command qmp_commands[] = {
    {"qmp_capabilities", cmd_qmp_capabilities, caps_args, false,
     "ends capability negotiation (first command of a session)"},
    {"query-version", cmd_query_version, no_args, false, "the QEMU version vdiskd speaks"},
    {"query-commands", cmd_query_commands, no_args, false, "the commands of this table"},
    {"quit", cmd_quit, no_args, false, "flushes and closes every image and exits"},
    {"blockdev-add", cmd_blockdev_add, NULL, true,
     "adds a node: driver file (filename), qcow2 or raw (file: nested or a node name); "
     "node-name, read-only, cache.direct, cache.no-flush, discard, backing: null"},
    {"blockdev-del", cmd_blockdev_del, blockdev_del_args, false,
     "removes a node nothing uses"},
    {"query-named-block-nodes", cmd_query_named_block_nodes, nodes_args, false,
     "every node (BlockDeviceInfo, image info with snapshots)"},
    {"query-block", cmd_query_block, no_args, false,
     "devices: none in a storage daemon (its nodes are in query-named-block-nodes)"},
    {"query-blockstats", cmd_query_blockstats, stats_args, false,
     "I/O accounting per node"},
    {"block_resize", cmd_block_resize, resize_args, false, "resizes a node (grow or shrink)"},
    {"nbd-server-start", cmd_nbd_server_start, nbd_start_args, false,
     "starts the NBD server on a unix socket or TCP"},
    {"nbd-server-stop", cmd_nbd_server_stop, no_args, false,
     "stops it and removes its exports"},
    {"block-export-add", cmd_block_export_add, export_add_args, false,
     "exports a node over NBD"},
    {"block-export-del", cmd_block_export_del, export_del_args, false,
     "removes an export (event BLOCK_EXPORT_DELETED)"},
    {"query-block-exports", cmd_query_block_exports, no_args, false, "the exports"},
    {"blockdev-snapshot-internal-sync", cmd_snapshot_internal, snap_internal_args, false,
     "internal snapshot of a node"},
    {"blockdev-snapshot-delete-internal-sync", cmd_snapshot_delete_internal,
     snap_delete_args, false, "deletes an internal snapshot; returns its SnapshotInfo"},
    {"blockdev-snapshot-sync", cmd_snapshot_sync, snap_sync_args, false,
     "external snapshot: creates the overlay file and moves the node onto it"},
    {"blockdev-snapshot", cmd_blockdev_snapshot, snap_args, false,
     "external snapshot onto an existing overlay node (added with backing: null)"},
    {"block-dirty-bitmap-add", cmd_bitmap_add, bitmap_add_args, false,
     "adds a dirty bitmap to a node"},
    {"block-dirty-bitmap-remove", cmd_bitmap_remove, bitmap_args, false, "removes one"},
    {"block-dirty-bitmap-clear", cmd_bitmap_clear, bitmap_args, false,
     "marks every bit clean"},
    {"block-dirty-bitmap-enable", cmd_bitmap_enable, bitmap_args, false,
     "starts recording writes"},
    {"block-dirty-bitmap-disable", cmd_bitmap_disable, bitmap_args, false,
     "stops recording writes"},
    {"block-dirty-bitmap-merge", cmd_bitmap_merge, bitmap_merge_args, false,
     "ORs bitmaps into a target"},
    {"transaction", cmd_transaction, transaction_args, false,
     "runs the actions as one all-or-nothing step"},
};
const qmp_command_table vdiskd_commands = {
    qmp_commands, sizeof(qmp_commands) / sizeof(qmp_commands[0]), &job_command_table,
    daemon_events_after_command, migration_before_command,
};
