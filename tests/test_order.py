"""Tests of Reorderer: items released in index order whatever order they arrive in."""

from __future__ import annotations

import itertools

import pytest

from asyckpt._order import Reorderer

PUSH_CASES = [
    # (pushes as (index, item), what each push releases)
    pytest.param([(0, "a")], [["a"]], id="one"),
    pytest.param([(0, "a"), (1, "b"), (2, "c")], [["a"], ["b"], ["c"]], id="in-order"),
    pytest.param([(1, "b"), (0, "a"), (2, "c")], [[], ["a", "b"], ["c"]], id="docstring"),
    pytest.param([(2, "c"), (1, "b"), (0, "a")], [[], [], ["a", "b", "c"]], id="reversed"),
    pytest.param(
        [(3, "d"), (1, "b"), (0, "a"), (2, "c")],
        [[], [], ["a", "b"], ["c", "d"]],
        id="two-runs",
    ),
    pytest.param([(5, "f"), (7, "h")], [[], []], id="gap-never-filled"),
]


@pytest.mark.parametrize(("pushes", "released"), PUSH_CASES)
def test_push_table(pushes: list[tuple[int, str]], released: list[list[str]]) -> None:
    r = Reorderer[str]()
    assert [r.push(i, item) for i, item in pushes] == released
    assert r.released == sum(len(batch) for batch in released)
    assert r.pending == len(pushes) - r.released


@pytest.mark.parametrize("perm", list(itertools.permutations(range(5))))
def test_every_permutation_of_five_releases_in_order(perm: tuple[int, ...]) -> None:
    r = Reorderer[str]()
    out: list[str] = []
    for k, i in enumerate(perm, 1):
        batch = r.push(i, f"item{i}")
        out.extend(batch)
        # Exactly the longest contiguous run of arrived indices is out, no more.
        arrived = set(perm[:k])
        run = 0
        while run in arrived:
            run += 1
        assert out == [f"item{j}" for j in range(run)]
        assert r.released == run
        assert r.pending == k - run
    assert out == ["item0", "item1", "item2", "item3", "item4"]
    assert r.pending == 0


@pytest.mark.parametrize(
    ("pushes", "duplicate"),
    [
        pytest.param([0], 0, id="already-released"),
        pytest.param([0, 1, 2], 1, id="released-earlier"),
        pytest.param([2], 2, id="still-waiting"),
        pytest.param([0, 3], 3, id="waiting-behind-gap"),
        pytest.param([], -1, id="negative"),
    ],
)
def test_duplicate_push_raises(pushes: list[int], duplicate: int) -> None:
    r = Reorderer[str]()
    for i in pushes:
        r.push(i, f"first{i}")
    released, pending = r.released, r.pending
    with pytest.raises(ValueError, match="pushed twice"):
        r.push(duplicate, "second")
    # The failed push changed nothing: the first item wins.
    assert (r.released, r.pending) == (released, pending)
    rest = [i for i in range(max(pushes, default=-1) + 1) if i not in pushes]
    out = [item for i in rest for item in r.push(i, f"first{i}")]
    assert "second" not in out
