#!/usr/bin/env bash
# rebase -u takes any backing format name QEMU knows (it only writes the name), refuses a
# name QEMU does not know, in qemu-img's words; the header then matches qemu-img's.
. "$(dirname "$0")/../lib.sh"
vd_init

for fmtname in host_device qcow2 raw vmdk bogus; do
    for t in v q; do
        rm -f "$t.qcow2"
        "$QEMU_IMG" create -q -f qcow2 "$t.qcow2" 1M
    done
    "$VDISK" rebase -u -b /some/backing/file/path -F "$fmtname" v.qcow2 >v.out 2>&1
    vrc=$?
    "$QEMU_IMG" rebase -u -b /some/backing/file/path -F "$fmtname" q.qcow2 >q.out 2>&1
    qrc=$?
    sed -i 's/^[a-z-]*: //' v.out q.out
    if [ "$vrc" = "$qrc" ] && cmp -s v.out q.out && cmp -s v.qcow2 q.qcow2; then
        pass "rebase-u-F-$fmtname"
    else
        { echo "exit $vrc vs $qrc"; diff v.out q.out; cmp v.qcow2 q.qcow2; } >d.out
        fail "rebase-u-F-$fmtname" "differs from qemu-img" d.out
    fi
done

vd_finish
