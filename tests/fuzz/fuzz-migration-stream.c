/* libFuzzer target for the migration stream's receiver side (src/migration/stream.c): the
 * input is a mode byte, then one channel as it arrives, the hello then chunk after chunk
 * (header, payload). With mode bit 0 the target first sets the hello's and each header's
 * checksum right, so the fuzzer gets past them to the checks behind.
 * Every refusal must say why; a header that decodes must encode back to the same bytes; a
 * data chunk that decodes must match its checksum; the disk table stays within its limits
 * and every range accepted lies inside its disk. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-require.h"
#include "migration/stream.h"
#include "util/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static vd_codec_ctx *decoder(vd_mig_codec c)
{
    static vd_codec_ctx *ctx[3];
    if (c == VD_MIG_CODEC_NONE) {
        return NULL;
    }
    if (!ctx[c]) {
        const vd_codec *impl = vd_mig_codec_impl(c);
        ctx[c] = vd_codec_ctx_new(impl, impl->default_level);
        REQUIRE(ctx[c]);
    }
    return ctx[c];
}

static void refused(vd_error *err)
{
    REQUIRE(err && vd_error_msg(err)[0]);
    vd_error_free(err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *out;
    static vd_mig_disks disks;
    if (!out) {
        out = malloc(VD_MIG_MAX_CHUNK);
        REQUIRE(out);
    }
    if (size < 1 + VD_MIG_HELLO_SIZE) {
        return 0;
    }
    bool fix_crcs = data[0] & 1;
    uint8_t *copy = malloc(size - 1);
    REQUIRE(copy);
    memcpy(copy, data + 1, size - 1);
    data = copy;
    size--;
    if (fix_crcs) {
        vd_put_be32(copy + 44, vd_mig_crc(copy, 44));
    }
    vd_error *err = NULL;
    vd_mig_hello h;
    if (vd_mig_hello_decode(data, &h, &err) < 0) {
        refused(err);
        free(copy);
        return 0;
    }
    REQUIRE(h.channel < h.nb_channels);
    memset(&disks, 0, sizeof(disks));
    vd_mig_channel ch = {0};
    size_t pos = VD_MIG_HELLO_SIZE;
    while (size - pos >= VD_MIG_HEADER_SIZE) {
        vd_mig_chunk c;
        if (fix_crcs) {
            vd_put_be32(copy + pos + 44, vd_mig_crc(copy + pos, 44));
        }
        if (vd_mig_header_decode(data + pos, &c, &err) < 0) {
            refused(err);
            break;
        }
        uint8_t again[VD_MIG_HEADER_SIZE];
        vd_mig_header_encode(&c, again);
        REQUIRE(!memcmp(again, data + pos, VD_MIG_HEADER_SIZE));
        pos += VD_MIG_HEADER_SIZE;
        if (vd_mig_chunk_check(&ch, &disks, &c, &err) < 0) {
            refused(err);
            break;
        }
        if (c.payload_len > size - pos) {
            break;                       /* truncated: the receiver waits for more */
        }
        const uint8_t *payload = data + pos;
        pos += c.payload_len;
        if (c.type == VD_MIG_DATA) {
            REQUIRE(c.length <= VD_MIG_MAX_CHUNK);
            if (vd_mig_payload_decode(decoder(c.codec), &c, payload, out, &err) < 0) {
                refused(err);
                break;
            }
            REQUIRE(vd_mig_crc(out, c.length) == c.data_crc);
        }
        if (c.type == VD_MIG_DATA || c.type == VD_MIG_ZERO || c.type == VD_MIG_HOLE) {
            REQUIRE(c.disk < disks.nb);
            REQUIRE(c.offset + c.length <= disks.disk[c.disk].size);
        }
        if (vd_mig_chunk_accept(&ch, &disks, &c, payload, &err) < 0) {
            refused(err);
            break;
        }
        REQUIRE(disks.nb <= VD_MIG_MAX_DISKS);
        REQUIRE(disks.nb == 0 || strlen(disks.disk[disks.nb - 1].name) <= VD_MIG_MAX_NAME);
        if (c.type == VD_MIG_EXPORT) {
            static char id[VD_MIG_MAX_EXPORT_ID + 1], name[VD_MIG_MAX_EXPORT_NAME + 1];
            REQUIRE(c.disk < disks.nb);
            if (vd_mig_export_parse(&c, payload, id, name, &err) < 0) {
                refused(err);
                break;
            }
            REQUIRE(strlen(id) >= 1 && strlen(id) + 1 + strlen(name) == c.payload_len);
        } else if (c.type == VD_MIG_ERROR) {
            static char text[VD_MIG_MAX_ERROR + 1];
            vd_mig_error_text(&c, payload, text);
            REQUIRE(strlen(text) == c.payload_len);
        }
    }
    free(copy);
    return 0;
}
