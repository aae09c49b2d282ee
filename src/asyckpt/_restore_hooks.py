"""Restore's side of the handlers' ``restore(record, ctx)`` hook.

A file restore does not rebuild itself (a kind it refuses) is planned as a
:class:`~asyckpt._restore_model.Hook` when the handler that captured it is installed
with a ``restore`` hook (:class:`HookHandlers` answers that, loading the handlers the
first time a plan asks).  While the descriptions are made, :meth:`HookHandlers.call`
hands the hook a :class:`LiveRestoreContext`, whose ``open`` is restore's own open under
``--root``, and checks what the hook returns.  Whatever goes wrong is a RestoreError
naming pid, fd and kind, raised before anything is installed.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, final

from ._errors import RestoreError
from ._plugins.contract import RestoreRefused
from ._records import File, Task
from ._restore_model import Description, Hook, OpenPath
from ._restore_rules import FMT, MAX_PATH, NEVER

if TYPE_CHECKING:
    from ._plugins.loaded import LoadedHandler

__all__ = ["HookHandlers", "LiveRestoreContext", "hook_problem"]

# Restore's own rule: never create or truncate (O_NOCTTY, removed with them, is always
# added back by the open); close-on-exec is restore's to set, O_ASYNC goes with an owner.
_STRIP = NEVER | os.O_ASYNC | os.O_CLOEXEC

Opener = Callable[[OpenPath], int]
"""Restore's open of a path under the root, checked against the image (raising
RestoreRefused): ``_restore``'s."""


@final
class LiveRestoreContext:
    """The :class:`~asyckpt.RestoreContext` a hook is given, for one file."""

    __slots__ = ("_opener", "fd", "file", "kind", "opened", "pid", "relaxed", "task")

    def __init__(self, hook: Hook, d: Description, opener: Opener, relaxed: bool) -> None:
        self.file: File = hook.file
        self.task: Task = hook.task
        self.pid = d.pid
        self.fd = d.fd
        self.kind = d.kind
        self.relaxed = relaxed
        self._opener = opener
        self.opened: list[int] = []

    def open(self, path: str, flags: int) -> int:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise RestoreRefused(f"open {path!r}: not an absolute path")
        if len(os.fsencode(path)) > MAX_PATH:
            raise RestoreRefused("open: a path longer than 4095 bytes")
        if type(flags) is not int or flags < 0:
            raise RestoreRefused(f"open {path}: flags {flags!r}")
        f = self.file
        fmt = FMT.get(f.type)
        if fmt is None:
            raise RestoreRefused(f"open {path}: a {f.type} is not a file with a path")
        make = OpenPath(
            path=path,
            flags=flags & ~_STRIP,
            fmt=fmt,
            dev=f.dev,
            ino=f.ino,
            size=f.size,
            rdev=f.rdev,
        )
        fd = self._opener(make)
        self.opened.append(fd)
        return fd


def hook_problem(loaded: LoadedHandler) -> str | None:
    """Why ``loaded``'s restore hook cannot be called (None: it can): the signature of
    asyckpt 0.1, ``restore(record, file)``, is refused by name rather than handed a
    context it would misread as a File."""
    hook = loaded.restore
    if hook is None:
        return f"handler {loaded.name!r} has no restore hook"
    try:
        names = list(inspect.signature(hook).parameters)
    except (TypeError, ValueError):
        return None
    if names[1:2] == ["file"]:
        return (
            f"handler {loaded.distribution}[{loaded.name}] has the old restore(record, file) "
            "hook; restore calls restore(record, ctx) (docs/plugins.md)"
        )
    return None


@final
class HookHandlers:
    """The installed handlers with a ``restore`` hook, by name: a container for the
    planner (``name in hooks``) that loads the handlers on its first question, so a
    restore that needs no hook never imports a plugin."""

    def __init__(self, handlers: dict[str, LoadedHandler] | None = None) -> None:
        self._handlers = handlers

    def _loaded(self) -> dict[str, LoadedHandler]:
        if self._handlers is None:
            from ._plugins.loading import load_handlers

            dispatch = load_handlers(warn=False)
            self._handlers = {h.name: h for h in dispatch.handlers if h.restore is not None}
        return self._handlers

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def call(self, hook: Hook, d: Description, opener: Opener, relaxed: bool) -> int:
        """The fd the handler's hook made for ``d``: new (not open before the call),
        owned by the caller.  Raises RestoreError naming pid, fd and kind otherwise, the
        fds its context opened closed."""

        def refused(why: str) -> RestoreError:
            return RestoreError(
                f"cannot restore the {d.kind} ({hook.file.path}): {why} "
                f"(handler {hook.handler}; --skip {d.kind} leaves it out)",
                pid=d.pid,
                fd=d.fd,
            )

        loaded = self._loaded().get(hook.handler)
        if loaded is None or loaded.restore is None:
            raise refused("its handler's restore hook is not installed")
        problem = hook_problem(loaded)
        if problem is not None:
            raise refused(problem)
        try:
            record = loaded.decode(hook.file.data)
        except Exception as exc:  # a record of another version of the handler
            raise refused(f"its record does not decode with the installed handler: {exc}") from None
        ctx = LiveRestoreContext(hook, d, opener, relaxed)
        before = set(os.listdir("/proc/self/fd"))
        fd: object = None
        try:
            try:
                fd = loaded.restore(record, ctx)
            except RestoreRefused as exc:
                raise refused(str(exc)) from None
            except Exception as exc:
                raise refused(f"its restore hook failed: {type(exc).__name__}: {exc}") from None
            if type(fd) is not int or fd < 0:
                raise refused(f"its restore hook returned {fd!r}, not an fd")
            if str(fd) in before:
                raise refused(f"its restore hook returned fd {fd}, which it did not open")
            try:
                os.fstat(fd)
            except OSError:
                raise refused(f"its restore hook returned fd {fd}, which is not open") from None
        except BaseException:
            mine = [fd] if type(fd) is int and str(fd) not in before else []
            _close({*ctx.opened, *mine})
            raise
        _close({n for n in ctx.opened if n != fd})
        return fd


def _close(fds: set[int]) -> None:
    for n in fds:
        with contextlib.suppress(OSError):
            os.close(n)
