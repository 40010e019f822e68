/* qcow2 internal snapshot table decoder: bytes read at snapshots_offset -> an array of
 * qcow2_snapshot, with QEMU 7.2's limits, and the tolerant variant `qemu-img check` uses
 * (including what `check -r all` drops). Pure: no I/O, no printing. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-format.h"

#define SNAPSHOT_HEADER_LEN 40
/* Extra data QEMU understands: vm_state_size_large, disk_size, icount. */
#define EXTRA_KNOWN_LEN 24
#define MAX_EXTRA_DATA 1024
#define MAX_TABLE_EXTENT ((uint64_t)INT32_MAX)

void qcow2_snapshots_free(qcow2_snapshot *s, uint32_t nb)
{
    if (!s) {
        return;
    }
    for (uint32_t i = 0; i < nb; i++) {
        free(s[i].id);
        free(s[i].name);
        free(s[i].extra_data);
    }
    free(s);
}

static void note(const qcow2_snapshot_decode_opts *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void note(const qcow2_snapshot_decode_opts *o, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    if (!o || !o->note) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    o->note(o->opaque, msg);
}

/* The table's bytes [off, off+n): from buf, or past its end from opts->fetch. -ERANGE
 * when neither has them, which tells a caller that a longer read may succeed. */
static int get_bytes(const uint8_t *buf, size_t len, const qcow2_snapshot_decode_opts *o,
                     uint64_t off, void *dst, size_t n)
{
    if (off <= len && n <= len - off) {
        memcpy(dst, buf + off, n);
        return 0;
    }
    if (o && o->fetch) {
        uint64_t have = off < len ? len - off : 0;
        if (have) {
            memcpy(dst, buf + off, have);
        }
        int ret = o->fetch(o->opaque, off + have, (uint8_t *)dst + have, n - have);
        return ret < 0 ? ret : 0;
    }
    return -ERANGE;
}

static int get_failed(int ret, const char *what, uint32_t i, size_t len, vd_error **errp)
{
    if (ret == -ERANGE) {
        return vd_error_set(errp, VD_ERR_CORRUPT, ERANGE,
                            "%s: snapshot table entry %" PRIu32 " runs past the %zu bytes "
                            "of the table available", what, i, len);
    }
    return vd_error_set(errp, VD_ERR_IO, -ret, "%s: Failed to read snapshot table: %s", what,
                        strerror(-ret));
}

/* Reads an on-disk string (no NUL) into a NUL-terminated heap string. */
static int get_str(const uint8_t *buf, size_t len, const qcow2_snapshot_decode_opts *o,
                   uint64_t off, size_t n, char **out)
{
    char *str = malloc(n + 1);
    if (!str) {
        return -ENOMEM;
    }
    int ret = get_bytes(buf, len, o, off, str, n);
    if (ret < 0) {
        free(str);
        return ret;
    }
    str[n] = '\0';
    *out = str;
    return 0;
}

int qcow2_snapshots_decode_ex(const uint8_t *buf, size_t len, uint32_t nb,
                              const qcow2_header *h, const char *what,
                              const qcow2_snapshot_decode_opts *opts, qcow2_snapshot **out,
                              uint32_t *nb_out, uint64_t *table_len,
                              uint32_t *nb_extra_truncated, vd_error **errp)
{
    bool repair = opts && opts->repair;
    bool check_l1 = !(opts && opts->no_l1_checks);
    uint64_t cs = qcow2_cluster_size(h);
    uint64_t pos = 0;        /* where the next entry's bytes start, as QEMU's offset */
    uint64_t logical = 0;    /* QEMU's table_length: what a rewrite of the kept data takes */
    uint32_t truncated = 0;
    qcow2_snapshot *sn = NULL;
    uint32_t i;
    int ret;

    what = what ? what : "image";
    *out = NULL;
    *nb_out = 0;
    *table_len = 0;
    if (nb_extra_truncated) {
        *nb_extra_truncated = 0;
    }
    if (nb > QCOW2_MAX_SNAPSHOTS) {
        return vd_error_set(errp, VD_ERR_CORRUPT, EFBIG,
                            "%s: Too many snapshots (%" PRIu32 ", at most %u)", what, nb,
                            QCOW2_MAX_SNAPSHOTS);
    }
    if (nb == 0) {
        return 0;
    }
    sn = calloc(nb, sizeof(*sn));
    if (!sn) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", what);
    }

    for (i = 0; i < nb; i++) {
        qcow2_snapshot *s = &sn[i];
        uint64_t entry_start = pos;
        uint64_t start = (pos + 7) & ~7ull;
        uint8_t p[SNAPSHOT_HEADER_LEN];
        uint32_t extra_size, kept_extra, id_size, name_size;
        uint64_t extra_end, end;

        logical = (logical + 7) & ~7ull;
        ret = get_bytes(buf, len, opts, start, p, sizeof(p));
        if (ret < 0) {
            ret = get_failed(ret, what, i, len, errp);
            goto fail;
        }
        s->l1_table_offset = vd_be64(p);
        s->l1_size = vd_be32(p + 8);
        id_size = vd_be16(p + 12);
        name_size = vd_be16(p + 14);
        s->date_sec = vd_be32(p + 16);
        s->date_nsec = vd_be32(p + 20);
        s->vm_clock_nsec = vd_be64(p + 24);
        s->vm_state_size = vd_be32(p + 32);
        extra_size = vd_be32(p + 36);

        kept_extra = extra_size;
        if (extra_size > MAX_EXTRA_DATA) {
            if (!repair) {
                /* QEMU's text, hint line included. */
                ret = vd_error_set(errp, VD_ERR_CORRUPT, EFBIG,
                                   "%s: Too much extra metadata in snapshot table entry %"
                                   PRIu32 "\nYou can force-remove this extra metadata with "
                                   "qemu-img check -r all", what, i);
                goto fail;
            }
            note(opts, "Discarding too much extra metadata in snapshot table entry %" PRIu32
                 " (%" PRIu32 " > %u)", i, extra_size, MAX_EXTRA_DATA);
            kept_extra = MAX_EXTRA_DATA;
            truncated++;
        }

        /* The entry's layout on disk; the extra data may be longer than what we keep. */
        extra_end = start + SNAPSHOT_HEADER_LEN + (uint64_t)extra_size;
        end = extra_end + id_size + name_size;
        logical += SNAPSHOT_HEADER_LEN + (uint64_t)kept_extra + id_size + name_size;

        if (logical > QCOW2_MAX_SNAPSHOT_TABLE_BYTES || end > MAX_TABLE_EXTENT) {
            if (!repair) {
                ret = vd_error_set(errp, VD_ERR_CORRUPT, EFBIG,
                                   "%s: Snapshot table is too big\nYou can force-remove all %"
                                   PRIu32 " overhanging snapshots with qemu-img check -r all",
                                   what, nb - i);
                goto fail;
            }
            note(opts, "Discarding %" PRIu32 " overhanging snapshots (snapshot table is too "
                 "big)", nb - i);
            memset(s, 0, sizeof(*s));
            pos = entry_start;
            break;
        }
        s->extra_data_size = kept_extra;
        if (kept_extra > 0) {
            s->extra_data = malloc(kept_extra);
            if (!s->extra_data) {
                ret = vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", what);
                goto fail;
            }
            ret = get_bytes(buf, len, opts, start + SNAPSHOT_HEADER_LEN, s->extra_data,
                            kept_extra);
            if (ret < 0) {
                ret = get_failed(ret, what, i, len, errp);
                goto fail;
            }
        }
        const uint8_t *e = s->extra_data;
        if (kept_extra >= 8) {
            s->vm_state_size = vd_be64(e);
        }
        s->disk_size = kept_extra >= 16 ? vd_be64(e + 8) : UINT64_MAX;
        s->icount = kept_extra >= 24 ? (int64_t)vd_be64(e + 16) : -1;
        ret = get_str(buf, len, opts, extra_end, id_size, &s->id);
        if (ret == 0) {
            ret = get_str(buf, len, opts, extra_end + id_size, name_size, &s->name);
        }
        if (ret == -ENOMEM) {
            ret = vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", what);
            goto fail;
        } else if (ret < 0) {
            ret = get_failed(ret, what, i, len, errp);
            goto fail;
        }

        if (check_l1) {
            if (s->l1_table_offset & (cs - 1)) {
                ret = vd_error_set(errp, VD_ERR_CORRUPT, EINVAL,
                                   "%s: snapshot %s (%s): L1 table offset 0x%" PRIx64
                                   " is not cluster aligned", what, s->id, s->name,
                                   s->l1_table_offset);
                goto fail;
            }
            if (s->l1_size > QCOW2_MAX_L1_BYTES / 8) {
                ret = vd_error_set(errp, VD_ERR_CORRUPT, EFBIG,
                                   "%s: snapshot %s (%s): L1 table too large (%" PRIu32
                                   " entries)", what, s->id, s->name, s->l1_size);
                goto fail;
            }
        }
        pos = end;
    }

    *out = sn;
    *nb_out = i;
    *table_len = pos;
    if (nb_extra_truncated) {
        *nb_extra_truncated = truncated;
    }
    if (i == 0) {
        free(sn);
        *out = NULL;
    }
    return 0;

fail:
    qcow2_snapshots_free(sn, i + 1);
    return ret;
}

