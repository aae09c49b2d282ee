"""What a reader checks beyond the types: values the record types cannot pin, and every
reference between records.

An image is a file people pass around, and its sha256 is no signature: anyone can edit
one and recompute it.  So nothing in it is believed until it is checked, and a check that
fails is an :class:`ImageCorrupt` naming the record and the field, never an error deep in a
renderer.  The record types (``_records``) already bound the integers and close the
enumerations they can; this module holds the rest (docs/image-format.md, "What a reader
checks"):

- enumerations the type leaves open for the writer's sake (the header's freezer words);
- the nesting depth of handler records (``File.data``), which nothing else bounds and which
  every later reader of them (msgspec, the JSON export) walks recursively;
- ids: unique where they are defined, and every reference to one resolving;
- names: a name field's text is the escaped form of its ``_bytes`` companion when it has
  one (what is printed is the name that is kept).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from ._errors import ImageCorrupt
from ._names import bad_name
from ._records import FORMAT_VERSION, NO_DATA, File, Header, Holders, MountTable, Task

__all__ = [
    "MAX_DATA_DEPTH",
    "check_file",
    "check_header",
    "check_names",
    "check_references",
    "check_task",
    "msgpack_depth",
]

MAX_DATA_DEPTH = 32
"""Deepest nesting of maps and arrays a handler record may have (the bundled handlers
need 4); deeper, a recursive reader could exhaust the interpreter's stack."""

_FREEZERS = frozenset({"cgroup-v1", "cgroup-v2", "none"})
_SCOPES = frozenset({"transient", "in-place", "none"})

# Header bytes that start a map or an array: fixmap, fixarray, array16/32, map16/32.
_CONTAINER_BYTES = frozenset(range(0x80, 0xA0)) | {0xDC, 0xDD, 0xDE, 0xDF}
_OTHER_BYTES = bytes(b for b in range(256) if b not in _CONTAINER_BYTES)


def check_header(name: str, header: Header) -> None:
    if header.freezer not in _FREEZERS:
        raise ImageCorrupt(
            f"{name}: header: freezer {header.freezer!r} is not one of cgroup-v1, cgroup-v2, none"
        )
    if header.freezer_scope not in _SCOPES:
        raise ImageCorrupt(
            f"{name}: header: freezer_scope {header.freezer_scope!r} is not one of "
            "transient, in-place, none"
        )


def check_names(name: str, rec: Header | File | Task | MountTable | Holders) -> None:
    """Every name field of the record and its ``_bytes`` agree (docs/image-format.md,
    "Names")."""
    parts: list[object] = [rec]
    if isinstance(rec, MountTable):
        parts = list(rec.mounts)
    elif isinstance(rec, Holders):
        parts = list(rec.fds)
    for part in parts:
        field = bad_name(part)
        if field is not None:
            kind = type(rec).__name__.lower()
            raise ImageCorrupt(f"{name}: a {kind} record's {field} is not its {field}_bytes")


def check_file(name: str, rec: File, files: Mapping[int, File]) -> list[int]:
    """A file record against itself and the files defined before it (``files``).

    Returns the file ids its handler record refers to (epoll targets), which may be
    defined later: :func:`check_references` checks them once every record is in.
    """
    if rec.id in files:
        raise ImageCorrupt(f"{name}: file {rec.id} is defined twice")
    if rec.ghost_file is not None:
        _check_ghost_file(name, rec, files)
    if not rec.description and (rec.flags or rec.access != "path" or rec.pos or rec.fdinfo):
        raise ImageCorrupt(
            f"{name}: file {rec.id}: held by reference (description false) but has "
            "flags, an offset, fdinfo or an access other than path"
        )
    if rec.data == NO_DATA:
        return []
    raw = bytes(rec.data)
    # Nesting needs a container header per level: a record with fewer of them than the
    # limit (nearly all) is not walked.
    if (
        len(raw) > MAX_DATA_DEPTH
        and len(raw.translate(None, _OTHER_BYTES)) > MAX_DATA_DEPTH
        and msgpack_depth(raw, MAX_DATA_DEPTH) is None
    ):
        raise ImageCorrupt(f"{name}: file {rec.id}: data nests deeper than {MAX_DATA_DEPTH} levels")
    return _epoll_targets(name, rec.id, raw) if b"asyckpt.epoll" in raw else []


def _check_ghost_file(name: str, rec: File, files: Mapping[int, File]) -> None:
    if rec.ghost != "saved":
        raise ImageCorrupt(
            f"{name}: file {rec.id}: ghost_file {rec.ghost_file} with ghost {rec.ghost!r}"
        )
    if rec.ghost_file == rec.id:
        return
    holder = files.get(rec.ghost_file or 0)
    if holder is None:
        raise ImageCorrupt(f"{name}: file {rec.id}'s content is in undefined file {rec.ghost_file}")
    if holder.ghost_file != holder.id:
        raise ImageCorrupt(
            f"{name}: file {rec.id}: ghost_file {rec.ghost_file} holds no content of its own"
        )


def check_task(
    name: str,
    rec: Task,
    fd_tables: Mapping[int, object],
    files: Mapping[int, File] | None = None,
    version: int = FORMAT_VERSION,
) -> None:
    if rec.fd_table is not None and rec.fd_table not in fd_tables:
        raise ImageCorrupt(f"{name}: task {rec.pid} refers to an undefined fd table")
    for th in rec.threads:
        if th.fd_table is not None and th.fd_table not in fd_tables:
            raise ImageCorrupt(
                f"{name}: task {rec.pid}: thread {th.tid} refers to undefined fd table "
                f"{th.fd_table}"
            )
    if files is not None:
        _check_task_files(name, rec, files, version)


