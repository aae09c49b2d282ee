"""Who outside the tree holds its pipes, FIFOs and the other ends of its connections
(``asyckpt tree --endpoints=system``), as ``lsof +E`` names them.

The objects come from the capture: every pipe and FIFO of the tree, and every socket a
record names as the other end of one of the tree's (the raw ``peer_ino`` and ``pending``
fields, docs/plugins.md, "Records that link files": sock_diag's ``UNIX_DIAG_PEER`` and
pending connections for unix sockets) that no task of the tree holds.  The holders come
from every other process's ``/proc/PID/fd`` links (``pipe:[ino]``, ``socket:[ino]``, a
FIFO's path, confirmed by its device and inode), with ``comm`` and the fd's access mode.

When: after the thaw, once every record is made.  The rest of the system is never
frozen, so this is a search, not a snapshot: a holder may have closed its fd or
appeared since the tree was frozen, which the image says (``Header.endpoint_search``).  Only
each process's main fd table is read (a thread that unshared its own is not searched).

:func:`targets` is pure (the capture's resolved tasks in, objects out); :func:`search`
does the reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import msgspec

from ._classify import access_mode
from ._names import split_name
from ._procparse import split_fdinfo
from ._records import Access, Holders, OutsideFd

if TYPE_CHECKING:
    from ._parts import TaskPart

__all__ = ["ENDPOINTS_MODES", "Target", "search", "targets"]

ENDPOINTS_MODES = ("tree", "system")
"""``tree``: ends outside the tree are flagged, not searched for; ``system``: searched for
after the thaw."""

PROC = "/proc"


class Target(NamedTuple):
    """An object of the tree whose holders outside it are looked for."""

    type: Literal["pipe", "fifo", "socket"]
    """``pipe``, ``fifo`` or ``socket``."""
    dev: int
    ino: int
    link: str
    """What an fd on it reads as its link: ``pipe:[ino]``, ``socket:[ino]``, or the
    FIFO's path as asyckpt's /proc shows it."""


def _linked_inos(data: Any) -> list[int]:
    """The sockets a handler record names as other ends (raw fields, by convention)."""
    if isinstance(data, msgspec.Raw):
        try:
            data = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            return []
    elif isinstance(data, msgspec.Struct):
        data = msgspec.to_builtins(data)
    if not isinstance(data, dict):
        return []
    out = []
    peer = data.get("peer_ino")
    if isinstance(peer, int) and not isinstance(peer, bool) and peer > 0:
        out.append(peer)
    pending = data.get("pending")
    if isinstance(pending, list):
        out += [i for i in pending if isinstance(i, int) and not isinstance(i, bool) and i > 0]
    return out


def targets(parts: Iterable[TaskPart]) -> list[Target]:
    """The tree's pipes and FIFOs, then the other ends of its sockets that it does not
    hold, each once, in image order."""
    objects: dict[tuple[str, int, int], Target] = {}
    held: set[int] = set()
    peers: list[tuple[int, int]] = []  # (sockfs dev, ino)
    for part in parts:
        for _, _, entries in part.tables:
            for new in entries.new:
                raw = new.raw
                if new.kind in ("pipe", "fifo"):
                    kind = cast(Literal["pipe", "fifo"], new.kind)
                    objects.setdefault(
                        (kind, raw.st_dev, raw.st_ino),
                        Target(kind, raw.st_dev, raw.st_ino, raw.link),
                    )
                elif new.kind == "socket":
                    held.add(raw.st_ino)
                    peers += [(raw.st_dev, ino) for ino in _linked_inos(new.data)]
    for dev, ino in peers:
        if ino not in held:
            objects.setdefault(("socket", dev, ino), Target("socket", dev, ino, f"socket:[{ino}]"))
    return list(objects.values())


def search(wanted: list[Target], exclude: Iterable[int]) -> list[Holders]:
    """The processes outside ``exclude`` (the tree's pids) holding fds on ``wanted``,
    one record per object that has any, in ``wanted``'s order."""
    by_link = {t.link: t for t in wanted}
    if not by_link:
        return []
    skip = set(exclude) | {os.getpid()}
    found: dict[Target, list[OutsideFd]] = {}
    pids = sorted(int(name) for name in os.listdir(PROC) if name.isdigit())
    for pid in pids:
        if pid in skip:
            continue
        try:
            dfd = os.open(f"{PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # it exited, or is not ours to read
            continue
        try:
            hits = _hits(dfd, by_link)
        finally:
            os.close(dfd)
        if not hits:
            continue
        text, raw = _comm(pid)
        for fd, target in hits:
            access = _fd_access(pid, fd, target)
            if access is not None:
                found.setdefault(target, []).append(
                    OutsideFd(pid=pid, comm=text, fd=fd, access=access, comm_bytes=raw)
                )
    return [Holders(type=t.type, dev=t.dev, ino=t.ino, fds=found[t]) for t in wanted if t in found]


def _hits(dfd: int, by_link: dict[str, Target]) -> list[tuple[int, Target]]:
    """The fds of one fd directory whose link names a target, in fd order (the commonest
    work of the search: one readlink per fd of the machine, relative to the directory)."""
    readlink, get = os.readlink, by_link.get
    out = []
    try:
        names = os.listdir(dfd)
    except OSError:
        return []
    for name in names:
        try:
            target = get(readlink(name, dir_fd=dfd))
        except OSError:
            continue  # closed meanwhile
        if target is not None:
            out.append((int(name), target))
    out.sort()
    return out


def _fd_access(pid: int, fd: int, target: Target) -> Access | None:
    """The fd's access mode, or None when it is not on ``target`` after all (a FIFO's
    path names another file; the fd was closed meanwhile)."""
    try:
        if target.type == "fifo":
            st = os.stat(f"{PROC}/{pid}/fd/{fd}")
            if (st.st_dev, st.st_ino) != (target.dev, target.ino):
                return None
        with open(f"{PROC}/{pid}/fdinfo/{fd}", "rb") as f:
            _, flags, _, _ = split_fdinfo(f.read(4096))
    except OSError:
        return None
    return cast(Access, access_mode(flags))


def _comm(pid: int) -> tuple[str, bytes | None]:
    try:
        with open(f"{PROC}/{pid}/comm", "rb") as f:
            raw = f.read(64).removesuffix(b"\n")
    except OSError:
        return "", None  # it exited meanwhile
    return split_name(raw.decode("utf-8", "surrogateescape"))
