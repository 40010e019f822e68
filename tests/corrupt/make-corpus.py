#!/usr/bin/env python3
"""Builds a corpus of corrupt and hostile qcow2 images: valid images made with qemu-img and
qemu-io, then damaged with byte pokes. Writes OUTDIR/<case>/image.qcow2 (plus any files
the case needs, such as backing files) and OUTDIR/manifest.json describing each case and
what vdisk must do with it. Used by tests/interop/test-corrupt-images.sh and as the fuzz
seed corpus.

Expectations per command ("fail": must exit non-zero; "ok": must exit 0; absent: either,
as long as it fails cleanly). Commands: info (-f qcow2), info-probe (format probed),
read (io -c 'read 0 64k', read-write open like qemu-io), read-ro (io -r), check, map,
write (io -c 'write -P 0x33 0 4k'). `check` exit codes 2 and 3 count as non-zero.
"""

import json
import os
import random
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import qcow2img as q  # noqa: E402

QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IO = os.environ.get("QEMU_IO", "qemu-io")

FAIL_OPEN = {"info": "fail", "read": "fail", "read-ro": "fail", "check": "fail",
             "map": "fail"}
READ_FAIL = {"read": "fail", "read-ro": "fail"}
CHECK_FAIL = {"check": "fail"}
ALL_OK = {"info": "ok", "info-probe": "ok", "read": "ok", "read-ro": "ok", "check": "ok",
          "map": "ok"}


def run(*argv, cwd=None):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    if p.returncode != 0:
        raise SystemExit("make-corpus: %s failed: %s" % (" ".join(argv),
                                                         p.stdout.decode(errors="replace")))


