#!/usr/bin/env python3
# One run of the block replication benchmark (bench/replication.sh), the master image, and
# the markdown of the details.
#
#   replication.py gen OUT.raw BYTES [--seed N]
#   replication.py run --kind {direct,quorum,repl,checkpoint,failover} --runs F --case C
#                      --who W --round R --log LOG --daemon BIN --dir D --disk P.qcow2
#                      --colo1 S.qcow2 --size BYTES [--iodepth N --runtime S] [--fill BYTES]
#                      [--timeout S]
#   replication.py section RUNS OUT.md
#
# gen: seeded random bytes (nothing compresses, no zeros), so that the qcow2 made from them
# is fully allocated: guest writes overwrite clusters and never allocate.
#
# run: starts the daemons (vdiskd or qemu-storage-daemon, the same command line: a QMP
# monitor on a unix socket and nothing else) and builds every graph over QMP with
# blockdev-add; every file node has cache.direct=on (libvirt's way), the qcow2 nodes do not.
# The daemons run in BENCH_DIR (-> --dir); each is stopped with quit (killed by its pid
# after 120 s).
#   direct   the primary's disk (disk0) exported over NBD (unix socket), fio into it
#   quorum   the guest's disk is the primary's quorum colo-disk0 (read-pattern fifo,
#            vote-threshold 1) with disk0 as its only child, exported; fio into it
#   repl     the same quorum, plus a second child to a secondary daemon over NBD:
#            vdiskd: README's graph: the secondary exports colo1 (the secondary disk,
#            writable) and has rs (replication, mode secondary, top-id colo-disk0) over
#            active -> hidden -> colo1 under its own quorum colo-disk0; the primary adds an
#            nbd node to colo1 and rp1 (replication, mode primary) over it with
#            x-blockdev-change, xen-set-replication is started on the secondary, then on
#            the primary. qemu-storage-daemon (whose replication can never start): the same
#            path without the replication filters: the primary's quorum takes the nbd node
#            itself (x-blockdev-change); the secondary exports colo1 and runs
#            blockdev-backup sync=none from colo1 into hidden (backing colo1), the
#            copy-before-write that replication's secondary runs.
#            After fio the runs checks that nothing failed (no QUORUM_REPORT_BAD,
#            replication status without error, the backup job still running).
#            For these three, fio (ioengine=nbd, 4 KiB random writes, --iodepth, time_based
#            --runtime) writes into the export; its IOPS and mean latency, the daemons' CPU
#            time over the run, and (repl) what the hidden disk held afterwards are recorded.
#   checkpoint  (vdiskd) the repl graph with the secondary's quorum exported too; the
#            guest writes --fill bytes of distinct data from offset 0 (the copy-before-write
#            copies as much of colo1 into hidden), the secondary's own client --fill bytes
#            from half the disk (into active); then xen-colo-do-checkpoint on the secondary,
#            timed (command to reply), and on the primary; active and hidden must then be
#            empty
#   failover the same fill; the primary is stopped (quit: the primary is lost), colo1's
#            export deleted, then xen-set-replication {enable: false, primary: false,
#            failover: true} on the secondary, timed (vdiskd replies once the commit is
#            done). qemu-storage-daemon: its closest analogue, the same commit work: colo1,
#            hidden (backing colo1) and blockdev-backup sync=none colo1 -> hidden; --fill
#            bytes written into colo1's export from offset 0 (the backup copies as much into
#            hidden); the job cancelled; active (backing hidden) added and --fill bytes
#            written into its export from half the disk; then block-commit of active (top)
#            into colo1 (base), timed from the command to BLOCK_JOB_READY, job-complete,
#            BLOCK_JOB_COMPLETED. After either, the hidden and active images must hold
#            what was written (qemu-img map)
# The fills are fio (--rw=write, 256 KiB, iodepth 8, --refill_buffers, seeded, end_fsync)
# and untimed; the page cache is dropped (sync; echo 3 > drop_caches, as root) right before
# every timed part (fio's run, the checkpoint, the failover or commit).
# Appends a "repl" record (JSON) per run, and for checkpoint/failover a "run" record in
# bench/measure.py's format (bench/report.py's input): the time, the daemons' CPU time over
# it, the peak RSS. Exit status: 0 done, 1 failed.
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
MiB = 1 << 20


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The QMP client with event deadlines and the /proc readers of the mirror benchmark.
mirror = load("mirror")
Failed = mirror.Failed
JOB_ENDS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")
FIO_SEED = 20261207


