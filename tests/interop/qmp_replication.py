#!/usr/bin/env python3
"""Block replication (COLO) between two vdiskd processes.

  qmp_replication.py colo VDISKD DIR unix|tcp SECONDS
        the primary (quorum over its disk and a replication node over an NBD client) and
        the secondary (replication over active -> hidden -> the secondary disk it exports)
        on one machine; a client writes seeded random data into the primary's export and
        another into the secondary's top, with a checkpoint every second (writes paused
        across it): after each, the secondary's top equals the primary's disk. Then the
        primary is killed mid-write; the secondary fails over and its disk equals the
        primary's disk at the last checkpoint, byte for byte; every image checks clean
  qmp_replication.py lost VDISKD DIR
        the secondary is killed instead: the primary's writes go on, the quorum reports
        its failed child, the replication status says so, and every acknowledged write is
        there; a new secondary is brought in sync by a mirror and replication restarts,
        the tops equal at each checkpoint
  qmp_replication.py refusals VDISKD QSD DIR
        a wrong graph, a wrong mode, a checkpoint before start, stop twice, failover with
        enable, and a secondary killed during its checkpoint: each a clear error, nothing
        lost; the replication node's option checks equal qemu-storage-daemon's

Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import os
import random
import signal
import socket
import sys
import threading
import time

import nbd

from qmp_mirror import STARTED, Daemon, run
from qmp_session import result

MiB = 1 << 20
SIZE = 64 * MiB


def create(d, name, size=SIZE):
    path = "%s/%s.qcow2" % (d, name)
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(size))
    return path


def qcow2(path, name=None, **extra):
    o = {"driver": "qcow2", "file": {"driver": "file", "filename": path}}
    if name:
        o["node-name"] = name
    o.update(extra)
    return o


def read_pattern_fifo():
    return {"node-name": "colo-disk0", "read-pattern": "fifo", "vote-threshold": 1}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ok_reply(r):
    return "return" in r


def desc(r):
    return r.get("error", {}).get("desc", "")


def check_image(path, allow_leaks=False):
    """qemu-img check: no errors (leaks allowed after a kill -9 when asked)."""
    c = run("qemu-img", "check", path, check=False)
    return c.returncode == 0 or (allow_leaks and c.returncode == 3), c.stdout[-300:]


class Secondary:
    """A secondary vdiskd: its disk exported for the primary's writes, its top (the
    replication node over active -> hidden -> disk) exported for its own client."""

    def __init__(self, vdiskd, d, tag, transport="unix", disk=None):
        self.d, self.tag = d, tag
        self.disk = disk or create(d, tag + "-disk")
        self.active = create(d, tag + "-active")
        self.hidden = create(d, tag + "-hidden")
        self.dm = Daemon(vdiskd, d, tag)
        self.dm.cmd("blockdev-add", **qcow2(self.disk, "colo1"))
        if transport == "tcp":
            self.port = free_port()
            addr = {"type": "inet", "data": {"host": "127.0.0.1", "port": str(self.port)}}
            self.server = {"type": "inet", "host": "127.0.0.1", "port": str(self.port)}
        else:
            sock = "%s/%s.nbd" % (d, tag)
            addr = {"type": "unix", "data": {"path": sock}}
            self.server = {"type": "unix", "path": sock}
            self.sock = sock
        self.dm.cmd("nbd-server-start", addr=addr)
        self.dm.cmd("block-export-add", type="nbd", id="e-colo1", **{"node-name": "colo1"},
                    name="colo1", writable=True)
        # docs/block-replication.txt's secondary: a quorum (the VM's disk, top-id) over the
        # replication node, so that after a failover it can take a new secondary.
        top = {"driver": "replication", "node-name": "rs", "mode": "secondary",
               "top-id": "colo-disk0",
               "file": qcow2(self.active, "active",
                             backing=qcow2(self.hidden, "hidden", backing="colo1"))}
        self.add_top = [self.dm.cmd("blockdev-add", **top),
                        self.dm.cmd("blockdev-add", driver="quorum", children=["rs"],
                                    **read_pattern_fifo())]
        self.dm.cmd("block-export-add", type="nbd", id="e-top",
                    **{"node-name": "colo-disk0"}, name="top", writable=True)
        self.transport = transport

    def connect(self, name):
        h = nbd.NBD()
        h.set_export_name(name)
        if self.transport == "tcp":
            h.connect_tcp("127.0.0.1", str(self.port))
        else:
            h.connect_unix(self.sock)
        return h

    def top_client(self):
        return self.connect("top")


class Primary:
    """A primary vdiskd: the guest's disk is a quorum (fifo, threshold 1) over the local
    disk and, once added, a replication node over an NBD client to the secondary."""

    def __init__(self, vdiskd, d, tag, disk=None):
        self.d, self.tag = d, tag
        self.disk = disk or create(d, tag + "-disk")
        self.dm = Daemon(vdiskd, d, tag)
        self.sock = "%s/%s.nbd" % (d, tag)
        self.dm.cmd("blockdev-add", **qcow2(self.disk, "disk0"))
        self.dm.cmd("blockdev-add", driver="quorum", children=["disk0"],
                    **read_pattern_fifo())
        self.dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": self.sock}})
        self.dm.cmd("block-export-add", type="nbd", id="e-guest",
                    **{"node-name": "colo-disk0"}, name="guest", writable=True)

    def attach(self, sec, n=1):
        return attach(self.dm, sec, n)

    def guest(self):
        h = nbd.NBD()
        h.set_export_name("guest")
        h.connect_unix(self.sock)
        return h


def attach(dm, sec, n):
    """The NBD client to sec's disk and the replication node over it, as the quorum's
    second child (QEMU's docs/block-replication.txt)."""
    r1 = dm.cmd("blockdev-add", driver="nbd", **{"node-name": "nbd-client%d" % n},
                server=sec.server, export="colo1")
    r2 = dm.cmd("blockdev-add", driver="replication", **{"node-name": "rp%d" % n},
                mode="primary", file="nbd-client%d" % n)
    r3 = dm.cmd("x-blockdev-change", parent="colo-disk0", node="rp%d" % n)
    return ok_reply(r1) and ok_reply(r2) and ok_reply(r3), [r1, r2, r3]


def resync(dm, sec, n, w, tag):
    """A new secondary for the quorum colo-disk0 on dm: an NBD client to its disk, a
    mirror from the quorum while the guest writes, then (the guest held) the mirror
    cancelled once ready, which leaves its target in sync, and the replication child
    added over the client (QEMU's COLO docs)."""
    r = [dm.cmd("blockdev-add", driver="nbd", **{"node-name": "nbd-client%d" % n},
                server=sec.server, export="colo1")]
    w.resume()
    r.append(dm.cmd("blockdev-mirror", **{"job-id": "resync%d" % n}, device="colo-disk0",
                    target="nbd-client%d" % n, sync="full"))
    if not all(ok_reply(x) for x in r):
        return result(False, tag + "-mirror", str(r))
    dm.wait(lambda e: e["event"] == "BLOCK_JOB_READY", 120)
    time.sleep(0.5)
    w.pause()
    r.append(dm.cmd("block-job-cancel", device="resync%d" % n))
    end = dm.wait(lambda e: e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), 60)
    r.append(dm.cmd("blockdev-add", driver="replication", **{"node-name": "rp%d" % n},
                    mode="primary", file="nbd-client%d" % n))
    r.append(dm.cmd("x-blockdev-change", parent="colo-disk0", node="rp%d" % n))
    return result(all(ok_reply(x) for x in r) and end["event"] == "BLOCK_JOB_COMPLETED",
                  tag + "-resync", str((r, end)))


