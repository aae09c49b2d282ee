"""Table-driven tests of the /proc and cgroupfs parsers, on literal kernel text."""

from __future__ import annotations

import os

import pytest

from asyckpt._procparse import (
    PF_KTHREAD,
    FdInfo,
    Mount,
    TaskStat,
    holds_lease,
    lock_texts,
    merge_lock_texts,
    parse_cgroup,
    parse_cgroup_events,
    parse_fdinfo,
    parse_fdinfo_rest,
    parse_lock,
    parse_mountinfo,
    parse_stat,
    split_fdinfo,
    unescape_mount_path,
)
from asyckpt._records import Lock

# The 49 fields after "comm) state" that every modern kernel prints, taken from a real
# `cat /proc/self/stat` (ppid 6125, flags 4194304 = PF_RANDOMIZE, 1 thread, start 51771).
_CAT_TAIL = (
    b"6125 6125 4572 0 -1 4194304 98 0 0 0 0 0 0 0 20 0 1 0 51771 3133440 412 "
    b"18446744073709551615 94528950493184 94528950513065 140721446779984 0 0 0 0 0 0 0 0 "
    b"0 17 1 0 0 0 0 0 94528950529072 94528950530688 94529591934976 140721446783714 "
    b"140721446783734 140721446783734 140721446785003 0\n"
)

STAT_CASES = [
    # (literal /proc/PID/stat, expected TaskStat, is_kernel_thread)
    pytest.param(
        b"6127 (cat) R " + _CAT_TAIL,
        TaskStat(6127, "cat", "R", 6125, 4194304, 1, 51771, 6125, 4572, 0),
        False,
        id="plain",
    ),
    pytest.param(
        # kthreadd: flags 0x208040 include PF_KTHREAD (0x00200000).
        b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 25 0 0 "
        b"18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        TaskStat(2, "kthreadd", "S", 0, 2129984, 1, 25, 0, 0, 0),
        True,
        id="kthreadd",
    ),
    pytest.param(
        b"73 (kworker/u8:3-events_unbound) I 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 "
        b"412 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 3 0 0 0 0 0 0 0 0 0 "
        b"0 0 0 0\n",
        TaskStat(73, "kworker/u8:3-events_unbound", "I", 2, 69238880, 1, 412, 0, 0, 0),
        True,
        id="kworker-idle",
    ),
    pytest.param(
        # The comm may hold spaces and parentheses: it ends at the *last* ")".
        b"1234 (a b) c)) S 1 " + _CAT_TAIL[5:],
        TaskStat(1234, "a b) c)", "S", 1, 4194304, 1, 51771, 6125, 4572, 0),
        False,
        id="comm-with-parens-and-spaces",
    ),
    pytest.param(
        b"1235 ()) S 1 " + _CAT_TAIL[5:],
        TaskStat(1235, ")", "S", 1, 4194304, 1, 51771, 6125, 4572, 0),
        False,
        id="comm-is-close-paren",
    ),
    pytest.param(
        b"1236 (() S 1 " + _CAT_TAIL[5:],
        TaskStat(1236, "(", "S", 1, 4194304, 1, 51771, 6125, 4572, 0),
        False,
        id="comm-is-open-paren",
    ),
    pytest.param(
        b"1237 (x) R (y) S 1 " + _CAT_TAIL[5:],
        TaskStat(1237, "x) R (y", "S", 1, 4194304, 1, 51771, 6125, 4572, 0),
        False,
        id="comm-that-looks-like-fields",
    ),
    pytest.param(
        b"1238 () S 1 " + _CAT_TAIL[5:],
        TaskStat(1238, "", "S", 1, 4194304, 1, 51771, 6125, 4572, 0),
        False,
        id="empty-comm",
    ),
    pytest.param(
        b"1239 (\xff\xfeq) S 1 " + _CAT_TAIL[5:],
        TaskStat(1239, "\udcff\udcfeq", "S", 1, 4194304, 1, 51771, 6125, 4572, 0),
        False,
        id="non-utf8-comm",
    ),
    pytest.param(
        # A zombie: PF_EXITING (0x4) set, no memory fields, one thread left.
        b"4321 (sleep) Z 4300 4321 4300 34816 4321 4227084 141 0 0 0 0 0 0 0 20 0 1 0 "
        b"987654 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 "
        b"0 9\n",
        TaskStat(4321, "sleep", "Z", 4300, 4227084, 1, 987654, 4321, 4300, 34816),
        False,
        id="zombie",
    ),
    pytest.param(
        # In a session (4999) on a controlling terminal (34817 = /dev/pts/1, 136:1).
        b"5000 (python3 worker) S 4999 5000 4999 34817 5000 4194560 9000 0 0 0 120 30 0 0 "
        b"20 0 12 0 123456789 1234567168 20000 18446744073709551615 1 1 0 0 0 0 0 16781312 "
        b"17667 0 0 0 17 5 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        TaskStat(5000, "python3 worker", "S", 4999, 4194560, 12, 123456789, 5000, 4999, 34817),
        False,
        id="multithreaded",
    ),
]


