/* libFuzzer target for the NBD server: each input is the byte stream one client sends
 * (handshake, options, requests, payloads), written to a fresh connection to a server that
 * exports a small writable raw image held in memory (a memfd); the replies are drained
 * until the server closes the connection. Any crash, sanitizer report, leak or hang is a
 * bug. The first 4 input bytes are sent as the client flags, so most inputs get past the
 * greeting. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vdisk/nbd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static vd_engine *engine;
static vd_disk *disk;
static vd_nbd_server *server;
static char sock_path[108];

static void setup(void)
{
    engine = vd_engine_new();
    int fd = memfd_create("fuzz-nbd", 0);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        abort();
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    vd_open_opts o = {.format = "raw", .flags = VD_OPEN_RDWR | VD_OPEN_UNMAP};
    if (vd_open(engine, path, &o, &disk, NULL) < 0) {
        abort();
    }
    vd_nbd_server_opts so = {.max_connections = 0};
    if (vd_nbd_server_new(&so, &server, NULL) < 0) {
        abort();
    }
    vd_nbd_export_opts eo = {.name = "", .description = "fuzz", .disk = disk,
                             .writable = true};
    vd_nbd_export_opts eo2 = {.name = "ro", .disk = disk, .writable = false};
    snprintf(sock_path, sizeof(sock_path), "/tmp/vdisk-fuzz-nbd-%d.sock", (int)getpid());
    if (vd_nbd_export_add(server, &eo, NULL) < 0 || vd_nbd_export_add(server, &eo2, NULL) < 0 ||
        vd_nbd_server_listen_unix(server, sock_path, NULL) < 0) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!server) {
        setup();
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, sock_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        abort();
    }
    /* Replies are drained as input is written, so neither side blocks on a full socket. */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[65536];
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < 4096 ? size - off : 4096;
        ssize_t w = send(fd, data + off, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            break;   /* the server dropped us */
        }
        if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) == 0) {
            break;
        }
    }
    shutdown(fd, SHUT_WR);
    while (recv(fd, buf, sizeof(buf), 0) > 0) {
    }
    close(fd);
    return 0;
}
