#!/usr/bin/env bash
# Case alloc-write: 4 KiB writes at queue depth 32, one per 64 KiB cluster, into a fresh
# qcow2, so that every request allocates a cluster. `bench` with the same command line on
# both tools; round 1's two images must then hold the same guest data. Argument: the cache
# mode, writeback (default: through the page cache) or none (O_DIRECT: case
# alloc-write-direct).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cache=${1:-writeback}
name=alloc-write
[ "$cache" = writeback ] || name=alloc-write-direct
count=$(bench_size 20480 1024)        # x 64 KiB = 1.25 GiB of guest space (quick: 64 MiB)
size=$((count * 64 * 1024))
opts=(-w -t "$cache" -d 32 -s 4k -S 64k -c "$count" --pattern=165)
bench_case "$name" time vdisk qemu-img 1.0 \
    "4 KiB writes, qd32, one per 64 KiB cluster, fresh qcow2 (every write allocates), -t $cache" \
    "bench ${opts[*]}"

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk qemu-img); do
        img="$BENCH_DIR/$name.$who.qcow2"
        rm -f "$img"
        "$QEMU_IMG" create -q -f qcow2 "$img" "$size"
        bench_drop_caches   # the same free memory, so the same dirty-page limits, every run
        bench_run "$name" "$who" "$round" "$(bench_tool "$who")" bench "${opts[@]}" "$img" \
            || true
        bench_settle
    done
    if [ "$round" = 1 ] && ! bench_failed "$name" vdisk; then
        bench_check "$name" vdisk "$BENCH_DIR/$name.vdisk.qcow2" || true
        bench_failed "$name" qemu-img || bench_compare "$name" "guest data" \
            "$BENCH_DIR/$name.vdisk.qcow2" "$BENCH_DIR/$name.qemu-img.qcow2" || true
    fi
done
rm -f "$BENCH_DIR/$name".*.qcow2
