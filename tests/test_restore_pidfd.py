"""pidfds restored (``asyckpt restore``): with ``--tree``, a pidfd of a task of the tree
becomes a pidfd of that task's new holder (a parent's of its child, a child's of its
parent and of a sibling forked after it); with ``--pid``, one of the task itself is the
new process's; any other is refused, naming pid and fd, or skipped."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from tests.conftest import WORKLOADS, Tree
from tests.test_restore import across, asyckpt, capture, one_line_error, table


def pidfds(image: Any) -> list[tuple[int, int, int | None, int]]:
    """Each pidfd of the image: (task's place, fd, its target's place, flags)."""
    place = {t.pid: n for n, t in enumerate(image.tasks)}
    out = []
    for n, task in enumerate(image.tasks):
        for fd, f in image.fds(task.fd_table):
            data = msgspec.msgpack.decode(f.data)
            if data.get("kind") == "asyckpt.pidfd":
                out.append((n, fd.fd, place.get(data["pid"]), f.flags))
    return sorted(out)


def stop(tree: Tree) -> None:
    os.killpg(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)


def held(tmp_path: Path, *options: str) -> tuple[int, Any]:
    """Restore a.ackpt with ``options`` and ``--hold``; capture the new process (tree)
    into b.ackpt, then kill it (its process group: the holders')."""
    proc = asyckpt("restore", str(tmp_path / "a.ackpt"), *options, "--hold")
    assert proc.returncode == 0, proc.stderr
    holder = int(proc.stdout)
    try:
        return holder, capture(holder, tmp_path / "b.ackpt")
    finally:
        os.killpg(holder, signal.SIGKILL)


def test_tree_round_trip_pidfds_name_the_new_holders(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "pidfds.py")
    before = capture(tree.pid, tmp_path / "a.ackpt")
    stop(tree)
    _, after = held(tmp_path, "--tree")
    assert len(after.tasks) == 3
    for old, new in zip(before.tasks, after.tasks, strict=True):
        assert table(before, old.pid) == table(after, new.pid)
    assert across(after) == across(before)
    assert pidfds(after) == pidfds(before)
    info = tree.info
    a = next(n for n, t in enumerate(before.tasks) if t.pid == info["a"])
    b = next(n for n, t in enumerate(before.tasks) if t.pid == info["b"])
    flags = {(n, fd): (target, fl) for n, fd, target, fl in pidfds(after)}
    assert flags[(0, info["of_a"])][0] == flags[(0, info["dup"])][0] == a
    assert flags[(0, info["of_a"])][1] & os.O_NONBLOCK
    assert flags[(0, info["self"])] == (0, os.O_RDWR)
    assert flags[(a, info["fds_a"]["parent"])][0] == 0
    assert flags[(a, info["fds_a"]["sibling"])][0] == b
    assert flags[(b, info["fds_b"]["self"])][0] == b
    rows = table(after, after.tasks[0].pid)
    assert sorted([info["of_a"], info["dup"]]) in rows["shared"]


def test_pid_alone_restores_a_pidfd_of_the_task_itself(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "pidfds.py")
    before = capture(tree.pid, tmp_path / "a.ackpt")
    stop(tree)
    b, fd = tree.info["b"], tree.info["fds_b"]["self"]
    holder, after = held(tmp_path, "--pid", str(b))
    assert table(after, holder) == table(before, b)
    (row,) = [r for r in pidfds(after) if r[1] == fd]
    assert row[2] == 0  # the holder itself
    # Child A's pidfds name its parent and its sibling: neither is restored with --pid.
    a = tree.info["a"]
    argv = ("restore", str(tmp_path / "a.ackpt"), "--pid", str(a), "--hold")
    one_line_error(asyckpt(*argv), 13, "cannot restore the pidfd", "not restored with", f"pid={a}")
    proc = asyckpt(*argv, "--skip", "pidfd")
    assert proc.returncode == 0, proc.stderr
    os.kill(int(proc.stdout), signal.SIGKILL)
    assert proc.stderr.count("skipped fd") == 2 and "pidfd" in proc.stderr


def test_a_pidfd_of_the_task_itself_names_cmd(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "pidfds.py")
    capture(tree.pid, tmp_path / "a.ackpt")
    stop(tree)
    fd = tree.info["fds_b"]["self"]
    check = (
        f"import os, sys; pid = [l.split()[1] for l in open('/proc/self/fdinfo/{fd}') "
        "if l.startswith('Pid:')]; "
        "sys.exit(0 if pid == [str(os.getpid())] else 3)"
    )
    argv = ("restore", str(tmp_path / "a.ackpt"), "--pid", str(tree.info["b"]))
    proc = asyckpt(*argv, "--", sys.executable, "-c", check)
    assert proc.returncode == 0, proc.stderr  # exec kept the pid: the pidfd names CMD


def test_a_pidfd_outside_the_tree_is_refused_or_skipped(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "pidfds.py", "outside")
    capture(tree.pid, tmp_path / "a.ackpt")
    stop(tree)
    image = str(tmp_path / "a.ackpt")
    proc = asyckpt("restore", image, "--tree", "--hold")
    one_line_error(
        proc, 13, "cannot restore the pidfd", f"pid={tree.pid}", f"fd={tree.info['outside']}"
    )
    proc = asyckpt("restore", image, "--tree", "--hold", "--skip", "pidfd")
    assert proc.returncode == 0, proc.stderr
    os.killpg(int(proc.stdout), signal.SIGKILL)
    assert f"skipped fd {tree.info['outside']} (pidfd" in proc.stderr
