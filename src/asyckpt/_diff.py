"""diff: what changed between two images of one tree.  Pure: two decoded images in,
msgspec Structs out (and their text form); no I/O.

Matching, as a supervisor asks "what did my child do since the last look":

- tasks by identity, pid plus start time (a pid reused by another process is one task
  removed and one added, never the same task);
- within a task present in both, fds by number (a thread with an fd table of its own
  is compared under its tid);
- an fd present in both is the same when it names the same file: for pipes, FIFOs and
  sockets their inode, for everything else device and inode.  Otherwise it was closed
  and reopened on another file meanwhile: one ``changed`` entry with field ``file``.
- on the same file, the fields compared are the description's own (``pos``,
  ``flags``, ``size``, ``path_state``, ``locks``), the fd's ``cloexec``, and from the
  bundled pipe and socket records (read raw, so the diff needs no plugin installed):
  a socket's ``state`` and ``peer_ino``, and the queues (``recv_queue``,
  ``send_queue``, ``accept_queue``, a pipe's ``queued``) only when they grew, since a
  queue that drains is the normal case and one that grows is a reader falling behind.

Anonymous inodes (eventfd, epoll...) share one inode, so two of one kind at the same
fd number are taken to be the same file.

A task's other files (cwd, root, exe, mappings) and its namespaces are compared by
``_diff_taskfiles``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from ._diff_taskfiles import (
    TaskFileChange,
    diff_task_files,
    file_ref,
    file_ref_text,
    render_task_files,
)
from ._escape import escape
from ._image import Image
from ._jsondata import json_data
from ._names import ESCAPED, shown
from ._records import File, Task
from ._show import _lock_text, _raw
from ._show_taskfiles import is_unlinked

__all__ = [
    "DiffSummary",
    "FdRef",
    "FieldChange",
    "ImageDiff",
    "ImageRef",
    "TaskFileChange",
    "TaskRef",
    "diff",
    "render_diff",
]


class ImageRef(msgspec.Struct, kw_only=True):
    """Which image a side of the diff is (its header and trailer, summed up)."""

    root_pid: int
    time: str
    hostname: str
    checksum: str
    """``sha256:`` and the image's digest."""
    format_version: int
    consistent: bool
    tasks: int
    fds: int
    files: int


class TaskRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A task that appeared or exited."""

    pid: int
    starttime: int
    comm: str
    ppid: int
    comm_encoding: str | None = None
    """``escaped`` when the comm is not UTF-8: ``comm`` is then in escaped form, as in
    ``show``'s JSON export (docs/images.md); left out otherwise."""


class FdRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An fd opened or closed between the two images."""

    pid: int
    """The task (or a thread with an fd table of its own: its tid)."""
    fd: int
    type: str
    """The file's kernel-level kind (``reg``, ``socket``, ``pipe``...)."""
    path: str
    """The file's path as the task sees it (``socket:[ino]`` for a socket)."""
    path_encoding: str | None = None
    """``escaped`` when the path is not UTF-8 (as ``TaskRef.comm_encoding``)."""


class FieldChange(msgspec.Struct, kw_only=True):
    """One field of an fd present in both images that differs."""

    pid: int
    fd: int
    field: str
    """``file`` (the fd names another file: ``a`` and ``b`` are ``{type, path, dev,
    ino}``), ``pos``, ``flags``, ``size``, ``path_state``, ``locks``, ``cloexec``,
    ``state``, ``peer_ino``, ``recv_queue``, ``send_queue``, ``accept_queue``,
    ``queued``."""
    a: Any
    b: Any


class DiffSummary(msgspec.Struct, kw_only=True):
    """Counts of what changed."""

    tasks_added: int = 0
    tasks_removed: int = 0
    opened: int = 0
    closed: int = 0
    changed: int = 0
    listeners: int = 0
    """Sockets listening in B that were not in A: opened since, or put in LISTEN."""
    connections: int = 0
    """Sockets connected in B that were not in A (state ESTABLISHED, or a peer)."""
    unlinked_held: int = 0
    """Fds of B on unlinked files that A did not hold unlinked: opened on one since, or
    whose file was deleted meanwhile."""
    queues_grown: int = 0
    """Pipe and socket queues that grew (the ``changed`` entries of queue fields)."""
    task_files: int = 0
    """``task_files`` entries: cwd, root, exe, mapped files and namespaces that changed."""
    stale_mapped: int = 0
    """Mapped files and executables of B unlinked or replaced on disk that A did not
    hold so: mapped since, or deleted or upgraded meanwhile (a restart is due)."""


