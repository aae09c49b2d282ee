"""The capture session: the live objects one capture hands its handlers.

:class:`CaptureSession` (``begin(session)``, ``ctx.session``) and the outcome of each
handler's ``begin``; :class:`HandlerContext`, through which ``capture`` reaches the live
open file description (pidfd_getfd: the same description, never a re-open);
:class:`CaptureTree`, what ``finish`` sees once the tree is thawed.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, final

from .._kernel import OwnerRow, fd_owner, fd_owner_at, pidfd_getfd

__all__ = ["SESSION_TIMEOUT", "CaptureSession", "CaptureTree", "HandlerContext", "Stateful"]


class Stateful(Protocol):
    """What the session needs of a handler to give it its ``begin``'s outcome (a
    ``LoadedHandler`` is one)."""

    name: str
    begin: Callable[[CaptureSession], Any] | None


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

    def _state_of(self, handler: Stateful) -> Any:
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

    def __init__(
        self,
        tid: int,
        session: CaptureSession | None = None,
        *,
        held: str = "fd",
        held_path: str | None = None,
    ) -> None:
        self._pidfd: int | None = None
        self._tid = tid
        self._taken: dict[int, int] = {}
        self._session = session
        self._handler: Stateful | None = None
        self.held = held
        """How the task holds the file: ``fd`` (an open file description of its fd
        table), or by reference: ``cwd``, ``root`` (its working or root directory),
        ``exe`` (its executable) or ``map`` (a memory mapping).  A file held by
        reference has no description of the task's: it is handled as an ``O_PATH`` fd
        is, ``facts.fd`` -1 and ``O_PATH`` in ``facts.fdinfo.flags``, and
        :meth:`take_fd` gives an ``O_PATH`` descriptor of the file itself (fstat works,
        no I/O, no ioctl)."""
        self._held_path = held_path

    def take_fd(self, fd: int) -> int:
        """A descriptor for the *same* open file description as the task's ``fd``
        (pidfd_getfd(2)), never a re-open; valid until the handler returns.  Asking
        again for the same ``fd`` gives the same descriptor.  For a file held by
        reference (:attr:`held`), an ``O_PATH`` descriptor of the file itself."""
        if self.held != "fd":
            return self._take_held(fd)
        new = self._taken.get(fd)
        if new is None:
            new = self._taken[fd] = pidfd_getfd(self._pidfd_open(), fd)
        return new

    def _take_held(self, fd: int) -> int:
        """An ``O_PATH`` descriptor of a file held by reference, through its magic link
        (``fd`` is -1): never an open of the file itself, which for a device would run
        its driver; the ghost spool re-opens it to copy a deleted mapped file."""
        assert self._held_path is not None
        new = self._taken.get(fd)
        if new is None:
            new = self._taken[fd] = os.open(self._held_path, os.O_PATH | os.O_CLOEXEC)
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
        self._handler: Stateful | None = None
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
