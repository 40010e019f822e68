#!/usr/bin/env python3
"""SIGTERM under load for the NBD servers (test-nbd-shutdown.sh).

Each iteration starts `vdisk nbd` or vdiskd on a unix socket, puts a random set of clients
into random states (pipelined reads or writes in flight and not read back, a half-closed
socket, a client that closed with thousands of reads queued, idle clients before and after
the handshake, and with TLS a client refused for having no certificate and one that stalls
in the TLS handshake), sends SIGTERM
after a random short delay and asserts that the process is gone within the bound, exited 0,
and that the image passes `qemu-img check` clean. Prints PASS/FAIL lines and the figures.

usage: nbd_shutdown.py VDISK VDISKD DIR ITERATIONS SEED [TLSDIR]
"""
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

BOUND = 5.0
IMG_SIZE = 64 << 20
NBD_OPTS_MAGIC = 0x49484156454F5054
NBD_REP_MAGIC = 0x3E889045565A9
NBD_REQUEST_MAGIC = 0x25609513
OPT_STARTTLS = 5
OPT_GO = 7
CMD_READ = 0
CMD_WRITE = 1
CMD_FLUSH = 3


class Refused(Exception):
    pass


def recvn(s, n):
    buf = b""
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise Refused("EOF")
        buf += b
    return buf


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", NBD_OPTS_MAGIC, opt, len(data)) + data)


def read_rep(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    if magic != NBD_REP_MAGIC:
        raise Refused("bad reply magic")
    data = recvn(s, ln)
    if typ & 0x80000000:
        raise Refused("option %d refused: 0x%x %r" % (opt, typ, data[:200]))
    return typ


class Env:
    def __init__(self, d, tls):
        self.dir = d
        self.tls = tls           # directory made by make_tls_certs, or None

    def ssl_ctx(self, cert):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(self.tls, "ca", "ca-cert.pem"))
        if cert:
            ctx.load_cert_chain(os.path.join(self.tls, "cli", "client-cert.pem"),
                                os.path.join(self.tls, "cli", "client-key.pem"))
        return ctx


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def handshake(env, path, tls, cert=True):
    """A client in transmission on export "disk" (through TLS when the server wants it)."""
    s = connect(path)
    recvn(s, 18)
    s.sendall(struct.pack(">I", 3))
    if tls:
        send_opt(s, OPT_STARTTLS)
        if read_rep(s) != 1:
            raise Refused("STARTTLS refused")
        s = env.ssl_ctx(cert).wrap_socket(s, server_hostname="localhost")
    name = b"disk"
    send_opt(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    while True:
        if read_rep(s) == 1:
            return s


def request(typ, cookie, off, ln, payload=b""):
    return struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, typ, cookie, off, ln) + payload


def send_some(s, chunks, deadline):
    """Sends whole chunks until the socket stops taking them (never blocks for long)."""
    s.settimeout(0.02)
    for c in chunks:
        if time.monotonic() > deadline:
            break
        try:
            s.sendall(c)
        except (socket.timeout, ssl.SSLError, OSError):
            break


