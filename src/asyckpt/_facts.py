"""What a handler is told about one fd (:class:`FdFacts`), from what the scan read.

Pure: :func:`fd_facts` composes the classification helpers (``_classify``) and is the
definition; :func:`row_facts` makes the same facts from a scan row on the resolver's hot
path (once per new description while frozen), and a differential test keeps it equal.
"""

from __future__ import annotations

from typing import Any

from ._classify import kernel_kind, split_deleted, task_relative_path
from ._plugins.contract import FdFacts, StatInfo
from ._procparse import FdInfo, parse_fdinfo_rest
from ._rows import RawRow

__all__ = ["fd_facts", "row_facts"]

_tuple_new: Any = tuple.__new__
_S_IFMT = 0o170000
# kernel_kind's answer by file type, where the link text cannot change it (anon_inode:
# and pidfd: links, and a FIFO's path, are left to kernel_kind itself).
_FMT_KINDS = {
    0o100000: "reg",
    0o040000: "dir",
    0o120000: "link",
    0o010000: "pipe",
    0o140000: "socket",
    0o020000: "chr",
    0o060000: "blk",
}
_ANON_PREFIXES = ("anon_inode:", "pidfd:")
_DELETED = " (deleted)"


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


def row_facts(pid: int, tid: int, raw: RawRow, root: str) -> FdFacts:
    """:func:`fd_facts` of a scan row: equal, but made once per new description while
    frozen, so the named tuples are made with tuple.__new__ (their generated __new__ is
    a Python call each) and the pure helpers are asked only off their common path."""
    fd, link, mode = raw.fd, raw.link, raw.st_mode
    raw_rest = raw.fdinfo_rest
    kind = _FMT_KINDS.get(mode & _S_IFMT)
    if (
        kind is None
        or link.startswith(_ANON_PREFIXES)
        or (kind == "pipe" and not link.startswith("pipe:["))
    ):
        kind = kernel_kind(mode, link)
    if link[:1] == "/" and (link.endswith(_DELETED) or raw.st_nlink == 0):
        path, deleted = split_deleted(link, raw.st_nlink)
    else:
        path, deleted = link, False
    if root != "/":
        path = task_relative_path(path, root)
    fdinfo = _tuple_new(
        FdInfo,
        (
            raw.pos,
            raw.flags,
            raw.mnt_id,
            raw.st_ino,
            parse_fdinfo_rest(raw_rest) if raw_rest else (),
        ),
    )
    facts: FdFacts = _tuple_new(
        FdFacts,
        (pid, tid, fd, kind, link, path, deleted, _tuple_new(StatInfo, raw[2:12]), fdinfo),
    )
    return facts
