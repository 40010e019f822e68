#!/usr/bin/env python3
# Helpers of the RBD benchmark (bench/rbd.sh): one fio run against a daemon's NBD export,
# the allocated size of a raw file, and the results markdown.
#
#   rbd.py fio --runs F --case C --who W --round R --log LOG --json J --timeout S
#              [--daemon-pid P] [--osd-pid P] -- FIO ARGS...
#   rbd.py allocated IMAGE.raw
#   rbd.py report RUNS --out OUT.md [--quick]
#
# fio: runs fio (its stdout and stderr go to LOG, its JSON to J), then appends a "fio"
# record: read and write IOPS and bytes/s from the JSON, and the CPU time (user + system)
# the daemon and the OSD spent while fio ran. Exit status 0, or 1 when fio failed.
# allocated: the bytes `qemu-img map` reports as data.
# report: the records rbd.sh collected (lib.sh's case/meta/note lines, measure.py's run
# lines, and fio, du and param lines) as markdown; the summary table goes to stdout too.
# Exit status 3 when a target was missed, else 0.
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mirror  # noqa: E402  (the mirror bench's process helpers)


def proc_cpu(pid):
    """User + system CPU seconds of a process (all its threads), 0 when it is gone."""
    return mirror.proc_cpu(pid) if pid else 0.0


def fio_json(path):
    """fio's JSON report. The nbd engine writes "fio: connected to NBD server" into the
    output file before it, so the JSON starts at the first brace."""
    with open(path) as f:
        text = f.read()
    start = text.find("{")
    if start < 0:
        raise ValueError("%s holds no JSON" % path)
    return json.loads(text[start:])


def run_fio(a):
    with open(a.log, "a") as log:
        log.write("$ %s\n" % " ".join(a.cmd))
        log.flush()
        d0, o0 = proc_cpu(a.daemon_pid), proc_cpu(a.osd_pid)
        try:
            status = subprocess.run(a.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    timeout=a.timeout).returncode
        except subprocess.TimeoutExpired:
            log.write("rbd.py: fio did not end within %.0f s; killed\n" % a.timeout)
            status = 124
        dcpu, ocpu = proc_cpu(a.daemon_pid) - d0, proc_cpu(a.osd_pid) - o0
        rd = wr = {}
        secs = 0.0
        if status == 0:
            try:
                job = fio_json(a.json)["jobs"][0]
                rd, wr = job["read"], job["write"]
                secs = job["job_runtime"] / 1000.0
                if job.get("error"):
                    status = 1
                    log.write("rbd.py: fio reports error %d\n" % job["error"])
            except (OSError, ValueError, KeyError, IndexError) as e:
                log.write("rbd.py: fio's report unreadable: %s\n" % e)
                status = 1
        if status != 0:
            log.write("rbd.py: fio exit status %d\n" % status)
    with open(a.runs, "a") as out:
        out.write("fio\t%s\t%s\t%d\t%d\t%.1f\t%.1f\t%.0f\t%.0f\t%.3f\t%.2f\t%.2f\t%s\n" % (
            a.case, a.who, a.round, status, rd.get("iops", 0), wr.get("iops", 0),
            rd.get("bw_bytes", 0), wr.get("bw_bytes", 0), secs, dcpu, ocpu, a.log))
    if status == 0:
        print("bench: %s %s r%d: %.0f IOPS, %.0f MB/s (daemon CPU %.1f s, OSD %.1f s)" % (
            a.case, a.who, a.round, rd["iops"] + wr["iops"],
            (rd["bw_bytes"] + wr["bw_bytes"]) / 1e6, dcpu, ocpu), file=sys.stderr)
    return 0 if status == 0 else 1


def allocated(path):
    out = subprocess.run(["qemu-img", "map", "-f", "raw", "--output=json", path],
                         check=True, capture_output=True, text=True).stdout
    print(sum(e["length"] for e in json.loads(out) if e["data"]))
    return 0


# ---- the report --------------------------------------------------------------------------

