"""A small idle process tree for ``asyckpt tree`` without a pid (the quick start).

Run as ``python -m asyckpt._demo WORKDIR``: it opens one fd of each common kind, forks two
children (which inherit them and open their own), prints its pid once all are ready, and
sleeps until killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress

__all__ = ["demo_tree"]


def _open_fds(workdir: str, tag: str) -> list[object]:
    held: list[object] = []
    data = os.path.join(workdir, f"data-{tag}")
    fd = os.open(data, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"hello, asyckpt\n")
    held.append(fd)
    held.append(
        os.open(
            os.path.join(workdir, f"log-{tag}"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
    )
    held.append(os.open(workdir, os.O_RDONLY | os.O_DIRECTORY))
    link = os.path.join(workdir, f"link-{tag}")
    os.symlink("/etc/hostname", link)
    held.append(os.open(link, os.O_PATH | os.O_NOFOLLOW))
    held.extend(os.pipe())
    held.extend(socket.socketpair())
    gone = os.path.join(workdir, f"gone-{tag}")
    fd = os.open(gone, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"unlinked but open\n")
    os.unlink(gone)
    held.append(fd)
    return held


def main(workdir: str) -> None:
    held = _open_fds(workdir, "root")
    ready_r, ready_w = os.pipe()
    for n in range(2):
        if os.fork() == 0:
            os.close(ready_r)
            held += _open_fds(workdir, f"child{n}")
            os.close(ready_w)
            while True:
                signal.pause()
    os.close(ready_w)
    while os.read(ready_r, 1):
        pass  # EOF once both children closed their copy: they are ready
    os.close(ready_r)
    print(os.getpid(), flush=True)
    while True:
        signal.pause()


@contextmanager
def demo_tree() -> Iterator[int]:
    """Start the demo tree, yield its root pid, and kill it (by process group) after."""
    with tempfile.TemporaryDirectory(prefix="asyckpt-demo-") as workdir:
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyckpt._demo", workdir],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the demo tree failed to start")
            yield int(line)
        finally:
            # start_new_session made the root a group leader: its pgid is its pid.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    main(sys.argv[1])
