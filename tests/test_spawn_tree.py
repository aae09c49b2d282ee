"""The workloads the tests and bench/ run: asyckpt.testing.spawn_tree and bench/floor_scan.c.

Both ship in the repository, so that a clone anywhere runs the tests and the benchmark."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from asyckpt.testing.spawn_tree import KINDS, fds_opened, main, tasks_spawned

from .conftest import SPAWN_TREE

ROOT = Path(__file__).resolve().parents[1]


def kinds_of(pid: int) -> Counter[str]:
    """Each fd of ``pid``, by what spawn_tree.KINDS calls it (plus stdio and "deleted")."""
    found: Counter[str] = Counter()
    for name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(name)
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if fd <= 2:
            found["stdio"] += 1
        elif link.endswith(" (deleted)"):
            found["deleted"] += 1
        elif link.startswith("pipe:"):
            found["pipe"] += 1
        elif link.startswith("socket:"):
            found["socketpair"] += 1
        elif link.endswith("/etc/hostname") or os.path.basename(link).startswith("l"):
            found["o_path_link"] += 1
        else:
            mode = os.stat(f"/proc/{pid}/fd/{fd}").st_mode
            flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split()[3], 8)
            if stat.S_ISDIR(mode):
                found["dir"] += 1
            elif flags & os.O_APPEND:
                found["append"] += 1
            else:
                found["reg"] += 1
    return found


@pytest.mark.parametrize(
    ("per", "expected"), [(0, 1), (1, 2), (5, 7), (6, 9), (12, 17), (500, 667)]
)
def test_fds_opened_counts_both_ends_of_pairs(per: int, expected: int) -> None:
    assert fds_opened(per) == expected


@pytest.mark.parametrize(
    ("children", "depth", "expected"), [(0, 1, 1), (3, 1, 4), (2, 2, 7), (2, 3, 15), (20, 1, 21)]
)
def test_tasks_spawned(children: int, depth: int, expected: int) -> None:
    assert tasks_spawned(children, depth) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["3"],
        ["3", "x"],
        ["1", "2", "3", "4"],
        ["-1", "2"],
        ["1", "2", "--maps"],
        ["--maps", "x"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: python -m asyckpt.testing.spawn_tree" in capsys.readouterr().err


def test_the_tree_holds_every_kind_and_shares_with_its_parent(spawn: Any) -> None:
    per = 12
    tree = spawn(SPAWN_TREE, "2", str(per), "2")
    pids = tree.pids()
    assert len(pids) == tasks_spawned(2, 2) == 7
    assert all(os.getpgid(pid) == tree.pid for pid in pids)
    own = Counter({kind: 2 if kind in ("pipe", "socketpair") else 1 for kind in KINDS})
    own = Counter({k: v * per // len(KINDS) for k, v in own.items()})
    root = kinds_of(tree.pid)
    assert root == own + Counter(stdio=3, deleted=1)
    assert sum(own.values()) + 1 == fds_opened(per)
    for pid in pids:
        if pid == tree.pid:
            continue
        # Its own fds and everything its ancestors held when they forked it (the
        # readiness pipe aside: closed once ready).
        depth = 1 if int(Path(f"/proc/{pid}/stat").read_text().split()[3]) == tree.pid else 2
        assert kinds_of(pid) == Counter(
            {k: v * (depth + 1) for k, v in own.items()} | {"stdio": 3, "deleted": depth + 1}
        ), pid
    child = next(p for p in pids if p != tree.pid)
    # Inherited fds are the parent's open file descriptions, not copies.
    for fd in range(3, 3 + per):
        theirs, mine = (os.stat(f"/proc/{p}/fd/{fd}") for p in (tree.pid, child))
        assert (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def test_sigterm_to_the_root_kills_the_whole_group(spawn: Any) -> None:
    tree = spawn(SPAWN_TREE, "3", "6")
    pids = tree.pids()
    assert len(pids) == 4
    os.kill(tree.pid, signal.SIGTERM)
    tree.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids[1:]):
        assert time.monotonic() < deadline, "children outlived the root's SIGTERM"
        time.sleep(0.01)


def test_runs_as_a_module(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyckpt.testing.spawn_tree", "1", "3"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == proc.pid
        (scratch,) = tmp_path.iterdir()
        assert scratch.name.startswith("asyckpt-spawn-tree-")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.skipif(shutil.which("cc") is None, reason="bench/ needs a C compiler as cc")
def test_floor_scan_counts_every_fd_of_every_pid(spawn: Any, tmp_path: Path) -> None:
    binary = tmp_path / "floor_scan"
    cc = subprocess.run(
        ["cc", "-O2", "-o", str(binary), str(ROOT / "bench" / "floor_scan.c")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cc.returncode == 0, cc.stderr
    tree = spawn(SPAWN_TREE, "2", "30")
    pids = tree.pids()
    out = subprocess.run(
        [str(binary), *map(str, pids)], capture_output=True, text=True, check=True
    ).stdout
    fds, _, bytes_, *_ = out.split()
    assert int(fds) == sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)
    assert int(bytes_) > 0


def test_maps_option_maps_files_in_every_task(spawn: Any) -> None:
    """``--maps N``: every task of the tree holds N file-backed mappings (inherited from
    the root), and no fd for them."""
    tree = spawn(SPAWN_TREE, "2", "3", "--maps", "40")
    for pid in tree.pids():
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mapped = [line for line in lines if "/asyckpt-spawn-tree-" in line and "/m" in line]
        assert len(mapped) == 40, lines
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [link for link in links if os.path.basename(link).startswith("m")]
