"""Never freeze itself, never strand a tree: the freeze scope never holds asyckpt, its
guardian or their ancestors; captures of one tree take turns; a capture whose asyckpt
and guardian both died is put back by ``asyckpt recover``; a thread id is not a tree.

Every case runs on the real kernel, against trees and cgroups the tests made.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions, FreezerError
from asyckpt._procparse import parse_tgid
from asyckpt._recover import check_plan
from asyckpt._rundir import Identity, acquire_locks, parse_plan, parse_plan_name
from asyckpt._scope import scope_holds, transient_owner

from .conftest import (
    V1_FREEZER,
    V2_ROOT,
    Tree,
    asyckpt_cgroups,
    cgroup_of,
    move_into,
    running,
    task_state,
)

ASYCKPT = [sys.executable, "-m", "asyckpt"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ASYCKPT + list(args), capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyckpt: error: "), proc.stderr
    assert text in lines[0], lines[0]
    return lines[0]


def is_frozen(cg: Path) -> bool:
    if (cg / "freezer.state").exists():
        return (cg / "freezer.state").read_text().strip() != "THAWED"
    return (cg / "cgroup.freeze").read_text().strip() == "1"


def thaw(cg: Path) -> None:
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        if (cg / name).exists():
            (cg / name).write_text(value)


def cgroups(tree: Tree) -> dict[int, str]:
    return {pid: cgroup_of(pid) for pid in tree.pids()}


def assert_back_where_it_was(before: dict[int, str]) -> None:
    for pid, cg in before.items():
        assert cgroup_of(pid) == cg, pid
        assert running(pid), pid
    assert not asyckpt_cgroups()


# --- 1. the freeze scope never holds asyckpt ----------------------------------------


@pytest.fixture
def sub_cgroup() -> Iterator[Any]:
    """sub_cgroup(parent) makes a cgroup below a test-made one; removed first, its tasks
    moved up to the parent (thawed)."""
    made: list[Path] = []

    def make(parent: Path) -> Path:
        path = parent / "below"
        path.mkdir()
        made.append(path)
        return path

    yield make
    for path in made:
        thaw(path.parent)
        for pid in (path / "cgroup.procs").read_text().split():
            (path.parent / "cgroup.procs").write_text(pid)
        path.rmdir()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("where", ["self", "below", "ancestor"])
def test_a_scope_holding_asyckpt_is_refused_before_freezing(
    version: int, where: str, zoo: Tree, make_cgroup: Any, sub_cgroup: Any, tmp_path: Path
) -> None:
    """asyckpt runs (as a subprocess) in the cgroup it is asked to freeze, in a cgroup
    below it, or from a shell that is: exit 7, one line, nothing frozen."""
    cg = make_cgroup(version)
    move_into(cg, zoo.pids())
    before = cgroups(zoo)
    dest = tmp_path / "x.ackpt"
    capture = " ".join(
        [
            *ASYCKPT,
            "tree",
            str(zoo.pid),
            "-o",
            str(dest),
            f"--freeze=cgroup:{cg}",
            "--freeze-timeout=2",
        ]
    )
    if where == "ancestor":
        elsewhere = make_cgroup(version)
        inner = f"echo $$ > {elsewhere}/cgroup.procs && exec {capture}"
        script = f"echo $$ > {cg}/cgroup.procs && sh -c '{inner}'"
        expected = "an ancestor of asyckpt"
    else:
        home = sub_cgroup(cg) if where == "below" else cg
        script = f"echo $$ > {home}/cgroup.procs && exec {capture}"
        expected = "holds asyckpt itself"
    proc = subprocess.Popen(["sh", "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        # Had it frozen itself, nothing else would thaw it.
        thaw(cg)
        proc.kill()
        proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    line = one_line_error(done, 7, expected)
    assert f"the freeze scope {cg} holds" in line
    assert not is_frozen(cg)
    assert not (tmp_path / "x.ackpt").exists()
    assert_back_where_it_was(before)


def test_a_scope_holding_the_guardian_is_refused(
    zoo: Tree, make_cgroup: Any, tmp_path: Path
) -> None:
    from asyckpt import _guardian

    cg = make_cgroup(2)
    move_into(cg, zoo.pids())
    _guardian.prestart()
    guardian = _guardian._prestarted
    assert guardian is not None
    try:
        move_into(cg, [guardian.pid])
        # The capture takes the prestarted guardian, now inside the cgroup to freeze.
        with pytest.raises(FreezerError, match=r"holds asyckpt's guardian \(pid \d+\)") as info:
            trio.run(
                lambda: asyckpt.checkpoint_tree(
                    zoo.pid,
                    tmp_path / "x.ackpt",
                    options=CaptureOptions(freeze=f"cgroup:{cg}", freeze_timeout=2),
                )
            )
        assert info.value.pid == guardian.pid
        assert guardian.dismissed
    finally:
        thaw(cg)
        _guardian.discard_prestarted()
    assert not is_frozen(cg)
    assert not (tmp_path / "x.ackpt").exists()


def test_own_lineage_reaches_init() -> None:
    from asyckpt._discover import own_lineage

    lineage = own_lineage(4242)
    assert [p.pid for p in lineage[:3]] == [os.getpid(), 4242, os.getppid()]
    assert lineage[0].what == f"asyckpt itself (pid {os.getpid()})"
    assert lineage[1].what == "asyckpt's guardian (pid 4242)"
    assert lineage[-1].pid == 1 and lineage[-1].what.startswith("pid 1 (")
    assert lineage[-1].what.endswith("), an ancestor of asyckpt")


@pytest.mark.parametrize(
    ("scope", "cgroup", "holds"),
    [
        ("/a", "/a", True),
        ("/a", "/a/b/c", True),
        ("/a/", "/a/b", True),
        ("/a", "/ab", False),
        ("/a/b", "/a", False),
        ("/", "/anything", True),
        ("/a", "/", False),
    ],
)
def test_scope_holds(scope: str, cgroup: str, holds: bool) -> None:
    assert scope_holds(scope, cgroup) is holds


# --- 2. captures of one tree take turns ---------------------------------------------


def test_two_captures_raced_never_strand_the_tree(zoo: Tree, tmp_path: Path) -> None:
    """Two captures of the same tree, started 0-30 ms apart, 50 times: both succeed
    (the second waits for the first) and every task ends where it was."""
    before = cgroups(zoo)
    rng = random.Random(10)
    for n in range(50):
        first = subprocess.Popen(
            [*ASYCKPT, "tree", str(zoo.pid), "-q", "-o", str(tmp_path / f"{n}a.ackpt")],
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(rng.uniform(0, 0.03))
        second = subprocess.Popen(
            [*ASYCKPT, "tree", str(zoo.pid), "-q", "-o", str(tmp_path / f"{n}b.ackpt")],
            stderr=subprocess.PIPE,
            text=True,
        )
        errors = [p.communicate(timeout=120)[1] for p in (first, second)]
        assert (first.returncode, second.returncode) == (0, 0), (n, errors)
        assert_back_where_it_was(before)


@pytest.fixture
def held_locks() -> Iterator[None]:
    """The capture locks of both hierarchies, held by the test as another capture."""
    locks = acquire_locks(["cgroup-v1", "cgroup-v2"], 0)
    try:
        yield
    finally:
        locks.release()


@pytest.mark.usefixtures("held_locks")
def test_a_capture_gives_up_waiting_at_the_lock_timeout(zoo: Tree, tmp_path: Path) -> None:
    before = cgroups(zoo)
    started = time.monotonic()
    proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "x.ackpt"), "--lock-timeout=0.3")
    assert time.monotonic() - started >= 0.3
    assert proc.returncode == 7
    # It said it waited, then why it gave up.
    waiting, line = proc.stderr.splitlines()
    assert waiting.startswith(f"asyckpt: waiting for asyckpt pid {os.getpid()} to finish")
    assert line.startswith(f"asyckpt: error: asyckpt pid {os.getpid()} is capturing (it holds ")
    assert "gave up waiting after 0.3 s" in line and "--lock-timeout" in line
    # With 0 it does not wait at all.
    proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "x.ackpt"), "--lock-timeout=0")
    one_line_error(proc, 7, "gave up waiting after 0 s")
    assert not (tmp_path / "x.ackpt").exists()
    assert_back_where_it_was(before)


def test_a_capture_says_it_waits_then_runs(zoo: Tree, tmp_path: Path) -> None:
    locks = acquire_locks(["cgroup-v1", "cgroup-v2"], 0)
    try:
        proc = subprocess.Popen(
            [*ASYCKPT, "tree", str(zoo.pid), "-q", "-o", str(tmp_path / "x.ackpt")],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        waiting = proc.stderr.readline()
        assert waiting.startswith(f"asyckpt: waiting for asyckpt pid {os.getpid()} to finish")
        assert proc.poll() is None
    finally:
        locks.release()
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest
    assert (tmp_path / "x.ackpt").exists()


def test_lock_timeout_must_be_seconds() -> None:
    proc = run("tree", "1", "--lock-timeout=-1")
    one_line_error(proc, 2, "is not a number of seconds")
    with pytest.raises(ValueError, match="lock_timeout"):
        CaptureOptions(lock_timeout=float("nan"))


# --- 3. both asyckpt and its guardian killed: `asyckpt recover` ---------------------

STALLED = """
import sys, time
import msgspec
import trio
import asyckpt
from asyckpt.testing import dispatch_with

