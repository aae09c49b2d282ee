"""asyckpt's fd-type handlers for anonymous inodes.

One handler per kind the kernel marks in the link text (``anon_inode:[eventfd]``...),
claimed by link prefix, each recording what the type-specific fdinfo lines say; memfds
(regular shmem files named ``/memfd:NAME``) are claimed by their link prefix ahead of
asyckpt's ``reg`` handler.  ``anon`` takes every other anon inode (io_uring,
userfaultfd, perf_event, bpf maps and programs, kinds not known yet) at priority -1,
so a more specific handler, bundled or third-party, always goes first.

The locks held through a description and its I/O owner are the core's (``File.locks``,
``File.owner``), for every kind of fd.  The fdinfo parsers are pure
(:mod:`asyckpt_anon.parse`).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import signal
import struct
from typing import Any, ClassVar

import msgspec

from asyckpt import (
    CaptureLinks,
    CaptureTree,
    FdFacts,
    HandlerContext,
    os_name,
    split_name,
)

from .parse import (
    mount_points_by_dev,
    parse_anon,
    parse_epoll,
    parse_eventfd,
    parse_fanotify,
    parse_inotify,
    parse_pidfd,
    parse_signalfd,
    parse_timerfd,
)
from .records import (
    AnonInode,
    Epoll,
    EpollTarget,
    EventFd,
    Fanotify,
    FanotifyMark,
    FileHandle,
    Inotify,
    InotifyWatch,
    MemFd,
    PidFd,
    SignalFd,
    TimerFd,
)

__all__ = [
    "AnonHandler",
    "AnonInode",
    "Epoll",
    "EpollHandler",
    "EpollTarget",
    "EventFd",
    "EventFdHandler",
    "Fanotify",
    "FanotifyHandler",
    "FanotifyMark",
    "FileHandle",
    "Inotify",
    "InotifyHandler",
    "InotifyWatch",
    "MemFd",
    "MemFdHandler",
    "PidFd",
    "PidFdHandler",
    "SignalFd",
    "SignalFdHandler",
    "TimerFd",
    "TimerFdHandler",
]

HANDLERS: tuple[type, ...]  # set at the end of the module: every handler class here


def _flag_names(value: int, names: dict[int, str]) -> list[str]:
    out = [name for bit, name in names.items() if value & bit]
    rest = value & ~sum(names)
    if rest:
        out.append(hex(rest))
    return out


class EventFdHandler:
    """eventfd: counter, semaphore mode, non-blocking."""

    name: ClassVar[str] = "eventfd"
    record_type: ClassVar[type[msgspec.Struct]] = EventFd
    link_prefixes: ClassVar[tuple[str, ...]] = ("anon_inode:[eventfd]",)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> EventFd:
        return parse_eventfd(facts.fdinfo.extra, facts.fdinfo.flags)

    def render_text(self, record: EventFd) -> str:
        text = f"eventfd count={record.count}"
        if record.semaphore:
            text += " semaphore"
        return f"[{text}]"


EPOLL_EVENTS = {
    0x1: "EPOLLIN",
    0x2: "EPOLLPRI",
    0x4: "EPOLLOUT",
    0x8: "EPOLLERR",
    0x10: "EPOLLHUP",
    0x20: "EPOLLNVAL",
    0x40: "EPOLLRDNORM",
    0x80: "EPOLLRDBAND",
    0x100: "EPOLLWRNORM",
    0x200: "EPOLLWRBAND",
    0x400: "EPOLLMSG",
    0x2000: "EPOLLRDHUP",
    1 << 28: "EPOLLEXCLUSIVE",
    1 << 29: "EPOLLWAKEUP",
    1 << 30: "EPOLLONESHOT",
    1 << 31: "EPOLLET",
}


def _target_text(target: EpollTarget, linked: bool) -> str:
    """``5->file 4``: a target by its fd number and the file it is; ``5->outside`` when
    no task of the tree holds it; ``5`` in an image that predates the lookup."""
    if not linked:
        return str(target.tfd)
    return f"{target.tfd}->" + ("outside" if target.file is None else f"file {target.file}")


class EpollHandler:
    """epoll: every target as fdinfo lists it (fd number, events, data, and which
    open file: position, inode, device), linked to the file it is in the image."""

    name: ClassVar[str] = "epoll"
    record_type: ClassVar[type[msgspec.Struct]] = Epoll
    link_prefixes: ClassVar[tuple[str, ...]] = ("anon_inode:[eventpoll]",)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Epoll:
        return parse_epoll(facts.fdinfo.extra)

    def link(self, record: Epoll, links: CaptureLinks) -> Epoll:
        # A tfd number may since have been closed or reused, or name a file in another
        # table than the watch's: only kcmp KCMP_EPOLL_TFD, which finds the watch
        # itself, says which description it is.  The kernel numbers watches added with
        # one fd number by their order in the fdinfo listing (toff).
        ref = links.ref
        seen: dict[int, int] = {}
        targets = []
        for t in record.targets:
            file = None
            if t.tfd is not None:
                toff = seen.get(t.tfd, 0)
                seen[t.tfd] = toff + 1
                if t.ino is not None:  # an older kernel prints no inode to start from
                    file = links.epoll_target(ref.tid, ref.fd, t.tfd, toff, t.dev, t.ino)
            targets.append(msgspec.structs.replace(t, file=file))
        return msgspec.structs.replace(record, targets=targets, linked=True)

    def render_text(self, record: Epoll) -> str:
        tfds = ",".join(_target_text(t, record.linked) for t in record.targets)
        return f"[epoll {len(record.targets)} targets: {tfds or '-'}]"

    def render_json(self, record: Epoll) -> dict[str, Any]:
        return {
            "targets": [
                {
                    "tfd": t.tfd,
                    "events": None if t.events is None else _flag_names(t.events, EPOLL_EVENTS),
                    "data": None if t.data is None else hex(t.data),
                    "ino": t.ino,
                    "dev": t.dev,
                    "file": t.file,
                    "in_tree": t.file is not None if record.linked else None,
                }
                for t in record.targets
            ]
        }


CLOCKS = {
    0: "CLOCK_REALTIME",
    1: "CLOCK_MONOTONIC",
    7: "CLOCK_BOOTTIME",
    8: "CLOCK_REALTIME_ALARM",
    9: "CLOCK_BOOTTIME_ALARM",
}
TIMER_FLAGS = {1: "TFD_TIMER_ABSTIME", 2: "TFD_TIMER_CANCEL_ON_SET"}


def _seconds(ts: tuple[int, int] | None) -> str:
    return "?" if ts is None else f"{ts[0]}.{ts[1]:09d}s"


class TimerFdHandler:
    """timerfd: clock, ticks, it_value, it_interval, settime flags."""

    name: ClassVar[str] = "timerfd"
    record_type: ClassVar[type[msgspec.Struct]] = TimerFd
    link_prefixes: ClassVar[tuple[str, ...]] = ("anon_inode:[timerfd]",)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> TimerFd:
        return parse_timerfd(facts.fdinfo.extra)

    def render_text(self, record: TimerFd) -> str:
        clock = "?" if record.clockid is None else CLOCKS.get(record.clockid, str(record.clockid))
        text = (
            f"timerfd {clock} value={_seconds(record.it_value)} "
            f"interval={_seconds(record.it_interval)} ticks={record.ticks}"
        )
        return f"[{text}]"

    def render_json(self, record: TimerFd) -> dict[str, Any]:
        return {
            "clock": None if record.clockid is None else CLOCKS.get(record.clockid),
            "settime_flags": (
                None
                if record.settime_flags is None
                else _flag_names(record.settime_flags, TIMER_FLAGS)
            ),
        }


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class SignalFdHandler:
    """signalfd: the signal mask."""

    name: ClassVar[str] = "signalfd"
    record_type: ClassVar[type[msgspec.Struct]] = SignalFd
    link_prefixes: ClassVar[tuple[str, ...]] = ("anon_inode:[signalfd]",)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> SignalFd:
        return parse_signalfd(facts.fdinfo.extra)

    def render_text(self, record: SignalFd) -> str:
        names = ",".join(_signal_name(s) for s in record.signals)
        return f"[signalfd {names or '-'}]"

    def render_json(self, record: SignalFd) -> dict[str, Any]:
        return {"signals": [_signal_name(s) for s in record.signals]}


class InotifyHandler:
    """inotify: every watch (wd, inode, device, mask, file handle)."""

    name: ClassVar[str] = "inotify"
    record_type: ClassVar[type[msgspec.Struct]] = Inotify
    # The kernel names inotify's anon inode without brackets.
    link_prefixes: ClassVar[tuple[str, ...]] = ("anon_inode:inotify",)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Inotify:
        return parse_inotify(facts.fdinfo.extra)

    def finish(self, record: Inotify, tree: CaptureTree) -> Inotify:
        # After the thaw: opening inodes by handle costs nothing frozen.
        if not record.watches:
            return msgspec.structs.replace(record, resolved=True)
        with _HandleResolver() as resolver:
            watches = [resolver.resolve(w) for w in record.watches]
        return msgspec.structs.replace(record, watches=watches, resolved=True)

    def render_text(self, record: Inotify) -> str:
        wds = ",".join(_watch_text(w) for w in record.watches)
        return f"[inotify {len(record.watches)} watches: {wds or '-'}]"


def _watch_text(watch: InotifyWatch) -> str:
    if watch.path is None:
        return str(watch.wd)
    path = os_name(watch.path, watch.path_bytes)  # show escapes the line it prints
    return f"{watch.wd}={path}" + (" (deleted)" if watch.deleted else "")


_open_by_handle_at = ctypes.CDLL(None, use_errno=True).open_by_handle_at
_open_by_handle_at.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_open_by_handle_at.restype = ctypes.c_int


class _HandleResolver:
    """Resolves watches' file handles to paths through asyckpt's own mounts, each
    mount opened once."""

    def __init__(self) -> None:
        self._mounts: dict[int, list[str]] | None = None
        self._mount_fds: dict[str, int | None] = {}

    def __enter__(self) -> _HandleResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._mount_fds.values():
            if fd is not None:
                os.close(fd)

    def _mount_fd(self, point: str) -> int | None:
        if point not in self._mount_fds:
            try:
                # Not O_PATH: open_by_handle_at takes no O_PATH fd for its mount (EBADF).
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                self._mount_fds[point] = os.open(point, flags)
            except OSError:
                self._mount_fds[point] = None
        return self._mount_fds[point]

    def resolve(self, watch: InotifyWatch) -> InotifyWatch:
        if watch.handle is None or watch.dev is None or watch.ino is None:
            return watch
        if self._mounts is None:
            try:
                with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                    self._mounts = mount_points_by_dev(f.read())
            except OSError:
                self._mounts = {}
        try:
            raw = bytes.fromhex(watch.handle.handle)
        except ValueError:
            return watch
        # struct file_handle: handle_bytes, handle_type, then the handle itself.
        handle = struct.pack("Ii", len(raw), watch.handle.type) + raw
        buf = ctypes.create_string_buffer(handle, len(handle))
        for point in self._mounts.get(watch.dev, ()):
            mount_fd = self._mount_fd(point)
            if mount_fd is None:
                continue
            fd = _open_by_handle_at(mount_fd, buf, os.O_PATH | os.O_CLOEXEC)
            if fd < 0:
                continue  # ESTALE (not below this mount, or gone), EOPNOTSUPP...
            try:
                st = os.fstat(fd)
                # The handle is the filesystem's to decode: check it reached the inode.
                if (st.st_dev, st.st_ino) != (watch.dev, watch.ino):
                    continue
                link = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            deleted = link.endswith(_DELETED) and st.st_nlink == 0
            text, exact = split_name(link.removesuffix(_DELETED) if deleted else link)
            return msgspec.structs.replace(watch, path=text, path_bytes=exact, deleted=deleted)
        return watch


class FanotifyHandler:
    """fanotify: init flags and every mark (inode, mount, filesystem)."""

    name: ClassVar[str] = "fanotify"
    record_type: ClassVar[type[msgspec.Struct]] = Fanotify
    link_prefixes: ClassVar[tuple[str, ...]] = ("anon_inode:[fanotify]",)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Fanotify:
        return parse_fanotify(facts.fdinfo.extra)

    def render_text(self, record: Fanotify) -> str:
        marks = ",".join(m.object for m in record.marks)
        return f"[fanotify {len(record.marks)} marks: {marks or '-'}]"


class PidFdHandler:
    """pidfd: the target's pid and its pid in each namespace (NSpid)."""

    name: ClassVar[str] = "pidfd"
    record_type: ClassVar[type[msgspec.Struct]] = PidFd
    # pidfds live on pidfs since Linux 6.9; the link text still names them.
    link_prefixes: ClassVar[tuple[str, ...]] = ("anon_inode:[pidfd]", "pidfd:")

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> PidFd:
        return parse_pidfd(facts.fdinfo.extra, facts.fdinfo.flags)

    def finish(self, record: PidFd, tree: CaptureTree) -> PidFd:
        # Only the whole capture knows which tasks are in the tree.
        if record.pid is None or record.pid <= 0:
            return record
        tasks = tree.session.tids if record.thread else tree.pids
        return msgspec.structs.replace(record, in_tree=record.pid in tasks)

    def render_text(self, record: PidFd) -> str:
        who = "exited" if record.pid == -1 else f"pid {record.pid}"
        if len(record.nspid) > 1:
            who += " (nspid " + " ".join(map(str, record.nspid)) + ")"
        if record.in_tree is not None:
            who += ", in the tree" if record.in_tree else ", outside the tree"
        return f"[pidfd {'thread ' if record.thread else ''}{who}]"


