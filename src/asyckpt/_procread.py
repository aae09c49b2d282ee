"""Blocking reads of /proc, run in worker threads, never on the trio loop.

Each function reads what one task (or one fd table) needs in one batch, so the pipeline
pays one thread hop per task rather than one per fd.  Expected races (an fd closed or a
thread gone between readdir and read) are handled here; everything else goes through
:func:`asyckpt._errors.translate_oserror`.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from ._errors import NoSuchProcess, oserror_context, translate_oserror
from ._procparse import FdInfo, TaskStat, parse_fdinfo, parse_stat

__all__ = [
    "RawFd",
    "TaskMeta",
    "list_children",
    "list_threads",
    "read_fds",
    "read_stat",
    "read_task_meta",
]

PROC = "/proc"
# seq_file hands a whole fdinfo over in one read when the buffer is big enough; only a
# full buffer means there may be more (an epoll with hundreds of targets, many locks).
_FDINFO_CHUNK = 16384


def _read(path: str, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, _FDINFO_CHUNK)
        if len(data) < _FDINFO_CHUNK:
            return data
        chunks = [data]
        while chunk := os.read(fd, _FDINFO_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_stat(pid: int, tid: int | None = None) -> TaskStat:
    path = f"{PROC}/{pid}/stat" if tid is None else f"{PROC}/{pid}/task/{tid}/stat"
    try:
        return parse_stat(_read(path))
    except FileNotFoundError:
        raise NoSuchProcess("no such process", pid=pid) from None
    except OSError as exc:
        raise translate_oserror(exc, pid=pid, what=path) from exc


def list_threads(pid: int) -> list[int]:
    with oserror_context(pid=pid, what="list threads"):
        try:
            return sorted(int(t) for t in os.listdir(f"{PROC}/{pid}/task"))
        except FileNotFoundError:
            raise NoSuchProcess("no such process", pid=pid) from None


def list_children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a child's parent is the thread that forked it)."""
    children: set[int] = set()
    for tid in list_threads(pid):
        try:
            data = _read(f"{PROC}/{pid}/task/{tid}/children")
        except (FileNotFoundError, ProcessLookupError):
            continue  # thread exited in the meantime; its children were reparented
        children.update(int(c) for c in data.split())
    return sorted(children)


class TaskMeta(NamedTuple):
    uid: int
    gid: int
    root: str
    mnt_ns: int


def read_task_meta(pid: int) -> TaskMeta:
    with oserror_context(pid=pid, what="task metadata"):
        st = os.stat(f"{PROC}/{pid}")
        try:
            root = os.readlink(f"{PROC}/{pid}/root")
            mnt_ns = os.stat(f"{PROC}/{pid}/ns/mnt").st_ino
        except FileNotFoundError:
            # A zombie keeps its /proc entry but has dropped its fs and namespaces.
            root, mnt_ns = "/", 0
    return TaskMeta(st.st_uid, st.st_gid, root, mnt_ns)


class RawFd(NamedTuple):
    fd: int
    link: str
    st: os.stat_result
    info: FdInfo


def read_fds(pid: int, tid: int) -> list[RawFd]:
    """Read link, stat and fdinfo of every fd in the table of thread ``tid`` of ``pid``.

    Ascending fd order.  An fd that vanishes between readdir and read (only possible on a
    tree that is not frozen) is skipped; a task that vanishes raises NoSuchProcess.
    """
    base = f"{PROC}/{pid}/task/{tid}"
    with oserror_context(pid=tid, what="fd table"):
        try:
            dfd = os.open(f"{base}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NoSuchProcess("no such process", pid=tid) from None
    try:
        with oserror_context(pid=tid, what="fdinfo"):
            ifd = os.open(f"{base}/fdinfo", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _read_fd_batch(dfd, ifd, tid)
        finally:
            os.close(ifd)
    finally:
        os.close(dfd)


def _read_fd_batch(dfd: int, ifd: int, tid: int) -> list[RawFd]:
    try:
        names = os.listdir(dfd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []  # a zombie has no fd table left
        raise translate_oserror(exc, pid=tid, what="fd table") from exc
    out = []
    readlink, stat, read = os.readlink, os.stat, _read
    for fd in sorted(map(int, names)):
        name = str(fd)
        try:
            link = readlink(name, dir_fd=dfd)
            st = stat(name, dir_fd=dfd)
            info = parse_fdinfo(read(name, dir_fd=ifd))
        except FileNotFoundError:
            continue  # fd closed in the meantime; the task may still be alive
        except OSError as exc:
            raise translate_oserror(exc, pid=tid, fd=fd, what="fd") from exc
        out.append(RawFd(fd, link, st, info))
    return out
