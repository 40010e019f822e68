/* Background start, pid file and signals of the long-running commands (service.h). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/service.h"

int vd_service_start(vd_service *sv, bool daemonize)
{
    sv->notify = -1;
    sv->pid_written = false;
    if (daemonize) {
        int p[2];
        if (pipe(p) < 0) {
            fprintf(stderr, "%s: pipe: %s\n", sv->prog, strerror(errno));
            return -1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "%s: fork: %s\n", sv->prog, strerror(errno));
            return -1;
        }
        if (pid > 0) {
            /* The child writes one 0 byte when it serves; EOF first means it failed. */
            close(p[1]);
            char c = 1;
            ssize_t r = read(p[0], &c, 1);
            _exit(r == 1 && c == 0 ? 0 : 1);
        }
        close(p[0]);
        setsid();
        sv->notify = p[1];
    }
    sigemptyset(&sv->signals);
    sigaddset(&sv->signals, SIGINT);
    sigaddset(&sv->signals, SIGTERM);
    sigaddset(&sv->signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sv->signals, NULL);
    return 0;
}

int vd_service_ready(vd_service *sv)
{
    if (sv->pidfile) {
        FILE *f = fopen(sv->pidfile, "w");
        if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
            fprintf(stderr, "%s: %s '%s': %s\n", sv->prog, sv->pid_error, sv->pidfile,
                    strerror(errno));
            return -1;
        }
        sv->pid_written = true;
    }
    if (sv->notify >= 0) {
        char ok = 0;
        ssize_t w = write(sv->notify, &ok, 1);
        (void)w;
        close(sv->notify);
        sv->notify = -1;
        if (!freopen("/dev/null", "r", stdin) || !freopen("/dev/null", "w", stdout)) {
            return -1;
        }
    }
    return 0;
}

bool vd_service_wait(vd_service *sv, int timeout_ms)
{
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    return sigtimedwait(&sv->signals, NULL, &ts) > 0;
}

void vd_service_end(vd_service *sv, bool ok)
{
    if (sv->pid_written && ok) {
        unlink(sv->pidfile);
    }
    if (sv->notify >= 0) {
        close(sv->notify);
        sv->notify = -1;
    }
}
