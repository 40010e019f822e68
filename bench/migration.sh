#!/usr/bin/env bash
# Live disk migration between two hosts: vdiskd's migration beside qemu-storage-daemon's
# way (blockdev-mirror to the other host's NBD export), the two "hosts" being network
# namespaces joined by a veth pair capped by tbf (tests/interop/netns-pair.sh). Rounds
# interleaved, the page cache dropped before every timed run. Usage: bench/migration.sh
# (a case of its own, not part of run.sh's set; needs root). Details: bench/migration.py.
#   image   MIG_SIZE (4G) of real files: bench/mkfs-image.sh --cached (ext4 of /usr, ~70%
#           used, the rest zeros), converted to qcow2 (cached); every run starts from a fresh
#           copy of it and an empty qcow2 of the same size on the destination
#   ways    qemu-storage-daemon: blockdev-mirror sync=full copy-mode=write-blocking to an
#           nbd node on the destination's export, READY, the export deleted, complete;
#           vdiskd: migrate, multifd, compression zstd (channels 4 and 1), zlib and none
#           (channels 4), levels 1, zero-blocks, downtime-limit 300 ms; a way ending in
#           "ac" (zstd4ac) adds the auto-converge capability
#   loads   fio: 5,000 random 4 KiB writes a second (ioengine=nbd, iodepth 8, half
#           compressible, refilled) into the source's export during the run; idle: none
#   links   1gbit and 200mbit (tbf, both directions)
# Default set (about 14 min once vdiskd migrates; 6 min while it cannot): at 1gbit every
# way under both loads; at 200mbit QSD, zstd x4 and none x4 under fio. MIG_FULL=1: every
# way, load and link (about 25 min). Or choose: MIG_LINKS ("1gbit 200mbit"), MIG_LOADS
# ("fio idle"), MIG_WAYS ("qsd zstd4 zstd1 zlib4 none4"). Variables: MIG_SIZE (4G),
# BENCH_ROUNDS (1), MIG_TIMEOUT (600 s per run), VDISKD, QSD, BENCH_DIR. Writes
# bench/results-migration.md (other sizes or sets: $BENCH_DIR/results-migration.md).
set -euo pipefail

case ${1:-} in
    -h | --help) sed -n '2,23s/^# \{0,1\}//p' "$0"; exit 0 ;;
    "") ;;
    *) echo "bench: no arguments (see --help)" >&2; exit 2 ;;
esac

: "${BENCH_ROUNDS:=1}"
: "${BENCH_RUNS:=${BENCH_DIR:-/var/tmp/vdisk-bench}/runs-migration.tsv}"
. "$(dirname "$0")/lib.sh"
. "$REPO/tests/interop/netns-pair.sh"

QSD=${QSD:-qemu-storage-daemon}
: "${VDISKD:=$(dirname "$VDISK")/vdiskd}"
[ -x "$VDISKD" ] || [ ! -x "$REPO/build-me/vdiskd" ] || VDISKD=$REPO/build-me/vdiskd
size=$(numfmt --from=iec "${MIG_SIZE:-4G}") || bench_die "MIG_SIZE=$MIG_SIZE: not a size"
[ $((size % (1 << 20))) = 0 ] || bench_die "MIG_SIZE must be a multiple of 1 MiB"
timeout=${MIG_TIMEOUT:-600}
full=${MIG_FULL:-0}
default_set=0
if [ -z "${MIG_LINKS:-}${MIG_LOADS:-}${MIG_WAYS:-}" ]; then
    default_set=1
fi
links=${MIG_LINKS:-1gbit 200mbit}
loads=${MIG_LOADS:-fio idle}
ways=${MIG_WAYS:-qsd zstd4 zstd1 zlib4 none4}

# chosen LINK LOAD WAY: whether the set includes this run.
chosen() {
    [[ " $links " == *" $1 "* && " $loads " == *" $2 "* && " $ways " == *" $3 "* ]] ||
        return 1
    [ "$full" = 1 ] || [ "$default_set" = 0 ] || [ "$1" != 200mbit ] && return 0
    [ "$2" = fio ] && [[ " qsd zstd4 none4 " == *" $3 "* ]]
}

