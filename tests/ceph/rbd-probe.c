/* Proves the librbd path the rbd driver will use: connect from a conf file, create an image,
 * write 1 MiB and read it back as 16 asynchronous 64 KiB requests in flight at once
 * (rbd_aio_write/rbd_aio_read, completions with callbacks, rbd_aio_flush), check the bytes,
 * close and remove the image.
 *   rbd-probe CONF [POOL [IMAGE]]      exit 0 when every step worked; prints what it did
 * Built only when meson finds librbd and librados (VD_HAVE_RBD); run by hand against
 * tests/ceph/ceph-cluster.sh, and by tests/ceph/test-ceph-cluster.sh. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

enum { PROBE_SIZE = 1 << 20, PROBE_CHUNK = 64 << 10, PROBE_NREQ = PROBE_SIZE / PROBE_CHUNK };

/* The requests of one batch: callbacks run on librbd's finisher thread and
 * count down. */
struct batch {
    pthread_mutex_t lock;
    pthread_cond_t done;
    int pending;
    int first_error; /* the first negative return value, 0 if none */
};

struct request {
    struct batch *batch;
    rbd_completion_t comp;
    size_t expect; /* bytes a successful request returns (reads), 0 for writes and
                    flush */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void request_done(rbd_completion_t comp, void *arg)
{
    struct request *req = arg;
    struct batch *b = req->batch;
    ssize_t r = rbd_aio_get_return_value(comp);

    /* A read returns its length, a write 0; anything else is the error. */
    if (r >= 0 && req->expect != 0 && (size_t)r != req->expect) {
        r = -EIO;
    }
    pthread_mutex_lock(&b->lock);
    if (r < 0 && b->first_error == 0) {
        b->first_error = (int)r;
    }
    if (--b->pending == 0) {
        pthread_cond_signal(&b->done);
    }
    pthread_mutex_unlock(&b->lock);
}

static int batch_wait(struct batch *b)
{
    pthread_mutex_lock(&b->lock);
    while (b->pending > 0) {
        pthread_cond_wait(&b->done, &b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    return b->first_error;
}

/* Issues PROBE_NREQ requests of PROBE_CHUNK bytes (or one flush) and waits for
 * them all. */
static int run_batch(rbd_image_t image, char op, char *buf)
{
    struct batch b = {.lock = PTHREAD_MUTEX_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};
    struct request reqs[PROBE_NREQ];
    int n = op == 'f' ? 1 : PROBE_NREQ;
    int r = 0;

    for (int i = 0; i < n; i++) {
        struct request *req = &reqs[i];
        uint64_t off = (uint64_t)i * PROBE_CHUNK;

        *req = (struct request){.batch = &b, .expect = op == 'r' ? PROBE_CHUNK : 0};
        r = rbd_aio_create_completion(req, request_done, &req->comp);
        if (r < 0) {
            break;
        }
        pthread_mutex_lock(&b.lock);
        b.pending++;
        pthread_mutex_unlock(&b.lock);
        if (op == 'w') {
            r = rbd_aio_write(image, off, PROBE_CHUNK, buf + off, req->comp);
        } else if (op == 'r') {
            r = rbd_aio_read(image, off, PROBE_CHUNK, buf + off, req->comp);
        } else {
            r = rbd_aio_flush(image, req->comp);
        }
        if (r < 0) {
            /* Not queued: no callback will come for it. */
            rbd_aio_release(req->comp);
            pthread_mutex_lock(&b.lock);
            b.pending--;
            pthread_mutex_unlock(&b.lock);
            n = i;
            break;
        }
    }
    int wr = batch_wait(&b);
    for (int i = 0; i < n; i++) {
        rbd_aio_release(reqs[i].comp);
    }
    return r < 0 ? r : wr;
}

int main(int argc, char **argv)
{
    const char *conf = argc > 1 ? argv[1] : NULL;
    const char *pool = argc > 2 ? argv[2] : "rbd";
    char name[64];
    rados_t cluster = NULL;
    rados_ioctx_t io = NULL;
    rbd_image_t image = NULL;
    rbd_image_options_t opts = NULL;
    char *wbuf = NULL, *rbuf = NULL;
    bool created = false;
    uint64_t features = 0;
    int r, rc = 1;
    double t;

    if (conf == NULL || argc > 4) {
        fprintf(stderr, "usage: rbd-probe CONF [POOL [IMAGE]]\n");
        return 2;
    }
    if (argc > 3) {
        snprintf(name, sizeof(name), "%s", argv[3]);
    } else {
        snprintf(name, sizeof(name), "rbd-probe-%ld", (long)getpid());
    }

#define STEP(what, call)                                                                           \
    do {                                                                                           \
        t = now_ms();                                                                              \
        r = (call);                                                                                \
        if (r < 0) {                                                                               \
            fprintf(stderr, "rbd-probe: %s: %s\n", what, strerror(-r));                            \
            goto out;                                                                              \
        }                                                                                          \
        printf("%-34s ok  %7.1f ms\n", what, now_ms() - t);                                        \
    } while (0)

    STEP("rados_create (client.admin)", rados_create(&cluster, "admin"));
    STEP("rados_conf_read_file", rados_conf_read_file(cluster, conf));
    STEP("rados_connect", rados_connect(cluster));
    STEP("rados_ioctx_create", rados_ioctx_create(cluster, pool, &io));

    rbd_image_options_create(&opts);
    STEP("rbd_create4 (4 MiB)", rbd_create4(io, name, 4 << 20, opts));
    created = true;
    STEP("rbd_open", rbd_open(io, name, &image, NULL));
    STEP("rbd_get_features", rbd_get_features(image, &features));
    printf("  image %s/%s, features 0x%" PRIx64 "\n", pool, name, features);

    wbuf = malloc(PROBE_SIZE);
    rbuf = malloc(PROBE_SIZE);
    if (wbuf == NULL || rbuf == NULL) {
        fprintf(stderr, "rbd-probe: out of memory\n");
        goto out;
    }
    /* Every 64 KiB chunk different, so a request landing at the wrong offset
   * shows. */
    for (size_t i = 0; i < PROBE_SIZE; i++) {
        wbuf[i] = (char)((i * 2654435761u) >> 13 ^ i / PROBE_CHUNK);
    }
    memset(rbuf, 0xee, PROBE_SIZE);

    STEP("rbd_aio_write 16 x 64 KiB", run_batch(image, 'w', wbuf));
    STEP("rbd_aio_flush", run_batch(image, 'f', NULL));
    STEP("rbd_aio_read 16 x 64 KiB", run_batch(image, 'r', rbuf));
    if (memcmp(wbuf, rbuf, PROBE_SIZE) != 0) {
        size_t i = 0;
        while (wbuf[i] == rbuf[i]) {
            i++;
        }
        fprintf(stderr, "rbd-probe: read back differs from what was written at offset %zu\n", i);
        goto out;
    }
    printf("%-34s ok\n", "1 MiB read back identical");
    STEP("rbd_close", rbd_close(image));
    image = NULL;
    STEP("rbd_remove", rbd_remove(io, name));
    created = false;
    rc = 0;

out:
    if (image != NULL) {
        rbd_close(image);
    }
    if (created) {
        rbd_remove(io, name);
    }
    if (opts != NULL) {
        rbd_image_options_destroy(opts);
    }
    if (io != NULL) {
        rados_ioctx_destroy(io);
    }
    if (cluster != NULL) {
        rados_shutdown(cluster);
    }
    free(wbuf);
    free(rbuf);
    printf("rbd-probe: %s\n", rc == 0 ? "OK" : "FAILED");
    return rc;
}
