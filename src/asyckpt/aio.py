"""asyckpt for asyncio programs: the same API as the trio one, on the running loop.

    summary = await asyckpt.aio.checkpoint_tree(pid, "tree.ackpt")
    async with asyckpt.aio.open_capture(pid) as stream:
        async for record in stream:
            ...
    image = await asyckpt.aio.read_image("tree.ackpt")
    root = await asyckpt.aio.restore_tree(image)
    async for event in asyckpt.aio.watch(pid, every=10):
        ...

Each call runs the trio pipeline in a thread of its own (``trio.run`` there), and the
asyncio side waits on a future the thread completes.  Not trio's guest mode: in guest
mode trio's tasks run on the asyncio loop's thread, and the capture's resolver, which
works through the fd tables between checkpoints, would hold the loop for as long as each
stretch takes; in a thread of its own it only competes for the GIL, which the loop gets
back within the interpreter's switch interval (docs/library.md has the measurements).
A thread per call also keeps concurrent captures from one loop independent (one trio
run per thread is all trio allows).

Cancellation is exact: when the awaiting asyncio task is cancelled (``task.cancel()``,
``asyncio.timeout``), the trio run is cancelled, and the cancellation completes only
once the run has ended, that is once the tree is thawed and back in its cgroups and no
image is left half-written.  A second cancellation while that happens does not cut the
wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio

from . import _api, _watch
from ._capture import CaptureOptions, CaptureSummary
from ._image import Image
from ._image import read_image as _read_image
from ._materialize import BodyRecord
from ._plugins.dispatch import Dispatch

__all__ = [
    "CaptureStream",
    "Watcher",
    "checkpoint_tree",
    "open_capture",
    "read_image",
    "restore_tree",
    "watch",
]

T = TypeVar("T")

# Records cross from the trio thread to the loop in lists of up to this many (one hop
# per list, not per record), and at most _BATCHES lists wait for the consumer, so a slow
# consumer slows the capture's emission (after the thaw) instead of growing memory.
_BATCH = 512
_BATCHES = 4


class _RunCancelled(Exception):
    """The trio run was cancelled from the loop (what ``done`` ends with then)."""


class _TrioRun(Generic[T]):
    """``fn()`` run by ``trio.run`` in a thread of its own, with a way to cancel it from
    the loop and a future that the thread completes when the run has ended."""

    def __init__(self, fn: Callable[[], Awaitable[T]], name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[T] = self._loop.create_future()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._cancel_asked = False
        self._lock = threading.Lock()
        self._fn = fn
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    async def _main(self) -> T:
        with trio.CancelScope() as scope:
            with self._lock:
                self._token = trio.lowlevel.current_trio_token()
                self._scope = scope
                if self._cancel_asked:
                    scope.cancel()
            return await self._fn()
        raise _RunCancelled

    def _run(self) -> None:
        try:
            result: Any = trio.run(self._main)
        except BaseException as exc:  # handed to the loop, which raises it there
            self._settle(None, exc)
        else:
            self._settle(result, None)

    def _settle(self, result: Any, exc: BaseException | None) -> None:
        def settle() -> None:
            if self.done.done():
                return
            if exc is None:
                self.done.set_result(result)
            else:
                self.done.set_exception(exc)

        # RuntimeError: the loop is closed, nobody is left waiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def cancel(self) -> None:
        """Ask the run to stop (thread-safe, idempotent); ``done`` completes once it has."""
        with self._lock:
            self._cancel_asked = True
            token, scope = self._token, self._scope
        if token is not None and scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

    def run_soon(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` in the trio thread (for crediting the stream), if it still runs."""
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fn)

    async def wait_ended(self) -> None:
        """Wait until the run has ended, through any number of cancellations."""
        while not self.done.done():
            # Cancelled again, or the run's own error: only its end matters here.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self.done)
        self.done.exception()  # retrieved: no "exception was never retrieved" warning
        self._thread.join()

    async def result(self) -> T:
        """The run's result; cancelling the caller cancels the run and waits for its end."""
        try:
            return await asyncio.shield(self.done)
        except asyncio.CancelledError:
            # (If the run ended on its own as the cancellation came, its result is
            # dropped, as any cancelled task's is.)
            self.cancel()
            await self.wait_ended()
            raise
        finally:
            if self.done.done():
                self._thread.join()


async def checkpoint_tree(
    pid: int,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    options: CaptureOptions | None = None,
    dispatch: Dispatch | None = None,
) -> CaptureSummary:
    """:func:`asyckpt.checkpoint_tree` for asyncio: the same arguments, result and
    errors.  Cancelling the calling task cancels the capture; the cancellation
    completes once the tree is thawed and nothing is left at ``dest``."""
    run = _TrioRun(
        lambda: _api.checkpoint_tree(pid, dest, force=force, options=options, dispatch=dispatch),
        name=f"asyckpt-capture-{pid}",
    )
    return await run.result()


