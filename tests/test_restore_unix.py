"""``asyckpt restore`` of unix sockets bound to names, end to end: a real workload's
listeners (a path, an abstract name), the connections they accepted, a bound datagram
socket and one connected to it, captured, stopped, restored with ``--hold`` and
``--tree --hold``, the copy captured and compared; and crafted images whose names lead
out of the root, at an existing file, past sun_path, or at a busy name, refused with
nothing made."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from tests import test_restore
from tests.conftest import WORKLOADS, Tree
from tests.crafted import _file, _socket
from tests.test_restore import (
    _data,
    capture,
    crafted,
    hold_tree_and_capture,
    one_line_error,
    table,
)

hold = test_restore.hold  # the fixture: every holder started is killed afterwards

NAMES = ("name", "abstract", "name_state", "accept_queue", "backlog", "type", "state")


def names(image: Any, pid: int) -> dict[int, dict[str, Any]]:
    """Each socket fd's name and listener fields: what ``table`` leaves out."""
    (task,) = [t for t in image.tasks if t.pid == pid]
    out = {}
    for fd, f in image.fds(task.fd_table):
        if f.type == "socket":
            data = _data(f)
            out[fd.fd] = {k: data.get(k) for k in NAMES}
    return out


def sockets_across(image: Any) -> list[list[tuple[int, int]]]:
    """The connections of an image, each as the (task index, fd) of its two ends."""
    by_ino: dict[int, set[tuple[int, int]]] = {}
    for n, task in enumerate(image.tasks):
        for fd, f in image.fds(task.fd_table):
            if f.type == "socket":
                data = _data(f)
                by_ino.setdefault(data["ino"], set()).add((n, fd.fd))
                if data.get("peer_ino"):
                    by_ino.setdefault(data["peer_ino"], set()).add((n, fd.fd))
    return sorted(sorted(s) for s in by_ino.values())


