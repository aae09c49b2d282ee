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
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

__all__ = ["Guardian", "discard_prestarted", "prestart", "take_guardian", "undo"]

if __name__ != "__main__":  # the parent's side; the script itself needs only the stdlib
    from ._errors import FreezerError, NoSuchProcess
    from ._rundir import PlanWriter, identity


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


Say = Callable[[str, str, int | None, str | None], None]
"""What :func:`undo` reports: (verb, path, pid, error): ``thaw`` a freezer file,
``move`` pid to a cgroup.procs, ``remove`` a cgroup; ``error`` is None when it worked."""


def _quiet(verb: str, path: str, pid: int | None, error: str | None) -> None:
    pass


def undo(steps: list[list[Any]], *, act: bool = True, say: Say = _quiet) -> bool:
    """Thaw, move tasks back, remove the transient cgroup: each step best effort (the
    guardian has nobody left to report to; ``recover`` reports through ``say``).
    Without ``act`` nothing is changed, and ``say`` hears what would be.  Returns whether
    every step worked."""
    origins: dict[int, str] = {}
    fallback = None
    members_of: list[str] = []
    rmdirs: list[str] = []
    names: dict[tuple[str, int, int, str], list[Any]] = {}
    ok = True
    for step in steps:
        op = step[0]
        if op == "thaw":
            if not os.path.isdir(os.path.dirname(step[1])):
                continue  # removed already: nothing to thaw
            error = None
            for _ in range(3 if act else 0):
                try:
                    _write(step[1], step[2])
                    error = None
                    break
                except OSError as exc:
                    error = exc.strerror or str(exc)
                    time.sleep(0.01)
            ok = ok and error is None
            say("thaw", step[1], None, error)
        elif op == "origin":
            origins[int(step[1])] = step[2]
        elif op == "fallback":
            fallback = step[1]
        elif op == "members":
            members_of.append(step[1])
        elif op == "rmdir":
            rmdirs.append(step[1])
        elif op in ("unlink", "unlink_new"):
            key = (step[1], step[2], step[3], step[4])
            names.setdefault(key, []).append(tuple(step[5:7]) if op == "unlink" else None)
    for (directory, dev, ino, name), idents in names.items():
        # An image's temporary names (see _target), if they still hold what it made.
        path = os.path.join(directory, name)
        try:
            if _unlink(directory, (dev, ino), name, idents, act=act):
                say("remove", path, None, None)
        except FileNotFoundError:
            pass  # never made, or renamed into place
        except OSError as exc:
            ok = False
            say("remove", path, None, exc.strerror or str(exc))
    for procs in members_of:
        try:
            with open(procs) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue  # removed already: nobody left in it
        for pid in pids:
            dest = origins.get(pid, fallback)
            if dest is None:
                ok = False
                say("move", procs, pid, "no cgroup to move it back to")
                continue
            # A cgroup removed meanwhile: where the tree's root came from instead.
            error = None
            for where in dict.fromkeys([dest] if fallback is None else [dest, fallback]):
                try:
                    if act:
                        _write(where, str(pid))
                    elif not os.path.exists(where):
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                except ProcessLookupError:
                    error = None  # it exited meanwhile
                    break
                except OSError as exc:
                    error = exc.strerror or str(exc)
                    if isinstance(exc, FileNotFoundError):
                        continue
                    break
                say("move", where, pid, None)
                error = None
                break
            if error is not None:
                ok = False
                say("move", dest, pid, error)
    for path in rmdirs:
        if not os.path.isdir(path):
            continue
        error = None
        # Tasks that just exited may still be counted for a moment.
        for _ in range(100 if act else 0):
            try:
                os.rmdir(path)
                error = None
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                error = exc.strerror or str(exc)
                time.sleep(0.01)
        ok = ok and error is None
        say("remove", path, None, error)
    return ok


def _unlink(
    directory: str, dir_ident: tuple[int, int], name: str, idents: list[Any], *, act: bool
) -> bool:
    """Remove ``name`` in ``directory`` if that is still the directory asyckpt wrote in
    and the name still holds one of the inodes it made (an ident of None: any regular
    file, for a name told before it was created).  Whether it was (would be) removed."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(dfd)
        if (st.st_dev, st.st_ino) != dir_ident:
            return False
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        ours = (st.st_dev, st.st_ino) in idents
        if not ours and not (None in idents and stat.S_ISREG(st.st_mode)):
            return False
        if act:
            os.unlink(name, dir_fd=dfd)
        return True
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
    plan = None
    for line in sys.stdin:
        step = json.loads(line)
        if step[0] == "done":
            return
        if step[0] == "plan":
            plan = step[1]  # the same steps, on disk for `asyckpt recover`
            continue
        steps.append(step)
    if undo(steps) and plan is not None:
        with contextlib.suppress(OSError):
            os.unlink(plan)


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
        self._plan: PlanWriter | None = None
        self.dismissed = False
        self._reaped = False

    @staticmethod
    def _start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            # The owner's pid, unused by the guardian: it tells `asyckpt recover` that
            # a dead asyckpt's guardian is still at work (its cmdline is all it has).
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid())],
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

    @property
    def pid(self) -> int:
        return self._proc.pid

    def note(self, *step: object) -> None:
        """Tell the guardian how to undo the step about to be taken, and write it to the
        capture's plan on disk (for ``asyckpt recover``, should both processes die)."""
        self.note_all([step])

    def note_all(self, steps: Sequence[Sequence[object]]) -> None:
        """:meth:`note` for several steps about to be taken, in one write each to the
        plan and to the guardian (a tree of 500 tasks is 500 moves)."""
        if not steps:
            return
        line = "".join(json.dumps(list(step)) + "\n" for step in steps)
        try:
            if self._plan is None:
                try:
                    self._plan = PlanWriter(identity(self._proc.pid))
                except NoSuchProcess:
                    raise FreezerError("the freezer guardian is gone (it exited)") from None
                self._plan.note(line)
                self._stdin.write(json.dumps(["plan", self._plan.path]) + "\n")
            else:
                self._plan.note(line)
        except OSError as exc:
            raise FreezerError(f"cannot write the undo plan: {exc.strerror}") from exc
        try:
            self._stdin.write(line)
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
            if self._plan is not None:
                # Undone: the plan goes.  Otherwise the guardian removes it once it has
                # undone everything itself, or it stays for `asyckpt recover`.
                self._plan.remove() if clean else self._plan.close()
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
