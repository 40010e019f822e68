#!/usr/bin/env bash
# Images qemu-img creates and qemu-io writes must read back identically through vdisk
# (`vdisk convert -O raw` equals `qemu-img convert -O raw`; `vdisk compare` agrees), and
# vdisk must be able to keep writing to them: after more random operations through
# `vdisk io` they stay clean under `qemu-img check` and equal a twin written by qemu-io.
# Covers the vdisk-to-qemu matrix plus compressed images and a 3-deep backing chain.
# Q2VD_SEED=<n> reproduces a run.
. "$(dirname "$0")/../lib.sh"
vd_init

seed=$(vd_seed Q2VD_SEED)
nops=${Q2VD_OPS:-300}
echo "qemu-to-vdisk: Q2VD_SEED=$seed, $nops operations per image"
MiB=$((1024 * 1024))

# name | qemu-img create -o options | virtual size
configs=(
    "cluster-512|cluster_size=512|$((32 * MiB + 512))"
    "cluster-4k|cluster_size=4096|$((64 * MiB + 1536))"
    "cluster-64k|cluster_size=65536|$((256 * MiB))"
    "cluster-2M|cluster_size=2M|$((1024 * MiB + 4096))"
    "refcount-1|refcount_bits=1|$((128 * MiB))"
    "refcount-64|refcount_bits=64|$((128 * MiB + 512))"
    "compat-0.10|compat=0.10|$((128 * MiB + 512))"
    "compat-1.1|compat=1.1|$((128 * MiB))"
    "lazy-refcounts|lazy_refcounts=on|$((128 * MiB))"
    "extended-l2|extended_l2=on|$((600 * MiB + 512))"
    "extended-l2-16k|extended_l2=on,cluster_size=16384|$((100 * MiB))"
    "zstd|compression_type=zstd|$((64 * MiB))"
    "prealloc-metadata|preallocation=metadata|$((64 * MiB + 512))"
    "prealloc-falloc|preallocation=falloc|$((64 * MiB))"
    "prealloc-full|preallocation=full|$((64 * MiB))"
)

# random_ops IMG SEED: writes a random operation list for IMG to ops.txt.
random_ops() {
    local size cl ext span
    size=$(qemu_info_field "$1" virtual-size)
    cl=$(qemu_info_field "$1" cluster-size)
    ext=$(qemu_info_field "$1" format-specific data extended-l2)
    span=$((cl * cl / 8))
    [ "$ext" = true ] && span=$((span / 2))
    "$PYTHON" "$VD_TESTS/interop/diff-ops.py" gen --seed "$2" --count "$nops" \
        --size "$size" --cluster "$cl" --l2-span "$span" >ops.txt
}

# read_back NAME IMG: vdisk's view of a qemu-written image equals qemu's.
read_back() {
    local name=$1 img=$2
    rm -f ref.raw out.raw
    if ! "$QEMU_IMG" convert -f qcow2 -O raw "$img" ref.raw >conv.out 2>&1; then
        fail "$name/read" "qemu-img convert of the qemu image failed (test setup)" conv.out
        return 1
    fi
    if ! vd_with_timeout 600 "$VDISK" convert -f qcow2 -O raw "$img" out.raw >conv.out 2>&1
    then
        fail "$name/read" "vdisk convert -f qcow2 -O raw failed" conv.out
    elif cmp ref.raw out.raw >cmp.out 2>&1; then
        pass "$name/read"
    else
        fail "$name/read" "vdisk reads different data than qemu (Q2VD_SEED=$seed)" cmp.out
    fi
    if vd_with_timeout 600 "$VDISK" compare -f qcow2 -F raw "$img" ref.raw >cmp.out 2>&1; then
        pass "$name/compare"
    else
        fail "$name/compare" "vdisk compare against qemu's raw export did not exit 0" cmp.out
    fi
    # The comparison must also notice a difference: flip one byte somewhere in the middle.
    local size
    size=$(stat -c %s ref.raw)
    printf '\x5a' | dd of=ref.raw bs=1 seek=$((size / 2 + 7)) conv=notrunc status=none
    cmp -s ref.raw out.raw && printf '\xa5' |
        dd of=ref.raw bs=1 seek=$((size / 2 + 7)) conv=notrunc status=none
    vd_with_timeout 600 "$VDISK" compare -f qcow2 -F raw "$img" ref.raw >cmp.out 2>&1
    local rc=$?
    if [ $rc -eq 1 ]; then
        pass "$name/compare-detects"
    else
        fail "$name/compare-detects" "vdisk compare exited $rc, not 1, for a one-byte change" \
            cmp.out
    fi
    rm -f ref.raw out.raw
}

