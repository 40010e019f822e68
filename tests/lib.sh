# Shared helpers for vdisk's shell tests: sourced, never run. Gives every test a private
# scratch directory, PASS/FAIL reporting in the one-line format run-all.sh counts, and
# wrappers around the oracle tools (qemu-img, qemu-io).
#
# A test script does:
#     . "$(dirname "$0")/../lib.sh"
#     vd_init                      # scratch dir, cleanup trap, tool checks
#     ...; pass "name" / fail "name" "why"
#     vd_finish                    # exit status: 1 if any case failed
# shellcheck shell=bash

# Debian's interpreter, which install-deps.sh installs, before any python3 first on PATH:
# a version manager's shim there costs about 0.4 s per start, and tests start thousands.
vd_default_python() {
    if [ -x /usr/bin/python3 ]; then
        echo /usr/bin/python3
    else
        echo python3
    fi
}

# Paths. run-all.sh exports VDISK (and VDISK_ASAN); a test run by hand finds the builds.
VD_TESTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VD_REPO=$(cd "$VD_TESTS/.." && pwd)
: "${VDISK:=$VD_REPO/build/vdisk}"
: "${VDISK_ASAN:=$VD_REPO/build-asan/vdisk}"
: "${QEMU_IMG:=qemu-img}"
: "${QEMU_IO:=qemu-io}"
: "${PYTHON:=$(vd_default_python)}"
export VDISK VDISK_ASAN QEMU_IMG QEMU_IO PYTHON

# Sanitizer settings for any instrumented binary a test starts; callers may override.
: "${ASAN_OPTIONS:=detect_leaks=1:abort_on_error=1}"
: "${UBSAN_OPTIONS:=halt_on_error=1:print_stacktrace=1}"
export ASAN_OPTIONS UBSAN_OPTIONS

VD_NPASS=0
VD_NFAIL=0
VD_TESTDIR=

# Indents multi-line detail so that run-all.sh never mistakes it for a result line.
vd_detail() {
    sed -e 's/^/    | /' | head -n "${VD_DETAIL_LINES:-40}"
}

pass() {
    VD_NPASS=$((VD_NPASS + 1))
    printf 'PASS %s\n' "$1"
}

# fail NAME WHY [DETAIL-FILE]: the optional file's content is shown indented.
fail() {
    VD_NFAIL=$((VD_NFAIL + 1))
    printf 'FAIL %s: %s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ')"
    if [ -n "${3:-}" ] && [ -s "$3" ]; then
        vd_detail <"$3"
    fi
}

# same_files NAME EXPECTED-FILE ACTUAL-FILE: one case that passes when the files are
# identical; the diff shows on failure.
same_files() {
    if cmp -s "$2" "$3"; then
        pass "$1"
    else
        diff -u "$2" "$3" >"$VD_TESTDIR/same-output.diff"
        fail "$1" "output differs from the expected" "$VD_TESTDIR/same-output.diff"
    fi
}

# check_ok NAME CMD...: one case that passes when CMD exits 0; its output shows on failure.
check_ok() {
    local name=$1 out rc
    shift
    out=$(mktemp "$VD_TESTDIR/out.XXXXXX")
    "$@" >"$out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "$name"
    else
        fail "$name" "'$*' exited $rc" "$out"
    fi
    rm -f "$out"
    return "$rc"
}

# Skips the whole script (exit 77) when a tool is truly absent.
need_tool() {
    local t
    for t in "$@"; do
        if ! command -v "$t" >/dev/null 2>&1; then
            echo "SKIP: $t not installed"
            exit 77
        fi
    done
}

_vd_cleanup() {
    local rc=$?
    cd / || true
    if [ -n "$VD_TESTDIR" ] && [ -d "$VD_TESTDIR" ]; then
        if [ -n "${KEEP_TESTDIR:-}" ]; then
            echo "kept test directory $VD_TESTDIR" >&2
        else
            rm -rf "$VD_TESTDIR"
        fi
    fi
    exit "$rc"
}

