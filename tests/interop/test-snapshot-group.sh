#!/bin/bash
# Group snapshots through the vdisk command: `vdisk snapshot -c NAME A B C` and `-d NAME A B C`
# are all-or-nothing. Failing the Nth write (and separately the Nth flush) of one member,
# for every N up to the number the group operation does (blkdebug fault injection counts
# them), must leave every image as it was: qemu-img lists no new (or no lost) snapshot,
# the guest contents are the same, qemu-img check is clean; the message names the disk and
# the cause. A read-only member, a missing file, a name clash, a snapshot missing on one
# member, a raw member or the same image twice stop the group before anything changes.
# Then the external side: `vdisk create -b` overlays, `vdisk commit` and `vdisk rebase`
# (safe and unsafe) against qemu-img doing the same on twin images.
. "$(dirname "$0")/../lib.sh"
vd_init

export TZ=Asia/Kolkata
NEVER=1000000  # a rule number no operation here reaches

qio() {
    "$QEMU_IO" -f qcow2 "$@" >/dev/null
}

# ---- the three members ------------------------------------------------------------------
mkdir orig
for x in a b c; do
    "$QEMU_IMG" create -q -f qcow2 "orig/$x.qcow2" 16M
done
qio -c 'write -P 1 0 1M' -c 'write -P 2 5M 192k' orig/a.qcow2
qio -c 'write -P 3 64k 64k' -c 'write -P 4 15M 1M' orig/b.qcow2
qio -c 'write -P 5 1M 3M' orig/c.qcow2
for x in a b c; do
    "$QEMU_IMG" snapshot -c pre "orig/$x.qcow2"
done
qio -c 'write -P 6 0 64k' -c 'write -z 1M 64k' orig/a.qcow2
qio -c 'write -P 7 2M 64k' orig/b.qcow2
qio -c 'write -P 8 8M 64k' -c 'discard 1M 64k' orig/c.qcow2
# The state the delete cases start from: g1 on every member (made by qemu-img).
mkdir orig-g1
for x in a b c; do
    cp "orig/$x.qcow2" "orig-g1/$x.qcow2"
    "$QEMU_IMG" snapshot -c g1 "orig-g1/$x.qcow2"
done
for d in orig orig-g1; do
    for x in a b c; do
        "$QEMU_IMG" convert -O raw "$d/$x.qcow2" "$d/$x.raw"
        "$QEMU_IMG" snapshot -l "$d/$x.qcow2" >"$d/$x.list"
    done
done

# reset FROM: fresh copies of the members in the scratch directory.
reset() {
    local x
    for x in a b c; do
        cp "$1/$x.qcow2" "$x.qcow2"
    done
}

# unchanged_as FROM STEP [MEMBERS]: each member lists the snapshots it listed in FROM, has
# the same guest content and passes qemu-img check without errors or leaks.
unchanged_as() {
    local from=$1 step=$2 members=${3:-a b c} x why=""
    for x in $members; do
        "$QEMU_IMG" snapshot -l "$x.qcow2" >now.list 2>&1
        if ! cmp -s now.list "$from/$x.list"; then
            why+="$x: snapshot list changed; "
            { echo "== $x before"; cat "$from/$x.list"; echo "== $x now"; cat now.list; } >>why.log
        fi
        if ! "$QEMU_IMG" compare -q -f qcow2 -F raw "$x.qcow2" "$from/$x.raw" >/dev/null 2>&1
        then
            why+="$x: guest content changed; "
        fi
        if ! qemu_check_clean "$x.qcow2" check.out; then
            why+="$x: qemu-img check not clean; "
            { echo "== check $x"; cat check.out; } >>why.log
        fi
    done
    if [ -z "$why" ]; then
        pass "$step"
    else
        fail "$step" "$why" why.log
    fi
    rm -f why.log
}

# count MEMBER KIND FROM OP...: the filter's count of writes or flushes that reach MEMBER's file
# during OP (run on fresh copies; the rule never fires).
count() {
    local kind=$2 from=$3 line   # $1: the member (the only one opened through blkdebug)
    shift 3
    reset "$from"
    rm -f count.txt
    VDISK_BLKDEBUG_COUNT=$PWD/count.txt "$VDISK" snapshot "$@" >count.out 2>&1
    line=$(tail -1 count.txt 2>/dev/null)
    case $kind in
        write) sed -n 's/.*writes=\([0-9]*\).*/\1/p' <<<"$line" ;;
        flush) sed -n 's/.*flushes=\([0-9]*\).*/\1/p' <<<"$line" ;;
    esac
}

