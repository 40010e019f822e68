#!/usr/bin/env bash
# Backup jobs and copy-before-write against qemu-storage-daemon (tests/interop/qmp_backup.py):
# the same QMP sessions on both daemons give the same replies and, job by job, the same
# events (sync full, top, none, bitmap and incremental, bitmap-mode after success, failure
# and cancel, copy cluster sizes, target errors under every policy, refusals, grouped and
# failing transactions, drive-backup); a full and three incremental backups under fio on
# both daemons, each incremental holding its bitmap's clusters and each point restored
# equal to a copy taken at its start; a grouped transaction over three disks holding one
# instant of a counter written to all three, and one failing target ending every job;
# fleecing read by nbdcopy and nbdinfo under fio; kill -9 during backups (clean images,
# no acknowledged write lost) and source read errors under every policy.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-storage-daemon fio nbdcopy nbdinfo
"$PYTHON" -c 'import nbd' 2>/dev/null || { echo "SKIP: python3-libnbd missing"; exit 77; }
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}

for mode in events chain group fleece crash; do
    mkdir -p "$VD_TESTDIR/$mode"
    args=("$VDISKD")
    case $mode in
    events | chain) args+=(qemu-storage-daemon "$VD_TESTDIR/$mode") ;;
    *) args+=("$VD_TESTDIR/$mode") ;;
    esac
    "$PYTHON" "$VD_TESTS/interop/qmp_backup.py" "$mode" "${args[@]}" >"$mode.out" 2>&1
    rc=$?
    cat "$mode.out"
    grep -q '^FAIL' "$mode.out" && VD_NFAIL=$((VD_NFAIL + 1))
    if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$mode.out"; then
        fail "backup-$mode" "qmp_backup.py $mode ended with status $rc" "$mode.out"
    fi
    rm -rf "${VD_TESTDIR:?}/$mode"
done
vd_finish
