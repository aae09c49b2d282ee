"""asyckpt-devices' handlers against real processes: each test starts a process that
opens the device (a pty it makes its controlling terminal, /dev/null, a loop device the
test binds to a file, namespace files), captures it through the whole pipeline, and
compares every field of the record with what was set up.  Every process started is
killed by pid when the test ends, pass or fail; a bound loop device is released."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyckpt_anon
import msgspec
import pytest
import trio
from asyckpt_devices import (
    BlockDevice,
    BlockDeviceHandler,
    CharDevice,
    CharDeviceHandler,
    NsFile,
    NsHandler,
    Termios,
    Tty,
    TtyHandler,
)

from asyckpt import File, Lock, Owner, checkpoint_tree, read_image
from asyckpt.testing import FdHolder, dispatch_with, hold_fd, load_handler

DEVICE_HANDLERS = (TtyHandler, CharDeviceHandler, BlockDeviceHandler, NsHandler)

PRELUDE = """\
import ctypes, fcntl, json, os, signal, struct, termios
libc = ctypes.CDLL(None, use_errno=True)
F_SETSIG, F_SETOWN_EX, F_GETOWNER_UIDS = 10, 15, 17
TIOCGPTN = 0x80045430


def check(result):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def uids(fd):
    try:
        return list(struct.unpack("II", fcntl.fcntl(fd, F_GETOWNER_UIDS, bytes(8))))
    except OSError:
        return [None, None]  # a kernel without CONFIG_CHECKPOINT_RESTORE


def node(fd):
    st = os.fstat(fd)
    return {"rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)], "dev": st.st_dev,
            "ino": st.st_ino}
