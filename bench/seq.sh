#!/usr/bin/env bash
# Cases seq-write and seq-read: 1 MiB sequential requests, qd8, with -t none (O_DIRECT) for
# every contender, so the page cache plays no part. vdisk on qcow2 is compared with a raw
# file on the same filesystem driven by `qemu-img bench -f raw` (the target), and with
# qemu-img on qcow2 (for reference). Writes go to fresh images; reads to images written
# beforehand (untimed).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mib=$(bench_size 2048 64)
size=$((mib * 1024 * 1024))
wopts=(-w -t none -d 8 -s 1M -c "$mib" --pattern=90)
ropts=(-t none -d 8 -s 1M -c $((mib * 2)))
bench_case seq-write time vdisk raw 0.95 \
    "1 MiB sequential writes, qd8, O_DIRECT, fresh qcow2 vs fresh raw file" "bench ${wopts[*]}"
bench_case seq-write time vdisk qemu-img - \
    "same, vdisk vs qemu-img both on qcow2 (reference)" "bench ${wopts[*]}"
bench_case seq-read time vdisk raw 0.95 \
    "1 MiB sequential reads, qd8, O_DIRECT, allocated qcow2 vs raw file" "bench ${ropts[*]}"
bench_case seq-read time vdisk qemu-img - \
    "same, vdisk vs qemu-img both on qcow2 (reference)" "bench ${ropts[*]}"

# fmt_of WHO, fmt_opts WHO: the image format a contender works on, and the -f it needs
# (only the raw baseline passes -f; vdisk and qemu-img probe the qcow2 alike).
fmt_of() { if [ "$1" = raw ]; then echo raw; else echo qcow2; fi; }
fmt_opts() { if [ "$1" = raw ]; then echo "-f raw"; fi; }

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk raw qemu-img); do
        img="$BENCH_DIR/seq-write.$who.$(fmt_of "$who")"
        rm -f "$img"
        "$QEMU_IMG" create -q -f "$(fmt_of "$who")" "$img" "$size"
        bench_settle
        # shellcheck disable=SC2046 # fmt_opts is empty or two words
        bench_run seq-write "$who" "$round" "$(bench_tool "$who")" bench $(fmt_opts "$who") \
            "${wopts[@]}" "$img" || true
        bench_settle
    done
    if [ "$round" = 1 ] && ! bench_failed seq-write vdisk; then
        bench_check seq-write vdisk "$BENCH_DIR/seq-write.vdisk.qcow2" || true
        bench_failed seq-write raw || bench_compare seq-write "guest data" \
            "$BENCH_DIR/seq-write.vdisk.qcow2" "$BENCH_DIR/seq-write.raw.raw" || true
    fi
done
rm -f "$BENCH_DIR"/seq-write.*

# The read images: written once by qemu-img; vdisk and qemu-img read the same qcow2.
qcow="$BENCH_DIR/seq-read.qcow2"
raw="$BENCH_DIR/seq-read.raw"
rm -f "$qcow" "$raw"
"$QEMU_IMG" create -q -f qcow2 "$qcow" "$size"
"$QEMU_IMG" create -q -f raw "$raw" "$size"
"$QEMU_IMG" bench "${wopts[@]}" "$qcow" >/dev/null
"$QEMU_IMG" bench -f raw "${wopts[@]}" "$raw" >/dev/null
bench_settle
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk raw qemu-img); do
        img=$qcow
        [ "$who" = raw ] && img=$raw
        # shellcheck disable=SC2046
        bench_run seq-read "$who" "$round" "$(bench_tool "$who")" bench $(fmt_opts "$who") \
            "${ropts[@]}" "$img" || true
    done
done
rm -f "$qcow" "$raw"
