/* crash-test: records one workload through the logwrites filter, then replays crash states
 * from its log and checks each one (see crash.h). Prints
 *   crash states: N, corruptions: C, leaks: L, lost flushed writes: W
 * and exits 0 when C and W are 0 (with --expect-failure: when either is not).
 *
 *   crash-test --dir DIR [--kind alloc|snap|compress|resize|cow|mixed|amend|bitmaps|mirror|
 *                                backup|commit|replication|migration] [--cluster-size N]
 *              [--lazy] [--seed S] [--ops N] [--states N] [--qemu-img PATH|none]
 *              [--keep DIR] [--expect-failure] [--ignore-flushes] [--state-dir DIR]
 *              [--backup-mode full|bitmap|full-compress|bitmap-compress]
 * --ignore-flushes replays as if no flush had completed: a broken replayer, to show that
 * the checker then reports lost flushed writes. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/logwrites.h"
#include "crash.h"

typedef struct run {
    workload_cfg cfg;
    long budget;
    bool no_barriers;         /* --ignore-flushes: a replayer that forgets what flushes made
                               * durable, to show that the checker then finds lost writes */
    const char *qemu_img, *qemu_io, *keep;
    journal j;
    wlog l;
    check_totals t;
    rng r;
    char state[4200];
    int kept;                 /* failing states kept */
} run;

#define KEEP_FAILURES 5

static void usage(void)
{
    fprintf(stderr, "usage: crash-test --dir DIR [--kind alloc|snap|compress|resize|cow|mixed|"
            "amend|bitmaps|mirror|backup|commit|replication|migration] "
            "[--cluster-size N] [--lazy] [--seed S] [--ops N] [--states N] "
            "[--qemu-img PATH|none] [--qemu-io PATH|none] [--keep DIR] [--expect-failure] "
            "[--ignore-flushes] [--state-dir DIR] "
            "[--backup-mode full|bitmap|full-compress|bitmap-compress]\n");
    exit(2);
}

enum { V_PREFIX, V_SUBSET, V_TORN };
static const char *const variant_names[] = {"prefix", "subset", "torn"};

/* Writes the state's files: file f is the durable m[f] plus its records among the chosen
 * ones (pick[0..n), pick[torn] torn by mask). */
static int write_states(run *R, const memfile *m, const logrec **pick, size_t n, long torn,
                        const uint8_t *mask, const char *dir)
{
    if (R->j.nb_files == 0) {
        return state_write(dir, m, pick, n, torn, mask);
    }
    const logrec **sub = malloc((n ? n : 1) * sizeof(*sub));
    int ret = 0;
    for (uint32_t f = 0; ret == 0 && f < R->j.nb_files; f++) {
        size_t ns = 0;
        long st = -1;
        for (size_t i = 0; i < n; i++) {
            if (pick[i]->file == f) {
                st = (long)i == torn ? (long)ns : st;
                sub[ns++] = pick[i];
            }
        }
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", dir, R->j.files[f].name);
        ret = state_write(path, &m[f], sub, ns, st, mask);
    }
    free(sub);
    return ret;
}

/* Builds and checks one state at crash point p: the durable files m plus a choice among
 * the unflushed records u[0..nu). choose() only asks for a subset when nu >= 2 and for a
 * torn write when one of them spans sectors. */
