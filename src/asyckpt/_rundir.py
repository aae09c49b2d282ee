"""The run directory (``/run/asyckpt``): the capture locks and each capture's undo plan.

Two things must outlive any one asyckpt process, so they live on disk:

*Locks*, one file per cgroup hierarchy (``cgroup-v1.lock``, ``cgroup-v2.lock``), taken
with ``flock`` before any task moves and held until every task is back.  Two captures of
the same tree would otherwise interleave their moves, and the second would record the
first's transient cgroup as a task's origin.  The kernel drops a flock when its holder
dies, whatever kills it, so a lock is never stale.  The holder writes its pid into the
file, for the message of whoever waits.

*Undo plans*: before each step that changes a task's freezer state or cgroup, the step
that undoes it is appended to ``PID-STARTTIME-N.plan`` (the owner's pid and start time
in the name), as it is told to the guardian; the file is removed once everything is
undone.  A plan whose owner and guardian are both dead is stranded: ``asyckpt recover``
replays it (``_recover``).  A plan is a header line, then one step per line, JSON::

    {"plan": 1, "owner": [4242, 912345], "guardian": [4243, 912346]}
    ["fallback", "/sys/fs/cgroup/freezer/cgroup.procs"]
    ["members", "/sys/fs/cgroup/freezer/asyckpt-4242-100/cgroup.procs"]
    ["rmdir", "/sys/fs/cgroup/freezer/asyckpt-4242-100"]
    ["origin", 100, "/sys/fs/cgroup/freezer/cgroup.procs"]
    ["thaw", "/sys/fs/cgroup/freezer/asyckpt-4242-100/freezer.state", "THAWED"]

The directory is ``$ASYCKPT_RUN_DIR`` when set (tests keep their own), else
``/run/asyckpt`` for root.  It must be a real directory owned by this user and writable
by nobody else: root replays what is written there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import NamedTuple

from ._errors import AccessDenied, FreezerError, NoSuchProcess
from ._procread import read_stat

__all__ = [
    "RUN_DIR_ENV",
    "Identity",
    "Locks",
    "PlanFile",
    "PlanWriter",
    "acquire_locks",
    "alive",
    "list_plans",
    "open_run_dir",
    "parse_plan",
    "parse_plan_name",
    "run_dir_path",
]

RUN_DIR_ENV = "ASYCKPT_RUN_DIR"
PLAN_VERSION = 1
PLAN_SUFFIX = ".plan"
PLAN_MAX = 32 << 20
"""The largest plan read back: a step is under 200 bytes, a task needs one."""
PLANS_MAX = 4096
"""Plan files looked at, at most (one per capture that died without its guardian)."""

LOCK_NOTICE: ContextVar[Callable[[str], None] | None] = ContextVar(
    "asyckpt_lock_notice", default=None
)
"""Told once, in words, when a capture starts waiting for another's lock.  The command
sets it to print the line (escaped: the message quotes a path as it is); a library
caller may too (it is per context, not global)."""


class Identity(NamedTuple):
    """A process, told apart from a later one with the same pid by its start time."""

    pid: int
    starttime: int


def identity(pid: int) -> Identity:
    return Identity(pid, read_stat(pid).starttime)


def alive(who: Identity) -> bool:
    """Whether ``who`` still runs: same pid, same start time, not a zombie."""
    try:
        task = read_stat(who.pid)
    except NoSuchProcess:
        return False
    return task.starttime == who.starttime and task.state not in ("Z", "X")


def run_dir_path() -> str:
    env = os.environ.get(RUN_DIR_ENV)
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/asyckpt"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "asyckpt")
    return f"/tmp/asyckpt-{os.geteuid()}"


def open_run_dir(*, create: bool) -> int | None:
    """A descriptor of the run directory, checked private; None if it does not exist
    and ``create`` is false."""
    path = run_dir_path()
    if not os.path.isabs(path):
        raise FreezerError(f"{RUN_DIR_ENV}={path} is not an absolute path")
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise FreezerError(f"cannot create the run directory {path}") from None
        return None
    except OSError as exc:
        raise _run_dir_error(path, exc) from exc
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise FreezerError(
            f"the run directory {path} is not private (owner uid {st.st_uid}, mode "
            f"{st.st_mode & 0o7777:o}): refusing to keep locks and undo plans there; "
            f"remove it, or set {RUN_DIR_ENV}"
        )
    return fd


def _run_dir_error(path: str, exc: OSError) -> FreezerError | AccessDenied:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"cannot use the run directory {path}: permission denied")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return FreezerError(f"the run directory {path} is not a directory (a symlink?)")
    return FreezerError(f"cannot use the run directory {path}: {exc.strerror}")


# --- locks -----------------------------------------------------------------------------


class Locks:
    """Lock files held with flock until :meth:`release` (idempotent)."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # the flock goes with the last descriptor of its open file


