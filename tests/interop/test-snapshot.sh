#!/bin/bash
# Internal snapshots between vdisk and QEMU, both ways. Random writes go in between the
# snapshots, a raw copy of the guest content is taken at each snapshot moment, and every
# snapshot is read back (qemu-img convert -l) and applied by both tools and compared with
# that copy; listing (snapshot -l, info human and json) must be byte-identical between the
# tools; deletes by both; `qemu-img check` must be clean (no errors, no leaks) after every
# step. Then the VM state: a blob saved with a snapshot through the library must show as
# qemu-img's vm-state-size, sit where QEMU keeps VM state, and read back through qemu-io, and
# QEMU's VM state must read back through the library. Last, vdisk snapshot's messages and
# exit codes against qemu-img snapshot's on error cases and a crafted snapshot table.
# SNAP_SEED=N reproduces a run.
. "$(dirname "$0")/../lib.sh"
vd_init

SEED=$(vd_seed SNAP_SEED)
echo "seed: $SEED (SNAP_SEED=$SEED reproduces this run)"
# The DATE column is local time: a zone off UTC by a half hour shows a wrong conversion.
export TZ=Asia/Kolkata
SIZE=$((32 << 20))
OPS_PER_STEP=40
DIFF_OPS="$VD_TESTS/interop/diff-ops.py"

# ---- helpers ----------------------------------------------------------------------------

# ops FILE SEED CLUSTER: a random operation list (writes, zero writes, discards, flushes).
ops() {
    "$PYTHON" "$DIFF_OPS" gen --seed "$2" --count "$OPS_PER_STEP" --size "$SIZE" \
        --cluster "$3" --max-len $((3 * $3)) >"$1"
}

# write_random TOOL IMG SEED CLUSTER: applies a fresh random list through vdisk io or qemu-io.
write_random() {
    local f=$VD_TESTDIR/ops.$3
    ops "$f" "$3" "$4"
    if ! apply_ops "$1" "$2" "$f" >"$f.out" 2>&1; then
        fail "writes-$1-$3" "random writes through $1 failed on $2" "$f.out"
        return 1
    fi
}

# clean STEP IMG: qemu-img check reports neither errors nor leaks.
clean() {
    local out=$VD_TESTDIR/check.out
    if qemu_check_clean "$2" "$out"; then
        pass "check-$1"
    else
        fail "check-$1" "qemu-img check of $2 is not clean" "$out"
    fi
}

# same STEP IMG RAW: the image's guest content equals the raw copy.
same() {
    local out=$VD_TESTDIR/compare.out
    if "$QEMU_IMG" compare -f qcow2 -F raw "$2" "$3" >"$out" 2>&1; then
        pass "content-$1"
    else
        fail "content-$1" "$2 differs from $3" "$out"
    fi
}

# snap_same STEP IMG SNAP RAW: the snapshot's content (read by qemu-img without applying it)
# equals the raw copy taken when it was made.
snap_same() {
    local out=$VD_TESTDIR/snapread.raw
    rm -f "$out"
    if ! "$QEMU_IMG" convert -f qcow2 -l "snapshot.name=$3" -O raw "$2" "$out" \
        >"$out.log" 2>&1; then
        fail "snapread-$1" "qemu-img convert -l snapshot.name=$3 failed" "$out.log"
    elif ! cmp -s "$out" "$4"; then
        fail "snapread-$1" "snapshot $3 of $2 differs from $4"
    else
        pass "snapread-$1"
    fi
}

# run_both ARGS...: runs qemu-img ARGS and vdisk ARGS; outputs in $q, $q.err, $v, $v.err
# ("qemu-img" replaced by "vdisk" in qemu-img's), exit codes in $qrc and $vrc.
run_both() {
    q=$VD_TESTDIR/q.out v=$VD_TESTDIR/v.out
    "$QEMU_IMG" "$@" >"$q" 2>"$q.err"
    qrc=$?
    "$VDISK" "$@" >"$v" 2>"$v.err"
    vrc=$?
    sed -i 's/qemu-img/vdisk/g' "$q" "$q.err"
}

# same_exit_and_stdout STEP: after run_both, fails STEP (and returns 1) unless the exit codes
# and the standard outputs agree.
same_exit_and_stdout() {
    if [ "$qrc" != "$vrc" ]; then
        cat "$q.err" "$v.err" >"$v.diff"
        fail "$1" "exit code: qemu-img $qrc, vdisk $vrc" "$v.diff"
    elif ! cmp -s "$q" "$v"; then
        diff -u "$q" "$v" >"$v.diff"
        fail "$1" "stdout differs" "$v.diff"
    else
        return 0
    fi
    return 1
}

# same_output STEP ARGS...: qemu-img ARGS and vdisk ARGS print the same (stdout, stderr with
# "vdisk" for "qemu-img", exit code). Only for commands that do not change the image.
same_output() {
    local name=$1 q v qrc vrc
    shift
    run_both "$@"
    same_exit_and_stdout "$name" || return 0
    if ! cmp -s "$q.err" "$v.err"; then
        diff -u "$q.err" "$v.err" >"$v.diff"
        fail "$name" "stderr differs" "$v.diff"
    else
        pass "$name"
    fi
}

# same_status STEP REGEX ARGS...: same exit code and stdout as qemu-img; vdisk's stderr
# matches REGEX (where vdisk says more than qemu-img; README "Where output differs").
same_status() {
    local name=$1 re=$2 q v qrc vrc
    shift 2
    run_both "$@"
    same_exit_and_stdout "$name" || return 0
    if ! grep -Eq "$re" "$v.err"; then
        fail "$name" "vdisk's message does not match '$re'" "$v.err"
    else
        pass "$name"
    fi
}

