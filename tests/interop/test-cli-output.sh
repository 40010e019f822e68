#!/bin/bash
# vdisk's info/map/check/measure output against qemu-img's on the same images: stdout must be
# byte-identical (JSON key order and indentation included), and so must the exit code and
# stderr (with "vdisk" for "qemu-img"). Fields that may legitimately differ are listed in
# ALLOW below with the reason; they are removed from both JSON documents before comparing.
. "$(dirname "$0")/../lib.sh"
vd_init

# ---- allowed differences ----------------------------------------------------------------
# Keys removed (at any depth) from both JSON outputs of a case, by case-name pattern, and
# for the human layout the matching block of lines:
#   snapshots: the library has no snapshot listing API yet, so vdisk cannot print the
#              "snapshots" array of qemu-img info (or its "Snapshot list:" table) for the
#              internal snapshot qemu-img made.
declare -A ALLOW=(
    ["info-json-snap*"]="snapshots"
    ["info-human-snap*"]="snapshots"
)

allowed_keys() {
    local name=$1 pat
    for pat in "${!ALLOW[@]}"; do
        # shellcheck disable=SC2053
        if [[ $name == $pat ]]; then
            printf '%s\n' "${ALLOW[$pat]}"
        fi
    done
}

# Drops the given keys from a JSON document, keeping key order and qemu's 4-space layout;
# for human output ("snapshots" only) drops the snapshot table.
json_drop() {
    "$PYTHON" -c '
import json, re, sys
drop = set(sys.argv[1:])
text = sys.stdin.read()
def walk(v):
    if isinstance(v, dict):
        return {k: walk(x) for k, x in v.items() if k not in drop}
    if isinstance(v, list):
        return [walk(x) for x in v]
    return v
try:
    doc = json.loads(text, object_pairs_hook=dict)
    print(json.dumps(walk(doc), indent=4, ensure_ascii=False))
except ValueError:
    if "snapshots" in drop:
        text = re.sub(r"Snapshot list:\n(?:.*\n)*?(?=Format specific|$)", "", text)
    sys.stdout.write(text)' "$@"
}

# compare NAME ARGS...: runs both tools with ARGS in the scratch directory and compares.
compare() {
    local name=$1
    shift
    local q=$VD_TESTDIR/q.$name v=$VD_TESTDIR/v.$name qrc vrc keys
    "$QEMU_IMG" "$@" >"$q.out" 2>"$q.err"
    qrc=$?
    "$VDISK" "$@" >"$v.out" 2>"$v.err"
    vrc=$?
    sed -i 's/qemu-img/vdisk/g' "$q.err" "$q.out"
    keys=$(allowed_keys "$name")
    if [ -n "$keys" ]; then
        # shellcheck disable=SC2086
        json_drop $keys <"$q.out" >"$q.cmp" 2>/dev/null || cp "$q.out" "$q.cmp"
        # shellcheck disable=SC2086
        json_drop $keys <"$v.out" >"$v.cmp" 2>/dev/null || cp "$v.out" "$v.cmp"
    else
        cp "$q.out" "$q.cmp"
        cp "$v.out" "$v.cmp"
    fi
    if [ "$qrc" != "$vrc" ]; then
        fail "$name" "exit code: qemu-img $qrc, vdisk $vrc" "$v.err"
    elif ! cmp -s "$q.cmp" "$v.cmp"; then
        diff -u "$q.cmp" "$v.cmp" >"$v.diff"
        fail "$name" "stdout differs" "$v.diff"
    elif ! cmp -s "$q.err" "$v.err"; then
        diff -u "$q.err" "$v.err" >"$v.diff"
        fail "$name" "stderr differs" "$v.diff"
    else
        pass "$name"
    fi
}

# compare_repair NAME IMG ARGS...: each tool runs `check ARGS` on its own copy of IMG (the
# same file name, in a directory of its own); exit code, stdout and stderr must match, and
# so must the repaired files, byte for byte. Run again with stdout line-buffered and both
# streams into one file, as a terminal shows them, the interleaving must match too.
compare_repair() {
    local name=$1 img=$2 t bin d
    shift 2
    for t in q v; do
        bin=$QEMU_IMG
        [ $t = v ] && bin=$VDISK
        d=$VD_TESTDIR/$name-$t
        mkdir -p "$d/tty"
        cp "$img" "$d/image.qcow2"
        cp "$img" "$d/tty/image.qcow2"
        (cd "$d" && "$bin" check "$@" image.qcow2 >out 2>err; echo $? >rc)
        (cd "$d/tty" && stdbuf -oL "$bin" check "$@" image.qcow2 >both 2>&1)
        sed -i 's/qemu-img/vdisk/g' "$d/out" "$d/err" "$d/tty/both"
    done
    local q=$VD_TESTDIR/$name-q v=$VD_TESTDIR/$name-v f
    for f in rc out err tty/both image.qcow2; do
        if ! cmp -s "$q/$f" "$v/$f"; then
            diff -u "$q/$f" "$v/$f" >"$v/diff" 2>&1
            fail "$name" "$f differs" "$v/diff"
            return
        fi
    done
    pass "$name"
}