# keep_writing NAME IMG SEED: more random operations through vdisk on the qemu image and
# through qemu-io on a copy; vdisk's result must be clean and equal.
keep_writing() {
    local name=$1 img=$2 s=$3 twin
    twin="${img%.qcow2}-twin.qcow2"
    cp --sparse=always "$img" "$twin"
    random_ops "$img" "$s"
    if ! apply_ops qemu-io "$twin" ops.txt >apply.out 2>&1; then
        fail "$name/write" "qemu-io failed on the twin (test setup)" apply.out
        return 1
    fi
    if apply_ops vdisk "$img" ops.txt >apply.out 2>&1; then
        pass "$name/write"
    else
        fail "$name/write" "vdisk io failed on a qemu-made image (Q2VD_SEED=$seed)" apply.out
        fail "$name/write-check" "not run: vdisk io failed"
        fail "$name/write-compare" "not run: vdisk io failed"
        return 1
    fi
    if qemu_check_clean "$img" check.out; then
        pass "$name/write-check"
    else
        fail "$name/write-check" "qemu-img check after vdisk writes is not clean" check.out
    fi
    if "$QEMU_IMG" compare -f qcow2 -F qcow2 "$img" "$twin" >cmp.out 2>&1; then
        pass "$name/write-compare"
    else
        fail "$name/write-compare" "differs from the qemu-io twin (Q2VD_SEED=$seed)" cmp.out
    fi
}

i=0
for c in "${configs[@]}"; do
    IFS='|' read -r name opts size <<<"$c"
    rm -f ./*.qcow2
    if ! "$QEMU_IMG" create -f qcow2 -o "$opts" disk.qcow2 "$size" >create.out 2>&1; then
        fail "$name/setup" "qemu-img create failed" create.out
        continue
    fi
    random_ops disk.qcow2 $((seed + i))
    if ! apply_ops qemu-io disk.qcow2 ops.txt >apply.out 2>&1; then
        fail "$name/setup" "qemu-io failed (test setup)" apply.out
        continue
    fi
    read_back "$name" disk.qcow2
    keep_writing "$name" disk.qcow2 $((seed + i + 1000))
    i=$((i + 1))
done

# Compressed images made by `qemu-img convert -c` from data with incompressible, highly
# compressible and zero clusters (so some clusters end up stored uncompressed).
"$PYTHON" - <<'EOF'
import random
rng = random.Random(7)
out = bytearray()
words = [b"qcow2", b"cluster", b"refcount", b"vdisk ", b"\n", b"0123456789"]
for i in range(24 * 1024 * 1024 // 4096):
    k = i % 7
    if k in (0, 3):
        out += rng.randbytes(4096)
    elif k == 5:
        out += bytes(4096)
    else:
        chunk = b"".join(rng.choice(words) for _ in range(1200))
        out += chunk[:4096].ljust(4096, b"x")
open("data.raw", "wb").write(out)
EOF
for c in "zlib|65536" "zstd|65536" "zlib|4096" "zstd|2097152" "zlib|512"; do
    IFS='|' read -r ctype cl <<<"$c"
    name="compressed-$ctype-$cl"
    rm -f ./*.qcow2
    if ! "$QEMU_IMG" convert -c -f raw -O qcow2 -o "compression_type=$ctype,cluster_size=$cl" \
        data.raw disk.qcow2 >create.out 2>&1; then
        fail "$name/setup" "qemu-img convert -c failed" create.out
        continue
    fi
    read_back "$name" disk.qcow2
    keep_writing "$name" disk.qcow2 $((seed + i + 1000))
    i=$((i + 1))
done
rm -f data.raw

# A 3-deep chain made by qemu, mixed cluster sizes and versions, read through the top.
rm -f ./*.qcow2
ok=1
"$QEMU_IMG" create -f qcow2 -o cluster_size=65536 base.qcow2 $((96 * MiB + 512)) \
    >create.out 2>&1 || ok=0
"$QEMU_IMG" create -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 mid.qcow2 \
    >>create.out 2>&1 || ok=0
"$QEMU_IMG" create -f qcow2 -o compat=0.10,cluster_size=16384 -b mid.qcow2 -F qcow2 \
    top.qcow2 >>create.out 2>&1 || ok=0
for l in base mid top; do
    [ $ok = 1 ] || break
    random_ops $l.qcow2 $((seed + i))
    apply_ops qemu-io $l.qcow2 ops.txt >>create.out 2>&1 || ok=0
    i=$((i + 1))
done
if [ $ok = 1 ]; then
    read_back chain3 top.qcow2
    keep_writing chain3 top.qcow2 $((seed + i + 1000))
else
    fail chain3/setup "creating the chain with qemu-img/qemu-io failed" create.out
fi
vd_finish
