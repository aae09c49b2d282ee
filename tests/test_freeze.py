"""The freezer: modes, races, and never leaving a tree frozen, on the real kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions, FreezerError, read_image
from asyckpt._freeze import REFREEZE_AFTER, controllers_refusal, wait_frozen

from .conftest import (
    SPAWN_TREE,
    V2_ROOT,
    WORKLOADS,
    Tree,
    asyckpt_cgroups,
    cgroup_of,
    move_into,
    task_state,
)

ASYCKPT = [sys.executable, "-m", "asyckpt"]


def capture(pid: int, dest: Path, **options: Any) -> asyckpt.CaptureSummary:
    return trio.run(lambda: asyckpt.checkpoint_tree(pid, dest, options=CaptureOptions(**options)))


def cgroups(tree: Tree) -> dict[int, str]:
    return {pid: cgroup_of(pid) for pid in tree.pids()}


def assert_running_where_it_was(tree: Tree, before: dict[int, str]) -> None:
    for pid, cg in before.items():
        assert cgroup_of(pid) == cg, pid
        assert task_state(pid) in "SR", pid
    assert not asyckpt_cgroups()


def frozen_transient(tree_pid: int, asyckpt_pid: int) -> Path | None:
    for root in ("/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified"):
        cg = Path(root) / f"asyckpt-{asyckpt_pid}-{tree_pid}"
        try:
            if (cg / "freezer.state").exists():
                if (cg / "freezer.state").read_text().strip() == "FROZEN":
                    return cg
            elif "frozen 1" in (cg / "cgroup.events").read_text():
                return cg
        except OSError:
            pass
    return None


def is_frozen(cg: Path) -> bool:
    if (cg / "freezer.state").exists():
        return (cg / "freezer.state").read_text().strip() == "FROZEN"
    return "frozen 1" in (cg / "cgroup.events").read_text()


# --- never left frozen --------------------------------------------------------------


@pytest.mark.parametrize("freeze", ["cgroup-v1", "cgroup-v2"])
def test_sigkill_while_frozen_is_undone_by_the_guardian(
    freeze: str, spawn: Any, tmp_path: Path
) -> None:
    tree = spawn(SPAWN_TREE, "4", "1500")
    before = cgroups(tree)
    proc = subprocess.Popen(
        [*ASYCKPT, "tree", str(tree.pid), "-o", str(tmp_path / "x.ackpt"), f"--freeze={freeze}"],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while frozen_transient(tree.pid, proc.pid) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("the capture ended before the tree was seen frozen")
    proc.kill()
    proc.wait()
    # Within 2 seconds: thawed, every task back where it was, no transient cgroup left.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not asyckpt_cgroups() and all(task_state(p) in "SR" for p in before):
            break
        time.sleep(0.01)
    assert_running_where_it_was(tree, before)
    assert not (tmp_path / "x.ackpt").exists()


def test_sigkill_while_frozen_in_place(spawn: Any, make_cgroup: Any, tmp_path: Path) -> None:
    tree = spawn(SPAWN_TREE, "4", "1500")
    cg = make_cgroup(2)
    move_into(cg, tree.pids())
    proc = subprocess.Popen(
        [*ASYCKPT, "tree", str(tree.pid), "-o", str(tmp_path / "x.ackpt"), f"--freeze=cgroup:{cg}"],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not is_frozen(cg):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("the capture ended before the cgroup was seen frozen")
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 2
    while is_frozen(cg) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not is_frozen(cg)
    assert all(task_state(p) in "SR" for p in tree.pids())
    assert set(tree.pids()) == {int(p) for p in (cg / "cgroup.procs").read_text().split()}


# --- modes -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_auto_freezes_an_exact_cgroup_in_place(
    version: int, zoo: Tree, make_cgroup: Any, tmp_path: Path
) -> None:
    cg = make_cgroup(version)
    move_into(cg, zoo.pids())
    summary = capture(zoo.pid, tmp_path / "x.ackpt")
    header = read_image(tmp_path / "x.ackpt").header
    assert (summary.freezer_scope, header.freezer_scope) == ("in-place", "in-place")
    assert header.freezer == f"cgroup-v{version}"
    assert header.freezer_cgroup == str(cg)
    assert header.pre_frozen is False
    assert not is_frozen(cg)
    assert {int(p) for p in (cg / "cgroup.procs").read_text().split()} == set(zoo.pids())


def test_auto_uses_a_transient_cgroup_when_the_cgroup_holds_more(
    zoo: Tree, spawn: Any, make_cgroup: Any, tmp_path: Path
) -> None:
    other = spawn(WORKLOADS / "fd_zoo.py")
    cg = make_cgroup(2)
    move_into(cg, zoo.pids() + other.pids())
    before = cgroups(zoo)
    summary = capture(zoo.pid, tmp_path / "x.ackpt")
    assert summary.freezer_scope == "transient"
    assert summary.freezer == "cgroup-v1"
    assert_running_where_it_was(zoo, before)


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_path_mode(version: int, zoo: Tree, make_cgroup: Any, tmp_path: Path) -> None:
    cg = make_cgroup(version)
    move_into(cg, zoo.pids())
    summary = capture(zoo.pid, tmp_path / "x.ackpt", freeze=f"cgroup:{cg}")
    image = read_image(tmp_path / "x.ackpt")
    assert summary.freezer_scope == "in-place"
    assert image.header.freeze_mode == f"cgroup:{cg}"
    assert image.header.consistent
    assert summary.tasks == 4
    assert not is_frozen(cg)


@pytest.mark.parametrize("version", [1, 2])
def test_a_cgroup_frozen_before_stays_frozen(
    version: int, zoo: Tree, make_cgroup: Any, tmp_path: Path
) -> None:
    cg = make_cgroup(version)
    move_into(cg, zoo.pids())
    if version == 1:
        (cg / "freezer.state").write_text("FROZEN")
    else:
        (cg / "cgroup.freeze").write_text("1")
    while not is_frozen(cg):
        time.sleep(0.001)
    summary = capture(zoo.pid, tmp_path / "x.ackpt")
    assert summary.pre_frozen
    assert read_image(tmp_path / "x.ackpt").header.pre_frozen
    assert is_frozen(cg)
    assert summary.fds > 0


@pytest.mark.parametrize("freeze", ["cgroup-v1", "cgroup-v2"])
def test_paths_are_checked_thawed_while_the_tree_moves_back(
    freeze: str, zoo: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path checks run once the tree is thawed, alongside its move back to its
    cgroups; one that fails still leaves the tree back where it was, and no image."""
    from asyckpt import _paths

    before = cgroups(zoo)
    seen: list[tuple[str, ...]] = []
    frozen: list[Path | None] = []
    real = _paths.PathChecker.check

    def spy(self: Any, parts: Any) -> None:
        seen.append(tuple(task_state(pid) for pid in zoo.pids()))
        frozen.append(frozen_transient(zoo.pid, os.getpid()))
        real(self, parts)

    monkeypatch.setattr(_paths.PathChecker, "check", spy)
    summary = capture(zoo.pid, tmp_path / "x.ackpt", freeze=freeze)
    assert summary.freezer_scope == "transient"
    assert len(seen) == 1
    # Thawed: no task of the tree is stopped by the freezer (D on v1) any more.
    assert all(state in "SR" for state in seen[0]), seen
    assert frozen == [None]
    files = read_image(tmp_path / "x.ackpt").files
    assert any(f.path_state == "ok" for f in files.values())
    assert_running_where_it_was(zoo, before)

    def broken(self: Any, parts: Any) -> None:
        raise RuntimeError("path check failed")

    monkeypatch.setattr(_paths.PathChecker, "check", broken)
    with pytest.raises(RuntimeError, match="path check failed"):
        capture(zoo.pid, tmp_path / "y.ackpt", freeze=freeze)
    assert not (tmp_path / "y.ackpt").exists()
    assert_running_where_it_was(zoo, before)


