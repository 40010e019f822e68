/* Unit tests for the qcow2 snapshot table decoder: QEMU's entry layout, the limits it
 * enforces at open, the tolerant check-mode variant and what `check -r all` drops. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "block/drivers/qcow2/qcow2-format.h"

/* Builds one entry at buf+pos (pos must be 8-aligned) and returns the end offset. */
static size_t put_entry(uint8_t *buf, size_t pos, uint64_t l1_off, uint32_t l1_size,
                        const char *id, const char *name, uint32_t vm_state32,
                        const uint8_t *extra, uint32_t extra_len)
{
    uint8_t *p = buf + pos;
    size_t id_len = strlen(id), name_len = strlen(name);

    memset(p, 0, 40);
    vd_put_be64(p, l1_off);
    vd_put_be32(p + 8, l1_size);
    vd_put_be16(p + 12, (uint16_t)id_len);
    vd_put_be16(p + 14, (uint16_t)name_len);
    vd_put_be32(p + 16, 1795317582);
    vd_put_be32(p + 20, 742235000);
    vd_put_be64(p + 24, 123456789);
    vd_put_be32(p + 32, vm_state32);
    vd_put_be32(p + 36, extra_len);
    if (extra_len) {
        memcpy(p + 40, extra, extra_len);
    }
    memcpy(p + 40 + extra_len, id, id_len);
    memcpy(p + 40 + extra_len + id_len, name, name_len);
    return pos + 40 + extra_len + id_len + name_len;
}

/* The 24 bytes of extra data QEMU 7.2 writes: vm_state_size_large, disk_size, icount. */
static void qemu_extra(uint8_t *e, uint64_t vm_state, uint64_t disk_size, uint64_t icount)
{
    vd_put_be64(e, vm_state);
    vd_put_be64(e + 8, disk_size);
    vd_put_be64(e + 16, icount);
}

static qcow2_header test_header(uint32_t cluster_bits)
{
    qcow2_header h;
    memset(&h, 0, sizeof(h));
    h.version = 3;
    h.cluster_bits = cluster_bits;
    h.size = 1ull << 30;
    h.refcount_order = 4;
    h.header_length = 112;
    return h;
}

static void test_empty(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    qcow2_snapshot *s = (qcow2_snapshot *)1;
    uint64_t len = 99;
    vd_error *err = NULL;

    assert_int_equal(qcow2_snapshots_decode(NULL, 0, 0, &h, "t", &s, &len, &err), 0);
    assert_null(s);
    assert_int_equal(len, 0);
    assert_null(err);
}

/* The entry `qemu-img snapshot -c snap1` writes on a 1 GiB image (qcow2-notes 4.1). */
static void test_qemu_entry(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    uint8_t buf[256] = {0}, extra[24];
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;
    vd_error *err = NULL;

    qemu_extra(extra, 0, 1ull << 30, 0);
    size_t end = put_entry(buf, 0, 0x70000, 2, "1", "snap1", 0, extra, 24);
    assert_int_equal(end, 70);
    assert_int_equal(qcow2_snapshots_decode(buf, end, 1, &h, "t", &s, &len, &err), 0);
    assert_int_equal(len, 70);
    assert_int_equal(s[0].l1_table_offset, 0x70000);
    assert_int_equal(s[0].l1_size, 2);
    assert_string_equal(s[0].id, "1");
    assert_string_equal(s[0].name, "snap1");
    assert_int_equal(s[0].date_sec, 1795317582);
    assert_int_equal(s[0].date_nsec, 742235000);
    assert_int_equal(s[0].vm_clock_nsec, 123456789);
    assert_int_equal(s[0].vm_state_size, 0);
    assert_int_equal(s[0].disk_size, 1ull << 30);
    assert_int_equal(s[0].icount, 0);
    assert_int_equal(s[0].extra_data_size, 24);
    assert_memory_equal(s[0].extra_data, extra, 24);
    qcow2_snapshots_free(s, 1);
}

