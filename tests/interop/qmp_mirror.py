#!/usr/bin/env python3
"""Mirror jobs on vdiskd, against qemu-storage-daemon.

  qmp_mirror.py events VDISKD QSD DIR  the same sessions on both daemons (complete, manual
                                       finalize and dismiss, cancels before and after READY,
                                       soft cancel, pause and resume, standby, target errors
                                       under each policy, refused arguments and verbs, sync
                                       top and none, write-blocking, quit while jobs
                                       run): every reply equal, and
                                       each job's events equal, in order; the targets then
                                       compare equal to their sources and check clean
  qmp_mirror.py load VDISKD DIR SIZE   sync=full of a SIZE image while fio writes 4 KiB at
                                       random into the source's export: READY, writes go on,
                                       job-complete; the same to an NBD target that a second
                                       vdiskd serves; write-blocking converging under an
                                       unthrottled writer; job-complete while the writer runs,
                                       every write it acknowledged read back from the target
  qmp_mirror.py seed VDISKD DIR        a target with 2 MiB clusters whose backing is not
                                       open, sync=top at 64 KiB granularity while 64 KiB
                                       writes land: identical once opened with its backing;
                                       and different when whole-cluster copies are switched off
  qmp_mirror.py crash VDISKD DIR       kill -9 during mirrors: images check clean, the
                                       persistent bitmap is left inconsistent; SIGTERM
                                       during mirrors under a writer: exit 0, images clean

Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

from qmp_session import daemon_cmd, result, start, stop

MiB = 1 << 20


def run(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def qemu_io(path, *cmds, fmt="qcow2"):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    return run(*args, path)


class Conn:
    """A QMP connection: the socket, and the events read so far."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        for _ in range(200):
            try:
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        self.events = []

    def close(self):
        self.sock.close()


STARTED = []   # every process started, stopped at exit if a check went wrong half-way


@atexit.register
def _stop_started():
    for p in STARTED:
        if p.poll() is None:
            p.kill()
            p.wait()


class Daemon:
    """A daemon and one QMP client that keeps every event it reads."""

    def __init__(self, binary, d, tag, env=None, extra=()):
        self.d, self.tag = d, tag
        qmp = "%s/%s.qmp" % (d, tag)
        if env:
            old = dict(os.environ)
            os.environ.update(env)
        self.p = start(daemon_cmd(binary, d, tag) + list(extra), qmp)
        STARTED.append(self.p)
        if env:
            os.environ.clear()
            os.environ.update(old)
        self.c = Conn(qmp)
        self.buf = b""
        self.timeout = 120
        self.c.greeting = self._readline()
        self.log = []        # ("reply", name, reply) and ("event", event), in order
        self.seen = 0        # events already returned by wait()
        self.cmd("qmp_capabilities")

    def _readline(self):
        end = time.time() + self.timeout
        while b"\n" not in self.buf:
            left = end - time.time()
            if left <= 0 or not select.select([self.c.sock], [], [], left)[0]:
                raise TimeoutError("nothing from the daemon")
            chunk = self.c.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, command, /, **args):
        self.timeout = 120
        msg = {"execute": command}
        if args:
            msg["arguments"] = args
        self.c.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._readline()
            if "QMP" in r:
                # qemu-storage-daemon greets twice when it is connected to very early
                continue
            if "event" not in r:
                break
            self.c.events.append(r)
        self.log.append(("reply", command, r))
        return r

    def _pump(self, timeout):
        self.timeout = timeout
        try:
            m = self._readline()
        except TimeoutError:
            return False
        if "event" in m:
            self.c.events.append(m)
        return True

    def events(self):
        return self.c.events

    def wait(self, pred, timeout=120):
        """The first event from the ones not yet waited for that pred accepts."""
        end = time.time() + timeout
        while True:
            evs = self.c.events
            for i in range(self.seen, len(evs)):
                if pred(evs[i]):
                    self.seen = i + 1
                    return evs[i]
            if time.time() > end:
                raise TimeoutError("no such event in %d s" % timeout)
            self._pump(0.2)

    def status(self, job, st, timeout=120):
        return self.wait(lambda e: e["event"] == "JOB_STATUS_CHANGE" and
                         e["data"] == {"status": st, "id": job}, timeout)

    def event(self, name, timeout=120):
        return self.wait(lambda e: e["event"] == name, timeout)

    def quit(self):
        try:
            self.cmd("quit")
        except (OSError, EOFError):
            pass
        self.c.close()
        stop(self.p)
        return self.p.returncode


