#!/usr/bin/env bash
# The fault-injection filter (`blkdebug:RULES:PATH`): failing the Nth write, flush or read,
# or the request after a named metadata event, makes the operation fail with that errno and
# a message, never corrupts the image (qemu-img check: no errors; leaks allowed), and leaves
# data that was written before intact. Counts land in VDISK_BLKDEBUG_COUNT. Bad rule specs
# give clear errors.
. "$(dirname "$0")/../lib.sh"
vd_init

# check_no_corruption NAME IMG: qemu-img check exits 0 (clean) or 3 (leaks only).
check_no_corruption() {
    "$QEMU_IMG" check "$2" >chk.out 2>&1
    local rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 3 ]; then
        pass "$1"
    else
        fail "$1" "qemu-img check exited $rc" chk.out
    fi
}

# reads_back NAME IMG OFF LEN PATTERN: qemu-io sees the pattern there.
reads_back() {
    if "$QEMU_IO" -f qcow2 -c "read -P $5 $3 $4" "$2" >rb.out 2>&1 && ! grep -q Pattern rb.out
    then
        pass "$1"
    else
        fail "$1" "qemu-io read -P $5 $3 $4 failed" rb.out
    fi
}

# ---- count, then fail every write and every flush of an allocating write in turn ------
for cs in 4k 64k; do
    rm -f base.q cnt
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=$cs base.q 64M
    "$QEMU_IO" -f qcow2 -c 'write -P 0x11 0 1M' base.q >/dev/null
    cp base.q probe.q
    VDISK_BLKDEBUG_COUNT=$PWD/cnt "$VDISK" io -c 'write -P 0x22 8M 3M' -c 'write -P 0x23 40M 64k' \
        "blkdebug::probe.q" >/dev/null 2>&1
    line=$(tail -n 1 cnt)
    writes=$(sed -n 's/.*writes=\([0-9]*\).*/\1/p' <<<"$line")
    flushes=$(sed -n 's/.*flushes=\([0-9]*\).*/\1/p' <<<"$line")
    if [ -n "$writes" ] && [ "$writes" -ge 3 ] && [ -n "$flushes" ] && [ "$flushes" -ge 1 ]; then
        pass "count/$cs ($line)"
    else
        fail "count/$cs" "unexpected count line '$line'" cnt
        continue
    fi
    for op in write flush; do
        max=$writes
        [ $op = flush ] && max=$flushes
        bad=0
        for ((n = 1; n <= max; n++)); do
            cp base.q t.q
            "$VDISK" io -c 'write -P 0x22 8M 3M' -c 'write -P 0x23 40M 64k' \
                "blkdebug:$op#$n=EIO:t.q" >io.out 2>&1
            rc=$?
            if [ $rc -eq 0 ] && [ $op = write ]; then
                bad=1
                fail "$op-fails/$cs/#$n" "no error reported" io.out
            fi
            "$QEMU_IMG" check t.q >chk.out 2>&1
            crc=$?
            if [ $crc -ne 0 ] && [ $crc -ne 3 ]; then
                bad=1
                fail "$op-no-corruption/$cs/#$n" "qemu-img check exited $crc" chk.out
            fi
            if ! "$QEMU_IO" -f qcow2 -c 'read -P 0x11 0 1M' t.q >rb.out 2>&1 ||
                grep -q Pattern rb.out; then
                bad=1
                fail "$op-old-data/$cs/#$n" "data written before was damaged" rb.out
            fi
        done
        [ $bad = 0 ] && pass "$op-each-of-$max/$cs: fails cleanly, no corruption, old data intact"
    done
done

# ---- messages and errnos ------------------------------------------------------------------
rm -f m.q
"$QEMU_IMG" create -q -f qcow2 m.q 16M
"$VDISK" io -c 'write 0 64k' 'blkdebug:write#1=ENOSPC:m.q' >io.out 2>&1
grep -q 'write failed: No space left on device' io.out && pass "errno/ENOSPC" ||
    fail "errno/ENOSPC" "expected qemu-io's write failed message" io.out
"$VDISK" io -c 'write -P 0x5 0 64k' m.q >/dev/null 2>&1
rm -f rcnt
VDISK_BLKDEBUG_COUNT=$PWD/rcnt "$VDISK" io -c 'read -P 0x5 0 64k' 'blkdebug::m.q' >/dev/null 2>&1
reads=$(tail -n 1 rcnt | sed -n 's/^reads=\([0-9]*\).*/\1/p')
# The last read of that run is the data read (the ones before open the image).
"$VDISK" io -c 'read -P 0x5 0 64k' "blkdebug:read#${reads:-1}=EIO:m.q" >io.out 2>&1
rc=$?
"$VDISK" io -c 'read -P 0x5 0 64k' 'blkdebug:read#1000=EIO:m.q' >io2.out 2>&1
if [ $rc -ne 0 ] && grep -q 'read failed: Input/output error' io.out && ! grep -q failed io2.out
then
    pass "read#N fails that read only"
else
    fail "read#N" "rc=$rc" io.out
fi
"$VDISK" io -c 'write 1M 64k' 'blkdebug:event:l1_update#1=EIO;event:l2_update#1=EIO:m.q' \
    >io.out 2>&1
check_no_corruption "event rules: no corruption" m.q
reads_back "event rules: old data intact" m.q 0 64k 0x5
"$VDISK" info 'blkdebug::m.q' >info.out 2>&1 && grep -q 'file format: qcow2' info.out &&
    pass "no rules: plain pass-through" || fail "no rules" "info failed" info.out

expect_error() {
    local name=$1 spec=$2 want=$3
    "$VDISK" info "$spec" >e.out 2>&1
    local rc=$?
    if [ $rc -eq 1 ] && grep -qF "$want" e.out; then
        pass "spec/$name"
    else
        fail "spec/$name" "exit $rc, wanted a message containing '$want'" e.out
    fi
}
expect_error bad-op 'blkdebug:bogus#1=EIO:m.q' "bad rule at 'bogus'"
expect_error zero-n 'blkdebug:write#0=EIO:m.q' 'N must be a positive number'
expect_error no-n 'blkdebug:write=EIO:m.q' "needs #N=ERR"
expect_error errno 'blkdebug:write#1=EFOO:m.q' "unknown errno name 'EFOO'"
expect_error no-path 'blkdebug:write#1=EIO' "missing ':PATH'"
expect_error empty-path 'blkdebug:write#1=EIO:' 'no image path'
expect_error missing 'blkdebug::nosuch.q' "Could not open 'nosuch.q'"
vd_finish
