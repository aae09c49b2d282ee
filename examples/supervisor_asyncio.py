"""An asyncio supervisor that finds an fd leak in its child with asyckpt.aio.

    python examples/supervisor_asyncio.py

It starts a child that leaks a socket a second, and then, on its own event loop (whose
heartbeat keeps beating throughout):

1. streams one capture's records (``asyckpt.aio.open_capture``), writing nothing;
2. captures the child twice, a couple of seconds apart (``asyckpt.aio.checkpoint_tree``),
   reads both images back (``asyckpt.aio.read_image``) and prints what changed
   (``asyckpt.diff``): the sockets leaked in between;
3. gives a capture a deadline it cannot meet (``asyncio.timeout``): the capture is
   cancelled, and the child is thawed before the ``TimeoutError`` arrives.

The child is killed at the end, also on errors.  Everything here is public API.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time

import asyckpt
import asyckpt.aio

CHILD = """
import os, socket, sys, time
held = []
print(os.getpid(), flush=True)
while True:
    held.append(socket.socket())   # the leak: never closed
    time.sleep(1)
"""


def task_state(pid: int) -> str:
    """R, S...; a task frozen by the v1 freezer shows D."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


async def heartbeat(gaps: list[float]) -> None:
    """A 5 ms tick: the longest time between two ticks is how long the loop was held."""
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def supervise(pid: int, workdir: str) -> None:
    gaps: list[float] = []
    beat = asyncio.create_task(heartbeat(gaps))

    # 1. Records as an async stream: nothing is written to disk.
    kinds: collections.Counter[str] = collections.Counter()
    async with asyncio.timeout(30):  # a supervisor bounds every call it makes
        async with asyckpt.aio.open_capture(pid) as stream:
            async for record in stream:
                if isinstance(record, asyckpt.File):
                    kinds[record.type] += 1
    assert stream.summary is not None
    print(f"streamed: {dict(kinds)}; frozen for {stream.summary.frozen_ms:.2f} ms")

    # 2. Two images, a few leaks apart, and what changed between them.
    before, after = os.path.join(workdir, "before.ackpt"), os.path.join(workdir, "after.ackpt")
    await asyckpt.aio.checkpoint_tree(pid, before)
    await asyncio.sleep(2.5)
    await asyckpt.aio.checkpoint_tree(pid, after)
    change = asyckpt.diff(await asyckpt.aio.read_image(before), await asyckpt.aio.read_image(after))
    for opened in change.opened:
        print(f"leaked: pid {opened.pid} fd {opened.fd} {opened.type} {opened.path}")
    print(f"summary: {change.summary.opened} fds opened, {change.summary.closed} closed")

    # 3. A deadline the capture cannot meet: cancelled, and the child thawed, by the time
    #    the TimeoutError is raised.
    try:
        async with asyncio.timeout(0.001):
            await asyckpt.aio.checkpoint_tree(pid, os.path.join(workdir, "late.ackpt"))
    except TimeoutError:
        state = await asyncio.to_thread(task_state, pid)
        written = await asyncio.to_thread(os.path.exists, os.path.join(workdir, "late.ackpt"))
        print(f"cancelled: child state {state}, image written: {written}")

    beat.cancel()
    print(f"event loop: longest heartbeat gap {max(gaps) * 1000:.1f} ms")


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            pid = int(child.stdout.readline())
            asyncio.run(supervise(pid, workdir))
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


if __name__ == "__main__":
    main()
