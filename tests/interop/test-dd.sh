#!/usr/bin/env bash
# vdisk dd against qemu-img dd: for each command line, both tools run on twin inputs in twin
# directories, and their stdout, stderr (program name aside), exit code and output image
# (present or not, and its bytes) must be the same. Covers bs/count/skip arithmetic and
# suffixes, skipping past the end, bad and unknown operands, missing files and formats.
. "$(dirname "$0")/../lib.sh"
vd_init

mkdir q v
# An input whose length is not a multiple of 512 (the disk is rounded up) with a zero run in
# the middle, as raw and as qcow2.
{
    head -c 300000 /dev/urandom
    head -c 200000 /dev/zero
    head -c 500000 /dev/urandom
} >q/in.raw
"$QEMU_IMG" convert -f raw -O qcow2 q/in.raw q/in.qcow2 >/dev/null 2>&1
cp q/in.raw q/in.qcow2 v/

# same_image Q V: the files hold the same bytes once the shorter is padded with zeros. A qcow2
# file qemu writes ends at a whole cluster, where vdisk's library ends it after the last data
# written (vdisk io's writes do the same); the bytes before that must all match.
same_image() {
    cmp -s "$1" "$2" && return 0
    "$PYTHON" -c '
import sys
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
n = max(len(a), len(b))
sys.exit(0 if a.ljust(n, b"\0") == b.ljust(n, b"\0") else 1)' "$1" "$2"
}

# run_dd NAME ARGS...: one command line through both tools, then compares everything.
run_dd() {
    local name=$1 f why=
    shift
    rm -rf q/out* v/out* q/sub v/sub
    if [ -n "${PRECREATE:-}" ]; then
        head -c 3000000 /dev/urandom >q/out
        cp q/out v/out
    fi
    (cd q && "$QEMU_IMG" dd "$@" >../q.stdout 2>../q.stderr)
    local qrc=$?
    (cd v && "$VDISK" dd "$@" >../v.stdout 2>../v.stderr)
    local vrc=$?
    sed -i "s/^qemu-img: /PROG: /; s/^Try 'qemu-img --help'/Try 'PROG --help'/" q.stderr
    sed -i "s/^vdisk: /PROG: /; s/^Try 'vdisk --help'/Try 'PROG --help'/" v.stderr
    if [ "$qrc" != "$vrc" ]; then
        why="exit code $vrc, qemu-img $qrc"
    elif ! cmp -s q.stdout v.stdout; then
        diff q.stdout v.stdout >d.out
        why="stdout differs"
    elif ! cmp -s q.stderr v.stderr; then
        diff q.stderr v.stderr >d.out
        why="stderr differs"
    fi
    if [ -z "$why" ]; then
        for f in out out2; do
            if [ -e "q/$f" ] && [ ! -e "v/$f" ]; then
                why="vdisk did not create $f"
            elif [ ! -e "q/$f" ] && [ -e "v/$f" ]; then
                why="vdisk created $f, qemu-img did not"
            elif [ -e "q/$f" ] && ! same_image "q/$f" "v/$f"; then
                why="$f differs: $(stat -c %s "v/$f") bytes, qemu-img's $(stat -c %s "q/$f")"
                cmp "q/$f" "v/$f" >d.out 2>&1
            fi
            [ -n "$why" ] && break
        done
    fi
    if [ -z "$why" ]; then
        pass "$name"
    else
        fail "$name" "$why ('dd $*')" d.out
    fi
    rm -f d.out
}

# Sizes and copies.
run_dd plain if=in.raw of=out
run_dd raw-explicit -f raw if=in.raw of=out
run_dd bs-1k bs=1k if=in.raw of=out
run_dd bs-1K bs=1K if=in.raw of=out
run_dd bs-1M bs=1M if=in.raw of=out
run_dd bs-1000 bs=1000 if=in.raw of=out
run_dd bs-513 bs=513 if=in.raw of=out
run_dd bs-fraction bs=1.5k if=in.raw of=out
run_dd bs-b-suffix bs=1b if=in.raw of=out
run_dd bs-hex bs=0x200 if=in.raw of=out
run_dd bs-int-max bs=2147483647 if=in.raw of=out
run_dd count-3 count=3 if=in.raw of=out
run_dd count-3-bs-1k count=3 bs=1k if=in.raw of=out
run_dd count-3-bs-1000 count=3 bs=1000 if=in.raw of=out
run_dd count-past-end count=100000 if=in.raw of=out
run_dd count-0 count=0 if=in.raw of=out
run_dd count-7E count=7E if=in.raw of=out
run_dd skip-10 skip=10 if=in.raw of=out
run_dd skip-last-block skip=1953 if=in.raw of=out
run_dd skip-to-end skip=1954 if=in.raw of=out
run_dd skip-past-end skip=1955 if=in.raw of=out
run_dd skip-far skip=100000 if=in.raw of=out
run_dd skip-overflow skip=7E if=in.raw of=out
run_dd skip-bs-1000 bs=1000 skip=7 if=in.raw of=out
run_dd count-skip count=3 skip=1 if=in.raw of=out
run_dd count-skip-equal count=3 skip=3 if=in.raw of=out
run_dd count-skip-past count=3 skip=4 if=in.raw of=out
run_dd count-skip-bs bs=1000 skip=1 count=2 if=in.raw of=out
run_dd last-operand-wins bs=1k bs=2k count=5 if=in.raw if=in.qcow2 of=out2 of=out
run_dd options-after-operands if=in.raw of=out -O qcow2
run_dd force-share -U if=in.raw of=out
run_dd force-share-long --force-share if=in.raw of=out

