/* JSON text to options trees and back, in the dialect QEMU's parser accepts (RFC 8259 plus
 * single-quoted strings). The input is untrusted (json: filenames, QMP), so every read is
 * bounded by len, nesting is capped and any bad byte is an error naming its offset. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/tree.h"

/* QEMU's json-streamer refuses deeper documents; the same cap bounds our recursion. */
#define JSON_MAX_DEPTH 1024

/* ---- growable byte buffer (decoded strings, serialised output) ----------------------- */

typedef struct json_buf {
    char *data;
    size_t len, cap;
} json_buf;

static void buf_add(json_buf *b, const char *s, size_t n)
{
    if (n >= b->cap - b->len || !b->data) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->len <= n) {
            if (cap > SIZE_MAX / 2) {
                abort();
            }
            cap *= 2;
        }
        char *d = realloc(b->data, cap);
        if (!d) {
            abort();
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_addc(json_buf *b, char c)
{
    buf_add(b, &c, 1);
}

/* ---- parser -------------------------------------------------------------------------- */

typedef struct json_parser {
    const unsigned char *text;
    size_t len;
    size_t pos;
    vd_error **errp;
} json_parser;

/* The next byte, or -1 at the end of the input (the input is not NUL-terminated). */
static int peek(const json_parser *p)
{
    return p->pos < p->len ? p->text[p->pos] : -1;
}

static void skip_ws(json_parser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            break;
        }
        p->pos++;
    }
}

static void __attribute__((format(printf, 3, 4)))
parse_error(json_parser *p, size_t offset, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vd_error_set(p->errp, VD_ERR_INVALID, EINVAL, "JSON parse error at offset %zu: %s", offset,
                 msg);
}

/* Names what was found at the current position, for "expected X, found Y" messages. */
static void describe_here(const json_parser *p, char *out, size_t size)
{
    int c = peek(p);
    if (c < 0) {
        snprintf(out, size, "end of input");
    } else if (c > 0x20 && c < 0x7f) {
        snprintf(out, size, "'%c'", c);
    } else {
        snprintf(out, size, "byte 0x%02x", (unsigned)c);
    }
}

static void expected(json_parser *p, const char *what)
{
    char found[32];
    describe_here(p, found, sizeof(found));
    parse_error(p, p->pos, "expected %s, found %s", what, found);
}

static vd_tree *parse_value(json_parser *p, int depth);

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Reads the four hex digits of a \u escape whose backslash is at esc. */
static int parse_hex4(json_parser *p, size_t esc, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(peek(p));
        if (d < 0) {
            parse_error(p, esc, "\\u escape needs four hex digits");
            return -EINVAL;
        }
        v = v << 4 | (unsigned)d;
        p->pos++;
    }
    *out = v;
    return 0;
}

