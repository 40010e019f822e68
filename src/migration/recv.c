/* The receiving side of a migration (vdisk/migration.h). A thread listens and takes the
 * source's channels (each opens with a hello naming the migration); then one reader per
 * channel checks each chunk against the stream's rules and queues the data, which
 * decompress-threads workers decode, check and write. A SYNC is a barrier over every
 * channel and the queue: pass p is all written before anything of pass p + 1 is read.
 * FLUSH makes the disks durable and answers READY; COMMIT, once every channel ended,
 * lets the disks be exposed. Anything wrong ends it with ERROR sent back, the nodes left
 * claimed by no one and never exposed. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "compress/codec.h"
#include "migration/mig-int.h"
#include "util/common.h"
#include "vdisk/graph.h"

#define HELLO_MS 10000           /* a connection must say hello within this */
#define DRAIN_NS 3000000000ull   /* after a failure, how long the source has to hang up */

typedef struct vd_mig_incoming vd_mig_incoming;

typedef struct rexport {
    char *id, *name;
    bool writable;
} rexport;

typedef struct rdisk {
    vd_disk *h;
    vd_perm_claim *claim;
    rexport *exports;
    size_t nb_exports;
} rdisk;

typedef struct rchan {
    vd_mig_incoming *in;
    unsigned index;
    vd_mig_conn *conn;
    vd_mig_channel st;
    uint32_t next_sync;          /* the pass whose SYNC is due next */
    bool dirty;                  /* data queued since its last SYNC */
    pthread_t thread;
    bool started;
} rchan;

typedef struct work {
    struct work *next;
    vd_mig_chunk c;
    uint8_t *payload;
} work;

struct vd_mig_incoming {
    vd_engine *e;
    vd_mig_incoming_opts o;
    vd_mig_addr addr;
    int listen_fd;
    int wake[2];                 /* a pipe: vd_mig_incoming_free wakes the accept loop */
    pthread_t thread;
    rchan *ch;
    unsigned nb_ch;
    uint8_t id[16];
    pthread_t *workers;
    unsigned nb_workers;
    pthread_t flusher;
    bool flusher_started;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    vd_mig_disks table;          /* what the source announced */
    rdisk disks[VD_MIG_MAX_DISKS];
    work *head, **tail;
    unsigned queued, outstanding, max_queued;
    unsigned arrived;            /* channels at the current SYNC barrier */
    int64_t released;            /* the last pass every channel passed */
    unsigned ended;              /* channels past END */
    unsigned readers;            /* channel threads still running */
    uint64_t t_stop;             /* when it stopped */
    bool flushed, committed, stop, finished;
    vd_mig_status status;
    char error[512];
    uint64_t t_start, t_active, t_end;
    uint64_t normal_bytes, zero_bytes, skipped_bytes, wire;

    pthread_mutex_t send_lock;   /* the return path: READY, ERROR */
    uint64_t rp_seq;
    bool rp_ready_sent;
    uint32_t rp_ready_pass;
    bool error_sent;
};

static void set_status_locked(vd_mig_incoming *in, vd_mig_status s)
{
    if (in->status != s) {
        in->status = s;
        if (in->o.caps.events) {
            vd_mig_emit_status(in->e, s);
        }
    }
}

/* The flusher and the switchover's FLUSH both say READY: a pass lower than one already
 * said durable is old news, not sent (the passes the source sees never go back). */
static void send_rp(vd_mig_incoming *in, vd_mig_chunk *c, const void *payload)
{
    pthread_mutex_lock(&in->send_lock);
    bool stale = c->type == VD_MIG_READY && in->rp_ready_sent && c->pass < in->rp_ready_pass;
    if (c->type == VD_MIG_READY && !stale) {
        in->rp_ready_sent = true;
        in->rp_ready_pass = c->pass;
    }
    if (in->nb_ch && in->ch[0].conn && !in->error_sent && !stale) {
        vd_error *err = NULL;
        vd_mig_chunk_send(in->ch[0].conn, c, &in->rp_seq, payload, NULL, &err);
        vd_error_free(err);
        in->error_sent = c->type == VD_MIG_ERROR;
    }
    pthread_mutex_unlock(&in->send_lock);
}

