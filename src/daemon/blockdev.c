/* vdiskd's side of the graph of nodes the engine keeps: blockdev-add and blockdev-del,
 * the daemon's handles on nodes, query-named-block-nodes' BlockDeviceInfo, and the TLS
 * credential objects. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "vdisk/snapshot.h"
#include "util/common.h"

daemon_state vdiskd;

const char *opt_str(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string)) {
        return NULL;
    }
    return json_object_get_string(v);
}

int opt_bool(json_object *o, const char *key, bool def, bool *out, vd_error **errp)
{
    json_object *v = NULL;
    *out = def;
    if (!o || !json_object_object_get_ex(o, key, &v)) {
        return 0;
    }
    if (json_object_is_type(v, json_type_boolean)) {
        *out = json_object_get_boolean(v);
        return 0;
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "yes")) {
            *out = true;
            return 0;
        }
        if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "no")) {
            *out = false;
            return 0;
        }
    }
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for '%s', "
                        "expected: boolean", key);
}

int blockdev_add(json_object *args, vd_error **errp)
{
    const char *driver = opt_str(args, "driver");
    if (!driver) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'driver' is missing");
    }
    if (!opt_str(args, "node-name")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'node-name' must be specified "
                            "for the root node");
    }
    if (!vd_driver_exists(driver)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'driver' does not "
                            "accept value '%s'", driver);
    }
    const char *text = json_object_to_json_string_ext(args, JSON_C_TO_STRING_PLAIN);
    vd_tree *t = NULL;
    int ret = vd_tree_parse_json(text, strlen(text), &t, errp);
    if (ret == 0) {
        /* The command line's dotted keys (file.driver=...) nest as QMP's objects do. */
        ret = vd_tree_crumple(t, errp);
    }
    if (ret == 0 && !strcmp(driver, "quorum")) {
        ret = quorum_options_check(t, errp);
    }
    if (ret < 0) {
        vd_tree_free(t);
        return ret;
    }
    /* QEMU's blockdev-add defaults: read-write, discard=ignore. */
    return vd_blockdev_add(vdiskd.engine, t, VD_OPEN_RDWR, errp);
}

dhandle *handle_of(const char *name)
{
    for (dhandle *h = vdiskd.handles; h && name; h = h->next) {
        const char *n = vd_disk_node_name(h->disk);
        if (n && !strcmp(n, name)) {
            return h;
        }
    }
    return NULL;
}

int node_handle(const char *name, dhandle **out, vd_error **errp)
{
    dhandle *h = handle_of(name);
    if (!h) {
        vd_disk *d = NULL;
        int ret = vd_blockdev_open(vdiskd.engine, name, &d, errp);
        if (ret < 0) {
            return ret;
        }
        h = calloc(1, sizeof(*h));
        if (!h) {
            abort();
        }
        h->disk = d;
        h->next = vdiskd.handles;
        vdiskd.handles = h;
    }
    *out = h;
    return 0;
}

static int handle_close(dhandle *h)
{
    for (dhandle **p = &vdiskd.handles; *p; p = &(*p)->next) {
        if (*p == h) {
            *p = h->next;
            break;
        }
    }
    int ret = vd_close(h->disk);
    free(h);
    return ret;
}

int blockdev_del(const char *name, vd_error **errp)
{
    dhandle *h = handle_of(name);
    if (h && h->users == 0) {
        handle_close(h);
    }
    return vd_blockdev_del(vdiskd.engine, name, errp);
}

void handles_close_idle_nested(void)
{
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    vd_blockdev_list(vdiskd.engine, &list, &nb);
    for (dhandle **p = &vdiskd.handles, *h; (h = *p);) {
        const char *name = vd_disk_node_name(h->disk);
        bool added = false;
        for (size_t i = 0; name && i < nb; i++) {
            added |= !strcmp(list[i].node_name, name) && list[i].added;
        }
        if (h->users == 0 && !added) {
            handle_close(h);    /* unlinks h: *p is the next one now */
        } else {
            p = &h->next;
        }
    }
    vd_blockdev_list_free(list, nb);
}

void nodes_close_all(void)
{
    /* The handles first (they flush); the engine then closes the nodes. */
    while (vdiskd.handles) {
        handle_close(vdiskd.handles);
    }
}

/* ---- query-named-block-nodes ------------------------------------------------------------- */

static json_object *image_info(const vd_blockdev_info *i, vd_disk *d)
{
    json_object *img = json_object_new_object();
    vd_image_info info;
    memset(&info, 0, sizeof(info));
    vd_error *err = NULL;
    if (d && vd_get_info(d, &info, &err) == 0) {
        json_object_object_add(img, "virtual-size", json_object_new_int64((int64_t)info.virtual_size));
        json_object_object_add(img, "filename", json_object_new_string(i->filename));
        if (info.has_cluster_size) {
            json_object_object_add(img, "cluster-size",
                                   json_object_new_int64((int64_t)info.cluster_size));
        }
        json_object_object_add(img, "format", json_object_new_string(info.format));
        json_object_object_add(img, "actual-size", json_object_new_int64((int64_t)info.actual_size));
        json_object_object_add(img, "dirty-flag", json_object_new_boolean(info.dirty_flag));
        if (info.backing_filename) {
            json_object_object_add(img, "backing-filename",
                                   json_object_new_string(info.backing_filename));
        }
        vd_image_info_clear(&info);
    } else {
        vd_error_free(err);
        json_object_object_add(img, "filename", json_object_new_string(i->filename));
        json_object_object_add(img, "format", json_object_new_string(i->driver));
    }
    vd_snapshot_info *list = NULL;
    size_t nb = 0;
    err = NULL;
    if (d && vd_snapshot_list(d, &list, &nb, &err) == 0 && nb) {
        json_object *arr = json_object_new_array();
        for (size_t k = 0; k < nb; k++) {
            json_object *s = json_object_new_object();
            json_object_object_add(s, "id", json_object_new_string(list[k].id));
            json_object_object_add(s, "name", json_object_new_string(list[k].name));
            json_object_object_add(s, "vm-state-size",
                                   json_object_new_int64((int64_t)list[k].vm_state_size));
            json_object_object_add(s, "date-sec", json_object_new_int64(list[k].date_sec));
            json_object_object_add(s, "date-nsec", json_object_new_int64(list[k].date_nsec));
            json_object_object_add(s, "vm-clock-sec",
                                   json_object_new_int64((int64_t)(list[k].vm_clock_nsec / 1000000000u)));
            json_object_object_add(s, "vm-clock-nsec",
                                   json_object_new_int64((int64_t)(list[k].vm_clock_nsec % 1000000000u)));
            if (list[k].icount != -1) {
                json_object_object_add(s, "icount", json_object_new_int64(list[k].icount));
            }
            json_object_array_add(arr, s);
        }
        json_object_object_add(img, "snapshots", arr);
    }
    vd_error_free(err);
    vd_snapshot_list_free(list, nb);
    return img;
}

