#!/usr/bin/env python3
# One timed active commit (bench/commit.sh): DAEMON BASE OVERLAY DIR. Starts the daemon
# with the chain as --blockdev nodes (cache.direct=on), sends block-commit of the overlay
# into the base and prints the seconds from the command to BLOCK_JOB_READY, then completes
# the job (the pivot) and quits. Exit 1 on any error.
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "interop"))
from qmp_mirror import Daemon  # noqa: E402

daemon, base, overlay, d = sys.argv[1:5]
extra = []
for name, path, more in (("b", base, ""), ("o", overlay, ",backing=b")):
    extra += ["--blockdev", "driver=file,node-name=%sf,filename=%s,cache.direct=on" % (name, path),
              "--blockdev", "driver=qcow2,node-name=%s,file=%sf%s" % (name, name, more)]
dm = Daemon(daemon, d, "bench", extra=extra)
t0 = time.monotonic()
r = dm.cmd("block-commit", device="o", **{"job-id": "c", "base-node": "b"})
if "return" not in r:
    sys.exit("commit: %s" % json.dumps(r))
dm.event("BLOCK_JOB_READY", timeout=1200)
t = time.monotonic() - t0
dm.cmd("job-complete", id="c")
ev = dm.wait(lambda e: e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), 600)
dm.quit()
if "error" in ev["data"] or ev["event"] != "BLOCK_JOB_COMPLETED":
    sys.exit("commit: %s" % json.dumps(ev))
print("%.3f" % t)