class Stalled(msgspec.Struct, tag="test.stalled", tag_field="kind"):
    pass

class Stall:
    # Claims the tree's pipes and blocks in the first one, while the tree is frozen:
    # the moment to kill both processes at, made deterministic.
    name = "stall"
    kinds = frozenset({"pipe"})
    record_type = Stalled

    def capture(self, facts, ctx):
        print("frozen", flush=True)
        time.sleep(3600)

pid, dest, freeze = int(sys.argv[1]), sys.argv[2], sys.argv[3]
options = asyckpt.CaptureOptions(freeze=freeze)
trio.run(lambda: asyckpt.checkpoint_tree(pid, dest, options=options, dispatch=dispatch_with(Stall)))
"""


def frozen_in(owner: int, root: int) -> Path:
    for base in (V1_FREEZER, V2_ROOT):
        cg = base / f"asyckpt-{owner}-{root}"
        if cg.is_dir():
            return cg
    raise AssertionError(f"no transient cgroup of asyckpt pid {owner}")


def kill_both_while_frozen(
    tree: Tree, freeze: str, tmp_path: Path, run_dir: Path
) -> tuple[int, Path]:
    """Run a capture that stalls while the tree is frozen, then SIGKILL its guardian and
    itself; returns the dead asyckpt's pid and its plan."""
    script = tmp_path / "stalled.py"
    script.write_text(STALLED)
    owner = subprocess.Popen(
        [sys.executable, str(script), str(tree.pid), str(tmp_path / "x.ackpt"), freeze],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline() == "frozen\n"
        (plan,) = run_dir.glob("*.plan")
        header = json.loads(plan.read_text().splitlines()[0])
        assert header["owner"][0] == owner.pid
        guardian = header["guardian"][0]
        # Both stopped before either dies: asyckpt would begin its own undo on seeing its
        # guardian die, and the guardian its undo on seeing asyckpt die; a stopped process
        # runs no code, so neither undoes anything, however long the gap between kills.
        os.kill(guardian, signal.SIGSTOP)
        os.kill(owner.pid, signal.SIGSTOP)
        os.kill(owner.pid, signal.SIGKILL)
        os.kill(guardian, signal.SIGKILL)
    finally:
        owner.kill()
        owner.wait()
        assert owner.stdout is not None
        owner.stdout.close()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{guardian}") and time.monotonic() < deadline:
        time.sleep(0.01)  # its new parent reaps it
    return owner.pid, plan


@pytest.mark.parametrize("freeze", ["cgroup-v1", "cgroup-v2"])
def test_recover_after_asyckpt_and_its_guardian_are_killed(
    freeze: str, zoo: Tree, tmp_path: Path, run_dir: Path
) -> None:
    before = cgroups(zoo)
    owner, plan = kill_both_while_frozen(zoo, freeze, tmp_path, run_dir)
    cg = frozen_in(owner, zoo.pid)
    assert is_frozen(cg)
    plan_text = plan.read_text()

    # A new capture of the tree says so, and points at `asyckpt recover`.
    proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "y.ackpt"))
    one_line_error(proc, 7, "run 'asyckpt recover'")

    proc = run("recover", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"{plan}: the capture by asyckpt pid {owner} and its guardian died" in proc.stdout
    for pid in zoo.pids():
        assert f"  would move pid {pid} to " in proc.stdout
    assert f"  would remove {cg}\n" in proc.stdout
    assert proc.stdout.endswith("nothing was changed (--dry-run)\n")
    assert is_frozen(cg) and plan.read_text() == plan_text
    assert {int(p) for p in (cg / "cgroup.procs").read_text().split()} == set(zoo.pids())

    proc = run("recover")
    assert proc.returncode == 0, proc.stderr
    assert f"  removed {cg}\n  removed the plan\n" in proc.stdout
    assert not plan.exists()
    assert_back_where_it_was(before)

    # Nothing of it is left to recover, and the tree can be captured again.
    proc = run("recover")
    assert proc.returncode == 0 and str(plan) not in proc.stdout and str(cg) not in proc.stdout
    proc = run("tree", str(zoo.pid), "-q", "-o", str(tmp_path / "y.ackpt"))
    assert proc.returncode == 0, proc.stderr


def test_recover_a_cgroup_frozen_in_place(
    zoo: Tree, make_cgroup: Any, tmp_path: Path, run_dir: Path
) -> None:
    cg = make_cgroup(2)
    move_into(cg, zoo.pids())
    owner, plan = kill_both_while_frozen(zoo, f"cgroup:{cg}", tmp_path, run_dir)
    assert is_frozen(cg)

    # Even in auto mode (which would leave a frozen cgroup frozen, as found).
    proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "y.ackpt"))
    line = one_line_error(proc, 7, f"a capture by asyckpt pid {owner} died and left an undo plan")
    assert f"({plan}): run 'asyckpt recover'" in line

    proc = run("recover", "--dry-run")
    assert f"  would thaw {cg}/cgroup.freeze\n" in proc.stdout
    assert is_frozen(cg) and plan.exists()

    proc = run("recover")
    assert proc.returncode == 0, proc.stderr
    assert f"  thawed {cg}/cgroup.freeze\n  removed the plan\n" in proc.stdout
    assert not is_frozen(cg) and not plan.exists()
    assert {int(p) for p in (cg / "cgroup.procs").read_text().split()} == set(zoo.pids())
    assert all(running(p) for p in zoo.pids())


