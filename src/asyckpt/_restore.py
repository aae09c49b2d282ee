"""Rebuilding an fd table from a :class:`~asyckpt._restore_plan.RestorePlan` (the I/O).

Two phases, so that a failure changes nothing: :func:`make` creates every open file
description above the highest fd number of the plan (close-on-exec), checking each
reopened file against the image, and closes all it made when one fails; :func:`install`
then dups each to its fd numbers, which cannot fail for want of anything but the fd
numbers themselves (already checked against RLIMIT_NOFILE).

Paths are opened only with ``openat2`` under the root's directory fd, with
RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, first as O_PATH: the file is checked (type,
device and inode, or with ``relaxed`` type and size) before it is opened for real,
through our own O_PATH fd, so a file swapped in meanwhile is never opened.  Open flags
never include O_CREAT, O_TRUNC, O_EXCL or O_TMPFILE (the plan removes them): the one
file made is an unlinked file's unnamed copy (``_restore_unlinked``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from ._decode import Image
from ._errors import AsyckptError, RestoreError
from ._kernel import (
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    TFD_IOC_SET_TICKS,
    TFD_TIMER_ABSTIME,
    epoll_add,
    inotify,
    inotify_add_watch,
    openat2,
    signalfd,
    timerfd,
)
from ._restore_model import (
    Bind,
    Description,
    Epoll,
    EventFd,
    FdSlot,
    Hook,
    Inotify,
    LockPlan,
    OpenPath,
    PidFd,
    Pipe,
    PipeEnd,
    Reopen,
    RestorePlan,
    SignalFd,
    SocketEnd,
    TimerFd,
    UnixConnection,
    UnixSocket,
)
from ._restore_model import MakeFailed as _Failed
from ._restore_pidfd import NewPid, make_pidfds
from ._restore_plan import plan_table
from ._restore_sockets import SOCK_TYPES, UnixMaker, bind_inet, shut
from ._restore_unlinked import Fallback, make_inode

if TYPE_CHECKING:
    from ._restore_hooks import HookHandlers

__all__ = ["Made", "close_all", "install", "make", "open_root", "restore_table"]

_IN_DONT_FOLLOW = 0x02000000


class Made(NamedTuple):
    """The descriptions made, one fd each (all at or above ``floor``, close-on-exec)."""

    fds: list[int]
    floor: int
    fallbacks: tuple[Fallback, ...] = ()
    """The unlinked regular files made as memfds, not in their directories."""


def nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_root(root: str) -> int:
    """An O_PATH fd of the directory every path is resolved in."""
    try:
        return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"--root {root}: {exc.strerror}") from None


def above(fd: int, floor: int) -> int:
    """``fd`` moved to the lowest free number at or above ``floor`` (close-on-exec), out
    of the way of the fd numbers a table is about to be installed at."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    finally:
        os.close(fd)


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Maker:
    def __init__(
        self,
        plan: RestorePlan,
        root_fd: int,
        relaxed: bool,
        floor: int,
        hooks: HookHandlers | None = None,
    ) -> None:
        self.plan = plan
        self.hooks = hooks
        self.root_fd = root_fd
        self.relaxed = relaxed
        self.floor = floor
        self.temp: list[int] = []  # inodes, pipes and pairs: closed once made
        self.inodes: dict[int, int] = {}
        self.pipes: dict[int, tuple[int, int]] = {}
        self.pairs: dict[int, tuple[int, int]] = {}
        self.taken: set[tuple[str, int, int]] = set()
        self.made: dict[int, int] = {}  # description index -> its fd, for epoll watches
        self.fallbacks: list[Fallback] = []
        self.modes: list[tuple[int, int]] = []  # unnamed files' fds, their permission bits
        self.unix = UnixMaker(root_fd, self.keep)

    def keep(self, fd: int) -> int:
        high = above(fd, self.floor)
        self.temp.append(high)
        return high

    def description(self, d: Description) -> int:
        make = d.make
        if isinstance(make, OpenPath):
            fd = self._open(make)
        elif isinstance(make, Reopen):
            fd = self._reopen(self._inode(make.inode, d), make.flags)
        elif isinstance(make, PipeEnd):
            fd = self._pipe_end(make)
        elif isinstance(make, SocketEnd):
            fd = self._socket_end(make)
        elif isinstance(make, UnixSocket):
            fd = self.unix.make_socket(d.file, make)
        elif isinstance(make, UnixConnection):
            fd = self.unix.connection(make)
        elif isinstance(make, Bind):
            fd = bind_inet(make)
        elif isinstance(make, EventFd):
            fd = self._eventfd(make)
        elif isinstance(make, TimerFd):
            fd = _timerfd(make)
        elif isinstance(make, SignalFd):
            fd = signalfd(make.mask, os.O_CLOEXEC)
        elif isinstance(make, Inotify):
            fd = self._inotify(make)
        elif isinstance(make, Hook):
            if self.hooks is None:
                raise _Failed(f"it needs handler {make.handler}'s restore hook")
            fd = self.hooks.call(make, d, self._open_for_hook, self.relaxed)
        elif isinstance(make, Epoll):
            fd = self._epoll(make)
        else:  # a PidFd: made by install, in the process that holds it
            raise _Failed("a pidfd is made once its process exists")
        try:
            if d.setfl is not None:
                fcntl.fcntl(fd, fcntl.F_SETFL, d.setfl)
            if d.pos is not None:
                os.lseek(fd, d.pos, os.SEEK_SET)
            for lock in d.locks:
                if lock.type != "posix":  # the process's: taken by install
                    take_lock(fd, lock)
            return above(fd, self.floor)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _open(self, make: OpenPath) -> int:
        nofollow = os.O_NOFOLLOW if make.fmt == stat.S_IFLNK else 0
        opath = self._resolve(make.path, nofollow)
        try:
            st = os.fstat(opath)
            self._check(make, st)
            if make.flags & os.O_PATH:
                return os.dup(opath)
            # Through our own O_PATH fd: the very file just checked, never a re-resolution.
            # A FIFO non-blocking: opening it must not wait for the other end (its flags
            # are set after).
            fifo = os.O_NONBLOCK if make.fmt == stat.S_IFIFO else 0
            flags = (make.flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC | os.O_NOCTTY | fifo
            fd = os.open(f"/proc/self/fd/{opath}", flags)
            if make.capacity and fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) != make.capacity:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, make.capacity)
            if (os.fstat(fd).st_ino, os.fstat(fd).st_dev) != (st.st_ino, st.st_dev):
                os.close(fd)
                raise _Failed("the file changed while it was opened")
            return fd
        finally:
            os.close(opath)

    def _open_for_hook(self, make: OpenPath) -> int:
        """:meth:`_open` for a restore hook's ``ctx.open``: a failure is the hook's
        RestoreRefused (it may catch it and try another way)."""
        from ._plugins.contract import RestoreRefused

        try:
            return self._open(make)
        except (OSError, _Failed) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RestoreRefused(f"{make.path}: {why}") from None

    def _inotify(self, make: Inotify) -> int:
        fd = inotify(os.O_CLOEXEC)
        try:
            for w in make.watches:
                try:
                    opath = self._resolve(w.path, 0)
                except _Failed as why:
                    raise _Failed(f"watch on {w.path}: {why}") from None
                try:
                    st = os.fstat(opath)
                    if (st.st_dev, st.st_ino) != (w.dev, w.ino) and not self.relaxed:
                        raise _Failed(f"{w.path} is another file now (--relaxed accepts it)")
                    # Through our O_PATH fd: the very file checked.  IN_DONT_FOLLOW would
                    # stop at the magic link itself.
                    inotify_add_watch(fd, f"/proc/self/fd/{opath}", w.mask & ~_IN_DONT_FOLLOW)
                finally:
                    os.close(opath)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _resolve(self, path: str, nofollow: int) -> int:
        """An O_PATH fd of ``path`` resolved inside the root."""
        try:
            return self._resolve_os(path, nofollow)
        except OSError as exc:
            raise _Failed(exc.strerror or str(exc)) from None

    def _resolve_os(self, path: str, nofollow: int) -> int:
        """:meth:`_resolve`, its failure the OSError (whose errno says why)."""
        return openat2(
            self.root_fd,
            path,
            os.O_PATH | os.O_CLOEXEC | nofollow,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )

    def _check(self, make: OpenPath, st: os.stat_result) -> None:
        if stat.S_IFMT(st.st_mode) != make.fmt:
            raise _Failed(f"it is a {_fmt(st.st_mode)} now, not a {_fmt(make.fmt)} as in the image")
        if make.fmt in (stat.S_IFCHR, stat.S_IFBLK) and st.st_rdev != make.rdev:
            raise _Failed("another device now")
        if (st.st_dev, st.st_ino) == (make.dev, make.ino):
            return
        if not self.relaxed:
            raise _Failed(
                f"another file now (inode {st.st_ino} on device {st.st_dev}, the image's "
                f"{make.ino} on {make.dev}; --relaxed accepts one of the same type and size)"
            )
        if make.fmt == stat.S_IFREG and st.st_size != make.size:
            raise _Failed(f"another file of size {st.st_size}, not {make.size} (--relaxed)")

    def _reopen(self, base: int, flags: int) -> int:
        return os.open(f"/proc/self/fd/{base}", flags | os.O_CLOEXEC | os.O_NOCTTY)

    def _inode(self, index: int, d: Description) -> int:
        """The inode's read-write fd, made for its first description ``d``; each
        description reopens it with its own access and flags."""
        fd = self.inodes.get(index)
        if fd is None:
            inode = self.plan.inodes[index]
            new = make_inode(inode, lambda path: self._resolve_os(path, 0))
            fd = self.inodes[index] = self.keep(new.fd)
            if new.mode is not None:
                self.modes.append((fd, new.mode))
            if new.why is not None:
                self.fallbacks.append(Fallback(d.pid, d.fd, inode.path or inode.name, new.why))
        return fd

    def _pipe_end(self, make: PipeEnd) -> int:
        ends = self.pipes.get(make.pipe)
        if ends is None:
            r, w = _pipe(self.plan.pipes[make.pipe])
            ends = self.pipes[make.pipe] = (self.keep(r), self.keep(w))
        fd = ends[0 if make.end == "read" else 1]
        key = ("pipe", make.pipe, fd)
        if key in self.taken:  # a second description of this end
            return self._reopen(fd, os.O_RDONLY if make.end == "read" else os.O_WRONLY)
        self.taken.add(key)
        return os.dup(fd)

    def _socket_end(self, make: SocketEnd) -> int:
        ends = self.pairs.get(make.pair)
        if ends is None:
            sotype = SOCK_TYPES[self.plan.pairs[make.pair].type]
            a, b = socket.socketpair(socket.AF_UNIX, sotype)
            ends = self.pairs[make.pair] = (self.keep(a.detach()), self.keep(b.detach()))
        return shut(os.dup(ends[make.end]), make.shutdown)

    def _epoll(self, make: Epoll) -> int:
        """An empty epoll: its watches are added at install, with the targets' own fd
        numbers (what the kernel records as ``tfd``).  Each is tried here first, on a
        scratch epoll, so that install does not fail on one the kernel refuses."""
        scratch = select.epoll()
        try:
            for w in make.watches:
                epoll_add(scratch.fileno(), self.made[w.description], w.events, w.data)
        finally:
            scratch.close()
        epoll = select.epoll()
        try:
            return os.dup(epoll.fileno())
        finally:
            epoll.close()

    def _eventfd(self, make: EventFd) -> int:
        fd = os.eventfd(0, os.EFD_CLOEXEC | (os.EFD_SEMAPHORE if make.semaphore else 0))
        if make.count:
            os.eventfd_write(fd, make.count)
        return fd


