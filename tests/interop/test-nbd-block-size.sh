#!/usr/bin/env bash
# The block sizes `vdisk nbd` advertises (NBD_INFO_BLOCK_SIZE, as nbdinfo shows them) equal
# qemu-nbd's for the same image and options: minimum 512 when the format was probed as
# raw (qemu-nbd guards a probed raw image's first sector), 1 when -f names the format or
# the image is qcow2; preferred 4096, maximum 32 MiB.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo qemu-nbd
D=$VD_TESTDIR
"$QEMU_IMG" create -q -f raw disk.raw 4M
"$QEMU_IMG" create -q -f qcow2 disk.qcow2 4M

# sizes KIND ARGS...: the block_size lines of nbdinfo for a server started with ARGS.
sizes() {
    local kind=$1 p
    shift
    rm -f "$D/s.sock" "$D/s.pid"
    if [ "$kind" = qemu-nbd ]; then
        qemu-nbd -t -k "$D/s.sock" --pid-file "$D/s.pid" "$@" >"$D/srv.log" 2>&1 &
    else
        "$VDISK" nbd -t -k "$D/s.sock" --pid-file "$D/s.pid" "$@" >"$D/srv.log" 2>&1 &
    fi
    p=$!
    for _ in $(seq 200); do [ -e "$D/s.pid" ] && [ -S "$D/s.sock" ] && break; sleep 0.05; done
    nbdinfo "nbd+unix:///?socket=$D/s.sock" 2>&1 | grep -E '^\s+block_size' | sort
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
}

for opts in "disk.raw" "-r disk.raw" "-f raw disk.raw" "disk.qcow2" "-f qcow2 disk.qcow2"; do
    # shellcheck disable=SC2086
    sizes qemu-nbd $opts >q.out
    # shellcheck disable=SC2086
    sizes vdisk $opts >v.out
    if [ -s q.out ] && diff q.out v.out >diff.out; then
        pass "block-size-like-qemu-nbd: $opts ($(grep minimum v.out | tr -d '\t'))"
    else
        fail "block-size-like-qemu-nbd: $opts" "differs (< qemu-nbd, > vdisk)" diff.out
    fi
done
# A probed raw export still serves a request that is not sector-aligned (the minimum is
# advice to clients; qemu-nbd serves these too).
rm -f "$D/s.sock" "$D/s.pid"
"$VDISK" nbd -t -k "$D/s.sock" --pid-file "$D/s.pid" disk.raw >"$D/srv.log" 2>&1 &
p=$!
for _ in $(seq 200); do [ -e "$D/s.pid" ] && [ -S "$D/s.sock" ] && break; sleep 0.05; done
"$PYTHON" "$VD_TESTS/interop/nbd_chunks.py" "$D/s.sock" "" 100 7 >odd.out 2>&1 &&
    pass block-size-unaligned-read-served || fail block-size-unaligned-read-served "refused" odd.out
kill "$p"
wait "$p"
vd_finish
