/* QEMU's nbd protocol driver (the client side of NBD) on libnbd: the blockdev options
 * (server, export, tls-creds, tls-hostname; the legacy path/host/port), the
 * connection and handshake, and what the node learns from it (size, limits, what the
 * server can do). The data path is in nbd-io.c. */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "block/drivers/nbd-uri.h"
#include "block/drivers/nbd.h"

/* QEMU's NBD_MAX_BUFFER_SIZE: the largest request it sends whatever the server allows. */
#define NBD_MAX_BUFFER (32u << 20)

static const char *const nbdc_runtime_opts[] = {
    "server", "export", "tls-creds", "tls-hostname", "path", "host", "port",
    "x-dirty-bitmap", NULL,
};

/* Where to connect, from the options. */
typedef struct nbdc_addr {
    bool is_unix;
    const char *path;      /* unix */
    const char *host;      /* inet */
    char port[34];         /* inet: a number or a service name, as QEMU takes it */
    const char *export;    /* NULL: none given ("" is asked for) */
    const char *tls_creds, *tls_hostname;
    const char *dirty_bitmap;  /* x-dirty-bitmap: a meta context instead of base:allocation */
} nbdc_addr;

/* A "filename" option (json:{"driver": "nbd", "filename": "nbd://..."}) is not parsed:
 * QEMU 7.2 parses an NBD name only when it is the image name itself, and otherwise ignores
 * it (then says "NBD server address missing" unless a server is given too). */
static int drop_filename(vd_tree *o, vd_error **errp)
{
    vd_tree *fname = vd_tree_take(o, "filename");
    int ret = 0;
    if (fname && vd_tree_type_of(fname) != VD_TREE_STRING) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                           "'filename', expected: string");
    }
    vd_tree_free(fname);
    return ret;
}

/* A port given as a string (a number or a service name) or as an integer. */
static int get_port(const vd_tree *obj, const char *what, char *out, vd_error **errp)
{
    const vd_tree *p = vd_tree_get(obj, "port");
    if (p && vd_tree_type_of(p) == VD_TREE_INT && vd_tree_int(p) >= 0 &&
        vd_tree_int(p) <= 65535) {
        snprintf(out, 34, "%d", (int)vd_tree_int(p));
        return 0;
    }
    const char *s = NULL;
    int ret = vd_tree_get_str(obj, "port", what, &s, errp);
    if (ret < 0) {
        return ret;
    }
    if (s && strlen(s) > 32) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid port '%s'", s);
    }
    snprintf(out, 34, "%s", s ? s : VD_NBD_DEFAULT_PORT);
    return 0;
}

/* The members of a server object (QEMU's SocketAddress); what NBD does not use is taken
 * and ignored, as QEMU's address parsing accepts it. */
static const char *const unix_keys[] = {"type", "path", "abstract", "tight", NULL};
static const char *const inet_keys[] = {"type", "host", "port", "numeric", "to", "ipv4",
                                        "ipv6", "keep-alive", NULL};

/* server: {"type": "unix", "path": P} or {"type": "inet", "host": H, "port": N}, or the
 * legacy top-level path / host / port (QEMU's nbd_process_legacy_socket_options). */
