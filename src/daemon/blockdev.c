/* vdiskd's node registry: blockdev-add (file nodes, and qcow2/raw nodes over a nested or
 * named file node), blockdev-del, node lookup and query-named-block-nodes' BlockDeviceInfo,
 * and the TLS credential objects. */
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

/* A member that may be given flat ("cache.direct") or nested ({"cache": {"direct": ..}}). */
static json_object *sub(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_object)
               ? v : NULL;
}

dnode *node_find(const char *name)
{
    for (dnode *n = vdiskd.nodes; n && name; n = n->next) {
        if (strcmp(n->name, name) == 0) {
            return n;
        }
    }
    return NULL;
}

void node_add(dnode *n)
{
    dnode **p = &vdiskd.nodes;
    while (*p) {
        p = &(*p)->next;
    }
    *p = n;
}

static void node_free(dnode *n)
{
    free(n->name);
    free(n->driver);
    free(n->filename);
    free(n);
}

static const char *const file_keys[] = {"driver", "node-name", "filename", "read-only",
                                        "cache", "discard", "aio", "locking",
                                        "auto-read-only", "detect-zeroes", NULL};
static const char *const format_keys[] = {"driver", "node-name", "file", "backing",
                                          "read-only", "cache", "discard", "auto-read-only",
                                          "detect-zeroes", "force-share", NULL};

static int check_keys(json_object *args, const char *const *keys, vd_error **errp)
{
    json_object_object_foreach(args, k, v) {
        (void)v;
        bool known = false;
        for (const char *const *p = keys; *p; p++) {
            known |= strcmp(*p, k) == 0;
        }
        if (!known) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is unexpected",
                                k);
        }
    }
    return 0;
}

/* Options both kinds share: read-only, cache.direct, cache.no-flush, discard. */
static int common_opts(json_object *args, dnode *n, vd_error **errp)
{
    json_object *cache = sub(args, "cache");
    int ret = opt_bool(args, "read-only", false, &n->read_only, errp);
    if (ret == 0) {
        ret = opt_bool(cache, "direct", false, &n->direct, errp);
    }
    if (ret == 0) {
        ret = opt_bool(cache, "no-flush", false, &n->no_flush, errp);
    }
    if (ret < 0) {
        return ret;
    }
    const char *discard = opt_str(args, "discard");
    if (discard && strcmp(discard, "unmap") && strcmp(discard, "on") &&
        strcmp(discard, "ignore") && strcmp(discard, "off")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'discard' does not "
                            "accept value '%s'", discard);
    }
    n->flags = (n->read_only ? 0 : VD_OPEN_RDWR) | (n->direct ? VD_OPEN_NOCACHE : 0) |
               (n->no_flush ? VD_OPEN_NO_FLUSH : 0) |
               (discard && (!strcmp(discard, "unmap") || !strcmp(discard, "on"))
                    ? VD_OPEN_UNMAP : 0);
    return 0;
}

static int add_file_node(json_object *args, const char *name, bool auto_name, dnode **out,
                         vd_error **errp)
{
    int ret = check_keys(args, file_keys, errp);
    if (ret < 0) {
        return ret;
    }
    const char *filename = opt_str(args, "filename");
    if (!filename) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'filename' is missing");
    }
    dnode *n = calloc(1, sizeof(*n));
    if (!n) {
        abort();
    }
    n->name = vd_xstrdup(name);
    n->auto_name = auto_name;
    n->driver = vd_xstrdup("file");
    n->filename = vd_xstrdup(filename);
    ret = common_opts(args, n, errp);
    if (ret < 0) {
        node_free(n);
        return ret;
    }
    node_add(n);
    *out = n;
    return 0;
}

/* The shapes this registry opens lazily by itself: a file node, or qcow2/raw over a file
 * node (nested or named) with the options every node takes. Anything else goes to the
 * library whole (blockdev-generic.c). */
static bool legacy_shape(json_object *args, const char *driver)
{
    if (!strcmp(driver, "file")) {
        return check_keys(args, file_keys, NULL) == 0;
    }
    if ((strcmp(driver, "qcow2") && strcmp(driver, "raw")) ||
        check_keys(args, format_keys, NULL) < 0) {
        return false;
    }
    json_object *fv = NULL, *bv = NULL;
    if (json_object_object_get_ex(args, "backing", &bv) && bv &&
        !(json_object_is_type(bv, json_type_string) &&
          !strcmp(json_object_get_string(bv), "null"))) {
        return false;
    }
    if (!json_object_object_get_ex(args, "file", &fv) || json_object_is_type(fv, json_type_string)) {
        return true;  /* a missing file is refused below, with QEMU's message */
    }
    const char *fd = json_object_is_type(fv, json_type_object) ? opt_str(fv, "driver") : NULL;
    return fd && !strcmp(fd, "file") && check_keys(fv, file_keys, NULL) == 0;
}

