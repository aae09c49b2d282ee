"""The image file: grammar, atomic writing, and reading files and pipes (the decoding and
every check are ``_decode``'s and ``_validate``'s).

Grammar (all integers big-endian; docs/image-format.md says the same at more length)::

    IMAGE   ::= MAGIC VERSION HEADER BODY TRAILER DIGEST
    MAGIC   ::= 89 41 43 4B 50 54 0D 0A 1A 0A        ("\\x89ACKPT\\r\\n\\x1a\\n", 10 bytes)
    VERSION ::= u32 format version                   (currently 2; 1 is read too)
    FRAME   ::= u32 LEN, then LEN bytes: one msgpack map with a "kind" key
    HEADER  ::= FRAME of kind "header"
    BODY    ::= { FRAME of kind "mounts" | "fdtable" | "file" | "content" | "fd" | "task" }
    TRAILER ::= FRAME of kind "trailer"
    DIGEST  ::= 32 bytes: sha256 of every byte before it, then end of file

The digest covers every byte, the trailer's counts and timings included, and the
trailer's counts must match the body: a truncated, spliced or corrupted image is rejected
whole, before any record is used.  A reader reads only regular files and pipes, a chunk at
a time (``_decode``: memory bounded by the largest frame present, not by a length field).
Like PNG's, the magic catches text-mode mangling and a file that is not an image at all.

The header names what is only known once the capture ends (plugins used), so the body is
spooled to an unnamed temporary file while it streams in, and the image is assembled at
the end: into an unnamed file in the destination directory, mode 0600, fsynced, then
linked into place (``_target``); or, for ``-o -``, streamed once complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import stat
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, Protocol

import msgspec

from ._errors import NotAnImage, OutputError
from ._escape import escape
from ._records import BE32 as _U32
from ._records import FORMAT_VERSION, MAGIC, MAX_IMAGE_SIZE, Header, Trailer

if TYPE_CHECKING:
    from ._decode import Image, ImageDecoder

__all__ = ["MAGIC", "Image", "ImageWriter", "parse_image", "read_image", "read_image_fd"]


def __getattr__(name: str) -> Any:
    # The reader (``_decode``, ``_validate``) is loaded when an image is read, not by a
    # capture, which only writes one (start-up time counts: docs/performance.md).
    if name == "Image":
        from ._decode import Image

        return Image
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _decoder(name: str, limit: int) -> ImageDecoder:
    from ._decode import ImageDecoder

    return ImageDecoder(name, limit=limit)


class Gate(Protocol):
    """What :meth:`ImageWriter.finish` asks before the image becomes visible (a
    :class:`~asyckpt._commit.Commit`, or one that also checks a trio cancellation)."""

    def check(self) -> None:
        """Raise to stop: nothing is made visible."""

    def commit(self) -> None:
        """Right before the step that makes the image visible; raise to stop."""


class ImageWriter:
    """Writes one image.  Sync: the pipeline calls it from worker threads.

    ``dest`` is a path, or an open file descriptor to stream the image into (``-o -``).
    The body is spooled to an unnamed file while it streams in; :meth:`finish` assembles
    the image behind its header and makes it visible in one step (see ``_target``: an
    unnamed file linked into place, a device node or FIFO never replaced).  Creating the
    writer checks the destination and creates its files, so a refused or unwritable
    destination fails before anything is frozen.
    """

    def __init__(self, dest: str | os.PathLike[str] | int, *, force: bool = False) -> None:
        from ._target import PathTarget, StreamTarget

        self.target: PathTarget | StreamTarget
        if isinstance(dest, int):
            name = "standard output" if dest == 1 else f"fd {dest}"
            self.target = StreamTarget(dest, display=name)
        else:
            self.target = PathTarget(dest, force=force)
        self.dest = self.target.path
        """The image's absolute path, or the name of the stream."""
        try:
            self._spool: IO[bytes] = os.fdopen(self.target.unnamed(), "w+b")
        except BaseException:
            self.abort()
            raise
        self._encoder = msgspec.msgpack.Encoder()
        self._buf = bytearray()
        self.records = 0
        self.bytes = 0

    @property
    def spool_dir(self) -> str | None:
        """Where other spools of this capture belong (None: the temporary directory)."""
        return self.target.spool_dir

    def write_body(self, records: Iterable[msgspec.Struct]) -> None:
        """Spool records (in the thread that made them, after the thaw)."""
        if not self.records:
            self.target.warm()
        buf = self._buf
        buf.clear()
        encode_into = self._encoder.encode_into
        for rec in records:
            start = len(buf)
            # Reserve the length prefix, encode after it, then fill it in: one copy.
            encode_into(rec, buf, start + 4)
            _U32.pack_into(buf, start, len(buf) - start - 4)
            self.records += 1
        self._spool.write(buf)

    def finish(self, header: Header, trailer: Trailer, gate: Gate | None = None) -> int:
        """Assemble the image and make it visible; returns its size in bytes.

        ``gate.commit()`` is called right before the image becomes visible (its link,
        or a stream's last bytes), ``gate.check()`` between the pieces of a stream;
        either raises to stop, and nothing is made visible then.
        """
        from ._target import PathTarget, write_all

        target = self.target
        streaming = not isinstance(target, PathTarget)
        stop = gate.check if streaming and gate is not None else None
        piece = 1 << 20 if isinstance(target, PathTarget) else target.piece
        digest = hashlib.sha256()
        out = target.fd
        size = 0

        def emit(data: bytes | bytearray | memoryview) -> None:
            nonlocal size
            digest.update(data)
            write_all(out, data, stop, piece)
            size += len(data)

        try:
            emit(MAGIC + _U32.pack(FORMAT_VERSION))
            emit(_frame(self._encoder.encode(header)))
            self._spool.flush()
            self._spool.seek(0)
            while chunk := self._spool.read(1 << 20):
                emit(chunk)
            trailer.records = self.records
            emit(_frame(self._encoder.encode(trailer)))
            last = digest.digest()
            if isinstance(target, PathTarget):
                write_all(out, last)
                os.fsync(out)
                if gate is not None:
                    gate.commit()
                target.commit()
            else:
                if gate is not None:
                    gate.commit()
                # Past this point the reader has the whole image: no stop any more.
                write_all(out, last)
                target.committed = True
                if target.regular:  # `-o - > FILE`: as durable as -o FILE
                    os.fsync(out)
            self.bytes = size + len(last)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.EPIPE:
                raise OutputError(
                    f"{escape(self.dest)} was closed by its reader before the image was complete"
                ) from None
            raise OutputError(f"writing {escape(self.dest)}: {exc.strerror}") from exc
        except BaseException:
            self.abort()
            raise
        self.abort()  # closes what is left open; the image stays
        return self.bytes

    def abort(self) -> None:
        """Remove every trace of an image that was not made visible.  Idempotent."""
        spool = getattr(self, "_spool", None)
        if spool is not None and not spool.closed:
            spool.close()
        from ._target import PathTarget

        if isinstance(self.target, PathTarget):
            self.target.abort()