def test_recover_waits_for_a_live_guardian_and_drops_empty_plans(run_dir: Path) -> None:
    """A dead owner whose guardian still runs is the guardian's to finish; a plan with
    no header was made by an owner that died before its first step."""
    dead = Identity(4194999, 1)  # above any pid_max: never alive
    me = [os.getpid(), int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])]
    busy = run_dir / f"{dead.pid}-{dead.starttime}-0.plan"
    busy.write_text(json.dumps({"plan": 1, "owner": list(dead), "guardian": me}) + "\n")
    empty = run_dir / f"{dead.pid}-{dead.starttime}-1.plan"
    empty.write_text("")
    try:
        proc = run("recover")
        assert proc.returncode == 0, proc.stderr
        assert f"{busy}: its guardian (pid {os.getpid()}) is putting the tree back\n" in (
            proc.stdout
        )
        assert f"{empty}: empty, nothing was changed: removed\n" in proc.stdout
        assert busy.exists() and not empty.exists()
    finally:
        busy.unlink()


def test_a_tree_a_guardian_is_putting_back_is_busy(
    zoo: Tree, tmp_path: Path, run_dir: Path
) -> None:
    """The tree is in the transient cgroup of an asyckpt that died, whose guardian (here:
    this test process, alive) is at work: retry, not recover."""
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never a live pid
    me = [os.getpid(), int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])]
    cg = V1_FREEZER / f"asyckpt-{dead}-{zoo.pid}"
    plan = run_dir / f"{dead}-1-0.plan"
    plan.write_text(json.dumps({"plan": 1, "owner": [dead, 1], "guardian": me}) + "\n")
    cg.mkdir()
    try:
        move_into(cg, zoo.pids())
        proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "x.ackpt"))
        line = one_line_error(proc, 7, f"is in {cg}, the cgroup of another capture")
        assert "which died; its guardian is putting the tree back: retry in a moment" in line
    finally:
        plan.unlink()
        for pid in (cg / "cgroup.procs").read_text().split():
            (V1_FREEZER / "cgroup.procs").write_text(pid)
        cg.rmdir()


