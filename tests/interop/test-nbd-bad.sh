#!/usr/bin/env bash
# Hostile NBD traffic (tests/interop/nbd_bad.py, a raw-socket client) against `vdisk nbd`:
# out-of-range, oversized and badly flagged requests get the spec's errors and the
# connection goes on; malformed options are refused while haggling continues; protocol
# violations drop that connection only; a client vanishing mid-write loses no acknowledged
# write; pipelined requests come back by cookie; the image checks clean afterwards. With the
# ASan build too.
. "$(dirname "$0")/../lib.sh"
vd_init

run_bad() {
    local tag=$1 bin=$2
    "$QEMU_IMG" create -q -f qcow2 "$tag.qcow2" 64M
    rm -f "$VD_TESTDIR/$tag.sock"
    "$bin" nbd -t -e 0 -f qcow2 -k "$VD_TESTDIR/$tag.sock" "$tag.qcow2" >"$tag.log" 2>&1 &
    local srv=$!
    for _ in $(seq 100); do [ -S "$VD_TESTDIR/$tag.sock" ] && break; sleep 0.05; done
    "$PYTHON" "$VD_TESTS/interop/nbd_bad.py" "$VD_TESTDIR/$tag.sock" $((64 << 20)) |
        sed "s/^\(PASS\|FAIL\) /\1 $tag-/"
    kill "$srv"
    wait "$srv"
    local rc=$?
    [ $rc = 0 ] && pass "$tag-server-clean-exit" || fail "$tag-server-clean-exit" "exit $rc" "$tag.log"
    qemu_check_clean "$tag.qcow2" check.out && pass "$tag-image-clean" ||
        fail "$tag-image-clean" "qemu-img check" check.out
}
run_bad plain "$VDISK"
[ -x "$VDISK_ASAN" ] && run_bad asan "$VDISK_ASAN"
vd_finish
