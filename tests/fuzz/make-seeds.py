#!/usr/bin/env python3
"""Builds the seed corpora of the qcow2 fuzz targets from images: small valid images made
by qemu-img and qemu-io (many kinds, some with internal snapshots), plus the corrupt-image
corpus (tests/corrupt/make-corpus.py). Writes OUTDIR/<target>/ for each target:

  qcow2-open      whole images
  qcow2-read      whole images of at most 64 KiB (the fast variant's inputs)
  qcow2-header    8 bytes of file length, then cluster 0 (at most 64 KiB of it)
  snapshot-table  entry count, a mode byte, then the table read at snapshots_offset

usage: make-seeds.py OUTDIR
"""

import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IO = os.environ.get("QEMU_IO", "qemu-io")
MAX_SEED = 64 * 1024
# Modes of fuzz-snapshot-table.c: strict; no L1 checks; repair; repair with fetch.
SNAPSHOT_MODES = (0x10, 0x01, 0x03, 0x07)

IO_WRITES = ["write -P 0x41 0 5k", "write -z 64k 8k", "write -P 0x42 1M 1k", "discard 0 4k"]

# (name, create options, virtual size, qemu-io commands, snapshots to take)
VALID = [
    ("c512", "cluster_size=512", "4M", IO_WRITES, 0),
    ("c4k", "cluster_size=4096", "4M", IO_WRITES, 0),
    ("v2", "compat=0.10,cluster_size=4096", "4M", IO_WRITES, 0),
    ("extl2", "extended_l2=on,cluster_size=16384", "4M", IO_WRITES, 0),
    ("lazy", "lazy_refcounts=on,cluster_size=4096", "4M", IO_WRITES, 0),
    ("rc1", "refcount_bits=1,cluster_size=4096", "4M", IO_WRITES, 0),
    ("rc64", "refcount_bits=64,cluster_size=1024", "4M", IO_WRITES, 0),
    ("zstd", "compression_type=zstd,cluster_size=4096", "4M", IO_WRITES, 0),
    ("tiny512", "cluster_size=512", "64k", ["write -P 0x61 0 1k", "write -P 0x62 32k 512"], 0),
    ("tiny1k", "cluster_size=1024", "256k",
     ["write -P 0x61 0 3k", "write -z 8k 2k", "write -P 0x62 100k 1k"], 0),
    ("tiny4k", "cluster_size=4096", "1M", ["write -P 0x61 4k 4k", "write -P 0x62 512k 8k"], 0),
    ("tinyv2", "compat=0.10,cluster_size=512", "128k", ["write -P 0x61 0 2k"], 0),
    ("tinyrc16", "refcount_bits=16,cluster_size=512,lazy_refcounts=on", "128k",
     ["write -P 0x61 0 1k", "write -z -u 0 512"], 0),
    ("snap512", "cluster_size=512", "128k", ["write -P 0x61 0 1k"], 3),
    ("snap4k", "cluster_size=4096", "1M", ["write -P 0x61 0 8k"], 2),
    ("snapv2", "compat=0.10,cluster_size=4096", "1M", ["write -P 0x61 0 8k"], 2),
    ("backing", "cluster_size=4096,backing_file=c4k.qcow2,backing_fmt=qcow2", "4M",
     ["write -P 0x43 8k 4k"], 1),
]


def run(*argv, cwd=None):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    if p.returncode != 0:
        raise SystemExit("make-seeds: %s failed: %s" % (" ".join(argv),
                                                        p.stdout.decode(errors="replace")))