def _fmt(mode: int) -> str:
    return {
        stat.S_IFREG: "regular file",
        stat.S_IFDIR: "directory",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "FIFO",
        stat.S_IFSOCK: "socket",
    }.get(stat.S_IFMT(mode), "file")


def take_lock(fd: int, lock: LockPlan) -> None:
    """Take ``lock`` through ``fd`` without waiting; one held by another process is an
    error saying so."""
    try:
        if lock.type == "flock":
            fcntl.flock(fd, (fcntl.LOCK_EX if lock.write else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return
        l_type = fcntl.F_WRLCK if lock.write else fcntl.F_RDLCK
        if lock.type == "posix":
            fcntl.fcntl(fd, fcntl.F_SETLK, _flock(l_type, lock.start, lock.length))
        else:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(l_type, lock.start, lock.length))
    except OSError as exc:
        what = f"{lock.type} {'write' if lock.write else 'read'} lock"
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise _Failed(f"its {what} is held by another process now") from None
        raise _Failed(f"its {what}: {exc.strerror}") from None


def _flock(l_type: int, start: int, length: int) -> bytes:
    """A struct flock (l_type, l_whence SEEK_SET, l_start, l_len, l_pid 0), padded to
    the kernel's 32 bytes."""
    return struct.pack("@hhqqi", l_type, os.SEEK_SET, start, length, 0).ljust(32, b"\0")


def _timerfd(make: TimerFd) -> int:
    value = make.value
    if make.settime_flags & TFD_TIMER_ABSTIME and value != (0, 0):
        # The image holds the time left: absolute again on the same clock, from now.
        ns = time.clock_gettime_ns(make.clockid) + value[0] * 10**9 + value[1]
        value = divmod(ns, 10**9)
    fd = timerfd(make.clockid, os.O_CLOEXEC, make.settime_flags, value, make.interval)
    try:
        if make.ticks:
            fcntl.ioctl(fd, TFD_IOC_SET_TICKS, struct.pack("Q", make.ticks))
        return fd
    except BaseException:
        os.close(fd)
        raise


def _pipe(pipe: Pipe) -> tuple[int, int]:
    """A pipe of the image's capacity with its queued data written back (packet by
    packet when it held packets)."""
    flags = os.O_CLOEXEC | (os.O_DIRECT if pipe.packets is not None else 0)
    r, w = os.pipe2(flags)
    try:
        if fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) != pipe.capacity:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, pipe.capacity)
        # Never blocks: more than the pipe holds is refused (EAGAIN), not waited for.
        os.set_blocking(w, False)
        sizes = pipe.packets if pipe.packets is not None else [len(pipe.data)]
        offset = 0
        for size in sizes:
            chunk = memoryview(pipe.data)[offset : offset + size]
            while chunk:
                written = os.write(w, chunk)
                chunk = chunk[written:]
            offset += size
        os.set_blocking(w, True)
        return r, w
    except BaseException:
        close_all((r, w))
        raise


