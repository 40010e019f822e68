/* The node graph and the driver interface. Drivers include this; the CLI and servers use
 * only include/vdisk/vdisk.h. The generic request path (io.c) checks bounds and alignment
 * before it calls a driver, so drivers never re-check what is promised here. */
#ifndef VD_BLOCK_H
#define VD_BLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "vdisk/snapshot.h"
#include "vdisk/tree.h"
#include "vdisk/vdisk.h"

typedef struct vd_node vd_node;
typedef struct vd_driver vd_driver;
typedef struct vd_perm_claim vd_edge;

/* One child in a node's list of children beyond the named ones (quorum's "children.N"):
 * the node, and the role it has there (owned). */
typedef struct vd_child {
    vd_node *node;
    char *role;
} vd_child;

/* Block status answered by one node for [off, off+len). Besides the public VD_BS_* flags a
 * format driver may set VD_BS_RECURSE: "look at the file for holes too" — qcow2 does this
 * for metadata-preallocated images, whose data clusters may be holes that read as zeros. */
#define VD_BS_RECURSE (1u << 16)
typedef struct vd_node_status {
    uint64_t pnum;       /* bytes with this status, >= 1 */
    unsigned flags;      /* VD_BS_DATA | VD_BS_ZERO | VD_BS_OFFSET | VD_BS_ALLOCATED | ... */
    uint64_t offset;     /* offset in `file` when VD_BS_OFFSET */
    vd_node *file;       /* node that holds `offset` */
} vd_node_status;

/* An internal snapshot to create (see the snapshot ops below). */
typedef struct vd_snap_params {
    const char *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    int64_t icount;              /* -1: none */
    const void *vm_state;        /* may be NULL when vm_state_size is 0 */
    uint64_t vm_state_size;
    bool replace;                /* a same-named snapshot is deleted at commit */
} vd_snap_params;

struct vd_driver {
    const char *name;
    bool is_format;       /* a format driver needs a `file` child */
    /* QEMU checks this driver's options against its QAPI schema, so an unknown one is
     * "Parameter 'X' is unexpected" (rbd) rather than "... doesn't support the option". */
    bool qapi_options;
    /* Requests wait for a peer over the network (nbd, rbd): callers keep many in flight
     * rather than running them one by one (see vd_disk_direct). */
    bool remote;
    /* The options of its own that .open reads from node->options (besides the ones every
     * node takes, see open-tree.c); any other key is refused before .open runs. */
    const char *const *runtime_opts;

    /* Score 0..100 for the first bytes of a file (up to 2048, fewer if the file is
     * shorter). NULL: never probed. */
    int (*probe)(const uint8_t *buf, size_t len);

    /* Opens node (node->file is already open for a format driver; node->filename set).
     * Sets node->size. May open a backing chain with vd_node_open_backing(). When the node
     * was opened from an options tree, node->options holds its own options (children
     * that the core opened are taken out); a filter opens its child with
     * vd_node_open_child(). */
    int (*open)(vd_node *node, unsigned flags, vd_error **errp);
    /* Releases everything; called once, after a final flush. */
    void (*close)(vd_node *node);

    /* Data ops. The core guarantees: off + len <= node->size, len > 0, off and len
     * multiples of node->request_alignment, len <= node->max_transfer (if non-zero).
     * May be called concurrently from many threads. Return 0 or -errno. */
    int (*pread)(vd_node *node, void *buf, uint64_t len, uint64_t off);
    int (*pwrite)(vd_node *node, const void *buf, uint64_t len, uint64_t off, unsigned flags);
    /* Zero [off, off+len). VD_REQ_MAY_UNMAP may deallocate. Return -ENOTSUP to make the
     * core write a zero buffer (unless VD_REQ_NO_FALLBACK). Alignment: any. */
    int (*pwrite_zeroes)(vd_node *node, uint64_t off, uint64_t len, unsigned flags);
    /* Discard, advisory: may do nothing for partial clusters. Alignment: any. */
    int (*pdiscard)(vd_node *node, uint64_t off, uint64_t len);
    /* Compressed write (see vd_pwrite_compressed in vdisk.h), optional (-ENOTSUP). The core
     * has checked bounds and write access; the driver checks cluster alignment. len may be
     * 0 (pad the file). level: the codec level to use, or VD_COMPRESSION_LEVEL_DEFAULT. */
    int (*pwrite_compressed)(vd_node *node, const void *buf, uint64_t len, uint64_t off,
                             int level);
    /* Makes every completed write durable (and the driver's metadata). */
    int (*flush)(vd_node *node);
    /* Status of the longest uniform prefix of [off, off+len) in this node only.
     * VD_BS_ALLOCATED = allocated in this node (format) / always set (protocol). For a
     * format node, data not allocated here comes from node->backing. */
    int (*block_status)(vd_node *node, uint64_t off, uint64_t len, vd_node_status *st);
    /* Changes the size. prealloc is "off"/"metadata"/"falloc"/"full". */
    int (*truncate)(vd_node *node, uint64_t size, bool shrink, const char *prealloc,
                    vd_error **errp);

