"""Making the sockets of a restore plan that are bound to an address (the I/O).

inet: a TCP listener or an unconnected UDP socket bound again to its address and port.

unix: a socket bound again to its name, the only thing restore creates in a file system
(the socket's node), only where the image says it was bound, only under ``--root``,
never replacing anything.  bind(2) records the very string it is given as the socket's
name, so to give the socket its name again (what ``getsockname``, its peers and a
capture see) the bind is made with the image's path, by a thread with a root of its
own: ``unshare(CLONE_FS)`` then ``chroot`` to ``--root`` (when it is not ``/``), where
``..`` and absolute symlinks stay inside the root as with ``RESOLVE_IN_ROOT``.  The
directory is resolved first with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``;
after the bind the node must be a socket in that very directory, and a probe sent
through ``/proc/self/fd/DIRFD/NAME`` must reach the new socket, else the restore fails.
An existing file at the path (a stale socket of the original) makes bind fail
(``EADDRINUSE``): an error naming the path; restore never unlinks.  The node gets the
mode bind gives it under restore's umask and restore's owner: the image does not
record the original's.  Connections to a restored listener are made by connecting a
new client through that same ``/proc/self/fd`` path and accepting; the listener's queue
is empty again afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
from collections.abc import Callable
from typing import NamedTuple

from ._kernel import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2, unshare_fs
from ._restore_model import Bind, MakeFailed, Shutdown, UnixConnection, UnixSocket
from ._restore_unix import SUN_PATH, shown

__all__ = ["SOCK_TYPES", "UnixMaker", "bind_inet", "shut"]

_SHUTDOWN = {"read": socket.SHUT_RD, "write": socket.SHUT_WR, "both": socket.SHUT_RDWR}
SOCK_TYPES = {
    "stream": socket.SOCK_STREAM,
    "dgram": socket.SOCK_DGRAM,
    "seqpacket": socket.SOCK_SEQPACKET,
}


def shut(fd: int, how: Shutdown) -> int:
    """The socket ``fd``, shutdown(2) as the image recorded (None: nothing); closed if
    that fails."""
    if how is not None:
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(_SHUTDOWN[how])
        except BaseException:
            os.close(fd)
            raise
        finally:
            sock.close()
    return fd


def _same_netns(netns: int | None) -> None:
    if netns is not None and netns != os.stat("/proc/self/ns/net").st_ino:
        raise MakeFailed("it was in another network namespace than restore's")


def bind_inet(make: Bind) -> int:
    """A TCP listener listening, or a UDP socket, bound again to its address."""
    _same_netns(make.netns)
    family = socket.AF_INET if make.family == "inet" else socket.AF_INET6
    sotype = socket.SOCK_STREAM if make.socktype == "stream" else socket.SOCK_DGRAM
    sock = socket.socket(family, sotype)
    try:
        if make.reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if make.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((make.address, make.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MakeFailed(f"address {make.address} port {make.port} is in use") from None
            raise
        if make.socktype == "stream":
            sock.listen(make.backlog)
        return sock.detach()
    finally:
        sock.close()


class _Bound(NamedTuple):
    """A unix socket restore bound: a dup of it (kept until the plan is made) and the
    address that reaches it (through the directory fd restore resolved, or abstract)."""

    fd: int
    reach: bytes


class _Node(NamedTuple):
    """A socket node restore made: its directory (an fd kept until the plan is made),
    name in it, device and inode."""

    dirfd: int
    base: bytes
    dev: int
    ino: int


def _in_root(root_fd: int, chroot: bool, sock: socket.socket, address: bytes) -> None:
    """bind(2) ``sock`` to ``address`` as resolved inside the root: from a thread whose
    root is the root's directory (its own, by unshare(CLONE_FS), so no other thread's
    root, working directory or umask changes); the root being ``/``, from this one."""
    if not chroot:
        sock.bind(address)
        return
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            unshare_fs()
            os.fchdir(root_fd)
            try:
                os.chroot(".")
            except PermissionError:
                raise MakeFailed(
                    "binding a unix socket under --root takes CAP_SYS_CHROOT (it is "
                    "bound from a chroot at the root, to keep its name)"
                ) from None
            sock.bind(address)
        except BaseException as exc:  # raised again in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="asyckpt-bind")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


class UnixMaker:
    """The unix sockets of one plan: bound ones first, then what connects to them."""

    def __init__(self, root_fd: int, keep: Callable[[int], int]) -> None:
        self.root_fd = root_fd
        self.keep = keep  # _Maker.keep: moves a fd above the table, closed once all is made
        self.bound: dict[int, _Bound] = {}  # file id -> the socket bound
        self.conns: dict[int, tuple[int, int]] = {}  # accepted's file id -> (client, accepted)
        self.waiting: dict[int, list[int]] = {}  # file id -> the sockets to connect to it
        self.nodes: list[_Node] = []
        root, slash = os.fstat(root_fd), os.stat("/")
        self.chroot = (root.st_dev, root.st_ino) != (slash.st_dev, slash.st_ino)

    def make_socket(self, file: int, make: UnixSocket) -> int:
        sock = socket.socket(socket.AF_UNIX, SOCK_TYPES[make.socktype])
        try:
            if make.address is not None:
                reach = self._bind(sock, make)
                if make.backlog is not None:
                    sock.listen(make.backlog)
                if make.backlog is not None or make.socktype == "dgram":
                    _probe(sock, reach, make.socktype, shown(make.address))
                self.bound[file] = _Bound(self.keep(os.dup(sock.fileno())), reach)
                for waiting in self.waiting.pop(file, []):
                    _connect_fd(waiting, reach)
            if make.connect is not None:
                target = self.bound.get(make.connect)
                if target is not None:
                    sock.connect(target.reach)
                else:  # bound too, and made first: connected once its target is bound
                    waiting = self.keep(os.dup(sock.fileno()))
                    self.waiting.setdefault(make.connect, []).append(waiting)
            fd = sock.detach()
        finally:
            sock.close()
        return shut(fd, make.shutdown)

    def _bind(self, sock: socket.socket, make: UnixSocket) -> bytes:
        address = make.address
        assert address is not None
        if address.startswith(b"\0"):
            _same_netns(make.netns)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise MakeFailed(f"address {shown(address)} is in use") from None
                raise
            return address
        parent, _, base = address.rpartition(b"/")
        try:
            dirfd = openat2(
                self.root_fd,
                os.fsdecode(parent or b"/"),
                os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )
        except OSError as exc:
            raise MakeFailed(f"{shown(address)}: its directory: {exc.strerror}") from None
        dirfd = self.keep(dirfd)
        reach = b"/proc/self/fd/%d/" % dirfd + base
        if len(reach) > SUN_PATH:
            raise MakeFailed(
                f"{shown(address)}: its last component is too long to be reached through "
                f"its directory's fd ({len(reach)} bytes; sun_path holds {SUN_PATH})"
            )
        try:
            _in_root(self.root_fd, self.chroot, sock, address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MakeFailed(
                    f"address {shown(address)} is in use: a file is there (restore never "
                    "removes one)"
                ) from None
            raise MakeFailed(f"{shown(address)}: {exc.strerror}") from None
        try:
            st = os.stat(base, dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            st = None
        if st is None or not stat.S_ISSOCK(st.st_mode):
            raise MakeFailed(f"{shown(address)}: bound elsewhere than in its directory")
        self.nodes.append(_Node(dirfd, base, st.st_dev, st.st_ino))
        return reach

    def undo(self) -> None:
        """Remove the nodes this restore bound, the restore having failed: each only if
        it is still the very node made (device and inode), so a retry finds the paths
        free.  Never any other file."""
        for node in self.nodes:
            with contextlib.suppress(OSError):
                st = os.stat(node.base, dir_fd=node.dirfd, follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (node.dev, node.ino):
                    os.unlink(node.base, dir_fd=node.dirfd)

    def connection(self, make: UnixConnection) -> int:
        ends = self.conns.get(make.accepted)
        if ends is None:
            listener = self.bound.get(make.listener)
            if listener is None:
                raise MakeFailed("its listener was not bound again")
            client, accepted = _connect(listener, make.socktype)
            ends = self.conns[make.accepted] = (self.keep(client), self.keep(accepted))
        return shut(os.dup(ends[0 if make.end == "client" else 1]), make.shutdown)


def _connect_fd(fd: int, reach: bytes) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.connect(reach)
    finally:
        sock.close()


def _connect(listener: _Bound, type: str) -> tuple[int, int]:
    """A new client connected to ``listener`` and the connection it accepted, checked to
    be one connection (a byte sent one way comes out the other, and is read back)."""
    client = socket.socket(socket.AF_UNIX, SOCK_TYPES[type])
    try:
        client.setblocking(False)  # a full queue is an error, not a wait
        client.connect(listener.reach)
        accepted = _accept(listener.fd)
        try:
            _same_connection(client, accepted)
            client.setblocking(True)
            return client.detach(), accepted.detach()
        finally:
            accepted.close()
    except BlockingIOError:
        raise MakeFailed("its listener's queue is full") from None
    finally:
        client.close()


def _accept(fd: int) -> socket.socket:
    """The connection waiting on the listener ``fd`` (whose flags stay as they are)."""
    if not select.select([fd], [], [], 0)[0]:
        raise MakeFailed("no connection reached the listener restore bound")
    listener = socket.socket(fileno=os.dup(fd))
    try:
        accepted, _ = listener.accept()
        return accepted
    finally:
        listener.close()


def _same_connection(client: socket.socket, accepted: socket.socket) -> None:
    token = os.urandom(16)
    client.send(token)
    try:
        got = accepted.recv(len(token), socket.MSG_DONTWAIT)
    except BlockingIOError:
        got = b""
    if got != token:
        raise MakeFailed("the connection accepted is not the one restore made")


def _probe(sock: socket.socket, reach: bytes, type: str, name: str) -> None:
    """Prove the node at ``reach`` is ``sock``: a probe connected (a listener) or sent
    (a datagram socket) through it reaches ``sock``, and nothing of it is left."""
    probe = socket.socket(socket.AF_UNIX, SOCK_TYPES[type])
    try:
        probe.setblocking(False)
        try:
            if type == "dgram":
                token = os.urandom(16)
                probe.sendto(token, reach)
                with contextlib.suppress(BlockingIOError):
                    if sock.recv(len(token), socket.MSG_DONTWAIT) == token:
                        return
            else:
                probe.connect(reach)
                accepted = _accept(sock.fileno())
                try:
                    _same_connection(probe, accepted)
                    return
                finally:
                    accepted.close()
        except (OSError, MakeFailed):
            pass
        raise MakeFailed(f"{name}: the node bound there does not reach the socket restore bound")
    finally:
        probe.close()
