#!/usr/bin/env bash
# Images vdisk creates and writes must satisfy QEMU: for each creation option (cluster
# sizes, refcount widths, compat levels, lazy refcounts, extended L2, preallocation modes,
# a 3-deep backing chain) vdisk creates an image and applies a seeded random mix of writes,
# zero writes and discards through `vdisk io`; `qemu-img check` must find no errors and no
# leaks, and `qemu-img compare` must find it identical to a qemu-img/qemu-io twin.
# VD2Q_SEED=<n> reproduces a run.
. "$(dirname "$0")/../lib.sh"
vd_init

seed=$(vd_seed VD2Q_SEED)
nops=${VD2Q_OPS:-300}
echo "vdisk-to-qemu: VD2Q_SEED=$seed, $nops operations per image"
MiB=$((1024 * 1024))

# name | -o options | virtual size
configs=(
    "cluster-512|cluster_size=512|$((32 * MiB + 512))"
    "cluster-4k|cluster_size=4096|$((64 * MiB + 1536))"
    "cluster-64k|cluster_size=65536|$((256 * MiB))"
    "cluster-2M|cluster_size=2M|$((1024 * MiB + 4096))"
    "refcount-1|refcount_bits=1|$((128 * MiB))"
    "refcount-16|refcount_bits=16|$((128 * MiB))"
    "refcount-64|refcount_bits=64|$((128 * MiB + 512))"
    "compat-0.10|compat=0.10|$((128 * MiB + 512))"
    "compat-1.1|compat=1.1|$((128 * MiB))"
    "lazy-refcounts|lazy_refcounts=on|$((128 * MiB))"
    "extended-l2|extended_l2=on|$((600 * MiB + 512))"
    "extended-l2-16k|extended_l2=on,cluster_size=16384|$((100 * MiB))"
    "prealloc-off|preallocation=off|$((64 * MiB))"
    "prealloc-metadata|preallocation=metadata|$((64 * MiB + 512))"
    "prealloc-falloc|preallocation=falloc|$((64 * MiB))"
    "prealloc-full|preallocation=full|$((64 * MiB))"
    "prealloc-metadata-4k|preallocation=metadata,cluster_size=4096|$((32 * MiB))"
)

# Prints the cluster size of an image (as qemu-img sees it).
cluster_of() {
    local c
    c=$(qemu_info_field "$1" cluster-size)
    printf '%s\n' "${c:-65536}"
}

# verify NAME: the image vd/IMG written by vdisk against its twin qm/IMG.
# Runs the check and compare cases on every layer given.
verify_layers() {
    local name=$1 top=$2
    shift 2
    local img
    for img in "$@"; do
        if qemu_check_clean "vd/$img" check.out; then
            pass "$name/check-$img"
        else
            fail "$name/check-$img" "qemu-img check on vdisk's image is not clean" check.out
        fi
    done
    if "$QEMU_IMG" compare -f qcow2 -F qcow2 "vd/$top" "qm/$top" >cmp.out 2>&1; then
        pass "$name/compare"
    else
        fail "$name/compare" "contents differ from the qemu twin (VD2Q_SEED=$seed)" cmp.out
    fi
}

# write_both NAME IMG SEED: the same random operations through vdisk io and qemu-io.
# Returns non-zero when vdisk io failed (then the vdisk image is not worth checking).
write_both() {
    local name=$1 img=$2 s=$3 size cl span
    size=$(qemu_info_field "qm/$img" virtual-size)
    cl=$(cluster_of "qm/$img")
    span=$((cl * cl / 8))
    [ "$(qemu_info_field "qm/$img" format-specific data extended-l2)" = true ] &&
        span=$((span / 2))
    "$PYTHON" "$VD_TESTS/interop/diff-ops.py" gen --seed "$s" --count "$nops" \
        --size "$size" --cluster "$cl" --l2-span "$span" >ops.txt
    if ! apply_ops qemu-io "qm/$img" ops.txt >apply.out 2>&1; then
        fail "$name/io-$img" "qemu-io failed on the twin (test setup)" apply.out
        return 1
    fi
    if apply_ops vdisk "vd/$img" ops.txt >apply.out 2>&1; then
        pass "$name/io-$img"
    else
        fail "$name/io-$img" "vdisk io failed (VD2Q_SEED=$seed)" apply.out
        return 1
    fi
}