/* The first failure wins: the source hears why, everyone stops. */
static void fail_msg(vd_mig_incoming *in, const char *msg)
{
    pthread_mutex_lock(&in->lock);
    bool first = !in->stop;
    if (first) {
        in->stop = true;
        snprintf(in->error, sizeof(in->error), "%s", msg);
    }
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
    if (!first) {
        return;
    }
    size_t len = strlen(msg);
    if (len > VD_MIG_MAX_ERROR) {
        len = VD_MIG_MAX_ERROR;
    }
    if (len > 0) {
        vd_mig_chunk c = {.type = VD_MIG_ERROR, .payload_len = (uint32_t)len,
                          .data_crc = vd_mig_crc((const uint8_t *)msg, len)};
        send_rp(in, &c, msg);
    }
    /* The channels are not cut here: closing a socket with unread data resets it, and the
     * reset would throw away the ERROR before the source reads it. The readers drain what
     * the source still sends until it hangs up (in_main cuts them after DRAIN_NS). */
}

static void fail_err(vd_mig_incoming *in, vd_error *err)
{
    fail_msg(in, err ? vd_error_msg(err) : "Unknown error");
    vd_error_free(err);
}

/* ---- the workers ----------------------------------------------------------------------------- */

/* Zeros where the destination does not read zeros already (a new image reads zeros). */
static int write_zeros(rdisk *d, uint64_t off, uint64_t len, uint64_t *skipped)
{
    while (len > 0) {
        vd_extent st;
        int r = vd_block_status(d->h, off, len, &st);
        if (r < 0) {
            return r;
        }
        uint64_t n = st.length && st.length < len ? st.length : len;
        if (st.flags & VD_BS_ZERO) {
            *skipped += n;
        } else if ((r = vd_pwrite_zeroes(d->h, off, n, VD_REQ_MAY_UNMAP)) < 0) {
            return r;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static int apply(vd_mig_incoming *in, const work *w, vd_codec_ctx **ctx, uint8_t *buf,
                 uint64_t *skipped, vd_error **errp)
{
    const vd_mig_chunk *c = &w->c;
    rdisk *d = &in->disks[c->disk];
    const char *name = in->table.disk[c->disk].name;
    int r;
    if (c->type == VD_MIG_DATA) {
        const uint8_t *data = w->payload;
        if (c->codec == VD_MIG_CODEC_NONE) {
            if (vd_mig_crc(data, c->length) != c->data_crc) {
                return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %"
                                    PRIu64 ": checksum mismatch in disk %u at offset %"
                                    PRIu64, c->seq, c->disk, c->offset);
            }
        } else {
            vd_codec_ctx **slot = &ctx[c->codec];
            if (!*slot) {
                *slot = vd_codec_ctx_new(vd_mig_codec_impl(c->codec), 1);
            }
            if ((r = vd_mig_payload_decode(*slot, c, w->payload, buf, errp)) < 0) {
                return r;
            }
            data = buf;
        }
        r = vd_pwrite(d->h, data, c->length, c->offset, 0);
    } else {
        r = write_zeros(d, c->offset, c->length, skipped);
    }
    if (r < 0) {
        return vd_error_set(errp, VD_ERR_IO, -r, "Write to '%s' at %" PRIu64 " failed: %s",
                            name, c->offset, strerror(-r));
    }
    return 0;
}

static void *worker_main(void *arg)
{
    vd_mig_incoming *in = arg;
    vd_codec_ctx *ctx[3] = {NULL, NULL, NULL};
    uint8_t *buf = malloc(VD_MIG_MAX_CHUNK);
    if (!buf) {
        abort();
    }
    pthread_mutex_lock(&in->lock);
    for (;;) {
        while (!in->head && !in->stop) {
            pthread_cond_wait(&in->cond, &in->lock);
        }
        if (in->stop) {
            break;
        }
        work *w = in->head;
        in->head = w->next;
        if (!in->head) {
            in->tail = &in->head;
        }
        in->queued--;
        pthread_cond_broadcast(&in->cond);
        pthread_mutex_unlock(&in->lock);
        vd_error *err = NULL;
        uint64_t skipped = 0;
        int r = apply(in, w, ctx, buf, &skipped, &err);
        if (r < 0) {
            /* Failed before the chunk stops counting as outstanding: otherwise the SYNC
             * barrier could pass in between, and a FLUSH and COMMIT that follow complete
             * the migration without this chunk's data. */
            fail_err(in, err);
        }
        pthread_mutex_lock(&in->lock);
        if (r == 0) {
            if (w->c.type == VD_MIG_DATA) {
                in->normal_bytes += w->c.length;
            } else {
                in->zero_bytes += w->c.length;
            }
            in->skipped_bytes += skipped;
        }
        in->outstanding--;
        pthread_cond_broadcast(&in->cond);
        free(w->payload);
        free(w);
    }
    pthread_mutex_unlock(&in->lock);
    for (int i = 0; i < 3; i++) {
        vd_codec_ctx_free(ctx[i]);
    }
    free(buf);
    return NULL;
}

/* Writes reach the disk while they come, so the FLUSH of the switchover (the downtime) has
 * only the last of them to make durable, not the whole disk from the page cache: the
 * disks are flushed every FLUSH_NS and at the end of every pass. */
#define FLUSH_NS 500000000ull
static void *flusher_main(void *arg)
{
    vd_mig_incoming *in = arg;
    uint64_t last = vd_mig_now_ns();
    int64_t seen = -1;
    pthread_mutex_lock(&in->lock);
    while (!in->stop && !in->flushed) {
        uint64_t now = vd_mig_now_ns();
        bool due = in->released >= 0 && (in->released != seen || now - last >= FLUSH_NS);
        if (!due) {
            uint64_t wait = now - last >= FLUSH_NS ? FLUSH_NS : FLUSH_NS - (now - last);
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += (time_t)(wait / 1000000000u);
            until.tv_nsec += (long)(wait % 1000000000u);
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&in->cond, &in->lock, &until);
            continue;
        }
        bool news = in->released != seen && in->released >= 1;
        seen = in->released;
        unsigned nb = in->table.nb;
        pthread_mutex_unlock(&in->lock);
        int r = 0;
        for (unsigned i = 0; i < nb && r == 0; i++) {
            if (in->disks[i].h) {
                r = vd_flush(in->disks[i].h);
            }
        }
        last = vd_mig_now_ns();
        /* Tells the source how far it may count on the destination. */
        if (news && r == 0) {
            if (in->o.durable) {
                in->o.durable(in->o.opaque, (uint32_t)seen);
            }
            vd_mig_chunk ready = {.type = VD_MIG_READY, .pass = (uint32_t)seen};
            send_rp(in, &ready, NULL);
        }
        pthread_mutex_lock(&in->lock);
    }
    pthread_mutex_unlock(&in->lock);
    return NULL;
}

/* ---- a channel ------------------------------------------------------------------------------- */

static int open_disk(vd_mig_incoming *in, unsigned index, vd_error **errp)
{
    const vd_mig_disk *t = &in->table.disk[index];
    rdisk *d = &in->disks[index];
    int r = vd_blockdev_open(in->e, t->name, &d->h, errp);
    if (r < 0) {
        return r;
    }
    uint64_t size = vd_disk_size(d->h);
    if (size != t->size) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Node '%s' has %" PRIu64 " bytes "
                            "here and %" PRIu64 " on the source", t->name, size, t->size);
    }
    if (vd_disk_read_only(d->h)) {
        return vd_error_set(errp, VD_ERR_INVALID, EROFS, "Node '%s' is read-only", t->name);
    }
    /* Nobody else reads or writes it until it is complete. */
    return vd_disk_claim(d->h, VD_PERM_WRITE, VD_PERM_WRITE_UNCHANGED, &d->claim, errp);
}

