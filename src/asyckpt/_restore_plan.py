"""From an image and a pid, a validated plan to rebuild that task's fd table (pure).

Nothing here touches the system: the plan says which kernel objects to make (an
unlinked file's inode, a pipe, a socketpair), which open file description each fd
refers to and how to make it, and which fd numbers to install it at, every number
checked against bounds first, so that the I/O side (``_restore``) never acts on a value
an image merely claims.  A fd of a kind not restored is a :class:`RestoreError` naming
pid, fd and kind, unless its kind is skipped; the plan lists what was skipped.

One open file description of the image (a ``File``) is one :class:`Description`; every
fd of the table naming it is a dup of it, so sharing within the table is kept.  Two
descriptions of one unlinked inode (a memfd opened twice) reopen one :class:`Inode`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Container
from typing import Literal

import msgspec

from ._decode import Image
from ._errors import RestoreError, UsageError
from ._names import os_name
from ._records import File, Task
from ._restore_model import (
    Bind,
    Description,
    Epoll,
    EventFd,
    FdSlot,
    Hook,
    Inode,
    Inotify,
    InotifyWatch,
    LockPlan,
    Make,
    OpenPath,
    PidFd,
    Pipe,
    PipeEnd,
    Reopen,
    RestorePlan,
    SignalFd,
    Skipped,
    SocketEnd,
    SocketPair,
    SockType,
    TaskSlots,
    TimerFd,
    Watch,
)
from ._restore_model import Refuse as _Refuse
from ._restore_pidfd import plan_pidfd
from ._restore_unix import UnixPeer, pair_peer, plan_unix, unix_sockets

__all__ = [
    "KINDS", "MAX_UNLINKED_SIZE", "Bind", "Description", "Epoll", "EventFd", "FdSlot", "Hook",
    "Inode", "Inotify", "LockPlan", "OpenPath", "PidFd", "Pipe", "PipeEnd", "Reopen",
    "RestoreError", "RestorePlan", "SignalFd", "Skipped", "SocketEnd", "SocketPair", "TaskSlots",
    "TimerFd", "Watch", "fd_kind", "plan_table", "plan_tree",
]  # fmt: skip

KINDS = (
    "reg", "dir", "path", "unlinked", "memfd", "chr", "blk", "fifo", "pipe", "socket",
    "eventfd", "epoll", "timerfd", "signalfd", "inotify", "fanotify", "pidfd", "anon",
)  # fmt: skip
"""The words ``--skip`` takes: every kind of fd an image can hold."""

MAX_UNLINKED_SIZE = 16 << 30
"""The largest unlinked file (holes included) recreated: what one image can hold."""
MAX_PIPE_SIZE = 1 << 30
MAX_EVENTFD = 2**64 - 2
MAX_PATH = 4095
MAX_MEMFD_NAME = 249  # bytes: memfd_create(2)'s limit
SEAL_MASK = 0x3F  # F_SEAL_SEAL .. F_SEAL_EXEC

# /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom: opening them does nothing
# but hand out a file.  Other devices may act on open (a tape rewinds, a tty becomes
# the controlling terminal), so they are not reopened.
SAFE_DEVICES = frozenset({(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)})
PTY_SLAVES = range(136, 144)
"""The majors of /dev/pts/N: a pty's slave end, opened O_NOCTTY, only adds a reference
(not a serial line, whose open may raise its modem lines; not /dev/tty or /dev/ptmx,
which would name or make another terminal)."""

# Open flags an image may not ask for: restore never creates or truncates.
_O_TMPFILE_BIT = 0o20000000
_NEVER = os.O_CREAT | os.O_EXCL | os.O_TRUNC | _O_TMPFILE_BIT | os.O_NOCTTY
# What F_SETFL changes (fs/fcntl.c SETFL_MASK); O_ASYNC goes with an I/O owner, which
# is refused.
SETFL = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME
_ACCESS = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "path": os.O_PATH}
_FMT = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK, "chr": stat.S_IFCHR,
        "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK}  # fmt: skip
_SOCK_TYPES: dict[object, SockType] = {
    "stream": "stream",
    "dgram": "dgram",
    "seqpacket": "seqpacket",
}


def _data(f: File) -> dict[str, object]:
    """The handler's record as a plain map ({} when there is none)."""
    try:
        value = msgspec.msgpack.decode(f.data)
    except (msgspec.DecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def fd_kind(f: File) -> str:
    """The ``--skip`` word for one open file description."""
    tag = _data(f).get("kind")
    if f.type == "anon":
        if isinstance(tag, str) and tag.startswith("asyckpt.") and tag[8:] in KINDS:
            return tag[8:]
        name = f.path.removeprefix("anon_inode:").strip("[]")
        name = "epoll" if name == "eventpoll" else name
        return name if name in KINDS else "anon"
    if f.access == "path":
        return "path"
    if tag == "asyckpt.memfd":
        return "memfd"
    if f.type == "reg" and f.deleted:
        return "unlinked"
    if f.type == "link":
        return "path"
    return f.type


_LOCK_TYPES: dict[str, Literal["flock", "ofd", "posix"]] = {
    "FLOCK": "flock",
    "OFDLCK": "ofd",
    "POSIX": "posix",
}

CLOCKS = (0, 1, 7, 8, 9)
"""CLOCK_REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM: timerfd's clocks."""


def _timespec(value: object, what: str) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _Refuse(f"{what} {value!r} is not (seconds, nanoseconds)")
    return _int(value[0], 0, 2**62, what), _int(value[1], 0, 999_999_999, what)


def _inotify(data: dict[str, object]) -> Inotify:
    """The watches, by ascending watch descriptor, each on a path checked against the
    watched inode."""
    watches = data.get("watches")
    if data.get("resolved") is not True or not isinstance(watches, list):
        raise _Refuse("its watches' paths were not resolved at capture")
    out = []
    for w in sorted(watches, key=lambda w: w.get("wd") or 0 if isinstance(w, dict) else 0):
        if not isinstance(w, dict):
            raise _Refuse("a watch that is not a map")
        if w.get("deleted") or not isinstance(w.get("path"), str):
            raise _Refuse(f"watch {w.get('wd')!r}: its path is unknown or unlinked")
        path = _path(w.get("path"), w.get("path_bytes"), f"watch {w.get('wd')!r}")
        out.append(
            InotifyWatch(
                path=path,
                mask=_int(w.get("mask"), 1, 0xFFFFFFFF, "watch mask"),
                dev=_int(w.get("dev"), 0, 2**64 - 1, "watch device"),
                ino=_int(w.get("ino"), 0, 2**64 - 1, "watch inode"),
            )
        )
    return Inotify(watches=out)


def _bind(data: dict[str, object]) -> Bind:
    """A TCP listener or an unconnected UDP socket, bound again to its address."""
    family, sotype, state = data.get("family"), data.get("type"), data.get("state")
    if sotype == "stream" and state == "LISTEN" and data.get("proto") == "tcp":
        if data.get("accept_queue") not in (None, 0):
            raise _Refuse("connections wait in its accept queue (not restored)")
        backlog = _int(data.get("backlog"), 0, 65535, "backlog")
    elif sotype == "dgram" and state == "CLOSE" and data.get("proto") == "udp":
        if data.get("recv_queue") not in (None, 0):
            raise _Refuse("datagrams queued in it are not in the image")
        if data.get("remote_port") not in (None, 0):
            raise _Refuse("a connected UDP socket (its peer is not restored)")
        backlog = 0
    else:
        raise _Refuse("only TCP listeners and unconnected UDP sockets of inet are restored")
    if data.get("interface") is not None or data.get("ifindex") not in (None, 0):
        raise _Refuse("bound to a device (not restored)")
    address = data.get("local_address")
    try:
        ip = ipaddress.ip_address(address)  # type: ignore[arg-type]
    except ValueError:
        raise _Refuse(f"local address {address!r}") from None
    if ip.version != (4 if family == "inet" else 6):
        raise _Refuse(f"local address {address!r} of another family")
    netns = data.get("netns")
    return Bind(
        family="inet" if family == "inet" else "inet6",
        socktype="stream" if sotype == "stream" else "dgram",
        address=str(ip),
        port=_int(data.get("local_port"), 1, 65535, "local port"),
        backlog=backlog,
        reuseaddr=data.get("reuseaddr") is True,
        reuseport=data.get("reuseport") is True,
        netns=netns if type(netns) is int else None,
    )


def _os_name(value: object, raw: object, what: str) -> str:
    """A name field of a record as ``os`` takes it (its exact bytes, surrogateescaped):
    the text, or the ``_bytes`` companion of one that is not UTF-8."""
    if not isinstance(value, str) or not isinstance(raw, bytes | None):
        raise _Refuse(f"no {what}")
    name = os_name(value, raw)
    if "\0" in name:
        raise _Refuse(f"a {what} with a NUL")
    return name


def _path(value: object, raw: object, what: str) -> str:
    path = _os_name(value, raw, what)
    if not path.startswith("/") or len(os.fsencode(path)) > MAX_PATH:
        raise _Refuse(f"{what}: no absolute path of at most 4095 bytes")
    return path


def _int(value: object, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _Refuse(f"{what} {value!r} out of range {lo}..{hi}")
    return value


class _Planner:
    def __init__(self, image: Image, pid: int, skip: frozenset[str]) -> None:
        self.image = image
        self.pid = pid
        self.skip = skip
        self.plan = RestorePlan(
            pid=pid, inodes=[], pipes=[], pairs=[], descriptions=[], fds=[], skipped=[]
        )
        self._desc: dict[int, int] = {}  # file id -> description index
        self._inode: dict[tuple[str, int, int], int] = {}
        self._pipe: dict[int, int] = {}  # pipe ino -> index
        self._pair: dict[int, tuple[int, int]] = {}  # socket ino -> (pair, end)
        self._epolls: list[tuple[File, dict[str, object], int]] = []
        self._unix: tuple[list[File], dict[int, UnixPeer]] | None = None
        self.pids: frozenset[int] = frozenset({pid})
        self.linking = -1
        self.fd = -1

    def description(self, f: File, kind: str, table: list[File], hook: Hook | None = None) -> int:
        index = self._desc.get(f.id)
        if index is None:
            # The locks first: a refusal of the make leaves nothing planned for ``f``.
            locks = self._locks(f)
            make, setfl, pos = self._make(f, kind, table) if hook is None else (hook, None, None)
            self.plan.descriptions.append(
                Description(
                    file=f.id,
                    kind=kind,
                    make=make,
                    setfl=setfl,
                    pos=pos,
                    locks=locks,
                    pid=self.pid,
                    fd=self.fd,
                )
            )
            index = self._desc[f.id] = len(self.plan.descriptions) - 1
        return index

    def _locks(self, f: File) -> list[LockPlan]:
        """The locks of ``f`` this task holds: flock and OFD locks (the description's),
        and POSIX locks whose owner is this task (another task's, through a shared
        description, are not this table's).  A lease or a lock of another kind refuses."""
        out = []
        for lock in f.locks:
            kind = _LOCK_TYPES.get(lock.type or "")
            if kind is None:
                raise _Refuse(
                    f"a lock or lease it holds cannot be taken again ({lock.text.strip()})"
                )
            if kind == "posix" and lock.pid not in self.pids:
                continue
            if lock.access not in ("READ", "WRITE") or lock.start is None:
                raise _Refuse(f"a lock of unknown extent ({lock.text.strip()})")
            start = _int(lock.start, 0, 2**63 - 1, "lock start")
            end = None if lock.end is None else _int(lock.end, start, 2**63 - 1, "lock end")
            length = 0 if end is None else end - start + 1
            holder = lock.pid if kind == "posix" and lock.pid is not None else self.pid
            out.append(
                LockPlan(
                    type=kind, pid=holder, write=lock.access == "WRITE", start=start, length=length
                )
            )
        return out

    def _open_flags(self, f: File) -> int:
        extra = f.flags & ~(os.O_ACCMODE | _NEVER | os.O_ASYNC | os.O_CLOEXEC)
        return _ACCESS[f.access] | extra

    def _make(self, f: File, kind: str, table: list[File]) -> tuple[Make, int | None, int | None]:
        data = _data(f)
        pos = _int(f.pos, 0, 2**63 - 1, "position")
        if f.owner is not None or f.flags & os.O_ASYNC:
            raise _Refuse("its I/O owner and signal (F_SETOWN, F_SETSIG, O_ASYNC) are not restored")
        if kind in ("reg", "dir", "path", "chr", "fifo"):
            device = (os.major(f.rdev), os.minor(f.rdev))
            if kind == "chr" and device not in SAFE_DEVICES and device[0] not in PTY_SLAVES:
                raise _Refuse(
                    "a device other than null, zero, full, random, urandom or a pty's slave"
                )
            if f.deleted or f.path_state in ("deleted", "deleted-linked"):
                raise _Refuse("its path was unlinked and its content is not in the image")
            path = _path(f.path, f.path_bytes, "path")
            fmt = _FMT.get(f.type)
            if fmt is None:
                raise _Refuse(f"a {f.type} has no path")
            flags = self._open_flags(f)
            if kind == "path":
                flags = (
                    os.O_PATH
                    | (f.flags & os.O_NOFOLLOW)
                    | (os.O_NOFOLLOW if f.type == "link" else 0)
                )
            if kind == "dir":
                flags |= os.O_DIRECTORY
            capacity = 0
            if kind == "fifo":
                # Data queued in a FIFO lives in it, with whoever else holds it open.
                if data.get("queued") != 0:
                    raise _Refuse(f"{data.get('queued')!r} bytes queued in it (not restored)")
                capacity = _int(data.get("capacity"), 4096, MAX_PIPE_SIZE, "pipe capacity")
            make = OpenPath(path=path, flags=flags, fmt=fmt, dev=f.dev, ino=f.ino,
                            size=f.size, rdev=f.rdev, capacity=capacity)  # fmt: skip
            setfl = f.flags & SETFL if kind == "fifo" else None
            return make, setfl, (pos if kind in ("reg", "dir") else None)
        if kind in ("unlinked", "memfd"):
            if data.get("hugetlb") is True:
                raise _Refuse("a hugetlb memfd")
            return Reopen(inode=self._inode_of(f, kind, data), flags=self._open_flags(f)), None, pos
        if kind == "pipe":
            return self._pipe_end(f, data, table)
        if kind == "socket":
            return self._socket_end(f, data, table), f.flags & SETFL, None
        if kind == "eventfd":
            count = _int(data.get("count"), 0, MAX_EVENTFD, "eventfd count")
            semaphore = data.get("semaphore")
            if not isinstance(semaphore, bool):
                raise _Refuse("the image does not say whether it is a semaphore")
            return EventFd(count=count, semaphore=semaphore), f.flags & SETFL, None
        if kind == "timerfd":
            return self._timerfd(data), f.flags & SETFL, None
        if kind == "signalfd":
            mask = _int(data.get("sigmask"), 0, 2**64 - 1, "signal mask")
            return SignalFd(mask=mask), f.flags & SETFL, None
        if kind == "inotify":
            return _inotify(data), f.flags & SETFL, None
        if kind == "pidfd":
            try:
                return plan_pidfd(data, self.pids, f.flags), None, None
            except ValueError as why:
                raise _Refuse(str(why)) from None
        if kind == "epoll":
            self._epolls.append((f, data, self.pid))
            return Epoll(watches=[], pid=self.pid), f.flags & SETFL, None  # see link_epolls
        raise _Refuse("not restored by this version")

    def _timerfd(self, data: dict[str, object]) -> TimerFd:
        clockid = data.get("clockid")
        if clockid not in CLOCKS:
            raise _Refuse(f"clock {clockid!r}")
        assert isinstance(clockid, int)
        return TimerFd(
            clockid=clockid,
            settime_flags=_int(data.get("settime_flags"), 0, 3, "settime flags"),
            value=_timespec(data.get("it_value"), "it_value"),
            interval=_timespec(data.get("it_interval"), "it_interval"),
            ticks=_int(data.get("ticks"), 0, 2**64 - 1, "ticks"),
        )

    def link_epolls(self, slots: dict[int, dict[int, list[int]]]) -> None:
        """Each epoll's watches, once every description of the table is planned:
        ``slots`` gives each description's fd numbers."""
        for f, data, pid in self._epolls:
            self.linking = self._desc[f.id]
            self.pid = pid
            make = self.plan.descriptions[self.linking].make
            assert isinstance(make, Epoll)
            targets = data.get("targets")
            if data.get("linked") is not True or not isinstance(targets, list):
                raise _Refuse("its targets were not linked to files at capture")
            for target in targets:
                if not isinstance(target, dict):
                    raise _Refuse("a target that is not a map")
                index = self._desc.get(target.get("file"))  # type: ignore[arg-type]
                if index is None:
                    raise _Refuse(f"a target (fd {target.get('tfd')!r}) not restored in the table")
                numbers = slots[pid].get(index)
                if numbers is None:
                    raise _Refuse(f"a target (fd {target.get('tfd')!r}) not in its task's table")
                tfd = target.get("tfd")
                make.watches.append(
                    Watch(
                        description=index,
                        tfd=tfd if isinstance(tfd, int) and tfd in numbers else numbers[0],
                        events=_int(target.get("events"), 0, 0xFFFFFFFF, "events"),
                        data=_int(target.get("data"), 0, 2**64 - 1, "user data"),
                    )
                )

    def _inode_of(self, f: File, kind: str, data: dict[str, object]) -> int:
        size = _int(f.size, 0, MAX_UNLINKED_SIZE, "size")
        if f.ghost == "saved" and f.ghost_file is not None:
            key = ("ghost", f.ghost_file, 0)
            runs = [(c.offset, c.data) for c in self.image.contents.get(f.ghost_file, [])]
        elif size == 0:
            key, runs = ("empty", f.dev, f.ino), []
        else:
            raise _Refuse(f"its content is not in the image (ghost {f.ghost})")
        index = self._inode.get(key)
        if index is not None:
            return index
        if kind == "memfd":
            name = _os_name(data.get("name"), data.get("name_bytes"), "memfd name")
            if len(os.fsencode(name)) > MAX_MEMFD_NAME:
                raise _Refuse("no memfd name of at most 249 bytes")
            seals = data.get("seals")
            seals = 0 if seals is None else _int(seals, 0, SEAL_MASK, "seals")
        else:
            unlinked = _os_name(f.path, f.path_bytes, "path").removesuffix(" (deleted)")
            name, seals = os.path.basename(unlinked)[:64], 0
        self.plan.inodes.append(Inode(name=name, size=size, runs=runs, seals=seals))
        index = self._inode[key] = len(self.plan.inodes) - 1
        return index

    def _pipe_end(
        self, f: File, data: dict[str, object], table: list[File]
    ) -> tuple[Make, int | None, int | None]:
        ino = _int(data.get("ino"), 1, 2**64 - 1, "pipe inode")
        end = data.get("end")
        if end not in ("read", "write"):
            raise _Refuse(f"a pipe end {end!r}")
        index = self._pipe.get(ino)
        if index is None:
            capacity = _int(data.get("capacity"), 4096, MAX_PIPE_SIZE, "pipe capacity")
            queued = _int(data.get("queued", 0), 0, capacity, "queued bytes")
            content, packets = self._queued(ino, queued, table)
            self.plan.pipes.append(Pipe(capacity=capacity, data=content, packets=packets))
            index = self._pipe[ino] = len(self.plan.pipes) - 1
        return PipeEnd(pipe=index, end=end), f.flags & SETFL, None

    def _queued(self, ino: int, queued: int, table: list[File]) -> tuple[bytes, list[int] | None]:
        """The pipe's queued data, from the record of its read end that holds it."""
        if queued == 0:
            return b"", None
        for other in table:
            d = _data(other) if other.type == "pipe" else {}
            if d.get("ino") == ino and isinstance(d.get("content"), bytes):
                content = d["content"]
                assert isinstance(content, bytes)
                if d.get("content_truncated") or len(content) != queued:
                    raise _Refuse(f"{queued} bytes queued, only {len(content)} in the image")
                packets = d.get("packets")
                if packets is None:
                    return content, None
                if (
                    not isinstance(packets, list)
                    or not all(type(n) is int and 0 < n <= 65536 for n in packets)
                    or sum(packets) != len(content)
                ):
                    raise _Refuse("its packet lengths do not add up to its data")
                return content, packets
        raise _Refuse(f"{queued} bytes queued and not in the image (capture with --pipe-data)")

    def _unix_sockets(self, table: list[File]) -> dict[int, UnixPeer]:
        """The unix sockets of ``table`` by inode, indexed once per table."""
        if self._unix is None or self._unix[0] is not table:
            self._unix = (table, unix_sockets(table, _data))
        return self._unix[1]

    def _socket_end(self, f: File, data: dict[str, object], table: list[File]) -> Make:
        ino = _int(data.get("ino"), 1, 2**64 - 1, "socket inode")
        known = self._pair.get(ino)
        shutdown = data.get("shutdown")
        if shutdown not in (None, "read", "write", "both"):
            raise _Refuse(f"shutdown {shutdown!r}")
        if known is not None:
            return SocketEnd(pair=known[0], end=1 if known[1] else 0, shutdown=shutdown)
        if data.get("family") in ("inet", "inet6"):
            return _bind(data)
        if data.get("family") != "unix":
            raise _Refuse("only unix and inet sockets are restored")
        peers = self._unix_sockets(table)
        peer = pair_peer(data, peers)
        if peer is None:
            return plan_unix(f, data, peers, shutdown)
        sotype = data.get("type")
        if sotype not in _SOCK_TYPES:
            raise _Refuse(f"a unix socket of type {sotype!r}")
        for side in (data, peer.data):
            if side.get("recv_queue") not in (None, 0):
                raise _Refuse("data queued in a socket is not in the image")
        self.plan.pairs.append(SocketPair(type=_SOCK_TYPES[sotype]))
        pair = len(self.plan.pairs) - 1
        self._pair[ino] = (pair, 0)
        self._pair[peer.data["ino"]] = (pair, 1)  # type: ignore[index]
        return SocketEnd(pair=pair, end=0, shutdown=shutdown)


Hooks = Container[str]  # the names of the handlers with a restore hook


def plan_table(
    image: Image, pid: int, *, nofile: int, skip: frozenset[str] = frozenset(), hooks: Hooks = ()
) -> RestorePlan:
    """The plan to rebuild the fd table of task ``pid`` of ``image``, each fd number
    below ``nofile`` (the restoring process's RLIMIT_NOFILE).  Raises RestoreError,
    naming pid, fd and kind, for the first fd it cannot restore and whose kind is not in
    ``skip``; a file it cannot restore whose handler is in ``hooks`` (the names of the
    handlers with a restore hook) is left to that hook (a :class:`Hook`)."""
    task = next((t for t in image.tasks if t.pid == pid), None)
    if task is None:
        raise RestoreError(f"the image holds no task {pid}", pid=pid)
    return _plan(image, [task], nofile=nofile, skip=skip, tree=False, hooks=hooks)


def plan_tree(
    image: Image, *, nofile: int, skip: frozenset[str] = frozenset(), hooks: Hooks = ()
) -> RestorePlan:
    """The plan to rebuild every task's fd table, in a tree of the image's shape: each
    open file description made once, whichever tasks share it (``tasks`` lists each
    task's slots, parents first).  Zombies are refused (their pids cannot be had)."""
    return _plan(image, image.tasks, nofile=nofile, skip=skip, tree=True, hooks=hooks)


def _plan(
    image: Image, tasks: list[Task], *, nofile: int, skip: frozenset[str], tree: bool, hooks: Hooks
) -> RestorePlan:
    unknown = sorted(skip - set(KINDS))
    if unknown:
        raise UsageError(f"--skip {unknown[0]}: not a kind ({', '.join(KINDS)})")
    planner = _Planner(image, tasks[0].pid, skip)
    planner.pids = frozenset(t.pid for t in tasks)
    # What a pipe's data and a socket's peer are looked for in: the table, or the tree.
    everything = list(image.files.values())
    index_of = {t.pid: n for n, t in enumerate(tasks)}
    slots: dict[int, dict[int, list[int]]] = {}
    for task in tasks:
        if task.fd_table is None:
            raise RestoreError("a zombie has no fd table to restore", pid=task.pid)
        fds = image.fds(task.fd_table)
        scope = everything if tree else [f for _, f in fds]
        planner.pid = task.pid
        mine: list[FdSlot] = []
        for fd, f in fds:
            kind = fd_kind(f)
            if fd.fd >= nofile:
                raise RestoreError(
                    f"fd {fd.fd} is not below RLIMIT_NOFILE ({nofile})", pid=task.pid, fd=fd.fd
                )
            if kind in skip:
                name = os_name(f.path, f.path_bytes)
                planner.plan.skipped.append(Skipped(fd=fd.fd, kind=kind, path=name))
                continue
            planner.fd = fd.fd
            try:
                try:
                    index = planner.description(f, kind, scope)
                except _Refuse:
                    if f.handler is None or f.handler not in hooks:
                        raise
                    hook = Hook(handler=f.handler, file=f, task=task)
                    index = planner.description(f, kind, scope, hook)
            except _Refuse as why:
                raise RestoreError(
                    f"cannot restore the {kind} ({os_name(f.path, f.path_bytes)}): {why} "
                    f"(--skip {kind} leaves it out)",
                    pid=task.pid,
                    fd=fd.fd,
                ) from None
            mine.append(FdSlot(fd=fd.fd, description=index, cloexec=fd.cloexec))
            slots.setdefault(task.pid, {}).setdefault(index, []).append(fd.fd)
        parent = index_of.get(task.ppid) if tree else None
        planner.plan.tasks.append(TaskSlots(pid=task.pid, parent=parent, fds=mine))
        planner.plan.fds += mine
    try:
        planner.link_epolls(slots)
    except _Refuse as why:
        d = planner.plan.descriptions[planner.linking]
        raise RestoreError(
            f"cannot restore the epoll: {why} (--skip epoll leaves it out)", pid=d.pid, fd=d.fd
        ) from None
    return planner.plan
