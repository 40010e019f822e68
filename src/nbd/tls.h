/* The server side of a TLS session with a daemon's credentials (src/nbd/tls.c), shared by
 * NBD's STARTTLS and migration's incoming channels so both check peers the same way. */
#ifndef VD_NBD_TLS_H
#define VD_NBD_TLS_H

#include <gnutls/gnutls.h>

#include "vdisk/nbd.h"

/* A server session on the connected fd with creds' priorities and credentials, handshake
 * done within timeout_ms (<= 0: no limit) and, when creds verify peers, the client's
 * certificate checked against the CA. The fd stays the caller's; on failure nothing is
 * left to free and *errp says "TLS handshake failed: ...". */
int tls_server_session_start(vd_tls_creds *creds, int fd, int timeout_ms,
                             gnutls_session_t *out, vd_error **errp);

#endif
