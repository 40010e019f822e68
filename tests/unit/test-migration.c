/* Live migration between two engines in one process (src/migration/send.c, recv.c) over a
 * unix socket: every codec on 1 and 4 channels under a writer, the destination compared
 * byte for byte with what the writer had acknowledged; cancels in each phase, a chunk
 * corrupted on the way, a destination that refuses, the events' order. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "vdisk/graph.h"
#include "vdisk/migration.h"
#include "vdisk/vdisk.h"

#define SIZE (32u << 20)
#define BLOCK 4096u

static char dir[] = "/tmp/vdisk-test-migration.XXXXXX";
static char src_img[128], dst_img[128], sock[100], proxy_sock[100];

typedef struct side {
    vd_engine *e;
    vd_disk *user;
    vd_perm_claim *claim;
    pthread_mutex_t lock;
    char events[512];        /* MIGRATION statuses, comma-separated */
    unsigned passes;
} side;

static side src, dst;
static uint8_t *shadow;      /* what the source's users were told was written */

static void on_event(void *opaque, const vd_event *ev)
{
    side *s = opaque;
    pthread_mutex_lock(&s->lock);
    if (!strcmp(ev->type, "MIGRATION")) {
        size_t n = strlen(s->events);
        snprintf(s->events + n, sizeof(s->events) - n, "%s%s", n ? "," : "", ev->mig_status);
    } else if (!strcmp(ev->type, "MIGRATION_PASS")) {
        s->passes = (unsigned)ev->mig_pass;
    }
    pthread_mutex_unlock(&s->lock);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void open_side(side *s, const char *img)
{
    vd_error *err = NULL;
    s->e = vd_engine_new();
    pthread_mutex_init(&s->lock, NULL);
    s->events[0] = '\0';
    vd_engine_set_event_handler(s->e, on_event, s);
    char json[512];
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"disk0\", \"file\": "
             "{\"driver\": \"file\", \"filename\": \"%s\"}}", img);
    vd_tree *t = NULL;
    assert_int_equal(vd_tree_parse_json(json, strlen(json), &t, &err), 0);
    if (vd_blockdev_add(s->e, t, VD_OPEN_RDWR, &err) < 0 ||
        vd_blockdev_open(s->e, "disk0", &s->user, &err) < 0) {
        fail_msg("%s: %s", img, vd_error_msg(err));
    }
}

static void claim_user(side *s)
{
    vd_error *err = NULL;
    if (vd_disk_claim(s->user, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE,
                      VD_PERM_ALL & ~VD_PERM_RESIZE, &s->claim, &err) < 0) {
        fail_msg("claim: %s", vd_error_msg(err));
    }
}

static void close_side(side *s)
{
    if (s->claim) {
        vd_disk_unclaim(s->user, s->claim);
        s->claim = NULL;
    }
    vd_close(s->user);
    vd_engine_free(s->e);
    pthread_mutex_destroy(&s->lock);
}

/* A source with data, zeros and holes; a new, empty destination of the same size. */
static int setup(void **state)
{
    (void)state;
    vd_error *err = NULL;
    vd_engine *e = vd_engine_new();
    unlink(src_img);
    unlink(dst_img);
    assert_int_equal(vd_create(e, src_img, "qcow2", SIZE, NULL, 0, &err), 0);
    assert_int_equal(vd_create(e, dst_img, "qcow2", SIZE, NULL, 0, &err), 0);
    vd_engine_free(e);
    open_side(&src, src_img);
    open_side(&dst, dst_img);
    claim_user(&src);
    shadow = calloc(1, SIZE);
    assert_non_null(shadow);
    /* 8 MiB of compressible data, 1 MiB of random bytes, a zeroed range, holes elsewhere. */
    uint8_t *buf = malloc(8u << 20);
    assert_non_null(buf);
    for (size_t i = 0; i < (8u << 20); i++) {
        buf[i] = (uint8_t)(i / 512 * 7);
    }
    assert_int_equal(vd_pwrite(src.user, buf, 8u << 20, 0, 0), 0);
    memcpy(shadow, buf, 8u << 20);
    srandom(7);
    for (size_t i = 0; i < (1u << 20); i++) {
        buf[i] = (uint8_t)random();
    }
    assert_int_equal(vd_pwrite(src.user, buf, 1u << 20, 20u << 20, 0), 0);
    memcpy(shadow + (20u << 20), buf, 1u << 20);
    assert_int_equal(vd_pwrite_zeroes(src.user, 12u << 20, 2u << 20, 0), 0);
    free(buf);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    close_side(&src);
    close_side(&dst);
    free(shadow);
    unlink(src_img);
    unlink(dst_img);
    return 0;
}

