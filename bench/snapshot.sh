#!/usr/bin/env bash
# Cases snapshot-{create,apply,delete}-{0,50}: `snapshot -c`, `-a` and `-d` on a fully
# allocated 4 GiB qcow2, first with no other snapshot on it, then with 50 (a 64 KiB write
# between each two, so their trees differ). One image, written by qemu-img beforehand
# (untimed), serves both tools: each run creates a snapshot, applies it and deletes it again,
# which leaves the image with the same snapshots and contents for the next contender.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

size=$(bench_size $((4 << 30)) $((64 << 20)))
many=$(bench_size 50 5)
# One operation takes some 15 ms, mostly process start; more rounds steady the medians.
rounds=$(bench_size $((BENCH_ROUNDS * 4)) 1)
label=$(bench_size "4 GiB" "64 MiB")
img="$BENCH_DIR/snapshot.qcow2"
pattern=77
extra=0x33
# The writes between the existing snapshots, one per slot of this size.
stride=$(((size / (many + 1)) / 65536 * 65536))

for n in 0 "$many"; do
    bench_case "snapshot-create-$n" time vdisk qemu-img 1.0 \
        "create an internal snapshot, $label fully allocated qcow2, $n existing snapshots" \
        "snapshot -c NAME IMG"
    bench_case "snapshot-apply-$n" time vdisk qemu-img 1.0 \
        "apply (revert to) that snapshot, same image, $n other snapshots" "snapshot -a NAME IMG"
    bench_case "snapshot-delete-$n" time vdisk qemu-img 1.0 \
        "delete that snapshot, same image, $n other snapshots" "snapshot -d NAME IMG"
done

count_snapshots() {
    "$QEMU_IMG" snapshot -l "$img" 2>/dev/null | awk 'NR > 2' | wc -l
}

# After vdisk's first cycle (untimed): the image is consistent, holds the snapshots it held
# before, and reads back what was written.
verify() {
    local n=$1 case="snapshot-delete-$1" got
    bench_check "$case" vdisk "$img" || return 0
    got=$(count_snapshots)
    if [ "$got" != "$n" ]; then
        bench_note "$case" "after vdisk's create/apply/delete the image has $got snapshots, not $n"
        : >"$BENCH_DIR/failed.check.$case"
    fi
    local reads=(-c "read -P $pattern 0 64k" -c "read -P $pattern $((size - 65536)) 64k")
    if [ "$n" -gt 0 ]; then
        reads+=(-c "read -P $extra $stride 64k" -c "read -P $pattern $((stride + 65536)) 64k")
    fi
    if ! got=$("${QEMU_IO:-qemu-io}" -f qcow2 "${reads[@]}" "$img" 2>&1) ||
        grep -q -i -e "fail" -e "mismatch" <<<"$got"; then
        bench_note "$case" "contents after vdisk's cycle: $(head -2 <<<"$got" | tr '\n' ' ')"
        : >"$BENCH_DIR/failed.compare.$case"
    fi
}

cycle() {
    local n=$1 who=$2 round=$3 name="bench-$2-$3" tool
    tool=$(bench_tool "$who")
    bench_settle
    bench_run "snapshot-create-$n" "$who" "$round" "$tool" snapshot -c "$name" "$img" || true
    if [ "$round" = 1 ] && [ "$who" = vdisk ] && [ "$(count_snapshots)" != $((n + 1)) ]; then
        bench_note "snapshot-create-$n" "qemu-img does not list the snapshot vdisk created"
        : >"$BENCH_DIR/failed.check.snapshot-create-$n"
    fi
    bench_settle
    bench_run "snapshot-apply-$n" "$who" "$round" "$tool" snapshot -a "$name" "$img" || true
    bench_settle
    bench_run "snapshot-delete-$n" "$who" "$round" "$tool" snapshot -d "$name" "$img" || true
    bench_settle
}

rm -f "$img"
"$QEMU_IMG" create -q -f qcow2 "$img" "$size"
"$QEMU_IMG" bench -q -w -t none -d 8 -s 1M -c $((size >> 20)) --pattern=$pattern "$img" \
    >/dev/null
for n in 0 "$many"; do
    if [ "$n" -gt 0 ]; then
        for ((i = 1; i <= n; i++)); do
            "${QEMU_IO:-qemu-io}" -f qcow2 -c "write -P $extra $((i * stride)) 64k" "$img" >/dev/null
            "$QEMU_IMG" snapshot -c "existing-$i" "$img"
        done
    fi
    bench_settle
    for ((round = 1; round <= rounds; round++)); do
        for who in $(bench_order "$round" vdisk qemu-img); do
            cycle "$n" "$who" "$round"
            if [ "$round" = 1 ] && [ "$who" = vdisk ]; then
                verify "$n"
            fi
        done
    done
done
rm -f "$img"