static int read_server(const vd_tree *o, nbdc_addr *a, vd_error **errp)
{
    const vd_tree *server = vd_tree_get(o, "server");
    const char *path = NULL, *host = NULL, *type = NULL;
    int ret = vd_tree_get_str(o, "path", "path", &path, errp);
    if (ret == 0) {
        ret = vd_tree_get_str(o, "host", "host", &host, errp);
    }
    if (ret < 0) {
        return ret;
    }
    bool legacy = path || host || vd_tree_get(o, "port");
    if (legacy && server) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Cannot use 'server' and "
                            "path/host/port at the same time");
    }
    if (path || host) {
        if (path && host) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "path and host may not be "
                                "used at the same time");
        }
        if (path && vd_tree_get(o, "port")) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "port may not be used without "
                                "host");
        }
        a->is_unix = path != NULL;
        a->path = path;
        a->host = host;
        return path ? 0 : get_port(o, "port", a->port, errp);
    }
    if (!server || vd_tree_size(server) == 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "NBD server address missing");
    }
    if (vd_tree_type_of(server) != VD_TREE_OBJECT) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for "
                            "'server', expected: object");
    }
    ret = vd_tree_get_str(server, "type", "server.type", &type, errp);
    if (ret < 0) {
        return ret;
    }
    if (!type) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.type' is "
                            "missing");
    }
    const char *const *known;
    if (!strcmp(type, "unix")) {
        known = unix_keys;
        ret = vd_tree_get_str(server, "path", "server.path", &a->path, errp);
        if (ret == 0 && !a->path) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.path' is "
                               "missing");
        }
        a->is_unix = true;
    } else if (!strcmp(type, "inet")) {
        known = inet_keys;
        ret = vd_tree_get_str(server, "host", "server.host", &a->host, errp);
        if (ret == 0 && !a->host) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.host' is "
                               "missing");
        }
        if (ret == 0 && !vd_tree_get(server, "port")) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.port' is "
                               "missing");
        }
        if (ret == 0) {
            ret = get_port(server, "server.port", a->port, errp);
        }
    } else if (!strcmp(type, "fd") || !strcmp(type, "vsock")) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "NBD server type '%s' is not "
                            "supported by vdisk", type);
    } else {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.type' does not "
                            "accept value '%s'", type);
    }
    for (size_t i = 0; ret == 0 && i < vd_tree_size(server); i++) {
        const char *k = vd_tree_key(server, i);
        bool ok = false;
        for (const char *const *p = known; *p && !ok; p++) {
            ok = !strcmp(*p, k);
        }
        if (!ok) {
            ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'server.%s' is "
                               "unexpected", k);
        }
    }
    return ret;
}

/* The node's name as QEMU makes it for an NBD node (nbd_refresh_filename). */
static char *make_desc(const nbdc_addr *a)
{
    char *s = NULL;
    int r;
    if (a->is_unix) {
        r = a->export ? asprintf(&s, "nbd+unix:///%s?socket=%s", a->export, a->path)
                      : asprintf(&s, "nbd+unix://?socket=%s", a->path);
    } else {
        r = a->export ? asprintf(&s, "nbd://%s:%s/%s", a->host, a->port, a->export)
                      : asprintf(&s, "nbd://%s:%s", a->host, a->port);
    }
    if (r < 0) {
        abort();
    }
    return s;
}

/* Connects a socket ourselves, so that a refused or missing server gets QEMU's message
 * ("Failed to connect to '...': ...") apart from errors of the NBD handshake. */
static int connect_unix(const char *path, vd_error **errp)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "UNIX socket path '%s' is too "
                            "long", path);
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        if (fd >= 0) {
            close(fd);
        }
        return vd_error_set(errp, VD_ERR_IO, err, "Failed to connect to '%s': %s", path,
                            strerror(err));
    }
    return fd;
}

static int connect_inet(const char *host, const char *port, vd_error **errp)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    int r = getaddrinfo(host, port, &hints, &res);
    if (r) {
        return vd_error_set(errp, VD_ERR_IO, EIO, "address resolution failed for %s:%s: %s",
                            host, port, gai_strerror(r));
    }
    int err = ECONNREFUSED, fd = -1;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            err = errno;
            close(fd);
            fd = -1;
        } else if (fd < 0) {
            err = errno;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        return vd_error_set(errp, VD_ERR_IO, err, "Failed to connect to '%s:%s': %s", host,
                            port, strerror(err));
    }
    return fd;
}

/* The libnbd message without the name of the call that failed. */
static const char *nbdc_msg(void)
{
    const char *m = nbd_get_error();
    if (!m) {
        return "unknown error";
    }
    const char *colon = strstr(m, ": ");
    return !strncmp(m, "nbd_", 4) && colon ? colon + 2 : m;
}

static int nbdc_fail(const char *what, vd_error **errp)
{
    int err = nbd_get_errno() ? nbd_get_errno() : EIO;
    return vd_error_set(errp, VD_ERR_IO, err, "%s%s", what, nbdc_msg());
}

/* tls-creds: the engine's client credentials of that id (QEMU's --object
 * tls-creds-x509/-psk,endpoint=client). */