def generate(path, size, seed):
    rng = random.Random(seed)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        for off in range(0, size, MiB):
            f.write(rng.randbytes(min(MiB, size - off)))
    os.replace(tmp, path)


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def qcow2(name, path, backing=None):
    o = {"driver": "qcow2", "node-name": name,
         "file": {"driver": "file", "node-name": name + "-file", "filename": path,
                  "cache": {"direct": True}}}
    if backing is not None:
        o["backing"] = backing
    return o


def quorum(children):
    return {"driver": "quorum", "node-name": "colo-disk0", "read-pattern": "fifo",
            "vote-threshold": 1, "children": children}


def allocated(path):
    """Bytes the image itself holds, not its backing chain (qemu-img map: depth 0 and
    data; -U: read while no daemon holds it, but shared access costs nothing)."""
    argv = ["qemu-img", "map", "-U", "--output=json", path]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return sum(e["length"] for e in json.loads(out) if e.get("depth") == 0 and e["data"])


class Daemon:
    def __init__(self, run, tag):
        self.run, self.tag = run, tag
        self.qmp = None
        path = os.path.join(run.a.dir, "repl-%s.qmp" % tag)
        if os.path.exists(path):
            os.unlink(path)
        argv = [run.a.daemon, "--chardev", "socket,id=qmp0,path=%s,server=on,wait=off" % path,
                "--monitor", "chardev=qmp0"]
        run.logf.write("$ [%s] %s\n" % (tag, " ".join(argv)))
        run.logf.flush()
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=run.logf,
                                  stderr=run.logf)
        for _ in range(200):
            if os.path.exists(path) or self.p.poll() is not None:
                break
            time.sleep(0.05)
        if self.p.poll() is not None:
            raise Failed("the %s daemon exited at start with status %d" %
                         (tag, self.p.returncode))
        self.qmp = mirror.Client(path)
        self.cmd("qmp_capabilities")

    def send(self, command, args):
        """The reply (stamped with its arrival time) to one command."""
        t0 = time.perf_counter()
        r = self.qmp.cmd(command, **args)
        while "QMP" in r:  # qemu-storage-daemon may greet twice when connected early
            r = self.qmp.reply()
        secs = r.pop("_t") - t0
        self.run.log("[%s] %s %s -> %s (%.3f s)" % (self.tag, command, json.dumps(args),
                                                   json.dumps(r), secs))
        if "error" in r:
            raise Failed("%s on the %s failed: %s: %s" % (
                command, self.tag, r["error"].get("class"), r["error"].get("desc")))
        return r, secs

    def cmd(self, command, /, **args):
        return self.send(command, args)[0]

    def timed(self, command, /, **args):
        return self.send(command, args)[1]

    def wait_event(self, names, job, deadline):
        e = self.qmp.wait_event(names, job, deadline)
        if e is not None:
            e.pop("_t", None)
            self.run.log("[%s] event %s" % (self.tag, json.dumps(e)))
        return e

    def events(self, name):
        return [e for e in self.qmp.events if e.get("event") == name]

    def cpu(self):
        return mirror.proc_cpu(self.p.pid)

    def rss(self):
        return mirror.proc_hwm_kb(self.p.pid)

    def stop(self):
        if self.qmp:
            try:
                self.cmd("quit")
            except (Failed, OSError, EOFError, ValueError):
                pass
            self.qmp.close()
            self.qmp = None
        try:
            self.p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.run.log("the %s daemon did not exit within 120 s of quit; killed" % self.tag)
            self.p.kill()
            self.p.wait()
        if self.p.returncode != 0:
            self.run.log("the %s daemon exited with status %d" % (self.tag, self.p.returncode))
        return self.p.returncode


