"""Every image is checked before it is believed: crafted records with a recomputed digest,
and inputs that are not image files at all (devices, FIFOs, standard input, lying frame
lengths, endless streams)."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import resource
import stat
import struct
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyckpt._decode import MAGIC, ImageDecoder
from asyckpt._errors import ImageCorrupt, NotAnImage
from asyckpt._image import parse_image, read_image
from asyckpt._validate import MAX_DATA_DEPTH, msgpack_depth

from .crafted import Rec, build, nested, seed

ASYCKPT = [sys.executable, "-m", "asyckpt"]


def _by(records: list[Rec], kind: str, **match: Any) -> Rec:
    return next(
        r for r in records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())
    )


def _edit(edit: Callable[[list[Rec]], object]) -> bytes:
    records = seed()
    edit(records)
    return build(records)


def _set(kind: str, field: str, value: Any, **match: Any) -> Callable[[list[Rec]], object]:
    return lambda records: _by(records, kind, **match).__setitem__(field, value)


def _epoll_target(file: Any) -> Callable[[list[Rec]], object]:
    def edit(records: list[Rec]) -> None:
        _by(records, "file", id=8)["data"]["targets"][0]["file"] = file

    return edit


def _insert_after(kind: str, new: Rec, **match: Any) -> Callable[[list[Rec]], object]:
    def edit(records: list[Rec]) -> None:
        records.insert(records.index(_by(records, kind, **match)) + 1, new)

    return edit


def _mapping(field: int, value: Any, index: int = 0) -> Callable[[list[Rec]], object]:
    def edit(records: list[Rec]) -> None:
        _by(records, "task", pid=100)["mappings"][index][field] = value

    return edit


CRAFTED = [
    # (id, edit of the seed, what the one-line error must name)
    ("unknown-access", _set("file", "access", "2w", id=3), "`$.access`"),
    ("unknown-type", _set("file", "type", "door", id=1), "`$.type`"),
    ("unknown-path-state", _set("file", "path_state", "gone", id=1), "`$.path_state`"),
    ("unknown-ghost", _set("file", "ghost", "lost", id=1), "`$.ghost`"),
    ("negative-dev", _set("file", "dev", -1, id=1), "`$.dev`"),
    ("negative-rdev", _set("file", "rdev", -5, id=10), "`$.rdev`"),
    ("negative-fd", _set("fd", "fd", -1, file=1), "`$.fd`"),
    ("file-id-zero", _set("file", "id", 0, id=1), "`$.id`"),
    ("negative-pid", _set("task", "pid", -100, pid=100), "`$.pid`"),
    ("huge-uid", _set("task", "uid", 2**40, pid=100), "`$.uid`"),
    ("size-past-loff_t", _set("file", "size", 2**63, id=9), "`$.size`"),
    ("content-past-loff_t", _set("content", "offset", 2**63, offset=8192), "`$.offset`"),
    ("nan-timing", _set("trailer", "freezing_ms", math.nan), "`$.freezing_ms`"),
    ("infinite-timing", _set("trailer", "capture_ms", math.inf), "`$.capture_ms`"),
    ("unknown-freezer", _set("header", "freezer", "cgroup-v3"), "freezer 'cgroup-v3'"),
    ("unknown-scope", _set("header", "freezer_scope", "galaxy"), "freezer_scope"),
    ("thread-names-missing-table", _set("task", "threads", [[100, 1], [101, 127]], pid=100),
     "thread 101 refers to undefined fd table 127"),
    ("task-names-missing-table", _set("task", "fd_table", 127, pid=102), "undefined fd table"),
    ("data-nested-1000", _set("file", "data", nested(1000), id=10), "nests deeper than 32"),
    ("data-nested-33", _set("file", "data", {"kind": "asyckpt.tty", "x": nested(32)}, id=10),
     "nests deeper than 32"),
    ("epoll-target-missing", _epoll_target(99), "targets[].file 99"),
    ("epoll-target-not-an-id", _epoll_target("three"), "targets[].file 'three'"),
    ("file-defined-twice", _insert_after("fd", _by(seed(), "file", id=1), fd=0, file=1),
     "file 1 is defined twice"),
    ("fd-out-of-order", _set("fd", "fd", 3, file=2),
     "fd table 1: fd 2 is out of order (after fd 3)"),
    ("ghost-file-not-saved", _set("file", "ghost_file", 9, id=1), "ghost_file 9 with ghost 'none'"),
    # Files held by reference (format 4).
    ("cwd-undefined", _set("task", "cwd", 99, pid=100),
     "task 100: cwd refers to undefined file 99"),
    ("exe-is-a-description", _set("task", "exe", 1, pid=100),
     "exe refers to file 1, an open file description"),
    ("mapping-of-a-description", _mapping(4, 1), "mapping 0x400000 refers to file 1, an open"),
    ("mapping-of-undefined-file", _mapping(4, 77), "mapping 0x400000 refers to undefined file 77"),
    ("mapping-empty", _mapping(1, 0x400000), "mapping 0x400000-0x400000 is empty"),
    ("mapping-reversed", _mapping(1, 0x300000), "mapping 0x400000-0x300000 is empty"),
    ("mappings-overlap", _mapping(0, 0x400800, index=1),
     "mapping 0x400800-0x402000 is out of address order or overlaps"),
    ("mapping-perms", _mapping(2, "rwzp"), "`$.mappings[0][2]`"),
    ("mapping-negative-offset", _mapping(3, -1), "`$.mappings[0][3]`"),
    ("thread-cwd-is-a-description",
     _set("task", "threads", [[100, 1], [101, 2, 3, None, None]], pid=100),
     "thread 101 cwd refers to file 3, an open file description"),
    ("held-file-with-flags", _set("file", "flags", 2, id=12), "file 12: held by reference"),
    ("held-file-with-access", _set("file", "access", "r", id=12), "file 12: held by reference"),
    ("fd-on-a-held-file", _insert_after("file", {"kind": "fd", "fd": 12, "file": 12,
                                                  "cloexec": False}, id=12),
     "fd 12 refers to file 12, held by reference"),
    ("cmdline-not-its-bytes", _set("task", "cmdline", ["server", "--name=x"], pid=100),
     "cmdline is not its cmdline_bytes"),
    ("cmdline-bytes-alone", _set("task", "cmdline", None, pid=100),
     "cmdline_bytes without cmdline"),
    ("namespace-inode-negative", _set("task", "namespaces", {"net": -1}, pid=100),
     "`$.namespaces[...]`"),
]  # fmt: skip


def test_task_files_need_format_4() -> None:
    """Fields a version 3 writer never wrote are corrupt in a version 3 image."""
    records = seed()
    records[0]["format_version"] = 3
    with pytest.raises(ImageCorrupt, match="task 100: task files in a version 3 image"):
        parse_image(build(records, version=3))
    for rec in records:
        if rec["kind"] == "task":
            for field in ("cwd", "exe", "mappings", "namespaces", "cmdline", "cmdline_bytes"):
                rec.pop(field, None)
            rec["threads"] = [th[:2] for th in rec["threads"]]
    records = [r for r in records if r.get("description", True)]
    assert parse_image(build(records, version=3)).header.format_version == 3


@pytest.mark.parametrize(("edit", "names"), [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_crafted_records_are_corrupt(edit: Callable[[list[Rec]], object], names: str) -> None:
    with pytest.raises(ImageCorrupt) as info:
        parse_image(_edit(edit))
    assert names in str(info.value)


def test_a_ghost_file_must_hold_its_content() -> None:
    records = seed()
    # File 12 says its data is with file 1, which holds none.
    twelve = copy.deepcopy(_by(records, "file", id=9)) | {"id": 12, "ghost_file": 1}
    records.insert(records.index(_by(records, "fd", fd=9)) + 1, twelve)
    _by(records, "file", id=1)["ghost"] = "saved"
    with pytest.raises(ImageCorrupt, match="ghost_file"):
        parse_image(build(records))


def test_the_error_names_the_record() -> None:
    with pytest.raises(ImageCorrupt) as info:
        parse_image(_edit(_set("file", "access", "2w", id=3)))
    assert str(info.value) == ("image: record 7 (file): Invalid enum value '2w' - at `$.access`")


def test_unknown_fields_stay_ignored() -> None:
    """A newer writer's fields, in every record and in nested maps, are read past."""
    records = seed()
    for rec in records:
        rec["added_later"] = {"any": [1, 2.5, None]}
    _by(records, "file", id=1)["locks"][0]["added_later"] = 1
    _by(records, "file", id=1)["owner"]["added_later"] = "x"
    image = parse_image(build(records))
    assert image.files[1].locks[0].text.startswith("1: POSIX")
    assert len(image.tasks) == 3