/* Entries start 8-aligned; the gaps may hold stale bytes; the length has no tail pad. */
static void test_alignment_and_gaps(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    uint8_t buf[512], extra[24];
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;

    memset(buf, 0xa5, sizeof(buf));
    qemu_extra(extra, 5, 1ull << 30, (uint64_t)-1);
    size_t end = put_entry(buf, 0, 0x80000, 2, "1", "a", 0, extra, 24);  /* 66 */
    end = put_entry(buf, (end + 7) & ~(size_t)7, 0x90000, 2, "2", "second", 0, extra, 24);
    end = put_entry(buf, (end + 7) & ~(size_t)7, 0xa0000, 2, "10", "x", 0, extra, 24);
    assert_int_equal(qcow2_snapshots_decode(buf, end, 3, &h, "t", &s, &len, NULL), 0);
    assert_int_equal(len, end);
    assert_int_equal(end, 72 + 72 + 67);
    assert_string_equal(s[1].name, "second");
    assert_string_equal(s[2].id, "10");
    assert_int_equal(s[2].l1_table_offset, 0xa0000);
    assert_int_equal(s[2].vm_state_size, 5);
    assert_int_equal(s[2].icount, -1);
    qcow2_snapshots_free(s, 3);
}

/* Old (v2-era) entries: no extra data at all, or only the first fields. */
static void test_short_extra(void **state)
{
    (void)state;
    qcow2_header h = test_header(12);
    uint8_t buf[256] = {0}, extra[16];
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;

    size_t end = put_entry(buf, 0, 0x1000, 1, "1", "old", 4096, NULL, 0);
    vd_put_be64(extra, 0x123456789ull);  /* overrides the 32-bit field */
    vd_put_be64(extra + 8, 1ull << 20);
    end = put_entry(buf, (end + 7) & ~(size_t)7, 0x2000, 1, "2", "mid", 77, extra, 8);
    size_t end3 = put_entry(buf, (end + 7) & ~(size_t)7, 0x3000, 1, "3", "sz", 0, extra, 16);
    assert_int_equal(qcow2_snapshots_decode(buf, end3, 3, &h, "t", &s, &len, NULL), 0);
    assert_int_equal(s[0].vm_state_size, 4096);
    assert_int_equal(s[0].disk_size, UINT64_MAX);
    assert_int_equal(s[0].icount, -1);
    assert_int_equal(s[0].extra_data_size, 0);
    assert_null(s[0].extra_data);
    assert_int_equal(s[1].vm_state_size, 0x123456789ull);
    assert_int_equal(s[1].disk_size, UINT64_MAX);
    assert_int_equal(s[2].disk_size, 1ull << 20);
    assert_int_equal(s[2].icount, -1);
    assert_int_equal(len, end3);
    qcow2_snapshots_free(s, 3);
}

/* Unknown extra data (up to 1 KiB) is kept verbatim so a rewrite preserves it. */
static void test_unknown_extra_kept(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    uint8_t buf[2048] = {0}, extra[1024];
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;

    for (size_t i = 0; i < sizeof(extra); i++) {
        extra[i] = (uint8_t)(i * 7);
    }
    size_t end = put_entry(buf, 0, 0x10000, 1, "1", "big", 0, extra, 1024);
    assert_int_equal(qcow2_snapshots_decode(buf, end, 1, &h, "t", &s, &len, NULL), 0);
    assert_int_equal(s[0].extra_data_size, 1024);
    assert_memory_equal(s[0].extra_data, extra, 1024);
    qcow2_snapshots_free(s, 1);
}

static void test_limits_strict(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    uint8_t buf[4096] = {0}, extra[1100] = {0};
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;
    vd_error *err = NULL;
    size_t end;

    /* More extra data than QEMU accepts. */
    end = put_entry(buf, 0, 0x10000, 1, "1", "x", 0, extra, 1025);
    assert_int_equal(qcow2_snapshots_decode(buf, end, 1, &h, "img", &s, &len, &err), -EFBIG);
    assert_non_null(err);
    assert_non_null(strstr(vd_error_msg(err), "Too much extra metadata in snapshot table "
                                             "entry 0"));
    assert_null(s);
    vd_error_freep(&err);

    /* Unaligned snapshot L1 and an oversized one: refused strictly, kept for check. */
    end = put_entry(buf, 0, 0x10200, 1, "1", "x", 0, NULL, 0);
    assert_int_equal(qcow2_snapshots_decode(buf, end, 1, &h, "img", &s, &len, &err), -EINVAL);
    vd_error_freep(&err);
    qcow2_snapshot_decode_opts lenient = {.no_l1_checks = true};
    uint32_t kept = 0;
    assert_int_equal(qcow2_snapshots_decode_ex(buf, end, 1, &h, "img", &lenient, &s, &kept,
                                               &len, NULL, &err), 0);
    assert_int_equal(kept, 1);
    assert_int_equal(s[0].l1_table_offset, 0x10200);
    qcow2_snapshots_free(s, kept);
    end = put_entry(buf, 0, 0x10000, QCOW2_MAX_L1_BYTES / 8 + 1, "1", "x", 0, NULL, 0);
    assert_int_equal(qcow2_snapshots_decode(buf, end, 1, &h, "img", &s, &len, &err), -EFBIG);
    vd_error_freep(&err);

    /* Too many entries. */
    assert_int_equal(qcow2_snapshots_decode(buf, sizeof(buf), QCOW2_MAX_SNAPSHOTS + 1, &h,
                                            "img", &s, &len, &err), -EFBIG);
    vd_error_freep(&err);
}

