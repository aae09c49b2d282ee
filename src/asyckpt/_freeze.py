"""Freezing a process tree with the cgroup freezer, and putting everything back.

A frozen tree is an outage, so every way out of :meth:`Freezer.freeze` ends in
:meth:`Freezer.release`, which thaws (unless the cgroup was frozen before asyckpt came),
moves every task back to the cgroup it came from, and removes the transient cgroup.  The
caller runs release in a ``finally``, shielded from cancellation; for the exits no
``finally`` sees (SIGKILL), a :class:`~asyckpt._guardian.Guardian` is told how to undo
each step *before* it is taken, and the step is written to the capture's undo plan on
disk, for ``asyckpt recover`` should the guardian die too.  Which freezer a tree gets,
and the checks made before it is used, are ``_claim``'s.

Modes (``--freeze``):

``auto``
    If the tree is exactly the membership of an existing cgroup (a container, a systemd
    unit), freeze that cgroup in place.  Otherwise move the tree into a transient cgroup:
    in the v1 freezer hierarchy when it is mounted (membership there changes no other
    controller's accounting), else in the v2 hierarchy, but only when neither the tree's
    cgroups nor the transient one have controllers, which a move would change.
``cgroup:PATH``
    Freeze the given cgroup (v1 freezer or v2) in place; the tree must lie inside it.
``cgroup-v1``, ``cgroup-v2``
    Force a transient cgroup in that hierarchy.
``none``
    Freeze nothing; the image is marked inconsistent.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._errors import AccessDenied, FreezerError, translate_oserror
from ._procparse import parse_cgroup, parse_cgroup_events, parse_mountinfo
from ._scope import transient_name

if TYPE_CHECKING:
    from ._guardian import Guardian
    from ._rundir import Locks

__all__ = [
    "FREEZER_MODES",
    "Freezer",
    "Hierarchy",
    "InPlaceFreezer",
    "TransientFreezer",
    "controllers_refusal",
    "hierarchies",
    "wait_frozen",
]

FREEZER_MODES = ("auto", "cgroup-v1", "cgroup-v2", "none")
"""The fixed modes; ``cgroup:PATH`` is the other form."""


def controllers_refusal(controllers: list[bytes]) -> str | None:
    """Why a transient v2 cgroup with these controllers must not take the tree, or None.

    A transient cgroup is made at the hierarchy's root, so it gets whatever controllers
    the root delegates: moving a task into it would move its accounting (memory, pids...)
    away from its own cgroup's limits for the capture's duration."""
    if not controllers:
        return None
    names = b", ".join(controllers).decode("ascii", "backslashreplace")
    return (
        f"a transient v2 cgroup here gets the controllers {names}: moving the tree into it "
        "would change its resource accounting; use --freeze=cgroup:PATH or --freeze=none"
    )


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


class Hierarchy:
    """One mounted cgroup hierarchy that can freeze: the v1 freezer or v2."""

    def __init__(self, version: int, mount: str) -> None:
        self.version = version
        self.mount = mount.rstrip("/") or "/"
        self.controller = "freezer" if version == 1 else ""
        self.state_file = "freezer.state" if version == 1 else "cgroup.freeze"

    @property
    def name(self) -> str:
        return f"cgroup-v{self.version}"

    def path_of(self, rel: str) -> str:
        return self.mount + (rel if rel != "/" else "")

    def rel_of(self, path: str) -> str:
        """The inverse of :meth:`path_of`, for a path inside the mount."""
        return (path[len(self.mount) :] if self.mount != "/" else path) or "/"

    def cgroup_of(self, pid: int) -> str:
        """The cgroup of ``pid`` in this hierarchy, relative to the mount."""
        return parse_cgroup(_read(f"/proc/{pid}/cgroup"))[self.controller]

    def controllers(self, path: str) -> list[bytes]:
        """The controllers of a v2 cgroup (what a move into or out of it changes)."""
        return _read(f"{path}/cgroup.controllers").split()

    def can_freeze(self, path: str) -> bool:
        return os.path.exists(os.path.join(path, self.state_file))

    def request(self, path: str, frozen: bool) -> None:
        if self.version == 1:
            _write(f"{path}/freezer.state", "FROZEN" if frozen else "THAWED")
        else:
            _write(f"{path}/cgroup.freeze", "1" if frozen else "0")

    def thaw_step(self, path: str) -> tuple[str, str]:
        """(file, value) that thaws ``path``: what the guardian writes."""
        if self.version == 1:
            return f"{path}/freezer.state", "THAWED"
        return f"{path}/cgroup.freeze", "0"

    def state(self, path: str) -> str:
        """``FROZEN``, ``FREEZING`` or ``THAWED``, whatever the version."""
        if self.version == 1:
            return _read(f"{path}/freezer.state").decode().strip()
        # cgroup.freeze says what was asked; cgroup.events says what the kernel did.
        asked = _read(f"{path}/cgroup.freeze").strip() == b"1"
        done = parse_cgroup_events(_read(f"{path}/cgroup.events")).get("frozen") == 1
        return "FROZEN" if done else "FREEZING" if asked else "THAWED"

    def members(self, path: str) -> set[int]:
        """Every process in ``path`` and the cgroups below it."""
        pids: set[int] = set()
        for dirpath, _dirs, files in os.walk(path):
            if "cgroup.procs" in files:
                try:
                    pids.update(int(p) for p in _read(f"{dirpath}/cgroup.procs").split())
                except FileNotFoundError:
                    continue  # a child cgroup removed meanwhile
        return pids

    def wait(self, path: str, deadline: float) -> None:
        """Wait until ``path`` is frozen (see :func:`wait_frozen`)."""
        if self.version == 2:
            _wait_v2(path, deadline, lambda: self.state(path))
        else:
            wait_frozen(
                state=lambda: self.state(path),
                request=lambda frozen: self.request(path, frozen),
                clock=time.monotonic,
                sleep=time.sleep,
                deadline=deadline,
            )


def _wait_v2(path: str, deadline: float, state: Callable[[], str]) -> None:
    # The kernel signals a change of cgroup.events to poll() as POLLPRI (kernfs
    # notification): wait for that instead of sleeping (its selftest does the same).
    fd = os.open(f"{path}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        os.read(fd, 4096)  # arm: a change after this read is what poll reports
        while state() != "FROZEN":
            left = deadline - time.monotonic()
            if left <= 0:
                raise FreezerError(f"{path} did not freeze in time")
            poller.poll(min(left, 0.1) * 1000)
            os.lseek(fd, 0, os.SEEK_SET)
            os.read(fd, 4096)
    finally:
        os.close(fd)


REFREEZE_AFTER = 0.1
"""Seconds in FREEZING before the v1 freezer is asked again (CRIU does too)."""


def wait_frozen(
    *,
    state: Callable[[], str],
    request: Callable[[bool], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    deadline: float,
) -> int:
    """Wait for a v1 freezer to report FROZEN; returns how many times it was re-asked.

    The v1 freezer has no notification, so this polls: immediately, then with a backoff
    capped at 10 ms.  A task can keep a v1 cgroup in FREEZING (it raced with the request,
    or sat in an uninterruptible sleep); after ``REFREEZE_AFTER`` in FREEZING the freezer
    is asked again, and every second time it is thawed first, then asked (CRIU's cure).
    Past ``deadline`` it raises FreezerError (the caller's release thaws).  Pure of I/O:
    the caller injects the freezer and the clock.
    """
    delay = 0.0
    asked_at = clock()
    retries = 0
    while True:
        current = state()
        if current == "FROZEN":
            return retries
        now = clock()
        if now >= deadline:
            raise FreezerError(
                f"the tree did not freeze in time (still {current} after {retries} retries)"
            )
        if current == "THAWED" or now - asked_at >= REFREEZE_AFTER:
            retries += 1
            if current != "THAWED" and retries % 2 == 0:
                request(False)
            request(True)
            asked_at = now
            delay = 0.0
        sleep(delay)
        delay = min(max(delay * 2, 0.0001), 0.01)


class Freezer:
    """Freeze nothing (mode ``none``); the base of the cgroup freezers."""

    name = "none"
    scope = "none"
    consistent = False
    cgroup: str | None = None
    pre_frozen = False

    def __init__(self) -> None:
        self.freezing_ms = 0.0
        self.frozen_ms = 0.0
        self._frozen_at: float | None = None
        self.guardian: Guardian | None = None
        self.locks: Locks | None = None

    def close(self) -> None:
        """Let other captures at the tree's hierarchies: after :meth:`release` (or when
        nothing was changed).  Idempotent."""
        if self.locks is not None:
            self.locks.release()

    def _note(self, *step: object) -> None:
        if self.guardian is not None:
            self.guardian.note(*step)

    def _note_all(self, steps: list[tuple[object, ...]]) -> None:
        if self.guardian is not None:
            self.guardian.note_all(steps)

    def prepare(self, root_pid: int) -> None:
        """Create what freezing needs; nothing is changed for the tasks yet."""

    def add(self, pids: Iterable[int]) -> list[int]:
        """Bring processes under the freezer; returns those that exited meanwhile."""
        return []

    def members(self) -> set[int]:
        return set()

    def freeze(self, timeout: float) -> None:
        self._frozen_at = time.perf_counter()

    def release(self) -> None:
        """Thaw, move every task back, remove the transient cgroup.  Idempotent."""
        if self._frozen_at is not None:
            self.frozen_ms = (time.perf_counter() - self._frozen_at) * 1000
            self._frozen_at = None

    def thaw(self) -> None:
        """Thaw only, ahead of :meth:`release` (which must still follow, and does the
        rest).  Idempotent."""
        Freezer.release(self)


class _CgroupFreezer(Freezer):
    consistent = True

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.h = hierarchy
        self.name = hierarchy.name
        self._path: str | None = None
        self._thaw = True
        # Set once thaw() has thawed it, so that release() does not ask again.
        self._thawed = False

    def members(self) -> set[int]:
        assert self._path is not None
        return self.h.members(self._path)

    def freeze(self, timeout: float) -> None:
        assert self._path is not None
        start = time.perf_counter()
        self._thawed = False
        if self._thaw:
            self._note("thaw", *self.h.thaw_step(self._path))
        try:
            self.h.request(self._path, True)
            self.h.wait(self._path, time.monotonic() + timeout)
        except PermissionError:
            raise AccessDenied(
                f"cannot freeze {self._path}: run as root, or use --freeze=none"
            ) from None
        except FreezerError as exc:
            raise FreezerError(
                f"{exc.msg}; it is thawed again: retry, use a longer --freeze-timeout, "
                "or --freeze=none"
            ) from exc
        if self._frozen_at is None:
            self._frozen_at = time.perf_counter()
            self.freezing_ms = (self._frozen_at - start) * 1000

    def _thaw_now(self, errors: list[str]) -> None:
        assert self._path is not None
        if self._thaw and not self._thawed:
            try:
                self.h.request(self._path, False)
            except OSError as exc:
                errors.append(f"thaw {self._path}: {exc.strerror}")
                return  # maybe still frozen: release tries again
            self._thawed = True
        super().release()

    def thaw(self) -> None:
        if self._path is None:
            return
        errors: list[str] = []
        self._thaw_now(errors)
        if errors:
            raise FreezerError("could not thaw the tree: " + "; ".join(errors))


class InPlaceFreezer(_CgroupFreezer):
    """Freeze an existing cgroup where it is: no task moves."""

    scope = "in-place"

    def __init__(self, hierarchy: Hierarchy, path: str) -> None:
        super().__init__(hierarchy)
        self._path = self.cgroup = path
        # A cgroup frozen before asyckpt came (a paused container) is left frozen.
        self.pre_frozen = hierarchy.state(path) != "THAWED"
        self._thaw = not self.pre_frozen

    def add(self, pids: Iterable[int]) -> list[int]:
        outside = sorted(set(pids) - self.members())
        if outside:
            raise FreezerError(
                f"pid {outside[0]} of the tree is outside {self._path}: it was moved out, "
                "or started elsewhere; use --freeze=auto or a cgroup that holds the tree",
                pid=outside[0],
            )
        return []

    def release(self) -> None:
        self.thaw()  # nothing moved in, so nothing to move back or remove


class TransientFreezer(_CgroupFreezer):
    """Move the tree into a cgroup of asyckpt's own, freeze it, and move it back."""

    scope = "transient"

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__(hierarchy)
        self._origin: dict[int, str] = {}
        self._root_pid = 0

    def prepare(self, root_pid: int) -> None:
        self._root_pid = root_pid
        path = self.h.path_of(transient_name(os.getpid(), root_pid))
        fallback = self.h.path_of(self.h.cgroup_of(root_pid)) + "/cgroup.procs"
        self._note("fallback", fallback)
        self._note("members", f"{path}/cgroup.procs")
        self._note("rmdir", path)
        try:
            os.mkdir(path)
        except FileExistsError:
            # Left by an earlier asyckpt with this pid that died: its tasks, if any, are
            # not this tree's to move.
            raise FreezerError(
                f"{path} exists already, left by a capture that died: run "
                "'asyckpt recover', then capture again"
            ) from None
        except PermissionError:
            raise AccessDenied(
                f"cannot create a cgroup under {self.h.mount}: run as root, or use --freeze=none"
            ) from None
        except OSError as exc:
            raise FreezerError(f"cannot create cgroup {path}: {exc.strerror}") from exc
        self._path = self.cgroup = path
        if self.h.version == 2:
            refusal = controllers_refusal(self.h.controllers(path))
            if refusal is not None:
                self.release()
                raise FreezerError(refusal)

    def add(self, pids: Iterable[int]) -> list[int]:
        assert self._path is not None
        here = self.h.rel_of(self._path)
        gone = []
        moves = []
        for pid in pids:
            try:
                origin = self.h.cgroup_of(pid)
            except (FileNotFoundError, ProcessLookupError):
                gone.append(pid)
                continue
            if origin == here:
                continue  # already inside (a second round after a fork)
            moves.append((pid, self.h.path_of(origin) + "/cgroup.procs"))
        # Every move's undo is noted before the first move, in one write (one each to the
        # plan and the guardian, rather than one per task): an undo moves back only the
        # transient cgroup's members, so a task noted but never moved stays where it is.
        self._note_all([("origin", pid, dest) for pid, dest in moves])
        if not moves:
            return gone
        # One open of cgroup.procs for all the moves: each write moves one process.
        procs = f"{self._path}/cgroup.procs"
        try:
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise translate_oserror(exc, pid=moves[0][0], what=f"moving into {self._path}") from exc
        try:
            for pid, dest in moves:
                try:
                    os.write(fd, str(pid).encode())
                except ProcessLookupError:
                    gone.append(pid)
                    continue
                except OSError as exc:
                    raise translate_oserror(exc, pid=pid, what=f"moving into {self._path}") from exc
                self._origin[pid] = dest
        finally:
            os.close(fd)
        return gone

    def release(self) -> None:
        if self._path is None:
            return
        errors: list[str] = []
        self._thaw_now(errors)
        try:
            members = self.h.members(self._path)
        except OSError:
            members = set(self._origin)
        # A task forked inside the transient cgroup goes where the tree's root was.
        fallback = self._origin.get(self._root_pid) or (
            self.h.path_of(self.h.cgroup_of(self._root_pid)) + "/cgroup.procs"
            if os.path.exists(f"/proc/{self._root_pid}")
            else self.h.mount + "/cgroup.procs"
        )
        for pid in sorted(members):
            dest = self._origin.get(pid, fallback)
            try:
                _write(dest, str(pid))
            except ProcessLookupError:
                continue
            except OSError as exc:
                errors.append(f"move pid {pid} back to {dest}: {exc.strerror}")
        for attempt in range(100):
            try:
                os.rmdir(self._path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # Tasks that just exited can linger as members for a moment.
                if exc.errno != errno.EBUSY or attempt == 99:
                    errors.append(f"rmdir {self._path}: {exc.strerror}")
                    break
                time.sleep(0.005)
        self._path = None
        if errors:
            raise FreezerError("could not restore the tree: " + "; ".join(errors))


def hierarchies() -> tuple[Hierarchy | None, Hierarchy | None]:
    """(v1 freezer, v2) as this process sees them."""
    v1 = v2 = None
    # Any user may mount something under a name that is not UTF-8 (a USB stick's label).
    for m in parse_mountinfo(_read("/proc/self/mountinfo").decode("utf-8", "surrogateescape")):
        if m.fstype == "cgroup" and "freezer" in m.super_options.split(",") and v1 is None:
            v1 = Hierarchy(1, m.mount_point)
        elif m.fstype == "cgroup2" and v2 is None:
            v2 = Hierarchy(2, m.mount_point)
    return v1, v2
