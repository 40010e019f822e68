/* TLS for the NBD server with GnuTLS: credentials as QEMU's tls-creds-x509 (ca-cert.pem,
 * server-cert.pem, server-key.pem in a directory) and tls-creds-psk (keys.psk with
 * "username:hexkey" lines) objects, and server-side sessions on a connected socket. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "nbd/nbd-int.h"
#include "nbd/tls.h"

struct vd_tls_creds {
    char *id;
    bool psk;
    bool verify_peer;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_creds;
};

struct nbd_tls {
    gnutls_session_t session;
};

static char *path_in(const char *dir, const char *file)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, file) < 0) {
        abort();
    }
    return p;
}

/* New credentials; each holds a reference on GnuTLS's global state (counted by GnuTLS),
 * so the library keeps no state of its own for it. */
static int creds_new(const char *id, vd_tls_creds **out, vd_error **errp)
{
    int r = gnutls_global_init();
    if (r < 0) {
        return vd_error_set(errp, VD_ERR_GENERIC, EIO, "Cannot initialize GnuTLS: %s",
                            gnutls_strerror(r));
    }
    vd_tls_creds *c = calloc(1, sizeof(*c));
    if (!c || !(c->id = strdup(id ? id : ""))) {
        abort();
    }
    *out = c;
    return 0;
}

int vd_tls_creds_new_x509(const char *id, const char *dir, bool verify_peer,
                          vd_tls_creds **out, vd_error **errp)
{
    if (!dir) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'dir' is missing");
    }
    vd_tls_creds *c = NULL;
    int ret = creds_new(id, &c, errp);
    if (ret < 0) {
        return ret;
    }
    c->verify_peer = verify_peer;
    char *ca = path_in(dir, "ca-cert.pem");
    char *cert = path_in(dir, "server-cert.pem");
    char *key = path_in(dir, "server-key.pem");
    int r = gnutls_certificate_allocate_credentials(&c->x509);
    if (r >= 0) {
        r = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot load CA certificate "
                               "'%s': %s", ca, gnutls_strerror(r));
        }
    }
    if (r >= 0) {
        r = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot load certificate '%s' "
                               "& key '%s': %s", cert, key, gnutls_strerror(r));
        }
    }
    free(ca);
    free(cert);
    free(key);
    if (r < 0) {
        if (ret == 0) {
            ret = vd_error_set(errp, VD_ERR_GENERIC, EIO, "Cannot allocate credentials: %s",
                               gnutls_strerror(r));
        }
        vd_tls_creds_free(c);
        return ret;
    }
    *out = c;
    return 0;
}

int vd_tls_creds_new_psk(const char *id, const char *dir, vd_tls_creds **out,
                         vd_error **errp)
{
    int ret;
    if (!dir) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'dir' is missing");
    }
    char *file = path_in(dir, "keys.psk");
    FILE *f = fopen(file, "r");
    if (!f) {
        int err = errno;
        ret = vd_error_set(errp, VD_ERR_INVALID, err, "Cannot read PSK file '%s': %s", file,
                           strerror(err));
        free(file);
        return ret;
    }
    fclose(f);
    vd_tls_creds *c = NULL;
    ret = creds_new(id, &c, errp);
    if (ret < 0) {
        free(file);
        return ret;
    }
    c->psk = true;
    int r = gnutls_psk_allocate_server_credentials(&c->psk_creds);
    if (r >= 0) {
        r = gnutls_psk_set_server_credentials_file(c->psk_creds, file);
    }
    if (r < 0) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot use PSK file '%s': %s", file,
                           gnutls_strerror(r));
        free(file);
        vd_tls_creds_free(c);
        return ret;
    }
    free(file);
    *out = c;
    return 0;
}

const char *vd_tls_creds_id(const vd_tls_creds *c)
{
    return c->id;
}

void vd_tls_creds_free(vd_tls_creds *c)
{
    if (!c) {
        return;
    }
    if (c->x509) {
        gnutls_certificate_free_credentials(c->x509);
    }
    if (c->psk_creds) {
        gnutls_psk_free_server_credentials(c->psk_creds);
    }
    free(c->id);
    free(c);
    gnutls_global_deinit();
}

