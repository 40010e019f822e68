#!/usr/bin/env bash
# The mirror job: vdiskd beside qemu-storage-daemon, each daemon in turn on fresh targets.
# Usage: bench/mirror.sh [--quick]   (a case of its own, not part of run.sh's set)
#   mirror-64k / mirror-1m  blockdev-mirror sync=full, granularity 64 KiB / 1 MiB, of a fully
#              allocated 4 GiB qcow2 (random data, cached) into an empty qcow2 made by
#              qemu-img, both file nodes cache.direct=on: time from the command to
#              BLOCK_JOB_READY; then job-complete, BLOCK_JOB_COMPLETED, quit
#   mirror-writer  the same (64 KiB) of a copy of that image that the daemon exports over NBD
#              and fio writes into (4 KiB random writes at 20,000 IOPS) from before the
#              mirror starts until READY or the timeout: whether READY comes, how soon, and
#              the IOPS fio got
# Writes bench/results-mirror.md (quick or resized runs: $BENCH_DIR/results-mirror*.md).
set -euo pipefail

for arg in "$@"; do
    case $arg in
        -h | --help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
        --quick) BENCH_QUICK=1 ;;
        *) echo "bench: unknown argument '$arg' (--quick)" >&2; exit 2 ;;
    esac
done
# Three rounds by default (one when quick), and records of our own, so that a run of this
# case never mixes with run.sh's runs.tsv.
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    : "${BENCH_ROUNDS:=1}"
else
    : "${BENCH_ROUNDS:=3}"
fi
: "${BENCH_RUNS:=${BENCH_DIR:-/var/tmp/vdisk-bench}/runs-mirror.tsv}"
. "$(dirname "$0")/lib.sh"

QSD=${QSD:-qemu-storage-daemon}
: "${VDISKD:=$(dirname "$VDISK")/vdiskd}"
if [ -n "${MIRROR_SIZE:-}" ]; then
    size=$(numfmt --from=iec "$MIRROR_SIZE") || bench_die "MIRROR_SIZE=$MIRROR_SIZE: not a size"
else
    size=$(bench_size $((4 << 30)) $((256 << 20)))
fi
[ $((size % (1 << 20))) = 0 ] || bench_die "the size must be a multiple of 1 MiB"
timeout=${MIRROR_TIMEOUT:-600}
wtimeout=${MIRROR_WRITER_TIMEOUT:-$(bench_size 300 20)}
wiops=${MIRROR_WRITER_IOPS:-20000}
wgran=${MIRROR_WRITER_GRANULARITY:-65536}

command -v python3 >/dev/null || bench_die "python3 is needed (make deps)"
command -v "$QEMU_IMG" >/dev/null || bench_die "$QEMU_IMG not found (qemu-utils)"
command -v "$QSD" >/dev/null || bench_die "$QSD not found (qemu-system-common)"
command -v "$VDISKD" >/dev/null || bench_die "$VDISKD not found: run 'make build' (or set VDISKD)"
VDISKD=$(command -v "$VDISKD")
standin=0
[ "$VDISKD" != "$(command -v "$QSD")" ] || standin=1
have_fio=1
command -v fio >/dev/null && fio --enghelp=nbd >/dev/null 2>&1 || have_fio=0

if [ "$BENCH_QUICK" = 1 ]; then
    : "${BENCH_OUT:=$BENCH_DIR/results-mirror-quick.md}"
elif [ -n "${MIRROR_SIZE:-}" ]; then
    : "${BENCH_OUT:=$BENCH_DIR/results-mirror.md}"
else
    : "${BENCH_OUT:=$BENCH_SRC/results-mirror.md}"
fi

mkdir -p "$BENCH_DIR" "$BENCH_CACHE" "$BENCH_DIR/logs" "$BENCH_DIR/bin"
fstype=$(df -PT "$BENCH_DIR" | awk 'NR == 2 { print $2 }')
[ "$fstype" != tmpfs ] || bench_die "$BENCH_DIR is on tmpfs; set BENCH_DIR to a disk filesystem"
src="$BENCH_CACHE/mirror-src-$size.qcow2"
# The cached source, a copy of it for the writer case and one target at a time.
need=$((2 * size + (1 << 30)))
[ -f "$src" ] || need=$((need + 2 * size))
avail=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') * 1024))
[ "$avail" -ge "$need" ] ||
    bench_die "$BENCH_DIR has $((avail >> 30)) GiB free; this needs $(((need >> 30) + 1)) GiB"