/* ---- a writer on the source ------------------------------------------------------------- */

typedef struct writer {
    pthread_t t;
    bool stop;
    uint64_t region;           /* bytes from 0 it writes into (0: the whole disk) */
    unsigned seq;
    unsigned refused;          /* writes the source refused (after the commit: EPERM) */
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    uint8_t buf[BLOCK];
    unsigned r = 12345;
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        r = r * 1103515245u + 12345u;
        uint64_t span = w->region ? w->region : SIZE;
        uint64_t off = (uint64_t)(r >> 8) % (span / BLOCK) * BLOCK;
        memset(buf, (int)(w->seq % 251) + 1, sizeof(buf));
        memcpy(buf, &w->seq, sizeof(w->seq));
        int ret = vd_pwrite(src.user, buf, BLOCK, off, 0);
        if (ret == 0) {
            memcpy(shadow + off, buf, BLOCK);
        } else {
            /* Refused during the commit, then the node is read-only. */
            assert_true(ret == -EPERM || ret == -EACCES);
            w->refused++;
        }
        w->seq++;
        sleep_ms(ret == 0 ? 0 : 5);
    }
    return NULL;
}

static void writer_start_in(writer *w, uint64_t region)
{
    memset(w, 0, sizeof(*w));
    w->region = region;
    assert_int_equal(pthread_create(&w->t, NULL, writer_main, w), 0);
}

static void writer_start(writer *w)
{
    writer_start_in(w, 0);
}

static void writer_stop(writer *w)
{
    __atomic_store_n(&w->stop, true, __ATOMIC_RELEASE);
    pthread_join(w->t, NULL);
}

/* ---- the two sides ------------------------------------------------------------------------ */

typedef struct exports_seen {
    unsigned checked, made;
    char last[256];
    bool refuse;
} exports_seen;

static int check_export(void *opaque, const char *node, const vd_mig_export *ex,
                        vd_error **errp)
{
    exports_seen *s = opaque;
    s->checked++;
    snprintf(s->last, sizeof(s->last), "%s:%s:%s:%d", node, ex->id, ex->name, ex->writable);
    if (s->refuse) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Block export id '%s' is already "
                            "in use", ex->id);
    }
    return 0;
}

static int make_export(void *opaque, const char *node, const vd_mig_export *ex,
                       vd_error **errp)
{
    (void)node;
    (void)ex;
    (void)errp;
    ((exports_seen *)opaque)->made++;
    return 0;
}

static vd_mig_incoming *incoming(const char *path, exports_seen *seen)
{
    vd_mig_incoming_opts o = {.check_export = check_export, .make_export = make_export,
                              .opaque = seen};
    char uri[160];
    snprintf(uri, sizeof(uri), "unix:%s", path);
    o.uri = uri;
    vd_mig_params_init(&o.params);
    o.caps.events = true;
    vd_mig_incoming *in = NULL;
    vd_error *err = NULL;
    if (vd_mig_incoming_start(dst.e, &o, &in, &err) < 0) {
        fail_msg("incoming: %s", vd_error_msg(err));
    }
    return in;
}

static vd_migration *outgoing_with(const char *path, vd_mig_codec codec, unsigned channels,
                                   uint64_t bandwidth, bool pause, bool converge)
{
    static const vd_mig_export ex = {"e0", "disk0", true};
    static const vd_mig_disk_opts disk = {"disk0", &ex, 1};
    vd_mig_send_opts o = {.disks = &disk, .nb_disks = 1};
    char uri[160];
    snprintf(uri, sizeof(uri), "unix:%s", path);
    o.uri = uri;
    vd_mig_params_init(&o.params);
    o.params.compress_type = codec;
    o.params.multifd_channels = (uint8_t)channels;
    o.params.max_bandwidth = bandwidth;
    o.caps = (vd_mig_caps){.multifd = true, .zero_blocks = true, .events = true,
                           .pause_before_switchover = pause, .auto_converge = converge};
    o.params.cpu_throttle_initial = 50;
    o.params.cpu_throttle_increment = 49;
    vd_migration *m = NULL;
    vd_error *err = NULL;
    if (vd_migration_start(src.e, &o, &m, &err) < 0) {
        fail_msg("migrate: %s", vd_error_msg(err));
    }
    return m;
}