    /* Control ops, all optional. */
    int (*get_info)(vd_node *node, vd_image_info *info, vd_error **errp);
    /* Persistent dirty bitmaps: may the node store one more (QEMU's refusals)? Removes
     * one from the image now (none stored of that name: nothing to do). */
    int (*bitmap_can_store)(vd_node *node, const char *name, uint64_t granularity,
                            vd_error **errp);
    int (*bitmap_remove_stored)(vd_node *node, const char *name, vd_error **errp);
    int (*check)(vd_node *node, unsigned fix, const vd_check_hooks *hooks,
                 vd_check_result *res, vd_error **errp);
    int (*amend)(vd_node *node, const vd_opts *opts, vd_error **errp);
    int (*set_backing)(vd_node *node, const char *backing, const char *fmt,
                       vd_error **errp);
    int (*make_empty)(vd_node *node, vd_error **errp);
    /* Bytes allocated on the host for this node and its file child. */
    int64_t (*allocated_size)(vd_node *node);
    /* Switches the open node between read-write (rw) and read-only in place, as a fresh
     * open in that mode would leave it (a format flags its persistent bitmaps in use,
     * drops unknown autoclear bits; going read-only stores them and flushes). Called by
     * vd_node_reopen_rw only, with no write in flight on the node, a format after its
     * file child became writable and before it becomes read-only again; the core then
     * updates node->open_flags. Concurrent readers keep working throughout. */
    int (*reopen_rw)(vd_node *node, bool rw, vd_error **errp);

    /* Internal snapshots (format drivers), all optional. The caller (src/snapshot/) has
     * drained the node and keeps it drained from prepare to clean. Two phases, for
     * transactions over many disks:
     * - *_prepare checks everything (read-only, not found, name clash unless replace, ...)
     *   and does every write that can be undone, durably, without changing what a reader
     *   of the image sees: a crash after it leaks clusters at worst. *txn gets a handle.
     * - commit makes the change visible with one in-place header write and a flush.
     * - abort undoes prepare, or prepare and a successful commit (so the failure of a
     *   later action in the group rolls this one back). Never corrupts; may leak only if
     *   its own I/O fails.
     * - clean finishes (work that can no longer be undone, e.g. dropping the references
     *   of a deleted snapshot, after a commit) and frees the handle; called exactly once
     *   per successful prepare, after commit or abort. Failures there leak clusters only.
     * With replace, the deletion of the old same-named snapshot happens in commit and
     * cannot be undone; the transaction engine runs such actions last. */
    int (*snapshot_list)(vd_node *node, vd_snapshot_info **out, size_t *nb, vd_error **errp);
    int (*snapshot_create_prepare)(vd_node *node, const vd_snap_params *p, void **txn,
                                   vd_error **errp);
    int (*snapshot_delete_prepare)(vd_node *node, const char *id, const char *name,
                                   void **txn, vd_error **errp);
    int (*snapshot_commit)(vd_node *node, void *txn, vd_error **errp);
    int (*snapshot_abort)(vd_node *node, void *txn, vd_error **errp);
    void (*snapshot_clean)(vd_node *node, void *txn);
    /* Reverts to a snapshot (id first, then name). Drained by the caller. */
    int (*snapshot_apply)(vd_node *node, const char *id_or_name, vd_error **errp);
    /* Makes the node read an internal snapshot instead of the active image until it is
     * closed (QEMU's bdrv_snapshot_load_tmp): found by id and name when both are given
     * (both must match), else by the one given; at least one is non-NULL. The core
     * guarantees the node was opened read-only, and has drained it. Writes nothing; the
     * guest size stays. -ENOENT when no snapshot matches, -EINVAL or -EFBIG for a bad L1
     * table (QEMU's callers retry by name on those). On failure the node reads as before. */
    int (*snapshot_load_tmp)(vd_node *node, const char *id, const char *name,
                             vd_error **errp);
    /* Reads or writes the active image's VM-state area. */
    int (*vmstate_rw)(vd_node *node, void *buf, uint64_t len, uint64_t pos, bool write,
                      vd_error **errp);

