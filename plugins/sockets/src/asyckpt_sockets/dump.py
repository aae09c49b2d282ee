"""The sock_diag dumps of one capture: one per family (and inet protocol) per network
namespace, each taken inside its namespace, indexed by socket inode.

A netlink socket belongs to the network namespace of the thread that creates it, so a
namespace other than ours is dumped from a short-lived thread that ``setns(2)``es into it
(namespaces are per thread; the capture's own threads never change theirs).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import ipaddress
import os
import socket
import struct
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from . import diag
from .names import Names

__all__ = ["Dumps", "NetnsDump", "dump_namespaces", "dump_netns", "in_netns"]

CLONE_NEWNET = 0x40000000
SIOCGSKNS = 0x894C
"""ioctl: a descriptor of the network namespace a socket lives in (Linux 4.9)."""
RECV_SIZE = 1 << 16
"""Bigger than any skb a dump sends (the kernel caps them at 32 KiB)."""


def _inet(family: int, protocol: int) -> Callable[[int], bytes]:
    return lambda seq: diag.inet_request(family, protocol, seq)


REQUESTS: tuple[tuple[str, int, Callable[[int], bytes]], ...] = (
    ("unix", diag.AF_UNIX, diag.unix_request),
    *(
        (name + suffix, family, _inet(family, protocol))
        for family, suffix in ((diag.AF_INET, ""), (diag.AF_INET6, "6"))
        for protocol, name in diag.INET_PROTOCOLS.items()
    ),
    ("netlink", diag.AF_NETLINK, diag.netlink_request),
    ("packet", diag.AF_PACKET, diag.packet_request),
)
"""(name, family, request) of every dump taken in each namespace."""

_HDR = struct.Struct("=IHHII")
_U32 = struct.Struct("=I")

_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


class Entry(NamedTuple):
    """Where one socket's reply is: decode it with ``diag.decode(buf, family, off, len)``."""

    what: str
    """The dump it came from: unix, tcp, tcp6, udp, ..., netlink, packet."""
    family: int
    buf: bytes
    off: int
    len: int

    def decode(self) -> diag.Diag:
        return diag.decode(self.buf, self.family, self.off, self.len)


class NetnsDump:
    """Every socket one network namespace's dumps reported, by inode.

    The replies are kept as received: walking them (one unpack per socket) waits for the
    first use of :attr:`by_ino`, after the thaw, so that the frozen window pays only for
    the kernel's side of the dumps.
    """

    def __init__(
        self,
        netns: int,
        replies: list[tuple[str, int, list[bytes]]],
        errors: dict[str, str],
        ns_fd: int | None = None,
    ) -> None:
        self.netns = netns
        self.ns_fd = ns_fd
        """A descriptor of the namespace, for naming its interfaces and groups after the
        thaw (names.py), when a task of the tree may have left it; closed with this
        object.  None: the namespace is that of the capture's threads."""
        if ns_fd is not None:
            weakref.finalize(self, os.close, ns_fd)
        self._replies = replies
        self._errors = errors
        self._by_ino: dict[int, Entry] | None = None
        self._orphans: list[Entry] = []
        self._lock = threading.Lock()

    @property
    def by_ino(self) -> dict[int, Entry]:
        """Where each socket's reply is, by inode."""
        if self._by_ino is None:
            # Built once, whichever thread asks first (the capture's resolver threads
            # may ask together); the others wait for it.
            with self._lock:
                if self._by_ino is None:
                    by_ino: dict[int, Entry] = {}
                    for what, family, bufs in self._replies:
                        try:
                            _index(what, family, bufs, by_ino, self._orphans)
                        except (OSError, ValueError) as exc:
                            # ENOENT: no diag module for it (raw_diag, say); the sockets
                            # it would have reported keep what their fds tell.
                            self._errors[what] = _why(exc)
                    self._replies = []
                    self._by_ino = by_ino
        return self._by_ino

    @property
    def orphans(self) -> list[Entry]:
        """The inet replies of sockets without an inode: connections waiting in a
        listener's accept queue (no file yet), and sockets whose files were closed."""
        _ = self.by_ino
        return self._orphans

    @property
    def errors(self) -> dict[str, str]:
        """Dumps the kernel refused, by name (``raw6``: no diag module for it, ...)."""
        _ = self.by_ino
        return self._errors


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _receive(sock: socket.socket, request: bytes) -> list[bytes]:
    """Send one dump request and receive the whole reply, without reading it.

    A netlink dump is driven by its reader: the kernel fills the next buffer of replies
    during each recv, once the socket's queue is drained.  So after a blocking recv of
    the first buffer, non-blocking recvs return the rest, and EAGAIN means the dump has
    ended (:func:`_index` checks, after the thaw, that its last message says so).
    """
    sock.send(request)
    bufs = [sock.recv(RECV_SIZE)]
    while True:
        try:
            buf = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return bufs
        if not buf:
            return bufs
        bufs.append(buf)


