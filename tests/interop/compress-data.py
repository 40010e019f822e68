#!/usr/bin/env python3
"""Test data for the compression tests: deterministic (seeded) mixes of text-like data,
random bytes, zeros and pattern fills, so that some clusters compress well, some not at all
(QEMU then stores them uncompressed) and some are skipped as zero.

Subcommands:
  disk  OUT --size N --seed S   a raw disk image; prints one "OFFSET LENGTH PATTERN" line
                                per pattern-filled range (PATTERN 0 = zeros), for read -P
  fill  OUT --kind K --size N --seed S   a plain file of one kind (text, random, mixed),
                                e.g. a source file for qemu-io's `write -s`
"""

import argparse
import random
import sys

KiB = 1024
MiB = 1024 * KiB

WORDS = (b"the cluster refcount table of a qcow2 image maps guest offsets to host "
         b"offsets while compressed clusters are packed byte after byte and each one "
         b"holds a single deflate or zstd stream vdisk reads writes and checks them "
         b"boot kernel initrd libc passwd shadow group fstab hostname resolv conf "
         b"0 1 2 3 42 100 256 4096 65536 /usr/lib /etc /var/log/syslog { } ( ) ; = ").split()


def text(rng, n):
    """Text-like bytes: words, punctuation and line breaks (deflate gets about 3:1)."""
    out = bytearray()
    while len(out) < n:
        line = b" ".join(rng.choices(WORDS, k=rng.randint(3, 14)))
        out += line + (b".\n" if rng.random() < 0.3 else b"\n")
    return bytes(out[:n])


def piece(rng, kind, n):
    if kind == "text":
        return text(rng, n)
    if kind == "random":
        return rng.randbytes(n)
    if kind == "zero":
        return bytes(n)
    if kind == "sparse":
        # Mostly zeros with a few text sectors: a request that is not all zero is written
        # whole, zeros included.
        b = bytearray(n)
        for _ in range(max(1, n // (16 * KiB))):
            off = rng.randrange(0, max(1, n - 512)) // 512 * 512
            b[off:off + 512] = text(rng, min(512, n - off))
        return bytes(b)
    raise ValueError(kind)


def mixed(rng, n):
    """Segments of random kinds, 512 B to 48 KiB each, sector-aligned."""
    out = bytearray()
    while len(out) < n:
        k = rng.choice(("text", "text", "random", "zero", "sparse"))
        m = min(n - len(out), rng.randint(1, 96) * 512)
        out += piece(rng, k, m)
    return bytes(out)


def make_disk(out, size, seed):
    """A fixed plan (so every cluster size from 4 KiB to 2 MiB meets whole zero clusters,
    incompressible clusters, compressible ones and mixes) filled from the seed. Pattern
    ranges are printed for read -P checks; the image ends in a pattern range."""
    rng = random.Random(seed)
    data = bytearray()
    patterns = []

    def add(kind, n, pat=None):
        if pat is not None:
            patterns.append((len(data), n, pat))
            data.extend(bytes([pat]) * n)
        elif kind == "mixed":
            data.extend(mixed(rng, n))
        else:
            data.extend(piece(rng, kind, n))

    add("text", 1 * MiB)
    add("random", 192 * KiB)
    add(None, 64 * KiB, 0)
    add("mixed", 768 * KiB)
    add(None, 1 * MiB, 0xa5)
    add(None, 4 * KiB, 0x5a)
    add("sparse", 1 * MiB - 4 * KiB)
    add(None, 2 * MiB, 0)
    tail = 8 * KiB
    if size < len(data) + tail:
        raise SystemExit("size must be at least %d" % (len(data) + tail))
    add("mixed", size - len(data) - tail)
    add(None, tail, 0x3c)
    with open(out, "wb") as f:
        f.write(data)
    for off, n, pat in patterns:
        print("%d %d 0x%02x" % (off, n, pat))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("disk")
    d.add_argument("out")
    d.add_argument("--size", type=int, required=True)
    d.add_argument("--seed", type=int, default=1)
    f = sub.add_parser("fill")
    f.add_argument("out")
    f.add_argument("--kind", choices=("text", "random", "mixed"), required=True)
    f.add_argument("--size", type=int, required=True)
    f.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.cmd == "disk":
        make_disk(a.out, a.size, a.seed)
    else:
        rng = random.Random(a.seed)
        data = mixed(rng, a.size) if a.kind == "mixed" else piece(rng, a.kind, a.size)
        with open(a.out, "wb") as fh:
            fh.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