    /* Children added and removed while the node is open (QMP x-blockdev-change, QEMU's
     * bdrv_add_child / bdrv_del_child), both optional. The core has found both nodes and
     * checked QEMU's generic refusals (the new child has no parent, the removed one is
     * node's child in that role); it holds a reference to child for the call. add_child gives the
     * child a role and attaches it with vd_graph_attach_child, which takes a reference of
     * its own; del_child detaches it with vd_graph_detach_child and the core then drops
     * that reference (the child closes when no one else holds one). Each drains the
     * node's own requests around the change; on failure nothing has changed. */
    int (*add_child)(vd_node *node, vd_node *child, vd_error **errp);
    int (*del_child)(vd_node *node, vd_node *child, const char *role, vd_error **errp);
    /* What the node takes (perm) and shares on one of its children (role: "file",
     * "children.N", ...; not "backing" or "target", whose rules are the graph's), given
     * what its own users take and share all together (both in and out). NULL: QEMU's
     * defaults (graph.c). */
    void (*child_perms)(const vd_node *node, const char *role, unsigned *perm,
                        unsigned *shared);

    /* Fault injection hook (filter drivers): a named event the format driver above
     * announced on this node (vd_node_event). Optional. */
    void (*event)(vd_node *node, const char *name);

    /* Image creation (format drivers create through a protocol node they open). */
    int (*create)(vd_engine *e, const char *filename, uint64_t size, const vd_opts *opts,
                  unsigned flags, vd_error **errp);
    const vd_create_option *create_options;
    size_t nb_create_options;
    int (*measure)(const vd_opts *opts, uint64_t size, vd_disk *src, vd_measure_result *res,
                   vd_error **errp);
};

/* ---- the write path (write-path.c) ---------------------------------------------------- */

/* What a request that changes a node's data is, as write notifiers see it. */
typedef enum vd_write_kind {
    VD_WRITE,
    VD_WRITE_ZEROES,
    VD_WRITE_DISCARD,
    VD_WRITE_COMPRESSED,
    VD_WRITE_TRUNCATE,   /* [off, off+len): the range that appears or goes */
} vd_write_kind;

typedef struct vd_write_req {
    vd_write_kind kind;
    uint64_t off, len;
    unsigned flags;      /* VD_REQ_* */
    const void *buf;     /* the data (VD_WRITE, VD_WRITE_COMPRESSED), valid until `after`
                          * returns; NULL for the other kinds */
} vd_write_req;

/* Sees every request that changes a node's data, once each, with the range the caller
 * asked for (before the node splits it or aligns it). `before` runs first and may fail the
 * request (nothing is changed then; the notifiers whose `before` already ran get `after`
 * with that error, the others nothing); it may do I/O of its own (a copy-before-write
 * filter copies the old data there). `after` runs once the request is done, with its
 * result (a dirty bitmap sets its bits there). Either may be NULL. */
typedef struct vd_write_notifier vd_write_notifier;
struct vd_write_notifier {
    int (*before)(vd_write_notifier *nt, vd_node *n, const vd_write_req *req);
    void (*after)(vd_write_notifier *nt, vd_node *n, const vd_write_req *req, int ret);
    /* Before the node is flushed: what must be durable before the node's writes are (a
     * copy-before-write target); a failure fails the flush. May be NULL. */
    int (*flush)(vd_write_notifier *nt, vd_node *n);
    vd_write_notifier *next;
};

