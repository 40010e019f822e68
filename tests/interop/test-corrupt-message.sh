#!/usr/bin/env bash
# A write that would land on metadata marks the image corrupt, and the tools say so as
# QEMU's do: one "qcow2: Marking image as corrupt: ...; further corruption events will be
# suppressed" line, then the failed write; the image is then refused read-write.
. "$(dirname "$0")/../lib.sh"
vd_init

# damage IMG WHAT: points guest cluster 0's L2 entry at the active L1 table or at the
# first refcount block.
damage() {
    "$PYTHON" - "$VD_TESTS" "$1" "$2" <<'PY'
import struct, sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
img = q.Image(sys.argv[2])
l2 = img.l1()[0] & 0x00fffffffffffe00
with open(sys.argv[2], 'rb') as f:
    hdr = f.read(48)
target = struct.unpack('>Q', hdr[40:48])[0] if sys.argv[3] == 'l1' else img.reftable()[0]
q.poke_be64(sys.argv[2], l2, (1 << 63) | target)
PY
}

for what in l1 refblock; do
    for t in v q; do
        rm -f "$t.qcow2"
        "$QEMU_IMG" create -q -f qcow2 "$t.qcow2" 64M
        "$QEMU_IO" -c 'write -P 1 0 64k' "$t.qcow2" >/dev/null
        damage "$t.qcow2" "$what"
    done
    "$VDISK" io -c 'write -P 2 0 64k' v.qcow2 >v.out 2>&1
    "$QEMU_IO" -c 'write -P 2 0 64k' q.qcow2 >q.out 2>&1
    cmp -s v.out q.out && pass "$what/same-output" ||
        { diff v.out q.out >d.out; fail "$what/same-output" "differs from qemu-io's" d.out; }
    [ "$(qemu_info_field v.qcow2 format-specific data corrupt)" = true ] &&
        pass "$what/marked-corrupt" || fail "$what/marked-corrupt" "the corrupt bit is not set"
    "$VDISK" io -c 'write -P 3 0 64k' v.qcow2 >v.out 2>&1
    "$QEMU_IO" -c 'write -P 3 0 64k' q.qcow2 >q.out 2>&1
    sed -i -e 's/^[a-z-]*: //' -e 's/[vq]\.qcow2/IMG/' v.out q.out
    cmp -s v.out q.out && pass "$what/refused-read-write" ||
        { diff v.out q.out >d.out; fail "$what/refused-read-write" "differs from qemu-io's" d.out; }
done

vd_finish
