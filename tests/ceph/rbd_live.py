#!/usr/bin/env python3
"""vdiskd in front of RBD images (run by tests/ceph/test-rbd.sh on its cluster).

  rbd_live.py VDISKD CEPH_CONF DIR

- export + mirror: vdiskd exports an RBD image over NBD; fio's nbd engine writes it with
  verified data (a pattern of each block's offset and a per-run word, so a reference file
  written by the same job is the expected image) while a mirror job moves a running local
  qcow2 disk (written through its own export until the switch) into a second RBD image,
  and then a second mirror moves it back into a local qcow2. QEMU's rbd driver then finds
  the RBD images equal to the references, the local copy equal to the source.
- SIGTERM while fio writes: vdiskd exits 0 within 10 s.
- exclusive lock: a second vdiskd opening the image read-write is refused naming the
  owner; after SIGKILL of the first it is still refused, then takes the lock on request
  (break-lock=on) and serves the first's acknowledged data; the dead owner is blocklisted.
  A frozen owner (SIGSTOP) whose lock is broken gets nothing more into the image when it
  wakes: its writes fail, the new owner's data stays.
- transactions: internal snapshots of two RBD nodes in one QMP transaction, both or
  neither (a name clash on one); deleted by blockdev-snapshot-delete-internal-sync.

Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from qmp_mirror import Daemon, export, fio_stop, run, started  # noqa: E402
from qmp_session import result, stop  # noqa: E402

MiB = 1 << 20


def rbd(*args):
    return run("rbd", *args)


def qemu_io(img, *cmds, fmt="raw", check=True):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    return run(*args, img, check=check)


class Ctx:
    def __init__(self, vdiskd, conf, d):
        self.vdiskd, self.conf, self.d = vdiskd, conf, d

    def name(self, image):
        return "rbd:rbd/%s:conf=%s" % (image, self.conf)

    def node(self, node, image, **extra):
        return dict({"driver": "rbd", "node-name": node, "pool": "rbd", "image": image,
                     "conf": self.conf}, **extra)

    def blockdev_arg(self, node, image, extra=""):
        return "driver=rbd,node-name=%s,pool=rbd,image=%s,conf=%s%s" % (node, image,
                                                                         self.conf, extra)


def fio_job(target, seed, word, size, extra=()):
    """The writer: 4 KiB-64 KiB random writes over `size` bytes, each block holding its
    offset and the run's word, verified when read back."""
    return ["fio", "--name=w", "--rw=randwrite", "--bsrange=4k-64k", "--size=%d" % size,
            "--randseed=%d" % seed, "--verify=pattern", '--verify_pattern=%%o"%s"' % word,
            "--do_verify=1", "--thread", *target, *extra]


