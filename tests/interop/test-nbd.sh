#!/usr/bin/env bash
# `vdisk nbd` against the NBD clients QEMU and libnbd ship: qemu-img (info, map, compare,
# convert from and into an export), qemu-io (patterns), nbdinfo (--list, --map, --content,
# --size), nbdcopy (both directions) — plain, with x509 TLS and with PSK TLS; the export's
# flags against qemu-nbd's for the same options; read-only and export-name refusals;
# qemu-img check clean afterwards.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo
need_tool nbdcopy
D=$VD_TESTDIR

# serve NAME ARGS...: vdisk nbd -t ... on $D/NAME.sock in the background; sets $srv.
serve() {
    local name=$1
    shift
    rm -f "$D/$name.sock"
    "$VDISK" nbd -t -k "$D/$name.sock" "$@" >"$D/$name.log" 2>&1 &
    srv=$!
    for _ in $(seq 100); do [ -S "$D/$name.sock" ] && return 0; sleep 0.05; done
    fail "serve-$name" "no socket" "$D/$name.log"
}
stop() {
    kill "$srv" 2>/dev/null
    wait "$srv" 2>/dev/null
}

"$QEMU_IMG" create -q -f qcow2 base.qcow2 64M
"$QEMU_IO" -f qcow2 -c 'write -P 0x11 0 4M' -c 'write -P 0x12 40M 1M' base.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2
"$QEMU_IO" -f qcow2 -c 'write -P 0x21 1M 1M' -c 'write -z 2M 512k' -c 'write -P 0x22 10M 3M' \
    -c 'write -c -P 0x23 20M 64k' img.qcow2 >/dev/null
"$QEMU_IMG" convert -O raw img.qcow2 img.ref.raw

# ---- plain ---------------------------------------------------------------------------------
serve plain -f qcow2 -x disk -D "test disk" img.qcow2
u="nbd+unix:///disk?socket=$D/plain.sock"
check_ok nbd-qemu-img-info "$QEMU_IMG" info "$u"
check_ok nbd-compare "$QEMU_IMG" compare -f raw -F raw "$u" img.ref.raw
# The export's data extents cover exactly what the chain holds (the file's own map).
data_bytes() {
    "$PYTHON" -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'
}
"$QEMU_IMG" map --output=json -f raw "$u" | data_bytes >map.out
"$QEMU_IMG" map --output=json img.qcow2 | data_bytes >map.want
[ -s map.out ] && cmp -s map.out map.want && pass nbd-map-matches-file ||
    fail nbd-map-matches-file "data bytes $(cat map.out), the file's map says $(cat map.want)"
check_ok nbd-qemu-io-read "$QEMU_IO" -f raw -c 'read -P 0x21 1M 1M' -c 'read -P 0 2M 512k' \
    -c 'read -P 0x22 10M 3M' -c 'read -P 0x12 40M 1M' "$u"
check_ok nbd-qemu-io-write "$QEMU_IO" -f raw -c 'write -P 0x31 30M 2M' -c 'read -P 0x31 30M 2M' \
    -c 'write -z 31M 64k' -c 'read -P 0 31M 64k' -c 'flush' "$u"
nbdinfo --list "nbd+unix:///?socket=$D/plain.sock" >list.out 2>&1
grep -q 'export="disk"' list.out && grep -q 'description: test disk' list.out &&
    pass nbd-nbdinfo-list || fail nbd-nbdinfo-list "export or description missing" list.out
nbdinfo --size "$u" >size.out 2>&1
[ "$(cat size.out)" = $((64 << 20)) ] && pass nbd-nbdinfo-size || fail nbd-nbdinfo-size "$(cat size.out)"
nbdinfo --map "$u" >nmap.out 2>&1 && grep -q "data" nmap.out && grep -q "hole,zero" nmap.out &&
    pass nbd-nbdinfo-map || fail nbd-nbdinfo-map "no data and hole extents" nmap.out
