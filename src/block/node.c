/* Opening and closing node graphs: the file node, format probing, the format node and its
 * backing chain (with loop detection and a depth limit). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
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

#define VD_MAX_CHAIN_DEPTH 256
#define VD_PROBE_BYTES 2048

const vd_driver *vd_driver_find(const char *name)
{
    for (size_t i = 0; vd_drivers[i]; i++) {
        if (strcmp(vd_drivers[i]->name, name) == 0) {
            return vd_drivers[i];
        }
    }
    return NULL;
}

static vd_node *node_new(vd_engine *e, const vd_driver *drv, const char *filename,
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
    pthread_mutex_init(&n->rmw_lock, NULL);
    if (!n->filename) {
        abort();
    }
    return n;
}

static void node_free(vd_node *n)
{
    pthread_mutex_destroy(&n->rmw_lock);
    free(n->filename);
    free(n->realpath);
    free(n->backing_filename);
    free(n->backing_format);
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
        vd_node *f = node_new(e, &vd_blkdebug_driver, rules.path, flags);
        ret = vd_blkdebug_wrap(f, child, &rules);
        if (ret < 0) {
            node_free(f);
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
        vd_node *f = node_new(e, &vd_logwrites_driver, path, flags);
        ret = vd_logwrites_wrap(f, child, log, errp);
        if (ret < 0) {
            node_free(f);
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
    vd_node *n = node_new(e, drv, filename, flags);
    free(dotted);
    filename = n->filename;
    int ret = drv->open(n, flags, errp);
    if (ret < 0) {
        node_free(n);
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

static int probe_node(vd_node *file, const char **fmt, vd_error **errp)
{
    uint8_t buf[VD_PROBE_BYTES];
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
    vd_node *file = NULL;
    int ret = vd_node_open_file(NULL, filename, 0, &file, errp);
    if (ret < 0) {
        return ret;
    }
    ret = probe_node(file, fmt, errp);
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
        ret = probe_node(file, &format, errp);
        if (ret < 0) {
            vd_node_close(file);
            return ret;
        }
    }
    const vd_driver *drv = vd_driver_find(format);
    if (!drv || !drv->is_format) {
        vd_node_close(file);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unknown driver '%s'", format);
    }
    /* The format node is named after the image file (without a blkdebug: prefix), so that
     * messages and relative backing names work as without the filter. */
    vd_node *n = node_new(e, drv, file->filename, flags);
    n->file = file;
    n->overlay = overlay;
    n->realpath = file->realpath ? strdup(file->realpath) : NULL;
    ret = drv->open(n, flags, errp);
    if (ret < 0) {
        vd_node_close(file);
        node_free(n);
        return ret;
    }
    *out = n;
    return 0;
}

int vd_node_open(vd_engine *e, const char *filename, const char *format, unsigned flags,
                 vd_node **out, vd_error **errp)
{
    return node_open(e, filename, format, flags, NULL, out, errp);
}

char *vd_backing_path(const char *image, const char *backing)
{
    char *r = NULL;
    if (backing[0] == '/' || strchr(image, '/') == NULL) {
        r = strdup(backing);
    } else {
        char *copy = strdup(image);
        if (!copy) {
            abort();
        }
        if (asprintf(&r, "%s/%s", dirname(copy), backing) < 0) {
            r = NULL;
        }
        free(copy);
    }
    if (!r) {
        abort();
    }
    return r;
}

int vd_node_open_backing(vd_node *node, const char *name, const char *format,
                         vd_error **errp)
{
    if (!name || (node->open_flags & VD_OPEN_NO_BACKING)) {
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
    /* Backing files are read-only; the check/repair flags apply to the top image only. */
    unsigned flags = node->open_flags & (VD_OPEN_NOCACHE | VD_OPEN_NO_FLUSH);
    flags |= VD_OPEN_NO_REPAIR;
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

/* Closes a node; with `flush`, flushes it first. A format driver's flush covers its file
 * child, so children are closed without a second flush. */
static int node_close(vd_node *n, bool flush)
{
    if (!n) {
        return 0;
    }
    int ret = 0;
    if (flush) {
        ret = vd_node_flush(n);
    }
    if (n->drv->close) {
        n->drv->close(n);
    }
    node_close(n->backing, false);
    node_close(n->file, false);
    node_free(n);
    return ret;
}

int vd_node_close(vd_node *n)
{
    return node_close(n, true);
}
