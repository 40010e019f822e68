#!/usr/bin/env python3
# One run of the live disk migration benchmark (bench/migration.sh), and the markdown of the
# details.
#
#   migration.py run --who {qemu-storage-daemon,vdiskd} --runs F --case C --round R --log LOG
#                    --daemon BIN --dir D --src SRC.qcow2 --dst DST.qcow2 --size BYTES
#                    --np-id ID --link RATE --load {fio,idle} [--compress {zstd,zlib,none}
#                    --channels N] [--also-case C ...] [--timeout S]
#   migration.py section RUNS OUT.md
#
# run: a destination daemon in namespace B (vdnp-ID-b: 198.18.0.2, tests/interop/
# netns-pair.sh) with an empty qcow2 of the source's size (DST), and a source daemon in
# namespace A with SRC, exported writable over NBD on a unix socket (a unix socket reaches
# across namespaces: fio runs outside both). Both daemons are configured on the command line
# (vdiskd and qemu-storage-daemon take the same one); QMP on unix sockets.
#   qemu-storage-daemon: QEMU's way to move a disk to another host: the destination exports
#     its empty disk writable over NBD (198.18.0.2:10809); the source adds an nbd node to it
#     and runs blockdev-mirror sync=full copy-mode=write-blocking (background copying never
#     converges under fio's 5,000 random 4 KiB writes a second: each dirties a 64 KiB
#     granule, 320 MB/s of dirt against a link of 25-120 MB/s; write-blocking is QEMU's way
#     to make it converge, and with no writer the two modes are the same). At
#     BLOCK_JOB_READY the source's export is deleted (mode hard: the guest stops, as a VM
#     is paused at the switchover; vdiskd's source removes its export at completion too),
#     then block-job-complete, to BLOCK_JOB_COMPLETED: from then on the destination holds
#     everything and is the disk (the graph pivots to it). Time: blockdev-mirror to
#     COMPLETED; downtime: block-job-complete to COMPLETED (with the export deletion before
#     it in the details).
#   vdiskd: both sides set the capabilities events, multifd, zero-blocks and the parameters
#     multifd-channels, multifd-compression (zstd/zlib level 1), max-bandwidth 0,
#     downtime-limit 300; the destination (--incoming defer) runs migrate-incoming
#     tcp:198.18.0.2:4444 and the source migrate to it; query-migrate is polled every 0.1 s
#     to completed (failed, cancelled or the timeout: the run failed). Time: migrate to the
#     poll that saw completed; downtime: query-migrate's.
# With --load fio, fio (ioengine=nbd, randwrite, bs 4k, rate_iops 5000, iodepth 8,
# buffer_compress_percentage 50, refill_buffers, time_based) writes into the source's export
# from 2 s before the migration starts; the end of the export ends it with an error, which
# is expected (its write rate over its run is recorded). The page cache is dropped (sync;
# echo 3 > drop_caches) before fio starts (idle: before the migration starts).
# Measured over the migration: the bytes both veth ends sent (ip -s link), and the CPU time
# (utime + stime from /proc/PID/stat) of each daemon. After it: both daemons quit, then
# qemu-img compare SRC DST must find them equal and qemu-img check DST clean (untimed).
# Appends a "mig" record (JSON) and a "run" record (bench/measure.py's format) for the case
# and each --also-case (the QSD run is the baseline of every vdiskd variant on its link and
# load). Exit status: 0 done, 1 failed.
import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NETNS_PAIR = os.path.join(HERE, "..", "tests", "interop", "netns-pair.sh")
ADDR_B = "198.18.0.2"
NBD_PORT = 10809
MIG_PORT = 4444
MiB = 1 << 20
FIO_LEAD = 2.0
JOB_ENDS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The QMP client with event deadlines and the /proc readers of the mirror benchmark.
mirror = load("mirror")
Failed = mirror.Failed


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def tx_bytes(np_id):
    out = subprocess.run(["bash", NETNS_PAIR, "bytes", np_id], check=True,
                         capture_output=True, text=True).stdout.split()
    return sum(int(x) for x in out)


