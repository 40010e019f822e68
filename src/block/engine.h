/* The engine context and the driver list (one const array; nothing registers itself). */
#ifndef VD_ENGINE_H
#define VD_ENGINE_H

#include "block/block.h"
#include "compress/codec.h"
#include "compress/pool.h"

/* One registered set of client TLS credentials (strings owned). */
typedef struct vd_tls_client_entry {
    vd_tls_client_creds c;
    struct vd_tls_client_entry *next;
} vd_tls_client_entry;

struct vd_engine {
    vd_event_fn *event_fn;   /* the user's event handler, or NULL */
    void *event_opaque;
    vd_tls_client_entry *tls_clients;
    vd_pool *pool;           /* compression workers (started at the first batch) */
    vd_codec_cache *codecs;  /* idle codec contexts */
    char *blkdebug_count_file;
    bool break_write_ordering;
    const uint8_t *zeros;    /* VD_ENGINE_ZEROS read-only zero bytes (anonymous pages) */
    /* The graph of named nodes (graph.c): every change to it, to a registered node's
     * references and to the uses of a node takes graph_lock. */
    pthread_mutex_t graph_lock;
    vd_node *graph;          /* registered nodes, newest first */
    unsigned next_auto;      /* for "#blockNNN" */
    uint64_t err_seq;        /* orders the nodes' error messages (atomic) */
    /* Block jobs (src/jobs/): the list, oldest first, and the job threads still alive;
     * job_lock comes before any job's own lock. */
    pthread_mutex_t job_lock;
    pthread_cond_t job_cond;
    struct vd_job *jobs;
    unsigned job_threads;
    bool mirror_no_whole_clusters; /* test aid (vd_engine_settings) */
};

#define VD_ENGINE_ZEROS (4u << 20)

/* At least len (<= VD_ENGINE_ZEROS) zero bytes, never to be written, aligned for O_DIRECT;
 * NULL without an engine. */
static inline const uint8_t *vd_engine_zeros(const vd_engine *e, size_t len)
{
    return e && len <= VD_ENGINE_ZEROS ? e->zeros : NULL;
}

/* The engine's pool and codec cache, or NULL for a node opened without an engine (a
 * format probe): then the callers run alone and make contexts as they go. */
static inline vd_pool *vd_engine_pool(const vd_engine *e)
{
    return e ? e->pool : NULL;
}

static inline vd_codec_cache *vd_engine_codecs(const vd_engine *e)
{
    return e ? e->codecs : NULL;
}

extern const vd_driver *const vd_drivers[];

#endif
