"""The guardian: a process that thaws the tree if asyckpt dies while it is frozen.

A frozen tree is an outage, and ``finally`` blocks do not run on SIGKILL (or an OOM
kill, or a power cut of the Python runtime).  So before freezing, asyckpt starts this
small process and tells it, line by line and *before* each step, how to undo that step:
which freezer file to thaw, where each moved task came from, which transient cgroup to
remove.  The guardian just reads.  When asyckpt finishes cleanly it says ``done`` and the
guardian exits; if its stdin reaches end-of-file first, asyckpt is gone, and the guardian
undoes everything it was told, then exits.

This file runs as a script (``python -I -S _guardian.py``): standard library only, and
nothing from asyckpt, so it starts fast and cannot be broken by the package's imports.
The parent side is :class:`Guardian`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from typing import IO, Any

__all__ = ["Guardian", "discard_prestarted", "prestart", "take_guardian"]

if __name__ != "__main__":  # the parent's side; the script itself needs only the stdlib
    from ._errors import FreezerError


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _undo(steps: list[list[Any]]) -> None:
    """Thaw, move tasks back, remove the transient cgroup: each step best effort, since
    nobody is left to report to."""
    origins: dict[int, str] = {}
    fallback = None
    members_of: list[str] = []
    rmdirs: list[str] = []
    names: dict[tuple[str, int, int, str], list[Any]] = {}
    for step in steps:
        op = step[0]
        if op == "thaw":
            for _ in range(3):
                try:
                    _write(step[1], step[2])
                    break
                except OSError:
                    time.sleep(0.01)
        elif op == "origin":
            origins[int(step[1])] = step[2]
        elif op == "fallback":
            fallback = step[1]
        elif op == "members":
            members_of.append(step[1])
        elif op == "rmdir":
            rmdirs.append(step[1])
        elif op == "unlink":
            key = (step[1], step[2], step[3], step[4])
            names.setdefault(key, []).append(tuple(step[5:7]) if len(step) >= 7 else None)
    for (directory, dev, ino, name), idents in names.items():
        with contextlib.suppress(OSError):
            _unlink(directory, (dev, ino), name, idents)
    for procs in members_of:
        try:
            with open(procs) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            dest = origins.get(pid, fallback)
            if dest is None:
                continue
            # It exited meanwhile, or its origin is gone: there is nothing better to do.
            with contextlib.suppress(OSError):
                _write(dest, str(pid))
    for path in rmdirs:
        # Tasks that just exited may still be counted for a moment.
        for _ in range(100):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def _unlink(directory: str, dir_ident: tuple[int, int], name: str, idents: list[Any]) -> None:
    """Remove ``name`` in ``directory`` if that is still the directory asyckpt wrote in
    and the name still holds one of the inodes it made (an ident of None: any regular
    file, for a name told before it was created)."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(dfd)
        if (st.st_dev, st.st_ino) != dir_ident:
            return
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) in idents or (None in idents and stat.S_ISREG(st.st_mode)):
            os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)


def main() -> None:
    # Ctrl-C in a terminal signals the whole foreground group; the guardian must outlive
    # asyckpt, not die with it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdout.close()
    steps: list[list[Any]] = []
    for line in sys.stdin:
        step = json.loads(line)
        if step[0] == "done":
            return
        steps.append(step)
    _undo(steps)


_prestarted: Guardian | None = None


def prestart() -> None:
    """Start the guardian of this process's next capture now, so that its interpreter
    starts while this one is still importing (the CLI calls it first thing).  Nothing
    is reported here: a guardian that cannot start fails the capture that needs it."""
    global _prestarted
    if _prestarted is None:
        with contextlib.suppress(FreezerError):
            _prestarted = Guardian()


def take_guardian() -> Guardian:
    """The prestarted guardian, if there is one, else a new one."""
    global _prestarted
    guardian, _prestarted = _prestarted, None
    return guardian if guardian is not None else Guardian()


def discard_prestarted() -> None:
    """Dismiss a prestarted guardian no capture took."""
    global _prestarted
    guardian, _prestarted = _prestarted, None
    if guardian is not None:
        guardian.dismiss(clean=True)


class Guardian:
    """The parent's end: start the guardian, tell it each undo step, dismiss it."""

    def __init__(self) -> None:
        try:
            self._proc = self._start()
        except OSError as exc:
            raise FreezerError(f"cannot start the freezer guardian: {exc.strerror}") from exc
        self._stdin: IO[str] = self._proc.stdin  # type: ignore[assignment]
        self.dismissed = False
        self._reaped = False

    @staticmethod
    def _start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            # Its own session: no terminal signal reaches it, and it is not in the tree.
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        """Block until the guardian reads its stdin; only then may anything be frozen."""
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        self._proc.stdout.close()
        if line != "ready\n":
            raise FreezerError("the freezer guardian did not start; nothing was frozen")

    def note(self, *step: object) -> None:
        """Tell the guardian how to undo the step about to be taken."""
        try:
            self._stdin.write(json.dumps(step) + "\n")
            self._stdin.flush()
        except OSError as exc:
            # Without it a SIGKILL could leave the tree frozen: do not take the step.
            raise FreezerError(f"the freezer guardian is gone ({exc.strerror})") from exc

    def dismiss(self, *, clean: bool, wait: bool = True) -> None:
        """End the guardian: ``clean`` when everything was undone already; otherwise it
        retries the undo itself before exiting.  Without ``wait`` it is told and left to
        exit on its own, to be reaped by a later ``dismiss`` (which is idempotent)."""
        if not self.dismissed:
            self.dismissed = True
            try:
                if clean:
                    self._stdin.write('["done"]\n')
                self._stdin.close()
            except OSError:
                # It died; nothing to dismiss.  (close() still closes the pipe when the
                # flush of what could not be written fails.)
                with contextlib.suppress(OSError):
                    self._stdin.close()
        if not wait or self._reaped:
            return
        self._reaped = True
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()  # unread when the capture failed before freezing


if __name__ == "__main__":
    main()
