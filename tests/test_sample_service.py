"""An ordinary service, captured with the bundled plugins, leaves no fd opaque."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

import asyckpt

from .conftest import _ROOTS, asyckpt_cgroups, task_state

SERVICE = Path(__file__).resolve().parents[1] / "examples" / "sample_service.py"


def test_sample_service_has_no_generic_records(tmp_path: Path) -> None:
    names = {h.name for h in asyckpt.load_handlers().handlers}
    assert {"pipes", "sockets", "epoll", "chr"} <= names, "run `bash plugins/install` first"
    proc = subprocess.Popen(
        [sys.executable, str(SERVICE), "3", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _ROOTS.add(proc.pid)
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == proc.pid
        summary = trio.run(lambda: asyckpt.checkpoint_tree(proc.pid, tmp_path / "service.ackpt"))
        image = asyckpt.read_image(tmp_path / "service.ackpt")
        assert summary.tasks == 4  # the server and its three clients
        assert summary.generic == {}
        assert image.trailer.generic == {}
        kinds = {f.type for f in image.files.values()}
        assert {"socket", "anon", "reg", "pipe"} <= kinds
        tcp = [f for f in image.files.values() if f.handler == "sockets" and f.type == "socket"]
        assert len(tcp) >= 7  # listener, 3 accepted, 3 clients (and asyncio's socketpair)
        assert task_state(proc.pid) in "SR"
        assert not asyckpt_cgroups()
    finally:
        # Its clients share its process group: one kill, by pid, ends them all.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
