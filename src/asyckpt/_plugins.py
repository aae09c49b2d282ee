"""fd-type handlers: the contract, discovery through entry points, and dispatch.

Discovery follows flake8's finder: list the entry points of group ``asyckpt.fd_types``
(without importing them), load the ones selected, then validate the set as a whole,
sorted for determinism.  asyckpt's own reg, dir and link handlers come in through the
same group; the only thing that sets them apart is their distribution's name, which
``ASYCKPT_DISABLE_PLUGIN_AUTOLOAD`` keeps loading.

Dispatch runs for every new open file description while the tree is frozen (thousands
per capture), so everything a handler declares is turned into lookup tables when the set
is loaded, and the candidates for one kind of fd are computed once and memoized.  The
contract and the priority order are documented in docs/plugins.md.
"""

from __future__ import annotations

import errno
import functools
import importlib.metadata
import inspect
import os
import re
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol, final, runtime_checkable

import msgspec

from ._errors import AsyckptError, HandlerFailed, PluginError, translate_oserror
from ._kernel import (
    KCMP_FILE,
    OwnerRow,
    fd_owner,
    fd_owner_at,
    fs_magic,
    kcmp,
    kcmp_epoll_tfd,
    kcmp_raw,
    pidfd_getfd,
)
from ._procparse import FdInfo
from ._records import PluginInfo

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTIN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "SESSION_TIMEOUT",
    "CaptureLinks",
    "CaptureSession",
    "CaptureTree",
    "Chooser",
    "Conflict",
    "Device",
    "Dispatch",
    "FdFacts",
    "FdHandler",
    "HandlerContext",
    "ImagePlugin",
    "Installed",
    "LinkRef",
    "LoadedHandler",
    "PluginConflictWarning",
    "StatInfo",
    "Survey",
    "autoload_disabled",
    "image_plugins",
    "installed_handlers",
    "load_handlers",
    "survey",
]

ENTRY_POINT_GROUP = "asyckpt.fd_types"
AUTOLOAD_ENV = "ASYCKPT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "asyckpt"
KINDS = frozenset({"reg", "dir", "link", "pipe", "fifo", "socket", "chr", "blk", "anon"})
"""The kernel-level kinds the core tells apart (``FdFacts.kind``)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_TAG = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\Z")


@final
class StatInfo(NamedTuple):
    """stat(2) of the open file, with os.stat_result's names for what asyckpt reads."""

    st_mode: int
    st_dev: int
    st_ino: int
    st_rdev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_blocks: int


@final
class FdFacts(NamedTuple):
    """What the core knows about one fd before a handler sees it."""

    pid: int
    """The process holding the fd."""
    tid: int
    """The thread whose fd table holds it (== pid unless a thread unshared its table)."""
    fd: int
    kind: str
    """Kernel-level kind: reg, dir, link, pipe, fifo, socket, chr, blk, anon."""
    link: str
    """readlink of /proc/PID/fd/N, as the kernel wrote it."""
    path: str
    """The target as the task sees it, " (deleted)" removed."""
    deleted: bool
    st: StatInfo
    """stat of the open file (through the magic link, so without opening it)."""
    fdinfo: FdInfo


@final
class Device(NamedTuple):
    """A device a handler claims: ``Device("chr", 1, 3)`` is /dev/null; a minor of None
    claims every minor of the major."""

    kind: str
    """``chr`` or ``blk``: the two number spaces are separate."""
    major: int
    minor: int | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.major}:{'*' if self.minor is None else self.minor}"


PIDFD_THREAD = os.O_EXCL
"""pidfd_open(2) flag (Linux 6.9): a pidfd for this thread, not its thread group."""


def _pidfd_open(tid: int) -> int:
    try:
        return os.pidfd_open(tid)
    except OSError as exc:
        # A thread that unshared its fd table is not a thread-group leader: only a
        # thread pidfd reaches its table (pidfd_getfd reads the pidfd's task's files).
        # Before 6.9 that flag is EINVAL and this error is the one to report.
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise
        try:
            return os.pidfd_open(tid, PIDFD_THREAD)
        except OSError:
            raise exc from None


SESSION_TIMEOUT = 10.0
"""Seconds a capture waits for a handler's ``begin``; past them the tree is thawed
anyway and what needed the state is recorded generically, with the error."""


class _Pending:
    """The outcome of one handler's ``begin``, awaited from worker threads."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome; the first one recorded stands."""
        if not self._done.is_set():
            self._value, self._error = value, error
            self._done.set()

    def get(self, name: str, timeout: float) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"begin of handler {name!r} did not finish in {timeout:g} s")
        if self._error is not None:
            raise RuntimeError(
                f"its begin failed: {type(self._error).__name__}: {self._error}"
            ) from self._error
        return self._value


