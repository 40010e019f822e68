/* kind "migration": the recorded image is the destination of a live migration (vdisk/
 * migration.h) that runs in this process, from a source in an engine of its own over a
 * unix socket, while a writer thread writes the source. The source holds tagged data
 * (half of it pseudo-random, incompressible), zeros and holes; the writer writes fast
 * until a few passes have begun, so that each pass has more to send, then slowly, so that
 * the passes converge and its last writes may be held by the switchover and refused
 * after it. 1 to 4 channels and the codec (none, zlib, zstd) go by the seed. The journal
 * (crash.h, mig_journal) keeps the source's tags before and after, every write the writer
 * made, when each pass began, and where in the log the receiver stood when it promised
 * durability (its durable callback, just before each READY); check-mig.c checks the
 * crash states against that. The writer's pace, not --ops, sets how much it writes. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/graph.h"
#include "vdisk/migration.h"
#include "workload.h"
#include "tools/engine-env.h"

#define MAX_PASSES 256
#define WBLOCK 8u              /* sectors per write of the writer (4 KiB) */
#define PIECE (64u * 1024)     /* the source's contents are chosen per piece */

typedef struct mig_wl {
    wl *w;
    mig_journal *m;
    vd_engine *se;             /* the source's engine */
    vd_disk *sd;               /* the writer's handle on the source */
    vd_perm_claim *sc;
    uint64_t sectors;
    uint64_t order;            /* atomic: the counter of crash.h's "order" values */
    uint32_t pass;             /* atomic: the last pass begun */
    uint32_t fast_until;       /* the writer writes fast until this pass begins... */
    uint32_t stop_at;          /* ...then slowly, and stops once this one begins */
    int stop;                  /* atomic: the writer is asked to stop */
    int ret;                   /* the writer's failure */
    bool too_many_passes;
    pthread_mutex_t lock;      /* m->ready */
} mig_wl;

/* The source's events, on the migration's thread: MIGRATION_PASS comes after the pass's
 * dirty bits were taken and before any of its chunks is read. */
static void on_event(void *opaque, const vd_event *ev)
{
    mig_wl *s = opaque;
    if (strcmp(ev->type, "MIGRATION_PASS")) {
        return;
    }
    uint64_t order = __atomic_add_fetch(&s->order, 1, __ATOMIC_SEQ_CST);
    if (ev->mig_pass < 1 || ev->mig_pass >= MAX_PASSES) {
        s->too_many_passes = true;
        return;
    }
    s->m->pass_order[ev->mig_pass] = order;
    s->m->nb_passes = (uint32_t)ev->mig_pass;
    __atomic_store_n(&s->pass, (uint32_t)ev->mig_pass, __ATOMIC_RELEASE);
}

/* The receiver made every pass through `pass` durable and is about to say READY. */
static void on_durable(void *opaque, uint32_t pass)
{
    mig_wl *s = opaque;
    uint64_t pos = log_len(s->w);
    pthread_mutex_lock(&s->lock);
    mig_journal *m = s->m;
    m->ready = realloc(m->ready, (m->nb_ready + 1) * sizeof(*m->ready));
    if (!m->ready) {
        abort();
    }
    m->ready[m->nb_ready++] = (mig_ready){pass, pos};
    pthread_mutex_unlock(&s->lock);
}

/* The writer: 4 KiB writes of tags (half of them pseudo-random) and write zeroes on the
 * source. A write refused (the switchover committed) ends it; it never changed the
 * source, so only the writes that returned success are journalled. */