struct vd_node {
    const vd_driver *drv;
    void *opaque;           /* the driver's state */
    vd_engine *engine;
    char *filename;
    unsigned open_flags;    /* VD_OPEN_* */
    uint64_t size;          /* virtual size in bytes */
    uint32_t request_alignment; /* 1 unless O_DIRECT etc. */
    uint64_t max_transfer;  /* 0 = unlimited */
    /* Limits of write-zeroes and discard requests (0: none), and the multiples the core
     * cuts longer ones at (QEMU's max/opt-write-zero, max/opt-discard). */
    uint64_t max_pwrite_zeroes, pwrite_zeroes_alignment;
    uint64_t max_pdiscard, pdiscard_alignment;
    vd_node *file;          /* child "file" (format drivers) */
    vd_node *backing;       /* child "backing" (NULL if none or not opened) */
    vd_node *target;        /* child "target" (copy-before-write: where old data goes) */
    /* Children in a list (quorum's), in order. Changed only with the engine's graph lock
     * held and the driver's requests drained (add_child / del_child), so the driver reads
     * it under its own request lock, the graph code under the graph lock. */
    vd_child *children;
    size_t nb_children;
    char *backing_filename; /* as stored in the image */
    char *backing_format;   /* as stored, or NULL */
    int fd;                 /* protocol file nodes: the file descriptor, else -1 */
    char *realpath;         /* canonical path, for backing-loop detection */
    vd_node *overlay;       /* the node that opened this one as its backing, if any */
    pthread_mutex_t rmw_lock; /* serialises read-modify-write of unaligned writes */
    int compress_level;     /* for compressed writes; VD_COMPRESSION_LEVEL_DEFAULT */
    /* Protocol nodes: something was written since the last successful flush. A flush
     * with nothing to make durable is skipped: it costs a sync, and after an operation
     * that ended with one (a snapshot, say) it could only fail for nothing. */
    bool unflushed;
    /* The options the node was opened from (driver options and children not yet opened:
     * "backing", a filter's "image"), or NULL for a node opened from a filename. */
    vd_tree *options;
    /* The write path (write-path.c): notifiers, and the requests in flight that a drain
     * waits for. */
    vd_write_notifier *notifiers;
    unsigned in_flight;
    unsigned drain_waiters;
    pthread_mutex_t drain_lock;
    pthread_cond_t drained;
    /* The engine's graph (graph.c), under the engine's graph lock. A node opened outside
     * the registry has one owner and no uses: refcnt 1, no name, no parents. */
    unsigned refcnt;        /* owners: the registry, parent nodes, handles */
    char *node_name;        /* "node-name" from the options; registered nodes always */
    bool added;             /* a root of vd_blockdev_add: the registry owns a reference */
    bool registered;
    vd_edge *parents;       /* the uses of this node and their permissions, newest first */
    vd_node *graph_next;    /* the engine's registry, newest first */
    /* A block job's use (src/jobs/): the type of the job whose source this is ("mirror":
     * no other job or blockdev-del may take it), and whether it is a job's target. */
    const char *job_blocker;
    bool job_target;
    /* Dirty bitmaps (dirty-bitmap.c), newest first, under bitmap_lock; the notifier that
     * marks them joins the node's notifiers with the first bitmap and stays. */
    pthread_mutex_t bitmap_lock;
    struct vd_dirty_bitmap *bitmaps;
    vd_write_notifier bitmap_notifier;
    bool bitmap_notifier_on;
    /* The last failed request's message (vd_node_set_error). */
    pthread_mutex_t err_lock;
    char *err_msg;
    uint64_t err_seq;
};

/* One use of a node: by a parent node as its child ("file", "backing", "image"), or by a
 * handle's user ("root"; parent NULL), with the permissions it takes and shares. */
struct vd_perm_claim {
    vd_node *child;
    vd_node *parent;
    const vd_disk *owner;   /* a handle's claim: the handle */
    const char *role;
    unsigned perm, shared;
    vd_edge *next;          /* in child->parents */
};

/* The i-th child slot of n with its role: file, backing, target, then the listed
 * children; false past the last slot. A slot may be empty (*child NULL). The one way to
 * visit every child of a node: callers hold the graph lock, or own n alone (open, close). */
