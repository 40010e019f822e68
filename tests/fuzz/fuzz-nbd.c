/* libFuzzer target for the NBD server: each input is the byte stream one client sends
 * (handshake, options, requests, payloads) on a fresh connection to a server that exports
 * a small writable raw image held in memory (a memfd), offering two dirty bitmaps and
 * qemu:allocation-depth besides base:allocation. Any crash, sanitizer report, leak
 * or hang is a bug. The first 4 input bytes are sent as the client flags, so most inputs
 * get past the greeting.
 *
 * Speed: the connection is a socket pair registered as the accept thread registers an
 * accepted socket (nbd_conn_register_locked), and served by the server's own connection
 * code (nbd_conn_main) on the fuzzer's thread, with the server's worker pool as usual. The
 * accept path is left out because it creates a thread per connection, which under ASan
 * costs more than most inputs. The client side is fuzz-feed.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz-feed.h"
#include "nbd/nbd-int.h"
#include "vdisk/bitmap.h"
#include "vdisk/graph.h"
#include "vdisk/nbd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static vd_engine *engine;
static vd_disk *disk;
static vd_nbd_server *server;

static void setup(void)
{
    engine = vd_engine_new();
    int fd = memfd_create("fuzz-nbd", 0);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        abort();
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    /* A named node, so that it can carry dirty bitmaps for the export to offer. */
    char json[160];
    snprintf(json, sizeof(json), "{\"driver\": \"raw\", \"node-name\": \"n\", "
             "\"discard\": \"unmap\", \"file\": {\"driver\": \"file\", "
             "\"filename\": \"%s\"}}", path);
    vd_tree *t = NULL;
    vd_bitmap_add_opts off = {.granularity = 4096, .disabled = true};
    vd_dirty_bitmap *bms[2];
    if (vd_tree_parse_json(json, strlen(json), &t, NULL) < 0 ||
        vd_blockdev_add(engine, t, VD_OPEN_RDWR, NULL) < 0 ||
        vd_blockdev_open(engine, "n", &disk, NULL) < 0 ||
        vd_bitmap_add(engine, "n", "dirty", NULL, NULL) < 0 ||
        vd_bitmap_add(engine, "n", "b0", &off, NULL) < 0 ||
        vd_bitmap_acquire(disk, NULL, "dirty", false, &bms[0], NULL) < 0 ||
        vd_bitmap_acquire(disk, NULL, "b0", false, &bms[1], NULL) < 0) {
        abort();
    }
    vd_nbd_server_opts so = {.max_connections = 0};
    if (vd_nbd_server_new(&so, &server, NULL) < 0) {
        abort();
    }
    vd_nbd_export_opts eo = {.name = "", .description = "fuzz", .disk = disk,
                             .writable = true, .allocation_depth = true, .bitmaps = bms,
                             .nb_bitmaps = 2};
    vd_nbd_export_opts eo2 = {.name = "ro", .disk = disk, .writable = false};
    if (vd_nbd_export_add(server, &eo, NULL) < 0 || vd_nbd_export_add(server, &eo2, NULL) < 0) {
        abort();
    }
}

/* A connection registered as the server registers an accepted socket. */
static nbd_conn *conn_new(int fd)
{
    pthread_mutex_lock(&server->lock);
    nbd_conn *c = nbd_conn_register_locked(server, fd);
    if (!c) {
        abort();
    }
    c->thread = pthread_self();
    pthread_mutex_unlock(&server->lock);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!server) {
        setup();
    }
    int fd = feed_begin(data, size);
    if (fd < 0) {
        abort();
    }
    nbd_conn_main(conn_new(fd));   /* returns when the client is gone; closes fd */
    feed_end();
    return 0;
}
