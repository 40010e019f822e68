#!/usr/bin/env bash
# Case alloc-read: the alloc-write pattern (4 KiB reads, qd32, one per 64 KiB cluster) over
# an image whose clusters are all allocated. One image, written by qemu-img beforehand
# (untimed), is read by both tools; -t writeback and an untimed warm-up read by each tool
# mean both read from the page cache, so this measures the engine, not the disk. Argument
# none (case alloc-read-direct): -t none, O_DIRECT reads that go to the disk every time.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cache=${1:-writeback}
name=alloc-read
what="page cache warm"
if [ "$cache" != writeback ]; then
    name=alloc-read-direct
    what="-t $cache (O_DIRECT)"
fi
clusters=$(bench_size 20480 1024)
size=$((clusters * 64 * 1024))
count=$((clusters * 10))              # ten passes over the image
[ "$cache" = writeback ] || count=$clusters   # one pass: each read goes to the disk
opts=(-t "$cache" -d 32 -s 4k -S 64k -c "$count")
bench_case "$name" time vdisk qemu-img 1.0 \
    "4 KiB reads, qd32, one per 64 KiB cluster, allocated qcow2, $what" \
    "bench ${opts[*]}"

img="$BENCH_DIR/$name.qcow2"
rm -f "$img"
"$QEMU_IMG" create -q -f qcow2 "$img" "$size"
"$QEMU_IMG" bench -w -t writeback -d 32 -s 4k -S 64k -c "$clusters" --pattern=165 "$img" >/dev/null
bench_settle
for who in vdisk qemu-img; do
    "$(bench_tool "$who")" bench -t writeback -d 32 -s 4k -S 64k -c "$clusters" "$img" \
        >/dev/null 2>&1 || true
done

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk qemu-img); do
        # O_DIRECT reads must find nothing of the image cached; the warm case keeps it.
        [ "$cache" = writeback ] || bench_drop_caches
        bench_run "$name" "$who" "$round" "$(bench_tool "$who")" bench "${opts[@]}" "$img" \
            || true
    done
done
rm -f "$img"
