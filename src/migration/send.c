/* The sending side of a migration (vdisk/migration.h). One thread runs the migration
 * (connect, passes, switchover); one thread per channel sends a pass's chunks, taking
 * ranges from a shared cursor, reading them through the migration's own handles and
 * compressing them on a pool of compress-threads; one thread reads channel 0's return
 * path (the destination's READY or ERROR).
 *
 * Passes: pass 1 covers every disk whole (block status turns unallocated ranges into
 * hole markers, zeros into zero markers); a write notifier on each node marks what users
 * write in a dirty bitmap; each later pass takes the bitmap's bits and sends them. Every
 * channel ends a pass with SYNC, so the receiver applies pass p before pass p + 1 and
 * the ranges of one pass, which are disjoint, may land in any order. When what is dirty
 * moves within downtime-limit at the rate of the last pass, the nodes' users are drained
 * (held), the last pass and a FLUSH go across, and the destination's READY says all of it
 * is durable there; then the nodes refuse writes, the held users are let go, and COMMIT
 * tells the destination to expose the disks; the nodes are then reopened read-only. A failure or cancel before COMMIT removes
 * the notifiers and lets the users go on: the source is as it was. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "block/disk.h"
#include "compress/pool.h"
#include "migration/mig-int.h"
#include "util/common.h"
#include "util/hbitmap.h"
#include "util/zero.h"
#include "vdisk/graph.h"

#define CHUNK (1u << 20)         /* guest bytes a channel takes at a time */
#define BATCH 4u                 /* ranges a channel compresses at once */
#define DIRTY_GRANULE 4096u      /* what one guest write of 4 KiB dirties */
#define MAX_USERS 64

typedef struct vd_migration vd_migration;

typedef struct sdisk {
    vd_migration *m;
    vd_disk *h;                  /* the migration's handle: its reads, its claim */
    vd_perm_claim *claim;
    vd_node *node;
    char *name;
    uint64_t size;
    vd_mig_export *exports;
    size_t nb_exports;
    vd_write_notifier nt;        /* marks the dirty bitmap */
    vd_write_notifier ro;        /* after commit: refuses writes */
    bool nt_on, ro_on;
    vd_hbitmap *dirty;           /* under m->dirty_lock */
    vd_hbitmap *pass;            /* this pass's ranges (NULL in the bulk pass) */
    vd_disk *users[MAX_USERS];   /* held during the switchover */
    size_t nb_users;
} sdisk;

/* One piece of a range: a run of one kind. */
typedef struct piece {
    vd_mig_type type;
    uint64_t off, len;
    size_t out_off;              /* DATA: where its payload starts in the slot's out */
    vd_mig_chunk c;
} piece;

typedef struct slot {
    struct vd_migration *m;
    unsigned disk;
    uint64_t off, len;
    uint8_t *buf, *out;
    piece *pieces;
    size_t nb_pieces, cap_pieces;
    vd_codec_ctx *ctx;
    int ret;
    char err[256];
} slot;

typedef struct schan {
    vd_migration *m;
    unsigned index;
    vd_mig_conn *conn;
    uint64_t seq;
    uint32_t pass_done;
    pthread_t thread;
    bool started;
    slot slots[BATCH];
    size_t nb_slots;
} schan;

struct vd_migration {
    vd_engine *e;
    vd_mig_send_opts o;
    vd_tls_client_creds tls;
    vd_mig_addr addr;
    sdisk *disks;
    size_t nb;
    schan *ch;
    unsigned nb_ch;
    vd_pool *pool;
    pthread_t thread, rp_thread;
    bool rp_started;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* Under lock: the pass the channels work on, its cursor, who finished it. */
    uint32_t pass;
    bool pass_open, bulk, last_pass;
    unsigned cur_disk;
    uint64_t cur_off;
    unsigned chans_done;
    bool stop;                   /* cancel or failure: every thread winds down */
    bool cancel, committed, finished, drained;
    int64_t durable;             /* the last pass the destination said is durable (READY) */
    bool go_on;                  /* migrate-continue in pre-switchover */
    vd_mig_status status;
    char error[512];
    unsigned slots_free;         /* compressions that may run at once */
    /* Statistics (under lock unless atomic). */
    uint64_t t_start, t_setup, t_down, t_end;
    uint64_t wire;               /* atomic */
    uint64_t wire_precopy;
    uint64_t pass_bytes, pass_data, pass_left, zero_bytes, normal_bytes, dirty_marked, dirty_rate;
    uint64_t compressed_chunks, compress_busy, compressed_size, compressed_input;
    uint64_t rate;               /* guest bytes per second of the last full pass */

    pthread_mutex_t dirty_lock;
    pthread_mutex_t rate_lock;
    uint64_t rate_next_ns;
    /* auto-converge: the throttle (atomic), the users' write rate it started from, the
     * passes that wrote too much, and the users' own speed limit (under rate_lock). */
    unsigned throttle_pct;
    uint64_t throttle_base;
    unsigned high_cnt;
    uint64_t dirty_in_pass;
    uint64_t wire_in_pass;       /* bytes on the wire during the last pass */
    uint64_t throttle_next_ns;
    /* The switchover's fixed cost, learnt from the passes: how long after a pass's end
     * its READY came (the destination's flush and a round trip). */
    uint64_t pass_end_ns;
    uint32_t pass_ended;
    uint64_t ready_delay_ns;
};

/* ---- status and failure ---------------------------------------------------------------- */

static void set_status_locked(vd_migration *m, vd_mig_status s)
{
    if (m->status == s) {
        return;
    }
    m->status = s;
    if (m->o.caps.events) {
        vd_mig_emit_status(m->e, s);
    }
}

static void set_status(vd_migration *m, vd_mig_status s)
{
    pthread_mutex_lock(&m->lock);
    set_status_locked(m, s);
    pthread_mutex_unlock(&m->lock);
}

static void shutdown_all(vd_migration *m)
{
    for (unsigned i = 0; i < m->nb_ch; i++) {
        if (m->ch[i].conn) {
            vd_mig_conn_shutdown(m->ch[i].conn);
        }
    }
}

/* The first failure wins; everyone stops. */
static void fail_msg(vd_migration *m, const char *msg)
{
    pthread_mutex_lock(&m->lock);
    if (!m->stop) {
        m->stop = true;
        snprintf(m->error, sizeof(m->error), "%s", msg);
    }
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    shutdown_all(m);
}

