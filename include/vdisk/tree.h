/* Options trees: the nested options of QEMU's blockdev shape ({"driver": "qcow2", "file":
 * {"driver": "file", "filename": "a.qcow2"}}), as they come from QMP's blockdev-add, from a
 * `json:{...}` filename, or from a dotted key=value list (`--image-opts`, qemu-io's -o).
 * A tree node is a scalar (null, bool, integer, number, string), an object (members in the
 * order given, keys unique) or a list. Values parsed from key=value text are all strings;
 * the typed getters accept a string wherever QEMU's do ("on", "42", "1M"). */
#ifndef VDISK_TREE_H
#define VDISK_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum vd_tree_type {
    VD_TREE_NULL,
    VD_TREE_BOOL,
    VD_TREE_INT,     /* a JSON number without fraction or exponent that fits int64 */
    VD_TREE_NUMBER,  /* any other JSON number (a double) */
    VD_TREE_STRING,
    VD_TREE_OBJECT,
    VD_TREE_LIST,
} vd_tree_type;

typedef struct vd_tree vd_tree;

vd_tree *vd_tree_new(vd_tree_type type);  /* an empty object/list, null, false, 0, "" */
vd_tree *vd_tree_new_bool(bool v);
vd_tree *vd_tree_new_int(int64_t v);
vd_tree *vd_tree_new_number(double v);
vd_tree *vd_tree_new_string(const char *s);
vd_tree *vd_tree_new_stringn(const char *s, size_t len);  /* may contain no NUL */
void vd_tree_free(vd_tree *t);
vd_tree *vd_tree_clone(const vd_tree *t);

vd_tree_type vd_tree_type_of(const vd_tree *t);
/* QEMU's names for a type in messages: "null", "boolean", "number", "string", "object",
 * "array". */
const char *vd_tree_type_name(vd_tree_type type);

/* Scalars. vd_tree_string is NULL unless t is a string. */
const char *vd_tree_string(const vd_tree *t);
bool vd_tree_bool(const vd_tree *t);
int64_t vd_tree_int(const vd_tree *t);
double vd_tree_number(const vd_tree *t);  /* integers too */

/* Objects and lists. Size is the number of members or elements (0 for scalars). */
size_t vd_tree_size(const vd_tree *t);
const char *vd_tree_key(const vd_tree *obj, size_t i);
vd_tree *vd_tree_at(const vd_tree *t, size_t i);
vd_tree *vd_tree_get(const vd_tree *obj, const char *key);  /* NULL if absent */
/* Puts val (ownership passes) under key, replacing (and freeing) a member of that name. */
void vd_tree_put(vd_tree *obj, const char *key, vd_tree *val);
/* Removes a member and hands it to the caller (NULL if absent). */
vd_tree *vd_tree_take(vd_tree *obj, const char *key);
void vd_tree_append(vd_tree *list, vd_tree *val);

/* JSON as QEMU's parser takes it: RFC 8259 plus single-quoted strings (in which '\'' and
 * '"' may be escaped); at most 1,024 levels of nesting. Errors name the byte offset and what
 * was expected. Leading and trailing white space is allowed; anything else after the value
 * is an error. */
int vd_tree_parse_json(const char *text, size_t len, vd_tree **out, vd_error **errp);
/* The tree as compact JSON, double-quoted ({"driver": "qcow2", "file": {...}}: a space after
 * ':' and ',' as QEMU prints json: filenames). Caller frees. */
char *vd_tree_to_json(const vd_tree *t);

/* A key=value list ("driver=qcow2,file.filename=a.qcow2,file.locking=off"; ",," escapes a
 * comma) as a tree: dotted keys become nested objects, and an object whose keys are all
 * 0, 1, 2, ... becomes a list (QEMU's crumpling). A first item without '=' is the value of
 * implied_key when one is given, else the key of a flag that is on. A key that has a value
 * and dotted keys under it ("overlap-check=all,overlap-check.template=all") keeps the
 * dotted ones flat beside it, as QEMU's flat option dictionaries do. Values stay strings. */
int vd_tree_parse_keyval(const char *text, const char *implied_key, vd_tree **out,
                         vd_error **errp);
/* Merges a flat object whose keys may be dotted into nested form, in place (the same
 * crumpling; used for blockdev-add arguments that mix both forms). */
int vd_tree_crumple(vd_tree *obj, vd_error **errp);

/* Typed lookups of an object member. Absent: *out = def and 0. A value of the wrong type
 * (or a string that does not parse) gives -EINVAL and QEMU's (QemuOpts) message, naming
 * the key as `what` (e.g. "file.align") when what is given, else the key: "Parameter 'KEY'
 * expects 'on' or 'off'" / "... expects a number" / "... expects a non-negative number
 * below 2^64". */
int vd_tree_get_bool(const vd_tree *obj, const char *key, const char *what, bool def,
                     bool *out, vd_error **errp);
int vd_tree_get_uint(const vd_tree *obj, const char *key, const char *what, uint64_t def,
                     uint64_t *out, vd_error **errp);
int vd_tree_get_size(const vd_tree *obj, const char *key, const char *what, uint64_t def,
                     uint64_t *out, vd_error **errp);
/* A string member; a non-string value gives "Invalid parameter type for 'KEY', expected:
 * string". Absent: *out = NULL and 0. */
int vd_tree_get_str(const vd_tree *obj, const char *key, const char *what, const char **out,
                    vd_error **errp);

#ifdef __cplusplus
}
#endif

#endif
