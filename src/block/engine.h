/* The engine context and the driver list (one const array; nothing registers itself). */
#ifndef VD_ENGINE_H
#define VD_ENGINE_H

#include "block/block.h"

struct vd_engine {
    int reserved;  /* node table, worker pool and event bus arrive with the daemon */
};

extern const vd_driver *const vd_drivers[];

#endif
