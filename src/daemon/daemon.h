/* vdiskd's state: the block node registry (blockdev-add / --blockdev), TLS objects, the
 * NBD server and its exports, shared by the command line (vdiskd.c), the registry
 * (blockdev.c) and the QMP commands (commands.c). One daemon per process. */
#ifndef VD_DAEMON_H
#define VD_DAEMON_H

#include <stdbool.h>

#include <json-c/json.h>

#include "qmp/qmp.h"
#include "vdisk/nbd.h"
#include "vdisk/vdisk.h"

/* A node as QMP names it: a file node (a path; opened only through the format node
 * above it, or as raw when exported itself) or a format node (an open disk handle). */
typedef struct dnode {
    char *name;
    bool auto_name;              /* "#blockNNN", made for a nested file node */
    char *driver;                /* "file", "qcow2", "raw" */
    char *filename;              /* the file's path (format nodes: their file's) */
    struct dnode *file;          /* format nodes: the file child */
    struct dnode *backing;       /* after blockdev-snapshot: the node under this overlay */
    unsigned flags;              /* VD_OPEN_* */
    bool read_only, direct, no_flush;
    vd_disk *disk;               /* format nodes; file nodes only while exported */
    bool owns_disk;              /* false for the backing handle left by a snapshot */
    int users;                   /* format nodes above, exports on it */
    struct dnode *next;
} dnode;

typedef struct dexport {
    char *id;
    char *name;                  /* NBD export name */
    dnode *node;
    struct dexport *next;
} dexport;

typedef struct dtls {
    char *id;
    vd_tls_creds *creds;
    struct dtls *next;
} dtls;

typedef struct daemon_state {
    vd_engine *engine;
    dnode *nodes;                /* in order of addition */
    unsigned next_auto;
    dtls *tls;
    vd_nbd_server *nbd;
    dexport *exports;
    qmp_server *qmp;
} daemon_state;

extern daemon_state vdiskd;

/* blockdev.c: blockdev-add from a QMP object or a --blockdev option (values may be
 * strings "on"/"off"/numbers, as the command line gives them). */
/* events.c: the engine's event handler (queues), and the main loop's delivery of the
 * queue as QMP events. */
void daemon_on_engine_event(void *opaque, const vd_event *ev);
void daemon_deliver_events(void);
/* vdiskd's QMP commands (commands.c), for its QMP server. */
extern const qmp_command_table vdiskd_commands;
int blockdev_add(json_object *args, vd_error **errp);
int blockdev_del(const char *name, vd_error **errp);
dnode *node_find(const char *name);
/* Puts a node at the end of the registry. */
void node_add(dnode *n);
/* blockdev-add of a node the library opens whole from its options (blockdev-generic.c). */
int blockdev_add_generic(json_object *args, const char *name, vd_error **errp);
/* The node's disk handle, opening a file node as raw on first use. */
int node_disk(dnode *n, vd_disk **out, vd_error **errp);
json_object *node_info(dnode *n);
void nodes_close_all(void);

/* --object tls-creds-x509 / tls-creds-psk (QMP object-add has the same members). */
int tls_object_add(json_object *args, vd_error **errp);
vd_tls_creds *tls_find(const char *id);

/* commands.c, shared with the command line: --nbd-server and --export. */
int nbd_server_start(json_object *addr, const char *tls_creds, int64_t max_conn,
                     vd_error **errp);
/* Adds an address ({type, path | host, port}, or QMP's {type, data: {...}}). */
int nbd_server_listen(json_object *addr, vd_error **errp);
int export_add(json_object *args, vd_error **errp);
void daemon_stop_all(void);

/* Helpers for values that may come as JSON types or command-line strings. */
int opt_bool(json_object *o, const char *key, bool def, bool *out, vd_error **errp);
const char *opt_str(json_object *o, const char *key);

#endif
