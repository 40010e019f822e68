#!/usr/bin/env bash
# Images named by options instead of a filename: `json:{...}` filenames, `--image-opts`
# option lists and qemu-io's `open -o` / `reopen -o`, with the drivers QEMU's blockdev
# shape names (qcow2 with a nested file, backing given or null, raw with offset and size,
# blkdebug with rules and limits, null-co). Each case runs the same command through vdisk
# (as qemu-img / qemu-io, via symlinks) and through QEMU's tool, and compares what they
# print: the bytes read, the map, and the error for options that are wrong.
. "$(dirname "$0")/../lib.sh"
vd_init

mkdir links
ln -s "$VDISK" links/qemu-img
ln -s "$VDISK" links/qemu-io
VIMG=$PWD/links/qemu-img
VIO=$PWD/links/qemu-io

# Two layers with different data, and a raw file with a distinct 64 KiB in the middle.
"$QEMU_IMG" create -q -f qcow2 base.qcow2 1M
"$QEMU_IO" -c 'write -P 0x11 0 256k' base.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1M
"$QEMU_IO" -c 'write -P 0x22 64k 64k' top.qcow2 >/dev/null
head -c 1M /dev/zero >r.img
"$QEMU_IO" -f raw -c 'write -P 0x33 64k 64k' -c 'write -P 0x44 128k 64k' r.img >/dev/null

# Reads: the whole disk converted to raw, and the map, for each way of naming it.
i=0
while IFS= read -r spec; do
    i=$((i + 1))
    n=read$i
    "$VIMG" convert -O raw "$spec" v.raw >v.err 2>&1
    "$QEMU_IMG" convert -O raw "$spec" q.raw >q.err 2>&1
    if [ -s q.raw ] && cmp -s v.raw q.raw; then
        pass "$n/data"
    else
        fail "$n/data" "convert of $spec: vdisk and qemu-img read other bytes" v.err
    fi
    "$VIMG" map --output=json "$spec" >v.map 2>&1
    "$QEMU_IMG" map --output=json "$spec" >q.map 2>&1
    same_output "$n/map" v.map q.map
    rm -f v.raw q.raw
done <<'EOF'
json:{"driver": "qcow2", "file": {"driver": "file", "filename": "top.qcow2"}}
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'backing': null}
json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'top.qcow2'}, 'backing': {'driver': 'raw', 'file': {'driver': 'file', 'filename': 'r.img'}}}
json:{'driver': 'raw', 'offset': 65536, 'size': 131072, 'file': {'driver': 'file', 'filename': 'r.img'}}
json:{'driver': 'qcow2', 'file': {'driver': 'blkdebug', 'image': {'driver': 'file', 'filename': 'top.qcow2'}, 'align': 4096}}
json:{'driver': 'qcow2', 'lazy-refcounts': true, 'cache-size': '1M', 'l2-cache-entry-size': 4096, 'file.filename': 'top.qcow2'}
json:{'driver': 'null-co', 'size': '1M', 'read-zeroes': true}
EOF

# --image-opts: the same options as a key=value list.
"$VIMG" convert -O raw --image-opts driver=qcow2,file.driver=file,file.filename=top.qcow2 v.raw \
    >v.err 2>&1
"$QEMU_IMG" convert -O raw --image-opts driver=qcow2,file.driver=file,file.filename=top.qcow2 \
    q.raw >q.err 2>&1
[ -s q.raw ] && cmp -s v.raw q.raw && pass image-opts/convert ||
    fail image-opts/convert "vdisk and qemu-img read other bytes" v.err
"$VIMG" info --image-opts driver=qcow2,file.filename=top.qcow2 >v.info 2>&1
"$QEMU_IMG" info --image-opts driver=qcow2,file.filename=top.qcow2 >q.info 2>&1
same_output image-opts/info v.info q.info
"$VIMG" compare --image-opts driver=qcow2,file.filename=top.qcow2 \
    "driver=raw,file.filename=v.raw" >v.cmp 2>&1