class ImageDiff(msgspec.Struct, kw_only=True):
    """What changed from image ``a`` to image ``b`` (the JSON contract of ``asyckpt
    diff --json``)."""

    a: ImageRef
    b: ImageRef
    tasks_added: list[TaskRef]
    tasks_removed: list[TaskRef]
    opened: list[FdRef]
    closed: list[FdRef]
    changed: list[FieldChange]
    summary: DiffSummary
    task_files: list[TaskFileChange] = []
    """What changed among the files tasks hold beyond their fds, and their namespaces
    (format 4); last, as it was added last."""

    @property
    def same(self) -> bool:
        """Nothing changed (``asyckpt diff`` exits 0)."""
        s = self.summary
        return not (
            s.tasks_added or s.tasks_removed or s.opened or s.closed or s.changed or s.task_files
        )


# Socket and pipe record fields compared as they are, and those reported only when
# they grew.
_DATA_FIELDS = ("state", "peer_ino")
_QUEUE_FIELDS = ("recv_queue", "send_queue", "accept_queue", "queued")
_BY_INODE = frozenset({"pipe", "fifo", "socket"})

_Slot = tuple[int, int, File]
"""(fd number, cloexec as int, file) of one fd."""


def _ref(image: Image) -> ImageRef:
    h, t = image.header, image.trailer
    return ImageRef(
        root_pid=h.root_pid,
        time=h.time,
        hostname=h.hostname,
        checksum=f"sha256:{image.checksum}",
        format_version=h.format_version,
        consistent=h.consistent,
        tasks=t.tasks,
        fds=t.fds,
        files=t.files,
    )


def _task_ref(task: Task) -> TaskRef:
    return TaskRef(
        pid=task.pid,
        starttime=task.starttime,
        comm=task.comm,
        ppid=task.ppid,
        comm_encoding=_encoding(task.comm_bytes),
    )


def _encoding(raw: bytes | None) -> str | None:
    # The image's text of a name that is not UTF-8 is its escaped form already.
    return None if raw is None else ESCAPED


def _tables(image: Image, task: Task) -> Iterator[tuple[int, dict[int, tuple[bool, File]]]]:
    """(pid or tid, {fd: (cloexec, file)}) for the task's table and each table of its
    own that a thread has."""
    seen = {task.fd_table}
    yield task.pid, {fd.fd: (fd.cloexec, f) for fd, f in image.fds(task.fd_table)}
    for th in task.threads:
        if th.fd_table not in seen:
            seen.add(th.fd_table)
            yield th.tid, {fd.fd: (fd.cloexec, f) for fd, f in image.fds(th.fd_table)}


def _identity(f: File) -> tuple[str, int, int] | tuple[str, int, int, str]:
    if f.type in _BY_INODE:
        return (f.type, 0, f.ino)
    if f.type == "anon":
        return (f.type, f.dev, f.ino, f.path)
    return (f.type, f.dev, f.ino)


def _fd_ref(pid: int, fd: int, f: File) -> FdRef:
    return FdRef(pid=pid, fd=fd, type=f.type, path=f.path, path_encoding=_encoding(f.path_bytes))


def _listening(data: dict[str, Any]) -> bool:
    return data.get("state") == "LISTEN"


def _connected(data: dict[str, Any]) -> bool:
    return data.get("state") == "ESTABLISHED" or bool(data.get("peer_ino"))


def _grew(a: Any, b: Any) -> bool:
    return isinstance(b, int) and (b > a if isinstance(a, int) else b > 0)


class _Differ:
    def __init__(self) -> None:
        self.changed: list[FieldChange] = []
        self.summary = DiffSummary()

    def new_fd(self, f: File) -> None:
        """Counts for an fd of B that A did not have (opened, or retargeted)."""
        if is_unlinked(f):
            self.summary.unlinked_held += 1
        if f.type == "socket":
            data = _raw(f)
            self.summary.listeners += _listening(data)
            self.summary.connections += _connected(data)

    def same_fd(self, pid: int, fd: int, ca: bool, fa: File, cb: bool, fb: File) -> None:
        def change(field: str, a: Any, b: Any) -> None:
            self.changed.append(FieldChange(pid=pid, fd=fd, field=field, a=a, b=b))

        if _identity(fa) != _identity(fb):
            change("file", file_ref(fa), file_ref(fb))
            self.new_fd(fb)
            return
        for field in ("pos", "flags", "size", "path_state"):
            va, vb = getattr(fa, field), getattr(fb, field)
            if va != vb:
                change(field, va, vb)
        if fa.locks or fb.locks:
            locks_a = [_lock_text(lock) for lock in fa.locks]
            locks_b = [_lock_text(lock) for lock in fb.locks]
            if locks_a != locks_b:
                change("locks", locks_a, locks_b)
        if ca != cb:
            change("cloexec", ca, cb)
        if is_unlinked(fb) and not is_unlinked(fa):
            self.summary.unlinked_held += 1
        if fb.type not in _BY_INODE or fa.data == fb.data:
            return  # (most records are unchanged: not decoded at all)
        # JSON values only (an image's msgpack may hold extension types): the diff is
        # printed as JSON.
        da, db = json_data(_raw(fa)), json_data(_raw(fb))
        for field in _DATA_FIELDS:
            if da.get(field) != db.get(field):
                change(field, da.get(field), db.get(field))
        for field in _QUEUE_FIELDS:
            if _grew(da.get(field), db.get(field)):
                change(field, da.get(field), db.get(field))
                self.summary.queues_grown += 1
        if fb.type == "socket":
            self.summary.listeners += _listening(db) and not _listening(da)
            self.summary.connections += _connected(db) and not _connected(da)


