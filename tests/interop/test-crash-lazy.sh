#!/usr/bin/env bash
# Crash consistency through a process kill (`sigraise 9`), as QEMU's iotest 039 does:
# - lazy refcounts: after a kill the image is dirty; `qemu-img check -r all` and
#   `vdisk check -r all` repair it; a read-write open by vdisk repairs it and clears the
#   dirty bit; a read-only open leaves it; flushed data survives;
# - without lazy refcounts a kill may leak clusters, never corrupt the image;
# - a clean close of a lazy image leaves it clean.
. "$(dirname "$0")/../lib.sh"
vd_init

dirty_of() { qemu_info_field "$1" dirty-flag; }

# crash IMG CMDS...: runs vdisk io with the commands, expecting it to die by SIGKILL.
crash() {
    local name=$1 img=$2
    shift 2
    local -a c=()
    local x
    for x in "$@"; do c+=(-c "$x"); done
    vd_with_timeout 600 "$VDISK" io -f qcow2 "${c[@]}" -c 'sigraise 9' "$img" >io.out 2>&1
    local rc=$?
    if [ $rc -eq 137 ]; then
        pass "$name/killed"
        return 0
    fi
    fail "$name/killed" "vdisk io ... -c 'sigraise 9' exited $rc, not 137 (SIGKILL)" io.out
    return 1
}

# ---- lazy refcounts, killed after a 1 MiB write ----------------------------------------
name=lazy-crash
"$QEMU_IMG" create -f qcow2 -o lazy_refcounts=on img.qcow2 64M >/dev/null
if crash $name img.qcow2 'write -P 0x5a 0 1M'; then
    dirty=$(dirty_of img.qcow2)
    echo "    dirty-flag after the kill: ${dirty:-?}"
    "$QEMU_IMG" check img.qcow2 >check.out 2>&1
    rc=$?
    # Dirty: refcounts may lag (errors are expected until repair). Not dirty: the
    # refcounts must be right, leaks at most.
    if { [ "$dirty" = true ] && [ $rc -ne 1 ]; } || [ $rc -eq 0 ] || [ $rc -eq 3 ]; then
        pass "$name/consistent"
    else
        fail "$name/consistent" "dirty-flag=$dirty but qemu-img check exited $rc" check.out
    fi

    cp img.qcow2 q.qcow2
    if "$QEMU_IMG" check -r all q.qcow2 >check.out 2>&1; then
        pass "$name/qemu-repair"
    else
        fail "$name/qemu-repair" "qemu-img check -r all could not repair it" check.out
    fi

    cp img.qcow2 v.qcow2
    vd_with_timeout 600 "$VDISK" check -r all v.qcow2 >vcheck.out 2>&1
    rc=$?
    if [ $rc -eq 0 ] && qemu_check_clean v.qcow2 check.out; then
        pass "$name/vdisk-repair"
    else
        cat vcheck.out check.out >both.out 2>/dev/null
        fail "$name/vdisk-repair" "vdisk check -r all exited $rc; then qemu-img check:" both.out
    fi

    if [ "$dirty" = true ]; then
        cp img.qcow2 ro.qcow2
        vd_with_timeout 600 "$VDISK" io -r -f qcow2 -c 'read 0 64k' ro.qcow2 >io.out 2>&1
        rc=$?
        if [ $rc -eq 0 ] && [ "$(dirty_of ro.qcow2)" = true ]; then
            pass "$name/ro-open-keeps-dirty"
        else
            fail "$name/ro-open-keeps-dirty" \
                "read-only open exited $rc, dirty-flag now $(dirty_of ro.qcow2)" io.out
        fi
    fi

    # A read-write open repairs and clears the dirty bit, as QEMU does.
    if vd_with_timeout 600 "$VDISK" io -f qcow2 -c 'read 0 64k' img.qcow2 >io.out 2>&1; then
        pass "$name/rw-open"
    else
        fail "$name/rw-open" "vdisk io could not open the dirty image read-write" io.out
    fi
    if qemu_check_clean img.qcow2 check.out; then
        pass "$name/rw-open-repairs"
    else
        fail "$name/rw-open-repairs" "qemu-img check after vdisk's read-write open" check.out
    fi
    qd=$(dirty_of img.qcow2)
    vd=$(vd_with_timeout 60 "$VDISK" info --output=json img.qcow2 2>/dev/null |
         "$PYTHON" -c 'import json,sys; print(json.dumps(json.load(sys.stdin).get("dirty-flag")))' \
         2>/dev/null)
    if [ "$qd" = false ] && [ "$vd" = false ]; then
        pass "$name/dirty-cleared"
    else
        fail "$name/dirty-cleared" "dirty-flag after repair: qemu-img says '$qd', vdisk '$vd'"
    fi