static void *writer_main(void *opaque)
{
    mig_wl *s = opaque;
    wl *w = s->w;
    uint8_t buf[WBLOCK * SECTOR];
    size_t cap = 0;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        uint32_t pass = __atomic_load_n(&s->pass, __ATOMIC_ACQUIRE);
        if (pass >= s->stop_at) {
            break;
        }
        /* Half of them in a sixteenth of the disk, so that blocks are written again and
         * again, across passes and within one. */
        uint64_t span = rng_below(&w->r, 2) ? s->sectors / 16 : s->sectors;
        uint64_t first = rng_below(&w->r, span / WBLOCK) * WBLOCK;
        bool zero = rng_below(&w->r, 100) < 15;
        uint32_t val = 0;
        int r;
        if (zero) {
            r = vd_pwrite_zeroes(s->sd, first * SECTOR, sizeof(buf), 0);
        } else {
            val = ++w->id | (rng_below(&w->r, 2) ? TAG_RANDOM : 0);
            for (uint64_t k = 0; k < WBLOCK; k++) {
                tag_fill(buf + k * SECTOR, val, first + k);
            }
            r = vd_pwrite(s->sd, buf, sizeof(buf), first * SECTOR, 0);
        }
        if (r == -EPERM || r == -EACCES) {
            break;
        }
        if (r < 0) {
            s->ret = fail("the source's writer", vd_disk_last_error(s->sd));
            break;
        }
        uint64_t done = __atomic_add_fetch(&s->order, 1, __ATOMIC_SEQ_CST);
        mig_journal *m = s->m;
        if (m->nb_writes == cap) {
            cap = cap ? 2 * cap : 256;
            m->writes = realloc(m->writes, cap * sizeof(*m->writes));
            if (!m->writes) {
                abort();
            }
        }
        m->writes[m->nb_writes++] = (mig_write){first, WBLOCK, val, done};
        if (pass < s->fast_until) {
            nanosleep(&(struct timespec){0, (long)rng_below(&w->r, 50) * 1000}, NULL);
        } else {
            nap_ms(1 + (long)rng_below(&w->r, 12));
        }
    }
    return NULL;
}

/* The source: tagged pieces (pseudo-random for half of them), pieces written as zeros,
 * and holes; 64 KiB clusters whatever the destination's. */
static int make_source(mig_wl *s, const char *path, uint64_t size)
{
    wl *w = s->w;
    vd_opts *o = vd_opts_new();
    vd_opts_set(o, "cluster_size", "65536");
    vd_error *err = NULL;
    int ret = vd_create(w->e, path, "qcow2", size, o, 0, &err);
    vd_opts_free(o);
    vd_open_opts oo = {.format = "qcow2", .flags = VD_OPEN_RDWR};
    vd_disk *d = NULL;
    if (ret < 0 || vd_open(w->e, path, &oo, &d, &err) < 0) {
        ret = fail(path, vd_error_msg(err));
        vd_error_free(err);
        return ret;
    }
    uint8_t *buf = xmalloc(PIECE);
    for (uint64_t off = 0; off < size && ret == 0; off += PIECE) {
        uint64_t x = rng_below(&w->r, 100);
        if (x < 45) {
            uint32_t id = ++w->id | (x < 22 ? TAG_RANDOM : 0);
            for (uint64_t k = 0; k < PIECE / SECTOR; k++) {
                tag_fill(buf + k * SECTOR, id, off / SECTOR + k);
            }
            ret = vd_pwrite(d, buf, PIECE, off, 0);
        } else if (x < 60) {
            ret = vd_pwrite_zeroes(d, off, PIECE, 0);
        }
    }
    free(buf);
    if (ret < 0) {
        ret = fail(path, vd_disk_last_error(d));
    }
    if (vd_close(d) < 0 && ret == 0) {
        ret = fail(path, "close failed");
    }
    return ret;
}

/* The two sides' nodes, both named disk0: the source's in its own engine with the writer's
 * claim on it, the destination through the logwrites filter. */
