#!/usr/bin/env bash
# `vdisk nbd -A` offers the qemu:allocation-depth meta context as qemu-nbd -A does, and
# answers it the same way (0 unallocated, N allocated in the Nth image of the chain), on
# its own and together with base:allocation in one request; without -A it is not offered.
# Each case serves the same image with qemu-nbd and with vdisk and compares what nbdinfo
# and libnbd see.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo qemu-nbd
"$PYTHON" -c 'import nbd' 2>/dev/null || { echo "SKIP: python3-libnbd missing"; exit 77; }
. "$VD_TESTS/interop/nbd_side_by_side.sh"

# A three-image chain with data, zero clusters and discards at each depth, a chain over a
# shorter raw base (past its end nothing is allocated), and a lone image.
"$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
"$QEMU_IO" -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' -c 'write -z 3584k 64k' \
    base.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
"$QEMU_IO" -c 'write -P 3 64k 64k' -c 'write -z 2M 64k' -c 'write -P 5 1M 4k' \
    mid.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
"$QEMU_IO" -c 'write -P 4 0 32k' -c 'discard 3M 64k' -c 'write -P 6 2M 512' \
    top.qcow2 >/dev/null
"$QEMU_IMG" create -q -f raw short.raw 1M
"$QEMU_IO" -f raw -c 'write -P 7 0 512k' short.raw >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b short.raw -F raw over-short.qcow2 3M
"$QEMU_IO" -c 'write -P 8 768k 512k' -c 'write -P 9 2M 64k' over-short.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 lone.qcow2 2M
"$QEMU_IO" -c 'write -P 1 64k 64k' lone.qcow2 >/dev/null

depth_map() { nbdinfo --map=qemu:allocation-depth "$NBD_URI"; }
base_map() { nbdinfo --map "$NBD_URI"; }
contexts() { nbdinfo "$NBD_URI" | sed -n '/contexts:/,/is_/p'; }
both() {
    "$PYTHON" "$VD_TESTS/interop/nbd_contexts.py" "$NBD_URI" base:allocation \
        qemu:allocation-depth -- 0 4194304 65536 100 req_one 1048576 3145728 \
        3145728 1048576 req_one
}
for img in top.qcow2 mid.qcow2 base.qcow2 over-short.qcow2 lone.qcow2; do
    nbd_compare "allocation-depth-map: $img" depth_map -A "$img"
    nbd_compare "allocation-depth-base-map: $img" base_map -A "$img"
done
nbd_compare "allocation-depth-read-only" depth_map -A -r top.qcow2
nbd_compare "allocation-depth-raw" depth_map -A -f raw short.raw
nbd_compare "allocation-depth-contexts-listed" contexts -A top.qcow2
nbd_compare "allocation-depth-not-without-A" contexts top.qcow2
nbd_compare "allocation-depth-absent-without-A" depth_map top.qcow2
nbd_compare "allocation-depth-both-contexts" both -A top.qcow2
nbd_compare "allocation-depth-both-contexts-short-backing" both -A over-short.qcow2
vd_finish
