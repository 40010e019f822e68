/* Dirty bitmaps on the nodes of the engine's graph (vdisk/bitmap.h). Each node keeps its
 * bitmaps in a list under its bitmap_lock; one write notifier per node marks the enabled
 * ones after every request that changes data. Commands look nodes up by name and take a
 * reference for their length; refusals and their order are QEMU's. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/dirty-bitmap.h"
#include "block/disk.h"

/* ---- marking ---------------------------------------------------------------------------- */

/* QEMU marks a request's range whatever its result; a resize truncates or extends the
 * bitmaps, the new part clean (the guest has not written it). */
static void mark_after(vd_write_notifier *nt, vd_node *n, const vd_write_req *req, int ret)
{
    (void)nt;
    pthread_mutex_lock(&n->bitmap_lock);
    for (vd_dirty_bitmap *b = n->bitmaps; b; b = b->next) {
        if (req->kind == VD_WRITE_TRUNCATE) {
            uint64_t size = __atomic_load_n(&n->size, __ATOMIC_RELAXED);
            if (ret < 0 || size == vd_hbitmap_size(b->hb)) {
                continue;
            }
            vd_hbitmap *hb = vd_hbitmap_resized(b->hb, size);
            if (!hb) {
                abort();
            }
            vd_hbitmap_free(b->hb);
            b->hb = hb;
        } else if (b->enabled) {
            vd_hbitmap_set(b->successor ? b->successor : b->hb, req->off, req->len);
        }
    }
    pthread_mutex_unlock(&n->bitmap_lock);
}

static void bitmap_free(vd_dirty_bitmap *b)
{
    vd_hbitmap_free(b->hb);
    free(b->name);
    free(b);
}

/* A clean bitmap for n, not yet on its list; NULL without the memory for its bits. */
static vd_dirty_bitmap *bitmap_new(vd_node *n, const char *name, uint64_t granularity)
{
    vd_dirty_bitmap *b = calloc(1, sizeof(*b));
    if (!b || !(b->name = strdup(name))) {
        abort();
    }
    b->node = n;
    b->hb = vd_hbitmap_new(n->size, granularity);
    if (!b->hb) {
        bitmap_free(b);
        return NULL;
    }
    return b;
}

/* Puts b at the head of its node's list (locked); the node's marking notifier comes with
 * its first bitmap. */
static void link_locked(vd_dirty_bitmap *b)
{
    vd_node *n = b->node;
    b->next = n->bitmaps;
    n->bitmaps = b;
    if (!n->bitmap_notifier_on) {
        n->bitmap_notifier.after = mark_after;
        vd_node_add_write_notifier(n, &n->bitmap_notifier);
        n->bitmap_notifier_on = true;
    }
}

static vd_hbitmap *copy_of(const vd_hbitmap *hb)
{
    vd_hbitmap *c = vd_hbitmap_resized(hb, vd_hbitmap_size(hb));
    if (!c) {
        abort();
    }
    return c;
}

void vd_node_free_bitmaps(vd_node *n)
{
    while (n->bitmaps) {
        vd_dirty_bitmap *b = n->bitmaps;
        n->bitmaps = b->next;
        bitmap_free(b);
    }
}

/* ---- lookups ---------------------------------------------------------------------------- */

static vd_dirty_bitmap *find_locked(vd_node *n, const char *name)
{
    for (vd_dirty_bitmap *b = n->bitmaps; b; b = b->next) {
        if (!strcmp(b->name, name)) {
            return b;
        }
    }
    return NULL;
}

/* The named node with a reference, as QEMU's bitmap commands look it up. */
static int node_ref(vd_engine *e, const char *node, vd_node **out, vd_error **errp)
{
    if (!node) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node cannot be NULL");
    }
    int ret = vd_graph_ref(e, node, out, NULL);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Node '%s' not found", node);
    }
    return 0;
}

/* What a command may not do to a bitmap (QEMU's BDRV_BITMAP_* checks). */
enum { ALLOW_RO = 0, DEFAULT = 1 };

