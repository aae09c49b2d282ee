"""The restore plan (``_restore_plan``), table-tested on literal images: what each kind
of fd becomes, and every number an image gives refused when out of bounds, naming pid,
fd and kind."""

from __future__ import annotations

import os
from typing import Any

import pytest

from asyckpt._errors import RestoreError, UsageError
from asyckpt._image import parse_image
from asyckpt._restore_model import (
    Bind,
    Epoll,
    EventFd,
    Inotify,
    InotifyWatch,
    OpenPath,
    PipeEnd,
    Reopen,
    RestorePlan,
    SignalFd,
    SocketEnd,
    TimerFd,
)
from asyckpt._restore_plan import plan_table
from tests.crafted import _file, _socket, build, seed

PID = 100
O_CREAT_TRUNC = os.O_CREAT | os.O_TRUNC | os.O_EXCL


def image(*entries: tuple[int, dict[str, Any]], contents: list[dict[str, Any]] = ()) -> Any:  # type: ignore[assignment]
    """An image of one task (PID) whose table holds ``(fd, file record)`` entries (a file
    given twice is written once: a shared description)."""
    first, *_, last = seed()
    body: list[dict[str, Any]] = [{"kind": "fdtable", "id": 1, "owner": PID, "count": len(entries)}]
    seen: set[int] = set()
    for fd, rec in entries:
        if rec["id"] not in seen:
            seen.add(rec["id"])
            body.append(rec)
            body += [c for c in contents if c["file"] == rec["id"]]
        body.append({"kind": "fd", "fd": fd, "file": rec["id"], "cloexec": fd % 2 == 1})
    body.append(
        {
            "kind": "task", "pid": PID, "ppid": 1, "comm": "t", "starttime": 1, "state": "S",
            "uid": 0, "gid": 0, "fd_table": 1, "threads": [[PID, 1]],
        }
    )  # fmt: skip
    return parse_image(build([first, *body, last]))


def plan(img: Any, **kw: Any) -> RestorePlan:
    kw.setdefault("nofile", 1024)
    return plan_table(img, PID, **kw)


def reg(id: int = 1, path: str = "/srv/data.txt", **fields: Any) -> dict[str, Any]:
    return _file(id, "reg", path, **fields)


def pipe(id: int, end: str, **fields: Any) -> dict[str, Any]:
    data = {"kind": "asyckpt.pipe", "ino": 5000, "end": end, "capacity": 65536, "queued": 0}
    data |= fields
    flags = os.O_RDONLY if end == "read" else os.O_WRONLY
    access = {"read": "r", "write": "w"}.get(end, "rw")
    return _file(id, "pipe", "pipe:[5000]", flags=flags, access=access, handler="pipes", data=data)


def eventfd(id: int = 1, flags: int = os.O_RDWR, **fields: Any) -> dict[str, Any]:
    data = {"kind": "asyckpt.eventfd", "count": 5, "semaphore": True, "id": 1, "nonblock": False}
    data |= fields
    path = "anon_inode:[eventfd]"
    return _file(id, "anon", path, handler="eventfd", flags=flags, data=data)


def memfd(id: int = 1, name: str = "m", seals: Any = 3, **fields: Any) -> dict[str, Any]:
    data = {"kind": "asyckpt.memfd", "name": name, "size": 10, "blocks": 8, "seals": seals}
    data["hugetlb"] = fields.pop("hugetlb", False)
    saved = {"deleted": True, "nlink": 0, "path_state": "deleted", "ghost": "saved"}
    return _file(
        id, "reg", f"/memfd:{name} (deleted)", handler="memfd", data=data,
        **(saved | {"ghost_file": id, "size": 10} | fields),
    )  # fmt: skip


def refused(img: Any, *words: str, **kw: Any) -> RestoreError:
    with pytest.raises(RestoreError) as info:
        plan(img, **kw)
    for word in words:
        assert word in str(info.value), str(info.value)
    return info.value


def test_regular_file_never_created_or_truncated_flags_kept() -> None:
    flags = os.O_RDWR | os.O_APPEND | os.O_NONBLOCK | O_CREAT_TRUNC | os.O_CLOEXEC
    p = plan(image((3, reg(flags=flags, pos=77))))
    (d,) = p.descriptions
    assert isinstance(d.make, OpenPath)
    assert d.make.flags & O_CREAT_TRUNC == 0
    assert d.make.flags & os.O_ACCMODE == os.O_RDWR
    assert d.make.flags & (os.O_APPEND | os.O_NONBLOCK) == os.O_APPEND | os.O_NONBLOCK
    assert (d.make.path, d.make.ino, d.make.dev, d.pos) == ("/srv/data.txt", 1001, 65024, 77)
    assert [(s.fd, s.cloexec) for s in p.fds] == [(3, True)]


