#!/usr/bin/env bash
# Block replication (COLO): vdiskd beside qemu-storage-daemon in one run, rounds interleaved,
# the page cache dropped before every timed run. Usage: bench/replication.sh [iops]
# [checkpoint] [failover] (default: all three; a case of its own, not part of run.sh's set;
# needs root for drop_caches). Details of each run: bench/replication.py's header.
#   iops        fio's 4 KiB random-write IOPS (ioengine=nbd, iodepth 1, then 32, time_based)
#               into the primary's export (unix socket) of a fully written qcow2: (a') the
#               disk exported directly, (a) the quorum (fifo, vote-threshold 1) over it alone,
#               (b) replicated: vdiskd runs README's graph (replication primary over an nbd
#               node to a second vdiskd whose replication secondary sits over active ->
#               hidden -> colo1, xen-set-replication started, secondary first);
#               qemu-storage-daemon 7.2 has the driver but no command to start it (its
#               replication nodes fail every request with EIO), so it runs the same path
#               without the filters: quorum + nbd node (x-blockdev-change) to a second QSD
#               that exports colo1 and runs blockdev-backup sync=none colo1 -> hidden
#   checkpoint  (vdiskd) REPL_FILL copied into hidden by the guest's writes and REPL_FILL
#               written into active by the secondary; xen-colo-do-checkpoint timed (QSD: no
#               command empties the layers, no figure)
#   failover    the same fill; xen-set-replication {enable: false, primary: false,
#               failover: true} timed (vdiskd replies after the commit); QSD: an active
#               block-commit of the same chain to COMPLETED, the closest analogue
# Every file node cache.direct=on (libvirt's way). Variables: REPL_SIZE (1G), REPL_FIO_RUNTIME
# (15 s), REPL_FILL (256M), BENCH_ROUNDS (3), REPL_TIMEOUT (600 s), VDISKD, QSD, BENCH_DIR.
# Writes bench/results-replication.md (other sizes or some cases only:
# $BENCH_DIR/results-replication.md).
set -euo pipefail

cases=()
for arg in "$@"; do
    case $arg in
        -h | --help) sed -n '2,25s/^# \{0,1\}//p' "$0"; exit 0 ;;
        iops | checkpoint | failover) cases+=("$arg") ;;
        *) echo "bench: unknown argument '$arg' (iops, checkpoint, failover)" >&2; exit 2 ;;
    esac
