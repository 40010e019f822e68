/* QEMU's rbd protocol driver on librbd: the options (pool, namespace, image, conf, user,
 * snapshot, server, auth-client-required and librados settings from an rbd: filename),
 * the connection, the exclusive lock a writer takes, and image creation. A node is one
 * librados connection and one open image, as in QEMU. */
#ifdef VD_HAVE_RBD

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/rbd-filename.h"
#include "block/drivers/rbd.h"

static const char *const rbdd_runtime_opts[] = {
    "pool", "namespace", "image", "conf", "snapshot", "user", "auth-client-required",
    "key-secret", "server", "encrypt", "=keyvalue-pairs", "filename", "break-lock", NULL,
};

/* What the options say, borrowed from the node's options tree. */
typedef struct rbdd_opts {
    const char *pool, *ns, *image, *conf, *snap, *user, *key_secret;
    char *mon_host;          /* from "server", owned */
    char *auth_required;     /* from "auth-client-required", owned */
    vd_tree *pairs;          /* "=keyvalue-pairs" parsed, owned */
    bool break_lock;
} rbdd_opts;

static void opts_clear(rbdd_opts *o)
{
    free(o->mon_host);
    free(o->auth_required);
    vd_tree_free(o->pairs);
}

static void append(char **s, const char *sep, const char *fmt, const char *a, const char *b)
{
    char *piece = NULL, *joined = NULL;
    if (asprintf(&piece, fmt, a, b) < 0 ||
        asprintf(&joined, "%s%s%s", *s ? *s : "", *s ? sep : "", piece) < 0) {
        abort();
    }
    free(piece);
    free(*s);
    *s = joined;
}

/* server: a list of {host, port} (QEMU's InetSocketAddressBase) as librados' mon_host. */
static int read_servers(const vd_tree *list, char **out, vd_error **errp)
{
    if (vd_tree_type_of(list) != VD_TREE_LIST) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'server', expected: array");
    }
    for (size_t i = 0; i < vd_tree_size(list); i++) {
        const vd_tree *s = vd_tree_at(list, i);
        const char *host = NULL, *port = NULL;
        char what[48];
        snprintf(what, sizeof(what), "server.%zu.host", i);
        if (vd_tree_type_of(s) != VD_TREE_OBJECT) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                                "'server.%zu', expected: object", i);
        }
        int ret = vd_tree_get_str(s, "host", what, &host, errp);
        if (ret < 0) {
            return ret;
        }
        snprintf(what, sizeof(what), "server.%zu.port", i);
        char portbuf[24];
        const vd_tree *p = vd_tree_get(s, "port");
        if (p && vd_tree_type_of(p) == VD_TREE_INT) {
            snprintf(portbuf, sizeof(portbuf), "%lld", (long long)vd_tree_int(p));
            port = portbuf;
        } else if ((ret = vd_tree_get_str(s, "port", what, &port, errp)) < 0) {
            return ret;
        }
        if (!host || !port) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.%zu.%s' is "
                                "missing", i, host ? "port" : "host");
        }
        for (size_t k = 0; k < vd_tree_size(s); k++) {
            const char *key = vd_tree_key(s, k);
            if (strcmp(key, "host") && strcmp(key, "port")) {
                return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.%zu.%s' "
                                    "is unexpected", i, key);
            }
        }
        /* An IPv6 address goes in brackets, so its colons are not read as the port's. */
        append(out, ",", strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
    }
    return 0;
}

static int read_auth(const vd_tree *list, char **out, vd_error **errp)
{
    if (vd_tree_type_of(list) != VD_TREE_LIST) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'auth-client-required', expected: array");
    }
    for (size_t i = 0; i < vd_tree_size(list); i++) {
        const char *mode = vd_tree_string(vd_tree_at(list, i));
        if (!mode || (strcmp(mode, "cephx") && strcmp(mode, "none"))) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter "
                                "'auth-client-required.%zu' does not accept value '%s'", i,
                                mode ? mode : "");
        }
        append(out, ";", "%s%s", mode, "");
    }
    return 0;
}

/* The librados settings an rbd: filename carries, as QEMU keeps them: JSON text of a flat
 * list ["name", "value", ...]. */
