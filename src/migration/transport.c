/* The migration's transport (transport.h): URIs, sockets and connections. A connection reads
 * through a 64 KiB buffer so that 48-byte chunk headers cost no system call each, while
 * large reads and writes go straight between the caller's buffers and the socket. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "migration/transport.h"
#include "nbd/tls.h"
#include "util/socket.h"

#define READ_BUF_SIZE (64u << 10)
#define TLS_RECORD_MAX 16384u   /* the largest TLS record's plaintext */
#define LISTEN_BACKLOG 16       /* a migration opens a few channels at once */
#define IOV_BATCH 64

struct vd_mig_conn {
    int fd;
    gnutls_session_t tls;                   /* NULL: plain */
    gnutls_certificate_credentials_t x509;  /* a client's own credentials */
    gnutls_psk_client_credentials_t psk;
    bool tls_global;                        /* holds a gnutls_global_init reference */
    atomic_bool shut;
    _Atomic uint64_t bytes_out, bytes_in;
    /* The reader's: bytes [rpos, rlen) of rbuf are received but not yet consumed. */
    uint8_t *rbuf;
    size_t rpos, rlen;
};

/* ---- URIs ------------------------------------------------------------------------------ */

static char *xstrndup(const char *s, size_t n)
{
    char *p = strndup(s, n);
    if (!p) {
        abort();
    }
    return p;
}

static int bad_uri(vd_error **errp, const char *uri, const char *why)
{
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid migration URI '%s': %s", uri,
                        why);
}

int vd_mig_uri_parse(const char *uri, vd_mig_addr *a, vd_error **errp)
{
    if (uri && strncmp(uri, "unix:", 5) == 0) {
        const char *path = uri + 5;
        if (!*path) {
            return bad_uri(errp, uri, "the socket path is empty");
        }
        *a = (vd_mig_addr){.is_unix = true, .path = xstrndup(path, strlen(path))};
        return 0;
    }
    if (!uri || strncmp(uri, "tcp:", 4) != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "Parameter 'uri' expects a valid migration protocol");
    }
    const char *host = uri + 4, *host_end, *sep;
    if (*host == '[') {
        host++;
        host_end = strchr(host, ']');
        if (!host_end) {
            return bad_uri(errp, uri, "the IPv6 address has no closing ']'");
        }
        sep = host_end + 1;
        if (*sep && *sep != ':') {
            return bad_uri(errp, uri, "expected ':' and a port after the IPv6 address");
        }
    } else {
        sep = strchr(host, ':');
        host_end = sep ? sep : host + strlen(host);
    }
    if (!sep || !*sep || !sep[1]) {
        return bad_uri(errp, uri, "the port is missing");
    }
    if (strchr(sep + 1, ':')) {
        return bad_uri(errp, uri, "an IPv6 address must be in brackets, as in tcp:[::1]:4444");
    }
    if (host_end == host) {
        return bad_uri(errp, uri, "the host is empty");
    }
    *a = (vd_mig_addr){.host = xstrndup(host, (size_t)(host_end - host)),
                       .port = xstrndup(sep + 1, strlen(sep + 1))};
    return 0;
}

void vd_mig_addr_clear(vd_mig_addr *a)
{
    free(a->path);
    free(a->host);
    free(a->port);
    *a = (vd_mig_addr){0};
}

/* ---- sockets --------------------------------------------------------------------------- */

static int resolve(const vd_mig_addr *a, bool passive, struct addrinfo **res, vd_error **errp)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = passive ? AI_PASSIVE : 0};
    int r = getaddrinfo(a->host, a->port, &hints, res);
    if (r != 0) {
        int err = r == EAI_SYSTEM ? errno : EINVAL;
        return vd_error_set(errp, VD_ERR_INVALID, err, "address resolution failed for %s:%s: %s",
                            a->host, a->port, gai_strerror(r));
    }
    return 0;
}

