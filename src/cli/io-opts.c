/* qemu-io's block options: `open -o`, `--image-opts` and `reopen -o`. The options become
 * a json: name for the library, and the session keeps them so that a reopen changes only
 * what it names, with QEMU's refusals (node names and drivers stay, -r/-w and -c do not
 * mix with the options they stand for). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "cli/io-cmds.h"

void io_append_optlist(char **list, const char *more)
{
    char *joined = NULL;
    if (asprintf(&joined, "%s%s%s", *list ? *list : "", *list ? "," : "", more) < 0) {
        abort();
    }
    free(*list);
    *list = joined;
}

/* Opens from t (consumed); the session keeps t on success. */
static int open_tree(io_state *s, vd_tree *t, const char *display, unsigned flags,
                     bool native_aio)
{
    char *name = cli_tree_json_name(t);
    int ret = io_open_image(s, name, display, NULL, flags, native_aio, false);
    free(name);
    if (ret < 0) {
        vd_tree_free(t);
        return ret;
    }
    s->opts = t;
    return 0;
}

char *io_cor_name(const char *name, const char *format)
{
    vd_tree *file = NULL;
    vd_error *err = NULL;
    if (!strncmp(name, "json:", 5)) {
        if (vd_tree_parse_json(name + 5, strlen(name + 5), &file, &err) < 0 ||
            vd_tree_crumple(file, &err) < 0) {
            vd_tree_free(file);
            io_error("can't open device %s: %s", name, vd_error_msg(err));
            vd_error_free(err);
            return NULL;
        }
    } else {
        file = vd_tree_new(VD_TREE_OBJECT);
        vd_tree_put(file, "filename", vd_tree_new_string(name));
    }
    if (!vd_tree_get(file, "driver")) {
        const char *fmt = format;
        if (!fmt && vd_probe_format(name, &fmt, &err) < 0) {
            io_error("can't open device %s: %s", name, vd_error_msg(err));
            vd_error_free(err);
            vd_tree_free(file);
            return NULL;
        }
        vd_tree_put(file, "driver", vd_tree_new_string(fmt));
    }
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(t, "driver", vd_tree_new_string("copy-on-read"));
    vd_tree_put(t, "file", file);
    char *json = cli_tree_json_name(t);
    vd_tree_free(t);
    return json;
}

int io_open_optlist(io_state *s, const char *optlist, const char *file, unsigned flags,
                    bool native_aio)
{
    if (s->disk) {
        io_error("file open already, try 'help close'");
        return -EINVAL;
    }
    vd_tree *t = cli_parse_optlist(optlist);
    if (!t) {
        return -EINVAL;
    }
    if (file) {
        if (vd_tree_get(t, "filename")) {
            vd_tree_free(t);
            io_error("can't open device %s: Cannot specify both a filename and the "
                     "'filename' option", file);
            return -EINVAL;
        }
        vd_tree_put(t, "filename", vd_tree_new_string(file));
    }
    return open_tree(s, t, file, flags, native_aio);
}

/* Puts every member of src into dst, object members merged key by key. */
static void merge(vd_tree *dst, const vd_tree *src)
{
    for (size_t i = 0; i < vd_tree_size(src); i++) {
        const char *k = vd_tree_key(src, i);
        const vd_tree *v = vd_tree_at(src, i);
        vd_tree *have = vd_tree_get(dst, k);
        if (have && vd_tree_type_of(have) == VD_TREE_OBJECT &&
            vd_tree_type_of(v) == VD_TREE_OBJECT) {
            merge(have, v);
        } else {
            vd_tree_put(dst, k, vd_tree_clone(v));
        }
    }
}

/* qcow2's options that replace others at a reopen, as QEMU joins them: a new
 * overlap-check (or template) replaces every old overlap-check key, a new cache-size the
 * old l2-cache-size and refcount-cache-size. */
static void drop_replaced(vd_tree *old, const vd_tree *new)
{
    if (vd_tree_get(new, "overlap-check") || vd_tree_get(new, "overlap-check.template")) {
        for (size_t i = vd_tree_size(old); i-- > 0;) {
            const char *k = vd_tree_key(old, i);
            if (!strncmp(k, "overlap-check", 13) && (!k[13] || k[13] == '.')) {
                vd_tree_free(vd_tree_take(old, k));
            }
        }
    }
    if (vd_tree_get(new, "cache-size")) {
        vd_tree_free(vd_tree_take(old, "l2-cache-size"));
        vd_tree_free(vd_tree_take(old, "refcount-cache-size"));
    }
}

/* All three cache sizes after the join, the total an old one: the total goes (three new
 * ones stay, for qcow2 to refuse). */
