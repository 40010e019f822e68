/* The engine's graph of named nodes: registration, references, the uses of each node with
 * the permissions they take and share (QEMU's rules and messages), and the public
 * blockdev API over it (include/vdisk/graph.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/disk.h"
#include "block/engine.h"
#include "util/common.h"
#include "vdisk/graph.h"

#define CR VD_PERM_CONSISTENT_READ
#define WR VD_PERM_WRITE
#define WU VD_PERM_WRITE_UNCHANGED
#define RS VD_PERM_RESIZE

/* ---- permissions ------------------------------------------------------------------------ */

static void perm_names(unsigned perm, char *buf, size_t len)
{
    static const char *const names[] = {"consistent read", "write", "write unchanged",
                                        "resize"};
    size_t used = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < 4; i++) {
        if (perm & (1u << i)) {
            used += (size_t)snprintf(buf + used, used < len ? len - used : 0, "%s%s",
                                     used ? ", " : "", names[i]);
        }
    }
}

static void user_desc(const vd_edge *u, char *buf, size_t len)
{
    if (u->parent) {
        snprintf(buf, len, "node '%s'", u->parent->node_name ? u->parent->node_name : "");
    } else {
        snprintf(buf, len, "an unnamed block device");
    }
}

/* Every use of a node must share what each other use takes. The pairs are tried in QEMU's
 * order (newest use first), so a refusal names the pair QEMU's would. */
static int check_uses(const vd_node *n, vd_error **errp)
{
    for (const vd_edge *a = n->parents; a; a = a->next) {
        for (const vd_edge *b = n->parents; b; b = b->next) {
            unsigned missing = b->perm & ~a->shared;
            if (a == b || !missing) {
                continue;
            }
            char perms[64], ua[64], ub[64];
            const char *name = n->node_name ? n->node_name : "";
            perm_names(missing, perms, sizeof(perms));
            user_desc(a, ua, sizeof(ua));
            user_desc(b, ub, sizeof(ub));
            return vd_error_set(errp, VD_ERR_GENERIC, EPERM, "Permission conflict on node "
                                "'%s': permissions '%s' are both required by %s (uses node "
                                "'%s' as '%s' child) and unshared by %s (uses node '%s' as "
                                "'%s' child).", name, perms, ub, name, b->role, ua, name,
                                a->role);
        }
    }
    for (const vd_edge *u = n->parents; u; u = u->next) {
        if ((u->perm & (WR | WU)) && !(n->open_flags & VD_OPEN_RDWR)) {
            return vd_error_set(errp, VD_ERR_GENERIC, EACCES, "Block node is read-only");
        }
    }
    return 0;
}

/* What a node's users take and share, all together. */
static void cumulative(const vd_node *n, unsigned *perm, unsigned *shared)
{
    *perm = 0;
    *shared = VD_PERM_ALL;
    for (const vd_edge *u = n->parents; u; u = u->next) {
        *perm |= u->perm;
        *shared &= u->shared;
    }
}

/* What a parent takes on one child, from what its own users take (QEMU's defaults): a
 * backing file is only read, and others may change it only if the parent's users let
 * others write; a format's file holds metadata, which a writable format writes and
 * resizes whoever its users are, and lets no one else write or resize; a filter or raw
 * passes its users' permissions through. */
static void child_perms(const vd_node *parent, const char *role, unsigned *perm,
                        unsigned *shared)
{
    unsigned p, s;
    cumulative(parent, &p, &s);
    if (!strcmp(role, "target")) {
        /* A copy-before-write target: others may write it (QEMU's rule: the source may
         * be in the target's backing chain, as replication's hidden disk has it), but
         * not resize it under the copy. */
        p = CR | WR;
        s = VD_PERM_ALL & ~RS;
    } else if (!strcmp(role, "backing")) {
        p &= CR;
        s = ((s & WR) ? WR | RS : 0) | CR | WU;
    } else if (parent->drv->child_perms) {
        parent->drv->child_perms(parent, role, &p, &s);
    } else if (parent->drv->is_format && strcmp(parent->drv->name, "raw")) {
        p |= CR | ((parent->open_flags & VD_OPEN_RDWR) ? WR | RS : 0);
        s &= ~(WR | RS);
        if (p & WU) {
            p |= WR;
        }
        if (p & WR) {
            p |= RS;
        }
    }
    *perm = p;
    *shared = s;
}

