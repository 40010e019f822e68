/* Opening and closing node graphs: the file node, format probing, the format node and its
 * backing chain (with loop detection and a depth limit). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/blkdebug.h"
#include "block/block.h"
#include "block/engine.h"
#include "block/logwrites.h"
#include "block/drivers/nbd-uri.h"
#include "block/drivers/rbd-filename.h"

#define VD_MAX_CHAIN_DEPTH 256
#define VD_PROBE_BYTES 2048

bool vd_driver_exists(const char *name)
{
    return vd_driver_find(name) != NULL;
}

const vd_driver *vd_driver_find(const char *name)
{
    for (size_t i = 0; vd_drivers[i]; i++) {
        if (strcmp(vd_drivers[i]->name, name) == 0) {
            return vd_drivers[i];
        }
    }
    return NULL;
}

vd_node *vd_node_alloc(vd_engine *e, const vd_driver *drv, const char *filename,
                         unsigned flags)
{
    vd_node *n = calloc(1, sizeof(*n));
    if (!n) {
        abort();
    }
    n->drv = drv;
    n->engine = e;
    n->filename = strdup(filename);
    n->open_flags = flags;
    n->request_alignment = 1;
    n->fd = -1;
    n->compress_level = VD_COMPRESSION_LEVEL_DEFAULT;
    n->refcnt = 1;
    pthread_mutex_init(&n->rmw_lock, NULL);
    pthread_mutex_init(&n->err_lock, NULL);
    pthread_mutex_init(&n->bitmap_lock, NULL);
    pthread_mutex_init(&n->drain_lock, NULL);
    pthread_cond_init(&n->drained, NULL);
    if (!n->filename) {
        abort();
    }
    return n;
}

void vd_node_append_child(vd_node *n, vd_node *child, const char *role)
{
    vd_child *kids = realloc(n->children, (n->nb_children + 1) * sizeof(*kids));
    if (!kids) {
        abort();
    }
    n->children = kids;
    kids[n->nb_children].node = child;
    kids[n->nb_children].role = strdup(role);
    if (!kids[n->nb_children].role) {
        abort();
    }
    n->nb_children++;
}

void vd_node_release(vd_node *n)
{
    for (size_t i = 0; i < n->nb_children; i++) {
        free(n->children[i].role);
    }
    free(n->children);
    pthread_mutex_destroy(&n->rmw_lock);
    pthread_mutex_destroy(&n->err_lock);
    free(n->err_msg);
    vd_node_free_bitmaps(n);
    pthread_mutex_destroy(&n->bitmap_lock);
    pthread_mutex_destroy(&n->drain_lock);
    pthread_cond_destroy(&n->drained);
    free(n->filename);
    free(n->node_name);
    free(n->realpath);
    free(n->backing_filename);
    free(n->backing_format);
    vd_tree_free(n->options);
    free(n);
}

/* `blkdebug:RULES:PATH`: PATH's file node under a fault-injection filter. */
static int open_blkdebug(vd_engine *e, const char *spec, unsigned flags, vd_node **out,
                         vd_error **errp)
{
    vd_blkdebug_rules rules;
    int ret = vd_blkdebug_parse(spec, &rules, errp);
    if (ret < 0) {
        return ret;
    }
    vd_node *child = NULL;
    ret = vd_node_open_file(e, rules.path, flags, &child, errp);
    if (ret == 0) {
        vd_node *f = vd_node_alloc(e, &vd_blkdebug_driver, rules.path, flags);
        ret = vd_blkdebug_wrap(f, child, &rules);
        if (ret < 0) {
            vd_node_release(f);
            vd_node_close(child);
            vd_error_set(errp, VD_ERR_IO, -ret, "blkdebug: %s", strerror(-ret));
        } else {
            f->realpath = child->realpath ? strdup(child->realpath) : NULL;
            *out = f;
        }
    }
    vd_blkdebug_rules_free(&rules);
    return ret;
}