def _index(
    what: str,
    family: int,
    bufs: list[bytes],
    by_ino: dict[int, Entry],
    orphans: list[Entry] | None = None,
) -> None:
    """Index the replies of one dump by socket inode, and add the inet ones without an
    inode to ``orphans``; raises if the dump failed or did not end."""
    off_ino = diag.INODE_OFFSET[family]
    hdr_size = _HDR.size
    unpack_hdr, unpack_u32 = _HDR.unpack_from, _U32.unpack_from
    new_entry = tuple.__new__  # Entry(...) without the Python-level __new__, per socket
    for buf in bufs:
        off, end = 0, len(buf)
        while off + hdr_size <= end:
            length, mtype, _flags, _seq, _pid = unpack_hdr(buf, off)
            if length < hdr_size or off + length > end:
                raise ValueError(f"sock_diag: a reply of {length} bytes runs past its buffer")
            if mtype == diag.SOCK_DIAG_BY_FAMILY:
                ino = unpack_u32(buf, off + hdr_size + off_ino)[0]
                if ino:
                    by_ino[ino] = new_entry(
                        Entry, (what, family, buf, off + hdr_size, length - hdr_size)
                    )
                elif orphans is not None and family != diag.AF_UNIX:
                    orphans.append(Entry(what, family, buf, off + hdr_size, length - hdr_size))
            elif diag.check_end(buf, mtype, off + hdr_size, length - hdr_size):
                return
            off += (length + 3) & ~3
    raise OSError(errno.EIO, "the dump ended without NLMSG_DONE")


def dump_netns(netns: int, *, own: bool = False) -> NetnsDump:
    """Take every dump in the calling thread's network namespace (whose inode is
    ``netns``; ``own``: the capture's own, which needs no descriptor kept)."""
    replies: list[tuple[str, int, list[bytes]]] = []
    errors: dict[str, str] = {}
    ns_fd = None if own else os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, diag.NETLINK_SOCK_DIAG) as sock:
            for seq, (what, family, request) in enumerate(REQUESTS, 1):
                try:
                    bufs = _receive(sock, request(seq))
                except OSError as exc:
                    errors[what] = _why(exc)
                    continue
                replies.append((what, family, bufs))
    except BaseException:
        if ns_fd is not None:
            os.close(ns_fd)
        raise
    return NetnsDump(netns, replies, errors, ns_fd)


