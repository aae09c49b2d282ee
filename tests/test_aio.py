"""asyckpt.aio: the library API from asyncio, on real trees, with asyncio's own
cancellation (task.cancel(), asyncio.timeout)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import asyckpt
import asyckpt.aio

from .conftest import SPAWN_TREE, V1_FREEZER, Tree, asyckpt_cgroups, cgroup_of, task_state

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


def snapshot(tree: Tree) -> dict[int, str]:
    """Each task's cgroups, to compare after a cancelled capture."""
    return {pid: cgroup_of(pid) for pid in tree.pids()}


def assert_running_where_it_was(tree: Tree, before: dict[int, str]) -> None:
    assert snapshot(tree) == before
    assert {task_state(pid) for pid in before} <= {"S", "R"}
    assert not asyckpt_cgroups()


async def consume(capture: Any, fail: Exception | None = None) -> None:
    async with capture as stream:
        async for _ in stream:
            if fail is not None:
                raise fail


def test_checkpoint_tree_and_read_image(zoo: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "zoo.ackpt"

    async def main() -> tuple[asyckpt.CaptureSummary, asyckpt.Image]:
        summary = await asyckpt.aio.checkpoint_tree(zoo.pid, dest)
        return summary, await asyckpt.aio.read_image(dest)

    summary, image = run(main)
    assert summary.path == str(dest) and summary.fds > 10
    assert image.trailer.fds == summary.fds and image.header.root_pid == zoo.pid
    assert {t.pid for t in image.tasks} == set(zoo.pids())


def test_open_capture_streams_every_record(zoo: Tree) -> None:
    async def main() -> tuple[list[Any], asyckpt.CaptureSummary | None]:
        records = []
        async with asyckpt.aio.open_capture(zoo.pid) as stream:
            async for record in stream:
                records.append(record)
        return records, stream.summary

    records, summary = run(main)
    assert summary is not None
    assert sum(isinstance(r, asyckpt.Fd) for r in records) == summary.fds
    assert sum(isinstance(r, asyckpt.File) for r in records) == summary.files
    assert {r.pid for r in records if isinstance(r, asyckpt.Task)} == set(zoo.pids())


def test_errors_are_raised_in_the_loop(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(asyckpt.NoSuchProcess):
            await asyckpt.aio.checkpoint_tree(2**22 + 1, tmp_path / "x.ackpt")
        with pytest.raises(asyckpt.NoSuchProcess):
            await consume(asyckpt.aio.open_capture(2**22 + 1))
        with pytest.raises(asyckpt.NotAnImage):
            await asyckpt.aio.read_image(tmp_path)

    run(main)
    assert os.listdir(tmp_path) == []


def test_leaving_the_stream_early_thaws(zoo: Tree) -> None:
    before = snapshot(zoo)

    async def main() -> None:
        async with asyckpt.aio.open_capture(zoo.pid) as stream:
            async for _ in stream:
                break
        with pytest.raises(KeyError):
            await consume(asyckpt.aio.open_capture(zoo.pid), fail=KeyError("the consumer's"))

    run(main)
    assert_running_where_it_was(zoo, before)


@pytest.fixture
def big_tree(spawn: Any) -> Tree:
    """The benchmark's 27k-fd tree: its capture takes several hundred ms."""
    tree: Tree = spawn(SPAWN_TREE, "20", "500")
    return tree


async def capture_to(pid: int, dest: Path) -> None:
    await asyckpt.aio.checkpoint_tree(pid, dest)


async def stream_all(pid: int, dest: Path) -> None:
    await consume(asyckpt.aio.open_capture(pid))


@pytest.mark.parametrize("capture", [capture_to, stream_all])
def test_timeout_100ms_in_thaws_before_it_completes(
    big_tree: Tree, tmp_path: Path, capture: Callable[[int, Path], Coroutine[Any, Any, None]]
) -> None:
    before = snapshot(big_tree)
    dest = tmp_path / "big.ackpt"

    async def main() -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await capture(big_tree.pid, dest)
        # The cancellation is complete: the tree must be restored by now.
        return time.monotonic()

    start = time.monotonic()
    done = run(main)
    assert done - start < 0.1 + 2.0
    assert_running_where_it_was(big_tree, before)
    assert os.listdir(tmp_path) == []  # no image, no temporary file


def test_task_cancel_while_frozen(big_tree: Tree, tmp_path: Path) -> None:
    if not V1_FREEZER.is_dir():
        pytest.fail("this test watches the v1 freezer cgroup asyckpt makes")
    before = snapshot(big_tree)
    cgroup = V1_FREEZER / f"asyckpt-{os.getpid()}-{big_tree.pid}" / "freezer.state"

    async def main() -> tuple[float, float]:
        task = asyncio.create_task(
            asyckpt.aio.checkpoint_tree(big_tree.pid, tmp_path / "big.ackpt")
        )
        # The loop stays free while the capture runs: poll for the frozen state.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if cgroup.read_text().strip() == "FROZEN":
                    break
            except OSError:
                pass
            await asyncio.sleep(0.001)
        else:
            raise AssertionError("the tree was never frozen")
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return cancelled_at, time.monotonic()

    cancelled_at, done = run(main)
    assert done - cancelled_at < 2.0
    assert not cgroup.parent.exists()
    assert_running_where_it_was(big_tree, before)
    assert os.listdir(tmp_path) == []


def test_concurrent_captures_from_one_loop(spawn: Any, zoo: Tree, tmp_path: Path) -> None:
    other: Tree = spawn(Path(__file__).parent / "workloads" / "fd_zoo.py")

    async def main() -> list[asyckpt.CaptureSummary]:
        return list(
            await asyncio.gather(
                asyckpt.aio.checkpoint_tree(zoo.pid, tmp_path / "a.ackpt"),
                asyckpt.aio.checkpoint_tree(other.pid, tmp_path / "b.ackpt"),
            )
        )

    a, b = run(main)
    assert asyckpt.read_image(tmp_path / "a.ackpt").header.root_pid == zoo.pid
    assert asyckpt.read_image(tmp_path / "b.ackpt").header.root_pid == other.pid
    assert a.fds > 0 and b.fds > 0
