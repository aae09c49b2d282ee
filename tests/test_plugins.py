"""The fd-type handler contract: validation, dispatch order, conflicts, and handlers
(sync, async, failing) run by real captures.  Installing through entry points is in
test_plugins_installed.py, packaging in test_plugins_packaging.py."""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions, Device, FdFacts, HandlerContext, PluginError, read_image
from asyckpt._plugins.dispatch import Dispatch, PluginConflictWarning
from asyckpt._plugins.loading import installed_handlers, load_handlers
from asyckpt._records import NO_DATA
from asyckpt.handlers.link import LinkHandler, LinkRecord
from asyckpt.testing import (
    capture_fd,
    dispatch_with,
    facts_of,
    hold_fd,
    load_handler,
    make_facts,
    roundtrip,
)

from .conftest import Tree, asyckpt_cgroups

ROOT = Path(__file__).resolve().parents[1]
CHR = stat.S_IFCHR | 0o666
PIPEFS_MAGIC = 0x50495045


def handler(hname: str, *, tag: str | None = None, **attrs: Any) -> type:
    """A handler class for one test: ``attrs`` as class attributes, a record type of its
    own (tag ``test.NAME``) holding the handler's name, and a capture that returns it."""
    rtype = msgspec.defstruct(
        f"{hname}Record",
        [("by", str, hname)],
        tag=tag or f"test.{hname}",
        tag_field="kind",
        kw_only=True,
    )

    def capture(self: Any, facts: FdFacts, ctx: HandlerContext) -> msgspec.Struct:
        return rtype()

    return type(hname, (), {"name": hname, "record_type": rtype, "capture": capture, **attrs})


def chosen(handlers: list[type], facts: FdFacts) -> str | None:
    h = Dispatch([load_handler(h) for h in handlers]).choose(facts)
    return None if h is None else h.name


# --- asyckpt's own handlers come in through the entry-point group -------------------------


def test_builtin_handlers_are_registered_like_any_plugin() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    found = {i.name: i for i in installed_handlers()}
    for name, value in declared["asyckpt.fd_types"].items():
        assert found[name].value == value
        assert found[name].builtin and found[name].distribution == "asyckpt"
    dispatch = load_handlers(autoload=False)
    assert set(dispatch.by_name) >= {"reg", "dir", "link"}
    assert dispatch.conflicts == []


# --- validation: every contract breach is a PluginError naming the handler ---------------

Untagged = msgspec.defstruct("Untagged", [("x", int)])
Plain = msgspec.defstruct("Plain", [("x", int)], tag="plain", tag_field="kind")
OtherField = msgspec.defstruct("OtherField", [("x", int)], tag="t.other", tag_field="type")


def _capture(self: Any, facts: FdFacts, ctx: HandlerContext) -> Any:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"name": "x", "capture": _capture}, "does not implement the FdHandler contract"),
        ({"name": "x", "record_type": dict, "capture": _capture}, "must be a msgspec.Struct"),
        ({"name": "x", "record_type": Untagged, "capture": _capture}, "namespaced tag"),
        ({"name": "x", "record_type": Plain, "capture": _capture}, "namespaced tag"),
        ({"name": "x", "record_type": OtherField, "capture": _capture}, 'tag_field="kind"'),
        ({"name": "bad name"}, "name must be a word"),
        ({"name": 7}, "name must be a word"),
        ({"kinds": {"chrdev"}}, "bad kinds entry: 'chrdev' is not a kind"),
        ({"kinds": "reg"}, "kinds must be a collection, not str"),
        ({"devices": {("sock", 1, 2)}}, "a device's kind is chr or blk"),
        ({"devices": {("chr", "1")}}, "major and minor are ints"),
        ({"link_prefixes": ("",)}, "bad link_prefixes entry"),
        ({"fs_magic": {-1}}, "not a filesystem magic number"),
        ({"kinds": {"reg"}, "priority": "high"}, "priority must be an int"),
        ({}, "claims nothing: declare kinds, link_prefixes, devices or fs_magic"),
        ({"kinds": {"reg"}, "render_text": "x"}, "render_text must be a method"),
    ],
)
def test_contract_breaches_are_plugin_errors(attrs: dict[str, Any], message: str) -> None:
    if "capture" in attrs:
        bad: Any = type("bad", (), attrs)
    else:
        bad = handler("x", **attrs)
        if "name" in attrs:
            bad.name = attrs["name"]
    with pytest.raises(PluginError, match="fd-type handler test\\[") as exc_info:
        load_handler(bad)
    assert message in str(exc_info.value)
    assert exc_info.value.exit_code == 9