qio() {
    "$QEMU_IO" "$@" >/dev/null 2>&1
}

# ---- images, all made by qemu-img / qemu-io ----------------------------------------------
"$QEMU_IMG" create -q -f raw raw.img 64M
qio -f raw -c 'write -P 1 0 64k' -c 'write -P 2 1M 1M' -c 'write -z 8M 64k' raw.img

"$QEMU_IMG" create -q -f qcow2 empty.qcow2 1G

"$QEMU_IMG" create -q -f qcow2 data.qcow2 1G
qio -c 'write -P 1 0 64k' -c 'write -P 2 1M 128k' -c 'write -z 2M 64k' \
    -c 'write -P 3 3M 4k' -c 'write -P 4 512M 64k' data.qcow2

"$QEMU_IMG" create -q -f qcow2 -b data.qcow2 -F qcow2 top.qcow2
qio -c 'write -P 5 1M 64k' -c 'write -z 3M 64k' -c 'discard 0 64k' top.qcow2

"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 v2.qcow2 16M
qio -c 'write -P 6 0 1M' v2.qcow2

"$QEMU_IMG" create -q -f qcow2 -o cluster_size=16k,extended_l2=on,compression_type=zstd \
    ext.qcow2 16M
qio -c 'write -P 7 4k 8k' -c 'write -z 64k 2k' ext.qcow2

"$QEMU_IMG" create -q -f qcow2 -o refcount_bits=1,lazy_refcounts=on,cluster_size=4k \
    small.qcow2 8M
qio -c 'write -P 8 0 100k' small.qcow2

"$QEMU_IMG" create -q -f qcow2 -o preallocation=metadata prealloc.qcow2 32M

"$QEMU_IMG" convert -c -O qcow2 raw.img compressed.qcow2

# A dirty lazy-refcounts image: killed after an allocating write.
"$QEMU_IMG" create -q -f qcow2 -o lazy_refcounts=on dirty.qcow2 4M
( qio -c "write -P 9 0 64k" -c "sigraise 9" dirty.qcow2 ) 2>/dev/null

# Leaks (refcount of a data cluster raised, a stray refcount past the data) and a
# corruption (refcount of a used cluster cleared).
"$QEMU_IMG" create -q -f qcow2 leaks.qcow2 64M
qio -c 'write -P 1 0 64k' leaks.qcow2
printf '\x00\x02' | dd of=leaks.qcow2 bs=1 seek=$((0x2000a)) conv=notrunc 2>/dev/null
printf '\x00\x01' | dd of=leaks.qcow2 bs=1 seek=$((0x2000e)) conv=notrunc 2>/dev/null
truncate -s $((8 * 65536)) leaks.qcow2
"$QEMU_IMG" create -q -f qcow2 leakonly.qcow2 64M
qio -c 'write -P 1 0 64k' leakonly.qcow2
printf '\x00\x01' | dd of=leakonly.qcow2 bs=1 seek=$((0x2000e)) conv=notrunc 2>/dev/null
truncate -s $((8 * 65536)) leakonly.qcow2
cp leaks.qcow2 corrupt.qcow2
printf '\x00\x00' | dd of=corrupt.qcow2 bs=1 seek=$((0x2000a)) conv=notrunc 2>/dev/null
# A leak that -r leaks repairs and an L2 entry with a reserved bit that it does not: the
# re-check reports the entry again, after qemu-img's "Double checking" text.
cp leakonly.qcow2 leak-reserved.qcow2

# The check's shortcuts must not change its findings: an L1 entry pointing at an L2 table
# of zeros, one pointing past the end of the file, and a snapshot whose L1 table runs past
# the end of the file (its entry for 600G lies beyond; the one for 0 inside).
for img in zero-l2 l2-eof; do
    "$QEMU_IMG" create -q -f qcow2 $img.qcow2 64M
    qio -c 'write -P 1 0 64k' $img.qcow2
done
"$QEMU_IMG" create -q -f qcow2 snap-l1-eof.qcow2 1T
qio -c 'write -P 1 0 64k' -c 'write -P 2 600G 64k' snap-l1-eof.qcow2
"$QEMU_IMG" snapshot -c s1 snap-l1-eof.qcow2
qio -c 'write -P 3 0 64k' snap-l1-eof.qcow2

# More than 64 MiB of messages (1.6 million lines: 200 L2 tables of entries with a reserved
# bit set): vdisk prints every one, as qemu-img does.
"$QEMU_IMG" create -q -f qcow2 many-errors.qcow2 100G

# A snapshot table placed where QEMU's block layer refuses to read (within 1 GiB of 2^63).
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 snap-far.qcow2 1M

