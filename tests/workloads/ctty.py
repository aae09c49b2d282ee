"""A session on a pseudo-terminal, for the controlling-terminal tests.

The root (in a session of its own, started by the test, without a terminal) opens a pty
pair; a child starts a session (setsid) and takes the slave as its controlling terminal
(TIOCSCTTY); a grandchild moves to a process group of its own in that session and
closes every fd on the terminal.  Prints one JSON line, then idles until killed (every
task dies with its parent: PR_SET_PDEATHSIG)."""

import ctypes
import fcntl
import json
import os
import signal
import sys
import termios

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def idle(ready: int) -> None:
    os.write(ready, b"x")
    while True:
        signal.pause()


def main(_workdir: str) -> None:
    master, slave = os.openpty()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        os.close(master)
        gc_r, gc_w = os.pipe()
        grandchild = os.fork()
        if grandchild == 0:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            os.setpgid(0, 0)
            os.close(slave)
            for fd in (0, 1, 2):  # whatever the test runner gave: not the terminal
                os.dup2(os.open("/dev/null", os.O_RDWR), fd)
            idle(gc_w)
        os.read(gc_r, 1)
        os.write(ready_w, str(grandchild).encode().rjust(10))
        idle(ready_w)
    grandchild = int(os.read(ready_r, 10))
    os.read(ready_r, 1)  # the child is ready, and its child before it
    out = {
        "pid": os.getpid(),
        "child": child,
        "grandchild": grandchild,
        "slave": os.ttyname(slave),
        "rdev": os.fstat(slave).st_rdev,
        "master": master,
    }
    print(json.dumps(out), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1])
