/* The fault-injection filter (drivers/blkdebug.c) as node.c sees it: a filename of the form
 * `blkdebug:RULES:PATH` or `blkdebug:CONFIG:PATH` (a QEMU config file) opens PATH through
 * the filter. */
#ifndef VD_BLKDEBUG_H
#define VD_BLKDEBUG_H

#include "block/block.h"

#define VD_BLKDEBUG_PREFIX "blkdebug:"

typedef struct vd_blkdebug_rules {
    void *rules;         /* parsed rules (private to the driver) */
    int nb_rules;
    void *qrules;        /* rules of a QEMU config file (blkdebug-config.h) */
    int nb_qrules;
    const char *path;    /* points into the spec: the image file */
} vd_blkdebug_rules;

extern const vd_driver vd_blkdebug_driver;

/* Parses `blkdebug:RULES:PATH` or `blkdebug:CONFIG:PATH` (reading CONFIG); errors name the
 * bad part. */
int vd_blkdebug_parse(const char *spec, vd_blkdebug_rules *out, vd_error **errp);
void vd_blkdebug_rules_free(vd_blkdebug_rules *r);
/* Makes `filter` (a node of vd_blkdebug_driver) a filter over the open `child`. */
int vd_blkdebug_wrap(vd_node *filter, vd_node *child, const vd_blkdebug_rules *rules);

/* Applies QEMU's blkdebug options besides the rules (align, max-transfer) to an open
 * filter; any other key in opts is refused. */
int vd_blkdebug_set_options(vd_node *filter, const vd_tree *opts, vd_error **errp);
/* Opens a filter node from its options (n->options: image, config, inject-error,
 * set-state, align, max-transfer). */
int vd_blkdebug_open_options(vd_node *n, vd_error **errp);
extern const char *const vd_blkdebug_runtime_opts[];

#endif
