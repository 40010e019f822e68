/* rbd filenames as qemu-img 7.2 reads them: rbd:pool/[namespace/]image[@snapshot] then
 * :key=value options, where a backslash makes the next character part of a name rather
 * than a separator. Pure parsing on a private copy of the name: no I/O, no global state,
 * and every step scans each byte a bounded number of times. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/rbd-filename.h"
#include "util/common.h"

#define RBD_PREFIX "rbd:"

bool vd_rbd_filename_prefix(const char *filename)
{
    return !strncmp(filename, RBD_PREFIX, strlen(RBD_PREFIX));
}

/* The first delim in s that no backslash escapes, or NULL. A backslash at the very end
 * escapes nothing. */
static char *find_unescaped(char *s, char delim)
{
    for (; *s; s++) {
        if (*s == delim) {
            return s;
        }
        if (*s == '\\' && s[1]) {
            s++;
        }
    }
    return NULL;
}

/* Ends s at its first unescaped delim and returns the text after it; NULL (and s as it
 * was) when there is none. */
static char *split(char *s, char delim)
{
    char *d = find_unescaped(s, delim);
    if (!d) {
        return NULL;
    }
    *d = '\0';
    return d + 1;
}

/* Drops the escaping backslashes in place: "\x" becomes "x" for any x (so "\\" is one
 * backslash), and a backslash at the very end stays. */
static char *unescape(char *s)
{
    char *o = s;
    for (const char *i = s; *i; i++) {
        if (*i == '\\' && i[1]) {
            i++;
        }
        *o++ = *i;
    }
    *o = '\0';
    return s;
}

/* A growing text buffer for the pairs' JSON; aborts when memory runs out (the pairs are
 * at most a few times the length of the name). */
typedef struct rbd_json {
    char *data;
    size_t len, cap;
} rbd_json;

static void json_add(rbd_json *j, const char *s, size_t n)
{
    if (n >= SIZE_MAX / 2 - j->len) {
        abort();
    }
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 64;
        while (cap < j->len + n + 1) {
            cap *= 2;
        }
        j->data = realloc(j->data, cap);
        if (!j->data) {
            abort();
        }
        j->cap = cap;
    }
    memcpy(j->data + j->len, s, n);
    j->len += n;
    j->data[j->len] = '\0';
}

/* The code point of the UTF-8 sequence at s, or -1 when it is malformed, and in *used the
 * bytes it takes. Like QEMU's decoder, a malformed sequence takes the bytes up to the
 * first missing continuation byte, so each such stretch becomes one U+FFFD; overlong
 * forms, surrogates, noncharacters and values beyond U+10FFFF are malformed. QEMU's one
 * exception, "\xC0\x80" for U+0000, is malformed here too: a tree string cannot hold a
 * NUL, and vdisk's JSON parser refuses \u0000. */
static long utf8_decode(const unsigned char *s, size_t *used)
{
    static const long min_cp[] = {0x80, 0x800, 0x10000, 0x200000, 0x4000000};
    unsigned char c = s[0];
    *used = 1;
    if (c < 0x80) {
        return c;
    }
    if (c >= 0xfe || (c & 0xc0) == 0x80) {
        return -1;
    }
    size_t len = 0;
    unsigned mask = 0x80;
    for (; c & mask; mask >>= 1) {
        len++;
    }
    long cp = c & (mask - 1);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {  /* also stops at the terminating NUL */
            *used = i;
            return -1;
        }
        cp = cp << 6 | (s[i] & 0x3f);
    }
    *used = len;
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0xfdd0 && cp <= 0xfdef) ||
        (cp & 0xfffe) == 0xfffe || cp < min_cp[len - 2]) {
        return -1;
    }
    return cp;
}

/* s as a JSON string the way QEMU writes one: printable ASCII as is, the usual short
 * escapes, every other code point as \uXXXX (a surrogate pair beyond U+FFFF). */
