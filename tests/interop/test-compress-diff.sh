#!/usr/bin/env bash
# Random overwrites of compressed images (issue 3, must-show 2, second half). The same seeded
# operations (partial and whole-cluster writes of patterns, text and random data, zero
# writes with and without unmap, discards, compressed writes of whole clusters) go through
# `vdisk io` and through `qemu-io`:
#   vdisk-made: vdisk io on a `vdisk convert -c` image, qemu-io on a `qemu-img convert -c`
#               twin of the same data (each tool's whole path, end to end);
#   qemu-made:  both on copies of one `qemu-img convert -c` image (vdisk's I/O on QEMU's
#               layout).
# Both must stay clean under `qemu-img check` and identical under `qemu-img compare`.
# CDIFF_SEED=<n> reproduces a run, CDIFF_OPS=<n> changes the number of operations.
. "$(dirname "$0")/../lib.sh"
vd_init

seed=$(vd_seed CDIFF_SEED)
count=${CDIFF_OPS:-300}
echo "compressed differential test: CDIFF_SEED=$seed, $count operations per setup"

MiB=$((1024 * 1024))
size=$((8 * MiB + 2560))
data="$PYTHON $VD_TESTS/interop/compress-data.py"
if ! $data disk src.raw --size "$size" --seed "$seed" >/dev/null 2>setup.out ||
    ! $data fill text.bin --kind text --size $((1 * MiB + 512)) --seed $((seed + 1)) \
        2>>setup.out ||
    ! $data fill random.bin --kind random --size $((2 * MiB)) --seed $((seed + 2)) \
        2>>setup.out ||
    ! $data fill mixed.bin --kind mixed --size $((3 * MiB)) --seed $((seed + 3)) \
        2>>setup.out; then
    fail setup "generating the test data failed" setup.out
    vd_finish
fi
sources="$VD_TESTDIR/text.bin,$VD_TESTDIR/random.bin,$VD_TESTDIR/mixed.bin"
kinds="write:35,write-c:22,zero:12,zero-unmap:10,discard:16,flush:5"

# name | compression type | cluster size | who made the image vdisk io starts from
setups=(
    "vdisk-made-zlib|zlib|65536|vdisk"
    "vdisk-made-zstd|zstd|65536|vdisk"
    "qemu-made-zlib|zlib|65536|qemu"
    "qemu-made-zstd|zstd|65536|qemu"
    "vdisk-made-zstd-4k|zstd|4096|vdisk"
    "vdisk-made-zlib-2M|zlib|2097152|vdisk"
)

i=0
for s in "${setups[@]}"; do
    IFS='|' read -r name t c maker <<<"$s"
    o="compression_type=$t,cluster_size=$c"
    rm -f q.qcow2 v.qcow2
    if ! "$QEMU_IMG" convert -c -f raw -O qcow2 -o "$o" src.raw q.qcow2 >conv.out 2>&1; then
        fail "cdiff/$name/setup" "qemu-img convert -c failed" conv.out
        continue
    fi
    from=(--from-image "$VD_TESTDIR/q.qcow2")
    if [ "$maker" = vdisk ]; then
        if ! "$VDISK" convert -c -f raw -O qcow2 -o "$o" src.raw v.qcow2 >conv.out 2>&1; then
            fail "cdiff/$name/setup" "vdisk convert -c failed" conv.out
            continue
        fi
        from=(--from-image "$VD_TESTDIR/v.qcow2" --from-image-b "$VD_TESTDIR/q.qcow2")
    fi
    args=(--vdisk "$VDISK" --name "$name" --workdir "$VD_TESTDIR" "${from[@]}"
          --size "$size" --count "$count" --seed $((seed + i)) --base-seed "$seed"
          --checkpoint 100 --kinds "$kinds" --sources "$sources")
    # diff-ops.py prints the PASS/FAIL lines itself (with the seed on failure).
    while IFS= read -r line; do
        line=${line//DIFF_SEED=/CDIFF_SEED=}
        case $line in
            PASS\ *) printf 'PASS c%s\n' "${line#PASS }"; VD_NPASS=$((VD_NPASS + 1)) ;;
            FAIL\ *) printf 'FAIL c%s\n' "${line#FAIL }"; VD_NFAIL=$((VD_NFAIL + 1)) ;;
            *) printf '%s\n' "$line" ;;
        esac
    done < <(vd_with_timeout 300 "$PYTHON" "$VD_TESTS/interop/diff-ops.py" run "${args[@]}" 2>&1;
             rc=$?; [ $rc -eq 124 ] && echo "FAIL diff/$name: timed out (DIFF_SEED=$seed)")
    rm -rf "${VD_TESTDIR:?}/$name"
    i=$((i + 1))
done
vd_finish
