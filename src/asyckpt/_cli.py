"""The ``asyckpt`` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from ._errors import AsyckptError, OutputError, UsageError
from ._escape import escape

if TYPE_CHECKING:
    from ._capture import CaptureSummary
    from ._image import Image
    from ._plugins.dispatch import Dispatch
    from ._signals import Signals

# trio and the capture pipeline are imported by the commands that use them: `show` and
# `--version` start faster without.
FREEZER_MODES = ("auto", "cgroup-v1", "cgroup-v2", "none")

# _capture.PIPE_DATA_MAX, repeated so that parsing arguments does not import the pipeline
# (a test checks that they agree).
PIPE_DATA_MAX = 64 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# _ghost.DEFAULT_GHOST_LIMIT, for the same reason.
DEFAULT_GHOST_LIMIT = 1 << 20

EXIT_INTERRUPTED = 130
# `diff` exits 1 when the images differ, as diff(1) does, so its internal errors (1
# elsewhere) take a code of their own.
EXIT_DIFF_INTERNAL = 12

# Set by run(): the process ends right after main(), so signal handlers stay in place.
_RUN_AS_COMMAND = False

EPILOG = """\
exit codes:
  0 success              5 output path unusable     9 plugin error
  1 internal error       6 not a valid image       10 kernel lacks a feature
  2 usage error          7 freezer error           11 Graphviz (dot) missing or failed
  3 bad target pid       8 --strict violation      12 internal error in diff (its 1: different)
  4 permission denied                              13 restore refused (nothing changed)
                                                  130 interrupted (SIGINT/SIGTERM/SIGHUP)
  (3 also when tree --name/--user match no process, or several separate trees)
