/* libFuzzer target for the whole receiving side of a migration (src/migration/recv.c): per
 * input a fresh engine with two null-co nodes ("disk0", 1 MiB; "disk1", 64 KiB), an incoming
 * migration listening on a unix socket, and one to four connections that send the input as
 * a source would, then hang up. Any crash, sanitizer report, leak, hang or broken promise
 * is a bug.
 *
 * Input: a mode byte, then the channels' bytes one after the other: a channel is a hello
 * and chunks (walked by their payload lengths) up to and including its first END or
 * COMMIT; the last connection takes the rest. Mode bits:
 *   0    set the hello's and every header's checksum right (as fuzz-migration-stream does)
 *   1-2  connections - 1
 *   3    the nodes read zeros (else zeros are written)
 *   4    check_export refuses every export
 *   5    make_export fails
 *   6    two decompress threads (else one)
 *   7    also set the data checksum of every uncompressed payload right (before bit 0's)
 *
 * Promises checked: the receiver finishes within WAIT_S once every connection it needs
 * came and hung up (it only waits on the source, and the source is gone); it ends
 * completed or failed, failed with a reason; completed only after the READY it sent, the
 * exports made being exactly those announced, each once; the return path is well-formed
 * chunks (READY, ERROR) in sequence, an ERROR only on failure; the nodes are left claimed
 * by no one. When the connections cannot make up a whole migration (the hellos disagree,
 * one is missing), the receiver is still waiting and vd_mig_incoming_free stops it. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fuzz-require.h"
#include "migration/stream.h"
#include "util/common.h"
#include "vdisk/graph.h"
#include "vdisk/migration.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_CONNS 4
#define WAIT_S 5

static char dir[] = "/tmp/vdisk-fuzz-migration-recv.XXXXXX";
static char sock_path[sizeof(dir) + 8];
static char uri[sizeof(sock_path) + 8];

static void cleanup(void)
{
    unlink(sock_path);
    rmdir(dir);
}

/* ---- what the receiver's callbacks and events reported ------------------------------------- */

typedef struct seen_export {
    char *node, *id, *name;
    bool writable, made;
} seen_export;

typedef struct observed {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    vd_mig_status statuses[8];
    unsigned nb_statuses;
    bool final;                    /* completed or failed was reported */
    bool refuse_check, fail_make;
    seen_export *ex;
    size_t nb_ex;
    unsigned made;
} observed;

static observed obs = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static vd_mig_status status_of(const char *name)
{
    for (vd_mig_status s = VD_MIG_STATUS_NONE; s <= VD_MIG_STATUS_FAILED; s++) {
        if (!strcmp(vd_mig_status_name(s), name)) {
            return s;
        }
    }
    REQUIRE(!"an unknown migration status");
    return VD_MIG_STATUS_NONE;
}

static void on_event(void *opaque, const vd_event *ev)
{
    (void)opaque;
    if (strcmp(ev->type, "MIGRATION")) {
        return;
    }
    vd_mig_status s = status_of(ev->mig_status);
    pthread_mutex_lock(&obs.lock);
    REQUIRE(!obs.final);            /* nothing after the end */
    REQUIRE(obs.nb_statuses < sizeof(obs.statuses) / sizeof(obs.statuses[0]));
    obs.statuses[obs.nb_statuses++] = s;
    if (s == VD_MIG_STATUS_COMPLETED || s == VD_MIG_STATUS_FAILED) {
        obs.final = true;
        pthread_cond_broadcast(&obs.cond);
    }
    pthread_mutex_unlock(&obs.lock);
}

static int check_export(void *opaque, const char *node, const vd_mig_export *ex,
                        vd_error **errp)
{
    (void)opaque;
    pthread_mutex_lock(&obs.lock);
    /* The receiver refuses an export announced twice before asking. */
    for (size_t i = 0; i < obs.nb_ex; i++) {
        REQUIRE(strcmp(obs.ex[i].id, ex->id) && strcmp(obs.ex[i].name, ex->name));
    }
    REQUIRE(ex->id[0]);
    seen_export *n = realloc(obs.ex, (obs.nb_ex + 1) * sizeof(*n));
    REQUIRE(n);
    obs.ex = n;
    n[obs.nb_ex++] = (seen_export){strdup(node), strdup(ex->id), strdup(ex->name),
                                   ex->writable, false};
    bool refuse = obs.refuse_check;
    pthread_mutex_unlock(&obs.lock);
    if (refuse) {
        return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Block export id '%s' is already "
                            "in use", ex->id);
    }
    return 0;
}

