"""The capture pipeline: discover → freeze → scan (concurrent) → build (ordered) → write.

Theory of operation
-------------------
1. *Discover* the tree and refuse bad targets (a worker thread; nothing changed yet).
2. *Freeze*: move the tree into a transient freezer cgroup and freeze it.  Everything from
   here to the thaw runs inside try/finally, and the thaw is shielded from cancellation, so
   no exit path (error, cancel, Ctrl-C, SIGTERM) leaves the tree frozen.
3. Re-walk the now frozen tree (each task's stat, threads, children and metadata in one C
   call, ``_procread.read_task``); a task forked while we were moving its parent is moved
   in and the freeze re-confirmed, for a bounded number of rounds.  Group threads by fd
   table.
4. *Scan* (``_scanning``): ``SCAN_THREADS`` worker threads (one on two cores) read the fd tables in
   tree order, a chunk of tasks at a time, in C without the GIL (never a thread hop per
   fd or per table), each handing its chunks to the event loop as it goes, at most
   ``SCAN_AHEAD`` chunks ahead of the resolver.  A table of more than ``PIECE`` fds is
   handed on as soon as it is listed, its rows following a piece at a time as they are
   read (``_handoff.RowStream``), so the resolver works on one task's table while the
   reader reads the rest of it.  Meanwhile each handler with a ``begin``
   hook gets the capture session in a worker thread of its own (one sock_diag dump per
   network namespace, say; ``_begins``), so that its per-capture work overlaps the scan
   instead of adding to it.  Frozen, a child's fd that kcmp finds shared with
   its parent's fd of the same number (inherited) is not read again: only its fdinfo,
   for its own close-on-exec flag; the resolver takes the rest from the parent's row.
5. *Resolve*: results arrive in any order; a :class:`Reorderer` releases them in tree
   pre-order to the single resolver, which deduplicates open file descriptions with kcmp,
   runs the handlers (which may need the live fd), reads each new description's I/O owner
   (through the handler's live fd when it took one) and numbers objects by first
   reference.  An unlinked regular file (nlink 0, memfds included) gets its content copied
   here, once per inode, if its allocated size is within ``ghost_limit``: the kernel copies
   its data extents (SEEK_DATA/SEEK_HOLE on a new description of the inode, never the
   task's, whose offset stays put) into a spool file with sendfile(2), so the bytes are
   those of the frozen moment, no byte passes through Python and memory does not grow
   with the files; the frozen window grows by the copy, bounded by the limit (``_ghost``).
6. *Link*: once the last task is resolved, and only if a handler that captured an fd has
   a ``link`` hook, those hooks run over their records in image order, still frozen:
   what names other descriptions of the tree (an epoll's targets, by file id) needs
   kcmp against fd tables as they were read.
7. *Thaw* as soon as linking is done and the ``begin`` of every handler that
   captured an fd has returned (what it read must be of the frozen moment too; the
   others' are abandoned): only /proc reads, kcmp, handlers and ghost copies happen
   while frozen.  Then, while the tasks are moved back to their cgroups, each recorded
   path is looked up through its task's root (kept while frozen) to tell whether it
   still names the file (``_paths``: after the thaw, because the filesystem is not
   frozen anyway and a lookup per description would lengthen the frozen window); the
   handlers' ``finish`` hooks complete their records with what only the whole tree
   tells, and every record is encoded.
8. *Emit*: each task's records are made from its compact resolved form and sent, tasks
   taken until ``MAKE_RECORDS`` records are made per batch (one thread hop), through
   one bounded channel (``BATCH_BUFFER``) to its one consumer,
   which takes them in order: the caller's ``async for`` (``open_capture``) or the image
   writer (``checkpoint_tree``: the same stream, written as it comes).  Records are sent
   only after the thaw, so no consumer can lengthen the frozen window.  A saved ghost's
   ``content`` records follow its ``file`` record, read back from the spool: in the
   batch as long as its reads stay within one chunk (1 MiB), else a chunk per batch, so
   memory stays bounded by the channel's capacity.

Memory: while frozen, every task's resolved form is held (fds as arrays, the scan row
of each description first seen, what its handler made; the records can only be made
once the whole tree is known), the deduplication index, the fd maps of the tasks that
have children (what their children's fds are checked against), plus the rows of at
most twice ``SCAN_AHEAD`` chunks read but not yet resolved (in the channel, and taken
by the resolver in one hop), and of at most one big table's pieces per reader.  The
index and the maps are dropped once every task is resolved.  After the thaw, the
resolved forms shrink as records are made, and the channel holds at most
``BATCH_BUFFER`` batches (the records of tasks taken until ``MAKE_RECORDS`` with at
most 1 MiB of content, or one content chunk).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal

import msgspec
import trio

from ._begins import run_begin
from ._build import RecordBuilder
from ._claim import claim_freezer
from ._discover import TaskPlan, check_target, own_lineage, plan_tables, survey_tree, walk_tree
from ._errors import FreezerError, NoSuchProcess, collapse_errors
from ._freeze import Freezer
from ._ghost import CONTENT_CHUNK, DEFAULT_GHOST_LIMIT, Chunk, GhostNote
from ._guardian import Guardian, take_guardian
from ._kernel import dedup_rows, kcmp_files
from ._materialize import BodyRecord, materialize
from ._outside import ENDPOINTS_MODES, search, targets
from ._parts import GenericFd, TaskPart
from ._plugins.dispatch import Dispatch
from ._plugins.loading import load_handlers
from ._plugins.session import CaptureSession
from ._procparse import TaskStat
from ._records import Holders, PluginInfo
from ._scanning import scan_and_resolve
from ._tuning import tuned

__all__ = ["CaptureOptions", "CaptureSummary", "capture"]

BATCH_BUFFER = 8
"""Batches the channel holds before the builder waits for its consumer.  Small, so
memory stays bounded; records are sent only after the thaw, so a slow consumer slows the
capture, never the frozen window."""

MAKE_RECORDS = 4096
"""After the thaw, records are made a whole task at a time, tasks taken until this many
records are made, in one thread hop and sent as one batch: a hop per task of a tree of
hundreds of small ones cost more than making their records."""

MAX_FREEZE_ROUNDS = 5

PIPE_DATA_MAX = 64 << 20
"""The largest ``pipe_data``: what one pipe's queued data may add to one image record."""


