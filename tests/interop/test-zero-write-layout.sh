#!/usr/bin/env bash
# A write-zeroes smaller than a cluster makes the whole cluster a zero cluster, with no data
# written, when the rest of the cluster already reads as zeros by the metadata of the whole
# backing chain (as QEMU does); otherwise zeros are written as data. Each case runs the same
# qemu-io commands through vdisk io and qemu-io on twin chains and compares the allocation
# map, the file size and the guest data.
. "$(dirname "$0")/../lib.sh"
vd_init

# case NAME BACKING-SETUP TOP-CMDS...: BACKING-SETUP is a shell snippet run with $B set to
# the backing file's name (it creates it); the top overlay is 1 MiB, 64 KiB clusters.
zcase() {
    local name=$1 setup=$2
    shift 2
    local -a c=()
    local x t
    for x in "$@"; do c+=(-c "$x"); done
    for t in v q; do
        rm -f "$t.b" "$t.qcow2"
        B=$t.b eval "$setup"
        local bfmt
        bfmt=$("$QEMU_IMG" info --output=json "$t.b" | "$PYTHON" -c \
            'import json,sys; print(json.load(sys.stdin)["format"])')
        "$QEMU_IMG" create -q -f qcow2 -b "$t.b" -F "$bfmt" "$t.qcow2" 1M
    done
    "$VDISK" io "${c[@]}" v.qcow2 >v.out 2>&1 || { fail "$name/vdisk-io" "failed" v.out; return; }
    "$QEMU_IO" "${c[@]}" q.qcow2 >q.out 2>&1
    "$QEMU_IMG" map --output=json v.qcow2 | sed 's/, "offset": [0-9]*//' >v.map
    "$QEMU_IMG" map --output=json q.qcow2 | sed 's/, "offset": [0-9]*//' >q.map
    if cmp -s v.map q.map && [ "$(stat -c %s v.qcow2)" = "$(stat -c %s q.qcow2)" ]; then
        pass "$name/same-layout"
    else
        { diff v.map q.map; echo "sizes $(stat -c %s v.qcow2) $(stat -c %s q.qcow2)"; } >d.out
        fail "$name/same-layout" "map or file size differ from qemu-io's" d.out
    fi
    "$QEMU_IMG" compare -q v.qcow2 q.qcow2 >cmp.out 2>&1 && pass "$name/same-data" ||
        fail "$name/same-data" "guest data differs" cmp.out
    qemu_check_clean v.qcow2 chk.out && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.out
}

empty_qcow2='"$QEMU_IMG" create -q -f qcow2 "$B" 1M'
data_qcow2='"$QEMU_IMG" create -q -f qcow2 "$B" 1M; "$QEMU_IO" -c "write -P 9 0 64k" -c "write -z 128k 64k" "$B" >/dev/null'
deep_chain='"$QEMU_IMG" create -q -f qcow2 "$B.base" 1M; "$QEMU_IO" -c "write -P 7 64k 4k" "$B.base" >/dev/null; "$QEMU_IMG" create -q -f qcow2 -b "$B.base" -F qcow2 "$B" 1M'
sparse_raw='truncate -s 1M "$B"; printf "x" | dd of="$B" bs=1 seek=70000 conv=notrunc 2>/dev/null'
short_qcow2='"$QEMU_IMG" create -q -f qcow2 "$B" 96k'

zcase over-empty-backing "$empty_qcow2" 'write -z 4k 4k' 'write -z 200k 1k'
zcase over-backing-data "$data_qcow2" 'write -z 4k 4k'
zcase over-backing-zero-cluster "$data_qcow2" 'write -z 132k 4k'
zcase over-top-data "$empty_qcow2" 'write -P 1 256k 4k' 'write -z 260k 4k'
zcase deep-chain-data "$deep_chain" 'write -z 0 4k' 'write -z 192k 4k'
zcase raw-backing-holes "$sparse_raw" 'write -z 4k 4k' 'write -z 68k 1k'
zcase past-short-backing "$short_qcow2" 'write -z 100k 4k' 'write -z 64k 4k'

# Extended L2: zeroing up to an end of the disk that falls inside a cluster marks only the
# subclusters the disk reaches (QEMU's bitmap), not all 32.
l2_entry() {
    "$PYTHON" - "$VD_TESTS" "$1" "$2" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
img = q.Image(sys.argv[2])
l2 = img.l1()[0] & 0x00fffffffffffe00
print(img.read(l2 + int(sys.argv[3]) * 16, 16).hex())
PY
}
for t in v q; do
    rm -f "$t.qcow2"
    "$QEMU_IMG" create -q -f qcow2 -o extended_l2=on "$t.qcow2" $((2048 + 35))k
done
"$VDISK" io -c 'write -z 2048k 35k' v.qcow2 >v.out 2>&1
"$QEMU_IO" -c 'write -z 2048k 35k' q.qcow2 >q.out 2>&1
[ "$(l2_entry v.qcow2 32)" = "$(l2_entry q.qcow2 32)" ] && pass extl2-zero-to-disk-end ||
    fail extl2-zero-to-disk-end "L2 entry $(l2_entry v.qcow2 32), qemu-io's $(l2_entry q.qcow2 32)"

vd_finish
