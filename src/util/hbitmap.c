/* The hierarchical bitmap (hbitmap.h). Level 0 holds a bit per granule; each level above
 * holds a bit per word of the level below, set while that word is non-zero, up to a level
 * of one word. A search for the next set bit climbs only as far as the first non-zero
 * word it finds, so a sparse bitmap is walked in a few steps per dirty run. */
#include <stdlib.h>
#include <string.h>

#include "util/hbitmap.h"

#define MAX_LEVELS 12   /* 64^12 bits: more than 2^63 bytes at 512 B granules */

struct vd_hbitmap {
    uint64_t size;
    unsigned shift;              /* log2 of the granularity */
    uint64_t nbits;              /* granules */
    uint64_t dirty;              /* set bits at level 0 */
    unsigned nlevels;
    uint64_t nwords[MAX_LEVELS];
    uint64_t *words[MAX_LEVELS];
};

static uint64_t bits_at(const vd_hbitmap *hb, unsigned lvl)
{
    return lvl == 0 ? hb->nbits : hb->nwords[lvl - 1];
}

vd_hbitmap *vd_hbitmap_new(uint64_t size, uint64_t granularity)
{
    if (granularity < 512 || granularity > (1ull << 31) ||
        (granularity & (granularity - 1))) {
        return NULL;
    }
    vd_hbitmap *hb = calloc(1, sizeof(*hb));
    if (!hb) {
        return NULL;
    }
    hb->size = size;
    hb->shift = (unsigned)__builtin_ctzll(granularity);
    hb->nbits = (size >> hb->shift) + ((size & (granularity - 1)) != 0);
    uint64_t bits = hb->nbits;
    do {
        uint64_t n = (bits + 63) / 64;
        hb->nwords[hb->nlevels] = n ? n : 1;
        hb->words[hb->nlevels] = calloc(hb->nwords[hb->nlevels], sizeof(uint64_t));
        if (!hb->words[hb->nlevels]) {
            vd_hbitmap_free(hb);
            return NULL;
        }
        bits = hb->nwords[hb->nlevels];
        hb->nlevels++;
    } while (bits > 1 && hb->nlevels < MAX_LEVELS);
    return hb;
}

void vd_hbitmap_free(vd_hbitmap *hb)
{
    if (!hb) {
        return;
    }
    for (unsigned i = 0; i < hb->nlevels; i++) {
        free(hb->words[i]);
    }
    free(hb);
}

uint64_t vd_hbitmap_size(const vd_hbitmap *hb)
{
    return hb->size;
}

uint64_t vd_hbitmap_granularity(const vd_hbitmap *hb)
{
    return 1ull << hb->shift;
}

uint64_t vd_hbitmap_granules(const vd_hbitmap *hb)
{
    return hb->nbits;
}

/* Bits [a, b) of word i, as a mask. */
static uint64_t word_mask(uint64_t i, uint64_t a, uint64_t b)
{
    uint64_t lo = a > i * 64 ? a - i * 64 : 0;
    uint64_t hi = b < (i + 1) * 64 ? b - i * 64 : 64;
    uint64_t m = hi == 64 ? ~0ull : (1ull << hi) - 1;
    return m & ~((1ull << lo) - 1);
}

/* Word i of level lvl became non-zero (on) or zero: tell the levels above. */
static void propagate(vd_hbitmap *hb, unsigned lvl, uint64_t i, bool on)
{
    for (unsigned up = lvl + 1; up < hb->nlevels; up++) {
        uint64_t *w = &hb->words[up][i / 64];
        uint64_t bit = 1ull << (i % 64);
        uint64_t old = *w;
        *w = on ? old | bit : old & ~bit;
        /* Only a word that turned non-zero, or zero, changes the level above it. */
        if ((old != 0) == (*w != 0)) {
            return;
        }
        i /= 64;
    }
}

static void bits_set(vd_hbitmap *hb, uint64_t a, uint64_t b)
{
    for (uint64_t i = a / 64; a < b && i <= (b - 1) / 64; i++) {
        uint64_t *w = &hb->words[0][i];
        uint64_t old = *w;
        *w |= word_mask(i, a, b);
        hb->dirty += (uint64_t)(__builtin_popcountll(*w) - __builtin_popcountll(old));
        if (!old && *w) {
            propagate(hb, 0, i, true);
        }
    }
}

