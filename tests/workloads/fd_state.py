"""A process tree holding locks, a lease and I/O owners, for tests/test_fdstate.py.

Prints one JSON line describing what it set up, then idles until killed.  Layout:
  root: a POSIX lock, an flock and an OFD lock, each on a regular file of its own; a
        lease (when /proc/sys/fs/leases-enable allows) with an owner and signal; a
        socket and both ends of a pipe with F_SETOWN_EX, F_SETSIG and O_ASYNC; a
        regular file with F_SETOWN only; an O_PATH fd; a socket with no owner; a file
        with an flock, shared with the child;
  child "locker": inherits the shared file and takes a POSIX lock through it, which
        only its own fdinfo lists.
"""

import fcntl
import json
import os
import signal
import socket
import struct
import sys

F_SETSIG, F_SETOWN_EX, F_GETOWNER_UIDS = 10, 15, 17
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
O_ASYNC = 0o20000


def uids(fd: int) -> list[int | None]:
    try:
        return list(struct.unpack("II", fcntl.fcntl(fd, F_GETOWNER_UIDS, bytes(8))))
    except OSError:
        return [None, None]  # a kernel without CONFIG_CHECKPOINT_RESTORE


def node(fd: int) -> dict[str, int]:
    st = os.fstat(fd)
    return {"dev": st.st_dev, "ino": st.st_ino}


def own(fd: int, kind: int, pid: int, sig: int, async_io: bool = True) -> None:
    fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", kind, pid))
    fcntl.fcntl(fd, F_SETSIG, sig)
    if async_io:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | O_ASYNC)


def main(workdir: str) -> None:
    # Readiness and lease breaks signal us: none of it may kill the tree.
    for sig in (signal.SIGIO, signal.SIGUSR1, signal.SIGUSR2, signal.SIGRTMIN + 3):
        signal.signal(sig, signal.SIG_IGN)
    p = lambda name: os.path.join(workdir, name)  # noqa: E731
    out: dict[str, object] = {"pid": os.getpid(), "pgrp": os.getpgrp()}

    posix = os.open(p("posix"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(posix, fcntl.LOCK_EX)  # the whole file, to EOF
    flock = os.open(p("flock"), os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(flock, fcntl.LOCK_SH)
    ofd = os.open(p("ofd"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.fcntl(ofd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 10, 20, 0))
    out.update(posix=posix, flock=flock, ofd=ofd)
    out.update(nodes={str(fd): node(fd) for fd in (posix, flock, ofd)})

    # A read lease needs a file opened read-only, with no writer anywhere.
    with open(p("leased"), "w") as f:
        f.write("leased")
    lease = os.open(p("leased"), os.O_RDONLY)
    try:
        fcntl.fcntl(lease, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        out["lease_refused"] = str(exc)
    else:
        # Setting a lease made us its owner (F_OWNER_PID) and set O_ASYNC; now a thread
        # owner and a real-time signal instead.
        own(lease, F_OWNER_TID, os.getpid(), signal.SIGRTMIN + 3, async_io=False)
        out["nodes"][str(lease)] = node(lease)  # type: ignore[index]
    out.update(lease=lease, lease_uids=uids(lease))

    sock, peer = socket.socketpair()
    own(sock.fileno(), F_OWNER_PGRP, os.getpgrp(), signal.SIGUSR1)
    r, w = os.pipe()
    own(r, F_OWNER_PID, os.getpid(), signal.SIGUSR2)
    # The write end: a description the pipe handler does not take (it reads a pipe's
    # capacity and queue through its first end only).
    own(w, F_OWNER_TID, os.getpid(), 0)
    out.update(sock=sock.detach(), peer=peer.detach(), pipe_r=r, pipe_w=w)
    out.update(sock_uids=uids(out["sock"]), pipe_uids=uids(r))  # type: ignore[arg-type]

    setown = os.open(p("setown"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.fcntl(setown, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(setown, F_SETSIG, signal.SIGUSR1)
    out["setown"] = setown
    out["opath"] = os.open(p("posix"), os.O_PATH)

    shared = os.open(p("inherited"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(shared, b"s" * 100)
    fcntl.flock(shared, fcntl.LOCK_EX)
    out["inherited"] = shared
    out["nodes"][str(shared)] = node(shared)  # type: ignore[index]

    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        fcntl.lockf(shared, fcntl.LOCK_EX, 10, 20)  # bytes 20 to 29
        os.write(ready_w, b"x")
        while True:
            signal.pause()
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    out["child"] = child

    print(json.dumps(out), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1])
