"""``asyckpt restore IMAGE (--pid PID | --tree) (--hold | -- CMD [ARGS...])``.

Every description is made and checked in this process (``_restore.make``), so a refusal
is an ordinary error with nothing started.  Then the holders are forked
(``_restore_hold``), or a child which installs the table at its fd numbers, closes
every other fd and execs CMD, where the fds marked close-on-exec vanish as they would
have for the original task.  A status pipe (close-on-exec, above the plan's fd numbers)
tells this process when CMD could not be run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from ._errors import RestoreError, UsageError
from ._escape import escape

if TYPE_CHECKING:
    from ._cliargs import Subparsers
    from ._restore import Made
    from ._restore_model import RestorePlan

__all__ = ["add_parser", "command", "register", "run"]


def register(sub: Subparsers) -> None:
    """The ``restore`` parser, with the exit codes below its help as every command's."""
    from ._cliargs import EPILOG

    add_parser(sub, EPILOG)


def run(args: argparse.Namespace) -> int:
    return command(args)


def add_parser(sub: argparse._SubParsersAction[Any], epilog: str) -> None:
    r = sub.add_parser(
        "restore",
        help="rebuild a task's fd table from an image",
        description="Rebuild the fd table task PID had in IMAGE (same fd numbers, flags, "
        "positions, close-on-exec, sharing) in a new process, then hold it (--hold: print "
        "the holder's pid, wait for SIGTERM) or exec CMD.  Paths are opened under --root "
        "only, never created or truncated, and checked against the image.  A kind not "
        "restored is an error (exit 13) unless skipped with --skip KIND.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("image", metavar="IMAGE", help="the image")
    r.add_argument("--pid", type=int, help="the task whose table to rebuild")
    r.add_argument(
        "--tree",
        action="store_true",
        help="rebuild every task's table, in a tree of the image's shape (with --hold)",
    )
    r.add_argument("--root", default="/", metavar="DIR", help="resolve paths in DIR (default: /)")
    r.add_argument(
        "--relaxed",
        action="store_true",
        help="accept another file of the same type (and size, for regular files) at a path",
    )
    r.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="KIND",
        help="leave out the fds of this kind (reg, dir, pipe, socket...: docs/restore.md), "
        "listing them",
    )
    r.add_argument("--hold", action="store_true", help="hold the table; print the holder's pid")
    r.usage = (
        "%(prog)s IMAGE --pid PID [options] (--hold | -- CMD [ARGS...])\n"
        "       %(prog)s IMAGE --tree [options] --hold"
    )
    r.__class__ = type("RestoreParser", (_CommandAfterDashes, type(r)), {})


class _CommandAfterDashes(argparse.ArgumentParser):
    """Everything after the first ``--`` is CMD, wherever IMAGE and the options are
    (argparse itself would give a trailing ``nargs="*"`` positional nothing once IMAGE
    came before the options)."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        cmd: list[str] = []
        if "--" in args:
            cut = args.index("--")
            args, cmd = args[:cut], args[cut + 1 :]
        parsed, extra = super().parse_known_args(args, namespace)
        assert parsed is not None
        parsed.cmd = cmd
        return parsed, extra


def command(args: argparse.Namespace) -> int:
    from ._image import read_image
    from ._restore import make, nofile, open_root
    from ._restore_hooks import HookHandlers
    from ._restore_plan import plan_table, plan_tree

    if args.hold == bool(args.cmd):
        raise UsageError("give --hold or -- CMD [ARGS...], one of them")
    if args.tree == (args.pid is not None):
        raise UsageError("give --pid PID or --tree, one of them")
    if args.tree and args.cmd:
        raise UsageError("--tree holds the tree (--hold); it runs no command")
    image = read_image(args.image)
    skip = frozenset(args.skip)
    hooks = HookHandlers()
    if args.tree:
        plan = plan_tree(image, nofile=nofile(), skip=skip, hooks=hooks)
    else:
        plan = plan_table(image, args.pid, nofile=nofile(), skip=skip, hooks=hooks)
    del image
    root_fd = open_root(args.root)
    try:
        made = make(plan, root_fd=root_fd, relaxed=args.relaxed, hooks=hooks)
    finally:
        os.close(root_fd)
    for s in plan.skipped:
        print(f"asyckpt: restore: skipped fd {s.fd} ({s.kind} {escape(s.path)})", file=sys.stderr)
    for f in made.fallbacks:
        print(
            f"asyckpt: restore: fd {f.fd} ({escape(f.path)}): {f.why}, restored as a memfd",
            file=sys.stderr,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    if args.hold:
        from ._restore_hold import hold

        print(hold(plan, made), flush=True)
        return 0
    return _run(plan, made, args.cmd)


def _run(plan: RestorePlan, made: Made, cmd: list[str]) -> int:
    """Fork a child that installs the table and execs ``cmd``; wait for it and return
    its exit status (128 + N for a signal N, as a shell says)."""
    from ._restore import close_all

    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(status_r)
            _child(plan, made.fds, made.floor, status_w, cmd)  # never returns
    finally:
        os.close(status_w)
        close_all(made.fds)
    # Ctrl-C is CMD's to handle (it is in the terminal's process group too); restore
    # waits for it and reports how it ended.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with os.fdopen(status_r, "rb") as status:
        said = status.read(65536)
    if said:  # the child failed (and exits): its one-line reason
        os.waitpid(pid, 0)
        raise RestoreError(said.decode(errors="replace"))
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return 128 - code if code < 0 else code


def _child(plan: RestorePlan, made: list[int], floor: int, status: int, cmd: list[str]) -> None:
    """In the forked child: install, close every other fd, exec CMD.  Never returns;
    reports through ``status`` (any output would go to restored fds)."""
    # Loaded before the fork (by _run), so this import cannot fail in the child.
    from ._restore import Made, above, child_failed, install, take_posix_locks

    try:
        status = above(status, max(floor, *made, 0) + 1)

        install(plan, Made(fds=made, floor=floor), plan.pid, plan.fds)
        keep = sorted({s.fd for s in plan.fds} | {status})
        for low, high in zip([-1, *keep], [*keep, nofile_limit()], strict=True):
            if high > low + 1:  # os.closerange(n, n) would close every fd from n up
                os.closerange(low + 1, high)
        take_posix_locks(plan, plan.pid, plan.fds)  # last: closing a fd of a file drops them
        # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across
        # exec: CMD gets the defaults (as subprocess's restore_signals does).
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            os.write(status, f"cannot run {cmd[0]}: {exc.strerror or exc}".encode())
            os._exit(127)
    except BaseException as exc:  # nothing may unwind into the parent's code
        child_failed(status, exc)


def nofile_limit() -> int:
    from ._restore import nofile

    return nofile()
