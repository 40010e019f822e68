/* What the sending (send.c) and receiving (recv.c) sides of a migration share: chunks on
 * a connection, the clock, the status names. */
#ifndef VD_MIGRATION_INT_H
#define VD_MIGRATION_INT_H

#include <stdint.h>

#include "migration/stream.h"
#include "migration/transport.h"
#include "vdisk/migration.h"

#define VD_MIG_CONNECT_MS 10000      /* connect and TLS handshake */
#define VD_MIG_DEAD_MS 10000         /* a peer that acknowledges nothing this long is gone */

uint64_t vd_mig_now_ns(void);

/* Writes one chunk (header, then payload_len bytes of payload) with the next sequence
 * number of *seq; adds the bytes to *wire (atomically). */
int vd_mig_chunk_send(vd_mig_conn *conn, vd_mig_chunk *c, uint64_t *seq, const void *payload,
                      uint64_t *wire, vd_error **errp);
/* Reads and decodes one chunk header and its payload (malloc'd into *payload, NULL when
 * there is none; the caller frees it). Checks nothing against a channel. */
int vd_mig_chunk_recv(vd_mig_conn *conn, vd_mig_chunk *c, uint8_t **payload, vd_error **errp);

/* The engine's MIGRATION / MIGRATION_PASS events. */
void vd_mig_emit_status(vd_engine *e, vd_mig_status s);
void vd_mig_emit_pass(vd_engine *e, uint64_t pass);

#endif