bool vd_node_child_at(const vd_node *n, size_t i, vd_node **child, const char **role)
{
    switch (i) {
    case 0:
        *child = n->file;
        *role = strcmp(n->drv->name, "blkdebug") ? "file" : "image";
        return true;
    case 1:
        *child = n->backing;
        *role = "backing";
        return true;
    case 2:
        *child = n->target;
        *role = "target";
        return true;
    default:
        if (i - VD_NODE_NAMED_SLOTS >= n->nb_children) {
            return false;
        }
        *child = n->children[i - VD_NODE_NAMED_SLOTS].node;
        *role = n->children[i - VD_NODE_NAMED_SLOTS].role;
        return true;
    }
}

static vd_edge *edge_of(const vd_node *child, const vd_node *parent)
{
    for (vd_edge *u = child ? child->parents : NULL; u; u = u->next) {
        if (u->parent == parent) {
            return u;
        }
    }
    return NULL;
}

/* The use of child in one role of parent (a quorum may list one node twice). */
static vd_edge *edge_in_role(const vd_node *child, const vd_node *parent, const char *role)
{
    for (vd_edge *u = child ? child->parents : NULL; u; u = u->next) {
        if (u->parent == parent && !strcmp(u->role, role)) {
            return u;
        }
    }
    return NULL;
}

/* Recomputes what n takes on its children and checks their uses, down the graph. With a
 * NULL errp it only recomputes (after a use went away: nothing can conflict more). */
static int refresh(vd_node *n, vd_error **errp)
{
    int first = 0;
    vd_node *kid;
    const char *role;
    for (size_t i = 0; vd_node_child_at(n, i, &kid, &role); i++) {
        vd_edge *u = edge_in_role(kid, n, role);
        if (!u) {
            continue;
        }
        child_perms(n, u->role, &u->perm, &u->shared);
        int ret = check_uses(kid, errp);
        if (ret == 0) {
            ret = refresh(kid, errp);
        }
        if (ret < 0 && errp) {
            return ret;
        }
        first = first ? first : ret;
    }
    return first;
}

/* Ends one use of child (u may be NULL: none); what child takes on its own children is
 * recomputed, since nothing can conflict more once a use went away. */
static void edge_drop(vd_node *child, vd_edge *u)
{
    if (!u) {
        return;
    }
    for (vd_edge **p = &child->parents; *p; p = &(*p)->next) {
        if (*p == u) {
            *p = u->next;
            break;
        }
    }
    free(u);
    refresh(child, NULL);
}

/* Takes away n's uses of its children (the children may then allow more). */
static void drop_child_edges(vd_node *n)
{
    vd_node *kid;
    const char *role;
    for (size_t i = 0; vd_node_child_at(n, i, &kid, &role); i++) {
        edge_drop(kid, edge_in_role(kid, n, role));
    }
}

/* ---- the registry -------------------------------------------------------------------------- */

static vd_node *find_locked(vd_engine *e, const char *name)
{
    for (vd_node *n = e->graph; n && name; n = n->graph_next) {
        if (!strcmp(n->node_name, name)) {
            return n;
        }
    }
    return NULL;
}

static void unregister_locked(vd_node *n)
{
    vd_engine *e = n->engine;
    for (vd_node **p = &e->graph; *p; p = &(*p)->graph_next) {
        if (*p == n) {
            *p = n->graph_next;
            break;
        }
    }
    n->registered = false;
}

bool vd_graph_release(vd_node *n)
{
    vd_engine *e = n->engine;
    if (!e) {
        return --n->refcnt == 0;
    }
    pthread_mutex_lock(&e->graph_lock);
    bool last = --n->refcnt == 0;
    if (last) {
        drop_child_edges(n);
        if (n->registered) {
            unregister_locked(n);
        }
    }
    pthread_mutex_unlock(&e->graph_lock);
    return last;
}

void vd_node_ref(vd_node *n)
{
    if (!n->engine) {
        n->refcnt++;
        return;
    }
    pthread_mutex_lock(&n->engine->graph_lock);
    n->refcnt++;
    pthread_mutex_unlock(&n->engine->graph_lock);
}