def test_a_tree_in_a_running_capture_is_busy_never_frozen_in_place(
    zoo: Tree, tmp_path: Path
) -> None:
    """A capture that did not take this one's lock (another run directory) holds the
    tree frozen in its transient cgroup, which then holds exactly the tree: the second
    capture refuses it as busy instead of freezing that cgroup in place."""
    before = cgroups(zoo)
    other_run = tmp_path / "other-run"
    script = tmp_path / "stalled.py"
    script.write_text(STALLED)
    owner = subprocess.Popen(
        [sys.executable, str(script), str(zoo.pid), str(tmp_path / "x.ackpt"), "cgroup-v1"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ASYCKPT_RUN_DIR": str(other_run)},
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline() == "frozen\n"
        cg = frozen_in(owner.pid, zoo.pid)
        proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "y.ackpt"))
        line = one_line_error(proc, 7, f"is in {cg}, the cgroup of another capture")
        assert f"(asyckpt pid {owner.pid}), which did not wait for this one" in line
        assert not (tmp_path / "y.ackpt").exists()
    finally:
        owner.kill()  # its guardian puts the tree back
        owner.wait()
        assert owner.stdout is not None
        owner.stdout.close()
    deadline = time.monotonic() + 5
    while (asyckpt_cgroups() or list(other_run.glob("*.plan"))) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not list(other_run.glob("*.plan"))
    assert_back_where_it_was(before)


