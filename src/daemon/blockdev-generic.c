/* blockdev-add for every driver the library opens from options (nbd, null-co, blkdebug,
 * copy-on-read, compress, raw with offset/size, qcow2 with its options or a nested graph):
 * the arguments go to the library as one json: name, and the node registry keeps the open
 * disk. A child given as the name of a file node is replaced by that file's options (the
 * library's nodes are not shared between graphs yet); a child naming another kind of node
 * is refused. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"

/* The child references the library may meet, in QEMU's names. */
static const char *const child_keys[] = {"file", "image", "backing", NULL};

/* Replaces a child given by node name with its options; *used gets the node it named. */
static int resolve_refs(json_object *args, dnode **used, vd_error **errp)
{
    *used = NULL;
    for (const char *const *k = child_keys; *k; k++) {
        json_object *v = NULL;
        if (!json_object_object_get_ex(args, *k, &v) || !json_object_is_type(v, json_type_string)) {
            continue;
        }
        const char *ref = json_object_get_string(v);
        dnode *n = node_find(ref);
        if (!n) {
            return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Cannot find device='' nor "
                                "node-name='%s'", ref);
        }
        if (strcmp(n->driver, "file") || *used) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "'%s': only a file node "
                                "can be named as a child here", ref);
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "driver", json_object_new_string("file"));
        json_object_object_add(o, "filename", json_object_new_string(n->filename));
        json_object_object_add(args, *k, o);
        *used = n;
    }
    return 0;
}

int blockdev_add_generic(json_object *args, const char *name, vd_error **errp)
{
    /* Work on a copy: the caller's arguments stay as given. */
    json_object *copy = json_tokener_parse(json_object_to_json_string(args));
    if (!copy) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    dnode *file = NULL;
    int ret = resolve_refs(copy, &file, errp);
    char *json = NULL;
    if (ret == 0 &&
        asprintf(&json, "json:%s", json_object_to_json_string_ext(copy, JSON_C_TO_STRING_PLAIN)) < 0) {
        abort();
    }
    json_object_put(copy);
    if (ret < 0) {
        return ret;
    }
    bool ro = false;
    ret = opt_bool(args, "read-only", false, &ro, errp);
    vd_disk *disk = NULL;
    if (ret == 0) {
        /* The options say the rest (cache, discard, ...); QEMU's blockdev-add defaults are
         * read-write and discard=ignore. */
        vd_open_opts o = {.flags = ro ? 0 : VD_OPEN_RDWR};
        ret = vd_open(vdiskd.engine, json, &o, &disk, errp);
    }
    free(json);
    if (ret < 0) {
        return ret;
    }
    dnode *n = calloc(1, sizeof(*n));
    if (!n) {
        abort();
    }
    n->name = strdup(name);
    n->driver = strdup(vd_disk_format(disk));
    n->filename = strdup(vd_disk_filename(disk));
    if (!n->name || !n->driver || !n->filename) {
        abort();
    }
    n->disk = disk;
    n->owns_disk = true;
    n->read_only = ro;
    n->flags = ro ? 0 : VD_OPEN_RDWR;
    n->file = file;
    if (file) {
        file->users++;
    }
    node_add(n);
    return 0;
}
