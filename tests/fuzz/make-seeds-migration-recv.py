#!/usr/bin/env python3
"""Writes the seeds of tests/fuzz/fuzz-migration-recv.c into tests/fuzz/seeds-migration-recv/
(or the directory given): whole, valid migrations onto the target's nodes ("disk0", 1 MiB;
"disk1", 64 KiB), in the stream of docs/migration-stream.md, each behind the target's mode
byte. Run it again after a change to the stream format; the output is deterministic."""
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
DISKS = {"disk0": 1 << 20, "disk1": 64 << 10}

DISK, DATA, ZERO, HOLE, SYNC, FLUSH, END, EXPORT, COMMIT = 1, 2, 3, 4, 5, 6, 7, 8, 10
NONE, ZLIB = 0, 1


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def hello(channel, nb_channels, mig_id=bytes(range(16))):
    h = struct.pack(">QII16sHH8x", 0x5644534B4D494752, 1, 0, mig_id, channel, nb_channels)
    return h + struct.pack(">I", crc32c(h))


class Channel:
    """One channel's bytes: its hello, then chunks numbered from 0."""

    def __init__(self, channel, nb_channels):
        self.out = bytearray(hello(channel, nb_channels))
        self.seq = 0

    def chunk(self, type_, disk=0, offset=0, length=0, payload=b"", pass_=0, codec=NONE,
              data_crc=None):
        if data_crc is None:
            data_crc = crc32c(payload) if payload else 0
        h = struct.pack(">IBBHQQQIII", 0x43484E4B, type_, codec, disk, self.seq, offset,
                        length, len(payload), data_crc, pass_)
        self.out += h + struct.pack(">I", crc32c(h)) + payload
        self.seq += 1

    def disk(self, index, name):
        self.chunk(DISK, disk=index, offset=DISKS[name], payload=name.encode())

    def export(self, index, id_, name, writable=True):
        self.chunk(EXPORT, disk=index, offset=1 if writable else 0,
                   payload=id_.encode() + b"\0" + name.encode())

    def data(self, index, offset, data, pass_, codec=NONE):
        payload = data
        if codec == ZLIB:
            z = zlib.compressobj(1, zlib.DEFLATED, -15)
            payload = z.compress(data) + z.flush()
            assert len(payload) < len(data)
        self.chunk(DATA, disk=index, offset=offset, length=len(data), payload=payload,
                   pass_=pass_, codec=codec, data_crc=crc32c(data))


def pattern(n, seed):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def one_channel(codec):
    """disk0 over one channel: data, zeros and holes in pass 1, a flush and the commit."""
    c = Channel(0, 1)
    c.disk(0, "disk0")
    c.export(0, "e0", "disk0")
    c.chunk(SYNC, pass_=0)
    c.data(0, 0, pattern(4096, 1), 1, codec)
    c.chunk(ZERO, offset=4096, length=61440, pass_=1)
    c.chunk(HOLE, offset=65536, length=(1 << 20) - 65536, pass_=1)
    c.chunk(SYNC, pass_=1)
    c.chunk(FLUSH)
    c.chunk(COMMIT)
    return bytes(c.out)


def two_disks_two_passes():
    """disk0 and disk1, an export of each, a range written again in pass 2."""
    c = Channel(0, 1)
    c.disk(0, "disk0")
    c.disk(1, "disk1")
    c.export(0, "e0", "disk0")
    c.export(1, "e1", "disk1-ro", writable=False)
    c.chunk(SYNC, pass_=0)
    c.data(0, 0, pattern(8192, 2), 1, ZLIB)
    c.chunk(HOLE, offset=8192, length=(1 << 20) - 8192, pass_=1)
    c.data(1, 0, pattern(512, 3), 1)
    c.chunk(ZERO, disk=1, offset=512, length=(64 << 10) - 512, pass_=1)
    c.chunk(SYNC, pass_=1)
    c.data(0, 4096, pattern(4096, 4), 2)
    c.chunk(SYNC, pass_=2)
    c.chunk(FLUSH)
    c.chunk(COMMIT)
    return bytes(c.out)


def two_channels():
    """disk0 over two channels: each carries part of pass 1; channel 1 ends with END."""
    c0, c1 = Channel(0, 2), Channel(1, 2)
    c0.disk(0, "disk0")
    c0.export(0, "e0", "disk0")
    c0.chunk(SYNC, pass_=0)
    c1.chunk(SYNC, pass_=0)
    c0.data(0, 0, pattern(4096, 5), 1)
    c1.data(0, 4096, pattern(4096, 6), 1, ZLIB)
    c0.chunk(HOLE, offset=8192, length=(1 << 19) - 8192, pass_=1)
    c1.chunk(ZERO, offset=1 << 19, length=1 << 19, pass_=1)
    c0.chunk(SYNC, pass_=1)
    c1.chunk(SYNC, pass_=1)
    c1.chunk(END)
    c0.chunk(FLUSH)
    c0.chunk(COMMIT)
    return bytes(c0.out) + bytes(c1.out)


def three_channels_two_passes():
    """disk0 and disk1 over three channels, two passes; channel 2 carries nothing but SYNCs."""
    c = [Channel(i, 3) for i in range(3)]
    c[0].disk(0, "disk0")
    c[0].disk(1, "disk1")
    c[0].export(1, "e1", "disk1")
    for ch in c:
        ch.chunk(SYNC, pass_=0)
    c[0].chunk(HOLE, offset=0, length=1 << 20, pass_=1)
    c[1].data(1, 0, pattern(4096, 7), 1, ZLIB)
    c[1].chunk(HOLE, disk=1, offset=4096, length=(64 << 10) - 4096, pass_=1)
    for ch in c:
        ch.chunk(SYNC, pass_=1)
    c[1].data(0, 512, pattern(512, 8), 2)
    c[0].chunk(ZERO, disk=1, offset=0, length=4096, pass_=2)
    for ch in c:
        ch.chunk(SYNC, pass_=2)
    c[1].chunk(END)
    c[2].chunk(END)
    c[0].chunk(FLUSH)
    c[0].chunk(COMMIT)
    return b"".join(bytes(ch.out) for ch in c)


# The mode byte (see the target): bit 0 sets the header checksums right, bits 1-2 are the
# connections - 1, bit 3 nodes that read zeros, bit 6 two decompress threads, bit 7 data
# checksums set right too.
SEEDS = {
    "stored": (0x00, one_channel(NONE)),
    "stored-fix": (0x81, one_channel(NONE)),
    "deflate-zeroes": (0x08, one_channel(ZLIB)),
    "two-disks": (0x40, two_disks_two_passes()),
    "two-disks-fix": (0xC1, two_disks_two_passes()),
    "two-channels": (0x02, two_channels()),
    "two-channels-fix": (0x4B, two_channels()),
    "three-channels": (0x44, three_channels_two_passes()),
    "three-channels-fix": (0x85, three_channels_two_passes()),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "seeds-migration-recv")
    os.makedirs(out, exist_ok=True)
    for name, (mode, stream) in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([mode]) + stream)


if __name__ == "__main__":
    main()
