"""Regenerate the pictures of docs/ and the README: the demo tree (``asyckpt tree``
with no pid) and the sample service (examples/sample_service.py), each captured and
drawn with ``asyckpt graph``.

Run as root, from a checkout with asyckpt and its bundled plugins installed, and
Graphviz (``apt-get install graphviz``)::

    python3 docs/pictures/make.py        (or .venv/bin/python docs/pictures/make.py)

The trees are started with only stdin, stdout and stderr open (on /dev/null and on
files of a temporary directory), so that the pictures show what the trees themselves
hold; the service is killed by its process group afterwards, whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ASYCKPT = [sys.executable, "-m", "asyckpt"]


def run(*argv: str | Path, cwd: Path) -> None:
    """asyckpt ARGV, its stderr in a file (the demo tree inherits it), shown if it fails."""
    with open(cwd / "asyckpt.err", "w+") as err:
        proc = subprocess.run(
            [*ASYCKPT, *map(str, argv)], stdin=subprocess.DEVNULL, stderr=err, cwd=cwd
        )
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"asyckpt {argv[0]} failed: {err.read().strip()}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="asyckpt-pictures-") as name:
        tmp = Path(name)
        run("tree", "-q", "-o", tmp / "demo.ackpt", cwd=tmp)
        run("graph", tmp / "demo.ackpt", "-o", HERE / "demo.svg", "--force", cwd=tmp)

        with open(tmp / "service.out", "w+") as out, open(tmp / "service.err", "w") as err:
            service = subprocess.Popen(
                [sys.executable, REPO / "examples" / "sample_service.py", "3", tmp],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                cwd=tmp,
            )
            try:
                while not (text := (tmp / "service.out").read_text()).endswith("\n"):
                    if service.poll() is not None:
                        sys.exit(f"the sample service failed: {(tmp / 'service.err').read_text()}")
                    time.sleep(0.05)
                run("tree", text.strip(), "-q", "-o", tmp / "service.ackpt", cwd=tmp)
            finally:
                with suppress(ProcessLookupError):
                    os.killpg(service.pid, signal.SIGKILL)  # its own group: its clients too
                service.wait()
        run("graph", tmp / "service.ackpt", "-o", HERE / "sample-service.svg", "--force", cwd=tmp)
    for svg in sorted(HERE.glob("*.svg")):
        print(f"{svg.relative_to(REPO)}: {svg.stat().st_size} bytes")


if __name__ == "__main__":
    main()