@pytest.mark.parametrize(("data", "expected", "kthread"), STAT_CASES)
def test_parse_stat(data: bytes, expected: TaskStat, kthread: bool) -> None:
    stat = parse_stat(data)
    assert stat == expected
    assert stat.is_kernel_thread is kthread


def test_pf_kthread_value() -> None:
    assert PF_KTHREAD == 0x00200000


FDINFO_CASES = [
    pytest.param(
        b"pos:\t0\nflags:\t02100001\nmnt_id:\t27\nino:\t2146436\n",
        FdInfo(pos=0, flags=0o2100001, mnt_id=27, ino=2146436, extra=()),
        id="regular-file-cloexec-largefile-wronly",
    ),
    pytest.param(
        b"pos:\t4096\nflags:\t0100002\nmnt_id:\t31\nino:\t131075\n",
        FdInfo(pos=4096, flags=0o100002, mnt_id=31, ino=131075, extra=()),
        id="regular-file-rdwr-no-cloexec",
    ),
    pytest.param(
        # Kernels before 5.14 print no ino: line.
        b"pos:\t12\nflags:\t0100000\nmnt_id:\t21\n",
        FdInfo(pos=12, flags=0o100000, mnt_id=21, ino=None, extra=()),
        id="old-kernel-no-ino",
    ),
    pytest.param(
        b"pos:\t0\nflags:\t012000000\nmnt_id:\t27\nino:\t19\n",
        FdInfo(pos=0, flags=0o12000000, mnt_id=27, ino=19, extra=()),
        id="o-path-cloexec",
    ),
    pytest.param(
        b"pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n"
        b"eventfd-count:                3\neventfd-id: 1\neventfd-semaphore: 0\n",
        FdInfo(
            pos=0,
            flags=0o2000002,
            mnt_id=17,
            ino=1038,
            extra=(("eventfd-count", "3"), ("eventfd-id", "1"), ("eventfd-semaphore", "0")),
        ),
        id="eventfd",
    ),
    pytest.param(
        b"pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n"
        b"tfd:        3 events:       1f data:                3  pos:0 ino:40e sdev:10\n"
        b"tfd:        5 events:       1f data:                5  pos:0 ino:33b11 sdev:f\n"
        b"tfd:       12 events: 8000001d data:     7f0000000001  pos:0 ino:5f31 sdev:8\n",
        FdInfo(
            pos=0,
            flags=0o2000002,
            mnt_id=17,
            ino=1038,
            extra=(
                ("tfd", "3 events:       1f data:                3  pos:0 ino:40e sdev:10"),
                ("tfd", "5 events:       1f data:                5  pos:0 ino:33b11 sdev:f"),
                ("tfd", "12 events: 8000001d data:     7f0000000001  pos:0 ino:5f31 sdev:8"),
            ),
        ),
        id="epoll-several-tfd",
    ),
    pytest.param(
        b"pos:\t0\nflags:\t02100001\nmnt_id:\t27\nino:\t2146436\n"
        b"lock:\t1: POSIX  ADVISORY  WRITE 6129 fe:00:2146436 0 EOF\n"
        b"lock:\t2: FLOCK  ADVISORY  READ 6129 fe:00:2146436 0 EOF\n",
        FdInfo(
            pos=0,
            flags=0o2100001,
            mnt_id=27,
            ino=2146436,
            extra=(
                ("lock", "1: POSIX  ADVISORY  WRITE 6129 fe:00:2146436 0 EOF"),
                ("lock", "2: FLOCK  ADVISORY  READ 6129 fe:00:2146436 0 EOF"),
            ),
        ),
        id="file-with-locks",
    ),
    pytest.param(
        b"pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t1038\nsigmask:\t0000000000004002\n",
        FdInfo(
            pos=0,
            flags=0o2004002,
            mnt_id=17,
            ino=1038,
            extra=(("sigmask", "0000000000004002"),),
        ),
        id="signalfd",
    ),
    pytest.param(
        b"pos:\t0\nflags:\t02004000\nmnt_id:\t17\nino:\t1038\n"
        b"inotify wd:1 ino:2 sdev:fe00000 mask:fc6 ignored_mask:0 fhandle-bytes:8 "
        b"fhandle-type:1 f_handle:0200000000000000\n",
        FdInfo(
            pos=0,
            flags=0o2004000,
            mnt_id=17,
            ino=1038,
            extra=(
                (
                    "inotify wd",
                    "1 ino:2 sdev:fe00000 mask:fc6 ignored_mask:0 fhandle-bytes:8 "
                    "fhandle-type:1 f_handle:0200000000000000",
                ),
            ),
        ),
        id="inotify",
    ),
    pytest.param(
        b"pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t4\n\nnot a key value line\n",
        FdInfo(pos=0, flags=2, mnt_id=15, ino=4, extra=()),
        id="blank-and-colonless-lines-skipped",
    ),
    pytest.param(
        b"",
        FdInfo(pos=0, flags=0, mnt_id=0, ino=None, extra=()),
        id="empty",
    ),
]