@pytest.mark.parametrize(
    ("cgroup", "owner"),
    [
        ("/asyckpt-4242-100", 4242),
        ("/asyckpt-4242-100/inner", 4242),
        ("/asyckpt-test-4242-0", None),
        ("/system.slice/asyckpt-4242-100", None),
        ("/asyckpt-4242-100x", None),
        ("/", None),
    ],
)
def test_transient_owner(cgroup: str, owner: int | None) -> None:
    assert transient_owner(cgroup) == owner


def test_recover_a_cgroup_no_plan_names(zoo: Tree, tmp_path: Path) -> None:
    """An asyckpt-PID-ROOT cgroup whose asyckpt is gone and that no plan names (an
    asyckpt without plans made it): left to a guardian still at work, else thawed, its
    tasks moved to the hierarchy's root cgroup, and removed."""
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never a live pid
    cg = V1_FREEZER / f"asyckpt-{dead}-{zoo.pid}"
    cg.mkdir()
    fake = tmp_path / "_guardian.py"
    fake.write_text("import sys, time\nprint(flush=True)\ntime.sleep(60)\n")
    guardian = subprocess.Popen(
        [sys.executable, str(fake), str(dead)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert guardian.stdout is not None
        guardian.stdout.readline()
        move_into(cg, zoo.pids())
        (cg / "freezer.state").write_text("FROZEN")
        proc = run("recover")
        assert proc.returncode == 0, proc.stderr
        assert f"{cg}: its guardian (pid {guardian.pid}) is putting the tree back\n" in (
            proc.stdout
        )
        assert is_frozen(cg)
        guardian.kill()
        guardian.wait()

        proc = run("recover")
        assert proc.returncode == 0, proc.stderr
        assert f"{cg}: no plan names it and its asyckpt (pid {dead}) is gone" in proc.stdout
        assert f"  thawed {cg}/freezer.state\n" in proc.stdout
        for pid in zoo.pids():
            assert f"  moved pid {pid} to {V1_FREEZER}/cgroup.procs\n" in proc.stdout
        assert f"  removed {cg}\n" in proc.stdout
        assert not cg.exists()
        for pid in zoo.pids():
            assert ":freezer:/\n" in cgroup_of(pid) and running(pid)
    finally:
        guardian.kill()
        guardian.wait()
        assert guardian.stdout is not None
        guardian.stdout.close()
        if cg.exists():
            thaw(cg)
            for pid in (cg / "cgroup.procs").read_text().split():
                (V1_FREEZER / "cgroup.procs").write_text(pid)
            cg.rmdir()


def test_undo_moves_a_task_whose_cgroup_is_gone_where_the_root_came_from(
    zoo: Tree, make_cgroup: Any
) -> None:
    """The undo (the guardian's, and recover's) on real cgroups: a task whose own cgroup
    was removed meanwhile goes where the tree's root came from, and is said to."""
    from asyckpt._guardian import undo

    home, transient = make_cgroup(1), make_cgroup(1)
    gone = make_cgroup(1)
    gone.rmdir()
    move_into(transient, zoo.pids())
    steps: list[list[Any]] = [
        ["fallback", f"{home}/cgroup.procs"],
        ["members", f"{transient}/cgroup.procs"],
        ["rmdir", str(transient)],
        *(["origin", pid, f"{gone}/cgroup.procs"] for pid in zoo.pids()),
    ]
    said: list[tuple[str, str, int | None, str | None]] = []
    assert undo(steps, act=False, say=lambda *a: said.append(a))
    expected = [("move", f"{home}/cgroup.procs", pid, None) for pid in sorted(zoo.pids())]
    removed = ("remove", str(transient), None, None)
    assert sorted(said[:-1], key=str) == sorted(expected, key=str) and said[-1] == removed
    assert transient.exists()
    said.clear()
    assert undo(steps, say=lambda *a: said.append(a))
    assert sorted(said[:-1], key=str) == sorted(expected, key=str) and said[-1] == removed
    assert not transient.exists()
    assert {int(p) for p in (home / "cgroup.procs").read_text().split()} == set(zoo.pids())


def test_recover_leaves_an_unsafe_plan_alone(run_dir: Path) -> None:
    """A plan whose owner is dead but which would write outside the freezer
    hierarchies is reported (escaped) and left, exit 7."""
    dead = Identity(4194999, 1)  # above any pid_max: never alive
    plan = run_dir / f"{dead.pid}-{dead.starttime}-0.plan"
    header = {"plan": 1, "owner": list(dead), "guardian": None}
    steps = [["thaw", "/etc/evil\nfreezer.state", "THAWED"]]
    plan.write_text("\n".join(json.dumps(x) for x in [header, *steps]) + "\n")
    try:
        proc = run("recover")
        assert proc.returncode == 7
        assert f"{plan}: not replayed, it would write THAWED to /etc/evil\\nfreezer.state" in (
            proc.stdout
        )
        assert "could not be put back" in proc.stderr
        assert plan.exists()
    finally:
        plan.unlink()


@pytest.mark.parametrize("kind", ["shared", "symlink", "file", "relative"])
def test_an_unsafe_run_dir_is_refused(kind: str, tmp_path: Path, zoo: Tree) -> None:
    """Root replays the plans it finds there: a run directory others can write, a
    symlink, or no directory at all is refused, by a capture (before anything changes)
    and by recover, in one line."""
    before = cgroups(zoo)
    run_dir = tmp_path / "run\n\x1b[2J"  # a name to print escaped, on one line
    shown = str(tmp_path / "run\\n\\x1b[2J")
    expected = {
        "shared": f"the run directory {shown} is not private (owner uid 0, mode 777)",
        "symlink": f"the run directory {shown} is not a directory (a symlink?)",
        "file": f"the run directory {shown} is not a directory",
        "relative": "ASYCKPT_RUN_DIR=run is not an absolute path",
    }[kind]
    if kind == "shared":
        run_dir.mkdir()
        run_dir.chmod(0o777)
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        run_dir.symlink_to(tmp_path / "elsewhere")
    elif kind == "file":
        run_dir.write_text("")
    env = {**os.environ, "ASYCKPT_RUN_DIR": "run" if kind == "relative" else str(run_dir)}
    for command in (["tree", str(zoo.pid), "-o", str(tmp_path / "x.ackpt")], ["recover"]):
        proc = subprocess.run(
            [*ASYCKPT, *command], capture_output=True, text=True, timeout=120, env=env
        )
        one_line_error(proc, 7, expected)
    assert not (tmp_path / "x.ackpt").exists()
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())
    assert_back_where_it_was(before)


PLAN = b'{"plan": 1, "owner": [10, 20], "guardian": [11, 21]}\n'


@pytest.mark.parametrize(
    ("data", "steps"),
    [
        (PLAN, ()),
        (PLAN + b'["origin", 5, "/c/cgroup.procs"]\n', (("origin", 5, "/c/cgroup.procs"),)),
        # The last line was being written when its owner died: not taken.
        (PLAN + b'["rmdir", "/c/x"]\n["origin", 5, "/c/cg', (("rmdir", "/c/x"),)),
        (
            PLAN + b'["unlink_new", "/d", 1, 2, ".x.asyckpt-0123456789ab.tmp"]\n'
            b'["unlink", "/d", 1, 2, ".x.asyckpt-0123456789ab.tmp", 3, 4]\n',
            (
                ("unlink_new", "/d", 1, 2, ".x.asyckpt-0123456789ab.tmp"),
                ("unlink", "/d", 1, 2, ".x.asyckpt-0123456789ab.tmp", 3, 4),
            ),
        ),
    ],
)
def test_parse_plan(data: bytes, steps: tuple[tuple[object, ...], ...]) -> None:
    plan = parse_plan(data)
    assert plan.owner == Identity(10, 20) and plan.guardian == Identity(11, 21)
    assert plan.steps == steps


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "no header"),
        (b'{"plan": 1, "owner": [10, 20]}', "no header"),
        (b'{"plan": 2, "owner": [10, 20]}\n', "not a version 1 plan"),
        (b"[1, 2]\n", "not a version 1 plan"),
        (b'{"plan": 1, "owner": [10]}\n', "a process is [pid, start time]"),
        (b'{"plan": 1, "owner": [10, true]}\n', "a process is [pid, start time]"),
        (PLAN + b"not json\n", "line 2 is not JSON"),
        (PLAN + b'["chmod", "/x"]\n', "line 2 is not a step"),
        (PLAN + b'["origin", "5", "/c/cgroup.procs"]\n', "line 2: a bad 'origin' step"),
        (PLAN + b'["rmdir", "/c/x", "/c/y"]\n', "line 2: a bad 'rmdir' step"),
    ],
)
def test_parse_plan_rejects(data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_plan(data)


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("4242-912345-0.plan", Identity(4242, 912345)),
        ("4242-912345.plan", None),
        ("4242-912345-0.lock", None),
        ("a-1-0.plan", None),
        ("4242-9\u0663-0.plan", None),  # a non-ASCII digit
    ],
)
def test_parse_plan_name(name: str, owner: Identity | None) -> None:
    assert parse_plan_name(name) == owner


