#!/usr/bin/env bash
# Block jobs and the mirror job against qemu-storage-daemon (tests/interop/qmp_mirror.py):
# the same QMP sessions on both daemons give the same replies and, job by job, the same
# events (complete, manual finalize and dismiss, cancels before and after READY, soft
# cancel, pause, resume and standby, target write errors under every policy, refused
# arguments and verbs, sync=top and none, write-blocking, quit while jobs run, drive-mirror),
# and the targets compare equal; a sync=full mirror of a MIRROR_SIZE image (default 2 GiB;
# 512 MiB for the sanitized build) under a fio writer, to a local target and to an NBD
# target a second vdiskd serves, and in write-blocking mode under a writer with no limit;
# job-complete while the writer runs, with every acknowledged write read back from the
# target; the seed's whole-cluster case, shown to fail with whole-cluster copies switched
# off; kill -9 during mirrors; SIGTERM during mirrors under a writer (exit 0, clean images).
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-storage-daemon fio
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
case $VDISKD in
*asan*) size=${MIRROR_SIZE:-$((512 << 20))} ;;
*) size=${MIRROR_SIZE:-$((2 << 30))} ;;
esac

for mode in events load seed crash; do
    mkdir -p "$VD_TESTDIR/$mode"
    args=("$VDISKD")
    case $mode in
    events) args+=(qemu-storage-daemon "$VD_TESTDIR/$mode") ;;
    load) args+=("$VD_TESTDIR/$mode" "$size") ;;
    *) args+=("$VD_TESTDIR/$mode") ;;
    esac
    "$PYTHON" "$VD_TESTS/interop/qmp_mirror.py" "$mode" "${args[@]}" >"$mode.out" 2>&1
    rc=$?
    cat "$mode.out"
    grep -q '^FAIL' "$mode.out" && VD_NFAIL=$((VD_NFAIL + 1))
    if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$mode.out"; then
        fail "mirror-$mode" "qmp_mirror.py $mode ended with status $rc" "$mode.out"
    fi
    rm -rf "${VD_TESTDIR:?}/$mode"
done
vd_finish
