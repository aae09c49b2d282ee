"""asyckpt's handler for sockets: unix, inet and inet6, netlink, packet, and any other
family generically.

What a socket is comes from two places, each read once per capture:

* its own open file description (``ctx.take_fd``, i.e. pidfd_getfd), while the tree is
  frozen: family, type and protocol (SO_DOMAIN, SO_TYPE, SO_PROTOCOL), peer credentials
  (SO_PEERCRED), the bound and peer addresses, and the common options (SO_REUSEADDR,
  SO_REUSEPORT, SO_KEEPALIVE, SO_RCVBUF, SO_SNDBUF, TCP_NODELAY);
* sock_diag: ``begin`` dumps every family once per network namespace of the tree (from
  inside each namespace), concurrently with the scan and while the tree is frozen; the
  replies are only indexed by inode then.  ``finish``, after the thaw, decodes the replies
  of the tree's own sockets and joins them to the records by inode: state, queues, owner,
  a unix socket's peer and pending connections, a netlink socket's groups, a packet
  socket's interface, and whether the peer is held by the tree; then names for the
  numbers (interfaces, ``ip netns`` names, netlink protocols and groups: names.py, with
  pyroute2, imported only when a record has something to name).

A socket no dump reported has its namespace asked of the socket itself (SIOCGSKNS):
one that no thread of the tree is in (the task made the socket, then moved) is dumped
then, once, and joined like the others.  A socket still not reported (one created after
the dump, possible only with ``--freeze=none``; a ping socket, which sock_diag does not
cover; a family nobody dumps: SCTP, vsock, AF_ALG...) keeps what its fd told, with
``diag`` false.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from asyckpt import CaptureSession, CaptureTree, FdFacts, HandlerContext, os_name, split_name
from asyckpt import escape_name as escape

if TYPE_CHECKING:
    from . import diag
    from .dump import Dumps, NetnsDump
    from .names import Names

# The sock_diag modules (netlink, parsing) are imported by begin and finish: `asyckpt
# show` and `asyckpt plugins` load this handler without needing them.

__all__ = ["PendingConnection", "Socket", "SocketHandler"]


class PendingConnection(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A connection waiting in an inet listener's accept queue, as the listener's side
    of it (its socket, with no file yet) says."""

    local_address: str
    local_port: int
    remote_address: str
    """The client's address."""
    remote_port: int
    state: str = "ESTABLISHED"
    """``CLOSE_WAIT`` if the client closed it meanwhile."""
    peer_ino: int | None = None
    """The client's socket, when it lives in the same network namespace."""