fi

# ---- lazy refcounts, flushed before the kill: the data must survive -------------------
name=lazy-flush
rm -f ./*.qcow2
"$QEMU_IMG" create -f qcow2 -o lazy_refcounts=on img.qcow2 64M >/dev/null
if crash $name img.qcow2 'write -P 0x5a 0 1M' 'write -P 0x6b 10M 300k' 'flush' \
    'write -P 0x7c 20M 64k'; then
    "$QEMU_IMG" check -r all img.qcow2 >check.out 2>&1
    if "$QEMU_IO" -r -f qcow2 -c 'read -P 0x5a 0 1M' -c 'read -P 0x6b 10M 300k' img.qcow2 \
        >io.out 2>&1 && qemu_check_clean img.qcow2 check.out; then
        pass "$name/data-durable"
    else
        cat io.out check.out >both.out
        fail "$name/data-durable" "flushed data lost or image unclean after repair" both.out
    fi
fi

# ---- no lazy refcounts: a kill may leak, never corrupt -------------------------------
name=nolazy-crash
rm -f ./*.qcow2
"$QEMU_IMG" create -f qcow2 img.qcow2 64M >/dev/null
if crash $name img.qcow2 'write -P 0x5a 0 1M' 'write -z 4M 1M' 'discard 0 128k' \
    'write -P 0x11 8M 5000'; then
    "$QEMU_IMG" check img.qcow2 >check.out 2>&1
    rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 3 ]; then
        pass "$name/only-leaks"
    else
        fail "$name/only-leaks" "qemu-img check exited $rc after a kill" check.out
    fi
    if [ "$(dirty_of img.qcow2)" = false ]; then
        pass "$name/not-dirty"
    else
        fail "$name/not-dirty" "an image without lazy refcounts was left dirty"
    fi
fi

# Many small random operations, then a kill: still at most leaks.
name=nolazy-crash-random
rm -f ./*.qcow2
"$QEMU_IMG" create -f qcow2 -o cluster_size=4096 img.qcow2 32M >/dev/null
seed=$(vd_seed CRASH_SEED)
"$PYTHON" "$VD_TESTS/interop/diff-ops.py" gen --seed "$seed" --count 400 --size $((32 << 20)) \
    --cluster 4096 >ops.txt
mapfile -t ops <ops.txt
if crash $name img.qcow2 "${ops[@]}"; then
    "$QEMU_IMG" check img.qcow2 >check.out 2>&1
    rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 3 ]; then
        pass "$name/only-leaks"
    else
        fail "$name/only-leaks" "qemu-img check exited $rc (CRASH_SEED=$seed)" check.out
    fi
fi

# ---- lazy refcounts, clean close: clean image, dirty bit cleared -----------------------
name=lazy-clean-close
rm -f ./*.qcow2
"$QEMU_IMG" create -f qcow2 -o lazy_refcounts=on img.qcow2 64M >/dev/null
if vd_with_timeout 600 "$VDISK" io -f qcow2 -c 'write -P 0x5a 0 1M' -c 'write -z 2M 64k' \
    img.qcow2 >io.out 2>&1; then
    if qemu_check_clean img.qcow2 check.out && [ "$(dirty_of img.qcow2)" = false ]; then
        pass "$name/clean"
    else
        fail "$name/clean" "after a clean close: dirty-flag $(dirty_of img.qcow2)" check.out
    fi
else
    fail "$name/clean" "vdisk io failed" io.out
fi
vd_finish
