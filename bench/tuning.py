#!/usr/bin/env python3
"""What ``CaptureOptions(tune_interpreter=...)`` is worth to a library capture.

A library capture leaves the interpreter as the embedding program set it; the
``asyckpt`` command asks for ``tune_interpreter=True`` (the cyclic collector paused, a
0.5 ms switch interval).  This captures one ``asyckpt.testing.spawn_tree`` tree in-process with
``checkpoint_tree``, alternating untuned and tuned captures (the order flips every
round), and prints the medians of ``frozen_ms`` and ``capture_ms`` as a Markdown table.

    sudo python bench/tuning.py                # ~30 s on 2 cores
    sudo python bench/tuning.py --repeat 15

Stdlib, trio and asyckpt only; the tree is killed and the temporary directory removed
whatever happens (``run.spawned_tree``).  Run as root: asyckpt needs the freezer.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio

import asyckpt
from asyckpt import CaptureOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import _become_subreaper, spawned_tree, warn


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--children", type=int, default=20, help="default: 20")
    p.add_argument("--fds", type=int, default=500, help="FDS_PER_CHILD (default: 500)")
    p.add_argument("--repeat", type=int, default=9, help="rounds measured (default: 9)")
    p.add_argument("--warmup", type=int, default=1, help="rounds first (default: 1)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be at least 1 and --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not _become_subreaper():  # to reap the killed tree's orphans, as run.py does
        warn("could not become a child subreaper; killed tasks are left to init to reap")
    runs: dict[bool, list[asyckpt.CaptureSummary]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="asyckpt-tuning-") as tmp:
        dest = Path(tmp) / "t.ackpt"
        with spawned_tree(args.children, args.fds, Path(tmp)) as (root, _):
            for n in range(args.warmup + args.repeat):
                for tuned in (False, True) if n % 2 else (True, False):
                    gc.collect()  # each starts with no garbage left by the other
                    options = CaptureOptions(tune_interpreter=tuned)
                    summary = trio.run(
                        lambda o=options: asyckpt.checkpoint_tree(root, dest, force=True, options=o)
                    )
                    if n >= args.warmup:
                        runs[tuned].append(summary)
    first = runs[True][0]
    print(
        f"{first.tasks} tasks, {first.fds:,} fds, {first.files:,} open file descriptions; "
        f"{args.repeat} rounds after {args.warmup} warm-up, in-process checkpoint_tree, "
        "medians in ms.\n"
    )
    print("| `tune_interpreter` | frozen_ms | capture_ms |")
    print("|---|---:|---:|")
    for tuned in (False, True):
        frozen = statistics.median(s.frozen_ms for s in runs[tuned])
        capture = statistics.median(s.capture_ms for s in runs[tuned])
        print(f"| {tuned} | {frozen:.1f} | {capture:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