static int add_export(vd_mig_incoming *in, const vd_mig_chunk *c, const uint8_t *payload,
                      vd_error **errp)
{
    char id[VD_MIG_MAX_EXPORT_ID + 1], name[VD_MIG_MAX_EXPORT_NAME + 1];
    int r = vd_mig_export_parse(c, payload, id, name, errp);
    if (r < 0) {
        return r;
    }
    vd_mig_export x = {.id = id, .name = name, .writable = c->offset & VD_MIG_EXPORT_WRITABLE};
    rdisk *d = &in->disks[c->disk];
    /* Every disk's: exports may be announced for the disks in any order. */
    for (unsigned i = 0; i < in->table.nb; i++) {
        for (size_t k = 0; k < in->disks[i].nb_exports; k++) {
            if (!strcmp(in->disks[i].exports[k].id, id) ||
                !strcmp(in->disks[i].exports[k].name, name)) {
                return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: export "
                                    "'%s' is announced twice", id);
            }
        }
    }
    if (in->o.check_export &&
        (r = in->o.check_export(in->o.opaque, in->table.disk[c->disk].name, &x, errp)) < 0) {
        return r;
    }
    rexport *n = realloc(d->exports, (d->nb_exports + 1) * sizeof(*n));
    if (!n) {
        abort();
    }
    d->exports = n;
    n[d->nb_exports++] = (rexport){vd_xstrdup(id), vd_xstrdup(name), x.writable};
    return 0;
}

static int protocol(vd_error **errp, const vd_mig_chunk *c, const char *what)
{
    return vd_error_set(errp, VD_ERR_INVALID, EPROTO, "migration stream: chunk %" PRIu64
                        ": %s", c->seq, what);
}