def export_mirror(c):
    ok = True
    size = 96 * MiB
    rbd("create", "--size", "96M", "rbd/ex")
    rbd("create", "--size", "64M", "rbd/mt")
    seed = random.randrange(1 << 30)
    word = "%08x" % random.randrange(1 << 32)
    # the reference of the exported image: the same job on a local file
    ref = "%s/ex-ref.raw" % c.d
    run("truncate", "-s", str(size), ref)
    p = run(*fio_job(["--ioengine=psync", "--filename=" + ref], seed, word, size), check=False)
    ok &= result(p.returncode == 0, "rbd-fio-reference", p.stderr[-400:])
    # a running local disk: random data in half of it
    src = "%s/mt-src.qcow2" % c.d
    raw = "%s/mt-src.raw" % c.d
    run("truncate", "-s", "64M", raw)
    with open(raw, "r+b") as f:
        for i in range(0, 64, 2):
            f.seek(i * MiB)
            f.write(os.urandom(MiB))
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src)
    os.unlink(raw)
    back = "%s/mt-back.qcow2" % c.d
    run("qemu-img", "create", "-q", "-f", "qcow2", back, "64M")

    dm = Daemon(c.vdiskd, c.d, "live")
    r = dm.cmd("blockdev-add", **c.node("ex", "ex"))
    ok &= result("return" in r, "rbd-blockdev-add", str(r))
    dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "src"},
           file={"driver": "file", "filename": src})
    uri = export(dm, "ex", "ex", c.d, "live")
    dm.cmd("block-export-add", type="nbd", id="e-src", **{"node-name": "src"}, name="src",
           writable=True)
    src_uri = uri.replace("///ex?", "///src?")
    w = started(subprocess.Popen(fio_job(["--ioengine=nbd", "--uri=" + uri, "--iodepth=32"],
                                         seed, word, size),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    r = dm.cmd("blockdev-add", **c.node("tgt", "mt"))
    ok &= result("return" in r, "rbd-target-add", str(r))
    r = dm.cmd("blockdev-mirror", **{"job-id": "m1"}, device="src", target="tgt",
               sync="full")
    ok &= result("return" in r, "rbd-mirror-start", str(r))
    ev = dm.event("BLOCK_JOB_READY", timeout=300)
    # the guest goes on writing its disk; the switch carries these writes along
    q = qemu_io(src_uri, "write -P 0x3c 5M 3M", "write -P 0x3d 61M 1M", check=False)
    ok &= result(q.returncode == 0, "rbd-mirror-source-writes", q.stderr[-300:])
    dm.cmd("job-complete", id="m1")
    ev = dm.event("BLOCK_JOB_COMPLETED", timeout=300)
    ok &= result("error" not in ev["data"], "rbd-mirror-into-rbd", str(ev))
    # and back: the RBD node (now the disk) into a local qcow2
    dm.cmd("blockdev-add", driver="qcow2", **{"node-name": "back"},
           file={"driver": "file", "filename": back})
    r = dm.cmd("blockdev-mirror", **{"job-id": "m2"}, device="tgt", target="back",
               sync="full")
    ok &= result("return" in r, "rbd-mirror-back-start", str(r))
    dm.event("BLOCK_JOB_READY", timeout=300)
    dm.cmd("block-job-cancel", device="m2")   # a READY mirror cancelled: a complete copy
    ev = dm.event("BLOCK_JOB_COMPLETED", timeout=300)
    ok &= result("error" not in ev["data"], "rbd-mirror-out-of-rbd", str(ev))
    w.wait(timeout=600)
    ok &= result(w.returncode == 0, "rbd-fio-verify-through-export",
                 "fio exit %s: %s" % (w.returncode, w.stderr.read()[-400:]))
    rc = dm.quit()
    ok &= result(rc == 0, "rbd-daemon-quit", "exit %s" % rc)
    cmp1 = run("qemu-img", "compare", "-f", "raw", "-F", "raw", ref, c.name("ex"), check=False)
    ok &= result(cmp1.returncode == 0, "rbd-export-equals-reference", cmp1.stdout + cmp1.stderr)
    cmp2 = run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, c.name("mt"),
               check=False)
    ok &= result(cmp2.returncode == 0, "rbd-mirror-target-equals-source",
                 cmp2.stdout + cmp2.stderr)
    cmp3 = run("qemu-img", "compare", src, back, check=False)
    ok &= result(cmp3.returncode == 0, "rbd-mirror-back-equals-source",
                 cmp3.stdout + cmp3.stderr)
    chk = run("qemu-img", "check", back, check=False)
    ok &= result(chk.returncode == 0, "rbd-mirror-back-clean", chk.stdout)
    # the test would notice a difference
    qemu_io(c.name("mt"), "write -P 0x99 1M 4k")
    cmp4 = run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, c.name("mt"),
               check=False)
    ok &= result(cmp4.returncode == 1, "rbd-compare-can-fail", cmp4.stdout)
    return ok


