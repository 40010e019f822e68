#!/usr/bin/env python3
"""Prints what one NBD_CMD_BLOCK_STATUS request answers for each meta context a server
offers, asking for them all at once (so one reply carries a chunk per context).

usage: nbd_contexts.py URI CONTEXT... -- [OFFSET LENGTH [req_one]]...
"""
import sys

import nbd


def main():
    args = sys.argv[1:]
    sep = args.index("--")
    uri, contexts, reqs = args[0], args[1:sep], args[sep + 1:]
    h = nbd.NBD()
    for ctx in contexts:
        h.add_meta_context(ctx)
    h.connect_uri(uri)
    for ctx in contexts:
        print("%s: %s" % (ctx, h.can_meta_context(ctx)))
    size = h.get_size()
    if not reqs:
        reqs = ["0", str(size)]
    i = 0
    while i < len(reqs):
        off, length = int(reqs[i]), int(reqs[i + 1])
        i += 2
        flags = 0
        if i < len(reqs) and reqs[i] == "req_one":
            flags = nbd.CMD_FLAG_REQ_ONE
            i += 1
        seen = []

        def cb(metacontext, offset, entries, err):
            seen.append("  %s at %d: %s" % (metacontext, offset, entries))
            return 0

        try:
            h.block_status(length, off, cb, flags)
            print("block_status %d+%d flags %d:" % (off, length, flags))
        except nbd.Error as e:
            print("block_status %d+%d flags %d: error %s" % (off, length, flags, e.errnum))
        for line in sorted(seen):
            print(line)
    h.shutdown()


if __name__ == "__main__":
    main()