class Socket(
    msgspec.Struct, tag="asyckpt.socket", tag_field="kind", kw_only=True, omit_defaults=True
):
    """One socket.  Fields that do not apply to its family are left out of the image
    (they decode as their defaults)."""

    ino: int
    """The socket's inode (``socket:[ino]``)."""
    family: str
    """``unix``, ``inet``, ``inet6``, ``netlink``, ``packet``, or another family's name
    (``alg``, ``vsock``...; ``af42`` for one Python does not know)."""
    domain: int
    """The family's number (SO_DOMAIN)."""
    type: str
    """``stream``, ``dgram``, ``seqpacket``, ``raw``, ``rdm``, ``packet`` or ``typeN``."""
    protocol: int
    """SO_PROTOCOL as the kernel reports it."""
    proto: str | None = None
    """inet: ``tcp``, ``udp``, ``udplite``, ``raw``, ``icmp``; netlink: ``route``,
    ``generic``... (None: a protocol without a name here)."""

    diag: bool
    """Whether sock_diag reported the socket (the fields from it are set)."""
    diag_error: str | None = None
    """Why the dump that would have reported it failed, if it did."""
    netns: int | None = None
    """The network namespace (its inode): of the dump that reported the socket, else
    as the socket itself says (SIOCGSKNS)."""
    netns_name: str | None = None
    """Its namespace's name in /run/netns (``ip netns``), if it has one."""
    netns_name_bytes: bytes | None = None
    """That name's exact bytes, when not UTF-8 (``netns_name`` escaped)."""
    netns_outside_tree: bool = False
    """No thread of the tree is in the socket's namespace (its task moved after making
    it, or it was passed from elsewhere): that namespace was dumped for it."""
    state: str | None = None
    """The kernel's socket state: ``ESTABLISHED``, ``LISTEN``, ``CLOSE`` (unconnected)...
    (the table shows ``CLOSE`` as ``UNCONN``, as ss does)."""
    state_number: int | None = None
    """The state's number as sock_diag gives it (``TCP_ESTABLISHED`` 1 ... ``TCP_CLOSE``
    7, ``TCP_LISTEN`` 10), also for a family that reuses those states."""
    recv_queue: int | None = None
    """Bytes waiting to be read (unix dgram: the first datagram's length); for a
    listener, the connections waiting to be accepted."""
    send_queue: int | None = None
    """Bytes sent and not yet acknowledged / consumed (unix: memory the socket's queued
    writes use); for a listener, its backlog."""
    owner_uid: int | None = None
    shutdown: str | None = None
    """``read``, ``write`` or ``both``: what shutdown(2) closed; None: nothing."""
    accept_queue: int | None = None
    """A listener (unix, tcp): connections waiting to be accepted."""
    backlog: int | None = None
    """A listener (unix, tcp): how many may wait (listen(2)'s backlog)."""

    # unix
    name: str | None = None
    """The bound name: a path, or for an abstract one ``@`` and the name.  A name that
    is not UTF-8 (or, abstract, holds a NUL after its first) is escaped instead
    (``asyckpt.split_name``), its exact bytes in ``name_bytes``."""
    name_bytes: bytes | None = None
    """The name's exact bytes (an abstract one's with its leading NUL), when ``name``
    is not them; None otherwise."""
    abstract: bool = False
    name_state: str | None = None
    """A path name: ``ok`` (the path leads to the node it was bound to), ``unlinked``
    (nothing there any more), ``replaced`` (another file there); None: not a path, or
    not resolvable (relative, no holder)."""
    peer_ino: int | None = None
    """The inode of the socket at the other end (unix: as sock_diag says; inet: the
    socket of the same namespace whose addresses mirror this one's)."""
    peer_in_tree: bool | None = None
    """Whether a task of the tree holds the peer (for a connection not accepted yet: the
    listener it waits on); None without a peer."""
    peer_queued_on: int | None = None
    """A unix client whose connection is not accepted yet: the inode of the listener it
    waits on (its peer has no file yet, and sock_diag reports no peer inode)."""
    pending: list[int] = []
    """A listener: the inodes of the clients whose connections wait to be accepted
    (tcp: those in the listener's namespace)."""
    pending_connections: list[PendingConnection] = []
    """An inet listener: each connection waiting in its accept queue (addresses, state,
    the client's inode when known)."""
    peer_pid: int | None = None
    """SO_PEERCRED: the process that connected, called socketpair(2) or listen(2)."""
    peer_uid: int | None = None
    peer_gid: int | None = None

    # inet, inet6
    local_address: str | None = None
    local_port: int | None = None
    remote_address: str | None = None
    remote_port: int | None = None
    reuseaddr: bool | None = None
    reuseport: bool | None = None
    keepalive: bool | None = None
    rcvbuf: int | None = None
    sndbuf: int | None = None
    nodelay: bool | None = None
    """TCP_NODELAY (tcp only)."""

    # netlink
    port_id: int | None = None
    dst_port_id: int | None = None
    dst_group: int | None = None
    groups: list[int] = []
    """The multicast groups it joined (group numbers from 1)."""
    group_names: list[str | None] = []
    """Each group's name, in the order of ``groups`` (route: ``link``; generic:
    ``family:group``); None where unknown.  Empty when no group has a name."""

    # packet; inet bound to a device
    interface: str | None = None
    """The interface it is bound to (packet; inet: SO_BINDTODEVICE), as named in its
    namespace; None: every one, or unnamed (the interface is gone)."""
    interface_bytes: bytes | None = None
    """The interface name's exact bytes, when not UTF-8 (``interface`` escaped)."""
    ifindex: int | None = None
    ethertype: int | None = None
    """The protocol it receives (3 is ETH_P_ALL)."""


