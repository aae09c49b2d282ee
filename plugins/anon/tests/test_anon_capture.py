"""asyckpt-anon's handlers against real processes: each test starts a process that
makes the kind of fd for real, captures it through the whole pipeline (freeze, scan,
dispatch, image write and read), and compares every field of the record with what the
process set up.  Every process started is killed by pid when the test ends, pass or
fail (``holding``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import struct
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from asyckpt_anon import (
    HANDLERS,
    AnonHandler,
    AnonInode,
    Epoll,
    EpollHandler,
    EpollTarget,
    EventFd,
    EventFdHandler,
    Fanotify,
    FanotifyHandler,
    FanotifyMark,
    FileHandle,
    Inotify,
    InotifyHandler,
    InotifyWatch,
    MemFd,
    MemFdHandler,
    PidFd,
    PidFdHandler,
    SignalFd,
    SignalFdHandler,
    TimerFd,
    TimerFdHandler,
)

from asyckpt import File, Lock, Owner, checkpoint_tree, read_image
from asyckpt._kernel import pidfd_getfd
from asyckpt.testing import FdHolder, capture_fd, dispatch_with, hold_fd, load_handler

# What every holder below can use: its own helpers, in the holder's own globals.
PRELUDE = """\
import ctypes, fcntl, json, os, platform, signal, struct, time
libc = ctypes.CDLL(None, use_errno=True)
F_SETSIG, F_SETOWN_EX, F_GETOWNER_UIDS = 10, 15, 17


def check(result):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def child():
    # A child that dies with us (PR_SET_PDEATHSIG) and that the test kills by pid.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        libc.prctl(1, signal.SIGKILL)
        os.write(w, b"x")
        while True:
            signal.pause()
    os.read(r, 1)
    os.close(r)
    os.close(w)
    info.setdefault("children", []).append(pid)
    return pid


def uids(fd):
    try:
        return list(struct.unpack("II", fcntl.fcntl(fd, F_GETOWNER_UIDS, bytes(8))))
    except OSError:
        return [None, None]  # a kernel without CONFIG_CHECKPOINT_RESTORE


