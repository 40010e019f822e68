#!/usr/bin/env bash
# `vdisk nbd -l SNAPSHOT_PARAM` (--load-snapshot) exports an internal snapshot read-only,
# as qemu-nbd -l does, side by side: the same size, flags, data and block status, the same
# export as `qemu-img convert -l` gives, the same messages and exit status for a snapshot
# that is missing or a bad parameter, and the image is left byte-identical.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo nbdcopy qemu-nbd
. "$VD_TESTS/interop/nbd_side_by_side.sh"
D=$VD_TESTDIR

# The snapshots s1, "1" and s3 of a.qcow2 (tests/lib.sh).
make_snapshot_chain
"$QEMU_IMG" create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2
"$QEMU_IO" -c 'write -P 0x55 1M 4k' top.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c t1 top.qcow2
"$QEMU_IO" -c 'write -P 0x66 0 1M' top.qcow2 >/dev/null
md5sum a.qcow2 top.qcow2 >images.md5

info() {
    nbdinfo "$NBD_URI" | grep -E 'export-size|is_read_only|block_size|can_'
    nbdinfo --map "$NBD_URI"
    nbdcopy "$NBD_URI" - | md5sum
}
depth() { nbdinfo --map=qemu:allocation-depth "$NBD_URI"; }
for args in "-l s1 a.qcow2" "-l 1 a.qcow2" "-l 2 a.qcow2" "-l s3 -r a.qcow2" \
    "--load-snapshot=snapshot.id=1 a.qcow2" "-l snapshot.name=1 a.qcow2" \
    "-l snapshot.id=3,snapshot.name=s3 -f qcow2 a.qcow2" "-l t1 top.qcow2" \
    "-l snapshot.id=1 -l s3 a.qcow2"; do
    # shellcheck disable=SC2086
    nbd_compare "load-snapshot: $args" info $args
done
nbd_compare "load-snapshot-allocation-depth" depth -A -l t1 top.qcow2

# The export is what `qemu-img convert -l` (the real one) makes of the snapshot.
for l in s1 1 snapshot.name=s3; do
    rm -f conv.raw
    "$QEMU_IMG" convert -O raw -l "$l" a.qcow2 conv.raw
    if nbd_serve vdisk -l "$l" a.qcow2 &&
        "$QEMU_IMG" compare -f raw -F raw conv.raw "$NBD_URI" >cmp.out 2>&1; then
        pass "load-snapshot-equals-convert: $l"
    else
        cat "$D/srv.log" >>cmp.out
        fail "load-snapshot-equals-convert: $l" "export differs from qemu-img convert -l" cmp.out
    fi
    nbd_stop
done

# A write to the export fails as qemu-nbd's does (read-only export).
for who in qemu-nbd vdisk; do
    if nbd_serve "$who" -l s1 a.qcow2; then
        "$QEMU_IO" -f raw -c 'write -P 9 0 4k' "$NBD_URI" >"w-$who.out" 2>&1
        echo "exit $?" >>"w-$who.out"
    fi
    nbd_stop
done
sed -i 's/^qemu-io: //' w-qemu-nbd.out w-vdisk.out
if diff w-qemu-nbd.out w-vdisk.out >diff.out; then
    pass "load-snapshot-write-refused ($(head -n 1 w-vdisk.out))"
else
    fail "load-snapshot-write-refused" "differs (< qemu-nbd, > vdisk)" diff.out
fi

# Errors: qemu-nbd's messages and exit status. With an offset qemu-nbd asks the raw node it
# puts over the image, which has no snapshots.
timeout 10 qemu-nbd -k "$D/s.sock" -l "s1" -o 4096 a.qcow2 >q.err 2>&1
qrc=$?
timeout 10 "$VDISK" nbd -k "$D/s.sock" -l "s1" -o 4096 a.qcow2 >v.err 2>&1
vrc=$?
sed -i 's/^qemu-nbd: //' q.err
sed -i 's/^vdisk: //; s/^qemu-nbd: //' v.err
if [ "$qrc" = "$vrc" ] && [ "$qrc" != 124 ] && diff q.err v.err >diff.out; then
    pass "load-snapshot-error: -l s1 -o 4096 ($(head -n 1 v.err | head -c 60))"
else
    echo "exit: qemu-nbd $qrc, vdisk $vrc" >>diff.out
    fail "load-snapshot-error: -l s1 -o 4096" "differs (< qemu-nbd, > vdisk)" diff.out
fi
for l in nope snapshot.id=9 snapshot.id=1,snapshot.name=s3 snapshot.foo=1 \
    snapshot.id=1,noname snapshot.id snapshot.id=1,id=2 ''; do
    for f in a.qcow2 "-f raw a.qcow2"; do
        rm -f "$D/s.sock"
        # shellcheck disable=SC2086
        timeout 10 qemu-nbd -k "$D/s.sock" -l "$l" $f >q.err 2>&1
        qrc=$?
        rm -f "$D/s.sock"
        # shellcheck disable=SC2086
        timeout 10 "$VDISK" nbd -k "$D/s.sock" -l "$l" $f >v.err 2>&1
        vrc=$?
        sed -i 's/^qemu-nbd: //' q.err
        sed -i 's/^vdisk: //; s/^qemu-nbd: //' v.err
        if [ "$qrc" = "$vrc" ] && [ "$qrc" != 124 ] && diff q.err v.err >diff.out; then
            pass "load-snapshot-error: -l '$l' $f ($(head -n 1 v.err | head -c 60))"
        else
            echo "exit: qemu-nbd $qrc, vdisk $vrc" >>diff.out
            fail "load-snapshot-error: -l '$l' $f" "differs (< qemu-nbd, > vdisk)" diff.out
        fi
    done
done

# --list: the bare form is a per-device setting, the option form is not (qemu-nbd's rule).
for l in s1 snapshot.id=1; do
    timeout 10 qemu-nbd -L -l "$l" -k "$D/none.sock" >q.err 2>&1
    qrc=$?
    timeout 10 "$VDISK" nbd -L -l "$l" -k "$D/none.sock" >v.err 2>&1
    vrc=$?
    sed -i 's/^qemu-nbd: //' q.err
    sed -i 's/^vdisk: //; s/^qemu-nbd: //' v.err
    if [ "$qrc" = "$vrc" ] && diff q.err v.err >diff.out; then
        pass "load-snapshot-list-mode: -l '$l' ($(head -n 1 v.err | head -c 60))"
    else
        echo "exit: qemu-nbd $qrc, vdisk $vrc" >>diff.out
        fail "load-snapshot-list-mode: -l '$l'" "differs (< qemu-nbd, > vdisk)" diff.out
    fi
done

if md5sum -c --quiet images.md5 >md5.out 2>&1; then
    pass "load-snapshot-images-unchanged"
else
    fail "load-snapshot-images-unchanged" "an image changed" md5.out
fi
vd_finish