/* An entry running past the bytes given fails with -ERANGE (read more and retry). */
static void test_truncated_buffer(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    uint8_t buf[256] = {0};
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;
    vd_error *err = NULL;

    size_t end = put_entry(buf, 0, 0x10000, 1, "1", "name", 0, NULL, 0);
    for (size_t cut = 0; cut < end; cut++) {
        assert_int_equal(qcow2_snapshots_decode(buf, cut, 1, &h, "t", &s, &len, &err),
                         -ERANGE);
        assert_null(s);
        vd_error_freep(&err);
    }
    /* Two entries: the second one is missing. */
    assert_int_equal(qcow2_snapshots_decode(buf, end, 2, &h, "t", &s, &len, &err), -ERANGE);
    vd_error_freep(&err);
}

static int notes;
static void count_note(void *opaque, const char *msg)
{
    char *last = opaque;
    strncpy(last, msg, 255);
    notes++;
}

/* check -r all: oversized extra data is cut to 1 KiB, the on-disk extent still counts. */
static void test_repair_extra(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    static uint8_t buf[8192];
    uint8_t extra[3000];
    char last[256] = "";
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;
    uint32_t kept = 0, cut = 0;

    memset(buf, 0, sizeof(buf));
    for (size_t i = 0; i < sizeof(extra); i++) {
        extra[i] = (uint8_t)i;
    }
    size_t end = put_entry(buf, 0, 0x10000, 1, "1", "a", 0, extra, 3000);
    end = put_entry(buf, (end + 7) & ~(size_t)7, 0x20000, 1, "2", "b", 0, extra, 24);
    qcow2_snapshot_decode_opts o = {.no_l1_checks = true, .repair = true,
                                    .note = count_note, .opaque = last};
    notes = 0;
    assert_int_equal(qcow2_snapshots_decode_ex(buf, end, 2, &h, "t", &o, &s, &kept, &len,
                                               &cut, NULL), 0);
    assert_int_equal(kept, 2);
    assert_int_equal(cut, 1);
    assert_int_equal(notes, 1);
    assert_string_equal(last, "Discarding too much extra metadata in snapshot table entry 0 "
                              "(3000 > 1024)");
    assert_int_equal(s[0].extra_data_size, 1024);
    assert_memory_equal(s[0].extra_data, extra, 1024);
    assert_string_equal(s[0].id, "1");
    assert_string_equal(s[1].name, "b");
    assert_int_equal(len, end);
    qcow2_snapshots_free(s, kept);
}

/* check -r all: entries past QEMU's 64 MiB table limit are dropped, from the first one
 * that crosses it; the extent covers the entries kept. */
static void test_repair_table_too_big(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    char name[65536];
    char last[256] = "";
    size_t cap = QCOW2_MAX_SNAPSHOT_TABLE_BYTES + (1u << 20);
    uint8_t *buf = calloc(1, cap);
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;
    uint32_t kept = 0, n = 0;
    size_t pos = 0, end_kept = 0;

    assert_non_null(buf);
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    while (pos <= QCOW2_MAX_SNAPSHOT_TABLE_BYTES) {
        size_t end = put_entry(buf, pos, 0x10000, 1, "1", name, 0, NULL, 0);
        if (end <= QCOW2_MAX_SNAPSHOT_TABLE_BYTES) {
            end_kept = end;
        }
        pos = (end + 7) & ~(size_t)7;
        n++;
    }
    vd_error *err = NULL;
    assert_int_equal(qcow2_snapshots_decode(buf, pos, n, &h, "t", &s, &len, &err), -EFBIG);
    assert_non_null(strstr(vd_error_msg(err), "Snapshot table is too big"));
    vd_error_freep(&err);

    qcow2_snapshot_decode_opts o = {.repair = true, .note = count_note, .opaque = last};
    notes = 0;
    assert_int_equal(qcow2_snapshots_decode_ex(buf, pos, n, &h, "t", &o, &s, &kept, &len,
                                               NULL, NULL), 0);
    assert_int_equal(kept, n - 1);
    assert_int_equal(len, end_kept);
    assert_int_equal(notes, 1);
    assert_string_equal(last, "Discarding 1 overhanging snapshots (snapshot table is too big)");
    qcow2_snapshots_free(s, kept);
    free(buf);
}

