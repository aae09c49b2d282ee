"""The ``asyckpt`` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn, Protocol

from . import (
    _cmd_diff,
    _cmd_plugins,
    _cmd_recover,
    _cmd_show,
    _cmd_tree,
    _cmd_watch,
    _graph_cmd,
    _restore_cmd,
)

# All but EPILOG for tests, which import them from here: they live beside their parsers.
from ._cliargs import DEFAULT_GHOST_LIMIT, EPILOG, FREEZER_MODES, PIPE_DATA_MAX  # noqa: F401
from ._cliargs import ghost_limit as _ghost_limit  # noqa: F401
from ._cliargs import size as _size  # noqa: F401
from ._errors import AsyckptError
from ._escape import escape

if TYPE_CHECKING:
    from ._cliargs import Subparsers

EXIT_INTERRUPTED = 130
# `diff` exits 1 when the images differ, as diff(1) does, so its internal errors (1
# elsewhere) take a code of their own.
EXIT_DIFF_INTERNAL = 12

# Set by run(): the process ends right after main(), so signal handlers stay in place.
_RUN_AS_COMMAND = False


class _Command(Protocol):
    """A command's module: register() adds its parser (help, options), run() does it."""

    def register(self, sub: Subparsers) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# Every command but `tree`, in `asyckpt --help` order after it.  `tree` registers the
# same way but runs inside the signal setup (_tree below), so it is called by name.
COMMANDS: dict[str, _Command] = {
    "show": _cmd_show,
    "graph": _graph_cmd,
    "plugins": _cmd_plugins,
    "diff": _cmd_diff,
    "watch": _cmd_watch,
    "recover": _cmd_recover,
    "restore": _restore_cmd,
}


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr, like every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"asyckpt: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    # Typed as the base class: the commands' register() take its subparsers.
    p: argparse.ArgumentParser = _Parser(
        prog="asyckpt",
        description="Capture the open-file state of a Linux process tree.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"asyckpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _cmd_tree.register(sub)
    for command in COMMANDS.values():
        command.register(sub)
    return p


def _tree(args: argparse.Namespace) -> int:
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
                code = _cmd_tree.run(args, signals)
        finally:
            discard_prestarted()
        late = signals.late()
        if late is not None:
            print(
                f"asyckpt: note: {late} came after the image was complete; it is kept",
                file=sys.stderr,
            )
    return code


_INTERRUPTED = "asyckpt: interrupted; nothing was written and the tree is thawed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "tree" and args.pid is not None and (args.name, args.user) != (None, None):
        parser.error("give a PID or --name/--user, not both")
    try:
        if args.command == "tree":
            return _tree(args)
        return COMMANDS[args.command].run(args)
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
