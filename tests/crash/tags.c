/* Sector tags: a write of the harness fills each 512-byte sector with a small header (magic,
 * write id, sector number) and a byte pattern made from both, so that reading a sector back
 * tells which write put it there and whether it is in the right place. The pattern repeats,
 * so tagged clusters compress; a write id with TAG_RANDOM set fills with pseudo-random bytes
 * made from both instead, which do not. */
#include <string.h>

#include "crash.h"

#define TAG_MAGIC 0x56444357u /* "VDCW" */

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint8_t fill_byte(uint32_t id, uint64_t sector_no)
{
    return (uint8_t)(id * 31u + (uint32_t)sector_no * 7u + 1u);
}

/* The body of a TAG_RANDOM sector: splitmix64 seeded by the id and the sector number. */
static void random_body(uint8_t *body, uint32_t id, uint64_t sector_no)
{
    rng r = {((uint64_t)id << 32) ^ sector_no};
    for (unsigned i = 0; i < SECTOR - 16; i += 8) {
        uint64_t x = rng_next(&r);
        memcpy(body + i, &x, 8);
    }
}

void tag_fill(uint8_t *sector, uint32_t write_id, uint64_t sector_no)
{
    put32(sector, TAG_MAGIC);
    put32(sector + 4, write_id);
    memcpy(sector + 8, &sector_no, 8);
    if (write_id & TAG_RANDOM) {
        random_body(sector + 16, write_id, sector_no);
    } else {
        memset(sector + 16, fill_byte(write_id, sector_no), SECTOR - 16);
    }
}

uint32_t tag_decode(const uint8_t *sector, uint64_t sector_no)
{
    static const uint8_t zero[SECTOR];
    if (!memcmp(sector, zero, SECTOR)) {
        return 0;
    }
    uint64_t no;
    memcpy(&no, sector + 8, 8);
    uint32_t id = get32(sector + 4);
    if (get32(sector) != TAG_MAGIC || no != sector_no || id == 0 || id == TAG_GARBAGE) {
        return TAG_GARBAGE;
    }
    if (id & TAG_RANDOM) {
        uint8_t body[SECTOR - 16];
        random_body(body, id, sector_no);
        return memcmp(sector + 16, body, sizeof(body)) ? TAG_GARBAGE : id;
    }
    uint8_t f = fill_byte(id, sector_no);
    for (unsigned i = 16; i < SECTOR; i++) {
        if (sector[i] != f) {
            return TAG_GARBAGE;
        }
    }
    return id;
}

uint32_t tag_id(const uint8_t *sector)
{
    return get32(sector) == TAG_MAGIC ? get32(sector + 4) : 0;
}

uint64_t rng_next(rng *r)
{
    /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rng_below(rng *r, uint64_t n)
{
    return rng_next(r) % n;
}
