"""Table-driven tests of the pure fd classification helpers."""

from __future__ import annotations

import os
import stat

import pytest

from asyckpt._classify import (
    O_ASYNC,
    access_mode,
    kernel_kind,
    owner_matters,
    split_deleted,
    task_relative_path,
)

KIND_CASES = [
    # (st_mode, readlink of /proc/PID/fd/N, expected kind)
    (stat.S_IFREG | 0o644, "/etc/passwd", "reg"),
    (stat.S_IFREG | 0o644, "/tmp/x (deleted)", "reg"),
    (stat.S_IFREG | 0o777, "/memfd:buf (deleted)", "reg"),
    (stat.S_IFDIR | 0o755, "/etc", "dir"),
    (stat.S_IFDIR | 0o1777, "/tmp", "dir"),
    # An O_PATH|O_NOFOLLOW fd on a symlink.
    (stat.S_IFLNK | 0o777, "/usr/bin/python3", "link"),
    # An unnamed pipe and a FIFO share S_IFIFO; only the link text tells them apart.
    (stat.S_IFIFO | 0o600, "pipe:[211729]", "pipe"),
    (stat.S_IFIFO | 0o644, "/run/myfifo", "fifo"),
    (stat.S_IFIFO | 0o644, "/tmp/pipe:[1]", "fifo"),
    (stat.S_IFIFO | 0o644, "/run/gone (deleted)", "fifo"),
    (stat.S_IFSOCK | 0o777, "socket:[12345]", "socket"),
    (stat.S_IFSOCK | 0o755, "/run/app.sock", "socket"),
    (stat.S_IFCHR | 0o666, "/dev/null", "chr"),
    (stat.S_IFCHR | 0o620, "/dev/pts/0", "chr"),
    (stat.S_IFBLK | 0o660, "/dev/sda", "blk"),
    # Anonymous inodes: no file type bits, "anon_inode:" link.
    (0o600, "anon_inode:[eventfd]", "anon"),
    (0o600, "anon_inode:[eventpoll]", "anon"),
    (0o600, "anon_inode:[signalfd]", "anon"),
    (0o600, "anon_inode:[timerfd]", "anon"),
    (0o600, "anon_inode:inotify", "anon"),
    (0o600, "anon_inode:[io_uring]", "anon"),
    # pidfds: anon_inode before 6.9, pidfs (S_IFREG) after.
    (0o600, "anon_inode:[pidfd]", "anon"),
    (stat.S_IFREG | 0o600, "anon_inode:[pidfd]", "anon"),
    (stat.S_IFREG | 0o600, "pidfd:[12345]", "anon"),
    # No type bits and an unfamiliar link: still anon.
    (0o600, "[aio]", "anon"),
]


@pytest.mark.parametrize(("st_mode", "link", "kind"), KIND_CASES)
def test_kernel_kind(st_mode: int, link: str, kind: str) -> None:
    assert kernel_kind(st_mode, link) == kind


ACCESS_CASES = [
    # (flags as fdinfo reports them, expected access)
    (os.O_RDONLY, "r"),
    (os.O_WRONLY, "w"),
    (os.O_RDWR, "rw"),
    (os.O_ACCMODE, "rw"),
    (os.O_WRONLY | os.O_APPEND, "w"),
    (os.O_RDONLY | os.O_DIRECTORY, "r"),
    (os.O_RDWR | os.O_NONBLOCK, "rw"),
    (os.O_PATH, "path"),
    (os.O_PATH | os.O_CLOEXEC, "path"),
    (os.O_PATH | os.O_NOFOLLOW, "path"),
    # Literal octal from fdinfo (x86-64 flag values).
    (0o2000000, "r"),  # O_RDONLY|O_CLOEXEC
    (0o2000002, "rw"),  # an eventfd
    (0o2100001, "w"),  # O_WRONLY|O_LARGEFILE|O_CLOEXEC
    (0o100002, "rw"),  # O_RDWR|O_LARGEFILE
    (0o12000000, "path"),  # O_PATH|O_CLOEXEC
]


@pytest.mark.parametrize(("flags", "access"), ACCESS_CASES)
def test_access_mode(flags: int, access: str) -> None:
    assert access_mode(flags) == access


def test_octal_flag_values_match_this_platform() -> None:
    # The literal rows above assume the generic (x86/arm64) flag layout.
    assert os.O_CLOEXEC == 0o2000000
    assert os.O_PATH == 0o10000000


