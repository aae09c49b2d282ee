"""Record building: turn each task's raw fd reads into image records, in tree order.

Three steps, so that the tree is frozen only as long as it must be:

* :meth:`RecordBuilder.resolve` runs while the tree is frozen, one task at a time in tree
  pre-order.  It deduplicates open file descriptions (cheap key, then kcmp, which needs
  the tasks' tables unchanged), runs the handlers (which may need the live fd), and hands
  out objref ids in order of first reference, so two captures of an unchanged tree number
  everything identically.  It keeps its output compact: tuples, not records.
* :meth:`RecordBuilder.finish` runs after the thaw, once, over every resolved task: the
  handlers' optional ``finish`` hooks complete their records with what only the whole
  tree tells (is a socket's peer in it?), and every record is encoded (so encoding costs
  nothing while frozen).  No kernel.
* :func:`materialize` turns that into image records: pure, no kernel.

The comparison and the mountinfo reader are injected, so neither step does I/O of its own.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

import msgspec

from ._classify import access_mode, kernel_kind, split_deleted, task_relative_path
from ._dedup import KcmpIndex
from ._discover import TaskPlan
from ._errors import (
    AsyckptError,
    HandlerFailed,
    NoSuchProcess,
    StrictViolation,
    translate_oserror,
)
from ._plugins import (
    CaptureSession,
    CaptureTree,
    Dispatch,
    FdFacts,
    HandlerContext,
    LoadedHandler,
    StatInfo,
)
from ._procparse import FdInfo, parse_fdinfo_rest, parse_mountinfo
from ._procread import RawRow, ScanRow, TaskMeta
from ._records import NO_DATA, Fd, FdTable, File, MountEntry, MountTable, Task, Thread

__all__ = ["BodyRecord", "RecordBuilder", "TaskPart", "TaskScan", "fd_facts", "materialize"]

BodyRecord = MountTable | FdTable | File | Fd | Task

O_CLOEXEC = os.O_CLOEXEC

Ref = tuple[int, int]
"""(tid, fd): how kcmp names an fd."""

DedupRows = Callable[
    [list[ScanRow], int, dict[int, Any], dict[int, Any], dict[Any, list[Any]], int],
    tuple[
        list[tuple[int, bool, int, Any]] | None,
        list[int] | None,
        int,
        int,
        int,
        tuple[int, int, int] | None,
    ],
]
"""_fdscan.dedup_rows: (rows, tid, hints, seen, buckets, file_count) -> (entries, new
row indexes, file_count, hint hits, compares, kcmp error (errno, pid, fd) or None)."""

RunAsync = Callable[..., Any]
"""Runs ``async_fn(*args)`` to completion from the resolver's worker thread."""


