"""Unlinked files made again (the I/O): a memfd as a memfd, an unlinked regular file as
an unnamed file (``O_TMPFILE``) in the directory it lived in, so on its own file system;
each holding the image's content, holes kept.

The directory is resolved by the caller's ``resolve`` (restore's own: ``openat2`` under
the root, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, O_PATH), checked to be a directory
through that O_PATH fd, and the file made relative to it (``"."``), so nothing is
resolved twice.  ``O_EXCL`` makes the file unlinkable for good: like the unlinked file
it stands for, it never gets a name (no ``linkat``), and it goes with its last fd.
When it cannot be made there (the directory gone, not writable, a file system without
O_TMPFILE), the file is a memfd, as a :class:`Fallback` says.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from ._restore_model import Inode

__all__ = ["Fallback", "NewInode", "make_inode"]

_F_SEAL_SEAL = 1

# Why an unnamed file could not be made, by the errno that said so: resolving its
# directory, then making the file there.  Any other error (ELOOP for a magic link, EIO,
# ENOSPC...) fails the restore.
_UNREACHABLE = {
    errno.ENOENT: "directory gone",
    errno.ENOTDIR: "directory gone",
    errno.EACCES: "directory not searchable",
}
_UNWRITABLE = {
    errno.EACCES: "directory not writable",
    errno.EPERM: "directory not writable",
    errno.EROFS: "directory not writable",
    errno.EOPNOTSUPP: "no O_TMPFILE on its file system",
    errno.EISDIR: "no O_TMPFILE on its file system",  # kernels before 3.11
}


class Fallback(NamedTuple):
    """An unlinked regular file restored as a memfd: the task and fd it is first made
    for, its path in the image (without `` (deleted)``), and why."""

    pid: int
    fd: int
    path: str
    why: str


class NewInode(NamedTuple):
    fd: int
    """Read-write, close-on-exec: each description is opened from it."""
    mode: int | None
    """The unnamed file's permission bits, for the caller to set (``fchmod``) once every
    description is opened from it: a mode that denies its owner the access of one would
    make that open fail.  None: a memfd."""
    why: str | None
    """Why an unlinked regular file is a memfd; None when it is not one or is made so."""


def make_inode(inode: Inode, resolve: Callable[[str], int]) -> NewInode:
    """A new file holding ``inode``'s content.  ``resolve(path)`` returns an O_PATH fd
    of ``path`` inside the root (OSError)."""
    if inode.path is None:
        return NewInode(_memfd(inode), None, None)
    if not inode.path:
        return NewInode(_memfd(inode), None, "no absolute path in the image")
    fd = _tmpfile(os.path.dirname(inode.path), resolve)
    if isinstance(fd, str):
        return NewInode(_memfd(inode), None, fd)
    try:
        fill(fd, inode)
        return NewInode(fd, inode.mode, None)
    except BaseException:
        os.close(fd)
        raise


def _tmpfile(directory: str, resolve: Callable[[str], int]) -> int | str:
    """The unnamed file's fd, read-write whatever the image's access (each description
    reopens it with its own), or why it cannot be made."""
    try:
        opath = resolve(directory)
    except OSError as exc:
        return _why(exc, _UNREACHABLE)
    try:
        if not stat.S_ISDIR(os.fstat(opath).st_mode):
            return "directory gone"
        flags = os.O_TMPFILE | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC
        return os.open(".", flags, 0o600, dir_fd=opath)
    except OSError as exc:
        return _why(exc, _UNWRITABLE)
    finally:
        os.close(opath)


def _why(exc: OSError, known: dict[int, str]) -> str:
    why = known.get(exc.errno or 0)
    if why is None:
        raise exc
    return why


def _memfd(inode: Inode) -> int:
    """A memfd holding the content, then sealed."""
    sealing = inode.seals != _F_SEAL_SEAL  # a memfd made without ALLOW_SEALING reads so
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0)
    fd = os.memfd_create(inode.name, flags)
    try:
        fill(fd, inode)
        if sealing and inode.seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, inode.seals)
        return fd
    except BaseException:
        os.close(fd)
        raise


def fill(fd: int, inode: Inode) -> None:
    """Write the saved content back at its offsets: the size first, so what is not
    written stays a hole."""
    os.ftruncate(fd, inode.size)
    for offset, data in inode.runs:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)) :]