_TYPES = {1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket", 6: "dccp", 10: "packet"}
_FAMILIES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet"}
_SHUTDOWN = {1: "read", 2: "write", 3: "both"}
_TCP_CLOSE = 7
"""The state of a socket that is not connected (ss: ``UNCONN``)."""
_UCRED = struct.Struct("=iII")
_NO_UID = 0xFFFFFFFF

SOL_SOCKET = socket.SOL_SOCKET
_INET_OPTIONS = (
    ("reuseaddr", socket.SO_REUSEADDR),
    ("reuseport", socket.SO_REUSEPORT),
    ("keepalive", socket.SO_KEEPALIVE),
)


def _dumped(domain: int, proto: str | None) -> bool:
    """Whether the dumps report sockets of this family (and inet protocol)."""
    if domain in (socket.AF_INET, socket.AF_INET6):
        return proto in ("tcp", "udp", "udplite", "raw")
    return domain in (socket.AF_UNIX, socket.AF_NETLINK, socket.AF_PACKET)


def family_name(domain: int) -> str:
    if domain in _FAMILIES:
        return _FAMILIES[domain]
    try:
        return socket.AddressFamily(domain).name.removeprefix("AF_").lower()
    except ValueError:
        return f"af{domain}"


def _inet_proto(stype: int, protocol: int) -> str | None:
    if stype == socket.SOCK_RAW:
        return "raw"
    if protocol in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) and stype == socket.SOCK_DGRAM:
        return "icmp"
    return {6: "tcp", 17: "udp", 136: "udplite"}.get(protocol)


def unix_name(raw: bytes) -> tuple[str | None, bytes | None, bool]:
    """(name, name_bytes, abstract) of a unix socket's sun_path as sock_diag gives it:
    the names are bytes, kept exactly (``Socket.name``)."""
    if raw[:1] == b"\0":
        text, exact = split_name(raw[1:].decode("utf-8", "surrogateescape"))
        if exact is None and "\0" not in text:
            return "@" + text, None, True
        return escape(raw), raw, True
    path = raw.split(b"\0", 1)[0]
    if not path:
        return None, None, False
    text, exact = split_name(path.decode("utf-8", "surrogateescape"))
    return text, exact, False


