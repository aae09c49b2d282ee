"""asyckpt's fd-type handlers for devices and special files.

* ``tty`` claims the device majors the kernel's tty drivers use (read from
  /proc/tty/drivers when the handler is loaded) and, of those, the minors in a driver's
  range: terminals and pseudo-terminals, master or slave, their index, and whose
  controlling terminal they are.
* ``chr`` and ``blk`` take every other character and block device, at priority -1 so
  that any handler naming a device (asyckpt-example-chardev's /dev/null...) goes first.
* ``ns`` claims namespace files (``net:[N]``...), which the core would see as regular.

The locks held through a description and its I/O owner are the core's (``File.locks``,
``File.owner``), for every kind of fd.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import struct
import termios
from typing import ClassVar, NamedTuple

import msgspec

from asyckpt import Device, FdFacts, HandlerContext, os_name, split_name

from .parse import TtyDriver, parse_stat_tty, parse_tty_drivers
from .records import BlockDevice, CharDevice, NsFile, Termios, Tty

__all__ = [
    "BlockDevice",
    "BlockDeviceHandler",
    "CharDevice",
    "CharDeviceHandler",
    "NsFile",
    "NsHandler",
    "Termios",
    "Tty",
    "TtyHandler",
]

TTY_DRIVERS = "/proc/tty/drivers"
# When /proc/tty/drivers cannot be read: the majors Documentation/admin-guide/devices.txt
# gives the kernel's own terminals (virtual consoles and 8250 serial 4, /dev/tty,
# /dev/console and /dev/ptmx 5, Unix98 pty masters 128-135 and slaves 136-143).
FALLBACK_TTY_MAJORS = frozenset({4, 5, *range(128, 144)})

# _IOR(type, nr, size): powerpc, mips, sparc and alpha put the read bit at 29 and have
# 13 size bits; every other architecture (asm-generic/ioctl.h) at 30 with 14.
_IOC_READ = 2 << 29 if platform.machine().startswith(("ppc", "mips", "sparc", "alpha")) else 2 << 30


def _ior(kind: int, nr: int, size: int) -> int:
    return _IOC_READ | size << 16 | kind << 8 | nr


TIOCGPTN = _ior(ord("T"), 0x30, 4)
TIOCGDEV = _ior(ord("T"), 0x32, 4)
TIOCGPKT = _ior(ord("T"), 0x38, 4)
TIOCGPTLCK = _ior(ord("T"), 0x39, 4)
TIOCGSID = 0x5429  # not in Python's termios; asm-generic and powerpc number
BLKGETSIZE64 = _ior(0x12, 114, 8)
# A tty that was hung up answers every ioctl with EIO; a driver without the request,
# ENOTTY or EINVAL.  Those leave the field None; anything else is a real failure.
_UNANSWERED = frozenset({errno.EIO, errno.ENOTTY, errno.EINVAL})


def _ioctl_int(fd: int, request: int, fmt: str = "i") -> int | None:
    try:
        value: int = struct.unpack(fmt, fcntl.ioctl(fd, request, bytes(struct.calcsize(fmt))))[0]
    except OSError as exc:
        if exc.errno in _UNANSWERED:
            return None
        raise
    return value


def _live_fd(facts: FdFacts, ctx: HandlerContext) -> int | None:
    """The live open file description, or None for an ``O_PATH`` fd, through which no
    ioctl is allowed."""
    if facts.fdinfo.flags & os.O_PATH:
        return None
    return ctx.take_fd(facts.fd)


def _read_drivers() -> list[TtyDriver] | None:
    try:
        with open(TTY_DRIVERS) as f:
            return parse_tty_drivers(f.read())
    except OSError:
        return None


class TtyHandler:
    """Terminals: pty master or slave, index, the terminal reached, session, settings."""

    name: ClassVar[str] = "tty"
    record_type: ClassVar[type[msgspec.Struct]] = Tty

    def __init__(self) -> None:
        # The tty drivers of this kernel, read once when loaded: declared as devices so
        # that dispatch finds ttys by table lookup, with claims() checking the minor.
        self.drivers = _read_drivers()
        majors = FALLBACK_TTY_MAJORS if self.drivers is None else {d.major for d in self.drivers}
        self.devices = frozenset(Device("chr", major) for major in majors)

    def driver_of(self, rdev: int) -> TtyDriver | None:
        major, minor = os.major(rdev), os.minor(rdev)
        for driver in self.drivers or ():
            if driver.covers(major, minor):
                return driver
        return None

    def claims(self, facts: FdFacts) -> bool:
        return self.drivers is None or self.driver_of(facts.st.st_rdev) is not None

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> Tty:
        rdev = facts.st.st_rdev
        major, minor = os.major(rdev), os.minor(rdev)
        driver = self.driver_of(rdev)
        fd = _live_fd(facts, ctx)
        tty_index = next((v for k, v in facts.fdinfo.extra if k == "tty-index"), None)

        pty: str | None = None
        index: int | None = None
        if tty_index is not None and tty_index.isdigit():  # only a Unix98 master prints it
            pty, index = "master", int(tty_index)
        elif fd is not None and (ptn := _ioctl_int(fd, TIOCGPTN, "I")) is not None:
            pty, index = "master", ptn  # a kernel that predates tty-index
        elif driver is not None:
            if driver.type in ("pty:master", "pty:slave"):
                pty = driver.type[len("pty:") :]
            if not driver.type.startswith("system"):  # aliases have no index of their own
                index = minor - driver.minor_start

        tty: tuple[int, int] | None = None
        session = fg_pgrp = None
        settings: Termios | None = None
        winsize: tuple[int, int, int, int] | None = None
        locked = packet = None
        if fd is not None:
            dev = _ioctl_int(fd, TIOCGDEV, "I")
            tty = None if dev is None else (os.major(dev), os.minor(dev))
            # TIOCGSID and TIOCGPGRP answer through a master always, through another
            # tty only if it is asyckpt's own controlling terminal.
            session = _ioctl_int(fd, TIOCGSID)
            if session is not None:
                fg_pgrp = _ioctl_int(fd, termios.TIOCGPGRP)
            settings = _termios(fd)
            size = _ioctl_bytes(fd, termios.TIOCGWINSZ, 8)
            winsize = None if size is None else struct.unpack("HHHH", size)
            if pty == "master":
                lck, pkt = _ioctl_int(fd, TIOCGPTLCK), _ioctl_int(fd, TIOCGPKT)
                locked = None if lck is None else bool(lck)
                packet = None if pkt is None else bool(pkt)

        controlling: bool | None = None
        try:
            with open(f"/proc/{facts.pid}/stat", "rb") as f:
                task = parse_stat_tty(f.read())
        except OSError:
            pass  # the task is gone (an unfrozen capture): not known
        else:
            reached = tty if tty is not None else (major, minor)
            controlling = task.tty_nr != 0 and (
                (os.major(task.tty_nr), os.minor(task.tty_nr)) == reached
            )
            if controlling and session is None:
                session, fg_pgrp = task.session, task.tpgid

        return Tty(
            major=major,
            minor=minor,
            driver=None if driver is None else driver.name,
            driver_type=None if driver is None else driver.type,
            pty=pty,
            index=index,
            tty=tty,
            holder_controlling=controlling,
            session=session,
            fg_pgrp=fg_pgrp,
            termios=settings,
            winsize=winsize,
            locked=locked,
            packet=packet,
        )

    def render_text(self, record: Tty) -> str:
        what = f"pty {record.pty}" if record.pty else (record.driver or "tty")
        text = f"{what} {record.index}" if record.index is not None else what
        if record.tty is not None and record.tty != (record.major, record.minor):
            text += f" -> {record.tty[0]}:{record.tty[1]}"
        if record.session is not None:
            text += f" session {record.session}"
        if record.holder_controlling:
            text += " (controlling)"
        return f"[{text}]"


def _ioctl_bytes(fd: int, request: int, size: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, request, bytes(size))
    except OSError as exc:
        if exc.errno in _UNANSWERED:
            return None
        raise


def _termios(fd: int) -> Termios | None:
    try:
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    except termios.error as exc:
        if exc.args and exc.args[0] in _UNANSWERED:
            return None
        raise
    # tcgetattr gives VMIN/VTIME as ints in non-canonical mode, one-byte bytes otherwise.
    chars = [c if isinstance(c, int) else c[0] for c in cc]
    return Termios(
        iflag=iflag, oflag=oflag, cflag=cflag, lflag=lflag, ispeed=ispeed, ospeed=ospeed, cc=chars
    )


class SysfsName(NamedTuple):
    """A name as a record keeps it (``asyckpt.split_name``): text, and its bytes when
    they are not UTF-8."""

    text: str | None
    raw: bytes | None


_NO_NAME = SysfsName(None, None)


def _sysfs_name(path: str) -> SysfsName:
    try:
        return SysfsName(*split_name(os.path.basename(os.readlink(path))))
    except OSError:
        return _NO_NAME


def _sysfs(kind: str, rdev: int) -> tuple[SysfsName, SysfsName]:
    """The kernel's name and subsystem of a device number, from /sys/dev."""
    base = f"/sys/dev/{kind}/{os.major(rdev)}:{os.minor(rdev)}"
    name = _sysfs_name(base)
    if name.text is None:
        return _NO_NAME, _NO_NAME
    return name, _sysfs_name(f"{base}/subsystem")


