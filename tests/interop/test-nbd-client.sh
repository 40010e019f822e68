#!/usr/bin/env bash
# vdisk as an NBD client (driver=nbd): against qemu-nbd, qemu-storage-daemon and vdisk's
# own server, over a unix socket and TCP, named by every filename form qemu-img takes
# (nbd+unix://, nbd://, nbd+tcp://, nbd:unix:, nbd:HOST:PORT, json:), info, map, compare,
# convert both ways and io agree with qemu-img and qemu-io on the same export. A server
# killed mid-copy makes vdisk fail with a message, in bounded time. TLS (x509) last.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-nbd qemu-storage-daemon certtool
D=$VD_TESTDIR
SIZE=$((4 << 20))

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_listen unix PATH | tcp PORT: until the server accepts (5 s at most).
wait_listen() {
    for _ in $(seq 100); do
        if [ "$1" = unix ]; then
            [ -S "$2" ] && return 0
        else
            "$PYTHON" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$2" 2>/dev/null && return 0
        fi
        sleep 0.05
    done
    return 1
}

# The source: data, an explicit zero range, more data, and unallocated space.
"$QEMU_IMG" create -q -f qcow2 src.qcow2 $SIZE
"$QEMU_IO" -c 'write -P 0x11 0 64k' -c 'write -z 1M 128k' -c 'write -P 0x33 3M 192k' \
    src.qcow2 >/dev/null

servers=()
# start_server KIND unix|tcp: serves a fresh copy of src.qcow2 as export "exp"; sets $addr
# (socket path or port) and remembers the pid.
start_server() {
    local kind=$1 tr=$2 img=$D/$1-$2.qcow2 sock=$D/$1-$2.sock port
    cp src.qcow2 "$img"
    rm -f "$sock"
    port=$(free_port)
    case $kind-$tr in
    qemu-nbd-unix) exec qemu-nbd -t -f qcow2 -x exp -k "$sock" "$img" ;;
    qemu-nbd-tcp) exec qemu-nbd -t -f qcow2 -x exp -b 127.0.0.1 -p "$port" "$img" ;;
    vdisk-unix) exec "$VDISK" nbd -t -f qcow2 -x exp -k "$sock" "$img" ;;
    vdisk-tcp) exec "$VDISK" nbd -t -f qcow2 -x exp -b 127.0.0.1 -p "$port" "$img" ;;
    qsd-*)
        local a="addr.type=unix,addr.path=$sock"
        [ "$tr" = tcp ] && a="addr.type=inet,addr.host=127.0.0.1,addr.port=$port"
        exec qemu-storage-daemon \
            --blockdev driver=file,node-name=f0,filename="$img" \
            --blockdev driver=qcow2,node-name=d0,file=f0 \
            --nbd-server "$a" --export type=nbd,id=e0,node-name=d0,name=exp,writable=on ;;
    esac >"$D/$kind-$tr.log" 2>&1 &
    servers+=($!)
    if [ "$tr" = unix ]; then addr=$sock; else addr=$port; fi
    wait_listen "$tr" "$addr"
}