class Daemon:
    def __init__(self, run, tag, ns, args):
        self.run, self.tag = run, tag
        self.qmp = None
        self.path = os.path.join(run.a.dir, "mig-%s.qmp" % tag)
        if os.path.exists(self.path):
            os.unlink(self.path)
        argv = (["ip", "netns", "exec", ns, run.a.daemon] + args +
                ["--chardev", "socket,id=qmp0,path=%s,server=on,wait=off" % self.path,
                 "--monitor", "chardev=qmp0"])
        run.logf.write("$ [%s] %s\n" % (tag, " ".join(argv)))
        run.logf.flush()
        # ip netns exec execs the daemon: the pid is the daemon's. Its output goes to a log
        # of its own (LOG.TAG), so that a refusal at start can be quoted.
        self.out = "%s.%s" % (run.a.log, tag)
        with open(self.out, "w") as out:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        for _ in range(200):
            if os.path.exists(self.path) or self.p.poll() is not None:
                break
            time.sleep(0.05)
        if self.p.poll() is not None:
            with open(self.out) as f:
                said = " ".join(f.read().strip().splitlines()[-2:]) or "no output"
            raise Failed("the %s daemon exited at start with status %d: %s" %
                         (tag, self.p.returncode, said[:200]))
        self.qmp = mirror.Client(self.path)
        self.cmd("qmp_capabilities")

    def send(self, command, args):
        r = self.qmp.cmd(command, **args)
        while "QMP" in r:  # qemu-storage-daemon may greet twice when connected early
            r = self.qmp.reply()
        r.pop("_t", None)
        if command != "query-migrate":
            self.run.log("[%s] %s %s -> %s" % (self.tag, command, json.dumps(args),
                                                json.dumps(r)))
        return r

    def cmd(self, command, /, **args):
        r = self.send(command, args)
        if "error" in r:
            raise Failed("%s on the %s failed: %s: %s" % (
                command, self.tag, r["error"].get("class"), r["error"].get("desc")))
        return r.get("return")

    def wait_event(self, names, job, deadline):
        e = self.qmp.wait_event(names, job, deadline)
        if e is not None:
            e.pop("_t", None)
            self.run.log("[%s] event %s" % (self.tag, json.dumps(e)))
        return e

    def cpu(self):
        return mirror.proc_cpu(self.p.pid)

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
        self.fio = None
        self.fio_out = os.path.join(a.dir, "mig-fio.json")
        self.sock = os.path.join(a.dir, "mig-src.nbd")
        self.ns_a, self.ns_b = "vdnp-%s-a" % a.np_id, "vdnp-%s-b" % a.np_id
        self.info = {}

    def log(self, text):
        self.logf.write("migration: %s\n" % text)
        self.logf.flush()

    def blockdevs(self, path):
        return ["--blockdev", "driver=file,filename=%s,node-name=f0" % path,
                "--blockdev", "driver=qcow2,file=f0,node-name=disk0"]

    def start(self):
        a = self.a
        args = self.blockdevs(a.dst) + [
            "--nbd-server", "addr.type=inet,addr.host=%s,addr.port=%d" % (ADDR_B, NBD_PORT)]
        if self.vdiskd:
            args += ["--incoming", "defer"]
        else:
            args += ["--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"]
        self.dst = Daemon(self, "destination", self.ns_b, args)
        self.daemons.append(self.dst)
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.src = Daemon(self, "source", self.ns_a, self.blockdevs(a.src) + [
            "--nbd-server", "addr.type=unix,addr.path=%s" % self.sock,
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"])
        self.daemons.append(self.src)

    def start_fio(self):
        if os.path.exists(self.fio_out):
            os.unlink(self.fio_out)
        # --thread: one process, so stopping fio stops its job (a forked job outlives it).
        argv = ["fio", "--name=guest", "--thread", "--ioengine=nbd",
                "--uri=nbd+unix:///disk0?socket=%s" % self.sock, "--rw=randwrite", "--bs=4k",
                "--iodepth=8", "--rate_iops=5000", "--size=%d" % self.a.size,
                "--time_based", "--runtime=%d" % int(self.a.timeout + 60),
                "--buffer_compress_percentage=50", "--refill_buffers", "--norandommap",
                "--randrepeat=1", "--randseed=20261207", "--continue_on_error=none",
                "--output-format=json", "--output=%s" % self.fio_out]
        self.logf.write("$ %s\n" % " ".join(argv))
        self.logf.flush()
        # Its messages are dropped: once the export goes, fio 3.33's nbd engine prints one
        # error in a loop until it is stopped (gigabytes in a minute).
        self.fio = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        time.sleep(FIO_LEAD)
        if self.fio.poll() is not None:
            raise Failed("fio exited before the migration started (status %d)" %
                         self.fio.returncode)

    def stop_fio(self, grace):
        """Waits for fio to end (the export went away), SIGINT after grace seconds; its
        write rate over its run. Its exit status is not judged: an error is expected."""
        if not self.fio:
            return
        try:
            self.fio.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.fio.send_signal(signal.SIGINT)
            try:
                self.fio.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.fio.kill()
                self.fio.wait()
        self.log("fio exited with status %d (an error is expected)" % self.fio.returncode)
        self.fio = None
        try:
            with open(self.fio_out) as f:
                text = f.read()
            job = json.loads(text[text.index("{"):])["jobs"][0]
            w = job["write"]
            secs = w["runtime"] / 1000.0
            self.info.update(fio_ios=w["total_ios"], fio_secs=secs,
                             fio_iops=w["total_ios"] / secs if secs else 0.0,
                             fio_error=job.get("error", 0))
            self.log("fio: %d writes in %.3f s (%.0f IOPS), error %s" % (
                w["total_ios"], secs, self.info["fio_iops"], job.get("error")))
        except (OSError, ValueError, KeyError, IndexError) as e:
            self.log("fio: no report (%s)" % e)

    # ---- the two ways ---------------------------------------------------------------------

    def mirror(self, t0):
        """blockdev-mirror to the destination's export; returns (downtime, detail)."""
        a, s = self.a, self.src
        s.cmd("blockdev-mirror", **{"job-id": "m0"}, device="disk0", target="target",
              sync="full", **{"copy-mode": "write-blocking"})
        e = s.wait_event(("BLOCK_JOB_READY",) + JOB_ENDS, "m0", t0 + a.timeout)
        if e is None or e["event"] != "BLOCK_JOB_READY":
            if e is None:
                s.cmd("block-job-cancel", device="m0", force=True)
            raise Failed("no BLOCK_JOB_READY within %d s: %s" % (a.timeout, json.dumps(e)))
        t1 = time.perf_counter()
        s.cmd("block-export-del", id="e0", mode="hard")
        t2 = time.perf_counter()
        s.cmd("block-job-complete", device="m0")
        e = s.wait_event(JOB_ENDS, "m0", t2 + 120)
        t3 = time.perf_counter()
        if e is None or e["event"] != "BLOCK_JOB_COMPLETED" or "error" in e["data"]:
            raise Failed("the mirror did not complete: %s" % json.dumps(e))
        self.info.update(ready_s=t1 - t0, export_del_s=t2 - t1, complete_s=t3 - t2)
        return (t3 - t2) * 1000.0

    def migrate_setup(self):
        a = self.a
        names = ("events", "multifd", "zero-blocks") + (("auto-converge",)
                                                         if a.auto_converge else ())
        caps = [{"capability": c, "state": True} for c in names]
        params = {"multifd-channels": a.channels, "multifd-compression": a.compress,
                  "max-bandwidth": 0, "downtime-limit": 300}
        if a.compress == "zstd":
            params["multifd-zstd-level"] = 1
        elif a.compress == "zlib":
            params["multifd-zlib-level"] = 1
        for d in (self.dst, self.src):
            d.cmd("migrate-set-capabilities", capabilities=caps)
            d.cmd("migrate-set-parameters", **params)
        self.dst.cmd("migrate-incoming", uri="tcp:%s:%d" % (ADDR_B, MIG_PORT))

    def migrate(self, t0):
        a, s = self.a, self.src
        s.cmd("migrate", uri="tcp:%s:%d" % (ADDR_B, MIG_PORT))
        info, polls = {}, 0
        while True:
            info = s.cmd("query-migrate")
            polls += 1
            st = info.get("status")
            if st in ("completed", "failed", "cancelled"):
                break
            if time.perf_counter() - t0 > a.timeout:
                s.send("migrate-cancel", {})
                raise Failed("not completed within %d s (status %s, disk %s)" % (
                    a.timeout, st, json.dumps(info.get("disk"))))
            time.sleep(0.1)
        self.log("[source] query-migrate -> %s" % json.dumps(info))
        if st != "completed":
            raise Failed("the migration ended %s: %s" % (st, info.get("error-desc", "")))
        disk, comp = info.get("disk") or {}, info.get("compression") or {}
        self.info.update(total_time_ms=info.get("total-time"), setup_ms=info.get("setup-time"),
                         disk_transferred=disk.get("transferred"),
                         disk_duplicate=disk.get("duplicate"),
                         disk_normal_bytes=disk.get("normal-bytes"),
                         dirty_syncs=disk.get("dirty-sync-count"), mbps=disk.get("mbps"),
                         compression_rate=comp.get("compression-rate"),
                         compressed_size=comp.get("compressed-size"))
        return info.get("downtime")

    def destination_exports(self):
        """vdiskd: after completion the destination exports disk0 under the same name."""
        exports = self.dst.cmd("query-block-exports")
        names = [e.get("node-name") for e in exports]
        self.info["dst_exports"] = names
        if "disk0" not in names:
            raise Failed("after completion the destination exports %s, not disk0" % names)

    def go(self):
        a = self.a
        self.start()
        if self.vdiskd:
            probe = self.src.send("migrate", {})
            if probe.get("error", {}).get("class") == "CommandNotFound":
                raise Failed("vdiskd has no 'migrate' command (CommandNotFound)")
            self.migrate_setup()
        else:
            self.src.cmd("blockdev-add", driver="nbd", **{"node-name": "target"},
                         server={"type": "inet", "host": ADDR_B, "port": str(NBD_PORT)},
                         export="disk0")
        drop_caches()
        if a.load == "fio":
            self.start_fio()
        cpu0 = (self.src.cpu(), self.dst.cpu())
        bytes0 = tx_bytes(a.np_id)
        t0 = time.perf_counter()
        try:
            downtime = self.migrate(t0) if self.vdiskd else self.mirror(t0)
        finally:
            t_end = time.perf_counter()
            cpu1 = (self.src.cpu(), self.dst.cpu())
            bytes1 = tx_bytes(a.np_id)
            self.info.update(cpu_src=cpu1[0] - cpu0[0], cpu_dst=cpu1[1] - cpu0[1],
                             wire=bytes1 - bytes0)
        self.info["downtime_ms"] = downtime
        if self.vdiskd:
            self.destination_exports()
        self.stop_fio(2)
        return t_end - t0

    def after(self):
        """The destination equals the source, and checks clean (both daemons gone)."""
        c = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", self.a.src,
                            self.a.dst], capture_output=True, text=True)
        self.log("qemu-img compare: %s" % (c.stdout + c.stderr).strip())
        if c.returncode != 0:
            raise Failed("the destination differs from the source: %s" %
                         (c.stdout + c.stderr).strip()[:200])
        c = subprocess.run(["qemu-img", "check", "-q", self.a.dst], capture_output=True,
                           text=True)
        if c.returncode != 0:
            raise Failed("qemu-img check of the destination: %s" % c.stdout[:200])
        self.info["equal"] = True

    def run(self):
        a = self.a
        secs = 0.0
        status, why = 0, ""
        try:
            secs = self.go()
        except Failed as e:
            status, why = 1, str(e)
        except (OSError, EOFError, ValueError, KeyError, subprocess.SubprocessError) as e:
            status, why = 1, "%s: %s (did a daemon die?)" % (type(e).__name__, e)
        except Exception as e:  # noqa: BLE001 - still stop the daemons and record the run
            status, why = 1, "migration.py: %r" % e
        finally:
            if self.fio:
                self.stop_fio(0)
            for d in reversed(self.daemons):
                rc = d.stop()
                if status == 0 and rc != 0:
                    status, why = 1, "the %s daemon exited with status %d" % (d.tag, rc)
        if status == 0:
            try:
                self.after()
            except (Failed, OSError, subprocess.SubprocessError) as e:
                status, why = 1, str(e)
        if why:
            self.log(why)  # the log's last line: what bench_mark_failed quotes
        cpu = self.info.get("cpu_src", 0.0) + self.info.get("cpu_dst", 0.0)
        rec = dict(case=a.case, who=a.who, round=a.round, status=status, secs=secs,
                   link=a.link, load=a.load, compress=a.compress, channels=a.channels,
                   auto_converge=a.auto_converge,
                   size=a.size, why=why, **self.info)
        with open(a.runs, "a") as out:
            for case in [a.case] + a.also_case:
                out.write("run\t%s\t%s\t%d\t%d\t%.6f\t%d\t%d\t%s\t%.6f\n" % (
                    case, a.who, a.round, status, secs, 0, 0, a.log, cpu))
            out.write("mig\t%s\n" % json.dumps(rec, sort_keys=True))
        if status:
            msg = why
        else:
            msg = "%.2f s, downtime %s ms, %.0f MiB on the wire, CPU src %.2f s dst %.2f s" % (
                secs, fmt_num(self.info.get("downtime_ms")), self.info["wire"] / MiB,
                self.info["cpu_src"], self.info["cpu_dst"])
            if "fio_iops" in self.info:
                msg += ", fio %.0f IOPS" % self.info["fio_iops"]
        print("bench: %s %s r%d: %s" % (a.case, a.who, a.round, msg), file=sys.stderr)
        return status