# members_with M RULE: the argument list a b c with member M opened through RULE.
members_with() {
    local x
    for x in a b c; do
        if [ "$x" = "$1" ]; then
            printf '%s\n' "blkdebug:$2:$x.qcow2"
        else
            printf '%s\n' "$x.qcow2"
        fi
    done
}

# names_of IMG: "ID NAME" of each snapshot (no dates: they differ from run to run).
names_of() {
    "$QEMU_IMG" snapshot -l "$1" | awk 'NR > 2 { print $1, $2 }'
}

# changed_as FROM STEP ACTION: the group operation happened on every member: the snapshot
# names are those of a fault-free run (ref-$ACTION), the guest content is unchanged and
# qemu-img check is clean.
changed_as() {
    local from=$1 step=$2 act=$3 x why=""
    for x in a b c; do
        if [ "$(names_of "$x.qcow2")" != "$(cat "ref$act/$x.names")" ]; then
            why+="$x: snapshots differ from a fault-free run; "
        fi
        if ! "$QEMU_IMG" compare -q -f qcow2 -F raw "$x.qcow2" "$from/$x.raw" >/dev/null 2>&1
        then
            why+="$x: guest content changed; "
        fi
        if ! qemu_check_clean "$x.qcow2" check.out; then
            why+="$x: qemu-img check not clean; "
        fi
    done
    if [ -z "$why" ]; then
        pass "$step"
    else
        fail "$step" "$why"
    fi
}

# fault_loop ACTION(-c|-d) FROM MEMBER KIND: fails the Nth write (or flush) of one member
# for every N up to the count the operation makes. Before its commit point a failure must
# leave every member as it was, with a message naming the member and the cause; after it
# (the cleanup that drops references no longer reachable) a failed request is retried once
# and the operation completes everywhere. Either way every image checks clean, and the
# outcome never mixes: all members changed, or none.
fault_loop() {
    local act=$1 from=$2 m=$3 kind=$4 total n rolled=0 done_at=0
    local -a args
    mapfile -t args < <(members_with "$m" "$kind#$NEVER=EIO")
    total=$(count "$m" "$kind" "$from" "$act" g1 "${args[@]}")
    if ! [[ $total =~ ^[0-9]+$ ]] || [ "$total" -eq 0 ]; then
        fail "group$act-$kind-$m-count" "no ${kind} count from VDISK_BLKDEBUG_COUNT ('$total')" \
            count.out
        return
    fi
    for ((n = 1; n <= total; n++)); do
        reset "$from"
        mapfile -t args < <(members_with "$m" "$kind#$n=EIO")
        "$VDISK" snapshot "$act" g1 "${args[@]}" >out.txt 2>&1
        local rc=$?
        local step="group$act-$kind$n-$m"
        if [ "$rc" -eq 0 ]; then
            [ "$done_at" = 0 ] && done_at=$n
            changed_as "$from" "$step-complete" "$act"
            continue
        fi
        if [ "$done_at" != 0 ]; then
            fail "$step" "failed after $kind #$done_at had already been absorbed" out.txt
        fi
        rolled=$((rolled + 1))
        if [ "$rc" -ne 1 ]; then
            fail "$step-exit" "exit $rc, expected 1" out.txt
        fi
        if grep -q "$m.qcow2" out.txt && grep -q "Input/output error" out.txt; then
            pass "$step-message"
        else
            fail "$step-message" "the message does not name $m.qcow2 and the cause" out.txt
        fi
        unchanged_as "$from" "$step-unchanged"
    done
    echo "group $act on $m: $total ${kind}s reach $m.qcow2; failing any of the first $rolled rolls every member back"
    if [ "$rolled" -gt 0 ]; then
        pass "group$act-$kind-$m-rollback-points"
    else
        fail "group$act-$kind-$m-rollback-points" "no $kind failure made the operation fail"
    fi
}

# Fault-free runs: what every member lists after a group -c g1 and a group -d g1.
for act in -c -d; do
    mkdir -p "ref$act"
    if [ "$act" = -c ]; then reset orig; else reset orig-g1; fi
    "$VDISK" snapshot "$act" g1 a.qcow2 b.qcow2 c.qcow2 >/dev/null 2>&1
    for x in a b c; do
        names_of "$x.qcow2" >"ref$act/$x.names"
    done
done

