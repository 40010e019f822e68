#!/usr/bin/env bash
# `resize --shrink` leaves the layout qemu-img leaves: the cropped clusters are freed and
# their space punched out of the file (merged, so that clusters smaller than a file-system
# block free space too), refcount blocks that count nothing any more are dropped, and the
# file ends at the last cluster in use. Twin images shrunk by vdisk and by qemu-img must
# agree in file length, refcount blocks and data, and check clean.
. "$(dirname "$0")/../lib.sh"
vd_init

refblocks() {
    "$PYTHON" - "$VD_TESTS" "$1" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
print(sum(1 for e in q.Image(sys.argv[2]).reftable() if e))
EOF
}
# Allocated bytes of the file, in KiB.
used_kib() {
    echo $(($(stat -c '%b' "$1") * 512 / 1024))
}

# shrink_case NAME OPTS SIZE NEWSIZE QEMU-IO-CMDS...
shrink_case() {
    local name=$1 opts=$2 size=$3 new=$4 t
    shift 4
    local -a c=()
    local x
    for x in "$@"; do c+=(-c "$x"); done
    for t in v q; do
        rm -f "$t.qcow2"
        "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$t.qcow2" "$size"
        "$QEMU_IO" "${c[@]}" "$t.qcow2" >/dev/null
    done
    if ! "$VDISK" resize -q --shrink v.qcow2 "$new" >out.txt 2>&1; then
        fail "$name/resize" "vdisk resize failed" out.txt
        return
    fi
    "$QEMU_IMG" resize -q --shrink q.qcow2 "$new"
    qemu_check_clean v.qcow2 chk.txt && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.txt
    "$QEMU_IMG" compare -q v.qcow2 q.qcow2 >cmp.txt 2>&1 && pass "$name/same-data" ||
        fail "$name/same-data" "guest data differs from qemu-img's" cmp.txt
    local vs qs vr qr
    vs=$(stat -c %s v.qcow2) qs=$(stat -c %s q.qcow2)
    [ "$vs" = "$qs" ] && pass "$name/file-length" ||
        fail "$name/file-length" "vdisk's file is $vs bytes, qemu-img's $qs"
    vr=$(refblocks v.qcow2) qr=$(refblocks q.qcow2)
    [ "$vr" = "$qr" ] && pass "$name/refcount-blocks" ||
        fail "$name/refcount-blocks" "vdisk keeps $vr refcount blocks, qemu-img $qr"
    # Punched space: no more than qemu-img's allocation plus a little metadata slack.
    local vu qu
    vu=$(used_kib v.qcow2) qu=$(used_kib q.qcow2)
    [ "$vu" -le $((qu + qu / 4 + 256)) ] && pass "$name/space-freed" ||
        fail "$name/space-freed" "vdisk's file uses $vu KiB, qemu-img's $qu KiB"
}

shrink_case seq-512 cluster_size=512 64M 1M 'write -P 1 0 32M'
shrink_case seq-4k cluster_size=4096 64M 1M 'write -P 1 0 32M'
shrink_case seq-64k cluster_size=65536 256M 16M 'write -P 1 0 100M'
shrink_case scattered-512 cluster_size=512 64M 3M 'write -P 2 0 1M' 'write -P 3 10M 4M' \
    'write -P 4 40M 8M' 'write -P 5 63M 1M'
shrink_case compressed-4k cluster_size=4096 32M 2M 'write -c -P 6 0 4M' 'write -P 7 8M 8M'
shrink_case keep-most-512 cluster_size=512 8M 7M 'write -P 8 0 8M'

# A failing write or flush anywhere in a shrink (the discards, the dropped refcount blocks,
# the header) leaves an image that checks without corruption (leaks allowed) and still reads
# the data below the new size.
mk_src() {
    rm -f f.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 f.qcow2 8M
    "$QEMU_IO" -c 'write -P 0x61 0 1M' -c 'write -P 0x62 1M 5M' f.qcow2 >/dev/null
}
mk_src
rm -f counts.txt
VDISK_BLKDEBUG_COUNT=counts.txt "$VDISK" resize -q --shrink blkdebug::f.qcow2 1M >/dev/null 2>&1
writes=$(sed -n 's/.*writes=\([0-9]*\).*/\1/p' counts.txt | tail -n 1)
flushes=$(sed -n 's/.*flushes=\([0-9]*\).*/\1/p' counts.txt | tail -n 1)
bad=0 tried=0
for op in write flush; do
    total=$writes
    [ $op = flush ] && total=$flushes
    step=$(( (total + 39) / 40 ))
    [ "$step" -ge 1 ] || step=1
    for ((n = 1; n <= total; n += step)); do
        mk_src
        "$VDISK" resize -q --shrink "blkdebug:$op#$n=EIO:f.qcow2" 1M >/dev/null 2>&1
        tried=$((tried + 1))
        "$QEMU_IMG" check -r leaks f.qcow2 >chk.out 2>&1
        rc=$?
        if [ $rc -ne 0 ] && [ $rc -ne 3 ] ||
            ! "$QEMU_IO" -c 'read -P 0x61 0 1M' f.qcow2 >rd.out 2>&1; then
            bad=$((bad + 1))
            echo "$op#$n: check exit $rc" >>bad.out
            cat chk.out rd.out >>bad.out
        fi
    done
done
[ "$tried" -gt 10 ] && [ "$bad" = 0 ] && pass "failures-during-shrink ($tried cases)" ||
    fail "failures-during-shrink" "$bad of $tried failed writes or flushes left a bad image" bad.out

vd_finish
