/* The migration transport (src/migration/transport.c): URIs parse as QEMU's do; 8 MiB of
 * random data crosses a socketpair, a unix socket (made mode 0600) and TCP in both directions
 * at once, plain, with x509 and with PSK, also with signals interrupting it; small reads are
 * buffered; a peer closing mid-read and a connection shut down
 * from another thread are reported; TLS refuses rogue client certificates, a server whose
 * name does not match, missing hostnames, wrong keys and handshakes that take too long. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "migration/transport.h"

#define DATA_SIZE (8u << 20)

static void expect_msg(int ret, int want, vd_error **err, const char *part)
{
    assert_int_equal(ret, want);
    assert_non_null(*err);
    if (!strstr(vd_error_msg(*err), part)) {
        fail_msg("'%s' does not say '%s'", vd_error_msg(*err), part);
    }
    vd_error_free(*err);
    *err = NULL;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint8_t *random_bytes(size_t n, uint64_t seed)
{
    uint8_t *b = malloc(n);
    assert_non_null(b);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[i] = (uint8_t)(x >> 24);
    }
    return b;
}

/* ---- moving data both ways at once ------------------------------------------------------ */

typedef struct io_job {
    vd_mig_conn *c;
    uint8_t *buf;
    size_t len;
    bool writer;
    int ret;
    char msg[256];
    atomic_bool done;
} io_job;

/* Piece sizes that mix 48-byte headers, tiny reads, sizes around the read buffer and the
 * TLS record, and big payloads. */
static size_t piece(unsigned *k, size_t left)
{
    static const size_t sizes[] = {48, 1, 7, 16384, 48, 65535, 65536, 65537, 300000, 48,
                                   1048579, 16336, 4096, 2000000};
    size_t n = sizes[(*k)++ % (sizeof(sizes) / sizeof(sizes[0]))];
    return n < left ? n : left;
}

static void *io_thread(void *opaque)
{
    io_job *j = opaque;
    vd_error *err = NULL;
    unsigned k = j->writer ? 0 : 5;
    size_t off = 0;
    while (off < j->len && j->ret == 0) {
        size_t n = piece(&k, j->len - off);
        if (!j->writer) {
            j->ret = vd_mig_conn_read(j->c, j->buf + off, n, &err);
        } else if (k % 3 == 0) {
            j->ret = vd_mig_conn_write(j->c, j->buf + off, n, &err);
        } else {
            /* A header and its payload (and an empty buffer) as one write. */
            size_t m = piece(&k, j->len - off - n);
            struct iovec iov[3] = {{j->buf + off, n}, {NULL, 0}, {j->buf + off + n, m}};
            j->ret = vd_mig_conn_writev(j->c, iov, 3, &err);
            n += m;
        }
        off += n;
    }
    if (err) {
        snprintf(j->msg, sizeof(j->msg), "%s", vd_error_msg(err));
        vd_error_free(err);
    }
    atomic_store(&j->done, true);
    return NULL;
}

typedef struct read_job {
    vd_mig_conn *c;
    void *buf;
    size_t len;
    int ret;
    atomic_bool done;
} read_job;

static void *read_thread(void *opaque)
{
    read_job *j = opaque;
    vd_error *err = NULL;
    j->ret = vd_mig_conn_read(j->c, j->buf, j->len, &err);
    vd_error_free(err);
    atomic_store(&j->done, true);
    return NULL;
}

/* vd_mig_conn_read, failing the test rather than hanging when nothing comes in ms. */
static int read_timed(vd_mig_conn *c, void *buf, size_t len, int ms)
{
    read_job j = {.c = c, .buf = buf, .len = len};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, read_thread, &j), 0);
    int64_t deadline = now_ms() + ms;
    while (!atomic_load(&j.done) && now_ms() < deadline) {
        usleep(1000);
    }
    bool late = !atomic_load(&j.done);
    if (late) {
        vd_mig_conn_shutdown(c);
    }
    pthread_join(t, NULL);
    if (late) {
        fail_msg("nothing arrived within %d ms", ms);
    }
    return j.ret;
}

