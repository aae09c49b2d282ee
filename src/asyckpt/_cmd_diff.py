"""``asyckpt diff A B [--json]``: read two images, print what changed (exit 0 when
nothing did, 1 when something did, as ``diff(1)``; errors keep their own codes, all 2
and up)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._cliargs import add_command, read_image_arg
from ._errors import UsageError

if TYPE_CHECKING:
    from ._cliargs import Subparsers

__all__ = ["EXIT_DIFFERENT", "register", "run"]

EXIT_DIFFERENT = 1

DIFF_EPILOG = """\
diff exits as diff(1) does: 0 the images are the same, 1 they differ, 2 and up on
errors, with the codes below; its own internal errors exit 12, not 1.

"""


def register(sub: Subparsers) -> None:
    d = add_command(
        sub,
        "diff",
        help="compare two images of one tree",
        description="Print what changed from image A to image B: tasks added and removed, "
        "fds opened, closed or pointing at another file, and fields that changed.  "
        "Exit 0 when nothing changed, 1 when something did, 2 and up on errors.",
        epilog=DIFF_EPILOG,
    )
    d.add_argument("a", metavar="A", help="the older image (- for standard input)")
    d.add_argument("b", metavar="B", help="the newer image (- for standard input)")
    d.add_argument("--json", action="store_true", help="print the diff as JSON")


def run(args: argparse.Namespace) -> int:
    import msgspec

    from ._diff import diff, render_diff

    if args.a == args.b == "-":
        raise UsageError("only one of A and B can be - (standard input)")
    image_a = read_image_arg(args.a)
    image_b = read_image_arg(args.b)
    d = diff(image_a, image_b)
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(d), indent=1) + b"\n")
    else:
        text = render_diff(d)
        if text:
            sys.stdout.write(text + "\n")
    return 0 if d.same else EXIT_DIFFERENT
