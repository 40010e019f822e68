/* Opening node graphs from options trees of QEMU's blockdev shape: the options every node
 * takes, the choice of driver (given, or probed from a filename), a format's file child
 * (nested options or a filename), and the check that no option is left unread. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/blkdebug.h"
#include "block/block.h"
#include "block/engine.h"

/* Options the core reads for every node, whatever its driver. */
static const char *const common_opts[] = {
    "driver", "node-name", "read-only", "auto-read-only", "force-share", "cache",
    "discard", "detect-zeroes", NULL,
};

static bool in_list(const char *const *list, const char *key)
{
    for (; list && *list; list++) {
        if (!strcmp(*list, key)) {
            return true;
        }
    }
    return false;
}

int vd_json_filename(const char *filename, vd_tree **out, vd_error **errp)
{
    const char *text = filename + strlen("json:");
    vd_tree *t = NULL;
    int ret = vd_tree_parse_json(text, strlen(text), &t, errp);
    if (ret < 0) {
        vd_error_prepend(errp, "Could not parse the JSON options");
        return ret;
    }
    if (vd_tree_type_of(t) != VD_TREE_OBJECT) {
        vd_tree_free(t);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid JSON object given");
    }
    /* Dotted keys inside json: are allowed, as QEMU flattens and crumples them. */
    ret = vd_tree_crumple(t, errp);
    if (ret < 0) {
        vd_tree_free(t);
        return ret;
    }
    *out = t;
    return 0;
}

/* QEMU's node-name rule: a letter first, then letters, digits, '-', '.', '_'; at most 31
 * characters. */
/* The options every node takes, applied to flags. */
static int common_flags(const vd_tree *t, unsigned *flags, vd_error **errp)
{
    bool ro, direct, no_flush;
    const char *discard, *dz, *name;
    const vd_tree *cache = vd_tree_get(t, "cache");
    int ret = vd_tree_get_bool(t, "read-only", "read-only", !(*flags & VD_OPEN_RDWR), &ro,
                               errp);
    if (ret == 0 && cache && vd_tree_type_of(cache) != VD_TREE_OBJECT) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                           "'cache', expected: object");
    }
    if (ret == 0) {
        ret = vd_tree_get_bool(cache, "direct", "cache.direct",
                               (*flags & VD_OPEN_NOCACHE) != 0, &direct, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_bool(cache, "no-flush", "cache.no-flush",
                               (*flags & VD_OPEN_NO_FLUSH) != 0, &no_flush, errp);
    }
    for (size_t i = 0; ret == 0 && i < vd_tree_size(cache); i++) {
        if (strcmp(vd_tree_key(cache, i), "direct") && strcmp(vd_tree_key(cache, i),
                                                              "no-flush")) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter 'cache.%s'",
                               vd_tree_key(cache, i));
        }
    }
    bool ignored;  /* vdisk takes no locks and never turns read-write by itself */
    if (ret == 0) {
        ret = vd_tree_get_bool(t, "auto-read-only", "auto-read-only", false, &ignored, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_bool(t, "force-share", "force-share", false, &ignored, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(t, "discard", "discard", &discard, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(t, "detect-zeroes", "detect-zeroes", &dz, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(t, "node-name", "node-name", &name, errp);
    }
    if (ret < 0) {
        return ret;
    }
    if (name && !vd_node_name_valid(name)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid node-name: '%s'", name);
    }
    if (discard && strcmp(discard, "ignore") && strcmp(discard, "off") &&
        strcmp(discard, "unmap") && strcmp(discard, "on")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid discard option");
    }
    if (dz && strcmp(dz, "off")) {
        if (strcmp(dz, "on") && strcmp(dz, "unmap")) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'detect-zeroes' "
                                "does not accept value '%s'", dz);
        }
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "detect-zeroes=%s is not "
                            "supported by vdisk", dz);
    }
    *flags = ro ? *flags & ~(unsigned)VD_OPEN_RDWR : *flags | VD_OPEN_RDWR;
    *flags = direct ? *flags | VD_OPEN_NOCACHE : *flags & ~(unsigned)VD_OPEN_NOCACHE;
    *flags = no_flush ? *flags | VD_OPEN_NO_FLUSH : *flags & ~(unsigned)VD_OPEN_NO_FLUSH;
    if (discard) {
        *flags = !strcmp(discard, "unmap") || !strcmp(discard, "on")
                     ? *flags | VD_OPEN_UNMAP : *flags & ~(unsigned)VD_OPEN_UNMAP;
    }
    return 0;
}

/* Every key left in t must be the driver's own or one every node takes. */
static int check_unknown(const vd_driver *drv, const vd_tree *t, const char *const *extra,
                         vd_error **errp)
{
    for (size_t i = 0; i < vd_tree_size(t); i++) {
        const char *k = vd_tree_key(t, i);
        if (!in_list(common_opts, k) && !in_list(drv->runtime_opts, k) && !in_list(extra, k)) {
            if (drv->qapi_options) {
                return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is "
                                    "unexpected", k);
            }
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, drv->is_format
                                ? "Block format '%s' does not support the option '%s'"
                                : "Block protocol '%s' doesn't support the option '%s'",
                                drv->name, k);
        }
    }
    return 0;
}