static void on_signal(int sig)
{
    (void)sig;
}

/* DATA_SIZE random bytes each way between a and b, both directions at once; with
 * interrupt, signals keep breaking into every read and write (EINTR, partial transfers). */
static void exchange_ex(vd_mig_conn *a, vd_mig_conn *b, bool interrupt)
{
    uint8_t *ab = random_bytes(DATA_SIZE, 1), *ba = random_bytes(DATA_SIZE, 2);
    uint8_t *ab_got = calloc(1, DATA_SIZE), *ba_got = calloc(1, DATA_SIZE);
    assert_non_null(ab_got);
    assert_non_null(ba_got);
    io_job jobs[4] = {
        {.c = a, .buf = ab, .len = DATA_SIZE, .writer = true},
        {.c = b, .buf = ab_got, .len = DATA_SIZE},
        {.c = b, .buf = ba, .len = DATA_SIZE, .writer = true},
        {.c = a, .buf = ba_got, .len = DATA_SIZE},
    };
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&t[i], NULL, io_thread, &jobs[i]), 0);
    }
    struct sigaction sa = {.sa_handler = on_signal}, old;   /* no SA_RESTART */
    if (interrupt) {
        assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
    }
    /* A transfer that stalls fails the test instead of hanging it: the connections are
     * shut down to free the threads. */
    int64_t deadline = now_ms() + 30000;
    unsigned kills = 0;
    bool busy = true, stalled = false;
    while (busy && !stalled) {
        busy = false;
        for (int i = 0; i < 4; i++) {
            if (!atomic_load(&jobs[i].done)) {
                busy = true;
                if (interrupt) {
                    pthread_kill(t[i], SIGUSR1);
                    kills++;
                }
            }
        }
        stalled = busy && now_ms() > deadline;
        usleep(interrupt ? 20 : 1000);
    }
    if (stalled) {
        vd_mig_conn_shutdown(a);
        vd_mig_conn_shutdown(b);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
    }
    if (interrupt) {
        sigaction(SIGUSR1, &old, NULL);
        assert_true(kills > 100);
    }
    if (stalled) {
        fail_msg("the transfer stalled");
    }
    for (int i = 0; i < 4; i++) {
        if (jobs[i].ret != 0) {
            fail_msg("job %d: %d %s", i, jobs[i].ret, jobs[i].msg);
        }
    }
    assert_memory_equal(ab, ab_got, DATA_SIZE);
    assert_memory_equal(ba, ba_got, DATA_SIZE);
    assert_int_equal(vd_mig_conn_bytes_out(a), DATA_SIZE);
    assert_int_equal(vd_mig_conn_bytes_out(b), DATA_SIZE);
    assert_int_equal(vd_mig_conn_bytes_in(a), DATA_SIZE);
    assert_int_equal(vd_mig_conn_bytes_in(b), DATA_SIZE);
    /* A lone header goes out by itself (nothing left corked or queued). */
    uint8_t hdr[48], hdr_got[48] = {0};
    memset(hdr, 0xc3, sizeof(hdr));
    vd_error *err = NULL;
    assert_int_equal(vd_mig_conn_write(a, hdr, sizeof(hdr), &err), 0);
    assert_int_equal(read_timed(b, hdr_got, sizeof(hdr_got), 5000), 0);
    assert_memory_equal(hdr, hdr_got, sizeof(hdr));
    free(ab);
    free(ba);
    free(ab_got);
    free(ba_got);
}

static void exchange(vd_mig_conn *a, vd_mig_conn *b)
{
    exchange_ex(a, b, false);
}

static void plain_pair(vd_mig_conn **a, vd_mig_conn **b)
{
    int sv[2];
    vd_error *err = NULL;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(vd_mig_conn_client(sv[0], NULL, NULL, 1000, a, &err), 0);
    assert_int_equal(vd_mig_conn_server(sv[1], NULL, 1000, b, &err), 0);
}