static int usable(const vd_dirty_bitmap *b, int check, bool allow_inconsistent,
                  vd_error **errp)
{
    if (b->busy) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Bitmap '%s' is currently in use by "
                            "another operation and cannot be used", b->name);
    }
    if (check == DEFAULT && !(b->node->open_flags & VD_OPEN_RDWR) && b->persistent) {
        return vd_error_set(errp, VD_ERR_INVALID, EPERM, "Bitmap '%s' is readonly and "
                            "cannot be modified", b->name);
    }
    if (b->inconsistent && !allow_inconsistent) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap '%s' is inconsistent and "
                            "cannot be used", b->name);
    }
    return 0;
}

/* Where a command looks for its bitmap: a node of the engine's graph by name, or the
 * node of a handle (a tool's image opened with vd_open). */
typedef struct where {
    vd_engine *e;
    const char *node;
    vd_disk *d;
} where;

/* The node with a reference; add: with the message QEMU's block-dirty-bitmap-add gives
 * for a missing node. */
static int where_ref(const where *w, bool add, vd_node **np, vd_error **errp)
{
    if (w->d) {
        vd_disk_enter(w->d);
        *np = w->d->node;
        vd_node_ref(*np);
        vd_disk_leave(w->d);
        return 0;
    }
    return add ? vd_graph_ref(w->e, w->node ? w->node : "", np, errp)
               : node_ref(w->e, w->node, np, errp);
}

/* Looks up node and bitmap and locks the node's bitmaps; on success the caller unlocks and
 * drops the reference (put). */
static int lookup(const where *w, const char *name, vd_node **np, vd_dirty_bitmap **bp,
                  vd_error **errp)
{
    if (!name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap name cannot be NULL");
    }
    int ret = where_ref(w, false, np, errp);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&(*np)->bitmap_lock);
    *bp = find_locked(*np, name);
    if (!*bp) {
        pthread_mutex_unlock(&(*np)->bitmap_lock);
        vd_node_unref(*np);
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Dirty bitmap '%s' not found",
                            name);
    }
    return 0;
}

static void put(vd_node *n)
{
    pthread_mutex_unlock(&n->bitmap_lock);
    vd_node_unref(n);
}

/* ---- the commands ----------------------------------------------------------------------- */

/* QEMU's default: the cluster size, kept within 4-64 KiB; 64 KiB for a node without. */
static uint64_t default_granularity(vd_node *n)
{
    uint64_t c = vd_node_cluster_size(n);
    return !c ? 65536 : c < 4096 ? 4096 : c > 65536 ? 65536 : c;
}

static int add_checked(vd_node *n, const char *name, const vd_bitmap_add_opts *o,
                       vd_error **errp)
{
    uint64_t gran = o->granularity;
    if (gran) {
        if (gran < 512 || (gran & (gran - 1)) || gran > (1ull << 31)) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Granularity must be power of "
                                "2 and at least 512");
        }
    } else {
        gran = default_granularity(n);
    }
    if (o->persistent) {
        if (!n->drv->bitmap_can_store) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Can't store persistent "
                                "bitmaps to %s: Operation not supported",
                                n->node_name ? n->node_name : n->filename);
        }
        int ret = n->drv->bitmap_can_store(n, name, gran, errp);
        if (ret < 0) {
            return ret;
        }
    }
    pthread_mutex_lock(&n->bitmap_lock);
    if (find_locked(n, name)) {
        pthread_mutex_unlock(&n->bitmap_lock);
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Bitmap already exists: %s", name);
    }
    if (strlen(name) > VD_BITMAP_MAX_NAME) {
        pthread_mutex_unlock(&n->bitmap_lock);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap name too long: %s", name);
    }
    vd_dirty_bitmap *b = bitmap_new(n, name, gran);
    if (!b) {
        pthread_mutex_unlock(&n->bitmap_lock);
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "Could not allocate a bitmap of "
                            "%" PRIu64 " bytes at granularity %" PRIu64, n->size, gran);
    }
    b->enabled = !o->disabled;
    b->persistent = o->persistent;
    link_locked(b);
    pthread_mutex_unlock(&n->bitmap_lock);
    return 0;
}

