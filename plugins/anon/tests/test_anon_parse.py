"""The pure parsers of asyckpt-anon, on literal kernel text: fdinfo as the kernel
prints it (the format strings are quoted from the kernel sources named in each table),
split into (key, value) pairs the way docs/plugins.md says the core hands them over."""

from __future__ import annotations

import os

import pytest
from asyckpt_anon import (
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
from asyckpt_anon.parse import (
    anon_type,
    kernel_dev,
    line_fields,
    parse_anon,
    parse_epoll,
    parse_eventfd,
    parse_fanotify,
    parse_inotify,
    parse_pidfd,
    parse_signalfd,
    parse_timerfd,
)

COMMON = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n"


def pairs(text: str) -> tuple[tuple[str, str], ...]:
    """The fdinfo lines after the common ones, as FdFacts.fdinfo.extra holds them:
    split at the first colon, the value stripped."""
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key not in ("pos", "flags", "mnt_id", "ino"):
            out.append((key, value.strip()))
    return tuple(out)


# --- device numbers as fdinfo prints them ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dev"),
    [(0xFE00000, os.makedev(254, 0)), (0x10, os.makedev(0, 16)), (0x10300005, os.makedev(259, 5))],
)
def test_kernel_dev(value: int, dev: int) -> None:
    # fdinfo prints s_dev in the kernel's layout (major << 20 | minor).
    assert kernel_dev(value) == dev


# --- eventfd (fs/eventfd.c: "eventfd-count: %16llx", "eventfd-id: %d", ----------------------
# "eventfd-semaphore: %d")

EVENTFD_ROWS = [
    (
        "eventfd-count:               1a\neventfd-id: 3\neventfd-semaphore: 1\n",
        os.O_RDWR | os.O_NONBLOCK,
        EventFd(count=26, semaphore=True, id=3, nonblock=True),
    ),
    (
        "eventfd-count: ffffffffffffffe\neventfd-id: 0\neventfd-semaphore: 0\n",
        os.O_RDWR,
        EventFd(count=0xFFFFFFFFFFFFFFE, semaphore=False, id=0, nonblock=False),
    ),
    # An older kernel printed the count alone; an O_PATH fd prints nothing.
    (
        "eventfd-count:                7\n",
        os.O_RDWR,
        EventFd(count=7, semaphore=None, id=None, nonblock=False),
    ),
    ("", os.O_PATH, EventFd(count=None, semaphore=None, id=None, nonblock=False)),
]


@pytest.mark.parametrize(("text", "flags", "record"), EVENTFD_ROWS)
def test_eventfd(text: str, flags: int, record: EventFd) -> None:
    assert parse_eventfd(pairs(COMMON + text), flags) == record


# --- epoll (fs/eventpoll.c: "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x") ---


def test_epoll_targets() -> None:
    text = (
        "tfd:        3 events: 80000019 data:                3  pos:0 ino:40e sdev:10\n"
        "tfd:       12 events:       1d data: ffffffffffffffff  pos:77 ino:3f7e8 sdev:fe00000\n"
    )
    assert parse_epoll(pairs(COMMON + text)) == Epoll(
        targets=[
            EpollTarget(tfd=3, events=0x80000019, data=3, pos=0, ino=0x40E, dev=os.makedev(0, 16)),
            EpollTarget(
                tfd=12,
                events=0x1D,
                data=2**64 - 1,
                pos=77,
                ino=0x3F7E8,
                dev=os.makedev(254, 0),
            ),
        ]
    )


def test_epoll_before_linux_3_18_and_empty() -> None:
    # Before 3.18 a target line had no pos/ino/sdev; an epoll may watch nothing.
    text = "tfd:        5 events:       19 data:         deadbeef\n"
    assert parse_epoll(pairs(COMMON + text)) == Epoll(
        targets=[EpollTarget(tfd=5, events=0x19, data=0xDEADBEEF, pos=None, ino=None, dev=None)]
    )
    assert parse_epoll(pairs(COMMON)) == Epoll(targets=[])


