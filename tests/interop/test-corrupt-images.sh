#!/usr/bin/env bash
# Hostile images: every image of the corrupt corpus (tests/corrupt/make-corpus.py) goes
# through vdisk info, io read (read-write and read-only), check, map and an allocating
# write, under the ASan+UBSan build with a time and memory bound. Each command must end
# cleanly: exit 0, or non-zero with a clear message ("vdisk: ..." on stderr); never a
# sanitizer report, a crash signal, a timeout or a huge allocation. Where the corpus says
# a command must fail (or succeed), it must.
. "$(dirname "$0")/../lib.sh"
vd_init

bin=$VDISK_ASAN
if [ ! -x "$bin" ]; then
    echo "note: no ASan build at $VDISK_ASAN; using $VDISK without sanitizers"
    bin=$VDISK
fi
# Memory bounds under ASan (ulimit -v cannot be used with its shadow memory): a single
# allocation above 256 MiB or a resident size above 512 MiB is reported as an error.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=0"
ASAN_OPTIONS+=":max_allocation_size_mb=256:hard_rss_limit_mb=512:quarantine_size_mb=32"
ASAN_OPTIONS+=":malloc_context_size=20"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
limit=${CORRUPT_TIMEOUT:-20}

"$PYTHON" "$VD_TESTS/corrupt/make-corpus.py" corpus >make.out 2>&1 || {
    fail corrupt/make-corpus "building the corpus failed" make.out
    vd_finish
}

# One line per case: name, case directory, expectations (cmd=want,...), write commands.
"$PYTHON" - corpus/manifest.json >cases.tsv <<'EOF'
import json, sys
for c in json.load(open(sys.argv[1])):
    exp = ",".join("%s=%s" % kv for kv in sorted(c["expect"].items()))
    print("\t".join([c["name"], c["image"].split("/")[0], exp or "-"] + c["write"]))
EOF

# run_one CMD CASEDIR: runs one command on a fresh copy of the case; sets rc, and err
# (a description of what went wrong, empty when the command ended cleanly).
run_one() {
    local cmd=$1 dir=$2
    rm -rf work
    cp -r "corpus/$dir" work
    local -a argv
    case $cmd in
        info) argv=(info -f qcow2 image.qcow2) ;;
        info-probe) argv=(info image.qcow2) ;;
        read) argv=(io -f qcow2 -c 'read 0 64k' image.qcow2) ;;
        read-ro) argv=(io -r -f qcow2 -c 'read 0 64k' image.qcow2) ;;
        check) argv=(check -f qcow2 image.qcow2) ;;
        map) argv=(map --output=json -f qcow2 image.qcow2) ;;
        write) argv=(io -f qcow2 -c "$w1" -c "$w2" image.qcow2) ;;
    esac
    (cd work && if [ "$bin" = "$VDISK" ]; then ulimit -v $((4 * 1024 * 1024)); fi
     exec timeout -k 5 "$limit" "$bin" "${argv[@]}") >stdout.txt 2>stderr.txt
    rc=$?
    err=
    if grep -qE 'Sanitizer|runtime error:|hard rss limit' stderr.txt; then
        err="sanitizer report: $(grep -m1 -E 'ERROR|runtime error' stderr.txt)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        err="timed out after ${limit}s"
    elif [ $rc -ge 128 ]; then
        err="killed by signal $((rc - 128))"
    elif [ $rc -ne 0 ]; then
        if [ "$cmd" = check ] && { [ $rc -eq 2 ] || [ $rc -eq 3 ]; }; then
            :  # check found corruptions / leaks: a legitimate answer
        elif [ "$cmd" = read ] || [ "$cmd" = read-ro ] || [ "$cmd" = write ]; then
            # qemu-io style: open errors on stderr, per-command failures may be on stdout.
            if ! cat stderr.txt stdout.txt | grep -qE '^vdisk:|^(read|write) failed'; then
                err="exit $rc without a 'vdisk: ...' or '<cmd> failed: ...' message"
            fi
        elif [ "$cmd" = check ]; then
            # qemu-img style: ERROR lines may come first, then "vdisk: Check failed: ...".
            if ! grep -q '^vdisk:.' stderr.txt; then
                err="exit $rc without a 'vdisk: ...' line on stderr"
            fi
        else
            local first
            # QEMU's "qcow2: Image is corrupt: ..." notice may come first, as with qemu-img.
            first=$(grep -v -e '^[[:space:]]*$' \
                -e '^qcow2: \(Image is corrupt\|Marking image as corrupt\): .*; further' \
                stderr.txt | head -n 1)
            case $first in
                vdisk:?*) ;;
                "") err="exit $rc with nothing on stderr" ;;
                *) err="exit $rc; stderr does not start with 'vdisk:': $first" ;;
            esac
        fi
    fi
}

ncases=0
while IFS=$'\t' read -r name dir expect w1 w2; do
    ncases=$((ncases + 1))
    problems=()
    for cmd in info info-probe read read-ro check map write; do
        run_one "$cmd" "$dir"
        want=
        case ",$expect," in
            *",$cmd=fail,"*) want=fail ;;
            *",$cmd=ok,"*) want=ok ;;
        esac
        if [ -z "$err" ]; then
            if [ "$want" = fail ] && [ $rc -eq 0 ]; then
                err="exit 0, but this image must be refused"
            elif [ "$want" = ok ] && [ $rc -ne 0 ]; then
                err="exit $rc, but this image is usable: $(cat stderr.txt stdout.txt |
                    grep -v '^[[:space:]]*$' | head -n 2 | tr '\n' ' ')"
            fi
        fi
        if [ -n "$err" ]; then
            problems+=("$cmd: $err")
            {
                echo "== $name: vdisk ${cmd} (exit $rc)"
                head -n 15 stderr.txt
            } >>details.txt
        fi
    done
    if [ ${#problems[@]} -eq 0 ]; then
        pass "corrupt/$name"
    else
        msg=$(printf '%s; ' "${problems[@]}")
        fail "corrupt/$name" "${msg%; }"
        VD_DETAIL_LINES=20 vd_detail <details.txt
    fi
    rm -f details.txt
done <cases.tsv

if [ "$ncases" -ge 30 ]; then
    pass "corrupt/corpus-size"
else
    fail "corrupt/corpus-size" "only $ncases images in the corpus (want >= 30)"
fi
vd_finish