# Creates the scratch directory, enters it, and removes it on exit (KEEP_TESTDIR=1 keeps it).
vd_init() {
    need_tool "$QEMU_IMG" "$QEMU_IO" "$PYTHON"
    VD_TESTDIR=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-test.XXXXXX") || exit 1
    trap _vd_cleanup EXIT
    trap 'exit 130' INT TERM
    cd "$VD_TESTDIR" || exit 1
    if [ ! -x "$VDISK" ]; then
        echo "note: vdisk binary $VDISK is missing; every case that needs it will fail"
    fi
}

# Ends the script: exit 1 if any case failed.
vd_finish() {
    [ "$VD_NFAIL" -eq 0 ]
    exit $?
}

# A random seed for this run, or the one given in the named variable (to reproduce).
vd_seed() {
    local var=$1 v
    v=${!var:-}
    if [ -z "$v" ]; then
        v=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
    fi
    printf '%s\n' "$v"
}

# ---- oracle wrappers -------------------------------------------------------------------

# qemu_check_clean IMG OUTFILE: 0 when `qemu-img check` reports no errors and no leaks.
qemu_check_clean() {
    "$QEMU_IMG" check "$1" >"$2" 2>&1
}

# qemu_info_field IMG KEY...: prints a field of `qemu-img info --output=json` (nested keys
# walk into objects, e.g. format-specific data compat). Empty when absent.
qemu_info_field() {
    local img=$1
    shift
    "$QEMU_IMG" info -U --output=json "$img" 2>/dev/null | "$PYTHON" -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else json.dumps(v))' "$@"
}

# The image-describing fields of `qemu-img info --output=json` as one comparable line:
# the twin made by qemu-img and the image made by vdisk must agree on all of them.
qemu_info_summary() {
    "$QEMU_IMG" info -U --output=json "$1" 2>/dev/null | "$PYTHON" -c '
import json, sys
v = json.load(sys.stdin)
d = (v.get("format-specific") or {}).get("data") or {}
keep = {k: v.get(k) for k in ("format", "virtual-size", "cluster-size", "backing-filename",
                              "backing-filename-format", "dirty-flag", "encrypted")}
keep.update({k: d.get(k) for k in ("compat", "lazy-refcounts", "refcount-bits", "corrupt",
                                   "extended-l2", "compression-type", "data-file")})
print(json.dumps(keep, sort_keys=True))'
}

# vd_with_timeout SECONDS CMD...: runs CMD, killing it (and failing with 124) when slow.
vd_with_timeout() {
    local t=$1
    shift
    timeout -k 5 "$t" "$@"
}

# Hands a list of random operations (diff-ops.py gen) to vdisk io or qemu-io in batches.
# apply_ops TOOL IMG OPSFILE [FMT]; TOOL is "vdisk" or "qemu-io". Output goes to stdout.
apply_ops() {
    local tool=$1 img=$2 ops=$3 fmt=${4:-qcow2}
    local cmd
    if [ "$tool" = vdisk ]; then
        cmd="$VDISK io"
    else
        cmd="$QEMU_IO"
    fi
    "$PYTHON" "$VD_TESTS/interop/diff-ops.py" apply --tool "$cmd" --format "$fmt" \
        --image "$img" --ops "$ops"
}

# make_snapshot_chain: a.qcow2 with three internal snapshots — s1 (1 MiB: 0x11 at 0, 0x12 at
# 512k), "1" (after a resize to 2 MiB: 0x22 at 0, a zeroed and a compressed cluster) and
# s3 — and an active image that moved on since (ids: 1 = s1, 2 = "1", 3 = s3). For the tests
# of reading snapshots in place (convert -l, nbd -l).
make_snapshot_chain() {
    "$QEMU_IMG" create -q -f qcow2 a.qcow2 1M
    "$QEMU_IO" -c 'write -P 0x11 0 64k' -c 'write -P 0x12 512k 4k' a.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c s1 a.qcow2
    "$QEMU_IO" -c 'write -P 0x22 0 64k' -c 'write -z 512k 64k' a.qcow2 >/dev/null
    "$QEMU_IMG" resize -q a.qcow2 2M
    "$QEMU_IO" -c 'write -c -P 0x23 1M 64k' a.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c 1 a.qcow2
    "$QEMU_IO" -c 'write -P 0x33 0 128k' -c 'write -P 0x34 1536k 4k' a.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c s3 a.qcow2
    "$QEMU_IO" -c 'write -P 0x44 64k 64k' a.qcow2 >/dev/null
}