bool vd_node_child_at(const vd_node *n, size_t i, vd_node **child, const char **role);
#define VD_NODE_NAMED_SLOTS 3   /* file, backing, target: the slots before the list */
/* Appends child to n's list of children under role (copied); n keeps the reference the
 * caller passes. For a driver's open, before the node is in the graph. */
void vd_node_append_child(vd_node *n, vd_node *child, const char *role);
/* For add_child: appends child (the caller passes no reference: one is taken) to parent's
 * list under role, with the use that goes with it; refused with QEMU's message, and
 * nothing changed, when a use conflicts or the link would make a cycle. */
int vd_graph_attach_child(vd_node *parent, vd_node *child, const char *role,
                          vd_error **errp);
/* For del_child: takes the listed child i out of parent's list (the later ones move up
 * and keep their roles) with its use, and returns it; the reference parent held passes to
 * the core (see del_child). */
vd_node *vd_graph_detach_child(vd_node *parent, size_t i);

/* The name a node shows (caller frees): its file's, or json:{...} when its graph is not
 * what the image files say (a backing given instead of the image's, a list of children).
 * The caller holds the graph lock or owns n alone. */
char *vd_node_display_name(const vd_node *n);

/* graph.c, for node.c: drops one owner's reference; true when it was the last, and the
 * node is now out of the registry with no uses (the caller closes it). */
bool vd_graph_release(vd_node *n);
/* For the handle code: moves the claims a handle made from its old node to n. */
void vd_graph_move_claims(const vd_disk *d, vd_node *old, vd_node *n);
/* For external snapshots of a registered node: does a handle claim n (QEMU: "in use")?
 * link_overlay registers a new overlay (under name, or "#blockNNN") or links a registered
 * one to the backing it was just given; unlink_backing undoes the link before an abort
 * takes the backing away. */
bool vd_graph_has_claims(vd_node *n);
void vd_graph_link_overlay(vd_node *overlay, const char *name);
/* The handles that claim n (its users, a graph change moves them), except one, up to
 * max of them; has_parents: whether nodes use n as a child too. */
size_t vd_graph_users(vd_node *n, const vd_disk *except, vd_disk **out, size_t max,
                      bool *has_parents);
/* The node's cluster size from its driver's information, or 0 if it has none. */
uint64_t vd_node_cluster_size(vd_node *n);
void vd_graph_unlink_backing(vd_node *overlay);
/* Registers a filter node made in code (a job's copy-before-write) over registered
 * children: named (its node_name, or "#blockNNN"), with its uses of them. */
int vd_graph_register_filter(vd_node *n, vd_error **errp);
/* Gives overlay nb (or none) as its backing, with the use that goes with it and a
 * reference to nb, and returns the old backing, whose reference the caller now holds
 * (dropping it releases the nodes no one else uses). The caller has drained every reader
 * of overlay. */
vd_node *vd_graph_replace_backing(vd_node *overlay, vd_node *nb);
/* Gives parent nf as its file child (one more reference to nf, with the use that goes
 * with it) and returns the old file child, whose reference the caller now holds. The
 * caller keeps every request away from parent meanwhile. */
vd_node *vd_graph_replace_file(vd_node *parent, vd_node *nf);
/* Is top a root (no node uses it) with n in the graph below it (or n itself)? */
bool vd_graph_root_above(vd_node *top, vd_node *n);
/* One more reference to n (dropped with vd_node_unref). */
void vd_node_ref(vd_node *n);
/* The node named name in e's registry with one more reference, or -ENOENT with QEMU's
 * "Cannot find device='NAME' nor node-name='NAME'". */
int vd_graph_ref(vd_engine *e, const char *name, vd_node **out, vd_error **errp);

/* Opens a node graph for filename: a file node, then the format node (probed when
 * format is NULL), then its backing chain (unless VD_OPEN_NO_BACKING). */
int vd_node_open(vd_engine *e, const char *filename, const char *format, unsigned flags,
                 vd_node **out, vd_error **errp);