int vd_mig_listen(const vd_mig_addr *a, vd_error **errp)
{
    if (a->is_unix) {
        return vd_unix_listen(a->path, LISTEN_BACKLOG, errp);
    }
    struct addrinfo *res = NULL;
    int ret = resolve(a, true, &res, errp);
    if (ret < 0) {
        return ret;
    }
    int err = EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
            bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0) {
            freeaddrinfo(res);
            return fd;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    return vd_error_set(errp, VD_ERR_IO, err, "Failed to bind socket to '%s:%s': %s", a->host,
                        a->port, strerror(err));
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int set_blocking(int fd, bool blocking)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) {
        return -errno;
    }
    fl = blocking ? fl & ~O_NONBLOCK : fl | O_NONBLOCK;
    return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

/* A unix connect only blocks while the listener's backlog is full, and Linux bounds that
 * wait by the send timeout, so no non-blocking dance is needed. */
static int connect_unix(const char *path, int timeout_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    struct timeval tv = {.tv_sec = timeout_ms > 0 ? timeout_ms / 1000 : 0,
                         .tv_usec = timeout_ms > 0 ? (timeout_ms % 1000) * 1000 : 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int r;
    do {
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    } while (r < 0 && errno == EINTR);
    int err = r < 0 ? (errno == EAGAIN || errno == EINPROGRESS ? ETIMEDOUT : errno) : 0;
    tv = (struct timeval){0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (err) {
        close(fd);
        return -err;
    }
    return fd;
}

/* One TCP address, non-blocking so that the deadline (0: none) bounds the handshake. */
static int connect_inet(const struct addrinfo *ai, int64_t deadline)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0) {
        return -errno;
    }
    int err = 0;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        err = errno;
    }
    while (err == EINPROGRESS || err == EINTR) {
        int wait = -1;
        if (deadline) {
            int64_t left = deadline - now_ms();
            if (left <= 0) {
                err = ETIMEDOUT;
                break;
            }
            wait = (int)left;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int r = poll(&p, 1, wait);
        if (r < 0) {
            err = errno == EINTR ? EINPROGRESS : errno;
        } else if (r > 0) {
            socklen_t len = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
                err = errno;
            }
        }
    }
    if (err == 0) {
        err = -set_blocking(fd, true);
    }
    if (err) {
        close(fd);
        return -err;
    }
    return fd;
}

int vd_mig_connect(const vd_mig_addr *a, int timeout_ms, vd_error **errp)
{
    if (a->is_unix) {
        int fd = connect_unix(a->path, timeout_ms);
        if (fd < 0) {
            return vd_error_set(errp, VD_ERR_IO, -fd, "Failed to connect to '%s': %s", a->path,
                                strerror(-fd));
        }
        return fd;
    }
    int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    struct addrinfo *res = NULL;
    int ret = resolve(a, false, &res, errp);
    if (ret < 0) {
        return ret;
    }
    int fd = -EHOSTUNREACH;
    for (struct addrinfo *ai = res; ai && fd < 0 && fd != -ETIMEDOUT; ai = ai->ai_next) {
        fd = connect_inet(ai, deadline);
    }
    freeaddrinfo(res);
    if (fd < 0) {
        return vd_error_set(errp, VD_ERR_IO, -fd, "Failed to connect to '%s:%s': %s", a->host,
                            a->port, strerror(-fd));
    }
    return fd;
}

void vd_mig_socket_tune(int fd, int dead_ms)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
        return;
    }
    /* Keepalive finds a dead peer while we only wait to receive; the user timeout bounds
     * how long sent data (and those probes) may stay unacknowledged. */
    int one = 1, idle = 2, intvl = 1, cnt = 5;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    if (dead_ms > 0) {
        unsigned ms = (unsigned)dead_ms;
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
    }
}

/* ---- TLS ------------------------------------------------------------------------------- */

static char *path_in(const char *dir, const char *file)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, file) < 0) {
        abort();
    }
    return p;
}