int vd_graph_ref(vd_engine *e, const char *name, vd_node **out, vd_error **errp)
{
    vd_node *n = NULL;
    if (e) {
        pthread_mutex_lock(&e->graph_lock);
        n = find_locked(e, name);
        if (n) {
            n->refcnt++;
        }
        pthread_mutex_unlock(&e->graph_lock);
    }
    if (!n) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Cannot find device='%s' nor "
                            "node-name='%s'", name, name);
    }
    *out = n;
    return 0;
}

static void add_edge(vd_node *child, vd_node *parent, const char *role)
{
    vd_edge *u = calloc(1, sizeof(*u));
    if (!u) {
        abort();
    }
    u->child = child;
    u->parent = parent;
    u->role = role;
    u->shared = VD_PERM_ALL;
    u->next = child->parents;
    child->parents = u;
}

static int register_self(vd_engine *e, vd_node *n, vd_error **errp)
{
    if (!n->node_name) {
        char name[32];
        snprintf(name, sizeof(name), "#block%03u", e->next_auto++);
        n->node_name = vd_xstrdup(name);
    } else if (find_locked(e, n->node_name)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Duplicate nodes with "
                            "node-name='%s'", n->node_name);
    }
    n->registered = true;
    n->graph_next = e->graph;
    e->graph = n;
    return 0;
}

/* Names and links the nodes of a graph just opened, down to the registered nodes it
 * shares, which gain a use. In QEMU's order: a node's file, backing and target before it
 * (they are open before its driver runs), its listed children after it (its driver opens
 * them). */
static int register_new(vd_engine *e, vd_node *n, vd_error **errp)
{
    if (n->registered) {
        return 0;
    }
    vd_node *kid;
    const char *role;
    int ret = 0;
    for (size_t i = 0; ret == 0 && vd_node_child_at(n, i, &kid, &role); i++) {
        if (i == VD_NODE_NAMED_SLOTS) {
            ret = register_self(e, n, errp);
        }
        if (ret == 0 && kid && (ret = register_new(e, kid, errp)) == 0) {
            add_edge(kid, n, role);
        }
    }
    if (ret == 0 && !n->registered) {
        ret = register_self(e, n, errp);
    }
    return ret;
}

int vd_blockdev_add(vd_engine *e, vd_tree *opts, unsigned flags, vd_error **errp)
{
    const char *name = vd_tree_string(vd_tree_get(opts, "node-name"));
    if (!name) {
        vd_tree_free(opts);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "'node-name' must be specified "
                            "for the root node");
    }
    if (vd_blockdev_exists(e, name)) {
        int ret = vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Duplicate nodes with "
                               "node-name='%s'", name);
        vd_tree_free(opts);
        return ret;
    }
    vd_node *n = NULL;
    int ret = vd_node_open_tree(e, opts, flags, NULL, &n, errp);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->graph_lock);
    ret = register_new(e, n, errp);
    if (ret == 0) {
        ret = refresh(n, errp);
    }
    if (ret == 0) {
        n->added = true;
    }
    pthread_mutex_unlock(&e->graph_lock);
    if (ret < 0) {
        vd_node_close(n);
    }
    return ret;
}

int vd_graph_register_filter(vd_node *n, vd_error **errp)
{
    vd_engine *e = n->engine;
    pthread_mutex_lock(&e->graph_lock);
    int ret = register_new(e, n, errp);
    if (ret == 0) {
        ret = refresh(n, errp);
        if (ret < 0) {
            drop_child_edges(n);
            unregister_locked(n);
        }
    }
    pthread_mutex_unlock(&e->graph_lock);
    return ret;
}

bool vd_blockdev_exists(vd_engine *e, const char *node_name)
{
    pthread_mutex_lock(&e->graph_lock);
    bool found = find_locked(e, node_name) != NULL;
    pthread_mutex_unlock(&e->graph_lock);
    return found;
}

