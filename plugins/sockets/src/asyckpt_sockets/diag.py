"""sock_diag (NETLINK_SOCK_DIAG) requests and replies, as bytes: pure, no I/O.

One dump request per family (and, for inet, per protocol) returns every socket of that
kind in the network namespace the netlink socket lives in.  A capture keeps the replies
as received and only *indexes* them by socket inode while the tree is frozen (one small
unpack per message); the few messages the capture needs are decoded afterwards
(:func:`decode`).  Layouts are those of <linux/sock_diag.h>, <linux/unix_diag.h>,
<linux/inet_diag.h>, <linux/netlink_diag.h> and <linux/packet_diag.h>; integers are in
host order except ports and addresses (network order) and a packet socket's protocol.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "INET_PROTOCOLS",
    "TCP_STATES",
    "DiagError",
    "InetDiag",
    "NetlinkDiag",
    "PacketDiag",
    "UnixDiag",
    "attributes",
    "decode",
    "inet_request",
    "kernel_dev",
    "messages",
    "name_state",
    "netlink_request",
    "packet_request",
    "unix_request",
]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")  # nlattr: len, type
_U32 = struct.Struct("=I")
_U8 = struct.Struct("=B")

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
"""sk_state names (unix and netlink sockets use the same numbers)."""

INET_PROTOCOLS = {6: "tcp", 17: "udp", 136: "udplite", 255: "raw"}
"""The inet protocols dumped, by the number a request names (255: every raw socket)."""

# Every state a socket held by an fd can be in: TIME_WAIT and the request minisockets
# (SYN_RECV, NEW_SYN_RECV) have no inode, and on a busy host there are many of them.
_INET_STATES = sum(1 << s for s in TCP_STATES if s not in (3, 6, 12))

# --- requests ----------------------------------------------------------------------------

UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS = 0x1, 0x2, 0x4, 0x8
UDIAG_SHOW_RQLEN, UDIAG_SHOW_UID = 0x10, 0x40
NDIAG_SHOW_GROUPS = 0x2
NDIAG_PROTO_ALL = 255
PACKET_SHOW_INFO = 0x1


def _request(payload: bytes, seq: int) -> bytes:
    return (
        _HDR.pack(_HDR.size + len(payload), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        + payload
    )


def unix_request(seq: int = 1) -> bytes:
    """Dump every unix socket: name (and the node a path name was bound to), peer,
    pending connections, queues, uid (shutdown comes with every message)."""
    show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS
    show |= UDIAG_SHOW_RQLEN | UDIAG_SHOW_UID
    # unix_diag_req: family, protocol, pad, states, ino, show, cookie[2]
    return _request(struct.pack("=BBHIIIII", AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show, 0, 0), seq)


def inet_request(family: int, protocol: int, seq: int = 1) -> bytes:
    """Dump every ``protocol`` socket of ``family`` (AF_INET or AF_INET6); protocol 255
    (IPPROTO_RAW) asks for every raw socket, whatever its own protocol."""
    # inet_diag_req_v2: family, protocol, ext, pad (the raw protocol for raw sockets),
    # states, then an empty inet_diag_sockid (48 bytes).
    raw_protocol = 255 if protocol == 255 else 0
    head = struct.pack("=BBBBI", family, protocol, 0, raw_protocol, _INET_STATES)
    return _request(head + bytes(48), seq)


def netlink_request(seq: int = 1) -> bytes:
    """Dump every netlink socket, with the multicast groups it joined."""
    # netlink_diag_req: family, protocol, pad, ino, show, cookie[2]
    return _request(
        struct.pack("=BBHIIII", AF_NETLINK, NDIAG_PROTO_ALL, 0, 0, NDIAG_SHOW_GROUPS, 0, 0), seq
    )


def packet_request(seq: int = 1) -> bytes:
    """Dump every packet socket, with its interface."""
    # packet_diag_req: family, protocol (must be 0), pad, ino, show, cookie[2]
    return _request(struct.pack("=BBHIIII", AF_PACKET, 0, 0, 0, PACKET_SHOW_INFO, 0, 0), seq)


# --- replies -----------------------------------------------------------------------------


class DiagError(OSError):
    """The kernel refused a dump (NLMSG_ERROR): e.g. ENOENT when no diag module handles
    that family or protocol."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def messages(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, payload offset, payload length) of each netlink message in ``buf``."""
    off, end = 0, len(buf)
    while off + _HDR.size <= end:
        length, mtype, flags, _seq, _pid = _HDR.unpack_from(buf, off)
        if length < _HDR.size or off + length > end:
            raise ValueError(f"netlink message of length {length} at offset {off} runs past {end}")
        yield mtype, flags, off + _HDR.size, length - _HDR.size
        off += _align(length)


