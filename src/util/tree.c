/* Options trees (include/vdisk/tree.h): the values, objects and lists, and the typed
 * lookups that give QEMU's messages. JSON text lives in tree-json.c, key=value text and
 * crumpling in tree-keyval.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/tree.h"

struct vd_tree {
    vd_tree_type type;
    union {
        bool b;
        int64_t i;
        double d;
        char *s;
    } v;
    /* Objects and lists: n children (keys[] for objects only). */
    size_t n, cap;
    char **keys;
    vd_tree **kids;
};

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        abort();
    }
    return p;
}

static char *xstrndup(const char *s, size_t len)
{
    char *p = strndup(s, len);
    if (!p) {
        abort();
    }
    return p;
}

vd_tree *vd_tree_new(vd_tree_type type)
{
    vd_tree *t = calloc(1, sizeof(*t));
    if (!t) {
        abort();
    }
    t->type = type;
    if (type == VD_TREE_STRING) {
        t->v.s = xstrndup("", 0);
    }
    return t;
}

vd_tree *vd_tree_new_bool(bool v)
{
    vd_tree *t = vd_tree_new(VD_TREE_BOOL);
    t->v.b = v;
    return t;
}

vd_tree *vd_tree_new_int(int64_t v)
{
    vd_tree *t = vd_tree_new(VD_TREE_INT);
    t->v.i = v;
    return t;
}

vd_tree *vd_tree_new_number(double v)
{
    vd_tree *t = vd_tree_new(VD_TREE_NUMBER);
    t->v.d = v;
    return t;
}

vd_tree *vd_tree_new_stringn(const char *s, size_t len)
{
    vd_tree *t = vd_tree_new(VD_TREE_NULL);
    t->type = VD_TREE_STRING;
    t->v.s = xstrndup(s, len);
    return t;
}

vd_tree *vd_tree_new_string(const char *s)
{
    return vd_tree_new_stringn(s, strlen(s));
}

void vd_tree_free(vd_tree *t)
{
    if (!t) {
        return;
    }
    for (size_t i = 0; i < t->n; i++) {
        vd_tree_free(t->kids[i]);
        if (t->keys) {
            free(t->keys[i]);
        }
    }
    free(t->kids);
    free(t->keys);
    if (t->type == VD_TREE_STRING) {
        free(t->v.s);
    }
    free(t);
}

vd_tree *vd_tree_clone(const vd_tree *t)
{
    if (!t) {
        return NULL;
    }
    vd_tree *c = vd_tree_new(VD_TREE_NULL);
    c->type = t->type;
    c->v = t->v;
    if (t->type == VD_TREE_STRING) {
        c->v.s = xstrndup(t->v.s, strlen(t->v.s));
    }
    for (size_t i = 0; i < t->n; i++) {
        if (t->type == VD_TREE_OBJECT) {
            vd_tree_put(c, t->keys[i], vd_tree_clone(t->kids[i]));
        } else {
            vd_tree_append(c, vd_tree_clone(t->kids[i]));
        }
    }
    return c;
}

vd_tree_type vd_tree_type_of(const vd_tree *t)
{
    return t->type;
}

const char *vd_tree_type_name(vd_tree_type type)
{
    static const char *const names[] = {
        [VD_TREE_NULL] = "null",     [VD_TREE_BOOL] = "boolean", [VD_TREE_INT] = "number",
        [VD_TREE_NUMBER] = "number", [VD_TREE_STRING] = "string", [VD_TREE_OBJECT] = "object",
        [VD_TREE_LIST] = "array",
    };
    return (unsigned)type < sizeof(names) / sizeof(names[0]) ? names[type] : "value";
}

const char *vd_tree_string(const vd_tree *t)
{
    return t && t->type == VD_TREE_STRING ? t->v.s : NULL;
}

bool vd_tree_bool(const vd_tree *t)
{
    return t && t->type == VD_TREE_BOOL && t->v.b;
}

int64_t vd_tree_int(const vd_tree *t)
{
    return t && t->type == VD_TREE_INT ? t->v.i : 0;
}

double vd_tree_number(const vd_tree *t)
{
    if (!t) {
        return 0;
    }
    return t->type == VD_TREE_NUMBER ? t->v.d : t->type == VD_TREE_INT ? (double)t->v.i : 0;
}

size_t vd_tree_size(const vd_tree *t)
{
    return t ? t->n : 0;
}

const char *vd_tree_key(const vd_tree *obj, size_t i)
{
    return obj->type == VD_TREE_OBJECT && i < obj->n ? obj->keys[i] : NULL;
}

vd_tree *vd_tree_at(const vd_tree *t, size_t i)
{
    return i < t->n ? t->kids[i] : NULL;
}