/* Why a node cannot go, in QEMU's words and order, or 0. */
static int del_refusal(vd_node *n, const char *name, vd_error **errp)
{
    if (n->job_blocker) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: block device is "
                            "in use by block job: %s", name, n->job_blocker);
    }
    for (const vd_edge *u = n->parents; u; u = u->next) {
        if (!u->parent) {
            return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node %s is in use", name);
        }
    }
    for (const vd_edge *u = n->parents; u; u = u->next) {
        if (!strcmp(u->role, "backing")) {
            return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Node '%s' is busy: node is used "
                                "as backing hd of '%s'", name, u->parent->node_name);
        }
    }
    if (!n->added) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node %s is not owned by the "
                            "monitor", name);
    }
    if (n->refcnt > 1) {
        return vd_error_set(errp, VD_ERR_BUSY, EBUSY, "Block device %s is in use", name);
    }
    return 0;
}

int vd_blockdev_del(vd_engine *e, const char *node_name, vd_error **errp)
{
    pthread_mutex_lock(&e->graph_lock);
    vd_node *n = find_locked(e, node_name);
    int ret = n ? del_refusal(n, node_name, errp)
                : vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "Failed to find node with "
                               "node-name='%s'", node_name);
    if (ret == 0) {
        n->added = false;
    }
    pthread_mutex_unlock(&e->graph_lock);
    if (ret < 0) {
        return ret;
    }
    /* The node is gone whatever its last flush gives (an NBD client whose server died
     * cannot flush): QEMU's blockdev-del succeeds then too, and an error would only make
     * the caller try to delete a node that no longer exists. */
    vd_node_close(n);
    return 0;
}

int vd_blockdev_open(vd_engine *e, const char *node_name, vd_disk **out, vd_error **errp)
{
    vd_node *n = NULL;
    int ret = vd_graph_ref(e, node_name, &n, errp);
    if (ret < 0) {
        return ret;
    }
    *out = vd_disk_new(e, n, true);
    return 0;
}

const char *vd_disk_node_name(const vd_disk *d)
{
    vd_disk_enter(d);
    const char *name = d->node->registered ? d->node->node_name : NULL;
    vd_disk_leave(d);
    return name;
}

/* ---- claims of handles -------------------------------------------------------------------- */

int vd_disk_claim(vd_disk *d, unsigned perm, unsigned shared, vd_perm_claim **out,
                  vd_error **errp)
{
    vd_engine *e = d->engine;
    vd_edge *u = calloc(1, sizeof(*u));
    if (!u) {
        abort();
    }
    vd_disk_enter(d);
    pthread_mutex_lock(&e->graph_lock);
    vd_node *n = d->node;
    u->child = n;
    u->owner = d;
    u->role = "root";
    u->perm = perm & VD_PERM_ALL;
    /* As a QEMU user attaches sharing everything and then narrows what it shares, the
     * two steps are checked in that order. */
    u->shared = VD_PERM_ALL;
    u->next = n->parents;
    n->parents = u;
    int ret = check_uses(n, errp);
    if (ret == 0) {
        ret = refresh(n, errp);
    }
    if (ret == 0 && (shared & VD_PERM_ALL) != VD_PERM_ALL) {
        u->shared = shared & VD_PERM_ALL;
        ret = check_uses(n, errp);
        if (ret == 0) {
            ret = refresh(n, errp);
        }
    }
    if (ret < 0) {
        edge_drop(n, u);
    }
    pthread_mutex_unlock(&e->graph_lock);
    vd_disk_leave(d);
    if (ret == 0) {
        *out = u;
    }
    return ret;
}

void vd_disk_unclaim(vd_disk *d, vd_perm_claim *c)
{
    if (!c) {
        return;
    }
    vd_engine *e = d->engine;
    pthread_mutex_lock(&e->graph_lock);
    edge_drop(c->child, c);
    pthread_mutex_unlock(&e->graph_lock);
}

void vd_graph_move_claims(const vd_disk *d, vd_node *old, vd_node *n)
{
    vd_engine *e = d->engine;
    if (!e || old == n) {
        return;
    }
    pthread_mutex_lock(&e->graph_lock);
    for (vd_edge **p = &old->parents; *p;) {
        vd_edge *u = *p;
        if (u->owner != d) {
            p = &u->next;
            continue;
        }
        *p = u->next;
        u->child = n;
        u->next = n->parents;
        n->parents = u;
    }
    refresh(old, NULL);
    refresh(n, NULL);
    pthread_mutex_unlock(&e->graph_lock);
}

