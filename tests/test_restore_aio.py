"""``asyckpt.aio.restore_tree``: ``--tree --hold`` from asyncio, and a cancelled restore
leaves no holder behind (real trees, asyncio's own cancellation)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import asyckpt
import asyckpt.aio
from tests.conftest import WORKLOADS, Tree
from tests.test_restore import across, capture


def _image_of_a_stopped_tree(spawn: Any, tmp_path: Path) -> Any:
    tree: Tree = spawn(WORKLOADS / "restore_tree.py")
    image = capture(tree.pid, tmp_path / "a.ackpt")
    os.killpg(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    return image


def _session_members(sid: int) -> list[int]:
    """The processes of session ``sid`` (a holder tree's: its root made it)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            out.append(int(entry))
    return out


def _gone(sid: int) -> bool:
    for _ in range(200):
        if not _session_members(sid):
            return True
        time.sleep(0.02)
    return False


def _holders_forked() -> list[int]:
    """Children of this process that lead a session of their own: root holders."""
    out = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
            for pid in map(int, f.read().split()):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as s:
                    if int(s.read().rsplit(b")", 1)[1].split()[3]) == pid:
                        out.append(pid)
    return out


def test_restore_tree_from_asyncio(spawn: Any, tmp_path: Path) -> None:
    before = _image_of_a_stopped_tree(spawn, tmp_path)
    root = asyncio.run(asyckpt.aio.restore_tree(before))
    try:
        after = capture(root, tmp_path / "b.ackpt")
        assert across(after) == across(before)
        os.kill(root, signal.SIGTERM)  # the root ends the tree
        assert os.waitpid(root, 0)[1] == 0
        assert _gone(root)
    finally:
        asyckpt._restore_hold.end_tree(root)


def test_restore_refused_from_asyncio_is_the_error(spawn: Any, tmp_path: Path) -> None:
    before = _image_of_a_stopped_tree(spawn, tmp_path)
    with pytest.raises(asyckpt.RestoreError, match="--root"):
        asyncio.run(asyckpt.aio.restore_tree(before, root=str(tmp_path / "missing")))
    assert _holders_forked() == []


def test_a_cancelled_restore_leaves_no_holder(spawn: Any, tmp_path: Path) -> None:
    """Cancelled as soon as its root holder exists (the holders still installing their
    tables), or later: the tree is killed and the root reaped before the cancellation
    completes.  Tried until one cancellation came while the restore ran."""
    before = _image_of_a_stopped_tree(spawn, tmp_path)

    async def attempt() -> tuple[bool, int | None]:
        task = asyncio.ensure_future(asyckpt.aio.restore_tree(before))
        seen: list[int] = []
        while not task.done() and not seen:
            seen = _holders_forked()
            await asyncio.sleep(0)
        cancelled = task.cancel()
        try:
            return False, await task
        except asyncio.CancelledError:
            assert cancelled
            left = _holders_forked()
            for pid in left:  # the test's own cleanup, were restore to leave one
                asyckpt._restore_hold.end_tree(pid)
            assert left == []  # reaped by the time the cancellation ended
            return True, seen[0] if seen else None

    mid_way = 0
    for _ in range(20):
        was_cancelled, pid = asyncio.run(attempt())
        if not was_cancelled:
            assert pid is not None
            asyckpt._restore_hold.end_tree(pid)
            continue
        if pid is not None:
            mid_way += 1
            assert _gone(pid), _session_members(pid)
            if mid_way >= 3:
                break
    assert mid_way >= 1