static void fail_err(vd_migration *m, vd_error *err)
{
    fail_msg(m, err ? vd_error_msg(err) : "Unknown error");
    vd_error_free(err);
}

/* ---- dirty tracking ------------------------------------------------------------------------ */

static void dirty_after(vd_write_notifier *nt, vd_node *n, const vd_write_req *req, int ret)
{
    (void)n;
    (void)ret;  /* a failed write may have changed part of the range: send it again */
    sdisk *d = (sdisk *)((char *)nt - offsetof(sdisk, nt));
    if (req->off >= d->size || req->len == 0) {
        return;
    }
    uint64_t len = req->len > d->size - req->off ? d->size - req->off : req->len;
    pthread_mutex_lock(&d->m->dirty_lock);
    vd_hbitmap_set(d->dirty, req->off, len);
    d->m->dirty_marked += len;
    pthread_mutex_unlock(&d->m->dirty_lock);
}

static bool throttled(vd_migration *m)
{
    return __atomic_load_n(&m->throttle_pct, __ATOMIC_ACQUIRE) != 0;
}

static bool running(vd_migration *m)
{
    return !__atomic_load_n(&m->stop, __ATOMIC_RELAXED);
}

/* A token bucket under rate_lock: charges bytes at rate bytes a second against *next_ns
 * and sleeps until its turn, in 10 ms slices, while waiting(m) holds. Both the migration's
 * max-bandwidth and auto-converge's hold on the users' writes use it. */
static void pace(vd_migration *m, uint64_t *next_ns, uint64_t bytes, uint64_t rate,
                 bool (*waiting)(vd_migration *m))
{
    pthread_mutex_lock(&m->rate_lock);
    uint64_t now = vd_mig_now_ns();
    if (*next_ns < now) {
        *next_ns = now;
    }
    uint64_t at = *next_ns;
    *next_ns += bytes * 1000000000ull / rate;
    pthread_mutex_unlock(&m->rate_lock);
    while (at > now && waiting(m)) {
        uint64_t ns = at - now > 10000000u ? 10000000u : at - now;
        struct timespec ts = {0, (long)ns};
        nanosleep(&ts, NULL);
        now = vd_mig_now_ns();
    }
}

/* auto-converge: a user's write waits its turn under the throttled rate (in short sleeps,
 * so the switchover, which lifts the throttle, never waits long for it). */
static int throttle_write(vd_write_notifier *nt, vd_node *n, const vd_write_req *req)
{
    (void)n;
    sdisk *d = (sdisk *)((char *)nt - offsetof(sdisk, nt));
    vd_migration *m = d->m;
    unsigned pct = __atomic_load_n(&m->throttle_pct, __ATOMIC_ACQUIRE);
    if (pct == 0) {
        return 0;
    }
    uint64_t cap = m->throttle_base / 100 * (100 - pct);
    pace(m, &m->throttle_next_ns, req->len ? req->len : 1, cap < 65536 ? 65536 : cap,
         throttled);
    return 0;
}

/* QEMU's trigger: twice (not necessarily in a row) a pass's users wrote more than
 * throttle-trigger-threshold percent of what it sent: throttle, or throttle harder. */
static void auto_converge(vd_migration *m, uint64_t dirtied, uint64_t sent)
{
    const vd_mig_params *p = &m->o.params;
    if (!m->o.caps.auto_converge ||
        dirtied * 100 <= (uint64_t)p->throttle_trigger_threshold * sent ||
        ++m->high_cnt < 2) {
        return;
    }
    m->high_cnt = 0;
    unsigned pct = __atomic_load_n(&m->throttle_pct, __ATOMIC_ACQUIRE);
    if (pct == 0) {
        m->throttle_base = m->dirty_rate;
        pct = p->cpu_throttle_initial;
    } else {
        pct = pct + p->cpu_throttle_increment > p->max_cpu_throttle
                  ? p->max_cpu_throttle : pct + p->cpu_throttle_increment;
    }
    __atomic_store_n(&m->throttle_pct, pct, __ATOMIC_RELEASE);
}

/* After the commit the destination owns the disk: the source takes no more writes. */
static int refuse_write(vd_write_notifier *nt, vd_node *n, const vd_write_req *req)
{
    (void)nt;
    (void)n;
    (void)req;
    return -EPERM;
}

static void drain_users(sdisk *d)
{
    d->nb_users = vd_node_users_drain_begin(d->node, d->h, d->users, MAX_USERS);
    vd_node_drain_writes(d->node);
}

static void undrain_users(sdisk *d)
{
    vd_disks_drain_end(d->users, d->nb_users);
    d->nb_users = 0;
}

/* Notifiers come and go with the node's users held, as a mirror's do. */
static void notifiers_set(vd_migration *m, bool on)
{
    for (size_t i = 0; i < m->nb; i++) {
        sdisk *d = &m->disks[i];
        bool held = m->drained;
        if (!held) {
            drain_users(d);
        }
        if (on && !d->nt_on) {
            vd_node_add_write_notifier(d->node, &d->nt);
        } else if (!on && d->nt_on) {
            vd_node_remove_write_notifier(d->node, &d->nt);
        }
        d->nt_on = on;
        if (!held) {
            undrain_users(d);
        }
    }
}

static uint64_t dirty_count(vd_migration *m)
{
    uint64_t n = 0;
    pthread_mutex_lock(&m->dirty_lock);
    for (size_t i = 0; i < m->nb; i++) {
        n += vd_hbitmap_count(m->disks[i].dirty);
    }
    pthread_mutex_unlock(&m->dirty_lock);
    return n;
}

/* The dirty bits become the next pass's ranges; the bitmaps start empty again. */
static uint64_t take_dirty(vd_migration *m)
{
    uint64_t n = 0;
    pthread_mutex_lock(&m->dirty_lock);
    for (size_t i = 0; i < m->nb; i++) {
        sdisk *d = &m->disks[i];
        vd_hbitmap *fresh = vd_hbitmap_new(d->size, DIRTY_GRANULE);
        if (!fresh) {
            abort();
        }
        vd_hbitmap_free(d->pass);
        d->pass = d->dirty;
        d->dirty = fresh;
        n += vd_hbitmap_count(d->pass);
    }
    m->dirty_marked = 0;
    pthread_mutex_unlock(&m->dirty_lock);
    return n;
}

