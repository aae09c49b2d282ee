"""A big fd table read and resolved a piece at a time (issue 15): the readers' pieces
are the whole table, and the resolver works on one piece while the next is read."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import asyckpt
from asyckpt import _fdscan, _procread, _scanning
from asyckpt._handoff import RowStream
from asyckpt._procread import TablePieces, _read_table_py, _read_tables_py, iter_fd_tables
from asyckpt._rows import InheritedFd, ScanRow

from .conftest import SPAWN_TREE, Tree


def _dirs(pid: int) -> tuple[str, str]:
    return f"/proc/{pid}/task/{pid}/fd", f"/proc/{pid}/task/{pid}/fdinfo"


def _drain(reader: Any, n: int) -> list[ScanRow]:
    rows: list[ScanRow] = []
    while part := reader.read(n):
        assert len(part) <= n
        rows += part
    return rows


@pytest.mark.parametrize("n", [1, 3, 1000])
def test_pieces_of_a_table_are_the_whole_table_in_both_readers(zoo: Tree, n: int) -> None:
    fork = zoo.info["fork"]
    cases: list[tuple[int, list[tuple[int, int] | None] | None]] = [
        (zoo.pid, None),
        (fork, [(zoo.pid, fork)]),
    ]
    for pid, parents in cases:
        whole = _fdscan.read_tables([_dirs(pid)], parents)[0]
        assert isinstance(whole, list) and len(whole) > 3
        for read_tables in (_fdscan.read_tables, _read_tables_py):
            (reader,) = read_tables([_dirs(pid)], parents, 3)
            assert not isinstance(reader, list | OSError)
            assert reader.listed == len(whole)
            assert _drain(reader, n) == whole
            assert reader.read(n) == []  # past the end, and closed
    assert _read_table_py(*_dirs(zoo.pid)) == _fdscan.read_table(*_dirs(zoo.pid))


def test_read_tables_stops_at_the_first_big_table(zoo: Tree) -> None:
    """So that a caller holds at most one table open: the tables after it are read when
    it asks again."""
    bare, big = zoo.info["bare"], zoo.pid
    small = _fdscan.read_table(*_dirs(bare))
    assert len(small) == 3  # 0, 1, 2: not more than the piece
    dirs = [_dirs(bare), _dirs(big), _dirs(bare)]
    for read_tables in (_fdscan.read_tables, _read_tables_py):
        got = read_tables(dirs, None, 3)
        assert len(got) == 2 and got[0] == small
        assert not isinstance(got[1], list | OSError)
        assert _drain(got[1], 5) == _fdscan.read_table(*_dirs(big))
        got[1].close()
        assert read_tables(dirs, None, 0) == [small, _fdscan.read_table(*_dirs(big)), small]


def test_table_reader_misuse_is_an_error_not_a_crash(zoo: Tree) -> None:
    (reader,) = _fdscan.read_tables([_dirs(zoo.pid)], None, 1)
    assert isinstance(reader, _fdscan.TableReader)
    with pytest.raises(ValueError, match="at least 1"):
        reader.read(0)
    with pytest.raises(TypeError):
        reader.read("1")  # type: ignore[arg-type]
    assert len(reader.read(2)) == 2 and reader.left == reader.listed - 2
    reader.close()
    reader.close()
    assert reader.read(2) == [] and reader.left == 0
    with pytest.raises(TypeError):
        _fdscan.TableReader()
    with pytest.raises(ValueError, match="negative"):
        _fdscan.read_tables([_dirs(zoo.pid)], None, -1)


def test_iter_fd_tables_gives_big_tables_as_pieces_and_closes_them(zoo: Tree) -> None:
    bare, big = zoo.info["bare"], zoo.pid
    owners = [(bare, bare), (big, big), (bare, bare), (big, big)]
    fds_before = len(os.listdir("/proc/self/fd"))
    got = iter_fd_tables(owners, piece=3)
    assert next(got) == _fdscan.read_table(*_dirs(bare))
    first = next(got)
    assert isinstance(first, TablePieces)
    assert len(first.read()) == 3
    # Asked for the next table, the generator closes the one it gave before.
    assert next(got) == _fdscan.read_table(*_dirs(bare))
    assert first.read() == []
    last = next(got)
    assert isinstance(last, TablePieces)
    assert [row for part in iter(last.read, []) for row in part] == _fdscan.read_table(*_dirs(big))
    with pytest.raises(StopIteration):
        next(got)
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_a_vanished_task_reads_as_missing_whichever_piece_size() -> None:
    gone = 4194999
    for piece in (0, 1):
        assert list(iter_fd_tables([(gone, gone)], missing_ok=True, piece=piece)) == [None]
        with pytest.raises(asyckpt.NoSuchProcess):
            list(iter_fd_tables([(gone, gone)], piece=piece))


def test_row_stream_hands_pieces_on_then_ends_or_fails() -> None:
    stream = RowStream()
    stream.put([InheritedFd(1, 0)])
    stream.put([InheritedFd(2, 0)])
    stream.end()
    assert list(stream) == [[InheritedFd(1, 0)], [InheritedFd(2, 0)]]
    assert list(stream) == []  # ended: a second walk does not block
    failing = RowStream()
    failing.put([InheritedFd(1, 0)])
    failing.end(asyckpt.NoSuchProcess("gone", pid=1))
    walk = iter(failing)
    assert next(walk) == [InheritedFd(1, 0)]
    with pytest.raises(asyckpt.NoSuchProcess):
        next(walk)
    with pytest.raises(asyckpt.NoSuchProcess):
        list(failing)


def test_a_reader_that_fails_mid_table_ends_its_stream() -> None:
    """The resolver waits on the stream: the reader ends it with its error, always."""

    class Failing:
        calls = 0

        def read(self) -> list[ScanRow]:
            self.calls += 1
            if self.calls > 1:
                raise asyckpt.NoSuchProcess("gone", pid=1)
            return [InheritedFd(1, 0)]

        def close(self) -> None:
            pass

    stream = RowStream()
    with pytest.raises(asyckpt.NoSuchProcess):
        _scanning._hand_on(Failing(), stream)  # type: ignore[arg-type]
    walk = iter(stream)
    assert next(walk) == [InheritedFd(1, 0)]
    with pytest.raises(asyckpt.NoSuchProcess):
        next(walk)


def test_the_resolver_works_on_a_piece_while_the_next_is_read(
    spawn: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task's table: its second piece is read only once the resolver has its first
    (it would wait for ever if the table were read whole first: 10 s, then fails)."""
    tree = spawn(SPAWN_TREE, "0", "40")
    monkeypatch.setattr(_scanning, "PIECE", 16)
    first_taken = threading.Event()
    reads: list[bool] = []  # per read after the first: whether the resolver had a piece
    read, walk = TablePieces.read, RowStream.__iter__

    def read_after_the_first(self: TablePieces) -> list[ScanRow]:
        if reads or first_taken.is_set():
            reads.append(first_taken.wait(10))
        else:
            reads.append(True)
        return read(self)

    def walk_signalling(self: RowStream) -> Any:
        for rows in walk(self):
            first_taken.set()
            yield rows

    monkeypatch.setattr(TablePieces, "read", read_after_the_first)
    monkeypatch.setattr(RowStream, "__iter__", walk_signalling)
    summary = trio.run(lambda: asyckpt.checkpoint_tree(tree.pid, tmp_path / "p.ackpt"))
    assert summary.fds > 3 * 16
    assert len(reads) > 3 and all(reads)
    whole = asyckpt.read_image(tmp_path / "p.ackpt")
    assert len(whole.tasks) == 1
    assert _procread.read_fds(tree.pid, tree.pid)  # the tree is thawed and alive