/* SYNC p: every channel and every queued write of pass p is done before anyone goes on.
 * A channel that ended, or channel 0 once it flushed, syncs no more: waiting for them
 * would wait while nobody reads the channels, so that is the source's error. */
static int barrier(vd_mig_incoming *in, const vd_mig_chunk *c, vd_error **errp)
{
    pthread_mutex_lock(&in->lock);
    in->arrived++;
    bool never = false;
    while (!in->stop && in->released < (int64_t)c->pass) {
        if (in->arrived == in->nb_ch && in->outstanding == 0) {
            in->arrived = 0;
            in->released = c->pass;
            pthread_cond_broadcast(&in->cond);
            break;
        }
        if (in->ended > 0 || in->flushed) {
            never = true;
            break;
        }
        pthread_cond_wait(&in->cond, &in->lock);
    }
    int r = in->stop ? -ECANCELED : 0;
    pthread_mutex_unlock(&in->lock);
    if (never) {
        return protocol(errp, c, "a pass ends after another channel's last pass");
    }
    return r;
}

static int flush_disks(vd_mig_incoming *in, vd_error **errp)
{
    for (unsigned i = 0; i < in->table.nb; i++) {
        int r = vd_flush(in->disks[i].h);
        if (r < 0) {
            return vd_error_set(errp, VD_ERR_IO, -r, "Flush of '%s' failed: %s",
                                in->table.disk[i].name, strerror(-r));
        }
    }
    return 0;
}

/* One chunk of channel ch; 1 when the channel is done. */
static int handle(rchan *ch, vd_mig_chunk *c, uint8_t **payload, vd_error **errp)
{
    vd_mig_incoming *in = ch->in;
    pthread_mutex_lock(&in->lock);
    int r = vd_mig_chunk_check(&ch->st, &in->table, c, errp);
    if (r == 0) {
        r = vd_mig_chunk_accept(&ch->st, &in->table, c, *payload, errp);
    }
    bool announced = ch->next_sync > 0;
    bool flushed = in->flushed;
    pthread_mutex_unlock(&in->lock);
    if (r < 0) {
        return r;
    }
    /* READY went out: what channel 0 sends after the flush would not be durable. */
    if (ch->index == 0 && flushed && c->type != VD_MIG_COMMIT) {
        return protocol(errp, c, "only a commit follows the flush");
    }
    switch (c->type) {
    case VD_MIG_DISK:
        if (ch->index != 0 || announced) {
            return protocol(errp, c, "disks are announced on channel 0 before pass 0 ends");
        }
        return open_disk(in, c->disk, errp);
    case VD_MIG_EXPORT:
        if (ch->index != 0 || announced) {
            return protocol(errp, c, "exports are announced on channel 0 before pass 0 "
                            "ends");
        }
        return add_export(in, c, *payload, errp);
    case VD_MIG_DATA:
    case VD_MIG_ZERO:
    case VD_MIG_HOLE: {
        if (!announced || c->pass != ch->next_sync) {
            return protocol(errp, c, "data outside its pass");
        }
        ch->dirty = true;
        work *w = calloc(1, sizeof(*w));
        if (!w) {
            abort();
        }
        w->c = *c;
        w->payload = *payload;
        *payload = NULL;
        pthread_mutex_lock(&in->lock);
        while (!in->stop && in->queued >= in->max_queued) {
            pthread_cond_wait(&in->cond, &in->lock);
        }
        if (in->stop) {
            pthread_mutex_unlock(&in->lock);
            free(w->payload);
            free(w);
            return -ECANCELED;
        }
        *in->tail = w;
        in->tail = &w->next;
        in->queued++;
        in->outstanding++;
        pthread_cond_broadcast(&in->cond);
        pthread_mutex_unlock(&in->lock);
        return 0;
    }
    case VD_MIG_SYNC:
        if (c->pass != ch->next_sync) {
            return protocol(errp, c, "passes end in order");
        }
        ch->next_sync++;
        ch->dirty = false;
        return barrier(in, c, errp);
    case VD_MIG_FLUSH: {
        /* After the SYNC that ends the last pass: every write before it is on the disks. */
        if (ch->index != 0 || !announced || ch->dirty) {
            return protocol(errp, c, "a flush comes on channel 0 after a pass");
        }
        if ((r = flush_disks(in, errp)) < 0) {
            return r;
        }
        pthread_mutex_lock(&in->lock);
        in->flushed = true;
        uint32_t pass = (uint32_t)in->released;
        pthread_cond_broadcast(&in->cond);   /* a channel waiting at a barrier waits in vain */
        pthread_mutex_unlock(&in->lock);
        if (in->o.durable) {
            in->o.durable(in->o.opaque, pass);
        }
        vd_mig_chunk ready = {.type = VD_MIG_READY, .pass = pass};
        send_rp(in, &ready, NULL);
        return 0;
    }
    case VD_MIG_END:
        if (ch->index == 0) {
            return protocol(errp, c, "channel 0 ends with a commit");
        }
        /* Its data must go through a last barrier before the flush. */
        if (ch->dirty) {
            return protocol(errp, c, "a channel ends right after the SYNC of its last pass");
        }
        pthread_mutex_lock(&in->lock);
        in->ended++;
        pthread_cond_broadcast(&in->cond);
        pthread_mutex_unlock(&in->lock);
        return 1;
    case VD_MIG_COMMIT:
        pthread_mutex_lock(&in->lock);
        if (ch->index != 0 || !in->flushed) {
            pthread_mutex_unlock(&in->lock);
            return protocol(errp, c, "a commit comes on channel 0 after the flush");
        }
        while (!in->stop && in->ended < in->nb_ch - 1) {
            pthread_cond_wait(&in->cond, &in->lock);
        }
        r = in->stop ? -ECANCELED : 0;
        /* Every channel ended after the same last pass as channel 0, whose barrier wrote
         * all of it before the flush; a channel that stopped a pass short left it unsynced. */
        bool same = true;
        for (unsigned i = 1; r == 0 && i < in->nb_ch; i++) {
            same = same && in->ch[i].next_sync == ch->next_sync;
        }
        if (r == 0 && !same) {
            pthread_mutex_unlock(&in->lock);
            return protocol(errp, c, "the channels ended after different passes");
        }
        in->committed = r == 0;
        pthread_cond_broadcast(&in->cond);
        pthread_mutex_unlock(&in->lock);
        return r < 0 ? r : 1;
    default:
        return protocol(errp, c, "the source sent a chunk of the return path");
    }
}