def load(path):
    r = dict(cases=[], runs=[], meta=[], notes=[], params={})
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            kind = p[0]
            if kind == "case" and len(p) >= 8:
                r["cases"].append(dict(id=p[1], metric=p[2], vd=p[3], base=p[4], min=p[5],
                                       title=p[6], cmd=p[7],
                                       bytes=int(p[8]) if len(p) > 8 and p[8] else 0))
            elif kind == "run" and len(p) >= 10:
                r["runs"].append(dict(kind="run", case=p[1], who=p[2], round=int(p[3]),
                                      status=int(p[4]), secs=float(p[5]), rss=int(p[6]),
                                      log=p[8], cpu=float(p[9])))
            elif kind == "fio" and len(p) >= 13:
                r["runs"].append(dict(kind="fio", case=p[1], who=p[2], round=int(p[3]),
                                      status=int(p[4]), riops=float(p[5]),
                                      wiops=float(p[6]), rbw=float(p[7]), wbw=float(p[8]),
                                      secs=float(p[9]), dcpu=float(p[10]),
                                      ocpu=float(p[11]), log=p[12]))
            elif kind == "du" and len(p) >= 5:
                r["params"]["du.%s.%s.%s" % (p[1], p[2], p[3])] = int(p[4])
            elif kind == "param" and len(p) >= 3:
                r["params"][p[1]] = p[2]
            elif kind == "meta" and len(p) >= 3:
                r["meta"].append((p[1], p[2]))
            elif kind == "note" and len(p) >= 3:
                r["notes"].append((p[1], p[2]))
    return r


def rbd_bench_ops(log):
    """ops/sec from the summary line rbd bench ends with ("elapsed: 1  ops: 256  ops/sec:
    189.3  bytes/sec: 757 MiB/s"); its elapsed and bytes/sec are rounded, ops/sec is not."""
    found = None
    try:
        with open(log) as f:
            for line in f:
                m = re.search(r"elapsed:\s*\S+\s+ops:\s*\d+\s+ops/sec:\s*([0-9.]+)", line)
                if m:
                    found = float(m.group(1))
    except OSError:
        pass
    return found


def run_bytes(r, params, case):
    """The bytes a contender's run counts in a row of metric mbps (vdisk's convert: the
    allocated bytes of the source; rbd bench: what it wrote), else the row's size."""
    return int(params.get("bytes.%s.%s" % (r["case"], r["who"]), case["bytes"]))


def values(rep, case, who):
    """Per-round values of one contender in one row: seconds (time), IOPS (iops), bytes/s
    (bw: fio's read + write; mbps: bytes moved / wall time)."""
    out = []
    for r in rep["runs"]:
        if r["case"] != case["id"] or r["who"] != who or r["status"] != 0:
            continue
        if case["metric"] == "time":
            out.append(r["secs"])
        elif case["metric"] == "iops":
            out.append(r["riops"] + r["wiops"])
        elif case["metric"] == "bw":
            out.append(r["rbw"] + r["wbw"])
        elif case["metric"] == "mbps" and r["secs"] > 0:
            out.append(run_bytes(r, rep["params"], case) / r["secs"])
    return out


def show(case, v, who, rep):
    if v is None:
        return "failed (%s)" % who
    if case["metric"] == "time":
        text = "%.2f s" % v
        if case["bytes"]:
            text += ", %.0f MB/s" % (case["bytes"] / 1e6 / v)
    elif case["metric"] == "iops":
        text = "%.0f IOPS" % v
    else:
        text = "%.0f MB/s" % (v / 1e6)
    return "%s (%s)" % (text, who)


def fmt_mib(n):
    return "%.0f MiB" % (n / 1048576.0)