static int add_at(const where *w, const char *name, const vd_bitmap_add_opts *opts,
                  vd_error **errp)
{
    static const vd_bitmap_add_opts defaults;
    if (!name || !*name) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmap name cannot be empty");
    }
    vd_node *n;
    int ret = where_ref(w, true, &n, errp);
    if (ret < 0) {
        return ret;
    }
    ret = add_checked(n, name, opts ? opts : &defaults, errp);
    vd_node_unref(n);
    return ret;
}

/* A stored bitmap leaves the image (a format's bitmap_remove_stored). Called and
 * returning with the bitmap lock held; the driver runs without it (writes mark bitmaps
 * under it, and the image's lock comes first), busy keeping others off b meanwhile. */
static int remove_stored_locked(vd_node *n, vd_dirty_bitmap *b, vd_error **errp)
{
    if (!b->persistent || !n->drv->bitmap_remove_stored) {
        return 0;
    }
    b->busy++;
    pthread_mutex_unlock(&n->bitmap_lock);
    int ret = n->drv->bitmap_remove_stored(n, b->name, errp);
    pthread_mutex_lock(&n->bitmap_lock);
    b->busy--;
    return ret;
}

/* Takes b out of its node's list (locked); false if it is not there. */
static bool unlink_locked(vd_dirty_bitmap *b)
{
    for (vd_dirty_bitmap **p = &b->node->bitmaps; *p; p = &(*p)->next) {
        if (*p == b) {
            *p = b->next;
            return true;
        }
    }
    return false;
}

static int remove_at(const where *w, const char *name, vd_error **errp)
{
    vd_node *n;
    vd_dirty_bitmap *b;
    int ret = lookup(w, name, &n, &b, errp);
    if (ret < 0) {
        return ret;
    }
    /* A bitmap left inconsistent by a crash can still be removed; a stored one leaves
     * the image first. */
    ret = usable(b, DEFAULT, true, errp);
    if (ret == 0) {
        ret = remove_stored_locked(n, b, errp);
    }
    if (ret == 0) {
        unlink_locked(b);
        bitmap_free(b);
    }
    put(n);
    return ret;
}

static int clear_at(const where *w, const char *name, vd_error **errp)
{
    vd_node *n;
    vd_dirty_bitmap *b;
    int ret = lookup(w, name, &n, &b, errp);
    if (ret < 0) {
        return ret;
    }
    ret = usable(b, DEFAULT, false, errp);
    if (ret == 0) {
        vd_hbitmap_reset_all(b->hb);
    }
    put(n);
    return ret;
}

static int set_enabled(const where *w, const char *name, bool on, vd_error **errp)
{
    vd_node *n;
    vd_dirty_bitmap *b;
    int ret = lookup(w, name, &n, &b, errp);
    if (ret < 0) {
        return ret;
    }
    ret = usable(b, ALLOW_RO, false, errp);
    if (ret == 0) {
        b->enabled = on;
    }
    put(n);
    return ret;
}


/* A copy of a merge source, taken under its own node's lock (so that two nodes' locks are
 * never held together). */
static int source_copy(const where *w, const char *name, vd_hbitmap **out, vd_error **errp)
{
    vd_node *n;
    vd_dirty_bitmap *b;
    int ret = lookup(w, name, &n, &b, errp);
    if (ret < 0) {
        return ret;
    }
    ret = usable(b, ALLOW_RO, false, errp);
    if (ret == 0) {
        *out = copy_of(b->hb);
    }
    put(n);
    return ret;
}

int vd_bitmap_copy_bits(vd_engine *e, const char *node, const char *name, vd_hbitmap **out,
                        vd_error **errp)
{
    where w = {.e = e, .node = node};
    return source_copy(&w, name, out, errp);
}

