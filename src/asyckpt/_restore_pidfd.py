"""pidfds to a process restored with them: planned from the image's record
(:func:`plan_pidfd`, pure), made once the new processes exist (:func:`make_pidfds`).

A pidfd names a live process, so unlike every other description it cannot be made
before the holders are forked: each process opens its own pidfds
(``pidfd_open(2)`` on the new pid of the target's task) just before it installs its
table.  With ``--tree`` the new pids cross between holders through a
:class:`PidTable`, shared memory each holder writes its pid into as soon as it is
forked; with one table the only target allowed is the task itself (the new process).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable, Container, Mapping

from ._errors import RestoreError
from ._restore_model import FdSlot, PidFd, RestorePlan

__all__ = ["PidTable", "make_pidfds", "plan_pidfd"]

NewPid = Callable[[int], int]
"""The new pid of the task an image pid names."""

_WAIT = 10.0  # seconds a holder waits for another to be forked: forks take microseconds


def plan_pidfd(data: Mapping[str, object], pids: Container[int], flags: int) -> PidFd:
    """The pidfd of the anon plugin's record ``data``, when its target is one of
    ``pids`` (the tasks restored); ValueError saying why otherwise."""
    target = data.get("pid")
    if data.get("thread") is not False:
        raise ValueError("a thread's pidfd (PIDFD_THREAD) is not restored")
    if type(target) is not int or target <= 0:
        raise ValueError("its process had exited or was not visible at capture")
    if target not in pids:
        raise ValueError(
            f"its process (pid {target}) is not restored with it (a pidfd is restored to "
            "the task itself, or with --tree to a task of the tree)"
        )
    return PidFd(target=target, nonblock=bool(flags & os.O_NONBLOCK))


def make_pidfds(
    plan: RestorePlan,
    pid: int,
    slots: list[FdSlot],
    new_pid: NewPid | None,
    move: Callable[[int], int],
) -> dict[int, int]:
    """The pidfds of task ``pid``'s ``slots``, by description index, each passed through
    ``move`` (which closes it and returns a fd out of the way of the numbers about to be
    installed).  ``new_pid`` None: one table, restored in this very process.  A pidfd
    that cannot be opened is a RestoreError naming pid, fd and kind (those made are
    closed)."""
    made: dict[int, int] = {}
    try:
        for slot in slots:
            d = plan.descriptions[slot.description]
            if not isinstance(d.make, PidFd) or slot.description in made:
                continue
            target = d.make.target
            try:
                new = os.getpid() if new_pid is None else new_pid(target)
                fd = os.pidfd_open(new, os.O_NONBLOCK if d.make.nonblock else 0)
            except (OSError, LookupError, TimeoutError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise RestoreError(
                    f"cannot restore the pidfd of task {target}: {why}", pid=pid, fd=slot.fd
                ) from None
            made[slot.description] = move(fd)
    except BaseException:
        for fd in made.values():
            os.close(fd)
        raise
    return made


class PidTable:
    """The new pid of each task of a tree restore, in memory shared by the holders
    (an anonymous shared mapping, inherited across fork; no fd): each holder publishes
    its own as soon as it is forked, and one that needs another's waits for it."""

    def __init__(self, pids: list[int]) -> None:
        self._index = {p: n for n, p in enumerate(pids)}
        self._map = mmap.mmap(-1, 8 * max(1, len(pids)))

    def publish(self, index: int) -> None:
        """In holder ``index`` (the task's place in the plan), its own pid."""
        struct.pack_into("q", self._map, 8 * index, os.getpid())

    def __call__(self, target: int) -> int:
        n = self._index[target]
        deadline = time.monotonic() + _WAIT
        while True:
            (new,) = struct.unpack_from("q", self._map, 8 * n)
            if new:
                return int(new)
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {target}'s holder did not start")
            time.sleep(0.001)

    def close(self) -> None:
        self._map.close()