# create_both NAME IMG SIZE OPTS [BACKING]: vdisk create in vd/, qemu-img create in qm/.
# An empty SIZE is left out (unquoted on purpose): the overlay takes the backing's size.
# shellcheck disable=SC2086
create_both() {
    local name=$1 img=$2 size=$3 opts=$4 backing=${5:-}
    local -a b=()
    [ -n "$backing" ] && b=(-b "$backing" -F qcow2)
    local -a o=()
    [ -n "$opts" ] && o=(-o "$opts")
    if ! (cd qm && "$QEMU_IMG" create -f qcow2 "${o[@]}" "${b[@]}" "$img" $size) \
        >create.out 2>&1; then
        fail "$name/create-$img" "qemu-img create of the twin failed (test setup)" create.out
        return 1
    fi
    if ! (cd vd && vd_with_timeout 600 "$VDISK" create -f qcow2 "${o[@]}" "${b[@]}" \
            "$img" $size) >create.out 2>&1; then
        fail "$name/create-$img" "vdisk create -f qcow2 ${o[*]} ${b[*]} $img $size failed" \
            create.out
        return 1
    fi
    pass "$name/create-$img"
    # Freshly created: clean, and described exactly like the twin.
    if qemu_check_clean "vd/$img" check.out; then
        pass "$name/fresh-check-$img"
    else
        fail "$name/fresh-check-$img" "qemu-img check of the new image is not clean" check.out
    fi
    local want got
    want=$(cd qm && qemu_info_summary "$img")
    got=$(cd vd && qemu_info_summary "$img")
    if [ -n "$got" ] && [ "$want" = "$got" ]; then
        pass "$name/info-$img"
    else
        printf 'qemu twin: %s\nvdisk:     %s\n' "$want" "$got" >info.out
        fail "$name/info-$img" "qemu-img info describes it differently from the twin" info.out
    fi
}

fresh_dirs() {
    rm -rf vd qm
    mkdir vd qm
}

i=0
for c in "${configs[@]}"; do
    IFS='|' read -r name opts size <<<"$c"
    fresh_dirs
    if create_both "$name" disk.qcow2 "$size" "$opts" &&
        write_both "$name" disk.qcow2 $((seed + i)); then
        verify_layers "$name" disk.qcow2 disk.qcow2
    else
        fail "$name/check-disk.qcow2" "not run: create or io failed"
        fail "$name/compare" "not run: create or io failed"
    fi
    i=$((i + 1))
done

# Backing chains 3 deep: base <- mid <- top, each layer written in turn; the overlays take
# their size from the backing file. The mixed chain varies cluster size and version.
mixed_top=compat=0.10,cluster_size=16384
chains=(
    "chain3-uniform|||"
    "chain3-mixed|cluster_size=65536|cluster_size=4096,lazy_refcounts=on|$mixed_top"
)
for c in "${chains[@]}"; do
    IFS='|' read -r name obase omid otop <<<"$c"
    fresh_dirs
    ok=1
    create_both "$name" base.qcow2 $((96 * MiB + 512)) "$obase" &&
        write_both "$name" base.qcow2 $((seed + i)) || ok=0
    [ $ok = 1 ] && { create_both "$name" mid.qcow2 "" "$omid" base.qcow2 &&
        write_both "$name" mid.qcow2 $((seed + i + 1)) || ok=0; }
    [ $ok = 1 ] && { create_both "$name" top.qcow2 "" "$otop" mid.qcow2 &&
        write_both "$name" top.qcow2 $((seed + i + 2)) || ok=0; }
    if [ $ok = 1 ]; then
        verify_layers "$name" top.qcow2 base.qcow2 mid.qcow2 top.qcow2
        if "$QEMU_IMG" compare -f qcow2 -F qcow2 vd/mid.qcow2 qm/mid.qcow2 >cmp.out 2>&1; then
            pass "$name/compare-mid"
        else
            fail "$name/compare-mid" "mid layer differs from the qemu twin (VD2Q_SEED=$seed)" \
                cmp.out
        fi
    else
        fail "$name/compare" "not run: create or io failed"
    fi
    i=$((i + 3))
done
vd_finish