def test_a_predicate_alone_is_a_claim() -> None:
    loaded = load_handler(handler("pred", claims=lambda self, facts: True))
    assert loaded.selectors() == ["any fd"] and loaded.predicate is not None


def test_two_handlers_with_one_name_or_one_record_tag() -> None:
    a = load_handler(handler("a", kinds={"chr"}), distribution="dist-one")
    a2 = load_handler(handler("a", kinds={"blk"}, tag="test.a2"), distribution="dist-two")
    with pytest.raises(PluginError, match="two handlers are named 'a': dist-one and dist-two"):
        Dispatch([a, a2])
    b = load_handler(handler("b", kinds={"blk"}, tag="test.a"), distribution="dist-two")
    with pytest.raises(
        PluginError,
        match=r"handlers dist-one\[a\] and dist-two\[b\] use the same record tag 'test.a'",
    ):
        Dispatch([a, b])


# --- dispatch order -----------------------------------------------------------------------

NULL = make_facts("/dev/null", st_mode=CHR, rdev=os.makedev(1, 3))
ZERO = make_facts("/dev/zero", st_mode=CHR, rdev=os.makedev(1, 5))
PTY = make_facts("/dev/pts/0", st_mode=stat.S_IFCHR | 0o620, rdev=os.makedev(136, 0))
BLK13 = make_facts("/dev/ram3", st_mode=stat.S_IFBLK | 0o660, rdev=os.makedev(1, 3))
EVENTFD = make_facts("anon_inode:[eventfd]", st_mode=0o600)
EPOLL = make_facts("anon_inode:[eventpoll]", st_mode=0o600)
TMP = make_facts("/tmp/x")
VAR = make_facts("/var/x")

kind_chr = handler("kindchr", kinds={"chr"})
major1 = handler("major1", devices={Device("chr", 1)})
null_dev = handler("nulldev", devices={Device("chr", 1, 3)})
any_anon = handler("anyanon", link_prefixes=("anon_inode:",))
eventfd = handler("efd", link_prefixes=("anon_inode:[eventfd]",))
kind_reg = handler("kindreg", kinds={"reg"})
tmp_pred = handler("tmponly", claims=lambda self, f: f.path.startswith("/tmp/"))
tmp_pred_first = handler("tmponly", claims=tmp_pred.claims, priority=1)
chr_first = handler("kindchr", kinds={"chr"}, priority=1)
null_last = handler("nulldev", devices={Device("chr", 1, 3)}, priority=-1)
null_never = handler("nulldev", devices={Device("chr", 1, 3)}, claims=lambda s, f: False)
multi = handler("multi", kinds={"reg"}, devices={Device("chr", 1, 5)})