/* ---- a channel's work ---------------------------------------------------------------------- */

/* Under lock: the next span of the pass (at most CHUNK from its first dirty byte), or
 * false when the pass has no more. A span of a later pass may hold clean gaps: the slot
 * sends its dirty runs only. */
static bool next_range(vd_migration *m, unsigned *disk, uint64_t *off, uint64_t *len)
{
    while (m->cur_disk < m->nb) {
        sdisk *d = &m->disks[m->cur_disk];
        uint64_t start = m->cur_off, l = 0;
        bool found;
        if (m->bulk) {
            found = start < d->size;
        } else {
            found = vd_hbitmap_next_dirty_area(d->pass, start, d->size, &start, &l);
        }
        if (found) {
            l = d->size - start > CHUNK ? CHUNK : d->size - start;
            *disk = m->cur_disk;
            *off = start;
            *len = l;
            m->cur_off = start + l;
            return true;
        }
        m->cur_disk++;
        m->cur_off = 0;
    }
    return false;
}

/* The runs of a span to send: all of it in the bulk pass, else the pass's dirty runs (a
 * clean gap between two is not sent again: under random writes it would be most of the
 * disk). Calls fn for each. */
static int span_runs(vd_migration *m, slot *s, int (*fn)(slot *s, uint64_t off, uint64_t len))
{
    sdisk *d = &m->disks[s->disk];
    if (m->bulk) {
        return fn(s, s->off, s->len);
    }
    uint64_t end = s->off + s->len, pos = s->off, st, l;
    while (pos < end && vd_hbitmap_next_dirty_area(d->pass, pos, end, &st, &l)) {
        int r = fn(s, st, l);
        if (r < 0) {
            return r;
        }
        pos = st + l;
    }
    return 0;
}

static void add_piece(slot *s, vd_mig_type type, uint64_t off, uint64_t len)
{
    if (s->nb_pieces && s->pieces[s->nb_pieces - 1].type == type &&
        s->pieces[s->nb_pieces - 1].off + s->pieces[s->nb_pieces - 1].len == off) {
        s->pieces[s->nb_pieces - 1].len += len;
        return;
    }
    if (s->nb_pieces == s->cap_pieces) {
        s->cap_pieces = s->cap_pieces ? s->cap_pieces * 2 : 16;
        s->pieces = realloc(s->pieces, s->cap_pieces * sizeof(*s->pieces));
        if (!s->pieces) {
            abort();
        }
    }
    s->pieces[s->nb_pieces++] = (piece){.type = type, .off = off, .len = len};
}

/* compress-threads bounds the compressions running at once; with compress-wait-thread
 * off a range that finds them all busy goes stored (QEMU's busy count). */
static bool compress_slot_get(vd_migration *m)
{
    pthread_mutex_lock(&m->lock);
    while (m->slots_free == 0 && m->o.params.compress_wait_thread && !m->stop) {
        pthread_cond_wait(&m->cond, &m->lock);
    }
    bool got = m->slots_free > 0 && !m->stop;
    if (got) {
        m->slots_free--;
    } else {
        m->compress_busy++;
    }
    pthread_mutex_unlock(&m->lock);
    return got;
}

