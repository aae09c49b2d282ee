"""``asyckpt recover``: put back the trees of captures that died with their guardian.

A capture writes its undo plan to the run directory before each step (``_rundir``); its
guardian replays it if asyckpt dies.  When both die (SIGKILL to both, the OOM killer),
the tree may stay frozen in a transient ``asyckpt-PID-ROOT`` cgroup.  ``recover`` finds:

- plans whose owner and guardian are both dead (pid and start time: a reused pid is
  not mistaken for its owner): each is checked (every path inside a freezer hierarchy,
  every file the one its step may write) and replayed exactly as the guardian would
  (``_guardian.undo``), then removed;
- ``asyckpt-PID-ROOT`` cgroups no plan names, whose asyckpt is gone (made by an asyckpt
  without plans, or the run directory was lost): thawed, their tasks moved to the
  hierarchy's root cgroup (where they came from is not known), and removed.

It holds the capture locks meanwhile, so no capture starts on a half-restored tree.
Everything it prints comes from files and is escaped.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ._errors import FreezerError, translate_oserror
from ._escape import escape
from ._freeze import Hierarchy, hierarchies
from ._guardian import undo
from ._rundir import PLAN_MAX, Locks, acquire_locks, alive, list_plans, parse_plan
from ._target import is_temp_name

__all__ = ["RecoverSummary", "check_plan", "command", "recover"]

_TRANSIENT = re.compile(r"asyckpt-([0-9]+)-([0-9]+)")
_THAW = {"freezer.state": "THAWED", "cgroup.freeze": "0"}


class RecoverSummary(NamedTuple):
    restored: int
    """Captures put back (or, with ``dry_run``, that would be)."""
    left: int
    """Plans or cgroups left alone because they could not be trusted or a step failed."""


def _inside(path: str, mounts: Sequence[str]) -> str | None:
    """The mount ``path`` is strictly inside, if it is a clean absolute path."""
    if not path.startswith("/") or os.path.normpath(path) != path:
        return None
    for mount in mounts:
        if path.startswith(mount.rstrip("/") + "/"):
            return mount
    return None


def _transient(path: str, mounts: Sequence[str]) -> bool:
    mount = _inside(path, mounts)
    return (
        mount is not None
        and os.path.dirname(path) == mount
        and _TRANSIENT.fullmatch(os.path.basename(path)) is not None
    )


def check_plan(steps: Sequence[tuple[object, ...]], mounts: Sequence[str]) -> str | None:
    """Why replaying ``steps`` (as root) could write where no capture would, or None.

    A capture's plan only thaws a freezer file, moves a pid into a ``cgroup.procs``,
    reads a transient cgroup's members and removes that cgroup, all inside the freezer
    hierarchies (``mounts``); an image writer's, only removes its own temporary names
    (``.IMAGE.asyckpt-XXXXXXXXXXXX.tmp``).  Pure: the caller reads the mounts."""
    for step in steps:
        op, path = step[0], str(step[-1] if step[0] != "thaw" else step[1])
        if op == "thaw":
            name = os.path.basename(path)
            if _inside(path, mounts) is None or _THAW.get(name) != step[2]:
                return f"it would write {escape(str(step[2]))} to {escape(path)}"
        elif op in ("origin", "fallback"):
            if _inside(path, mounts) is None or os.path.basename(path) != "cgroup.procs":
                return f"it would move a task into {escape(path)}"
        elif op == "members":
            if os.path.basename(path) != "cgroup.procs" or not _transient(
                os.path.dirname(path), mounts
            ):
                return f"it would move the tasks of {escape(path)}"
        elif op == "rmdir" and not _transient(path, mounts):
            return f"it would remove {escape(path)}"
        elif op in ("unlink", "unlink_new") and not is_temp_name(str(step[4])):
            return f"it would remove {escape(os.path.join(str(step[1]), str(step[4])))}"
    return None


def _printer(say: Callable[[str], None], dry_run: bool) -> Callable[..., None]:
    def report(verb: str, path: str, pid: int | None, error: str | None) -> None:
        what = {
            "thaw": ("thawed", "thaw", path),
            "move": (f"moved pid {pid} to", f"move pid {pid} to", path),
            "remove": ("removed", "remove", path),
        }[verb]
        if error is not None:
            say(f"  failed to {what[1]} {escape(what[2])}: {escape(error)}")
        else:
            say(f"  {'would ' + what[1] if dry_run else what[0]} {escape(what[2])}")

    return report


def recover(*, dry_run: bool, lock_timeout: float, say: Callable[[str], None]) -> RecoverSummary:
    """Find and put back what dead captures stranded, telling ``say`` each step."""
    try:
        found = [h for h in hierarchies() if h is not None]
    except OSError as exc:
        raise translate_oserror(exc, what="reading mounts") from exc
    mounts = [h.mount for h in found]
    locks: Locks | None = None
    if not dry_run:
        locks = acquire_locks([h.name for h in found], lock_timeout)
    try:
        restored, left, named = _recover_plans(mounts, dry_run, say)
        more, more_left = _recover_orphans(found, named, dry_run, say)
    finally:
        if locks is not None:
            locks.release()
    return RecoverSummary(restored + more, left + more_left)


def _recover_plans(
    mounts: list[str], dry_run: bool, say: Callable[[str], None]
) -> tuple[int, int, set[str]]:
    restored = left = 0
    named: set[str] = set()  # cgroups a plan answers for, whatever its state
    report = _printer(say, dry_run)
    for found in list_plans():
        where = escape(found.path)
        owner_alive = alive(found.owner)
        if not found.data and not owner_alive:
            # Its owner died before writing the header, so before any step.
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(found.path)
            say(f"{where}: empty, nothing was changed: {'would remove' if dry_run else 'removed'}")
            continue
        try:
            if len(found.data) > PLAN_MAX:
                raise ValueError("too large")
            plan = parse_plan(found.data)
        except ValueError as exc:
            if not owner_alive:
                left += 1
                say(f"{where}: unreadable plan ({exc}): left alone")
            continue
        named.update(str(s[1]) for s in plan.steps if s[0] == "rmdir")
        if owner_alive:
            continue  # a capture at work
        guardian = plan.guardian
        if guardian is not None and alive(guardian):
            say(f"{where}: its guardian (pid {guardian.pid}) is putting the tree back")
            continue
        unsafe = check_plan(plan.steps, mounts)
        if unsafe is not None:
            left += 1
            say(f"{where}: not replayed, {unsafe}: left alone")
            continue
        say(f"{where}: the capture by asyckpt pid {found.owner.pid} and its guardian died")
        ok = undo([list(s) for s in plan.steps], act=not dry_run, say=report)
        if ok and not dry_run:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(found.path)
            say("  removed the plan")
        restored += ok
        left += not ok
    return restored, left, named


def _guardian_of(owner: int) -> int | None:
    """A running guardian of the asyckpt ``owner`` (its command line ends with the
    guardian script and the owner's pid), if there is one."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read(4096).split(b"\0")
        except OSError:
            continue  # exited, or a kernel thread
        # NUL-terminated arguments: [..., script, owner, b""].
        if (
            len(args) >= 3
            and args[-2] == str(owner).encode()
            and args[-3].endswith(b"/_guardian.py")
        ):
            return int(name)
    return None


def _recover_orphans(
    found: list[Hierarchy], named: set[str], dry_run: bool, say: Callable[[str], None]
) -> tuple[int, int]:
    restored = left = 0
    report = _printer(say, dry_run)
    for h in found:
        try:
            names = sorted(os.listdir(h.mount))
        except OSError as exc:
            raise FreezerError(f"cannot list {h.mount}: {exc.strerror}") from exc
        for name in names:
            match = _TRANSIENT.fullmatch(name)
            path = h.path_of(f"/{name}")
            if match is None or path in named or not os.path.isdir(path):
                continue
            if os.path.exists(f"/proc/{match.group(1)}"):
                continue  # its asyckpt (or a process with its pid) runs: not stranded
            guardian = _guardian_of(int(match.group(1)))
            if guardian is not None:
                say(f"{escape(path)}: its guardian (pid {guardian}) is putting the tree back")
                continue
            say(
                f"{escape(path)}: no plan names it and its asyckpt (pid {match.group(1)}) "
                "is gone: its tasks go to the root cgroup"
            )
            thaw_file, thawed = h.thaw_step(path)
            steps: list[list[object]] = [
                ["thaw", thaw_file, thawed],
                ["fallback", os.path.join(h.mount, "cgroup.procs")],
                ["members", f"{path}/cgroup.procs"],
                ["rmdir", path],
            ]
            ok = undo(steps, act=not dry_run, say=report)
            restored += ok
            left += not ok
    return restored, left


def command(*, dry_run: bool, lock_timeout: float) -> int:
    """``asyckpt recover``: the steps as they are taken, a last line saying what was
    done; exit 0 when nothing is left stranded, 7 when something is."""
    summary = recover(dry_run=dry_run, lock_timeout=lock_timeout, say=print)
    captures = f"{summary.restored} capture{'s' if summary.restored != 1 else ''}"
    if dry_run:
        print(f"would put back {captures}; nothing was changed (--dry-run)")
    elif summary.restored or not summary.left:
        print(f"put back {captures}" if summary.restored else "nothing to recover")
    if summary.left:
        print(
            f"asyckpt: error: {summary.left} stranded plan(s) or cgroup(s) could not be put "
            "back (see above)",
            file=sys.stderr,
        )
        return FreezerError.exit_code
    return 0
