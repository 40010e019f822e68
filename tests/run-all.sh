#!/usr/bin/env bash
# Runs every vdisk test (what `make check` runs after building): the unit tests of the
# normal and the ASan+UBSan build and under valgrind memcheck, every tests/interop/test-*.sh
# (with the normal and again with the ASan+UBSan vdisk) and tests/crash/test-*.sh, and a
# short libFuzzer run. Tests run in parallel (TEST_JOBS, default: the number of
# CPUs), each under a timeout; their output is shown as each finishes, and the last line is
# exactly "N passed, N failed", where N counts test cases (each PASS/FAIL line a script
# prints, each cmocka test). Exits non-zero on any failure.
#
#   bash tests/run-all.sh                 # everything
#   bash tests/run-all.sh corrupt unit    # only jobs whose name contains a given word
set -u

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
BUILD=${BUILD:-build}
ASAN_BUILD=${ASAN_BUILD:-build-asan}
jobs_max=${TEST_JOBS:-$(nproc 2>/dev/null || echo 2)}
[ "$jobs_max" -ge 1 ] 2>/dev/null || jobs_max=2
script_timeout=${TEST_TIMEOUT:-600}

export VDISK=${VDISK:-$repo/$BUILD/vdisk}
export VDISK_ASAN=${VDISK_ASAN:-$repo/$ASAN_BUILD/vdisk}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export CI=${CI:-}
# shellcheck source=tests/lib.sh
PYTHON=${PYTHON:-$(. "$repo/tests/lib.sh" >/dev/null 2>&1; vd_default_python)}
export PYTHON
export LC_ALL=C

R=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-run-all.XXXXXX")
cleanup() {
    local p
    for p in $(jobs -p); do
        kill -- "$p" 2>/dev/null
    done
    rm -rf "$R"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

total_pass=0
total_fail=0
names=()   # job names, by id
cmds=()    # shell command lines, by id

add_job() {
    local name=$1 cmd=$2 w
    if [ ${#filters[@]} -gt 0 ]; then
        local hit=0
        for w in "${filters[@]}"; do
            case $name in *"$w"*) hit=1 ;; esac
        done
        [ $hit = 1 ] || return 0
    fi
    names+=("$name")
    cmds+=("$cmd")
}

# Reports a problem found before any job ran (e.g. a build directory that does not build).
early_fail() {
    printf 'FAIL %s: %s\n' "$1" "$2"
    total_fail=$((total_fail + 1))
}

filters=("$@")

# ---- jobs ---------------------------------------------------------------------------------
# The slow ones first, so that they overlap with the many short ones.
add_job fuzz/qcow2-open "bash tests/fuzz/run-fuzz.sh"
for s in tests/crash/test-crash.sh tests/interop/test-differential.sh \
    tests/interop/test-qemu-to-vdisk.sh tests/interop/test-preallocation.sh \
    tests/interop/test-vdisk-to-qemu.sh tests/interop/test-corrupt-images.sh; do
    [ -f "$s" ] && add_job "$(basename "$(dirname "$s")")/$(basename "$s")" \
        "timeout -k 10 $script_timeout bash $s"
done
for s in tests/interop/test-*.sh tests/crash/test-*.sh tests/ceph/test-*.sh; do
    [ -f "$s" ] || continue
    case " ${names[*]} " in *" $(basename "$(dirname "$s")")/$(basename "$s") "*) continue ;; esac
    add_job "$(basename "$(dirname "$s")")/$(basename "$s")" \
        "timeout -k 10 $script_timeout bash $s"
done
# The interop scripts again with the ASan+UBSan vdisk, so the whole suite runs sanitized
# (those that run the ASan vdisk themselves already are not repeated).
if [ -x "$VDISK_ASAN" ] || [ -f "$ASAN_BUILD/build.ninja" ]; then
    for s in tests/interop/test-*.sh tests/ceph/test-rbd.sh; do
        [ -f "$s" ] || continue
        grep -q 'VDISK_ASAN' "$s" && continue
        # The differential test's 10,000 operations per image are the normal pass's job;
        # the sanitized pass walks the same paths with fewer (its oracle half is unchanged).
        env=
        case $s in */test-differential.sh) env="DIFF_OPS=${ASAN_DIFF_OPS:-3000} " ;; esac
        add_job "asan/$(basename "$s")" \
            "${env}VDISK=$(printf %q "$VDISK_ASAN") timeout -k 10 $script_timeout bash $s"
    done
fi

# Unit tests as meson registered them, run directly (so the sanitizer settings and the
# per-test accounting are ours), in both builds, and the normal build's under valgrind
# memcheck (errors or definite leaks fail the test).
valgrind_cmd=
if command -v valgrind >/dev/null 2>&1; then
    valgrind_cmd="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --suppressions=$repo/tests/valgrind.supp"
