"""fd-type handlers: the contract, discovery through entry points, and dispatch.

Discovery follows flake8's finder: find the entry points of group ``asyckpt.fd_types``
(without importing them), load each, then validate the set as a whole, sorted for
determinism.  asyckpt's own reg, dir and link handlers come in through the same group.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple, Protocol, final, runtime_checkable

import msgspec

from ._errors import PluginError
from ._kernel import pidfd_getfd
from ._procparse import FdInfo

__all__ = [
    "ENTRY_POINT_GROUP",
    "Dispatch",
    "FdFacts",
    "FdHandler",
    "HandlerContext",
    "LoadedHandler",
    "StatInfo",
    "load_handlers",
]

ENTRY_POINT_GROUP = "asyckpt.fd_types"


@final
class StatInfo(NamedTuple):
    """stat(2) of the open file, with os.stat_result's names for what asyckpt reads."""

    st_mode: int
    st_dev: int
    st_ino: int
    st_rdev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_blocks: int


@final
class FdFacts(NamedTuple):
    """What the core knows about one fd before a handler sees it."""

    pid: int
    """The process holding the fd."""
    tid: int
    """The thread whose fd table holds it (== pid unless a thread unshared its table)."""
    fd: int
    kind: str
    """Kernel-level kind: reg, dir, link, pipe, fifo, socket, chr, blk, anon."""
    link: str
    """readlink of /proc/PID/fd/N, as the kernel wrote it."""
    path: str
    """The target as the task sees it, " (deleted)" removed."""
    deleted: bool
    st: StatInfo
    """stat of the open file (through the magic link, so without opening it)."""
    fdinfo: FdInfo


@final
class HandlerContext:
    """Access to the live open file description, for handlers that need more than facts.

    Created by asyckpt only, one per fd table.  Every fd taken is closed after the
    handler returns.
    """

    def __init__(self, tid: int) -> None:
        self._pidfd: int | None = None
        self._tid = tid
        self._taken: list[int] = []

    def take_fd(self, fd: int) -> int:
        """A descriptor for the *same* open file description as the task's ``fd``
        (pidfd_getfd(2)), never a re-open; valid until the handler returns."""
        if self._pidfd is None:
            self._pidfd = os.pidfd_open(self._tid)
        new = pidfd_getfd(self._pidfd, fd)
        self._taken.append(new)
        return new

    def _release(self) -> None:
        while self._taken:
            os.close(self._taken.pop())

    def _close(self) -> None:
        self._release()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


@runtime_checkable
class FdHandler(Protocol):
    """The contract of an fd-type handler (entry-point group ``asyckpt.fd_types``).

    ``kinds`` are the kernel-level kinds it may claim; ``claims`` narrows that down (return
    True to take the fd); ``capture`` turns the fd into an instance of ``record_type``, a
    msgspec Struct whose tag is namespaced (``"mydist.thing"``).  ``capture`` runs in a
    worker thread while the tree is frozen: keep it short and never block on the task.
    Higher ``priority`` wins among handlers that claim the same fd.
    """

    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]
    record_type: ClassVar[type[msgspec.Struct]]
    priority: ClassVar[int]

    def claims(self, facts: FdFacts) -> bool: ...

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> msgspec.Struct: ...


class LoadedHandler(NamedTuple):
    handler: FdHandler
    distribution: str
    version: str

    @property
    def name(self) -> str:
        return self.handler.name

    @property
    def record_tag(self) -> str:
        return str(self.handler.record_type.__struct_config__.tag)


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> LoadedHandler:
    dist = ep.dist.name if ep.dist is not None else "?"
    version = ep.dist.version if ep.dist is not None else "?"
    try:
        obj: Any = ep.load()
        handler = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise PluginError(
            f"failed to load fd-type handler {dist}[{ep.name}]: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(handler, FdHandler):
        raise PluginError(f"{dist}[{ep.name}] does not implement the FdHandler contract")
    return LoadedHandler(handler, dist, version)


def load_handlers(*, disabled: Iterable[str] = (), extra: Iterable[LoadedHandler] = ()) -> Dispatch:
    """Load every handler registered in ``asyckpt.fd_types``, minus those ``disabled``."""
    skip = set(disabled)
    eps = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value)
    )
    loaded = [_load_entry_point(ep) for ep in eps if ep.name not in skip]
    loaded.extend(h for h in extra if h.name not in skip)
    return Dispatch(loaded)


class Dispatch:
    """Chooses the handler for an fd: among those listing its kind, the first (by
    descending priority, then name) whose ``claims`` says yes."""

    def __init__(self, handlers: Iterable[LoadedHandler]) -> None:
        self.handlers = sorted(handlers, key=lambda h: (-h.handler.priority, h.name))
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
        self._by_kind: dict[str, list[LoadedHandler]] = {}
        for h in self.handlers:
            for kind in h.handler.kinds:
                self._by_kind.setdefault(kind, []).append(h)

    def choose(self, facts: FdFacts) -> LoadedHandler | None:
        for h in self._by_kind.get(facts.kind, ()):
            if h.handler.claims(facts):
                return h
        return None
