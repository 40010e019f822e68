/* blkdebug opened from options, as QEMU's blockdev shape names them: "image" (the child),
 * "config" (a rules file), "inject-error" and "set-state" (lists of rules), "align" and
 * "max-transfer". The listed rules are written out as config text and go through the
 * config parser, so both forms are checked by one piece of code. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/blkdebug.h"
#include "block/drivers/blkdebug-config.h"

const char *const vd_blkdebug_runtime_opts[] = {
    "image", "config", "inject-error", "set-state", "align", "max-transfer", "opt-write-zero",
    "max-write-zero", "opt-discard", "max-discard", "filename", NULL,
};

/* One rule's members as `key = "value"` lines; a value that is not a scalar or cannot be
 * quoted is refused. */
static int rule_text(FILE *f, const vd_tree *rule, const char *list, size_t idx,
                     vd_error **errp)
{
    if (vd_tree_type_of(rule) != VD_TREE_OBJECT) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'%s.%zu', expected: object", list, idx);
    }
    fprintf(f, "[%s]\n", list);
    for (size_t i = 0; i < vd_tree_size(rule); i++) {
        const char *k = vd_tree_key(rule, i);
        const vd_tree *v = vd_tree_at(rule, i);
        /* QEMU's option is new_state in the file and new-state in the options. */
        const char *key = !strcmp(k, "new-state") ? "new_state" : k;
        switch (vd_tree_type_of(v)) {
        case VD_TREE_STRING:
            if (strpbrk(vd_tree_string(v), "\"\n\r")) {
                return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s.%zu.%s' "
                                    "has an invalid value", list, idx, k);
            }
            fprintf(f, "%s = \"%s\"\n", key, vd_tree_string(v));
            break;
        case VD_TREE_INT:
            fprintf(f, "%s = \"%" PRId64 "\"\n", key, vd_tree_int(v));
            break;
        case VD_TREE_BOOL:
            fprintf(f, "%s = \"%s\"\n", key, vd_tree_bool(v) ? "on" : "off");
            break;
        default:
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                                "'%s.%zu.%s'", list, idx, k);
        }
    }
    return 0;
}

/* The rules of "config" and of the two lists, in that order. */
static int tree_rules(const vd_tree *opts, vd_blkdebug_rules *rules, vd_error **errp)
{
    const char *config = NULL;
    bd_qrule *from_file = NULL, *from_lists = NULL;
    int nb_file = 0, nb_lists = 0;
    int ret = vd_tree_get_str(opts, "config", "config", &config, errp);
    if (ret == 0 && config) {
        ret = bd_config_parse(config, strlen(config), &from_file, &nb_file, errp);
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        abort();
    }
    static const char *const lists[] = {"inject-error", "set-state"};
    for (size_t l = 0; ret == 0 && l < 2; l++) {
        const vd_tree *list = vd_tree_get(opts, lists[l]);
        if (list && vd_tree_type_of(list) != VD_TREE_LIST) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                               "'%s', expected: array", lists[l]);
        }
        for (size_t i = 0; ret == 0 && i < vd_tree_size(list); i++) {
            ret = rule_text(f, vd_tree_at(list, i), lists[l], i, errp);
        }
    }
    fclose(f);
    if (ret == 0 && len > 0) {
        ret = bd_config_parse_text(text, len, "blkdebug options", &from_lists, &nb_lists, errp);
    }
    free(text);
    if (ret == 0 && nb_file + nb_lists > 0) {
        bd_qrule *all = calloc((size_t)(nb_file + nb_lists), sizeof(*all));
        if (!all) {
            abort();
        }
        if (nb_file) {
            memcpy(all, from_file, sizeof(*all) * (size_t)nb_file);
        }
        if (nb_lists) {
            memcpy(all + nb_file, from_lists, sizeof(*all) * (size_t)nb_lists);
        }
        rules->qrules = all;
        rules->nb_qrules = nb_file + nb_lists;
    }
    free(from_file);
    free(from_lists);
    return ret;
}

/* The request limits blkdebug imposes on the nodes above it, as QEMU names them. */
typedef struct bd_limits {
    uint64_t align, max_transfer;
    uint64_t opt_write_zero, max_write_zero, opt_discard, max_discard;
} bd_limits;

static const struct {
    const char *key;
    size_t field;
} limit_keys[] = {
    {"align", offsetof(bd_limits, align)},
    {"max-transfer", offsetof(bd_limits, max_transfer)},
    {"opt-write-zero", offsetof(bd_limits, opt_write_zero)},
    {"max-write-zero", offsetof(bd_limits, max_write_zero)},
    {"opt-discard", offsetof(bd_limits, opt_discard)},
    {"max-discard", offsetof(bd_limits, max_discard)},
};

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Read and checked with QEMU's rules and words: each a multiple of what it refines. */
static int limits(const vd_tree *opts, bd_limits *l, vd_error **errp)
{
    memset(l, 0, sizeof(*l));
    for (size_t i = 0; i < sizeof(limit_keys) / sizeof(limit_keys[0]); i++) {
        uint64_t *v = (uint64_t *)((char *)l + limit_keys[i].field);
        int ret = vd_tree_get_size(opts, limit_keys[i].key, NULL, 0, v, errp);
        if (ret < 0) {
            return ret;
        }
    }
    uint64_t a = l->align ? l->align : 1;
    const struct {
        const char *key;
        uint64_t v, multiple_of;
        bool pow2;
    } checks[] = {
        {"align", l->align, 1, true},
        {"max-transfer", l->max_transfer, a, false},
        {"opt-write-zero", l->opt_write_zero, a, false},
        {"max-write-zero", l->max_write_zero, max_u64(l->opt_write_zero, a), false},
        {"opt-discard", l->opt_discard, a, false},
        {"max-discard", l->max_discard, max_u64(l->opt_discard, a), false},
    };
    for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
        uint64_t v = checks[i].v;
        if (v && (v >= INT32_MAX || v % checks[i].multiple_of ||
                  (checks[i].pow2 && (v & (v - 1))))) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot meet constraints with "
                                "%s %" PRIu64, checks[i].key, v);
        }
    }
    return 0;
}

