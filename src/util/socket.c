/* Listening unix sockets (vd_unix_listen). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/socket.h"

int vd_unix_listen(const char *path, int backlog, vd_error **errp)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || !*path || strlen(path) >= sizeof(sa.sun_path)) {
        return vd_error_set(errp, VD_ERR_INVALID, ENAMETOOLONG, "UNIX socket path '%s' is "
                            "too long", path ? path : "");
    }
    strcpy(sa.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return vd_error_set(errp, VD_ERR_INVALID, EEXIST, "Failed to bind socket to %s: "
                                "the path exists and is not a socket", path);
        }
        unlink(path);   /* a stale socket of an earlier run */
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return vd_error_set(errp, VD_ERR_IO, errno, "Failed to create socket: %s",
                            strerror(errno));
    }
    /* The socket file takes its mode from the umask at bind time: 0600, as documented (a
     * socket's execute bit means nothing). */
    mode_t old = umask(0177);
    int ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int err = errno;
    umask(old);
    if (ret < 0 || listen(fd, backlog) < 0) {
        err = ret < 0 ? err : errno;
        close(fd);
        return vd_error_set(errp, VD_ERR_IO, err, "Failed to bind socket to %s: %s", path,
                            strerror(err));
    }
    return fd;
}
