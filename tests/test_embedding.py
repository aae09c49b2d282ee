"""The library is a good guest in its embedder's process: what the consumer of
``open_capture`` raises reaches it unchanged, a default capture leaves process-wide
interpreter state alone, and ``checkpoint_tree`` is ``open_capture`` plus the writer."""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions
from asyckpt.testing import dispatch_with

from .conftest import SPAWN_TREE, Tree, asyckpt_cgroups, cgroup_of, task_state
from .test_capture import _body, _idle

FROZEN_FILES = ("freezer.state", "cgroup.freeze")


def _thawed_and_home(tree: Tree, before: dict[int, str]) -> None:
    assert not asyckpt_cgroups()
    assert {pid: cgroup_of(pid) for pid in tree.pids()} == before
    assert all(task_state(pid) in "SR" for pid in tree.pids())


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc_type", [Boom, ValueError, KeyboardInterrupt, asyckpt.NoSuchProcess])
def test_the_consumers_exception_propagates_unchanged(zoo: Tree, exc_type: type) -> None:
    before = {pid: cgroup_of(pid) for pid in zoo.pids()}
    raised = exc_type("from the consumer")
    after_block: list[bool] = []

    async def main() -> None:
        async with asyckpt.open_capture(zoo.pid) as stream:
            async for _rec in stream:
                raise raised
        after_block.append(True)

    with pytest.raises(exc_type) as info:
        trio.run(main)
    assert info.value is raised  # the same object: not wrapped, not replaced
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert not after_block
    _thawed_and_home(zoo, before)


def test_a_timeout_in_the_loop_propagates(zoo: Tree) -> None:
    before = {pid: cgroup_of(pid) for pid in zoo.pids()}

    async def main() -> None:
        async with asyckpt.open_capture(zoo.pid) as stream:
            async for _rec in stream:
                with trio.fail_after(0.01):
                    await trio.sleep(5)

    with pytest.raises(trio.TooSlowError):
        trio.run(main)
    _thawed_and_home(zoo, before)


def test_a_timeout_around_the_block_while_frozen_thaws(spawn: Any) -> None:
    tree = spawn(SPAWN_TREE, "4", "400")
    before = {pid: cgroup_of(pid) for pid in tree.pids()}
    fired: list[bool] = []

    async def main() -> None:
        with trio.fail_after(60) as deadline:

            async def expire_once_frozen() -> None:
                # The kernel's freezer state is the thing to watch; no trio event fires.
                while not any(  # noqa: ASYNC110
                    (cg / name).exists() and (cg / name).read_text().strip() in ("FROZEN", "1")
                    for cg in asyckpt_cgroups()
                    for name in FROZEN_FILES
                ):
                    await trio.sleep(0.0005)
                fired.append(True)
                deadline.deadline = trio.current_time()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(expire_once_frozen)
                async with asyckpt.open_capture(tree.pid) as stream:
                    async for _rec in stream:
                        pass
                pytest.fail("the capture finished before its deadline")

    with pytest.raises(trio.TooSlowError):
        trio.run(main)
    assert fired
    _thawed_and_home(tree, before)


def test_a_library_capture_leaves_the_interpreter_alone(zoo: Tree) -> None:
    interval = 0.007  # not the default, so that a reset to the default shows too
    seen: list[tuple[str, bool, float]] = []

    class Watched(msgspec.Struct, tag="test.watched", tag_field="kind"):
        pass

    class Watcher:
        """Looks at the interpreter while the tree is frozen."""

        name = "watcher"
        kinds = frozenset({"pipe"})
        record_type = Watched

        def begin(self, session: asyckpt.CaptureSession) -> None:
            seen.append(("frozen", gc.isenabled(), sys.getswitchinterval()))

        def capture(self, facts: asyckpt.FdFacts, ctx: asyckpt.HandlerContext) -> Watched:
            seen.append(("frozen", gc.isenabled(), sys.getswitchinterval()))
            raise LookupError("not recorded: only watching")

    async def main(options: CaptureOptions) -> None:
        async with asyckpt.open_capture(
            zoo.pid, options=options, dispatch=dispatch_with(Watcher)
        ) as stream:
            async for _rec in stream:
                seen.append(("loop", gc.isenabled(), sys.getswitchinterval()))

    was = sys.getswitchinterval()
    assert gc.isenabled()
    sys.setswitchinterval(interval)
    interval = sys.getswitchinterval()  # as the interpreter rounds it
    try:
        trio.run(main, CaptureOptions())
        assert {where for where, *_ in seen} == {"frozen", "loop"}
        assert {(enabled, switch) for _, enabled, switch in seen} == {(True, interval)}
        assert gc.isenabled() and sys.getswitchinterval() == interval

        # Asked for (as the CLI does): tuned for the capture, restored after.
        seen.clear()
        trio.run(main, CaptureOptions(tune_interpreter=True))
        # While frozen, at least (the consumer may read the last batches after the
        # capture returned and restored both).
        frozen = [(enabled, switch) for where, enabled, switch in seen if where == "frozen"]
        assert len(frozen) > 1
        assert all(not enabled and switch < interval for enabled, switch in frozen)
        # Restored, to the microsecond the interpreter keeps it in.
        assert gc.isenabled() and sys.getswitchinterval() == pytest.approx(interval, abs=2e-6)
    finally:
        sys.setswitchinterval(was)
        gc.enable()


def test_checkpoint_tree_writes_the_stream_open_capture_hands_out(
    zoo: Tree, tmp_path: Path
) -> None:
    """One data path: the image body is the records open_capture yields, framed."""
    from asyckpt._image import _frame

    encoder = msgspec.msgpack.Encoder()

    async def streamed() -> bytes:
        async with asyckpt.open_capture(zoo.pid) as stream:
            return b"".join([_frame(encoder.encode(rec)) async for rec in stream])

    _idle(zoo.pid)
    body = trio.run(streamed)
    _idle(zoo.pid)
    trio.run(lambda: asyckpt.checkpoint_tree(zoo.pid, tmp_path / "z.ackpt"))
    assert body and _body((tmp_path / "z.ackpt").read_bytes()) == body


def test_the_reader_stays_within_scan_ahead_of_a_slow_resolver(
    spawn: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan channel is bounded: a reader gets at most SCAN_AHEAD chunks ahead of
    what the resolver has taken (and at most that many more are taken, unresolved)."""
    from asyckpt import _build, _scanning

    tree = spawn(SPAWN_TREE, "30", "20")
    counts = {"read": 0, "resolved": 0, "ahead": 0}
    scan_chunk, resolve = _scanning.scan_chunk, _build.RecordBuilder.resolve

    def counting_scan(chunk: Any, inherit: Any = None, files: Any = None, **kw: Any) -> Any:
        out = scan_chunk(chunk, inherit, files, **kw)
        counts["read"] += len(chunk)
        counts["ahead"] = max(counts["ahead"], counts["read"] - counts["resolved"])
        return out

    def slow_resolve(self: Any, scan: Any) -> Any:
        time.sleep(0.01)
        counts["resolved"] += 1
        return resolve(self, scan)

    monkeypatch.setattr(_scanning, "scan_chunk", counting_scan)
    monkeypatch.setattr(_build.RecordBuilder, "resolve", slow_resolve)
    summary = trio.run(lambda: asyckpt.checkpoint_tree(tree.pid, tmp_path / "s.ackpt"))
    assert summary.tasks == 31 == counts["read"] == counts["resolved"]
    # One task per chunk on this tree.
    assert 1 <= counts["ahead"] <= 2 * _scanning.SCAN_AHEAD + _scanning.SCAN_THREADS
