"""Planning unix sockets (pure): which are socketpairs, which are bound to a name, which
connections are made again through a restored listener.

A unix socket of the image is one of:

- one end of a connection whose two ends are restored and neither bound to a name: a
  socketpair (``_restore_plan`` plans those, :func:`pair_peer` says which);
- a listener bound to a name: bound again to it (a path under ``--root``, an abstract
  name in restore's network namespace) and listening with its backlog; none may wait
  in its queue;
- a stream or seqpacket connection accepted from such a listener: the accepted end
  carries the listener's name, which only ``accept(2)`` gives a socket, so both ends
  are made again by connecting a new client to the restored listener and accepting.
  The listener must be restored too: a new connection cannot carry a name without it;
- a datagram socket, bound to its name if it had one, connected again to the bound
  socket it was connected to when that one is restored with it;
- an unbound, unconnected socket: a new one of its type.

Anything else (a connection whose peer is not restored, a client bound to a name of its
own, queued data, a relative name) is refused, saying why.  Nothing here touches the
system: names are checked as bytes against sun_path's 108.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ._records import File
from ._restore_model import Make, Refuse, Shutdown, SockType, UnixConnection, UnixSocket

__all__ = ["SUN_PATH", "UnixPeer", "pair_peer", "plan_unix", "shown", "sun_path", "unix_sockets"]

SUN_PATH = 108
"""sizeof(struct sockaddr_un.sun_path): the longest name a unix socket is bound to."""
_TYPES: dict[object, SockType] = {"stream": "stream", "dgram": "dgram", "seqpacket": "seqpacket"}


class UnixPeer(NamedTuple):
    """A unix socket of the restored set, found by its inode."""

    file: int
    data: dict[str, object]


def unix_sockets(
    scope: Iterable[File], data_of: Callable[[File], dict[str, object]]
) -> dict[int, UnixPeer]:
    """The unix sockets of ``scope`` (the table, or with ``--tree`` the image) by inode."""
    out: dict[int, UnixPeer] = {}
    for f in scope:
        if f.type != "socket":
            continue
        data = data_of(f)
        ino = data.get("ino")
        if data.get("family") == "unix" and type(ino) is int:
            out.setdefault(ino, UnixPeer(f.id, data))
    return out


def sun_path(data: dict[str, object]) -> bytes | None:
    """The name a unix socket was bound to, as bind(2) takes it (an abstract one with
    its leading NUL); None when unbound.  Refuses a name bind could not have taken, or
    that restore cannot bind again where it was: a relative one (resolved in a working
    directory the image does not hold), one that names no file."""
    name, raw, abstract = data.get("name"), data.get("name_bytes"), data.get("abstract") is True
    if name is None and raw is None:
        return None
    if not isinstance(name, str) or not isinstance(raw, bytes | None):
        raise Refuse("a name that is not text")
    if raw is None:
        if abstract and not name.startswith("@"):
            raise Refuse("an abstract name without its @")
        raw = b"\0" + name[1:].encode() if abstract else name.encode()
    if abstract != raw.startswith(b"\0") or not raw:
        raise Refuse("a name whose abstract flag and bytes disagree")
    if len(raw) > SUN_PATH:
        raise Refuse(f"a name of {len(raw)} bytes (sun_path holds {SUN_PATH})")
    if abstract:
        return raw
    if b"\0" in raw:
        raise Refuse("a name with a NUL")
    if not raw.startswith(b"/"):
        raise Refuse("bound to a relative name (the directory it was resolved in is unknown)")
    if raw.rpartition(b"/")[2] in (b"", b".", b".."):
        raise Refuse("a name that is no file's")
    return raw


def shown(address: bytes) -> str:
    """A name as errors quote it (``@name`` for an abstract one); escaped when printed."""
    return "@" + os.fsdecode(address[1:]) if address.startswith(b"\0") else os.fsdecode(address)


def _peer(peers: dict[int, UnixPeer], ino: object) -> UnixPeer | None:
    return peers.get(ino) if type(ino) is int else None


def pair_peer(data: dict[str, object], peers: dict[int, UnixPeer]) -> UnixPeer | None:
    """The other end when the socket is one end of a connection restored whole with
    neither end bound to a name (a socketpair makes it again), else None."""
    ino, peer = data.get("ino"), _peer(peers, data.get("peer_ino"))
    if peer is None or data.get("state") == "LISTEN" or peer.data.get("peer_ino") != ino:
        return None
    if sun_path(data) is not None or sun_path(peer.data) is not None:
        return None
    return peer


def plan_unix(
    f: File, data: dict[str, object], peers: dict[int, UnixPeer], shutdown: Shutdown
) -> Make:
    """How to make a unix socket that is not one end of a socketpair (module doc)."""
    sotype = _TYPES.get(data.get("type"))
    if sotype is None:
        raise Refuse(f"a unix socket of type {data.get('type')!r}")
    if data.get("recv_queue") not in (None, 0):
        raise Refuse("data queued in a socket is not in the image")
    address = sun_path(data)
    netns = data.get("netns")
    netns = netns if type(netns) is int else None
    peer_ino = data.get("peer_ino")
    if data.get("state") == "LISTEN":
        if data.get("accept_queue") not in (None, 0) or data.get("pending"):
            raise Refuse("connections wait in its accept queue (not restored)")
        backlog = data.get("backlog")
        if type(backlog) is not int or not 0 <= backlog <= 2**31 - 1:
            raise Refuse(f"backlog {backlog!r} out of range 0..{2**31 - 1}")
        if address is None or sotype == "dgram":
            raise Refuse("a listener without a name")
        if data.get("name_state") in ("unlinked", "replaced"):
            raise Refuse(
                f"its name {shown(address)} was {data.get('name_state')} since it was bound "
                "(binding again would make another file there)"
            )
        return UnixSocket(
            socktype=sotype,
            address=address,
            backlog=backlog,
            connect=None,
            netns=netns,
            shutdown=shutdown,
        )
    if sotype == "dgram" or not peer_ino:
        connect = None
        if peer_ino:
            target = _peer(peers, peer_ino)
            if target is None:
                raise Refuse("its peer is not restored with it")
            if sun_path(target.data) is None:
                raise Refuse("connected to a socket without a name (not restored)")
            connect = target.file
        elif sotype != "dgram" and (
            data.get("peer_queued_on") or data.get("state") not in ("CLOSE", None)
        ):
            raise Refuse("its peer is not restored with it (it waits in a queue, or is gone)")
        return UnixSocket(
            socktype=sotype,
            address=address,
            backlog=None,
            connect=connect,
            netns=netns,
            shutdown=shutdown,
        )
    return _connection(f, data, peers, sotype, address, shutdown)


def _connection(
    f: File,
    data: dict[str, object],
    peers: dict[int, UnixPeer],
    sotype: SockType,
    address: bytes | None,
    shutdown: Shutdown,
) -> UnixConnection:
    """One end of a connection to a listener: the accepted end carries its name."""
    peer = _peer(peers, data.get("peer_ino"))
    if peer is None or peer.data.get("peer_ino") != data.get("ino"):
        raise Refuse("its peer is not restored with it")
    peer_address = sun_path(peer.data)
    if address is not None and peer_address is not None:
        raise Refuse("a client bound to a name of its own (not restored)")
    accepted, name = (f.id, address) if address is not None else (peer.file, peer_address)
    assert name is not None  # one end has a name, else it is a socketpair
    listeners = [
        p
        for p in peers.values()
        if p.data.get("state") == "LISTEN"
        and p.data.get("type") == sotype
        and sun_path(p.data) == name
        and (not name.startswith(b"\0") or p.data.get("netns") == data.get("netns"))
    ]
    if not listeners:
        raise Refuse(
            f"accepted from a listener ({shown(name)}) not restored with it: a new connection "
            "cannot carry its name without it"
        )
    if len(listeners) > 1:
        raise Refuse(f"more than one listener restored is bound to {shown(name)}")
    return UnixConnection(
        listener=listeners[0].file,
        accepted=accepted,
        end="accepted" if accepted == f.id else "client",
        socktype=sotype,
        shutdown=shutdown,
    )