static void drop_stale_total(vd_tree *next, const vd_tree *new)
{
    if (vd_tree_get(next, "cache-size") && vd_tree_get(next, "l2-cache-size") &&
        vd_tree_get(next, "refcount-cache-size") && !vd_tree_get(new, "cache-size")) {
        vd_tree_free(vd_tree_take(next, "cache-size"));
    }
}

/* The scalar at a child's key ("file", "node-name"), as a string, or NULL. */
static const char *child_str(const vd_tree *t, const char *child, const char *key)
{
    const vd_tree *c = child ? vd_tree_get(t, child) : t;
    return c && vd_tree_type_of(c) == VD_TREE_OBJECT ? vd_tree_string(vd_tree_get(c, key))
                                                     : NULL;
}

static bool same(const char *a, const char *b)
{
    return a && b && !strcmp(a, b);
}

/* What QEMU refuses to change at a reopen: a node's name and its driver. */
static int check_unchanged(io_state *s, const vd_tree *old, const vd_tree *new)
{
    static const char *const children[] = {NULL, "file", "backing"};
    vd_disk *backing = vd_disk_backing(s->disk);
    for (size_t i = 0; i < 3; i++) {
        const char *c = children[i];
        const char *name = child_str(new, c, "node-name");
        if (name && !same(name, child_str(old, c, "node-name"))) {
            io_error("Cannot change the option 'node-name'");
            return -EINVAL;
        }
        const char *drv = child_str(new, c, "driver");
        const char *cur = child_str(old, c, "driver");
        if (!cur) {
            cur = !c ? vd_disk_format(s->disk)
                  : !strcmp(c, "file") ? "file"
                  : backing ? vd_disk_format(backing) : NULL;
        }
        if (drv && !same(drv, cur)) {
            io_error("Cannot change the option 'driver'");
            return -EINVAL;
        }
    }
    return 0;
}

int io_reopen_opts(io_state *s, const char *optlist, unsigned flags, bool has_rw,
                   bool has_cache)
{
    vd_tree *new = optlist ? cli_parse_optlist(optlist) : vd_tree_new(VD_TREE_OBJECT);
    if (!new) {
        return -EINVAL;
    }
    if (has_rw && vd_tree_get(new, "read-only")) {
        io_error("Cannot set both -r/-w and 'read-only'");
        vd_tree_free(new);
        return -EINVAL;
    }
    if (has_cache && vd_tree_get(new, "cache")) {
        io_error("Cannot set both -c and the cache options");
        vd_tree_free(new);
        return -EINVAL;
    }
    vd_tree *old = s->opts ? vd_tree_clone(s->opts) : vd_tree_new(VD_TREE_OBJECT);
    if (!s->opts) {
        vd_tree_put(old, "driver", vd_tree_new_string(vd_disk_format(s->disk)));
        vd_tree_put(old, "filename", vd_tree_new_string(vd_disk_filename(s->disk)));
    }
    int ret = check_unchanged(s, old, new);
    if (ret < 0) {
        vd_tree_free(old);
        vd_tree_free(new);
        return ret;
    }
    vd_tree *next = vd_tree_clone(old);
    drop_replaced(next, new);
    merge(next, new);
    drop_stale_total(next, new);
    vd_tree_free(new);
    /* -r/-w and -c override what the options said before. */
    if (has_rw) {
        vd_tree_free(vd_tree_take(next, "read-only"));
    }
    if (has_cache) {
        vd_tree_free(vd_tree_take(next, "cache"));
    }
    const char *display = child_str(old, NULL, "filename");
    char *disp = display ? cli_xstrdup(display) : NULL;
    unsigned old_flags = s->flags;
    ret = vd_close(s->disk);
    s->disk = NULL;
    vd_tree_free(s->opts);
    s->opts = NULL;
    if (ret < 0) {
        io_error("Could not flush: %s", strerror(-ret));
    }
    /* QEMU reports a refused reopen by its reason alone, and keeps the image as it was. */
    char *name = cli_tree_json_name(next);
    vd_open_opts o = {.flags = flags};
    vd_error *err = NULL;
    ret = vd_open(s->engine, name, &o, &s->disk, &err);
    free(name);
    if (ret == 0) {
        s->opts = next;
        s->flags = flags;
        vd_tree_free(old);
    } else {
        io_error("%s", err ? vd_error_msg(err) : strerror(-ret));
        vd_error_free(err);
        vd_tree_free(next);
        s->disk = NULL;
        if (open_tree(s, old, disp, old_flags, false) < 0) {
            s->disk = NULL;
        }
    }
    free(disp);
    return ret;
}