rm -f "$BENCH_RUNS" "$BENCH_DIR"/failed.*mirror-* "$BENCH_DIR"/timeout.mirror-* \
    "$BENCH_DIR"/logs/mirror-*
# Run a copy, so that a rebuild in the middle of the run cannot change or remove it.
cp "$VDISKD" "$BENCH_DIR/bin/vdiskd"
vdiskd_src=$VDISKD
VDISKD=$BENCH_DIR/bin/vdiskd
: >"$BENCH_RUNS"
bench_meta_contender vdiskd "$vdiskd_src" qemu-storage-daemon
meta qemu-storage-daemon "$("$QSD" --version | head -1)"
[ $have_fio = 0 ] || meta fio "$(fio --version)"
bench_meta_machine
meta images "$((size >> 20)) MiB qcow2 (64 KiB clusters); source fully allocated with random data; target empty, made by qemu-img create; both opened as file (cache.direct=on) + qcow2 nodes"
meta "job end" "job-complete, then BLOCK_JOB_COMPLETED awaited (the pivot), then quit"
bench_meta_load
start=$SECONDS

mb=$((size >> 20))
mirror_cmd() {
    echo "blockdev-mirror {job-id: m1, device: src, target: tgt, sync: full, granularity: $1}; timed to BLOCK_JOB_READY${2:-}"
}
bench_case mirror-64k time vdiskd qemu-storage-daemon - \
    "blockdev-mirror sync=full, granularity 64 KiB, of a $mb MiB allocated qcow2 into an empty qcow2, O_DIRECT: time to BLOCK_JOB_READY" \
    "$(mirror_cmd 65536)" "$size"
bench_case mirror-1m time vdiskd qemu-storage-daemon - \
    "the same with granularity 1 MiB" "$(mirror_cmd 1048576)" "$size"
if [ $have_fio = 1 ]; then
    bench_case mirror-writer time vdiskd qemu-storage-daemon - \
        "the same (granularity $((wgran >> 10)) KiB) while fio writes 4 KiB random at $wiops IOPS into the source over NBD: time to READY (timeout $wtimeout s)" \
        "$(mirror_cmd "$wgran" "; meanwhile fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=32 --rate_iops=$wiops into the source's export")" \
        "$size"
    bench_case mirror-writer-active time vdiskd qemu-storage-daemon - \
        "the same with copy-mode write-blocking (writes go to both images before they complete): time to READY" \
        "$(mirror_cmd "$wgran" ", copy-mode: write-blocking; meanwhile the same fio")" \
        "$size"
else
    bench_note mirror-writer "fio with the nbd engine is not installed; mirror-writer skipped"
fi

if [ ! -f "$src" ]; then
    echo "bench: generating $src (once; cached)" >&2
    head -c "$size" /dev/urandom >"$src.raw"
    "$QEMU_IMG" convert -f raw -O qcow2 "$src.raw" "$src.tmp"
    rm -f "$src.raw"
    mv "$src.tmp" "$src"
fi

# Every run starts with the page cache emptied (as root), as the brief for this case asks:
# sync, then drop clean pages, dentries and inodes.
mirror_drop_caches() {
    bench_settle
    if [ -w /proc/sys/vm/drop_caches ]; then
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    fi
}

# mirror_run CASE WHO ROUND SOURCE TARGET GRANULARITY [mirror.py options]: one timed run,
# unless WHO already failed (or timed out) in CASE.
mirror_run() {
    local case=$1 who=$2 round=$3 s=$4 t=$5 g=$6
    shift 6
    bench_failed "$case" "$who" && return 1
    local log="$BENCH_DIR/logs/$case.$who.r$round.log" bin=$QSD rc=0
    [ "$who" = vdiskd ] && bin=$VDISKD
    : >"$log"
    python3 "$BENCH_SRC/mirror.py" run --runs "$BENCH_RUNS" --case "$case" --who "$who" \
        --round "$round" --log "$log" --daemon "$bin" --dir "$BENCH_DIR" --src "$s" \
        --tgt "$t" --size "$size" --granularity "$g" "$@" || rc=$?
    case $rc in
        0) return 0 ;;
        3)
            # Not READY in time under the writer: an outcome, not a failure. Later rounds
            # would only wait as long again.
            : >"$BENCH_DIR/failed.$case.$who"
            : >"$BENCH_DIR/timeout.$case.$who"
            bench_note "$case" "$who, round $round: $(tail -1 "$log" | sed 's/^mirror: //'); later rounds skipped (log: $log)"
            return 1 ;;
        *) bench_mark_failed "$case" "$who" "$round"; return 1 ;;
    esac
}

