/* Snapshots: qcow2 internal snapshots (list, create, apply, delete, VM state), external
 * snapshots (a new overlay under an open handle) and transactions that take snapshot
 * actions on many disks as one all-or-nothing step. */
#ifndef VDISK_SNAPSHOT_H
#define VDISK_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/bitmap.h"
#include "vdisk/vdisk.h"

/* ---- internal snapshots ---------------------------------------------------------------- */

typedef struct vd_snapshot_info {
    char *id;                /* "1", "2", ... */
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t disk_size;      /* guest size when taken */
    int64_t icount;          /* -1: none */
} vd_snapshot_info;

/* The snapshot table in on-disk order. Formats without snapshots give 0 entries. */
int vd_snapshot_list(vd_disk *d, vd_snapshot_info **out, size_t *nb, vd_error **errp);
void vd_snapshot_list_free(vd_snapshot_info *list, size_t nb);

/* Creates an internal snapshot now (a transaction of one action). name NULL: made from
 * the time as vm-YYYYMMDDHHMMSS. vm_state (may be NULL with size 0) is stored with it
 * where QEMU stores VM state. A duplicate name is refused unless replace is set. */
int vd_snapshot_create(vd_disk *d, const char *name, const void *vm_state,
                       uint64_t vm_state_size, bool replace, vd_error **errp);
/* Reverts the disk to a snapshot: id first, then name, as qemu-img snapshot -a. */
int vd_snapshot_apply(vd_disk *d, const char *id_or_name, vd_error **errp);
/* Deletes by id and/or name (either may be NULL, not both), as QMP
 * blockdev-snapshot-delete-internal-sync; qemu-img snapshot -d passes the name only. */
int vd_snapshot_delete(vd_disk *d, const char *id, const char *name, vd_error **errp);
/* Makes a disk opened read-only read an internal snapshot (its data; the disk keeps its
 * size) until it is closed, as QEMU's bdrv_snapshot_load_tmp: by id and name when both are
 * given (both must match), else by the one given (not both NULL). Nothing is written to the
 * image. Refused (EINVAL, "Device is not readonly") on a writable disk; ENOENT ("Can't find
 * snapshot") when none matches; EINVAL or EFBIG for a snapshot whose L1 table is bad; ENOTSUP
 * for a format without internal snapshots. On failure the disk reads as before. */
int vd_snapshot_load_tmp(vd_disk *d, const char *id, const char *name, vd_error **errp);
/* The same for one string, as qemu-img convert -l and qemu-nbd -l take a bare ID_OR_NAME:
 * as an id first, then, if that fails with ENOENT or EINVAL, as a name (that error wins). */
int vd_snapshot_load_tmp_by_id_or_name(vd_disk *d, const char *id_or_name, vd_error **errp);
/* Parses QEMU's SNAPSHOT_PARAM "snapshot.id=ID[,snapshot.name=NAME]" with QEMU's option
 * syntax (",," is a comma; the last of a repeated key counts; "key" alone means key=on and
 * "nokey" key=off, with QEMU's deprecation warning passed to warn, which may be NULL).
 * *id and *name (caller frees) get the values given, or NULL. An unknown key is an error
 * in QEMU's words ("Invalid parameter 'x'"). */
int vd_snapshot_param_parse(const char *param, char **id, char **name,
                            void (*warn)(const char *msg, void *opaque), void *opaque,
                            vd_error **errp);
/* The VM state of the active image (what the last apply brought back, or what the next
 * create saves): QEMU's bdrv_load_vmstate / bdrv_save_vmstate. */
int vd_vmstate_read(vd_disk *d, void *buf, uint64_t len, uint64_t pos, vd_error **errp);
int vd_vmstate_write(vd_disk *d, const void *buf, uint64_t len, uint64_t pos,
                     vd_error **errp);

/* ---- external snapshots ---------------------------------------------------------------- */

/* Creates overlay (format "qcow2" unless overlay_format says otherwise) backed by the
 * handle's current top image, opens it, and makes the handle read and write through it;
 * the old top becomes its read-only backing file. A transaction of one action. */