int tls_server_session_start(vd_tls_creds *creds, int fd, int timeout_ms,
                             gnutls_session_t *out, vd_error **errp)
{
    gnutls_session_t session = NULL;
    int r = gnutls_init(&session, GNUTLS_SERVER | GNUTLS_NO_SIGNAL);
    if (r < 0) {
        return vd_error_set(errp, VD_ERR_GENERIC, EIO, "TLS handshake failed: %s",
                            gnutls_strerror(r));
    }
    if (creds->psk) {
        r = gnutls_priority_set_direct(session, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", NULL);
        if (r >= 0) {
            r = gnutls_credentials_set(session, GNUTLS_CRD_PSK, creds->psk_creds);
        }
    } else {
        r = gnutls_set_default_priority(session);
        if (r >= 0) {
            r = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, creds->x509);
        }
        if (r >= 0) {
            gnutls_certificate_server_set_request(session, creds->verify_peer
                                                               ? GNUTLS_CERT_REQUIRE
                                                               : GNUTLS_CERT_IGNORE);
        }
    }
    if (r >= 0) {
        gnutls_transport_set_int(session, fd);
        gnutls_handshake_set_timeout(session, timeout_ms > 0 ? (unsigned)timeout_ms : 0);
        do {
            r = gnutls_handshake(session);
        } while (r < 0 && !gnutls_error_is_fatal(r));
    }
    if (r >= 0 && !creds->psk && creds->verify_peer) {
        unsigned status = 0;
        r = gnutls_certificate_verify_peers2(session, &status);
        if (r >= 0 && status) {
            gnutls_datum_t why = {NULL, 0};
            gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0);
            int ret = vd_error_set(errp, VD_ERR_GENERIC, EACCES, "TLS handshake failed: the "
                                   "client's certificate is not trusted: %s",
                                   why.data ? (const char *)why.data : "unknown reason");
            gnutls_free(why.data);
            gnutls_deinit(session);
            return ret;
        }
    }
    if (r < 0) {
        gnutls_deinit(session);
        return vd_error_set(errp, VD_ERR_GENERIC, r == GNUTLS_E_TIMEDOUT ? ETIMEDOUT : EIO,
                            "TLS handshake failed: %s", gnutls_strerror(r));
    }
    *out = session;
    return 0;
}

int nbd_tls_start(vd_tls_creds *creds, int fd, int timeout_ms, nbd_tls **out, char *err,
                  size_t errlen)
{
    nbd_tls *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    vd_error *e = NULL;
    if (tls_server_session_start(creds, fd, timeout_ms, &t->session, &e) < 0) {
        snprintf(err, errlen, "%s", vd_error_msg(e));
        vd_error_free(e);
        free(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* A record call's result: bytes, or -1 with errno EIO; retried while GnuTLS asks to. */
static ssize_t record_io(nbd_tls *t, void *buf, size_t len, bool send)
{
    for (;;) {
        ssize_t n = send ? gnutls_record_send(t->session, buf, len)
                         : gnutls_record_recv(t->session, buf, len);
        if (n >= 0) {
            return n;
        }
        if (n != GNUTLS_E_AGAIN && n != GNUTLS_E_INTERRUPTED) {
            errno = EIO;
            return -1;
        }
    }
}

ssize_t nbd_tls_recv(nbd_tls *t, void *buf, size_t len)
{
    return record_io(t, buf, len, false);
}

ssize_t nbd_tls_send(nbd_tls *t, const void *buf, size_t len)
{
    return record_io(t, (void *)buf, len, true);
}

bool nbd_tls_pending(nbd_tls *t)
{
    return gnutls_record_check_pending(t->session) > 0;
}

void nbd_tls_free(nbd_tls *t)
{
    if (!t) {
        return;
    }
    /* The close_notify is a courtesy: a client that does not read must not hold the
     * connection's thread here, so the send may wait one second at most. */
    int fd = gnutls_transport_get_int(t->session);
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    gnutls_bye(t->session, GNUTLS_SHUT_WR);
    gnutls_deinit(t->session);
    free(t);
}