/* The key for creds' username from dir/keys.psk ("username:hexkey" lines). */
static int load_psk(vd_mig_conn *c, const vd_tls_client_creds *cr, vd_error **errp)
{
    const char *user = cr->username && *cr->username ? cr->username : "qemu";
    char *file = path_in(cr->dir, "keys.psk");
    FILE *f = fopen(file, "re");
    if (!f) {
        int err = errno;
        int ret = vd_error_set(errp, VD_ERR_INVALID, err, "Cannot read PSK file '%s': %s", file,
                               strerror(err));
        free(file);
        return ret;
    }
    char line[1024];
    size_t ulen = strlen(user);
    bool found = false;
    int r = 0;
    while (!found && fgets(line, sizeof(line), f)) {
        if (strncmp(line, user, ulen) != 0 || line[ulen] != ':') {
            continue;
        }
        found = true;
        char *key = line + ulen + 1;
        key[strcspn(key, "\r\n")] = '\0';
        gnutls_datum_t d = {(unsigned char *)key, (unsigned)strlen(key)};
        r = gnutls_psk_allocate_client_credentials(&c->psk);
        if (r >= 0) {
            r = gnutls_psk_set_client_credentials(c->psk, user, &d, GNUTLS_PSK_KEY_HEX);
        }
    }
    int ret = 0;
    if (!found) {
        ret = vd_error_set(errp, VD_ERR_INVALID, ENOENT, "PSK file '%s' has no key for "
                           "username '%s'", file, user);
    } else if (r < 0) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot use the key for '%s' in PSK "
                           "file '%s': %s", user, file, gnutls_strerror(r));
    }
    explicit_bzero(line, sizeof(line));
    fclose(f);
    free(file);
    return ret;
}

static int load_x509(vd_mig_conn *c, const vd_tls_client_creds *cr, vd_error **errp)
{
    char *ca = path_in(cr->dir, "ca-cert.pem");
    char *cert = path_in(cr->dir, "client-cert.pem");
    char *key = path_in(cr->dir, "client-key.pem");
    int ret = 0;
    int r = gnutls_certificate_allocate_credentials(&c->x509);
    if (r < 0) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, EIO, "Cannot allocate credentials: %s",
                           gnutls_strerror(r));
    }
    if (ret == 0) {
        r = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot load CA certificate '%s': "
                               "%s", ca, gnutls_strerror(r));
        }
    }
    /* A client certificate is optional: a server that does not verify peers needs none. */
    if (ret == 0 && access(cert, R_OK) == 0) {
        r = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot load certificate '%s' & "
                               "key '%s': %s", cert, key, gnutls_strerror(r));
        }
    }
    free(ca);
    free(cert);
    free(key);
    return ret;
}

