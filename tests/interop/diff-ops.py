#!/usr/bin/env python3
"""Differential testing of vdisk against QEMU: a seeded random sequence of guest operations
(pattern writes, zero writes with and without unmap, discards; aligned and unaligned;
optionally compressed writes of whole clusters and writes from source files) is applied
through `vdisk io` and through `qemu-io` to twin images, and the results compared.

Subcommands:
  gen    print a random operation list (one qemu-io command per line)
  apply  feed an operation list to a qemu-io compatible tool in batches
  run    the whole differential test for one image configuration; prints PASS/FAIL lines
"""

import argparse
import os
import random
import shlex
import subprocess
import sys

QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IO = os.environ.get("QEMU_IO", "qemu-io")
TOOL_TIMEOUT = 600

# Words that only appear in qemu-io output when a command went wrong.
BAD_WORDS = ("failed", "error", "pattern verification", "invalid", "not supported")


# ---- generating operations --------------------------------------------------------------

def gen_ops(seed, count, size, cluster, max_len=None, l2_span=None, kinds=None,
            sources=None):
    """Returns `count` qemu-io commands for a disk of `size` bytes with `cluster`-byte
    clusters. Offsets cluster in a few hot windows (start, end, an L2 boundary, a random
    spot) so that operations overlap, and spread over the whole disk otherwise.
    The kind "write-c" is a compressed write of whole clusters (or up to the end of the
    disk), preceded by a discard of the same range because QEMU refuses compressed writes
    over allocated clusters; it yields two commands. With `sources` (file names), some
    writes take their data from one of the files (qemu-io's write -s)."""
    rng = random.Random(seed)
    if max_len is None:
        max_len = min(3 * cluster, 4 << 20)
    max_len = max(1, min(max_len, size))
    win = min(size, max(16 * cluster, 2 * max_len))
    windows = [(0, win), (max(0, size - win), size)]
    if l2_span and l2_span < size:
        # Straddle the first L2 table boundary (and a later one on big disks).
        for b in (l2_span, (size // l2_span // 2) * l2_span):
            if 0 < b < size:
                windows.append((max(0, b - win // 2), min(size, b + win // 2)))
    mid = rng.randrange(0, max(1, size - win))
    windows.append((mid, min(size, mid + win)))
    kinds = kinds or [("write", 45), ("zero", 14), ("zero-unmap", 14), ("discard", 22),
                      ("flush", 5)]
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]

    def align_pick(lo, hi, unit):
        # A value in [lo, hi] that is a multiple of unit when possible.
        if unit <= 1:
            return rng.randint(lo, hi)
        a = -(-lo // unit) * unit
        b = (hi // unit) * unit
        return rng.randrange(a, b + 1, unit) if a <= b else rng.randint(lo, hi)

    def fill():
        if sources and rng.random() < 0.4:
            return "-s %s" % shlex.quote(rng.choice(sources))
        return "-P 0x%02x" % rng.randint(1, 255)

    ops = []
    for _ in range(count):
        kind = rng.choices(names, weights)[0]
        if kind == "flush":
            ops.append("flush")
            continue
        if kind == "write-c":
            lo, hi = rng.choice(windows) if rng.random() < 0.8 else (0, size)
            off = rng.randint(lo // cluster, max(lo, hi - 1) // cluster) * cluster
            length = min(cluster * rng.randint(1, max(1, max_len // cluster)), size - off)
            ops.append("discard %d %d" % (off, length))
            ops.append("write -c %s %d %d" % (fill(), off, length))
            continue
        unit = rng.choice((cluster, 512, 1))
        if rng.random() < 0.8:
            lo, hi = rng.choice(windows)
        else:
            lo, hi = 0, size
        off = align_pick(lo, max(lo, hi - 1), unit)
        if rng.random() < 0.25:
            length = cluster * rng.randint(1, max(1, max_len // cluster))
        else:
            length = align_pick(1, max_len, unit)
        length = max(1, min(length, size - off))
        if kind == "write":
            if sources:
                ops.append("write %s %d %d" % (fill(), off, length))
            else:
                ops.append("write -P 0x%02x %d %d" % (rng.randint(1, 255), off, length))
        elif kind == "zero":
            ops.append("write -z %d %d" % (off, length))
        elif kind == "zero-unmap":
            ops.append("write -z -u %d %d" % (off, length))
        else:
            ops.append("discard %d %d" % (off, length))
    return ops


# ---- applying operations ----------------------------------------------------------------

class ToolError(Exception):
    pass


def run_tool(argv, what):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ToolError("%s: timed out after %d s" % (what, TOOL_TIMEOUT))
    except OSError as e:
        raise ToolError("%s: cannot run %s: %s" % (what, argv[0], e))
    out = p.stdout.decode("utf-8", "replace")
    return p.returncode, out


def batches(ops, batch, one_compressed_write):
    """Splits ops into runs of at most `batch`; with one_compressed_write, no run holds two
    compressed writes. Yields (index of the first op, run)."""
    start, cur, seen_c = 0, [], False
    for i, op in enumerate(ops):
        is_c = op.startswith("write -c ")
        if cur and (len(cur) >= batch or (one_compressed_write and is_c and seen_c)):
            yield start, cur
            start, cur, seen_c = i, [], False
        cur.append(op)
        seen_c = seen_c or is_c
    if cur:
        yield start, cur


def apply_ops(tool, image, ops, fmt="qcow2", batch=300, first_index=0,
              one_compressed_write=False):
    """Runs the operations through a qemu-io compatible tool, `batch` per process. Raises
    ToolError naming the batch when the tool fails or reports an error.
    one_compressed_write: never two compressed writes in one process. QEMU 7.2 needs
    this: within one process, a compressed write after a discard has freed the host
    cluster it was packing into (and a normal write has reused that cluster) packs into
    it anyway, so qemu-io itself corrupts the image (a data cluster with refcount 3)."""
    base = shlex.split(tool)
    for i, chunk in batches(ops, batch, one_compressed_write):
        argv = list(base) + ["-f", fmt]
        for op in chunk:
            argv += ["-c", op]
        argv.append(image)
        what = "%s on %s, ops %d..%d" % (base[0] if len(base) == 1 else " ".join(base[:2]),
                                         os.path.basename(image), first_index + i,
                                         first_index + i + len(chunk) - 1)
        rc, out = run_tool(argv, what)
        low = out.lower()
        bad = [w for w in BAD_WORDS if w in low]
        if rc != 0 or bad:
            lines = [ln for ln in out.splitlines()
                     if any(w in ln.lower() for w in BAD_WORDS)] or out.splitlines()[-5:]
            raise ToolError("%s: exit %d; %s" % (what, rc, " / ".join(lines[:3])))


# ---- the differential run ---------------------------------------------------------------

def qemu_img(*args):
    return run_tool([QEMU_IMG] + list(args), "qemu-img " + args[0])


def create_twins(workdir, opts, size, backing_opts, seed, from_image=None):
    """Creates a.qcow2 (for vdisk) and b.qcow2 (for qemu-io) with qemu-img, so that only
    the I/O path differs. With backing_opts, both sit on one shared base.qcow2 holding
    random data (and some zero clusters). With from_image, a pair of image files, the
    twins are byte copies of them instead."""
    a = os.path.join(workdir, "a.qcow2")
    b = os.path.join(workdir, "b.qcow2")
    if from_image:
        import shutil
        for src, img in zip(from_image, (a, b)):
            shutil.copyfile(src, img)
        return a, b
    extra = []
    if backing_opts is not None:
        base = os.path.join(workdir, "base.qcow2")
        bo = ["-o", backing_opts] if backing_opts else []
        rc, out = qemu_img("create", "-f", "qcow2", *bo, base, str(size))
        if rc != 0:
            raise ToolError("creating the base: " + out.strip())
        bcl = cluster_of(base)
        base_ops = gen_ops(seed ^ 0x5a5a5a, 400, size, bcl,
                           kinds=[("write", 80), ("zero", 10), ("discard", 10)])
        apply_ops(QEMU_IO, base, base_ops)
        extra = ["-b", "base.qcow2", "-F", "qcow2"]
    for img in (a, b):
        o = ["-o", opts] if opts else []
        rc, out = qemu_img("create", "-f", "qcow2", *o, *extra, img, str(size))
        if rc != 0:
            raise ToolError("creating %s: %s" % (os.path.basename(img), out.strip()))
    return a, b


def cluster_of(img):
    import json
    rc, out = qemu_img("info", "-U", "--output=json", img)
    if rc != 0:
        raise ToolError("qemu-img info %s: %s" % (img, out.strip()))
    return json.loads(out)["cluster-size"]


def l2_span_of(img, cluster):
    import json
    rc, out = qemu_img("info", "-U", "--output=json", img)
    ext = json.loads(out).get("format-specific", {}).get("data", {}).get("extended-l2")
    return cluster * (cluster // (16 if ext else 8))


def compare(a, b):
    rc, out = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", a, b)
    return rc, out.strip()


class Result:
    def __init__(self, name, reproduce):
        self.name = name
        self.reproduce = reproduce
        self.failed = 0

    def report(self, case, ok, why=""):
        if ok:
            print("PASS %s/%s" % (self.name, case))
        else:
            self.failed += 1
            print("FAIL %s/%s: %s (%s)" % (self.name, case, why.replace("\n", " / "),
                                          self.reproduce))
        sys.stdout.flush()


def bisect_divergence(workdir, vdisk_tool, opts, size, backing_opts, seed, ops, hi,
                      from_image=None):
    """Finds the shortest prefix of ops (<= hi) after which the twins differ, replaying
    each candidate prefix on fresh twins. Returns (n, last op) or None."""
    lo = 0  # prefix lo is known to agree (the empty prefix does)
    sub = os.path.join(workdir, "bisect")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        subprocess.run(["rm", "-rf", sub])
        os.makedirs(sub)
        try:
            a, b = create_twins(sub, opts, size, backing_opts, seed, from_image)
            apply_ops(vdisk_tool, a, ops[:mid])
            apply_ops(QEMU_IO, b, ops[:mid], one_compressed_write=True)
        except ToolError:
            return None
        rc, _ = compare(a, b)
        if rc == 0:
            lo = mid
        else:
            hi = mid
    subprocess.run(["rm", "-rf", sub])
    return hi, ops[hi - 1]


def cmd_run(args):
    vdisk_tool = "%s io" % args.vdisk
    seed = args.seed
    reproduce = "seed %d, reproduce with DIFF_SEED=%d" % (seed, args.base_seed)
    res = Result("diff/" + args.name, reproduce)
    workdir = os.path.join(args.workdir, args.name)
    os.makedirs(workdir, exist_ok=True)
    cases = ("ops", "contents", "check", "vdisk-read")
    try:
        if args.from_image:
            args.from_image = (args.from_image, args.from_image_b or args.from_image)
        a, b = create_twins(workdir, args.opts, args.size, args.backing_opts, seed,
                            args.from_image)
        cluster = cluster_of(a)
        span = l2_span_of(a, cluster)
    except ToolError as e:
        for c in cases:
            res.report(c, False, "setup with qemu-img failed: %s" % e)
        return 1

    ops = gen_ops(seed, args.count, args.size, cluster, l2_span=span,
                  kinds=parse_kinds(args.kinds), sources=parse_sources(args.sources))
    with open(os.path.join(workdir, "ops.txt"), "w") as f:
        f.write("\n".join(ops) + "\n")

    content_err = check_err = None
    done = 0
    cp = max(1, args.checkpoint)
    try:
        while done < len(ops):
            chunk = ops[done:done + cp]
            apply_ops(vdisk_tool, a, chunk, batch=args.batch, first_index=done)
            apply_ops(QEMU_IO, b, chunk, batch=args.batch, first_index=done,
                      one_compressed_write=True)
            done += len(chunk)
            if content_err is None:
                rc, out = compare(a, b)
                if rc != 0:
                    content_err = "after %d ops: qemu-img compare exit %d: %s" % (done, rc,
                                                                                 out)
                    if os.environ.get("DIFF_BISECT", "1") != "0":
                        r = bisect_divergence(workdir, vdisk_tool, args.opts, args.size,
                                              args.backing_opts, seed, ops, done,
                                              args.from_image)
                        if r:
                            content_err += "; first divergence after op #%d '%s'" % (r[0] - 1,
                                                                                   r[1])
            if check_err is None:
                rc, out = qemu_img("check", a)
                if rc != 0:
                    lines = [ln for ln in out.splitlines() if ln.strip()][:4]
                    check_err = "after %d ops: qemu-img check exit %d: %s" % (
                        done, rc, " / ".join(lines))
    except ToolError as e:
        res.report("ops", False, str(e))
        for c in cases[1:]:
            res.report(c, False, "not run to the end: operations failed")
        return 1
    res.report("ops", True)
    res.report("contents", content_err is None, content_err or "")
    rc, out = qemu_img("check", b)
    if rc != 0 and check_err is None:
        check_err = "the qemu-io twin itself is not clean: " + out.strip()
    res.report("check", check_err is None, check_err or "")

    # vdisk's own read path: its raw export of its image must equal qemu's view.
    raw = os.path.join(workdir, "a.raw")
    rc, out = run_tool([args.vdisk, "convert", "-f", "qcow2", "-O", "raw", a, raw],
                       "vdisk convert")
    if rc != 0:
        res.report("vdisk-read", False, "vdisk convert -O raw exit %d: %s" % (rc,
                                                                            out.strip()))
    else:
        rc, out = qemu_img("compare", "-f", "raw", "-F", "qcow2", raw, b)
        res.report("vdisk-read", rc == 0,
                   "vdisk's raw export differs from qemu's view: %s" % out.strip())
    return 1 if res.failed else 0


def parse_kinds(spec):
    """"write:40,write-c:20,discard:10" -> [("write", 40), ...]; None for the default."""
    if not spec:
        return None
    kinds = []
    for item in spec.split(","):
        name, _, weight = item.partition(":")
        kinds.append((name, int(weight or 1)))
    return kinds


def parse_sources(spec):
    return [x for x in spec.split(",") if x] if spec else None


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("gen")
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--count", type=int, default=300)
    g.add_argument("--size", type=int, required=True)
    g.add_argument("--cluster", type=int, required=True)
    g.add_argument("--max-len", type=int)
    g.add_argument("--l2-span", type=int)
    g.add_argument("--writes-only", action="store_true")
    g.add_argument("--kinds", help='weights, e.g. "write:40,write-c:20,discard:10"')
    g.add_argument("--sources", help="comma-separated files for write -s")

    a = sub.add_parser("apply")
    a.add_argument("--tool", required=True, help='e.g. "qemu-io" or "build/vdisk io"')
    a.add_argument("--image", required=True)
    a.add_argument("--ops", required=True, help="file with one command per line")
    a.add_argument("--format", default="qcow2")
    a.add_argument("--batch", type=int, default=300)

    r = sub.add_parser("run")
    r.add_argument("--vdisk", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--workdir", required=True)
    r.add_argument("--opts", default="", help="qemu-img create -o options of the twins")
    r.add_argument("--backing-opts", default=None,
                   help="create a shared backing file with these -o options")
    r.add_argument("--size", type=int, required=True)
    r.add_argument("--count", type=int, default=10000)
    r.add_argument("--checkpoint", type=int, default=1000)
    r.add_argument("--batch", type=int, default=300)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--base-seed", type=int, help="the DIFF_SEED this seed derives from")
    r.add_argument("--from-image", help="start both twins as copies of this image "
                   "(instead of creating them; --opts and --backing-opts are then unused)")
    r.add_argument("--from-image-b", help="with --from-image: start the qemu-io twin as a "
                   "copy of this image instead (it must hold the same guest data)")
    r.add_argument("--kinds", help='operation weights, e.g. "write:40,write-c:20"')
    r.add_argument("--sources", help="comma-separated files for write -s")

    args = p.parse_args()
    if args.cmd == "gen":
        kinds = [("write", 1)] if args.writes_only else parse_kinds(args.kinds)
        for op in gen_ops(args.seed, args.count, args.size, args.cluster, args.max_len,
                          args.l2_span, kinds, parse_sources(args.sources)):
            print(op)
        return 0
    if args.cmd == "apply":
        with open(args.ops) as f:
            ops = [ln.strip() for ln in f if ln.strip()]
        try:
            apply_ops(args.tool, args.image, ops, args.format, args.batch)
        except ToolError as e:
            print("apply: %s" % e, file=sys.stderr)
            return 1
        return 0
    if args.base_seed is None:
        args.base_seed = args.seed
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
