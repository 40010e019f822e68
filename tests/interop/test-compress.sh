#!/usr/bin/env bash
# Compressed qcow2 clusters both ways (issue 3, must-show 1 to 3):
#  a. qemu -> vdisk: images from `qemu-img convert -c` (zlib and zstd; 4k, 64k and 2M
#     clusters) and from `qemu-io -c 'write -c ...'` read back identically through vdisk.
#  b. vdisk -> qemu: `vdisk convert -c` images (each type, cluster size, min and max levels,
#     -m/-W/-S 0/-n/-p, several sources) are clean under `qemu-img check`, hold compressed
#     clusters, equal the source under `qemu-img compare`, map like qemu-img's own
#     convert -c output, end on a 512-byte boundary and are about as small as qemu-img's.
#  c. Messages and exit codes: compression levels out of range, unknown types, -c with a
#     raw target or with preallocation, zstd on a v2 image.
. "$(dirname "$0")/../lib.sh"
vd_init

KiB=1024
MiB=$((1024 * KiB))
size=$((8 * MiB + 2560))   # not a multiple of any cluster size
data="$PYTHON $VD_TESTS/interop/compress-data.py"
if ! $data disk src.raw --size "$size" --seed 3 >patterns.txt 2>setup.out ||
    ! $data fill text.bin --kind text --size $((4 * MiB)) --seed 4 2>>setup.out ||
    ! $data fill random.bin --kind random --size $((2 * MiB)) --seed 5 2>>setup.out; then
    fail setup "generating the test data failed" setup.out
    vd_finish
fi

types=(zlib zstd)
clusters=(4096 65536 2097152)
cname() { case $1 in 4096) echo 4k ;; 65536) echo 64k ;; 2097152) echo 2M ;; *) echo "$1" ;; esac; }

# read_patterns NAME IMG FILE: `vdisk io read -P` of every "OFF LEN PATTERN" line of FILE.
read_patterns() {
    local name=$1 img=$2 list=$3 off len pat args=()
    while read -r off len pat; do
        args+=(-c "read -P $pat $off $len")
    done <"$list"
    "$VDISK" io -f qcow2 "${args[@]}" "$img" >io.out 2>&1
    local rc=$?
    if [ $rc -eq 0 ] && ! grep -qiE 'fail|error|verification|invalid' io.out; then
        pass "$name"
    else
        fail "$name" "vdisk io read -P exited $rc or reported a mismatch" io.out
    fi
}

# compressed_clusters IMG: qemu-img check's count of compressed clusters (empty on error).
compressed_clusters() {
    "$QEMU_IMG" check --output=json "$1" 2>/dev/null |
        "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin).get("compressed-clusters", 0))'
}

# map_shape IMG: qemu-img map's extents with host offsets dropped and neighbours of the same
# kind merged; "c" marks data without an offset, i.e. compressed clusters.
map_shape() {
    "$QEMU_IMG" map --output=json "$1" 2>/dev/null | "$PYTHON" -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    kind = ("c" if "offset" not in e else "d") if e["data"] else ("z" if e["zero"] else "u")
    if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], kind])
print("\n".join("%d %d %s" % tuple(x) for x in out))'
}

# ---- a. qemu -> vdisk ------------------------------------------------------------------

