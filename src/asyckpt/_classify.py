"""Pure classification of one fd from what /proc says about it."""

from __future__ import annotations

import os
import stat

from ._procparse import holds_lease

__all__ = [
    "O_ASYNC",
    "access_mode",
    "kernel_kind",
    "owner_matters",
    "split_deleted",
    "task_relative_path",
]

_DELETED = " (deleted)"
O_PATH = os.O_PATH
O_ASYNC = 0o20000
"""FASYNC, which Python's os module does not name."""


def kernel_kind(st_mode: int, link: str) -> str:
    """The kernel-level kind of an fd: reg, dir, link, pipe, fifo, socket, chr, blk or anon.

    Anonymous inodes (eventfd, epoll, ...) have no file type bits of their own that
    distinguish them, but their link text always starts with ``anon_inode:``; pidfds on
    newer kernels live on pidfs and read ``pidfd:`` or ``anon_inode:[pidfd]``.
    """
    if link.startswith(("anon_inode:", "pidfd:")):
        return "anon"
    fmt = stat.S_IFMT(st_mode)
    if fmt == stat.S_IFREG:
        return "reg"
    if fmt == stat.S_IFDIR:
        return "dir"
    if fmt == stat.S_IFLNK:
        return "link"
    if fmt == stat.S_IFIFO:
        # An unnamed pipe reads "pipe:[ino]"; a FIFO has a real path.
        return "pipe" if link.startswith("pipe:[") else "fifo"
    if fmt == stat.S_IFSOCK:
        return "socket"
    if fmt == stat.S_IFCHR:
        return "chr"
    if fmt == stat.S_IFBLK:
        return "blk"
    return "anon"


_ACCESS = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}


def access_mode(flags: int) -> str:
    """``r``, ``w``, ``rw`` or ``path`` from the fdinfo open flags."""
    if flags & O_PATH:
        return "path"
    # O_ACCMODE 3 is invalid for open(2) but some drivers use it for ioctl-only opens.
    return _ACCESS.get(flags & os.O_ACCMODE, "rw")


def split_deleted(link: str, nlink: int) -> tuple[str, bool]:
    """Strip the kernel's " (deleted)" suffix and say whether the file was unlinked.

    The kernel adds the suffix when the name the fd was opened by is gone, even if another
    hard link keeps the inode alive (nlink > 0); nlink 0 also counts, for a file whose
    path the kernel shows without the suffix.  A file really named "x (deleted)" is
    indistinguishable here from an unlinked "x" that another hard link keeps: telling
    them apart needs a look at the filesystem, which this pure function does not take
    (the path checks look the whole name up when nlink > 0, after the thaw: ``_paths``).
    """
    if link.endswith(_DELETED) and link.startswith("/"):
        return link[: -len(_DELETED)], True
    return link, nlink == 0 and link.startswith("/")


def task_relative_path(path: str, root: str) -> str:
    """Rewrite a path read through /proc (relative to *our* root) to the task's view.

    A chrooted task whose root is /srv/jail sees /srv/jail/etc/x as /etc/x.
    """
    if root == "/" or not path.startswith("/"):
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root) :]
    return path


def owner_matters(kind: str, flags: int, fdinfo_rest: bytes) -> bool:
    """Whether the I/O owner of a description is read (once, while frozen), from what
    the scan already knows: never through ``O_PATH`` (no fcntl allowed); for regular
    files and directories only when a signal can follow, ``O_ASYNC`` set or a lease
    held (its break is signalled to the owner); for every other kind always.

    An ``F_SETOWN`` on a regular file or directory with neither has no effect until one
    is set, and is not recorded: the deliberate price of not taking every regular file's
    description while frozen.  The known gap: a directory watched with dnotify
    (``F_NOTIFY``), which signals the owner without ``O_ASYNC`` and which nothing in
    /proc shows."""
    if flags & O_PATH:
        return False
    if kind == "reg" or kind == "dir":
        return bool(flags & O_ASYNC) or (b"lock:" in fdinfo_rest and holds_lease(fdinfo_rest))
    return True
