"""Tests of the image format: ImageWriter's atomic output and parse_image's verification."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from asyckpt._errors import ImageCorrupt, ImageError, ImageVersionError, NotAnImage, OutputError
from asyckpt._image import MAGIC, ImageWriter, parse_image, read_image
from asyckpt._records import (
    FORMAT_VERSION,
    NO_DATA,
    Content,
    Fd,
    FdTable,
    File,
    Header,
    MountEntry,
    MountTable,
    PluginInfo,
    Task,
    Thread,
    Trailer,
)

# --- building images by hand -------------------------------------------------------------


def make_header() -> Header:
    return Header(
        format_version=FORMAT_VERSION,
        asyckpt_version="0.1.0",
        kernel="6.1.0-18-amd64",
        machine="x86_64",
        hostname="build-host",
        time="2024-05-01T12:00:00.000+00:00",
        root_pid=100,
        freezer="cgroup-v2",
        freezer_cgroup="/sys/fs/cgroup/user.slice/asyckpt-100",
        plugins=[PluginInfo(name="reg", distribution="asyckpt", version="0.1.0", record_tag="reg")],
    )


def make_body() -> list[msgspec.Struct]:
    return [
        MountTable(
            id=4026531841,
            mounts=[
                MountEntry(
                    mnt_id=27,
                    parent_id=1,
                    dev="254:0",
                    root="/",
                    mount_point="/",
                    options="rw,relatime",
                    fstype="ext4",
                    source="/dev/vda1",
                ),
                MountEntry(
                    mnt_id=40,
                    parent_id=27,
                    dev="0:23",
                    root="/",
                    mount_point="/mnt/my disk",
                    options="rw",
                    fstype="tmpfs",
                    source="tmpfs",
                ),
            ],
        ),
        File(
            id=1,
            type="reg",
            handler="reg",
            flags=0o100002,
            access="rw",
            pos=5,
            mnt_id=27,
            dev=65024,
            ino=2146436,
            path="/tmp/x",
            st_mode=stat.S_IFREG | 0o644,
            nlink=1,
            size=5,
            mtime_ns=1714564800123456789,
            fdinfo=[("lock", "1: POSIX  ADVISORY  WRITE 100 fe:00:2146436 0 EOF")],
            data=msgspec.Raw(msgspec.msgpack.encode({"kind": "reg", "sha256": None})),
        ),
        File(
            id=2,
            type="pipe",
            handler=None,
            flags=0,
            access="r",
            pos=0,
            mnt_id=16,
            dev=14,
            ino=211729,
            path="pipe:[211729]",
            st_mode=stat.S_IFIFO | 0o600,
            nlink=1,
            data=NO_DATA,
        ),
        FdTable(id=1, owner=100, count=3),
        Fd(fd=0, file=2, cloexec=False),
        Fd(fd=1, file=1, cloexec=False),
        Fd(fd=3, file=1, cloexec=True),
        Task(
            pid=100,
            ppid=1,
            comm="a b) c)",
            starttime=51771,
            state="S",
            uid=1000,
            gid=1000,
            fd_table=1,
            threads=[Thread(tid=100, fd_table=1), Thread(tid=101, fd_table=1)],
            mnt_ns=4026531841,
        ),
        Task(
            pid=102,
            ppid=100,
            comm="sleep",
            starttime=51800,
            state="Z",
            uid=1000,
            gid=1000,
            fd_table=None,
        ),
    ]


def make_trailer(**overrides: int) -> Trailer:
    counts = {"tasks": 2, "fd_tables": 1, "fds": 3, "files": 2, "records": 0}
    counts.update(overrides)
    return Trailer(**counts, generic={"pipe": 1}, freezing_ms=1.5, frozen_ms=3.25, capture_ms=4.0)


def write_image(dest: Path, body: list[msgspec.Struct] | None = None, **trailer: int) -> bytes:
    """Write an image through ImageWriter, the body in two batches, and return its bytes."""
    body = make_body() if body is None else body
    writer = ImageWriter(dest)
    writer.write_body(body[:3])
    writer.write_body(body[3:])
    size = writer.finish(make_header(), make_trailer(**trailer))
    data = dest.read_bytes()
    assert size == len(data)
    return data


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def assemble(
    records: list[msgspec.Struct],
    trailer: Trailer,
    *,
    version: int = FORMAT_VERSION,
    checksum: bytes | None = None,
) -> bytes:
    """Build an image straight from the grammar, independently of ImageWriter.

    ``records`` is everything between VERSION and the trailer (header first, normally);
    the checksum is computed unless given.
    """
    head = MAGIC + struct.pack(">I", version)
    head += b"".join(frame(msgspec.msgpack.encode(r)) for r in records)
    return with_digest(head + frame(msgspec.msgpack.encode(trailer)), checksum)


def with_digest(data: bytes, digest: bytes | None = None) -> bytes:
    """The grammar's DIGEST: sha256 of every byte before it, appended."""
    return data + (hashlib.sha256(data).digest() if digest is None else digest)