/* `logwrites:LOG:PATH`: PATH's file node under the write-recording filter. */
static int open_logwrites(vd_engine *e, const char *spec, unsigned flags, vd_node **out,
                          vd_error **errp)
{
    char *log, *path;
    int ret = vd_logwrites_parse(spec, &log, &path, errp);
    if (ret < 0) {
        return ret;
    }
    vd_node *child = NULL;
    ret = vd_node_open_file(e, path, flags, &child, errp);
    if (ret == 0) {
        vd_node *f = vd_node_alloc(e, &vd_logwrites_driver, path, flags);
        ret = vd_logwrites_wrap(f, child, log, errp);
        if (ret < 0) {
            vd_node_release(f);
            vd_node_close(child);
        } else {
            f->realpath = child->realpath ? strdup(child->realpath) : NULL;
            *out = f;
        }
    }
    free(log);
    free(path);
    return ret;
}

/* `null-co://` (or null-aio): QEMU's null protocol with its defaults; the name admits no
 * path. */
static int open_null(vd_engine *e, const char *filename, unsigned flags, vd_node **out,
                     vd_error **errp)
{
    const char *colon = strchr(filename, ':');
    if (strcmp(colon, "://")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The only allowed filename for this "
                            "driver is '%.*s://'", (int)(colon - filename), filename);
    }
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(t, "driver", vd_tree_new_stringn(filename, (size_t)(colon - filename)));
    return vd_node_open_tree(e, t, flags, NULL, out, errp);
}

const char *vd_strip_file_prefix(const char *filename)
{
    return strncmp(filename, "file:", 5) ? filename : filename + 5;
}

int vd_node_open_file(vd_engine *e, const char *filename, unsigned flags, vd_node **out,
                      vd_error **errp)
{
    /* "file:PATH" names the file protocol explicitly (as in QEMU): PATH is taken
     * literally, whatever prefix it looks like. */
    const char *plain = vd_strip_file_prefix(filename);
    if (plain == filename) {
        if (!strncmp(filename, VD_BLKDEBUG_PREFIX, strlen(VD_BLKDEBUG_PREFIX))) {
            return open_blkdebug(e, filename, flags, out, errp);
        }
        if (!strncmp(filename, VD_LOGWRITES_PREFIX, strlen(VD_LOGWRITES_PREFIX))) {
            return open_logwrites(e, filename, flags, out, errp);
        }
        if (!strncmp(filename, "null-co:", 8) || !strncmp(filename, "null-aio:", 9)) {
            return open_null(e, filename, flags, out, errp);
        }
        if (vd_nbd_filename_prefix(filename)) {
            vd_tree *t = NULL;
            int ret = vd_nbd_filename_options(filename, &t, errp);
            return ret < 0 ? ret : vd_node_open_tree_protocol(e, t, flags, out, errp);
        }
        if (vd_rbd_filename_prefix(filename)) {
            /* The driver parses its filename option itself (json: names carry one too),
             * and the node keeps the name as the user gave it. */
            vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
            vd_tree_put(t, "driver", vd_tree_new_string("rbd"));
            vd_tree_put(t, "filename", vd_tree_new_string(filename));
            return vd_node_open_tree_protocol(e, t, flags, out, errp);
        }
        if (!strncmp(filename, "json:", 5)) {
            vd_tree *t = NULL;
            int ret = vd_json_filename(filename, &t, errp);
            return ret < 0 ? ret : vd_node_open_tree_protocol(e, t, flags, out, errp);
        }
    }
    /* A relative name with a ':' before any '/' would read as a protocol prefix when used
     * again (as a base for backing names, in messages): QEMU names it "./NAME". */
    char *dotted = NULL;
    if (plain != filename && strchr(plain, ':') &&
        (!strchr(plain, '/') || strchr(plain, ':') < strchr(plain, '/')) &&
        asprintf(&dotted, "./%s", plain) < 0) {
        abort();
    }
    filename = dotted ? dotted : plain;
    const vd_driver *drv = vd_driver_find("file");
    vd_node *n = vd_node_alloc(e, drv, filename, flags);
    free(dotted);
    filename = n->filename;
    int ret = drv->open(n, flags, errp);
    if (ret < 0) {
        vd_node_release(n);
        return ret;
    }
    n->realpath = realpath(filename, NULL);
    *out = n;
    return 0;
}