class Writer(threading.Thread):
    """Seeded random writes (4 KiB to 256 KiB, 4 KiB aligned) through one NBD handle; the
    model holds every acknowledged byte. pause()/resume() hold it between writes."""

    def __init__(self, h, seed, model=None):
        super().__init__(daemon=True)
        self.h, self.rng = h, random.Random(seed)
        self.model = model if model is not None else bytearray(SIZE)
        self.go = threading.Event()
        self.idle = threading.Event()
        self.stop = False
        self.writes = 0
        self.error = None

    def run(self):
        while not self.stop:
            if not self.go.is_set():
                self.idle.set()
                self.go.wait(0.05)
                continue
            self.idle.clear()
            n = self.rng.randrange(1, 65) * 4096
            off = self.rng.randrange(0, (SIZE - n) // 4096 + 1) * 4096
            data = self.rng.randbytes(n)
            try:
                self.h.pwrite(data, off)
            except nbd.Error as e:
                self.error = e
                self.idle.set()
                return
            self.model[off:off + n] = data
            self.writes += 1
        self.idle.set()

    def resume(self):
        self.go.set()

    def pause(self):
        self.go.clear()
        while not self.idle.wait(0.05):
            if not self.is_alive():
                break

    def finish(self):
        self.stop = True
        self.go.set()
        self.join(30)


def read_all(h):
    out = bytearray()
    for off in range(0, SIZE, 8 * MiB):
        out += h.pread(8 * MiB, off)
    return bytes(out)


def first_diff(a, b):
    for off in range(0, len(a), MiB):
        if a[off:off + MiB] != b[off:off + MiB]:
            for i in range(off, off + MiB):
                if a[i] != b[i]:
                    return i
    return -1


def checkpoint(p, s):
    """QEMU's order: the secondary, then the primary (daemons)."""
    r1 = s.cmd("xen-colo-do-checkpoint")
    r2 = p.cmd("xen-colo-do-checkpoint")
    return ok_reply(r1) and ok_reply(r2), (r1, r2)


def start_replication(p, s):
    r1 = s.cmd("xen-set-replication", enable=True, primary=False)
    r2 = p.cmd("xen-set-replication", enable=True, primary=True)
    return ok_reply(r1) and ok_reply(r2), (r1, r2)


def run_intervals(p, guest, s, top, w, sw, seconds, tag):
    """Writes for about a second, then a checkpoint with both writers held; the primary's
    guest disk and the secondary's top compared after each (p, s: daemons; guest, top:
    NBD handles). Returns (ok, what the primary held at the last checkpoint)."""
    last = None
    count = 0
    end = time.time() + seconds
    while time.time() < end:
        w.resume()
        if sw:
            sw.resume()
        time.sleep(0.8)
        w.pause()
        if sw:
            sw.pause()
        if w.error or (sw and sw.error):
            return result(False, tag + "-writes", str(w.error or sw.error)), None
        good, rs = checkpoint(p, s)
        if not good:
            return result(False, tag + "-checkpoint", str(rs)), None
        prim, mirror = read_all(guest), read_all(top)
        count += 1
        if prim != mirror:
            return result(False, tag + "-equal", "checkpoint %d: first difference at %d"
                          % (count, first_diff(prim, mirror))), None
        if prim != bytes(w.model):
            return result(False, tag + "-model", "checkpoint %d: the primary lost a write "
                          "at %d" % (count, first_diff(prim, bytes(w.model)))), None
        last = prim
    return result(count > 0, tag + "-checkpoints", "none ran"), last


# ---- colo: checkpoints, then the primary dies -------------------------------------------

def colo_main(vdiskd, d, transport, seconds):
    tag = "colo-" + transport
    s = Secondary(vdiskd, d, "s-" + transport, transport)
    p = Primary(vdiskd, d, "p-" + transport)
    good, rs = p.attach(s)
    ok = result(good and all(ok_reply(x) for x in s.add_top), tag + "-graph",
                str((rs, s.add_top)))
    good, rs = start_replication(p.dm, s.dm)
    ok = result(good, tag + "-start", str(rs)) and ok
    if not ok:
        return False
    guest, top = p.guest(), s.top_client()
    w = Writer(p.guest(), 1)
    sw = Writer(s.top_client(), 2)
    w.start()
    sw.start()
    good, last = run_intervals(p.dm, guest, s.dm, top, w, sw, seconds, tag)
    ok = good and ok
    if last is None:
        return False
    st = p.dm.cmd("query-xen-replication-status")
    ok = result(st.get("return") == {"error": False}, tag + "-status", str(st)) and ok
    # The primary dies mid-write (the secondary's own client is idle from here on).
    sw.finish()
    writes_before = w.writes
    w.resume()
    time.sleep(0.3 + random.Random(3).random() * 0.4)
    p.dm.p.send_signal(signal.SIGKILL)
    p.dm.p.wait()
    w.finish()
    ok = result(w.writes > writes_before, tag + "-killed-mid-write",
                "no write after the last checkpoint") and ok
    # Failover: the primary's NBD export goes first (QEMU's COLO docs stop the server).
    s.dm.cmd("block-export-del", id="e-colo1")
    t0 = time.time()
    r = s.dm.cmd("xen-set-replication", enable=False, primary=False, failover=True)
    took = time.time() - t0
    ok = result(ok_reply(r), tag + "-failover", str(r)) and ok
    now = read_all(top)
    ok = result(now == last, tag + "-failover-equal",
                "first difference at %d" % first_diff(now, last)) and ok
    st = s.dm.cmd("query-xen-replication-status")
    ok = result(st.get("return") == {"error": False}, tag + "-status-after",
                str(st)) and ok
    nodes = s.dm.cmd("query-named-block-nodes").get("return", [])
    names = sorted(n["node-name"] for n in nodes if not n["node-name"].startswith("#"))
    ok = result(names == ["colo-disk0", "colo1", "rs"], tag + "-layers-gone",
                str(names)) and ok
    # The survivor serves as the primary and takes a new secondary: a mirror from its
    # quorum brings the new disk in sync, then replication restarts.
    s3 = Secondary(vdiskd, d, "s3-" + transport, transport)
    w = Writer(s.top_client(), 4, bytearray(now))
    w.start()
    ok = resync(s.dm, s3, 9, w, tag + "-new-secondary") and ok
    good, rs = start_replication(s.dm, s3.dm)
    ok = result(good, tag + "-restart", str(rs)) and ok
    top3 = s3.top_client()
    good, last = run_intervals(s.dm, top, s3.dm, top3, w, None, 3, tag + "-protected")
    ok = good and ok
    w.finish()
    top.shutdown()
    top3.shutdown()
    del guest
    for dm in (s.dm, s3.dm):
        rc = dm.quit()
        ok = result(rc == 0, tag + "-quit-" + dm.tag, "status %s" % rc) and ok
    # The first secondary's disk holds the last checkpoint, and what came after.
    if last is not None:
        run("qemu-img", "convert", "-O", "raw", s.disk, s.disk + ".raw")
        with open(s.disk + ".raw", "rb") as f:
            disk = f.read()
        os.unlink(s.disk + ".raw")
        ok = result(disk == last, tag + "-disk-equal",
                    "first difference at %d" % first_diff(disk, last)) and ok
    for path, leaks in ((s.disk, False), (s.active, False), (s.hidden, False),
                        (s3.disk, False), (p.disk, True)):
        good, out = check_image(path, leaks)
        ok = result(good, tag + "-check-" + os.path.basename(path), out) and ok
    print("INFO %s: failover %.3f s" % (tag, took), flush=True)
    return ok


# ---- lost: the secondary dies, a new one is brought in ------------------------------------

def lost_main(vdiskd, d):
    tag = "lost"
    s = Secondary(vdiskd, d, "ls1")
    p = Primary(vdiskd, d, "lp")
    good, rs = p.attach(s)
    ok = result(good, tag + "-graph", str(rs))
    good, rs = start_replication(p.dm, s.dm)
    ok = result(good, tag + "-start", str(rs)) and ok
    guest, top = p.guest(), s.top_client()
    w = Writer(p.guest(), 11)
    w.start()
    good, last = run_intervals(p.dm, guest, s.dm, top, w, None, 3, tag + "-before")
    ok = good and ok
    # The secondary dies while the primary writes.
    w.resume()
    time.sleep(0.3)
    s.dm.p.send_signal(signal.SIGKILL)
    s.dm.p.wait()
    time.sleep(1.0)
    w.pause()
    ok = result(w.error is None and w.writes > 0, tag + "-writes-go-on", str(w.error)) and ok
    bad = p.dm.wait(lambda e: e["event"] == "QUORUM_REPORT_BAD", 10)
    data = bad.get("data", {})
    ok = result(data.get("node-name") == "rp1" and data.get("type") == "write" and
                "error" in data, tag + "-report-bad", str(bad)) and ok
    st = p.dm.cmd("query-xen-replication-status")
    ok = result(st.get("return") == {"error": True, "desc": "I/O error occurred"},
                tag + "-status", str(st)) and ok
    prim = read_all(guest)
    ok = result(prim == bytes(w.model), tag + "-nothing-lost",
                "first difference at %d" % first_diff(prim, bytes(w.model))) and ok
    # The failed child goes; a new secondary comes, brought in sync by a mirror while the
    # guest writes.
    r = [p.dm.cmd("x-blockdev-change", parent="colo-disk0", child="children.1"),
         p.dm.cmd("blockdev-del", **{"node-name": "rp1"}),
         p.dm.cmd("blockdev-del", **{"node-name": "nbd-client1"})]
    ok = result(all(ok_reply(x) for x in r), tag + "-child-removed", str(r)) and ok
    s2 = Secondary(vdiskd, d, "ls2")
    ok = resync(p.dm, s2, 2, w, tag) and ok
    good, rs = start_replication(p.dm, s2.dm)
    ok = result(good, tag + "-restart", str(rs)) and ok
    top2 = s2.top_client()
    good, last = run_intervals(p.dm, guest, s2.dm, top2, w, None, 3, tag + "-after")
    ok = good and ok
    st = p.dm.cmd("query-xen-replication-status")
    ok = result(st.get("return") == {"error": False}, tag + "-status-after", str(st)) and ok
    w.finish()
    guest.shutdown()
    top2.shutdown()
    for dm in (p.dm, s2.dm):
        rc = dm.quit()
        ok = result(rc == 0, tag + "-quit-" + dm.tag, "status %s" % rc) and ok
    for path, leaks in ((p.disk, False), (s2.disk, False), (s.disk, True)):
        good, out = check_image(path, leaks)
        ok = result(good, tag + "-check-" + os.path.basename(path), out) and ok
    return ok


# ---- refusals ------------------------------------------------------------------------------

def option_session(dm, d, tag):
    disk = create(d, tag + "-o")
    dm.cmd("blockdev-add", **qcow2(disk, "o1"))
    out = []
    for args in ({"mode": "secondary"}, {"mode": "primary", "top-id": "x"},
                 {"mode": "both"}, {}):
        a = {"driver": "replication", "node-name": "r", "file": "o1"}
        a.update(args)
        out.append(dm.cmd("blockdev-add", **a))
    return out


def refusals_main(vdiskd, qsd, d):
    ok = True
    mine = option_session(Daemon(vdiskd, d, "ov"), d, "ov")
    theirs = option_session(Daemon(qsd, d, "oq"), d, "oq")
    ok = result(mine == theirs, "refusals-options", "vdiskd %s, qsd %s" % (mine, theirs))
    # A wrong graph: the active disk has no backing file.
    s = Secondary(vdiskd, d, "rs1")
    dm = s.dm
    disk = create(d, "rs1-flat")
    dm.cmd("blockdev-add", driver="replication", **{"node-name": "flat"}, mode="secondary",
           **{"top-id": "flat"}, file=qcow2(disk))
    r = dm.cmd("xen-set-replication", enable=True, primary=False)
    ok = result(desc(r) == "Active disk doesn't have backing file", "refusals-graph",
                str(r)) and ok
    st = dm.cmd("query-xen-replication-status")
    ok = result(st.get("return") == {"error": True, "desc": "Block replication is not "
                                     "running"}, "refusals-graph-status", str(st)) and ok
    dm.cmd("blockdev-del", **{"node-name": "flat"})
    r = [dm.cmd("xen-colo-do-checkpoint"),
         dm.cmd("xen-set-replication", enable=False, primary=False),
         dm.cmd("xen-set-replication", enable=True, primary=True),
         dm.cmd("xen-set-replication", enable=True, primary=False, failover=True)]
    want = ["Block replication is not running", "Block replication is not running",
            "The parameter mode's value is invalid, needs 1, but got 0",
            "Parameter 'failover' is only for stopping replication"]
    ok = result([desc(x) for x in r] == want, "refusals-order", str(r)) and ok
    # Started, then stopped twice (no failover: the buffers are dropped, the disk kept).
    h = s.connect("colo1")
    h.pwrite(b"\x11" * MiB, 0)
    r = [dm.cmd("xen-set-replication", enable=True, primary=False),
         dm.cmd("xen-set-replication", enable=False, primary=False),
         dm.cmd("xen-set-replication", enable=False, primary=False)]
    ok = result(ok_reply(r[0]) and ok_reply(r[1]) and
                desc(r[2]) == "Block replication is not running", "refusals-stop-twice",
                str(r)) and ok
    t = s.top_client()
    ok = result(t.pread(MiB, 0) == b"\x11" * MiB, "refusals-stop-kept", "") and ok
    t.shutdown()
    h.shutdown()
    dm.quit()
    # The secondary is killed while it empties its buffers: the primary goes on, its data
    # whole; the secondary's images are not corrupt.
    s = Secondary(vdiskd, d, "rs2")
    p = Primary(vdiskd, d, "rp")
    p.attach(s)
    start_replication(p.dm, s.dm)
    w = Writer(p.guest(), 21)
    w.start()
    w.resume()
    time.sleep(1.0)
    w.pause()
    s.dm.c.sock.sendall(b'{"execute": "xen-colo-do-checkpoint"}\n')
    time.sleep(0.002)
    s.dm.p.send_signal(signal.SIGKILL)
    s.dm.p.wait()
    r = p.dm.cmd("xen-colo-do-checkpoint")
    w.resume()
    time.sleep(0.5)
    w.pause()
    st = p.dm.cmd("query-xen-replication-status")
    g = p.guest()
    prim = read_all(g)
    g.shutdown()
    ok = result(ok_reply(r) and w.error is None and
                st.get("return") == {"error": True, "desc": "I/O error occurred"} and
                prim == bytes(w.model), "refusals-secondary-dies-in-checkpoint",
                "%s %s %s equal=%s" % (r, w.error, st, prim == bytes(w.model))) and ok
    w.finish()
    ok = result(p.dm.quit() == 0, "refusals-primary-quit", "") and ok
    for path in (s.disk, s.active, s.hidden, p.disk):
        good, out = check_image(path, True)
        ok = result(good, "refusals-check-" + os.path.basename(path), out) and ok
    return ok


def main():
    mode = sys.argv[1]
    if mode == "colo":
        ok = colo_main(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif mode == "lost":
        ok = lost_main(sys.argv[2], sys.argv[3])
    elif mode == "refusals":
        ok = refusals_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("unknown mode " + mode)
    for p in STARTED:
        if p.poll() is None:
            p.kill()
            p.wait()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