@pytest.mark.parametrize(
    ("handlers", "facts", "expected"),
    [
        # The most specific declaration wins at equal priority: device, major, kind.
        ([kind_chr, major1, null_dev], NULL, "nulldev"),
        ([kind_chr, major1, null_dev], ZERO, "major1"),
        ([kind_chr, major1, null_dev], PTY, "kindchr"),
        # chr and blk are separate number spaces.
        ([null_dev, major1], BLK13, None),
        # Priority comes before specificity.
        ([chr_first, null_dev], NULL, "kindchr"),
        ([kind_chr, null_last], NULL, "kindchr"),
        # The longest link prefix is the most specific.
        ([any_anon, eventfd], EVENTFD, "efd"),
        ([any_anon, eventfd], EPOLL, "anyanon"),
        # A predicate that declines passes the fd on to the next candidate.
        ([null_never, major1], NULL, "major1"),
        # A predicate-only handler is the least specific, until given a priority.
        ([kind_reg, tmp_pred], TMP, "kindreg"),
        ([kind_reg, tmp_pred_first], TMP, "tmponly"),
        ([kind_reg, tmp_pred_first], VAR, "kindreg"),
        # Declarations are alternatives: any one makes a candidate.
        ([multi], ZERO, "multi"),
        ([multi], NULL, None),
        # Equal in everything: by name (and reported as a conflict, below).
        ([handler("b", kinds={"chr"}), handler("a", kinds={"chr"})], PTY, "a"),
    ],
)
def test_dispatch_order(handlers: list[type], facts: FdFacts, expected: str | None) -> None:
    assert chosen(handlers, facts) == expected
    assert chosen(handlers[::-1], facts) == expected  # registration order never matters


def test_fs_magic_is_asked_only_when_declared_and_once_per_mount(tmp_path: Path) -> None:
    r, w = os.pipe()
    files = [os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT) for i in range(3)]
    try:
        pipe, regs = facts_of(os.getpid(), r), [facts_of(os.getpid(), fd) for fd in files]
        calls: list[int] = []

        def magic(facts: FdFacts) -> int | None:
            calls.append(facts.fd)
            from asyckpt._kernel import fs_magic

            return fs_magic(f"/proc/{facts.tid}/fd/{facts.fd}")

        plain = Dispatch([load_handler(kind_reg)]).chooser(magic)
        assert [plain(f) for f in (pipe, *regs)] == [None] + [plain(regs[0])] * 3
        assert calls == []  # no handler declares a magic: statfs is never called

        pipefs = handler("pipefs", fs_magic={PIPEFS_MAGIC})
        choose = Dispatch([load_handler(pipefs), load_handler(kind_reg)]).chooser(magic)
        assert choose(pipe).name == "pipefs"
        assert {choose(f).name for f in regs} == {"kindreg"}
        # The three files share a mount: one statfs for them, one for the pipe.
        assert len(calls) == 2
        # And with the real statfs through the magic link:
        assert chosen([pipefs, kind_reg], pipe) == "pipefs"
    finally:
        for fd in (r, w, *files):
            os.close(fd)


# --- conflicts are reported, naming both distributions ------------------------------------


def test_same_claim_at_same_priority_is_reported() -> None:
    one = load_handler(handler("alpha", devices={Device("chr", 1, 3)}), distribution="dist-one")
    two = load_handler(handler("beta", devices={Device("chr", 1, 3)}), distribution="dist-two")
    with pytest.warns(PluginConflictWarning) as record:
        dispatch = load_handlers(autoload=False, extra=[two, one])
    assert [str(w.message) for w in record] == [
        "handlers dist-one[alpha] and dist-two[beta] both claim chr 1:3 at priority 0; "
        "dist-one[alpha] is tried first only by name: give one of them a higher priority"
    ]
    assert dispatch.choose(NULL).name == "alpha"
    # A priority settles it, and then nothing is reported.
    beta = load_handler(handler("beta", devices={Device("chr", 1, 3)}, priority=1))
    assert Dispatch([one, beta]).conflicts == []
    assert Dispatch([one, beta]).choose(NULL).name == "beta"
    # Overlapping but not equal claims are ordered by specificity: no conflict either.
    assert Dispatch([load_handler(kind_chr), load_handler(null_dev)]).conflicts == []


# --- handlers in real captures ------------------------------------------------------------