/* ---- external snapshots -------------------------------------------------------------- */

bool vd_graph_has_claims(vd_node *n)
{
    if (!n->engine) {
        return false;
    }
    pthread_mutex_lock(&n->engine->graph_lock);
    bool found = false;
    for (const vd_edge *u = n->parents; u && !found; u = u->next) {
        found = u->parent == NULL;
    }
    pthread_mutex_unlock(&n->engine->graph_lock);
    return found;
}

size_t vd_graph_users(vd_node *n, const vd_disk *except, vd_disk **out, size_t max,
                      bool *has_parents)
{
    size_t nb = 0;
    *has_parents = false;
    pthread_mutex_lock(&n->engine->graph_lock);
    for (const vd_edge *u = n->parents; u; u = u->next) {
        if (u->parent) {
            *has_parents = true;
            continue;
        }
        bool seen = u->owner == except;
        for (size_t i = 0; i < nb && !seen; i++) {
            seen = out[i] == u->owner;
        }
        if (!seen && nb < max) {
            out[nb++] = (vd_disk *)u->owner;
        }
    }
    pthread_mutex_unlock(&n->engine->graph_lock);
    return nb;
}

void vd_graph_link_overlay(vd_node *overlay, const char *name)
{
    vd_engine *e = overlay->engine;
    pthread_mutex_lock(&e->graph_lock);
    if (!overlay->registered) {
        if (name && !overlay->node_name) {
            overlay->node_name = vd_xstrdup(name);
        }
        register_new(e, overlay, NULL);
    } else {
        add_edge(overlay->backing, overlay, "backing");
    }
    refresh(overlay, NULL);
    pthread_mutex_unlock(&e->graph_lock);
}

void vd_graph_unlink_backing(vd_node *overlay)
{
    vd_engine *e = overlay->engine;
    if (!e || !overlay->backing) {
        return;
    }
    pthread_mutex_lock(&e->graph_lock);
    edge_drop(overlay->backing, edge_of(overlay->backing, overlay));
    pthread_mutex_unlock(&e->graph_lock);
}

vd_node *vd_graph_replace_backing(vd_node *overlay, vd_node *nb)
{
    vd_engine *e = overlay->engine;
    pthread_mutex_lock(&e->graph_lock);
    vd_node *old = overlay->backing;
    edge_drop(old, edge_of(old, overlay));
    if (old && old->overlay == overlay) {
        old->overlay = NULL;
    }
    overlay->backing = nb;
    if (nb) {
        nb->refcnt++;
        nb->overlay = overlay;
        add_edge(nb, overlay, "backing");
    }
    refresh(overlay, NULL);
    pthread_mutex_unlock(&e->graph_lock);
    return old;
}

vd_node *vd_graph_replace_file(vd_node *parent, vd_node *nf)
{
    vd_engine *e = parent->engine;
    pthread_mutex_lock(&e->graph_lock);
    vd_node *old = parent->file;
    edge_drop(old, edge_of(old, parent));
    parent->file = nf;
    nf->refcnt++;
    vd_node *kid;
    const char *role;
    vd_node_child_at(parent, 0, &kid, &role);
    add_edge(nf, parent, role);
    refresh(parent, NULL);
    pthread_mutex_unlock(&e->graph_lock);
    return old;
}

static bool above_locked(const vd_node *top, const vd_node *n)
{
    if (n == top) {
        return true;
    }
    for (const vd_edge *u = n->parents; u; u = u->next) {
        if (u->parent && above_locked(top, u->parent)) {
            return true;
        }
    }
    return false;
}

bool vd_graph_root_above(vd_node *top, vd_node *n)
{
    pthread_mutex_lock(&top->engine->graph_lock);
    bool root = true;
    for (const vd_edge *u = top->parents; u && root; u = u->next) {
        root = u->parent == NULL;
    }
    bool found = root && above_locked(top, n);
    pthread_mutex_unlock(&top->engine->graph_lock);
    return found;
}

/* ---- children added and removed while open (x-blockdev-change) ------------------------------ */

/* Whether to is from or a node below it. */
static bool reaches(const vd_node *from, const vd_node *to)
{
    if (from == to) {
        return true;
    }
    vd_node *kid;
    const char *role;
    for (size_t i = 0; vd_node_child_at(from, i, &kid, &role); i++) {
        if (kid && reaches(kid, to)) {
            return true;
        }
    }
    return false;
}

