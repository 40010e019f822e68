/* NBD filenames as qemu-img 7.2 reads them: a URI (RFC 3986 syntax, checked as strictly as
 * QEMU's util/uri.c, with its percent-decoding of host, path and query) for nbd://,
 * nbd+tcp:// and nbd+unix://, or the older nbd:unix:PATH[:exportname=E] and
 * nbd:HOST:PORT[:exportname=E] forms. Pure parsing: no I/O, no global state. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/nbd-uri.h"

#define EN_OPTSTR ":exportname="

bool vd_nbd_filename_prefix(const char *filename)
{
    return !strncmp(filename, "nbd:", 4) || !strncmp(filename, "nbd+tcp://", 10) ||
           !strncmp(filename, "nbd+unix://", 11);
}

/* Character classes of RFC 3986. */
static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_unreserved(char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool is_sub_delim(char c)
{
    return c && strchr("!$&'()*+,;=", c);
}

static bool is_pct(const char *p)
{
    return p[0] == '%' && is_hex(p[1]) && is_hex(p[2]);
}

/* Length of the run at p of unreserved, pct-encoded, sub-delims and the characters in
 * `also` (pchar is also = ":@"). */
static size_t span(const char *p, const char *also)
{
    const char *q = p;
    for (;;) {
        if (is_pct(q)) {
            q += 3;
        } else if (*q && (is_unreserved(*q) || is_sub_delim(*q) || strchr(also, *q))) {
            q++;
        } else {
            return (size_t)(q - p);
        }
    }
}

static int hexval(char c)
{
    return is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* QEMU's uri_string_unescape: %XX decodes, anything else stays. A decoded NUL ends the
 * string, as it ends QEMU's C string. */
static vd_tree *unescape(const char *p, size_t len)
{
    char *s = malloc(len + 1);
    if (!s) {
        abort();
    }
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (len - i >= 3 && is_pct(p + i)) {
            s[o++] = (char)(hexval(p[i + 1]) << 4 | hexval(p[i + 2]));
            i += 3;
        } else {
            s[o++] = p[i++];
        }
    }
    s[o] = '\0';
    vd_tree *t = vd_tree_new_string(s);
    free(s);
    return t;
}

/* The parts of a URI that NBD uses. */
typedef struct nbdc_uri {
    const char *scheme, *host, *path, *query;
    size_t scheme_len, host_len, path_len, query_len;
    bool has_query;
    int port;  /* 0: none given (or 0 given: QEMU cannot tell them apart) */
} nbdc_uri;

/* Parses "scheme://authority path-abempty [?query] [#fragment]"; every URI form NBD
 * accepts has an authority, and one without "//" is no valid NBD URL either. */
static bool parse_uri(const char *s, nbdc_uri *u)
{
    memset(u, 0, sizeof(*u));
    const char *p = s;
    if (!is_alpha(*p)) {
        return false;
    }
    while (is_alpha(*p) || is_digit(*p) || *p == '+' || *p == '-' || *p == '.') {
        p++;
    }
    u->scheme = s;
    u->scheme_len = (size_t)(p - s);
    if (strncmp(p, "://", 3)) {
        return false;
    }
    p += 3;
    /* userinfo@ is allowed and ignored */
    size_t ui = span(p, ":");
    if (p[ui] == '@') {
        p += ui + 1;
    }
    if (*p == '[') {
        /* QEMU takes anything up to the first ']' as an IP literal. */
        const char *end = strchr(p, ']');
        if (!end) {
            return false;
        }
        u->host = p;
        u->host_len = (size_t)(end + 1 - p);
        p = end + 1;
    } else {
        u->host = p;
        u->host_len = span(p, "");
        p += u->host_len;
    }
    if (*p == ':') {
        p++;
        if (!is_digit(*p)) {
            return false;
        }
        int port = 0;
        while (is_digit(*p)) {
            port = port * 10 + (*p++ - '0');
            if (port > 65535) {
                return false;
            }
        }
        u->port = port;
    }
    u->path = p;
    while (*p == '/') {
        p++;
        p += span(p, ":@");
    }
    u->path_len = (size_t)(p - u->path);
    if (*p == '?') {
        p++;
        u->has_query = true;
        u->query = p;
        p += span(p, ":@/?");
        u->query_len = (size_t)(p - u->query);
    }
    if (*p == '#') {
        p++;
        p += span(p, ":@/?");
    }
    return *p == '\0';
}

/* QEMU's query_params_parse, reduced to what NBD needs: the number of parameters and the
 * first one. Parameters are separated by '&' (or, in a query with no '&', by ';'); empty
 * ones and "=value" ones are skipped. */
static size_t query_params(const char *q, size_t len, const char **name, size_t *name_len,
                           const char **value, size_t *value_len)
{
    size_t n = 0;
    bool amp = memchr(q, '&', len) != NULL;
    const char *end_all = q + len;
    while (q < end_all) {
        const char *end = memchr(q, amp ? '&' : ';', (size_t)(end_all - q));
        if (!end) {
            end = end_all;
        }
        const char *eq = memchr(q, '=', (size_t)(end - q));
        if (end != q && eq != q) {
            if (n == 0) {
                *name = q;
                *name_len = (size_t)((eq ? eq : end) - q);
                *value = eq ? eq + 1 : NULL;
                *value_len = eq ? (size_t)(end - eq - 1) : 0;
            }
            n++;
        }
        q = end < end_all ? end + 1 : end;
    }
    return n;
}

static int invalid_url(vd_error **errp)
{
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "No valid URL specified");
}