static void compress_slot_put(vd_migration *m)
{
    pthread_mutex_lock(&m->lock);
    m->slots_free++;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

/* Splits one run by block status into pieces. */
static int classify_run(slot *s, uint64_t off, uint64_t len)
{
    sdisk *d = &s->m->disks[s->disk];
    for (uint64_t end = off + len; off < end;) {
        vd_extent st;
        int r = vd_block_status(d->h, off, end - off, &st);
        if (r < 0 || st.length == 0) {
            r = r < 0 ? r : -EIO;
            snprintf(s->err, sizeof(s->err), "Block status of '%s' at %" PRIu64 " failed: %s",
                     d->name, off, strerror(-r));
            return r;
        }
        vd_mig_type t = !(st.flags & VD_BS_ALLOCATED) ? VD_MIG_HOLE
                        : (st.flags & VD_BS_ZERO)     ? VD_MIG_ZERO
                                                      : VD_MIG_DATA;
        uint64_t n = st.length < end - off ? st.length : end - off;
        add_piece(s, t, off, n);
        off += n;
    }
    return 0;
}

/* A pool task: one span's runs, split by block status, read, their data compressed. */
static void encode_slot(void *arg, size_t i)
{
    schan *ch = arg;
    vd_migration *m = ch->m;
    slot *s = &ch->slots[i];
    sdisk *d = &m->disks[s->disk];
    s->m = m;
    s->nb_pieces = 0;
    s->ret = span_runs(m, s, classify_run);
    if (s->ret < 0) {
        return;
    }
    size_t out_off = 0;
    size_t nb = s->nb_pieces;
    for (size_t k = 0; k < nb; k++) {
        piece *p = &s->pieces[k];
        if (p->type != VD_MIG_DATA) {
            continue;
        }
        uint8_t *buf = s->buf + (p->off - s->off);
        int r = vd_pread(d->h, buf, p->len, p->off);
        if (r < 0) {
            s->ret = r;
            snprintf(s->err, sizeof(s->err), "Read of '%s' at %" PRIu64 " failed: %s",
                     d->name, p->off, strerror(-r));
            return;
        }
        if (m->o.caps.zero_blocks && vd_buf_is_zero(buf, p->len)) {
            p->type = VD_MIG_ZERO;
            continue;
        }
        p->c = (vd_mig_chunk){.type = VD_MIG_DATA, .disk = (uint16_t)s->disk,
                              .offset = p->off, .length = p->len};
        vd_codec_ctx *ctx = NULL;
        bool slot_held = false;
        if (s->ctx && p->len > 1) {
            slot_held = compress_slot_get(m);
            ctx = slot_held ? s->ctx : NULL;
        }
        r = vd_mig_payload_encode(ctx, m->o.params.compress_type, buf, p->len,
                                  s->out + out_off, p->len, &p->c);
        if (slot_held) {
            compress_slot_put(m);
        }
        if (r < 0) {
            s->ret = r;
            snprintf(s->err, sizeof(s->err), "Compression failed: %s", strerror(-r));
            return;
        }
        p->out_off = out_off;
        out_off += p->c.payload_len;
    }
}

/* The speed limit over every channel (QEMU's max-bandwidth); none in the switchover. */
static void rate_wait(vd_migration *m, uint64_t bytes)
{
    uint64_t bw = m->o.params.max_bandwidth;
    if (bw != 0 && !m->last_pass) {
        pace(m, &m->rate_next_ns, bytes, bw, running);
    }
}

static int send_slot(schan *ch, slot *s, vd_error **errp)
{
    vd_migration *m = ch->m;
    uint64_t zero = 0, normal = 0, comp = 0, comp_in = 0, nb_comp = 0;
    int r = 0;
    for (size_t k = 0; k < s->nb_pieces && r == 0; k++) {
        piece *p = &s->pieces[k];
        if (p->type != VD_MIG_DATA) {
            /* Markers of ranges longer than a chunk are fine: they carry no payload. */
            vd_mig_chunk c = {.type = p->type, .disk = (uint16_t)s->disk, .offset = p->off,
                              .length = p->len, .pass = m->pass};
            r = vd_mig_chunk_send(ch->conn, &c, &ch->seq, NULL, &m->wire, errp);
            zero += p->len;
            continue;
        }
        p->c.pass = m->pass;
        rate_wait(m, VD_MIG_HEADER_SIZE + p->c.payload_len);
        r = vd_mig_chunk_send(ch->conn, &p->c, &ch->seq, s->out + p->out_off, &m->wire, errp);
        normal += p->len;
        if (p->c.codec != VD_MIG_CODEC_NONE) {
            nb_comp++;
            comp += p->c.payload_len;
            comp_in += p->len;
        }
    }
    pthread_mutex_lock(&m->lock);
    m->zero_bytes += zero;
    m->normal_bytes += normal;
    m->pass_data += normal;
    m->pass_left = m->pass_left > zero + normal ? m->pass_left - zero - normal : 0;
    m->pass_bytes += zero + normal;
    m->compressed_chunks += nb_comp;
    m->compressed_size += comp;
    m->compressed_input += comp_in;
    pthread_mutex_unlock(&m->lock);
    return r;
}

static void *chan_main(void *arg)
{
    schan *ch = arg;
    vd_migration *m = ch->m;
    vd_error *err = NULL;
    pthread_mutex_lock(&m->lock);
    for (;;) {
        while (!m->stop && !(m->pass_open && m->pass > ch->pass_done)) {
            pthread_cond_wait(&m->cond, &m->lock);
        }
        if (m->stop) {
            break;
        }
        ch->nb_slots = 0;
        while (ch->nb_slots < BATCH) {
            slot *s = &ch->slots[ch->nb_slots];
            if (!next_range(m, &s->disk, &s->off, &s->len)) {
                break;
            }
            ch->nb_slots++;
        }
        uint32_t pass = m->pass;
        pthread_mutex_unlock(&m->lock);
        int r = 0;
        if (ch->nb_slots > 0) {
            vd_pool_run(m->pool, ch->nb_slots, encode_slot, ch);
            for (size_t i = 0; i < ch->nb_slots && r == 0; i++) {
                if (ch->slots[i].ret < 0) {
                    r = ch->slots[i].ret;
                    vd_error_set(&err, VD_ERR_IO, -r, "%s", ch->slots[i].err);
                } else {
                    r = send_slot(ch, &ch->slots[i], &err);
                }
            }
        } else {
            vd_mig_chunk c = {.type = VD_MIG_SYNC, .pass = pass};
            r = vd_mig_chunk_send(ch->conn, &c, &ch->seq, NULL, &m->wire, &err);
            if (r == 0 && ch->index > 0) {
                pthread_mutex_lock(&m->lock);
                bool last = m->last_pass;
                pthread_mutex_unlock(&m->lock);
                if (last) {
                    vd_mig_chunk end = {.type = VD_MIG_END};
                    r = vd_mig_chunk_send(ch->conn, &end, &ch->seq, NULL, &m->wire, &err);
                }
            }
        }
        if (r < 0) {
            /* A destination that gave up says why on the return path, and then this
             * channel breaks: its reason, not the broken pipe, is the migration's. */
            pthread_mutex_lock(&m->lock);
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            while (!m->stop &&
                   pthread_cond_timedwait(&m->cond, &m->lock, &until) != ETIMEDOUT) {
            }
            pthread_mutex_unlock(&m->lock);
            fail_err(m, err);
            err = NULL;
            pthread_mutex_lock(&m->lock);
            break;
        }
        pthread_mutex_lock(&m->lock);
        if (ch->nb_slots == 0) {
            ch->pass_done = pass;
            m->chans_done++;
            pthread_cond_broadcast(&m->cond);
            if (m->last_pass) {
                break;
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* ---- the return path ------------------------------------------------------------------------ */

static void *rp_main(void *arg)
{
    vd_migration *m = arg;
    vd_mig_channel rp = {0};
    vd_mig_disks none = {.nb = 0};
    for (;;) {
        vd_mig_chunk c;
        uint8_t *payload = NULL;
        vd_error *err = NULL;
        int r = vd_mig_chunk_recv(m->ch[0].conn, &c, &payload, &err);
        if (r == 0 && (c.type != VD_MIG_READY && c.type != VD_MIG_ERROR)) {
            r = vd_error_set(&err, VD_ERR_INVALID, EPROTO, "migration stream: the "
                             "destination sent an unexpected chunk");
        }
        if (r == 0) {
            r = vd_mig_chunk_check(&rp, &none, &c, &err);
        }
        if (r == 0) {
            r = vd_mig_chunk_accept(&rp, &none, &c, payload, &err);
        }
        if (r == 0 && c.type == VD_MIG_ERROR) {
            char text[VD_MIG_MAX_ERROR + 1], msg[VD_MIG_MAX_ERROR + 32];
            vd_mig_error_text(&c, payload, text);
            snprintf(msg, sizeof(msg), "The destination failed: %s", text);
            fail_msg(m, msg);
            free(payload);
            return NULL;
        }
        free(payload);
        if (r < 0) {
            pthread_mutex_lock(&m->lock);
            bool quiet = m->committed || m->stop;
            pthread_mutex_unlock(&m->lock);
            if (quiet) {
                vd_error_free(err);
            } else {
                vd_error_prepend(&err, "Return path");
                fail_err(m, err);
            }
            return NULL;
        }
        pthread_mutex_lock(&m->lock);
        if ((int64_t)c.pass > m->durable) {
            m->durable = c.pass;
        }
        if (c.pass == m->pass_ended && m->pass_end_ns) {
            m->ready_delay_ns = vd_mig_now_ns() - m->pass_end_ns;
        }
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
    }
}

/* ---- the migration's thread ---------------------------------------------------------------- */

static int connect_channels(vd_migration *m, vd_error **errp)
{
    vd_mig_hello hello = {.nb_channels = (uint16_t)m->nb_ch};
    if (getrandom(hello.migration_id, sizeof(hello.migration_id), 0) !=
        (ssize_t)sizeof(hello.migration_id)) {
        return vd_error_set(errp, VD_ERR_GENERIC, EIO, "Cannot make a migration id");
    }
    const char *host = m->o.params.tls_hostname[0] ? m->o.params.tls_hostname
                                                    : m->addr.host;
    for (unsigned i = 0; i < m->nb_ch; i++) {
        int fd = vd_mig_connect(&m->addr, VD_MIG_CONNECT_MS, errp);
        if (fd < 0) {
            return fd;
        }
        vd_mig_socket_tune(fd, VD_MIG_DEAD_MS);
        int r = vd_mig_conn_client(fd, m->o.tls ? &m->tls : NULL, host, VD_MIG_CONNECT_MS,
                                   &m->ch[i].conn, errp);
        if (r < 0) {
            return r;
        }
        uint8_t buf[VD_MIG_HELLO_SIZE];
        hello.channel = (uint16_t)i;
        vd_mig_hello_encode(&hello, buf);
        if ((r = vd_mig_conn_write(m->ch[i].conn, buf, sizeof(buf), errp)) < 0) {
            return r;
        }
        __atomic_add_fetch(&m->wire, sizeof(buf), __ATOMIC_RELAXED);
    }
    return 0;
}

/* Channel 0 names the disks and their exports before any data; every channel then ends
 * pass 0 (SYNC), so no data chunk reaches a disk the receiver does not know yet. */
static int announce(vd_migration *m, vd_error **errp)
{
    schan *c0 = &m->ch[0];
    int r = 0;
    for (size_t i = 0; i < m->nb && r == 0; i++) {
        sdisk *d = &m->disks[i];
        size_t len = strlen(d->name);
        vd_mig_chunk c = {.type = VD_MIG_DISK, .disk = (uint16_t)i, .offset = d->size,
                          .payload_len = (uint32_t)len,
                          .data_crc = vd_mig_crc((const uint8_t *)d->name, len)};
        r = vd_mig_chunk_send(c0->conn, &c, &c0->seq, d->name, &m->wire, errp);
    }
    for (size_t i = 0; i < m->nb && r == 0; i++) {
        sdisk *d = &m->disks[i];
        for (size_t k = 0; k < d->nb_exports && r == 0; k++) {
            const vd_mig_export *x = &d->exports[k];
            size_t il = strlen(x->id), nl = strlen(x->name);
            uint8_t *p = malloc(il + 1 + nl);
            if (!p) {
                abort();
            }
            memcpy(p, x->id, il + 1);
            memcpy(p + il + 1, x->name, nl);
            vd_mig_chunk c = {.type = VD_MIG_EXPORT, .disk = (uint16_t)i,
                              .offset = x->writable ? VD_MIG_EXPORT_WRITABLE : 0,
                              .payload_len = (uint32_t)(il + 1 + nl),
                              .data_crc = vd_mig_crc(p, il + 1 + nl)};
            r = vd_mig_chunk_send(c0->conn, &c, &c0->seq, p, &m->wire, errp);
            free(p);
        }
    }
    for (unsigned i = 0; i < m->nb_ch && r == 0; i++) {
        vd_mig_chunk c = {.type = VD_MIG_SYNC, .pass = 0};
        r = vd_mig_chunk_send(m->ch[i].conn, &c, &m->ch[i].seq, NULL, &m->wire, errp);
    }
    return r;
}

/* Runs pass `pass` on every channel and waits for its end; false if the migration
 * stopped meanwhile. */
static bool run_pass(vd_migration *m, uint32_t pass, bool bulk, uint64_t size)
{
    pthread_mutex_lock(&m->lock);
    m->pass = pass;
    m->bulk = bulk;
    m->cur_disk = 0;
    m->cur_off = 0;
    m->chans_done = 0;
    m->pass_bytes = 0;
    m->pass_data = 0;
    m->pass_left = size;
    m->pass_open = true;
    uint64_t t0 = vd_mig_now_ns();
    uint64_t wire0 = __atomic_load_n(&m->wire, __ATOMIC_RELAXED);
    if (m->o.caps.events) {
        vd_mig_emit_pass(m->e, pass);
    }
    pthread_cond_broadcast(&m->cond);
    while (!m->stop && m->chans_done < m->nb_ch) {
        pthread_cond_wait(&m->cond, &m->lock);
    }
    m->pass_open = false;
    m->pass_end_ns = vd_mig_now_ns();
    m->pass_ended = pass;
    m->wire_in_pass = __atomic_load_n(&m->wire, __ATOMIC_RELAXED) - wire0;
    uint64_t ns = m->pass_end_ns - t0;
    /* The rate at which data moves (markers cost next to nothing); a pass too small to
     * time says little about the link: keep the last rate. */
    if (m->pass_data >= CHUNK && ns > 0) {
        m->rate = (uint64_t)((double)m->pass_data * 1e9 / (double)ns);
    }
    pthread_mutex_lock(&m->dirty_lock);
    m->dirty_in_pass = m->dirty_marked;
    if (ns > 0) {
        m->dirty_rate = (uint64_t)((double)m->dirty_marked * 1e9 / (double)ns);
    }
    pthread_mutex_unlock(&m->dirty_lock);
    bool ok = !m->stop;
    pthread_mutex_unlock(&m->lock);
    return ok;
}

static uint64_t total_size(vd_migration *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->nb; i++) {
        n += m->disks[i].size;
    }
    return n;
}

/* The switchover: users held, the last pass, FLUSH, READY, then the commit. */
static int switchover(vd_migration *m, uint32_t pass)
{
    pthread_mutex_lock(&m->lock);
    if (m->stop) {
        pthread_mutex_unlock(&m->lock);
        return -ECANCELED;
    }
    set_status_locked(m, m->o.caps.pause_before_switchover ? VD_MIG_STATUS_ACTIVE
                                                             : VD_MIG_STATUS_DEVICE);
    m->wire_precopy = __atomic_load_n(&m->wire, __ATOMIC_RELAXED);
    m->t_down = vd_mig_now_ns();
    pthread_mutex_unlock(&m->lock);
    /* The throttle's sleepers go on (the drain waits for them), held from here on. */
    __atomic_store_n(&m->throttle_pct, 0, __ATOMIC_RELEASE);
    for (size_t i = 0; i < m->nb; i++) {
        drain_users(&m->disks[i]);
    }
    m->drained = true;
    if (m->o.caps.pause_before_switchover) {
        pthread_mutex_lock(&m->lock);
        if (!m->stop) {
            set_status_locked(m, VD_MIG_STATUS_PRE_SWITCHOVER);
        }
        while (!m->stop && !m->go_on) {
            pthread_cond_wait(&m->cond, &m->lock);
        }
        if (!m->stop) {
            set_status_locked(m, VD_MIG_STATUS_DEVICE);
        }
        pthread_mutex_unlock(&m->lock);
    }
    uint64_t left = take_dirty(m);
    pthread_mutex_lock(&m->lock);
    m->last_pass = true;
    pthread_mutex_unlock(&m->lock);
    if (!run_pass(m, pass, false, left)) {
        return -EIO;
    }
    for (unsigned i = 0; i < m->nb_ch; i++) {
        pthread_join(m->ch[i].thread, NULL);
        m->ch[i].started = false;
    }
    vd_error *err = NULL;
    vd_mig_chunk flush = {.type = VD_MIG_FLUSH};
    if (vd_mig_chunk_send(m->ch[0].conn, &flush, &m->ch[0].seq, NULL, &m->wire, &err) < 0) {
        fail_err(m, err);
        return -EIO;
    }
    pthread_mutex_lock(&m->lock);
    while (m->durable < (int64_t)pass && !m->stop) {
        pthread_cond_wait(&m->cond, &m->lock);
    }
    /* The decision: past this point a cancel comes too late. */
    bool go = m->durable >= (int64_t)pass && !m->stop;
    m->committed = go;
    pthread_mutex_unlock(&m->lock);
    if (!go) {
        return -EIO;
    }
    for (size_t i = 0; i < m->nb; i++) {
        sdisk *d = &m->disks[i];
        vd_node_remove_write_notifier(d->node, &d->nt);
        d->nt_on = false;
        vd_node_add_write_notifier(d->node, &d->ro);
        d->ro_on = true;
    }
    vd_mig_chunk commit = {.type = VD_MIG_COMMIT};
    int r = vd_mig_chunk_send(m->ch[0].conn, &commit, &m->ch[0].seq, NULL, &m->wire, &err);
    /* Committed either way: the destination may already own the disks. */
    vd_error_free(err);
    (void)r;
    for (size_t i = 0; i < m->nb; i++) {
        undrain_users(&m->disks[i]);
    }
    m->drained = false;
    pthread_mutex_lock(&m->lock);
    m->t_end = vd_mig_now_ns();
    pthread_mutex_unlock(&m->lock);
    /* Outside the downtime, the source's nodes become read-only (QEMU inactivates its
     * images): their formats store and flush what they hold, and the migration lets go of
     * them, so they can be deleted. A node that cannot be reopened keeps refusing writes
     * until the migration is freed. */
    for (size_t i = 0; i < m->nb; i++) {
        sdisk *d = &m->disks[i];
        drain_users(d);
        if (vd_node_reopen_rw(d->node, false, NULL) == 0) {
            vd_node_remove_write_notifier(d->node, &d->ro);
            d->ro_on = false;
        } else {
            vd_flush(d->h);
        }
        undrain_users(d);
        if (!d->ro_on) {
            vd_disk_unclaim(d->h, d->claim);
            d->claim = NULL;
            vd_close(d->h);
            d->h = NULL;
        }
    }
    return 0;
}

static void *mig_main(void *arg)
{
    vd_migration *m = arg;
    vd_error *err = NULL;
    int r = connect_channels(m, &err);
    if (r == 0) {
        notifiers_set(m, true);
        r = announce(m, &err);
    }
    if (r < 0) {
        fail_err(m, err);
        err = NULL;
    }
    if (r == 0) {
        for (unsigned i = 0; i < m->nb_ch; i++) {
            if (pthread_create(&m->ch[i].thread, NULL, chan_main, &m->ch[i]) == 0) {
                m->ch[i].started = true;
            } else {
                fail_msg(m, "Cannot start a migration thread");
                r = -EAGAIN;
                break;
            }
        }
        if (r == 0 && pthread_create(&m->rp_thread, NULL, rp_main, m) == 0) {
            m->rp_started = true;
        } else if (r == 0) {
            fail_msg(m, "Cannot start a migration thread");
            r = -EAGAIN;
        }
    }
    if (r == 0) {
        pthread_mutex_lock(&m->lock);
        if (!m->stop) {
            m->t_setup = vd_mig_now_ns();
            set_status_locked(m, VD_MIG_STATUS_ACTIVE);
        }
        pthread_mutex_unlock(&m->lock);
        uint32_t pass = 1;
        bool ok = run_pass(m, pass, true, total_size(m));
        while (ok) {
            uint64_t dirty = dirty_count(m);
            pthread_mutex_lock(&m->lock);
            /* QEMU compares what was dirtied with what went on the wire. */
            auto_converge(m, m->dirty_in_pass, m->wire_in_pass);
            /* What the last pass may hold: what moves within downtime-limit once the
             * switchover's fixed cost is paid (at least a quarter of the limit). */
            uint64_t limit = m->o.params.downtime_limit;
            uint64_t fixed = m->ready_delay_ns / 1000000u;
            uint64_t ms = fixed < limit - limit / 4 ? limit - fixed : limit / 4;
            uint64_t budget = m->rate / 1000 * ms;
            /* Close to the end, wait (writes still flowing) until the destination made
             * what it has durable, so the switchover's flush finds little to do; then
             * look again at what was written meanwhile. */
            if (dirty <= budget) {
                while (m->durable < (int64_t)pass && !m->stop) {
                    pthread_cond_wait(&m->cond, &m->lock);
                }
                ok = !m->stop;
            }
            pthread_mutex_unlock(&m->lock);
            pass++;
            if (ok && dirty <= budget && dirty_count(m) <= budget) {
                break;
            }
            ok = ok && run_pass(m, pass, false, take_dirty(m));
        }
        r = ok ? switchover(m, pass) : -EIO;
        if (r == 0) {
            if (m->o.committed) {
                m->o.committed(m->o.opaque);
            }
            set_status(m, VD_MIG_STATUS_COMPLETED);
        }
    }
    /* The end: a failure or a cancel leaves the source as it was. */
    __atomic_store_n(&m->throttle_pct, 0, __ATOMIC_RELEASE);
    if (r < 0) {
        shutdown_all(m);
    }
    pthread_mutex_lock(&m->lock);
    m->stop = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < m->nb_ch; i++) {
        if (m->ch[i].started) {
            pthread_join(m->ch[i].thread, NULL);
            m->ch[i].started = false;
        }
    }
    if (r < 0) {
        notifiers_set(m, false);
        if (m->drained) {
            for (size_t i = 0; i < m->nb; i++) {
                undrain_users(&m->disks[i]);
            }
            m->drained = false;
        }
    }
    /* The destination closes once it has the commit; a cut link ends the wait too. */
    if (m->rp_started) {
        pthread_join(m->rp_thread, NULL);
        m->rp_started = false;
    }
    for (unsigned i = 0; i < m->nb_ch; i++) {
        if (m->ch[i].conn) {
            vd_mig_conn_free(m->ch[i].conn);
            m->ch[i].conn = NULL;
        }
    }
    pthread_mutex_lock(&m->lock);
    if (!m->t_end) {
        m->t_end = vd_mig_now_ns();
    }
    m->finished = true;
    set_status_locked(m, r == 0 ? VD_MIG_STATUS_COMPLETED
                         : m->cancel ? VD_MIG_STATUS_CANCELLED
                                     : VD_MIG_STATUS_FAILED);
    if (r == 0 || m->cancel) {
        m->error[0] = '\0';
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* ---- the public side ---------------------------------------------------------------------- */

static void free_disk(sdisk *d)
{
    if (d->claim && d->h) {
        vd_disk_unclaim(d->h, d->claim);
    }
    if (d->h) {
        vd_close(d->h);
    }
    for (size_t k = 0; k < d->nb_exports; k++) {
        free((char *)d->exports[k].id);
        free((char *)d->exports[k].name);
    }
    free(d->exports);
    free(d->name);
    vd_hbitmap_free(d->dirty);
    vd_hbitmap_free(d->pass);
}

static void mig_free(vd_migration *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        free_disk(&m->disks[i]);
    }
    free(m->disks);
    for (unsigned i = 0; m->ch && i < m->nb_ch; i++) {
        for (unsigned k = 0; k < BATCH; k++) {
            slot *s = &m->ch[i].slots[k];
            free(s->buf);
            free(s->out);
            free(s->pieces);
            vd_codec_ctx_free(s->ctx);
        }
    }
    free(m->ch);
    vd_pool_free(m->pool);
    vd_mig_addr_clear(&m->addr);
    free((char *)m->o.uri);
    free((char *)m->tls.id);
    free((char *)m->tls.dir);
    free((char *)m->tls.username);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->dirty_lock);
    pthread_mutex_destroy(&m->rate_lock);
    pthread_cond_destroy(&m->cond);
    free(m);
}

static int open_disk(vd_migration *m, sdisk *d, const vd_mig_disk_opts *o, vd_error **errp)
{
    d->m = m;
    d->nt.before = throttle_write;
    d->nt.after = dirty_after;
    d->ro.before = refuse_write;
    int r = vd_blockdev_open(m->e, o->node_name, &d->h, errp);
    if (r < 0) {
        return r;
    }
    /* Read for the copy; the users keep writing; nobody may resize meanwhile. */
    if ((r = vd_disk_claim(d->h, VD_PERM_CONSISTENT_READ, VD_PERM_ALL & ~VD_PERM_RESIZE,
                           &d->claim, errp)) < 0) {
        return r;
    }
    if (strlen(o->node_name) > VD_MIG_MAX_NAME) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node name '%s' is too long to "
                            "migrate (31 characters at most)", o->node_name);
    }
    d->node = d->h->node;
    d->name = vd_xstrdup(o->node_name);
    d->size = vd_disk_size(d->h);
    d->dirty = vd_hbitmap_new(d->size, DIRTY_GRANULE);
    d->exports = calloc(o->nb_exports ? o->nb_exports : 1, sizeof(*d->exports));
    if (!d->dirty || !d->exports) {
        abort();
    }
    for (size_t k = 0; k < o->nb_exports; k++) {
        if (strlen(o->exports[k].id) > VD_MIG_MAX_EXPORT_ID ||
            strlen(o->exports[k].name) > VD_MIG_MAX_EXPORT_NAME) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Export '%s' has an id or "
                                "name too long to migrate", o->exports[k].id);
        }
        d->exports[k].id = vd_xstrdup(o->exports[k].id);
        d->exports[k].name = vd_xstrdup(o->exports[k].name);
        d->exports[k].writable = o->exports[k].writable;
        d->nb_exports++;
    }
    return 0;
}

