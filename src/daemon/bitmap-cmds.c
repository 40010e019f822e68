/* vdiskd's dirty bitmap commands (QMP block-dirty-bitmap-*), the same as transaction
 * actions, the dirty-bitmaps member of query-named-block-nodes and the bitmaps an NBD
 * export offers. The work is the library's (vdisk/bitmap.h); this is the JSON side. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"

/* block-dirty-bitmap-add's optional members, checked as QEMU's QAPI does. where: the
 * members' path in the command ("" or "actions[N].data."). */
static int add_opts(json_object *args, const char *where, vd_bitmap_add_opts *o,
                    vd_error **errp)
{
    memset(o, 0, sizeof(*o));
    json_object *g = NULL;
    if (json_object_object_get_ex(args, "granularity", &g) && g) {
        if (!json_object_is_type(g, json_type_int) || json_object_get_int64(g) < 0) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%sgranularity' "
                                "expects uint64", where);
        }
        int64_t v = json_object_get_int64(g);
        if (v > UINT32_MAX) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%sgranularity' "
                                "expects uint32_t", where);
        }
        /* QEMU refuses 0 as it refuses any size below 512. */
        o->granularity = v ? (uint64_t)v : 1;
    }
    int ret = opt_bool(args, "persistent", false, &o->persistent, errp);
    return ret < 0 ? ret : opt_bool(args, "disabled", false, &o->disabled, errp);
}

int cmd_bitmap_add(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)ret;
    vd_bitmap_add_opts o;
    int r = add_opts(args, "", &o, errp);
    return r < 0 ? r : vd_bitmap_add(vdiskd.engine, opt_str(args, "node"),
                                     opt_str(args, "name"), &o, errp);
}

int cmd_bitmap_remove(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)ret;
    return vd_bitmap_remove(vdiskd.engine, opt_str(args, "node"), opt_str(args, "name"),
                            errp);
}

int cmd_bitmap_clear(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)ret;
    return vd_bitmap_clear(vdiskd.engine, opt_str(args, "node"), opt_str(args, "name"),
                           errp);
}

int cmd_bitmap_enable(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)ret;
    return vd_bitmap_enable(vdiskd.engine, opt_str(args, "node"), opt_str(args, "name"),
                            errp);
}

int cmd_bitmap_disable(qmp_session *qs, json_object *args, json_object **ret,
                       vd_error **errp)
{
    (void)qs;
    (void)ret;
    return vd_bitmap_disable(vdiskd.engine, opt_str(args, "node"), opt_str(args, "name"),
                             errp);
}

/* QEMU's BlockDirtyBitmapOrStr: "name" (on the node of the command) or {node, name}.
 * what: the member's path, for messages. */
static int bitmap_refs(json_object *arr, const char *what, vd_bitmap_ref **out, size_t *nb,
                       vd_error **errp)
{
    *out = NULL;
    *nb = 0;
    if (!arr) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is missing", what);
    }
    if (!json_object_is_type(arr, json_type_array)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for '%s', "
                            "expected: array", what);
    }
    size_t n = json_object_array_length(arr);
    vd_bitmap_ref *refs = calloc(n ? n : 1, sizeof(*refs));
    if (!refs) {
        abort();
    }
    int ret = 0;
    for (size_t i = 0; i < n && ret == 0; i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        if (v && json_object_is_type(v, json_type_string)) {
            refs[i].name = json_object_get_string(v);
        } else if (v && json_object_is_type(v, json_type_object)) {
            refs[i].node = opt_str(v, "node");
            refs[i].name = opt_str(v, "name");
            if (!refs[i].node || !refs[i].name) {
                ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s[%zu].%s' is "
                                   "missing", what, i, !refs[i].node ? "node" : "name");
            }
        } else {
            /* QEMU names no member here: its message says 'null'. */
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                               "'null', expected: BlockDirtyBitmapOrStr");
        }
    }
    if (ret < 0) {
        free(refs);
        return ret;
    }
    *out = refs;
    *nb = n;
    return 0;
}

int cmd_bitmap_merge(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)ret;
    json_object *arr = NULL;
    json_object_object_get_ex(args, "bitmaps", &arr);
    vd_bitmap_ref *refs;
    size_t n;
    int r = bitmap_refs(arr, "bitmaps", &refs, &n, errp);
    if (r == 0) {
        r = vd_bitmap_merge(vdiskd.engine, opt_str(args, "node"), opt_str(args, "target"),
                            refs, n, errp);
        free(refs);
    }
    return r;
}

bool bitmap_action_type(const char *type)
{
    return !strncmp(type, "block-dirty-bitmap-", 19);
}

