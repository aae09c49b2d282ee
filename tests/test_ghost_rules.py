"""Table-driven tests of the pure parts of ghost files and path checks."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import pytest

from asyckpt._cli import DEFAULT_GHOST_LIMIT as CLI_DEFAULT
from asyckpt._cli import _ghost_limit
from asyckpt._ghost import (
    CONTENT_CHUNK,
    DEFAULT_GHOST_LIMIT,
    Chunk,
    GhostNote,
    chunk_plan,
    format_size,
    ghost_state,
)
from asyckpt._paths import decide, proc_pid_path

MIB = 1 << 20


@pytest.mark.parametrize(
    ("allocated", "limit", "expected"),
    [
        (0, MIB, "copy"),
        (MIB, MIB, "copy"),  # the limit itself is within
        (MIB + 4096, MIB, "too-big"),
        (0, 0, "off"),  # 0 never copies, even an empty file
        (4096, 0, "off"),
        (3 * MIB, 4 * MIB, "copy"),
    ],
)
def test_ghost_state(allocated: int, limit: int, expected: str) -> None:
    assert ghost_state(allocated, limit) == expected


def test_chunk_plan_splits_extents_at_the_chunk_size() -> None:
    # (offset in file, length, offset in spool)
    extents = [(0, 8192, 0), (MIB, 2 * CONTENT_CHUNK + 10, 8192)]
    assert chunk_plan(7, extents) == [
        Chunk(7, 0, 8192, 0),
        Chunk(7, MIB, CONTENT_CHUNK, 8192),
        Chunk(7, MIB + CONTENT_CHUNK, CONTENT_CHUNK, 8192 + CONTENT_CHUNK),
        Chunk(7, MIB + 2 * CONTENT_CHUNK, 10, 8192 + 2 * CONTENT_CHUNK),
    ]
    assert chunk_plan(7, []) == []
    assert chunk_plan(1, [(10, 5, 0)], chunk=2) == [
        Chunk(1, 10, 2, 0),
        Chunk(1, 12, 2, 2),
        Chunk(1, 14, 1, 4),
    ]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (MIB, "1 MiB"),
        (3 * MIB + MIB // 10, "3.1 MiB"),
        (5 << 30, "5 GiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_over_the_limit_message() -> None:
    note = GhostNote(41, 6, "/x", 3 * MIB, "too-big", None, MIB)
    assert note.message() == (
        "pid 41 fd 6: unlinked file /x (3 MiB allocated) exceeds --ghost-limit 1 MiB; not saved"
    )
    failed = GhostNote(41, 6, "/x", 4096, "failed", "No such process", MIB)
    assert failed.message() == "pid 41 fd 6: unlinked file /x: content not saved: No such process"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4096", 4096),
        ("512K", 512 << 10),
        ("512k", 512 << 10),
        ("1M", MIB),
        ("2G", 2 << 30),
    ],
)
def test_ghost_limit_sizes(text: str, value: int) -> None:
    assert _ghost_limit(text) == value


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5M", "1T", "1MB", " 1", "١"])
def test_bad_ghost_limits(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
        _ghost_limit(text)


def test_cli_default_matches_the_library() -> None:
    # Repeated in the CLI so that parsing arguments does not import the pipeline.
    assert CLI_DEFAULT == DEFAULT_GHOST_LIMIT == MIB


DEV, INO = 65024, 1234
SAME = (DEV, INO)
OTHER = (DEV, 999)

PATH_CASES = [
    # (kind, path, deleted, nlink, in /proc/PID, found now, expected)
    ("reg", "/tmp/x", False, 1, False, SAME, "ok"),
    ("dir", "/tmp", False, 3, False, SAME, "ok"),
    ("link", "/tmp/l", False, 1, False, SAME, "ok"),
    ("fifo", "/run/q", False, 1, False, SAME, "ok"),
    ("chr", "/dev/null", False, 1, False, SAME, "ok"),
    ("reg", "/tmp/x", True, 0, False, None, "deleted"),
    ("reg", "/memfd:buf", True, 0, False, None, "deleted"),
    ("dir", "/tmp/d", True, 0, False, None, "deleted"),
    ("reg", "/tmp/x", True, 1, False, None, "deleted-linked"),
    ("fifo", "/run/q", True, 2, False, None, "deleted-linked"),
    ("reg", "/tmp/x", False, 1, False, OTHER, "replaced"),
    ("reg", "/tmp/x", False, 1, False, (DEV + 1, INO), "replaced"),  # same ino, other fs
    ("reg", "/tmp/x", False, 1, False, errno.ENOENT, "missing"),
    ("reg", "/tmp/d/x", False, 1, False, errno.ENOTDIR, "missing"),
    ("reg", "/tmp/x", False, 1, False, errno.EACCES, "unchecked"),
    ("reg", "/tmp/x", False, 1, False, errno.ELOOP, "unchecked"),
    ("reg", "/tmp/x", False, 1, False, None, "unchecked"),  # its root could not be kept
    # /proc/PID/...: gone, or the pid reused (another inode), or shown as deleted
    ("reg", "/proc/42/status", False, 1, True, errno.ENOENT, "proc-exited"),
    ("reg", "/proc/42/status", False, 1, True, OTHER, "proc-exited"),
    ("reg", "/proc/42/status", True, 1, True, None, "proc-exited"),
    ("dir", "/proc/42", False, 9, True, errno.ENOENT, "proc-exited"),
    ("reg", "/proc/42/status", False, 1, True, SAME, "ok"),
    # no path to check
    ("pipe", "pipe:[5]", False, 1, False, None, "none"),
    ("socket", "socket:[5]", False, 1, False, None, "none"),
    ("anon", "anon_inode:[eventfd]", False, 1, False, None, "none"),
    ("reg", "net:[4026531833]", False, 1, False, None, "none"),  # a namespace file
    ("reg", "/tmp/x", False, 1, False, SAME, "ok"),
]


@pytest.mark.parametrize(
    ("kind", "path", "deleted", "nlink", "in_proc", "found", "expected"), PATH_CASES
)
def test_path_state(
    kind: str,
    path: str,
    deleted: bool,
    nlink: int,
    in_proc: bool,
    found: tuple[int, int] | int | None,
    expected: str,
) -> None:
    assert decide(kind, path, deleted, nlink, DEV, INO, in_proc, found) == expected


@pytest.mark.parametrize(
    ("path", "mount_point", "expected"),
    [
        ("/proc/42/status", "/proc", True),
        ("/proc/42", "/proc", True),
        ("/proc/42/task/43/stat", "/proc", True),
        ("/proc/self/status", "/proc", False),  # never in a link: the kernel resolves it
        ("/proc/sys/kernel/ostype", "/proc", False),
        ("/proc/meminfo", "/proc", False),
        ("/proc", "/proc", False),
        ("/proc2/42/status", "/proc", False),
        ("/jail/proc/42/status", "/jail/proc", True),
        ("/42/status", "/", True),
    ],
)
def test_proc_pid_path(path: str, mount_point: str, expected: bool) -> None:
    assert proc_pid_path(path, mount_point) is expected


def test_the_copy_stops_at_the_limit_whatever_the_blocks_say(tmp_path: Path) -> None:
    # A filesystem may report fewer blocks than the data it holds (compression) or none
    # (FUSE, 9p): the limit bounds the bytes copied, not only the blocks reported.
    from asyckpt._ghost import GhostSpool

    path = tmp_path / "big"
    path.write_bytes(b"x" * 10000)
    spool = GhostSpool(4096, str(tmp_path))
    fd = os.open(path, os.O_RDONLY)
    try:
        small = os.open(tmp_path, os.O_RDONLY | os.O_TMPFILE | os.O_RDWR)
        os.write(small, b"y" * 100)
        saved = spool.capture(1, 10, 3, "/small", 1, 1, 100, 0, lambda _: small)
        big = spool.capture(2, 10, 4, "/big", 1, 2, 10000, 0, lambda _: fd)  # "0 blocks"
        assert (saved.state, big.state, big.extents) == ("saved", "too-big", [])
        assert big.error == "its data (9.8 KiB or more)"
        assert spool.notes[-1].message() == (
            "pid 10 fd 4: unlinked file /big: its data (9.8 KiB or more) exceeds "
            "--ghost-limit 4 KiB; not saved"
        )
        # What was spooled before stays whole, and nothing of the big file is kept.
        assert spool._spool is not None
        assert os.fstat(spool._spool.fileno()).st_size == 100
        (chunk,) = chunk_plan(1, saved.extents)
        assert spool.read(chunk).data == b"y" * 100
        os.close(small)
    finally:
        os.close(fd)
        spool.close()
