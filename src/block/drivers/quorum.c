/* QEMU's quorum driver: one node over a list of children ("children.0", "children.1", ...)
 * that hold the same data. Writes go to every child and succeed when vote-threshold of them
 * do; reads take the first child that answers (read-pattern=fifo) or read every child and
 * vote on the data (read-pattern=quorum). Children that fail or lose the vote are reported
 * with QUORUM_REPORT_BAD, a request that cannot reach the threshold with QUORUM_FAILURE.
 * Children may be added and removed while requests run (x-blockdev-change). */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "block/engine.h"
#include "vdisk/graph.h"

#define SECTOR 512u
/* The most one request reads from every child at once (a copy per child): more than an
 * NBD client ever asks for, so events name the client's whole request. */
#define QUORUM_MAX_TRANSFER (64u << 20)

typedef struct quorum_state {
    /* Requests hold it shared while they use the node's list of children; add_child and
     * del_child hold it exclusively, so a change waits for the requests in flight.
     * Writer-preferring, so that a stream of requests cannot starve a change. */
    pthread_rwlock_t lock;
    int threshold;
    bool blkverify, rewrite, fifo;
    unsigned next_index;      /* N of the next "children.N": QEMU's rule, see del_child */
} quorum_state;

static const char *const quorum_runtime_opts[] = {
    "blkverify", "children", "read-pattern", "rewrite-corrupted", "vote-threshold", NULL,
};

/* ---- events ------------------------------------------------------------------------------ */

static void set_sectors(vd_event *ev, uint64_t off, uint64_t len)
{
    uint64_t start = off / SECTOR;
    uint64_t end = (off + len + SECTOR - 1) / SECTOR;
    ev->sector_num = (int64_t)start;
    ev->sectors_count = (int64_t)(end - start);
}

static const char *name_of(const vd_node *n)
{
    return n->node_name ? n->node_name : "";
}

/* QUORUM_REPORT_BAD for child: op is "read", "write" or "flush"; err < 0 is the child's
 * error, 0 means its data lost the vote. */
static void report_bad(vd_node *n, const char *op, vd_node *child, uint64_t off, uint64_t len,
                       int err)
{
    vd_event ev = {.type = "QUORUM_REPORT_BAD", .offset = -1, .size = -1, .operation = op,
                   .node_name = name_of(child), .error = err < 0 ? strerror(-err) : NULL};
    set_sectors(&ev, off, len);
    vd_engine_emit(n->engine, &ev);
}

static void report_failure(vd_node *n, uint64_t off, uint64_t len)
{
    vd_event ev = {.type = "QUORUM_FAILURE", .offset = -1, .size = -1,
                   .node_name = name_of(n)};
    set_sectors(&ev, off, len);
    vd_engine_emit(n->engine, &ev);
}

/* ---- one request on every child ---------------------------------------------------------- */

typedef enum { OP_READ, OP_WRITE, OP_ZEROES, OP_FLUSH } child_op;

typedef struct child_io {
    vd_node *node;
    uint8_t *buf;            /* a read's own copy */
    int ret;
    size_t group;            /* a read: the first child whose data equals this one's */
} child_io;

typedef struct fanout {
    child_op op;
    const void *wbuf;
    uint64_t off, len;
    unsigned flags;
    child_io *io;
} fanout;

static void fanout_one(void *arg, size_t i)
{
    fanout *f = arg;
    child_io *c = &f->io[i];
    switch (f->op) {
    case OP_READ:
        c->ret = vd_node_pread(c->node, c->buf, f->len, f->off);
        break;
    case OP_WRITE:
        c->ret = vd_node_pwrite(c->node, f->wbuf, f->len, f->off, f->flags);
        break;
    case OP_ZEROES:
        c->ret = vd_node_pwrite_zeroes(c->node, f->off, f->len, f->flags);
        break;
    case OP_FLUSH:
        c->ret = vd_node_flush(c->node);
        break;
    }
}

/* The request on every child, side by side on the engine's pool; the list of children is
 * the one the caller's shared lock holds still. */
static child_io *fanout_run(vd_node *n, fanout *f)
{
    size_t nb = n->nb_children;
    f->io = calloc(nb, sizeof(*f->io));
    if (!f->io) {
        abort();
    }
    for (size_t i = 0; i < nb; i++) {
        f->io[i].node = n->children[i].node;
        if (f->op == OP_READ && !(f->io[i].buf = malloc(f->len))) {
            abort();
        }
    }
    vd_pool_run(vd_engine_pool(n->engine), nb, fanout_one, f);
    return f->io;
}

