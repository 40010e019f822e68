#!/usr/bin/env python3
"""Backup jobs and copy-before-write on vdiskd, against qemu-storage-daemon.

  qmp_backup.py events VDISKD QSD DIR  the same sessions on both daemons (sync full, top,
                                       none, bitmap and incremental; manual finalize and
                                       dismiss; speed; cancel; bitmap-mode on-success,
                                       always and never after success and cancel; target
                                       errors under each policy; grouped and individual
                                       transactions, one failing; refusals; drive-backup):
                                       every reply equal and each job's events equal, in
                                       order; the targets then hold what QEMU's hold
  qmp_backup.py chain VDISKD QSD DIR   a full backup and three incremental ones while fio
                                       writes into the disk's export, on both daemons: each
                                       incremental holds exactly the clusters its bitmap
                                       marked, each point restored (the incrementals
                                       rebased onto the full) equals a raw copy taken when
                                       its backup started, and the jobs' events are QSD's
  qmp_backup.py group VDISKD DIR       a grouped transaction over three disks while a
                                       writer puts one counter on all three: the backups
                                       hold one instant; with one target failing, every
                                       job ends and no backup is left running
  qmp_backup.py fleece VDISKD DIR      fleecing (sync=none with snapshot-access, and the
                                       older target-with-backing form) while fio writes:
                                       nbdcopy of the point-in-time export equals the disk
                                       as it was, nbdinfo maps the bitmap's extents
  qmp_backup.py crash VDISKD DIR       kill -9 during backups under a writer: source and
                                       target check clean, every acknowledged write is in
                                       the source

Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import json
import os
import subprocess
import sys
import threading
import time

from qmp_mirror import (Daemon, MiB, add_qcow2, compare_sessions, digest, export, fio,
                        fio_stop, qemu_io, run)
from qmp_session import result

CLUSTER = 64 << 10


def image(path, size="64M", writes=((0x5a, 0, 4), (0xa5, 8, 1)), cluster=None):
    """A qcow2 image with some data: (pattern, offset MiB, length MiB) each."""
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if cluster:
        args += ["-o", "cluster_size=%d" % cluster]
    run(*args, path, size)
    if writes:
        qemu_io(path, *["write -P 0x%x %dM %dM" % w for w in writes])
    return path


def backup(dm, **args):
    a = {"job-id": "b1", "device": "disk0", "target": "t", "sync": "full"}
    a.update(args)
    return dm.cmd("blockdev-backup", **a)


def named_bitmaps(dm, node="disk0"):
    """The node's named bitmaps as (name, count, busy, recording), logged as a reply."""
    r = dm.cmd("query-named-block-nodes")
    out = []
    for n in r.get("return", []):
        if n.get("node-name") == node:
            for b in n.get("dirty-bitmaps", []):
                if "name" in b:
                    out.append((b["name"], b["count"], b["busy"], b["recording"]))
    out.sort()
    dm.log.append(("reply", "bitmaps", {"return": out}))
    return out


def job_end(dm, job, timeout=300, final=("null", "concluded")):
    """How the newest job of that id ended (its BLOCK_JOB_COMPLETED or _CANCELLED and
    error), once it reached a final status; other jobs' events, in any order, stay for
    their own waits."""
    end = time.time() + timeout
    while time.time() < end:
        evs = dm.events()
        start = 0
        for k, e in enumerate(evs):
            if e["event"] == "JOB_STATUS_CHANGE" and e["data"] == {"status": "created",
                                                                   "id": job}:
                start = k
        got = None
        for e in evs[start:]:
            if (e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and
                    e["data"].get("device") == job):
                got = (e["event"], e["data"].get("error"))
            if (e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == job and
                    e["data"]["status"] in final):
                return got
        dm._pump(0.2)
    raise TimeoutError("job %s did not end" % job)


def wait_end(dm, job, final="null"):
    """Until the newest job of that id is null (or concluded, for one kept)."""
    job_end(dm, job, final=(final,))


def base(dm, d, tag, size="64M"):
    """disk0 (with its export's writers held by the daemon) and an empty target t."""
    image("%s/a.qcow2" % d, size)
    add_qcow2(dm, "disk0", "%s/a.qcow2" % d)
    run("qemu-img", "create", "-q", "-f", "qcow2", "%s/t.qcow2" % d, size)
    add_qcow2(dm, "t", "%s/t.qcow2" % d)


# ---- the sessions (each runs the same on both daemons) ----------------------------------

def s_full(dm, d, tag):
    base(dm, d, tag)
    backup(dm)
    wait_end(dm, "b1")
    dm.cmd("query-jobs")
    dm.cmd("blockdev-del", **{"node-name": "t"})
    return [("%s/a.qcow2" % d, "%s/t.qcow2" % d)]


def s_manual(dm, d, tag):
    base(dm, d, tag)
    backup(dm, **{"auto-finalize": False, "auto-dismiss": False})
    dm.event("BLOCK_JOB_PENDING")
    dm.cmd("query-jobs")
    dm.cmd("query-block-jobs")
    dm.cmd("job-dismiss", id="b1")
    dm.cmd("job-complete", id="b1")
    dm.cmd("job-finalize", id="b1")
    dm.cmd("query-jobs")
    dm.cmd("job-finalize", id="b1")
    dm.cmd("job-dismiss", id="b1")
    dm.cmd("query-jobs")
    dm.cmd("blockdev-del", **{"node-name": "t"})
    return [("%s/a.qcow2" % d, "%s/t.qcow2" % d)]


