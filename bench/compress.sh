#!/usr/bin/env bash
# Cases compress-zlib, compress-zstd, decompress-zlib, decompress-zstd: `convert -c` of a
# 2 GiB ext4 image full of real files (bench/mkfs-image.sh) to qcow2 with each compression
# type at the default level, and `convert -O raw` back from a compressed image (the very
# file qemu-img wrote in the compress case, so both read the same bytes). Time, peak RSS and
# output size of each tool. Usage: bench/compress.sh [zlib] [zstd] (default: both).
# The source and the compressed image are read from the page cache; outputs go to the same
# filesystem; dirty pages are written back untimed between runs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

types=("$@")
[ ${#types[@]} -gt 0 ] || types=(zlib zstd)
size=$(bench_size $((2 << 30)) $((64 << 20)))
src=$(bash "$BENCH_SRC/mkfs-image.sh" --cached "$BENCH_CACHE" "$size")
bench_settle
files=$(head -1 "$src.txt")
mib=$((size >> 20))
# Targets per type: compression throughput at the default level, and decompression.
declare -A ctarget=([zlib]=4.0 [zstd]=2.0) dtarget=([zlib]=2.0 [zstd]=1.5)
bench_section "Compression source image" "$BENCH_DIR/compress-source.md"
{
    echo "bench/mkfs-image.sh: a $mib MiB ext4 filesystem made by mkfs.ext4 -d from files of"
    echo "this machine's /usr: $(basename "$src")"
    echo
    echo '```'
    cat "$src.txt"
    echo '```'
} >"$BENCH_DIR/compress-source.md"

for t in "${types[@]}"; do
    [ -n "${ctarget[$t]:-}" ] || bench_die "compress.sh: unknown compression type '$t'"
    copts=(-f raw -O qcow2 -c -o "compression_type=$t")
    dopts=(-f qcow2 -O raw)
    c=compress-$t
    d=decompress-$t
    bench_case "$c" time vdisk qemu-img "${ctarget[$t]}" \
        "convert -c, $t, of a $mib MiB ext4 image ($files)" "convert ${copts[*]}" "$size"
    bench_case "$c" rss vdisk qemu-img - "peak RSS of that convert (ratio = qemu-img / vdisk)" \
        "convert ${copts[*]}"
    bench_case "$c" size vdisk qemu-img 0.95 \
        "output size of that convert (ratio = qemu-img / vdisk)" "convert ${copts[*]}"
    bench_case "$d" time vdisk qemu-img "${dtarget[$t]}" \
        "convert -O raw of that image compressed with $t (qemu-img's output)" \
        "convert ${dopts[*]}" "$size"
    bench_case "$d" rss vdisk qemu-img - "peak RSS of that convert (ratio = qemu-img / vdisk)" \
        "convert ${dopts[*]}"

    # Compression: both read the source from the page cache.
    cat "$src" >/dev/null
    dsrc="$BENCH_DIR/$d.src.qcow2"
    rm -f "$dsrc"
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        for who in $(bench_order "$round" vdisk qemu-img); do
            out="$BENCH_DIR/$c.$who.qcow2"
            rm -f "$out"
            bench_settle
            if bench_run "$c" "$who" "$round" "$(bench_tool "$who")" convert "${copts[@]}" \
                "$src" "$out"; then
                bench_output_size "$c" "$who" "$round" "$out"
                if [ "$who" = vdisk ] && [ "$round" = 1 ]; then
                    bench_check "$c" vdisk "$out" || true
                    bench_compare "$c" "guest data" "$src" "$out" || true
                fi
                # qemu-img's output is the image both tools decompress below.
                [ "$who" != qemu-img ] || mv "$out" "$dsrc"
            fi
            # Gone before the next run: writing a large file while the last one still
            # exists costs the writer seconds more here (seen in the decompress case).
            rm -f "$out"
            bench_settle
        done
    done

    # Decompression of the same qemu-img-written image by both, from the page cache.
    if [ ! -f "$dsrc" ]; then
        "$QEMU_IMG" convert "${copts[@]}" "$src" "$dsrc"
        bench_settle
    fi
    cat "$dsrc" >/dev/null
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        for who in $(bench_order "$round" vdisk qemu-img); do
            out="$BENCH_DIR/$d.$who.raw"
            rm -f "$out"
            bench_settle
            if bench_run "$d" "$who" "$round" "$(bench_tool "$who")" convert "${dopts[@]}" \
                "$dsrc" "$out" && [ "$who" = vdisk ] && [ "$round" = 1 ]; then
                bench_compare "$d" "guest data" "$src" "$out" || true
            fi
            rm -f "$out"
            bench_settle
        done
    done
    rm -f "$dsrc"
done
