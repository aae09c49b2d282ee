"""Capture real process trees and check the image against what each tree set up."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions, File, read_image

from .conftest import SPAWN_TREE, Tree, asyckpt_cgroups, cgroup_of, running

FREEZERS = ["cgroup-v1", "cgroup-v2"]


def capture(
    tree: Tree, dest: Path, dispatch: asyckpt.Dispatch | None = None, **options: Any
) -> asyckpt.CaptureSummary:
    return trio.run(
        lambda: asyckpt.checkpoint_tree(
            tree.pid, dest, options=CaptureOptions(**options), dispatch=dispatch
        )
    )


def own_handlers() -> asyckpt.Dispatch:
    """asyckpt's own handlers only: pipes and sockets stay generic whatever plugins are
    installed (the bundled ones handle them)."""
    return asyckpt.load_handlers(autoload=False)


def fds_of(image: asyckpt.Image, pid: int, tid: int | None = None) -> dict[int, tuple[Any, File]]:
    task = next(t for t in image.tasks if t.pid == pid)
    table = task.fd_table
    if tid is not None:
        table = next(th.fd_table for th in task.threads if th.tid == tid)
    return {fd.fd: (fd, f) for fd, f in image.fds(table)}


@pytest.fixture(params=FREEZERS)
def zoo_image(request: pytest.FixtureRequest, zoo: Tree, tmp_path: Path) -> asyckpt.Image:
    before = {pid: cgroup_of(pid) for pid in zoo.pids()}
    summary = capture(zoo, tmp_path / "zoo.ackpt", freeze=request.param)
    assert summary.freezer == request.param
    # Thawed, and every task back where it was.
    for pid, cg in before.items():
        assert cgroup_of(pid) == cg
        assert running(pid)
    assert not asyckpt_cgroups()
    assert os.stat(tmp_path / "zoo.ackpt").st_mode & 0o777 == 0o600
    return read_image(tmp_path / "zoo.ackpt")


def test_tree_shape(zoo: Tree, zoo_image: asyckpt.Image) -> None:
    info = zoo.info
    pids = [t.pid for t in zoo_image.tasks]
    # Pre-order by pid: the root, then its children ascending.
    assert pids == [info["pid"], *sorted([info["clone"], info["fork"], info["bare"]])]
    root = zoo_image.tasks[0]
    assert root.ppid == os.getpid()
    assert {th.tid for th in root.threads} == {
        info["pid"],
        info["thread_shared"],
        info["thread_unshared"],
    }
    assert zoo_image.header.root_pid == info["pid"]
    assert zoo_image.header.consistent
    assert {m.id for m in zoo_image.mounts} == {root.mnt_ns}
    mnt_ids = {e.mnt_id for e in zoo_image.mounts[0].mounts}
    # Pipes, sockets and anon inodes live on internal mounts no mount table lists.
    on_paths = [f for f in zoo_image.files.values() if f.path.startswith("/")]
    assert on_paths and all(f.mnt_id in mnt_ids for f in on_paths)


def test_offsets_flags_and_cloexec(zoo: Tree, zoo_image: asyckpt.Image) -> None:
    info = zoo.info
    fds = fds_of(zoo_image, info["pid"])
    fd, f = fds[info["rw"]]
    # The fork child moved the shared offset from 37 to 50.
    assert (f.type, f.handler, f.access, f.pos, f.size) == ("reg", "reg", "rw", 50, 100)
    assert f.path.endswith("/data") and not f.deleted
    assert fd.cloexec is False
    assert f.flags & os.O_ACCMODE == os.O_RDWR and not f.flags & os.O_CLOEXEC

    fd, f = fds[info["again"]]
    assert (f.access, f.pos, fd.cloexec) == ("r", 5, True)

    fd, f = fds[info["append"]]
    assert f.flags & os.O_APPEND and f.flags & os.O_NONBLOCK and f.access == "w"

    _, f = fds[info["opath_link"]]
    assert (f.type, f.access) == ("link", "path")
    assert f.flags & os.O_PATH
    data = __import__("msgspec").msgpack.decode(f.data)
    assert data == {"kind": "asyckpt.link", "target": "/etc/hostname"}

    _, f = fds[info["opath_file"]]
    assert (f.type, f.access) == ("reg", "path")

    _, f = fds[info["dir"]]
    assert (f.type, f.handler) == ("dir", "dir")

    _, f = fds[info["deleted"]]
    assert f.deleted and f.nlink == 0 and f.path.endswith("/gone") and f.pos == 4

    fd, f = fds[info["high"]]
    assert fd.cloexec is True and f.id == fds[info["rw"]][1].id


def test_shared_and_separate_descriptions(zoo: Tree, zoo_image: asyckpt.Image) -> None:
    info = zoo.info
    root = fds_of(zoo_image, info["pid"])
    child = fds_of(zoo_image, info["fork"])
    # dup(), dup2() and fork share one description; a second open() is another.
    assert root[info["dup"]][1].id == root[info["rw"]][1].id
    assert child[info["rw"]][1].id == root[info["rw"]][1].id
    assert root[info["again"]][1].id != root[info["rw"]][1].id
    assert child[info["child_own"]][1].path.endswith("/child-own")
    assert info["child_own"] not in root or root[info["child_own"]][1].id != (
        child[info["child_own"]][1].id
    )
    # Every description is written once.
    assert len(zoo_image.files) == len({f.id for f in zoo_image.files.values()})


def test_fd_tables_shared_and_unshared(zoo: Tree, zoo_image: asyckpt.Image) -> None:
    info = zoo.info
    tasks = {t.pid: t for t in zoo_image.tasks}
    root = tasks[info["pid"]]
    # clone(CLONE_FILES) shares the table itself; fork copies it.
    assert tasks[info["clone"]].fd_table == root.fd_table
    assert tasks[info["fork"]].fd_table != root.fd_table
    threads = {th.tid: th.fd_table for th in root.threads}
    assert threads[info["thread_shared"]] == root.fd_table
    own = threads[info["thread_unshared"]]
    assert own not in (root.fd_table, None)
    assert zoo_image.table_owner[own] == info["thread_unshared"]
    fds = fds_of(zoo_image, info["pid"], info["thread_unshared"])
    assert fds[info["thread_own"]][1].path.endswith("/thread-own")


def test_bare_task_and_generic_records(zoo: Tree, zoo_image: asyckpt.Image, tmp_path: Path) -> None:
    info = zoo.info
    assert sorted(fds_of(zoo_image, info["bare"])) == [0, 1, 2]
    capture(zoo, tmp_path / "own.ackpt", own_handlers())
    image = read_image(tmp_path / "own.ackpt")
    pipe = fds_of(image, info["pid"])[info["pipe_r"]][1]
    assert (pipe.type, pipe.handler, pipe.access) == ("pipe", None, "r")
    assert pipe.path.startswith("pipe:[")
    assert image.trailer.generic["pipe"] >= 1


def _idle(pid: int) -> None:
    """Wait until every task of the tree sleeps: a task's recorded state is part of the
    body, and one just woken (by the previous capture's thaw) may still be running."""
    from asyckpt._discover import walk_tree

    for _ in range(1000):
        if all(t.state in "SZ" for t in walk_tree(pid)):
            return
        time.sleep(0.01)
    raise AssertionError(f"the tree of {pid} never went idle: {walk_tree(pid)}")


def test_capture_is_deterministic(zoo: Tree, tmp_path: Path) -> None:
    bodies = []
    for n in range(2):
        _idle(zoo.pid)
        capture(zoo, tmp_path / f"{n}.ackpt")
        data = (tmp_path / f"{n}.ackpt").read_bytes()
        bodies.append(_body(data))
    assert bodies[0] == bodies[1]


def test_image_is_the_same_whichever_reader(
    zoo: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C reader leaning on the parent's rows (the default, frozen), the same handing
    every table to the resolver in pieces of 3 fds as it reads them, the C reader
    reading every fd, each table whole, and the pure-Python readers and dedup loop (in
    pieces too) give byte-identical bodies."""
    from asyckpt import _procread, _scanning

    read = _procread.iter_fd_tables
    bodies = []
    _idle(zoo.pid)
    capture(zoo, tmp_path / "lean.ackpt")
    bodies.append(_body((tmp_path / "lean.ackpt").read_bytes()))
    monkeypatch.setattr(_scanning, "PIECE", 3)
    _idle(zoo.pid)
    capture(zoo, tmp_path / "pieces.ackpt")
    bodies.append(_body((tmp_path / "pieces.ackpt").read_bytes()))
    with monkeypatch.context() as m:
        m.setattr(
            "asyckpt._scanning.iter_fd_tables",
            lambda owners, **kw: read(owners, missing_ok=kw["missing_ok"]),
        )
        _idle(zoo.pid)
        capture(zoo, tmp_path / "full.ackpt")
    bodies.append(_body((tmp_path / "full.ackpt").read_bytes()))
    monkeypatch.setattr(_procread, "_read_tables_c", None)
    monkeypatch.setattr("asyckpt._taskread._read_task_files_c", None)
    monkeypatch.setattr(_procread, "_read_task_c", None)
    monkeypatch.setattr("asyckpt._capture.dedup_rows", None)
    _idle(zoo.pid)
    capture(zoo, tmp_path / "py.ackpt")
    bodies.append(_body((tmp_path / "py.ackpt").read_bytes()))
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]


def _body(data: bytes) -> bytes:
    """The bytes between the header frame and the trailer frame."""
    from asyckpt._image import MAGIC

    off = len(MAGIC) + 4
    start = off + 4 + int.from_bytes(data[off : off + 4], "big")
    pos, last = start, start
    while pos < len(data) - 32:  # the sha256 digest closes the image
        last = pos
        pos += 4 + int.from_bytes(data[pos : pos + 4], "big")
    return data[start:last]


def test_spawn_tree_workload(spawn: Any, tmp_path: Path) -> None:
    tree = spawn(SPAWN_TREE, "3", "60")
    summary = capture(tree, tmp_path / "t.ackpt")
    image = read_image(tmp_path / "t.ackpt")
    assert summary.tasks == 4 == len(image.tasks)
    live = sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in tree.pids())
    assert summary.fds == live
    kinds = {f.type for f in image.files.values()}
    assert {"reg", "dir", "link", "pipe", "socket"} <= kinds
    assert any(f.deleted for f in image.files.values())


def test_open_capture_streams_records_in_order(zoo: Tree) -> None:
    async def main() -> tuple[list[Any], asyckpt.CaptureSummary | None]:
        records = []
        async with asyckpt.open_capture(zoo.pid) as stream:
            async for rec in stream:
                records.append(rec)
            assert stream.summary is not None  # known as soon as the stream ended
        return records, stream.summary

    records, summary = trio.run(main)
    assert summary is not None and summary.tasks == 4
    seen_files: set[int] = set()
    seen_tables: set[int] = set()
    for rec in records:
        if isinstance(rec, asyckpt.File):
            seen_files.add(rec.id)
        elif isinstance(rec, asyckpt.Fd):
            assert rec.file in seen_files  # every object precedes its first reference
        elif isinstance(rec, asyckpt.FdTable):
            seen_tables.add(rec.id)
        elif isinstance(rec, asyckpt.Task):
            assert rec.fd_table in seen_tables
    assert not asyckpt_cgroups()


def test_leaving_the_stream_early_thaws(zoo: Tree) -> None:
    before = {pid: cgroup_of(pid) for pid in zoo.pids()}

    async def main() -> None:
        async with asyckpt.open_capture(zoo.pid) as stream:
            async for _rec in stream:
                # Records come only once the tree is thawed and back in its cgroups.
                assert not asyckpt_cgroups()
                assert {pid: cgroup_of(pid) for pid in zoo.pids()} == before
                break
        reached.append(True)

    reached: list[bool] = []
    trio.run(main)
    assert reached  # leaving early is not an error
    assert not asyckpt_cgroups()
    assert all(running(pid) for pid in zoo.pids())


def test_cancelling_checkpoint_tree_thaws(spawn: Any, tmp_path: Path) -> None:
    tree = spawn(SPAWN_TREE, "4", "400")
    dest = tmp_path / "c.ackpt"

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def cancel_once_frozen() -> None:
                # The kernel's freezer state is the thing to watch; no trio event fires.
                while not any(  # noqa: ASYNC110
                    (cg / "freezer.state").exists()
                    and (cg / "freezer.state").read_text().strip() == "FROZEN"
                    for cg in asyckpt_cgroups()
                ):
                    await trio.sleep(0.0005)
                nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_once_frozen)
            await asyckpt.checkpoint_tree(
                tree.pid, dest, options=CaptureOptions(freeze="cgroup-v1")
            )
            pytest.fail("the capture finished before it could be cancelled")

    trio.run(main)
    assert not asyckpt_cgroups()
    assert all(running(pid) for pid in tree.pids())
    assert not dest.exists() and list(tmp_path.glob(".c.ackpt.*")) == []


def test_strict_fails_on_generic_fd_and_thaws(zoo: Tree, tmp_path: Path) -> None:
    with pytest.raises(asyckpt.StrictViolation) as exc_info:
        capture(zoo, tmp_path / "s.ackpt", own_handlers(), strict=True)
    err = exc_info.value
    assert err.pid is not None and err.fd is not None
    assert "no handler claims" in str(err)
    assert not (tmp_path / "s.ackpt").exists()
    assert not asyckpt_cgroups()
    assert all(running(pid) for pid in zoo.pids())


def test_freeze_none_is_marked_inconsistent(zoo: Tree, tmp_path: Path) -> None:
    summary = capture(zoo, tmp_path / "n.ackpt", freeze="none")
    image = read_image(tmp_path / "n.ackpt")
    assert summary.freezer == image.header.freezer == "none"
    assert image.header.consistent is False


def test_collector_paused_during_the_capture_only(
    zoo: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for (tune_interpreter, as the CLI does), the cyclic collector is off while
    the capture runs (it would walk every row and record again and again) and as it was
    afterwards, also after a failed capture; the switch interval likewise shortened,
    then restored."""
    import gc

    from asyckpt import _capture, _tuning

    seen = []
    switch = []
    real = _capture.materialize

    def spy(part: Any) -> Any:
        seen.append(gc.isenabled())
        switch.append(sys.getswitchinterval())
        return real(part)

    assert gc.isenabled()
    before = sys.getswitchinterval()
    monkeypatch.setattr(_capture, "materialize", spy)
    capture(zoo, tmp_path / "a.ackpt", tune_interpreter=True)
    assert seen
    assert not any(seen)
    assert gc.isenabled()
    # The switch interval too: shortened during the capture, restored after.
    assert set(switch) == {min(before, _tuning.SWITCH_INTERVAL)}
    assert sys.getswitchinterval() == before
    with pytest.raises(asyckpt.AsyckptError):
        # exists, no force: fails before capturing
        capture(zoo, tmp_path / "a.ackpt", tune_interpreter=True)
    with pytest.raises(asyckpt.StrictViolation):
        capture(
            zoo, tmp_path / "b.ackpt", dispatch=own_handlers(), strict=True, tune_interpreter=True
        )
    assert gc.isenabled()
    assert sys.getswitchinterval() == before
    gc.disable()
    try:
        capture(zoo, tmp_path / "c.ackpt", tune_interpreter=True)
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


def test_small_tasks_records_are_made_and_sent_together(spawn: Any) -> None:
    # After the thaw, a thread hop and a batch per task cost more than the records of a
    # small task: tasks are taken until MAKE_RECORDS records are made.
    from asyckpt._capture import MAKE_RECORDS
    from asyckpt._capture import capture as run_capture
    from asyckpt._records import Content, Fd, Task

    tree = spawn(SPAWN_TREE, "12", "3")  # each task holds an unlinked file of its own

    async def main(ghost_limit: int) -> tuple[asyckpt.CaptureSummary, list[list[Any]]]:
        send, recv = trio.open_memory_channel[list[Any]](1000)
        async with send:
            summary = await run_capture(tree.pid, send, CaptureOptions(ghost_limit=ghost_limit))
        async with recv:
            return summary, [batch async for batch in recv]

    for ghost_limit in (0, 1 << 20):
        summary, batches = trio.run(main, ghost_limit)
        records = [rec for batch in batches for rec in batch]
        assert summary.tasks == 13 == sum(type(r) is Task for r in records)
        assert sum(type(r) is Fd for r in records) == summary.fds < MAKE_RECORDS
        # The saved content comes in the same batch, right after its file's record.
        assert summary.contents == sum(type(r) is Content for r in records)
        assert summary.contents == (13 if ghost_limit else 0)
        for i, rec in enumerate(records):
            if type(rec) is Content:
                assert records[i - 1].id == rec.file
        assert len(batches) == 1
