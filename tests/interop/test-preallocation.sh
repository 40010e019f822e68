#!/usr/bin/env bash
# Preallocation: with preallocation=metadata (1 TiB) all metadata sits contiguously before
# the first data cluster, data clusters follow guest order, and the file uses about as much
# space as its metadata; falloc/full (8 GiB) are not sparse and keep the same layout; every
# image passes qemu-img check and reads as zeros; `vdisk measure` reports what
# `qemu-img measure` reports, for empty disks of many sizes and options and for images.
. "$(dirname "$0")/../lib.sh"
vd_init

GiB=$((1024 * 1024 * 1024))
MiB=$((1024 * 1024))

# allocated bytes on the host, and the apparent size
host_bytes() { echo $(($(stat -c %b "$1") * $(stat -c %B "$1"))); }
file_bytes() { stat -c %s "$1"; }

# layout NAME IMG: metadata before data, data in guest order; sets META (metadata bytes).
layout() {
    local name=$1 img=$2
    if "$PYTHON" "$VD_TESTS/qcow2img.py" layout "$img" >layout.out 2>&1; then
        pass "$name/layout"
    else
        fail "$name/layout" "metadata and data are not laid out as promised" layout.out
    fi
    META=$(sed -n 's/^metadata_bytes=\([0-9]*\).*/\1/p' layout.out)
}

create() {
    local name=$1
    shift
    if vd_with_timeout 600 "$VDISK" create -f qcow2 "$@" >create.out 2>&1; then
        pass "$name/create"
    else
        fail "$name/create" "vdisk create -f qcow2 $* failed" create.out
        return 1
    fi
}

qcheck() {
    local name=$1 img=$2
    if vd_with_timeout 600 "$QEMU_IMG" check "$img" >check.out 2>&1; then
        pass "$name/check"
    else
        fail "$name/check" "qemu-img check is not clean" check.out
    fi
}

# reads_zero NAME IMG SIZE: the preallocated image reads as zeros (vs an empty twin).
reads_zero() {
    local name=$1 img=$2 size=$3
    "$QEMU_IMG" create -f qcow2 empty.qcow2 "$size" >/dev/null
    if vd_with_timeout 600 "$QEMU_IMG" compare -f qcow2 -F qcow2 "$img" empty.qcow2 \
        >cmp.out 2>&1; then
        pass "$name/reads-zero"
    else
        fail "$name/reads-zero" "a preallocated image does not read as zeros" cmp.out
    fi
    rm -f empty.qcow2
}

# ---- 1 TiB, preallocation=metadata ----------------------------------------------------
name=metadata-1T
if create $name -o preallocation=metadata big.qcow2 1T; then
    layout $name big.qcow2
    meta=$META
    used=$(host_bytes big.qcow2)
    if [ -n "$meta" ] && [ "$used" -le $((meta + meta / 10 + 2 * MiB)) ] &&
        [ "$used" -ge $((meta * 9 / 10)) ]; then
        pass "$name/du"
    else
        fail "$name/du" "uses $used bytes on the host; metadata is ${meta:-?} bytes"
    fi
    if [ "$(file_bytes big.qcow2)" -ge $((1024 * GiB)) ]; then
        pass "$name/length"
    else
        fail "$name/length" "file length $(file_bytes big.qcow2) is below the 1 TiB of data"
    fi
    qcheck $name big.qcow2
fi
rm -f big.qcow2

# Smaller metadata images in several geometries, including unaligned sizes.
for c in "metadata-4k|cluster_size=4096|$((256 * MiB + 512))" \
    "metadata-2M|cluster_size=2M|$((3 * GiB + 4096))" \
    "metadata-extl2|extended_l2=on|$((2 * GiB))" \
    "metadata-refcount1|refcount_bits=1,cluster_size=16384|$((GiB))" \
    "metadata-v2|compat=0.10|$((GiB + 65536 * 3))"; do
    IFS='|' read -r name opts size <<<"$c"
    if create "$name" -o "preallocation=metadata,$opts" m.qcow2 "$size"; then
        layout "$name" m.qcow2
        qcheck "$name" m.qcow2
        reads_zero "$name" m.qcow2 "$size"
    fi
    rm -f m.qcow2
done

