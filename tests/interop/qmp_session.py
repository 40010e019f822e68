#!/usr/bin/env python3
"""QMP tests for vdiskd, driven by a plain socket client.

  qmp_session.py session VDISKD QSD DIR   the typical session on vdiskd and on
                                          qemu-storage-daemon, compared field by field
  qmp_session.py bad VDISKD DIR           malformed input keeps the session usable
  qmp_session.py external VDISKD QSD DIR  blockdev-snapshot and blockdev-snapshot-sync (also
                                          in a transaction) on both daemons; the replies
                                          and the resulting files compared
  qmp_session.py events VDISKD QSD DIR    BLOCK_IMAGE_CORRUPTED from both daemons, compared

Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time


def result(ok, name, why=""):
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, why)), flush=True)
    return ok


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        for _ in range(100):
            try:
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        self.f = self.sock.makefile("rwb", buffering=0)
        self.events = []
        self.greeting = self.read()

    def read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("connection closed")
        return json.loads(line)

    def send_raw(self, data):
        self.f.write(data)

    def reply(self):
        while True:
            m = self.read()
            if "event" in m:
                self.events.append(m)
                continue
            return m

    def cmd(self, command, /, **args):
        msg = {"execute": command}
        if args:
            msg["arguments"] = args
        self.send_raw(json.dumps(msg).encode() + b"\n")
        return self.reply()

    def close(self):
        self.sock.close()


def start(cmd, qmp):
    if os.path.exists(qmp):
        os.unlink(qmp)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        if os.path.exists(qmp):
            break
        time.sleep(0.05)
    return p


def stop(p):
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def daemon_cmd(binary, d, tag):
    return [binary, "--chardev", "socket,id=m0,path=%s/%s.qmp,server=on,wait=off" % (d, tag),
            "--monitor", "chardev=m0"]


# Keys vdiskd does not report in BlockDeviceInfo/ImageInfo (README: "QMP").
KNOWN_MISSING = {"format-specific"}


def shape(v, path=""):
    """The structure of a value: key sets of objects, element shapes of lists."""
    if isinstance(v, dict):
        return {k: shape(x, path + "." + k) for k, x in v.items() if k not in KNOWN_MISSING}
    if isinstance(v, list):
        return [shape(x, path) for x in v[:1]]
    return type(v).__name__


def session_script(d, tag):
    """The typical session; returns the replies and events, in order."""
    out = []
    c = Client("%s/%s.qmp" % (d, tag))
    out.append(("greeting", {"QMP": {"capabilities": c.greeting["QMP"]["capabilities"]}}))
    steps = [
        ("qmp_capabilities", {}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "disk0",
                          "file": {"driver": "file", "filename": "%s/%s-a.qcow2" % (d, tag)}}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "disk1",
                          "file": {"driver": "file", "filename": "%s/%s-b.qcow2" % (d, tag)}}),
        ("nbd-server-start", {"addr": {"type": "unix",
                                       "data": {"path": "%s/%s.nbd" % (d, tag)}}}),
        ("block-export-add", {"type": "nbd", "id": "exp0", "node-name": "disk0",
                              "name": "disk0", "writable": True}),
        ("block-export-add", {"type": "nbd", "id": "exp1", "node-name": "disk1",
                              "name": "disk1"}),
        ("query-block-exports", {}),
        ("transaction", {"actions": [
            {"type": "blockdev-snapshot-internal-sync",
             "data": {"device": "disk0", "name": "snap0"}},
            {"type": "blockdev-snapshot-internal-sync",
             "data": {"device": "disk1", "name": "snap0"}}]}),
        ("blockdev-snapshot-internal-sync", {"device": "disk0", "name": "snap1"}),
        ("blockdev-snapshot-internal-sync", {"device": "disk0", "name": "snap1"}),
        ("query-named-block-nodes", {}),
        ("blockdev-snapshot-delete-internal-sync", {"device": "disk0", "name": "snap1"}),
        ("blockdev-snapshot-delete-internal-sync", {"device": "disk0", "name": "nosuch"}),
        ("block_resize", {"node-name": "disk1", "size": 128 << 20}),
        ("query-blockstats", {}),
        ("query-blockstats", {"query-nodes": True}),
        ("blockdev-del", {"node-name": "disk0"}),
        ("block-export-del", {"id": "exp0"}),
        ("block-export-del", {"id": "exp1"}),
        ("block-export-del", {"id": "nosuch"}),
        ("query-block-exports", {}),
        ("block_resize", {"node-name": "disk1", "size": 128 << 20}),
        ("blockdev-del", {"node-name": "disk0"}),
        ("blockdev-del", {"node-name": "nosuch"}),
        ("nbd-server-stop", {}),
        ("quit", {}),
    ]
    for name, args in steps:
        r = c.cmd(name, **args)
        out.append((name, r))
        if name == "query-named-block-nodes":
            nodes = {n["node-name"]: n for n in r.get("return", [])}
            snaps = sorted(s["name"] for s in
                           nodes.get("disk0", {}).get("image", {}).get("snapshots", []))
            out.append(("snapshots-of-disk0", {"names": snaps}))
    for e in c.events:
        out.append(("event", e))
    c.close()
    return out


def compare(a, b):
    """Field by field: same success or error class; same error text; same shape and,
    where it is not a date, a size or a name of our own, the same values."""
    why = []
    if len(a) != len(b):
        why.append("%d vs %d replies" % (len(a), len(b)))
    for (na, ra), (nb, rb) in zip(a, b):
        if na != nb:
            why.append("order: %s vs %s" % (na, nb))
            continue
        if na == "event":
            if ra.get("event") != rb.get("event") or ra.get("data") != rb.get("data") or \
                    set(ra.get("timestamp", {})) != set(rb.get("timestamp", {})):
                why.append("event %s vs %s" % (ra, rb))
            continue
        if ("error" in ra) != ("error" in rb):
            why.append("%s: %s vs %s" % (na, ra, rb))
            continue
        if "error" in ra:
            if ra["error"]["class"] != rb["error"]["class"] or \
                    ra["error"]["desc"] != rb["error"]["desc"]:
                why.append("%s: error %s vs %s" % (na, ra["error"], rb["error"]))
            continue
        va, vb = ra.get("return", ra), rb.get("return", rb)
        if na in ("query-named-block-nodes", "query-blockstats"):
            ka = {n["node-name"]: shape(n) for n in va if not n["node-name"].startswith("#")}
            kb = {n["node-name"]: shape(n) for n in vb if not n["node-name"].startswith("#")}
            if ka != kb:
                why.append("%s: shapes differ:\n  vdiskd %s\n  qsd    %s" % (na, ka, kb))
            continue
        if na == "blockdev-snapshot-delete-internal-sync":
            # Dates and the VM clock are of the moment; icount: qemu-img's 0 vs replay's -1.
            va = {k: v for k, v in va.items() if k in ("name", "id", "vm-state-size")}
            vb = {k: v for k, v in vb.items() if k in ("name", "id", "vm-state-size")}
        if na == "greeting":
            pass
        if va != vb:
            why.append("%s: %s vs %s" % (na, json.dumps(va), json.dumps(vb)))
    return why


def cmd_session(vdiskd, qsd, d):
    runs = {}
    for tag, binary in (("v", vdiskd), ("q", qsd)):
        for img in ("a", "b"):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                            "%s/%s-%s.qcow2" % (d, tag, img), "64M"], check=True)
        p = start(daemon_cmd(binary, d, tag), "%s/%s.qmp" % (d, tag))
        try:
            runs[tag] = session_script(d, tag)
        except Exception as e:  # noqa: BLE001 - any failure is a test failure
            runs[tag] = [("exception", {"error": {"class": "exception", "desc": repr(e)}})]
        stop(p)
        result(p.returncode == 0, "session-%s-exit" % tag, "exit code %s" % p.returncode)
    why = compare(runs["v"], runs["q"])
    result(not why, "session-matches-qemu-storage-daemon", "; ".join(why))
    for img in ("a", "b"):
        r = subprocess.run(["qemu-img", "check", "%s/v-%s.qcow2" % (d, img)],
                           capture_output=True, text=True)
        result(r.returncode == 0, "session-image-%s-clean" % img, r.stdout + r.stderr)
    # What the session left on disk: the same snapshots, the same size.
    for img in ("a", "b"):
        names = []
        for tag in ("v", "q"):
            r = subprocess.run(["qemu-img", "snapshot", "-l", "%s/%s-%s.qcow2" % (d, tag, img)],
                               capture_output=True, text=True)
            names.append([line.split()[1] for line in r.stdout.splitlines()[2:]])
        result(names[0] == names[1], "session-snapshots-%s" % img, "%s vs %s" % tuple(names))
    sizes = []
    for tag in ("v", "q"):
        r = subprocess.run(["qemu-img", "info", "--output=json", "%s/%s-b.qcow2" % (d, tag)],
                           capture_output=True, text=True)
        sizes.append(json.loads(r.stdout)["virtual-size"])
    result(sizes[0] == sizes[1] == 128 << 20, "session-resize", str(sizes))


def cmd_bad(vdiskd, d):
    qmp = "%s/bad.qmp" % d
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "%s/bad.qcow2" % d, "16M"],
                   check=True)
    p = start(daemon_cmd(vdiskd, d, "bad"), qmp)
    mode = stat.S_IMODE(os.stat(qmp).st_mode)
    result(mode & 0o077 == 0, "qmp-socket-private", "mode %o" % mode)
    c = Client(qmp)
    c.cmd("qmp_capabilities")

    def expect(name, raw, cls, desc_part):
        c.send_raw(raw)
        r = c.reply()
        ok = "error" in r and r["error"]["class"] == cls and desc_part in r["error"]["desc"]
        result(ok, "bad-" + name, json.dumps(r))
        r = c.cmd("query-version")
        result("return" in r, "bad-%s-session-usable" % name, json.dumps(r))

    expect("malformed-json", b'{"execute": }\n', "GenericError", "JSON parse error")
    expect("not-an-object", b'[1, 2]\n', "GenericError", "must be a JSON object")
    expect("unknown-member", b'{"execute": "query-version", "x": 1}\n', "GenericError",
           "'x' is unexpected")
    expect("no-execute", b'{"arguments": {}}\n', "GenericError", "lacks member 'execute'")
    expect("execute-not-string", b'{"execute": 3}\n', "GenericError", "must be a string")
    expect("unknown-command", b'{"execute": "no-such-command"}\n', "CommandNotFound",
           "has not been found")
    expect("missing-argument", b'{"execute": "blockdev-del"}\n', "GenericError",
           "Parameter 'node-name' is missing")
    expect("wrong-type", b'{"execute": "block_resize", "arguments": {"node-name": "x", '
           b'"size": "big"}}\n', "GenericError", "Invalid parameter type for 'size'")
    expect("extra-argument", b'{"execute": "query-version", "arguments": {"a": 1}}\n',
           "GenericError", "'a' is unexpected")
    expect("arguments-not-object", b'{"execute": "quit", "arguments": [1]}\n',
           "GenericError", "'arguments' must be an object")
    expect("huge-command", b'{"execute": "x", "arguments": {"s": "' + b"a" * (2 << 20) +
           b'"}}\n', "GenericError", "too long")
    expect("deep-nesting", b"[" * 1000 + b"]" * 1000 + b"\n", "GenericError",
           "JSON parse error")
    expect("bad-driver", b'{"execute": "blockdev-add", "arguments": {"driver": "vmdk", '
           b'"node-name": "n", "file": "f"}}\n', "GenericError", "'vmdk'")
    expect("missing-file", b'{"execute": "blockdev-add", "arguments": {"driver": "qcow2", '
           b'"node-name": "n", "file": {"driver": "file", "filename": "/nonexistent/x"}}}\n',
           "GenericError", "No such file")
    # The id comes back whatever it is.
    c.send_raw(b'{"execute": "query-version", "id": [1, {"a": null}]}\n')
    r = c.reply()
    result(r.get("id") == [1, {"a": None}], "id-echoed", json.dumps(r))
    # A client vanishing in the middle of a command does not disturb another one.
    c2 = Client(qmp)
    c2.send_raw(b'{"execute": "qmp_capabilities"}\n{"execute": "query-ver')
    c2.close()
    time.sleep(0.2)
    r = c.cmd("query-version")
    result("return" in r, "client-vanished-others-unaffected", json.dumps(r))
    # Two sessions at once; an event reaches both.
    c3 = Client(qmp)
    c3.cmd("qmp_capabilities")
    c.cmd("blockdev-add", driver="qcow2", **{"node-name": "n0"},
          file={"driver": "file", "filename": "%s/bad.qcow2" % d})
    c.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": "%s/bad.nbd" % d}})
    nmode = stat.S_IMODE(os.stat("%s/bad.nbd" % d).st_mode)
    result(nmode & 0o077 == 0, "nbd-socket-private", "mode %o" % nmode)
    c.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "n0"}, writable=True)
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5e 0 1M", "-c",
                        "read -P 0x5e 0 1M", "nbd+unix:///n0?socket=%s/bad.nbd" % d],
                       capture_output=True, text=True)
    result(r.returncode == 0 and "Pattern verification failed" not in r.stdout,
           "export-read-write", r.stdout + r.stderr)
    c.cmd("block-export-del", id="e0")
    time.sleep(0.1)
    c3.sock.settimeout(2)
    try:
        ev = c3.read()
    except Exception as e:  # noqa: BLE001
        ev = {"error": str(e)}
    result(ev.get("event") == "BLOCK_EXPORT_DELETED" and ev.get("data") == {"id": "e0"},
           "event-to-every-session", json.dumps(ev))
    c3.close()
    # SIGTERM: images flushed and closed, sockets removed.
    p.send_signal(signal.SIGTERM)
    stop(p)
    result(p.returncode == 0, "sigterm-clean-exit", "exit code %s" % p.returncode)
    result(not os.path.exists(qmp) and not os.path.exists("%s/bad.nbd" % d),
           "sockets-removed")
    r = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5e 0 1M",
                        "%s/bad.qcow2" % d], capture_output=True, text=True)
    result("Pattern verification failed" not in r.stdout and r.returncode == 0,
           "data-durable-after-sigterm", r.stdout)
    r = subprocess.run(["qemu-img", "check", "%s/bad.qcow2" % d], capture_output=True)
    result(r.returncode == 0, "image-clean-after-sigterm")


def external_script(d, tag):
    c = Client("%s/%s.qmp" % (d, tag))
    out = []
    img = lambda n: "%s/%s-%s.qcow2" % (d, tag, n)
    steps = [
        ("qmp_capabilities", {}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "base",
                          "file": {"driver": "file", "filename": img("base")}}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "ov", "backing": None,
                          "file": {"driver": "file", "filename": img("ov")}}),
        ("blockdev-snapshot", {"node": "base", "overlay": "nosuch"}),
        ("blockdev-snapshot", {"node": "base", "overlay": "ov"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "other",
                          "file": {"driver": "file", "filename": img("other")}}),
        ("transaction", {"actions": [
            {"type": "blockdev-snapshot-sync",
             "data": {"node-name": "other", "snapshot-file": img("other-ov"),
                      "snapshot-node-name": "other-ov", "format": "qcow2"}},
            {"type": "blockdev-snapshot-internal-sync",
             "data": {"device": "nosuch", "name": "x"}}]}),
        ("transaction", {"actions": [
            {"type": "blockdev-snapshot-sync",
             "data": {"node-name": "other", "snapshot-file": img("other-ov"),
                      "format": "qcow2"}}]}),
        ("transaction", {"actions": [
            {"type": "blockdev-snapshot-sync",
             "data": {"node-name": "other", "snapshot-file": img("other-ov"),
                      "snapshot-node-name": "other-ov", "format": "qcow2"}}]}),
        ("quit", {}),
    ]
    for name, args in steps:
        out.append((name, c.cmd(name, **args)))
    c.close()
    return out


def cmd_external(vdiskd, qsd, d):
    runs = {}
    for tag, binary in (("v", vdiskd), ("q", qsd)):
        img = lambda n: "%s/%s-%s.qcow2" % (d, tag, n)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img("base"), "32M"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 2M", img("base")],
                       check=True, capture_output=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", img("base"), "-F",
                        "qcow2", img("ov")], check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img("other"), "32M"], check=True)
        p = start(daemon_cmd(binary, d, tag), "%s/%s.qmp" % (d, tag))
        try:
            runs[tag] = external_script(d, tag)
        except Exception as e:  # noqa: BLE001
            runs[tag] = [("exception", {"error": {"class": "exception", "desc": repr(e)}})]
        stop(p)
    why = []
    for (na, ra), (nb, rb) in zip(runs["v"], runs["q"]):
        if ("error" in ra) != ("error" in rb) or \
                ("error" in ra and ra["error"]["class"] != rb["error"]["class"]):
            why.append("%s: %s vs %s" % (na, ra, rb))
    result(not why and len(runs["v"]) == len(runs["q"]), "external-replies-match-qsd",
           "; ".join(why))
    # The files: the sync overlay exists on both with the same backing; the aborted
    # transaction left nothing else behind.
    for name in ("ov", "other", "other-ov"):
        infos = []
        for tag in ("v", "q"):
            r = subprocess.run(["qemu-img", "info", "--output=json", "%s/%s-%s.qcow2" %
                                (d, tag, name)], capture_output=True, text=True)
            i = json.loads(r.stdout) if r.returncode == 0 else {}
            infos.append((i.get("virtual-size"), os.path.basename(i.get("backing-filename", ""))
                          .replace("v-", "X-").replace("q-", "X-")))
        result(infos[0] == infos[1], "external-file-" + name, "%s vs %s" % tuple(infos))
        r = subprocess.run(["qemu-img", "check", "%s/v-%s.qcow2" % (d, name)],
                           capture_output=True)
        result(r.returncode == 0, "external-file-%s-clean" % name)


def corrupt_image(path):
    """A qcow2 image whose guest cluster 0 maps onto its active L1 table."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 64k", path], check=True,
                   stdout=subprocess.DEVNULL)
    with open(path, "r+b") as f:
        hdr = f.read(72)
        l1_off = int.from_bytes(hdr[40:48], "big")
        f.seek(l1_off)
        l2 = int.from_bytes(f.read(8), "big") & 0x00fffffffffffe00
        f.seek(l2)
        f.write(((1 << 63) | l1_off).to_bytes(8, "big"))