static int read_pairs(const char *json, vd_tree **out, vd_error **errp)
{
    vd_tree *t = NULL;
    if (vd_tree_parse_json(json, strlen(json), &t, NULL) < 0 ||
        vd_tree_type_of(t) != VD_TREE_LIST || vd_tree_size(t) % 2) {
        vd_tree_free(t);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid '=keyvalue-pairs': a list "
                            "of names and values expected");
    }
    for (size_t i = 0; i < vd_tree_size(t); i++) {
        if (vd_tree_type_of(vd_tree_at(t, i)) != VD_TREE_STRING) {
            vd_tree_free(t);
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid '=keyvalue-pairs': a "
                                "list of names and values expected");
        }
    }
    *out = t;
    return 0;
}

static int read_opts(vd_node *n, rbdd_opts *o, vd_error **errp)
{
    vd_tree *t = n->options;
    /* A "filename" among the options is parsed, and what it says wins, as in QEMU. */
    vd_tree *fname = vd_tree_take(t, "filename");
    if (fname) {
        vd_tree *parsed = NULL;
        int ret = vd_tree_type_of(fname) != VD_TREE_STRING
                      ? vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type "
                                     "for 'filename', expected: string")
                      : vd_rbd_filename_options(vd_tree_string(fname), &parsed, errp);
        vd_tree_free(fname);
        if (ret < 0) {
            return ret;
        }
        for (size_t i = 0; i < vd_tree_size(parsed); i++) {
            const char *k = vd_tree_key(parsed, i);
            if (strcmp(k, "driver")) {
                vd_tree_put(t, k, vd_tree_clone(vd_tree_at(parsed, i)));
            }
        }
        vd_tree_free(parsed);
    }
    static const struct {
        const char *key;
        size_t at;
    } strs[] = {
        {"pool", offsetof(rbdd_opts, pool)},      {"namespace", offsetof(rbdd_opts, ns)},
        {"image", offsetof(rbdd_opts, image)},    {"conf", offsetof(rbdd_opts, conf)},
        {"snapshot", offsetof(rbdd_opts, snap)},  {"user", offsetof(rbdd_opts, user)},
        {"key-secret", offsetof(rbdd_opts, key_secret)},
    };
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        int ret = vd_tree_get_str(t, strs[i].key, strs[i].key,
                                  (const char **)((char *)o + strs[i].at), errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (!o->pool || !o->image) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is missing",
                            o->pool ? "image" : "pool");
    }
    if (vd_tree_get(t, "encrypt")) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "RBD encryption is not "
                            "supported by vdisk");
    }
    if (o->key_secret) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "key-secret is not supported "
                            "by vdisk: give the key in the keyring the Ceph configuration "
                            "names");
    }
    int ret = vd_tree_get_bool(t, "break-lock", "break-lock", false, &o->break_lock, errp);
    const vd_tree *v;
    if (ret == 0 && (v = vd_tree_get(t, "server"))) {
        ret = read_servers(v, &o->mon_host, errp);
    }
    if (ret == 0 && (v = vd_tree_get(t, "auth-client-required"))) {
        ret = read_auth(v, &o->auth_required, errp);
    }
    const char *pairs = NULL;
    if (ret == 0) {
        ret = vd_tree_get_str(t, "=keyvalue-pairs", "=keyvalue-pairs", &pairs, errp);
    }
    if (ret == 0 && pairs) {
        ret = read_pairs(pairs, &o->pairs, errp);
    }
    return ret;
}

/* QEMU's messages add strerror to what failed: "error connecting: Permission denied". */
static int fail(vd_error **errp, int ret, const char *what, const char *arg)
{
    vd_error_class cls = ret == -ENOENT ? VD_ERR_NOT_FOUND : VD_ERR_IO;
    return vd_error_set(errp, cls, -ret, "%s%s: %s", what, arg ? arg : "", strerror(-ret));
}