"""


def _freeze_mode(text: str) -> str:
    if text in FREEZER_MODES or (text.startswith("cgroup:") and len(text) > len("cgroup:")):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not one of auto, cgroup:PATH, cgroup-v1, cgroup-v2, none"
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _size(text: str) -> int:
    """``--pipe-data``: bytes, with an optional K or M (binary) suffix; 0 is off."""
    number, unit = text, ""
    if text[-1:].lower() in ("k", "m"):
        number, unit = text[:-1], text[-1].lower()
    if not number.isdigit() or int(number) * _UNITS[unit] > PIPE_DATA_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size from 0 to 64M (bytes, or with a K or M suffix)"
        )
    return int(number) * _UNITS[unit]


def _ghost_limit(text: str) -> int:
    """``--ghost-limit``: bytes, with an optional K, M or G (binary) suffix; 0 is off."""
    number, unit = text, ""
    if text[-1:].lower() in ("k", "m", "g"):
        number, unit = text[:-1], text[-1].lower()
    if not number.isascii() or not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (bytes, or with a K, M or G suffix: 512K, 1M)"
        )
    return int(number) * _UNITS[unit]


def _user(text: str) -> int:
    from ._select import parse_user

    try:
        return parse_user(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr, like every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"asyckpt: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = _Parser(
        prog="asyckpt",
        description="Capture the open-file state of a Linux process tree.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"asyckpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "tree",
        help="capture a process tree into an image",
        description="Freeze the tree rooted at PID, capture every open fd, thaw it, and "
        "write an image.  Without PID, start a small demo tree and capture that.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        type=_user,
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
        type=_freeze_mode,
        default="auto",
        metavar="MODE",
        help="auto (default: the tree's own cgroup if it holds exactly the tree, else a "
        "transient one), cgroup:PATH (freeze that cgroup in place), cgroup-v1 or "
        "cgroup-v2 (a transient cgroup there), none (no freezing)",
    )
    t.add_argument(
        "--freeze-timeout",
        type=_positive_seconds,
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
        type=_size,
        default=0,
        metavar="SIZE",
        help="copy up to SIZE bytes (K, M: binary units; at most 64M) of the data queued "
        "in each pipe and FIFO into the image, without consuming it (default: 0, none)",
    )
    t.add_argument(
        "--ghost-limit",
        type=_ghost_limit,
        default=DEFAULT_GHOST_LIMIT,
        metavar="SIZE",
        help="copy the content of each unlinked file (and memfd) whose allocated size is at "
        "most SIZE (K, M, G: binary units) into the image, holes left out; a larger one is "
        "reported and not saved, or fails --strict (default: 1M; 0: never copy)",
    )
    t.add_argument(
        "--lock-timeout",
        type=_seconds,
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
    _plugin_options(t)
    t.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    s = sub.add_parser(
        "show",
        help="print an image",
        description="Verify an image and print it.  Handler records are rendered by the "
        "handlers that wrote them when they are installed here, else shown raw.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "image", help="image file (a regular file or a FIFO), or - to read standard input"
    )
    s.add_argument("--json", action="store_true", help="print the JSON export")
    s.add_argument(
        "--endpoints",
        action="store_true",
        help="list each pipe, FIFO and connected socket pair with the task/fd at each end, "
        "flagging ends outside the tree (with --json: an 'endpoints' array is added)",
    )
    s.add_argument(
        "--extract",
        nargs=2,
        metavar=("FILE_ID", "OUT"),
        help="write the saved content of the unlinked file FILE_ID (the OBJ column) to the "
        "new file OUT, holes as holes, instead of printing the image",
    )
    _plugin_options(s)

    g = sub.add_parser(
        "graph",
        help="draw an image: the tree and what its tasks share",
        description="Draw the tree of an image and what its tasks share (pipes, socket "
        "connections, open files held by several tasks, epoll targets): DOT, or SVG and PNG "
        "through Graphviz's dot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("image", help="image file")
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

    pl = sub.add_parser(
        "plugins",
        help="list the fd-type handlers",
        description="List every installed fd-type handler (entry-point group "
        "asyckpt.fd_types): what it claims, and whether it is used.",
        epilog=PLUGINS_EPILOG + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _plugin_options(pl)

    d = sub.add_parser(
        "diff",
        help="compare two images of one tree",
        description="Print what changed from image A to image B: tasks added and removed, "
        "fds opened, closed or pointing at another file, and fields that changed.  "
        "Exit 0 when nothing changed, 1 when something did, 2 and up on errors.",
        epilog=DIFF_EPILOG + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("a", metavar="A", help="the older image")
    d.add_argument("b", metavar="B", help="the newer image")
    d.add_argument("--json", action="store_true", help="print the diff as JSON")

    w = sub.add_parser(
        "watch",
        help="capture a tree whenever its fd count grows",
        description="Look at the tree rooted at PID every interval without freezing it "
        "(its processes and fd counts); when its fds grew by N or more since the last "
        "capture, or a process appeared, capture it into DIR and print what changed.  "
        "Runs until Ctrl-C, SIGTERM or SIGHUP (exit 0).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("pid", type=int, help="root of the tree")
    w.add_argument(
        "--every",
        type=_duration,
        default=10.0,
        metavar="DURATION",
        help="how often to look (seconds, or with ms, s, m, h; default: 10s)",
    )
    w.add_argument(
        "--on-growth",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="capture when the fds grew by N or more since the last capture (default: 1)",
    )
    w.add_argument(
        "--keep",
        type=_at_least_one,
        default=5,
        metavar="K",
        help="keep the last K images, removing older ones this watch wrote (default: 5)",
    )
    w.add_argument(
        "-o", "--output", metavar="DIR", default=".", help="where to write images (default: .)"
    )
    w.add_argument(
        "--freeze", type=_freeze_mode, default="auto", metavar="MODE", help="as for tree"
    )
    w.add_argument(
        "--freeze-timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="as for tree (default: 10)",
    )
    _plugin_options(w)
    r = sub.add_parser(
        "recover",
        help="put back trees stranded by captures that died with their guardian",
        description="Find undo plans (in /run/asyckpt, or $ASYCKPT_RUN_DIR) and asyckpt-* "
        "cgroups left by captures whose asyckpt and guardian both died; thaw them, move "
        "every task back to its cgroup and remove the transient cgroups, saying what was "
        "done.  Exit 0 when nothing is left stranded, 7 when something could not be put back.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    r.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="wait that long for running captures to finish (default: 10)",
    )
    from ._restore_cmd import add_parser as add_restore

    add_restore(sub, EPILOG)
    return p


_DURATION_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def _duration(text: str) -> float:
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


def _at_least_one(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


DIFF_EPILOG = """\
diff exits as diff(1) does: 0 the images are the same, 1 they differ, 2 and up on
errors, with the codes below; its own internal errors exit 12, not 1.

"""

PLUGINS_EPILOG = """\
environment:
  ASYCKPT_DISABLE_PLUGIN_AUTOLOAD=1  use only asyckpt's own handlers and those named
                                     with -p NAME

