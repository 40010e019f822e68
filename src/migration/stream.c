/* The migration stream's framing (stream.h; the format in docs/migration-stream.md). All
 * integers are big-endian. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <isa-l/crc.h>

#include "migration/stream.h"
#include "util/common.h"

/* The standard CRC-32C (Castagnoli; "123456789" gives 0xe3069283). ISA-L's function
 * leaves the initial and final inversions to its caller, and takes an int length: large
 * buffers go in pieces. */
uint32_t vd_mig_crc(const uint8_t *buf, size_t len)
{
    uint32_t crc = 0xffffffffu;
    while (len > 0) {
        int n = len > (1u << 30) ? 1 << 30 : (int)len;
        crc = crc32_iscsi((unsigned char *)buf, n, crc);
        buf += n;
        len -= (size_t)n;
    }
    return ~crc;
}

const char *vd_mig_codec_name(vd_mig_codec c)
{
    switch (c) {
    case VD_MIG_CODEC_NONE:
        return "none";
    case VD_MIG_CODEC_ZLIB:
        return "zlib";
    case VD_MIG_CODEC_ZSTD:
        return "zstd";
    }
    return NULL;
}

const vd_codec *vd_mig_codec_impl(vd_mig_codec c)
{
    switch (c) {
    case VD_MIG_CODEC_ZLIB:
        return vd_codec_by_id(VD_CODEC_DEFLATE);
    case VD_MIG_CODEC_ZSTD:
        return vd_codec_by_id(VD_CODEC_ZSTD);
    default:
        return NULL;
    }
}

/* ---- the hello ------------------------------------------------------------------------------ */

void vd_mig_hello_encode(const vd_mig_hello *h, uint8_t out[VD_MIG_HELLO_SIZE])
{
    memset(out, 0, VD_MIG_HELLO_SIZE);
    vd_put_be64(out, VD_MIG_MAGIC);
    vd_put_be32(out + 8, VD_MIG_VERSION);
    vd_put_be32(out + 12, h->flags);
    memcpy(out + 16, h->migration_id, 16);
    vd_put_be16(out + 32, h->channel);
    vd_put_be16(out + 34, h->nb_channels);
    vd_put_be32(out + 44, vd_mig_crc(out, 44));
}

int vd_mig_hello_decode(const uint8_t in[VD_MIG_HELLO_SIZE], vd_mig_hello *h, vd_error **errp)
{
    if (vd_be64(in) != VD_MIG_MAGIC) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "not a vdisk migration stream "
                            "(bad magic)");
    }
    if (vd_be32(in + 44) != vd_mig_crc(in, 44)) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: the channel "
                            "header's checksum does not match");
    }
    uint32_t version = vd_be32(in + 8);
    if (version != VD_MIG_VERSION) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, EPROTO, "migration stream version %"
                            PRIu32 " is not supported (this side speaks %u)", version,
                            VD_MIG_VERSION);
    }
    h->flags = vd_be32(in + 12);
    memcpy(h->migration_id, in + 16, 16);
    h->channel = vd_be16(in + 32);
    h->nb_channels = vd_be16(in + 34);
    if (h->flags) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, EPROTO, "migration stream: unknown "
                            "channel flags %#" PRIx32, h->flags);
    }
    if (h->nb_channels < 1 || h->nb_channels > VD_MIG_MAX_CHANNELS ||
        h->channel >= h->nb_channels) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: channel %u of "
                            "%u is not a valid channel", h->channel, h->nb_channels);
    }
    for (int i = 36; i < 44; i++) {
        if (in[i]) {
            return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: reserved "
                                "bytes of the channel header are not zero");
        }
    }
    return 0;
}

/* ---- chunk headers -------------------------------------------------------------------------- */

