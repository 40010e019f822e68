#!/usr/bin/env bash
# Load: 16 clients at once on two `vdisk nbd` exports (8 each, disjoint regions; the
# second opened with O_DIRECT), seeded
# random writes and reads, every byte checked against a shadow copy during the run and at
# the end, then qemu-img check clean and each image compared region by region with what the
# clients last wrote. NBD_LOAD_SECS (default 15); the long mode is NBD_LOAD_SECS=600.
# NBD_LOAD_SEED reproduces a run.
. "$(dirname "$0")/../lib.sh"
vd_init
secs=${NBD_LOAD_SECS:-15}
seed=$(vd_seed NBD_LOAD_SEED)
echo "seed: $seed, $secs s"
socks=
pids=
for x in a b; do
    "$QEMU_IMG" create -q -f qcow2 "$x.qcow2" 64M
    # b is opened with O_DIRECT: its writes run on the workers, a's on the reader.
    cache=writeback
    [ "$x" = b ] && cache=none
    "$VDISK" nbd -t -e 0 -f qcow2 --cache=$cache -k "$VD_TESTDIR/$x.sock" "$x.qcow2" \
        >"$x.log" 2>&1 &
    pids="$pids $!"
    socks="$socks${socks:+,}$VD_TESTDIR/$x.sock"
done
for x in a b; do
    for _ in $(seq 100); do [ -S "$VD_TESTDIR/$x.sock" ] && break; sleep 0.05; done
done
"$PYTHON" "$VD_TESTS/interop/nbd_load.py" "$secs" "$seed" "$socks"
# shellcheck disable=SC2086
kill $pids
# shellcheck disable=SC2086
wait $pids
for x in a b; do
    qemu_check_clean "$x.qcow2" check.out && pass "load-$x-clean" || fail "load-$x-clean" "check" check.out
done
vd_finish
