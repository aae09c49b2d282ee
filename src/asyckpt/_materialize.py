"""Materializing: a resolved task (:class:`~asyckpt._parts.TaskPart`) becomes its image
records, after the thaw.  Pure: no kernel, no handler runs here (their records were
encoded by ``RecordBuilder.finish``).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from ._classify import access_mode
from ._names import split_name, split_names
from ._names import text as as_text
from ._parts import NewFile, TaskFilesPart, TaskPart, mappings
from ._procparse import Mount, lock_texts, merge_lock_texts, parse_lock, parse_mountinfo
from ._records import (
    NO_DATA,
    Content,
    Fd,
    FdTable,
    File,
    Holders,
    Lock,
    Mapping,
    MountEntry,
    MountTable,
    Task,
    Thread,
)

__all__ = ["BodyRecord", "materialize"]

BodyRecord = MountTable | FdTable | File | Content | Fd | Task | Holders

_BOOL = (False, True)
_NO_NEW: tuple[int, NewFile | None] = (-1, None)


def materialize(part: TaskPart) -> list[BodyRecord]:
    """The image records of one resolved task, in image order (objects before use)."""
    plan, meta = part.plan, part.meta
    out: list[BodyRecord] = []
    if part.mountinfo is not None:
        out.append(
            MountTable(
                id=meta.mnt_ns,
                mounts=[_mount_entry(m) for m in parse_mountinfo(part.mountinfo)],
            )
        )
    append = out.append
    for tid, table_id, entries in part.tables:
        append(FdTable(id=table_id, owner=tid, count=len(entries)))
        # Once per fd after the thaw: one loop over the arrays (as lists: their ints made
        # in one call), each first-seen description's record before its fd's.
        news = iter(zip(entries.new_at.tolist(), entries.new, strict=True))
        at, new = next(news, _NO_NEW)
        rows = zip(entries.fds.tolist(), entries.cloexec, entries.files.tolist(), strict=True)
        for i, (fd, cloexec, file_id) in enumerate(rows):
            if i == at:
                assert new is not None
                append(_file_record(new))
                at, new = next(news, _NO_NEW)
            append(Fd(fd=fd, file=file_id, cloexec=_BOOL[cloexec]))
    files = part.files
    held: dict[str, Any] = {}
    threads = [Thread(tid=t, fd_table=tab) for t, tab in part.threads]
    if files is not None:
        for new in files.new:
            append(_file_record(new))
        held = _held_fields(files)
        for thread in threads:
            own = files.threads.get(thread.tid)
            if own is not None:
                thread.cwd, thread.root_file, thread.namespaces = own
    stat = plan.stat
    comm, comm_bytes = split_name(stat.comm)
    root, root_bytes = split_name(meta.root)
    append(
        Task(
            pid=stat.pid,
            ppid=stat.ppid,
            comm=comm,
            comm_bytes=comm_bytes,
            starttime=stat.starttime,
            state=stat.state,
            uid=meta.uid,
            gid=meta.gid,
            fd_table=part.threads[0][1],
            threads=threads,
            mnt_ns=meta.mnt_ns,
            root=root,
            root_bytes=root_bytes,
            session=stat.session,
            pgrp=stat.pgrp,
            tty_nr=stat.tty_nr,
            **held,
        )
    )
    return out


def _held_fields(files: TaskFilesPart) -> dict[str, Any]:
    """The Task fields of its files held by reference."""
    fields: dict[str, Any] = {
        "cwd": files.cwd,
        "root_file": files.root,
        "exe": files.exe,
        "mappings": [
            Mapping(start=s, end=e, perms=p, offset=o, file=f) for s, e, p, o, f in mappings(files)
        ],
        "namespaces": files.namespaces,
        "task_files_error": None if files.error is None else as_text(files.error),
    }
    if files.cmdline is not None:
        # NUL-terminated arguments; a process may have rewritten its own (setproctitle).
        args = [os.fsdecode(a) for a in files.cmdline.split(b"\0")]
        if args and not args[-1]:
            args.pop()
        fields["cmdline"], fields["cmdline_bytes"] = split_names(args)
    return fields


def _mount_entry(m: Mount) -> MountEntry:
    root, root_bytes = split_name(m.root)
    mount_point, mount_point_bytes = split_name(m.mount_point)
    fstype, fstype_bytes = split_name(m.fstype)
    source, source_bytes = split_name(m.source)
    return MountEntry(
        mnt_id=m.mnt_id,
        parent_id=m.parent_id,
        dev=as_text(m.dev),
        root=root,
        mount_point=mount_point,
        options=as_text(m.options),
        fstype=fstype,
        source=source,
        root_bytes=root_bytes,
        mount_point_bytes=mount_point_bytes,
        fstype_bytes=fstype_bytes,
        source_bytes=source_bytes,
    )


_encode = msgspec.msgpack.Encoder().encode


def _encoded(data: msgspec.Struct | msgspec.Raw | None) -> msgspec.Raw:
    if data is None:
        return NO_DATA
    if isinstance(data, msgspec.Raw):
        return data
    return msgspec.Raw(_encode(data))  # not finished: RecordBuilder.finish was skipped


def _file_record(new: NewFile) -> File:
    # Once per description after the thaw.  One keyword dict, unpacked: msgspec matches
    # a dict's keys faster than a call's 29 keyword names; fields left at their default
    # are not passed.
    raw = new.raw
    flags = new.flags
    rest = raw.fdinfo_rest
    data = new.data
    held = new.held != "fd"
    fields: dict[str, Any] = {
        "id": new.id,
        "type": new.kind,
        "handler": new.handler,
        "flags": flags,
        "access": access_mode(flags),
        "pos": raw.pos,
        "mnt_id": raw.mnt_id,
        "dev": raw.st_dev,
        "ino": raw.st_ino,
        "rdev": raw.st_rdev,
        "deleted": new.deleted,
        "uid": raw.st_uid,
        "gid": raw.st_gid,
        "st_mode": raw.st_mode,
        "nlink": raw.st_nlink,
        "size": raw.st_size,
        "mtime_ns": raw.st_mtime_ns,
        "data": data if type(data) is msgspec.Raw else _encoded(data),
        "owner": new.io_owner,
        "path_state": new.path_state,
        "allocated": raw.st_blocks * 512,
    }
    if held:
        # Held by reference: no description, so no flags, offset or fdinfo of its own.
        fields.update(flags=0, access="path", pos=0, description=False)
    # Names are bytes (``_names``): the common case, ASCII, costs one check each.
    path = new.path
    if path.isascii():
        fields["path"] = path
    else:
        fields["path"], fields["path_bytes"] = split_name(path)
    if rest:
        fdinfo = new.fdinfo
        if rest.isascii():
            fields["fdinfo"] = list(fdinfo)
        else:
            values, raws = split_names([value for _, value in fdinfo])
            fields["fdinfo"] = [
                (as_text(key), v) for (key, _), v in zip(fdinfo, values, strict=True)
            ]
            fields["fdinfo_bytes"] = raws
    if new.error is not None:
        fields["error"] = as_text(new.error)
    if new.owner_error is not None:
        fields["owner_error"] = as_text(new.owner_error)
    if new.more_locks or (rest and b"lock:" in rest):
        fields["locks"] = _locks(rest, new.more_locks)
    ghost = new.ghost
    if ghost is None:
        fields["ghost"] = "none"
    else:
        fields["ghost"] = ghost.state
        fields["ghost_file"] = ghost.file
        fields["ghost_error"] = None if ghost.error is None else as_text(ghost.error)
    return File(**fields)


def _locks(fdinfo_rest: bytes, more: list[str] | None) -> list[Lock]:
    texts = lock_texts(fdinfo_rest)
    # A lock line is the kernel's format, ASCII; a byte that is not would be escaped.
    if more:
        texts = merge_lock_texts(texts, more)
    return [parse_lock(as_text(line)) for line in texts]
