"""diff, for the files a task holds beyond its fds and for its namespaces (format 4): of
a task present in both images (pid plus start time), what changed among

- ``cwd``, ``root``, ``exe``: another file (device and inode, or path), or the same
  file whose ``path_state`` changed (an executable replaced on disk by an upgrade while
  the task runs the old one reads ``path_state ok -> replaced``);
- ``mapping``: the mapped files, each as the set of its ranges (start, end, perms,
  offset), matched by device and inode: a file mapped (``+``), unmapped (``-``), or
  whose ranges differ (``~``, the ranges each side has that the other has not);
- ``namespace``: each namespace type's inode.

What one side could not read is not a change: when either side has a
``task_files_error``, a field is compared only where both have it.  Nothing is compared
for a task one side holds none of these for: from an image older than format 4, or a
zombie (its fds, closed, already say what happened).

Pure: records in, msgspec Structs and their text out.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingOf
from typing import Any, NamedTuple

import msgspec

from ._escape import escape
from ._names import ESCAPED, shown
from ._records import File, Mapping, Task
from ._show_taskfiles import is_unlinked

__all__ = [
    "TaskFileChange",
    "diff_task_files",
    "file_ref",
    "file_ref_text",
    "render_task_files",
]


class TaskFileChange(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One file a task holds by reference, or one namespace, that differs."""

    pid: int
    field: str
    """``cwd``, ``root``, ``exe``, ``mapping`` or ``namespace``."""
    a: Any
    b: Any
    """``cwd``/``root``/``exe``: ``{type, path, dev, ino, path_state}`` or None;
    ``mapping``: ``{file: {type, path, dev, ino, path_state}, ranges: [[start, end,
    perms, offset], ...]}``, None on the side that does not map the file;
    ``namespace``: the inode, or None."""
    namespace: str | None = None
    """The namespace type (``net``, ``mnt``...) of a ``namespace`` change."""


def file_ref(f: File) -> dict[str, Any]:
    """A file as a diff names it: ``{type, path, dev, ino}``, with ``path_encoding``
    when its path is not UTF-8."""
    doc: dict[str, Any] = {"type": f.type, "path": f.path, "dev": f.dev, "ino": f.ino}
    if f.path_bytes is not None:
        doc["path_encoding"] = ESCAPED
    return doc


def file_ref_text(doc: Any) -> str:
    """:func:`file_ref`'s dict as one escaped phrase: ``reg /usr/bin/svc (ino 5)``."""
    if not isinstance(doc, dict):
        return "none"
    path = shown(str(doc["path"]), doc.get("path_encoding"))
    state = doc.get("path_state")
    more = f", {escape(str(state))}" if state not in (None, "ok") else ""
    return f"{escape(str(doc['type']))} {path} (ino {doc['ino']}{more})"


def _held_ref(f: File | None, file_id: int | None) -> dict[str, Any] | None:
    if file_id is None:
        return None
    if f is None:  # the reader refuses this; a diff must not rely on it
        return {"type": "?", "path": f"file {file_id}", "dev": 0, "ino": 0}
    return file_ref(f) | {"path_state": f.path_state}


def _stale(f: File | None) -> bool:
    """Unlinked, or replaced by another file at its path: what a task holding it runs
    or reads is no longer what is on disk (an upgrade it has not restarted for)."""
    return f is not None and (is_unlinked(f) or f.path_state == "replaced")


_Range = tuple[int, int, str, int]
_Key = tuple[int, int, str]
"""A mapped file's identity: (dev, ino, ""), or (0, 0, "file N") for an id the image
lacks."""


class _Mapped(NamedTuple):
    ref: dict[str, Any] | None
    ranges: set[_Range]
    stale: bool


def _mapped(maps: list[Mapping], files: MappingOf[int, File]) -> dict[_Key, _Mapped]:
    """The task's mapped files by (dev, ino), each with its set of ranges."""
    out: dict[_Key, _Mapped] = {}
    for m in maps:
        f = files.get(m.file)
        key = (f.dev, f.ino, "") if f is not None else (0, 0, f"file {m.file}")
        entry = out.get(key)
        if entry is None:
            entry = out[key] = _Mapped(_held_ref(f, m.file), set(), _stale(f))
        entry.ranges.add((m.start, m.end, m.perms, m.offset))
    return out


def _doc(entry: _Mapped | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"file": entry.ref, "ranges": [list(r) for r in sorted(entry.ranges)]}