static void apply_limits(vd_node *filter, const bd_limits *l)
{
    if (l->align > filter->request_alignment) {
        filter->request_alignment = (uint32_t)l->align;
    }
    if (l->max_transfer) {
        filter->max_transfer = l->max_transfer;
    }
    if (l->max_write_zero || l->opt_write_zero) {
        filter->max_pwrite_zeroes = l->max_write_zero ? l->max_write_zero : INT32_MAX;
        filter->pwrite_zeroes_alignment = l->opt_write_zero;
    }
    if (l->max_discard || l->opt_discard) {
        filter->max_pdiscard = l->max_discard ? l->max_discard : INT32_MAX;
        filter->pdiscard_alignment = l->opt_discard;
    }
}

int vd_blkdebug_set_options(vd_node *filter, const vd_tree *opts, vd_error **errp)
{
    bd_limits l;
    int ret = limits(opts, &l, errp);
    if (ret == 0) {
        apply_limits(filter, &l);
    }
    return ret;
}

/* Appends the rules of b to a (both from vd_blkdebug_parse or tree_rules). */
static void add_qrules(vd_blkdebug_rules *a, vd_blkdebug_rules *b)
{
    if (!b->nb_qrules) {
        return;
    }
    bd_qrule *all = calloc((size_t)(a->nb_qrules + b->nb_qrules), sizeof(*all));
    if (!all) {
        abort();
    }
    if (a->nb_qrules) {
        memcpy(all, a->qrules, sizeof(*all) * (size_t)a->nb_qrules);
    }
    memcpy(all + a->nb_qrules, b->qrules, sizeof(*all) * (size_t)b->nb_qrules);
    free(a->qrules);
    a->qrules = all;
    a->nb_qrules += b->nb_qrules;
}

/* The image child's options: "image" as given, with the file that "filename" names
 * (`blkdebug:[RULES]:PATH` or a plain PATH, as QEMU reads it) unless it names one. */
static vd_tree *image_options(vd_node *n, const char *path, vd_error **errp)
{
    vd_tree *image = vd_tree_take(n->options, "image");
    if (image && vd_tree_type_of(image) != VD_TREE_OBJECT) {
        /* A node name or the like: vd_node_open_child says what is wrong with it. */
        return image;
    }
    if (!image) {
        image = vd_tree_new(VD_TREE_OBJECT);
    }
    if (path && !vd_tree_get(image, "file") && !vd_tree_get(image, "filename")) {
        vd_tree_put(image, "filename", vd_tree_new_string(path));
    }
    if (vd_tree_size(image) == 0) {
        vd_tree_free(image);
        vd_error_set(errp, VD_ERR_INVALID, EINVAL, "A block device must be specified for "
                     "\"image\"");
        return NULL;
    }
    return image;
}

int vd_blkdebug_open_options(vd_node *n, vd_error **errp)
{
    vd_blkdebug_rules rules = {0}, more = {0};
    bd_limits l;
    const char *filename = NULL, *path = NULL;
    int ret = limits(n->options, &l, errp);
    if (ret == 0) {
        ret = vd_tree_get_str(n->options, "filename", "filename", &filename, errp);
    }
    if (ret == 0 && filename && !strncmp(filename, VD_BLKDEBUG_PREFIX,
                                         strlen(VD_BLKDEBUG_PREFIX))) {
        ret = vd_blkdebug_parse(filename, &rules, errp);
        path = rules.path;
    } else {
        path = filename;
    }
    if (ret == 0) {
        ret = tree_rules(n->options, &more, errp);
        add_qrules(&rules, &more);
        vd_blkdebug_rules_free(&more);
    }
    vd_node *child = NULL;
    if (ret == 0) {
        vd_tree *image = image_options(n, path, errp);
        ret = image ? 0 : -EINVAL;
        if (image) {
            vd_tree_put(n->options, "image", image);
            ret = vd_node_open_child(n, "image", &child, errp);
        }
    }
    if (ret == 0) {
        ret = vd_blkdebug_wrap(n, child, &rules);
        if (ret < 0) {
            vd_node_close(child);
            vd_error_set(errp, VD_ERR_IO, -ret, "blkdebug: %s", strerror(-ret));
        }
    }
    vd_blkdebug_rules_free(&rules);
    if (ret < 0) {
        return ret;
    }
    apply_limits(n, &l);
    free(n->filename);
    n->filename = strdup(child->filename);
    n->realpath = child->realpath ? strdup(child->realpath) : NULL;
    if (!n->filename) {
        abort();
    }
    return 0;
}
