from collections.abc import Callable, Sequence
from typing import Any

from ._rows import InheritedFd as _InheritedFd
from ._rows import MapRow as _MapRow
from ._rows import RawFd, RawRow, ScanRow

# Struct sequences with _rows.RawFd's and _rows.InheritedFd's fields (made from a sequence).
FdRow: Callable[[Sequence[object]], RawFd]
InheritedFd: Callable[[Sequence[object]], _InheritedFd]
MapRow: Callable[[Sequence[object]], _MapRow]

class TableReader:
    """One fd table, listed, its fds read a piece at a time (made by read_tables)."""

    @property
    def listed(self) -> int: ...
    @property
    def left(self) -> int: ...
    def read(self, n: int, /) -> list[ScanRow]: ...
    def close(self) -> None: ...

def read_table(fd_dir: str, fdinfo_dir: str) -> list[RawRow]: ...
def read_tables(
    dirs: list[tuple[str, str]],
    parents: list[tuple[int, int] | None] | None = None,
    piece: int = 0,
    /,
) -> list[list[ScanRow] | OSError | TableReader]: ...
def read_task(pid: int, /) -> tuple[bytes, list[int], list[int], int, int, str | None, int]: ...
def kcmp(pid1: int, pid2: int, type: int, idx1: int, idx2: int, /) -> int: ...
def kcmp_files(a: tuple[int, int], b: tuple[int, int]) -> int: ...
def fd_owner(fd: int) -> tuple[int, int, int, int | None, int | None]: ...
def fd_owner_at(pidfd: int, fd: int) -> tuple[int, int, int, int | None, int | None]: ...
def pidfd_getfd(pidfd: int, fd: int, /) -> int: ...
def dedup_rows(
    rows: list[ScanRow],
    tid: int,
    hints: dict[int, Any],
    seen: dict[int, Any],
    buckets: dict[Any, list[Any] | tuple[Any, Any]],
    file_count: int,
    more_locks: dict[int, list[bytes]] = ...,
    /,
) -> tuple[
    list[tuple[int, bool, int, Any]] | None,
    list[int] | None,
    int,
    int,
    int,
    tuple[int, int, int] | None,
]: ...
def read_task_files(
    pid: int, tids: list[int], known: set[tuple[int, int]], cmdline: bool, /
) -> tuple[
    RawFd | int,
    RawFd | int,
    RawFd | int,
    dict[str, int],
    bytes | int,
    set[tuple[int, int]],
    list[tuple[_MapRow, RawFd | int]],
    list[tuple[int, RawFd | int, RawFd | int, dict[str, int]]],
    bytes | None,
]: ...
def parse_maps(data: bytes, /) -> list[_MapRow]: ...