@pytest.mark.parametrize(("data", "expected"), FDINFO_CASES)
def test_parse_fdinfo(data: bytes, expected: FdInfo) -> None:
    assert parse_fdinfo(data) == expected


@pytest.mark.parametrize(
    ("flags_text", "value", "cloexec"),
    [
        (b"00", 0, False),
        (b"02000000", 0o2000000, True),
        (b"02000002", 0o2000002, True),
        (b"0100002", 0o100002, False),
        (b"012000000", 0o12000000, True),
    ],
)
def test_fdinfo_flags_are_octal(flags_text: bytes, value: int, cloexec: bool) -> None:
    info = parse_fdinfo(b"pos:\t0\nflags:\t" + flags_text + b"\nmnt_id:\t1\n")
    assert info.flags == value
    assert bool(info.flags & 0o2000000) is cloexec  # O_CLOEXEC


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("/", "/"),
        ("/mnt/plain", "/mnt/plain"),
        ("/mnt/my\\040disk", "/mnt/my disk"),
        ("/mnt/tab\\011here", "/mnt/tab\there"),
        ("/mnt/new\\012line", "/mnt/new\nline"),
        ("/mnt/back\\134slash", "/mnt/back\\slash"),
        ("\\040\\040", "  "),
        # An escaped backslash followed by digits is one backslash and the digits.
        ("/mnt/\\134040", "/mnt/\\040"),
        # Not three octal digits: left alone.
        ("/mnt/\\04", "/mnt/\\04"),
        ("/mnt/\\089", "/mnt/\\089"),
        ("/mnt/\\0400", "/mnt/ 0"),
    ],
)
def test_unescape_mount_path(escaped: str, plain: str) -> None:
    assert unescape_mount_path(escaped) == plain


