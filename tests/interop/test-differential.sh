#!/usr/bin/env bash
# Differential test: the same seeded random sequence of >= 10,000 writes, zero writes and
# discards goes through `vdisk io` and through `qemu-io` on twin images; contents must stay
# identical (qemu-img compare) and vdisk's image clean (qemu-img check) at every checkpoint.
# DIFF_SEED=<n> reproduces a run, DIFF_OPS=<n> changes the number of operations.
. "$(dirname "$0")/../lib.sh"
vd_init

seed=$(vd_seed DIFF_SEED)
count=${DIFF_OPS:-10000}
echo "differential test: DIFF_SEED=$seed, $count operations per configuration"

# name | twin -o options | backing -o options ("-" = no backing file) | virtual size
# Sizes are deliberately not cluster multiples so the last, partial cluster is exercised.
configs=(
    "v3-64k|compat=1.1|-|$((1024 * 1024 * 1024 + 3 * 512))"
    "v3-4k-backing|cluster_size=4096|cluster_size=65536|$((24 * 1024 * 1024 + 1536))"
    "v2-64k|compat=0.10|-|$((256 * 1024 * 1024 + 512))"
    "v2-64k-backing|compat=0.10|compat=0.10,cluster_size=4096|$((64 * 1024 * 1024 + 4096))"
    "extl2-64k-backing|extended_l2=on|cluster_size=16384|$((512 * 1024 * 1024 + 2048))"
)

i=0
for c in "${configs[@]}"; do
    IFS='|' read -r name opts bopts size <<<"$c"
    args=(--vdisk "$VDISK" --name "$name" --workdir "$VD_TESTDIR" --opts "$opts"
          --size "$size" --count "$count" --seed $((seed + i)) --base-seed "$seed")
    if [ "$bopts" != - ]; then
        args+=(--backing-opts "$bopts")
    fi
    # diff-ops.py prints the PASS/FAIL lines itself; count them here too.
    while IFS= read -r line; do
        printf '%s\n' "$line"
        case $line in
            PASS\ *) VD_NPASS=$((VD_NPASS + 1)) ;;
            FAIL\ *) VD_NFAIL=$((VD_NFAIL + 1)) ;;
        esac
    done < <(vd_with_timeout 900 "$PYTHON" "$VD_TESTS/interop/diff-ops.py" run "${args[@]}" 2>&1;
             rc=$?; [ $rc -eq 124 ] && echo "FAIL diff/$name: timed out (DIFF_SEED=$seed)")
    rm -rf "${VD_TESTDIR:?}/$name"
    i=$((i + 1))
done
vd_finish