fi
for dir in "$BUILD" "$ASAN_BUILD" "valgrind:$BUILD"; do
    prefix=
    case $dir in
    valgrind:*)
        [ -n "$valgrind_cmd" ] || continue
        prefix=$valgrind_cmd
        dir=${dir#valgrind:}
        ;;
    esac
    tag=$dir
    [ -n "$prefix" ] && tag="valgrind/$dir"
    if [ ${#filters[@]} -gt 0 ]; then
        hit=0
        for w in "${filters[@]}"; do case "unit/$tag" in *"$w"*) hit=1 ;; esac; done
        [ $hit = 1 ] || continue
    fi
    if [ ! -f "$dir/build.ninja" ]; then
        early_fail "unit/$dir" "build directory $dir is missing (make build build-asan)"
        continue
    fi
    if ! ninja -C "$dir" >"$R/ninja.log" 2>&1; then
        early_fail "unit/$dir" "the build in $dir fails: $(grep -m1 -E 'error|FAILED' \
            "$R/ninja.log")"
        continue
    fi
    while IFS=$'\t' read -r tname tcmd; do
        [ -n "$tname" ] && add_job "unit/$tag/$tname" "timeout -k 10 600 $tcmd"
    done < <(meson introspect "$dir" --tests 2>/dev/null | PREFIX="$prefix" "$PYTHON" -c '
import json, os, shlex, sys
for t in json.load(sys.stdin):
    env = " ".join(shlex.quote("%s=%s" % kv) for kv in sorted((t.get("env") or {}).items()))
    cmd = " ".join(shlex.quote(c) for c in t["cmd"])
    if os.environ.get("PREFIX"):
        cmd = os.environ["PREFIX"] + " " + cmd
    wd = t.get("workdir")
    line = ("cd %s && " % shlex.quote(wd) if wd else "") + ("env %s " % env if env else "") + cmd
    print("%s\t%s" % (t["name"], line))')
done

# ---- running and accounting ---------------------------------------------------------------
run_job() {
    local id=$1 start end
    start=$(date +%s)
    (cd "$repo" && exec bash -c "${cmds[$id]}") >"$R/$id.log" 2>&1 </dev/null
    echo $? >"$R/$id.rc.tmp"
    end=$(date +%s)
    echo $((end - start)) >"$R/$id.time"
    mv "$R/$id.rc.tmp" "$R/$id.rc"
}

# Counts one finished job: PASS/FAIL lines for scripts, [ RUN ]/[ OK ] for cmocka tests.
report_job() {
    local id=$1 name=${names[$1]} log="$R/$1.log" rc np nf nrun nok secs
    rc=$(cat "$R/$id.rc")
    secs=$(cat "$R/$id.time")
    np=$(grep -c '^PASS ' "$log")
    nf=$(grep -c '^FAIL ' "$log")
    nrun=$(grep -c '^\[ RUN      \]' "$log")
    nok=$(grep -c '^\[       OK \]' "$log")
    local extra=
    if [ "$nrun" -gt 0 ]; then
        np=$((np + nok))
        nf=$((nf + nrun - nok))
    fi
    if [ "$rc" -eq 77 ] && [ "$nf" -eq 0 ]; then
        extra="skipped (exit 77)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        nf=$((nf + 1))
        extra="TIMED OUT"
    elif [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
        nf=$((nf + 1))
        extra="exited $rc"
    elif [ "$rc" -eq 0 ] && [ "$np" -eq 0 ] && [ "$nf" -eq 0 ]; then
        np=1
    fi
    total_pass=$((total_pass + np))
    total_fail=$((total_fail + nf))
    printf '=== %s: %d passed, %d failed (%ss)%s\n' "$name" "$np" "$nf" "$secs" \
        "${extra:+ — $extra}"
    cat "$log"
    if [ -n "$extra" ] && [ "$extra" != "skipped (exit 77)" ]; then
        printf 'FAIL %s: %s\n' "$name" "$extra"
    fi
    echo
}

echo "vdisk tests: ${#names[@]} jobs, $jobs_max at a time; VDISK=$VDISK"
echo
declare -A reported=()
next=0
running=0
start_all=$(date +%s)
while [ "$next" -lt ${#names[@]} ] || [ "$running" -gt 0 ]; do
    while [ "$running" -lt "$jobs_max" ] && [ "$next" -lt ${#names[@]} ]; do
        run_job "$next" &
        next=$((next + 1))
        running=$((running + 1))
    done
    wait -n 2>/dev/null
    if [ $? -eq 127 ]; then
        # No children left: a job that never wrote its status died abnormally.
        for ((i = 0; i < next; i++)); do
            if [ -z "${reported[$i]:-}" ] && [ ! -f "$R/$i.rc" ]; then
                echo 125 >"$R/$i.rc"
                [ -f "$R/$i.time" ] || echo 0 >"$R/$i.time"
            fi
        done
    fi
    running=0
    for ((i = 0; i < next; i++)); do
        if [ -z "${reported[$i]:-}" ]; then
            if [ -f "$R/$i.rc" ]; then
                report_job "$i"
                reported[$i]=1
            else
                running=$((running + 1))
            fi
        fi
    done
done
echo "all tests took $(($(date +%s) - start_all))s"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