class CharDeviceHandler:
    """Every character device no more specific handler claims: number, kernel name."""

    name: ClassVar[str] = "chr"
    record_type: ClassVar[type[msgspec.Struct]] = CharDevice
    kinds: ClassVar[frozenset[str]] = frozenset({"chr"})
    priority: ClassVar[int] = -1

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> CharDevice:
        rdev = facts.st.st_rdev
        name, subsystem = _sysfs("char", rdev)
        return CharDevice(
            major=os.major(rdev),
            minor=os.minor(rdev),
            name=name.text,
            subsystem=subsystem.text,
            name_bytes=name.raw,
            subsystem_bytes=subsystem.raw,
        )

    def render_text(self, record: CharDevice) -> str:
        # As the kernel has the names: show escapes every line once.
        names = ((record.subsystem, record.subsystem_bytes), (record.name, record.name_bytes))
        what = "/".join(os_name(x, raw) for x, raw in names if x) or "chr"
        return f"[{what} {record.major}:{record.minor}]"


class BlockDeviceHandler:
    """Every block device no more specific handler claims: number, name, size."""

    name: ClassVar[str] = "blk"
    record_type: ClassVar[type[msgspec.Struct]] = BlockDevice
    kinds: ClassVar[frozenset[str]] = frozenset({"blk"})
    priority: ClassVar[int] = -1

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> BlockDevice:
        rdev = facts.st.st_rdev
        fd = _live_fd(facts, ctx)
        name = _sysfs("block", rdev)[0]
        return BlockDevice(
            major=os.major(rdev),
            minor=os.minor(rdev),
            name=name.text,
            size=None if fd is None else _ioctl_int(fd, BLKGETSIZE64, "Q"),
            name_bytes=name.raw,
        )

    def render_text(self, record: BlockDevice) -> str:
        name = "blk" if record.name is None else os_name(record.name, record.name_bytes)
        text = f"{name} {record.major}:{record.minor}"
        if record.size is not None:
            text += f" size={record.size}"
        return f"[{text}]"


