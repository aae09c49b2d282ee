"""Deduplication of kernel objects that only kcmp(2) can tell apart.

Two fds name the same open file description when kcmp(KCMP_FILE) says 0; two tasks share
one fd table when kcmp(KCMP_FILES) says 0.  kcmp also *orders* unequal objects (1: less,
2: greater), which lets each bucket of candidates be kept sorted and searched in
O(log n) calls, so thousands of separate open()s of one file that share a cheap key cost
n log n kcmp calls, not n^2 (CRIU's kcmp-ids.c uses a tree for the same reason).

The index is pure: the comparison is injected, so the algorithm is tested with integers
and used with kcmp.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, cast

__all__ = ["KcmpIndex"]

R = TypeVar("R")  # how the caller names an object to the comparison (pid, fd)
V = TypeVar("V")  # what the caller stores for it (an objref)

EQUAL, LESS, GREATER = 0, 1, 2


class KcmpIndex(Generic[R, V]):
    """Map objects to values, bucketed by a cheap key and ordered by a kcmp-like compare.

    ``compare(a, b)`` returns 0 when a and b are the same object, 1 when a orders before
    b, 2 when after.  ``compares`` counts the calls made, for tests and statistics.
    """

    def __init__(self, compare: Callable[[R, R], int]) -> None:
        self._compare = compare
        self._buckets: dict[Hashable, list[tuple[R, V]] | tuple[R, V]] = {}
        self.compares = 0

    @property
    def buckets(self) -> dict[Hashable, list[tuple[R, V]] | tuple[R, V]]:
        """The buckets, key -> [(ref, value)] in compare order, or the one (ref, value)
        itself (most keys have one object: no list each, ~4 MiB on 53k descriptions):
        what the C dedup loop (_fdscan.dedup_rows) searches and extends in place of
        :meth:`lookup`."""
        return self._buckets

    def lookup(self, key: Hashable, ref: R, make: Callable[[], V]) -> tuple[V, bool]:
        """Return (value, True) for a new object, after storing ``make()`` for it, or
        (the stored value, False) for an object seen before."""
        found = self._buckets.get(key)
        if found is None:
            value = make()
            self._buckets[key] = (ref, value)
            return value, True
        bucket = found if type(found) is list else [cast(tuple[R, V], found)]
        lo, hi = 0, len(bucket)
        while lo < hi:
            mid = (lo + hi) // 2
            self.compares += 1
            order = self._compare(ref, bucket[mid][0])
            if order == EQUAL:
                return bucket[mid][1], False
            if order == LESS:
                hi = mid
            elif order == GREATER:
                lo = mid + 1
            else:
                raise ValueError(f"compare returned {order!r}, expected 0, 1 or 2")
        value = make()
        bucket.insert(lo, (ref, value))
        if bucket is not found:
            self._buckets[key] = bucket
        return value, True
