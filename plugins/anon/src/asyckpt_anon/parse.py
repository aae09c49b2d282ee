"""Pure parsers of the fdinfo lines of anonymous inodes.

Each takes the type-specific fdinfo lines as the core hands them to a handler
(``FdFacts.fdinfo.extra``: ``(key, value)`` pairs split at the first colon, value
stripped, in kernel order) and returns the record.  Nothing
here does I/O, so each is tested on literal kernel text.  A field missing from the text
(an older kernel, an O_PATH fd) or not in the expected format is None, never a guess;
numbers are read in the base the kernel prints them in (fs/eventfd.c, fs/eventpoll.c,
fs/timerfd.c, fs/signalfd.c, fs/notify/fdinfo.c, kernel/pid.c, io_uring/fdinfo.c,
fs/userfaultfd.c, kernel/bpf/syscall.c).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from .records import (
    AnonInode,
    Epoll,
    EpollTarget,
    EventFd,
    Fanotify,
    FanotifyMark,
    FileHandle,
    Inotify,
    InotifyWatch,
    PidFd,
    SignalFd,
    TimerFd,
)

__all__ = [
    "anon_type",
    "kernel_dev",
    "line_fields",
    "mount_points_by_dev",
    "parse_anon",
    "parse_epoll",
    "parse_eventfd",
    "parse_fanotify",
    "parse_inotify",
    "parse_pidfd",
    "parse_signalfd",
    "parse_timerfd",
]

Lines = Iterable[tuple[str, str]]


def kernel_dev(value: int) -> int:
    """A device number as fdinfo prints ``s_dev`` (the kernel's internal layout: major
    in the top 12 bits of 32, minor in the low 20) as a userspace ``st_dev``, so that it
    compares with ``File.dev``."""
    return os.makedev(value >> 20, value & 0xFFFFF)


# "key:value" tokens of the one-line-per-object formats (tfd, inotify, fanotify lines):
# a value has no colon and ends at whitespace, so an empty value ("f_handle:") is skipped
# rather than taking the next token.
_FIELD = re.compile(r"([A-Za-z_][\w-]*):[ \t]*([^\s:]+)(?=\s|$)")
_TIMESPEC = re.compile(r"\(\s*(\d+),\s*(\d+)\s*\)\Z")


def line_fields(key: str, value: str) -> dict[str, str]:
    """The ``name:value`` tokens of one fdinfo line, given as the core splits it
    (``("inotify wd", "1 ino:3f7e8 ...")``)."""
    return dict(_FIELD.findall(f"{key}:{value}"))


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _first(lines: Lines, key: str) -> str | None:
    for k, v in lines:
        if k == key:
            return v
    return None


def parse_eventfd(lines: Lines, flags: int) -> EventFd:
    """eventfd: ``eventfd-count`` (hex), ``eventfd-id``, ``eventfd-semaphore``."""
    lines = tuple(lines)
    sem = _int(_first(lines, "eventfd-semaphore"))
    return EventFd(
        count=_int(_first(lines, "eventfd-count"), 16),
        semaphore=None if sem is None else bool(sem),
        id=_int(_first(lines, "eventfd-id")),
        nonblock=bool(flags & os.O_NONBLOCK),
    )


def _dev(text: str | None) -> int | None:
    value = _int(text, 16)
    return None if value is None else kernel_dev(value)


def parse_epoll(lines: Lines) -> Epoll:
    """epoll: one ``tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x`` line
    per target (``pos``, ``ino`` and ``sdev`` since Linux 3.18)."""
    targets = []
    for key, value in lines:
        if key != "tfd":
            continue
        f = line_fields(key, value)
        targets.append(
            EpollTarget(
                tfd=_int(f.get("tfd")),
                events=_int(f.get("events"), 16),
                data=_int(f.get("data"), 16),
                pos=_int(f.get("pos")),
                ino=_int(f.get("ino"), 16),
                dev=_dev(f.get("sdev")),
            )
        )
    return Epoll(targets=targets)


def _timespec(text: str | None) -> tuple[int, int] | None:
    m = _TIMESPEC.match(text or "")
    return (int(m[1]), int(m[2])) if m else None


def parse_timerfd(lines: Lines) -> TimerFd:
    """timerfd: ``clockid``, ``ticks``, ``settime flags`` (octal), ``it_value`` and
    ``it_interval`` as ``(sec, nsec)``."""
    lines = tuple(lines)
    return TimerFd(
        clockid=_int(_first(lines, "clockid")),
        ticks=_int(_first(lines, "ticks")),
        settime_flags=_int(_first(lines, "settime flags"), 8),
        it_value=_timespec(_first(lines, "it_value")),
        it_interval=_timespec(_first(lines, "it_interval")),
    )


def signals_of(mask: int) -> list[int]:
    """The signal numbers of a sigset (bit N-1 is signal N)."""
    return [bit + 1 for bit in range(mask.bit_length()) if mask >> bit & 1]


def parse_signalfd(lines: Lines) -> SignalFd:
    """signalfd: ``sigmask`` (hex, most significant word first)."""
    mask = _int(_first(lines, "sigmask"), 16)
    return SignalFd(sigmask=mask, signals=[] if mask is None else signals_of(mask))


def _handle(f: Mapping[str, str]) -> FileHandle | None:
    kind = _int(f.get("fhandle-type"), 16)
    nbytes = _int(f.get("fhandle-bytes"), 16)
    if kind is None or nbytes is None:
        return None
    return FileHandle(type=kind, handle=f.get("f_handle", "") if nbytes else "")


def parse_inotify(lines: Lines) -> Inotify:
    """inotify: one ``inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x`` line per
    watch, then ``fhandle-bytes:%x fhandle-type:%x f_handle:%02x...`` when the
    filesystem gives handles.  Every number is hex."""
    watches = []
    for key, value in lines:
        if key != "inotify wd":
            continue
        f = line_fields(key, value)
        watches.append(
            InotifyWatch(
                wd=_int(f.get("wd"), 16),
                ino=_int(f.get("ino"), 16),
                dev=_dev(f.get("sdev")),
                mask=_int(f.get("mask"), 16),
                ignored_mask=_int(f.get("ignored_mask"), 16),
                handle=_handle(f),
            )
        )
    return Inotify(watches=watches)


def _mark(key: str, value: str) -> FanotifyMark:
    f = line_fields(key, value)
    if "ino" in f:
        obj = "inode"
    elif "mnt_id" in f:
        obj = "mount"
    elif "sdev" in f:
        obj = "filesystem"
    else:
        obj = "other"
    return FanotifyMark(
        object=obj,
        ino=_int(f.get("ino"), 16),
        dev=_dev(f.get("sdev")),
        mnt_id=_int(f.get("mnt_id"), 16),
        mflags=_int(f.get("mflags"), 16),
        mask=_int(f.get("mask"), 16),
        ignored_mask=_int(f.get("ignored_mask"), 16),
        handle=_handle(f),
        text=f"{key}:{value}" if obj == "other" else None,
    )


def parse_fanotify(lines: Lines) -> Fanotify:
    """fanotify: ``fanotify flags:%x event-flags:%x``, then one line per mark:
    ``fanotify ino:%lx sdev:%x mflags:%x mask:%x ignored_mask:%x`` (+ handle) for an
    inode, ``fanotify mnt_id:%x ...`` for a mount, ``fanotify sdev:%x ...`` for a
    filesystem.  Every number is hex."""
    flags = event_flags = None
    marks = []
    for key, value in lines:
        if key == "fanotify flags":
            f = line_fields(key, value)
            flags, event_flags = _int(f.get("flags"), 16), _int(f.get("event-flags"), 16)
        elif key.startswith("fanotify "):
            marks.append(_mark(key, value))
    return Fanotify(flags=flags, event_flags=event_flags, marks=marks)


def parse_pidfd(lines: Lines, flags: int) -> PidFd:
    """pidfd: ``Pid`` (-1 exited, 0 not in the reader's namespace) and ``NSpid`` (one
    pid per namespace level, tab-separated)."""
    lines = tuple(lines)
    nspid = [_int(p) for p in (_first(lines, "NSpid") or "").split()]
    return PidFd(
        pid=_int(_first(lines, "Pid")),
        nspid=[p for p in nspid if p is not None],
        # PIDFD_THREAD is O_EXCL in the pidfd's file flags (Linux 6.9).
        thread=bool(flags & os.O_EXCL),
    )


def anon_type(link: str) -> str:
    """The anon inode's name in its link text: ``anon_inode:[io_uring]`` is
    ``io_uring``, ``anon_inode:bpf-map`` is ``bpf-map``; any other link as it is."""
    if not link.startswith("anon_inode:"):
        return link
    name = link[len("anon_inode:") :]
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name


def _hex_or_dec(text: str) -> int:
    return int(text, 16) if text.startswith(("0x", "0X")) else int(text)


# fdinfo fields whose format is known, per anon inode type (the kernel prints each
# with a fixed printf format: %u, %d, %llu, or %#x, which reads "0x...").  A field not
# listed (a tag, a name, a newer addition) stays only in the file's raw fdinfo.
_KNOWN_INTS: dict[str, frozenset[str]] = {
    "io_uring": frozenset(
        [
            "SqMask",
            "SqHead",
            "SqTail",
            "CachedSqHead",
            "CqMask",
            "CqHead",
            "CqTail",
            "CachedCqTail",
            "SQEs",
            "CQEs",
            "SqThread",
            "SqThreadCpu",
            "SqTotalTime",
            "SqWorkTime",
            "UserFiles",
            "UserBufs",
        ]
    ),
    "userfaultfd": frozenset({"pending", "total"}),
    "bpf-map": frozenset(
        [
            "map_type",
            "key_size",
            "value_size",
            "max_entries",
            "map_flags",
            "map_extra",
            "memlock",
            "map_id",
            "frozen",
            "owner_prog_type",
            "owner_jited",
        ]
    ),
    "bpf-prog": frozenset(
        [
            "prog_type",
            "prog_jited",
            "memlock",
            "prog_id",
            "run_time_ns",
            "run_cnt",
            "recursion_misses",
            "verified_insns",
        ]
    ),
}


def parse_anon(link: str, lines: Lines) -> AnonInode:
    """Any other anon inode: its type, and the fields of :data:`_KNOWN_INTS` for it.
    userfaultfd's ``API: %Lx:%x:%Lx`` gives ``api``, ``features`` and ``ioctls``."""
    kind = anon_type(link)
    known = _KNOWN_INTS.get(kind, frozenset())
    values: dict[str, int] = {}
    for key, value in lines:
        try:
            if key in known and key not in values:
                values[key] = _hex_or_dec(value)
            elif kind == "userfaultfd" and key == "API":
                api, features, ioctls = value.split(":")
                values |= {
                    "api": int(api, 16),
                    "features": int(features, 16),
                    "ioctls": int(ioctls, 16),
                }
        except ValueError:
            continue  # not the known format: the raw line is in the file's fdinfo
    return AnonInode(type=kind, values=values)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points_by_dev(mountinfo: str) -> dict[int, list[str]]:
    """The mount points of each device (userspace ``st_dev``) in a ``mountinfo`` text
    (proc(5)), those that mount the filesystem's own root first: a handle resolved
    through such a mount reaches every file of the filesystem, through a bind mount of
    a subdirectory only those below it."""
    whole: dict[int, list[str]] = {}
    part: dict[int, list[str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        major, _, minor = fields[2].partition(":")
        try:
            dev = os.makedev(int(major), int(minor))
        except ValueError:
            continue
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
        (whole if fields[3] == "/" else part).setdefault(dev, []).append(point)
    return {dev: whole.get(dev, []) + part.get(dev, []) for dev in whole.keys() | part.keys()}