# check_uri NAME URI: the whole round of checks on one name of an export "exp".
check_uri() {
    local n=$1 u=$2
    # convert from a local image to the export (restores the content of earlier rounds)
    if "$VDISK" convert -n -f qcow2 -O raw src.qcow2 "$u" >out.txt 2>&1 &&
        "$QEMU_IMG" compare -f qcow2 -F raw src.qcow2 "$u" >>out.txt 2>&1; then
        pass "$n/convert-to-export"
    else
        fail "$n/convert-to-export" "vdisk convert -n to the export" out.txt
    fi
    # info
    "$VDISK" info --output=json "$u" >v.json 2>&1
    "$QEMU_IMG" info --output=json "$u" >q.json 2>&1
    if "$PYTHON" - v.json q.json $SIZE >out.txt 2>&1 <<'EOF'
import json, sys
v, q = (json.load(open(f)) for f in sys.argv[1:3])
assert v["virtual-size"] == q["virtual-size"] == int(sys.argv[3]), (v, q)
assert v["format"] == q["format"], (v, q)
EOF
    then pass "$n/info"; else cat v.json q.json >>out.txt; fail "$n/info" "size or format differ" out.txt; fi
    # map, as qemu-img map shows it on the same export
    "$VDISK" map --output=json "$u" >v.map 2>&1
    "$QEMU_IMG" map --output=json "$u" >q.map 2>&1
    if cmp -s v.map q.map && grep -q '"data": true' v.map; then pass "$n/map"
    else diff v.map q.map >out.txt; fail "$n/map" "differs from qemu-img map" out.txt; fi
    # compare
    check_ok "$n/compare" "$VDISK" compare -f qcow2 src.qcow2 "$u"
    # convert from the export to a local qcow2
    rm -f out.qcow2
    if "$VDISK" convert -O qcow2 "$u" out.qcow2 >out.txt 2>&1 &&
        "$QEMU_IMG" compare -f qcow2 -F qcow2 src.qcow2 out.qcow2 >>out.txt 2>&1; then
        pass "$n/convert-from-export"
    else
        fail "$n/convert-from-export" "vdisk convert from the export" out.txt
    fi
    # io: reads of what is there, a write that qemu-io then reads back
    if "$VDISK" io -c 'read -P 0x11 0 64k' -c 'read -P 0 1M 128k' -c 'read -P 0x33 3M 192k' \
        -c 'write -P 0x5a 2M 64k' -c 'read -P 0x5a 2M 64k' "$u" >out.txt 2>&1 &&
        ! grep -q 'Pattern verification failed' out.txt &&
        "$QEMU_IO" -c 'read -P 0x5a 2M 64k' "$u" >>out.txt 2>&1 &&
        ! grep -q 'Pattern verification failed' out.txt; then
        pass "$n/io"
    else
        fail "$n/io" "vdisk io on the export" out.txt
    fi
}

for kind in qemu-nbd qsd vdisk; do
    start_server "$kind" unix || fail "$kind/unix/start" "server did not listen" "$D/$kind-unix.log"
    s=$addr
    check_uri "$kind/nbd+unix" "nbd+unix:///exp?socket=$s"
    check_uri "$kind/legacy-unix" "nbd:unix:$s:exportname=exp"
    check_uri "$kind/json-unix" \
        "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$s\"},\"export\":\"exp\"}}"
    # json: with the nbd node itself as the image: info names the format "nbd", as QEMU does
    j="json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$s\"},\"export\":\"exp\"}"
    if "$VDISK" io -c 'read -P 0x11 0 64k' "$j" >out.txt 2>&1 && ! grep -q 'verification failed' out.txt &&
        [ "$("$VDISK" info --output=json "$j" 2>&1 | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["format"])')" = nbd ]; then
        pass "$kind/json-nbd-node"
    else
        fail "$kind/json-nbd-node" "reads or info of json:{driver:nbd}" out.txt
    fi
    start_server "$kind" tcp || fail "$kind/tcp/start" "server did not listen" "$D/$kind-tcp.log"
    p=$addr
    check_uri "$kind/nbd" "nbd://127.0.0.1:$p/exp"
    check_uri "$kind/nbd+tcp" "nbd+tcp://127.0.0.1:$p/exp"
    check_uri "$kind/legacy-tcp" "nbd:127.0.0.1:$p:exportname=exp"
    check_uri "$kind/json-inet" \
        "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":$p},\"export\":\"exp\"}}"
done

# Names and options that QEMU refuses, with its messages.
while IFS='|' read -r name want; do
    "$VDISK" info "$name" >out.txt 2>&1
    q=$("$QEMU_IMG" info "$name" 2>&1 | sed -n 's/^qemu-img: //p' | head -n 1)
    if grep -qF "$want" out.txt && [ "$(sed 's/^vdisk: //' out.txt | head -n 1)" = "$q" ]; then
        pass "refuse/$name"
    else
        echo "qemu-img: $q" >>out.txt
        fail "refuse/$name" "expected '$want' as qemu-img says" out.txt
    fi
done <<EOF
nbd://127.0.0.1:99999/x|No valid URL specified
nbd+unix:///x|No valid URL specified
nbd+unix:///x?socket=$D/qemu-nbd-unix.sock&a=b|No valid URL specified
nbd://h/?a=b|No valid URL specified
nbd:127.0.0.1|error parsing address '127.0.0.1'
nbd:|NBD server address missing
nbd+unix:///exp?socket=$D/none.sock|Failed to connect to '$D/none.sock'
nbd://127.0.0.1/exp|Failed to connect to '127.0.0.1:10809'
json:{"driver":"nbd","filename":"nbd+unix:///exp?socket=$D/qemu-nbd-unix.sock"}|NBD server address missing
json:{"driver":"nbd","path":"$D/x.sock","port":1}|port may not be used without host
json:{"driver":"nbd","server":{"type":"unix","path":"$D/x.sock"},"tls-creds":"zz"}|No TLS credentials with id 'zz'
EOF

