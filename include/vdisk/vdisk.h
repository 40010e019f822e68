/* libvdisk public API: engine, disk handles, I/O, and image management.
 * Every call that can fail returns a negative errno; control calls also fill a vd_error
 * (set only on failure) that names the object and the value at fault. */
#ifndef VDISK_VDISK_H
#define VDISK_VDISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------------------- */

typedef enum vd_error_class {
    VD_ERR_GENERIC = 0,  /* QMP "GenericError" */
    VD_ERR_IO,
    VD_ERR_INVALID,      /* bad argument or option */
    VD_ERR_UNSUPPORTED,  /* valid but not implemented / unknown feature */
    VD_ERR_CORRUPT,      /* image metadata is damaged */
    VD_ERR_NOT_FOUND,
    VD_ERR_BUSY,
    VD_ERR_NOMEM,
} vd_error_class;

typedef struct vd_error {
    vd_error_class cls;
    int errnum;  /* positive errno */
    char *msg;
} vd_error;

/* Sets *errp (if errp and !*errp) and returns -errnum, so callers can write
 * `return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "...", ...);` */
int vd_error_set(vd_error **errp, vd_error_class cls, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Prefixes an existing error's message with "prefix: ". */
void vd_error_prepend(vd_error **errp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vd_error_free(vd_error *err);
void vd_error_freep(vd_error **errp);
/* Hands err (may be NULL) to the caller: into *errp if errp is given and still empty, else
 * freed (a first error already there wins). */
void vd_error_propagate(vd_error **errp, vd_error *err);
const char *vd_error_msg(const vd_error *err);

/* QEMU's rule for identifiers (job ids, "id=" values): a letter, then letters, digits,
 * '-', '.' or '_'. A node name is such an identifier of at most 31 characters. */
bool vd_id_wellformed(const char *id);
bool vd_node_name_valid(const char *name);

/* ---- options: "key=value,key=value" lists (qemu-img -o syntax, ",," escapes a comma) --- */

typedef struct vd_opts vd_opts;

vd_opts *vd_opts_new(void);
void vd_opts_free(vd_opts *o);
/* Parses and appends; a later key overrides an earlier one. "help" parses as key "help". */
int vd_opts_parse(vd_opts *o, const char *text, vd_error **errp);
int vd_opts_set(vd_opts *o, const char *key, const char *value);
const char *vd_opts_get(const vd_opts *o, const char *key);  /* NULL if absent */
int vd_opts_del(vd_opts *o, const char *key);
size_t vd_opts_count(const vd_opts *o);
const char *vd_opts_key(const vd_opts *o, size_t i);
const char *vd_opts_value(const vd_opts *o, size_t i);
/* Typed getters: absent -> *out = def, returns 0. Bad value -> error naming the key. */
int vd_opts_get_bool(const vd_opts *o, const char *key, bool def, bool *out, vd_error **errp);
int vd_opts_get_size(const vd_opts *o, const char *key, uint64_t def, uint64_t *out,
                     vd_error **errp);

/* Size with optional k/K, M, G, T, P, E suffix (binary units; a plain number is bytes;
 * "b" suffix allowed). Returns -EINVAL on bad syntax, -ERANGE on overflow. */
int vd_parse_size(const char *s, uint64_t *out);
/* Human size as qemu-img prints it: "64 KiB", "1 GiB", "1.5 MiB", "0 B". */
void vd_format_size(uint64_t v, char *buf, size_t len);

/* ---- engine ---------------------------------------------------------------------------- */

/* An explicit context that owns what the library shares between disks: the compression
 * worker pool, the cache of codec contexts, the settings, the event handler and client
 * TLS credentials. Two engines in one process share nothing. */
typedef struct vd_engine vd_engine;

/* What an engine is set up with; zero is the default everywhere. The library reads no
 * environment: the tools map their variables (VDISK_THREADS, ...) onto these. */
typedef struct vd_engine_settings {
    /* Threads one compression batch may use, the caller included (1: no workers);
     * 0: one worker per online core plus the caller. */
    unsigned threads;
    /* Test aid: each blkdebug filter appends "reads=R writes=W flushes=F" to this file
     * when it closes, so a test can learn how many requests an operation makes. */
    const char *blkdebug_count_file;
    /* Test aid for tests/crash only: qcow2 writes L2 tables before the refcounts they
     * depend on, with no sync between, so that the harness can show it sees the damage. */
    bool break_write_ordering;
    /* Test aid for the mirror's tests only: never widen a copy to whole target clusters
     * (the tests show what goes wrong without it). */
    bool mirror_no_whole_clusters;
} vd_engine_settings;

vd_engine *vd_engine_new(void);
/* An engine with these settings (copied; NULL: the defaults). */
vd_engine *vd_engine_new_with(const vd_engine_settings *settings);
/* Stops the engine's worker threads and frees it; every disk must be closed first. */
void vd_engine_free(vd_engine *e);

/* Something the engine's nodes report as it happens, named as QMP names the event.
 * BLOCK_IMAGE_CORRUPTED: the image was found corrupt (msg says where); with fatal it is
 * marked corrupt and takes no more writes. Reported once per image. */
typedef struct vd_event {
    const char *type;
    const char *image;   /* the image file's name */
    const char *msg;
    bool fatal;
    /* The host range at fault (a write that would land on metadata), or -1 when the
     * event names none (QEMU's optional offset and size). */
    int64_t offset, size;
    /* Job events (JOB_STATUS_CHANGE, BLOCK_JOB_READY, _PENDING, _COMPLETED, _CANCELLED,
     * _ERROR; vdisk/job.h): the job, its status, its progress (QEMU's len and offset) and
     * speed, the failure (error, NULL if none), and for BLOCK_JOB_ERROR the operation
     * ("read"/"write") and action ("report"/"ignore"/"stop"). */
    const char *job_id, *job_type, *job_status, *job_error, *operation, *action;
    uint64_t job_len, job_offset, job_speed;
    /* QUORUM_REPORT_BAD and QUORUM_FAILURE: the node (the quorum's child that failed or
     * was outvoted, or the quorum that failed), the range in 512-byte sectors (0 and 0 for
     * a flush), and for a bad report its operation ("read", "write", "flush": `operation`)
     * and error as strerror words (NULL: the child read data that lost the vote). */
    const char *node_name, *error;
    int64_t sector_num, sectors_count;
    /* MIGRATION: the new status (QEMU's MigrationStatus name); MIGRATION_PASS: the pass
     * (vdisk/migration.h). */
    const char *mig_status;
    uint64_t mig_pass;
    /* The event is part of what a call that is still running does (a job's start, or a
     * verb that waits for the job: finalize, dismiss, vd_jobs_cancel_all), though another
     * thread reports it: a server sends it with that call's answer. */
    bool synchronous;
} vd_event;
typedef void vd_event_fn(void *opaque, const vd_event *ev);
/* The handler runs on the thread that found the event, possibly with driver locks held:
 * it must not call back into the engine. NULL removes it. */
void vd_engine_set_event_handler(vd_engine *e, vd_event_fn *fn, void *opaque);

/* TLS credentials that client nodes (driver=nbd, tls-creds=ID) use, as QEMU's --object
 * tls-creds-x509,endpoint=client (dir holds ca-cert.pem, client-cert.pem, client-key.pem;
 * verify_peer checks the server's certificate) or tls-creds-psk,endpoint=client (dir holds
 * keys.psk; username, QEMU's default "qemu" when NULL). */
typedef struct vd_tls_client_creds {
    const char *id;
    bool psk;
    const char *dir;
    bool verify_peer;
    const char *username;
} vd_tls_client_creds;
/* Copies c into the engine; an id that is already there is refused. */
int vd_engine_add_tls_client_creds(vd_engine *e, const vd_tls_client_creds *c,
                                   vd_error **errp);
/* The credentials with that id, or NULL. They live as long as the engine. */
const vd_tls_client_creds *vd_engine_tls_client_creds(vd_engine *e, const char *id);

/* ---- opening disks --------------------------------------------------------------------- */

typedef struct vd_disk vd_disk;

enum {
    VD_OPEN_RDWR = 1 << 0,
    VD_OPEN_NO_BACKING = 1 << 1,  /* do not open the backing chain (info, rebase -u) */
    VD_OPEN_NOCACHE = 1 << 2,     /* O_DIRECT on the file ("-t none") */
    VD_OPEN_WRITETHROUGH = 1 << 3,/* flush after every write ("-t writethrough") */
    VD_OPEN_CHECK = 1 << 4,       /* open for check/repair: tolerate what check reports */
    VD_OPEN_NO_REPAIR = 1 << 5,   /* do not auto-repair a dirty lazy-refcounts image */
    VD_OPEN_UNMAP = 1 << 6,       /* honour discards and MAY_UNMAP (QEMU discard=unmap); without
                                   * it vd_pdiscard does nothing, as in QEMU */
    VD_OPEN_NO_FLUSH = 1 << 7,    /* flush requests (and the flush at close) are ignored:
                                   * qemu's "-t unsafe", the default for convert */
};

typedef struct vd_open_opts {
    const char *format;  /* "qcow2", "raw", or NULL to probe as qemu-img does */
    unsigned flags;      /* VD_OPEN_* */
} vd_open_opts;

int vd_open(vd_engine *e, const char *filename, const vd_open_opts *opts, vd_disk **out,
            vd_error **errp);
/* Flushes and closes; returns the first error met while flushing (the handle is freed
 * regardless). */
int vd_close(vd_disk *d);

/* Whether a driver of that name exists (formats, protocols and filters, as QEMU's
 * blockdev-add names them: "qcow2", "file", "nbd", "null-co", "blkdebug", ...). */
bool vd_driver_exists(const char *name);

/* Detects the format of a file's first bytes as qemu-img does: "qcow2" or "raw". */
int vd_probe_format(const char *filename, const char **fmt, vd_error **errp);

/* ---- I/O (thread-safe; any byte offset and length inside the disk) --------------------- */

enum {
    VD_REQ_MAY_UNMAP = 1 << 0,    /* write_zeroes may deallocate (qemu-io write -z -u) */
    VD_REQ_FUA = 1 << 1,
    VD_REQ_NO_FALLBACK = 1 << 2,  /* write_zeroes: fail -ENOTSUP instead of writing zeros */
};

uint64_t vd_disk_size(const vd_disk *d);
const char *vd_disk_filename(const vd_disk *d);
const char *vd_disk_format(const vd_disk *d);
/* A backing file name as an image stores it, resolved as QEMU resolves it: relative to the
 * directory of the image that names it; absolute paths, json: options and other protocols'
 * names (nbd URIs) as they are. Caller frees. */
char *vd_backing_path(const char *image, const char *backing);
/* Whether the handle's top node was opened (or has turned) read-only. */
bool vd_disk_read_only(const vd_disk *d);
/* Whether its requests may wait for a device or a peer: a node below it is read and
 * written with O_DIRECT (cache.direct, -t none), or is an NBD client. */
bool vd_disk_direct(const vd_disk *d);
int vd_pread(vd_disk *d, void *buf, uint64_t len, uint64_t off);
int vd_pwrite(vd_disk *d, const void *buf, uint64_t len, uint64_t off, unsigned flags);
int vd_pwrite_zeroes(vd_disk *d, uint64_t off, uint64_t len, unsigned flags);
int vd_pdiscard(vd_disk *d, uint64_t off, uint64_t len);
int vd_flush(vd_disk *d);

/* I/O accounting of a handle since it was opened (QMP query-blockstats). Write zeroes
 * count as writes, discards as unmaps; a failed request counts in failed_* only. */
typedef struct vd_disk_stats {
    uint64_t rd_bytes, wr_bytes, unmap_bytes;
    uint64_t rd_operations, wr_operations, flush_operations, unmap_operations;
    uint64_t failed_rd_operations, failed_wr_operations, failed_flush_operations,
        failed_unmap_operations;
    uint64_t rd_total_time_ns, wr_total_time_ns, flush_total_time_ns, unmap_total_time_ns;
    uint64_t wr_highest_offset;   /* end of the highest write */
    int64_t idle_time_ns;         /* since the last request finished; -1 before any */
} vd_disk_stats;
void vd_disk_get_stats(vd_disk *d, vd_disk_stats *out);
/* Writes whole clusters compressed with the image's compression type (qcow2 only; other
 * formats give -ENOTSUP). off must be cluster-aligned and len a multiple of the cluster
 * size, except that the request may end at the end of the disk (-EINVAL otherwise). The
 * clusters of one request are compressed in parallel on every core and stored back to
 * back. A cluster that does not get smaller is stored uncompressed, as QEMU does.
 * Allocated clusters may be overwritten; their old data is released. len 0 pads the image
 * file to a multiple of 512 bytes, as qemu-img convert -c does when it finishes. */
int vd_pwrite_compressed(vd_disk *d, const void *buf, uint64_t len, uint64_t off);
/* Compression level of this handle's compressed writes (default: the codec's default).
 * A level outside the codec's range fails with -EINVAL and a message naming the codec and
 * its range. */
int vd_set_compression_level(vd_disk *d, int level, vd_error **errp);
/* Validates a compression type name (NULL = "zlib") and, unless level is
 * VD_COMPRESSION_LEVEL_DEFAULT, a level for it, without an image: an unknown type lists
 * the known ones; a bad level names the codec's range. */
#define VD_COMPRESSION_LEVEL_DEFAULT (-1000000)
int vd_compression_check(const char *type, int level, vd_error **errp);
/* The message of the newest failed request in this handle's graph, or NULL. I/O returns
 * bare -errno for speed; drivers leave a message on the node when they have one worth
 * showing. The text stays valid until the next call on the handle. */
const char *vd_disk_last_error(vd_disk *d);

/* Block status of [off, off+len) through the whole chain. Fills *st for the longest
 * prefix with uniform status (st->length >= 1 unless off == size). */
enum {
    VD_BS_DATA = 1 << 0,       /* reads come from stored data (not known zero) */
    VD_BS_ZERO = 1 << 1,       /* reads as zeros */
    VD_BS_OFFSET = 1 << 2,     /* st->offset is a valid offset in st->file */
    VD_BS_ALLOCATED = 1 << 3,  /* allocated in some layer of the chain (present) */
    VD_BS_COMPRESSED = 1 << 4, /* data stored compressed (no offset) */
};
/* (The type is vd_extent; vd_block_status is the function.) */
typedef struct vd_extent {
    uint64_t length;
    unsigned flags;
    uint64_t offset;   /* host offset, when VD_BS_OFFSET */
    int depth;         /* chain depth of the layer that answered (0 = top); when nothing
                        * is allocated anywhere: the chain length */
    const char *file;  /* filename that holds offset */
} vd_extent;
int vd_block_status(vd_disk *d, uint64_t off, uint64_t len, vd_extent *st);
/* Same, but only the top layer: VD_BS_ALLOCATED means "allocated in this layer". */
int vd_block_status_top(vd_disk *d, uint64_t off, uint64_t len, vd_extent *st);

/* ---- information ----------------------------------------------------------------------- */

/* A persistent bitmap stored in an image (qemu-img info's "bitmaps"). */
typedef struct vd_image_bitmap {
    char *name;
    uint64_t granularity;
    bool in_use;            /* the image is open read-write, or was not closed cleanly */
    bool autoload;          /* "auto": recording */
} vd_image_bitmap;

typedef struct vd_image_info {
    char *filename;
    char *format;
    uint64_t virtual_size;
    uint64_t actual_size;   /* allocated bytes on the host (st_blocks * 512) */
    bool actual_size_unknown; /* the node cannot tell (an NBD export): qemu-img's
                               * "disk size: unavailable" */
    bool is_protocol;       /* the disk is a protocol or filter node (null-co, file, ...):
                             * no format layer, so no format details (QEMU's
                             * bdrv_get_info fails for it) */
    bool has_cluster_size;
    uint64_t cluster_size;
    bool dirty_flag;        /* only for formats that have one */
    bool has_dirty_flag;
    char *backing_filename;        /* as stored in the image, or NULL */
    char *full_backing_filename;   /* resolved relative to the image */
    char *backing_format;          /* or NULL */
    bool encrypted;
    /* qcow2 specifics (format_specific "qcow2" in qemu-img info) */
    bool is_qcow2;
    char compat[8];          /* "0.10" or "1.1" */
    char compression_type[8];/* "zlib" or "zstd" */
    bool lazy_refcounts;
    unsigned refcount_bits;
    bool corrupt;
    bool extended_l2;
    int nb_snapshots;
    vd_image_bitmap *bitmaps;  /* qcow2 v3: the stored bitmaps (has_bitmaps even if none) */
    size_t nb_bitmaps;
    bool has_bitmaps;
} vd_image_info;

int vd_get_info(vd_disk *d, vd_image_info *info, vd_error **errp);
void vd_image_info_clear(vd_image_info *info);
/* The backing disk of d (NULL for the bottom of the chain); owned by d. */
vd_disk *vd_disk_backing(vd_disk *d);

/* ---- check ----------------------------------------------------------------------------- */

enum { VD_FIX_LEAKS = 1 << 0, VD_FIX_ERRORS = 1 << 1 };

typedef struct vd_check_result {
    int64_t corruptions;
    int64_t leaks;
    int64_t check_errors;
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters;
    int64_t allocated_clusters;
    int64_t fragmented_clusters;
    int64_t compressed_clusters;
    /* Messages as qemu-img prints them on stderr ("Leaked cluster 5 refcount=1 reference=0",
     * "Repairing ...", "ERROR ..."), one per line; NULL if none. Caller frees. Filled by
     * vd_check only, which keeps at most 64 MiB and then ends the log with a line
     * "(N more messages not shown)". */
    char *log;
    /* Lines not delivered: refused by a vd_check_stream hook, or past vd_check's cap. */
    int64_t messages_dropped;
} vd_check_result;

/* What a caller of vd_check_stream hears while the check runs; each hook may be NULL.
 * They run with the image locked: they must not call into vdisk for any disk on the same
 * image, and a slow hook holds up other threads' requests to it. */
typedef struct vd_check_hooks {
    /* One message as soon as it is found: a line as qemu-img prints it, without its final
     * newline (a few, such as a hint after an error or a snapshot name with a newline in
     * it, span more lines). Returning false refuses it and every later one: they are
     * counted in messages_dropped and never formatted (a hostile image can produce
     * billions). NULL: no message is formatted at all. */
    bool (*msg)(void *opaque, const char *line);
    /* After a repair that fixed something, before the re-check whose counts the result
     * holds; qemu-img prints "The following inconsistencies were found and repaired"
     * here, between the two passes' messages. */
    void (*recheck)(void *opaque, int64_t leaks_fixed, int64_t corruptions_fixed);
    /* The program name that the messages qemu-img prints through error_report() start
     * with ("<name>: "). NULL: they have no prefix. */
    const char *program_name;
    void *opaque;
} vd_check_hooks;

/* Runs a consistency check (and repair with VD_FIX_*) on an image opened with
 * VD_OPEN_CHECK (and RDWR for repair). After a repair the result is that of a second,
 * read-only pass, as qemu-img does; corruptions_fixed/leaks_fixed are from the first.
 * Returns -ENOTSUP for formats without a check. */
int vd_check(vd_disk *d, unsigned fix, vd_check_result *res, vd_error **errp);
/* vd_check with the messages passed to hooks->msg in qemu-img's order instead of kept in
 * res->log (which stays NULL), so they can be printed while the check runs, with no cap.
 * hooks may be NULL. */
int vd_check_stream(vd_disk *d, unsigned fix, const vd_check_hooks *hooks,
                    vd_check_result *res, vd_error **errp);
void vd_check_result_clear(vd_check_result *res);

/* ---- create, measure, amend, resize ---------------------------------------------------- */

/* Creates an image. opts: the -o options of that format (qcow2: cluster_size, compat,
 * refcount_bits, lazy_refcounts, preallocation, backing_file, backing_fmt, extended_l2,
 * compression_type, size; raw: preallocation, size). size may be given in opts or as
 * `size` (UINT64_MAX = take it from the backing file). Unknown options are refused.
 * With backing and no -u (VD_CREATE_UNSAFE unset), the backing file is opened to check
 * it and to take its size. */
enum { VD_CREATE_UNSAFE = 1 << 0 };
int vd_create(vd_engine *e, const char *filename, const char *fmt, uint64_t size,
              const vd_opts *opts, unsigned flags, vd_error **errp);

/* One line per option for `-o help`: "name=<type>  - description". */
typedef struct vd_create_option {
    const char *name;
    const char *type;  /* "bool", "size", "str", "num" */
    const char *help;
    const char *def;   /* default as printed by qemu-img, or NULL */
} vd_create_option;
const vd_create_option *vd_create_options(const char *fmt, size_t *count);
/* The same for an image created at filename: a protocol there may bring options of its own
 * (raw on rbd: takes cluster_size, the RBD object size). filename may be NULL. */
const vd_create_option *vd_create_options_for(const char *fmt, const char *filename,
                                              size_t *count);

/* Space needed to convert to fmt with opts: required = the size with the given
 * preallocation for a source whose allocated map is src (or an empty one of `size` when
 * src is NULL); fully_allocated = every cluster allocated. Bitmaps: 0 (none yet). */
typedef struct vd_measure_result {
    uint64_t required;
    uint64_t fully_allocated;
} vd_measure_result;
int vd_measure(const char *fmt, const vd_opts *opts, uint64_t size, vd_disk *src,
               vd_measure_result *res, vd_error **errp);

/* Changes format options in place (compat, lazy_refcounts, backing_file, backing_fmt...);
 * refuses the ones it cannot change with an error naming them. */
int vd_amend(vd_disk *d, const vd_opts *opts, vd_error **errp);

/* Resizes the disk. Shrinking requires shrink=true. prealloc: NULL/"off", "metadata",
 * "falloc", "full" for the added range. */
int vd_truncate(vd_disk *d, uint64_t size, bool shrink, const char *prealloc,
                vd_error **errp);

/* Rewrites the backing file name and format stored in the image (rebase -u, commit).
 * backing NULL removes the backing file. Does not reopen the chain. */
int vd_set_backing(vd_disk *d, const char *backing, const char *backing_fmt,
                   vd_error **errp);

/* Makes the image empty (all clusters unallocated), as commit does to the top. */
int vd_make_empty(vd_disk *d, vd_error **errp);

#ifdef __cplusplus
}
#endif
#endif
