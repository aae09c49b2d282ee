"""Which freezer a capture uses, and claiming it: the modes (``_freeze``'s module doc),
the locks, and the refusals made before anything is frozen.

A capture calls :func:`claim_freezer`: it takes the lock of each cgroup hierarchy the
mode may touch (``_rundir``), refuses a tree that another capture holds or that a dead
one left behind, picks the freezer for the mode, and refuses a freeze scope that would
hold asyckpt, its guardian or an ancestor of either (``_scope``).  All of it happens
before any task moves or freezes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from ._errors import AccessDenied, FreezerError, translate_oserror
from ._freeze import (
    FREEZER_MODES,
    Freezer,
    Hierarchy,
    InPlaceFreezer,
    TransientFreezer,
    hierarchies,
)
from ._procparse import TaskStat
from ._rundir import acquire_locks, alive, list_plans, parse_plan
from ._scope import (
    PlanRef,
    Protected,
    refuse_busy,
    refuse_holding,
    refuse_in_tree,
    refuse_stranded,
    transient_owner,
)

__all__ = ["claim_freezer"]


def _common_cgroup(h: Hierarchy, tree: list[TaskStat]) -> str | None:
    """The deepest cgroup holding every live task of the tree, relative to the mount."""
    paths = []
    for t in tree:
        if t.state == "Z":
            continue
        try:
            paths.append(h.cgroup_of(t.pid))
        except (FileNotFoundError, ProcessLookupError, KeyError):
            return None
    return os.path.commonpath(paths) if paths else None


def _in_place(h: Hierarchy, rel: str, tree: list[TaskStat]) -> InPlaceFreezer | None:
    """An in-place freezer when the cgroup holds exactly the tree, else None."""
    if rel == "/":
        return None  # the root cgroup cannot be frozen
    path = h.path_of(rel)
    if not h.can_freeze(path):
        return None
    live = {t.pid for t in tree if t.state != "Z"}
    return InPlaceFreezer(h, path) if h.members(path) == live else None


def _cgroup_path_mode(
    spec: str, tree: list[TaskStat], v1: Hierarchy | None, v2: Hierarchy | None
) -> Freezer:
    path = os.path.realpath(spec)
    if not os.path.exists(path):
        raise FreezerError(f"cgroup {spec} does not exist")
    if not os.path.isfile(os.path.join(path, "cgroup.procs")):
        raise FreezerError(f"{spec} is not a cgroup (no cgroup.procs in it)")
    for h in (v1, v2):
        if h is not None and (path == h.mount or path.startswith(h.mount + "/")):
            break
    else:
        raise FreezerError(
            f"{spec} is in no freezer hierarchy (v1 freezer: "
            f"{v1.mount if v1 else 'not mounted'}, v2: {v2.mount if v2 else 'not mounted'})"
        )
    if not h.can_freeze(path):
        raise FreezerError(f"{spec} cannot be frozen (the root cgroup never can)")
    members = h.members(path)
    outside = [t.pid for t in tree if t.state != "Z" and t.pid not in members]
    if outside:
        raise FreezerError(f"pid {outside[0]} of the tree is not inside {spec}", pid=outside[0])
    return InPlaceFreezer(h, path)


def _checked_mode(mode: str) -> tuple[Hierarchy | None, Hierarchy | None]:
    """The hierarchies, once ``mode`` is known and may be used by this user."""
    if mode not in FREEZER_MODES and not mode.startswith("cgroup:"):
        raise FreezerError(
            f"unknown freezer {mode!r}; choose auto, cgroup:PATH, cgroup-v1, cgroup-v2 or none"
        )
    try:
        v1, v2 = hierarchies()
    except OSError as exc:
        raise translate_oserror(exc, what="reading mounts") from exc
    if not mode.startswith("cgroup:") and os.geteuid() != 0:
        raise AccessDenied("freezing needs root; use --freeze=none to capture unfrozen")
    return v1, v2


def claim_freezer(
    mode: str,
    tree: list[TaskStat],
    *,
    protect: Sequence[Protected] = (),
    lock_timeout: float,
    check: Callable[[], None] = lambda: None,
) -> Freezer:
    """The freezer for ``mode`` and the tree (pre-order, root first; see ``_freeze``'s
    module doc), holding the locks of the hierarchies ``mode`` may touch until
    :meth:`Freezer.close`.  Refuses a tree that another capture holds or that a dead one
    left behind, and a scope that would hold one of ``protect`` (asyckpt, its guardian,
    their ancestors; see ``_scope``).  Waits up to ``lock_timeout`` seconds for another
    capture to finish; ``check`` is called meanwhile, and raises to stop."""
    if mode == "none":
        return Freezer()
    v1, v2 = _checked_mode(mode)
    locks = acquire_locks(_lock_names(mode, v1, v2), lock_timeout, check)
    try:
        _refuse_others(tree, v1, v2)
        freezer = _choose(mode, tree, v1, v2)
        _refuse_holding_self(freezer, tree, protect)
    except BaseException:
        locks.release()
        raise
    freezer.locks = locks
    return freezer


def _lock_names(mode: str, v1: Hierarchy | None, v2: Hierarchy | None) -> list[str]:
    """The hierarchies a capture in ``mode`` may move tasks in or freeze: both for
    ``auto``, which picks one only once it has looked."""
    found = [h for h in (v1, v2) if h is not None]
    if mode.startswith("cgroup:"):
        path = os.path.realpath(mode[len("cgroup:") :])
        found = [h for h in found if path == h.mount or path.startswith(h.mount + "/")]
    elif mode != "auto":
        found = [h for h in found if h.name == mode]
    return [h.name for h in found]


def _refuse_others(tree: list[TaskStat], v1: Hierarchy | None, v2: Hierarchy | None) -> None:
    """Refuse a tree with a task in another capture's transient cgroup, or named by the
    plan of a capture that died."""
    dead = list(_dead_plans())
    # The cgroup's name gives its owner's pid only: a dead owner's plan tells a reused
    # pid from the owner.
    dead_owners = {plan.owner: plan.guardian_alive for plan in dead}
    places: dict[int, list[str]] = {}
    for t in tree:
        if t.state == "Z":
            continue
        for h in (v1, v2):
            if h is None:
                continue
            try:
                rel = h.cgroup_of(t.pid)
            except (FileNotFoundError, ProcessLookupError, KeyError):
                continue  # exited since the walk, or not in this hierarchy
            owner = transient_owner(rel)
            if owner is not None:
                if owner in dead_owners:
                    state = "restoring" if dead_owners[owner] else "stranded"
                else:
                    state = "running" if os.path.exists(f"/proc/{owner}") else "stranded"
                refuse_busy(t.pid, h.path_of(rel), owner, state)
            places.setdefault(t.pid, []).append(h.path_of(rel))
    refuse_stranded(places, dead)


def _dead_plans() -> Iterator[PlanRef]:
    """What the plans of dead captures name (an unreadable one is ``recover``'s to
    report)."""
    for found in list_plans(dead_only=True):
        try:
            plan = parse_plan(found.data)
        except ValueError:
            continue
        yield PlanRef(
            path=found.path,
            owner=found.owner.pid,
            guardian_alive=plan.guardian is not None and alive(plan.guardian),
            pids=frozenset(int(str(s[1])) for s in plan.steps if s[0] == "origin"),
            cgroups=frozenset(os.path.dirname(str(s[1])) for s in plan.steps if s[0] == "thaw"),
        )


def _refuse_holding_self(
    freezer: Freezer, tree: list[TaskStat], protect: Sequence[Protected]
) -> None:
    if isinstance(freezer, InPlaceFreezer):
        h = freezer.h
        assert freezer.cgroup is not None
        placed = {}
        for who in protect:
            try:
                placed[who] = h.cgroup_of(who.pid)
            except (FileNotFoundError, ProcessLookupError, KeyError):
                continue
        refuse_holding(freezer.cgroup, h.rel_of(freezer.cgroup), placed)
    elif freezer.consistent:
        refuse_in_tree({t.pid for t in tree}, protect)


def _choose(mode: str, tree: list[TaskStat], v1: Hierarchy | None, v2: Hierarchy | None) -> Freezer:
    if mode.startswith("cgroup:"):
        return _cgroup_path_mode(mode[len("cgroup:") :], tree, v1, v2)
    if mode == "auto":
        for h in (v2, v1):
            if h is not None:
                rel = _common_cgroup(h, tree)
                found = _in_place(h, rel, tree) if rel is not None else None
                if found is not None:
                    return found
    for h in (v1, v2):
        if h is None or mode not in ("auto", h.name):
            continue
        for t in tree:
            if t.state == "Z":
                continue
            try:
                rel = h.cgroup_of(t.pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited since the walk: nothing to move
            if rel != "/" and h.state(h.path_of(rel)) != "THAWED":
                raise FreezerError(
                    f"pid {t.pid} is in {h.path_of(rel)}, which is frozen already; "
                    f"use --freeze=cgroup:{h.path_of(rel)}",
                    pid=t.pid,
                )
            # A non-root v2 cgroup's cgroup.controllers are those its parent enabled for it,
            # so what charges its tasks; the root's lists what could be enabled, and its
            # tasks are charged to nothing a move would leave (prepare() checks the other
            # end: the transient cgroup's own controllers).
            if h.version == 2 and rel != "/" and h.controllers(h.path_of(rel)):
                raise FreezerError(
                    f"pid {t.pid} is in {h.path_of(rel)}, which has controllers: moving it "
                    "into a transient cgroup would change its resource accounting; use "
                    f"--freeze=cgroup:PATH (a cgroup holding the tree) or --freeze=none",
                    pid=t.pid,
                )
        return TransientFreezer(h)
    wanted = "a cgroup freezer" if mode == "auto" else f"the {mode} freezer"
    raise FreezerError(
        f"no {wanted} here (v1 freezer: {v1.mount if v1 else 'not mounted'}, "
        f"v2: {v2.mount if v2 else 'not mounted'}); use --freeze=none"
    )