MOUNTINFO_CASES = [
    pytest.param(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n",
        [Mount(22, 27, "0:21", "/", "/proc", "rw,relatime", (), "proc", "proc", "rw")],
        id="no-optional-fields",
    ),
    pytest.param(
        # The example from proc(5).
        "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
        [
            Mount(
                36,
                35,
                "98:0",
                "/mnt1",
                "/mnt2",
                "rw,noatime",
                ("master:1",),
                "ext3",
                "/dev/root",
                "rw,errors=continue",
            )
        ],
        id="proc5-example",
    ),
    pytest.param(
        "25 24 0:23 / /dev/shm rw,nosuid,nodev shared:1 master:2 - tmpfs tmpfs rw,size=24684084k\n",
        [
            Mount(
                25,
                24,
                "0:23",
                "/",
                "/dev/shm",
                "rw,nosuid,nodev",
                ("shared:1", "master:2"),
                "tmpfs",
                "tmpfs",
                "rw,size=24684084k",
            )
        ],
        id="shared-and-master",
    ),
    pytest.param(
        "40 25 0:23 / /mnt/x rw shared:7 master:2 propagate_from:3 - tmpfs tmpfs rw\n"
        "41 25 0:24 / /mnt/y rw unbindable - tmpfs tmpfs rw\n",
        [
            Mount(
                40,
                25,
                "0:23",
                "/",
                "/mnt/x",
                "rw",
                ("shared:7", "master:2", "propagate_from:3"),
                "tmpfs",
                "tmpfs",
                "rw",
            ),
            Mount(41, 25, "0:24", "/", "/mnt/y", "rw", ("unbindable",), "tmpfs", "tmpfs", "rw"),
        ],
        id="propagate-from-and-unbindable",
    ),
    pytest.param(
        "100 27 8:17 / /mnt/my\\040disk rw,relatime shared:50 - ext4 /dev/sdb1 rw\n",
        [
            Mount(
                100,
                27,
                "8:17",
                "/",
                "/mnt/my disk",
                "rw,relatime",
                ("shared:50",),
                "ext4",
                "/dev/sdb1",
                "rw",
            )
        ],
        id="escaped-space-in-mount-point",
    ),
    pytest.param(
        # A bind mount of a subdirectory with escapes in root, mount point and source.
        "101 27 8:17 /data/a\\040b\\011c /srv/x\\134y rw - ext4 /dev/disk\\040one rw\n",
        [
            Mount(
                101,
                27,
                "8:17",
                "/data/a b\tc",
                "/srv/x\\y",
                "rw",
                (),
                "ext4",
                "/dev/disk one",
                "rw",
            )
        ],
        id="escapes-in-root-and-source",
    ),
    pytest.param(
        "102 27 0:60 / /mnt/a\\012b rw - tmpfs tmpfs rw\n",
        [Mount(102, 27, "0:60", "/", "/mnt/a\nb", "rw", (), "tmpfs", "tmpfs", "rw")],
        id="escaped-newline",
    ),
    pytest.param(
        # `mount -t tmpfs "" /mnt/empty`: an empty source makes two spaces in a row.
        "103 27 0:61 / /mnt/empty rw,relatime - tmpfs  rw,inode64\n",
        [Mount(103, 27, "0:61", "/", "/mnt/empty", "rw,relatime", (), "tmpfs", "", "rw,inode64")],
        id="empty-source",
    ),
    pytest.param(
        # A mount point named "-" is not the separator: the search starts at field 7.
        "104 27 0:62 / - rw - tmpfs tmpfs rw\n",
        [Mount(104, 27, "0:62", "/", "-", "rw", (), "tmpfs", "tmpfs", "rw")],
        id="mount-point-named-dash",
    ),
    pytest.param(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n"
        "\n",
        [
            Mount(22, 27, "0:21", "/", "/proc", "rw,relatime", (), "proc", "proc", "rw"),
            Mount(23, 27, "0:22", "/", "/sys", "rw,relatime", (), "sysfs", "sysfs", "rw"),
        ],
        id="several-lines-and-trailing-blank",
    ),
    pytest.param("", [], id="empty"),
]