# ---- 1. faults during a group create and a group delete -----------------------------------
for m in a c; do
    for kind in write flush; do
        fault_loop -c orig "$m" "$kind"
        fault_loop -d orig-g1 "$m" "$kind"
    done
done
# Another errno, to see the cause is the one injected.
reset orig
"$VDISK" snapshot -c g1 a.qcow2 "blkdebug:write#1=ENOSPC:b.qcow2" c.qcow2 >out.txt 2>&1
if grep -q "b.qcow2" out.txt && grep -q "No space left on device" out.txt; then
    pass group-enospc-message
else
    fail group-enospc-message "the message does not name b.qcow2 and ENOSPC" out.txt
fi
unchanged_as orig group-enospc-unchanged

# ---- 2. checks that stop the group before anything changes --------------------------------
reset orig
"$VDISK" snapshot -c g1 a.qcow2 b.qcow2 nosuch.qcow2 >out.txt 2>&1
rc=$?
if [ "$rc" -ne 1 ]; then
    fail group-missing-file "exit $rc with a missing member, expected 1" out.txt
elif grep -q "nosuch.qcow2" out.txt; then
    pass group-missing-file-message
else
    fail group-missing-file-message "the message does not name nosuch.qcow2" out.txt
fi
unchanged_as orig group-missing-file-unchanged

"$QEMU_IMG" create -q -f raw r.raw 16M
reset orig
"$VDISK" snapshot -c g1 a.qcow2 r.raw c.qcow2 >out.txt 2>&1 &&
    fail group-raw-member "succeeded with a raw member" out.txt || pass group-raw-member
unchanged_as orig group-raw-member-unchanged "a c"

reset orig
"$VDISK" snapshot -c g1 a.qcow2 b.qcow2 ./a.qcow2 >out.txt 2>&1 &&
    fail group-same-image "succeeded with the same image twice" out.txt || pass group-same-image
unchanged_as orig group-same-image-unchanged

# Name clash: b already has g1.
reset orig
"$QEMU_IMG" snapshot -c g1 b.qcow2
"$QEMU_IMG" snapshot -l b.qcow2 >clash.list
"$VDISK" snapshot -c g1 a.qcow2 b.qcow2 c.qcow2 >out.txt 2>&1
rc=$?
if [ "$rc" -eq 1 ] && grep -q "b.qcow2" out.txt; then
    pass group-name-clash
else
    fail group-name-clash "exit $rc; expected a failure naming b.qcow2" out.txt
fi
unchanged_as orig group-name-clash-unchanged "a c"
"$QEMU_IMG" snapshot -l b.qcow2 | cmp -s - clash.list && pass group-name-clash-b-unchanged ||
    fail group-name-clash-b-unchanged "b.qcow2's snapshots changed"

# Delete where one member lacks the snapshot.
reset orig-g1
"$QEMU_IMG" snapshot -d g1 c.qcow2
"$VDISK" snapshot -d g1 a.qcow2 b.qcow2 c.qcow2 >out.txt 2>&1
rc=$?
if [ "$rc" -eq 1 ] && grep -q "c.qcow2" out.txt; then
    pass group-delete-missing-snapshot
else
    fail group-delete-missing-snapshot "exit $rc; expected a failure naming c.qcow2" out.txt
fi
unchanged_as orig-g1 group-delete-missing-snapshot-unchanged "a b"

# A member the user may not write (root ignores permissions, so run as nobody).
chmod 755 "$VD_TESTDIR"
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ] &&
    setpriv --reuid=65534 --regid=65534 --clear-groups "$VDISK" --version >/dev/null 2>&1; then
    reset orig
    chown 65534:65534 a.qcow2 b.qcow2
    chmod 644 c.qcow2
    setpriv --reuid=65534 --regid=65534 --clear-groups \
        "$VDISK" snapshot -c g1 a.qcow2 b.qcow2 c.qcow2 >out.txt 2>&1
    rc=$?
    if [ "$rc" -eq 1 ] && grep -q "c.qcow2" out.txt; then
        pass group-read-only-member
    else
        fail group-read-only-member "exit $rc; expected a failure naming c.qcow2" out.txt
    fi
    unchanged_as orig group-read-only-member-unchanged
else
    echo "SKIP group-read-only-member: needs root and setpriv to run as an unprivileged user"
fi