def capture(tree: Tree, dest: Path, dispatch: Dispatch, **options: Any) -> asyckpt.CaptureSummary:
    return trio.run(
        lambda: asyckpt.checkpoint_tree(
            tree.pid, dest, options=CaptureOptions(**options), dispatch=dispatch
        )
    )


class AsyncRecord(msgspec.Struct, tag="test.async", tag_field="kind", kw_only=True):
    size: int
    in_trio: bool


class AsyncRegHandler:
    name = "asyncreg"
    kinds = frozenset({"reg"})
    priority = 1
    record_type = AsyncRecord

    async def capture(self, facts: FdFacts, ctx: HandlerContext) -> AsyncRecord:
        # On the capture's own event loop: free to await trio, and to push blocking
        # work to a thread of its own.
        fd = ctx.take_fd(facts.fd)
        st = await trio.to_thread.run_sync(os.fstat, fd)
        return AsyncRecord(size=st.st_size, in_trio=trio.lowlevel.current_root_task() is not None)


def test_async_handler(zoo: Tree, tmp_path: Path) -> None:
    summary = capture(zoo, tmp_path / "a.ackpt", dispatch_with(AsyncRegHandler))
    image = read_image(tmp_path / "a.ackpt")
    regs = [f for f in image.files.values() if f.type == "reg"]
    # All of them, the one only in the table of the thread that unshared its own too
    # (take_fd needs a thread pidfd for that one).
    assert any(f.path.endswith("/thread-own") for f in regs)
    assert all(f.handler == "asyncreg" for f in regs), [(f.path, f.error) for f in regs]
    for f in regs:
        assert msgspec.msgpack.decode(f.data, type=AsyncRecord) == AsyncRecord(
            size=f.size, in_trio=True
        )
    assert "asyncreg" in {p.name for p in summary.plugins}
    assert not asyckpt_cgroups()


Boom = handler("boom", kinds={"reg"}, priority=1)


def _raise(self: Any, facts: FdFacts, *rest: Any) -> Any:
    raise RuntimeError(f"cannot handle {os.path.basename(facts.path)}")


def _wrong_record(self: Any, facts: FdFacts, ctx: HandlerContext) -> Any:
    return LinkRecord(target="")


@pytest.mark.parametrize(
    ("failing", "message"),
    [
        (handler("boom", kinds={"reg"}, priority=1, capture=_raise), "RuntimeError: cannot handle"),
        (handler("boom", kinds={"reg"}, priority=1, claims=_raise), "RuntimeError: cannot handle"),
        (
            handler(
                "boom", kinds={"reg"}, priority=1, capture=lambda s, f, c: LinkRecord(target="")
            ),
            "capture returned LinkRecord, not its record_type boomRecord",
        ),
    ],
    ids=["capture-raises", "claims-raises", "wrong-record-type"],
)
def test_a_failing_handler_leaves_a_generic_record(
    failing: type, message: str, zoo: Tree, tmp_path: Path
) -> None:
    dispatch = dispatch_with(failing)
    summary = capture(zoo, tmp_path / "b.ackpt", dispatch)
    image = read_image(tmp_path / "b.ackpt")
    regs = [f for f in image.files.values() if f.type == "reg"]
    assert regs and all(f.handler is None and f.data == NO_DATA for f in regs)
    assert all(f.error is not None and f.error.startswith("handler 'boom' failed: ") for f in regs)
    assert all(message in f.error for f in regs)
    assert image.trailer.handler_errors == len(regs) == summary.generic["reg"]
    assert {g.kind for g in summary.generic_fds if g.error} == {"reg"}
    assert "boom" not in {p.name for p in image.header.plugins}
    # The other kinds were captured as usual.
    assert any(f.handler == "dir" for f in image.files.values())

    # Under --strict, with every other fd claimed, the failure alone fails the capture.
    dispatch = dispatch_with(failing, handler("rest", claims=lambda self, facts: True))
    with pytest.raises(asyckpt.StrictViolation, match=r"handler 'boom' failed: .* on a reg fd"):
        capture(zoo, tmp_path / "s.ackpt", dispatch, strict=True)
    assert not (tmp_path / "s.ackpt").exists()
    assert not asyckpt_cgroups()