def details(rep):
    """One line per run, in the order they ran."""
    out = []
    w = out.append
    w("| case | round | contender | result | CPU | more |")
    w("|---|---|---|---|---|---|")
    cases = {}
    for c in rep["cases"]:
        cases.setdefault(c["id"], c)  # the first row of a case carries its size
    io_size = int(rep["params"].get("rbd-bench io size", 0))
    for r in rep["runs"]:
        case = cases.get(r["case"])
        if r["status"] != 0:
            w("| %s | %d | %s | failed (status %d; log %s) | | |" % (
                r["case"], r["round"], r["who"], r["status"], r["log"]))
            continue
        if r["kind"] == "run":
            n = case["bytes"] if case else 0
            result = "%.2f s, %.0f MB/s" % (r["secs"], n / 1e6 / r["secs"])
            more = ["peak RSS %.0f MiB" % (r["rss"] / 1024.0)]
            du = rep["params"].get("du.%s.%s.%d" % (r["case"], r["who"], r["round"]))
            if du is not None:
                more.append("rbd du %s (%.0f MB/s)" % (fmt_mib(du), du / 1e6 / r["secs"]))
            ops = rbd_bench_ops(r["log"]) if r["who"] == "rbd-bench" else None
            if ops is not None and io_size:
                more.append("rbd bench says %.0f MB/s" % (ops * io_size / 1e6))
            w("| %s | %d | %s | %s | %.2f s | %s |" % (
                r["case"], r["round"], r["who"], result, r["cpu"], "; ".join(more)))
        else:
            if case and case["metric"] == "iops":
                result = "%.0f IOPS (read %.0f + write %.0f)" % (
                    r["riops"] + r["wiops"], r["riops"], r["wiops"])
            else:
                result = "%.0f MB/s" % ((r["rbw"] + r["wbw"]) / 1e6)
            w("| %s | %d | %s | %s | daemon %.2f s, OSD %.2f s | fio ran %.1f s; %.0f MB/s |"
              % (r["case"], r["round"], r["who"], result, r["dcpu"], r["ocpu"], r["secs"],
                 (r["rbw"] + r["wbw"]) / 1e6))
    return out


def against_rbd_bench(rep):
    """vdisk's convert throughput beside rbd bench's, per round."""
    p = rep["params"]
    alloc = int(p.get("bytes.convert-rbd.vdisk", 0))
    total = int(p.get("bytes.convert-rbd.rbd-bench", 0))
    io_size = int(p.get("rbd-bench io size", 0))
    conv = {r["round"]: r for r in rep["runs"]
            if r["case"] == "convert-rbd" and r["who"] == "vdisk" and r["status"] == 0}
    bench = {r["round"]: r for r in rep["runs"]
             if r["case"] == "convert-rbd" and r["who"] == "rbd-bench" and r["status"] == 0}
    out = []
    w = out.append
    w("| round | vdisk convert | allocated / time | rbd du / time | rbd bench (wall) "
      "| rbd bench (its own figure) | vdisk / rbd bench (allocated, du) |")
    w("|---|---|---|---|---|---|---|")
    for rnd in sorted(set(conv) | set(bench)):
        c, b = conv.get(rnd), bench.get(rnd)
        du = p.get("du.convert-rbd.vdisk.%d" % rnd)
        a_rate = alloc / c["secs"] if c else None
        d_rate = du / c["secs"] if c and du is not None else None
        b_rate = total / b["secs"] if b else None
        ops = rbd_bench_ops(b["log"]) if b else None
        cells = [
            "%.2f s" % c["secs"] if c else "failed",
            "%.0f MB/s" % (a_rate / 1e6) if a_rate else "-",
            "%.0f MB/s" % (d_rate / 1e6) if d_rate else "-",
            "%.0f MB/s (%.2f s)" % (b_rate / 1e6, b["secs"]) if b else "failed",
            "%.0f MB/s" % (ops * io_size / 1e6) if ops and io_size else "-",
            "%.0f%%, %.0f%%" % (100 * a_rate / b_rate, 100 * d_rate / b_rate)
            if a_rate and d_rate and b_rate else "-",
        ]
        w("| %d | %s |" % (rnd, " | ".join(cells)))
    return out


