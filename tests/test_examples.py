"""The examples in examples/ run as documented."""

from __future__ import annotations

import re
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
    assert re.search(r"^watch caught: pid \d+ fd \d+ socket socket:\[\d+\]$", proc.stdout, re.M)
    assert not asyckpt_cgroups()


def test_supervisor_asyncio_example() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "supervisor_asyncio.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "streamed: " in out
    leaked = re.findall(r"^leaked: pid \d+ fd (\d+) socket socket:\[\d+\]$", out, re.M)
    # a socket a second for 2.5 s, and nothing else opened
    assert len(leaked) in (2, 3), out
    assert f"summary: {len(leaked)} fds opened, 0 closed" in out
    assert re.search(r"^cancelled: child state [SR], image written: False$", out, re.M)
    assert re.search(r"^event loop: longest heartbeat gap [\d.]+ ms$", out, re.M)
    assert not asyckpt_cgroups()
