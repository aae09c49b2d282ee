"""Does a recorded path still name the open file?  (``File.path_state``)

The kernel's link text is the path the file was opened by, " (deleted)" appended once
that name is unlinked.  That is not enough to find the file again: the name may be gone
while another hard link keeps the inode (``deleted-linked``), another file may have been
put at the path (``replaced``), the path may be gone with no " (deleted)" (a /proc/PID
file whose process exited: ``proc-exited``; a file in a removed directory: ``missing``).

A link text ending in " (deleted)" while the file has links left is ambiguous: its name
was unlinked while another hard link keeps it, or the file is really named so.  The
whole name is looked up with the rest: if it names the file itself, the suffix is the
name's own, and the file is not unlinked.  (With no link left the suffix is always the
kernel's.)

When: the deleted states come from what the frozen scan read; the path itself is looked
up *after the thaw*, in a worker thread, through the task's root as it was while frozen
(an O_PATH descriptor of ``/proc/PID/root`` opened once per (mount namespace, root)
while frozen, so the lookup sees the task's mounts, even in another mount namespace,
and survives the task's exit).  The filesystem is never frozen (anything outside the tree
can rename a file at any time), so a lookup while frozen would only exclude the tree's own
changes during a few hundred milliseconds, at one path lookup per description (several
thousand on a large tree) added to the frozen window.  A tree that renames its files
right after the thaw can therefore be reported ``replaced`` or ``missing``: a false alarm,
never a silently wrong file.  Lookups are cached per (view, path).

:func:`decide` is the pure decision, tested on literal input.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from ._parts import TaskPart, new_files
from ._procparse import parse_mountinfo

__all__ = ["PATH_KINDS", "PathChecker", "decide", "proc_pid_path"]

PATH_KINDS = frozenset({"reg", "dir", "fifo", "chr", "blk", "link"})
"""Kinds whose description was opened by a path (a FIFO's, a device node's...)."""

Found = tuple[int, int] | int | None
"""What the path names now: (dev, ino), an errno, or None (not looked up)."""

_GONE = (errno.ENOENT, errno.ENOTDIR)
DELETED = " (deleted)"
"""What the kernel appends to the link text of a file whose name was unlinked."""


def proc_pid_path(path: str, mount_point: str) -> bool:
    """Whether ``path``, on a proc mount at ``mount_point``, is inside a /proc/PID
    directory (whose files go away with the process)."""
    prefix = mount_point.rstrip("/") + "/"
    if not path.startswith(prefix):
        return False
    return path[len(prefix) :].split("/", 1)[0].isdigit()


def decide(
    kind: str,
    path: str,
    deleted: bool,
    nlink: int,
    dev: int,
    ino: int,
    in_proc_pid: bool,
    found: Found,
) -> str:
    """The ``path_state`` of one description (see ``File.path_state``)."""
    if kind not in PATH_KINDS or not path.startswith("/"):
        return _no_path(kind, path)
    if in_proc_pid and (deleted or found != (dev, ino)):
        # Its process exited (or the pid was reused: a new directory); procfs inodes are
        # never replaced otherwise.
        return "proc-exited"
    if deleted:
        return "deleted" if nlink == 0 else "deleted-linked"
    if found is None:
        return "unchecked"
    if isinstance(found, int):
        return "missing" if found in _GONE else "unchecked"
    return "ok" if found == (dev, ino) else "replaced"


def _no_path(kind: str, path: str) -> str:
    # A kind opened by a path with no link text at all: the kernel would not give it,
    # longer than PATH_MAX (readlink's ENAMETOOLONG; the readers record it empty).
    return "too-long" if kind in PATH_KINDS and not path else "none"


class PathChecker:
    """Looks up the recorded paths of a capture, as each task sees them."""

    def __init__(self) -> None:
        self._roots: dict[tuple[int, str], int | None] = {}

    def open_root(self, pid: int, mnt_ns: int, root: str) -> None:
        """While frozen: keep the task's root, once per (mount namespace, root)."""
        key = (mnt_ns, root)
        if key in self._roots:
            return
        if not root:
            # Its root's path is longer than PATH_MAX: the recorded paths are not
            # relative to it, so they cannot be looked up through it (left unchecked).
            self._roots[key] = None
            return
        try:
            self._roots[key] = os.open(
                f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError:  # it exited (only when not frozen): its paths stay unchecked
            self._roots[key] = None

    def check(self, parts: Iterable[TaskPart]) -> None:
        """After the thaw: set ``path_state`` on every new file of ``parts``
        (``_parts.TaskPart``)."""
        parts = list(parts)
        procs: dict[int, str] = {}  # mnt_id of a proc mount -> its mount point
        for part in parts:
            if part.mountinfo is not None:
                for m in parse_mountinfo(part.mountinfo):
                    if m.fstype == "proc":
                        procs[m.mnt_id] = m.mount_point
        cache: dict[tuple[int | None, str], Found] = {}
        for part in parts:
            rootfd = self._roots.get((part.meta.mnt_ns, part.meta.root))
            for new in new_files(part):
                raw = new.raw
                if new.kind not in PATH_KINDS or not new.path.startswith("/"):
                    new.path_state = _no_path(new.kind, new.path)
                    continue
                mount_point = procs.get(raw.mnt_id)
                in_proc = mount_point is not None and proc_pid_path(new.path, mount_point)
                if (
                    new.deleted
                    and raw.st_nlink
                    and raw.link.endswith(DELETED)
                    and rootfd is not None
                ):
                    whole = new.path + DELETED
                    if _cached(cache, rootfd, whole) == (raw.st_dev, raw.st_ino):
                        # The suffix is the file's own name: it is not unlinked.
                        new.path, new.deleted = whole, False
                found: Found = None
                if rootfd is not None and (not new.deleted or in_proc):
                    found = _cached(cache, rootfd, new.path)
                new.path_state = decide(
                    new.kind,
                    new.path,
                    new.deleted,
                    raw.st_nlink,
                    raw.st_dev,
                    raw.st_ino,
                    in_proc,
                    found,
                )

    def close(self) -> None:
        for fd in self._roots.values():
            if fd is not None:
                os.close(fd)
        self._roots.clear()


def _cached(cache: dict[tuple[int | None, str], Found], rootfd: int, path: str) -> Found:
    key = (rootfd, path)
    if key not in cache:
        cache[key] = _lookup(rootfd, path)
    return cache[key]


def _lookup(rootfd: int, path: str) -> Found:
    # Relative to the task's root; the last component is not followed (the link text
    # names the object itself, a symlink for an O_PATH|O_NOFOLLOW fd).
    try:
        st = os.lstat(path.lstrip("/") or ".", dir_fd=rootfd)
    except OSError as exc:
        return exc.errno
    return (st.st_dev, st.st_ino)
