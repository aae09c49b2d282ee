"""The per-capture hooks of the handler contract, run by real captures of the zoo tree:
``begin(session)`` once per capture while the tree is frozen, its state reaching
``capture`` and ``finish`` (``ctx.state``, ``tree.state``), ``finish(record, tree)`` once
per record after the thaw with what the whole tree holds, and what a failing or hanging
hook does to the capture."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
import trio

import asyckpt
from asyckpt import (
    CaptureLinks,
    CaptureOptions,
    CaptureSession,
    CaptureTree,
    FdFacts,
    HandlerContext,
    PluginError,
    read_image,
)
from asyckpt.testing import dispatch_with, facts_of, handler_context, load_handler

from .conftest import Tree, asyckpt_cgroups, running


def capture(tree: Tree, dest: Path, *handlers: type, **options: Any) -> asyckpt.CaptureSummary:
    dispatch = dispatch_with(*handlers)
    return trio.run(
        lambda: asyckpt.checkpoint_tree(
            tree.pid, dest, options=CaptureOptions(**options), dispatch=dispatch
        )
    )


def freezer_state(pid: int) -> str:
    """The v1 freezer state of the cgroup ``pid`` is in."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            state = Path(f"/sys/fs/cgroup/freezer{path.rstrip('/')}/freezer.state")
            # The root cgroup cannot be frozen and has no state file.
            return state.read_text().strip() if path != "/" else "THAWED"
    raise LookupError("no v1 freezer")


class PipeNote(msgspec.Struct, tag="test.pipenote", tag_field="kind", kw_only=True):
    ino: int
    same_state: bool
    other_end_in_tree: bool | None = None
    finished: int = 0


class Recorder:
    """Records what the hooks were given and when; one per test (class attributes are
    reset by ``fresh``)."""

    name = "pipenote"
    kinds = frozenset({"pipe"})
    record_type = PipeNote
    calls: ClassVar[list[tuple[str, Any]]] = []

    @classmethod
    def fresh(cls) -> type[Recorder]:
        return type("Recorder", (cls,), {"calls": []})

    def begin(self, session: CaptureSession) -> dict[str, Any]:
        state = {
            "pids": session.pids,
            "tids": session.tids,
            "pipe_data": session.pipe_data,
            "consistent": session.consistent,
            "frozen": [freezer_state(pid) for pid in session.pids],
            "thread": threading.get_ident(),
        }
        self.calls.append(("begin", state))
        return state

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> PipeNote:
        self.calls.append(("capture", (ctx.session, ctx.state)))
        return PipeNote(ino=facts.st.st_ino, same_state=ctx.state is self.calls[0][1])

    def finish(self, record: PipeNote, tree: CaptureTree) -> PipeNote:
        self.calls.append(("finish", (tree.state, sorted(tree.pids))))
        record.finished += 1
        record.other_end_in_tree = tree.holds("pipe", record.ino)
        assert not tree.holds("pipe", 1) and not tree.holds("socket", record.ino)
        return record


def test_begin_capture_and_finish_see_one_session(zoo: Tree, tmp_path: Path) -> None:
    handler = Recorder.fresh()
    capture(zoo, tmp_path / "s.ackpt", handler, freeze="cgroup-v1", pipe_data=4096)
    image = read_image(tmp_path / "s.ackpt")
    calls = handler.calls
    begins = [c for c in calls if c[0] == "begin"]
    assert len(begins) == 1  # once per capture
    state = begins[0][1]
    pids = [t.pid for t in image.tasks if t.state != "Z"]
    assert list(state["pids"]) == pids  # tree pre-order
    threads = {th.tid for t in image.tasks for th in t.threads}
    assert set(state["tids"]) == threads and len(state["tids"]) == len(threads)
    assert (state["pipe_data"], state["consistent"]) == (4096, True)
    assert set(state["frozen"]) == {"FROZEN"}  # begin ran while the tree was frozen
    assert state["thread"] != threading.get_ident()  # in a worker thread

    captures = [c[1] for c in calls if c[0] == "capture"]
    assert captures and all(st is state for _, st in captures)
    sessions = {id(sess) for sess, _ in captures}
    assert len(sessions) == 1
    finishes = [c[1] for c in calls if c[0] == "finish"]
    # finish once per record, after every capture, with the same state.
    assert len(finishes) == len(captures)
    assert calls.index(("finish", finishes[0])) > max(
        i for i, c in enumerate(calls) if c[0] == "capture"
    )
    assert all(st is state and ps == sorted(pids) for st, ps in finishes)

    pipes = [f for f in image.files.values() if f.type == "pipe"]
    records = [msgspec.msgpack.decode(f.data, type=PipeNote) for f in pipes]
    assert records and all(r.finished == 1 and r.same_state for r in records)
    # The zoo's own pipe has both ends in the tree; so has each pipe it holds.
    pipe_r = next(f for fd, f in image.fds(image.tasks[0].fd_table) if fd.fd == zoo.info["pipe_r"])
    assert msgspec.msgpack.decode(pipe_r.data, type=PipeNote).other_end_in_tree is True


