/* The engine context and the list of built-in drivers. */
#include <stdlib.h>

#include "block/engine.h"

extern const vd_driver vd_file_driver;
extern const vd_driver vd_raw_driver;
extern const vd_driver vd_qcow2_driver;
extern const vd_driver vd_blkdebug_driver;
extern const vd_driver vd_logwrites_driver;

const vd_driver *const vd_drivers[] = {
    &vd_file_driver,
    &vd_raw_driver,
    &vd_qcow2_driver,
    &vd_blkdebug_driver,
    &vd_logwrites_driver,
    NULL,
};

vd_engine *vd_engine_new(void)
{
    vd_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        abort();
    }
    return e;
}

void vd_engine_free(vd_engine *e)
{
    free(e);
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
