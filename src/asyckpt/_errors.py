"""The error tree.  Everything asyckpt raises on purpose is an :class:`AsyckptError`.

Each class carries the context needed to act on it (pid, fd, path) and the CLI exit code
that reports it.  Raw :class:`OSError` from /proc, cgroupfs and syscalls is translated in one
place, :func:`translate_oserror`, so that the rest of the code never guesses at errno.

A message quotes names as they are (a path, a comm, a value from an image: chosen by
whoever owns the processes or made the image), never escaped: whoever prints one escapes
the whole message once, with ``_escape.escape`` (the CLI's ``asyckpt: error:`` and
warning lines), so a name is neither printed raw nor escaped twice when one message
quotes another.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import NoReturn

__all__ = [
    "AccessDenied",
    "AmbiguousTarget",
    "AsyckptError",
    "FreezerError",
    "HandlerFailed",
    "ImageCorrupt",
    "ImageError",
    "ImageVersionError",
    "InvalidTarget",
    "KernelUnsupported",
    "NoSuchProcess",
    "NotAnImage",
    "OutputError",
    "PluginError",
    "RendererError",
    "RestoreError",
    "StrictViolation",
    "TargetError",
    "UsageError",
]


class AsyckptError(Exception):
    """Root of every error asyckpt raises on purpose.

    ``exit_code`` is what the ``asyckpt`` command exits with when this error ends it.
    """

    exit_code = 1

    def __init__(self, msg: str, *, pid: int | None = None, fd: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.pid = pid
        self.fd = fd

    def __str__(self) -> str:
        ctx = []
        if self.pid is not None:
            ctx.append(f"pid={self.pid}")
        if self.fd is not None:
            ctx.append(f"fd={self.fd}")
        return f"{self.msg} ({', '.join(ctx)})" if ctx else self.msg

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.msg, self.pid, self.fd, self.__dict__))


def _rebuild(
    cls: type[AsyckptError], msg: str, pid: int | None, fd: int | None, state: dict[str, object]
) -> AsyckptError:
    err = cls.__new__(cls)
    AsyckptError.__init__(err, msg, pid=pid, fd=fd)
    err.__dict__.update(state)
    return err


class UsageError(AsyckptError):
    """A command's arguments do not fit the image or each other (exit 2, as argparse's
    own usage errors)."""

    exit_code = 2


class TargetError(AsyckptError):
    """The pid given cannot be captured (exit 3)."""

    exit_code = 3


class NoSuchProcess(TargetError):
    """The process does not exist, or exited while it was being captured."""


class InvalidTarget(TargetError):
    """The process exists but must not be frozen: a kernel thread, init, or asyckpt itself."""


class AmbiguousTarget(TargetError):
    """``asyckpt tree --name/--user`` matched several separate trees: which to capture is
    the user's choice (the message lists them)."""


class AccessDenied(AsyckptError):
    """Not enough privilege to inspect or freeze the process (exit 4)."""

    exit_code = 4


class OutputError(AsyckptError):
    """The image cannot be written where it was asked to go (exit 5)."""

    exit_code = 5


class ImageError(AsyckptError):
    """A file given to ``show`` is not a whole, valid asyckpt image (exit 6)."""

    exit_code = 6


class NotAnImage(ImageError):
    """The file does not start with the asyckpt magic."""


class ImageCorrupt(ImageError):
    """The image is truncated, or its checksum or framing is wrong."""


class ImageVersionError(ImageError):
    """The image was written in a format version this asyckpt cannot read."""


class FreezerError(AsyckptError):
    """The process tree could not be frozen or thawed (exit 7)."""

    exit_code = 7


class StrictViolation(AsyckptError):
    """``--strict`` found an fd that no handler claimed, or whose handler failed (exit 8)."""

    exit_code = 8


class PluginError(AsyckptError):
    """An fd-type plugin could not be loaded or conflicts with another (exit 9)."""

    exit_code = 9


class HandlerFailed(AsyckptError):
    """A handler raised while capturing one fd; the fd is kept as a generic record."""

    exit_code = 8

    def __init__(self, handler: str, exc: BaseException, *, pid: int, fd: int) -> None:
        super().__init__(f"handler {handler!r} failed: {type(exc).__name__}: {exc}", pid=pid, fd=fd)
        self.handler = handler


class RendererError(AsyckptError):
    """Graphviz's ``dot``, which ``asyckpt graph`` needs for SVG and PNG, is missing or
    failed (exit 11)."""

    exit_code = 11


class RestoreError(AsyckptError):
    """The image cannot be restored as asked: a kind not restored, a value out of
    bounds, a file that is not the image's, a path outside the root (exit 13).
    Raised before the fd table is changed."""

    exit_code = 13


class KernelUnsupported(AsyckptError):
    """The running kernel lacks a feature asyckpt needs (kcmp, pidfd) (exit 10)."""

    exit_code = 10


def _proc_alive(pid: int) -> bool:
    # /proc/PID may outlive the files inside it for a moment while the task exits,
    # so only the stat file is a reliable witness (psutil does the same).
    try:
        os.stat(f"/proc/{pid}/stat")
    except OSError:
        return False
    return True


def translate_oserror(
    exc: OSError, *, pid: int | None = None, fd: int | None = None, what: str = ""
) -> AsyckptError:
    """Map one OSError from /proc, cgroupfs or a syscall to the matching AsyckptError."""
    where = f"{what}: " if what else ""
    detail = exc.strerror or str(exc)
    if exc.errno in (errno.EPERM, errno.EACCES):
        return AccessDenied(f"{where}permission denied", pid=pid, fd=fd)
    if exc.errno == errno.ESRCH and pid is not None:
        # Said of a zombie too, whose /proc entry lives on until it is reaped.
        return NoSuchProcess("process exited", pid=pid, fd=fd)
    if exc.errno == errno.ENOENT and pid is not None and not _proc_alive(pid):
        return NoSuchProcess("process exited", pid=pid, fd=fd)
    if exc.errno == errno.ENOSYS:
        return KernelUnsupported(f"{where}not supported by this kernel", pid=pid, fd=fd)
    return AsyckptError(f"{where}{detail}", pid=pid, fd=fd)


@contextmanager
def oserror_context(
    *, pid: int | None = None, fd: int | None = None, what: str = ""
) -> Iterator[None]:
    """Translate OSError raised inside the block with :func:`translate_oserror`."""
    try:
        yield
    except OSError as exc:
        raise translate_oserror(exc, pid=pid, fd=fd, what=what) from exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def raise_collapsed(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise a nursery's exception group as the documented exceptions.

    Concurrent scanners can fail together (a tree killed mid-capture makes every one of
    them see NoSuchProcess).  When every failure is an AsyckptError the first is raised,
    ``from`` the group so none is lost; a KeyboardInterrupt wins over everything; a group
    holding anything else (a bug, or cancellation) propagates untouched.
    """
    leaves = list(_leaves(group))
    for exc in leaves:
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from group
    if leaves and all(isinstance(exc, AsyckptError) for exc in leaves):
        raise leaves[0] from group
    raise group


@asynccontextmanager
async def collapse_errors() -> AsyncIterator[None]:
    """:func:`raise_collapsed` for a nursery's exception group raised in the block."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise_collapsed(group)
