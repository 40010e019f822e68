#!/usr/bin/env python3
"""The graph of named nodes on vdiskd and on qemu-storage-daemon, side by side.

  qmp_graph.py VDISKD QSD DIR

The same commands go to both daemons: nodes shared by name (a file node under a qcow2
and a raw node, a qcow2 node as the backing of another), uses that conflict (a second
writer of a file, exports of a node that a format node writes), blockdev-del while a
node is used, blockdev-snapshot onto an exported node. Every reply must be the same
(success or error class and text, paths aside), query-named-block-nodes must list the
same nodes (automatic names aside) and the data must be the same: what is written
through the export of the overlay, and what the base holds, read through both daemons.
Prints one "PASS name" or "FAIL name: reason" line per check.
"""
import json
import subprocess
import sys

from qmp_session import Client, daemon_cmd, result, start, stop


def script(d, tag):
    img = lambda n: "%s/%s-%s.qcow2" % (d, tag, n)
    sock = "%s/%s-g.nbd" % (d, tag)
    steps = [
        ("blockdev-add", {"driver": "file", "node-name": "f0", "filename": img("a")}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q1", "file": "f0"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q2", "file": "f0"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q3", "file": "f0",
                          "read-only": True}),
        ("blockdev-add", {"driver": "raw", "node-name": "r1", "file": "f0"}),
        ("blockdev-add", {"driver": "raw", "node-name": "r2", "file": "nosuch"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q1", "file": "f0"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "b1", "backing": "q1",
                          "file": {"driver": "file", "filename": img("b"),
                                   "node-name": "bf"}}),
        ("blockdev-del", {"node-name": "f0"}),
        ("blockdev-del", {"node-name": "q1"}),
        ("blockdev-del", {"node-name": "bf"}),
        ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}}),
        ("block-export-add", {"type": "nbd", "id": "e1", "node-name": "b1",
                              "writable": True}),
        ("block-export-add", {"type": "nbd", "id": "e2", "node-name": "f0",
                              "writable": True}),
        ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "f0"}),
        ("block-export-add", {"type": "nbd", "id": "e4", "node-name": "q1",
                              "writable": True}),
        ("blockdev-del", {"node-name": "b1"}),
        ("block_resize", {"node-name": "b1", "size": 128 << 20}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "ov", "backing": None,
                          "file": {"driver": "file", "filename": img("ov")}}),
        ("blockdev-snapshot", {"node": "b1", "overlay": "e1"}),
        ("blockdev-snapshot", {"node": "b1", "overlay": "ov"}),
        ("blockdev-snapshot", {"node": "b1", "overlay": "ov"}),
        ("blockdev-del", {"node-name": "ov"}),
        ("blockdev-del", {"node-name": "b1"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "ro", "read-only": True,
                          "file": {"driver": "file", "filename": img("c")}}),
        ("block-export-add", {"type": "nbd", "id": "e5", "node-name": "ro",
                              "writable": True}),
    ]
    c = Client("%s/%s.qmp" % (d, tag))
    c.cmd("qmp_capabilities")
    out = []
    for name, args in steps:
        out.append((name, args, c.cmd(name, **args)))
    # The data: the export of b1 now writes into ov; it reads q1's data where neither
    # overlay has any.
    uri = "nbd+unix:///b1?socket=" + sock
    w = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 1M 64k", uri],
                       capture_output=True, text=True)
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x77 1M 64k",
                        "-c", "read -P 0x33 0 64k", uri], capture_output=True, text=True)
    data_ok = w.returncode == 0 and r.returncode == 0 and "fail" not in r.stdout
    nodes = c.cmd("query-named-block-nodes").get("return", [])
    c.cmd("quit")
    c.close()
    return out, nodes, data_ok, r.stdout + r.stderr


def graph_of(nodes, d, tag):
    """The nodes as a sorted list: name (automatic ones as '#'), driver, file (a json:
    name where the graph is not what the image files say), ro."""
    g = []
    for n in nodes:
        name = "#" if n["node-name"].startswith("#") else n["node-name"]
        f = n["file"].replace("%s/%s-" % (d, tag), "X-")
        g.append((name, n["drv"], f, n["ro"]))
    return sorted(g)


def main(vdiskd, qsd, d):
    runs = {}
    for tag, binary in (("v", vdiskd), ("q", qsd)):
        for n in ("a", "b", "ov", "c"):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                            "%s/%s-%s.qcow2" % (d, tag, n), "64M"], check=True)
        subprocess.run(["qemu-io", "-c", "write -P 0x33 0 2M", "%s/%s-a.qcow2" % (d, tag)],
                       check=True, stdout=subprocess.DEVNULL)
        p = start(daemon_cmd(binary, d, tag), "%s/%s.qmp" % (d, tag))
        try:
            runs[tag] = script(d, tag)
        except Exception as e:  # noqa: BLE001 - any failure is a test failure
            runs[tag] = ([("exception", {}, {"error": {"class": "x", "desc": repr(e)}})],
                         [], False, "")
        stop(p)
        result(p.returncode == 0, "graph-%s-exit" % tag, "exit code %s" % p.returncode)
    (vo, vn, vdata, vwhy), (qo, qn, qdata, _) = runs["v"], runs["q"]
    result(len(vo) == len(qo), "graph-replies", "%d vs %d" % (len(vo), len(qo)))
    for i, ((name, args, rv), (_, _, rq)) in enumerate(zip(vo, qo)):
        strip = lambda r, t: json.loads(json.dumps(r).replace("%s/%s-" % (d, t), "X-"))
        rv, rq = strip(rv, "v"), strip(rq, "q")
        same = ("error" in rv) == ("error" in rq) and \
            (("error" not in rv) or rv["error"] == rq["error"])
        result(same, "graph-%02d-%s" % (i, name),
               "%s: vdiskd %s, qsd %s" % (json.dumps(args), rv, rq))
    gv, gq = graph_of(vn, d, "v"), graph_of(qn, d, "q")
    result(gv == gq, "graph-nodes", "vdiskd %s\n    qsd %s" % (gv, gq))
    result(qdata, "graph-data-qsd")
    result(vdata, "graph-data-vdiskd", vwhy)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
