"""Dispatch: which loaded handler captures an fd (claims, priority, conflicts).

Dispatch runs for every new open file description while the tree is frozen (thousands
per capture), so everything a handler declares is turned into lookup tables when the set
is loaded, and the candidates for one kind of fd are computed once and memoized.  The
priority order is documented in docs/plugins.md ("Which handler wins").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import NamedTuple, final

from .._errors import HandlerFailed, PluginError
from .._kernel import fs_magic
from .contract import Device, FdFacts
from .loaded import LoadedHandler, longest_first

__all__ = ["Chooser", "Conflict", "Dispatch", "PluginConflictWarning"]

# Specificity of the declaration that matched, most specific first; it orders candidates
# of equal priority (docs/plugins.md, "Which handler wins").
_DEVICE, _MAJOR, _PREFIX, _MAGIC, _KIND, _ANY = 5, 4, 3, 2, 1, 0

_PlanEntry = tuple[LoadedHandler, frozenset[int] | None, Callable[[FdFacts], bool] | None]
"""A candidate: the handler, the fs magics to check first (None: no check), its predicate."""


class PluginConflictWarning(UserWarning):
    """Two handlers claim the same thing at the same priority: the order between them
    is only their names'.  Give one a higher ``priority``."""


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
        self._prefixes = tuple(sorted(prefixes, key=longest_first))
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
