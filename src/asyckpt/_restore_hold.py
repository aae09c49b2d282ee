"""Holding restored fd tables: one process per task of the plan, in the image's shape.

The descriptions are made once, in the restoring process (``_restore.make``); each
holder is forked from its parent's holder before that one installs its own table, so
it inherits every description, and a description several tasks share is one again,
shared by fork inheritance (a pipe between parent and child, a file with one position).
Each holder then installs its task's fds, closes every other fd, takes its POSIX locks,
says it is ready (a NUL on the status pipe) and waits for SIGTERM; the root, on
SIGTERM, passes it to its process group (the tree: it made a session of its own).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Iterable

from ._decode import Image
from ._errors import RestoreError
from ._restore import Made, above, child_failed, close_all, install, nofile, take_posix_locks
from ._restore_model import RestorePlan
from ._restore_pidfd import PidTable

__all__ = ["end_tree", "hold", "hold_tree", "restore_tree"]

_READY = b"\0"  # one per holder; an error message has no NUL (paths are checked for it)


def hold(plan: RestorePlan, made: Made) -> int:
    """Start the holders; return the root holder's pid once every one holds its table.
    Closes ``made``.  A holder that fails is a RestoreError saying why, and the holders
    started are killed (their process group)."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    pids = PidTable([t.pid for t in plan.tasks])
    # Blocked before the fork: a SIGTERM sent as soon as the pid is known is waited
    # for, not lost, whatever the holder is doing then.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        root = os.fork()
        if root == 0:
            os.close(status_r)
            os.setsid()  # its own session: not killed with the terminal's process group
            _become(plan, 0, made, status_w, pids)  # never returns
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(status_w)
        close_all(made.fds)
        pids.close()
    said = b""
    with os.fdopen(status_r, "rb") as status:
        # Until every holder is ready, or (one failed) every one is gone or ready.
        while said != _READY * len(plan.tasks):
            chunk = status.read1(65536)
            if not chunk:
                break
            said += chunk
    if said == _READY * len(plan.tasks):
        return root
    with contextlib.suppress(ProcessLookupError):
        os.killpg(root, signal.SIGKILL)
    os.waitpid(root, 0)
    why = said.replace(_READY, b"").decode(errors="replace") or "a holder died"
    raise RestoreError(why)


def _become(plan: RestorePlan, index: int, made: Made, status: int, pids: PidTable) -> None:
    """In a forked holder: say its pid (for the pidfds of others), fork the holders of
    the task's children, then install its own table and hold it.  Never returns."""
    task = plan.tasks[index]
    try:
        pids.publish(index)
        high = max(made.floor, *made.fds, 0) + 1
        status = above(status, high)
        for child, other in enumerate(plan.tasks):
            if other.parent == index and os.fork() == 0:
                _become(plan, child, made, status, pids)
        install(plan, made, task.pid, task.fds, pids)
        keep = sorted({s.fd for s in task.fds} | {status})
        for low, high in zip([-1, *keep], [*keep, nofile()], strict=True):
            if high > low + 1:  # os.closerange(n, n) would close every fd from n up
                os.closerange(low + 1, high)
        take_posix_locks(plan, task.pid, task.fds)  # last: closing a fd of a file drops them
        os.write(status, _READY)
        os.close(status)
        signal.sigwait({signal.SIGTERM})
        if index == 0:
            os.killpg(0, signal.SIGTERM)  # the tree goes with its root
        os._exit(0)
    except BaseException as exc:  # nothing may unwind into the restoring process's code
        child_failed(status, exc)


def hold_tree(
    image: Image, *, root: str = "/", relaxed: bool = False, skip: Iterable[str] = ()
) -> int:
    """``restore IMAGE --tree --hold`` in a function: plan, make, fork the holders;
    returns the root holder's pid (a RestoreError before anything started when a fd
    cannot be restored)."""
    from ._restore import make, open_root
    from ._restore_hooks import HookHandlers
    from ._restore_plan import plan_tree

    hooks = HookHandlers()
    plan = plan_tree(image, nofile=nofile(), skip=frozenset(skip), hooks=hooks)
    root_fd = open_root(root)
    try:
        made = make(plan, root_fd=root_fd, relaxed=relaxed, hooks=hooks)
    finally:
        os.close(root_fd)
    return hold(plan, made)


async def restore_tree(
    image: Image, *, root: str = "/", relaxed: bool = False, skip: Iterable[str] = ()
) -> int:
    """Rebuild every task's fd table of ``image`` in a new process tree of its shape,
    descriptions shared between tasks shared again, each holder holding its table until
    SIGTERM (to the root: it passes it to the tree).  Returns the root holder's pid; the
    caller ends the tree (``os.killpg(pid, signal.SIGTERM)``).  Runs in a worker thread:
    the event loop is not blocked while the files are opened and the holders start.
    Cancelled, it ends (kills and reaps) the tree it made before the Cancelled goes on:
    nothing is left holding the image's files."""
    import trio

    # The thread cannot be stopped half-way (a holder half-forked): a cancellation waits
    # for it, then undoes what it made.
    pid = await trio.to_thread.run_sync(
        functools.partial(hold_tree, image, root=root, relaxed=relaxed, skip=tuple(skip))
    )
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        end_tree(pid)
        raise
    return pid


def end_tree(root: int) -> None:
    """Kill the holder tree of ``root`` (its process group: it made a session of its
    own) and reap the root, the caller's child; the others, orphaned, are reaped by
    init."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(root, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(root, 0)
