#!/usr/bin/env python3
"""The quorum driver and x-blockdev-change on vdiskd, against qemu-storage-daemon.

  qmp_quorum.py compare VDISKD QSD DIR  the same sessions on both daemons, side by side:
                                        refused options and changes (every reply equal);
                                        reads through an NBD export over a corrupted
                                        child, failing children and a failing vote, with
                                        the QUORUM_REPORT_BAD / QUORUM_FAILURE events each
                                        daemon sends, per node, through QEMU's one-a-second
                                        limit; children added and removed under I/O (the
                                        roles they get, the nodes that go); a mirror from a
                                        quorum. Replies, events and resulting files equal.
  qmp_quorum.py load VDISKD DIR         vdiskd alone: writes through the export while a
                                        child comes and goes (threshold 1, fifo), every one
                                        acknowledged and on the children that stayed;
                                        blkverify's mismatch failing the read (QEMU exits).

Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import json
import os
import subprocess
import sys
import threading
import time

from qmp_mirror import Daemon
from qmp_session import result

MiB = 1 << 20
SIZE = 4 * MiB


def run(*args, check=False):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def raw_image(path, fill=0x11, bad=None, size=SIZE):
    """size bytes of `fill`, with (offset, length, byte) overwritten where bad says."""
    with open(path, "wb") as f:
        f.write(bytes([fill]) * size)
        if bad:
            f.seek(bad[0])
            f.write(bytes([bad[2]]) * bad[1])


def raw(name, path, fail=None):
    """A raw child named `name` over path; fail: (event, iotype) of a blkdebug rule that
    fails every request of that type from the event on (QEMU's rule semantics)."""
    f = {"driver": "file", "filename": path}
    if fail:
        f = {"driver": "blkdebug", "image": f,
             "inject-error": [{"event": fail[0], "iotype": fail[1], "errno": 28}]}
    return {"driver": "raw", "node-name": name, "file": f}


def qemu_io(uri, *cmds):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    r = run(*(args + [uri]))
    # the numbers of a timing line differ from run to run; the verdicts do not
    out = [line for line in (r.stdout + r.stderr).splitlines()
           if "ops/sec" not in line]
    return out


def export(dm, node, d, tag, writable=True):
    sock = "%s/%s.nbd" % (d, tag)
    if not getattr(dm, "nbd_started", False):
        dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        dm.nbd_started = True
    dm.cmd("block-export-add", type="nbd", id="e-" + node, **{"node-name": node},
           name=node, writable=writable)
    return "nbd+unix:///%s?socket=%s" % (node, sock)


# ---- the sessions (each runs the same on both daemons; returns what else to compare) --------

def s_refusals(dm, d, tag):
    img = lambda i: "%s/c%d.raw" % (d, i)
    for i in range(4):
        raw_image(img(i))
    raw_image(img(9), size=2 * SIZE)
    kids = [raw("r%d" % i, img(i)) for i in range(3)]
    q = lambda **a: dm.cmd("blockdev-add", driver="quorum", **a)
    q(**{"node-name": "q0"}, children=kids)
    q(**{"node-name": "q0", "vote-threshold": 0}, children=kids)
    q(**{"node-name": "q0", "vote-threshold": 4}, children=kids)
    q(**{"node-name": "q0", "vote-threshold": 1}, children=[])
    q(**{"node-name": "q0", "vote-threshold": 1})
    q(**{"node-name": "q0"})
    q(**{"node-name": "q0", "vote-threshold": 1, "read-pattern": "x"}, children=kids)
    q(**{"node-name": "q0", "vote-threshold": 1, "blkverify": True}, children=kids[:2])
    q(**{"node-name": "q0", "vote-threshold": 2, "blkverify": True,
         "rewrite-corrupted": True}, children=kids[:2])
    q(**{"node-name": "q0", "vote-threshold": 1, "blkverify": "x"}, children=kids)
    q(**{"node-name": "q0", "vote-threshold": 1, "children": {"a": 1}})
    q(**{"node-name": "q0", "vote-threshold": 1}, children=["nosuch"])
    q(**{"node-name": "q0", "vote-threshold": 1, "foo": 1}, children=kids)
    q(**{"node-name": "q0", "vote-threshold": 1}, children=[kids[0], raw("big", img(9))])
    q(**{"node-name": "q0", "vote-threshold": 2}, children=kids)
    q(**{"node-name": "q0", "vote-threshold": 2}, children=kids)
    dm.cmd("blockdev-add", driver="raw", **{"node-name": "a3"},
           file={"driver": "file", "filename": img(3)})
    dm.cmd("blockdev-add", driver="raw", **{"node-name": "top"}, file="q0")
    ch = lambda **a: dm.cmd("x-blockdev-change", **a)
    ch(parent="q0")
    ch(parent="q0", child="children.1", node="a3")
    ch(parent="nosuch", child="children.1")
    ch(parent="r0", child="file")
    ch(parent="r0", node="a3")
    ch(parent="q0", child="children.7")
    ch(parent="q0", child="file")
    ch(parent="q0", node="nosuch")
    ch(parent="q0", node="r1")
    ch(parent="q0", node="top")
    ch(parent="q0", node="q0")
    dm.cmd("blockdev-del", **{"node-name": "r1"})
    dm.cmd("blockdev-del", **{"node-name": "q0"})
    ch(parent="q0", child="children.0")
    ch(parent="q0", child="children.1")
    ch(parent="q0", child="children.0")
    ch(parent="q0", child="children.2")
    dm.cmd("blockdev-del", **{"node-name": "top"})
    dm.cmd("blockdev-del", **{"node-name": "q0"})
    return []


def s_events(dm, d, tag):
    """Reads and writes through exports; the events are compared per node afterwards."""
    img = lambda n: "%s/%s.raw" % (d, n)
    for n in ("v0", "v1", "w1", "f1"):
        raw_image(img(n))
    raw_image(img("v2"), bad=(4096, 4096, 0x22))
    raw_image(img("w0"))
    raw_image(img("f0"))
    raw_image(img("f2"), bad=(4096, 4096, 0x33))
    dm.cmd("blockdev-add", driver="quorum", **{"node-name": "qv", "vote-threshold": 2},
           children=[raw("v0", img("v0")), raw("v1", img("v1")), raw("v2", img("v2"))])
    dm.cmd("blockdev-add", driver="quorum", **{"node-name": "qw", "vote-threshold": 1,
                                               "read-pattern": "fifo"},
           children=[raw("w0", img("w0"), ("write_aio", "write")), raw("w1", img("w1"))])
    dm.cmd("blockdev-add", driver="quorum", **{"node-name": "qf", "vote-threshold": 2},
           children=[raw("f0", img("f0"), ("read_aio", "read")), raw("f1", img("f1")),
                     raw("f2", img("f2"))])
    uv, uw, uf = (export(dm, n, d, tag) for n in ("qv", "qw", "qf"))
    # A burst on one child within a second (one client, so that it is one on any
    # machine): the first goes out at once, the last when the second ends, the one
    # between is dropped; a read all children agree on reports nothing.
    dm.log.append(("reply", "io", qemu_io(uv, "read -P 0x11 4096 4096",
                                          "read -P 0x11 1000 8000", "read -P 0x11 0 4096",
                                          "read -P 0x11 4096 512")))
    # threshold 1: a child's write fails, the quorum's stands (and fifo then reads the
    # stale first child, as QEMU's does)
    dm.log.append(("reply", "io", qemu_io(uw, "write -P 0x55 0 64k", "read -P 0x55 0 64k")))
    # reads that fail the vote, and one that two children carry (a failed read ends each
    # client: after one, qemu-storage-daemon's export fails what the client asks next)
    dm.log.append(("reply", "io", qemu_io(uf, "read 4096 4096")))
    dm.log.append(("reply", "io", qemu_io(uf, "read -P 0x11 0 512", "write -P 0x66 1M 4096",
                                          "read 5000 100")))
    time.sleep(2.5)       # the held events go out, the windows close
    dm.cmd("query-version")
    # a fresh window: sent at once again
    dm.log.append(("reply", "io", qemu_io(uv, "read -P 0x11 8000 200")))
    time.sleep(0.5)
    dm.cmd("query-version")
    return [("twin", "%s/%s.raw" % (d, n), "raw") for n in ("w0", "w1", "f0", "f1", "f2")]


def s_change(dm, d, tag):
    img = lambda n: "%s/%s.qcow2" % (d, n)
    for n in ("k0", "k1", "a2", "a3", "a4"):
        run("qemu-img", "create", "-q", "-f", "qcow2", img(n), str(SIZE))
    qc = lambda n: {"driver": "qcow2", "node-name": n,
                    "file": {"driver": "file", "filename": img(n)}}
    dm.cmd("blockdev-add", driver="quorum", **{"node-name": "q0", "vote-threshold": 1},
           children=[qc("k0"), qc("k1")])
    for n in ("a2", "a3", "a4"):
        dm.cmd("blockdev-add", **qc(n))
    uri = export(dm, "q0", d, tag)
    names = lambda: dm.cmd("query-named-block-nodes")
    ch = lambda **a: dm.cmd("x-blockdev-change", parent="q0", **a)
    ch(node="a2")
    ch(node="a3")
    dm.log.append(("reply", "io", qemu_io(uri, "write -P 0x21 0 1M")))
    ch(child="children.1")
    ch(node="a4")
    ch(child="children.4")
    ch(node="a4")
    # a discard does nothing: QEMU's quorum has none
    dm.log.append(("reply", "io", qemu_io(uri, "write -P 0x22 1M 1M", "discard 0 64k",
                                          "read -P 0x21 0 1M")))
    # the role each child has now, as a permission conflict names it
    for n in ("k0", "a2", "a3", "a4"):
        dm.cmd("block-export-add", type="nbd", id="x-" + n, **{"node-name": n},
               writable=True)
    ch(child="children.2")
    ch(child="children.0")
    ch(child="children.3")
    ch(child="children.4")
    dm.log.append(("reply", "nodes", sorted(n["node-name"] for n in names()["return"]
                                            if not n["node-name"].startswith("#"))))
    dm.cmd("blockdev-del", **{"node-name": "a2"})
    dm.cmd("blockdev-del", **{"node-name": "a4"})
    dm.cmd("block-export-del", id="e-q0")
    time.sleep(0.2)
    dm.cmd("blockdev-del", **{"node-name": "q0"})
    dm.log.append(("reply", "nodes", sorted(n["node-name"] for n in names()["return"]
                                            if not n["node-name"].startswith("#"))))
    return [("twin", img(n), "qcow2") for n in ("k0", "a2", "a3", "a4")]


def s_mirror(dm, d, tag):
    img = lambda n: "%s/%s.raw" % (d, n)
    for n in ("m0", "m1"):
        raw_image(img(n), fill=0)
        with open(img(n), "r+b") as f:
            f.seek(MiB)
            f.write(bytes([0x44]) * MiB)
    tgt = "%s/tgt.qcow2" % d
    run("qemu-img", "create", "-q", "-f", "qcow2", tgt, str(SIZE))
    dm.cmd("blockdev-add", driver="quorum", **{"node-name": "q0", "vote-threshold": 1,
                                               "read-pattern": "fifo"},
           children=[raw("m0", img("m0")), raw("m1", img("m1"))])
    dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "t0"},
           file={"driver": "file", "filename": tgt})
    uri = export(dm, "q0", d, tag)
    dm.log.append(("reply", "map", run("qemu-img", "map", "--output=json", "-f", "raw",
                                       uri).stdout))
    dm.cmd("blockdev-mirror", **{"job-id": "m", "device": "q0", "target": "t0",
                                 "sync": "full"})
    dm.status("m", "ready")
    dm.log.append(("reply", "io", qemu_io(uri, "write -P 0x45 3M 64k")))
    dm.cmd("job-complete", id="m")
    dm.status("m", "null")
    dm.cmd("blockdev-del", **{"node-name": "q0"})
    return [("pair", img("m0"), "raw", tgt, "qcow2")]