# Percent-decoding: an export name and a socket path with a space and a slash.
rm -f "$D/p q.sock"
cp src.qcow2 pq.qcow2
qemu-nbd -t -f qcow2 -x 'a b/c' -k "$D/p q.sock" pq.qcow2 >pq.log 2>&1 &
servers+=($!)
wait_listen unix "$D/p q.sock"
for u in "nbd+unix:///a%20b%2Fc?socket=$(printf '%s' "$D/p q.sock" | sed 's|/|%2F|g; s| |%20|g')" \
    "nbd:unix:$D/p q.sock:exportname=a b/c"; do
    if "$VDISK" io -r -c 'read -P 0x33 3M 192k' "$u" >out.txt 2>&1 &&
        ! grep -q 'verification failed' out.txt; then
        pass "decoding/$u"
    else
        fail "decoding/$u" "reading the export" out.txt
    fi
done

# A read-only export opened for writing fails as in QEMU (whose message is this one); -r
# reads it.
cp src.qcow2 ro.qcow2
rm -f "$D/ro.sock"
qemu-nbd -t -r -f qcow2 -x exp -k "$D/ro.sock" ro.qcow2 >ro.log 2>&1 &
servers+=($!)
wait_listen unix "$D/ro.sock"
ro="nbd+unix:///exp?socket=$D/ro.sock"
"$VDISK" convert -n -O raw src.qcow2 "$ro" >out.txt 2>&1
"$QEMU_IMG" convert -n -O raw src.qcow2 "$ro" >q.txt 2>&1
[ "$(sed 's/^vdisk: //' out.txt)" = "$(sed 's/^qemu-img: //' q.txt)" ] &&
    grep -q "Could not open image: Permission denied" out.txt && pass read-only-export ||
    { cat q.txt >>out.txt; fail read-only-export "not qemu-img's message" out.txt; }
"$VDISK" io -r -c 'read -P 0x11 0 64k' "$ro" >out.txt 2>&1 &&
    ! grep -q 'verification failed' out.txt && pass read-only-export/read ||
    fail read-only-export/read "reading a read-only export" out.txt

# Killed mid-copy: a throttled server (10 MiB/s, so a 64 MiB copy takes seconds) is killed
# after half a second, in both directions; vdisk must fail with a message within 30 s.
"$QEMU_IMG" create -q -f raw big.raw 64M
"$QEMU_IO" -f raw -c 'write -P 0x77 0 64M' big.raw >/dev/null
for dir in from to; do
    cp big.raw kill.raw
    rm -f "$D/kill.sock"
    qemu-storage-daemon --object throttle-group,id=tg0,x-bps-total=10485760 \
        --blockdev driver=file,node-name=f0,filename="$D/kill.raw" \
        --blockdev driver=throttle,node-name=t0,throttle-group=tg0,file=f0 \
        --nbd-server addr.type=unix,addr.path="$D/kill.sock" \
        --export type=nbd,id=e0,node-name=t0,name=exp,writable=on >kill.log 2>&1 &
    ksrv=$!
    wait_listen unix "$D/kill.sock"
    u="nbd+unix:///exp?socket=$D/kill.sock"
    rm -f kill-out.qcow2
    start=$(date +%s)
    if [ $dir = from ]; then
        timeout 30 "$VDISK" convert -O qcow2 "$u" kill-out.qcow2 >out.txt 2>&1 &
    else
        timeout 30 "$VDISK" convert -n -f raw -O raw big.raw "$u" >out.txt 2>&1 &
    fi
    cpid=$!
    sleep 0.5
    kill -9 "$ksrv"
    wait "$ksrv" 2>/dev/null
    wait "$cpid"
    rc=$?
    secs=$(($(date +%s) - start))
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -lt 128 ] && [ "$secs" -lt 20 ] &&
        grep -q "nbd+unix:///exp?socket=$D/kill.sock" out.txt &&
        ! grep -qE 'Sanitizer|runtime error' out.txt; then
        pass "server-killed/convert-$dir"
    else
        fail "server-killed/convert-$dir" "exit $rc after ${secs}s (124: timed out)" out.txt
    fi
done

