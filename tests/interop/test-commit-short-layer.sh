#!/usr/bin/env bash
# qemu-img commit -b over a layer shorter than the top: past that layer's end the top reads
# zeros, and the commit writes those zeros into the base. Each case commits the same chain
# with vdisk and with qemu-img and compares the bases' maps and bytes, what the top reads
# before and after, and qemu-img check. The -t writethrough and -p variants take the same
# path.
. "$(dirname "$0")/../lib.sh"
vd_init

# chain MIDSIZE: base.qcow2 (4M of 0xa1, a zero cluster run), mid.qcow2 of MIDSIZE with
# data, top.qcow2 (4M) with data.
chain() {
    rm -f base.qcow2 mid.qcow2 top.qcow2
    "$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
    "$QEMU_IO" -c "write -P 0xa1 0 3M" -c "write -z 1M 256k" base.qcow2 >/dev/null
    "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 "$1"
    "$QEMU_IO" -c "write -P 0xb2 512k 1M" -c "write -P 0xb3 1500k 7k" mid.qcow2 >/dev/null
    "$QEMU_IMG" create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 4M
    "$QEMU_IO" -c "write -P 0xc4 0 64k" -c "write -P 0xc5 1100k 3k" top.qcow2 >/dev/null
}

# case NAME MIDSIZE ARGS...: vdisk commit ARGS top.qcow2 against qemu-img's.
case_commit() {
    local name=$1 mid=$2
    shift 2
    chain "$mid"
    "$QEMU_IMG" convert -O raw top.qcow2 before.raw
    if ! "$VDISK" commit "$@" top.qcow2 >out.txt 2>&1; then
        fail "$name/commit" "vdisk commit failed" out.txt
        return
    fi
    "$QEMU_IMG" convert -O raw top.qcow2 after.raw
    cmp before.raw after.raw >cmp.txt 2>&1 && pass "$name/top-unchanged" ||
        fail "$name/top-unchanged" "the top reads other bytes after the commit" cmp.txt
    qemu_check_clean base.qcow2 chk.txt && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.txt
    "$QEMU_IMG" map --output=json base.qcow2 >vmap.txt
    mv base.qcow2 vdisk-base.qcow2
    chain "$mid"
    "$QEMU_IMG" commit -q "$@" top.qcow2
    "$QEMU_IMG" map --output=json base.qcow2 >qmap.txt
    same_files "$name/base-map" qmap.txt vmap.txt
    "$QEMU_IMG" compare -q vdisk-base.qcow2 base.qcow2 >cmp.txt 2>&1 &&
        pass "$name/base-same-as-qemu" ||
        fail "$name/base-same-as-qemu" "the bases differ" cmp.txt
}

case_commit short-b 2M -b base.qcow2
case_commit short-b-writethrough 2M -t writethrough -b base.qcow2
case_commit same-size-b 4M -b base.qcow2
case_commit short-default 2M
case_commit short-d-p 2M -d -p

vd_finish
