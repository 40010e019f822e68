/* libFuzzer target for the qcow2 snapshot table decoder. An input is one byte giving the
 * entry count (mod 64), one mode byte, then the table's bytes. The mode picks the decoding
 * as vdisk uses it: strict (open), without the L1 checks, tolerant with repair (check -r
 * all), with a fetch callback that serves bytes past the buffer (zeros, as past the end of
 * a file) or fails, and the cluster size. A refusal must name the image; a decoded table
 * must keep the promises in qcow2-format.h, must not depend on the fetch callback when the
 * buffer holds it all, and must encode and decode again to the same fields and bytes. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2/qcow2-format.h"
#include "fuzz-require.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define WHAT "fuzz.qcow2"
#define MODE_NO_L1_CHECKS 0x01
#define MODE_REPAIR 0x02
#define MODE_FETCH 0x04
#define MODE_FETCH_FAILS 0x08
#define MODE_STRICT 0x10   /* no options at all, as open decodes */
#define EXTRA_KNOWN 24     /* vm_state_size_large, disk_size, icount */
#define MAX_ID 127         /* what the encoder's callers keep (qcow2-format.h) */
#define MAX_NAME 255

static void note(void *opaque, const char *msg)
{
    (void)opaque;
    REQUIRE(msg && msg[0]);
}

static int fetch_zeros(void *opaque, uint64_t off, void *buf, size_t len)
{
    (void)opaque;
    (void)off;
    if (len > (64u << 20)) {
        return -EFBIG;
    }
    memset(buf, 0, len);
    return 0;
}

static int fetch_fails(void *opaque, uint64_t off, void *buf, size_t len)
{
    (void)opaque;
    (void)off;
    (void)buf;
    (void)len;
    return -EIO;
}

typedef struct {
    qcow2_snapshot *sn;
    uint32_t kept, truncated;
    uint64_t table_len;
    vd_error *err;
    int ret;
} decoded;

static void decode(const uint8_t *buf, size_t len, uint32_t nb, const qcow2_header *h,
                   const qcow2_snapshot_decode_opts *o, decoded *d)
{
    memset(d, 0, sizeof(*d));
    d->ret = qcow2_snapshots_decode_ex(buf, len, nb, h, WHAT, o, &d->sn, &d->kept,
                                       &d->table_len, &d->truncated, &d->err);
}

static void decoded_clear(decoded *d)
{
    qcow2_snapshots_free(d->sn, d->kept);
    vd_error_free(d->err);
    memset(d, 0, sizeof(*d));
}

static void require_refusal(const decoded *d)
{
    REQUIRE(d->ret < 0);
    REQUIRE(d->err && vd_error_msg(d->err));
    REQUIRE(d->ret == -d->err->errnum);
    REQUIRE(strncmp(vd_error_msg(d->err), WHAT ": ", strlen(WHAT) + 2) == 0);
    REQUIRE(!d->sn && d->kept == 0 && d->table_len == 0);
}

/* What open and check may assume about a table that decoded. */
static void require_sane(const decoded *d, uint32_t nb, const qcow2_header *h,
                         const qcow2_snapshot_decode_opts *o, size_t len)
{
    bool repair = o && o->repair;

    REQUIRE(d->ret == 0 && !d->err);
    REQUIRE(d->kept <= nb && (repair || d->kept == nb));
    REQUIRE((d->kept == 0) == (d->sn == NULL));
    /* An entry counted as truncated may be the one then dropped as overhanging. */
    REQUIRE(repair ? d->truncated <= d->kept + 1 : d->truncated == 0);
    REQUIRE(d->table_len <= INT32_MAX);
    REQUIRE(o && o->fetch ? true : d->table_len <= len);
    REQUIRE(d->kept == 0 || d->table_len >= (uint64_t)(d->kept - 1) * 40 + 40);
    for (uint32_t i = 0; i < d->kept; i++) {
        const qcow2_snapshot *s = &d->sn[i];
        REQUIRE(s->id && s->name);
        REQUIRE(s->extra_data_size <= 1024);
        REQUIRE((s->extra_data_size == 0) == (s->extra_data == NULL));
        REQUIRE(s->extra_data_size >= 16 || s->disk_size == UINT64_MAX);
        REQUIRE(s->extra_data_size >= 24 || s->icount == -1);
        if (!(o && o->no_l1_checks)) {
            REQUIRE((s->l1_table_offset & (qcow2_cluster_size(h) - 1)) == 0);
            REQUIRE(s->l1_size <= QCOW2_MAX_L1_BYTES / 8);
        }
    }
}

/* b equals a; with reencoded, b is the decoding of a's encoding, whose extra data is
 * padded to the 24 known bytes. */