@pytest.mark.parametrize("freeze", ["cgroup-v1", "cgroup-v2"])
def test_a_failed_thaw_still_moves_the_tree_back(
    freeze: str, zoo: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thaw ahead of the path checks fails (as a cgroupfs write can): the release
    still runs in asyckpt itself (not only the guardian's undo), thawing again and moving
    every task back, and the error is reported."""
    from asyckpt import _freeze

    before = cgroups(zoo)
    released: list[str] = []
    release = _freeze.TransientFreezer.release

    def failing_thaw(self: Any) -> None:
        raise FreezerError("could not thaw the tree: injected")

    def spy(self: Any) -> None:
        released.append(self.name)
        release(self)

    monkeypatch.setattr(_freeze._CgroupFreezer, "thaw", failing_thaw)
    monkeypatch.setattr(_freeze.TransientFreezer, "release", spy)
    with pytest.raises(FreezerError, match="injected"):
        capture(zoo.pid, tmp_path / "x.ackpt", freeze=freeze)
    assert released == [freeze]
    assert not (tmp_path / "x.ackpt").exists()
    assert_running_where_it_was(zoo, before)


def test_transient_refuses_a_tree_in_a_frozen_cgroup(
    zoo: Tree, spawn: Any, make_cgroup: Any, tmp_path: Path
) -> None:
    other = spawn(WORKLOADS / "fd_zoo.py")
    cg = make_cgroup(2)
    move_into(cg, zoo.pids() + other.pids())
    (cg / "cgroup.freeze").write_text("1")
    with pytest.raises(FreezerError, match=r"frozen already; use --freeze=cgroup:"):
        capture(zoo.pid, tmp_path / "x.ackpt", freeze="cgroup-v2")
    assert is_frozen(cg)
    assert not (tmp_path / "x.ackpt").exists()


def test_controllers_refusal() -> None:
    assert controllers_refusal([]) is None
    assert controllers_refusal([b"memory", b"pids"]) == (
        "a transient v2 cgroup here gets the controllers memory, pids: moving the tree into "
        "it would change its resource accounting; use --freeze=cgroup:PATH or --freeze=none"
    )


def test_v2_transient_refuses_when_the_move_would_change_controllers(
    zoo: Tree, make_cgroup: Any, tmp_path: Path
) -> None:
    # Only where the hierarchy's root already delegates a controller: turning one on
    # there would change every cgroup of the machine (and refuse every other capture)
    # while the test runs, so the test never does.
    if not (V2_ROOT / "cgroup.subtree_control").read_text().split():
        pytest.skip("the v2 root delegates no controller here (the rule is tested above)")
    cg = make_cgroup(2)
    move_into(cg, zoo.pids())
    before = cgroups(zoo)
    with pytest.raises(FreezerError, match="resource accounting") as exc_info:
        capture(zoo.pid, tmp_path / "x.ackpt", freeze="cgroup-v2")
    assert "--freeze=cgroup:PATH" in str(exc_info.value)
    assert_running_where_it_was(zoo, before)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/sys/fs/cgroup/unified/asyckpt-test-does-not-exist", "does not exist"),
        ("/tmp", "is not a cgroup"),
        ("/sys/fs/cgroup/unified", "cannot be frozen"),
        ("/sys/fs/cgroup/memory", "no freezer hierarchy"),
    ],
)
def test_bad_cgroup_paths(spec: str, message: str, zoo: Tree, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *ASYCKPT,
            "tree",
            str(zoo.pid),
            "-o",
            str(tmp_path / "x.ackpt"),
            f"--freeze=cgroup:{spec}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.startswith("asyckpt: error: ")
    assert message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cgroup_path_must_hold_the_tree(zoo: Tree, make_cgroup: Any, tmp_path: Path) -> None:
    cg = make_cgroup(2)
    move_into(cg, [zoo.pid])  # the root only; its children stay outside
    with pytest.raises(FreezerError, match="is not inside") as exc_info:
        capture(zoo.pid, tmp_path / "x.ackpt", freeze=f"cgroup:{cg}")
    assert exc_info.value.pid in zoo.pids()
    assert not is_frozen(cg)


# --- races -------------------------------------------------------------------------

FORKER = """
import os, signal, sys, time
print(os.getpid(), flush=True)
while True:
    pid = os.fork()
    if pid == 0:
        time.sleep(0.05)
        os._exit(0)
    time.sleep(0.002)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
"""


def test_a_tree_that_forks_continuously(spawn: Any, tmp_path: Path) -> None:
    script = tmp_path / "forker.py"
    script.write_text(FORKER)
    tree = spawn(script)
    for n in range(3):
        summary = capture(tree.pid, tmp_path / f"{n}.ackpt")
        image = read_image(tmp_path / f"{n}.ackpt")
        # Every child the frozen tree had is in the image, and none escaped the freezer.
        assert summary.tasks == len(image.tasks) >= 1
        assert image.tasks[0].pid == tree.pid
        assert not asyckpt_cgroups()
    assert task_state(tree.pid) in "SR"


ZOMBIE_PARENT = """
import os, signal
child = os.fork()
if child == 0:
    os._exit(0)
while open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
    pass
print(f'{{"pid": {os.getpid()}, "zombie": {child}}}', flush=True)
signal.pause()
"""


def test_zombies_are_in_the_image_with_no_fds(spawn: Any, tmp_path: Path) -> None:
    script = tmp_path / "zombie.py"
    script.write_text(ZOMBIE_PARENT)
    tree = spawn(script)
    capture(tree.pid, tmp_path / "z.ackpt")
    image = read_image(tmp_path / "z.ackpt")
    zombie = next(t for t in image.tasks if t.pid == tree.info["zombie"])
    assert (zombie.state, zombie.fd_table) == ("Z", None)
    assert image.fds(zombie.fd_table) == []


# --- the v1 wait loop, on scripted freezer states -----------------------------------
# A v1 cgroup stuck in FREEZING cannot be made on demand on a healthy kernel, so the
# retry logic is driven here with the state sequences the kernel reports.


class Script:
    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.now = 0.0
        self.requests: list[bool] = []

    def state(self) -> str:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def request(self, frozen: bool) -> None:
        self.requests.append(frozen)

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


@pytest.mark.parametrize(
    ("states", "retries", "requests"),
    [
        (["FROZEN"], 0, []),
        (["FREEZING", "FREEZING", "FROZEN"], 0, []),
        (["THAWED", "FROZEN"], 1, [True]),
        (["FREEZING"] * 12 + ["FROZEN"], 1, [True]),
        (["FREEZING"] * 24 + ["FROZEN"], 2, [True, False, True]),
    ],
    ids=["at-once", "freezing-then-frozen", "raced-thawed", "one-retry", "thaw-and-retry"],
)
def test_wait_frozen(states: list[str], retries: int, requests: list[bool]) -> None:
    s = Script(states)
    got = wait_frozen(
        state=s.state, request=s.request, clock=lambda: s.now, sleep=s.sleep, deadline=10.0
    )
    assert (got, s.requests) == (retries, requests)


def test_wait_frozen_gives_up_at_the_deadline() -> None:
    s = Script(["FREEZING"])
    with pytest.raises(FreezerError, match="did not freeze in time"):
        wait_frozen(
            state=s.state, request=s.request, clock=lambda: s.now, sleep=s.sleep, deadline=1.0
        )
    assert s.now >= 1.0
    assert len(s.requests) >= 1.0 / REFREEZE_AFTER - 1


def test_unfrozen_capture_of_a_forking_tree_never_fails(spawn: Any, tmp_path: Path) -> None:
    # Children come and go between discovery and reading: each capture must still give a
    # valid image, leaving out (and counting) the ones that exited.
    script = tmp_path / "forker.py"
    script.write_text(FORKER)
    tree = spawn(script)
    for n in range(5):
        summary = capture(tree.pid, tmp_path / f"{n}.ackpt", freeze="none")
        image = read_image(tmp_path / f"{n}.ackpt")
        assert not image.header.consistent
        assert summary.tasks == len(image.tasks) >= 1
        assert summary.vanished >= 0


def test_a_dead_guardian_stops_the_capture_before_anything_changes() -> None:
    from asyckpt._guardian import Guardian

    guardian = Guardian()
    guardian.wait_ready()
    guardian._proc.kill()
    guardian._proc.wait()
    with pytest.raises(FreezerError, match="guardian is gone"):
        guardian.note("rmdir", "/sys/fs/cgroup/unified/asyckpt-never-made")
    guardian.dismiss(clean=True)


def test_steps_noted_together_are_each_in_the_plan() -> None:
    """A tree's moves are noted in one write (TransientFreezer.add): each is a line of
    the plan on disk, in order, as if noted one by one."""
    import json

    from asyckpt._guardian import Guardian

    guardian = Guardian()
    guardian.wait_ready()
    try:
        steps = [("rmdir", f"/sys/fs/cgroup/unified/asyckpt-never-made-{n}") for n in range(3)]
        guardian.note_all(steps)
        guardian.note_all([])
        guardian.note("rmdir", "/sys/fs/cgroup/unified/asyckpt-never-made")
        assert guardian._plan is not None and guardian._plan.path is not None
        lines = Path(guardian._plan.path).read_text().splitlines()
        assert [json.loads(line) for line in lines[1:]] == [
            *map(list, steps),
            ["rmdir", "/sys/fs/cgroup/unified/asyckpt-never-made"],
        ]
    finally:
        guardian.dismiss(clean=True)


def test_prestarted_guardian_is_taken_once_or_discarded(zoo: Tree, tmp_path: Path) -> None:
    from asyckpt import _guardian

    _guardian.prestart()
    first = _guardian._prestarted
    assert first is not None
    _guardian.prestart()  # one at a time
    assert _guardian._prestarted is first
    # The next capture takes it, tells it each step and reaps it.
    capture(zoo.pid, tmp_path / "a.ackpt")
    assert _guardian._prestarted is None
    assert first.dismissed
    assert first._proc.returncode == 0
    # One no capture took is dismissed, and its process reaped.
    _guardian.prestart()
    second = _guardian._prestarted
    assert second is not None
    _guardian.discard_prestarted()
    assert _guardian._prestarted is None
    assert second._proc.returncode == 0
    _guardian.discard_prestarted()  # nothing left: a no-op


def test_cli_says_which_cgroup_it_froze(zoo: Tree, make_cgroup: Any, tmp_path: Path) -> None:
    cg = make_cgroup(2)
    move_into(cg, zoo.pids())
    proc = subprocess.run(
        [*ASYCKPT, "tree", str(zoo.pid), "-o", str(tmp_path / "x.ackpt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"froze {cg} in place; thawed again" in proc.stdout
