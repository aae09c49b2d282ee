"""An asyckpt fd-type handler for the kernel's memory devices.

/dev/null, /dev/zero, /dev/full, /dev/random and /dev/urandom are character devices of
major 1 (the kernel's "mem" driver).  asyckpt alone records an fd on one of them
generically; with this plugin installed the image also says which device it is, and
``asyckpt show`` prints that.  A new open of the same node is an equivalent file
description (these devices keep no per-open state but the flags), so it can also restore.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import msgspec

from asyckpt import Device, FdFacts, HandlerContext, RestoreContext, RestoreRefused, os_name

__all__ = ["MEM_DEVICES", "MemDevice", "MemDeviceHandler"]

MEM_MAJOR = 1
MEM_DEVICES = {3: "null", 5: "zero", 7: "full", 8: "random", 9: "urandom"}
"""The minors of major 1 this handler knows, with their names in /dev (devices.txt)."""


class MemDevice(msgspec.Struct, tag="asyckpt_example_chardev.mem", tag_field="kind", kw_only=True):
    """The record stored in the image.  The tag is namespaced by the distribution."""

    major: int
    minor: int
    device: str
    """The device's name: null, zero, full, random or urandom."""


class MemDeviceHandler:
    name: ClassVar[str] = "chardev"
    record_type: ClassVar[type[msgspec.Struct]] = MemDevice
    # Declared, not tested in code: asyckpt indexes these when it loads the handler, so
    # it costs nothing for the thousands of fds that are not memory devices.
    devices: ClassVar[frozenset[Device]] = frozenset(
        Device("chr", MEM_MAJOR, minor) for minor in MEM_DEVICES
    )

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> MemDevice:
        # Everything needed is in the facts: the device number from the fd's stat.
        minor = os.minor(facts.st.st_rdev)
        return MemDevice(major=os.major(facts.st.st_rdev), minor=minor, device=MEM_DEVICES[minor])

    def render_text(self, record: MemDevice) -> str:
        return f"[{record.device}, chr {record.major}:{record.minor}]"

    def render_json(self, record: MemDevice) -> dict[str, Any]:
        return {"device": record.device, "dev_t": f"{record.major}:{record.minor}"}

    def restore(self, record: MemDevice, ctx: RestoreContext) -> int:
        """Open the same device again with the captured flags; return the new fd.

        ``ctx.open`` resolves the path under ``asyckpt restore --root``, never creates or
        truncates, and checks that the node there is the captured device (its device
        number) before opening it; it raises RestoreRefused otherwise."""
        file = ctx.file
        access = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}.get(file.access)
        if access is None:
            raise RestoreRefused(f"access {file.access!r}")
        flags = access | (file.flags & (os.O_APPEND | os.O_NONBLOCK))
        return ctx.open(os_name(file.path, file.path_bytes), flags)
