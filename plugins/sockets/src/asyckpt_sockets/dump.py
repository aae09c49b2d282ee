"""The sock_diag dumps of one capture: one per family (and inet protocol) per network
namespace, each taken inside its namespace, indexed by socket inode.

A netlink socket belongs to the network namespace of the thread that creates it, so a
namespace other than ours is dumped from a short-lived thread that ``setns(2)``es into it
(namespaces are per thread; the capture's own threads never change theirs).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from . import diag

__all__ = ["Dumps", "NetnsDump", "dump_namespaces", "dump_netns", "in_netns"]

CLONE_NEWNET = 0x40000000
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
        ifnames: dict[int, str],
    ) -> None:
        self.netns = netns
        self.ifnames = ifnames
        """Interface names of the namespace, when it has packet sockets."""
        self._replies = replies
        self._errors = errors
        self._by_ino: dict[int, Entry] | None = None

    @property
    def by_ino(self) -> dict[int, Entry]:
        """Where each socket's reply is, by inode."""
        if self._by_ino is None:
            self._by_ino = {}
            for what, family, bufs in self._replies:
                try:
                    _index(what, family, bufs, self._by_ino)
                except (OSError, ValueError) as exc:
                    # ENOENT: no diag module for it (raw_diag, say); the sockets it would
                    # have reported keep what their fds tell.
                    self._errors[what] = _why(exc)
            self._replies = []
        return self._by_ino

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


def _index(what: str, family: int, bufs: list[bytes], by_ino: dict[int, Entry]) -> None:
    """Index the replies of one dump by socket inode; raises if the dump failed or did
    not end."""
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
            elif diag.check_end(buf, mtype, off + hdr_size, length - hdr_size):
                return
            off += (length + 3) & ~3
    raise OSError(errno.EIO, "the dump ended without NLMSG_DONE")


def dump_netns(netns: int) -> NetnsDump:
    """Take every dump in the calling thread's network namespace (whose inode is
    ``netns``)."""
    replies: list[tuple[str, int, list[bytes]]] = []
    errors: dict[str, str] = {}
    ifnames: dict[int, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, diag.NETLINK_SOCK_DIAG) as sock:
        for seq, (what, family, request) in enumerate(REQUESTS, 1):
            try:
                bufs = _receive(sock, request(seq))
            except OSError as exc:
                errors[what] = _why(exc)
                continue
            replies.append((what, family, bufs))
            # Interface numbers mean something only in their namespace: name them here,
            # if there is a packet socket (an empty dump is a lone 20-byte NLMSG_DONE).
            if family == diag.AF_PACKET and sum(map(len, bufs)) > 20:
                ifnames = dict(socket.if_nameindex())
    return NetnsDump(netns, replies, errors, ifnames)


def in_netns(ns_path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread that first joins the network namespace ``ns_path``
    (``/proc/TID/ns/net``); the caller's namespace never changes."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {ns_path}: {os.strerror(err)}")
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    try:
        thread = threading.Thread(target=run, name="asyckpt-sockets-netns", daemon=True)
        thread.start()
        thread.join()
    finally:
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
    """All the dumps of one capture: the namespaces of the tree's threads, each once."""

    def __init__(self, dumps: Iterable[NetnsDump], failed: dict[int, str]) -> None:
        self.diag = diag
        """The sock_diag decoders (finish uses them; its module does not import them)."""
        self.netns = {d.netns: d for d in dumps}
        self.failed = failed
        """Namespaces that could not be dumped at all, with why."""
        self._tuples: dict[int, dict[tuple[Any, ...], int]] = {}
        self._queued: dict[int, int] | None = None

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

    def inet_peer(self, dump: NetnsDump, what: str, entry: diag.InetDiag) -> int:
        """The inode of the socket at the other end of a connection within the same
        namespace (a TCP pair on loopback, say), or 0."""
        if entry.dport == 0 or entry.state == 10:
            return 0
        table = self._tuples.get(dump.netns)
        if table is None:
            table = self._tuples[dump.netns] = {}
            for ino, e in dump.by_ino.items():
                if e.family in (diag.AF_INET, diag.AF_INET6):
                    d = e.decode()
                    assert isinstance(d, diag.InetDiag)
                    if d.dport and d.state != 10:
                        table[(e.what, d.src, d.sport, d.dst, d.dport)] = ino
        return table.get((what, entry.dst, entry.dport, entry.src, entry.sport), 0)


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
                dumps.append(dump_netns(ns))
            else:
                dumps.append(in_netns(f"/proc/{tid}/ns/net", functools.partial(dump_netns, ns)))
        except OSError as exc:
            failed[ns] = f"{type(exc).__name__}: {exc}"
    return Dumps(dumps, failed)
