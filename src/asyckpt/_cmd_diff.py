"""``asyckpt diff A B [--json]``: read two images, print what changed (exit 0 when
nothing did, 1 when something did, as ``diff(1)``; errors keep their own codes, all 2
and up)."""

from __future__ import annotations

import argparse
import sys

import msgspec

from ._diff import diff, render_diff
from ._image import read_image

__all__ = ["EXIT_DIFFERENT", "cmd_diff"]

EXIT_DIFFERENT = 1


def cmd_diff(args: argparse.Namespace) -> int:
    image_a = read_image(args.a)
    image_b = read_image(args.b)
    d = diff(image_a, image_b)
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(d), indent=1) + b"\n")
    else:
        text = render_diff(d)
        if text:
            sys.stdout.write(text + "\n")
    return 0 if d.same else EXIT_DIFFERENT