def test_o_path_and_directory() -> None:
    p = plan(
        image(
            (4, _file(1, "dir", "/srv", access="r", flags=os.O_DIRECTORY)),
            (5, reg(2, access="path", flags=os.O_PATH)),
        )
    )
    d, o = (x.make for x in p.descriptions)
    assert isinstance(d, OpenPath) and d.flags & os.O_DIRECTORY
    assert isinstance(o, OpenPath) and o.flags & os.O_PATH
    assert p.descriptions[1].pos is None


def test_shared_description_is_made_once() -> None:
    f = reg()
    p = plan(image((3, f), (4, f), (9, f)))
    assert len(p.descriptions) == 1
    assert [(s.fd, s.description) for s in p.fds] == [(3, 0), (4, 0), (9, 0)]


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([(3, reg(pos=-1))], ["fd=3", "position -1"]),
        ([(3, reg(flags=os.O_RDWR | os.O_ASYNC))], ["I/O owner"]),
        (
            [(3, reg(owner={"pid": 5, "type": "pid", "signal": 0, "async_io": False}))],
            ["F_SETOWN"],
        ),
        ([(3, reg(path="relative/x"))], ["absolute path"]),
        ([(3, reg(deleted=True, path_state="deleted"))], ["unlinked", "not in the image"]),
        ([(3, reg(path_state="deleted-linked"))], ["reg", "unlinked"]),
        ([(3, _file(1, "chr", "/dev/sda", rdev=os.makedev(8, 0)))], ["chr", "device"]),
        (
            [(3, _file(1, "fifo", "/srv/fifo", data=pipe(1, "read", queued=1)["data"]))],
            ["fifo", "1 bytes queued", "--skip fifo"],
        ),
        (
            [(6, _file(1, "anon", "anon_inode:[eventpoll]"))],
            ["pid=100, fd=6", "the epoll", "linked"],
        ),
        ([(3, eventfd(count=2**64 - 1))], ["eventfd count"]),
        ([(3, eventfd(count="5"))], ["eventfd count"]),
        ([(3, eventfd(semaphore=None))], ["semaphore"]),
        ([(3, memfd(name="x" * 250))], ["memfd name"]),
        ([(3, memfd(seals=64))], ["seals 64"]),
        ([(3, memfd(hugetlb=True))], ["hugetlb"]),
        ([(3, memfd(ghost="too-big", ghost_file=None))], ["ghost too-big"]),
        ([(3, memfd(size=2**40, ghost="none", ghost_file=None))], ["size"]),
        ([(3, pipe(1, "read", capacity=2**31))], ["pipe capacity"]),
        ([(3, pipe(1, "read", queued=9))], ["9 bytes queued", "--pipe-data"]),
        ([(3, pipe(1, "read", queued=4, content=b"abc"))], ["4 bytes queued, only 3"]),
        ([(3, pipe(1, "read", queued=3, content=b"abc", packets=[1, 1]))], ["packet"]),
        ([(3, pipe(1, "sideways"))], ["pipe end"]),
        ([(3, _file(1, "socket", "socket:[7]", data=_socket(7, peer_ino=8)))], ["peer"]),
        (
            [(3, _file(1, "socket", "socket:[7]", data=_socket(7, state="LISTEN", name="s")))],
            ["relative name"],
        ),
    ],
)
def test_refused_with_pid_fd_and_kind(entries: list[Any], words: list[str]) -> None:
    err = refused(image(*entries), *words)
    assert err.pid == PID and err.fd == entries[0][0]
    assert err.exit_code == 13


def test_fd_number_within_rlimit() -> None:
    refused(image((300, reg())), "fd 300", "RLIMIT_NOFILE (256)", nofile=256)
    assert plan(image((255, reg())), nofile=256).fds[0].fd == 255