int vd_graph_attach_child(vd_node *parent, vd_node *child, const char *role,
                          vd_error **errp)
{
    vd_engine *e = parent->engine;
    pthread_mutex_lock(&e->graph_lock);
    if (reaches(child, parent)) {
        pthread_mutex_unlock(&e->graph_lock);
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Making '%s' a %s child of '%s' "
                            "would create a cycle", child->node_name, role, parent->node_name);
    }
    vd_node_append_child(parent, child, role);
    vd_child *c = &parent->children[parent->nb_children - 1];
    child->refcnt++;
    add_edge(child, parent, c->role);
    int ret = refresh(parent, errp);
    if (ret < 0) {
        edge_drop(child, edge_in_role(child, parent, c->role));
        free(c->role);
        parent->nb_children--;
        child->refcnt--;
    }
    pthread_mutex_unlock(&e->graph_lock);
    return ret;
}

vd_node *vd_graph_detach_child(vd_node *parent, size_t i)
{
    vd_engine *e = parent->engine;
    pthread_mutex_lock(&e->graph_lock);
    vd_child c = parent->children[i];
    edge_drop(c.node, edge_in_role(c.node, parent, c.role));
    memmove(&parent->children[i], &parent->children[i + 1],
            (parent->nb_children - i - 1) * sizeof(parent->children[0]));
    parent->nb_children--;
    pthread_mutex_unlock(&e->graph_lock);
    free(c.role);
    return c.node;
}

/* x-blockdev-change's removal: the child of parent in that role. */
static int change_del(vd_node *p, const char *name, vd_error **errp)
{
    vd_engine *e = p->engine;
    pthread_mutex_lock(&e->graph_lock);
    vd_node *c = NULL, *kid;
    const char *role;
    for (size_t i = 0; !c && vd_node_child_at(p, i, &kid, &role); i++) {
        c = kid && !strcmp(role, name) ? kid : NULL;
    }
    char *r = c ? vd_xstrdup(role) : NULL;  /* the slot's own copy goes with the slot */
    int ret = 0;
    if (!c) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, ENOENT, "Node '%s' does not have child "
                           "'%s'", p->node_name, name);
    } else if (!p->drv->del_child) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, ENOTSUP, "The node %s does not support "
                           "removing a child", p->node_name);
    } else {
        c->refcnt++;
    }
    pthread_mutex_unlock(&e->graph_lock);
    if (ret < 0) {
        free(r);
        return ret;
    }
    ret = p->drv->del_child(p, c, r, errp);
    free(r);
    vd_node_unref(c);
    if (ret == 0) {
        vd_node_close(c);   /* the reference p held: the child goes unless others hold it */
    }
    return ret;
}

/* x-blockdev-change's addition of the named node, which must have no parent. */
static int change_add(vd_node *p, const char *name, vd_error **errp)
{
    vd_engine *e = p->engine;
    pthread_mutex_lock(&e->graph_lock);
    vd_node *n = find_locked(e, name);
    int ret = 0;
    if (!n) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, ENOENT, "Node '%s' not found", name);
    } else if (!p->drv->add_child) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, ENOTSUP, "The node %s does not support "
                           "adding a child", p->node_name);
    } else if (n->parents) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, EBUSY, "The node %s already has a parent",
                           n->node_name);
    } else {
        n->refcnt++;
    }
    pthread_mutex_unlock(&e->graph_lock);
    if (ret < 0) {
        return ret;
    }
    ret = p->drv->add_child(p, n, errp);
    vd_node_unref(n);
    return ret;
}

int vd_blockdev_change(vd_engine *e, const char *parent, const char *child, const char *node,
                       vd_error **errp)
{
    vd_node *p = NULL;
    int ret = vd_graph_ref(e, parent, &p, errp);
    if (ret < 0) {
        return ret;
    }
    if (child && node) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "The parameters child and node are "
                           "in conflict");
    } else if (!child && !node) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Either child or node must be "
                           "specified");
    } else {
        ret = child ? change_del(p, child, errp) : change_add(p, node, errp);
    }
    vd_node_unref(p);
    return ret;
}

