"""endpoints (``show --endpoints``): who holds each end of a pipe or a connection.

Pipes and FIFOs are linked by what the core records for every file (type, dev, ino,
access); sockets by the raw fields of their handler's record, by convention
(docs/plugins.md, "Records that link files"): ``peer_ino`` names the socket at the other
end, ``pending`` the clients whose connections wait on a listener.  Raw fields, so this
works without the plugin that wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ._image import Image
from ._names import json_name, os_name, outside_fd_json
from ._records import File, OutsideFd
from ._show import _FD_MODES, _fd_mode, _raw, _text

__all__ = ["End", "Endpoint", "Holder", "endpoints", "render_endpoints"]


class Holder(NamedTuple):
    """One fd on an end: the process, the thread whose table holds it, the fd."""

    pid: int
    tid: int
    fd: int
    comm: str


class End(NamedTuple):
    """One end of a pipe or connection: an open file description of the tree, or none
    (``file`` None: the end is outside the tree, or closed)."""

    role: str
    """``read``, ``write`` or ``read-write`` (pipes); ``socket`` (a connection's end)."""
    ino: int
    file: int | None
    holders: tuple[Holder, ...]
    pending_on: int | None = None
    """The server end of a connection not accepted yet: the file id of the listener it
    waits on."""
    outside_fds: tuple[OutsideFd, ...] = ()
    """An end outside the tree: the fds found on it after the thaw (``holders``)."""

    @property
    def outside(self) -> bool:
        return self.file is None and self.pending_on is None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "ino": self.ino,
            "file": self.file,
            "fds": [{"pid": h.pid, "tid": h.tid, "fd": h.fd} for h in self.holders],
            "outside": self.outside,
            "pending_on": self.pending_on,
            "outside_fds": [outside_fd_json(o) for o in self.outside_fds],
        }


