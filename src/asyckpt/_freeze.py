"""Freezing a process tree with the cgroup freezer, and putting everything back.

A frozen tree is an outage, so the rule here is that every way out of :meth:`Freezer.freeze`
ends in :meth:`Freezer.release`, which thaws, moves every task back to the cgroup it came
from, and removes the transient cgroup: the caller wraps the two in try/finally, shielded
from cancellation (see ``_capture.frozen``).

Two freezers move the tree into a transient cgroup of their own: ``cgroup-v1`` (the v1
freezer hierarchy, whose membership affects no other controller) and ``cgroup-v2`` (the
unified hierarchy's ``cgroup.freeze``).  ``none`` freezes nothing.
"""

from __future__ import annotations

import errno
import os
import time

from ._errors import AccessDenied, FreezerError, translate_oserror
from ._procparse import parse_cgroup, parse_cgroup_events, parse_mountinfo

__all__ = ["FREEZER_MODES", "Freezer", "choose_freezer"]

FREEZER_MODES = ("auto", "cgroup-v1", "cgroup-v2", "none")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def _mounts() -> tuple[str | None, str | None]:
    """(v1 freezer mount point, v2 mount point) as this process sees them."""
    v1 = v2 = None
    for m in parse_mountinfo(_read("/proc/self/mountinfo").decode()):
        if m.fstype == "cgroup" and "freezer" in m.super_options.split(",") and v1 is None:
            v1 = m.mount_point
        elif m.fstype == "cgroup2" and v2 is None:
            v2 = m.mount_point
    return v1, v2


class Freezer:
    """Freeze nothing (mode ``none``); the base of the cgroup freezers."""

    name = "none"
    cgroup: str | None = None
    consistent = False

    def __init__(self) -> None:
        self.freezing_ms = 0.0
        self._frozen_at: float | None = None
        self.frozen_ms = 0.0

    def prepare(self, root_pid: int) -> None:
        """Create what freezing needs; nothing is changed for the tasks yet."""

    def add(self, pids: list[int]) -> list[int]:
        """Move processes in; returns those that could not be moved because they exited."""
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


