"""The files a task holds beyond its fd table, as ``show`` lists them: which rows, in
which order, as ``lsof -p`` prints them (its Linux ``process_id`` and
``process_proc_map``):

- ``cwd``, ``rtd`` (root directory), ``txt`` (the executable), then one ``mem`` row per
  mapped file, in the order of its first mapping: the ranges of one file are merged into
  its row (lsof keys them by device and inode; an image has one record per inode for
  the tree, so by file id), and a mapping of the executable is its ``txt`` row's, not a
  ``mem`` row of its own;
- a mapped file that is unlinked is ``DEL`` instead of ``mem``, as lsof marks a
  "deleted map file";
- a thread whose working or root directory is not its task's (``unshare(CLONE_FS)``)
  gets a ``cwd``/``rtd`` row of its own;
- why some of them could not be read (``Task.task_files_error``) is an ``err`` row, as
  lsof names an "FD information error".

Pure: rows from records, formatted by ``_show``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from ._records import File, Task

__all__ = ["TaskFileRow", "is_unlinked", "task_file_rows"]


class TaskFileRow(NamedTuple):
    """One row of the table for a file the task holds by reference."""

    owner: int
    """The pid, or the tid of a thread whose directory differs from its task's."""
    fd: str
    """What lsof prints in its FD column: ``cwd``, ``rtd``, ``txt``, ``mem``, ``DEL``,
    ``err``."""
    file_id: int | None
    """The file of the image (None on an ``err`` row)."""
    file: File | None
    """That file; None on an ``err`` row, or when the image has no such file."""
    perms: str
    """The permissions of the file's mappings, each distinct one once in order of first
    appearance (``r--p,r-xp,rw-p``); empty when it is not mapped."""
    ranges: int
    """How many mappings (ranges) were merged into the row."""
    mapped: int
    """The bytes those ranges span."""
    error: str | None = None
    """An ``err`` row's text."""


def is_unlinked(f: File) -> bool:
    """The file's name was unlinked while the task held it: ``deleted`` (nlink 0) or
    ``deleted-linked`` (another hard link keeps it)."""
    return f.deleted or f.path_state in ("deleted", "deleted-linked")


class _Ranges:
    __slots__ = ("mapped", "perms", "ranges")

    def __init__(self) -> None:
        self.perms: list[str] = []
        self.ranges = 0
        self.mapped = 0


def task_file_rows(task: Task, files: Mapping[int, File]) -> list[TaskFileRow]:
    """The task's ``cwd``, ``rtd``, ``txt``, ``mem``/``DEL`` and ``err`` rows, in lsof's
    order (then its threads' own directories).  Empty for a task that has none: a zombie,
    or an image older than format 4."""
    merged: dict[int, _Ranges] = {}
    for m in task.mappings:
        r = merged.get(m.file)
        if r is None:
            r = merged[m.file] = _Ranges()
        if m.perms not in r.perms:
            r.perms.append(m.perms)
        r.ranges += 1
        r.mapped += max(m.end - m.start, 0)

    def row(owner: int, fd: str, file_id: int) -> TaskFileRow:
        r = merged.get(file_id)
        f = files.get(file_id)
        if r is None:
            return TaskFileRow(owner, fd, file_id, f, "", 0, 0)
        return TaskFileRow(owner, fd, file_id, f, ",".join(r.perms), r.ranges, r.mapped)

    rows = []
    pid = task.pid
    if task.cwd is not None:
        rows.append(row(pid, "cwd", task.cwd))
    if task.root_file is not None:
        rows.append(row(pid, "rtd", task.root_file))
    if task.exe is not None:
        rows.append(row(pid, "txt", task.exe))
    for file_id in merged:
        if file_id == task.exe:
            continue
        f = files.get(file_id)
        rows.append(row(pid, "DEL" if f is not None and is_unlinked(f) else "mem", file_id))
    if task.task_files_error is not None:
        rows.append(TaskFileRow(pid, "err", None, None, "", 0, 0, task.task_files_error))
    for th in task.threads:
        if th.tid == pid:
            continue
        if th.cwd is not None and th.cwd != task.cwd:
            rows.append(row(th.tid, "cwd", th.cwd))
        if th.root_file is not None and th.root_file != task.root_file:
            rows.append(row(th.tid, "rtd", th.root_file))
    return rows