static void fanout_free(fanout *f, size_t nb)
{
    for (size_t i = 0; i < nb; i++) {
        free(f->io[i].buf);
    }
    free(f->io);
}

/* The error most children gave. Ties go as QEMU's vote lets them: to the value whose
 * first occurrence comes last (its versions list is newest first and a later one must
 * have strictly more votes to win). */
static int error_vote(const child_io *io, size_t nb)
{
    int best = 0;
    size_t best_count = 0;
    for (size_t i = 0; i < nb; i++) {
        if (io[i].ret == 0) {
            continue;
        }
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++) {
            seen = io[j].ret == io[i].ret;
        }
        size_t count = 0;
        for (size_t j = i; j < nb && !seen; j++) {
            count += io[j].ret == io[i].ret;
        }
        if (!seen && count >= best_count) {
            best = io[i].ret;
            best_count = count;
        }
    }
    return best;
}

/* ---- open and close ---------------------------------------------------------------------- */

/* The children as a list: given as one, or as an object keyed 0, 1, ... (flattened
 * options); NULL and -EINVAL for anything else. count 0: none given. */
static int children_list(vd_tree *t, vd_tree **out, vd_error **errp)
{
    *out = NULL;
    if (!t || vd_tree_type_of(t) == VD_TREE_LIST) {
        *out = t;
        return 0;
    }
    if (vd_tree_type_of(t) != VD_TREE_OBJECT) {
        vd_tree_free(t);
        return 0;   /* QEMU counts no children.N entries in a scalar */
    }
    vd_tree *list = vd_tree_new(VD_TREE_LIST);
    for (size_t i = 0; i < vd_tree_size(t); i++) {
        char key[24];
        snprintf(key, sizeof(key), "%zu", i);
        vd_tree *item = vd_tree_get(t, key);
        if (!item) {
            vd_tree_free(list);
            vd_tree_free(t);
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Option children is not a "
                                "valid array");
        }
        vd_tree_append(list, vd_tree_clone(item));
    }
    vd_tree_free(t);
    *out = list;
    return 0;
}

/* vote-threshold as QEMU's options take a number: an integer, or a string of one. */
static int threshold_opt(const vd_tree *opts, int64_t *out, vd_error **errp)
{
    const vd_tree *v = vd_tree_get(opts, "vote-threshold");
    *out = 0;
    if (!v) {
        return 0;
    }
    if (vd_tree_type_of(v) == VD_TREE_INT) {
        *out = vd_tree_int(v);
        return 0;
    }
    const char *s = vd_tree_string(v);
    char *end = NULL;
    errno = 0;
    long long x = s ? strtoll(s, &end, 0) : 0;
    if (!s || !*s || *end || errno) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'vote-threshold' "
                            "expects a number");
    }
    *out = x;
    return 0;
}

/* The options, checked in QEMU's order and words (its quorum_open). */
static int parse_options(vd_node *n, size_t count, quorum_state *s, vd_error **errp)
{
    int64_t threshold;
    const char *pattern = NULL;
    bool blkverify, rewrite;
    int ret;
    if ((ret = threshold_opt(n->options, &threshold, errp)) < 0 ||
        (ret = vd_tree_get_bool(n->options, "blkverify", NULL, false, &blkverify, errp)) < 0 ||
        (ret = vd_tree_get_bool(n->options, "rewrite-corrupted", NULL, false, &rewrite,
                                errp)) < 0 ||
        (ret = vd_tree_get_str(n->options, "read-pattern", NULL, &pattern, errp)) < 0) {
        return ret;
    }
    if (threshold < 1) {
        return vd_error_set(errp, VD_ERR_INVALID, ERANGE, "Parameter 'vote-threshold' "
                            "expects a value >= 1");
    }
    if ((uint64_t)threshold > count) {
        return vd_error_set(errp, VD_ERR_INVALID, ERANGE, "threshold may not exceed children "
                            "count");
    }
    if (pattern && strcmp(pattern, "quorum") && strcmp(pattern, "fifo")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Please set read-pattern as fifo or "
                            "quorum");
    }
    s->threshold = (int)threshold;
    s->fifo = pattern && !strcmp(pattern, "fifo");
    /* QEMU reads both flags only for the voting pattern; fifo ignores them. */
    if (!s->fifo) {
        if (blkverify && (count != 2 || threshold != 2)) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "blkverify=on can only be set "
                                "if there are exactly two files and vote-threshold is 2");
        }
        if (rewrite && blkverify) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "rewrite-corrupted=on cannot "
                                "be used with blkverify=on");
        }
        s->blkverify = blkverify;
        s->rewrite = rewrite;
    }
    return 0;
}