/* A "file" for the fetch callback: bytes past its end read as zeros, as in QEMU. */
typedef struct fake_file {
    const uint8_t *data;
    size_t len;
    int calls;
} fake_file;

static int fake_fetch(void *opaque, uint64_t off, void *buf, size_t len)
{
    fake_file *f = opaque;
    f->calls++;
    memset(buf, 0, len);
    if (off < f->len) {
        size_t n = f->len - off < len ? f->len - off : len;
        memcpy(buf, f->data + off, n);
    }
    return 0;
}

/* With a fetch callback the buffer may be short: the rest comes from the callback, and a
 * table running past the end of the file reads zeros there. */
static void test_fetch(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    uint8_t file[512] = {0}, extra[24];
    qcow2_snapshot *s = NULL;
    uint64_t len = 0;
    uint32_t kept = 0;

    qemu_extra(extra, 0, 1ull << 30, 0);
    size_t end = put_entry(file, 0, 0x70000, 2, "1", "snap1", 0, extra, 24);
    end = put_entry(file, (end + 7) & ~(size_t)7, 0x80000, 2, "2", "snap2", 0, extra, 24);
    fake_file f = {.data = file, .len = end};
    qcow2_snapshot_decode_opts o = {.fetch = fake_fetch, .opaque = &f};
    assert_int_equal(qcow2_snapshots_decode_ex(file, 50, 2, &h, "t", &o, &s, &kept, &len, NULL,
                                               NULL), 0);
    assert_int_equal(kept, 2);
    assert_int_equal(len, end);
    assert_string_equal(s[1].name, "snap2");
    assert_true(f.calls > 0);
    qcow2_snapshots_free(s, kept);

    /* The last entry's name runs past the end of the file: zeros, as QEMU reads them. */
    f.len = end - 3;
    assert_int_equal(qcow2_snapshots_decode_ex(file, 0, 2, &h, "t", &o, &s, &kept, &len, NULL,
                                               NULL), 0);
    assert_int_equal(strlen(s[1].name), 2);
    assert_memory_equal(s[1].name, "sn", 2);
    qcow2_snapshots_free(s, kept);
}

/* Random bytes never crash the decoder, whatever the mode. */
static void test_random_input(void **state)
{
    (void)state;
    qcow2_header h = test_header(9);
    uint8_t buf[1024];
    uint32_t seed = 12345;

    for (int iter = 0; iter < 20000; iter++) {
        for (size_t i = 0; i < sizeof(buf); i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = (uint8_t)(seed >> 16);
        }
        /* Keep the sizes small often enough that whole entries fit. */
        if (iter & 1) {
            for (size_t i = 0; i + 40 <= sizeof(buf); i += 8) {
                buf[i + 12] = 0;
                buf[i + 14] = 0;
                buf[i + 36] = buf[i + 37] = buf[i + 38] = 0;
            }
        }
        size_t len = (seed >> 8) % sizeof(buf);
        uint32_t nb = (seed >> 4) % 8;
        qcow2_snapshot_decode_opts o = {.no_l1_checks = (iter & 2) != 0,
                                        .repair = (iter & 4) != 0};
        qcow2_snapshot *s = NULL;
        uint32_t kept = 0;
        uint64_t tl = 0;
        vd_error *err = NULL;
        int ret = qcow2_snapshots_decode_ex(buf, len, nb, &h, "t", &o, &s, &kept, &tl, NULL,
                                            &err);
        if (ret == 0) {
            assert_true(kept <= nb);
            assert_true(tl <= len);
            for (uint32_t i = 0; i < kept; i++) {
                assert_non_null(s[i].id);
                assert_non_null(s[i].name);
            }
            qcow2_snapshots_free(s, kept);
        } else {
            assert_null(s);
            assert_non_null(err);
            vd_error_free(err);
        }
    }
}

