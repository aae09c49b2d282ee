"""The resolver's output per task, between the frozen phase and the records: what
:class:`~asyckpt._build.RecordBuilder` makes of each task's scan (:class:`TaskPart`, with
a :class:`NewFile` for each description first seen in it), and the scan it starts from
(:class:`TaskScan`).  Plain data, nothing live.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from ._procparse import parse_maps
from ._rows import RawRow, ScanRow, TaskFilesRow

if TYPE_CHECKING:
    from ._discover import TaskPlan
    from ._ghost import Ghost
    from ._handoff import RowStream
    from ._procread import TaskMeta
    from ._records import Owner

__all__ = [
    "FdEntries",
    "FdEntry",
    "GenericFd",
    "NewFile",
    "ResolvedTable",
    "ScannedTable",
    "TaskFilesPart",
    "TaskPart",
    "TaskScan",
    "mappings",
    "new_files",
]


class ScannedTable(NamedTuple):
    """One fd table as the scan read it."""

    tid: int
    """The thread it was read through."""
    table: int
    """Its id (``TaskPlan.scan``)."""
    fds: list[ScanRow] | RowStream | None
    """In ascending fd order; None if its task exited.  An fd the scan found shared with
    the parent's fd of the same number is an :data:`~asyckpt._rows.InheritedRow`,
    resolved from the parent's table.  A big table comes as a :class:`RowStream` of
    pieces, handed on while the scan reads on (never empty)."""


class TaskScan(NamedTuple):
    """What the concurrent phase read for one task: its new fd tables."""

    seq: int
    plan: TaskPlan
    tables: tuple[ScannedTable, ...]
    """One for each table in ``plan.scan``."""
    files: TaskFilesRow | None = None
    """Its working and root directories, executable, mappings and namespaces (``_taskread``);
    None for a zombie."""


FdEntry = tuple[int, bool, int, "NewFile | None"]
"""One fd, resolved: (fd, cloexec, file id, the NewFile if its description was first
seen here).  What the dedup loops make per fd, and what :class:`FdEntries` gives back."""

_BOOL = (False, True)


class FdEntries:
    """One fd table's fds, resolved, held compactly until the records are made: arrays
    of numbers rather than a tuple per fd (on W3's 106k fds, ~10 MiB less at the
    capture's peak), and the descriptions first seen here on their own (what most
    steps after the thaw walk)."""

    __slots__ = ("cloexec", "fds", "files", "new", "new_at")

    def __init__(
        self,
        fds: Sequence[int],
        cloexec: Sequence[bool],
        files: Sequence[int],
        new_at: Sequence[int],
        new: list[NewFile],
    ) -> None:
        self.fds = array("i", fds)
        """In ascending order."""
        self.cloexec = bytes(cloexec)
        """1 where the fd is close-on-exec."""
        self.files = array("q", files)
        """The file id of each fd."""
        self.new_at = array("i", new_at)
        """The indexes of the fds through which a description was first seen, ascending."""
        self.new = new
        """Those descriptions, in the same order."""

    @classmethod
    def of(cls, entries: Sequence[FdEntry]) -> FdEntries:
        if not entries:
            return cls((), (), (), (), [])
        fds, cloexec, files, news = zip(*entries, strict=True)
        new_at = [i for i, new in enumerate(news) if new is not None]
        return cls(fds, cloexec, files, new_at, [news[i] for i in new_at])

    @classmethod
    def join(cls, pieces: Sequence[FdEntries]) -> FdEntries:
        """One table from the pieces it was resolved in, in order."""
        if len(pieces) == 1:
            return pieces[0]
        out = cls((), (), (), (), [])
        cloexec = bytearray()
        for piece in pieces:
            out.new_at.extend(at + len(out.fds) for at in piece.new_at)
            out.new += piece.new
            out.fds += piece.fds
            out.files += piece.files
            cloexec += piece.cloexec
        out.cloexec = bytes(cloexec)
        return out

    def __len__(self) -> int:
        return len(self.fds)

    def __iter__(self) -> Iterator[FdEntry]:
        news = dict(zip(self.new_at, self.new, strict=True))
        rows = zip(self.fds, self.cloexec, self.files, strict=True)
        for i, (fd, cloexec, file_id) in enumerate(rows):
            yield fd, _BOOL[cloexec], file_id, news.get(i)


class ResolvedTable(NamedTuple):
    """One fd table, resolved."""

    tid: int
    table: int
    entries: FdEntries


class NewFile:
    """A description seen for the first time, with what its handler made of it.

    Mutable (unlike the rest of a TaskPart): :meth:`RecordBuilder.finish` replaces the
    record by its encoding, or the handler by None when finishing fails, in place.
    """

    __slots__ = (
        "data",
        "deleted",
        "error",
        "fdinfo",
        "flags",
        "ghost",
        "handler",
        "held",
        "id",
        "io_owner",
        "kind",
        "more_locks",
        "owner_error",
        "path",
        "path_state",
        "pid",
        "raw",
    )

    def __init__(
        self,
        id: int,
        raw: RawRow,
        pid: int,
        flags: int,
        kind: str,
        path: str,
        deleted: bool,
        handler: str | None,
        data: msgspec.Struct | msgspec.Raw | None,
        error: str | None,
        io_owner: Owner | None = None,
        held: str = "fd",
    ) -> None:
        self.id = id
        self.raw = raw
        self.pid = pid
        """The task it was first seen in, through ``raw.fd``."""
        self.flags = flags
        self.kind = kind
        self.path = path
        self.deleted = deleted
        self.handler = handler
        self.data = data
        """The handler's record, encoded by :meth:`RecordBuilder.finish` after the thaw;
        None if generic."""
        self.error = error
        self.ghost: Ghost | None = None
        """An unlinked regular file's content outcome (``_ghost``)."""
        self.fdinfo: tuple[tuple[str, str], ...] = ()
        """The fdinfo lines past the common ones, parsed (as the handler saw them)."""
        self.path_state = "unchecked"
        """Set after the thaw by :class:`_paths.PathChecker`."""
        self.io_owner = io_owner
        self.held = held
        """``fd`` for an open file description; ``cwd``, ``root``, ``exe`` or ``map`` for a
        file held by reference (``File.description`` false), as first met."""
        self.owner_error: str | None = None
        """Why the I/O owner could not be read (``io_owner`` is then None)."""
        self.more_locks: list[str] | None = None
        """``lock:`` lines of the description's other fds (a POSIX lock shows only in
        the fdinfo of its owner's fds), set by :meth:`RecordBuilder.finish`."""

    @property
    def owner(self) -> tuple[int, int]:
        """(pid, fd) of the fd it was first seen through: what errors name.  Made when
        asked, not kept: one tuple per description of the tree otherwise."""
        return self.pid, self.raw.fd


