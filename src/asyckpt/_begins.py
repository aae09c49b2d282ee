"""Running handlers' ``begin`` hooks: each in a thread of its own, waited for no longer
than the session's timeout, told when nobody waits any more, and never piling up.

A Python thread cannot be killed, so a ``begin`` that hangs is *abandoned*: the capture
goes on without its state.  Two things keep that from hurting the embedding process:

- the hook contract is cancellable: ``session.cancelled`` is set once asyckpt stops
  waiting for begins, and ``session.time_left()`` tells how long it will wait, so a
  well-behaved begin bounds its blocking calls and returns;
- a begin that ignores it is bounded: while an abandoned begin of a handler is still
  running, no capture in this process starts another one of that handler (its fds are
  recorded generically, with that error), so hung threads never accumulate; and begins
  take their threads from a limiter of the capture's own, so an abandoned one never
  holds a token of the embedder's default thread limiter.
"""

from __future__ import annotations

import threading
from typing import Any

import trio

from ._plugins.loaded import LoadedHandler
from ._plugins.session import CaptureSession, _Pending

__all__ = ["abandoned_begins", "run_begin"]

_lock = threading.Lock()
_abandoned: dict[str, int] = {}
"""Handler name -> how many of its begins were abandoned and are still running."""


def abandoned_begins() -> dict[str, int]:
    """The handlers whose abandoned begins are still running, with how many."""
    with _lock:
        return dict(_abandoned)


class _Run:
    """One begin's thread, as the capture and the thread both see it (under ``_lock``)."""

    __slots__ = ("abandoned", "done", "name", "started", "unwanted")

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = False
        self.done = False
        self.unwanted = False
        self.abandoned = False

    def call(self, handler: LoadedHandler, session: CaptureSession) -> Any:
        assert handler.begin is not None
        with _lock:
            if self.unwanted:
                return None  # given up on before its thread ran: not run at all
            self.started = True
        try:
            return handler.begin(session)
        finally:
            with _lock:
                self.done = True
                if self.abandoned:
                    _abandoned[self.name] -= 1
                    if not _abandoned[self.name]:
                        del _abandoned[self.name]

    def abandon(self) -> None:
        """Nobody waits for it any more: counted as abandoned while it still runs."""
        with _lock:
            if not self.started:
                self.unwanted = True
            elif not self.done and not self.abandoned:
                self.abandoned = True
                _abandoned[self.name] = _abandoned.get(self.name, 0) + 1


async def run_begin(
    handler: LoadedHandler,
    session: CaptureSession,
    pending: _Pending,
    unneeded: trio.CancelScope,
    limiter: trio.CapacityLimiter,
) -> None:
    """Run one handler's ``begin`` while the tree is scanned; its outcome (or error)
    waits in ``pending`` for the handler's captures.  Past the session's timeout, or
    once ``unneeded`` is cancelled (its handler captured nothing), its thread is
    abandoned, so that a begin that hangs cannot keep the tree frozen."""
    timeout = session._timeout
    with _lock:
        running = _abandoned.get(handler.name, 0)
    if running:
        pending.set(
            error=RuntimeError(
                "its begin of an earlier capture hung and is still running; not started again"
            )
        )
        return
    run = _Run(handler.name)
    try:
        with unneeded, trio.move_on_after(timeout):
            pending.set(
                await trio.to_thread.run_sync(
                    run.call, handler, session, abandon_on_cancel=True, limiter=limiter
                )
            )
    except Exception as exc:
        pending.set(error=exc)
    finally:
        run.abandon()  # unless it has returned
        # Timed out, or abandoned: nothing may wait for it any longer (the first outcome
        # set stands).
        pending.set(error=TimeoutError(f"it did not finish in {timeout:g} s"))