def in_netns(ns: str | int, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread that first joins the network namespace ``ns``
    (``/proc/TID/ns/net``, or a descriptor of it); the caller's namespace never
    changes."""
    fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC) if isinstance(ns, str) else ns
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    try:
        thread = threading.Thread(target=run, name="asyckpt-sockets-netns", daemon=True)
        thread.start()
        thread.join()
    finally:
        if isinstance(ns, str):
            os.close(fd)
    if "error" in out:
        raise out["error"]
    value: T = out["value"]
    return value


def _netns_of(tid: int) -> int | None:
    try:
        return os.stat(f"/proc/{tid}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited (only possible when the tree is not frozen)


class Dumps:
    """All the dumps of one capture: the namespaces of the tree's threads, each once,
    and any namespace one of the tree's sockets lives in although no thread of the tree
    is in it (see :meth:`netns_of`)."""

    def __init__(self, dumps: Iterable[NetnsDump], failed: dict[int, str]) -> None:
        self.diag = diag
        """The sock_diag decoders (finish uses them; its module does not import them)."""
        self.netns = {d.netns: d for d in dumps}
        """By namespace inode.  Replaced, never changed in place, when a namespace is
        added: the capture's threads read it without the lock."""
        self._indexes = [d.by_ino for d in self.netns.values()]
        self.failed = failed
        """Namespaces that could not be dumped at all, with why."""
        self._names: Names | None = None
        self.adopted: set[int] = set()
        """Namespaces no thread of the tree is in, dumped for a socket living there."""
        self.holders: dict[int, int] = {}
        """A unix socket's inode -> a process of the tree holding it (whose root its
        path name is resolved in)."""
        self.name_states: dict[tuple[int, str, tuple[int, int]], str | None] = {}
        """(holder, path name, UNIX_DIAG_VFS) -> name_state, looked up once each."""
        self._lock = threading.Lock()
        self._tuples: dict[int, dict[tuple[Any, ...], int]] = {}
        self._queued: dict[int, int] | None = None
        self._pending: dict[int, tuple[dict[int, list[diag.InetDiag]], dict[Any, int]]] = {}

    @property
    def names(self) -> Names:
        """Names for the numbers of this capture's records (after the thaw only)."""
        if self._names is None:
            with self._lock:
                if self._names is None:
                    self._names = Names()
        return self._names

    def has(self, ino: int) -> bool:
        """Whether some dump of the capture reported the socket ``ino``."""
        # Asked once per socket while frozen: a plain loop, not any() over a generator.
        for index in self._indexes:  # noqa: SIM110
            if ino in index:
                return True
        return False

    def netns_of(self, fd: int, dumped: bool) -> int | None:
        """The network namespace (its inode) of the socket ``fd``: SIOCGSKNS on the
        socket itself.  A namespace the capture has not dumped yet (no thread of the
        tree is in it: the socket was made before its task moved, or was passed from
        another namespace) is dumped now, once, when ``dumped`` says the socket's kind
        is one the dumps report.  None if the kernel does not say (EPERM without
        CAP_NET_ADMIN over the namespace)."""
        try:
            nsfd = fcntl.ioctl(fd, SIOCGSKNS)
        except OSError:
            return None
        try:
            ns = os.fstat(nsfd).st_ino
            if dumped and ns not in self.netns and ns not in self.failed:
                with self._lock:
                    if ns not in self.netns and ns not in self.failed:
                        try:
                            found = in_netns(nsfd, functools.partial(dump_netns, ns))
                            _ = found.by_ino
                        except OSError as exc:
                            self.failed[ns] = f"{type(exc).__name__}: {exc}"
                        else:
                            self.adopted.add(ns)
                            self.netns = {**self.netns, ns: found}
                            self._indexes = [*self._indexes, found.by_ino]
            return ns
        finally:
            os.close(nsfd)

    def find(self, ino: int) -> tuple[NetnsDump, Entry] | None:
        """The reply for the socket ``ino`` and the namespace whose dump held it."""
        for dump in self.netns.values():
            entry = dump.by_ino.get(ino)
            if entry is not None:
                return dump, entry
        return None

    def queued_on(self, ino: int) -> int | None:
        """The unix listener on which the client ``ino``'s connection waits to be
        accepted (UNIX_DIAG_ICONS lists the clients of a listener's queue)."""
        if self._queued is None:
            self._queued = {}
            for dump in self.netns.values():
                for listener, e in dump.by_ino.items():
                    # Only listeners have pending connections: their state byte says so
                    # without decoding every unix socket.
                    if e.family == diag.AF_UNIX and e.buf[e.off + 2] == 10:
                        d = e.decode()
                        assert isinstance(d, diag.UnixDiag)
                        self._queued.update(dict.fromkeys(d.pending, listener))
        return self._queued.get(ino)

    def _inet_tuples(self, dump: NetnsDump) -> dict[tuple[Any, ...], int]:
        """(dump, src, sport, dst, dport) -> inode of every connected inet socket of
        the namespace."""
        table = self._tuples.get(dump.netns)
        if table is None:
            table = self._tuples[dump.netns] = {}
            for ino, e in dump.by_ino.items():
                if e.family in (diag.AF_INET, diag.AF_INET6):
                    d = e.decode()
                    assert isinstance(d, diag.InetDiag)
                    if d.dport and d.state != 10:
                        table[(e.what, d.src, d.sport, d.dst, d.dport)] = ino
        return table

    def inet_peer(self, dump: NetnsDump, what: str, entry: diag.InetDiag) -> int:
        """The inode of the socket at the other end of a connection within the same
        namespace (a TCP pair on loopback, say), or 0."""
        if entry.dport == 0 or entry.state == 10:
            return 0
        key = (what, entry.dst, entry.dport, entry.src, entry.sport)
        return self._inet_tuples(dump).get(key, 0)

    def _accept_queues(
        self, dump: NetnsDump
    ) -> tuple[dict[int, list[diag.InetDiag]], dict[Any, int]]:
        """The connections waiting in each inet listener's accept queue (by the
        listener's inode), and the listener each waits on (by the client's own tuple).

        A connection the handshake completed but nobody accepted yet is a socket of its
        own, with no file (so inode 0), on the listener's address and port: it is
        matched with the listener of the same dump, port and address, an exact address
        before a wildcard one.  Several equally good listeners (SO_REUSEPORT) leave it
        unmatched: the kernel does not say which queue holds it.
        """
        found = self._pending.get(dump.netns)
        if found is not None:
            return found
        listeners: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for ino, e in dump.by_ino.items():
            # Only listeners: their state byte says so without decoding every socket.
            if e.family in (diag.AF_INET, diag.AF_INET6) and e.buf[e.off + 1] == 10:
                d = e.decode()
                assert isinstance(d, diag.InetDiag)
                listeners.setdefault((e.what, d.sport), []).append((d.src, ino))
        queues: dict[int, list[diag.InetDiag]] = {}
        waiting: dict[Any, int] = {}
        for e in dump.orphans:
            d = e.decode()
            assert isinstance(d, diag.InetDiag)
            if d.state not in (1, 8):  # ESTABLISHED, CLOSE_WAIT (the client closed)
                continue
            candidates = listeners.get((e.what, d.sport), [])
            best = [ino for src, ino in candidates if src == d.src] or [
                ino for src, ino in candidates if ipaddress.ip_address(src).is_unspecified
            ]
            if len(best) == 1:
                queues.setdefault(best[0], []).append(d)
                waiting[(e.what, d.dst, d.dport, d.src, d.sport)] = best[0]
        found = self._pending[dump.netns] = (queues, waiting)
        return found

    def inet_pending(self, dump: NetnsDump, ino: int) -> list[diag.InetDiag]:
        """The connections waiting in the accept queue of the inet listener ``ino``."""
        return self._accept_queues(dump)[0].get(ino, [])

    def inet_client(self, dump: NetnsDump, what: str, conn: diag.InetDiag) -> int:
        """The inode of the socket of the namespace that made the pending connection
        ``conn`` (seen from the listener's side), or 0: a client elsewhere."""
        return self._inet_tuples(dump).get((what, conn.dst, conn.dport, conn.src, conn.sport), 0)

    def inet_queued_on(self, dump: NetnsDump, what: str, entry: diag.InetDiag) -> int | None:
        """The inet listener on whose accept queue the client ``entry``'s connection
        waits (in the same namespace)."""
        key = (what, entry.src, entry.sport, entry.dst, entry.dport)
        return self._accept_queues(dump)[1].get(key)


def dump_namespaces(tids: Iterable[int]) -> Dumps:
    """Dump every network namespace the threads ``tids`` are in, each from inside it."""
    first: dict[int, int] = {}
    for tid in tids:
        ns = _netns_of(tid)
        if ns is not None:
            first.setdefault(ns, tid)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    dumps, failed = [], {}
    for ns, tid in first.items():
        try:
            if ns == own:
                dumps.append(dump_netns(ns, own=True))
            else:
                dumps.append(in_netns(f"/proc/{tid}/ns/net", functools.partial(dump_netns, ns)))
        except OSError as exc:
            failed[ns] = f"{type(exc).__name__}: {exc}"
    # Indexed here, in begin's thread and concurrently with the scan: capture asks
    # whether each socket was reported (one that was not may live in a namespace no
    # thread of the tree is in).
    for d in dumps:
        _ = d.by_ino
    return Dumps(dumps, failed)