static vd_migration *outgoing(const char *path, vd_mig_codec codec, unsigned channels,
                              uint64_t bandwidth, bool pause)
{
    return outgoing_with(path, codec, channels, bandwidth, pause, false);
}

static vd_mig_status wait_out(vd_migration *m, vd_mig_info *i)
{
    for (int k = 0; k < 6000 && !vd_migration_finished(m); k++) {
        sleep_ms(10);
    }
    vd_migration_info(m, i);
    return i->status;
}

static vd_mig_status wait_in(vd_mig_incoming *in, vd_mig_info *i)
{
    for (int k = 0; k < 6000 && !vd_mig_incoming_finished(in); k++) {
        sleep_ms(10);
    }
    vd_mig_incoming_info(in, i);
    return i->status;
}

static void wait_status(vd_migration *m, vd_mig_status want)
{
    vd_mig_info i;
    for (int k = 0; k < 6000; k++) {
        vd_migration_info(m, &i);
        if (i.status == want) {
            return;
        }
        sleep_ms(5);
    }
    fail_msg("status %s never came (now %s)", vd_mig_status_name(want),
             vd_mig_status_name(i.status));
}

static void expect_equal(vd_disk *d, const uint8_t *want)
{
    uint8_t *buf = malloc(SIZE);
    assert_non_null(buf);
    assert_int_equal(vd_pread(d, buf, SIZE, 0), 0);
    for (uint64_t off = 0; off < SIZE; off += BLOCK) {
        if (memcmp(buf + off, want + off, BLOCK)) {
            fail_msg("block at %" PRIu64 " differs", off);
        }
    }
    free(buf);
}

/* The source still takes writes, and keeps them. */
static void expect_source_serving(void)
{
    uint8_t b[BLOCK];
    memset(b, 0x5c, sizeof(b));
    assert_int_equal(vd_pwrite(src.user, b, BLOCK, SIZE - BLOCK, 0), 0);
    memcpy(shadow + SIZE - BLOCK, b, BLOCK);
    expect_equal(src.user, shadow);
}

/* ---- the cases ------------------------------------------------------------------------------ */

static void migrate_under_writes(vd_mig_codec codec, unsigned channels)
{
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    writer w;
    writer_start(&w);
    sleep_ms(20);
    vd_migration *m = outgoing(sock, codec, channels, 0, false);
    vd_mig_info i, j;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_COMPLETED);
    /* After the commit the source refuses writes; let the writer see it. */
    while (__atomic_load_n(&w.refused, __ATOMIC_ACQUIRE) == 0) {
        sleep_ms(1);
    }
    writer_stop(&w);
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_COMPLETED);
    assert_int_equal(seen.checked, 1);
    assert_int_equal(seen.made, 1);
    assert_string_equal(seen.last, "disk0:e0:disk0:1");
    assert_string_equal(src.events, "setup,active,device,completed");
    assert_string_equal(dst.events, "setup,active,completed");
    assert_true(src.passes >= 2);
    assert_int_equal(i.total, SIZE);
    assert_true(i.normal_bytes >= (9u << 20));
    vd_mig_incoming_free(in);
    expect_equal(dst.user, shadow);
    expect_equal(src.user, shadow);
    /* The source's node is read-only now, its data intact. */
    vd_migration_free(m);
    assert_true(vd_disk_read_only(src.user));
    uint8_t b[BLOCK] = {0};
    assert_int_equal(vd_pwrite(src.user, b, BLOCK, 0, 0), -EACCES);
    expect_equal(src.user, shadow);
    /* Compression did its work on the compressible part. */
    if (codec != VD_MIG_CODEC_NONE) {
        assert_true(i.compressed_size > 0 && i.compressed_size < i.compressed_input);
    }
}

static void test_none_1(void **state)
{
    assert_int_equal(setup(state), 0);
    migrate_under_writes(VD_MIG_CODEC_NONE, 1);
    teardown(state);
}

static void test_zlib_4(void **state)
{
    assert_int_equal(setup(state), 0);
    migrate_under_writes(VD_MIG_CODEC_ZLIB, 4);
    teardown(state);
}