class Thawed(msgspec.Struct, tag="test.thawed", tag_field="kind", kw_only=True):
    pid: int
    frozen_at_capture: str
    frozen_at_finish: str = ""


class ThawCheck:
    name = "thawcheck"
    kinds = frozenset({"pipe"})
    record_type = Thawed

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Thawed:
        assert ctx.state is None  # no begin: no state
        return Thawed(pid=facts.pid, frozen_at_capture=freezer_state(facts.pid))

    def finish(self, record: Thawed, tree: CaptureTree) -> Thawed:
        record.frozen_at_finish = freezer_state(record.pid)
        return record


def test_finish_runs_after_the_thaw(zoo: Tree, tmp_path: Path) -> None:
    capture(zoo, tmp_path / "t.ackpt", ThawCheck, freeze="cgroup-v1")
    image = read_image(tmp_path / "t.ackpt")
    records = [
        msgspec.msgpack.decode(f.data, type=Thawed)
        for f in image.files.values()
        if f.handler == "thawcheck"
    ]
    assert records
    assert {(r.frozen_at_capture, r.frozen_at_finish) for r in records} == {("FROZEN", "THAWED")}


def _boom(self: Any, *args: Any) -> Any:
    raise RuntimeError("no luck")


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (
            "begin",
            "handler 'pipenote' failed: RuntimeError: its begin failed: RuntimeError: no luck",
        ),
        ("finish", "handler 'pipenote' failed: RuntimeError: no luck"),
        ("link", "handler 'pipenote' failed: RuntimeError: no luck"),
    ],
)
def test_a_failing_hook_leaves_the_files_generic(
    hook: str, message: str, zoo: Tree, tmp_path: Path
) -> None:
    failing = type("Recorder", (Recorder.fresh(),), {hook: _boom})
    summary = capture(zoo, tmp_path / "f.ackpt", failing)
    image = read_image(tmp_path / "f.ackpt")
    pipes = [f for f in image.files.values() if f.type == "pipe"]
    assert pipes and all(f.handler is None and f.error == message for f in pipes)
    assert summary.generic["pipe"] == len(pipes) == image.trailer.handler_errors
    assert "pipenote" not in {p.name for p in image.header.plugins}
    assert any(f.handler == "reg" for f in image.files.values())  # the rest as usual

    # Under --strict the capture fails, after the thaw, and writes nothing.
    everything = type(
        "Rest", (), {"name": "rest", "record_type": Thawed, "claims": lambda s, f: True}
    )
    everything.capture = lambda s, f, c: Thawed(pid=0, frozen_at_capture="")  # type: ignore[attr-defined]
    with pytest.raises(asyckpt.StrictViolation, match="handler 'pipenote' failed"):
        capture(zoo, tmp_path / "s.ackpt", failing, everything, strict=True)
    assert not (tmp_path / "s.ackpt").exists()
    assert not asyckpt_cgroups()
    assert all(running(pid) for pid in zoo.pids())


class Slow(Recorder):
    name = "slow"

    def begin(self, session: CaptureSession) -> None:
        time.sleep(3)