NS_TYPES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
# pid and time namespaces have a second entry: the one the task's next children get.
_NS_ENTRIES = {t: (t, f"{t}_for_children") if t in ("pid", "time") else (t,) for t in NS_TYPES}


class NsHandler:
    """Namespace files: which namespace, and whether the holding task is in it."""

    name: ClassVar[str] = "ns"
    record_type: ClassVar[type[msgspec.Struct]] = NsFile
    # An ns file's link text is "TYPE:[INODE]"; no path starts that way.
    link_prefixes: ClassVar[tuple[str, ...]] = tuple(f"{t}:[" for t in NS_TYPES)

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> NsFile:
        kind = facts.link.partition(":")[0]
        mine = []
        for entry in _NS_ENTRIES[kind]:
            try:
                st = os.stat(f"/proc/{facts.pid}/ns/{entry}")
            except OSError:
                continue  # an entry this kernel lacks, or the task is gone
            if (st.st_dev, st.st_ino) == (facts.st.st_dev, facts.st.st_ino):
                mine.append(entry)
        return NsFile(
            type=kind,
            ino=facts.st.st_ino,
            holder_ns=mine,
        )

    def render_text(self, record: NsFile) -> str:
        text = f"{record.type} namespace {record.ino}"
        if record.holder_ns:
            text += " (" + ", ".join(record.holder_ns) + " of the holder)"
        return f"[{text}]"