# --- timerfd (fs/timerfd.c: "clockid: %d", "ticks: %llu", "settime flags: 0%o", ------------
# "it_value: (%llu, %llu)", "it_interval: (%llu, %llu)")

TIMERFD_ROWS = [
    (
        "clockid: 1\nticks: 0\nsettime flags: 00\n"
        "it_value: (99, 999966915)\nit_interval: (2, 500)\n",
        TimerFd(
            clockid=1,
            ticks=0,
            settime_flags=0,
            it_value=(99, 999966915),
            it_interval=(2, 500),
        ),
    ),
    (
        "clockid: 0\nticks: 12\nsettime flags: 03\nit_value: (0, 0)\nit_interval: (0, 0)\n",
        TimerFd(clockid=0, ticks=12, settime_flags=3, it_value=(0, 0), it_interval=(0, 0)),
    ),
    (
        "clockid: 9\nticks: 18446744073709551615\nsettime flags: 010\nit_value: (x, 1)\n",
        TimerFd(
            clockid=9,
            ticks=2**64 - 1,
            settime_flags=8,
            it_value=None,
            it_interval=None,
        ),
    ),
    ("", TimerFd(clockid=None, ticks=None, settime_flags=None, it_value=None, it_interval=None)),
]


@pytest.mark.parametrize(("text", "record"), TIMERFD_ROWS)
def test_timerfd(text: str, record: TimerFd) -> None:
    assert parse_timerfd(pairs(COMMON + text)) == record


# --- signalfd (fs/signalfd.c: render_sigset_t, hex, most significant first) ---------------

SIGNALFD_ROWS = [
    ("sigmask:\t0000000000004200\n", SignalFd(sigmask=0x4200, signals=[10, 15])),
    (
        "sigmask:\t8000000200000001\n",
        SignalFd(sigmask=0x8000000200000001, signals=[1, 34, 64]),
    ),
    ("sigmask:\t0000000000000000\n", SignalFd(sigmask=0, signals=[])),
    ("", SignalFd(sigmask=None, signals=[])),
]


@pytest.mark.parametrize(("text", "record"), SIGNALFD_ROWS)
def test_signalfd(text: str, record: SignalFd) -> None:
    assert parse_signalfd(pairs(COMMON + text)) == record


# --- inotify and fanotify (fs/notify/fdinfo.c; every number %x) ---------------------------


def test_inotify_watches() -> None:
    text = (
        "inotify wd:1 ino:3f7e8 sdev:fe00000 mask:300 ignored_mask:0 "
        "fhandle-bytes:8 fhandle-type:1 f_handle:e8f7030000000000\n"
        "inotify wd:1a ino:2 sdev:2d mask:4000002 ignored_mask:0 "
        "fhandle-bytes:0 fhandle-type:0 f_handle:\n"
        "inotify wd:1b ino:5 sdev:2d mask:8 ignored_mask:0\n"
    )
    assert parse_inotify(pairs(COMMON + text)) == Inotify(
        watches=[
            InotifyWatch(
                wd=1,
                ino=0x3F7E8,
                dev=os.makedev(254, 0),
                mask=0x300,
                ignored_mask=0,
                handle=FileHandle(type=1, handle="e8f7030000000000"),
            ),
            # A filesystem that gave an empty handle, and one built without them.
            InotifyWatch(
                wd=0x1A,
                ino=2,
                dev=os.makedev(0, 0x2D),
                mask=0x4000002,
                ignored_mask=0,
                handle=FileHandle(type=0, handle=""),
            ),
            InotifyWatch(
                wd=0x1B, ino=5, dev=os.makedev(0, 0x2D), mask=8, ignored_mask=0, handle=None
            ),
        ]
    )
    assert parse_inotify(pairs(COMMON)) == Inotify(watches=[])