[ "$(id -u)" = 0 ] || bench_die "network namespaces and drop_caches need root"
command -v python3 >/dev/null || bench_die "python3 is needed (make deps)"
command -v "$QEMU_IMG" >/dev/null || bench_die "$QEMU_IMG not found (qemu-utils)"
command -v "$QSD" >/dev/null || bench_die "$QSD not found (qemu-system-common)"
command -v "$VDISKD" >/dev/null || bench_die "$VDISKD not found: build it (or set VDISKD)"
command -v tc >/dev/null || bench_die "tc not found (iproute2)"
VDISKD=$(command -v "$VDISKD")
QSD=$(command -v "$QSD")
standin=0
if ! { command -v fio >/dev/null && fio --enghelp=nbd >/dev/null 2>&1; }; then
    bench_die "fio with the nbd engine is needed"
fi

if [ "$size" = $((4 << 30)) ] && [ "$default_set" = 1 ] && [ "$full" = 0 ]; then
    : "${BENCH_OUT:=$BENCH_SRC/results-migration.md}"
else
    : "${BENCH_OUT:=$BENCH_DIR/results-migration.md}"
fi

mkdir -p "$BENCH_DIR" "$BENCH_CACHE" "$BENCH_DIR/logs" "$BENCH_DIR/bin"
fstype=$(df -PT "$BENCH_DIR" | awk 'NR == 2 { print $2 }')
[ "$fstype" != tmpfs ] || bench_die "$BENCH_DIR is on tmpfs; set BENCH_DIR to a disk filesystem"
need=$((3 * size))  # the master, the source's copy, the destination
avail=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') * 1024))
[ "$avail" -ge "$need" ] ||
    bench_die "$BENCH_DIR has $((avail >> 30)) GiB free; this needs $(((need >> 30) + 1)) GiB"

raw=$("$BENCH_SRC/mkfs-image.sh" --cached "$BENCH_CACHE" "$size")
master="$BENCH_CACHE/mig-$(basename "$raw" .raw).qcow2"
if [ ! -f "$master" ]; then
    echo "bench: converting $raw to $master (once; cached)" >&2
    "$QEMU_IMG" convert -f raw -O qcow2 "$raw" "$master.tmp"
    mv "$master.tmp" "$master"
fi

rm -f "$BENCH_RUNS" "$BENCH_DIR"/failed.mig-* "$BENCH_DIR"/logs/mig-*
src="$BENCH_DIR/mig-src.qcow2"
dst="$BENCH_DIR/mig-dst.qcow2"
bench_exit() {
    local rc=$?
    np_cleanup
    rm -f "$src" "$dst" "$BENCH_DIR"/mig-*.qmp "$BENCH_DIR"/mig-*.nbd "$BENCH_DIR"/mig-fio.json
    exit $rc
}
trap bench_exit EXIT
trap 'exit 130' INT TERM
np_up || bench_die "could not make the network namespaces"