def s_speed_cancel(dm, d, tag):
    base(dm, d, tag)
    backup(dm, speed=1 * MiB, **{"auto-dismiss": False})
    dm.cmd("job-complete", id="b1")
    dm.cmd("job-pause", id="b1")
    dm.cmd("job-pause", id="b1")
    dm.cmd("job-resume", id="b1")
    dm.cmd("job-resume", id="b1")
    dm.cmd("job-cancel", id="b1")
    wait_end(dm, "b1", "concluded")
    dm.cmd("query-jobs")
    dm.cmd("job-dismiss", id="b1")
    dm.cmd("blockdev-del", **{"node-name": "t"})
    # a second one finishes at full speed once the limit is lifted
    add_qcow2(dm, "t2", run_create(d, "t2.qcow2"))
    backup(dm, **{"job-id": "b2", "target": "t2"}, speed=1 * MiB)
    dm.cmd("block-job-set-speed", device="b2", speed=0)
    wait_end(dm, "b2")
    return []


def s_none_top(dm, d, tag):
    base(dm, d, tag)
    backup(dm, sync="none")
    dm.cmd("job-complete", id="b1")
    dm.cmd("block-job-complete", device="b1")
    dm.cmd("job-cancel", id="b1")
    wait_end(dm, "b1")
    # sync=top of a node with no backing: what its top layer holds, nothing else
    backup(dm, **{"job-id": "b2"}, sync="top")
    wait_end(dm, "b2")
    dm.cmd("blockdev-del", **{"node-name": "t"})
    dm.log.append(("reply", "map", {"return": merged_map("%s/t.qcow2" % d)}))
    return []


def s_bitmaps(dm, d, tag):
    """bitmap-mode after success and after cancel, and incremental copies in clusters."""
    base(dm, d, tag)
    uri = export(dm, "disk0", "disk0", d, tag)
    for mode in ("on-success", "always", "never"):
        dm.cmd("block-dirty-bitmap-add", node="disk0", name="bm-" + mode, granularity=4096)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 4k", "-c", "write -P 0x12 20M 8k",
        "-c", "write -P 0x13 16M 2M", "-c", "write -P 0x14 30M 8M", uri)
    named_bitmaps(dm)
    for i, mode in enumerate(("on-success", "always", "never")):
        # a target that fails at 22 MiB: one copy at a time, in order, stops there
        j = "c%d" % i
        run_create(d, "c-%s.qcow2" % mode)
        dm.cmd("blockdev-add", driver="blkdebug", **{"node-name": "c" + mode}, image={
            "driver": "qcow2", "file": {"driver": "file",
                                        "filename": "%s/c-%s.qcow2" % (d, mode)}},
            **{"inject-error": [{"event": "pwritev", "errno": 5, "sector": 45056,
                                 "once": False}]})
        backup(dm, **{"job-id": j, "target": "c" + mode, "sync": "bitmap",
                      "bitmap": "bm-" + mode, "bitmap-mode": mode,
                      "x-perf": {"max-workers": 1}})
        wait_end(dm, j)
        named_bitmaps(dm)
    for i, mode in enumerate(("on-success", "always", "never")):
        j = "s%d" % i
        dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "s" + mode}, file={
            "driver": "file", "filename": run_create(d, "s-%s.qcow2" % mode)})
        sync = "incremental" if mode == "on-success" else "bitmap"
        args = {"job-id": j, "target": "s" + mode, "sync": sync, "bitmap": "bm-" + mode}
        if sync == "bitmap":
            args["bitmap-mode"] = mode
        backup(dm, **args)
        wait_end(dm, j)
        named_bitmaps(dm)
        dm.cmd("blockdev-del", **{"node-name": "s" + mode})
        dm.log.append(("reply", "map", {"return": merged_map("%s/s-%s.qcow2" % (d, mode))}))
    return []


def run_create(d, name, size="64M", cluster=None):
    path = "%s/%s" % (d, name)
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if cluster:
        args += ["-o", "cluster_size=%d" % cluster]
    run(*args, path, size)
    return path


def s_clusters(dm, d, tag):
    """One 4 KiB dirty write copies a block-copy cluster: max(64 KiB, target's)."""
    base(dm, d, tag)
    uri = export(dm, "disk0", "disk0", d, tag)
    dm.cmd("block-dirty-bitmap-add", node="disk0", name="bm", granularity=4096,
           disabled=False)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x21 41947136 4k", uri)
    dm.cmd("block-dirty-bitmap-disable", node="disk0", name="bm")
    for k, cl in enumerate((4096, 65536, 1 << 20, 2 << 20)):
        n = "k%d" % k
        dm.cmd("blockdev-add", driver="qcow2", **{"node-name": n}, file={
            "driver": "file", "filename": run_create(d, n + ".qcow2", cluster=cl)})
        backup(dm, **{"job-id": n, "target": n, "sync": "bitmap", "bitmap": "bm",
                      "bitmap-mode": "never"})
        dm.wait(lambda e: e["event"] == "BLOCK_JOB_COMPLETED" and e["data"]["device"] == n)
        dm.log.append(("reply", "len", {"return": dm.events()[-1]["data"]["len"]}))
        wait_end(dm, n)
        dm.cmd("blockdev-del", **{"node-name": n})
        dm.log.append(("reply", "map", {"return": merged_map("%s/%s.qcow2" % (d, n))}))
    return []


