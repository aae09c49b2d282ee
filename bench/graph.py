"""What ``asyckpt graph`` costs at 1, 21 and 200 tasks: its own part (the image read
back excluded: building the graph and writing DOT, in process, best of --repeat) and
Graphviz's (``dot -Tsvg``, wall time, best of --repeat), with the sizes drawn.

    sudo python bench/graph.py [--per N] [--repeat N]

Trees are ``python -m asyckpt.testing.spawn_tree CHILDREN PER`` (bench/run.py starts and
kills them); needs
root (the capture) and Graphviz's ``dot``.  Prints a Markdown table (docs/graph.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from run import ASYCKPT, _become_subreaper, spawned_tree, warn

from asyckpt import read_image
from asyckpt._graph import build_graph, to_dot

SIZES = (0, 20, 199)  # children: 1, 21 and 200 tasks


def best(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per", type=int, default=6, help="fds per task (default 6)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    if not _become_subreaper():
        warn("could not become a child subreaper; killed tasks are left to init to reap")
    dot = shutil.which("dot")
    if dot is None:
        sys.exit("bench/graph.py: Graphviz's dot is not installed (apt-get install graphviz)")
    print("| tree | fds | objects | edges | DOT text | `dot -Tsvg` | SVG |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="asyckpt-bench-graph-") as name:
        tmp = Path(name)
        for children in SIZES:
            image = tmp / f"t{children}.ackpt"
            with spawned_tree(children, args.per, tmp) as (root, _):
                subprocess.run([*ASYCKPT, "tree", str(root), "-o", str(image), "-q"], check=True)
            img = read_image(image)
            graph = build_graph(img)
            text = to_dot(graph)
            own = best(args.repeat, lambda img=img: to_dot(build_graph(img)))
            svg = tmp / "out.svg"
            argv = [dot, "-Tsvg", "-o", str(svg)]
            data = text.encode()
            render = best(
                args.repeat,
                lambda argv=argv, data=data: subprocess.run(argv, input=data, check=True),
            )
            objects = sum(1 for o in graph.objects if not o.outside)
            tasks = f"{len(img.tasks)} task" + ("s" if len(img.tasks) > 1 else "")
            print(
                f"| {tasks}{' (`--shared-only` by default)' if graph.shared_only else ''} "
                f"| {img.trailer.fds:,} | {objects} | {len(graph.edges)} "
                f"| {own * 1000:.1f} ms | {render:.2f} s | {svg.stat().st_size // 1000:,} KB |"
            )


if __name__ == "__main__":
    main()