static int setup_tls(vd_node *n, struct nbd_handle *h, const nbdc_addr *a, vd_error **errp)
{
    const vd_tls_client_creds *cr = vd_engine_tls_client_creds(n->engine, a->tls_creds);
    if (!cr) {
        return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "No TLS credentials with id "
                            "'%s'", a->tls_creds);
    }
    /* libnbd 1.14 checks the certificate against the host it connects to (none over a
     * unix socket) and cannot be told another name: refuse rather than check less than
     * was asked. */
    if (a->tls_hostname && (a->is_unix || strcmp(a->tls_hostname, a->host))) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, "tls-hostname '%s' is not "
                            "supported: vdisk verifies the server certificate against the "
                            "host it connects to only", a->tls_hostname);
    }
    if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0) {
        return nbdc_fail("TLS: ", errp);
    }
    if (cr->psk) {
        if (!cr->dir) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "TLS credentials '%s' have no "
                                "dir", cr->id);
        }
        char *file = NULL;
        if (asprintf(&file, "%s/keys.psk", cr->dir) < 0) {
            abort();
        }
        int r = nbd_set_tls_psk_file(h, file);
        free(file);
        if (r < 0 || nbd_set_tls_username(h, cr->username ? cr->username : "qemu") < 0) {
            return nbdc_fail("TLS: ", errp);
        }
        return 0;
    }
    if ((cr->dir && nbd_set_tls_certificates(h, cr->dir) < 0) ||
        nbd_set_tls_verify_peer(h, cr->verify_peer) < 0) {
        return nbdc_fail("TLS: ", errp);
    }
    return 0;
}

