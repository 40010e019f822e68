#!/usr/bin/env bash
# The qcow2 engine's compressed clusters, driven through `vdisk io write -c` and checked by
# qemu-img / qemu-io: for each cluster size (512, 4k, 64k, 2M), compression type (zlib,
# zstd), refcount_bits 1 and 16, extended_l2=on and a v2 image:
#   - single- and multi-cluster compressed writes and the final partial cluster read back
#     through qemu-io (-P patterns, qemu-img compare with a raw reference), pack streams
#     back to back and stay clean under `qemu-img check` (no leaks) after every step;
#   - incompressible clusters are stored uncompressed (qemu-img map shows their offset);
#   - partial overwrites, write -z and discard over packed compressed clusters give the
#     same disk as the same operations through qemu-io on a twin, with clean refcounts;
#   - write -c over allocated clusters releases the old clusters;
#   - a zero-length write -c pads the file to whole sectors;
#   - misaligned write -c fails as in qemu-io; corrupt streams and hand-made descriptors
#     whose stream decodes to more (or less) than a cluster fail with EIO naming the guest
#     offset, without crashing.
. "$(dirname "$0")/../lib.sh"
vd_init

# Corrupt-input cases run under the sanitizer build when there is one.
VDISK_BAD=$VDISK
[ -x "${VDISK_ASAN:-}" ] && VDISK_BAD=$VDISK_ASAN

# gen OUT SIZE SEED KIND: KIND mixed (every 512 bytes a random-length random head, then
# text: streams of every size) or random (incompressible).
gen() {
    "$PYTHON" - "$@" <<'EOF'
import random, sys
out, size, seed, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
words = b"qcow2 cluster refcount stream deflate zstd guest host table block ".split()
buf = bytearray()
while len(buf) < size:
    if kind == "random":
        buf += rng.randbytes(512)
        continue
    chunk = bytearray(rng.randbytes(rng.choice((0, 0, 8, 40, 120, 300, 460, 512))))
    while len(chunk) < 512:
        chunk += rng.choice(words) + b" "
    buf += chunk[:512]
open(out, "wb").write(bytes(buf[:size]))
EOF
}

# io_ok NAME CMD...: CMD exits 0 and reports no failed request or pattern mismatch.
io_ok() {
    local name=$1
    shift
    if "$@" >io.out 2>&1 && ! grep -qiE 'failed|error|verification' io.out; then
        pass "$name"
    else
        fail "$name" "'$*' failed" io.out
    fi
}

clean() {
    if qemu_check_clean "$2" chk.out; then
        pass "$1"
    else
        fail "$1" "qemu-img check is not clean" chk.out
    fi
}

same() {
    if "$QEMU_IMG" compare -f qcow2 -F "$4" "$2" "$3" >cmp.out 2>&1; then
        pass "$1"
    else
        fail "$1" "qemu-img compare $2 $3 differs" cmp.out
    fi
}

# run_ops TOOL IMG FMT OP...: one tool invocation for a list of qemu-io commands; with FMT
# raw the -c of compressed writes is dropped (the raw reference gets plain writes).
run_ops() {
    local tool=$1 img=$2 fmt=$3 args=() op
    shift 3
    for op in "$@"; do
        [ "$fmt" = raw ] && op=${op/write -c /write }
        args+=(-c "$op")
    done
    if [ "$tool" = vdisk ]; then
        "$VDISK" io -f "$fmt" -d unmap "${args[@]}" "$img"
    else
        "$QEMU_IO" -f "$fmt" -d unmap "${args[@]}" "$img"
    fi
}

# compressed_count IMG: qemu-img check's count of compressed clusters.
compressed_count() {
    "$QEMU_IMG" check --output=json "$1" 2>/dev/null |
        "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin).get("compressed-clusters", 0))'
}

# has_offset IMG OFF: qemu-img map gives the extent at OFF a host offset (stored normally).
has_offset() {
    "$QEMU_IMG" map --output=json "$1" | "$PYTHON" -c '
import json, sys
off = int(sys.argv[1])
for e in json.load(sys.stdin):
    if e["start"] <= off < e["start"] + e["length"]:
        sys.exit(0 if "offset" in e and e["data"] else 1)
sys.exit(1)' "$2"
}

