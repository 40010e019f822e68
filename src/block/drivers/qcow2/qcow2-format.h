/* qcow2 on-disk format: constants, the decoded header, and pure encode/decode functions
 * (bytes -> struct or error), shared by the runtime driver, check, create and the fuzzers. */
#ifndef VD_QCOW2_FORMAT_H
#define VD_QCOW2_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

#include "util/common.h"

#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_HEADER_LEN 104
#define QCOW2_WRITE_HEADER_LEN 112  /* what we (and QEMU 7.2) write for v3 */

/* Limits, as QEMU's, so a hostile image cannot make us allocate without bound. */
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES (8u * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_TABLE_BYTES (64u * 1024 * 1024)
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_BACKING_FMT 15

#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)
#define QCOW2_AUTOCLEAR_KNOWN 0x3ull

#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* L1 / L2 entry bits */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffull
#define QCOW2_L2E_RESERVED_MASK 0x3f000000000001feull
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull
#define QCOW2_REFT_RESERVED_MASK 0x1ffull
#define QCOW2_SUBCLUSTERS 32  /* per cluster with extended L2 */
#define QCOW2_EXTL2_ALLOC_ALL 0x00000000ffffffffull
#define QCOW2_EXTL2_ZERO_ALL 0xffffffff00000000ull

/* A header extension kept verbatim (unknown ones are preserved on rewrite). */
typedef struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
} qcow2_ext;

typedef struct qcow2_header {
    uint32_t version;            /* 2 or 3 */
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    /* Bytes of header fields we don't know (header_length > 112), kept verbatim. */
    uint8_t *unknown_fields;
    uint32_t unknown_fields_len;

    /* Decoded extensions */
    char *backing_file;        /* NULL if none */
    char *backing_format;      /* NULL if none */
    char *data_file;           /* external data file name, NULL if none */
    bool has_bitmaps_ext;
    uint8_t bitmaps_ext[24];
    bool has_crypto_ext;
    uint8_t crypto_ext[16];
    qcow2_ext *unknown_exts;   /* in file order */
    size_t nb_unknown_exts;
    /* Feature names from the image's feature table, for error messages. */
    struct { uint8_t type, bit; char name[47]; } *feature_names;
    size_t nb_feature_names;
} qcow2_header;

/* Derived geometry, valid after a successful decode. */
static inline uint64_t qcow2_cluster_size(const qcow2_header *h)
{
    return 1ull << h->cluster_bits;
}
static inline bool qcow2_has_extl2(const qcow2_header *h)
{
    return (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;
}
static inline uint64_t qcow2_l2_entries(const qcow2_header *h)
{
    return qcow2_cluster_size(h) / (qcow2_has_extl2(h) ? 16 : 8);
}

/* Decodes cluster 0 (buf holds the first min(file length, cluster or 2 MiB) bytes; len
 * is how many). Checks every field QEMU checks at open and more: version, cluster_bits,
 * header_length, extension bounds, backing name/format bounds, unknown incompatible bits
 * (message lists their names from the feature table), compression type consistency,
 * refcount_order, crypt (refused: unsupported), data file (refused: unsupported).
 * file_len is the file length, used to check table offsets lie inside the file.
 * Returns 0, or -errno with *errp naming the field and value. Free with
 * qcow2_header_clear(). `what` is the image name used in messages. */
int qcow2_header_decode(const uint8_t *buf, size_t len, uint64_t file_len, const char *what,
                        qcow2_header *h, vd_error **errp);
void qcow2_header_clear(qcow2_header *h);

/* Encodes the whole of cluster 0 as QEMU writes it: header (v3: 112 bytes + unknown
 * fields), backing format, data file, crypto, feature table (v3 and cluster > 4 KiB),
 * bitmaps, unknown extensions (in reverse order, as QEMU does), end marker, then the
 * backing file name; sets backing_file_offset/size and header_length in h. buf must be
 * cluster-sized and is fully written (rest zero). Returns -EFBIG if it does not fit. */
int qcow2_header_encode(qcow2_header *h, uint8_t *buf, size_t cluster_size);

/* Refcount entry access for any refcount_order 0..6 (sub-byte entries LSB-first). */
uint64_t qcow2_refcount_get(const uint8_t *block, uint32_t order, uint64_t index);
void qcow2_refcount_set(uint8_t *block, uint32_t order, uint64_t index, uint64_t value);

/* Compressed L2 entry: host byte offset and the sector-rounded length QEMU reads. */
void qcow2_compressed_decode(uint64_t l2e, uint32_t cluster_bits, uint64_t *host_off,
                             uint64_t *csize);

/* ---- Snapshot table (qcow2-snapshot.c): pure decode, used by open and check ---------- */
typedef struct qcow2_snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;      /* UINT64_MAX when absent */
    int64_t icount;          /* -1 when absent */
    uint32_t extra_data_size;
    uint8_t *extra_data;     /* verbatim, extra_data_size bytes */
} qcow2_snapshot;

/* Decodes nb entries from buf (len bytes read at snapshots_offset). Checks every entry
 * lies inside buf, sizes are within QEMU's limits, L1 offsets are cluster-aligned and L1
 * sizes bounded. *table_len gets the exact byte length QEMU refcounts. */
