/* A hierarchical bitmap over a byte range: one bit per granule (a power of two from 512 B
 * to 2 GiB), with summary levels above it (a bit per non-zero word below), so finding the
 * next dirty or clean granule skips empty stretches 64 words at a time and clearing a
 * range touches only the words in it. What dirty bitmaps are built on. Not thread-safe: the
 * owner locks. */
#ifndef VD_HBITMAP_H
#define VD_HBITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct vd_hbitmap vd_hbitmap;

/* A clean bitmap for size bytes; NULL if granularity is not a power of two in
 * [512, 2 GiB] or the memory is not there. */
vd_hbitmap *vd_hbitmap_new(uint64_t size, uint64_t granularity);
void vd_hbitmap_free(vd_hbitmap *hb);

uint64_t vd_hbitmap_size(const vd_hbitmap *hb);
uint64_t vd_hbitmap_granularity(const vd_hbitmap *hb);

/* Marks (set) or clears (reset) every granule that [off, off+len) touches; the range is
 * clipped to the size. */
void vd_hbitmap_set(vd_hbitmap *hb, uint64_t off, uint64_t len);
void vd_hbitmap_reset(vd_hbitmap *hb, uint64_t off, uint64_t len);
void vd_hbitmap_reset_all(vd_hbitmap *hb);
bool vd_hbitmap_get(const vd_hbitmap *hb, uint64_t off);

/* Dirty bytes: dirty granules times the granularity, a last granule that reaches past the
 * end counted whole (QEMU's "count"). */
uint64_t vd_hbitmap_count(const vd_hbitmap *hb);

/* The first dirty (next_dirty) or clean (next_zero) byte offset at a granule boundary in
 * [off, end), rounded to granules, or -1 if there is none. */
int64_t vd_hbitmap_next_dirty(const vd_hbitmap *hb, uint64_t off, uint64_t end);
int64_t vd_hbitmap_next_zero(const vd_hbitmap *hb, uint64_t off, uint64_t end);
/* The first dirty run in [off, end): its start and length (clipped to end and to the size);
 * false if there is none. */
bool vd_hbitmap_next_dirty_area(const vd_hbitmap *hb, uint64_t off, uint64_t end,
                                uint64_t *start, uint64_t *len);

/* dst |= src. The sizes must be equal (false otherwise); granularities may differ (each
 * dirty run of src marks the granules of dst it touches). */
bool vd_hbitmap_merge(vd_hbitmap *dst, const vd_hbitmap *src);

/* The granules [first, first+count) as bytes, bit i of byte i/8 (least significant first)
 * for granule first+i: the layout of qcow2's bitmap data. count is a multiple of 8 unless
 * the range ends at the last granule; buf holds (count+7)/8 bytes. */
void vd_hbitmap_serialize(const vd_hbitmap *hb, uint64_t first, uint64_t count,
                          uint8_t *buf);
/* The reverse: sets and clears granules [first, first+count) from buf. */
void vd_hbitmap_deserialize(vd_hbitmap *hb, uint64_t first, uint64_t count,
                            const uint8_t *buf);
uint64_t vd_hbitmap_granules(const vd_hbitmap *hb);

/* A new bitmap of the same granularity over size bytes, with hb's bits where both have
 * granules (a copy when size is hb's; the bits of a grown part are clean); NULL without
 * memory. */
vd_hbitmap *vd_hbitmap_resized(const vd_hbitmap *hb, uint64_t size);

#endif
