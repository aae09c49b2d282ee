"""The plugin contract: what an fd-type handler declares and what the core tells it.

A plugin author reads this module and docs/plugins.md.  It holds the facts a handler is
handed (:class:`FdFacts`, :class:`StatInfo`), what it may claim (:data:`KINDS`,
:class:`Device`), how records name an fd (:class:`LinkRef`), and the :class:`FdHandler`
protocol itself.  It reaches no kernel: the live objects a handler is given during a
capture (``HandlerContext``, ``CaptureSession``, ``CaptureTree``, ``CaptureLinks``) are
in :mod:`.session` and :mod:`.links`, which do, and the :class:`RestoreContext` a
``restore`` hook is given is ``asyckpt._restore_hooks``'s.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol, final, runtime_checkable

import msgspec

from .._procparse import FdInfo
from .._records import File, Task

if TYPE_CHECKING:
    from .session import HandlerContext

__all__ = [
    "KINDS",
    "Device",
    "FdFacts",
    "FdHandler",
    "LinkRef",
    "RestoreContext",
    "RestoreRefused",
    "StatInfo",
]

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
    ``render_text(record)`` for ``asyckpt show``, and ``restore(record, ctx)`` (a
    :class:`RestoreContext`), which rebuilds a file restore does not rebuild itself.
    docs/plugins.md has the whole contract.
    """

    name: ClassVar[str]
    record_type: ClassVar[type[msgspec.Struct]]

    def capture(
        self, facts: FdFacts, ctx: HandlerContext
    ) -> msgspec.Struct | Awaitable[msgspec.Struct]: ...


class RestoreRefused(Exception):
    """Raised by a ``restore`` hook (and by :meth:`RestoreContext.open`) when the file
    cannot be rebuilt faithfully: restore then refuses the whole restore (exit 13),
    before any fd is installed, with this text after the pid, fd and kind."""


@runtime_checkable
class RestoreContext(Protocol):
    """What a handler's ``restore(record, ctx)`` hook is given, and all it may use: the
    image's view of the fd, and a way to open paths that stays under ``--root``.

    The hook returns a new fd (an ``int``) for an open file description equivalent to
    the captured one; restore owns it from then on (moves it above the table, installs
    it at ``ctx.fd`` and every fd sharing the description, closes it on failure).  Fds
    ``open`` gave that the hook does not return are closed by restore.
    """

    @property
    def file(self) -> File:
        """The image's record of the open file description (``File.data`` is the
        record the hook is given, decoded)."""
        ...

    @property
    def task(self) -> Task:
        """The task whose table is restored (the first, if several share the file)."""
        ...

    @property
    def pid(self) -> int:
        """The task's pid in the image (not the new process's)."""
        ...

    @property
    def fd(self) -> int:
        """The fd number it is restored at (the first, if several share it)."""
        ...

    @property
    def kind(self) -> str:
        """The ``--skip`` word of the file (``chr``, ``fanotify``...)."""
        ...

    @property
    def relaxed(self) -> bool:
        """``--relaxed``: another file of the same type (and size) at a path is accepted."""
        ...

    def open(self, path: str, flags: int) -> int:
        """Open ``path`` (absolute, as the task saw it) under ``--root`` with restore's
        own checks, and return the fd (close-on-exec): resolved with ``openat2``
        ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``; ``O_CREAT``, ``O_EXCL``, ``O_TRUNC``
        and ``O_TMPFILE`` removed (``O_NOCTTY`` added); opened first as ``O_PATH`` and
        checked to be the image's file (its type; its device and inode, or with
        ``relaxed`` its size; a device's number always) before it is opened for real
        through that very ``O_PATH`` fd.  Any failure raises :class:`RestoreRefused`."""
        ...
