#!/usr/bin/env bash
# Runs QEMU 7.2's own qemu-iotests against vdisk (`make iotests`): vdisk stands in for
# qemu-img, qemu-io and qemu-nbd through symlinks of those names, and every selected test
# runs a second time with Debian's QEMU binaries, for -qcow2, -raw and -nbd (raw over NBD).
# A fourth set, nbd-server, runs -nbd with only qemu-nbd being vdisk (QEMU's qemu-img and
# qemu-io as the clients): vdisk's NBD server under QEMU's NBD tests, while vdisk has no NBD
# client for the full -nbd set.
# QEMU's test suite comes from the Debian source of the installed qemu-utils (a deb-src entry
# and `apt-get source`), unpacked into a cache outside the repository and reused; nothing of
# QEMU is ever part of vdisk's tree. Needs root the first time (apt-get).
#
#   bash tests/iotests/run.sh [options] [TEST...]
#     -j N            parallel jobs for QEMU's check (default 1)
#     --formats LIST  space or comma separated subset of "qcow2 raw nbd nbd-server"
#                     (default: all)
#     --update        rewrite tests/iotests/pass-FMT.list from this run's vdisk results
#                     (with TESTs: add or drop only those tests)
#     --reuse-qemu    compare with QEMU's results of an earlier run instead of running
#                     QEMU's binaries again (they do not change between runs)
#     --fetch-only    only fetch and unpack the QEMU source
#     TEST            test names as check takes them (024, qcow2-internal-snapshots);
#                     default: every test (check skips those not meant for the format)
#
# Environment: BUILD (vdisk's build directory, default build), VDISK (the binary, default
# $BUILD/vdisk), VDISK_IOTESTS_CACHE (default /var/cache/vdisk-iotests), IOTESTS_JOBS,
# IOTESTS_TEST_TIMEOUT / IOTESTS_PROC_TIMEOUT (seconds before a hung test / tool is killed).
#
# Prints, per format, "vdisk: N passed, N failed, N not run" and the same for QEMU, then the
# tests that pass with QEMU but not with vdisk. A test listed in pass-FMT.list that fails
# with vdisk is a regression: the script exits 1 (2 when the harness itself fails). Passing
# tests not in the list are reported as new passes (--update records them).
#
# Tests that need a VM or qemu-storage-daemon: qemu-system is not installed, and QSD would
# bring QEMU's block layer into vdisk's run, so QEMU_PROG and QSD_PROG point at a stub in
# both runs. It answers the queries tests make of the emulator (machine, device and format
# lists), so a test that needs a missing device says "not run" itself; for anything else it
# notes the test and fails. A test that did not pass after trying to start one is counted
# as "not run (needs a VM or QSD)", in both runs.
set -u

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tests/iotests
BUILD=${BUILD:-build}
VDISK=${VDISK:-$repo/$BUILD/vdisk}
CACHE=${VDISK_IOTESTS_CACHE:-/var/cache/vdisk-iotests}
PY=/usr/bin/python3
export LC_ALL=C

jobs=${IOTESTS_JOBS:-1}
formats="qcow2 raw nbd nbd-server"
update=0
reuse_qemu=0
fetch_only=0
tests=()
while [ $# -gt 0 ]; do
    case $1 in
    -j) jobs=$2; shift 2 ;;
    -j*) jobs=${1#-j}; shift ;;
    --formats) formats=$(printf '%s' "$2" | tr ',' ' '); shift 2 ;;
    --formats=*) formats=$(printf '%s' "${1#--formats=}" | tr ',' ' '); shift ;;
    --update) update=1; shift ;;
    --fetch-only) fetch_only=1; shift ;;
    --reuse-qemu) reuse_qemu=1; shift ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed -e '/^set -u/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) tests+=("$1"); shift ;;
    esac
done

die() {
    echo "iotests: $*" >&2
    exit 2
}

# ---- the QEMU source ---------------------------------------------------------------------

# Debian packages the iotests harness and the tests themselves need (qemu-utils is the
# reference; dpkg-dev unpacks the source). Installed only when missing.
need_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing Debian packages (run as root to install): ${missing[*]}"
    echo "iotests: installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >/dev/null; } || die "apt-get install ${missing[*]} failed"
}

