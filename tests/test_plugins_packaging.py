"""Plugins as distributions: plugins/install (what the README's setup command and .ci/run
call) installs every plugin directory it holds with pip, and the example plugin, once
installed so, is found by asyckpt and passes its own tests.  All of it happens in a
throwaway virtual environment on top of this one, which is left untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from asyckpt._plugins.loading import installed_handlers

from .conftest import asyckpt_cgroups

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "chardev-plugin"


def run(
    argv: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_install_script_and_the_example_as_a_distribution(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy2(ROOT / "plugins" / "install", plugins / "install")
    venv = tmp_path / "venv"
    # --system-site-packages: asyckpt, pip and pytest come from the environment under test.
    proc = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    env = dict(os.environ, PYTHON=str(python))

    # No plugin yet: nothing to do, and that is not an error.
    proc = run(["bash", plugins / "install"], env=env)
    assert proc.returncode == 0 and "no plugin distributions" in proc.stderr

    shutil.copytree(
        EXAMPLE, plugins / "chardev-plugin", ignore=shutil.ignore_patterns("*.egg-info", "build")
    )
    proc = run(["bash", plugins / "install", "--quiet"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = run([python, "-m", "asyckpt", "plugins"])
    assert proc.returncode == 0, proc.stderr
    chardev = next(line for line in proc.stdout.splitlines() if line.startswith("chardev "))
    assert chardev.split()[:4] == ["chardev", "asyckpt-example-chardev", "0.1.0", "on"]
    # Only in the virtual environment.
    assert "chardev" not in {i.name for i in installed_handlers()}

    # The example's own tests (asyckpt.testing), against the installed distribution.
    proc = run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=plugins / "chardev-plugin",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    assert not asyckpt_cgroups()