class TaskPart(NamedTuple):
    """One task, resolved: everything :func:`materialize` needs, and nothing live."""

    plan: TaskPlan
    meta: TaskMeta
    mountinfo: str | None
    """The mount table of the task's namespace, when this task is the first in it."""
    tables: list[ResolvedTable]
    threads: tuple[tuple[int, int | None], ...]
    """(tid, fd table id) of every thread, the leader first."""
    files: TaskFilesPart | None = None
    """Its files held by reference, resolved (None for a zombie)."""


MappingEntry = tuple[int, int, str, int, int]
"""(start, end, perms, offset, file id): one file-backed mapping, resolved."""


class TaskFilesPart(NamedTuple):
    """A task's files held by reference, resolved (``_taskfiles``)."""

    cwd: int | None
    root: int | None
    exe: int | None
    """File ids; None when not read (``error`` says why; no exe: a kernel thread)."""
    maps: bytes
    """The task's maps text: its mappings are made from it after the thaw
    (:func:`mappings`), not while frozen."""
    map_files: dict[tuple[int, int], int]
    """(dev, ino) as maps shows it -> file id: the capture's, shared by every task (each
    of this task's keys is in it once the task is resolved, unless it failed)."""
    failed: frozenset[tuple[int, int]]
    """This task's mapped files that could not be read: their ranges are left out."""
    namespaces: dict[str, int]
    threads: dict[int, tuple[int | None, int | None, dict[str, int] | None]]
    """tid -> (cwd, root, namespaces) of each thread with any of its own (None: the
    task's)."""
    cmdline: bytes | None
    error: str | None
    new: list[NewFile]
    """The files first referenced here, in id order: written before the task."""


def mappings(files: TaskFilesPart) -> list[MappingEntry]:
    """The task's file-backed mappings, in address order, with their file ids."""
    ids, failed = files.map_files, files.failed
    return [
        (m.start, m.end, m.perms, m.offset, ids[key])
        for m in parse_maps(files.maps)
        if (key := (m.dev, m.ino)) != (0, 0) and key not in failed
    ]


def new_files(part: TaskPart) -> list[NewFile]:
    """Every file record first met in ``part``, in image order: its fd tables' new
    descriptions, then the files it holds by reference."""
    out = [new for _, _, entries in part.tables for new in entries.new]
    if part.files is not None:
        out.extend(part.files.new)
    return out


class GenericFd(NamedTuple):
    pid: int
    fd: int
    kind: str
    error: str | None