int vd_bitmap_freeze(vd_node *n, const char *name, bool check_writable,
                     vd_dirty_bitmap **out, vd_hbitmap **bits, vd_error **errp)
{
    pthread_mutex_lock(&n->bitmap_lock);
    vd_dirty_bitmap *b = find_locked(n, name);
    int ret = !b ? vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Bitmap '%s' could not be "
                                "found", name)
                 : usable(b, ALLOW_RO, false, errp);
    if (ret == 0 && check_writable) {
        ret = usable(b, DEFAULT, false, errp);
    }
    if (ret == 0) {
        b->successor = vd_hbitmap_new(vd_hbitmap_size(b->hb),
                                      vd_hbitmap_granularity(b->hb));
        *bits = copy_of(b->hb);
        if (!b->successor || !*bits) {
            abort();
        }
        b->busy++;
        vd_node_ref(n);
        *out = b;
    }
    pthread_mutex_unlock(&n->bitmap_lock);
    return ret;
}

void vd_bitmap_thaw(vd_dirty_bitmap *b, bool abdicate, const vd_hbitmap *extra)
{
    vd_node *n = b->node;
    pthread_mutex_lock(&n->bitmap_lock);
    if (abdicate) {
        vd_hbitmap_free(b->hb);
        b->hb = b->successor;
    } else {
        vd_hbitmap_merge(b->hb, b->successor);
        vd_hbitmap_free(b->successor);
    }
    b->successor = NULL;
    if (extra) {
        vd_hbitmap_merge(b->hb, extra);
    }
    b->busy--;
    pthread_mutex_unlock(&n->bitmap_lock);
    vd_node_unref(n);
}

/* Merges the sources into b (locked); b is unchanged on failure. */
static int merge_locked(vd_dirty_bitmap *b, vd_hbitmap **copies, size_t nb, vd_error **errp)
{
    for (size_t i = 0; i < nb; i++) {
        if (vd_hbitmap_size(copies[i]) != vd_hbitmap_size(b->hb)) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Bitmaps are of different "
                                "sizes (destination size is %" PRIu64 ", source size is %"
                                PRIu64 ") and can't be merged", vd_hbitmap_size(b->hb),
                                vd_hbitmap_size(copies[i]));
        }
    }
    for (size_t i = 0; i < nb; i++) {
        vd_hbitmap_merge(b->hb, copies[i]);
    }
    return 0;
}

/* The merge: target checks, copies of the sources, then the merge under the target's lock
 * (looked up again: the copies were taken without it). */
static int merge(const where *w, const char *target, const where *srcs,
                 const char *const *names, size_t nb, vd_hbitmap **backup, vd_error **errp)
{
    vd_node *n;
    vd_dirty_bitmap *b;
    int ret = lookup(w, target, &n, &b, errp);
    if (ret < 0) {
        return ret;
    }
    ret = usable(b, DEFAULT, false, errp);
    put(n);
    if (ret < 0) {
        return ret;
    }
    vd_hbitmap **copies = calloc(nb ? nb : 1, sizeof(*copies));
    if (!copies) {
        abort();
    }
    size_t got = 0;
    for (; got < nb && ret == 0; got++) {
        ret = source_copy(&srcs[got], names[got], &copies[got], errp);
    }
    if (ret == 0) {
        ret = lookup(w, target, &n, &b, errp);
        if (ret == 0) {
            ret = usable(b, DEFAULT, false, errp);
            if (ret == 0 && backup) {
                *backup = copy_of(b->hb);
            }
            if (ret == 0) {
                ret = merge_locked(b, copies, nb, errp);
            }
            put(n);
        }
    }
    for (size_t i = 0; i < got; i++) {
        vd_hbitmap_free(copies[i]);
    }
    free(copies);
    return ret;
}

/* A merge whose sources are named relative to the target's node (vd_bitmap_ref). */
static int merge_refs(vd_engine *e, const char *node, const char *target,
                      const vd_bitmap_ref *refs, size_t nb, vd_hbitmap **backup,
                      vd_error **errp)
{
    where *srcs = calloc(nb ? nb : 1, sizeof(*srcs));
    const char **names = calloc(nb ? nb : 1, sizeof(*names));
    if (!srcs || !names) {
        abort();
    }
    for (size_t i = 0; i < nb; i++) {
        srcs[i] = (where){e, refs[i].node ? refs[i].node : node, NULL};
        names[i] = refs[i].name;
    }
    where w = {e, node, NULL};
    int ret = merge(&w, target, srcs, names, nb, backup, errp);
    free(srcs);
    free(names);
    return ret;
}