@final
class CaptureSession:
    """One capture as handlers see it: handed to a handler's optional ``begin(session)``
    once per capture, and reachable from ``capture`` and ``finish`` as ``ctx.session``.
    """

    def __init__(
        self,
        pids: Iterable[int],
        tids: Iterable[int] = (),
        *,
        pipe_data: int = 0,
        consistent: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.pids = tuple(pids)
        """The processes of the tree, in tree pre-order (zombies left out)."""
        self.tids = tuple(tids) or self.pids
        """Every thread of those processes, leaders included."""
        self.pipe_data = pipe_data
        """Bytes of queued data to copy from each pipe (``--pipe-data``); 0: none."""
        self.consistent = consistent
        """Whether the tree is frozen (false with ``--freeze=none``)."""
        self._timeout = SESSION_TIMEOUT if timeout is None else timeout
        self._deadline = time.monotonic() + self._timeout
        self.cancelled = threading.Event()
        """Set once asyckpt stops waiting for this capture's begins (the tree is thawed,
        the timeout passed, or the capture failed or was cancelled): a ``begin`` still
        running should return (wait on it, not ``time.sleep``)."""
        self._states: dict[str, _Pending] = {}
        # Asked once per fd a handler captures: a begin that succeeded is answered
        # without the lock and the event (its first outcome stands).
        self._ready: dict[str, Any] = {}
        self._lock = threading.Lock()

    def time_left(self) -> float:
        """Seconds asyckpt still waits for a ``begin``: the bound for its blocking calls
        (a socket's timeout, a ``wait``); 0 once past."""
        return max(0.0, self._deadline - time.monotonic())

    def _started(self, name: str) -> _Pending:
        """Register a handler's begin as started (by the capture, concurrently): from
        now on :meth:`_state_of` waits for its outcome instead of running it."""
        with self._lock:
            pending = self._states[name] = _Pending()
        return pending

    def _state_of(self, handler: LoadedHandler) -> Any:
        if handler.begin is None:
            return None
        if handler.name in self._ready:
            return self._ready[handler.name]
        with self._lock:
            pending = self._states.get(handler.name)
            if pending is None:
                # Nobody started it (a builder or a test without the capture pipeline):
                # run it here, once.
                pending = self._states[handler.name] = _Pending()
                try:
                    pending.set(handler.begin(self))
                except Exception as exc:
                    pending.set(error=exc)
        value = pending.get(handler.name, self._timeout)
        self._ready[handler.name] = value
        return value


@final
class HandlerContext:
    """Access to the live open file description, and to the capture it belongs to.

    Created by asyckpt, one per fd table.  Every fd taken is closed after the handler
    returns.
    """

    def __init__(self, tid: int, session: CaptureSession | None = None) -> None:
        self._pidfd: int | None = None
        self._tid = tid
        self._taken: dict[int, int] = {}
        self._session = session
        self._handler: LoadedHandler | None = None

    def take_fd(self, fd: int) -> int:
        """A descriptor for the *same* open file description as the task's ``fd``
        (pidfd_getfd(2)), never a re-open; valid until the handler returns.  Asking
        again for the same ``fd`` gives the same descriptor."""
        new = self._taken.get(fd)
        if new is None:
            new = self._taken[fd] = pidfd_getfd(self._pidfd_open(), fd)
        return new

    def _pidfd_open(self) -> int:
        if self._pidfd is None:
            self._pidfd = _pidfd_open(self._tid)
        return self._pidfd

    def _io_owner(self, fd: int) -> OwnerRow:
        """The I/O owner of the task's ``fd``, through the descriptor the handler took
        if it took one (before :meth:`_release`), else through one of its own."""
        ours = self._taken.get(fd)
        if ours is not None:
            return fd_owner(ours)
        return fd_owner_at(self._pidfd_open(), fd)

    @property
    def session(self) -> CaptureSession:
        """The capture this fd is part of (LookupError outside of one)."""
        if self._session is None:
            raise LookupError("this HandlerContext belongs to no capture session")
        return self._session

    @property
    def state(self) -> Any:
        """What this handler's ``begin(session)`` returned for this capture (None if it
        has no ``begin``), waiting for it if it is still running.  Raises if begin
        failed, so the fd is recorded generically with that error."""
        if self._handler is None:
            raise LookupError("this HandlerContext is not bound to a handler")
        return self.session._state_of(self._handler)

    def _release(self) -> None:
        while self._taken:
            os.close(self._taken.popitem()[1])

    def _close(self) -> None:
        self._release()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


@final
class CaptureTree:
    """What a handler's optional ``finish(record, tree)`` sees: the whole capture,
    once every fd of the tree has been read and the tree is thawed again."""

    def __init__(self, session: CaptureSession, files: Iterable[tuple[str, int, int]]) -> None:
        self.session = session
        self.pids = frozenset(session.pids)
        """The processes of the tree."""
        self._files = files
        self._index: dict[tuple[str, int], list[int]] | None = None
        self._handler: LoadedHandler | None = None
        self._states: dict[str, Any] = {}

    @property
    def state(self) -> Any:
        """What this handler's ``begin`` returned (as ``HandlerContext.state``)."""
        if self._handler is None:
            raise LookupError("this CaptureTree is not bound to a handler")
        name = self._handler.name
        # Asked once per record: every begin has ended by now, so its outcome is kept.
        if name not in self._states:
            self._states[name] = self.session._state_of(self._handler)
        return self._states[name]

    def holds(self, kind: str, ino: int, dev: int | None = None) -> bool:
        """Whether some fd of the tree is open on an object of ``kind`` (``socket``,
        ``pipe``, ``reg``...) with inode ``ino`` (and device ``dev``, if given: inode
        numbers are unique only within one filesystem; pipes' and sockets' each live on
        one)."""
        if self._index is None:
            index: dict[tuple[str, int], list[int]] = {}
            for k, d, i in self._files:
                index.setdefault((k, i), []).append(d)
            self._index = index
        devs = self._index.get((kind, ino))
        return devs is not None and (dev is None or dev in devs)


@final
class LinkRef(NamedTuple):
    """The fd a record was captured through: its process, the thread whose fd table
    holds it, and its number."""

    pid: int
    tid: int
    fd: int


Candidate = tuple[int, int, int]
"""(file id, tid, fd): a description of the tree, and an fd it can be reached through."""


def _kcmp_order(a: Candidate, b: Candidate) -> int:
    """A sort comparison in kcmp's KCMP_FILE order (the kernel's obfuscated pointer
    order, the one KCMP_EPOLL_TFD answers in too)."""
    return (0, -1, 1)[kcmp(a[1], b[1], KCMP_FILE, a[2], b[2])]


def _gone(exc: OSError, c: Candidate) -> int:
    """A candidate whose task or fd is gone (only in an unfrozen capture) is not the
    one; any other failure of kcmp is an error."""
    if exc.errno in (errno.ESRCH, errno.EBADF):
        return -1
    raise translate_oserror(exc, pid=c[1], fd=c[2], what="kcmp") from exc


@final
class CaptureLinks:
    """What a handler's optional ``link(record, links)`` sees: every description of the
    tree, resolved, while the tree is still frozen, so that fd tables are as they were
    read and kcmp(2) compares what the records describe.

    ``file_of`` and ``epoll_target`` name a description by its image file id.  Both find
    candidates by (device, inode) in an index of every resolved description, built on
    first use (a capture whose handlers never ask pays nothing), then let kcmp decide
    among them: inode numbers alone cannot tell two opens of one file apart (nor, for
    eventfds, timerfds, epolls... which share one anonymous inode, two objects).
    """

    def __init__(
        self,
        session: CaptureSession,
        files: Iterable[tuple[int, int, int, int, int]],
        tables: Callable[[int], Mapping[int, int]] | None = None,
    ) -> None:
        self.session = session
        self.pids = frozenset(session.pids)
        """The processes of the tree."""
        self.ref = LinkRef(0, 0, -1)
        """The fd the record being linked was captured through (its first fd)."""
        self._files = files
        self._tables = tables
        self._table_cache: dict[int, Mapping[int, int]] = {}
        self._groups: dict[tuple[int, int], list[Candidate]] | None = None
        self._by_ino: dict[int, list[tuple[int, int]]] = {}
        self._dev_ino: dict[int, tuple[int, int]] = {}
        self._sorted: set[tuple[int, int]] = set()
        self._handler: LoadedHandler | None = None
        self._states: dict[str, Any] = {}

    @property
    def state(self) -> Any:
        """What this handler's ``begin`` returned (as ``HandlerContext.state``)."""
        if self._handler is None:
            raise LookupError("these CaptureLinks are not bound to a handler")
        name = self._handler.name
        if name not in self._states:
            self._states[name] = self.session._state_of(self._handler)
        return self._states[name]

    def _index(self) -> dict[tuple[int, int], list[Candidate]]:
        if self._groups is None:
            groups: dict[tuple[int, int], list[Candidate]] = {}
            for dev, ino, file_id, tid, fd in self._files:
                groups.setdefault((dev, ino), []).append((file_id, tid, fd))
                self._dev_ino[file_id] = (dev, ino)
            for dev, ino in groups:
                self._by_ino.setdefault(ino, []).append((dev, ino))
            self._groups = groups
        return self._groups

    def _candidates(self, dev: int | None, ino: int) -> tuple[tuple[int, int], list[Candidate]]:
        """The group of descriptions on inode ``ino`` of device ``dev``; of every device
        when none is on ``dev`` (a filesystem whose stat shows another device than its
        superblock's, as btrfs subvolumes do: kcmp still decides)."""
        groups = self._index()
        if dev is not None and (dev, ino) in groups:
            return (dev, ino), groups[(dev, ino)]
        keys = self._by_ino.get(ino, [])
        return (-1, ino), [c for key in keys for c in groups[key]]

    def _in_order(self, key: tuple[int, int], group: list[Candidate]) -> bool:
        """Sort a group in kcmp order, once, for binary search; False if it cannot be
        (an unfrozen capture whose task exited)."""
        if key in self._sorted:
            return True
        if key[0] < 0:
            return False
        try:
            group.sort(key=functools.cmp_to_key(_kcmp_order))
        except AsyckptError:
            return False
        self._sorted.add(key)
        return True

    def _table(self, tid: int) -> Mapping[int, int]:
        if self._tables is None:
            return {}
        if tid not in self._table_cache:
            self._table_cache[tid] = self._tables(tid)
        return self._table_cache[tid]

    def file_of(self, fd: int) -> int | None:
        """The image file id of the open file description that ``fd`` (a descriptor of
        asyckpt's own process: one taken with ``take_fd``, or received) refers to, or
        None if no task of the tree holds it."""
        st = os.fstat(fd)
        me = os.getpid()

        def compare(c: Candidate) -> int:
            try:
                return kcmp_raw(c[1], me, KCMP_FILE, c[2], fd)
            except OSError as exc:
                return _gone(exc, c)

        return self._search(st.st_dev, st.st_ino, compare, None)

    def epoll_target(
        self, tid: int, epfd: int, tfd: int, toff: int, dev: int | None, ino: int
    ) -> int | None:
        """The image file id of the description an epoll watches, or None if no task of
        the tree holds it: the epoll is ``epfd`` in thread ``tid``'s fd table, and the
        target its ``toff``-th watch added as fd ``tfd`` (in fdinfo order), on inode
        ``ino`` of device ``dev`` (userspace ``st_dev``) as its fdinfo says.  Decided by
        kcmp(2) KCMP_EPOLL_TFD, which finds the watch by the number it was added with:
        right even when that fd was closed or now names another file."""

        def compare(c: Candidate) -> int:
            try:
                return kcmp_epoll_tfd(c[1], c[2], tid, epfd, tfd, toff)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise LookupError("the epoll has no such watch") from None
                return _gone(exc, c)

        # The kernel walks the epoll's watches for each such kcmp, so they are kept
        # few: the fd of that number in the epoll's own table first (most often the
        # target), then a binary search of the others in kcmp order.
        hint = self._table(tid).get(tfd)
        try:
            return self._search(dev, ino, compare, hint)
        except LookupError:
            return None

    def _search(
        self, dev: int | None, ino: int, compare: Callable[[Candidate], int], hint: int | None
    ) -> int | None:
        key, group = self._candidates(dev, ino)
        if not group:
            return None
        tried = None
        if hint is not None and self._dev_ino.get(hint) == key:
            for c in group:
                if c[0] == hint:
                    if compare(c) == 0:
                        return hint
                    tried = hint
                    break
        if len(group) > 2 and self._in_order(key, group):
            lo, hi = 0, len(group)
            while lo < hi:
                mid = (lo + hi) // 2
                order = compare(group[mid])
                if order == 0:
                    return group[mid][0]
                if order == 1:  # the candidate orders before the target
                    lo = mid + 1
                elif order == 2:
                    hi = mid
                else:
                    break  # a candidate gone (unfrozen): no order to rely on
            else:
                return None
        for c in group:
            if c[0] != tried and compare(c) == 0:
                return c[0]
        return None


@runtime_checkable
class FdHandler(Protocol):
    """The contract of an fd-type handler (entry-point group ``asyckpt.fd_types``).

    Required: ``name`` (equal to the entry point's name), ``record_type`` (a msgspec
    Struct with ``tag="mydist.thing", tag_field="kind"``) and ``capture(facts, ctx)``,
    plain or ``async``, returning a ``record_type``.  What it claims is declared with any
    of the optional class attributes ``kinds``, ``link_prefixes``, ``devices`` and
    ``fs_magic`` (an fd matching any one of them is a candidate) and narrowed by an
    optional ``claims(facts) -> bool``; ``priority`` (default 0) orders candidates.
    Optional hooks: ``begin(session)`` once per capture, ``link(record, links)`` once
    per record after every fd of the tree is resolved but before the thaw (to name other
    descriptions of the tree by file id: ``links.file_of``, ``links.epoll_target``),
    ``finish(record, tree)`` once per record after the thaw, ``render_json(record)``,
    ``render_text(record)`` for ``asyckpt show``, and ``restore(record, file)``.
    docs/plugins.md has the whole contract.
    """

    name: ClassVar[str]
    record_type: ClassVar[type[msgspec.Struct]]

    def capture(
        self, facts: FdFacts, ctx: HandlerContext
    ) -> msgspec.Struct | Awaitable[msgspec.Struct]: ...


class PluginConflictWarning(UserWarning):
    """Two handlers claim the same thing at the same priority: the order between them
    is only their names'.  Give one a higher ``priority``."""


# --- validation: a handler object becomes a LoadedHandler, or a PluginError -------------


def _declared(
    who: str, handler: object, attr: str, item: Callable[[Any], Any], default: Any
) -> Any:
    value = getattr(handler, attr, default)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise PluginError(f"{who}: {attr} must be a collection, not {type(value).__name__}")
    try:
        return [item(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{who}: bad {attr} entry: {exc}") from None


def _kind(v: object) -> str:
    if v not in KINDS:
        raise ValueError(f"{v!r} is not a kind ({', '.join(sorted(KINDS))})")
    return str(v)


def _prefix(v: object) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{v!r} is not a non-empty str")
    return v


def _device(v: object) -> Device:
    if not isinstance(v, tuple) or len(v) not in (2, 3):
        raise ValueError(f"{v!r} is not a Device(kind, major, minor)")
    dev = Device(*v)
    if dev.kind not in ("chr", "blk"):
        raise ValueError(f"{v!r}: a device's kind is chr or blk")
    if not isinstance(dev.major, int) or not (dev.minor is None or isinstance(dev.minor, int)):
        raise ValueError(f"{v!r}: major and minor are ints (minor None for any)")
    return dev


def _magic(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{v!r} is not a filesystem magic number")
    return v


def _hook(who: str, handler: object, attr: str) -> Callable[..., Any] | None:
    fn = getattr(handler, attr, None)
    if fn is not None and not callable(fn):
        raise PluginError(f"{who}: {attr} must be a method")
    return fn


@final
class LoadedHandler:
    """A handler checked against the contract, with what it declares normalized."""

    __slots__ = (
        "_decoder",
        "begin",
        "capture",
        "devices",
        "distribution",
        "finish",
        "fs_magic",
        "handler",
        "is_async",
        "kinds",
        "link",
        "link_prefixes",
        "name",
        "predicate",
        "priority",
        "record_tag",
        "record_type",
        "render_json",
        "render_text",
        "restore",
        "version",
    )

    def __init__(self, handler: object, distribution: str, version: str) -> None:
        name = getattr(handler, "name", None)
        who = f"fd-type handler {distribution}[{name}]"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"{who}: name must be a word such as 'mydev', not {name!r}")
        if not isinstance(handler, FdHandler):
            raise PluginError(f"{who} does not implement the FdHandler contract")
        rtype = getattr(handler, "record_type", None)
        config = getattr(rtype, "__struct_config__", None)
        tag = getattr(config, "tag", None)
        if not (
            isinstance(rtype, type)
            and issubclass(rtype, msgspec.Struct)
            and isinstance(tag, str)
            and _TAG.match(tag)
            and getattr(config, "tag_field", None) == "kind"
        ):
            raise PluginError(
                f"{who}: record_type must be a msgspec.Struct declared with a namespaced "
                f'tag and tag_field="kind" (tag="mydist.thing"), not {rtype!r}'
            )
        priority = getattr(handler, "priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise PluginError(f"{who}: priority must be an int, not {priority!r}")
        self.handler: FdHandler = handler
        self.distribution = distribution
        self.version = version
        self.name: str = name
        self.record_type: type[msgspec.Struct] = rtype
        self.record_tag: str = tag
        self.priority: int = priority
        self.kinds = frozenset(_declared(who, handler, "kinds", _kind, ()))
        # Longest first: among one handler's prefixes the most specific is the one that
        # counts, and _plan looks them up in this order.
        self.link_prefixes = tuple(
            sorted(set(_declared(who, handler, "link_prefixes", _prefix, ())), key=_longest)
        )
        self.devices = frozenset(_declared(who, handler, "devices", _device, ()))
        self.fs_magic = frozenset(_declared(who, handler, "fs_magic", _magic, ()))
        self.predicate: Callable[[FdFacts], bool] | None = _hook(who, handler, "claims")
        if not self.selective and self.predicate is None:
            raise PluginError(
                f"{who} claims nothing: declare kinds, link_prefixes, devices or fs_magic, "
                "or a claims(facts) predicate"
            )
        capture = _hook(who, handler, "capture")
        assert capture is not None  # the Protocol check above
        self.capture: Callable[[FdFacts, HandlerContext], Any] = capture
        self.is_async = inspect.iscoroutinefunction(capture)
        self.render_json = _hook(who, handler, "render_json")
        self.render_text = _hook(who, handler, "render_text")
        self.restore = _hook(who, handler, "restore")
        # The session hooks run in worker threads, outside any event loop.
        self.begin: Callable[[CaptureSession], Any] | None = _hook(who, handler, "begin")
        self.finish: Callable[[Any, CaptureTree], Any] | None = _hook(who, handler, "finish")
        self.link: Callable[[Any, CaptureLinks], Any] | None = _hook(who, handler, "link")
        for attr in ("begin", "link", "finish"):
            if inspect.iscoroutinefunction(getattr(self, attr)):
                raise PluginError(f"{who}: {attr} must be a plain function, not async")
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(rtype)

    @property
    def selective(self) -> bool:
        """Whether it declares anything but a predicate (else every fd is offered to it)."""
        return bool(self.kinds or self.link_prefixes or self.devices or self.fs_magic)

    def selectors(self) -> list[str]:
        """What it claims, one phrase per declaration (``asyckpt plugins``, conflicts)."""
        out = [f"kind {k}" for k in sorted(self.kinds)]
        out += [f"link {p}*" for p in sorted(self.link_prefixes)]
        out += [str(d) for d in sorted(self.devices, key=_device_order)]
        out += [f"fs 0x{m:x}" for m in sorted(self.fs_magic)]
        if not self.selective:
            out.append("any fd")
        return out

    def describe_claims(self) -> str:
        text = ", ".join(self.selectors())
        return text + (" if claims()" if self.predicate is not None and self.selective else "")

    def hooks(self) -> list[str]:
        out = ["async"] if self.is_async else []
        for hook in ("begin", "link", "finish", "render_json", "render_text", "restore"):
            if getattr(self, hook) is not None:
                out.append(hook)
        return out

    def info(self) -> PluginInfo:
        """How an image header names this handler."""
        return PluginInfo(
            name=self.name,
            distribution=self.distribution,
            version=self.version,
            record_tag=self.record_tag,
        )

    def checked(self, record: object, hook: str) -> msgspec.Struct:
        """``record``, if it is of this handler's ``record_type``; what ``hook``
        (capture, link, finish) returned otherwise raises TypeError."""
        if type(record) is not self.record_type:
            raise TypeError(
                f"{hook} returned {type(record).__name__}, not its record_type "
                f"{self.record_type.__name__}"
            )
        assert isinstance(record, msgspec.Struct)
        return record

    def decode(self, data: bytes) -> msgspec.Struct:
        """The handler's record from its msgpack encoding (``File.data``)."""
        record: msgspec.Struct = self._decoder.decode(data)
        return record

    def __repr__(self) -> str:
        return f"<LoadedHandler {self.distribution}[{self.name}] {self.version}>"


def _longest(prefix: str) -> tuple[int, str]:
    return (-len(prefix), prefix)


def _device_order(d: Device) -> tuple[str, int, int]:
    return (d.kind, d.major, -1 if d.minor is None else d.minor)


# --- discovery ---------------------------------------------------------------------------


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@final
class Installed(NamedTuple):
    """One registered handler, known from its distribution's metadata, not yet imported."""

    name: str
    distribution: str
    version: str
    value: str
    """``module:attr`` of the handler."""
    entry_point: importlib.metadata.EntryPoint

    @property
    def builtin(self) -> bool:
        return _normalize(self.distribution) == BUILTIN_DISTRIBUTION


def installed_handlers() -> list[Installed]:
    """Every entry point of ``asyckpt.fd_types``, sorted by name, then distribution."""
    out = []
    # Name and version come from the distribution's METADATA, which every access parses
    # again: once per distribution, not twice per handler (a third of loading them).
    about: dict[int, tuple[str, str]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist, version = "?", "?"
        if ep.dist is not None:
            if id(ep.dist) not in about:
                meta = ep.dist.metadata
                about[id(ep.dist)] = (meta["Name"], meta["Version"])
            dist, version = about[id(ep.dist)]
        out.append(Installed(ep.name, dist, version, ep.value, ep))
    return sorted(out, key=lambda i: (i.name, _normalize(i.distribution), i.value))


def autoload_disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``ASYCKPT_DISABLE_PLUGIN_AUTOLOAD`` is set (to anything but "" or "0")."""
    return environ.get(AUTOLOAD_ENV, "") not in ("", "0")


def _load(found: Installed, *, hint: bool = True) -> LoadedHandler:
    who = f"fd-type handler {found.distribution}[{found.name}]"
    try:
        obj: Any = found.entry_point.load()
        handler = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        msg = f"failed to load {who} ({found.value}): {type(exc).__name__}: {exc}"
        if hint:
            msg += f" (--disable-plugin {found.name} runs without it)"
        raise PluginError(msg) from exc
    loaded = LoadedHandler(handler, found.distribution, found.version)
    if loaded.name != found.name:
        raise PluginError(
            f"{who}: its entry point is named {found.name!r} but the handler {loaded.name!r}; "
            "they must be equal"
        )
    return loaded


@final
class Survey(NamedTuple):
    """Every registered handler, what became of it, and the dispatch of those loaded."""

    rows: list[tuple[Installed, str, LoadedHandler | None]]
    """(handler, state, loaded): state is ``on``, ``disabled`` or ``not autoloaded``."""
    dispatch: Dispatch


def _check_names(
    known: set[str], disabled: Iterable[str], enabled: Iterable[str]
) -> tuple[set[str], set[str]]:
    skip, want = set(disabled), set(enabled)
    for name in sorted(skip | want):
        if name not in known:
            raise PluginError(
                f"no fd-type handler named {name!r} is installed (asyckpt plugins lists them)"
            )
    both = skip & want
    if both:
        raise PluginError(f"handler {sorted(both)[0]!r} is both enabled (-p) and disabled")
    return skip, want


def survey(
    *,
    disabled: Iterable[str] = (),
    enabled: Iterable[str] = (),
    autoload: bool | None = None,
    extra: Iterable[LoadedHandler] = (),
) -> Survey:
    """Load the handlers selected (see :func:`load_handlers`) and say what became of all."""
    found = installed_handlers()
    extra = list(extra)
    skip, want = _check_names({i.name for i in found} | {h.name for h in extra}, disabled, enabled)
    if autoload is None:
        autoload = not autoload_disabled()
    rows: list[tuple[Installed, str, LoadedHandler | None]] = []
    for i in found:
        if i.name in skip:
            rows.append((i, "disabled", None))
        elif not (autoload or i.builtin or i.name in want):
            rows.append((i, "not autoloaded", None))
        else:
            rows.append((i, "on", _load(i)))
    loaded = [h for _, _, h in rows if h is not None]
    loaded += [h for h in extra if h.name not in skip]
    return Survey(rows, Dispatch(loaded))


def load_handlers(
    *,
    disabled: Iterable[str] = (),
    enabled: Iterable[str] = (),
    autoload: bool | None = None,
    extra: Iterable[LoadedHandler] = (),
    warn: bool = True,
) -> Dispatch:
    """Load the handlers registered in ``asyckpt.fd_types`` and return their dispatch.

    ``disabled`` names are skipped.  With ``autoload`` false (default: false when
    ``ASYCKPT_DISABLE_PLUGIN_AUTOLOAD`` is set) only asyckpt's own handlers and those
    named in ``enabled`` are loaded.  ``extra`` handlers join as if installed.  A name
    that is not installed, a handler that fails to load or breaks the contract, and two
    handlers sharing a name or record tag raise PluginError; handlers claiming the same
    thing at one priority are reported with a :class:`PluginConflictWarning` when ``warn``.
    """
    dispatch = survey(disabled=disabled, enabled=enabled, autoload=autoload, extra=extra).dispatch
    if warn:
        for conflict in dispatch.conflicts:
            warnings.warn(conflict.message(), PluginConflictWarning, stacklevel=2)
    return dispatch


# --- dispatch ----------------------------------------------------------------------------

# Specificity of the declaration that matched, most specific first; it orders candidates
# of equal priority (docs/plugins.md, "Which handler wins").
_DEVICE, _MAJOR, _PREFIX, _MAGIC, _KIND, _ANY = 5, 4, 3, 2, 1, 0

_PlanEntry = tuple[LoadedHandler, frozenset[int] | None, Callable[[FdFacts], bool] | None]
"""A candidate: the handler, the fs magics to check first (None: no check), its predicate."""


@final
class Conflict(NamedTuple):
    """Handlers that claim one thing at one priority, in the order they are tried."""

    claim: str
    priority: int
    handlers: tuple[LoadedHandler, ...]

    def message(self) -> str:
        names = [f"{h.distribution}[{h.name}]" for h in self.handlers]
        both = "both" if len(names) == 2 else "all"
        return (
            f"handlers {', '.join(names[:-1])} and {names[-1]} {both} claim {self.claim} at "
            f"priority {self.priority}; {names[0]} is tried first only by name: give one "
            "of them a higher priority"
        )


class Dispatch:
    """Chooses the handler for an fd: among the handlers whose declarations match it,
    by descending priority, then specificity of the match, then name, the first whose
    ``claims`` (if it has one) says yes."""

    def __init__(self, handlers: Iterable[LoadedHandler]) -> None:
        self.handlers = sorted(handlers, key=lambda h: (-h.priority, h.name))
        seen: dict[str, LoadedHandler] = {}
        tags: dict[str, LoadedHandler] = {}
        for h in self.handlers:
            if h.name in seen:
                raise PluginError(
                    f"two handlers are named {h.name!r}: "
                    f"{seen[h.name].distribution} and {h.distribution}"
                )
            seen[h.name] = h
            if h.record_tag in tags:
                raise PluginError(
                    f"handlers {tags[h.record_tag].distribution}[{tags[h.record_tag].name}] and "
                    f"{h.distribution}[{h.name}] use the same record tag {h.record_tag!r}"
                )
            tags[h.record_tag] = h
        self.by_name = seen
        self.by_tag = tags
        prefixes = {p for h in self.handlers for p in h.link_prefixes}
        self._prefixes = tuple(sorted(prefixes, key=_longest))
        self._majors: dict[str, frozenset[int]] = {
            kind: frozenset(d.major for h in self.handlers for d in h.devices if d.kind == kind)
            for kind in ("chr", "blk")
        }
        self._plans: dict[tuple[str, int, tuple[str, ...]], tuple[_PlanEntry, ...]] = {}
        self.conflicts = self._find_conflicts()

    def _find_conflicts(self) -> list[Conflict]:
        claims: dict[tuple[int, str], list[LoadedHandler]] = {}
        for h in self.handlers:
            for claim in h.selectors():
                claims.setdefault((h.priority, claim), []).append(h)
        return [
            Conflict(claim, priority, tuple(hs))  # self.handlers is in trial order
            for (priority, claim), hs in sorted(
                claims.items(), key=lambda kv: (-kv[0][0], kv[0][1])
            )
            if len(hs) > 1
        ]

    def _plan(self, kind: str, rdev: int, prefixes: tuple[str, ...]) -> tuple[_PlanEntry, ...]:
        """The candidates, in trial order, for fds of one kind, device and link prefixes."""
        ranked: list[tuple[tuple[int, int, int, str], _PlanEntry]] = []
        for h in self.handlers:
            level, length = -1, 0
            if rdev >= 0:
                if Device(kind, os.major(rdev), os.minor(rdev)) in h.devices:
                    level = _DEVICE
                elif Device(kind, os.major(rdev), None) in h.devices:
                    level = _MAJOR
            if level < 0:
                for p in prefixes:  # longest first
                    if p in h.link_prefixes:
                        level, length = _PREFIX, len(p)
                        break
            if level < 0 and kind in h.kinds:
                level = _KIND
            if level < 0 and not h.selective:
                level = _ANY
            if level >= 0:
                ranked.append(((-h.priority, -level, -length, h.name), (h, None, h.predicate)))
            # fs magic is only known by asking the kernel: a conditional candidate, unless
            # the handler is already in at a more specific level.
            if h.fs_magic and level < _MAGIC:
                ranked.append(((-h.priority, -_MAGIC, 0, h.name), (h, h.fs_magic, h.predicate)))
        ranked.sort(key=lambda r: r[0])
        return tuple(entry for _, entry in ranked)

    def chooser(self, magic: Callable[[FdFacts], int | None] | None = None) -> Chooser:
        """A chooser for one capture (it caches each mount's filesystem magic)."""
        return Chooser(self, magic)

    def choose(self, facts: FdFacts) -> LoadedHandler | None:
        """The handler for ``facts``, or None.  Raises HandlerFailed if a ``claims``
        predicate raises."""
        return Chooser(self)(facts)


def _statfs_magic(facts: FdFacts) -> int | None:
    try:
        return fs_magic(f"/proc/{facts.tid}/fd/{facts.fd}")
    except OSError:
        return None  # gone: no magic matches, so the fd stays with the other candidates


@final
class Chooser:
    """:meth:`Dispatch.choose` for one capture: the filesystem magic of each mount is
    asked once (a mount id names one superblock), and only if a handler declares any."""

    def __init__(
        self, dispatch: Dispatch, magic: Callable[[FdFacts], int | None] | None = None
    ) -> None:
        self._dispatch = dispatch
        self._plans = dispatch._plans
        self._prefixes = dispatch._prefixes
        self._majors = dispatch._majors
        self._read_magic = magic or _statfs_magic
        self._magics: dict[int, int | None] = {}

    def _magic(self, facts: FdFacts) -> int | None:
        mnt_id = facts.fdinfo.mnt_id
        if mnt_id in self._magics:
            return self._magics[mnt_id]
        value = self._read_magic(facts)
        if mnt_id:
            self._magics[mnt_id] = value
        return value

    def __call__(self, facts: FdFacts) -> LoadedHandler | None:
        kind = facts.kind
        rdev = -1
        majors = self._majors.get(kind)
        if majors and os.major(facts.st.st_rdev) in majors:
            rdev = facts.st.st_rdev
        prefixes: tuple[str, ...] = ()
        if self._prefixes and facts.link.startswith(self._prefixes):
            prefixes = tuple(p for p in self._prefixes if facts.link.startswith(p))
        key = (kind, rdev, prefixes)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._dispatch._plan(kind, rdev, prefixes)
        for handler, magics, predicate in plan:
            if magics is not None and self._magic(facts) not in magics:
                continue
            if predicate is not None:
                try:
                    if not predicate(facts):
                        continue
                except Exception as exc:
                    raise HandlerFailed(handler.name, exc, pid=facts.pid, fd=facts.fd) from exc
            return handler
        return None


# --- for show: the handlers an image names -----------------------------------------------


@final
class ImagePlugin(NamedTuple):
    """What ``show`` can do with the records of one handler an image names."""

    loaded: LoadedHandler | None
    """The installed handler that wrote them, or None: its records are shown raw."""
    installed: str | None
    """The installed version of its distribution, or None."""
    note: str | None
    """Why its records are shown raw (``loaded`` None), or that another version of the
    handler renders them."""


def image_plugins(
    infos: Iterable[Any],
    *,
    disabled: Iterable[str] = (),
    enabled: Iterable[str] = (),
    autoload: bool | None = None,
) -> dict[str, ImagePlugin]:
    """Load, of the handlers an image header lists (``PluginInfo``), those installed here.

    Nothing that goes wrong with one is an error: the image stays readable, that
    handler's records are shown raw, and the note says why.
    """
    found = installed_handlers()
    skip, want = _check_names({i.name for i in found}, disabled, enabled)
    if autoload is None:
        autoload = not autoload_disabled()
    out: dict[str, ImagePlugin] = {}
    for info in infos:
        same = [
            i
            for i in found
            if i.name == info.name and _normalize(i.distribution) == _normalize(info.distribution)
        ]
        if not same:
            out[info.name] = ImagePlugin(None, None, "not installed")
            continue
        i = same[0]
        if i.name in skip:
            out[info.name] = ImagePlugin(None, i.version, "disabled (--disable-plugin)")
            continue
        if not (autoload or i.builtin or i.name in want):
            reason = f"not loaded: {AUTOLOAD_ENV} is set (-p {i.name} loads it)"
            out[info.name] = ImagePlugin(None, i.version, reason)
            continue
        try:
            loaded = _load(i, hint=False)
        except PluginError as exc:
            out[info.name] = ImagePlugin(None, i.version, str(exc))
            continue
        if loaded.record_tag != info.record_tag:
            reason = (
                f"version {i.version} is installed, whose records are {loaded.record_tag!r}, "
                f"not {info.record_tag!r}"
            )
            out[info.name] = ImagePlugin(None, i.version, reason)
            continue
        note = None
        if i.version != info.version:
            note = f"written by version {info.version}, rendered with {i.version}"
        out[info.name] = ImagePlugin(loaded, i.version, note)
    return out