def test_skip_lists_and_leaves_out() -> None:
    img = image((3, reg()), (6, _file(2, "anon", "anon_inode:[eventpoll]")), (7, reg()))
    p = plan(img, skip=frozenset({"epoll"}))
    assert [s.fd for s in p.fds] == [3, 7]
    assert [(s.fd, s.kind) for s in p.skipped] == [(6, "epoll")]
    with pytest.raises(UsageError, match="--skip sideways"):
        plan(img, skip=frozenset({"sideways"}))


def test_kind_from_the_handler_record() -> None:
    fanotify = {"kind": "asyckpt.fanotify", "flags": 0, "event_flags": 0, "marks": []}
    img = image((6, _file(1, "anon", "anon_inode:[fanotify]", handler="fanotify", data=fanotify)))
    refused(img, "cannot restore the fanotify", "--skip fanotify")
    assert plan(img, skip=frozenset({"fanotify"})).skipped[0].kind == "fanotify"


def watch(wd: int, path: Any = "/srv", **fields: Any) -> dict[str, Any]:
    return {"wd": wd, "ino": 5, "dev": 6, "mask": 0x100, "ignored_mask": 0, "handle": None,
            "path": path, "deleted": False} | fields  # fmt: skip


def test_inotify_watches_in_order() -> None:
    def inotify(*watches: dict[str, Any], resolved: bool = True) -> dict[str, Any]:
        data = {"kind": "asyckpt.inotify", "watches": list(watches), "resolved": resolved}
        return _file(1, "anon", "anon_inode:inotify", handler="inotify", data=data)

    (d,) = plan(image((3, inotify(watch(2, "/b"), watch(1, "/a"))))).descriptions
    assert d.make == Inotify(
        watches=[
            InotifyWatch(path="/a", mask=0x100, dev=6, ino=5),
            InotifyWatch(path="/b", mask=0x100, dev=6, ino=5),
        ]
    )
    refused(image((3, inotify(watch(1), resolved=False))), "not resolved")
    refused(image((3, inotify(watch(1, None)))), "watch 1", "unknown or unlinked")
    refused(image((3, inotify(watch(1, deleted=True)))), "unlinked")
    refused(image((3, inotify(watch(1, "rel")))), "absolute path")
    refused(image((3, inotify(watch(1, mask=2**32)))), "watch mask")


def epoll(*targets: dict[str, Any], linked: bool = True) -> dict[str, Any]:
    data = {"kind": "asyckpt.epoll", "targets": list(targets), "linked": linked}
    return _file(9, "anon", "anon_inode:[eventpoll]", handler="epoll", data=data)


def target(file: int | None, tfd: int, events: int = 1, data: int = 2**64 - 1) -> dict[str, Any]:
    return {"tfd": tfd, "events": events, "data": data, "pos": 0, "ino": 1, "dev": 1, "file": file}


def test_epoll_watches_after_their_targets_with_the_targets_numbers() -> None:
    r = pipe(1, "read")
    ev = eventfd(2)
    # Listed before its targets; one added through fd 4 (still the pipe's), one through
    # fd 40 (closed since): that one is added through the eventfd's own number.
    p = plan(image((3, epoll(target(1, 4), target(2, 40, events=4, data=7))), (4, r), (5, ev)))
    make = p.descriptions[0].make
    assert isinstance(make, Epoll)
    assert [(w.description, w.tfd, w.events, w.data) for w in make.watches] == [
        (1, 4, 1, 2**64 - 1),
        (2, 5, 4, 7),
    ]
    refused(image((3, epoll(target(None, 4))), (4, r)), "pid=100, fd=3", "not restored")
    refused(image((3, epoll(target(1, 4))), (4, r)), "not restored", skip=frozenset({"pipe"}))
    refused(image((3, epoll(target(1, 4), linked=False)), (4, r)), "not linked")
    refused(image((3, epoll(target(1, 4, events=2**32))), (4, r)), "events")


def timer(**fields: Any) -> dict[str, Any]:
    data = {
        "kind": "asyckpt.timerfd", "clockid": 1, "ticks": 3, "settime_flags": 1,
        "it_value": [5, 10], "it_interval": [0, 0],
    } | fields  # fmt: skip
    return _file(1, "anon", "anon_inode:[timerfd]", handler="timerfd", data=data)


