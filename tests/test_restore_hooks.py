"""The handlers' ``restore(record, ctx)`` hook, end to end: a test plugin installed as a
real entry point claims a device restore refuses itself (a node with /dev/kmsg's numbers
that the test made in its own directory) and rebuilds it through ``ctx.open``; its
context never opens outside the root, never creates or truncates, and a hook that
refuses or fails refuses the restore before anything is installed."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from asyckpt import Device, FdFacts, HandlerContext, RestoreContext, RestoreError, os_name
from asyckpt.testing import capture_fd, hold_fd, restore_fd
from tests.conftest import WORKLOADS, Tree
from tests.test_plugins_installed import Site
from tests.test_restore import asyckpt, one_line_error, table

KMSG = os.makedev(1, 11)

PLUGIN = """
import os
from typing import ClassVar

import msgspec

from asyckpt import Device, RestoreRefused, os_name


class Node(msgspec.Struct, tag="asyckpt_test_hook.node", tag_field="kind", kw_only=True):
    major: int
    minor: int


class NodeHandler:
    name: ClassVar[str] = "kmsgnode"
    record_type: ClassVar[type[msgspec.Struct]] = Node
    devices: ClassVar[frozenset[Device]] = frozenset({Device("chr", 1, 11)})

    def capture(self, facts, ctx):
        return Node(major=os.major(facts.st.st_rdev), minor=os.minor(facts.st.st_rdev))

    def restore(self, record, SECOND):
        ctx = SECOND
        mode = os.environ.get("HOOK_MODE", "open")
        if mode == "refuse":
            raise RestoreRefused("the test says no")
        if mode == "raise":
            raise ValueError("boom\\nasyckpt: forged line\\x1b[2J")
        if mode == "stdin":
            return 0
        access = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[ctx.file.access]
        flags = access | (ctx.file.flags & os.O_NONBLOCK)
        return ctx.open(os_name(ctx.file.path, ctx.file.path_bytes), flags)
"""


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The test plugin's distribution directory, removed from the paths at the end."""
    with contextlib.closing(Site(tmp_path_factory.mktemp("site"))) as s:
        yield s


def install(site: Site, second: str = "ctx") -> None:
    site.install(
        "asyckpt-test-hook",
        "1.0",
        {"kmsgnode": "asyckpt_test_hook:NodeHandler"},
        modules={"asyckpt_test_hook": PLUGIN.replace("SECOND", second)},
    )


def capture(site: Site, pid: int, out: Path) -> Any:
    from asyckpt import read_image

    proc = site.run("tree", str(pid), "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    return read_image(out)


@pytest.fixture
def node(spawn: Any) -> Tree:
    tree: Tree = spawn(WORKLOADS / "device_node.py")
    return tree


def test_a_device_restore_refuses_is_rebuilt_by_its_handlers_hook(
    site: Site, node: Tree, tmp_path: Path
) -> None:
    install(site)
    before = capture(site, node.pid, tmp_path / "a.ackpt")
    (f,) = {f.id: f for _, f in before.fds(before.tasks[0].fd_table) if f.rdev == KMSG}.values()
    assert f.handler == "kmsgnode"
    # Without the plugin, restore refuses the device (it is not one it reopens itself).
    proc = asyckpt("restore", str(tmp_path / "a.ackpt"), "--pid", str(node.pid), "--hold")
    one_line_error(proc, 13, "device other than", f"fd={node.info['fd']}")
    proc = site.run("restore", str(tmp_path / "a.ackpt"), "--pid", str(node.pid), "--hold")
    assert proc.returncode == 0, proc.stderr
    holder = int(proc.stdout)
    try:
        after = capture(site, holder, tmp_path / "b.ackpt")
    finally:
        os.kill(holder, signal.SIGKILL)
    assert table(after, holder) == table(before, node.pid)
    rows = table(after, holder)["fds"]
    assert rows[node.info["fd"]]["path"] == node.info["path"]
    assert [node.info["fd"], node.info["dup"]] in table(after, holder)["shared"]
    (g,) = {g.id: g for _, g in after.fds(after.tasks[0].fd_table) if g.rdev == KMSG}.values()
    assert (g.handler, g.rdev, g.ino, g.flags) == ("kmsgnode", f.rdev, f.ino, f.flags)


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("refuse", ["the test says no"]),
        ("raise", ["ValueError: boom", "forged line"]),
        ("stdin", ["returned fd 0, which it did not open"]),
    ],
)
def test_a_hook_that_refuses_or_fails_refuses_before_anything(
    site: Site, node: Tree, tmp_path: Path, mode: str, words: list[str]
) -> None:
    install(site)
    capture(site, node.pid, tmp_path / "a.ackpt")
    marker = tmp_path / "ran"
    argv = ("restore", str(tmp_path / "a.ackpt"), "--pid", str(node.pid))
    proc = site.run(*argv, "--", "sh", "-c", f"echo > {marker}", HOOK_MODE=mode)
    one_line_error(proc, 13, "cannot restore the chr", f"pid={node.pid}", "kmsgnode", *words)
    assert not marker.exists()  # CMD never ran: nothing was installed
    assert "\x1b" not in proc.stderr  # the hook's text is escaped, on the one line


