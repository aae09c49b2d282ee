"""watch: look at a running tree cheaply and often, capture it when it grew.

Every interval, an unfrozen look through psutil (the tree's processes by identity, and
the sum of their fd counts: a directory listing of ``/proc/PID/fd`` each, nothing
frozen).  When that sum grew by ``on_growth`` or more since the look that led to the
last capture, or a process appeared that the last capture did not have, the tree is
captured (frozen, as ``asyckpt tree`` does) into the watch's directory and compared
with the previous capture (:func:`asyckpt.diff`).  Only the last ``keep`` images are
kept.

The decision is a pure function of two looks (:func:`should_capture`); the looks and
captures are the I/O around it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from datetime import UTC, datetime
from typing import NamedTuple

import trio

from ._api import checkpoint_tree
from ._capture import CaptureOptions
from ._diff import ImageDiff, diff
from ._errors import NoSuchProcess
from ._image import Image, read_image
from ._plugins.dispatch import Dispatch

__all__ = ["Look", "WatchEvent", "Watcher", "look", "same_root", "should_capture", "watch"]


class Look(NamedTuple):
    """One unfrozen look at the tree."""

    tasks: frozenset[tuple[int, float]]
    """Its processes' identities: pid and psutil's create time."""
    fds: int
    """The sum of their open fd counts (a table shared by CLONE_FILES counts for each)."""
    at: float
    """When it was taken (``time.monotonic()``)."""


class WatchEvent(NamedTuple):
    """One capture taken by :func:`watch`."""

    path: str
    """The image written."""
    diff: ImageDiff | None
    """What changed since the previous capture; None for the first one."""
    look: Look
    """The look that led to it (the one before the first capture, for the first)."""


def look(pid: int) -> Look:
    """The tree rooted at ``pid``, unfrozen (sync: /proc reads).

    Raises:
        NoSuchProcess: the root has exited.
    """
    import psutil

    at = time.monotonic()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        raise NoSuchProcess("the watched process has exited", pid=pid) from None
    tasks = []
    fds = 0
    for proc in procs:
        # A child that exits between the listing and its count is simply not there.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            fds += proc.num_fds()
            tasks.append((proc.pid, proc.create_time()))
    if root.pid not in {p for p, _ in tasks}:
        raise NoSuchProcess("the watched process has exited", pid=pid)
    return Look(frozenset(tasks), fds, at)


def should_capture(last: Look, now: Look, on_growth: int) -> bool:
    """Whether ``now`` calls for a capture, ``last`` being the look behind the previous
    one: the fds grew by ``on_growth`` or more, or a process appeared."""
    return now.fds - last.fds >= on_growth or not now.tasks <= last.tasks


def same_root(first: Look, now: Look, pid: int) -> bool:
    """Whether ``now`` still shows the root process ``first`` showed: a pid reused by
    another process after the root exited is not the watched tree."""
    return {t for t in now.tasks if t[0] == pid} == {t for t in first.tasks if t[0] == pid}


def _image_path(directory: str, pid: int) -> str:
    # Microseconds: two captures of one watch never share a name; a name taken by
    # another watch is refused by the writer (no --force), never replaced.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return os.path.join(directory, f"watch-{pid}-{stamp}.ackpt")


class Watcher:
    """The async iterator :func:`watch` returns: each ``__anext__`` waits for the next
    capture (the first at once) and returns its :class:`WatchEvent`."""

    def __init__(
        self,
        pid: int,
        *,
        every: float,
        on_growth: int,
        keep: int,
        directory: str,
        options: CaptureOptions | None,
        dispatch: Dispatch | None,
    ) -> None:
        if not every > 0:
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        if on_growth < 1:
            raise ValueError(f"on_growth must be at least 1, not {on_growth!r}")
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep!r}")
        self.pid = pid
        self.every = every
        self.on_growth = on_growth
        self.keep = keep
        self.directory = directory
        self.options = options
        self.dispatch = dispatch
        self._kept: deque[str] = deque()
        self._last: tuple[Look, Image] | None = None
        self._look = self._first = Look(frozenset(), 0, 0.0)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._last is None:
            now = self._look = self._first = await trio.to_thread.run_sync(look, self.pid)
        else:
            while True:
                # On a fixed cadence, not an interval after the capture: a capture
                # (or a slow caller) delays the next look only by what it overran.
                await trio.sleep(max(0.0, self._look.at + self.every - time.monotonic()))
                now = self._look = await trio.to_thread.run_sync(look, self.pid)
                if not same_root(self._first, now, self.pid):
                    raise NoSuchProcess(
                        "the watched process has exited; its pid now names another", pid=self.pid
                    )
                if should_capture(self._last[0], now, self.on_growth):
                    break
        return await self._capture(now)

    async def _capture(self, now: Look) -> WatchEvent:
        path = _image_path(self.directory, self.pid)
        await checkpoint_tree(self.pid, path, options=self.options, dispatch=self.dispatch)
        self._kept.append(path)
        image = await trio.to_thread.run_sync(read_image, path)
        change = None if self._last is None else diff(self._last[1], image)
        self._last = (now, image)
        while len(self._kept) > self.keep:
            old = self._kept.popleft()
            with contextlib.suppress(FileNotFoundError):
                await trio.to_thread.run_sync(os.unlink, old)
        return WatchEvent(path, change, now)


def watch(
    pid: int,
    *,
    every: float = 10.0,
    on_growth: int = 1,
    keep: int = 5,
    directory: str | os.PathLike[str] = ".",
    options: CaptureOptions | None = None,
    dispatch: Dispatch | None = None,
) -> Watcher:
    """Watch the tree rooted at ``pid`` for growth (trio)::

        async for event in asyckpt.watch(pid, every=10, on_growth=5, directory="/var/tmp"):
            print(event.path, event.diff)

    The first capture is taken at once (``diff`` None); then the tree is looked at every
    ``every`` seconds, unfrozen, and captured again when its fd count grew by
    ``on_growth`` or more since the look behind the last capture, or a process
    appeared.  Each capture yields ``(path, diff, look)``: the image, what changed since
    the previous capture, and the look that led to it.  Only the last ``keep`` images
    stay in ``directory``.  It runs until the caller stops iterating (or cancels); a
    capture cancelled midway leaves no image and the tree thawed, as
    :func:`checkpoint_tree` does.

    Raises:
        ValueError: ``every`` not positive, ``on_growth`` or ``keep`` below 1.
        AsyckptError: as :func:`checkpoint_tree`; ``NoSuchProcess`` once the root exits.
    """
    return Watcher(
        pid,
        every=every,
        on_growth=on_growth,
        keep=keep,
        directory=os.fspath(directory),
        options=options,
        dispatch=dispatch,
    )