def test_timerfd_and_signalfd() -> None:
    (d,) = plan(image((3, timer()))).descriptions
    assert d.make == TimerFd(clockid=1, settime_flags=1, value=(5, 10), interval=(0, 0), ticks=3)
    refused(image((3, timer(clockid=3))), "clock 3")
    refused(image((3, timer(it_value=[1, 10**9]))), "it_value")
    refused(image((3, timer(it_interval=[1]))), "it_interval")
    refused(image((3, timer(ticks=None))), "ticks")
    sig = {"kind": "asyckpt.signalfd", "sigmask": 1 << 63, "signals": [64]}
    signalfd = _file(1, "anon", "anon_inode:[signalfd]", handler="signalfd", data=sig)
    (d,) = plan(image((3, signalfd))).descriptions
    assert d.make == SignalFd(mask=1 << 63)
    sig["sigmask"] = -1
    refused(image((3, signalfd)), "signal mask")


def test_task_and_zombie() -> None:
    img = image((3, reg()))
    with pytest.raises(RestoreError, match="no task 7"):
        plan_table(img, 7, nofile=1024)
    with pytest.raises(RestoreError, match="zombie"):
        plan_table(parse_image(build(seed())), 103, nofile=64)


def test_pipe_both_ends_one_pipe_with_its_packets() -> None:
    r = pipe(1, "read", queued=6, content=b"abcdef", packets=[2, 4])
    w = pipe(2, "write", queued=6)
    p = plan(image((3, r), (4, w)))
    assert len(p.pipes) == 1
    assert (p.pipes[0].data, p.pipes[0].packets, p.pipes[0].capacity) == (b"abcdef", [2, 4], 65536)
    ends = [d.make for d in p.descriptions]
    assert ends == [PipeEnd(pipe=0, end="read"), PipeEnd(pipe=0, end="write")]


def test_eventfd_and_flags() -> None:
    p = plan(image((3, eventfd(count=2**64 - 2, flags=os.O_RDWR | os.O_NONBLOCK))))
    (d,) = p.descriptions
    assert d.make == EventFd(count=2**64 - 2, semaphore=True)
    assert d.setfl == os.O_NONBLOCK


def test_memfd_content_and_seals_one_inode_for_two_descriptions() -> None:
    a = memfd(1, flags=os.O_RDWR, pos=4)
    b = memfd(2, ghost_file=1, access="r", flags=os.O_RDONLY)
    runs = [{"kind": "content", "file": 1, "offset": 2, "data": b"xy"}]
    p = plan(image((3, a), (4, b), contents=runs))
    assert len(p.inodes) == 1
    (inode,) = p.inodes
    assert (inode.name, inode.size, inode.runs, inode.seals) == ("m", 10, [(2, b"xy")], 3)
    assert [d.make for d in p.descriptions] == [
        Reopen(inode=0, flags=os.O_RDWR),
        Reopen(inode=0, flags=os.O_RDONLY),
    ]
    assert p.descriptions[0].pos == 4


@pytest.mark.parametrize(
    ("path", "st_mode", "want_path", "want_mode"),
    [
        ("/srv/db/data.bin (deleted)", 0o100640, "/srv/db/data.bin", 0o640),
        ("/srv/setid (deleted)", 0o106755, "/srv/setid", 0o755),  # never set-id
        ("/data.bin (deleted)", 0, "/data.bin", 0o600),  # st_mode not recorded (version 1)
        ("/none (deleted)", 0o100000, "/none", 0),
        ("rel/data.bin (deleted)", 0o100644, "", 0o644),  # no directory: a memfd
        ("/" + "d/" * 2048 + "x (deleted)", 0o100644, "", 0o644),  # past PATH_MAX
    ],
)
def test_unlinked_file_made_in_its_directory(
    path: str, st_mode: int, want_path: str, want_mode: int
) -> None:
    saved = {"deleted": True, "nlink": 0, "path_state": "deleted", "ghost": "saved"}
    a = reg(1, path, **saved, ghost_file=1, size=10, st_mode=st_mode)
    b = reg(2, path, **saved, ghost_file=1, size=10, st_mode=st_mode, access="r", flags=0)
    runs = [{"kind": "content", "file": 1, "offset": 2, "data": b"xy"}]
    p = plan(image((3, a), (4, b), contents=runs))
    (inode,) = p.inodes
    assert (inode.path, inode.mode, inode.size, inode.runs) == (
        want_path,
        want_mode,
        10,
        [(2, b"xy")],
    )
    assert inode.name == os.path.basename(path.removesuffix(" (deleted)"))[:64]
    assert [d.make for d in p.descriptions] == [
        Reopen(inode=0, flags=os.O_RDWR),
        Reopen(inode=0, flags=os.O_RDONLY),
    ]
    assert plan(image((3, memfd()))).inodes[0].path is None  # a memfd stays one