static int make_export(void *opaque, const char *node, const vd_mig_export *ex,
                       vd_error **errp)
{
    (void)opaque;
    pthread_mutex_lock(&obs.lock);
    REQUIRE(!obs.final);
    seen_export *found = NULL;
    for (size_t i = 0; i < obs.nb_ex && !found; i++) {
        if (!strcmp(obs.ex[i].id, ex->id)) {
            found = &obs.ex[i];
        }
    }
    /* Only what was announced (and checked), as announced, once. */
    REQUIRE(found && !found->made);
    REQUIRE(!strcmp(found->node, node) && !strcmp(found->name, ex->name) &&
            found->writable == ex->writable);
    found->made = true;
    obs.made++;
    bool fail = obs.fail_make;
    pthread_mutex_unlock(&obs.lock);
    if (fail) {
        return vd_error_set(errp, VD_ERR_GENERIC, ENOSPC, "Cannot export '%s'", ex->name);
    }
    return 0;
}

static void observed_reset(void)
{
    for (size_t i = 0; i < obs.nb_ex; i++) {
        free(obs.ex[i].node);
        free(obs.ex[i].id);
        free(obs.ex[i].name);
    }
    free(obs.ex);
    obs.ex = NULL;
    obs.nb_ex = 0;
    obs.made = 0;
    obs.nb_statuses = 0;
    obs.final = false;
}

/* ---- the input as channels ---------------------------------------------------------------- */

typedef struct channel {
    const uint8_t *bytes;
    size_t len;
} channel;

/* Splits buf into up to max channels (see the top) and sets checksums right as the mode
 * asks. Returns how many channels there are (at least one). */
static unsigned split(uint8_t *buf, size_t size, unsigned max, bool fix_hdr, bool fix_data,
                      channel *ch)
{
    unsigned n = 0;
    size_t pos = 0, start = 0;
    bool hello_next = true;
    while (size - pos >= VD_MIG_HEADER_SIZE) {
        uint8_t *p = buf + pos;
        if (hello_next) {
            if (fix_hdr) {
                vd_put_be32(p + 44, vd_mig_crc(p, 44));
            }
            pos += VD_MIG_HELLO_SIZE;
            hello_next = false;
            continue;
        }
        size_t plen = vd_be32(p + 32);
        size_t avail = size - pos - VD_MIG_HEADER_SIZE;
        if (plen > avail) {
            plen = avail;
        }
        if (fix_data && p[5] == VD_MIG_CODEC_NONE && plen == vd_be32(p + 32) && plen > 0) {
            vd_put_be32(p + 36, vd_mig_crc(p + VD_MIG_HEADER_SIZE, plen));
        }
        if (fix_hdr) {
            vd_put_be32(p + 44, vd_mig_crc(p, 44));
        }
        pos += VD_MIG_HEADER_SIZE + plen;
        if ((p[4] == VD_MIG_END || p[4] == VD_MIG_COMMIT) && n + 1 < max) {
            ch[n++] = (channel){buf + start, pos - start};
            start = pos;
            hello_next = true;
        }
    }
    ch[n++] = (channel){buf + start, size - start};
    return n;
}

/* Whether the receiver can take these channels as one migration, as its accept loop
 * decides: in the order they connect, a channel joins when its hello is whole and valid
 * and (after the first) names the same migration, the same number of channels and a
 * channel not taken yet; it stops taking channels once all came. *chan0: the connection
 * that is channel 0 (the return path). */
static bool complete(const channel *ch, unsigned n, unsigned *chan0)
{
    uint8_t id[16];
    unsigned want = 0, have = 0;
    bool taken[VD_MIG_MAX_CHANNELS] = {false};
    for (unsigned i = 0; i < n; i++) {
        vd_mig_hello h;
        vd_error *err = NULL;
        if (ch[i].len < VD_MIG_HELLO_SIZE || vd_mig_hello_decode(ch[i].bytes, &h, &err) < 0) {
            vd_error_free(err);
            continue;
        }
        if (want && (memcmp(id, h.migration_id, sizeof(id)) || h.nb_channels != want ||
                     taken[h.channel])) {
            continue;
        }
        if (!want) {
            want = h.nb_channels;
            memcpy(id, h.migration_id, sizeof(id));
        }
        taken[h.channel] = true;
        if (h.channel == 0) {
            *chan0 = i;
        }
        if (++have == want) {
            return true;
        }
    }
    return false;
}

/* ---- the source's side of the sockets ---------------------------------------------------- */

static int connect_to(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    return fd;
}

/* Writes a channel's bytes and hangs up (the write side). The receiver may have dropped
 * the connection already; a receiver that reads nothing for WAIT_S is stuck. */
static void send_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            REQUIRE(poll(&pf, 1, WAIT_S * 1000) == 1);
            continue;
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            break;                   /* dropped */
        }
        p += w;
        len -= (size_t)w;
    }
    shutdown(fd, SHUT_WR);
}

