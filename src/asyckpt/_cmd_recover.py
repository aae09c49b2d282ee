"""``asyckpt recover``: put back the trees stranded by captures that died with their
guardian (the work is ``_recover``'s)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._cliargs import add_command, seconds

if TYPE_CHECKING:
    from ._cliargs import Subparsers

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    r = add_command(
        sub,
        "recover",
        help="put back trees stranded by captures that died with their guardian",
        description="Find undo plans (in /run/asyckpt, or $ASYCKPT_RUN_DIR) and asyckpt-* "
        "cgroups left by captures whose asyckpt and guardian both died; thaw them, move "
        "every task back to its cgroup and remove the transient cgroups, saying what was "
        "done.  Exit 0 when nothing is left stranded, 7 when something could not be put back.",
    )
    r.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    r.add_argument(
        "--lock-timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="wait that long for running captures to finish (default: 10)",
    )


def run(args: argparse.Namespace) -> int:
    from ._recover import command

    return command(dry_run=args.dry_run, lock_timeout=args.lock_timeout)
