#!/usr/bin/env bash
# A one-node Ceph test cluster (1 mon + 1 BlueStore OSD on a sparse file, loopback only,
# cephx on) that lives entirely under one directory, for the RBD tests. The recipe and its
# pitfalls are in docs/ceph-test-cluster.md.
#
#   tests/ceph/ceph-cluster.sh start DIR    # prints the CEPH_CONF path once pool rbd works
#   tests/ceph/ceph-cluster.sh status DIR   # exit 0 when its daemons run and the mon answers
#   tests/ceph/ceph-cluster.sh stop DIR     # stops DIR's daemons (by pid file), removes DIR
#
# Sourced, it defines ceph_cluster_start/status/stop DIR (start also exports CEPH_CONF)
# and ceph_cluster_need_tests, which skips a test script (exit 77) that cannot run here.
# DIR holds ceph.conf, keyring, mon.a/, osd.0/ (BlueStore `block`, sparse), log/ and run/
# (pid files, admin sockets); a marker file, .vdisk-ceph-cluster, guards the rm -rf.
# start on a running cluster only re-proves it; start on a stale DIR clears it first; a
# start that fails or is interrupted stops what it started and removes DIR. Daemons run
# under `nice -n 19 ionice -c3`: the machine is small and shared. Needs ceph-mon, ceph-osd
# and ceph-common.
# shellcheck shell=bash

CEPH_CLUSTER_MARK=.vdisk-ceph-cluster
# The BlueStore block file's apparent size; it is sparse, so it costs what is written.
: "${CEPH_CLUSTER_BLOCK_SIZE:=10737418240}"
: "${CEPH_CLUSTER_TIMEOUT:=90}"

_cc_log() {
    printf 'ceph-cluster: %s\n' "$*" >&2
}

# _cc_pids DIR: the live daemon pids named by DIR's pid files (a pid reused by some other
# program is not ours: its command line must name a ceph daemon).
_cc_pids() {
    local f pid
    for f in "$1"/run/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null)
        case $pid in '' | *[!0-9]*) continue ;; esac
        if kill -0 "$pid" 2>/dev/null &&
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'ceph-\(mon\|osd\|mgr\)'; then
            echo "$pid"
        fi
    done
}

# _cc_ceph DIR ARGS...: the ceph CLI against DIR's cluster, never waiting forever.
_cc_ceph() {
    local d=$1
    shift
    timeout -k 5 30 ceph -c "$d/ceph.conf" --connect-timeout 20 "$@"
}

_cc_rbd() {
    local d=$1
    shift
    timeout -k 5 60 rbd -c "$d/ceph.conf" "$@"
}

# _cc_free_port: a port P with P and P+1 free on loopback (mon v2 = P, v1 = P+1).
_cc_free_port() {
    local p used
    used=$(ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }')
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        if ! printf '%s\n' "$used" | grep -qx -e "$p" -e "$((p + 1))"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

ceph_cluster_status() {
    local d=${1:?usage: ceph_cluster_status DIR} pids
    if [ ! -f "$d/$CEPH_CLUSTER_MARK" ]; then
        _cc_log "$d: no cluster"
        return 1
    fi
    pids=$(_cc_pids "$d")
    if [ ! -f "$d/run/mon.a.pid" ] || [ ! -f "$d/run/osd.0.pid" ] ||
        [ "$(printf '%s\n' "$pids" | grep -c .)" -lt 2 ]; then
        _cc_log "$d: daemons not running (live pids: ${pids:-none})"
        return 1
    fi
    if ! _cc_ceph "$d" osd dump 2>/dev/null | grep -q '^osd\.0 up'; then
        _cc_log "$d: the mon does not answer or osd.0 is down"
        return 1
    fi
    _cc_log "$d: running (pids ${pids//$'\n'/ }), conf $d/ceph.conf"
    return 0
}

# _cc_signal_wait SIG TENTHS PID...: sends SIG to the pids, waits up to TENTHS tenths of a
# second for them to exit, and prints those still running.
_cc_signal_wait() {
    local sig=$1 tenths=$2 p
    shift 2
    local pids="$*"
    # shellcheck disable=SC2086
    kill "-$sig" $pids 2>/dev/null
    for _ in $(seq 1 "$tenths"); do
        pids=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done)
        [ -z "$pids" ] && break
        sleep 0.1
    done
    printf '%s' "$pids"
}