def s_errors(dm, d, tag):
    image("%s/a.qcow2" % d)
    add_qcow2(dm, "disk0", "%s/a.qcow2" % d)
    for k, policy in enumerate(("report", "stop", "ignore", "enospc")):
        n = "e%d" % k
        errno = 28 if policy == "enospc" else 5
        run_create(d, n + ".qcow2")
        add_qcow2(dm, n, "%s/%s.qcow2" % (d, n), {"driver": "blkdebug", "inject-error": [
            {"event": "pwritev", "errno": errno, "once": True}]})
        backup(dm, **{"job-id": n, "target": n, "on-target-error": policy,
                      "x-perf": {"max-workers": 1}, "auto-dismiss": False})
        if policy in ("stop", "enospc"):
            dm.wait(lambda e: e["event"] == "BLOCK_JOB_ERROR" and e["data"]["device"] == n)
            dm.wait(lambda e: e["event"] == "JOB_STATUS_CHANGE" and
                    e["data"] == {"status": "paused", "id": n})
            dm.cmd("query-block-jobs")
            dm.cmd("job-resume", id=n)
        wait_end(dm, n, "concluded")
        dm.cmd("query-jobs")
        dm.cmd("job-dismiss", id=n)
    return []


def s_refusals(dm, d, tag):
    base(dm, d, tag)
    run_create(d, "small.qcow2", size="32M")
    add_qcow2(dm, "small", "%s/small.qcow2" % d)
    run("qemu-img", "create", "-q", "-f", "raw", "%s/r.raw" % d, "64M")
    dm.cmd("blockdev-add", driver="raw", **{"node-name": "r"},
           file={"driver": "file", "filename": "%s/r.raw" % d})
    dm.cmd("block-dirty-bitmap-add", node="disk0", name="bm")
    for args in ({"sync": "bitmap"}, {"sync": "incremental"},
                 {"sync": "bitmap", "bitmap-mode": "always"},
                 {"sync": "bitmap", "bitmap": "bm"}, {"sync": "none", "bitmap": "bm"},
                 {"sync": "none", "bitmap": "bm", "bitmap-mode": "on-success"},
                 {"bitmap-mode": "on-success"}, {"bitmap": "bm", "bitmap-mode": "never"},
                 {"sync": "incremental", "bitmap": "bm", "bitmap-mode": "always"},
                 {"sync": "bitmap", "bitmap": "nope", "bitmap-mode": "always"},
                 {"target": "small"}, {"target": "r", "compress": True},
                 {"job-id": "1bad"}, {"device": "nonode"}, {"target": "nonode"},
                 {"target": "disk0"}, {"speed": -1}, {"sync": "bogus"},
                 {"on-target-error": "bogus"}, {"x-perf": {"max-workers": 0}},
                 {"x-perf": {"max-chunk": 4096}}):
        a = {"job-id": "x", "device": "disk0", "target": "t", "sync": "full"}
        a.update(args)
        dm.cmd("blockdev-backup", **a)
    a = {"device": "disk0", "target": "t", "sync": "full"}
    dm.cmd("blockdev-backup", **a)
    backup(dm, **{"job-id": "slow"}, speed=64 << 10)
    dm.cmd("blockdev-backup", **{"job-id": "slow", "device": "disk0", "target": "small",
                                 "sync": "full"})
    dm.cmd("blockdev-del", **{"node-name": "t"})
    dm.cmd("job-cancel", id="slow")
    wait_end(dm, "slow")
    return []


