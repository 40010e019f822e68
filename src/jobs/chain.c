/* Backing-chain helpers for commit and stream (chain.h). */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/chain.h"

int chain_depth(vd_node *top, const vd_node *n)
{
    int d = 0;
    for (vd_node *p = top; p; p = vd_node_skip_filters(p)->backing, d++) {
        if (p == n || vd_node_skip_filters(p) == n) {
            return d;
        }
    }
    return -1;
}

vd_node *chain_bottom(vd_node *top)
{
    vd_node *b = NULL;
    for (vd_node *p = vd_node_skip_filters(top)->backing; p;
         p = vd_node_skip_filters(p)->backing) {
        b = p;
    }
    return b;
}

vd_node *chain_find_file(vd_node *top, const char *name)
{
    char real[PATH_MAX];
    bool have_real = realpath(name, real) != NULL;
    for (vd_node *p = vd_node_skip_filters(top)->backing; p;
         p = vd_node_skip_filters(p)->backing) {
        vd_node *f = vd_node_skip_filters(p);
        if ((f->filename && !strcmp(f->filename, name)) ||
            (have_real && f->realpath && !strcmp(f->realpath, real))) {
            return p;
        }
    }
    return NULL;
}

int chain_set_backing(vd_node *overlay, vd_node *nb, const char *name, vd_error **errp)
{
    vd_node *img = vd_node_skip_filters(overlay);
    if (!img->drv->set_backing) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "Block format '%s' used by "
                            "node '%s' does not support changing the backing file",
                            img->drv->name, img->node_name ? img->node_name : "");
    }
    bool was_ro = !(img->open_flags & VD_OPEN_RDWR);
    int r = was_ro ? vd_node_reopen_rw(img, true, errp) : 0;
    if (r < 0) {
        return r;
    }
    vd_node *b = nb ? vd_node_skip_filters(nb) : NULL;
    r = img->drv->set_backing(img, nb ? name : NULL, b ? b->drv->name : NULL, errp);
    if (r == 0) {
        r = vd_node_flush(img);
        if (r < 0) {
            vd_error_set(errp, VD_ERR_IO, -r, "%s: %s", img->filename, strerror(-r));
        }
    }
    if (was_ro) {
        vd_node_reopen_rw(img, false, NULL);
    }
    if (r < 0) {
        return r;
    }
    vd_node *old = vd_graph_replace_backing(img, nb);
    if (old) {
        vd_node_unref(old);
    }
    return 0;
}
