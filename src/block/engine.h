/* The engine context and the driver list (one const array; nothing registers itself). */
#ifndef VD_ENGINE_H
#define VD_ENGINE_H

#include "block/block.h"

struct vd_engine {
    vd_event_fn *event_fn;   /* the user's event handler, or NULL */
    void *event_opaque;
};

extern const vd_driver *const vd_drivers[];

#endif
