"""asyckpt's handler for pipes and FIFOs.

Everything is read from the task's own open file description (``ctx.take_fd``, i.e.
pidfd_getfd), never by re-opening ``/proc/PID/fd/N``, which for a FIFO would open a new
description (and could block) and for a pipe would add a reader or writer:

* ``capacity``: ``fcntl(F_GETPIPE_SZ)``; ``queued``: ``ioctl(FIONREAD)``, the bytes in the
  pipe.  Both belong to the pipe, not to one end: they are read once per pipe and
  capture, through the first of its descriptions met (the tree is frozen, so every end
  would say the same); ``packet_mode``: ``O_DIRECT`` in the description's
  flags.  ``pipe2(O_DIRECT)`` sets it on the write end only (each write through it is a
  packet; the read end honours the packets from their buffers).
* Both ends of one pipe share its inode (``ino``, the pipe's ``st_ino``; a FIFO's is the
  node's): that is how ``asyckpt show --endpoints`` pairs them, in whatever tasks.
* With ``--pipe-data SIZE`` the first SIZE queued bytes are copied without consuming them:
  ``tee(2)`` from the read end into a private pipe as large as the source, then read from
  that.  Once per pipe, on the first read end the capture meets; a pipe of which the tree
  holds only the write end has no ``content`` (tee reads from a read end only).  tee
  keeps each buffer's packet flag, so the copy also tells the packets' lengths
  (``packets``; see :func:`copy_queue`).

A FIFO's path and whether its node was unlinked are the file's own ``path`` and
``deleted``, which the core records for every file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import termios
from typing import Any, ClassVar

import msgspec

from asyckpt import CaptureSession, FdFacts, HandlerContext

__all__ = ["Pipe", "PipeHandler", "copy_queue", "peek"]

F_GETPIPE_SZ = 1032
F_SETPIPE_SZ = 1031
SPLICE_F_NONBLOCK = 2
_ENDS = {os.O_RDONLY: "read", os.O_WRONLY: "write", os.O_RDWR: "read-write"}
_INT = struct.Struct("i")
_ZERO = bytes(_INT.size)


class Pipe(msgspec.Struct, tag="asyckpt.pipe", tag_field="kind", kw_only=True):
    """One open file description of a pipe or FIFO."""

    ino: int
    """The pipe's inode: equal for both ends of one pipe (a FIFO's: the node's)."""
    end: str
    """``read``, ``write`` or ``read-write`` (a FIFO opened O_RDWR)."""
    capacity: int
    """Bytes the pipe can hold (F_GETPIPE_SZ)."""
    queued: int
    """Bytes written and not yet read (FIONREAD)."""
    packet_mode: bool
    """O_DIRECT: every write through this description is one packet (pipe2(2), which
    sets it on the write end only)."""
    content: bytes | None = None
    """With ``--pipe-data``: the first queued bytes, up to its size; None without it, on
    a write end, and on any read end of the pipe but the first the capture met."""
    content_truncated: bool = False
    """More bytes were queued than ``content`` holds."""
    packets: list[int] | None = None
    """With ``content``: the lengths of the packets it holds, in order, when the pipe
    holds packets (written through an O_DIRECT end); None for a plain byte stream.  A
    write larger than a page was split into page-sized packets by the kernel, and is
    listed as such (that is how the reader reads it)."""


_libc = ctypes.CDLL(None, use_errno=True)
_tee = _libc.tee
_tee.restype = ctypes.c_ssize_t
_tee.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)


def peek(fd: int, size: int, capacity: int) -> bytes:
    """Up to ``size`` bytes queued in the pipe whose read end is ``fd``, left in it."""
    return copy_queue(fd, size, capacity)[0]


