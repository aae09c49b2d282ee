"""Blocking reads of /proc, run in worker threads, never on the trio loop.

Each function reads what one task (or one fd table) needs in one batch, so the pipeline
pays one thread hop per task rather than one per fd.  Expected races (an fd closed or a
thread gone between readdir and read) are handled here; everything else goes through
:func:`asyckpt._errors.translate_oserror`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol, cast

from ._errors import AsyckptError, NoSuchProcess, translate_oserror
from ._procparse import TaskStat, parse_stat, split_fdinfo
from ._rows import InheritedFd, RawFd, RawRow, ScanRow, stat_fields

__all__ = [
    "TablePieces",
    "TaskMeta",
    "TaskRead",
    "iter_fd_tables",
    "read_fds",
    "read_stat",
    "read_task",
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


class TaskMeta(NamedTuple):
    uid: int
    gid: int
    root: str
    mnt_ns: int


class TaskRead(NamedTuple):
    """What the tree walk and the fd-table plan need of one task, read in one go."""

    stat: TaskStat
    threads: list[int]
    """Its thread ids, ascending."""
    children: list[int]
    """The children of all its threads (a child's parent is the thread that forked
    it), ascending."""
    meta: TaskMeta


RawTask = tuple[bytes, list[int], list[int], int, int, str | None, int]
"""(stat text, tids, children, uid, gid, root or None for a zombie, mnt_ns): what
``_fdscan.read_task`` and :func:`_read_task_py` give."""

_read_task_c: Callable[[int], RawTask] | None
try:
    from ._fdscan import read_task as _read_task_c
except ImportError:  # built without a C compiler: the pure-Python reader below
    _read_task_c = None


def read_task(pid: int) -> TaskRead:
    """Read a task's stat, threads, children and metadata (owner, root, mount
    namespace); NoSuchProcess if it is gone."""
    try:
        raw = _read_task_c(pid) if _read_task_c is not None else _read_task_py(pid)
    except FileNotFoundError:
        raise NoSuchProcess("no such process", pid=pid) from None
    except OSError as exc:
        raise translate_oserror(exc, pid=pid, what=exc.filename or "task") from exc
    stat, tids, children, uid, gid, root, mnt_ns = raw
    # A zombie keeps its /proc entry but has dropped its fs and namespaces.  An empty
    # root is one too long for the kernel to give (as an fd's link).
    root = "/" if root is None else root
    return TaskRead(parse_stat(stat), tids, children, TaskMeta(uid, gid, root, mnt_ns))


def _read_task_py(pid: int) -> RawTask:
    """The fallback for _fdscan.read_task: the same result, raising the same OSErrors."""
    stat = _read(f"{PROC}/{pid}/stat")
    tids = sorted(int(t) for t in os.listdir(f"{PROC}/{pid}/task"))
    children: set[int] = set()
    for tid in tids:
        try:
            data = _read(f"{PROC}/{pid}/task/{tid}/children")
        except (FileNotFoundError, ProcessLookupError):
            continue  # thread exited in the meantime; its children were reparented
        children.update(int(c) for c in data.split())
    st = os.stat(f"{PROC}/{pid}")
    try:
        root: str | None = _readlink_name(f"{PROC}/{pid}/root")
        mnt_ns = os.stat(f"{PROC}/{pid}/ns/mnt").st_ino
    except FileNotFoundError:
        root, mnt_ns = None, 0
    return stat, tids, sorted(children), st.st_uid, st.st_gid, root, mnt_ns


# The row types: the C reader's struct sequences when it is built, so that both readers
# give rows of one type (the fallback reader makes them too), else the NamedTuples.
FdRow: Callable[[Sequence[object]], RawFd]
InheritedFdRow: Callable[[Sequence[object]], InheritedFd]
try:
    from ._fdscan import FdRow
    from ._fdscan import InheritedFd as InheritedFdRow
except ImportError:
    FdRow, InheritedFdRow = RawFd._make, InheritedFd._make


class PieceReader(Protocol):
    """A big table, listed, its fds read a piece at a time: ``_fdscan.TableReader``, or
    :class:`_PyTableReader` without the C extension."""

    @property
    def listed(self) -> int: ...
    def read(self, n: int, /) -> list[ScanRow]: ...
    def close(self) -> None: ...


_read_tables_c: (
    Callable[
        [list[tuple[str, str]], list[tuple[int, int] | None] | None, int],
        Sequence[list[ScanRow] | OSError | PieceReader],
    ]
    | None
)
try:
    from ._fdscan import read_tables as _read_tables_c
except ImportError:  # built without a C compiler: the pure-Python reader below
    _read_tables_c = None


def read_fds(pid: int, tid: int) -> list[RawRow]:
    """Read link, stat and fdinfo of every fd in the table of thread ``tid`` of ``pid``."""
    rows = read_fd_tables([(pid, tid)])[0]
    assert rows is not None
    return cast(list[RawRow], rows)  # no parents: no inherited rows


def read_fd_tables(
    owners: list[tuple[int, int]],
    *,
    missing_ok: bool = False,
    parents: Sequence[int] | None = None,
) -> list[list[ScanRow] | None]:
    """:func:`read_fds` for several (pid, tid) tables at once, in ascending fd order.

    With the C reader the GIL is released once for all of them.  An fd that vanishes
    between readdir and read (only possible on a tree that is not frozen) is skipped; a
    task that vanishes raises NoSuchProcess, or with ``missing_ok`` gives None.

    ``parents`` (only for a frozen tree) names, per owner, the pid of a task whose table
    is resolved before this one (0: none): an fd shared with that task's fd of the same
    number is an :data:`InheritedRow`.
    """
    return cast(
        list[list[ScanRow] | None],
        list(iter_fd_tables(owners, missing_ok=missing_ok, parents=parents)),
    )


class TablePieces:
    """A table of more than ``piece`` fds (:func:`iter_fd_tables`), listed once, its rows
    read on demand, a piece at a time, in ascending fd order: :meth:`read` until it
    gives an empty list.  Errors are translated as :func:`read_fd_tables` translates a
    whole table's."""

    __slots__ = ("_reader", "piece", "tid")

    def __init__(self, reader: PieceReader, tid: int, piece: int) -> None:
        self._reader = reader
        self.tid = tid
        self.piece = piece

    def read(self) -> list[ScanRow]:
        try:
            return self._reader.read(self.piece)
        except OSError as exc:
            raise translate_oserror(exc, pid=self.tid, what="fd table") from exc

    def close(self) -> None:
        self._reader.close()


