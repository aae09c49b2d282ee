"""``asyckpt tree [PID]``: capture a process tree into an image, and say what was done.

The signals are set up by ``_cli`` before this runs (they must be, before trio starts).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._cliargs import (
    DEFAULT_GHOST_LIMIT,
    add_command,
    freeze_mode,
    ghost_limit,
    load_handlers,
    plugin_options,
    positive_seconds,
    seconds,
    size,
    user,
    warn,
)
from ._escape import escape

if TYPE_CHECKING:
    from ._capture import CaptureSummary
    from ._cliargs import Subparsers
    from ._signals import Signals

__all__ = ["register", "report", "run"]


def register(sub: Subparsers) -> None:
    t = add_command(
        sub,
        "tree",
        help="capture a process tree into an image",
        description="Freeze the tree rooted at PID, capture every open fd, thaw it, and "
        "write an image.  Without PID, start a small demo tree and capture that.",
    )
    t.add_argument("pid", nargs="?", type=int, help="root of the tree (default: a demo tree)")
    t.add_argument(
        "--name",
        metavar="PATTERN",
        help="instead of PID: the root is the topmost process whose name matches PATTERN "
        "(shell wildcards: 'nginx', 'post*'); refused if none or several trees match",
    )
    t.add_argument(
        "--user",
        type=user,
        metavar="USER",
        help="instead of PID (or with --name): the topmost process owned by USER (a name "
        "or uid; the real uid), refused if none or several trees match",
    )
    t.add_argument(
        "-o",
        "--output",
        metavar="IMAGE",
        help="image to write (default: tree-PID.ackpt); '-': standard output (a pipe, a "
        "socket or a file, not a terminal)",
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="replace IMAGE if it is a regular file or a symlink (a device node, FIFO, "
        "socket or directory is never replaced)",
    )
    t.add_argument(
        "--freeze",
        type=freeze_mode,
        default="auto",
        metavar="MODE",
        help="auto (default: the tree's own cgroup if it holds exactly the tree, else a "
        "transient one), cgroup:PATH (freeze that cgroup in place), cgroup-v1 or "
        "cgroup-v2 (a transient cgroup there), none (no freezing)",
    )
    t.add_argument(
        "--freeze-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up (and thaw) if the tree is not frozen by then (default: 10)",
    )
    t.add_argument(
        "--strict",
        action="store_true",
        help="fail if any fd is recorded generically (no handler, or it failed)",
    )
    t.add_argument(
        "--pipe-data",
        type=size,
        default=0,
        metavar="SIZE",
        help="copy up to SIZE bytes (K, M: binary units; at most 64M) of the data queued "
        "in each pipe and FIFO into the image, without consuming it (default: 0, none)",
    )
    t.add_argument(
        "--ghost-limit",
        type=ghost_limit,
        default=DEFAULT_GHOST_LIMIT,
        metavar="SIZE",
        help="copy the content of each unlinked file (and memfd) whose allocated size is at "
        "most SIZE (K, M, G: binary units) into the image, holes left out; a larger one is "
        "reported and not saved, or fails --strict (default: 1M; 0: never copy)",
    )
    t.add_argument(
        "--cmdline",
        action="store_true",
        help="record each task's command line (off by default: command lines may hold "
        "secrets; the environment is never recorded)",
    )
    t.add_argument(
        "--lock-timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="wait that long for another capture of the same cgroup hierarchy to finish "
        "(default: 10; 0: fail at once)",
    )
    t.add_argument(
        "--endpoints",
        choices=("tree", "system"),
        default="tree",
        help="system: after the thaw, search the processes outside the tree for the other "
        "ends of its pipes, FIFOs and connections, and record them (not frozen: a search, "
        "not a snapshot); shown by 'show --endpoints' (default: tree, no search)",
    )
    plugin_options(t)
    t.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def report(summary: CaptureSummary, quiet: bool) -> None:
    if summary.generic:
        total = sum(summary.generic.values())
        kinds = ", ".join(f"{k} {v}" for k, v in summary.generic.items())
        warn(f"{total} open files recorded generically (no handler for them): {kinds}")
    failed = [g for g in summary.generic_fds if g.error is not None]
    for g in failed[:10]:
        warn(f"{g.error} (pid={g.pid}, fd={g.fd}, kind={g.kind})")
    if len(failed) > 10:
        warn(f"... and {len(failed) - 10} more handler failures")
    if not summary.consistent:
        warn("the tree was not frozen (--freeze=none): the image may be inconsistent")
    if summary.vanished:
        warn(f"{summary.vanished} tasks exited during the capture and are not in the image")
    for note in summary.ghost_notes:
        print(f"asyckpt: {escape(note.message())}", file=sys.stderr)
    if summary.unverified:
        warn(
            f"{summary.unverified} fds of exiting tasks could not be checked for sharing; "
            "each is recorded as a description of its own"
        )
    if quiet:
        return
    print(
        f"{escape(str(summary.path))}: {summary.tasks} tasks, {summary.fds} fds, "
        f"{summary.files - summary.held_files} open files, "
        f"{summary.held_files} files held without an fd, "
        f"{summary.bytes} bytes; freezer {summary.freezer}, "
        f"freezing {summary.freezing_ms:.2f} ms, frozen {summary.frozen_ms:.2f} ms, "
        f"total {summary.capture_ms:.1f} ms"
    )
    if summary.endpoints == "system":
        print(
            f"searched outside the tree after the thaw: {summary.outside_holders} of its "
            "pipes and peers held there (see: asyckpt show --endpoints)"
        )
    if summary.ghosts_saved:
        print(
            f"content of {summary.ghosts_saved} unlinked file(s) saved: "
            f"{summary.content_bytes} bytes of data"
        )
    if summary.freezer_scope == "transient":
        # Moving tasks between cgroups is visible to whoever watches them: say so.
        print(
            f"the tree was moved into {summary.freezer_cgroup} for the capture, then back to "
            "its own cgroups"
            + (
                " (v2: no controllers on either side, so no accounting changed)"
                if summary.freezer == "cgroup-v2"
                else ""
            )
        )
    elif summary.freezer_scope == "in-place":
        state = "left frozen, as it was" if summary.pre_frozen else "thawed again"
        print(f"froze {summary.freezer_cgroup} in place; {state}")


def run(args: argparse.Namespace, signals: Signals) -> int:
    """``asyckpt tree``, once the signals are set up (``_cli``)."""
    import trio

    from ._api import write_tree
    from ._capture import CaptureOptions
    from ._commit import Interrupted
    from ._rundir import LOCK_NOTICE

    options = CaptureOptions(
        freeze=args.freeze,
        freeze_timeout=args.freeze_timeout,
        strict=args.strict,
        disable_plugins=tuple(args.disable_plugin),
        pipe_data=args.pipe_data,
        ghost_limit=args.ghost_limit,
        cmdline=args.cmdline,
        endpoints=args.endpoints,
        lock_timeout=args.lock_timeout,
        # The command owns its process: the collector paused, a shorter switch interval.
        tune_interpreter=True,
    )
    LOCK_NOTICE.set(lambda msg: print(f"asyckpt: {escape(msg)}", file=sys.stderr))

    # Loaded here rather than by the capture, so that conflicts are reported as warnings
    # like the rest, and a broken plugin fails before any tree is started or frozen.
    dispatch = load_handlers(args)

    def run(pid: int) -> CaptureSummary:
        # "-": file descriptor 1 (sys.stdout is stderr meanwhile, see _cli).
        dest: str | int = 1 if args.output == "-" else args.output or f"tree-{pid}.ackpt"
        summary = trio.run(
            signals.run,
            lambda: write_tree(
                pid, dest, signals.commit, force=args.force, options=options, dispatch=dispatch
            ),
        )
        if summary is None or signals.commit.state != "committed":
            # Cancelled by a signal in time: the tree is thawed, nothing was written.
            signals.commit.interrupt()
            raise Interrupted("interrupted")
        return summary

    if args.name is not None or args.user is not None:
        from ._select import select_root

        root = select_root(args.name, args.user)
        if not args.quiet:
            print(f"capturing pid {root.pid} ({escape(root.name)})")
        summary = run(root.pid)
    elif args.pid is None:
        from ._demo import demo_tree

        with demo_tree() as pid:
            if not args.quiet:
                print(f"started a demo tree at pid {pid}")
            summary = run(pid)
    else:
        summary = run(args.pid)
    report(summary, args.quiet)
    if (
        args.pid is None
        and args.name is None
        and args.user is None
        and not args.quiet
        and args.output != "-"
    ):
        print(f"see it with: asyckpt show {escape(str(summary.path))}")
    return 0
