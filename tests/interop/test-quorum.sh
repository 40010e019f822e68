#!/usr/bin/env bash
# The quorum driver and x-blockdev-change against qemu-storage-daemon
# (tests/interop/qmp_quorum.py): the same QMP sessions on both daemons give the same replies
# and, node by node, the same QUORUM_REPORT_BAD and QUORUM_FAILURE events through QEMU's
# one-a-second limit (refused options and changes; reads through NBD exports over a
# corrupted child, failing children and a failed vote; children added and removed under
# I/O; a mirror from a quorum), and the same files; then vdiskd alone: writes under a
# child coming and going, and a blkverify mismatch failing the read where QEMU exits.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-storage-daemon
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}

for mode in compare load; do
    mkdir -p "$VD_TESTDIR/$mode"
    args=("$VDISKD")
    case $mode in
    compare) args+=(qemu-storage-daemon "$VD_TESTDIR/$mode") ;;
    *) args+=("$VD_TESTDIR/$mode") ;;
    esac
    "$PYTHON" "$VD_TESTS/interop/qmp_quorum.py" "$mode" "${args[@]}" >"$mode.out" 2>&1
    rc=$?
    cat "$mode.out"
    grep -q '^FAIL' "$mode.out" && VD_NFAIL=$((VD_NFAIL + 1))
    if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$mode.out"; then
        fail "quorum-$mode" "qmp_quorum.py $mode ended with status $rc" "$mode.out"
    fi
    rm -rf "${VD_TESTDIR:?}/$mode"
done
vd_finish
