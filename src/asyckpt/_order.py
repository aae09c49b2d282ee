"""Putting concurrently finished work back into one order (pure)."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Reorderer"]

T = TypeVar("T")


class Reorderer(Generic[T]):
    """Release items numbered 0, 1, 2, ... in order, whatever order they arrive in.

    >>> r = Reorderer[str]()
    >>> r.push(1, "b"), r.push(0, "a"), r.push(2, "c")
    ([], ['a', 'b'], ['c'])
    """

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[int, T] = {}

    @property
    def released(self) -> int:
        """How many items have been released so far."""
        return self._next

    @property
    def pending(self) -> int:
        """How many items arrived early and wait for an earlier one."""
        return len(self._waiting)

    def push(self, index: int, item: T) -> list[T]:
        if index < self._next or index in self._waiting:
            raise ValueError(f"item {index} pushed twice")
        self._waiting[index] = item
        out = []
        while self._next in self._waiting:
            out.append(self._waiting.pop(self._next))
            self._next += 1
        return out