"""


@contextlib.contextmanager
def holding(code: str) -> Iterator[tuple[FdHolder, dict[str, Any]]]:
    """A process running ``code`` (after PRELUDE), which sets ``fd`` and fills the dict
    ``info`` with what it set up; killed by pid at the end."""
    with tempfile.TemporaryDirectory(prefix="asyckpt-devices-") as tmp:
        out = Path(tmp) / "info.json"
        setup = (
            f"info = {{}}\n{PRELUDE}\n{textwrap.dedent(code)}\n"
            f"with open({str(out)!r}, 'w') as _f:\n    json.dump(info, _f)\n"
        )
        with hold_fd(code=setup) as holder:
            yield holder, json.loads(out.read_text())


def capture(pid: int, *handlers: type) -> tuple[dict[int, File], dict[str, int]]:
    """Capture ``pid`` with ``handlers`` (and asyckpt's own) installed: its fds' files,
    and the count of generic records per kind."""
    dispatch = dispatch_with(*handlers)
    with tempfile.TemporaryDirectory(prefix="asyckpt-devices-image-") as tmp:
        dest = Path(tmp) / "capture.ackpt"
        summary = trio.run(lambda: checkpoint_tree(pid, dest, dispatch=dispatch))
        image = read_image(dest)
    task = next(t for t in image.tasks if t.pid == pid)
    return {fd.fd: file for fd, file in image.fds(task.fd_table)}, dict(summary.generic)


def record(files: dict[int, File], fd: int, handler: type) -> Any:
    file = files[fd]
    loaded = load_handler(handler)
    assert file.handler == loaded.name, (file.handler, file.error)
    return loaded.decode(file.data)


def no_text(locks: list[Lock]) -> list[Lock]:
    return [msgspec.structs.replace(lock, text="") for lock in locks]


def lock(kind: str, access: str, pid: int, where: dict[str, Any], end: int | None) -> Lock:
    """An advisory lock from byte 0 on the inode ``where`` names, without its text."""
    return Lock(
        type=kind,
        mode="ADVISORY",
        access=access,
        pid=pid,
        dev=where["dev"],
        ino=where["ino"],
        start=0,
        end=end,
        text="",
    )


# --- ttys -----------------------------------------------------------------------------------


def test_ptys_dev_tty_and_the_controlling_terminal() -> None:
    code = """
    def settings(fd):
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
        chars = [c if isinstance(c, int) else c[0] for c in cc]
        return [iflag, oflag, cflag, lflag, ispeed, ospeed, chars]

    # hold_fd's process leads a session of its own: the slave becomes its terminal.
    fd, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 640, 480))
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    fcntl.ioctl(fd, termios.TIOCPKT, struct.pack("i", 1))
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_ASYNC)
    fcntl.lockf(slave, fcntl.LOCK_SH, 10, 0)  # a read lock on bytes 0 to 9
    dev_tty = os.open("/dev/tty", os.O_RDWR)
    other, other_slave = os.openpty()  # nobody's controlling terminal
    locked = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)  # no unlockpt
    opath = os.open("/dev/ptmx", os.O_PATH)
    info.update(
        slave=slave, dev_tty=dev_tty, other=other, locked=locked, opath=opath,
        index=int(os.ttyname(slave).rsplit("/", 1)[1]),
        other_index=int(os.ttyname(other_slave).rsplit("/", 1)[1]),
        locked_index=struct.unpack("I", fcntl.ioctl(locked, TIOCGPTN, bytes(4)))[0],
        master=node(fd), slave_node=node(slave), tty_node=node(dev_tty),
        settings=settings(slave), other_settings=settings(other),
        locked_settings=settings(locked), uids=uids(fd),
    )
    """
    with holding(code) as (holder, info):
        files, _ = capture(holder.pid, TtyHandler)
    pid = holder.pid
    ptmx = dict(
        major=info["master"]["rdev"][0],
        minor=info["master"]["rdev"][1],
        driver="/dev/ptmx",
        driver_type="system",
        pty="master",
    )
    slave_dev = tuple(info["slave_node"]["rdev"])
    settings = Termios(**dict(zip(Termios.__struct_fields__, info["settings"], strict=True)))
    assert not settings.lflag & 0o10  # ECHO, switched off through the slave
    size = (33, 101, 640, 480)
    uid, euid = info["uids"]

    # The master: its pty's index, its slave as the terminal reached, the session whose
    # controlling terminal that is, packet mode, and the owner of its SIGIO.
    assert record(files, holder.fd, TtyHandler) == Tty(
        **ptmx,
        index=info["index"],
        tty=slave_dev,
        holder_controlling=True,
        session=pid,
        fg_pgrp=pid,
        termios=settings,
        winsize=size,
        locked=False,
        packet=True,
    )
    # Locks and owner are the core's, on the file.
    assert files[holder.fd].owner == Owner(
        pid=pid, type="pid", signal=0, async_io=True, uid=uid, euid=euid
    )
    assert files[holder.fd].locks == []
    assert no_text(files[info["slave"]].locks) == [
        lock("POSIX", "READ", pid, info["slave_node"], 9)
    ]
    assert files[info["slave"]].owner is None
    assert record(files, info["slave"], TtyHandler) == Tty(
        major=slave_dev[0],
        minor=slave_dev[1],
        driver="pty_slave",
        driver_type="pty:slave",
        pty="slave",
        index=info["index"],
        tty=slave_dev,
        holder_controlling=True,
        session=pid,
        fg_pgrp=pid,
        termios=settings,
        winsize=size,
        locked=None,
        packet=None,
    )
    # /dev/tty reaches the controlling terminal.
    assert record(files, info["dev_tty"], TtyHandler) == Tty(
        major=5,
        minor=0,
        driver="/dev/tty",
        driver_type="system:/dev/tty",
        pty=None,
        index=None,
        tty=slave_dev,
        holder_controlling=True,
        session=pid,
        fg_pgrp=pid,
        termios=settings,
        winsize=size,
        locked=None,
        packet=None,
    )
    other, locked = info["other_index"], info["locked_index"]
    for fd, index, is_locked, key in (
        (info["other"], other, False, "other_settings"),
        (info["locked"], locked, True, "locked_settings"),
    ):
        assert record(files, fd, TtyHandler) == Tty(
            **ptmx,
            index=index,
            tty=(slave_dev[0], index),
            holder_controlling=False,
            session=None,
            fg_pgrp=None,
            termios=Termios(**dict(zip(Termios.__struct_fields__, info[key], strict=True))),
            winsize=(0, 0, 0, 0),
            locked=is_locked,
            packet=False,
        )
    # An O_PATH fd on /dev/ptmx made no pty: only the node is known.
    assert record(files, info["opath"], TtyHandler) == Tty(
        **(ptmx | {"pty": None}),
        index=None,
        tty=None,
        holder_controlling=False,
        session=None,
        fg_pgrp=None,
        termios=None,
        winsize=None,
        locked=None,
        packet=None,
    )


# --- other character devices ----------------------------------------------------------------


def test_character_devices() -> None:
    code = """
    fd = os.open("/dev/null", os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)
    fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", 0, os.getpid()))  # F_OWNER_TID
    fcntl.fcntl(fd, F_SETSIG, signal.SIGUSR1)
    opath = os.open("/dev/full", os.O_PATH)
    info.update(null=node(fd), opath=opath, uids=uids(fd))
    """
    with holding(code) as (holder, info):
        files, _ = capture(holder.pid, *DEVICE_HANDLERS)
    null = record(files, holder.fd, CharDeviceHandler)
    uid, euid = info["uids"]
    assert null == CharDevice(major=1, minor=3, name="null", subsystem="mem")
    assert files[holder.fd].owner == Owner(
        pid=holder.pid, type="tid", signal=signal.SIGUSR1, async_io=False, uid=uid, euid=euid
    )
    assert no_text(files[holder.fd].locks) == [
        lock("FLOCK", "WRITE", holder.pid, info["null"], None)
    ]
    assert (files[info["opath"]].owner, files[info["opath"]].locks) == (None, [])
    assert record(files, info["opath"], CharDeviceHandler) == CharDevice(
        major=1, minor=7, name="full", subsystem="mem"
    )


# --- block devices --------------------------------------------------------------------------

LOOP_SET_FD, LOOP_CLR_FD, LOOP_CTL_GET_FREE = 0x4C00, 0x4C01, 0x4C82


@contextlib.contextmanager
def bound_loop(backing: Path) -> Iterator[str]:
    """A free loop device bound to ``backing``, released at the end."""
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices here")
    with contextlib.ExitStack() as stack:
        ctl = os.open("/dev/loop-control", os.O_RDWR)
        stack.callback(os.close, ctl)
        back = os.open(backing, os.O_RDWR)
        stack.callback(os.close, back)
        for _ in range(5):  # another user may take the free one first
            path = f"/dev/loop{fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)}"
            loop = os.open(path, os.O_RDWR)
            stack.callback(os.close, loop)
            try:
                fcntl.ioctl(loop, LOOP_SET_FD, back)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                continue
            stack.callback(fcntl.ioctl, loop, LOOP_CLR_FD, 0)
            yield path
            return
        pytest.skip("no free loop device")


def test_a_loop_device(tmp_path: Path) -> None:
    backing = tmp_path / "disk"
    with backing.open("wb") as f:
        f.truncate(3 << 20)
    with bound_loop(backing) as path:
        code = f"""
        fd = os.open({path!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        opath = os.open({path!r}, os.O_PATH)
        info.update(node=node(fd), opath=opath)
        """
        with holding(code) as (holder, info):
            files, _ = capture(holder.pid, BlockDeviceHandler)
    major, minor = info["node"]["rdev"]
    got = record(files, holder.fd, BlockDeviceHandler)
    assert got == BlockDevice(major=major, minor=minor, name=os.path.basename(path), size=3 << 20)
    assert no_text(files[holder.fd].locks) == [
        lock("FLOCK", "READ", holder.pid, info["node"], None)
    ]
    assert record(files, info["opath"], BlockDeviceHandler) == BlockDevice(
        major=major, minor=minor, name=os.path.basename(path), size=None
    )


# --- namespace files ------------------------------------------------------------------------


def test_namespace_files() -> None:
    code = """
    ino = lambda fd: os.fstat(fd).st_ino
    old_uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
    check(libc.unshare(0x04000000))  # CLONE_NEWUTS: old_uts is no longer ours
    uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
    info.update(old_uts=[old_uts, ino(old_uts)], uts=[uts, ino(uts)], net=[fd, ino(fd)],
                pid=[pid_ns, ino(pid_ns)])
    """
    with holding(code) as (holder, info):
        files, _ = capture(holder.pid, NsHandler)
    want = {
        "old_uts": NsFile(type="uts", ino=info["old_uts"][1], holder_ns=[]),
        "uts": NsFile(type="uts", ino=info["uts"][1], holder_ns=["uts"]),
        "net": NsFile(type="net", ino=info["net"][1], holder_ns=["net"]),
        "pid": NsFile(type="pid", ino=info["pid"][1], holder_ns=["pid", "pid_for_children"]),
    }
    for key, ns in want.items():
        assert record(files, info[key][0], NsHandler) == ns


# --- with asyckpt-anon: nothing left generic ------------------------------------------------


def test_no_fd_left_generic_but_pipes_and_sockets() -> None:
    """One process holding a device, a tty, a block device, a namespace file and anon
    inodes, captured with every handler of asyckpt-devices and asyckpt-anon: each of its
    fds gets a handler's record but its pipes and sockets (another plugin's)."""
    code = """
    import socket
    fd, slave = os.openpty()
    dev = [os.open(p, os.O_RDONLY) for p in ("/dev/null", "/dev/urandom", "/dev/loop0")
           if os.path.exists(p)]
    ns = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    anon = [os.eventfd(0), check(libc.epoll_create1(0)), os.memfd_create("m"),
            os.pidfd_open(os.getpid()), check(libc.inotify_init1(0))]
    r, w = os.pipe()
    a, b = socket.socketpair()
    info.update(pipe=[r, w], socket=[a.detach(), b.detach()])
    """
    with holding(code) as (holder, info):
        files, generic = capture(holder.pid, *DEVICE_HANDLERS, *asyckpt_anon.HANDLERS)
    assert set(generic) <= {"pipe", "socket"}
    for fd, file in files.items():
        if file.type in ("pipe", "socket"):
            continue
        assert file.handler is not None, (fd, file.path, file.error)
        assert file.error is None
    assert {files[fd].type for fd in info["pipe"] + info["socket"]} == {"pipe", "socket"}