static int rbdd_connect(rbdd_state *s, const rbdd_opts *o, unsigned flags, vd_error **errp)
{
    int ret = rados_create(&s->cluster, o->user);
    if (ret < 0) {
        s->cluster = NULL;
        return fail(errp, ret, "error initializing", NULL);
    }
    if (o->conf) {
        ret = rados_conf_read_file(s->cluster, o->conf);
        if (ret < 0) {
            return fail(errp, ret, "error reading conf file ", o->conf);
        }
    } else {
        /* The usual places (librados reads CEPH_CONF, then /etc/ceph/ceph.conf); none is
         * fine when the options say where the monitors are. */
        (void)rados_conf_read_file(s->cluster, NULL);
    }
    /* librbd's cache is the node's write-back cache: off when the user asked for none,
     * and with cache=unsafe too: librbd writes through until the first flush, which then
     * never comes, so the cache would only add a copy (the settings in the filename,
     * applied next, may say otherwise). */
    bool cache = !(flags & (VD_OPEN_NOCACHE | VD_OPEN_NO_FLUSH));
    ret = rados_conf_set(s->cluster, "rbd_cache", cache ? "true" : "false");
    if (ret < 0) {
        return fail(errp, ret, "error setting the Ceph configuration", NULL);
    }
    for (size_t i = 0; o->pairs && i < vd_tree_size(o->pairs); i += 2) {
        const char *name = vd_tree_string(vd_tree_at(o->pairs, i));
        ret = rados_conf_set(s->cluster, name, vd_tree_string(vd_tree_at(o->pairs, i + 1)));
        if (ret < 0) {
            return fail(errp, ret, "invalid conf option ", name);
        }
    }
    if (o->mon_host) {
        ret = rados_conf_set(s->cluster, "mon_host", o->mon_host);
    }
    if (ret == 0 && o->auth_required) {
        ret = rados_conf_set(s->cluster, "auth_client_required", o->auth_required);
    }
    if (ret < 0) {
        return fail(errp, ret, "error setting the Ceph configuration", NULL);
    }
    ret = rados_connect(s->cluster);
    if (ret < 0) {
        return fail(errp, ret, "error connecting", NULL);
    }
    ret = rados_ioctx_create(s->cluster, o->pool, &s->io);
    if (ret < 0) {
        s->io = NULL;
        return fail(errp, ret, "error opening pool ", o->pool);
    }
    if (o->ns && o->ns[0]) {
        rados_ioctx_set_namespace(s->io, o->ns);
        bool exists = false;
        ret = rbd_namespace_exists(s->io, o->ns, &exists);
        if (ret < 0) {
            return fail(errp, ret, "error checking namespace", NULL);
        }
        if (!exists) {
            return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "namespace '%s' does not "
                                "exist", o->ns);
        }
    }
    return 0;
}

static void rbdd_disconnect(rbdd_state *s)
{
    if (s->image) {
        rbd_close(s->image);
        s->image = NULL;
    }
    if (s->io) {
        rados_ioctx_destroy(s->io);
        s->io = NULL;
    }
    if (s->cluster) {
        rados_shutdown(s->cluster);
        s->cluster = NULL;
    }
}

/* The owner of the image's lock, for messages (caller frees), or NULL if none. */
static char *lock_owner(rbd_image_t image)
{
    rbd_lock_mode_t mode;
    char *owners[4];
    size_t nb = 4;
    if (rbd_lock_get_owners(image, &mode, owners, &nb) < 0 || nb == 0) {
        return NULL;
    }
    char *r = strdup(owners[0]);
    rbd_lock_get_owners_cleanup(owners, nb);
    return r;
}