static void test_zstd_4(void **state)
{
    assert_int_equal(setup(state), 0);
    migrate_under_writes(VD_MIG_CODEC_ZSTD, 4);
    teardown(state);
}

static void test_zstd_1(void **state)
{
    assert_int_equal(setup(state), 0);
    migrate_under_writes(VD_MIG_CODEC_ZSTD, 1);
    teardown(state);
}

/* Cancelled while the bulk pass crawls (1 MiB/s): the source as it was, the destination
 * failed without exposing anything. */
static void test_cancel_active(void **state)
{
    assert_int_equal(setup(state), 0);
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    writer w;
    writer_start(&w);
    vd_migration *m = outgoing(sock, VD_MIG_CODEC_NONE, 2, 1u << 20, false);
    wait_status(m, VD_MIG_STATUS_ACTIVE);
    sleep_ms(200);
    vd_migration_cancel(m);
    vd_mig_info i, j;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_CANCELLED);
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_FAILED);
    writer_stop(&w);
    assert_int_equal(w.refused, 0);
    assert_int_equal(seen.made, 0);
    assert_string_equal(src.events, "setup,active,cancelling,cancelled");
    expect_source_serving();
    vd_migration_free(m);
    vd_mig_incoming_free(in);
    teardown(state);
}

/* Cancelled in pre-switchover, users held: the held writes go through afterwards. */
static void test_cancel_pre_switchover(void **state)
{
    assert_int_equal(setup(state), 0);
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    writer w;
    writer_start(&w);
    vd_migration *m = outgoing(sock, VD_MIG_CODEC_ZSTD, 2, 0, true);
    wait_status(m, VD_MIG_STATUS_PRE_SWITCHOVER);
    unsigned seq = __atomic_load_n(&w.seq, __ATOMIC_ACQUIRE);
    sleep_ms(100);
    /* The writer is held: at most the one write in flight finished. */
    assert_true(__atomic_load_n(&w.seq, __ATOMIC_ACQUIRE) <= seq + 1);
    vd_migration_cancel(m);
    vd_mig_info i, j;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_CANCELLED);
    sleep_ms(50);
    assert_true(__atomic_load_n(&w.seq, __ATOMIC_ACQUIRE) > seq + 1);
    writer_stop(&w);
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_FAILED);
    assert_int_equal(seen.made, 0);
    assert_string_equal(src.events, "setup,active,pre-switchover,cancelling,cancelled");
    expect_source_serving();
    vd_migration_free(m);
    vd_mig_incoming_free(in);
    teardown(state);
}

/* pre-switchover, then migrate-continue: completes. */
static void test_continue(void **state)
{
    assert_int_equal(setup(state), 0);
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    vd_migration *m = outgoing(sock, VD_MIG_CODEC_ZLIB, 1, 0, true);
    wait_status(m, VD_MIG_STATUS_PRE_SWITCHOVER);
    vd_error *err = NULL;
    assert_int_equal(vd_migration_continue(m, &err), 0);
    vd_mig_info i, j;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_COMPLETED);
    assert_int_equal(vd_migration_continue(m, &err), -EINVAL);
    assert_string_equal(vd_error_msg(err), "Migration not in expected state: completed");
    vd_error_free(err);
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_COMPLETED);
    assert_string_equal(src.events, "setup,active,pre-switchover,device,completed");
    expect_equal(dst.user, shadow);
    vd_migration_free(m);
    vd_mig_incoming_free(in);
    teardown(state);
}

/* A writer as fast as it can go over 4 MiB against a 4 MiB/s link: passes never shrink
 * until auto-converge throttles it; then the migration completes, every acknowledged
 * write there. */
static void test_auto_converge(void **state)
{
    assert_int_equal(setup(state), 0);
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    writer w;
    writer_start_in(&w, 4u << 20);
    vd_migration *m = outgoing_with(sock, VD_MIG_CODEC_NONE, 2, 4u << 20, false, true);
    vd_mig_info i, j;
    unsigned most = 0;
    for (int k = 0; k < 6000 && !vd_migration_finished(m); k++) {
        vd_migration_info(m, &i);
        most = i.throttle_pct > most ? i.throttle_pct : most;
        sleep_ms(10);
    }
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_COMPLETED);
    assert_true(most >= 50);
    assert_int_equal(i.throttle_pct, 0);
    while (__atomic_load_n(&w.refused, __ATOMIC_ACQUIRE) == 0) {
        sleep_ms(1);
    }
    writer_stop(&w);
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_COMPLETED);
    expect_equal(dst.user, shadow);
    vd_migration_free(m);
    vd_mig_incoming_free(in);
    teardown(state);
}