def test_data_as_deep_as_allowed_is_read() -> None:
    data = {"kind": "asyckpt.tty", "x": nested(MAX_DATA_DEPTH - 1)}
    image = parse_image(_edit(_set("file", "data", data, id=10)))
    assert msgpack_depth(bytes(image.files[10].data), 100) == MAX_DATA_DEPTH


DEPTHS = [
    (b"\xc0", 0),
    (b"\x90", 1),
    (b"\x80", 1),
    (b"\x91\x91\xc0", 2),
    (b"\x92\x01\x91\x02", 2),
    (b"\x81\xa1k\x91\x80", 3),
    (b"\xdc\x00\x01\x91\xc0", 2),
    (b"\xde\x00\x01\xc0\xdd\x00\x00\x00\x01\x90", 3),
    (b"\xc4\x03\x91\x91\x91", 0),  # bin holding container bytes is not nested
    (b"\xd9\x02\x91\x91", 0),
    (b"\xcb" + bytes(8), 0),
    (b"\xd8\x01" + bytes(16), 0),
    (b"\xc7\x02\x05\x91\x91", 0),
    (b"\x91", None),  # truncated
    (b"\xc1", None),  # never used
    (b"\xc0\xc0", None),  # trailing
    (b"\xdd\xff\xff\xff\xff", None),  # promises 4 billion items it does not hold
    (b"\x91" * 5 + b"\xc0", None),  # deeper than the limit of 4 in this table
]


