#!/usr/bin/env python3
# One timed run of the mirror benchmark (bench/mirror.sh), and the markdown of its details.
#
#   mirror.py run --runs F --case C --who W --round R --log LOG --daemon BIN --dir D
#                 --src SRC.qcow2 --tgt TGT.qcow2 --size BYTES --granularity BYTES
#                 [--timeout S] [--writer --fio-rate IOPS --fio-iodepth N --fio-lead S]
#   mirror.py section RUNS OUT.md
#
# run: starts the daemon (qemu-storage-daemon or vdiskd: the same command line) with the
# source and the target as --blockdev nodes (file nodes with cache.direct=on), sends
# blockdev-mirror over QMP and times it from the command to BLOCK_JOB_READY; then
# job-complete, BLOCK_JOB_COMPLETED, quit. With --writer the source is first exported over NBD
# (nbd-server-start, block-export-add) and fio writes into it until READY (or the timeout).
# Appends a "run" record (bench/measure.py's format, so bench/report.py reads it: the time is
# the time to READY, the CPU time the daemon's user + system time over that interval, the RSS
# its peak) and a "mirror" record with the details. Exit status: 0 READY and completed,
# 1 failed (an error reply, a job error, the daemon died), 3 READY not reached in time.
import argparse
import importlib.util
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load_qmp_client():
    """The plain QMP client of the interop tests (tests/interop/qmp_session.py)."""
    path = os.path.join(HERE, "..", "tests", "interop", "qmp_session.py")
    spec = importlib.util.spec_from_file_location("qmp_session", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Client


BaseClient = load_qmp_client()


class Client(BaseClient):
    """Stamps each message with its arrival time; waits for events with a deadline."""

    def read(self):
        m = super().read()
        m["_t"] = time.perf_counter()
        return m

    def wait_event(self, names, job, deadline):
        """The first event in names about job (queued or arriving before deadline), or None
        at the deadline. EOFError when the daemon closes the connection."""
        while True:
            for i, e in enumerate(self.events):
                if e.get("event") in names and e.get("data", {}).get("device") == job:
                    return self.events.pop(i)
            self.events = [e for e in self.events if e.get("event") not in names]
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], min(left, 1.0))
            if r:
                m = self.read()
                if "event" in m:
                    self.events.append(m)


def proc_cpu(pid):
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def blockdev(node, path):
    return ["--blockdev", "driver=file,node-name=%s-file,filename=%s,cache.direct=on" %
            (node, path),
            "--blockdev", "driver=qcow2,node-name=%s,file=%s-file" % (node, node)]


