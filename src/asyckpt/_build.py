"""Record building: turn each task's raw fd reads into image records, in tree order.

This is where open file descriptions are deduplicated (cheap key, then kcmp), handlers
are dispatched, and objref ids are handed out, in the order of first reference, so two
captures of an unchanged tree number everything identically.  It runs one task at a time
in tree pre-order; the comparisons and the mountinfo reader are injected, which keeps it
free of I/O of its own.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from ._classify import access_mode, kernel_kind, split_deleted, task_relative_path
from ._dedup import KcmpIndex
from ._discover import TaskPlan
from ._errors import HandlerFailed, StrictViolation
from ._plugins import Dispatch, FdFacts, HandlerContext, LoadedHandler
from ._procparse import parse_mountinfo
from ._procread import RawFd, TaskMeta
from ._records import Fd, FdTable, File, MountEntry, MountTable, Task, Thread

__all__ = ["BodyRecord", "RecordBuilder", "TaskScan"]

BodyRecord = MountTable | FdTable | File | Fd | Task

O_CLOEXEC = os.O_CLOEXEC


class TaskScan(NamedTuple):
    """What the concurrent phase read for one task: its metadata and new fd tables."""

    seq: int
    plan: TaskPlan
    meta: TaskMeta
    tables: tuple[tuple[int, int, list[RawFd]], ...]
    """(tid, table id, fds) for each table in ``plan.scan``."""


class GenericFd(NamedTuple):
    pid: int
    fd: int
    kind: str
    error: str | None


class RecordBuilder:
    """Builds the body records of one capture, one task at a time, in tree order."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        compare_files: Callable[[tuple[int, int], tuple[int, int]], int],
        read_mountinfo: Callable[[int], str],
        strict: bool = False,
        context_factory: Callable[[int], HandlerContext] = HandlerContext,
    ) -> None:
        self._dispatch = dispatch
        self._files: KcmpIndex[tuple[int, int], File] = KcmpIndex(compare_files)
        self._read_mountinfo = read_mountinfo
        self._strict = strict
        self._context_factory = context_factory
        self._encoder = msgspec.msgpack.Encoder()
        self._mnt_seen: set[int] = set()
        self.file_count = 0
        self.fd_count = 0
        self.task_count = 0
        self.table_count = 0
        self.generic: Counter[str] = Counter()
        self.generic_fds: list[GenericFd] = []
        self.used: dict[str, LoadedHandler] = {}

    def build(self, scan: TaskScan) -> list[BodyRecord]:
        plan, meta = scan.plan, scan.meta
        pid = plan.stat.pid
        out: list[BodyRecord] = []
        if meta.mnt_ns and meta.mnt_ns not in self._mnt_seen:
            self._mnt_seen.add(meta.mnt_ns)
            out.append(self._mount_table(pid, meta.mnt_ns))
        for tid, table_id, fds in scan.tables:
            out.append(FdTable(id=table_id, owner=tid, count=len(fds)))
            self.table_count += 1
            ctx = self._context_factory(tid)
            try:
                for raw in fds:
                    self._add_fd(out, pid, tid, raw, meta.root, ctx)
            finally:
                ctx._close()
        leader_table = plan.threads[0][1]
        out.append(
            Task(
                pid=pid,
                ppid=plan.stat.ppid,
                comm=plan.stat.comm,
                starttime=plan.stat.starttime,
                state=plan.stat.state,
                uid=meta.uid,
                gid=meta.gid,
                fd_table=leader_table,
                threads=[Thread(tid=t, fd_table=tab) for t, tab in plan.threads],
                mnt_ns=meta.mnt_ns,
                root=meta.root,
            )
        )
        self.task_count += 1
        return out

    def _mount_table(self, pid: int, ns: int) -> MountTable:
        mounts = parse_mountinfo(self._read_mountinfo(pid))
        return MountTable(
            id=ns,
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
                for m in mounts
            ],
        )

    def _add_fd(
        self, out: list[BodyRecord], pid: int, tid: int, raw: RawFd, root: str, ctx: HandlerContext
    ) -> None:
        info, st = raw.info, raw.st
        cloexec = bool(info.flags & O_CLOEXEC)
        flags = info.flags & ~O_CLOEXEC
        # The cheap key: equal for every fd of one description, and rarely equal for two
        # descriptions (separate open()s of one file at the same offset); kcmp decides.
        key = (st.st_dev, st.st_ino, info.pos, flags)
        file, new = self._files.lookup(
            key, (tid, raw.fd), lambda: self._make_file(pid, tid, raw, flags, root, ctx)
        )
        if new:
            out.append(file)
        out.append(Fd(fd=raw.fd, file=file.id, cloexec=cloexec))
        self.fd_count += 1

    def _make_file(
        self, pid: int, tid: int, raw: RawFd, flags: int, root: str, ctx: HandlerContext
    ) -> File:
        st, info = raw.st, raw.info
        kind = kernel_kind(st.st_mode, raw.link)
        path, deleted = split_deleted(raw.link, st.st_nlink)
        path = task_relative_path(path, root)
        facts = FdFacts(pid, tid, raw.fd, kind, raw.link, path, deleted, st, info)
        handler = self._dispatch.choose(facts)
        data = None
        error = None
        if handler is not None:
            try:
                data = msgspec.Raw(self._encoder.encode(handler.handler.capture(facts, ctx)))
            except Exception as exc:
                err = HandlerFailed(handler.name, exc, pid=pid, fd=raw.fd)
                if self._strict:
                    raise StrictViolation(f"{err.msg} on a {kind} fd", pid=pid, fd=raw.fd) from exc
                error = err.msg
                handler = None
            finally:
                ctx._release()
        if handler is None:
            if self._strict and error is None:
                raise StrictViolation(
                    f"no handler claims this {kind} fd ({raw.link})", pid=pid, fd=raw.fd
                )
            self.generic[kind] += 1
            self.generic_fds.append(GenericFd(pid, raw.fd, kind, error))
        else:
            self.used[handler.name] = handler
        self.file_count += 1
        file = File(
            id=self.file_count,
            type=kind,
            handler=handler.name if handler is not None else None,
            flags=flags,
            access=access_mode(flags),
            pos=info.pos,
            mnt_id=info.mnt_id,
            dev=st.st_dev,
            ino=st.st_ino,
            rdev=st.st_rdev,
            path=path,
            deleted=deleted,
            uid=st.st_uid,
            gid=st.st_gid,
            st_mode=st.st_mode,
            nlink=st.st_nlink,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            fdinfo=list(info.extra),
            error=error,
        )
        if data is not None:
            file.data = data
        return file