static void json_add_string(rbd_json *j, const char *s)
{
    json_add(j, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t used;
        long cp = utf8_decode(p, &used);
        p += used;
        char esc[16];
        switch (cp) {
        case '"':
            json_add(j, "\\\"", 2);
            break;
        case '\\':
            json_add(j, "\\\\", 2);
            break;
        case '\b':
            json_add(j, "\\b", 2);
            break;
        case '\f':
            json_add(j, "\\f", 2);
            break;
        case '\n':
            json_add(j, "\\n", 2);
            break;
        case '\r':
            json_add(j, "\\r", 2);
            break;
        case '\t':
            json_add(j, "\\t", 2);
            break;
        default:
            if (cp < 0) {
                cp = 0xfffd;
            }
            if (cp > 0xffff) {
                snprintf(esc, sizeof(esc), "\\u%04lX\\u%04lX", 0xd800 + ((cp - 0x10000) >> 10),
                         0xdc00 + ((cp - 0x10000) & 0x3ff));
                json_add(j, esc, 12);
            } else if (cp < 0x20 || cp >= 0x7f) {
                snprintf(esc, sizeof(esc), "\\u%04lX", cp);
                json_add(j, esc, 6);
            } else {
                esc[0] = (char)cp;
                json_add(j, esc, 1);
            }
        }
    }
    json_add(j, "\"", 1);
}

/* The ":key=value:key=value" part, opts being the text after the first ':'. QEMU looks
 * for the '=' first and only then for the ':' that ends the value, so a ':' before the
 * first '=' belongs to the key ("a:b=c" is key "a:b"). */
static int parse_options(char *opts, vd_tree *t, vd_error **errp)
{
    rbd_json pairs = {0};
    while (opts) {
        char *key = opts;
        char *value = split(key, '=');
        if (!value) {
            /* The name as written, escapes and all, as QEMU reports it. */
            free(pairs.data);
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "conf option %s has no value",
                                key);
        }
        opts = split(value, ':');
        unescape(key);
        unescape(value);
        if (!strcmp(key, "conf")) {
            vd_tree_put(t, "conf", vd_tree_new_string(value));
        } else if (!strcmp(key, "id")) {
            vd_tree_put(t, "user", vd_tree_new_string(value));
        } else {
            json_add(&pairs, pairs.len ? ", " : "[", pairs.len ? 2 : 1);
            json_add_string(&pairs, key);
            json_add(&pairs, ", ", 2);
            json_add_string(&pairs, value);
        }
    }
    if (pairs.len) {
        json_add(&pairs, "]", 1);
        vd_tree_put(t, "=keyvalue-pairs", vd_tree_new_string(pairs.data));
    }
    free(pairs.data);
    return 0;
}

/* Everything after "rbd:", in a private copy that the parts are cut out of. */
static int parse_name(char *buf, vd_tree *t, vd_error **errp)
{
    char *pool = buf;
    char *image = split(pool, '/');
    if (!image) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Pool name is required");
    }
    /* An unescaped '@' anywhere in the rest, even among the options (QEMU looks for it
     * before it cuts them off), makes the image end there and a snapshot follow it, up
     * to the first ':'. Without one the image goes up to the first ':'. */
    char *snapshot = NULL, *opts;
    if (find_unescaped(image, '@')) {
        snapshot = split(image, '@');
        opts = split(snapshot, ':');
    } else {
        opts = split(image, ':');
    }
    /* "namespace/image"; the image may hold further '/'s. */
    char *ns = NULL;
    char *after = split(image, '/');
    if (after) {
        ns = image;
        image = after;
    }
    vd_tree_put(t, "pool", vd_tree_new_string(unescape(pool)));
    vd_tree_put(t, "namespace", vd_tree_new_string(ns ? unescape(ns) : ""));
    vd_tree_put(t, "image", vd_tree_new_string(unescape(image)));
    if (snapshot) {
        vd_tree_put(t, "snapshot", vd_tree_new_string(unescape(snapshot)));
    }
    return parse_options(opts, t, errp);
}

int vd_rbd_filename_options(const char *filename, vd_tree **out, vd_error **errp)
{
    if (!vd_rbd_filename_prefix(filename)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "File name must start with '" RBD_PREFIX "'");
    }
    char *buf = vd_xstrdup(filename + strlen(RBD_PREFIX));
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(t, "driver", vd_tree_new_string("rbd"));
    int ret = parse_name(buf, t, errp);
    free(buf);
    if (ret < 0) {
        vd_tree_free(t);
        return ret;
    }
    *out = t;
    return 0;
}