void vd_mig_header_encode(const vd_mig_chunk *c, uint8_t out[VD_MIG_HEADER_SIZE])
{
    vd_put_be32(out, VD_MIG_CHUNK_MAGIC);
    out[4] = (uint8_t)c->type;
    out[5] = (uint8_t)c->codec;
    vd_put_be16(out + 6, c->disk);
    vd_put_be64(out + 8, c->seq);
    vd_put_be64(out + 16, c->offset);
    vd_put_be64(out + 24, c->length);
    vd_put_be32(out + 32, c->payload_len);
    vd_put_be32(out + 36, c->data_crc);
    vd_put_be32(out + 40, c->pass);
    vd_put_be32(out + 44, vd_mig_crc(out, 44));
}

static const char *type_name(vd_mig_type t)
{
    static const char *const names[] = {"?", "disk", "data", "zero", "hole", "sync", "flush",
                                        "end", "export", "ready", "commit", "error"};
    return t >= VD_MIG_DISK && t <= VD_MIG_ERROR ? names[t] : "?";
}

static int bad(vd_error **errp, const vd_mig_chunk *c, const char *what)
{
    return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %" PRIu64
                        " (%s): %s", c->seq, type_name(c->type), what);
}

/* The fields a type allows (the rest must be zero). */
static int check_fields(const vd_mig_chunk *c, vd_error **errp)
{
    bool marker = c->type == VD_MIG_ZERO || c->type == VD_MIG_HOLE;
    bool control = c->type == VD_MIG_SYNC || c->type == VD_MIG_FLUSH ||
                   c->type == VD_MIG_END || c->type == VD_MIG_READY ||
                   c->type == VD_MIG_COMMIT;
    if (c->type != VD_MIG_DATA && c->codec != VD_MIG_CODEC_NONE) {
        return bad(errp, c, "only data chunks are compressed");
    }
    if (c->disk >= VD_MIG_MAX_DISKS) {
        return bad(errp, c, "the disk index is out of range");
    }
    if ((marker || control) && (c->payload_len || c->data_crc)) {
        return bad(errp, c, "a marker carries no payload");
    }
    if (control && (c->disk || c->offset || c->length)) {
        return bad(errp, c, "a control chunk names no range");
    }
    if (c->type == VD_MIG_EXPORT) {
        if (c->length || c->offset & ~(uint64_t)VD_MIG_EXPORT_WRITABLE ||
            c->payload_len < 2 ||
            c->payload_len > VD_MIG_MAX_EXPORT_ID + 1 + VD_MIG_MAX_EXPORT_NAME) {
            return bad(errp, c, "an export chunk carries flags, an id and a name, no range");
        }
        return 0;
    }
    if (c->type == VD_MIG_ERROR) {
        if (c->disk || c->offset || c->length || c->payload_len < 1 ||
            c->payload_len > VD_MIG_MAX_ERROR) {
            return bad(errp, c, "an error chunk carries a message of 1 to 1024 bytes only");
        }
        return 0;
    }
    if (c->type == VD_MIG_DISK) {
        if (c->length || c->payload_len < 1 || c->payload_len > VD_MIG_MAX_NAME) {
            return bad(errp, c, "a disk chunk carries a name of 1 to 31 bytes and no range");
        }
        if (c->offset > INT64_MAX) {
            return bad(errp, c, "the disk size is too large");
        }
        return 0;
    }
    if (marker || c->type == VD_MIG_DATA) {
        if (c->length == 0 || c->offset > INT64_MAX || c->length > INT64_MAX - c->offset) {
            return bad(errp, c, "the range is empty or past the largest disk");
        }
    }
    if (c->type == VD_MIG_DATA) {
        if (c->length > VD_MIG_MAX_CHUNK) {
            return bad(errp, c, "a data chunk covers more than 8 MiB");
        }
        if (c->codec == VD_MIG_CODEC_NONE ? c->payload_len != c->length
                                          : c->payload_len == 0 || c->payload_len >= c->length) {
            return bad(errp, c, "the payload length does not fit the chunk's length and "
                       "codec");
        }
    }
    return 0;
}

