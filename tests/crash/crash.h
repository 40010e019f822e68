/* The crash-consistency harness (tests/crash/): a workload runs through the logwrites filter
 * (src/block/logwrites.h) and keeps a journal of what the guest saw; the replayer rebuilds
 * the image file as a crash after any logged write could leave it (every prefix since the
 * last flush, random subsets, torn multi-sector writes); the checker opens each such file
 * with qemu-img and vdisk and checks that nothing is corrupt and no flushed write is lost. */
#ifndef CRASH_H
#define CRASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SECTOR 512u
#define TAG_GARBAGE UINT32_MAX  /* a sector that is neither zeros nor a whole tagged sector */
#define TAG_RANDOM 0x40000000u  /* in a write id: pseudo-random (incompressible) sectors */
#define CRASH_MAX_FILES 16      /* files in one shared log (VD_LOGW_MAX_FILES) */

/* ---- sector tags (tags.c): every sector a workload writes names its write and place ---- */
void tag_fill(uint8_t *sector, uint32_t write_id, uint64_t sector_no);
/* 0 for a zero sector, the write id of a tagged sector at sector_no, else TAG_GARBAGE. */
uint32_t tag_decode(const uint8_t *sector, uint64_t sector_no);
/* The write id a tagged sector's header names, wherever it lies (0: not tagged). */
uint32_t tag_id(const uint8_t *sector);

/* ---- random numbers (seeded, reproducible) ---- */
typedef struct rng {
    uint64_t s;
} rng;
uint64_t rng_next(rng *r);
uint64_t rng_below(rng *r, uint64_t n);  /* 0 <= x < n, n > 0 */

/* ---- workloads (workload.c) ---- */
typedef enum op_kind {
    OP_WRITE, OP_ZERO, OP_DISCARD, OP_FLUSH, OP_COMPRESS, OP_RESIZE,
    OP_SNAP_CREATE, OP_SNAP_APPLY, OP_SNAP_DELETE, OP_AMEND, OP_BITMAP, OP_CLOSE,
} op_kind;

/* One guest operation as the journal keeps it. */
typedef struct gop {
    op_kind kind;
    uint64_t start, end;      /* the log's length before the op began and after it ended */
    uint64_t first, count;    /* sectors whose contents the op may have changed */
    uint32_t *vals;           /* their tags after the op (count entries) */
    uint64_t size_after;      /* the guest size after the op */
    bool maybe;               /* may have happened any time from start on, and no flush
                               * made it durable (a job's own copies): its values are
                               * allowed from then on, never required... */
    uint64_t until;           /* ...until the log reaches this length, if not 0 (a later
                               * op, durable by then, covers whatever it wrote) */
} gop;

typedef struct workload_cfg {
    const char *kind;         /* alloc, snap, compress, resize, cow, mixed, amend, bitmaps,
                               * mirror, backup, commit, replication, migration */
    uint32_t cluster_size;
    bool lazy;
    uint64_t seed;
    int ops;
    const char *dir;          /* where the image, its backing and the log live */
    const char *backup_mode;  /* backup: full, bitmap, full-compress or bitmap-compress;
                               * NULL: by the seed */
} workload_cfg;

/* One file of a kind that records several files in one shared log (backup, commit,
 * replication). */
typedef struct jfile {
    char name[64];            /* its name in a crash state's directory */
    uint8_t *base;            /* the file before recording began */
    uint64_t base_size;
} jfile;

/* kind "replication" (jobs-repl.c, check-repl.c): what the secondary's view (the chain
 * active -> hidden -> secondary disk, read through the replication node) may hold. */
typedef enum repl_kind {
    RK_CHECKPOINT,            /* vd_replication_start_all (the first) or a checkpoint: the
                               * view becomes what the secondary disk holds (vals: all of it) */
    RK_PRIMARY,               /* a write, write zeroes or discard of the secondary disk by
                               * the primary (vals: what the secondary disk reads after it) */
    RK_SECONDARY,             /* a write through the replication node (vals: its tags) */
    RK_PRIMARY_FLUSH,         /* a flush of the secondary disk by the primary */
    RK_SECONDARY_FLUSH,       /* a flush through the replication node */
} repl_kind;