/* ---- a proxy that corrupts one byte ------------------------------------------------------- */

typedef struct proxy {
    int listen_fd;
    uint64_t flip_at;        /* byte of channel 0's forward stream to flip */
    pthread_t t;
} proxy;

static int unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void *proxy_main(void *arg)
{
    proxy *p = arg;
    int a = accept(p->listen_fd, NULL, NULL);
    int b = unix_connect(sock);
    uint64_t fwd = 0;
    char buf[65536];
    for (;;) {
        struct pollfd f[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
        if (poll(f, 2, 5000) <= 0) {
            break;
        }
        int from = f[0].revents ? a : b, to = from == a ? b : a;
        ssize_t n = read(from, buf, sizeof(buf));
        if (n <= 0) {
            break;
        }
        if (from == a && p->flip_at >= fwd && p->flip_at < fwd + (uint64_t)n) {
            buf[p->flip_at - fwd] ^= 0x40;
        }
        if (from == a) {
            fwd += (uint64_t)n;
        }
        if (write(to, buf, (size_t)n) != n) {
            break;
        }
    }
    close(a);
    close(b);
    return NULL;
}

static void corrupt_at(uint64_t byte, const char *want_dst, const char *want_src)
{
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", proxy_sock);
    unlink(proxy_sock);
    proxy p = {.listen_fd = socket(AF_UNIX, SOCK_STREAM, 0), .flip_at = byte};
    assert_int_equal(bind(p.listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(p.listen_fd, 1), 0);
    assert_int_equal(pthread_create(&p.t, NULL, proxy_main, &p), 0);
    vd_migration *m = outgoing(proxy_sock, VD_MIG_CODEC_NONE, 1, 0, false);
    vd_mig_info i, j;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_FAILED);
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_FAILED);
    pthread_join(p.t, NULL);
    close(p.listen_fd);
    if (!strstr(j.error, want_dst)) {
        fail_msg("destination: '%s' has no '%s'", j.error, want_dst);
    }
    if (!strstr(i.error, want_src)) {
        fail_msg("source: '%s' has no '%s'", i.error, want_src);
    }
    assert_int_equal(seen.made, 0);
    expect_source_serving();
    vd_migration_free(m);
    vd_mig_incoming_free(in);
}

/* A byte of the first data chunk's payload (hello 48, DISK 48 + 5, EXPORT 48 + 8, SYNC 48,
 * then chunk 3, the first DATA, its header at 205): its checksum catches it. */
static void test_corrupt_data(void **state)
{
    assert_int_equal(setup(state), 0);
    corrupt_at(205 + 48 + 1000, "chunk 3: checksum mismatch in disk 0 at offset 0",
               "The destination failed: migration stream: chunk 3: checksum mismatch");
    teardown(state);
}

/* A byte of that chunk's header (its offset field). */
static void test_corrupt_header(void **state)
{
    assert_int_equal(setup(state), 0);
    corrupt_at(205 + 20, "a chunk header's checksum does not match",
               "The destination failed: migration stream: a chunk header's checksum");
    teardown(state);
}

/* ---- refusals ------------------------------------------------------------------------------ */

static void test_destination_refuses_export(void **state)
{
    assert_int_equal(setup(state), 0);
    exports_seen seen = {.refuse = true};
    vd_mig_incoming *in = incoming(sock, &seen);
    vd_migration *m = outgoing(sock, VD_MIG_CODEC_ZSTD, 2, 0, false);
    vd_mig_info i, j;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_FAILED);
    assert_string_equal(i.error, "The destination failed: Block export id 'e0' is already in "
                        "use");
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_FAILED);
    assert_string_equal(j.error, "Block export id 'e0' is already in use");
    expect_source_serving();
    vd_migration_free(m);
    vd_mig_incoming_free(in);
    teardown(state);
}

