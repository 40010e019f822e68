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

from qmp_mirror import (Daemon, MiB, add_qcow2, digest, export, fio, fio_stop, qemu_io,
                        run, started)
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


def wait_end(dm, job):
    dm.wait(lambda e: e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == job and
            e["data"]["status"] in ("null", "concluded"))


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
    wait_end(dm, "b1")
    dm.cmd("query-jobs")
    dm.cmd("job-dismiss", id="b1")
    dm.cmd("blockdev-del", **{"node-name": "t"})
    # a second one finishes at full speed once the limit is lifted
    backup(dm, **{"job-id": "b2"}, speed=1 * MiB)
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
        wait_end(dm, n)
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


def compare_sessions(vdiskd, qsd, d, sessions, prefix):
    ok = True
    for name, fn in sessions:
        got, pairs = {}, {}
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
        ja = {k: no_drain_pairs(v) for k, v in ja.items()}
        jb = {k: no_drain_pairs(v) for k, v in jb.items()}
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
        ok &= result(not why, "%s-%s" % (prefix, name), "\n  ".join(why[:6]))
        for src, tgt in pairs.get("vd", []):
            c = run("qemu-img", "compare", "-q", src, tgt, check=False)
            k = run("qemu-img", "check", tgt, check=False)
            ok &= result(c.returncode == 0 and k.returncode == 0,
                         "%s-data-%s" % (prefix, name),
                         "compare %d %s, check %d %s" % (c.returncode, c.stdout + c.stderr,
                                                         k.returncode, k.stdout))
    return ok


def main():
    mode = sys.argv[1]
    if mode == "events":
        only = os.environ.get("SESSIONS")
        sessions = [x for x in SESSIONS if not only or x[0] in only.split(",")]
        ok = compare_sessions(sys.argv[2], sys.argv[3], sys.argv[4], sessions, "backup")
    else:
        sys.exit("unknown mode " + mode)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