def s_transactions(dm, d, tag):
    for n in ("d0", "d1"):
        image("%s/%s.qcow2" % (d, n))
        add_qcow2(dm, n, "%s/%s.qcow2" % (d, n))
        run_create(d, "t%s.qcow2" % n)
        add_qcow2(dm, "t" + n, "%s/t%s.qcow2" % (d, n))
    bk = [{"type": "blockdev-backup", "data": {"job-id": "j%d" % i, "device": "d%d" % i,
                                                "target": "td%d" % i, "sync": "full"}}
          for i in range(2)]
    add = [{"type": "block-dirty-bitmap-add", "data": {"node": "d%d" % i, "name": "bm"}}
           for i in range(2)]
    grouped = {"completion-mode": "grouped"}
    dm.cmd("transaction", actions=[add[0], bk[0], add[1], bk[1]], properties=grouped)
    dm.cmd("transaction", actions=bk, properties=grouped)
    wait_end(dm, "j0")
    wait_end(dm, "j1")
    dm.cmd("transaction", actions=[add[0], bk[0], add[1], bk[1]])
    wait_end(dm, "j0")
    wait_end(dm, "j1")
    named_bitmaps(dm, "d0")
    # a later action fails: the backup made first goes, the bitmap too
    bad = {"type": "blockdev-backup", "data": {"job-id": "j9", "device": "d1",
                                                "target": "nonode", "sync": "full"}}
    dm.cmd("transaction", actions=[
        bk[0], {"type": "block-dirty-bitmap-add", "data": {"node": "d1", "name": "bm2"}},
        bad])
    named_bitmaps(dm, "d1")
    # one target fails in a grouped transaction: the other is cancelled
    run_create(d, "bad.qcow2")
    add_qcow2(dm, "bad", "%s/bad.qcow2" % d, {"driver": "blkdebug", "inject-error": [
        {"event": "pwritev", "errno": 5, "once": False}]})
    slow = dict(bk[0], data=dict(bk[0]["data"], speed=1 * MiB))
    failing = dict(bk[1], data=dict(bk[1]["data"], target="bad"))
    dm.cmd("transaction", actions=[slow, failing], properties=grouped)
    wait_end(dm, "j0")
    wait_end(dm, "j1")
    # clear, then an incremental backup of the cleared bitmap: nothing to copy
    dm.cmd("transaction", actions=[
        {"type": "block-dirty-bitmap-clear", "data": {"node": "d0", "name": "bm"}},
        {"type": "blockdev-backup", "data": {"job-id": "j3", "device": "d0",
                                             "target": "td0", "sync": "incremental",
                                             "bitmap": "bm"}}])
    wait_end(dm, "j3")
    dm.cmd("transaction", actions=[
        {"type": "blockdev-backup", "data": {"job-id": "j4", "device": "d0",
                                             "target": "td0", "sync": "bitmap",
                                             "bitmap": "bm", "bitmap-mode": "never"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "d0", "name": "bm"}}])
    return []


def s_drive(dm, d, tag):
    image("%s/base.qcow2" % d)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "%s/base.qcow2" % d, "-F", "qcow2",
        "%s/top.qcow2" % d)
    qemu_io("%s/top.qcow2" % d, "write -P 0x77 1M 64k", "write -P 0x78 8M 1M")
    add_qcow2(dm, "disk0", "%s/top.qcow2" % d)
    for sync in ("full", "top", "none"):
        j = "d" + sync
        dm.cmd("drive-backup", **{"job-id": j, "device": "disk0", "sync": sync,
                                  "target": "%s/%s.qcow2" % (d, j)})
        if sync == "none":
            dm.cmd("job-cancel", id=j)
        wait_end(dm, j)
        info = json.loads(run("qemu-img", "info", "--output=json", "%s/%s.qcow2" %
                              (d, j)).stdout)
        dm.log.append(("reply", "info", {"return": [info.get("backing-filename"),
                                                    info.get("virtual-size")]}))
    dm.cmd("drive-backup", **{"device": "disk0", "sync": "full",
                              "target": "%s/x.qcow2" % d})
    dm.cmd("drive-backup", **{"job-id": "dx", "device": "disk0", "sync": "full",
                              "target": "%s/nodir/x.qcow2" % d})
    return [("%s/top.qcow2" % d, "%s/dfull.qcow2" % d)]


SESSIONS = [("full", s_full), ("manual", s_manual), ("speed-cancel", s_speed_cancel),
            ("none-top", s_none_top), ("bitmaps", s_bitmaps), ("clusters", s_clusters),
            ("errors", s_errors), ("refusals", s_refusals),
            ("transactions", s_transactions), ("drive", s_drive)]


def merged_map(path):
    """What an image allocates, as merged (start, length, zero, data) runs."""
    out = []
    for x in json.loads(run("qemu-img", "map", "--output=json", path).stdout):
        k = (x["zero"], x["data"], x["present"])
        if out and out[-1][2:] == k and out[-1][0] + out[-1][1] == x["start"]:
            out[-1] = (out[-1][0], out[-1][1] + x["length"]) + k
        else:
            out.append((x["start"], x["length"]) + k)
    return out


def no_drain_pairs(seq):
    """A job's events without the paused-running pairs QEMU's internal drains add (after
    its start, which both daemons show): vdiskd does not drain its jobs for commands
    that do not touch them."""
    out = list(seq[:4])
    for item in seq[4:]:
        if (out and item[0] == "JOB_STATUS_CHANGE" and item[1].get("status") == "running"
                and out[-1][1].get("status") == "paused"):
            out.pop()
            continue
        out.append(item)
    return out


# ---- a full backup and three incremental ones, under fio --------------------------------

SIZE = 256 * MiB


def nbd_uri(d, tag, name):
    return "nbd+unix:///%s?socket=%s/%s.nbd" % (name, d, tag)


def raw_copy(uri, path):
    run("nbdcopy", uri, path)


def dirty_extents(dm, d, tag):
    """bm0's dirty runs, read through an export of it (then removed: a backup may not use
    an exported bitmap)."""
    dm.cmd("block-export-add", type="nbd", id="ebm", **{"node-name": "disk0"}, name="bm",
           writable=True, bitmaps=["bm0"])
    out = run("nbdinfo", "--map=qemu:dirty-bitmap:bm0", nbd_uri(d, tag, "bm")).stdout
    dm.cmd("block-export-del", id="ebm")
    dm.wait(lambda e: e["event"] == "BLOCK_EXPORT_DELETED")
    runs = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] == "1":
            runs.append((int(f[0]), int(f[1])))
    return runs


