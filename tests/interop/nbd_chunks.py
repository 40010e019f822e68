#!/usr/bin/env python3
"""Shows how an NBD server answers one read with structured replies (unix socket).

  nbd_chunks.py SOCKET EXPORT OFFSET LENGTH [df|simple]

Negotiates structured replies (unless "simple"), reads [OFFSET, OFFSET+LENGTH) (with the
DF flag when "df") and prints one line per reply chunk: "data OFF LEN", "hole OFF LEN",
"none", "error CODE", then "merged: ..." (adjacent chunks of one kind joined, in offset
order) and "sha256: ..." of the bytes the reply stands for (holes read as zeros). Exits 1
on a protocol error (a chunk outside the request, overlapping or missing bytes, no DONE).
"""
import hashlib
import socket
import struct
import sys

NBD_OPTS_MAGIC = 0x49484156454F5054
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
FLAG_DONE = 1
CMD_FLAG_DF = 1 << 2


def recvn(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(min(n - len(buf), 1 << 20))
        if not b:
            raise ConnectionError("the server hung up")
        buf += b
    return bytes(buf)


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", NBD_OPTS_MAGIC, opt, len(data)) + data)
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recvn(s, 20))
        recvn(s, ln)
        if typ == 1:
            return
        if typ & 0x80000000:
            raise ConnectionError("option %d refused (0x%x)" % (opt, typ))


def main():
    path, name, off, ln = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else ""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    recvn(s, 18)
    s.sendall(struct.pack(">I", 3))
    if mode != "simple":
        option(s, OPT_STRUCTURED_REPLY)
    option(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    flags = CMD_FLAG_DF if mode == "df" else 0
    s.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, flags, 0, 1, off, ln))
    buf = bytearray(ln)
    covered = []
    while True:
        magic = struct.unpack(">I", recvn(s, 4))[0]
        if magic == NBD_SIMPLE_REPLY_MAGIC:
            err, _ = struct.unpack(">IQ", recvn(s, 12))
            if err:
                print("error %d" % err)
                return 1
            buf[:] = recvn(s, ln)
            print("simple %d %d" % (off, ln))
            covered.append(("data", off, ln))
            break
        if magic != NBD_STRUCTURED_REPLY_MAGIC:
            print("bad magic 0x%x" % magic)
            return 1
        cflags, ctype, _, clen = struct.unpack(">HHQI", recvn(s, 16))
        payload = recvn(s, clen)
        if ctype == 1:
            coff = struct.unpack(">Q", payload[:8])[0]
            data = payload[8:]
            print("data %d %d" % (coff, len(data)))
            covered.append(("data", coff, len(data)))
            if coff < off or coff + len(data) > off + ln:
                print("chunk outside the request")
                return 1
            buf[coff - off:coff - off + len(data)] = data
        elif ctype == 2:
            coff, hlen = struct.unpack(">QI", payload)
            print("hole %d %d" % (coff, hlen))
            covered.append(("hole", coff, hlen))
            if coff < off or coff + hlen > off + ln:
                print("chunk outside the request")
                return 1
        elif ctype == 0:
            print("none")
        else:
            print("error chunk type %d" % ctype)
            return 1
        if cflags & FLAG_DONE:
            break
    covered.sort(key=lambda c: c[1])
    pos = off
    merged = []
    for kind, coff, clen in covered:
        if coff != pos:
            print("bytes %d..%d not covered exactly once" % (pos, coff))
            return 1
        pos += clen
        if merged and merged[-1][0] == kind:
            merged[-1][2] += clen
        else:
            merged.append([kind, coff, clen])
    if pos != off + ln:
        print("the reply ends at %d, not %d" % (pos, off + ln))
        return 1
    print("merged: " + " ".join("%s:%d+%d" % tuple(m) for m in merged))
    print("sha256: " + hashlib.sha256(bytes(buf)).hexdigest())
    s.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, 2, 2, 0, 0))
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