ceph_cluster_stop() {
    local d=${1:?usage: ceph_cluster_stop DIR} pids p
    [ -e "$d" ] || return 0
    if [ ! -f "$d/$CEPH_CLUSTER_MARK" ]; then
        _cc_log "$d: not a test cluster directory (no $CEPH_CLUSTER_MARK); left alone"
        return 1
    fi
    pids=$(_cc_pids "$d")
    if [ -n "$pids" ]; then
        pids=$(_cc_signal_wait TERM 300 $pids)
        if [ -n "$pids" ]; then
            _cc_log "$d: pids ${pids//$'\n'/ } ignored SIGTERM for 30 s; SIGKILL"
            # shellcheck disable=SC2086
            _cc_signal_wait KILL 50 $pids >/dev/null
        fi
    fi
    rm -rf "$d"
}

# The cluster's configuration. Test-friendly settings from ceph.md: one replica allowed and
# no warning for it, CRUSH picks OSDs rather than hosts, no PG autoscaler, low disk-space
# warnings, cephx without insecure global_id reclaim, and a 1 GiB OSD memory target (the
# default, 4 GiB, is too much for a 2-core test machine shared with builds). bluestore block
# path stays unset: setting it to the default file makes mkfs fail with ELOOP. The full
# ratios stay at their defaults: raising them above the failsafe is HEALTH_ERR.
_cc_write_conf() {
    local d=$1 fsid=$2 port=$3
    cat >"$d/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]
mon initial members = a
public network = 127.0.0.1/32
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $d/keyring
run dir = $d/run
crash dir = $d/crash
log file = $d/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $d/\$name
admin socket = $d/run/\$name.asok
pid file = $d/run/\$name.pid

[osd]
osd data = $d/\$name
keyring = $d/\$name/keyring
admin socket = $d/run/\$name.asok
pid file = $d/run/\$name.pid
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $CEPH_CLUSTER_BLOCK_SIZE
osd memory target = 1073741824
EOF
}

# _cc_wait SECONDS CMD...: polls CMD every 0.5 s until it succeeds.
_cc_wait() {
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.5
    done
}

_cc_osd_up() {
    _cc_ceph "$1" osd dump 2>/dev/null | grep -q '^osd\.0 up'
}

# _cc_prove DIR: pool rbd takes an image, lists it and removes it.
_cc_prove() {
    local d=$1 probe="probe-$$-$RANDOM"
    _cc_rbd "$d" create --size 4M "rbd/$probe" &&
        _cc_rbd "$d" ls rbd | grep -qx "$probe" &&
        _cc_rbd "$d" rm --no-progress "rbd/$probe" >/dev/null
}