def _frame(payload: bytes) -> bytes:
    return _U32.pack(len(payload)) + payload


def read_image(path: str | os.PathLike[str], *, limit: int = MAX_IMAGE_SIZE) -> Image:
    """Read and verify a whole image: magic, version, framing, checksum, every record and
    every reference between them (docs/image-format.md, "What a reader checks").

    ``path`` must be a regular file or a FIFO: a device (``/dev/zero`` never ends, and
    opening one may act on it), a socket or a directory is refused before it is opened.
    At most ``limit`` bytes are read.
    """
    name = os.fsdecode(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NotAnImage(f"cannot read {name}: {exc.strerror}") from exc
    _check_kind(st.st_mode, name)
    # A FIFO's open waits for its writer, as reading a pipe should; anything else is
    # opened without waiting, in case it was replaced by something that would.
    fifo = stat.S_ISFIFO(st.st_mode)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | (0 if fifo else os.O_NONBLOCK)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise NotAnImage(f"cannot read {name}: {exc.strerror}") from exc
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise NotAnImage(f"{name} was replaced while it was being opened")
        os.set_blocking(fd, True)
        return read_image_fd(fd, name=name, limit=limit)
    finally:
        os.close(fd)


def read_image_fd(fd: int, *, name: str, limit: int = MAX_IMAGE_SIZE) -> Image:
    """Read and verify an image from an open file descriptor (``show -``: standard
    input), which must be a regular file or a pipe; it is read to its end, not closed."""
    _check_kind(os.fstat(fd).st_mode, name)
    decoder = _decoder(name, limit)
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:  # a non-blocking pipe we were handed
            select.select([fd], [], [])
            continue
        except OSError as exc:
            raise NotAnImage(f"cannot read {name}: {exc.strerror}") from exc
        if not chunk:
            return decoder.close()
        decoder.feed(chunk)


_CHUNK = 1 << 20
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _check_kind(mode: int, name: str) -> None:
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode):
        return
    what = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise NotAnImage(f"{name} is {what}, not an image file or a pipe")


def parse_image(data: bytes, *, name: str = "image") -> Image:
    """Verify and decode an image held in memory."""
    decoder = _decoder(name, max(len(data), 1))
    decoder.feed(data)
    return decoder.close()
