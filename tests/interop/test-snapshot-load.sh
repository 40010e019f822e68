#!/usr/bin/env bash
# `vdisk convert -l SNAPSHOT_PARAM` converts an internal snapshot's contents as
# `qemu-img convert -l` does: the same output bytes, the same messages and exit status for
# every lookup (bare ID_OR_NAME: id first, then name; snapshot.id=/snapshot.name=: both must
# match), for bad parameters and for snapshots whose L1 table is bad; the source image is
# left byte-identical.
. "$(dirname "$0")/../lib.sh"
vd_init
D=$VD_TESTDIR

# The snapshots s1, "1" and s3 of a.qcow2 (tests/lib.sh).
make_snapshot_chain
"$QEMU_IMG" create -q -f qcow2 b.qcow2 1M
# A snapshot of an overlay: what it does not hold comes from the backing file.
"$QEMU_IMG" create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2
"$QEMU_IO" -c 'write -P 0x55 1M 4k' top.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c t1 top.qcow2
"$QEMU_IO" -c 'write -P 0x66 0 1M' top.qcow2 >/dev/null

# Snapshot table entry 0 of an image: its L1 offset (8 bytes) and L1 size (4 bytes).
snap_entry() { od -An -j 64 -N 8 -t u8 --endian=big "$1" | tr -d ' '; }
poke_be() { # FILE OFFSET BYTES VALUE
    "$PYTHON" -c 'import sys
f, off, n, v = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0)
with open(f, "r+b") as h:
    h.seek(off); h.write(v.to_bytes(n, "big"))' "$@"
}
mk_bad() { # NAME FIELD-OFFSET BYTES VALUE: a copy of a.qcow2 with snapshot 1's field changed
    cp a.qcow2 "$1"
    poke_be "$1" $(($(snap_entry a.qcow2) + $2)) "$3" "$4"
}
mk_bad bad-align.qcow2 0 8 0x10200            # L1 offset not cluster aligned
mk_bad bad-huge.qcow2 8 4 0x800000            # 64 MiB of L1: too large
mk_bad bad-eof.qcow2 0 8 0x40000000           # beyond the end of the file: reads as zeros
mk_bad bad-wrap.qcow2 0 8 0x7fffffffffff0000  # near INT64_MAX: a read QEMU refuses
mk_bad bad-far.qcow2 0 8 0x7fffffffc0000000   # past the largest request QEMU makes
mk_bad bad-near.qcow2 0 8 0x7fffffffbfff0000  # just below it: reads as zeros
mk_bad bad-l2.qcow2 0 8 0                     # L1 at offset 0: the header as L1 entries

# compare_convert NAME ARGS...: both tools convert with ARGS plus an output name; same exit
# status, same messages (program name aside), same output (bytes for raw, contents and map
# for qcow2), and vdisk left every image as it was.
compare_convert() {
    local name=$1 out_fmt=raw
    shift
    case " $* " in *" -O qcow2 "*) out_fmt=qcow2 ;; esac
    rm -f q.out v.out
    md5sum ./*.qcow2 >before.md5
    "$QEMU_IMG" convert "$@" q.out >q.err 2>&1
    local qrc=$?
    "$VDISK" convert "$@" v.out >v.err 2>&1
    local vrc=$?
    sed -i 's/^qemu-img: //' q.err
    sed -i 's/^vdisk: //; s/^qemu-img: //' v.err
    : >why.txt
    [ "$qrc" = "$vrc" ] || echo "exit: qemu-img $qrc, vdisk $vrc" >>why.txt
    diff q.err v.err >>why.txt || true
    if [ -e q.out ] || [ -e v.out ]; then
        if [ "$out_fmt" = raw ]; then
            cmp q.out v.out >>why.txt 2>&1 || true
        else
            # Contents only: how convert lays out a cluster that is partly zeros differs
            # from qemu-img with or without -l, which is not what this test is about.
            "$QEMU_IMG" compare -q q.out v.out >>why.txt 2>&1 || echo "contents differ" >>why.txt
        fi
    fi
    md5sum -c --quiet before.md5 >>why.txt 2>&1 || echo "an image changed" >>why.txt
    if [ -s why.txt ]; then
        fail "$name" "differs from qemu-img (< qemu-img, > vdisk)" why.txt
    else
        pass "$name ($(head -n 1 v.err | head -c 60))"
    fi
}

for l in s1 1 2 3 s3 snapshot.id=1 snapshot.name=s1 snapshot.id=1,snapshot.name=s1 \
    snapshot.id=1,snapshot.name=1 snapshot.id=2,snapshot.name=1 snapshot.name=1 \
    snapshot.id=9 nope snapshot.foo=1 snapshot.id= snapshot.id=1, snapshot. '' snapshot.id \
    snapshot.id=1,,2 snapshot.noid snapshot.id=1,noname snapshot.id=1,id=2 \
    snapshot.id=1,id=abc snapshot.id=1,=5 snapshot.id=1=2 snapshot.name=x,snapshot.name=s3; do
    compare_convert "convert -l '$l'" -O raw -l "$l" a.qcow2
done
compare_convert "convert -l to qcow2" -O qcow2 -l 1 a.qcow2
compare_convert "convert -l to qcow2, -S 0" -O qcow2 -S 0 -l s1 a.qcow2
compare_convert "convert -l of an overlay" -O raw -l t1 top.qcow2
compare_convert "convert -l, two sources" -l s1 a.qcow2 b.qcow2
compare_convert "convert -l snapshot.id=, two sources" -l snapshot.id=1 a.qcow2 b.qcow2
compare_convert "convert -l, missing in the image" -l s1 b.qcow2
compare_convert "convert -l, format without snapshots" -f raw -l s1 a.qcow2
compare_convert "convert -l, missing source first" -l s1 nonexist.qcow2 a.qcow2
compare_convert "convert -l twice, bare last" -l snapshot.id=2 -l s1 a.qcow2
compare_convert "convert -l twice, option last" -l s1 -l snapshot.id=3 a.qcow2
compare_convert "convert -l twice, bare" -l s1 -l 3 a.qcow2
for f in bad-align bad-huge bad-eof bad-wrap bad-far bad-near bad-l2; do
    for l in 1 s1 snapshot.id=1 snapshot.name=s1; do
        compare_convert "convert -l '$l' of $f" -O raw -l "$l" "$f.qcow2"
    done
done
vd_finish
