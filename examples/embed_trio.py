"""Embedding asyckpt in a trio program: stream a capture, write an image, then watch
the tree until it leaks.

    python examples/embed_trio.py [PID]

Without PID it starts a small child process of its own to look at (it leaks a socket a
second), and kills it after.  Everything here is public API (``import asyckpt``); nothing
blocks the event loop, and a cancellation at any point leaves the captured tree running
and thawed.  (For asyncio programs: examples/supervisor_asyncio.py.)
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile

import trio

import asyckpt

CHILD = """
import os, socket, sys, time
log = open(os.path.join(sys.argv[1], "app.log"), "a")   # a regular file
r, w = os.pipe()
print(os.getpid(), flush=True)
held = []
while True:
    time.sleep(1)
    held.append(socket.socket())                         # the leak: never closed
"""


async def supervise(pid: int, workdir: str) -> None:
    # 1. Records as an async stream: nothing is written to disk.
    kinds: collections.Counter[str] = collections.Counter()
    with trio.fail_after(30):  # a supervisor bounds every call it makes
        async with asyckpt.open_capture(pid) as stream:
            async for record in stream:
                if isinstance(record, asyckpt.File):
                    kinds[record.type] += 1
    assert stream.summary is not None
    print(f"streamed: {dict(kinds)}; frozen for {stream.summary.frozen_ms:.2f} ms")

    # 2. The same pipeline into an image file, as `asyckpt tree` does.
    dest = os.path.join(workdir, "child.ackpt")
    summary = await asyckpt.checkpoint_tree(pid, dest)
    print(f"wrote {summary.path}: {summary.fds} fds, {summary.bytes} bytes")

    # 3. Reading it back verifies the digest and every count before returning.
    image = await trio.to_thread.run_sync(asyckpt.read_image, dest)
    for task in image.tasks:
        for fd, f in image.fds(task.fd_table):
            print(f"  pid {task.pid} fd {fd.fd}: {f.type:<6} {f.path}")

    # 4. Watch the tree: an unfrozen look every half second, a capture (and its diff
    #    against the previous one) once it holds more fds, the last two images kept.
    watchdir = os.path.join(workdir, "watch")
    os.mkdir(watchdir)
    with trio.fail_after(30):
        async for event in asyckpt.watch(pid, every=0.5, keep=2, directory=watchdir):
            if event.diff is None:
                print(f"watching: first capture {os.path.basename(event.path)}")
                continue
            for opened in event.diff.opened:
                print(f"watch caught: pid {opened.pid} fd {opened.fd} {opened.type} {opened.path}")
            break


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        if len(sys.argv) > 1:
            trio.run(supervise, int(sys.argv[1]), workdir)
            return
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, workdir], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            pid = int(child.stdout.readline())
            trio.run(supervise, pid, workdir)
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


if __name__ == "__main__":
    main()