/* The encoder writes QEMU's verified entry byte for byte (70 bytes, 24 bytes of extra). */
static void test_encode_qemu_entry(void **state)
{
    (void)state;
    uint8_t want[256] = {0}, extra[24];
    qemu_extra(extra, 0, 1ull << 30, 0);
    size_t end = put_entry(want, 0, 0x70000, 2, "1", "snap1", 0, extra, 24);
    qcow2_snapshot sn = {
        .l1_table_offset = 0x70000, .l1_size = 2, .id = "1", .name = "snap1",
        .date_sec = 1795317582, .date_nsec = 742235000, .vm_clock_nsec = 123456789,
        .disk_size = 1ull << 30, .icount = 0,
    };
    assert_int_equal(qcow2_snapshots_encoded_len(&sn, 1), end);
    uint8_t got[256];
    memset(got, 0xee, sizeof(got));
    qcow2_snapshots_encode(&sn, 1, got);
    assert_memory_equal(got, want, end);
}

/* Several entries: 8-aligned with zeroed gaps; unknown extra data survives a rewrite; a
 * VM state of 4 GiB or more leaves the 32-bit field 0; decode(encode(x)) == x. */
static void test_encode_round_trip(void **state)
{
    (void)state;
    qcow2_header h = test_header(16);
    uint8_t extra[40];
    for (size_t i = 0; i < sizeof(extra); i++) {
        extra[i] = (uint8_t)(0x40 + i);
    }
    qcow2_snapshot in[3] = {
        {.l1_table_offset = 0x30000, .l1_size = 1, .id = "1", .name = "a",
         .vm_state_size = 4096, .disk_size = 1 << 20, .icount = -1},
        {.l1_table_offset = 0x50000, .l1_size = 8, .id = "12", .name = "with extra",
         .vm_state_size = 5ull << 30, .disk_size = 1ull << 30, .icount = 77,
         .extra_data_size = sizeof(extra), .extra_data = extra},
        {.l1_table_offset = 0x90000, .l1_size = 2, .id = "13", .name = "",
         .date_sec = 5, .date_nsec = 6000, .vm_clock_nsec = 7, .disk_size = 2 << 20},
    };
    uint64_t len = qcow2_snapshots_encoded_len(in, 3);
    uint8_t *buf = malloc(len);
    memset(buf, 0xee, len);
    qcow2_snapshots_encode(in, 3, buf);
    /* Entry 1 starts at 72 (66 bytes rounded up); the gap is zeroed. */
    assert_int_equal(buf[66], 0);
    assert_int_equal(buf[71], 0);
    assert_int_equal(vd_be64(buf + 72), 0x50000);
    assert_int_equal(vd_be32(buf + 72 + 32), 0);            /* 5 GiB: no 32-bit size */
    assert_int_equal(vd_be32(buf + 72 + 36), sizeof(extra));
    qcow2_snapshot *out = NULL;
    uint64_t out_len = 0;
    assert_int_equal(qcow2_snapshots_decode(buf, len, 3, &h, "t", &out, &out_len, NULL), 0);
    assert_int_equal(out_len, len);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(out[i].l1_table_offset, in[i].l1_table_offset);
        assert_int_equal(out[i].l1_size, in[i].l1_size);
        assert_string_equal(out[i].id, in[i].id);
        assert_string_equal(out[i].name, in[i].name);
        assert_int_equal(out[i].date_sec, in[i].date_sec);
        assert_int_equal(out[i].date_nsec, in[i].date_nsec);
        assert_int_equal(out[i].vm_clock_nsec, in[i].vm_clock_nsec);
        assert_int_equal(out[i].vm_state_size, in[i].vm_state_size);
        assert_int_equal(out[i].disk_size, in[i].disk_size);
        assert_int_equal(out[i].icount, in[i].icount);
        assert_true(out[i].extra_data_size >= 24);
    }
    assert_int_equal(out[1].extra_data_size, sizeof(extra));
    assert_memory_equal(out[1].extra_data + 24, extra + 24, sizeof(extra) - 24);
    qcow2_snapshots_free(out, 3);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_qemu_entry),
        cmocka_unit_test(test_alignment_and_gaps),
        cmocka_unit_test(test_short_extra),
        cmocka_unit_test(test_unknown_extra_kept),
        cmocka_unit_test(test_limits_strict),
        cmocka_unit_test(test_truncated_buffer),
        cmocka_unit_test(test_repair_extra),
        cmocka_unit_test(test_repair_table_too_big),
        cmocka_unit_test(test_fetch),
        cmocka_unit_test(test_random_input),
        cmocka_unit_test(test_encode_qemu_entry),
        cmocka_unit_test(test_encode_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