class Run:
    def __init__(self, a):
        self.a = a
        self.vdiskd = a.who == "vdiskd"
        self.logf = open(a.log, "a")
        self.daemons = []
        self.fio_out = os.path.join(a.dir, "repl-fio.json")
        self.active = os.path.join(a.dir, "repl-active.qcow2")
        self.hidden = os.path.join(a.dir, "repl-hidden.qcow2")
        self.info = {}

    def log(self, text):
        self.logf.write("replication: %s\n" % text)
        self.logf.flush()

    def daemon(self, tag):
        d = Daemon(self, tag)
        self.daemons.append(d)
        return d

    def sock(self, tag):
        path = os.path.join(self.a.dir, "repl-%s.nbd" % tag)
        if os.path.exists(path):
            os.unlink(path)
        return path

    def fresh_layers(self):
        for path in (self.active, self.hidden):
            if os.path.exists(path):
                os.unlink(path)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(self.a.size)],
                           check=True)

    def fio(self, name, sock, export, extra, timeout):
        if os.path.exists(self.fio_out):
            os.unlink(self.fio_out)
        argv = (["fio", "--name=" + name, "--ioengine=nbd",
                 "--uri=nbd+unix:///%s?socket=%s" % (export, sock)] + extra +
                ["--randrepeat=1", "--randseed=%d" % FIO_SEED, "--output-format=json",
                 "--output=%s" % self.fio_out])
        self.logf.write("$ %s\n" % " ".join(argv))
        self.logf.flush()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                            stderr=self.logf, timeout=timeout).returncode
        if rc != 0:
            raise Failed("fio (%s) exited with status %d" % (name, rc))
        with open(self.fio_out) as f:
            text = f.read()
        job = json.loads(text[text.index("{"):])["jobs"][0]
        w = job["write"]
        if job.get("error"):
            raise Failed("fio (%s): error %s" % (name, job["error"]))
        self.log("fio %s: %d writes, %d bytes in %.3f s: %.0f IOPS, mean latency %.1f us" % (
            name, w["total_ios"], w["io_bytes"], w["runtime"] / 1000.0, w["iops"],
            w["lat_ns"]["mean"] / 1000.0))
        return w

    def fill(self, sock, export, offset):
        """--fill bytes of distinct seeded data from offset, 256 KiB writes; flushed."""
        w = self.fio("fill", sock, export,
                     ["--rw=write", "--bs=256k", "--iodepth=8", "--offset=%d" % offset,
                      "--size=%d" % self.a.fill, "--refill_buffers", "--end_fsync=1"],
                     self.a.timeout)
        if w["io_bytes"] != self.a.fill:
            raise Failed("the fill wrote %d bytes, not %d" % (w["io_bytes"], self.a.fill))
        return w["runtime"] / 1000.0

    # ---- the graphs ------------------------------------------------------------------------

    def secondary(self, top_export):
        """The secondary: colo1 exported writable over a unix socket, and its layers: vdiskd:
        rs over active -> hidden -> colo1 under a quorum; QSD: hidden (backing colo1)."""
        s = self.daemon("secondary")
        sock = self.sock("secondary")
        s.cmd("blockdev-add", **qcow2("colo1", self.a.colo1))
        s.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        s.cmd("block-export-add", type="nbd", id="e-colo1", **{"node-name": "colo1"},
              name="colo1", writable=True)
        self.fresh_layers()
        if self.vdiskd:
            s.cmd("blockdev-add", driver="replication", **{"node-name": "rs"},
                  mode="secondary", **{"top-id": "colo-disk0"},
                  file=qcow2("active", self.active,
                             backing=qcow2("hidden", self.hidden, backing="colo1")))
            s.cmd("blockdev-add", **quorum(["rs"]))
            if top_export:
                s.cmd("block-export-add", type="nbd", id="e-top",
                      **{"node-name": "colo-disk0"}, name="top", writable=True)
        else:
            s.cmd("blockdev-add", **qcow2("hidden", self.hidden, backing="colo1"))
        return s, sock

    def primary(self, quorum_on):
        p = self.daemon("primary")
        sock = self.sock("primary")
        p.cmd("blockdev-add", **qcow2("disk0", self.a.disk))
        node = "disk0"
        if quorum_on:
            p.cmd("blockdev-add", **quorum(["disk0"]))
            node = "colo-disk0"
        p.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        p.cmd("block-export-add", type="nbd", id="e-guest", **{"node-name": node},
              name="guest", writable=True)
        return p, sock

    def attach(self, p, s, ssock):
        """The primary's second quorum child to the secondary, and replication (or QSD's
        copy-before-write) started."""
        p.cmd("blockdev-add", driver="nbd", **{"node-name": "nbd-client1"},
              server={"type": "unix", "path": ssock}, export="colo1")
        if self.vdiskd:
            p.cmd("blockdev-add", driver="replication", **{"node-name": "rp1"},
                  mode="primary", file="nbd-client1")
            p.cmd("x-blockdev-change", parent="colo-disk0", node="rp1")
            s.cmd("xen-set-replication", enable=True, primary=False)
            p.cmd("xen-set-replication", enable=True, primary=True)
        else:
            p.cmd("x-blockdev-change", parent="colo-disk0", node="nbd-client1")
            s.cmd("blockdev-backup", **{"job-id": "cbw"}, device="colo1", target="hidden",
                  sync="none")

    def check_healthy(self, p, s):
        """Nothing in the replicated path failed during the run."""
        bad = p.events("QUORUM_REPORT_BAD") + p.events("QUORUM_FAILURE")
        if bad:
            raise Failed("the quorum reported %s" % json.dumps(bad[0]))
        if self.vdiskd:
            for d in (p, s):
                st = d.cmd("query-xen-replication-status")["return"]
                if st.get("error"):
                    raise Failed("%s replication status: %s" % (d.tag, json.dumps(st)))
        else:
            jobs = s.cmd("query-block-jobs")["return"]
            if not any(j.get("device") == "cbw" and j.get("status") == "running"
                       for j in jobs):
                raise Failed("the secondary's backup job is not running: %s" %
                             json.dumps(jobs))
            if s.events("BLOCK_JOB_ERROR") or s.events("BLOCK_JOB_CANCELLED"):
                raise Failed("the secondary's backup job failed")

    def cpu(self):
        return sum(d.cpu() for d in self.daemons)

    # ---- the runs ---------------------------------------------------------------------------

    def iops(self):
        a = self.a
        s = ssock = None
        if a.kind == "repl":
            s, ssock = self.secondary(False)
        p, psock = self.primary(a.kind != "direct")
        if s:
            self.attach(p, s, ssock)
        drop_caches()
        cpu0 = self.cpu()
        t0 = time.perf_counter()
        w = self.fio("guest", psock, "guest",
                     ["--rw=randwrite", "--bs=4k", "--iodepth=%d" % a.iodepth,
                      "--size=%d" % a.size, "--time_based", "--runtime=%d" % a.runtime,
                      "--norandommap"], a.runtime + 120)
        secs = time.perf_counter() - t0
        cpu = self.cpu() - cpu0
        if s:
            self.check_healthy(p, s)
        self.info.update(iops=w["iops"], ios=w["total_ios"], lat_us=w["lat_ns"]["mean"] / 1000.0,
                         rss=max(d.rss() for d in self.daemons))
        return secs, cpu

    def fill_replicated(self):
        """vdiskd: the replicated pair, the guest's and the secondary's fills."""
        a = self.a
        s, ssock = self.secondary(True)
        p, psock = self.primary(True)
        self.attach(p, s, ssock)
        self.info["fill_guest_s"] = self.fill(psock, "guest", 0)
        self.info["fill_top_s"] = self.fill(ssock, "top", a.size // 2)
        return p, s

    def checkpoint(self):
        p, s = self.fill_replicated()
        self.check_healthy(p, s)
        drop_caches()
        cpu0 = s.cpu()
        secs = s.timed("xen-colo-do-checkpoint")
        cpu = s.cpu() - cpu0
        p.cmd("xen-colo-do-checkpoint")
        self.check_healthy(p, s)
        self.info["rss"] = s.rss()
        return secs, cpu

    def failover(self):
        a = self.a
        if self.vdiskd:
            p, s = self.fill_replicated()
            self.check_healthy(p, s)
            # The primary is lost; QEMU's COLO docs then remove colo1's export.
            rc = p.stop()
            self.daemons.remove(p)
            if rc != 0:
                raise Failed("the primary exited with status %d" % rc)
            s.cmd("block-export-del", id="e-colo1")
            drop_caches()
            cpu0 = s.cpu()
            secs = s.timed("xen-set-replication", enable=False, primary=False, failover=True)
            cpu = s.cpu() - cpu0
            st = s.cmd("query-xen-replication-status")["return"]
            if st.get("error"):
                raise Failed("replication status after the failover: %s" % json.dumps(st))
        else:
            s, ssock = self.secondary(False)
            s.cmd("blockdev-backup", **{"job-id": "cbw"}, device="colo1", target="hidden",
                  sync="none")
            self.info["fill_guest_s"] = self.fill(ssock, "colo1", 0)
            s.cmd("job-cancel", id="cbw")
            e = s.wait_event(JOB_ENDS, "cbw", time.perf_counter() + 120)
            if e is None or "error" in e["data"]:
                raise Failed("the backup job did not end cleanly: %s" % json.dumps(e))
            s.cmd("blockdev-add", **qcow2("active", self.active, backing="hidden"))
            s.cmd("block-export-add", type="nbd", id="e-top", **{"node-name": "active"},
                  name="top", writable=True)
            self.info["fill_top_s"] = self.fill(ssock, "top", a.size // 2)
            for ex in ("e-top", "e-colo1"):
                s.cmd("block-export-del", id=ex)
            drop_caches()
            cpu0 = s.cpu()
            t0 = time.perf_counter()
            s.cmd("block-commit", **{"job-id": "c1"}, device="active", **{"base-node": "colo1"})
            e = s.wait_event(("BLOCK_JOB_READY",) + JOB_ENDS, "c1", t0 + a.timeout)
            if e is None or e["event"] != "BLOCK_JOB_READY":
                raise Failed("no BLOCK_JOB_READY from the commit: %s" % json.dumps(e))
            t1 = time.perf_counter()
            s.cmd("job-complete", id="c1")
            e = s.wait_event(JOB_ENDS, "c1", t1 + a.timeout)
            t2 = time.perf_counter()
            if e is None or e["event"] != "BLOCK_JOB_COMPLETED" or "error" in e["data"]:
                raise Failed("the commit did not complete: %s" % json.dumps(e))
            secs = t2 - t0
            cpu = s.cpu() - cpu0
            self.info.update(ready_s=t1 - t0, complete_s=t2 - t1)
        self.info["rss"] = s.rss()
        return secs, cpu

    def after(self):
        """What the layers hold once the daemons are gone."""
        a = self.a
        if a.kind == "repl":
            self.info["hidden_bytes"] = allocated(self.hidden)
        elif a.kind == "checkpoint":
            h, t = allocated(self.hidden), allocated(self.active)
            self.info.update(hidden_bytes=h, active_bytes=t)
            if h or t:
                raise Failed("after the checkpoint hidden holds %d bytes, active %d" % (h, t))
        elif a.kind == "failover":
            h, t = allocated(self.hidden), allocated(self.active)
            self.info.update(hidden_bytes=h, active_bytes=t)
            if h != a.fill or t != a.fill:
                raise Failed("hidden held %d bytes and active %d, not %d each" % (h, t, a.fill))

    def run(self):
        a = self.a
        secs = cpu = 0.0
        status, why = 0, ""
        try:
            if a.kind in ("direct", "quorum", "repl"):
                secs, cpu = self.iops()
            elif a.kind == "checkpoint":
                secs, cpu = self.checkpoint()
            else:
                secs, cpu = self.failover()
        except Failed as e:
            status, why = 1, str(e)
        except (OSError, EOFError, ValueError, KeyError, subprocess.SubprocessError) as e:
            status, why = 1, "%s: %s (did a daemon die?)" % (type(e).__name__, e)
        except Exception as e:  # noqa: BLE001 - still stop the daemons and record the run
            status, why = 1, "replication.py: %r" % e
        finally:
            # The primary first: the secondary's export still serves its last requests.
            for tag in ("primary", "secondary"):
                for d in [d for d in self.daemons if d.tag == tag]:
                    rc = d.stop()
                    if status == 0 and rc != 0:
                        status, why = 1, "the %s daemon exited with status %d" % (tag, rc)
        if status == 0:
            try:
                self.after()
            except (Failed, OSError, ValueError, subprocess.SubprocessError) as e:
                status, why = 1, str(e)
        if why:
            self.log(why)  # the log's last line: what bench_mark_failed quotes
        rec = dict(kind=a.kind, case=a.case, who=a.who, round=a.round, status=status,
                   secs=secs, cpu=cpu, iodepth=a.iodepth, size=a.size, fill=a.fill, why=why,
                   **self.info)
        with open(a.runs, "a") as out:
            if a.kind in ("checkpoint", "failover"):
                out.write("run\t%s\t%s\t%d\t%d\t%.6f\t%d\t%d\t%s\t%.6f\n" % (
                    a.case, a.who, a.round, status, secs, self.info.get("rss", 0), 0, a.log,
                    cpu))
            out.write("repl\t%s\n" % json.dumps(rec, sort_keys=True))
        if status:
            msg = why
        elif a.kind in ("checkpoint", "failover"):
            msg = "%.3f s, CPU %.2f s" % (secs, cpu)
            if "ready_s" in self.info:
                msg += " (READY after %.3f s, then %.3f s)" % (self.info["ready_s"],
                                                              self.info["complete_s"])
        else:
            msg = "%.0f IOPS (mean latency %.0f us), daemons' CPU %.2f s" % (
                self.info["iops"], self.info["lat_us"], cpu)
            if "hidden_bytes" in self.info:
                msg += "; hidden holds %.0f MiB" % (self.info["hidden_bytes"] / MiB)
        print("bench: %s %s r%d: %s" % (a.case, a.who, a.round, msg), file=sys.stderr)
        return status


# ---- the details ------------------------------------------------------------------------------

KINDS = (("direct", "(a') the disk exported directly"),
         ("quorum", "(a) the quorum over the disk, no second child"),
         ("repl", "(b) replicated: vdiskd replication / QSD quorum + nbd + copy-before-write"))


def section(runs_path, out_path):
    recs = []
    whos = []
    with open(runs_path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t", 1)
            if p[0] == "repl":
                r = json.loads(p[1])
                recs.append(r)
                if r["who"] not in whos:
                    whos.append(r["who"])
    whos.sort(key=lambda w: w != "vdiskd")

    def sel(kind, who, qd=None):
        return sorted((r for r in recs if r["kind"] == kind and r["who"] == who and
                       (qd is None or r["iodepth"] == qd)), key=lambda r: r["round"])

    def med(rs, field):
        vals = [r[field] for r in rs if r["status"] == 0 and r.get(field) is not None]
        return statistics.median(vals) if vals else None

    def per(rs, fmt):
        return ", ".join(fmt(r) if r["status"] == 0 else "failed" for r in rs) or "-"

    def f0(v):
        return "-" if v is None else "{:,.0f}".format(v)

    def ratio(x, y):
        return "%.2f" % (x / y) if x and y else "-"

    out = []
    w = out.append
    qds = sorted({r["iodepth"] for r in recs if r["kind"] in ("direct", "quorum", "repl")})
    if qds:
        w("Guest writes: fio's 4 KiB random-write IOPS into the primary's NBD export, per "
          "round and median; latency = fio's mean per write; CPU = the daemons' (primary + "
          "secondary) user + system time per write over fio's run. (b) for vdiskd is real "
          "replication; for qemu-storage-daemon the same data path without the replication "
          "filters (its replication cannot be started). hidden = what the secondary's "
          "copy-before-write had copied into the hidden disk by the end of fio's run.")
        w("")
        w("| iodepth | case | daemon | IOPS per round | median | latency | CPU per write "
          "| hidden after |")
        w("|---|---|---|---|---|---|---|---|")
        med_iops = {}
        for qd in qds:
            for kind, title in KINDS:
                for who in whos:
                    rs = sel(kind, who, qd)
                    if not rs:
                        continue
                    m = med(rs, "iops")
                    med_iops[(qd, kind, who)] = m
                    ok = [r for r in rs if r["status"] == 0]
                    cpw = statistics.median(r["cpu"] / r["ios"] * 1e6 for r in ok) if ok \
                        else None
                    hid = med(rs, "hidden_bytes")
                    w("| %d | %s | %s | %s | %s | %s | %s | %s |" % (
                        qd, title, who, per(rs, lambda r: f0(r["iops"])), f0(m),
                        "-" if med(rs, "lat_us") is None else "%.0f us" % med(rs, "lat_us"),
                        "-" if cpw is None else "%.0f us" % cpw,
                        "-" if hid is None else "%.0f MiB" % (hid / MiB)))
        w("")
        w("Ratios of the medians: with / without replication ((b) / (a)), the quorum's own "
          "cost ((a) / (a')), per daemon; and vdiskd / qemu-storage-daemon per case.")
        w("")
        head = ["iodepth"]
        for who in whos:
            head += ["%s (b)/(a)" % who, "%s (a)/(a')" % who]
        if len(whos) == 2:
            head += ["vdiskd/QSD (a')", "vdiskd/QSD (a)", "vdiskd/QSD (b)"]
        w("| " + " | ".join(head) + " |")
        w("|" + "---|" * len(head))
        for qd in qds:
            row = [str(qd)]
            for who in whos:
                g = lambda k: med_iops.get((qd, k, who))  # noqa: E731
                row += [ratio(g("repl"), g("quorum")), ratio(g("quorum"), g("direct"))]
            if len(whos) == 2:
                for kind, _ in KINDS:
                    row.append(ratio(med_iops.get((qd, kind, whos[0])),
                                     med_iops.get((qd, kind, whos[1]))))
            w("| " + " | ".join(row) + " |")
        w("")
    timed = [k for k in ("checkpoint", "failover") if any(r["kind"] == k for r in recs)]
    if timed:
        w("Checkpoint and failover with the layers filled (the hidden disk by the guest's "
          "writes through the copy-before-write, the active disk by the secondary's own "
          "writes; bytes checked with qemu-img map after the run): time of the timed "
          "command, per round and median; CPU = the secondary daemon's over it. "
          "qemu-storage-daemon has no checkpoint (no command empties the layers) and no "
          "failover; its row is an active block-commit of the same chain (active -> hidden "
          "-> colo1, same fill) to BLOCK_JOB_READY, job-complete and BLOCK_JOB_COMPLETED: "
          "the closest analogue, not the same operation.")
        w("")
        w("| case | daemon | filled (hidden + active) | time per round | median | CPU median "
          "| detail |")
        w("|---|---|---|---|---|---|---|")
        for kind in timed:
            for who in whos:
                rs = sel(kind, who)
                if not rs:
                    continue
                m = med(rs, "secs")
                ok = [r for r in rs if r["status"] == 0]
                fill = "%.0f + %.0f MiB" % (rs[0]["fill"] / MiB, rs[0]["fill"] / MiB)
                detail = ""
                if med(rs, "ready_s") is not None:
                    detail = "READY after %.3f s, job-complete to COMPLETED %.3f s" % (
                        med(rs, "ready_s"), med(rs, "complete_s"))
                fills = med(rs, "fill_guest_s")
                if fills is not None:
                    detail += ("; " if detail else "") + "fill of hidden %.1f s, of active " \
                        "%.1f s (untimed)" % (fills, med(rs, "fill_top_s"))
                w("| %s | %s | %s | %s | %s | %s | %s |" % (
                    kind, who, fill, per(rs, lambda r: "%.3f s" % r["secs"]),
                    "-" if m is None else "%.3f s" % m,
                    "%.2f s" % statistics.median(r["cpu"] for r in ok) if ok else "-",
                    detail or "-"))
        w("")
    for r in recs:
        if r["why"]:
            w("- %s, %s, round %d: %s" % (r["case"], r["who"], r["round"], r["why"]))
    text = "\n".join(out).strip() + "\n"
    with open(out_path, "w") as f:
        f.write(text)
    sys.stdout.write(text)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "section":
        section(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "gen":
        ap = argparse.ArgumentParser(description="the replication benchmark's master bytes")
        ap.add_argument("mode")
        ap.add_argument("path")
        ap.add_argument("size", type=int)
        ap.add_argument("--seed", type=int, default=20261207)
        a = ap.parse_args()
        if a.size <= 0 or a.size % MiB:
            sys.exit("replication: size must be a positive multiple of 1 MiB")
        generate(a.path, a.size, a.seed)
        return 0
    ap = argparse.ArgumentParser(description="one run of the replication benchmark")
    ap.add_argument("mode", choices=["run"])
    ap.add_argument("--kind", required=True,
                    choices=["direct", "quorum", "repl", "checkpoint", "failover"])
    for name in ("runs", "case", "who", "log", "daemon", "dir", "disk", "colo1"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--round", required=True, type=int)
    ap.add_argument("--size", required=True, type=int, help="the images' virtual size")
    ap.add_argument("--iodepth", type=int, default=1)
    ap.add_argument("--runtime", type=int, default=15)
    ap.add_argument("--fill", type=int, default=256 * MiB)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    return Run(a).run()


if __name__ == "__main__":
    sys.exit(main())
