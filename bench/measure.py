#!/usr/bin/env python3
# Runs one benchmark command and appends its wall time and peak RSS to the runs file.
# Peak RSS: GNU time's %M when /usr/bin/time is GNU time (Debian package "time"), else this
# child's wait4() rusage, which cannot go below our own RSS (see rss_floor below).
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

GNU_TIME = "/usr/bin/time"


def have_gnu_time():
    try:
        out = subprocess.run([GNU_TIME, "--version"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return b"GNU" in out.stdout + out.stderr


def run(cmd, log, use_gnu_time):
    """Returns (exit status, wall seconds, CPU seconds, peak RSS KiB, RSS floor KiB)."""
    rss_file = None
    argv = cmd
    if use_gnu_time:
        fd, rss_file = tempfile.mkstemp(prefix="vdisk-bench-rss.")
        os.close(fd)
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file] + cmd
    # A forked child inherits our high-water mark and exec() keeps it in ru_maxrss, so
    # wait4() cannot report less than this; GNU time forks from a ~1 MiB process instead.
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    except OSError as e:
        log.write(("measure: cannot run %s: %s\n" % (argv[0], e)).encode())
        return 127, 0.0, 0.0, 0, 0
    _, wstatus, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    status = os.waitstatus_to_exitcode(wstatus)
    # user + system time of the command (GNU time's own share is a millisecond or so).
    cpu = usage.ru_utime + usage.ru_stime
    rss_kb = usage.ru_maxrss
    if rss_file:
        floor = 0
        try:
            with open(rss_file) as f:
                lines = [x for x in f.read().split("\n") if x.strip()]
            # On failure GNU time writes "Command exited with non-zero status N" first.
            rss_kb = int(lines[-1])
        except (OSError, ValueError, IndexError):
            pass
        os.unlink(rss_file)
    return status, seconds, cpu, rss_kb, floor


def main():
    ap = argparse.ArgumentParser(description="time one command for the vdisk benchmarks")
    ap.add_argument("--runs", required=True, help="TSV file to append the record to")
    ap.add_argument("--case", required=True)
    ap.add_argument("--who", required=True, help="contender label, e.g. vdisk or qemu-img")
    ap.add_argument("--round", required=True, type=int)
    ap.add_argument("--log", required=True, help="file for the command's stdout and stderr")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        sys.exit("measure: no command")
    use_gnu_time = os.environ.get("BENCH_RSS", "auto") != "rusage" and have_gnu_time()

    with open(args.log, "ab") as log:
        log.write(("$ %s\n" % " ".join(cmd)).encode())
        log.flush()
        status, seconds, cpu, rss_kb, floor = run(cmd, log, use_gnu_time)
        if status != 0:
            log.write(("measure: exit status %d\n" % status).encode())
    with open(args.runs, "a") as out:
        out.write("run\t%s\t%s\t%d\t%d\t%.6f\t%d\t%d\t%s\t%.6f\n" % (
            args.case, args.who, args.round, status, seconds, rss_kb, floor, args.log, cpu))
    sys.exit(0 if status == 0 else 1)


if __name__ == "__main__":
    main()