int vd_mig_header_decode(const uint8_t in[VD_MIG_HEADER_SIZE], vd_mig_chunk *c,
                         vd_error **errp)
{
    if (vd_be32(in) != VD_MIG_CHUNK_MAGIC) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: a chunk header "
                            "has a bad magic (the stream is out of step)");
    }
    if (vd_be32(in + 44) != vd_mig_crc(in, 44)) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: a chunk "
                            "header's checksum does not match");
    }
    memset(c, 0, sizeof(*c));
    c->seq = vd_be64(in + 8);
    if (in[4] < VD_MIG_DISK || in[4] > VD_MIG_ERROR) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %" PRIu64
                            " has an unknown type %u", c->seq, in[4]);
    }
    c->type = (vd_mig_type)in[4];
    if (in[5] > VD_MIG_CODEC_ZSTD) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %" PRIu64
                            " has an unknown codec %u", c->seq, in[5]);
    }
    c->codec = (vd_mig_codec)in[5];
    c->disk = vd_be16(in + 6);
    c->offset = vd_be64(in + 16);
    c->length = vd_be64(in + 24);
    c->payload_len = vd_be32(in + 32);
    c->data_crc = vd_be32(in + 36);
    c->pass = vd_be32(in + 40);
    return check_fields(c, errp);
}

/* ---- a channel ------------------------------------------------------------------------------ */

int vd_mig_chunk_check(const vd_mig_channel *ch, const vd_mig_disks *disks,
                       const vd_mig_chunk *c, vd_error **errp)
{
    if (ch->ended) {
        return bad(errp, c, "the channel already ended");
    }
    if (c->seq != ch->next_seq) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %" PRIu64
                            " came where chunk %" PRIu64 " was due (lost or reordered)",
                            c->seq, ch->next_seq);
    }
    if (c->type == VD_MIG_DISK) {
        return c->disk == disks->nb && disks->nb < VD_MIG_MAX_DISKS
                   ? 0 : bad(errp, c, "disks are announced once each, in order");
    }
    if (c->type == VD_MIG_EXPORT && c->disk >= disks->nb) {
        return bad(errp, c, "it names a disk that was not announced");
    }
    if (c->type == VD_MIG_DATA || c->type == VD_MIG_ZERO || c->type == VD_MIG_HOLE) {
        if (c->disk >= disks->nb) {
            return bad(errp, c, "it names a disk that was not announced");
        }
        if (c->offset + c->length > disks->disk[c->disk].size) {
            return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %"
                                PRIu64 " (%s) reaches past the end of disk '%s' (%" PRIu64
                                " + %" PRIu64 " > %" PRIu64 ")", c->seq, type_name(c->type),
                                disks->disk[c->disk].name, c->offset, c->length,
                                disks->disk[c->disk].size);
        }
    }
    return 0;
}

/* QEMU's node names: a letter first, then letters, digits, '-', '.', '_'. */
static bool node_name_ok(const uint8_t *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t ch = s[i];
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        bool other = (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_';
        if (!(alpha || (i > 0 && other))) {
            return false;
        }
    }
    return len > 0;
}

int vd_mig_chunk_accept(vd_mig_channel *ch, vd_mig_disks *disks, const vd_mig_chunk *c,
                        const uint8_t *payload, vd_error **errp)
{
    if (c->type == VD_MIG_DISK) {
        if (vd_mig_crc(payload, c->payload_len) != c->data_crc) {
            return bad(errp, c, "the disk name's checksum does not match");
        }
        if (!node_name_ok(payload, c->payload_len)) {
            return bad(errp, c, "the disk name is not a node name");
        }
        for (unsigned i = 0; i < disks->nb; i++) {
            if (strlen(disks->disk[i].name) == c->payload_len &&
                !memcmp(disks->disk[i].name, payload, c->payload_len)) {
                return bad(errp, c, "the disk was announced already");
            }
        }
        vd_mig_disk *d = &disks->disk[disks->nb++];
        memcpy(d->name, payload, c->payload_len);
        d->name[c->payload_len] = '\0';
        d->size = c->offset;
    }
    if ((c->type == VD_MIG_EXPORT || c->type == VD_MIG_ERROR) &&
        vd_mig_crc(payload, c->payload_len) != c->data_crc) {
        return bad(errp, c, "the payload's checksum does not match");
    }
    ch->ended = c->type == VD_MIG_END || c->type == VD_MIG_COMMIT;
    ch->next_seq++;
    return 0;
}

