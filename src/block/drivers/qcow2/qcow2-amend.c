/* qcow2 amend (`amend -o ...`): parses the options an amend request may change, then
 * applies them in QEMU's order: version upgrade, refcount width (qcow2-refcount-order.c),
 * backing file, lazy_refcounts, size, and a version downgrade last. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

typedef struct amend_req {
    int version;                 /* 0 = unchanged */
    int lazy;                    /* -1 = unchanged */
    int refcount_order;          /* -1 = unchanged */
    const char *backing_file;
    const char *backing_fmt;
    bool has_size;
    uint64_t size;
} amend_req;

static int amend_parse(qcow2_state *s, const vd_opts *opts, amend_req *r, vd_error **errp)
{
    r->version = 0;
    r->lazy = -1;
    r->refcount_order = -1;
    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        const char *k = vd_opts_key(opts, i);
        const char *v = vd_opts_value(opts, i);
        if (!strcmp(k, "compat")) {
            if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
                r->version = 2;
            } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
                r->version = 3;
            } else {
                return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                                    "Unknown compatibility level %s", v);
            }
        } else if (!strcmp(k, "lazy_refcounts")) {
            bool b;
            int ret = vd_opts_get_bool(opts, k, false, &b, errp);
            if (ret < 0) {
                return ret;
            }
            r->lazy = b;
        } else if (!strcmp(k, "backing_file")) {
            r->backing_file = v;
        } else if (!strcmp(k, "backing_fmt")) {
            r->backing_fmt = v;
        } else if (!strcmp(k, "size")) {
            int ret = vd_opts_get_size(opts, k, 0, &r->size, errp);
            if (ret < 0) {
                return ret;
            }
            r->has_size = true;
        } else if (!strcmp(k, "cluster_size")) {
            uint64_t cs;
            int ret = vd_opts_get_size(opts, k, s->cluster_size, &cs, errp);
            if (ret < 0) {
                return ret;
            }
            if (cs != s->cluster_size) {
                return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                                    "Changing the cluster size is not supported");
            }
        } else if (!strcmp(k, "refcount_bits")) {
            uint64_t bits;
            int ret = vd_opts_get_size(opts, k, 0, &bits, errp);
            if (ret < 0) {
                return ret;
            }
            if (bits == 0 || bits > 64 || (bits & (bits - 1))) {
                return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Refcount width must be a "
                                    "power of two and may not exceed 64 bits");
            }
            r->refcount_order = __builtin_ctzll(bits);
        } else if (!strcmp(k, "preallocation")) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                                "Cannot change preallocation mode");
        } else if (!strcmp(k, "extended_l2")) {
            bool b;
            int ret = vd_opts_get_bool(opts, k, false, &b, errp);
            if (ret < 0) {
                return ret;
            }
            if (b != s->extl2) {
                return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                                    "Changing extended_l2 is not supported");
            }
        } else if (!strcmp(k, "compression_type")) {
            const char *cur = s->h.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib";
            if (strcmp(v, cur)) {
                return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                                    "Changing the compression type is not supported");
            }
        } else if (!strcmp(k, "data_file") || !strcmp(k, "data_file_raw")) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "%s can only be set for "
                                "images that use an external data file", k);
        } else if (!strncmp(k, "encrypt", 7)) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                                "Changing the encryption option '%s' is not supported", k);
        } else {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'", k);
        }
    }
    return 0;
}

static int amend_upgrade(qcow2_state *s, vd_error **errp)
{
    int ret = qcow2_snapshots_make_v3_locked(s, errp);
    if (ret < 0) {
        return ret;
    }
    s->h.version = 3;
    s->h.refcount_order = 4;
    s->h.incompatible_features = 0;
    s->h.compatible_features = 0;
    s->h.autoclear_features = 0;
    s->h.compression_type = QCOW2_COMPRESSION_ZLIB;
    ret = qcow2_write_header(s);
    if (ret < 0) {
        s->h.version = 2;
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not update the header: %s",
                            s->name, strerror(-ret));
    }
    return 0;
}

