"""The plugin contract: what an fd-type handler declares and what the core tells it.

A plugin author reads this module and docs/plugins.md.  It holds the facts a handler is
handed (:class:`FdFacts`, :class:`StatInfo`), what it may claim (:data:`KINDS`,
:class:`Device`), how records name an fd (:class:`LinkRef`), and the :class:`FdHandler`
protocol itself.  It reaches no kernel: the live objects a handler is given during a
capture (``HandlerContext``, ``CaptureSession``, ``CaptureTree``, ``CaptureLinks``) are
in :mod:`.session` and :mod:`.links`, which do.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol, final, runtime_checkable

import msgspec

from .._procparse import FdInfo

if TYPE_CHECKING:
    from .session import HandlerContext

__all__ = ["KINDS", "Device", "FdFacts", "FdHandler", "LinkRef", "StatInfo"]

KINDS = frozenset({"reg", "dir", "link", "pipe", "fifo", "socket", "chr", "blk", "anon"})
"""The kernel-level kinds the core tells apart (``FdFacts.kind``)."""


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
class Device(NamedTuple):
    """A device a handler claims: ``Device("chr", 1, 3)`` is /dev/null; a minor of None
    claims every minor of the major."""

    kind: str
    """``chr`` or ``blk``: the two number spaces are separate."""
    major: int
    minor: int | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.major}:{'*' if self.minor is None else self.minor}"


@final
class LinkRef(NamedTuple):
    """The fd a record was captured through: its process, the thread whose fd table
    holds it, and its number."""

    pid: int
    tid: int
    fd: int


@runtime_checkable
class FdHandler(Protocol):
    """The contract of an fd-type handler (entry-point group ``asyckpt.fd_types``).

    Required: ``name`` (equal to the entry point's name), ``record_type`` (a msgspec
    Struct with ``tag="mydist.thing", tag_field="kind"``) and ``capture(facts, ctx)``,
    plain or ``async``, returning a ``record_type``.  What it claims is declared with any
    of the optional class attributes ``kinds``, ``link_prefixes``, ``devices`` and
    ``fs_magic`` (an fd matching any one of them is a candidate) and narrowed by an
    optional ``claims(facts) -> bool``; ``priority`` (default 0) orders candidates.
    Optional hooks: ``begin(session)`` once per capture, ``link(record, links)`` once
    per record after every fd of the tree is resolved but before the thaw (to name other
    descriptions of the tree by file id: ``links.file_of``, ``links.epoll_target``),
    ``finish(record, tree)`` once per record after the thaw, ``render_json(record)``,
    ``render_text(record)`` for ``asyckpt show``, and ``restore(record, file)``.
    docs/plugins.md has the whole contract.
    """

    name: ClassVar[str]
    record_type: ClassVar[type[msgspec.Struct]]

    def capture(
        self, facts: FdFacts, ctx: HandlerContext
    ) -> msgspec.Struct | Awaitable[msgspec.Struct]: ...