def _order(d: Description) -> int:
    make = d.make
    if isinstance(make, Epoll):
        return 3
    if isinstance(make, UnixConnection) or (
        isinstance(make, UnixSocket) and make.connect is not None and make.address is None
    ):
        return 2  # after the sockets they connect to are bound
    if isinstance(make, UnixSocket) and make.address is not None:
        return 1  # a node in a file system: made once what may fail first did not
    if isinstance(make, OpenPath) and make.fmt == stat.S_IFIFO:
        return 1 if make.flags & os.O_ACCMODE == os.O_WRONLY else 0
    return 0


def make(
    plan: RestorePlan, *, root_fd: int, relaxed: bool = False, hooks: HookHandlers | None = None
) -> Made:
    """Every description of the plan, made and checked, each at a fd at or above the
    plan's highest fd number + 1 (a :class:`Hook` by its handler's hook, from
    ``hooks``).  On any failure, closes all it made and raises a RestoreError naming
    pid, fd and kind: nothing else was changed."""
    floor = max((s.fd for s in plan.fds), default=-1) + 1
    limit = nofile()
    if floor + len(plan.descriptions) + 8 > limit:
        raise RestoreError(
            f"restoring fds up to {floor - 1} needs {len(plan.descriptions) + 8} more free fd "
            f"numbers above them, past RLIMIT_NOFILE ({limit})",
            pid=plan.pid,
        )
    maker = _Maker(plan, root_fd, relaxed, floor, hooks)
    made = maker.made
    # Epolls last: their watches are tried on the targets, which must exist by then.
    # Unix sockets bound to a path late (a failure removes their nodes), and those that
    # connect after those they connect to.
    # A FIFO's write-only ends after its readers: without one, the open fails (ENXIO).
    order = sorted(range(len(plan.descriptions)), key=lambda i: _order(plan.descriptions[i]))
    try:
        for index in order:
            d = plan.descriptions[index]
            if isinstance(d.make, PidFd):  # by each process, once they exist: install
                made[index] = -1
                continue
            try:
                made[index] = maker.description(d)
            except (OSError, _Failed) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                path = d.make.path if isinstance(d.make, OpenPath) else ""
                raise RestoreError(
                    f"cannot restore the {d.kind}{f' ({path})' if path else ''}: {why}",
                    pid=d.pid,
                    fd=d.fd,
                ) from None
        # Only now: each description of an unnamed file was opened from it at 0600.
        for fd, mode in maker.modes:
            os.fchmod(fd, mode)
    except BaseException:
        close_all(made.values())
        maker.unix.undo()
        raise
    finally:
        close_all(maker.temp)
    fds = [made[i] for i in range(len(plan.descriptions))]
    return Made(fds=fds, floor=floor, fallbacks=tuple(maker.fallbacks))


