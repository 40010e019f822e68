# shellcheck shell=bash
# Shared helpers for the vdisk benchmark cases: settings, timing of one run, and the
# records (runs.tsv) that bench/report.py turns into the results table. Source, don't run.

BENCH_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_SRC/.." && pwd)

: "${VDISK:=$REPO/build/vdisk}"
: "${QEMU_IMG:=qemu-img}"
: "${BENCH_QUICK:=0}"
export BENCH_ROUNDS_GIVEN=${BENCH_ROUNDS:-}  # run.sh --quick needs to know
if [ "$BENCH_QUICK" = 1 ]; then
    : "${BENCH_ROUNDS:=1}"
else
    : "${BENCH_ROUNDS:=5}"
fi
# Work files must live on a real disk filesystem (O_DIRECT, fallocate), so not /tmp, which
# may be tmpfs. The generated source image for convert is cached between runs.
: "${BENCH_DIR:=/var/tmp/vdisk-bench}"
: "${BENCH_CACHE:=$BENCH_DIR/cache}"
: "${BENCH_RUNS:=$BENCH_DIR/runs.tsv}"
export VDISK QEMU_IMG BENCH_QUICK BENCH_ROUNDS BENCH_DIR BENCH_CACHE BENCH_RUNS

bench_die() {
    echo "bench: $*" >&2
    exit 2
}