# listings STEP IMG: snapshot -l, info and info --output=json agree between the tools.
listings() {
    same_output "list-$1" snapshot -l "$2"
    same_output "info-$1" info "$2"
    same_output "info-json-$1" info --output=json "$2"
}

# nsnaps IMG: how many snapshots qemu-img lists.
nsnaps() {
    "$QEMU_IMG" snapshot -l "$1" | awk 'NR > 2' | wc -l
}

raw_copy() {
    rm -f "$2"
    "$QEMU_IMG" convert -f qcow2 -O raw "$1" "$2"
}

# ---- 1. vdisk takes the snapshots; qemu-img reads, applies and deletes them too ----------
img=v.qcow2
"$VDISK" create -q -f qcow2 "$img" "$SIZE"
s=$((SEED * 16))
for k in 1 2 3 4; do
    write_random vdisk "$img" $((s + k)) 65536
    raw_copy "$img" "v.s$k.raw"
    check_ok "vdisk-create-s$k" "$VDISK" snapshot -c "s$k" "$img"
    clean "vdisk-create-s$k" "$img"
done
write_random vdisk "$img" $((s + 5)) 65536
raw_copy "$img" v.cur.raw
listings vdisk-made "$img"
for k in 1 2 3 4; do
    snap_same "vdisk-s$k" "$img" "s$k" "v.s$k.raw"
done
same vdisk-active "$img" v.cur.raw
n=6
for k in 3 1 4 2; do
    check_ok "qemu-apply-vdisk-s$k" "$QEMU_IMG" snapshot -a "s$k" "$img"
    same "qemu-apply-vdisk-s$k" "$img" "v.s$k.raw"
    clean "qemu-apply-vdisk-s$k" "$img"
    write_random qemu-io "$img" $((s + n)) 65536
    n=$((n + 1))
    clean "qemu-io-after-apply-s$k" "$img"
    check_ok "vdisk-apply-s$k" "$VDISK" snapshot -a "s$k" "$img"
    same "vdisk-apply-s$k" "$img" "v.s$k.raw"
    clean "vdisk-apply-s$k" "$img"
    write_random vdisk "$img" $((s + n)) 65536
    n=$((n + 1))
    clean "vdisk-io-after-apply-s$k" "$img"
done
raw_copy "$img" v.cur.raw
check_ok "qemu-delete-vdisk-s2" "$QEMU_IMG" snapshot -d s2 "$img"
clean "qemu-delete-vdisk-s2" "$img"
check_ok "vdisk-delete-s4" "$VDISK" snapshot -d s4 "$img"
clean "vdisk-delete-s4" "$img"
listings vdisk-after-deletes "$img"
snap_same "vdisk-s1-after-deletes" "$img" s1 v.s1.raw
snap_same "vdisk-s3-after-deletes" "$img" s3 v.s3.raw
same "vdisk-active-after-deletes" "$img" v.cur.raw
check_ok "vdisk-delete-s1" "$VDISK" snapshot -d s1 "$img"
check_ok "qemu-delete-vdisk-s3" "$QEMU_IMG" snapshot -d s3 "$img"
clean "all-deleted-vdisk-made" "$img"
same "vdisk-active-all-deleted" "$img" v.cur.raw
if [ "$(nsnaps "$img")" = 0 ] && [ -z "$("$VDISK" snapshot -l "$img")" ]; then
    pass "vdisk-made-none-left"
else
    fail "vdisk-made-none-left" "snapshots remain after deleting all four"
fi

# ---- 2. QEMU takes the snapshots (16 KiB clusters); vdisk reads, applies and deletes ------
img=q.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=16k "$img" "$SIZE"
s=$((SEED * 16 + 100))
for k in 1 2 3 4; do
    write_random qemu-io "$img" $((s + k)) 16384
    raw_copy "$img" "q.t$k.raw"
    "$QEMU_IMG" snapshot -c "t$k" "$img"
done
write_random qemu-io "$img" $((s + 5)) 16384
listings qemu-made "$img"
n=6
for k in 2 4 1 3; do
    check_ok "vdisk-apply-qemu-t$k" "$VDISK" snapshot -a "t$k" "$img"
    same "vdisk-apply-qemu-t$k" "$img" "q.t$k.raw"
    clean "vdisk-apply-qemu-t$k" "$img"
    write_random vdisk "$img" $((s + n)) 16384
    n=$((n + 1))
    clean "vdisk-io-after-apply-t$k" "$img"
    check_ok "qemu-apply-t$k" "$QEMU_IMG" snapshot -a "t$k" "$img"
    same "qemu-apply-t$k" "$img" "q.t$k.raw"
    write_random qemu-io "$img" $((s + n)) 16384
    n=$((n + 1))
done
# vdisk adds a snapshot to QEMU's table; QEMU reads and applies it.
raw_copy "$img" q.t5.raw
check_ok "vdisk-create-on-qemu-table" "$VDISK" snapshot -c t5 "$img"
clean "vdisk-create-on-qemu-table" "$img"
write_random vdisk "$img" $((s + n)) 16384
snap_same "vdisk-t5-on-qemu-table" "$img" t5 q.t5.raw
check_ok "qemu-apply-vdisk-t5" "$QEMU_IMG" snapshot -a t5 "$img"
same "qemu-apply-vdisk-t5" "$img" q.t5.raw
raw_copy "$img" q.cur.raw
listings mixed "$img"
for k in 1 3; do
    check_ok "vdisk-delete-qemu-t$k" "$VDISK" snapshot -d "t$k" "$img"
    clean "vdisk-delete-qemu-t$k" "$img"