def test_a_hanging_begin_cannot_keep_the_tree_frozen(
    zoo: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyckpt._plugins.session

    monkeypatch.setattr(asyckpt._plugins.session, "SESSION_TIMEOUT", 0.5)
    started = time.monotonic()
    summary = capture(zoo, tmp_path / "h.ackpt", Slow)
    assert summary.frozen_ms < 2500
    image = read_image(tmp_path / "h.ackpt")
    pipes = [f for f in image.files.values() if f.type == "pipe"]
    assert pipes and all(f.handler is None for f in pipes)
    assert all("did not finish in 0.5 s" in (f.error or "") for f in pipes)
    assert time.monotonic() - started < 10
    assert all(running(pid) for pid in zoo.pids())


class SlowBlk(Slow):
    name = "slowblk"
    kinds = frozenset({"blk"})  # the zoo holds no block device


def test_the_thaw_waits_only_for_the_begins_that_matter(zoo: Tree, tmp_path: Path) -> None:
    # A handler that captured nothing: its begin (3 s here) is not waited for.
    started = time.monotonic()
    summary = capture(zoo, tmp_path / "n.ackpt", SlowBlk)
    assert summary.frozen_ms < 2000 and time.monotonic() - started < 2.5
    assert all(running(pid) for pid in zoo.pids())


def test_hooks_are_validated_and_listed() -> None:
    assert load_handler(Recorder).hooks() == ["begin", "finish"]
    assert load_handler(Linker).hooks() == ["link", "finish"]

    class AsyncLink(Linker):
        async def link(self, record: Linked, links: CaptureLinks) -> Linked:  # type: ignore[override]
            return record

    with pytest.raises(PluginError, match="link must be a plain function, not async"):
        load_handler(AsyncLink)

    class AsyncBegin(Recorder):
        async def begin(self, session: CaptureSession) -> None:  # type: ignore[override]
            pass

    with pytest.raises(PluginError, match="begin must be a plain function, not async"):
        load_handler(AsyncBegin)


def test_handler_context_runs_begin_for_a_direct_capture() -> None:
    handler = Recorder.fresh()
    r, w = os.pipe()
    try:
        with handler_context(handler, os.getpid(), pipe_data=10) as ctx:
            record = handler().capture(facts_of(os.getpid(), r), ctx)
            assert ctx.session.pids == (os.getpid(),) and ctx.session.pipe_data == 10
            assert ctx.session.consistent is False
    finally:
        os.close(r)
        os.close(w)
    assert record.same_state
    assert [c[0] for c in handler.calls] == ["begin", "capture"]
    # Outside of any session there is no state to have.
    with pytest.raises(LookupError, match="no capture session"):
        _ = HandlerContext(os.getpid()).session


class Linked(msgspec.Struct, tag="test.linked", tag_field="kind", kw_only=True):
    ref: tuple[int, int, int]
    frozen_at_link: str = ""
    itself: int | None = None
    stranger: int | None = -1
    finished_after_link: bool = False


class Linker:
    """Links each pipe while the tree is frozen: its own file id found from a
    description taken from the holder, and a pipe of the test's, in no task of the tree."""

    name = "linker"
    kinds = frozenset({"pipe"})
    record_type = Linked
    calls: ClassVar[list[str]] = []

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Linked:
        self.calls.append("capture")
        return Linked(ref=(facts.pid, facts.tid, facts.fd))

    def link(self, record: Linked, links: CaptureLinks) -> Linked:
        self.calls.append("link")
        assert links.state is None and links.pids == frozenset(links.session.pids)
        ref = links.ref
        pidfd = os.pidfd_open(ref.pid)
        r, w = os.pipe()
        try:
            from asyckpt._kernel import pidfd_getfd

            mine = pidfd_getfd(pidfd, ref.fd)
            try:
                itself = links.file_of(mine)
            finally:
                os.close(mine)
            stranger = links.file_of(r)
        finally:
            for fd in (pidfd, r, w):
                os.close(fd)
        return msgspec.structs.replace(
            record,
            ref=tuple(ref),
            frozen_at_link=freezer_state(ref.pid),
            itself=itself,
            stranger=stranger,
        )

    def finish(self, record: Linked, tree: CaptureTree) -> Linked:
        self.calls.append("finish")
        return msgspec.structs.replace(record, finished_after_link=bool(record.frozen_at_link))


def test_link_runs_frozen_after_every_capture_and_names_files(zoo: Tree, tmp_path: Path) -> None:
    handler = type("Linker", (Linker,), {"calls": []})
    capture(zoo, tmp_path / "l.ackpt", handler, freeze="cgroup-v1")
    image = read_image(tmp_path / "l.ackpt")
    calls = handler.calls
    n = calls.count("capture")
    assert n and calls == ["capture"] * n + ["link"] * n + ["finish"] * n
    linked = [f for f in image.files.values() if f.handler == "linker"]
    assert len(linked) == n
    for f in linked:
        rec = msgspec.msgpack.decode(f.data, type=Linked)
        assert rec.frozen_at_link == "FROZEN" and rec.finished_after_link
        assert rec.itself == f.id  # file_of: kcmp against every description of the tree
        assert rec.stranger is None
        # The ref is the fd the file was first seen through, in image order.
        pid, tid, fd = rec.ref
        task = next(t for t in image.tasks if t.pid == pid)
        table = next(th.fd_table for th in task.threads if th.tid == tid)
        first = next(fdrec for fdrec, file in image.fds(table) if file.id == f.id)
        assert first.fd == fd
    assert all(running(pid) for pid in zoo.pids())


def test_no_link_hook_no_link_phase(zoo: Tree, tmp_path: Path) -> None:
    # A capture whose handlers have no link hook never builds the links.
    import asyckpt._plugins.links

    built: list[object] = []
    original = asyckpt._plugins.links.CaptureLinks.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    asyckpt._plugins.links.CaptureLinks.__init__ = spy  # type: ignore[method-assign]
    try:
        capture(zoo, tmp_path / "n.ackpt", ThawCheck)
        assert built == []
        capture(zoo, tmp_path / "y.ackpt", type("Linker", (Linker,), {"calls": []}))
        assert len(built) == 1  # once per capture, not per record
    finally:
        asyckpt._plugins.links.CaptureLinks.__init__ = original  # type: ignore[method-assign]


class Hung(Recorder):
    """A begin that really hangs: it ignores ``session.cancelled`` and blocks until the
    test releases it."""

    name = "hung"
    release = threading.Event()
    started: ClassVar[list[float]] = []

    def begin(self, session: CaptureSession) -> None:
        self.started.append(time.monotonic())
        self.release.wait()


class PoliteNote(msgspec.Struct, tag="test.polite", tag_field="kind"):
    pass


class Polite(Recorder):
    """A begin that honours the contract: bounded by ``time_left()``, it returns as soon
    as ``session.cancelled`` is set."""

    name = "polite"
    kinds = frozenset({"blk"})  # claims nothing of the zoo: not waited for
    record_type = PoliteNote  # type: ignore[assignment]
    returned: ClassVar[list[tuple[float, float]]] = []

    def begin(self, session: CaptureSession) -> None:
        left = session.time_left()
        session.cancelled.wait(left + 60)
        self.returned.append((left, time.monotonic()))


def test_a_hung_begin_is_abandoned_once_and_never_piles_up(
    zoo: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyckpt._plugins.session
    from asyckpt._begins import abandoned_begins

    monkeypatch.setattr(asyckpt._plugins.session, "SESSION_TIMEOUT", 0.5)
    Hung.release.clear()
    Hung.started.clear()
    Polite.returned.clear()
    dispatch = dispatch_with(Hung, Polite)
    limiter_used: list[int] = []

    async def three_captures() -> list[asyckpt.CaptureSummary]:
        # One long-lived trio program, as an embedding supervisor is.
        out = []
        for n in range(3):
            dest = tmp_path / f"{n}.ackpt"
            out.append(await asyckpt.checkpoint_tree(zoo.pid, dest, dispatch=dispatch))
            limiter_used.append(trio.to_thread.current_default_thread_limiter().borrowed_tokens)
        return out

    try:
        summaries = trio.run(three_captures)
        deadline = time.monotonic() + 5
        while len(Polite.returned) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Started once: the next captures saw it still running and did not start another.
        assert len(Hung.started) == 1
        assert abandoned_begins()["hung"] == 1
        # The embedder's thread limiter lends nothing to the hung thread.
        assert limiter_used == [0, 0, 0]
        first, *later = [read_image(tmp_path / f"{n}.ackpt") for n in range(3)]
        pipes = [f for f in first.files.values() if f.type == "pipe"]
        assert pipes and all("did not finish in 0.5 s" in (f.error or "") for f in pipes)
        for image in later:
            pipes = [f for f in image.files.values() if f.type == "pipe"]
            assert pipes and all("still running" in (f.error or "") for f in pipes)
        # Only the first capture waited for the timeout.
        assert summaries[0].frozen_ms >= 400
        assert all(s.frozen_ms < 400 for s in summaries[1:])
        # A begin that follows the contract learned it should stop, and did, each time.
        assert len(Polite.returned) == 3
        assert all(0 < left <= 0.5 for left, _ in Polite.returned)
        assert all(running(pid) for pid in zoo.pids())
    finally:
        Hung.release.set()
    deadline = time.monotonic() + 5
    while "hung" in abandoned_begins() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "hung" not in abandoned_begins()
    # Once it returned, a capture starts it again.
    capture(zoo, tmp_path / "again.ackpt", Hung, Polite)
    assert len(Hung.started) == 2


class Quick(Recorder):
    name = "quick"
    kinds = frozenset({"blk"})  # claims nothing of the zoo: given up on at once
    record_type = PoliteNote  # type: ignore[assignment]

    def begin(self, session: CaptureSession) -> None:
        pass


def test_a_begin_given_up_on_before_it_ran_is_not_counted_as_hung(
    zoo: Tree, tmp_path: Path
) -> None:
    from asyckpt._begins import _Run, abandoned_begins

    # Given up on before its thread ran (a cancellation at once): never run, not hung.
    run = _Run("quick")
    run.abandon()
    assert "quick" not in abandoned_begins()
    assert run.call(load_handler(Quick), CaptureSession([zoo.pid])) is None
    assert "quick" not in abandoned_begins()
    # Real captures whose begin is not needed, one after the other: none is refused.
    dispatch = dispatch_with(Quick, Recorder.fresh())
    for n in range(5):
        trio.run(
            lambda n=n: asyckpt.checkpoint_tree(zoo.pid, tmp_path / f"{n}.ackpt", dispatch=dispatch)
        )
        assert "quick" not in abandoned_begins()
        pipes = [f for f in read_image(tmp_path / f"{n}.ackpt").files.values() if f.type == "pipe"]
        assert pipes and all(f.error is None for f in pipes)
