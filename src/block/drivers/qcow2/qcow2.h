/* Private state of the qcow2 runtime driver, shared by qcow2.c (open/close, control ops),
 * qcow2-cache.c (metadata cache), qcow2-refcount.c (refcounts, allocator, deferred frees),
 * qcow2-cluster.c (L1/L2 mapping and updates), qcow2-io.c (the data paths) and
 * qcow2-compress.c (compressed writes, the byte allocator, batched compressed reads). */
#ifndef VD_QCOW2_H
#define VD_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block/block.h"
#include "block/drivers/qcow2/qcow2-format.h"

/* Metadata is cached in slices of this size (or of the cluster size when smaller): a miss
 * reads 4 KiB, not a whole 2 MiB cluster. */
#define QCOW2_SLICE_MAX 4096
/* Default cache bounds: 32 MiB of L2 slices covers 256 GiB of guest space with 64 KiB
 * clusters; refcount slices are needed far less. Buffers are allocated on demand. */
#define QCOW2_L2_CACHE_BYTES (32u << 20)
#define QCOW2_RB_CACHE_BYTES (4u << 20)
/* Frees waiting for a metadata flush before a flush is forced, so discards cannot grow
 * the file without bound. */
#define QCOW2_MAX_UNSYNCED_FREES 4096
/* Largest guest range one allocating write segment covers (at least one cluster). */
#define QCOW2_MAX_ALLOC_BYTES (8u << 20)
/* COW head/data/tail are combined into one host write up to this size. */
#define QCOW2_MAX_BOUNCE_BYTES (1u << 20)

typedef struct qcow2_state qcow2_state;

/* ---- metadata cache (qcow2-cache.c) ------------------------------------------------ */

typedef struct qcow2_slice {
    uint64_t offset;             /* host offset of the slice; UINT64_MAX when unused */
    uint8_t *data;               /* slice_size bytes, on-disk (big-endian) layout */
    unsigned pins;               /* callers holding it: not evictable while > 0 */
    bool dirty;
    bool used;                   /* looked up since the last clean (cache-clean-interval) */
    struct qcow2_slice *lru_prev, *lru_next;  /* most recently used at the head */
    struct qcow2_slice *hash_next;
} qcow2_slice;

typedef struct qcow2_cache {
    const char *name;            /* "L2" or "refcount", for messages */
    bool is_l2;                  /* dirty L2 slices depend on durable refcounts */
    uint32_t slice_size;
    size_t max_slices;
    size_t nb_slices;
    size_t nb_dirty;
    qcow2_slice *lru_head, *lru_tail;
    qcow2_slice **buckets;
    size_t nb_buckets;           /* power of two */
    /* cache-clean-interval: every interval, slices nobody looked up since the last clean
     * (and not dirty or pinned) are freed, as QEMU frees idle cache memory. 0: never. */
    uint64_t clean_interval_ns;
    uint64_t next_clean_ns;
} qcow2_cache;

qcow2_cache *qcow2_cache_new(const char *name, bool is_l2, uint32_t slice_size,
                             size_t max_bytes);
void qcow2_cache_free(qcow2_cache *c);
/* Returns the slice at host offset `offset` (slice aligned), reading it on a miss. The
 * slice is pinned until qcow2_cache_put(). */
int qcow2_cache_get(qcow2_state *s, qcow2_cache *c, uint64_t offset, qcow2_slice **out);
/* As qcow2_cache_get, but for a freshly allocated table: the slice is zero-filled and
 * marked dirty without reading the file. */
int qcow2_cache_get_empty(qcow2_state *s, qcow2_cache *c, uint64_t offset,
                          qcow2_slice **out);
void qcow2_cache_put(qcow2_cache *c, qcow2_slice *sl);
void qcow2_cache_mark_dirty(qcow2_cache *c, qcow2_slice *sl);
/* Writes every dirty slice (no sync). L2 slices first make refcounts durable. */
int qcow2_cache_writeback(qcow2_state *s, qcow2_cache *c);
/* Forgets the slices of [offset, offset+len) without writing them (freed clusters). */
void qcow2_cache_discard_range(qcow2_cache *c, uint64_t offset, uint64_t len);
/* Forgets everything; the caller has written back dirty slices (or gives them up). */
void qcow2_cache_drop_all(qcow2_cache *c);
/* Sets the cache-clean-interval (seconds; 0: never clean). */
void qcow2_cache_set_clean_interval(qcow2_cache *c, uint64_t seconds);