def images(d, tag, size="64M"):
    src, tgt = "%s/%s-src.qcow2" % (d, tag), "%s/%s-tgt.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", src, size)
    qemu_io(src, *["write -P 0x%x %dM 2M" % (0x40 + i, off)
                   for i, off in enumerate((0, 8, 20, 33, 50))])
    run("qemu-img", "create", "-q", "-f", "qcow2", tgt, size)
    return src, tgt


def add_qcow2(dm, name, path, file_extra=None):
    f = {"driver": "file", "filename": path}
    if file_extra:
        f = dict(file_extra, image=f)
    return dm.cmd("blockdev-add", driver="qcow2", **{"node-name": name}, file=f)


def mirror(dm, **args):
    a = {"job-id": "m1", "device": "src", "target": "tgt", "sync": "full"}
    a.update(args)
    return dm.cmd("blockdev-mirror", **a)


# ---- the sessions (each runs the same on both daemons) ----------------------------------

def s_complete(dm, d, tag):
    src, tgt = images(d, tag)
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    mirror(dm)
    dm.event("BLOCK_JOB_READY")
    dm.cmd("query-jobs")
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    dm.cmd("query-jobs")
    return [(src, tgt)]


def s_manual(dm, d, tag):
    src, tgt = images(d, tag)
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    mirror(dm, **{"auto-finalize": False, "auto-dismiss": False})
    dm.event("BLOCK_JOB_READY")
    dm.cmd("job-finalize", id="m1")
    dm.cmd("job-dismiss", id="m1")
    dm.cmd("job-complete", id="m1")
    dm.event("BLOCK_JOB_PENDING")
    dm.cmd("query-jobs")
    dm.cmd("job-complete", id="m1")
    dm.cmd("job-finalize", id="m1")
    dm.cmd("query-jobs")
    dm.cmd("query-block-jobs")
    dm.cmd("job-finalize", id="m1")
    dm.cmd("job-dismiss", id="m1")
    dm.cmd("job-dismiss", id="m1")
    dm.cmd("query-jobs")
    return [(src, tgt)]


def s_cancels(dm, d, tag):
    src, tgt = images(d, tag)
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    # before READY (held back by the speed limit)
    mirror(dm, **{"job-id": "c1", "speed": 1})
    dm.cmd("job-complete", id="c1")
    dm.cmd("block-job-cancel", device="c1")
    dm.status("c1", "null")
    # after READY: outright, soft, forced
    for job, verb, args in (("c2", "job-cancel", {"id": "c2"}),
                            ("c3", "block-job-cancel", {"device": "c3"}),
                            ("c4", "block-job-cancel", {"device": "c4", "force": True})):
        mirror(dm, **{"job-id": job})
        dm.event("BLOCK_JOB_READY")
        dm.cmd(verb, **args)
        dm.status(job, "null")
    # a cancelled job kept after it ended
    mirror(dm, **{"job-id": "c5", "auto-finalize": False, "auto-dismiss": False})
    dm.event("BLOCK_JOB_READY")
    dm.cmd("job-cancel", id="c5")
    dm.status("c5", "concluded")
    dm.cmd("query-jobs")
    dm.cmd("job-cancel", id="c5")
    dm.cmd("block-job-cancel", device="c5")
    dm.cmd("job-finalize", id="c5")
    dm.cmd("job-dismiss", id="c5")
    dm.cmd("query-named-block-nodes", flat=True)
    return []


def s_drive_mirror(dm, d, tag):
    src, _ = images(d, tag)
    add_qcow2(dm, "src", src)
    new = "%s/%s-new.qcow2" % (d, tag)
    old = "%s/%s-old.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", old, "64M")
    dm.cmd("drive-mirror", **{"job-id": "d1", "device": "src", "target": new,
                              "format": "qcow2", "sync": "full", "mode": "absolute-paths"})
    ev = dm.event("BLOCK_JOB_READY")
    dm.log.append(("reply", "ready-len", {"len": ev["data"]["len"]}))
    dm.cmd("job-complete", id="d1")
    dm.status("d1", "null")
    dm.cmd("drive-mirror", **{"job-id": "d2", "device": "src", "target": old,
                              "node-name": "old", "sync": "full", "mode": "existing"})
    ev = dm.event("BLOCK_JOB_READY")
    dm.log.append(("reply", "ready-len", {"len": ev["data"]["len"]}))
    dm.cmd("job-complete", id="d2")
    dm.status("d2", "null")
    dm.cmd("drive-mirror", **{"device": "src", "target": new, "sync": "full"})
    dm.cmd("drive-mirror", **{"job-id": "d3", "device": "src", "target": d + "/no/such/x",
                              "format": "qcow2", "sync": "full"})
    dm.cmd("drive-mirror", **{"job-id": "d3", "device": "src", "target": d + "/none.qcow2",
                              "format": "qcow2", "sync": "full", "mode": "existing"})
    return [(src, new), (src, old)]


