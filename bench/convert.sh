#!/usr/bin/env bash
# Case convert: `convert -f raw -O qcow2` of a 2 GiB realistic raw image (bench/mkimage.py:
# 40% random data, 20% text-like, 40% zeros and holes), output on the same filesystem.
# Both tools run with their defaults (qemu-img's output cache mode for convert is "unsafe":
# no final flush); dirty pages are written back untimed between runs. Also peak RSS.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

size=$(bench_size $((2 << 30)) $((64 << 20)))
seed=20240601
mkdir -p "$BENCH_CACHE"
version=$(python3 "$BENCH_SRC/mkimage.py" --version)
src="$BENCH_CACHE/realistic-v$version-$seed-$size.raw"
if [ ! -f "$src" ]; then
    # Images from older generator versions are never used again.
    find "$BENCH_CACHE" -maxdepth 1 -name 'realistic-v*.raw' ! -name "realistic-v$version-*" \
        -delete
    echo "bench: generating $src (once; cached)" >&2
    python3 "$BENCH_SRC/mkimage.py" --seed "$seed" "$src" "$size" >&2
    bench_settle
fi
opts=(-f raw -O qcow2)
bench_case convert time vdisk qemu-img 1.0 \
    "convert of a $((size >> 20)) MiB realistic raw image to qcow2" "convert ${opts[*]}"
bench_case convert rss vdisk qemu-img 1.0 \
    "peak RSS of that convert (ratio = qemu-img / vdisk)" "convert ${opts[*]}"

# Both tools read the source from the page cache.
cat "$src" >/dev/null
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk qemu-img); do
        out="$BENCH_DIR/convert.$who.qcow2"
        rm -f "$out"
        bench_settle
        bench_run convert "$who" "$round" "$(bench_tool "$who")" convert "${opts[@]}" \
            "$src" "$out" || true
        if [ "$round" = 1 ] && [ "$who" = vdisk ] && ! bench_failed convert vdisk; then
            bench_check convert vdisk "$out" || true
            bench_compare convert "guest data" "$src" "$out" || true
        fi
        # Delete each output at once: writing while the other tool's 2 GiB output still
        # exists costs the second writer extra system time on this VM.
        rm -f "$out"
        bench_settle
    done
done