def widen(runs, unit):
    """Runs widened to whole units and merged."""
    out = []
    for off, ln in runs:
        s, e = off // unit * unit, -(-(off + ln) // unit) * unit
        if out and out[-1][1] >= s:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return [(a, b - a) for a, b in out]


def data_runs(path):
    return [(x[0], x[1]) for x in merged_map(path) if x[3]]


def chain_run(binary, d, tag):
    """One daemon's run: returns (per-job events, checks) for the comparison."""
    checks = []
    src = image("%s/a.qcow2" % d, str(SIZE), [(0x40 + i, i * 16, 8) for i in range(16)])
    dm = Daemon(binary, d, tag)
    add_qcow2(dm, "disk0", src)
    dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": "%s/%s.nbd" % (d, tag)}})
    dm.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, name="disk0",
           writable=True)
    uri = nbd_uri(d, tag, "disk0")
    targets = []
    for i in range(4):
        ref = "%s/ref%d.raw" % (d, i)
        if i:
            expect = widen(dirty_extents(dm, d, tag), CLUSTER)
        raw_copy(uri, ref)
        tgt = run_create(d, "b%d.qcow2" % i, size=str(SIZE))
        add_qcow2(dm, "t%d" % i, tgt)
        job = "b%d" % i
        args = {"job-id": job, "device": "disk0", "target": "t%d" % i, "speed": 64 * MiB}
        if i == 0:
            dm.cmd("transaction", actions=[
                {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "bm0"}},
                {"type": "blockdev-backup", "data": dict(args, sync="full")}])
        else:
            dm.cmd("blockdev-backup", sync="incremental", bitmap="bm0", **args)
        w = fio(uri, "--rate_iops=400", "--bs=4k")
        shape = dm.cmd("query-jobs").get("return", [])
        if shape:     # a small incremental may be over already
            dm.log.append(("reply", "query-jobs-keys", {"return": sorted(shape[0])}))
        dm.wait(lambda e: e["event"] == "BLOCK_JOB_COMPLETED" and e["data"]["device"] == job,
                timeout=300)
        fio_stop(w)
        wait_end(dm, job)
        dm.cmd("blockdev-del", **{"node-name": "t%d" % i})
        named_bitmaps(dm)
        if i:
            got = data_runs(tgt)
            checks.append((got == expect, "backup-chain-%s-incremental-%d" % (tag, i),
                           "target holds %s, bitmap marked %s" % (got[:6], expect[:6])))
        targets.append((tgt, ref))
    dm.quit()
    # each point in time: the incrementals rebased onto the one before
    for i, (tgt, ref) in enumerate(targets):
        if i:
            run("qemu-img", "rebase", "-u", "-b", targets[i - 1][0], "-F", "qcow2", tgt)
        c = run("qemu-img", "compare", "-q", "-F", "raw", tgt, ref, check=False)
        k = run("qemu-img", "check", tgt, check=False)
        checks.append((c.returncode == 0 and k.returncode == 0,
                       "backup-chain-%s-restore-%d" % (tag, i),
                       "compare %d %s; check %d %s" % (c.returncode, c.stdout + c.stderr,
                                                       k.returncode, k.stdout[-200:])))
    k = run("qemu-img", "check", src, check=False)
    checks.append((k.returncode == 0, "backup-chain-%s-source-check" % tag, k.stdout[-300:]))
    return digest(dm.log, dm.events(), d), checks


def chain_main(vdiskd, qsd, d):
    ok = True
    got = {}
    for tag, binary in (("vd", vdiskd), ("qsd", qsd)):
        sub = "%s/chain-%s" % (d, tag)
        os.makedirs(sub, exist_ok=True)
        (replies, jobs), checks = chain_run(binary, sub, tag)
        got[tag] = (replies, {k: no_drain_pairs(v) for k, v in jobs.items()})
        for c in checks:
            ok &= result(*c)
    # bitmap counts and map shapes differ with the writes fio happened to make: the
    # replies compared are the command results and query-jobs' keys
    def keyed(replies):
        out = [(n, r) for n, r in replies if n in ("transaction", "blockdev-backup",
                                                   "block-export-del")]
        keys = [r for n, r in replies if n == "query-jobs-keys"]
        return out + [k for i, k in enumerate(keys) if k not in keys[:i]]
    (ra, ja), (rb, jb) = got["vd"], got["qsd"]
    why = []
    if keyed(ra) != keyed(rb):
        why.append("replies %s vs %s" % (keyed(ra), keyed(rb)))
    for job in sorted(set(ja) | set(jb), key=str):
        if ja.get(job) != jb.get(job):
            why.append("events of %s:\n    vdiskd %s\n    qsd    %s" %
                       (job, ja.get(job), jb.get(job)))
    return result(not why, "backup-chain-events", "\n  ".join(why[:6])) and ok


# ---- one instant over three disks -----------------------------------------------------------