typedef struct repl_op {
    repl_kind kind;
    uint64_t start, end;      /* the log's length before the op began and after it ended */
    uint64_t first, count;    /* sectors */
    uint32_t *vals;
    /* RK_SECONDARY: it reached the active disk (else the secondary disk, after the
     * failover's switch). RK_SECONDARY_FLUSH: it surely flushed the active disk. */
    bool in_active;
    /* The end of the first flush that made it durable in the layer the view reads it from
     * (UINT64_MAX: none): RK_PRIMARY, the hidden disk's copy of the old data (a flush of
     * the secondary disk flushes the hidden disk first); RK_SECONDARY, the write in the
     * active disk (a flush through the replication node that surely reached it). */
    uint64_t durable_at;
} repl_op;

typedef struct repl_journal {
    repl_op *ops;             /* in the order they started */
    size_t nb_ops;
    uint64_t cbw_cluster;     /* the copy-before-write filter's cluster, in sectors */
    uint64_t failover_start, failover_end;   /* vd_replication_stop_all(failover) */
} repl_journal;

/* kind "migration" (migration.c, check-mig.c): the destination of a live migration, what
 * the source held and what its writer wrote meanwhile. "Order" values come from one
 * counter that the writer (after each write returned) and the source's MIGRATION_PASS
 * events (before the pass's chunks are read) step atomically, so they order the two. */
typedef struct mig_write {
    uint64_t first, count;    /* sectors */
    uint32_t val;             /* their tag (0: write zeroes) */
    uint64_t done;            /* the order once it had returned (successful writes only) */
} mig_write;

typedef struct mig_ready {
    uint32_t pass;
    uint64_t pos;             /* the log's length right after the flush that preceded
                               * READY(pass) (the receiver's durable callback) */
} mig_ready;

typedef struct mig_journal {
    uint32_t *src0;           /* the source's tags before the migration began */
    uint32_t *final;          /* the source's tags once it completed */
    mig_write *writes;        /* the writer's, in order (one thread, one at a time) */
    size_t nb_writes;
    uint64_t *pass_order;     /* [p], 1 <= p <= nb_passes: the order at pass p's event */
    uint32_t nb_passes;       /* the last one is the switchover's */
    mig_ready *ready;         /* in the order they were sent */
    size_t nb_ready;
    uint64_t final_pos;       /* the first READY of the last pass (UINT64_MAX: none) */
} mig_journal;

typedef struct journal {
    uint64_t size0;           /* guest size before the first op */
    uint32_t *vals0;          /* tags of every sector before the first op */
    gop *ops;
    size_t nb_ops;
    char image[4096];         /* the image the workload wrote (its state at the end) */
    char log[4096];
    uint8_t *base;            /* the image file before recording began */
    uint64_t base_size;
    uint32_t next_id;         /* the next unused write id (for the checker's own writes) */
    /* Kinds with several files (0: one, described by base): file k of the log is
     * files[k], and the ops above describe what the guest reads from files[data_file]. */
    uint32_t nb_files, data_file;
    jfile files[CRASH_MAX_FILES];
    struct journal *target;   /* backup: what the target may hold, as ops on file 1 */
    repl_journal *repl;       /* replication: the view's history; the ops above are the
                               * secondary disk's (file 0) */
    const char *job_kind;     /* "backup", "commit" or "replication" */
    mig_journal *mig;         /* migration: the ops above are unused */
} journal;

int workload_run(const workload_cfg *cfg, journal *j);
void journal_free(journal *j);

/* ---- the log and crash states (replay.c) ---- */
typedef struct logrec {
    uint32_t type;
    uint32_t file;            /* which file of a shared log (0 for a log of one file) */
    uint64_t idx;             /* the record's number among its file's records */
    uint64_t off, len, aux;
    const uint8_t *data;      /* WRITE records: points into the loaded log */
    uint64_t pos;             /* the log's length before this record */
} logrec;

typedef struct wlog {
    uint8_t *buf;
    size_t buf_len;
    uint64_t init_size;
    logrec *recs;
    size_t nb;
    uint32_t nb_files;        /* 1 + the highest file number seen */
    uint64_t per_file[CRASH_MAX_FILES];   /* records of each file */
} wlog;

int wlog_load(const char *path, wlog *l);
void wlog_free(wlog *l);