def src_bitmaps(dm):
    """The source's dirty-bitmaps, the job's anonymous one among them (counts vary)."""
    r = dm.cmd("query-named-block-nodes", flat=True)
    for n in r.get("return", []):
        if n["node-name"] == "src":
            bms = [{k: v for k, v in b.items() if k != "count"}
                   for b in n.get("dirty-bitmaps", [])]
            dm.log.append(("reply", "src-dirty-bitmaps", {"bitmaps": bms}))


def s_pause(dm, d, tag):
    src, tgt = images(d, tag)
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    dm.cmd("block-dirty-bitmap-add", node="src", name="bm0")
    mirror(dm, speed=1)
    src_bitmaps(dm)
    dm.cmd("job-pause", id="m1")
    dm.status("m1", "paused")
    dm.cmd("job-pause", id="m1")
    dm.cmd("block-job-pause", device="m1")
    dm.cmd("job-complete", id="m1")
    dm.cmd("query-block-jobs")
    dm.cmd("job-resume", id="m1")
    dm.cmd("job-resume", id="m1")
    dm.cmd("block-job-set-speed", device="m1", speed=-1)
    dm.cmd("block-job-set-speed", device="m1", speed=0)
    dm.event("BLOCK_JOB_READY")
    dm.cmd("block-job-pause", device="m1")
    dm.status("m1", "standby")
    dm.cmd("query-block-jobs")
    dm.cmd("job-complete", id="m1")
    dm.cmd("block-job-resume", device="m1")
    dm.status("m1", "null")
    src_bitmaps(dm)
    return [(src, tgt)]


def s_errors(dm, d, tag):
    src, _ = images(d, tag)
    add_qcow2(dm, "src", src)
    out = []
    for i, (policy, errno) in enumerate((("report", 5), ("ignore", 5), ("stop", 5),
                                         ("enospc", 5), ("enospc", 28), ("stop", 28))):
        tgt = "%s/%s-etgt%d.qcow2" % (d, tag, i)
        run("qemu-img", "create", "-q", "-f", "qcow2", tgt, "64M")
        node = "t%d" % i
        add_qcow2(dm, node, tgt, {"driver": "blkdebug", "inject-error": [
            {"event": "pwritev", "errno": errno, "once": False}]})
        job = "e%d" % i
        mirror(dm, **{"job-id": job, "target": node, "on-target-error": policy,
                      "buf-size": MiB})
        dm.event("BLOCK_JOB_ERROR")
        if policy == "ignore":
            dm.cmd("job-cancel", id=job)
        elif policy == "stop" or errno == 28:
            dm.status(job, "paused")
            dm.cmd("query-block-jobs")
            dm.cmd("job-complete", id=job)
            dm.cmd("job-cancel", id=job)
        dm.status(job, "null")
    return out