nbdinfo --content "$u" >content.out 2>&1 && pass nbd-nbdinfo-content ||
    fail nbd-nbdinfo-content "nbdinfo --content failed" content.out
nbdcopy "$u" copy.raw && "$QEMU_IMG" convert -O raw img.qcow2 now.raw && cmp -s copy.raw now.raw &&
    pass nbd-nbdcopy-out || fail nbd-nbdcopy-out "export -> file differs"
head -c $((64 << 20)) /dev/urandom >rand.raw
nbdcopy rand.raw "$u" && check_ok nbd-nbdcopy-in-compare "$QEMU_IMG" compare -f raw -F raw "$u" rand.raw
check_ok nbd-convert-from "$QEMU_IMG" convert -f raw -O qcow2 "$u" from.qcow2
check_ok nbd-convert-from-compare "$QEMU_IMG" compare -f qcow2 -F raw from.qcow2 rand.raw
"$QEMU_IO" -f raw -c 'read 0 512' "nbd+unix:///wrong?socket=$D/plain.sock" >wrong.out 2>&1 &&
    fail nbd-unknown-export "a wrong export name was served" wrong.out || pass nbd-unknown-export
stop
qemu_check_clean img.qcow2 check.out && pass nbd-image-clean || fail nbd-image-clean "check" check.out
check_ok nbd-data-durable "$QEMU_IMG" compare -f qcow2 -F raw img.qcow2 rand.raw

# Export to export, through two servers; and convert -n into an export.
"$QEMU_IMG" create -q -f qcow2 dst.qcow2 64M
serve src -r -f qcow2 img.qcow2
s1=$srv
serve dst -f qcow2 dst.qcow2
s2=$srv
nbdcopy "nbd+unix:///?socket=$D/src.sock" "nbd+unix:///?socket=$D/dst.sock" &&
    check_ok nbd-nbdcopy-export-to-export "$QEMU_IMG" compare -f raw -F raw \
        "nbd+unix:///?socket=$D/dst.sock" rand.raw
"$QEMU_IO" -f raw -c 'write -P 1 0 512' "nbd+unix:///?socket=$D/src.sock" >ro.out 2>&1 &&
    fail nbd-read-only "a write to a read-only export succeeded" ro.out ||
    { grep -Eq "Operation not permitted|Permission denied" ro.out && pass nbd-read-only ||
        fail nbd-read-only "not refused as read-only" ro.out; }
check_ok nbd-convert-into "$QEMU_IMG" convert -n -f raw -O raw base.qcow2 \
    "nbd+unix:///?socket=$D/dst.sock"
kill "$s1" "$s2"; wait "$s1" "$s2" 2>/dev/null
qemu_check_clean dst.qcow2 check.out && pass nbd-dst-clean || fail nbd-dst-clean "check" check.out

# ---- flags against qemu-nbd for the same options ------------------------------------------
flags() {
    nbdinfo "$1" 2>/dev/null | grep -E '^\s+(can_|is_read_only|block_size)' | sort
}
for opts in "" "-r" "-e 0" "-r -e 2"; do
    # shellcheck disable=SC2086
    serve flags $opts -f qcow2 img.qcow2
    flags "nbd+unix:///?socket=$D/flags.sock" >v.flags
    stop
    rm -f "$D/q.sock"
    # shellcheck disable=SC2086
    qemu-nbd -t $opts -f qcow2 -k "$D/q.sock" img.qcow2 &
    q=$!
    for _ in $(seq 100); do [ -S "$D/q.sock" ] && break; sleep 0.05; done
    flags "nbd+unix:///?socket=$D/q.sock" >q.flags
    kill "$q"; wait "$q" 2>/dev/null
    # qemu-nbd advertises DF only to structured-reply clients too; block sizes may differ
    # where qemu-nbd reports the format's request alignment.
    if diff <(grep -v block_size v.flags) <(grep -v block_size q.flags) >flags.diff; then
        pass "nbd-flags-like-qemu-nbd${opts:+ }$opts"
    else
        fail "nbd-flags-like-qemu-nbd${opts:+ }$opts" "flags differ" flags.diff
    fi
