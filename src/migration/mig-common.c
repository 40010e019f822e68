/* Chunks on a connection, the clock and the events, for both sides of a migration. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "block/block.h"
#include "migration/mig-int.h"

uint64_t vd_mig_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int vd_mig_chunk_send(vd_mig_conn *conn, vd_mig_chunk *c, uint64_t *seq, const void *payload,
                      uint64_t *wire, vd_error **errp)
{
    uint8_t hdr[VD_MIG_HEADER_SIZE];
    c->seq = (*seq)++;
    vd_mig_header_encode(c, hdr);
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)payload, c->payload_len}};
    int r = vd_mig_conn_writev(conn, iov, c->payload_len ? 2 : 1, errp);
    if (r == 0 && wire) {
        __atomic_add_fetch(wire, sizeof(hdr) + c->payload_len, __ATOMIC_RELAXED);
    }
    return r;
}

int vd_mig_chunk_recv(vd_mig_conn *conn, vd_mig_chunk *c, uint8_t **payload, vd_error **errp)
{
    uint8_t hdr[VD_MIG_HEADER_SIZE];
    *payload = NULL;
    int r = vd_mig_conn_read(conn, hdr, sizeof(hdr), errp);
    if (r < 0 || (r = vd_mig_header_decode(hdr, c, errp)) < 0 || c->payload_len == 0) {
        return r;
    }
    /* The decoder bounded payload_len (8 MiB at most). */
    uint8_t *p = malloc(c->payload_len);
    if (!p) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "Out of memory");
    }
    r = vd_mig_conn_read(conn, p, c->payload_len, errp);
    if (r < 0) {
        free(p);
        return r;
    }
    *payload = p;
    return 0;
}

const char *vd_mig_status_name(vd_mig_status s)
{
    static const char *const names[] = {
        [VD_MIG_STATUS_NONE] = "none",
        [VD_MIG_STATUS_SETUP] = "setup",
        [VD_MIG_STATUS_CANCELLING] = "cancelling",
        [VD_MIG_STATUS_CANCELLED] = "cancelled",
        [VD_MIG_STATUS_ACTIVE] = "active",
        [VD_MIG_STATUS_PRE_SWITCHOVER] = "pre-switchover",
        [VD_MIG_STATUS_DEVICE] = "device",
        [VD_MIG_STATUS_COMPLETED] = "completed",
        [VD_MIG_STATUS_FAILED] = "failed",
    };
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "none";
}

void vd_mig_emit_status(vd_engine *e, vd_mig_status s)
{
    vd_event ev = {.type = "MIGRATION", .mig_status = vd_mig_status_name(s), .offset = -1,
                   .size = -1};
    vd_engine_emit(e, &ev);
}

void vd_mig_emit_pass(vd_engine *e, uint64_t pass)
{
    vd_event ev = {.type = "MIGRATION_PASS", .mig_pass = pass, .offset = -1, .size = -1};
    vd_engine_emit(e, &ev);
}
