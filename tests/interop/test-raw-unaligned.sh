#!/usr/bin/env bash
# Raw files whose length is not a multiple of 512: as in QEMU, the disk is the file rounded
# up to whole sectors and the tail past the end of the file reads as zeros. Size, reads,
# map, a write over the tail, convert and an NBD export all agree with qemu-img, qemu-io
# and qemu-nbd run on a twin file.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo
D=$VD_TESTDIR

for len in 320 1000 513 66047; do
    n=len$len
    head -c "$len" /dev/urandom >v.img
    cp v.img q.img

    a=$("$VDISK" info --output=json -f raw v.img | "$PYTHON" -c \
        'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    want=$(qemu_info_field q.img virtual-size)
    [ "$a" = "$want" ] && [ "$a" = $(((len + 511) / 512 * 512)) ] && pass "$n/virtual-size" ||
        fail "$n/virtual-size" "vdisk says $a, qemu-img $want"

    size=$want
    "$VDISK" io -f raw -c "read -v 0 $size" v.img 2>&1 | head -n -1 >v.out
    "$QEMU_IO" -f raw -c "read -v 0 $size" q.img 2>&1 | head -n -1 >q.out
    cmp -s v.out q.out && pass "$n/read-whole-disk" ||
        { diff v.out q.out >d.out; fail "$n/read-whole-disk" "differs from qemu-io" d.out; }

    "$VDISK" map --output=json -f raw v.img >v.map 2>&1
    "$QEMU_IMG" map --output=json -f raw q.img >q.map 2>&1
    cmp -s v.map q.map && pass "$n/map" ||
        { diff v.map q.map >d.out; fail "$n/map" "differs from qemu-img map" d.out; }

    # Writing the last sector extends the file to the disk's size, as QEMU does.
    last=$((size - 512))
    "$VDISK" io -f raw -c "write -P 0x5c $last 512" v.img >/dev/null 2>&1
    "$QEMU_IO" -f raw -c "write -P 0x5c $last 512" q.img >/dev/null 2>&1
    cmp -s v.img q.img && [ "$(stat -c %s v.img)" = "$size" ] && pass "$n/write-tail" ||
        fail "$n/write-tail" "file is $(stat -c %s v.img) bytes, qemu-io's $(stat -c %s q.img)"
done

# convert to qcow2 keeps the rounded size and the zero tail.
head -c 1000 /dev/urandom >c.img
"$VDISK" convert -f raw -O qcow2 c.img c.qcow2 >out.txt 2>&1
[ "$(qemu_info_field c.qcow2 virtual-size)" = 1024 ] &&
    "$QEMU_IMG" compare -q -f raw -F qcow2 c.img c.qcow2 >cmp.txt 2>&1 &&
    pass convert/same-as-source || fail convert/same-as-source "size or data differ" cmp.txt

# Over NBD: the export is 1024 bytes, the tail reads as zeros.
rm -f "$D/n.sock"
"$VDISK" nbd -t -f raw -k "$D/n.sock" c.img >nbd.log 2>&1 &
srv=$!
for _ in $(seq 100); do [ -S "$D/n.sock" ] && break; sleep 0.05; done
u="nbd+unix:///?socket=$D/n.sock"
[ "$(nbdinfo --size "$u" 2>&1)" = 1024 ] && pass nbd/export-size ||
    fail nbd/export-size "nbdinfo says $(nbdinfo --size "$u" 2>&1)"
"$QEMU_IO" -f raw -c 'read -P 0 1000 24' "$u" >out.txt 2>&1 && pass nbd/tail-reads-zeros ||
    fail nbd/tail-reads-zeros "qemu-io over NBD" out.txt
"$QEMU_IMG" compare -q -f raw -F raw c.img "$u" >cmp.txt 2>&1 && pass nbd/same-data ||
    fail nbd/same-data "the export differs from the file" cmp.txt
kill "$srv" 2>/dev/null
wait "$srv" 2>/dev/null

vd_finish