for t in "${types[@]}"; do
    for c in "${clusters[@]}"; do
        n="q2v/$t-$(cname "$c")"
        q="q-$t-$c.qcow2"
        if ! "$QEMU_IMG" convert -c -f raw -O qcow2 -o "compression_type=$t,cluster_size=$c" \
            src.raw "$q" >conv.out 2>&1; then
            fail "$n/setup" "qemu-img convert -c failed" conv.out
            continue
        fi
        nc=$(compressed_clusters "$q")
        rm -f out.raw
        if ! "$VDISK" convert -f qcow2 -O raw "$q" out.raw >conv.out 2>&1; then
            fail "$n/raw-export" "vdisk convert -O raw failed" conv.out
        elif ! cmp src.raw out.raw >cmp.out 2>&1; then
            fail "$n/raw-export" "vdisk reads other data than the source" cmp.out
        elif [ "${nc:-0}" -le 0 ]; then
            fail "$n/raw-export" "test setup: qemu-img made no compressed clusters"
        else
            pass "$n/raw-export"
        fi
        read_patterns "$n/read-P" "$q" patterns.txt
        "$VDISK" compare -f raw -F qcow2 src.raw "$q" >cmp.out 2>&1
        rc=$?
        if [ $rc -eq 0 ] && [ "$(cat cmp.out)" = "Images are identical." ]; then
            pass "$n/vdisk-compare"
        else
            fail "$n/vdisk-compare" "vdisk compare exited $rc" cmp.out
        fi
        if [ -f out.raw ] && "$QEMU_IMG" compare -f qcow2 -F raw "$q" out.raw >cmp.out 2>&1
        then
            pass "$n/qemu-compare"
        else
            fail "$n/qemu-compare" "qemu-img compare with vdisk's raw export failed" cmp.out
        fi

        # Compressed writes by qemu-io: pattern, text and random (stored uncompressed)
        # clusters, a write of two clusters and the partial last cluster. qemu-io does not
        # pad the file, so the last stream's sector-rounded length runs past the end.
        io="io-$t-$c.qcow2"
        iosize=$((4 * c + 1536))
        "$QEMU_IMG" create -q -f qcow2 -o "compression_type=$t,cluster_size=$c" "$io" \
            "$iosize" >conv.out 2>&1 &&
            "$QEMU_IO" -f qcow2 -c "write -c -P 0x11 0 $c" -c "write -c -s text.bin $c $((2 * c))" \
                -c "write -c -s random.bin $((3 * c)) $c" -c "write -c -P 0x22 $((4 * c)) 1536" \
                "$io" >>conv.out 2>&1
        rc=$?
        if [ $rc -ne 0 ] || grep -qi failed conv.out; then
            fail "$n/qemu-io-write-c" "test setup: qemu-io write -c failed" conv.out
            continue
        fi
        printf '%s\n' "0 $c 0x11" "$((4 * c)) 1536 0x22" >io-patterns.txt
        rm -f ref.raw out.raw
        "$QEMU_IMG" convert -f qcow2 -O raw "$io" ref.raw >conv.out 2>&1
        if ! "$VDISK" convert -f qcow2 -O raw "$io" out.raw >>conv.out 2>&1; then
            fail "$n/qemu-io-write-c" "vdisk convert -O raw failed" conv.out
        elif ! cmp ref.raw out.raw >cmp.out 2>&1; then
            fail "$n/qemu-io-write-c" "vdisk reads other data than qemu-img" cmp.out
        elif ! "$VDISK" compare -f qcow2 -F raw "$io" ref.raw >cmp.out 2>&1; then
            fail "$n/qemu-io-write-c" "vdisk compare disagrees" cmp.out
        elif [ "$(compressed_clusters "$io")" -lt 3 ]; then
            fail "$n/qemu-io-write-c" "test setup: qemu-io made fewer than 3 compressed clusters"
        else
            pass "$n/qemu-io-write-c"
        fi
        read_patterns "$n/qemu-io-read-P" "$io" io-patterns.txt
        rm -f "$io" ref.raw out.raw
    done
done

# ---- b. vdisk -> qemu ------------------------------------------------------------------

# check_image NAME IMG REF: qemu-img check clean with compressed clusters, and qemu-img
# compare (and vdisk compare) identical to REF (raw).
check_image() {
    local name=$1 img=$2 ref=$3 rc nc
    "$QEMU_IMG" check "$img" >chk.out 2>&1
    rc=$?
    nc=$(compressed_clusters "$img")
    if [ $rc -ne 0 ]; then
        fail "$name/check" "qemu-img check exited $rc" chk.out
    elif [ "${nc:-0}" -le 0 ]; then
        fail "$name/check" "qemu-img check counts no compressed clusters" chk.out
    else
        pass "$name/check"
    fi
    if ! "$QEMU_IMG" compare -f raw -F qcow2 "$ref" "$img" >cmp.out 2>&1; then
        fail "$name/compare" "qemu-img compare with the source failed" cmp.out
    elif ! "$VDISK" compare -f raw -F qcow2 "$ref" "$img" >cmp.out 2>&1; then
        fail "$name/compare" "vdisk compare with the source failed" cmp.out
    else
        pass "$name/compare"
    fi
}

# vconvert NAME ARGS...: vdisk convert that must succeed and print nothing (as qemu-img).
vconvert() {
    local name=$1
    shift
    "$VDISK" convert "$@" >conv.out 2>&1
    local rc=$?
    if [ $rc -eq 0 ] && [ ! -s conv.out ]; then
        pass "$name/convert"
        return 0
    fi
    fail "$name/convert" "vdisk convert $* exited $rc or printed something" conv.out
    return 1
}