int blockdev_add(json_object *args, vd_error **errp)
{
    const char *driver = opt_str(args, "driver");
    const char *name = opt_str(args, "node-name");
    if (!driver) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'driver' is missing");
    }
    if (!name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'node-name' must be specified "
                            "for the root node");
    }
    if (!*name || strlen(name) > 31 || name[0] == '#') {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid node-name: '%s'", name);
    }
    if (node_find(name)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Duplicate nodes with "
                            "node-name='%s'", name);
    }
    if (!vd_driver_exists(driver)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'driver' does not "
                            "accept value '%s'", driver);
    }
    if (!legacy_shape(args, driver)) {
        return blockdev_add_generic(args, name, errp);
    }
    dnode *file = NULL;
    if (!strcmp(driver, "file")) {
        return add_file_node(args, name, false, &file, errp);
    }
    int ret = check_keys(args, format_keys, errp);
    if (ret < 0) {
        return ret;
    }
    json_object *fv = NULL;
    if (!json_object_object_get_ex(args, "file", &fv)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'file' is missing");
    }
    json_object *bv = NULL;
    bool no_backing = false;
    if (json_object_object_get_ex(args, "backing", &bv)) {
        if (bv == NULL || (json_object_is_type(bv, json_type_string) &&
                           !strcmp(json_object_get_string(bv), "null"))) {
            no_backing = true;
        } else {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "backing: only null is "
                                "supported (the backing chain is opened from the image)");
        }
    }
    bool made_file = false;
    if (json_object_is_type(fv, json_type_string)) {
        file = node_find(json_object_get_string(fv));
        if (!file || strcmp(file->driver, "file")) {
            return vd_error_set(errp, VD_ERR_INVALID, ENOENT, "Cannot find device='' nor "
                                "node-name='%s'", json_object_get_string(fv));
        }
    } else if (json_object_is_type(fv, json_type_object)) {
        const char *fd = opt_str(fv, "driver");
        if (!fd || strcmp(fd, "file")) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "file: only driver 'file' is "
                                "supported");
        }
        const char *fname = opt_str(fv, "node-name");
        char autoname[32];
        if (!fname) {
            snprintf(autoname, sizeof(autoname), "#block%03u", vdiskd.next_auto++);
            fname = autoname;
        } else if (node_find(fname)) {
            return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Duplicate nodes with "
                                "node-name='%s'", fname);
        }
        ret = add_file_node(fv, fname, fname == autoname, &file, errp);
        if (ret < 0) {
            return ret;
        }
        made_file = true;
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'file', expected: BlockdevRef");
    }
    dnode *n = calloc(1, sizeof(*n));
    if (!n) {
        abort();
    }
    n->name = vd_xstrdup(name);
    n->driver = vd_xstrdup(driver);
    n->filename = vd_xstrdup(file->filename);
    n->file = file;
    ret = common_opts(args, n, errp);
    if (ret == 0) {
        if (file->read_only && !n->read_only) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EACCES, "Block node is read-only");
        }
    }
    if (ret == 0) {
        unsigned flags = n->flags | (file->flags & (VD_OPEN_NOCACHE | VD_OPEN_NO_FLUSH |
                                                    VD_OPEN_UNMAP)) |
                         (no_backing ? VD_OPEN_NO_BACKING : 0);
        vd_open_opts o = {.format = driver, .flags = flags};
        ret = vd_open(vdiskd.engine, file->filename, &o, &n->disk, errp);
        n->flags = flags;
    }
    if (ret < 0) {
        node_free(n);
        if (made_file) {
            blockdev_del(file->name, NULL);
        }
        return ret;
    }
    n->owns_disk = true;
    file->users++;
    node_add(n);
    return 0;
}

int blockdev_del(const char *name, vd_error **errp)
{
    dnode *n = node_find(name);
    if (!n) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Failed to find node with "
                            "node-name='%s'", name);
    }
    if (n->users) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node %s is in use", name);
    }
    for (dnode **p = &vdiskd.nodes; *p; p = &(*p)->next) {
        if (*p == n) {
            *p = n->next;
            break;
        }
    }
    int ret = 0;
    if (n->disk && n->owns_disk) {
        ret = vd_close(n->disk);
    }
    dnode *file = n->file;
    dnode *backing = n->backing;
    node_free(n);
    if (backing) {
        /* The image under it closed with the overlay's handle. */
        backing->users--;
        backing->disk = NULL;
    }
    if (file) {
        file->users--;
        if (file->auto_name && file->users == 0) {
            blockdev_del(file->name, NULL);
        }
    }
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "Could not close '%s': %s", name,
                            strerror(-ret));
    }
    return 0;
}