"""


def _plugin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--disable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="do not use the handler NAME (repeatable)",
    )
    p.add_argument(
        "-p",
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="use the handler NAME even when ASYCKPT_DISABLE_PLUGIN_AUTOLOAD is set (repeatable)",
    )


def _warn(msg: str) -> None:
    # Names in messages are raw (paths, comms, handler errors): escaped once, here.
    print(f"asyckpt: warning: {escape(msg)}", file=sys.stderr)


def _report(summary: CaptureSummary, quiet: bool) -> None:
    if summary.generic:
        total = sum(summary.generic.values())
        kinds = ", ".join(f"{k} {v}" for k, v in summary.generic.items())
        _warn(f"{total} open files recorded generically (no handler for them): {kinds}")
    failed = [g for g in summary.generic_fds if g.error is not None]
    for g in failed[:10]:
        _warn(f"{g.error} (pid={g.pid}, fd={g.fd}, kind={g.kind})")
    if len(failed) > 10:
        _warn(f"... and {len(failed) - 10} more handler failures")
    if not summary.consistent:
        _warn("the tree was not frozen (--freeze=none): the image may be inconsistent")
    if summary.vanished:
        _warn(f"{summary.vanished} tasks exited during the capture and are not in the image")
    for note in summary.ghost_notes:
        print(f"asyckpt: {escape(note.message())}", file=sys.stderr)
    if summary.unverified:
        _warn(
            f"{summary.unverified} fds of exiting tasks could not be checked for sharing; "
            "each is recorded as a description of its own"
        )
    if quiet:
        return
    print(
        f"{escape(str(summary.path))}: {summary.tasks} tasks, {summary.fds} fds, "
        f"{summary.files} open files, "
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


def _cmd_tree(args: argparse.Namespace) -> int:
    from ._commit import Commit
    from ._guardian import discard_prestarted, prestart
    from ._signals import Signals

    # First thing, and before trio starts (so that trio leaves SIGINT to them): from here
    # a signal is recorded, never raised.
    with Signals(Commit(), restore=not _RUN_AS_COMMAND) as signals:
        if args.freeze != "none":
            # Its interpreter starts while this one imports trio and the plugins.
            prestart()
        try:
            # The image has standard output to itself; everything else goes to stderr.
            streaming = args.output == "-"
            with contextlib.redirect_stdout(sys.stderr) if streaming else contextlib.nullcontext():
                code = _tree(args, signals)
        finally:
            discard_prestarted()
        late = signals.late()
        if late is not None:
            print(
                f"asyckpt: note: {late} came after the image was complete; it is kept",
                file=sys.stderr,
            )
    return code


def _tree(args: argparse.Namespace, signals: Signals) -> int:
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
        endpoints=args.endpoints,
        lock_timeout=args.lock_timeout,
        # The command owns its process: the collector paused, a shorter switch interval.
        tune_interpreter=True,
    )
    LOCK_NOTICE.set(lambda msg: print(f"asyckpt: {escape(msg)}", file=sys.stderr))

    # Loaded here rather than by the capture, so that conflicts are reported as warnings
    # like the rest, and a broken plugin fails before any tree is started or frozen.
    dispatch = _load_handlers(args)

    def run(pid: int) -> CaptureSummary:
        # "-": file descriptor 1 (sys.stdout is stderr meanwhile, see _cmd_tree).
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
    _report(summary, args.quiet)
    if (
        args.pid is None
        and args.name is None
        and args.user is None
        and not args.quiet
        and args.output != "-"
    ):
        print(f"see it with: asyckpt show {escape(str(summary.path))}")
    return 0


def _load_handlers(args: argparse.Namespace) -> Dispatch:
    from ._plugins.loading import load_handlers

    dispatch = load_handlers(disabled=args.disable_plugin, enabled=args.plugin, warn=False)
    for conflict in dispatch.conflicts:
        _warn(conflict.message())
    return dispatch


def _cmd_show(args: argparse.Namespace) -> int:
    from ._image import read_image, read_image_fd
    from ._plugins.loading import image_plugins
    from ._show import render_endpoints, render_table

    if args.image == "-":
        image = read_image_fd(sys.stdin.fileno(), name="standard input")
    else:
        image = read_image(args.image)
    if args.extract:
        size = _extract(image, *args.extract)
        print(f"wrote {size} bytes to {escape(args.extract[1])}")
        return 0
    plugins = image_plugins(image.header.plugins, disabled=args.disable_plugin, enabled=args.plugin)
    if args.json:
        from ._jsonexport import iter_json_export

        sys.stdout.flush()
        for chunk in iter_json_export(image, plugins, with_endpoints=args.endpoints):
            sys.stdout.buffer.write(chunk)
    elif args.endpoints:
        sys.stdout.write(render_endpoints(image) + "\n")
    else:
        sys.stdout.write(render_table(image, plugins) + "\n")
    return 0


def _extract(image: Image, file_id: str, out: str) -> int:
    """``show --extract``: an unlinked file's saved content, as a sparse file."""
    f = image.files.get(int(file_id)) if file_id.isdigit() else None
    if f is None:
        raise UsageError(f"the image has no file {file_id!r}")
    if f.ghost != "saved" or f.ghost_file is None:
        raise UsageError(f"file {file_id} has no saved content (ghost: {f.ghost})")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from exc
    try:
        for c in image.contents.get(f.ghost_file, []):
            os.pwrite(fd, c.data, c.offset)
        os.ftruncate(fd, f.size)  # the holes after the last run
    except OSError as exc:
        os.close(fd)
        os.unlink(out)
        raise OutputError(f"writing {out}: {exc.strerror}") from exc
    os.close(fd)
    return f.size


