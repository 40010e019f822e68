#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz-*.c), then for each target replays its seeds
# and its regression inputs (tests/fuzz/regress-<target>/: every input that ever crashed
# it) once, and fuzzes it briefly: FUZZ_TIME seconds for the image opener (default 20),
# FUZZ_TARGET_TIME seconds for each other target (default 5), under 2 minutes in all. One
# PASS/FAIL line per target, each followed by its stat::number_of_executed_units.
# Seeds: tests/fuzz/seeds-<target>/ plus, for the qcow2 targets, images made at run time
# (tests/fuzz/make-seeds.py: qemu-img images and the corrupt-image corpus).
#
#   FUZZ_ONLY="qcow2-header snapshot-table"   only these targets
#   FUZZ_RUNS=10000000                        stop each target after this many executions
#                                             (or at its time limit, whichever comes first)
#   FUZZ_BUILD=/tmp/dir                       build directory (default build-fuzz/)
#   FUZZ_ARTIFACTS=/tmp/dir                   where crashing inputs go (default
#                                             $FUZZ_BUILD/artifacts/, named in the FAIL line)
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool clang

open_time=${FUZZ_TIME:-20}
target_time=${FUZZ_TARGET_TIME:-5}
build=${FUZZ_BUILD:-$VD_REPO/build-fuzz}
artifacts=${FUZZ_ARTIFACTS:-$build/artifacts}
unset ASAN_OPTIONS UBSAN_OPTIONS  # libFuzzer sets its own; keep leak detection on
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export FUZZ_BUILD=$build

# target, -max_len, fuzzing seconds
targets=(
    "qcow2-open 1048576 $open_time"
    "qcow2-read 65536 $target_time"
    "qcow2-header 65536 $target_time"
    "snapshot-table 65536 $target_time"
    "decompress-zlib 262144 $target_time"
    "decompress-zstd 262144 $target_time"
    "nbd 65536 $target_time"
    "nbd-client 65536 $target_time"
    "qmp 65536 $target_time"
    "blkdebug-config 4096 $target_time"
    "json 65536 $target_time"
    "nbd-uri 4096 $target_time"
    "rbd-filename 4096 $target_time"
    "migration-stream 65536 $target_time"
    "migration-recv 65536 $target_time"
)

selected() {
    [ -z "${FUZZ_ONLY:-}" ] && return 0
    case " $FUZZ_ONLY " in *" $1 "*) return 0 ;; esac
    return 1
}

if bash "$VD_TESTS/fuzz/build.sh" >build.out 2>&1; then
    pass fuzz/build
else
    fail fuzz/build "building the fuzz targets failed" build.out
    for t in "${targets[@]}"; do
        # shellcheck disable=SC2086
        set -- $t
        selected "$1" && fail "fuzz/$1" "not run: build failed"
    done
    vd_finish
fi

# Seeds made from images; without them the committed seeds still run.
if "$PYTHON" "$VD_TESTS/fuzz/make-seeds.py" made >make-seeds.out 2>&1; then
    pass fuzz/make-seeds
else
    fail fuzz/make-seeds "tests/fuzz/make-seeds.py failed" make-seeds.out
fi

mkdir -p "$artifacts"
for t in "${targets[@]}"; do
    # shellcheck disable=SC2086
    set -- $t
    name=$1 max_len=$2 secs=$3
    selected "$name" || continue
    fuzzer=$(grep "/fuzz-$name\$" build.out | tail -n 1)
    if [ -z "$fuzzer" ] || [ ! -x "$fuzzer" ]; then
        fail "fuzz/$name" "the build made no fuzz-$name"
        continue
    fi
    inputs=()
    for d in "$VD_TESTS/fuzz/regress-$name" "$VD_TESTS/fuzz/seeds-$name" "made/$name"; do
        [ -d "$d" ] && inputs+=("$d")
    done
    opts=(-rss_limit_mb=2048 -timeout=10 -max_len="$max_len" "-artifact_prefix=$artifacts/$name-")
    mkdir "work-$name"
    if ! timeout 600 "$fuzzer" "${opts[@]}" -runs=0 "${inputs[@]}" >"replay-$name.out" 2>&1; then
        crash=$(grep -o "Test unit written to [^ ]*" "replay-$name.out" | tail -n 1)
        tail -n 60 "replay-$name.out" >"replay-$name.tail"
        VD_DETAIL_LINES=60 fail "fuzz/$name" \
            "a seed or regression input fails (${crash:-no artifact})" "replay-$name.tail"
    elif timeout $((secs + 120)) "$fuzzer" "${opts[@]}" -max_total_time="$secs" \
        ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -print_final_stats=1 "work-$name" "${inputs[@]}" \
        >"fuzz-$name.out" 2>&1; then
        pass "fuzz/$name"
        grep -E '^stat::number_of_executed_units' "fuzz-$name.out" | sed 's/^/    /'
    else
        crash=$(grep -o "Test unit written to [^ ]*" "fuzz-$name.out" | tail -n 1)
        tail -n 60 "fuzz-$name.out" >"fuzz-$name.tail"
        VD_DETAIL_LINES=60 fail "fuzz/$name" \
            "fuzzing found a problem (${crash:-no artifact}); once fixed, add the input to tests/fuzz/regress-$name/" \
            "fuzz-$name.tail"
    fi
done
vd_finish
