#!/usr/bin/env python3
"""block-commit and block-stream on vdiskd, against qemu-storage-daemon.

  qmp_history.py events VDISKD QSD DIR  the same sessions on both daemons over identical
                                        chains (absolute paths): intermediate commit, active
                                        commit with manual finalize, stream with and without
                                        base-node, refusals, on-error report/stop/ignore on
                                        a failing base write, cancel mid-job; replies and
                                        events equal, job by job; the chains' backing
                                        strings equal, contents equal, images check clean
  qmp_history.py load VDISKD DIR        each job while a writer writes the active layer
                                        over NBD: contents equal a raw reference with the
                                        same writes applied
  qmp_history.py crash VDISKD DIR       kill -9 mid-commit: images check clean, every
                                        acknowledged write there; the commit run again
                                        gives the reference's contents

Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import json
import re
import os
import random
import subprocess
import sys
import threading
import time

from qmp_mirror import Daemon, run, qemu_io
from qmp_session import result

MiB = 1 << 20
SIZE = 64 * MiB


def chain(d, tag, n=4):
    """A chain l0 <- l1 <- ... with a pattern of its own in each layer, some overlapping."""
    paths = []
    for i in range(n):
        p = "%s/%s-l%d.qcow2" % (d, tag, i)
        if i == 0:
            run("qemu-img", "create", "-q", "-f", "qcow2", p, str(SIZE))
        else:
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", paths[-1], "-F", "qcow2", p)
        qemu_io(p, "write -P 0x%x %dM 3M" % (0x10 + i, i * 2),
                "write -z %dM 1M" % (20 + i), "write -P 0x%x %dM 64k" % (0x30 + i, 40 + i))
        paths.append(p)
    return paths


def add_chain(dm, tag, paths, base_file=None):
    for i, p in enumerate(paths):
        a = {"node-name": "%s%d" % (tag, i)}
        if i:
            a["backing"] = "%s%d" % (tag, i - 1)
        f = {"driver": "file", "filename": p}
        if i == 0 and base_file:
            f = dict(base_file, image=f)
        r = dm.cmd("blockdev-add", driver="qcow2", file=f, **a)
        assert "return" in r, r


def backing_strings(path):
    """(image, its backing string) down the chain, as far as it opens."""
    out = []
    while path:
        r = run("qemu-img", "info", "-U", "--output=json", path, check=False)
        if r.returncode != 0:
            break
        x = json.loads(r.stdout)
        out.append((os.path.basename(path), x.get("backing-filename")))
        path = x.get("full-backing-filename")
    return out


def job_events(dm, job):
    out = []
    for e in dm.events():
        d = e["data"]
        if d.get("id") == job or d.get("device") == job:
            out.append((e["event"], {k: v for k, v in d.items()}))
    return out


def norm(x, d, tag):
    """Paths and file names made the same for both daemons' directories."""
    t = re.sub(r"\b%s([a-z]+)-l" % tag, r"T\1-l", json.dumps(x).replace(d, "D"))
    return json.loads(t)


# ---- sessions: each returns the chains' top images to compare -----------------------------

def s_intermediate(dm, d, tag):
    p = chain(d, tag + "i")
    add_chain(dm, "i", p)
    dm.cmd("block-commit", device="i3", **{"job-id": "ci", "top-node": "i2",
                                          "base-node": "i0"})
    dm.status("ci", "null")
    dm.cmd("query-jobs")
    return [p[3]]


def s_backing_file(dm, d, tag):
    p = chain(d, tag + "f")
    add_chain(dm, "f", p)
    dm.cmd("block-commit", device="f3", **{"job-id": "cf", "top-node": "f1", "base-node": "f0",
                                          "backing-file": "renamed-base.qcow2",
                                          "auto-dismiss": False})
    dm.status("cf", "concluded")
    dm.cmd("query-jobs")
    dm.cmd("job-dismiss", id="cf")
    return [p[2]]


def s_active(dm, d, tag):
    p = chain(d, tag + "a")
    add_chain(dm, "a", p)
    dm.cmd("block-commit", device="a3", **{"job-id": "ca", "base-node": "a1",
                                          "auto-finalize": False, "auto-dismiss": False})
    dm.event("BLOCK_JOB_READY")
    dm.cmd("query-jobs")
    dm.cmd("query-block-jobs")
    dm.cmd("job-finalize", id="ca")
    dm.cmd("job-complete", id="ca")
    dm.event("BLOCK_JOB_PENDING")
    dm.cmd("query-jobs")
    dm.cmd("job-finalize", id="ca")
    dm.cmd("job-dismiss", id="ca")
    return [p[1]]