/* After a failure: reads and drops what the source still sends until it hangs up. */
static void drain(rchan *ch)
{
    char buf[65536];
    vd_error *err = NULL;
    while (vd_mig_conn_read_or_eof(ch->conn, buf, sizeof(buf), &err) == 1) {
    }
    vd_error_free(err);
}

static void chan_run(rchan *ch)
{
    vd_mig_incoming *in = ch->in;
    for (;;) {
        vd_mig_chunk c;
        uint8_t *payload = NULL;
        vd_error *err = NULL;
        int r = vd_mig_chunk_recv(ch->conn, &c, &payload, &err);
        if (r == 0) {
            r = handle(ch, &c, &payload, &err);
        }
        free(payload);
        if (r < 0) {
            pthread_mutex_lock(&in->lock);
            bool quiet = in->stop;
            pthread_mutex_unlock(&in->lock);
            if (quiet) {
                vd_error_free(err);
            } else {
                fail_err(in, err);
            }
            drain(ch);
            return;
        }
        if (r == 1) {
            return;
        }
    }
}

static void *chan_main(void *arg)
{
    rchan *ch = arg;
    vd_mig_incoming *in = ch->in;
    chan_run(ch);
    pthread_mutex_lock(&in->lock);
    in->readers--;
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
    return NULL;
}

/* Waits for the channel threads; once stopped, a source that does not hang up within
 * DRAIN_NS is cut off. */
static void wait_readers(vd_mig_incoming *in)
{
    bool cut = false;
    pthread_mutex_lock(&in->lock);
    while (in->readers > 0) {
        if (!in->stop || cut) {
            pthread_cond_wait(&in->cond, &in->lock);
            continue;
        }
        if (!in->t_stop) {
            in->t_stop = vd_mig_now_ns();
        }
        uint64_t until_ns = in->t_stop + DRAIN_NS;
        if (vd_mig_now_ns() >= until_ns) {
            cut = true;
            pthread_mutex_unlock(&in->lock);
            for (unsigned i = 0; i < in->nb_ch; i++) {
                if (in->ch[i].conn) {
                    vd_mig_conn_shutdown(in->ch[i].conn);
                }
            }
            pthread_mutex_lock(&in->lock);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t left = until_ns - vd_mig_now_ns();
        ts.tv_sec += (time_t)(left / 1000000000u);
        ts.tv_nsec += (long)(left % 1000000000u);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&in->cond, &in->lock, &ts);
    }
    pthread_mutex_unlock(&in->lock);
}

/* ---- taking the channels --------------------------------------------------------------------- */