@pytest.mark.parametrize(("text", "expected"), MOUNTINFO_CASES)
def test_parse_mountinfo(text: str, expected: list[Mount]) -> None:
    assert parse_mountinfo(text) == expected


CGROUP_CASES = [
    pytest.param(
        b"0::/user.slice/user-1000.slice/session-2.scope\n",
        {"": "/user.slice/user-1000.slice/session-2.scope"},
        id="pure-v2",
    ),
    pytest.param(b"0::/\n", {"": "/"}, id="v2-root"),
    pytest.param(
        b"12:pids:/user.slice\n"
        b"4:cpu,cpuacct:/x\n"
        b"3:net_cls,net_prio:/\n"
        b"1:name=systemd:/user.slice/session-1.scope\n"
        b"0::/user.slice/session-1.scope\n",
        {
            "pids": "/user.slice",
            "cpu": "/x",
            "cpuacct": "/x",
            "net_cls": "/",
            "net_prio": "/",
            "name=systemd": "/user.slice/session-1.scope",
            "": "/user.slice/session-1.scope",
        },
        id="hybrid-v1-multi-controller-named",
    ),
    pytest.param(
        b"9:name=systemd:/\n"
        b"8:pids:/\n"
        b"6:freezer:/\n"
        b"4:memory:/process_api/201deea27042549de3307189c48caaf0\n"
        b"2:cpuacct:/\n"
        b"1:cpu:/\n"
        b"0::/\n",
        {
            "name=systemd": "/",
            "pids": "/",
            "freezer": "/",
            "memory": "/process_api/201deea27042549de3307189c48caaf0",
            "cpuacct": "/",
            "cpu": "/",
            "": "/",
        },
        id="v1-one-controller-each",
    ),
    pytest.param(b"0::/a:b:c\n", {"": "/a:b:c"}, id="colons-in-path"),
    pytest.param(b"0::/a b\n", {"": "/a b"}, id="space-in-path"),
    pytest.param(b"", {}, id="empty"),
]


@pytest.mark.parametrize(("data", "expected"), CGROUP_CASES)
def test_parse_cgroup(data: bytes, expected: dict[str, str]) -> None:
    assert parse_cgroup(data) == expected


CGROUP_EVENTS_CASES = [
    pytest.param(b"populated 1\nfrozen 0\n", {"populated": 1, "frozen": 0}, id="running"),
    pytest.param(b"populated 1\nfrozen 1\n", {"populated": 1, "frozen": 1}, id="frozen"),
    pytest.param(b"populated 0\nfrozen 0\n", {"populated": 0, "frozen": 0}, id="empty-group"),
    # Before 5.2 there is no freezer, so no frozen line.
    pytest.param(b"populated 1\n", {"populated": 1}, id="pre-5.2"),
    pytest.param(b"", {}, id="empty-file"),
    pytest.param(b"populated 1\n\n", {"populated": 1}, id="blank-line"),
]


@pytest.mark.parametrize(("data", "expected"), CGROUP_EVENTS_CASES)
def test_parse_cgroup_events(data: bytes, expected: dict[str, int]) -> None:
    assert parse_cgroup_events(data) == expected


# --- split_fdinfo: the scan's fast path must agree with the full parser ---------------