def s_refusals(dm, d, tag):
    src, tgt = images(d, tag)
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    run("qemu-img", "create", "-q", "-f", "qcow2", "%s/%s-t2.qcow2" % (d, tag), "64M")
    add_qcow2(dm, "t2", "%s/%s-t2.qcow2" % (d, tag))
    bad = [
        {"job-id": None},
        {"job-id": "1bad"},
        {"device": "nosuch"},
        {"target": "nosuch"},
        {"target": "src"},
        {"granularity": 1000},
        {"granularity": 256},
        {"granularity": 128 * MiB},
        {"granularity": -1},
        {"buf-size": -1},
        {"sync": "incremental"},
        {"sync": "bogus"},
        {"copy-mode": "bogus"},
        {"on-target-error": "bogus"},
        {"replaces": "nosuch"},
        {"replaces": "t2"},
        {"unmap": False},
        {"speed": -1},
        {"filter-node-name": "src"},
        {"filter-node-name": "1bad"},
    ]
    for b in bad:
        a = {"job-id": "m1", "device": "src", "target": "tgt", "sync": "full"}
        a.update(b)
        a = {k: v for k, v in a.items() if v is not None}
        dm.cmd("blockdev-mirror", **a)
    mirror(dm, speed=1)
    mirror(dm, **{"job-id": "m2"})
    mirror(dm, **{"job-id": "m2", "device": "tgt", "target": "t2"})
    mirror(dm, **{"job-id": "m2", "device": "t2", "target": "tgt"})
    mirror(dm, **{"job-id": "m1", "device": "t2", "target": "src"})
    dm.cmd("blockdev-del", **{"node-name": "src"})
    dm.cmd("blockdev-del", **{"node-name": "tgt"})
    for verb in ("job-pause", "job-resume", "job-cancel", "job-complete", "job-finalize",
                 "job-dismiss"):
        dm.cmd(verb, id="nosuch")
    for verb in ("block-job-pause", "block-job-resume", "block-job-cancel",
                 "block-job-complete"):
        dm.cmd(verb, device="nosuch")
    dm.cmd("block-job-finalize", id="nosuch")
    dm.cmd("block-job-dismiss", id="nosuch")
    dm.cmd("block-job-set-speed", device="src", speed=1)
    dm.cmd("job-cancel", id="m1")
    dm.status("m1", "null")
    return []


def s_sync(dm, d, tag):
    base = "%s/%s-base.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    qemu_io(base, "write -P 0x11 0 4M", "write -P 0x12 40M 4M")
    top = "%s/%s-top.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io(top, "write -P 0x21 2M 1M", "write -P 0x22 20M 3M")
    tgt = "%s/%s-tgt.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", tgt)
    dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "src"},
           file={"driver": "file", "filename": top})
    dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "tgt"},
           file={"driver": "file", "filename": tgt})
    mirror(dm, sync="top")
    ev = dm.event("BLOCK_JOB_READY")
    dm.log.append(("reply", "ready-len", {"len": ev["data"]["len"]}))
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    none_tgt = "%s/%s-none.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", none_tgt, "64M")
    add_qcow2(dm, "tn", none_tgt)
    mirror(dm, **{"job-id": "m2", "device": "tgt", "target": "tn", "sync": "none"})
    dm.event("BLOCK_JOB_READY")
    dm.cmd("job-cancel", id="m2")
    dm.status("m2", "null")
    return [(top, tgt)]


def s_write_blocking(dm, d, tag):
    src, tgt = images(d, tag)
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    mirror(dm, **{"copy-mode": "write-blocking"})
    src_bitmaps(dm)
    dm.event("BLOCK_JOB_READY")
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    return [(src, tgt)]