def s_stream(dm, d, tag):
    p = chain(d, tag + "s")
    add_chain(dm, "s", p)
    dm.cmd("block-stream", device="s3", **{"job-id": "ss", "base-node": "s1"})
    dm.status("ss", "null")
    q = chain(d, tag + "t")
    add_chain(dm, "t", q)
    dm.cmd("block-stream", device="t3", **{"job-id": "st", "auto-finalize": False})
    dm.event("BLOCK_JOB_PENDING")
    dm.cmd("query-jobs")
    dm.cmd("query-block-jobs")
    dm.cmd("job-finalize", id="st")
    dm.status("st", "null")
    return [p[3], q[3]]


def s_refusals(dm, d, tag):
    p = chain(d, tag + "r")
    add_chain(dm, "r", p)
    bad = [
        ("block-commit", {"device": "nope"}),
        ("block-commit", {"device": "r3"}),
        ("block-commit", {"device": "r3", "job-id": "x", "top-node": "nope"}),
        ("block-commit", {"device": "r3", "job-id": "x", "base-node": "nope"}),
        ("block-commit", {"device": "r3", "job-id": "x", "base": "/nope"}),
        ("block-commit", {"device": "r3", "job-id": "x", "top": "/nope"}),
        ("block-commit", {"device": "r3", "job-id": "x", "base": "/x", "base-node": "r0"}),
        ("block-commit", {"device": "r3", "job-id": "x", "top": "/x", "top-node": "r2"}),
        ("block-commit", {"device": "r3", "job-id": "x", "top-node": "r1", "base-node": "r1"}),
        ("block-commit", {"device": "r3", "job-id": "x", "top-node": "r0"}),
        ("block-commit", {"device": "r0", "job-id": "x"}),
        ("block-commit", {"device": "r3", "job-id": "x", "backing-file": "b"}),
        ("block-commit", {"device": "r3", "job-id": "1x", "top-node": "r2"}),
        ("block-commit", {"device": "r3", "job-id": "x", "top-node": "r2", "speed": -1}),
        ("block-commit", {"device": "r3", "job-id": "x", "speed": -1}),
        ("block-stream", {"device": "nope", "job-id": "x"}),
        ("block-stream", {"device": "r3", "job-id": "x", "base": "/x", "base-node": "r0"}),
        ("block-stream", {"device": "r3", "job-id": "x", "base": "/x", "bottom": "r1"}),
        ("block-stream", {"device": "r3", "job-id": "x", "bottom": "r1", "base-node": "r0"}),
        ("block-stream", {"device": "r3", "job-id": "x", "base": "/nope"}),
        ("block-stream", {"device": "r3", "job-id": "x", "base-node": "r3"}),
        ("block-stream", {"device": "r3", "job-id": "x", "bottom": "nope"}),
        ("block-stream", {"device": "r3", "job-id": "x", "backing-file": "b"}),
        ("block-stream", {"device": "r3", "job-id": "x", "speed": -1}),
    ]
    for cmd, args in bad:
        dm.cmd(cmd, **args)
    return [p[3]]


def s_errors(dm, d, tag):
    tops = []
    for pol in ("report", "stop", "ignore"):
        t = "e" + pol[0]
        p = chain(d, tag + t)
        add_chain(dm, t, p, base_file={"driver": "blkdebug", "inject-error": [
            {"event": "write_aio", "errno": 5, "once": pol != "ignore"}]})
        job = "j" + pol[0]
        dm.cmd("block-commit", device=t + "3", **{"job-id": job, "top-node": t + "2",
                                                 "base-node": t + "0", "on-error": pol})
        if pol == "report":
            dm.status(job, "null")
        else:
            dm.event("BLOCK_JOB_ERROR")
            if pol == "stop":
                dm.status(job, "paused")
                dm.cmd("query-block-jobs")
                dm.cmd("job-resume", id=job)
                dm.status(job, "null")
            else:
                dm.cmd("job-cancel", id=job)
                dm.status(job, "null")
        tops.append(p[3])
    return tops


def s_cancel(dm, d, tag):
    p = chain(d, tag + "c")
    add_chain(dm, "c", p)
    dm.cmd("block-commit", device="c3", **{"job-id": "cc", "top-node": "c2",
                                          "base-node": "c0", "speed": 1})
    dm.cmd("job-cancel", id="cc")
    dm.status("cc", "null")
    q = chain(d, tag + "k")
    add_chain(dm, "k", q)
    dm.cmd("block-stream", device="k3", **{"job-id": "ck", "speed": 1})
    dm.cmd("job-cancel", id="ck")
    dm.status("ck", "null")
    return [p[3], q[3]]


SESSIONS = [s_intermediate, s_backing_file, s_active, s_stream, s_refusals, s_errors,
            s_cancel]


