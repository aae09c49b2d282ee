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

import os
from collections.abc import Container

from ._decode import Image
from ._errors import RestoreError, UsageError
from ._names import os_name
from ._records import File, Task
from ._restore_model import (
    Description,
    Epoll,
    EventFd,
    FdSlot,
    Hook,
    Inode,
    LockPlan,
    Make,
    OpenPath,
    Pipe,
    PipeEnd,
    Reopen,
    RestorePlan,
    SignalFd,
    Skipped,
    SocketEnd,
    SocketPair,
    TaskSlots,
    TimerFd,
    Watch,
)
from ._restore_model import Refuse as _Refuse
from ._restore_pidfd import plan_pidfd
from ._restore_rules import (
    ACCESS,
    CLOCKS,
    FMT,
    KINDS,
    LOCK_TYPES,
    MAX_EVENTFD,
    MAX_MEMFD_NAME,
    MAX_PATH,
    MAX_PIPE_SIZE,
    MAX_UNLINKED_SIZE,
    NEVER,
    PTY_SLAVES,
    SAFE_DEVICES,
    SEAL_MASK,
    SETFL,
    SOCK_TYPES,
    checked_int,
    checked_name,
    checked_path,
    fd_kind,
    plan_bind,
    plan_inotify,
    record_data,
    timespec,
)
from ._restore_unix import UnixPeer, pair_peer, plan_unix, unix_sockets

