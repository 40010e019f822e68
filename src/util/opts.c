/* Option lists in qemu-img's -o syntax ("a=1,b=two", ",," escapes a comma) and the size
 * parser and printer that the CLI and the drivers share. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vdisk/vdisk.h"

struct vd_opts {
    size_t n, cap;
    char **keys;
    char **values;
};

vd_opts *vd_opts_new(void)
{
    vd_opts *o = calloc(1, sizeof(*o));
    if (!o) {
        abort();
    }
    return o;
}

void vd_opts_free(vd_opts *o)
{
    if (!o) {
        return;
    }
    for (size_t i = 0; i < o->n; i++) {
        free(o->keys[i]);
        free(o->values[i]);
    }
    free(o->keys);
    free(o->values);
    free(o);
}

static ssize_t find(const vd_opts *o, const char *key)
{
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->keys[i], key) == 0) {
            return (ssize_t)i;
        }
    }
    return -1;
}

int vd_opts_set(vd_opts *o, const char *key, const char *value)
{
    char *v = strdup(value ? value : "");
    if (!v) {
        abort();
    }
    ssize_t i = find(o, key);
    if (i >= 0) {
        free(o->values[i]);
        o->values[i] = v;
        return 0;
    }
    if (o->n == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 8;
        o->keys = realloc(o->keys, o->cap * sizeof(char *));
        o->values = realloc(o->values, o->cap * sizeof(char *));
        if (!o->keys || !o->values) {
            abort();
        }
    }
    o->keys[o->n] = strdup(key);
    if (!o->keys[o->n]) {
        abort();
    }
    o->values[o->n] = v;
    o->n++;
    return 0;
}

int vd_opts_del(vd_opts *o, const char *key)
{
    ssize_t i = find(o, key);
    if (i < 0) {
        return -ENOENT;
    }
    free(o->keys[i]);
    free(o->values[i]);
    memmove(&o->keys[i], &o->keys[i + 1], (o->n - (size_t)i - 1) * sizeof(char *));
    memmove(&o->values[i], &o->values[i + 1], (o->n - (size_t)i - 1) * sizeof(char *));
    o->n--;
    return 0;
}

const char *vd_opts_get(const vd_opts *o, const char *key)
{
    if (!o) {
        return NULL;
    }
    ssize_t i = find(o, key);
    return i < 0 ? NULL : o->values[i];
}

size_t vd_opts_count(const vd_opts *o)
{
    return o ? o->n : 0;
}

const char *vd_opts_key(const vd_opts *o, size_t i)
{
    return i < o->n ? o->keys[i] : NULL;
}

const char *vd_opts_value(const vd_opts *o, size_t i)
{
    return i < o->n ? o->values[i] : NULL;
}

/* Copies one token up to an unescaped `stop` character (or ',' always), undoing ",,". */
static const char *scan(const char *p, char stop, char *out, size_t *outlen)
{
    size_t n = 0;
    while (*p) {
        if (*p == ',') {
            if (p[1] == ',') {
                out[n++] = ',';
                p += 2;
                continue;
            }
            break;
        }
        if (*p == stop) {
            break;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
    *outlen = n;
    return p;
}

int vd_opts_parse(vd_opts *o, const char *text, vd_error **errp)
{
    size_t len = strlen(text);
    char *key = malloc(len + 1);
    char *val = malloc(len + 1);
    if (!key || !val) {
        abort();
    }
    const char *p = text;
    int ret = 0;
    while (*p) {
        size_t klen, vlen;
        p = scan(p, '=', key, &klen);
        if (*p == '=') {
            p = scan(p + 1, '\0', val, &vlen);
        } else if (klen > 0) {
            strcpy(val, "on");  /* a bare key means key=on, as in QEMU's option lists */
        } else if (*p == ',') {
            p++;
            continue;
        } else {
            break;
        }
        if (klen == 0) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid option: empty key");
            break;
        }
        vd_opts_set(o, key, val);
        if (*p == ',') {
            p++;
        }
    }
    free(key);
    free(val);
    return ret;
}

int vd_opts_get_bool(const vd_opts *o, const char *key, bool def, bool *out, vd_error **errp)
{
    const char *v = vd_opts_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) {
        *out = false;
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "Parameter '%s' expects 'on' or 'off'", key);
    }
    return 0;
}

int vd_opts_get_size(const vd_opts *o, const char *key, uint64_t def, uint64_t *out,
                     vd_error **errp)
{
    const char *v = vd_opts_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    int ret = vd_parse_size(v, out);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_INVALID, -ret,
                            "Parameter '%s' expects a non-negative number below 2^64"
                            " (optional suffix k, M, G, T, P, E)", key);
    }
    return 0;
}

int vd_parse_size(const char *s, uint64_t *out)
{
    while (isspace((unsigned char)*s)) {
        s++;
    }
    if (*s == '-' || *s == '\0') {
        return -EINVAL;
    }
    errno = 0;
    char *end = NULL;
    uint64_t v;
    double frac = 0;
    bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    v = strtoull(s, &end, hex ? 16 : 10);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    if (end == s) {
        return -EINVAL;
    }
    if (*end == '.' && !hex) {
        /* A fraction is allowed with a unit ("1.5G"), as qemu-img allows it. */
        char *fend = NULL;
        frac = strtod(end, &fend);
        end = fend;
    }
    unsigned shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'b': case 'B': shift = 0; end++; break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    case 'p': case 'P': shift = 50; end++; break;
    case 'e': case 'E': shift = 60; end++; break;
    default:
        return -EINVAL;
    }
    if (*end != '\0') {
        return -EINVAL;
    }
    if (frac != 0 && shift == 0) {
        return -EINVAL;
    }
    if (shift && v > (UINT64_MAX >> shift)) {
        return -ERANGE;
    }
    uint64_t r = v << shift;
    if (frac != 0) {
        double extra = frac * (double)(1ull << shift);
        if ((double)r + extra >= 18446744073709551615.0) {
            return -ERANGE;
        }
        r += (uint64_t)extra;
    }
    *out = r;
    return 0;
}

void vd_format_size(uint64_t v, char *buf, size_t len)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    /* qemu-img moves to the next unit once the value reaches 1000 of the current one,
     * so 1000 KiB prints as "0.977 MiB"; "%0.3g" then keeps three significant digits. */
    int i = 0;
    while (i < 6 && (double)v >= 1000.0 * (double)(1ull << (10 * i))) {
        i++;
    }
    snprintf(buf, len, "%0.3g %s", (double)v / (double)(1ull << (10 * i)), units[i]);
}
