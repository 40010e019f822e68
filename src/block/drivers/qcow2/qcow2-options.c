/* qcow2's open options, as QEMU names them: lazy-refcounts and the metadata cache sizes
 * (cache-size, l2-cache-size, refcount-cache-size, l2-cache-entry-size), read and checked
 * with QEMU's rules and words. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

const char *const qcow2_runtime_opts[] = {
    "lazy-refcounts", "cache-size", "l2-cache-size", "refcount-cache-size",
    "l2-cache-entry-size", NULL,
};

/* The L2 cache that covers the whole disk, QEMU's upper bound when only cache-size is
 * given. */
static uint64_t l2_cache_for_disk(const qcow2_state *s)
{
    uint64_t clusters = (s->h.size + s->cluster_size - 1) / s->cluster_size;
    return clusters * s->l2e_size;
}

int qcow2_read_options(qcow2_state *s, const vd_tree *opts, vd_error **errp)
{
    s->lazy_refcounts = (s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    s->l2_cache_bytes = QCOW2_L2_CACHE_BYTES;
    s->rb_cache_bytes = QCOW2_RB_CACHE_BYTES;
    if (!opts) {
        return 0;
    }
    bool lazy;
    uint64_t combined, l2, rb, entry;
    int ret = vd_tree_get_bool(opts, "lazy-refcounts", NULL, s->lazy_refcounts, &lazy, errp);
    if (ret == 0) {
        ret = vd_tree_get_size(opts, "cache-size", NULL, 0, &combined, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_size(opts, "l2-cache-size", NULL, 0, &l2, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_size(opts, "refcount-cache-size", NULL, 0, &rb, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_size(opts, "l2-cache-entry-size", NULL, s->cluster_size, &entry,
                               errp);
    }
    if (ret < 0) {
        return ret;
    }
    bool has_combined = vd_tree_get(opts, "cache-size") != NULL;
    bool has_l2 = vd_tree_get(opts, "l2-cache-size") != NULL;
    bool has_rb = vd_tree_get(opts, "refcount-cache-size") != NULL;
    if (lazy && s->h.version < 3) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Lazy refcounts require a qcow2 "
                            "image with at least qemu 1.1 compatibility level");
    }
    if (has_combined && has_l2 && has_rb) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "cache-size, l2-cache-size and "
                            "refcount-cache-size may not be set at the same time");
    }
    if (has_combined && has_l2 && l2 > combined) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "l2-cache-size may not exceed "
                            "cache-size");
    }
    if (has_combined && has_rb && rb > combined) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "refcount-cache-size may not exceed "
                            "cache-size");
    }
    if (entry < 512 || entry > s->cluster_size || (entry & (entry - 1))) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "L2 cache entry size must be a "
                            "power of two between 512 and the cluster size (%" PRIu64 ")",
                            s->cluster_size);
    }
    if (has_combined) {
        if (has_l2) {
            rb = combined - l2;
        } else if (has_rb) {
            l2 = combined - rb;
        } else {
            /* The L2 cache takes what covers the disk, the refcount cache the rest (at
             * least four clusters, as QEMU keeps). */
            uint64_t min_rb = 4 * s->cluster_size;
            l2 = l2_cache_for_disk(s);
            if (combined < min_rb || l2 > combined - min_rb) {
                l2 = combined > min_rb ? combined - min_rb : 0;
            }
            rb = combined - l2;
        }
        has_l2 = has_rb = true;
    }
    s->lazy_refcounts = lazy;
    /* The caches keep a floor of their own (qcow2_cache_new), as QEMU rounds up to a
     * minimum number of entries. */
    if (has_l2) {
        s->l2_cache_bytes = l2;
    }
    if (has_rb) {
        s->rb_cache_bytes = rb;
    }
    if (entry < s->slice_size) {
        s->slice_size = (uint32_t)entry;
        s->l2_slice_entries = s->slice_size / s->l2e_size;
    }
    return 0;
}