def _holder(fd: int) -> str:
    try:
        words = os.pread(fd, 64, 0).split()
    except OSError:
        return "another asyckpt"
    if len(words) == 1 and words[0].isdigit():
        return f"asyckpt pid {int(words[0])}"
    return "another asyckpt"


def acquire_locks(
    names: list[str], timeout: float, check: Callable[[], None] = lambda: None
) -> Locks:
    """Take the lock file of each hierarchy in ``names``, always in the same order (so
    two captures never wait for each other in a circle), waiting up to ``timeout``
    seconds in all.  ``check`` is called while waiting; it raises to stop (a cancelled
    capture)."""
    dir_fd = open_run_dir(create=True)
    assert dir_fd is not None
    held: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        for name in sorted(set(names)):
            fd = os.open(
                f"{name}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            held.append(fd)
            _wait_for(fd, f"{run_dir_path()}/{name}.lock", deadline, timeout, check)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        Locks(held).release()
        raise
    finally:
        os.close(dir_fd)
    return Locks(held)


def _wait_for(
    fd: int, path: str, deadline: float, timeout: float, check: Callable[[], None]
) -> None:
    delay = 0.001
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(fd)
        if time.monotonic() >= deadline:
            raise FreezerError(
                f"{holder} is capturing (it holds {path}); gave up waiting after "
                f"{timeout:g} s: retry, or wait longer with --lock-timeout"
            )
        notice = LOCK_NOTICE.get()
        if notice is not None and not told:
            told = True
            notice(
                f"waiting for {holder} to finish its capture (it holds {path}; "
                f"--lock-timeout {timeout:g})"
            )
        check()
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.02)


# --- undo plans -----------------------------------------------------------------------

_sequence = itertools.count()


class PlanWriter:
    """The owner's end of one capture's plan file, made at the first step."""

    def __init__(self, guardian: Identity | None) -> None:
        self._guardian = guardian
        self._fd: int | None = None
        self.path: str | None = None

    def _create(self) -> None:
        me = identity(os.getpid())
        dir_fd = open_run_dir(create=True)
        assert dir_fd is not None
        try:
            while True:
                name = f"{me.pid}-{me.starttime}-{next(_sequence)}{PLAN_SUFFIX}"
                try:
                    fd = os.open(
                        name,
                        os.O_WRONLY
                        | os.O_CREAT
                        | os.O_EXCL
                        | os.O_APPEND
                        | os.O_NOFOLLOW
                        | os.O_CLOEXEC,
                        0o600,
                        dir_fd=dir_fd,
                    )
                    break
                except FileExistsError:
                    continue  # left by an earlier process with this pid and start time
        finally:
            os.close(dir_fd)
        self._fd = fd
        self.path = os.path.join(run_dir_path(), name)
        header = {"plan": PLAN_VERSION, "owner": list(me), "guardian": self._guardian}
        os.write(fd, (json.dumps(header) + "\n").encode())

    def note(self, line: str) -> None:
        """Append one step (a JSON line), on disk before the step is taken."""
        if self._fd is None:
            self._create()
        assert self._fd is not None
        # One write of a short line to an O_APPEND file: whole or not at all.
        os.write(self._fd, line.encode())

    def remove(self) -> None:
        """Everything is undone: the plan goes.  Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None

    def close(self) -> None:
        """Stop writing, and leave the plan for the guardian or ``recover``."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PlanFile(NamedTuple):
    path: str
    owner: Identity
    data: bytes


