"""The scan's rows: what the fd-table readers (``_fdscan.read_tables`` and its Python
fallback) return for each fd, and the shape of the C dedup loop that consumes them.

Pure: types and the stat fields' order, shared by the readers (kernel access), the C
extension's stub and the resolver (``_build``), so that none of them imports another for
a type.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "DedupRows",
    "InheritedFd",
    "InheritedRow",
    "MapRow",
    "RawFd",
    "RawRow",
    "ScanRow",
    "TaskFilesRow",
    "ThreadFilesRow",
    "stat_fields",
]

InheritedRow = tuple[int, int]
"""(fd, flags): an fd that the scan found to be the same open file description as its
parent's fd of the same number (kcmp), so it read only its fdinfo (for close-on-exec, the
one fact that belongs to the fd, not the description).  The rest is the parent's row.
Made as :class:`InheritedFd` (or the C reader's type of the same fields)."""


class RawFd(NamedTuple):
    """One fd as the readers return it.  The C reader makes ``_fdscan.FdRow``, a struct
    sequence with these fields in this order (a tuple whose fields are also attributes);
    this NamedTuple is the type without the C extension, and the one the type checker
    knows (``_procread.FdRow`` is whichever is in use)."""

    fd: int
    link: str
    st_mode: int
    st_dev: int
    st_ino: int
    st_rdev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_blocks: int
    pos: int
    flags: int
    """As fdinfo says: O_CLOEXEC included when the fd is close-on-exec."""
    mnt_id: int
    fdinfo_rest: bytes
    """The fdinfo lines after pos, flags, mnt_id and ino, unparsed."""


class InheritedFd(NamedTuple):
    """An :data:`InheritedRow` by name (``_fdscan.InheritedFd`` from the C reader)."""

    fd: int
    flags: int


class MapRow(NamedTuple):
    """One line of ``/proc/PID/maps``, parsed (``_procparse.parse_maps``; the C reader
    makes ``_fdscan.MapRow``, a struct sequence of these fields)."""

    start: int
    end: int
    perms: str
    """``rwxp``: ``r``/``-``, ``w``/``-``, ``x``/``-``, then ``p`` or ``s``."""
    offset: int
    dev: int
    """The mapped inode's device, userspace ``dev_t`` layout (``os.makedev``); 0 (with
    ``ino`` 0) for an anonymous mapping."""
    ino: int
    name: bytes
    """The name column as the kernel wrote it (a newline in a path shows as ``\\012``):
    for display only; a mapped file's path is read through ``map_files``."""


class ThreadFilesRow(NamedTuple):
    """A thread's (other than its leader) working and root directories and namespaces."""

    tid: int
    cwd: RawFd | int
    root: RawFd | int
    namespaces: dict[str, int]


class TaskFilesRow(NamedTuple):
    """What the scan reads of a task's files beyond its fd tables (``_taskread``).

    A file held by reference is a :class:`RawFd` row of fd -1, pos 0, flags ``O_PATH``
    (what handlers are told: no open file description to read through), no fdinfo, its
    stat fields and mount id read through its magic link; an ``int`` in its place is the
    errno that reading it failed with."""

    cwd: RawFd | int
    root: RawFd | int
    exe: RawFd | int
    namespaces: dict[str, int]
    """Type -> inode, for each ``/proc/PID/ns`` entry that exists."""
    maps: bytes | int
    """The ``maps`` text as read (parsed, so known to be well formed), or the errno
    reading it failed with (``EPROTO``: malformed).  Its ranges become records after the
    thaw (``_parts.mappings``): no object per range is made while frozen."""
    keys: set[tuple[int, int]]
    """The (dev, ino) of every file the task maps: the resolver's set difference with the
    files it knows is one C-level operation per task, not a Python step per file."""
    mapped: list[tuple[MapRow, RawFd | int]]
    """The first range of each mapped file that the capture had not read yet, in address
    order, with its file read through ``map_files`` (or the errno)."""
    threads: list[ThreadFilesRow]
    cmdline: bytes | None
    """``/proc/PID/cmdline`` when asked for (NUL-separated), else None."""


RawRow = RawFd
"""One fd as read in full: the fields of :class:`RawFd`, whichever type holds them."""

ScanRow = RawFd | InheritedFd
"""What a scan gives per fd: a full row, or an inherited one (``len(row) == 2``)."""


def stat_fields(st: os.stat_result) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    """The stat fields asyckpt keeps, in the order of ``RawFd[2:12]`` and of
    :class:`~asyckpt._plugins.contract.StatInfo` (the C reader writes the same order)."""
    return (
        st.st_mode,
        st.st_dev,
        st.st_ino,
        st.st_rdev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_blocks,
    )


DedupRows = Callable[
    [
        list[ScanRow],
        int,
        dict[int, Any],
        dict[int, Any],
        dict[Any, list[Any] | tuple[Any, Any]],
        int,
        dict[int, list[bytes]],
    ],
    tuple[
        list[tuple[int, bool, int, Any]] | None,
        list[int] | None,
        int,
        int,
        int,
        tuple[int, int, int] | None,
    ],
]
"""_fdscan.dedup_rows: (rows, tid, hints, seen, buckets, file_count, more_locks) ->
(entries, new row indexes, file_count, hint hits, compares, kcmp error (errno, pid, fd) or
None); the fdinfo of an fd of a description seen before that lists locks is appended to
``more_locks[file_id]``, as the Python loop does."""