class _TransientCgroup(Freezer):
    consistent = True
    _controller = ""

    def __init__(self, mount: str) -> None:
        super().__init__()
        self._mount = mount
        self._path: str | None = None
        self._origin: dict[int, str] = {}
        self._root_pid = 0

    def _cgroup_of(self, pid: int) -> str:
        return parse_cgroup(_read(f"/proc/{pid}/cgroup"))[self._controller]

    def prepare(self, root_pid: int) -> None:
        self._root_pid = root_pid
        name = f"asyckpt-{os.getpid()}-{root_pid}"
        path = os.path.join(self._mount, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass  # left by an earlier asyckpt of this same pid that died: reuse it
        except PermissionError:
            raise AccessDenied(
                f"cannot create a cgroup under {self._mount}: run as root, or use --freeze=none"
            ) from None
        except OSError as exc:
            raise FreezerError(f"cannot create cgroup {path}: {exc.strerror}") from exc
        self._path = path
        self.cgroup = path

    def add(self, pids: list[int]) -> list[int]:
        assert self._path is not None
        gone = []
        for pid in pids:
            try:
                origin = self._cgroup_of(pid)
            except (FileNotFoundError, ProcessLookupError):
                gone.append(pid)
                continue
            if origin == self._path[len(self._mount) :]:
                continue  # already inside (a second round after a fork)
            try:
                _write(f"{self._path}/cgroup.procs", str(pid))
            except ProcessLookupError:
                gone.append(pid)
                continue
            except OSError as exc:
                raise FreezerError(
                    f"cannot move pid {pid} into {self._path}: {exc.strerror}", pid=pid
                ) from exc
            self._origin.setdefault(pid, origin)
        return gone

    def members(self) -> set[int]:
        assert self._path is not None
        return {int(p) for p in _read(f"{self._path}/cgroup.procs").split()}

    def _request(self, frozen: bool) -> None:
        raise NotImplementedError

    def _is_frozen(self) -> bool:
        raise NotImplementedError

    def freeze(self, timeout: float) -> None:
        start = time.perf_counter()
        deadline = start + timeout
        self._request(True)
        # Freezing a few idle tasks takes tens of microseconds: spin briefly first,
        # then back off so a slow freeze does not burn a core.
        delay = 0.0
        while not self._is_frozen():
            if time.perf_counter() > deadline:
                raise FreezerError(f"tree not frozen after {timeout:g} s ({self._path})")
            time.sleep(delay)
            delay = min(max(delay * 2, 0.0001), 0.01)
        self._frozen_at = time.perf_counter()
        self.freezing_ms = (self._frozen_at - start) * 1000

    def release(self) -> None:
        if self._path is None:
            return
        errors = []
        try:
            self._request(False)
        except OSError as exc:
            errors.append(f"thaw: {exc.strerror}")
        super().release()
        try:
            members = self.members()
        except OSError:
            members = set(self._origin)
        fallback = self._origin.get(self._root_pid, "/")
        for pid in sorted(members):
            # A task forked inside the transient cgroup goes where the tree's root was.
            dest = self._origin.get(pid, fallback)
            try:
                _write(f"{self._mount}{dest.rstrip('/')}/cgroup.procs", str(pid))
            except ProcessLookupError:
                continue
            except OSError as exc:
                errors.append(f"move pid {pid} back to {dest}: {exc.strerror}")
        for attempt in range(50):
            try:
                os.rmdir(self._path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # Tasks that just exited can linger as members for a moment.
                if exc.errno != errno.EBUSY or attempt == 49:
                    errors.append(f"rmdir {self._path}: {exc.strerror}")
                    break
                time.sleep(0.002)
        self._path = None
        if errors:
            raise FreezerError("could not restore the tree: " + "; ".join(errors))


class CgroupV1Freezer(_TransientCgroup):
    name = "cgroup-v1"
    _controller = "freezer"

    def _request(self, frozen: bool) -> None:
        assert self._path is not None
        _write(f"{self._path}/freezer.state", "FROZEN" if frozen else "THAWED")

    def _is_frozen(self) -> bool:
        assert self._path is not None
        state = _read(f"{self._path}/freezer.state").strip()
        if state == b"THAWED":
            # Moving a task in can race with the request; ask again (CRIU does too).
            self._request(True)
        return state == b"FROZEN"


class CgroupV2Freezer(_TransientCgroup):
    name = "cgroup-v2"
    _controller = ""

    def _request(self, frozen: bool) -> None:
        assert self._path is not None
        _write(f"{self._path}/cgroup.freeze", "1" if frozen else "0")

    def _is_frozen(self) -> bool:
        assert self._path is not None
        # cgroup.freeze says what was asked; cgroup.events says what the kernel did.
        return parse_cgroup_events(_read(f"{self._path}/cgroup.events")).get("frozen") == 1


def choose_freezer(mode: str) -> Freezer:
    """The freezer for ``mode`` (one of FREEZER_MODES); ``auto`` prefers the v1 freezer,
    whose membership changes no other controller's accounting."""
    if mode == "none":
        return Freezer()
    if mode not in FREEZER_MODES:
        raise FreezerError(f"unknown freezer {mode!r}; choose one of {', '.join(FREEZER_MODES)}")
    try:
        v1, v2 = _mounts()
    except OSError as exc:
        raise translate_oserror(exc, what="reading mounts") from exc
    if mode in ("auto", "cgroup-v1") and v1 is not None and os.access(v1, os.W_OK):
        return CgroupV1Freezer(v1)
    if mode in ("auto", "cgroup-v2") and v2 is not None and os.access(v2, os.W_OK):
        return CgroupV2Freezer(v2)
    wanted = "a cgroup freezer" if mode == "auto" else f"the {mode} freezer"
    raise FreezerError(
        f"no writable {wanted} here (v1 freezer: {v1 or 'not mounted'}, "
        f"v2: {v2 or 'not mounted'}); run as root or use --freeze=none"
    )
