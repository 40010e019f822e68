/* libFuzzer target for the qcow2 snapshot table: the input is the table's bytes; the first
 * two bytes choose the entry count and the decoding mode (strict, as at open; tolerant with
 * repair, as check -r all; with a fetch callback serving bytes past the buffer, as check
 * reads them). A table that decodes must encode and decode again to the same entries. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void note(void *opaque, const char *msg)
{
    (void)opaque;
    (void)msg;
}

/* Bytes past the buffer read as zeros, as past the end of a file. */
static int fetch(void *opaque, uint64_t off, void *buf, size_t len)
{
    (void)opaque;
    (void)off;
    if (len > (64u << 20)) {
        return -EFBIG;
    }
    memset(buf, 0, len);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    uint32_t nb = data[0] % 64;
    uint8_t mode = data[1];
    data += 2;
    size -= 2;
    qcow2_header h;
    memset(&h, 0, sizeof(h));
    h.version = (mode & 4) ? 2 : 3;
    h.cluster_bits = 16;
    h.size = 1ull << 30;
    h.refcount_order = 4;
    qcow2_snapshot_decode_opts o = {.no_l1_checks = mode & 1, .repair = mode & 2,
                                    .note = note, .fetch = (mode & 8) ? fetch : NULL};
    qcow2_snapshot *sn = NULL;
    uint32_t kept = 0;
    uint64_t len = 0;
    vd_error *err = NULL;
    if (qcow2_snapshots_decode_ex(data, size, nb, &h, "fuzz", (mode & 16) ? NULL : &o, &sn,
                                  &kept, &len, NULL, &err) < 0) {
        vd_error_free(err);
        return 0;
    }
    for (uint32_t i = 0; i < kept; i++) {
        /* What vdisk writes keeps at most 127/255 bytes of id/name; longer ones are not
         * re-encoded here. */
        if (strlen(sn[i].id) > 127 || strlen(sn[i].name) > 255 ||
            sn[i].extra_data_size > 1024) {
            qcow2_snapshots_free(sn, kept);
            return 0;
        }
    }
    uint64_t elen = qcow2_snapshots_encoded_len(sn, kept);
    uint8_t *buf = malloc(elen ? elen : 1);
    if (!buf) {
        abort();
    }
    qcow2_snapshots_encode(sn, kept, buf);
    /* Read back with the same L1 leniency (a repaired table is already repaired). */
    qcow2_snapshot_decode_opts o2 = {.no_l1_checks = mode & 1};
    qcow2_snapshot *again = NULL;
    uint32_t akept = 0;
    uint64_t alen = 0;
    if (qcow2_snapshots_decode_ex(buf, elen, kept, &h, "fuzz", &o2, &again, &akept, &alen,
                                  NULL, &err) < 0 || akept != kept || alen != elen) {
        abort();   /* vdisk wrote a table it cannot read back */
    }
    if (again) {
        for (uint32_t i = 0; i < kept; i++) {
            if (strcmp(again[i].id, sn[i].id) || strcmp(again[i].name, sn[i].name) ||
                again[i].l1_table_offset != sn[i].l1_table_offset ||
                again[i].l1_size != sn[i].l1_size ||
                again[i].vm_state_size != sn[i].vm_state_size ||
                again[i].date_sec != sn[i].date_sec) {
                abort();
            }
        }
        qcow2_snapshots_free(again, kept);
    }
    vd_error_free(err);
    free(buf);
    qcow2_snapshots_free(sn, kept);
    return 0;
}
