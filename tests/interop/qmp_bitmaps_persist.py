#!/usr/bin/env python3
"""Persistent bitmaps in the daemons: vdiskd beside qemu-storage-daemon.

  qmp_bitmaps_persist.py VDISKD QSD VDISK DIR

DIR holds q.qcow2, an image with stored bitmaps b0 (disabled), b1 and b3. Each daemon gets
its own copy and the same session: the loaded bitmaps listed, a persistent bitmap added,
writes through an export that carries it, a stored bitmap removed while the image is open
(qemu-img info -U then shows it gone and the rest in use), quit; then the images compare
(qemu-img info, the bits of every bitmap as qemu-nbd reads them, check clean). Then a
second session ends in kill -9: the bitmaps stay flagged in use (vdisk info says what
qemu-img info says), the next start of either daemon reports them inconsistent and not
recording, refuses to clear them and lets them be removed. Prints PASS/FAIL lines.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

from qmp_session import Client, daemon_cmd, result, start, stop


def info(img):
    r = subprocess.run(["qemu-img", "info", "-U", "--output=json", img], capture_output=True,
                       text=True)
    j = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr}
    for k in ("filename", "actual-size"):
        j.pop(k, None)
    return j


def bits(img, name, d):
    sock = os.path.join(d, "pmap.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen(["qemu-nbd", "-r", "-t", "-f", "qcow2", "-B", name, "-k", sock, img],
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            subprocess.run(["sleep", "0.05"])
        r = subprocess.run(["nbdinfo", "--map=qemu:dirty-bitmap:" + name,
                            "nbd+unix:///?socket=" + sock], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else "error: " + r.stderr
    finally:
        p.terminate()
        p.wait()


def check_clean(img):
    r = subprocess.run(["qemu-img", "check", img], capture_output=True, text=True)
    return r.returncode == 0 and "leaked" not in r.stdout


def node_bitmaps(c):
    for n in c.cmd("query-named-block-nodes", flat=True)["return"]:
        if n["node-name"] == "a":
            return n.get("dirty-bitmaps")
    return None


def session(binary, d, tag, kill):
    img = os.path.join(d, "%s.qcow2" % tag)
    p = start(daemon_cmd(binary, d, tag), os.path.join(d, tag + ".qmp"))
    c = Client(os.path.join(d, tag + ".qmp"))
    out = []
    x = lambda cmd, **a: out.append((cmd, c.cmd(cmd, **a)))
    x("qmp_capabilities")
    x("blockdev-add", driver="qcow2", **{"node-name": "a"},
      file={"driver": "file", "filename": img})
    out.append(("loaded", node_bitmaps(c)))
    if not kill:
        x("block-dirty-bitmap-add", node="a", name="p1", persistent=True, granularity=8192)
        x("block-dirty-bitmap-add", node="a", name="p2", persistent=True, disabled=True)
        x("block-dirty-bitmap-add", node="a", name="t", persistent=False)
        sock = os.path.join(d, tag + ".nbd")
        x("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        x("block-export-add", type="nbd", id="e", **{"node-name": "a"}, writable=True,
          bitmaps=["p1", "b1"])
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 7 100k 8k",
                            "-c", "write -z 6M 64k", "nbd+unix:///a?socket=" + sock],
                           capture_output=True)
        out.append(("writes", r.returncode))
        x("block-dirty-bitmap-remove", node="a", name="b3")
        x("block-dirty-bitmap-remove", node="a", name="p2")
        # Inside a transaction a stored bitmap leaves the image at once too.
        x("transaction", actions=[{"type": "block-dirty-bitmap-remove",
                                   "data": {"node": "a", "name": "b0"}}])
        out.append(("info while open", info(img)))
        out.append(("after writes", node_bitmaps(c)))
        x("block-export-del", id="e")
        x("quit")
        stop(p)
        out.append(("exit", p.returncode))
    else:
        x("block-dirty-bitmap-add", node="a", name="p1", persistent=True)
        p.send_signal(signal.SIGKILL)
        p.wait()
        out.append(("info after kill", info(img)))
        # The next start: inconsistent, not recording; clear refused, remove allowed.
        p = start(daemon_cmd(binary, d, tag), os.path.join(d, tag + ".qmp"))
        c = Client(os.path.join(d, tag + ".qmp"))
        x("qmp_capabilities")
        x("blockdev-add", driver="qcow2", **{"node-name": "a"},
          file={"driver": "file", "filename": img})
        out.append(("reopened", node_bitmaps(c)))
        x("block-dirty-bitmap-clear", node="a", name="b1")
        x("block-dirty-bitmap-enable", node="a", name="b1")
        x("block-dirty-bitmap-merge", node="a", target="b0", bitmaps=["b1"])
        x("block-dirty-bitmap-remove", node="a", name="b1")
        x("quit")
        stop(p)
        out.append(("exit", p.returncode))
    return out


def main():
    vdiskd, qsd, vdisk, d = sys.argv[1:5]
    base = os.path.join(d, "q.qcow2")
    for kill in (False, True):
        runs = {}
        for tag, binary in (("pv", vdiskd), ("pq", qsd)):
            shutil.copy(base, os.path.join(d, tag + ".qcow2"))
            runs[tag] = session(binary, d, tag, kill)
        what = "kill" if kill else "session"
        ok = True
        for (label, v), (_, q) in zip(runs["pv"], runs["pq"]):
            if v != q:
                ok = result(False, "persist-%s %s" % (what, label), "vdiskd %s, "
                            "qemu-storage-daemon %s" % (json.dumps(v)[:700],
                                                        json.dumps(q)[:700])) and ok
        result(ok and len(runs["pv"]) == len(runs["pq"]), "persist-%s-equal" % what, "")
        iv, iq = (info(os.path.join(d, t + ".qcow2")) for t in ("pv", "pq"))
        result(iv == iq, "persist-%s-images-info" % what, "%s vs %s" % (iv, iq))
        names = [b["name"] for b in iq.get("format-specific", {}).get("data", {})
                 .get("bitmaps", [])]
        result(bool(names) or kill, "persist-%s-has-bitmaps" % what, "none stored")
        # After the kill the bitmaps are in use: qemu-nbd refuses them (checked equal
        # above through the reopened daemons instead).
        for name in names if not kill else []:
            bv, bq = (bits(os.path.join(d, t + ".qcow2"), name, d) for t in ("pv", "pq"))
            result(bv == bq and "error" not in bq, "persist-%s-bits-%s" % (what, name),
                   "vdiskd's image %s, qemu-storage-daemon's %s" % (bv, bq))
        for t in ("pv", "pq"):
            result(check_clean(os.path.join(d, t + ".qcow2")), "persist-%s-check-%s" % (what, t),
                   "qemu-img check is not clean")
        if kill:
            # Before the restart vdisk info said what qemu-img info said of the in-use
            # flags: checked on a fresh kill of vdiskd.
            shutil.copy(base, os.path.join(d, "pk.qcow2"))
            p = start(daemon_cmd(vdiskd, d, "pk"), os.path.join(d, "pk.qmp"))
            c = Client(os.path.join(d, "pk.qmp"))
            c.cmd("qmp_capabilities")
            c.cmd("blockdev-add", driver="qcow2", **{"node-name": "a"},
                  file={"driver": "file", "filename": os.path.join(d, "pk.qcow2")})
            p.send_signal(signal.SIGKILL)
            p.wait()
            a = subprocess.run(["qemu-img", "info", os.path.join(d, "pk.qcow2")],
                               capture_output=True, text=True).stdout
            b = subprocess.run([vdisk, "info", os.path.join(d, "pk.qcow2")],
                               capture_output=True, text=True).stdout
            result(a == b and "in-use" in a, "persist-kill-vdisk-info-in-use",
                   "qemu-img: %s vdisk: %s" % (a, b))


if __name__ == "__main__":
    main()
