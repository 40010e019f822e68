#!/usr/bin/env bash
# The library keeps no state of its own: its objects have no writable data (.data, .bss,
# thread-local .tdata/.tbss: what an engine owns lives in the engine, a failed request's
# message on its node), and its sources read no environment (the programs map their
# variables onto vd_engine_settings).
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool size nm

objdir=$(dirname "$VDISK")/libvdisk.a.p
if [ ! -d "$objdir" ]; then
    fail objects "no $objdir (build the library first)"
    vd_finish
fi

# A sanitizer build carries the sanitizer's own data in every object: the normal build's
# objects are the ones to judge.
if nm "$objdir"/src_block_io.c.o 2>/dev/null | grep -q '__asan\|__ubsan'; then
    echo "note: $objdir is a sanitizer build; its writable data is checked in the normal build"
    objdir=
fi
for o in ${objdir:+"$objdir"/*.o}; do
    name=$(basename "$o")
    size -A "$o" | awk -v o="$name" '
        $1 ~ /^\.(data|bss|tdata|tbss)($|\.)/ && $1 !~ /^\.data\.rel\.ro/ && $2 > 0 {
            print o ": " $1 " " $2 " bytes" }' >>writable.txt
done
if [ -n "$objdir" ]; then
    [ ! -s writable.txt ] && pass no-writable-data ||
        fail no-writable-data "library objects with writable data" writable.txt
fi

grep -rn 'getenv\|secure_getenv' "$VD_TESTS/../src/util" "$VD_TESTS/../src/compress" \
    "$VD_TESTS/../src/block" "$VD_TESTS/../src/snapshot" "$VD_TESTS/../src/nbd" >getenv.txt
[ ! -s getenv.txt ] && pass no-getenv || fail no-getenv "the library reads the environment" \
    getenv.txt

vd_finish