class CounterWriter(threading.Thread):
    """Writes 1, 2, 3, ... at offset 0 of every disk in turn, each write acknowledged
    before the next: any instant of the three disks holds n, n or n-1 ... in order."""

    def __init__(self, uris):
        super().__init__(daemon=True)
        import nbd
        self.handles = []
        for u in uris:
            h = nbd.NBD()
            h.connect_uri(u)
            self.handles.append(h)
        self.n = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                self.n += 1
                block = (self.n.to_bytes(8, "big")) * 512
                for h in self.handles:
                    h.pwrite(block, 0)
        except Exception as e:   # reported by the check that reads the counters
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(60)
        for h in self.handles:
            h.shutdown()


def counter(path):
    """The counter at offset 0 of an image (qcow2)."""
    out = run("qemu-io", "-f", "qcow2", "-r", "-c", "read -v 0 8", path).stdout
    hexes = "".join(out.split("\n")[0].split(":", 1)[1].split()[:8])
    return int(hexes, 16)


def group_main(vdiskd, d):
    ok = True
    dm = Daemon(vdiskd, d, "g")
    dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": "%s/g.nbd" % d}})
    uris = []
    for i in range(3):
        image("%s/d%d.qcow2" % (d, i), str(SIZE), [(0x30 + i, 0, 64)])
        add_qcow2(dm, "d%d" % i, "%s/d%d.qcow2" % (d, i))
        dm.cmd("block-export-add", type="nbd", id="e%d" % i, **{"node-name": "d%d" % i},
               name="d%d" % i, writable=True)
        uris.append(nbd_uri(d, "g", "d%d" % i))
    for rnd, failing in enumerate((None, 2)):
        actions = []
        for i in range(3):
            tgt = run_create(d, "r%d-t%d.qcow2" % (rnd, i), size=str(SIZE))
            node = "r%dt%d" % (rnd, i)
            if i == failing:
                add_qcow2(dm, node, tgt, {"driver": "blkdebug", "inject-error": [
                    {"event": "pwritev", "errno": 5, "sector": 100000, "once": False}]})
            else:
                add_qcow2(dm, node, tgt)
            actions.append({"type": "block-dirty-bitmap-add",
                            "data": {"node": "d%d" % i, "name": "g%d" % rnd}})
            actions.append({"type": "blockdev-backup", "data": {
                "job-id": "r%dj%d" % (rnd, i), "device": "d%d" % i, "target": node,
                "sync": "full", "speed": 64 * MiB}})
        w = CounterWriter(uris)
        w.start()
        time.sleep(0.5)
        before = w.n - 1
        # bitmap actions cannot be grouped (QEMU's rule): they go first, on their own
        dm.cmd("transaction", actions=[a for a in actions
                                       if a["type"] == "block-dirty-bitmap-add"])
        r = dm.cmd("transaction", actions=[a for a in actions if a["type"] != "block-dirty-"
                                           "bitmap-add"], properties={"completion-mode":
                                                                      "grouped"})
        ends = {}
        if "error" in r:
            w.finish()
            ok &= result(False, "backup-group-%d-transaction" % rnd, str(r))
            break
        for i in range(3):
            j = "r%dj%d" % (rnd, i)
            ends[j] = job_end(dm, j)
        w.finish()
        left = dm.cmd("query-jobs").get("return")
        if failing is None:
            vals = [counter("%s/r%d-t%d.qcow2" % (d, rnd, i)) for i in range(3)]
            same = vals[0] >= vals[1] >= vals[2] >= vals[0] - 1
            ok &= result("return" in r and same and w.error is None and vals[2] >= before and
                         all(v[0] == "BLOCK_JOB_COMPLETED" and not v[1] for v in ends.values()),
                         "backup-group-one-instant",
                         "reply %s, counters %s (writer at %d before, %d after, error %s), "
                         "ends %s" % (r, vals, before, w.n, w.error, ends))
        else:
            bad = "r%dj%d" % (rnd, failing)
            others = [v for j, v in ends.items() if j != bad]
            ok &= result(ends[bad] == ("BLOCK_JOB_COMPLETED", "Input/output error") and
                         all(v == ("BLOCK_JOB_CANCELLED", None) for v in others) and
                         left == [], "backup-group-one-fails-all-end",
                         "ends %s, jobs left %s" % (ends, left))
        for i in range(3):
            dm.cmd("blockdev-del", **{"node-name": "r%dt%d" % (rnd, i)})
            if i != failing:
                k = run("qemu-img", "check", "%s/r%d-t%d.qcow2" % (d, rnd, i), check=False)
                ok &= result(k.returncode == 0, "backup-group-%d-target-%d-check" % (rnd, i),
                             k.stdout[-300:])
    rc = dm.quit()
    for i in range(3):
        k = run("qemu-img", "check", "%s/d%d.qcow2" % (d, i), check=False)
        ok &= result(k.returncode == 0 and rc == 0, "backup-group-source-%d-check" % i,
                     "exit %s, %s" % (rc, k.stdout[-300:]))
    return ok


# ---- fleecing ---------------------------------------------------------------------------------

