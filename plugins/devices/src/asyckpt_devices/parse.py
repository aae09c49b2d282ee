"""Pure parsers of the /proc text asyckpt-devices reads: the tty driver table and the
terminal fields of a task's stat.  No I/O here; each is tested on literal kernel text."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TaskTty", "TtyDriver", "parse_stat_tty", "parse_tty_drivers"]


class TtyDriver(NamedTuple):
    """One line of /proc/tty/drivers (drivers/tty/tty_io.c ``show_tty_range``)."""

    name: str
    """The driver's name: ``pty_slave``, ``serial``, ``/dev/tty``..."""
    node: str
    """Where its nodes live: ``/dev/pts``, ``/dev/ttyS``..."""
    major: int
    minor_start: int
    minor_end: int
    """The last minor of the range, inclusive."""
    type: str
    """``system``, ``system:/dev/tty``, ``system:console``, ``system:vtmaster``,
    ``console``, ``serial``, ``pty:master``, ``pty:slave``, ``pty``, or ``type:N.N``."""

    def covers(self, major: int, minor: int) -> bool:
        return major == self.major and self.minor_start <= minor <= self.minor_end


def parse_tty_drivers(text: str) -> list[TtyDriver]:
    """Parse /proc/tty/drivers: ``name node major minor[-last] type`` per line.
    A line of another shape is skipped."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 5:
            continue
        name, node, major, minors, kind = fields
        first, _, last = minors.partition("-")
        try:
            start = int(first)
            out.append(TtyDriver(name, node, int(major), start, int(last or first), kind))
        except ValueError:
            continue
    return out


class TaskTty(NamedTuple):
    """A task's terminal fields in /proc/PID/stat."""

    session: int
    tty_nr: int
    """The controlling terminal's device number (userspace dev_t); 0 for none."""
    tpgid: int
    """The terminal's foreground process group; -1 without a controlling terminal."""


def parse_stat_tty(data: bytes) -> TaskTty:
    """Fields 6-8 of /proc/PID/stat (proc(5)); the command name ends at the last ``)``."""
    rest = data[data.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    return TaskTty(session=int(rest[3]), tty_nr=int(rest[4]), tpgid=int(rest[5]))