static void one_state(run *R, const memfile *m, const logrec **u, size_t nu, size_t p,
                      int variant)
{
    const logrec **pick = malloc((nu ? nu : 1) * sizeof(*pick));
    size_t n = 0;
    long torn = -1;
    uint8_t *mask = NULL;
    if (variant == V_SUBSET) {
        for (size_t i = 0; i < nu; i++) {
            if (rng_below(&R->r, 2)) {
                pick[n++] = u[i];
            }
        }
    } else if (variant == V_TORN) {
        /* The last multi-sector write, or (half of the time) a random one, torn. */
        size_t nc = 0;
        long last = -1, chosen = -1;
        for (size_t i = 0; i < nu; i++) {
            if (u[i]->type == VD_LOGW_WRITE && u[i]->len > SECTOR) {
                last = (long)i;
                if (rng_below(&R->r, ++nc) == 0) {
                    chosen = (long)i;   /* a uniform pick among them (reservoir) */
                }
            }
        }
        torn = rng_below(&R->r, 2) ? chosen : last;
        n = (size_t)(torn + 1);
        memcpy(pick, u, n * sizeof(*pick));
        uint64_t ns = (u[torn]->len + SECTOR - 1) / SECTOR;
        mask = malloc(ns);
        for (uint64_t s = 0; s < ns; s++) {
            mask[s] = (uint8_t)rng_below(&R->r, 2);
        }
        mask[rng_below(&R->r, ns)] = 0;
    } else {
        memcpy(pick, u, nu * sizeof(*pick));
        n = nu;
    }
    char what[512];
    uint64_t crash_pos = p < R->l.nb ? R->l.recs[p].pos : R->l.buf_len;
    snprintf(what, sizeof(what), "kind=%s cluster_size=%u lazy=%d seed=%" PRIu64 " ops=%d: "
             "crash after record %zu of %zu, %s state (%zu of %zu unflushed records kept)",
             R->cfg.kind, R->cfg.cluster_size, R->cfg.lazy, R->cfg.seed, R->cfg.ops, p,
             R->l.nb, variant_names[variant], n, nu);
    bool ok = write_states(R, m, pick, n, torn, mask, R->state) == 0;
    if (!ok) {
        R->t.corruptions++;
        R->t.states++;
    } else {
        check_ctx c = {.j = &R->j, .state_path = R->state, .qemu_img = R->qemu_img,
                       .qemu_io = R->qemu_io, .crash_pos = crash_pos, .what = what,
                       .write_id = R->j.next_id};
        ok = R->j.mig        ? check_migration(&c, &R->t)
             : R->j.nb_files ? check_job_state(&c, R->state, &R->t)
                             : check_state(&c, &R->t);
    }
    /* The checks changed the files (repair, a write, a job): a failing state is rebuilt to
     * keep. */
    if (!ok && R->keep && R->kept < KEEP_FAILURES) {
        char dst[4200];
        snprintf(dst, sizeof(dst), "%s/%s-%zu-%s%s", R->keep, R->cfg.kind, p,
                 variant_names[variant], R->j.nb_files ? "" : ".qcow2");
        if (R->j.nb_files && mkdir(dst, 0755) < 0 && errno != EEXIST) {
            fprintf(stderr, "crash-test: %s: %s\n", dst, strerror(errno));
        } else if (write_states(R, m, pick, n, torn, mask, dst) == 0) {
            fprintf(stderr, "crash-test:   the crash state is kept as %s\n", dst);
        }
        R->kept++;
    }
    free(pick);
    free(mask);
}

/* A state to build: crash point p, and which variant of its unflushed records. */
typedef struct cand {
    size_t p;
    int variant;
} cand;

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p ? 1 : x->variant - y->variant;
}

/* Per file, how many of its first records the last flush before each point made durable,
 * and running counts by a file's record number, to count unflushed records quickly. */
typedef struct barriers {
    uint64_t durable[CRASH_MAX_FILES];    /* at the point being looked at */
    uint64_t seen[CRASH_MAX_FILES];       /* records of each file before it */
    uint64_t *nonflush[CRASH_MAX_FILES];  /* [k]: non-flush records among the first k */
    uint64_t *multi[CRASH_MAX_FILES];     /* [k]: multi-sector writes among the first k */
} barriers;

