"""No argument handed to the C extension can crash the interpreter: every function of
``asyckpt._fdscan`` is called with malformed shapes (wrong types, tuple lengths, out of
range numbers, containers that change under it) in a child interpreter
(``fdscan_malformed.py``), and each call must raise a Python exception, never kill the
process with a signal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("fdscan_malformed.py")


def test_no_argument_shape_crashes_the_interpreter() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode} in: {last[0]}"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILURES []" in proc.stdout