static int parse_nbd_uri(const char *filename, vd_tree *t, vd_error **errp)
{
    nbdc_uri u;
    if (!parse_uri(filename, &u)) {
        return invalid_url(errp);
    }
    bool is_unix;
    if ((u.scheme_len == 3 && !strncmp(u.scheme, "nbd", 3)) ||
        (u.scheme_len == 7 && !strncmp(u.scheme, "nbd+tcp", 7))) {
        is_unix = false;
    } else if (u.scheme_len == 8 && !strncmp(u.scheme, "nbd+unix", 8)) {
        is_unix = true;
    } else {
        return invalid_url(errp);
    }
    const char *name = NULL, *value = NULL;
    size_t name_len = 0, value_len = 0;
    size_t nq = u.has_query ? query_params(u.query, u.query_len, &name, &name_len, &value,
                                           &value_len) : 0;
    if (nq > 1 || (is_unix && nq == 0) || (!is_unix && nq)) {
        return invalid_url(errp);
    }
    vd_tree *server = vd_tree_new(VD_TREE_OBJECT);
    if (is_unix) {
        /* nbd+unix:///export?socket=path. A "socket" with no '=' has no value; QEMU
         * dereferences it, so refusing is the nearest sane behaviour. */
        vd_tree *qname = unescape(name, name_len);
        bool ok = !u.host_len && !u.port && value && !strcmp(vd_tree_string(qname), "socket");
        vd_tree_free(qname);
        if (!ok) {
            vd_tree_free(server);
            return invalid_url(errp);
        }
        vd_tree_put(server, "type", vd_tree_new_string("unix"));
        vd_tree_put(server, "path", unescape(value, value_len));
    } else {
        /* nbd[+tcp]://host[:port]/export; an IPv6 literal loses its brackets. */
        if (!u.host_len) {
            vd_tree_free(server);
            return invalid_url(errp);
        }
        vd_tree_put(server, "type", vd_tree_new_string("inet"));
        if (u.host[0] == '[') {
            vd_tree_put(server, "host", vd_tree_new_stringn(u.host + 1, u.host_len - 2));
        } else {
            vd_tree_put(server, "host", unescape(u.host, u.host_len));
        }
        char port[16];
        snprintf(port, sizeof(port), "%d", u.port ? u.port : atoi(VD_NBD_DEFAULT_PORT));
        vd_tree_put(server, "port", vd_tree_new_string(port));
    }
    vd_tree_put(t, "server", server);
    /* The export is the path without its first '/'; an empty one is no export. */
    vd_tree *path = unescape(u.path, u.path_len);
    const char *exp = vd_tree_string(path);
    if (exp[0] == '/') {
        exp++;
    }
    if (exp[0]) {
        vd_tree_put(t, "export", vd_tree_new_string(exp));
    }
    vd_tree_free(path);
    return 0;
}

