"""The library API: the same pipeline the CLI runs, for trio programs."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import chain

import trio

from ._capture import BATCH_BUFFER, CaptureOptions, CaptureSummary, capture
from ._commit import Commit
from ._errors import raise_collapsed
from ._image import ImageWriter
from ._materialize import BodyRecord
from ._names import split_name, text
from ._plugins.dispatch import Dispatch
from ._records import FORMAT_VERSION, Header, Trailer
from ._version import __version__

__all__ = ["CaptureStream", "checkpoint_tree", "open_capture"]


def make_header(summary: CaptureSummary) -> Header:
    uname = platform.uname()
    hostname, hostname_bytes = split_name(socket.gethostname())
    cgroup, cgroup_bytes = (None, None)
    if summary.freezer_cgroup is not None:
        # A delegated cgroup is named by whoever it was delegated to.
        cgroup, cgroup_bytes = split_name(summary.freezer_cgroup)
    return Header(
        format_version=FORMAT_VERSION,
        asyckpt_version=__version__,
        kernel=text(uname.release),
        machine=text(uname.machine),
        hostname=hostname,
        hostname_bytes=hostname_bytes,
        time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        root_pid=summary.root_pid,
        freezer=summary.freezer,
        freezer_cgroup=cgroup,
        freezer_cgroup_bytes=cgroup_bytes,
        consistent=summary.consistent,
        plugins=summary.plugins,
        freeze_mode=text(summary.freeze_mode),
        endpoint_search=summary.endpoints,
        freezer_scope=summary.freezer_scope,
        pre_frozen=summary.pre_frozen,
    )


def make_trailer(summary: CaptureSummary) -> Trailer:
    return Trailer(
        tasks=summary.tasks,
        fd_tables=summary.fd_tables,
        fds=summary.fds,
        files=summary.files,
        records=0,  # filled in by the writer
        generic=summary.generic,
        handler_errors=sum(1 for g in summary.generic_fds if g.error is not None),
        freezing_ms=round(summary.freezing_ms, 3),
        frozen_ms=round(summary.frozen_ms, 3),
        capture_ms=round(summary.capture_ms, 3),
        contents=summary.contents,
        content_bytes=summary.content_bytes,
    )


async def checkpoint_tree(
    pid: int,
    dest: str | os.PathLike[str] | int,
    *,
    force: bool = False,
    options: CaptureOptions | None = None,
    dispatch: Dispatch | None = None,
) -> CaptureSummary:
    """Capture the process tree rooted at ``pid`` into the image file ``dest``.

    The tree is frozen (``options.freeze``) only while its fds are read.  The image is
    written into an unnamed file (mode 0600) and linked to ``dest`` once complete: on
    any failure, or a cancellation before that link, nothing is left at ``dest`` (nor
    anywhere else) and the tree is thawed before the exception propagates.  A
    cancellation that comes after the link does not undo it: the call returns.  This is
    :func:`open_capture` with the image writer as the stream's consumer.

    ``dest`` may instead be an open file descriptor, a pipe, a socket or a regular file,
    into which the image is streamed once complete (``summary.path`` is then its name,
    such as ``"standard output"``).  With ``force``, an existing regular file or symlink
    at ``dest`` is replaced; a device node, FIFO, socket or directory never is.

    Raises:
        AsyckptError: a subclass saying what went wrong (see docs/cli.md's exit codes).
    """
    return await write_tree(pid, dest, Commit(), force=force, options=options, dispatch=dispatch)


class _TrioGate:
    """The writer's gate in a trio program: a cancellation of the calling task, or an
    interruption of ``commit``, stops the image before it becomes visible."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit

    def check(self) -> None:
        trio.from_thread.check_cancelled()
        self._commit.check()

    def commit(self) -> None:
        trio.from_thread.check_cancelled()
        self._commit.commit()


async def write_tree(
    pid: int,
    dest: str | os.PathLike[str] | int,
    commit: Commit,
    *,
    force: bool = False,
    options: CaptureOptions | None = None,
    dispatch: Dispatch | None = None,
) -> CaptureSummary:
    """:func:`checkpoint_tree`, the image made visible only through ``commit`` (which
    the command races against its signals)."""
    options = options or CaptureOptions()
    writer = await trio.to_thread.run_sync(lambda: ImageWriter(dest, force=force))
    try:
        # Unlinked files' content waits next to the image, like its body (see
        # PathTarget.spool_dir for where it cannot).
        async with _open_stream(pid, options, dispatch, writer.spool_dir) as stream:
            while batches := await stream._take_batches():
                await trio.to_thread.run_sync(writer.write_body, chain.from_iterable(batches))
        summary = stream.summary
        assert summary is not None  # the stream ended: the capture returned
        summary.bytes = await trio.to_thread.run_sync(
            writer.finish, make_header(summary), make_trailer(summary), _TrioGate(commit)
        )
        summary.path = writer.dest
        return summary
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.abort)


