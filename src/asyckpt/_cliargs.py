"""What the commands' parsers share: argument types, common options, and the warnings
and handler loading that several commands do alike.

Imported when the parser is built, so it imports nothing heavy: the commands import
trio, the pipeline and the plugins when they run (`show` and `--version` start faster).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._escape import escape

if TYPE_CHECKING:
    from ._image import Image
    from ._plugins.dispatch import Dispatch

    # What `add_subparsers` returns: each command's register() adds its parser to it.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

FREEZER_MODES = ("auto", "cgroup-v1", "cgroup-v2", "none")

# _capture.PIPE_DATA_MAX, repeated so that parsing arguments does not import the pipeline
# (a test checks that they agree).
PIPE_DATA_MAX = 64 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# _ghost.DEFAULT_GHOST_LIMIT, for the same reason.
DEFAULT_GHOST_LIMIT = 1 << 20

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


def add_command(
    sub: Subparsers, name: str, *, help: str, description: str, epilog: str = ""
) -> argparse.ArgumentParser:
    """A command's parser, with the exit codes below its help as every command has."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def freeze_mode(text: str) -> str:
    if text in FREEZER_MODES or (text.startswith("cgroup:") and len(text) > len("cgroup:")):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not one of auto, cgroup:PATH, cgroup-v1, cgroup-v2, none"
    )


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def size(text: str) -> int:
    """``--pipe-data``: bytes, with an optional K or M (binary) suffix; 0 is off."""
    number, unit = text, ""
    if text[-1:].lower() in ("k", "m"):
        number, unit = text[:-1], text[-1].lower()
    if not number.isdigit() or int(number) * _UNITS[unit] > PIPE_DATA_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size from 0 to 64M (bytes, or with a K or M suffix)"
        )
    return int(number) * _UNITS[unit]


def ghost_limit(text: str) -> int:
    """``--ghost-limit``: bytes, with an optional K, M or G (binary) suffix; 0 is off."""
    number, unit = text, ""
    if text[-1:].lower() in ("k", "m", "g"):
        number, unit = text[:-1], text[-1].lower()
    if not number.isascii() or not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (bytes, or with a K, M or G suffix: 512K, 1M)"
        )
    return int(number) * _UNITS[unit]


def user(text: str) -> int:
    from ._select import parse_user

    try:
        return parse_user(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def plugin_options(p: argparse.ArgumentParser) -> None:
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


def warn(msg: str) -> None:
    # Names in messages are raw (paths, comms, handler errors): escaped once, here.
    print(f"asyckpt: warning: {escape(msg)}", file=sys.stderr)


def load_handlers(args: argparse.Namespace) -> Dispatch:
    """The handlers a capturing command uses, loaded before any tree is started or
    frozen, so that a broken plugin fails first and conflicts are warnings like the rest."""
    from ._plugins.loading import load_handlers

    dispatch = load_handlers(disabled=args.disable_plugin, enabled=args.plugin, warn=False)
    for conflict in dispatch.conflicts:
        warn(conflict.message())
    return dispatch


def read_image_arg(arg: str) -> Image:
    """An IMAGE argument read and verified: ``-`` is standard input (a pipe or a regular
    file), anything else a path."""
    from ._image import read_image, read_image_fd

    if arg == "-":
        return read_image_fd(sys.stdin.fileno(), name="standard input")
    return read_image(arg)
