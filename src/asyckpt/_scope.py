"""What a freeze may hold: never asyckpt itself, and never another capture's tasks.

Freezing a cgroup freezes every task in it and in every cgroup below it.  If that holds
asyckpt, its guardian or an ancestor of either, nothing is left to thaw it (asyckpt stops
mid-capture; an ancestor waiting for it may be the shell that would kill it), so such a
scope is refused before anything is frozen.  A task already in another capture's
transient cgroup (``asyckpt-PID-ROOT``) is busy: that capture is running, its guardian is
restoring it, or both died and ``asyckpt recover`` must put it back; it is never frozen
in place or moved again (its origin would be recorded as the other capture's cgroup).

The decisions are pure functions of cgroup paths (relative to their hierarchy's mount,
as ``/proc/PID/cgroup`` gives them); the callers read them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from ._errors import FreezerError

__all__ = [
    "PlanRef",
    "Protected",
    "refuse_busy",
    "refuse_holding",
    "refuse_in_tree",
    "refuse_stranded",
    "scope_holds",
    "transient_name",
    "transient_owner",
]


class Protected(NamedTuple):
    """A process no freeze may hold, and how to name it in the refusal."""

    pid: int
    what: str


def scope_holds(scope: str, cgroup: str) -> bool:
    """Whether freezing ``scope`` freezes a task in ``cgroup`` (itself or below it)."""
    if scope == "/":
        return True
    return cgroup == scope or cgroup.startswith(scope.rstrip("/") + "/")


def refuse_holding(scope_path: str, scope: str, placed: Mapping[Protected, str]) -> None:
    """Refuse (exit 7) a freeze of ``scope`` (shown as ``scope_path``) that would hold one
    of the protected processes, given where each is (``placed``)."""
    for who, cgroup in placed.items():
        if scope_holds(scope, cgroup):
            raise FreezerError(
                f"the freeze scope {scope_path} holds {who.what}: nothing would be "
                "left to thaw it; run asyckpt from outside that cgroup, or choose another "
                "--freeze",
                pid=who.pid,
            )


_TRANSIENT = re.compile(r"/asyckpt-([0-9]+)-([0-9]+)(?:/|$)")


def refuse_in_tree(tree: Iterable[int], protect: Iterable[Protected]) -> None:
    """Refuse moving a tree that holds one of the protected processes into a transient
    cgroup (asyckpt refuses a tree rooted at itself or an ancestor before it gets here;
    this is the same rule for whatever else is protected)."""
    pids = set(tree)
    for who in protect:
        if who.pid in pids:
            raise FreezerError(
                f"the tree holds {who.what}: freezing it would leave nothing to thaw it",
                pid=who.pid,
            )


def transient_name(owner: int, root: int) -> str:
    """The transient cgroup of the capture by ``owner`` of the tree rooted at ``root``."""
    return f"/asyckpt-{owner}-{root}"


def transient_owner(cgroup: str) -> int | None:
    """The pid of the asyckpt whose transient cgroup ``cgroup`` is (or is below)."""
    match = _TRANSIENT.match(cgroup)
    return int(match.group(1)) if match else None


def refuse_busy(pid: int, path: str, owner: int, state: str) -> None:
    """Refuse a tree with task ``pid`` in another capture's transient cgroup ``path``;
    that capture (by asyckpt ``owner``) is ``running``, its guardian is ``restoring``
    the tree, or it is ``stranded``."""
    where = f"pid {pid} is in {path}, the cgroup of another capture (asyckpt pid {owner})"
    if state == "running":
        raise FreezerError(
            f"{where}, which did not wait for this one: retry once it is done", pid=pid
        )
    if state == "restoring":
        raise FreezerError(
            f"{where}, which died; its guardian is putting the tree back: retry in a moment",
            pid=pid,
        )
    raise FreezerError(
        f"pid {pid} is stranded in {path} by a capture that died (asyckpt pid "
        f"{owner}): run 'asyckpt recover' to put it back, then capture again",
        pid=pid,
    )


class PlanRef(NamedTuple):
    """What a dead capture's plan says about a tree: where it is, whose it was, whether
    its guardian still runs, and which pids it moved or froze."""

    path: str
    owner: int
    guardian_alive: bool
    pids: frozenset[int]
    """Tasks it moved into its transient cgroup."""
    cgroups: frozenset[str]
    """Cgroups it froze (absolute paths)."""


def refuse_stranded(places: Mapping[int, Sequence[str]], plans: Iterable[PlanRef]) -> None:
    """Refuse a tree (each task's cgroups, absolute, in ``places``) that a dead
    capture's plan names: a task it moved, or a cgroup it froze holding a task (only the
    first such plan is told; ``asyckpt recover`` handles them all)."""
    for plan in plans:
        if not plan.pids & places.keys() and not any(
            scope_holds(frozen, cgroup)
            for frozen in plan.cgroups
            for cgroups in places.values()
            for cgroup in cgroups
        ):
            continue
        if plan.guardian_alive:
            raise FreezerError(
                f"the capture by asyckpt pid {plan.owner} died and its guardian is putting "
                "the tree back: retry in a moment"
            )
        raise FreezerError(
            f"a capture by asyckpt pid {plan.owner} died and left an undo plan for this tree "
            f"({plan.path}): run 'asyckpt recover', then capture again"
        )