def _captured(t: Task) -> bool:
    return not t.state.startswith("Z") and bool(
        t.namespaces
        or t.cwd is not None
        or t.root_file is not None
        or t.exe is not None
        or t.mappings
        or t.task_files_error is not None
    )


def diff_task_files(
    ta: Task, fa: MappingOf[int, File], tb: Task, fb: MappingOf[int, File]
) -> tuple[list[TaskFileChange], int]:
    """The changes from task ``ta`` (of the image whose files are ``fa``) to ``tb``,
    and how many of B's mapped files and executable are stale (unlinked or replaced)
    where A's were not."""
    if not (_captured(ta) and _captured(tb)):
        return [], 0
    partial = ta.task_files_error is not None or tb.task_files_error is not None
    out: list[TaskFileChange] = []
    unlinked = 0
    for field, ida, idb in (
        ("cwd", ta.cwd, tb.cwd),
        ("root", ta.root_file, tb.root_file),
        ("exe", ta.exe, tb.exe),
    ):
        if partial and (ida is None or idb is None):
            continue
        file_a, file_b = fa.get(ida or 0), fb.get(idb or 0)
        a, b = _held_ref(file_a, ida), _held_ref(file_b, idb)
        if a != b:
            out.append(TaskFileChange(pid=tb.pid, field=field, a=a, b=b))
            if field == "exe":
                unlinked += _stale(file_b) and not _stale(file_a)
    if not (partial and (not ta.mappings or not tb.mappings)):
        ma, mb = _mapped(ta.mappings, fa), _mapped(tb.mappings, fb)
        for key, eb in mb.items():
            ea = ma.get(key)
            if ea is None or ea.ranges != eb.ranges or ea.ref != eb.ref:
                out.append(TaskFileChange(pid=tb.pid, field="mapping", a=_doc(ea), b=_doc(eb)))
            unlinked += eb.stale and not (ea is not None and ea.stale)
        out += [
            TaskFileChange(pid=tb.pid, field="mapping", a=_doc(ea), b=None)
            for key, ea in ma.items()
            if key not in mb
        ]
    for kind in sorted(ta.namespaces.keys() | tb.namespaces.keys()):
        a_ino, b_ino = ta.namespaces.get(kind), tb.namespaces.get(kind)
        if a_ino != b_ino and not (partial and (a_ino is None or b_ino is None)):
            out.append(
                TaskFileChange(pid=tb.pid, field="namespace", namespace=kind, a=a_ino, b=b_ino)
            )
    return out, unlinked


def _range_text(r: list[Any]) -> str:
    return f"{r[0]:x}-{r[1]:x} {escape(str(r[2]))} {r[3]:#x}"


def _mapping_line(c: TaskFileChange) -> str:
    if c.a is None or c.b is None:
        sign, side = ("+", c.b) if c.a is None else ("-", c.a)
        n = len(side["ranges"])
        return f"{sign} pid {c.pid} mem: {file_ref_text(side['file'])}, {n} range{'s' * (n != 1)}"
    what = file_ref_text(c.b["file"])
    if c.a["file"] != c.b["file"]:  # the same inode, its path_state changed
        what = f"{file_ref_text(c.a['file'])} -> {what}"
    ra = {tuple(r) for r in c.a["ranges"]}
    rb = {tuple(r) for r in c.b["ranges"]}
    moved = [f"+{_range_text(list(r))}" for r in sorted(rb - ra)]
    moved += [f"-{_range_text(list(r))}" for r in sorted(ra - rb)]
    return f"~ pid {c.pid} mem: {what}" + (f": ranges {', '.join(moved)}" if moved else "")


def render_task_files(changes: list[TaskFileChange]) -> list[str]:
    """One line per change, every name escaped: ``~ pid 10 cwd: dir /a (ino 5) -> dir
    /b (ino 7)``, ``+ pid 10 mem: reg /usr/lib/x.so (ino 8), 2 ranges``, ``~ pid 10
    namespace net: 4026531840 -> 4026532300``."""
    lines = []
    for c in changes:
        if c.field == "mapping":
            lines.append(_mapping_line(c))
        elif c.field == "namespace":
            a, b = ("none" if v is None else str(v) for v in (c.a, c.b))
            lines.append(f"~ pid {c.pid} namespace {escape(str(c.namespace))}: {a} -> {b}")
        else:
            lines.append(f"~ pid {c.pid} {c.field}: {file_ref_text(c.a)} -> {file_ref_text(c.b)}")
    return lines