int vd_mig_export_parse(const vd_mig_chunk *c, const uint8_t *payload, char *id, char *name,
                        vd_error **errp)
{
    const uint8_t *nul = memchr(payload, 0, c->payload_len);
    size_t id_len = nul ? (size_t)(nul - payload) : 0;
    size_t name_len = nul ? c->payload_len - id_len - 1 : 0;
    if (!nul || id_len < 1 || id_len > VD_MIG_MAX_EXPORT_ID ||
        name_len > VD_MIG_MAX_EXPORT_NAME || memchr(nul + 1, 0, name_len)) {
        return bad(errp, c, "the export's id and name are malformed");
    }
    memcpy(id, payload, id_len);
    id[id_len] = '\0';
    memcpy(name, nul + 1, name_len);
    name[name_len] = '\0';
    if (!vd_id_wellformed(id)) {
        return bad(errp, c, "the export's id is not a valid id");
    }
    return 0;
}

void vd_mig_error_text(const vd_mig_chunk *c, const uint8_t *payload, char *out)
{
    size_t n = c->payload_len > VD_MIG_MAX_ERROR ? VD_MIG_MAX_ERROR : c->payload_len;
    for (size_t i = 0; i < n; i++) {
        out[i] = payload[i] >= 0x20 && payload[i] < 0x7f ? (char)payload[i] : '?';
    }
    out[n] = '\0';
}

/* ---- payloads ------------------------------------------------------------------------------- */

int vd_mig_payload_encode(vd_codec_ctx *ctx, vd_mig_codec codec, const uint8_t *data,
                          size_t len, uint8_t *out, size_t cap, vd_mig_chunk *c)
{
    if (len == 0 || len > VD_MIG_MAX_CHUNK || cap < len) {
        return -EINVAL;
    }
    c->data_crc = vd_mig_crc(data, len);
    if (ctx && codec != VD_MIG_CODEC_NONE && len > 1) {
        ssize_t n = vd_codec_compress(ctx, data, len, out, len - 1);
        if (n > 0) {
            c->codec = codec;
            c->payload_len = (uint32_t)n;
            return 0;
        }
        if (n != -ENOSPC) {
            return (int)n;
        }
    }
    memcpy(out, data, len);
    c->codec = VD_MIG_CODEC_NONE;
    c->payload_len = (uint32_t)len;
    return 0;
}

int vd_mig_payload_decode(vd_codec_ctx *ctx, const vd_mig_chunk *c, const uint8_t *payload,
                          uint8_t *out, vd_error **errp)
{
    if (c->codec == VD_MIG_CODEC_NONE) {
        memcpy(out, payload, c->length);
    } else {
        if (!ctx || vd_codec_ctx_codec(ctx) != vd_mig_codec_impl(c->codec)) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "migration stream: chunk %"
                                PRIu64 " needs a %s decoder", c->seq,
                                vd_mig_codec_name(c->codec));
        }
        if (vd_codec_decompress(ctx, payload, c->payload_len, out, c->length) < 0) {
            return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %"
                                PRIu64 ": the %s data of disk %u at offset %" PRIu64
                                " is corrupt", c->seq, vd_mig_codec_name(c->codec), c->disk,
                                c->offset);
        }
    }
    if (vd_mig_crc(out, c->length) != c->data_crc) {
        return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %" PRIu64
                            ": checksum mismatch in disk %u at offset %" PRIu64, c->seq,
                            c->disk, c->offset);
    }
    return 0;
}