class Corpus:
    def __init__(self, out):
        self.out = out
        self.bases = os.path.join(out, ".bases")
        self.cases = []
        os.makedirs(self.bases, exist_ok=True)

    # ---- base images ----
    def base(self, name, opts, size, io_cmds=(), convert_from=None):
        path = os.path.join(self.bases, name + ".qcow2")
        if convert_from:
            run(QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts,
                convert_from, path)
        else:
            run(QEMU_IMG, "create", "-f", "qcow2", "-o", opts, path, str(size))
        if io_cmds:
            argv = [QEMU_IO, "-f", "qcow2"]
            for c in io_cmds:
                argv += ["-c", c]
            run(*argv, path)
        return path

    # ---- cases ----
    def case(self, name, desc, base, mutate=None, expect=None, extra=None):
        """Copies base to <name>/image.qcow2, applies mutate(path, img) and records it."""
        d = os.path.join(self.out, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "image.qcow2")
        if base is None:
            open(path, "wb").close()
        else:
            shutil.copyfile(base, path)
        if extra:
            extra(d)
        # The write case rewrites guest cluster 0 and allocates a new cluster in the middle
        # of the disk, so that refcount structures are used too.
        half = 0
        if base is not None:
            half = (q.Image(path).h["size"] // 2) & ~0xFFFF
        writes = ["write -P 0x33 0 4k", "write -P 0x34 %d 4k" % half]
        if mutate:
            mutate(path, q.Image(path) if base else None)
        self.cases.append({"name": name, "desc": desc, "image": name + "/image.qcow2",
                           "expect": expect or {}, "write": writes})

    def finish(self):
        shutil.rmtree(self.bases)
        with open(os.path.join(self.out, "manifest.json"), "w") as f:
            json.dump(self.cases, f, indent=1)
            f.write("\n")


def set_backing(path, name, fmt=None):
    """Rewrites an image's backing file reference in cluster 0 (after the header's
    extensions) the way qemu-img lays it out: backing format extension, end marker, name."""
    img = q.Image(path)
    exts = [e for e in img.extensions() if e[0] not in (q.EXT_END, q.EXT_BACKING_FORMAT)]
    off = img.h["header_length"]
    blob = b""
    if fmt is not None:
        fb = fmt.encode()
        blob += struct.pack(">II", q.EXT_BACKING_FORMAT, len(fb)) + fb.ljust(
            (len(fb) + 7) & ~7, b"\0")
    for t, eoff, ln in exts:
        blob += img.head[eoff:eoff + 8 + ((ln + 7) & ~7)]
    blob += b"\0" * 8
    nb = name.encode()
    q.poke(path, off, blob + nb)
    q.poke_field(path, "backing_file_offset", off + len(blob))
    q.poke_field(path, "backing_file_size", len(nb))


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: make-corpus.py OUTDIR")
    out = sys.argv[1]
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    c = Corpus(out)
    MiB = 1024 * 1024

    writes = ["write -P 0x61 0 12k", "write -P 0x62 2M 4k", "write -z 64k 4k",
              "write -P 0x63 5M 8k"]
    b4k = c.base("b4k", "cluster_size=4096", 16 * MiB, writes)
    b64k = c.base("b64k", "cluster_size=65536", 64 * MiB,
                  ["write -P 0x61 0 128k", "write -P 0x62 40M 64k"])
    bv2 = c.base("bv2", "compat=0.10,cluster_size=4096", 16 * MiB, writes[:2])
    bext = c.base("bext", "extended_l2=on,cluster_size=65536", 16 * MiB,
                  ["write -P 0x61 0 4k", "write -P 0x62 1M 64k"])
    bsnap = c.base("bsnap", "cluster_size=4096", 16 * MiB, writes)
    run(QEMU_IMG, "snapshot", "-c", "snap1", bsnap)
    run(QEMU_IO, "-f", "qcow2", "-c", "write -P 0x71 0 4k", bsnap)

    # Compressible, but each cluster's stream longer than one sector.
    rng = random.Random(1)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"qcow2 ", b"\n"]
    raw = os.path.join(c.bases, "data.raw")
    with open(raw, "wb") as f:
        for _ in range(64):
            f.write(b"".join(rng.choice(words) + bytes([rng.randrange(48, 122)])
                             for _ in range(700))[:4096].ljust(4096, b"#"))
    bcomp = c.base("bcomp", "cluster_size=4096", 0, convert_from=raw)

    blazy = c.base("blazy", "cluster_size=4096,lazy_refcounts=on", 16 * MiB)
    subprocess.run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 64k", "-c",
                    "sigraise 9", blazy], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

    # ---- controls: valid images every command must handle ----
    for name, b in (("valid-4k", b4k), ("valid-64k", b64k), ("valid-v2", bv2),
                    ("valid-extl2", bext), ("valid-snapshot", bsnap),
                    ("valid-compressed", bcomp)):
        c.case(name, "valid image (control)", b, expect=ALL_OK)

    # ---- truncated headers ----
    c.case("trunc-0", "empty file", None, expect={k: "fail" for k in FAIL_OPEN})
    # QEMU reads a short header as if zero-padded, so a cut after the fields it needs
    # (71 bytes of v2, 104 of v3) may open; shorter cuts must fail.
    for n, b, e in ((3, b4k, FAIL_OPEN), (50, b4k, FAIL_OPEN), (71, bv2, None),
                    (100, b4k, FAIL_OPEN), (104, b4k, None)):
        c.case("trunc-%d" % n, "file cut to %d bytes" % n, b,
               lambda p, i, n=n: q.truncate(p, n), e)
    c.case("trunc-1-cluster", "only the header cluster remains; tables are past EOF", b4k,
           lambda p, i: q.truncate(p, 4096))
    c.case("trunc-mid-l2", "file ends inside the first L2 table", b4k,
           lambda p, i: q.truncate(p, i.first_l2()[0] + 1000))

    # ---- header fields ----
    c.case("bad-magic", "magic QFI\\xfa", b4k,
           lambda p, i: q.poke_field(p, "magic", 0x514649FA), FAIL_OPEN)
    for v in (0, 1, 4, 0xFFFFFFFF):
        c.case("version-%d" % v, "version %d" % v, b4k,
               lambda p, i, v=v: q.poke_field(p, "version", v), FAIL_OPEN)
    for cb in (0, 8, 22, 31, 63, 0xFFFFFFFF):
        c.case("cluster-bits-%d" % cb, "cluster_bits %d" % cb, b4k,
               lambda p, i, cb=cb: q.poke_field(p, "cluster_bits", cb), FAIL_OPEN)
    for hl in (0, 96, 103):
        c.case("header-length-%d" % hl, "v3 header_length %d (< 104)" % hl, b4k,
               lambda p, i, hl=hl: q.poke_field(p, "header_length", hl), FAIL_OPEN)
    for hl in (4104, 0x100000, 0xFFFFFFFF):
        c.case("header-length-%d" % hl, "header_length %d (> cluster size)" % hl, b4k,
               lambda p, i, hl=hl: q.poke_field(p, "header_length", hl), FAIL_OPEN)
    c.case("header-length-105", "header_length 105 (not a multiple of 8; QEMU accepts)",
           b4k, lambda p, i: q.poke_field(p, "header_length", 105))
    c.case("size-huge", "virtual size 2^63 - 512 with a small L1", b4k,
           lambda p, i: q.poke_field(p, "size", (1 << 63) - 512), FAIL_OPEN)
    c.case("size-max", "virtual size 2^64 - 1", b4k,
           lambda p, i: q.poke_field(p, "size", (1 << 64) - 1), FAIL_OPEN)
    c.case("size-unaligned", "virtual size 16M + 1000 (not a sector multiple)", b4k,
           lambda p, i: q.poke_field(p, "size", 16 * MiB + 1000))
    c.case("size-zero", "virtual size 0 with tables in place", b4k,
           lambda p, i: q.poke_field(p, "size", 0))

    # ---- L1 table ----
    c.case("l1-past-eof", "L1 table offset far beyond the end of the file", b4k,
           lambda p, i: q.poke_field(p, "l1_table_offset", 0x40000000))
    c.case("l1-offset-huge", "L1 table offset 2^63 (offset + size overflows)", b4k,
           lambda p, i: q.poke_field(p, "l1_table_offset", 1 << 63), FAIL_OPEN)
    c.case("l1-unaligned", "L1 table offset not cluster aligned", b4k,
           lambda p, i: q.poke_field(p, "l1_table_offset", i.h["l1_table_offset"] + 512),
           FAIL_OPEN)
    c.case("l1-size-2g", "l1_size 2^31", b4k,
           lambda p, i: q.poke_field(p, "l1_size", 1 << 31), FAIL_OPEN)
    c.case("l1-size-max", "l1_size 2^32 - 1", b4k,
           lambda p, i: q.poke_field(p, "l1_size", 0xFFFFFFFF), FAIL_OPEN)
    c.case("l1-size-too-small", "l1_size 1 for a 16 MiB disk with 4k clusters", b4k,
           lambda p, i: q.poke_field(p, "l1_size", 1), FAIL_OPEN)
    c.case("l1-is-reftable", "L1 table and refcount table at the same offset", b4k,
           lambda p, i: q.poke_field(p, "l1_table_offset", i.h["refcount_table_offset"]),
           CHECK_FAIL)
    c.case("l1-entry-at-reftable", "L1[0] points at the refcount table (as its L2)", b4k,
           lambda p, i: q.poke_be64(p, i.h["l1_table_offset"],
                                    i.h["refcount_table_offset"] | q.COPIED),
           dict(CHECK_FAIL, write="fail"))
    c.case("l1-entry-at-self", "L1[0] points at the L1 table itself", b4k,
           lambda p, i: q.poke_be64(p, i.h["l1_table_offset"],
                                    i.h["l1_table_offset"] | q.COPIED),
           dict(CHECK_FAIL, write="fail"))
    c.case("l1-entry-unaligned", "L1[0] holds an L2 offset that is not cluster aligned",
           b4k, lambda p, i: q.poke_be64(p, i.h["l1_table_offset"],
                                         (i.first_l2()[0] + 512) | q.COPIED),
           dict(READ_FAIL, check="fail"))
    c.case("l1-entry-past-eof", "L1[0] points far beyond the end of the file", b4k,
           lambda p, i: q.poke_be64(p, i.h["l1_table_offset"], 0x40000000 | q.COPIED),
           CHECK_FAIL)
    c.case("l1-entry-all-ones", "L1[0] = 0xffffffffffffffff", b4k,
           lambda p, i: q.poke_be64(p, i.h["l1_table_offset"], (1 << 64) - 1),
           dict(READ_FAIL, check="fail"))
    c.case("l1-reserved-bits", "L1[0] with reserved bit 56 set", b4k,
           lambda p, i: q.poke_be64(p, i.h["l1_table_offset"],
                                    i.l1()[0] | (1 << 56)), CHECK_FAIL)

    # ---- L2 entries ----
    def l2_poke(value_fn):
        def m(p, i):
            l2o, j, d = i.first_data()
            q.poke_be64(p, l2o + j * i.l2_entry_size, value_fn(i, d))
        return m

    c.case("l2-entry-past-eof", "a data cluster far beyond the end of the file", b4k,
           l2_poke(lambda i, d: 0x7FFF0000000 | q.COPIED), CHECK_FAIL)
    c.case("l2-entry-unaligned", "a data cluster offset not cluster aligned", b4k,
           l2_poke(lambda i, d: (d & q.OFFSET_MASK) + 512 | q.COPIED),
           dict(READ_FAIL, check="fail"))
    c.case("l2-entry-at-l1", "a data cluster that is the L1 table (write must be refused)",
           b4k, l2_poke(lambda i, d: i.h["l1_table_offset"] | q.COPIED),
           dict(CHECK_FAIL, write="fail"))
    c.case("l2-entry-at-header", "a data cluster at host offset 0 with COPIED", b4k,
           l2_poke(lambda i, d: q.COPIED | 0x200), dict(READ_FAIL, check="fail"))
    c.case("l2-entry-offset-0-copied", "an L2 entry with COPIED and host offset 0 (the "
           "header)", b4k, l2_poke(lambda i, d: q.COPIED))
    c.case("l2-reserved-bits", "an L2 entry with reserved bits 1..8 set", b4k,
           l2_poke(lambda i, d: d | 0x1FE), CHECK_FAIL)
    c.case("l2-zero-flag-v2", "zero flag in an L2 entry of a v2 image", bv2,
           l2_poke(lambda i, d: d | q.ZERO), READ_FAIL)
    c.case("l2-table-all-ones", "the first L2 table filled with 0xff bytes", b4k,
           lambda p, i: q.poke(p, i.first_l2()[0], b"\xff" * 4096),
           dict(READ_FAIL, check="fail"))
    c.case("l2-duplicate-data", "two L2 entries share one data cluster with COPIED", b4k,
           lambda p, i: q.poke_be64(p, i.first_data()[0] + 8, i.first_data()[2]),
           CHECK_FAIL)

    # ---- refcounts ----
    c.case("reftable-past-eof", "refcount table offset far beyond the end of the file",
           b4k, lambda p, i: q.poke_field(p, "refcount_table_offset", 0x40000000))
    c.case("reftable-unaligned", "refcount table offset not cluster aligned", b4k,
           lambda p, i: q.poke_field(p, "refcount_table_offset",
                                     i.h["refcount_table_offset"] + 512), FAIL_OPEN)
    c.case("reftable-clusters-huge", "refcount_table_clusters 2^32 - 1", b4k,
           lambda p, i: q.poke_field(p, "refcount_table_clusters", 0xFFFFFFFF), FAIL_OPEN)
    c.case("reftable-clusters-zero", "refcount_table_clusters 0", b4k,
           lambda p, i: q.poke_field(p, "refcount_table_clusters", 0),
           {"read": "fail", "info": "fail", "write": "fail"})
    c.case("refcount-order-7", "refcount_order 7 (128-bit refcounts)", b4k,
           lambda p, i: q.poke_field(p, "refcount_order", 7), FAIL_OPEN)
    c.case("refcount-order-huge", "refcount_order 2^32 - 1", b4k,
           lambda p, i: q.poke_field(p, "refcount_order", 0xFFFFFFFF), FAIL_OPEN)
    c.case("refblock-unaligned", "refcount table entry 0 not cluster aligned", b4k,
           lambda p, i: q.poke_be64(p, i.h["refcount_table_offset"],
                                    i.reftable()[0] + 512), dict(CHECK_FAIL, write="fail"))
    c.case("refblock-past-eof", "refcount block far beyond the end of the file", b4k,
           lambda p, i: q.poke_be64(p, i.h["refcount_table_offset"], 0x40000000),
           CHECK_FAIL)
    c.case("refblock-missing", "refcount table entry 0 cleared", b4k,
           lambda p, i: q.poke_be64(p, i.h["refcount_table_offset"], 0), CHECK_FAIL)
    c.case("refblock-is-l1", "refcount table entry 0 points at the L1 table", b4k,
           lambda p, i: q.poke_be64(p, i.h["refcount_table_offset"], i.h["l1_table_offset"]),
           dict(CHECK_FAIL, write="fail"))
    # A dirty image makes a read-write open rebuild refcounts; a refblock far past EOF
    # must not turn that into minutes of work or gigabytes of memory (found by fuzzing).
    for sh, label in ((38, "256G"), (43, "8T"), (55, "32P")):
        c.case("refblock-far-dirty-" + label,
               "dirty image, refcount table entry 40 at 2^%d" % sh, b4k,
               lambda p, i, sh=sh: (q.poke_be64(p, i.h["refcount_table_offset"] + 8 * 40,
                                                1 << sh),
                                    q.poke_field(p, "incompatible_features", 1)), CHECK_FAIL)
    c.case("refcounts-zeroed", "refcount block filled with zeros", b4k,
           lambda p, i: q.poke(p, i.reftable()[0], b"\0" * 4096), CHECK_FAIL)
    c.case("reftable-is-l1", "refcount table and L1 table at the same offset", b4k,
           lambda p, i: q.poke_field(p, "refcount_table_offset", i.h["l1_table_offset"]),
           CHECK_FAIL)

    # ---- snapshots ----
    c.case("snapshots-past-eof", "one snapshot, table far beyond the end of the file", b4k,
           lambda p, i: (q.poke_field(p, "nb_snapshots", 1),
                         q.poke_field(p, "snapshots_offset", 0x40000000)))
    c.case("snapshots-unaligned", "snapshot table offset not cluster aligned", bsnap,
           lambda p, i: q.poke_field(p, "snapshots_offset", i.h["snapshots_offset"] + 8),
           FAIL_OPEN)
    c.case("snapshots-count-huge", "nb_snapshots 2^32 - 1", bsnap,
           lambda p, i: q.poke_field(p, "nb_snapshots", 0xFFFFFFFF), FAIL_OPEN)
    c.case("snapshots-count-65537", "nb_snapshots 65537 (QEMU's limit is 65536)", bsnap,
           lambda p, i: q.poke_field(p, "nb_snapshots", 65537), FAIL_OPEN)
    c.case("snapshot-id-size-huge", "snapshot id_str_size 65535 runs past the table",
           bsnap, lambda p, i: q.poke(p, i.h["snapshots_offset"] + 12, b"\xff\xff"))
    c.case("snapshot-extra-huge", "snapshot extra_data_size 2^32 - 1", bsnap,
           lambda p, i: q.poke_be32(p, i.h["snapshots_offset"] + 36, 0xFFFFFFFF),
           {"info": "fail", "read": "fail", "read-ro": "fail", "map": "fail"})
    c.case("snapshot-l1-unaligned", "snapshot L1 table offset not cluster aligned", bsnap,
           lambda p, i: q.poke_be64(p, i.h["snapshots_offset"],
                                    i.be64(i.h["snapshots_offset"]) + 512), CHECK_FAIL)
    c.case("snapshot-l1-size-huge", "snapshot l1_size 2^31", bsnap,
           lambda p, i: q.poke_be32(p, i.h["snapshots_offset"] + 8, 1 << 31), CHECK_FAIL)

    # ---- backing files ----
    def backing(name, fmt=None):
        return lambda p, i: set_backing(p, name, fmt)

    c.case("backing-offset-past-cluster", "backing_file_offset beyond cluster 0", b4k,
           lambda p, i: (q.poke_field(p, "backing_file_offset", 4096 + 8),
                         q.poke_field(p, "backing_file_size", 10)), FAIL_OPEN)
    c.case("backing-offset-huge", "backing_file_offset 2^64 - 16", b4k,
           lambda p, i: (q.poke_field(p, "backing_file_offset", (1 << 64) - 16),
                         q.poke_field(p, "backing_file_size", 10)), FAIL_OPEN)
    c.case("backing-name-5000", "backing file name length 5000", b64k,
           lambda p, i: (set_backing(p, "x.qcow2"),
                         q.poke_field(p, "backing_file_size", 5000)), FAIL_OPEN)
    c.case("backing-name-past-cluster", "backing name runs past the end of cluster 0", b4k,
           lambda p, i: (set_backing(p, "x.qcow2"),
                         q.poke_field(p, "backing_file_offset", 4090)), FAIL_OPEN)
    c.case("backing-loop-self", "the image is its own backing file", b4k,
           backing("image.qcow2", "qcow2"), dict(READ_FAIL, map="fail"))
    c.case("backing-loop-pair", "image -> other -> image", b4k,
           backing("other.qcow2", "qcow2"), dict(READ_FAIL, map="fail"),
           extra=lambda d: (shutil.copyfile(b4k, os.path.join(d, "other.qcow2")),
                            set_backing(os.path.join(d, "other.qcow2"), "image.qcow2",
                                        "qcow2")))
    c.case("backing-missing", "backing file does not exist", b4k,
           backing("no-such-file.qcow2", "qcow2"), dict(READ_FAIL, map="fail"))
    c.case("backing-format-unknown", "backing format 'qcow5'", b4k,
           backing("other.qcow2", "qcow5"), dict(READ_FAIL, map="fail"),
           extra=lambda d: shutil.copyfile(b4k, os.path.join(d, "other.qcow2")))
    c.case("backing-format-too-long", "backing format extension 20 bytes long", b4k,
           backing("other.qcow2", "q" * 20), FAIL_OPEN,
           extra=lambda d: shutil.copyfile(b4k, os.path.join(d, "other.qcow2")))
    c.case("backing-is-directory", "the backing file is a directory", b4k,
           backing("subdir", "qcow2"), dict(READ_FAIL, map="fail"),
           extra=lambda d: os.makedirs(os.path.join(d, "subdir")))
    c.case("backing-chain-deep", "a chain 200 images deep", b4k, backing("c1.qcow2", "qcow2"),
           extra=lambda d: [
               (shutil.copyfile(b4k, os.path.join(d, "c%d.qcow2" % k)),
                set_backing(os.path.join(d, "c%d.qcow2" % k), "c%d.qcow2" % (k + 1), "qcow2"))
               for k in range(1, 200)])

    # ---- feature bits ----
    def feat(field, bits):
        return lambda p, i: q.poke_field(p, field, i.h[field] | bits)

    c.case("incompat-unknown", "unknown incompatible feature bit 20", b4k,
           feat("incompatible_features", 1 << 20), FAIL_OPEN)
    c.case("incompat-unknown-63", "unknown incompatible feature bit 63", b64k,
           feat("incompatible_features", 1 << 63), FAIL_OPEN)
    c.case("compat-unknown", "unknown compatible feature bit 30 (ignored)", b4k,
           feat("compatible_features", 1 << 30), ALL_OK)
    c.case("autoclear-unknown", "unknown autoclear bit 40 (cleared on write)", b4k,
           feat("autoclear_features", 1 << 40), ALL_OK)
    c.case("corrupt-bit", "corrupt bit set: read-write open refused", b4k,
           feat("incompatible_features", 2),
           {"info": "ok", "read": "fail", "read-ro": "ok", "write": "fail"})
    c.case("dirty-bit", "dirty bit set on a consistent image", b4k,
           feat("incompatible_features", 1), {"info": "ok", "read": "ok", "read-ro": "ok"})
    c.case("dirty-lazy-crash", "lazy refcounts image killed after a write", blazy, None,
           {"info": "ok", "read": "ok", "read-ro": "ok", "write": "ok"})
    c.case("data-file-bit", "external data file bit without a data file", b4k,
           feat("incompatible_features", 4), READ_FAIL)
    c.case("extl2-4k", "extended L2 bit on a 4 KiB cluster image", b4k,
           feat("incompatible_features", 16), FAIL_OPEN)
    c.case("bitmaps-autoclear-no-ext", "bitmaps autoclear bit without the extension", b4k,
           feat("autoclear_features", 1))
    c.case("compression-type-2", "compression type 2 with the incompatible bit", b64k,
           lambda p, i: (q.poke(p, 104, b"\x02"),
                         q.poke_field(p, "incompatible_features", 8)), FAIL_OPEN)
    c.case("compression-bit-mismatch", "zstd compression type without the incompatible bit",
           b64k, lambda p, i: q.poke(p, 104, b"\x01"), FAIL_OPEN)
    c.case("compression-bit-no-type", "compression incompatible bit with type zlib", b64k,
           feat("incompatible_features", 8), FAIL_OPEN)
    for cm in (1, 2, 7):
        c.case("crypt-method-%d" % cm, "crypt_method %d, no key and no LUKS header" % cm,
               b4k, lambda p, i, cm=cm: q.poke_field(p, "crypt_method", cm), READ_FAIL)

    # ---- header extensions ----
    def add_ext(ext_type, length, data=b""):
        def m(p, i):
            off = i.h["header_length"]
            q.poke(p, off, struct.pack(">II", ext_type, length) + data + b"\0" * 8)
        return m

    c.case("ext-too-large", "unknown extension longer than cluster 0", b4k,
           add_ext(0x12345678, 8192), FAIL_OPEN)
    c.case("ext-length-overflow", "extension length 2^32 - 8", b4k,
           add_ext(0x12345678, 0xFFFFFFF8), FAIL_OPEN)
    c.case("ext-unknown-ok", "a small unknown extension (kept, ignored)", b4k,
           add_ext(0x12345678, 8, b"abcdefgh"), ALL_OK)
    c.case("ext-no-end", "extensions run to the end of cluster 0 without an end marker",
           b4k, lambda p, i: [q.poke(p, o, struct.pack(">II", 0x1000 + o, 0))
                              for o in range(i.h["header_length"], 4096, 8)])
    c.case("ext-feature-table-odd", "feature name table of 47 bytes", b64k,
           add_ext(q.EXT_FEATURE_TABLE, 47, b"\0" * 48))
    c.case("ext-bitmaps-zero", "bitmaps extension with zero bitmaps", b64k,
           lambda p, i: (add_ext(q.EXT_BITMAPS, 24, struct.pack(">IIQQ", 0, 0, 0, 0))(p, i),
                         q.poke_field(p, "autoclear_features", 1)), FAIL_OPEN)
    c.case("ext-bitmaps-huge", "bitmaps extension with 65536 bitmaps far past EOF", b64k,
           lambda p, i: (add_ext(q.EXT_BITMAPS, 24,
                                 struct.pack(">IIQQ", 65536, 0, 1 << 40, 1 << 40))(p, i),
                         q.poke_field(p, "autoclear_features", 1)))
    c.case("ext-backing-fmt-no-backing", "backing format extension without a backing file",
           b4k, add_ext(q.EXT_BACKING_FORMAT, 5, b"qcow2\0\0\0"))

    # ---- compressed clusters ----
    def comp_poke(fn):
        def m(p, i):
            l2o, j, d = i.first_compressed()
            fn(p, i, l2o + j * i.l2_entry_size, d)
        return m

    def comp_host(i, d):
        x = 62 - (i.h["cluster_bits"] - 8)
        return d & ((1 << x) - 1), (d >> x) & ((1 << (i.h["cluster_bits"] - 8)) - 1)

    c.case("compressed-garbage", "compressed stream overwritten with 0xff bytes", bcomp,
           comp_poke(lambda p, i, eo, d: q.poke(p, comp_host(i, d)[0], b"\xff" * 512)),
           READ_FAIL)
    c.case("compressed-short", "compressed sector count 0 for a longer stream", bcomp,
           comp_poke(lambda p, i, eo, d: q.poke_be64(
               p, eo, d & ~(((1 << (i.h["cluster_bits"] - 8)) - 1)
                            << (62 - (i.h["cluster_bits"] - 8))))), READ_FAIL)
    c.case("compressed-past-eof", "compressed stream offset beyond the end of the file",
           bcomp, comp_poke(lambda p, i, eo, d: q.poke_be64(p, eo, q.COMPRESSED | 0x4000000)),
           dict(READ_FAIL, check="fail"))
    c.case("compressed-copied", "COPIED flag on a compressed entry", bcomp,
           comp_poke(lambda p, i, eo, d: q.poke_be64(p, eo, d | q.COPIED)), CHECK_FAIL)
    c.case("compressed-in-v3-extl2-bitmap", "compressed entry with a non-zero subcluster "
           "bitmap", bext, lambda p, i: (
               q.poke_be64(p, i.first_data()[0] + 16 * i.first_data()[1],
                           q.COMPRESSED | (i.first_data()[2] & q.OFFSET_MASK)),
               q.poke_be64(p, i.first_data()[0] + 16 * i.first_data()[1] + 8, 1)),
           dict(READ_FAIL, check="fail"))

    # ---- extended L2 ----
    def ext_bitmap(value):
        def m(p, i):
            l2o, j, d = i.first_data()
            q.poke_be64(p, l2o + 16 * j + 8, value)
        return m

    c.case("extl2-alloc-and-zero", "subcluster 0 both allocated and zero", bext,
           ext_bitmap((1 << 32) | 1), dict(READ_FAIL, check="fail"))
    c.case("extl2-alloc-no-offset", "allocation bits on an entry without an offset", bext,
           lambda p, i: (q.poke_be64(p, i.first_data()[0] + 16 * i.first_data()[1], 0),
                         ext_bitmap(0xFFFFFFFF)(p, i)), dict(READ_FAIL, check="fail"))
    c.case("extl2-zero-flag-bit0", "extended L2 entry with bit 0 set", bext,
           l2_poke(lambda i, d: d | 1))

    # ---- random header garbage (deterministic) ----
    for k in range(6):
        def m(p, i, k=k):
            r = random.Random(1000 + k)
            for _ in range(8):
                off = r.randrange(8, 112)
                q.poke(p, off, bytes([r.randrange(256)]))
        c.case("header-garbage-%d" % k, "random bytes poked into the header", b4k, m)

    c.finish()
    print("make-corpus: %d images in %s" % (len(c.cases), out))


if __name__ == "__main__":
    main()