# qcow2 on either side.
run_dd qcow2-in-probed if=in.qcow2 of=out
run_dd qcow2-in -f qcow2 bs=64k skip=2 count=9 if=in.qcow2 of=out
run_dd qcow2-in-as-raw -f raw count=2 if=in.qcow2 of=out
run_dd qcow2-out -O qcow2 if=in.raw of=out
run_dd qcow2-out-odd -O qcow2 count=3 bs=1000 if=in.raw of=out
run_dd qcow2-out-empty -O qcow2 skip=100000 if=in.raw of=out
run_dd qcow2-both -f qcow2 -O qcow2 bs=4k skip=3 if=in.qcow2 of=out
PRECREATE=1 run_dd overwrite-raw count=4 if=in.raw of=out
PRECREATE=1 run_dd overwrite-qcow2 -O qcow2 count=4 if=in.raw of=out

# Bad operands.
run_dd bs-0 bs=0 if=in.raw of=out
run_dd bs-negative bs=-1 if=in.raw of=out
run_dd bs-word bs=abc if=in.raw of=out
run_dd bs-kB bs=1kB if=in.raw of=out
run_dd bs-empty bs= if=in.raw of=out
run_dd bs-3G bs=3G if=in.raw of=out
run_dd bs-huge bs=99999999999999999999 if=in.raw of=out
run_dd count-negative count=-1 if=in.raw of=out
run_dd count-8E count=8E if=in.raw of=out
run_dd count-huge count=99999999999999999999 if=in.raw of=out
run_dd count-word count=x if=in.raw of=out
run_dd skip-negative skip=-1 if=in.raw of=out
run_dd skip-8E skip=8E if=in.raw of=out
run_dd unknown-operand foo=1 if=in.raw of=out
run_dd operand-without-value foo if=in.raw of=out
run_dd operand-empty-key =3 if=in.raw of=out
run_dd bs-without-value bs if=in.raw of=out
run_dd first-bad-operand-bs bs=0 foo=1 if=in.raw of=out
run_dd first-bad-operand-foo foo=1 bs=0 if=in.raw of=out
run_dd extra-argument if=in.raw of=out extra
run_dd no-operands
run_dd no-output if=in.raw
run_dd no-input of=out
run_dd no-output-bad-bs bs=0 if=in.raw

# Files and formats.
run_dd input-missing if=nonexist of=out
run_dd input-empty-name if= of=out
run_dd output-empty-name if=in.raw of=
run_dd output-no-dir if=in.raw of=sub/x
run_dd output-format-unknown -O foo if=in.raw of=out
run_dd output-format-unknown-input-missing -O foo if=nonexist of=out
run_dd input-format-wrong -f qcow2 if=in.raw of=out
run_dd input-format-unknown -f foo if=in.raw of=out

# Command-line options.
run_dd option-unknown -x if=in.raw of=out
run_dd option-unknown-long --foo if=in.raw of=out
run_dd option-missing-argument -O
run_dd option-missing-argument-f if=in.raw of=out -f

# A failing read ends the copy with qemu-img's message; the output stays as far as it got.
# Each tool gets its own fault injection: QEMU's blkdebug, vdisk's blkdebug: prefix.
rm -rf q/out* v/out*
qbd='json:{"driver":"raw","file":{"driver":"blkdebug","inject-error":[{"event":"read_aio",'
qbd+='"iotype":"read","errno":"5","once":true}],"image":{"driver":"file","filename":"in.raw"}}}'
(cd q && "$QEMU_IMG" dd bs=64k if="$qbd" of=out >../q.stderr 2>&1)
qrc=$?
(cd v && "$VDISK" dd -f raw bs=64k if='blkdebug:read#1=EIO:in.raw' of=out >../v.stderr 2>&1)
vrc=$?
sed -i 's/^qemu-img: /PROG: /' q.stderr
sed -i 's/^vdisk: /PROG: /' v.stderr
if [ "$qrc" = 1 ] && [ "$vrc" = 1 ] && diff q.stderr v.stderr >d.out && cmp -s q/out v/out; then
    pass read-error
else
    echo "exit codes: vdisk $vrc, qemu-img $qrc" >>d.out
    fail read-error "message, exit code or output differs" d.out
fi

# The usage line, as qemu-img prints it (vdisk leaves out --image-opts, as on every verb).
want=$("$QEMU_IMG" --help | grep '^  dd ' | sed 's/ \[--image-opts\]//')
got=$("$VDISK" --help | grep '^  dd ')
[ -n "$want" ] && [ "$want" = "$got" ] && pass help-line ||
    fail help-line "vdisk: '$got', qemu-img: '$want'"
want=$("$QEMU_IMG" --help | sed -n '/^Parameters to dd subcommand:/,/^$/p')
got=$("$VDISK" --help | sed -n '/^Parameters to dd subcommand:/,/^$/p')
[ -n "$want" ] && [ "$want" = "$got" ] && pass help-parameters ||
    fail help-parameters "the 'Parameters to dd subcommand' section differs"

vd_finish
