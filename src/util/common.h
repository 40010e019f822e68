/* The small helpers every layer shares (the "common" layer): big-endian byte order for
 * on-disk and on-wire fields, and string copies that abort when memory runs out (the
 * code base's rule for small internal allocations). */
#ifndef VD_UTIL_COMMON_H
#define VD_UTIL_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint16_t vd_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t vd_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t vd_be64(const uint8_t *p)
{
    return ((uint64_t)vd_be32(p) << 32) | vd_be32(p + 4);
}

static inline void vd_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void vd_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void vd_put_be64(uint8_t *p, uint64_t v)
{
    vd_put_be32(p, (uint32_t)(v >> 32));
    vd_put_be32(p + 4, (uint32_t)v);
}

/* A copy of s (NULL stays NULL); aborts when memory runs out. */
static inline char *vd_xstrdup(const char *s)
{
    char *p = s ? strdup(s) : NULL;
    if (s && !p) {
        abort();
    }
    return p;
}

#endif
