#!/usr/bin/env python3
"""Dirty bitmaps on vdiskd and on qemu-storage-daemon, side by side.

  qmp_bitmaps.py VDISKD QSD DIR

The same session goes to both daemons: bitmaps added to qcow2, raw and file nodes (default
and chosen granularities, every refusal), exported over NBD with the writes of qemu-io
going through the export, busy bitmaps, merges across granularities and nodes, disable and
enable around writes, clear, transactions that fail half-way and that succeed, a resize,
removal. Every reply must be the same (error text included), and so must the dirty-bitmaps
of every named node after each step and what nbdinfo --map reads from each bitmap's meta
context. Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import json
import subprocess
import sys

from qmp_session import Client, daemon_cmd, result, start, stop

MiB = 1 << 20


def images(d, tag):
    specs = [("a", "4M", []), ("b", "1M", ["-o", "cluster_size=512"]),
             ("c", "8M", ["-o", "cluster_size=2M"])]
    for name, size, opts in specs:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *opts,
                        "%s/%s-%s.qcow2" % (d, tag, name), size], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", "%s/%s-r.raw" % (d, tag), "3M"],
                   check=True)


def io(uri, *cmds):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args + [uri], capture_output=True, text=True)
    return r.returncode


def nbd_map(uri, context):
    r = subprocess.run(["nbdinfo", "--map=" + context, "--json", uri], capture_output=True,
                       text=True)
    return r.stdout if r.returncode == 0 else "error: " + r.stderr.strip()


def contexts(uri):
    r = subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True)
    if r.returncode != 0:
        return "error"
    info = json.loads(r.stdout)
    return sorted(info["exports"][0].get("contexts", []))


def bitmaps_of(c):
    nodes = c.cmd("query-named-block-nodes", flat=True)["return"]
    return {n["node-name"]: n.get("dirty-bitmaps") for n in nodes
            if not n["node-name"].startswith("#")}


def session(d, tag, daemon):
    """Runs the session; returns (label, value) pairs to compare."""
    out = []
    images(d, tag)
    p = start(daemon_cmd(daemon, d, tag), "%s/%s.qmp" % (d, tag))
    c = Client("%s/%s.qmp" % (d, tag))
    sock = "%s/%s.nbd" % (d, tag)
    uri = lambda name: "nbd+unix:///%s?socket=%s" % (name, sock)
    step_no = [0]

    def x(cmd, **args):
        r = c.cmd(cmd, **args)
        step_no[0] += 1
        out.append(("%02d %s %s" % (step_no[0], cmd, json.dumps(args, sort_keys=True)
                                    .replace(d + "/" + tag, "DIR")), r))
        return r

    def snap(label):
        out.append(("bitmaps " + label, bitmaps_of(c)))

    x("qmp_capabilities")
    for n in "abc":
        x("blockdev-add", driver="qcow2", **{"node-name": n},
          file={"driver": "file", "filename": "%s/%s-%s.qcow2" % (d, tag, n)})
    x("blockdev-add", driver="raw", **{"node-name": "r"},
      file={"driver": "file", "node-name": "rf", "filename": "%s/%s-r.raw" % (d, tag)})
    # Defaults and refusals.
    for n in ("a", "b", "c", "r", "rf"):
        x("block-dirty-bitmap-add", node=n, name="d")
    x("block-dirty-bitmap-add", node="a", name="")
    x("block-dirty-bitmap-add", node="a", name="d")
    x("block-dirty-bitmap-add", node="a", name="x" * 1024)
    x("block-dirty-bitmap-add", node="a", name="x" * 1023)
    x("block-dirty-bitmap-add", node="a", name="g", granularity=256)
    x("block-dirty-bitmap-add", node="a", name="g", granularity=0)
    x("block-dirty-bitmap-add", node="a", name="g", granularity=3 << 12)
    x("block-dirty-bitmap-add", node="a", name="g", granularity=1 << 32)
    x("block-dirty-bitmap-add", node="nosuch", name="d")
    x("block-dirty-bitmap-add", node="r", name="p", persistent=True)
    x("block-dirty-bitmap-add", node="a", name="g4k", granularity=4096)
    x("block-dirty-bitmap-add", node="a", name="huge", granularity=1 << 31)
    x("block-dirty-bitmap-add", node="a", name="off", disabled=True)
    x("block-dirty-bitmap-remove", node="a", name="x" * 1023)
    x("block-dirty-bitmap-remove", node="nosuch", name="d")
    x("block-dirty-bitmap-remove", node="a", name="nosuch")
    # Malformed arguments.
    x("block-dirty-bitmap-add", node="a", name="g", granularity="big")
    x("block-dirty-bitmap-add", node="a")
    x("block-dirty-bitmap-merge", node="a", target="d", bitmaps=[1])
    x("block-dirty-bitmap-merge", node="a", target="d", bitmaps="d")
    x("block-dirty-bitmap-merge", node="a", target="d", bitmaps=[{"node": "a"}])
    x("transaction", actions=[{"type": "block-dirty-bitmap-add", "data": {"name": "t"}}])
    x("transaction", actions=[{"type": "block-dirty-bitmap-merge",
                               "data": {"node": "a", "target": "d", "bitmaps": [[]]}}])
    snap("added")
    # Exports: refusals, then one that carries two bitmaps.
    x("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    x("block-export-add", type="nbd", id="e1", **{"node-name": "b"}, bitmaps=["d"])
    x("block-export-add", type="nbd", id="e1", **{"node-name": "b"}, writable=True,
      bitmaps=["nosuch"])
    x("block-dirty-bitmap-add", node="b", name="boff", disabled=True)
    x("block-export-add", type="nbd", id="e1", **{"node-name": "b"}, bitmaps=["boff"])
    x("block-dirty-bitmap-remove", node="b", name="boff")
    x("block-export-del", id="e1")
    # Writes through a raw node mark its bitmap and its file node's.
    x("block-export-add", type="nbd", id="er", **{"node-name": "r"}, writable=True,
      bitmaps=["d"])
    out.append(("writes r", io(uri("r"), "write -P 9 64k 4k", "write -z 2M 1M")))
    out.append(("map r", nbd_map(uri("r"), "qemu:dirty-bitmap:d")))
    x("block-export-del", id="er")
    x("block-export-add", type="nbd", id="ea", **{"node-name": "a"}, writable=True,
      bitmaps=["d", {"node": "a", "name": "g4k"}])
    out.append(("contexts", contexts(uri("a"))))
    rc = io(uri("a"), "write -P 1 0 4k", "write -P 2 100k 1k", "write -z 1M 128k",
            "discard 2M 64k", "write -P 3 4095k 1k", "write -P 4 3000k 1")
    out.append(("writes", rc))
    snap("after writes")
    for ctx in ("qemu:dirty-bitmap:d", "qemu:dirty-bitmap:g4k"):
        out.append(("map " + ctx, nbd_map(uri("a"), ctx)))
    # Busy while exported.
    x("block-dirty-bitmap-remove", node="a", name="d")
    x("block-dirty-bitmap-clear", node="a", name="g4k")
    x("block-dirty-bitmap-disable", node="a", name="d")
    x("block-dirty-bitmap-merge", node="a", target="d", bitmaps=["off"])
    x("block-dirty-bitmap-merge", node="a", target="off", bitmaps=["d", "nosuch"])
    x("block-dirty-bitmap-merge", node="a", target="off", bitmaps=[{"node": "b", "name": "d"}])
    x("block-dirty-bitmap-merge", node="a", target="off", bitmaps=["g4k"])
    x("block-export-del", id="ea")
    # Merges: granularities differ (accepted), sources named both ways.
    x("block-dirty-bitmap-merge", node="a", target="off", bitmaps=["g4k"])
    x("block-dirty-bitmap-merge", node="a", target="huge",
      bitmaps=["d", {"node": "a", "name": "off"}])
    snap("merged")
    # Disabled bitmaps do not record; enabled again they do.
    x("block-dirty-bitmap-disable", node="a", name="g4k")
    x("block-export-add", type="nbd", id="ea", **{"node-name": "a"}, writable=True)
    out.append(("writes 2", io(uri("a"), "write -P 5 512k 8k")))
    x("block-dirty-bitmap-enable", node="a", name="g4k")
    out.append(("writes 3", io(uri("a"), "write -P 6 768k 512")))
    snap("disabled and enabled")
    x("block-dirty-bitmap-clear", node="a", name="g4k")
    # A transaction that fails half-way changes nothing; one that succeeds does it all.
    x("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "a", "name": "t1"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "a", "name": "d"}},
        {"type": "block-dirty-bitmap-disable", "data": {"node": "a", "name": "huge"}},
        {"type": "block-dirty-bitmap-merge", "data": {"node": "a", "target": "off",
                                                      "bitmaps": ["d"]}},
        {"type": "block-dirty-bitmap-remove", "data": {"node": "a", "name": "g4k"}},
        {"type": "block-dirty-bitmap-add", "data": {"node": "a", "name": "d"}}])
    snap("failed transaction")
    x("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "a", "name": "t2",
                                                    "disabled": True, "granularity": 512}},
        {"type": "block-dirty-bitmap-merge", "data": {"node": "a", "target": "t2",
                                                      "bitmaps": ["d"]}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "a", "name": "d"}},
        {"type": "block-dirty-bitmap-remove", "data": {"node": "a", "name": "off"}},
        {"type": "block-dirty-bitmap-enable", "data": {"node": "a", "name": "t2"}}])
    snap("transaction")
    out.append(("writes 4", io(uri("a"), "write -P 7 64k 64k")))
    snap("after writes 4")
    # A resize truncates the bitmaps and marks what appeared.
    x("block-dirty-bitmap-add", node="c", name="g512", granularity=512)
    x("block_resize", **{"node-name": "c"}, size=12 * MiB)
    snap("grown")
    x("block-export-add", type="nbd", id="ec", **{"node-name": "c"}, writable=True,
      bitmaps=["g512"])
    out.append(("writes c", io(uri("c"), "write -P 8 11M 4k", "write -P 8 6M 1")))
    out.append(("map c", nbd_map(uri("c"), "qemu:dirty-bitmap:g512")))
    x("block-export-del", id="ec")
    x("block_resize", **{"node-name": "c"}, size=6 * MiB)
    snap("shrunk")
    x("block-export-del", id="ea")
    x("nbd-server-stop")
    x("block-dirty-bitmap-remove", node="a", name="d")
    x("query-block")
    snap("end")
    x("quit")
    stop(p)
    # A clean exit: under the sanitizers, no leak and no error.
    out.append(("exit", p.returncode))
    return out


def held_node(vdiskd, d):
    """An export that offers another node's bitmap ({node, name}) holds that node:
    blockdev-del of it is refused until the export goes. (qemu-storage-daemon 7.2 aborts
    on this sequence, so vdiskd is checked alone.)"""
    for n in ("x", "y"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "%s/h-%s.qcow2" % (d, n),
                        "1M"], check=True)
    p = start(daemon_cmd(vdiskd, d, "h"), "%s/h.qmp" % d)
    c = Client("%s/h.qmp" % d)
    c.cmd("qmp_capabilities")
    for name, f in (("X", "x"), ("A", "y")):
        c.cmd("blockdev-add", driver="qcow2", **{"node-name": name},
              file={"driver": "file", "filename": "%s/h-%s.qcow2" % (d, f)})
    c.cmd("block-dirty-bitmap-add", node="X", name="b")
    c.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": "%s/h.nbd" % d}})
    r1 = c.cmd("block-export-add", type="nbd", id="e", **{"node-name": "A"}, writable=True,
               bitmaps=[{"node": "X", "name": "b"}])
    r2 = c.cmd("blockdev-del", **{"node-name": "X"})
    c.cmd("block-export-del", id="e")
    r3 = c.cmd("blockdev-del", **{"node-name": "X"})
    c.cmd("quit")
    stop(p)
    result("return" in r1 and "error" in r2 and "return" in r3 and p.returncode == 0,
           "bitmaps-export-holds-other-node", "%s %s %s exit %s" % (r1, r2, r3, p.returncode))


def main():
    vdiskd, qsd, d = sys.argv[1:4]
    try:
        held_node(vdiskd, d)
    except (OSError, EOFError) as e:
        result(False, "bitmaps-export-holds-other-node", "vdiskd went away: %r" % e)
    ours = session(d, "v", vdiskd)
    theirs = session(d, "q", qsd)
    ok = True
    if len(ours) != len(theirs):
        ok = result(False, "bitmaps-steps", "%d steps against %d" % (len(ours), len(theirs)))
    for (label, v), (label_q, q) in zip(ours, theirs):
        name = "bitmaps " + label.split(" {")[0]
        if label != label_q:
            ok = result(False, name, "step order differs: %s / %s" % (label, label_q)) and ok
        elif v != q:
            if isinstance(v, dict) and isinstance(q, dict):
                v = {k: x for k, x in v.items() if q.get(k) != x}
                q = {k: x for k, x in q.items() if k in v}
            ok = result(False, name, "vdiskd %s, qemu-storage-daemon %s"
                        % (json.dumps(v)[:800], json.dumps(q)[:800])) and ok
    result(ok, "bitmaps-session-equal", "see above")
    # The session must have done something: bits were set and read back over NBD.
    found = [v for label, v in ours if label == "map qemu:dirty-bitmap:d"]
    result(bool(found) and '"description": "dirty"' in found[0], "bitmaps-map-has-dirty",
           "no dirty extent read: %s" % found)

if __name__ == "__main__":
    main()