def test_the_old_hook_signature_is_a_clear_error(site: Site, node: Tree, tmp_path: Path) -> None:
    install(site, second="file")
    capture(site, node.pid, tmp_path / "a.ackpt")
    proc = site.run("restore", str(tmp_path / "a.ackpt"), "--pid", str(node.pid), "--hold")
    one_line_error(proc, 13, "old restore(record, file)", "restore(record, ctx)")


# The context, through asyckpt.testing.restore_fd (restore's own make, in this process).


class Node(msgspec.Struct, tag="asyckpt_test_ctx.node", tag_field="kind", kw_only=True):
    path: str


class Opener:
    """Claims the test's files (kmsg nodes, *.hooked regular files) at a high priority;
    its hook opens ``self.path`` (default: the file's) with ``self.flags``."""

    name: ClassVar[str] = "opener"
    record_type: ClassVar[type[msgspec.Struct]] = Node
    devices: ClassVar[frozenset[Device]] = frozenset({Device("chr", 1, 11)})
    kinds: ClassVar[frozenset[str]] = frozenset({"reg"})
    priority: ClassVar[int] = 100

    def __init__(self, path: str | None = None, flags: int = os.O_RDONLY) -> None:
        self.path = path
        self.flags = flags

    def claims(self, facts: FdFacts) -> bool:
        return facts.kind == "chr" or facts.path.endswith(".hooked")

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Node:
        return Node(path=facts.path)

    def restore(self, record: Node, ctx: RestoreContext) -> int:
        return ctx.open(self.path or os_name(ctx.file.path, ctx.file.path_bytes), self.flags)


def _captured_node(tmp_path: Path) -> tuple[Any, Path]:
    real = tmp_path / "real"
    real.mkdir()
    path = real / "kmsg"
    os.mknod(path, 0o600 | 0o020000, os.makedev(1, 11))
    with hold_fd(path, flags=os.O_RDONLY | os.O_NONBLOCK) as holder:
        return capture_fd(Opener, holder.pid, holder.fd), path


def test_ctx_opens_under_the_root_only(tmp_path: Path) -> None:
    captured, path = _captured_node(tmp_path)
    fd = restore_fd(Opener(), captured)  # under / it is there
    try:
        assert os.fstat(fd).st_ino == path.stat().st_ino
    finally:
        os.close(fd)
    # A root holding, at the node's path, an absolute symlink to a hard link of the very
    # node outside the root (following it would pass every check), and a path of ..s.
    root = tmp_path / "root"
    planted = root / str(path).lstrip("/")
    planted.parent.mkdir(parents=True)
    other = tmp_path / "other" / "kmsg"
    other.parent.mkdir()
    os.link(path, other)
    planted.symlink_to(other)
    for hook in (Opener(), Opener(path="/" + "../" * 12 + str(other).lstrip("/"))):
        with pytest.raises(RestoreError, match="No such file"):
            restore_fd(hook, captured, root=str(root))
    # Another device at the path is refused even with --relaxed.
    planted.unlink()
    os.mknod(planted, 0o600 | 0o020000, os.makedev(1, 3))
    with pytest.raises(RestoreError, match="another device"):
        restore_fd(Opener(), captured, root=str(root), relaxed=True)


def test_ctx_never_creates_or_truncates(tmp_path: Path) -> None:
    path = tmp_path / "data.hooked"
    path.write_bytes(b"keep me")
    with hold_fd(path, flags=os.O_RDWR) as holder:
        captured = capture_fd(Opener, holder.pid, holder.fd)
    assert captured.file.handler == "opener"
    fd = restore_fd(Opener(flags=os.O_WRONLY | os.O_TRUNC | os.O_CREAT | os.O_EXCL), captured)
    try:
        assert os.fstat(fd).st_ino == path.stat().st_ino
    finally:
        os.close(fd)
    assert path.read_bytes() == b"keep me"
    missing = tmp_path / "new.hooked"
    with pytest.raises(RestoreError, match="No such file"):
        restore_fd(Opener(path=str(missing), flags=os.O_WRONLY | os.O_CREAT), captured)
    assert not missing.exists()
    # Another file at the path (of the same size) only with relaxed.
    path.rename(tmp_path / "old")  # kept: its inode number is not reused
    path.write_bytes(b"keep it")
    with pytest.raises(RestoreError, match="another file now"):
        restore_fd(Opener(), captured)
    os.close(restore_fd(Opener(), captured, relaxed=True))


def test_ctx_fds_the_hook_does_not_return_are_closed(tmp_path: Path) -> None:
    path = tmp_path / "data.hooked"
    path.write_bytes(b"x")
    with hold_fd(path) as holder:
        captured = capture_fd(Opener, holder.pid, holder.fd)
    opened: list[int] = []

    class TwoOpens(Opener):
        def restore(self, record: Node, ctx: RestoreContext) -> int:
            opened.append(ctx.open(str(path), os.O_RDONLY))
            opened.append(ctx.open(str(path), os.O_RDONLY))
            return opened[0]

    fd = restore_fd(TwoOpens, captured)
    try:
        for n in set(opened) - {fd}:  # both moved or closed: restore owns what it was given
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(n)
        assert os.fstat(fd).st_ino == path.stat().st_ino
    finally:
        os.close(fd)