DELETED_CASES = [
    # (link, st_nlink, expected (path, deleted))
    ("/tmp/x (deleted)", 0, ("/tmp/x", True)),
    ("/tmp/x", 1, ("/tmp/x", False)),
    # nlink 0 without the suffix (the name was replaced, or an O_TMPFILE): still unlinked.
    ("/tmp/x", 0, ("/tmp/x", True)),
    ("/memfd:buf (deleted)", 0, ("/memfd:buf", True)),
    ("/tmp/#1234 (deleted)", 0, ("/tmp/#1234", True)),
    ("/tmp/a b (deleted)", 0, ("/tmp/a b", True)),
    # Only one suffix is the kernel's.
    ("/tmp/x (deleted) (deleted)", 0, ("/tmp/x (deleted)", True)),
    ("/tmp/(deleted)", 1, ("/tmp/(deleted)", False)),
    ("/tmp/x(deleted)", 1, ("/tmp/x(deleted)", False)),
    # Non-path links are never "deleted", whatever their nlink.
    ("pipe:[1]", 1, ("pipe:[1]", False)),
    ("pipe:[1]", 0, ("pipe:[1]", False)),
    ("socket:[5]", 0, ("socket:[5]", False)),
    ("anon_inode:[eventfd]", 0, ("anon_inode:[eventfd]", False)),
    ("anon_inode:[eventfd]", 1, ("anon_inode:[eventfd]", False)),
]


@pytest.mark.parametrize(("link", "nlink", "expected"), DELETED_CASES)
def test_split_deleted(link: str, nlink: int, expected: tuple[str, bool]) -> None:
    assert split_deleted(link, nlink) == expected


RELATIVE_CASES = [
    # (path as we read it, the task's root, the path as the task sees it)
    ("/etc/x", "/", "/etc/x"),
    ("/", "/", "/"),
    ("pipe:[1]", "/", "pipe:[1]"),
    ("/srv/jail/etc/x", "/srv/jail", "/etc/x"),
    ("/srv/jail/a/b/c", "/srv/jail", "/a/b/c"),
    ("/srv/jail", "/srv/jail", "/"),
    # A sibling that merely shares the prefix is outside the jail.
    ("/srv/jailbreak/x", "/srv/jail", "/srv/jailbreak/x"),
    ("/srv/jail2", "/srv/jail", "/srv/jail2"),
    # Outside the root (an fd opened before chroot): left as we see it.
    ("/etc/passwd", "/srv/jail", "/etc/passwd"),
    ("/", "/srv/jail", "/"),
    # Non-path links are not rewritten.
    ("pipe:[1]", "/srv/jail", "pipe:[1]"),
    ("anon_inode:[eventfd]", "/srv/jail", "anon_inode:[eventfd]"),
    ("socket:[5]", "/srv/jail", "socket:[5]"),
]


@pytest.mark.parametrize(("path", "root", "expected"), RELATIVE_CASES)
def test_task_relative_path(path: str, root: str, expected: str) -> None:
    assert task_relative_path(path, root) == expected


LEASE = b"lock:\t1: LEASE  ACTIVE    READ 7 fe:00:12 0 EOF\n"
POSIX = b"lock:\t1: POSIX  ADVISORY  WRITE 7 fe:00:12 0 EOF\n"


@pytest.mark.parametrize(
    ("kind", "flags", "rest", "read"),
    [
        # Every kind but reg and dir: always, F_SETOWN alone may already matter there.
        *[(kind, os.O_RDWR, b"", True) for kind in ("pipe", "fifo", "socket", "chr", "blk")],
        ("anon", os.O_RDONLY, b"eventfd-count: 0\n", True),
        # Regular files and directories: only when a signal can follow.
        ("reg", os.O_RDWR, b"", False),
        ("reg", os.O_RDWR, POSIX, False),
        ("reg", os.O_RDWR | O_ASYNC, b"", True),
        ("reg", os.O_RDONLY, LEASE, True),
        ("dir", os.O_RDONLY | os.O_DIRECTORY, b"", False),
        ("dir", os.O_RDONLY | os.O_DIRECTORY | O_ASYNC, b"", True),
        # O_PATH allows no fcntl, whatever else holds.
        ("reg", os.O_PATH | O_ASYNC, LEASE, False),
        ("link", os.O_PATH | os.O_NOFOLLOW, b"", False),
        ("socket", os.O_PATH, b"", False),
    ],
)
def test_owner_matters(kind: str, flags: int, rest: bytes, read: bool) -> None:
    assert owner_matters(kind, flags, rest) is read