static int list_at(const where *w, vd_bitmap_info **out, size_t *nb, vd_error **errp)
{
    *out = NULL;
    *nb = 0;
    vd_node *n;
    int ret = where_ref(w, true, &n, errp);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&n->bitmap_lock);
    size_t count = 0;
    for (vd_dirty_bitmap *b = n->bitmaps; b; b = b->next) {
        count++;
    }
    vd_bitmap_info *list = calloc(count ? count : 1, sizeof(*list));
    if (!list) {
        abort();
    }
    size_t i = 0;
    for (vd_dirty_bitmap *b = n->bitmaps; b; b = b->next, i++) {
        list[i].name = strdup(b->name);
        if (!list[i].name) {
            abort();
        }
        list[i].count = vd_hbitmap_count(b->hb);
        list[i].granularity = vd_hbitmap_granularity(b->hb);
        list[i].recording = b->enabled;
        list[i].busy = b->busy != 0;
        list[i].persistent = b->persistent;
        list[i].inconsistent = b->inconsistent;
    }
    put(n);
    *out = list;
    *nb = count;
    return 0;
}

/* ---- the public entry points: by node name, and on a handle's node -------------------- */

int vd_bitmap_add(vd_engine *e, const char *node, const char *name,
                  const vd_bitmap_add_opts *opts, vd_error **errp)
{
    where w = {e, node, NULL};
    return add_at(&w, name, opts, errp);
}

int vd_bitmap_remove(vd_engine *e, const char *node, const char *name, vd_error **errp)
{
    where w = {e, node, NULL};
    return remove_at(&w, name, errp);
}

int vd_bitmap_clear(vd_engine *e, const char *node, const char *name, vd_error **errp)
{
    where w = {e, node, NULL};
    return clear_at(&w, name, errp);
}

int vd_bitmap_enable(vd_engine *e, const char *node, const char *name, vd_error **errp)
{
    where w = {e, node, NULL};
    return set_enabled(&w, name, true, errp);
}

int vd_bitmap_disable(vd_engine *e, const char *node, const char *name, vd_error **errp)
{
    where w = {e, node, NULL};
    return set_enabled(&w, name, false, errp);
}

int vd_bitmap_merge(vd_engine *e, const char *node, const char *target,
                    const vd_bitmap_ref *sources, size_t nb_sources, vd_error **errp)
{
    return merge_refs(e, node, target, sources, nb_sources, NULL, errp);
}

int vd_bitmap_list(vd_engine *e, const char *node, vd_bitmap_info **out, size_t *nb,
                   vd_error **errp)
{
    where w = {e, node, NULL};
    return list_at(&w, out, nb, errp);
}

int vd_disk_bitmap_add(vd_disk *d, const char *name, const vd_bitmap_add_opts *opts,
                       vd_error **errp)
{
    where w = {NULL, NULL, d};
    return add_at(&w, name, opts, errp);
}

int vd_disk_bitmap_remove(vd_disk *d, const char *name, vd_error **errp)
{
    where w = {NULL, NULL, d};
    return remove_at(&w, name, errp);
}

int vd_disk_bitmap_clear(vd_disk *d, const char *name, vd_error **errp)
{
    where w = {NULL, NULL, d};
    return clear_at(&w, name, errp);
}

int vd_disk_bitmap_enable(vd_disk *d, const char *name, bool on, vd_error **errp)
{
    where w = {NULL, NULL, d};
    return set_enabled(&w, name, on, errp);
}

int vd_disk_bitmap_merge(vd_disk *d, const char *target, vd_disk *src, const char *source,
                         vd_error **errp)
{
    where w = {NULL, NULL, d}, sw = {NULL, NULL, src ? src : d};
    return merge(&w, target, &sw, &source, 1, NULL, errp);
}

int vd_disk_bitmap_list(vd_disk *d, vd_bitmap_info **out, size_t *nb, vd_error **errp)
{
    where w = {NULL, NULL, d};
    return list_at(&w, out, nb, errp);
}

void vd_bitmap_list_free(vd_bitmap_info *list, size_t nb)
{
    for (size_t i = 0; list && i < nb; i++) {
        free(list[i].name);
    }
    free(list);
}

