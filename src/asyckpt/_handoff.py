"""A big fd table's rows handed from its reader thread to the resolver's, a piece at a
time, so that the resolver works on one piece while the next is read (``_scanning``)."""

from __future__ import annotations

import queue
from collections.abc import Iterator

from ._rows import ScanRow

__all__ = ["RowStream"]


class RowStream:
    """The rows of one table, in ascending fd order, as its reader hands them on.

    The reader calls :meth:`put` per piece, then :meth:`end` (with the exception that
    stopped it, if one did) whatever happens, since the resolver blocks until then;
    iterating gives the pieces as they come, then raises that exception, if any.
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[ScanRow] | BaseException | None] = queue.SimpleQueue()

    def put(self, rows: list[ScanRow]) -> None:
        self._queue.put(rows)

    def end(self, error: BaseException | None = None) -> None:
        self._queue.put(error)

    def __iter__(self) -> Iterator[list[ScanRow]]:
        while True:
            item = self._queue.get()
            if isinstance(item, list):
                yield item
                continue
            # Put back, so that a second walk ends (or fails) too instead of blocking.
            self._queue.put(item)
            if item is not None:
                raise item
            return