/* Opens a node graph from an options tree of QEMU's blockdev shape (opts is consumed):
 * "driver" (a format, protocol or filter; absent: probed from "filename", as qemu-img
 * does), "file" (object) or "filename" for a format's file child, "backing" (object,
 * or null for none), "read-only", "cache.direct", "cache.no-flush", "discard",
 * "node-name", and the driver's own options. flags are the defaults the options refine.
 * overlay: the node whose backing this is, or NULL. */
int vd_node_open_tree(vd_engine *e, vd_tree *opts, unsigned flags, vd_node *overlay,
                      vd_node **out, vd_error **errp);
/* The same for a node in a protocol's place (a format's file child): a filename alone
 * opens a protocol node, with no format probed. */
int vd_node_open_tree_protocol(vd_engine *e, vd_tree *opts, unsigned flags, vd_node **out,
                               vd_error **errp);
/* A `json:{...}` filename's tree (or -EINVAL naming what is wrong). */
int vd_json_filename(const char *filename, vd_tree **out, vd_error **errp);
/* A child's options: an object of options (0), or the name of a node in e's registry
 * (1: *ref gets it, with a reference, and t is freed); anything else frees t and fails
 * naming key. */
int vd_child_options_check(vd_engine *e, vd_tree *t, const char *key, vd_node **ref,
                           vd_error **errp);
/* For filters: opens the child under parent->options' `key` (an object of options) as a
 * node of any kind; the member is taken out of parent->options. */
int vd_node_open_child(vd_node *parent, const char *key, vd_node **out, vd_error **errp);
/* The same for a child's options already taken out (t: consumed), an object or a node
 * name; key names it in messages (e.g. "children.0"). */
int vd_node_open_child_tree(vd_node *parent, vd_tree *t, const char *key, vd_node **out,
                            vd_error **errp);
/* Node allocation for the open paths (node.c, open-tree.c). */
vd_node *vd_node_alloc(vd_engine *e, const vd_driver *drv, const char *filename,
                       unsigned flags);
void vd_node_release(vd_node *n);
/* Hands an event to the engine user's handler, if any; e may be NULL (a probe). */
void vd_engine_emit(vd_engine *e, const vd_event *ev);
/* The file protocol's creation options (extent_size_hint, nocow), which every format's
 * create accepts: is key one of them? */
bool vd_file_create_option(const char *key);
/* Creates (or empties) the host file of a new image and applies those options (opts may
 * be NULL: the defaults). */
int vd_file_create(const char *filename, const vd_opts *opts, vd_error **errp);
/* Creates the empty RBD image an rbd: filename names (the format on it sizes it;
 * cluster_size in opts: its object size); QEMU's "Unknown protocol 'rbd'" when vdisk was
 * built without librbd. */
int vd_rbd_create(const char *filename, const vd_opts *opts, vd_error **errp);
/* True for a name another protocol driver owns (nbd URIs, json:): no file to create or
 * remove. */
bool vd_file_is_other_protocol(const char *filename);
/* The path of a "file:PATH" name (QEMU's explicit file protocol), else the name itself. */
const char *vd_strip_file_prefix(const char *filename);
int vd_node_open_file(vd_engine *e, const char *filename, unsigned flags, vd_node **out,
                      vd_error **errp);
/* The format of a protocol node's first bytes, as qemu-img probes ("qcow2", "raw", ...). */
int vd_node_probe_format(vd_node *file, const char **fmt, vd_error **errp);
/* For format drivers: opens node->backing from name/format as stored in the image,
 * resolving a relative name against the directory of node->filename. Detects loops and
 * limits the chain depth. Respects VD_OPEN_NO_BACKING (then does nothing). The backing
 * is always opened read-only. */
int vd_node_open_backing(vd_node *node, const char *name, const char *format,
                         vd_error **errp);
/* Reopens a format node and its file child read-write (rw) or read-only (reopen.c); a
 * node already in that mode is left alone. Other drivers are refused with QEMU's
 * message. The caller keeps writes away while it goes read-only. */
int vd_node_reopen_rw(vd_node *n, bool rw, vd_error **errp);
/* Flushes, closes and frees a node and its children. */
int vd_node_close(vd_node *node);
/* Drops a reference taken with vd_graph_ref, without a flush. */
void vd_node_unref(vd_node *node);
/* Frees the node's dirty bitmaps (dirty-bitmap.c), for vd_node_release. */
void vd_node_free_bitmaps(vd_node *n);

