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
#include "vdisk/migration.h"

/* The types and functions are public: vdisk/migration.h. */

#endif
