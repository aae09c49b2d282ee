"""The records asyckpt-anon's handlers store in an image (``File.data``).

Each field the kernel may not print (an older kernel, an ``O_PATH`` fd, which has no
type-specific fdinfo) is optional and None when it was not there: a record says what
the kernel said, never a default that looks like a value.  Fields are only ever added,
with defaults, so that older images keep decoding.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "AnonInode",
    "Epoll",
    "EpollTarget",
    "EventFd",
    "Fanotify",
    "FanotifyMark",
    "FileHandle",
    "Inotify",
    "InotifyWatch",
    "MemFd",
    "PidFd",
    "SignalFd",
    "TimerFd",
]


class EventFd(msgspec.Struct, tag="asyckpt.eventfd", tag_field="kind", kw_only=True):
    count: int | None
    """The counter (``eventfd-count``)."""
    semaphore: bool | None
    """EFD_SEMAPHORE (``eventfd-semaphore``, on kernels that print it)."""
    id: int | None
    """The kernel's id of this eventfd (``eventfd-id``, on kernels that print it)."""
    nonblock: bool
    """EFD_NONBLOCK (O_NONBLOCK in the file's flags)."""


class EpollTarget(msgspec.Struct, kw_only=True):
    """One watched file (an fdinfo ``tfd:`` line)."""

    tfd: int | None
    """The fd number the target was added with, in the table of the task that added it;
    that fd may since have been closed or reused (the watch lives as long as the open
    file description)."""
    events: int | None
    """The events mask (EPOLLIN, ..., EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE...)."""
    data: int | None
    """The user data, as an unsigned 64-bit number."""
    pos: int | None
    """The target's file position, and its inode and device (``st_dev`` layout): which
    open file it is (Linux 3.18 and later)."""
    ino: int | None
    dev: int | None
    file: int | None = None
    """The image file id of the open file description watched, found with kcmp
    KCMP_EPOLL_TFD while the tree was frozen (so right whatever became of ``tfd``); None
    when no task of the tree holds it, or when not linked (see ``Epoll.linked``)."""


class Epoll(msgspec.Struct, tag="asyckpt.epoll", tag_field="kind", kw_only=True):
    targets: list[EpollTarget]
    linked: bool = False
    """The targets' ``file`` were looked up (false in images that predate it): a
    target's ``file`` None then means that no task of the tree holds it."""


class TimerFd(msgspec.Struct, tag="asyckpt.timerfd", tag_field="kind", kw_only=True):
    clockid: int | None
    """CLOCK_REALTIME 0, CLOCK_MONOTONIC 1, CLOCK_BOOTTIME 7, CLOCK_REALTIME_ALARM 8,
    CLOCK_BOOTTIME_ALARM 9."""
    ticks: int | None
    """Expirations not yet read."""
    settime_flags: int | None
    """TFD_TIMER_ABSTIME 1, TFD_TIMER_CANCEL_ON_SET 2."""
    it_value: tuple[int, int] | None
    """(seconds, nanoseconds) until the next expiration, when captured; (0, 0) disarmed."""
    it_interval: tuple[int, int] | None
    """(seconds, nanoseconds) between expirations; (0, 0) for a one-shot timer."""


class SignalFd(msgspec.Struct, tag="asyckpt.signalfd", tag_field="kind", kw_only=True):
    sigmask: int | None
    """The signals accepted: bit N-1 for signal N."""
    signals: list[int]
    """The same, as signal numbers."""


class FileHandle(msgspec.Struct, kw_only=True):
    """A file handle (name_to_handle_at(2)) the kernel prints for a watched inode."""

    type: int
    handle: str
    """``f_handle``, in hex."""