def test_fanotify_marks() -> None:
    text = (
        "fanotify flags:102 event-flags:8000\n"
        "fanotify ino:3f7e8 sdev:fe00000 mflags:0 mask:28 ignored_mask:0 "
        "fhandle-bytes:8 fhandle-type:1 f_handle:e8f7030000000000\n"
        "fanotify mnt_id:1b mflags:40 mask:20 ignored_mask:2\n"
        "fanotify sdev:15 mflags:0 mask:8 ignored_mask:0\n"
        "fanotify mnt_ns:f0000001 mflags:0 mask:1000000 ignored_mask:0\n"
    )
    none = {"ino": None, "dev": None, "mnt_id": None, "handle": None}
    assert parse_fanotify(pairs(COMMON + text)) == Fanotify(
        flags=0x102,
        event_flags=0x8000,
        marks=[
            FanotifyMark(
                object="inode",
                ino=0x3F7E8,
                dev=os.makedev(254, 0),
                mnt_id=None,
                mflags=0,
                mask=0x28,
                ignored_mask=0,
                handle=FileHandle(type=1, handle="e8f7030000000000"),
            ),
            FanotifyMark(
                **(none | {"mnt_id": 27}), object="mount", mflags=0x40, mask=0x20, ignored_mask=2
            ),
            FanotifyMark(
                **(none | {"dev": os.makedev(0, 0x15)}),
                object="filesystem",
                mflags=0,
                mask=8,
                ignored_mask=0,
            ),
            # A kind of mark this version does not know: its line is kept.
            FanotifyMark(
                **none,
                object="other",
                mflags=0,
                mask=0x1000000,
                ignored_mask=0,
                text="fanotify mnt_ns:f0000001 mflags:0 mask:1000000 ignored_mask:0",
            ),
        ],
    )


def test_fanotify_without_marks() -> None:
    assert parse_fanotify(pairs(COMMON + "fanotify flags:0 event-flags:0\n")) == Fanotify(
        flags=0, event_flags=0, marks=[]
    )


@pytest.mark.parametrize(
    ("key", "value", "fields"),
    [
        (
            "tfd",
            "3 events: 19 data:    7  pos:0",
            {"tfd": "3", "events": "19", "data": "7", "pos": "0"},
        ),
        # An empty value never takes the next token.
        ("inotify wd", "1 f_handle: mask:2", {"wd": "1", "mask": "2"}),
        ("fanotify flags", "0 event-flags:8000", {"flags": "0", "event-flags": "8000"}),
    ],
)
def test_line_fields(key: str, value: str, fields: dict[str, str]) -> None:
    assert line_fields(key, value) == fields


# --- pidfd (kernel/pid.c pidfd_show_fdinfo: "Pid:\t%d", "NSpid:" one "\t%d" per level) -----

PIDFD_ROWS = [
    ("Pid:\t14773\nNSpid:\t14773\n", os.O_RDWR, PidFd(pid=14773, nspid=[14773], thread=False)),
    ("Pid:\t812\nNSpid:\t812\t1\t1\n", os.O_RDWR, PidFd(pid=812, nspid=[812, 1, 1], thread=False)),
    ("Pid:\t-1\nNSpid:\t-1\n", os.O_RDWR, PidFd(pid=-1, nspid=[-1], thread=False)),
    ("Pid:\t0\n", os.O_RDWR, PidFd(pid=0, nspid=[], thread=False)),
    # PIDFD_THREAD shows as O_EXCL in the file's flags.
    (
        "Pid:\t19639\nNSpid:\t19639\n",
        os.O_RDWR | os.O_EXCL,
        PidFd(pid=19639, nspid=[19639], thread=True),
    ),
    ("", os.O_PATH, PidFd(pid=None, nspid=[], thread=False)),
]


@pytest.mark.parametrize(("text", "flags", "record"), PIDFD_ROWS)
def test_pidfd(text: str, flags: int, record: PidFd) -> None:
    assert parse_pidfd(pairs(COMMON + text), flags) == record


# --- other anon inodes (io_uring/fdinfo.c, fs/userfaultfd.c, kernel/bpf/syscall.c) ---------


@pytest.mark.parametrize(
    ("link", "name"),
    [
        ("anon_inode:[io_uring]", "io_uring"),
        ("anon_inode:bpf-map", "bpf-map"),
        ("anon_inode:inotify", "inotify"),
        ("anon_inode:[", "["),
        ("anon_inode:", ""),
        ("[aio]", "[aio]"),
    ],
)
def test_anon_type(link: str, name: str) -> None:
    assert anon_type(link) == name