def copy_queue(fd: int, size: int, capacity: int) -> tuple[bytes, list[int] | None]:
    """Up to ``size`` bytes queued in the pipe whose read end is ``fd``, left in it, and
    the lengths of its packets (None: a plain byte stream).

    ``tee(2)`` duplicates the pipe's buffers (page references, not a copy, with their
    flags, PIPE_BUF_FLAG_PACKET included) into a private pipe, which needs as many slots
    as the source uses: it is made as large as ``capacity``.  Never blocks.

    Packets show in how reads of that copy end: a read asking for everything left stops
    at the end of a packet, and otherwise runs on through plain buffers.  So every read
    but the last ends a packet; whether the last one does is asked of a second copy,
    read up to one byte short of it: a packet's read discards the rest of its buffer
    (pipe(7)), a plain read leaves that byte queued.
    """
    if size <= 0:
        return b"", None
    r, w = _private_pipe(capacity)
    r2 = w2 = -1
    try:
        copied = _tee(fd, w, size, SPLICE_F_NONBLOCK)
        if copied < 0:
            err = ctypes.get_errno()
            if err == errno.EAGAIN:  # nothing queued after all
                return b"", None
            raise OSError(err, f"tee: {os.strerror(err)}")
        if copied == 0:
            return b"", None
        r2, w2 = _private_pipe(capacity)
        if _tee(r, w2, copied, SPLICE_F_NONBLOCK) != copied:
            err = ctypes.get_errno()
            raise OSError(err, f"tee: {os.strerror(err)}")
        chunks = []
        left = copied
        while left > 0:
            chunk = os.read(r, left)
            chunks.append(chunk)
            left -= len(chunk)
        reads = [len(c) for c in chunks]
        last_is_packet = False
        if reads[-1] > 1:
            for n in reads[:-1]:
                os.read(r2, n)
            os.read(r2, reads[-1] - 1)
            last_is_packet = _queued(r2) == 0
        packets = reads if len(reads) > 1 or last_is_packet else None
        return b"".join(chunks), packets
    finally:
        for end in (r, w, r2, w2):
            if end >= 0:
                os.close(end)


def _private_pipe(capacity: int) -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if capacity > fcntl.fcntl(w, F_GETPIPE_SZ):
            fcntl.fcntl(w, F_SETPIPE_SZ, capacity)
    except OSError:
        os.close(r)
        os.close(w)
        raise
    return r, w


class _Seen:
    """One capture's memory of its pipes, by (dev, ino)."""

    __slots__ = ("copied", "pipes")

    def __init__(self) -> None:
        self.pipes: dict[tuple[int, int], tuple[int, int]] = {}
        """(capacity, queued), read through the first description met."""
        self.copied: set[tuple[int, int]] = set()
        """Pipes whose content was copied already."""


def _queued(fd: int) -> int:
    value: int = _INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, _ZERO))[0]
    return value


class PipeHandler:
    """Pipes and FIFOs: both ends of each pipe, its capacity, queue and mode."""

    name: ClassVar[str] = "pipes"
    kinds: ClassVar[frozenset[str]] = frozenset({"pipe", "fifo"})
    record_type: ClassVar[type[msgspec.Struct]] = Pipe

    def begin(self, session: CaptureSession) -> _Seen:
        """What this capture has read of each pipe so far."""
        return _Seen()

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Pipe:
        flags = facts.fdinfo.flags
        end = _ENDS.get(flags & os.O_ACCMODE, "read-write")
        key = (facts.st.st_dev, facts.st.st_ino)
        try:
            seen: _Seen = ctx.state
            limit = ctx.session.pipe_data
        except LookupError:  # capture called outside of a capture session
            seen, limit = _Seen(), 0
        copy = limit and end != "write" and key not in seen.copied
        # Capacity and queue belong to the pipe, not to one end: read once per pipe (the
        # tree is frozen, so its other ends see the same), through the first description
        # met, unless this one's content is to be copied.
        known = seen.pipes.get(key)
        fd = -1
        if known is None or copy:
            fd = ctx.take_fd(facts.fd)
            known = seen.pipes[key] = (fcntl.fcntl(fd, F_GETPIPE_SZ), _queued(fd))
        capacity, queued = known
        record = Pipe(
            ino=facts.st.st_ino,
            end=end,
            capacity=capacity,
            queued=queued,
            packet_mode=bool(flags & os.O_DIRECT),
        )
        if copy:
            seen.copied.add(key)
            record.content, record.packets = copy_queue(fd, min(queued, limit), capacity)
            record.content_truncated = len(record.content) < queued
        return record

    def render_text(self, record: Pipe) -> str:
        text = f"[{record.end} end, {record.queued} of {record.capacity} bytes queued"
        if record.packet_mode:
            text += ", packet mode"
        if record.content is not None:
            text += f", {len(record.content)} copied"
            if record.packets is not None:
                text += f" in {len(record.packets)} packets"
            text += " (truncated)" if record.content_truncated else ""
        return text + "]"

    def render_json(self, record: Pipe) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.structs.asdict(record)
        # JSON has no bytes: the content as text where it is, else base64 (as in data).
        if record.content is not None:
            try:
                out["content"] = record.content.decode()
                out["content_encoding"] = "utf-8"
            except UnicodeDecodeError:
                out["content"] = msgspec.json.encode(record.content).decode()[1:-1]
                out["content_encoding"] = "base64"
        return out