class InotifyWatch(msgspec.Struct, kw_only=True):
    wd: int | None
    """The watch descriptor inotify_add_watch returned."""
    ino: int | None
    """The watched inode and its device (``st_dev`` layout)."""
    dev: int | None
    mask: int | None
    ignored_mask: int | None
    handle: FileHandle | None
    """None when the filesystem gives no handle."""
    path: str | None = None
    """The watched inode's path, as asyckpt's own mount namespace sees it, resolved from
    ``handle`` after the thaw (open_by_handle_at through a mount of that device); None
    when it could not be: no handle, no such mount visible to asyckpt, or the kernel
    refused (ESTALE, a filesystem that cannot decode handles).  ``handle`` stays the
    watch's identity."""
    deleted: bool = False
    """The inode was unlinked (the kernel's " (deleted)", removed from ``path``): the
    watch keeps it alive, and ``path`` is where it was."""
    path_bytes: bytes | None = None
    """The path's exact bytes when they are not UTF-8 (``path`` is then escaped: the
    core's rule for names, ``asyckpt.split_name``)."""


class Inotify(msgspec.Struct, tag="asyckpt.inotify", tag_field="kind", kw_only=True):
    watches: list[InotifyWatch]
    resolved: bool = False
    """The watches' ``path`` were looked up (false in images that predate it)."""


class FanotifyMark(msgspec.Struct, kw_only=True):
    object: str
    """What is marked: ``inode``, ``mount``, ``filesystem``, or ``other`` for a kind of
    mark this version does not know (then ``text`` has the line)."""
    ino: int | None
    """An inode mark's inode and device (``st_dev`` layout); a filesystem mark's device."""
    dev: int | None
    mnt_id: int | None
    """A mount mark's mount id (as in mountinfo)."""
    mflags: int | None
    mask: int | None
    ignored_mask: int | None
    handle: FileHandle | None
    text: str | None = None


class Fanotify(msgspec.Struct, tag="asyckpt.fanotify", tag_field="kind", kw_only=True):
    flags: int | None
    """fanotify_init's flags (FAN_CLASS_*, FAN_UNLIMITED_QUEUE, FAN_REPORT_*...)."""
    event_flags: int | None
    """fanotify_init's event_f_flags: the open flags of the fds events carry."""
    marks: list[FanotifyMark]


class PidFd(msgspec.Struct, tag="asyckpt.pidfd", tag_field="kind", kw_only=True):
    pid: int | None
    """The target in asyckpt's pid namespace: -1 once it has exited, 0 when it is not
    visible from there."""
    nspid: list[int]
    """Its pid in each pid namespace from asyckpt's down to its own (``NSpid``)."""
    thread: bool
    """PIDFD_THREAD: the pidfd names a thread, not a thread group."""
    in_tree: bool | None = None
    """Whether the target is a task of the captured tree (a thread of it, for a thread
    pidfd); None when it has exited or is not visible from asyckpt's pid namespace."""


class MemFd(msgspec.Struct, tag="asyckpt.memfd", tag_field="kind", kw_only=True):
    name: str
    """The name given to memfd_create (what follows ``/memfd:`` in the link); escaped
    when it is not UTF-8, its exact bytes then in ``name_bytes``."""
    size: int
    blocks: int
    """Allocated 512-byte blocks: what copying the content would cost."""
    seals: int | None
    """F_GET_SEALS: F_SEAL_SEAL 1, SHRINK 2, GROW 4, WRITE 8, FUTURE_WRITE 16, EXEC 32;
    None for an O_PATH fd."""
    hugetlb: bool | None
    """Backed by hugetlbfs (MFD_HUGETLB) rather than shmem; None for an O_PATH fd."""
    name_bytes: bytes | None = None


class AnonInode(msgspec.Struct, tag="asyckpt.anon", tag_field="kind", kw_only=True):
    """Any other anonymous inode: io_uring, userfaultfd, perf_event, bpf maps and
    programs, and kinds no handler knows.  Its fdinfo lines stay, verbatim, in the
    file's own ``fdinfo``."""

    type: str
    """The anon inode's name from the link text: ``io_uring``, ``bpf-map``..."""
    values: dict[str, int] = {}
    """Those fdinfo fields whose format asyckpt knows for this type, as numbers
    (``SqMask``, ``map_type``, ``pending``...)."""