/* ORs mask into word i of level 0. */
static void bits_set_word(vd_hbitmap *hb, uint64_t i, uint64_t mask)
{
    uint64_t *w = &hb->words[0][i];
    uint64_t old = *w;
    *w |= mask;
    hb->dirty += (uint64_t)(__builtin_popcountll(*w) - __builtin_popcountll(old));
    if (!old && *w) {
        propagate(hb, 0, i, true);
    }
}

static void bits_reset(vd_hbitmap *hb, uint64_t a, uint64_t b)
{
    for (uint64_t i = a / 64; a < b && i <= (b - 1) / 64; i++) {
        uint64_t *w = &hb->words[0][i];
        uint64_t old = *w;
        if (!old) {
            continue;
        }
        *w &= ~word_mask(i, a, b);
        hb->dirty -= (uint64_t)(__builtin_popcountll(old) - __builtin_popcountll(*w));
        if (!*w) {
            propagate(hb, 0, i, false);
        }
    }
}

/* The granules [*a, *b) that [off, off+len) touches, clipped to the bitmap. */
static bool granules(const vd_hbitmap *hb, uint64_t off, uint64_t len, uint64_t *a,
                     uint64_t *b)
{
    if (len == 0 || off >= hb->size) {
        return false;
    }
    uint64_t end = len > hb->size - off ? hb->size : off + len;
    *a = off >> hb->shift;
    *b = ((end - 1) >> hb->shift) + 1;
    return true;
}

void vd_hbitmap_set(vd_hbitmap *hb, uint64_t off, uint64_t len)
{
    uint64_t a, b;
    if (granules(hb, off, len, &a, &b)) {
        bits_set(hb, a, b);
    }
}

void vd_hbitmap_reset(vd_hbitmap *hb, uint64_t off, uint64_t len)
{
    uint64_t a, b;
    if (granules(hb, off, len, &a, &b)) {
        bits_reset(hb, a, b);
    }
}

void vd_hbitmap_reset_all(vd_hbitmap *hb)
{
    for (unsigned i = 0; i < hb->nlevels; i++) {
        memset(hb->words[i], 0, hb->nwords[i] * sizeof(uint64_t));
    }
    hb->dirty = 0;
}

bool vd_hbitmap_get(const vd_hbitmap *hb, uint64_t off)
{
    if (off >= hb->size) {
        return false;
    }
    uint64_t g = off >> hb->shift;
    return (hb->words[0][g / 64] >> (g % 64)) & 1;
}

uint64_t vd_hbitmap_count(const vd_hbitmap *hb)
{
    return hb->dirty << hb->shift;
}

/* The first set bit at or after pos on level lvl, or -1. */
static int64_t next_set(const vd_hbitmap *hb, unsigned lvl, uint64_t pos)
{
    if (pos >= bits_at(hb, lvl)) {
        return -1;
    }
    const uint64_t *words = hb->words[lvl];
    uint64_t i = pos / 64;
    uint64_t w = words[i] & (~0ull << (pos % 64));
    if (w) {
        return (int64_t)(i * 64 + (uint64_t)__builtin_ctzll(w));
    }
    int64_t j;
    if (lvl + 1 < hb->nlevels) {
        /* The level above knows which words after i are non-zero. */
        j = next_set(hb, lvl + 1, i + 1);
    } else {
        for (j = (int64_t)i + 1; (uint64_t)j < hb->nwords[lvl] && !words[j]; j++) {
        }
        j = (uint64_t)j < hb->nwords[lvl] ? j : -1;
    }
    return j < 0 ? -1 : (int64_t)((uint64_t)j * 64 + (uint64_t)__builtin_ctzll(words[j]));
}

/* The first clear bit of level 0 in [pos, end), or -1. */
static int64_t next_clear(const vd_hbitmap *hb, uint64_t pos, uint64_t end)
{
    const uint64_t *words = hb->words[0];
    for (uint64_t i = pos / 64; pos < end && i <= (end - 1) / 64; i++) {
        uint64_t w = ~words[i] & word_mask(i, pos, end);
        if (w) {
            return (int64_t)(i * 64 + (uint64_t)__builtin_ctzll(w));
        }
    }
    return -1;
}

int64_t vd_hbitmap_next_dirty(const vd_hbitmap *hb, uint64_t off, uint64_t end)
{
    uint64_t a, b;
    if (end <= off || !granules(hb, off, end - off, &a, &b)) {
        return -1;
    }
    int64_t g = next_set(hb, 0, a);
    if (g < 0 || (uint64_t)g >= b) {
        return -1;
    }
    uint64_t byte = (uint64_t)g << hb->shift;
    return (int64_t)(byte > off ? byte : off);
}

