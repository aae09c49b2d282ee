"""Reading a task's files beyond its fd tables while the tree is frozen: working and
root directories, executable, namespaces, memory mappings (and, when asked, the
command line).  Blocking, run by the scan's worker threads beside the fd tables.

The C reader (``_fdscan.read_task_files``) does it with the GIL released but for a
moment in the middle, when the mapped files not read yet are picked from the capture's
``known`` set; :func:`_read_task_files_py` is its pure-Python twin, for running without
a compiler (docs/development.md), kept equal by a differential test on a live task.

A file held by reference is stat'ed through its magic link (``/proc/PID/cwd``,
``/proc/PID/map_files/START-END``...), never opened but with ``O_PATH`` (which runs no
driver code), and read as an fd row of fd -1 with flags ``O_PATH``: its mount id is the
magic link's (statx ``STATX_MNT_ID`` in C, the ``O_PATH`` descriptor's fdinfo here).
A mapped file is read once per capture: the first row of each (dev, ino) of ``maps``
whose key no scan has added to ``known`` yet.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence

from ._procparse import parse_maps, split_fdinfo
from ._rows import MapRow, RawFd, TaskFilesRow, ThreadFilesRow, stat_fields

__all__ = ["NS_TYPES", "MapKey", "held_path", "map_files_path", "read_held", "read_task_files"]

NS_TYPES = (
    "cgroup",
    "ipc",
    "mnt",
    "net",
    "pid",
    "pid_for_children",
    "time",
    "time_for_children",
    "user",
    "uts",
)
"""The entries of ``/proc/PID/ns`` read, in the order recorded (a kernel lacks some)."""

MapKey = tuple[int, int]
"""(dev, ino) of a mapping as ``maps`` shows it."""

TaskFilesTuple = tuple[
    RawFd | int,
    RawFd | int,
    RawFd | int,
    dict[str, int],
    bytes | int,
    set[MapKey],
    list[tuple[MapRow, RawFd | int]],
    list[tuple[int, RawFd | int, RawFd | int, dict[str, int]]],
    bytes | None,
]
"""What the C reader returns: a :class:`TaskFilesRow`'s fields, its threads as tuples."""

PROC = "/proc"


def held_path(pid: int, tid: int, what: str) -> str:
    """The magic link of a task's (or, ``tid != pid``, a thread's) ``cwd``, ``root`` or
    ``exe``."""
    base = f"{PROC}/{pid}" if tid == pid else f"{PROC}/{pid}/task/{tid}"
    return f"{base}/{what}"


def map_files_path(pid: int, start: int, end: int) -> str:
    """The magic link of one mapping (needs CAP_SYS_ADMIN)."""
    return f"{PROC}/{pid}/map_files/{start:x}-{end:x}"


_read_task_files_c: Callable[[int, list[int], set[MapKey], bool], TaskFilesTuple] | None
FdRow: Callable[[Sequence[object]], RawFd]
try:
    from ._fdscan import FdRow
    from ._fdscan import read_task_files as _read_task_files_c
except ImportError:  # built without a C compiler
    _read_task_files_c = None
    FdRow = RawFd._make


def read_task_files(
    pid: int, tids: Sequence[int], known: set[MapKey], cmdline: bool = False
) -> TaskFilesRow:
    """The task's files (its leader ``pid``; ``tids``, its other threads), the mapped
    files whose key is not in ``known`` read and their keys added to it."""
    if _read_task_files_c is not None:
        cwd, root, exe, ns, maps, keys, mapped, threads, line = _read_task_files_c(
            pid, list(tids), known, cmdline
        )
        threads_named = [ThreadFilesRow._make(t) for t in threads]
        return TaskFilesRow(cwd, root, exe, ns, maps, keys, mapped, threads_named, line)
    return _read_task_files_py(pid, tids, known, cmdline)


def read_held(path: str) -> RawFd | int:
    """A file held by reference, as an fd row, or the errno reading it failed with."""
    try:
        link = os.readlink(path)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            return exc.errno or errno.EIO
        link = ""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno or errno.EIO
    try:
        st = os.fstat(fd)
        with open(f"{PROC}/self/fdinfo/{fd}", "rb") as f:
            mnt_id = split_fdinfo(f.read())[2]
    except OSError as exc:
        return exc.errno or errno.EIO
    finally:
        os.close(fd)
    return FdRow((-1, link, *stat_fields(st), 0, os.O_PATH, mnt_id, b""))


def _namespaces(base: str) -> dict[str, int]:
    # As the C reader: the link's text ("net:[4026531840]") names the inode.
    out = {}
    for name in NS_TYPES:
        try:
            text = os.readlink(f"{base}/ns/{name}")
        except OSError:
            continue  # this kernel lacks it, or the task is exiting
        number = text.partition("[")[2].removesuffix("]")
        if number.isdigit() and text.endswith("]"):
            out[name] = int(number)
    return out


def _read_all(path: str) -> bytes | int:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read()
    except OSError as exc:
        return exc.errno or errno.EIO


def _read_task_files_py(
    pid: int, tids: Sequence[int], known: set[MapKey], cmdline: bool
) -> TaskFilesRow:
    """The fallback for ``_fdscan.read_task_files``: the same result, slower."""
    base = f"{PROC}/{pid}"
    data = _read_all(f"{base}/maps")
    rows: list[MapRow] = []
    maps: bytes | int = data
    if isinstance(data, bytes):
        try:
            rows = parse_maps(data)
        except ValueError:
            maps = errno.EPROTO
    mapped: list[tuple[MapRow, RawFd | int]] = []
    here: set[MapKey] = set()
    for row in rows:
        key = (row.dev, row.ino)
        if key == (0, 0) or key in here:
            continue
        here.add(key)
        if key not in known:
            known.add(key)
            mapped.append((row, read_held(map_files_path(pid, row.start, row.end))))
    threads = [
        ThreadFilesRow(
            tid,
            read_held(held_path(pid, tid, "cwd")),
            read_held(held_path(pid, tid, "root")),
            _namespaces(f"{base}/task/{tid}"),
        )
        for tid in tids
    ]
    line = _read_all(f"{base}/cmdline") if cmdline else None
    return TaskFilesRow(
        read_held(f"{base}/cwd"),
        read_held(f"{base}/root"),
        read_held(f"{base}/exe"),
        _namespaces(base),
        maps,
        here,
        mapped,
        threads,
        line if isinstance(line, bytes) else None,
    )