MOUNTS = ["/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified"]
V1 = "/sys/fs/cgroup/freezer"


@pytest.mark.parametrize(
    ("steps", "why"),
    [
        ([("thaw", f"{V1}/asyckpt-1-2/freezer.state", "THAWED")], None),
        ([("thaw", "/sys/fs/cgroup/unified/a/b/cgroup.freeze", "0")], None),
        ([("origin", 5, f"{V1}/x/cgroup.procs"), ("fallback", f"{V1}/cgroup.procs")], None),
        ([("members", f"{V1}/asyckpt-1-2/cgroup.procs"), ("rmdir", f"{V1}/asyckpt-1-2")], None),
        ([("thaw", f"{V1}/x/freezer.state", "FROZEN")], "it would write FROZEN to"),
        ([("thaw", "/etc/freezer.state", "THAWED")], "it would write THAWED to /etc/"),
        ([("thaw", f"{V1}/../../../etc/cgroup.freeze", "0")], "it would write 0 to"),
        ([("origin", 5, "/etc/passwd")], "it would move a task into /etc/passwd"),
        ([("fallback", f"{V1}/x/tasks")], "it would move a task into"),
        ([("members", f"{V1}/x/cgroup.procs")], "it would move the tasks of"),
        ([("rmdir", f"{V1}/x")], f"it would remove {V1}/x"),
        ([("rmdir", f"{V1}/a/asyckpt-1-2")], "it would remove"),
        ([("rmdir", V1)], "it would remove"),
        # An image writer's plan: only its own temporary names (see _target).
        ([("unlink", "/srv", 1, 2, ".x.ackpt.asyckpt-0123456789ab.tmp", 3, 4)], None),
        ([("unlink_new", "/etc", 1, 2, "passwd")], "it would remove /etc/passwd"),
        ([("unlink", "/", 1, 2, "./etc/x.asyckpt-0123456789ab.tmp")], "it would remove"),
        ([("unlink", "/srv", 1, 2, ".x.asyckpt-0123456789AB.tmp")], "it would remove"),
    ],
)
def test_check_plan(steps: list[tuple[object, ...]], why: str | None) -> None:
    found = check_plan(steps, MOUNTS)
    assert found == why if why is None else found is not None and found.startswith(why)


