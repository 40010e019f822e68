#!/usr/bin/env bash
# Runs the vdisk benchmarks side by side with qemu-img and writes the results table
# (bench/results.md; quick runs go to $BENCH_DIR instead). Usage: bench/run.sh [CASE...]
# Cases: alloc-write alloc-read seq convert create compress codec snapshot nbd (the default set),
# create-full, compress-zlib, compress-zstd (one compression type only), alloc-write-direct
# and alloc-read-direct (the alloc cases with -t none: O_DIRECT, no page cache).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

all_cases=(alloc-write alloc-read seq convert create compress codec snapshot nbd create-full
    compress-zlib compress-zstd alloc-write-direct alloc-read-direct)
default_cases=(alloc-write alloc-read seq convert create compress codec snapshot nbd)

usage() {
    sed -n '2,5s/^# \{0,1\}//p' "$0"
    echo "Environment: VDISK=$VDISK QEMU_IMG=$QEMU_IMG BENCH_ROUNDS=$BENCH_ROUNDS"
    echo "  BENCH_QUICK=$BENCH_QUICK BENCH_DIR=$BENCH_DIR BENCH_STRICT=${BENCH_STRICT:-0}"
    echo "  BENCH_OUT (default bench/results.md, or \$BENCH_DIR/results-quick.md when quick)"
}

cases=()
for arg in "$@"; do
    case $arg in
        -h | --help) usage; exit 0 ;;
        --quick) BENCH_QUICK=1; BENCH_ROUNDS=${BENCH_ROUNDS_GIVEN:-1} ;;
        *)
            [[ " ${all_cases[*]} " == *" $arg "* ]] ||
                bench_die "unknown case '$arg' (${all_cases[*]})"
            cases+=("$arg") ;;
    esac
done
[ ${#cases[@]} -gt 0 ] || cases=("${default_cases[@]}")
export BENCH_QUICK BENCH_ROUNDS

# Only a full run of the default set replaces the committed table (and the copy in the
# README); quick and partial runs leave theirs in $BENCH_DIR.
readme=()
if [ "$BENCH_QUICK" = 1 ]; then
    : "${BENCH_OUT:=$BENCH_DIR/results-quick.md}"
elif [ "$#" -gt 0 ]; then
    : "${BENCH_OUT:=$BENCH_DIR/results.md}"
else
    : "${BENCH_OUT:=$BENCH_SRC/results.md}"
    [ "$BENCH_OUT" != "$BENCH_SRC/results.md" ] || readme=(--readme "$BENCH_SRC/README.md")
fi

command -v python3 >/dev/null || bench_die "python3 is needed (make deps)"
command -v "$QEMU_IMG" >/dev/null || bench_die "$QEMU_IMG not found (make deps installs qemu-utils)"
if ! command -v "$VDISK" >/dev/null; then
    bench_die "$VDISK not found: run 'make build' (or VDISK=qemu-img for a dry run)"
fi
VDISK=$(command -v "$VDISK")
standin=0
[ "$VDISK" != "$(command -v "$QEMU_IMG")" ] || standin=1

mkdir -p "$BENCH_DIR" "$BENCH_CACHE"
fstype=$(df -PT "$BENCH_DIR" | awk 'NR == 2 { print $2 }')
[ "$fstype" != tmpfs ] || bench_die "$BENCH_DIR is on tmpfs; set BENCH_DIR to a disk filesystem"
need_gib=$(bench_size 10 1)
avail_gib=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') / 1024 / 1024))
[ "$avail_gib" -ge "$need_gib" ] ||
    bench_die "$BENCH_DIR has ${avail_gib} GiB free; the benchmarks need ${need_gib} GiB"

rm -rf "$BENCH_DIR/logs" "$BENCH_DIR"/failed.* "$BENCH_RUNS"
# Run a copy, so that a rebuild in the middle of the run cannot change or remove it.
mkdir -p "$BENCH_DIR/bin"
cp "$VDISK" "$BENCH_DIR/bin/vdisk"
vdisk_src=$VDISK
VDISK=$BENCH_DIR/bin/vdisk
export VDISK
: >"$BENCH_RUNS"
bench_meta_contender vdisk "$vdisk_src" qemu-img
meta qemu-img "$("$QEMU_IMG" --version | head -1)"
bench_meta_machine
bench_meta_load

start=$SECONDS
failed=0
for c in "${cases[@]}"; do
    echo "bench: $c" >&2
    t0=$SECONDS
    case $c in
        seq) script=(seq.sh) ;;
        create) script=(create.sh meta) ;;
        create-full) script=(create.sh full) ;;
        compress-zlib | compress-zstd) script=(compress.sh "${c#compress-}") ;;
        alloc-write-direct | alloc-read-direct) script=("${c%-direct}.sh" none) ;;
        *) script=("$c.sh") ;;
    esac
    if ! bash "$BENCH_SRC/${script[0]}" "${script[@]:1}"; then
        bench_note "$c" "the case script failed (see the messages above)"
        failed=1
    fi
    echo "bench: $c took $((SECONDS - t0)) s" >&2
done
meta "load average at end" "$(cut -d' ' -f1-3 /proc/loadavg)"
meta "total time" "$((SECONDS - start)) s"
ls "$BENCH_DIR"/failed.* >/dev/null 2>&1 && failed=1

status=0
quick=()
[ "$BENCH_QUICK" = 1 ] && quick=(--quick)
python3 "$BENCH_SRC/report.py" "$BENCH_RUNS" --out "$BENCH_OUT" "${readme[@]}" "${quick[@]}" ||
    status=$?
echo "bench: results written to $BENCH_OUT" >&2
if [ "$failed" = 1 ]; then
    echo "bench: some runs or output checks failed (see Notes)" >&2
    exit 1
fi
if [ "$status" = 3 ] && [ "${BENCH_STRICT:-0}" = 1 ]; then
    echo "bench: a target was missed (BENCH_STRICT=1)" >&2
    exit 1
fi
[ "$status" = 0 ] || [ "$status" = 3 ] || exit 1