int node_disk(dnode *n, vd_disk **out, vd_error **errp)
{
    if (!n->disk) {
        /* A file node is read as raw; a format node whose overlay went away reopens. */
        vd_open_opts o = {.format = n->file ? n->driver : "raw", .flags = n->flags};
        int ret = vd_open(vdiskd.engine, n->filename, &o, &n->disk, errp);
        if (ret < 0) {
            return ret;
        }
        n->owns_disk = true;
    }
    *out = n->disk;
    return 0;
}

void nodes_close_all(void)
{
    /* Top nodes first: a format node before the file node below it. */
    while (vdiskd.nodes) {
        dnode *n = vdiskd.nodes;
        dnode *top = NULL;
        for (dnode *m = vdiskd.nodes; m; m = m->next) {
            if (m->users == 0) {
                top = m;
                break;
            }
        }
        if (!top) {
            top = n;
            top->users = 0;
        }
        blockdev_del(top->name, NULL);
    }
}

/* ---- query-named-block-nodes ------------------------------------------------------------- */

static json_object *image_info(dnode *n)
{
    json_object *img = json_object_new_object();
    vd_image_info info;
    memset(&info, 0, sizeof(info));
    vd_error *err = NULL;
    if (n->disk && vd_get_info(n->disk, &info, &err) == 0) {
        json_object_object_add(img, "virtual-size", json_object_new_int64((int64_t)info.virtual_size));
        json_object_object_add(img, "filename", json_object_new_string(n->filename));
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
        json_object_object_add(img, "filename", json_object_new_string(n->filename));
        json_object_object_add(img, "format", json_object_new_string(n->driver));
    }
    vd_snapshot_info *list = NULL;
    size_t nb = 0;
    err = NULL;
    if (n->disk && vd_snapshot_list(n->disk, &list, &nb, &err) == 0 && nb) {
        json_object *arr = json_object_new_array();
        for (size_t i = 0; i < nb; i++) {
            json_object *s = json_object_new_object();
            json_object_object_add(s, "id", json_object_new_string(list[i].id));
            json_object_object_add(s, "name", json_object_new_string(list[i].name));
            json_object_object_add(s, "vm-state-size",
                                   json_object_new_int64((int64_t)list[i].vm_state_size));
            json_object_object_add(s, "date-sec", json_object_new_int64(list[i].date_sec));
            json_object_object_add(s, "date-nsec", json_object_new_int64(list[i].date_nsec));
            json_object_object_add(s, "vm-clock-sec",
                                   json_object_new_int64((int64_t)(list[i].vm_clock_nsec / 1000000000u)));
            json_object_object_add(s, "vm-clock-nsec",
                                   json_object_new_int64((int64_t)(list[i].vm_clock_nsec % 1000000000u)));
            if (list[i].icount != -1) {
                json_object_object_add(s, "icount", json_object_new_int64(list[i].icount));
            }
            json_object_array_add(arr, s);
        }
        json_object_object_add(img, "snapshots", arr);
    }
    vd_error_free(err);
    vd_snapshot_list_free(list, nb);
    return img;
}

json_object *node_info(dnode *n)
{
    json_object *o = json_object_new_object();
    static const char *const zero[] = {"iops_rd", "iops_wr", "iops", "bps_wr", "bps",
                                       "bps_rd", "write_threshold", NULL};
    for (const char *const *z = zero; *z; z++) {
        json_object_object_add(o, *z, json_object_new_int(0));
    }
    json_object_object_add(o, "detect_zeroes", json_object_new_string("off"));
    json_object_object_add(o, "image", image_info(n));
    json_object_object_add(o, "ro", json_object_new_boolean(n->read_only));
    json_object_object_add(o, "node-name", json_object_new_string(n->name));
    json_object_object_add(o, "backing_file_depth", json_object_new_int(0));
    json_object_object_add(o, "drv", json_object_new_string(n->driver));
    json_object_object_add(o, "encrypted", json_object_new_boolean(false));
    json_object *cache = json_object_new_object();
    json_object_object_add(cache, "no-flush", json_object_new_boolean(n->no_flush));
    json_object_object_add(cache, "direct", json_object_new_boolean(n->direct));
    json_object_object_add(cache, "writeback", json_object_new_boolean(true));
    json_object_object_add(o, "cache", cache);
    json_object_object_add(o, "file", json_object_new_string(n->filename));
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
    if (endpoint && strcmp(endpoint, "server")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Expecting TLS credentials with "
                            "a server endpoint");
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
