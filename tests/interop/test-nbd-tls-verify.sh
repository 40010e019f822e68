#!/usr/bin/env bash
# x509 client certificates, as QEMU's tls-creds-x509 verify-peer: on by default, so a client
# without a certificate (or with one another CA signed) is refused at the handshake and a
# client whose certificate the CA signed is served; verify-peer=off|no|false lets clients
# without a certificate in. Checked for `vdisk nbd` and vdiskd, with qemu-nbd's answers for
# the same credentials and clients alongside as the reference.
. "$(dirname "$0")/../lib.sh"
. "$VD_TESTS/interop/nbd-tls-certs.sh"
vd_init
need_tool nbdinfo certtool
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
D=$VD_TESTDIR
T=$D/tls
make_tls_certs "$T" || { fail tls-certs "certtool failed"; vd_finish; }
"$QEMU_IMG" create -q -f qcow2 img.qcow2 16M

# start KIND OBJECT-SUFFIX: a server of KIND (vdisk, vdiskd, qemu-nbd) on $D/s.sock with the
# server credentials and ",OBJECT-SUFFIX" on its --object; sets $srv once the server has
# written its pid file (vdiskd listens before it adds the export).
start() {
    local kind=$1 obj="tls-creds-x509,id=t0,dir=$T/srv,endpoint=server${2:+,$2}"
    rm -f "$D/s.sock" "$D/s.pid"
    case $kind in
    vdisk)
        "$VDISK" nbd -t -r -f qcow2 -k "$D/s.sock" --object "$obj" --tls-creds t0 \
            --pid-file "$D/s.pid" img.qcow2 >"$D/srv.log" 2>&1 &
        ;;
    vdiskd)
        "$VDISKD" --blockdev driver=file,node-name=f0,filename=img.qcow2 \
            --blockdev driver=qcow2,node-name=d0,file=f0 --object "$obj" \
            --nbd-server addr.type=unix,addr.path="$D/s.sock",tls-creds=t0 \
            --export type=nbd,id=e0,node-name=d0,name= --pidfile "$D/s.pid" \
            >"$D/srv.log" 2>&1 &
        ;;
    qemu-nbd)
        qemu-nbd -t -r -f qcow2 -k "$D/s.sock" --object "$obj" --tls-creds t0 \
            --pid-file "$D/s.pid" img.qcow2 >"$D/srv.log" 2>&1 &
        ;;
    esac
    srv=$!
    for _ in $(seq 200); do [ -S "$D/s.sock" ] && [ -e "$D/s.pid" ] && return 0; sleep 0.05; done
    fail "$kind-start" "no socket" "$D/srv.log"
}
stop() {
    kill "$srv" 2>/dev/null
    wait "$srv" 2>/dev/null
}

# client CERTDIR: 0 when nbdinfo with that client directory is served.
client() {
    timeout 20 nbdinfo --size "nbds+unix:///?socket=$D/s.sock&tls-certificates=$T/$1" \
        >"$D/client.out" 2>&1 && [ "$(cat "$D/client.out")" = $((16 << 20)) ]
}

# expect NAME CERTDIR served|refused
expect() {
    local name=$1 dir=$2 want=$3 got=refused
    client "$dir" && got=served
    if [ "$got" = "$want" ]; then
        pass "$name"
    else
        fail "$name" "client '$dir' was $got, expected $want" "$D/client.out"
    fi
}

for kind in qemu-nbd vdisk vdiskd; do
    start "$kind" ""
    expect "$kind-default-no-cert-refused" nocert refused
    expect "$kind-default-other-ca-refused" rogue refused
    expect "$kind-default-ca-signed-served" cli served
    # QEMU's own client, without a certificate, is refused too.
    if "$QEMU_IO" -r --object "tls-creds-x509,id=c0,dir=$T/nocert,endpoint=client" \
        --image-opts "driver=nbd,path=$D/s.sock,tls-creds=c0,tls-hostname=localhost" \
        -c 'read 0 512' >"$D/qio.out" 2>&1; then
        fail "$kind-default-qemu-io-no-cert-refused" "qemu-io was served" "$D/qio.out"
    else
        pass "$kind-default-qemu-io-no-cert-refused"
    fi
    stop
    for off in off no false; do
        start "$kind" "verify-peer=$off"
        expect "$kind-verify-peer-$off-no-cert-served" nocert served
        stop
    done
    start "$kind" "verify-peer=on"
    expect "$kind-verify-peer-on-no-cert-refused" nocert refused
    expect "$kind-verify-peer-on-ca-signed-served" cli served
    stop
done
qemu_check_clean img.qcow2 check.out && pass tls-verify-image-clean ||
    fail tls-verify-image-clean "qemu-img check" check.out
vd_finish
