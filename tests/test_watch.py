"""asyckpt watch: cheap looks, a capture when the tree grew, the diff against the last
capture; on a real child that leaks a socket a second."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import asyckpt
from asyckpt._watch import Look, same_root, should_capture

from .conftest import _ROOTS, Tree, asyckpt_cgroups, cgroup_of

# --- the decision, on literal looks ---------------------------------------------------


def lk(fds: int, *tasks: tuple[int, float]) -> Look:
    return Look(frozenset(tasks or [(10, 1.0)]), fds, 0.0)


@pytest.mark.parametrize(
    ("last", "now", "on_growth", "capture"),
    [
        (lk(10), lk(10), 1, False),
        (lk(10), lk(11), 1, True),
        (lk(10), lk(14), 5, False),
        (lk(10), lk(15), 5, True),
        (lk(10), lk(3), 1, False),  # fds closed: no leak
        # a process appeared, even with fewer fds in all
        (lk(10, (10, 1.0)), lk(8, (10, 1.0), (11, 2.0)), 5, True),
        # a process exited: nothing to look at in it
        (lk(10, (10, 1.0), (11, 2.0)), lk(8, (10, 1.0)), 1, False),
        # a pid reused by a new process is a process that appeared
        (lk(10, (10, 1.0), (11, 2.0)), lk(10, (10, 1.0), (11, 9.0)), 1, True),
    ],
)
def test_should_capture(last: Look, now: Look, on_growth: int, capture: bool) -> None:
    assert should_capture(last, now, on_growth) is capture


@pytest.mark.parametrize(
    ("first", "now", "same"),
    [
        (lk(1, (10, 1.0)), lk(1, (10, 1.0), (11, 2.0)), True),
        (lk(1, (10, 1.0)), lk(1, (10, 5.0)), False),  # pid 10 reused by another process
        (lk(1, (10, 1.0), (11, 2.0)), lk(1, (10, 1.0)), True),  # a child exited
    ],
)
def test_same_root(first: Look, now: Look, same: bool) -> None:
    assert same_root(first, now, 10) is same


def test_bad_arguments() -> None:
    for kw in ({"every": 0}, {"on_growth": 0}, {"keep": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            asyckpt.watch(1, **kw)


# --- a real leaking child ------------------------------------------------------------

# Leaks one socket a second, after a signal to start (so the first capture sees none),
# noting each one's fd and time (CLOCK_MONOTONIC: the same clock in every process).
LEAKER = """
import os, signal, socket, sys, time
log = open(os.path.join(sys.argv[1], "leaks"), "a", buffering=1)
go = []
signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
print(os.getpid(), flush=True)
while not go:
    signal.pause()
held = []
while True:
    s = socket.socket()
    held.append(s)
    log.write(f"{s.fileno()} {time.monotonic()}\\n")
    time.sleep(1)
"""


@pytest.fixture
def leaker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("leaker")
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAKER, str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    tree = Tree(proc, {"workdir": workdir})
    _ROOTS.add(proc.pid)
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == proc.pid
        yield tree
    finally:
        tree.kill()


def leaks(tree: Tree) -> dict[int, float]:
    text = (tree.info["workdir"] / "leaks").read_text()
    return {int(fd): float(t) for fd, t in (line.split() for line in text.splitlines())}


EVERY = 0.5
ASYCKPT = [sys.executable, "-m", "asyckpt"]


def test_watch_catches_a_leak_within_two_intervals(leaker: Tree, tmp_path: Path) -> None:
    async def main() -> list[asyckpt.WatchEvent]:
        events = []
        with trio.fail_after(30):
            async for event in asyckpt.watch(
                leaker.pid, every=EVERY, on_growth=1, keep=2, directory=tmp_path
            ):
                events.append(event)
                if len(events) == 1:
                    os.kill(leaker.pid, signal.SIGUSR1)  # start leaking
                if len(events) == 4:
                    return events
        raise AssertionError("unreachable")

    events = trio.run(main)
    first, *later = events
    assert first.diff is None
    held = leaks(leaker)
    caught: set[int] = set()
    for event in later:
        assert event.diff is not None
        opened = {(o.pid, o.fd, o.type) for o in event.diff.opened}
        assert opened and all(pid == leaker.pid and kind == "socket" for pid, _, kind in opened)
        assert event.diff.closed == event.diff.tasks_added == []
        # the child's own log of its leaks grew: its fd 3, nothing else
        assert {(c.fd, c.field) for c in event.diff.changed} <= {(3, "pos"), (3, "size")}
        for _, fd, _ in opened:
            # seen by the look that led to this capture, at most two intervals after
            assert event.look.at - held[fd] <= 2 * EVERY, (fd, event.look.at - held[fd])
            caught.add(fd)
    # every leak made before the last capture's look was caught, each exactly once
    assert caught == {fd for fd, at in held.items() if at <= later[-1].look.at}
    # only the last two images are kept
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(e.path) for e in events[-2:])


def test_aio_watch_catches_the_leak(leaker: Tree, tmp_path: Path) -> None:
    import asyncio

    import asyckpt.aio

    async def main() -> list[asyckpt.WatchEvent]:
        events = []
        async with asyncio.timeout(30):
            async for event in asyckpt.aio.watch(
                leaker.pid, every=EVERY, keep=1, directory=tmp_path
            ):
                events.append(event)
                if len(events) == 1:
                    os.kill(leaker.pid, signal.SIGUSR1)
                else:
                    return events
        raise AssertionError("unreachable")

    first, second = asyncio.run(main())
    assert first.diff is None and second.diff is not None
    [opened] = second.diff.opened
    assert (opened.pid, opened.type) == (leaker.pid, "socket")
    assert second.look.at - leaks(leaker)[opened.fd] <= 2 * EVERY
    assert os.listdir(tmp_path) == [os.path.basename(second.path)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_command_stops_on_a_signal(leaker: Tree, tmp_path: Path, sig: int) -> None:
    before = cgroup_of(leaker.pid)
    proc = subprocess.Popen(
        [
            *ASYCKPT,
            "watch",
            str(leaker.pid),
            "--every",
            "300ms",
            "--keep",
            "2",
            "-o",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"asyckpt: watch: {tmp_path}/watch-{leaker.pid}-"), first
        assert "first capture" in first
        os.kill(leaker.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith(f"+ pid {leaker.pid} fd ") and ": socket socket:[" in line:
                break
        else:
            raise AssertionError(f"no leak reported: {lines}")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == "asyckpt: watch stopped\n"
    assert cgroup_of(leaker.pid) == before and not asyckpt_cgroups()
    names = os.listdir(tmp_path)
    assert 1 <= len(names) <= 2 and all(n.endswith(".ackpt") for n in names)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--every", "0"], 2),
        (["--every", "soon"], 2),
        (["--keep", "0"], 2),
        (["--on-growth", "-1"], 2),
        (["-o", "/nonexistent/dir"], 5),
    ],
)
def test_watch_command_errors(zoo: Tree, argv: list[str], code: int) -> None:
    proc = subprocess.run(
        [*ASYCKPT, "watch", str(zoo.pid), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("asyckpt: error: ")


def test_watch_of_a_process_that_exits(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*ASYCKPT, "watch", str(2**22 + 1), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("asyckpt: error: ") and len(proc.stderr.splitlines()) == 1
    assert os.listdir(tmp_path) == []