echo "sizes at the default level (vdisk convert -c vs qemu-img convert -c):"
for t in "${types[@]}"; do
    for c in "${clusters[@]}"; do
        n="v2q/$t-$(cname "$c")"
        v="v-$t-$c.qcow2"
        q="q-$t-$c.qcow2"
        start=$(date +%s.%N)
        vconvert "$n" -c -f raw -O qcow2 -o "compression_type=$t,cluster_size=$c" src.raw "$v" ||
            continue
        end=$(date +%s.%N)
        check_image "$n" "$v" src.raw
        got=$(qemu_info_field "$v" format-specific data compression-type)
        if [ "$got" = "\"$t\"" ]; then
            pass "$n/type"
        else
            fail "$n/type" "the image's compression type is $got, not $t"
        fi
        if [ ! -f "$q" ]; then
            fail "$n/map" "no qemu-img twin to compare with (see part a)"
        elif ! map_shape "$v" >map-v.txt || ! grep -q ' c$' map-v.txt; then
            fail "$n/map" "qemu-img map shows no compressed extents" map-v.txt
        elif map_shape "$q" >map-q.txt && diff map-q.txt map-v.txt >map.diff; then
            pass "$n/map"
        else
            fail "$n/map" "allocation differs from qemu-img convert -c's (qemu < > vdisk)" \
                map.diff
        fi
        vs=$(stat -c %s "$v")
        qs=$(stat -c %s "$q" 2>/dev/null || echo 0)
        awk -v n="$t-$(cname "$c")" -v v="$vs" -v q="$qs" -v s="$start" -v e="$end" \
            'BEGIN { printf "    %-10s vdisk %9d  qemu-img %9d  (%+.1f%%, vdisk %.2f s)\n",
                     n, v, q, (v - q) * 100 / (q + 1), e - s }' 
        if [ $((vs % 512)) -ne 0 ]; then
            fail "$n/size" "file size $vs is not a multiple of 512"
        elif [ "$qs" -gt 0 ] && [ $((vs * 10)) -le $((qs * 11)) ] &&
            [ $((vs * 10)) -ge $((qs * 9)) ]; then
            pass "$n/size"
        else
            fail "$n/size" "vdisk's image ($vs bytes) is not within 10% of qemu-img's ($qs)"
        fi
        [ "$c" = 65536 ] || rm -f "$v"
    done
done