def fleece_main(vdiskd, d):
    """QEMU 7.2's fleecing: a backup job with sync=none and a named filter, snapshot-access
    over the filter exported with a frozen copy of the disk's bitmap, read by nbdcopy and
    nbdinfo while fio writes into the disk."""
    ok = True
    dm = Daemon(vdiskd, d, "f")
    src = image("%s/a.qcow2" % d, str(SIZE), [(0x50 + i, i * 16, 8) for i in range(16)])
    add_qcow2(dm, "disk0", src)
    dm.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": "%s/f.nbd" % d}})
    dm.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, name="disk0",
           writable=True)
    uri = nbd_uri(d, "f", "disk0")
    dm.cmd("block-dirty-bitmap-add", node="disk0", name="bm0")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x61 3M 64k", "-c", "write -P 0x62 100M 1M",
        "-c", "write -P 0x63 200M 4k", uri)
    expect = dirty_extents(dm, d, "f")
    ref = "%s/ref.raw" % d
    raw_copy(uri, ref)
    tmp = run_create(d, "tmp.qcow2", size=str(SIZE))
    add_qcow2(dm, "tmp", tmp)
    r = dm.cmd("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "fl",
                                                    "disabled": True}},
        {"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "fl",
                                                      "bitmaps": ["bm0"]}},
        {"type": "blockdev-backup", "data": {"job-id": "fl", "device": "disk0",
                                             "target": "tmp", "sync": "none",
                                             "filter-node-name": "cbw"}}])
    w = fio(uri, "--rate_iops=2000", "--bs=4k")
    dm.cmd("blockdev-add", driver="snapshot-access", **{"node-name": "acc"}, file="cbw")
    dm.cmd("block-export-add", type="nbd", id="es", **{"node-name": "acc"}, name="snap",
           bitmaps=[{"node": "disk0", "name": "fl"}])
    snap = nbd_uri(d, "f", "snap")
    time.sleep(1)                      # the guest has written meanwhile
    copy = "%s/copy.raw" % d
    c1 = subprocess.run(["nbdcopy", snap, copy], capture_output=True, text=True)
    m = run("nbdinfo", "--map=qemu:dirty-bitmap:fl", snap, check=False)
    running = w.poll() is None
    fio_stop(w)
    got = []
    for line in m.stdout.splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] == "1":
            got.append((int(f[0]), int(f[1])))
    same = run("cmp", copy, ref, check=False)
    now = "%s/now.raw" % d
    raw_copy(uri, now)
    changed = run("cmp", "-s", now, ref, check=False)
    ok &= result("return" in r and c1.returncode == 0 and same.returncode == 0 and running,
                 "backup-fleece-point-in-time",
                 "transaction %s; nbdcopy %d %s; cmp %s; fio running %s" %
                 (r, c1.returncode, c1.stderr, same.stdout, running))
    ok &= result(changed.returncode == 1, "backup-fleece-disk-moved-on",
                 "cmp of the disk with the start gave %d" % changed.returncode)
    ok &= result(m.returncode == 0 and got == expect and bool(expect),
                 "backup-fleece-bitmap-map",
                 "nbdinfo %s; map %s, bitmap %s" % (m.stderr, got, expect))
    prog = dm.cmd("query-jobs").get("return", [{}])[0].get("current-progress", 0)
    ok &= result(prog > 0, "backup-fleece-copied-before-write",
                 "current-progress %s" % prog)
    # teardown in QEMU's order
    dm.cmd("block-export-del", id="es")
    dm.wait(lambda e: e["event"] == "BLOCK_EXPORT_DELETED")
    r1 = dm.cmd("blockdev-del", **{"node-name": "acc"})
    r2 = dm.cmd("job-cancel", id="fl")
    end = job_end(dm, "fl")
    r3 = dm.cmd("blockdev-del", **{"node-name": "tmp"})
    ok &= result(all("return" in x for x in (r1, r2, r3)) and
                 end == ("BLOCK_JOB_CANCELLED", None), "backup-fleece-teardown",
                 "%s %s %s %s" % (r1, r2, end, r3))
    rc = dm.quit()
    for p in (src, tmp):
        k = run("qemu-img", "check", p, check=False)
        ok &= result(k.returncode == 0 and rc == 0, "backup-fleece-check-" +
                     os.path.basename(p), "exit %s %s" % (rc, k.stdout[-300:]))
    return ok


# ---- a source that fails its reads ----------------------------------------------------------

def source_errors(vdiskd, d):
    """blkdebug on read_aio (which vdisk's qcow2 announces for its data reads, and this
    QEMU's does not): on-source-error report, stop and ignore."""
    ok = True
    sub = "%s/source-errors" % d
    os.makedirs(sub, exist_ok=True)
    dm = Daemon(vdiskd, sub, "se")
    src = image("%s/a.qcow2" % sub)
    add_qcow2(dm, "disk0", src, {"driver": "blkdebug", "inject-error": [
        {"event": "read_aio", "errno": 5, "once": False}]})
    for policy in ("report", "stop", "ignore"):
        tgt = run_create(sub, "t-%s.qcow2" % policy)
        add_qcow2(dm, "t-" + policy, tgt)
        job = "s-" + policy
        backup(dm, **{"job-id": job, "target": "t-" + policy, "on-source-error": policy})
        err = dm.wait(lambda e: e["event"] == "BLOCK_JOB_ERROR" and
                      e["data"]["device"] == job)["data"]
        why = [] if err == {"device": job, "operation": "read", "action": policy} else [err]
        if policy == "stop":
            dm.status(job, "paused")
            jobs = dm.cmd("query-block-jobs")["return"]
            if [j["io-status"] for j in jobs] != ["failed"]:
                why.append(jobs)
        if policy != "report":
            dm.cmd("job-cancel", id=job)
        end = job_end(dm, job)
        want = (("BLOCK_JOB_COMPLETED", "Input/output error") if policy == "report"
                else ("BLOCK_JOB_CANCELLED", None))
        if end != want:
            why.append(end)
        ok &= result(not why, "backup-source-error-%s" % policy, str(why))
        dm.cmd("blockdev-del", **{"node-name": "t-" + policy})
        k = run("qemu-img", "check", tgt, check=False)
        ok &= result(k.returncode == 0, "backup-source-error-%s-target-check" % policy,
                     k.stdout[-300:])
    dm.quit()
    return ok


