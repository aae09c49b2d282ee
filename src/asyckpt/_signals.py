"""The command's signals: SIGINT, SIGTERM and SIGHUP end a capture (exit 130), unless
they come after the image became visible (exit 0, with a note that they came late).

They are recorded by a plain handler, never raised.  With no KeyboardInterrupt anywhere,
none can surface from the middle of trio's machinery (trio installs its own SIGINT
handling only where it finds Python's default one) or of the interpreter's last steps
as a stray "Exception ignored" traceback, and the one decision, interrupted or late, is
taken by :class:`~asyckpt._commit.Commit`, against the step that makes the image visible.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, TypeVar

from ._commit import Commit
from ._errors import collapse_errors

if TYPE_CHECKING:
    import trio

__all__ = ["SIGNALS", "Signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

T = TypeVar("T")


class Signals:
    """SIGINT, SIGTERM and SIGHUP for the length of a ``with`` block: recorded, and
    turned into an interruption of ``commit``.  ``restore``: put the previous handlers
    back at the end (not when the process exits right after, so that a signal in its
    last microseconds is still only recorded)."""

    def __init__(self, commit: Commit, *, restore: bool = True) -> None:
        self.commit = commit
        self.received: list[int] = []
        self._restore = restore
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Signals:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._restore:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Outside trio (before it starts, after it ends): the decision is taken then.
        self.received.append(signum)

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``fn`` in trio, cancelled by the first signal that comes before the image
        is committed (one that came before trio started too); None when it was."""
        import trio

        result: T | None = None
        async with collapse_errors(), trio.open_nursery() as nursery:

            async def watch(task_status: trio.TaskStatus[None]) -> None:
                with trio.open_signal_receiver(*SIGNALS) as signals:
                    if self.received:
                        self._interrupt(nursery.cancel_scope)
                    task_status.started()
                    async for signum in signals:
                        self.received.append(signum)
                        self._interrupt(nursery.cancel_scope)

            await nursery.start(watch)
            result = await fn()
            nursery.cancel_scope.cancel()
        return result

    def _interrupt(self, scope: trio.CancelScope) -> None:
        if self.commit.interrupt():
            scope.cancel()

    def late(self) -> str | None:
        """The name of the first signal, when one came but the image was committed."""
        if self.received and self.commit.state == "committed":
            return signal.Signals(self.received[0]).name
        return None