static void barriers_init(const run *R, barriers *b)
{
    memset(b, 0, sizeof(*b));
    for (uint32_t f = 0; f < R->l.nb_files; f++) {
        b->nonflush[f] = calloc(R->l.per_file[f] + 1, sizeof(uint64_t));
        b->multi[f] = calloc(R->l.per_file[f] + 1, sizeof(uint64_t));
        if (!b->nonflush[f] || !b->multi[f]) {
            abort();
        }
    }
    for (size_t i = 0; i < R->l.nb; i++) {
        const logrec *r = &R->l.recs[i];
        b->nonflush[r->file][r->idx + 1] = b->nonflush[r->file][r->idx] +
                                           (r->type != VD_LOGW_FLUSH);
        b->multi[r->file][r->idx + 1] = b->multi[r->file][r->idx] +
                                        (r->type == VD_LOGW_WRITE && r->len > SECTOR);
    }
}

static void barriers_free(const run *R, barriers *b)
{
    for (uint32_t f = 0; f < R->l.nb_files; f++) {
        free(b->nonflush[f]);
        free(b->multi[f]);
    }
}

/* Moves the point from p to p+1: record p happened. */
static void barriers_step(const run *R, barriers *b, size_t p)
{
    const logrec *r = &R->l.recs[p];
    b->seen[r->file]++;
    if (r->type == VD_LOGW_FLUSH && !R->no_barriers) {
        b->durable[r->file] = r->aux;
    }
}

/* Whether record r is durable at the point b describes. */
static bool is_durable(const barriers *b, const logrec *r)
{
    return r->idx < b->durable[r->file];
}

/* Chooses up to budget states: every crash point's prefix state, a random subset of its
 * unflushed records when it has two or more, a torn write when one spans sectors; sampled
 * evenly when there are more than the budget, topped up with more random subsets when
 * there are fewer. */