# A deb-src twin of Debian's own deb822 sources, so `apt-get source` finds the exact
# source of the installed QEMU. Written once; apt-get update only when it is new.
add_deb_src() {
    local list=/etc/apt/sources.list.d/vdisk-iotests-src.sources
    local main=/etc/apt/sources.list.d/debian.sources
    [ -f "$list" ] && return 1
    [ -f "$main" ] || die "$main not found: cannot derive a deb-src entry"
    { echo "# Added by vdisk's tests/iotests/run.sh: the source of Debian's QEMU for its iotests."
      grep -v '^#' "$main" | sed 's/^Types:.*/Types: deb-src/'; } >"$list.tmp" &&
        mv "$list.tmp" "$list" || die "cannot write $list"
    return 0
}

# Sets QEMU_SRC to an unpacked, Debian-patched source tree of the installed qemu-utils.
fetch_source() {
    local srcver upver dir
    srcver=$(dpkg-query -W -f '${source:Version}' qemu-utils 2>/dev/null) ||
        die "qemu-utils is not installed"
    upver=${srcver#*:}
    upver=${upver%-*}
    dir=$CACHE/qemu-${srcver#*:}
    QEMU_SRC=$dir/src
    if [ -x "$QEMU_SRC/tests/qemu-iotests/check" ]; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "the QEMU source is not in $CACHE yet; run once as root"
    need_packages dpkg-dev xz-utils
    if add_deb_src || ! apt-cache showsrc qemu 2>/dev/null | grep -qx "Version: $srcver"; then
        echo "iotests: apt-get update (deb-src)"
        apt-get update -q >/dev/null || die "apt-get update failed"
    fi
    mkdir -p "$dir/dl" || die "cannot create $dir"
    echo "iotests: downloading the source of qemu $srcver into $dir"
    # apt's sandbox user cannot write here; the warning it prints about that is noise.
    (cd "$dir/dl" && apt-get source -q --download-only "qemu=$srcver" 2>&1 >/dev/null |
        grep -v 'unsandboxed as root' >&2; exit "${PIPESTATUS[0]}") ||
        die "apt-get source qemu=$srcver failed"
    local dsc
    dsc=$(ls "$dir"/dl/qemu_*.dsc 2>/dev/null | head -n 1)
    [ -n "$dsc" ] || die "no .dsc downloaded"
    echo "iotests: unpacking (with Debian's patches)"
    rm -rf "$dir/src.tmp"
    dpkg-source -q -x "$dsc" "$dir/src.tmp" >/dev/null 2>"$dir/unpack.log" ||
        die "dpkg-source -x failed (see $dir/unpack.log)"
    mv "$dir/src.tmp" "$QEMU_SRC" || die "cannot move the unpacked source into place"
    # Only the iotests and the python package they import are used: drop the rest, and the
    # downloaded archives, so the cache stays small.
    find "$QEMU_SRC" -mindepth 1 -maxdepth 1 ! -name tests ! -name python ! -name scripts \
        ! -name VERSION -exec rm -rf {} +
    find "$QEMU_SRC/tests" -mindepth 1 -maxdepth 1 ! -name qemu-iotests -exec rm -rf {} +
    rm -rf "$dir/dl" "$dir"/qemu_*.tar.*
    echo "iotests: QEMU $upver iotests in $QEMU_SRC/tests/qemu-iotests"
}

fetch_source
[ $fetch_only = 1 ] && exit 0

# ---- the environment check runs in --------------------------------------------------------

# What the tests call besides QEMU's tools: sudo (108 and 149 try `sudo -n`), dmsetup
# (128), certtool from gnutls-bin (the NBD TLS tests such as 233).
need_packages sudo dmsetup gnutls-bin
[ -x "$VDISK" ] || die "$VDISK is not built (make build BUILD=$BUILD)"
[ -x "$PY" ] || die "$PY not found"
for f in $formats; do
    case $f in
    qcow2 | raw | nbd | nbd-server) ;;
    *) die "unknown format '$f' (qcow2, raw, nbd, nbd-server)" ;;
    esac
done
iotests_dir=$QEMU_SRC/tests/qemu-iotests
results=$CACHE/results          # logs and per-test status of the last run of each kind
run=$CACHE/run                  # links, stubs and scratch space of this run
mkdir -p "$results" || die "cannot create $results"
rm -rf "$run"
mkdir -p "$run/vdisk" "$run/stub" || die "cannot create $run"