# --- row_facts: what the resolver tells a handler, made fast, equals fd_facts ----------

ROW_CASES = [
    # (st_mode, link, nlink, root, fdinfo rest past the common lines)
    (stat.S_IFREG | 0o644, "/etc/passwd", 1, "/", b""),
    (stat.S_IFREG | 0o644, "/tmp/x (deleted)", 0, "/", b""),
    (stat.S_IFREG | 0o644, "/tmp/x (deleted)", 2, "/", b""),  # another link keeps it
    (stat.S_IFREG | 0o644, "/tmp/gone", 0, "/", b""),  # nlink 0, no suffix
    (stat.S_IFREG | 0o777, "/memfd:buf (deleted)", 0, "/", b""),
    (stat.S_IFREG | 0o644, "/srv/jail/etc/x", 1, "/srv/jail", b""),
    (stat.S_IFREG | 0o644, "/srv/jail", 1, "/srv/jail", b""),
    (stat.S_IFREG | 0o644, "/srv/jail/x (deleted)", 0, "/srv/jail", b""),
    (stat.S_IFREG | 0o644, "/elsewhere/x", 1, "/srv/jail", b""),
    (
        stat.S_IFREG | 0o644,
        "/var/lock/x",
        1,
        "/",
        b"lock:\t1: FLOCK  ADVISORY  WRITE 1 fd:00:1 0 EOF\n",
    ),
    (stat.S_IFDIR | 0o755, "/etc", 2, "/", b""),
    (stat.S_IFLNK | 0o777, "/usr/bin/python3", 1, "/", b""),
    (stat.S_IFIFO | 0o600, "pipe:[211729]", 1, "/", b""),
    (stat.S_IFIFO | 0o644, "/run/myfifo", 1, "/", b""),
    (stat.S_IFIFO | 0o644, "/run/myfifo (deleted)", 0, "/", b""),
    (stat.S_IFSOCK | 0o777, "socket:[8812]", 1, "/", b""),
    (stat.S_IFCHR | 0o666, "/dev/null", 1, "/", b""),
    (stat.S_IFBLK | 0o660, "/dev/vda", 1, "/", b""),
    (0, "anon_inode:[eventfd]", 1, "/", b"eventfd-count:                0\neventfd-id: 1\n"),
    (stat.S_IFREG | 0o600, "anon_inode:[timerfd]", 1, "/", b"clockid: 1\n"),
    (stat.S_IFREG | 0o600, "pidfd:[1234]", 1, "/", b"Pid:\t1234\n"),
    (0o170000, "/odd", 1, "/", b""),  # no file type asyckpt knows
    (stat.S_IFREG | 0o644, "relative (deleted)", 0, "/srv/jail", b""),
]


@pytest.mark.parametrize("row_type", ["FdRow", "RawFd"])
@pytest.mark.parametrize(("mode", "link", "nlink", "root", "rest"), ROW_CASES)
def test_row_facts_equals_fd_facts(
    mode: int, link: str, nlink: int, root: str, rest: bytes, row_type: str
) -> None:
    """With a row of either type: the C reader's struct sequence, or the NamedTuple the
    fallback reader makes without the C extension."""
    from asyckpt import _fdscan
    from asyckpt._facts import fd_facts, row_facts
    from asyckpt._plugins.contract import FdFacts, StatInfo
    from asyckpt._procparse import FdInfo, parse_fdinfo_rest
    from asyckpt._rows import RawFd

    make = _fdscan.FdRow if row_type == "FdRow" else RawFd._make
    fields = (7, link, mode, 65024, 4242, 0, nlink, 1000, 100, 97, 123_456_789, 8, 5, 0o2, 27)
    raw = make((*fields, rest))
    st = StatInfo(*raw[2:12])
    info = FdInfo(raw[12], raw[13], raw[14], st.st_ino, parse_fdinfo_rest(rest) if rest else ())
    facts = row_facts(11, 12, raw, root)
    assert facts == fd_facts(11, 12, 7, link, st, info, root)
    assert (type(facts), type(facts.st), type(facts.fdinfo)) == (FdFacts, StatInfo, FdInfo)
