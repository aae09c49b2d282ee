"""A process tree holding many open fds of every common kind, for tests and benchmarks.

usage: python -m asyckpt.testing.spawn_tree CHILDREN FDS_PER_TASK [DEPTH] [--maps N]

The root opens ``FDS_PER_TASK`` fds (see :func:`fill`), forks ``CHILDREN`` children, each
of which inherits the root's fds, opens as many of its own and, below ``DEPTH`` (default
1), forks two children of its own.  Once every task is ready the root prints its pid on
stdout and the tree sleeps until killed; SIGTERM to the root kills its whole process
group.  Its scratch files go into a new directory under ``$TMPDIR``.  With ``--maps N``
the root first maps ``N`` small files (see :func:`map_files`) and closes them, so every
task of the tree holds ``N`` file-backed mappings, shared as the libraries of a tree of
processes are (what ``bench/run.py``'s mapping workloads measure).

Half of a child's fds are descriptions shared with its parent, so the tree exercises
asyckpt's deduplication as much as its scan; ``bench/run.py`` measures on it and the
tests capture it.  Standard library only: it must start fast and run anywhere.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import tempfile
from typing import NamedTuple, NoReturn

__all__ = ["KINDS", "fds_opened", "fill", "main", "map_files", "tasks_spawned"]

KINDS = ("reg", "append", "dir", "o_path_link", "pipe", "socketpair")
"""What the i-th fd of :func:`fill` is: ``KINDS[i % 6]``."""


def fds_opened(per: int) -> int:
    """How many fds :func:`fill` opens for ``per``: pipes and socketpairs take two each,
    and one deleted file is added."""
    pairs = sum(1 for i in range(per) if KINDS[i % len(KINDS)] in ("pipe", "socketpair"))
    return per + pairs + 1


def tasks_spawned(children: int, depth: int) -> int:
    """How many tasks the tree has, its root included."""
    total, level_count = 1, children
    for _ in range(depth):
        total += level_count
        level_count *= 2
    return total


def fill(workdir: str, per: int, tag: str) -> list[int]:
    """Open ``per`` fds (one kind after another, see :data:`KINDS`), plus a file that is
    deleted while open; return them all.  ``tag`` keeps the tasks' file names apart."""
    held: list[int] = []
    for i in range(per):
        kind = KINDS[i % len(KINDS)]
        if kind == "reg":
            fd = os.open(os.path.join(workdir, f"f{tag}_{i}"), os.O_RDWR | os.O_CREAT, 0o644)
            os.write(fd, b"x" * (i % 97))  # distinct sizes and offsets
            held.append(fd)
        elif kind == "append":
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            held.append(os.open(os.path.join(workdir, f"a{tag}_{i}"), flags, 0o600))
        elif kind == "dir":
            held.append(os.open(workdir, os.O_RDONLY | os.O_DIRECTORY))
        elif kind == "o_path_link":
            link = os.path.join(workdir, f"l{tag}_{i}")
            if not os.path.lexists(link):
                os.symlink("/etc/hostname", link)
            held.append(os.open(link, os.O_PATH | os.O_NOFOLLOW))
        elif kind == "pipe":
            held += os.pipe()
        else:
            a, b = socket.socketpair()
            held += [a.detach(), b.detach()]
    gone = os.path.join(workdir, f"gone{tag}")
    fd = os.open(gone, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"deleted-but-open")
    os.unlink(gone)
    held.append(fd)
    return held


def map_files(workdir: str, count: int) -> list[int]:
    """Map ``count`` files of one page each (shared, read-only) and close them: only the
    mappings hold them.  Returns the addresses.  (Python's mmap would keep an fd each.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    c_int = ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long]
    page = os.sysconf("SC_PAGE_SIZE")
    addrs = []
    for i in range(count):
        fd = os.open(os.path.join(workdir, f"m{i}"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, bytes([i % 256]) * page)
            addr = libc.mmap(None, page, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr is None or addr == ctypes.c_void_p(-1).value:
                raise OSError(ctypes.get_errno(), "mmap")
            addrs.append(int(addr))
        finally:
            os.close(fd)
    return addrs


class Ready(NamedTuple):
    """The pipe each task writes a byte to, then closes, once it is ready (``r`` -1:
    closed already, by the parent)."""

    r: int
    w: int


def _child(workdir: str, per: int, level: int, depth: int, tag: str, ready: Ready) -> NoReturn:
    try:
        if ready.r >= 0:
            os.close(ready.r)
            # Its number is reused by fill: its own children must not close that fd.
            ready = Ready(-1, ready.w)
        fill(workdir, per, tag)
        if level < depth:
            _spawn(workdir, per, level + 1, depth, 2, ready)
        os.write(ready.w, b".")
        os.close(ready.w)
        while True:
            signal.pause()
    finally:
        os._exit(1)  # never back into the parent's code


def _spawn(workdir: str, per: int, level: int, depth: int, count: int, ready: Ready) -> None:
    for c in range(count):
        if os.fork() == 0:
            _child(workdir, per, level, depth, f"{level}_{c}_{os.getpid()}", ready)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    maps = 0
    if "--maps" in args:
        at = args.index("--maps")
        maps_arg = args[at + 1 : at + 2]
        del args[at : at + 2]
        if not maps_arg or not maps_arg[0].isdigit():
            args = []  # the usage below
        else:
            maps = int(maps_arg[0])
    if not 2 <= len(args) <= 3 or not all(a.isdigit() for a in args):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    children, per = int(args[0]), int(args[1])
    depth = int(args[2]) if len(args) > 2 else 1
    # Thousands of fds per task: take the whole hard limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = tempfile.mkdtemp(prefix="asyckpt-spawn-tree-")
    if os.getsid(0) != os.getpid():
        os.setpgid(0, 0)  # its own process group, so that killpg(root) reaches every task
    if maps:
        map_files(workdir, maps)
    fill(workdir, per, "root")
    ready = Ready(*os.pipe())
    _spawn(workdir, per, 1, depth, children, ready)
    os.close(ready.w)
    # Every task writes one byte when ready and closes its end: EOF means all are.
    while os.read(ready.r, 4096):
        pass
    os.close(ready.r)
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    sys.stdout.write(f"{os.getpid()}\n")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