SESSIONS = [("refusals", s_refusals), ("events", s_events), ("change", s_change),
            ("mirror", s_mirror)]

JOB_TIMING = {"len", "offset", "current-progress", "total-progress", "busy"}


def normal(v):
    if isinstance(v, dict):
        return {k: normal(x) for k, x in v.items() if k not in JOB_TIMING}
    if isinstance(v, list):
        return [normal(x) for x in v]
    return v


def digest(dm, sub):
    """The replies in order (directory names made alike), and each source's events in
    order: a quorum event's source is its node, a job's its id."""
    replies = []
    for _, name, r in dm.log:
        if name in ("query-named-block-nodes", "query-version"):
            r = {"ok": "return" in r}
        replies.append((name, normal(json.loads(json.dumps(r).replace(sub, "DIR")))))
    per_source = {}
    for e in dm.events():
        if not e["event"].startswith(("QUORUM_", "JOB_", "BLOCK_JOB_")):
            continue    # vdiskd sends no BLOCK_EXPORT_DELETED at quit (README)
        data = e.get("data", {})
        src = data.get("node-name") or data.get("reference") or data.get("id") or \
            data.get("device")
        # as (member, value) pairs: the members' order is compared too
        per_source.setdefault("%s %s" % (e["event"], src), []).append(
            list(normal(data).items()))
    return replies, per_source