# TLS (x509): qemu-nbd with server credentials; vdisk with --object ...,endpoint=client.
. "$VD_TESTS/interop/nbd-tls-certs.sh"
T=$D/tls
if make_tls_certs "$T"; then
    cp src.qcow2 tls.qcow2
    tp=$(free_port)
    qemu-nbd -t -f qcow2 -x exp -b 127.0.0.1 -p "$tp" \
        --object tls-creds-x509,id=t0,dir="$T/srv",endpoint=server --tls-creds t0 \
        tls.qcow2 >tls.log 2>&1 &
    servers+=($!)
    wait_listen tcp "$tp"
    jt="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"localhost\",\"port\":\"$tp\"},\"export\":\"exp\",\"tls-creds\":\"tls0\"}}"
    obj="tls-creds-x509,id=tls0,dir=$T/cli,endpoint=client"
    if "$VDISK" io --object "$obj" -c 'read -P 0x11 0 64k' -c 'write -P 0x5b 2M 4k' "$jt" \
        >out.txt 2>&1 && ! grep -q 'verification failed' out.txt &&
        "$QEMU_IO" --object "$obj" -c 'read -P 0x5b 2M 4k' "$jt" >>out.txt 2>&1 &&
        ! grep -q 'verification failed' out.txt; then
        pass tls/x509-io
    else
        fail tls/x509-io "io over TLS" out.txt
    fi
    "$VDISK" map --object "$obj" --output=json "$jt" >v.map 2>&1
    "$QEMU_IMG" map --object "$obj" --output=json "$jt" >q.map 2>&1
    cmp -s v.map q.map && pass tls/x509-map ||
        { diff v.map q.map >out.txt; fail tls/x509-map "differs from qemu-img map" out.txt; }
    # A CA that did not sign the server's certificate: refused.
    "$VDISK" info --object "tls-creds-x509,id=tls0,dir=$T/otherca,endpoint=client" "$jt" \
        >out.txt 2>&1 && fail tls/wrong-ca "opened with the wrong CA" out.txt ||
        pass tls/wrong-ca
    # Without TLS against a TLS-only server, and an unknown id: refused.
    "$VDISK" info "nbd://127.0.0.1:$tp/exp" >out.txt 2>&1 &&
        fail tls/plain-refused "opened without TLS" out.txt || pass tls/plain-refused
    "$VDISK" info "${jt/tls0/nosuch}" >out.txt 2>&1
    grep -q "No TLS credentials with id 'nosuch'" out.txt && pass tls/unknown-id ||
        fail tls/unknown-id "no QEMU message" out.txt
else
    fail tls/certs "certtool failed"
fi

# TLS (PSK) over a unix socket: keys.psk in QEMU's "user:hexkey" form, user "qemu".
mkdir -p psk
printf 'qemu:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >psk/keys.psk
cp src.qcow2 psk.qcow2
rm -f "$D/psk.sock"
qemu-nbd -t -f qcow2 -x exp -k "$D/psk.sock" \
    --object tls-creds-psk,id=t0,dir="$D/psk",endpoint=server --tls-creds t0 \
    psk.qcow2 >psk.log 2>&1 &
servers+=($!)
wait_listen unix "$D/psk.sock"
jp="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$D/psk.sock\"},\"export\":\"exp\",\"tls-creds\":\"p0\"}}"
if "$VDISK" io --object "tls-creds-psk,id=p0,dir=$D/psk,endpoint=client" \
    -c 'read -P 0x11 0 64k' -c 'read -P 0x33 3M 192k' "$jp" >out.txt 2>&1 &&
    ! grep -q 'verification failed' out.txt; then
    pass tls/psk-io
else
    fail tls/psk-io "io over TLS-PSK" out.txt
fi

# x-dirty-bitmap: another meta context read in place of base:allocation (QEMU's way of
# seeing qemu:allocation-depth), and info on an export ("disk size: unavailable"), as
# qemu-img shows them, against qemu-nbd -A over an image with a backing file.
"$QEMU_IMG" create -q -f qcow2 depth-base.qcow2 $SIZE
"$QEMU_IO" -c 'write 0 2M' depth-base.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b depth-base.qcow2 -F qcow2 depth.qcow2
"$QEMU_IO" -c 'write 1M 2M' depth.qcow2 >/dev/null
rm -f "$D/depth.sock"
qemu-nbd -t -r -f qcow2 -A -k "$D/depth.sock" depth.qcow2 >depth.log 2>&1 &
servers+=($!)
wait_listen unix "$D/depth.sock"
o="driver=nbd,server.type=unix,server.path=$D/depth.sock"
for extra in "" ",x-dirty-bitmap=qemu:allocation-depth"; do
    n=map-context${extra:+-allocation-depth}
    "$VDISK" map --output=json --image-opts "$o$extra" >v.map 2>&1
    "$QEMU_IMG" map --output=json --image-opts "$o$extra" >q.map 2>&1
    same_files "$n" q.map v.map
