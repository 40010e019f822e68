#!/usr/bin/env bash
# create's options of the file protocol (extent_size_hint, nocow) and qemu-img's -o help
# lists: every format takes them, bad values are refused in qemu-img's words, and the help
# with and without a file name lists what qemu-img lists. Also create's words for formats
# QEMU cannot create and its Formatting line for values with commas.
. "$(dirname "$0")/../lib.sh"
vd_init

# same NAME ARGS...: `create ARGS` by vdisk and by qemu-img: same output (the program name
# aside), same exit code, and the same file made or not.
same() {
    local name=$1
    shift
    rm -f img.*
    "$VDISK" create "$@" >v.out 2>&1
    local vrc=$?
    local vfiles
    vfiles=$(ls img.* 2>/dev/null)
    rm -f img.*
    "$QEMU_IMG" create "$@" >q.out 2>&1
    local qrc=$?
    local qfiles
    qfiles=$(ls img.* 2>/dev/null)
    sed -i 's/^[a-z-]*: //' v.out q.out
    if [ "$vrc" = "$qrc" ] && cmp -s v.out q.out && [ "$vfiles" = "$qfiles" ]; then
        pass "$name"
    else
        { echo "exit $vrc vs $qrc; files '$vfiles' vs '$qfiles'"; diff v.out q.out; } >d.out
        fail "$name" "vdisk and qemu-img differ" d.out
    fi
}

for f in qcow2 raw; do
    same "$f/help" -f $f -o help
    same "$f/help-with-file" -f $f -o help img.$f
    same "$f/hint-off" -f $f -o extent_size_hint=0 img.$f 1M
    same "$f/hint-2M" -f $f -o extent_size_hint=2M img.$f 1M
    same "$f/hint-too-large" -f $f -o extent_size_hint=8G img.$f 1M
    same "$f/hint-not-a-size" -f $f -o extent_size_hint=x img.$f 1M
    same "$f/nocow" -f $f -o nocow=on img.$f 1M
    same "$f/nocow-bad" -f $f -o nocow=maybe img.$f 1M
done
# Formats QEMU only reads are named as such; a comma in a value is shown doubled, as typed
# in -o.
same read-only-format -f bochs img.bochs 1M
same read-only-format-help -f bochs -o help
same read-only-format-cloop -f cloop img.cloop 1M
same comma-in-backing-name -f qcow2 -b 'a,b' -F raw -u img.qcow2 1M

# amend's help lists its own options (the LUKS key-slot ones) as qemu-img's does.
"$VDISK" amend -f qcow2 -o help x >v.out 2>&1
"$QEMU_IMG" amend -f qcow2 -o help x >q.out 2>&1
cmp -s v.out q.out && pass amend-help || { diff v.out q.out >d.out; fail amend-help "differs" d.out; }

# The images made with them are ordinary images.
"$VDISK" create -q -f qcow2 -o extent_size_hint=1M,nocow=on img.qcow2 1M
qemu_check_clean img.qcow2 chk.out && pass qcow2/made-clean ||
    fail qcow2/made-clean "qemu-img check is not clean" chk.out

vd_finish
