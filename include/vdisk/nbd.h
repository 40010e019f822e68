/* NBD server: exports vd_disk handles over the NBD protocol (fixed newstyle, structured
 * replies, base:allocation and qemu:allocation-depth block status, TLS), on unix sockets
 * and TCP. One server holds any number of listeners and exports; every call is
 * thread-safe. Used by vdiskd (nbd-server-start, block-export-add) and by `vdisk nbd`,
 * whose --list also uses the small client at the end of this header. */
#ifndef VDISK_NBD_H
#define VDISK_NBD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/bitmap.h"
#include "vdisk/vdisk.h"

/* ---- TLS credentials (QEMU's tls-creds-x509 / tls-creds-psk objects) ------------------- */

typedef struct vd_tls_creds vd_tls_creds;

/* x509: dir holds ca-cert.pem, server-cert.pem, server-key.pem (QEMU's file names);
 * verify_peer asks clients for a certificate signed by the CA. */
int vd_tls_creds_new_x509(const char *id, const char *dir, bool verify_peer,
                          vd_tls_creds **out, vd_error **errp);
/* PSK: dir holds keys.psk with lines "username:hexkey" (QEMU's and nbdkit's format). */
int vd_tls_creds_new_psk(const char *id, const char *dir, vd_tls_creds **out,
                         vd_error **errp);
const char *vd_tls_creds_id(const vd_tls_creds *c);
void vd_tls_creds_free(vd_tls_creds *c);

/* ---- server ------------------------------------------------------------------------------ */

typedef struct vd_nbd_server vd_nbd_server;

typedef struct vd_nbd_server_opts {
    /* Clients served at once; more are refused at accept. 0 = no limit. QEMU's
     * nbd-server-start defaults to 100, qemu-nbd to 1 (--shared=1). Multi-conn is
     * advertised unless this is 1. */
    unsigned max_connections;
    /* With credentials, clients must STARTTLS before anything else (plaintext
     * options get ERR_TLS_REQD). The server keeps a reference; the caller must keep
     * the credentials alive until vd_nbd_server_free. */
    vd_tls_creds *tls;
    /* qemu-nbd without --persistent: once a client that finished the handshake leaves
     * and no other is connected, accept no more clients and report it through
     * vd_nbd_server_finished. Clients that leave during the handshake (a port probe)
     * do not count. */
    bool one_shot;
    /* Worker threads that run requests; 0: four per core, at least 8. */
    unsigned workers;
} vd_nbd_server_opts;

int vd_nbd_server_new(const vd_nbd_server_opts *opts, vd_nbd_server **out, vd_error **errp);
/* Listens on a unix socket (created with mode 0600 unless the path exists and is not
 * a socket, which fails) or on TCP host:port (host NULL = all addresses). May be called
 * several times. */
int vd_nbd_server_listen_unix(vd_nbd_server *s, const char *path, vd_error **errp);
int vd_nbd_server_listen_inet(vd_nbd_server *s, const char *host, const char *port,
                              vd_error **errp);
/* Serves on a socket that already listens (systemd socket activation, QEMU's addr.type=fd);
 * the server owns fd from then on and closes it at free. */
int vd_nbd_server_listen_fd(vd_nbd_server *s, int fd, vd_error **errp);
/* Connections open now, and accepted since the start. */
void vd_nbd_server_counts(vd_nbd_server *s, unsigned *open, uint64_t *accepted);
/* With one_shot: true once the server takes no more clients (its owner should free it). */
bool vd_nbd_server_finished(vd_nbd_server *s);
/* Stops accepting, shuts every connection down (requests already running finish; those
 * not started are not run, and nothing more is read), removes the unix sockets it
 * created, frees everything. Returns in bounded time whatever the clients do. The disks
 * of the exports are not closed (they belong to the caller). */
void vd_nbd_server_free(vd_nbd_server *s);

typedef struct vd_nbd_export_opts {
    const char *name;         /* "" is the default export */
    const char *description;  /* may be NULL */
    vd_disk *disk;            /* must stay open while exported */
    bool writable;            /* else READ_ONLY; a read-only disk cannot be writable */
    /* The minimum block size advertised (NBD_INFO_BLOCK_SIZE); 0 means 1. qemu-nbd says
     * 512 for an image whose format was probed as raw. A power of two up to 4096. */
    uint32_t min_block;
    /* The export starts at this byte of the disk and ends where the disk does (qemu-nbd
     * --offset); must not be past the disk's end. With an offset, block status reports the
     * disk's top image only, as qemu-nbd's raw node over the image does. */
    uint64_t offset;
    /* Also offer the qemu:allocation-depth meta context (qemu-nbd -A): 0 unallocated,
     * N allocated in the Nth image of the backing chain (1 = the top). */
    bool allocation_depth;
    /* Bitmaps offered as the meta contexts qemu:dirty-bitmap:NAME (qemu-nbd -B,
     * block-export-add "bitmaps"), at most 30, acquired by the caller
     * (vd_bitmap_acquire). Once the export is added it owns them and releases them when it
     * is gone (after its last client); if the add fails they stay the caller's. */
    vd_dirty_bitmap *const *bitmaps;
    size_t nb_bitmaps;
} vd_nbd_export_opts;

int vd_nbd_export_add(vd_nbd_server *s, const vd_nbd_export_opts *o, vd_error **errp);
/* Removes an export: new connections no longer see it; with hard, its open
 * connections are closed now, else (QEMU's "safe" mode) removal fails with -EBUSY while
 * clients are connected. */
int vd_nbd_export_remove(vd_nbd_server *s, const char *name, bool hard, vd_error **errp);

typedef struct vd_nbd_export_info {
    char *name;
    char *description;
    vd_disk *disk;
    bool writable;
    unsigned clients;         /* connections currently using it */
} vd_nbd_export_info;

/* The exports in the order they were added. Free with vd_nbd_export_list_free. */
int vd_nbd_export_list(vd_nbd_server *s, vd_nbd_export_info **out, size_t *nb);
void vd_nbd_export_list_free(vd_nbd_export_info *list, size_t nb);

/* ---- client: listing a server's exports (qemu-nbd --list) ------------------------------- */

typedef struct vd_nbd_export_desc {
    char *name;
    char *description;        /* NULL when the server gave none */
    uint64_t size;
    uint16_t flags;           /* NBD_FLAG_*; 0 when the server did not answer NBD_OPT_INFO */
    uint32_t min_block, opt_block, max_block;  /* 0 when not advertised */
    char **contexts;          /* the meta contexts the server lists */
    size_t nb_contexts;
} vd_nbd_export_desc;

/* Lists the exports of the server connected on fd as qemu-nbd --list learns them: the
 * handshake (structured replies asked for), NBD_OPT_LIST, then NBD_OPT_INFO and
 * NBD_OPT_LIST_META_CONTEXT for each export, then NBD_OPT_ABORT. An old-style server gives
 * its one unnamed export. Errors carry qemu-nbd's messages. fd stays the caller's. */
int vd_nbd_list_exports(int fd, vd_nbd_export_desc **out, size_t *nb, vd_error **errp);
void vd_nbd_export_desc_free(vd_nbd_export_desc *list, size_t nb);

#endif