def s_quit(dm, d, tag):
    src, tgt = images(d, tag)
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    for name in ("s2", "t2", "s3", "t3"):
        p = "%s/%s-%s.qcow2" % (d, tag, name)
        run("qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
        add_qcow2(dm, name, p)
    mirror(dm, **{"job-id": "q1", "speed": 1})
    mirror(dm, **{"job-id": "q2", "device": "s2", "target": "t2"})
    dm.status("q2", "ready")
    mirror(dm, **{"job-id": "q3", "device": "s3", "target": "t3", "speed": 1})
    dm.cmd("job-pause", id="q3")
    dm.status("q3", "paused")
    # quit: every job ends, its events sent before the reply
    return []


SESSIONS = [("complete", s_complete), ("manual-finalize", s_manual), ("cancels", s_cancels),
            ("pause-resume", s_pause), ("target-errors", s_errors),
            ("refusals", s_refusals), ("sync-top-none", s_sync),
            ("write-blocking", s_write_blocking), ("quit-with-jobs", s_quit),
            ("drive-mirror", s_drive_mirror)]

# Members that depend on timing (how far a copy got when a command came).
TIMING = {"len", "offset", "current-progress", "total-progress", "busy"}


def normal(v):
    if isinstance(v, dict):
        return {k: normal(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [normal(x) for x in v]
    return v


def digest(log, events, sub):
    """The replies in order (the session's directory named DIR), and each job's events in
    order (a run of equal events, as a failing request repeats them, counted once): what
    both daemons must agree on."""
    replies = []
    for kind, name, r in log:
        if name in ("query-named-block-nodes", "blockdev-add"):
            r = {"ok": "return" in r}
        r = json.loads(json.dumps(r).replace(sub, "DIR"))
        replies.append((name, normal(r)))
    per_job = {}
    for e in events:
        data = e.get("data", {})
        job = data.get("id") or data.get("device")
        if not e["event"].startswith(("JOB_", "BLOCK_JOB_")):
            continue
        item = (e["event"], normal(data))
        seq = per_job.setdefault(job, [])
        if not seq or seq[-1] != item:
            seq.append(item)
    return replies, per_job


def source_errors(vdiskd, d):
    """A source whose reads fail (blkdebug on read_aio, which vdisk's qcow2 announces for
    its data reads and this QEMU's does not here): on-source-error as documented."""
    ok = True
    sub = "%s/source-errors" % d
    os.makedirs(sub, exist_ok=True)
    dm = Daemon(vdiskd, sub, "se")
    src, _ = images(sub, "se")
    add_qcow2(dm, "src", src, {"driver": "blkdebug", "inject-error": [
        {"event": "read_aio", "errno": 5, "once": False}]})
    for policy in ("report", "stop", "ignore"):
        tgt = "%s/se-%s.qcow2" % (sub, policy)
        run("qemu-img", "create", "-q", "-f", "qcow2", tgt, "64M")
        add_qcow2(dm, "t-" + policy, tgt)
        job = "s-" + policy
        mirror(dm, **{"job-id": job, "target": "t-" + policy, "on-source-error": policy})
        err = dm.event("BLOCK_JOB_ERROR")["data"]
        why = [] if err == {"device": job, "operation": "read", "action": policy} else [err]
        if policy == "report":
            done = dm.event("BLOCK_JOB_COMPLETED")["data"]
            if done.get("error") != "Input/output error":
                why.append(done)
        else:
            if policy == "stop":
                dm.status(job, "paused")
                jobs = dm.cmd("query-block-jobs")["return"]
                if [j["io-status"] for j in jobs] != ["failed"]:
                    why.append(jobs)
            else:
                dm.wait(lambda e: e["event"] == "BLOCK_JOB_ERROR")   # it retries
            dm.cmd("job-cancel", id=job)
            dm.event("BLOCK_JOB_CANCELLED")
        dm.status(job, "null")
        ok &= result(not why, "mirror-source-error-%s" % policy, str(why))
    dm.quit()
    return ok


def compare_sessions(vdiskd, qsd, d, sessions, check_name, data_name, per_job=None):
    """Runs each session on both daemons and compares them: every reply and each job's
    events (per_job, if given, normalizes a job's event list first); then the pairs of
    images a session returns from its vdiskd run must compare equal and check clean."""
    ok = True
    for name, fn in sessions:
        got = {}
        pairs = {}
        for tag, binary in (("vd", vdiskd), ("qsd", qsd)):
            sub = "%s/%s-%s" % (d, name, tag)
            os.makedirs(sub, exist_ok=True)
            dm = Daemon(binary, sub, tag)
            try:
                pairs[tag] = fn(dm, sub, tag)
                dm._pump(0.5)
            except Exception as e:  # a missing event: the daemon is stuck
                pairs[tag] = []
                dm.log.append(("reply", "exception", {"error": repr(e)}))
            rc = dm.quit()
            got[tag] = digest(dm.log, dm.events(), sub)
            got[tag + "-rc"] = rc
        (ra, ja), (rb, jb) = got["vd"], got["qsd"]
        if per_job:
            ja = {k: per_job(v) for k, v in ja.items()}
            jb = {k: per_job(v) for k, v in jb.items()}
        why = []
        for i, (x, y) in enumerate(zip(ra, rb)):
            if x != y:
                why.append("reply %d: %s\n    vs %s" % (i, json.dumps(x), json.dumps(y)))
        if len(ra) != len(rb):
            why.append("%d vs %d replies" % (len(ra), len(rb)))
        for job in sorted(set(ja) | set(jb), key=str):
            if ja.get(job) != jb.get(job):
                why.append("events of %s:\n    vdiskd %s\n    qsd    %s" %
                           (job, ja.get(job), jb.get(job)))
        if got["vd-rc"] != 0:
            why.append("vdiskd exit status %s" % got["vd-rc"])
        for tag in ("vd", "qsd"):
            # a session that broke off (a missing event, a bug in it) proves nothing
            why += ["%s: %s" % (tag, r) for n, r in got[tag][0] if n == "exception"]
        ok &= result(not why, check_name % name, "\n  ".join(why[:6]))
        for src, tgt in pairs.get("vd", []):
            c = run("qemu-img", "compare", "-q", src, tgt, check=False)
            k = run("qemu-img", "check", tgt, check=False)
            ok &= result(c.returncode == 0 and k.returncode == 0, data_name % name,
                         "compare %d %s, check %d %s" % (c.returncode, c.stdout + c.stderr,
                                                         k.returncode, k.stdout))
    return ok


def events_main(vdiskd, qsd, d):
    ok = compare_sessions(vdiskd, qsd, d, SESSIONS, "mirror-events-%s", "mirror-data-%s")
    return source_errors(vdiskd, d) and ok


# ---- under load ------------------------------------------------------------------------

def fill(path, size):
    """A qcow2 image of `size` bytes, most of it data (1 MiB in every 2 MiB, a pattern
    per MiB), the rest holes."""
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(size))
    cmds = ["write -P 0x%x %d 1M" % ((i % 250) + 1, i * 2 * MiB) for i in range(size // (2 * MiB))]
    for k in range(0, len(cmds), 256):
        qemu_io(path, *cmds[k:k + 256])


def fio(uri, *extra):
    return started(subprocess.Popen(["fio", "--name=w", "--ioengine=nbd", "--uri=" + uri,
                             "--rw=randwrite", "--bs=4k", "--direct=1", "--time_based",
                             "--runtime=600", "--iodepth=8", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))


def started(p):
    STARTED.append(p)
    return p


def fio_stop(p):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def export(dm, node, name, d, tag):
    sock = "%s/%s.nbd" % (d, tag)
    dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    dm.cmd("block-export-add", type="nbd", id="e-" + node, **{"node-name": node},
           name=name, writable=True)
    return "nbd+unix:///%s?socket=%s" % (name, sock)


def compare_check(src, tgt, name):
    c = run("qemu-img", "compare", "-q", src, tgt, check=False)
    k = run("qemu-img", "check", tgt, check=False)
    return result(c.returncode == 0 and k.returncode == 0, name,
                  "compare %d %s; check %d %s" % (c.returncode, c.stderr, k.returncode,
                                                  k.stdout[-300:]))


def load_main(vdiskd, d, size):
    ok = True
    src = "%s/load-src.qcow2" % d
    fill(src, size)
    # 1. a local target, the writer going on past READY
    tgt = "%s/load-tgt.qcow2" % d
    run("qemu-img", "create", "-q", "-f", "qcow2", tgt, str(size))
    dm = Daemon(vdiskd, d, "l1")
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt)
    uri = export(dm, "src", "src", d, "l1")
    w = fio(uri, "--rate_iops=4000")
    time.sleep(1)
    mirror(dm)
    try:
        dm.event("BLOCK_JOB_READY", timeout=300)
        time.sleep(2)
        ready = True
    except TimeoutError:
        ready = False
    fio_stop(w)
    ok &= result(ready and w.returncode in (0, 128), "mirror-load-ready", "ready %s fio %s %s" %
                 (ready, w.returncode, w.stderr.read()[-300:]))
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    r = dm.cmd("query-block-exports")
    ok &= result(r["return"][0]["node-name"] == "tgt", "mirror-load-export-moved", str(r))
    dm.quit()
    ok &= compare_check(src, tgt, "mirror-load-identical")

    # 2. the target an NBD export of a second vdiskd
    tgt2 = "%s/load-tgt2.qcow2" % d
    run("qemu-img", "create", "-q", "-f", "qcow2", tgt2, str(size))
    far = Daemon(vdiskd, d, "far")
    add_qcow2(far, "disk", tgt2)
    far_sock = "%s/far.nbd" % d
    far.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": far_sock}})
    far.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "disk"},
            name="disk", writable=True)
    dm = Daemon(vdiskd, d, "l2")
    add_qcow2(dm, "src", src)
    dm.cmd("blockdev-add", driver="raw", **{"node-name": "tgt"},
           file={"driver": "nbd", "server": {"type": "unix", "path": far_sock},
                 "export": "disk"})
    uri = export(dm, "src", "src", d, "l2")
    w = fio(uri, "--rate_iops=4000")
    mirror(dm)
    try:
        dm.event("BLOCK_JOB_READY", timeout=300)
        ready = True
    except TimeoutError:
        ready = False
    fio_stop(w)
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    dm.quit()
    far.quit()
    ok &= result(ready, "mirror-nbd-target-ready")
    ok &= compare_check(src, tgt2, "mirror-nbd-target-identical")

    # 3. write-blocking under a writer with no limit: READY while it writes
    tgt3 = "%s/load-tgt3.qcow2" % d
    run("qemu-img", "create", "-q", "-f", "qcow2", tgt3, str(size))
    dm = Daemon(vdiskd, d, "l3")
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt3)
    uri = export(dm, "src", "src", d, "l3")
    w = fio(uri, "--iodepth=16")
    time.sleep(1)
    mirror(dm, **{"copy-mode": "write-blocking"})
    try:
        dm.event("BLOCK_JOB_READY", timeout=300)
        ready = w.poll() is None
    except TimeoutError:
        ready = False
    fio_stop(w)
    ok &= result(ready, "mirror-write-blocking-converges")
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    dm.quit()
    ok &= compare_check(src, tgt3, "mirror-write-blocking-identical")

    # 4. job-complete while the writer runs: fio's verify pass then reads every block it
    # wrote back from the target (writes before the pivot reached the source)
    tgt4 = "%s/load-tgt4.qcow2" % d
    run("qemu-img", "create", "-q", "-f", "qcow2", tgt4, str(size))
    dm = Daemon(vdiskd, d, "l4")
    add_qcow2(dm, "src", src)
    add_qcow2(dm, "tgt", tgt4)
    uri = export(dm, "src", "src", d, "l4")
    vargs = ["--name=v", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
             "--size=%d" % (size // 4), "--iodepth=8", "--verify=crc32c",
             "--verify_state_save=0", "--randrepeat=1", "--norandommap"]
    w = started(subprocess.Popen(["fio", "--do_verify=0", "--rate_iops=3000",
                                  "--number_ios=30000", *vargs],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    mirror(dm)
    dm.event("BLOCK_JOB_READY", timeout=300)
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    w.wait(timeout=300)
    v = subprocess.run(["fio", "--verify_only", "--number_ios=30000", *vargs],
                       capture_output=True, text=True)
    ok &= result(w.returncode == 0 and v.returncode == 0, "mirror-pivot-under-writes",
                 "writer %s, verify %s: %s" % (w.returncode, v.returncode, v.stderr[-400:]))
    dm.quit()
    k = run("qemu-img", "check", tgt4, check=False)
    ok &= result(k.returncode == 0, "mirror-pivot-target-clean", k.stdout[-300:])
    return ok


# ---- the seed's case --------------------------------------------------------------------

def seed_once(vdiskd, d, tag, env):
    base = "%s/%s-base.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    qemu_io(base, "write -P 0xb0 0 64M")
    src = "%s/%s-src.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", src)
    qemu_io(src, *["write -P 0x%x %dK 64K" % (0x50 + i, 2048 * i + 512) for i in range(8)])
    tgt = "%s/%s-tgt.qcow2" % (d, tag)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "-b", base,
        "-F", "qcow2", tgt)
    dm = Daemon(vdiskd, d, tag, env=env)
    dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "src"},
           file={"driver": "file", "filename": src})
    dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "tgt"}, backing=None,
           file={"driver": "file", "filename": tgt})
    uri = export(dm, "src", "src", d, tag)
    mirror(dm, sync="top", granularity=65536, speed=4 * MiB)
    # 64 KiB writes into clusters the target has not had yet
    for i in range(8, 24):
        subprocess.run(["qemu-io", "-f", "raw", "-c",
                        "write -P 0x%x %dK 64K" % (0x70 + i, 2048 * i + 1024), uri],
                       capture_output=True)
    dm.cmd("block-job-set-speed", device="m1", speed=0)
    dm.event("BLOCK_JOB_READY")
    dm.cmd("job-complete", id="m1")
    dm.status("m1", "null")
    dm.quit()
    c = run("qemu-img", "compare", "-q", src, tgt, check=False)
    k = run("qemu-img", "check", tgt, check=False)
    return c.returncode, k.returncode