# --- asyckpt.testing ----------------------------------------------------------------------


class EventFdRecord(msgspec.Struct, tag="test.eventfd", tag_field="kind", kw_only=True):
    count: int
    semaphore: bool


class EventFdHandler:
    name = "eventfd"
    link_prefixes = ("anon_inode:[eventfd]",)
    record_type = EventFdRecord

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> EventFdRecord:
        info = dict(facts.fdinfo.extra)
        return EventFdRecord(
            count=int(info["eventfd-count"], 16), semaphore=info["eventfd-semaphore"] == "1"
        )

    def render_json(self, record: EventFdRecord) -> dict[str, Any]:
        return {"count": record.count}


def test_capture_fd_against_a_real_holder() -> None:
    with hold_fd(code="fd = os.eventfd(26, os.EFD_SEMAPHORE)") as holder:
        captured = capture_fd(EventFdHandler, holder.pid, holder.fd)
        assert captured.file.type == "anon" and captured.file.handler == "eventfd"
        assert captured.record == EventFdRecord(count=26, semaphore=True)
        assert captured.json["rendered"] == {"count": 26}
        assert captured.json["data"] == {"kind": "test.eventfd", "count": 26, "semaphore": True}
        with pytest.raises(LookupError, match="has no fd 999"):
            capture_fd(EventFdHandler, holder.pid, 999)
    assert not asyckpt_cgroups()


def test_roundtrip_renders_with_the_handler() -> None:
    rt = roundtrip(LinkHandler, LinkRecord(target="/etc/hostname"), kind="link")
    assert rt.record == LinkRecord(target="/etc/hostname")
    assert rt.text == "-> /etc/hostname"
    assert rt.data == {"kind": "asyckpt.link", "target": "/etc/hostname"}
    assert rt.rendered is None and rt.note is None
    with pytest.raises(TypeError, match="not link's record_type"):
        roundtrip(LinkHandler, EventFdRecord(count=1, semaphore=False))


@pytest.mark.parametrize(
    ("facts", "kind"),
    [
        (make_facts("/dev/null", st_mode=CHR, rdev=os.makedev(1, 3)), "chr"),
        (make_facts("pipe:[123]", st_mode=stat.S_IFIFO | 0o600), "pipe"),
        (make_facts("/run/fifo", st_mode=stat.S_IFIFO | 0o600), "fifo"),
        (make_facts("anon_inode:[eventfd]", st_mode=0o600), "anon"),
        (make_facts("/srv/jail/etc/x", root="/srv/jail"), "reg"),
    ],
)
def test_make_facts_classifies_like_a_capture(facts: FdFacts, kind: str) -> None:
    assert facts.kind == kind
    if facts.link.startswith("/srv/jail"):
        assert facts.path == "/etc/x"  # as the chrooted task sees it


def test_facts_of_a_live_fd_match_what_a_capture_hands_over(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"12345")
        facts = facts_of(os.getpid(), fd)
    finally:
        os.close(fd)
    assert (facts.kind, facts.path, facts.deleted) == ("reg", str(tmp_path / "f"), False)
    assert facts.st.st_size == 5 and facts.fdinfo.pos == 5
    assert facts.fdinfo.flags & os.O_APPEND


def test_dispatch_with_leaves_out_other_installed_plugins() -> None:
    names: Callable[[Dispatch], set[str]] = lambda d: set(d.by_name)  # noqa: E731
    assert names(dispatch_with(EventFdHandler)) == {"reg", "dir", "link", "eventfd"}
    assert names(dispatch_with(EventFdHandler, builtins=False)) == {"eventfd"}
