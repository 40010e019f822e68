/* Live disk migration: named nodes of one engine move to the same-named nodes of another
 * engine (another process, another host) over the stream of docs/migration-stream.md,
 * while their users keep writing. Pre-copy, as QEMU migrates RAM: a bulk pass over what is
 * allocated, then passes over what was written meanwhile (a write notifier on each node
 * records it), until what is left moves within the downtime limit; then the nodes' users
 * are held, the rest and a flush go across, the destination confirms, the source's nodes
 * stop taking writes and the destination takes over (its exports are made). The sending
 * side is vd_migration, the receiving side vd_mig_incoming; both run on threads of their
 * own and report through the engine's event handler (MIGRATION, MIGRATION_PASS) when the
 * events capability is on. Parameters and capabilities have QEMU's names. */
#ifndef VDISK_MIGRATION_H
#define VDISK_MIGRATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/nbd.h"
#include "vdisk/tree.h"
#include "vdisk/vdisk.h"

/* Payload codecs, QEMU's compress-type / multifd-compression values. */
typedef enum vd_mig_codec {
    VD_MIG_CODEC_NONE = 0,
    VD_MIG_CODEC_ZLIB = 1,
    VD_MIG_CODEC_ZSTD = 2,
} vd_mig_codec;

#define VD_MIG_MAX_DOWNTIME_MS 2000000u   /* QEMU's MAX_MIGRATE_DOWNTIME */

/* migrate-set-parameters' settings. QEMU 7.2's multifd names are the same settings:
 * multifd-compression is compress-type, multifd-zlib-level and multifd-zstd-level are
 * compress-level for that type. */
typedef struct vd_mig_params {
    vd_mig_codec compress_type;      /* none (default), zlib, zstd */
    uint8_t zlib_level;              /* 0..9, default 1 (0: stored) */
    uint8_t zstd_level;              /* 0..20, default 1 (0: libzstd's default level) */
    uint8_t compress_threads;        /* the sender's, default 8 */
    uint8_t decompress_threads;      /* the receiver's, default 2 */
    bool compress_wait_thread;       /* default true: false sends data stored when every
                                      * compression thread is busy */
    uint8_t multifd_channels;        /* connections with the multifd capability, default 2 */
    uint64_t max_bandwidth;          /* bytes per second, default 128 MiB/s; 0: no limit */
    uint64_t downtime_limit;         /* ms, default 300 */
    char tls_creds[128];             /* "": plain */
    char tls_hostname[256];          /* "": the host of the URI */
    /* auto-converge: once, twice in a row, users wrote more than throttle-trigger-threshold
     * percent of what a pass sent, their writes are throttled by cpu-throttle-initial
     * percent of the rate they wrote at, cpu-throttle-increment more each time again, up to
     * max-cpu-throttle (QEMU throttles vCPUs; for disks, the writes are what to slow). */
    uint8_t throttle_trigger_threshold;   /* 1..100, default 50 */
    uint8_t cpu_throttle_initial;         /* 1..99, default 20 */
    uint8_t cpu_throttle_increment;       /* 1..99, default 10 */
    uint8_t max_cpu_throttle;             /* cpu-throttle-initial..99, default 99 */
} vd_mig_params;

/* compress: the chunks are compressed with compress-type (zlib when none is set) on one
 * channel; multifd: multifd-channels channels, compressed with multifd-compression;
 * neither: one channel, nothing compressed (QEMU's rules). zero-blocks: data that reads as
 * zeros goes as a marker. events: MIGRATION and MIGRATION_PASS. pause-before-switchover:
 * the source stops in pre-switchover, users held, until vd_migration_continue.
 * auto-converge: writes are throttled when passes do not converge (vd_mig_params). */
typedef struct vd_mig_caps {
    bool compress, multifd, zero_blocks, events, pause_before_switchover, auto_converge;
} vd_mig_caps;

void vd_mig_params_init(vd_mig_params *p);
/* migrate-set-parameters' arguments (an object): every member checked with QEMU's
 * messages, all applied or none. */
int vd_mig_params_set(vd_mig_params *p, const vd_tree *args, vd_error **errp);
/* query-migrate-parameters' reply. Caller frees. */
vd_tree *vd_mig_params_query(const vd_mig_params *p);
/* The level of the compress-type in use. */
int vd_mig_params_level(const vd_mig_params *p);
/* migrate-set-capabilities' "capabilities" list of {capability, state}. */
int vd_mig_caps_set(vd_mig_caps *c, const vd_tree *list, vd_error **errp);
vd_tree *vd_mig_caps_query(const vd_mig_caps *c);

/* QEMU's MigrationStatus values that a disk migration passes through. */
typedef enum vd_mig_status {
    VD_MIG_STATUS_NONE,
    VD_MIG_STATUS_SETUP,
    VD_MIG_STATUS_CANCELLING,
    VD_MIG_STATUS_CANCELLED,
    VD_MIG_STATUS_ACTIVE,
    VD_MIG_STATUS_PRE_SWITCHOVER,
    VD_MIG_STATUS_DEVICE,
    VD_MIG_STATUS_COMPLETED,
    VD_MIG_STATUS_FAILED,
} vd_mig_status;
const char *vd_mig_status_name(vd_mig_status s);