static bool is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static int tls_client_start(vd_mig_conn *c, const vd_tls_client_creds *cr,
                            const char *hostname, int timeout_ms, vd_error **errp)
{
    const char *id = cr->id ? cr->id : "";
    if (!cr->dir) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "TLS credentials '%s': Parameter "
                            "'dir' is missing", id);
    }
    if (hostname && !*hostname) {
        hostname = NULL;
    }
    if (!cr->psk && cr->verify_peer && !hostname) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "No hostname available for TLS: "
                            "credentials '%s' verify the server's certificate against its "
                            "name (set tls-hostname)", id);
    }
    int r = gnutls_global_init();
    if (r < 0) {
        return vd_error_set(errp, VD_ERR_GENERIC, EIO, "Cannot initialize GnuTLS: %s",
                            gnutls_strerror(r));
    }
    c->tls_global = true;
    int ret = cr->psk ? load_psk(c, cr, errp) : load_x509(c, cr, errp);
    if (ret < 0) {
        return ret;
    }
    gnutls_session_t s = NULL;
    r = gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NO_SIGNAL);
    if (r >= 0 && cr->psk) {
        r = gnutls_priority_set_direct(s, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", NULL);
        if (r >= 0) {
            r = gnutls_credentials_set(s, GNUTLS_CRD_PSK, c->psk);
        }
    } else if (r >= 0) {
        r = gnutls_set_default_priority(s);
        if (r >= 0) {
            r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, c->x509);
        }
        /* Server name indication takes DNS names only. */
        if (r >= 0 && hostname && !is_ip_literal(hostname)) {
            r = gnutls_server_name_set(s, GNUTLS_NAME_DNS, hostname, strlen(hostname));
        }
        if (r >= 0 && cr->verify_peer) {
            gnutls_session_set_verify_cert(s, hostname, 0);
        }
    }
    if (r >= 0) {
        gnutls_transport_set_int(s, c->fd);
        gnutls_handshake_set_timeout(s, timeout_ms > 0 ? (unsigned)timeout_ms : 0);
        do {
            r = gnutls_handshake(s);
        } while (r < 0 && !gnutls_error_is_fatal(r));
    }
    if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        gnutls_datum_t why = {NULL, 0};
        gnutls_certificate_verification_status_print(gnutls_session_get_verify_cert_status(s),
                                                     GNUTLS_CRT_X509, &why, 0);
        ret = vd_error_set(errp, VD_ERR_GENERIC, EACCES, "TLS handshake failed: the server's "
                           "certificate is not trusted for '%s': %s", hostname,
                           why.data ? (const char *)why.data : "unknown reason");
        gnutls_free(why.data);
    } else if (r < 0) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, r == GNUTLS_E_TIMEDOUT ? ETIMEDOUT : EIO,
                           "TLS handshake failed: %s", gnutls_strerror(r));
    }
    if (ret < 0) {
        if (s) {
            gnutls_deinit(s);
        }
        return ret;
    }
    c->tls = s;
    return 0;
}

/* ---- connections ----------------------------------------------------------------------- */

static vd_mig_conn *conn_new(int fd)
{
    vd_mig_conn *c = calloc(1, sizeof(*c));
    if (!c || !(c->rbuf = malloc(READ_BUF_SIZE))) {
        abort();
    }
    c->fd = fd;
    /* Reads and writes block; vd_mig_conn_shutdown is how another thread interrupts them. */
    set_blocking(fd, true);
    return c;
}

int vd_mig_conn_client(int fd, const vd_tls_client_creds *creds, const char *hostname,
                       int timeout_ms, vd_mig_conn **out, vd_error **errp)
{
    vd_mig_conn *c = conn_new(fd);
    if (creds) {
        int ret = tls_client_start(c, creds, hostname, timeout_ms, errp);
        if (ret < 0) {
            vd_mig_conn_free(c);
            return ret;
        }
    }
    *out = c;
    return 0;
}

int vd_mig_conn_server(int fd, vd_tls_creds *creds, int timeout_ms, vd_mig_conn **out,
                       vd_error **errp)
{
    vd_mig_conn *c = conn_new(fd);
    if (creds) {
        int ret = tls_server_session_start(creds, fd, timeout_ms, &c->tls, errp);
        if (ret < 0) {
            vd_mig_conn_free(c);
            return ret;
        }
    }
    *out = c;
    return 0;
}

static bool is_shut(const vd_mig_conn *c)
{
    return atomic_load_explicit(&c->shut, memory_order_acquire);
}

/* Waits until the socket is ready again after EAGAIN (a descriptor someone made
 * non-blocking); shutdown makes it ready too. */
static void wait_ready(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    poll(&p, 1, -1);
}

/* A GnuTLS failure as -errno: the socket's own error when the socket failed. *detail gets
 * GnuTLS's words otherwise. */
static int tls_err(ssize_t r, int sys_errno, const char **detail)
{
    if ((r == GNUTLS_E_PUSH_ERROR || r == GNUTLS_E_PULL_ERROR) && sys_errno > 0) {
        return -sys_errno;
    }
    *detail = gnutls_strerror((int)r);
    return r == GNUTLS_E_TIMEDOUT ? -ETIMEDOUT : -EIO;
}

static int io_error(const vd_mig_conn *c, bool writing, int err, const char *detail,
                    vd_error **errp)
{
    if (is_shut(c)) {
        err = ECANCELED;
        detail = "the connection was shut down";
    }
    return vd_error_set(errp, VD_ERR_IO, err, "Unable to %s socket: %s",
                        writing ? "write to" : "read from", detail ? detail : strerror(err));
}

