#!/usr/bin/env bash
# Structured reads answer the ranges that read as zeros (unallocated and zero clusters, and
# holes of a sparse raw file) with NBD_REPLY_TYPE_OFFSET_HOLE chunks and the rest with
# OFFSET_DATA chunks, as qemu-nbd does: for each read (tests/interop/nbd_chunks.py, a raw
# client) the chunks, joined where adjacent chunks are of one kind, and the bytes must
# equal qemu-nbd's for the same image. With the DF flag, and without structured replies,
# the answer is one piece of data.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-nbd
D=$VD_TESTDIR
K="$VD_TESTS/interop/nbd_chunks.py"

"$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
"$QEMU_IO" -f qcow2 -c 'write -P 0x11 2M 64k' base.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2
"$QEMU_IO" -f qcow2 -c 'write -P 0x21 0 64k' -c 'write -z 64k 64k' -c 'write -P 0x22 1M 64k' \
    -c 'write -c -P 0x23 3M 64k' -c 'write -P 0 3584k 64k' -c 'write -z 3712k 128k' \
    img.qcow2 >/dev/null
"$QEMU_IMG" create -q -f raw sparse.raw 4M
"$QEMU_IO" -f raw -c 'write -P 0x31 0 4k' -c 'write -P 0x32 1M 8k' sparse.raw >/dev/null

# start KIND FMT IMG: qemu-nbd or vdisk nbd on $D/s.sock; sets $srv.
start() {
    rm -f "$D/s.sock" "$D/s.pid"
    if [ "$1" = qemu-nbd ]; then
        qemu-nbd -t -r -f "$2" -k "$D/s.sock" --pid-file "$D/s.pid" "$3" >"$D/srv.log" 2>&1 &
    else
        "$VDISK" nbd -t -r -f "$2" -k "$D/s.sock" --pid-file "$D/s.pid" "$3" >"$D/srv.log" 2>&1 &
    fi
    srv=$!
    for _ in $(seq 200); do [ -e "$D/s.pid" ] && [ -S "$D/s.sock" ] && return 0; sleep 0.05; done
    fail "$1-start" "no socket" "$D/srv.log"
}
stop() {
    kill "$srv" 2>/dev/null
    wait "$srv" 2>/dev/null
}

# The reads: OFFSET LENGTH [df|simple].
reads=(
    "0 4194304" "100000 300000" "0 65536" "65536 65536" "131072 4096" "1040000 100000"
    "2097152 131072" "3100000 200000" "3600000 594304" "0 4194304 df" "0 4194304 simple"
    "70000 1000 df"
)
for img in img.qcow2:qcow2 sparse.raw:raw; do
    f=${img#*:}
    img=${img%:*}
    for kind in qemu-nbd vdisk; do
        start "$kind" "$f" "$img"
        i=0
        for r in "${reads[@]}"; do
            # shellcheck disable=SC2086
            "$PYTHON" "$K" "$D/s.sock" "" $r >"$D/$kind.$f.$i" 2>&1 ||
                fail "$kind-$f-read-$i" "bad reply to read $r" "$D/$kind.$f.$i"
            i=$((i + 1))
        done
        stop
    done
    i=0
    holes=0
    for r in "${reads[@]}"; do
        if diff <(grep -E '^(merged|sha256)' "$D/qemu-nbd.$f.$i") \
            <(grep -E '^(merged|sha256)' "$D/vdisk.$f.$i") >"$D/diff"; then
            pass "sparse-read-$f-like-qemu-nbd: $r"
        else
            fail "sparse-read-$f-like-qemu-nbd: $r" "the reply differs (< qemu-nbd, > vdisk)" \
                "$D/diff"
        fi
        grep -q '^hole ' "$D/vdisk.$f.$i" && holes=$((holes + 1))
        case $r in
        *df | *simple)
            [ "$(grep -cE '^(data|simple|hole) ' "$D/vdisk.$f.$i")" = 1 ] &&
                ! grep -q '^hole ' "$D/vdisk.$f.$i" && pass "sparse-read-$f-one-piece: $r" ||
                fail "sparse-read-$f-one-piece: $r" "not one data piece" "$D/vdisk.$f.$i"
            ;;
        esac
        i=$((i + 1))
    done
    [ "$holes" -ge 3 ] && pass "sparse-read-$f-has-holes" ||
        fail "sparse-read-$f-has-holes" "only $holes reads had hole chunks"
done
qemu_check_clean img.qcow2 check.out && pass sparse-read-image-clean ||
    fail sparse-read-image-clean "qemu-img check" check.out
vd_finish
