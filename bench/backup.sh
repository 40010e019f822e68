#!/usr/bin/env bash
# The backup job: vdiskd beside qemu-storage-daemon in one run, rounds interleaved, the page
# cache dropped before every timed run. Usage: bench/backup.sh [full] [compress] [iops]
# (default: all three; a case of its own, not part of run.sh's set; needs root for
# drop_caches)
#   backup-full      blockdev-backup sync=full of a fully allocated 4 GiB qcow2 (half random,
#                    half text-like data; cached) into an empty qcow2 that blockdev-add opens,
#                    file nodes cache.direct=on: time from the command to BLOCK_JOB_COMPLETED
#   backup-compress  the same with compress: true (the target's default zlib)
#   iops             fio's 4 KiB random-write IOPS into the source's NBD export for 12 s,
#                    alone and while a rate-limited sync=full backup runs: the ratio per daemon
# Variables: BACKUP_SIZE (4G), BENCH_ROUNDS (3), BACKUP_FIO_RUNTIME (12 s),
# BACKUP_FIO_IODEPTH (16), BACKUP_SPEED (the iops case's job rate limit in bytes/s; default
# the size over fio's run time plus 30 s), BACKUP_TIMEOUT (600 s), BACKUP_FORMAT_DIRECT (0; 1:
# cache.direct=on on the qcow2 nodes too), VDISKD, QSD, BENCH_DIR.
# Writes bench/results-backup.md (another BACKUP_SIZE, some cases only or
# BACKUP_FORMAT_DIRECT=1: $BENCH_DIR/results-backup.md).
set -euo pipefail

cases=()
for arg in "$@"; do
    case $arg in
        -h | --help) sed -n '2,19s/^# \{0,1\}//p' "$0"; exit 0 ;;
        full | compress | iops) cases+=("$arg") ;;
        *) echo "bench: unknown argument '$arg' (full, compress, iops)" >&2; exit 2 ;;
    esac
