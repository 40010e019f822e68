/* Listening sockets shared by the NBD server and the QMP monitor. */
#ifndef VD_UTIL_SOCKET_H
#define VD_UTIL_SOCKET_H

#include "vdisk/vdisk.h"

/* Binds and listens on a unix socket created mode 0600 (other users must not reach the
 * disks or the monitor). A stale socket at path is replaced; any other file there is an
 * error. Returns the descriptor or -errno with *errp set. */
int vd_unix_listen(const char *path, int backlog, vd_error **errp);

#endif