MEMFD_PREFIX = "/memfd:"
SEALS = {
    0x1: "F_SEAL_SEAL",
    0x2: "F_SEAL_SHRINK",
    0x4: "F_SEAL_GROW",
    0x8: "F_SEAL_WRITE",
    0x10: "F_SEAL_FUTURE_WRITE",
    0x20: "F_SEAL_EXEC",
}
HUGETLBFS_MAGIC = 0x958458F6
_DELETED = " (deleted)"

_libc = ctypes.CDLL(None, use_errno=True)
# struct statfs begins with f_type, a machine word everywhere but s390x (an unsigned int
# there); the buffer is larger than any architecture's struct.
_F_TYPE = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_ulong
_STATFS_SIZE = 256


def _fs_magic(fd: int) -> int:
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(_F_TYPE.from_buffer(buf).value)


class MemFdHandler:
    """memfd: name, size, seals, hugetlb.  Its content is the core's, as that of every
    unlinked regular file (``File.ghost`` and the image's ``content`` records)."""

    name: ClassVar[str] = "memfd"
    record_type: ClassVar[type[msgspec.Struct]] = MemFd
    # A memfd is a regular file on an internal shmem (or hugetlbfs) mount, so it would
    # be the core's reg handler's; the link prefix is more specific than that kind.
    link_prefixes: ClassVar[tuple[str, ...]] = (MEMFD_PREFIX,)

    def claims(self, facts: FdFacts) -> bool:
        # A memfd is never linked into a directory: its link always reads "(deleted)".
        # A real file named "/memfd:x" at the root stays the reg handler's.
        return facts.kind == "reg" and facts.deleted

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> MemFd:
        link = facts.link.removesuffix(_DELETED)
        # No fcntl is allowed through an O_PATH descriptor.
        fd = None if facts.fdinfo.flags & os.O_PATH else ctx.take_fd(facts.fd)
        seals: int | None = None
        hugetlb: bool | None = None
        if fd is not None:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            hugetlb = _fs_magic(fd) == HUGETLBFS_MAGIC
        name, name_bytes = split_name(link[len(MEMFD_PREFIX) :])
        return MemFd(
            name=name,
            name_bytes=name_bytes,
            size=facts.st.st_size,
            blocks=facts.st.st_blocks,
            seals=seals,
            hugetlb=hugetlb,
        )

    def render_text(self, record: MemFd) -> str:
        text = f"memfd '{os_name(record.name, record.name_bytes)}' size={record.size}"
        if record.seals:
            text += " seals=" + "|".join(_flag_names(record.seals, SEALS))
        if record.hugetlb:
            text += " hugetlb"
        return f"[{text}]"

    def render_json(self, record: MemFd) -> dict[str, Any]:
        return {"seals": None if record.seals is None else _flag_names(record.seals, SEALS)}


class AnonHandler:
    """Every other anon inode: its type and the fdinfo fields of known format."""

    name: ClassVar[str] = "anon"
    record_type: ClassVar[type[msgspec.Struct]] = AnonInode
    kinds: ClassVar[frozenset[str]] = frozenset({"anon"})
    # The catch-all: below every handler that names what it claims.
    priority: ClassVar[int] = -1

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> AnonInode:
        return parse_anon(facts.link, facts.fdinfo.extra)

    def render_text(self, record: AnonInode) -> str:
        values = " ".join(f"{k}={v}" for k, v in record.values.items())
        return f"[{record.type} {values}]" if values else f"[{record.type}]"


HANDLERS = (
    AnonHandler,
    EpollHandler,
    EventFdHandler,
    FanotifyHandler,
    InotifyHandler,
    MemFdHandler,
    PidFdHandler,
    SignalFdHandler,
    TimerFdHandler,
)