/* ---- URIs ----------------------------------------------------------------------------- */

static void test_uri(void **state)
{
    (void)state;
    vd_mig_addr a = {0};
    vd_error *err = NULL;
    assert_int_equal(vd_mig_uri_parse("tcp:localhost:4444", &a, &err), 0);
    assert_false(a.is_unix);
    assert_string_equal(a.host, "localhost");
    assert_string_equal(a.port, "4444");
    vd_mig_addr_clear(&a);
    assert_null(a.host);

    assert_int_equal(vd_mig_uri_parse("tcp:[::1]:4444", &a, &err), 0);
    assert_string_equal(a.host, "::1");
    assert_string_equal(a.port, "4444");
    vd_mig_addr_clear(&a);

    assert_int_equal(vd_mig_uri_parse("unix:/run/vd/mig.sock", &a, &err), 0);
    assert_true(a.is_unix);
    assert_string_equal(a.path, "/run/vd/mig.sock");
    vd_mig_addr_clear(&a);

    /* QEMU 7.2's words, exactly. */
    assert_int_equal(vd_mig_uri_parse("exec:cat", &a, &err), -EINVAL);
    assert_string_equal(vd_error_msg(err), "Parameter 'uri' expects a valid migration protocol");
    vd_error_free(err);
    err = NULL;
    expect_msg(vd_mig_uri_parse("tcp", &a, &err), -EINVAL, &err, "valid migration protocol");
    expect_msg(vd_mig_uri_parse("tcp:localhost", &a, &err), -EINVAL, &err,
               "'tcp:localhost': the port is missing");
    expect_msg(vd_mig_uri_parse("tcp:localhost:", &a, &err), -EINVAL, &err,
               "'tcp:localhost:': the port is missing");
    expect_msg(vd_mig_uri_parse("tcp:[::1]", &a, &err), -EINVAL, &err, "port is missing");
    expect_msg(vd_mig_uri_parse("tcp:[::1:4444", &a, &err), -EINVAL, &err, "no closing ']'");
    expect_msg(vd_mig_uri_parse("tcp::4444", &a, &err), -EINVAL, &err,
               "'tcp::4444': the host is empty");
    expect_msg(vd_mig_uri_parse("tcp:::1:4444", &a, &err), -EINVAL, &err, "in brackets");
    expect_msg(vd_mig_uri_parse("unix:", &a, &err), -EINVAL, &err,
               "'unix:': the socket path is empty");
    /* Nothing was kept from the failures. */
    assert_null(a.host);
    assert_null(a.path);
}

/* ---- plain connections ---------------------------------------------------------------- */

static void test_plain_socketpair(void **state)
{
    (void)state;
    vd_mig_conn *a = NULL, *b = NULL;
    plain_pair(&a, &b);
    exchange(a, b);
    vd_mig_conn_free(a);
    vd_mig_conn_free(b);
}

/* Signals breaking into reads and writes (EINTR, a write cut short) lose no byte. */
static void test_plain_interrupted(void **state)
{
    (void)state;
    vd_mig_conn *a = NULL, *b = NULL;
    plain_pair(&a, &b);
    exchange_ex(a, b, true);
    vd_mig_conn_free(a);
    vd_mig_conn_free(b);
}

/* A 48-byte read takes everything waiting on the socket into the conn's buffer, so the
 * headers after it cost no system call. */