# Round 1 of each case and daemon: the target must be a clean image with the source's
# contents (untimed).
mirror_checks() {
    local case=$1 who=$2 s=$3 t=$4
    bench_check "$case" "$who" "$t" || true
    bench_compare "$case" "$who's mirror" "$s" "$t" || true
}

stamp() { stat -c '%s %y' "$src"; }
src_stamp=$(stamp)
tgt="$BENCH_DIR/mirror-tgt.qcow2"
wsrc="$BENCH_DIR/mirror-writer-src.qcow2"
trap 'rm -f "$tgt" "$wsrc" "$BENCH_DIR/mirror.qmp" "$BENCH_DIR/mirror.nbd" "$BENCH_DIR/mirror-fio.json"' EXIT

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdiskd qemu-storage-daemon); do
        for g in 64k 1m; do
            case=mirror-$g
            bench_failed "$case" "$who" && continue
            rm -f "$tgt"
            "$QEMU_IMG" create -q -f qcow2 "$tgt" "$size"
            mirror_drop_caches
            if mirror_run "$case" "$who" "$round" "$src" "$tgt" "$(numfmt --from=iec "${g^^}")" \
                --timeout "$timeout" && [ "$round" = 1 ]; then
                mirror_checks "$case" "$who" "$src" "$tgt"
            fi
            rm -f "$tgt"
            if [ "$(stamp)" != "$src_stamp" ]; then
                bench_note "$case" "$who changed the cached source $src; it is deleted at the end (made anew next time)"
                src_stamp=$(stamp)
                : >"$BENCH_DIR/failed.stale.mirror-src"
            fi
        done

        for mode in background write-blocking; do
            case=mirror-writer
            [ "$mode" = background ] || case=mirror-writer-active
            if [ $have_fio = 1 ] && ! bench_failed "$case" "$who"; then
                cp "$src" "$wsrc"
                rm -f "$tgt"
                "$QEMU_IMG" create -q -f qcow2 "$tgt" "$size"
                mirror_drop_caches
                if mirror_run "$case" "$who" "$round" "$wsrc" "$tgt" "$wgran" \
                    --timeout "$wtimeout" --writer --fio-rate "$wiops" --copy-mode "$mode" &&
                    [ "$round" = 1 ]; then
                    # fio stopped before job-complete, so the pivot left both images equal.
                    mirror_checks "$case" "$who" "$wsrc" "$tgt"
                fi
                rm -f "$tgt" "$wsrc"
            fi
        done
    done
done
if [ -f "$BENCH_DIR/failed.stale.mirror-src" ]; then
    rm -f "$src" "$BENCH_DIR/failed.stale.mirror-src"
fi

# Say it up front (right after the vdiskd line) when vdiskd has no mirror job at all.
if grep -qs 'blockdev-mirror failed: CommandNotFound' "$BENCH_DIR"/logs/mirror-*.vdiskd.r1.log; then
    awk -v line="$(printf 'meta\t%s\t%s' "**vdiskd has no blockdev-mirror**" \
        "CommandNotFound, so every vdiskd run failed; only qemu-storage-daemon's numbers below")" \
        '{ print } /^meta\tvdiskd\t/ { print line }' "$BENCH_RUNS" >"$BENCH_RUNS.tmp"
    mv "$BENCH_RUNS.tmp" "$BENCH_RUNS"
fi
python3 "$BENCH_SRC/mirror.py" section "$BENCH_RUNS" "$BENCH_DIR/mirror-details.md"
bench_section "Mirror details" "$BENCH_DIR/mirror-details.md"
meta "load average at end" "$(cut -d' ' -f1-3 /proc/loadavg)"
meta "total time" "$((SECONDS - start)) s"

quick=()
[ "$BENCH_QUICK" = 1 ] && quick=(--quick)
status=0
python3 "$BENCH_SRC/report.py" "$BENCH_RUNS" --out "$BENCH_OUT" "${quick[@]}" || status=$?
echo "bench: results written to $BENCH_OUT" >&2
# Exit 1 when a run failed (an error, not a timeout under the writer) or a check failed.
failed=0
for f in "$BENCH_DIR"/failed.*mirror-*; do
    [ -e "$f" ] || continue
    [ -e "$BENCH_DIR/timeout.${f#"$BENCH_DIR"/failed.}" ] || failed=1
done
if [ "$failed" = 1 ]; then
    echo "bench: some runs or output checks failed (see Notes)" >&2
    exit 1
fi
[ "$status" = 0 ] || [ "$status" = 3 ] || exit 1
