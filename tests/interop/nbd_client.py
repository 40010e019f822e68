#!/usr/bin/env python3
"""Tiny raw NBD clients for the shell tests (unix sockets only).

  nbd_client.py probe SOCKET [greeting]   connect and close at once (a port probe); with
                                          "greeting", read the server's greeting first
  nbd_client.py hold SOCKET READYFILE     finish the handshake (NBD_OPT_GO, export ""),
                                          create READYFILE, stay in transmission until
                                          SIGTERM, then NBD_CMD_DISC and close
Exit status 0 on success, 1 when the server refused or hung up.
"""
import signal
import socket
import struct
import sys

NBD_OPTS_MAGIC = 0x49484156454F5054
NBD_REQUEST_MAGIC = 0x25609513


def recvn(s, n):
    buf = b""
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise ConnectionError("the server hung up")
        buf += b
    return buf


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    return s


def hold(path, ready):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    s = connect(path)
    recvn(s, 18)
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", NBD_OPTS_MAGIC, 7, 6) + struct.pack(">IH", 0, 0))
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recvn(s, 20))
        recvn(s, ln)
        if typ == 1:
            break
        if typ & 0x80000000:
            raise ConnectionError("NBD_OPT_GO refused")
    with open(ready, "w"):
        pass
    while not stop:
        signal.pause()
    s.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, 2, 0, 0, 0))
    s.close()


def main():
    try:
        if sys.argv[1] == "probe":
            s = connect(sys.argv[2])
            if len(sys.argv) > 3:
                recvn(s, 18)
            s.close()
        elif sys.argv[1] == "hold":
            hold(sys.argv[2], sys.argv[3])
        else:
            raise SystemExit(__doc__)
    except (OSError, ConnectionError) as e:
        print("nbd_client: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