done
"$VDISK" map --image-opts "$o,x-dirty-bitmap=nosuch" >v.err 2>&1
"$QEMU_IMG" map --image-opts "$o,x-dirty-bitmap=nosuch" >q.err 2>&1
sed 's/^[^:]*: //' v.err >v2.err
sed 's/^[^:]*: //' q.err >q2.err
same_files map-context-missing q2.err v2.err
"$VDISK" info "nbd+unix:///?socket=$D/depth.sock" >v.info 2>&1
"$QEMU_IMG" info "nbd+unix:///?socket=$D/depth.sock" >q.info 2>&1
same_files info-export q.info v.info

# create on an export: the export is formatted in place (it cannot be created or grown), the
# result checks clean with qemu-img and holds what vdisk wrote; preallocation that would
# need a larger export fails with qemu-img's message, and no local file is made or removed.
for who in vdisk qemu; do
    "$QEMU_IMG" create -q -f raw "mk-$who.raw" 8M
    rm -f "$D/mk-$who.sock"
    qemu-nbd -t -e 3 -f raw -k "$D/mk-$who.sock" "mk-$who.raw" >"mk-$who.log" 2>&1 &
    servers+=($!)
    wait_listen unix "$D/mk-$who.sock"
done
uv="nbd+unix:///?socket=$D/mk-vdisk.sock"
uq="nbd+unix:///?socket=$D/mk-qemu.sock"
"$VDISK" create -f qcow2 "$uv" 8M >v.out 2>&1
"$QEMU_IMG" create -f qcow2 "$uq" 8M >q.out 2>&1
sed "s|$uv|URI|" v.out >v2.out
sed "s|$uq|URI|" q.out >q2.out
same_files create-on-export q2.out v2.out
"$VDISK" io -c 'write -P 0x5a 1M 64k' "$uv" >/dev/null 2>&1
"$QEMU_IMG" check "$uv" >chk.out 2>&1 &&
    "$QEMU_IO" -c 'read -P 0x5a 1M 64k' "$uv" >rd.out 2>&1 && ! grep -q 'fail' rd.out &&
    [ "$("$QEMU_IMG" info --output=json "$uv" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["format"])')" = qcow2 ] &&
    pass create-on-export/check ||
    { cat rd.out >>chk.out; fail create-on-export/check "the formatted export" chk.out; }
"$VDISK" create -f qcow2 -o preallocation=metadata "$uv" 8M >v.out 2>&1; vrc=$?
"$QEMU_IMG" create -f qcow2 -o preallocation=metadata "$uq" 8M >q.out 2>&1; qrc=$?
sed -e "s|$uv|URI|g" -e 's/^vdisk: /PROG: /' v.out >v2.out
sed -e "s|$uq|URI|g" -e 's/^qemu-img: /PROG: /' q.out >q2.out
[ $vrc -ne 0 ] && [ $qrc -ne 0 ] && grep -q "Could not resize image: Cannot grow NBD nodes" v2.out &&
    pass create-on-export/grow-fails ||
    { cat q2.out >>v2.out; fail create-on-export/grow-fails "exit $vrc (qemu-img $qrc)" v2.out; }
same_files create-on-export/grow-message q2.out v2.out
# An overlay backed by an export: the URI is its backing name as it is (not a path relative
# to the overlay's directory), for create, info and reads, as qemu-img takes it.
mkdir -p sub
"$VDISK" create -q -f qcow2 -b "$uq" -F raw sub/ov.qcow2 >ov.out 2>&1 &&
    "$VDISK" compare -f qcow2 -F raw sub/ov.qcow2 "$uq" >>ov.out 2>&1 &&
    "$QEMU_IMG" compare -f qcow2 -F raw sub/ov.qcow2 "$uq" >>ov.out 2>&1 &&
    "$QEMU_IMG" info sub/ov.qcow2 | grep -qF "backing file: $uq" && pass backing-is-export ||
    fail backing-is-export "an overlay over an NBD export" ov.out
ls nbd* >/dev/null 2>&1 && fail create-on-export/no-local-file "a local file named like the URI" /dev/null ||
    pass create-on-export/no-local-file

for p in "${servers[@]}"; do
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
done
vd_finish