static int open_nodes(mig_wl *s, const char *src)
{
    wl *w = s->w;
    journal *j = w->j;
    char json[9000];
    vd_engine_settings st = vd_engine_settings_from_env();
    s->se = vd_engine_new_with(&st);
    vd_engine_set_event_handler(s->se, on_event, s);
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"disk0\", "
             "\"file\": {\"driver\": \"file\", \"filename\": \"%s\"}}", src);
    vd_tree *t = NULL;
    vd_error *err = NULL;
    if (vd_tree_parse_json(json, strlen(json), &t, &err) < 0 ||
        vd_blockdev_add(s->se, t, VD_OPEN_RDWR, &err) < 0 ||
        vd_blockdev_open(s->se, "disk0", &s->sd, &err) < 0 ||
        vd_disk_claim(s->sd, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE,
                      VD_PERM_ALL & ~VD_PERM_RESIZE, &s->sc, &err) < 0) {
        int r = fail("the source", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    snprintf(json, sizeof(json), "{\"driver\": \"qcow2\", \"node-name\": \"disk0\", "
             "\"filename\": \"logwrites:%s:%s\"}", j->log, j->image);
    return add_node(w, json);
}

/* The migration's settings by the seed and the cluster size (so that the workloads of one
 * run differ): 1 channel plain, 4 channels zstd (multifd), 1 channel zlib (the compress
 * capability), 3 channels plain (multifd). downtime-limit 0: the switchover waits for a
 * pass after which nothing is dirty, so the passes go on while the writer writes fast. */
static void send_opts(const mig_wl *s, vd_mig_send_opts *o, const vd_mig_disk_opts *disk)
{
    static const struct {
        unsigned channels;
        vd_mig_codec codec;
    } modes[] = {{1, VD_MIG_CODEC_NONE}, {4, VD_MIG_CODEC_ZSTD}, {1, VD_MIG_CODEC_ZLIB},
                 {3, VD_MIG_CODEC_NONE}};
    const workload_cfg *cfg = s->w->cfg;
    unsigned mode = (unsigned)((cfg->seed + (uint64_t)__builtin_ctz(cfg->cluster_size)) % 4);
    memset(o, 0, sizeof(*o));
    o->disks = disk;
    o->nb_disks = 1;
    vd_mig_params_init(&o->params);
    o->params.compress_type = modes[mode].codec;
    o->params.multifd_channels = (uint8_t)modes[mode].channels;
    o->params.max_bandwidth = 256u << 20;
    o->params.downtime_limit = 0;
    o->caps = (vd_mig_caps){.multifd = modes[mode].channels > 1,
                            .compress = modes[mode].channels == 1 &&
                                        modes[mode].codec != VD_MIG_CODEC_NONE,
                            .zero_blocks = true, .events = true};
}

/* Runs the migration with the writer; 0 once both sides completed. */
static int migrate(mig_wl *s, const char *sock)
{
    char uri[200];
    snprintf(uri, sizeof(uri), "unix:%s", sock);
    vd_mig_incoming_opts io = {.uri = uri, .durable = on_durable, .opaque = s};
    vd_mig_params_init(&io.params);
    vd_mig_incoming *in = NULL;
    vd_migration *mig = NULL;
    vd_error *err = NULL;
    if (vd_mig_incoming_start(s->w->e, &io, &in, &err) < 0) {
        int r = fail("migrate-incoming", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, writer_main, s) != 0) {
        vd_mig_incoming_free(in);
        return fail("migration", "could not start the writer");
    }
    nap_ms(5);
    static const vd_mig_disk_opts disk = {"disk0", NULL, 0};
    vd_mig_send_opts so;
    send_opts(s, &so, &disk);
    so.uri = uri;
    int ret = 0;
    if (vd_migration_start(s->se, &so, &mig, &err) < 0) {
        ret = fail("migrate", vd_error_msg(err));
        vd_error_free(err);
    }
    for (int k = 0; mig && !vd_migration_finished(mig); k++) {
        if (k == 120000) {
            vd_migration_cancel(mig);
        }
        nap_ms(1);
    }
    vd_mig_info oi = {0}, ii = {0};
    if (mig) {
        vd_migration_info(mig, &oi);
        if (oi.status != VD_MIG_STATUS_COMPLETED) {
            ret = fail("migration", oi.error[0] ? oi.error : vd_mig_status_name(oi.status));
        }
    }
    for (int k = 0; ret == 0 && !vd_mig_incoming_finished(in) && k < 60000; k++) {
        nap_ms(1);
    }
    vd_mig_incoming_info(in, &ii);
    if (ret == 0 && ii.status != VD_MIG_STATUS_COMPLETED) {
        ret = fail("incoming migration", ii.error[0] ? ii.error
                                                     : vd_mig_status_name(ii.status));
    }
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    vd_migration_free(mig);
    vd_mig_incoming_free(in);
    return ret < 0 ? ret : s->ret;
}

/* After the migration: passes enough, a READY of the last pass, and the destination reads
 * what the source ended with. */
static int verify(mig_wl *s)
{
    wl *w = s->w;
    mig_journal *m = s->m;
    char msg[200];
    if (s->too_many_passes || m->nb_passes < 3) {
        snprintf(msg, sizeof(msg), "%u passes (at least 3 and below %u were wanted)",
                 m->nb_passes, MAX_PASSES);
        return fail("migration", msg);
    }
    m->final_pos = UINT64_MAX;
    for (size_t i = 0; i < m->nb_ready && m->final_pos == UINT64_MAX; i++) {
        if (m->ready[i].pass == m->nb_passes) {
            m->final_pos = m->ready[i].pos;
        }
    }
    if (m->final_pos == UINT64_MAX) {
        return fail("migration", "no READY of the last pass");
    }
    if (read_tags(s->sd, 0, s->sectors, m->final) < 0) {
        return fail("the source at the end", vd_disk_last_error(s->sd));
    }
    vd_error *err = NULL;
    if (vd_blockdev_open(w->e, "disk0", &w->d, &err) < 0) {
        int r = fail("the destination", vd_error_msg(err));
        vd_error_free(err);
        return r;
    }
    uint32_t *got = xmalloc(s->sectors * sizeof(uint32_t));
    int ret = read_tags(w->d, 0, s->sectors, got) < 0 ? fail("the destination", "read") : 0;
    for (uint64_t k = 0; k < s->sectors && ret == 0; k++) {
        if (got[k] != m->final[k]) {
            snprintf(msg, sizeof(msg), "the destination's sector %llu reads tag %u, the "
                     "source's %u", (unsigned long long)k, got[k], m->final[k]);
            ret = fail("migration", msg);
        }
    }
    free(got);
    return ret;
}

int run_migration(wl *w, uint64_t size)
{
    journal *j = w->j;
    const char *dir = w->cfg->dir;
    mig_wl s = {.w = w, .sectors = size / SECTOR, .fast_until = 3 + (uint32_t)(w->cfg->seed % 2)};
    s.stop_at = s.fast_until + 4;
    pthread_mutex_init(&s.lock, NULL);
    mig_journal *m = calloc(1, sizeof(*m));
    j->mig = s.m = m;
    m->src0 = xmalloc(s.sectors * sizeof(uint32_t));
    m->final = xmalloc(s.sectors * sizeof(uint32_t));
    m->pass_order = calloc(MAX_PASSES, sizeof(uint64_t));
    j->size0 = w->size = size;
    j->vals0 = calloc(s.sectors, sizeof(uint32_t));   /* a new destination reads zeros */
    char src[4200], sockdir[] = "/tmp/vdisk-crash-mig.XXXXXX", sock[64];
    snprintf(src, sizeof(src), "%s/source.qcow2", dir);
    snprintf(j->image, sizeof(j->image), "%s/dest.qcow2", dir);
    /* sun_path is short: the socket lives in a directory of its own under /tmp. */
    if (!mkdtemp(sockdir)) {
        return fail(sockdir, strerror(errno));
    }
    snprintf(sock, sizeof(sock), "%s/s", sockdir);
    int ret = make_source(&s, src, size) < 0 || create_image(w, j->image, size, NULL, false) < 0 ||
              load_file(j->image, &j->base, &j->base_size) < 0 || open_nodes(&s, src) < 0
              ? -1 : 0;
    if (ret == 0 && read_tags(s.sd, 0, s.sectors, m->src0) < 0) {
        ret = fail("the source", vd_disk_last_error(s.sd));
    }
    if (ret == 0) {
        ret = migrate(&s, sock);
    }
    if (ret == 0) {
        ret = verify(&s);
    }
    if (ret == 0) {
        printf("migration: %u passes, %zu READYs, %zu writes of the source's writer\n",
               m->nb_passes, m->nb_ready, m->nb_writes);
    }
    unlink(sock);
    rmdir(sockdir);
    if (s.sd) {
        if (s.sc) {
            vd_disk_unclaim(s.sd, s.sc);
        }
        vd_close(s.sd);
    }
    vd_engine_free(s.se);
    pthread_mutex_destroy(&s.lock);
    if (ret == 0) {
        ret = close_all(w, NULL);
    }
    return ret;
}