class CaptureStream:
    """The records of a running capture, as an async iterator (see :func:`open_capture`).

    ``summary`` is set once iteration has ended.
    """

    def __init__(self, recv: trio.MemoryReceiveChannel[list[BodyRecord]]) -> None:
        self._recv = recv
        self._pending: list[BodyRecord] = []
        self.summary: CaptureSummary | None = None

    def __aiter__(self) -> CaptureStream:
        return self

    async def __anext__(self) -> BodyRecord:
        # A plain iterator, not an async generator: leaving the loop early must not
        # leave a half-run generator for the garbage collector to finalize.
        while not self._pending:
            try:
                self._pending = (await self._recv.receive())[::-1]
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
        return self._pending.pop()

    async def _take_batches(self) -> list[list[BodyRecord]]:
        """The batches that have arrived (waiting for one), in order; [] at the end.
        For a consumer that handles many at a time (the image writer: one thread hop)."""
        try:
            batches = [await self._recv.receive()]
        except trio.EndOfChannel:
            return []
        while True:
            try:
                batches.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return batches


@asynccontextmanager
async def open_capture(
    pid: int, *, options: CaptureOptions | None = None, dispatch: Dispatch | None = None
) -> AsyncIterator[CaptureStream]:
    """Capture the tree rooted at ``pid`` and yield its records without writing a file::

        async with asyckpt.open_capture(pid) as stream:
            async for record in stream:
                ...
        print(stream.summary)

    Records come in image order (each object before its first reference), and only
    once the tree is thawed again, so a slow consumer never lengthens the frozen window.
    An unlinked file's saved data comes as :class:`Content` records right after its
    :class:`File` (at most 1 MiB each), spooled meanwhile in the temporary directory.
    Leaving the block early cancels the capture; the tree is thawed before the block
    exits either way.  An exception raised in the block (a ``break`` is none) propagates
    unchanged, the very object raised; if the capture failed as well, the two come
    together in an exception group.
    """
    async with _open_stream(pid, options or CaptureOptions(), dispatch, None) as stream:
        yield stream


@asynccontextmanager
async def _open_stream(
    pid: int, options: CaptureOptions, dispatch: Dispatch | None, spool_dir: str | None
) -> AsyncIterator[CaptureStream]:
    """The capture as a producer task feeding one bounded channel, whose one consumer is
    the block (the caller's ``async for``, or the image writer)."""
    send, recv = trio.open_memory_channel[list[BodyRecord]](BATCH_BUFFER)
    stream = CaptureStream(recv)

    async def produce() -> None:
        # Closed (without a checkpoint, which in a cancelled scope would replace an
        # exception with Cancelled) only once the summary is set: a consumer that saw
        # the end of the stream finds it.
        # A BrokenResourceError means the consumer left early: it is being cancelled.
        with send, contextlib.suppress(trio.BrokenResourceError):
            stream.summary = await capture(pid, send, options, dispatch, spool_dir=spool_dir)

    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            try:
                yield stream
            except BaseException as exc:
                raised = exc
                raise
            finally:
                # Cancelled before the channel is closed, so that a capture blocked on
                # a full channel ends as cancelled (its own finally thaws the tree), not
                # as broken.  Done once the stream ended too: the capture has returned.
                nursery.cancel_scope.cancel()
                recv.close()
    except BaseExceptionGroup as group:
        errors = [exc for exc in group.exceptions if not isinstance(exc, trio.Cancelled)]
        if len(errors) == 1 and (raised is None or errors[0] is raised):
            # One side's exception (the block's, or else the capture's), as it was
            # raised (trio's as_safe_channel rule): neither wrapped, nor chained to the
            # group it travelled in.
            error = errors[0]
            context = error.__context__
            try:
                raise error
            finally:
                error.__context__ = context
                del error
        raise_collapsed(group)
