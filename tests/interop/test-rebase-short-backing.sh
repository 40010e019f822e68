#!/usr/bin/env bash
# A safe rebase never changes what the guest reads. Past the end of a backing file that is
# shorter than the image, the guest read zeros; when the new backing file has data there
# (here: it sits below the short one in the chain), rebase must write zeros into the image.
# Each case compares the guest's bytes before and after, the same rebase by qemu-img, and
# runs qemu-img check.
. "$(dirname "$0")/../lib.sh"
vd_init

C=65536

# chain NAME SIZES...: base.qcow2 (first size, filled with 0x11), then one overlay per
# further size, each backed by the one before; the last is top.qcow2. Prints nothing.
chain() {
    local prev=base.qcow2 i=0 s img
    rm -f base.qcow2 l[0-9].qcow2 top.qcow2
    "$QEMU_IMG" create -q -f qcow2 base.qcow2 "$1"
    "$QEMU_IO" -c "write -P 0x11 0 $1" base.qcow2 >/dev/null
    shift
    for s in "$@"; do
        i=$((i + 1))
        img=l$i.qcow2
        [ $# -eq $i ] && img=top.qcow2
        "$QEMU_IMG" create -q -f qcow2 -b "$prev" -F qcow2 "$img" "$s"
        prev=$img
    done
}

# case NAME NEWBASE SIZES...: rebases top.qcow2 onto NEWBASE with vdisk and with qemu-img.
case_rebase() {
    local name=$1 newbase=$2
    shift 2
    chain "$@"
    "$QEMU_IMG" convert -O raw top.qcow2 before.raw
    if ! "$VDISK" rebase -b "$newbase" -F qcow2 top.qcow2 >out.txt 2>&1; then
        fail "$name/rebase" "vdisk rebase failed" out.txt
        return
    fi
    "$QEMU_IMG" convert -O raw top.qcow2 after.raw
    cmp before.raw after.raw >cmp.txt 2>&1 && pass "$name/guest-data-unchanged" ||
        fail "$name/guest-data-unchanged" "the guest reads other bytes after the rebase" cmp.txt
    qemu_check_clean top.qcow2 chk.txt && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.txt
    [ "$(qemu_info_field top.qcow2 backing-filename)" = "\"$newbase\"" ] &&
        pass "$name/backing-changed" ||
        fail "$name/backing-changed" "backing file is $(qemu_info_field top.qcow2 backing-filename)"
    mv top.qcow2 vdisk-top.qcow2
    chain "$@"
    "$QEMU_IMG" rebase -b "$newbase" -F qcow2 top.qcow2
    "$QEMU_IMG" compare -q vdisk-top.qcow2 top.qcow2 >cmp.txt 2>&1 &&
        pass "$name/same-as-qemu-img" ||
        fail "$name/same-as-qemu-img" "differs from qemu-img's rebase" cmp.txt
}

# The overlay (5 clusters) over a 4-cluster backing file over the new base (5 clusters of
# data): the fifth cluster read zeros, and must still.
case_rebase short-old-backing base.qcow2 $((5 * C)) $((4 * C)) $((5 * C))

# The short layer is one further down: top (5) -> l1 (5) -> l2 (4) -> base (5).
case_rebase short-deeper-layer base.qcow2 $((5 * C)) $((4 * C)) $((5 * C)) $((5 * C))

# The short layer ends inside a cluster-sized chunk of the copy loop: 2.5 clusters.
case_rebase short-unaligned base.qcow2 $((5 * C)) $((5 * C / 2)) $((5 * C))

# The new base is not in the chain: plain comparison of old and new backing contents.
chain $((5 * C)) $((4 * C)) $((5 * C))
"$QEMU_IMG" create -q -f qcow2 other.qcow2 $((5 * C))
"$QEMU_IO" -c "write -P 0x22 0 $((5 * C))" other.qcow2 >/dev/null
"$QEMU_IMG" convert -O raw top.qcow2 before.raw
"$VDISK" rebase -b other.qcow2 -F qcow2 top.qcow2 >out.txt 2>&1
"$QEMU_IMG" convert -O raw top.qcow2 after.raw
cmp before.raw after.raw >cmp.txt 2>&1 && pass "new-base-outside-chain/guest-data-unchanged" ||
    fail "new-base-outside-chain/guest-data-unchanged" "guest bytes changed" cmp.txt

vd_finish
