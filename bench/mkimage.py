#!/usr/bin/env python3
# Writes a deterministic "realistic" raw disk image for the convert benchmark: a seeded mix
# of incompressible runs (40%), text-like compressible runs (20%) and zeros (40%, half left
# as holes, half written as zero bytes), in runs from 4 KiB to 8 MiB. Same seed, same bytes.
import argparse
import itertools
import math
import os
import random
import sys

VERSION = 2  # bump when the byte layout changes, so cached images are regenerated
RUN_MIN = 4096
RUN_MAX = 8 << 20
TEXT_POOL = 8 << 20
KINDS = ["random", "text", "zero", "hole"]
SHARES = {"random": 0.4, "text": 0.2, "zero": 0.2, "hole": 0.2}


def text_pool(rng):
    # Words with a skewed (Zipf-like) frequency, broken into lines: compresses about like
    # logs or source code (roughly 3:1 with deflate), unlike random bytes or zeros.
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = []
    for _ in range(4000):
        n = 1 + min(int(rng.expovariate(0.25)), 14)
        vocab.append("".join(rng.choice(letters[: 6 + rng.randrange(20)]) for _ in range(n)))
    cum_weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    words = rng.choices(vocab, cum_weights=cum_weights, k=TEXT_POOL // 3)
    out = []
    size = 0
    i = 0
    while size < TEXT_POOL:
        n = 8 + rng.randrange(10)
        if i + n > len(words):
            i = 0
        line = "%06d %s\n" % (rng.randrange(10 ** 6), " ".join(words[i:i + n]))
        i += n
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:TEXT_POOL]


def run_length(rng):
    # Log-uniform between RUN_MIN and RUN_MAX, in whole 4 KiB blocks like a filesystem.
    n = math.exp(rng.uniform(math.log(RUN_MIN), math.log(RUN_MAX)))
    return max(RUN_MIN, int(n) // 4096 * 4096)


def generate(path, size, seed):
    rng = random.Random(seed)
    data_rng = random.Random(seed + 1)
    pool = text_pool(random.Random(seed + 2))
    counts = dict.fromkeys(KINDS, 0)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.truncate(size)
        off = 0
        while off < size:
            length = min(run_length(rng), size - off)
            # Weighted by how far each kind is below its share so far, so the mix stays
            # close to 40/20/20/20 even though single runs are up to 8 MiB long.
            end = off + length
            deficit = [max(SHARES[k] * end - counts[k], 0) + 1 for k in KINDS]
            kind = rng.choices(KINDS, deficit)[0]
            counts[kind] += length
            if kind == "hole":
                off += length
                continue
            f.seek(off)
            left = length
            while left > 0:
                n = min(left, 1 << 20)
                if kind == "random":
                    f.write(data_rng.randbytes(n))
                elif kind == "text":
                    start = data_rng.randrange(TEXT_POOL - n + 1)
                    f.write(pool[start:start + n])
                else:
                    f.write(bytes(n))
                left -= n
            off += length
    os.replace(tmp, path)
    return counts


def main():
    ap = argparse.ArgumentParser(
        description="write the realistic raw image for the convert benchmark")
    ap.add_argument("path", nargs="?")
    ap.add_argument("size", type=int, nargs="?", help="bytes, a multiple of 4096")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--version", action="store_true", help="print the layout version")
    args = ap.parse_args()
    if args.version:
        print(VERSION)
        return
    if args.path is None or args.size is None:
        ap.error("path and size are required")
    if args.size <= 0 or args.size % 4096:
        sys.exit("mkimage: size must be a positive multiple of 4096")
    counts = generate(args.path, args.size, args.seed)
    total = sum(counts.values())
    print("mkimage: %s: %s" % (args.path, ", ".join(
        "%s %.0f%%" % (k, 100.0 * v / total) for k, v in counts.items())))


if __name__ == "__main__":
    main()