IO_URING = """\
SqMask:\t0x3
SqHead:\t0
SqTail:\t2
CachedSqHead:\t0
CqMask:\t0x7
CqHead:\t0
CqTail:\t0
CachedCqTail:\t0
SQEs:\t2
CQEs:\t0
SqThread:\t-1
SqThreadCpu:\t-1
SqTotalTime:\t0
SqWorkTime:\t0
UserFiles:\t0
UserBufs:\t0
PollList:
CqOverflowList:
NAPI:\tdisabled
"""
BPF_MAP = """\
map_type:\t2
key_size:\t4
value_size:\t8
max_entries:\t4
map_flags:\t0x400
map_extra:\t0x0
memlock:\t344
map_id:\t25
frozen:\t0
"""
BPF_PROG = """\
prog_type:\t1
prog_jited:\t1
prog_tag:\t0123456789012345
memlock:\t4096
prog_id:\t31
run_time_ns:\t0
run_cnt:\t0
recursion_misses:\t0
verified_insns:\t2
"""


@pytest.mark.parametrize(
    ("link", "text", "values"),
    [
        (
            "anon_inode:[io_uring]",
            IO_URING,
            {
                "SqMask": 3,
                "SqHead": 0,
                "SqTail": 2,
                "CachedSqHead": 0,
                "CqMask": 7,
                "CqHead": 0,
                "CqTail": 0,
                "CachedCqTail": 0,
                "SQEs": 2,
                "CQEs": 0,
                "SqThread": -1,
                "SqThreadCpu": -1,
                "SqTotalTime": 0,
                "SqWorkTime": 0,
                "UserFiles": 0,
                "UserBufs": 0,
            },
        ),
        (
            "anon_inode:[userfaultfd]",
            "pending:\t0\ntotal:\t3\nAPI:\taa:0:80000000000001ff\n",
            {"pending": 0, "total": 3, "api": 0xAA, "features": 0, "ioctls": 0x80000000000001FF},
        ),
        (
            "anon_inode:bpf-map",
            BPF_MAP,
            {
                "map_type": 2,
                "key_size": 4,
                "value_size": 8,
                "max_entries": 4,
                "map_flags": 0x400,
                "map_extra": 0,
                "memlock": 344,
                "map_id": 25,
                "frozen": 0,
            },
        ),
        # prog_tag is hex digits that may all be decimal: never read as a number.
        (
            "anon_inode:bpf-prog",
            BPF_PROG,
            {
                "prog_type": 1,
                "prog_jited": 1,
                "memlock": 4096,
                "prog_id": 31,
                "run_time_ns": 0,
                "run_cnt": 0,
                "recursion_misses": 0,
                "verified_insns": 2,
            },
        ),
        # No fdinfo of its own, a kind nobody knows, and a field not in the known format.
        ("anon_inode:[perf_event]", "", {}),
        ("anon_inode:[secretmem]", "size:\t4096\n", {}),
        ("anon_inode:[userfaultfd]", "pending:\tmany\nAPI:\taa:0\n", {}),
    ],
)
def test_other_anon_inodes(link: str, text: str, values: dict[str, int]) -> None:
    assert parse_anon(link, pairs(COMMON + text)) == AnonInode(type=anon_type(link), values=values)


def test_mount_points_by_dev() -> None:
    from asyckpt_anon.parse import mount_points_by_dev

    # proc(5)'s layout: a bind mount of a subdirectory (root /srv) listed before the
    # filesystem's own root mount, an escaped space, a tmpfs, a line of another shape.
    text = (
        "30 27 254:0 /srv /mnt/srv rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "31 27 0:27 / /run/my\\040dir rw - tmpfs tmpfs rw\n"
        "garbage\n"
        "32 27 x:y / /bad rw - ext4 /dev/x rw\n"
    )
    assert mount_points_by_dev(text) == {
        os.makedev(254, 0): ["/", "/mnt/srv"],
        os.makedev(0, 27): ["/run/my dir"],
    }
