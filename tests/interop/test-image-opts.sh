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
    same_files "$n/map" v.map q.map
    rm -f v.raw q.raw
done <<'EOF'
json:{"driver": "qcow2", "file": {"driver": "file", "filename": "top.qcow2"}}
json:{'driver': 'qcow2', 'file.filename': 'top.qcow2', 'backing': null}
json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'top.qcow2'}, 'backing': {'driver': 'raw', 'file': {'driver': 'file', 'filename': 'r.img'}}}
json:{'driver': 'raw', 'offset': 65536, 'size': 131072, 'file': {'driver': 'file', 'filename': 'r.img'}}
json:{'driver': 'qcow2', 'file': {'driver': 'blkdebug', 'image': {'driver': 'file', 'filename': 'top.qcow2'}, 'align': 4096}}
json:{'driver': 'qcow2', 'lazy-refcounts': true, 'cache-size': '1M', 'l2-cache-entry-size': 4096, 'file.filename': 'top.qcow2'}
json:{'driver': 'null-co', 'size': '1M', 'read-zeroes': true}
json:{'driver': 'blkdebug', 'image': {'driver': 'qcow2', 'file.filename': 'top.qcow2'}}
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
same_files image-opts/info v.info q.info
"$VIMG" compare --image-opts driver=qcow2,file.filename=top.qcow2 \
    "driver=raw,file.filename=v.raw" >v.cmp 2>&1
"$QEMU_IMG" compare --image-opts driver=qcow2,file.filename=top.qcow2 \
    "driver=raw,file.filename=v.raw" >q.cmp 2>&1
same_files image-opts/compare v.cmp q.cmp

# Options that are wrong: the same message from both (program name included).
i=0
while IFS= read -r spec; do
    i=$((i + 1))
    "$VIMG" info "$spec" >v.err 2>&1
    "$QEMU_IMG" info "$spec" >q.err 2>&1
    same_files "bad$i" v.err q.err
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
grep -q 'read failed: Input/output error' q.out && same_files blkdebug/inject-l2-load v.out q.out ||
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
same_files qemu-io/open-reopen-options v.out q.out
qemu_check_clean v/top.qcow2 chk.txt && pass qemu-io/image-clean ||
    fail qemu-io/image-clean "qemu-img check" chk.txt
"$QEMU_IMG" compare v/top.qcow2 q/top.qcow2 >cmp.txt 2>&1 && pass qemu-io/same-image-data ||
    fail qemu-io/same-image-data "the images differ after the same writes" cmp.txt

# qcow2 options QEMU checks together: overlap-check and its template, cache sizes that
# cannot go together, a clean interval out of range; the same refusals from both tools.
cat >qopts.txt <<'EOF'
open -o driver=qcow2,overlap-check=constant,overlap-check.template=all top.qcow2
open -o driver=qcow2,overlap-check=blubb top.qcow2
open -o driver=qcow2,overlap-check.template=blubb top.qcow2
open -o driver=qcow2,overlap-check.main-header=maybe top.qcow2
open -o driver=qcow2,cache-clean-interval=-1 top.qcow2
open -o driver=qcow2,refcount-cache-size=256T top.qcow2
open -o driver=qcow2,l2-cache-entry-size=512,l2-cache-size=1T top.qcow2
open -o driver=qcow2,pass-discard-other=maybe top.qcow2
open -o driver=qcow2,overlap-check=none,pass-discard-request=on,cache-clean-interval=5 top.qcow2
read -P 0x22 64k 64k
EOF
"$VIO" <qopts.txt 2>&1 | filter >v.out
"$QEMU_IO" <qopts.txt 2>&1 | filter >q.out
same_files qcow2-options/refusals q.out v.out

# pass-discard-request: a guest discard frees the clusters; with it on they become holes
# in the file, with it off they stay allocated on the host. Both tools agree on the space.
for pd in on off; do
    for t in v q; do
        "$QEMU_IMG" create -q -f qcow2 "pd$t.qcow2" 8M
        "$QEMU_IO" -c 'write -P 1 0 4M' "pd$t.qcow2" >/dev/null
    done
    "$VIO" -c "open -o driver=qcow2,pass-discard-request=$pd pdv.qcow2" -c 'discard 0 4M' \
        >/dev/null 2>&1
    "$QEMU_IO" -c "open -o driver=qcow2,pass-discard-request=$pd pdq.qcow2" -c 'discard 0 4M' \
        >/dev/null 2>&1
    # Holes or not, by the 4 MiB the discard freed (metadata may differ by a cluster).
    v=$(( $(du -k pdv.qcow2 | cut -f1) >= 4096 ))
    q=$(( $(du -k pdq.qcow2 | cut -f1) >= 4096 ))
    [ "$v" = "$q" ] && [ "$q" = $([ $pd = off ] && echo 1 || echo 0) ] &&
        pass "qcow2-options/pass-discard-request=$pd" ||
        fail "qcow2-options/pass-discard-request=$pd" "vdisk keeps the 4 MiB: $v, qemu-io: $q"