vd_dirty_bitmap *vd_node_bitmap_load(vd_node *n, const char *name, uint64_t granularity,
                                     bool enabled, bool inconsistent)
{
    vd_dirty_bitmap *b = bitmap_new(n, name, granularity);
    if (!b) {
        return NULL;
    }
    b->enabled = enabled && !inconsistent;   /* QEMU does not record into one */
    b->persistent = true;
    b->inconsistent = inconsistent;
    pthread_mutex_lock(&n->bitmap_lock);
    link_locked(b);
    pthread_mutex_unlock(&n->bitmap_lock);
    return b;
}

/* ---- readers ---------------------------------------------------------------------------- */

static int acquire_on(vd_node *n, const char *name, bool read_only, vd_dirty_bitmap **out,
                      vd_error **errp)
{
    pthread_mutex_lock(&n->bitmap_lock);
    vd_dirty_bitmap *b = find_locked(n, name);
    int ret = b ? usable(b, ALLOW_RO, false, errp) : -ENOENT;
    if (ret == 0 && read_only && b->enabled && (n->open_flags & VD_OPEN_RDWR)) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Enabled bitmap '%s' incompatible "
                           "with readonly export", name);
    }
    if (ret == 0) {
        b->busy++;
        *out = b;
        /* The reader keeps the node: it may be one the export does not otherwise hold
         * ({node, name}), which blockdev-del must then refuse, not free. */
        vd_node_ref(n);
    }
    pthread_mutex_unlock(&n->bitmap_lock);
    return ret;
}

int vd_bitmap_acquire(vd_disk *d, const char *node, const char *name, bool read_only,
                      vd_dirty_bitmap **out, vd_error **errp)
{
    int ret;
    if (node) {
        vd_node *n;
        ret = node_ref(d->engine, node, &n, errp);
        if (ret < 0) {
            return ret;
        }
        ret = acquire_on(n, name, read_only, out, errp);
        vd_node_unref(n);
        if (ret == -ENOENT) {
            return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Dirty bitmap '%s' not found",
                                name);
        }
    } else {
        vd_disk_enter(d);
        ret = -ENOENT;
        /* The handle's node, then down through filters and backing files. */
        for (vd_node *n = d->node; n && ret == -ENOENT;
             n = n->drv->is_format ? n->backing : n->file) {
            ret = acquire_on(n, name, read_only, out, errp);
        }
        vd_disk_leave(d);
    }
    if (ret == -ENOENT) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Bitmap '%s' is not found",
                            name);
    }
    return ret;
}

void vd_bitmap_release(vd_dirty_bitmap *b)
{
    if (b) {
        vd_node *n = b->node;
        pthread_mutex_lock(&n->bitmap_lock);
        b->busy--;
        pthread_mutex_unlock(&n->bitmap_lock);
        vd_node_unref(n);
    }
}

const char *vd_dirty_bitmap_name(const vd_dirty_bitmap *b)
{
    return b->name;
}

bool vd_dirty_bitmap_next_dirty_area(vd_dirty_bitmap *b, uint64_t off, uint64_t end,
                                     uint64_t *start, uint64_t *len)
{
    pthread_mutex_lock(&b->node->bitmap_lock);
    bool found = vd_hbitmap_next_dirty_area(b->hb, off, end, start, len);
    pthread_mutex_unlock(&b->node->bitmap_lock);
    return found;
}

/* ---- transaction actions ------------------------------------------------------------------ */

struct vd_bitmap_undo {
    const vd_action *act;
    vd_dirty_bitmap *added;   /* add: the new bitmap, dropped by abort without checks */
    vd_hbitmap *backup;       /* clear, merge: the contents before */
    bool was_enabled;         /* enable, disable */
    vd_dirty_bitmap *removed; /* remove: out of the list until abort or clean */
    vd_dirty_bitmap *after;   /* remove: the bitmap it followed, to go back in place */
};

