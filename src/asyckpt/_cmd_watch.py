"""``asyckpt watch PID``: the library's :func:`watch` with its captures printed.

It runs until stopped: Ctrl-C, SIGTERM and SIGHUP cancel whatever it is doing (a
capture under way is thawed and its image not written, as ``tree`` does) and it exits
0, since stopping is how a watch ends.  Errors end it with their own exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ._cliargs import add_command, freeze_mode, load_handlers, plugin_options, positive_seconds
from ._errors import OutputError
from ._escape import escape

if TYPE_CHECKING:
    from ._cliargs import Subparsers
    from ._plugins.dispatch import Dispatch

# trio and the capture pipeline are imported when the command runs, not when the parser
# that registers it is built.

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    w = add_command(
        sub,
        "watch",
        help="capture a tree whenever its fd count grows",
        description="Look at the tree rooted at PID every interval without freezing it "
        "(its processes and fd counts); when its fds grew by N or more since the last "
        "capture, or a process appeared, capture it into DIR and print what changed.  "
        "Runs until Ctrl-C, SIGTERM or SIGHUP (exit 0).",
    )
    w.add_argument("pid", type=int, help="root of the tree")
    w.add_argument(
        "--every",
        type=duration,
        default=10.0,
        metavar="DURATION",
        help="how often to look (seconds, or with ms, s, m, h; default: 10s)",
    )
    w.add_argument(
        "--on-growth",
        type=at_least_one,
        default=1,
        metavar="N",
        help="capture when the fds grew by N or more since the last capture (default: 1)",
    )
    w.add_argument(
        "--keep",
        type=at_least_one,
        default=5,
        metavar="K",
        help="keep the last K images, removing older ones this watch wrote (default: 5)",
    )
    w.add_argument(
        "-o", "--output", metavar="DIR", default=".", help="where to write images (default: .)"
    )
    w.add_argument("--freeze", type=freeze_mode, default="auto", metavar="MODE", help="as for tree")
    w.add_argument(
        "--freeze-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="as for tree (default: 10)",
    )
    plugin_options(w)


_DURATION_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def duration(text: str) -> float:
    """``--every``: seconds, or a number with ``ms``, ``s``, ``m`` or ``h``."""
    number, scale = text, 1.0
    for unit, unit_scale in _DURATION_UNITS:
        if text.endswith(unit):
            number, scale = text[: -len(unit)], unit_scale
            break
    try:
        value = float(number) * scale
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration (seconds, or with ms, s, m, h: 500ms, 10s)"
        )
    return value


def at_least_one(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


async def _watch(args: argparse.Namespace, dispatch: Dispatch) -> None:
    from ._capture import CaptureOptions
    from ._diff import render_diff
    from ._watch import watch

    # The command owns its process: each capture tuned as `asyckpt tree`'s is.
    options = CaptureOptions(
        freeze=args.freeze, freeze_timeout=args.freeze_timeout, tune_interpreter=True
    )
    events = watch(
        args.pid,
        every=args.every,
        on_growth=args.on_growth,
        keep=args.keep,
        directory=args.output,
        options=options,
        dispatch=dispatch,
    )
    async for event in events:
        image = event.path
        if event.diff is None:
            print(f"asyckpt: watch: {escape(image)}: first capture ({event.look.fds} fds)")
        else:
            print(f"asyckpt: watch: {escape(image)}: {event.look.fds} fds; since the previous:")
            print(render_diff(event.diff) or "no change")
        sys.stdout.flush()


async def _until_signalled(args: argparse.Namespace, dispatch: Dispatch) -> None:
    import signal

    import trio

    from ._errors import collapse_errors

    async with collapse_errors(), trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
                async for _ in sigs:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        await _watch(args, dispatch)
        nursery.cancel_scope.cancel()


def run(args: argparse.Namespace) -> int:
    import trio

    dispatch = load_handlers(args)
    if not os.path.isdir(args.output):
        raise OutputError(f"directory {escape(args.output)} does not exist")
    trio.run(_until_signalled, args, dispatch)
    print("asyckpt: watch stopped", file=sys.stderr)
    return 0