def valid_parts() -> tuple[list[msgspec.Struct], Trailer]:
    body = make_body()
    return [make_header(), *body], make_trailer(records=len(body))


@pytest.fixture(scope="module")
def image_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_image(tmp_path_factory.mktemp("img") / "valid.ackpt")


def trailer_offset(data: bytes) -> int:
    off = len(MAGIC) + 4
    last = off
    while off < len(data) - 32:
        last = off
        (n,) = struct.unpack_from(">I", data, off)
        off += 4 + n
    assert off == len(data) - 32
    return last


# --- the layout --------------------------------------------------------------------------


def test_magic_is_pinned() -> None:
    assert bytes.fromhex("89 41 43 4B 50 54 0D 0A 1A 0A") == MAGIC
    assert MAGIC == b"\x89ACKPT\r\n\x1a\n"
    assert len(MAGIC) == 10


@pytest.mark.parametrize(
    ("record", "tag"),
    [
        (make_header(), "header"),
        (make_body()[0], "mounts"),
        (make_body()[1], "file"),
        (make_body()[3], "fdtable"),
        (make_body()[4], "fd"),
        (make_body()[7], "task"),
        (make_trailer(), "trailer"),
        (Content(file=1, offset=0, data=b"x"), "content"),
    ],
)
def test_record_tags_are_pinned(record: msgspec.Struct, tag: str) -> None:
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(record))
    assert isinstance(decoded, dict)
    assert decoded["kind"] == tag


def test_layout_follows_the_grammar(image_bytes: bytes) -> None:
    data = image_bytes
    assert data[:10] == MAGIC
    assert data[10:14] == b"\x00\x00\x00\x04"
    # Walk FRAME*: each one is a msgpack map with a "kind".
    kinds = []
    off = 14
    while off < len(data) - 32:
        (n,) = struct.unpack_from(">I", data, off)
        payload = msgspec.msgpack.decode(data[off + 4 : off + 4 + n])
        kinds.append(payload["kind"])
        off += 4 + n
    assert off == len(data) - 32
    assert kinds == [
        "header",
        "mounts",
        "file",
        "file",
        "fdtable",
        "fd",
        "fd",
        "fd",
        "task",
        "task",
        "trailer",
    ]


def test_writer_output_equals_the_grammar_built_by_hand(image_bytes: bytes) -> None:
    records, trailer = valid_parts()
    assert assemble(records, trailer) == image_bytes


def test_trailer_checksum_and_records_filled_by_writer(image_bytes: bytes) -> None:
    off = trailer_offset(image_bytes)
    trailer = msgspec.msgpack.decode(image_bytes[off + 4 : -32], type=Trailer)
    assert trailer.records == 9
    assert image_bytes[-32:] == hashlib.sha256(image_bytes[:-32]).digest()


# --- writing -----------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    write_image(dest)
    image = read_image(dest)
    body = make_body()
    assert image.header == make_header()
    assert image.mounts == [body[0]]
    assert image.files == {1: body[1], 2: body[2]}
    assert image.fd_tables == {1: body[4:7]}
    assert image.table_owner == {1: 100}
    assert image.tasks == body[7:9]
    assert image.files[1].data == body[1].data
    assert msgspec.msgpack.decode(image.files[1].data) == {"kind": "reg", "sha256": None}
    assert image.files[2].data == NO_DATA
    expected_trailer = make_trailer(records=9)
    assert image.trailer == expected_trailer
    # read_image also takes a str path.
    assert read_image(str(dest)) == image


def test_round_trip_empty_body(tmp_path: Path) -> None:
    dest = tmp_path / "empty.ackpt"
    write_image(dest, body=[], tasks=0, fd_tables=0, fds=0, files=0)
    image = read_image(dest)
    assert (image.mounts, image.fd_tables, image.files, image.tasks) == ([], {}, {}, [])
    assert image.trailer.records == 0


