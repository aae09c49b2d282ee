"""``asyckpt show IMAGE``: verify an image and print it (a table, the JSON export, the
endpoints), or write out an unlinked file's saved content."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ._cliargs import add_command, plugin_options, read_image_arg
from ._errors import OutputError, UsageError
from ._escape import escape

if TYPE_CHECKING:
    from ._cliargs import Subparsers
    from ._image import Image

__all__ = ["register", "run"]


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "show",
        help="print an image",
        description="Verify an image and print it.  Handler records are rendered by the "
        "handlers that wrote them when they are installed here, else shown raw.",
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
    s.add_argument("--force", action="store_true", help="with --extract: replace OUT if it exists")
    plugin_options(s)


def run(args: argparse.Namespace) -> int:
    from ._endpoints import render_endpoints
    from ._plugins.loading import image_plugins
    from ._show import render_table

    if args.force and not args.extract:
        raise UsageError("--force is only for --extract (show writes no other file)")
    image = read_image_arg(args.image)
    if args.extract:
        size = _extract(image, *args.extract, force=args.force)
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


def _extract(image: Image, file_id: str, out: str, *, force: bool) -> int:
    """``show --extract``: an unlinked file's saved content, as a sparse file, written as
    an image is (unnamed until complete, then linked into place: a failure or a kill
    leaves nothing at OUT)."""
    from ._target import PathTarget

    f = image.files.get(int(file_id)) if file_id.isdigit() else None
    if f is None:
        raise UsageError(f"the image has no file {file_id!r}")
    if f.ghost != "saved" or f.ghost_file is None:
        raise UsageError(f"file {file_id} has no saved content (ghost: {f.ghost})")
    target = PathTarget(out, force=force)
    try:
        for c in image.contents.get(f.ghost_file, []):
            view = memoryview(c.data)
            while view:  # pwrite may write less (a filesystem running out of room)
                n = os.pwrite(target.fd, view, c.offset + len(c.data) - len(view))
                view = view[n:]
        os.ftruncate(target.fd, f.size)  # the holes after the last run
        os.fsync(target.fd)
        target.commit()
    except OSError as exc:
        raise OutputError(f"writing {escape(out)}: {exc.strerror}") from exc
    finally:
        target.abort()
    return f.size
