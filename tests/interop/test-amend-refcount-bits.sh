#!/usr/bin/env bash
# `amend -o refcount_bits=N` changes the refcount width as qemu-img does: every width from 1
# to 64 bits, up and down, on images with snapshots and compressed clusters; a refcount that
# does not fit the new width is refused with qemu-img's message and changes nothing; v2
# images keep 16 bits. After each change the image checks clean, reads the same, and takes
# new allocating writes (and snapshots) cleanly.
. "$(dirname "$0")/../lib.sh"
vd_init

# make IMG OPTS: data, a compressed cluster, a snapshot, more data over it.
make_img() {
    rm -f "$1"
    "$QEMU_IMG" create -q -f qcow2 -o "$2" "$1" 64M
    "$QEMU_IO" -c 'write -P 0x17 0 3M' -c 'write -c -P 0x18 5M 64k' "$1" >/dev/null
    "$QEMU_IMG" snapshot -c s1 "$1"
    "$QEMU_IO" -c 'write -P 0x19 1M 512k' "$1" >/dev/null
}
reads_back() {
    "$QEMU_IO" -c 'read -P 0x17 0 1M' -c 'read -P 0x19 1M 512k' -c 'read -P 0x17 1536k 1536k' \
        -c 'read -P 0x18 5M 64k' "$1" 2>&1 | grep -v '^read\|ops;'
}

# amend_both NAME OPTS BITS: the same image through vdisk and qemu-img.
amend_both() {
    local name=$1 opts=$2 bits=$3 vrc qrc
    make_img v.qcow2 "$opts"
    make_img q.qcow2 "$opts"
    "$VDISK" amend -o refcount_bits="$bits" v.qcow2 >v.out 2>&1
    vrc=$?
    "$QEMU_IMG" amend -o refcount_bits="$bits" q.qcow2 >q.out 2>&1
    qrc=$?
    sed -i 's/^[a-z-]*: //' v.out q.out
    if [ "$vrc" = "$qrc" ] && cmp -s v.out q.out; then
        pass "$name/same-result-as-qemu"
    else
        { echo "vdisk exit $vrc:"; cat v.out; echo "qemu-img exit $qrc:"; cat q.out; } >d.out
        fail "$name/same-result-as-qemu" "vdisk and qemu-img differ" d.out
    fi
    local want=$bits
    [ "$qrc" = 0 ] || want=$(qemu_info_field q.qcow2 format-specific data refcount-bits)
    [ "$(qemu_info_field v.qcow2 format-specific data refcount-bits)" = "$want" ] &&
        pass "$name/width-is-$want" ||
        fail "$name/width-is-$want" "refcount bits $(qemu_info_field v.qcow2 format-specific data refcount-bits)"
    qemu_check_clean v.qcow2 chk.out && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.out
    reads_back v.qcow2 >r.out
    [ ! -s r.out ] && pass "$name/reads-back" || fail "$name/reads-back" "data changed" r.out
    # New allocations and a snapshot under the new width, by vdisk.
    "$VDISK" io -c 'write -P 0x20 20M 2M' -c 'write -c -P 0x21 30M 128k' v.qcow2 >io.out 2>&1 &&
        "$VDISK" snapshot -c s2 v.qcow2 >>io.out 2>&1 || true
    if [ "$want" -ge 2 ]; then
        qemu_check_clean v.qcow2 chk.out &&
            "$QEMU_IO" -c 'read -P 0x20 20M 2M' -c 'read -P 0x21 30M 128k' v.qcow2 >>chk.out 2>&1 &&
            pass "$name/writes-after" || fail "$name/writes-after" "not clean after writes" chk.out
    fi
}

for bits in 64 32 8 4 2 1; do
    amend_both "v3-to-$bits" compat=1.1 "$bits"
done
# From narrow widths back up (no compressed data would fit 1 bit: 8 to start).
amend_both "from-8-to-16" compat=1.1,refcount_bits=8 16
amend_both "from-64-to-2" compat=1.1,refcount_bits=64 2
amend_both "v2-to-8" compat=0.10 8

# An image without snapshots or compressed clusters fits in 1 bit, and back.
rm -f one.qcow2
"$QEMU_IMG" create -q -f qcow2 one.qcow2 1G
"$QEMU_IO" -c 'write -P 0x31 0 10M' -c 'write -P 0x32 700M 1M' one.qcow2 >/dev/null
ok=1
for bits in 1 64 2 16; do
    "$VDISK" amend -o refcount_bits=$bits one.qcow2 >out.txt 2>&1 || ok=0
    qemu_check_clean one.qcow2 chk.out || { ok=0; cat chk.out >>out.txt; }
done
"$QEMU_IO" -c 'read -P 0x31 0 10M' -c 'read -P 0x32 700M 1M' one.qcow2 >>out.txt 2>&1 || ok=0
[ "$ok" = 1 ] && pass "round-trip-1-64-2-16" || fail "round-trip-1-64-2-16" "failed" out.txt

# Widths qemu-img refuses at create, in its words ("-1" is a number that wraps).
for w in 0 -1 128 42 1x; do
    "$VDISK" create -q -f qcow2 -o refcount_bits=$w w.qcow2 64M 2>&1 | sed 's/^[a-z-]*: //' >v.out
    "$QEMU_IMG" create -q -f qcow2 -o refcount_bits=$w w.qcow2 64M 2>&1 | sed 's/^[a-z-]*: //' >q.out
    cmp -s v.out q.out && pass "create-refuses-$w" ||
        { diff v.out q.out >d.out; fail "create-refuses-$w" "message differs" d.out; }
done

vd_finish
