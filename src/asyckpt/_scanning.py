"""The scan stage of a capture: worker threads read the frozen tree's fd tables (the C
reader, GIL released) while the resolver turns them, in tree order, into records.

What runs while the tree is frozen, and so what the frozen window is made of; the rest
of the capture (freezing, thawing, writing) is ``_capture``'s.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Container
from typing import NamedTuple

import trio

from ._build import RecordBuilder
from ._discover import TaskPlan
from ._errors import collapse_errors
from ._handoff import RowStream
from ._order import Reorderer
from ._parts import ScannedTable, TaskPart, TaskScan
from ._procread import TablePieces, iter_fd_tables
from ._taskfiles import TaskFileResolver

__all__ = [
    "CHUNKS_PER_THREAD",
    "PIECE",
    "SCAN_AHEAD",
    "SCAN_THREADS",
    "scan_and_resolve",
    "scan_chunk",
]

SCAN_THREADS = max(1, min(2, len(os.sched_getaffinity(0)) - 1))
"""Worker threads reading fd tables at once: the cores left once the resolver has one,
at most two.  The C reader releases the GIL for a whole table, so they run in parallel
with each other and with the resolver; more threads than cores only add contention.  On
two cores one reader is faster than two: with two, three threads share the cores, the
resolver (the critical path once the reader is ahead) loses its core to them part of
the time, and the readers slow each other down in the kernel (docs/performance.md,
"Design choices, measured")."""

SCAN_AHEAD = 4
"""Chunks of tasks a reader may have read that the resolver has not taken yet (the
scan channel's capacity).  The resolver is rarely behind (one reader on two cores is
the critical path while frozen), so this bounds memory without making a reader wait."""

PIECE = 512
"""Fds of a big table (more than this) handed to the resolver at a time, as they are
read: small enough that the resolver starts soon after the reader and the two cores
overlap on one table, large enough that the hand-overs (a GIL release each side) cost
nothing measurable (docs/performance.md)."""

CHUNKS_PER_THREAD = 8
"""The tasks are cut into about this many chunks per scan worker (counting at least two
workers): enough to pipeline with the resolver, few enough that thread hops stay cheap
for trees of thousands of tasks."""


class Delivery(NamedTuple):
    """Scans handed from a reader thread to the resolver."""

    scans: list[TaskScan]
    last: bool
    """Whether it ends its chunk (which gives the chunk's credit back)."""


def scan_chunk(
    chunk: list[tuple[int, TaskPlan]],
    inherit: Container[int] | None = None,
    files: TaskFileResolver | None = None,
    *,
    piece: int = 0,
    early: Callable[[list[TaskScan]], object] | None = None,
) -> list[TaskScan]:
    """Read the new fd tables of a run of tasks, in one pass of the C reader.

    ``inherit``: the tasks (of a frozen tree) whose tables the resolver will have seen
    before their children's; a child's fd shared with its parent's fd of the same number
    is then only checked with kcmp, not read again (see RecordBuilder.resolve's hints).
    ``files``: also read each live task's files held by reference (``_taskread``).

    ``piece`` and ``early``: a task whose one table lists more than ``piece`` fds is
    handed to ``early`` as soon as the table is listed, with the tasks before it, its
    rows following through a :class:`RowStream`, ``piece`` fds at a time, read here
    before the rest of the chunk.  So the resolver starts on a big table while it is
    still being read.  Returns the scans not handed to ``early``.
    """
    owners = [(plan.stat.pid, tid) for _, plan in chunk for tid, _ in plan.scan]
    parents = None
    if inherit is not None:
        parents = [
            plan.stat.ppid if plan.stat.ppid in inherit else 0
            for _, plan in chunk
            for _ in plan.scan
        ]
    # A task that exited since it was planned reads as None: only a tree that is not
    # frozen can lose one, and the resolver leaves it out.
    rows = iter_fd_tables(
        owners, missing_ok=True, parents=parents, piece=piece if early is not None else 0
    )
    ready: list[TaskScan] = []
    for index, plan in chunk:
        held = (
            None
            if files is None or plan.stat.state == "Z"
            else files.read(plan.stat.pid, [tid for tid, _ in plan.threads])
        )
        tables = []
        for tid, table in plan.scan:
            fds = next(rows)
            if isinstance(fds, TablePieces):
                if len(plan.scan) == 1:
                    assert early is not None
                    stream = RowStream()
                    scan = TaskScan(index, plan, (ScannedTable(tid, table, stream),), held)
                    early([*ready, scan])
                    ready = []
                    _hand_on(fds, stream)
                    break
                # A task of several tables is resolved once all are known: read whole.
                fds = [row for part in iter(fds.read, []) for row in part]
            tables.append(ScannedTable(tid, table, fds))
        else:
            ready.append(TaskScan(index, plan, tuple(tables), held))
    return ready


def _hand_on(pieces: TablePieces, stream: RowStream) -> None:
    """Read a big table into its stream, a piece at a time, and end the stream whatever
    happens: the resolver waits on it.

    The pieces are read from the one listing taken when the table was opened, so the
    resolver sees the table as one read would give it.  A frozen task's fd table does
    not change while it is frozen (none of its threads runs, nor any task of the tree
    sharing the table), so the time between pieces changes nothing; what could change
    it (a SIGKILL, a process outside the tree sharing the table) could as well during a
    whole table's read, which takes as long.  In a tree that is not frozen, an fd closed
    between the listing and its read is skipped, as within a whole table's read."""
    try:
        while part := pieces.read():
            stream.put(part)
    except BaseException as exc:
        stream.end(exc)  # the resolver raises it, as the table's reader
        raise
    finally:
        pieces.close()
    stream.end()


async def scan_and_resolve(plans: list[TaskPlan], builder: RecordBuilder) -> list[TaskPart]:
    """Read the planned fd tables in worker threads and resolve them in tree order as
    they come: the records of a frozen tree, one part per task still there."""
    # Bounded by the credits below, not by its capacity: a chunk may be handed over in
    # several deliveries (one more per big table), each of which must find room.
    scans_send, scans_recv = trio.open_memory_channel[Delivery](math.inf)
    reorder: Reorderer[TaskScan] = Reorderer()
    parts: list[TaskPart] = []
    # Workers take tasks in tree order from one shared iterator, so the resolver (which
    # needs them in that order) can start on the first while the rest are being read;
    # trio would start one task per process in no particular order.  Tasks go in chunks:
    # a thread hop costs more than reading a small task's fds, and each hop is a chance
    # to queue behind the resolver for the GIL.
    chunk = max(1, len(plans) // (max(2, SCAN_THREADS) * CHUNKS_PER_THREAD))
    # Frozen, a parent's table cannot change between its scan and its child's, so the
    # child's scan may lean on it: tasks with a table of their own, resolved before their
    # children (pre-order).  Unfrozen, every fd is read and compared in the resolver.
    inherit = None
    if not builder.tolerant:
        inherit = {p.stat.pid for p in plans if p.threads[0][1] is not None}
    work = iter([list(enumerate(plans))[i : i + chunk] for i in range(0, len(plans), chunk)])

    # Each worker is one thread for all its chunks, handing each chunk's scans to the
    # event loop without waiting for it: with a thread hop per chunk the reader would
    # wait, between chunks, for the event loop, which itself waits for the resolver's
    # GIL, and the reader is the critical path while frozen.  The channel
    # is bounded by credits the reader takes in its own thread before reading a chunk
    # and the resolver gives back as it takes a chunk's last delivery, so the reader
    # waits (without the event loop) only when the resolver is SCAN_AHEAD chunks behind.
    # A big table's pieces go to its stream without a credit: the resolver may be
    # waiting for them, holding up the credits it would give back.
    credits = threading.Semaphore(SCAN_AHEAD)
    resolver_gone = threading.Event()

    def deliver(out: trio.MemorySendChannel[Delivery], scans: list[TaskScan], last: bool) -> None:
        try:
            out.send_nowait(Delivery(scans, last))
        except trio.BrokenResourceError:
            resolver_gone.set()  # the resolver failed; its error is the one to report

    def scan_loop(out: trio.MemorySendChannel[Delivery], token: trio.lowlevel.TrioToken) -> None:
        def early(scans: list[TaskScan]) -> None:
            token.run_sync_soon(deliver, out, scans, False)

        for tasks in work:
            while not credits.acquire(timeout=0.05):
                trio.from_thread.check_cancelled()
            trio.from_thread.check_cancelled()
            if resolver_gone.is_set():
                return
            rest = scan_chunk(tasks, inherit, builder.task_files, piece=PIECE, early=early)
            token.run_sync_soon(deliver, out, rest, True)

    async def scan_worker(out: trio.MemorySendChannel[Delivery]) -> None:
        async with out:
            # Closed after the last chunk's delivery: the event loop runs callbacks in
            # the order they were queued, this thread's result after its deliveries.
            await trio.to_thread.run_sync(scan_loop, out, trio.lowlevel.current_trio_token())

    def resolve_all(ready: list[TaskScan]) -> list[TaskPart]:
        return [part for scan in ready if (part := builder.resolve(scan)) is not None]

    def take(delivery: Delivery) -> list[TaskScan]:
        if delivery.last:
            credits.release()
        return [r for scan in delivery.scans for r in reorder.push(scan.seq, scan)]

    async with collapse_errors(), trio.open_nursery() as nursery:
        async with scans_send:
            for _ in range(SCAN_THREADS):
                nursery.start_soon(scan_worker, scans_send.clone())
        with scans_recv:
            try:
                async for delivery in scans_recv:
                    ready = take(delivery)
                    # Whatever else has arrived meanwhile goes in the same thread hop.
                    while True:
                        try:
                            ready += take(scans_recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    if ready:
                        parts.extend(await trio.to_thread.run_sync(resolve_all, ready))
            finally:
                # A reader waiting for a credit learns at once that none will come.
                resolver_gone.set()
                for _ in range(SCAN_THREADS):
                    credits.release()
    if reorder.released != len(plans):
        raise RuntimeError("asyckpt bug: tasks were scanned but not resolved")
    return parts