# The damage to the images above, in one Python run.
"$PYTHON" - "$VD_TESTS" <<'EOF2'
import os, struct, sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
RESERVED = 2  # an unallocated L2 entry with reserved bit 1 set
i = q.Image("leak-reserved.qcow2")
q.poke_be64(i.path, i.first_l2()[0] + 8, RESERVED)
i = q.Image("zero-l2.qcow2")
q.poke(i.path, i.first_l2()[0], bytes(i.cluster_size))
i = q.Image("l2-eof.qcow2")
q.poke_be64(i.path, i.h["l1_table_offset"], 0x40000000 | q.COPIED)
i = q.Image("snap-l1-eof.qcow2")
sn = i.h["snapshots_offset"]
l1_offset = struct.unpack(">Q", i.read(sn, 8))[0]
end = os.path.getsize(i.path)
q.poke(i.path, end, i.read(l1_offset, 8192))  # half of its 16 KiB, at the end of the file
q.poke_be64(i.path, sn, end)
i = q.Image("many-errors.qcow2")
end = os.path.getsize(i.path)
table = struct.pack(">Q", RESERVED) * (i.cluster_size // 8)
for n in range(200):
    q.poke(i.path, end + n * i.cluster_size, table)
    q.poke_be64(i.path, i.h["l1_table_offset"] + 8 * n, (end + n * i.cluster_size) | q.COPIED)
q.poke_field("snap-far.qcow2", "nb_snapshots", 12)
q.poke_field("snap-far.qcow2", "snapshots_offset", 0x7ffffffffffffe00)
EOF2

"$QEMU_IMG" create -q -f qcow2 snap.qcow2 16M
qio -c 'write -P 1 0 64k' snap.qcow2
"$QEMU_IMG" snapshot -c s1 snap.qcow2

mkdir -p 'sub dir'
"$QEMU_IMG" create -q -f qcow2 'sub dir/base ü.qcow2' 4M
"$QEMU_IMG" create -q -f qcow2 -b 'base ü.qcow2' -F qcow2 'sub dir/over.qcow2'

# ---- cases ---------------------------------------------------------------------------------
for img in raw.img empty.qcow2 data.qcow2 top.qcow2 v2.qcow2 ext.qcow2 small.qcow2 \
           prealloc.qcow2 compressed.qcow2 dirty.qcow2 snap.qcow2 'sub dir/over.qcow2'; do
    base=$(basename "$img" | tr ' ' _)
    compare "info-json-$base" info --output=json "$img"
    compare "info-human-$base" info "$img"
    compare "map-json-$base" map --output=json "$img"
    compare "map-human-$base" map "$img"
done
compare info-chain-json-top info --backing-chain --output=json top.qcow2
compare info-chain-human-top info --backing-chain top.qcow2
compare info-chain-json-sub info --backing-chain --output=json 'sub dir/over.qcow2'
compare map-json-range map --output=json --start-offset=1M --max-length=3M top.qcow2
compare map-json-beyond map --output=json --start-offset=2G data.qcow2

for img in empty.qcow2 data.qcow2 top.qcow2 v2.qcow2 ext.qcow2 small.qcow2 prealloc.qcow2 \
           compressed.qcow2 dirty.qcow2 leaks.qcow2 leakonly.qcow2 corrupt.qcow2 raw.img \
           zero-l2.qcow2 l2-eof.qcow2 snap-l1-eof.qcow2 snap-far.qcow2; do
    compare "check-json-$img" check --output=json "$img"
    compare "check-human-$img" check "$img"
done
compare check-human-many-errors check many-errors.qcow2

# Repairs: the first pass's messages, qemu-img's "The following inconsistencies were found
# and repaired" text, then the re-check's.
compare_repair repair-leaks-human leaks.qcow2 -r leaks
compare_repair repair-all-human leaks.qcow2 -r all
compare_repair repair-all-json leaks.qcow2 -r all --output=json
compare_repair repair-corrupt-human corrupt.qcow2 -r all
compare_repair repair-corrupt-quiet corrupt.qcow2 -r all -q
compare_repair repair-corrupt-leaks corrupt.qcow2 -r leaks
compare_repair repair-leakonly-human leakonly.qcow2 -r leaks
compare_repair repair-recheck-human leak-reserved.qcow2 -r leaks
compare_repair repair-recheck-json leak-reserved.qcow2 -r leaks --output=json
compare_repair repair-dirty-human dirty.qcow2 -r all

compare measure-size-qcow2 measure --output=json --size 1G -O qcow2
compare measure-size-raw measure --output=json --size 1G -O raw
compare measure-size-4k measure --output=json --size 10G -O qcow2 -o cluster_size=4k
compare measure-raw-to-qcow2 measure --output=json -f raw -O qcow2 raw.img
compare measure-qcow2-to-qcow2 measure --output=json -O qcow2 data.qcow2
compare measure-qcow2-to-v2 measure --output=json -O qcow2 -o compat=0.10 data.qcow2
compare measure-qcow2-to-raw measure --output=json -O raw top.qcow2
compare measure-prealloc measure --output=json -O qcow2 -o preallocation=full data.qcow2
compare measure-human measure -O qcow2 data.qcow2

vd_finish
