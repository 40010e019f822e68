#!/usr/bin/env bash
# `make run`: a short guided tour of vdisk on ./var/default.qcow2 — create with metadata
# preallocation, write a pattern, read it back, then info, check and map.
set -euo pipefail
VDISK=${1:-build/vdisk}
IMG=${VDISK_DEMO_IMAGE:-var/default.qcow2}
mkdir -p "$(dirname "$IMG")"

step() { printf '\n\033[1m==> %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "Create a 1 GiB qcow2 image with all metadata preallocated" \
    "$VDISK" create -f qcow2 -o preallocation=metadata "$IMG" 1G
step "Write the byte 0xa5 over the first MiB" \
    "$VDISK" io -c 'write -P 0xa5 0 1M' "$IMG"
step "Read it back, verifying every byte" \
    "$VDISK" io -c 'read -P 0xa5 0 1M' "$IMG"
step "Show what the image is" \
    "$VDISK" info "$IMG"
step "Check its metadata for consistency" \
    "$VDISK" check "$IMG"
step "Map guest ranges to host offsets" \
    "$VDISK" map "$IMG"
printf '\nDone. The image is %s; try "%s io -c help %s" for more.\n' "$IMG" "$VDISK" "$IMG"