class CaptureOptions(msgspec.Struct, kw_only=True, frozen=True):
    """How to capture.  ``freeze`` is auto, cgroup:PATH, cgroup-v1, cgroup-v2 or none."""

    freeze: str = "auto"
    freeze_timeout: float = 10.0
    strict: bool = False
    disable_plugins: tuple[str, ...] = ()
    pipe_data: int = 0
    """Copy up to this many queued bytes of each pipe into the image (the pipe handler
    reads ``ctx.session.pipe_data``); 0 copies none.  At most ``PIPE_DATA_MAX``."""

    tune_interpreter: bool = False
    """For the capture, pause the cyclic garbage collector and shorten the interpreter's
    switch interval (``_tuning.SWITCH_INTERVAL``): both are process-wide, so a library caller
    opts in; the ``asyckpt`` command does.  Restored afterwards.  Costs without it are
    in docs/performance.md."""

    ghost_limit: int = DEFAULT_GHOST_LIMIT
    """Copy the content of each unlinked regular file (memfds too) whose allocated size
    (st_blocks * 512) is at most this many bytes; 0 copies none.  A larger one is
    recorded ``too-big`` (``CaptureSummary.ghost_notes``), or fails a ``strict`` capture."""

    endpoints: Literal["tree", "system"] = "tree"
    """``system``: after the thaw, search the processes outside the tree for the other
    ends of its pipes, FIFOs and connections (``Holders`` records, ``_outside``);
    ``tree``: do not."""

    cmdline: bool = False
    """Record each task's command line (``Task.cmdline``).  Off by default: a command
    line may hold secrets.  (The environment is never recorded.)"""

    lock_timeout: float = 10.0
    """Seconds to wait for another capture holding the same cgroup hierarchy (the
    locks in the run directory) before failing; 0 fails at once."""

    def __post_init__(self) -> None:
        if self.endpoints not in ENDPOINTS_MODES:
            raise ValueError(f"endpoints must be one of {', '.join(ENDPOINTS_MODES)}")
        if not 0 <= self.lock_timeout < math.inf:
            raise ValueError("lock_timeout must be a non-negative number of seconds")
        if not 0 <= self.pipe_data <= PIPE_DATA_MAX:
            raise ValueError(f"pipe_data must be between 0 and {PIPE_DATA_MAX} bytes")
        if self.ghost_limit < 0:
            raise ValueError("ghost_limit must not be negative")


