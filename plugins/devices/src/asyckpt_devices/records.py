"""The records asyckpt-devices' handlers store in an image (``File.data``).

The device node's path is the file's own ``path``, as the task sees it; ``File.rdev``
has the device number the records split into major and minor.  Whatever the kernel
would not tell (an ``O_PATH`` fd allows no ioctl; a hung-up tty answers none) is None.
Fields are only ever added, with defaults.
"""

from __future__ import annotations

import msgspec

__all__ = ["BlockDevice", "CharDevice", "NsFile", "Termios", "Tty"]


class Termios(msgspec.Struct, kw_only=True):
    """The terminal's settings (TCGETS), as tcgetattr(3) returns them."""

    iflag: int
    oflag: int
    cflag: int
    lflag: int
    ispeed: int
    ospeed: int
    cc: list[int]
    """The control characters, c_cc[0..NCCS-1]."""


class Tty(msgspec.Struct, tag="asyckpt.tty", tag_field="kind", kw_only=True):
    major: int
    """The node's device number."""
    minor: int
    driver: str | None
    """The tty driver of that number (/proc/tty/drivers): ``pty_slave``, ``serial``,
    ``/dev/ptmx``...; None when the table could not be read."""
    driver_type: str | None
    """Its type there: ``pty:slave``, ``system:/dev/tty``, ``serial``, ``console``..."""
    pty: str | None
    """``master`` or ``slave`` for a pseudo-terminal, else None."""
    index: int | None
    """The terminal's index within its driver: the pty number (``/dev/pts/N``) for
    ptys, from the master's fdinfo ``tty-index`` (or TIOCGPTN); the minor's offset in
    the driver's range otherwise; None for the aliases (/dev/tty, /dev/console, ...)."""
    tty: tuple[int, int] | None
    """(major, minor) of the terminal this fd reaches (TIOCGDEV): the node's own for
    most, the real terminal behind /dev/tty or /dev/console, and for a pty master its
    slave (the side that can be a controlling terminal)."""
    holder_controlling: bool | None
    """Whether ``tty`` is the controlling terminal of the task holding the fd (from its
    /proc/PID/stat); None if that could not be read."""
    session: int | None
    """The session whose controlling terminal ``tty`` is, and its foreground process
    group, when the kernel tells: always through a master (TIOCGSID, TIOCGPGRP), else
    only when it is the holding task's own controlling terminal.  None: no session, or
    not known from this fd."""
    fg_pgrp: int | None
    termios: Termios | None
    winsize: tuple[int, int, int, int] | None
    """(rows, columns, x pixels, y pixels), TIOCGWINSZ."""
    locked: bool | None
    """A master's slave is locked (TIOCGPTLCK: unlockpt not called yet); None for other ttys."""
    packet: bool | None
    """A master in packet mode (TIOCGPKT); None for other ttys."""


class CharDevice(msgspec.Struct, tag="asyckpt.chr", tag_field="kind", kw_only=True):
    major: int
    minor: int
    name: str | None
    """The kernel's name for the device of that number (/sys/dev/char/M:m): ``null``,
    ``tun``, ``kvm``...; None when sysfs does not list it."""
    subsystem: str | None
    """Its class or bus there: ``mem``, ``misc``, ``input``..."""
    name_bytes: bytes | None = None
    subsystem_bytes: bytes | None = None
    """The exact bytes of ``name`` and ``subsystem`` when not UTF-8 (a driver may name
    a device after what a user gave it); the text fields are then escaped."""


class BlockDevice(msgspec.Struct, tag="asyckpt.blk", tag_field="kind", kw_only=True):
    major: int
    minor: int
    name: str | None
    """The kernel's name for the device (/sys/dev/block/M:m): ``vda``, ``vda1``,
    ``loop0``...; None when sysfs does not list it."""
    size: int | None
    """The device's size in bytes (BLKGETSIZE64); None for an O_PATH fd."""
    name_bytes: bytes | None = None
    """``name``'s exact bytes when not UTF-8 (``name`` is then escaped)."""


class NsFile(msgspec.Struct, tag="asyckpt.ns", tag_field="kind", kw_only=True):
    """A namespace file (``/proc/PID/ns/TYPE`` opened, or a namespace's bind mount)."""

    type: str
    """``net``, ``mnt``, ``pid``, ``user``, ``uts``, ``ipc``, ``cgroup``, ``time``."""
    ino: int
    """The namespace's inode number, its identity (the number in ``net:[N]``)."""
    holder_ns: list[str]
    """Which of the holding task's own namespaces it is (``net``; ``pid`` and
    ``pid_for_children``...); empty for a namespace the task is not in."""