def diff(image_a: Image, image_b: Image) -> ImageDiff:
    """What changed from ``image_a`` to ``image_b`` (two images of one tree, ``a`` the
    older): see the module's docstring for how tasks, fds and files are matched."""
    tasks_a = {(t.pid, t.starttime): t for t in image_a.tasks}
    tasks_b = {(t.pid, t.starttime): t for t in image_b.tasks}
    added = [_task_ref(t) for key, t in tasks_b.items() if key not in tasks_a]
    removed = [_task_ref(t) for key, t in tasks_a.items() if key not in tasks_b]
    opened: list[FdRef] = []
    closed: list[FdRef] = []
    task_files: list[TaskFileChange] = []
    differ = _Differ()
    for key, task_b in tasks_b.items():
        task_a = tasks_a.get(key)
        if task_a is None:
            continue
        tables_a = dict(_tables(image_a, task_a))
        for pid, fds_b in _tables(image_b, task_b):
            fds_a = tables_a.get(pid, {})
            for fd, (cb, fb) in fds_b.items():
                old = fds_a.get(fd)
                if old is None:
                    opened.append(_fd_ref(pid, fd, fb))
                    differ.new_fd(fb)
                else:
                    differ.same_fd(pid, fd, old[0], old[1], cb, fb)
            closed += [_fd_ref(pid, fd, fa) for fd, (_, fa) in fds_a.items() if fd not in fds_b]
        changes, stale = diff_task_files(task_a, image_a.files, task_b, image_b.files)
        task_files += changes
        differ.summary.stale_mapped += stale
    summary = differ.summary
    summary.task_files = len(task_files)
    summary.tasks_added, summary.tasks_removed = len(added), len(removed)
    summary.opened, summary.closed, summary.changed = len(opened), len(closed), len(differ.changed)
    return ImageDiff(
        a=_ref(image_a),
        b=_ref(image_b),
        tasks_added=added,
        tasks_removed=removed,
        opened=opened,
        closed=closed,
        changed=differ.changed,
        task_files=task_files,
        summary=summary,
    )


def _value(field: str, value: Any) -> str:
    if field == "file" and isinstance(value, dict):
        return file_ref_text(value)
    if field == "flags" and isinstance(value, int):
        return f"0o{value:o}"
    if field == "locks" and isinstance(value, list):
        return ", ".join(escape(str(v)) for v in value) or "none"
    return escape(str(value))


def render_diff(d: ImageDiff) -> str:
    """The text form: one line per task or fd, ``+`` for what B has and A had not,
    ``-`` the reverse, ``~`` a field that changed, then a summary line.  Empty when
    nothing changed (as ``diff(1)`` prints nothing).  Every name is escaped."""
    if d.same:
        return ""
    lines = []
    for sign, tasks in (("+", d.tasks_added), ("-", d.tasks_removed)):
        lines += [
            f"{sign} task {t.pid} ({shown(t.comm, t.comm_encoding)}) ppid {t.ppid}, "
            f"started at tick {t.starttime}"
            for t in tasks
        ]
    for sign, refs in (("+", d.opened), ("-", d.closed)):
        lines += [
            f"{sign} pid {r.pid} fd {r.fd}: {r.type} {shown(r.path, r.path_encoding)}" for r in refs
        ]
    lines += [
        f"~ pid {c.pid} fd {c.fd}: {c.field} {_value(c.field, c.a)} -> {_value(c.field, c.b)}"
        for c in d.changed
    ]
    lines += render_task_files(d.task_files)
    s = d.summary
    counts = [
        (s.tasks_added, "tasks added"),
        (s.tasks_removed, "tasks removed"),
        (s.opened, "fds opened"),
        (s.closed, "fds closed"),
        (s.changed, "fields changed"),
        (s.listeners, "new listeners"),
        (s.connections, "new connections"),
        (s.unlinked_held, "unlinked files newly held"),
        (s.queues_grown, "queues grown"),
        (s.task_files, "task files or namespaces changed"),
        (s.stale_mapped, "mapped files or executables newly stale"),
    ]
    lines.append("summary: " + ", ".join(f"{n} {what}" for n, what in counts if n))
    return "\n".join(lines)