def fmt_num(v, fmt="%.0f"):
    return "-" if v is None else fmt % v


# ---- the details ------------------------------------------------------------------------------

def variant(r):
    if r["who"] != "vdiskd":
        return "QSD mirror"
    return "vdisk %s x%d%s" % (r["compress"], r["channels"],
                               " auto-converge" if r.get("auto_converge") else "")


def section(runs_path, out_path):
    recs = []
    with open(runs_path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t", 1)
            if p[0] == "mig":
                recs.append(json.loads(p[1]))
    groups = {}
    for r in recs:
        groups.setdefault((r["link"], r["load"], variant(r)), []).append(r)

    def med(rs, field):
        vals = [r[field] for r in rs if r["status"] == 0 and r.get(field) is not None]
        return statistics.median(vals) if vals else None

    out = []
    w = out.append
    w("Per case the median over the rounds. time = from the command (blockdev-mirror / "
      "migrate) to the destination holding everything (QSD: BLOCK_JOB_COMPLETED after "
      "block-job-complete; vdisk: query-migrate status completed); ratio = QSD's time / "
      "this time (above 1: faster than QSD); downtime = vdisk: query-migrate's downtime; "
      "QSD: block-job-complete to BLOCK_JOB_COMPLETED (the source's export is deleted just "
      "before, at READY); wire = bytes sent by both veth ends over the run; CPU = user + "
      "system time of each daemon over the run; fio = the writer's IOPS over its run "
      "(asked: 5,000) with load fio. Every run ended with the destination equal to the "
      "source (qemu-img compare) and checking clean, or it is marked failed.")
    w("")
    w("| link | load | way | time per round | median | ratio | downtime | wire | CPU source "
      "| CPU destination | fio IOPS | detail |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = {"QSD mirror": 0}
    for link, load, var in sorted(groups, key=lambda k: (
            -mirror_rate(k[0]), k[1] != "fio", order.get(k[2], 1), k[2])):
        rs = sorted(groups[(link, load, var)], key=lambda r: r["round"])
        m = med(rs, "secs")
        base = med(groups.get((link, load, "QSD mirror"), []), "secs")
        detail = ""
        if med(rs, "ready_s") is not None:
            detail = "READY %.2f s, export-del %.3f s" % (med(rs, "ready_s"),
                                                           med(rs, "export_del_s"))
        elif med(rs, "compression_rate") is not None:
            detail = "compression rate %.2f, %s dirty syncs" % (
                med(rs, "compression_rate"), fmt_num(med(rs, "dirty_syncs")))
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            link, load, var,
            ", ".join("%.2f s" % r["secs"] if r["status"] == 0 else "failed" for r in rs),
            fmt_num(m, "%.2f s"), "%.2fx" % (base / m) if base and m else "-",
            fmt_num(med(rs, "downtime_ms"), "%.0f ms"),
            fmt_num(None if med(rs, "wire") is None else med(rs, "wire") / MiB, "%.0f MiB"),
            fmt_num(med(rs, "cpu_src"), "%.2f s"), fmt_num(med(rs, "cpu_dst"), "%.2f s"),
            fmt_num(med(rs, "fio_iops")) if load == "fio" else "-", detail or "-"))
    w("")
    for r in recs:
        if r["why"]:
            w("- %s, %s, round %d: %s" % (r["case"], r["who"], r["round"], r["why"]))
    text = "\n".join(out).strip() + "\n"
    with open(out_path, "w") as f:
        f.write(text)
    sys.stdout.write(text)


def mirror_rate(link):
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}
    for u, m in units.items():
        if link.endswith(u):
            return float(link[:-len(u)]) * m
    return 0.0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "section":
        section(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description="one run of the disk migration benchmark")
    ap.add_argument("mode", choices=["run"])
    ap.add_argument("--who", required=True, choices=["vdiskd", "qemu-storage-daemon"])
    for name in ("runs", "case", "log", "daemon", "dir", "src", "dst", "np-id", "link"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--round", required=True, type=int)
    ap.add_argument("--size", required=True, type=int)
    ap.add_argument("--load", required=True, choices=["fio", "idle"])
    ap.add_argument("--compress", default="none", choices=["zstd", "zlib", "none"])
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--auto-converge", action="store_true")
    ap.add_argument("--also-case", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    return Run(a).run()


if __name__ == "__main__":
    sys.exit(main())