static const char *probe_buf(const uint8_t *buf, size_t len)
{
    const char *best = "raw";
    int best_score = 0;
    for (size_t i = 0; vd_drivers[i]; i++) {
        if (vd_drivers[i]->probe) {
            int score = vd_drivers[i]->probe(buf, len);
            if (score > best_score) {
                best_score = score;
                best = vd_drivers[i]->name;
            }
        }
    }
    return best;
}

int vd_node_probe_format(vd_node *file, const char **fmt, vd_error **errp)
{
    uint8_t buf[VD_PROBE_BYTES] = {0};
    int64_t flen = vd_node_file_length(file);
    if (flen < 0) {
        return vd_error_set(errp, VD_ERR_IO, (int)-flen, "Could not open '%s': %s",
                            file->filename, strerror((int)-flen));
    }
    size_t len = flen < VD_PROBE_BYTES ? (size_t)flen : VD_PROBE_BYTES;
    if (len > 0) {
        int ret = vd_node_pread(file, buf, len, 0);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "Could not read image for determining "
                                "its format: %s", strerror(-ret));
        }
    }
    *fmt = probe_buf(buf, len);
    return 0;
}

/* Options that name a driver are that driver (QEMU probes nothing then); without one, the
 * format of what "file"/"filename" opens. */
static int probe_json(const char *filename, const char **fmt, vd_error **errp)
{
    vd_tree *t = NULL;
    int ret = vd_json_filename(filename, &t, errp);
    if (ret < 0) {
        return ret;
    }
    const char *driver = vd_tree_string(vd_tree_get(t, "driver"));
    const vd_driver *drv = driver ? vd_driver_find(driver) : NULL;
    if (drv) {
        *fmt = drv->name;
        vd_tree_free(t);
        return 0;
    }
    if (driver) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unknown driver '%s'", driver);
        vd_tree_free(t);
        return ret;
    }
    vd_tree_put(t, "read-only", vd_tree_new_bool(true));
    vd_node *n = NULL;
    ret = vd_node_open_tree(NULL, t, VD_OPEN_NO_BACKING, NULL, &n, errp);
    if (ret == 0) {
        *fmt = n->drv->name;
        vd_node_close(n);
    }
    return ret;
}

int vd_probe_format(const char *filename, const char **fmt, vd_error **errp)
{
    /* A probe before the real open is not part of the I/O under test: it reads PATH
     * without the filter, so rules, counts and logs cover the real open only. */
    if (!strncmp(filename, VD_BLKDEBUG_PREFIX, strlen(VD_BLKDEBUG_PREFIX))) {
        vd_blkdebug_rules rules;
        int ret = vd_blkdebug_parse(filename, &rules, errp);
        if (ret == 0) {
            ret = vd_probe_format(rules.path, fmt, errp);
        }
        vd_blkdebug_rules_free(&rules);
        return ret;
    }
    if (!strncmp(filename, VD_LOGWRITES_PREFIX, strlen(VD_LOGWRITES_PREFIX))) {
        char *log, *path;
        int ret = vd_logwrites_parse(filename, &log, &path, errp);
        if (ret == 0) {
            ret = vd_probe_format(path, fmt, errp);
            free(log);
            free(path);
        }
        return ret;
    }
    if (!strncmp(filename, "json:", 5)) {
        return probe_json(filename, fmt, errp);
    }
    vd_node *file = NULL;
    int ret = vd_node_open_file(NULL, filename, 0, &file, errp);
    if (ret < 0) {
        return ret;
    }
    ret = vd_node_probe_format(file, fmt, errp);
    vd_node_close(file);
    return ret;
}

