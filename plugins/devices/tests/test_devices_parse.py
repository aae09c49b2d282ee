"""The pure parsers of asyckpt-devices, on literal kernel text."""

from __future__ import annotations

import os

import pytest
from asyckpt_devices.parse import TaskTty, TtyDriver, parse_stat_tty, parse_tty_drivers

# drivers/tty/tty_io.c show_tty_range: "%-20s /dev/%-8s %3d %d-%d " or "%3d %7d ", then
# the type; the first three lines are printed by hand for /dev/tty, console and ptmx.
DRIVERS = """\
/dev/tty             /dev/tty        5       0 system:/dev/tty
/dev/console         /dev/console    5       1 system:console
/dev/ptmx            /dev/ptmx       5       2 system
/dev/vc/0            /dev/vc/0       4       0 system:vtmaster
usbserial            /dev/ttyUSB   188 0-511 serial
serial               /dev/ttyS       4 64-95 serial
pty_slave            /dev/pts      136 0-1048575 pty:slave
pty_master           /dev/ptm      128 0-1048575 pty:master
unknown              /dev/tty        4 1-63 console
odd driver with spaces /dev/x 9 0 serial
weird                /dev/w        x 0 serial
"""


def test_tty_drivers() -> None:
    assert parse_tty_drivers(DRIVERS) == [
        TtyDriver("/dev/tty", "/dev/tty", 5, 0, 0, "system:/dev/tty"),
        TtyDriver("/dev/console", "/dev/console", 5, 1, 1, "system:console"),
        TtyDriver("/dev/ptmx", "/dev/ptmx", 5, 2, 2, "system"),
        TtyDriver("/dev/vc/0", "/dev/vc/0", 4, 0, 0, "system:vtmaster"),
        TtyDriver("usbserial", "/dev/ttyUSB", 188, 0, 511, "serial"),
        TtyDriver("serial", "/dev/ttyS", 4, 64, 95, "serial"),
        TtyDriver("pty_slave", "/dev/pts", 136, 0, 1048575, "pty:slave"),
        TtyDriver("pty_master", "/dev/ptm", 128, 0, 1048575, "pty:master"),
        TtyDriver("unknown", "/dev/tty", 4, 1, 63, "console"),
        # Lines of another shape are skipped, not guessed at.
    ]
    assert parse_tty_drivers("") == []


@pytest.mark.parametrize(
    ("major", "minor", "covered"),
    [(4, 64, True), (4, 95, True), (4, 96, False), (5, 64, False), (4, 63, False)],
)
def test_driver_ranges(major: int, minor: int, covered: bool) -> None:
    assert TtyDriver("serial", "/dev/ttyS", 4, 64, 95, "serial").covers(major, minor) is covered


@pytest.mark.parametrize(
    ("text", "tty"),
    [
        # bash on /dev/pts/3 (136:3), session 13041, foreground group 22010.
        (
            b"13041 (bash) S 13035 13041 13041 34819 22010 4194560 14619 1790897 0 446 4 7 "
            b"4209 785 20 0 1 0 347035 5251072 940 18446744073709551615\n",
            TaskTty(session=13041, tty_nr=os.makedev(136, 3), tpgid=22010),
        ),
        # No controlling terminal; a command name with spaces and parentheses.
        (
            b"77 (a) (b) c) S 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n",
            TaskTty(session=77, tty_nr=0, tpgid=-1),
        ),
        # /dev/pts/300: minors above 255 go to the high bits (new_encode_dev).
        (
            b"9 (sh) S 1 9 9 " + str(os.makedev(136, 300)).encode() + b" 9 0 0 0\n",
            TaskTty(session=9, tty_nr=os.makedev(136, 300), tpgid=9),
        ),
    ],
)
def test_stat_tty_fields(text: bytes, tty: TaskTty) -> None:
    assert parse_stat_tty(text) == tty