def report(a):
    rep = load(a.runs)
    out = []
    w = out.append
    w("# vdisk RBD benchmark results")
    w("")
    if a.quick:
        w("**Quick smoke run: small sizes, one round; the ratios mean nothing.**")
        w("")
    for k, v in rep["meta"]:
        w("- %s: %s" % (k, v))
    w("")
    summary_start = len(out)
    w("Medians over the rounds; the contenders alternate their order from round to round. "
      "ratio: for times baseline / vdisk, for IOPS and MB/s vdisk / baseline, so above 1.00x "
      "vdisk is faster either way. Rows without a target are for reference.")
    w("")
    w("| case | what | baseline median | vdisk median | ratio | target | met? |")
    w("|---|---|---|---|---|---|---|")
    missed = 0
    for c in rep["cases"]:
        vs, bs = values(rep, c, c["vd"]), values(rep, c, c["base"])
        v = statistics.median(vs) if vs else None
        b = statistics.median(bs) if bs else None
        ratio = None
        if v and b:
            ratio = b / v if c["metric"] == "time" else v / b
        if c["min"] == "-":
            target, met = "-", ""
        else:
            target = ">= %.2fx" % float(c["min"])
            if ratio is None:
                met = "no (failed)"
                missed += 1
            elif round(ratio, 2) >= float(c["min"]):
                met = "yes"
            else:
                met = "**no**"
                missed += 1
        w("| %s | %s | %s | %s | %s | %s | %s |" % (
            c["id"], c["title"], show(c, b, c["base"], rep), show(c, v, c["vd"], rep),
            "%.2fx" % ratio if ratio else "-", target, met))
    w("")
    summary_end = len(out)
    w("## Convert against rbd bench")
    w("")
    w("What the cluster takes from one client writing 4 MiB objects 16 at a time (`rbd "
      "bench`, on a fresh image each round) beside vdisk's convert: its MB/s over the "
      "allocated bytes of the source (what there is to copy) and over the bytes `rbd du` "
      "counts in its target (the objects it wrote).")
    w("")
    out.extend(against_rbd_bench(rep))
    w("")
    w("## Every run")
    w("")
    w("In the order they ran. CPU: for convert and rbd bench the process's own user + "
      "system time; for fio the daemon's and the OSD's over fio's run.")
    w("")
    out.extend(details(rep))
    w("")
    w("Command lines:")
    w("")
    shown = set()
    for c in rep["cases"]:
        if (c["id"], c["cmd"]) not in shown:
            shown.add((c["id"], c["cmd"]))
            w("- %s: `%s`" % (c["id"], c["cmd"]))
    w("")
    if rep["notes"]:
        w("## Notes")
        w("")
        for case, text in rep["notes"]:
            w("- %s: %s" % (case, text))
        w("")
    text = "\n".join(out)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    print("\n".join(out[summary_start:summary_end]))
    if rep["notes"]:
        print("Notes: %d (see %s)" % (len(rep["notes"]), a.out))
    return 3 if missed else 0


def main():
    ap = argparse.ArgumentParser(description="helpers of bench/rbd.sh")
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fio")
    for name in ("runs", "case", "who", "log", "json"):
        f.add_argument("--" + name, required=True)
    f.add_argument("--round", required=True, type=int)
    f.add_argument("--timeout", type=float, default=600)
    f.add_argument("--daemon-pid", type=int, default=0)
    f.add_argument("--osd-pid", type=int, default=0)
    f.add_argument("cmd", nargs=argparse.REMAINDER)
    al = sub.add_parser("allocated")
    al.add_argument("image")
    r = sub.add_parser("report")
    r.add_argument("runs")
    r.add_argument("--out", required=True)
    r.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.mode == "fio":
        a.cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
        if not a.cmd:
            ap.error("no fio command")
        return run_fio(a)
    if a.mode == "allocated":
        return allocated(a.image)
    return report(a)


if __name__ == "__main__":
    sys.exit(main())