done
partial=1
[ ${#cases[@]} -gt 0 ] || { cases=(iops checkpoint failover); partial=0; }
want() { [[ " ${cases[*]} " == *" $1 "* ]]; }

: "${BENCH_ROUNDS:=3}"
: "${BENCH_RUNS:=${BENCH_DIR:-/var/tmp/vdisk-bench}/runs-replication.tsv}"
. "$(dirname "$0")/lib.sh"

QSD=${QSD:-qemu-storage-daemon}
: "${VDISKD:=$(dirname "$VDISK")/vdiskd}"
[ -x "$VDISKD" ] || [ ! -x "$REPO/build-me/vdiskd" ] || VDISKD=$REPO/build-me/vdiskd
size=$(numfmt --from=iec "${REPL_SIZE:-1G}") || bench_die "REPL_SIZE=$REPL_SIZE: not a size"
fill=$(numfmt --from=iec "${REPL_FILL:-256M}") || bench_die "REPL_FILL=$REPL_FILL: not a size"
[ $((size % (1 << 20))) = 0 ] || bench_die "REPL_SIZE must be a multiple of 1 MiB"
if [ $((fill % (256 << 10))) != 0 ] || [ "$fill" -le 0 ] || [ $((2 * fill)) -gt "$size" ]; then
    bench_die "REPL_FILL must be a multiple of 256 KiB and at most half of REPL_SIZE"
fi
runtime=${REPL_FIO_RUNTIME:-15}
timeout=${REPL_TIMEOUT:-600}

command -v python3 >/dev/null || bench_die "python3 is needed (make deps)"
command -v "$QEMU_IMG" >/dev/null || bench_die "$QEMU_IMG not found (qemu-utils)"
command -v "$QSD" >/dev/null || bench_die "$QSD not found (qemu-system-common)"
command -v "$VDISKD" >/dev/null || bench_die "$VDISKD not found: build it (or set VDISKD)"
VDISKD=$(command -v "$VDISKD")
standin=0  # lib.sh's bench_meta_contender reads it
[ "$VDISKD" != "$(command -v "$QSD")" ] || standin=1
if ! { command -v fio >/dev/null && fio --enghelp=nbd >/dev/null 2>&1; }; then
    bench_die "fio with the nbd engine is needed"
fi
[ -w /proc/sys/vm/drop_caches ] ||
    echo "bench: not root: the page cache is not dropped before the runs" >&2

if [ "$partial" = 0 ] && [ "$size" = $((1 << 30)) ] && [ "$fill" = $((256 << 20)) ] &&
    [ "$runtime" = 15 ]; then
    : "${BENCH_OUT:=$BENCH_SRC/results-replication.md}"
else
    : "${BENCH_OUT:=$BENCH_DIR/results-replication.md}"
fi

mkdir -p "$BENCH_DIR" "$BENCH_CACHE" "$BENCH_DIR/logs" "$BENCH_DIR/bin"
fstype=$(df -PT "$BENCH_DIR" | awk 'NR == 2 { print $2 }')
[ "$fstype" != tmpfs ] || bench_die "$BENCH_DIR is on tmpfs; set BENCH_DIR to a disk filesystem"
master="$BENCH_CACHE/repl-master-v1-$size.qcow2"
# The master, the primary's disk and colo1 (copies of it), active and hidden; making the
# master takes its raw bytes as well.
need=$((5 * size))
[ -f "$master" ] || need=$((need + 2 * size))
avail=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') * 1024))
[ "$avail" -ge "$need" ] ||
    bench_die "$BENCH_DIR has $((avail >> 30)) GiB free; this needs $(((need >> 30) + 1)) GiB"

rm -f "$BENCH_RUNS" "$BENCH_DIR"/failed.*repl* "$BENCH_DIR"/logs/repl-*
# Run a copy, so that a rebuild in the middle of the run cannot change or remove it.
cp "$VDISKD" "$BENCH_DIR/bin/vdiskd-replication"
vdiskd_src=$VDISKD
VDISKD=$BENCH_DIR/bin/vdiskd-replication
: >"$BENCH_RUNS"
bench_meta_contender vdiskd "$vdiskd_src" qemu-storage-daemon
meta qemu-storage-daemon "$("$QSD" --version | head -1)"
meta fio "$(fio --version)"
bench_meta_machine
mb=$((size >> 20))
fmb=$((fill >> 20))
meta images "$mb MiB qcow2 (64 KiB clusters) fully written with seeded random data (replication.py gen, qemu-img convert; cached), so guest writes overwrite and never allocate; the primary's disk and colo1 are copies of it made at the start and used by every run (overwrites change no allocation; checked at the end); active and hidden made empty by qemu-img create for every run; file nodes cache.direct=on (libvirt's way), qcow2 nodes default; every graph built over QMP (blockdev-add); sync; echo 3 > drop_caches before every timed part"
bench_meta_load
start=$SECONDS

want failover && bench_case repl-failover time vdiskd qemu-storage-daemon - \
    "failover with $fmb MiB in hidden and $fmb MiB in active: vdiskd: xen-set-replication failover on the secondary, to its reply (the commit done); QSD: active block-commit of the same chain into colo1, to COMPLETED (the closest analogue, not the same operation)" \
    "vdiskd: xen-set-replication {enable: false, primary: false, failover: true}; QSD: block-commit {job-id: c1, device: active, base-node: colo1}, BLOCK_JOB_READY, job-complete, BLOCK_JOB_COMPLETED" \
    $((2 * fill))
want iops && meta "iops case" "fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth={1,32} --time_based --runtime=$runtime --norandommap --randrepeat=1 --randseed=20261207 into the primary's export (nbd-server-start on a unix socket, block-export-add writable); fresh daemons for every run"
want checkpoint && meta "checkpoint case" "vdiskd only: the guest writes $fmb MiB from offset 0 through the replicated quorum (the copy-before-write copies $fmb MiB of colo1 into hidden), the secondary's client $fmb MiB from offset $((mb / 2)) MiB into its quorum (active); fio --rw=write --bs=256k --iodepth=8 --refill_buffers --end_fsync=1; then xen-colo-do-checkpoint on the secondary, timed to its reply, then on the primary; active and hidden must be empty afterwards (qemu-img map)"
want failover && meta "failover case" "vdiskd: the same fill, the primary quit, block-export-del of colo1's export, then the failover, timed to its reply; QSD: colo1 + hidden (backing colo1), blockdev-backup sync=none colo1 -> hidden, $fmb MiB written into colo1's export from offset 0, the job cancelled, active (backing hidden) added and $fmb MiB written into its export from $((mb / 2)) MiB, then the commit; hidden and active must hold $fmb MiB each (qemu-img map)"

if [ ! -f "$master" ]; then
    echo "bench: generating $master (once; cached)" >&2
    python3 "$BENCH_SRC/replication.py" gen "$BENCH_DIR/repl-master.raw" "$size"
    "$QEMU_IMG" convert -f raw -O qcow2 "$BENCH_DIR/repl-master.raw" "$master.tmp"
    rm -f "$BENCH_DIR/repl-master.raw"
    mv "$master.tmp" "$master"
fi

disk="$BENCH_DIR/repl-disk0.qcow2"
colo1="$BENCH_DIR/repl-colo1.qcow2"
trap 'rm -f "$disk" "$colo1" "$BENCH_DIR"/repl-active.qcow2 "$BENCH_DIR"/repl-hidden.qcow2 \
    "$BENCH_DIR"/repl-*.qmp "$BENCH_DIR"/repl-*.nbd "$BENCH_DIR"/repl-fio.json' EXIT
cp "$master" "$disk"
cp "$master" "$colo1"
sizes=$(stat -c %s "$disk" "$colo1" | tr '\n' ' ')

# repl_run CASE WHO ROUND KIND [replication.py options]: one run, unless WHO already failed
# in CASE.
repl_run() {
    local case=$1 who=$2 round=$3 kind=$4
    shift 4
    bench_failed "$case" "$who" && return 1
    local log="$BENCH_DIR/logs/$case.$who.r$round.log" bin=$QSD
    [ "$who" = vdiskd ] && bin=$VDISKD
    : >"$log"
    if ! python3 "$BENCH_SRC/replication.py" run --kind "$kind" --runs "$BENCH_RUNS" \
        --case "$case" --who "$who" --round "$round" --log "$log" --daemon "$bin" \
        --dir "$BENCH_DIR" --disk "$disk" --colo1 "$colo1" --size "$size" \
        --timeout "$timeout" "$@"; then
        bench_mark_failed "$case" "$who" "$round"
        return 1
    fi
}

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    if want iops; then
        for qd in 1 32; do
            for kind in direct quorum repl; do
                for who in $(bench_order "$round" vdiskd qemu-storage-daemon); do
                    repl_run "repl-qd$qd-$kind" "$who" "$round" "$kind" --iodepth "$qd" \
                        --runtime "$runtime" || true
                done
            done
        done
    fi
    if want checkpoint; then
        repl_run repl-checkpoint vdiskd "$round" checkpoint --fill "$fill" || true
    fi
    if want failover; then
        for who in $(bench_order "$round" vdiskd qemu-storage-daemon); do
            repl_run repl-failover "$who" "$round" failover --fill "$fill" || true
        done
    fi
done

# The working copies: fio and the commits overwrote data; nothing may have been allocated,
# and both must check clean.
if [ "$(stat -c %s "$disk" "$colo1" | tr '\n' ' ')" != "$sizes" ]; then
    bench_note repl "the primary's disk or colo1 grew during the run ($sizes -> $(stat -c %s "$disk" "$colo1" | tr '\n' ' ')): some writes allocated"
fi
for img in "$disk" "$colo1"; do
    bench_check repl "the run" "$img" || true
done

python3 "$BENCH_SRC/replication.py" section "$BENCH_RUNS" "$BENCH_DIR/replication-details.md" \
    >/dev/null
bench_section "Replication details" "$BENCH_DIR/replication-details.md"
meta "load average at end" "$(cut -d' ' -f1-3 /proc/loadavg)"
meta "total time" "$((SECONDS - start)) s"

status=0
python3 "$BENCH_SRC/report.py" "$BENCH_RUNS" --out "$BENCH_OUT" >/dev/null || status=$?
echo "bench: results written to $BENCH_OUT" >&2
failed=0
for f in "$BENCH_DIR"/failed.*repl*; do
    [ -e "$f" ] && failed=1
done
if [ "$failed" = 1 ]; then
    echo "bench: some runs or checks failed (see Notes)" >&2
    exit 1
fi
[ "$status" = 0 ] || [ "$status" = 3 ] || exit 1
