/* What the long-running commands (vdisk nbd, vdiskd) share: detaching into the
 * background with the parent waiting for startup, the pid file, and taking SIGINT,
 * SIGTERM and SIGHUP synchronously in the main thread. */
#ifndef VD_UTIL_SERVICE_H
#define VD_UTIL_SERVICE_H

#include <signal.h>
#include <stdbool.h>

typedef struct vd_service {
    const char *prog;         /* names the messages ("vdisk", "vdiskd") */
    const char *pidfile;      /* NULL: none */
    const char *pid_error;    /* the words before a pid file failure */
    int notify;               /* daemonized: the pipe to the waiting parent, else -1 */
    bool pid_written;
    sigset_t signals;
} vd_service;

/* Before any thread starts: with daemonize, forks; the parent exits 0 once the child
 * calls vd_service_ready, 1 if the child ends first. Blocks the signals so that
 * vd_service_wait takes them. Returns 0, or -1 after printing why. */
int vd_service_start(vd_service *sv, bool daemonize);
/* Startup is done: writes the pid file, lets the parent go and, when daemonized, detaches
 * stdin and stdout. Returns 0, or -1 after printing why. */
int vd_service_ready(vd_service *sv);
/* Waits up to timeout_ms for one of the signals; true when one came. */
bool vd_service_wait(vd_service *sv, int timeout_ms);
/* On the way out: removes the pid file after a clean run (ok); a parent still waiting
 * learns that startup failed. */
void vd_service_end(vd_service *sv, bool ok);

#endif