const vd_driver *vd_driver_find(const char *name);

/* Adds / removes a write notifier. Requests read the list without a lock: a notifier may
 * be removed only while no request is in flight on the node (the caller has drained it,
 * e.g. with vd_disks_drain_begin). One added while requests are in flight may see their
 * `after` without their `before` (a dirty bitmap, which only marks, may be added so). */
void vd_node_add_write_notifier(vd_node *n, vd_write_notifier *nt);
void vd_node_remove_write_notifier(vd_node *n, vd_write_notifier *nt);
/* Waits until no request that changes the node's data is in flight. It does not hold back
 * new ones: the caller does (the disk handle's drain). */
void vd_node_drain_writes(vd_node *n);
/* The pair every data-changing request passes (io.c): prepare counts it in flight and runs
 * the notifiers' `before` (on failure the request is over: finish is not called); finish
 * runs `after` and ends it, returning ret. */
int vd_write_prepare(vd_node *n, const vd_write_req *req);
int vd_write_finish(vd_node *n, const vd_write_req *req, int ret);
/* For vd_node_flush: the notifiers' flush hooks, counted in flight like a write. */
int vd_write_flush_notify(vd_node *n);

/* The generic request path: bounds checks, alignment (read-modify-write), fallbacks. */
int vd_node_pread(vd_node *n, void *buf, uint64_t len, uint64_t off);
int vd_node_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off, unsigned flags);
int vd_node_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags);
int vd_node_pdiscard(vd_node *n, uint64_t off, uint64_t len);
int vd_node_pwrite_compressed(vd_node *n, const void *buf, uint64_t len, uint64_t off);
int vd_node_flush(vd_node *n);
int vd_node_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st);
int vd_node_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                     vd_error **errp);
/* The status of [off, off+len) as a reader of top sees it through its whole backing
 * chain (vd_block_status on a handle): the longest uniform prefix, and the depth of the
 * layer that answers. */
int vd_node_chain_status(vd_node *top, uint64_t off, uint64_t len, vd_extent *st);
/* The same, asking only the layers above depth stop_depth (0: all): what none of them
 * holds comes back unallocated at that depth (a commit into the layer there need not
 * read it, and a failing base must not fail the question). */
int vd_node_chain_status_above(vd_node *top, int stop_depth, uint64_t off, uint64_t len,
                               vd_extent *st);
/* Reads through a node that may be shorter than the range: bytes past its size read as
 * zeros (used for backing files smaller than the overlay). */
int vd_node_pread_zero_pad(vd_node *n, void *buf, uint64_t len, uint64_t off);
/* Size of the underlying host file for a protocol node (fstat), or -errno. */
int64_t vd_node_file_length(vd_node *n);

/* The first node at or below n that is not a filter (a node with a file child but no
 * format of its own: blkdebug, copy-on-read, logwrites): where a chain's layers start. */
static inline vd_node *vd_node_skip_filters(vd_node *n)
{
    while (!n->drv->is_format && n->file) {
        n = n->file;
    }
    return n;
}

/* For protocol filters (blkdebug, logwrites): block status and allocated size straight
 * from the child's driver. A status query is no I/O, so filters neither count nor log it;
 * it skips the child's request path since a protocol node's size can lag its file. */
int vd_filter_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st);
int64_t vd_filter_allocated_size(vd_node *n);

/* Announces a named event (e.g. "l1_update", "snapshot_table_update", "refblock_update")
 * to n and its file children, so a fault-injection filter can fail the I/O that follows.
 * Cheap when no filter is present. */
void vd_node_event(vd_node *n, const char *name);

/* What went wrong in a node's last failed request, in words: drivers set it before they
 * return -errno. It is kept on the node (no thread-local state), stamped with the
 * engine's sequence, so a handle reports the newest message of its graph. */
void vd_node_set_error(vd_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The newest message in n's graph (n and everything under it) into buf; false if none. */
bool vd_node_get_error(vd_node *n, char *buf, size_t len);

#endif
