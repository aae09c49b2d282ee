"""The restore plan's records (msgspec Structs): what ``_restore_plan`` decides and
``_restore`` carries out, one object per open file description to make."""

from __future__ import annotations

from typing import Literal

import msgspec

from ._records import File, Task

__all__ = [
    "Bind",
    "Description",
    "Epoll",
    "EventFd",
    "FdSlot",
    "Hook",
    "Inode",
    "Inotify",
    "InotifyWatch",
    "LockPlan",
    "Make",
    "MakeFailed",
    "OpenPath",
    "PidFd",
    "Pipe",
    "PipeEnd",
    "Refuse",
    "Reopen",
    "RestorePlan",
    "SignalFd",
    "Skipped",
    "SockType",
    "SocketEnd",
    "SocketPair",
    "TaskSlots",
    "TimerFd",
    "UnixConnection",
    "UnixSocket",
    "Watch",
]

SockType = Literal["stream", "dgram", "seqpacket"]
Shutdown = Literal["read", "write", "both"] | None


class Refuse(Exception):
    """A fd of this kind cannot be restored: why (planning makes it a RestoreError
    naming pid, fd and kind)."""


class MakeFailed(Exception):
    """Why one description could not be made (becomes a RestoreError naming the fd)."""


class OpenPath(msgspec.Struct, tag="open", kw_only=True):
    """Open ``path`` under the root: openat2 RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    then checked against the image."""

    path: str
    flags: int
    """For open(2): access mode and the flags the image records, never O_CREAT,
    O_TRUNC, O_EXCL or O_TMPFILE."""
    fmt: int
    """The file type expected (S_IFREG...)."""
    dev: int
    ino: int
    size: int
    rdev: int
    capacity: int = 0
    """A FIFO's pipe size (F_SETPIPE_SZ); 0 for other files."""


class Reopen(msgspec.Struct, tag="reopen", kw_only=True):
    """A new description of an :class:`Inode` this plan makes."""

    inode: int
    flags: int


class PipeEnd(msgspec.Struct, tag="pipe", kw_only=True):
    pipe: int
    """Index into ``RestorePlan.pipes``."""
    end: Literal["read", "write"]


class SocketEnd(msgspec.Struct, tag="socket", kw_only=True):
    pair: int
    end: Literal[0, 1]
    shutdown: Shutdown


class UnixSocket(msgspec.Struct, tag="unix", kw_only=True):
    """A unix socket made on its own: bound again to its name (a listener listening
    with its backlog), and a datagram socket connected again to the bound one it was
    connected to; or neither (unbound, unconnected)."""

    socktype: SockType
    address: bytes | None
    """sun_path as it was bound: an absolute path (bound under the root), or a NUL and
    an abstract name; None: not bound."""
    backlog: int | None
    """listen(2)'s backlog; None: not listening."""
    connect: int | None
    """The image's file id of the bound (datagram) socket it is connected to."""
    netns: int | None
    """The network namespace it was in, checked to be restore's own for an abstract name."""
    shutdown: Shutdown


class UnixConnection(msgspec.Struct, tag="connection", kw_only=True):
    """One end of a stream or seqpacket connection to a restored listener, made again by
    connecting a new client to that listener and accepting: the accepted end carries the
    listener's name again, as accepted sockets do."""

    listener: int
    """The listener's file id (a :class:`UnixSocket` with a backlog)."""
    accepted: int
    """The accepted end's file id: it names the connection, whose two ends are made once."""
    end: Literal["client", "accepted"]
    socktype: SockType
    shutdown: Shutdown


class Bind(msgspec.Struct, tag="bind", kw_only=True):
    """An inet socket bound again to its address: a TCP listener listening, or an
    unconnected UDP socket."""

    family: Literal["inet", "inet6"]
    socktype: Literal["stream", "dgram"]
    address: str
    port: int
    backlog: int
    """listen(2)'s backlog (a TCP listener; 0 for UDP)."""
    reuseaddr: bool
    reuseport: bool
    netns: int | None
    """The network namespace it was in (its inode), checked to be restore's own."""


class EventFd(msgspec.Struct, tag="eventfd", kw_only=True):
    count: int
    semaphore: bool


class TimerFd(msgspec.Struct, tag="timerfd", kw_only=True):
    clockid: int
    settime_flags: int
    value: tuple[int, int]
    """(seconds, nanoseconds) left until the next expiration; (0, 0): disarmed."""
    interval: tuple[int, int]
    ticks: int
    """Expirations not read yet (set with TFD_IOC_SET_TICKS)."""


class SignalFd(msgspec.Struct, tag="signalfd", kw_only=True):
    mask: int