# The body of start, run in a subshell whose EXIT trap tears down a half-made cluster.
_cc_start_body() {
    local d=$1 t0=$SECONDS fsid port secret osd_uuid id
    set -o pipefail
    # shellcheck disable=SC2154 # rc is set inside the trap
    trap 'rc=$?; trap - EXIT; if [ $rc -ne 0 ]; then _cc_log "start failed; cleaning up $d"; ceph_cluster_stop "$d"; fi; exit $rc' EXIT
    trap 'exit 130' INT TERM HUP

    mkdir -p "$d" && : >"$d/$CEPH_CLUSTER_MARK" && mkdir -p "$d/log" "$d/run" "$d/crash" \
        "$d/mon.a" "$d/osd.0" || return 1
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    port=$(_cc_free_port) || { _cc_log "no free loopback port pair"; return 1; }
    _cc_write_conf "$d" "$fsid" "$port"

    # Keys: mon. and client.admin in DIR/keyring, which the conf names for every client.
    ceph-authtool --create-keyring "$d/keyring" --gen-key -n mon. --cap mon 'allow *' \
        >/dev/null || return 1
    ceph-authtool "$d/keyring" --gen-key -n client.admin --cap mon 'allow *' \
        --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null || return 1
    monmaptool --create --fsid "$fsid" \
        --addv a "[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]" "$d/monmap" \
        >/dev/null || return 1
    ceph-mon -c "$d/ceph.conf" --mkfs -i a --monmap "$d/monmap" --keyring "$d/keyring" \
        >"$d/log/mkfs-mon.out" 2>&1 || { cat "$d/log/mkfs-mon.out" >&2; return 1; }
    # Daemons fork into the background; their stdio goes to a file so that a caller's
    # $(...) does not wait for them.
    nice -n 19 ionice -c3 ceph-mon -c "$d/ceph.conf" -i a </dev/null >"$d/log/mon.a.out" 2>&1 ||
        { cat "$d/log/mon.a.out" >&2; return 1; }
    _cc_log "mon.a starting on 127.0.0.1:$port"

    # The OSD: registered with its own cephx secret, then mkfs (BlueStore creates `block`).
    secret=$(ceph-authtool --gen-print-key) || return 1
    id=$(printf '{"cephx_secret": "%s"}' "$secret" |
        _cc_ceph "$d" osd new "$osd_uuid" -i -) || { _cc_log "osd new failed"; return 1; }
    [ "$id" = 0 ] || { _cc_log "osd new gave id '$id', expected 0"; return 1; }
    ceph-authtool --create-keyring "$d/osd.0/keyring" --name osd.0 --add-key "$secret" \
        >/dev/null || return 1
    nice -n 19 ionice -c3 ceph-osd -c "$d/ceph.conf" -i 0 --mkfs --osd-uuid "$osd_uuid" \
        >"$d/log/mkfs-osd.out" 2>&1 || { cat "$d/log/mkfs-osd.out" >&2; return 1; }
    _cc_log "osd.0 mkfs done ($((SECONDS - t0)) s)"
    nice -n 19 ionice -c3 ceph-osd -c "$d/ceph.conf" -i 0 </dev/null >"$d/log/osd.0.out" 2>&1 ||
        { cat "$d/log/osd.0.out" >&2; return 1; }
    _cc_wait "$CEPH_CLUSTER_TIMEOUT" _cc_osd_up "$d" || { _cc_log "osd.0 never came up"; return 1; }
    _cc_log "osd.0 up ($((SECONDS - t0)) s)"

    _cc_ceph "$d" osd pool create rbd 8 8 >/dev/null 2>&1 || { _cc_log "pool create failed"; return 1; }
    _cc_rbd "$d" pool init rbd || { _cc_log "rbd pool init failed"; return 1; }
    _cc_prove "$d" || { _cc_log "the probe image failed"; return 1; }
    _cc_log "ready ($((SECONDS - t0)) s)"
    trap - EXIT
    return 0
}

ceph_cluster_start() {
    local d=${1:?usage: ceph_cluster_start DIR} t
    for t in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd; do
        command -v "$t" >/dev/null 2>&1 || { _cc_log "$t not installed"; return 1; }
    done
    case $d in /*) ;; *) d=$PWD/$d ;; esac
    if [ -e "$d" ]; then
        if [ -f "$d/$CEPH_CLUSTER_MARK" ]; then
            if ceph_cluster_status "$d" 2>/dev/null && _cc_prove "$d"; then
                export CEPH_CONF=$d/ceph.conf
                echo "$CEPH_CONF"
                return 0
            fi
            _cc_log "$d: stale cluster; clearing it"
            ceph_cluster_stop "$d" || return 1
        elif [ -n "$(ls -A "$d" 2>/dev/null)" ]; then
            _cc_log "$d exists, is not empty and is not a test cluster directory"
            return 1
        fi
    fi
    # The body runs in a child whose EXIT trap removes a half-made cluster. A signal to this
    # shell is passed on to it (as SIGTERM), so that `kill` of a caller or Ctrl-C also
    # cleans up; the caller's own traps come back afterwards.
    local saved child rc
    saved=$(trap -p INT TERM HUP)
    (_cc_start_body "$d") &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null' INT TERM HUP
    wait "$child"
    rc=$?
    while kill -0 "$child" 2>/dev/null; do
        wait "$child"
        rc=$?
    done
    trap - INT TERM HUP
    eval "$saved"
    [ "$rc" -eq 0 ] || return "$rc"
    export CEPH_CONF=$d/ceph.conf
    echo "$CEPH_CONF"
}

# For test scripts: the cluster needs root and the Ceph packages, and the comparisons need
# QEMU's rbd driver; without them the script is skipped (exit 77).
ceph_cluster_need_tests() {
    [ "$(id -u)" = 0 ] || { echo "SKIP: the Ceph test cluster needs root"; exit 77; }
    local t
    for t in ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool; do
        command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t not installed"; exit 77; }
    done
    if ! ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1; then
        echo "SKIP: QEMU's rbd driver (qemu-block-extra) not installed"
        exit 77
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case ${1:-} in
    start | stop | status)
        [ -n "${2:-}" ] || { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
        "ceph_cluster_$1" "$2"
        exit $?
        ;;
    *)
        echo "usage: $0 start|stop|status DIR" >&2
        exit 2
        ;;
    esac
fi
