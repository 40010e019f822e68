#!/usr/bin/env bash
# Block replication (COLO) between two vdiskd processes (tests/interop/qmp_replication.py):
# a primary (quorum over its disk and a replication node over an NBD client) and a
# secondary (replication over active -> hidden -> the disk it exports), over a unix socket
# and over TCP, writers on both sides and a checkpoint every second for REPL_SECONDS
# (default 8; `make check-replication` runs the one-minute form): the tops equal at each
# checkpoint;
# the primary killed mid-write and the secondary failed over to the last checkpoint, byte
# for byte; the secondary killed instead, the primary going on with nothing lost, and a
# new secondary synced by a mirror; refusals, and the option checks against
# qemu-storage-daemon.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-storage-daemon
"$PYTHON" -c 'import nbd' 2>/dev/null || { echo "SKIP: python3-libnbd missing"; exit 77; }
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
seconds=${REPL_SECONDS:-8}

for mode in colo-unix colo-tcp lost refusals; do
    mkdir -p "$VD_TESTDIR/$mode"
    case $mode in
    colo-*) args=(colo "$VDISKD" "$VD_TESTDIR/$mode" "${mode#colo-}" "$seconds") ;;
    lost) args=(lost "$VDISKD" "$VD_TESTDIR/$mode") ;;
    refusals) args=(refusals "$VDISKD" qemu-storage-daemon "$VD_TESTDIR/$mode") ;;
    esac
    "$PYTHON" "$VD_TESTS/interop/qmp_replication.py" "${args[@]}" >"$mode.out" 2>&1
    rc=$?
    cat "$mode.out"
    grep -q '^FAIL' "$mode.out" && VD_NFAIL=$((VD_NFAIL + 1))
    if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$mode.out"; then
        fail "replication-$mode" "qmp_replication.py $mode ended with status $rc" "$mode.out"
    fi
    rm -rf "${VD_TESTDIR:?}/$mode"
done
vd_finish
