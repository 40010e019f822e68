#!/usr/bin/env bash
# The fault-injection filter (`blkdebug:RULES:PATH`): failing the Nth write, flush or read,
# or the request after a named metadata event, makes the operation fail with that errno and
# qemu-io's message (the same as qemu-io with QEMU's own blkdebug), never corrupts the image
# (qemu-img check: no errors; leaks allowed), and leaves data written before intact. Counts
# land in VDISK_BLKDEBUG_COUNT, one line per command. Bad rule specs give clear errors.
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
    line=$(cat cnt)
    writes=$(sed -n 's/.*writes=\([0-9]*\).*/\1/p' <<<"$line")
    flushes=$(sed -n 's/.*flushes=\([0-9]*\).*/\1/p' <<<"$line")
    if [ "$(wc -l <cnt)" -eq 1 ] && [ -n "$writes" ] && [ "$writes" -ge 3 ] &&
        [ -n "$flushes" ] && [ "$flushes" -ge 1 ]; then
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
expect_error bad-op 'blkdebug:bogus#1=EIO:m.q' "bad rule 'bogus#1=EIO': unknown operation 'bogus'"
expect_error bad-n 'blkdebug:write#x=EIO:m.q' "blkdebug: bad rule 'write#x=EIO': N must be a positive number"
expect_error zero-n 'blkdebug:write#0=EIO:m.q' 'N must be a positive number'
expect_error no-n 'blkdebug:write=EIO:m.q' "bad rule 'write=EIO': expected OP#N=ERR"
expect_error no-err 'blkdebug:write#2:m.q' "expected =ERR after #N"
expect_error errno 'blkdebug:write#1=EFOO:m.q' "unknown errno name 'EFOO'"
expect_error event 'blkdebug:event:#1=EIO:m.q' "an event name is 1 to 63 characters"
expect_error empty-rule 'blkdebug:write#1=EIO;;read#1=EIO:m.q' "empty rule"
expect_error no-path 'blkdebug:write#1=EIO' "missing ':PATH'"
expect_error empty-path 'blkdebug:write#1=EIO:' 'no image path'
expect_error missing 'blkdebug::nosuch.q' "Could not open 'nosuch.q'"
# ---- the first write fails: qemu-io's message, image byte-for-byte unchanged -------------
# QEMU's own blkdebug (inject-error on pwritev, once) is the reference for the output.
qemu_bd() {  # qemu_bd FMT IOTYPE ERRNO FILE: a json: filename putting QEMU's blkdebug under FMT
    printf 'json:{"driver":"%s","file":{"driver":"blkdebug","inject-error":[{"event":"%s",'\
'"iotype":"%s","errno":"%s","once":true}],"image":{"driver":"file","filename":"%s"}}}' \
        "$1" "$([ "$2" = read ] && echo read_aio || echo pwritev)" "$2" "$3" "$4"
}
rm -f w.q
"$QEMU_IMG" create -q -f qcow2 w.q 16M
"$QEMU_IO" -f qcow2 -c 'write -P 0x7 0 64k' w.q >/dev/null
cp w.q w0.q
"$VDISK" io -c 'write -P 0x8 1M 64k' 'blkdebug:write#1=EIO:w.q' >io.out 2>&1
rc=$?
cp w0.q wq.q
"$QEMU_IO" -c 'write -P 0x8 1M 64k' "$(qemu_bd qcow2 write 5 wq.q)" >qio.out 2>&1
qrc=$?
if [ $rc -eq 1 ] && [ $qrc -eq 1 ] && diff qio.out io.out >/dev/null &&
    grep -qx 'write failed: Input/output error' io.out; then
    pass "qcow2 write#1: fails like qemu-io with QEMU's blkdebug"
else
    { echo "vdisk rc=$rc qemu-io rc=$qrc"; diff qio.out io.out; } >d.out
    fail "qcow2 write#1" "output or exit status differs from qemu-io" d.out
fi
cmp -s w.q w0.q && pass "qcow2 write#1: image unchanged" ||
    fail "qcow2 write#1: image unchanged" "the image file changed"
qemu_check_clean w.q chk.out && pass "qcow2 write#1: qemu-img check clean" ||
    fail "qcow2 write#1: qemu-img check" "not clean" chk.out