/* Up to len bytes: > 0, 0 at the end of the stream, or -errno. */
static ssize_t conn_recv(vd_mig_conn *c, void *buf, size_t len, const char **detail)
{
    for (;;) {
        if (is_shut(c)) {
            return -ECANCELED;
        }
        if (c->tls) {
            errno = 0;
            ssize_t n = gnutls_record_recv(c->tls, buf, len);
            int err = errno;
            if (n >= 0) {
                return n;
            }
            if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
                if (n == GNUTLS_E_AGAIN) {
                    wait_ready(c->fd, POLLIN);
                }
                continue;
            }
            /* Our stream says where it ends (an END chunk), so a missing close_notify
             * is no truncation attack: the layer above notices a short stream. */
            if (n == GNUTLS_E_PREMATURE_TERMINATION) {
                return 0;
            }
            return tls_err(n, err, detail);
        }
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n >= 0) {
            return n;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            wait_ready(c->fd, POLLIN);
        } else if (errno != EINTR) {
            return -errno;
        }
    }
}

static int conn_read(vd_mig_conn *c, void *buf, size_t len, bool eof_ok, vd_error **errp)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        size_t have = c->rlen - c->rpos;
        if (have) {
            size_t n = have < len - done ? have : len - done;
            memcpy(p + done, c->rbuf + c->rpos, n);
            c->rpos += n;
            done += n;
            continue;
        }
        c->rpos = c->rlen = 0;
        const char *detail = NULL;
        bool direct = len - done >= READ_BUF_SIZE;
        ssize_t n = direct ? conn_recv(c, p + done, len - done, &detail)
                           : conn_recv(c, c->rbuf, READ_BUF_SIZE, &detail);
        if (n == 0) {
            if (is_shut(c)) {
                return io_error(c, false, ECANCELED, NULL, errp);
            }
            if (eof_ok && done == 0) {
                return 0;
            }
            return vd_error_set(errp, VD_ERR_IO, EPIPE, "Connection closed by the peer");
        }
        if (n < 0) {
            return io_error(c, false, (int)-n, detail, errp);
        }
        if (direct) {
            done += (size_t)n;
        } else {
            c->rlen = (size_t)n;
        }
    }
    atomic_fetch_add_explicit(&c->bytes_in, len, memory_order_relaxed);
    return 1;
}

int vd_mig_conn_read(vd_mig_conn *c, void *buf, size_t len, vd_error **errp)
{
    int ret = conn_read(c, buf, len, false, errp);
    return ret < 0 ? ret : 0;
}

int vd_mig_conn_read_or_eof(vd_mig_conn *c, void *buf, size_t len, vd_error **errp)
{
    return conn_read(c, buf, len, true, errp);
}

static int plain_writev(vd_mig_conn *c, const struct iovec *iov, int n)
{
    int i = 0;
    size_t off = 0;   /* the next byte to send is iov[i] at off */
    while (i < n) {
        if (is_shut(c)) {
            return -ECANCELED;
        }
        struct iovec batch[IOV_BATCH];
        int k = 0;
        for (int j = i; j < n && k < IOV_BATCH; j++) {
            size_t skip = j == i ? off : 0;
            if (iov[j].iov_len > skip) {
                batch[k++] = (struct iovec){(char *)iov[j].iov_base + skip,
                                            iov[j].iov_len - skip};
            }
        }
        if (k == 0) {
            break;   /* only empty buffers are left */
        }
        struct msghdr m = {.msg_iov = batch, .msg_iovlen = (size_t)k};
        /* MSG_NOSIGNAL: a peer gone is an error to report, not a SIGPIPE. */
        ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                wait_ready(c->fd, POLLOUT);
            } else if (errno != EINTR) {
                return -errno;
            }
            continue;
        }
        size_t left = (size_t)w;
        while (i < n) {
            size_t rest = iov[i].iov_len - off;
            if (left < rest) {
                off += left;
                break;
            }
            left -= rest;
            i++;
            off = 0;
        }
    }
    return 0;
}