def one_run(binary, d, name, fn, tag, out):
    sub = "%s/%s-%s" % (d, name, tag)
    os.makedirs(sub, exist_ok=True)
    dm = Daemon(binary, sub, tag)
    try:
        pairs = fn(dm, sub, tag)
        dm._pump(0.5)
    except Exception as e:  # noqa: BLE001 - a stuck or broken session is a failure
        pairs = []
        dm.log.append(("reply", "exception", {"error": repr(e)}))
    rc = dm.quit()
    out[tag] = (digest(dm, sub), pairs, rc)


def compare_main(vdiskd, qsd, d):
    ok = True
    for name, fn in SESSIONS:
        out = {}
        threads = [threading.Thread(target=one_run, args=(b, d, name, fn, t, out))
                   for t, b in (("vd", vdiskd), ("qsd", qsd))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ((ra, ea), pairs, rc), ((rb, eb), _, _) = out["vd"], out["qsd"]
        why = []
        for i, (x, y) in enumerate(zip(ra, rb)):
            if x != y:
                why.append("reply %d: %s\n    vs %s" % (i, json.dumps(x), json.dumps(y)))
        if len(ra) != len(rb):
            why.append("%d vs %d replies" % (len(ra), len(rb)))
        for src in sorted(set(ea) | set(eb)):
            if ea.get(src) != eb.get(src):
                why.append("events of %s:\n    vdiskd %s\n    qsd    %s" %
                           (src, ea.get(src), eb.get(src)))
        if rc != 0:
            why.append("vdiskd exit status %s" % rc)
        for tag in ("vd", "qsd"):
            why += ["%s: %s" % (tag, r) for n, r in out[tag][0][0] if n == "exception"]
        ok &= result(not why, "quorum-%s-matches-qsd" % name, "\n  ".join(why[:8]))
        # files: each against its twin of the qsd run, or the pair of the vdiskd run
        for item in pairs:
            if item[0] == "twin":
                a, fa = item[1], item[2]
                b, fb = a.replace("/%s-vd/" % name, "/%s-qsd/" % name), fa
            else:
                a, fa, b, fb = item[1:]
            c = run("qemu-img", "compare", "-q", "-f", fa, "-F", fb, a, b)
            ok &= result(c.returncode == 0, "quorum-%s-data-%s" % (name, os.path.basename(a)),
                         c.stdout + c.stderr)
    return ok


# ---- vdiskd alone -------------------------------------------------------------------------------

def load_main(vdiskd, d):
    """COLO's primary shape: a fifo quorum of threshold 1 whose second child reaches an
    NBD export (here the daemon's own), added and removed while writes run."""
    ok = True
    sub = "%s/load" % d
    os.makedirs(sub, exist_ok=True)
    img = lambda n: "%s/%s.raw" % (sub, n)
    for n in ("p0", "p1", "s0"):
        raw_image(img(n), fill=0)
    raw_image(img("s1"), fill=0, bad=(0, 512, 0x99))
    dm = Daemon(vdiskd, sub, "ld")
    dm.cmd("blockdev-add", driver="quorum", **{"node-name": "q0", "vote-threshold": 1,
                                               "read-pattern": "fifo"},
           children=[raw("p0", img("p0"))])
    dm.cmd("blockdev-add", **raw("p1", img("p1")))
    uri = export(dm, "q0", sub, "ld")
    export(dm, "p1", sub, "ld")
    r = dm.cmd("blockdev-add", driver="raw", **{"node-name": "n1"},
               file={"driver": "nbd", "export": "p1",
                     "server": {"type": "unix", "path": "%s/ld.nbd" % sub}})
    ok &= result("return" in r, "load-nbd-child", str(r))
    cmds = []
    for i in range(2000):
        cmds.append("write -P 0x%x %d 64k" % (0x10 + i % 200, (i % 64) * 65536))
    log = open("%s/writer.out" % sub, "w+")   # a file: a pipe would fill up unread
    writer = subprocess.Popen(["qemu-io", "-f", "raw"] + sum((["-c", c] for c in cmds), []) +
                              [uri], stdout=log, stderr=subprocess.STDOUT)
    changes = []
    while writer.poll() is None:
        changes.append(dm.cmd("x-blockdev-change", parent="q0", node="n1"))
        time.sleep(0.005)
        changes.append(dm.cmd("x-blockdev-change", parent="q0", child="children.1"))
    writer.wait(timeout=120)
    log.seek(0)
    out = log.read()
    log.close()
    wrote = out.count("wrote 65536/65536")
    print("# %d changes while the writer ran" % len(changes))
    ok &= result(all("return" in c for c in changes) and len(changes) >= 6,
                 "load-changes-under-writes", "%d changes: %s" %
                 (len(changes), [c for c in changes if "return" not in c][:3]))
    ok &= result(wrote == 2000 and writer.returncode == 0, "load-writes-acknowledged",
                 "%d of 2000: %s" % (wrote, out[-300:]))
    # the child that stayed has every write, the last pattern per offset
    with open(img("p0"), "rb") as f:
        data = f.read()
    expect = bytearray(SIZE)
    for i in range(2000):
        off = (i % 64) * 65536
        expect[off:off + 65536] = bytes([0x10 + i % 200]) * 65536
    ok &= result(data == bytes(expect), "load-child-holds-every-write")
    # attached again, the NBD child gets what the quorum is given
    dm.cmd("x-blockdev-change", parent="q0", node="n1")
    r = qemu_io(uri, "write -P 0x7e 2M 64k")
    with open(img("p1"), "rb") as f:
        f.seek(2 * MiB)
        got = f.read(65536)
    ok &= result(got == bytes([0x7e]) * 65536, "load-nbd-child-written", str(r))
    # blkverify: QEMU ends the process at a mismatch; vdiskd fails the read and goes on
    dm.cmd("blockdev-add", driver="quorum", **{"node-name": "bv", "vote-threshold": 2,
                                               "blkverify": True},
           children=[raw("s0", img("s0")), raw("s1", img("s1"))])
    ubv = export(dm, "bv", sub, "ld")
    r = qemu_io(ubv, "read 0 4096", "read -P 0 4096 4096")
    ok &= result(any("read failed: Input/output error" in x for x in r) and
                 any("read 4096/4096 bytes at offset 4096" in x for x in r),
                 "load-blkverify-mismatch-fails-read", str(r))
    ok &= result("return" in dm.cmd("query-version"), "load-daemon-alive")
    ok &= result(dm.quit() == 0, "load-exit")
    return ok


def main():
    mode = sys.argv[1]
    if mode == "compare":
        ok = compare_main(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "load":
        ok = load_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown mode " + mode)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
