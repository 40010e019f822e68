#!/usr/bin/env bash
# Cases seq-write and seq-read: 1 MiB sequential requests, qd8, with -t none (O_DIRECT) for
# every contender, so the page cache plays no part. vdisk on qcow2 is compared with a raw
# file on the same filesystem driven by `qemu-img bench -f raw` (the target), and with
# qemu-img on qcow2 (for reference). Writes go to fresh images; reads to images written
# beforehand (untimed), and each read run follows an untimed read of its file. The read
# target's raw contender ("raw-same") reads the qcow2 file's own data blocks as raw: a
# separate raw file lies elsewhere on the disk, and on this VM's disk that placement alone
# moved reads by 5-25% from run to run, for vdisk and qemu-img alike. The separate raw file
# stays as a reference row.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mib=$(bench_size 2048 64)
size=$((mib * 1024 * 1024))
wopts=(-w -t none -d 8 -s 1M -c "$mib" --pattern=90)
# One pass over the image: the raw-same reads must not wrap past the end of the qcow2 file.
ropts=(-t none -d 8 -s 1M -c "$mib")
bench_case seq-write time vdisk raw 0.95 \
    "1 MiB sequential writes, qd8, O_DIRECT, fresh qcow2 vs fresh raw file" "bench ${wopts[*]}"
bench_case seq-write time vdisk qemu-img - \
    "same, vdisk vs qemu-img both on qcow2 (reference)" "bench ${wopts[*]}"
bench_case seq-read time vdisk raw-same 0.95 \
    "1 MiB sequential reads, qd8, O_DIRECT, allocated qcow2 vs its own data blocks read as raw" \
    "bench ${ropts[*]}"
bench_case seq-read time vdisk raw - \
    "same, vs a separate raw file written alike (reference: its blocks lie elsewhere)" \
    "bench ${ropts[*]}"
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
# Where the guest's first byte lies in the qcow2 file: the raw-same reads start there.
data_off=$("$QEMU_IMG" map --output=json "$qcow" | python3 -c '
import json, sys
print(next(e["offset"] for e in json.load(sys.stdin) if e["data"]))')
bench_settle
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk raw raw-same qemu-img); do
        case $who in
        raw) args=(-f raw "${ropts[@]}" "$raw") ;;
        raw-same) args=(-f raw "${ropts[@]}" -o "$data_off" "$qcow") ;;
        *) args=("${ropts[@]}" "$qcow") ;;
        esac
        # Untimed pass over the file first: the VM host caches the disk, so whoever read
        # these blocks last would otherwise run faster (measured: the first reader of a
        # round took up to 1.5x as long as a second reader of the same blocks).
        dd if="${args[-1]}" of=/dev/null bs=1M iflag=direct status=none
        bench_run seq-read "$who" "$round" "$(bench_tool "$who")" bench "${args[@]}" || true
    done
done
rm -f "$qcow" "$raw"