rm -f r.img
"$QEMU_IMG" create -q -f raw r.img 1M
cp r.img r0.img
"$VDISK" io -f raw -c 'write -P 0x8 0 4k' 'blkdebug:write#1=ENOSPC:r.img' >io.out 2>&1
rc=$?
"$QEMU_IO" -f raw -c 'write -P 0x8 0 4k' "$(qemu_bd raw write 28 r0.img)" >qio.out 2>&1
if [ $rc -eq 1 ] && diff qio.out io.out >/dev/null && cmp -s r.img r0.img; then
    pass "raw write#1=ENOSPC: qemu-io's message, file unchanged"
else
    fail "raw write#1" "rc=$rc, or output/file differs" io.out
fi
"$VDISK" io -f raw -c 'read 0 4k' 'blkdebug:read#1=EIO:r.img' >io.out 2>&1
rc=$?
"$QEMU_IO" -f raw -c 'read 0 4k' "$(qemu_bd raw read 5 r0.img)" >qio.out 2>&1
[ $rc -eq 1 ] && diff qio.out io.out >/dev/null && pass "raw read#1: qemu-io's message" ||
    fail "raw read#1" "rc=$rc, or output differs from qemu-io" io.out

# ---- flush failures ------------------------------------------------------------------------
# qemu-io's default cache mode is writethrough: a failing flush fails the write before it.
cp w0.q w.q
"$VDISK" io -c 'write -P 0x8 1M 64k' 'blkdebug:flush#1=EIO:w.q' >io.out 2>&1
rc=$?
[ $rc -eq 1 ] && grep -qx 'write failed: Input/output error' io.out &&
    pass "flush#1 (writethrough): the write fails" || fail "flush#1 writethrough" "rc=$rc" io.out
check_no_corruption "flush#1 (writethrough): no corruption" w.q
# With writeback the write succeeds and the flush command fails (silently, as in qemu-io).
cp w0.q w.q
"$VDISK" io -t writeback -c 'write -P 0x8 1M 64k' -c flush 'blkdebug:flush#1=EIO:w.q' \
    >io.out 2>&1
rc=$?
[ $rc -eq 1 ] && grep -q '^wrote 65536/65536' io.out &&
    pass "flush#1 (writeback): the flush command fails" || fail "flush#1 writeback" "rc=$rc" io.out
check_no_corruption "flush#1 (writeback): no corruption" w.q
reads_back "flush#1 (writeback): old data intact" w.q 0 64k 0x7

# ---- exact counts on raw (format given: no probe) ------------------------------------------
rm -f cnt
"$QEMU_IMG" create -q -f raw r.img 1M
VDISK_BLKDEBUG_COUNT=$PWD/cnt "$VDISK" io -f raw -t writeback -c 'read 0 4k' -c 'write 0 4k' \
    -c 'write -z 8k 4k' -c flush 'blkdebug:write#2=EIO:r.img' >io.out 2>&1
VDISK_BLKDEBUG_COUNT=$PWD/cnt "$VDISK" info 'blkdebug::r.img' >/dev/null 2>&1
# write -z failed but counts; the one flush is the command's (the one at close is skipped:
# nothing was written since); info probes the format (one read) and opens read-only.
printf 'reads=1 writes=2 flushes=1\nreads=1 writes=0 flushes=0\n' >cnt.want
cmp -s cnt cnt.want && pass "counts: one exact line per command" ||
    fail "counts" "unexpected count file" cnt

# ---- the ASan build through the filter -----------------------------------------------------
if [ -x "${VDISK_ASAN:-}" ]; then
    cp w0.q w.q
    VDISK_BLKDEBUG_COUNT=$PWD/acnt "$VDISK_ASAN" io -c 'write -P 0x8 1M 64k' -c 'read 0 64k' \
        'blkdebug:write#2=EIO;event:l2_update#1=ENOSPC;read#3=EIO:w.q' >io.out 2>&1
    rc=$?
    "$VDISK_ASAN" info 'blkdebug:bogus:w.q' >>io.out 2>&1
    if [ $rc -eq 1 ] && ! grep -q 'Sanitizer' io.out && [ -s acnt ]; then
        pass "ASan build: failures and bad specs are clean"
    else
        fail "ASan build" "rc=$rc" io.out
    fi
    check_no_corruption "ASan build: no corruption" w.q
fi
vd_finish
