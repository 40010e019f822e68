/* Migration parameters and capabilities with QEMU's names (migrate-set-parameters,
 * query-migrate-parameters, migrate-set-capabilities): set as QEMU sets them (the new
 * values applied to a copy, the copy checked, then kept), checked with QEMU 7.2's messages,
 * plus the seed's compress-type and its per-type compress-level. QEMU 7.2's multifd names
 * are the same settings: multifd-compression is compress-type, multifd-zlib-level and
 * multifd-zstd-level are compress-level for that type. */
#ifndef VD_MIGRATION_PARAMS_H
#define VD_MIGRATION_PARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "migration/stream.h"
#include "vdisk/tree.h"

#define VD_MIG_MAX_DOWNTIME_MS 2000000u   /* QEMU's MAX_MIGRATE_DOWNTIME */

typedef struct vd_mig_params {
    vd_mig_codec compress_type;      /* none (default), zlib, zstd */
    uint8_t zlib_level;              /* 0..9, default 1 (0: stored) */
    uint8_t zstd_level;              /* 0..20, default 1 (0: libzstd's default level) */
    uint8_t compress_threads;        /* the sender's, default 8 */
    uint8_t decompress_threads;      /* the receiver's, default 2 */
    bool compress_wait_thread;       /* default true */
    uint8_t multifd_channels;        /* connections, default 2 */
    uint64_t max_bandwidth;          /* bytes per second, default 128 MiB/s */
    uint64_t downtime_limit;         /* ms, default 300 */
    char tls_creds[128];             /* "" : none */
} vd_mig_params;

typedef struct vd_mig_caps {
    bool compress, multifd, zero_blocks, events;
} vd_mig_caps;

void vd_mig_params_init(vd_mig_params *p);
/* migrate-set-parameters' arguments (a JSON object): every member checked, all applied or
 * none. */
int vd_mig_params_set(vd_mig_params *p, const vd_tree *args, vd_error **errp);
/* query-migrate-parameters' reply (QEMU 7.2's members and the seed's). Caller frees. */
vd_tree *vd_mig_params_query(const vd_mig_params *p);
/* The level of the compress-type in use. */
int vd_mig_params_level(const vd_mig_params *p);

/* migrate-set-capabilities' "capabilities" list of {capability, state}. */
int vd_mig_caps_set(vd_mig_caps *c, const vd_tree *list, vd_error **errp);
vd_tree *vd_mig_caps_query(const vd_mig_caps *c);

#endif