/* Everything the receiver sent on a connection it has let go of (closed or shut down). */
static uint8_t *recv_all(int fd, size_t *len)
{
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    REQUIRE(buf);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            REQUIRE(buf);
        }
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        REQUIRE(poll(&pf, 1, WAIT_S * 1000) == 1);
        ssize_t r = recv(fd, buf + n, cap - n, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;                   /* the end, or a reset (it closed with unread bytes) */
        }
        n += (size_t)r;
    }
    *len = n;
    return buf;
}

/* The return path: chunks in sequence, READYs (one per pass made durable, and the
 * switchover's) with passes that never go back, then at most one ERROR, nothing after it.
 * Returns what it held. */
typedef struct return_path {
    bool ready, error;
    uint32_t pass;                     /* the last READY's */
    char text[VD_MIG_MAX_ERROR + 1];   /* the ERROR's */
} return_path;

static return_path check_return_path(const uint8_t *p, size_t len)
{
    return_path rp = {false, false, 0, ""};
    uint64_t seq = 0;
    while (len > 0) {
        REQUIRE(len >= VD_MIG_HEADER_SIZE);
        vd_mig_chunk c;
        vd_error *err = NULL;
        if (vd_mig_header_decode(p, &c, &err) < 0) {
            fprintf(stderr, "return path: %s\n", vd_error_msg(err));
            REQUIRE(!"a return path chunk that decodes");
        }
        REQUIRE(c.seq == seq++);
        REQUIRE(!rp.error);
        REQUIRE(c.payload_len <= len - VD_MIG_HEADER_SIZE);
        const uint8_t *payload = p + VD_MIG_HEADER_SIZE;
        if (c.type == VD_MIG_READY) {
            REQUIRE(c.payload_len == 0 && (!rp.ready || c.pass >= rp.pass));
            rp.ready = true;
            rp.pass = c.pass;
        } else {
            REQUIRE(c.type == VD_MIG_ERROR);
            REQUIRE(c.payload_len > 0 && vd_mig_crc(payload, c.payload_len) == c.data_crc);
            rp.error = true;
            memcpy(rp.text, payload, c.payload_len);
            rp.text[c.payload_len] = '\0';
        }
        p += VD_MIG_HEADER_SIZE + c.payload_len;
        len -= VD_MIG_HEADER_SIZE + c.payload_len;
    }
    return rp;
}

/* ---- one input ----------------------------------------------------------------------------- */

static vd_engine *engine_new(bool read_zeroes)
{
    vd_engine *e = vd_engine_new();
    vd_engine_set_event_handler(e, on_event, NULL);
    static const char *const nodes[] = {"disk0", "disk1"};
    static const char *const sizes[] = {"1048576", "65536"};
    for (int i = 0; i < 2; i++) {
        char json[160];
        snprintf(json, sizeof(json), "{\"driver\": \"null-co\", \"node-name\": \"%s\", "
                 "\"size\": %s, \"read-zeroes\": %s}", nodes[i], sizes[i],
                 read_zeroes ? "true" : "false");
        vd_tree *t = NULL;
        vd_error *err = NULL;
        if (vd_tree_parse_json(json, strlen(json), &t, &err) < 0 ||
            vd_blockdev_add(e, t, VD_OPEN_RDWR, &err) < 0) {
            fprintf(stderr, "%s: %s\n", nodes[i], vd_error_msg(err));
            abort();
        }
    }
    return e;
}

/* Nothing is left claiming a node: a writer that shares nothing can claim it. */
static void check_unclaimed(vd_engine *e)
{
    static const char *const nodes[] = {"disk0", "disk1"};
    for (int i = 0; i < 2; i++) {
        vd_disk *d = NULL;
        vd_perm_claim *c = NULL;
        vd_error *err = NULL;
        REQUIRE(vd_blockdev_open(e, nodes[i], &d, &err) == 0);
        if (vd_disk_claim(d, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE | VD_PERM_RESIZE, 0, &c,
                          &err) < 0) {
            fprintf(stderr, "%s: %s\n", nodes[i], vd_error_msg(err));
            REQUIRE(!"the nodes are claimed by no one at the end");
        }
        vd_disk_unclaim(d, c);
        vd_close(d);
    }
}

