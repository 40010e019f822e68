/* qcow2's open options, as QEMU names them: lazy-refcounts, the metadata cache sizes
 * (cache-size, l2-cache-size, refcount-cache-size, l2-cache-entry-size,
 * cache-clean-interval), which freed clusters become holes (pass-discard-*), and which
 * metadata a guest write is checked against (overlap-check), read and checked with QEMU's
 * rules and words. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2.h"

const char *const qcow2_runtime_opts[] = {
    "lazy-refcounts", "cache-size", "l2-cache-size", "refcount-cache-size",
    "l2-cache-entry-size", "cache-clean-interval", "pass-discard-request",
    "pass-discard-snapshot", "pass-discard-other", "overlap-check", "overlap-check.template",
    "overlap-check.main-header", "overlap-check.active-l1", "overlap-check.active-l2",
    "overlap-check.refcount-table", "overlap-check.refcount-block",
    "overlap-check.snapshot-table", "overlap-check.inactive-l1", "overlap-check.inactive-l2",
    "overlap-check.bitmap-directory", NULL,
};

/* overlap-check's modes and per-kind switches, as QEMU names them. */
static const struct {
    const char *name;
    unsigned mask;
} ol_modes[] = {
    {"none", 0},
    {"constant", QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 | QCOW2_OL_REFCOUNT_TABLE |
                 QCOW2_OL_SNAPSHOT_TABLE | QCOW2_OL_BITMAP_DIRECTORY},
    {"cached", QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 | QCOW2_OL_REFCOUNT_TABLE |
               QCOW2_OL_SNAPSHOT_TABLE | QCOW2_OL_BITMAP_DIRECTORY | QCOW2_OL_ACTIVE_L2 |
               QCOW2_OL_REFCOUNT_BLOCK | QCOW2_OL_INACTIVE_L1},
    {"all", QCOW2_OL_ALL},
};

static const struct {
    const char *name;
    unsigned bit;
} ol_kinds[] = {
    {"main-header", QCOW2_OL_MAIN_HEADER},       {"active-l1", QCOW2_OL_ACTIVE_L1},
    {"active-l2", QCOW2_OL_ACTIVE_L2},           {"refcount-table", QCOW2_OL_REFCOUNT_TABLE},
    {"refcount-block", QCOW2_OL_REFCOUNT_BLOCK}, {"snapshot-table", QCOW2_OL_SNAPSHOT_TABLE},
    {"inactive-l1", QCOW2_OL_INACTIVE_L1},       {"inactive-l2", QCOW2_OL_INACTIVE_L2},
    {"bitmap-directory", QCOW2_OL_BITMAP_DIRECTORY},
};

/* A member of overlap-check given flat ("overlap-check.template" beside a mode) or nested
 * ({"overlap-check": {"template": ...}}). */
static const vd_tree *ol_member(const vd_tree *opts, const char *name, char *key, size_t len)
{
    snprintf(key, len, "overlap-check.%s", name);
    const vd_tree *v = vd_tree_get(opts, key);
    const vd_tree *nested = vd_tree_get(opts, "overlap-check");
    if (!v && nested && vd_tree_type_of(nested) == VD_TREE_OBJECT) {
        snprintf(key, len, "%s", name);
        return nested;
    }
    return v ? opts : NULL;
}

static int overlap_options(const vd_tree *opts, unsigned *mask, vd_error **errp)
{
    char key[64];
    const vd_tree *t = vd_tree_get(opts, "overlap-check");
    const char *mode = vd_tree_string(t);
    const char *tmpl = NULL;
    const vd_tree *where = ol_member(opts, "template", key, sizeof(key));
    int ret = vd_tree_get_str(where, key, "overlap-check.template", &tmpl, errp);
    if (ret < 0) {
        return ret;
    }
    if (mode && tmpl && strcmp(mode, tmpl)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Conflicting values for qcow2 "
                            "options 'overlap-check' ('%s') and 'overlap-check.template' "
                            "('%s')", mode, tmpl);
    }
    if (!mode) {
        mode = tmpl ? tmpl : "cached";
    }
    size_t m = 0;
    while (m < sizeof(ol_modes) / sizeof(ol_modes[0]) && strcmp(ol_modes[m].name, mode)) {
        m++;
    }
    if (m == sizeof(ol_modes) / sizeof(ol_modes[0])) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unsupported value '%s' for qcow2 "
                            "option 'overlap-check'. Allowed are any of the following: none, "
                            "constant, cached, all", mode);
    }
    *mask = ol_modes[m].mask;
    for (size_t i = 0; i < sizeof(ol_kinds) / sizeof(ol_kinds[0]); i++) {
        char what[64];
        bool on;
        snprintf(what, sizeof(what), "overlap-check.%s", ol_kinds[i].name);
        where = ol_member(opts, ol_kinds[i].name, key, sizeof(key));
        ret = vd_tree_get_bool(where, key, what, (*mask & ol_kinds[i].bit) != 0, &on, errp);
        if (ret < 0) {
            return ret;
        }
        *mask = on ? *mask | ol_kinds[i].bit : *mask & ~ol_kinds[i].bit;
    }
    return 0;
}

/* pass-discard-*, cache-clean-interval and overlap-check: the options that need no
 * header fields. */
static int other_options(qcow2_state *s, const vd_tree *opts, vd_error **errp)
{
    uint64_t interval;
    int ret = vd_tree_get_bool(opts, "pass-discard-request", NULL,
                               (s->node->open_flags & VD_OPEN_UNMAP) != 0,
                               &s->pass_discard_request, errp);
    if (ret == 0) {
        ret = vd_tree_get_bool(opts, "pass-discard-snapshot", NULL, true,
                               &s->pass_discard_snapshot, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_bool(opts, "pass-discard-other", NULL, false,
                               &s->pass_discard_other, errp);
    }
    if (ret == 0) {
        /* QEMU's default on Linux: idle cache memory goes after ten minutes. */
        ret = vd_tree_get_uint(opts, "cache-clean-interval", NULL, 600, &interval, errp);
    }
    if (ret == 0 && interval > UINT32_MAX) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cache clean interval too big");
    }
    if (ret == 0) {
        s->cache_clean_interval = interval;
        ret = overlap_options(opts, &s->overlap_mask, errp);
    }
    return ret;
}

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
    int ret = other_options(s, opts, errp);
    if (ret < 0 || !opts) {
        return ret;
    }
    bool lazy;
    uint64_t combined, l2, rb, entry;
    ret = vd_tree_get_bool(opts, "lazy-refcounts", NULL, s->lazy_refcounts, &lazy, errp);
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
    /* More L2 cache than the disk has tables is no use (QEMU clamps it too). */
    uint64_t whole = (l2_cache_for_disk(s) + s->cluster_size - 1) / s->cluster_size *
                     s->cluster_size;
    if (has_l2 && l2 > whole) {
        l2 = whole;
    }
    /* QEMU counts its caches in entries of an int. */
    if (has_l2 && l2 / entry > INT32_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "L2 cache size too big");
    }
    if (has_rb && rb / s->cluster_size > INT32_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Refcount cache size too big");
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