static void test_buffered_reads(void **state)
{
    (void)state;
    int sv[2];
    vd_error *err = NULL;
    vd_mig_conn *c = NULL;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(vd_mig_conn_client(sv[0], NULL, NULL, 1000, &c, &err), 0);
    uint8_t *data = random_bytes(100 * 48, 3), got[48];
    assert_int_equal(write(sv[1], data, 100 * 48), 100 * 48);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(vd_mig_conn_read(c, got, sizeof(got), &err), 0);
        assert_memory_equal(got, data + i * 48, sizeof(got));
        int queued = -1;
        assert_int_equal(ioctl(sv[0], FIONREAD, &queued), 0);
        assert_int_equal(queued, 0);
    }
    assert_int_equal(vd_mig_conn_bytes_in(c), 100 * 48);
    free(data);
    close(sv[1]);
    vd_mig_conn_free(c);
}

static int get_int_opt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof(v);
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

static void test_plain_unix(void **state)
{
    (void)state;
    char dir[] = "/tmp/vd-mig-unix-XXXXXX", uri[160], path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/mig.sock", dir);
    snprintf(uri, sizeof(uri), "unix:%s", path);
    vd_mig_addr a = {0};
    vd_error *err = NULL;
    assert_int_equal(vd_mig_uri_parse(uri, &a, &err), 0);
    int lfd = vd_mig_listen(&a, &err);
    assert_true(lfd >= 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    int cfd = vd_mig_connect(&a, 1000, &err);
    assert_true(cfd >= 0);
    int sfd = accept(lfd, NULL, NULL);
    assert_true(sfd >= 0);
    /* Tuning leaves unix sockets alone. */
    vd_mig_socket_tune(cfd, 3000);
    assert_int_equal(get_int_opt(cfd, SOL_SOCKET, SO_KEEPALIVE), 0);

    vd_mig_conn *c = NULL, *s = NULL;
    assert_int_equal(vd_mig_conn_client(cfd, NULL, NULL, 1000, &c, &err), 0);
    assert_int_equal(vd_mig_conn_server(sfd, NULL, 1000, &s, &err), 0);
    exchange(c, s);
    vd_mig_conn_free(c);
    vd_mig_conn_free(s);
    close(lfd);

    /* Nobody listening any more. */
    unlink(path);
    expect_msg(vd_mig_connect(&a, 1000, &err), -ENOENT, &err, "Failed to connect to '");
    vd_mig_addr_clear(&a);
    rmdir(dir);
}

static int listen_tcp_any_port(int *port)
{
    vd_mig_addr a = {0};
    vd_error *err = NULL;
    assert_int_equal(vd_mig_uri_parse("tcp:127.0.0.1:0", &a, &err), 0);
    int lfd = vd_mig_listen(&a, &err);
    vd_mig_addr_clear(&a);
    assert_true(lfd >= 0);
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    assert_true(*port > 0);
    return lfd;
}

static void test_plain_tcp(void **state)
{
    (void)state;
    int port;
    int lfd = listen_tcp_any_port(&port);
    assert_int_equal(get_int_opt(lfd, SOL_SOCKET, SO_REUSEADDR), 1);
    char uri[64];
    snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", port);
    vd_mig_addr a = {0};
    vd_error *err = NULL;
    assert_int_equal(vd_mig_uri_parse(uri, &a, &err), 0);
    int cfd = vd_mig_connect(&a, 1000, &err);
    vd_mig_addr_clear(&a);
    assert_true(cfd >= 0);
    int sfd = accept(lfd, NULL, NULL);
    assert_true(sfd >= 0);
    close(lfd);

    vd_mig_socket_tune(cfd, 3000);
    vd_mig_socket_tune(sfd, 3000);
    assert_int_equal(get_int_opt(cfd, SOL_SOCKET, SO_KEEPALIVE), 1);
    assert_int_equal(get_int_opt(cfd, IPPROTO_TCP, TCP_KEEPIDLE), 2);
    assert_int_equal(get_int_opt(cfd, IPPROTO_TCP, TCP_KEEPINTVL), 1);
    assert_int_equal(get_int_opt(cfd, IPPROTO_TCP, TCP_KEEPCNT), 5);
    assert_int_equal(get_int_opt(sfd, IPPROTO_TCP, TCP_USER_TIMEOUT), 3000);

    vd_mig_conn *c = NULL, *s = NULL;
    assert_int_equal(vd_mig_conn_client(cfd, NULL, NULL, 1000, &c, &err), 0);
    assert_int_equal(vd_mig_conn_server(sfd, NULL, 1000, &s, &err), 0);
    exchange(c, s);
    vd_mig_conn_free(c);
    vd_mig_conn_free(s);
}

static void test_connect_refused(void **state)
{
    (void)state;
    int port;
    close(listen_tcp_any_port(&port));
    char uri[64], want[128];
    snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", port);
    snprintf(want, sizeof(want), "Failed to connect to '127.0.0.1:%d': Connection refused",
             port);
    vd_mig_addr a = {0};
    vd_error *err = NULL;
    assert_int_equal(vd_mig_uri_parse(uri, &a, &err), 0);
    assert_int_equal(vd_mig_connect(&a, 1000, &err), -ECONNREFUSED);
    assert_string_equal(vd_error_msg(err), want);
    vd_error_free(err);
    vd_mig_addr_clear(&a);
}

/* ---- ends and shutdowns --------------------------------------------------------------- */

static void test_eof(void **state)
{
    (void)state;
    int sv[2];
    vd_error *err = NULL;
    vd_mig_conn *c = NULL;
    uint8_t buf[48], want[48];
    memset(want, 0x5a, sizeof(want));

    /* Closed in the middle of a header. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(vd_mig_conn_client(sv[0], NULL, NULL, 1000, &c, &err), 0);
    assert_int_equal(write(sv[1], want, 10), 10);
    close(sv[1]);
    expect_msg(vd_mig_conn_read_or_eof(c, buf, sizeof(buf), &err), -EPIPE, &err,
               "Connection closed by the peer");
    vd_mig_conn_free(c);

    /* Closed after a whole header: a clean end only where the caller allows one. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(vd_mig_conn_client(sv[0], NULL, NULL, 1000, &c, &err), 0);
    assert_int_equal(write(sv[1], want, 48), 48);
    close(sv[1]);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(vd_mig_conn_read_or_eof(c, buf, sizeof(buf), &err), 1);
    assert_memory_equal(buf, want, sizeof(buf));
    assert_int_equal(vd_mig_conn_read_or_eof(c, buf, sizeof(buf), &err), 0);
    assert_null(err);
    expect_msg(vd_mig_conn_read(c, buf, sizeof(buf), &err), -EPIPE, &err,
               "Connection closed by the peer");
    vd_mig_conn_free(c);

    /* Writing to a peer that has gone is an error, not a SIGPIPE. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(vd_mig_conn_client(sv[0], NULL, NULL, 1000, &c, &err), 0);
    close(sv[1]);
    expect_msg(vd_mig_conn_write(c, want, sizeof(want), &err), -EPIPE, &err,
               "Unable to write to socket: Broken pipe");
    vd_mig_conn_free(c);
}

typedef struct blocked_job {
    vd_mig_conn *c;
    bool writer;
    int ret;
    char msg[256];
} blocked_job;

static void *blocked_thread(void *opaque)
{
    blocked_job *j = opaque;
    vd_error *err = NULL;
    size_t len = j->writer ? 64u << 20 : 48;
    uint8_t *buf = calloc(1, len);
    j->ret = j->writer ? vd_mig_conn_write(j->c, buf, len, &err)
                       : vd_mig_conn_read(j->c, buf, len, &err);
    if (err) {
        snprintf(j->msg, sizeof(j->msg), "%s", vd_error_msg(err));
        vd_error_free(err);
    }
    free(buf);
    return NULL;
}

/* A thread blocked reading (nothing comes) or writing (nobody reads) is woken by a
 * shutdown from another thread, promptly. */
static void check_shutdown_wakes(bool writer)
{
    vd_mig_conn *a = NULL, *b = NULL;
    plain_pair(&a, &b);
    blocked_job j = {.c = a, .writer = writer, .ret = 1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_thread, &j), 0);
    usleep(200 * 1000);
    assert_int_equal(pthread_tryjoin_np(t, NULL), EBUSY);   /* still blocked */
    int64_t start = now_ms();
    vd_mig_conn_shutdown(a);
    vd_mig_conn_shutdown(a);   /* twice is harmless */
    struct timespec limit;
    clock_gettime(CLOCK_REALTIME, &limit);
    limit.tv_sec += 5;
    if (pthread_timedjoin_np(t, NULL, &limit) != 0) {
        fail_msg("the blocked %s was not woken by the shutdown", writer ? "writer" : "reader");
    }
    assert_true(now_ms() - start < 1000);
    assert_int_equal(j.ret, -ECANCELED);
    if (!strstr(j.msg, "shut down")) {
        fail_msg("'%s' does not say it was shut down", j.msg);
    }
    vd_mig_conn_free(a);
    vd_mig_conn_free(b);
}

static void test_shutdown_wakes_reader(void **state)
{
    (void)state;
    check_shutdown_wakes(false);
}

static void test_shutdown_wakes_writer(void **state)
{
    (void)state;
    check_shutdown_wakes(true);
}

/* ---- TLS ------------------------------------------------------------------------------ */

/* Certificates from tests/interop/nbd-tls-certs.sh, made once: NULL when certtool is absent. */
static struct {
    bool tried;
    char dir[64];
} certs;

static const char *certs_dir(void)
{
    if (!certs.tried) {
        certs.tried = true;
        snprintf(certs.dir, sizeof(certs.dir), "/tmp/vd-mig-tls-XXXXXX");
        assert_non_null(mkdtemp(certs.dir));
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "bash -c 'command -v certtool >/dev/null || exit 77; "
                 ". \"$0\" && make_tls_certs \"$1\"' '%s' '%s'",
                 VD_SOURCE_ROOT "/tests/interop/nbd-tls-certs.sh", certs.dir);
        int st = system(cmd);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
            certs.dir[0] = '\0';
        } else if (st != 0) {
            fail_msg("making certificates failed: %s", cmd);
        }
    }
    return certs.dir[0] ? certs.dir : NULL;
}