# vdisk under QEMU's names; check takes the paths from QEMU_*_PROG.
for n in qemu-img qemu-io qemu-nbd; do
    ln -s "$(readlink -f "$VDISK")" "$run/vdisk/$n"
done

# qemu-system and qemu-storage-daemon are not available to the tests (no qemu-system here,
# and QSD would put QEMU's block layer into vdisk's run). One stub stands in for both: it
# answers the queries check and the tests make of the emulator (machine, device and format
# lists; the formats are those QEMU's qemu-img lists), and for anything else notes which
# test tried to start it (in $VDISK_IOTESTS_MARKS) and fails. A test that fails after
# trying is counted as "not run (needs a VM or QSD)".
qemu_formats=$(/usr/bin/qemu-img --help 2>/dev/null | sed -n 's/^Supported formats: //p')
cat >"$run/stub/qemu-system-x86_64" <<STUB
#!/bin/bash
case " \$* " in
*" -machine help "* | *" -device help "*) exit 0 ;;
*" format=help "*)
    echo "Supported formats: $qemu_formats"
    echo "Supported formats (read-only): $qemu_formats"
    exit 0 ;;
esac
# The test is the nearest ancestor whose command line names a file in qemu-iotests.
pid=\$PPID
while [ "\${pid:-1}" -gt 1 ]; do
    while IFS= read -r -d '' arg; do
        case \$arg in
        */qemu-iotests/*)
            [ -n "\${VDISK_IOTESTS_MARKS:-}" ] && : >"\$VDISK_IOTESTS_MARKS/\${arg##*/}"
            pid=1
            break ;;
        esac
    done <"/proc/\$pid/cmdline"
    [ "\$pid" = 1 ] && break
    pid=\$(awk '/^PPid:/ { print \$2 }' "/proc/\$pid/status" 2>/dev/null)
done
echo "\${0##*/}: not available to vdisk's iotests run (stub)" >&2
exit 1
STUB
chmod +x "$run/stub/qemu-system-x86_64"
ln -s qemu-system-x86_64 "$run/stub/qemu-storage-daemon"

# Every process check starts carries this in its environment (this script does not): the
# watchdog and the final cleanup find them, and only them, by it.
token="$$-$(date +%s%N)"
# QEMU's slowest test here takes about 30 s; 162 retries qemu-nbd forever when it cannot
# start (vdisk's has no null-co driver), so a hung test must not cost much more than that.
proc_limit=${IOTESTS_PROC_TIMEOUT:-180}    # seconds one qemu-img/io/nbd process may run
test_limit=${IOTESTS_TEST_TIMEOUT:-180}    # seconds one test may run

# Prints the pids of this run's processes, with their age in seconds and their name.
run_processes() {
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = $$ ] && continue
        grep -qzx "VDISK_IOTESTS_RUN=$token" "$d/environ" 2>/dev/null || continue
        printf '%s %s %s\n' "$pid" "$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')" \
            "$(cat "$d/comm" 2>/dev/null)"
    done
}

