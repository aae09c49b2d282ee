"""``asyckpt plugins``: list every installed fd-type handler, what it claims, and
whether it is used."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._cliargs import add_command, plugin_options, warn

if TYPE_CHECKING:
    from ._cliargs import Subparsers

__all__ = ["register", "run"]

PLUGINS_EPILOG = """\
environment:
  ASYCKPT_DISABLE_PLUGIN_AUTOLOAD=1  use only asyckpt's own handlers and those named
                                     with -p NAME

"""


def register(sub: Subparsers) -> None:
    pl = add_command(
        sub,
        "plugins",
        help="list the fd-type handlers",
        description="List every installed fd-type handler (entry-point group "
        "asyckpt.fd_types): what it claims, and whether it is used.",
        epilog=PLUGINS_EPILOG,
    )
    plugin_options(pl)


def run(args: argparse.Namespace) -> int:
    from ._escape import escape
    from ._plugins.loading import AUTOLOAD_ENV, autoload_disabled, survey

    found = survey(disabled=args.disable_plugin, enabled=args.plugin)
    rows: list[tuple[str, ...]] = [
        ("NAME", "DISTRIBUTION", "VERSION", "STATE", "PRIO", "RECORD", "HOOKS", "CLAIMS")
    ]
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
    # Names, versions and claims come from whatever distribution is installed: escaped
    # like every other name printed, so a crafted one cannot forge rows or reach the tty.
    rows = [tuple(escape(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        cells[4] = r[4].rjust(widths[4])  # PRIO: a number
        print("  ".join(cells).rstrip())
    if autoload_disabled():
        print(f"\n{AUTOLOAD_ENV} is set: only asyckpt's own handlers and those named with -p")
    for conflict in found.dispatch.conflicts:
        warn(conflict.message())
    return 0