static int read_options(vd_node *n, nbdc_addr *a, vd_error **errp)
{
    int ret = drop_filename(n->options, errp);
    if (ret == 0) {
        ret = read_server(n->options, a, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(n->options, "export", "export", &a->export, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(n->options, "tls-creds", "tls-creds", &a->tls_creds, errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(n->options, "tls-hostname", "tls-hostname", &a->tls_hostname,
                              errp);
    }
    if (ret == 0) {
        ret = vd_tree_get_str(n->options, "x-dirty-bitmap", "x-dirty-bitmap",
                              &a->dirty_bitmap, errp);
    }
    if (ret == 0 && !a->tls_creds) {
        a->tls_hostname = NULL;  /* QEMU ignores it without TLS */
    }
    return ret;
}

/* Handshake (libnbd does it on the connected socket; TLS over TCP lets libnbd connect, as
 * it then checks the certificate against the host name). */
static int handshake(vd_node *n, nbdc_client *c, const nbdc_addr *a, vd_error **errp)
{
    struct nbd_handle *h = c->h;
    if (nbd_set_export_name(h, a->export ? a->export : "") < 0 ||
        nbd_add_meta_context(h, c->meta_context) < 0 ||
        nbd_set_request_block_size(h, true) < 0) {
        return nbdc_fail("", errp);
    }
    int ret = a->tls_creds ? setup_tls(n, h, a, errp) : 0;
    if (ret < 0) {
        return ret;
    }
    if (a->tls_creds && !a->is_unix) {
        if (nbd_connect_tcp(h, a->host, a->port) < 0) {
            return nbdc_fail("", errp);
        }
        return 0;
    }
    int fd = a->is_unix ? connect_unix(a->path, errp) : connect_inet(a->host, a->port, errp);
    if (fd < 0) {
        return fd;
    }
    if (nbd_connect_socket(h, fd) < 0) {
        return nbdc_fail("", errp);  /* libnbd owns fd from the call on */
    }
    return 0;
}

/* What the server offers; limits as QEMU's nbd_refresh_limits sets them. */
static int read_limits(vd_node *n, nbdc_client *c, unsigned flags, vd_error **errp)
{
    struct nbd_handle *h = c->h;
    int64_t size = nbd_get_size(h);
    int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    int ro = nbd_is_read_only(h);
    if (size < 0 || min < 0 || max < 0 || ro < 0) {
        return nbdc_fail("", errp);
    }
    if (ro && (flags & VD_OPEN_RDWR)) {
        /* QEMU 7.2 refuses with -EACCES but loses its "NBD export is read-only" on the
         * way, so its tools say this; say the same, as scripts may match it. */
        return vd_error_set(errp, VD_ERR_INVALID, EACCES, "Could not open image: %s",
                            strerror(EACCES));
    }
    c->can_fua = nbd_can_fua(h) == 1;
    c->can_flush = nbd_can_flush(h) == 1;
    c->can_trim = nbd_can_trim(h) == 1;
    c->can_zero = nbd_can_zero(h) == 1;
    c->can_fast_zero = nbd_can_fast_zero(h) == 1;
    c->base_allocation = nbd_can_meta_context(h, c->meta_context) == 1;
    if (!c->base_allocation && strcmp(c->meta_context, LIBNBD_CONTEXT_BASE_ALLOCATION)) {
        /* QEMU's "requested x-dirty-bitmap ... not found" is lost on the way to its tools,
         * as for a read-only export: say what they print. */
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Could not open image: %s",
                            strerror(EINVAL));
    }
    /* No minimum from the server: byte access if the size or block status needs it,
     * else sectors, as an old server may not cope with less. */
    if (min == 0) {
        min = size % 512 || c->base_allocation ? 1 : 512;
    }
    if (min > (1 << 20)) {  /* libnbd already refuses more than 64 KiB; be safe */
        return vd_error_set(errp, VD_ERR_IO, EIO, "%s: server minimum block size %lld is "
                            "too large", c->desc, (long long)min);
    }
    uint64_t cap = max && (uint64_t)max < NBD_MAX_BUFFER ? (uint64_t)max : NBD_MAX_BUFFER;
    c->align = (uint32_t)min;
    /* A size that is no multiple of the minimum block is cut to one (as QEMU does). */
    n->size = (uint64_t)size / c->align * c->align;
    n->request_alignment = c->align;
    n->max_transfer = cap / c->align * c->align;
    n->max_pwrite_zeroes = n->max_transfer;
    n->max_pdiscard = (uint64_t)INT32_MAX / c->align * c->align;
    return 0;
}

static void client_free(nbdc_client *c)
{
    nbdc_poller_stop(c);
    if (c->h) {
        nbd_close(c->h);
    }
    if (c->wake_fd >= 0) {
        close(c->wake_fd);
    }
    pthread_cond_destroy(&c->idle);
    pthread_mutex_destroy(&c->lock);
    free(c->desc);
    free(c->meta_context);
    free(c);
}

static int nbdc_open(vd_node *n, unsigned flags, vd_error **errp)
{
    nbdc_addr a = {0};
    int ret = read_options(n, &a, errp);
    if (ret < 0) {
        return ret;
    }
    nbdc_client *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->wake_fd = -1;
    c->node = n;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->idle, NULL);
    c->desc = make_desc(&a);
    c->meta_context = strdup(a.dirty_bitmap ? a.dirty_bitmap : LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (!c->meta_context) {
        abort();
    }
    c->h = nbd_create();
    if (!c->h) {
        ret = nbdc_fail("", errp);
    } else {
        ret = handshake(n, c, &a, errp);
    }
    if (ret == 0) {
        ret = read_limits(n, c, flags, errp);
    }
    if (ret == 0) {
        ret = nbdc_poller_start(c, errp);
    }
    if (ret < 0) {
        client_free(c);
        return ret;
    }
    free(n->filename);
    n->filename = strdup(c->desc);
    if (!n->filename) {
        abort();
    }
    n->opaque = c;
    return 0;
}

static void nbdc_close_node(vd_node *n)
{
    nbdc_client *c = n->opaque;
    /* Say goodbye (NBD_CMD_DISC) and give the server a moment to close its end; a server
     * that does not is left behind when the handle closes the socket. */
    if (!nbd_aio_is_dead(c->h) && !nbd_aio_is_closed(c->h) &&
        nbd_aio_disconnect(c->h, 0) == 0) {
        nbdc_wait_ended(c, 2000);
    }
    client_free(c);
}

/* An NBD export has the size the server gives it. A caller that only needs "at least this
 * big" (shrink false: a format laying out a new image) is content with a larger export. */
static int nbdc_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                        vd_error **errp)
{
    (void)prealloc;
    if (size == n->size || (size < n->size && !shrink)) {
        return 0;
    }
    return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP, size > n->size
                        ? "Cannot grow NBD nodes" : "Cannot resize NBD nodes");
}

/* The server knows nothing of host allocation (qemu-img: "disk size: unavailable"). */
static int64_t nbdc_allocated_size(vd_node *n)
{
    (void)n;
    return -ENOTSUP;
}

const vd_driver vd_nbd_driver = {
    .name = "nbd",
    .is_format = false,
    .remote = true,
    .runtime_opts = nbdc_runtime_opts,
    .open = nbdc_open,
    .close = nbdc_close_node,
    .pread = nbdc_io_pread,
    .pwrite = nbdc_io_pwrite,
    .pwrite_zeroes = nbdc_io_pwrite_zeroes,
    .pdiscard = nbdc_io_pdiscard,
    .flush = nbdc_io_flush,
    .block_status = nbdc_io_block_status,
    .truncate = nbdc_truncate,
    .allocated_size = nbdc_allocated_size,
};