# Kills a tool that has hung (check has no timeout of its own), and a test that runs far
# too long, so one hang costs a test, not the run.
watchdog() {
    local pid age comm args
    while sleep 15; do
        while read -r pid age comm; do
            [ -n "$age" ] || continue
            case $comm in
            qemu-img | qemu-io | qemu-nbd | vdisk)
                if [ "$age" -gt "$proc_limit" ]; then
                    echo "iotests: watchdog: killing $comm (pid $pid) after ${age}s" >&2
                    kill -KILL "$pid" 2>/dev/null
                fi ;;
            *)
                args=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)
                case $args in
                */qemu-iotests/check*) ;;
                */qemu-iotests/*)
                    if [ "$age" -gt "$test_limit" ]; then
                        echo "iotests: watchdog: killing test $args (pid $pid) after ${age}s" >&2
                        kill -KILL "$pid" 2>/dev/null
                    fi ;;
                esac ;;
            esac
        done < <(run_processes)
    done
}

# Ends what the run left behind (a qemu-nbd a failed test did not stop, say).
kill_leftovers() {
    local pid age comm
    while read -r pid age comm; do
        kill -KILL "$pid" 2>/dev/null
    done < <(run_processes)
}

sock_dir=$(mktemp -d /tmp/vdisk-iotests.XXXXXX) || die "mktemp failed"
watchdog_pid=
cleanup() {
    [ -n "$watchdog_pid" ] && kill "$watchdog_pid" 2>/dev/null
    kill_leftovers
    rm -rf "$sock_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Test names as check prints them (001, qcow2-internal-snapshots); check takes the same.
sel=()
for t in "${tests[@]}"; do
    t=${t#tests/}
    case $t in [0-9] | [0-9][0-9]) t=$(printf '%03d' "$((10#$t))") ;; esac
    sel+=("$t")
done

# run_check TOOL FMT: runs check for one tool (vdisk or qemu) and format into
# $results/TOOL-FMT.log and writes $results/TOOL-FMT.status: "NAME STATUS" per test, STATUS
# pass, fail, notrun or vm (failed after trying to start a VM or QSD).
run_check() {
    local tool=$1 fmt=$2 img io nbd fmtarg marks scratch log
    case $tool in
    vdisk) img=$run/vdisk/qemu-img io=$run/vdisk/qemu-io nbd=$run/vdisk/qemu-nbd ;;
    qemu) img=/usr/bin/qemu-img io=/usr/bin/qemu-io nbd=/usr/bin/qemu-nbd ;;
    esac
    if [ "$fmt" = nbd-server ]; then
        img=/usr/bin/qemu-img io=/usr/bin/qemu-io   # only the server is vdisk's
    fi
    case $fmt in
    nbd | nbd-server) fmtarg=(-raw -nbd) ;;
    *) fmtarg=("-$fmt") ;;
    esac
    marks=$run/marks-$tool-$fmt
    scratch=$run/scratch-$tool-$fmt
    log=$results/$tool-$fmt.log
    mkdir -p "$marks" "$scratch" "$sock_dir/$tool-$fmt"
    echo "iotests: $tool -$fmt: running check -j $jobs ${sel[*]:-(all tests)} (log: $log)"
    (
        cd "$iotests_dir" &&
            env PATH="/usr/bin:/bin:/usr/sbin:/sbin:$PATH" \
                QEMU_PROG="$run/stub/qemu-system-x86_64" QSD_PROG="$run/stub/qemu-storage-daemon" \
                QEMU_IMG_PROG="$img" QEMU_IO_PROG="$io" QEMU_NBD_PROG="$nbd" \
                TEST_DIR="$scratch" SOCK_DIR="$sock_dir/$tool-$fmt" \
                VDISK_IOTESTS_MARKS="$marks" VDISK_IOTESTS_RUN="$token" \
                "$PY" ./check --color off -j "$jobs" "${fmtarg[@]}" "${sel[@]}"
    ) >"$log" 2>&1
    local rc=$?
    # One line per finished test: "NAME STATUS [start] [end] ...". Without -j the "..." line
    # before it ends in a carriage return.
    tr '\r' '\n' <"$log" | awk -v marks="$marks" '
        $2 == "pass" && $3 ~ /^\[/ { st[$1] = "pass"; next }
        $2 == "fail" && $3 ~ /^\[/ { st[$1] = "fail"; next }
        $2 == "not" && $3 == "run" && $4 ~ /^\[/ { st[$1] = "notrun"; next }
        END {
            for (t in st) {
                s = st[t]
                if (s != "pass" && system("test -e \"" marks "/" t "\"") == 0) s = "vm"
                print t, s
            }
        }' | sort >"$results/$tool-$fmt.status"
    if [ ! -s "$results/$tool-$fmt.status" ]; then
        echo "iotests: check produced no results (exit $rc):" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
}

# A test that tried to start a VM or QSD in either run counts as needing one in both.
merge_vm() {
    local fmt=$1 t
    for t in $(find "$run/marks-vdisk-$fmt" "$run/marks-qemu-$fmt" -type f -printf '%f\n' \
        2>/dev/null | sort -u); do
        for tool in vdisk qemu; do
            [ -f "$results/$tool-$fmt.status" ] || continue
            awk -v t="$t" '$1 == t && $2 != "pass" { $2 = "vm" } { print }' \
                "$results/$tool-$fmt.status" >"$results/$tool-$fmt.status.tmp" &&
                mv "$results/$tool-$fmt.status.tmp" "$results/$tool-$fmt.status"
        done
    done
}

counts() {
    awk '{ n[$2]++ } END {
        printf "%d passed, %d failed, %d not run (%d of them need a VM or QSD)\n",
            n["pass"], n["fail"], n["notrun"] + n["vm"], n["vm"] }' "$1"
}

# Tests with a given status in a status file.
with_status() {
    awk -v s="$2" '$2 == s { print $1 }' "$1"
}

watchdog &
watchdog_pid=$!

status=0
summary=$run/summary
: >"$summary"
for fmt in $formats; do
    run_check vdisk "$fmt" || { status=2; continue; }
    vs=$results/vdisk-$fmt.status
    qs=$results/qemu-$fmt.status
    if [ $reuse_qemu = 1 ] && [ -s "$qs" ]; then
        echo "iotests: qemu -$fmt: reusing the results of an earlier run ($qs)"
    else
        run_check qemu "$fmt" || { status=2; continue; }
    fi
    merge_vm "$fmt"
    # Compare over the tests this run selected only.
    awk 'NR == FNR { ran[$1] = 1; next } ran[$1]' "$vs" "$qs" >"$run/qemu-$fmt.selected"
    qs=$run/qemu-$fmt.selected
    list=$here/pass-$fmt.list
    listed=$(grep -v '^#' "$list" 2>/dev/null | sed '/^$/d' | sort -u)
    vpass=$(with_status "$vs" pass)
    qpass=$(with_status "$qs" pass)
    ran=$(awk '{ print $1 }' "$vs")
    qemu_only=$(comm -23 <(echo "$qpass" | sed '/^$/d') <(echo "$vpass" | sed '/^$/d'))
    regress=$(comm -12 <(echo "$listed" | sed '/^$/d') <(echo "$ran" | sed '/^$/d') |
        comm -23 - <(echo "$vpass" | sed '/^$/d'))
    new=$(comm -23 <(echo "$vpass" | sed '/^$/d') <(echo "$listed" | sed '/^$/d'))
    {
        echo "== -$fmt =="
        echo "vdisk: $(counts "$vs")"
        echo "QEMU:  $(counts "$qs")"
        echo "pass with QEMU, not with vdisk: $(echo "$qemu_only" | sed '/^$/d' | wc -l)"
        if [ -n "$qemu_only" ]; then
            echo "$qemu_only" | paste -sd ' ' | fold -s -w 96 | sed 's/^/    /'
        fi
        if [ -n "$regress" ]; then
            echo "REGRESSIONS: listed in pass-$fmt.list but not passing with vdisk:"
            echo "$regress" | paste -sd ' ' | fold -s -w 96 | sed 's/^/    /'
        fi
        if [ -n "$new" ]; then
            echo "new passes with vdisk (not in pass-$fmt.list$([ $update = 1 ] && echo '; added')):"
            echo "$new" | paste -sd ' ' | fold -s -w 96 | sed 's/^/    /'
        fi
    } | tee -a "$summary"
    [ -n "$regress" ] && [ $status = 0 ] && status=1
    if [ $update = 1 ]; then
        # A full run rewrites the list; a subset adds or drops only the tests it ran.
        if [ ${#sel[@]} -eq 0 ]; then
            keep=
        else
            keep=$(comm -23 <(echo "$listed" | sed '/^$/d') <(echo "$ran" | sed '/^$/d'))
        fi
        {
            echo "# The qemu-iotests of QEMU $(cat "$QEMU_SRC/VERSION" 2>/dev/null) (check -$fmt) that vdisk passes,"
            echo "# one per line. A listed test that fails with vdisk is a regression: make iotests"
            echo "# exits 1. Rewritten by make iotests IOTESTS_UPDATE=1 (tests/iotests/run.sh --update)."
            printf '%s\n%s\n' "$keep" "$vpass" | sed '/^$/d' | sort -u
        } >"$list"
        echo "iotests: updated $list"
    fi
done
echo "iotests: logs and per-test results in $results; failing tests' output in $run/scratch-*"
exit $status