def iter_fd_tables(
    owners: list[tuple[int, int]],
    *,
    missing_ok: bool = False,
    parents: Sequence[int] | None = None,
    piece: int = 0,
) -> Iterator[list[ScanRow] | TablePieces | None]:
    """:func:`read_fd_tables`, one table at a time; with ``piece`` > 0 a table of more
    fds than that is given as :class:`TablePieces` (only listed yet), for its reader to
    hand it on a piece at a time.  The tables after it are read once it is asked for
    the next: read it (or close it) first, as it is closed then."""
    dirs = [
        (f"{PROC}/{pid}/task/{tid}/fd", f"{PROC}/{pid}/task/{tid}/fdinfo") for pid, tid in owners
    ]
    pairs: list[tuple[int, int] | None] | None = None
    if parents is not None:
        pairs = [
            (parent, tid) if parent > 0 else None
            for parent, (_, tid) in zip(parents, owners, strict=True)
        ]
    done = 0
    while done < len(owners):
        rest = pairs[done:] if pairs is not None else None
        if _read_tables_c is not None:
            results = _read_tables_c(dirs[done:], rest, piece)
        else:
            results = _read_tables_py(dirs[done:], rest, piece)
        for rows in results:
            (_pid, tid), (fd_dir, info_dir) = owners[done], dirs[done]
            done += 1
            if isinstance(rows, OSError):
                # A task exiting mid-read (only in a tree that is not frozen) fails as it
                # goes: its fd or fdinfo directory gone (ENOENT), or a read of one of its
                # fds refused (ESRCH, or ENOENT once its /proc entry is gone).
                err: AsyckptError = (
                    NoSuchProcess("no such process", pid=tid)
                    if rows.errno == errno.ENOENT and rows.filename in (fd_dir, info_dir)
                    else translate_oserror(rows, pid=tid, what="fd table")
                )
                if missing_ok and isinstance(err, NoSuchProcess):
                    yield None
                    continue
                raise err from rows
            if isinstance(rows, list):
                yield rows
                continue
            pieces = TablePieces(rows, tid, piece)
            try:
                yield pieces
            finally:
                pieces.close()