class Run:
    def __init__(self, a):
        self.a = a
        self.logf = open(a.log, "a")
        self.daemon = None
        self.fio = None
        self.qmp = None
        self.fio_out = os.path.join(a.dir, "mirror-fio.json")

    def log(self, text):
        self.logf.write("mirror: %s\n" % text)
        self.logf.flush()

    def cmd(self, command, /, **args):
        r = self.qmp.cmd(command, **args)
        r.pop("_t", None)
        self.log("%s %s -> %s" % (command, json.dumps(args), json.dumps(r)))
        if "error" in r:
            raise Failed("%s failed: %s: %s" % (command, r["error"].get("class"),
                                                 r["error"].get("desc")))
        return r

    def start_daemon(self):
        qmp = os.path.join(self.a.dir, "mirror.qmp")
        if os.path.exists(qmp):
            os.unlink(qmp)
        argv = ([self.a.daemon] + blockdev("src", self.a.src) + blockdev("tgt", self.a.tgt) +
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
        self.qmp = Client(qmp)
        self.cmd("qmp_capabilities")

    def start_writer(self):
        sock = os.path.join(self.a.dir, "mirror.nbd")
        if os.path.exists(sock):
            os.unlink(sock)
        self.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        self.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, name="src",
                 writable=True)
        if os.path.exists(self.fio_out):
            os.unlink(self.fio_out)
        argv = ["fio", "--name=writer", "--ioengine=nbd",
                "--uri=nbd+unix:///src?socket=%s" % sock, "--rw=randwrite", "--bs=4k",
                "--iodepth=%d" % self.a.fio_iodepth, "--rate_iops=%d" % self.a.fio_rate,
                "--size=%d" % self.a.size, "--time_based",
                "--runtime=%d" % int(self.a.timeout + 120), "--randrepeat=1",
                "--randseed=20261207", "--norandommap", "--output-format=json",
                "--output=%s" % self.fio_out]
        self.logf.write("$ %s\n" % " ".join(argv))
        self.logf.flush()
        self.fio = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                    stderr=self.logf)
        time.sleep(self.a.fio_lead)
        if self.fio.poll() is not None:
            raise Failed("fio exited before the mirror started (status %d)" %
                         self.fio.returncode)

    def stop_writer(self):
        """Stops fio (SIGINT: it still writes its report); returns its write IOPS."""
        if not self.fio:
            return None
        if self.fio.poll() is None:
            self.fio.send_signal(signal.SIGINT)
        try:
            self.fio.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.fio.kill()
            self.fio.wait()
        self.fio = None
        try:
            with open(self.fio_out) as f:
                text = f.read()
            # fio may print a line or two ("fio: terminating on signal 2") before the JSON.
            job = json.loads(text[text.index("{"):])["jobs"][0]["write"]
            self.log("fio: %d writes in %.3f s: %.0f IOPS" %
                     (job["total_ios"], job["runtime"] / 1000.0, job["iops"]))
            return job["iops"]
        except (OSError, ValueError, KeyError, IndexError) as e:
            self.log("fio: no report (%s)" % e)
            return None

    def stop_daemon(self):
        if self.qmp:
            try:
                self.cmd("quit")
            except (Failed, OSError, EOFError, ValueError):
                pass
            self.qmp.close()
            self.qmp = None
        if self.daemon:
            try:
                self.daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.log("the daemon did not exit within 120 s of quit; killed")
                self.daemon.kill()
                self.daemon.wait()
            if self.daemon.returncode != 0:
                self.log("the daemon exited with status %d" % self.daemon.returncode)

    def run(self):
        a = self.a
        ready_secs = complete_secs = fio_iops = None
        cpu = rss = 0
        secs = 0.0
        status, why = 0, ""
        started = False
        try:
            self.start_daemon()
            if a.writer:
                self.start_writer()
            pid = self.daemon.pid
            args = {"job-id": "m1", "device": "src", "target": "tgt", "sync": "full",
                    "granularity": a.granularity}
            if a.copy_mode:
                args["copy-mode"] = a.copy_mode
            cpu0 = proc_cpu(pid)
            t0 = time.perf_counter()
            self.cmd("blockdev-mirror", **args)
            started = True
            ends = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED",
                    "BLOCK_JOB_ERROR")
            e = self.qmp.wait_event(ends, "m1", t0 + a.timeout)
            secs = (e["_t"] if e else time.perf_counter()) - t0
            cpu = proc_cpu(pid) - cpu0
            if e:
                e.pop("_t")
                self.log("after %.3f s: %s" % (secs, json.dumps(e)))
            progress = ""
            if e is None:
                # How far it got: the job's len grows with every re-dirtied chunk.
                try:
                    jobs = self.cmd("query-block-jobs")["return"]
                except (Failed, KeyError):
                    jobs = []
                for j in jobs:
                    if j.get("device") == "m1":
                        progress = " (job offset %.0f MB of len %.0f MB)" % (
                            j["offset"] / 1e6, j["len"] / 1e6)
            if a.writer:
                fio_iops = self.stop_writer()
            if e is None:
                status, why = 3, "not READY after %d s%s" % (a.timeout, progress)
                if a.writer:
                    why += " under the writer (fio: %s IOPS)" % (
                        "%.0f" % fio_iops if fio_iops is not None else "?")
                self.cmd("job-cancel", id="m1")
                e = self.qmp.wait_event(("BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED"), "m1",
                                        time.perf_counter() + 120)
                if e:
                    e.pop("_t")
                self.log("cancelled: %s" % json.dumps(e))
            elif e["event"] != "BLOCK_JOB_READY":
                raise Failed("%s instead of BLOCK_JOB_READY: %s" % (e["event"], json.dumps(e)))
            else:
                ready_secs = secs
                t1 = time.perf_counter()
                self.cmd("job-complete", id="m1")
                e = self.qmp.wait_event(ends[1:], "m1", t1 + 300)
                if e is None:
                    raise Failed("no BLOCK_JOB_COMPLETED within 300 s of job-complete")
                complete_secs = e.pop("_t") - t1
                self.log("after %.3f s more: %s" % (complete_secs, json.dumps(e)))
                if e["event"] != "BLOCK_JOB_COMPLETED" or "error" in e.get("data", {}):
                    raise Failed("job-complete ended in %s" % json.dumps(e))
            rss = proc_hwm_kb(pid)
        except Failed as e:
            status, why = 1, str(e)
        except (OSError, EOFError, ValueError) as e:
            status, why = 1, "QMP: %s (did the daemon die?)" % (str(e) or type(e).__name__)
        except Exception as e:  # noqa: BLE001 - still stop everything and record the run
            status, why = 1, "mirror.py: %r" % e
        finally:
            if self.fio:
                fio_iops = self.stop_writer()
                if not started:
                    fio_iops = None  # fio alone, without a mirror: not this case's figure
            self.stop_daemon()
        if status == 0 and self.daemon and self.daemon.returncode != 0:
            status, why = 1, "the daemon exited with status %d" % self.daemon.returncode
        if status == 1 and self.daemon and self.daemon.returncode not in (None, 0):
            why += " (daemon exit status %d)" % self.daemon.returncode
        if why:
            self.log(why)  # the log's last line: what bench_mark_failed quotes
        with open(a.runs, "a") as out:
            out.write("run\t%s\t%s\t%d\t%d\t%.6f\t%d\t%d\t%s\t%.6f\n" % (
                a.case, a.who, a.round, 0 if status == 0 else 1, secs, rss, 0, a.log, cpu))
            out.write("mirror\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%s\n" % (
                a.case, a.who, a.round, status,
                "" if ready_secs is None else "%.6f" % ready_secs,
                "" if complete_secs is None else "%.6f" % complete_secs,
                "" if fio_iops is None else "%.1f" % fio_iops, a.size,
                why.replace("\t", " ").replace("\n", " ")))
        msg = ("READY after %.2f s (%.0f MB/s), completed in %.2f s" %
               (ready_secs, a.size / 1e6 / ready_secs, complete_secs)) if status == 0 else why
        if fio_iops is not None:
            msg += "; fio %.0f IOPS" % fio_iops
        print("bench: %s %s r%d: %s" % (a.case, a.who, a.round, msg), file=sys.stderr)
        return status


