#!/usr/bin/env bash
# `make run` must work: scripts/demo.sh runs to completion (exit 0, no prompts) in a
# scratch directory, and leaves an image that qemu-img finds clean.
. "$(dirname "$0")/../lib.sh"
vd_init

img=$VD_TESTDIR/var/default.qcow2
if CI=true VDISK_DEMO_IMAGE=$img vd_with_timeout 600 bash "$VD_REPO/scripts/demo.sh" "$VDISK" \
    </dev/null >demo.out 2>&1; then
    pass demo/runs
else
    VD_DETAIL_LINES=60 fail demo/runs "scripts/demo.sh exited $?" demo.out
fi
if [ -f "$img" ] && qemu_check_clean "$img" check.out; then
    pass demo/image-clean
else
    fail demo/image-clean "the demo image $img is missing or not clean" check.out
fi
vd_finish
