"""asyckpt-devices keeps the plugin contract: its handlers load as their entry points
name them, claim what they should without colliding with a handler of named devices
(such as examples/chardev-plugin's), and their records survive a trip through a real
image."""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from asyckpt_devices import (
    FALLBACK_TTY_MAJORS,
    BlockDevice,
    BlockDeviceHandler,
    CharDevice,
    CharDeviceHandler,
    NsFile,
    NsHandler,
    Tty,
    TtyHandler,
)

from asyckpt import Device, FdFacts, HandlerContext
from asyckpt.testing import capture_fd, dispatch_with, hold_fd, load_handler, make_facts, roundtrip

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
HANDLERS = (TtyHandler, CharDeviceHandler, BlockDeviceHandler, NsHandler)
CHR, BLK = stat.S_IFCHR | 0o620, stat.S_IFBLK | 0o660


def test_entry_points_name_every_handler() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = project["entry-points"]["asyckpt.fd_types"]
    assert declared == {h.name: f"asyckpt_devices:{h.__name__}" for h in HANDLERS}
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="asyckpt.fd_types")
        if ep.dist is not None and ep.dist.name == project["name"]
    }
    assert installed == declared


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda h: h.__name__)
def test_each_handler_keeps_the_contract(handler: type) -> None:
    loaded = load_handler(handler)
    assert loaded.record_tag == f"asyckpt.{loaded.name}"
    assert loaded.selective


def test_tty_claims_come_from_the_kernels_driver_table() -> None:
    handler = TtyHandler()
    assert handler.drivers is not None
    with open("/proc/tty/drivers") as f:
        majors = {int(line.split()[2]) for line in f if len(line.split()) == 5}
    assert handler.devices == {Device("chr", major) for major in majors}
    # The pty and /dev/tty majors, which the tests below rely on, are among them.
    assert {Device("chr", 5), Device("chr", 136)} <= handler.devices
    assert {5, 136} <= FALLBACK_TTY_MAJORS


def _uncovered_tty_minor() -> int:
    """A minor of major 5 that no tty driver here covers (5:0-2 are /dev/tty, console
    and ptmx; 5:3 may be ttyprintk)."""
    handler = TtyHandler()
    return next(m for m in range(200, 256) if handler.driver_of(os.makedev(5, m)) is None)


@pytest.mark.parametrize(
    ("facts", "chosen"),
    [
        (make_facts("/dev/pts/3", st_mode=CHR, rdev=os.makedev(136, 3)), "tty"),
        (make_facts("/dev/ptmx", st_mode=CHR | 0o6, rdev=os.makedev(5, 2)), "tty"),
        (make_facts("/dev/tty", st_mode=CHR | 0o6, rdev=os.makedev(5, 0)), "tty"),
        (make_facts("/dev/null", st_mode=CHR | 0o6, rdev=os.makedev(1, 3)), "chr"),
        (make_facts("/dev/kvm", st_mode=CHR, rdev=os.makedev(10, 232)), "chr"),
        # Major 5 is a tty major, but not every minor of it is a tty.
        (
            make_facts("/dev/x", st_mode=CHR, rdev=os.makedev(5, _uncovered_tty_minor())),
            "chr",
        ),
        (make_facts("/dev/loop0", st_mode=BLK, rdev=os.makedev(7, 0)), "blk"),
        # A block device numbered like a pty is no tty: chr and blk are separate spaces.
        (make_facts("/dev/b", st_mode=BLK, rdev=os.makedev(136, 3)), "blk"),
        (make_facts("net:[4026531833]", st_mode=stat.S_IFREG | 0o444), "ns"),
        (make_facts("pid:[4026531836]", st_mode=stat.S_IFREG | 0o444), "ns"),
        (make_facts("/srv/net:[1]", st_mode=stat.S_IFREG | 0o644), "reg"),
    ],
)
def test_what_they_claim(facts: FdFacts, chosen: str) -> None:
    handler = dispatch_with(*HANDLERS).choose(facts)
    assert handler is not None
    assert handler.name == chosen


class MemDevice(msgspec.Struct, tag="elsewhere.mem", tag_field="kind"):
    minor: int


class NamedMemDevices:
    """Claims what examples/chardev-plugin claims, the way it claims it."""

    name: ClassVar[str] = "chardev"
    record_type: ClassVar[type[msgspec.Struct]] = MemDevice
    devices: ClassVar[frozenset[Device]] = frozenset(Device("chr", 1, m) for m in (3, 5, 7, 8, 9))

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> MemDevice:
        return MemDevice(minor=os.minor(facts.st.st_rdev))