/* A connection that says nothing is cut off after HELLO_MS, or at once when the incoming
 * migration is stopped (vd_mig_incoming_free must not wait for a silent peer): the
 * transport has no read timeout, so a watchdog thread shuts it down unless the hello came
 * first. It waits on the migration's lock and condition, which a stop broadcasts. */
typedef struct watchdog {
    vd_mig_incoming *in;
    vd_mig_conn *conn;
    bool done;                   /* under in->lock */
} watchdog;

static void *watchdog_main(void *arg)
{
    watchdog *w = arg;
    vd_mig_incoming *in = w->in;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += HELLO_MS / 1000;
    pthread_mutex_lock(&in->lock);
    while (!w->done) {
        if (in->stop || pthread_cond_timedwait(&in->cond, &in->lock, &until) == ETIMEDOUT) {
            vd_mig_conn_shutdown(w->conn);
            break;
        }
    }
    pthread_mutex_unlock(&in->lock);
    return NULL;
}

/* A new connection: its hello, checked against the migration the first one began. Returns 1
 * when it was refused (the migration goes on), 0 when it joined. */
static int take_channel(vd_mig_incoming *in, int fd)
{
    vd_mig_socket_tune(fd, VD_MIG_DEAD_MS);
    vd_mig_conn *conn = NULL;
    vd_error *err = NULL;
    /* The handshake has its own bound; the hello gets the watchdog's. */
    int r = vd_mig_conn_server(fd, in->o.tls, HELLO_MS, &conn, &err);
    uint8_t buf[VD_MIG_HELLO_SIZE];
    vd_mig_hello h;
    if (r == 0) {
        watchdog w = {.in = in, .conn = conn};
        pthread_t t;
        bool dog = pthread_create(&t, NULL, watchdog_main, &w) == 0;
        r = vd_mig_conn_read(conn, buf, sizeof(buf), &err);
        if (dog) {
            pthread_mutex_lock(&in->lock);
            w.done = true;
            pthread_cond_broadcast(&in->cond);
            pthread_mutex_unlock(&in->lock);
            pthread_join(t, NULL);
        }
    }
    if (r == 0) {
        r = vd_mig_hello_decode(buf, &h, &err);
    }
    if (r == 0 && in->nb_ch && memcmp(h.migration_id, in->id, sizeof(in->id))) {
        r = vd_error_set(&err, VD_ERR_INVALID, EPROTO, "a channel of another migration");
    }
    if (r == 0 && in->nb_ch &&
        (h.nb_channels != in->nb_ch || in->ch[h.channel].conn)) {
        r = vd_error_set(&err, VD_ERR_INVALID, EPROTO, "migration stream: channel %u of %u "
                         "does not fit the migration", h.channel, h.nb_channels);
    }
    if (r < 0) {
        /* A bad connection is refused (the transport closed the fd of a failed handshake);
         * the source's own channels may still come, and a source whose channel this was
         * gives up on its own. */
        vd_mig_conn_free(conn);
        vd_error_free(err);
        return 1;
    }
    /* Under the lock: vd_mig_incoming_free reads the channels from another thread. */
    pthread_mutex_lock(&in->lock);
    if (!in->nb_ch) {
        in->ch = calloc(h.nb_channels, sizeof(*in->ch));
        if (!in->ch) {
            abort();
        }
        memcpy(in->id, h.migration_id, sizeof(in->id));
        in->nb_ch = h.nb_channels;
    }
    rchan *ch = &in->ch[h.channel];
    ch->in = in;
    ch->index = h.channel;
    ch->conn = conn;
    pthread_mutex_unlock(&in->lock);
    return 0;
}