@pytest.mark.parametrize(("data", "expected"), FDINFO_CASES)
def test_split_fdinfo_agrees_with_parse_fdinfo(data: bytes, expected: FdInfo) -> None:
    pos, flags, mnt_id, rest = split_fdinfo(data)
    assert (pos, flags, mnt_id) == (expected.pos, expected.flags, expected.mnt_id)
    assert parse_fdinfo_rest(rest) == expected.extra


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t1234\n", (0, 0o2, 25, b"")),
        (b"pos:\t7\nflags:\t0100000\nmnt_id:\t3\n", (7, 0o100000, 3, b"")),
        (
            b"pos:\t1\nflags:\t01\nmnt_id:\t2\nino:\t3\neventfd-count:\t5\n",
            (1, 1, 2, b"eventfd-count:\t5\n"),
        ),
        (b"pos:\t9\nflags:\t02\n", (9, 0o2, 0, b"")),
        (b"", (0, 0, 0, b"")),
        (b"weird:\tline\npos:\t1\n", (0, 0, 0, b"weird:\tline\npos:\t1\n")),
    ],
    ids=["regular", "no-ino-line", "with-rest", "short", "empty", "unknown-first"],
)
def test_split_fdinfo(data: bytes, expected: tuple[int, int, int, bytes]) -> None:
    assert split_fdinfo(data) == expected


# --- lock: lines (fs/locks.c lock_get_status) ---------------------------------------------

LOCK_ROWS = [
    (
        "1: POSIX  ADVISORY  WRITE 14773 fe:00:2146786 5 14",
        ("POSIX", "ADVISORY", "WRITE", 14773, os.makedev(0xFE, 0), 2146786, 5, 14),
    ),
    (
        "1: FLOCK  ADVISORY  READ 19086 00:10:1038 0 EOF",
        ("FLOCK", "ADVISORY", "READ", 19086, os.makedev(0, 0x10), 1038, 0, None),
    ),
    (
        "2: OFDLCK ADVISORY  WRITE -1 00:01:1025 10 29",
        ("OFDLCK", "ADVISORY", "WRITE", -1, os.makedev(0, 1), 1025, 10, 29),
    ),
    (
        "1: LEASE  ACTIVE    READ 14773 fe:00:2146850 0 EOF",
        ("LEASE", "ACTIVE", "READ", 14773, os.makedev(0xFE, 0), 2146850, 0, None),
    ),
    (
        "3: LEASE  BREAKING  UNLCK 880 08:01:77 0 EOF",
        ("LEASE", "BREAKING", "UNLCK", 880, os.makedev(8, 1), 77, 0, None),
    ),
    (
        "4: DELEG  ACTIVE    READ 0 00:2b:12 0 EOF",
        ("DELEG", "ACTIVE", "READ", 0, os.makedev(0, 0x2B), 12, 0, None),
    ),
    # Mandatory locking (gone since Linux 5.15) and a lock without an inode.
    (
        "1: POSIX  MANDATORY WRITE 31 103:02:5 0 EOF",
        ("POSIX", "MANDATORY", "WRITE", 31, os.makedev(0x103, 2), 5, 0, None),
    ),
    (
        "1: POSIX  *NOINODE* WRITE -1 <none>:0 0 EOF",
        ("POSIX", "*NOINODE*", "WRITE", -1, None, None, 0, None),
    ),
    # /proc/locks' waiter layout, and a lock type this version has never seen.
    (
        "1: -> FLOCK  ADVISORY  WRITE 77 00:10:1038 0 EOF",
        ("FLOCK", "ADVISORY", "WRITE", 77, os.makedev(0, 0x10), 1038, 0, None),
    ),
    (
        "1: UNKNOWN UNKNOWN  UNLCK 5 00:10:9 0 EOF",
        ("UNKNOWN", "UNKNOWN", "UNLCK", 5, os.makedev(0, 0x10), 9, 0, None),
    ),
    (
        "7: NEWKIND ADVISORY READ 5 00:10:9 0 EOF",
        ("NEWKIND", "ADVISORY", "READ", 5, os.makedev(0, 0x10), 9, 0, None),
    ),
]


LOCK_FIELDS = ("type", "mode", "access", "pid", "dev", "ino", "start", "end")