int rbdd_lock(vd_node *n, bool break_dead, vd_error **errp)
{
    rbdd_state *s = n->opaque;
    uint64_t features = 0;
    if (rbd_get_features(s->image, &features) == 0 &&
        !(features & RBD_FEATURE_EXCLUSIVE_LOCK)) {
        return 0;  /* nothing to take: the image's owner turned the feature off */
    }
    /* A lock someone holds is never taken over unasked. librbd itself would wait for a
     * dead owner's watch to expire (about 30 s) and then break the lock quietly; a live
     * owner that took it explicitly refuses at once. */
    char *owner = lock_owner(s->image);
    int ret = 0;
    if (owner && break_dead) {
        /* Breaking blocklists the owner: whatever it still sends is refused by the OSDs. */
        ret = rbd_lock_break(s->image, RBD_LOCK_MODE_EXCLUSIVE, owner);
        if (ret < 0 && ret != -ENOENT) {
            vd_error_set(errp, VD_ERR_IO, -ret, "Failed to break the lock of %s held by %s: "
                         "%s", s->desc, owner, strerror(-ret));
            free(owner);
            return ret;
        }
        free(owner);
        owner = NULL;
    }
    if (!owner) {
        ret = rbd_lock_acquire(s->image, RBD_LOCK_MODE_EXCLUSIVE);
        if (ret == 0) {
            s->locked = true;
            return 0;
        }
        owner = lock_owner(s->image);
    }
    /* QEMU's words for an image another process writes (its file locking), and who. */
    vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Failed to get \"write\" lock: %s %s\nIs "
                 "another process using the image [%s]? If its owner is dead, break-lock=on "
                 "takes the lock over (blocklisting the owner)",
                 owner ? "the RBD exclusive lock is held by" : "the RBD exclusive lock:",
                 owner ? owner : strerror(-ret), s->desc);
    free(owner);
    return -EBUSY;
}

static void rbdd_close(vd_node *n);

static char *make_desc(const rbdd_opts *o)
{
    char *d = NULL;
    if (asprintf(&d, "%s/%s%s%s%s%s", o->pool, o->ns && o->ns[0] ? o->ns : "",
                 o->ns && o->ns[0] ? "/" : "", o->image, o->snap ? "@" : "",
                 o->snap ? o->snap : "") < 0) {
        abort();
    }
    return d;
}

static int rbdd_open(vd_node *n, unsigned flags, vd_error **errp)
{
    rbdd_opts o = {0};
    int ret = read_opts(n, &o, errp);
    if (ret < 0) {
        opts_clear(&o);
        return ret;
    }
    if (o.snap && (flags & VD_OPEN_RDWR)) {
        opts_clear(&o);
        return vd_error_set(errp, VD_ERR_INVALID, EROFS, "rbd snapshots are read-only");
    }
    rbdd_state *s = calloc(1, sizeof(*s));
    if (!s) {
        abort();
    }
    pthread_mutex_init(&s->resize_lock, NULL);
    n->opaque = s;
    s->desc = make_desc(&o);
    if (o.snap && !(s->snap = strdup(o.snap))) {
        abort();
    }
    ret = rbdd_connect(s, &o, flags, errp);
    if (ret == 0) {
        ret = rbd_open(s->io, o.image, &s->image, o.snap);
        if (ret < 0) {
            s->image = NULL;
            fail(errp, ret, "error reading header from ", o.image);
        }
    }
    rbd_image_info_t info;
    if (ret == 0 && (ret = rbd_stat(s->image, &info, sizeof(info))) < 0) {
        fail(errp, ret, "error getting image info from ", s->desc);
    }
    if (ret == 0 && (flags & VD_OPEN_RDWR)) {
        ret = rbdd_lock(n, o.break_lock, errp);
    }
    if (ret < 0) {
        opts_clear(&o);
        rbdd_close(n);  /* the core calls close only for nodes that opened */
        return ret;
    }
    n->size = info.size;
    s->object_size = info.obj_size;
    /* Requests of any size go to librbd, which splits them by object; discards and
     * zeroes are cut at whole objects below 2 GiB, as QEMU cuts them. */
    n->max_transfer = 1u << 30;
    n->max_pdiscard = n->max_pwrite_zeroes = (0x7fffffffu / info.obj_size) * info.obj_size;
    if (n->options && !strcmp(n->filename, n->drv->name)) {
        /* A node opened from options is named by its image, as rbd's tools name it. */
        free(n->filename);
        if (asprintf(&n->filename, "rbd:%s", s->desc) < 0) {
            abort();
        }
    }
    opts_clear(&o);
    return 0;
}

static void rbdd_close(vd_node *n)
{
    rbdd_state *s = n->opaque;
    if (!s) {
        return;
    }
    if (s->locked && s->image) {
        (void)rbd_lock_release(s->image);
    }
    rbdd_disconnect(s);
    pthread_mutex_destroy(&s->resize_lock);
    free(s->desc);
    free(s->snap);
    free(s);
    n->opaque = NULL;
}