def test_file_made_with_o_tmpfile_reopened_without_o_directory() -> None:
    # tempfile.TemporaryFile's: fdinfo keeps O_TMPFILE, whose O_DIRECTORY would make
    # the reopen of a regular file fail (ENOTDIR).
    saved = {"deleted": True, "nlink": 0, "path_state": "deleted", "ghost": "saved"}
    flags = os.O_RDWR | os.O_TMPFILE | os.O_APPEND
    f = reg(1, "/tmp/#4243472 (deleted)", **saved, ghost_file=1, flags=flags)
    (d,) = plan(image((3, f))).descriptions
    assert d.make == Reopen(inode=0, flags=os.O_RDWR | os.O_APPEND)


def test_socketpair_within_the_table() -> None:
    a = _file(1, "socket", "socket:[7]", data=_socket(7, peer_ino=8, shutdown="write"))
    b = _file(2, "socket", "socket:[8]", data=_socket(8, peer_ino=7))
    p = plan(image((3, a), (5, b)))
    assert [x.type for x in p.pairs] == ["stream"]
    assert [d.make for d in p.descriptions] == [
        SocketEnd(pair=0, end=0, shutdown="write"),
        SocketEnd(pair=0, end=1, shutdown=None),
    ]
    queued = _file(2, "socket", "socket:[8]", data=_socket(8, peer_ino=7, recv_queue=5))
    refused(image((3, a), (5, queued)), "queued")


def lock(
    type: str, access: str = "WRITE", pid: int = PID, start: int = 0, end: Any = None
) -> dict[str, Any]:
    text = f"1: {type} ADVISORY {access} {pid} fe:00:1001 {start} {end or 'EOF'}"
    return {"type": type, "mode": "ADVISORY", "access": access, "pid": pid, "dev": 1,
            "ino": 1, "start": start, "end": end, "text": text}  # fmt: skip


def test_locks_taken_again() -> None:
    locks = [
        lock("FLOCK", "READ"),
        lock("OFDLCK", pid=-1, start=10, end=19),
        lock("POSIX", "READ", start=100),
        lock("POSIX", pid=PID + 1),  # another task's, through a shared description
    ]
    (d,) = plan(image((3, reg(locks=locks)))).descriptions
    assert [(x.type, x.write, x.start, x.length) for x in d.locks] == [
        ("flock", False, 0, 0),
        ("ofd", True, 10, 10),
        ("posix", False, 100, 0),
    ]
    refused(image((3, reg(locks=[lock("LEASE")]))), "pid=100, fd=3", "cannot be taken again")
    refused(image((3, reg(locks=[lock("POSIX", start=9, end=3)]))), "lock end 3")
    refused(image((3, reg(locks=[lock("POSIX", access="UNLCK")]))), "unknown extent")


def inet(**fields: Any) -> dict[str, Any]:
    data = {"family": "inet", "domain": 2, "protocol": 6, "proto": "tcp", "state": "LISTEN"}
    data |= {"local_address": "127.0.0.1", "local_port": 80, "backlog": 5} | fields
    return _file(1, "socket", "socket:[7001]", data=_socket(7001, **data))


def test_inet_listener_bound_again() -> None:
    (d,) = plan(image((3, inet(reuseaddr=True)))).descriptions
    assert d.make == Bind(
        family="inet", socktype="stream", address="127.0.0.1", port=80, backlog=5,
        reuseaddr=True, reuseport=False, netns=None,
    )  # fmt: skip
    refused(image((3, inet(accept_queue=2))), "accept queue")
    refused(image((3, inet(local_address="::1"))), "another family")
    refused(image((3, inet(local_address="127.0.0.1\n"))), "local address")
    refused(image((3, inet(local_port=0))), "local port 0")
    refused(image((3, inet(backlog=2**20))), "backlog")
    refused(image((3, inet(state="ESTABLISHED"))), "only TCP listeners")
    refused(image((3, inet(interface="eth0"))), "device")
    udp = {"type": "dgram", "proto": "udp", "state": "CLOSE", "backlog": None}
    assert plan(image((3, inet(**udp)))).descriptions[0].make.backlog == 0  # type: ignore[union-attr]
    refused(image((3, inet(**udp, remote_port=53))), "connected UDP")