done
partial=1
[ ${#cases[@]} -gt 0 ] || { cases=(full compress iops); partial=0; }
want() { [[ " ${cases[*]} " == *" $1 "* ]]; }

: "${BENCH_ROUNDS:=3}"
: "${BENCH_RUNS:=${BENCH_DIR:-/var/tmp/vdisk-bench}/runs-backup.tsv}"
. "$(dirname "$0")/lib.sh"

QSD=${QSD:-qemu-storage-daemon}
: "${VDISKD:=$(dirname "$VDISK")/vdiskd}"
[ -x "$VDISKD" ] || [ ! -x "$REPO/build-me/vdiskd" ] || VDISKD=$REPO/build-me/vdiskd
size=$(numfmt --from=iec "${BACKUP_SIZE:-4G}") || bench_die "BACKUP_SIZE=$BACKUP_SIZE: not a size"
[ $((size % (1 << 20))) = 0 ] || bench_die "the size must be a multiple of 1 MiB"
timeout=${BACKUP_TIMEOUT:-600}
runtime=${BACKUP_FIO_RUNTIME:-12}
iodepth=${BACKUP_FIO_IODEPTH:-16}
speed=${BACKUP_SPEED:-$((size / (runtime + 30)))}
# 1: cache.direct=on on the qcow2 nodes as well as the file nodes (libvirt's way).
fdirect=()
[ "${BACKUP_FORMAT_DIRECT:-0}" = 0 ] || fdirect=(--format-direct)

command -v python3 >/dev/null || bench_die "python3 is needed (make deps)"
command -v "$QEMU_IMG" >/dev/null || bench_die "$QEMU_IMG not found (qemu-utils)"
command -v "$QSD" >/dev/null || bench_die "$QSD not found (qemu-system-common)"
command -v "$VDISKD" >/dev/null || bench_die "$VDISKD not found: build it (or set VDISKD)"
VDISKD=$(command -v "$VDISKD")
standin=0
[ "$VDISKD" != "$(command -v "$QSD")" ] || standin=1
if want iops && ! { command -v fio >/dev/null && fio --enghelp=nbd >/dev/null 2>&1; }; then
    bench_die "the iops case needs fio with the nbd engine"
fi
[ -w /proc/sys/vm/drop_caches ] ||
    echo "bench: not root: the page cache is not dropped before the runs" >&2

if [ "$partial" = 0 ] && [ "$size" = $((4 << 30)) ] && [ ${#fdirect[@]} = 0 ]; then
    : "${BENCH_OUT:=$BENCH_SRC/results-backup.md}"
else
    : "${BENCH_OUT:=$BENCH_DIR/results-backup.md}"
fi

mkdir -p "$BENCH_DIR" "$BENCH_CACHE" "$BENCH_DIR/logs" "$BENCH_DIR/bin"
fstype=$(df -PT "$BENCH_DIR" | awk 'NR == 2 { print $2 }')
[ "$fstype" != tmpfs ] || bench_die "$BENCH_DIR is on tmpfs; set BENCH_DIR to a disk filesystem"
src="$BENCH_CACHE/backup-src-v1-$size.qcow2"
# The cached source, the iops case's copy of it, one target at a time; making the source
# takes its raw bytes as well.
need=$((2 * size + (1 << 30)))
want iops && need=$((need + size))
[ -f "$src" ] || need=$((need + 2 * size))
avail=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') * 1024))
[ "$avail" -ge "$need" ] ||
    bench_die "$BENCH_DIR has $((avail >> 30)) GiB free; this needs $(((need >> 30) + 1)) GiB"

rm -f "$BENCH_RUNS" "$BENCH_DIR"/failed.*backup-* "$BENCH_DIR"/failed.*iops-* \
    "$BENCH_DIR"/logs/backup-* "$BENCH_DIR"/logs/iops-*
# Run a copy, so that a rebuild in the middle of the run cannot change or remove it.
cp "$VDISKD" "$BENCH_DIR/bin/vdiskd-backup"
vdiskd_src=$VDISKD
VDISKD=$BENCH_DIR/bin/vdiskd-backup
: >"$BENCH_RUNS"
bench_meta_contender vdiskd "$vdiskd_src" qemu-storage-daemon
meta qemu-storage-daemon "$("$QSD" --version | head -1)"
! want iops || meta fio "$(fio --version)"
bench_meta_machine
meta images "$((size >> 20)) MiB qcow2 (64 KiB clusters); source fully allocated, half random and half text-like data (bench/backup.py gen); target empty, made by qemu-img create and opened by blockdev-add; both file (cache.direct=on) + qcow2 nodes$([ ${#fdirect[@]} = 0 ] || echo " (cache.direct=on as well)"); sync; echo 3 > drop_caches before every run"
bench_meta_load
start=$SECONDS

mb=$((size >> 20))
job="blockdev-backup {job-id: b1, device: src, target: tgt, sync: full"
want full && bench_case backup-full time vdiskd qemu-storage-daemon 1.2 \
    "blockdev-backup sync=full of a $mb MiB allocated qcow2 into an empty qcow2, O_DIRECT: time to BLOCK_JOB_COMPLETED" \
    "$job}; timed to BLOCK_JOB_COMPLETED" "$size"
if want compress; then
    bench_case backup-compress time vdiskd qemu-storage-daemon 2.0 \
        "the same with compress: true (zlib)" "$job, compress: true}; timed to BLOCK_JOB_COMPLETED" "$size"
    bench_case backup-compress size vdiskd qemu-storage-daemon - \
        "the compressed target's file size" "$job, compress: true}; the target's size"
fi
# The iops case is no row of the table (fio's run time is fixed): its IOPS are in the details.
want iops && meta "iops case" "fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=$iodepth --time_based --runtime=$runtime into the source's export (nbd-server-start, block-export-add writable), alone, and started right after \`$job, speed: $speed}\` ($((speed >> 20)) MiB/s); the job is cancelled after fio if it still runs; one copy of the source serves every iops run"

if [ ! -f "$src" ]; then
    echo "bench: generating $src (once; cached)" >&2
    python3 "$BENCH_SRC/backup.py" gen "$BENCH_DIR/backup-src.raw" "$size"
    "$QEMU_IMG" convert -f raw -O qcow2 "$BENCH_DIR/backup-src.raw" "$src.tmp"
    rm -f "$BENCH_DIR/backup-src.raw"
    mv "$src.tmp" "$src"
fi

drop_caches() {
    bench_settle
    if [ -w /proc/sys/vm/drop_caches ]; then
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    fi
}

# backup_run CASE WHO ROUND SOURCE TARGET [backup.py options]: one timed run, unless WHO
# already failed in CASE.
backup_run() {
    local case=$1 who=$2 round=$3 s=$4 t=$5
    shift 5
    bench_failed "$case" "$who" && return 1
    local log="$BENCH_DIR/logs/$case.$who.r$round.log" bin=$QSD
    [ "$who" = vdiskd ] && bin=$VDISKD
    : >"$log"
    if ! python3 "$BENCH_SRC/backup.py" run --runs "$BENCH_RUNS" --case "$case" \
        --who "$who" --round "$round" --log "$log" --daemon "$bin" --dir "$BENCH_DIR" \
        --src "$s" --tgt "$t" --size "$size" "${fdirect[@]}" "$@"; then
        bench_mark_failed "$case" "$who" "$round"
        return 1
    fi
}

stamp() { stat -c '%s %y' "$src"; }
src_stamp=$(stamp)
tgt="$BENCH_DIR/backup-tgt.qcow2"
isrc="$BENCH_DIR/backup-iops-src.qcow2"
trap 'rm -f "$tgt" "$isrc" "$BENCH_DIR/backup.qmp" "$BENCH_DIR/backup.nbd" "$BENCH_DIR/backup-fio.json"' EXIT
# fio's writes change the data but not the allocation: one copy serves every iops run.
! want iops || cp "$src" "$isrc"

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdiskd qemu-storage-daemon); do
        for c in full compress; do
            want "$c" || continue
            case=backup-$c
            opts=()
            [ "$c" = compress ] && opts=(--compress)
            rm -f "$tgt"
            "$QEMU_IMG" create -q -f qcow2 "$tgt" "$size"
            drop_caches
            if backup_run "$case" "$who" "$round" "$src" "$tgt" --timeout "$timeout" \
                "${opts[@]}"; then
                [ "$c" = compress ] && bench_output_size backup-compress "$who" "$round" "$tgt"
                if [ "$round" = 1 ]; then
                    bench_check "$case" "$who" "$tgt" || true
                    bench_compare "$case" "$who's backup" "$src" "$tgt" || true
                fi
            fi
            rm -f "$tgt"
            if [ "$(stamp)" != "$src_stamp" ]; then
                bench_note "$case" "$who changed the cached source $src; it is deleted at the end"
                src_stamp=$(stamp)
                : >"$BENCH_DIR/failed.stale.backup-src"
            fi
        done
        if want iops; then
            drop_caches
            backup_run iops-alone "$who" "$round" "$isrc" "$tgt" --fio alone \
                --fio-runtime "$runtime" --fio-iodepth "$iodepth" || true
            rm -f "$tgt"
            "$QEMU_IMG" create -q -f qcow2 "$tgt" "$size"
            drop_caches
            backup_run iops-backup "$who" "$round" "$isrc" "$tgt" --fio backup \
                --fio-runtime "$runtime" --fio-iodepth "$iodepth" --speed "$speed" || true
            rm -f "$tgt"
        fi
    done
done
if [ -f "$BENCH_DIR/failed.stale.backup-src" ]; then
    rm -f "$src" "$BENCH_DIR/failed.stale.backup-src"
fi

python3 "$BENCH_SRC/backup.py" section "$BENCH_RUNS" "$BENCH_DIR/backup-details.md" >/dev/null
bench_section "Backup details" "$BENCH_DIR/backup-details.md"
meta "load average at end" "$(cut -d' ' -f1-3 /proc/loadavg)"
meta "total time" "$((SECONDS - start)) s"

status=0
python3 "$BENCH_SRC/report.py" "$BENCH_RUNS" --out "$BENCH_OUT" || status=$?
echo "bench: results written to $BENCH_OUT" >&2
failed=0
for f in "$BENCH_DIR"/failed.*backup-* "$BENCH_DIR"/failed.*iops-*; do
    [ -e "$f" ] && failed=1
done
if [ "$failed" = 1 ]; then
    echo "bench: some runs or output checks failed (see Notes)" >&2
    exit 1
fi
[ "$status" = 0 ] || [ "$status" = 3 ] || exit 1
