"""Record building: turn each task's raw fd reads into image records, in tree order.

Three steps, so that the tree is frozen only as long as it must be:

* :meth:`RecordBuilder.resolve` runs while the tree is frozen, one task at a time in tree
  pre-order.  It deduplicates open file descriptions (cheap key, then kcmp, which needs
  the tasks' tables unchanged), runs the handlers (which may need the live fd), reads
  each description's I/O owner where it can matter (``owner_matters``), and hands
  out objref ids in order of first reference, so two captures of an unchanged tree number
  everything identically.  It keeps its output compact: arrays per fd table
  (:class:`~asyckpt._parts.FdEntries`), not records.
* :meth:`RecordBuilder.link` runs once every task is resolved, still frozen: the
  handlers' optional ``link`` hooks complete their records with what names other
  descriptions of the tree (an epoll's targets as file ids), which needs kcmp and fd
  tables as they were read.  Only handlers that define the hook cost anything.
* :meth:`RecordBuilder.finish` runs after the thaw, once, over every resolved task: the
  handlers' optional ``finish`` hooks complete their records with what only the whole
  tree tells (is a socket's peer in it?), and every record is encoded (so encoding costs
  nothing while frozen).  No kernel.
* :func:`~asyckpt._materialize.materialize` turns that into image records: pure, no
  kernel (a module of its own).

The comparison and the mountinfo reader are injected, so neither step does I/O of its own,
but for what needs the live fd while frozen, as handlers do: an unlinked file's content is
copied into a spool (``_ghost``), and each task's root kept for the path checks that
``_paths`` runs after the thaw.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import msgspec

from ._classify import (
    O_ASYNC,
    owner_matters,
)
from ._dedup import KcmpIndex
from ._errors import (
    AsyckptError,
    HandlerFailed,
    NoSuchProcess,
    StrictViolation,
    translate_oserror,
)
from ._facts import row_facts
from ._ghost import DEFAULT_GHOST_LIMIT, Ghost, GhostSpool
from ._parts import (
    FdEntries,
    FdEntry,
    GenericFd,
    NewFile,
    ResolvedTable,
    TaskPart,
    TaskScan,
    new_files,
)
from ._paths import PATH_KINDS, PathChecker
from ._plugins.contract import FdFacts, LinkRef
from ._plugins.dispatch import Dispatch
from ._plugins.links import CaptureLinks
from ._plugins.loaded import LoadedHandler
from ._plugins.session import CaptureSession, CaptureTree, HandlerContext
from ._procparse import (
    lock_texts,
)
from ._records import (
    Owner,
)
from ._rows import DedupRows, RawFd, RawRow, ScanRow
from ._taskfiles import TaskFileResolver

__all__ = ["RecordBuilder"]

O_CLOEXEC = os.O_CLOEXEC
OWNER_TYPES = {0: "tid", 1: "pid", 2: "pgrp"}
"""``struct f_owner_ex.type``: F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP."""
# Races of an unfrozen capture: the task exited (pidfd_open), or closed the fd
# (pidfd_getfd), since the scan.
_VANISHED = frozenset({errno.ESRCH, errno.EBADF})


Ref = tuple[int, int]
"""(tid, fd): how kcmp names an fd."""

RunAsync = Callable[..., Any]
"""Runs ``async_fn(*args)`` to completion from the resolver's worker thread."""


