#!/usr/bin/env python3
# One timed run of the backup benchmark (bench/backup.sh), the source image, and the markdown
# of the details.
#
#   backup.py gen OUT.raw BYTES [--seed N]
#   backup.py run --runs F --case C --who W --round R --log LOG --daemon BIN --dir D
#                 --src SRC.qcow2 --tgt TGT.qcow2 --size BYTES
#                 [--compress] [--format-direct] [--timeout S]
#                 [--fio {alone,backup} --fio-runtime S --fio-iodepth N --speed BYTES/S]
#   backup.py section RUNS OUT.md
#
# gen: the source's bytes, seeded: runs of 4 KiB to 8 MiB (bench/mkimage.py's lengths and
# text), half random bytes, half text-like lines (about 3:1 with deflate), no zeros, so the
# qcow2 made from it is fully allocated and the compress case has something to compress.
#
# run: starts the daemon (qemu-storage-daemon or vdiskd: the same command line) with the
# source as --blockdev nodes (file with cache.direct=on, qcow2; --format-direct: the qcow2
# node too, as libvirt does), adds the empty target with blockdev-add (the same options), sends blockdev-backup sync=full and times it from the
# command to BLOCK_JOB_COMPLETED; then quit. With --fio the source is exported over NBD
# (nbd-server-start, block-export-add) and fio writes 4 KiB at random into it for
# --fio-runtime seconds: alone (no job), or right after blockdev-backup is sent with --speed
# as its rate limit. Guest writes make the copy-before-write filter copy clusters out of
# turn, which the limit does not hold back, so the job may still complete while fio runs:
# when it did is recorded (from the event's time stamp); otherwise its offset at fio's end,
# and the job is cancelled. Appends a "run" record (bench/measure.py's
# format, which bench/report.py reads: the time to COMPLETED, or fio's run time; the
# daemon's user + system CPU time over that interval; its peak RSS) and a "backup" record
# with the details. Exit status: 0 done, 1 failed.
import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The QMP client with event deadlines, /proc readers and --blockdev arguments of the mirror
# benchmark; mkimage's run lengths and text.
mirror = load("mirror")
mkimage = load("mkimage")
Failed = mirror.Failed
ENDS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")


def generate(path, size, seed):
    rng = random.Random(seed)
    data_rng = random.Random(seed + 1)
    pool = mkimage.text_pool(random.Random(seed + 2))
    counts = {"random": 0, "text": 0}
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        off = 0
        while off < size:
            length = min(mkimage.run_length(rng), size - off)
            # The kind further below its half so far, so the mix stays near 50/50 even
            # though single runs are up to 8 MiB long.
            end = off + length
            deficit = [max(0.5 * end - counts[k], 0) + 1 for k in counts]
            kind = rng.choices(list(counts), deficit)[0]
            counts[kind] += length
            left = length
            while left > 0:
                n = min(left, 1 << 20)
                if kind == "random":
                    f.write(data_rng.randbytes(n))
                else:
                    start = data_rng.randrange(mkimage.TEXT_POOL - n + 1)
                    f.write(pool[start:start + n])
                left -= n
            off += length
    os.replace(tmp, path)
    return counts


