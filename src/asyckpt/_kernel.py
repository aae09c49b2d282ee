"""Thin wrappers for the syscalls Python's os module lacks: kcmp(2) (KCMP_EPOLL_TFD
too), pidfd_getfd(2), openat2(2), timerfd, signalfd, inotify and epoll_ctl with any user
data (for restore), the f_type of statfs(2), and the fcntls that read an open file
description's I/O owner.

They are cheap (about a microsecond; KCMP_EPOLL_TFD walks the epoll's watches, so it
grows with their number) and never touch /proc, so callers may use them from the worker
thread that is already doing a task's /proc reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import struct
from collections.abc import Callable

from ._errors import KernelUnsupported, translate_oserror
from ._rows import DedupRows

__all__ = [
    "KCMP_EPOLL_TFD",
    "KCMP_FILE",
    "KCMP_FILES",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "OwnerRow",
    "dedup_rows",
    "epoll_add",
    "fd_owner",
    "fd_owner_at",
    "fs_magic",
    "inotify",
    "inotify_add_watch",
    "kcmp",
    "kcmp_epoll_tfd",
    "kcmp_files",
    "kcmp_raw",
    "openat2",
    "pidfd_getfd",
    "renameat2",
    "same_file",
    "signalfd",
    "timerfd",
    "unshare_fs",
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
    return _kcmp_ctypes(pid1, pid2, kind, idx1, idx2)


def _kcmp_ctypes(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
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


try:
    from ._fdscan import kcmp as _kcmp_c
except ImportError:  # no C accelerator: ctypes
    pass
else:

    def kcmp_raw(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
        # Called for every task of a frozen tree (KCMP_FILES, plan_tables): ctypes costs
        # several times the syscall.
        return _kcmp_c(pid1, pid2, kind, idx1, idx2)


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


dedup_rows: DedupRows | None = None
"""The C dedup loop for kcmp_files (RecordBuilder's ``dedup_rows``), if built."""
with contextlib.suppress(ImportError):  # no C accelerator: RecordBuilder's Python loop
    from ._fdscan import dedup_rows


def same_file(pid1: int, pid2: int, fd: int) -> bool:
    """Whether ``fd`` of ``pid1`` and ``fd`` of ``pid2`` are one open file description;
    any error (no such fd, a task gone) is False.  The fallback reader's inherited check,
    as _fdscan.c makes it."""
    global _kcmp_nr
    if _kcmp_nr is None:
        _kcmp_nr = _nr(_KCMP_NR)
    return int(_syscall(_kcmp_nr, pid1, pid2, KCMP_FILE, fd, fd)) == 0


def _pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """Duplicate the target's fd into this process: the same open file description."""
    res = _syscall(_PIDFD_GETFD_NR, pidfd, targetfd, 0)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


pidfd_getfd: Callable[[int, int], int] = _pidfd_getfd
"""Duplicate the target's fd into this process: the same open file description."""

try:
    from ._fdscan import pidfd_getfd as _pidfd_getfd_c
except ImportError:  # no C accelerator: the ctypes path above
    pass
else:
    pidfd_getfd = _pidfd_getfd_c  # the same call, without ctypes' overhead


F_GETSIG = 11
F_GETOWN_EX = 16
F_GETOWNER_UIDS = 17

OwnerRow = tuple[int, int, int, int | None, int | None]
"""(type, pid, sig, uid, euid) as F_GETOWN_EX, F_GETSIG and F_GETOWNER_UIDS give them;
uid and euid None when no owner is set or the kernel lacks F_GETOWNER_UIDS."""


def _fd_owner_py(fd: int) -> OwnerRow:
    kind, pid = struct.unpack("ii", fcntl.fcntl(fd, F_GETOWN_EX, bytes(8)))
    sig = fcntl.fcntl(fd, F_GETSIG)
    if pid == 0:
        return kind, pid, sig, None, None
    try:
        uid, euid = struct.unpack("II", fcntl.fcntl(fd, F_GETOWNER_UIDS, bytes(8)))
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a kernel without CONFIG_CHECKPOINT_RESTORE
            raise
        return kind, pid, sig, None, None
    return kind, pid, sig, uid, euid


def _fd_owner_at_py(pidfd: int, fd: int) -> OwnerRow:
    ours = pidfd_getfd(pidfd, fd)
    try:
        return _fd_owner_py(ours)
    finally:
        os.close(ours)


fd_owner: Callable[[int], OwnerRow] = _fd_owner_py
"""The I/O owner of our descriptor ``fd``: F_GETOWN_EX, F_GETSIG, and F_GETOWNER_UIDS
only when an owner is set.  OSError as the fcntls raise it (EBADF on O_PATH)."""
fd_owner_at: Callable[[int, int], OwnerRow] = _fd_owner_at_py
"""``fd_owner`` of the fd ``fd`` of the task of ``pidfd``: pidfd_getfd (the same open
file description, never a re-open), read, closed."""
try:
    from ._fdscan import fd_owner as _fd_owner_c
    from ._fdscan import fd_owner_at as _fd_owner_at_c
except ImportError:  # no C accelerator: the fcntl module
    pass
else:  # the same in one call: per description, while the tree is frozen
    fd_owner, fd_owner_at = _fd_owner_c, _fd_owner_at_c


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


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(dirfd: int, a: str, b: str, flags: int) -> None:
    """renameat2(2) within directory ``dirfd``: RENAME_NOREPLACE (fail with EEXIST rather
    than replace ``b``) or RENAME_EXCHANGE (swap ``a`` and ``b`` in one step, whatever
    each is).  EINVAL where the filesystem cannot."""
    res = _libc.renameat2(dirfd, os.fsencode(a), dirfd, os.fsencode(b), flags)
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a, None, b)


RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_OPENAT2_NR = 437  # the unified syscall table: the same on every architecture


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) with mode 0: ``path`` resolved as ``resolve`` says (RESOLVE_IN_ROOT:
    ``dirfd`` is the root, ``..`` and absolute symlinks stay inside it).  Raises OSError
    (ENOSYS before Linux 5.6)."""
    how = _OpenHow(flags, 0, resolve)
    res = _syscall(
        _OPENAT2_NR,
        dirfd,
        os.fsencode(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(res)


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _check(res: int, what: str) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res


TFD_TIMER_ABSTIME = 1
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, u64); kernels with CONFIG_CHECKPOINT_RESTORE


def timerfd(
    clockid: int, flags: int, settime_flags: int, value: tuple[int, int], interval: tuple[int, int]
) -> int:
    """timerfd_create(2) then timerfd_settime(2); ``value`` and ``interval`` are
    (seconds, nanoseconds)."""
    fd = _check(_libc.timerfd_create(clockid, flags), "timerfd_create")
    spec = _Itimerspec(_Timespec(*interval), _Timespec(*value))
    try:
        _check(
            _libc.timerfd_settime(fd, settime_flags, ctypes.byref(spec), None), "timerfd_settime"
        )
    except OSError:
        os.close(fd)
        raise
    return fd


def signalfd(mask: int, flags: int) -> int:
    """signalfd(2) of a new fd accepting the signals of ``mask`` (bit N-1: signal N)."""
    sigset = (ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))()
    for word in range(64 // (8 * ctypes.sizeof(ctypes.c_ulong))):
        sigset[word] = (mask >> (word * 8 * ctypes.sizeof(ctypes.c_ulong))) & ctypes.c_ulong(
            -1
        ).value
    return _check(_libc.signalfd(-1, ctypes.byref(sigset), flags), "signalfd")


class _EpollEvent(ctypes.Structure):
    # The kernel's struct epoll_event is packed on x86-64 only (__EPOLL_PACKED).
    _pack_ = 1 if platform.machine() == "x86_64" else 0
    _fields_ = (("events", ctypes.c_uint32), ("data", ctypes.c_uint64))


EPOLL_CTL_ADD = 1


def epoll_add(epfd: int, fd: int, events: int, data: int) -> None:
    """epoll_ctl(2) EPOLL_CTL_ADD with any 64-bit user data (select.epoll sets it to fd)."""
    event = _EpollEvent(events, data)
    _check(_libc.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, ctypes.byref(event)), "epoll_ctl")


def inotify(flags: int) -> int:
    """inotify_init1(2)."""
    return _check(_libc.inotify_init1(flags), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """inotify_add_watch(2): the watch descriptor."""
    return _check(
        _libc.inotify_add_watch(fd, os.fsencode(path), ctypes.c_uint32(mask)), "inotify_add_watch"
    )


_CLONE_FS = 0x200


def unshare_fs() -> None:
    """unshare(CLONE_FS) for the calling thread: its root, working directory and umask
    its own from now on (Python 3.11's ``os`` has no ``unshare``)."""
    _check(_libc.unshare(_CLONE_FS), "unshare(CLONE_FS)")
