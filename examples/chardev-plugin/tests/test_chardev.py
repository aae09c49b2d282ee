"""Tests of the example plugin, written with asyckpt.testing as a plugin author would.

Run them with the plugin installed (``pip install -e '.[test]'``), as root:
``python -m pytest tests``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from asyckpt_example_chardev import MemDevice, MemDeviceHandler

from asyckpt import HandlerContext, RestoreError
from asyckpt.testing import (
    capture_fd,
    dispatch_with,
    facts_of,
    hold_fd,
    load_handler,
    make_facts,
    restore_fd,
    roundtrip,
)

CHR = stat.S_IFCHR | 0o666


def test_it_keeps_the_contract() -> None:
    loaded = load_handler(MemDeviceHandler)
    assert loaded.record_tag == "asyckpt_example_chardev.mem"
    assert "chr 1:3" in loaded.selectors()


@pytest.mark.parametrize(
    ("link", "mode", "rdev", "claimed"),
    [
        ("/dev/null", CHR, os.makedev(1, 3), True),
        ("/dev/urandom", CHR, os.makedev(1, 9), True),
        ("/dev/mem", CHR, os.makedev(1, 1), False),  # major 1, but not a minor it knows
        ("/dev/tty", CHR, os.makedev(5, 0), False),
        ("/dev/ram3", stat.S_IFBLK | 0o660, os.makedev(1, 3), False),  # a block device 1:3
    ],
)
def test_what_it_claims(link: str, mode: int, rdev: int, claimed: bool) -> None:
    # Pure: facts from literal values, chosen the way a capture chooses.
    chosen = dispatch_with(MemDeviceHandler).choose(make_facts(link, st_mode=mode, rdev=rdev))
    assert (chosen is not None and chosen.name == "chardev") is claimed


def test_capture_from_facts_of_an_fd_of_our_own() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        record = MemDeviceHandler().capture(facts_of(os.getpid(), fd), HandlerContext(os.getpid()))
    finally:
        os.close(fd)
    assert record == MemDevice(major=1, minor=7, device="full")


def test_captured_from_a_real_process() -> None:
    with hold_fd("/dev/zero", flags=os.O_RDWR) as holder:
        captured = capture_fd(MemDeviceHandler, holder.pid, holder.fd)
    assert captured.file.handler == "chardev", captured.file.error
    assert captured.record == MemDevice(major=1, minor=5, device="zero")
    assert (captured.file.path, captured.file.access) == ("/dev/zero", "rw")
    # As `asyckpt show --json` prints it with the plugin installed:
    assert captured.json["data"] == {
        "kind": "asyckpt_example_chardev.mem",
        "major": 1,
        "minor": 5,
        "device": "zero",
    }
    assert captured.json["rendered"] == {"device": "zero", "dev_t": "1:5"}
    assert captured.json["note"] is None


def test_roundtrip_through_an_image() -> None:
    rt = roundtrip(MemDeviceHandler, MemDevice(major=1, minor=9, device="urandom"), kind="chr")
    assert rt.record == MemDevice(major=1, minor=9, device="urandom")
    assert rt.text == "[urandom, chr 1:9]"
    assert rt.rendered == {"device": "urandom", "dev_t": "1:9"}
    assert rt.note is None


def test_restore_opens_the_same_device() -> None:
    with hold_fd("/dev/null", flags=os.O_WRONLY | os.O_APPEND) as holder:
        captured = capture_fd(MemDeviceHandler, holder.pid, holder.fd)
    fd = restore_fd(MemDeviceHandler, captured)
    try:
        st = os.fstat(fd)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
        assert facts_of(os.getpid(), fd).fdinfo.flags & os.O_APPEND
    finally:
        os.close(fd)


def test_restore_opens_only_under_the_root(tmp_path: Path) -> None:
    # The restore hook opens through ctx.open: under --root, so an empty root has no
    # /dev/null to open, and the restore is refused.
    with hold_fd("/dev/null", flags=os.O_WRONLY) as holder:
        captured = capture_fd(MemDeviceHandler, holder.pid, holder.fd)
    with pytest.raises(RestoreError, match="/dev/null"):
        restore_fd(MemDeviceHandler, captured, root=str(tmp_path))
