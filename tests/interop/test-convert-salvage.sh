#!/usr/bin/env bash
# convert --salvage: sectors that cannot be read become zeros in the target, each with
# qemu-img's warning, and the convert succeeds; without --salvage it stops at the error.
# Also qemu-img's refusals of -C (copy offloading) with -S, -c and --salvage.
. "$(dirname "$0")/../lib.sh"
vd_init

"$QEMU_IMG" create -q -f qcow2 src.qcow2 4M
"$QEMU_IO" -c 'write -P 7 0 4M' src.qcow2 >/dev/null

# same NAME ARGS...: convert ARGS by both tools (the output named OUT.TOOL): same stderr
# (the program name aside), exit code and target bytes.
same() {
    local name=$1
    shift
    rm -f out.v out.q
    "$VDISK" convert "${@/OUT/out.v}" >v.err 2>&1
    local vrc=$?
    "$QEMU_IMG" convert "${@/OUT/out.q}" >q.err 2>&1
    local qrc=$?
    sed -i 's/^[a-z-]*: //' v.err q.err
    local bytes=same
    if [ -f out.v ] || [ -f out.q ]; then
        cmp -s out.v out.q || bytes=different
    fi
    if [ "$vrc" = "$qrc" ] && cmp -s v.err q.err && [ $bytes = same ]; then
        pass "$name"
    else
        { echo "exit $vrc vs $qrc, target bytes $bytes"; diff v.err q.err; } >d.out
        fail "$name" "differs from qemu-img" d.out
    fi
}

for spec in "one:2048" "two:2048 2100" "first:1" "metadata:0"; do
    name=${spec%%:*}
    : >bd.conf
    for sec in ${spec#*:}; do
        printf '[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "%s"\n\n' "$sec" >>bd.conf
    done
    same "salvage-$name" --salvage -O raw blkdebug:bd.conf:src.qcow2 OUT
    same "no-salvage-$name" -O raw blkdebug:bd.conf:src.qcow2 OUT
done
same salvage-quiet -q --salvage -O raw blkdebug:bd.conf:src.qcow2 OUT
same copy-offload-with-S -C -S 4k -O qcow2 src.qcow2 OUT
same copy-offload-with-c -C -c -O qcow2 src.qcow2 OUT
same copy-offload-with-salvage -C --salvage -O qcow2 src.qcow2 OUT
same copy-offload-alone -C -O raw src.qcow2 OUT

vd_finish