# l2_entry_pos IMG CLUSTER: file offset of the L2 entry of a guest cluster (L2 must exist).
l2_entry_pos() {
    "$PYTHON" - "$VD_TESTS" "$@" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
img = q.Image(sys.argv[2])
gc = int(sys.argv[3])
l1e = img.l1()[gc // img.l2_entries]
print((l1e & q.OFFSET_MASK) + (gc % img.l2_entries) * img.l2_entry_size)
EOF
}

# descriptor POS: the compressed descriptor stored at file offset POS, as "host csize".
descriptor() {
    "$PYTHON" - "$VD_TESTS" "$@" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
img = q.Image(sys.argv[2])
e = img.be64(int(sys.argv[3]))
assert e & q.COMPRESSED, hex(e)
x = 62 - (img.h["cluster_bits"] - 8)
off = e & ((1 << x) - 1)
sectors = (e >> x) & ((1 << (img.h["cluster_bits"] - 8)) - 1)
print(off, (sectors + 1) * 512 - off % 512)
EOF
}

# packing IMG: "MOST SPANNING": the most compressed streams starting in one host cluster,
# and how many streams continue into the next host cluster (read from the L2 descriptors:
# the last sector a descriptor covers holds the stream's last byte).
packing() {
    "$PYTHON" - "$VD_TESTS" "$@" <<'EOF'
import collections, sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
img = q.Image(sys.argv[2])
bits = img.h["cluster_bits"]
cs, x = img.cluster_size, 62 - (bits - 8)
per_cluster = collections.Counter()
spanning = 0
for l1e in img.l1():
    if not l1e & q.OFFSET_MASK:
        continue
    for e in img.l2(l1e & q.OFFSET_MASK):
        if e & q.COMPRESSED:
            off = e & ((1 << x) - 1)
            last = (off // 512 + ((e >> x) & ((1 << (bits - 8)) - 1))) * 512
            per_cluster[off // cs] += 1
            spanning += last // cs != off // cs
print(max(per_cluster.values(), default=0), spanning)
EOF
}

# engine NAME CLUSTER NCLUSTERS SIZE CREATE-OPTS: the whole sequence on one configuration
# (NCLUSTERS: length of the multi-cluster write; CREATE-OPTS besides cluster_size).
engine() {
    local name=$1 C=$2 M=$3 size=$4 opts=cluster_size=$2,$5
    local img=$name.qcow2 twin=$name-twin.qcow2 ref=$name.raw
    local tail_off=$((size / C * C)) rnd=$(((M + 1) * C))
    gen mixed.bin $((M * C)) "$C" mixed
    gen random.bin "$C" "$M" random
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$img" "$size"
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$twin" "$size"
    rm -f "$ref"
    truncate -s "$size" "$ref"

    local ops=("write -c -P 0x11 0 $C" "write -c -s mixed.bin $C $((M * C))"
        "write -c -s random.bin $rnd $C")
    if [ "$tail_off" -lt "$size" ]; then
        ops+=("write -c -P 0x22 $tail_off $((size - tail_off))")
    fi
    io_ok "$name: vdisk write -c (single, multi-cluster, incompressible, tail)" \
        run_ops vdisk "$img" qcow2 "${ops[@]}"
    clean "$name: check clean after write -c" "$img"
    run_ops qemu-io "$ref" raw "${ops[@]}" >/dev/null 2>&1
    run_ops qemu-io "$twin" qcow2 "${ops[@]}" >/dev/null 2>&1
    local reads=("read -P 0x11 0 $C")
    [ "$tail_off" -lt "$size" ] && reads+=("read -P 0x22 $tail_off $((size - tail_off))")
    io_ok "$name: qemu-io reads the patterns back" run_ops qemu-io "$img" qcow2 "${reads[@]}"
    same "$name: contents equal the raw reference" "$img" "$ref" raw
    local n
    n=$(compressed_count "$img")
    # Part of the mixed data is incompressible at 512-byte clusters.
    if [ "${n:-0}" -ge $((M / 2)) ]; then
        pass "$name: $n compressed clusters"
    else
        fail "$name: compressed clusters" "qemu-img check counts ${n:-none}, expected >= $((M / 2))"
    fi
    if has_offset "$img" "$rnd"; then
        pass "$name: incompressible cluster stored uncompressed"
    else
        fail "$name: incompressible cluster" "qemu-img map shows no offset at $rnd"
    fi

    io_ok "$name: write -c 0 0" run_ops vdisk "$img" qcow2 "write -c 0 0"
    local flen
    flen=$(stat -c %s "$img")
    if [ $((flen % 512)) -eq 0 ]; then
        pass "$name: zero-length write -c pads the file ($flen bytes)"
    else
        fail "$name: zero-length write -c" "file length $flen is not a multiple of 512"
    fi
    clean "$name: check clean after padding" "$img"

    # Overwrites of packed compressed clusters, the same through both tools.
    local ow=("write -P 0x33 $((C + C / 4)) $((C / 2))"
        "write -P 0x44 $((3 * C - C / 2)) $C"
        "write -z $((4 * C + C / 4)) $((C / 2))"
        "write -z $((5 * C)) $C"
        "write -z -u $((6 * C)) $((2 * C))"
        "discard $((8 * C)) $((2 * C))"
        "write -P 0x45 $((10 * C)) $((2 * C))")
    io_ok "$name: vdisk overwrites compressed clusters" run_ops vdisk "$img" qcow2 "${ow[@]}"
    run_ops qemu-io "$twin" qcow2 "${ow[@]}" >twin.out 2>&1
    clean "$name: check clean after overwrites (vdisk)" "$img"
    clean "$name: check clean after overwrites (qemu-io twin)" "$twin"
    same "$name: same contents as the qemu-io twin" "$img" "$twin" qcow2

    # write -c over allocated clusters (qemu-io refuses these; vdisk releases the old ones).
    local over=("write -c -P 0x55 $((2 * C)) $C" "write -c -P 0x56 $rnd $C"
        "write -c -P 0x57 $((10 * C)) $C" "write -c -s mixed.bin $((11 * C)) $((2 * C))")
    io_ok "$name: write -c over allocated clusters" run_ops vdisk "$img" qcow2 "${over[@]}"
    clean "$name: check clean after write -c over allocated clusters" "$img"
    io_ok "$name: qemu-io reads the rewritten clusters" run_ops qemu-io "$img" qcow2 \
        "read -P 0x55 $((2 * C)) $C" "read -P 0x56 $rnd $C" "read -P 0x57 $((10 * C)) $C"
    run_ops qemu-io "$twin" qcow2 "write -P 0x55 $((2 * C)) $C" "write -P 0x56 $rnd $C" \
        "write -P 0x57 $((10 * C)) $C" "write -s mixed.bin $((11 * C)) $((2 * C))" \
        >/dev/null 2>&1
    same "$name: rewritten disk equals its twin" "$img" "$twin" qcow2
    if has_offset "$img" "$rnd"; then
        fail "$name: rewritten incompressible cluster" "still stored uncompressed"
    else
        pass "$name: rewritten incompressible cluster is compressed now"
    fi
}

MiB=$((1024 * 1024))
engine c512-zlib 512 80 $((96 * 512)) compression_type=zlib
engine c512-zstd 512 80 $((96 * 512)) compression_type=zstd
engine c4k-zlib 4096 70 $((80 * 4096 + 1536)) compression_type=zlib
engine c4k-zstd 4096 70 $((80 * 4096 + 1536)) compression_type=zstd
engine c64k-zlib 65536 16 $((20 * 65536 + 2560)) compression_type=zlib
engine c64k-zstd 65536 16 $((20 * 65536 + 2560)) compression_type=zstd
engine c2M-zlib $((2 * MiB)) 12 $((14 * 2 * MiB + 4096)) compression_type=zlib
engine c2M-zstd $((2 * MiB)) 12 $((14 * 2 * MiB + 4096)) compression_type=zstd
engine rc1-zlib 4096 40 $((48 * 4096 + 512)) refcount_bits=1
engine rc1-zstd 65536 16 $((20 * 65536)) refcount_bits=1,compression_type=zstd
engine extl2-zlib 65536 16 $((20 * 65536 + 1024)) extended_l2=on
engine extl2-zstd $((2 * MiB)) 12 $((14 * 2 * MiB + 512)) extended_l2=on,compression_type=zstd
engine v2-zlib 65536 16 $((20 * 65536 + 2560)) compat=0.10

# The images above really pack streams: several share a host cluster (their refcounts
# dropped correctly through the overwrites, as check showed) and some continue into the
# next host cluster. With refcount_bits=1 every stream has a cluster of its own.
for img in c4k-zlib c64k-zstd rc1-zlib; do
    read -r most spanning < <(packing $img.qcow2)
    case $img in
    rc1-*) ok=$((most == 1)) ;;
    c4k-*) ok=$((most >= 2 && spanning > 0)) ;;
    *) ok=$((most >= 3)) ;;
    esac
    if [ "$ok" = 1 ]; then
        pass "$img: packing (at most $most streams per host cluster, $spanning spanning)"
    else
        fail "$img: packing" "at most $most streams per host cluster, $spanning spanning"
    fi
