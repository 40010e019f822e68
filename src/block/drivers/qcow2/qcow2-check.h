/* Private to the qcow2 check (qcow2-check.c: counting and comparing; qcow2-check-repair.c:
 * on-disk refcounts, rebuilding, COPIED flags, the snapshot table). Not for other users. */
#ifndef VD_QCOW2_CHECK_H
#define VD_QCOW2_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"
#include "block/drivers/qcow2/qcow2-format.h"

#define SNAPSHOT_HEADER_LEN 40
#define SNAPSHOT_EXTRA_KNOWN 24
/* Longest snapshot table read in one go: QEMU's 64 MiB limit plus one maximal entry. */
#define SNAPSHOT_READ_MAX (QCOW2_MAX_SNAPSHOT_TABLE_BYTES + 256u * 1024)
#define BITMAP_DIR_ENTRY_LEN 24
#define BITMAP_MAX_DIR_SIZE (1024u * 65535u)
#define BITMAP_MAX_TABLE_SIZE 0x8000000u
#define BITMAP_MAX_PHYS_SIZE 0x20000000ull
#define BITMAP_TABLE_RESERVED 0xff000000000001feull
/* A repair grows the file to reach a refblock past its end, as QEMU does, but only one
 * within this many clusters of the used area (the file, or the highest cluster the
 * metadata references if that is further). One further out is a corrupt reftable entry
 * that the rebuild replaces, so neither the file nor the in-memory refcount table ever
 * grows with an offset read from the image. */
#define REPAIR_GROW_CLUSTERS 8
/* L1 and L2 entries one pass may visit. QEMU has no limit, but tables that point at the
 * same L2 table over and over (or snapshots sharing one L1) make the work explode without
 * making the file bigger; a real image needs far less than this. */
#define WORK_MAX (1ull << 35)

enum { CHECK_FRAG_INFO = 1 };

/* Where the check's messages go. A hostile image can produce billions of them, so none
 * is formatted once nobody will read it. */
typedef struct chk_sink {
    bool (*fn)(void *opaque, const char *line);  /* NULL: nobody reads them */
    void *opaque;
    const char *program_name;  /* starts the reports (qcow2_chk_report), or NULL */
    bool refused;            /* fn returned false: count the rest, don't format them */
    uint64_t dropped;
} chk_sink;

typedef struct counts {
    int64_t corruptions, leaks, check_errors, corruptions_fixed, leaks_fixed;
} counts;

typedef struct frag {
    int64_t total, allocated, fragmented, compressed;
} frag;

/* State of one check pass: the decoded image plus the in-memory refcount table (IMRT). */
typedef struct chk {
    vd_node *file;
    const char *what;
    chk_sink *log;
    unsigned fix;
    uint64_t file_len;
    bool signalled;          /* a corruption was reported (QEMU reports only the first) */
    bool dead;               /* it was fatal: QEMU drops the driver (bs->drv = NULL) */

    qcow2_header h;
    uint32_t cbits;
    uint64_t cs;
    uint32_t rorder;
    uint64_t rmax;
    uint32_t rb_bits;        /* log2 of the entries in one refblock */
    bool extl2;
    uint64_t l2e_bytes;      /* 8, or 16 with extended L2 entries */
    uint64_t l2_entries;
    uint32_t csize_shift;
    uint64_t csize_mask, coff_mask;

    uint64_t *l1;
    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t *rt;
    uint64_t rt_entries;
    uint64_t rt_offset;
    uint64_t rt_drop_lo, rt_drop_hi;  /* entries cleared in memory only: [lo, hi), or hi 0 */
    qcow2_snapshot *sn;
    uint32_t nb_sn;
    uint64_t sn_offset, sn_size;
    uint32_t nb_bitmaps;
    uint64_t bm_dir_offset, bm_dir_size;

    uint8_t *imrt;
    int64_t imrt_clusters;

    uint8_t *rb;             /* one cached on-disk refblock */
    uint64_t rb_offset;
    bool rb_valid;
    uint64_t rb_safe;        /* a refblock found not to overlap other metadata, or 0 */
    uint8_t *l2;             /* scratch for one L2 table */

    counts c;
    frag f;
    int64_t image_end_offset;
    uint64_t work;           /* L1 and L2 entries visited, bounded by WORK_MAX */
} chk;

enum ctype { CT_UNALLOCATED, CT_NORMAL, CT_COMPRESSED, CT_ZERO_PLAIN, CT_ZERO_ALLOC };

/* qcow2-check.c */
void qcow2_chk_log(chk *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A line qemu-img prints through error_report(), which starts it with the program's name. */
void qcow2_chk_report(chk *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qcow2_chk_corruption(chk *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t qcow2_chk_clusters(const chk *k, uint64_t size);
/* Bytes of the file from off to its end; what lies beyond reads as zeros. */
uint64_t qcow2_chk_in_file(const chk *k, uint64_t off);
int qcow2_chk_read(chk *k, void *buf, uint64_t len, uint64_t off);
int qcow2_chk_read_l2(chk *k, uint64_t off);
int qcow2_chk_write(chk *k, const void *buf, uint64_t len, uint64_t off);
/* Metadata kinds a write may be allowed to overlap (QEMU's `ign` of the overlap check). */
enum { OL_ACTIVE_L1 = 1, OL_ACTIVE_L2 = 2, OL_REFBLOCK = 4, OL_REFTABLE = 8 };
const char *qcow2_chk_overlap(chk *k, unsigned ign, uint64_t off, uint64_t len);
uint64_t qcow2_chk_imrt_bytes(const chk *k, uint64_t clusters);
int qcow2_chk_imrt_resize(chk *k, int64_t clusters);
uint64_t qcow2_chk_imrt_get(const chk *k, int64_t cluster);
uint64_t qcow2_chk_l2_entry(const chk *k, const uint8_t *tbl, uint64_t i);
enum ctype qcow2_chk_type(const chk *k, uint64_t e);

/* qcow2-check-repair.c */
int qcow2_chk_refblock_of(chk *k, uint64_t cluster, uint64_t *rb_off);
int qcow2_chk_get_refcount(chk *k, uint64_t cluster, uint64_t *rc);
int qcow2_chk_set_refcount(chk *k, uint64_t cluster, uint64_t value);
void qcow2_chk_discard(chk *k, uint64_t cluster);
void qcow2_chk_drop_refblock(chk *k, uint64_t idx);
int qcow2_chk_rebuild(chk *k);
int qcow2_chk_oflag_copied(chk *k);
int qcow2_chk_read_snapshots(chk *k, counts *sr);
int qcow2_chk_write_snapshots(chk *k);
int qcow2_chk_mark_clean(chk *k);

#endif
