#!/usr/bin/env python3
"""A TCP proxy for the migration fault tests that corrupts one byte on the way.

  mig_corrupt_proxy.py LISTEN-HOST LISTEN-PORT TARGET-HOST TARGET-PORT FLIP-AT

Forwards every connection to the target both ways; in the first connection's stream towards
the target, the byte at offset FLIP-AT is XORed with 0x40. Runs until killed.
"""
import socket
import sys
import threading


def pump(src, dst, flip_at):
    seen = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if flip_at is not None and seen <= flip_at < seen + len(data):
                b = bytearray(data)
                b[flip_at - seen] ^= 0x40
                data = bytes(b)
            seen += len(data)
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    lhost, lport, thost, tport, flip_at = sys.argv[1:6]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, int(lport)))
    ls.listen(16)
    first = True
    while True:
        c, _ = ls.accept()
        t = socket.create_connection((thost, int(tport)))
        flip = int(flip_at) if first else None
        first = False
        threading.Thread(target=pump, args=(c, t, flip), daemon=True).start()
        threading.Thread(target=pump, args=(t, c, None), daemon=True).start()


if __name__ == "__main__":
    main()
