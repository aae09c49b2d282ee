"""The image file: grammar, atomic writing, and verified reading.

Grammar (all integers big-endian; docs/image-format.md says the same at more length)::

    IMAGE   ::= MAGIC VERSION HEADER BODY TRAILER DIGEST
    MAGIC   ::= 89 41 43 4B 50 54 0D 0A 1A 0A        ("\\x89ACKPT\\r\\n\\x1a\\n", 10 bytes)
    VERSION ::= u32 format version                   (currently 3; 1 and 2 are read too)
    FRAME   ::= u32 LEN, then LEN bytes: one msgpack map with a "kind" key
    HEADER  ::= FRAME of kind "header"
    BODY    ::= { FRAME of kind "mounts" | "fdtable" | "file" | "content" | "fd" | "task" }
                { FRAME of kind "holders" }           (version 3: after every task)
    TRAILER ::= FRAME of kind "trailer"
    DIGEST  ::= 32 bytes: sha256 of every byte before it, then end of file

The digest covers every byte, the trailer's counts and timings included, and the
trailer's counts must match the body: a truncated, spliced or corrupted image is rejected
whole, before any record is used.
Like PNG's, the magic catches text-mode mangling and a file that is not an image at all.

The header names what is only known once the capture ends (plugins used), so the body is
spooled to an unnamed temporary file while it streams in, and the image is assembled at
the end: temporary file in the destination directory, mode 0600, fsync, rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from collections.abc import Iterable
from typing import IO

import msgspec

from ._errors import ImageCorrupt, ImageVersionError, NotAnImage, OutputError
from ._names import bad_name
from ._records import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    Content,
    Fd,
    FdTable,
    File,
    Header,
    Holders,
    MountTable,
    Record,
    Task,
    Trailer,
)

__all__ = ["MAGIC", "Image", "ImageWriter", "read_image"]

MAGIC = b"\x89ACKPT\r\n\x1a\n"
_U32 = struct.Struct(">I")
_MAX_FRAME = 1 << 30
_DIGEST_SIZE = 32


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


class Image(msgspec.Struct, kw_only=True):
    """A verified image, decoded."""

    header: Header
    mounts: list[MountTable]
    fd_tables: dict[int, list[Fd]]
    """Fd records of each table, in fd order."""
    table_owner: dict[int, int]
    files: dict[int, File]
    tasks: list[Task]
    trailer: Trailer
    checksum: str
    """The image's sha256 digest (hex), as its last 32 bytes hold it."""
    contents: dict[int, list[Content]] = {}
    """The ``content`` records of each file whose unlinked data was saved, in offset
    order (``File.ghost`` ``saved``, ``File.ghost_file`` its own id)."""
    outside: list[Holders] = []
    """Who outside the tree held its pipes, FIFOs and peers, searched for after the thaw
    (``Header.endpoints`` ``system``)."""

    def fds(self, table: int | None) -> list[tuple[Fd, File]]:
        """The fds of one fd table (a Task's ``fd_table``) with their open files."""
        if table is None:
            return []
        return [(fd, self.files[fd.file]) for fd in self.fd_tables[table]]


_decoder = msgspec.msgpack.Decoder(Record)


