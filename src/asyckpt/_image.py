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
the end: temporary file in the destination directory, mode 0600, fsync, rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import stat
import tempfile
from collections.abc import Iterable
from typing import IO

import msgspec

from ._decode import MAGIC, MAX_IMAGE_SIZE, Image, ImageDecoder
from ._decode import U32 as _U32
from ._errors import NotAnImage, OutputError
from ._records import FORMAT_VERSION, Header, Trailer

__all__ = ["MAGIC", "Image", "ImageWriter", "parse_image", "read_image", "read_image_fd"]


class ImageWriter:
    """Writes one image atomically.  Sync: the pipeline calls it from worker threads.

    Creating the writer already creates the temporary file, so an unwritable destination
    or an existing file fails before anything is frozen.
    """

    def __init__(self, dest: str | os.PathLike[str], *, force: bool = False) -> None:
        self.dest = os.path.abspath(dest)
        self.force = force
        directory = os.path.dirname(self.dest)
        if os.path.isdir(self.dest):
            raise OutputError(f"{self.dest} is a directory")
        if not force and os.path.lexists(self.dest):
            raise OutputError(f"{self.dest} exists; use --force to replace it")
        try:
            fd, self._tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(self.dest)}.", suffix=".tmp", dir=directory
            )
        except FileNotFoundError:
            raise OutputError(f"directory {directory} does not exist") from None
        except OSError as exc:
            raise OutputError(f"cannot write in {directory}: {exc.strerror}") from exc
        self._out: IO[bytes] = os.fdopen(fd, "wb")  # mkstemp makes it 0600
        # Unnamed (O_TMPFILE): nothing to clean up if we die.  It outlives __init__, so
        # no context manager; abort() and finish() close it.
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self._encoder = msgspec.msgpack.Encoder()
        self._buf = bytearray()
        self.records = 0
        self.bytes = 0

    def write_body(self, records: Iterable[msgspec.Struct]) -> None:
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

    def finish(self, header: Header, trailer: Trailer) -> int:
        """Assemble, fsync and rename the image; returns its size in bytes."""
        digest = hashlib.sha256()
        out = self._out

        def emit(data: bytes | bytearray | memoryview) -> None:
            digest.update(data)
            out.write(data)

        try:
            emit(MAGIC + _U32.pack(FORMAT_VERSION))
            emit(_frame(self._encoder.encode(header)))
            self._spool.flush()
            self._spool.seek(0)
            while chunk := self._spool.read(1 << 20):
                emit(chunk)
            trailer.records = self.records
            emit(_frame(self._encoder.encode(trailer)))
            out.write(digest.digest())
            out.flush()
            os.fsync(out.fileno())
            self.bytes = out.tell()
            out.close()
            self._spool.close()
            if self.force:
                os.replace(self._tmp, self.dest)
            else:
                # link() refuses to replace a file that appeared since we checked.
                try:
                    os.link(self._tmp, self.dest)
                except FileExistsError:
                    raise OutputError(f"{self.dest} exists; use --force to replace it") from None
                os.unlink(self._tmp)
            dfd = os.open(os.path.dirname(self.dest), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            self.abort()
            raise OutputError(f"writing {self.dest}: {exc.strerror}") from exc
        except BaseException:
            self.abort()
            raise
        return self.bytes

    def abort(self) -> None:
        """Remove every trace of the unfinished image.  Idempotent."""
        for f in (self._out, self._spool):
            if not f.closed:
                f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


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
    decoder = ImageDecoder(name, limit=limit)
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
    decoder = ImageDecoder(name, limit=max(len(data), 1))
    decoder.feed(data)
    return decoder.close()