static int open_tree(vd_engine *e, vd_tree *t, unsigned flags, vd_node *overlay,
                     bool probe, vd_node **out, vd_error **errp);
static int open_tree_named(vd_engine *e, vd_tree *t, unsigned flags, vd_node *overlay,
                           bool probe, vd_node **out, vd_error **errp);

/* A protocol node from a filename (prefixes such as blkdebug: work as on the command
 * line) with the options given beside it (t: consumed), e.g. file.align with a
 * blkdebug:: filename. */
static int open_filename(vd_engine *e, const char *filename, vd_tree *t, unsigned flags,
                         vd_node **out, vd_error **errp)
{
    vd_node *n = NULL;
    int ret = vd_node_open_file(e, filename, flags, &n, errp);
    if (ret == 0 && vd_tree_size(t) > 0) {
        ret = check_unknown(n->drv, t, (const char *const[]){"filename", NULL}, errp);
        if (ret == 0 && n->drv == &vd_blkdebug_driver) {
            ret = vd_blkdebug_set_options(n, t, errp);
        }
        if (ret < 0) {
            vd_node_close(n);
        }
    }
    vd_tree_free(t);
    if (ret == 0) {
        *out = n;
    }
    return ret;
}

/* The "file" child of a format node: nested options, or the "filename" beside them. */
static int open_file_child(vd_engine *e, vd_tree *t, unsigned flags, vd_node **out,
                           vd_error **errp)
{
    vd_tree *file = vd_tree_take(t, "file");
    vd_tree *fname = vd_tree_take(t, "filename");
    int ret = file ? vd_child_options_check(e, file, "file", out, errp) : 0;
    if (ret > 0) {
        /* A named node, shared. */
        vd_tree_free(fname);
        return 0;
    }
    if (ret == 0 && fname && vd_tree_type_of(fname) != VD_TREE_STRING) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                           "'filename', expected: string");
        vd_tree_free(file);
    }
    if (ret < 0) {
        vd_tree_free(fname);
        return ret;
    }
    if (!file) {
        file = vd_tree_new(VD_TREE_OBJECT);
    }
    if (fname && vd_tree_get(file, "filename")) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot specify both 'filename' "
                           "and 'file.filename'");
        vd_tree_free(file);
    } else if (fname && !vd_tree_get(file, "driver")) {
        ret = open_filename(e, vd_tree_string(fname), file, flags, out, errp);
    } else if (fname) {
        /* The filename is the file child's, whose driver is given. */
        vd_tree_put(file, "filename", vd_tree_clone(fname));
        ret = open_tree_named(e, file, flags, NULL, false, out, errp);
    } else if (vd_tree_size(file) == 0) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "A block device must be specified "
                           "for \"file\"");
        vd_tree_free(file);
    } else {
        ret = open_tree_named(e, file, flags, NULL, false, out, errp);
    }
    vd_tree_free(fname);
    return ret;
}

/* A json: name given as "filename" beside other options: both count, and the options given
 * directly win (as in QEMU). */
static int merge_json_filename(vd_tree *t, vd_error **errp)
{
    const char *name = vd_tree_string(vd_tree_get(t, "filename"));
    if (!name || strncmp(name, "json:", 5)) {
        return 0;
    }
    vd_tree *j = NULL;
    int ret = vd_json_filename(name, &j, errp);
    if (ret < 0) {
        return ret;
    }
    vd_tree_free(vd_tree_take(t, "filename"));
    for (size_t i = 0; i < vd_tree_size(j); i++) {
        const char *k = vd_tree_key(j, i);
        if (!vd_tree_get(t, k)) {
            vd_tree_put(t, k, vd_tree_clone(vd_tree_at(j, i)));
        }
    }
    vd_tree_free(j);
    return 0;
}

/* open_tree, which also keeps the node's "node-name" on the node it opened. */
static int open_tree_named(vd_engine *e, vd_tree *t, unsigned flags, vd_node *overlay,
                           bool probe, vd_node **out, vd_error **errp)
{
    const char *given = vd_tree_string(vd_tree_get(t, "node-name"));
    char *name = given ? strdup(given) : NULL;
    if (given && !name) {
        abort();
    }
    int ret = open_tree(e, t, flags, overlay, probe, out, errp);
    if (ret == 0 && name) {
        free((*out)->node_name);
        (*out)->node_name = name;
        name = NULL;
    }
    free(name);
    return ret;
}