/* ---- runtime state ------------------------------------------------------------------ */

/* A data I/O in flight. Frees of host clusters wait until every I/O that started before
 * the free was queued has finished, so a read never sees a cluster reused under it. */
typedef struct qcow2_io_rec {
    uint64_t seq;
    struct qcow2_io_rec *prev, *next;
} qcow2_io_rec;

/* Guest clusters whose L2 entries a request is about to change (allocation, COW, zeroing
 * or discard). Overlapping requests wait for it on qcow2_state.cond. */
typedef struct qcow2_alloc_rec {
    uint64_t first;              /* guest cluster index */
    uint64_t count;
    struct qcow2_alloc_rec *prev, *next;
} qcow2_alloc_rec;

typedef struct qcow2_free {
    uint64_t offset;             /* host byte range whose clusters lose one reference */
    uint64_t len;
    uint64_t seq;                /* io sequence number when queued */
    bool punch;                  /* punch a hole when the refcount reaches 0 */
    bool synced;                 /* the metadata dropping the reference is durable */
} qcow2_free;

typedef struct qcow2_range {
    uint64_t offset;
    uint64_t len;
} qcow2_range;

/* Subcluster (or, without extended L2, cluster) types, in QEMU's terms. */
typedef enum qcow2_sc_type {
    QCOW2_SC_UNALLOC_PLAIN,      /* no host cluster: backing file or zeros */
    QCOW2_SC_UNALLOC_ALLOC,      /* extended L2: host cluster set, subcluster unallocated */
    QCOW2_SC_ZERO_PLAIN,
    QCOW2_SC_ZERO_ALLOC,
    QCOW2_SC_NORMAL,
    QCOW2_SC_COMPRESSED,
    QCOW2_SC_INVALID,
} qcow2_sc_type;

/* A persistent bitmap as the image's directory holds it (qcow2-bitmaps.c). */
typedef struct qcow2_bm {
    char *name;
    uint64_t table_off;
    uint32_t table_size;
    uint32_t flags;              /* in use 1, auto 2 */
    uint8_t gran_bits;
} qcow2_bm;

struct qcow2_state {
    vd_node *node;
    vd_node *file;
    const char *name;            /* node->filename, for messages */
    qcow2_header h;              /* current header; the source of every rewrite */
    bool writable;

    /* Geometry */
    uint32_t cluster_bits;
    uint64_t cluster_size;
    bool extl2;
    uint32_t l2e_size;           /* 8, or 16 with extended L2 */
    uint32_t l2_bits;            /* log2(entries per L2 table) */
    uint64_t l2_entries;
    uint32_t sc_bits;            /* log2(subcluster size); = cluster_bits without extl2 */
    uint64_t sc_size;
    uint32_t slice_size;
    uint32_t l2_slice_entries;
    uint32_t refcount_order;
    uint32_t rb_bits;            /* log2(entries per refcount block) */
    uint64_t refcount_max;

    /* Active L1 table, host-endian; written lazily in 4 KiB chunks at flush. */
    uint64_t *l1;
    uint32_t l1_size;
    uint64_t l1_offset;
    uint8_t *l1_dirty;           /* one flag per L1 chunk */
    size_t l1_nb_dirty;

    /* Refcount table, host-endian; always written through. */
    uint64_t *reftable;
    uint64_t reftable_entries;
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    uint64_t *refblocks;         /* sorted refblock offsets, for the overlap check */
    size_t nb_refblocks;

    /* Snapshots (decoded only to validate them and to protect their metadata). */
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_len;
    qcow2_range *snap_l1;        /* inactive L1 tables */
    uint32_t nb_snap_l1;
    uint32_t min_snap_extra;     /* smallest extra_data_size of a snapshot */

    /* Persistent bitmaps: the directory as the image holds it now. */
    qcow2_bm *bms;
    uint32_t nb_bms;
    uint64_t bm_dir_off, bm_dir_size;