static ssize_t tls_send(vd_mig_conn *c, const void *buf, size_t len, const char **detail)
{
    for (;;) {
        errno = 0;
        ssize_t w = gnutls_record_send(c->tls, buf, len);
        int err = errno;
        if (w >= 0) {
            return w;
        }
        if (w == GNUTLS_E_AGAIN) {
            wait_ready(c->fd, POLLOUT);
        } else if (w != GNUTLS_E_INTERRUPTED) {
            return tls_err(w, err, detail);
        }
    }
}

static int tls_uncork(vd_mig_conn *c, const char **detail)
{
    errno = 0;
    int r = gnutls_record_uncork(c->tls, GNUTLS_RECORD_WAIT);
    return r < 0 ? tls_err(r, errno, detail) : 0;
}

/* Corking gathers a header and the start of its payload into one record; the rest of a
 * large payload then goes out in full records without being copied into the cork. */
static int tls_writev(vd_mig_conn *c, const struct iovec *iov, int n, const char **detail)
{
    size_t corked = 0;
    bool cork = true;
    gnutls_record_cork(c->tls);
    for (int i = 0; i < n; i++) {
        const char *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        while (len > 0) {
            if (is_shut(c)) {
                return -ECANCELED;
            }
            size_t chunk = cork && len > TLS_RECORD_MAX - corked ? TLS_RECORD_MAX - corked : len;
            ssize_t w = tls_send(c, p, chunk, detail);
            if (w < 0) {
                return (int)w;
            }
            p += w;
            len -= (size_t)w;
            if (cork && (corked += (size_t)w) == TLS_RECORD_MAX) {
                cork = false;
                int r = tls_uncork(c, detail);
                if (r < 0) {
                    return r;
                }
            }
        }
    }
    return cork ? tls_uncork(c, detail) : 0;
}

int vd_mig_conn_writev(vd_mig_conn *c, const struct iovec *iov, int n, vd_error **errp)
{
    const char *detail = NULL;
    int ret = c->tls ? tls_writev(c, iov, n, &detail) : plain_writev(c, iov, n);
    if (ret < 0) {
        return io_error(c, true, -ret, detail, errp);
    }
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        total += iov[i].iov_len;
    }
    atomic_fetch_add_explicit(&c->bytes_out, total, memory_order_relaxed);
    return 0;
}

int vd_mig_conn_write(vd_mig_conn *c, const void *buf, size_t len, vd_error **errp)
{
    struct iovec v = {(void *)buf, len};
    return vd_mig_conn_writev(c, &v, 1, errp);
}

void vd_mig_conn_shutdown(vd_mig_conn *c)
{
    atomic_store_explicit(&c->shut, true, memory_order_release);
    shutdown(c->fd, SHUT_RDWR);
}

uint64_t vd_mig_conn_bytes_out(const vd_mig_conn *c)
{
    return atomic_load_explicit(&c->bytes_out, memory_order_relaxed);
}

uint64_t vd_mig_conn_bytes_in(const vd_mig_conn *c)
{
    return atomic_load_explicit(&c->bytes_in, memory_order_relaxed);
}

void vd_mig_conn_free(vd_mig_conn *c)
{
    if (!c) {
        return;
    }
    if (c->tls) {
        /* The close_notify is a courtesy: a peer that reads nothing must not hold us here
         * for more than a second. */
        if (!is_shut(c)) {
            struct timeval tv = {.tv_sec = 1};
            setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            gnutls_bye(c->tls, GNUTLS_SHUT_WR);
        }
        gnutls_deinit(c->tls);
    }
    if (c->x509) {
        gnutls_certificate_free_credentials(c->x509);
    }
    if (c->psk) {
        gnutls_psk_free_client_credentials(c->psk);
    }
    if (c->tls_global) {
        gnutls_global_deinit();
    }
    close(c->fd);
    free(c->rbuf);
    free(c);
}
