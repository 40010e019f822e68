/* libFuzzer target for the qcow2 header parser: each input is cluster 0 of an image (and
 * the first 8 bytes choose the file length the offsets are checked against). A header that
 * decodes must encode again, and the encoding must decode to the same fields: what vdisk
 * writes back (amend, dirty bit, corrupt bit) is what it read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8) {
        return 0;
    }
    uint64_t file_len = vd_be64(data) & ((1ull << 40) - 1);
    data += 8;
    size -= 8;
    qcow2_header h;
    memset(&h, 0, sizeof(h));
    vd_error *err = NULL;
    if (qcow2_header_decode(data, size, file_len, "fuzz", &h, &err) < 0) {
        if (!err || !vd_error_msg(err)[0]) {
            abort();   /* every refusal names what is wrong */
        }
        vd_error_free(err);
        qcow2_header_clear(&h);
        return 0;
    }
    size_t cs = (size_t)qcow2_cluster_size(&h);
    uint8_t *buf = calloc(1, cs);
    if (!buf) {
        abort();
    }
    if (qcow2_header_encode(&h, buf, cs) == 0) {
        qcow2_header again;
        memset(&again, 0, sizeof(again));
        if (qcow2_header_decode(buf, cs, file_len, "fuzz", &again, &err) < 0) {
            abort();   /* vdisk wrote a header it cannot read */
        }
        if (again.version != h.version || again.cluster_bits != h.cluster_bits ||
            again.size != h.size || again.l1_size != h.l1_size ||
            again.l1_table_offset != h.l1_table_offset ||
            again.refcount_table_offset != h.refcount_table_offset ||
            again.nb_snapshots != h.nb_snapshots ||
            again.snapshots_offset != h.snapshots_offset ||
            again.incompatible_features != h.incompatible_features ||
            again.refcount_order != h.refcount_order) {
            abort();   /* the round trip changed a field */
        }
        qcow2_header_clear(&again);
    }
    free(buf);
    qcow2_header_clear(&h);
    return 0;
}
