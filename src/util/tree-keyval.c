/* Options trees from key=value text, and crumpling: "file.driver=file,file.filename=a"
 * becomes {"file": {"driver": "file", "filename": "a"}}, and an object keyed 0, 1, 2, ...
 * becomes a list ("inject-error.0.event=..."), as QEMU turns flat options into nested
 * ones. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "vdisk/tree.h"

#define MAX_KEYVAL_DEPTH 64

static int insert(vd_tree *obj, const char *key, vd_tree *val, const char *full, int depth,
                  vd_error **errp);

/* Puts the members of sub (freed) into obj as "prefix.key", recursively. */
static void flatten_into(vd_tree *obj, const char *prefix, vd_tree *sub)
{
    while (vd_tree_size(sub) > 0) {
        char *k = strdup(vd_tree_key(sub, 0));
        char *full = NULL;
        if (!k || asprintf(&full, "%s.%s", prefix, k) < 0) {
            abort();
        }
        vd_tree *v = vd_tree_take(sub, k);
        if (vd_tree_type_of(v) == VD_TREE_OBJECT) {
            flatten_into(obj, full, v);
        } else {
            vd_tree_put(obj, full, v);
        }
        free(k);
        free(full);
    }
    vd_tree_free(sub);
}

/* Moves every member of src (an object, freed here) into dst. */
static int merge(vd_tree *dst, vd_tree *src, const char *full, int depth, vd_error **errp)
{
    int ret = 0;
    while (ret == 0 && vd_tree_size(src) > 0) {
        char *k = strdup(vd_tree_key(src, 0));
        if (!k) {
            abort();
        }
        vd_tree *v = vd_tree_take(src, k);
        ret = insert(dst, k, v, full, depth + 1, errp);
        free(k);
    }
    vd_tree_free(src);
    return ret;
}

/* Puts val (owned) under the possibly dotted key, creating and merging objects. */
static int insert(vd_tree *obj, const char *key, vd_tree *val, const char *full, int depth,
                  vd_error **errp)
{
    const char *dot = strchr(key, '.');
    size_t hlen = dot ? (size_t)(dot - key) : strlen(key);
    if (hlen == 0 || (dot && dot[1] == '\0') || depth > MAX_KEYVAL_DEPTH) {
        vd_tree_free(val);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter '%s'", full);
    }
    char *head = strndup(key, hlen);
    if (!head) {
        abort();
    }
    vd_tree *have = vd_tree_get(obj, head);
    int ret = 0;
    if (dot || vd_tree_type_of(val) == VD_TREE_OBJECT) {
        if (!have) {
            have = vd_tree_new(VD_TREE_OBJECT);
            vd_tree_put(obj, head, have);
        } else if (vd_tree_type_of(have) != VD_TREE_OBJECT) {
            /* "x=a,x.y=b": both stay, the second one flat, as in QEMU's flat option
             * dictionaries (qcow2's overlap-check and overlap-check.template). */
            vd_tree_put(obj, key, val);
            free(head);
            return 0;
        }
        if (dot) {
            ret = insert(have, dot + 1, val, full, depth + 1, errp);
        } else {
            ret = merge(have, val, full, depth, errp);
        }
    } else if (have && vd_tree_type_of(have) == VD_TREE_OBJECT) {
        /* The other order: the object's members go back to flat keys beside the value. */
        vd_tree *sub = vd_tree_take(obj, head);
        flatten_into(obj, head, sub);
        vd_tree_put(obj, head, val);
    } else if (have) {
        vd_tree_free(val);
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Duplicate parameter '%s'", head);
    } else {
        vd_tree_put(obj, head, val);
    }
    free(head);
    return ret;
}

static bool is_index(const char *k, size_t *idx)
{
    if (!isdigit((unsigned char)k[0]) || (k[0] == '0' && k[1]) || strlen(k) > 9) {
        return false;
    }
    *idx = strtoul(k, NULL, 10);
    return true;
}

/* Turns objects keyed 0..n-1 into lists, depth first. When t itself becomes a list, *repl
 * gets the list (t is left empty, for the caller to replace). */