def _cmd_plugins(args: argparse.Namespace) -> int:
    from ._plugins.loading import AUTOLOAD_ENV, autoload_disabled, survey

    found = survey(disabled=args.disable_plugin, enabled=args.plugin)
    rows = [("NAME", "DISTRIBUTION", "VERSION", "STATE", "PRIO", "RECORD", "HOOKS", "CLAIMS")]
    for inst, state, h in found.rows:
        if h is None:
            rows.append((inst.name, inst.distribution, inst.version, state, "", "", "", ""))
            continue
        rows.append(
            (
                h.name,
                h.distribution,
                h.version,
                state,
                str(h.priority),
                h.record_tag,
                ",".join(h.hooks()) or "-",
                h.describe_claims(),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        cells[4] = r[4].rjust(widths[4])  # PRIO: a number
        print("  ".join(cells).rstrip())
    if autoload_disabled():
        print(f"\n{AUTOLOAD_ENV} is set: only asyckpt's own handlers and those named with -p")
    for conflict in found.dispatch.conflicts:
        _warn(conflict.message())
    return 0


_INTERRUPTED = "asyckpt: interrupted; nothing was written and the tree is thawed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "tree" and args.pid is not None and (args.name, args.user) != (None, None):
        parser.error("give a PID or --name/--user, not both")
    try:
        if args.command == "tree":
            return _cmd_tree(args)
        if args.command == "plugins":
            return _cmd_plugins(args)
        if args.command == "graph":
            from ._graph_cmd import run

            return run(args)
        if args.command == "diff":
            from ._cmd_diff import cmd_diff

            return cmd_diff(args)
        if args.command == "watch":
            from ._cmd_watch import cmd_watch

            return cmd_watch(args, _load_handlers(args))
        if args.command == "restore":
            from ._restore_cmd import command as restore

            return restore(args)
        if args.command == "recover":
            from ._recover import command

            return command(dry_run=args.dry_run, lock_timeout=args.lock_timeout)
        return _cmd_show(args)
    except AsyckptError as exc:
        if exc.exit_code == EXIT_INTERRUPTED:
            print(_INTERRUPTED, file=sys.stderr)
        else:
            print(f"asyckpt: error: {escape(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(_INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `asyckpt show IMAGE | head`: the reader went away; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("ASYCKPT_DEBUG"):
            raise
        print(
            f"asyckpt: internal error: {type(exc).__name__}: {escape(str(exc))} "
            "(a bug: please report it; ASYCKPT_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_DIFF_INTERNAL if args.command == "diff" else 1


def run() -> NoReturn:
    """The ``asyckpt`` command (and ``python -m asyckpt``): :func:`main`, then exit at
    once, without tearing the interpreter down.

    By then every file is closed, the tree thawed and every child reaped, so nothing is
    left for the teardown to do but free each module and object one by one: 20 to 35 ms
    after a capture (trio and the plugins loaded), a seventh of a small tree's command.
    """
    global _RUN_AS_COMMAND
    _RUN_AS_COMMAND = True
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, --version and usage errors (printed)
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (`| head`): nobody is left to read it.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