static cand *choose(run *R, size_t *count)
{
    size_t nrec = R->l.nb, n = 0, cap = 3 * (nrec + 1) + (size_t)R->budget;
    cand *c = malloc(cap * sizeof(*c));
    size_t *subset_points = malloc((nrec + 1) * sizeof(*subset_points)), nsp = 0;
    barriers b;
    barriers_init(R, &b);
    for (size_t p = 0; p <= nrec; p++) {
        if (p > 0) {
            barriers_step(R, &b, p - 1);
        }
        uint64_t unflushed = 0, multi = 0;
        for (uint32_t f = 0; f < R->l.nb_files; f++) {
            uint64_t d = b.durable[f] < b.seen[f] ? b.durable[f] : b.seen[f];
            unflushed += b.nonflush[f][b.seen[f]] - b.nonflush[f][d];
            multi += b.multi[f][b.seen[f]] - b.multi[f][d];
        }
        c[n++] = (cand){p, V_PREFIX};
        if (unflushed >= 2) {
            c[n++] = (cand){p, V_SUBSET};
            subset_points[nsp++] = p;
        }
        if (multi) {
            c[n++] = (cand){p, V_TORN};
        }
    }
    barriers_free(R, &b);
    if (n > (size_t)R->budget) {
        /* Partial Fisher-Yates: a uniform sample of budget candidates. */
        for (size_t i = 0; i < (size_t)R->budget; i++) {
            size_t k = i + (size_t)rng_below(&R->r, n - i);
            cand t = c[i];
            c[i] = c[k];
            c[k] = t;
        }
        n = (size_t)R->budget;
    }
    while (n < (size_t)R->budget && nsp) {
        c[n++] = (cand){subset_points[rng_below(&R->r, nsp)], V_SUBSET};
    }
    free(subset_points);
    /* A migration's promises begin at its READYs: the first point at or after each one,
     * and the end, are always among the states. */
    if (R->j.mig) {
        const mig_journal *m = R->j.mig;
        c = realloc(c, (n + m->nb_ready + 1) * sizeof(*c));
        if (!c) {
            abort();
        }
        for (size_t i = 0; i < m->nb_ready; i++) {
            size_t p = 0;
            while (p < nrec && R->l.recs[p].pos < m->ready[i].pos) {
                p++;
            }
            c[n++] = (cand){p, V_PREFIX};
        }
        c[n++] = (cand){nrec, V_PREFIX};
    }
    qsort(c, n, sizeof(*c), cmp_cand);
    /* The same prefix state twice would be checked twice. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (kept && c[i].variant == V_PREFIX && !cmp_cand(&c[i], &c[kept - 1])) {
            continue;
        }
        c[kept++] = c[i];
    }
    *count = kept;
    return c;
}

static void replay(run *R)
{
    size_t n;
    cand *c = choose(R, &n);
    uint32_t nf = R->j.nb_files ? R->j.nb_files : 1;
    memfile m[CRASH_MAX_FILES];
    for (uint32_t f = 0; f < nf; f++) {
        if (R->j.nb_files) {
            memfile_init(&m[f], R->j.files[f].base, R->j.files[f].base_size);
        } else {
            memfile_init(&m[f], R->j.base, R->j.base_size);
        }
    }
    /* Durable records go into their file's m as the points advance; a file's records are
     * durable in order, so a cursor per file says how far. */
    size_t applied[CRASH_MAX_FILES] = {0};   /* of each file, by record number */
    size_t cursor[CRASH_MAX_FILES] = {0};    /* log index to look from, per file */
    barriers b;
    barriers_init(R, &b);
    size_t at = 0;                           /* b describes point `at` */
    const logrec **u = malloc((R->l.nb + 1) * sizeof(*u));
    for (size_t k = 0; k < n; k++) {
        size_t p = c[k].p;
        for (; at < p; at++) {
            barriers_step(R, &b, at);
        }
        for (uint32_t f = 0; f < nf; f++) {
            for (; applied[f] < b.durable[f] && cursor[f] < R->l.nb; cursor[f]++) {
                const logrec *r = &R->l.recs[cursor[f]];
                if (r->file == f) {
                    memfile_apply(&m[f], r);
                    applied[f]++;
                }
            }
        }
        size_t nu = 0;
        for (size_t i = 0; i < p; i++) {
            const logrec *r = &R->l.recs[i];
            if (r->type != VD_LOGW_FLUSH && !is_durable(&b, r)) {
                u[nu++] = r;
            }
        }
        one_state(R, m, u, nu, p, c[k].variant);
    }
    barriers_free(R, &b);
    free(u);
    free(c);
    for (uint32_t f = 0; f < nf; f++) {
        memfile_free(&m[f]);
    }
}

