#!/usr/bin/env python3
"""How responsive an asyncio loop stays while asyckpt captures from it.

    sudo python bench/aio_heartbeat.py                  # the 27k-fd tree, both modes
    sudo python bench/aio_heartbeat.py --mode thread --repeat 9

A heartbeat task sleeps 5 ms in a loop and records the time between its wake-ups;
the longest such gap during a capture is how long the loop was kept from running.
Two ways of running the trio pipeline from asyncio are measured side by side:

- ``thread``: what ``asyckpt.aio`` does (``trio.run`` in a thread of its own);
- ``guest``: trio's guest mode on the asyncio loop (``trio.lowlevel.start_guest_run``),
  the alternative the library did not take; it is built here, for the comparison only.

Each round captures the tree once per mode (images written to a temporary directory,
then removed), after one warm-up capture per mode that is reported but not counted.
The tree (``python -m asyckpt.testing.spawn_tree CHILDREN FDS``) is killed by its
process group at the end, also on Ctrl-C.  Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import asyckpt
import asyckpt.aio

HEARTBEAT = 0.005


async def guest_checkpoint(pid: int, dest: str) -> asyckpt.CaptureSummary:
    """asyckpt.checkpoint_tree in trio guest mode on the running asyncio loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def finished(outcome: Any) -> None:
        if not done.done():
            done.set_result(outcome)

    trio.lowlevel.start_guest_run(
        asyckpt.checkpoint_tree,
        pid,
        dest,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        done_callback=finished,
        host_uses_signal_set_wakeup_fd=True,
    )
    outcome = await done
    summary: asyckpt.CaptureSummary = outcome.unwrap()
    return summary


async def thread_checkpoint(pid: int, dest: str) -> asyckpt.CaptureSummary:
    return await asyckpt.aio.checkpoint_tree(pid, dest)


MODES: dict[str, Callable[[int, str], Awaitable[asyckpt.CaptureSummary]]] = {
    "thread": thread_checkpoint,
    "guest": guest_checkpoint,
}


async def one_capture(mode: str, pid: int, dest: str) -> tuple[float, float, float]:
    """(longest heartbeat gap ms, capture wall ms, frozen ms) of one capture."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(HEARTBEAT)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)  # the heartbeat's own rhythm first
    gaps.clear()
    start = time.perf_counter()
    summary = await MODES[mode](pid, dest)
    wall = time.perf_counter() - start
    stop.set()
    await beat
    os.unlink(dest)
    return max(gaps) * 1000, wall * 1000, summary.frozen_ms


async def idle_gap(seconds: float) -> float:
    gaps = []
    last = time.perf_counter()
    end = last + seconds
    while last < end:
        await asyncio.sleep(HEARTBEAT)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    return max(gaps) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--children", type=int, default=20)
    p.add_argument("--fds", type=int, default=500)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--mode", choices=[*MODES, "both"], default="both")
    args = p.parse_args()
    modes = list(MODES) if args.mode == "both" else [args.mode]

    with tempfile.TemporaryDirectory(prefix="asyckpt-heartbeat-") as tmp:
        tree = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asyckpt.testing.spawn_tree",
                str(args.children),
                str(args.fds),
            ],
            stdout=subprocess.PIPE,
            text=True,
            process_group=0,
            env=dict(os.environ, TMPDIR=tmp),
        )
        try:
            assert tree.stdout is not None
            pid = int(tree.stdout.readline())
            dest = os.path.join(tmp, "tree.ackpt")

            async def run() -> dict[str, list[tuple[float, float, float]]]:
                results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
                print(f"idle loop: longest heartbeat gap {await idle_gap(1.0):.1f} ms")
                for mode in modes:
                    gap, wall, frozen = await one_capture(mode, pid, dest)
                    print(
                        f"warm-up {mode}: gap {gap:.1f} ms, capture {wall:.0f} ms, "
                        f"frozen {frozen:.0f} ms"
                    )
                for i in range(args.repeat):
                    for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
                        results[mode].append(await one_capture(mode, pid, dest))
                return results

            results = asyncio.run(run())
        finally:
            os.killpg(tree.pid, signal.SIGKILL)
            tree.wait()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{args.children + 1} tasks (spawn_tree {args.children} {args.fds}); "
        f"{args.repeat} rounds after a warm-up; load average after: {load}\n"
    )
    print("| mode | longest gap ms, median | longest gap ms, max | capture ms, median |")
    print("|---|---:|---:|---:|")
    for mode in modes:
        gaps = [r[0] for r in results[mode]]
        walls = [r[1] for r in results[mode]]
        print(
            f"| {mode} | {statistics.median(gaps):.1f} | {max(gaps):.1f} | "
            f"{statistics.median(walls):.0f} |"
        )


if __name__ == "__main__":
    main()
