"""Processes with a name and owner chosen by the test, for ``asyckpt tree --name/--user``.

usage: named.py WORKDIR NAME UID CHILDREN [CHILD_NAME]

Sets its name (the kernel's comm, as ps and psutil show it) to NAME and its uids to UID,
forks CHILDREN children named CHILD_NAME (default: NAME) with the same uid, prints one
JSON line {"pid", "children"} once they all are, then idles until killed (every child
dies with its parent: PR_SET_PDEATHSIG).  NAME may hold any byte but NUL, as a comm may:
the test passes it escaped as Python would (\\xNN)."""

import ctypes
import json
import os
import signal
import sys

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def set_name(name: bytes) -> None:
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def main(_workdir: str, name: str, uid: str, children: str, child_name: str = "") -> None:
    raw = name.encode().decode("unicode_escape").encode("latin-1")
    child_raw = child_name.encode().decode("unicode_escape").encode("latin-1") or raw
    set_name(raw)
    os.setgid(int(uid))
    os.setuid(int(uid))
    ready_r, ready_w = os.pipe()
    pids = []
    for _ in range(int(children)):
        pid = os.fork()
        if pid == 0:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            set_name(child_raw)
            os.close(ready_r)
            os.write(ready_w, b"x")
            os.close(ready_w)
            while True:
                signal.pause()
        pids.append(pid)
    os.close(ready_w)
    while os.read(ready_r, 64):
        pass
    print(json.dumps({"pid": os.getpid(), "children": pids}), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(*sys.argv[1:])
