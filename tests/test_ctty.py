"""Sessions, process groups and controlling terminals: the Task fields a capture reads
from each task's stat while the tree is frozen, and how ``show`` names the terminal,
against a real session on a pty (tests/workloads/ctty.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from asyckpt import read_image

from .conftest import WORKLOADS, Tree
from .test_cli import run


def test_tasks_record_session_pgrp_and_controlling_terminal(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "ctty.py")
    info = tree.info
    dest = tmp_path / "t.ackpt"
    proc = run("tree", str(tree.pid), "-o", str(dest), "-q")
    assert proc.returncode == 0, proc.stderr
    tasks = {t.pid: t for t in read_image(dest).tasks}
    root, child, grandchild = tasks[tree.pid], tasks[info["child"]], tasks[info["grandchild"]]
    # The test started the root in a session of its own, without a terminal.
    assert (root.session, root.pgrp, root.tty_nr) == (tree.pid, tree.pid, 0)
    assert (child.session, child.pgrp, child.tty_nr) == (child.pid, child.pid, info["rdev"])
    # Its own process group, in the child's session, on the child's terminal.
    assert (grandchild.session, grandchild.pgrp, grandchild.tty_nr) == (
        child.pid,
        grandchild.pid,
        info["rdev"],
    )

    # show names the terminal by the path of an fd of the image on it (the root's and
    # the child's slave), whoever holds it.
    shown = run("show", str(dest))
    assert shown.returncode == 0, shown.stderr
    heads = {
        int(line.split()[2]): line for line in shown.stdout.splitlines() if line.startswith("# pid")
    }
    assert "tty" not in heads[tree.pid]
    for pid in (child.pid, grandchild.pid):
        assert heads[pid].endswith(f", session {child.pid}, tty {info['slave']}"), heads[pid]
    doc = json.loads(run("show", str(dest), "--json").stdout)
    by_pid = {t["pid"]: t for t in doc["tasks"]}
    assert by_pid[tree.pid]["tty"] is None and by_pid[tree.pid]["tty_nr"] == 0
    assert by_pid[child.pid]["tty"] == info["slave"]
    assert (by_pid[child.pid]["session"], by_pid[child.pid]["pgrp"]) == (child.pid, child.pid)

    # The tty handler still tells which holder has it as its controlling terminal.
    slaves = [f for f in doc["files"] if f["type"] == "chr" and f["rdev"] == info["rdev"]]
    assert slaves and all(f["handler"] == "tty" for f in slaves)
    # Its record is of the description's first fd, the root's: not the root's terminal.
    assert [f["data"]["holder_controlling"] for f in slaves] == [False]


def test_a_terminal_no_fd_of_the_image_is_on_is_named_by_its_number(
    spawn: Any, tmp_path: Path
) -> None:
    tree: Tree = spawn(WORKLOADS / "ctty.py")
    info = tree.info
    dest = tmp_path / "g.ackpt"
    # The grandchild alone: it holds no fd on its controlling terminal.
    proc = run("tree", str(info["grandchild"]), "-o", str(dest), "-q")
    assert proc.returncode == 0, proc.stderr
    (task,) = read_image(dest).tasks
    assert task.tty_nr == info["rdev"]
    rdev = info["rdev"]
    shown = run("show", str(dest)).stdout
    assert f", tty {os.major(rdev)}:{os.minor(rdev)}" in shown
    doc = json.loads(run("show", str(dest), "--json").stdout)
    assert doc["tasks"][0]["tty"] == f"{os.major(rdev)}:{os.minor(rdev)}"
