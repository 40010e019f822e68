#!/usr/bin/env bash
# SIGTERM ends `vdisk nbd` and vdiskd in bounded time whatever their clients are doing
# (tests/interop/nbd_shutdown.py): pipelined reads and writes in flight, half-closed
# sockets, a client that closed with thousands of reads queued, idle clients before and
# after the handshake, a TLS client refused for having no certificate or stalled in the TLS
# handshake. Every process must be gone within 5 s of the signal, exit 0, and leave its
# image clean for `qemu-img check`.
# 100 SIGTERMs by default (half each); NBD_SHUTDOWN_LONG=1 runs 1,000, NBD_SHUTDOWN_ITERS=N
# any number. NBD_SHUTDOWN_SEED=S repeats a run.
. "$(dirname "$0")/../lib.sh"
. "$VD_TESTS/interop/nbd-tls-certs.sh"
vd_init
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
[ -x "$VDISKD" ] || { fail nbd-shutdown-vdiskd "$VDISKD is missing"; vd_finish; }
D=$VD_TESTDIR

iters=${NBD_SHUTDOWN_ITERS:-100}
[ -n "${NBD_SHUTDOWN_LONG:-}" ] && iters=${NBD_SHUTDOWN_ITERS:-1000}
seed=$(vd_seed NBD_SHUTDOWN_SEED)

tls=
if command -v certtool >/dev/null && make_tls_certs "$D/tls"; then
    tls=$D/tls
else
    fail nbd-shutdown-tls "certtool (gnutls-bin) is missing or failed"
fi
for k in vdisk vdiskd; do
    "$QEMU_IMG" create -q -f qcow2 "$k.qcow2" 64M
    "$QEMU_IO" -f qcow2 -c 'write -P 0x5a 0 8M' -c 'write -P 0xa5 32M 8M' "$k.qcow2" >/dev/null
done
echo "nbd-shutdown: $iters SIGTERMs, seed $seed"
"$PYTHON" "$VD_TESTS/interop/nbd_shutdown.py" "$VDISK" "$VDISKD" "$D" "$iters" "$seed" $tls \
    >shutdown.out 2>&1
rc=$?
cat shutdown.out
grep -q '^FAIL ' shutdown.out || [ $rc = 0 ] || fail nbd-shutdown "the driver exited $rc"
for f in "$D"/hang-*.bt; do
    grep -q "^Thread" "$f" 2>/dev/null || continue
    echo "threads of a hung server ($f):"
    grep -E '^Thread|^#[0-9]+ ' "$f" | grep -E 'Thread|nbd_|vd_|pthread_cond|gnutls' |
        head -60 | vd_detail
    break
done
for k in vdisk vdiskd; do
    qemu_check_clean "$k.qcow2" check.out && pass "nbd-shutdown-$k-image-clean" ||
        fail "nbd-shutdown-$k-image-clean" "qemu-img check" check.out
done
VD_NFAIL=$((VD_NFAIL + $(grep -c '^FAIL ' shutdown.out)))
vd_finish