done

# The compress filter: writes through it are stored compressed, partial clusters
# completed from what is there; the same writes give the same data and the same number
# of compressed clusters as qemu-io's. A disk whose size is not whole clusters, or a
# format without compression, is refused with QEMU's words.
for t in v q; do
    "$QEMU_IMG" create -q -f qcow2 "c$t.qcow2" 2M
    "$QEMU_IMG" create -q -f qcow2 "odd$t.qcow2" 1000000
done
cz() { printf "json:{'driver': 'compress', 'file': {'driver': '%s', 'file.filename': '%s'}}" "$1" "$2"; }
writes=(-c 'write -P 0xbb 0 229376' -c 'write -P 0xcc 278528 229376')
"$VIO" "${writes[@]}" "$(cz qcow2 cv.qcow2)" >/dev/null 2>&1
"$QEMU_IO" "${writes[@]}" "$(cz qcow2 cq.qcow2)" >/dev/null 2>&1
"$QEMU_IMG" compare cv.qcow2 cq.qcow2 >cmp.txt 2>&1 && pass compress/data ||
    fail compress/data "the images differ" cmp.txt
for t in v q; do
    "$QEMU_IMG" check --output=json "c$t.qcow2" | grep compressed-clusters >"c$t.count"
done
grep -q '"compressed-clusters": 8' cq.count && same_files compress/clusters cq.count cv.count ||
    fail compress/clusters "qemu-img counts $(cat cq.count)"
"$VIO" -c 'write 0 4k' "$(cz qcow2 oddv.qcow2)" 2>&1 | sed 's/oddv/X/' >v.err
"$QEMU_IO" -c 'write 0 4k' "$(cz qcow2 oddq.qcow2)" 2>&1 | sed 's/oddq/X/' >q.err
same_files compress/partial-cluster-refused q.err v.err
"$VIO" -c 'write 0 4k' "$(cz raw r.img)" >v.err 2>&1
"$QEMU_IO" -c 'write 0 4k' "$(cz raw r.img)" >q.err 2>&1
same_files compress/raw-refused q.err v.err

# blkdebug over qcow2 with write-zero limits: pieces shorter than opt-write-zero are
# written as zeros (data), the aligned middle as zero clusters; both tools leave the same
# map.
for t in v q; do
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=1M "z$t.qcow2" 64M
    "$QEMU_IO" -c 'write -P 22 0 64M' "z$t.qcow2" >/dev/null
done
lim=driver=blkdebug,image.driver=qcow2,align=512,opt-write-zero=15M,max-write-zero=15M
"$VIO" -c "open -o $lim blkdebug::zv.qcow2" -c 'write -z 32M 32M' >/dev/null 2>&1
"$QEMU_IO" -c "open -o $lim blkdebug::zq.qcow2" -c 'write -z 32M 32M' >/dev/null 2>&1
"$QEMU_IMG" map --output=json zv.qcow2 | sed 's/"offset": [0-9]*//' >v.map
"$QEMU_IMG" map --output=json zq.qcow2 | sed 's/"offset": [0-9]*//' >q.map
same_files blkdebug/write-zero-limits q.map v.map

# Rules of the "none" event apply from the start; a block-status rule fails status
# queries. convert --salvage warns for each and copies the rest: the same warnings (the
# order of status and read warnings follows each tool's chunking), and the same result.
src="json:{'driver': 'blkdebug', 'image': {'driver': 'qcow2', 'file.filename': 'top.qcow2'},
  'inject-error': [{'event': 'none', 'iotype': 'block-status', 'errno': 5, 'sector': 300},
                   {'event': 'none', 'iotype': 'read', 'errno': 5, 'sector': 200}]}"
"$VIMG" convert --salvage -O qcow2 "$src" sv.qcow2 2>&1 | sort >v.err
"$QEMU_IMG" convert --salvage -O qcow2 "$src" sq.qcow2 2>&1 | sort >q.err
grep -q 'block status' q.err && same_files blkdebug/salvage-warnings q.err v.err ||
    fail blkdebug/salvage-warnings "qemu-img did not warn about block status" q.err
"$QEMU_IMG" compare sv.qcow2 sq.qcow2 >cmp.txt 2>&1 && pass blkdebug/salvage-result ||
    fail blkdebug/salvage-result "the copies differ" cmp.txt

# A target format that cannot be created (bochs) is refused before the source is read, as
# qemu-img words it, wherever the target is.
"$VIMG" convert -f raw -O bochs r.img nbd://example.com >v.err 2>&1
"$QEMU_IMG" convert -f raw -O bochs r.img nbd://example.com >q.err 2>&1
same_files convert-to-read-only-format q.err v.err

vd_finish