@pytest.mark.parametrize(("text", "fields"), LOCK_ROWS)
def test_lock_lines(text: str, fields: tuple[object, ...]) -> None:
    assert parse_lock(text) == Lock(**dict(zip(LOCK_FIELDS, fields, strict=True)), text=text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1: POSIX ADVISORY WRITE",  # too short
        "1: POSIX  ADVISORY  WRITE x fe:00:1 0 EOF",  # pid not a number
        "1: POSIX  ADVISORY  WRITE 1 fe:zz:1 0 EOF",  # device not hex
        "1: POSIX  ADVISORY  WRITE 1 fe:00:1 0 EOF extra",  # one field more
    ],
)
def test_unparsable_lock_lines_keep_only_the_text(text: str) -> None:
    lock = parse_lock(text)
    assert lock.text == text
    assert (lock.type, lock.pid, lock.dev, lock.start, lock.end) == (None,) * 5


# A regular file's fdinfo past the common lines, as the scan hands it over.
LOCKED_REST = (
    b"lock:\t1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF\n"
    b"lock:\t2: POSIX  ADVISORY  READ 5 fe:00:9 0 9\n"
)
LEASED_REST = b"lock:\t1: LEASE  ACTIVE    READ 7 fe:00:12 0 EOF\n"


@pytest.mark.parametrize(
    ("rest", "texts", "lease"),
    [
        pytest.param(b"", [], False, id="no-lines"),
        pytest.param(b"tfd:        5 events:       19 data: 5\n", [], False, id="no-locks"),
        pytest.param(
            LOCKED_REST,
            ["1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF", "2: POSIX  ADVISORY  READ 5 fe:00:9 0 9"],
            False,
            id="locks",
        ),
        pytest.param(LEASED_REST, ["1: LEASE  ACTIVE    READ 7 fe:00:12 0 EOF"], True, id="lease"),
        pytest.param(
            b"lock:\t1: DELEG  ACTIVE    READ 0 00:2b:12 0 EOF\n",
            ["1: DELEG  ACTIVE    READ 0 00:2b:12 0 EOF"],
            True,
            id="nfs-delegation",
        ),
        pytest.param(
            # A lease being broken is still a lease; the word "LEASE" elsewhere is not one.
            b"lock:\t1: LEASE  BREAKING  UNLCK 880 08:01:77 0 EOF\nLEASE: 1\n",
            ["1: LEASE  BREAKING  UNLCK 880 08:01:77 0 EOF"],
            True,
            id="breaking",
        ),
        pytest.param(b"xlock:\tLEASE\nlock:\tgarbage\n", ["garbage"], False, id="odd-lines"),
    ],
)
def test_lock_texts_and_leases(rest: bytes, texts: list[str], lease: bool) -> None:
    assert lock_texts(rest) == texts
    assert holds_lease(rest) is lease


@pytest.mark.parametrize(
    ("first", "more", "merged"),
    [
        pytest.param([], [], [], id="none"),
        pytest.param(
            # An flock shows through every fd of its description, numbered per listing.
            ["1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF"],
            [
                "1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF",
                "3: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF",
            ],
            ["1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF"],
            id="same-lock-other-fds",
        ),
        pytest.param(
            # A POSIX lock shows only through its owner's fds: a child's, after its parent's.
            ["1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF"],
            [
                "1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF",
                "2: POSIX  ADVISORY  WRITE 6 fe:00:9 5 14",
            ],
            [
                "1: FLOCK  ADVISORY  WRITE 5 fe:00:9 0 EOF",
                "2: POSIX  ADVISORY  WRITE 6 fe:00:9 5 14",
            ],
            id="child-posix-lock",
        ),
        pytest.param(
            [],
            [
                "1: POSIX  ADVISORY  READ 6 fe:00:9 0 EOF",
                "1: POSIX  ADVISORY  READ 7 fe:00:9 0 EOF",
            ],
            [
                "1: POSIX  ADVISORY  READ 6 fe:00:9 0 EOF",
                "1: POSIX  ADVISORY  READ 7 fe:00:9 0 EOF",
            ],
            id="two-owners-same-range",
        ),
        pytest.param(["garbage"], ["garbage", "other"], ["garbage", "other"], id="unparsed"),
    ],
)
def test_merge_lock_texts(first: list[str], more: list[str], merged: list[str]) -> None:
    assert merge_lock_texts(first, more) == merged