# --- 4. a thread id is not a tree ---------------------------------------------------

THREADED = """
import json, os, threading, time
def run():
    print(json.dumps({"pid": os.getpid(), "tid": threading.get_native_id()}), flush=True)
    time.sleep(3600)
threading.Thread(target=run, daemon=True).start()
time.sleep(3600)
"""


def test_a_thread_id_is_refused_before_freezing(spawn: Any, tmp_path: Path) -> None:
    script = tmp_path / "threaded.py"
    script.write_text(THREADED)
    tree = spawn(script)
    tid = tree.info["tid"]
    assert tid != tree.pid
    proc = run("tree", str(tid), "-o", str(tmp_path / "x.ackpt"))
    one_line_error(proc, 3, f"{tid} is a thread of {tree.pid}; capture {tree.pid}")
    assert not (tmp_path / "x.ackpt").exists()
    assert task_state(tree.pid) in "SR"


@pytest.mark.parametrize(
    ("data", "tgid"),
    [
        (b"Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n", 4242),
        (b"Name:\tTgid: 7\nTgid:\t8\n", 8),
    ],
)
def test_parse_tgid(data: bytes, tgid: int) -> None:
    assert parse_tgid(data) == tgid


def test_parse_tgid_needs_the_line() -> None:
    with pytest.raises(ValueError, match="no Tgid line"):
        parse_tgid(b"Name:\tx\n")
