"""Unlinked files (CRIU's "ghost files"): their content, copied while the tree is frozen.

An unlinked regular file (nlink 0: ``rm``-ed while open, a memfd, a SysV shm segment)
lives only as long as some fd holds it, so a checkpoint that wants it back must keep its
bytes.  For each such inode (once per (dev, ino), however many descriptions and fds refer
to it) whose allocated size (st_blocks * 512, as CRIU counts) is within the ghost limit:

* the resolver, while the tree is frozen, takes the task's descriptor (pidfd_getfd) and
  opens ``/proc/self/fd/N`` of it: a *new* description of the same inode (legal for an
  unlinked inode), whose offset is ours to move.  The task's own offset is never touched:
  SEEK_DATA/SEEK_HOLE run on the new description, and sendfile(2) with an explicit
  offset does not move the offset of the file it reads.  The data extents are copied by
  the kernel into one spool file per capture (O_TMPFILE, in the image's directory when
  there is one): no bytes pass through Python while the tree is frozen, and holes are
  never copied;
* after the thaw, :meth:`GhostSpool.split` and :meth:`GhostSpool.read` turn the spool
  into ``content`` records of at most :data:`CONTENT_CHUNK` bytes, one per channel
  message (and per thread hop, but for a task's first chunk's worth of them, read in the
  hop that makes its records), so memory stays bounded by the channel's few batches
  whatever the files' sizes.

Pure helpers (:func:`ghost_state`, :func:`chunk_plan`, :func:`format_size`) are tested on
literal input; the rest is I/O at the edge.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, NamedTuple

from ._records import Content, File

__all__ = [
    "CONTENT_CHUNK",
    "DEFAULT_GHOST_LIMIT",
    "Chunk",
    "Ghost",
    "GhostNote",
    "GhostSpool",
    "chunk_plan",
    "data_extents",
    "format_size",
    "ghost_state",
]

DEFAULT_GHOST_LIMIT = 1 << 20
"""CRIU's default: 1 MiB of allocated blocks per unlinked file."""

CONTENT_CHUNK = 1 << 20
"""The most data one ``content`` record holds."""

Extent = tuple[int, int, int]
"""(offset in the file, length, offset in the spool)."""


class Chunk(NamedTuple):
    """One ``content`` record to make: a piece of an extent, read from the spool."""

    file: int
    offset: int
    length: int
    spool_offset: int


def ghost_state(allocated: int, limit: int) -> str:
    """What to do with an unlinked file of ``allocated`` bytes: ``copy``, ``too-big`` or
    ``off`` (limit 0: never copy)."""
    if limit == 0:
        return "off"
    return "copy" if allocated <= limit else "too-big"


def chunk_plan(file_id: int, extents: Sequence[Extent], chunk: int = CONTENT_CHUNK) -> list[Chunk]:
    """The ``content`` records of one file's extents, none longer than ``chunk``."""
    out = []
    for offset, length, spooled in extents:
        for start in range(0, length, chunk):
            out.append(Chunk(file_id, offset + start, min(chunk, length - start), spooled + start))
    return out


def format_size(n: int) -> str:
    """``3.0 MiB``, ``512 KiB``, ``100 bytes``: binary units, as the CLI's sizes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of data below ``size``, by SEEK_DATA/SEEK_HOLE.

    Moves ``fd``'s offset: only for a description of our own.  A filesystem without
    SEEK_DATA (EINVAL) is one run of data.
    """
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from pos to the end
                return
            if exc.errno == errno.EINVAL and pos == 0:
                yield 0, size
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


class Ghost:
    """What happened to one unlinked inode's content (shared by all its descriptions)."""

    __slots__ = ("error", "extents", "file", "state")

    def __init__(self, state: str, file: int | None, error: str | None = None) -> None:
        self.state = state
        """``saved``, ``too-big``, ``off`` or ``failed`` (:attr:`File.ghost`)."""
        self.file = file
        """The file id whose content records hold the data (when saved)."""
        self.error = error
        self.extents: list[Extent] = []


class GhostNote(NamedTuple):
    """An unlinked file whose content is not in the image (for the CLI's messages)."""

    pid: int
    fd: int
    path: str
    allocated: int
    state: str
    """``too-big`` or ``failed``."""
    error: str | None
    limit: int

    def message(self) -> str:
        # fd -1: a file held without an fd (a mapping, an executable).
        holder = f"pid {self.pid} fd {self.fd}" if self.fd >= 0 else f"pid {self.pid}"
        where = f"{holder}: unlinked file {self.path}"
        if self.state == "too-big" and self.error is not None:
            return (
                f"{where}: {self.error} exceeds --ghost-limit {format_size(self.limit)}; not saved"
            )
        if self.state == "too-big":
            return (
                f"{where} ({format_size(self.allocated)} allocated) exceeds --ghost-limit "
                f"{format_size(self.limit)}; not saved"
            )
        return f"{where}: content not saved: {self.error}"