def check_end(buf: bytes | bytearray | memoryview, mtype: int, off: int, length: int) -> bool:
    """Whether a message ends the dump (DONE, or an acknowledgement); raises DiagError
    for an error, which either can carry (a dump of a protocol with no diag module ends
    in a DONE holding -ENOENT)."""
    if mtype in (NLMSG_DONE, NLMSG_ERROR):
        err = struct.unpack_from("=i", buf, off)[0] if length >= 4 else 0
        if err < 0:
            raise DiagError(-err, os.strerror(-err))
        return True
    return False


def attributes(
    buf: bytes | bytearray | memoryview, off: int, end: int
) -> Iterator[tuple[int, int, int]]:
    """(type, value offset, value length) of each netlink attribute in buf[off:end]."""
    while off + _ATTR.size <= end:
        length, atype = _ATTR.unpack_from(buf, off)
        if length < _ATTR.size or off + length > end:
            raise ValueError(
                f"netlink attribute of length {length} at offset {off} runs past {end}"
            )
        yield atype & 0x3FFF, off + _ATTR.size, length - _ATTR.size
        off += _align(length)


def _attributes(
    buf: bytes | bytearray | memoryview, off: int, end: int
) -> list[tuple[int, int, int]]:
    """:func:`attributes` as a list, without a generator's overhead per attribute."""
    out = []
    unpack = _ATTR.unpack_from
    while off + 4 <= end:
        length, atype = unpack(buf, off)
        if length < 4 or off + length > end:
            raise ValueError(
                f"netlink attribute of length {length} at offset {off} runs past {end}"
            )
        out.append((atype & 0x3FFF, off + 4, length - 4))
        off += (length + 3) & ~3
    return out


# Where each family's reply keeps the socket's inode, from the start of the payload.
INODE_OFFSET = {AF_UNIX: 4, AF_INET: 68, AF_INET6: 68, AF_NETLINK: 16, AF_PACKET: 4}
_MIN_PAYLOAD = {AF_UNIX: 16, AF_INET: 72, AF_INET6: 72, AF_NETLINK: 28, AF_PACKET: 16}


def inode_at(buf: bytes | bytearray | memoryview, family: int, off: int, length: int) -> int:
    """The socket inode of one reply (0: none, as for a TIME_WAIT minisocket)."""
    if length < _MIN_PAYLOAD[family]:
        raise ValueError(f"sock_diag reply of {length} bytes is too short for family {family}")
    ino: int = _U32.unpack_from(buf, off + INODE_OFFSET[family])[0]
    return ino