static void require_same(const decoded *a, const decoded *b, bool reencoded)
{
    REQUIRE(b->kept == a->kept);
    for (uint32_t i = 0; i < a->kept; i++) {
        const qcow2_snapshot *x = &a->sn[i], *y = &b->sn[i];
        REQUIRE(y->l1_table_offset == x->l1_table_offset && y->l1_size == x->l1_size);
        REQUIRE(strcmp(y->id, x->id) == 0 && strcmp(y->name, x->name) == 0);
        REQUIRE(y->date_sec == x->date_sec && y->date_nsec == x->date_nsec);
        REQUIRE(y->vm_clock_nsec == x->vm_clock_nsec);
        REQUIRE(y->vm_state_size == x->vm_state_size);
        REQUIRE(y->disk_size == x->disk_size && y->icount == x->icount);
        uint32_t want = x->extra_data_size;
        if (reencoded && want < EXTRA_KNOWN) {
            want = EXTRA_KNOWN;
        }
        REQUIRE(y->extra_data_size == want);
        uint32_t from = reencoded ? EXTRA_KNOWN : 0;
        REQUIRE(x->extra_data_size <= from ||
                memcmp(y->extra_data + from, x->extra_data + from,
                       x->extra_data_size - from) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t cluster_bits[] = {16, 9, 12, 21};

    if (size < 2) {
        return 0;
    }
    uint32_t nb = data[0] % 64;
    uint8_t mode = data[1];
    data += 2;
    size -= 2;

    qcow2_header h;
    memset(&h, 0, sizeof(h));
    h.version = 3;
    h.cluster_bits = cluster_bits[(mode >> 5) & 3];
    h.size = 1ull << 30;
    h.refcount_order = 4;
    qcow2_snapshot_decode_opts o = {
        .no_l1_checks = mode & MODE_NO_L1_CHECKS,
        .repair = mode & MODE_REPAIR,
        .note = note,
        .fetch = !(mode & MODE_FETCH) ? NULL : (mode & MODE_FETCH_FAILS) ? fetch_fails
                                                                         : fetch_zeros,
    };
    const qcow2_snapshot_decode_opts *op = (mode & MODE_STRICT) ? NULL : &o;

    decoded d;
    decode(data, size, nb, &h, op, &d);
    if (d.ret < 0) {
        require_refusal(&d);
        decoded_clear(&d);
        return 0;
    }
    require_sane(&d, nb, &h, op, size);

    if (!op) {
        /* The plain entry point is the strict mode. */
        qcow2_snapshot *sn = NULL;
        uint64_t len = 0;
        vd_error *err = NULL;
        REQUIRE(qcow2_snapshots_decode(data, size, nb, &h, WHAT, &sn, &len, &err) == 0);
        REQUIRE(len == d.table_len && !err);
        decoded p = {.sn = sn, .kept = nb, .table_len = len};
        require_same(&d, &p, false);
        decoded_clear(&p);
    } else if (!o.fetch) {
        /* The buffer held the whole table, so a fetch callback changes nothing. */
        qcow2_snapshot_decode_opts of = o;
        of.fetch = fetch_zeros;
        decoded f;
        decode(data, size, nb, &h, &of, &f);
        require_sane(&f, nb, &h, &of, size);
        REQUIRE(f.table_len == d.table_len && f.truncated == d.truncated);
        require_same(&d, &f, false);
        decoded_clear(&f);
    }

    /* Round trip, with ids and names cut to what the encoder's callers keep. */
    for (uint32_t i = 0; i < d.kept; i++) {
        if (strlen(d.sn[i].id) > MAX_ID) {
            d.sn[i].id[MAX_ID] = '\0';
        }
        if (strlen(d.sn[i].name) > MAX_NAME) {
            d.sn[i].name[MAX_NAME] = '\0';
        }
    }
    uint64_t elen = qcow2_snapshots_encoded_len(d.sn, d.kept);
    uint8_t *first = malloc(elen ? elen : 1), *second = malloc(elen ? elen : 1);
    REQUIRE(first && second);
    qcow2_snapshots_encode(d.sn, d.kept, first);
    /* A repaired table is valid without repair; the L1 leniency stays what it was. */
    qcow2_snapshot_decode_opts o2 = {.no_l1_checks = op && o.no_l1_checks, .note = note};
    decoded again;
    decode(first, elen, d.kept, &h, &o2, &again);
    if (again.ret < 0) {
        fprintf(stderr, "vdisk wrote a snapshot table it cannot read: %s\n",
                vd_error_msg(again.err));
        abort();
    }
    require_sane(&again, d.kept, &h, &o2, elen);
    REQUIRE(again.table_len == elen && again.truncated == 0);
    require_same(&d, &again, true);
    REQUIRE(qcow2_snapshots_encoded_len(again.sn, again.kept) == elen);
    qcow2_snapshots_encode(again.sn, again.kept, second);
    REQUIRE(elen == 0 || memcmp(first, second, elen) == 0);

    decoded_clear(&again);
    free(second);
    free(first);
    decoded_clear(&d);
    return 0;
}