done

# ---- misaligned requests: qemu-io's messages ----------------------------------------------
for req in "512 65536" "0 32768" "65536 1000" "100 512" "131072 131072" \
    "196608 66560" "262144 1024" "262144 512" "327680 512"; do
    "$QEMU_IMG" create -q -f qcow2 mis-q.qcow2 $((4 * 65536 + 1024))
    "$QEMU_IMG" create -q -f qcow2 mis-v.qcow2 $((4 * 65536 + 1024))
    "$QEMU_IO" -c "write -c $req" mis-q.qcow2 2>&1 | grep -v ' ops; ' >want.out
    "$VDISK" io -c "write -c $req" mis-v.qcow2 2>&1 | grep -v ' ops; ' >got.out
    if cmp -s want.out got.out; then
        pass "write -c $req: $(head -1 got.out)"
    else
        diff want.out got.out >diff.out
        fail "write -c $req" "output differs from qemu-io's" diff.out
    fi
done

# ---- corrupt streams and hand-made descriptors ----------------------------------------------
# bad_read NAME IMG GUEST_OFF: reading fails with EIO, vdisk names the guest offset, no crash.
bad_read() {
    local name=$1 img=$2 hex rc
    hex=$(printf '0x%x' "$3")
    "$VDISK_BAD" io -f qcow2 -c "read 0 $((4 * 65536))" "$img" >bad.out 2>&1
    rc=$?
    if [ $rc -lt 128 ] && grep -q "read failed: Input/output error" bad.out; then
        pass "$name: read fails with EIO"
    else
        fail "$name: read" "exit $rc, no EIO" bad.out
    fi
    "$VDISK_BAD" convert -O raw "$img" bad.raw >bad.out 2>&1
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "guest offset $hex" bad.out; then
        pass "$name: the error names guest offset $hex"
    else
        fail "$name: error message" "exit $rc, no mention of guest offset $hex" bad.out
    fi
}

