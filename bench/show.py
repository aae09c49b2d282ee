"""What ``asyckpt show`` costs on a large image: reading it (every check included), then
each renderer (table, endpoints, the JSON export as ``show --json`` streams it), in
process, CPU time, best of --repeat (CPU time, not wall time: other work on the machine
moves it less); then the commands ``asyckpt show IMG`` and ``asyckpt show IMG --json``
whole, wall time and peak RSS (medians of --repeat, through bench/run.py's launcher).

    sudo python bench/show.py [--children N] [--per N] [--repeat N]
    python bench/show.py --image IMG [--repeat N]

Without --image, a ``python -m asyckpt.testing.spawn_tree CHILDREN PER`` tree (default
20 500: the 27,000-fd tree of bench/run.py) is captured, then killed (bench/run.py starts
and kills it; the capture needs root).  To compare two versions of asyckpt on one image,
run this with each (``PYTHONPATH=OTHER/src``).  Prints a Markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from run import ASYCKPT, Runner, _become_subreaper, spawned_tree, warn

from asyckpt import read_image
from asyckpt._endpoints import render_endpoints
from asyckpt._jsonexport import iter_json_export
from asyckpt._plugins.loading import image_plugins
from asyckpt._show import render_table


def best(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def measure(image: Path, repeat: int) -> None:
    img = read_image(image)
    plugins = image_plugins(img.header.plugins)

    def export() -> int:
        return sum(len(c) for c in iter_json_export(img, plugins, with_endpoints=True))

    rows = [
        ("read and check", lambda: read_image(image)),
        ("table", lambda: render_table(img, plugins)),
        ("endpoints", lambda: render_endpoints(img)),
        ("JSON export with endpoints (streamed, discarded)", export),
    ]
    fds = sum(len(fds) for fds in img.fd_tables.values())
    print(
        f"{image.stat().st_size} bytes, {len(img.tasks)} tasks, {fds} fds, {len(img.files)} files"
    )
    print()
    print("| step | CPU ms |")
    print("|---|---:|")
    for name, fn in rows:
        print(f"| {name} | {best(repeat, fn) * 1000:.1f} |")
    with tempfile.TemporaryDirectory(prefix="asyckpt-bench-show-") as tmp:
        runner = Runner(Path(tmp))
        print()
        print("| command (output discarded) | wall s, median | peak RSS MiB, median |")
        print("|---|---:|---:|")
        for flags in ([], ["--json"]):
            runs = [runner.run([*ASYCKPT, "show", str(image), *flags]) for _ in range(repeat)]
            if any(r.returncode for r in runs):
                warn(f"asyckpt show {' '.join(flags)} failed: {runs[0].stderr.strip()}")
            wall = statistics.median(r.wall_ms for r in runs) / 1000
            rss = statistics.median(r.maxrss_kib for r in runs) / 1024
            label = " ".join(["asyckpt show IMG", *flags])
            print(f"| `{label}` | {wall:.2f} | {rss:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, help="measure this image (no tree is started)")
    p.add_argument("--children", type=int, default=20)
    p.add_argument("--per", type=int, default=500, help="fds per task (default 500)")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    if args.image is not None:
        measure(args.image, args.repeat)
        return
    if not _become_subreaper():
        warn("could not become a child subreaper; killed tasks are left to init to reap")
    with tempfile.TemporaryDirectory(prefix="asyckpt-bench-show-") as name:
        tmp = Path(name)
        image = tmp / "big.ackpt"
        with spawned_tree(args.children, args.per, tmp) as (root, _):
            subprocess.run([*ASYCKPT, "tree", str(root), "-o", str(image), "-q"], check=True)
        measure(image, args.repeat)


if __name__ == "__main__":
    main()
