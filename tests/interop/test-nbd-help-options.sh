#!/usr/bin/env bash
# `vdisk nbd --help` describes the qemu-nbd options it takes with qemu-nbd's own lines:
# every option line (and its continuation lines) of qemu-nbd --help for the options below
# appears the same in vdisk's help.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-nbd
qemu-nbd --help >q.help
"$VDISK" nbd --help >v.help
# The block of lines for option OPT: its line and the indented continuation lines.
block() {
    awk -v opt="$2" '
        /^  +-/ { inblk = index($0, opt) > 0 }
        /^  +[^ -]/ && !/^   +/ { inblk = 0 }
        /^$/ { inblk = 0 }
        inblk' "$1"
}
for opt in "-o, --offset" "-A, --allocation-depth" "-L, --list" "-r, --read-only" \
    "-x, --export-name" "-D, --description" "-f, --format"; do
    block q.help "$opt" >q.blk
    block v.help "$opt" >v.blk
    if [ -s q.blk ] && diff q.blk v.blk >diff.out; then
        pass "help-option: $opt"
    else
        fail "help-option: $opt" "differs (< qemu-nbd, > vdisk)" diff.out
    fi
done
if grep -q '^  or:  .* -L \[OPTIONS\]$' v.help; then
    pass "help-usage-list-mode"
else
    fail "help-usage-list-mode" "no 'or: ... -L [OPTIONS]' usage line" v.help
fi
vd_finish