static int open_tree(vd_engine *e, vd_tree *t, unsigned flags, vd_node *overlay,
                     bool probe, vd_node **out, vd_error **errp)
{
    const char *driver = NULL, *filename = NULL;
    int ret = merge_json_filename(t, errp);
    if (ret < 0) {
        vd_tree_free(t);
        return ret;
    }
    ret = common_flags(t, &flags, errp);
    if (ret == 0) {
        ret = vd_tree_get_str(t, "driver", "driver", &driver, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(t, "filename", "filename", &filename, errp);
    }
    if (ret < 0) {
        vd_tree_free(t);
        return ret;
    }
    const vd_driver *drv = NULL;
    if (driver) {
        drv = vd_driver_find(driver);
        if (!drv) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unknown driver '%s'", driver);
            vd_tree_free(t);
            return ret;
        }
    } else if (!filename && !vd_tree_get(t, "file")) {
        vd_tree_free(t);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Must specify either driver or "
                            "filename");
    } else if (!probe && filename) {
        /* A protocol node named by its filename alone. */
        char *name = strdup(filename);
        vd_tree_free(vd_tree_take(t, "filename"));
        ret = open_filename(e, name, t, flags, out, errp);
        free(name);
        return ret;
    }

    /* A filter that has no file name of its own passes one on to its "file" child, as
     * QEMU does (open -o driver=copy-on-read,file.driver=qcow2 FILE). */
    if (drv && !drv->is_format && filename && !in_list(drv->runtime_opts, "filename") &&
        in_list(drv->runtime_opts, "file")) {
        vd_tree *child = vd_tree_get(t, "file");
        if (!child) {
            child = vd_tree_new(VD_TREE_OBJECT);
            vd_tree_put(t, "file", child);
        }
        if (vd_tree_type_of(child) == VD_TREE_OBJECT && !vd_tree_get(child, "filename") &&
            !vd_tree_get(child, "file")) {
            vd_tree_put(child, "filename", vd_tree_take(t, "filename"));
            filename = NULL;
        }
    }
    vd_node *file = NULL;
    if (!drv || drv->is_format) {
        ret = open_file_child(e, t, flags, &file, errp);
        if (ret == 0 && !drv) {
            const char *fmt = NULL;
            ret = vd_node_probe_format(file, &fmt, errp);
            drv = ret == 0 ? vd_driver_find(fmt) : NULL;
        }
        if (ret < 0) {
            vd_tree_free(t);
            return ret;
        }
    }
    ret = check_unknown(drv, t, (const char *const[]){"backing", drv->is_format ? NULL :
                                                      "filename", NULL}, errp);
    if (ret < 0) {
        vd_node_close(file);
        vd_tree_free(t);
        return ret;
    }
    const char *name = file ? file->filename : filename ? filename : drv->name;
    vd_node *n = vd_node_alloc(e, drv, name, flags);
    n->file = file;
    n->overlay = overlay;
    n->options = t;
    n->realpath = file && file->realpath ? strdup(file->realpath) : NULL;
    ret = drv->open(n, flags, errp);
    if (ret < 0) {
        vd_node_close(file);
        vd_node_release(n);
        return ret;
    }
    if (!file && filename && !n->realpath) {
        n->realpath = realpath(n->filename, NULL);
    }
    *out = n;
    return 0;
}

int vd_node_open_tree(vd_engine *e, vd_tree *opts, unsigned flags, vd_node *overlay,
                      vd_node **out, vd_error **errp)
{
    return open_tree_named(e, opts, flags, overlay, true, out, errp);
}

int vd_node_open_tree_protocol(vd_engine *e, vd_tree *opts, unsigned flags, vd_node **out,
                               vd_error **errp)
{
    return open_tree_named(e, opts, flags, NULL, false, out, errp);
}

int vd_child_options_check(vd_engine *e, vd_tree *t, const char *key, vd_node **ref,
                           vd_error **errp)
{
    int ret = 0;
    if (vd_tree_type_of(t) == VD_TREE_STRING) {
        /* A node name: the engine's registry has it, or nothing does. */
        ret = vd_graph_ref(e, vd_tree_string(t), ref, errp);
        if (ret == 0) {
            ret = 1;
        }
    } else if (vd_tree_type_of(t) != VD_TREE_OBJECT) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for '%s', "
                           "expected: object", key);
    }
    if (ret != 0) {
        vd_tree_free(t);
    }
    return ret;
}

int vd_node_open_child(vd_node *parent, const char *key, vd_node **out, vd_error **errp)
{
    vd_tree *t = parent->options ? vd_tree_take(parent->options, key) : NULL;
    if (!t) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "A block device must be specified "
                            "for \"%s\"", key);
    }
    return vd_node_open_child_tree(parent, t, key, out, errp);
}

int vd_node_open_child_tree(vd_node *parent, vd_tree *t, const char *key, vd_node **out,
                            vd_error **errp)
{
    int ret = vd_child_options_check(parent->engine, t, key, out, errp);
    if (ret != 0) {
        return ret < 0 ? ret : 0;
    }
    return open_tree_named(parent->engine, t, parent->open_flags, NULL, false, out, errp);
}
