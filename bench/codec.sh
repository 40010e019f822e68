#!/usr/bin/env bash
# Case codec: the library comparison behind vdisk's codecs (bench/codec-speed.c): single-
# thread compression speed and output size per library and level, and decompression speed,
# on the non-zero 64 KiB clusters of the compress cases' source image. No vdisk-vs-qemu-img
# row: the tables go into the results as their own section.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

size=$(bench_size $((2 << 30)) $((64 << 20)))
sample_mib=$(bench_size 64 8)
min_secs=$(bench_size 0.5 0.05)
src=$(bash "$BENCH_SRC/mkfs-image.sh" --cached "$BENCH_CACHE" "$size")

mkdir -p "$BENCH_DIR/bin"
bin="$BENCH_DIR/bin/codec-speed"
cc -O2 -o "$bin" "$BENCH_SRC/codec-speed.c" -lz -lzstd -lisal -ldeflate -lpthread ||
    bench_die "cannot build codec-speed.c (needs zlib1g-dev libzstd-dev libisal-dev libdeflate-dev)"
versions=$(dpkg-query -W -f '${Package} ${Version}, ' zlib1g libisal2 libdeflate0 libzstd1 \
    2>/dev/null || true)

table="$BENCH_DIR/codec.md"
{
    echo "\`bench/codec-speed.c -s $sample_mib -t $min_secs\`; packages: ${versions%, }."
    echo
    "$bin" -s "$sample_mib" -t "$min_secs" "$src"
} >"$table.tmp"
mv "$table.tmp" "$table"
bench_section "Codec speed (bench/codec-speed.c)" "$table"
cat "$table" >&2
