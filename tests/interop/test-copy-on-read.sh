#!/usr/bin/env bash
# Copy-on-read (qemu-io -C, open -C, and the copy-on-read filter named in options): reads of
# what only the backing file holds are copied into the overlay, whole clusters, zeros as
# zero clusters. The same reads through vdisk and qemu-io leave overlays with the same map
# and the same data, both clean; a read-only copy-on-read open is refused with QEMU's words.
. "$(dirname "$0")/../lib.sh"
vd_init

mkdir links
ln -s "$VDISK" links/qemu-io
VIO=$PWD/links/qemu-io

"$QEMU_IMG" create -q -f qcow2 base.qcow2 8M
"$QEMU_IO" -c 'write -P 0x5a 1M 64k' -c 'write -P 0x6b 3M 200k' base.qcow2 >/dev/null

# reads: a partial cluster of data, a zero range inside the backing's extent, a range
# crossing from data into nothing, and a read at the very end.
reads=(-c 'read -P 0x5a 1M 4k' -c 'read -P 0 0 1k' -c 'read 3000k 400k' -c 'read -P 0 8188k 4k')
filter() { sed 's/ops; .*/ops/'; }

for how in flag open filter; do
    for t in v q; do
        "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 "$t-$how.qcow2"
    done
    case $how in
    flag)
        "$VIO" -f qcow2 -C "${reads[@]}" v-$how.qcow2 2>&1 | filter >v.out
        "$QEMU_IO" -f qcow2 -C "${reads[@]}" q-$how.qcow2 2>&1 | filter >q.out ;;
    open)
        "$VIO" -c 'open -C -o driver=qcow2 v-open.qcow2' "${reads[@]}" 2>&1 | filter >v.out
        "$QEMU_IO" -c 'open -C -o driver=qcow2 q-open.qcow2' "${reads[@]}" 2>&1 | filter >q.out ;;
    filter)
        "$VIO" --image-opts "${reads[@]}" \
            driver=copy-on-read,file.driver=qcow2,file.file.filename=v-filter.qcow2 2>&1 |
            filter >v.out
        "$QEMU_IO" --image-opts "${reads[@]}" \
            driver=copy-on-read,file.driver=qcow2,file.file.filename=q-filter.qcow2 2>&1 |
            filter >q.out ;;
    esac
    same_files "$how/reads" q.out v.out
    "$QEMU_IO" -f qcow2 -c map v-$how.qcow2 >v.map 2>&1
    "$QEMU_IO" -f qcow2 -c map q-$how.qcow2 >q.map 2>&1
    same_files "$how/map-after" q.map v.map
    # The overlay alone (no backing) now holds what was read.
    "$QEMU_IMG" convert -O raw "json:{'driver': 'qcow2', 'backing': null, 'file.filename': 'v-$how.qcow2'}" v.raw
    "$QEMU_IMG" convert -O raw "json:{'driver': 'qcow2', 'backing': null, 'file.filename': 'q-$how.qcow2'}" q.raw
    cmp -s v.raw q.raw && pass "$how/overlay-data" ||
        fail "$how/overlay-data" "the overlays hold different data"
    qemu_check_clean v-$how.qcow2 chk.txt && pass "$how/clean" ||
        fail "$how/clean" "qemu-img check" chk.txt
done

"$VIO" -f qcow2 -C -r v-flag.qcow2 >v.err 2>&1
"$QEMU_IO" -f qcow2 -C -r q-flag.qcow2 >q.err 2>&1
sed 's/v-flag/X/' v.err >v2.err
sed 's/q-flag/X/' q.err >q2.err
same_files read-only-refused q2.err v2.err

vd_finish