# Run a copy, so that a rebuild in the middle of the run cannot change or remove it.
cp "$VDISKD" "$BENCH_DIR/bin/vdiskd-migration"
vdiskd_src=$VDISKD
VDISKD=$BENCH_DIR/bin/vdiskd-migration
: >"$BENCH_RUNS"
bench_meta_contender vdiskd "$vdiskd_src" qemu-storage-daemon
meta qemu-storage-daemon "$("$QSD" --version | head -1)"
meta fio "$(fio --version)"
bench_meta_machine
alloc=$("$QEMU_IMG" map --output=json "$master" |
    python3 -c 'import json, sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
meta image "$((size >> 20)) MiB qcow2 (64 KiB clusters) converted from bench/mkfs-image.sh's ext4 of /usr ($((alloc >> 20)) MiB allocated, the rest zeros and unallocated); a fresh copy for every run; the destination an empty qcow2 of the same size (qemu-img create); every node with the daemons' default cache; sync; echo 3 > drop_caches before every run"
meta link "a veth pair between two network namespaces (tests/interop/netns-pair.sh), tbf on both ends: rate 1gbit burst 1mb / rate 200mbit burst 256kb, latency 50ms"
meta "QSD way" "the destination exports its disk writable (--nbd-server 198.18.0.2:10809, --export); the source: blockdev-add driver=nbd to it, blockdev-mirror sync=full copy-mode=write-blocking, BLOCK_JOB_READY, block-export-del mode=hard of its own export (the guest stops), block-job-complete, BLOCK_JOB_COMPLETED"
meta "vdisk way" "migrate-set-capabilities events, multifd, zero-blocks; migrate-set-parameters multifd-channels, multifd-compression, multifd-zstd-level/zlib-level 1, max-bandwidth 0, downtime-limit 300 (both sides); destination --incoming defer + migrate-incoming tcp:198.18.0.2:4444; source migrate to it; query-migrate polled every 0.1 s"
meta load "fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=8 --rate_iops=5000 --buffer_compress_percentage=50 --refill_buffers --norandommap --time_based --continue_on_error=none into the source's export (unix socket) from 2 s before the migration; the end of the export ends it with an error (expected); idle: no writer"
set_desc="links $links, loads $loads, ways $ways"
[ "$full" = 1 ] || [ "$default_set" = 0 ] || set_desc="$set_desc (at 200mbit: fio only, qsd zstd4 none4)"
meta set "$set_desc"
bench_meta_load
start=$SECONDS

# One row of the results table per vdiskd way, link and load; QSD's run is the baseline.
for link in $links; do
    for load in $loads; do
        for way in $ways; do
            [ "$way" != qsd ] && chosen "$link" "$load" "$way" || continue
            base=${way%ac} ac=
            [ "$base" = "$way" ] || ac=" auto-converge"
            bench_case "mig-$link-$load-$way" time vdiskd qemu-storage-daemon - \
                "migration at $link, load $load: vdisk ${base%[0-9]} x${base##*[a-z]}$ac vs QSD mirror" \
                "bench/migration.py run --link $link --load $load (see the header)" "$size"
        done
    done
done

# mig_run LINK LOAD WAY ROUND: one run, unless this way already failed at this link and load.
mig_run() {
    local link=$1 load=$2 way=$3 round=$4 who=vdiskd bin=$VDISKD case also=() w
    local opts=()
    case=mig-$link-$load-$way
    if [ "$way" = qsd ]; then
        who=qemu-storage-daemon bin=$QSD
        for w in $ways; do
            [ "$w" != qsd ] && chosen "$link" "$load" "$w" && also+=(--also-case "mig-$link-$load-$w")
        done
    else
        # WAY: codec and channels, "ac" at the end for the auto-converge capability.
        local base=${way%ac}
        opts=(--compress "${base%[0-9]}" --channels "${base##*[a-z]}")
        [ "$base" = "$way" ] || opts+=(--auto-converge)
    fi
    bench_failed "$case" "$who" && return 1
    local log="$BENCH_DIR/logs/$case.$who.r$round.log"
    : >"$log"
    cp "$master" "$src"
    rm -f "$dst"
    "$QEMU_IMG" create -q -f qcow2 "$dst" "$size"
    if ! python3 "$BENCH_SRC/migration.py" run --who "$who" --runs "$BENCH_RUNS" \
        --case "$case" --round "$round" --log "$log" --daemon "$bin" --dir "$BENCH_DIR" \
        --src "$src" --dst "$dst" --size "$size" --np-id "$NP_ID" --link "$link" \
        --load "$load" --timeout "$timeout" "${opts[@]}" "${also[@]}"; then
        bench_mark_failed "$case" "$who" "$round"
        return 1
    fi
}

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for link in $links; do
        np_shape "$link"
        for load in $loads; do
            # QSD first in odd rounds, last in even ones.
            order=$ways
            [ $((round % 2)) = 1 ] || order=$(echo "$ways" | tr ' ' '\n' | tac | tr '\n' ' ')
            for way in $order; do
                chosen "$link" "$load" "$way" || continue
                mig_run "$link" "$load" "$way" "$round" || true
            done
        done
    done
done

python3 "$BENCH_SRC/migration.py" section "$BENCH_RUNS" "$BENCH_DIR/migration-details.md" \
    >/dev/null
bench_section "Migration details" "$BENCH_DIR/migration-details.md"
meta "load average at end" "$(cut -d' ' -f1-3 /proc/loadavg)"
meta "total time" "$((SECONDS - start)) s"

status=0
python3 "$BENCH_SRC/report.py" "$BENCH_RUNS" --out "$BENCH_OUT" >/dev/null || status=$?
echo "bench: results written to $BENCH_OUT" >&2
failed=0
for f in "$BENCH_DIR"/failed.mig-*; do
    [ -e "$f" ] && failed=1
done
if [ "$failed" = 1 ]; then
    echo "bench: some runs or checks failed (see Notes)" >&2
    exit 1
fi
[ "$status" = 0 ] || [ "$status" = 3 ] || exit 1