class Watch(msgspec.Struct, kw_only=True):
    """One epoll target: added once every description exists and is at its number."""

    description: int
    """Index into ``RestorePlan.descriptions``: the open file description watched."""
    tfd: int
    """The fd number to add it with: the image's ``tfd`` when it is one of the target's
    fds in the table, else the target's first fd."""
    events: int
    data: int


class Epoll(msgspec.Struct, tag="epoll", kw_only=True):
    watches: list[Watch]
    pid: int
    """The task whose process adds the watches (through its own fd numbers)."""


class InotifyWatch(msgspec.Struct, kw_only=True):
    path: str
    mask: int
    dev: int
    ino: int


class Inotify(msgspec.Struct, tag="inotify", kw_only=True):
    """A new inotify instance, its watches added again in their order (by their old
    watch descriptors, so that a table whose watches were never removed gets the same
    ones), each on the file it watched: checked like a path to open."""

    watches: list[InotifyWatch]


class PidFd(msgspec.Struct, tag="pidfd", kw_only=True):
    """A pidfd of the new process of task ``target``: opened by each process that holds
    it once the processes exist (``_restore_pidfd``), not by ``make``."""

    target: int
    """The target's pid in the image (a task restored)."""
    nonblock: bool
    """PIDFD_NONBLOCK (O_NONBLOCK)."""


class Hook(msgspec.Struct, tag="hook", kw_only=True):
    """A file restore does not rebuild itself, made by the ``restore(record, ctx)`` hook
    of the handler that captured it (``_restore_hooks``)."""

    handler: str
    file: File
    task: Task


Make = (
    OpenPath
    | Reopen
    | PipeEnd
    | SocketEnd
    | UnixSocket
    | UnixConnection
    | Bind
    | EventFd
    | TimerFd
    | SignalFd
    | Epoll
    | Inotify
    | PidFd
    | Hook
)


class Description(msgspec.Struct, kw_only=True):
    """One open file description to make, then install at each of its fds."""

    file: int
    """The image's file id."""
    kind: str
    make: Make
    setfl: int | None
    """Flags to set with F_SETFL after making it (None: set at open)."""
    pos: int | None
    """The position to seek to (None: not seekable, or not restored for the kind)."""
    locks: list[LockPlan] = []
    pid: int = 0
    fd: int = 0
    """The task and fd the description is first planned for: what an error names."""


class LockPlan(msgspec.Struct, kw_only=True):
    """A lock to take again: ``flock`` and ``ofd`` belong to the description (taken when
    it is made), ``posix`` to the process (taken once the fds are in place)."""

    type: Literal["flock", "ofd", "posix"]
    pid: int
    """For a POSIX lock, the task whose process takes it."""
    write: bool
    start: int
    length: int
    """Bytes from ``start``; 0: to the end of the file, however it grows."""


class FdSlot(msgspec.Struct, kw_only=True):
    fd: int
    description: int
    """Index into ``RestorePlan.descriptions``."""
    cloexec: bool


class Inode(msgspec.Struct, kw_only=True):
    """An unlinked file made again, its saved content written back at its offsets, holes
    left as holes: a memfd (then its seals), or an unlinked regular file as an unnamed
    file (O_TMPFILE) in the directory it lived in, a memfd when that cannot be."""

    name: str
    size: int
    runs: list[tuple[int, bytes]]
    seals: int
    path: str | None = None
    """An unlinked regular file's path, without `` (deleted)``: absolute, its directory
    resolved under the root is where it is made again; "" when the image has no such
    path; None for a memfd."""
    mode: int = 0o600
    """Its permission bits (an unnamed file's; never set-id)."""


class Pipe(msgspec.Struct, kw_only=True):
    capacity: int
    data: bytes
    packets: list[int] | None
    """Write ``data`` packet by packet (through an O_DIRECT end) when set."""


class SocketPair(msgspec.Struct, kw_only=True):
    type: SockType


class Skipped(msgspec.Struct, kw_only=True):
    fd: int
    kind: str
    path: str


class RestorePlan(msgspec.Struct, kw_only=True):
    pid: int
    inodes: list[Inode]
    pipes: list[Pipe]
    pairs: list[SocketPair]
    descriptions: list[Description]
    fds: list[FdSlot]
    """Ascending by fd."""
    skipped: list[Skipped]
    tasks: list[TaskSlots] = []
    """Each task's table, parents before children (one task but with ``--tree``);
    ``fds`` holds every task's slots."""


class TaskSlots(msgspec.Struct, kw_only=True):
    pid: int
    parent: int | None
    """Index into ``RestorePlan.tasks`` of the parent (None: the root)."""
    fds: list[FdSlot]