done
check_ok "qemu-delete-t2" "$QEMU_IMG" snapshot -d t2 "$img"
clean "qemu-delete-t2" "$img"
listings qemu-after-deletes "$img"
snap_same "qemu-t4-after-deletes" "$img" t4 q.t4.raw
snap_same "vdisk-t5-after-deletes" "$img" t5 q.t5.raw
same "qemu-active-after-deletes" "$img" q.cur.raw
check_ok "vdisk-apply-t4-after-deletes" "$VDISK" snapshot -a t4 "$img"
same "vdisk-apply-t4-after-deletes" "$img" q.t4.raw
check_ok "vdisk-delete-t4" "$VDISK" snapshot -d t4 "$img"
check_ok "vdisk-delete-t5" "$VDISK" snapshot -d t5 "$img"
clean "all-deleted-qemu-made" "$img"
same "active-after-all-deleted" "$img" q.t4.raw

# ---- 3. VM state --------------------------------------------------------------------------
# The vdisk command has no way to pass VM state (neither has qemu-img), so a small program
# calls the library: vd_snapshot_create with a blob, vd_snapshot_apply + vd_vmstate_read.
# Built with the image tools (tests/meson.build), next to the vdisk binary under test.
helper=$(dirname "$VDISK")/tests/snapshot-vmstate
vmstate_ok=0
if [ -x "$helper" ]; then
    vmstate_ok=1
else
    fail vmstate-helper "$helper is missing (it is built with vdisk: ninja -C $(dirname "$VDISK"))"
fi

