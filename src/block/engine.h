/* The engine context and the driver list (one const array; nothing registers itself). */
#ifndef VD_ENGINE_H
#define VD_ENGINE_H

#include "block/block.h"

/* One registered set of client TLS credentials (strings owned). */
typedef struct vd_tls_client_entry {
    vd_tls_client_creds c;
    struct vd_tls_client_entry *next;
} vd_tls_client_entry;

struct vd_engine {
    vd_event_fn *event_fn;   /* the user's event handler, or NULL */
    void *event_opaque;
    vd_tls_client_entry *tls_clients;
};

extern const vd_driver *const vd_drivers[];

#endif
