"""Plugins as distributions: plugins/install (what the README's commands and .ci/run call)
installs every plugin directory it holds with pip, and the example plugin, once installed
so, is found by asyckpt and passes its own tests.

All of it happens offline, in a throwaway virtual environment, from local paths only:
asyckpt comes from a wheel built here from this checkout, found through ``--find-links``
with ``--no-index``; the build uses the setuptools of the environment under test (the
``test`` extra), not one downloaded.  The other packages (pip, trio, msgspec, pytest...)
are the environment under test's own, seen through a ``.pth`` file, with asyckpt's own
distributions left out, so that the only asyckpt there is the one installed from the
wheel.  Any attempt to reach an index would go to a proxy that refuses it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from asyckpt._plugins.loading import installed_handlers

from .conftest import asyckpt_cgroups

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "chardev-plugin"
# What building asyckpt's wheel reads, as an sdist would hold it.
CORE_SOURCES = ("pyproject.toml", "setup.py", "README.md", "src")
BUILD_LEFTOVERS = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so")


def run(
    argv: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def offline_env(**extra: str) -> dict[str, str]:
    """The environment minus pip's configuration (no user or site index, no find-links
    of this machine), with every HTTP(S) request sent to a closed local port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    return env | extra


def build_core_wheel(tmp: Path, wheels: Path) -> Path:
    """asyckpt's wheel, built from a copy of this checkout's sources (the checkout is
    not written to), with the running environment's setuptools."""
    src = tmp / "asyckpt-src"
    src.mkdir()
    for name in CORE_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=BUILD_LEFTOVERS)
        else:
            shutil.copy2(ROOT / name, src / name)
    wheel = ["wheel", "--no-deps", "--no-index", "--no-build-isolation", "--quiet"]
    proc = run([sys.executable, "-m", "pip", *wheel, "-w", wheels, src], env=offline_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("asyckpt-*.whl")
    return wheel


def layered_venv(tmp: Path) -> Path:
    """A virtual environment that sees the environment under test's packages, except
    asyckpt's own distributions (core and plugins); returns its python."""
    layer = tmp / "layer"
    layer.mkdir()
    site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    for site_dir in map(Path, site_dirs):
        if not site_dir.is_dir():
            continue
        for entry in site_dir.iterdir():
            name = entry.name.lower()
            ours = name.startswith(("asyckpt", "__editable__"))
            if ours or name.endswith(".pth") or (layer / entry.name).exists():
                continue
            (layer / entry.name).symlink_to(entry)
    venv = tmp / "venv"
    proc = run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    (Path(purelib.stdout.strip()) / "environment-under-test.pth").write_text(f"{layer}\n")
    return python


def installed(python: Path, distribution: str) -> tuple[Path, dict[str, Any]]:
    """Where ``distribution`` is installed, and pip's record of where from (PEP 610's
    direct_url.json; empty when it came from an index or --find-links)."""
    code = (
        "import importlib.metadata as m, json, sys; "
        "d = m.distribution(sys.argv[1]); "
        "print(json.dumps([str(d.locate_file('')), json.loads(d.read_text('direct_url.json')"
        " or '{}')]))"
    )
    proc = run([python, "-c", code, distribution])
    assert proc.returncode == 0, proc.stderr
    where, url = json.loads(proc.stdout)
    return Path(where), url


def chardev_line(python: Path) -> list[str]:
    proc = run([python, "-m", "asyckpt", "plugins"])
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("chardev "))
    return line.split()[:4]


def test_install_script_and_the_example_as_a_distribution(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    core = build_core_wheel(tmp_path, wheels)
    python = layered_venv(tmp_path)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy2(ROOT / "plugins" / "install", plugins / "install")
    env = offline_env(PYTHON=str(python))
    local_only = ["--no-index", "--find-links", str(wheels), "--no-build-isolation"]

    # No plugin yet: nothing to do, and that is not an error.
    proc = run(["bash", plugins / "install"], env=env)
    assert proc.returncode == 0 and "no plugin distributions" in proc.stderr
    proc = run([python, "-c", "import asyckpt"])
    assert proc.returncode != 0, "the environment must not see the asyckpt under test"

    example = plugins / "chardev-plugin"
    shutil.copytree(EXAMPLE, example, ignore=BUILD_LEFTOVERS)
    proc = run(["bash", plugins / "install", "--quiet", *local_only], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # asyckpt, which the example requires, came from the wheel built here (--no-index:
    # nowhere else), into the virtual environment.
    where, url = installed(python, "asyckpt")
    assert where.is_relative_to(python.parents[1]) and url == {}
    assert core.name.startswith("asyckpt-0.1.0-")
    assert chardev_line(python) == ["chardev", "asyckpt-example-chardev", "0.1.0", "on"]
    # Only in the virtual environment.
    assert "chardev" not in {i.name for i in installed_handlers()}
    # Installed, not pointing back: the sources are left as they were, no build/ in them.
    where, url = installed(python, "asyckpt-example-chardev")
    assert where.is_relative_to(python.parents[1]) and url["dir_info"] == {}
    assert sorted(p.name for p in example.iterdir()) == sorted(
        p.name for p in EXAMPLE.iterdir() if p.name != "build" and p.suffix != ".egg-info"
    )
    assert not list(example.rglob("*.egg-info"))

    # The example's own tests (asyckpt.testing), against the installed distribution.
    proc = run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=example,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    assert not asyckpt_cgroups()

    # With its sources gone, the plugin still works.
    shutil.rmtree(example)
    assert chardev_line(python) == ["chardev", "asyckpt-example-chardev", "0.1.0", "on"]

    # --editable: for developing the plugins, pointing into their directory.
    shutil.copytree(EXAMPLE, example, ignore=BUILD_LEFTOVERS)
    proc = run(["bash", plugins / "install", "--editable", "--quiet", *local_only], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, url = installed(python, "asyckpt-example-chardev")
    assert url["dir_info"] == {"editable": True} and url["url"] == example.as_uri()
    assert chardev_line(python) == ["chardev", "asyckpt-example-chardev", "0.1.0", "on"]