static ssize_t find(const vd_tree *obj, const char *key)
{
    if (!obj || obj->type != VD_TREE_OBJECT) {
        return -1;
    }
    for (size_t i = 0; i < obj->n; i++) {
        if (strcmp(obj->keys[i], key) == 0) {
            return (ssize_t)i;
        }
    }
    return -1;
}

vd_tree *vd_tree_get(const vd_tree *obj, const char *key)
{
    ssize_t i = find(obj, key);
    return i < 0 ? NULL : obj->kids[i];
}

static void grow(vd_tree *t)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 4;
        t->kids = xrealloc(t->kids, t->cap * sizeof(*t->kids));
        if (t->type == VD_TREE_OBJECT) {
            t->keys = xrealloc(t->keys, t->cap * sizeof(*t->keys));
        }
    }
}

void vd_tree_put(vd_tree *obj, const char *key, vd_tree *val)
{
    if (obj->type != VD_TREE_OBJECT) {
        abort();
    }
    ssize_t i = find(obj, key);
    if (i >= 0) {
        vd_tree_free(obj->kids[i]);
        obj->kids[i] = val;
        return;
    }
    grow(obj);
    obj->keys[obj->n] = xstrndup(key, strlen(key));
    obj->kids[obj->n++] = val;
}

vd_tree *vd_tree_take(vd_tree *obj, const char *key)
{
    ssize_t i = find(obj, key);
    if (i < 0) {
        return NULL;
    }
    vd_tree *val = obj->kids[i];
    free(obj->keys[i]);
    memmove(&obj->kids[i], &obj->kids[i + 1], (obj->n - (size_t)i - 1) * sizeof(*obj->kids));
    memmove(&obj->keys[i], &obj->keys[i + 1], (obj->n - (size_t)i - 1) * sizeof(*obj->keys));
    obj->n--;
    return val;
}

void vd_tree_append(vd_tree *list, vd_tree *val)
{
    if (list->type != VD_TREE_LIST) {
        abort();
    }
    grow(list);
    list->kids[list->n++] = val;
}

/* ---- typed lookups --------------------------------------------------------------------- */

int vd_tree_get_bool(const vd_tree *obj, const char *key, const char *what, bool def,
                     bool *out, vd_error **errp)
{
    const vd_tree *v = vd_tree_get(obj, key);
    *out = def;
    if (!v) {
        return 0;
    }
    if (v->type == VD_TREE_BOOL) {
        *out = v->v.b;
        return 0;
    }
    if (v->type == VD_TREE_STRING && (!strcmp(v->v.s, "on") || !strcmp(v->v.s, "off"))) {
        *out = v->v.s[1] == 'n';
        return 0;
    }
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' expects 'on' or 'off'",
                        what ? what : key);
}

/* A decimal or 0x number with nothing after it. A leading '-' wraps, as QEMU's number
 * options take it ("-1" is the largest value, which range checks then refuse). */
static int parse_uint(const char *s, uint64_t *out)
{
    if (*s == '+' || *s == ' ' || *s == '\0') {
        return -EINVAL;
    }
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end) {
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* A number member: a non-negative integer, or a string `parse` takes; else `expects`. */
static int get_number(const vd_tree *obj, const char *key, const char *what, uint64_t def,
                      uint64_t *out, int (*parse)(const char *, uint64_t *),
                      const char *expects, vd_error **errp)
{
    const vd_tree *v = vd_tree_get(obj, key);
    *out = def;
    if (!v) {
        return 0;
    }
    if (v->type == VD_TREE_INT && v->v.i >= 0) {
        *out = (uint64_t)v->v.i;
        return 0;
    }
    if (v->type == VD_TREE_STRING && parse(v->v.s, out) == 0) {
        return 0;
    }
    *out = def;
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' expects %s",
                        what ? what : key, expects);
}

int vd_tree_get_uint(const vd_tree *obj, const char *key, const char *what, uint64_t def,
                     uint64_t *out, vd_error **errp)
{
    return get_number(obj, key, what, def, out, parse_uint, "a number", errp);
}

int vd_tree_get_size(const vd_tree *obj, const char *key, const char *what, uint64_t def,
                     uint64_t *out, vd_error **errp)
{
    return get_number(obj, key, what, def, out, vd_parse_size,
                      "a non-negative number below 2^64", errp);
}

int vd_tree_get_str(const vd_tree *obj, const char *key, const char *what, const char **out,
                    vd_error **errp)
{
    const vd_tree *v = vd_tree_get(obj, key);
    *out = NULL;
    if (!v) {
        return 0;
    }
    if (v->type != VD_TREE_STRING) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for '%s', "
                            "expected: string", what ? what : key);
    }
    *out = v->v.s;
    return 0;
}
