/* vdiskd's state: the engine (whose graph holds the block nodes of blockdev-add and
 * --blockdev), the daemon's handles on them, TLS objects, the NBD server and its exports,
 * shared by the command line (vdiskd.c), blockdev.c and the QMP commands (commands.c).
 * One daemon per process. */
#ifndef VD_DAEMON_H
#define VD_DAEMON_H

#include <stdbool.h>

#include <json-c/json.h>

#include "qmp/qmp.h"
#include "vdisk/bitmap.h"
#include "vdisk/graph.h"
#include "vdisk/job.h"
#include "vdisk/migration.h"
#include "vdisk/nbd.h"
#include "vdisk/snapshot.h"
#include "vdisk/vdisk.h"

/* A handle vdiskd keeps on a node of the engine's graph: the one its exports, resizes
 * and snapshots use, made on first use. It follows its node through an external
 * snapshot (the library moves it onto the overlay), as QEMU's users of a node do. */
typedef struct dhandle {
    vd_disk *disk;
    int users;                   /* exports on it */
    struct dhandle *next;
} dhandle;

typedef struct dexport {
    char *id;
    char *name;                  /* NBD export name */
    dhandle *h;
    vd_perm_claim *claim;        /* what the export takes on the node */
    bool writable;
    bool migrating;              /* its node moves with the outgoing migration */
    struct dexport *next;
} dexport;

typedef struct dtls {
    char *id;
    vd_tls_creds *creds;
    struct dtls *next;
} dtls;

typedef struct daemon_state {
    vd_engine *engine;           /* owns the graph of nodes (vdisk/graph.h) */
    dhandle *handles;
    dtls *tls;
    vd_nbd_server *nbd;
    dexport *exports;
    qmp_server *qmp;
    /* Migration (migration-cmds.c): QEMU's parameters and capabilities, the outgoing
     * migration (the last one, until the next starts) and the incoming one. */
    vd_mig_params mig_params;
    vd_mig_caps mig_caps;
    vd_migration *mig_out;
    vd_mig_incoming *mig_in;
} daemon_state;

extern daemon_state vdiskd;

/* events.c: the engine's event handler (queues), and the main loop's delivery of the
 * queue as QMP events. */
void daemon_on_engine_event(void *opaque, const vd_event *ev);
void daemon_deliver_events(void);
/* The delivery thread (events as they come), and the QMP server's after-command hook. */
int daemon_events_start(void);
void daemon_events_stop(void);
void daemon_events_after_command(void);
/* job-cmds.c: the block job commands, chained to vdiskd_commands, and the argument
 * helpers the job commands share: an integer (def when absent), one of names (its index),
 * an on-error policy, and filter-node-name checked as QEMU checks it. */
extern const qmp_command_table job_command_table;
int64_t job_int_arg(json_object *args, const char *key, int64_t def);
int job_enum_arg(json_object *args, const char *key, const char *const *names, int def,
                 int *out, vd_error **errp);
int job_on_error_arg(json_object *args, const char *key, vd_job_on_error *out,
                     vd_error **errp);
int job_filter_name_check(json_object *args, vd_error **errp);
/* backup-cmds.c: blockdev-backup and drive-backup, also as transaction actions
 * (backup_action fills a; backup_action_free frees what it allocated). */
extern const qmp_command_table backup_command_table;
bool backup_action_type(const char *type);
int backup_action(const char *type, json_object *data, vd_action *a, vd_error **errp);
void backup_action_free(vd_action *a);
/* history-cmds.c: block-commit and block-stream, chained after the backup commands. */
extern const qmp_command_table history_command_table;
/* replication-cmds.c: xen-set-replication and the other replication commands. */
extern const qmp_command_table replication_command_table;
/* migration-cmds.c: migrate, migrate-incoming and the other migration commands, chained
 * after the replication commands; --incoming's start; the end of both sides at exit. */
extern const qmp_command_table migration_command_table;
int migration_incoming_start(const char *uri, vd_error **errp);
/* The QMP server's check before each command: what would change the graph under an
 * outgoing migration (its nodes' handles and write notifiers) is refused meanwhile. */
int migration_before_command(const char *name, vd_error **errp);
void migration_shutdown(void);
/* change-cmds.c: x-blockdev-change, chained after the history commands; and the QMP
 * schema's checks of a quorum's blockdev-add members (t: the crumpled options). */
extern const qmp_command_table change_command_table;
int quorum_options_check(const vd_tree *t, vd_error **errp);
/* vdiskd's QMP commands (commands.c), for its QMP server. */
extern const qmp_command_table vdiskd_commands;
/* blockdev.c: blockdev-add from a QMP object or a --blockdev option (values may be
 * strings "on"/"off"/numbers, as the command line gives them). */
int blockdev_add(json_object *args, vd_error **errp);
/* blockdev-del: the daemon's idle handle on the node goes first. */
int blockdev_del(const char *name, vd_error **errp);
/* The daemon's handle on the named node. */
int node_handle(const char *name, dhandle **out, vd_error **errp);
/* query-named-block-nodes' BlockDeviceInfo for one node. */
json_object *node_info(const vd_blockdev_info *i);
/* The handle on a node, if the daemon keeps one (for its statistics). */
dhandle *handle_of(const char *name);
void nodes_close_all(void);
/* Closes the daemon's idle handles on nodes blockdev-add did not add (a node taken out of
 * its parent must not be kept by a handle QEMU would not have). */
void handles_close_idle_nested(void);

/* --object tls-creds-x509 / tls-creds-psk (QMP object-add has the same members). */
int tls_object_add(json_object *args, vd_error **errp);
vd_tls_creds *tls_find(const char *id);

/* commands.c, shared with the command line: --nbd-server and --export. */
int nbd_server_start(json_object *addr, const char *tls_creds, int64_t max_conn,
                     vd_error **errp);
/* Adds an address ({type, path | host, port}, or QMP's {type, data: {...}}). */
int nbd_server_listen(json_object *addr, vd_error **errp);
int export_add(json_object *args, vd_error **errp);
/* An export taken off the list and out of the server: BLOCK_EXPORT_DELETED, then freed. */
void export_deleted(dexport *e);
void daemon_stop_all(void);

/* bitmap-cmds.c: the block-dirty-bitmap-* commands, the same as transaction actions
 * (bitmap_action fills a from action number index; bitmap_action_free frees what it
 * allocated), a node's
 * dirty-bitmaps for query-named-block-nodes (NULL when it has none), and the bitmaps a
 * block-export-add names (a list of "name" or {node, name}), acquired. */
int cmd_bitmap_add(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp);
int cmd_bitmap_remove(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp);
int cmd_bitmap_clear(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp);
int cmd_bitmap_enable(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp);
int cmd_bitmap_disable(qmp_session *qs, json_object *args, json_object **ret,
                       vd_error **errp);
int cmd_bitmap_merge(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp);
bool bitmap_action_type(const char *type);
int bitmap_action(const char *type, json_object *data, size_t index, vd_action *a,
                  vd_error **errp);
void bitmap_action_free(vd_action *a);
json_object *dirty_bitmaps_json(const char *node);
int export_bitmaps(json_object *arr, vd_disk *d, bool read_only, vd_dirty_bitmap ***out,
                   size_t *nb, vd_error **errp);

/* Helpers for values that may come as JSON types or command-line strings. */
int opt_bool(json_object *o, const char *key, bool def, bool *out, vd_error **errp);
const char *opt_str(json_object *o, const char *key);

#endif
