#!/usr/bin/env bash
# Installs the Debian 12 packages vdisk needs to build, test and benchmark.
# Run as root (or with sudo available). Skips apt entirely when everything is present.
set -euo pipefail

pkgs=(
    build-essential meson ninja-build pkg-config clang libclang-rt-14-dev
    zlib1g-dev libzstd-dev libisal-dev libdeflate-dev libjson-c-dev libcmocka-dev
    libgnutls28-dev libnbd-dev gnutls-bin qemu-system-common fio
    qemu-utils libnbd-bin python3 python3-libnbd time valgrind
    # Ceph RBD: librbd for the rbd driver, a one-node test cluster (tests/ceph/ceph-cluster.sh)
    # and QEMU's rbd driver as the oracle. No ceph-mgr: RBD I/O does not need it.
    ceph-mon ceph-osd ceph-common librbd-dev librados-dev qemu-block-extra
)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