int bitmap_action(const char *type, json_object *data, size_t index, vd_action *a,
                  vd_error **errp)
{
    static const struct {
        const char *name;
        vd_action_kind kind;
    } kinds[] = {
        {"block-dirty-bitmap-add", VD_ACTION_BITMAP_ADD},
        {"block-dirty-bitmap-remove", VD_ACTION_BITMAP_REMOVE},
        {"block-dirty-bitmap-clear", VD_ACTION_BITMAP_CLEAR},
        {"block-dirty-bitmap-enable", VD_ACTION_BITMAP_ENABLE},
        {"block-dirty-bitmap-disable", VD_ACTION_BITMAP_DISABLE},
        {"block-dirty-bitmap-merge", VD_ACTION_BITMAP_MERGE},
    };
    size_t k = 0;
    while (k < sizeof(kinds) / sizeof(kinds[0]) && strcmp(kinds[k].name, type)) {
        k++;
    }
    if (k == sizeof(kinds) / sizeof(kinds[0])) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter 'type'");
    }
    char where[48];
    snprintf(where, sizeof(where), "actions[%zu].data.", index);
    const char *node = opt_str(data, "node");
    const char *name = opt_str(data, kinds[k].kind == VD_ACTION_BITMAP_MERGE ? "target"
                                                                             : "name");
    if (!node || !name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s%s' is missing",
                            where, !node ? "node" : kinds[k].kind == VD_ACTION_BITMAP_MERGE
                                                        ? "target" : "name");
    }
    a->kind = kinds[k].kind;
    a->engine = vdiskd.engine;
    a->node = node;
    a->bitmap = name;
    /* The daemon's handle on the node, if it has one, carries the node's writers (its
     * exports): held back for the transaction with the others. */
    dhandle *h = handle_of(node);
    a->disk = h ? h->disk : NULL;
    int r = 0;
    if (a->kind == VD_ACTION_BITMAP_ADD) {
        r = add_opts(data, where, &a->bitmap_opts, errp);
    } else if (a->kind == VD_ACTION_BITMAP_MERGE) {
        json_object *arr = NULL;
        json_object_object_get_ex(data, "bitmaps", &arr);
        vd_bitmap_ref *refs;
        char what[64];
        snprintf(what, sizeof(what), "%sbitmaps", where);
        r = bitmap_refs(arr, what, &refs, &a->nb_sources, errp);
        a->sources = refs;
    }
    return r;
}

void bitmap_action_free(vd_action *a)
{
    if (a->kind == VD_ACTION_BITMAP_MERGE) {
        free((void *)a->sources);
        a->sources = NULL;
    }
}

/* Jobs' bitmaps (anonymous: no "name") first, as qemu-storage-daemon lists a mirror's. */
json_object *dirty_bitmaps_json(const char *node)
{
    vd_bitmap_info *list, *jobs;
    size_t nb, nj;
    if (vd_bitmap_list(vdiskd.engine, node, &list, &nb, NULL) < 0) {
        return NULL;
    }
    vd_job_node_bitmaps(vdiskd.engine, node, &jobs, &nj);
    if (nb + nj == 0) {
        vd_bitmap_list_free(list, nb);
        vd_bitmap_list_free(jobs, nj);
        return NULL;
    }
    json_object *arr = json_object_new_array();
    for (size_t k = 0; k < nb + nj; k++) {
        vd_bitmap_info *b = k < nj ? &jobs[k] : &list[k - nj];
        json_object *o = json_object_new_object();
        if (b->name) {
            json_object_object_add(o, "name", json_object_new_string(b->name));
        }
        json_object_object_add(o, "recording", json_object_new_boolean(b->recording));
        json_object_object_add(o, "persistent", json_object_new_boolean(b->persistent));
        json_object_object_add(o, "busy", json_object_new_boolean(b->busy));
        json_object_object_add(o, "granularity", json_object_new_int64((int64_t)b->granularity));
        json_object_object_add(o, "count", json_object_new_int64((int64_t)b->count));
        if (b->inconsistent) {
            json_object_object_add(o, "inconsistent", json_object_new_boolean(true));
        }
        json_object_array_add(arr, o);
    }
    vd_bitmap_list_free(list, nb);
    vd_bitmap_list_free(jobs, nj);
    return arr;
}

int export_bitmaps(json_object *arr, vd_disk *d, bool read_only, vd_dirty_bitmap ***out,
                   size_t *nb, vd_error **errp)
{
    *out = NULL;
    *nb = 0;
    if (!arr) {
        return 0;
    }
    vd_bitmap_ref *refs;
    size_t n;
    int r = bitmap_refs(arr, "bitmaps", &refs, &n, errp);
    if (r < 0) {
        return r;
    }
    vd_dirty_bitmap **bms = calloc(n ? n : 1, sizeof(*bms));
    if (!bms) {
        abort();
    }
    size_t got = 0;
    for (; got < n && r == 0; got++) {
        r = vd_bitmap_acquire(d, refs[got].node, refs[got].name, read_only, &bms[got], errp);
    }
    free(refs);
    if (r < 0) {
        for (size_t i = 0; i + 1 < got; i++) {
            vd_bitmap_release(bms[i]);
        }
        free(bms);
        return r;
    }
    *out = bms;
    *nb = n;
    return 0;
}
