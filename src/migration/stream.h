/* The migration stream's framing (docs/migration-stream.md): the hello that opens each
 * channel and the 48-byte chunk header, encoded and decoded by pure functions, and a
 * chunk's payload compressed or checked. Everything a receiver reads is untrusted: every
 * decoder checks what it reads before anyone uses it and names what is wrong. */
#ifndef VD_MIGRATION_STREAM_H
#define VD_MIGRATION_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compress/codec.h"
#include "vdisk/migration.h"
#include "vdisk/vdisk.h"

#define VD_MIG_MAGIC 0x5644534b4d494752ull /* "VDSKMIGR" */
#define VD_MIG_CHUNK_MAGIC 0x43484e4bu     /* "CHNK" */
#define VD_MIG_VERSION 1u
#define VD_MIG_HELLO_SIZE 48u
#define VD_MIG_HEADER_SIZE 48u
#define VD_MIG_MAX_CHUNK (8u << 20)        /* guest bytes one data chunk carries at most */
#define VD_MIG_MAX_CHANNELS 255u
#define VD_MIG_MAX_DISKS 256u
#define VD_MIG_MAX_NAME 31u                /* QEMU's longest node name */

/* What opens every channel. */
typedef struct vd_mig_hello {
    uint8_t migration_id[16];   /* ties the channels of one migration together */
    uint16_t channel, nb_channels;
    uint32_t flags;             /* none defined: must be 0 */
} vd_mig_hello;

typedef enum vd_mig_type {
    VD_MIG_DISK = 1,    /* names a disk: disk index, offset = its size, payload = node name */
    VD_MIG_DATA = 2,    /* guest data, payload compressed with codec (or not) */
    VD_MIG_ZERO = 3,    /* the range reads as zeros */
    VD_MIG_HOLE = 4,    /* the range is unallocated (reads as zeros) */
    VD_MIG_SYNC = 5,    /* the end of a pass on this channel */
    VD_MIG_FLUSH = 6,   /* everything before it is to be made durable */
    VD_MIG_END = 7,     /* the last chunk of the channel */
    VD_MIG_EXPORT = 8,  /* an export of a disk: offset = flags, payload = "ID\0NAME" */
    VD_MIG_READY = 9,   /* (receiver to sender) everything is in and durable */
    VD_MIG_COMMIT = 10, /* the source let go: expose the disks; the last chunk of channel 0 */
    VD_MIG_ERROR = 11,  /* (receiver to sender) why it gave up: payload = the message */
} vd_mig_type;

#define VD_MIG_EXPORT_WRITABLE 1u   /* EXPORT flags */
#define VD_MIG_MAX_EXPORT_ID 127u
#define VD_MIG_MAX_EXPORT_NAME 4096u   /* NBD's longest export name */
#define VD_MIG_MAX_ERROR 1024u


typedef struct vd_mig_chunk {
    vd_mig_type type;
    vd_mig_codec codec;
    uint16_t disk;
    uint64_t seq;               /* per channel, from 0, one more each chunk */
    uint64_t offset, length;    /* the guest range (DISK: offset = the disk's size) */
    uint32_t payload_len;       /* bytes after the header */
    uint32_t data_crc;          /* CRC-32C of the uncompressed payload (0 without one) */
    uint32_t pass;              /* the pre-copy pass the chunk belongs to */
} vd_mig_chunk;

/* "none", "zlib", "zstd"; NULL for another value. */
const char *vd_mig_codec_name(vd_mig_codec c);
/* The registry's codec behind a stream codec (NULL for none). */
const vd_codec *vd_mig_codec_impl(vd_mig_codec c);
uint32_t vd_mig_crc(const uint8_t *buf, size_t len);

void vd_mig_hello_encode(const vd_mig_hello *h, uint8_t out[VD_MIG_HELLO_SIZE]);
int vd_mig_hello_decode(const uint8_t in[VD_MIG_HELLO_SIZE], vd_mig_hello *h, vd_error **errp);

/* Encodes a header (the caller keeps the rules decode checks). */
void vd_mig_header_encode(const vd_mig_chunk *c, uint8_t out[VD_MIG_HEADER_SIZE]);
/* Decodes and checks one header on its own: magic, header checksum, type and codec known,
 * the fields each type allows, the payload length within what the type and codec can
 * carry, the range without overflow. -EINVAL (or -EPROTO) with a message naming the field. */
int vd_mig_header_decode(const uint8_t in[VD_MIG_HEADER_SIZE], vd_mig_chunk *c,
                         vd_error **errp);

/* A receiver's view of one channel: the chunks must come in sequence, name known disks
 * and stay inside them. The disk table is shared by the channels of a migration (the
 * caller serialises access to it). */
typedef struct vd_mig_disk {
    char name[VD_MIG_MAX_NAME + 1];
    uint64_t size;
} vd_mig_disk;

typedef struct vd_mig_disks {
    vd_mig_disk disk[VD_MIG_MAX_DISKS];
    unsigned nb;
} vd_mig_disks;

typedef struct vd_mig_channel {
    uint64_t next_seq;
    bool ended;
} vd_mig_channel;

/* Checks a decoded header against the channel and the disks (sequence, disk index, range
 * inside the disk). */
int vd_mig_chunk_check(const vd_mig_channel *ch, const vd_mig_disks *disks,
                       const vd_mig_chunk *c, vd_error **errp);
/* Accepts a checked chunk with its payload: a DISK chunk adds its disk (its name checked:
 * 1..31 bytes, QEMU's node-name characters, not yet in the table; the checksum over the
 * name), and the sequence moves on. */
int vd_mig_chunk_accept(vd_mig_channel *ch, vd_mig_disks *disks, const vd_mig_chunk *c,
                        const uint8_t *payload, vd_error **errp);

/* An EXPORT chunk's payload (accepted already): its id (QEMU's id rules) and NBD export
 * name (no NUL inside), copied into id[VD_MIG_MAX_EXPORT_ID + 1] and
 * name[VD_MIG_MAX_EXPORT_NAME + 1]. */
int vd_mig_export_parse(const vd_mig_chunk *c, const uint8_t *payload, char *id, char *name,
                        vd_error **errp);
/* An ERROR chunk's message, made printable, into out[VD_MIG_MAX_ERROR + 1]. */
void vd_mig_error_text(const vd_mig_chunk *c, const uint8_t *payload, char *out);

/* Sender: fills c's codec, payload_len and data_crc for data[0..len) and writes the payload
 * into out (cap: at least len bytes): compressed with ctx (NULL: stored) when that is
 * smaller, else stored. Returns 0 or -errno. */
int vd_mig_payload_encode(vd_codec_ctx *ctx, vd_mig_codec codec, const uint8_t *data,
                          size_t len, uint8_t *out, size_t cap, vd_mig_chunk *c);
/* Receiver: the data of a DATA chunk into out (c->length bytes): decompressed (ctx of the
 * chunk's codec; NULL for stored data) and checked against data_crc. */
int vd_mig_payload_decode(vd_codec_ctx *ctx, const vd_mig_chunk *c, const uint8_t *payload,
                          uint8_t *out, vd_error **errp);

#endif