class CaptureStream:
    """The records of a running capture, as an asyncio async iterator (see
    :func:`open_capture`).  ``summary`` is set once iteration has ended."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[list[BodyRecord] | None] = asyncio.Queue()
        self._pending: list[BodyRecord] = []
        self._run: _TrioRun[CaptureSummary] | None = None
        self._credits: trio.Semaphore | None = None
        self.exhausted = False
        self.summary: CaptureSummary | None = None

    def __aiter__(self) -> CaptureStream:
        return self

    async def __anext__(self) -> BodyRecord:
        # A plain iterator, not an async generator, as the trio CaptureStream.
        if not self._pending:
            assert self._run is not None
            if self.exhausted:
                raise StopAsyncIteration
            batch = await self._queue.get()
            if batch is None:
                self.summary = await self._run.result()
                self.exhausted = True
                raise StopAsyncIteration
            credits = self._credits
            if credits is not None:
                self._run.run_soon(credits.release)
            self._pending = batch[::-1]
        return self._pending.pop()

    async def _feed(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        options: CaptureOptions | None,
        dispatch: Dispatch | None,
    ) -> CaptureSummary:
        """In the trio thread: the trio capture's records, forwarded to the loop in
        batches, at most ``_BATCHES`` of them waiting."""
        credits = self._credits = trio.Semaphore(_BATCHES)
        put = self._queue.put_nowait

        async def send(batch: list[BodyRecord] | None) -> None:
            await credits.acquire()
            loop.call_soon_threadsafe(put, batch)

        async with _api.open_capture(pid, options=options, dispatch=dispatch) as stream:
            batch: list[BodyRecord] = []
            async for record in stream:
                batch.append(record)
                if len(batch) >= _BATCH:
                    await send(batch)
                    batch = []
            if batch:
                await send(batch)
        loop.call_soon_threadsafe(put, None)
        assert stream.summary is not None
        return stream.summary


@asynccontextmanager
async def open_capture(
    pid: int, *, options: CaptureOptions | None = None, dispatch: Dispatch | None = None
) -> AsyncIterator[CaptureStream]:
    """:func:`asyckpt.open_capture` for asyncio::

        async with asyckpt.aio.open_capture(pid) as stream:
            async for record in stream:
                ...
        print(stream.summary)

    Records come as the trio API gives them (image order, only once the tree is
    thawed).  Leaving the block early, by an exception or a cancellation, cancels the
    capture and waits until the tree is thawed before the block exits; an error of the
    capture is raised from the loop (or from the block's exit, if the loop was left
    first).
    """
    stream = CaptureStream()
    loop = asyncio.get_running_loop()
    run = stream._run = _TrioRun(
        lambda: stream._feed(loop, pid, options, dispatch), name=f"asyckpt-capture-{pid}"
    )

    # An error ends the capture without a None in the queue: wake the consumer with one.
    def wake(_: asyncio.Future[CaptureSummary]) -> None:
        if run.done.exception() is not None:
            stream._queue.put_nowait(None)

    run.done.add_done_callback(wake)
    try:
        yield stream
    except BaseException:
        run.cancel()
        await run.wait_ended()
        raise
    if not stream.exhausted:
        # The block ended without reading everything: the rest is not wanted.
        run.cancel()
        await run.wait_ended()
        exc = run.done.exception()
        if exc is not None and not isinstance(exc, _RunCancelled):
            raise exc


class Watcher:
    """:func:`asyckpt.watch` for asyncio: an async iterator of :class:`WatchEvent`."""

    def __init__(self, inner: _watch.Watcher) -> None:
        self._inner = inner

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> _watch.WatchEvent:
        # One trio run per step: between steps the watcher's state is plain data (the
        # last look and image, the images kept), so a cancelled step leaves it whole.
        run = _TrioRun(self._inner.__anext__, name=f"asyckpt-watch-{self._inner.pid}")
        return await run.result()


def watch(
    pid: int,
    *,
    every: float = 10.0,
    on_growth: int = 1,
    keep: int = 5,
    directory: str | os.PathLike[str] = ".",
    options: CaptureOptions | None = None,
    dispatch: Dispatch | None = None,
) -> Watcher:
    """:func:`asyckpt.watch` for asyncio, with the same arguments and events::

    async for event in asyckpt.aio.watch(pid, every=10, directory="/var/tmp/w"):
        ...
    """
    return Watcher(
        _watch.watch(
            pid,
            every=every,
            on_growth=on_growth,
            keep=keep,
            directory=directory,
            options=options,
            dispatch=dispatch,
        )
    )


async def read_image(path: str | os.PathLike[str]) -> Image:
    """:func:`asyckpt.read_image` in a worker thread, so a large image's checksum and
    decoding do not hold the loop.  (``asyckpt.read_image`` itself is plain blocking
    code: from trio, ``await trio.to_thread.run_sync(asyckpt.read_image, path)``.)"""
    return await asyncio.to_thread(_read_image, path)


async def restore_tree(
    image: Image, *, root: str = "/", relaxed: bool = False, skip: Iterable[str] = ()
) -> int:
    """:func:`asyckpt.restore_tree` for asyncio: the same arguments, result (the root
    holder's pid, the caller's child) and errors.  Cancelling the calling task ends the
    tree made so far (killed, the root reaped) before the cancellation completes, also
    when the restore had just finished as it came: no holder is left behind."""
    from ._restore_hold import end_tree
    from ._restore_hold import restore_tree as _restore_tree

    run = _TrioRun(
        lambda: _restore_tree(image, root=root, relaxed=relaxed, skip=tuple(skip)),
        name="asyckpt-restore",
    )
    try:
        return await run.result()
    except asyncio.CancelledError:
        # The run may have ended with its pid as the cancellation came: result()
        # drops it, so the tree is ended here.
        done = run.done
        if done.done() and not done.cancelled() and done.exception() is None:
            end_tree(done.result())
        raise