C=65536
for type in zlib zstd; do
    img=bad-$type.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o compression_type=$type "$img" $((4 * C))
    gen mixed.bin $((4 * C)) 7 mixed
    "$VDISK" io -c "write -c -s mixed.bin 0 $((4 * C))" "$img" >/dev/null 2>&1
    # A garbage stream (0xff: an invalid deflate block type, a wrong zstd magic).
    cp "$img" corrupt.qcow2
    read -r host csize < <(descriptor corrupt.qcow2 "$(l2_entry_pos corrupt.qcow2 1)")
    "$PYTHON" -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2]))
f.write(b"\xff" * min(64, int(sys.argv[3])))' corrupt.qcow2 "$host" "$csize"
    bad_read "$type corrupt stream" corrupt.qcow2 $C

    # Hand-made streams: one whose content is two clusters, one that is half a cluster.
    for what in big short; do
        want=$((C / 2))
        [ $what = big ] && want=$((2 * C))
        head -c "$want" /dev/zero | tr '\0' 'a' >plain.bin
        if [ $type = zlib ]; then
            "$PYTHON" -c 'import sys, zlib
c = zlib.compressobj(6, zlib.DEFLATED, -12)
sys.stdout.buffer.write(c.compress(open(sys.argv[1], "rb").read()) + c.flush())' \
                plain.bin >stream.bin
        else
            zstd -q -3 --no-check -c plain.bin >stream.bin
        fi
        cp "$img" hand.qcow2
        at=$(((($(stat -c %s hand.qcow2) + 511) / 512) * 512 + 100))
        "$PYTHON" - "$VD_TESTS" hand.qcow2 "$(l2_entry_pos hand.qcow2 2)" "$at" stream.bin <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
path, pos, at, stream = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
data = open(stream, "rb").read()
img = q.Image(path)
q.poke(path, at, data)
x = 62 - (img.h["cluster_bits"] - 8)
sectors = (at + len(data) - 1) // 512 - at // 512
q.poke_be64(path, pos, q.COMPRESSED | (sectors << x) | at)
EOF
        bad_read "$type stream of $want bytes" hand.qcow2 $((2 * C))
    done
done

# ---- a kill in the middle: leaks at most, flushed compressed data survives ---------------
for lazy in off on; do
    img=kill-$lazy.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=4096,lazy_refcounts=$lazy "$img" 1M
    vd_with_timeout 60 "$VDISK" io -c "write -c -P 0x61 0 65536" -c flush \
        -c "write -c -P 0x62 65536 65536" -c "write -P 0x63 4096 1024" -c "sigraise 9" \
        "$img" >kill.out 2>&1
    rc=$?
    [ $rc -eq 137 ] || fail "kill lazy_refcounts=$lazy" "vdisk io exited $rc, not 137" kill.out
    "$QEMU_IMG" check "$img" >chk.out 2>&1
    rc=$?
    # Lazy refcounts: the image is dirty and check -r all repairs it.
    if [ $rc -eq 0 ] || [ $rc -eq 3 ] ||
        { [ $lazy = on ] && "$QEMU_IMG" check -r all "$img" >>chk.out 2>&1; }; then
        pass "kill lazy_refcounts=$lazy: no corruption (check exit $rc)"
    else
        fail "kill lazy_refcounts=$lazy" "qemu-img check exited $rc" chk.out
    fi
    # The bytes the unflushed overwrite touched may hold either version.
    io_ok "kill lazy_refcounts=$lazy: flushed compressed data survives" \
        "$QEMU_IO" -f qcow2 -c "read -P 0x61 0 4096" -c "read -P 0x61 5120 60416" "$img"
done

vd_finish