# layout IMG NAME OUT: the VM state of snapshot NAME read straight from the file, as QEMU
# lays it out: guest data at l1_vm_state_index * cluster_size * l2_entries of the snapshot's
# L1 table; prints the snapshot's vm_state_size.
layout() {
    "$PYTHON" - "$@" <<'EOF'
import struct, sys
path, name, out = sys.argv[1:4]
f = open(path, "rb")
def rd(off, n):
    f.seek(off)
    return f.read(n)
h = rd(0, 104)
cbits = struct.unpack(">I", h[20:24])[0]
size = struct.unpack(">Q", h[24:32])[0]
nb, toff = struct.unpack(">IQ", h[60:72])
incompat = struct.unpack(">Q", h[72:80])[0] if struct.unpack(">I", h[4:8])[0] >= 3 else 0
cs = 1 << cbits
esize = 16 if incompat & 16 else 8
per_l1 = cs * (cs // esize)
vm_base = (size + per_l1 - 1) // per_l1 * per_l1
pos = toff
for _ in range(nb):
    e = rd(pos, 40)
    l1off, l1n, idn, nmn, _, _, _, vms32, exn = struct.unpack(">QIHHIIQII", e)
    extra = rd(pos + 40, exn)
    sname = rd(pos + 40 + exn + idn, nmn).decode()
    vms = struct.unpack(">Q", extra[0:8])[0] if exn >= 8 else vms32
    if sname == name:
        break
    pos = (pos + 40 + exn + idn + nmn + 7) & ~7
else:
    sys.exit("no snapshot " + name)
l1 = struct.unpack(">%dQ" % l1n, rd(l1off, 8 * l1n))
mask = 0x00fffffffffffe00
data = bytearray()
while len(data) < vms:
    g = vm_base + len(data)
    i, j, o = g // per_l1, (g % per_l1) // cs, g % cs
    n = min(cs - o, vms - len(data))
    chunk = bytes(n)
    if i < l1n and l1[i] & mask:
        l2e = struct.unpack(">Q", rd((l1[i] & mask) + j * esize, 8))[0]
        if l2e & (1 << 62):
            sys.exit("VM state cluster is compressed")
        if l2e & mask and not l2e & 1:
            chunk = rd((l2e & mask) + o, n)
    data += chunk
open(out, "wb").write(data)
print(vms)
EOF
}

# qemu_vmstate IMG LEN OUT: the active image's VM state as qemu-io reads it (read -b -v).
qemu_vmstate() {
    local len=$(( ($2 + 511) / 512 * 512 ))
    "$QEMU_IO" -f qcow2 -c "read -b -v 0 $len" "$1" | "$PYTHON" -c '
import sys
out = bytearray()
for ln in sys.stdin:
    if len(ln) > 10 and ln[8] == ":":
        out += bytes.fromhex(ln[10:58].replace(" ", ""))
open(sys.argv[2], "wb").write(out[: int(sys.argv[1])])' "$2" "$3"
}

if [ "$vmstate_ok" = 1 ]; then
    # vdisk saves, QEMU reads. An odd length checks the size is kept to the byte.
    blob_len=$((200 * 1024 + 123))
    "$PYTHON" -c 'import random, sys; r = random.Random(int(sys.argv[1]))
open("blob", "wb").write(bytes(r.getrandbits(8) for _ in range(int(sys.argv[2]))))' \
        "$SEED" "$blob_len"
    "$QEMU_IMG" create -q -f qcow2 vm.qcow2 "$SIZE"
    write_random vdisk vm.qcow2 $((SEED * 16 + 200)) 65536
    raw_copy vm.qcow2 vm.raw
    check_ok vmstate-save "$helper" save vm.qcow2 vm1 blob
    clean vmstate-save vm.qcow2
    got=$(qemu_info_field vm.qcow2 snapshots | "$PYTHON" -c '
import json, sys
print(json.load(sys.stdin)[0]["vm-state-size"])' 2>/dev/null)
    if [ "$got" = "$blob_len" ]; then
        pass vmstate-size-qemu-info
    else
        fail vmstate-size-qemu-info "qemu-img info says vm-state-size $got, expected $blob_len"
    fi
    listings vmstate vm.qcow2
    if [ "$(layout vm.qcow2 vm1 layout.bin)" = "$blob_len" ] && cmp -s layout.bin blob; then
        pass vmstate-byte-layout
    else
        fail vmstate-byte-layout "the VM state is not where QEMU keeps it (or differs)"
    fi
    # The table entry itself, field by field, as qemu-img would write it for this snapshot:
    # extra data of 24 bytes (vm_state_size_large, disk_size, icount 0), the 32-bit VM
    # state size too (it fits), vm_clock 0, id "1", and an L1 table that reaches the VM
    # state's L1 index.
    if "$PYTHON" - vm.qcow2 "$blob_len" "$SIZE" >entry.out 2>&1 <<'EOF2'
import struct, sys
path, vms, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f = open(path, "rb")
h = f.read(104)
cs = 1 << struct.unpack(">I", h[20:24])[0]
nb, off = struct.unpack(">IQ", h[60:72])
f.seek(off)
l1off, l1n, idn, nmn, dsec, dnsec, clock, vms32, exn = struct.unpack(">QIHHIIQII", f.read(40))
extra = f.read(exn)
ident, name = f.read(idn), f.read(nmn)
errs = []
def want(what, got, exp):
    if got != exp:
        errs.append("%s: %r, expected %r" % (what, got, exp))
want("nb_snapshots", nb, 1)
want("snapshots_offset alignment", off % cs, 0)
want("l1_table_offset alignment", l1off % cs, 0)
want("extra_data_size", exn, 24)
want("vm_state_size (32-bit)", vms32, vms)
want("vm_clock_nsec", clock, 0)
want("date_nsec in microseconds", dnsec % 1000, 0)
want("id", ident, b"1")
want("name", name, b"vm1")
if exn >= 24:
    big, disk, icount = struct.unpack(">QQQ", extra[:24])
    want("vm_state_size_large", big, vms)
    want("disk_size", disk, size)
    want("icount", icount, 0)
per_l1 = cs * (cs // 8)
want("l1_size", l1n, (size + per_l1 - 1) // per_l1 + (vms + per_l1 - 1) // per_l1)
print("\n".join(errs))
sys.exit(1 if errs else 0)
EOF2
    then
        pass vmstate-entry-fields
    else
        fail vmstate-entry-fields "the snapshot table entry differs from QEMU's layout" entry.out
    fi
    cp vm.qcow2 vmq.qcow2
    "$QEMU_IMG" snapshot -a vm1 vmq.qcow2
    qemu_vmstate vmq.qcow2 "$blob_len" qemu-read.bin
    if cmp -s qemu-read.bin blob; then
        pass vmstate-qemu-io-reads-vdisk-blob
    else
        fail vmstate-qemu-io-reads-vdisk-blob "qemu-io read -b after applying differs"
    fi
    same vmstate-qemu-apply vmq.qcow2 vm.raw
    cp vm.qcow2 vmv.qcow2
    check_ok vmstate-load-own "$helper" load vmv.qcow2 vm1 own.bin "$blob_len"
    cmp -s own.bin blob && pass vmstate-own-roundtrip ||
        fail vmstate-own-roundtrip "vdisk reads back a different VM state"
    # Later writes and deletes leave it consistent; the VM state clusters go with the snapshot.
    write_random vdisk vm.qcow2 $((SEED * 16 + 201)) 65536
    check_ok vmstate-delete "$VDISK" snapshot -d vm1 vm.qcow2
    clean vmstate-delete vm.qcow2

    # QEMU saves (qemu-io write -b, then qemu-img snapshot -c, which records no size: the
    # size is then set in the table as savevm would have), vdisk reads.
    qlen=$((96 * 1024))
    head -c "$qlen" blob >qblob
    "$QEMU_IMG" create -q -f qcow2 vq.qcow2 "$SIZE"
    "$QEMU_IO" -f qcow2 -c "write -P 7 0 1M" -c "write -b -s qblob 0 $qlen" vq.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c q1 vq.qcow2
    "$PYTHON" - vq.qcow2 "$qlen" <<'EOF'
import struct, sys
path, vms = sys.argv[1], int(sys.argv[2])
f = open(path, "r+b")
h = f.read(72)
nb, off = struct.unpack(">IQ", h[60:72])
f.seek(off + 32)
f.write(struct.pack(">I", vms))
if struct.unpack(">I", (f.seek(off + 36), f.read(4))[1])[0] >= 8:
    f.seek(off + 40)
    f.write(struct.pack(">Q", vms))
EOF
    clean vmstate-qemu-made vq.qcow2
    listings vmstate-qemu-made vq.qcow2
    check_ok vmstate-load-qemu "$helper" load vq.qcow2 q1 fromqemu.bin "$qlen"
    cmp -s fromqemu.bin qblob && pass vmstate-vdisk-reads-qemu-blob ||
        fail vmstate-vdisk-reads-qemu-blob "vdisk reads a different VM state than qemu-io wrote"
    clean vmstate-after-load vq.qcow2
fi

# ---- 4. messages and exit codes against qemu-img ----------------------------------------
"$QEMU_IMG" create -q -f qcow2 m.qcow2 16M
"$QEMU_IMG" create -q -f raw m.raw 1M
"$QEMU_IMG" snapshot -c one m.qcow2
"$QEMU_IMG" snapshot -c two m.qcow2
same_output msg-delete-missing snapshot -d nosuch m.qcow2
same_output msg-delete-by-id snapshot -d 1 m.qcow2
same_output msg-delete-empty snapshot -d '' m.qcow2
same_output msg-apply-missing snapshot -a nosuch m.qcow2
same_output msg-apply-empty snapshot -a '' m.qcow2
same_output msg-list-raw snapshot -l m.raw
same_output msg-create-raw snapshot -c x m.raw
same_status msg-apply-raw "Could not apply snapshot 'x': Block format 'raw' does not support internal snapshots" snapshot -a x m.raw
same_status msg-delete-raw "Could not delete snapshot 'x': Block format 'raw' does not support internal snapshots" snapshot -d x m.raw
same_output msg-list-missing-file snapshot -l nosuch.qcow2
same_output msg-create-missing-file snapshot -c x nosuch.qcow2
same_output msg-no-args snapshot
same_output msg-no-file snapshot -l
same_output msg-two-files-list snapshot -l m.qcow2 m.raw
same_output msg-two-files-apply snapshot -a one m.qcow2 m.raw
same_output msg-mix snapshot -l -c x m.qcow2
same_output msg-mix-twice snapshot -c x -c y m.qcow2
same_output msg-bad-option snapshot -z m.qcow2
same_output msg-bad-long-option snapshot --foo m.qcow2
same_output msg-missing-arg snapshot -c
same_output msg-force-share-create snapshot -U -c x m.qcow2
same_output msg-force-share-list snapshot -U -q -l m.qcow2
same_output msg-no-action snapshot m.qcow2
same_output msg-object snapshot --object secret,id=s0,data=x -l m.qcow2
asnobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
chmod 755 "$VD_TESTDIR"
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ] && asnobody "$VDISK" --version >/dev/null 2>&1
then
    # A file the user may read but not write (root ignores permissions, so run as nobody).
    mkdir ro && cp m.qcow2 ro/m.qcow2 && chmod 755 ro && chmod 644 ro/m.qcow2
    for a in "-c x" "-a one" "-d one" "-l"; do
        # shellcheck disable=SC2086
        { asnobody "$QEMU_IMG" snapshot $a ro/m.qcow2 >q.ro 2>&1; echo "rc=$?" >>q.ro; }
        # shellcheck disable=SC2086
        { asnobody "$VDISK" snapshot $a ro/m.qcow2 >v.ro 2>&1; echo "rc=$?" >>v.ro; }
        sed -i 's/qemu-img/vdisk/g' q.ro
        if cmp -s q.ro v.ro; then
            pass "msg-read-only-file${a%% *}"
        else
            diff -u q.ro v.ro >ro.diff
            fail "msg-read-only-file${a%% *}" "output differs" ro.diff
        fi
    done
else
    echo "SKIP msg-read-only-file: needs root and setpriv to run as an unprivileged user"
fi

# A crafted table: vm clock past 99 hours and at its maximum, icount absent (-1) and large,
# VM state sizes (32-bit and 64-bit fields), a name longer than the TAG column, the epoch.
"$QEMU_IMG" create -q -f qcow2 craft.qcow2 16M
"$QEMU_IMG" snapshot -c one craft.qcow2
"$QEMU_IMG" snapshot -c "a-name-longer-than-sixteen-characters" craft.qcow2
"$QEMU_IMG" snapshot -c three craft.qcow2
"$PYTHON" - craft.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
nb, off = struct.unpack(">IQ", f.read(72)[60:72])
edits = [
    {24: (">Q", 2**64 - 1), 56: (">Q", 2**64 - 1), 32: (">I", 4096), 40: (">Q", 4096)},
    {24: (">Q", 360000 * 10**9 + 1234567890), 40: (">Q", 3 * 2**20 + 5), 56: (">Q", 123456789)},
    {24: (">Q", (99 * 3600 + 59 * 60) * 10**9 + 999999999), 40: (">Q", 5 << 40), 16: (">I", 0)},
]
pos = off
for i in range(nb):
    f.seek(pos)
    _, _, ids, ns, _, _, _, _, exs = struct.unpack(">QIHHIIQII", f.read(40))
    for at, (fmt, v) in edits[i].items():
        f.seek(pos + at)
        f.write(struct.pack(fmt, v))
    pos = (pos + 40 + exs + ids + ns + 7) & ~7
EOF
listings crafted craft.qcow2

# Names longer than 255 bytes are cut there (qemu-img does it silently); twins compared.
long=$(printf 'n%.0s' $(seq 300))
"$QEMU_IMG" create -q -f qcow2 long-q.qcow2 1M
"$QEMU_IMG" create -q -f qcow2 long-v.qcow2 1M
"$QEMU_IMG" snapshot -c "$long" long-q.qcow2
check_ok create-long-name "$VDISK" snapshot -c "$long" long-v.qcow2
name_of() { qemu_info_field "$1" snapshots | "$PYTHON" -c '
import json, sys; print(json.load(sys.stdin)[0]["name"])'; }
if [ "$(name_of long-q.qcow2)" = "$(name_of long-v.qcow2)" ]; then
    pass long-name-truncated
else
    fail long-name-truncated "vdisk kept a different name than qemu-img for a 300-byte name"
fi
# A snapshot made by vdisk -c lists like one made by qemu-img -c (ICOUNT, VM SIZE, clock),
# apart from the ID/date columns.
"$QEMU_IMG" snapshot -c same long-q.qcow2
"$VDISK" snapshot -c same long-v.qcow2
strip_dates() { "$QEMU_IMG" info --output=json "$1" | "$PYTHON" -c '
import json, sys
for s in json.load(sys.stdin)["snapshots"]:
    s.pop("date-sec"); s.pop("date-nsec"); print(json.dumps(s, sort_keys=True))'; }
if [ "$(strip_dates long-q.qcow2)" = "$(strip_dates long-v.qcow2)" ]; then
    pass snapshot-fields-like-qemu-img
else
    strip_dates long-q.qcow2 >fields.diff
    strip_dates long-v.qcow2 >>fields.diff
    fail snapshot-fields-like-qemu-img "the entries differ beyond the date" fields.diff
fi

# ---- 5. image kinds: compressed clusters, extended L2, small clusters, v2, refcount widths,
# a resize between snapshots, many snapshots -------------------------------------------------
# kind NAME CREATE_OPTS: vdisk snapshots around writes (incl. compressed ones) on such an
# image; qemu-img applies the first, vdisk the second; then vdisk deletes the first.
kind() {
    local k=$1 opts=$2 img=kind-$1.qcow2 cs=${3:-65536}
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$img" 8M
    "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 300k" -c "write -c -P 0x22 $((4 * cs)) $cs" \
        -c "write -z 1M 128k" "$img" >/dev/null
    raw_copy "$img" "$k.a.raw"
    check_ok "kind-$k-create-a" "$VDISK" snapshot -c a "$img" || return
    clean "kind-$k-create-a" "$img"
    "$VDISK" io -f qcow2 -c "write -P 0x33 100k 200k" -c "write -c -P 0x44 0 $cs" \
        -c "write -z 2M 64k" "$img" >/dev/null
    raw_copy "$img" "$k.b.raw"
    check_ok "kind-$k-create-b" "$VDISK" snapshot -c b "$img" || return
    "$QEMU_IO" -f qcow2 -c "write -P 0x55 0 1M" "$img" >/dev/null
    check_ok "kind-$k-qemu-apply-a" "$QEMU_IMG" snapshot -a a "$img"
    same "kind-$k-qemu-apply-a" "$img" "$k.a.raw"
    check_ok "kind-$k-vdisk-apply-b" "$VDISK" snapshot -a b "$img"
    same "kind-$k-vdisk-apply-b" "$img" "$k.b.raw"
    clean "kind-$k-apply" "$img"
    check_ok "kind-$k-vdisk-delete-a" "$VDISK" snapshot -d a "$img"
    clean "kind-$k-delete" "$img"
    snap_same "kind-$k-b-after-delete" "$img" b "$k.b.raw"
}
kind extl2 extended_l2=on
kind c4k cluster_size=4096 4096
kind c512 cluster_size=512 512
kind v2 compat=0.10
kind lazy lazy_refcounts=on
kind rc4 refcount_bits=4
kind zstd compression_type=zstd

# refcount_bits=1 holds no second reference; 2 bits hold two snapshots. A snapshot that does
# not fit fails before anything changes: no leak (qemu-img leaks the new L1 there).
"$QEMU_IMG" create -q -f qcow2 -o refcount_bits=1 rc1.qcow2 4M
"$QEMU_IO" -f qcow2 -c "write -P 1 0 256k" rc1.qcow2 >/dev/null
if "$VDISK" snapshot -c x rc1.qcow2 >rc1.out 2>&1; then
    fail rc1-refused "a snapshot with refcount_bits=1 succeeded"
else
    pass rc1-refused
fi
clean rc1-after-refusal rc1.qcow2
[ "$(nsnaps rc1.qcow2)" = 0 ] && pass rc1-no-snapshot || fail rc1-no-snapshot "a snapshot appeared"
"$QEMU_IMG" create -q -f qcow2 -o refcount_bits=2 rc2.qcow2 4M
"$QEMU_IO" -f qcow2 -c "write -P 1 0 256k" rc2.qcow2 >/dev/null
check_ok rc2-first "$VDISK" snapshot -c one rc2.qcow2
check_ok rc2-second "$VDISK" snapshot -c two rc2.qcow2
if "$VDISK" snapshot -c three rc2.qcow2 >rc2.out 2>&1; then
    fail rc2-third-refused "a third snapshot fit in 2-bit refcounts"
else
    pass rc2-third-refused
fi
clean rc2-after-refusal rc2.qcow2
[ "$(nsnaps rc2.qcow2)" = 2 ] && pass rc2-two-left || fail rc2-two-left "$(nsnaps rc2.qcow2) snapshots"

# Resize between snapshots: applying restores the size the snapshot was taken at (v3).
"$QEMU_IMG" create -q -f qcow2 rs.qcow2 16M
"$QEMU_IO" -f qcow2 -c "write -P 0x61 15M 1M" rs.qcow2 >/dev/null
raw_copy rs.qcow2 rs.small.raw
check_ok resize-snap-small "$VDISK" snapshot -c small rs.qcow2
"$VDISK" resize rs.qcow2 40M >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 0x62 30M 2M" rs.qcow2 >/dev/null
raw_copy rs.qcow2 rs.big.raw
check_ok resize-snap-big "$VDISK" snapshot -c big rs.qcow2
check_ok resize-apply-small "$VDISK" snapshot -a small rs.qcow2
same resize-apply-small rs.qcow2 rs.small.raw
clean resize-apply-small rs.qcow2
check_ok resize-qemu-apply-big "$QEMU_IMG" snapshot -a big rs.qcow2
same resize-qemu-apply-big rs.qcow2 rs.big.raw
check_ok resize-vdisk-apply-big "$VDISK" snapshot -a big rs.qcow2
same resize-vdisk-apply-big rs.qcow2 rs.big.raw
clean resize-apply-big rs.qcow2

# 50 snapshots, then every other one deleted by each tool; listings agree throughout.
"$QEMU_IMG" create -q -f qcow2 many.qcow2 8M
for i in $(seq 1 50); do
    "$QEMU_IO" -f qcow2 -c "write -P $((i % 250 + 1)) $(((i % 8) << 20)) 64k" many.qcow2 \
        >/dev/null
    "$VDISK" snapshot -c "m$i" many.qcow2 || { fail many-create "snapshot m$i failed"; break; }
done
[ "$(nsnaps many.qcow2)" = 50 ] && pass many-50 || fail many-50 "$(nsnaps many.qcow2) snapshots"
clean many-50 many.qcow2
listings many many.qcow2
for i in $(seq 1 2 49); do
    "$QEMU_IMG" snapshot -d "m$i" many.qcow2
    "$VDISK" snapshot -d "m$((i + 1))" many.qcow2 || fail many-delete "vdisk -d m$((i + 1))"
done
[ "$(nsnaps many.qcow2)" = 0 ] && pass many-all-deleted || fail many-all-deleted "some left"
clean many-deleted many.qcow2

# ---- 6. duplicate names; -a looks up the id, then the name; -d the name only --------------
qio() { "$QEMU_IO" -f qcow2 "$@" >/dev/null; }
# qemu-img accepts a name twice; vdisk lists, applies and deletes such tables as it does.
"$QEMU_IMG" create -q -f qcow2 dup.qcow2 8M
qio -c "write -P 0x10 0 1M" dup.qcow2
raw_copy dup.qcow2 dup.d1.raw
"$QEMU_IMG" snapshot -c dup dup.qcow2
qio -c "write -P 0x20 512k 1M" dup.qcow2
raw_copy dup.qcow2 dup.d2.raw
"$QEMU_IMG" snapshot -c dup dup.qcow2
qio -c "write -P 0x30 3M 64k" dup.qcow2
listings duplicates dup.qcow2
# vdisk itself refuses a duplicate name (README: "duplicate names refused"), and that
# refusal changes nothing.
cp dup.qcow2 dup.before
if "$VDISK" snapshot -c dup dup.qcow2 >dup.out 2>&1; then
    fail dup-vdisk-create-refused "vdisk made a third 'dup'" dup.out
elif ! cmp -s dup.qcow2 dup.before; then
    fail dup-vdisk-create-refused "the refused create changed the file" dup.out
elif ! grep -q "^vdisk: Could not create snapshot 'dup': " dup.out; then
    fail dup-vdisk-create-refused "unexpected message" dup.out
else
    pass dup-vdisk-create-refused
fi
cp dup.qcow2 dupq.qcow2
check_ok dup-vdisk-apply "$VDISK" snapshot -a dup dup.qcow2
check_ok dup-qemu-apply "$QEMU_IMG" snapshot -a dup dupq.qcow2
same dup-vdisk-apply-first dup.qcow2 dup.d1.raw
same dup-qemu-apply-first dupq.qcow2 dup.d1.raw
clean dup-vdisk-apply dup.qcow2
check_ok dup-vdisk-delete "$VDISK" snapshot -d dup dup.qcow2
check_ok dup-qemu-delete "$QEMU_IMG" snapshot -d dup dupq.qcow2
clean dup-vdisk-delete dup.qcow2
ids_names() { "$QEMU_IMG" snapshot -l "$1" | awk 'NR > 2 { print $1, $2 }'; }
if [ "$(ids_names dup.qcow2)" = "2 dup" ] && [ "$(ids_names dupq.qcow2)" = "2 dup" ]; then
    pass dup-delete-first-only
else
    fail dup-delete-first-only "left: vdisk '$(ids_names dup.qcow2)', qemu-img '$(ids_names dupq.qcow2)'"
fi
snap_same dup-second-kept dup.qcow2 dup dup.d2.raw

# Snapshot "2" is id 1; id 2 is named x. -a 2 takes id 2; -d 2 deletes the one named 2.
"$QEMU_IMG" create -q -f qcow2 idn.qcow2 8M
qio -c "write -P 0x41 0 1M" idn.qcow2
raw_copy idn.qcow2 idn.a.raw
"$QEMU_IMG" snapshot -c 2 idn.qcow2
qio -c "write -P 0x42 256k 1M" idn.qcow2
raw_copy idn.qcow2 idn.b.raw
check_ok idname-vdisk-create "$VDISK" snapshot -c x idn.qcow2
qio -c "write -P 0x43 0 64k" idn.qcow2
listings idname idn.qcow2
cp idn.qcow2 idnq.qcow2
for step in "2 b" "1 a" "x b"; do
    set -- $step
    check_ok "idname-vdisk-apply-$1" "$VDISK" snapshot -a "$1" idn.qcow2
    check_ok "idname-qemu-apply-$1" "$QEMU_IMG" snapshot -a "$1" idnq.qcow2
    same "idname-vdisk-apply-$1" idn.qcow2 "idn.$2.raw"
    same "idname-qemu-apply-$1" idnq.qcow2 "idn.$2.raw"
done
clean idname-applies idn.qcow2
same_output idname-delete-by-id-fails snapshot -d 1 idn.qcow2
check_ok idname-vdisk-delete-by-name "$VDISK" snapshot -d 2 idn.qcow2
"$QEMU_IMG" snapshot -d 2 idnq.qcow2
clean idname-delete idn.qcow2
if [ "$(ids_names idn.qcow2)" = "2 x" ] && [ "$(ids_names idnq.qcow2)" = "2 x" ]; then
    pass idname-delete-took-name
else
    fail idname-delete-took-name "left: vdisk '$(ids_names idn.qcow2)', qemu-img '$(ids_names idnq.qcow2)'"
fi
same_output idname-delete-again snapshot -d 2 idn.qcow2

# Compressed clusters written by vdisk convert -c, snapshots over them, both tools applying.
"$QEMU_IMG" create -q -f qcow2 czsrc.qcow2 8M
qio -c "write -P 0x61 0 2M" -c "write -P 0x62 5M 1M" czsrc.qcow2
check_ok cz-convert "$VDISK" convert -c -O qcow2 czsrc.qcow2 cz.qcow2
raw_copy cz.qcow2 cz.a.raw
check_ok cz-create-a "$VDISK" snapshot -c a cz.qcow2
clean cz-create-a cz.qcow2
"$VDISK" io -f qcow2 -c "write -P 0x63 64k 128k" -c "write -c -P 0x64 1M 64k" cz.qcow2 >/dev/null
raw_copy cz.qcow2 cz.b.raw
check_ok cz-create-b "$VDISK" snapshot -c b cz.qcow2
qio -c "write -P 0x65 0 4M" cz.qcow2
check_ok cz-qemu-apply-a "$QEMU_IMG" snapshot -a a cz.qcow2
same cz-qemu-apply-a cz.qcow2 cz.a.raw
check_ok cz-vdisk-apply-b "$VDISK" snapshot -a b cz.qcow2
same cz-vdisk-apply-b cz.qcow2 cz.b.raw
check_ok cz-vdisk-delete-a "$VDISK" snapshot -d a cz.qcow2
clean cz-delete cz.qcow2
snap_same cz-b-after-delete cz.qcow2 b cz.b.raw

# ---- 7. corrupt snapshot tables ------------------------------------------------------------
# Each damage, each verb, under the ASan build where there is one: the command ends cleanly
# (exit 0, or 1 with a "vdisk: " message and the file not touched: byte for byte). A
# snapshot whose L1 table is damaged is still listed as qemu-img lists it, and applying it
# is refused (taking it in would make the active image corrupt).
cbin=$VDISK_ASAN
[ -x "$cbin" ] || cbin=$VDISK
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0:max_allocation_size_mb=256"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
"$QEMU_IMG" create -q -f qcow2 cbase.qcow2 16M
qio -c "write -P 1 0 1M" cbase.qcow2
"$QEMU_IMG" snapshot -c one cbase.qcow2
qio -c "write -P 2 0 64k" cbase.qcow2
"$QEMU_IMG" snapshot -c two cbase.qcow2
for damage in table-past-eof table-unaligned count-65537 count-plus-one id-size-huge \
    name-size-huge extra-huge l1-unaligned l1-past-eof l1-size-huge l1-entry-past-eof \
    l1-entry-unaligned; do
    cp cbase.qcow2 cbad.qcow2
    "$PYTHON" - cbad.qcow2 "$damage" <<'EOF2'
import struct, sys
path, kind = sys.argv[1:3]
f = open(path, "r+b")
nb, off = struct.unpack(">IQ", f.read(72)[60:72])
def w(o, fmt, v):
    f.seek(o)
    f.write(struct.pack(fmt, v))
def rd(o, fmt):
    f.seek(o)
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
l1 = rd(off, ">Q")
{
    "table-past-eof": lambda: w(64, ">Q", 1 << 40),
    "table-unaligned": lambda: w(64, ">Q", off + 8),
    "count-65537": lambda: w(60, ">I", 65537),
    "count-plus-one": lambda: w(60, ">I", nb + 1),
    "id-size-huge": lambda: w(off + 12, ">H", 0xFFFF),
    "name-size-huge": lambda: w(off + 14, ">H", 0xFFFF),
    "extra-huge": lambda: w(off + 36, ">I", 0xFFFFFFFF),
    "l1-unaligned": lambda: w(off, ">Q", l1 + 512),
    "l1-past-eof": lambda: w(off, ">Q", 1 << 40),
    "l1-size-huge": lambda: w(off + 8, ">I", 1 << 31),
    "l1-entry-past-eof": lambda: w(l1, ">Q", (1 << 63) | (1 << 40)),
    "l1-entry-unaligned": lambda: w(l1, ">Q", rd(l1, ">Q") + 512),
}[kind]()
EOF2
    why=""
    for verb in "-l" "-a one" "-d one" "-c new" "-a two"; do
        cp cbad.qcow2 cwork.qcow2
        # shellcheck disable=SC2086
        vd_with_timeout 30 "$cbin" snapshot $verb cwork.qcow2 >cout.txt 2>cerr.txt
        rc=$?
        if grep -qE 'Sanitizer|runtime error:' cerr.txt; then
            why+="$verb: sanitizer report; "
            vd_detail <cerr.txt
        elif [ "$rc" -gt 1 ]; then
            why+="$verb: exit $rc; "
        elif [ "$rc" = 1 ] && ! head -1 cerr.txt | grep -q '^vdisk: '; then
            why+="$verb: message does not start with 'vdisk: '; "
        elif [ "$rc" = 1 ] && ! cmp -s cwork.qcow2 cbad.qcow2; then
            why+="$verb: failed but changed the file; "
        fi
        case $damage,$verb in
            l1-*,"-a one") [ "$rc" = 1 ] || why+="applying the damaged snapshot succeeded; " ;;
            l1-*,-l)
                "$QEMU_IMG" snapshot -l cbad.qcow2 >cq.txt 2>&1
                cmp -s cq.txt cout.txt || why+="-l differs from qemu-img's; " ;;
        esac
    done
    if [ -z "$why" ]; then
        pass "corrupt-$damage"
    else
        fail "corrupt-$damage" "$why"
    fi
done

vd_finish