done

# Without -t the server exits once its last client has gone.
"$VDISK" nbd -k "$D/once.sock" -f qcow2 img.qcow2 &
once=$!
for _ in $(seq 100); do [ -S "$D/once.sock" ] && break; sleep 0.05; done
nbdinfo --size "nbd+unix:///?socket=$D/once.sock" >/dev/null 2>&1
for _ in $(seq 50); do kill -0 "$once" 2>/dev/null || break; sleep 0.1; done
kill -0 "$once" 2>/dev/null && { fail nbd-exit-after-last-client "still running"; kill "$once"; } ||
    pass nbd-exit-after-last-client
wait "$once" 2>/dev/null

# ---- TLS -----------------------------------------------------------------------------------
if command -v certtool >/dev/null; then
    T=$D/tls
    # Server and client certificates: the server asks for a client certificate by default.
    . "$VD_TESTS/interop/nbd-tls-certs.sh"
    make_tls_certs "$T" || fail nbd-tls-certs "certtool failed"
    serve x509 -f qcow2 --object "tls-creds-x509,id=t0,dir=$T/srv,endpoint=server" \
        --tls-creds t0 img.qcow2
    tu="nbds+unix:///?socket=$D/x509.sock&tls-certificates=$T/cli"
    nbdinfo "$tu" >tls.out 2>&1 && grep -q "with TLS" tls.out && pass nbd-tls-x509-nbdinfo ||
        fail nbd-tls-x509-nbdinfo "nbdinfo over TLS failed" tls.out
    nbdcopy "$tu" tls.raw && cmp -s tls.raw rand.raw && pass nbd-tls-x509-nbdcopy ||
        fail nbd-tls-x509-nbdcopy "data over TLS differs"
    check_ok nbd-tls-x509-qemu-io "$QEMU_IO" --object "tls-creds-x509,id=c0,dir=$T/cli,endpoint=client" \
        --image-opts "driver=nbd,path=$D/x509.sock,tls-creds=c0,tls-hostname=localhost" -c 'write -P 0x44 5M 1M' \
        -c 'read -P 0x44 5M 1M'
    nbdinfo "nbd+unix:///?socket=$D/x509.sock" >plain.out 2>&1 &&
        fail nbd-tls-required "a plaintext client was served" plain.out ||
        pass nbd-tls-required
    stop
    if command -v psktool >/dev/null; then
        psktool -u alice -p "$T/keys.psk" >/dev/null 2>&1
        serve psk -f qcow2 --object "tls-creds-psk,id=t1,dir=$T,endpoint=server" \
            --tls-creds t1 img.qcow2
        check_ok nbd-tls-psk-qemu-io "$QEMU_IO" \
            --object "tls-creds-psk,id=c1,dir=$T,username=alice,endpoint=client" \
            --image-opts "driver=nbd,path=$D/psk.sock,tls-creds=c1" -c 'read -P 0x44 5M 1M'
        mkdir -p "$T/bad"
        psktool -u alice -p "$T/bad/keys.psk" >/dev/null 2>&1
        "$QEMU_IO" --object "tls-creds-psk,id=c2,dir=$T/bad,username=alice,endpoint=client" \
            --image-opts "driver=nbd,path=$D/psk.sock,tls-creds=c2" -c 'read 0 512' \
            >badpsk.out 2>&1 && fail nbd-tls-psk-wrong-key "served with a wrong key" badpsk.out ||
            pass nbd-tls-psk-wrong-key
        stop
    fi
    qemu_check_clean img.qcow2 check.out && pass nbd-tls-image-clean ||
        fail nbd-tls-image-clean "check" check.out
else
    fail nbd-tls "certtool (gnutls-bin) is not installed"
fi
vd_finish
