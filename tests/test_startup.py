"""What a command loads at start-up: only what the capture at hand needs (start-up time
counts, docs/performance.md).  Checked on real captures by what ends up loaded, never by
timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import WORKLOADS

AFTER = """\
import contextlib, sys
from asyckpt._cli import main
with contextlib.suppress(SystemExit):
    main(sys.argv[1:])
from asyckpt import _escape
print(_escape._suspect.cache_info().currsize, file=sys.stderr)
"""


def after(*argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", AFTER, *argv], capture_output=True, text=True, timeout=120
    )
    return proc.stderr.strip().splitlines()[-1]


def test_a_quiet_capture_compiles_no_escaping_pattern(spawn: Any, tmp_path: Path) -> None:
    # The pattern spanning all of Unicode costs sre milliseconds to compile: only a
    # command that prints a name needing it (hostile_names has) pays for it.
    tree = spawn(WORKLOADS / "hostile_names.py")
    image = str(tmp_path / "q.ackpt")
    assert after("tree", str(tree.pid), "-o", image, "-q") == "0"
    assert after("show", image) == "1"


def test_a_capture_loads_no_image_reader(spawn: Any, tmp_path: Path) -> None:
    # Writing an image needs its grammar, not the reader's decoding and checks.
    tree = spawn(WORKLOADS / "hostile_names.py")
    image = str(tmp_path / "q.ackpt")
    code = AFTER.replace("from asyckpt import _escape", "import asyckpt._escape as _escape")
    code = code.replace(
        "print(_escape._suspect.cache_info().currsize, file=sys.stderr)",
        "print(sorted(m for m in sys.modules if m in ('asyckpt._decode', 'asyckpt._validate'))"
        ", file=sys.stderr)",
    )
    argv = ["tree", str(tree.pid), "-o", image, "-q"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.stderr.strip().splitlines()[-1] == "[]"
    proc = subprocess.run(
        [sys.executable, "-c", code, "show", image], capture_output=True, text=True, timeout=120
    )
    assert proc.stderr.strip().splitlines()[-1] == "['asyckpt._decode', 'asyckpt._validate']"
