"""A parent and a child sharing open file descriptions, for tests/test_restore.py's
--tree round trip.

Usage: restore_tree.py WORKDIR.  The parent opens a file (one position, inherited by
the child), makes a pipe with data queued and forks: the child keeps the read end, the
parent the write end; the child also opens an eventfd of its own.  Prints one JSON line
(the pids) once the child is ready, then idles until killed.
"""

import json
import os
import signal
import sys

work = sys.argv[1]
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 2)
os.close(null)
path = os.path.join(work, "shared.txt")
with open(path, "wb") as f:
    f.write(b"x" * 100)
shared = os.open(path, os.O_RDWR)
os.set_inheritable(shared, True)
os.lseek(shared, 42, os.SEEK_SET)
r, w = os.pipe()
os.write(w, b"from parent")
ready_r, ready_w = os.pipe()
child = os.fork()
if child == 0:
    os.close(w)
    os.close(ready_r)
    os.eventfd(9)
    os.close(ready_w)  # ready
    signal.pause()
    os._exit(0)
os.close(r)
os.close(ready_w)
os.read(ready_r, 1)
os.close(ready_r)
print(json.dumps({"pid": os.getpid(), "child": child, "shared": shared}), flush=True)
signal.pause()