def _trio_run_async(async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    # The resolver is a trio worker thread of the running capture, so the handler's
    # coroutine goes back to that event loop.  Imported here: no async handler, no trio.
    import trio

    return trio.from_thread.run(async_fn, *args)


class RecordBuilder:
    """Resolves the tasks of one capture, one at a time, in tree order."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        compare_files: Callable[[Ref, Ref], int],
        read_mountinfo: Callable[[int], str],
        strict: bool = False,
        tolerant: bool = False,
        session: CaptureSession | None = None,
        run_async: RunAsync = _trio_run_async,
        ghost_limit: int = DEFAULT_GHOST_LIMIT,
        spool_dir: str | None = None,
        dedup_rows: DedupRows | None = None,
        cmdline: bool = False,
    ) -> None:
        self._dispatch = dispatch
        # One chooser per capture: it caches the fs magic of each mount id, and mount ids
        # are recycled between captures.
        self._choose = dispatch.chooser()
        self._run_async = run_async
        self._compare_files = compare_files
        self._files: KcmpIndex[Ref, int] = KcmpIndex(compare_files)
        # The dedup loop in C (_fdscan.dedup_rows), given by the capture along with
        # compare_files=kcmp_files when the accelerator is built: it calls kcmp itself.
        self._dedup_rows = dedup_rows
        # fd -> (key, ref, file id) of every table resolved, and each task's own table:
        # a child's fd N is most often its parent's fd N, inherited, so that is tried
        # first, with one kcmp, before the index's binary search.
        self._table_fds: dict[int, dict[int, tuple[object, Ref, int]]] = {}
        self._task_table: dict[int, int] = {}
        self._tables_read: set[int] = set()
        # Only a parent's table is ever a hint: the others' fd maps are filled into a
        # scratch dict and dropped (on 106k fds, most of them a child's, ~20 MiB held to
        # the end of the capture otherwise).  None until told: every table is kept.
        self._parents: frozenset[int] | None = None
        self._scratch: dict[int, tuple[object, Ref, int]] = {}
        self._read_mountinfo = read_mountinfo
        self._strict = strict
        # Unfrozen captures tolerate tasks that exit mid-way; frozen ones cannot lose any.
        self._tolerant = tolerant
        self.session = session
        """The capture handlers see (``ctx.session``, their ``begin`` state)."""
        self._mnt_seen: set[int] = set()
        self.file_count = 0
        self.fd_count = 0
        self.task_count = 0
        self.table_count = 0
        self.hint_hits = 0
        self.vanished = 0
        """Tasks that exited before their fds were read."""
        self.unverified = 0
        """Fds whose description could not be compared (their task exited meanwhile)."""
        self.generic: Counter[str] = Counter()
        self.generic_fds: list[GenericFd] = []
        self.used: dict[str, LoadedHandler] = {}
        self.ghosts = GhostSpool(ghost_limit, spool_dir)
        """Unlinked files' content, copied while frozen (closed by the capture)."""
        self.paths = PathChecker()
        """Each task's root, kept while frozen for the path checks after the thaw."""
        self.task_files = TaskFileResolver(self._next_id, self._new_held, cmdline)
        """Working and root directories, executables, mapped files (``_taskfiles``)."""
        # file id -> fdinfo of its later fds that list locks (rare: kept off the path
        # of every fd; merged by finish).
        self._more_locks: dict[int, list[bytes]] = {}
        # The records whose handler has a link hook, with the fd each was first seen
        # through, in image order: what link() walks, rather than every fd of the tree.
        self._to_link: list[tuple[NewFile, LinkRef]] = []

    def expect(self, pids_ppids: Iterable[tuple[int, int]]) -> None:
        """The (pid, ppid) of every task to be resolved: only the fd tables of tasks that
        are someone's parent are kept as hints for their children's."""
        self._parents = frozenset(ppid for _, ppid in pids_ppids)

    def resolved(self) -> None:
        """Every task is resolved: drop the deduplication index and the parents' fd maps
        (the largest part of the resolver's memory), needed by no later step."""
        self._table_fds = {}
        self._files = KcmpIndex(self._compare_files)
        self._scratch = {}

    @property
    def tolerant(self) -> bool:
        """Whether tasks may exit mid-capture (the tree is not frozen)."""
        return self._tolerant

    def resolve(self, scan: TaskScan) -> TaskPart | None:
        """The task, resolved; None when it exited before its fds could be read (only
        possible when the tree is not frozen)."""
        plan, meta = scan.plan, scan.plan.meta
        pid = plan.stat.pid
        if any(t.fds is None for t in scan.tables):
            if scan.seq == 0:
                raise NoSuchProcess("the process exited during the capture", pid=pid)
            self.vanished += 1
            return None
        mountinfo = None
        if meta.mnt_ns and meta.mnt_ns not in self._mnt_seen:
            self._mnt_seen.add(meta.mnt_ns)
            mountinfo = self._read_mountinfo(pid)
        if scan.files is not None or any(t.fds for t in scan.tables):  # a RowStream is never empty
            self.paths.open_root(pid, meta.mnt_ns, meta.root)
        parent_table = self._task_table.get(plan.stat.ppid)
        hints = self._table_fds.get(parent_table, {}) if parent_table is not None else {}
        tables = []
        keep = self._parents is None or pid in self._parents
        for tid, table_id, fds in scan.tables:
            assert fds is not None
            if keep:
                seen = self._table_fds[table_id] = {}
            else:
                seen = self._scratch
            pieces = []
            # A big table comes in pieces as they are read: each resolved in turn, as
            # the whole table would be (ids are handed out in fd order either way).
            for rows in (fds,) if isinstance(fds, list) else fds:
                if parent_table is None and any(len(row) == 2 for row in rows):
                    # Read as shared with its parent's fds, whose own table was never
                    # read: the parent was killed meanwhile (SIGKILL reaches a frozen task).
                    raise NoSuchProcess(
                        "the process exited during the capture, after its child's fds were read",
                        pid=plan.stat.ppid,
                    )
                pieces.append(self._resolve_table(pid, tid, rows, meta.root, hints, seen))
            entries = FdEntries.join(pieces)
            if not keep:
                seen.clear()
            tables.append(ResolvedTable(tid, table_id, entries))
            self._tables_read.add(table_id)
            self.table_count += 1
        # A table first seen in a task that has exited since was never read: the threads
        # that shared it are recorded without one.
        threads = tuple(
            (tid, table if table in self._tables_read else None) for tid, table in plan.threads
        )
        leader_table = threads[0][1]
        if leader_table is not None:
            self._task_table[pid] = leader_table
        files = None
        if scan.files is not None:
            files = self.task_files.resolve(pid, meta.root, scan.files)
        self.task_count += 1
        return TaskPart(plan, meta, mountinfo, tables, threads, files)

    def _resolve_table(
        self,
        pid: int,
        tid: int,
        fds: list[ScanRow],
        root: str,
        hints: dict[int, tuple[object, Ref, int]],
        seen: dict[int, tuple[object, Ref, int]],
    ) -> FdEntries:
        if self._dedup_rows is not None and not self._tolerant:
            return self._resolve_table_fast(pid, tid, fds, root, hints, seen)
        entries: list[FdEntry] = []
        append = entries.append
        compare = self._compare_files
        lookup = self._files.lookup
        ctx = HandlerContext(tid, self.session)
        try:
            for raw in fds:
                if len(raw) == 2:
                    # The scan's kcmp found it shared with the parent's fd of this
                    # number: the parent's description, nothing else to read or compare.
                    fd, flags = raw
                    hint = hints.get(fd)
                    if hint is None:
                        raise RuntimeError(f"asyckpt bug: fd {fd} of {tid} has no parent row")
                    seen[fd] = (hint[0], (tid, fd), hint[2])
                    append((fd, bool(flags & O_CLOEXEC), hint[2], None))
                    self.hint_hits += 1
                    continue
                fd = raw.fd
                flags = raw.flags
                cloexec = bool(flags & O_CLOEXEC)
                flags &= ~O_CLOEXEC
                # The cheap key: equal for every fd of one description, rarely equal for
                # two (separate open()s of one file at one offset); kcmp decides.
                key = (raw.st_dev, raw.st_ino, raw.pos, flags)
                ref = (tid, fd)
                new: NewFile | None = None
                hint = hints.get(fd)
                try:
                    if hint is not None and hint[0] == key and compare(ref, hint[1]) == 0:
                        file_id, is_new = hint[2], False
                        self.hint_hits += 1
                    else:
                        file_id, is_new = lookup(key, ref, self._next_id)
                except AsyckptError:
                    if not self._tolerant:
                        raise
                    # Unfrozen, a task may exit between its scan and kcmp: keep the fd as
                    # read, as a description of its own (unindexed, so the index's kcmp
                    # order stays sound), at worst a duplicate of one seen before.
                    self.unverified += 1
                    file_id, is_new = self._next_id(), True
                if is_new:
                    new = self._new_file(file_id, pid, tid, raw, flags, root, ctx)
                elif raw.fdinfo_rest and b"lock:" in raw.fdinfo_rest:
                    self._more_locks.setdefault(file_id, []).append(raw.fdinfo_rest)
                seen[fd] = (key, ref, file_id)
                append((fd, cloexec, file_id, new))
        finally:
            ctx._close()
        self.fd_count += len(entries)
        return FdEntries.of(entries)

    def _resolve_table_fast(
        self,
        pid: int,
        tid: int,
        fds: list[ScanRow],
        root: str,
        hints: dict[int, tuple[object, Ref, int]],
        seen: dict[int, tuple[object, Ref, int]],
    ) -> FdEntries:
        """:meth:`_resolve_table` with the per-fd dedup loop in C (``dedup_rows``, over the
        same structures), then the new descriptions built here, in fd order.  Frozen
        only: a kcmp failure is an error, never a task that exited."""
        assert self._dedup_rows is not None
        entries, new, count, hits, compares, error = self._dedup_rows(
            fds, tid, hints, seen, self._files.buckets, self.file_count, self._more_locks
        )
        self.file_count = count
        self.hint_hits += hits
        self._files.compares += compares
        if error is not None:
            err, other_pid, other_fd = error
            exc = OSError(err, os.strerror(err))
            raise translate_oserror(exc, pid=other_pid, fd=other_fd, what="kcmp") from exc
        assert entries is not None
        assert new is not None
        made: list[NewFile] = []
        if new:
            ctx = HandlerContext(tid, self.session)
            try:
                for i in new:
                    raw = cast(RawRow, fds[i])  # an inherited row is never a new file
                    file_id = entries[i][2]
                    flags = raw.flags
                    if flags & O_CLOEXEC:  # else the row's own int, not one more per file
                        flags &= ~O_CLOEXEC
                    made.append(self._new_file(file_id, pid, tid, raw, flags, root, ctx))
            finally:
                ctx._close()
        self.fd_count += len(entries)
        if not entries:
            return FdEntries((), (), (), (), made)
        fd_numbers, cloexec, files, _ = zip(*entries, strict=True)
        return FdEntries(fd_numbers, cloexec, files, new, made)

    def close(self) -> None:
        """Release what the builder holds open: the ghost spool and the tasks' roots."""
        self.ghosts.close()
        self.paths.close()

    def _next_id(self) -> int:
        self.file_count += 1
        return self.file_count

    def _new_held(
        self, file_id: int, pid: int, tid: int, raw: RawFd, root: str, held: str, path: str
    ) -> NewFile:
        """A file held by reference (``_taskfiles``), through the same dispatch as an
        fd's, told apart by its context (``ctx.held``)."""
        ctx = HandlerContext(tid, self.session, held=held, held_path=path)
        try:
            return self._new_file(file_id, pid, tid, raw, 0, root, ctx)
        finally:
            ctx._close()

    def _new_file(
        self,
        file_id: int,
        pid: int,
        tid: int,
        raw: RawRow,
        flags: int,
        root: str,
        ctx: HandlerContext,
    ) -> NewFile:
        fd, link = raw.fd, raw.link
        facts = row_facts(pid, tid, raw, root)
        if not link and raw.st_nlink == 0 and facts.kind in PATH_KINDS:
            # No link text (a path too long for the kernel to give): unlinked all the
            # same, by its nlink, and its content is saved like any other's.
            facts = facts._replace(deleted=True)
        kind = facts.kind
        raw_rest = raw.fdinfo_rest
        rest = facts.fdinfo.extra
        handler: LoadedHandler | None = None
        data = None
        error = None
        try:
            handler = self._choose(facts)
        except HandlerFailed as err:  # a claims() predicate raised
            error, handler = self._failed(err, kind)
        io_owner = owner_error = None
        try:
            if handler is not None:
                try:
                    # _capture, inlined for the common case: a synchronous handler.
                    ctx._handler = handler
                    if handler.is_async:
                        record = self._run_async(handler.capture, facts, ctx)
                    else:
                        record = handler.capture(facts, ctx)
                    if type(record) is not handler.record_type:
                        handler.checked(record, "capture")  # raises TypeError
                    data = record
                except Exception as exc:
                    failed = HandlerFailed(handler.name, exc, pid=pid, fd=fd)
                    error, handler = self._failed(failed, kind)
            # Before the release: through the descriptor the handler took, if it did.
            if ctx.held == "fd" and owner_matters(kind, flags, raw_rest):
                io_owner, owner_error = self._io_owner(ctx, pid, fd, flags)
        finally:
            if ctx._taken:
                ctx._release()
        ghost = None
        if kind == "reg" and facts.deleted and raw.st_nlink == 0:
            ghost = self._ghost(file_id, facts, ctx)
        if handler is None:
            if self._strict:
                what = "fd" if ctx.held == "fd" else f"file ({ctx.held})"
                raise StrictViolation(
                    f"no handler claims this {kind} {what} ({link})",
                    pid=pid,
                    fd=fd if fd >= 0 else None,
                )
            self.generic[kind] += 1
            self.generic_fds.append(GenericFd(pid, fd, kind, error))
        else:
            self.used[handler.name] = handler
        new = NewFile(
            file_id,
            raw,
            pid,
            flags,
            kind,
            facts.path,
            facts.deleted,
            handler.name if handler is not None else None,
            data,
            error,
            io_owner,
            ctx.held,
        )
        new.ghost = ghost
        new.fdinfo = rest
        new.owner_error = owner_error
        if handler is not None and handler.link is not None and ctx.held == "fd":
            self._to_link.append((new, LinkRef(pid, tid, fd)))
        return new

    def _io_owner(
        self, ctx: HandlerContext, pid: int, fd: int, flags: int
    ) -> tuple[Owner | None, str | None]:
        """The description's I/O owner (None if none is set), or why it could not be
        read: a refusal (pidfd_getfd needs ptrace access; an older kernel has no pidfd
        for a thread) costs the owner, not the capture, unless --strict."""
        try:
            kind, owner, sig, uid, euid = ctx._io_owner(fd)
        except OSError as exc:
            if self._tolerant and exc.errno in _VANISHED:
                return None, None
            if self._strict:
                raise translate_oserror(exc, pid=pid, fd=fd, what="I/O owner") from exc
            return None, f"I/O owner: {exc.strerror or exc}"
        async_io = bool(flags & O_ASYNC)
        if not (owner or sig or async_io):
            return None, None
        return Owner(
            pid=owner,
            type=OWNER_TYPES.get(kind, str(kind)),
            signal=sig,
            async_io=async_io,
            uid=uid,
            euid=euid,
        ), None

    def _ghost(self, file_id: int, facts: FdFacts, ctx: HandlerContext) -> Ghost:
        """An unlinked regular file: copy its content (once per inode), or say why not."""
        st = facts.st
        try:
            ghost = self.ghosts.capture(
                file_id,
                facts.pid,
                facts.fd,
                facts.path,
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_blocks * 512,
                ctx.take_fd,
            )
        finally:
            ctx._release()
        if self._strict and ghost.state in ("too-big", "failed"):
            # Only the first description of an inode can get here: that one raised.
            msg = self.ghosts.notes[-1].message().split(": ", 1)[1]
            fd = facts.fd if facts.fd >= 0 else None  # -1: held without an fd
            raise StrictViolation(f"--strict: {msg}", pid=facts.pid, fd=fd)
        return ghost

    @property
    def needs_link(self) -> bool:
        """Whether a record of the tree has a handler with a ``link`` hook."""
        return bool(self._to_link)

    def link(self, parts: list[TaskPart]) -> list[TaskPart]:
        """While the tree is still frozen, after every task is resolved: run the
        handlers' ``link`` hooks over their records, in image order.  A hook that raises
        leaves that file generic with the error (or, under --strict, fails the capture).
        Records stay Structs (:meth:`finish` encodes them).  Updates ``parts`` in place,
        and returns them."""
        if not self._to_link:
            return parts
        session = self.session or CaptureSession(p.plan.stat.pid for p in parts)
        # Every description of the tree and an fd it was read through, for the
        # candidates of file_of and epoll_target, and each fd table by the thread it
        # was read through (an epoll's own, to try its targets' numbers first): each
        # indexed only if a hook asks.
        tables = {t.tid: t.entries for part in parts for t in part.tables}

        def table_files(tid: int) -> dict[int, int]:
            entries = tables.get(tid)
            return {} if entries is None else dict(zip(entries.fds, entries.files, strict=True))

        links = CaptureLinks(
            session,
            (
                (new.raw.st_dev, new.raw.st_ino, new.id, tid, new.raw.fd)
                for part in parts
                for tid, _, entries in part.tables
                for new in entries.new
            ),
            table_files,
        )
        failed = False
        by_name = self._dispatch.by_name
        for new, ref in self._to_link:
            if new.handler is None:
                continue
            handler = by_name[new.handler]
            assert handler.link is not None
            links._handler = handler
            links.ref = ref
            try:
                new.data = handler.checked(handler.link(new.data, links), "link")
            except Exception as exc:
                self._finish_failed(new, exc)
                failed = True
        if failed:
            self._drop_unused(parts)
        return parts

    def finish(self, parts: list[TaskPart]) -> list[TaskPart]:
        """After the thaw: run the handlers' ``finish`` hooks over their records, in
        image order, and encode every record.  A hook that raises, or a record that
        does not encode, leaves that file generic with the error (or, under --strict,
        fails the capture).  Updates ``parts`` in place, and returns them."""
        if self._more_locks:
            self._attach_locks(parts)
        session = self.session or CaptureSession(p.plan.stat.pid for p in parts)
        # What the tree holds, for CaptureTree.holds: indexed only if a hook asks.
        tree = CaptureTree(
            session,
            (
                (new.kind, new.raw.st_dev, new.raw.st_ino)
                for part in parts
                for _, _, entries in part.tables
                for new in entries.new
            ),
        )
        finishers = {h.name: h for h in self._dispatch.handlers if h.finish is not None}
        encode = msgspec.msgpack.Encoder().encode
        raw = msgspec.Raw
        failed = False
        for part in parts:
            for new in new_files(part):
                if new.handler is None:
                    continue
                # Once per record of the whole tree: kept lean for the common case,
                # a record without a finish hook.
                try:
                    handler = finishers.get(new.handler)
                    if handler is not None:
                        new.data = self._finish_one(new.data, handler, tree)
                    new.data = raw(encode(new.data))
                except Exception as exc:
                    self._finish_failed(new, exc)
                    failed = True
        if failed:
            self._drop_unused(parts)
        return parts

    def _attach_locks(self, parts: list[TaskPart]) -> None:
        for part in parts:
            for _, _, entries in part.tables:
                for new in entries.new:
                    if rests := self._more_locks.get(new.id):
                        new.more_locks = [text for rest in rests for text in lock_texts(rest)]

    def _drop_unused(self, parts: list[TaskPart]) -> None:
        # A handler whose every record failed is left without any: the image header
        # must not list it.
        used = {new.handler for part in parts for new in new_files(part) if new.handler is not None}
        self.used = {name: h for name, h in self.used.items() if name in used}

    def _finish_one(self, record: Any, handler: LoadedHandler, tree: CaptureTree) -> msgspec.Struct:
        assert handler.finish is not None
        tree._handler = handler
        return handler.checked(handler.finish(record, tree), "finish")

    def _finish_failed(self, new: NewFile, exc: Exception) -> None:
        assert new.handler is not None
        pid, fd = new.owner
        failed = HandlerFailed(new.handler, exc, pid=pid, fd=fd)
        error, _ = self._failed(failed, new.kind)
        self.generic[new.kind] += 1
        self.generic_fds.append(GenericFd(pid, fd, new.kind, error))
        new.handler, new.data, new.error = None, None, error

    def _failed(self, err: HandlerFailed, kind: str) -> tuple[str, None]:
        """A handler raised: the fd is recorded generically, with the error (or, under
        --strict, the capture fails)."""
        if self._strict:
            raise StrictViolation(f"{err.msg} on a {kind} fd", pid=err.pid, fd=err.fd) from err
        return err.msg, None