static int node_open(vd_engine *e, const char *filename, const char *format, unsigned flags,
                     vd_node *overlay, vd_node **out, vd_error **errp)
{
    vd_node *file = NULL;
    int ret = vd_node_open_file(e, filename, flags, &file, errp);
    if (ret < 0) {
        return ret;
    }
    if (!format) {
        ret = vd_node_probe_format(file, &format, errp);
        if (ret < 0) {
            vd_node_close(file);
            return ret;
        }
    }
    const vd_driver *drv = vd_driver_find(format);
    if (drv && drv == file->drv) {
        /* A protocol named as the format (-f null-co null-co://): the node is the disk. */
        file->overlay = overlay;
        *out = file;
        return 0;
    }
    if (!drv || !drv->is_format) {
        vd_node_close(file);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unknown driver '%s'", format);
    }
    /* The format node is named after the image file (without a blkdebug: prefix), so that
     * messages and relative backing names work as without the filter. */
    vd_node *n = vd_node_alloc(e, drv, file->filename, flags);
    n->file = file;
    n->overlay = overlay;
    n->realpath = file->realpath ? strdup(file->realpath) : NULL;
    ret = drv->open(n, flags, errp);
    if (ret < 0) {
        vd_node_close(file);
        vd_node_release(n);
        return ret;
    }
    *out = n;
    return 0;
}

/* A `json:{...}` name opens from its options; a format given beside it (-f) is its
 * driver unless the options name one. */
static int open_json(vd_engine *e, const char *filename, const char *format, unsigned flags,
                     vd_node *overlay, vd_node **out, vd_error **errp)
{
    vd_tree *t = NULL;
    int ret = vd_json_filename(filename, &t, errp);
    if (ret < 0) {
        return ret;
    }
    if (format && !vd_tree_get(t, "driver")) {
        vd_tree_put(t, "driver", vd_tree_new_string(format));
    }
    return vd_node_open_tree(e, t, flags, overlay, out, errp);
}

int vd_node_open(vd_engine *e, const char *filename, const char *format, unsigned flags,
                 vd_node **out, vd_error **errp)
{
    if (!strncmp(filename, "json:", 5)) {
        return open_json(e, filename, format, flags, NULL, out, errp);
    }
    return node_open(e, filename, format, flags, NULL, out, errp);
}

char *vd_backing_path(const char *image, const char *backing)
{
    /* Options (json:) and other protocols' names (nbd URIs) name no file to resolve, as
     * QEMU takes them; a relative name keeps the image's directory as written. */
    const char *slash = strrchr(image, '/');
    char *r = NULL;
    if (backing[0] == '/' || !slash || vd_file_is_other_protocol(backing)) {
        r = strdup(backing);
    } else if (asprintf(&r, "%.*s%s", (int)(slash - image + 1), image, backing) < 0) {
        r = NULL;
    }
    if (!r) {
        abort();
    }
    return r;
}

/* The backing given in the node's options: null (none), or options that refine the
 * backing file named in the image (driver, cache sizes, or another file altogether). */
static int open_backing_tree(vd_node *node, vd_tree *t, const char *name, const char *format,
                             unsigned flags, vd_error **errp)
{
    vd_node *b = NULL;
    int ret = vd_child_options_check(node->engine, t, "backing", &b, errp);
    if (ret < 0) {
        vd_error_prepend(errp, "Could not open backing file");
        return ret;
    }
    if (ret > 0) {
        b->overlay = node;
        node->backing = b;
        return 0;
    }
    if (name && !vd_tree_get(t, "file") && !vd_tree_get(t, "filename")) {
        char *path = vd_backing_path(node->filename, name);
        vd_tree_put(t, "filename", vd_tree_new_string(path));
        free(path);
    }
    if (format && !vd_tree_get(t, "driver")) {
        vd_tree_put(t, "driver", vd_tree_new_string(format));
    }
    ret = vd_node_open_tree(node->engine, t, flags, node, &b, errp);
    if (ret < 0) {
        vd_error_prepend(errp, "Could not open backing file");
        return ret;
    }
    node->backing = b;
    return 0;
}