def _trio_run_async(async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    # The resolver is a trio worker thread of the running capture, so the handler's
    # coroutine goes back to that event loop.  Imported here: no async handler, no trio.
    import trio

    return trio.from_thread.run(async_fn, *args)


def fd_facts(
    pid: int, tid: int, fd: int, link: str, st: StatInfo, fdinfo: FdInfo, root: str
) -> FdFacts:
    """What a handler is told about one fd, from what the scan read."""
    path, deleted = split_deleted(link, st.st_nlink)
    return FdFacts(
        pid,
        tid,
        fd,
        kernel_kind(st.st_mode, link),
        link,
        task_relative_path(path, root),
        deleted,
        st,
        fdinfo,
    )


class TaskScan(NamedTuple):
    """What the concurrent phase read for one task: its new fd tables."""

    seq: int
    plan: TaskPlan
    tables: tuple[tuple[int, int, list[ScanRow] | None], ...]
    """(tid, table id, fds) for each table in ``plan.scan``; None if its task exited.
    An fd the scan found shared with the parent's fd of the same number is an
    :data:`~asyckpt._procread.InheritedRow`, resolved from the parent's table."""


class NewFile:
    """A description seen for the first time, with what its handler made of it.

    Mutable (unlike the rest of a TaskPart): :meth:`RecordBuilder.finish` replaces the
    record by its encoding, or the handler by None when finishing fails, in place.
    """

    __slots__ = (
        "data",
        "deleted",
        "error",
        "flags",
        "handler",
        "id",
        "kind",
        "owner",
        "path",
        "raw",
    )

    def __init__(
        self,
        id: int,
        raw: RawRow,
        owner: tuple[int, int],
        flags: int,
        kind: str,
        path: str,
        deleted: bool,
        handler: str | None,
        data: msgspec.Struct | msgspec.Raw | None,
        error: str | None,
    ) -> None:
        self.id = id
        self.raw = raw
        self.owner = owner
        """(pid, fd) of the fd it was first seen through: what errors name."""
        self.flags = flags
        self.kind = kind
        self.path = path
        self.deleted = deleted
        self.handler = handler
        self.data = data
        """The handler's record, encoded by :meth:`RecordBuilder.finish` after the thaw;
        None if generic."""
        self.error = error


class TaskPart(NamedTuple):
    """One task, resolved: everything :func:`materialize` needs, and nothing live."""

    plan: TaskPlan
    meta: TaskMeta
    mountinfo: str | None
    """The mount table of the task's namespace, when this task is the first in it."""
    tables: list[tuple[int, int, list[tuple[int, bool, int, NewFile | None]]]]
    """(tid, table id, [(fd, cloexec, file id, NewFile if first seen here)])."""
    threads: tuple[tuple[int, int | None], ...]
    """(tid, fd table id) of every thread, the leader first."""


class GenericFd(NamedTuple):
    pid: int
    fd: int
    kind: str
    error: str | None


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
        dedup_rows: DedupRows | None = None,
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

    @property
    def tolerant(self) -> bool:
        """Whether tasks may exit mid-capture (the tree is not frozen)."""
        return self._tolerant

    def resolve(self, scan: TaskScan) -> TaskPart | None:
        """The task, resolved; None when it exited before its fds could be read (only
        possible when the tree is not frozen)."""
        plan, meta = scan.plan, scan.plan.meta
        pid = plan.stat.pid
        if any(fds is None for _, _, fds in scan.tables):
            if scan.seq == 0:
                raise NoSuchProcess("the process exited during the capture", pid=pid)
            self.vanished += 1
            return None
        mountinfo = None
        if meta.mnt_ns and meta.mnt_ns not in self._mnt_seen:
            self._mnt_seen.add(meta.mnt_ns)
            mountinfo = self._read_mountinfo(pid)
        parent_table = self._task_table.get(plan.stat.ppid)
        hints = self._table_fds.get(parent_table, {}) if parent_table is not None else {}
        tables = []
        for tid, table_id, fds in scan.tables:
            assert fds is not None
            seen: dict[int, tuple[object, Ref, int]] = {}
            self._table_fds[table_id] = seen
            entries = self._resolve_table(pid, tid, fds, meta.root, hints, seen)
            tables.append((tid, table_id, entries))
            self.table_count += 1
        # A table first seen in a task that has exited since was never read: the threads
        # that shared it are recorded without one.
        threads = tuple(
            (tid, table if table in self._table_fds else None) for tid, table in plan.threads
        )
        leader_table = threads[0][1]
        if leader_table is not None:
            self._task_table[pid] = leader_table
        self.task_count += 1
        return TaskPart(plan, meta, mountinfo, tables, threads)

    def _resolve_table(
        self,
        pid: int,
        tid: int,
        fds: list[ScanRow],
        root: str,
        hints: dict[int, tuple[object, Ref, int]],
        seen: dict[int, tuple[object, Ref, int]],
    ) -> list[tuple[int, bool, int, NewFile | None]]:
        if self._dedup_rows is not None and not self._tolerant:
            return self._resolve_table_fast(pid, tid, fds, root, hints, seen)
        entries: list[tuple[int, bool, int, NewFile | None]] = []
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
                fd = raw[0]
                flags = raw[13]
                cloexec = bool(flags & O_CLOEXEC)
                flags &= ~O_CLOEXEC
                # The cheap key: equal for every fd of one description, rarely equal for
                # two (separate open()s of one file at one offset); kcmp decides.
                key = (raw[3], raw[4], raw[12], flags)
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
                seen[fd] = (key, ref, file_id)
                append((fd, cloexec, file_id, new))
        finally:
            ctx._close()
        self.fd_count += len(entries)
        return entries

    def _resolve_table_fast(
        self,
        pid: int,
        tid: int,
        fds: list[ScanRow],
        root: str,
        hints: dict[int, tuple[object, Ref, int]],
        seen: dict[int, tuple[object, Ref, int]],
    ) -> list[tuple[int, bool, int, NewFile | None]]:
        """:meth:`_resolve_table` with the per-fd dedup loop in C (``dedup_rows``, over the
        same structures), then the new descriptions built here, in fd order.  Frozen
        only: a kcmp failure is an error, never a task that exited."""
        assert self._dedup_rows is not None
        entries, new, count, hits, compares, error = self._dedup_rows(
            fds, tid, hints, seen, self._files.buckets, self.file_count
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
        if new:
            ctx = HandlerContext(tid, self.session)
            try:
                for i in new:
                    fd, cloexec, file_id, _ = entries[i]
                    raw = cast(RawRow, fds[i])  # an inherited row is never a new file
                    made = self._new_file(file_id, pid, tid, raw, raw[13] & ~O_CLOEXEC, root, ctx)
                    entries[i] = (fd, cloexec, file_id, made)
            finally:
                ctx._close()
        self.fd_count += len(entries)
        return entries

    def _next_id(self) -> int:
        self.file_count += 1
        return self.file_count

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
        fd, link = raw[0], raw[1]
        st = StatInfo(*raw[2:12])
        rest = parse_fdinfo_rest(raw[15]) if raw[15] else ()
        facts = fd_facts(
            pid, tid, fd, link, st, FdInfo(raw[12], raw[13], raw[14], st.st_ino, rest), root
        )
        kind = facts.kind
        handler: LoadedHandler | None = None
        data = None
        error = None
        try:
            handler = self._choose(facts)
        except HandlerFailed as err:  # a claims() predicate raised
            error, handler = self._failed(err, kind)
        if handler is not None:
            try:
                data = self._capture(handler, facts, ctx)
            except Exception as exc:
                failed = HandlerFailed(handler.name, exc, pid=pid, fd=fd)
                error, handler = self._failed(failed, kind)
            finally:
                ctx._release()
        if handler is None:
            if self._strict:
                raise StrictViolation(f"no handler claims this {kind} fd ({link})", pid=pid, fd=fd)
            self.generic[kind] += 1
            self.generic_fds.append(GenericFd(pid, fd, kind, error))
        else:
            self.used[handler.name] = handler
        return NewFile(
            file_id,
            raw,
            (pid, fd),
            flags,
            kind,
            facts.path,
            facts.deleted,
            handler.name if handler is not None else None,
            data,
            error,
        )

    def _capture(
        self, handler: LoadedHandler, facts: FdFacts, ctx: HandlerContext
    ) -> msgspec.Struct:
        ctx._handler = handler
        if handler.is_async:
            record = self._run_async(handler.capture, facts, ctx)
        else:
            record = handler.capture(facts, ctx)
        return handler.checked(record, "capture")

    def finish(self, parts: list[TaskPart]) -> list[TaskPart]:
        """After the thaw: run the handlers' ``finish`` hooks over their records, in
        image order, and encode every record.  A hook that raises, or a record that
        does not encode, leaves that file generic with the error (or, under --strict,
        fails the capture).  Updates ``parts`` in place, and returns them."""
        session = self.session or CaptureSession(p.plan.stat.pid for p in parts)
        # What the tree holds, for CaptureTree.holds: indexed only if a hook asks.
        tree = CaptureTree(
            session,
            (
                (new.kind, new.raw[3], new.raw[4])
                for part in parts
                for _, _, entries in part.tables
                for _, _, _, new in entries
                if new is not None
            ),
        )
        finishers = {h.name: h for h in self._dispatch.handlers if h.finish is not None}
        encode = msgspec.msgpack.Encoder().encode
        raw = msgspec.Raw
        failed = False
        for part in parts:
            for _, _, entries in part.tables:
                for _, _, _, new in entries:
                    if new is None or new.handler is None:
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
        if failed:  # a handler may be left without records: the header must not list it
            used = {
                new.handler
                for part in parts
                for _, _, entries in part.tables
                for _, _, _, new in entries
                if new is not None and new.handler is not None
            }
            self.used = {name: h for name, h in self.used.items() if name in used}
        return parts

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


def materialize(part: TaskPart) -> list[BodyRecord]:
    """The image records of one resolved task, in image order (objects before use)."""
    plan, meta = part.plan, part.meta
    out: list[BodyRecord] = []
    if part.mountinfo is not None:
        out.append(
            MountTable(
                id=meta.mnt_ns,
                mounts=[
                    MountEntry(
                        mnt_id=m.mnt_id,
                        parent_id=m.parent_id,
                        dev=m.dev,
                        root=m.root,
                        mount_point=m.mount_point,
                        options=m.options,
                        fstype=m.fstype,
                        source=m.source,
                    )
                    for m in parse_mountinfo(part.mountinfo)
                ],
            )
        )
    append = out.append
    for tid, table_id, entries in part.tables:
        append(FdTable(id=table_id, owner=tid, count=len(entries)))
        for fd, cloexec, file_id, new in entries:
            if new is not None:
                append(_file_record(new))
            append(Fd(fd=fd, file=file_id, cloexec=cloexec))
    stat = plan.stat
    append(
        Task(
            pid=stat.pid,
            ppid=stat.ppid,
            comm=stat.comm,
            starttime=stat.starttime,
            state=stat.state,
            uid=meta.uid,
            gid=meta.gid,
            fd_table=part.threads[0][1],
            threads=[Thread(tid=t, fd_table=tab) for t, tab in part.threads],
            mnt_ns=meta.mnt_ns,
            root=meta.root,
        )
    )
    return out


_encode = msgspec.msgpack.Encoder().encode


def _encoded(data: msgspec.Struct | msgspec.Raw | None) -> msgspec.Raw:
    if data is None:
        return NO_DATA
    if isinstance(data, msgspec.Raw):
        return data
    return msgspec.Raw(_encode(data))  # not finished: RecordBuilder.finish was skipped


def _file_record(new: NewFile) -> File:
    raw = new.raw
    return File(
        id=new.id,
        type=new.kind,
        handler=new.handler,
        flags=new.flags,
        access=access_mode(new.flags),
        pos=raw[12],
        mnt_id=raw[14],
        dev=raw[3],
        ino=raw[4],
        rdev=raw[5],
        path=new.path,
        deleted=new.deleted,
        uid=raw[7],
        gid=raw[8],
        st_mode=raw[2],
        nlink=raw[6],
        size=raw[9],
        mtime_ns=raw[10],
        fdinfo=list(parse_fdinfo_rest(raw[15])) if raw[15] else [],
        data=_encoded(new.data),
        error=new.error,
    )
