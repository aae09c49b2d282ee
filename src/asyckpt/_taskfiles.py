"""A task's files held by reference, resolved while the tree is frozen: its working and
root directories, executable and mapped files become file records (``File.description``
false), one per inode (dev, ino) for the whole tree, numbered by first reference in tree
order (after the task's fd tables: cwd, root, exe, the mappings in address order, then
the threads' own directories), so an unchanged tree numbers them identically.

Each new file goes to the handlers as an fd's file does (``RecordBuilder`` makes it:
dispatch, ghost content of an unlinked one, through its magic link); what is read and
what is not (an EPERM on ``map_files``) is the reader's (``_taskread``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from ._parts import NewFile, TaskFilesPart
from ._procparse import parse_maps
from ._rows import MapRow, RawFd, TaskFilesRow
from ._taskread import MapKey, held_path, map_files_path, read_held, read_task_files

__all__ = ["NewHeld", "TaskFileResolver"]

NewHeld = Callable[[int, int, int, RawFd, str, str, str], NewFile]
"""(file id, pid, tid, row, root, held, magic link) -> the file's NewFile (dispatched)."""


def _why(what: str, err: int) -> str:
    return f"{what}: {os.strerror(err)}"


class TaskFileResolver:
    """The held files of one capture: the scan side (:meth:`read`, in worker threads)
    and the resolver side (:meth:`resolve`, in tree order)."""

    def __init__(self, next_id: Callable[[], int], new_held: NewHeld, cmdline: bool) -> None:
        self._next_id = next_id
        self._new_held = new_held
        self._cmdline = cmdline
        self.known: set[MapKey] = set()
        """Mapped files' keys some scan has read (or is reading): shared by the workers."""
        self._by_inode: dict[tuple[int, int], int] = {}
        """(st_dev, st_ino) -> file id of every held file."""
        self._by_map_key: dict[MapKey, int] = {}
        """(dev, ino) as maps shows it -> file id."""

    @property
    def held_count(self) -> int:
        """File records made so far for files held by reference."""
        return len(self._by_inode)

    def read(self, pid: int, tids: list[int]) -> TaskFilesRow:
        """In a scan worker: the task's files (``tids``: all its threads, leader first)."""
        return read_task_files(pid, [t for t in tids if t != pid], self.known, self._cmdline)

    def resolve(self, pid: int, root: str, row: TaskFilesRow) -> TaskFilesPart:
        """In tree order, while frozen: file ids for what the task holds, new ones made."""
        errors: list[str] = []
        new: list[NewFile] = []

        def held(what: str, got: RawFd | int, tid: int, path: str) -> int | None:
            if isinstance(got, int):
                # A kernel thread has no executable: not an error.
                if not (what == "exe" and got == errno.ENOENT):
                    errors.append(_why(what, got))
                return None
            key = (got.st_dev, got.st_ino)
            file_id = self._by_inode.get(key)
            if file_id is None:
                file_id = self._by_inode[key] = self._next_id()
                new.append(self._new_held(file_id, pid, tid, got, root, what, path))
            return file_id

        cwd = held("cwd", row.cwd, pid, held_path(pid, pid, "cwd"))
        root_id = held("root", row.root, pid, held_path(pid, pid, "root"))
        exe = held("exe", row.exe, pid, held_path(pid, pid, "exe"))
        maps = b"" if isinstance(row.maps, int) else row.maps
        failed: set[MapKey] = set()
        if isinstance(row.maps, int):
            errors.append(_why("maps", row.maps))
        # Only the files this capture has no id for yet, found with one set difference
        # (most tasks map what their parent did); the ranges are listed after the thaw.
        unknown = row.keys - self._by_map_key.keys()
        for m, got in _in_address_order(unknown, row.mapped, maps) if unknown else ():
            key = (m.dev, m.ino)
            path = map_files_path(pid, m.start, m.end)
            if got is None:
                # Another worker's scan read it for a task later in tree order, or it
                # failed there: read here, still frozen.
                got = read_held(path)
            file_id = held("map", got, pid, path)
            if file_id is None:
                failed.add(key)
            else:
                self._by_map_key[key] = file_id
        threads: dict[int, tuple[int | None, int | None, dict[str, int] | None]] = {}
        for t in row.threads:
            own_cwd = own_root = None
            if _differs(t.cwd, row.cwd):
                own_cwd = held("cwd", t.cwd, t.tid, held_path(pid, t.tid, "cwd"))
            if _differs(t.root, row.root):
                own_root = held("root", t.root, t.tid, held_path(pid, t.tid, "root"))
            # None read (the thread is exiting): the task's, as far as is known.
            own_ns = t.namespaces if t.namespaces and t.namespaces != row.namespaces else None
            if own_cwd is not None or own_root is not None or own_ns is not None:
                threads[t.tid] = (own_cwd, own_root, own_ns)
        return TaskFilesPart(
            cwd,
            root_id,
            exe,
            maps,
            self._by_map_key,
            frozenset(failed),
            row.namespaces,
            threads,
            row.cmdline,
            "; ".join(dict.fromkeys(errors)) or None,
            new,
        )


def _differs(mine: RawFd | int, task: RawFd | int) -> bool:
    if isinstance(mine, int):
        return False  # unread (the thread is exiting): the task's, as far as is known
    return isinstance(task, int) or (mine.st_dev, mine.st_ino) != (task.st_dev, task.st_ino)


def _in_address_order(
    unknown: set[MapKey], mapped: list[tuple[MapRow, RawFd | int]], maps: bytes
) -> list[tuple[MapRow, RawFd | int | None]]:
    """The first range of each ``unknown`` file, in address order, with its file when
    this task's scan read it (None: to read), so that ids do not depend on which scan
    worker read what.  Nearly always ``mapped`` holds them all; else the text is parsed."""
    todo: list[tuple[MapRow, RawFd | int | None]] = [
        (m, got) for m, got in mapped if (m.dev, m.ino) in unknown
    ]
    if len(todo) == len(unknown):
        return todo
    read = {(m.dev, m.ino): got for m, got in mapped}
    pending = set(unknown)
    todo = []
    for m in parse_maps(maps):
        key = (m.dev, m.ino)
        if key in pending:
            pending.discard(key)
            todo.append((m, read.get(key)))
    return todo