class Endpoint(NamedTuple):
    """A pipe, a FIFO, or a connected socket pair, with its ends."""

    kind: str
    """``pipe``, ``fifo`` or ``socket``."""
    name: str
    """``pipe:[ino]``, the FIFO's path, or ``socket:[ino] <-> socket:[peer]``."""
    label: str
    ends: tuple[End, ...]
    name_bytes: bytes | None = None
    """A FIFO's path's exact bytes, when not UTF-8 (``name`` is then escaped)."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, object] = {
            "kind": self.kind,
            "name": self.name,
            "label": self.label,
            "ends": [e.to_json() for e in self.ends],
        }
        json_name(doc, "name", self.name_bytes)
        return doc


def _holders(image: Image) -> dict[int, list[Holder]]:
    """file id -> the fds holding it, task by task in image order (a table shared by
    several tasks lists its fds for each)."""
    out: dict[int, list[Holder]] = {}
    for task in image.tasks:
        comm = os_name(task.comm, task.comm_bytes)
        tables = [(task.pid, task.fd_table)] + [
            (th.tid, th.fd_table) for th in task.threads if th.fd_table != task.fd_table
        ]
        for tid, table in tables:
            for fd, f in image.fds(table):
                out.setdefault(f.id, []).append(Holder(task.pid, tid, fd.fd, comm))
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value else None


_PIPE_ROLES = {"r": "read", "w": "write", "rw": "read-write"}


def endpoints(image: Image) -> list[Endpoint]:
    """Every pipe and FIFO, and every socket with a peer, in order of first appearance,
    with the task/fd at each end (as ``lsof +E`` shows them)."""
    holders = _holders(image)
    outside: dict[tuple[str, int, int], list[OutsideFd]] = {
        (h.type, h.dev, h.ino): h.fds for h in image.outside
    }
    pipes: dict[tuple[int, int], list[File]] = {}
    sockets: dict[int, tuple[File, dict[str, Any]]] = {}
    for f in image.files.values():
        if f.type in ("pipe", "fifo"):
            pipes.setdefault((f.dev, f.ino), []).append(f)
        elif f.type == "socket":
            sockets.setdefault(f.ino, (f, _raw(f)))
    pending: dict[int, int] = {}  # a waiting client's inode -> its listener's file id
    for f, data in sockets.values():
        waiting = data.get("pending")
        for ino in waiting if isinstance(waiting, list) else ():
            if isinstance(ino, int):
                pending.setdefault(ino, f.id)

    def ends_of(ino: int, files: list[File], role: str) -> list[End]:
        return [End(role, ino, f.id, tuple(holders.get(f.id, ()))) for f in files]

    out: list[tuple[int, Endpoint]] = []
    for files in pipes.values():
        first = files[0]
        ends = [
            End(_PIPE_ROLES.get(f.access, f.access), f.ino, f.id, tuple(holders.get(f.id, ())))
            for f in files
        ]
        found = outside.get((first.type, first.dev, first.ino), [])
        for side in ("read", "write"):
            theirs = tuple(o for o in found if o.access in (side[0], "rw"))
            if theirs or not any(e.role in (side, "read-write") for e in ends):
                ends.append(End(side, first.ino, None, (), None, theirs))
        name = f"pipe:[{first.ino}]" if first.type == "pipe" else first.path
        label = "" if first.type == "pipe" else f"FIFO, ino {first.ino}"
        if first.deleted:
            label += ", unlinked"
        exact = first.path_bytes if first.type == "fifo" else None
        out.append((first.id, Endpoint(first.type, name, label, tuple(ends), exact)))
    same_ino: dict[int, list[File]] = {}
    for f in image.files.values():
        if f.type == "socket":
            same_ino.setdefault(f.ino, []).append(f)
    done: set[int] = set()
    for ino, (f, data) in sockets.items():
        peer = _int(data.get("peer_ino"))
        if ino in done or (peer is None and ino not in pending):
            continue
        ends = ends_of(ino, same_ino[ino], "socket")
        if peer is None:  # a client whose connection waits on a listener of the tree
            done.add(ino)
            ends.append(End("socket", 0, None, (), pending[ino]))
            name = f"socket:[{ino}] -> listener socket:[{image.files[pending[ino]].ino}]"
        else:
            done.update((ino, peer))
            if peer in same_ino:
                ends += ends_of(peer, same_ino[peer], "socket")
            else:
                ends.append(End("socket", peer, None, (), None, _held(outside, f, peer)))
            name = f"socket:[{ino}] <-> socket:[{peer}]"
        words = [str(data[k]) for k in ("family", "type") if isinstance(data.get(k), str)]
        out.append((f.id, Endpoint("socket", name, " ".join(words), tuple(ends))))
    # Clients outside the tree whose connections wait on a listener of the tree.
    for ino, listener in pending.items():
        if ino not in done:
            f = image.files[listener]
            words = [str(v) for k in ("family", "type") if isinstance(v := _raw(f).get(k), str)]
            ends = [
                End("socket", ino, None, (), None, _held(outside, f, ino)),
                End("socket", 0, None, (), listener),
            ]
            name = f"socket:[{ino}] -> listener socket:[{f.ino}]"
            out.append((listener, Endpoint("socket", name, " ".join(words), tuple(ends))))
    out.sort(key=lambda pair: pair[0])
    return [e for _, e in out]


def _held(
    outside: Mapping[tuple[str, int, int], list[OutsideFd]], f: File, ino: int
) -> tuple[OutsideFd, ...]:
    """The fds outside the tree on socket ``ino``, of the same sockfs as ``f``."""
    return tuple(outside.get(("socket", f.dev, ino), ()))


def _outside_text(o: OutsideFd) -> str:
    """``pid/comm fd N`` and its mode, as lsof +E names the process at the other end."""
    mode = _FD_MODES.get(o.access, "?")
    return f"{o.pid}/{os_name(o.comm, o.comm_bytes)} fd {o.fd}{mode}"


def _end_text(end: End, image: Image) -> str:
    if end.pending_on is not None:
        listener = image.files[end.pending_on]
        return f"pending on listener socket:[{listener.ino}] (file {listener.id}), not accepted"
    if end.file is None:
        if end.outside_fds:
            return "! outside the tree: " + ", ".join(map(_outside_text, end.outside_fds))
        if image.header.endpoint_search == "system":
            return "! outside the tree: no holder found (closed)"
        return "! outside the tree (or closed)"
    f = image.files[end.file]
    fds = ", ".join(
        f"{h.comm} {h.pid}{'/' + str(h.tid) if h.tid != h.pid else ''} fd {h.fd}{_fd_mode(f)}"
        for h in end.holders
    )
    return f"{fds} (file {end.file})"


def render_endpoints(image: Image) -> str:
    """``show --endpoints``: each pipe, FIFO and connected socket pair, the task/fd at
    each end, and ``!`` where an end is outside the tree."""
    eps = endpoints(image)
    outside = sum(1 for e in eps if any(end.outside for end in e.ends))
    kinds = {k: sum(1 for e in eps if e.kind == k) for k in ("pipe", "fifo", "socket")}
    lines = [
        f"pipes: {kinds['pipe']}, FIFOs: {kinds['fifo']}, connections: {kinds['socket']}; "
        f"with an end outside the tree (!): {outside}"
    ]
    if image.header.endpoint_search == "system":
        lines.append(
            "ends outside the tree: searched for after the thaw (not frozen: "
            "they may have changed since the capture)"
        )
    for e in eps:
        lines.append("")
        name = os_name(e.name, e.name_bytes)
        lines.append(f"{e.kind} {name}" + (f"  ({e.label})" if e.label else ""))
        for end in e.ends:
            who = end.role if e.kind != "socket" else f"socket:[{end.ino}]" if end.ino else "peer"
            lines.append(f"  {who:<22} {_end_text(end, image)}")
    return _text(lines)