/* QEMU's inet_parse for "HOST:PORT" (an IPv6 literal in brackets): at most 64 bytes of
 * host and 32 of port; anything after a ',' are socket options that NBD does not use. */
static int parse_inet(const char *spec, vd_tree *server, vd_error **errp)
{
    const char *host = spec, *host_end, *port;
    if (spec[0] == ':') {
        host_end = spec;
        port = spec + 1;
    } else if (spec[0] == '[') {
        host = spec + 1;
        host_end = strchr(host, ']');
        if (!host_end || host_end == host || host_end - host > 64 || host_end[1] != ':') {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "error parsing IPv6 address "
                                "'%s'", spec);
        }
        port = host_end + 2;
    } else {
        host_end = strchr(spec, ':');
        if (!host_end || host_end == spec || host_end - spec > 64) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "error parsing address '%s'",
                                spec);
        }
        port = host_end + 1;
    }
    /* QEMU's sscanf("%32[^,]") takes the first 32 bytes of a longer port. */
    size_t port_len = strcspn(port, ",");
    port_len = port_len > 32 ? 32 : port_len;
    if (port_len == 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, spec[0] == ':'
                            ? "error parsing port in address '%s'" : spec[0] == '['
                            ? "error parsing IPv6 address '%s'" : "error parsing address '%s'",
                            spec);
    }
    vd_tree_put(server, "type", vd_tree_new_string("inet"));
    vd_tree_put(server, "host", vd_tree_new_stringn(host, (size_t)(host_end - host)));
    vd_tree_put(server, "port", vd_tree_new_stringn(port, port_len));
    return 0;
}

/* nbd:unix:PATH[:exportname=E] and nbd:HOST:PORT[:exportname=E]. */
static int parse_legacy(const char *filename, vd_tree *t, vd_error **errp)
{
    char *file = strdup(filename);
    if (!file) {
        abort();
    }
    int ret = 0;
    char *exp = strstr(file, EN_OPTSTR);
    if (exp) {
        /* An empty exportname= makes QEMU ignore the rest of the name. */
        if (exp[strlen(EN_OPTSTR)] == '\0') {
            goto out;
        }
        *exp = '\0';
        vd_tree_put(t, "export", vd_tree_new_string(exp + strlen(EN_OPTSTR)));
    }
    if (strncmp(file, "nbd:", 4)) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "File name string for NBD must "
                           "start with 'nbd:'");
        goto out;
    }
    const char *spec = file + 4;
    if (!*spec) {
        goto out;
    }
    vd_tree *server = vd_tree_new(VD_TREE_OBJECT);
    if (!strncmp(spec, "unix:", 5)) {
        vd_tree_put(server, "type", vd_tree_new_string("unix"));
        vd_tree_put(server, "path", vd_tree_new_string(spec + 5));
    } else {
        ret = parse_inet(spec, server, errp);
    }
    if (ret < 0) {
        vd_tree_free(server);
    } else {
        vd_tree_put(t, "server", server);
    }
out:
    free(file);
    return ret;
}

int vd_nbd_filename_options(const char *filename, vd_tree **out, vd_error **errp)
{
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(t, "driver", vd_tree_new_string("nbd"));
    int ret = strstr(filename, "://") ? parse_nbd_uri(filename, t, errp)
                                      : parse_legacy(filename, t, errp);
    if (ret < 0) {
        vd_tree_free(t);
        return ret;
    }
    *out = t;
    return 0;
}
