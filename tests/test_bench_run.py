"""bench/run.py's workloads and flags (issue 15): which trees a run measures, and one real
run of the smallest, end to end.  Speed itself is measured there, never asserted here."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from asyckpt.testing.spawn_tree import tasks_spawned

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@functools.cache
def bench_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("asyckpt_bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_five_workloads_are_the_issues_trees() -> None:
    run = bench_run()
    shapes = {w.name: (w.children, w.fds, w.depth) for w in run.WORKLOADS.values()}
    assert shapes == {
        "S0": (0, 30, 1),
        "S1": (0, 8000, 1),
        "W1": (20, 500, 1),
        "W4": (166, 3, 2),
        "W3": (49, 800, 1),
    }
    assert tasks_spawned(166, 2) == 499  # W4: "499 tasks"
    maps = {w.name: w.spec() for w in run.MAPPING_WORKLOADS.values()}
    assert maps == {"M0": "20 50", "M1": "20 50 --maps 600"}


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([], ["S0", "S1", "W1"]),
        (["--all"], ["S0", "S1", "W1", "W4", "W3"]),
        (["-w", "W4", "--workload", "W3", "-w", "W4"], ["W4", "W3"]),
        (["--tree", "3", "40"], ["custom"]),
        (["-w", "S0", "--tree", "3", "40", "2"], ["S0", "custom"]),
        (["--maps"], ["M0", "M1"]),
        (["-w", "W1", "--maps"], ["W1", "M0", "M1"]),
    ],
)
def test_workloads_picked_by_flags(argv: list[str], names: list[str]) -> None:
    args = bench_run().parse_args(argv)
    assert [w.name for w in args.workloads] == names
    if "--tree" in argv:
        custom = args.workloads[-1]
        assert (custom.children, custom.fds) == (3, 40)
        assert custom.depth == (2 if argv[-1] == "2" else 1)


@pytest.mark.parametrize("argv", [["-w", "W9"], ["--tree", "3"], ["--tree", "1", "-2"]])
def test_bad_workloads_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_run().parse_args(argv)
    assert exc.value.code == 2


def test_a_single_process_needs_its_fds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # S1's 10,670 fds fit a 20,000-fd limit: only a child holds its parent's fds too.
    run = bench_run()
    limit = 20_000
    monkeypatch.setattr(run.resource, "getrlimit", lambda _: (limit, limit))
    run.preflight(0, 8000, 1)
    with pytest.raises(run.BenchError, match="RLIMIT_NOFILE"):
        run.preflight(1, 8000, 1)


@pytest.mark.skipif(shutil.which("cc") is None, reason="bench/ needs a C compiler as cc")
@pytest.mark.skipif(shutil.which("lsof") is None, reason="bench/ needs lsof")
def test_a_real_run_of_s0_prints_its_row_and_ratios() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "-w", "S0", "--repeat", "1", "--warmup", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| S0")]
    assert len(rows) == 2, proc.stdout  # the times and the ratios
    times, ratios = (row.split("|")[1:-1] for row in rows)
    lsfd = shutil.which("lsfd") is not None
    assert ("lsfd -p" in proc.stdout) == lsfd
    assert len(times) == (10 if lsfd else 9) and len(ratios) == (8 if lsfd else 7)
    assert times[1].strip() == "1 / 44"  # one task: spawn_tree 0 30's 44 fds
    assert all(cell.strip() for cell in times + ratios)