/* Waits for completed or failed; false after WAIT_S. */
static bool wait_final(void)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_S;
    pthread_mutex_lock(&obs.lock);
    int r = 0;
    while (!obs.final && r != ETIMEDOUT) {
        r = pthread_cond_timedwait(&obs.cond, &obs.lock, &until);
    }
    bool final = obs.final;
    pthread_mutex_unlock(&obs.lock);
    return final;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        REQUIRE(mkdtemp(dir));
        ready = true;
        snprintf(sock_path, sizeof(sock_path), "%s/sock", dir);
        snprintf(uri, sizeof(uri), "unix:%s", sock_path);
        atexit(cleanup);
    }
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    uint8_t *buf = malloc(size);
    REQUIRE(buf);
    memcpy(buf, data + 1, size - 1);
    channel ch[MAX_CONNS];
    unsigned nb = split(buf, size - 1, 1 + ((mode >> 1) & 3), mode & 1, mode & 0x80, ch);
    unsigned chan0 = 0;
    bool whole = complete(ch, nb, &chan0);

    observed_reset();
    obs.refuse_check = mode & 0x10;
    obs.fail_make = mode & 0x20;
    vd_engine *e = engine_new(mode & 8);
    vd_mig_incoming_opts o = {.uri = uri, .check_export = check_export,
                              .make_export = make_export};
    vd_mig_params_init(&o.params);
    o.params.decompress_threads = mode & 0x40 ? 2 : 1;
    o.caps.events = true;
    vd_mig_incoming *in = NULL;
    vd_error *err = NULL;
    if (vd_mig_incoming_start(e, &o, &in, &err) < 0) {
        fprintf(stderr, "incoming: %s\n", vd_error_msg(err));
        abort();
    }

    int fds[MAX_CONNS];
    for (unsigned i = 0; i < nb; i++) {
        fds[i] = connect_to();
    }
    for (unsigned i = 0; i < nb; i++) {
        send_all(fds[i], ch[i].bytes, ch[i].len);
    }

    vd_mig_info info;
    if (whole) {
        /* The source hung up everywhere: nothing is left to wait for. */
        if (!wait_final()) {
            vd_mig_incoming_info(in, &info);
            fprintf(stderr, "the receiver hangs: status %s, error '%s'\n",
                    vd_mig_status_name(info.status), info.error);
            abort();
        }
        REQUIRE(vd_mig_incoming_finished(in));
        vd_mig_incoming_info(in, &info);
        REQUIRE(info.status == VD_MIG_STATUS_COMPLETED || info.status == VD_MIG_STATUS_FAILED);
        REQUIRE(info.status == VD_MIG_STATUS_COMPLETED || info.error[0]);
        REQUIRE(info.status == VD_MIG_STATUS_FAILED || !info.error[0]);
    } else {
        /* It still waits for the channels that never come. */
        REQUIRE(!vd_mig_incoming_finished(in));
    }
    if (getenv("FUZZ_MIG_VERBOSE")) {
        vd_mig_incoming_info(in, &info);   /* before the free when the set was not whole */
        fprintf(stderr, "%u connection(s), %s: %s '%s', %u of %zu exports made\n", nb,
                whole ? "a whole migration" : "not a whole migration",
                vd_mig_status_name(info.status), info.error, obs.made, obs.nb_ex);
    }
    vd_mig_incoming_free(in);
    pthread_mutex_lock(&obs.lock);
    REQUIRE(obs.final);
    REQUIRE(obs.statuses[0] == VD_MIG_STATUS_SETUP);
    vd_mig_status last = obs.statuses[obs.nb_statuses - 1];
    for (unsigned i = 1; i + 1 < obs.nb_statuses; i++) {
        REQUIRE(obs.statuses[i] == VD_MIG_STATUS_ACTIVE);
    }
    if (whole) {
        REQUIRE(last == info.status);
    } else {
        REQUIRE(last == VD_MIG_STATUS_FAILED);
    }
    if (last == VD_MIG_STATUS_COMPLETED) {
        REQUIRE(!obs.refuse_check && !obs.fail_make);
        REQUIRE(obs.made == obs.nb_ex);   /* every export announced, made */
    }
    pthread_mutex_unlock(&obs.lock);

    for (unsigned i = 0; i < nb; i++) {
        size_t len;
        uint8_t *back = recv_all(fds[i], &len);
        if (whole && i == chan0) {
            return_path rp = check_return_path(back, len);
            REQUIRE(!rp.error || last == VD_MIG_STATUS_FAILED);
            REQUIRE(rp.ready || last == VD_MIG_STATUS_FAILED);
            /* Every failure but an export that could not be made (after the commit) is
             * told to the source, with the reason the info gives. */
            if (last == VD_MIG_STATUS_FAILED && !(obs.fail_make && obs.made)) {
                REQUIRE(rp.error);
                REQUIRE(!strncmp(rp.text, info.error, strlen(info.error)));
            }
        } else {
            REQUIRE(len == 0);   /* only channel 0 is a return path */
        }
        free(back);
        close(fds[i]);
    }
    check_unclaimed(e);
    vd_engine_free(e);
    observed_reset();
    free(buf);
    return 0;
}