class SocketHandler:
    """Every socket: what its fd tells while frozen, joined with sock_diag by inode."""

    name: ClassVar[str] = "sockets"
    kinds: ClassVar[frozenset[str]] = frozenset({"socket"})
    record_type: ClassVar[type[msgspec.Struct]] = Socket

    def __init__(self) -> None:
        # Each capture's dumps, dropped with its session.
        self._by_session: weakref.WeakKeyDictionary[CaptureSession, Dumps] = (
            weakref.WeakKeyDictionary()
        )

    def begin(self, session: CaptureSession) -> Dumps:
        """One dump per family per network namespace of the tree, indexed by inode."""
        from .dump import dump_namespaces

        return dump_namespaces(session.tids)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Socket:
        fd = ctx.take_fd(facts.fd)
        # Most sockets are unix ones: a socket object of that family reads the options;
        # another family gets one of its own, for its addresses.  (Letting Python detect
        # the family costs more, and makes enums.)  The bare _socket type: socket.socket's
        # __init__ and detach are Python calls, made once per socket while frozen.
        sock = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
        try:
            domain = sock.getsockopt(SOL_SOCKET, socket.SO_DOMAIN)
            stype = sock.getsockopt(SOL_SOCKET, socket.SO_TYPE)
            protocol = sock.getsockopt(SOL_SOCKET, socket.SO_PROTOCOL)
            if domain != socket.AF_UNIX:
                sock.detach()
                sock = _socket.socket(domain, stype, protocol, fd)
            record = _from_fd(sock, facts.st.st_ino, domain, stype, protocol)
        finally:
            sock.detach()  # the fd is ctx's to close
        dumps = self._dumps(ctx)
        if dumps is None:  # no capture, or begin failed: finish says why
            return record
        if domain == socket.AF_UNIX:
            dumps.holders[record.ino] = facts.pid
        if not dumps.has(record.ino):
            # Not in the dumps of the tree's namespaces: ask the socket for its own.
            record.netns = dumps.netns_of(fd, _dumped(domain, record.proto))
        return record

    def _dumps(self, ctx: HandlerContext) -> Dumps | None:
        """This capture's dumps (waiting for begin), or None.  Kept per session: asking
        ``ctx.state`` takes a lock, and this is asked once per socket while frozen."""
        try:
            session = ctx.session
        except LookupError:
            return None
        dumps: Dumps | None = self._by_session.get(session)
        if dumps is None:
            try:
                dumps = ctx.state
            except Exception:
                return None
            self._by_session[session] = dumps
        return dumps

    def finish(self, record: Socket, tree: CaptureTree) -> Socket:
        try:
            dumps: Dumps = tree.state
        except Exception as exc:  # begin failed: keep what the fd told
            record.diag_error = str(exc)
            return record
        found = dumps.find(record.ino)
        dump = None
        if found is not None:
            dump, entry = found
            _join(record, entry.what, entry.decode(), dump, dumps)
        else:
            errors = [
                f"{what}: {why}"
                for d in dumps.netns.values()
                for what, why in d.errors.items()
                if what.startswith(record.proto or record.family)
            ] + [f"netns {ns}: {why}" for ns, why in dumps.failed.items()]
            if errors:
                record.diag_error = "; ".join(errors)
        if record.netns is not None:
            record.netns_outside_tree = record.netns in dumps.adopted
        _name(record, dump, dumps.names)
        if record.peer_ino:
            record.peer_in_tree = tree.holds("socket", record.peer_ino)
        elif record.family == "unix" and record.state == "ESTABLISHED":
            # Connected but not accepted yet: the other end is a socket with no file yet
            # (sock_diag reports peer 0), queued on a listener that lists this client.
            record.peer_queued_on = dumps.queued_on(record.ino)
        if record.peer_queued_on is not None:
            record.peer_in_tree = tree.holds("socket", record.peer_queued_on)
        return record

    def render_text(self, record: Socket) -> str:
        return "[" + ", ".join(_describe(record)) + "]"

    def render_json(self, record: Socket) -> dict[str, Any]:
        # Bytes stay bytes: the JSON export shows names (``name_bytes``) by its rule.
        out: dict[str, Any] = msgspec.to_builtins(record, builtin_types=(bytes,))
        return out


def _from_fd(sock: _socket.socket, ino: int, domain: int, stype: int, protocol: int) -> Socket:
    family = family_name(domain)
    record = Socket(
        diag=False,
        ino=ino,
        family=family,
        domain=domain,
        type=_TYPES.get(stype, f"type{stype}"),
        protocol=protocol,
    )
    if domain == socket.AF_UNIX:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if pid or uid != _NO_UID:
            record.peer_pid, record.peer_uid, record.peer_gid = pid, uid, gid
    elif domain in (socket.AF_INET, socket.AF_INET6):
        record.proto = _inet_proto(stype, protocol)
        for attr, opt in _INET_OPTIONS:
            setattr(record, attr, bool(sock.getsockopt(SOL_SOCKET, opt)))
        record.rcvbuf = sock.getsockopt(SOL_SOCKET, socket.SO_RCVBUF)
        record.sndbuf = sock.getsockopt(SOL_SOCKET, socket.SO_SNDBUF)
        if record.proto == "tcp":
            record.nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        local = sock.getsockname()
        record.local_address, record.local_port = local[0], local[1]
        try:
            remote = sock.getpeername()
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
        else:
            record.remote_address, record.remote_port = remote[0], remote[1]
    elif domain == socket.AF_NETLINK:
        port_id, groups = sock.getsockname()
        record.port_id = port_id
        record.groups = [b + 1 for b in range(32) if groups >> b & 1]
    elif domain == socket.AF_PACKET:
        record.ethertype = int.from_bytes(protocol.to_bytes(2, "little"), "big")
    return record