static int accept_all(vd_mig_incoming *in, vd_error **errp)
{
    unsigned have = 0;
    uint64_t deadline = 0;
    for (;;) {
        pthread_mutex_lock(&in->lock);
        bool stop = in->stop;
        pthread_mutex_unlock(&in->lock);
        if (stop) {
            return -ECANCELED;
        }
        if (in->nb_ch && have == in->nb_ch) {
            return 0;
        }
        /* The source opens its channels at once: one that never comes means it gave up. */
        if (deadline && vd_mig_now_ns() > deadline) {
            return vd_error_set(errp, VD_ERR_IO, ETIMEDOUT, "migration: %u of %u channels "
                                "connected; the others never came", have, in->nb_ch);
        }
        /* The wake pipe ends the wait at once when the migration is stopped. */
        struct pollfd p[2] = {{.fd = in->listen_fd, .events = POLLIN},
                              {.fd = in->wake[0], .events = POLLIN}};
        if (poll(p, 2, 200) <= 0 || !(p[0].revents & POLLIN)) {
            continue;
        }
        int fd = accept4(in->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        if (take_channel(in, fd) == 0) {
            have++;
            deadline = vd_mig_now_ns() + 3ull * VD_MIG_CONNECT_MS * 1000000u;
            pthread_mutex_lock(&in->lock);
            if (!in->t_active) {
                in->t_active = vd_mig_now_ns();
                set_status_locked(in, VD_MIG_STATUS_ACTIVE);
            }
            pthread_mutex_unlock(&in->lock);
        }
    }
}

static void release_disks(vd_mig_incoming *in)
{
    for (unsigned i = 0; i < VD_MIG_MAX_DISKS; i++) {
        rdisk *d = &in->disks[i];
        if (d->claim) {
            vd_disk_unclaim(d->h, d->claim);
            d->claim = NULL;
        }
        if (d->h) {
            vd_close(d->h);
            d->h = NULL;
        }
    }
}

/* No more channels: the listening socket goes, and with it a unix socket's file (a stale
 * one would take the next receiver's connections into the void). */
static void stop_listening(vd_mig_incoming *in)
{
    if (in->listen_fd >= 0) {
        close(in->listen_fd);
        in->listen_fd = -1;
        if (in->addr.is_unix) {
            unlink(in->addr.path);
        }
    }
}

static void *in_main(void *arg)
{
    vd_mig_incoming *in = arg;
    vd_error *err = NULL;
    int r = accept_all(in, &err);
    stop_listening(in);
    if (r < 0) {
        if (err) {
            fail_err(in, err);
        }
        err = NULL;
    }
    unsigned started_workers = 0;
    if (r == 0) {
        in->max_queued = 2 * in->nb_workers + in->nb_ch;
        for (unsigned i = 0; i < in->nb_workers; i++) {
            if (pthread_create(&in->workers[i], NULL, worker_main, in) != 0) {
                break;
            }
            started_workers++;
        }
        in->flusher_started = pthread_create(&in->flusher, NULL, flusher_main, in) == 0;
        for (unsigned i = 0; i < in->nb_ch; i++) {
            if (started_workers && pthread_create(&in->ch[i].thread, NULL, chan_main,
                                                  &in->ch[i]) == 0) {
                in->ch[i].started = true;
                pthread_mutex_lock(&in->lock);
                in->readers++;
                pthread_mutex_unlock(&in->lock);
            } else {
                fail_msg(in, "Cannot start a migration thread");
                break;
            }
        }
    }
    wait_readers(in);
    for (unsigned i = 0; i < in->nb_ch; i++) {
        if (in->ch[i].started) {
            pthread_join(in->ch[i].thread, NULL);
        }
    }
    pthread_mutex_lock(&in->lock);
    bool committed = in->committed;  /* final once set: the source let go */
    in->stop = true;             /* the workers are idle: the commit came after a barrier */
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
    for (unsigned i = 0; i < started_workers; i++) {
        pthread_join(in->workers[i], NULL);
    }
    if (in->flusher_started) {
        pthread_join(in->flusher, NULL);
    }
    while (in->head) {
        work *w = in->head;
        in->head = w->next;
        free(w->payload);
        free(w);
    }
    /* The exports take the nodes with claims of their own. */
    release_disks(in);
    char msg[512] = "";
    for (unsigned i = 0; committed && i < in->table.nb; i++) {
        rdisk *d = &in->disks[i];
        for (size_t k = 0; k < d->nb_exports && !msg[0]; k++) {
            vd_mig_export x = {d->exports[k].id, d->exports[k].name, d->exports[k].writable};
            if (in->o.make_export &&
                in->o.make_export(in->o.opaque, in->table.disk[i].name, &x, &err) < 0) {
                snprintf(msg, sizeof(msg), "%s", vd_error_msg(err));
                vd_error_free(err);
                err = NULL;
            }
        }
    }
    for (unsigned i = 0; i < in->nb_ch; i++) {
        if (in->ch[i].conn) {
            vd_mig_conn_shutdown(in->ch[i].conn);
        }
    }
    pthread_mutex_lock(&in->lock);
    if (msg[0]) {
        snprintf(in->error, sizeof(in->error), "%s", msg);
    }
    in->t_end = vd_mig_now_ns();
    in->finished = true;
    set_status_locked(in, committed && !msg[0] ? VD_MIG_STATUS_COMPLETED
                                               : VD_MIG_STATUS_FAILED);
    pthread_mutex_unlock(&in->lock);
    return NULL;
}

/* ---- the public side ------------------------------------------------------------------------ */

int vd_mig_incoming_start(vd_engine *e, const vd_mig_incoming_opts *o, vd_mig_incoming **out,
                          vd_error **errp)
{
    vd_mig_incoming *in = calloc(1, sizeof(*in));
    if (!in) {
        abort();
    }
    in->e = e;
    in->o = *o;
    in->o.uri = NULL;
    in->listen_fd = -1;
    in->wake[0] = in->wake[1] = -1;
    in->released = -1;
    in->tail = &in->head;
    pthread_mutex_init(&in->lock, NULL);
    pthread_mutex_init(&in->send_lock, NULL);
    pthread_cond_init(&in->cond, NULL);
    in->nb_workers = o->params.decompress_threads ? o->params.decompress_threads : 1;
    in->workers = calloc(in->nb_workers, sizeof(*in->workers));
    if (!in->workers) {
        abort();
    }
    int r = vd_mig_uri_parse(o->uri, &in->addr, errp);
    if (r == 0 && pipe2(in->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        r = vd_error_set(errp, VD_ERR_IO, errno, "Cannot create a pipe: %s", strerror(errno));
    }
    if (r == 0) {
        r = in->listen_fd = vd_mig_listen(&in->addr, errp);
    }
    if (r >= 0) {
        in->t_start = vd_mig_now_ns();
        set_status_locked(in, VD_MIG_STATUS_SETUP);
        r = pthread_create(&in->thread, NULL, in_main, in) == 0
                ? 0
                : vd_error_set(errp, VD_ERR_GENERIC, EAGAIN, "Cannot start the migration "
                               "thread");
    }
    if (r < 0) {
        stop_listening(in);
        if (in->wake[0] >= 0) {
            close(in->wake[0]);
            close(in->wake[1]);
        }
        vd_mig_addr_clear(&in->addr);
        free(in->workers);
        free(in);
        return r;
    }
    *out = in;
    return 0;
}

void vd_mig_incoming_info(vd_mig_incoming *in, vd_mig_info *info)
{
    memset(info, 0, sizeof(*info));
    pthread_mutex_lock(&in->lock);
    uint64_t now = in->finished ? in->t_end : vd_mig_now_ns();
    info->status = in->status;
    info->total_time_ms = (now - in->t_start) / 1000000u;
    info->setup_time_ms = in->t_active ? (in->t_active - in->t_start) / 1000000u : 0;
    info->normal_bytes = in->normal_bytes;
    info->zero_bytes = in->zero_bytes;
    for (unsigned i = 0; i < in->table.nb; i++) {
        info->total += in->table.disk[i].size;
    }
    info->dirty_sync_count = in->released > 0 ? (uint64_t)in->released : 0;
    snprintf(info->error, sizeof(info->error), "%s", in->error);
    pthread_mutex_unlock(&in->lock);
}

bool vd_mig_incoming_finished(vd_mig_incoming *in)
{
    pthread_mutex_lock(&in->lock);
    bool f = in->finished;
    pthread_mutex_unlock(&in->lock);
    return f;
}

void vd_mig_incoming_free(vd_mig_incoming *in)
{
    if (!in) {
        return;
    }
    pthread_mutex_lock(&in->lock);
    bool was_stopped = in->stop || in->finished;
    in->stop = true;
    if (!was_stopped) {
        snprintf(in->error, sizeof(in->error), "The incoming migration was stopped");
    }
    pthread_cond_broadcast(&in->cond);
    /* The channels taken so far; the accept loop may be adding one (under the lock). */
    for (unsigned i = 0; i < in->nb_ch; i++) {
        if (in->ch[i].conn) {
            vd_mig_conn_shutdown(in->ch[i].conn);
        }
    }
    pthread_mutex_unlock(&in->lock);
    /* Wakes the accept loop (a pipe full already wakes it just as well). */
    ssize_t n = write(in->wake[1], "", 1);
    (void)n;
    pthread_join(in->thread, NULL);
    for (unsigned i = 0; i < in->nb_ch; i++) {
        vd_mig_conn_free(in->ch[i].conn);
    }
    for (unsigned i = 0; i < VD_MIG_MAX_DISKS; i++) {
        for (size_t k = 0; k < in->disks[i].nb_exports; k++) {
            free(in->disks[i].exports[k].id);
            free(in->disks[i].exports[k].name);
        }
        free(in->disks[i].exports);
    }
    vd_mig_addr_clear(&in->addr);
    close(in->wake[0]);
    close(in->wake[1]);
    free(in->ch);
    free(in->workers);
    pthread_mutex_destroy(&in->lock);
    pthread_mutex_destroy(&in->send_lock);
    pthread_cond_destroy(&in->cond);
    free(in);
}