static void close_children(vd_node *n)
{
    for (size_t i = 0; i < n->nb_children; i++) {
        vd_node_close(n->children[i].node);
        free(n->children[i].role);
    }
    free(n->children);
    n->children = NULL;
    n->nb_children = 0;
}

static int quorum_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    vd_tree *list = NULL;
    int ret = children_list(vd_tree_take(n->options, "children"), &list, errp);
    if (ret < 0) {
        return ret;
    }
    size_t count = vd_tree_size(list);
    if (count == 0) {
        vd_tree_free(list);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Number of provided children must "
                            "be 1 or more");
    }
    quorum_state *s = calloc(1, sizeof(*s));
    if (!s) {
        abort();
    }
    ret = parse_options(n, count, s, errp);
    for (size_t i = 0; ret == 0 && i < count; i++) {
        char role[32];
        snprintf(role, sizeof(role), "children.%zu", i);
        vd_node *child = NULL;
        ret = vd_node_open_child_tree(n, vd_tree_clone(vd_tree_at(list, i)), role, &child,
                                      errp);
        if (ret == 0) {
            vd_node_append_child(n, child, role);
        }
    }
    vd_tree_free(list);
    /* One size for all, as QEMU's getlength demands (its failure, in its words). */
    for (size_t i = 1; ret == 0 && i < count; i++) {
        if (n->children[i].node->size != n->children[0].node->size) {
            ret = vd_error_set(errp, VD_ERR_IO, EIO, "Could not refresh total sector count: "
                               "%s", strerror(EIO));
        }
    }
    if (ret < 0) {
        close_children(n);
        free(s);
        return ret;
    }
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    s->next_index = (unsigned)count;
    /* Named as QEMU names it, after the children it was opened with (the registry shows
     * the children it has, as they change). */
    free(n->filename);
    n->filename = vd_node_display_name(n);
    n->opaque = s;
    n->size = n->children[0].node->size;
    n->max_transfer = QUORUM_MAX_TRANSFER;
    return 0;
}