int vd_migration_start(vd_engine *e, const vd_mig_send_opts *o, vd_migration **out,
                       vd_error **errp)
{
    if (o->nb_disks == 0) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "There are no block exports to "
                            "migrate");
    }
    if (o->nb_disks > VD_MIG_MAX_DISKS) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Too many disks to migrate (%u at "
                            "most)", VD_MIG_MAX_DISKS);
    }
    vd_migration *m = calloc(1, sizeof(*m));
    if (!m) {
        abort();
    }
    m->e = e;
    m->o = *o;
    m->o.uri = vd_xstrdup(o->uri);
    m->o.disks = NULL;
    if (o->tls) {
        m->tls = *o->tls;
        m->tls.id = vd_xstrdup(o->tls->id ? o->tls->id : "");
        m->tls.dir = o->tls->dir ? vd_xstrdup(o->tls->dir) : NULL;
        m->tls.username = o->tls->username ? vd_xstrdup(o->tls->username) : NULL;
    }
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->dirty_lock, NULL);
    pthread_mutex_init(&m->rate_lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    m->status = VD_MIG_STATUS_NONE;
    m->durable = -1;
    int r = vd_mig_uri_parse(o->uri, &m->addr, errp);
    if (r == 0 && o->tls && m->addr.is_unix && !m->o.params.tls_hostname[0] &&
        o->tls->verify_peer && !o->tls->psk) {
        r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'tls-hostname' is "
                         "needed to check the destination's certificate over a unix socket");
    }
    m->disks = calloc(o->nb_disks, sizeof(*m->disks));
    if (!m->disks) {
        abort();
    }
    for (size_t i = 0; i < o->nb_disks && r == 0; i++) {
        for (size_t k = 0; k < i && r == 0; k++) {
            if (!strcmp(o->disks[k].node_name, o->disks[i].node_name)) {
                r = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node '%s' is named twice",
                                 o->disks[i].node_name);
            }
        }
        if (r == 0) {
            m->nb++;
            r = open_disk(m, &m->disks[i], &o->disks[i], errp);
        }
    }
    if (r < 0) {
        mig_free(m);
        return r;
    }
    m->nb_ch = o->caps.multifd ? o->params.multifd_channels : 1;
    if (m->nb_ch < 1) {
        m->nb_ch = 1;
    }
    unsigned threads = o->params.compress_threads ? o->params.compress_threads : 1;
    m->slots_free = threads;
    m->pool = vd_pool_new(threads);
    m->ch = calloc(m->nb_ch, sizeof(*m->ch));
    if (!m->ch) {
        abort();
    }
    /* QEMU's rules: compression comes with the compress capability (zlib unless a
     * compress-type says otherwise) or with multifd's multifd-compression. */
    if (!o->caps.compress && !o->caps.multifd) {
        m->o.params.compress_type = VD_MIG_CODEC_NONE;
    } else if (o->caps.compress && o->params.compress_type == VD_MIG_CODEC_NONE) {
        m->o.params.compress_type = VD_MIG_CODEC_ZLIB;
    }
    const vd_codec *codec = vd_mig_codec_impl(m->o.params.compress_type);
    int level = vd_mig_params_level(&m->o.params);
    for (unsigned i = 0; i < m->nb_ch; i++) {
        m->ch[i].m = m;
        m->ch[i].index = i;
        for (unsigned k = 0; k < BATCH; k++) {
            slot *s = &m->ch[i].slots[k];
            s->buf = malloc(CHUNK);
            s->out = malloc(CHUNK);
            if (!s->buf || !s->out) {
                abort();
            }
            /* Level 0: zlib stores (no context); libzstd's 0 is its default level. */
            if (codec && (level > 0 || m->o.params.compress_type == VD_MIG_CODEC_ZSTD)) {
                s->ctx = vd_codec_ctx_new(codec, level > 0 ? level : 3);
            }
        }
    }
    m->t_start = vd_mig_now_ns();
    set_status(m, VD_MIG_STATUS_SETUP);
    if (pthread_create(&m->thread, NULL, mig_main, m) != 0) {
        mig_free(m);
        return vd_error_set(errp, VD_ERR_GENERIC, EAGAIN, "Cannot start the migration thread");
    }
    *out = m;
    return 0;
}