def _check_task_files(name: str, rec: Task, files: Mapping[int, File], version: int) -> None:
    """A task's files held by reference (format 4): each a file record, defined before
    the task, with ``description`` false; mappings non-empty, in address order, apart."""
    where = f"{name}: task {rec.pid}"
    held = [("cwd", rec.cwd), ("root_file", rec.root_file), ("exe", rec.exe)]
    for th in rec.threads:
        held += [(f"thread {th.tid} cwd", th.cwd), (f"thread {th.tid} root_file", th.root_file)]
    present = (
        any(file_id is not None for _, file_id in held)
        or rec.mappings
        or rec.namespaces
        or rec.cmdline is not None
        or rec.cmdline_bytes is not None
        or rec.task_files_error is not None
        or any(th.namespaces is not None for th in rec.threads)
    )
    if present and version < 4:
        raise ImageCorrupt(f"{where}: task files in a version {version} image")
    for field, file_id in held:
        if file_id is not None:
            _check_held(where, field, file_id, files)
    end = 0
    for m in rec.mappings:
        if m.start >= m.end:
            raise ImageCorrupt(f"{where}: mapping {m.start:#x}-{m.end:#x} is empty")
        if m.start < end:
            raise ImageCorrupt(
                f"{where}: mapping {m.start:#x}-{m.end:#x} is out of address order "
                "or overlaps the one before"
            )
        end = m.end
        _check_held(where, f"mapping {m.start:#x}", m.file, files)
    if rec.cmdline_bytes is not None and rec.cmdline is None:
        raise ImageCorrupt(f"{where}: cmdline_bytes without cmdline")


def _check_held(where: str, field: str, file_id: int, files: Mapping[int, File]) -> None:
    f = files.get(file_id)
    if f is None:
        raise ImageCorrupt(f"{where}: {field} refers to undefined file {file_id}")
    if f.description:
        raise ImageCorrupt(
            f"{where}: {field} refers to file {file_id}, an open file description "
            "(a file held by reference has description false)"
        )


def _epoll_targets(name: str, file_id: int, raw: bytes) -> list[int]:
    """The file ids an epoll record (the bundled anon handler's ``asyckpt.epoll``) says it
    watches: ``targets[].file``, by the raw fields, so checked without the handler."""
    try:
        data = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return []
    if not isinstance(data, dict) or data.get("kind") != "asyckpt.epoll":
        return []
    targets = data.get("targets")
    if not isinstance(targets, list):
        raise ImageCorrupt(f"{name}: file {file_id}: data.targets is not an array")
    out = []
    for t in targets:
        file = t.get("file") if isinstance(t, dict) else None
        if file is not None:
            if not isinstance(file, int) or isinstance(file, bool):
                raise ImageCorrupt(
                    f"{name}: file {file_id}: data.targets[].file {file!r} is not an id"
                )
            out.append(file)
    return out


def check_references(
    name: str, watched: Iterable[tuple[int, int]], files: Mapping[int, File]
) -> None:
    """The references that may point forward, checked once every record is in."""
    for file_id, target in watched:
        if target not in files:
            raise ImageCorrupt(
                f"{name}: file {file_id}: data.targets[].file {target} is not a file of the image"
            )


def _length(data: bytes, pos: int, size: int) -> int:
    return int.from_bytes(data[pos : pos + size], "big")


# Header byte -> (bytes of length field, fixed payload) for the scalars with a payload.
_SIZED: dict[int, tuple[int, int]] = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),  # bin
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),  # ext (+ its type byte)
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),  # str
}  # fmt: skip
_FIXED: dict[int, int] = {
    0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext: type byte + data
    0xC0: 0, 0xC2: 0, 0xC3: 0,
}  # fmt: skip
_COUNTED: dict[int, tuple[int, int]] = {
    0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2),  # (count bytes, items per count)
}  # fmt: skip


def msgpack_depth(data: bytes, limit: int) -> int | None:
    """The nesting depth of the one MessagePack object ``data`` holds (a scalar is 0), or
    None when it nests deeper than ``limit`` or is not well formed.  Iterative: a hostile
    depth costs no stack."""
    pos, end = 0, len(data)
    pending = [1]  # objects still to read at each open level
    deepest = 0
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            return None
        b = data[pos]
        pos += 1
        count = 0
        if b <= 0x7F or b >= 0xE0:
            continue
        if b <= 0x8F:
            count = (b & 0x0F) * 2
        elif b <= 0x9F:
            count = b & 0x0F
        elif b <= 0xBF:
            pos += b & 0x1F
            continue
        elif b in _FIXED:
            pos += _FIXED[b]
            continue
        elif b in _SIZED:
            size, extra = _SIZED[b]
            pos += size + extra + _length(data, pos, size)
            continue
        elif b in _COUNTED:
            size, per = _COUNTED[b]
            count = _length(data, pos, size) * per
            pos += size
        else:  # 0xc1: never used
            return None
        pending.append(count)
        depth = len(pending) - 1
        if depth > limit:
            return None
        deepest = max(deepest, depth)
    return deepest if pos == end else None
