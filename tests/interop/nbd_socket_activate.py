#!/usr/bin/env python3
"""Starts a program with a listening unix socket as fd 3, as systemd socket activation does.

  nbd_socket_activate.py [--no-env] SOCKET PROGRAM ARGS...

Creates SOCKET (listening), runs PROGRAM with it as fd 3 and, unless --no-env, with
LISTEN_PID set to the program's pid and LISTEN_FDS=1. Stays in the foreground: SIGTERM
and SIGINT go on to the program, and the exit status is the program's.
"""
import os
import signal
import socket
import sys


def main():
    args = sys.argv[1:]
    env_too = True
    if args and args[0] == "--no-env":
        env_too = False
        args = args[1:]
    if len(args) < 2:
        raise SystemExit(__doc__)
    path, argv = args[0], args[1:]
    # Handlers first: a signal that comes before the program runs is passed on to it.
    pending = []
    child = []

    def forward(sig, _frame):
        if child:
            try:
                os.kill(child[0], sig)
            except ProcessLookupError:
                pass
        else:
            pending.append(sig)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(16)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            os.dup2(lsock.fileno(), 3)
            os.set_inheritable(3, True)
            env = dict(os.environ)
            if env_too:
                env["LISTEN_PID"] = str(os.getpid())
                env["LISTEN_FDS"] = "1"
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    lsock.close()
    child.append(pid)
    for sig in pending:
        os.kill(pid, sig)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
