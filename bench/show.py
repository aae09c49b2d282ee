"""What ``asyckpt show`` costs on a large image: reading it (every check included), then
each renderer (table, endpoints, the JSON export encoded), in process, CPU time, best of
--repeat (CPU time, not wall time: other work on the machine moves it less).

    sudo python bench/show.py [--children N] [--per N] [--repeat N]
    python bench/show.py --image IMG [--repeat N]

Without --image, a ``python -m asyckpt.testing.spawn_tree CHILDREN PER`` tree (default
20 500: the 27,000-fd tree of bench/run.py) is captured, then killed (bench/run.py starts
and kills it; the capture needs root).  To compare two versions of asyckpt on one image,
run this with each (``PYTHONPATH=OTHER/src``).  Prints a Markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from run import ASYCKPT, _become_subreaper, spawned_tree, warn

from asyckpt import read_image
from asyckpt._plugins.loading import image_plugins
from asyckpt._show import endpoints, render_endpoints, render_table, to_json_doc


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

    def export() -> str:
        doc = to_json_doc(img, plugins)
        doc["endpoints"] = [e.to_json() for e in endpoints(img)]
        return json.dumps(doc, indent=1, allow_nan=False)

    rows = [
        ("read and check", lambda: read_image(image)),
        ("table", lambda: render_table(img, plugins)),
        ("endpoints", lambda: render_endpoints(img)),
        ("JSON export (encoded)", export),
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
