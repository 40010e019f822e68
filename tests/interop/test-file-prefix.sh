#!/usr/bin/env bash
# "file:PATH" names the file protocol explicitly, as in QEMU: every verb takes it, output
# shows PATH as qemu-img shows it, and PATH is taken literally (a file whose name looks like
# a vdisk prefix opens as a plain file).
. "$(dirname "$0")/../lib.sh"
vd_init

# same NAME CMD...: CMD through vdisk and qemu-img (the word TOOL stands for the tool)
# prints the same and exits the same.
same() {
    local name=$1
    shift
    local -a v=() q=()
    local a
    for a in "$@"; do
        if [ "$a" = TOOL ]; then v+=("$VDISK"); q+=("$QEMU_IMG"); else v+=("$a"); q+=("$a"); fi
    done
    "${v[@]}" >v.out 2>&1
    local vrc=$?
    "${q[@]}" >q.out 2>&1
    local qrc=$?
    sed -i 's/^[a-z-]*: //' v.out q.out
    if [ "$vrc" = "$qrc" ] && cmp -s v.out q.out; then
        pass "$name"
    else
        { echo "exit $vrc vs $qrc"; diff v.out q.out; } >d.out
        fail "$name" "vdisk and qemu-img differ" d.out
    fi
}

"$VDISK" create -q -f qcow2 file:a.qcow2 4M >out.txt 2>&1 && [ -f a.qcow2 ] &&
    pass create || fail create "file:a.qcow2 did not create a.qcow2" out.txt
"$QEMU_IO" -c 'write -P 0x41 0 1M' a.qcow2 >/dev/null
same info TOOL info file:a.qcow2
same info-json TOOL info --output=json file:a.qcow2
same check TOOL check file:a.qcow2
same map TOOL map --output=json file:a.qcow2
same compare TOOL compare file:a.qcow2 a.qcow2
"$VDISK" convert -O raw file:a.qcow2 file:b.raw >out.txt 2>&1 &&
    "$QEMU_IMG" compare -q a.qcow2 b.raw >>out.txt 2>&1 && pass convert ||
    fail convert "convert between file: names failed" out.txt
"$VDISK" io -c 'read -P 0x41 0 1M' file:a.qcow2 >out.txt 2>&1 && pass io ||
    fail io "vdisk io on a file: name failed" out.txt
"$VDISK" snapshot -c s1 file:a.qcow2 >out.txt 2>&1 && "$QEMU_IMG" snapshot -l a.qcow2 | grep -q s1 &&
    pass snapshot || fail snapshot "no snapshot made through a file: name" out.txt

# A relative name with a colon is shown as ./NAME, and its backing file resolves from there.
"$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 -u 'file:img:top.qcow2' 4M
[ -f 'img:top.qcow2' ] || fail colon-name/setup "qemu-img made no img:top.qcow2"
same info-colon-name TOOL info file:img:top.qcow2
same info-colon-chain TOOL info --backing-chain file:img:top.qcow2

# Taken literally: a file named like a blkdebug rule.
cp a.qcow2 'blkdebug:x'
"$VDISK" io -c 'read -P 0x41 0 1M' 'file:blkdebug:x' >out.txt 2>&1 && pass literal-path ||
    fail literal-path "file:blkdebug:x is not read as a plain file" out.txt

vd_finish
