#!/usr/bin/env bash
# block-commit and block-stream against qemu-storage-daemon (tests/interop/qmp_history.py):
# intermediate commit, active commit with pivot, stream with and without base-node,
# refusals, on-error report/stop/ignore on a failing base write and cancel mid-job, on both
# daemons over identical chains: replies, events, backing strings and contents equal,
# images check clean; each job while a writer writes the disk over NBD (contents equal a
# raw reference with the same writes); kill -9 mid-commit (clean images, acknowledged
# writes there, the commit run again gives the right contents).
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-storage-daemon qemu-io
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}

for mode in events load crash; do
    mkdir -p "$VD_TESTDIR/$mode"
    args=("$VDISKD")
    case $mode in
    events) args+=(qemu-storage-daemon "$VD_TESTDIR/$mode") ;;
    *) args+=("$VD_TESTDIR/$mode") ;;
    esac
    "$PYTHON" "$VD_TESTS/interop/qmp_history.py" "$mode" "${args[@]}" >"$mode.out" 2>&1
    rc=$?
    cat "$mode.out"
    grep -q '^FAIL' "$mode.out" && VD_NFAIL=$((VD_NFAIL + 1))
    if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$mode.out"; then
        fail "history-$mode" "qmp_history.py $mode ended with status $rc" "$mode.out"
    fi
    rm -rf "${VD_TESTDIR:?}/$mode"
done
vd_finish