static void quorum_close(vd_node *n)
{
    quorum_state *s = n->opaque;
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

/* ---- reads ------------------------------------------------------------------------------- */

static int read_fifo(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    int ret = -EIO;
    for (size_t i = 0; i < n->nb_children; i++) {
        vd_node *child = n->children[i].node;
        ret = vd_node_pread(child, buf, len, off);
        if (ret == 0) {
            break;
        }
        report_bad(n, "read", child, off, len, ret);
    }
    return ret;
}

/* blkverify: two children that must agree. QEMU ends the whole process at the first
 * difference; a library must not, so the read fails with EIO and a message naming the
 * offset of the first byte that differs. */
static int blkverify_mismatch(vd_node *n, const child_io *io, uint64_t len, uint64_t off)
{
    uint64_t at = 0;
    while (at < len && io[0].buf[at] == io[1].buf[at]) {
        at++;
    }
    vd_node_set_error(n, "quorum: offset=%" PRIu64 " bytes=%" PRIu64 " contents mismatch at "
                      "offset %" PRIu64, off, len, off + at);
    return -EIO;
}

/* Reports (and with rewrite-corrupted repairs) the children outside the winning group, in
 * the order QEMU's lists give: the groups newest first, each one's children newest first. */
static void outvoted(vd_node *n, quorum_state *s, child_io *io, size_t nb, size_t win,
                     uint64_t len, uint64_t off)
{
    for (size_t g = nb; g-- > 0;) {
        if (g == win || io[g].ret != 0 || io[g].group != g) {
            continue;
        }
        for (size_t i = nb; i-- > g;) {
            if (io[i].ret == 0 && io[i].group == g) {
                report_bad(n, "read", io[i].node, off, len, 0);
            }
        }
    }
    if (!s->rewrite) {
        return;
    }
    for (size_t g = nb; g-- > 0;) {
        if (g == win || io[g].ret != 0 || io[g].group != g) {
            continue;
        }
        for (size_t i = nb; i-- > g;) {
            if (io[i].ret == 0 && io[i].group == g) {
                /* A repair attempt of data already found bad: its failure changes
                 * nothing for the reader, as in QEMU. */
                (void)vd_node_pwrite(io[i].node, io[win].buf, len, off, 0);
            }
        }
    }
}

static int read_vote(vd_node *n, quorum_state *s, void *buf, uint64_t len, uint64_t off)
{
    size_t nb = n->nb_children;
    fanout f = {.op = OP_READ, .off = off, .len = len};
    child_io *io = fanout_run(n, &f);
    int success = 0, ret = 0;
    for (size_t i = 0; i < nb; i++) {
        if (io[i].ret < 0) {
            report_bad(n, "read", io[i].node, off, len, io[i].ret);
        } else {
            success++;
        }
    }
    if (success < s->threshold) {
        report_failure(n, off, len);
        ret = error_vote(io, nb);
        goto out;
    }
    /* Group equal copies under their first child; the largest group wins (ties: the group
     * that started last, as QEMU's vote goes). */
    size_t win = nb, win_count = 0, groups = 0;
    for (size_t i = 0; i < nb; i++) {
        if (io[i].ret != 0) {
            continue;
        }
        io[i].group = i;
        for (size_t j = 0; j < i; j++) {
            if (io[j].ret == 0 && io[j].group == j && !memcmp(io[i].buf, io[j].buf, len)) {
                io[i].group = j;
                break;
            }
        }
        groups += io[i].group == i;
    }
    if (s->blkverify && groups > 1) {
        ret = blkverify_mismatch(n, io, len, off);
        goto out;
    }
    for (size_t g = 0; g < nb; g++) {
        if (io[g].ret != 0 || io[g].group != g) {
            continue;
        }
        size_t count = 0;
        for (size_t i = g; i < nb; i++) {
            count += io[i].ret == 0 && io[i].group == g;
        }
        if (count >= win_count) {
            win = g;
            win_count = count;
        }
    }
    if (win_count < (size_t)s->threshold) {
        report_failure(n, off, len);
        ret = -EIO;
        goto out;
    }
    memcpy(buf, io[win].buf, len);
    if (groups > 1) {
        outvoted(n, s, io, nb, win, len, off);
    }
out:
    fanout_free(&f, nb);
    return ret;
}

static int quorum_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    quorum_state *s = n->opaque;
    pthread_rwlock_rdlock(&s->lock);
    int ret = s->fifo ? read_fifo(n, buf, len, off) : read_vote(n, s, buf, len, off);
    pthread_rwlock_unlock(&s->lock);
    return ret;
}

/* ---- writes and flushes ------------------------------------------------------------------ */

static int write_all(vd_node *n, child_op op, const void *buf, uint64_t len, uint64_t off,
                     unsigned flags)
{
    quorum_state *s = n->opaque;
    pthread_rwlock_rdlock(&s->lock);
    size_t nb = n->nb_children;
    fanout f = {.op = op, .wbuf = buf, .off = off, .len = len, .flags = flags};
    child_io *io = fanout_run(n, &f);
    int success = 0, ret = 0;
    for (size_t i = 0; i < nb; i++) {
        if (io[i].ret < 0) {
            report_bad(n, "write", io[i].node, off, len, io[i].ret);
        } else {
            success++;
        }
    }
    if (success < s->threshold) {
        report_failure(n, off, len);
        ret = error_vote(io, nb);
    }
    fanout_free(&f, nb);
    pthread_rwlock_unlock(&s->lock);
    return ret;
}

static int quorum_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                         unsigned flags)
{
    return write_all(n, OP_WRITE, buf, len, off, flags);
}

static int quorum_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    /* Some children could zero without writing and others not: the caller's fallback
     * (writing zeros) is the one way that treats every child alike. */
    if (flags & VD_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    return write_all(n, OP_ZEROES, NULL, len, off, flags);
}

static int quorum_flush(vd_node *n)
{
    quorum_state *s = n->opaque;
    pthread_rwlock_rdlock(&s->lock);
    size_t nb = n->nb_children;
    fanout f = {.op = OP_FLUSH};
    child_io *io = fanout_run(n, &f);
    int success = 0;
    for (size_t i = 0; i < nb; i++) {
        if (io[i].ret < 0) {
            report_bad(n, "flush", io[i].node, 0, 0, io[i].ret);
        } else {
            success++;
        }
    }
    int ret = success >= s->threshold ? 0 : error_vote(io, nb);
    fanout_free(&f, nb);
    pthread_rwlock_unlock(&s->lock);
    return ret;
}

/* ---- status ------------------------------------------------------------------------------ */

/* Zeros only where every child says so (the shortest such run), data otherwise (the
 * longest run a child reports), as QEMU's quorum answers: children may hold the same data
 * in different ways. */