int main(int argc, char **argv)
{
    run R = {.cfg = {.kind = "alloc", .cluster_size = 65536, .seed = 1, .ops = 120},
             .budget = 300, .qemu_img = "qemu-img", .qemu_io = "qemu-io"};
    bool expect_failure = false;
    const char *state_dir = NULL;
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},        {"kind", required_argument, NULL, 'k'},
        {"cluster-size", required_argument, NULL, 'c'}, {"lazy", no_argument, NULL, 'l'},
        {"seed", required_argument, NULL, 's'},       {"ops", required_argument, NULL, 'o'},
        {"states", required_argument, NULL, 'n'},     {"qemu-img", required_argument, NULL, 'q'},
        {"qemu-io", required_argument, NULL, 'Q'},
        {"keep", required_argument, NULL, 'K'},  {"expect-failure", no_argument, NULL, 'x'},
        {"ignore-flushes", no_argument, NULL, 'F'},
        {"state-dir", required_argument, NULL, 'S'},
        {"backup-mode", required_argument, NULL, 'B'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'd': R.cfg.dir = optarg; break;
        case 'k': R.cfg.kind = optarg; break;
        case 'c': R.cfg.cluster_size = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'l': R.cfg.lazy = true; break;
        case 's': R.cfg.seed = strtoull(optarg, NULL, 0); break;
        case 'o': R.cfg.ops = atoi(optarg); break;
        case 'n': R.budget = atol(optarg); break;
        case 'q': R.qemu_img = strcmp(optarg, "none") ? optarg : NULL; break;
        case 'Q': R.qemu_io = strcmp(optarg, "none") ? optarg : NULL; break;
        case 'K': R.keep = optarg; break;
        case 'x': expect_failure = true; break;
        case 'F': R.no_barriers = true; break;
        case 'S': state_dir = optarg; break;
        case 'B': R.cfg.backup_mode = optarg; break;
        default: usage();
        }
    }
    static const char *const kinds[] = {"alloc", "snap", "compress", "resize", "cow", "mixed",
                                        "amend", "bitmaps", "mirror", "backup", "commit",
                                        "replication", "migration"};
    bool kind_ok = false;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        kind_ok |= !strcmp(R.cfg.kind, kinds[i]);
    }
    if (!R.cfg.dir || optind != argc || !kind_ok || R.cfg.ops < 1 || R.budget < 1 ||
        (R.cfg.backup_mode && strcmp(R.cfg.backup_mode, "full") &&
         strcmp(R.cfg.backup_mode, "bitmap") && strcmp(R.cfg.backup_mode, "full-compress") &&
         strcmp(R.cfg.backup_mode, "bitmap-compress")) ||
        R.cfg.cluster_size < 512 || R.cfg.cluster_size > (2u << 20) ||
        (R.cfg.cluster_size & (R.cfg.cluster_size - 1))) {
        usage();
    }
    R.r.s = R.cfg.seed ^ 0x5eed;
    snprintf(R.state, sizeof(R.state), "%s/state-%d.qcow2", state_dir ? state_dir : R.cfg.dir,
             (int)getpid());
    if (workload_run(&R.cfg, &R.j) < 0 || wlog_load(R.j.log, &R.l) < 0) {
        fprintf(stderr, "crash-test: kind=%s cluster_size=%u lazy=%d seed=%" PRIu64
                ": the workload failed\n", R.cfg.kind, R.cfg.cluster_size, R.cfg.lazy,
                R.cfg.seed);
        return 1;
    }
    if (R.j.nb_files) {
        /* A job kind's state is a directory of its files, named as the workload named
         * them, so that the backing file names they store resolve there. */
        snprintf(R.state, sizeof(R.state), "%s/state-%d", state_dir ? state_dir : R.cfg.dir,
                 (int)getpid());
        if (mkdir(R.state, 0755) < 0 && errno != EEXIST) {
            fprintf(stderr, "crash-test: %s: %s\n", R.state, strerror(errno));
            return 1;
        }
    }
    replay(&R);
    char side[4400];
    for (uint32_t f = 0; f < (R.j.nb_files ? R.j.nb_files : 1); f++) {
        char path[4300];
        if (R.j.nb_files) {
            snprintf(path, sizeof(path), "%s/%s", R.state, R.j.files[f].name);
        } else {
            snprintf(path, sizeof(path), "%s", R.state);
        }
        unlink(path);
        snprintf(side, sizeof(side), "%s.qemu-img", path);
        unlink(side);
        snprintf(side, sizeof(side), "%s.qemu-io", path);
        unlink(side);
    }
    if (R.j.nb_files) {
        rmdir(R.state);
    }
    printf("crash states: %" PRIu64 ", corruptions: %" PRIu64 ", leaks: %" PRIu64
           ", lost flushed writes: %" PRIu64 "\n", R.t.states, R.t.corruptions, R.t.leaks,
           R.t.lost);
    printf("dirty states repaired on open: %" PRIu64 " (by QEMU: %" PRIu64 ")\n", R.t.dirty,
           R.t.dirty_qemu);
    bool bad = R.t.corruptions || R.t.lost;
    journal_free(&R.j);
    wlog_free(&R.l);
    return expect_failure ? !bad : bad;
}