def seed_main(vdiskd, d):
    c, k = seed_once(vdiskd, d, "seed", None)
    ok = result(c == 0 and k == 0, "mirror-seed-whole-clusters",
                "compare %d check %d" % (c, k))
    c, k = seed_once(vdiskd, d, "seedoff", {"VDISK_TEST_MIRROR_NO_WHOLE_CLUSTERS": "1"})
    ok &= result(c == 1, "mirror-seed-fails-without-whole-clusters",
                 "the images compared equal with whole-cluster copies off")
    return ok


# ---- kill -9 -----------------------------------------------------------------------------

def crash_main(vdiskd, d, rounds=6):
    ok = True
    src = "%s/crash-src.qcow2" % d
    fill(src, 256 * MiB)
    run("qemu-img", "bitmap", "--add", src, "b0")
    for i in range(rounds):
        tgt = "%s/crash-tgt%d.qcow2" % (d, i)
        run("qemu-img", "create", "-q", "-f", "qcow2", tgt, str(256 * MiB))
        dm = Daemon(vdiskd, d, "c%d" % i)
        add_qcow2(dm, "src", src)
        add_qcow2(dm, "tgt", tgt)
        uri = export(dm, "src", "src", d, "c%d" % i)
        w = fio(uri, "--rate_iops=2000")
        mirror(dm, **{"copy-mode": "write-blocking" if i % 2 else "background",
                      "speed": (64 + 64 * i) * MiB})
        time.sleep(0.3 + 0.4 * i)
        dm.p.send_signal(signal.SIGKILL)
        dm.p.wait()
        w.kill()         # its server is gone: it cannot end by itself
        w.wait()
        dm.c.close()
        for path, what in ((src, "source"), (tgt, "target")):
            k = run("qemu-img", "check", "--output=json", path, check=False)
            try:
                j = json.loads(k.stdout)
            except ValueError:
                j = {}
            ok &= result(k.returncode in (0, 3) and j.get("corruptions", 0) == 0,
                         "mirror-kill%d-%s-clean" % (i, what), k.stdout[-300:] + k.stderr)
        info = json.loads(run("qemu-img", "info", "--output=json", src).stdout)
        bms = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
        ok &= result(any(b["name"] == "b0" and "in-use" in b["flags"] for b in bms),
                     "mirror-kill%d-bitmap-inconsistent" % i, json.dumps(bms))
        run("qemu-img", "check", "-r", "leaks", src, check=False)
        run("qemu-img", "bitmap", "--remove", src, "b0")
        run("qemu-img", "bitmap", "--add", src, "b0")
    return ok