int vd_snapshot_external(vd_disk *d, const char *overlay, const char *overlay_format,
                         vd_error **errp);

/* ---- transactions ---------------------------------------------------------------------- */

typedef enum vd_action_kind {
    VD_ACTION_SNAPSHOT_INTERNAL,        /* QMP blockdev-snapshot-internal-sync */
    VD_ACTION_SNAPSHOT_DELETE_INTERNAL, /* QMP blockdev-snapshot-delete-internal-sync */
    VD_ACTION_SNAPSHOT_EXTERNAL,        /* QMP blockdev-snapshot-sync (creates the file) */
    VD_ACTION_BITMAP_ADD,               /* QMP block-dirty-bitmap-add, and so on */
    VD_ACTION_BITMAP_REMOVE,
    VD_ACTION_BITMAP_CLEAR,
    VD_ACTION_BITMAP_ENABLE,
    VD_ACTION_BITMAP_DISABLE,
    VD_ACTION_BITMAP_MERGE,
    VD_ACTION_BACKUP,                   /* QMP blockdev-backup (vdisk/job.h) */
} vd_action_kind;

typedef struct vd_action {
    vd_action_kind kind;
    vd_disk *disk;
    const char *name;        /* internal: snapshot name (NULL: the group's vm-... name);
                              * delete: name (or NULL) */
    const char *id;          /* delete: id (or NULL) */
    bool replace;            /* internal: replace a same-named snapshot. That cannot be
                              * undone, so it runs after every other action prepared. */
    const void *vm_state;    /* internal: optional VM state */
    uint64_t vm_state_size;
    /* internal: stored as given. qemu-img writes vm_clock 0 and icount 0; QEMU's QMP
     * commands write the guest clock and icount -1 (no record/replay). */
    uint64_t vm_clock_nsec;
    int64_t icount;
    const char *overlay;     /* external: the new overlay file */
    const char *overlay_format; /* external: NULL = "qcow2" */
    /* external, on a handle from vd_blockdev_open: a node of the engine's registry to put
     * on top instead of a file (QMP blockdev-snapshot; it must have no backing and no
     * users), or the name the new overlay gets there (NULL: "#blockNNN"). */
    const char *overlay_node;
    const char *overlay_node_name;
    bool overlay_exists;     /* external: the overlay file exists already (QMP
                              * blockdev-snapshot): it is opened, not created, and kept
                              * on abort; its stored backing name is left as it is */
    /* Bitmap actions (vdisk/bitmap.h): the bitmap `bitmap` (merge: the target) of node
     * `node` in engine's graph. `disk` may be NULL, or a handle whose writers the
     * transaction holds back with the others. Their errors are QEMU's, unprefixed. */
    vd_engine *engine;
    const char *node;
    const char *bitmap;
    vd_bitmap_add_opts bitmap_opts;     /* add */
    const vd_bitmap_ref *sources;       /* merge */
    size_t nb_sources;
    /* Backup: the job to start (`engine` set; `disk` may be NULL, or a handle to hold
     * back with the others). It is made in prepare, so its point in time is the
     * transaction's, and started in commit. */
    const struct vd_backup_opts *backup;
} vd_action;

/* Runs the actions as one all-or-nothing transaction: the disks are drained for its whole
 * length (I/O from other threads waits); every action prepares first (all checks — read-only
 * disk, missing snapshot, name clash, file exists — happen here, before anything changes);
 * if any prepare or commit fails, every action that prepared is undone in reverse order and
 * each disk is as it was. The group shares one timestamp. The error names the disk and the
 * cause. */
int vd_transaction(const vd_action *acts, size_t n, vd_error **errp);
/* The same with QMP's completion-mode grouped: the jobs the actions start finish
 * together, and when one fails every other is cancelled. */
int vd_transaction_grouped(const vd_action *acts, size_t n, bool grouped, vd_error **errp);

#endif