def make_valid(workdir):
    images = []
    for name, opts, size, cmds, snaps in VALID:
        path = os.path.join(workdir, name + ".qcow2")
        run(QEMU_IMG, "create", "-f", "qcow2", "-o", opts, path, size, cwd=workdir)
        argv = [QEMU_IO, "-f", "qcow2"]
        for c in cmds:
            argv += ["-c", c]
        run(*argv, path, cwd=workdir)
        for i in range(snaps):
            # Names of several lengths, one long enough to need truncation on re-encode.
            sname = ["s%d" % i, "snapshot number %d" % i, "x" * 300][i % 3]
            run(QEMU_IMG, "snapshot", "-c", sname, path, cwd=workdir)
            run(QEMU_IO, "-f", "qcow2", "-c", "write -P 0x%x %dk 1k" % (0x70 + i, i),
                path, cwd=workdir)
        images.append((name, path))
    # Persistent bitmaps: one clean and one with bits, so that the directory, a table and
    # a data cluster are all in the image.
    for name, opts in (("bitmaps512", "cluster_size=512"), ("bitmaps4k", "cluster_size=4096")):
        path = os.path.join(workdir, name + ".qcow2")
        run(QEMU_IMG, "create", "-f", "qcow2", "-o", opts, path, "256k", cwd=workdir)
        run(QEMU_IMG, "bitmap", "--add", "-g", "512", path, "dirty", cwd=workdir)
        run(QEMU_IMG, "bitmap", "--add", "--disable", path, "off", cwd=workdir)
        run(QEMU_IO, "-f", "qcow2", "-c", "write -P 0x63 4k 8k", path, cwd=workdir)
        images.append((name, path))
    raw = os.path.join(workdir, "data.raw")
    with open(raw, "wb") as f:
        f.write(bytes((i * 7 + (i >> 9)) & 0xff for i in range(20000)))
    for name, opts in (("comp-zlib", "cluster_size=4096"),
                       ("comp-zstd", "cluster_size=1024,compression_type=zstd")):
        path = os.path.join(workdir, name + ".qcow2")
        run(QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, raw, path)
        images.append((name, path))
    return images


def corrupt_images(workdir):
    out = os.path.join(workdir, "corrupt")
    run(sys.executable, os.path.join(HERE, "..", "corrupt", "make-corpus.py"), out)
    images = []
    for case in sorted(os.listdir(out)):
        path = os.path.join(out, case, "image.qcow2")
        if os.path.isfile(path):
            images.append(("corrupt-" + case, path))
    return images


def header_fields(data):
    """(cluster size, nb_snapshots, snapshots_offset) or None when not a qcow2 header."""
    if len(data) < 72 or data[:4] != b"QFI\xfb":
        return None
    cluster_bits = struct.unpack(">I", data[20:24])[0]
    if not 9 <= cluster_bits <= 21:
        return None
    nb, off = struct.unpack(">IQ", data[60:72])
    return 1 << cluster_bits, nb, off


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: make-seeds.py OUTDIR")
    out = os.path.abspath(sys.argv[1])
    work = os.path.join(out, ".work")
    if os.path.exists(out):
        shutil.rmtree(out)
    dirs = {t: os.path.join(out, t)
            for t in ("qcow2-open", "qcow2-read", "qcow2-header", "snapshot-table")}
    for d in list(dirs.values()) + [work]:
        os.makedirs(d)

    images = make_valid(work) + corrupt_images(work)
    for name, path in images:
        with open(path, "rb") as f:
            data = f.read()
        write(os.path.join(dirs["qcow2-open"], name), data)
        if len(data) <= MAX_SEED:
            write(os.path.join(dirs["qcow2-read"], name), data)
        fields = header_fields(data)
        cluster = fields[0] if fields else MAX_SEED
        write(os.path.join(dirs["qcow2-header"], name),
              struct.pack(">Q", len(data)) + data[:min(cluster, MAX_SEED)])
        if fields and 0 < fields[1] < 64 and fields[2] < len(data):
            table = data[fields[2]:fields[2] + MAX_SEED - 2]
            for mode in SNAPSHOT_MODES:
                write(os.path.join(dirs["snapshot-table"], "%s-m%02x" % (name, mode)),
                      bytes([fields[1], mode]) + table)
    shutil.rmtree(work)
    for t, d in sorted(dirs.items()):
        print("%s: %d seeds" % (t, len(os.listdir(d))))


if __name__ == "__main__":
    main()
