"""State any open file description can carry, whatever its type: the locks and leases
held through it, and the owner that I/O signals go to.

Every handler of asyckpt-anon and asyckpt-devices records both, with the same types:

* ``Lock``: one ``lock:`` line of the fd's fdinfo (POSIX, flock and OFD locks, leases;
  the kernel lists there exactly the locks held through this description), parsed.
  Free: the core already read those lines.
* ``Owner``: ``F_GETOWN_EX``, ``F_GETSIG`` and ``F_GETOWNER_UIDS`` on the live
  description (``ctx.take_fd``), with ``O_ASYNC`` from the fdinfo flags.  Recorded only
  when something is set.  ``F_SETOWN`` is accepted on every kind of fd, so there is no
  kind for which it could be skipped; an ``O_PATH`` fd allows no ``fcntl`` but
  ``F_GETFL``/``F_GETFD`` and so has none.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterable
from typing import Any

import msgspec

from asyckpt import FdFacts, HandlerContext

__all__ = [
    "Lock",
    "Owner",
    "describe_state",
    "kernel_dev",
    "live_fd",
    "locks_of",
    "owner_of",
    "parse_lock",
    "with_state",
]

F_GETSIG = 11
F_GETOWN_EX = 16
F_GETOWNER_UIDS = 17
OWNER_TYPES = {0: "tid", 1: "pid", 2: "pgrp"}
"""``struct f_owner_ex.type``: F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP."""


def kernel_dev(value: int) -> int:
    """A device number as fdinfo prints ``s_dev`` (the kernel's internal layout: major
    in the top 12 bits of 32, minor in the low 20) as a userspace ``st_dev``, so that it
    compares with ``File.dev``."""
    return os.makedev(value >> 20, value & 0xFFFFF)


class Lock(msgspec.Struct, kw_only=True):
    """A lock or lease held through this open file description (a fdinfo ``lock:`` line).

    The words are the kernel's own, as it prints them, so a kind of lock that a later
    kernel adds is recorded as it is named, never mapped to a known one.  A line that
    does not have the known layout keeps only ``text`` (every other field None).
    """

    type: str | None
    """``POSIX``, ``FLOCK``, ``OFDLCK``, ``LEASE``, ``DELEG``, ``ACCESS``, ``UNKNOWN``."""
    mode: str | None
    """``ADVISORY`` or ``MANDATORY`` for locks (``*NOINODE*`` without an inode);
    ``ACTIVE``, ``BREAKING`` or ``BREAKER`` for leases."""
    access: str | None
    """``READ``, ``WRITE`` or ``UNLCK``."""
    pid: int | None
    """The owner as the kernel shows it to asyckpt: -1 for OFD locks and leases without a
    process, 0 when the owner is not visible from asyckpt's pid namespace."""
    dev: int | None
    """The locked inode's device (userspace ``st_dev``) and inode number; None when the
    kernel prints ``<none>``."""
    ino: int | None
    start: int | None
    """The first byte locked."""
    end: int | None
    """The last byte locked, inclusive; None for "to the end of the file" (``EOF``), as
    flock locks and leases always are."""
    text: str
    """The line as the kernel wrote it, after ``lock:``."""


def parse_lock(text: str) -> Lock:
    """Parse the value of one fdinfo ``lock:`` line (fs/locks.c ``lock_get_status``),
    e.g. ``1: POSIX  ADVISORY  WRITE 14773 fe:00:2146786 5 14``."""
    tokens = text.split()
    if tokens and tokens[0].endswith(":"):
        tokens = tokens[1:]  # the lock's number within this listing
    if tokens and tokens[0] == "->":
        tokens = tokens[1:]  # a waiter (only /proc/locks lists them, but be lenient)
    unparsed = Lock(
        type=None,
        mode=None,
        access=None,
        pid=None,
        dev=None,
        ino=None,
        start=None,
        end=None,
        text=text,
    )
    if len(tokens) != 7:
        return unparsed
    kind, mode, access, pid, where, start, end = tokens
    try:
        dev: int | None = None
        ino: int | None = None
        if not where.startswith("<none>"):
            major, minor, inode = where.split(":")
            dev, ino = os.makedev(int(major, 16), int(minor, 16)), int(inode)
        return Lock(
            type=kind,
            mode=mode,
            access=access,
            pid=int(pid),
            dev=dev,
            ino=ino,
            start=int(start),
            end=None if end == "EOF" else int(end),
            text=text,
        )
    except ValueError:
        return unparsed


