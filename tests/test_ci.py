""".ci/run is the README's test command, and a run that collected no test fails."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"


def readme_commands() -> list[str]:
    """The README's setup commands: the lines of its code blocks that make a venv."""
    lines, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside and line.startswith("python3 -m venv "):
            lines.append(line.strip())
    return lines


def test_ci_runs_exactly_the_readme_test_command() -> None:
    (test,) = [line for line in readme_commands() if "-m pytest" in line]
    assert "plugins/install --editable" in test
    assert test in [line.strip() for line in CI.read_text().splitlines()]


def test_the_readme_run_command_installs_normally() -> None:
    (run,) = [line for line in readme_commands() if "asyckpt show demo.ackpt" in line]
    assert " -e " not in run and "--editable" not in run
    assert "bash plugins/install &&" in run


def fake_checkout(tmp_path: Path, pytest_exit: int) -> Path:
    """A checkout whose `python3 -m venv` makes a venv where pip succeeds and pytest exits
    ``pytest_exit``: only .ci/run's own logic is under test."""
    root = tmp_path / "checkout"
    (root / ".ci").mkdir(parents=True)
    shutil.copy2(CI, root / ".ci" / "run")
    (root / "plugins").mkdir()
    (root / "plugins" / "install").write_text("exit 0\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2 $3" = "-m venv .venv" ] || exit 99\n'
        "mkdir -p .venv/bin\n"
        "printf '#!/bin/sh\\nexit 0\\n' > .venv/bin/pip\n"
        f"printf '#!/bin/sh\\nexit {pytest_exit}\\n' > .venv/bin/python\n"
        "chmod +x .venv/bin/pip .venv/bin/python\n"
    )
    python3.chmod(python3.stat().st_mode | stat.S_IXUSR)
    return root


@pytest.mark.parametrize(("pytest_exit", "ci_exit"), [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_ci_exit_status(tmp_path: Path, pytest_exit: int, ci_exit: int) -> None:
    root = fake_checkout(tmp_path, pytest_exit)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(root / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == ci_exit, proc.stderr
    assert ("collected no tests" in proc.stderr) == (pytest_exit == 5)
