/* crash-test: records one workload through the logwrites filter, then replays crash states
 * from its log and checks each one (see crash.h). Prints
 *   crash states: N, corruptions: C, leaks: L, lost flushed writes: W
 * and exits 0 when C and W are 0 (with --expect-failure: when either is not).
 *
 *   crash-test --dir DIR [--kind alloc|snap|compress|resize|cow|mixed|amend|bitmaps|mirror] [--cluster-size N]
 *              [--lazy] [--seed S] [--ops N] [--states N] [--qemu-img PATH|none]
 *              [--keep DIR] [--expect-failure] [--ignore-flushes] [--state-dir DIR]
 * --ignore-flushes replays as if no flush had completed: a broken replayer, to show that
 * the checker then reports lost flushed writes. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    fprintf(stderr, "usage: crash-test --dir DIR [--kind alloc|snap|compress|resize|cow|mixed|amend|bitmaps|mirror] "
            "[--cluster-size N] [--lazy] [--seed S] [--ops N] [--states N] "
            "[--qemu-img PATH|none] [--qemu-io PATH|none] [--keep DIR] [--expect-failure] "
            "[--ignore-flushes] [--state-dir DIR]\n");
    exit(2);
}

enum { V_PREFIX, V_SUBSET, V_TORN };
static const char *const variant_names[] = {"prefix", "subset", "torn"};

/* Builds and checks one state at crash point p: the durable file m plus a choice among the
 * unflushed records u[0..nu). choose() only asks for a subset when nu >= 2 and for a torn
 * write when one of them spans sectors. */
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
    bool ok = state_write(R->state, m, pick, n, torn, mask) == 0;
    if (!ok) {
        R->t.corruptions++;
        R->t.states++;
    } else {
        check_ctx c = {.j = &R->j, .state_path = R->state, .qemu_img = R->qemu_img,
                       .qemu_io = R->qemu_io, .crash_pos = crash_pos, .what = what,
                       .write_id = R->j.next_id};
        ok = check_state(&c, &R->t);
    }
    /* The checks changed the file (repair, a write): a failing state is rebuilt to keep. */
    if (!ok && R->keep && R->kept < KEEP_FAILURES) {
        char dst[4200];
        snprintf(dst, sizeof(dst), "%s/%s-%zu-%s.qcow2", R->keep, R->cfg.kind, p,
                 variant_names[variant]);
        if (state_write(dst, m, pick, n, torn, mask) == 0) {
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

/* The records made durable by the last flush before point p (0: none). */
static size_t barrier_at(const run *R, size_t p)
{
    for (size_t i = p; !R->no_barriers && i-- > 0;) {
        if (R->l.recs[i].type == VD_LOGW_FLUSH) {
            return (size_t)R->l.recs[i].aux;
        }
    }
    return 0;
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
    size_t unflushed = 0, multi = 0, barrier = 0;
    for (size_t p = 0; p <= nrec; p++) {
        size_t b = barrier_at(R, p);
        if (b != barrier) {
            barrier = b;
            unflushed = multi = 0;
            for (size_t i = b; i + 1 < p; i++) {
                const logrec *r = &R->l.recs[i];
                unflushed += r->type != VD_LOGW_FLUSH;
                multi += r->type == VD_LOGW_WRITE && r->len > SECTOR;
            }
        }
        if (p > barrier) {
            const logrec *r = &R->l.recs[p - 1];
            unflushed += r->type != VD_LOGW_FLUSH;
            multi += r->type == VD_LOGW_WRITE && r->len > SECTOR;
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
    qsort(c, n, sizeof(*c), cmp_cand);
    *count = n;
    return c;
}

static void replay(run *R)
{
    size_t n;
    cand *c = choose(R, &n);
    memfile m;
    memfile_init(&m, R->j.base, R->j.base_size);
    size_t durable = 0;       /* records [0, durable) are in m */
    const logrec **u = malloc((R->l.nb + 1) * sizeof(*u));
    for (size_t k = 0; k < n; k++) {
        size_t p = c[k].p, barrier = barrier_at(R, p);
        for (; durable < barrier; durable++) {
            memfile_apply(&m, &R->l.recs[durable]);
        }
        size_t nu = 0;
        for (size_t i = barrier; i < p; i++) {
            if (R->l.recs[i].type != VD_LOGW_FLUSH) {
                u[nu++] = &R->l.recs[i];
            }
        }
        one_state(R, &m, u, nu, p, c[k].variant);
    }
    free(u);
    free(c);
    memfile_free(&m);
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
        default: usage();
        }
    }
    static const char *const kinds[] = {"alloc", "snap", "compress", "resize", "cow", "mixed",
                                        "amend", "bitmaps", "mirror"};
    bool kind_ok = false;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        kind_ok |= !strcmp(R.cfg.kind, kinds[i]);
    }
    if (!R.cfg.dir || optind != argc || !kind_ok || R.cfg.ops < 1 || R.budget < 1 ||
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
    replay(&R);
    char side[4300];
    unlink(R.state);
    snprintf(side, sizeof(side), "%s.qemu-img", R.state);
    unlink(side);
    snprintf(side, sizeof(side), "%s.qemu-io", R.state);
    unlink(side);
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