# ---- 3. group snapshots that succeed ------------------------------------------------------
reset orig
check_ok group-create "$VDISK" snapshot -c g2 a.qcow2 b.qcow2 c.qcow2
# Auto-named: -c's argument is then the first image.
check_ok group-create-auto-name "$VDISK" snapshot -c a.qcow2 b.qcow2 c.qcow2
"$PYTHON" - a.qcow2 b.qcow2 c.qcow2 >group.txt 2>&1 <<'EOF'
import json, subprocess, sys, time
snaps = []
for img in sys.argv[1:]:
    out = subprocess.run(["qemu-img", "info", "--output=json", img], capture_output=True,
                         check=True).stdout
    snaps.append({s["name"]: s for s in json.loads(out)["snapshots"]})
errs = []
g2 = [s.get("g2") for s in snaps]
if None in g2:
    errs.append("g2 missing on a member")
elif len({(s["date-sec"], s["date-nsec"]) for s in g2}) != 1:
    errs.append("g2 members have different times: %r" % [(s["date-sec"], s["date-nsec"]) for s in g2])
auto = [[s for n, s in m.items() if n.startswith("vm-")] for m in snaps]
if any(len(a) != 1 for a in auto):
    errs.append("expected one vm-... snapshot per member, got %r" % auto)
else:
    auto = [a[0] for a in auto]
    if len({(s["name"], s["date-sec"], s["date-nsec"]) for s in auto}) != 1:
        errs.append("auto-named members differ: %r" % auto)
    want = time.strftime("vm-%Y%m%d%H%M%S", time.localtime(auto[0]["date-sec"]))
    if auto[0]["name"] != want:
        errs.append("name %s does not match the group time (%s, local)" % (auto[0]["name"], want))
print("\n".join(errs))
sys.exit(1 if errs else 0)
EOF
if [ $? -eq 0 ]; then
    pass group-shared-time-and-name
else
    fail group-shared-time-and-name "see detail" group.txt
fi
for x in a b c; do
    rm -f snap.raw
    "$QEMU_IMG" convert -l snapshot.name=g2 -O raw "$x.qcow2" snap.raw
    cmp -s snap.raw "orig/$x.raw" && pass "group-content-$x" ||
        fail "group-content-$x" "g2 of $x.qcow2 differs from the content at that moment"
    clean_out=check.out
    qemu_check_clean "$x.qcow2" "$clean_out" && pass "group-check-$x" ||
        fail "group-check-$x" "qemu-img check not clean" "$clean_out"
done
check_ok group-delete "$VDISK" snapshot -d g2 a.qcow2 b.qcow2 c.qcow2
auto=$("$QEMU_IMG" snapshot -l a.qcow2 | awk '$2 ~ /^vm-/ { print $2 }')
check_ok group-delete-auto "$VDISK" snapshot -d "$auto" a.qcow2 b.qcow2 c.qcow2
unchanged_as orig group-create-delete-roundtrip

# "-c A B" keeps qemu-img's meaning (a snapshot named A of image B) even though A is a file;
# "-c A" alone names the snapshot of A automatically (qemu-img would refuse it).
reset orig
check_ok group-two-words-is-qemu-form "$VDISK" snapshot -c a.qcow2 b.qcow2
if [ "$(names_of b.qcow2 | awk '{ print $2 }' | tail -1)" = a.qcow2 ]; then
    pass group-two-words-named
else
    fail group-two-words-named "b.qcow2 has no snapshot named a.qcow2: $(names_of b.qcow2)"
fi
unchanged_as orig group-two-words-a-unchanged "a c"
check_ok group-one-word-auto "$VDISK" snapshot -c a.qcow2
if names_of a.qcow2 | awk '{ print $2 }' | grep -Eq '^vm-[0-9]{14}$'; then
    pass group-one-word-auto-named
else
    fail group-one-word-auto-named "a.qcow2 has no vm-YYYYMMDDHHMMSS snapshot: $(names_of a.qcow2)"
fi

# ---- 4. external snapshots, commit and rebase against qemu-img twins ----------------------
mkdir v q
"$QEMU_IMG" create -q -f qcow2 v/base.qcow2 32M
qio -c 'write -P 11 0 4M' -c 'write -P 12 20M 2M' -c 'write -z 8M 1M' v/base.qcow2
cp v/base.qcow2 q/base.qcow2
"$QEMU_IMG" create -q -f qcow2 v/nb.qcow2 32M
qio -c 'write -P 21 2M 4M' -c 'write -P 22 30M 1M' v/nb.qcow2
cp v/nb.qcow2 q/nb.qcow2

