"""A parent and two children holding pidfds of each other, for tests/test_restore_pidfd.py.

Usage: pidfds.py WORKDIR [outside].  The parent holds a pidfd of child A (non-blocking,
at two fds: one description), one of itself, and with ``outside`` one of its own parent
(the test: a process outside the tree).  Child A holds a pidfd of the parent and one of
its sibling B (forked after it: the parent tells it B's pid).  Child B holds a pidfd of
itself only, not close-on-exec.  Prints one JSON line (pids and fd numbers) once all
are ready, then idles until killed.
"""

import json
import os
import signal
import sys

null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 2)
os.close(null)
parent = os.getpid()
outside = os.pidfd_open(os.getppid()) if sys.argv[2:] == ["outside"] else None
ready_r, ready_w = os.pipe()
tell_r, tell_w = os.pipe()
a = os.fork()
if a == 0:
    os.close(ready_r)
    os.close(tell_w)
    of_parent = os.pidfd_open(parent)
    b = int(os.read(tell_r, 32))
    of_sibling = os.pidfd_open(b)
    os.close(tell_r)
    os.write(ready_w, json.dumps({"parent": of_parent, "sibling": of_sibling}).encode() + b"\n")
    os.close(ready_w)
    signal.pause()
    os._exit(0)
os.close(tell_r)
b = os.fork()
if b == 0:
    os.close(ready_r)
    os.close(tell_w)
    of_self = os.pidfd_open(os.getpid())
    os.set_inheritable(of_self, True)  # kept across exec (pidfds are made close-on-exec)
    os.write(ready_w, json.dumps({"self": of_self}).encode() + b"\n")
    os.close(ready_w)
    signal.pause()
    os._exit(0)
os.close(ready_w)
os.write(tell_w, str(b).encode())
os.close(tell_w)
with os.fdopen(ready_r) as ready:  # a line from each child, whole (under PIPE_BUF)
    said = [json.loads(ready.readline()) for _ in range(2)]
of_a = os.pidfd_open(a, os.O_NONBLOCK)
dup = os.dup(of_a)
of_self = os.pidfd_open(parent)
fds_a = next(s for s in said if "parent" in s)
fds_b = next(s for s in said if "self" in s)
info = {"pid": parent, "a": a, "b": b, "of_a": of_a, "dup": dup, "self": of_self,
        "outside": outside, "fds_a": fds_a, "fds_b": fds_b}  # fmt: skip
print(json.dumps(info), flush=True)
os.dup2(0, 1)
signal.pause()
