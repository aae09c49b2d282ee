"""FdEntries: one resolved fd table held as arrays, given back as the resolver made it."""

from __future__ import annotations

from typing import Any

import pytest

from asyckpt._parts import FdEntries, NewFile
from asyckpt._rows import RawFd


def new_file(file_id: int, fd: int) -> NewFile:
    raw = RawFd(fd, "/x", 0o100644, 1, file_id, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, b"")
    return NewFile(file_id, raw, 100, 0, "reg", "/x", False, None, None, None)


A, B, C = new_file(1, 3), new_file(2, 7), new_file(3, 2000)

CASES: list[list[Any]] = [
    [],
    [(0, False, 9, None)],
    [(3, True, 1, A)],
    [(0, False, 5, None), (3, True, 1, A), (4, False, 1, None), (7, False, 2, B)],
    [(3, False, 1, A), (7, True, 2, B), (2000, True, 3, C), (2001, False, 3, None)],
]


@pytest.mark.parametrize("entries", CASES)
def test_entries_come_back_as_made(entries: list[Any]) -> None:
    packed = FdEntries.of(entries)
    assert list(packed) == entries
    assert len(packed) == len(entries)
    assert packed.new == [new for *_, new in entries if new is not None]
    assert all(type(cloexec) is bool for _, cloexec, _, _ in packed)
    # The runs: the fds in order, each first-seen description right before its fd.
    order: list[Any] = []
    for run, new in packed.runs():
        order += [(fd, cloexec, file_id) for fd, cloexec, file_id in run]
        if new is not None:
            order.append(new)
    expected: list[Any] = []
    for fd, cloexec, file_id, new in entries:
        expected += ([new] if new is not None else []) + [(fd, int(cloexec), file_id)]
    assert order == expected


def test_entries_are_arrays_not_a_tuple_per_fd() -> None:
    packed = FdEntries.of([(fd, fd % 2 == 0, fd // 2, None) for fd in range(1000)])
    assert packed.fds.itemsize == 4 and packed.files.itemsize == 8
    assert packed.cloexec == bytes(fd % 2 == 0 for fd in range(1000))
    assert packed.new == [] and len(packed.new_at) == 0
