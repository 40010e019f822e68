#!/usr/bin/env bash
# Live disk migration between two vdiskd processes in two network namespaces joined by a
# veth pair (tests/interop/qmp_migration.py, tests/interop/netns-pair.sh), with a real ext4
# image (bench/mkfs-image.sh) and fio writing into the source during the migration: the
# destination ends byte-equal to the source and both check clean, for multifd compression
# none/zlib/zstd x channels 1/4 x plain/TLS; then the faults (link down, link gone,
# destination killed, destination or source told SIGTERM, a chunk corrupted on the way,
# migrate-cancel in setup, active and device): the source keeps serving (or, told to stop,
# stops within 10 s), no acknowledged write is lost, the destination never exports the
# disk.
# Short form (make check): MIG_SIZE 256M, cases zstd-4-tls none-1-plain zlib-4-plain, every
# fault. MIG_FULL=1: MIG_SIZE 4G and all twelve cases. MIG_CASES / MIG_FAULTS choose others
# ("" for none). Needs root for the namespaces (exit 77 otherwise).
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool ip tc fio certtool
[ "$(id -u)" = 0 ] || { echo "SKIP: network namespaces need root"; exit 77; }
"$PYTHON" -c 'import nbd' 2>/dev/null || { echo "SKIP: python3-libnbd missing"; exit 77; }
. "$VD_TESTS/interop/netns-pair.sh"
. "$VD_TESTS/interop/nbd-tls-certs.sh"
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
mig_exit() {
    local rc=$?
    np_cleanup
    (exit $rc)
    _vd_cleanup
}
trap mig_exit EXIT

if [ "${MIG_FULL:-0}" = 1 ]; then
    size=${MIG_SIZE:-4G}
    all=()
    for c in none zlib zstd; do
        for n in 1 4; do
            all+=("$c-$n-plain" "$c-$n-tls")
        done
    done
    cases=${MIG_CASES-${all[*]}}
else
    size=${MIG_SIZE:-256M}
    cases=${MIG_CASES-zstd-4-tls none-1-plain zlib-4-plain}
fi
faults=${MIG_FAULTS-link-down link-gone dest-killed dest-sigterm source-sigterm corrupt-chunk cancel-setup cancel-active
    cancel-device}
bytes=$(numfmt --from=iec "$size") || { fail migration-setup "MIG_SIZE=$size"; vd_finish; }

if ! np_up; then
    fail migration-netns "could not make the network namespaces"
    vd_finish
fi
cache=${MIG_CACHE:-/var/tmp/vdisk-test-cache}
if ! raw=$("$VD_REPO/bench/mkfs-image.sh" --cached "$cache" "$bytes" 2>"$VD_TESTDIR/mkfs.err"); then
    fail migration-image "bench/mkfs-image.sh failed" "$VD_TESTDIR/mkfs.err"
    vd_finish
fi
"$QEMU_IMG" convert -f raw -O qcow2 "$raw" "$VD_TESTDIR/master.qcow2" ||
    { fail migration-image "qemu-img convert failed"; vd_finish; }
if ! { make_tls_certs "$VD_TESTDIR/certs" &&
    make_tls_server_at "$VD_TESTDIR/certs" srv-ip "$NP_ADDR_B"; }; then
    fail migration-tls-certs "certtool failed"
    vd_finish
fi

for mode in matrix faults; do
    if [ "$mode" = matrix ]; then
        # shellcheck disable=SC2086
        set -- $cases
    else
        # shellcheck disable=SC2086
        set -- $faults
    fi
    [ $# -gt 0 ] || continue
    "$PYTHON" "$VD_TESTS/interop/qmp_migration.py" "$mode" "$VDISKD" "$VD_TESTDIR" "$NP_ID" \
        "$raw" "$VD_TESTDIR/master.qcow2" "$VD_TESTDIR/certs" "$@" >"$mode.out" 2>&1
    rc=$?
    cat "$mode.out"
    grep -q '^FAIL' "$mode.out" && VD_NFAIL=$((VD_NFAIL + 1))
    if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$mode.out"; then
        fail "migration-$mode" "qmp_migration.py $mode ended with status $rc" "$mode.out"
    fi
done
vd_finish