def test_writer_counts_records_and_bytes(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    writer = ImageWriter(dest)
    body = make_body()
    for rec in body:
        writer.write_body([rec])
    size = writer.finish(make_header(), make_trailer())
    assert writer.records == len(body)
    assert writer.bytes == size == dest.stat().st_size


def test_image_is_mode_0600(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    old = os.umask(0)
    try:
        write_image(dest)
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_only_the_image_is_left_behind(tmp_path: Path) -> None:
    write_image(tmp_path / "out.ackpt")
    assert os.listdir(tmp_path) == ["out.ackpt"]


def test_existing_dest_is_refused_without_force(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    dest.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        ImageWriter(dest)
    assert dest.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.ackpt"]


def test_dangling_symlink_dest_is_refused_without_force(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    dest.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="exists"):
        ImageWriter(dest)
    assert not (tmp_path / "nowhere").exists()


def test_existing_dest_is_replaced_with_force(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    dest.write_bytes(b"old")
    dest.chmod(0o644)
    writer = ImageWriter(dest, force=True)
    writer.write_body(make_body())
    writer.finish(make_header(), make_trailer())
    assert read_image(dest).trailer.records == 9
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["out.ackpt"]


def test_dest_appearing_during_capture_is_not_clobbered(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    writer = ImageWriter(dest)
    writer.write_body(make_body())
    dest.write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="exists"):
        writer.finish(make_header(), make_trailer())
    assert dest.read_bytes() == b"someone else's"
    assert os.listdir(tmp_path) == ["out.ackpt"]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        pytest.param(lambda d: (d / "out").mkdir() or d / "out", "is a directory", id="dir"),
        pytest.param(lambda d: d / "missing" / "out", "does not exist", id="no-parent"),
    ],
)
def test_unwritable_destinations(tmp_path: Path, setup: Callable[[Path], Path], match: str) -> None:
    dest = setup(tmp_path)
    with pytest.raises(OutputError, match=match):
        ImageWriter(dest, force=True)


@pytest.mark.parametrize("written", [0, 1, 3])
def test_abort_leaves_nothing(tmp_path: Path, written: int) -> None:
    writer = ImageWriter(tmp_path / "out.ackpt")
    assert os.listdir(tmp_path) == []  # unnamed until it is complete
    for _ in range(written):
        writer.write_body(make_body())
    writer.abort()
    assert os.listdir(tmp_path) == []
    writer.abort()  # idempotent
    assert os.listdir(tmp_path) == []


def test_abort_after_finish_keeps_the_image(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    writer = ImageWriter(dest)
    writer.write_body(make_body())
    writer.finish(make_header(), make_trailer())
    writer.abort()
    assert read_image(dest).trailer.records == 9


def test_failing_finish_leaves_nothing(tmp_path: Path) -> None:
    writer = ImageWriter(tmp_path / "out.ackpt")
    writer.write_body(make_body())
    with pytest.raises(AttributeError):
        writer.finish(make_header(), object())  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


# --- reading: damaged and foreign files --------------------------------------------------


def test_every_truncation_is_rejected(image_bytes: bytes) -> None:
    accepted = []
    wrong = []
    for cut in range(len(image_bytes)):
        try:
            parse_image(image_bytes[:cut])
        except (ImageCorrupt, NotAnImage):
            continue
        except Exception as exc:
            wrong.append((cut, exc))
        else:
            accepted.append(cut)
    assert accepted == []
    assert wrong == []


def test_truncation_is_reported_as_corrupt_not_foreign(image_bytes: bytes) -> None:
    for cut in range(1, len(image_bytes)):
        with pytest.raises(ImageCorrupt):
            parse_image(image_bytes[:cut])


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_flip_after_the_magic_is_rejected(image_bytes: bytes, mask: int) -> None:
    trailer_at = trailer_offset(image_bytes)
    accepted = []
    wrong = []
    for i in range(len(MAGIC), len(image_bytes)):
        damaged = bytearray(image_bytes)
        damaged[i] ^= mask
        try:
            parse_image(bytes(damaged))
        except ImageError:
            continue
        except Exception as exc:
            wrong.append((i, repr(exc)))
        else:
            accepted.append(f"{i} (trailer+{i - trailer_at})" if i >= trailer_at else str(i))
    assert accepted == [], f"accepted with byte flipped: {accepted}"
    assert wrong == []


@pytest.mark.parametrize("i", range(len(MAGIC)))
def test_a_byte_flip_in_the_magic_is_not_an_image(image_bytes: bytes, i: int) -> None:
    damaged = bytearray(image_bytes)
    damaged[i] ^= 0x20
    with pytest.raises(NotAnImage):
        parse_image(bytes(damaged))


FOREIGN_CASES = [
    pytest.param(b"hello world\n", NotAnImage, id="text"),
    pytest.param(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00",
        NotAnImage,
        id="png",
    ),
    pytest.param(b"\x7fELF\x02\x01\x01\x00" + bytes(8), NotAnImage, id="elf"),
    pytest.param(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", NotAnImage, id="gzip"),
    pytest.param(b"\x89ACKPT\n\x1a\n\x00\x00\x00\x01", NotAnImage, id="crlf-mangled-to-lf"),
    pytest.param(b"\x89ACKPT\r\r\n\x1a\n\x00\x00\x00\x01", NotAnImage, id="lf-mangled-to-crlf"),
    pytest.param(b"\x09ACKPT\r\n\x1a\n\x00\x00\x00\x01", NotAnImage, id="high-bit-stripped"),
    pytest.param(b"\x89ACKPT", ImageCorrupt, id="magic-prefix"),
    pytest.param(MAGIC, ImageCorrupt, id="magic-only"),
    pytest.param(MAGIC + b"\x00\x00\x00\x01", ImageCorrupt, id="no-frames"),
    pytest.param(MAGIC + b"\x00\x00\x00\x01\xff\xff\xff\xff", ImageCorrupt, id="huge-frame"),
]


@pytest.mark.parametrize(("data", "error"), FOREIGN_CASES)
def test_foreign_and_stub_files(tmp_path: Path, data: bytes, error: type[ImageError]) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    with pytest.raises(error):
        read_image(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises((NotAnImage, ImageCorrupt)):
        read_image(path)


def test_directory_and_missing_file_are_not_images(tmp_path: Path) -> None:
    with pytest.raises(NotAnImage):
        read_image(tmp_path)
    with pytest.raises(NotAnImage):
        read_image(tmp_path / "missing")


@pytest.mark.parametrize("version", [0, 5, 0x100, 0x01000000, 0xFFFFFFFF])
def test_wrong_format_version(image_bytes: bytes, version: int) -> None:
    patched = image_bytes[:10] + struct.pack(">I", version) + image_bytes[14:]
    with pytest.raises(ImageVersionError, match=f"version {version}"):
        parse_image(patched)
    # Also when the checksum is right for the patched bytes.
    records, trailer = valid_parts()
    with pytest.raises(ImageVersionError):
        parse_image(assemble(records, trailer, version=version))


@pytest.mark.parametrize("field", ["tasks", "fd_tables", "fds", "files", "records"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_trailer_counts_that_disagree(field: str, delta: int) -> None:
    records, trailer = valid_parts()
    setattr(trailer, field, getattr(trailer, field) + delta)
    with pytest.raises(ImageCorrupt, match="disagree"):
        parse_image(assemble(records, trailer))


@pytest.mark.parametrize("field", ["tasks", "fd_tables", "fds", "files"])
def test_trailer_counts_that_disagree_through_the_writer(tmp_path: Path, field: str) -> None:
    dest = tmp_path / "out.ackpt"
    counts = {"tasks": 2, "fd_tables": 1, "fds": 3, "files": 2}
    write_image(dest, **{field: counts[field] + 1})
    with pytest.raises(ImageCorrupt, match="disagree"):
        read_image(dest)


def _with(body_edit: Callable[[list[msgspec.Struct]], list[msgspec.Struct]]) -> bytes:
    records, trailer = valid_parts()
    edited = [records[0], *body_edit(records[1:])]
    trailer.records = len(edited) - 1
    return assemble(edited, trailer)


STRUCTURE_CASES = [
    # Images whose checksum is right but whose structure is not.
    pytest.param(lambda: _with(lambda b: b[:-1]), id="task-missing"),
    pytest.param(
        lambda: assemble(valid_parts()[0], valid_parts()[1], checksum=b"\0" * 32),
        id="wrong-checksum",
    ),
    pytest.param(
        lambda: assemble(valid_parts()[0], valid_parts()[1], checksum=b""),
        id="empty-checksum",
    ),
    pytest.param(lambda: _with(lambda b: [b[4], *b]), id="fd-before-any-fdtable"),
    pytest.param(lambda: _with(lambda b: [*b[:3], *b[4:]]), id="fds-without-their-fdtable"),
    pytest.param(
        lambda: _with(lambda b: [b[0], b[3], *b[4:], b[1], b[2]]), id="fd-before-its-file"
    ),
    pytest.param(
        lambda: _with(lambda b: [*b[:7], Fd(fd=9, file=77, cloexec=False), *b[7:]]),
        id="fd-names-undefined-file",
    ),
    pytest.param(lambda: _with(lambda b: [*b[:3], *b[7:], *b[3:7]]), id="task-before-its-fdtable"),
    pytest.param(lambda: _with(lambda b: [*b, make_header()]), id="second-header"),
    pytest.param(lambda: _with(lambda b: [*b, make_trailer()]), id="trailer-in-body"),
    pytest.param(lambda: assemble(make_body(), make_trailer(records=8)), id="no-header-first"),
    pytest.param(lambda: _image_plus(b"\x00"), id="junk-byte-after-trailer"),
    pytest.param(
        lambda: _image_plus(frame(msgspec.msgpack.encode(Fd(fd=1, file=1, cloexec=False)))),
        id="frame-after-trailer",
    ),
    pytest.param(
        lambda: _image_plus(frame(msgspec.msgpack.encode(make_trailer(records=9)))),
        id="second-trailer-appended",
    ),
    pytest.param(lambda: _raw_body(b"\xc1"), id="undecodable-msgpack"),
    pytest.param(
        lambda: _raw_body(msgspec.msgpack.encode({"kind": "socket", "x": 1})), id="unknown-kind"
    ),
    pytest.param(lambda: _raw_body(msgspec.msgpack.encode([1, 2, 3])), id="not-a-map"),
    pytest.param(
        lambda: _raw_body(msgspec.msgpack.encode({"kind": "fd", "fd": "zero"})),
        id="wrong-field-type",
    ),
]


def _image_plus(extra: bytes) -> bytes:
    records, trailer = valid_parts()
    return assemble(records, trailer) + extra


def _raw_body(payload: bytes) -> bytes:
    """A valid image whose body has one extra, bad frame, with a correct checksum."""
    records, trailer = valid_parts()
    head = MAGIC + struct.pack(">I", FORMAT_VERSION)
    head += b"".join(frame(msgspec.msgpack.encode(r)) for r in records) + frame(payload)
    trailer.records += 1
    return with_digest(head + frame(msgspec.msgpack.encode(trailer)))


@pytest.mark.parametrize("build", STRUCTURE_CASES)
def test_bad_structure_is_corrupt(build: Callable[[], bytes]) -> None:
    with pytest.raises(ImageCorrupt):
        parse_image(build())


def test_hand_built_valid_image_parses() -> None:
    records, trailer = valid_parts()
    image = parse_image(assemble(records, trailer))
    assert image.header == records[0]
    assert image.tasks == records[8:10]


def test_fdtable_count_must_match_its_fds() -> None:
    # FdTable documents "its count Fd records follow"; an image where they do not is
    # inconsistent even though every trailer count and the checksum agree.
    records, trailer = valid_parts()
    table = records[4]
    assert isinstance(table, FdTable)
    table.count = 2
    with pytest.raises(ImageCorrupt):
        parse_image(assemble(records, trailer))


# --- format version 2: content records -----------------------------------------------------


def ghost_file(id: int, size: int, ghost: str = "saved", ghost_file: int | None = None) -> File:
    return File(
        id=id,
        type="reg",
        handler="reg",
        flags=0o100002,
        access="rw",
        pos=0,
        mnt_id=27,
        dev=65024,
        ino=900 + id,
        path=f"/tmp/gone{id}",
        deleted=True,
        st_mode=stat.S_IFREG | 0o600,
        nlink=0,
        size=size,
        path_state="deleted",
        ghost=ghost,
        ghost_file=id if ghost == "saved" and ghost_file is None else ghost_file,
        allocated=8192,
    )


def content_image(
    contents: list[Content],
    *,
    size: int = 10000,
    ghost: str = "saved",
    version: int = FORMAT_VERSION,
    between: list[msgspec.Struct] | None = None,
) -> bytes:
    """An image with one unlinked file, then ``between``, then ``contents``, then its fd."""
    body: list[msgspec.Struct] = [
        FdTable(id=1, owner=100, count=1),
        ghost_file(1, size, ghost),
        *(between or []),
        *contents,
        Fd(fd=3, file=1, cloexec=False),
        Task(pid=100, ppid=1, comm="x", starttime=1, state="S", uid=0, gid=0, fd_table=1),
    ]
    trailer = Trailer(
        tasks=1,
        fd_tables=1,
        fds=1,
        files=1 + sum(isinstance(r, File) for r in between or []),
        records=len(body),
        contents=len(contents),
        content_bytes=sum(len(c.data) for c in contents),
    )
    return assemble([make_header(), *body], trailer, version=version)


def test_content_records_are_read_in_order() -> None:
    chunks = [
        Content(file=1, offset=0, data=b"A" * 4096),
        Content(file=1, offset=4096, data=b"A" * 100),
        Content(file=1, offset=8192, data=b"B" * 1808),
    ]
    image = parse_image(content_image(chunks))
    assert image.contents == {1: chunks}
    assert image.files[1].ghost == "saved" and image.files[1].ghost_file == 1


@pytest.mark.parametrize(
    ("contents", "kwargs", "message"),
    [
        ([Content(file=2, offset=0, data=b"x")], {}, "does not follow that file"),
        (
            [Content(file=1, offset=100, data=b"x"), Content(file=1, offset=50, data=b"y")],
            {},
            "out of order",
        ),
        (
            [Content(file=1, offset=0, data=b"xx"), Content(file=1, offset=1, data=b"y")],
            {},
            "out of order",
        ),
        ([Content(file=1, offset=9999, data=b"xy")], {}, "past its size"),
        ([Content(file=1, offset=0, data=b"")], {}, "empty"),
        ([Content(file=1, offset=0, data=b"x")], {"ghost": "too-big"}, "not saved there"),
        ([Content(file=1, offset=0, data=b"x")], {"version": 1}, "version 1 image"),
        (
            [Content(file=1, offset=0, data=b"x")],
            {"between": [Fd(fd=4, file=1, cloexec=False)]},
            "does not follow that file",
        ),
    ],
)
def test_bad_content_records_are_corrupt(
    contents: list[Content], kwargs: dict[str, object], message: str
) -> None:
    data = content_image(contents, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ImageCorrupt, match=message):
        parse_image(data)


@pytest.mark.parametrize(("field", "delta"), [("contents", 1), ("content_bytes", 1)])
def test_content_counts_must_match_the_trailer(field: str, delta: int) -> None:
    records, trailer = valid_parts()
    setattr(trailer, field, getattr(trailer, field) + delta)
    with pytest.raises(ImageCorrupt, match="disagree"):
        parse_image(assemble(records, trailer))


def test_content_of_an_undefined_file_is_corrupt() -> None:
    other = ghost_file(2, 10, ghost="saved", ghost_file=7)
    with pytest.raises(ImageCorrupt, match="undefined file 7"):
        parse_image(content_image([], between=[other]))


def test_version_1_images_are_still_read() -> None:
    """A version 1 image (no content records, no ghost or path fields) reads with the
    new fields at their defaults."""
    new_fields = ("path_state", "ghost", "ghost_file", "allocated", "ghost_error")
    v1_file = msgspec.msgpack.decode(msgspec.msgpack.encode(make_body()[1]))
    for k in new_fields:
        del v1_file[k]
    records, trailer = valid_parts()
    head = MAGIC + struct.pack(">I", 1)
    for r in records:
        payload = msgspec.msgpack.encode(v1_file if r is records[2] else r)
        head += frame(payload)
    v1_trailer = {
        k: v
        for k, v in msgspec.to_builtins(trailer).items()
        if k not in ("contents", "content_bytes")
    }
    image = parse_image(with_digest(head + frame(msgspec.msgpack.encode(v1_trailer))))
    assert image.header.format_version == FORMAT_VERSION  # make_header's; the frame says 1
    f = image.files[1]
    assert (f.path_state, f.ghost, f.ghost_file, f.allocated) == ("unchecked", "unchecked", None, 0)
    assert image.contents == {}