static int quorum_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    quorum_state *s = n->opaque;
    uint64_t pnum_zero = len, pnum_data = 0;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < n->nb_children; i++) {
        vd_node *child = n->children[i].node;
        vd_extent x;
        int ret = vd_node_chain_status(child, off, len, &x);
        if (ret < 0) {
            report_bad(n, "read", child, off, len, ret);
            pnum_data = len;
            break;
        }
        uint64_t got = x.length && x.length < len ? x.length : len;
        if (x.flags & VD_BS_ZERO) {
            pnum_zero = got < pnum_zero ? got : pnum_zero;
        } else {
            pnum_data = got > pnum_data ? got : pnum_data;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    st->pnum = pnum_data ? pnum_data : pnum_zero;
    st->flags = VD_BS_ALLOCATED | (pnum_data ? VD_BS_DATA : VD_BS_ZERO);
    return 0;
}

/* The children's host sizes together (QEMU's sum over a node's data children). */
static int64_t quorum_allocated_size(vd_node *n)
{
    quorum_state *s = n->opaque;
    int64_t sum = 0;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < n->nb_children && sum >= 0; i++) {
        vd_node *c = n->children[i].node;
        int64_t one = c->drv->allocated_size ? c->drv->allocated_size(c) : -ENOTSUP;
        sum = one < 0 ? one : sum + one;
    }
    pthread_rwlock_unlock(&s->lock);
    return sum;
}

/* ---- children added and removed ---------------------------------------------------------- */

static int quorum_add_child(vd_node *n, vd_node *child, vd_error **errp)
{
    quorum_state *s = n->opaque;
    if (s->blkverify) {
        return vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "Cannot add a child to a quorum in "
                            "blkverify mode");
    }
    pthread_rwlock_wrlock(&s->lock);
    int ret;
    if (s->next_index == UINT_MAX) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, ENOSPC, "Too many children");
    } else {
        char role[32];
        snprintf(role, sizeof(role), "children.%u", s->next_index);
        ret = vd_graph_attach_child(n, child, role, errp);
        if (ret == 0) {
            s->next_index++;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return ret;
}

/* The later children move up and keep their names; only the removal of the child named
 * last frees its number for the next one added (QEMU's rule). */
static int quorum_del_child(vd_node *n, vd_node *child, const char *role, vd_error **errp)
{
    quorum_state *s = n->opaque;
    pthread_rwlock_wrlock(&s->lock);
    size_t i = 0;
    while (i < n->nb_children &&
           (n->children[i].node != child || strcmp(n->children[i].role, role))) {
        i++;
    }
    int ret = 0;
    if (i == n->nb_children) {
        /* Taken away by another change since the core looked. */
        ret = vd_error_set(errp, VD_ERR_GENERIC, ENOENT, "Node '%s' does not have child '%s'",
                           name_of(n), role);
    } else if (n->nb_children <= (size_t)s->threshold) {
        ret = vd_error_set(errp, VD_ERR_GENERIC, EINVAL, "The number of children cannot be "
                           "lower than the vote threshold %d", s->threshold);
    } else {
        char last[32];
        snprintf(last, sizeof(last), "children.%u", s->next_index - 1);
        if (!strcmp(role, last)) {
            s->next_index--;
        }
        vd_graph_detach_child(n, i);
    }
    pthread_rwlock_unlock(&s->lock);
    return ret;
}

/* The children's permissions: what the users take passes through (and writes besides
 * when reads repair children); others may only read and write unchanged, since a write
 * or resize past the quorum would make the children differ. */
static void quorum_child_perms(const vd_node *n, const char *role, unsigned *perm,
                               unsigned *shared)
{
    (void)role;
    const quorum_state *s = n->opaque;
    if (s && s->rewrite) {
        *perm |= VD_PERM_WRITE;
    }
    *shared &= VD_PERM_CONSISTENT_READ | VD_PERM_WRITE_UNCHANGED;
}

const vd_driver vd_quorum_driver = {
    .name = "quorum",
    .is_format = false,
    .runtime_opts = quorum_runtime_opts,
    .open = quorum_open,
    .close = quorum_close,
    .pread = quorum_pread,
    .pwrite = quorum_pwrite,
    .pwrite_zeroes = quorum_pwrite_zeroes,
    .flush = quorum_flush,
    .block_status = quorum_block_status,
    .allocated_size = quorum_allocated_size,
    .add_child = quorum_add_child,
    .del_child = quorum_del_child,
    .child_perms = quorum_child_perms,
};
