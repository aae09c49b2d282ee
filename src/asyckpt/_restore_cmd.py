"""``asyckpt restore IMAGE --pid PID (--hold | -- CMD [ARGS...])``.

Every description is made and checked in this process (``_restore.make``), so a refusal
is an ordinary error with nothing started.  Then a child is forked which installs them
at their fd numbers, closes every other fd, and either holds the table (printing its pid
here, waiting for SIGTERM) or execs CMD, where the fds marked close-on-exec vanish as
they would have for the original task.  A status pipe (close-on-exec, above the plan's
fd numbers) tells this process that the child is holding, or that CMD could not be run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from ._errors import AsyckptError, RestoreError, UsageError
from ._escape import escape

if TYPE_CHECKING:
    from ._restore_plan import RestorePlan

__all__ = ["add_parser", "command"]

_READY = b"ok"


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
    r.add_argument("--pid", type=int, required=True, help="the task whose table to rebuild")
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
    r.usage = "%(prog)s IMAGE --pid PID [options] (--hold | -- CMD [ARGS...])"
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
    from ._restore import close_all, make, nofile, open_root
    from ._restore_plan import plan_table

    if args.hold == bool(args.cmd):
        raise UsageError("give --hold or -- CMD [ARGS...], one of them")
    image = read_image(args.image)
    plan = plan_table(image, args.pid, nofile=nofile(), skip=frozenset(args.skip))
    del image
    root_fd = open_root(args.root)
    try:
        made = make(plan, root_fd=root_fd, relaxed=args.relaxed)
    finally:
        os.close(root_fd)
    for s in plan.skipped:
        print(f"asyckpt: restore: skipped fd {s.fd} ({s.kind} {escape(s.path)})", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    # Blocked before the fork: a SIGTERM sent to the holder as soon as its pid is known is
    # waited for, not lost, whatever it is doing then.  CMD gets the mask restore had.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pid = os.fork()
        if pid == 0:
            os.close(status_r)
            _child(plan, made.fds, made.floor, status_w, args.cmd, mask)  # never returns
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(status_w)
        close_all(made.fds)
    if args.cmd:
        # Ctrl-C is CMD's to handle (it is in the terminal's process group too); restore
        # waits for it and reports how it ended, as a shell does.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with os.fdopen(status_r, "rb") as status:
        said = status.read(65536)
    if said and said != _READY:  # the child failed (and exits): its one-line reason
        os.waitpid(pid, 0)
        raise RestoreError(said.decode(errors="replace"))
    if args.hold:
        print(pid, flush=True)
        return 0
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def _child(
    plan: RestorePlan,
    made: list[int],
    floor: int,
    status: int,
    cmd: list[str],
    mask: set[int | signal.Signals],
) -> None:
    """In the forked child: install, close every other fd, hold or exec.  Never
    returns; reports through ``status`` (any output would go to restored fds)."""
    try:
        status = _above(status, max(floor, *made, 0) + 1)
        if not cmd:
            os.setsid()  # not killed with the terminal's process group: it holds until SIGTERM
        from ._restore import Made, install, take_posix_locks

        install(plan, Made(fds=made, floor=floor), plan.pid, plan.fds)
        keep = sorted({s.fd for s in plan.fds} | {status})
        for low, high in zip([-1, *keep], [*keep, nofile_limit()], strict=True):
            if high > low + 1:  # os.closerange(n, n) would close every fd from n up
                os.closerange(low + 1, high)
        take_posix_locks(plan, plan.pid, plan.fds)  # last: closing a fd of a file drops them
        if cmd:
            # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored
            # across exec: CMD gets the defaults (as subprocess's restore_signals does).
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                os.execvp(cmd[0], cmd)
            except OSError as exc:
                os.write(status, f"cannot run {cmd[0]}: {exc.strerror or exc}".encode())
                os._exit(127)
        os.write(status, _READY)
        os.close(status)
        signal.sigwait({signal.SIGTERM})
        os._exit(0)
    except BaseException as exc:  # nothing may unwind into the parent's code
        why = str(exc) if isinstance(exc, AsyckptError) else f"{type(exc).__name__}: {exc}"
        try:
            os.write(status, why.encode(errors="replace"))
        finally:
            os._exit(1)


def _above(fd: int, floor: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    os.close(fd)
    return high


def nofile_limit() -> int:
    from ._restore import nofile

    return nofile()