int vd_node_open_backing(vd_node *node, const char *name, const char *format,
                         vd_error **errp)
{
    vd_tree *opts = node->options ? vd_tree_take(node->options, "backing") : NULL;
    if (opts && vd_tree_type_of(opts) == VD_TREE_NULL) {
        vd_tree_free(opts);
        return 0;
    }
    if ((!name && !opts) || (node->open_flags & VD_OPEN_NO_BACKING)) {
        vd_tree_free(opts);
        return 0;
    }
    /* Backing files are read-only; the check/repair flags apply to the top image only. */
    unsigned flags = node->open_flags & (VD_OPEN_NOCACHE | VD_OPEN_NO_FLUSH);
    flags |= VD_OPEN_NO_REPAIR;
    if (opts) {
        return open_backing_tree(node, opts, name, format, flags, errp);
    }
    if (!strncmp(name, "json:", 5)) {
        vd_node *b = NULL;
        int ret = open_json(node->engine, name, format, flags, node, &b, errp);
        if (ret < 0) {
            vd_error_prepend(errp, "Could not open backing file");
            return ret;
        }
        node->backing = b;
        return 0;
    }
    char *path = vd_backing_path(node->filename, name);
    char *real = realpath(path, NULL);
    int depth = 0;
    for (vd_node *p = node; p; p = p->overlay) {
        if (real && p->realpath && strcmp(real, p->realpath) == 0) {
            int ret = vd_error_set(errp, VD_ERR_INVALID, ELOOP,
                                   "Could not open backing file '%s' of '%s': backing "
                                   "chain loop detected", name, node->filename);
            free(real);
            free(path);
            return ret;
        }
        depth++;
    }
    free(real);
    if (depth >= VD_MAX_CHAIN_DEPTH) {
        free(path);
        return vd_error_set(errp, VD_ERR_INVALID, EMLINK, "Could not open backing file '%s' "
                            "of '%s': backing chain deeper than %d", name, node->filename,
                            VD_MAX_CHAIN_DEPTH);
    }
    vd_node *b = NULL;
    int ret = node_open(node->engine, path, format, flags, node, &b, errp);
    if (ret < 0) {
        vd_error_prepend(errp, "Could not open backing file");
        free(path);
        return ret;
    }
    free(path);
    node->backing = b;
    return 0;
}

/* Drops one owner's reference to a node; with `flush`, flushes it first. The last
 * reference closes it and drops its own on its children; a format driver's flush covers
 * its file child, so children are closed without a second flush. */
static int node_close(vd_node *n, bool flush)
{
    if (!n) {
        return 0;
    }
    int ret = 0;
    if (flush) {
        ret = vd_node_flush(n);
    }
    if (!vd_graph_release(n)) {
        return ret;
    }
    if (n->drv->close) {
        n->drv->close(n);
    }
    vd_node *child;
    const char *role;
    for (size_t i = 0; vd_node_child_at(n, i, &child, &role); i++) {
        node_close(child, false);
    }
    vd_node_release(n);
    return ret;
}

int vd_node_close(vd_node *n)
{
    return node_close(n, true);
}

void vd_node_unref(vd_node *n)
{
    node_close(n, false);
}

uint64_t vd_node_cluster_size(vd_node *n)
{
    vd_image_info info;
    memset(&info, 0, sizeof(info));
    uint64_t c = 0;
    if (n->drv->get_info && n->drv->get_info(n, &info, NULL) == 0 && info.has_cluster_size) {
        c = info.cluster_size;
    }
    vd_image_info_clear(&info);
    return c;
}