class Plan(NamedTuple):
    owner: Identity
    guardian: Identity | None
    steps: tuple[tuple[object, ...], ...]


def parse_plan_name(name: str) -> Identity | None:
    """The owner a plan file's name gives, or None if it is not a plan's name."""
    if not name.endswith(PLAN_SUFFIX):
        return None
    parts = name[: -len(PLAN_SUFFIX)].split("-")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return Identity(int(parts[0]), int(parts[1]))


def _identity(value: object) -> Identity:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(type(v) is int and 0 < v < 1 << 63 for v in value)
    ):
        return Identity(value[0], value[1])
    raise ValueError("a process is [pid, start time]")


_ARITY: dict[str, tuple[type, ...]] = {
    "thaw": (str, str),
    "origin": (int, str),
    "fallback": (str,),
    "members": (str,),
    "rmdir": (str,),
    # An image writer's temporary name (see _target): directory, its (dev, ino), name,
    # and the inode it holds; or, told before it is created, any regular file there.
    "unlink": (str, int, int, str, int, int),
    "unlink_new": (str, int, int, str),
}
"""Each step's arguments (``_guardian.undo`` reads them)."""


def parse_plan(data: bytes) -> Plan:
    """A plan file's text, checked line by line (every step's shape; the paths are the
    caller's to check).  A last line without its newline was being written when its
    owner died: it was not taken, and is left out.  Raises ValueError."""
    lines = data.split(b"\n")
    lines.pop()  # "" after the last newline, or the unfinished line
    if not lines:
        raise ValueError("no header")
    try:
        header = json.loads(lines[0])
    except ValueError:
        raise ValueError("the header is not JSON") from None
    if not isinstance(header, dict) or header.get("plan") != PLAN_VERSION:
        raise ValueError(f"not a version {PLAN_VERSION} plan")
    owner = _identity(header.get("owner"))
    guardian = None if header.get("guardian") is None else _identity(header["guardian"])
    steps = []
    for number, line in enumerate(lines[1:], 2):
        try:
            step = json.loads(line)
        except ValueError:
            raise ValueError(f"line {number} is not JSON") from None
        if not isinstance(step, list) or not step or step[0] not in _ARITY:
            raise ValueError(f"line {number} is not a step")
        kinds = _ARITY[step[0]]
        if len(step) != 1 + len(kinds) or not all(
            type(v) is k for v, k in zip(step[1:], kinds, strict=True)
        ):
            raise ValueError(f"line {number}: a bad {step[0]!r} step")
        steps.append(tuple(step))
    return Plan(owner, guardian, tuple(steps))


def list_plans(*, dead_only: bool = False) -> Iterator[PlanFile]:
    """Every plan in the run directory (none if there is no run directory); with
    ``dead_only``, only those whose owner is dead (the others are not read)."""
    dir_fd = open_run_dir(create=False)
    if dir_fd is None:
        return
    try:
        names = sorted(os.listdir(dir_fd))
        for name in names[:PLANS_MAX]:
            owner = parse_plan_name(name)
            if owner is None or (dead_only and alive(owner)):
                continue
            try:
                # Not blocking on a FIFO someone put there; only a regular file is read.
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
            except FileNotFoundError:
                continue  # done and removed meanwhile
            except OSError:
                data = b""
            else:
                try:
                    data = os.read(fd, PLAN_MAX + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
                finally:
                    os.close(fd)
            yield PlanFile(os.path.join(run_dir_path(), name), owner, data)
    finally:
        os.close(dir_fd)
