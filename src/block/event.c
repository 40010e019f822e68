/* Named events for fault injection: a format driver announces what it is about to write
 * (vd_node_event(s->file, "l1_update")), and a filter below it may fail the next request. */
#include "block/block.h"

void vd_node_event(vd_node *n, const char *name)
{
    for (; n; n = n->file) {
        if (n->drv->event) {
            n->drv->event(n, name);
        }
    }
}