def read_image(path: str | os.PathLike[str]) -> Image:
    """Read and verify a whole image: magic, version, framing, checksum and counts."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise NotAnImage(f"{path} is a directory") from None
    except OSError as exc:
        raise NotAnImage(f"cannot read {path}: {exc.strerror}") from exc
    return parse_image(data, name=str(path))


def parse_image(data: bytes, *, name: str = "image") -> Image:
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise ImageCorrupt(f"{name} is truncated inside its magic number")
        raise NotAnImage(f"{name} is not an asyckpt image")
    off = len(MAGIC)
    if len(data) < off + 4:
        raise ImageCorrupt(f"{name} is truncated before its format version")
    (version,) = _U32.unpack_from(data, off)
    if version not in READABLE_VERSIONS:
        raise ImageVersionError(
            f"{name} has image format version {version}; this asyckpt reads "
            + " and ".join(map(str, READABLE_VERSIONS))
        )
    off += 4
    end = len(data) - _DIGEST_SIZE
    view = memoryview(data)[:end] if end >= off else memoryview(b"")
    frames: list[memoryview] = []
    while off < end:
        if off + 4 > end:
            raise ImageCorrupt(f"{name} is truncated inside a frame header at byte {off}")
        (n,) = _U32.unpack_from(data, off)
        if n > _MAX_FRAME or off + 4 + n > end:
            raise ImageCorrupt(f"{name} is truncated: frame at byte {off} runs past the end")
        frames.append(view[off + 4 : off + 4 + n])
        off += 4 + n
    if len(frames) < 2:
        raise ImageCorrupt(f"{name} is truncated: no header and trailer")
    try:
        trailer = _decoder.decode(frames[-1])
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec reports a bad UTF-8 tag as UnicodeDecodeError, not DecodeError.
        trailer = None
    if not isinstance(trailer, Trailer):
        raise ImageCorrupt(f"{name} is truncated: it does not end with a trailer")
    if hashlib.sha256(view).digest() != data[end:]:
        raise ImageCorrupt(f"{name} is corrupt: checksum mismatch")
    try:
        records = [_decoder.decode(payload) for payload in frames[:-1]]
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ImageCorrupt(f"{name} has an undecodable record: {exc}") from exc
    header = records[0]
    if not isinstance(header, Header):
        raise ImageCorrupt(f"{name} does not start with a header")
    for rec in records:
        _check_names(name, rec)
    image = Image(
        header=header,
        mounts=[],
        fd_tables={},
        table_owner={},
        files={},
        tasks=[],
        trailer=trailer,
        checksum=data[end:].hex(),
        contents={},
    )
    current: list[Fd] | None = None
    declared: dict[int, int] = {}
    # The file whose content records may come next (the one just defined), and where
    # its data so far ends.
    owner: File | None = None
    content_end = 0
    content_bytes = 0
    for rec in records[1:]:
        if isinstance(rec, Content):
            _check_content(name, version, rec, owner, content_end)
            assert owner is not None
            image.contents.setdefault(owner.id, []).append(rec)
            content_end = rec.offset + len(rec.data)
            content_bytes += len(rec.data)
            continue
        owner = None
        if isinstance(rec, Holders):
            if version < 3:
                raise ImageCorrupt(f"{name}: a holders record in a version {version} image")
            image.outside.append(rec)
            continue
        if image.outside:
            raise ImageCorrupt(f"{name}: a {type(rec).__name__} record after the holders")
        if isinstance(rec, Fd):
            if current is None or rec.file not in image.files:
                raise ImageCorrupt(f"{name}: fd {rec.fd} refers to an undefined table or file")
            current.append(rec)
        elif isinstance(rec, File):
            ghost_file = rec.ghost_file
            if ghost_file is not None and ghost_file != rec.id and ghost_file not in image.files:
                raise ImageCorrupt(
                    f"{name}: file {rec.id}'s content is in undefined file {rec.ghost_file}"
                )
            image.files[rec.id] = rec
            owner, content_end = rec, 0
        elif isinstance(rec, FdTable):
            if rec.id in image.fd_tables:
                raise ImageCorrupt(f"{name}: fd table {rec.id} is defined twice")
            current = image.fd_tables[rec.id] = []
            image.table_owner[rec.id] = rec.owner
            declared[rec.id] = rec.count
        elif isinstance(rec, Task):
            if rec.fd_table is not None and rec.fd_table not in image.fd_tables:
                raise ImageCorrupt(f"{name}: task {rec.pid} refers to an undefined fd table")
            image.tasks.append(rec)
        elif isinstance(rec, MountTable):
            image.mounts.append(rec)
        else:
            raise ImageCorrupt(f"{name}: unexpected {type(rec).__name__} record in the body")
    for table, count in declared.items():
        if len(image.fd_tables[table]) != count:
            raise ImageCorrupt(
                f"{name}: fd table {table} declares {count} fds "
                f"but holds {len(image.fd_tables[table])}"
            )
    counts = (
        len(image.tasks),
        len(image.fd_tables),
        sum(len(v) for v in image.fd_tables.values()),
        len(image.files),
        len(records) - 1,
        sum(len(v) for v in image.contents.values()),
        content_bytes,
    )
    expected = (
        trailer.tasks,
        trailer.fd_tables,
        trailer.fds,
        trailer.files,
        trailer.records,
        trailer.contents,
        trailer.content_bytes,
    )
    if counts != expected:
        raise ImageCorrupt(f"{name}: body counts {counts} disagree with the trailer {expected}")
    return image


def _check_names(name: str, rec: object) -> None:
    """A name field and its ``_bytes`` must agree (docs/image-format.md, "Names")."""
    inner: list[object] = [rec]
    if isinstance(rec, MountTable):
        inner = list(rec.mounts)
    elif isinstance(rec, Holders):
        inner = list(rec.fds)
    for part in inner:
        field = bad_name(part)
        if field is not None:
            kind = type(rec).__name__.lower()
            raise ImageCorrupt(f"{name}: a {kind} record's {field} is not its {field}_bytes")


def _check_content(name: str, version: int, rec: Content, owner: File | None, end: int) -> None:
    """A content record must follow its own file (or that file's previous content), in
    ascending, non-overlapping order, within the file's size, and only for a saved
    ghost."""
    if version < 2:
        raise ImageCorrupt(f"{name}: a content record in a version {version} image")
    if owner is None or rec.file != owner.id:
        raise ImageCorrupt(f"{name}: content of file {rec.file} does not follow that file")
    if owner.ghost != "saved" or owner.ghost_file != owner.id:
        raise ImageCorrupt(f"{name}: content for file {rec.file}, whose data is not saved there")
    if not rec.data or rec.offset < end or rec.offset + len(rec.data) > owner.size:
        raise ImageCorrupt(
            f"{name}: content of file {rec.file} at {rec.offset} (+{len(rec.data)}) is "
            f"empty, out of order or past its size {owner.size}"
        )