def fdinfo(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return dict(line.split(":", 1) for line in f.read().splitlines())

def handle(path):
    # The handle the kernel prints for a watched inode is its "fid" handle
    # (AT_HANDLE_FID, 6.5); before that filesystems gave the same one without the flag.
    for flags in (0x200, 0):
        buf = ctypes.create_string_buffer(8 + 128)
        struct.pack_into("I", buf, 0, 128)
        mount_id = ctypes.c_int()
        if libc.name_to_handle_at(-100, path.encode(), buf, ctypes.byref(mount_id), flags) == 0:
            size, kind = struct.unpack_from("Ii", buf)
            return [kind, buf.raw[8 : 8 + size].hex()]
    return None
"""


@contextlib.contextmanager
def holding(code: str) -> Iterator[tuple[FdHolder, dict[str, Any]]]:
    """A process running ``code`` (after PRELUDE), which sets ``fd`` and fills the dict
    ``info`` with what it set up; ``workdir`` is a fresh directory it may use.  Yields
    the holder and ``info``; kills the holder's children, then the holder, by pid."""
    with tempfile.TemporaryDirectory(prefix="asyckpt-anon-") as tmp:
        out = Path(tmp) / "info.json"
        setup = (
            f"info = {{}}\nworkdir = {tmp!r}\n{PRELUDE}\n{textwrap.dedent(code)}\n"
            f"with open({str(out)!r}, 'w') as _f:\n    json.dump(info, _f)\n"
        )
        info: dict[str, Any] = {}
        with hold_fd(code=setup) as holder:
            try:
                info = json.loads(out.read_text())
                yield holder, info
            finally:
                for pid in info.get("children", []):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def capture(pid: int, *handlers: type) -> dict[int, File]:
    """Capture ``pid`` with ``handlers`` (and asyckpt's own) installed; its fds' files."""
    dispatch = dispatch_with(*handlers)
    with tempfile.TemporaryDirectory(prefix="asyckpt-anon-image-") as tmp:
        dest = Path(tmp) / "capture.ackpt"
        trio.run(lambda: checkpoint_tree(pid, dest, dispatch=dispatch))
        image = read_image(dest)
    task = next(t for t in image.tasks if t.pid == pid)
    return {fd.fd: file for fd, file in image.fds(task.fd_table)}


def record(files: dict[int, File], fd: int, handler: type) -> Any:
    """The record ``handler`` made of ``fd``; fails with the file's error if none."""
    file = files[fd]
    loaded = load_handler(handler)
    assert file.handler == loaded.name, (file.handler, file.error)
    return loaded.decode(file.data)


def no_text(locks: list[Lock]) -> list[Lock]:
    """Locks without the kernel's line, whose spacing is not the test's to predict."""
    return [msgspec.structs.replace(lock, text="") for lock in locks]


def lock(
    kind: str, access: str, pid: int, info: dict[str, Any], start: int, end: int | None
) -> Lock:
    """An advisory lock on the inode ``info`` names, as parsed (without its text)."""
    return Lock(
        type=kind,
        mode="ADVISORY",
        access=access,
        pid=pid,
        dev=info["dev"],
        ino=info["ino"],
        start=start,
        end=end,
        text="",
    )


# --- eventfd --------------------------------------------------------------------------------


def test_eventfd_with_owner_and_locks() -> None:
    code = """
    fd = os.eventfd(26, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
    fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", 0, os.getpid()))  # F_OWNER_TID
    fcntl.fcntl(fd, F_SETSIG, signal.SIGUSR2)
    fcntl.flock(fd, fcntl.LOCK_SH)
    fcntl.lockf(fd, fcntl.LOCK_EX, 10, 5)  # bytes 5 to 14
    st = os.fstat(fd)
    mine = fdinfo(fd)
    info.update(dev=st.st_dev, ino=st.st_ino, uids=uids(fd),
                id=int(mine["eventfd-id"]) if "eventfd-id" in mine else None,
                semaphore="eventfd-semaphore" in mine)
    """
    with holding(code) as (holder, info):
        captured = capture_fd(EventFdHandler, holder.pid, holder.fd)
    assert captured.file.handler == "eventfd", captured.file.error
    assert captured.record == EventFd(
        count=26, semaphore=True if info["semaphore"] else None, id=info["id"], nonblock=True
    )
    # Locks and owner are the core's, on the file (for every kind of fd).
    uid, euid = info["uids"]
    assert captured.file.owner == Owner(
        pid=holder.pid, type="tid", signal=signal.SIGUSR2, async_io=False, uid=uid, euid=euid
    )
    # The kernel lists flock locks before POSIX ones.
    assert no_text(captured.file.locks) == [
        lock("FLOCK", "READ", holder.pid, info, 0, None),
        lock("POSIX", "WRITE", holder.pid, info, 5, 14),
    ]
    assert captured.json["data"]["kind"] == "asyckpt.eventfd"


def test_an_o_path_fd_has_no_type_lines_and_no_owner() -> None:
    # O_PATH through /proc gives a descriptor of the eventfd's inode without its file
    # operations: no eventfd fdinfo, no fcntl.  Recorded as such, not failed.
    code = """
    efd = os.eventfd(5)
    fd = os.open(f"/proc/self/fd/{efd}", os.O_PATH)
    """
    with holding(code) as (holder, _):
        captured = capture_fd(EventFdHandler, holder.pid, holder.fd)
    assert captured.file.handler == "eventfd", captured.file.error
    assert captured.record == EventFd(count=None, semaphore=None, id=None, nonblock=False)
    assert (captured.file.owner, captured.file.locks) == (None, [])


# --- epoll ----------------------------------------------------------------------------------

EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP = 0x1, 0x4, 0x8, 0x10, 0x2000
EPOLLEXCLUSIVE, EPOLLONESHOT, EPOLLET = 1 << 28, 1 << 30, 1 << 31


def test_epoll_targets_nested_and_closed() -> None:
    code = f"""
    # x86-64 packs struct epoll_event; elsewhere the u64 is aligned.
    FMT = "=IQ" if platform.machine() == "x86_64" else "=I4xQ"

    def add(ep, target, events, data):
        event = ctypes.create_string_buffer(struct.pack(FMT, events, data))
        check(libc.epoll_ctl(ep, 1, target, event))  # EPOLL_CTL_ADD
        st = os.fstat(target)
        info.setdefault(str(ep), []).append([target, events, data, st.st_ino, st.st_dev])

    fd = check(libc.epoll_create1(0))
    inner = check(libc.epoll_create1(0))
    efd = os.eventfd(0)
    r, w = os.pipe()
    gone = os.eventfd(1)
    keep = os.dup(gone)
    add(inner, efd, {EPOLLOUT}, 1)
    add(fd, efd, {EPOLLIN | EPOLLET}, 0xDEADBEEFCAFEBABE)
    add(fd, r, {EPOLLIN | EPOLLRDHUP}, 2**64 - 1)
    add(fd, inner, {EPOLLIN | EPOLLONESHOT}, 7)
    add(fd, gone, {EPOLLIN | EPOLLEXCLUSIVE}, 0)
    # The watch outlives the fd it was added with: `keep` holds the description.
    os.close(gone)
    info.update(inner=inner, gone=gone, keep=keep)
    """
    with holding(code) as (holder, info):
        files = capture(holder.pid, EpollHandler)
    # A closed tfd still names its watch for KCMP_EPOLL_TFD: the file is `keep`'s.
    file_of = {fd: f.id for fd, f in files.items()} | {info["gone"]: files[info["keep"]].id}
    for ep in (holder.fd, info["inner"]):
        got = record(files, ep, EpollHandler)
        assert isinstance(got, Epoll)
        # The kernel always adds EPOLLERR and EPOLLHUP to a target's events.
        want = [
            EpollTarget(
                tfd=tfd,
                events=events | EPOLLERR | EPOLLHUP,
                data=data,
                pos=0,
                ino=ino,
                dev=dev,
                file=file_of[tfd],
            )
            for tfd, events, data, ino, dev in info[str(ep)]
        ]
        assert sorted(got.targets, key=lambda t: t.tfd or 0) == sorted(want, key=lambda t: t.tfd)
        assert (files[ep].owner, files[ep].locks, got.linked) == (None, [], True)
    # Nested: the outer epoll's target is the inner epoll's own file.
    outer = record(files, holder.fd, EpollHandler)
    assert files[info["inner"]].id in {t.file for t in outer.targets}


def capture_image(pid: int, *handlers: type) -> Any:
    """Capture ``pid``'s tree with ``handlers`` (and asyckpt's own); the image read back."""
    dispatch = dispatch_with(*handlers)
    with tempfile.TemporaryDirectory(prefix="asyckpt-anon-image-") as tmp:
        dest = Path(tmp) / "capture.ackpt"
        trio.run(lambda: checkpoint_tree(pid, dest, dispatch=dispatch))
        return read_image(dest)


def fds_of(image: Any, pid: int) -> dict[int, File]:
    task = next(t for t in image.tasks if t.pid == pid)
    return {fd.fd: file for fd, file in image.fds(task.fd_table)}


def test_epoll_targets_whose_numbers_lie() -> None:
    # The epoll is inherited by a child and closed by its parent, so the image records it
    # through the child; the child then reuses the number of a watched pipe for an
    # eventfd (its tfd names another file in its own table), and the parent alone holds
    # the pipe.  Two watches share one number, told apart by their order (toff).
    code = f"""
    FMT = "=IQ" if platform.machine() == "x86_64" else "=I4xQ"

    def add(ep, target, data):
        event = ctypes.create_string_buffer(struct.pack(FMT, {EPOLLIN}, data))
        check(libc.epoll_ctl(ep, 1, target, event))

    sock, peer = __import__("socket").socketpair()
    ep = check(libc.epoll_create1(0))
    r, w = os.pipe()
    add(ep, r, 1)
    first = os.dup(r)  # keeps the pipe's read end as `r` is reused below
    os.close(r)
    os.dup2(sock.fileno(), r)  # the same number, another file: a second watch of tfd r
    add(ep, r, 2)
    os.close(r)
    sock_fd = sock.fileno()
    ready_r, ready_w = os.pipe()
    kid = os.fork()
    if kid == 0:
        libc.prctl(1, signal.SIGKILL)  # dies with the holder; the test kills it by pid
        os.close(first)
        os.close(sock_fd)
        efd = os.eventfd(0)
        os.dup2(efd, r)  # the watched number, now an eventfd in this table
        os.close(efd)
        os.write(ready_w, b"x")
        while True:
            signal.pause()
    os.read(ready_r, 1)
    info.setdefault("children", []).append(kid)
    os.close(ep)  # the child alone holds the epoll now
    info.update(ep=ep, tfd=r, first=first, sock=sock_fd)
    fd = w
    """
    with holding(code) as (holder, info):
        kid = info["children"][0]
        image = capture_image(holder.pid, EpollHandler, EventFdHandler)
    parent, child_fds = fds_of(image, holder.pid), fds_of(image, kid)
    assert info["ep"] not in parent
    ep = child_fds[info["ep"]]
    assert ep.handler == "epoll", ep.error
    got = load_handler(EpollHandler).decode(ep.data)
    assert isinstance(got, Epoll)
    assert got.linked
    assert [t.tfd for t in got.targets] == [info["tfd"]] * 2
    # The child's fd tfd is its eventfd, which no watch is on.
    assert child_fds[info["tfd"]].handler == "eventfd"
    want = {parent[info["first"]].id, parent[info["sock"]].id}
    assert {t.file for t in got.targets} == want
    assert child_fds[info["tfd"]].id not in want
    # Each watch is matched with its own file, by (dev, ino) too.
    for t in got.targets:
        f = image.files[t.file]
        assert (f.dev, f.ino) == (t.dev, t.ino)


def test_epoll_targets_among_many_descriptions_of_one_inode() -> None:
    # eventfds share one anonymous inode: every eventfd of the tree is a candidate, so
    # the link searches them in kcmp order.  One watch's number now names another
    # eventfd (its first guess, wrong), its description kept alive by a dup.
    code = f"""
    FMT = "=IQ" if platform.machine() == "x86_64" else "=I4xQ"
    fd = check(libc.epoll_create1(0))
    efds = [os.eventfd(i) for i in range(12)]
    for target in (efds[3], efds[7]):
        event = ctypes.create_string_buffer(struct.pack(FMT, {EPOLLIN}, target))
        check(libc.epoll_ctl(fd, 1, target, event))
    keep = os.dup(efds[3])
    os.dup2(efds[0], efds[3])  # the number names eventfd 0's description now
    info.update(stale=efds[3], keep=keep, other=efds[7],
                inos=sorted({{os.fstat(e).st_ino for e in efds}}))
    """
    with holding(code) as (holder, info):
        captured = capture_fd(EpollHandler, holder.pid, holder.fd)
    got = captured.record
    assert isinstance(got, Epoll)
    assert got.linked
    files = fds_of(captured.image, holder.pid)
    assert {t.tfd: t.file for t in got.targets} == {
        info["stale"]: files[info["keep"]].id,
        info["other"]: files[info["other"]].id,
    }
    assert files[info["stale"]].id != files[info["keep"]].id


def test_an_epoll_target_held_outside_the_tree() -> None:
    # The test (outside the tree) takes the eventfd's description from the holder, which
    # then closes its own fd: the watch lives on, and no task of the tree holds it.
    code = f"""
    FMT = "=IQ" if platform.machine() == "x86_64" else "=I4xQ"
    fd = check(libc.epoll_create1(0))
    efd = os.eventfd(0)
    r, w = os.pipe()
    for target in (efd, r):
        event = ctypes.create_string_buffer(struct.pack(FMT, {EPOLLIN}, target))
        check(libc.epoll_ctl(fd, 1, target, event))
    signal.signal(signal.SIGUSR1, lambda *_: os.close(efd))
    info.update(efd=efd, r=r)
    """
    with holding(code) as (holder, info):
        pidfd = os.pidfd_open(holder.pid)
        try:
            mine = pidfd_getfd(pidfd, info["efd"])
        finally:
            os.close(pidfd)
        try:
            os.kill(holder.pid, signal.SIGUSR1)
            gone = Path(f"/proc/{holder.pid}/fd/{info['efd']}")
            for _ in range(1000):  # until the holder has run its handler (no timing)
                if not gone.exists():
                    break
                time.sleep(0.01)
            assert not gone.exists()
            captured = capture_fd(EpollHandler, holder.pid, holder.fd)
        finally:
            os.close(mine)
    got = captured.record
    assert isinstance(got, Epoll)
    assert got.linked
    files = fds_of(captured.image, holder.pid)
    assert {t.tfd: t.file for t in got.targets} == {
        info["efd"]: None,
        info["r"]: files[info["r"]].id,
    }
    text = EpollHandler().render_text(got)
    assert f"{info['efd']}->outside" in text
    assert f"{info['r']}->file {files[info['r']].id}" in text
    rendered = {t["tfd"]: (t["file"], t["in_tree"]) for t in captured.json["rendered"]["targets"]}
    assert rendered == {info["efd"]: (None, False), info["r"]: (files[info["r"]].id, True)}


def test_link_hook_through_the_testing_kit() -> None:
    # The kit runs the hook over this process's own fds, numbered by fd.
    import select

    from asyckpt.testing import facts_of, handler_context, link_record

    ep = select.epoll()
    r, w = os.pipe()
    try:
        ep.register(r)
        ep.register(w, select.EPOLLOUT)
        with handler_context(EpollHandler, os.getpid()) as ctx:
            got = EpollHandler().capture(facts_of(os.getpid(), ep.fileno()), ctx)
            assert not got.linked
            got = link_record(EpollHandler, got, ctx, ep.fileno())
            assert isinstance(got, Epoll)
            assert got.linked
            assert {t.tfd: t.file for t in got.targets} == {r: r, w: w}
            # Only the read end stands for the tree: the write end is outside it.
            got = link_record(EpollHandler, got, ctx, ep.fileno(), files={1: r})
            assert {t.tfd: t.file for t in got.targets} == {r: 1, w: None}
    finally:
        ep.close()
        os.close(r)
        os.close(w)


# --- timerfd --------------------------------------------------------------------------------


def test_timerfds() -> None:
    code = """
    class Ts(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

    class ITs(ctypes.Structure):
        _fields_ = [("interval", Ts), ("value", Ts)]

    def arm(clock, value, interval, sflags=0):
        t = check(libc.timerfd_create(clock, os.O_NONBLOCK))
        spec = ITs(Ts(*interval), Ts(*value))
        check(libc.timerfd_settime(t, sflags, ctypes.byref(spec), None))
        return t

    fd = arm(1, (1000, 0), (2, 500))  # CLOCK_MONOTONIC, relative, periodic
    now = int(time.clock_gettime(time.CLOCK_REALTIME))
    # CLOCK_REALTIME, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, at now + 1000 s
    absolute = arm(0, (now + 1000, 0), (0, 0), 3)
    expired = arm(7, (0, 1_000_000), (0, 0))  # CLOCK_BOOTTIME, one-shot, 1 ms
    time.sleep(0.05)
    idle = check(libc.timerfd_create(1, 0))  # never armed
    info.update(absolute=absolute, expired=expired, idle=idle)
    """
    with holding(code) as (holder, info):
        files = capture(holder.pid, TimerFdHandler)
    periodic = record(files, holder.fd, TimerFdHandler)
    absolute = record(files, info["absolute"], TimerFdHandler)
    # it_value is what remains until the next expiry: at most what was set, and the
    # test took far less than 100 s to get here.
    for got in (periodic, absolute):
        assert got.it_value is not None
        assert 900 <= got.it_value[0] < 1000 or got.it_value == (1000, 0)
    assert msgspec.structs.replace(periodic, it_value=None) == TimerFd(
        clockid=1, ticks=0, settime_flags=0, it_value=None, it_interval=(2, 500)
    )
    assert msgspec.structs.replace(absolute, it_value=None) == TimerFd(
        clockid=0, ticks=0, settime_flags=3, it_value=None, it_interval=(0, 0)
    )
    assert record(files, info["expired"], TimerFdHandler) == TimerFd(
        clockid=7, ticks=1, settime_flags=0, it_value=(0, 0), it_interval=(0, 0)
    )
    assert record(files, info["idle"], TimerFdHandler) == TimerFd(
        clockid=1, ticks=0, settime_flags=0, it_value=(0, 0), it_interval=(0, 0)
    )


# --- signalfd -------------------------------------------------------------------------------


def test_signalfd_mask() -> None:
    signals = [signal.SIGUSR1, signal.SIGTERM, 40]  # 40: a real-time signal
    code = f"""
    mask = (ctypes.c_uint64 * 16)()  # glibc's sigset_t
    for s in {[int(s) for s in signals]}:
        mask[(s - 1) // 64] |= 1 << ((s - 1) % 64)
    fd = check(libc.signalfd(-1, mask, os.O_NONBLOCK))
    """
    with holding(code) as (holder, _):
        captured = capture_fd(SignalFdHandler, holder.pid, holder.fd)
    assert captured.record == SignalFd(
        sigmask=sum(1 << (s - 1) for s in signals), signals=sorted(signals)
    )
    assert (captured.file.owner, captured.file.locks) == (None, [])
    assert captured.json["rendered"] == {"signals": ["SIGUSR1", "SIGTERM", "40"]}


# --- inotify and fanotify -------------------------------------------------------------------

IN_MODIFY, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE = 0x2, 0x8, 0x100, 0x200
IN_EXCL_UNLINK, IN_ONESHOT = 0x04000000, 0x80000000


def test_inotify_watches_and_owner() -> None:
    code = f"""
    fd = check(libc.inotify_init1(os.O_NONBLOCK))
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    watched = os.path.join(workdir, "watched")
    open(watched, "w").close()
    # Unlinked after the watch is added, but kept open: the watch lives on (a watched
    # inode that nothing else holds is dropped by the kernel with IN_IGNORED instead).
    gone = os.path.join(workdir, "gone")
    keep = os.open(gone, os.O_CREAT | os.O_RDWR)
    for path, mask in ((workdir, {IN_CREATE | IN_DELETE}),
                       (watched, {IN_MODIFY | IN_CLOSE_WRITE | IN_EXCL_UNLINK | IN_ONESHOT}),
                       (gone, {IN_MODIFY})):
        wd = check(libc.inotify_add_watch(fd, path.encode(), mask))
        st = os.stat(path)
        info.setdefault("watches", []).append(
            [wd, st.st_ino, st.st_dev, mask, handle(path), os.path.realpath(path), path == gone]
        )
    os.unlink(gone)
    # inotify supports SIGIO; the events of writing the info file must not kill us.
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)
    info["uids"] = uids(fd)
    """
    with holding(code) as (holder, info):
        captured = capture_fd(InotifyHandler, holder.pid, holder.fd)
    assert captured.file.handler == "inotify", captured.file.error
    uid, euid = info["uids"]
    want = Inotify(
        watches=[
            InotifyWatch(
                wd=wd,
                ino=ino,
                dev=dev,
                mask=mask,
                ignored_mask=0,
                handle=None if fh is None else FileHandle(type=fh[0], handle=fh[1]),
                # Resolved from the handle after the thaw; the unlinked one where it was.
                path=path,
                deleted=deleted,
            )
            for wd, ino, dev, mask, fh, path, deleted in info["watches"]
        ],
        resolved=True,
    )
    assert captured.file.owner == Owner(
        pid=holder.pid, type="pid", signal=0, async_io=True, uid=uid, euid=euid
    )
    assert captured.file.locks == []
    got = captured.record
    assert isinstance(got, Inotify)
    assert (
        msgspec.structs.replace(got, watches=sorted(got.watches, key=lambda w: w.wd or 0)) == want
    )
    text = InotifyHandler().render_text(got)
    for wd, _, _, _, _, path, deleted in info["watches"]:
        assert f"{wd}={path}{' (deleted)' if deleted else ''}" in text


def test_inotify_watch_on_another_filesystem_without_a_handle_mount() -> None:
    # A watch whose device asyckpt has no mount of (a detached tmpfs, mounted in a mount
    # namespace of the holder's own and unmounted again after the watch was added, the
    # watched file kept open): its path cannot be resolved, and is None, the handle kept.
    code = """
    fd = check(libc.inotify_init1(0))
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    check(libc.unshare(0x00020000))  # CLONE_NEWNS
    check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None))  # MS_REC | MS_PRIVATE
    check(libc.mount(b"asyckpt-test", workdir.encode(), b"tmpfs", 0, None))
    path = os.path.join(workdir, "private")
    keep = os.open(path, os.O_CREAT | os.O_RDWR)
    wd = check(libc.inotify_add_watch(fd, path.encode(), 0x2))
    check(libc.umount2(workdir.encode(), 2))  # MNT_DETACH: the file stays, unreachable
    info.update(wd=wd)
    """
    with holding(code) as (holder, info):
        captured = capture_fd(InotifyHandler, holder.pid, holder.fd)
    got = captured.record
    assert isinstance(got, Inotify)
    assert got.resolved
    (watch,) = got.watches
    assert watch.wd == info["wd"]
    assert watch.handle is not None
    assert (watch.path, watch.deleted) == (None, False)


FAN_MODIFY, FAN_CLOSE_WRITE, FAN_OPEN = 0x2, 0x8, 0x20
FAN_NONBLOCK, FAN_REPORT_TID = 0x2, 0x100
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM = 0x1, 0x10, 0x100
# The kernel adds its own O_LARGEFILE to the event flags on 64-bit machines (userspace's
# is 0 there); its value differs between architectures.
KERNEL_O_LARGEFILE = (
    {"aarch64": 0o400000, "ppc64le": 0o200000, "ppc64": 0o200000}.get(platform.machine(), 0o100000)
    if struct.calcsize("P") == 8
    else 0
)


def test_fanotify_marks() -> None:
    code = f"""
    fd = check(libc.fanotify_init({FAN_NONBLOCK | FAN_REPORT_TID}, os.O_RDONLY | os.O_CLOEXEC))
    libc.fanotify_mark.argtypes = [
        ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p
    ]
    watched = os.path.join(workdir, "watched")
    open(watched, "w").close()
    check(libc.fanotify_mark(fd, {FAN_MARK_ADD}, {FAN_MODIFY | FAN_CLOSE_WRITE}, -100,
                             watched.encode()))
    check(libc.fanotify_mark(fd, {FAN_MARK_ADD | FAN_MARK_MOUNT}, {FAN_OPEN}, -100,
                             workdir.encode()))
    check(libc.fanotify_mark(fd, {FAN_MARK_ADD | FAN_MARK_FILESYSTEM}, {FAN_CLOSE_WRITE}, -100,
                             workdir.encode()))
    st = os.stat(watched)
    d = os.open(workdir, os.O_RDONLY)
    info.update(ino=st.st_ino, dev=st.st_dev, handle=handle(watched),
                mnt_id=int(fdinfo(d)["mnt_id"]))
    os.close(d)
    """
    with holding(code) as (holder, info):
        captured = capture_fd(FanotifyHandler, holder.pid, holder.fd)
    assert captured.file.handler == "fanotify", captured.file.error
    got = captured.record
    assert isinstance(got, Fanotify)
    fh = info["handle"]
    none = {"ino": None, "dev": None, "mnt_id": None, "handle": None}
    same = {"mflags": 0, "ignored_mask": 0}
    want = [
        FanotifyMark(
            object="inode",
            ino=info["ino"],
            dev=info["dev"],
            mnt_id=None,
            mask=FAN_MODIFY | FAN_CLOSE_WRITE,
            handle=None if fh is None else FileHandle(type=fh[0], handle=fh[1]),
            **same,
        ),
        FanotifyMark(**(none | {"mnt_id": info["mnt_id"]}), object="mount", mask=FAN_OPEN, **same),
        FanotifyMark(
            **(none | {"dev": info["dev"]}), object="filesystem", mask=FAN_CLOSE_WRITE, **same
        ),
    ]
    assert msgspec.structs.replace(got, marks=sorted(got.marks, key=lambda m: m.object)) == (
        Fanotify(
            flags=FAN_NONBLOCK | FAN_REPORT_TID,
            event_flags=os.O_RDONLY | os.O_CLOEXEC | KERNEL_O_LARGEFILE,
            marks=sorted(want, key=lambda m: m.object),
        )
    )


# --- pidfd ----------------------------------------------------------------------------------


def test_pidfds_live_exited_thread_and_in_a_pid_namespace() -> None:
    code = """
    import threading
    live = child()
    fd = os.pidfd_open(live)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    gone = os.pidfd_open(dead)
    os.waitpid(dead, 0)  # reaped: the pidfd now names nobody
    worker = threading.Thread(target=signal.pause, daemon=True)
    worker.start()
    thread = os.pidfd_open(worker.native_id, os.O_EXCL)  # PIDFD_THREAD (Linux 6.9)
    check(libc.unshare(0x20000000))  # CLONE_NEWPID: our next child is pid 1 there
    nested = child()
    in_ns = os.pidfd_open(nested)
    outside = os.pidfd_open(os.getppid())  # the test runner: not in the captured tree
    info.update(live=live, gone=gone, thread=thread, tid=worker.native_id, nested=nested,
                in_ns=in_ns, outside=outside, parent=os.getppid())
    """
    with holding(code) as (holder, info):
        files = capture(holder.pid, PidFdHandler)
    assert record(files, holder.fd, PidFdHandler) == PidFd(
        pid=info["live"], nspid=[info["live"]], thread=False, in_tree=True
    )
    assert record(files, info["gone"], PidFdHandler) == PidFd(pid=-1, nspid=[-1], thread=False)
    assert record(files, info["thread"], PidFdHandler) == PidFd(
        pid=info["tid"], nspid=[info["tid"]], thread=True, in_tree=True
    )
    assert record(files, info["in_ns"], PidFdHandler) == PidFd(
        pid=info["nested"], nspid=[info["nested"], 1], thread=False, in_tree=True
    )
    assert record(files, info["outside"], PidFdHandler) == PidFd(
        pid=info["parent"], nspid=[info["parent"]], thread=False, in_tree=False
    )


# --- memfd ----------------------------------------------------------------------------------

F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW = 0x1, 0x2, 0x4


def test_memfds() -> None:
    code = f"""
    fd = os.memfd_create("a b:c", os.MFD_ALLOW_SEALING)
    os.write(fd, b"x" * 5000)
    os.ftruncate(fd, 10000)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, {F_SEAL_SHRINK | F_SEAL_GROW})
    fcntl.flock(fd, fcntl.LOCK_EX)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 10, 20, 0))
    fcntl.fcntl(fd, fcntl.F_SETOWN, -os.getpgrp())  # a process group
    fcntl.fcntl(fd, F_SETSIG, signal.SIGUSR1)
    plain = os.memfd_create("plain")
    opath = os.open(f"/proc/self/fd/{{plain}}", os.O_PATH)
    try:
        huge = os.memfd_create("huge", os.MFD_HUGETLB)
    except OSError:
        huge = None  # no hugetlbfs here
    st = os.fstat(fd)
    info.update(dev=st.st_dev, ino=st.st_ino, blocks=st.st_blocks,
                plain=plain, opath=opath, huge=huge,
                plain_blocks=os.fstat(plain).st_blocks)
    """
    with holding(code) as (holder, info):
        files = capture(holder.pid, MemFdHandler)
    # The memfd handler wins over asyckpt's reg handler, installed alongside.
    got = record(files, holder.fd, MemFdHandler)
    assert isinstance(got, MemFd)
    assert files[holder.fd].pos == 5000
    assert got == MemFd(
        name="a b:c",
        size=10000,
        blocks=info["blocks"],
        seals=F_SEAL_SHRINK | F_SEAL_GROW,
        hugetlb=False,
    )
    # A memfd is a regular file: with neither O_ASYNC (shmem cannot take it) nor a lease,
    # its owner has no effect and is not read (docs/image-format.md, "owner").
    assert files[holder.fd].owner is None
    assert no_text(files[holder.fd].locks) == [
        lock("FLOCK", "WRITE", holder.pid, info, 0, None),
        lock("OFDLCK", "WRITE", -1, info, 10, 29),
    ]
    # Without MFD_ALLOW_SEALING a memfd is born sealed against more seals.
    plain = MemFd(
        name="plain", size=0, blocks=info["plain_blocks"], seals=F_SEAL_SEAL, hugetlb=False
    )
    assert record(files, info["plain"], MemFdHandler) == plain
    assert record(files, info["opath"], MemFdHandler) == msgspec.structs.replace(
        plain, seals=None, hugetlb=None
    )
    if info["huge"] is not None:
        assert record(files, info["huge"], MemFdHandler).hugetlb is True


# --- any other anon inode -------------------------------------------------------------------

# Syscall numbers the standard library does not wrap (io_uring_setup is 425 everywhere).
SYSCALLS = {
    "x86_64": {"userfaultfd": 323, "perf_event_open": 298, "bpf": 321},
    "aarch64": {"userfaultfd": 282, "perf_event_open": 241, "bpf": 280},
}.get(platform.machine(), {})

OTHER_ANON = [
    pytest.param(
        "fd = check(libc.syscall(425, 4, ctypes.create_string_buffer(120)))",  # 4 SQ entries
        "io_uring",
        # What 4 entries make: a ring of 4 submissions and 8 completions, all empty.
        {
            "SqMask": 3,
            "CqMask": 7,
            "SqHead": 0,
            "SqTail": 0,
            "CqHead": 0,
            "CqTail": 0,
            "SQEs": 0,
            "CQEs": 0,
            "SqThread": -1,
            "UserFiles": 0,
            "UserBufs": 0,
        },
        id="io_uring",
    ),
    pytest.param(
        f"fd = check(libc.syscall({SYSCALLS.get('userfaultfd', -1)}, os.O_NONBLOCK))",
        "userfaultfd",
        {"pending": 0, "total": 0, "api": 0xAA, "features": 0},  # before the UFFDIO_API call
        id="userfaultfd",
    ),
    pytest.param(
        # A disabled software counter (PERF_TYPE_SOFTWARE, cpu-clock) of this process.
        "attr = ctypes.create_string_buffer(128)\n"
        "struct.pack_into('IIQQQQ', attr, 0, 1, 128, 0, 0, 0, 1)\n"
        f"fd = check(libc.syscall({SYSCALLS.get('perf_event_open', -1)}, attr, 0, -1, -1, 0))",
        "perf_event",
        {},
        id="perf_event",
    ),
    pytest.param(
        # BPF_MAP_CREATE of an array: 4-byte keys, 8-byte values, 4 entries.
        "attr = ctypes.create_string_buffer(struct.pack('IIIII', 2, 4, 8, 4, 0), 128)\n"
        f"fd = check(libc.syscall({SYSCALLS.get('bpf', -1)}, 0, attr, 128))",
        "bpf-map",
        {"map_type": 2, "key_size": 4, "value_size": 8, "max_entries": 4, "map_flags": 0},
        id="bpf-map",
    ),
]


@pytest.mark.parametrize(("code", "kind", "values"), OTHER_ANON)
def test_other_anon_inodes(code: str, kind: str, values: dict[str, int]) -> None:
    if kind != "io_uring" and not SYSCALLS:
        pytest.skip(f"no syscall numbers for {platform.machine()}")
    # A kernel may refuse to make one (built without it, disabled by a sysctl): the
    # holder then says so instead of holding it.
    guarded = f"try:\n{textwrap.indent(code, '    ')}\nexcept OSError as exc:\n"
    guarded += "    info['refused'] = str(exc)\n    fd = 0\n"
    with holding(guarded) as (holder, info):
        if "refused" in info:
            pytest.skip(f"cannot make a {kind} here: {info['refused']}")
        captured = capture_fd(AnonHandler, holder.pid, holder.fd)
    assert captured.file.handler == "anon", captured.file.error
    got = captured.record
    assert isinstance(got, AnonInode)
    assert (got.type, captured.file.owner, captured.file.locks) == (kind, None, [])
    assert {k: got.values.get(k) for k in values} == values


# --- all of them at once --------------------------------------------------------------------


def test_every_handler_on_one_process() -> None:
    """One process holding one fd of each kind, captured with all of asyckpt-anon's
    handlers installed: each fd goes to its own handler, none fails."""
    code = """
    kinds = {}
    kinds["eventfd"] = os.eventfd(0)
    kinds["epoll"] = check(libc.epoll_create1(0))
    kinds["timerfd"] = check(libc.timerfd_create(1, 0))
    kinds["signalfd"] = check(libc.signalfd(-1, (ctypes.c_uint64 * 16)(1), 0))
    kinds["inotify"] = check(libc.inotify_init1(0))
    kinds["fanotify"] = check(libc.fanotify_init(0, 0))
    kinds["pidfd"] = os.pidfd_open(os.getpid())
    kinds["memfd"] = os.memfd_create("m")
    kinds["anon"] = check(libc.syscall(425, 2, ctypes.create_string_buffer(120)))
    info["kinds"] = kinds
    fd = kinds["eventfd"]
    """
    with holding(code) as (holder, info):
        files = capture(holder.pid, *HANDLERS)
    for name, fd in info["kinds"].items():
        assert (files[fd].handler, files[fd].error) == (name, None)
