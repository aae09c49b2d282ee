"""``show --json``: the JSON export written record by record, never whole.

The export is the text ``json.dump(to_json_doc(image), indent=1)`` would print (a public
contract: docs/images.md), but building that document for a 100,000-fd image holds every
record's dict at once, and ``json``'s indenting encoder is pure Python (several seconds).
Here each task and each file is made into its dict, encoded by ``json``'s C encoder
(same escapes: ASCII only, same number spellings) and indented by ``msgspec.json.format``,
which only moves whitespace between tokens; then the dict is dropped.  Only the image
itself stays in memory.  Pure: yields bytes, the caller writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from ._endpoints import endpoints
from ._image import Image
from ._plugins.loading import ImagePlugin
from ._show import JsonParts

__all__ = ["iter_json_export"]

_CHUNK = 1 << 16
"""Bytes gathered before a chunk is yielded: fewer, larger writes."""


def _indented(value: Any, depth: int) -> bytes:
    """``value`` as ``json.dumps(value, indent=1)`` prints it nested ``depth`` levels
    deep (its first line is not indented: the caller's line holds it)."""
    # allow_nan=False: what JSON cannot hold was replaced already (_jsondata); a value
    # that slipped through is an error, never an invalid export.
    text = json.dumps(value, allow_nan=False).encode()
    formatted = msgspec.json.format(text, indent=1)
    return formatted.replace(b"\n", b"\n" + b" " * depth) if depth else formatted


def _array(key: str, items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """``,\\n "key": [...]`` of the top-level object, one item at a time."""
    first = True
    for item in items:
        yield (b",\n " + _indented(key, 0) + b": [\n  " if first else b",\n  ")
        yield _indented(item, 2)
        first = False
    yield b",\n " + _indented(key, 0) + b": []" if first else b"\n ]"


def _chunks(parts: Iterable[bytes]) -> Iterator[bytes]:
    buf: list[bytes] = []
    size = 0
    for part in parts:
        buf.append(part)
        size += len(part)
        if size >= _CHUNK:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _parts(
    image: Image, plugins: Mapping[str, ImagePlugin] | None, with_endpoints: bool
) -> Iterator[bytes]:
    parts = JsonParts(image, plugins)
    head = parts.head()
    # The head is a non-empty object: "{\n ...\n}"; the arrays continue it.
    yield _indented(head, 0)[: -len(b"\n}")]
    yield from _array("tasks", (parts.task(task) for task in image.tasks))
    yield from _array("files", (parts.file(f) for f in image.files.values()))
    if with_endpoints:
        yield from _array("endpoints", (e.to_json() for e in endpoints(image)))
    yield b"\n}\n"


def iter_json_export(
    image: Image, plugins: Mapping[str, ImagePlugin] | None, *, with_endpoints: bool = False
) -> Iterator[bytes]:
    """The JSON export of ``image`` (``show --json``; with ``--endpoints``, its
    ``endpoints`` array last), ending in a newline, as chunks of UTF-8 (ASCII) text."""
    return _chunks(_parts(image, plugins, with_endpoints))
