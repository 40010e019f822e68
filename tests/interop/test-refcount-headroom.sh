#!/usr/bin/env bash
# The next refcount block is made at the first allocation after an open or a flush, while
# little is dirty, for an image that can grow into it (README, "Where output differs"):
# - a 2 GiB image with 64 KiB clusters gets its second block at the first write, a 16 MiB
#   one keeps QEMU's single block (and QEMU's file size);
# - the images stay clean under `qemu-img check` and read back like a twin qemu-io wrote;
# - a kill right after the first write leaves at most leaks, and so does a failing write or
#   flush while the block is made; the write reports the error and a retry succeeds;
# - small clusters, where blocks come every 128 KiB, cross many boundaries cleanly.
. "$(dirname "$0")/../lib.sh"
vd_init

# blocks IMG: the number of refcount blocks the refcount table points at.
blocks() {
    "$PYTHON" - "$VD_TESTS" "$1" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
print(sum(1 for e in q.Image(sys.argv[2]).reftable() if e))
EOF
}

# twin NAME SIZE OPTS CMDS...: the same qemu-io commands through vdisk and through qemu-io
# on two fresh images; both must check clean and compare equal.
twin() {
    local name=$1 size=$2 opts=$3
    shift 3
    local -a c=()
    local x
    for x in "$@"; do c+=(-c "$x"); done
    rm -f v.q q.q
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" v.q "$size"
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" q.q "$size"
    if ! "$VDISK" io -f qcow2 "${c[@]}" v.q >io.out 2>&1; then
        fail "$name/vdisk-io" "vdisk io failed" io.out
        return 1
    fi
    "$QEMU_IO" -f qcow2 "${c[@]}" q.q >qio.out 2>&1
    qemu_check_clean v.q chk.out && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.out
    "$QEMU_IMG" compare -q v.q q.q >cmp.out 2>&1 && pass "$name/same-data" ||
        fail "$name/same-data" "differs from the image qemu-io wrote" cmp.out
}

# ---- a 2 GiB image gets its second block at the first write -----------------------------
if twin big 2G cluster_size=65536 'write -P 0x11 0 64k'; then
    nb=$(blocks v.q)
    nq=$(blocks q.q)
    [ "$nb" = 2 ] && [ "$nq" = 1 ] && pass "big/second-block-made" ||
        fail "big/second-block-made" "vdisk has $nb refcount blocks (want 2), qemu $nq (1)"
    # A second open and write must not add a third: the front is far from the next one.
    "$VDISK" io -f qcow2 -c 'write -P 0x12 1M 64k' v.q >/dev/null 2>&1
    nb=$(blocks v.q)
    [ "$nb" = 2 ] && pass "big/no-third-block" ||
        fail "big/no-third-block" "vdisk has $nb refcount blocks after a second write"
    qemu_check_clean v.q chk.out && pass "big/still-clean" ||
        fail "big/still-clean" "qemu-img check is not clean" chk.out
fi

# ---- a 16 MiB image never needs one: QEMU's layout --------------------------------------
if twin small 16M cluster_size=65536 'write -P 0x21 0 64k' 'write -P 0x22 8M 64k'; then
    nb=$(blocks v.q)
    [ "$nb" = 1 ] && pass "small/one-block" ||
        fail "small/one-block" "vdisk has $nb refcount blocks (want 1)"
    sv=$(stat -c %s v.q)
    sq=$(stat -c %s q.q)
    [ "$sv" = "$sq" ] && pass "small/same-file-size" ||
        fail "small/same-file-size" "vdisk's file is $sv bytes, qemu-io's $sq"
fi

# ---- killed right after the first write: leaks at most -----------------------------------
rm -f k.q
"$QEMU_IMG" create -q -f qcow2 k.q 2G
vd_with_timeout 120 "$VDISK" io -f qcow2 -t writeback -c 'write -P 0x31 0 64k' \
    -c 'sigraise 9' k.q >io.out 2>&1
rc=$?
[ $rc -eq 137 ] && pass "killed/killed" || fail "killed/killed" "exit $rc, not 137" io.out
"$QEMU_IMG" check k.q >chk.out 2>&1
rc=$?
[ $rc -eq 0 ] || [ $rc -eq 3 ] && pass "killed/no-corruption" ||
    fail "killed/no-corruption" "qemu-img check exited $rc" chk.out

# ---- a failing write or flush while the block is made ---------------------------------------
# The first I/Os of the first write make the new block (its cluster's refcount, the block,
# a sync, the table entry). Each failure fails the guest write, never the image.
for rule in write#1 write#2 flush#1 write#3; do
    name="fail-${rule/\#/}"
    rm -f e.q
    "$QEMU_IMG" create -q -f qcow2 e.q 2G
    "$VDISK" io -t writeback -c 'write -P 0x51 0 64k' "blkdebug:$rule=EIO:e.q" >io.out 2>&1
    rc=$?
    [ $rc -eq 1 ] && grep -qx 'write failed: Input/output error' io.out &&
        pass "$name/write-fails" || fail "$name/write-fails" "exit $rc" io.out
    "$QEMU_IMG" check e.q >chk.out 2>&1
    rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 3 ] && pass "$name/no-corruption" ||
        fail "$name/no-corruption" "qemu-img check exited $rc" chk.out
    "$VDISK" io -c 'write -P 0x52 0 64k' e.q >io.out 2>&1 && pass "$name/retry-works" ||
        fail "$name/retry-works" "the write without a fault failed" io.out
    "$QEMU_IMG" check e.q >chk.out 2>&1
    rc=$?
    { [ $rc -eq 0 ] || [ $rc -eq 3 ]; } &&
        "$QEMU_IO" -f qcow2 -c 'read -P 0x52 0 64k' e.q >rb.out 2>&1 && ! grep -q Pattern rb.out &&
        pass "$name/retry-reads-back" ||
        fail "$name/retry-reads-back" "check exited $rc, or the data differs" rb.out
done

# ---- 512-byte clusters: a block per 128 KiB, many crossings with flushes between ----------
ops=()
for i in 0 1 2 3 4 5 6 7 8 9; do
    ops+=("write -P 0x4$i $((i * 3))M 300k" flush)
done
twin small-clusters 64M cluster_size=512 "${ops[@]}"

vd_finish