def sigterm_under_load(c):
    rbd("create", "--size", "64M", "rbd/st")
    dm = Daemon(c.vdiskd, c.d, "st")
    dm.cmd("blockdev-add", **c.node("st", "st"))
    uri = export(dm, "st", "st", c.d, "st")
    w = started(subprocess.Popen(["fio", "--name=w", "--ioengine=nbd", "--uri=" + uri,
                                  "--rw=randwrite", "--bs=64k", "--iodepth=32",
                                  "--time_based", "--runtime=60", "--thread"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(3)
    t0 = time.time()
    dm.p.send_signal(signal.SIGTERM)
    try:
        dm.p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    took = time.time() - t0
    rc = dm.p.poll()
    fio_stop(w)
    return result(rc == 0, "rbd-sigterm-under-load", "exit %s after %.1f s" % (rc, took))


def start_export(c, tag, image, extra=""):
    """A vdiskd serving image read-write from its command line; (process, uri)."""
    sock = "%s/%s.nbd" % (c.d, tag)
    p = started(subprocess.Popen([c.vdiskd, "--blockdev", c.blockdev_arg("r", image, extra),
                                  "--nbd-server", "addr.type=unix,addr.path=" + sock,
                                  "--export", "type=nbd,id=e,node-name=r,writable=on"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True))
    for _ in range(200):
        if os.path.exists(sock) or p.poll() is not None:
            break
        time.sleep(0.05)
    return p, "nbd+unix:///r?socket=" + sock


def refused(c, image, tag):
    """A second vdiskd on image: (refused within 10 s, its message)."""
    p, _ = start_export(c, tag, image)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return False, "still running after 10 s"
    return p.returncode != 0, p.stderr.read()


def blocklisted(addr):
    out = run("ceph", "osd", "blocklist", "ls", check=False)
    return addr in out.stdout + out.stderr


def locks(c):
    ok = True
    rbd("create", "--size", "32M", "rbd/lk")
    a, a_uri = start_export(c, "lka", "lk")
    q = qemu_io(a_uri, "write -P 0x41 0 1M", "flush", check=False)
    ok &= result(q.returncode == 0, "lock-first-writes", q.stderr)
    no, msg = refused(c, "lk", "lkb")
    owner = re.search(r"held by (\S+)", msg)
    ok &= result(no and 'Failed to get "write" lock' in msg and owner is not None,
                 "lock-second-refused", msg.strip())
    # a QMP blockdev-add is refused the same way, and the daemon lives on
    dm = Daemon(c.vdiskd, c.d, "lkq")
    r = dm.cmd("blockdev-add", **c.node("r", "lk"))
    ok &= result(r.get("error", {}).get("class") == "GenericError" and
                 'Failed to get "write" lock' in r["error"]["desc"], "lock-qmp-refused", str(r))
    a.kill()
    a.wait()
    t0 = time.time()
    no, msg2 = refused(c, "lk", "lkb2")
    ok &= result(no and time.time() - t0 < 10, "lock-dead-owner-still-refused", msg2.strip())
    r = dm.cmd("blockdev-add", **c.node("r", "lk", **{"break-lock": True}))
    ok &= result("return" in r, "lock-break-on-request", str(r))
    uri = export(dm, "r", "r", c.d, "lkq")
    q = qemu_io(uri, "read -P 0x41 0 1M", "write -P 0x42 1M 1M", check=False)
    ok &= result(q.returncode == 0, "lock-breaker-serves", q.stdout + q.stderr)
    ok &= result(owner is not None and blocklisted(owner.group(1)), "lock-owner-blocklisted",
                 owner.group(1) if owner else "no owner named")
    dm.quit()

    # fencing: a frozen owner wakes up after its lock was broken
    rbd("create", "--size", "32M", "rbd/fz")
    f, f_uri = start_export(c, "fza", "fz")
    q = qemu_io(f_uri, "write -P 0x51 0 1M", "flush", check=False)
    ok &= result(q.returncode == 0, "fence-first-writes", q.stderr)
    f.send_signal(signal.SIGSTOP)
    g, g_uri = start_export(c, "fzb", "fz", ",break-lock=on")
    q = qemu_io(g_uri, "write -P 0x52 2M 1M", "flush", check=False)
    ok &= result(q.returncode == 0, "fence-breaker-writes", q.stdout + q.stderr)
    f.send_signal(signal.SIGCONT)
    time.sleep(1)
    q = qemu_io(f_uri, "write -P 0x53 2M 1M", "flush", check=False)
    ok &= result("failed" in q.stdout + q.stderr, "fence-old-owner-write-fails",
                 q.stdout + q.stderr)
    q = qemu_io(g_uri, "read -P 0x52 2M 1M", "read -P 0x51 0 1M", check=False)
    ok &= result(q.returncode == 0 and "verification failed" not in q.stdout,
                 "fence-nothing-landed", q.stdout + q.stderr)
    t0 = time.time()
    f.send_signal(signal.SIGTERM)
    stop(f)   # waits 10 s, then kills
    ok &= result(time.time() - t0 < 10 and f.returncode is not None and f.returncode >= 0,
                 "fence-old-owner-stops", "exit %s after %.1f s" % (f.returncode,
                                                                   time.time() - t0))
    g.send_signal(signal.SIGTERM)
    g.wait(timeout=10)
    q = qemu_io(c.name("fz"), "read -P 0x52 2M 1M", "read -P 0x51 0 1M", check=False)
    ok &= result(q.returncode == 0 and "verification failed" not in q.stdout,
                 "fence-image-after", q.stdout + q.stderr)
    return ok


def snap_names(image):
    out = rbd("snap", "ls", "--format", "json", "rbd/" + image).stdout
    return sorted(x["name"] for x in json.loads(out or "[]"))


def transactions(c):
    """QMP transactions over two RBD nodes: both snapshots or neither."""
    ok = True
    for img in ("tx1", "tx2"):
        rbd("create", "--size", "16M", "rbd/" + img)
    dm = Daemon(c.vdiskd, c.d, "tx")
    for img in ("tx1", "tx2"):
        dm.cmd("blockdev-add", **c.node(img, img))
    acts = [{"type": "blockdev-snapshot-internal-sync",
             "data": {"device": img, "name": "t1"}} for img in ("tx1", "tx2")]
    r = dm.cmd("transaction", actions=acts)
    ok &= result("return" in r and snap_names("tx1") == ["t1"] and snap_names("tx2") == ["t1"],
                 "rbd-transaction-both", "%s %s %s" % (r, snap_names("tx1"), snap_names("tx2")))
    rbd("snap", "create", "rbd/tx2@t2")
    acts = [{"type": "blockdev-snapshot-internal-sync",
             "data": {"device": img, "name": "t2"}} for img in ("tx1", "tx2")]
    r = dm.cmd("transaction", actions=acts)
    ok &= result("error" in r and snap_names("tx1") == ["t1"], "rbd-transaction-none",
                 "%s %s" % (r, snap_names("tx1")))
    r = [dm.cmd("blockdev-snapshot-delete-internal-sync", device=img, name="t1")
         for img in ("tx1", "tx2")]
    ok &= result(all("return" in x for x in r) and snap_names("tx1") == [] and
                 snap_names("tx2") == ["t2"], "rbd-snapshot-delete-qmp",
                 "%s %s %s" % (r, snap_names("tx1"), snap_names("tx2")))
    dm.quit()
    return ok


def main():
    c = Ctx(*sys.argv[1:4])
    ok = True
    for step in (locks, transactions, export_mirror, sigterm_under_load):
        try:
            ok &= step(c)
        except Exception as e:  # a step that breaks half-way fails, the others still run
            ok &= result(False, step.__name__, "%s: %s" % (type(e).__name__, e))
    return 0 if ok else 1   # qmp_mirror's exit hook stops what is still running


if __name__ == "__main__":
    sys.exit(main())
