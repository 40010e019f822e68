#!/bin/bash
# vdisk started through symlinks named qemu-img, qemu-io and qemu-nbd behaves as that program:
# `qemu-img ARGS` runs `vdisk ARGS`, `qemu-io ARGS` runs `vdisk io ARGS`, `qemu-nbd ARGS` runs
# `vdisk nbd ARGS`, and messages, usage and version lines carry that name, so that scripts
# written for QEMU's tools (and their output filters) carry over. Where QEMU's tool prints
# the same text, its output is the expected one; started as vdisk, nothing changes.
. "$(dirname "$0")/../lib.sh"
vd_init

mkdir links
for n in qemu-img qemu-io qemu-nbd; do
    ln -s "$VDISK" "links/$n"
done
L=$PWD/links

# run_to PREFIX CMD...: stdout to PREFIX.out, stderr to PREFIX.err, exit code to PREFIX.rc.
run_to() {
    local p=$1
    shift
    "$@" >"$p.out" 2>"$p.err"
    echo $? >"$p.rc"
}

# Both tools, the same arguments: stderr, stdout and exit code must match.
compare_img() {
    local name=$1
    shift
    run_to exp "$QEMU_IMG" "$@"
    run_to act "$L/qemu-img" "$@"
    cat exp.rc exp.out exp.err >exp.all
    cat act.rc act.out act.err >act.all
    same_files "$name" exp.all act.all
}

# ---- qemu-img -----------------------------------------------------------------------------
compare_img "qemu-img-no-arguments"
compare_img "qemu-img-unknown-command" bogus
compare_img "qemu-img-unknown-option" info --bogus x
compare_img "qemu-img-open-error" info missing.qcow2
"$QEMU_IMG" create -q -f qcow2 a.qcow2 1M
compare_img "qemu-img-create" create -f qcow2 b.qcow2 1M
compare_img "qemu-img-check" check a.qcow2
compare_img "qemu-img-shrink-warning" resize a.qcow2 512k

"$L/qemu-img" --version >ver.txt 2>&1
if head -n 1 ver.txt | grep -q '^qemu-img version '; then
    pass "qemu-img-version"
else
    fail "qemu-img-version" "first line is not 'qemu-img version ...'" ver.txt
fi
"$L/qemu-img" --help >help.txt 2>&1
if grep -q '^usage: qemu-img \[standard options\] command' help.txt &&
    ! grep -q 'usage: vdisk' help.txt; then
    pass "qemu-img-help"
else
    fail "qemu-img-help" "the usage line does not name qemu-img" help.txt
fi

# ---- qemu-io ------------------------------------------------------------------------------
# The timing line of a read or write differs from run to run.
io_filter() {
    sed -e 's/[0-9.]* [KMG]*i*B*\/sec.*/X ops\/sec)/' -e 's/; [0-9:.]* sec/; X sec/'
}
"$QEMU_IO" -c 'write -P 0x5a 0 4k' a.qcow2 2>&1 | io_filter >exp.txt
"$L/qemu-io" -c 'write -P 0x5a 0 4k' a.qcow2 2>&1 | io_filter >act.txt
same_files "qemu-io-write" exp.txt act.txt
"$QEMU_IO" -c 'read -P 0x5a 0 4k' -c 'read -P 0 4k 4k' a.qcow2 2>&1 | io_filter >exp.txt
"$L/qemu-io" -c 'read -P 0x5a 0 4k' -c 'read -P 0 4k 4k' a.qcow2 2>&1 | io_filter >act.txt
same_files "qemu-io-read" exp.txt act.txt

run_to exp "$QEMU_IO" -c 'read 0 512' missing.qcow2
run_to act "$L/qemu-io" -c 'read 0 512' missing.qcow2
cat exp.rc exp.err >exp.all
cat act.rc act.err >act.all
same_files "qemu-io-open-error" exp.all act.all

"$L/qemu-io" -x >out.txt 2>&1
if grep -q "^qemu-io: invalid option -- 'x'" out.txt; then
    pass "qemu-io-bad-option"
else
    fail "qemu-io-bad-option" "getopt's message does not name qemu-io" out.txt
fi
"$L/qemu-io" --help >help.txt 2>&1
if head -n 1 help.txt | grep -q '^Usage: qemu-io \[OPTIONS\]' &&
    grep -q "^See 'qemu-io -c help'" help.txt; then
    pass "qemu-io-help"
else
    fail "qemu-io-help" "the usage text does not name qemu-io" help.txt
fi
"$L/qemu-io" --version >ver.txt 2>&1
if head -n 1 ver.txt | grep -q '^qemu-io version '; then
    pass "qemu-io-version"
else
    fail "qemu-io-version" "first line is not 'qemu-io version ...'" ver.txt
fi

# ---- qemu-nbd -----------------------------------------------------------------------------
"$L/qemu-nbd" >out.txt 2>&1
if grep -q '^qemu-nbd: ' out.txt && ! grep -q 'vdisk' out.txt; then
    pass "qemu-nbd-error"
else
    fail "qemu-nbd-error" "the error does not name qemu-nbd" out.txt
fi
# The server itself: export the image and read it back through QEMU's qemu-io.
"$L/qemu-nbd" -k "$PWD/nbd.sock" -f qcow2 -r a.qcow2 >nbd.log 2>&1 &
nbd_pid=$!
for _ in $(seq 100); do
    [ -S nbd.sock ] && break
    sleep 0.05
done
"$QEMU_IO" -r -f raw -c 'read -P 0x5a 0 4k' "nbd+unix:///?socket=$PWD/nbd.sock" >out.txt 2>&1
if grep -q '^read 4096/4096 bytes at offset 0' out.txt; then
    pass "qemu-nbd-serves"
else
    cat nbd.log >>out.txt
    fail "qemu-nbd-serves" "qemu-io could not read the export" out.txt
fi
kill "$nbd_pid" 2>/dev/null
wait "$nbd_pid" 2>/dev/null

# ---- vdisk keeps its own name -------------------------------------------------------------
run_to act "$VDISK" info missing.qcow2
if grep -q "^vdisk: Could not open 'missing.qcow2'" act.err; then
    pass "vdisk-name-kept"
else
    fail "vdisk-name-kept" "vdisk's error does not start with 'vdisk: '" act.err
fi
"$VDISK" io -x >out.txt 2>&1
"$VDISK" --version >>out.txt 2>&1
if grep -q "^vdisk: invalid option -- 'x'" out.txt && grep -q '^vdisk version ' out.txt; then
    pass "vdisk-io-name-kept"
else
    fail "vdisk-io-name-kept" "vdisk io's messages changed" out.txt
fi
# qemu-nbd's own errors carry its name too.
"$L/qemu-nbd" -o x foo >v.err 2>&1
vrc=$?
qemu-nbd -o x foo >q.err 2>&1
qrc=$?
if [ "$vrc" = "$qrc" ] && cmp -s v.err q.err; then
    pass "qemu-nbd-error-name"
else
    { echo "exit $vrc vs $qrc"; diff v.err q.err; } >d.out
    fail "qemu-nbd-error-name" "differs from qemu-nbd's" d.out
fi

# A link with any other name is vdisk.
ln -s "$VDISK" links/qemu-img-old
"$L/qemu-img-old" bogus >out.txt 2>&1
if grep -q "^vdisk: Command not found: bogus" out.txt; then
    pass "other-link-name"
else
    fail "other-link-name" "a link named qemu-img-old must behave as vdisk" out.txt
fi

vd_finish
