"""Pure parsers for the /proc and cgroupfs text asyckpt reads.

Nothing here does I/O: every function takes the bytes or text that the kernel produced and
returns a value, so each one is tested on literal input (tests/test_procparse.py).
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from ._records import Lock
from ._rows import MapRow

__all__ = [
    "FdInfo",
    "Mount",
    "TaskStat",
    "holds_lease",
    "lock_texts",
    "merge_lock_texts",
    "parse_cgroup",
    "parse_cgroup_events",
    "parse_fdinfo",
    "parse_fdinfo_rest",
    "parse_lock",
    "parse_maps",
    "parse_mountinfo",
    "parse_stat",
    "parse_tgid",
    "split_fdinfo",
    "unescape_mount_path",
]

PF_KTHREAD = 0x00200000


_BLANKS = " \t"
"""What the kernel pads fdinfo values with; anything else (\x1c, \xa0...) may be a
name's own (``str.strip`` would take it)."""


def _lines(text: str) -> list[str]:
    """The kernel's lines: ended by "\n" only.  (``str.splitlines`` also splits at
    \x1c-\x1e, \x85, \u2028..., which a name inside a line may hold.)"""
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


class TaskStat(NamedTuple):
    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    num_threads: int
    starttime: int
    pgrp: int = 0
    session: int = 0
    tty_nr: int = 0
    """The controlling terminal's device number (userspace dev_t); 0 for none."""

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def parse_stat(data: bytes) -> TaskStat:
    """Parse ``/proc/PID/stat``.

    The command name may contain spaces and parentheses, so it ends at the *last* ``)``.
    """
    open_paren = data.index(b"(")
    close_paren = data.rindex(b")")
    pid = int(data[:open_paren])
    comm = data[open_paren + 1 : close_paren].decode("utf-8", "surrogateescape")
    rest = data[close_paren + 2 :].split()
    # rest[0] is field 3 of proc(5), so field N is rest[N - 3].
    return TaskStat(
        pid=pid,
        comm=comm,
        state=rest[0].decode(),
        ppid=int(rest[1]),
        flags=int(rest[6]),
        num_threads=int(rest[17]),
        starttime=int(rest[19]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        tty_nr=int(rest[4]),
    )


class FdInfo(NamedTuple):
    pos: int
    flags: int
    mnt_id: int
    ino: int | None
    # Every line after the common ones, in kernel order ("lock:", "tfd:", "eventfd-count:"...).
    extra: tuple[tuple[str, str], ...]


_FDINFO_HEAD = {b"pos": 10, b"flags": 8, b"mnt_id": 10, b"ino": 10}


def split_fdinfo(data: bytes) -> tuple[int, int, int, bytes]:
    """(pos, flags, mnt_id, rest) of an fdinfo: the leading lines the kernel writes for
    every fd, parsed, and everything after them (and "ino:") unparsed.

    The fast path of the scan (the C reader computes the same); ``rest`` is parsed only
    for the files a capture keeps.
    """
    values = {b"pos": 0, b"flags": 0, b"mnt_id": 0}
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        key, sep, value = data[start:end].partition(b":")
        base = _FDINFO_HEAD.get(key)
        if not sep or base is None:
            break
        values[key] = int(value.strip(), base) if value.strip() else 0
        start = end + 1
    return values[b"pos"], values[b"flags"], values[b"mnt_id"], data[start:]


def parse_fdinfo_rest(rest: bytes) -> tuple[tuple[str, str], ...]:
    """The lines :func:`split_fdinfo` left, as (key, value) pairs in kernel order."""
    out = []
    for line in _lines(rest.decode("utf-8", "surrogateescape")):
        key, sep, value = line.partition(":")
        if sep:
            out.append((key, value.strip(_BLANKS)))
    return tuple(out)


def parse_fdinfo(data: bytes) -> FdInfo:
    """Parse ``/proc/PID/fdinfo/FD``.  ``flags`` is octal in the kernel's text."""
    pos = flags = mnt_id = 0
    ino: int | None = None
    extra: list[tuple[str, str]] = []
    for line in _lines(data.decode("utf-8", "surrogateescape")):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip(_BLANKS)
        if key == "pos":
            pos = int(value)
        elif key == "flags":
            flags = int(value, 8)
        elif key == "mnt_id":
            mnt_id = int(value)
        elif key == "ino":
            ino = int(value)
        else:
            extra.append((key, value))
    return FdInfo(pos, flags, mnt_id, ino, tuple(extra))


def parse_lock(text: str) -> Lock:
    """Parse the value of one fdinfo ``lock:`` line (fs/locks.c ``lock_get_status``),
    e.g. ``1: POSIX  ADVISORY  WRITE 14773 fe:00:2146786 5 14``."""
    tokens = text.split()
    if tokens and tokens[0].endswith(":"):
        tokens = tokens[1:]  # the lock's number within this listing
    if tokens and tokens[0] == "->":
        tokens = tokens[1:]  # a waiter (only /proc/locks lists them, but be lenient)
    unparsed = Lock(
        type=None, mode=None, access=None, pid=None, dev=None, ino=None, start=None, end=None,
        text=text,
    )  # fmt: skip
    if len(tokens) != 7:
        return unparsed
    kind, mode, access, pid, where, start, end = tokens
    try:
        dev: int | None = None
        ino: int | None = None
        if not where.startswith("<none>"):
            major, minor, inode = where.split(":")
            dev, ino = os.makedev(int(major, 16), int(minor, 16)), int(inode)
        return Lock(
            type=kind,
            mode=mode,
            access=access,
            pid=int(pid),
            dev=dev,
            ino=ino,
            start=int(start),
            end=None if end == "EOF" else int(end),
            text=text,
        )
    except ValueError:
        return unparsed


def lock_texts(rest: bytes) -> list[str]:
    """The values of the ``lock:`` lines among the fdinfo lines :func:`split_fdinfo`
    left, in kernel order."""
    if b"lock:" not in rest:
        return []
    return [value for key, value in parse_fdinfo_rest(rest) if key == "lock"]


def merge_lock_texts(first: list[str], more: list[str]) -> list[str]:
    """``first`` (one fd's ``lock:`` lines), then those of ``more`` (other fds' of the
    same description) that list a lock not listed yet.  Each fdinfo numbers its own
    listing, so a lock shown through several fds (an flock, an OFD lock, a lease) is
    told apart by the rest of its line."""
    out = list(first)
    seen = {_unnumbered(text) for text in first}
    for text in more:
        key = _unnumbered(text)
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def _unnumbered(text: str) -> str:
    words = text.split()
    return " ".join(words[1:] if words and words[0].endswith(":") else words)


_LEASES = ("LEASE", "DELEG")


def holds_lease(rest: bytes) -> bool:
    """Whether one of those ``lock:`` lines is a lease (or an NFS delegation, the
    kernel's kind of lease): its break is signalled to the description's owner."""
    return any(parse_lock(text).type in _LEASES for text in lock_texts(rest))


class Mount(NamedTuple):
    mnt_id: int
    parent_id: int
    dev: str
    root: str
    mount_point: str
    options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: str


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape_mount_path(text: str) -> str:
    """Undo the kernel's octal escaping of space, tab, newline and backslash."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/PID/mountinfo``; see proc(5) for the field layout."""
    mounts = []
    for line in _lines(text):
        if not line:
            continue
        fields = line.split(" ")
        sep = fields.index("-", 6)
        mounts.append(
            Mount(
                mnt_id=int(fields[0]),
                parent_id=int(fields[1]),
                dev=fields[2],
                root=unescape_mount_path(fields[3]),
                mount_point=unescape_mount_path(fields[4]),
                options=fields[5],
                optional=tuple(fields[6:sep]),
                fstype=fields[sep + 1],
                source=unescape_mount_path(fields[sep + 2]),
                super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            )
        )
    return mounts


def parse_tgid(data: bytes) -> int:
    """The thread group id (the process's pid) from ``/proc/PID/status``."""
    for line in data.splitlines():
        if line.startswith(b"Tgid:"):
            return int(line[5:])
    raise ValueError("no Tgid line")


def parse_cgroup(data: bytes) -> dict[str, str]:
    """Parse ``/proc/PID/cgroup`` into {controller: path}; the v2 entry has key ``""``.

    A v1 hierarchy with several controllers ("cpu,cpuacct") gets one key per controller,
    and a named hierarchy keeps its ``name=`` prefix.
    """
    result: dict[str, str] = {}
    # A cgroup's name is bytes, chosen by whoever it is delegated to: kept as os
    # functions take it (surrogateescape), to move a task back exactly there.
    for line in _lines(data.decode("utf-8", "surrogateescape")):
        _hid, controllers, path = line.split(":", 2)
        if not controllers:
            result[""] = path
        else:
            for ctrl in controllers.split(","):
                result[ctrl] = path
    return result


def parse_cgroup_events(data: bytes) -> dict[str, int]:
    """Parse a v2 ``cgroup.events`` file ("populated 1\\nfrozen 0\\n")."""
    result = {}
    for line in data.decode().splitlines():
        key, _, value = line.partition(" ")
        if value:
            result[key] = int(value)
    return result


def parse_maps(data: bytes) -> list[MapRow]:
    """``/proc/PID/maps`` (fs/proc/task_mmu.c ``show_map_vma``): one row per line.

    A line is ``START-END PERMS OFFSET MAJ:MIN INO``, then, padded with spaces, a name
    (a path as ``seq_path`` writes it, ``\\n`` escaped as ``\\012``, " (deleted)" appended
    once unlinked; ``[heap]``...; or nothing).  The name is kept as bytes, leading pad
    removed: only spaces are padding (a path's own leading space cannot be told from it,
    and the path is read through ``map_files`` anyway).  A line without the six fields
    raises ValueError; the C reader parses the same way."""
    rows = []
    match = _MAPS_LINE.fullmatch
    for line in data.split(b"\n"):
        if not line:
            continue
        m = match(line)
        if m is None or int(m[7]) >= 1 << 64:
            raise ValueError(f"maps: malformed line {line[:200]!r}")
        start, end, perms, offset, major, minor, ino, name = m.groups()
        rows.append(
            MapRow(
                int(start, 16),
                int(end, 16),
                perms.decode("ascii"),
                int(offset, 16),
                os.makedev(int(major, 16), int(minor, 16)),
                int(ino),
                name or b"",
            )
        )
    return rows


_MAPS_LINE = re.compile(
    rb"([0-9a-f]{1,16})-([0-9a-f]{1,16}) ([r-][w-][x-][ps]) ([0-9a-f]{1,16}) "
    rb"([0-9a-f]{1,8}):([0-9a-f]{1,8}) ([0-9]{1,20}) *(.*)",
    re.DOTALL,
)