def stop(tree: Tree, *paths: str) -> None:
    """Kill the workload (its process group) and remove the socket files it leaves."""
    os.killpg(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    for path in paths:
        os.unlink(path)


def test_round_trip_listeners_connections_and_dgram(spawn: Any, hold: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_unix.py")
    info = tree.info
    before = capture(tree.pid, tmp_path / "a.ackpt")
    # The original still holds its names: refused, naming the path, nothing touched.
    st = os.lstat(info["stream"])
    proc = hold(tmp_path / "a.ackpt", tree.pid)
    one_line_error(proc, 13, f"pid={tree.pid}", f"address {info['stream']} is in use")
    assert os.lstat(info["stream"]).st_ino == st.st_ino
    stop(tree, info["stream"], info["dgram"])
    holder = hold(tmp_path / "a.ackpt", tree.pid)
    assert isinstance(holder, int), holder.stderr
    after = capture(holder, tmp_path / "b.ackpt")
    assert table(before, tree.pid) == table(after, holder)
    assert names(before, tree.pid) == names(after, holder)
    fds = info["fds"]
    got = names(after, holder)
    assert got[fds["accepted"]]["name"] == got[fds["listener"]]["name"] == info["stream"]
    assert got[fds["aaccepted"]]["name"] == got[fds["alistener"]]["name"] == info["abstract"]
    assert got[fds["listener"]]["accept_queue"] == 0 and got[fds["listener"]]["backlog"] == 7
    assert got[fds["listener"]]["name_state"] == "ok"
    for path in (info["stream"], info["dgram"]):
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with socket.socket(socket.AF_UNIX) as client:  # the copy listens
        client.connect(info["stream"])


def test_tree_round_trip_connections_across_tasks(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_unix.py", "tree")
    info = tree.info
    before = capture(tree.pid, tmp_path / "a.ackpt")
    stop(tree, info["stream"], info["dgram"])
    after = hold_tree_and_capture(before, tmp_path)
    assert len(after.tasks) == 2
    for old, new in zip(before.tasks, after.tasks, strict=True):
        assert names(before, old.pid) == names(after, new.pid)
    pairs = sockets_across(before)
    assert pairs == sockets_across(after)
    fds = info["fds"]
    assert [(0, fds["accepted"]), (1, fds["client"])] in pairs  # spans the two tasks


def test_bound_under_root_with_its_own_name(spawn: Any, hold: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_unix.py")
    info = tree.info
    capture(tree.pid, tmp_path / "a.ackpt")
    os.killpg(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    # The stale names stay where the original left them: restore binds under the root.
    root = tmp_path / "root"
    run = root / Path(info["stream"]).parent.relative_to("/")
    run.mkdir(parents=True)
    holder = hold(tmp_path / "a.ackpt", tree.pid, "--root", str(root), "--skip", "chr")
    assert isinstance(holder, int), holder.stderr
    after = capture(holder, tmp_path / "b.ackpt")
    assert stat.S_ISSOCK(os.lstat(run / "listen.sock").st_mode)
    # Its name is the image's (as if bound in the root), not the path restore reached.
    assert names(after, holder)[info["fds"]["listener"]]["name"] == info["stream"]


def unix(ino: int = 7001, **fields: Any) -> dict[str, Any]:
    data = _socket(ino, state="LISTEN", backlog=4, accept_queue=0, **fields)
    return _file(1, "socket", f"socket:[{ino}]", flags=os.O_RDWR, data=data)


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_planted_symlink_in_the_parent_is_not_followed_out(
    hold: Any, tmp_path: Path, target: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "asyckpt-run").symlink_to(outside if target == "absolute" else Path("../outside"))
    proc = hold(crafted(tmp_path, unix(name="/asyckpt-run/x.sock")), 100, "--root", str(root))
    one_line_error(proc, 13, "pid=100, fd=3", "/asyckpt-run/x.sock", "No such file or directory")
    assert list(outside.iterdir()) == []
    # The same image, with a directory at /run in the root: bound there.
    (root / "asyckpt-run").unlink()
    (root / "asyckpt-run").mkdir()
    holder = hold(crafted(tmp_path, unix(name="/asyckpt-run/x.sock")), 100, "--root", str(root))
    assert isinstance(holder, int), holder.stderr
    assert stat.S_ISSOCK(os.lstat(root / "asyckpt-run" / "x.sock").st_mode)
    assert list(outside.iterdir()) == []


def test_an_existing_file_at_the_name_is_refused_and_untouched(hold: Any, tmp_path: Path) -> None:
    kept = tmp_path / "x.sock"
    kept.write_text("mine")
    st = kept.stat()
    link = tmp_path / "link.sock"
    link.symlink_to(tmp_path / "nowhere.sock")
    for path in (kept, link):
        proc = hold(crafted(tmp_path, unix(name=str(path))), 100)
        one_line_error(proc, 13, "pid=100, fd=3", f"address {path} is in use")
    assert kept.read_text() == "mine" and kept.stat().st_ino == st.st_ino
    assert not (tmp_path / "nowhere.sock").exists()  # the symlink was not followed


def test_a_failed_restore_removes_the_nodes_it_bound(hold: Any, tmp_path: Path) -> None:
    busy = tmp_path / "busy.sock"
    busy.write_text("mine")
    first = unix(name=str(tmp_path / "first.sock"))
    second = _file(2, "socket", "socket:[7002]", flags=os.O_RDWR,
                   data=_socket(7002, state="LISTEN", backlog=1, name=str(busy)))  # fmt: skip
    proc = hold(crafted(tmp_path, first, second), 100)
    one_line_error(proc, 13, "pid=100, fd=4", f"address {busy} is in use")
    assert not (tmp_path / "first.sock").exists()  # bound, then removed: a retry finds it free
    assert busy.read_text() == "mine"


def test_names_past_sun_path_refused(hold: Any, tmp_path: Path) -> None:
    long = "/" + "d" * 108  # 109 bytes: no bind takes it
    one_line_error(hold(crafted(tmp_path, unix(name=long)), 100), 13, "sun_path holds 108")
    # Fits sun_path, but not with /proc/self/fd/N/ in front: refused, nothing made.
    root = tmp_path / "root"
    root.mkdir()
    fits = "/" + "s" * 100
    proc = hold(crafted(tmp_path, unix(name=fits)), 100, "--root", str(root))
    one_line_error(proc, 13, "too long to be reached")
    assert list(root.iterdir()) == []


def _without_cap_sys_chroot() -> None:
    import ctypes

    pr_capbset_drop, cap_sys_chroot = 24, 18
    if ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, cap_sys_chroot, 0, 0, 0):
        os._exit(99)


def test_binding_under_a_root_without_cap_sys_chroot_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "root"
    root.mkdir()
    image = crafted(tmp_path, unix(name="/x.sock"))
    argv = [sys.executable, "-m", "asyckpt", "restore", str(image), "--pid", "100"]
    proc = subprocess.run(
        [*argv, "--hold", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_without_cap_sys_chroot,  # in the child only: the test runner keeps it
    )
    if proc.returncode == 0:  # bound after all: its holder is ours to kill
        os.kill(int(proc.stdout), signal.SIGKILL)
    one_line_error(proc, 13, "pid=100, fd=3", "CAP_SYS_CHROOT")
    assert list(root.iterdir()) == []


def test_busy_abstract_name_is_a_clear_error(hold: Any, tmp_path: Path) -> None:
    name = f"asyckpt-test-busy-{os.getpid()}"
    rec = unix(name="@" + name, abstract=True)
    with socket.socket(socket.AF_UNIX) as busy:
        busy.bind("\0" + name)
        one_line_error(hold(crafted(tmp_path, rec), 100), 13, f"address @{name} is in use")
    holder = hold(crafted(tmp_path, rec), 100)  # free now: bound and listening again
    assert isinstance(holder, int), holder.stderr
    with socket.socket(socket.AF_UNIX) as client:
        client.connect("\0" + name)


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_the_probe_tells_the_socket_bound_from_another(tmp_path: Path, kind: str) -> None:
    """What makes a bind that landed elsewhere an error: a probe through the path must
    reach the very socket restore bound (here another socket holds the path)."""
    from asyckpt._restore_model import MakeFailed
    from asyckpt._restore_sockets import SOCK_TYPES, _probe

    sotype = SOCK_TYPES[kind]
    with (
        socket.socket(socket.AF_UNIX, sotype) as ours,
        socket.socket(socket.AF_UNIX, sotype) as other,
    ):
        ours.bind(str(tmp_path / "ours.sock"))
        other.bind(str(tmp_path / "other.sock"))
        if kind == "stream":
            ours.listen(1)
            other.listen(1)
        _probe(ours, os.fsencode(tmp_path / "ours.sock"), kind, "ours")  # reaches it
        with pytest.raises(MakeFailed, match="does not reach"):
            _probe(ours, os.fsencode(tmp_path / "other.sock"), kind, "ours")
        # Nothing left of the probes: no connection waiting, no datagram queued.
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            ours.accept() if kind == "stream" else ours.recv(1)
