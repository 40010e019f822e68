#!/usr/bin/env bash
# Persistent dirty bitmaps in qcow2, against qemu-img, qemu-io, qemu-nbd and
# qemu-storage-daemon: the same bitmap commands and writes applied with vdisk to one image
# and with QEMU's tools to a copy give the same `info` (JSON) and the same bits, read back
# by qemu-nbd -B and by vdisk nbd -B; each tool reads and changes the other's bitmaps;
# `convert --bitmaps`; the refusals, word for word; `vdisk info` and `io -c info` list
# bitmaps as QEMU does; the daemons (qmp_bitmaps_persist.py): loaded bitmaps, persistent
# ones added over QMP and stored at quit, removal while open, kill -9 leaving them in use
# and both daemons then treating them as inconsistent. Every image checks clean.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-nbd nbdinfo qemu-storage-daemon
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}

# bmap IMG BITMAP SERVER(q|v): the bitmap's extents as nbdinfo reads them from qemu-nbd -B
# or vdisk nbd -B (read-only export).
bmap() {
    local img=$1 bm=$2 srv=$3 sock=$VD_TESTDIR/map.sock pid
    rm -f "$sock"
    if [ "$srv" = q ]; then
        qemu-nbd -r -t -f qcow2 -B "$bm" -k "$sock" "$img" 2>/dev/null &
    else
        "$VDISK" nbd -r -t -f qcow2 -B "$bm" -k "$sock" "$img" 2>/dev/null &
    fi
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    nbdinfo --map="qemu:dirty-bitmap:$bm" "nbd+unix:///?socket=$sock" 2>&1
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

# info_json IMG: qemu-img info --output=json without the parts that name the file.
info_json() {
    "$QEMU_IMG" info --output=json -U "$1" | grep -v '"filename"\|"actual-size"'
}

same_bits() {   # NAME IMG1 IMG2 BITMAP...: maps equal via qemu-nbd, and via vdisk nbd
    local name=$1 a=$2 b=$3 bm ok=1
    shift 3
    for bm in "$@"; do
        bmap "$a" "$bm" q >ma.q
        bmap "$b" "$bm" q >mb.q
        bmap "$b" "$bm" v >mb.v
        bmap "$a" "$bm" v >ma.v
        if ! grep -q 'dirty\|clean' ma.q; then
            fail "$name-$bm" "qemu-nbd could not read it" ma.q
            ok=0
        elif ! cmp -s ma.q mb.q || ! cmp -s ma.q mb.v || ! cmp -s ma.q ma.v; then
            { echo "== QEMU's image via qemu-nbd"; cat ma.q; echo "== vdisk's via qemu-nbd";
              cat mb.q; echo "== vdisk's via vdisk nbd"; cat mb.v;
              echo "== QEMU's via vdisk nbd"; cat ma.v; } >maps.diff
            fail "$name-$bm" "bitmap contents differ" maps.diff
            ok=0
        fi
    done
    [ $ok = 1 ] && pass "$name"
}

clean() {   # NAME IMG...
    local name=$1 img
    shift
    for img in "$@"; do
        if ! qemu_check_clean "$img" chk.out || ! grep -q "No errors were found" chk.out ||
            grep -q "leaked" chk.out; then
            fail "$name" "qemu-img check $img" chk.out
            return
        fi
    done
    pass "$name"
}

# --- the same bitmap commands and writes, each tool on its own copy --------------------------
"$QEMU_IMG" create -q -f qcow2 q.qcow2 16M
cp q.qcow2 v.qcow2
step() {   # "bitmap ARGS" or "io CMD", with IMG standing for the image
    local kind=$1
    shift
    local qa=() va=() x
    for x in "$@"; do
        qa+=("${x//IMG/q.qcow2}")
        va+=("${x//IMG/v.qcow2}")
    done
    if [ "$kind" = bitmap ]; then
        "$QEMU_IMG" bitmap "${qa[@]}" >q.out 2>&1
        echo "rc=$?" >>q.out
        "$VDISK" bitmap "${va[@]}" >v.out 2>&1
        echo "rc=$?" >>v.out
    else
        "$QEMU_IO" -f qcow2 -c "$1" q.qcow2 >/dev/null 2>&1
        "$VDISK" io -f qcow2 -c "$1" v.qcow2 >/dev/null 2>&1
        return
    fi
    # Same words, once the program and image names are set aside (QEMU names the node
    # it made, #blockNNN; vdisk names the file).
    sed -i -e 's/^qemu-img: //; s/^vdisk: //; s/#block[0-9]*/NODE/; s/[qv]\.qcow2/NODE/g' \
        q.out v.out
    local name="bitmap $*"
    name=${name:0:72}
    if cmp -s q.out v.out; then
        pass "$name"
    else
        diff q.out v.out >step.diff
        fail "$name" "output differs from qemu-img's" step.diff
    fi
}
step bitmap --add IMG b0
step bitmap --add -g 4096 --disable IMG b1
step bitmap --add -g 512 IMG b2
step io "write -P 1 0 4k"
step io "write -P 2 1M 64k"
step io "write -z 3M 1M"
step io "discard 5M 64k"
step bitmap --enable IMG b1
step io "write -P 3 2M 512"
step bitmap --merge b0 IMG b1
step bitmap --clear IMG b2
step io "write -P 4 7M 4k"
step bitmap --add --merge b0 --disable IMG b3
step bitmap --disable IMG b0
step io "write -P 5 9M 128k"
step bitmap --remove IMG b2
# Refusals.
step bitmap IMG b0
step bitmap --add IMG b0
step bitmap --remove IMG nosuch
step bitmap --add -g 1000 IMG bx
step bitmap --add -g 4G IMG bx
step bitmap -g 4096 --clear IMG b0
step bitmap --merge nosuch IMG b0
step bitmap -b IMG --clear IMG b0
step bitmap -F qcow2 --clear IMG b0
step bitmap --add IMG
step bitmap --add "IMG" "$(printf 'x%.0s' $(seq 1024))"
info_json q.qcow2 >iq.json
info_json v.qcow2 >iv.json
same_files info-after-commands iq.json iv.json
same_bits bits-after-commands q.qcow2 v.qcow2 b0 b1 b3
clean check-after-commands q.qcow2 v.qcow2

# --- each tool changes the other's image -----------------------------------------------------
"$QEMU_IMG" bitmap --clear v.qcow2 b1
"$QEMU_IO" -f qcow2 -c "write -P 6 12M 4k" v.qcow2 >/dev/null
"$VDISK" bitmap --clear q.qcow2 b1
"$VDISK" io -f qcow2 -c "write -P 6 12M 4k" q.qcow2 >/dev/null
same_bits bits-crossed q.qcow2 v.qcow2 b0 b1 b3
clean check-crossed q.qcow2 v.qcow2
"$QEMU_IMG" create -q -f qcow2 src.qcow2 16M
"$QEMU_IMG" bitmap --add -g 8192 src.qcow2 s0
"$QEMU_IMG" bitmap -b q.qcow2 --merge b1 src.qcow2 s0
"$VDISK" create -q -f qcow2 vsrc.qcow2 16M
"$VDISK" bitmap --add -g 8192 vsrc.qcow2 s0
"$VDISK" bitmap -b q.qcow2 --merge b1 vsrc.qcow2 s0
same_bits merge-from-another-file src.qcow2 vsrc.qcow2 s0

# --- several contexts in one BLOCK_STATUS request, as qemu-nbd answers them ----------------
for srv in q v; do
    rm -f "$VD_TESTDIR/ctx.sock"
    if [ $srv = q ]; then
        qemu-nbd -r -t -A -B b0 -B b1 -B b3 -f qcow2 -k "$VD_TESTDIR/ctx.sock" q.qcow2 &
    else
        "$VDISK" nbd -r -t -A -B b0 -B b1 -B b3 -f qcow2 -k "$VD_TESTDIR/ctx.sock" q.qcow2 &
    fi
    pid=$!
    for _ in $(seq 100); do [ -S "$VD_TESTDIR/ctx.sock" ] && break; sleep 0.05; done
    "$PYTHON" "$VD_TESTS/interop/nbd_contexts.py" "nbd+unix:///?socket=$VD_TESTDIR/ctx.sock" \
        base:allocation qemu:allocation-depth qemu:dirty-bitmap:b0 qemu:dirty-bitmap:b1 \
        qemu:dirty-bitmap:b3 -- 0 16777216 4096 65536 req_one 1048576 100000 \
        9437184 200000 req_one >ctx.$srv 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null
done
grep -q "dirty-bitmap:b0 at 0" ctx.q || fail contexts-in-one-request-ran "no reply" ctx.q
same_files contexts-in-one-request ctx.q ctx.v

# --- info and io -c info ---------------------------------------------------------------------
for o in human json; do
    "$QEMU_IMG" info --output=$o v.qcow2 >a.out 2>&1
    "$VDISK" info --output=$o v.qcow2 >b.out 2>&1
    same_files "info-$o-lists-bitmaps" a.out b.out
done
"$QEMU_IO" -c info q.qcow2 >a.out 2>&1
"$VDISK" io -c info q.qcow2 >b.out 2>&1
same_files io-info-lists-bitmaps-in-use a.out b.out

# --- convert --bitmaps -----------------------------------------------------------------------
check_ok convert-bitmaps-qemu "$QEMU_IMG" convert --bitmaps -O qcow2 q.qcow2 cq.qcow2
check_ok convert-bitmaps-vdisk "$VDISK" convert --bitmaps -O qcow2 q.qcow2 cv.qcow2
info_json cq.qcow2 >a.out
info_json cv.qcow2 >b.out
same_files convert-bitmaps-info a.out b.out
same_bits convert-bitmaps-bits cq.qcow2 cv.qcow2 b0 b1 b3
clean convert-bitmaps-check cq.qcow2 cv.qcow2
for args in "-O raw q.qcow2 X.raw" "-O qcow2 q.qcow2 q.qcow2 X.qcow2" \
    "-O qcow2 -o compat=0.10 q.qcow2 X.qcow2"; do
    rm -f X.raw X.qcow2
    # shellcheck disable=SC2086
    "$QEMU_IMG" convert --bitmaps $args >a.out 2>&1
    echo "rc=$? created=$(ls X.* 2>/dev/null)" >>a.out
    rm -f X.raw X.qcow2
    # shellcheck disable=SC2086
    "$VDISK" convert --bitmaps $args >b.out 2>&1
    echo "rc=$? created=$(ls X.* 2>/dev/null)" >>b.out
    sed -i 's/^qemu-img: //; s/^vdisk: //' a.out b.out
    same_files "convert-bitmaps-refused $args" a.out b.out
done

# --- an open that fails after the bitmaps were flagged in use stores them back ---------------
"$QEMU_IMG" create -q -f qcow2 ov.qcow2 16M
"$QEMU_IMG" bitmap --add ov.qcow2 b
"$QEMU_IMG" rebase -u -b "$VD_TESTDIR/nosuch.qcow2" -F qcow2 ov.qcow2
"$VDISK" io -c "write 0 4k" ov.qcow2 >/dev/null 2>&1
if "$QEMU_IMG" info -U ov.qcow2 | grep -q in-use; then
    fail failed-open-leaves-bitmaps-consistent "the bitmap stayed flagged in use"
else
    pass failed-open-leaves-bitmaps-consistent
fi

# --- resize: refused, in QEMU's words, while a bitmap is inconsistent -----------------------
"$QEMU_IMG" create -q -f qcow2 rs.qcow2 16M
"$QEMU_IMG" bitmap --add rs.qcow2 b
"$VDISK" nbd -t -f qcow2 -k "$VD_TESTDIR/rs.sock" rs.qcow2 &
pid=$!
for _ in $(seq 100); do [ -S "$VD_TESTDIR/rs.sock" ] && break; sleep 0.05; done
kill -9 "$pid"
wait "$pid" 2>/dev/null
cp rs.qcow2 rs2.qcow2
"$QEMU_IMG" resize rs.qcow2 +1M >a.out 2>&1
echo "rc=$?" >>a.out
"$VDISK" resize rs2.qcow2 +1M >b.out 2>&1
echo "rc=$?" >>b.out
sed -i 's/^qemu-img: //; s/^vdisk: //; s/rs2\?\.qcow2/IMG/g' a.out b.out
same_files resize-refused-inconsistent a.out b.out
"$QEMU_IMG" bitmap --remove rs.qcow2 b
"$QEMU_IMG" bitmap --add -g 512 rs.qcow2 c
"$VDISK" resize rs.qcow2 +16M >/dev/null && "$VDISK" io -c "write 30M 4k" rs.qcow2 >/dev/null
bmap rs.qcow2 c q >rs.map
if grep -q "31457280 *4096 *1 *dirty" rs.map; then
    pass resize-with-bitmap-grows-it
else
    fail resize-with-bitmap-grows-it "the write past the old end is not in the bitmap" rs.map
fi

# The hint qemu-img adds to an inconsistent bitmap's error.
"$QEMU_IMG" bitmap --clear rs2.qcow2 b >a.out 2>&1
"$VDISK" bitmap --clear rs2.qcow2 b >b.out 2>&1
sed -i 's/^qemu-img: //; s/^vdisk: //' a.out b.out
same_files bitmap-inconsistent-hint a.out b.out

# --- a damaged directory or table: both tools refuse the image, vdisk naming what is wrong ---
corrupt_bitmap() {   # IMG WHAT: patches the first bitmap's entry or table
    "$PYTHON" - "$1" "$2" <<'PY'
import struct, sys
path, what = sys.argv[1], sys.argv[2]
f = bytearray(open(path, "rb").read())
pos = struct.unpack(">I", f[100:104])[0]
while True:
    t, n = struct.unpack(">II", f[pos:pos + 8])
    if t == 0x23852875:
        d = struct.unpack(">Q", f[pos + 24:pos + 32])[0]
        break
    pos += 8 + (n + 7) // 8 * 8
if what == "extra":
    f[d + 20:d + 24] = struct.pack(">I", 8)
elif what == "granularity":
    f[d + 17] = 40
else:
    table = struct.unpack(">Q", f[d:d + 8])[0]
    f[table:table + 8] = struct.pack(">Q", 0x0100000000000002)
open(path, "wb").write(f)
PY
}
for what in extra granularity table; do
    "$QEMU_IMG" create -q -f qcow2 bad.qcow2 1M
    "$QEMU_IMG" bitmap --add bad.qcow2 b
    "$QEMU_IO" -c "write 0 4k" bad.qcow2 >/dev/null
    corrupt_bitmap bad.qcow2 $what
    "$QEMU_IMG" info bad.qcow2 >a.out 2>&1
    qrc=$?
    "$VDISK" info bad.qcow2 >b.out 2>&1
    vrc=$?
    case $what in
    extra) want="Bitmap extra data is not supported" ;;
    granularity) want="Bitmap directory entry is invalid" ;;
    table) want="invalid bitmap table" ;;
    esac
    if [ $qrc != 0 ] && [ $vrc != 0 ] && grep -q "$want" b.out; then
        pass "corrupt-bitmap-$what-refused"
    else
        cat a.out b.out >both.out
        fail "corrupt-bitmap-$what-refused" "qemu-img exit $qrc, vdisk exit $vrc" both.out
    fi