static int remove_certs(void **state)
{
    (void)state;
    if (certs.dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", certs.dir);
        if (system(cmd) != 0) {
            return -1;
        }
    }
    return 0;
}

typedef struct server_job {
    int fd;
    vd_tls_creds *creds;
    int timeout_ms;
    vd_mig_conn *c;
    int ret;
    vd_error *err;
} server_job;

static void *server_thread(void *opaque)
{
    server_job *j = opaque;
    j->ret = vd_mig_conn_server(j->fd, j->creds, j->timeout_ms, &j->c, &j->err);
    return NULL;
}

/* Both ends of a TLS connection over a socketpair: the client's result is returned, the
 * server's left in *srv. */
static int tls_pair(const vd_tls_client_creds *cc, const char *hostname, vd_tls_creds *sc,
                    vd_mig_conn **cli, vd_error **cerr, server_job *srv)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    *srv = (server_job){.fd = sv[1], .creds = sc, .timeout_ms = 5000};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, server_thread, srv), 0);
    int ret = vd_mig_conn_client(sv[0], cc, hostname, 5000, cli, cerr);
    pthread_join(t, NULL);
    return ret;
}

static char *path_in(const char *dir, const char *file)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", dir, file) > 0);
    return p;
}

static void test_tls_x509(void **state)
{
    (void)state;
    const char *dir = certs_dir();
    if (!dir) {
        skip();
    }
    char *srv = path_in(dir, "srv"), *cli = path_in(dir, "cli");
    vd_tls_creds *sc = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tls_creds_new_x509("tls0", srv, true, &sc, &err), 0);
    vd_tls_client_creds cc = {.id = "tls0", .dir = cli, .verify_peer = true};
    vd_mig_conn *c = NULL;
    server_job s;
    int ret = tls_pair(&cc, "localhost", sc, &c, &err, &s);
    if (ret < 0 || s.ret < 0) {
        fail_msg("client: %s; server: %s", err ? vd_error_msg(err) : "ok",
                 s.err ? vd_error_msg(s.err) : "ok");
    }
    exchange(c, s.c);
    vd_mig_conn_free(c);
    vd_mig_conn_free(s.c);
    vd_tls_creds_free(sc);
    free(srv);
    free(cli);
}

