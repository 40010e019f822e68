#!/usr/bin/env bash
# Active commit: vdiskd beside qemu-storage-daemon in one run. A 4 GiB qcow2 base (fully
# written) under an overlay holding 1 GiB of random data (COMMIT_SIZE / COMMIT_DATA change
# them); each round, for each daemon on fresh copies, the page cache is dropped, then
# block-commit of the overlay into the base is timed to BLOCK_JOB_READY (bench/commit.py),
# then job-complete. Prints each time and the ratio of the medians (qsd / vdiskd).
# Usage: bench/commit.sh [ROUNDS]  (needs root for drop_caches; BENCH_DIR: a disk file system)
set -euo pipefail
rounds=${1:-3}
dir=${BENCH_DIR:-/var/tmp/vdisk-bench}/commit
here=$(cd "$(dirname "$0")" && pwd)
VDISKD=${VDISKD:-$here/../build-me/vdiskd}
QSD=${QSD:-qemu-storage-daemon}
size=${COMMIT_SIZE:-4G}
data=${COMMIT_DATA:-1024}     # MiB of random data in the overlay
mkdir -p "$dir"
if [ ! -f "$dir/ov0.qcow2" ]; then
    trap 'rm -f "$dir/base0.qcow2" "$dir/ov0.qcow2"' ERR
    qemu-img create -q -f qcow2 "$dir/base0.qcow2" "$size"
    # qemu-io takes requests under 2 GiB: the base is written 1 GiB at a time.
    bytes=$(numfmt --from=iec "$size")
    cmds=()
    for ((o = 0; o < bytes; o += 1 << 30)); do
        cmds+=(-c "write -P 0x5a $o $(((bytes - o) < (1 << 30) ? bytes - o : 1 << 30))")
    done
    qemu-io -f qcow2 "${cmds[@]}" "$dir/base0.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b "$dir/base0.qcow2" -F qcow2 "$dir/ov0.qcow2"
    head -c "$((data << 20))" /dev/urandom >"$dir/data.raw"
    # The random data spread over the disk: 1 MiB every 4 MiB.
    # The random data spread over the disk, 1 MiB every 4 MiB, each piece from a file of
    # its own (qemu-io fills a write from a pattern file).
    mkdir -p "$dir/pieces"
    split -b 1M -d -a 5 "$dir/data.raw" "$dir/pieces/p"
    cmds=()
    for ((i = 0; i < data; i++)); do
        cmds+=(-c "write -s $dir/pieces/p$(printf %05d "$i") $((i * 4))M 1M")
    done
    qemu-io -f qcow2 "${cmds[@]}" "$dir/ov0.qcow2" >/dev/null
    rm -rf "$dir/pieces"
    rm -f "$dir/data.raw"
    trap - ERR
fi
declare -A times
for ((r = 1; r <= rounds; r++)); do
    for who in vdiskd qsd; do
        cp "$dir/base0.qcow2" "$dir/base.qcow2"
        cp "$dir/ov0.qcow2" "$dir/ov.qcow2"
        qemu-img rebase -u -q -b "$dir/base.qcow2" -F qcow2 "$dir/ov.qcow2"
        sync
        [ -w /proc/sys/vm/drop_caches ] && echo 3 >/proc/sys/vm/drop_caches
        bin=$VDISKD
        [ "$who" = qsd ] && bin=$QSD
        t=$(python3 "$here/commit.py" "$bin" "$dir/base.qcow2" "$dir/ov.qcow2" "$dir")
        echo "round $r $who: $t s"
        times[$who]+="$t "
    done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
v=$(echo "${times[vdiskd]}" | median)
q=$(echo "${times[qsd]}" | median)
echo "active commit of $data MiB over a $size base, time to READY: vdiskd $v s, qemu-storage-daemon $q s, ratio $(awk -v a="$q" -v b="$v" 'BEGIN { printf "%.2f", a / b }')x"
rm -f "$dir/base.qcow2" "$dir/ov.qcow2"