# bench_size NORMAL QUICK: picks the size (or count) for the current mode.
bench_size() {
    if [ "$BENCH_QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi
}

# bench_case ID METRIC VDISK_LABEL BASE_LABEL MIN_RATIO TITLE COMMAND [BYTES]
# Declares one row of the results table. METRIC is "time", "rss" or "size" (of the output
# file, recorded with bench_output_size); the ratio is baseline / vdisk for all three, so
# above 1 is better for vdisk. MIN_RATIO "-" means no target. BYTES (time rows): the data
# size the run processes, shown as MB/s next to the time.
bench_case() {
    printf 'case\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${@:1:7}" "${8:-}" >>"$BENCH_RUNS"
}

# bench_output_size CASE WHO ROUND FILE: records the size of a file a run wrote.
bench_output_size() {
    printf 'size\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(stat -c %s "$4")" >>"$BENCH_RUNS"
}

# bench_section TITLE FILE: a markdown file to append to the results under its own heading
# (read when the report is written).
bench_section() {
    printf 'section\t%s\t%s\n' "$1" "$2" >>"$BENCH_RUNS"
}

# bench_note CASE TEXT: a line for the "Notes" section (failed checks, skipped work).
bench_note() {
    printf 'note\t%s\t%s\n' "$1" "$2" >>"$BENCH_RUNS"
    echo "bench: $1: $2" >&2
}

# bench_measure CASE WHO ROUND CMD...: runs CMD once, timed, output to a per-run log.
# Returns CMD's success or failure.
bench_measure() {
    local case=$1 who=$2 round=$3
    shift 3
    mkdir -p "$BENCH_DIR/logs"
    local log="$BENCH_DIR/logs/$case.$who.r$round.log"
    : >"$log"
    python3 "$BENCH_SRC/measure.py" --runs "$BENCH_RUNS" --case "$case" --who "$who" \
        --round "$round" --log "$log" -- "$@"
}

# A header line of the records (report.py prints them above the tables).
meta() { printf 'meta\t%s\t%s\n' "$1" "$2" >>"$BENCH_RUNS"; }

# The contender's header line: the build it runs and its source revision, or that the
# baseline stood in for it ($standin=1: a dry run of the harness).
bench_meta_contender() {
    local name=$1 src=$2 baseline=$3 rev
    if [ "${standin:-0}" = 1 ]; then
        meta "$name" "**$baseline standing in for $name (dry run of the harness)**"
    else
        rev=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
        meta "$name" "${src#"$REPO"/} (source $rev)"
    fi
}

# The header lines every run writes: when, on what machine and file system, how many
# rounds ($fstype: the file system of $BENCH_DIR).
bench_meta_machine() {
    meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
    local cpu mem
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
    meta machine "$(nproc) CPUs ($cpu), $mem RAM, Linux $(uname -r)"
    meta filesystem "$fstype ($(df -P "$BENCH_DIR" | awk 'NR == 2 { print $1 }')) at $BENCH_DIR"
    meta rounds "$BENCH_ROUNDS"
}

# The load average as the run starts, with a warning when the machine is not idle.
bench_meta_load() {
    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    meta "load average at start" "$load"
    if awk -v l="${load%% *}" 'BEGIN { exit !(l > 0.5) }'; then
        echo "bench: the machine is busy (load $load): expect noisy numbers" >&2
    fi
}

# bench_order ROUND A B: prints the contenders in this round's order. Rounds alternate who
# goes first (AB, BA, AB...) so that neither side always runs right after the other's
# writeback or always finds the caches in the same state.
bench_order() {
    local round=$1
    shift
    if [ $((round % 2)) = 1 ]; then
        echo "$@"
    else
        local rev=() i
        for ((i = $#; i >= 1; i--)); do rev+=("${!i}"); done
        echo "${rev[@]}"
    fi
}

# bench_settle: write back dirty pages outside the timed region, so one run's writeback
# does not slow the next one down.
bench_settle() {
    sync
}

# bench_drop_caches: bench_settle, then empty the page cache where allowed (root), so that
# every run of a case starts with the same free memory. The kernel's dirty-page limits scale
# with it: without this, a buffered writer is throttled to the disk's speed in one run and not
# in the next, depending on what earlier cases left cached. The case re-reads its inputs.
bench_drop_caches() {
    bench_settle
    if [ -w /proc/sys/vm/drop_caches ]; then
        echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
    fi
}

# bench_tool WHO: the binary for a contender label.
bench_tool() {
    case $1 in
        vdisk*) echo "$VDISK" ;;
        *) echo "$QEMU_IMG" ;;
    esac
}

# bench_failed CASE WHO: true when an earlier round of WHO in CASE failed; later rounds are
# skipped then, since a broken command only wastes time.
bench_failed() {
    [ -f "$BENCH_DIR/failed.$1.$2" ]
}
bench_mark_failed() {
    : >"$BENCH_DIR/failed.$1.$2"
    local log="$BENCH_DIR/logs/$1.$2.r$3.log" said
    said=$(grep -v -e '^\$ ' -e '^measure: ' "$log" | tail -1 | cut -c1-240)
    bench_note "$1" "$2 failed in round $3: ${said:-no output} (log: $log)"
}

# bench_run CASE WHO ROUND CMD...: bench_measure, unless WHO already failed in CASE; a
# failure is remembered and noted. Returns 1 when the run failed or was skipped.
bench_run() {
    local case=$1 who=$2 round=$3
    bench_failed "$case" "$who" && return 1
    if ! bench_measure "$@"; then
        bench_mark_failed "$case" "$who" "$round"
        return 1
    fi
}

# bench_check CASE WHO IMAGE: qemu-img check of an image a contender wrote (untimed); a
# speed result from a tool that writes broken images is noted next to the table.
bench_check() {
    local out
    if ! out=$("$QEMU_IMG" check -q "$3" 2>&1); then
        out=$(echo "$out" | head -3 | tr '\n' ' ')
        bench_note "$1" "qemu-img check of $2's image failed: $out"
        : >"$BENCH_DIR/failed.check.$1"
        return 1
    fi
}

# bench_compare CASE WHAT A B: qemu-img compare of two images that must have the same guest
# contents (untimed).
bench_compare() {
    local out
    if ! out=$("$QEMU_IMG" compare "$3" "$4" 2>&1); then
        out=$(echo "$out" | head -2 | tr '\n' ' ')
        bench_note "$1" "$2: $(basename "$3") and $(basename "$4") differ: $out"
        : >"$BENCH_DIR/failed.compare.$1"
        return 1
    fi
}