def kernel_dev(kdev: int) -> int:
    """A device number as the kernel keeps it inside (``s_dev``: 12 bits of major, 20
    of minor), which UNIX_DIAG_VFS reports, as stat(2)'s ``st_dev`` spells it."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


def name_state(vfs: tuple[int, int], node: tuple[int, int] | None) -> str:
    """Whether a unix socket's path name still leads to the node it was bound to:
    ``vfs`` is UNIX_DIAG_VFS (kernel dev, ino); ``node`` the (st_dev, st_ino) of what
    the path names now, None if nothing.  ``ok``, ``unlinked`` or ``replaced``."""
    if node is None:
        return "unlinked"
    return "ok" if node == (kernel_dev(vfs[0]), vfs[1]) else "replaced"


class UnixDiag(NamedTuple):
    type: int
    state: int
    ino: int
    name: bytes | None
    """sun_path as bound: a leading NUL makes it abstract; None: not bound."""
    vfs: tuple[int, int] | None
    """(dev, ino) of the node a path name was bound to (the kernel's dev_t encoding)."""
    peer: int
    pending: tuple[int, ...]
    """A listener's connections not yet accepted (their inodes)."""
    rqueue: int | None
    wqueue: int | None
    shutdown: int | None
    uid: int | None


class InetDiag(NamedTuple):
    family: int
    state: int
    src: str
    sport: int
    dst: str
    dport: int
    ifindex: int
    rqueue: int
    wqueue: int
    uid: int
    ino: int
    protocol: int | None
    """INET_DIAG_PROTOCOL: what a raw socket was opened for."""
    shutdown: int | None
    v6only: bool | None


class NetlinkDiag(NamedTuple):
    type: int
    protocol: int
    state: int
    portid: int
    dst_portid: int
    dst_group: int
    ino: int
    groups: tuple[int, ...]


class PacketDiag(NamedTuple):
    type: int
    protocol: int
    """The ethertype it receives (host order; 3 is ETH_P_ALL)."""
    ino: int
    ifindex: int | None
    """The interface it is bound to (0: any), from PACKET_DIAG_INFO."""
    uid: int | None


Diag = UnixDiag | InetDiag | NetlinkDiag | PacketDiag

_UNIX_MSG = struct.Struct("=BBBBIII")
_INET_MSG = struct.Struct("=BBBB2s2s16s16sIIIIIIII")
_NETLINK_MSG = struct.Struct("=BBBBIIIIII")
_PACKET_MSG = struct.Struct("=BBHIII")
_ULONG = struct.calcsize("L")


def _address(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def _groups(value: bytes) -> tuple[int, ...]:
    # A bitmap of unsigned longs in host order: group g is bit g-1.
    words = struct.unpack(f"={len(value) // _ULONG}{'L' if _ULONG == 4 else 'Q'}", value)
    bits = _ULONG * 8
    return tuple(
        i * bits + b + 1
        for i, word in enumerate(words)
        if word
        for b in range(bits)
        if word >> b & 1
    )


def decode(buf: bytes | bytearray | memoryview, family: int, off: int, length: int) -> Diag:
    """One sock_diag reply of ``family`` (the payload at buf[off:off+length])."""
    end = off + length
    inode_at(buf, family, off, length)  # checks the length
    if family == AF_UNIX:
        # The most common reply by far (decoded once per unix socket of the tree).
        _fam, utype, state, _pad, ino, _c1, _c2 = _UNIX_MSG.unpack_from(buf, off)
        name = vfs = rqueue = wqueue = shutdown = uid = None
        peer, pending = 0, ()
        for atype, voff, vlen in _attributes(buf, off + _UNIX_MSG.size, end):
            if atype == 0:  # UNIX_DIAG_NAME
                name = bytes(buf[voff : voff + vlen])
            elif atype == 1:  # UNIX_DIAG_VFS: ino, dev
                vino, vdev = struct.unpack_from("=II", buf, voff)
                vfs = (vdev, vino)
            elif atype == 2:  # UNIX_DIAG_PEER
                (peer,) = _U32.unpack_from(buf, voff)
            elif atype == 3:  # UNIX_DIAG_ICONS
                pending = struct.unpack_from(f"={vlen // 4}I", buf, voff)
            elif atype == 4:  # UNIX_DIAG_RQLEN
                rqueue, wqueue = struct.unpack_from("=II", buf, voff)
            elif atype == 6:  # UNIX_DIAG_SHUTDOWN
                (shutdown,) = _U8.unpack_from(buf, voff)
            elif atype == 7:  # UNIX_DIAG_UID
                (uid,) = _U32.unpack_from(buf, voff)
        return UnixDiag(
            utype, state, ino, name, vfs, peer, tuple(pending), rqueue, wqueue, shutdown, uid
        )
    if family in (AF_INET, AF_INET6):
        (
            fam,
            state,
            _timer,
            _retrans,
            sport,
            dport,
            src,
            dst,
            ifindex,
            _c1,
            _c2,
            _expires,
            rqueue,
            wqueue,
            uid,
            ino,
        ) = _INET_MSG.unpack_from(buf, off)
        protocol = shutdown = v6only = None
        for atype, voff, _vlen in attributes(buf, off + _INET_MSG.size, end):
            if atype == 8:  # INET_DIAG_SHUTDOWN
                (shutdown,) = _U8.unpack_from(buf, voff)
            elif atype == 10:  # INET_DIAG_PROTOCOL
                (protocol,) = _U8.unpack_from(buf, voff)
            elif atype == 11:  # INET_DIAG_SKV6ONLY
                v6only = bool(_U8.unpack_from(buf, voff)[0])
        return InetDiag(
            fam,
            state,
            _address(fam, src),
            int.from_bytes(sport, "big"),
            _address(fam, dst),
            int.from_bytes(dport, "big"),
            ifindex,
            rqueue,
            wqueue,
            uid,
            ino,
            protocol,
            shutdown,
            v6only,
        )
    if family == AF_NETLINK:
        _fam, ntype, protocol, state, portid, dst_portid, dst_group, ino, _c1, _c2 = (
            _NETLINK_MSG.unpack_from(buf, off)
        )
        groups: tuple[int, ...] = ()
        for atype, voff, vlen in attributes(buf, off + _NETLINK_MSG.size, end):
            if atype == 1:  # NETLINK_DIAG_GROUPS
                groups = _groups(bytes(buf[voff : voff + vlen - vlen % _ULONG]))
        return NetlinkDiag(ntype, protocol, state, portid, dst_portid, dst_group, ino, groups)
    if family == AF_PACKET:
        _fam, ptype, num, ino, _c1, _c2 = _PACKET_MSG.unpack_from(buf, off)
        ifindex = puid = None
        for atype, voff, _vlen in attributes(buf, off + _PACKET_MSG.size, end):
            if atype == 0:  # PACKET_DIAG_INFO: index, version, reserve, copy_thresh, ...
                (ifindex,) = _U32.unpack_from(buf, voff)
            elif atype == 5:  # PACKET_DIAG_UID
                (puid,) = _U32.unpack_from(buf, voff)
        return PacketDiag(ptype, num, ino, ifindex, puid)  # packet_diag ntohs()es it
    raise ValueError(f"no sock_diag decoder for family {family}")