def _join(record: Socket, what: str, entry: diag.Diag, dump: NetnsDump, dumps: Dumps) -> None:
    """Add what sock_diag said about the socket to what its fd told."""
    diag = dumps.diag  # the module, imported by begin
    record.diag = True
    record.netns = dump.netns
    if isinstance(entry, diag.UnixDiag):
        record.state_number = entry.state
        record.state = diag.TCP_STATES.get(entry.state, str(entry.state))
        if entry.name is not None:
            record.name, record.name_bytes, record.abstract = unix_name(entry.name)
            if entry.vfs is not None and record.name and not record.abstract:
                path = os_name(record.name, record.name_bytes)
                record.name_state = _name_state(path, entry.vfs, dumps, record.ino)
        record.peer_ino = entry.peer or None
        record.pending = list(entry.pending)
        record.recv_queue, record.send_queue = entry.rqueue, entry.wqueue
        if entry.state == 10:
            record.accept_queue, record.backlog = entry.rqueue, entry.wqueue
        record.shutdown = _SHUTDOWN.get(entry.shutdown or 0)
        record.owner_uid = entry.uid
    elif isinstance(entry, diag.InetDiag):
        record.state_number = entry.state
        record.state = diag.TCP_STATES.get(entry.state, str(entry.state))
        record.recv_queue, record.send_queue = entry.rqueue, entry.wqueue
        record.owner_uid = entry.uid
        record.shutdown = _SHUTDOWN.get(entry.shutdown or 0)
        if entry.state == 10:
            record.accept_queue, record.backlog = entry.rqueue, entry.wqueue
            for conn in dumps.inet_pending(dump, record.ino):
                client = dumps.inet_client(dump, what, conn)
                record.pending_connections.append(
                    PendingConnection(
                        local_address=conn.src,
                        local_port=conn.sport,
                        remote_address=conn.dst,
                        remote_port=conn.dport,
                        state=diag.TCP_STATES.get(conn.state, str(conn.state)),
                        peer_ino=client or None,
                    )
                )
                if client:
                    record.pending.append(client)
        else:
            record.peer_ino = dumps.inet_peer(dump, what, entry) or None
            if record.peer_ino is None and entry.state == 1:
                record.peer_queued_on = dumps.inet_queued_on(dump, what, entry)
        if entry.ifindex:  # SO_BINDTODEVICE
            record.ifindex = entry.ifindex
    elif isinstance(entry, diag.NetlinkDiag):
        record.state_number = entry.state
        record.state = diag.TCP_STATES.get(entry.state, str(entry.state))
        record.port_id = entry.portid
        record.dst_port_id = entry.dst_portid
        record.dst_group = entry.dst_group
        record.groups = list(entry.groups)
    elif isinstance(entry, diag.PacketDiag):
        record.ethertype = entry.protocol
        record.ifindex = entry.ifindex
        record.owner_uid = entry.uid


def _name(record: Socket, dump: NetnsDump | None, names: Names) -> None:
    """Names for the record's numbers, where it has any to name (pyroute2 is imported
    by the first that needs it)."""
    if record.ifindex and dump is not None:
        ifname = names.interface(dump, record.ifindex)
        if ifname is not None:  # a name is bytes, chosen by whoever made the interface
            record.interface, record.interface_bytes = split_name(ifname)
    if record.netns is not None:
        netns_name = names.netns(record.netns)
        if netns_name is not None:
            record.netns_name, record.netns_name_bytes = split_name(netns_name)
    if record.family == "netlink":
        record.proto = names.netlink_protocol(record.protocol)
        if record.groups:
            group_names = names.netlink_groups(dump, record.protocol, record.groups)
            record.group_names = group_names if any(group_names) else []