/* ---- names -------------------------------------------------------------------------------- */

/* QEMU's test: is a format node's backing other than the one its image names (or none
 * where it names one)? */
static bool backing_overridden(const vd_node *n)
{
    if (!n->drv->is_format) {
        return false;
    }
    if (!n->backing) {
        return n->backing_filename && n->backing_filename[0];
    }
    if (!n->backing_filename) {
        return true;
    }
    char *path = vd_backing_path(n->filename, n->backing_filename);
    bool same = !strcmp(path, n->backing->filename);
    free(path);
    return !same;
}

static bool needs_json(const vd_node *n)
{
    for (; n; n = n->file) {
        if (backing_overridden(n) || n->nb_children) {
            return true;
        }
    }
    return false;
}

/* The options that say what a graph is (QEMU's json: filenames): driver, file, and a
 * backing where it is not the image's own, or a node's list of children and its driver's
 * options; keys in QEMU's (alphabetical) order. */
static vd_tree *graph_tree(const vd_node *n)
{
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    if (backing_overridden(n)) {
        vd_tree_put(t, "backing", n->backing ? graph_tree(n->backing)
                                             : vd_tree_new(VD_TREE_NULL));
    }
    if (n->nb_children) {
        vd_tree *list = vd_tree_new(VD_TREE_LIST);
        for (size_t i = 0; i < n->nb_children; i++) {
            vd_tree_append(list, graph_tree(n->children[i].node));
        }
        vd_tree_put(t, "children", list);
    }
    vd_tree_put(t, "driver", vd_tree_new_string(n->drv->name));
    if (n->file) {
        vd_tree_put(t, "file", graph_tree(n->file));
    } else if (!n->nb_children) {
        vd_tree_put(t, "filename", vd_tree_new_string(n->filename));
    }
    for (const char *const *k = n->drv->runtime_opts; n->nb_children && k && *k; k++) {
        const vd_tree *v = strcmp(*k, "children") ? vd_tree_get(n->options, *k) : NULL;
        if (v) {
            vd_tree_put(t, *k, vd_tree_clone(v));
        }
    }
    return t;
}

char *vd_node_display_name(const vd_node *n)
{
    if (!needs_json(n)) {
        return vd_xstrdup(n->filename);
    }
    vd_tree *t = graph_tree(n);
    char *json = vd_tree_to_json(t);
    vd_tree_free(t);
    char *name = NULL;
    if (!json || asprintf(&name, "json:%s", json) < 0) {
        abort();
    }
    free(json);
    return name;
}

/* ---- listing ------------------------------------------------------------------------------- */

static char *name_or_null(const vd_node *n)
{
    return n && n->registered ? vd_xstrdup(n->node_name) : NULL;
}

int vd_blockdev_list(vd_engine *e, vd_blockdev_info **out, size_t *nb)
{
    pthread_mutex_lock(&e->graph_lock);
    size_t count = 0;
    for (vd_node *n = e->graph; n; n = n->graph_next) {
        count++;
    }
    vd_blockdev_info *list = calloc(count ? count : 1, sizeof(*list));
    if (!list) {
        abort();
    }
    size_t i = 0;
    for (vd_node *n = e->graph; n; n = n->graph_next, i++) {
        list[i].node_name = vd_xstrdup(n->node_name);
        list[i].driver = vd_xstrdup(n->drv->name);
        list[i].filename = vd_node_display_name(n);
        list[i].read_only = !(n->open_flags & VD_OPEN_RDWR);
        list[i].direct = (n->open_flags & VD_OPEN_NOCACHE) != 0;
        list[i].no_flush = (n->open_flags & VD_OPEN_NO_FLUSH) != 0;
        list[i].added = n->added;
        list[i].file_child = name_or_null(n->file);
        list[i].backing_child = name_or_null(n->backing);
    }
    pthread_mutex_unlock(&e->graph_lock);
    *out = list;
    *nb = count;
    return 0;
}

void vd_blockdev_list_free(vd_blockdev_info *list, size_t nb)
{
    for (size_t i = 0; i < nb; i++) {
        free(list[i].node_name);
        free(list[i].driver);
        free(list[i].filename);
        free(list[i].file_child);
        free(list[i].backing_child);
    }
    free(list);
}
