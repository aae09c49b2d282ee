"""The renderer edge of ``asyckpt graph``: DOT text through Graphviz's ``dot``, and the
picture written whole or not at all.

``dot`` is an external program (the Debian/Ubuntu ``graphviz`` package), looked up on
PATH when a picture is asked for; DOT output needs nothing.  Its absence or its failure
is a :class:`~asyckpt._errors.RendererError` (exit 11) saying how to install it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

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
    """Write ``data`` to ``dest`` atomically (a temporary file in its directory, then
    renamed): a failure leaves no partial file.  An existing ``dest`` is replaced only
    with ``force``."""
    path = os.path.abspath(dest)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise OutputError(f"{escape(dest)} is a directory")
    if not force and os.path.lexists(path):
        raise OutputError(f"{escape(dest)} exists; use --force to replace it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except FileNotFoundError:
        raise OutputError(f"directory {escape(directory)} does not exist") from None
    except OSError as exc:
        raise OutputError(f"cannot write in {escape(directory)}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # a picture, meant to be shared (mkstemp made it 0600)
        if force:
            os.replace(tmp, path)
        else:
            # link() refuses to replace a file that appeared since the check.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputError(f"{escape(dest)} exists; use --force to replace it") from None
            os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"writing {escape(dest)}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