# Levels: the minimum and maximum of each codec, and one in between.
for tl in zlib:1 zlib:4 zlib:9 zstd:1 zstd:9 zstd:22; do
    t=${tl%:*}
    l=${tl#*:}
    n="v2q/$t-level-$l"
    v="v-$t-level-$l.qcow2"
    vconvert "$n" -c --compression-level="$l" -O qcow2 -o "compression_type=$t" src.raw "$v" ||
        continue
    check_image "$n" "$v" src.raw
    printf '    %-10s level %2d: %d bytes\n' "$t" "$l" "$(stat -c %s "$v")"
    rm -f "$v"
done

# Worker and ordering options, which qemu-img 7.2 all accepts with -c (-W included).
for opt in "-m 1" "-m 16" "-W" "-m 3 -W"; do
    n="v2q/zstd-${opt// /}"
    v="v-opt.qcow2"
    # shellcheck disable=SC2086
    vconvert "$n" -c $opt -O qcow2 -o compression_type=zstd src.raw "$v" || continue
    check_image "$n" "$v" src.raw
    rm -f "$v"
done

# -S 0: zeros are written too (compressed), so every cluster is allocated, as qemu-img's.
n="v2q/zlib-S0"
rm -f qs0.qcow2 vs0.qcow2
if "$QEMU_IMG" convert -c -S 0 -O qcow2 src.raw qs0.qcow2 >conv.out 2>&1 &&
    vconvert "$n" -c -S 0 -O qcow2 src.raw vs0.qcow2; then
    check_image "$n" vs0.qcow2 src.raw
    if map_shape qs0.qcow2 >map-q.txt && map_shape vs0.qcow2 >map-v.txt &&
        diff map-q.txt map-v.txt >map.diff; then
        pass "$n/map"
    else
        fail "$n/map" "allocation differs from qemu-img convert -c -S 0's" map.diff
    fi
fi
rm -f qs0.qcow2 vs0.qcow2

# -p: qemu-img's progress line, ending at 100%.
n="v2q/progress"
"$VDISK" convert -p -c -O qcow2 src.raw vp.qcow2 >conv.out 2>&1
rc=$?
if [ $rc -eq 0 ] && tr '\r' '\n' <conv.out | grep -q '(100.00/100%)'; then
    pass "$n"
else
    fail "$n" "vdisk convert -p -c exited $rc or showed no 100% progress" conv.out
fi
rm -f vp.qcow2

# -n: an existing zstd image keeps its type; the level is checked against it.
n="v2q/existing-target"
rm -f vn.qcow2
"$VDISK" create -q -f qcow2 -o compression_type=zstd,cluster_size=16384 vn.qcow2 "$size" \
    >conv.out 2>&1
if vconvert "$n" -n -c --compression-level=19 -O qcow2 src.raw vn.qcow2; then
    check_image "$n" vn.qcow2 src.raw
fi
rm -f vn.qcow2

# Several sources (the first not a multiple of the cluster size) and a compressed source of
# the other type: the result equals qemu-img's own conversion.
n="v2q/concat-transcode"
rm -f vcat.qcow2 qcat.raw
if "$QEMU_IMG" convert -O raw src.raw q-zstd-65536.qcow2 qcat.raw >conv.out 2>&1 &&
    vconvert "$n" -c -O qcow2 src.raw q-zstd-65536.qcow2 vcat.qcow2; then
    check_image "$n" vcat.qcow2 qcat.raw
fi
rm -f vcat.qcow2 qcat.raw

# info reads the type back as qemu-img does.
for t in "${types[@]}"; do
    v="v-$t-65536.qcow2"
    for o in human json; do
        if [ -f "$v" ] && diff <("$QEMU_IMG" info --output=$o "$v" 2>&1) \
            <("$VDISK" info --output=$o "$v" 2>&1) >info.diff; then
            pass "info/$t-$o"
        else
            fail "info/$t-$o" "vdisk info differs from qemu-img info (qemu < > vdisk)" info.diff
        fi
    done
done

# ---- c. messages and exit codes --------------------------------------------------------

# expect NAME RC STDERR CMD...: CMD exits RC and prints exactly STDERR on stderr; for a NAME
# ending in -nocreate, no t.qcow2 may be left behind.
expect() {
    local name=$1 want_rc=$2 want=$3 rc
    shift 3
    rm -f t.qcow2
    "$@" >msg.out 2>msg.err
    rc=$?
    if [ $rc -ne "$want_rc" ]; then
        fail "$name" "exit $rc, expected $want_rc" msg.err
    elif [ "$(cat msg.err)" != "$want" ]; then
        printf 'expected: %s\n     got: %s\n' "$want" "$(cat msg.err)" >msg.diff
        fail "$name" "wrong message" msg.diff
    elif [ "$name" != "${name%-nocreate}" ] && [ -e t.qcow2 ]; then
        fail "$name" "the target was created anyway"
    else
        pass "$name"
    fi
}

# same_as_qemu NAME ARGS...: qemu-img ARGS and vdisk ARGS in twin directories give the same
# exit code, the same stdout and the same stderr (program name aside). Files named pre.*
# in the current directory are copied to both first.
same_as_qemu() {
    local name=$1 f
    shift
    rm -rf qd vd
    mkdir qd vd
    for f in pre.*; do
        [ -e "$f" ] && cp "$f" qd/ && cp "$f" vd/
    done
    (cd qd && "$QEMU_IMG" "$@" >out 2>err; echo $? >rc)
    (cd vd && "$VDISK" "$@" >out 2>err; echo $? >rc)
    sed -i 's/^qemu-img: /vdisk: /' qd/err
    if cmp -s qd/rc vd/rc && cmp -s qd/out vd/out && cmp -s qd/err vd/err; then
        pass "$name"
    else
        {
            echo "qemu-img: exit $(cat qd/rc)"
            cat qd/out qd/err
            echo "vdisk: exit $(cat vd/rc)"
            cat vd/out vd/err
        } >same.out
        fail "$name" "vdisk differs from qemu-img" same.out
    fi
    rm -rf qd vd
}

known="(known types: zlib, zstd)"
lz4="vdisk: t.qcow2: error while converting qcow2: Parameter 'compression-type' does not accept \
value 'lz4' $known"
expect msg/level-zlib-10-nocreate 1 \
    "vdisk: compression level 10 is out of range for zlib (1 to 9)" \
    "$VDISK" convert -c --compression-level=10 -O qcow2 src.raw t.qcow2
expect msg/level-zlib-0-nocreate 1 "vdisk: compression level 0 is out of range for zlib (1 to 9)" \
    "$VDISK" convert -c --compression-level=0 -O qcow2 -o compression_type=zlib src.raw t.qcow2
expect msg/level-zstd-23-nocreate 1 \
    "vdisk: compression level 23 is out of range for zstd (1 to 22)" \
    "$VDISK" convert -c --compression-level=23 -O qcow2 -o compression_type=zstd src.raw t.qcow2
expect msg/level-zstd-0-nocreate 1 "vdisk: compression level 0 is out of range for zstd (1 to 22)" \
    "$VDISK" convert -c --compression-level 0 -O qcow2 -o compression_type=zstd src.raw t.qcow2
expect msg/level-zstd-neg-nocreate 1 \
    "vdisk: compression level -5 is out of range for zstd (1 to 22)" \
    "$VDISK" convert -c --compression-level=-5 -O qcow2 -o compression_type=zstd src.raw t.qcow2
# The level is checked even without -c (where it has no effect).
expect msg/level-without-c-nocreate 1 \
    "vdisk: compression level 12 is out of range for zlib (1 to 9)" \
    "$VDISK" convert --compression-level=12 -O qcow2 src.raw t.qcow2
expect msg/level-not-a-number-nocreate 1 "vdisk: Invalid compression level 'six'" \
    "$VDISK" convert -c --compression-level=six -O qcow2 src.raw t.qcow2
expect msg/level-zstd-22-ok 0 "" \
    "$VDISK" convert -c --compression-level=22 -O qcow2 -o compression_type=zstd \
    random.bin t.qcow2
"$VDISK" create -q -f qcow2 -o compression_type=zstd e.qcow2 2M >/dev/null 2>&1
expect msg/level-existing-target 1 \
    "vdisk: compression level 30 is out of range for zstd (1 to 22)" \
    "$VDISK" convert -n -c --compression-level=30 -O qcow2 random.bin e.qcow2
rm -f e.qcow2
expect msg/convert-unknown-type-nocreate 1 "$lz4" \
    "$VDISK" convert -c -O qcow2 -o compression_type=lz4 src.raw t.qcow2
expect msg/convert-unknown-type-level-nocreate 1 "$lz4" \
    "$VDISK" convert -c --compression-level=3 -O qcow2 -o compression_type=lz4 src.raw t.qcow2
# create: qemu-img's "Formatting" line first (on stdout), then the message with the list.
for v in lz4 ZSTD ''; do
    expect "msg/create-unknown-type-'$v'" 1 \
        "vdisk: t.qcow2: Parameter 'compression-type' does not accept value '$v' $known" \
        "$VDISK" create -f qcow2 -o "compression_type=$v" t.qcow2 1M
    rm -f t.qcow2
    "$QEMU_IMG" create -f qcow2 -o "compression_type=$v" t.qcow2 1M >msg.qemu 2>/dev/null
    if cmp -s msg.qemu msg.out; then
        pass "msg/create-unknown-type-'$v'-stdout"
    else
        cat msg.qemu msg.out >msg.diff
        fail "msg/create-unknown-type-'$v'-stdout" "stdout differs from qemu-img's" msg.diff
    fi
done

# Where qemu-img has the same case, vdisk must answer exactly as it does.
same_as_qemu msg/create-zstd create -f qcow2 -o compression_type=zstd x.qcow2 1M
same_as_qemu msg/create-zlib create -f qcow2 -o compression_type=zlib,cluster_size=4k x.qcow2 1M
same_as_qemu msg/create-v2-zstd create -f qcow2 -o compat=0.10,compression_type=zstd x.qcow2 1M
same_as_qemu msg/create-v2-zlib create -f qcow2 -o compat=0.10,compression_type=zlib x.qcow2 1M
same_as_qemu msg/create-raw-type create -f raw -o compression_type=zstd x.raw 1M
cp random.bin pre.src
same_as_qemu msg/c-to-raw convert -c -O raw pre.src t.img
same_as_qemu msg/c-to-raw-W convert -c -W -O raw pre.src t.img
for p in metadata falloc full; do
    same_as_qemu "msg/c-prealloc-$p" convert -c -O qcow2 -o preallocation=$p pre.src t.qcow2
done
same_as_qemu msg/c-prealloc-off convert -c -O qcow2 -o preallocation=off pre.src t.qcow2
same_as_qemu msg/c-v2-zstd convert -c -O qcow2 -o compat=0.10,compression_type=zstd pre.src t.q
same_as_qemu msg/c-W-accepted convert -c -W -O qcow2 pre.src t.qcow2
same_as_qemu msg/c-n-missing convert -n -c -O raw pre.src t.img
head -c 2M /dev/zero >pre.dst
same_as_qemu msg/c-n-raw convert -n -c -O raw pre.src pre.dst
rm -f pre.*

vd_finish