    qcow2_cache *l2_cache;
    qcow2_cache *rb_cache;
    bool rb_unsynced;            /* refcount slices or linked data written since the last
                                  * sync: L2 slices wait for one (qcow2-cache.c) */
    /* Test only (the engine's break_write_ordering): L2 slices go out before the refcounts they
     * depend on, with no sync between, so that tests/crash/ can show it detects that. */
    bool break_ordering;
    /* Open options (qcow2-options.c): lazy refcounts for this session (the header's bit
     * unless lazy-refcounts says otherwise) and the metadata cache sizes. */
    bool lazy_refcounts;
    uint64_t l2_cache_bytes, rb_cache_bytes;
    uint8_t *own_zeros;              /* qcow2_zeros() without an engine */
    uint64_t cache_clean_interval;   /* seconds, 0: never */
    unsigned overlap_mask;           /* QCOW2_OL_* checked before guest data writes */
    /* pass-discard-request/-snapshot/-other: clusters freed by a guest discard, by a
     * snapshot deletion, or otherwise (overwrites, COW) become holes in the file. */
    bool pass_discard_request, pass_discard_snapshot, pass_discard_other;

    /* Allocation */
    uint64_t free_hint;          /* every cluster below it is in use */
    /* Compressed streams are packed back to back: the next free byte inside the last,
     * partly filled host cluster they went to (0 = start a new cluster). */
    uint64_t free_byte_offset;
    uint64_t zero_from;          /* the file reads as zeros from here (never written) */
    bool headroom_checked;       /* refcount_headroom() ran since the last open or flush */

    /* Concurrency: one metadata lock; data I/O runs outside it. */
    pthread_mutex_t lock;
    pthread_cond_t cond;         /* alloc records removed, I/O finished, drain ended */
    qcow2_io_rec *io_head, *io_tail;
    uint64_t io_seq;
    qcow2_alloc_rec *allocs;
    unsigned draining;
    pthread_t drain_owner;       /* the control op that drains; its own I/O passes */

    qcow2_free *frees;
    size_t nb_frees, cap_frees;
    size_t nb_unsynced_frees;

    bool broken;                 /* corruption found: no more writes */
    bool loaded;                 /* L1, reftable and caches are in memory */
    bool check_only;             /* VD_OPEN_CHECK: header only until a repair reloads */
    bool dirty_on_disk;          /* the dirty bit is set in the file */
    bool dirty_ours;             /* and we set it (lazy refcounts): clear it on close */
    bool prealloc_checked;
    bool metadata_prealloc;

};

/* ---- qcow2.c -------------------------------------------------------------------------- */

/* Rewrites the whole of cluster 0 from s->h and syncs. */
int qcow2_write_header(qcow2_state *s);
/* Writes the flags at offset 72 in place (8 bytes) and syncs. */
int qcow2_write_incompat(qcow2_state *s, uint64_t bits);
/* Sets the dirty bit before the first allocating write of a lazy-refcounts image. */
int qcow2_mark_dirty_locked(qcow2_state *s);
/* Marks the image corrupt (header rewrite), makes it read-only for us, and leaves the
 * message for the I/O error. Returns -EIO. */
