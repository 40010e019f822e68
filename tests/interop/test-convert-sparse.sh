#!/usr/bin/env bash
# convert -S: a stretch of zeros that the source stores as data becomes a hole in the
# target wherever qemu-img makes one, including a stretch shorter than -S when it is all
# the source has there; and convert -n refuses -o as qemu-img does.
. "$(dirname "$0")/../lib.sh"
vd_init

# A 1 KiB-cluster source: 64 KiB of stored zeros, data at 0, 8k and 17k, and a lone 1 KiB
# cluster of stored zeros at 65k.
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=1k src.qcow2 64M
for c in 'write -P 0 0 64k' 'write 0 1k' 'write 8k 1k' 'write 17k 1k' 'write -P 0 65k 1k'; do
    "$QEMU_IO" -c "$c" src.qcow2 >/dev/null
done

for s in 4k 8k 64k; do
    for c in "" -c; do
        name=S$s${c:+-compressed}
        rm -f v.qcow2 q.qcow2
        # shellcheck disable=SC2086
        "$VDISK" convert -O qcow2 -o cluster_size=1k $c -S "$s" src.qcow2 v.qcow2 >out.txt 2>&1 ||
            { fail "$name/convert" "vdisk convert failed" out.txt; continue; }
        # shellcheck disable=SC2086
        "$QEMU_IMG" convert -O qcow2 -o cluster_size=1k $c -S "$s" src.qcow2 q.qcow2
        "$QEMU_IMG" map --output=json v.qcow2 | sed 's/, "offset": [0-9]*//' >v.map
        "$QEMU_IMG" map --output=json q.qcow2 | sed 's/, "offset": [0-9]*//' >q.map
        cmp -s v.map q.map && pass "$name/same-map" ||
            { diff v.map q.map >d.out; fail "$name/same-map" "differs from qemu-img's" d.out; }
        "$QEMU_IMG" compare -q src.qcow2 v.qcow2 >cmp.out 2>&1 && pass "$name/same-data" ||
            fail "$name/same-data" "differs from the source" cmp.out
    done
done

# -n with -o: refused before anything is opened.
"$QEMU_IMG" create -q -f qcow2 dst.qcow2 64M
sha256sum dst.qcow2 >dst.sum
"$VDISK" convert -n -o cluster_size=4k -O qcow2 src.qcow2 dst.qcow2 >out.txt 2>&1
rc=$?
[ "$rc" = 1 ] && grep -q '^vdisk: -o has no effect when skipping image creation$' out.txt &&
    sha256sum -c --quiet dst.sum && pass n-with-o-refused ||
    fail n-with-o-refused "exit $rc" out.txt

vd_finish