static int listify(vd_tree *t, vd_tree **repl, vd_error **errp)
{
    *repl = NULL;
    if (vd_tree_type_of(t) != VD_TREE_OBJECT) {
        return 0;
    }
    size_t n = vd_tree_size(t), numeric = 0, idx;
    for (size_t i = 0; i < n; i++) {
        vd_tree *r;
        int ret = listify(vd_tree_at(t, i), &r, errp);
        if (ret < 0) {
            return ret;
        }
        if (r) {
            vd_tree_put(t, vd_tree_key(t, i), r);
        }
        numeric += is_index(vd_tree_key(t, i), &idx);
    }
    if (numeric == 0) {
        return 0;
    }
    if (numeric != n) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot mix list and non-list keys");
    }
    vd_tree *list = vd_tree_new(VD_TREE_LIST);
    for (size_t want = 0; want < n; want++) {
        char k[24];
        snprintf(k, sizeof(k), "%zu", want);
        vd_tree *v = vd_tree_take(t, k);
        if (!v) {
            vd_tree_free(list);
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Missing list index %zu", want);
        }
        vd_tree_append(list, v);
    }
    *repl = list;
    return 0;
}

int vd_tree_crumple(vd_tree *obj, vd_error **errp)
{
    if (vd_tree_type_of(obj) != VD_TREE_OBJECT) {
        return 0;
    }
    /* Rebuild the members in order into a fresh object, then move them back. */
    vd_tree *out = vd_tree_new(VD_TREE_OBJECT);
    int ret = 0;
    while (ret == 0 && vd_tree_size(obj) > 0) {
        char *k = strdup(vd_tree_key(obj, 0));
        if (!k) {
            abort();
        }
        ret = insert(out, k, vd_tree_take(obj, k), k, 0, errp);
        free(k);
    }
    vd_tree *r = NULL;
    if (ret == 0) {
        ret = listify(out, &r, errp);
    }
    if (ret == 0 && r) {
        vd_tree_free(r);
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot mix list and non-list keys");
    }
    while (vd_tree_size(obj) > 0) {
        vd_tree_free(vd_tree_take(obj, vd_tree_key(obj, 0)));
    }
    while (ret == 0 && vd_tree_size(out) > 0) {
        char *k = strdup(vd_tree_key(out, 0));
        if (!k) {
            abort();
        }
        vd_tree_put(obj, k, vd_tree_take(out, k));
        free(k);
    }
    vd_tree_free(out);
    return ret;
}

/* One item's text with ",," unescaped; *pos moves past the item and its ','. */
static char *next_item(const char *text, size_t *pos)
{
    size_t len = strlen(text);
    char *buf = malloc(len - *pos + 1);
    if (!buf) {
        abort();
    }
    size_t o = 0, i = *pos;
    while (i < len) {
        if (text[i] == ',') {
            if (text[i + 1] == ',') {
                buf[o++] = ',';
                i += 2;
                continue;
            }
            i++;
            break;
        }
        buf[o++] = text[i++];
    }
    buf[o] = '\0';
    *pos = i;
    return buf;
}

int vd_tree_parse_keyval(const char *text, const char *implied_key, vd_tree **out,
                         vd_error **errp)
{
    /* Flat first (a later key overrides an earlier one, as QemuOpts does), then crumple. */
    vd_tree *flat = vd_tree_new(VD_TREE_OBJECT);
    size_t pos = 0, len = strlen(text);
    bool first = true;
    int ret = 0;
    while (ret == 0 && pos < len) {
        char *item = next_item(text, &pos);
        char *eq = strchr(item, '=');
        if (eq) {
            *eq = '\0';
            if (!*item) {
                ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter ''");
            } else {
                vd_tree_put(flat, item, vd_tree_new_string(eq + 1));
            }
        } else if (*item && first && implied_key) {
            vd_tree_put(flat, implied_key, vd_tree_new_string(item));
        } else if (*item) {
            /* A bare key is a flag that is on, as in QemuOpts. */
            vd_tree_put(flat, item, vd_tree_new_string("on"));
        }
        first = false;
        free(item);
    }
    if (ret == 0) {
        ret = vd_tree_crumple(flat, errp);
    }
    if (ret < 0) {
        vd_tree_free(flat);
        return ret;
    }
    *out = flat;
    return 0;
}