"$QEMU_IMG" compare --image-opts driver=qcow2,file.filename=top.qcow2 \
    "driver=raw,file.filename=v.raw" >q.cmp 2>&1
same_output image-opts/compare v.cmp q.cmp

# Options that are wrong: the same message from both (program name included).
i=0
while IFS= read -r spec; do
    i=$((i + 1))
    "$VIMG" info "$spec" >v.err 2>&1
    "$QEMU_IMG" info "$spec" >q.err 2>&1
    same_output "bad$i" v.err q.err
done <<'EOF'
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'foo': 1}
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'lazy-refcounts': 'maybe'}
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'cache-size': '1M', 'l2-cache-size': '2M'}
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'cache-size': '1M', 'refcount-cache-size': '2M'}
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'cache-size': '1M', 'l2-cache-size': '64k', 'refcount-cache-size': '64k'}
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'l2-cache-entry-size': '33k'}
json:{'driver': 'raw', 'size': 1000, 'file.filename': 'r.img'}
json:{'driver': 'raw', 'offset': 2097152, 'file.filename': 'r.img'}
json:{'driver': 'raw', 'offset': 65536, 'size': 1048576, 'file.filename': 'r.img'}
json:{'driver': 'file', 'filename': '.'}
json:{'driver': 'nosuchdriver', 'filename': 'r.img'}
json:{'driver': 'qcow2', 'file': {'driver': 'blkdebug', 'align': 3, 'image.filename': 'top.qcow2'}}
json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'top.qcow2', 'bar': 'x'}}
json:{'driver': 'qcow2', 'node-name': '1abc', 'file.filename': 'top.qcow2'}
EOF

# Fault injection from options: an error at the first L2 table load fails the read, in
# both; the same rule by event and state as a config-free list.
rule="json:{'driver': 'qcow2', 'file': {'driver': 'blkdebug', 'inject-error': [{'event': 'l2_load'}], 'image.filename': 'top.qcow2'}}"
"$VIO" -c 'read -P 0x22 64k 64k' "$rule" 2>&1 | sed 's/[0-9.]* [KMG]*i*B\/sec.*//' >v.out
"$QEMU_IO" -c 'read -P 0x22 64k 64k' "$rule" 2>&1 | sed 's/[0-9.]* [KMG]*i*B\/sec.*//' >q.out
grep -q 'read failed: Input/output error' q.out && same_output blkdebug/inject-l2-load v.out q.out ||
    fail blkdebug/inject-l2-load "qemu-io did not fail the read" q.out

# qemu-io: open -o with a blkdebug filename and limits on it, reopen -o with QEMU's
# refusals, and a protocol opened alone.
cat >script.txt <<'EOF'
open -o driver=qcow2,file.align=4k,file.max-transfer=64k blkdebug::top.qcow2
read -P 0x22 65536 65536
write -P 0x55 1000 131072
read -P 0x55 1000 131072
reopen -o lazy-refcounts=on
reopen -o node-name=foo
reopen -o file.driver=qcow2
reopen -o driver=qcow2
reopen -r -o read-only=on
reopen -c none -o cache.direct=on
reopen -o cache.no-flush=bar
reopen -o l2-cache-entry-size=128k
read -P 0x55 1000 131072
close
open -o driver=null-co,size=1M
info
EOF
filter() { sed 's/ops; .*/ops/'; }
for t in v q; do
    mkdir "$t" && cp base.qcow2 top.qcow2 "$t/"
done
(cd v && "$VIO" <../script.txt 2>&1 | filter >../v.out)
(cd q && "$QEMU_IO" <../script.txt 2>&1 | filter >../q.out)
same_output qemu-io/open-reopen-options v.out q.out
qemu_check_clean v/top.qcow2 chk.txt && pass qemu-io/image-clean ||
    fail qemu-io/image-clean "qemu-img check" chk.txt
"$QEMU_IMG" compare v/top.qcow2 q/top.qcow2 >cmp.txt 2>&1 && pass qemu-io/same-image-data ||
    fail qemu-io/same-image-data "the images differ after the same writes" cmp.txt

vd_finish