def term_main(vdiskd, d, rounds=4):
    """SIGTERM while a mirror copies and fio writes: vdiskd ends the job, stops its
    exports and exits 0 in bounded time, leaving both images clean (no leak either)."""
    ok = True
    src = "%s/term-src.qcow2" % d
    fill(src, 256 * MiB)
    for i in range(rounds):
        tgt = "%s/term-tgt%d.qcow2" % (d, i)
        run("qemu-img", "create", "-q", "-f", "qcow2", tgt, str(256 * MiB))
        dm = Daemon(vdiskd, d, "t%d" % i)
        add_qcow2(dm, "src", src)
        add_qcow2(dm, "tgt", tgt)
        uri = export(dm, "src", "src", d, "t%d" % i)
        w = fio(uri, "--iodepth=16")
        mirror(dm, **{"copy-mode": "write-blocking" if i % 2 else "background",
                      "speed": 128 * MiB})
        time.sleep(0.3 + 0.3 * i)
        t0 = time.time()
        dm.p.send_signal(signal.SIGTERM)
        try:
            dm.p.wait(timeout=30)
            rc = dm.p.returncode
        except subprocess.TimeoutExpired:
            rc = "still running after 30 s"
        w.kill()
        w.wait()
        dm.c.close()
        ok &= result(rc == 0, "mirror-sigterm%d-exit" % i, "exit %s after %.1f s" %
                     (rc, time.time() - t0))
        for path, what in ((src, "source"), (tgt, "target")):
            k = run("qemu-img", "check", path, check=False)
            ok &= result(k.returncode == 0, "mirror-sigterm%d-%s-clean" % (i, what),
                         k.stdout[-300:] + k.stderr)
    return ok


def main():
    mode = sys.argv[1]
    if mode == "events":
        ok = events_main(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "load":
        ok = load_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "seed":
        ok = seed_main(sys.argv[2], sys.argv[3])
    elif mode == "crash":
        ok = crash_main(sys.argv[2], sys.argv[3])
        ok &= term_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown mode " + mode)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