done

# --- the daemons ---------------------------------------------------------------------------
"$PYTHON" "$VD_TESTS/interop/qmp_bitmaps_persist.py" "$VDISKD" qemu-storage-daemon "$VDISK" \
    "$VD_TESTDIR"

# The command line's export form: bitmaps.0=NAME offers a stored bitmap.
cp q.qcow2 cl.qcow2
"$VDISKD" --blockdev driver=file,node-name=f0,filename=cl.qcow2 \
    --blockdev driver=qcow2,node-name=d0,file=f0 \
    --nbd-server addr.type=unix,addr.path="$VD_TESTDIR/cl.nbd" \
    --export type=nbd,id=e0,node-name=d0,name=disk,bitmaps.0=b3 \
    --pidfile "$VD_TESTDIR/cl.pid" --daemonize >cl.out 2>&1
if nbdinfo --map=qemu:dirty-bitmap:b3 "nbd+unix:///disk?socket=$VD_TESTDIR/cl.nbd" \
    >cl.map 2>&1 && grep -q dirty cl.map; then
    pass cmdline-export-bitmaps
else
    fail cmdline-export-bitmaps "no dirty extent read" cl.map
fi
[ -s cl.pid ] && kill "$(cat cl.pid)"
for _ in $(seq 100); do [ -e cl.pid ] || break; sleep 0.05; done
clean cmdline-export-check cl.qcow2
vd_finish
