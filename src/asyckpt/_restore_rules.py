"""What restore accepts from an image, and how each value is checked (pure).

The words ``--skip`` takes and the kind of each file, the bounds every number must keep,
the open flags an image may never ask for, the devices that may be reopened, and the
checkers the planners (``_restore_plan``, ``_restore_hooks``) share, so a rule is
written once.  A value that breaks one raises :class:`~asyckpt._restore_model.Refuse`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from typing import Literal

import msgspec

from ._names import os_name
from ._records import File
from ._restore_model import Bind, Inotify, InotifyWatch, SockType
from ._restore_model import Refuse as _Refuse

__all__ = [
    "ACCESS",
    "CLOCKS",
    "FMT",
    "KINDS",
    "LOCK_TYPES",
    "MAX_EVENTFD",
    "MAX_MEMFD_NAME",
    "MAX_PATH",
    "MAX_PIPE_SIZE",
    "MAX_UNLINKED_SIZE",
    "NEVER",
    "PTY_SLAVES",
    "SAFE_DEVICES",
    "SEAL_MASK",
    "SETFL",
    "SOCK_TYPES",
    "checked_int",
    "checked_name",
    "checked_path",
    "fd_kind",
    "plan_bind",
    "plan_inotify",
    "record_data",
    "timespec",
]

KINDS = (
    "reg",
    "dir",
    "path",
    "unlinked",
    "memfd",
    "chr",
    "blk",
    "fifo",
    "pipe",
    "socket",
    "eventfd",
    "epoll",
    "timerfd",
    "signalfd",
    "inotify",
    "fanotify",
    "pidfd",
    "anon",
)
"""The words ``--skip`` takes: every kind of fd an image can hold."""

MAX_UNLINKED_SIZE = 16 << 30
"""The largest unlinked file (holes included) recreated: what one image can hold."""
MAX_PIPE_SIZE = 1 << 30
MAX_EVENTFD = 2**64 - 2
MAX_PATH = 4095
MAX_MEMFD_NAME = 249  # bytes: memfd_create(2)'s limit
SEAL_MASK = 0x3F  # F_SEAL_SEAL .. F_SEAL_EXEC

# /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom: opening them does nothing
# but hand out a file.  Other devices may act on open (a tape rewinds, a tty becomes
# the controlling terminal), so they are not reopened.
SAFE_DEVICES = frozenset({(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)})
PTY_SLAVES = range(136, 144)
"""The majors of /dev/pts/N: a pty's slave end, opened O_NOCTTY, only adds a reference
(not a serial line, whose open may raise its modem lines; not /dev/tty or /dev/ptmx,
which would name or make another terminal)."""

# Open flags an image may not ask for: restore never creates or truncates.  O_DIRECTORY:
# an O_TMPFILE's is not the file's (a directory gets its own back).
O_TMPFILE_BIT = 0o20000000
NEVER = os.O_CREAT | os.O_EXCL | os.O_TRUNC | O_TMPFILE_BIT | os.O_NOCTTY | os.O_DIRECTORY
# What F_SETFL changes (fs/fcntl.c SETFL_MASK); O_ASYNC goes with an I/O owner, which
# is refused.
SETFL = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME
ACCESS = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "path": os.O_PATH}
FMT = {
    "reg": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "link": stat.S_IFLNK,
    "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}
SOCK_TYPES: dict[object, SockType] = {
    "stream": "stream",
    "dgram": "dgram",
    "seqpacket": "seqpacket",
}


def record_data(f: File) -> dict[str, object]:
    """The handler's record as a plain map ({} when there is none)."""
    try:
        value = msgspec.msgpack.decode(f.data)
    except (msgspec.DecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def fd_kind(f: File) -> str:
    """The ``--skip`` word for one open file description."""
    tag = record_data(f).get("kind")
    if f.type == "anon":
        if isinstance(tag, str) and tag.startswith("asyckpt.") and tag[8:] in KINDS:
            return tag[8:]
        name = f.path.removeprefix("anon_inode:").strip("[]")
        name = "epoll" if name == "eventpoll" else name
        return name if name in KINDS else "anon"
    if f.access == "path":
        return "path"
    if tag == "asyckpt.memfd":
        return "memfd"
    if f.type == "reg" and f.deleted:
        return "unlinked"
    if f.type == "link":
        return "path"
    return f.type


LOCK_TYPES: dict[str, Literal["flock", "ofd", "posix"]] = {
    "FLOCK": "flock",
    "OFDLCK": "ofd",
    "POSIX": "posix",
}

CLOCKS = (0, 1, 7, 8, 9)
"""CLOCK_REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM: timerfd's clocks."""


def timespec(value: object, what: str) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _Refuse(f"{what} {value!r} is not (seconds, nanoseconds)")
    return checked_int(value[0], 0, 2**62, what), checked_int(value[1], 0, 999_999_999, what)


def plan_inotify(data: dict[str, object]) -> Inotify:
    """The watches, by ascending watch descriptor, each on a path checked against the
    watched inode."""
    watches = data.get("watches")
    if data.get("resolved") is not True or not isinstance(watches, list):
        raise _Refuse("its watches' paths were not resolved at capture")
    out = []
    for w in sorted(watches, key=lambda w: w.get("wd") or 0 if isinstance(w, dict) else 0):
        if not isinstance(w, dict):
            raise _Refuse("a watch that is not a map")
        if w.get("deleted") or not isinstance(w.get("path"), str):
            raise _Refuse(f"watch {w.get('wd')!r}: its path is unknown or unlinked")
        path = checked_path(w.get("path"), w.get("path_bytes"), f"watch {w.get('wd')!r}")
        out.append(
            InotifyWatch(
                path=path,
                mask=checked_int(w.get("mask"), 1, 0xFFFFFFFF, "watch mask"),
                dev=checked_int(w.get("dev"), 0, 2**64 - 1, "watch device"),
                ino=checked_int(w.get("ino"), 0, 2**64 - 1, "watch inode"),
            )
        )
    return Inotify(watches=out)


def plan_bind(data: dict[str, object]) -> Bind:
    """A TCP listener or an unconnected UDP socket, bound again to its address."""
    family, sotype, state = data.get("family"), data.get("type"), data.get("state")
    if sotype == "stream" and state == "LISTEN" and data.get("proto") == "tcp":
        if data.get("accept_queue") not in (None, 0):
            raise _Refuse("connections wait in its accept queue (not restored)")
        backlog = checked_int(data.get("backlog"), 0, 65535, "backlog")
    elif sotype == "dgram" and state == "CLOSE" and data.get("proto") == "udp":
        if data.get("recv_queue") not in (None, 0):
            raise _Refuse("datagrams queued in it are not in the image")
        if data.get("remote_port") not in (None, 0):
            raise _Refuse("a connected UDP socket (its peer is not restored)")
        backlog = 0
    else:
        raise _Refuse("only TCP listeners and unconnected UDP sockets of inet are restored")
    if data.get("interface") is not None or data.get("ifindex") not in (None, 0):
        raise _Refuse("bound to a device (not restored)")
    address = data.get("local_address")
    try:
        ip = ipaddress.ip_address(address)  # type: ignore[arg-type]
    except ValueError:
        raise _Refuse(f"local address {address!r}") from None
    if ip.version != (4 if family == "inet" else 6):
        raise _Refuse(f"local address {address!r} of another family")
    netns = data.get("netns")
    return Bind(
        family="inet" if family == "inet" else "inet6",
        socktype="stream" if sotype == "stream" else "dgram",
        address=str(ip),
        port=checked_int(data.get("local_port"), 1, 65535, "local port"),
        backlog=backlog,
        reuseaddr=data.get("reuseaddr") is True,
        reuseport=data.get("reuseport") is True,
        netns=netns if type(netns) is int else None,
    )


def checked_name(value: object, raw: object, what: str) -> str:
    """A name field of a record as ``os`` takes it (its exact bytes, surrogateescaped):
    the text, or the ``_bytes`` companion of one that is not UTF-8."""
    if not isinstance(value, str) or not isinstance(raw, bytes | None):
        raise _Refuse(f"no {what}")
    name = os_name(value, raw)
    if "\0" in name:
        raise _Refuse(f"a {what} with a NUL")
    return name


def checked_path(value: object, raw: object, what: str) -> str:
    path = checked_name(value, raw, what)
    if not path.startswith("/") or len(os.fsencode(path)) > MAX_PATH:
        raise _Refuse(f"{what}: no absolute path of at most 4095 bytes")
    return path


def checked_int(value: object, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _Refuse(f"{what} {value!r} out of range {lo}..{hi}")
    return value