static void test_tls_x509_refused(void **state)
{
    (void)state;
    const char *dir = certs_dir();
    if (!dir) {
        skip();
    }
    char *srv = path_in(dir, "srv"), *cli = path_in(dir, "cli");
    char *rogue = path_in(dir, "rogue"), *nocert = path_in(dir, "nocert");
    char *impostor = path_in(dir, "impostor");
    vd_tls_creds *sc = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tls_creds_new_x509("tls0", srv, true, &sc, &err), 0);
    vd_mig_conn *c = NULL;
    server_job s;

    /* A client certificate from another CA, none at all, and one from a CA that only has
     * the right name: the server refuses. The client may have finished its side (TLS 1.3)
     * but then finds the connection closed. */
    const char *dirs[] = {rogue, nocert, impostor};
    for (int i = 0; i < 3; i++) {
        vd_tls_client_creds cc = {.id = "tls0", .dir = dirs[i], .verify_peer = true};
        int ret = tls_pair(&cc, "localhost", sc, &c, &err, &s);
        assert_true(s.ret < 0);
        assert_int_equal(s.ret, -s.err->errnum);
        /* GnuTLS clients only offer a certificate issued by a CA the server names, so the
         * rogue one is not even sent; the impostor's is, and verification refuses it. */
        const char *want = i == 2 ? "TLS handshake failed: the client's certificate is not "
                                    "trusted"
                                  : "TLS handshake failed: Certificate is required";
        if (!strstr(vd_error_msg(s.err), want)) {
            fail_msg("server said '%s', not '%s'", vd_error_msg(s.err), want);
        }
        vd_error_free(s.err);
        if (ret == 0) {
            uint8_t b[48];
            assert_true(vd_mig_conn_read(c, b, sizeof(b), &err) < 0);
            vd_mig_conn_free(c);
        }
        vd_error_free(err);
        err = NULL;
    }

    /* The server's certificate is for localhost: the client refuses another name. */
    vd_tls_client_creds cc = {.id = "tls0", .dir = cli, .verify_peer = true};
    int ret = tls_pair(&cc, "otherhost", sc, &c, &err, &s);
    expect_msg(ret, -EACCES, &err, "not trusted for 'otherhost'");
    assert_true(s.ret < 0);
    vd_error_free(s.err);

    /* Verifying a server over a unix socket needs a name to check. */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    expect_msg(vd_mig_conn_client(sv[0], &cc, NULL, 1000, &c, &err), -EINVAL, &err,
               "No hostname available for TLS");
    assert_int_equal(fcntl(sv[0], F_GETFD), -1);   /* the fd was taken and closed */
    close(sv[1]);

    vd_tls_creds_free(sc);
    free(srv);
    free(cli);
    free(rogue);
    free(nocert);
    free(impostor);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char *p = path_in(dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

typedef struct handshake_job {
    int fd;
    const vd_tls_client_creds *creds;
    int timeout_ms;
    int ret;
    vd_error *err;
    atomic_bool done;
} handshake_job;

static void *handshake_thread(void *opaque)
{
    handshake_job *j = opaque;
    vd_mig_conn *c = NULL;
    j->ret = vd_mig_conn_client(j->fd, j->creds, NULL, j->timeout_ms, &c, &j->err);
    vd_mig_conn_free(c);
    atomic_store(&j->done, true);
    return NULL;
}

static void test_tls_psk(void **state)
{
    (void)state;
    char dir[] = "/tmp/vd-mig-psk-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *srv = path_in(dir, "srv"), *cli = path_in(dir, "cli"), *bad = path_in(dir, "bad");
    assert_int_equal(mkdir(srv, 0700), 0);
    assert_int_equal(mkdir(cli, 0700), 0);
    assert_int_equal(mkdir(bad, 0700), 0);
    write_file(srv, "keys.psk", "alice:00112233445566778899aabbccddeeff\n"
                                "qemu:0123456789abcdef0123456789abcdef\n");
    write_file(cli, "keys.psk", "qemu:0123456789abcdef0123456789abcdef\r\n"
                                "alice:00112233445566778899aabbccddeeff\n");
    write_file(bad, "keys.psk", "qemu:fedcba9876543210fedcba9876543210\n");
    vd_tls_creds *sc = NULL;
    vd_error *err = NULL;
    assert_int_equal(vd_tls_creds_new_psk("psk0", srv, &sc, &err), 0);
    vd_mig_conn *c = NULL;
    server_job s;

    /* The default username ("qemu") and another one, each with its key. */
    const char *users[] = {NULL, "alice"};
    for (int i = 0; i < 2; i++) {
        vd_tls_client_creds cc = {.id = "psk0", .psk = true, .dir = cli, .username = users[i]};
        int ret = tls_pair(&cc, NULL, sc, &c, &err, &s);
        if (ret < 0 || s.ret < 0) {
            fail_msg("client: %s; server: %s", err ? vd_error_msg(err) : "ok",
                     s.err ? vd_error_msg(s.err) : "ok");
        }
        /* The second time with signals breaking into GnuTLS's reads and writes. */
        exchange_ex(c, s.c, i == 1);
        vd_mig_conn_free(c);
        vd_mig_conn_free(s.c);
    }

    /* The wrong key: neither side gets a session. */
    vd_tls_client_creds cc = {.id = "psk0", .psk = true, .dir = bad};
    expect_msg(tls_pair(&cc, NULL, sc, &c, &err, &s), -EIO, &err, "TLS handshake failed");
    expect_msg(s.ret, -EIO, &s.err, "TLS handshake failed");

    /* A username the file has no key for. */
    cc.username = "bob";
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    expect_msg(vd_mig_conn_client(sv[0], &cc, NULL, 1000, &c, &err), -ENOENT, &err,
               "has no key for username 'bob'");
    close(sv[1]);

    /* A server that never answers: the handshake gives up in time. */
    cc.username = NULL;
    cc.dir = cli;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pthread_t t;
    handshake_job h = {.fd = sv[0], .creds = &cc, .timeout_ms = 300};
    int64_t start = now_ms();
    assert_int_equal(pthread_create(&t, NULL, handshake_thread, &h), 0);
    while (!atomic_load(&h.done) && now_ms() - start < 5000) {
        usleep(1000);
    }
    int64_t took = now_ms() - start;
    close(sv[1]);   /* frees a client that did not give up */
    pthread_join(t, NULL);
    expect_msg(h.ret, -ETIMEDOUT, &h.err, "TLS handshake failed");
    assert_true(took >= 250 && took < 2000);

    vd_tls_creds_free(sc);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(srv);
    free(cli);
    free(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri),
        cmocka_unit_test(test_plain_socketpair),
        cmocka_unit_test(test_plain_interrupted),
        cmocka_unit_test(test_buffered_reads),
        cmocka_unit_test(test_plain_unix),
        cmocka_unit_test(test_plain_tcp),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_eof),
        cmocka_unit_test(test_shutdown_wakes_reader),
        cmocka_unit_test(test_shutdown_wakes_writer),
        cmocka_unit_test(test_tls_x509),
        cmocka_unit_test(test_tls_x509_refused),
        cmocka_unit_test(test_tls_psk),
    };
    return cmocka_run_group_tests(tests, NULL, remove_certs);
}
