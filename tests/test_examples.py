"""The examples in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import asyckpt_cgroups

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_embed_trio_example() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed_trio.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "streamed: " in proc.stdout
    assert "app.log" in proc.stdout  # the child's regular file, read back from the image
    assert not asyckpt_cgroups()
