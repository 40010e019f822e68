/* For the programs (vdisk, vdiskd, the crash harness): the environment variables that set
 * up an engine and an NBD server. The library reads no environment; the programs map
 * these onto vd_engine_settings and vd_nbd_server_opts. */
#ifndef VD_TOOLS_ENGINE_ENV_H
#define VD_TOOLS_ENGINE_ENV_H

#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"

/* A positive number no larger than max, else 0 (the default). */
static inline unsigned vd_env_count(const char *name, long max)
{
    const char *v = getenv(name);
    char *end = NULL;
    long n = v && *v ? strtol(v, &end, 10) : 0;
    return v && *v && end && *end == '\0' && n >= 1 && n <= max ? (unsigned)n : 0;
}

/* VDISK_THREADS: threads per compression batch, the caller included (1-1024).
 * VDISK_BLKDEBUG_COUNT: a file blkdebug filters append their request counts to (tests).
 * VDISK_TEST_BREAK_ORDERING=1: the crash harness's deliberately wrong write order.
 * VDISK_TEST_MIRROR_NO_WHOLE_CLUSTERS=1: the mirror's tests, without whole-cluster copies. */
static inline vd_engine_settings vd_engine_settings_from_env(void)
{
    const char *brk = getenv("VDISK_TEST_BREAK_ORDERING");
    const char *count = getenv("VDISK_BLKDEBUG_COUNT");
    const char *nwc = getenv("VDISK_TEST_MIRROR_NO_WHOLE_CLUSTERS");
    vd_engine_settings s = {
        .threads = vd_env_count("VDISK_THREADS", 1024),
        .blkdebug_count_file = count && *count ? count : NULL,
        .break_write_ordering = brk && !strcmp(brk, "1"),
        .mirror_no_whole_clusters = nwc && !strcmp(nwc, "1"),
    };
    return s;
}

/* VDISK_NBD_WORKERS: the NBD server's worker threads (1-256; 0: its default). */
static inline unsigned vd_nbd_workers_from_env(void)
{
    return vd_env_count("VDISK_NBD_WORKERS", 256);
}

#endif