int64_t vd_hbitmap_next_zero(const vd_hbitmap *hb, uint64_t off, uint64_t end)
{
    uint64_t a, b;
    if (end <= off || !granules(hb, off, end - off, &a, &b)) {
        return -1;
    }
    int64_t g = next_clear(hb, a, b);
    if (g < 0) {
        return -1;
    }
    uint64_t byte = (uint64_t)g << hb->shift;
    return (int64_t)(byte > off ? byte : off);
}

bool vd_hbitmap_next_dirty_area(const vd_hbitmap *hb, uint64_t off, uint64_t end,
                                uint64_t *start, uint64_t *len)
{
    end = end < hb->size ? end : hb->size;
    int64_t s = vd_hbitmap_next_dirty(hb, off, end);
    if (s < 0) {
        return false;
    }
    int64_t z = vd_hbitmap_next_zero(hb, (uint64_t)s, end);
    uint64_t e = z < 0 ? end : (uint64_t)z;
    *start = (uint64_t)s;
    *len = e - (uint64_t)s;
    return true;
}

bool vd_hbitmap_merge(vd_hbitmap *dst, const vd_hbitmap *src)
{
    if (dst->size != src->size) {
        return false;
    }
    if (dst->shift == src->shift) {
        for (uint64_t i = 0; i < src->nwords[0]; i++) {
            uint64_t w = src->words[0][i];
            if (w) {
                /* Each run of set bits in the word, as ranges of bits_set. */
                while (w) {
                    uint64_t lo = (uint64_t)__builtin_ctzll(w);
                    uint64_t rest = w >> lo;
                    uint64_t n = ~rest ? (uint64_t)__builtin_ctzll(~rest) : 64 - lo;
                    bits_set(dst, i * 64 + lo, i * 64 + lo + n);
                    w = lo + n >= 64 ? 0 : w & ~(((1ull << n) - 1) << lo);
                }
            }
        }
        return true;
    }
    uint64_t off = 0, start, len;
    while (vd_hbitmap_next_dirty_area(src, off, src->size, &start, &len)) {
        vd_hbitmap_set(dst, start, len);
        off = start + len;
    }
    return true;
}

void vd_hbitmap_serialize(const vd_hbitmap *hb, uint64_t first, uint64_t count,
                          uint8_t *buf)
{
    memset(buf, 0, (size_t)((count + 7) / 8));
    for (uint64_t i = 0; i < count && first + i < hb->nbits; i++) {
        uint64_t g = first + i;
        if (g % 64 == 0 && i % 8 == 0 && i + 64 <= count && g + 64 <= hb->nbits) {
            /* A whole word, byte by byte in the least-significant-first order. */
            uint64_t w = hb->words[0][g / 64];
            for (unsigned k = 0; k < 8; k++) {
                buf[(i + 8 * k) / 8] |= (uint8_t)(w >> (8 * k));
            }
            i += 63;
            continue;
        }
        if ((hb->words[0][g / 64] >> (g % 64)) & 1) {
            buf[i / 8] |= (uint8_t)(1u << (i % 8));
        }
    }
}

void vd_hbitmap_deserialize(vd_hbitmap *hb, uint64_t first, uint64_t count,
                            const uint8_t *buf)
{
    uint64_t end = first + count < hb->nbits ? first + count : hb->nbits;
    uint64_t run = first;
    bool on = first < end && ((buf[0] & 1) != 0);
    /* Runs of equal bits become one set or reset each. */
    for (uint64_t g = first; g <= end; g++) {
        bool bit = g < end && ((buf[(g - first) / 8] >> ((g - first) % 8)) & 1);
        if (g == end || bit != on) {
            if (on) {
                bits_set(hb, run, g);
            } else {
                bits_reset(hb, run, g);
            }
            run = g;
            on = bit;
        }
    }
}

vd_hbitmap *vd_hbitmap_resized(const vd_hbitmap *hb, uint64_t size)
{
    vd_hbitmap *n = vd_hbitmap_new(size, 1ull << hb->shift);
    if (!n) {
        return NULL;
    }
    /* Whole words first, then the bits of the last partial word. */
    uint64_t keep = hb->nbits < n->nbits ? hb->nbits : n->nbits;
    for (uint64_t w = 0; w < keep / 64; w++) {
        if (hb->words[0][w]) {
            bits_set_word(n, w, hb->words[0][w]);
        }
    }
    if (keep % 64) {
        uint64_t w = keep / 64;
        bits_set_word(n, w, hb->words[0][w] & ((1ull << (keep % 64)) - 1));
    }
    return n;
}