static int amend_downgrade(qcow2_state *s, vd_error **errp)
{
    if (s->refcount_order != 4) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "compat=0.10 requires refcount_bits=16");
    }
    if (s->h.has_bitmaps_ext) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "Cannot downgrade an image with persistent bitmaps");
    }
    /* A v2 snapshot table has no disk size: a snapshot of another size could no longer
     * be applied by anyone. */
    int ret = qcow2_snapshots_check_v2_locked(s, errp);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_mark_clean_locked(s);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: failed to make the image clean: %s",
                            s->name, strerror(-ret));
    }
    uint64_t incompat = s->h.incompatible_features & ~QCOW2_INCOMPAT_COMPRESSION;
    if (incompat) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Cannot downgrade an image "
                            "with incompatible features 0x%" PRIx64 " set", incompat);
    }
    if (s->h.compression_type != QCOW2_COMPRESSION_ZLIB) {
        /* v2 reads compressed clusters as zlib: only an image without any may switch. */
        bool compressed;
        ret = qcow2_has_compressed_locked(s, &compressed, errp);
        if (ret < 0) {
            return ret;
        }
        if (compressed) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Cannot downgrade an "
                                "image with zstd compression type and existing compressed "
                                "clusters");
        }
    }
    ret = qcow2_expand_zero_clusters_locked(s, errp);
    if (ret < 0) {
        return ret;
    }
    qcow2_header old = s->h;
    s->h.version = 2;
    s->h.compatible_features = 0;
    s->h.autoclear_features = 0;
    s->h.incompatible_features = 0;
    s->h.refcount_order = 4;
    s->h.compression_type = QCOW2_COMPRESSION_ZLIB;
    ret = qcow2_write_header(s);
    if (ret < 0) {
        s->h = old;
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not update the header: %s",
                            s->name, strerror(-ret));
    }
    return 0;
}

static int amend_locked(qcow2_state *s, const amend_req *r, vd_error **errp)
{
    int old_version = (int)s->h.version;
    int new_version = r->version ? r->version : old_version;
    int ret;

    if (new_version > old_version) {
        ret = amend_upgrade(s, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (r->refcount_order >= 0 && (uint32_t)r->refcount_order != s->refcount_order) {
        if (new_version < 3 && r->refcount_order != 4) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Refcount widths other than 16 "
                                "bits require compatibility level 1.1 or above (use "
                                "compat=1.1 or greater)");
        }
        ret = qcow2_mark_clean_locked(s);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "%s: failed to make the image clean: "
                                "%s", s->name, strerror(-ret));
        }
        ret = qcow2_change_refcount_order_locked(s, (uint32_t)r->refcount_order, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (r->backing_file || r->backing_fmt) {
        const char *bf = r->backing_file ? r->backing_file : s->h.backing_file;
        const char *fmt = r->backing_fmt ? r->backing_fmt : s->h.backing_format;
        char *bf_copy = vd_xstrdup(bf);
        char *fmt_copy = vd_xstrdup(fmt);
        ret = qcow2_set_backing_locked(s, bf_copy, fmt_copy, errp);
        free(bf_copy);
        free(fmt_copy);
        if (ret < 0) {
            return ret;
        }
    }
    bool lazy_now = (s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    if (r->lazy >= 0 && (bool)r->lazy != lazy_now) {
        if (r->lazy) {
            if (new_version < 3) {
                return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Lazy refcounts only "
                                    "supported with compatibility level 1.1 and above (use "
                                    "compat=1.1 or greater)");
            }
            s->h.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
            s->lazy_refcounts = true;
        } else {
            ret = qcow2_mark_clean_locked(s);
            if (ret < 0) {
                return vd_error_set(errp, VD_ERR_IO, -ret, "%s: failed to make the image "
                                    "clean: %s", s->name, strerror(-ret));
            }
            s->h.compatible_features &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
            s->lazy_refcounts = false;
        }
        ret = qcow2_write_header(s);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "%s: could not update the header: %s",
                                s->name, strerror(-ret));
        }
    }
    if (r->has_size && r->size != s->h.size) {
        ret = qcow2_truncate_locked(s, r->size, true, "off", errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (new_version < old_version) {
        ret = amend_downgrade(s, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return qcow2_flush_locked(s);
}

int qcow2_amend(vd_node *node, const vd_opts *opts, vd_error **errp)
{
    qcow2_state *s = node->opaque;
    amend_req r;
    memset(&r, 0, sizeof(r));
    int ret = amend_parse(s, opts, &r, errp);
    if (ret < 0) {
        return ret;
    }
    if (!s->writable || s->broken) {
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "%s: image is read-only", s->name);
    }
    pthread_mutex_lock(&s->lock);
    qcow2_drain_locked(s);
    ret = amend_locked(s, &r, errp);
    if (ret < 0 && errp && !*errp) {
        char detail[512];
        ret = vd_error_set(errp, VD_ERR_IO, -ret, "%s: %s", s->name,
                           vd_node_get_error(s->node, detail, sizeof(detail))
                               ? detail : strerror(-ret));
    }
    qcow2_undrain_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}