class Failed(Exception):
    pass


def section(runs_path, out_path):
    """Markdown: every run's time to READY, completion time and fio IOPS."""
    rows, order = {}, []
    with open(runs_path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] != "mirror" or len(p) < 10:
                continue
            key = (p[1], p[2])
            if key not in rows:
                order.append(key)
            rows.setdefault(key, []).append(dict(
                round=int(p[3]), status=int(p[4]),
                ready=float(p[5]) if p[5] else None,
                complete=float(p[6]) if p[6] else None,
                iops=float(p[7]) if p[7] else None, size=int(p[8]), why=p[9]))
    out = []
    w = out.append
    w("Every run: time from blockdev-mirror to BLOCK_JOB_READY (MB/s = image size / that "
      "time), then from job-complete to BLOCK_JOB_COMPLETED; for mirror-writer also "
      "whether READY came within the timeout and fio's achieved write IOPS over its whole "
      "run (target rate in the case title).")
    w("")
    w("| case | daemon | READY | time to READY, per round | median | MB/s | "
      "job-complete | fio IOPS (median) |")
    w("|---|---|---|---|---|---|---|---|")
    for key in order:
        rs = sorted(rows[key], key=lambda r: r["round"])
        ready = [r["ready"] for r in rs if r["ready"] is not None]
        comp = [r["complete"] for r in rs if r["complete"] is not None]
        iops = [r["iops"] for r in rs if r["iops"] is not None]
        per = ", ".join("%.2f s" % r["ready"] if r["ready"] is not None else
                        ("timeout" if r["status"] == 3 else "failed") for r in rs)
        med = statistics.median(ready) if ready else None
        w("| %s | %s | %d/%d | %s | %s | %s | %s | %s |" % (
            key[0], key[1], len(ready), len(rs), per,
            "%.2f s" % med if med else "-",
            "%.0f" % (rs[0]["size"] / 1e6 / med) if med else "-",
            "%.3f s" % statistics.median(comp) if comp else "-",
            "%.0f" % statistics.median(iops) if iops else "-"))
    fails = [(k, r) for k in order for r in rows[k] if r["why"]]
    if fails:
        w("")
        for (case, who), r in fails:
            w("- %s, %s, round %d: %s" % (case, who, r["round"], r["why"]))
    with open(out_path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "section":
        section(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description="one run of the mirror benchmark")
    ap.add_argument("mode", choices=["run"])
    for name in ("runs", "case", "who", "log", "daemon", "dir", "src", "tgt"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--round", required=True, type=int)
    ap.add_argument("--granularity", required=True, type=int)
    ap.add_argument("--size", required=True, type=int, help="the images' virtual size")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--writer", action="store_true")
    ap.add_argument("--copy-mode", default=None, help="blockdev-mirror's copy-mode")
    ap.add_argument("--fio-rate", type=int, default=20000)
    ap.add_argument("--fio-iodepth", type=int, default=32)
    ap.add_argument("--fio-lead", type=float, default=1.0,
                    help="seconds fio writes before the mirror starts")
    a = ap.parse_args()
    return Run(a).run()


if __name__ == "__main__":
    sys.exit(main())
