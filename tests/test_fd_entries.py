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


def test_entries_are_arrays_not_a_tuple_per_fd() -> None:
    packed = FdEntries.of([(fd, fd % 2 == 0, fd // 2, None) for fd in range(1000)])
    assert packed.fds.itemsize == 4 and packed.files.itemsize == 8
    assert packed.cloexec == bytes(fd % 2 == 0 for fd in range(1000))
    assert packed.new == [] and len(packed.new_at) == 0


@pytest.mark.parametrize("entries", CASES)
def test_records_come_in_image_order(entries: list[Any]) -> None:
    # Each first-seen description's File right before its fd's Fd, the fds in order.
    from asyckpt._discover import TaskPlan
    from asyckpt._materialize import materialize
    from asyckpt._parts import ResolvedTable, TaskPart
    from asyckpt._procparse import TaskStat
    from asyckpt._procread import TaskMeta
    from asyckpt._records import Fd, FdTable, File, Task

    stat = TaskStat(100, "t", "S", 1, 0, 1, 100)
    plan = TaskPlan(stat, TaskMeta(0, 0, "/", 0), ((100, 2),), ((100, 2),))
    table = ResolvedTable(100, 2, FdEntries.of(entries))
    records = materialize(TaskPart(plan, plan.meta, None, [table], ((100, 2),)))
    expected: list[Any] = [(FdTable, 2, len(entries))]
    for fd, cloexec, file_id, new in entries:
        if new is not None:
            expected.append((File, file_id))
        expected.append((Fd, fd, file_id, cloexec))
    expected.append((Task, 100))
    got: list[Any] = []
    for rec in records:
        if isinstance(rec, FdTable):
            got.append((FdTable, rec.id, rec.count))
        elif isinstance(rec, File):
            got.append((File, rec.id))
        elif isinstance(rec, Fd):
            got.append((Fd, rec.fd, rec.file, rec.cloexec))
            assert type(rec.cloexec) is bool
        else:
            assert isinstance(rec, Task)
            got.append((Task, rec.pid))
    assert got == expected


@pytest.mark.parametrize("entries", CASES)
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_pieces_join_into_the_whole_table(entries: list[Any], cut: int) -> None:
    # A big table is resolved in pieces as it is read: joined, they are the table.
    pieces = [FdEntries.of(entries[i : i + cut]) for i in range(0, len(entries), cut)] or [
        FdEntries.of([])
    ]
    joined = FdEntries.join(pieces)
    whole = FdEntries.of(entries)
    assert list(joined) == list(whole) == entries
    assert (joined.fds, joined.files, joined.cloexec) == (whole.fds, whole.files, whole.cloexec)
    assert (joined.new_at, joined.new) == (whole.new_at, whole.new)