static void put_utf8(json_buf *b, unsigned cp)
{
    char s[4];
    size_t n;
    if (cp < 0x80) {
        s[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        s[0] = (char)(0xc0 | cp >> 6);
        s[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        s[0] = (char)(0xe0 | cp >> 12);
        s[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        s[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        s[0] = (char)(0xf0 | cp >> 18);
        s[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        s[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        s[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_add(b, s, n);
}

/* Length of the well-formed UTF-8 sequence at p->pos (no overlong forms, no surrogates,
 * nothing above U+10FFFF), or 0. QEMU refuses malformed UTF-8 in strings too. */
static size_t utf8_seq_len(const json_parser *p)
{
    const unsigned char *s = p->text + p->pos;
    size_t avail = p->len - p->pos;
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;  /* range of the second byte */
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (avail < n || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
    }
    return n;
}

/* Parses a string whose opening quote (either kind) is at p->pos into b. */
static int parse_string_into(json_parser *p, json_buf *b)
{
    size_t start = p->pos;
    int quote = peek(p);
    p->pos++;
    for (;;) {
        int c = peek(p);
        if (c < 0) {
            parse_error(p, p->pos, "unterminated string starting at offset %zu", start);
            return -EINVAL;
        }
        if (c == quote) {
            p->pos++;
            return 0;
        }
        if (c < 0x20) {
            parse_error(p, p->pos, "control character 0x%02x in string (must be escaped)",
                        (unsigned)c);
            return -EINVAL;
        }
        if (c >= 0x80) {
            size_t n = utf8_seq_len(p);
            if (n == 0) {
                parse_error(p, p->pos, "invalid UTF-8 sequence in string");
                return -EINVAL;
            }
            buf_add(b, (const char *)p->text + p->pos, n);
            p->pos += n;
            continue;
        }
        if (c != '\\') {
            buf_addc(b, (char)c);
            p->pos++;
            continue;
        }
        size_t esc = p->pos++;
        int e = peek(p);
        p->pos++;
        switch (e) {
        case '"':
        case '\'':
        case '\\':
        case '/':
            buf_addc(b, (char)e);
            break;
        case 'b':
            buf_addc(b, '\b');
            break;
        case 'f':
            buf_addc(b, '\f');
            break;
        case 'n':
            buf_addc(b, '\n');
            break;
        case 'r':
            buf_addc(b, '\r');
            break;
        case 't':
            buf_addc(b, '\t');
            break;
        case 'u': {
            unsigned cp;
            if (parse_hex4(p, esc, &cp) < 0) {
                return -EINVAL;
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                /* A high surrogate only means something with a low one right after it. */
                unsigned lo;
                if (peek(p) != '\\' || p->pos + 1 >= p->len || p->text[p->pos + 1] != 'u') {
                    parse_error(p, esc, "lone surrogate \\u%04X in string", cp);
                    return -EINVAL;
                }
                size_t esc2 = p->pos;
                p->pos += 2;
                if (parse_hex4(p, esc2, &lo) < 0) {
                    return -EINVAL;
                }
                if (lo < 0xdc00 || lo > 0xdfff) {
                    parse_error(p, esc, "lone surrogate \\u%04X in string", cp);
                    return -EINVAL;
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                parse_error(p, esc, "lone surrogate \\u%04X in string", cp);
                return -EINVAL;
            } else if (cp == 0) {
                /* Tree strings are C strings. */
                parse_error(p, esc, "\\u0000 is not allowed in a string");
                return -EINVAL;
            }
            put_utf8(b, cp);
            break;
        }
        default:
            p->pos = esc + 1;
            if (e < 0) {
                parse_error(p, esc, "unterminated string starting at offset %zu", start);
            } else {
                char found[32];
                describe_here(p, found, sizeof(found));
                parse_error(p, esc, "invalid escape sequence: backslash followed by %s",
                            found);
            }
            return -EINVAL;
        }
    }
}

static vd_tree *parse_string(json_parser *p)
{
    json_buf b = {0};
    vd_tree *t = NULL;
    if (parse_string_into(p, &b) == 0) {
        t = vd_tree_new_stringn(b.data ? b.data : "", b.len);
    }
    free(b.data);
    return t;
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

/* RFC 8259 numbers only: no '+', no leading zeros, digits on both sides of '.'. */
static vd_tree *parse_number(json_parser *p)
{
    size_t start = p->pos;
    bool neg = false, is_int = true;
    if (peek(p) == '-') {
        neg = true;
        p->pos++;
    }
    if (!is_digit(peek(p))) {
        expected(p, "a digit after '-'");
        return NULL;
    }
    if (peek(p) == '0') {
        p->pos++;
        if (is_digit(peek(p))) {
            parse_error(p, p->pos - 1, "number has a leading zero");
            return NULL;
        }
    } else {
        while (is_digit(peek(p))) {
            p->pos++;
        }
    }
    size_t int_end = p->pos;
    if (peek(p) == '.') {
        is_int = false;
        p->pos++;
        if (!is_digit(peek(p))) {
            expected(p, "a digit after '.'");
            return NULL;
        }
        while (is_digit(peek(p))) {
            p->pos++;
        }
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        is_int = false;
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') {
            p->pos++;
        }
        if (!is_digit(peek(p))) {
            expected(p, "a digit in the exponent");
            return NULL;
        }
        while (is_digit(peek(p))) {
            p->pos++;
        }
    }

    if (is_int) {
        /* Accumulate the magnitude unsigned so INT64_MIN fits; overflow means a double. */
        uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        uint64_t mag = 0;
        bool fits = true;
        for (size_t i = start + (neg ? 1 : 0); i < int_end; i++) {
            unsigned d = (unsigned)(p->text[i] - '0');
            if (mag > (limit - d) / 10) {
                fits = false;
                break;
            }
            mag = mag * 10 + d;
        }
        if (fits) {
            int64_t v = neg ? (mag == limit ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
            return vd_tree_new_int(v);
        }
    }

    /* strtod needs a terminated string; the scan above already bounded the length. */
    size_t n = p->pos - start;
    char local[64];
    char *s = n < sizeof(local) ? local : malloc(n + 1);
    if (!s) {
        abort();
    }
    memcpy(s, p->text + start, n);
    s[n] = '\0';
    double v = strtod(s, NULL);
    if (s != local) {
        free(s);
    }
    if (isinf(v)) {
        /* JSON cannot print an infinity back, so refuse it rather than lose the value. */
        parse_error(p, start, "number is out of range");
        return NULL;
    }
    return vd_tree_new_number(v);
}

static vd_tree *parse_literal(json_parser *p)
{
    static const struct {
        const char *word;
        vd_tree_type type;
        bool value;
    } words[] = {
        {"true", VD_TREE_BOOL, true},
        {"false", VD_TREE_BOOL, false},
        {"null", VD_TREE_NULL, false},
    };
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        size_t n = strlen(words[i].word);
        if (p->len - p->pos >= n && memcmp(p->text + p->pos, words[i].word, n) == 0) {
            p->pos += n;
            return words[i].type == VD_TREE_BOOL ? vd_tree_new_bool(words[i].value)
                                                 : vd_tree_new(VD_TREE_NULL);
        }
    }
    expected(p, "a value");
    return NULL;
}

static vd_tree *parse_object(json_parser *p, int depth)
{
    vd_tree *obj = vd_tree_new(VD_TREE_OBJECT);
    json_buf key = {0};
    p->pos++;  /* '{' */
    skip_ws(p);
    if (peek(p) == '}') {
        p->pos++;
        return obj;
    }
    for (;;) {
        skip_ws(p);
        if (peek(p) != '"' && peek(p) != '\'') {
            expected(p, "a string as object key");
            goto fail;
        }
        size_t key_pos = p->pos;
        key.len = 0;
        if (parse_string_into(p, &key) < 0) {
            goto fail;
        }
        /* The buffer is reused from key to key; an empty key never rewrites it. */
        const char *k = key.len ? key.data : "";
        if (vd_tree_get(obj, k)) {
            parse_error(p, key_pos, "Duplicate key '%s'", k);
            goto fail;
        }
        skip_ws(p);
        if (peek(p) != ':') {
            expected(p, "':' after object key");
            goto fail;
        }
        p->pos++;
        vd_tree *val = parse_value(p, depth);
        if (!val) {
            goto fail;
        }
        vd_tree_put(obj, k, val);
        skip_ws(p);
        if (peek(p) == ',') {
            p->pos++;
        } else if (peek(p) == '}') {
            p->pos++;
            free(key.data);
            return obj;
        } else {
            expected(p, "',' or '}' after object member");
            goto fail;
        }
    }
fail:
    free(key.data);
    vd_tree_free(obj);
    return NULL;
}

static vd_tree *parse_list(json_parser *p, int depth)
{
    vd_tree *list = vd_tree_new(VD_TREE_LIST);
    p->pos++;  /* '[' */
    skip_ws(p);
    if (peek(p) == ']') {
        p->pos++;
        return list;
    }
    for (;;) {
        vd_tree *val = parse_value(p, depth);
        if (!val) {
            vd_tree_free(list);
            return NULL;
        }
        vd_tree_append(list, val);
        skip_ws(p);
        if (peek(p) == ',') {
            p->pos++;
        } else if (peek(p) == ']') {
            p->pos++;
            return list;
        } else {
            expected(p, "',' or ']' after array element");
            vd_tree_free(list);
            return NULL;
        }
    }
}

/* depth counts the containers around this value; the value itself may add one. */
static vd_tree *parse_value(json_parser *p, int depth)
{
    skip_ws(p);
    int c = peek(p);
    if (c == '{' || c == '[') {
        if (depth >= JSON_MAX_DEPTH) {
            parse_error(p, p->pos, "nesting is deeper than %d levels", JSON_MAX_DEPTH);
            return NULL;
        }
        return c == '{' ? parse_object(p, depth + 1) : parse_list(p, depth + 1);
    }
    if (c == '"' || c == '\'') {
        return parse_string(p);
    }
    if (c == '-' || is_digit(c)) {
        return parse_number(p);
    }
    return parse_literal(p);
}

int vd_tree_parse_json(const char *text, size_t len, vd_tree **out, vd_error **errp)
{
    json_parser p = {.text = (const unsigned char *)text, .len = len, .errp = errp};
    vd_tree *t = parse_value(&p, 0);
    if (!t) {
        return -EINVAL;
    }
    skip_ws(&p);
    if (p.pos < p.len) {
        expected(&p, "end of input after the value");
        vd_tree_free(t);
        return -EINVAL;
    }
    *out = t;
    return 0;
}

/* ---- serialiser ---------------------------------------------------------------------- */

static void put_json_string(json_buf *b, const char *s)
{
    buf_addc(b, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"':
            buf_add(b, "\\\"", 2);
            break;
        case '\\':
            buf_add(b, "\\\\", 2);
            break;
        case '\n':
            buf_add(b, "\\n", 2);
            break;
        case '\t':
            buf_add(b, "\\t", 2);
            break;
        case '\r':
            buf_add(b, "\\r", 2);
            break;
        case '\b':
            buf_add(b, "\\b", 2);
            break;
        case '\f':
            buf_add(b, "\\f", 2);
            break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                buf_add(b, esc, 6);
            } else {
                buf_addc(b, (char)c);
            }
        }
    }
    buf_addc(b, '"');
}

static void put_json(json_buf *b, const vd_tree *t)
{
    char num[40];
    switch (vd_tree_type_of(t)) {
    case VD_TREE_NULL:
        buf_add(b, "null", 4);
        break;
    case VD_TREE_BOOL:
        if (vd_tree_bool(t)) {
            buf_add(b, "true", 4);
        } else {
            buf_add(b, "false", 5);
        }
        break;
    case VD_TREE_INT:
        buf_add(b, num, (size_t)snprintf(num, sizeof(num), "%" PRId64, vd_tree_int(t)));
        break;
    case VD_TREE_NUMBER: {
        double v = vd_tree_number(t);
        if (!isfinite(v)) {
            /* JSON has no infinity or NaN; QEMU prints these as "inf"/"nan", which no JSON
             * parser reads back. null at least keeps the output valid. */
            buf_add(b, "null", 4);
            break;
        }
        int n = snprintf(num, sizeof(num), "%.17g", v);
        buf_add(b, num, (size_t)n);
        /* "%.17g" prints 3.0 as "3", which would read back as an integer. */
        if (strspn(num, "-0123456789") == (size_t)n) {
            buf_add(b, ".0", 2);
        }
        break;
    }
    case VD_TREE_STRING:
        put_json_string(b, vd_tree_string(t));
        break;
    case VD_TREE_OBJECT:
        buf_addc(b, '{');
        for (size_t i = 0; i < vd_tree_size(t); i++) {
            if (i) {
                buf_add(b, ", ", 2);
            }
            put_json_string(b, vd_tree_key(t, i));
            buf_add(b, ": ", 2);
            put_json(b, vd_tree_at(t, i));
        }
        buf_addc(b, '}');
        break;
    case VD_TREE_LIST:
        buf_addc(b, '[');
        for (size_t i = 0; i < vd_tree_size(t); i++) {
            if (i) {
                buf_add(b, ", ", 2);
            }
            put_json(b, vd_tree_at(t, i));
        }
        buf_addc(b, ']');
        break;
    }
}

char *vd_tree_to_json(const vd_tree *t)
{
    json_buf b = {0};
    put_json(&b, t);
    return b.data;
}