# ---- kill -9 during backups --------------------------------------------------------------------

class SlotWriter(threading.Thread):
    """Writes 4 KiB slot i (a pattern of i) once each, at random slots, flushing every 16
    writes: the writes a completed flush covers are acknowledged for good."""

    def __init__(self, uri, slots, seed):
        super().__init__(daemon=True)
        import nbd
        import random
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.order = list(range(slots))
        random.Random(seed).shuffle(self.order)
        self.acked = []
        self.pending = []

    def run(self):
        try:
            for i in self.order:
                self.h.pwrite(i.to_bytes(4, "big") * 1024, i * 4096)
                self.pending.append(i)
                if len(self.pending) == 16:
                    self.h.flush()
                    self.acked += self.pending
                    self.pending = []
                    time.sleep(0.001)
        except Exception:   # the daemon was killed
            pass


def slots_hold(path, slots, fmt="qcow2"):
    """The acknowledged slots that do not read back as written."""
    raw = path + ".raw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", path, raw)
    bad = []
    with open(raw, "rb") as f:
        for i in slots:
            f.seek(i * 4096)
            if f.read(4096) != i.to_bytes(4, "big") * 1024:
                bad.append(i)
    os.unlink(raw)
    return bad


def crash_main(vdiskd, d, rounds=3):
    ok = True
    for rnd in range(rounds):
        sub = "%s/crash%d" % (d, rnd)
        os.makedirs(sub, exist_ok=True)
        dm = Daemon(vdiskd, sub, "c")
        src = image("%s/a.qcow2" % sub, str(SIZE), [(0x70, 0, 128)])
        add_qcow2(dm, "disk0", src)
        tgt = run_create(sub, "t.qcow2", size=str(SIZE))
        add_qcow2(dm, "t", tgt)
        dm.cmd("nbd-server-start", addr={"type": "unix",
                                         "data": {"path": "%s/c.nbd" % sub}})
        dm.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"},
               name="disk0", writable=True)
        # a quarter of the disk: the filter's copies for it leave the job work to do
        sync = ("full", "incremental", "full")[rnd]
        if sync == "incremental":
            dm.cmd("block-dirty-bitmap-add", node="disk0", name="bm", persistent=True)
            qemu_io_nbd = ["qemu-io", "-f", "raw", "-c", "write -P 0x71 64M 64M",
                           nbd_uri(sub, "c", "disk0")]
            run(*qemu_io_nbd)
        w = SlotWriter(nbd_uri(sub, "c", "disk0"), SIZE // 4 // 4096, rnd)
        w.start()
        args = {"bitmap": "bm"} if sync == "incremental" else {}
        speed = (4 if sync == "incremental" else 32) * MiB
        r = backup(dm, sync=sync, speed=speed, compress=rnd == 2, **args)
        time.sleep(0.7 + 0.3 * rnd)
        running = dm.cmd("query-jobs").get("return", [])
        dm.p.kill()
        dm.p.wait()
        w.join(30)
        for path in (src, tgt):
            k = run("qemu-img", "check", path, check=False)
            # leaks are allowed (exit 3): corruption is not
            ok &= result(k.returncode in (0, 3) and "ERROR" not in k.stdout,
                         "backup-crash-%d-%s-check" % (rnd, os.path.basename(path)),
                         "check %d %s" % (k.returncode, k.stdout[-400:]))
        bad = slots_hold(src, w.acked)
        ok &= result("return" in r and bool(running) and len(w.acked) > 0 and not bad,
                     "backup-crash-%d-acknowledged-writes" % rnd,
                     "backup %s, job running %s, %d acknowledged, lost %s" %
                     (r, running, len(w.acked), bad[:10]))
    return ok


def main():
    mode = sys.argv[1]
    if mode == "events":
        only = os.environ.get("SESSIONS")
        sessions = [x for x in SESSIONS if not only or x[0] in only.split(",")]
        ok = compare_sessions(sys.argv[2], sys.argv[3], sys.argv[4], sessions, "backup-%s",
                              "backup-data-%s", per_job=no_drain_pairs)
    elif mode == "fleece":
        ok = fleece_main(sys.argv[2], sys.argv[3])
    elif mode == "crash":
        ok = crash_main(sys.argv[2], sys.argv[3])
        ok &= source_errors(sys.argv[2], sys.argv[3])
    elif mode == "group":
        ok = group_main(sys.argv[2], sys.argv[3])
    elif mode == "chain":
        ok = chain_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("unknown mode " + mode)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
