"""Reading an image: a decoder fed bytes as they arrive, which checks everything.

Sans-I/O (as h11's parsers): :class:`ImageDecoder` is given the input in pieces of any
size (``feed``), then told it ended (``close``), and returns the verified
:class:`Image`.  The file or pipe is read at the edge (``_image.read_image``).

Memory: a frame is accumulated from the bytes that arrive, never allocated from what
its length field promises, and its bytes are dropped once decoded (handler records,
``msgspec.Raw``, keep a reference to the copy they were decoded from, as part of the
image); so besides the decoded image, the decoder holds at most what one read brought
and the largest frame actually present.  The whole input is capped (``limit``), so an
endless stream of valid-looking frames ends too.

Order of verdicts: the framing (magic, version, frame lengths, the trailer and digest at
the end) first, then the digest, then the first record that failed a check (records are
decoded and checked as they arrive, but their verdict waits for the digest, so a damaged
image is reported as damaged, not as whatever its damage happens to look like).
"""

from __future__ import annotations

import hashlib

import msgspec

from ._errors import ImageCorrupt, ImageVersionError, NotAnImage
from ._records import BE32 as U32
from ._records import (
    MAGIC,
    MAX_IMAGE_SIZE,
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
from ._validate import (
    MAX_DATA_DEPTH,
    check_file,
    check_header,
    check_names,
    check_references,
    check_task,
)

__all__ = ["DIGEST_SIZE", "MAGIC", "MAX_FRAME", "MAX_IMAGE_SIZE", "Image", "ImageDecoder"]

MAX_FRAME = 1 << 30
"""The longest frame a reader accepts (1 GiB)."""
DIGEST_SIZE = 32

_decoder = msgspec.msgpack.Decoder(Record)
_generic = msgspec.msgpack.Decoder()


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
    (``Header.endpoint_search`` ``system``)."""

    def fds(self, table: int | None) -> list[tuple[Fd, File]]:
        """The fds of one fd table (a Task's ``fd_table``) with their open files."""
        if table is None:
            return []
        return [(fd, self.files[fd.file]) for fd in self.fd_tables[table]]


def _kind_of(payload: memoryview) -> str:
    """The ``kind`` a frame claims, for an error message about it."""
    try:
        kind = _generic.decode(payload).get("kind")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, AttributeError):
        return "?"  # not a well-formed map
    return kind if isinstance(kind, str) else "?"


class ImageDecoder:
    """Decodes and verifies one image from its bytes, given in pieces of any size."""

    def __init__(self, name: str = "image", *, limit: int = MAX_IMAGE_SIZE) -> None:
        self.name = name
        self.limit = limit
        self._buf = bytearray()
        self._total = 0
        self._stage = "magic"  # magic, version, frames, digest
        self._version = 0
        self._frames = 0
        self._hash = hashlib.sha256()
        self._error: ImageCorrupt | None = None
        self._body = _Body(name)
        self._trailer: Trailer | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the input.  Raises an ImageError as soon as the
        framing shows the input is not a readable image."""
        self._total += len(data)
        if self._total > self.limit:
            raise ImageCorrupt(f"{self.name} is larger than {self.limit} bytes, the most read")
        buf = self._buf
        buf += data
        if self._stage == "magic":
            head = bytes(buf[: len(MAGIC)])
            if not MAGIC.startswith(head):
                raise NotAnImage(f"{self.name} is not an asyckpt image")
            if len(head) < len(MAGIC):
                return
            self._stage = "version"
        if self._stage == "version":
            if len(buf) < len(MAGIC) + 4:
                return
            (version,) = U32.unpack_from(buf, len(MAGIC))
            if version not in READABLE_VERSIONS:
                raise ImageVersionError(
                    f"{self.name} has image format version {version}; this asyckpt reads "
                    + " and ".join(map(str, READABLE_VERSIONS))
                )
            self._version = version
            self._body.version = version
            self._stage = "frames"
            self._consume(len(MAGIC) + 4)
        if self._stage == "frames":
            self._frames_from_buffer()
        if self._stage == "digest" and len(buf) > DIGEST_SIZE:
            raise ImageCorrupt(f"{self.name} has data after its digest")

    def _consume(self, n: int) -> None:
        with memoryview(self._buf) as view:
            self._hash.update(view[:n])
        del self._buf[:n]

    def _frames_from_buffer(self) -> None:
        buf = self._buf
        have = len(buf)
        if have < 4:
            return
        (first,) = U32.unpack_from(buf, 0)
        if have - 4 < first <= MAX_FRAME:
            return  # not one whole frame yet (a long frame is copied once, when whole)
        # One copy of the whole frames, decoded in place: a handler record (msgspec.Raw)
        # keeps a reference to the copy rather than a copy of its own.
        spans = []
        off = 0
        too_long = None
        while have - off >= 4:
            (n,) = U32.unpack_from(buf, off)
            if n > MAX_FRAME:
                too_long = off, n  # an error only if no trailer comes before it
                break
            if have - off - 4 < n:
                break
            spans.append((off + 4, off + 4 + n))
            off += 4 + n
        data = bytes(buf[:off])
        consumed = off
        decode, add = _decoder.decode, self._body.add
        with memoryview(data) as view:
            for start, end in spans:
                payload = view[start:end]
                if self._frames and self._error is None:
                    # The common case inline: a body record that decodes (anything else,
                    # the trailer included, is decoded again by _frame).
                    try:
                        rec = decode(payload)
                    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                        rec = None
                    if rec is not None and type(rec) is not Trailer:
                        self._frames += 1
                        try:
                            add(rec)
                        except ImageCorrupt as exc:
                            self._error = exc
                        continue
                if self._frame(payload):
                    self._stage = "digest"
                    consumed = end
                    break
            else:
                if too_long is not None:
                    at = self._total - have + too_long[0]
                    raise ImageCorrupt(
                        f"{self.name} is corrupt: the frame at byte {at} claims {too_long[1]} "
                        f"bytes, more than the {MAX_FRAME} a frame may have"
                    )
        self._consume(consumed)

    def _frame(self, payload: memoryview) -> bool:
        """Decode and check one frame; True when it was the trailer."""
        index = self._frames
        self._frames += 1
        try:
            rec = _decoder.decode(payload)
        except msgspec.ValidationError as exc:
            kind = _kind_of(payload)
            self._fail(f"record {index} ({kind}): {exc}")
            return kind == "trailer"  # a bad trailer still ends the frames
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec reports a bad UTF-8 string as UnicodeDecodeError, not DecodeError.
            self._fail(f"record {index} is undecodable: {exc}")
            return False
        except RecursionError:  # msgspec skipping File.data nested past the stack's depth
            self._fail(f"record {index} nests deeper than {MAX_DATA_DEPTH} levels")
            return False
        if type(rec) is Trailer:
            self._trailer = rec
            return True
        if self._error is None:
            try:
                if index:
                    self._body.add(rec)
                elif type(rec) is Header:
                    check_header(self.name, rec)
                    check_names(self.name, rec)
                    self._body.header = rec
                else:
                    raise ImageCorrupt(f"{self.name} does not start with a header")
            except ImageCorrupt as exc:
                self._error = exc
        return False

    def _fail(self, what: str) -> None:
        if self._error is None:
            self._error = ImageCorrupt(f"{self.name}: {what}")

    def close(self) -> Image:
        """The input ended: the verified image, or the ImageError that says why not."""
        name = self.name
        if self._stage == "magic":
            raise ImageCorrupt(f"{name} is truncated inside its magic number")
        if self._stage == "version":
            raise ImageCorrupt(f"{name} is truncated before its format version")
        if self._stage == "frames":
            if self._frames == 0 and not self._buf:
                raise ImageCorrupt(f"{name} is truncated: no header and trailer")
            raise ImageCorrupt(f"{name} is truncated: it does not end with a trailer and digest")
        if len(self._buf) < DIGEST_SIZE:
            raise ImageCorrupt(f"{name} is truncated inside its digest")
        digest = bytes(self._buf)
        if self._hash.digest() != digest:
            raise ImageCorrupt(f"{name} is corrupt: checksum mismatch")
        if self._frames < 2:
            raise ImageCorrupt(f"{name} is truncated: no header and trailer")
        if self._error is not None:
            raise self._error
        assert self._trailer is not None
        return self._body.finish(self._trailer, digest.hex())


class _Body:
    """The body's records, assembled into an :class:`Image` and checked as they come."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = 0
        self.header: Header | None = None
        self.mounts: list[MountTable] = []
        self.fd_tables: dict[int, list[Fd]] = {}
        self.table_owner: dict[int, int] = {}
        self.files: dict[int, File] = {}
        self.tasks: list[Task] = []
        self.contents: dict[int, list[Content]] = {}
        self.outside: list[Holders] = []
        self.records = 0
        self._current: list[Fd] | None = None
        self._current_id = 0
        self._declared: dict[int, int] = {}
        # The file whose content records may come next (the one just defined), and where
        # its data so far ends.
        self._owner: File | None = None
        self._content_end = 0
        self._content_bytes = 0
        self._watched: list[tuple[int, int]] = []

    def add(self, rec: Record) -> None:
        name = self.name
        self.records += 1
        cls = type(rec)  # by frequency: fds, then files
        if cls is not Content:
            self._owner = None
        if self.outside and cls is not Holders:
            raise ImageCorrupt(f"{name}: a {cls.__name__} record after the holders")
        if cls is Fd:
            assert isinstance(rec, Fd)
            current = self._current
            file = self.files.get(rec.file)
            if current is None or file is None:
                raise ImageCorrupt(f"{name}: fd {rec.fd} refers to an undefined table or file")
            if not file.description:
                raise ImageCorrupt(
                    f"{name}: fd {rec.fd} refers to file {rec.file}, held by reference"
                )
            if current and current[-1].fd >= rec.fd:
                raise ImageCorrupt(
                    f"{name}: fd table {self._current_id}: fd {rec.fd} is out of order "
                    f"(after fd {current[-1].fd})"
                )
            current.append(rec)
        elif cls is File:
            assert isinstance(rec, File)
            watched = check_file(name, rec, self.files)
            if rec.path_bytes is not None or rec.fdinfo_bytes is not None:
                check_names(name, rec)
            if watched:
                self._watched += [(rec.id, t) for t in watched]
            self.files[rec.id] = rec
            self._owner, self._content_end = rec, 0
        elif cls is Content:
            assert isinstance(rec, Content)
            owner = self._owner
            _check_content(name, self.version, rec, owner, self._content_end)
            assert owner is not None
            self.contents.setdefault(owner.id, []).append(rec)
            self._content_end = rec.offset + len(rec.data)
            self._content_bytes += len(rec.data)
        elif cls is FdTable:
            assert isinstance(rec, FdTable)
            if rec.id in self.fd_tables:
                raise ImageCorrupt(f"{name}: fd table {rec.id} is defined twice")
            self._current = self.fd_tables[rec.id] = []
            self._current_id = rec.id
            self.table_owner[rec.id] = rec.owner
            self._declared[rec.id] = rec.count
        elif cls is Task:
            assert isinstance(rec, Task)
            check_task(name, rec, self.fd_tables, self.files, self.version)
            check_names(name, rec)
            self.tasks.append(rec)
        elif cls is MountTable:
            assert isinstance(rec, MountTable)
            check_names(name, rec)
            self.mounts.append(rec)
        elif cls is Holders:
            assert isinstance(rec, Holders)
            if self.version < 3:
                raise ImageCorrupt(f"{name}: a holders record in a version {self.version} image")
            check_names(name, rec)
            self.outside.append(rec)
        else:
            raise ImageCorrupt(f"{name}: unexpected {cls.__name__} record in the body")

    def finish(self, trailer: Trailer, checksum: str) -> Image:
        name = self.name
        assert self.header is not None
        for table, count in self._declared.items():
            if len(self.fd_tables[table]) != count:
                raise ImageCorrupt(
                    f"{name}: fd table {table} declares {count} fds "
                    f"but holds {len(self.fd_tables[table])}"
                )
        check_references(name, self._watched, self.files)
        counts = (
            len(self.tasks),
            len(self.fd_tables),
            sum(len(v) for v in self.fd_tables.values()),
            len(self.files),
            self.records,
            sum(len(v) for v in self.contents.values()),
            self._content_bytes,
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
        return Image(
            header=self.header,
            mounts=self.mounts,
            fd_tables=self.fd_tables,
            table_owner=self.table_owner,
            files=self.files,
            tasks=self.tasks,
            trailer=trailer,
            checksum=checksum,
            contents=self.contents,
            outside=self.outside,
        )


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
