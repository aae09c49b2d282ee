"""Every command: its parser is registered by its own module, `--help` works, and
building the parser loads none of what the commands use when they run."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .test_cli import run


def _listed_commands() -> list[str]:
    """The commands as `asyckpt --help` lists them, in its order."""
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    found = re.search(r"^positional arguments:\n  \{([a-z,]+)\}$", helped.stdout, re.M)
    assert found is not None, helped.stdout
    return found.group(1).split(",")


COMMANDS = _listed_commands()


def test_every_listed_command_has_a_runner() -> None:
    from asyckpt._cli import COMMANDS as RUNNERS

    assert set(COMMANDS) == {"tree", *RUNNERS}
    assert COMMANDS[0] == "tree"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command: str) -> None:
    helped = run(command, "--help")
    assert (helped.returncode, helped.stderr) == (0, "")
    assert helped.stdout.startswith(f"usage: asyckpt {command} ")
    # Each command's help ends with the exit codes, as the top help does.
    assert "\nexit codes:\n  0 success" in helped.stdout
    assert helped.stdout.rstrip().endswith("or several separate trees)")


def test_building_the_parser_loads_no_command_machinery() -> None:
    # `show`, `--help` and usage errors start faster without them: the commands import
    # trio, msgspec and the pipeline when they run, not when they register.
    code = (
        "import sys, asyckpt._cli as c; c._parser(); "
        "print(sorted(m for m in sys.modules if m in {'trio', 'msgspec', 'psutil', "
        "'asyckpt._capture', 'asyckpt._image', 'asyckpt._plugins', 'asyckpt._recover'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