def _readlink_name(name: str, dfd: int | None = None) -> str:
    """The link text, or "" when the kernel will not give it (a path longer than
    PATH_MAX: ENAMETOOLONG), as the C reader does."""
    try:
        return os.readlink(name, dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return ""
        raise


def _read_tables_py(
    dirs: list[tuple[str, str]], pairs: list[tuple[int, int] | None] | None, piece: int = 0
) -> list[list[ScanRow] | OSError | PieceReader]:
    """The fallback for _fdscan.read_tables: the same results, several times slower."""
    out: list[list[ScanRow] | OSError | PieceReader] = []
    for i, (fd_dir, info_dir) in enumerate(dirs):
        pair = pairs[i] if pairs is not None else None
        try:
            reader = _PyTableReader(fd_dir, info_dir, *(pair or (0, 0)))
        except OSError as exc:
            out.append(exc)
            continue
        if 0 < piece < reader.listed:
            out.append(reader)
            break
        try:
            out.append(reader.read(max(1, reader.listed)))
        except OSError as exc:
            out.append(exc)
        finally:
            reader.close()
    return out


def _read_table_py(fd_dir: str, info_dir: str, parent: int = 0, tid: int = 0) -> list[ScanRow]:
    """The fallback for _fdscan.read_table (one whole table)."""
    reader = _PyTableReader(fd_dir, info_dir, parent, tid)
    try:
        return reader.read(max(1, reader.listed))
    finally:
        reader.close()


class _PyTableReader:
    """The fallback for _fdscan.TableReader: one table listed once, its fds read from
    that listing a piece at a time."""

    def __init__(self, fd_dir: str, info_dir: str, parent: int = 0, tid: int = 0) -> None:
        self._fd_dir, self._parent, self._tid = fd_dir, parent, tid
        self._names: list[str] = []
        self._next = 0
        self._dfd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._ifd = -1
        try:
            self._ifd = os.open(info_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            with contextlib.suppress(FileNotFoundError):  # a zombie has no fd table left
                self._names = os.listdir(self._dfd)
        except BaseException:
            self.close()
            raise
        self._names.sort(key=int)

    @property
    def listed(self) -> int:
        return len(self._names)

    def close(self) -> None:
        for fd in (self._dfd, self._ifd):
            if fd >= 0:
                os.close(fd)
        self._dfd = self._ifd = -1

    def read(self, n: int) -> list[ScanRow]:
        from ._kernel import same_file

        if n < 1:
            raise ValueError("TableReader.read: n must be at least 1")
        if self._dfd < 0:
            return []
        dfd, ifd, parent, tid = self._dfd, self._ifd, self._parent, self._tid
        names = self._names[self._next : self._next + n]
        self._next += len(names)
        out: list[ScanRow] = []
        stat, read = os.stat, _read
        try:
            for name in names:
                try:
                    info = None
                    if parent > 0 and same_file(parent, tid, int(name)):
                        info = read(name, dir_fd=ifd)
                        # As the C reader: an fd listing a lock is read in full (a lock
                        # shows only in the fdinfo of its owner's fds, not the parent's).
                        if b"lock:" not in info:
                            out.append(InheritedFdRow((int(name), split_fdinfo(info)[1])))
                            continue
                    link = _readlink_name(name, dfd)
                    st = stat(name, dir_fd=dfd)
                    if info is None:
                        info = read(name, dir_fd=ifd)
                except FileNotFoundError:
                    continue  # fd closed in the meantime; the task may still be alive
                except OSError as exc:
                    exc.filename = f"{self._fd_dir}/{name}"
                    raise
                out.append(FdRow((int(name), link, *stat_fields(st), *split_fdinfo(info))))
        except BaseException:
            self.close()
            raise
        if self._next >= len(self._names):
            self.close()
        return out
