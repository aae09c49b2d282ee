"""``asyckpt graph IMAGE``: read and verify an image, draw it (``_graph``), render it
(``_graphviz``) and write it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ._cliargs import add_command, read_image_arg
from ._errors import UsageError

if TYPE_CHECKING:
    from ._cliargs import Subparsers

__all__ = ["FORMATS", "output_format", "parse_kinds", "register", "run"]

FORMATS = ("svg", "png", "dot")
_SUFFIXES = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot"}


def register(sub: Subparsers) -> None:
    g = add_command(
        sub,
        "graph",
        help="draw an image: the tree and what its tasks share",
        description="Draw the tree of an image and what its tasks share (pipes, socket "
        "connections, open files held by several tasks, epoll targets): DOT, or SVG and PNG "
        "through Graphviz's dot.",
    )
    g.add_argument("image", help="image file, or - for standard input")
    g.add_argument(
        "-o", "--output", metavar="OUT", help="picture to write (default: standard output)"
    )
    g.add_argument("--force", action="store_true", help="replace OUT if it exists")
    g.add_argument(
        "--format",
        choices=("svg", "png", "dot"),
        help="what to write (default: from OUT's suffix .svg, .png, .dot or .gv, else svg); "
        "svg and png need Graphviz's dot",
    )
    g.add_argument(
        "--kinds",
        metavar="KIND,...",
        help="draw only fds of these kinds: pipe, fifo, socket, reg, dir, link, chr, blk, "
        "epoll, anon (default: all)",
    )
    g.add_argument("--pid", type=int, help="draw only the task PID and its descendants")
    g.add_argument(
        "--shared-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave out the fds no other task shares (default: only for trees of more than "
        "50 tasks or 500 shared objects)",
    )


def output_format(fmt: str | None, output: str | None) -> str:
    """``--format``, else what OUT's suffix says (``.svg``, ``.png``, ``.dot``, ``.gv``),
    else svg."""
    if fmt is not None:
        return fmt
    suffix = os.path.splitext(output or "")[1].lower()
    return _SUFFIXES.get(suffix, "svg")


def parse_kinds(text: str | None) -> frozenset[str] | None:
    """``--kinds pipe,socket``: None (all kinds) when not given."""
    from ._graph import KINDS

    if text is None:
        return None
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(kinds - set(KINDS))
    if unknown or not kinds:
        raise UsageError(
            f"argument --kinds: {', '.join(map(repr, unknown)) or 'nothing'} is not a kind "
            f"(choose from {','.join(KINDS)})"
        )
    return kinds


def run(args: argparse.Namespace) -> int:
    from ._graph import GraphOptions, build_graph, to_dot
    from ._graphviz import render, write_output

    kinds = parse_kinds(args.kinds)
    fmt = output_format(args.format, args.output)
    if args.output is None and fmt == "png" and sys.stdout.isatty():
        raise UsageError("a PNG is not for a terminal: give -o OUT or redirect the output")
    image = read_image_arg(args.image)
    if args.pid is not None and all(t.pid != args.pid for t in image.tasks):
        raise UsageError(f"the image has no task {args.pid}")
    graph = build_graph(image, GraphOptions(kinds, args.pid, args.shared_only))
    text = to_dot(graph)
    data = text.encode() if fmt == "dot" else render(text, fmt)
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_output(args.output, data, force=args.force)
    return 0