@pytest.mark.parametrize(("raw", "depth"), DEPTHS)
def test_msgpack_depth(raw: bytes, depth: int | None) -> None:
    assert msgpack_depth(raw, 4) == depth


# --- inputs that are not image files ---------------------------------------------------


@pytest.fixture
def image_bytes() -> bytes:
    return build(seed())


@pytest.fixture
def zero_device(tmp_path: Path) -> Path:
    """A character device node made by the test, with /dev/zero's numbers: reading it
    never ends."""
    node = tmp_path / "zero"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    return node


def _show(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    def limit_memory() -> None:
        # Were the device read, the command would fail here, not the machine.
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [*ASYCKPT, "show", *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
        **kw,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyckpt: error: "), proc.stderr
    assert text in lines[0], lines[0]


def test_a_device_is_refused_before_it_is_read(zero_device: Path) -> None:
    # The limit keeps a regression from reading the device until the machine runs out.
    with pytest.raises(NotAnImage, match="is a character device, not an image file or a pipe"):
        read_image(zero_device, limit=1 << 20)
    _one_line_error(_show(str(zero_device)), 6, "character device")


def test_a_device_on_standard_input_is_refused(zero_device: Path) -> None:
    with zero_device.open("rb") as stdin:
        _one_line_error(_show("-", stdin=stdin), 6, "standard input is a character device")


def test_a_socket_is_refused(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(NotAnImage, match="is a socket"):
            read_image(tmp_path / "sock")


def test_standard_input_pipe(tmp_path: Path, image_bytes: bytes) -> None:
    path = tmp_path / "i.ackpt"
    path.write_bytes(image_bytes)
    from_pipe = subprocess.run(
        [*ASYCKPT, "show", "-"], input=image_bytes, capture_output=True, timeout=60
    )
    assert from_pipe.returncode == 0, from_pipe.stderr
    from_file = subprocess.run([*ASYCKPT, "show", str(path)], capture_output=True, timeout=60)
    assert from_pipe.stdout == from_file.stdout
    truncated = subprocess.run(
        [*ASYCKPT, "show", "-"], input=image_bytes[:-1], capture_output=True, timeout=60
    )
    assert truncated.returncode == 6
    assert truncated.stderr == b"asyckpt: error: standard input is truncated inside its digest\n"


def test_graph_and_diff_read_standard_input(tmp_path: Path, image_bytes: bytes) -> None:
    path = tmp_path / "i.ackpt"
    path.write_bytes(image_bytes)

    def run(*argv: str, stdin: bytes = image_bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*ASYCKPT, *argv], input=stdin, capture_output=True, timeout=60)

    graph = run("graph", "-", "--format", "dot")
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout == run("graph", str(path), "--format", "dot").stdout
    for a, b in (("-", str(path)), (str(path), "-")):
        same = run("diff", a, b)
        assert (same.returncode, same.stdout, same.stderr) == (0, b"", b"")
    both = run("diff", "-", "-")
    assert both.returncode == 2
    assert both.stderr == b"asyckpt: error: only one of A and B can be - (standard input)\n"
    truncated = run("graph", "-", "--format", "dot", stdin=image_bytes[:-1])
    assert truncated.returncode == 6
    assert truncated.stderr == b"asyckpt: error: standard input is truncated inside its digest\n"


@contextlib.contextmanager
def _writer(path: Path, pieces: Iterator[bytes]) -> Iterator[None]:
    """Write ``pieces`` into the FIFO ``path`` from a thread, as another process would."""

    def run() -> None:
        with contextlib.suppress(BrokenPipeError), path.open("wb", buffering=0) as f:
            for piece in pieces:
                f.write(piece)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=30)
        assert not thread.is_alive()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_a_fifo_is_read_as_it_is_written(tmp_path: Path, image_bytes: bytes) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with _writer(fifo, _chunks(image_bytes, 7)):
        image = read_image(fifo)
    assert image == parse_image(image_bytes)


def test_show_reads_a_fifo(tmp_path: Path, image_bytes: bytes) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with _writer(fifo, _chunks(image_bytes, 4096)):
        shown = _show(str(fifo), "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"root_pid": 100' in shown.stdout


def test_an_endless_stream_stops_at_the_limit(tmp_path: Path) -> None:
    """Valid-looking frames forever (empty ones): the reader stops at its limit."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def endless() -> Iterator[bytes]:
        yield MAGIC + struct.pack(">I", 2)
        while True:
            yield bytes(1 << 16)

    with _writer(fifo, endless()), pytest.raises(ImageCorrupt, match="larger than 4194304"):
        read_image(fifo, limit=4 << 20)


def test_memory_follows_the_bytes_present_not_the_length_claimed(tmp_path: Path) -> None:
    """A frame that claims nearly 1 GiB and holds 1 KiB costs about 1 KiB."""
    path = tmp_path / "liar.ackpt"
    path.write_bytes(MAGIC + struct.pack(">I", 2) + struct.pack(">I", (1 << 30) - 1) + bytes(1024))
    tracemalloc.start()
    try:
        with pytest.raises(ImageCorrupt, match="truncated"):
            read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    path.write_bytes(MAGIC + struct.pack(">I", 2) + struct.pack(">I", (1 << 30) + 1))
    with pytest.raises(ImageCorrupt, match="more than the 1073741824 a frame may have"):
        read_image(path)


def test_fed_a_byte_at_a_time(image_bytes: bytes) -> None:
    """The decoder gives the same image whatever the pieces (as h11's readers are tested),
    and refuses a byte after the digest."""
    decoder = ImageDecoder()
    for i in range(len(image_bytes)):
        decoder.feed(image_bytes[i : i + 1])
    assert decoder.close() == parse_image(image_bytes)
    decoder = ImageDecoder()
    decoder.feed(image_bytes)
    with pytest.raises(ImageCorrupt, match="data after its digest"):
        decoder.feed(b"\x00")


def test_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotAnImage, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(NotAnImage, match="No such file"):
        read_image(tmp_path / "missing")


def test_floats_in_handler_data_are_kept(tmp_path: Path) -> None:
    """NaN in a handler's record is data, not damage: read, and exported as stated."""
    data = {"kind": "asyckpt.tty", "nan": math.nan, "inf": math.inf}
    image = parse_image(_edit(_set("file", "data", data, id=10)))
    decoded = msgspec.msgpack.decode(image.files[10].data)
    assert math.isnan(decoded["nan"]) and decoded["inf"] == math.inf