class CaptureSummary(msgspec.Struct, kw_only=True):
    """What a capture did: counts, timings and the fds no handler understood."""

    root_pid: int
    freezer: str
    freezer_scope: str
    freeze_mode: str
    pre_frozen: bool
    freezer_cgroup: str | None
    consistent: bool
    tasks: int
    vanished: int
    """Tasks that exited before their fds were read (only without freezing)."""
    unverified: int
    """Fds not checked for shared descriptions: their task exited first (only without
    freezing); each is recorded as a description of its own."""
    fd_tables: int
    fds: int
    files: int
    """File records: open file descriptions, and (format 4) ``held_files``."""
    generic: dict[str, int]
    generic_fds: list[GenericFd]
    plugins: list[PluginInfo]
    freezing_ms: float
    frozen_ms: float
    capture_ms: float
    path: str | None = None
    bytes: int = 0
    ghosts_saved: int = 0
    """Unlinked files (inodes) whose content is in the image."""
    contents: int = 0
    """``content`` records sent."""
    content_bytes: int = 0
    ghost_notes: list[GhostNote] = []
    """Unlinked files whose content is not in the image: over the limit, or failed."""
    endpoints: Literal["tree", "system"] = "tree"
    """As asked (``CaptureOptions.endpoints``)."""
    outside_holders: int = 0
    """With endpoints ``system``: the objects found held outside the tree."""
    held_files: int = 0
    """Files held by reference (cwd, root, exe, mapped files: ``File.description``
    false), one per inode; counted in ``files``."""


def _read_mountinfo(pid: int) -> str:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _settle_tree(
    root: TaskStat, before: Sequence[TaskStat], freezer: Freezer, timeout: float
) -> list[TaskPlan]:
    """Walk the frozen tree, catch tasks that escaped the move, plan its fd tables."""
    for _round in range(MAX_FREEZE_ROUNDS):
        tasks = survey_tree(root.pid)
        if tasks[0].stat.starttime != root.starttime:
            raise NoSuchProcess("the process exited and its pid was reused", pid=root.pid)
        if not freezer.consistent:
            break
        members = freezer.members()
        missing = [t.stat.pid for t in tasks if t.stat.pid not in members and t.stat.state != "Z"]
        if not missing:
            break
        freezer.add(missing)
        freezer.freeze(timeout)
    else:
        raise FreezerError(f"the tree kept forking through {MAX_FREEZE_ROUNDS} freeze rounds")
    # The v1 freezer shows every frozen task as "D": keep the state it had before.
    state = {(t.pid, t.starttime): t.state for t in before}
    tasks = [
        t._replace(
            stat=t.stat._replace(state=state.get((t.stat.pid, t.stat.starttime), t.stat.state))
        )
        if t.stat.state != "Z"
        else t
        for t in tasks
    ]
    return plan_tables(tasks)


@contextlib.asynccontextmanager
async def _frozen(
    freezer: Freezer,
    root: TaskStat,
    tree: Sequence[TaskStat],
    freeze_timeout: float,
    guardian: Guardian | None,
    after_thaw: Callable[[], object] | None = None,
) -> AsyncIterator[None]:
    """Frozen for the block.  ``after_thaw``, when the block ended normally, runs in a
    thread of its own once the tree is thawed, while the tasks are moved back to their
    cgroups (kernel work for each task, that need not wait)."""
    done = False
    try:
        if freezer.consistent:
            assert guardian is not None
            # Before anything changes: the guardian undoes it if this process is killed.
            await trio.to_thread.run_sync(guardian.wait_ready)
            freezer.guardian = guardian
        await trio.to_thread.run_sync(freezer.prepare, root.pid)
        await trio.to_thread.run_sync(freezer.add, [t.pid for t in tree if t.state != "Z"])
        await trio.to_thread.run_sync(freezer.freeze, freeze_timeout)
        yield
        done = True
    finally:
        # Thawing must happen whatever ended the block, cancellation included.
        with trio.CancelScope(shield=True):
            clean = False
            failed: list[BaseException] = []
            try:
                if done and after_thaw is not None:
                    try:
                        await trio.to_thread.run_sync(freezer.thaw)
                    except Exception:
                        # The release still runs: it thaws again, moves the tasks back
                        # and removes the cgroup (its error, if any, chained to this one).
                        await trio.to_thread.run_sync(freezer.release)
                        raise

                    async def run(fn: Callable[[], object], errors: list[BaseException]) -> None:
                        try:
                            await trio.to_thread.run_sync(fn)
                        except Exception as exc:  # raised as it is, after the nursery
                            errors.append(exc)

                    # The release's error goes first; the check's is raised once the
                    # tree is restored.
                    released: list[BaseException] = []
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(run, after_thaw, failed)
                        nursery.start_soon(run, freezer.release, released)
                    if released:
                        raise released[0]
                else:
                    await trio.to_thread.run_sync(freezer.release)
                clean = True
            finally:
                if guardian is not None:
                    # Dismissed unclean, it retries the undo itself before exiting (and
                    # is waited for); clean, it exits while the records are made, and
                    # capture() reaps it.
                    await trio.to_thread.run_sync(
                        lambda: guardian.dismiss(clean=clean, wait=not clean)
                    )
                # The tree is back: another capture of it may start.
                freezer.close()
        if failed:
            raise failed[0]