int qcow2_signal_corruption(qcow2_state *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The same for a host range at fault (the event reports its offset and size). */
int qcow2_signal_corruption_at(qcow2_state *s, uint64_t offset, uint64_t size,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Writes back all dirty metadata in dependency order, syncs, and applies frees. */
int qcow2_flush_locked(qcow2_state *s);
int qcow2_sync(qcow2_state *s);
/* Waits until no data I/O and no allocation is in flight and holds new requests off
 * until qcow2_undrain_locked(). */
void qcow2_drain_locked(qcow2_state *s);
void qcow2_undrain_locked(qcow2_state *s);
const uint8_t *qcow2_zeros(qcow2_state *s);
/* Flushes everything and clears the dirty bit; refuses (-EBUSY) a dirty bit this open did
 * not set, whose refcounts may be stale. */
int qcow2_mark_clean_locked(qcow2_state *s);
/* Writes a new backing file name and format (NULL: none) to the header. */
int qcow2_set_backing_locked(qcow2_state *s, const char *backing, const char *fmt,
                             vd_error **errp);

/* ---- qcow2-amend.c -------------------------------------------------------------------- */

/* The driver's amend op: applies the options of `amend -o` to an image opened read/write;
 * options it does not know or cannot change are refused before anything is written. */
int qcow2_amend(vd_node *node, const vd_opts *opts, vd_error **errp);

/* qcow2-bitmaps.c: persistent bitmaps. load (at open) makes the image's bitmaps the
 * node's and, read-write, flags them in use; store (at close, image writable) writes the
 * node's persistent bitmaps back, no longer in use; info lists the directory as the image
 * has it. */
int qcow2_bitmaps_load(qcow2_state *s, vd_error **errp);
int qcow2_bitmaps_store(qcow2_state *s);
int qcow2_bitmaps_mark_in_use(qcow2_state *s);
void qcow2_bitmaps_free(qcow2_state *s);
int qcow2_bitmaps_info(qcow2_state *s, vd_image_bitmap **out, size_t *nb);
/* QEMU's refusals of a resize: a stored bitmap not loaded, busy or inconsistent. */
int qcow2_bitmaps_truncate_check(qcow2_state *s, vd_error **errp);
int qcow2_bitmap_can_store(vd_node *node, const char *name, uint64_t granularity,
                           vd_error **errp);
int qcow2_bitmap_remove_stored(vd_node *node, const char *name, vd_error **errp);

/* ---- qcow2-refcount.c ---------------------------------------------------------------- */

int qcow2_refcount_load(qcow2_state *s, vd_error **errp);
int qcow2_get_refcount(qcow2_state *s, uint64_t cluster, uint64_t *rc);
/* Adds addend to the refcount of every cluster touched by [offset, offset+len). Clusters
 * reaching 0 become allocatable at once: callers use it only when no reference to them is
 * left on disk (or ever was). punch: punch holes for clusters that reach 0. */
/* Holes to punch once a walk that still reads the freed clusters is over. */
typedef struct qcow2_punch_later {
    qcow2_range *r;
    size_t n, cap;
} qcow2_punch_later;
/* qcow2_update_refcount whose frees (when later is given) are collected into later;
 * qcow2_punch_later_flush punches them and empties the list. */
int qcow2_update_refcount_later(qcow2_state *s, uint64_t offset, uint64_t len,
                                int64_t addend, qcow2_punch_later *later);
void qcow2_punch_later_flush(qcow2_state *s, qcow2_punch_later *later);
int qcow2_update_refcount(qcow2_state *s, uint64_t offset, uint64_t len, int64_t addend,
                          bool punch);
/* Allocates n contiguous clusters (refcount 1), first fit. *fresh tells whether they lie
 * past everything ever written, so they read as zeros. */
int qcow2_alloc_clusters(qcow2_state *s, uint64_t n, uint64_t *offset, bool *fresh);
/* The same, naming what the clusters are for ("L2 table") in the corruption message when
 * the refcounts offer offset 0, as QEMU words it. */
int qcow2_alloc_clusters_for(qcow2_state *s, uint64_t n, uint64_t *offset, bool *fresh,
                             const char *what);
/* Queues one reference drop for after the metadata that no longer references the range
 * is durable and the I/O that might still use it has finished. */
void qcow2_free_deferred(qcow2_state *s, uint64_t offset, uint64_t len, bool punch);
void qcow2_frees_mark_synced(qcow2_state *s);
/* Applies the frees whose conditions are met; returns true if any was applied. */
bool qcow2_frees_apply(qcow2_state *s);
/* Unhooks and frees the refcount blocks that count nothing but themselves (after a
 * shrink, as QEMU does). The refcount cache must be clean. */
int qcow2_drop_empty_refblocks_locked(qcow2_state *s);
/* Which metadata structure [offset, offset+len) overlaps, or NULL. */
/* Metadata kinds, as QEMU's overlap-check names them (qcow2-options.c maps its modes). */
enum {
    QCOW2_OL_MAIN_HEADER = 1 << 0,
    QCOW2_OL_ACTIVE_L1 = 1 << 1,
    QCOW2_OL_ACTIVE_L2 = 1 << 2,
    QCOW2_OL_REFCOUNT_TABLE = 1 << 3,
    QCOW2_OL_REFCOUNT_BLOCK = 1 << 4,
    QCOW2_OL_SNAPSHOT_TABLE = 1 << 5,
    QCOW2_OL_INACTIVE_L1 = 1 << 6,
    QCOW2_OL_INACTIVE_L2 = 1 << 7,
    QCOW2_OL_BITMAP_DIRECTORY = 1 << 8,
    QCOW2_OL_ALL = (1 << 9) - 1,
};
/* The first metadata kind in `mask` that [offset, offset+len) overlaps (whole clusters),
 * or NULL. vdisk tracks the header, the L1 tables, the refcount structures and the snapshot
 * table; L2 tables and the bitmap directory are not looked for. */
const char *qcow2_metadata_overlap_mask(qcow2_state *s, uint64_t offset, uint64_t len,
                                        unsigned mask);
/* The same for a guest data write, with the node's overlap-check setting. */
const char *qcow2_metadata_overlap(qcow2_state *s, uint64_t offset, uint64_t len);
/* Highest cluster index with a non-zero refcount, or -1. */
int64_t qcow2_last_used_cluster(qcow2_state *s);
void qcow2_refblocks_free(qcow2_state *s);

/* ---- qcow2-cluster.c ------------------------------------------------------------------ */

static inline uint64_t qcow2_l2_get(const qcow2_state *s, const uint8_t *d, unsigned i)
{
    return vd_be64(d + (size_t)i * s->l2e_size);
}
static inline uint64_t qcow2_l2_get_bitmap(const qcow2_state *s, const uint8_t *d, unsigned i)
{
    return s->extl2 ? vd_be64(d + (size_t)i * 16 + 8) : 0;
}
static inline void qcow2_l2_set(const qcow2_state *s, uint8_t *d, unsigned i, uint64_t e,
                                uint64_t bitmap)
{
    vd_put_be64(d + (size_t)i * s->l2e_size, e);
    if (s->extl2) {
        vd_put_be64(d + (size_t)i * 16 + 8, bitmap);
    }
}

/* Type of subcluster sc of an L2 entry (sc is ignored without extended L2). */
qcow2_sc_type qcow2_sc_type_of(const qcow2_state *s, uint64_t e, uint64_t bitmap, unsigned sc);
/* Checks QEMU makes when it uses an entry of guest cluster gci; marks the image corrupt
 * and returns -EIO on a violation. */
int qcow2_check_entry(qcow2_state *s, uint64_t e, uint64_t bitmap, uint64_t gci);
/* Host cluster offset of a non-compressed entry (0 if none). */
static inline uint64_t qcow2_entry_host(uint64_t e)
{
    return (e & QCOW2_OFLAG_COMPRESSED) ? 0 : (e & QCOW2_L2E_OFFSET_MASK);
}

/* Whether an entry holds a reference to host data (normal, preallocated or compressed). */
static inline bool qcow2_entry_allocated(uint64_t e)
{
    return (e & QCOW2_OFLAG_COMPRESSED) || (e & QCOW2_L2E_OFFSET_MASK);
}

/* The L2 slice holding guest cluster gci. *sl = NULL when there is no L2 table. *idx is
 * the entry inside the slice, *avail the entries from it to the end of the slice. With
 * for_write, the L2 table is allocated or copied (COW) first so that it can be changed. */
int qcow2_l2_slice(qcow2_state *s, uint64_t gci, bool for_write, qcow2_slice **sl,
                   unsigned *idx, unsigned *avail);

/* A run of guest bytes with one type (and, when there is a host offset, contiguous). */
typedef struct qcow2_run {
    qcow2_sc_type type;
    uint64_t bytes;
    uint64_t host;               /* host offset of the first byte, when it has one */
    uint64_t l2e;                /* raw L2 entry of the first cluster */
} qcow2_run;
int qcow2_map_locked(qcow2_state *s, uint64_t off, uint64_t max, qcow2_run *r);

/* Reference drop for an L2 entry being replaced (normal, preallocated or compressed). */
void qcow2_free_entry(qcow2_state *s, uint64_t e, bool punch);

/* Discard [off, off+len) (whole clusters; guest offsets cluster-aligned except at the
 * end of the disk). full: entries become unallocated (fall through to the backing file),
 * else they read as zeros where QEMU makes them so. */
int qcow2_discard_locked(qcow2_state *s, uint64_t off, uint64_t len, bool full);
/* Zero [off, off+len), subcluster-aligned except at the end of the disk, via L2 flags. */
int qcow2_zeroize_locked(qcow2_state *s, uint64_t off, uint64_t len, unsigned flags);
/* Whether every byte of [off, off+len) reads as zeros from this layer's metadata. */
int qcow2_reads_zero_locked(qcow2_state *s, uint64_t off, uint64_t len, bool *zero);

/* Grows the active L1 table to min_size entries (exact: a resize), or past it by QEMU's
 * steps of half again (a write beyond the table: VM state). */
int qcow2_grow_l1_locked(qcow2_state *s, uint64_t min_size, bool exact);
/* Writes l1 (size entries, host-endian) to fresh clusters, switches the header to it with
 * one synced write and frees the old table's clusters (not what it references). Takes l1
 * on success; on failure the caller keeps it and nothing changed but leaked clusters. */
int qcow2_l1_install_locked(qcow2_state *s, uint64_t *l1, uint32_t size);
int qcow2_write_l1_dirty(qcow2_state *s);
void qcow2_l1_mark_dirty(qcow2_state *s, uint32_t idx);
int qcow2_truncate_locked(qcow2_state *s, uint64_t size, bool shrink, const char *prealloc,
                          vd_error **errp);
int qcow2_make_empty_locked(qcow2_state *s, vd_error **errp);
/* amend compat=0.10: turns zero clusters into unallocated ones or real zeros. */
int qcow2_expand_zero_clusters_locked(qcow2_state *s, vd_error **errp);
/* ---- qcow2-refcount-order.c ----------------------------------------------------------- */

/* amend -o refcount_bits: rewrites every refcount with 1 << order bits (QEMU's refusal when
 * one does not fit). */
int qcow2_change_refcount_order_locked(qcow2_state *s, uint32_t order, vd_error **errp);

/* Whether the active tree or any snapshot's tree holds a compressed cluster. */
int qcow2_has_compressed_locked(qcow2_state *s, bool *found, vd_error **errp);

/* ---- qcow2-io.c -------------------------------------------------------------------------- */

int qcow2_pread(vd_node *node, void *buf, uint64_t len, uint64_t off);
int qcow2_pwrite(vd_node *node, const void *buf, uint64_t len, uint64_t off,
                 unsigned flags);
int qcow2_pwrite_zeroes(vd_node *node, uint64_t off, uint64_t len, unsigned flags);
int qcow2_pdiscard(vd_node *node, uint64_t off, uint64_t len);
int qcow2_block_status(vd_node *node, uint64_t off, uint64_t len, vd_node_status *st);
/* The write path with the lock held on entry and exit (it drops it around data I/O). */
int qcow2_pwrite_locked(qcow2_state *s, const void *buf, uint64_t len, uint64_t off);
void qcow2_io_begin(qcow2_state *s, qcow2_io_rec *io);
void qcow2_io_end(qcow2_state *s, qcow2_io_rec *io);
/* Waits while a control operation drains the node (its own thread passes). */
void qcow2_enter_locked(qcow2_state *s);
/* Waits for allocation records overlapping guest clusters [first, first+count); returns
 * true if it had to wait (the caller then re-checks what it looked at). */
bool qcow2_alloc_wait(qcow2_state *s, uint64_t first, uint64_t count);
void qcow2_alloc_insert(qcow2_state *s, qcow2_alloc_rec *a, uint64_t first, uint64_t count);
void qcow2_alloc_remove(qcow2_state *s, qcow2_alloc_rec *a);
/* Decompresses the guest cluster that compressed entry e (guest offset guest_off)
 * describes into dst (cluster_size bytes). Called without the lock, inside
 * qcow2_io_begin/end. */
int qcow2_read_compressed(qcow2_state *s, uint64_t e, uint64_t guest_off, uint8_t *dst);

/* ---- qcow2-compress.c ------------------------------------------------------------------ */

/* The compressed write (block.h's pwrite_compressed contract). */
int qcow2_pwrite_compressed(vd_node *node, const void *buf, uint64_t len, uint64_t off,
                            int level);
/* Allocates size (1..cluster_size-1) bytes for a compressed stream, packed after the
 * previous stream, and counts one reference on every host cluster the bytes touch. */
int qcow2_alloc_bytes(qcow2_state *s, uint64_t size, uint64_t *offset);
/* The L2 descriptor of a compressed stream of len bytes at host byte offset off (QEMU's
 * encoding: offset field, then the number of 512-byte sectors after the first one). */
uint64_t qcow2_compressed_encode(uint64_t off, uint64_t len, uint32_t cluster_bits);

/* The compressed clusters of one read request, fetched and decompressed together. */
typedef struct qcow2_cread_job {
    uint64_t l2e;                /* compressed descriptor */
    uint64_t guest;              /* guest offset of the cluster */
    uint8_t *dst;                /* where the wanted bytes go */
    uint64_t in, bytes;          /* the wanted part of the cluster */
    /* Filled while the batch runs. */
    uint64_t host, csize;
    const uint8_t *src;
    uint8_t *out;
    int ret;
} qcow2_cread_job;

typedef struct qcow2_cread {
    qcow2_cread_job *jobs;
    size_t nb, cap, max;
    qcow2_io_rec io;             /* begun with the first job, ended by the flush */
} qcow2_cread;

void qcow2_cread_init(qcow2_state *s, qcow2_cread *b);
void qcow2_cread_free(qcow2_cread *b);
/* Adds a cluster to the batch (lock held). Returns 1 when the batch is full and must be
 * flushed, 0, or -ENOMEM. */
int qcow2_cread_add(qcow2_state *s, qcow2_cread *b, uint64_t l2e, uint64_t guest,
                    uint8_t *dst, uint64_t in, uint64_t bytes);
/* Lock held on entry and exit; dropped while reading and decompressing. run = false
 * abandons the batch (after an error elsewhere in the request). */
int qcow2_cread_flush(qcow2_state *s, qcow2_cread *b, bool run);

/* ---- qcow2-snapshot-ops.c: internal snapshots (block.h's snapshot ops) ---------------- */

int qcow2_snapshot_list(vd_node *node, vd_snapshot_info **out, size_t *nb, vd_error **errp);
int qcow2_snapshot_create_prepare(vd_node *node, const vd_snap_params *p, void **txn,
                                  vd_error **errp);
int qcow2_snapshot_delete_prepare(vd_node *node, const char *id, const char *name,
                                  void **txn, vd_error **errp);
int qcow2_snapshot_commit(vd_node *node, void *txn, vd_error **errp);
int qcow2_snapshot_abort(vd_node *node, void *txn, vd_error **errp);
void qcow2_snapshot_clean(vd_node *node, void *txn);
int qcow2_snapshot_apply(vd_node *node, const char *id_or_name, vd_error **errp);
int qcow2_snapshot_load_tmp(vd_node *node, const char *id, const char *name,
                            vd_error **errp);
int qcow2_vmstate_rw(vd_node *node, void *buf, uint64_t len, uint64_t pos, bool write,
                     vd_error **errp);
/* amend: refuses (ENOTSUP, QEMU's words) a downgrade to v2 that would lose what a v2
 * snapshot table cannot say (a disk size other than the image's, a VM state of 4 GiB or
 * more). */
int qcow2_snapshots_check_v2_locked(qcow2_state *s, vd_error **errp);
/* amend: rewrites the snapshot table with the extra data v3 requires (VM state size and
 * disk size; a missing disk size is the image's), when some entry lacks it. */
int qcow2_snapshots_make_v3_locked(qcow2_state *s, vd_error **errp);

/* Reads the node's open options into s (after the header, before the caches). */
int qcow2_read_options(qcow2_state *s, const vd_tree *opts, vd_error **errp);
extern const char *const qcow2_runtime_opts[];

#endif