int vd_bitmap_action_prepare(const vd_action *a, vd_bitmap_undo **out, vd_error **errp)
{
    vd_bitmap_undo *u = calloc(1, sizeof(*u));
    if (!u) {
        abort();
    }
    u->act = a;
    vd_node *n;
    vd_dirty_bitmap *b;
    where w = {a->engine, a->node, NULL};
    int ret;
    switch (a->kind) {
    case VD_ACTION_BITMAP_ADD:
        ret = vd_bitmap_add(a->engine, a->node, a->bitmap, &a->bitmap_opts, errp);
        if (ret == 0 && lookup(&w, a->bitmap, &n, &b, NULL) == 0) {
            u->added = b;
            put(n);
        }
        break;
    case VD_ACTION_BITMAP_MERGE:
        ret = merge_refs(a->engine, a->node, a->bitmap, a->sources, a->nb_sources,
                         &u->backup, errp);
        break;
    default:
        ret = lookup(&w, a->bitmap, &n, &b, errp);
        if (ret < 0) {
            break;
        }
        if (a->kind == VD_ACTION_BITMAP_REMOVE) {
            /* Out of the image now, as QEMU's action does; an abort keeps the bitmap in
             * memory, and the close stores it again. */
            ret = usable(b, DEFAULT, true, errp);
            if (ret == 0) {
                ret = remove_stored_locked(n, b, errp);
            }
            if (ret == 0) {
                for (vd_dirty_bitmap *p = n->bitmaps; p != b; p = p->next) {
                    u->after = p;
                }
                unlink_locked(b);
                u->removed = b;
            }
        } else if (a->kind == VD_ACTION_BITMAP_CLEAR) {
            ret = usable(b, DEFAULT, false, errp);
            if (ret == 0) {
                u->backup = copy_of(b->hb);
                vd_hbitmap_reset_all(b->hb);
            }
        } else {
            ret = usable(b, ALLOW_RO, false, errp);
            if (ret == 0) {
                u->was_enabled = b->enabled;
                b->enabled = a->kind == VD_ACTION_BITMAP_ENABLE;
            }
        }
        put(n);
        break;
    }
    if (ret < 0) {
        vd_hbitmap_free(u->backup);
        free(u);
        return ret;
    }
    *out = u;
    return 0;
}

void vd_bitmap_action_abort(vd_bitmap_undo *u)
{
    const vd_action *a = u->act;
    vd_node *n;
    if (u->removed) {
        n = u->removed->node;
        pthread_mutex_lock(&n->bitmap_lock);
        vd_dirty_bitmap **p = u->after ? &u->after->next : &n->bitmaps;
        u->removed->next = *p;
        *p = u->removed;
        u->removed = NULL;
        pthread_mutex_unlock(&n->bitmap_lock);
        return;
    }
    if (a->kind == VD_ACTION_BITMAP_ADD) {
        /* Not stored anywhere yet: it just goes, whatever a removal would refuse. */
        if (u->added) {
            n = u->added->node;
            pthread_mutex_lock(&n->bitmap_lock);
            unlink_locked(u->added);
            pthread_mutex_unlock(&n->bitmap_lock);
            bitmap_free(u->added);
            u->added = NULL;
        }
        return;
    }
    vd_dirty_bitmap *b;
    where w = {a->engine, a->node, NULL};
    /* The disks are drained and the transaction holds the graph: the bitmap is there. */
    if (lookup(&w, a->bitmap, &n, &b, NULL) < 0) {
        return;
    }
    if (u->backup) {
        if (a->kind == VD_ACTION_BITMAP_CLEAR) {
            /* Marks made since the clear stay (a disk of the transaction left undrained). */
            vd_hbitmap_merge(u->backup, b->hb);
        }
        vd_hbitmap_free(b->hb);
        b->hb = u->backup;
        u->backup = NULL;
    } else if (a->kind == VD_ACTION_BITMAP_ENABLE || a->kind == VD_ACTION_BITMAP_DISABLE) {
        b->enabled = u->was_enabled;
    }
    put(n);
}

void vd_bitmap_action_clean(vd_bitmap_undo *u)
{
    if (u->removed) {
        bitmap_free(u->removed);
    }
    vd_hbitmap_free(u->backup);
    free(u);
}