def comparable_log(dm, d, tag, timing):
    out = []
    for kind, name, r in dm.log:
        r = norm(r, d, tag)
        if timing and name in ("query-block-jobs", "query-jobs"):
            for j in r.get("return", []):
                for k in ("offset", "current-progress"):
                    if k in j:
                        j[k] = "*"
        out.append((name, r))
    return out


def strip_events(evs, dedup_errors):
    """Events in order; where the job fails or is cancelled half-way its offset depends
    on timing (vdiskd copies in parallel, QEMU one chunk at a time): left out there."""
    out = []
    for e in evs:
        data = dict(e["data"])
        if dedup_errors and "offset" in data:
            data["offset"] = "*"
        x = (e["event"], data)
        if dedup_errors and out and x[0] == "BLOCK_JOB_ERROR" and out[-1] == x:
            continue
        out.append(x)
    return out


def events_mode(vdiskd, qsd, d):
    ok = True
    for s in SESSIONS:
        res = {}
        for binary, tag in ((qsd, "q"), (vdiskd, "v")):
            sub = "%s/%s/%s" % (d, tag, s.__name__[2:])
            os.makedirs(sub, exist_ok=True)
            dm = Daemon(binary, sub, tag)
            tops = s(dm, sub, tag)
            time.sleep(0.2)
            dm._pump(0.2)
            log = comparable_log(dm, sub, tag, s in (s_errors, s_cancel))
            evs = strip_events(dm.events(), s in (s_errors, s_cancel))
            dm.quit()
            res[tag] = (log, evs, tops, sub)
        name = s.__name__[2:]
        (ql, qe, qt, qd), (vl, ve, vt, vd) = res["q"], res["v"]
        ok &= result(ql == vl, name + "-replies", first_diff(ql, vl))
        ok &= result(qe == ve, name + "-events", first_diff(qe, ve))
        for a, b in zip(qt, vt):
            qa = norm(backing_strings(a), qd, "q")
            va = norm(backing_strings(b), vd, "v")
            # QEMU names a blkdebug-wrapped base by a json: name (README: differences).
            if s is not s_errors:
                ok &= result(qa == va, name + "-backing " + os.path.basename(b),
                             "%s vs %s" % (qa, va))
            if s is s_backing_file:
                continue     # the chain names a file that is not there, on purpose
            c = run("qemu-img", "compare", "-U", a, b, check=False)
            ok &= result(c.returncode == 0, name + "-contents " + os.path.basename(b),
                         c.stdout + c.stderr)
        for img in [x for x in os.listdir(vd) if x.endswith(".qcow2")]:
            ck = check_alone("%s/%s" % (vd, img))
            if ck.returncode != 0:
                ok &= result(False, name + "-check " + img, ck.stdout + ck.stderr)
    return ok


def check_alone(path):
    """qemu-img check of one image, without its backing (which may be renamed away)."""
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": path}, "backing": None}
    return run("qemu-img", "check", "-U", "json:" + json.dumps(spec), check=False)


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "#%d qsd %s / vdiskd %s" % (i, json.dumps(x), json.dumps(y))
    if len(a) != len(b):
        return "lengths %d/%d: %s" % (len(a), len(b), json.dumps((a[len(b):] or b[len(a):])[:3]))
    return ""


# ---- under load ---------------------------------------------------------------------------