static int rbdd_get_info(vd_node *n, vd_image_info *info, vd_error **errp)
{
    (void)errp;
    rbdd_state *s = n->opaque;
    info->has_cluster_size = true;
    info->cluster_size = s->object_size;
    return 0;
}

static int64_t rbdd_allocated_size(vd_node *n)
{
    (void)n;
    return -ENOTSUP;  /* the cluster does not say cheaply: qemu-img shows "unavailable" */
}

/* Going read-only gives the lock back so another host may write; going read-write takes
 * it again. The image handle stays: it is always opened writable (as QEMU opens it), and
 * only a writer takes the lock. */
static int rbdd_reopen_rw(vd_node *n, bool rw, vd_error **errp)
{
    rbdd_state *s = n->opaque;
    if (!rw) {
        int ret = rbd_flush(s->image);
        if (ret < 0) {
            return fail(errp, ret, "error flushing ", s->desc);
        }
        if (s->locked) {
            (void)rbd_lock_release(s->image);
            s->locked = false;
        }
        return 0;
    }
    if (s->snap) {
        return vd_error_set(errp, VD_ERR_INVALID, EROFS, "rbd snapshots are read-only");
    }
    return s->locked ? 0 : rbdd_lock(n, false, errp);
}

const vd_driver vd_rbd_driver = {
    .name = "rbd",
    .is_format = false,
    .qapi_options = true,
    .remote = true,
    .runtime_opts = rbdd_runtime_opts,
    .open = rbdd_open,
    .close = rbdd_close,
    .pread = rbdd_pread,
    .pwrite = rbdd_pwrite,
    .pwrite_zeroes = rbdd_pwrite_zeroes,
    .pdiscard = rbdd_pdiscard,
    .flush = rbdd_flush,
    .block_status = rbdd_block_status,
    .truncate = rbdd_truncate,
    .get_info = rbdd_get_info,
    .allocated_size = rbdd_allocated_size,
    .reopen_rw = rbdd_reopen_rw,
    .snapshot_list = rbdd_snapshot_list,
    .snapshot_create_prepare = rbdd_snapshot_create_prepare,
    .snapshot_delete_prepare = rbdd_snapshot_delete_prepare,
    .snapshot_commit = rbdd_snapshot_commit,
    .snapshot_abort = rbdd_snapshot_abort,
    .snapshot_clean = rbdd_snapshot_clean,
    .snapshot_apply = rbdd_snapshot_apply,
};

/* ---- creating images ------------------------------------------------------------------ */

int vd_rbd_create(const char *filename, const vd_opts *opts, vd_error **errp)
{
    vd_tree *t = NULL;
    int ret = vd_rbd_filename_options(filename, &t, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t obj = 0;
    if (opts && vd_opts_get(opts, "cluster_size")) {
        ret = vd_opts_get_size(opts, "cluster_size", 0, &obj, errp);
        if (ret == 0 && (obj & (obj - 1))) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "obj size needs to be power of 2");
        } else if (ret == 0 && obj < 4096) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "obj size too small");
        }
    }
    vd_node fake = {.options = t};
    rbdd_opts o = {0};
    if (ret == 0) {
        ret = read_opts(&fake, &o, errp);
    }
    rbdd_state s = {0};
    if (ret == 0) {
        ret = rbdd_connect(&s, &o, 0, errp);
    }
    if (ret == 0) {
        int order = 0;
        while (obj && (1ull << order) < obj) {
            order++;
        }
        ret = rbd_create(s.io, o.image, 0, &order);
        if (ret < 0) {
            fail(errp, ret, "error rbd create", NULL);
        }
    }
    rbdd_disconnect(&s);
    opts_clear(&o);
    vd_tree_free(t);
    return ret;
}

#else /* !VD_HAVE_RBD */

#include <errno.h>

#include "block/block.h"

int vd_rbd_create(const char *filename, const vd_opts *opts, vd_error **errp)
{
    (void)filename;
    (void)opts;
    return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Unknown protocol 'rbd'");
}

#endif