class _OverLimit(Exception):
    """An unlinked file has more data than the ghost limit, whatever its blocks say."""

    def __init__(self, data: int) -> None:
        super().__init__(data)
        self.data = data


class GhostSpool:
    """Copies unlinked files' data while frozen; makes their ``content`` records after."""

    def __init__(self, limit: int, spool_dir: str | None = None) -> None:
        self.limit = limit
        self._dir = spool_dir
        self._spool: IO[bytes] | None = None
        self._end = 0
        self._inodes: dict[tuple[int, int], Ghost] = {}
        self.saved: dict[int, Ghost] = {}
        """file id -> its inode's ghost, for the files whose content records follow them."""
        self.notes: list[GhostNote] = []

    def capture(
        self,
        file_id: int,
        pid: int,
        fd: int,
        path: str,
        dev: int,
        ino: int,
        size: int,
        allocated: int,
        take_fd: Callable[[int], int],
    ) -> Ghost:
        """The content of one unlinked description's inode: copied the first time the
        inode is met (while frozen), the earlier outcome after that."""
        known = self._inodes.get((dev, ino))
        if known is not None:
            return known
        state = ghost_state(allocated, self.limit)
        ghost = self._inodes[(dev, ino)] = Ghost(state, None)
        if state == "copy":
            try:
                ghost.extents = self._copy(take_fd(fd), size)
                ghost.state, ghost.file = "saved", file_id
                self.saved[file_id] = ghost
            except _OverLimit as over:
                # Fewer blocks than data: a compressing filesystem, or one that reports
                # no blocks at all (FUSE, 9p...).  The limit bounds what is copied.
                ghost.state = "too-big"
                ghost.error = f"its data ({format_size(over.data)} or more)"
            except OSError as exc:
                ghost.state, ghost.error = "failed", f"{exc.strerror or exc}"
        if ghost.state in ("too-big", "failed"):
            self.notes.append(
                GhostNote(pid, fd, path, allocated, ghost.state, ghost.error, self.limit)
            )
        return ghost

    def _copy(self, taken: int, size: int) -> list[Extent]:
        # A new description of the inode: its offset, unlike the task's, may move.
        src = os.open(f"/proc/self/fd/{taken}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if self._spool is None:
                import tempfile  # only when there is a ghost: show need not import it

                # O_TMPFILE: nothing to clean up if we die.  Closed by close().
                self._spool = tempfile.TemporaryFile(dir=self._dir)  # noqa: SIM115
            out = self._spool.fileno()
            # Where the last copy really ended, even if it failed half-way.
            self._end = begin = os.lseek(out, 0, os.SEEK_END)
            extents = []
            for start, end in data_extents(src, size):
                data = self._end - begin + (end - start)
                if data > self.limit:
                    # Nothing of this file stays in the spool.
                    os.ftruncate(out, begin)
                    self._end = begin
                    raise _OverLimit(data)
                pos = start
                while pos < end:
                    n = os.sendfile(out, src, pos, end - pos)
                    if n == 0:  # it shrank (only possible when not frozen)
                        break
                    pos += n
                if pos > start:
                    extents.append((start, pos - start, self._end))
                    self._end += pos - start
                if pos < end:
                    break
            return extents
        finally:
            os.close(src)

    def totals(self) -> tuple[int, int]:
        """(content records, data bytes) the saved files will make."""
        records = data = 0
        for file_id, ghost in self.saved.items():
            plan = chunk_plan(file_id, ghost.extents)
            records += len(plan)
            data += sum(c.length for c in plan)
        return records, data

    def split(self, batch: list[Any]) -> list[tuple[list[Any], list[Chunk]]]:
        """A task's records, cut after each file whose content follows it: (records,
        the content chunks to send after them)."""
        out: list[tuple[list[Any], list[Chunk]]] = []
        start = 0
        saved = self.saved
        for i, rec in enumerate(batch):
            if type(rec) is File and rec.id in saved:
                plan = chunk_plan(rec.id, saved[rec.id].extents)
                if plan:
                    out.append((batch[start : i + 1], plan))
                    start = i + 1
        out.append((batch[start:], []))
        return out

    def read(self, chunk: Chunk) -> Content:
        assert self._spool is not None
        data = os.pread(self._spool.fileno(), chunk.length, chunk.spool_offset)
        if len(data) != chunk.length:
            raise OSError(errno.EIO, "the ghost spool file is shorter than what was copied")
        return Content(file=chunk.file, offset=chunk.offset, data=data)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