async def capture(
    pid: int,
    send: trio.MemorySendChannel[list[BodyRecord]],
    options: CaptureOptions,
    dispatch: Dispatch | None = None,
    *,
    spool_dir: str | None = None,
) -> CaptureSummary:
    """Capture the tree rooted at ``pid``, sending lists of records in image order
    (tasks' records with their files' ``content``, see ``MAKE_RECORDS``) into ``send``,
    which the caller owns (and closes once this returns: the summary is then known
    before its consumer sees the end of the stream).

    Unlinked files' content is spooled in an unnamed file in ``spool_dir`` (default: the
    temporary directory) until it is sent.  Raises AsyckptError subclasses; the tree is
    thawed and back in its cgroups before any exception (or cancellation) leaves this
    function.
    """
    started = time.perf_counter()
    guardian = None
    try:
        root = await trio.to_thread.run_sync(check_target, pid)
        if options.freeze != "none":
            # Started early, so that its interpreter starts while the tree is discovered.
            guardian = await trio.to_thread.run_sync(take_guardian)
        with tuned() if options.tune_interpreter else contextlib.nullcontext():
            summary = await _capture(root, send, options, dispatch, guardian, spool_dir)
    finally:
        if guardian is not None:
            with trio.CancelScope(shield=True):
                # Nothing was frozen, or _frozen has dismissed it already: reaped here.
                await trio.to_thread.run_sync(lambda: guardian.dismiss(clean=True))
    summary.capture_ms = (time.perf_counter() - started) * 1000
    return summary


async def _capture(
    root: TaskStat,
    send: trio.MemorySendChannel[list[BodyRecord]],
    options: CaptureOptions,
    dispatch: Dispatch | None,
    guardian: Guardian | None,
    spool_dir: str | None = None,
) -> CaptureSummary:
    pid = root.pid
    if dispatch is None:
        dispatch = await trio.to_thread.run_sync(
            lambda: load_handlers(disabled=options.disable_plugins)
        )
    tree = await trio.to_thread.run_sync(walk_tree, pid)
    protect = own_lineage(guardian.pid if guardian is not None else None)
    # Holding the locks of the hierarchies it may touch, until the tree is restored.
    freezer = await trio.to_thread.run_sync(
        lambda: claim_freezer(
            options.freeze,
            tree,
            protect=protect,
            lock_timeout=options.lock_timeout,
            check=trio.from_thread.check_cancelled,
        )
    )
    try:
        builder = RecordBuilder(
            dispatch,
            compare_files=kcmp_files,
            read_mountinfo=_read_mountinfo,
            strict=options.strict,
            tolerant=not freezer.consistent,
            ghost_limit=options.ghost_limit,
            spool_dir=spool_dir,
            dedup_rows=dedup_rows,
            cmdline=options.cmdline,
        )
        try:
            return await _run(root, tree, builder, freezer, send, options, dispatch, guardian)
        finally:
            builder.close()
    finally:
        freezer.close()