def cmd_events(vdiskd, qsd, d):
    """A write through an export that would land on metadata: both daemons send
    BLOCK_IMAGE_CORRUPTED with the same data (QEMU's members, node name, message, the
    host range, fatal)."""
    got = {}
    for tag, binary in (("v", vdiskd), ("q", qsd)):
        img = "%s/%s-corrupt.qcow2" % (d, tag)
        corrupt_image(img)
        qmp = "%s/%s-ev.qmp" % (d, tag)
        sock = "%s/%s-ev.nbd" % (d, tag)
        p = start([binary, "--blockdev",
                   '{"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", '
                   '"filename": "%s"}}' % img,
                   "--nbd-server", "addr.type=unix,addr.path=" + sock,
                   "--export", "type=nbd,id=e0,node-name=d0,name=disk,writable=on",
                   "--chardev", "socket,id=m0,path=%s,server=on,wait=off" % qmp,
                   "--monitor", "chardev=m0"], qmp)
        c = Client(qmp)
        c.cmd("qmp_capabilities")
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 2 0 64k",
                        "nbd+unix:///disk?socket=" + sock],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ev = None
        c.sock.settimeout(10)
        try:
            while ev is None:
                m = c.read()
                if m.get("event") == "BLOCK_IMAGE_CORRUPTED":
                    ev = m
        except (OSError, EOFError, ValueError):
            pass
        c.cmd("quit")
        c.close()
        stop(p)
        got[tag] = ev
    v, q = got["v"], got["q"]
    result(q is not None, "corrupt-event-from-qsd", "qemu-storage-daemon sent none")
    result(v is not None, "corrupt-event-from-vdiskd", "vdiskd sent none")
    if v and q:
        result(v["data"] == q["data"] and list(v["data"]) == list(q["data"]),
               "corrupt-event-data", "%s vs %s" % (v["data"], q["data"]))


if __name__ == "__main__":
    if sys.argv[1] == "session":
        cmd_session(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "external":
        cmd_external(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "events":
        cmd_events(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        cmd_bad(sys.argv[2], sys.argv[3])