# twins STEP: the two overlays (and bases) agree: qemu-img info's describing fields, guest
# content, allocation map (without host offsets), check clean.
# (Host offsets differ between the tools, so they are dropped and the extents they split
# merged again.)
map_shape() {
    (cd "$1" && "$QEMU_IMG" map --output=json "$2") | "$PYTHON" -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    e.pop("offset", None)
    key = {k: v for k, v in e.items() if k not in ("start", "length")}
    if out and out[-1][0] == key and out[-1][1] + out[-1][2] == e["start"]:
        out[-1][2] += e["length"]
    else:
        out.append([key, e["start"], e["length"]])
for key, start, length in out:
    print(start, length, json.dumps(key, sort_keys=True))'
}
twins() {
    local step=$1 f why=""
    for f in ov.qcow2 base.qcow2; do
        [ -f "v/$f" ] || continue
        [ "$(cd v && qemu_info_summary "$f")" = "$(cd q && qemu_info_summary "$f")" ] ||
            why+="$f: qemu-img info differs; "
        "$QEMU_IMG" compare -q "v/$f" "q/$f" >/dev/null 2>&1 || why+="$f: content differs; "
        [ "$(map_shape v "$f")" = "$(map_shape q "$f")" ] || why+="$f: map differs; "
        qemu_check_clean "v/$f" check.out || why+="v/$f: check not clean; "
    done
    if [ -z "$why" ]; then
        pass "$step"
    else
        fail "$step" "$why"
    fi
}

(cd v && "$VDISK" create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2) &&
    (cd q && "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2)
twins external-create
"$PYTHON" "$VD_TESTS/interop/diff-ops.py" gen --seed 7 --count 60 --size $((32 << 20)) \
    --cluster 65536 >ext.ops
# The same tool writes to both twins, so that only the verb under test differs.
apply_ops qemu-io v/ov.qcow2 ext.ops >/dev/null 2>&1 || fail external-writes "qemu-io failed"
apply_ops qemu-io q/ov.qcow2 ext.ops >/dev/null 2>&1 || fail external-writes "qemu-io failed"
twins external-writes
"$QEMU_IMG" convert -O raw v/ov.qcow2 before-commit.raw

check_ok commit-vdisk "$VDISK" commit -q v/ov.qcow2
"$QEMU_IMG" commit -q q/ov.qcow2
twins commit
"$QEMU_IMG" compare -q -F raw v/base.qcow2 before-commit.raw && pass commit-base-content ||
    fail commit-base-content "the base does not hold the overlay's view after commit"

"$PYTHON" "$VD_TESTS/interop/diff-ops.py" gen --seed 8 --count 40 --size $((32 << 20)) \
    --cluster 65536 --writes-only >ext2.ops
apply_ops qemu-io v/ov.qcow2 ext2.ops >/dev/null 2>&1
apply_ops qemu-io q/ov.qcow2 ext2.ops >/dev/null 2>&1
check_ok commit-d-vdisk "$VDISK" commit -q -d v/ov.qcow2
"$QEMU_IMG" commit -q -d q/ov.qcow2
twins commit-d

"$QEMU_IMG" convert -O raw v/ov.qcow2 before-rebase.raw
(cd v && "$VDISK" rebase -q -b nb.qcow2 -F qcow2 ov.qcow2) && pass rebase-safe-vdisk ||
    fail rebase-safe-vdisk "vdisk rebase failed"
(cd q && "$QEMU_IMG" rebase -q -b nb.qcow2 -F qcow2 ov.qcow2)
twins rebase-safe
"$QEMU_IMG" compare -q -F raw v/ov.qcow2 before-rebase.raw && pass rebase-safe-content ||
    fail rebase-safe-content "a safe rebase changed the guest view"

(cd v && "$VDISK" rebase -q -u -b base.qcow2 -F qcow2 ov.qcow2) && pass rebase-unsafe-vdisk ||
    fail rebase-unsafe-vdisk "vdisk rebase -u failed"
(cd q && "$QEMU_IMG" rebase -q -u -b base.qcow2 -F qcow2 ov.qcow2)
twins rebase-unsafe

(cd v && "$VDISK" rebase -q -b '' ov.qcow2) && pass rebase-flatten-vdisk ||
    fail rebase-flatten-vdisk "vdisk rebase -b '' failed"
(cd q && "$QEMU_IMG" rebase -q -b '' ov.qcow2)
twins rebase-flatten

vd_finish