def _name_state(name: str, vfs: tuple[int, int], dumps: Dumps, ino: int) -> str | None:
    """Whether ``name`` still leads to the node the socket was bound to, looked up as
    a process of the tree holding it sees the file system (through /proc/PID/root)."""
    pid = dumps.holders.get(ino)
    if pid is None or not name.startswith("/"):
        return None  # a relative name was resolved in a working directory long gone
    # A listener's accepted sockets all carry its name: one lookup for them all.
    key = (pid, name, vfs)
    if key in dumps.name_states:
        return dumps.name_states[key]
    state: str | None
    try:
        st = os.lstat(f"/proc/{pid}/root{name}")
    except (FileNotFoundError, NotADirectoryError):
        state = dumps.diag.name_state(vfs, None)
    except OSError:
        state = None
    else:
        state = dumps.diag.name_state(vfs, (st.st_dev, st.st_ino))
    dumps.name_states[key] = state
    return state


def _shown_name(r: Socket) -> str:
    """The bound name as the kernel has it (an abstract one after its ``@``): show
    escapes every line it prints, once."""
    assert r.name is not None
    if r.name_bytes is None:
        return r.name
    if r.abstract:
        return "@" + os_name("", r.name_bytes[1:])
    return os_name(r.name, r.name_bytes)


def endpoint_text(address: str, port: int | None) -> str:
    """``address:port``, an IPv6 address in brackets (``[::1]:41460``), as lsof and ss
    print them: its own colons would make the port ambiguous."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _interface(r: Socket) -> str | None:
    # As the kernel names it: show escapes every line it prints, once.
    if r.interface:
        return os_name(r.interface, r.interface_bytes)
    return f"if{r.ifindex}" if r.ifindex else None


def _groups(r: Socket) -> str:
    names = r.group_names or [None] * len(r.groups)
    return ",".join(n or str(g) for g, n in zip(r.groups, names, strict=False))


def _describe(r: Socket) -> list[str]:
    words = [" ".join(filter(None, [r.proto or r.family, r.type if not r.proto else None]))]
    if r.family in ("inet", "inet6") and r.proto:
        words[0] = f"{r.proto}{'6' if r.family == 'inet6' else ''}"
    if r.state:
        words[0] += f" {'UNCONN' if r.state_number == _TCP_CLOSE else r.state}"
    if r.name:
        words.append(
            f"name {_shown_name(r)}"
            + (f" ({r.name_state})" if r.name_state not in (None, "ok") else "")
        )
    if r.local_address is not None:
        local = endpoint_text(r.local_address, r.local_port)
        remote = f" -> {endpoint_text(r.remote_address, r.remote_port)}" if r.remote_address else ""
        words.append(local + remote)
    if r.port_id is not None:
        words.append(f"port {r.port_id}" + (f" groups {_groups(r)}" if r.groups else ""))
    if r.family == "packet":
        words.append(f"if {_interface(r) or 'any'} proto 0x{r.ethertype or 0:04x}")
    elif r.ifindex:
        words.append(f"bound to {_interface(r)}")
    if r.peer_ino:
        where = "in the tree" if r.peer_in_tree else "outside the tree"
        words.append(f"peer socket:[{r.peer_ino}] {where}")
    elif r.peer_queued_on:
        where = "in the tree" if r.peer_in_tree else "outside the tree"
        words.append(f"not accepted yet by listener socket:[{r.peer_queued_on}] {where}")
    if r.pending or r.pending_connections:
        words.append(f"{max(len(r.pending), len(r.pending_connections))} pending")
    if r.recv_queue is not None:
        words.append(f"rq {r.recv_queue} sq {r.send_queue}")
    if r.shutdown:
        words.append(f"shut {r.shutdown}")
    if r.peer_pid:
        words.append(f"peer pid {r.peer_pid} uid {r.peer_uid}")
    if r.netns_outside_tree or r.netns_name:
        where = " (no task of the tree in it)" if r.netns_outside_tree else ""
        netns = os_name(r.netns_name, r.netns_name_bytes) if r.netns_name else r.netns
        words.append(f"netns {netns}{where}")
    if not r.diag:
        words.append("no sock_diag")
    return words
