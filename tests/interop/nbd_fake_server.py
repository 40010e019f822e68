#!/usr/bin/env python3
"""A scripted NBD server for testing clients' handling of unusual or broken servers.

usage: nbd_fake_server.py SOCKET SCENARIO
Listens on the unix socket SOCKET and plays SCENARIO to every client until killed. The
scenarios (see SCENARIOS) answer NBD_OPT_LIST, NBD_OPT_INFO and NBD_OPT_LIST_META_CONTEXT
the way `qemu-nbd --list` asks, with one twist each.
"""
import os
import socket
import struct
import sys

INIT = b"NBDMAGIC"
OPTS = 0x49484156454F5054
REP = 0x0003E889045565A9
OLDSTYLE = 0x0000420281861253

OPT_ABORT, OPT_LIST, OPT_INFO, OPT_SR, OPT_LMC = 2, 3, 6, 8, 9
ACK, SERVER, INFO, META = 1, 2, 3, 4
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_UNKNOWN, ERR_TLS = (
    0x80000001, 0x80000002, 0x80000003, 0x80000006, 0x80000005)


def recvall(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b


def rep(c, opt, typ, data=b"", magic=REP):
    c.sendall(struct.pack(">QIII", magic, opt, typ, len(data)) + data)


def info_export(size, flags):
    return struct.pack(">HQH", 0, size, flags)


def info_bs(mn, pref, mx):
    return struct.pack(">HIII", 3, mn, pref, mx)


# Each scenario: dict with optional keys
#  greeting: "close" | "badmagic" | "oldstyle" | "notfixed" | "badserver"
#  sr: reply type to STRUCTURED_REPLY (default ACK)
#  exports: list of (name, desc) ; list_err: (type, msg) for LIST
#  info: function(name) -> list of (type, data) replies for INFO
#  meta: list of context names, or (type,msg) error
SCENARIOS = {
    "close": {"greeting": "close"},
    "badmagic": {"greeting": "badmagic"},
    "badserver": {"greeting": "badserver"},
    "oldstyle": {"greeting": "oldstyle"},
    "notfixed": {"greeting": "notfixed"},
    "no-structured": {"sr": ERR_UNSUP},
    "list-unsup": {"list_err": (ERR_UNSUP, b"")},
    "list-policy": {"list_err": (ERR_POLICY, b"go away")},
    "list-tls": {"list_err": (ERR_TLS, b"")},
    "list-bad-magic": {"list_magic": 0x1234},
    "list-eof": {"list_eof": True},
    "info-unsup": {"info_err": (ERR_UNSUP, b"")},
    "info-unknown": {"info_err": (ERR_UNKNOWN, b"no such export")},
    "info-no-export": {"info_noexport": True},
    "info-bad-min": {"bs": (3, 4096, 1 << 25)},
    "info-bad-pref": {"bs": (512, 256, 1 << 25)},
    "info-bad-max": {"bs": (4096, 4096, 512)},
    "info-unaligned": {"bs": (4096, 4096, 1 << 25), "size": 5000},
    "info-extra": {"extra_info": True},
    "meta-none": {"meta": []},
    "meta-err": {"meta_err": (ERR_POLICY, b"no")},
    "meta-only-base": {"meta": ["base:allocation"], "meta_qemu": ["qemu:dirty-bitmap:b"]},
    "many": {
        "exports": [("", None), ("second", "desc two"), ("ro", "")],
        "flags": 0x1 | 0x2 | 0x4 | 0x10 | 0x100 | 0x200,
        "meta": ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:x"],
    },
}


def serve(c, sc):
    g = sc.get("greeting")
    if g == "close":
        return
    if g == "badmagic":
        c.sendall(b"NBDMAGIX" + b"\0" * 10)
        return
    if g == "badserver":
        c.sendall(INIT + struct.pack(">Q", 0x1122334455667788))
        return
    if g == "oldstyle":
        c.sendall(INIT + struct.pack(">QQI", OLDSTYLE, 1 << 20, 0x5) + b"\0" * 124)
        recvall(c, 28)
        return
    c.sendall(INIT + struct.pack(">QH", OPTS, 0 if g == "notfixed" else 3))
    recvall(c, 4)
    if g == "notfixed":
        return
    exports = sc.get("exports", [("exp", "a disk")])
    while True:
        magic, opt, ln = struct.unpack(">QII", recvall(c, 16))
        data = recvall(c, ln)
        if opt == OPT_ABORT:
            rep(c, opt, ACK)
            return
        if opt == OPT_SR:
            rep(c, opt, sc.get("sr", ACK))
        elif opt == OPT_LIST:
            if "list_err" in sc:
                rep(c, opt, sc["list_err"][0], sc["list_err"][1])
                continue
            if sc.get("list_eof"):
                return
            for name, desc in exports:
                d = struct.pack(">I", len(name)) + name.encode() + (desc or "").encode()
                rep(c, opt, SERVER, d, magic=sc.get("list_magic", REP))
            rep(c, opt, ACK)
        elif opt == OPT_INFO:
            if "info_err" in sc:
                rep(c, opt, sc["info_err"][0], sc["info_err"][1])
                continue
            if sc.get("extra_info"):
                rep(c, opt, INFO, struct.pack(">H", 2) + b"extra description")
                rep(c, opt, INFO, struct.pack(">H", 99) + b"\1\2\3")
            if "bs" in sc:
                rep(c, opt, INFO, info_bs(*sc["bs"]))
            if not sc.get("info_noexport"):
                rep(c, opt, INFO, info_export(sc.get("size", 1 << 20), sc.get("flags", 0x4d)))
            rep(c, opt, ACK)
        elif opt == OPT_LMC:
            if "meta_err" in sc:
                rep(c, opt, sc["meta_err"][0], sc["meta_err"][1])
                continue
            nq = struct.unpack(">I", data[4 + struct.unpack(">I", data[:4])[0]:][:4])[0]
            names = sc.get("meta", ["base:allocation"]) if nq == 0 else sc.get("meta_qemu", [])
            for i, m in enumerate(names):
                rep(c, opt, META, struct.pack(">I", i) + m.encode())
            rep(c, opt, ACK)
        else:
            rep(c, opt, ERR_UNSUP)


def main():
    path, name = sys.argv[1], sys.argv[2]
    sc = SCENARIOS[name]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    s.bind(path)
    s.listen(4)
    while True:
        c, _ = s.accept()
        try:
            serve(c, sc)
        except (EOFError, OSError):
            pass
        c.close()


if __name__ == "__main__":
    main()
