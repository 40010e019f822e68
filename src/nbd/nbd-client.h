/* The NBD client side that `vdisk nbd --list` needs: the handshake up to option haggling,
 * then LIST, INFO and LIST_META_CONTEXT for every export, then ABORT. Private to the
 * library and its fuzz target, which feeds it server bytes from memory. */
#ifndef VD_NBD_CLIENT_H
#define VD_NBD_CLIENT_H

#include <stddef.h>

#include "vdisk/nbd.h"

/* The transport: read fills exactly len bytes (returns 0, or -1 at end of file or on an
 * error, with *eof telling which), write sends them all (0 or -1). */
typedef struct nbd_client_io {
    int (*read)(void *opaque, void *buf, size_t len, bool *eof);
    int (*write)(void *opaque, const void *buf, size_t len);
    void *opaque;
} nbd_client_io;

int nbd_client_list(const nbd_client_io *io, vd_nbd_export_desc **out, size_t *nb,
                    vd_error **errp);

#endif
