"""Fixtures that start real process trees and always clean up after them.

Every tree is started in its own session, so its process group id is its root pid, and
it is killed with killpg(root, SIGKILL): by pid, never by name.  Before killing, any
asyckpt cgroup naming that root is thawed and removed, because a frozen task cannot die;
a test that leaves one behind fails (asyckpt must never leave a tree frozen).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyckpt.testing import spawn_tree

HERE = Path(__file__).resolve().parent
WORKLOADS = HERE / "workloads"
# The many-fd tree of asyckpt.testing (bench/run.py measures on it too), run as a script.
SPAWN_TREE = Path(spawn_tree.__file__)
CGROUP_ROOTS = ("/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")


# Roots of the trees this session started: asyckpt names its transient cgroups
# asyckpt-<its own pid>-<root pid>, so these tell ours from anyone else's.
_ROOTS: set[int] = set()


def asyckpt_cgroups() -> list[Path]:
    """The asyckpt cgroups that belong to captures this test session started."""
    found = []
    for root in CGROUP_ROOTS:
        base = Path(root)
        if not base.is_dir():
            continue
        for p in base.glob("asyckpt-*"):
            parts = p.name.split("-")
            if (
                len(parts) == 3
                and parts[2].isdigit()
                and (int(parts[2]) in _ROOTS or parts[1] == str(os.getpid()))
            ):
                found.append(p)
    return found


def _force_release(cg: Path) -> None:
    """Thaw and remove a cgroup asyckpt (or a test) left behind."""
    if not cg.exists():
        return
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        if (cg / name).exists():
            (cg / name).write_text(value)
    parent_procs = cg.parent / "cgroup.procs"
    for _ in range(3):
        for pid in (cg / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                parent_procs.write_text(pid)
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.05)


class Tree:
    """A running process tree started by a test."""

    def __init__(self, proc: subprocess.Popen[str], info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info
        self.pid: int = proc.pid

    def pids(self) -> list[int]:
        out, stack = [], [self.pid]
        while stack:
            pid = stack.pop()
            out.append(pid)
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(FileNotFoundError):
                    stack.extend(
                        map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
                    )
        return sorted(out)

    def kill(self) -> list[Path]:
        leaked = [cg for cg in asyckpt_cgroups() if cg.name.endswith(f"-{self.pid}")]
        for cg in leaked:
            _force_release(cg)
        # A task frozen in a v1 cgroup cannot die: thaw the tests' own cgroups first.
        for root in (V1_FREEZER, V2_ROOT):
            for cg in root.glob(f"asyckpt-test-{os.getpid()}-*"):
                for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                    with contextlib.suppress(OSError):
                        (cg / name).write_text(value)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return leaked


@pytest.fixture
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """spawn(script, *args) starts ``python script tmpdir *args`` in a new session and
    returns a Tree once it printed its JSON line (or its pid) on stdout."""
    trees: list[Tree] = []

    def start(script: Path, *args: str) -> Tree:
        # Not in the test's tmp_path, which tests keep for the files asyckpt writes.
        workdir = tmp_path_factory.mktemp("tree")
        argv = [sys.executable, str(script)]
        argv += [str(workdir)] if script.parent == WORKLOADS else []
        # spawn_tree.py makes its files under $TMPDIR: keep them in the test's tmp_path.
        env = dict(os.environ, TMPDIR=str(workdir))
        proc = subprocess.Popen(
            argv + list(args), stdout=subprocess.PIPE, text=True, start_new_session=True, env=env
        )
        tree = Tree(proc, {})
        trees.append(tree)
        _ROOTS.add(proc.pid)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"{script.name} failed to start"
        tree.info = json.loads(line) if line.startswith("{") else {"pid": int(line)}
        assert tree.info["pid"] == proc.pid
        return tree

    yield start
    leaked = []
    for tree in trees:
        leaked += tree.kill()
    assert not leaked, f"asyckpt left cgroups behind: {leaked}"


@pytest.fixture
def zoo(spawn: Any) -> Tree:
    tree: Tree = spawn(WORKLOADS / "fd_zoo.py")
    return tree


def pytest_configure(config: pytest.Config) -> None:
    """The session's own run directory (locks, undo plans), for asyckpt in this process
    and every asyckpt it starts: other test runs' captures are not this one's to wait for
    or recover.  Set before the test modules are imported, since some copy the
    environment for their subprocesses when they are."""
    os.environ["ASYCKPT_RUN_DIR"] = tempfile.mkdtemp(prefix="asyckpt-run-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.pop("ASYCKPT_RUN_DIR", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def _run_dir() -> Path:
    return Path(os.environ["ASYCKPT_RUN_DIR"])


@pytest.fixture
def run_dir(_run_dir: Path) -> Path:
    """The session's run directory (see ``_run_dir``)."""
    return _run_dir


@pytest.fixture(autouse=True)
def _no_leftover_cgroups(_run_dir: Path) -> Iterator[None]:
    before = set(asyckpt_cgroups())
    yield
    # A capture that ended, however it ended, leaves no undo plan behind.
    plans = sorted(_run_dir.glob("*.plan"))
    for plan in plans:
        plan.unlink()
    assert not plans, f"asyckpt left undo plans behind: {plans}"
    after = set(asyckpt_cgroups()) - before
    for cg in after:
        _force_release(cg)
    assert not after, f"asyckpt left cgroups behind: {sorted(after)}"


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def task_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def running(pid: int, wait: float = 2.0) -> bool:
    """Whether ``pid`` runs or sleeps (state R or S), waiting up to ``wait`` seconds for
    it: the v1 freezer shows a frozen task as D, and a task just thawed keeps that state
    until it is scheduled, which under load may take a while."""
    deadline = time.monotonic() + wait
    while (state := task_state(pid)) not in "SR" and time.monotonic() < deadline:
        time.sleep(0.005)
    return state in "SR"


V1_FREEZER = Path("/sys/fs/cgroup/freezer")
V2_ROOT = Path("/sys/fs/cgroup/unified")


@pytest.fixture
def make_cgroup() -> Iterator[Any]:
    """make_cgroup(version) creates an empty cgroup for the test (named asyckpt-test-*),
    and removes it afterwards: thawed, its tasks moved back to the hierarchy's root."""
    made: list[Path] = []

    def make(version: int) -> Path:
        root = V1_FREEZER if version == 1 else V2_ROOT
        if not root.is_dir():
            pytest.fail(f"{root} is not mounted on this machine")
        path = root / f"asyckpt-test-{os.getpid()}-{len(made)}"
        path.mkdir()
        made.append(path)
        return path

    yield make
    for path in reversed(made):
        _force_release(path)


def move_into(cgroup: Path, pids: list[int]) -> None:
    for pid in pids:
        (cgroup / "cgroup.procs").write_text(str(pid))