async def _run(
    root: TaskStat,
    tree: list[TaskStat],
    builder: RecordBuilder,
    freezer: Freezer,
    send: trio.MemorySendChannel[list[BodyRecord]],
    options: CaptureOptions,
    dispatch: Dispatch,
    guardian: Guardian | None,
) -> CaptureSummary:
    pid = root.pid
    parts: list[TaskPart] = []
    # Each recorded path is looked up while the tasks are moved back to their cgroups.
    async with _frozen(
        freezer, root, tree, options.freeze_timeout, guardian, lambda: builder.paths.check(parts)
    ):
        plans = await trio.to_thread.run_sync(
            _settle_tree, root, tree, freezer, options.freeze_timeout
        )
        builder.session = CaptureSession(
            [p.stat.pid for p in plans if p.stat.state != "Z"],
            [tid for p in plans if p.stat.state != "Z" for tid, _ in p.threads],
            pipe_data=options.pipe_data,
            consistent=freezer.consistent,
        )
        session = builder.session
        # Begins' threads come from a limiter of this capture's: one that hangs is
        # abandoned with its token, which must not be one of the embedder's.
        begun = [h for h in dispatch.handlers if h.begin is not None]
        limiter = trio.CapacityLimiter(max(1, len(begun)))
        try:
            async with collapse_errors(), trio.open_nursery() as nursery:
                begins = {}
                for handler in begun:
                    begins[handler.name] = trio.CancelScope()
                    # Registered before the task starts, so that a resolver asking for
                    # the state first waits for this begin instead of running its own.
                    pending = session._started(handler.name)
                    nursery.start_soon(
                        run_begin, handler, session, pending, begins[handler.name], limiter
                    )
                builder.expect((p.stat.pid, p.stat.ppid) for p in plans)
                parts = await scan_and_resolve(plans, builder)
                builder.resolved()
                if builder.needs_link:
                    parts = await trio.to_thread.run_sync(builder.link, parts)
                # The thaw waits for the begins whose state the records may still need
                # (in finish); that of a handler that captured nothing is not waited for.
                for name, scope in begins.items():
                    if name not in builder.used:
                        scope.cancel()
        finally:
            # Nothing waits for a begin any longer: one still running should return.
            session.cancelled.set()
    # Thawed: records are finished, made and handed on only now, so neither making them
    # nor a slow consumer of the channel can lengthen the frozen window.
    parts = await trio.to_thread.run_sync(builder.finish, parts)
    ghosts = builder.ghosts

    Batch = tuple[list[BodyRecord], list[Chunk]]

    def make(parts: list[TaskPart]) -> list[Batch]:
        # One thread hop for tasks popped until MAKE_RECORDS records are made: their
        # records in one batch, with each saved ghost's content (after its file record)
        # read here as long as the reads stay within one chunk's worth.  A chunk past
        # that is read in a hop of its own as it is sent, and cuts the batch: what
        # follows it goes in the next one.
        out: list[Batch] = [([], [])]
        budget = CONTENT_CHUNK
        made = 0
        while parts and made < MAKE_RECORDS:
            batch = materialize(parts.pop())
            made += len(batch)
            split = ghosts.split(batch) if ghosts.saved else [(batch, [])]
            for records, chunks in split:
                if out[-1][1]:
                    out.append(([], []))
                out[-1][0].extend(records)
                for chunk in chunks:
                    if chunk.length <= budget and not out[-1][1]:
                        budget -= chunk.length
                        out[-1][0].append(ghosts.read(chunk))
                    else:
                        out[-1][1].append(chunk)
        return out

    # What to search outside the tree for, known before the parts are freed below.
    wanted = targets(parts) if options.endpoints == "system" else []
    # Popped, so that each task's resolved form is freed once its records are made.
    parts.reverse()
    while parts:
        for records, chunks in await trio.to_thread.run_sync(make, parts):
            if records:
                await send.send(records)
            for chunk in chunks:
                await send.send([await trio.to_thread.run_sync(ghosts.read, chunk)])
    holders: list[Holders] = []
    if options.endpoints == "system":
        # After everything else, the tree thawed: the rest of the system is not frozen.
        in_tree = {p.stat.pid for p in plans}
        holders = await trio.to_thread.run_sync(search, wanted, in_tree)
        if holders:
            await send.send(list[BodyRecord](holders))
    contents, content_bytes = ghosts.totals()
    return CaptureSummary(
        root_pid=pid,
        freezer=freezer.name,
        freezer_scope=freezer.scope,
        freeze_mode=options.freeze,
        pre_frozen=freezer.pre_frozen,
        freezer_cgroup=freezer.cgroup,
        consistent=freezer.consistent,
        tasks=builder.task_count,
        vanished=builder.vanished,
        unverified=builder.unverified,
        fd_tables=builder.table_count,
        fds=builder.fd_count,
        files=builder.file_count,
        generic=dict(sorted(builder.generic.items())),
        generic_fds=builder.generic_fds,
        plugins=[h.info() for _, h in sorted(builder.used.items())],
        freezing_ms=freezer.freezing_ms,
        frozen_ms=freezer.frozen_ms,
        capture_ms=0.0,
        ghosts_saved=len(ghosts.saved),
        contents=contents,
        content_bytes=content_bytes,
        ghost_notes=list(ghosts.notes),
        endpoints=options.endpoints,
        outside_holders=len(holders),
        held_files=builder.task_files.held_count,
    )
