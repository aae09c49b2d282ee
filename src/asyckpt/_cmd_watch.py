"""``asyckpt watch PID``: the library's :func:`watch` with its captures printed.

It runs until stopped: Ctrl-C, SIGTERM and SIGHUP cancel whatever it is doing (a
capture under way is thawed and its image not written, as ``tree`` does) and it exits
0, since stopping is how a watch ends.  Errors end it with their own exit codes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import trio

from ._capture import CaptureOptions
from ._diff import render_diff
from ._errors import OutputError, collapse_errors
from ._escape import escape
from ._plugins.dispatch import Dispatch
from ._watch import watch

__all__ = ["cmd_watch"]


async def _watch(args: argparse.Namespace, dispatch: Dispatch) -> None:
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
    async with collapse_errors(), trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
                async for _ in sigs:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        await _watch(args, dispatch)
        nursery.cancel_scope.cancel()


def cmd_watch(args: argparse.Namespace, dispatch: Dispatch) -> int:
    if not os.path.isdir(args.output):
        raise OutputError(f"directory {escape(args.output)} does not exist")
    trio.run(_until_signalled, args, dispatch)
    print("asyckpt: watch stopped", file=sys.stderr)
    return 0
