"""The renderer edge of ``asyckpt graph``: DOT text through Graphviz's ``dot``, and the
picture written whole or not at all.

``dot`` is an external program (the Debian/Ubuntu ``graphviz`` package), looked up on
PATH when a picture is asked for; DOT output needs nothing.  Its absence or its failure
is a :class:`~asyckpt._errors.RendererError` (exit 11) saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ._errors import OutputError, RendererError
from ._escape import escape

__all__ = ["INSTALL_HINT", "render", "write_output"]

INSTALL_HINT = (
    "install Graphviz (Debian/Ubuntu: apt-get install graphviz; Fedora: dnf install "
    "graphviz), or write DOT with --format dot"
)


def render(dot_text: str, fmt: str) -> bytes:
    """The picture ``dot -T<fmt>`` draws from ``dot_text`` (``svg`` or ``png``)."""
    exe = shutil.which("dot")
    if exe is None:
        raise RendererError(
            f"--format {fmt} needs Graphviz's dot, which is not on PATH: " + INSTALL_HINT
        )
    try:
        proc = subprocess.run(
            [exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False
        )
    except OSError as exc:
        raise RendererError(f"cannot run {escape(exe)}: {exc.strerror}; {INSTALL_HINT}") from exc
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = escape(lines[0]) if lines else f"exit status {proc.returncode}"
        raise RendererError(f"Graphviz's dot failed: {why}")
    return proc.stdout


def write_output(dest: str, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``dest`` as an image is written (see ``_target``): unnamed until
    complete, then linked into place, so a failure or a kill leaves nothing; an existing
    ``dest`` is replaced only with ``force``, and only if it is a regular file or a
    symlink (a device node, FIFO, socket or directory never is)."""
    from ._target import PathTarget, write_all

    target = PathTarget(dest, force=force, mode=0o644)  # a picture, meant to be shared
    try:
        write_all(target.fd, data)
        os.fsync(target.fd)
        target.commit()
    except OSError as exc:
        raise OutputError(f"writing {escape(dest)}: {exc.strerror}") from exc
    finally:
        target.abort()
