/* The engine context and the list of built-in drivers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "block/engine.h"
#include "vdisk/job.h"

extern const vd_driver vd_file_driver;
extern const vd_driver vd_host_device_driver;
extern const vd_driver vd_host_cdrom_driver;
extern const vd_driver vd_raw_driver;
extern const vd_driver vd_qcow2_driver;
extern const vd_driver vd_blkdebug_driver;
extern const vd_driver vd_logwrites_driver;
extern const vd_driver vd_null_co_driver;
extern const vd_driver vd_copy_on_read_driver;
extern const vd_driver vd_compress_driver;
extern const vd_driver vd_null_aio_driver;
extern const vd_driver vd_nbd_driver;
extern const vd_driver vd_cbw_driver;
extern const vd_driver vd_snapshot_access_driver;
extern const vd_driver vd_replication_driver;
extern const vd_driver vd_quorum_driver;
#ifdef VD_HAVE_RBD
extern const vd_driver vd_rbd_driver;
#endif

const vd_driver *const vd_drivers[] = {
    &vd_file_driver,
    &vd_host_device_driver,
    &vd_host_cdrom_driver,
    &vd_raw_driver,
    &vd_qcow2_driver,
    &vd_blkdebug_driver,
    &vd_logwrites_driver,
    &vd_null_co_driver,
    &vd_copy_on_read_driver,
    &vd_compress_driver,
    &vd_null_aio_driver,
    &vd_nbd_driver,
    &vd_cbw_driver,
    &vd_snapshot_access_driver,
    &vd_replication_driver,
    &vd_quorum_driver,
#ifdef VD_HAVE_RBD
    &vd_rbd_driver,
#endif
    NULL,
};

vd_engine *vd_engine_new(void)
{
    return vd_engine_new_with(NULL);
}

vd_engine *vd_engine_new_with(const vd_engine_settings *settings)
{
    vd_engine_settings none = {0};
    const vd_engine_settings *st = settings ? settings : &none;
    vd_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        abort();
    }
    /* Read-only anonymous pages all map the kernel's zero page: no memory is spent. */
    void *z = mmap(NULL, VD_ENGINE_ZEROS, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (z == MAP_FAILED) {
        abort();
    }
    e->zeros = z;
    pthread_mutex_init(&e->graph_lock, NULL);
    pthread_mutex_init(&e->job_lock, NULL);
    pthread_cond_init(&e->job_cond, NULL);
    e->mirror_no_whole_clusters = st->mirror_no_whole_clusters;
    e->pool = vd_pool_new(st->threads);
    e->codecs = vd_codec_cache_new();
    e->break_write_ordering = st->break_write_ordering;
    if (st->blkdebug_count_file && !(e->blkdebug_count_file =
                                         strdup(st->blkdebug_count_file))) {
        abort();
    }
    return e;
}

void vd_engine_free(vd_engine *e)
{
    if (!e) {
        return;
    }
    vd_jobs_cancel_all(e);
    /* The registry's references go; nodes a handle still holds stay until it closes. */
    for (;;) {
        pthread_mutex_lock(&e->graph_lock);
        vd_node *n = e->graph;
        while (n && !n->added) {
            n = n->graph_next;
        }
        if (n) {
            n->added = false;
        }
        pthread_mutex_unlock(&e->graph_lock);
        if (!n) {
            break;
        }
        vd_node_close(n);
    }
    pthread_mutex_destroy(&e->graph_lock);
    pthread_mutex_destroy(&e->job_lock);
    pthread_cond_destroy(&e->job_cond);
    munmap((void *)e->zeros, VD_ENGINE_ZEROS);
    vd_pool_free(e->pool);
    vd_codec_cache_free(e->codecs);
    free(e->blkdebug_count_file);
    while (e->tls_clients) {
        vd_tls_client_entry *t = e->tls_clients;
        e->tls_clients = t->next;
        free((char *)t->c.id);
        free((char *)t->c.dir);
        free((char *)t->c.username);
        free(t);
    }
    free(e);
}

static char *dup_or_null(const char *s)
{
    char *p = s ? strdup(s) : NULL;
    if (s && !p) {
        abort();
    }
    return p;
}

int vd_engine_add_tls_client_creds(vd_engine *e, const vd_tls_client_creds *c,
                                   vd_error **errp)
{
    if (!c->id || !c->dir) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is missing",
                            c->id ? "dir" : "id");
    }
    if (vd_engine_tls_client_creds(e, c->id)) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "attempt to add duplicate property "
                            "'%s' to object", c->id);
    }
    vd_tls_client_entry *t = calloc(1, sizeof(*t));
    if (!t) {
        abort();
    }
    t->c = *c;
    t->c.id = dup_or_null(c->id);
    t->c.dir = dup_or_null(c->dir);
    t->c.username = dup_or_null(c->username);
    t->next = e->tls_clients;
    e->tls_clients = t;
    return 0;
}

const vd_tls_client_creds *vd_engine_tls_client_creds(vd_engine *e, const char *id)
{
    for (vd_tls_client_entry *t = e ? e->tls_clients : NULL; t; t = t->next) {
        if (!strcmp(t->c.id, id)) {
            return &t->c;
        }
    }
    return NULL;
}

void vd_engine_set_event_handler(vd_engine *e, vd_event_fn *fn, void *opaque)
{
    e->event_fn = fn;
    e->event_opaque = opaque;
}

void vd_engine_emit(vd_engine *e, const vd_event *ev)
{
    if (e && e->event_fn) {
        e->event_fn(e->event_opaque, ev);
    }
}