static void test_destination_size(void **state)
{
    assert_int_equal(setup(state), 0);
    vd_error *err = NULL;
    close_side(&dst);
    unlink(dst_img);
    vd_engine *e = vd_engine_new();
    assert_int_equal(vd_create(e, dst_img, "qcow2", SIZE / 2, NULL, 0, &err), 0);
    vd_engine_free(e);
    open_side(&dst, dst_img);
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    vd_migration *m = outgoing(sock, VD_MIG_CODEC_NONE, 1, 0, false);
    vd_mig_info i, j;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_FAILED);
    assert_int_equal(wait_in(in, &j), VD_MIG_STATUS_FAILED);
    assert_string_equal(j.error, "Node 'disk0' has 16777216 bytes here and 33554432 on the "
                        "source");
    assert_string_equal(i.error, "The destination failed: Node 'disk0' has 16777216 bytes "
                        "here and 33554432 on the source");
    vd_migration_free(m);
    vd_mig_incoming_free(in);
    teardown(state);
}

static void test_start_refusals(void **state)
{
    assert_int_equal(setup(state), 0);
    vd_mig_send_opts o = {.uri = "rdma:1.2.3.4:5"};
    vd_mig_params_init(&o.params);
    vd_migration *m = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_migration_start(src.e, &o, &m, &err), -EINVAL);
    assert_string_equal(vd_error_msg(err), "There are no block exports to migrate");
    vd_error_free(err);
    err = NULL;
    vd_mig_disk_opts d = {"disk0", NULL, 0};
    o.disks = &d;
    o.nb_disks = 1;
    assert_int_equal(vd_migration_start(src.e, &o, &m, &err), -EINVAL);
    assert_string_equal(vd_error_msg(err), "Parameter 'uri' expects a valid migration "
                        "protocol");
    vd_error_free(err);
    err = NULL;
    vd_mig_disk_opts nx = {"nosuch", NULL, 0};
    o.uri = "unix:/nonexistent/x";
    o.disks = &nx;
    assert_true(vd_migration_start(src.e, &o, &m, &err) < 0);
    assert_string_equal(vd_error_msg(err), "Cannot find device='nosuch' nor "
                        "node-name='nosuch'");
    vd_error_free(err);
    err = NULL;
    /* Nobody listens: the start succeeds, the connect fails. */
    o.disks = &d;
    assert_int_equal(vd_migration_start(src.e, &o, &m, &err), 0);
    vd_mig_info i;
    assert_int_equal(wait_out(m, &i), VD_MIG_STATUS_FAILED);
    assert_non_null(strstr(i.error, "Failed to connect to '/nonexistent/x'"));
    vd_migration_free(m);
    expect_source_serving();
    teardown(state);
}

/* A stopped incoming migration ends at once, though a connection says nothing (its hello
 * would have HELLO_MS, 10 s) or nothing connected at all. */
static uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static void test_incoming_free_promptly(void **state)
{
    assert_int_equal(setup(state), 0);
    exports_seen seen = {0};
    vd_mig_incoming *in = incoming(sock, &seen);
    int fd = unix_connect(sock);
    sleep_ms(50);                /* the accept loop is reading its hello */
    uint64_t t0 = now_ms();
    vd_mig_incoming_free(in);
    assert_true(now_ms() - t0 < 1000);
    close(fd);
    in = incoming(sock, &seen);
    sleep_ms(50);                /* the accept loop waits in poll */
    t0 = now_ms();
    vd_mig_incoming_free(in);
    assert_true(now_ms() - t0 < 100);
    teardown(state);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        return 1;
    }
    snprintf(src_img, sizeof(src_img), "%s/src.qcow2", dir);
    snprintf(dst_img, sizeof(dst_img), "%s/dst.qcow2", dir);
    snprintf(sock, sizeof(sock), "%s/mig.sock", dir);
    snprintf(proxy_sock, sizeof(proxy_sock), "%s/proxy.sock", dir);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_none_1),
        cmocka_unit_test(test_zlib_4),
        cmocka_unit_test(test_zstd_4),
        cmocka_unit_test(test_zstd_1),
        cmocka_unit_test(test_cancel_active),
        cmocka_unit_test(test_cancel_pre_switchover),
        cmocka_unit_test(test_continue),
        cmocka_unit_test(test_auto_converge),
        cmocka_unit_test(test_corrupt_data),
        cmocka_unit_test(test_corrupt_header),
        cmocka_unit_test(test_destination_refuses_export),
        cmocka_unit_test(test_destination_size),
        cmocka_unit_test(test_start_refusals),
        cmocka_unit_test(test_incoming_free_promptly),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(sock);
    unlink(proxy_sock);
    rmdir(dir);
    return r;
}