def take_posix_locks(plan: RestorePlan, pid: int, slots: list[FdSlot]) -> None:
    """Take task ``pid``'s POSIX locks through its installed fds (``slots``): last, once
    the process has closed every other fd it will close, since closing any fd of a file
    drops the process's POSIX locks on it.  One another process holds now is a
    RestoreError (the fds stay in place)."""
    first: dict[int, int] = {}
    for slot in slots:
        first.setdefault(slot.description, slot.fd)
    for index, fd in first.items():
        d = plan.descriptions[index]
        for lock in d.locks:
            if lock.type == "posix" and lock.pid == pid:
                try:
                    take_lock(fd, lock)
                except _Failed as why:
                    raise RestoreError(
                        f"cannot restore the {d.kind}: {why}", pid=pid, fd=fd
                    ) from None


def install(
    plan: RestorePlan,
    made: Made,
    pid: int,
    slots: list[FdSlot],
    new_pid: NewPid | None = None,
) -> None:
    """Dup each description of task ``pid``'s ``slots`` to its fd numbers (close-on-exec
    as the image says), add the watches of the epolls this task links (tried already by
    :func:`make`), then close the made fds.  Whatever was at those numbers is closed by
    the dup.  Its pidfds are opened first, in this process (``new_pid``: the new pid of
    a task of the tree; None: the only target is this process).  The POSIX locks are
    for :func:`take_posix_locks`, after."""
    pidfds: dict[int, int] = {}
    try:
        pidfds = make_pidfds(plan, pid, slots, new_pid, lambda fd: above(fd, made.floor))
        for slot in slots:
            fd = pidfds.get(slot.description, made.fds[slot.description])
            os.dup2(fd, slot.fd, inheritable=not slot.cloexec)
        for index, d in enumerate(plan.descriptions):
            if isinstance(d.make, Epoll) and d.make.pid == pid:
                for w in d.make.watches:
                    epoll_add(made.fds[index], w.tfd, w.events, w.data)
    finally:
        close_all(made.fds)
        close_all(pidfds.values())


