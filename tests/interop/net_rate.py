#!/usr/bin/env python3
"""Throughput of a TCP connection, for checking a capped link (tests/interop/netns-pair.sh).

  net_rate.py sink HOST PORT        accepts one connection, reads until it closes, prints
                                    "BYTES SECONDS BITS_PER_SECOND" (timed from the first
                                    byte to the last)
  net_rate.py send HOST PORT SECS   connects (retrying for 5 s) and sends for SECS seconds
"""
import socket
import sys
import time


def sink(host, port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    srv.settimeout(30)
    conn, _ = srv.accept()
    conn.settimeout(30)
    total, t0, t1 = 0, None, None
    while True:
        b = conn.recv(1 << 20)
        if not b:
            break
        if t0 is None:
            t0 = time.perf_counter()
        total += len(b)
        t1 = time.perf_counter()
    secs = (t1 - t0) if t0 is not None and t1 > t0 else 0.0
    print("%d %.3f %.0f" % (total, secs, total * 8 / secs if secs else 0), flush=True)


def send(host, port, secs):
    end = time.time() + 5
    while True:
        try:
            c = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.05)
    buf = bytes(1 << 20)
    stop = time.perf_counter() + secs
    while time.perf_counter() < stop:
        c.sendall(buf)
    c.close()


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