void vd_migration_cancel(vd_migration *m)
{
    pthread_mutex_lock(&m->lock);
    bool act = !m->finished && !m->committed && !m->cancel;
    if (act) {
        m->cancel = true;
        m->stop = true;
        set_status_locked(m, VD_MIG_STATUS_CANCELLING);
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
    if (act) {
        shutdown_all(m);
    }
}

int vd_migration_continue(vd_migration *m, vd_error **errp)
{
    pthread_mutex_lock(&m->lock);
    vd_mig_status st = m->status;
    if (st == VD_MIG_STATUS_PRE_SWITCHOVER) {
        m->go_on = true;
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
    if (st != VD_MIG_STATUS_PRE_SWITCHOVER) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Migration not in expected state: "
                            "%s", vd_mig_status_name(st));
    }
    return 0;
}

void vd_migration_info(vd_migration *m, vd_mig_info *info)
{
    memset(info, 0, sizeof(*info));
    uint64_t dirty = dirty_count(m);
    pthread_mutex_lock(&m->lock);
    uint64_t now = m->finished ? m->t_end : vd_mig_now_ns();
    info->status = m->status;
    info->total_time_ms = (now - m->t_start) / 1000000u;
    info->setup_time_ms = m->t_setup ? (m->t_setup - m->t_start) / 1000000u : 0;
    if (m->status == VD_MIG_STATUS_COMPLETED) {
        info->downtime_ms = (m->t_end - m->t_down) / 1000000u;
    }
    info->transferred = __atomic_load_n(&m->wire, __ATOMIC_RELAXED);
    info->remaining = m->status == VD_MIG_STATUS_COMPLETED ? 0 : dirty + m->pass_left;
    info->total = total_size(m);
    info->zero_bytes = m->zero_bytes;
    info->normal_bytes = m->normal_bytes;
    info->dirty_sync_count = m->pass;
    info->dirty_bytes_rate = m->dirty_rate;
    info->expected_downtime_ms = m->rate ? info->remaining * 1000 / m->rate : 0;
    uint64_t ms = info->total_time_ms - info->setup_time_ms;
    info->mbps = ms ? (double)info->transferred * 8 / 1000.0 / (double)ms : 0;
    info->precopy_bytes = m->wire_precopy ? m->wire_precopy : info->transferred;
    info->downtime_bytes = m->wire_precopy ? info->transferred - m->wire_precopy : 0;
    info->compressed_chunks = m->compressed_chunks;
    info->compress_busy = m->compress_busy;
    info->compressed_size = m->compressed_size;
    info->compressed_input = m->compressed_input;
    info->throttle_pct = __atomic_load_n(&m->throttle_pct, __ATOMIC_ACQUIRE);
    snprintf(info->error, sizeof(info->error), "%s", m->error);
    pthread_mutex_unlock(&m->lock);
}

bool vd_migration_finished(vd_migration *m)
{
    pthread_mutex_lock(&m->lock);
    bool f = m->finished;
    pthread_mutex_unlock(&m->lock);
    return f;
}

void vd_migration_free(vd_migration *m)
{
    if (!m) {
        return;
    }
    vd_migration_cancel(m);
    pthread_join(m->thread, NULL);
    /* A node the migration could not make read-only stops refusing writes. */
    for (size_t i = 0; i < m->nb; i++) {
        sdisk *d = &m->disks[i];
        if (d->ro_on) {
            drain_users(d);
            vd_node_remove_write_notifier(d->node, &d->ro);
            d->ro_on = false;
            undrain_users(d);
        }
    }
    mig_free(m);
}