int qcow2_snapshots_decode(const uint8_t *buf, size_t len, uint32_t nb,
                           const qcow2_header *h, const char *what, qcow2_snapshot **out,
                           uint64_t *table_len, vd_error **errp);
void qcow2_snapshots_free(qcow2_snapshot *s, uint32_t nb);
/* The table as it is written: entries 8-aligned, gaps zeroed, each with at least the 24
 * bytes of extra data QEMU 7.2 writes (unknown longer extra data kept). ids and names are
 * at most 127 and 255 bytes (the caller ensures it). buf holds encoded_len bytes. */
uint64_t qcow2_snapshots_encoded_len(const qcow2_snapshot *sn, uint32_t nb);
void qcow2_snapshots_encode(const qcow2_snapshot *sn, uint32_t nb, uint8_t *buf);

/* Tolerant decoding for `check` (QEMU opens such tables; only check reports them). */
typedef struct qcow2_snapshot_decode_opts {
    /* Leave L1 offset alignment and L1 size to the caller: QEMU opens images with a bad
     * snapshot L1 and reports it in check, or refuses only when the snapshot is used. */
    bool no_l1_checks;
    /* As `qemu-img check -r all`: keep only 1 KiB of oversized extra data, and drop the
     * entries from the one that makes the table too big, instead of failing. */
    bool repair;
    /* Receives the messages QEMU prints while repairing ("Discarding ..."); may be NULL. */
    void (*note)(void *opaque, const char *msg);
    /* Supplies table bytes [off, off+len) past the buffer (QEMU reads the table straight
     * from the file, zeros past its end); NULL: such entries fail with -ERANGE. */
    int (*fetch)(void *opaque, uint64_t off, void *buf, size_t len);
    void *opaque;
} qcow2_snapshot_decode_opts;

/* As qcow2_snapshots_decode, with opts (NULL = strict). *nb_out gets the number of entries
 * kept, *table_len the on-disk extent of those entries (QEMU's snapshots_size, what check
 * refcounts), *nb_extra_truncated (may be NULL) how many had extra data cut to 1 KiB.
 * Without opts->fetch, fails with -ERANGE when an entry runs past len (a caller may retry
 * with more bytes). */
int qcow2_snapshots_decode_ex(const uint8_t *buf, size_t len, uint32_t nb,
                              const qcow2_header *h, const char *what,
                              const qcow2_snapshot_decode_opts *opts, qcow2_snapshot **out,
                              uint32_t *nb_out, uint64_t *table_len,
                              uint32_t *nb_extra_truncated, vd_error **errp);

/* ---- Check and repair (qcow2-check.c): works on the image file directly ---------------- */
struct vd_node;
/* Checks the qcow2 image stored in `file` (a protocol node), as `qemu-img check` does,
 * and repairs with VD_FIX_LEAKS / VD_FIX_ERRORS (file must be writable then), including
 * clearing the dirty and corrupt bits after a successful repair. The caller must have
 * flushed and dropped any cached metadata and must re-read everything afterwards.
 * hooks->msg gets qemu-img's stderr lines of both passes (see vd_check_hooks); the ones
 * qemu-img prints through error_report() start with the program's name and ": ". A
 * negative return is qemu-img's "Check failed: <strerror>" (res still holds the counts so
 * far). Without hooks (or hooks->msg), no line is formatted. */
int qcow2_check_image(struct vd_node *file, const char *what, unsigned fix,
                      const vd_check_hooks *hooks, vd_check_result *res, vd_error **errp);
/* Reads cluster 0, which holds the header and its extensions, into *buf (free it): as
 * much of it as the file has, or only the first 512 bytes when cluster_bits is invalid
 * (the decoder refuses the image whatever follows). 0 or -errno. */
int qcow2_read_cluster0(struct vd_node *file, uint64_t file_len, uint8_t **buf, size_t *len);
/* Reads and decodes the header of `file` as QEMU's check-mode open does: table offsets are
 * not checked against the file length, an empty reftable (refcount_table_clusters = 0)
 * is tolerated and the snapshot table fields are taken as stored, unvalidated (check
 * reads them itself). Sets *file_len. Free h with qcow2_header_clear(). */
int qcow2_header_read_check(struct vd_node *file, const char *what, qcow2_header *h,
                            uint64_t *file_len, vd_error **errp);

/* ---- Create, preallocation, measure (qcow2-create.c, qcow2-layout.c) ----------------- */
int qcow2_create(vd_engine *e, const char *filename, uint64_t size, const vd_opts *opts,
                 unsigned flags, vd_error **errp);
int qcow2_measure(const vd_opts *opts, uint64_t size, vd_disk *src, vd_measure_result *res,
                  vd_error **errp);
/* The count is a constant so that the const driver table can hold it; declaring the array
 * with it makes the compiler check it against the definition in qcow2-create.c. */
#define QCOW2_NB_CREATE_OPTIONS 23
extern const vd_create_option qcow2_create_options[QCOW2_NB_CREATE_OPTIONS];
extern const size_t qcow2_nb_create_options;

#endif
