#!/usr/bin/env bash
# `vdisk nbd -o OFFSET` exports the image from OFFSET on, as qemu-nbd -o does: the same
# size, data, block sizes and block status (qemu-nbd reads through a raw node over the
# image, whose status is the top image's only), writes land at OFFSET in the image, and
# the same complaints about bad offsets.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo nbdcopy qemu-nbd
. "$VD_TESTS/interop/nbd_side_by_side.sh"
D=$VD_TESTDIR

"$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
"$QEMU_IO" -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' base.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
"$QEMU_IO" -c 'write -P 3 64k 64k' -c 'discard 3M 64k' -c 'write -P 4 2M 4k' \
    top.qcow2 >/dev/null
"$QEMU_IMG" create -q -f raw disk.raw 1M
# Alone (unallocated reads as zeros) and over a shorter backing file (zeros past its end).
"$QEMU_IMG" create -q -f qcow2 lone.qcow2 2M
"$QEMU_IO" -c 'write -P 1 64k 64k' -c 'write -z 1M 64k' lone.qcow2 >/dev/null
"$QEMU_IMG" create -q -f raw short.raw 1M
"$QEMU_IMG" create -q -f qcow2 -b short.raw -F raw over-short.qcow2 3M
"$QEMU_IO" -c 'write -P 9 2M 64k' over-short.qcow2 >/dev/null
"$QEMU_IO" -f raw -c 'write -P 5 4k 8k' disk.raw >/dev/null

info() {
    nbdinfo "$NBD_URI" | grep -E 'export-size|is_read_only|block_size|can_'
    nbdinfo --map "$NBD_URI"
    nbdcopy "$NBD_URI" - | md5sum
}
depth() { nbdinfo --map=qemu:allocation-depth "$NBD_URI"; }
for args in "-o 512 top.qcow2" "-o 65536 -r top.qcow2" "-o 0x100000 top.qcow2" \
    "-o 4194304 top.qcow2" "-o 0 top.qcow2" "-o 4096 disk.raw" "-f raw -o 512 disk.raw" \
    "-o 1048576 -f raw disk.raw" "-o 4096 lone.qcow2" "-o 4096 -r over-short.qcow2"; do
    # shellcheck disable=SC2086
    nbd_compare "offset-export: $args" info $args
done
nbd_compare "offset-allocation-depth" depth -A -o 1024 top.qcow2
nbd_compare "offset-allocation-depth-short-backing" depth -A -o 4096 over-short.qcow2

# Writes through the export land at OFFSET in the image.
for who in qemu-nbd vdisk; do
    cp top.qcow2 "w-$who.qcow2"
    if nbd_serve "$who" -f qcow2 -o 65536 "w-$who.qcow2"; then
        "$QEMU_IO" -f raw -c 'write -P 9 1000 5000' -c 'write -z 70000 3000' "$NBD_URI" \
            >"$D/w.log" 2>&1 || cat "$D/w.log"
    fi
    nbd_stop
done
if "$QEMU_IMG" compare -q w-qemu-nbd.qcow2 w-vdisk.qcow2 2>cmp.err &&
    "$QEMU_IO" -c 'read -P 9 66536 5000' w-vdisk.qcow2 >/dev/null; then
    pass "offset-writes-land-at-offset"
else
    fail "offset-writes-land-at-offset" "images differ" cmp.err
fi

# Bad offsets: qemu-nbd's messages, and its exit status, before any socket exists.
for o in abc "" 1k 18446744073709551616 5000000 4194305 9223372036854775807 \
    9223372036854775808 -5; do
    rm -f "$D/s.sock"
    timeout 10 qemu-nbd -k "$D/s.sock" -f qcow2 -o "$o" top.qcow2 >q.err 2>&1
    qrc=$?
    timeout 10 "$VDISK" nbd -k "$D/s.sock" -f qcow2 -o "$o" top.qcow2 >v.err 2>&1
    vrc=$?
    sed -i 's/^qemu-nbd: //' q.err
    sed -i 's/^vdisk: //' v.err
    if [ "$qrc" = "$vrc" ] && [ "$qrc" != 124 ] && diff q.err v.err >diff.out; then
        pass "offset-bad: '$o' ($(head -c 60 v.err | head -n 1))"
    else
        echo "exit: qemu-nbd $qrc, vdisk $vrc" >>diff.out
        fail "offset-bad: '$o'" "differs (< qemu-nbd, > vdisk)" diff.out
    fi
done
vd_finish