def test_a_handler_of_named_devices_goes_first_without_a_conflict() -> None:
    dispatch = dispatch_with(NamedMemDevices, *HANDLERS)
    assert dispatch.conflicts == []
    null = dispatch.choose(make_facts("/dev/null", st_mode=CHR, rdev=os.makedev(1, 3)))
    mem = dispatch.choose(make_facts("/dev/mem", st_mode=CHR, rdev=os.makedev(1, 1)))
    assert (null and null.name, mem and mem.name) == ("chardev", "chr")
    # And so in a real capture.
    with hold_fd("/dev/zero") as holder:
        captured = capture_fd(NamedMemDevices, holder.pid, holder.fd)
    assert (captured.file.handler, captured.record) == ("chardev", MemDevice(minor=5))


TTY: dict[str, Any] = dict(
    driver="pty_slave",
    driver_type="pty:slave",
    pty="slave",
    index=3,
    tty=(136, 3),
    holder_controlling=True,
    session=40,
    fg_pgrp=41,
    termios=None,
    winsize=(24, 80, 0, 0),
    locked=None,
    packet=None,
)


@pytest.mark.parametrize(
    ("handler", "kind", "record", "text"),
    [
        (
            TtyHandler,
            "chr",
            Tty(major=136, minor=3, **TTY),
            "[pty slave 3 session 40 (controlling)]",
        ),
        (
            TtyHandler,
            "chr",
            Tty(major=5, minor=0, **(TTY | {"driver": "/dev/tty", "pty": None, "index": None})),
            "[/dev/tty -> 136:3 session 40 (controlling)]",
        ),
        (
            CharDeviceHandler,
            "chr",
            CharDevice(
                major=1,
                minor=3,
                name="null",
                subsystem="mem",
            ),
            "[mem/null 1:3]",
        ),
        (
            CharDeviceHandler,
            "chr",
            CharDevice(major=240, minor=0, name=None, subsystem=None),
            "[chr 240:0]",
        ),
        (
            BlockDeviceHandler,
            "blk",
            BlockDevice(major=7, minor=0, name="loop0", size=3 << 20),
            "[loop0 7:0 size=3145728]",
        ),
        (
            NsHandler,
            "reg",
            NsFile(type="pid", ino=4026531836, holder_ns=["pid", "pid_for_children"]),
            "[pid namespace 4026531836 (pid, pid_for_children of the holder)]",
        ),
    ],
)
def test_roundtrip_and_rendering(
    handler: type, kind: str, record: msgspec.Struct, text: str
) -> None:
    rt = roundtrip(handler, record, kind=kind, path="/dev/x")
    assert rt.record == record
    assert rt.data == json.loads(msgspec.json.encode(record))
    assert (rt.text, rt.rendered, rt.note) == (text, None, None)


def test_a_device_name_that_is_not_utf8(tmp_path: Path) -> None:
    # sysfs names come from drivers, some after what a user chose: read as bytes,
    # kept by the core's rule for names (text escaped, the bytes beside it).
    from asyckpt_devices import _sysfs_name

    link = tmp_path / "7:0"
    os.symlink(b"../../devices/virtual/x/od\xffd\x1b[2J", os.fsencode(link))
    name = _sysfs_name(str(link))
    assert name == (r"od\xffd\x1b[2J", b"od\xffd\x1b[2J")
    assert _sysfs_name(str(tmp_path / "absent")) == (None, None)

    record = CharDevice(major=240, minor=0, name=name.text, subsystem="misc", name_bytes=name.raw)
    rt = roundtrip(CharDeviceHandler, record, kind="chr", path="/dev/x")
    assert rt.record == record
    assert (rt.data["name"], rt.data["name_encoding"]) == (r"od\xffd\x1b[2J", "escaped")
    assert "name_bytes" not in rt.data
    # render_text gives the name as the kernel has it; show escapes each line once.
    assert rt.text == "[misc/od\udcffd\x1b[2J 240:0]"
    block = BlockDevice(major=7, minor=0, name=name.text, size=None, name_bytes=name.raw)
    assert roundtrip(BlockDeviceHandler, block, kind="blk", path="/dev/x").text == (
        "[od\udcffd\x1b[2J 7:0]"
    )
