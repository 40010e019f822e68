#!/usr/bin/env python3
"""16 NBD clients at once doing seeded random verified I/O.

  nbd_load.py SECONDS SEED SOCKET[,SOCKET...]   (exports "", writable, 64 MiB each)

Each client owns a 4 MiB region of one export (clients spread over the exports), keeps a
shadow copy, writes random data at random offsets/lengths with a few requests in flight,
reads back and compares every byte, flushes now and then. At the end every client reads its
whole region and compares it with the shadow. Prints PASS/FAIL lines.
"""
import multiprocessing as mp
import random
import socket
import struct
import sys
import time

OPTS = 0x49484156454f5054
REQ = 0x25609513
REGION = 4 << 20
CLIENTS = 16


def recv(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("server closed the connection")
        b += c
    return bytes(b)


def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    recv(s, 18)
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", OPTS, 7, 6) + struct.pack(">IH", 0, 0))
    while True:
        magic, opt, typ, ln = struct.unpack(">QIII", recv(s, 20))
        recv(s, ln)
        if typ == 1:
            return s
        if typ & 0x80000000:
            raise RuntimeError("GO refused: %x" % typ)


def simple(s, want):
    magic, err, cookie = struct.unpack(">IIQ", recv(s, 16))
    if err:
        raise RuntimeError("error %d for cookie %d" % (err, cookie))
    return cookie, (recv(s, want[cookie]) if want.get(cookie) else b"")


def client(idx, path, base, seconds, seed, q):
    rng = random.Random(seed * 1000 + idx)
    try:
        s = connect(path)
        shadow = bytearray(REGION)
        # Start from what the region holds (zeros for a fresh image).
        cookie = 1
        s.sendall(struct.pack(">IHHQQI", REQ, 0, 0, cookie, base, REGION))
        _, data = simple(s, {cookie: REGION})
        shadow[:] = data
        ops = 0
        end = time.time() + seconds
        while time.time() < end:
            batch = []
            want = {}
            written = []
            for _ in range(rng.randint(1, 8)):
                cookie += 1
                ln = rng.choice((512, 4096, 65536, rng.randint(1, 200000)))
                off = rng.randrange(0, REGION - ln)
                # Writes in flight at once have no order (NBD, and QEMU's server, may run
                # them in any order): a write over one already in this batch reads instead.
                clash = any(off < o + n and o < off + ln for o, n in written)
                if rng.random() < 0.6 and not clash:
                    written.append((off, ln))
                    data = rng.randbytes(ln)
                    s.sendall(struct.pack(">IHHQQI", REQ, 0, 1, cookie, base + off, ln) + data)
                    shadow[off:off + ln] = data
                    want[cookie] = 0
                else:
                    s.sendall(struct.pack(">IHHQQI", REQ, 0, 0, cookie, base + off, ln))
                    want[cookie] = ln
                    batch.append((cookie, off, ln))
            # Collect every reply of the batch before checking anything.
            got = {}
            for _ in range(len(want)):
                c, data = simple(s, want)
                got[c] = data
            for c, off, ln in batch:
                data = got[c]
                # A read may have run before a write of the same batch to that range, so
                # verify reads again now that every write is acknowledged.
                cookie += 1
                s.sendall(struct.pack(">IHHQQI", REQ, 0, 0, cookie, base + off, ln))
                _, again = simple(s, {cookie: ln})
                if again != shadow[off:off + ln]:
                    raise RuntimeError("client %d: data mismatch at %d+%d" % (idx, off, ln))
            ops += len(want)
            if rng.random() < 0.05:
                cookie += 1
                s.sendall(struct.pack(">IHHQQI", REQ, 0, 3, cookie, 0, 0))
                simple(s, {})
        cookie += 1
        s.sendall(struct.pack(">IHHQQI", REQ, 0, 0, cookie, base, REGION))
        _, data = simple(s, {cookie: REGION})
        if data != shadow:
            raise RuntimeError("client %d: final region differs" % idx)
        s.sendall(struct.pack(">IHHQQI", REQ, 0, 2, 0, 0, 0))
        s.close()
        q.put((idx, True, ops, ""))
    except Exception as e:  # noqa: BLE001
        q.put((idx, False, 0, repr(e)))


if __name__ == "__main__":
    seconds, seed = float(sys.argv[1]), int(sys.argv[2])
    paths = sys.argv[3].split(",")
    q = mp.Queue()
    procs = []
    per_export = {}
    for i in range(CLIENTS):
        path = paths[i % len(paths)]
        slot = per_export.get(path, 0)
        per_export[path] = slot + 1
        p = mp.Process(target=client, args=(i, path, slot * REGION, seconds, seed, q))
        p.start()
        procs.append(p)
    results = [q.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    total = sum(r[2] for r in results)
    bad = [r for r in results if not r[1]]
    print("clients: %d, requests: %d, errors: %d" % (CLIENTS, total, len(bad)))
    for r in bad:
        print("FAIL load-client-%d: %s" % (r[0], r[3]))
    if not bad:
        print("PASS load-%d-clients-verified" % CLIENTS)