def locks_of(facts: FdFacts) -> list[Lock]:
    """The locks and leases held through the fd's open file description."""
    return [parse_lock(value) for key, value in facts.fdinfo.extra if key == "lock"]


class Owner(msgspec.Struct, kw_only=True):
    """Who I/O signals of this open file description go to (``F_SETOWN_EX``), with
    which signal (``F_SETSIG``), and whether ``O_ASYNC`` is set."""

    pid: int
    """The owner (in asyckpt's pid namespace, as the image's pids are); 0 for none."""
    type: str
    """``tid``, ``pid`` or ``pgrp`` (F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP)."""
    signal: int
    """The signal sent; 0 means SIGIO (the default)."""
    async_io: bool
    """``O_ASYNC``: readiness sends the signal (only for files that support it)."""
    uid: int | None = None
    """The uid and euid of whoever set the owner (``F_GETOWNER_UIDS``, which needs a
    kernel with CONFIG_CHECKPOINT_RESTORE; None without)."""
    euid: int | None = None


def live_fd(facts: FdFacts, ctx: HandlerContext) -> int | None:
    """The live open file description (``ctx.take_fd``), or None for an ``O_PATH`` fd,
    on which no ``fcntl`` or ``ioctl`` asyckpt would make is allowed."""
    if facts.fdinfo.flags & os.O_PATH:
        return None
    return ctx.take_fd(facts.fd)


def owner_of(facts: FdFacts, fd: int | None) -> Owner | None:
    """The owner of the description ``fd`` (from :func:`live_fd`), or None if none is set."""
    if fd is None:
        return None
    kind, pid = struct.unpack("ii", fcntl.fcntl(fd, F_GETOWN_EX, bytes(8)))
    sig = fcntl.fcntl(fd, F_GETSIG)
    async_io = bool(facts.fdinfo.flags & os.O_ASYNC)
    if not (pid or sig or async_io):
        return None
    uid: int | None = None
    euid: int | None = None
    try:
        uid, euid = struct.unpack("II", fcntl.fcntl(fd, F_GETOWNER_UIDS, bytes(8)))
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a kernel without CONFIG_CHECKPOINT_RESTORE
            raise
    return Owner(
        pid=pid,
        type=OWNER_TYPES.get(kind, str(kind)),
        signal=sig,
        async_io=async_io,
        uid=uid,
        euid=euid,
    )


def _lock_text(lock: Lock) -> str:
    if lock.type is None:
        return lock.text
    span = f"{lock.start}-{'EOF' if lock.end is None else lock.end}"
    return f"{lock.type} {lock.access} {span}"


def describe_state(locks: Iterable[Lock], owner: Owner | None) -> str:
    """``locks: ...; owner: ...`` for ``render_text``, or "" when there is neither."""
    parts = []
    locks = list(locks)
    if locks:
        parts.append("locks: " + ", ".join(_lock_text(lock) for lock in locks))
    if owner is not None:
        text = f"owner: {owner.type} {owner.pid}"
        if owner.signal:
            text += f" sig {owner.signal}"
        if owner.async_io:
            text += " async"
        parts.append(text)
    return "; ".join(parts)


def with_state(text: str, record: Any) -> str:
    """``[text]``, or ``[text; locks: ...; owner: ...]`` for a record with ``locks`` and
    ``owner`` fields: what the bundled handlers' ``render_text`` shows."""
    state = describe_state(record.locks, record.owner)
    return f"[{text}; {state}]" if state else f"[{text}]"
