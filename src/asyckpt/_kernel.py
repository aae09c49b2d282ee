"""Thin wrappers for the syscalls Python's os module lacks: kcmp(2) (KCMP_EPOLL_TFD
too), pidfd_getfd(2) and the f_type of statfs(2).

They are cheap (about a microsecond; KCMP_EPOLL_TFD walks the epoll's watches, so it
grows with their number) and never touch /proc, so callers may use them from the worker
thread that is already doing a task's /proc reads.
"""

from __future__ import annotations

import ctypes
import os
import platform

from ._errors import KernelUnsupported, translate_oserror

__all__ = [
    "KCMP_EPOLL_TFD",
    "KCMP_FILE",
    "KCMP_FILES",
    "fs_magic",
    "kcmp",
    "kcmp_epoll_tfd",
    "kcmp_files",
    "kcmp_raw",
    "pidfd_getfd",
]

KCMP_FILE = 0
KCMP_FILES = 2
KCMP_EPOLL_TFD = 7

# kcmp predates the unified syscall table, so its number differs per architecture;
# pidfd_getfd (438) is the same everywhere.
_KCMP_NR = {
    "x86_64": 312,
    "aarch64": 272,
    "i686": 349,
    "i386": 349,
    "ppc64le": 354,
    "s390x": 343,
    "riscv64": 272,
    "armv7l": 378,
}
_PIDFD_GETFD_NR = 438

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _nr(table: dict[str, int]) -> int:
    machine = platform.machine()
    try:
        return table[machine]
    except KeyError:
        raise KernelUnsupported(f"kcmp syscall number unknown for {machine}") from None


_kcmp_nr: int | None = None


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """Order two kernel objects: 0 equal, 1 first is less, 2 first is greater.

    The order is the kernel's (obfuscated) pointer order: stable for one boot, so it can
    drive a binary search.
    """
    try:
        return kcmp_raw(pid1, pid2, kind, idx1, idx2)
    except OSError as exc:
        raise translate_oserror(exc, pid=pid2, fd=idx2, what="kcmp") from None


def kcmp_raw(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """:func:`kcmp`, raising the untranslated OSError (for callers that tell errnos
    apart)."""
    global _kcmp_nr
    if _kcmp_nr is None:
        _kcmp_nr = _nr(_KCMP_NR)
    res = _syscall(_kcmp_nr, pid1, pid2, kind, idx1, idx2)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


class _EpollSlot(ctypes.Structure):
    """``struct kcmp_epoll_slot`` (linux/kcmp.h)."""

    _fields_ = (("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32))


def kcmp_epoll_tfd(pid1: int, fd1: int, pid2: int, efd: int, tfd: int, toff: int) -> int:
    """kcmp(KCMP_EPOLL_TFD): order ``pid1``'s ``fd1`` against the file watched by the
    epoll ``efd`` of ``pid2`` as its target ``tfd``, the ``toff``-th of that number (0 when
    equal, as :func:`kcmp`).

    The kernel finds the target by the fd number it was *added* with (the ``tfd:`` of
    the epoll's fdinfo), counting the watches of that number in fdinfo order, never in
    ``pid2``'s fd table: a target whose fd was closed or reused since is still found.
    ENOENT: the epoll has no such target; EBADF: ``fd1`` or ``efd`` is not open.
    """
    global _kcmp_nr
    if _kcmp_nr is None:
        _kcmp_nr = _nr(_KCMP_NR)
    slot = _EpollSlot(efd, tfd, toff)
    # The slot is passed by address in the last argument (a pointer in a long).
    res = _syscall(
        _kcmp_nr,
        ctypes.c_long(pid1),
        ctypes.c_long(pid2),
        ctypes.c_long(KCMP_EPOLL_TFD),
        ctypes.c_long(fd1),
        ctypes.byref(slot),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def kcmp_files(a: tuple[int, int], b: tuple[int, int]) -> int:
    """kcmp(KCMP_FILE) of two (pid, fd) pairs; see :func:`kcmp`."""
    return kcmp(a[0], b[0], KCMP_FILE, a[1], b[1])


try:
    from ._fdscan import kcmp_files as _kcmp_files_c
except ImportError:  # no C accelerator: the ctypes path above
    pass
else:

    def kcmp_files(a: tuple[int, int], b: tuple[int, int]) -> int:
        try:
            return _kcmp_files_c(a, b)
        except OSError as exc:
            raise translate_oserror(exc, pid=b[0], fd=b[1], what="kcmp") from exc


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """Duplicate the target's fd into this process: the same open file description."""
    res = _syscall(_PIDFD_GETFD_NR, pidfd, targetfd, 0)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


# struct statfs begins with f_type, a machine word everywhere but s390x (an unsigned int
# there); the buffer is larger than any architecture's struct.
_F_TYPE = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_ulong
_STATFS_SIZE = 256


def fs_magic(path: str) -> int:
    """statfs(2)'s f_type (the filesystem's magic number) for ``path``.  Through a
    /proc/PID/fd/N magic link it is that of the open file itself, pipes and sockets too."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(_F_TYPE.from_buffer(buf).value)