json_object *node_info(const vd_blockdev_info *i)
{
    /* A handle for the moment of the query: it claims nothing. */
    vd_disk *d = NULL;
    if (vd_blockdev_open(vdiskd.engine, i->node_name, &d, NULL) < 0) {
        d = NULL;
    }
    json_object *o = json_object_new_object();
    static const char *const zero[] = {"iops_rd", "iops_wr", "iops", "bps_wr", "bps",
                                       "bps_rd", "write_threshold", NULL};
    for (const char *const *z = zero; *z; z++) {
        json_object_object_add(o, *z, json_object_new_int(0));
    }
    json_object_object_add(o, "detect_zeroes", json_object_new_string("off"));
    json_object_object_add(o, "image", image_info(i, d));
    json_object_object_add(o, "ro", json_object_new_boolean(i->read_only));
    json_object_object_add(o, "node-name", json_object_new_string(i->node_name));
    json_object_object_add(o, "backing_file_depth", json_object_new_int(0));
    json_object_object_add(o, "drv", json_object_new_string(i->driver));
    json_object_object_add(o, "encrypted", json_object_new_boolean(false));
    json_object *cache = json_object_new_object();
    json_object_object_add(cache, "no-flush", json_object_new_boolean(i->no_flush));
    json_object_object_add(cache, "direct", json_object_new_boolean(i->direct));
    json_object_object_add(cache, "writeback", json_object_new_boolean(true));
    json_object_object_add(o, "cache", cache);
    json_object_object_add(o, "file", json_object_new_string(i->filename));
    json_object *bitmaps = dirty_bitmaps_json(i->node_name);
    if (bitmaps) {
        json_object_object_add(o, "dirty-bitmaps", bitmaps);
    }
    vd_close(d);
    return o;
}

/* ---- TLS objects ---------------------------------------------------------------------------- */

vd_tls_creds *tls_find(const char *id)
{
    for (dtls *t = vdiskd.tls; t && id; t = t->next) {
        if (strcmp(t->id, id) == 0) {
            return t->creds;
        }
    }
    return NULL;
}

int tls_object_add(json_object *args, vd_error **errp)
{
    const char *type = opt_str(args, "qom-type");
    const char *id = opt_str(args, "id");
    const char *dir = opt_str(args, "dir");
    const char *endpoint = opt_str(args, "endpoint");
    if (!type || !id) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is missing",
                            !type ? "qom-type" : "id");
    }
    if (tls_find(id)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "attempt to add duplicate "
                            "property '%s' to object (type 'container')", id);
    }
    if (vd_engine_tls_client_creds(vdiskd.engine, id)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "attempt to add duplicate "
                            "property '%s' to object (type 'container')", id);
    }
    if (endpoint && strcmp(endpoint, "server") && strcmp(endpoint, "client")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'endpoint' does not "
                            "accept value '%s'", endpoint);
    }
    if (endpoint && !strcmp(endpoint, "client")) {
        /* Client credentials live in the engine: NBD client nodes and migrate use them. */
        bool psk = !strcmp(type, "tls-creds-psk");
        if (!psk && strcmp(type, "tls-creds-x509")) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'", type);
        }
        bool verify = true;
        int r = opt_bool(args, "verify-peer", true, &verify, errp);
        if (r < 0) {
            return r;
        }
        vd_tls_client_creds cc = {.id = id, .psk = psk, .dir = dir, .verify_peer = verify,
                                  .username = opt_str(args, "username")};
        return vd_engine_add_tls_client_creds(vdiskd.engine, &cc, errp);
    }
    vd_tls_creds *c = NULL;
    int ret;
    if (!strcmp(type, "tls-creds-x509")) {
        /* QEMU's default: clients must show a certificate the CA signed. */
        bool verify = true;
        ret = opt_bool(args, "verify-peer", true, &verify, errp);
        if (ret == 0) {
            ret = vd_tls_creds_new_x509(id, dir, verify, &c, errp);
        }
    } else if (!strcmp(type, "tls-creds-psk")) {
        ret = vd_tls_creds_new_psk(id, dir, &c, errp);
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'", type);
    }
    if (ret < 0) {
        return ret;
    }
    dtls *t = calloc(1, sizeof(*t));
    if (!t) {
        abort();
    }
    t->id = vd_xstrdup(id);
    t->creds = c;
    t->next = vdiskd.tls;
    vdiskd.tls = t;
    return 0;
}
