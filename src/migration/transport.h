/* The migration's transport: QEMU's migration URIs ("tcp:HOST:PORT", "unix:PATH"), listening
 * and connecting sockets, TCP settings that notice a dead link, and a connection (plain or
 * TLS) that reads and writes whole buffers with QEMU's messages. */
#ifndef VD_MIGRATION_TRANSPORT_H
#define VD_MIGRATION_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vdisk/nbd.h"
#include "vdisk/vdisk.h"

typedef struct vd_mig_addr {
    bool is_unix;
    char *path;              /* unix */
    char *host, *port;       /* tcp; an IPv6 host is kept without its brackets */
} vd_mig_addr;

/* Parses "tcp:HOST:PORT" (HOST may be "[v6 literal]") or "unix:PATH" into *a, which the
 * caller clears with vd_mig_addr_clear. Another scheme is -EINVAL with QEMU 7.2's "Parameter
 * 'uri' expects a valid migration protocol"; a missing port, empty host or empty path is
 * -EINVAL naming the URI. *a is untouched on failure. */
int vd_mig_uri_parse(const char *uri, vd_mig_addr *a, vd_error **errp);
void vd_mig_addr_clear(vd_mig_addr *a);

/* A listening socket for the incoming side: unix sockets are created mode 0600, tcp ones
 * have SO_REUSEADDR (a restarted destination can bind while old connections linger).
 * Returns the fd or -errno. Port "0" picks a free port (see getsockname). */
int vd_mig_listen(const vd_mig_addr *a, vd_error **errp);

/* A connected, blocking socket, the connect bounded by timeout_ms (<= 0: no limit). Errors
 * say "Failed to connect to 'HOST:PORT': <strerror>" or "Failed to connect to 'PATH': ...";
 * -ETIMEDOUT when the time ran out. */
int vd_mig_connect(const vd_mig_addr *a, int timeout_ms, vd_error **errp);

/* Makes a cut link (the peer's namespace deleted, a veth down) fail blocked sends and
 * receives within about dead_ms rather than TCP's minutes: keepalive probes after 2 s idle,
 * 1 s apart, 5 of them, and TCP_USER_TIMEOUT = dead_ms (> 0). Buffer sizes are left to the
 * kernel's autotuning. A no-op on unix sockets; failures are ignored (tuning is best-effort). */
void vd_mig_socket_tune(int fd, int dead_ms);

/* A connection. One thread may read while another writes (GnuTLS allows one sender and one
 * receiver on a session once the handshake is done); two readers or two writers at once are
 * not allowed. vd_mig_conn_shutdown and vd_mig_conn_bytes_* may be called from any thread. */
typedef struct vd_mig_conn vd_mig_conn;

/* The client side on a connected fd, which the call owns from then on (closed on failure
 * too). Plain when creds is NULL. x509 creds: creds->dir holds ca-cert.pem and optionally
 * client-cert.pem + client-key.pem; with verify_peer the server's chain is checked against
 * the CA and its name against hostname, which must then be given (a unix socket has no name
 * to check, so verify_peer without hostname is refused). PSK creds: creds->dir/keys.psk has
 * "username:hexkey" lines; the username is creds->username or "qemu". The handshake is
 * bounded by timeout_ms (<= 0: no limit). */
int vd_mig_conn_client(int fd, const vd_tls_client_creds *creds, const char *hostname,
                       int timeout_ms, vd_mig_conn **out, vd_error **errp);

/* The server side on a connected fd (owned from then on, closed on failure too) with the
 * daemon's credentials, or plain when creds is NULL. With creds that verify peers, the
 * client must present a certificate signed by the CA. The handshake is bounded by
 * timeout_ms (<= 0: no limit). */
int vd_mig_conn_server(int fd, vd_tls_creds *creds, int timeout_ms, vd_mig_conn **out,
                       vd_error **errp);

/* Writes all len bytes or fails with -errno (-EPIPE, -ECONNRESET, -ETIMEDOUT...) and "Unable
 * to write to socket: ..."; -ECANCELED once vd_mig_conn_shutdown was called. Returns 0. */
int vd_mig_conn_write(vd_mig_conn *c, const void *buf, size_t len, vd_error **errp);
/* The same for n buffers in order (a header and its payload), as one stream of bytes. */
int vd_mig_conn_writev(vd_mig_conn *c, const struct iovec *iov, int n, vd_error **errp);

/* Reads exactly len bytes and returns 0. The peer closing the connection first is -EPIPE
 * "Connection closed by the peer"; other failures are -errno "Unable to read from socket:
 * ..."; -ECANCELED once vd_mig_conn_shutdown was called. */
int vd_mig_conn_read(vd_mig_conn *c, void *buf, size_t len, vd_error **errp);
/* The same, but the peer closing the connection before the first byte is a clean end:
 * returns 1 when len bytes were read, 0 at that end (nothing read), or -errno. */
int vd_mig_conn_read_or_eof(vd_mig_conn *c, void *buf, size_t len, vd_error **errp);

/* Wakes any thread blocked in a read or write on c, which then fails with -ECANCELED, and
 * fails every later one. Safe from any thread and more than once; c stays to be freed. */
void vd_mig_conn_shutdown(vd_mig_conn *c);

/* Payload bytes written and read so far (TLS framing not counted). */
uint64_t vd_mig_conn_bytes_out(const vd_mig_conn *c);
uint64_t vd_mig_conn_bytes_in(const vd_mig_conn *c);

/* Says goodbye on a TLS session (unless shut down), closes the fd and frees c. NULL is
 * fine. No other thread may be using c. */
void vd_mig_conn_free(vd_mig_conn *c);

#endif
