"""Tests of KcmpIndex with an integer stand-in for kcmp(2)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Hashable

import pytest

from asyckpt._dedup import KcmpIndex


def int_compare(a: int, b: int) -> int:
    """kcmp's convention on integers: 0 equal, 1 a orders first, 2 a orders after."""
    if a == b:
        return 0
    return 1 if a < b else 2


def counter() -> Callable[[], int]:
    """A ``make`` that hands out 0, 1, 2, ..."""
    it = itertools.count()
    return lambda: next(it)


LOOKUP_CASES = [
    # (lookups as (key, object), expected (value, new) for each)
    pytest.param([("k", 5)], [(0, True)], id="first"),
    pytest.param([("k", 5), ("k", 5)], [(0, True), (0, False)], id="same-again"),
    pytest.param(
        [("k", 5), ("k", 3), ("k", 9), ("k", 3), ("k", 9), ("k", 5)],
        [(0, True), (1, True), (2, True), (1, False), (2, False), (0, False)],
        id="three-in-one-bucket",
    ),
    pytest.param(
        # The same object under two keys is two entries: keys partition, never merge.
        [("a", 1), ("b", 1), ("a", 1), ("b", 1)],
        [(0, True), (1, True), (0, False), (1, False)],
        id="keys-partition",
    ),
    pytest.param(
        [((8, 1), 7), ((8, 2), 7), ((8, 1), 7)],
        [(0, True), (1, True), (0, False)],
        id="tuple-keys",
    ),
    pytest.param(
        [("k", n) for n in (4, 2, 6, 1, 3, 5, 7)] + [("k", n) for n in (1, 2, 3, 4, 5, 6, 7)],
        [(v, True) for v in range(7)] + [(v, False) for v in (3, 1, 4, 0, 5, 2, 6)],
        id="balanced-insertion",
    ),
]


@pytest.mark.parametrize(("lookups", "expected"), LOOKUP_CASES)
def test_lookup_table(
    lookups: list[tuple[Hashable, int]], expected: list[tuple[int, bool]]
) -> None:
    index: KcmpIndex[int, int] = KcmpIndex(int_compare)
    make = counter()
    assert [index.lookup(key, ref, make) for key, ref in lookups] == expected


def test_equal_but_distinct_refs_are_found_again() -> None:
    # Refs name fds; fd 3 and fd 4 of pid 1 share one open file description (dup),
    # fd 3 of pid 2 is a separate open() of the same path.
    description = {(1, 3): 100, (1, 4): 100, (2, 3): 200, (2, 4): 100}

    def compare(a: tuple[int, int], b: tuple[int, int]) -> int:
        return int_compare(description[a], description[b])

    index: KcmpIndex[tuple[int, int], str] = KcmpIndex(compare)
    key = ("reg", 2049, 131075)  # same dev and ino for all four
    results = [index.lookup(key, ref, lambda r=ref: f"file-{r}") for ref in description]
    assert results == [
        ("file-(1, 3)", True),
        ("file-(1, 3)", False),
        ("file-(2, 3)", True),
        ("file-(1, 3)", False),
    ]


def test_make_is_called_only_for_new_objects() -> None:
    calls: list[int] = []
    index: KcmpIndex[int, str] = KcmpIndex(int_compare)

    def make_for(ref: int) -> Callable[[], str]:
        def make() -> str:
            calls.append(ref)
            return f"v{ref}"

        return make

    for ref in (3, 1, 3, 2, 1, 3):
        index.lookup("k", ref, make_for(ref))
    assert calls == [3, 1, 2]


ORDERS: dict[str, Callable[[int], list[int]]] = {
    "ascending": lambda n: list(range(n)),
    "descending": lambda n: list(range(n))[::-1],
    "shuffled": lambda n: random.Random(1234).sample(range(n), n),
    "zigzag": lambda n: [i // 2 if i % 2 == 0 else n - 1 - i // 2 for i in range(n)],
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_many_objects_under_one_key_cost_n_log_n(order: str) -> None:
    n = 2000
    refs = ORDERS[order](n)
    assert sorted(refs) == list(range(n))
    index: KcmpIndex[int, int] = KcmpIndex(int_compare)
    make = counter()
    first = [index.lookup("same-ino", ref, make) for ref in refs]
    assert first == [(v, True) for v in range(n)]
    bound = n * math.ceil(math.log2(n)) + n
    assert index.compares <= bound

    # Every object is found again, with the value it was first given, in O(log n) each.
    before = index.compares
    again = [index.lookup("same-ino", ref, make) for ref in reversed(refs)]
    assert again == [(v, False) for v in reversed(range(n))]
    assert index.compares - before <= bound


def test_different_keys_are_never_compared() -> None:
    compared: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def compare(a: tuple[int, int], b: tuple[int, int]) -> int:
        compared.append((a, b))
        assert a[0] == b[0], f"compared across keys: {a} vs {b}"
        return int_compare(a[1], b[1])

    index: KcmpIndex[tuple[int, int], int] = KcmpIndex(compare)
    make = counter()
    # 50 keys, each with one object: no compare at all.
    for key in range(50):
        assert index.lookup(key, (key, 0), make) == (key, True)
    assert index.compares == 0
    assert compared == []
    # A second object per key compares only within its own bucket.
    for key in range(50):
        assert index.lookup(key, (key, 1), make) == (50 + key, True)
    assert index.compares == 50
    assert all(a[0] == b[0] for a, b in compared)


@pytest.mark.parametrize("bad", [3, -1, 255, None])
def test_compare_returning_nonsense_raises(bad: object) -> None:
    made: list[int] = []

    def compare(a: int, b: int) -> object:
        return bad

    index: KcmpIndex[int, int] = KcmpIndex(compare)  # type: ignore[arg-type]
    assert index.lookup("k", 1, lambda: made.append(1) or 1) == (1, True)
    with pytest.raises(ValueError, match="compare returned"):
        index.lookup("k", 2, lambda: made.append(2) or 2)
    assert made == [1]  # nothing was stored for the failed lookup


def test_a_bucket_of_one_is_its_entry() -> None:
    # Most keys name one object: its (ref, value) is the bucket, no list around it; a
    # second object makes it a list in compare order, either side of the first.
    index: KcmpIndex[int, str] = KcmpIndex(int_compare)
    make = iter("abcd").__next__
    index.lookup("k", 5, make)
    index.lookup("j", 5, make)
    assert index.buckets == {"k": (5, "a"), "j": (5, "b")}
    index.lookup("k", 3, make)
    index.lookup("j", 9, make)
    assert index.buckets == {"k": [(3, "c"), (5, "a")], "j": [(5, "b"), (9, "d")]}
    assert index.lookup("k", 5, make) == ("a", False)
    assert index.lookup("j", 5, make) == ("b", False)
