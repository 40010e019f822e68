#!/usr/bin/env bash
# vdisk migrate: the live-migration stream between two image files (unix socket and TCP
# loopback, every codec, PSK TLS), from a file into a running vdiskd's node, and its
# refusals (a destination of another size, an unknown scheme, a missing file argument).
# The oracle: qemu-img compare of source and destination, qemu-img check of the destination.
. "$(dirname "$0")/../lib.sh"
vd_init
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}

# A source with data (random and compressible), zeros and holes.
"$PYTHON" - <<'EOF'
import os
with open("src.raw", "wb") as f:
    f.truncate(64 << 20)
    f.write(b"\x5a" * (8 << 20))
    f.seek(40 << 20)
    f.write(bytes(range(256)) * 4096)
    f.seek(50 << 20)
    f.write(os.urandom(3 << 20))
EOF
"$QEMU_IMG" convert -f raw -O qcow2 src.raw src.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 16M 2M" src.qcow2 >/dev/null

# migrate_files NAME URI SENDER-OPTS...: a receiver on URI, a sender to it, then the images
# compared and the destination checked.
migrate_files() {
    local name=$1 uri=$2
    shift 2
    rm -f dst.qcow2 recv.out send.out
    case $uri in unix:*) rm -f "${uri#unix:}" ;; esac
    "$QEMU_IMG" create -q -f qcow2 dst.qcow2 64M
    vd_with_timeout 60 "$VDISK" migrate --incoming="$uri" "${RECV_OPTS[@]}" dst.qcow2 \
        >recv.out 2>&1 &
    local rpid=$!
    local i
    for i in $(seq 50); do
        case $uri in
            unix:*) [ -S "${uri#unix:}" ] && break ;;
            tcp:*) ss -ltn 2>/dev/null | grep -q ":${uri##*:} " && break ;;
        esac
        sleep 0.1
    done
    if ! vd_with_timeout 60 "$VDISK" migrate "$@" src.qcow2 "$uri" >send.out 2>&1; then
        fail "$name" "the sender failed" send.out
        kill "$rpid" 2>/dev/null
        wait "$rpid" 2>/dev/null
        return
    fi
    if ! wait "$rpid"; then
        fail "$name" "the receiver failed" recv.out
        return
    fi
    if ! "$QEMU_IMG" compare -q src.qcow2 dst.qcow2 >cmp.out 2>&1; then
        fail "$name" "the images differ" cmp.out
    elif ! qemu_check_clean dst.qcow2 check.out; then
        fail "$name" "the destination does not check clean" check.out
    elif ! grep -q "^Migrated 67108864 bytes" send.out ||
        ! grep -q "^Received 67108864 bytes" recv.out; then
        fail "$name" "unexpected summary lines" send.out
    else
        pass "$name"
    fi
}

RECV_OPTS=()
migrate_files migrate-cli-unix-none "unix:$PWD/mig.sock"
migrate_files migrate-cli-unix-zstd4 "unix:$PWD/mig.sock" --compress-type=zstd --channels=4
port=$((20000 + RANDOM % 20000))
migrate_files migrate-cli-tcp-zlib2 "tcp:127.0.0.1:$port" --compress-type=zlib \
    --compress-level=6 --channels=2

# PSK TLS: both ends with the same keys.psk; a wrong key is refused.
mkdir -p psk badpsk
printf 'qemu:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >psk/keys.psk
printf 'qemu:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >badpsk/keys.psk
RECV_OPTS=(--object "tls-creds-psk,id=t0,dir=$PWD/psk,endpoint=server" --tls-creds=t0)
migrate_files migrate-cli-tls-psk "unix:$PWD/mig.sock" --compress-type=zstd \
    --object "tls-creds-psk,id=t0,dir=$PWD/psk,endpoint=client" --tls-creds=t0
RECV_OPTS=()

# Refusals, with the words a user needs.
expect_error() {
    local name=$1 want=$2
    shift 2
    if vd_with_timeout 30 "$@" >err.out 2>&1; then
        fail "$name" "succeeded" err.out
    elif ! grep -qF -- "$want" err.out; then
        fail "$name" "no '$want' in the message" err.out
    else
        pass "$name"
    fi
}
expect_error migrate-cli-bad-scheme "Parameter 'uri' expects a valid migration protocol" \
    "$VDISK" migrate src.qcow2 rdma:1.2.3.4:5
expect_error migrate-cli-no-uri "Expecting a filename and a URI" "$VDISK" migrate src.qcow2
expect_error migrate-cli-bad-level \
    "Parameter 'compress_level' expects values from 0 to 9 for compress_type zlib" \
    "$VDISK" migrate --compress-type=zlib --compress-level=12 src.qcow2 "unix:$PWD/x.sock"
expect_error migrate-cli-nobody-listens "Failed to connect to '$PWD/none.sock'" \
    "$VDISK" migrate src.qcow2 "unix:$PWD/none.sock"
# A destination of another size: the receiver says why and the sender hears it.
"$QEMU_IMG" create -q -f qcow2 small.qcow2 32M
vd_with_timeout 30 "$VDISK" migrate --incoming="unix:$PWD/small.sock" small.qcow2 \
    >recv.out 2>&1 &
rpid=$!
for i in $(seq 50); do [ -S small.sock ] && break; sleep 0.1; done
expect_error migrate-cli-size-mismatch \
    "The destination failed: Node 'disk0' has 33554432 bytes here and 67108864 on the source" \
    "$VDISK" migrate src.qcow2 "unix:$PWD/small.sock"
if wait "$rpid"; then
    fail migrate-cli-size-mismatch-receiver "the receiver succeeded" recv.out
elif grep -qF "Incoming migration failed: Node 'disk0' has 33554432 bytes" recv.out; then
    pass migrate-cli-size-mismatch-receiver
else
    fail migrate-cli-size-mismatch-receiver "unexpected message" recv.out
fi
wait "$rpid" 2>/dev/null

# From a file into a running vdiskd (its node disk0, received with --incoming).
"$QEMU_IMG" create -q -f qcow2 dst.qcow2 64M
"$VDISKD" --blockdev "driver=file,filename=$PWD/dst.qcow2,node-name=f0" \
    --blockdev driver=qcow2,file=f0,node-name=disk0 \
    --chardev "socket,path=$PWD/qmp.sock,server=on,wait=off,id=m" --monitor chardev=m \
    --incoming "unix:$PWD/d.sock" >daemon.out 2>&1 &
dpid=$!
for i in $(seq 50); do [ -S d.sock ] && break; sleep 0.1; done
if vd_with_timeout 60 "$VDISK" migrate --compress-type=zstd src.qcow2 "unix:$PWD/d.sock" \
    >send.out 2>&1; then
    kill -TERM "$dpid"
    wait "$dpid"
    if "$QEMU_IMG" compare -q src.qcow2 dst.qcow2 >cmp.out 2>&1; then
        pass migrate-cli-into-vdiskd
    else
        fail migrate-cli-into-vdiskd "the images differ" cmp.out
    fi
else
    fail migrate-cli-into-vdiskd "the sender failed" send.out
    kill -TERM "$dpid"
    wait "$dpid"
fi
vd_finish