# ---- 8 GiB, preallocation=full and falloc: not sparse ---------------------------------
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
for mode in full falloc; do
    name=$mode-8G
    if [ "${free_kb:-0}" -lt $((9 * 1024 * 1024)) ]; then
        fail "$name/create" "only ${free_kb:-?} KiB free in $VD_TESTDIR; this case needs 9 GiB"
        continue
    fi
    if create $name -o preallocation=$mode f.qcow2 8G; then
        used=$(host_bytes f.qcow2)
        len=$(file_bytes f.qcow2)
        if [ "$used" -ge $((8 * GiB)) ] && [ "$len" -ge $((8 * GiB)) ]; then
            pass "$name/not-sparse"
        else
            fail "$name/not-sparse" "uses $used bytes on the host for a file of $len bytes"
        fi
        layout $name f.qcow2
        qcheck $name f.qcow2
    fi
    rm -f f.qcow2
done
for mode in full falloc; do
    name=$mode-small
    size=$((96 * MiB + 1536))
    if create $name -o preallocation=$mode,cluster_size=4096 f.qcow2 $size; then
        layout $name f.qcow2
        qcheck $name f.qcow2
        reads_zero $name f.qcow2 $size
    fi
    rm -f f.qcow2
done

# ---- measure --------------------------------------------------------------------------
# Both outputs as sorted "key: value" lines, so any missing line or differing number shows.
measure_kv() {
    grep -E '^[a-z ]+: [0-9]+$' | sort
}
measure_case() {
    local name=$1 want got got_kv qrc vrc
    shift
    want=$("$QEMU_IMG" measure "$@" 2>&1)
    qrc=$?
    got=$(vd_with_timeout 120 "$VDISK" measure "$@" 2>&1)
    vrc=$?
    if [ $qrc -ne 0 ]; then
        # qemu-img refuses (e.g. an L1 table too large): vdisk must refuse too.
        if [ $vrc -ne 0 ] && [ "${got#vdisk:}" != "$got" ]; then
            pass "measure/$name"
        else
            printf 'qemu-img: %s\nvdisk (exit %s): %s\n' "$want" $vrc "$got" >m.out
            fail "measure/$name" "qemu-img measure refuses this, vdisk does not" m.out
        fi
        return
    fi
    want=$(printf '%s\n' "$want" | measure_kv)
    got_kv=$(printf '%s\n' "$got" | measure_kv)
    if [ $vrc -eq 0 ] && [ -n "$want" ] && [ "$want" = "$got_kv" ]; then
        pass "measure/$name"
    else
        printf 'qemu-img measure %s:\n%s\nvdisk measure (exit %s):\n%s\n' "$*" "$want" $vrc \
            "$got" >m.out
        fail "measure/$name" "vdisk measure differs from qemu-img measure" m.out
    fi
}
for size in 0 512 $((MiB + 512)) $((10 * GiB)) $((1024 * GiB)) $((64 * 1024 * GiB)); do
    for o in "" cluster_size=512 cluster_size=4096 cluster_size=2M preallocation=metadata \
        preallocation=full preallocation=falloc extended_l2=on refcount_bits=1 \
        refcount_bits=64 compat=0.10 "cluster_size=16384,preallocation=metadata"; do
        args=(-O qcow2 --size "$size")
        [ -n "$o" ] && args+=(-o "$o")
        measure_case "size-$size${o:+-$o}" "${args[@]}"
    done
done
# From existing images (allocated data counts): a qcow2 with data, and a sparse raw file.
"$QEMU_IMG" create -f qcow2 src.qcow2 $((300 * MiB)) >/dev/null
"$QEMU_IO" -f qcow2 -c 'write -P 1 0 3M' -c 'write -P 2 100M 64k' -c 'write -z 200M 1M' \
    -c 'write -P 3 299M 512k' src.qcow2 >/dev/null
"$QEMU_IMG" convert -O raw src.qcow2 src.raw
for o in "" cluster_size=4096 preallocation=metadata extended_l2=on; do
    for src in "-f qcow2 src.qcow2" "-f raw src.raw"; do
        args=(-O qcow2)
        [ -n "$o" ] && args+=(-o "$o")
        # shellcheck disable=SC2206
        args+=($src)
        measure_case "image-${src##* }${o:+-$o}" "${args[@]}"
    done
done
measure_case "to-raw" -O raw -f qcow2 src.qcow2
rm -f src.qcow2 src.raw
vd_finish