class Writer(threading.Thread):
    """Writes 64 KiB patterns at random offsets into an NBD export with qemu-io, in
    batches, remembering every write qemu-io acknowledged."""

    def __init__(self, uri, seed):
        super().__init__()
        self.uri, self.rng, self.done = uri, random.Random(seed), []
        self.stop = False

    def run(self):
        while not self.stop:
            batch = [(self.rng.randrange(SIZE // 65536) * 65536, self.rng.randrange(1, 255))
                     for _ in range(32)]
            r = run("qemu-io", "-f", "raw", *sum([["-c", "write -P %d %d 64k" % (p, o)]
                                                  for o, p in batch], []), self.uri,
                    check=False)
            if r.returncode != 0:
                break
            self.done += batch


def reference(d, tag, top, writes):
    ref = "%s/%s-ref.raw" % (d, tag)
    run("qemu-img", "convert", "-U", "-O", "raw", top, ref)
    cmds = sum([["-c", "write -P %d %d 64k" % (p, o)] for o, p in writes], [])
    for i in range(0, len(cmds), 400):
        run("qemu-io", "-f", "raw", *cmds[i:i + 400], ref)
    return ref


def load_mode(vdiskd, d):
    ok = True
    for kind in ("intermediate", "active", "stream-base", "stream-all"):
        sub = "%s/%s" % (d, kind)
        os.makedirs(sub, exist_ok=True)
        p = chain(sub, "L")
        ref0 = "%s/start.raw" % sub
        run("qemu-img", "convert", "-O", "raw", p[3], ref0)
        dm = Daemon(vdiskd, sub, "v")
        add_chain(dm, "n", p)
        sock = "%s/nbd.sock" % sub
        dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        dm.cmd("block-export-add", type="nbd", id="e", **{"node-name": "n3"}, writable=True)
        w = Writer("nbd+unix:///n3?socket=%s" % sock, 7)
        w.start()
        time.sleep(0.5)
        args = {"job-id": "j", "speed": 16 * MiB}
        if kind == "intermediate":
            r = dm.cmd("block-commit", device="n3", **args, **{"top-node": "n2",
                                                               "base-node": "n0"})
        elif kind == "active":
            # No limit: a background mirror under a writer as fast as the limit never
            # converges (in QEMU either).
            r = dm.cmd("block-commit", device="n3", **{"job-id": "j", "base-node": "n0"})
        elif kind == "stream-base":
            r = dm.cmd("block-stream", device="n3", **args, **{"base-node": "n0"})
        else:
            r = dm.cmd("block-stream", device="n3", **args)
        if kind == "active":
            dm.event("BLOCK_JOB_READY")
            time.sleep(0.5)
            dm.cmd("job-complete", id="j")
        dm.status("j", "null", timeout=300)
        time.sleep(0.3)
        w.stop = True
        w.join()
        writes = list(w.done)
        errs = [e for e in dm.events() if e["event"] == "BLOCK_JOB_COMPLETED" and
                "error" in e["data"]]
        ok &= result("return" in r and not errs, kind + "-job", json.dumps(r) + json.dumps(errs))
        out = "%s/final.raw" % sub
        run("qemu-img", "convert", "-O", "raw", "nbd+unix:///n3?socket=%s" % sock, out)
        dm.quit()
        ref = reference(sub, "r", ref0, writes)
        c = run("qemu-img", "compare", "-f", "raw", "-F", "raw", ref, out, check=False)
        ok &= result(c.returncode == 0 and len(writes) > 0, kind + "-contents (%d writes)"
                     % len(writes), c.stdout)
        img = p[0] if kind == "active" else p[3]
        c = run("qemu-img", "compare", "-F", "raw", img, ref, check=False)
        ok &= result(c.returncode == 0, kind + "-image-contents", c.stdout + c.stderr)
        for x in p:
            ck = run("qemu-img", "check", x, check=False)
            ok &= result(ck.returncode == 0, kind + "-check " + os.path.basename(x), ck.stdout)
    return ok


def crash_mode(vdiskd, d):
    ok = True
    p = chain(d, "K")
    ref = "%s/ref.raw" % d
    dm = Daemon(vdiskd, d, "v")
    add_chain(dm, "n", p)
    sock = "%s/nbd.sock" % d
    dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    dm.cmd("block-export-add", type="nbd", id="e", **{"node-name": "n3"}, writable=True)
    w = Writer("nbd+unix:///n3?socket=%s" % sock, 11)
    run("qemu-img", "convert", "-O", "raw", p[3], ref)
    w.start()
    dm.cmd("block-commit", device="n3", **{"job-id": "j", "top-node": "n2", "base-node": "n0",
                                          "speed": 8 * MiB})
    time.sleep(2)
    w.stop = True
    w.join()
    dm.p.kill()
    dm.p.wait()
    dm.c.close()
    for x in p:
        ck = run("qemu-img", "check", x, check=False)
        ok &= result(ck.returncode in (0, 3), "kill-check " + os.path.basename(x), ck.stdout)
    ref = reference(d, "k", ref, w.done)
    c = run("qemu-img", "compare", "-F", "raw", p[3], ref, check=False)
    ok &= result(c.returncode == 0, "kill-acknowledged-writes (%d)" % len(w.done), c.stdout)
    dm = Daemon(vdiskd, d, "v2")
    add_chain(dm, "n", p)
    dm.cmd("block-commit", device="n3", **{"job-id": "j", "top-node": "n2", "base-node": "n0"})
    dm.status("j", "null")
    dm.quit()
    c = run("qemu-img", "compare", "-F", "raw", p[3], ref, check=False)
    ok &= result(c.returncode == 0, "rerun-contents", c.stdout)
    ok &= result(backing_strings(p[3])[1][0] == os.path.basename(p[0]), "rerun-chain",
                 str(backing_strings(p[3])))
    for x in p:
        ck = run("qemu-img", "check", x, check=False)
        ok &= result(ck.returncode in (0, 3), "rerun-check " + os.path.basename(x), ck.stdout)
    return ok


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "events":
        good = events_mode(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "load":
        good = load_mode(sys.argv[2], sys.argv[3])
    else:
        good = crash_mode(sys.argv[2], sys.argv[3])
    sys.exit(0 if good else 1)
