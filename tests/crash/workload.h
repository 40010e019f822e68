/* The workloads' shared state and helpers (workload.c), for the job kinds in jobs.c. */
#ifndef CRASH_WORKLOAD_H
#define CRASH_WORKLOAD_H

#include "crash.h"
#include "vdisk/job.h"
#include "vdisk/vdisk.h"

#define MAX_SNAPS 8

struct wl {
    const workload_cfg *cfg;
    journal *j;
    rng r;
    vd_engine *e;
    vd_disk *d;                  /* what the guest writes and the journal reads */
    uint64_t size;
    uint32_t id;                 /* the last write id used */
    uint64_t recent[16];         /* offsets written lately, for overwrites */
    int nb_snaps, snap_seq;
    char snaps[MAX_SNAPS][16];
    int nb_bitmaps, bitmap_seq;  /* persistent bitmaps: names b0, b1, ... */
    char bitmaps[MAX_SNAPS][16];
};

void *xmalloc(size_t n);
/* The length of the journal's log now: where the next record will start. */
uint64_t log_len(const wl *w);
int fail(const char *what, const char *msg);
int read_tags(vd_disk *d, uint64_t first, uint64_t count, uint32_t *vals);
gop *add_op(wl *w, op_kind kind, uint64_t start);
int end_op(wl *w, gop *o, uint64_t first, uint64_t count);
void pick_extent(wl *w, uint64_t max, uint64_t *first, uint64_t *count);
void fill_tags(wl *w, uint8_t *buf, uint64_t first, uint64_t count);
uint64_t max_sectors(const wl *w);
/* Guest operations on w->d, journalled. */
int op_write(wl *w);
int op_zero_discard(wl *w, bool discard);
int op_flush(wl *w, op_kind kind);
int create_image(wl *w, const char *path, uint64_t size, const char *backing, bool lazy);
/* Writes tags over about tenths/10 of the 64 KiB pieces of the image at path. */
int fill_image(wl *w, const char *path, uint64_t size, int tenths);
/* A new image at path, most of it written with tags. */
int make_backing(wl *w, const char *path, uint64_t size);
int load_file(const char *path, uint8_t **data, uint64_t *size);
/* vd_blockdev_add of a JSON options tree, read-write unless it says otherwise. */
int add_node(wl *w, const char *json);
vd_job_status job_status(vd_engine *e, const char *id);
void nap_ms(long ms);
/* Shared by the job kinds (jobs.c). */
int add_file(wl *w, const char *name);
/* A qcow2 image of the workload's cluster size over the backing file name given. */
int create_overlay(wl *w, const char *path, uint64_t size, const char *backing);
/* Closes w->d and the engine (which flushes and closes the nodes), journalled like a flush
 * on w->j and on other (if not NULL). */
int close_all(wl *w, journal *other);

#endif