/* query-migrate's figures (QEMU's MigrationInfo, its "disk" and "compression" members). */
typedef struct vd_mig_info {
    vd_mig_status status;
    uint64_t total_time_ms, setup_time_ms, downtime_ms;  /* downtime once completed */
    uint64_t expected_downtime_ms;
    uint64_t transferred;        /* bytes on the wire, all channels */
    uint64_t remaining;          /* dirty bytes not yet sent */
    uint64_t total;              /* the disks' sizes */
    uint64_t zero_bytes;         /* guest bytes sent as zero or hole markers */
    uint64_t normal_bytes;       /* guest bytes sent as data */
    uint64_t dirty_sync_count;   /* passes begun */
    uint64_t dirty_bytes_rate;   /* bytes per second written by users during the last pass */
    double mbps;                 /* wire throughput so far, megabits per second */
    uint64_t precopy_bytes, downtime_bytes;  /* wire bytes before and during the downtime */
    uint64_t compressed_chunks, compress_busy, compressed_size, compressed_input;
    unsigned throttle_pct;       /* auto-converge's throttle now (0: none) */
    char error[512];             /* a failure's reason ("" otherwise) */
} vd_mig_info;

/* One export of a node, re-made under the same id and name on the destination. */
typedef struct vd_mig_export {
    const char *id, *name;
    bool writable;
} vd_mig_export;

typedef struct vd_mig_disk_opts {
    const char *node_name;
    const vd_mig_export *exports;
    size_t nb_exports;
} vd_mig_disk_opts;

/* The sending side. */
typedef struct vd_migration vd_migration;
typedef struct vd_mig_send_opts {
    const char *uri;                       /* tcp:HOST:PORT, unix:PATH */
    vd_mig_params params;
    vd_mig_caps caps;
    const vd_tls_client_creds *tls;        /* params.tls_creds resolved; NULL: plain */
    const vd_mig_disk_opts *disks;
    size_t nb_disks;
    /* On the migration's thread, once the destination was told to take over and the
     * nodes refuse writes, before the status is completed (the daemon removes its
     * exports there). May be NULL. */
    void (*committed)(void *opaque);
    void *opaque;
} vd_mig_send_opts;
/* Checks what can be checked at once (the URI, the nodes: each opened and claimed for
 * reading, with resizes refused) and starts the migration's thread (status setup).
 * Failures after that end in status failed with the reason in the info. */
int vd_migration_start(vd_engine *e, const vd_mig_send_opts *o, vd_migration **out,
                       vd_error **errp);
/* migrate-cancel: a migration not yet completed ends cancelled, the source nodes as they
 * were (their held users let go). Returns at once. */
void vd_migration_cancel(vd_migration *m);
/* migrate-continue: a migration paused in pre-switchover goes on; -EINVAL with QEMU's
 * "Migration not in expected state: STATUS" otherwise. */
int vd_migration_continue(vd_migration *m, vd_error **errp);
void vd_migration_info(vd_migration *m, vd_mig_info *info);
/* Completed, failed or cancelled. */
bool vd_migration_finished(vd_migration *m);
/* Waits for the thread. After a completed migration the source's nodes are read-only
 * (QEMU inactivates its images); a node whose driver cannot be reopened refuses writes
 * until the migration is freed. */
void vd_migration_free(vd_migration *m);

/* The receiving side. The destination has a writable node of the same name and size for
 * each disk; the incoming side claims it for writing (nothing else may use it meanwhile)
 * and makes the exports only once the source committed. */
typedef struct vd_mig_incoming vd_mig_incoming;
typedef struct vd_mig_incoming_opts {
    const char *uri;
    vd_mig_params params;                  /* decompress-threads */
    vd_mig_caps caps;                      /* events */
    vd_tls_creds *tls;                     /* server credentials; NULL: plain */
    /* Called for each export the source announces, before any data: refuse what could
     * not be made (a name in use, no NBD server). */
    int (*check_export)(void *opaque, const char *node, const vd_mig_export *ex,
                        vd_error **errp);
    /* At commit, the disks complete and flushed: make the exports. */
    int (*make_export)(void *opaque, const char *node, const vd_mig_export *ex,
                       vd_error **errp);
    /* Called right after the flush that made every pass through `pass` durable on the
     * disks, before READY(pass) goes back to the source (docs/migration-stream.md), on one
     * of the incoming side's threads; nothing else may be done there. For tests that
     * record when the destination promised durability (tests/crash/migration.c). May be
     * NULL. */
    void (*durable)(void *opaque, uint32_t pass);
    void *opaque;
} vd_mig_incoming_opts;
/* Listens on the URI (refusing what cannot be listened on) and waits for the source on a
 * thread of its own. */
int vd_mig_incoming_start(vd_engine *e, const vd_mig_incoming_opts *o, vd_mig_incoming **out,
                          vd_error **errp);
void vd_mig_incoming_info(vd_mig_incoming *in, vd_mig_info *info);
bool vd_mig_incoming_finished(vd_mig_incoming *in);
/* Stops listening or receiving (the nodes are left unexposed) and waits for the thread. */
void vd_mig_incoming_free(vd_mig_incoming *in);

#endif
