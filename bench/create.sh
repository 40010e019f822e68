#!/usr/bin/env bash
# Cases create-meta (1 TiB, preallocation=metadata: every L2 table and refcount block
# written) and, when asked for, create-full (8 GiB, preallocation=full: data written too).
# Run with `bench/run.sh create` (create-meta) or `bench/run.sh create-full`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

which=${1:-meta}
if [ "$which" = meta ]; then
    case=create-meta
    size=$(bench_size 1T 16G)
    opts=(-f qcow2 -o preallocation=metadata)
    bench_case "$case" time vdisk qemu-img 5.0 \
        "create a $size qcow2 with preallocation=metadata" "create ${opts[*]} IMG $size"
else
    case=create-full
    size=$(bench_size 8G 256M)
    opts=(-f qcow2 -o preallocation=full)
    bench_case "$case" time vdisk qemu-img - \
        "create a $size qcow2 with preallocation=full" "create ${opts[*]} IMG $size"
fi

virtual_size() {
    "$QEMU_IMG" info --output=json "$1" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])' 2>/dev/null ||
        echo "unreadable"
}

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk qemu-img); do
        img="$BENCH_DIR/$case.$who.qcow2"
        rm -f "$img"
        bench_settle
        bench_run "$case" "$who" "$round" "$(bench_tool "$who")" create "${opts[@]}" \
            "$img" "$size" || true
        bench_settle
    done
    if [ "$round" = 1 ] && ! bench_failed "$case" vdisk; then
        bench_check "$case" vdisk "$BENCH_DIR/$case.vdisk.qcow2" || true
        # (No compare: it would read the whole preallocated disk.)
        want=$(virtual_size "$BENCH_DIR/$case.qemu-img.qcow2")
        got=$(virtual_size "$BENCH_DIR/$case.vdisk.qcow2")
        [ "$want" = "$got" ] || bench_note "$case" "virtual size: vdisk $got, qemu-img $want"
    fi
    rm -f "$BENCH_DIR/$case".*.qcow2
done