class Run(mirror.Run):
    def __init__(self, a):
        super().__init__(a)
        self.fio_out = os.path.join(a.dir, "backup-fio.json")

    def log(self, text):
        self.logf.write("backup: %s\n" % text)
        self.logf.flush()

    def start_daemon(self):
        """The daemon with the source only; the target comes by blockdev-add."""
        qmp = os.path.join(self.a.dir, "backup.qmp")
        if os.path.exists(qmp):
            os.unlink(qmp)
        src = mirror.blockdev("src", self.a.src)
        if self.a.format_direct:
            src[-1] += ",cache.direct=on"
        argv = ([self.a.daemon] + src +
                ["--chardev", "socket,id=qmp0,path=%s,server=on,wait=off" % qmp,
                 "--monitor", "chardev=qmp0"])
        self.logf.write("$ %s\n" % " ".join(argv))
        self.logf.flush()
        self.daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                       stderr=self.logf)
        for _ in range(200):
            if os.path.exists(qmp) or self.daemon.poll() is not None:
                break
            time.sleep(0.05)
        if self.daemon.poll() is not None:
            raise Failed("%s exited at start with status %d" %
                         (os.path.basename(self.a.daemon), self.daemon.returncode))
        self.qmp = mirror.Client(qmp)
        self.cmd("qmp_capabilities")

    def add_target(self):
        self.cmd("blockdev-add", driver="file", **{"node-name": "tgt-file"},
                 filename=self.a.tgt, cache={"direct": True})
        extra = {"cache": {"direct": True}} if self.a.format_direct else {}
        self.cmd("blockdev-add", driver="qcow2", **{"node-name": "tgt"}, file="tgt-file",
                 **extra)

    def export(self):
        sock = os.path.join(self.a.dir, "backup.nbd")
        if os.path.exists(sock):
            os.unlink(sock)
        self.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        self.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, name="src",
                 writable=True)
        return sock

    def run_fio(self, sock):
        """fio's 4 KiB random writes for --fio-runtime seconds; its write IOPS."""
        if os.path.exists(self.fio_out):
            os.unlink(self.fio_out)
        argv = ["fio", "--name=guest", "--ioengine=nbd",
                "--uri=nbd+unix:///src?socket=%s" % sock, "--rw=randwrite", "--bs=4k",
                "--iodepth=%d" % self.a.fio_iodepth, "--size=%d" % self.a.size,
                "--time_based", "--runtime=%d" % self.a.fio_runtime, "--randrepeat=1",
                "--randseed=20261207", "--norandommap", "--output-format=json",
                "--output=%s" % self.fio_out]
        self.logf.write("$ %s\n" % " ".join(argv))
        self.logf.flush()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                            stderr=self.logf, timeout=self.a.fio_runtime + 120).returncode
        if rc != 0:
            raise Failed("fio exited with status %d" % rc)
        with open(self.fio_out) as f:
            text = f.read()
        job = json.loads(text[text.index("{"):])["jobs"][0]["write"]
        self.log("fio: %d writes in %.3f s: %.0f IOPS" %
                 (job["total_ios"], job["runtime"] / 1000.0, job["iops"]))
        return job["iops"]

    def job_progress(self):
        for j in self.cmd("query-block-jobs")["return"]:
            if j.get("device") == "b1":
                return j
        return None

    def run(self):
        a = self.a
        secs = 0.0
        cpu = rss = 0
        iops = offset = job_end = None
        status, why = 0, ""
        try:
            self.start_daemon()
            pid = self.daemon.pid
            if a.fio == "backup" or not a.fio:
                self.add_target()
            args = {"job-id": "b1", "device": "src", "target": "tgt", "sync": "full"}
            if a.compress:
                args["compress"] = True
            if a.fio:
                sock = self.export()
                if a.fio == "backup":
                    args["speed"] = a.speed
                cpu0 = mirror.proc_cpu(pid)
                t0, wall0 = time.perf_counter(), time.time()
                if a.fio == "backup":
                    self.cmd("blockdev-backup", **args)
                iops = self.run_fio(sock)
                secs = time.perf_counter() - t0
                cpu = mirror.proc_cpu(pid) - cpu0
                if a.fio == "backup":
                    # query-block-jobs first: its reply comes after every event sent
                    # before it, and the client keeps those.
                    j = self.job_progress()
                    e = self.qmp.wait_event(ENDS, "b1", time.perf_counter())
                    if e is None and j is None:
                        raise Failed("the job is gone, without an event")
                    if e:
                        # It finished while fio ran: when, by the event's own time stamp.
                        e.pop("_t")
                        ts = e["timestamp"]
                        job_end = ts["seconds"] + ts["microseconds"] / 1e6 - wall0
                        offset = e["data"].get("offset", 0)
                        self.log("the job ended %.3f s after it started: %s" %
                                 (job_end, json.dumps(e)))
                        if e["event"] != "BLOCK_JOB_COMPLETED" or "error" in e["data"]:
                            raise Failed("the job ended in %s" % json.dumps(e))
                    else:
                        offset = j["offset"]
                        self.log("the job at fio's end: %s" % json.dumps(j))
                        self.cmd("block-job-cancel", device="b1")
                        e = self.qmp.wait_event(ENDS, "b1", time.perf_counter() + 120)
                        self.log("cancelled: %s" % json.dumps(e))
                        if e is None:
                            raise Failed("no event within 120 s of block-job-cancel")
            else:
                cpu0 = mirror.proc_cpu(pid)
                t0 = time.perf_counter()
                self.cmd("blockdev-backup", **args)
                e = self.qmp.wait_event(ENDS, "b1", t0 + a.timeout)
                secs = (e["_t"] if e else time.perf_counter()) - t0
                cpu = mirror.proc_cpu(pid) - cpu0
                if e is None:
                    raise Failed("no BLOCK_JOB_COMPLETED after %d s" % a.timeout)
                e.pop("_t")
                self.log("after %.3f s: %s" % (secs, json.dumps(e)))
                if e["event"] != "BLOCK_JOB_COMPLETED" or "error" in e.get("data", {}):
                    raise Failed("the job ended in %s" % json.dumps(e))
            rss = mirror.proc_hwm_kb(pid)
        except Failed as e:
            status, why = 1, str(e)
        except (OSError, EOFError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
            status, why = 1, "%s: %s (did the daemon die?)" % (type(e).__name__, e)
        except Exception as e:  # noqa: BLE001 - still stop the daemon and record the run
            status, why = 1, "backup.py: %r" % e
        finally:
            self.stop_daemon()
        if status == 0 and self.daemon and self.daemon.returncode != 0:
            status, why = 1, "the daemon exited with status %d" % self.daemon.returncode
        if why:
            self.log(why)  # the log's last line: what bench_mark_failed quotes
        with open(a.runs, "a") as out:
            out.write("run\t%s\t%s\t%d\t%d\t%.6f\t%d\t%d\t%s\t%.6f\n" % (
                a.case, a.who, a.round, status, secs, rss, 0, a.log, cpu))
            out.write("backup\t%s\t%s\t%d\t%d\t%.6f\t%s\t%s\t%d\t%.3f\t%s\t%s\n" % (
                a.case, a.who, a.round, status, secs,
                "" if iops is None else "%.1f" % iops,
                "" if offset is None else "%d" % offset, a.size, cpu,
                "" if job_end is None else "%.3f" % job_end,
                why.replace("\t", " ").replace("\n", " ")))
        if status:
            msg = why
        elif a.fio:
            msg = "fio %.0f IOPS over %.1f s, daemon CPU %.2f s" % (iops, secs, cpu)
            if job_end is not None:
                msg += "; the backup completed %.1f s into it" % job_end
            elif offset is not None:
                msg += "; the backup had copied %.0f MB (cancelled)" % (offset / 1e6)
        else:
            msg = "COMPLETED after %.2f s (%.0f MB/s), daemon CPU %.2f s" % (
                secs, a.size / 1e6 / secs, cpu)
        print("bench: %s %s r%d: %s" % (a.case, a.who, a.round, msg), file=sys.stderr)
        return status


def section(runs_path, out_path):
    """Markdown: every run's time, and the IOPS table with the ratios."""
    rows, order, whos = {}, [], []
    with open(runs_path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] != "backup" or len(p) < 12:
                continue
            key = (p[1], p[2])
            if key not in rows:
                order.append(key)
            if p[2] not in whos:
                whos.append(p[2])
            rows.setdefault(key, []).append(dict(
                round=int(p[3]), status=int(p[4]), secs=float(p[5]),
                iops=float(p[6]) if p[6] else None, offset=int(p[7]) if p[7] else None,
                size=int(p[8]), cpu=float(p[9]), end=float(p[10]) if p[10] else None,
                why=p[11]))
    out = []
    w = out.append

    def med(key, field):
        vals = [r[field] for r in rows.get(key, []) if r["status"] == 0 and
                r[field] is not None]
        return statistics.median(vals) if vals else None

    timed = [k for k in order if k[0] in ("backup-full", "backup-compress")]
    if timed:
        w("Every run: time from blockdev-backup to BLOCK_JOB_COMPLETED (MB/s = image size / "
          "that time) and the daemon's CPU time over it.")
        w("")
        w("| case | daemon | ok | time per round | median | MB/s | CPU median |")
        w("|---|---|---|---|---|---|---|")
        for key in timed:
            rs = sorted(rows[key], key=lambda r: r["round"])
            m = med(key, "secs")
            w("| %s | %s | %d/%d | %s | %s | %s | %s |" % (
                key[0], key[1], sum(r["status"] == 0 for r in rs), len(rs),
                ", ".join("%.2f s" % r["secs"] if r["status"] == 0 else "failed" for r in rs),
                "%.2f s" % m if m else "-", "%.0f" % (rs[0]["size"] / 1e6 / m) if m else "-",
                "%.2f s" % med(key, "cpu") if med(key, "cpu") is not None else "-"))
        w("")
    if any(k[0].startswith("iops-") for k in order):
        w("Guest writes: fio's 4 KiB random-write IOPS into the source's NBD export, alone "
          "and while a rate-limited sync=full backup of it runs (started just before fio). "
          "Guest writes to clusters not yet copied make the copy-before-write filter copy "
          "them first, which the rate limit does not hold back; \"backup\" says, per "
          "round, when the job completed (seconds into fio's run) or how far it had got "
          "when fio ended (then it is cancelled). ratio = IOPS with backup / IOPS alone, "
          "per daemon (1.00 = the backup costs the guest nothing).")
        w("")
        w("| daemon | IOPS alone, per round | median | IOPS with backup, per round | "
          "median | backup, per round | ratio with / alone | daemon CPU alone / with "
          "(median) |")
        w("|---|---|---|---|---|---|---|---|")
        res = {}
        for who in whos:
            alone, under = ("iops-alone", who), ("iops-backup", who)

            def per(k, f):
                return ", ".join(f(r) if r["status"] == 0 else "failed" for r in
                                 sorted(rows.get(k, []), key=lambda r: r["round"])) or "-"

            ia, ib = med(alone, "iops"), med(under, "iops")
            res[who] = (ia, ib)
            ca, cb = med(alone, "cpu"), med(under, "cpu")
            w("| %s | %s | %s | %s | %s | %s | %s | %s / %s |" % (
                who, per(alone, lambda r: "%.0f" % r["iops"]), "%.0f" % ia if ia else "-",
                per(under, lambda r: "%.0f" % r["iops"]), "%.0f" % ib if ib else "-",
                per(under, lambda r: "done at %.1f s" % r["end"] if r["end"] is not None
                    else "%.0f%% at the end" % (100.0 * r["offset"] / r["size"])),
                "%.2f" % (ib / ia) if ia and ib else "-",
                "%.2f s" % ca if ca is not None else "-",
                "%.2f s" % cb if cb is not None else "-"))
        if len(whos) == 2 and all(res[w_][0] and res[w_][1] for w_ in whos):
            (va, vb), (qa, qb) = res[whos[0]], res[whos[1]]
            w("")
            w("- vdiskd/QSD IOPS: alone %.2fx, with backup %.2fx; IOPS kept under backup: "
              "%s %.0f%%, %s %.0f%%" % (va / qa, vb / qb, whos[0], 100 * vb / va, whos[1],
                                        100 * qb / qa))
        w("")
    fails = [(k, r) for k in order for r in rows[k] if r["why"]]
    for (case, who), r in fails:
        w("- %s, %s, round %d: %s" % (case, who, r["round"], r["why"]))
    with open(out_path, "w") as f:
        f.write("\n".join(out).strip() + "\n")
    sys.stdout.write("\n".join(out).strip() + "\n")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "section":
        section(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "gen":
        ap = argparse.ArgumentParser(description="the backup benchmark's source bytes")
        ap.add_argument("mode")
        ap.add_argument("path")
        ap.add_argument("size", type=int)
        ap.add_argument("--seed", type=int, default=20261207)
        a = ap.parse_args()
        if a.size <= 0 or a.size % 4096:
            sys.exit("backup: size must be a positive multiple of 4096")
        counts = generate(a.path, a.size, a.seed)
        total = sum(counts.values())
        print("backup: %s: %s" % (a.path, ", ".join(
            "%s %.0f%%" % (k, 100.0 * v / total) for k, v in counts.items())))
        return 0
    ap = argparse.ArgumentParser(description="one run of the backup benchmark")
    ap.add_argument("mode", choices=["run"])
    for name in ("runs", "case", "who", "log", "daemon", "dir", "src", "tgt"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--round", required=True, type=int)
    ap.add_argument("--size", required=True, type=int, help="the images' virtual size")
    ap.add_argument("--compress", action="store_true")
    ap.add_argument("--format-direct", action="store_true",
                    help="cache.direct=on on the qcow2 nodes too, not only the file nodes")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--fio", choices=["alone", "backup"])
    ap.add_argument("--fio-runtime", type=int, default=12)
    ap.add_argument("--fio-iodepth", type=int, default=16)
    ap.add_argument("--speed", type=int, default=0, help="the job's rate limit, bytes/s")
    a = ap.parse_args()
    return Run(a).run()


if __name__ == "__main__":
    sys.exit(main())
