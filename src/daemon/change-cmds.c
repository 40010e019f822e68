/* vdiskd's commands that change a node's list of children: x-blockdev-change (a quorum's
 * children added and removed while it runs), and the QMP schema's checks of quorum's
 * blockdev-add members, which come before the driver's own (qemu-storage-daemon answers a
 * missing or mistyped member in the schema's words, in the schema's order). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"

/* An integer as the schema takes one (a command-line value comes as a string). */
static bool is_integer(const vd_tree *v)
{
    if (vd_tree_type_of(v) == VD_TREE_INT) {
        return true;
    }
    const char *s = vd_tree_string(v);
    char *end = NULL;
    if (!s || !*s) {
        return false;
    }
    (void)strtoll(s, &end, 0);
    return !*end;
}

static bool is_bool(const vd_tree *v)
{
    const char *s = vd_tree_string(v);
    return vd_tree_type_of(v) == VD_TREE_BOOL || (s && (!strcmp(s, "on") || !strcmp(s, "off") ||
                                                      !strcmp(s, "true") || !strcmp(s, "false")));
}

int quorum_options_check(const vd_tree *t, vd_error **errp)
{
    /* BlockdevOptionsQuorum's members, in the schema's order. */
    const vd_tree *v = vd_tree_get(t, "blkverify");
    if (v && !is_bool(v)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'blkverify', expected: boolean");
    }
    v = vd_tree_get(t, "children");
    if (!v) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'children' is missing");
    }
    if (vd_tree_type_of(v) != VD_TREE_LIST) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'children', expected: array");
    }
    for (size_t i = 0; i < vd_tree_size(v); i++) {
        vd_tree_type type = vd_tree_type_of(vd_tree_at(v, i));
        if (type != VD_TREE_OBJECT && type != VD_TREE_STRING) {
            /* qemu-storage-daemon 7.2 names a list element so. */
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                                "'null', expected: BlockdevRef");
        }
    }
    v = vd_tree_get(t, "vote-threshold");
    if (!v) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'vote-threshold' is "
                            "missing");
    }
    if (!is_integer(v)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'vote-threshold', expected: integer");
    }
    v = vd_tree_get(t, "rewrite-corrupted");
    if (v && !is_bool(v)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'rewrite-corrupted', expected: boolean");
    }
    v = vd_tree_get(t, "read-pattern");
    const char *pattern = vd_tree_string(v);
    if (v && !pattern) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'read-pattern', expected: string");
    }
    if (pattern && strcmp(pattern, "quorum") && strcmp(pattern, "fifo")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'read-pattern' does not "
                            "accept value '%s'", pattern);
    }
    /* Last, as the schema's visitor finds members it does not know. */
    static const char *const known[] = {
        "driver", "node-name", "discard", "cache", "read-only", "auto-read-only",
        "force-share", "detect-zeroes", "blkverify", "children", "vote-threshold",
        "rewrite-corrupted", "read-pattern", NULL,
    };
    for (size_t i = 0; i < vd_tree_size(t); i++) {
        const char *k = vd_tree_key(t, i);
        const char *const *p = known;
        while (*p && strcmp(*p, k)) {
            p++;
        }
        if (!*p) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is unexpected",
                                k);
        }
    }
    return 0;
}

static int cmd_blockdev_change(qmp_session *qs, json_object *args, json_object **ret,
                               vd_error **errp)
{
    (void)qs;
    (void)ret;
    /* The daemon keeps a handle on a node it once exported (for its statistics); QEMU's
     * export takes its reference away with it, so a removed child goes then. */
    if (opt_str(args, "child")) {
        handles_close_idle_nested();
    }
    return vd_blockdev_change(vdiskd.engine, opt_str(args, "parent"), opt_str(args, "child"),
                              opt_str(args, "node"), errp);
}

static const qmp_arg change_args[] = {
    {"parent", QMP_STR, false, "the node whose children change (a quorum)"},
    {"child", QMP_STR, true, "the child to remove, by its role (\"children.1\")"},
    {"node", QMP_STR, true, "the node to add as a new child (it must have no parent)"},
    {NULL, 0, false, NULL}};

static const qmp_command change_commands[] = {
    {"x-blockdev-change", cmd_blockdev_change, change_args, false,
     "adds a node to a quorum as its next \"children.N\", or removes one child (not below "
     "vote-threshold); a removed child goes unless blockdev-add added it"},
};
const qmp_command_table change_command_table = {
    change_commands, sizeof(change_commands) / sizeof(change_commands[0]),
    &replication_command_table, NULL,    NULL,
};
