#!/usr/bin/env python3
"""Hostile and malformed NBD traffic against a running server (a raw-socket client).

  nbd_bad.py SOCKET SIZE     (the export is "", writable, SIZE bytes)

Prints one "PASS name" / "FAIL name: reason" line per check.
"""
import os
import socket
import struct
import sys
import time

INIT = 0x4e42444d41474943
OPTS = 0x49484156454f5054
REP = 0x0003e889045565a9
REQ = 0x25609513
SIMPLE = 0x67446698
STRUCT = 0x668e33ef

EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 5, 22, 28, 75, 95

sock_path = sys.argv[1]
SIZE = int(sys.argv[2])


def result(ok, name, why=""):
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, why)), flush=True)


class Conn:
    def __init__(self):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(sock_path)
        self.structured = False

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("closed")
            b += c
        return b

    def handshake(self):
        magic, opts, flags = struct.unpack(">QQH", self.recv(18))
        assert magic == INIT and opts == OPTS
        self.s.sendall(struct.pack(">I", 3))

    def option(self, opt, data=b""):
        self.s.sendall(struct.pack(">QII", OPTS, opt, len(data)) + data)

    def reply(self):
        magic, opt, typ, ln = struct.unpack(">QIII", self.recv(20))
        assert magic == REP, hex(magic)
        return opt, typ, self.recv(ln)

    def replies(self):
        out = []
        while True:
            r = self.reply()
            out.append(r)
            if r[1] == 1 or r[1] & 0x80000000:
                return out

    def go(self, structured=True, meta=True):
        self.handshake()
        if structured:
            self.option(8)
            self.reply()
            self.structured = True
        if meta:
            q = b"base:allocation"
            self.option(10, struct.pack(">I", 0) + struct.pack(">I", 1) +
                        struct.pack(">I", len(q)) + q)
            self.replies()
        self.option(7, struct.pack(">I", 0) + struct.pack(">H", 0))
        return self.replies()

    def request(self, typ, off, ln, flags=0, cookie=1, payload=b""):
        self.s.sendall(struct.pack(">IHHQQI", REQ, flags, typ, cookie, off, ln) + payload)

    def response(self, want_len=0):
        """(error, data) of the next reply, simple or structured (all chunks)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            data = self.recv(want_len) if err == 0 and want_len else b""
            return err, data
        assert magic == STRUCT, hex(magic)
        err, pieces = 0, []
        while True:
            flags, typ, cookie, ln = struct.unpack(">HHQI", self.recv(16))
            body = self.recv(ln)
            if typ == 1:
                pieces.append((struct.unpack(">Q", body[:8])[0], body[8:]))
            elif typ == 2:
                # A hole chunk: that range reads as zeros.
                off, hlen = struct.unpack(">QI", body)
                pieces.append((off, bytes(hlen)))
            elif typ & 0x8000:
                err = struct.unpack(">I", body[:4])[0]
            if flags & 1:
                return err, b"".join(p for _, p in sorted(pieces, key=lambda x: x[0]))
            magic = struct.unpack(">I", self.recv(4))[0]
            assert magic == STRUCT


def expect_err(name, typ, off, ln, flags, want, payload=b"", structured=True, meta=True):
    c = Conn()
    c.go(structured, meta)
    c.request(typ, off, ln, flags, payload=payload)
    err, _ = c.response()
    ok = err in want if isinstance(want, tuple) else err == want
    result(ok, name, "error %d, expected %s" % (err, want))
    # The connection stays usable afterwards.
    c.request(0, 0, 512, cookie=2)
    err, data = c.response(512)
    result(err == 0 and len(data) == 512, name + "-then-usable", "error %d" % err)
    c.request(2, 0, 0)
    c.s.close()


def server_alive(name):
    try:
        c = Conn()
        c.go()
        c.request(0, 0, 4096)
        err, data = c.response(4096)
        result(err == 0 and len(data) == 4096, name)
        c.request(2, 0, 0)
        c.s.close()
    except Exception as e:  # noqa: BLE001
        result(False, name, repr(e))


# Requests out of range, oversized, with bad flags: the spec's errors; session goes on.
expect_err("read-past-end", 0, SIZE - 512, 1024, 0, EINVAL)
expect_err("write-past-end", 1, SIZE, 512, 0, (ENOSPC, EINVAL), payload=b"x" * 512)
expect_err("trim-past-end", 4, SIZE, 4096, 0, EINVAL)
expect_err("zeroes-past-end", 6, SIZE - 4096, 8192, 0, (ENOSPC, EINVAL))
expect_err("read-too-big", 0, 0, 64 << 20, 0, (EINVAL, EOVERFLOW))
expect_err("write-too-big", 1, 0, 33 << 20, 0, (EINVAL, EOVERFLOW),
           payload=b"\0" * (33 << 20))
expect_err("unknown-command", 42, 0, 512, 0, EINVAL)
expect_err("bad-flag-on-read", 0, 0, 512, 1 << 3, EINVAL)
expect_err("unknown-flag", 0, 0, 512, 1 << 9, EINVAL)
expect_err("df-without-structured", 0, 0, 512, 1 << 2, EINVAL, structured=False, meta=False)
expect_err("block-status-no-context", 7, 0, 4096, 0, EINVAL, meta=False)
expect_err("block-status-zero-length", 7, 0, 0, 0, EINVAL)
expect_err("fast-zero-not-faster", 6, 0, 4096, 1 << 4, (0, ENOTSUP))

# Option haggling: unknown options are refused and haggling continues; malformed ones
# get ERR_INVALID; a wrong export name ERR_UNKNOWN.
c = Conn()
c.handshake()
c.option(99, b"abc")
opt, typ, _ = c.reply()
result(typ == 0x80000001, "option-unknown-unsup", hex(typ))
c.option(7, struct.pack(">I", 100) + b"x")           # name longer than the option
opt, typ, _ = c.reply()
result(typ == 0x80000003, "option-go-bad-length", hex(typ))
c.option(10, struct.pack(">I", 0) + struct.pack(">I", 5) + b"ab")  # before structured
r = c.replies()
result(r[-1][1] == 0x80000003, "option-meta-before-structured", hex(r[-1][1]))
c.option(8)
c.reply()
c.option(10, struct.pack(">I", 0) + struct.pack(">I", 2) + struct.pack(">I", 99) + b"q")
r = c.replies()
result(r[-1][1] == 0x80000003, "option-meta-bad-query-length", hex(r[-1][1]))
c.option(7, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
r = c.replies()
result(r[-1][1] == 0x80000006, "option-go-unknown-export", hex(r[-1][1]))
c.option(3, b"x")
r = c.replies()
result(r[-1][1] == 0x80000003, "option-list-with-data", hex(r[-1][1]))
c.option(7, struct.pack(">I", 0) + struct.pack(">H", 0))
r = c.replies()
result(r[-1][1] == 1, "option-haggling-continues", hex(r[-1][1]))
c.s.close()

# Protocol violations drop that connection only.
def expect_dropped(name, c, raw):
    c.s.sendall(raw)
    try:
        c.recv(1)
        result(False, name, "the server answered")
    except (EOFError, ConnectionResetError, socket.timeout) as e:
        result(not isinstance(e, socket.timeout), name, repr(e))


c = Conn()
c.handshake()
expect_dropped("bad-option-magic-dropped", c, struct.pack(">QII", 0x1122334455667788, 7, 0))
c = Conn()
c.handshake()
expect_dropped("huge-option-dropped", c, struct.pack(">QII", OPTS, 7, (64 << 20)))
c = Conn()
c.go()
expect_dropped("bad-request-magic-dropped", c,
               struct.pack(">IHHQQI", 0xdeadbeef, 0, 0, 1, 0, 512))
server_alive("server-alive-after-violations")

# A client vanishing mid-request: an acknowledged, flushed write survives; the half-sent one
# is not applied; other clients are not disturbed.
c = Conn()
c.go()
pattern = bytes([0x5a]) * 65536
c.request(1, 1 << 20, len(pattern), payload=pattern, cookie=7)
err, _ = c.response()
c.request(3, 0, 0, cookie=8)
ferr, _ = c.response()
result(err == 0 and ferr == 0, "acked-write-and-flush")
c.request(1, 2 << 20, 65536, cookie=9, payload=b"\xa5" * 1000)   # payload cut short
c.s.close()
time.sleep(0.2)
c = Conn()
c.go()
c.request(0, 1 << 20, 65536)
err, data = c.response(65536)
result(err == 0 and data == pattern, "acked-write-reads-back")
c.request(0, 2 << 20, 1000)
err, data = c.response(1000)
result(err == 0 and data != b"\xa5" * 1000, "half-sent-write-not-applied")
c.request(2, 0, 0)
c.s.close()

# Many requests in flight on one connection, replies matched by cookie.
c = Conn()
c.go()
for i in range(64):
    c.request(1, i * 4096, 4096, cookie=1000 + i, payload=bytes([i]) * 4096)
errs = [c.response()[0] for _ in range(64)]
for i in range(64):
    c.request(0, i * 4096, 4096, cookie=2000 + i)
ok = True
for _ in range(64):
    magic = struct.unpack(">I", c.recv(4))[0]
    flags, typ, cookie, ln = struct.unpack(">HHQI", c.recv(16))
    body = c.recv(ln)
    ok &= typ == 1 and body[8:] == bytes([cookie - 2000]) * 4096
result(not any(errs) and ok, "pipelined-requests")
c.request(2, 0, 0)
c.s.close()
server_alive("server-alive-at-end")