__all__ = ["plan_table", "plan_tree"]


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
            kind = LOCK_TYPES.get(lock.type or "")
            if kind is None:
                raise _Refuse(
                    f"a lock or lease it holds cannot be taken again ({lock.text.strip()})"
                )
            if kind == "posix" and lock.pid not in self.pids:
                continue
            if lock.access not in ("READ", "WRITE") or lock.start is None:
                raise _Refuse(f"a lock of unknown extent ({lock.text.strip()})")
            start = checked_int(lock.start, 0, 2**63 - 1, "lock start")
            end = None if lock.end is None else checked_int(lock.end, start, 2**63 - 1, "lock end")
            length = 0 if end is None else end - start + 1
            holder = lock.pid if kind == "posix" and lock.pid is not None else self.pid
            out.append(
                LockPlan(
                    type=kind, pid=holder, write=lock.access == "WRITE", start=start, length=length
                )
            )
        return out

    def _open_flags(self, f: File) -> int:
        extra = f.flags & ~(os.O_ACCMODE | NEVER | os.O_ASYNC | os.O_CLOEXEC)
        return ACCESS[f.access] | extra

    def _make(self, f: File, kind: str, table: list[File]) -> tuple[Make, int | None, int | None]:
        data = record_data(f)
        pos = checked_int(f.pos, 0, 2**63 - 1, "position")
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
            path = checked_path(f.path, f.path_bytes, "path")
            fmt = FMT.get(f.type)
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
                capacity = checked_int(data.get("capacity"), 4096, MAX_PIPE_SIZE, "pipe capacity")
            make = OpenPath(
                path=path,
                flags=flags,
                fmt=fmt,
                dev=f.dev,
                ino=f.ino,
                size=f.size,
                rdev=f.rdev,
                capacity=capacity,
            )
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
            count = checked_int(data.get("count"), 0, MAX_EVENTFD, "eventfd count")
            semaphore = data.get("semaphore")
            if not isinstance(semaphore, bool):
                raise _Refuse("the image does not say whether it is a semaphore")
            return EventFd(count=count, semaphore=semaphore), f.flags & SETFL, None
        if kind == "timerfd":
            return self._timerfd(data), f.flags & SETFL, None
        if kind == "signalfd":
            mask = checked_int(data.get("sigmask"), 0, 2**64 - 1, "signal mask")
            return SignalFd(mask=mask), f.flags & SETFL, None
        if kind == "inotify":
            return plan_inotify(data), f.flags & SETFL, None
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
            settime_flags=checked_int(data.get("settime_flags"), 0, 3, "settime flags"),
            value=timespec(data.get("it_value"), "it_value"),
            interval=timespec(data.get("it_interval"), "it_interval"),
            ticks=checked_int(data.get("ticks"), 0, 2**64 - 1, "ticks"),
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
                        events=checked_int(target.get("events"), 0, 0xFFFFFFFF, "events"),
                        data=checked_int(target.get("data"), 0, 2**64 - 1, "user data"),
                    )
                )

    def _inode_of(self, f: File, kind: str, data: dict[str, object]) -> int:
        size = checked_int(f.size, 0, MAX_UNLINKED_SIZE, "size")
        if f.ghost == "saved" and f.ghost_file is not None:
            key = ("ghost", f.ghost_file, 0)
            runs = [(c.offset, c.data) for c in self.image.contents.get(f.ghost_file, [])]
        elif size == 0:
            key, runs = ("empty", f.dev, f.ino), []
        else:
            raise _Refuse(f"its content is not in the image (ghost {f.ghost})")
        if key in self._inode:
            return self._inode[key]
        if kind == "memfd":
            name = checked_name(data.get("name"), data.get("name_bytes"), "memfd name")
            if len(os.fsencode(name)) > MAX_MEMFD_NAME:
                raise _Refuse("no memfd name of at most 249 bytes")
            seals = data.get("seals")
            seals = 0 if seals is None else checked_int(seals, 0, SEAL_MASK, "seals")
            inode = Inode(name=name, size=size, runs=runs, seals=seals)
        else:  # an unnamed file in its directory; st_mode 0: not recorded (version 1)
            gone = checked_name(f.path, f.path_bytes, "path").removesuffix(" (deleted)")
            path = gone if gone.startswith("/") and len(os.fsencode(gone)) <= MAX_PATH else ""
            name, mode = os.path.basename(gone)[:64], f.st_mode & 0o777 if f.st_mode else 0o600
            inode = Inode(name=name, size=size, runs=runs, seals=0, path=path, mode=mode)
        self.plan.inodes.append(inode)
        return self._inode.setdefault(key, len(self.plan.inodes) - 1)  # a new key

    def _pipe_end(
        self, f: File, data: dict[str, object], table: list[File]
    ) -> tuple[Make, int | None, int | None]:
        ino = checked_int(data.get("ino"), 1, 2**64 - 1, "pipe inode")
        end = data.get("end")
        if end not in ("read", "write"):
            raise _Refuse(f"a pipe end {end!r}")
        index = self._pipe.get(ino)
        if index is None:
            capacity = checked_int(data.get("capacity"), 4096, MAX_PIPE_SIZE, "pipe capacity")
            queued = checked_int(data.get("queued", 0), 0, capacity, "queued bytes")
            content, packets = self._queued(ino, queued, table)
            self.plan.pipes.append(Pipe(capacity=capacity, data=content, packets=packets))
            index = self._pipe[ino] = len(self.plan.pipes) - 1
        return PipeEnd(pipe=index, end=end), f.flags & SETFL, None

    def _queued(self, ino: int, queued: int, table: list[File]) -> tuple[bytes, list[int] | None]:
        """The pipe's queued data, from the record of its read end that holds it."""
        if queued == 0:
            return b"", None
        for other in table:
            d = record_data(other) if other.type == "pipe" else {}
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
            self._unix = (table, unix_sockets(table, record_data))
        return self._unix[1]

    def _socket_end(self, f: File, data: dict[str, object], table: list[File]) -> Make:
        ino = checked_int(data.get("ino"), 1, 2**64 - 1, "socket inode")
        known = self._pair.get(ino)
        shutdown = data.get("shutdown")
        if shutdown not in (None, "read", "write", "both"):
            raise _Refuse(f"shutdown {shutdown!r}")
        if known is not None:
            return SocketEnd(pair=known[0], end=1 if known[1] else 0, shutdown=shutdown)
        if data.get("family") in ("inet", "inet6"):
            return plan_bind(data)
        if data.get("family") != "unix":
            raise _Refuse("only unix and inet sockets are restored")
        peers = self._unix_sockets(table)
        peer = pair_peer(data, peers)
        if peer is None:
            return plan_unix(f, data, peers, shutdown)
        sotype = data.get("type")
        if sotype not in SOCK_TYPES:
            raise _Refuse(f"a unix socket of type {sotype!r}")
        for side in (data, peer.data):
            if side.get("recv_queue") not in (None, 0):
                raise _Refuse("data queued in a socket is not in the image")
        self.plan.pairs.append(SocketPair(type=SOCK_TYPES[sotype]))
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