@contextlib.contextmanager
def _root(root: str) -> Iterator[int]:
    fd = open_root(root)
    try:
        yield fd
    finally:
        os.close(fd)


def restore_table(
    image: Image,
    pid: int,
    *,
    root: str = "/",
    relaxed: bool = False,
    skip: Iterable[str] = (),
) -> RestorePlan:
    """Rebuild, in the calling process, the fd table task ``pid`` had in ``image``: the
    same fd numbers, flags, positions, close-on-exec and sharing between its fds.  The
    fds at those numbers are replaced; other fds are left alone.  Raises RestoreError
    when a fd cannot be restored: before anything changed, but for a POSIX lock another
    process holds now (the fds are in place then; closing any of them drops the
    caller's POSIX locks on its file, as always); returns the plan followed, whose
    ``skipped`` lists the fds left out by ``skip``."""
    from ._restore_hooks import HookHandlers

    hooks = HookHandlers()
    plan = plan_table(image, pid, nofile=nofile(), skip=frozenset(skip), hooks=hooks)
    with _root(root) as root_fd:
        made = make(plan, root_fd=root_fd, relaxed=relaxed, hooks=hooks)
    install(plan, made, pid, plan.fds)
    take_posix_locks(plan, pid, plan.fds)
    return plan


def child_failed(status: int, exc: BaseException) -> NoReturn:
    """In a forked child: say why on the status pipe and exit 1, whatever ``exc`` is."""
    why = str(exc) if isinstance(exc, AsyckptError) else f"{type(exc).__name__}: {exc}"
    try:
        os.write(status, why.encode(errors="replace"))
    finally:
        os._exit(1)