def reads(rng, n, size=65536):
    return [request(CMD_READ, i, rng.randrange(0, IMG_SIZE // size) * size, size)
            for i in range(n)]


def writes(rng, n):
    out = []
    for i in range(n):
        ln = rng.choice([512, 4096, 65536])
        off = rng.randrange(0, (IMG_SIZE - ln) // 512) * 512
        out.append(request(CMD_WRITE, i, off, ln, bytes([rng.randrange(256)]) * ln))
        if rng.random() < 0.05:
            out.append(request(CMD_FLUSH, 100000 + i, 0, 0))
    return out


STATES = ["pipelined-reads", "pipelined-writes", "half-closed", "closed-queued", "idle",
          "pre-handshake"]


def make_client(env, path, tls, state, rng, keep):
    """Puts one client into `state`; sockets to keep open go into keep."""
    deadline = time.monotonic() + 0.5
    if state == "pre-handshake":
        s = connect(path)
        if rng.random() < 0.5:
            recvn(s, 18)
        keep.append(s)
        return
    if state == "tls-stalled":
        # STARTTLS accepted, then silence: the server waits in its TLS handshake.
        s = connect(path)
        recvn(s, 18)
        s.sendall(struct.pack(">I", 3))
        send_opt(s, OPT_STARTTLS)
        read_rep(s)
        keep.append(s)
        return
    if state == "tls-refused":
        s = connect(path)
        recvn(s, 18)
        s.sendall(struct.pack(">I", 3))
        send_opt(s, OPT_STARTTLS)
        read_rep(s)
        try:
            s = env.ssl_ctx(False).wrap_socket(s, server_hostname="localhost")
            name = b"disk"
            send_opt(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
            read_rep(s)
            raise AssertionError("a TLS client without a certificate was served")
        except (ssl.SSLError, OSError, Refused):
            pass
        if rng.random() < 0.5:
            keep.append(s)
        else:
            s.close()
        return
    s = handshake(env, path, tls)
    if state == "idle":
        keep.append(s)
    elif state == "pipelined-reads":
        send_some(s, reads(rng, rng.randrange(50, 600)), deadline)
        keep.append(s)
    elif state == "pipelined-writes":
        send_some(s, writes(rng, rng.randrange(20, 300)), deadline)
        keep.append(s)
    elif state == "half-closed":
        send_some(s, reads(rng, rng.randrange(0, 200)), deadline)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        keep.append(s)
    elif state == "closed-queued":
        send_some(s, reads(rng, 3000, 4096), deadline)
        s.close()


def start(kind, bins, img, sock, tls):
    """Starts a server; returns once it has written its pid file, that is once every
    option is applied (vdiskd listens before it adds the export)."""
    pidfile = sock + ".pid"
    for f in (sock, pidfile):
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    obj = []
    if tls:
        obj = ["--object", "tls-creds-x509,id=t0,dir=%s/srv,endpoint=server" % tls]
    if kind == "vdisk":
        argv = [bins["vdisk"], "nbd", "-t", "-e", "0", "-f", "qcow2", "-x", "disk", "-k", sock]
        argv += obj + (["--tls-creds", "t0"] if tls else []) + ["--pid-file", pidfile, img]
    else:
        argv = [bins["vdiskd"], "--blockdev", "driver=file,node-name=f0,filename=" + img,
                "--blockdev", "driver=qcow2,node-name=d0,file=f0"] + obj
        argv += ["--nbd-server", "addr.type=unix,addr.path=%s%s" %
                 (sock, ",tls-creds=t0" if tls else ""),
                 "--export", "type=nbd,id=e0,node-name=d0,name=disk,writable=on",
                 "--pidfile", pidfile]
    log = open(sock + ".log", "wb")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if p.poll() is not None:
            raise RuntimeError("server exited %d at start" % p.returncode)
        if os.path.exists(pidfile):
            return p
        time.sleep(0.005)
    p.kill()
    p.wait()
    raise RuntimeError("server did not listen")


def backtrace(pid, out):
    try:
        r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        with open(out, "wb") as f:
            f.write(r.stdout)
    except (OSError, subprocess.TimeoutExpired):
        pass


def main():
    vdisk, vdiskd, d, iters, seed = sys.argv[1:6]
    tls_dir = sys.argv[6] if len(sys.argv) > 6 else None
    iters, seed = int(iters), int(seed)
    env = Env(d, tls_dir)
    bins = {"vdisk": vdisk, "vdiskd": vdiskd}
    rng = random.Random(seed)
    stats = {k: {"n": 0, "max": 0.0, "sum": 0.0, "hung": 0, "bad_exit": 0, "unclean": 0,
                 "errors": 0} for k in bins}
    failures = 0
    for i in range(iters):
        kind = "vdisk" if i % 2 == 0 else "vdiskd"
        st = stats[kind]
        img = os.path.join(d, "%s.qcow2" % kind)
        sock = os.path.join(d, "%s.sock" % kind)
        tls = tls_dir if tls_dir and rng.random() < 0.25 else None
        states = [rng.choice(STATES) for _ in range(rng.randrange(0, 7))]
        if tls and rng.random() < 0.7:
            states.insert(rng.randrange(len(states) + 1), "tls-refused")
        if tls and rng.random() < 0.3:
            states.insert(rng.randrange(len(states) + 1), "tls-stalled")
        what = "iteration %d (%s%s: %s)" % (i, kind, " tls" if tls else "",
                                           ", ".join(states) or "no clients")
        try:
            p = start(kind, bins, img, sock, tls)
        except RuntimeError as e:
            print("FAIL nbd-shutdown-%s-start: %s: %s" % (kind, what, e))
            failures += 1
            st["errors"] += 1
            continue
        keep = []
        try:
            for state in states:
                make_client(env, sock, tls, state, rng, keep)
        except Exception as e:  # any client failure is reported; the SIGTERM still follows
            print("FAIL nbd-shutdown-%s-clients: %s: %r" % (kind, what, e))
            failures += 1
            st["errors"] += 1
        time.sleep(rng.random() * 0.02)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=BOUND)
            took = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            took = None
            bt = os.path.join(d, "hang-%d.bt" % i)
            backtrace(p.pid, bt)
            p.kill()
            rc = p.wait()
        for s in keep:
            s.close()
        st["n"] += 1
        if took is None:
            st["hung"] += 1
            failures += 1
            print("FAIL nbd-shutdown-%s-exit: %s: still running %.0f s after SIGTERM "
                  "(threads: %s)" % (kind, what, BOUND, bt))
            sys.stdout.flush()
            continue
        st["max"] = max(st["max"], took)
        st["sum"] += took
        if rc != 0:
            st["bad_exit"] += 1
            failures += 1
            with open(sock + ".log", "rb") as f:
                tail = f.read()[-600:].decode(errors="replace").replace("\n", " | ")
            print("FAIL nbd-shutdown-%s-status: %s: exit status %d: %s" % (kind, what, rc, tail))
        r = subprocess.run([os.environ.get("QEMU_IMG", "qemu-img"), "check", img],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            st["unclean"] += 1
            failures += 1
            print("FAIL nbd-shutdown-%s-check: %s: qemu-img check exit %d: %s" %
                  (kind, what, r.returncode, r.stdout.decode(errors="replace")[-400:]))
        sys.stdout.flush()
    for kind, st in stats.items():
        ok = st["hung"] == 0 and st["bad_exit"] == 0 and st["unclean"] == 0 and \
            st["errors"] == 0
        print("%s nbd-shutdown-%s: %d SIGTERMs, %d hung, max exit %.3f s, mean %.3f s, "
              "%d bad exit status, %d images unclean (seed %d)" %
              ("PASS" if ok else "FAIL", kind, st["n"], st["hung"], st["max"],
               st["sum"] / st["n"] if st["n"] else 0, st["bad_exit"], st["unclean"], seed))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