/* An image file in memory: the durable part of a crash state. */
typedef struct memfile {
    uint8_t *data;
    uint64_t size, cap;
    uint8_t *dirty;           /* one byte per CHUNK: may hold non-zero bytes */
} memfile;

void memfile_init(memfile *m, const uint8_t *data, uint64_t size);
void memfile_apply(memfile *m, const logrec *r);
void memfile_free(memfile *m);
/* Writes m, then the chosen unflushed records (torn: the sector mask for the record
 * torn_idx, or -1), to path. */
int state_write(const char *path, const memfile *m, const logrec *const *recs, size_t n,
                long torn_idx, const uint8_t *torn_mask);

/* ---- the checker (check.c) ---- */
typedef struct check_totals {
    uint64_t states, corruptions, leaks, lost;
    uint64_t dirty, dirty_qemu;   /* states with the dirty bit; of those, repaired by QEMU */
} check_totals;

typedef struct check_ctx {
    const journal *j;
    const char *state_path;
    const char *qemu_img;     /* NULL: vdisk's checks only */
    const char *qemu_io;      /* repairs every other dirty state, as QEMU opens it */
    uint64_t crash_pos;       /* the log's length at the crash point */
    const char *what;         /* describes the state in messages */
    uint32_t write_id;        /* for the write made after recovery */
} check_ctx;

/* What a journal allows a sector to read at a crash point: the contents as of the last
 * flush that completed before it, plus, per sector, what any operation that had started by
 * then left there (and what a `maybe` op that had started may have left). */
typedef struct expect {
    uint32_t *base;
    uint64_t base_size, max_size;
    size_t extra;             /* ops from here on add allowed values */
} expect;
void expect_build(const journal *j, uint64_t crash_pos, expect *x);
bool expect_allows(const journal *j, const expect *x, uint64_t crash_pos, uint64_t s,
                   uint32_t v);
void expect_free(expect *x);

/* Returns true when the state passed every check. */
bool check_state(const check_ctx *c, check_totals *t);
/* qemu-img check (when c->qemu_img) and vdisk's check of c->state_path, leaks allowed and
 * counted. */
bool check_image(const check_ctx *c, check_totals *t);
/* vdisk's check only, leaks allowed (after a job has run on a state). */
bool check_image_vdisk(const check_ctx *c, check_totals *t);
void check_fail(const check_ctx *c, const char *why);
/* The state, reopened read-write, takes a new write (c->write_id) and reads it back. */
struct vd_engine;
bool write_after_recovery(const check_ctx *c, check_totals *t, struct vd_engine *e);

/* ---- jobs' workloads and checks (jobs.c, check-jobs.c) ---- */
typedef struct wl wl;
int run_backup(wl *w, uint64_t size);
int run_commit(wl *w, uint64_t size);
int run_replication(wl *w, uint64_t size);
/* A crash state of a job kind, its files in dir: c->state_path is unused. */
bool check_job_state(const check_ctx *c, const char *dir, check_totals *t);
bool check_replication(const check_ctx *c, const char *dir, check_totals *t);
/* ---- a live migration's destination (migration.c, check-mig.c) ---- */
int run_migration(wl *w, uint64_t size);
bool check_migration(const check_ctx *c, check_totals *t);
/* Helpers of the job kinds' checks (check-jobs.c). */
check_ctx file_ctx(const check_ctx *c, const journal *j, const char *dir, const char *name,
                   char *path, size_t path_len, char *what, size_t what_len);
/* Tags of every sector of the image top, read through its backing chain; *backing (if
 * asked) the backing file name top stores. */
struct vd_engine;
int read_chain(struct vd_engine *e, const char *top, uint32_t **vals, uint64_t *sectors,
               char **backing, char *why, size_t why_len);
/* vd_blockdev_add of a JSON options tree, read-write unless it says otherwise. */
int add_json(struct vd_engine *e, const char *json, char *why, size_t why_len);
/* blockdev-add of the qcow2 image dir/file as node `node`, over the named node backing
 * (NULL: none given), read-only when ro. */
int add_layer(struct vd_engine *e, const char *dir, const char *file, const char *node,
              const char *backing, bool ro, char *why, size_t why_len);

#endif