int qcow2_snapshots_decode(const uint8_t *buf, size_t len, uint32_t nb,
                           const qcow2_header *h, const char *what, qcow2_snapshot **out,
                           uint64_t *table_len, vd_error **errp)
{
    uint32_t kept;

    return qcow2_snapshots_decode_ex(buf, len, nb, h, what, NULL, out, &kept, table_len, NULL,
                                     errp);
}

/* Extra data every entry gets: vm_state_size_large, disk_size, icount (QEMU 7.2 writes at
 * least these 24 bytes for v2 and v3 alike and keeps longer unknown extra data). */
static uint32_t entry_extra_len(const qcow2_snapshot *s)
{
    return s->extra_data_size > EXTRA_KNOWN_LEN ? s->extra_data_size : EXTRA_KNOWN_LEN;
}

uint64_t qcow2_snapshots_encoded_len(const qcow2_snapshot *sn, uint32_t nb)
{
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        pos = (pos + 7) & ~7ull;
        pos += SNAPSHOT_HEADER_LEN + entry_extra_len(&sn[i]) + strlen(sn[i].id) +
               strlen(sn[i].name);
    }
    return pos;
}

void qcow2_snapshots_encode(const qcow2_snapshot *sn, uint32_t nb, uint8_t *buf)
{
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        const qcow2_snapshot *s = &sn[i];
        uint64_t start = (pos + 7) & ~7ull;
        uint8_t *p = buf + start;
        uint32_t extra = entry_extra_len(s);
        size_t id_len = strlen(s->id), name_len = strlen(s->name);

        memset(buf + pos, 0, start - pos);
        vd_put_be64(p, s->l1_table_offset);
        vd_put_be32(p + 8, s->l1_size);
        vd_put_be16(p + 12, (uint16_t)id_len);
        vd_put_be16(p + 14, (uint16_t)name_len);
        vd_put_be32(p + 16, s->date_sec);
        vd_put_be32(p + 20, s->date_nsec);
        vd_put_be64(p + 24, s->vm_clock_nsec);
        /* Old readers see a state of 4 GiB or more as none at all. */
        vd_put_be32(p + 32, s->vm_state_size > UINT32_MAX ? 0 : (uint32_t)s->vm_state_size);
        vd_put_be32(p + 36, extra);
        uint8_t *e = p + SNAPSHOT_HEADER_LEN;
        memset(e, 0, extra);
        if (s->extra_data_size > EXTRA_KNOWN_LEN) {
            memcpy(e + EXTRA_KNOWN_LEN, s->extra_data + EXTRA_KNOWN_LEN,
                   s->extra_data_size - EXTRA_KNOWN_LEN);
        }
        vd_put_be64(e, s->vm_state_size);
        vd_put_be64(e + 8, s->disk_size);
        vd_put_be64(e + 16, (uint64_t)s->icount);
        memcpy(e + extra, s->id, id_len);
        memcpy(e + extra + id_len, s->name, name_len);
        pos = start + SNAPSHOT_HEADER_LEN + extra + id_len + name_len;
    }
}
