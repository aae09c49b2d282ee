"""Names as the kernel has them: bytes, kept exactly in a format whose text is UTF-8.

Linux names (paths, link texts, comms, mount points, socket names, fdinfo values) are
bytes, chosen by whoever owns the processes.  asyckpt reads them as Python does
(``os.fsdecode``: UTF-8, each invalid byte as a lone surrogate), and MessagePack text
must be valid UTF-8.  So every name field of a record keeps one rule
(docs/image-format.md, "Names"):

- a name that is valid UTF-8 is its field's text, and its ``<field>_bytes`` is nil;
- any other name is in its field as :func:`asyckpt._escape.escape` shows it (printable,
  reversible), and its exact bytes are in ``<field>_bytes`` (MessagePack bin).

The JSON export shows the second kind escaped, with ``"<field>_encoding": "escaped"``
beside it.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._escape import escape
from ._records import File, Header, MountEntry, OutsideFd, Task

__all__ = [
    "ESCAPED",
    "bad_name",
    "escape_name",
    "json_name",
    "json_names",
    "json_names_in",
    "name_bytes",
    "os_name",
    "outside_fd_json",
    "shown",
    "split_name",
    "split_names",
    "text",
]

ESCAPED = "escaped"
"""The value of a JSON ``<field>_encoding``: the field's text is in escaped form."""


def _is_utf8(value: str) -> bool:
    # Read with surrogateescape, a name is valid UTF-8 exactly when it holds no lone
    # surrogate, which is when it encodes.
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_name(value: str) -> tuple[str, bytes | None]:
    """A name read with surrogateescape, as a record keeps it: ``(value, None)`` when it
    is valid UTF-8, else ``(escape(value), its bytes)``."""
    if _is_utf8(value):
        return value, None
    raw = value.encode("utf-8", "surrogateescape")
    return escape(raw), raw


def split_names(values: Sequence[str]) -> tuple[list[str], list[bytes] | None]:
    """The rule for a list of names (fdinfo values): the texts and None when every one
    is valid UTF-8, else every one escaped and every one's bytes."""
    if all(_is_utf8(v) for v in values):
        return list(values), None
    raws = [v.encode("utf-8", "surrogateescape") for v in values]
    return [escape(r) for r in raws], raws


def text(value: str) -> str:
    """A message (an error, a lock line) that may quote a name: itself when valid
    UTF-8, else escaped.  Not a name: nothing is kept beside it."""
    return value if _is_utf8(value) else escape(value)


def name_bytes(value: str, raw: bytes | None) -> bytes:
    """The exact bytes of a name field (its text, and its ``_bytes`` companion)."""
    return raw if raw is not None else value.encode("utf-8")


def os_name(value: str, raw: bytes | None) -> str:
    """The name as ``os`` functions take it (surrogateescape), to open the very file."""
    return name_bytes(value, raw).decode("utf-8", "surrogateescape")


def escape_name(value: str | bytes, raw: bytes | None = None) -> str:
    """A name as asyckpt prints it, from a name field's text and ``_bytes`` companion:
    :func:`asyckpt._escape.escape` of its exact bytes (never of the escaped text, which
    would escape it twice)."""
    return escape(raw if raw is not None else value)


def shown(value: str, encoding: object) -> str:
    """A name from a JSON-facing record (its text and ``X_encoding``) as printed:
    escaped once (an ``escaped`` one is so already)."""
    return value if encoding == ESCAPED else escape(value)


def json_name(doc: dict[str, object], field: str, raw: bytes | None) -> None:
    """In a JSON export ``doc`` (a record's fields), replace ``<field>_bytes`` by the
    stated encoding: the field escaped from the bytes, and ``<field>_encoding``."""
    doc.pop(f"{field}_bytes", None)
    if raw is not None:
        doc[field] = escape(raw)
        doc[f"{field}_encoding"] = ESCAPED


def json_names(doc: dict[str, object], field: str, raws: Iterable[bytes] | None) -> None:
    """:func:`json_name` for a list of names (fdinfo values: ``[key, value]`` pairs)."""
    doc.pop(f"{field}_bytes", None)
    if raws is None:
        return
    pairs = doc[field]
    assert isinstance(pairs, list)
    doc[field] = [[pair[0], escape(raw)] for pair, raw in zip(pairs, raws, strict=False)]
    doc[f"{field}_encoding"] = ESCAPED


def json_names_in(value: object) -> object:
    """A handler record decoded from MessagePack (maps, lists, bytes), with the rule
    applied to every map holding a text field ``X`` and a ``X_bytes`` (bin) beside
    it, however deep: how the JSON export shows a plugin's names
    (docs/plugins.md).  Maps are changed in place; returns ``value``."""
    if isinstance(value, list):
        for item in value:
            json_names_in(item)
    elif isinstance(value, dict):
        for key in [k for k in value if isinstance(k, str) and k.endswith("_bytes")]:
            raw = value[key]
            # A nil companion is left as the record has it: its raw fields, unchanged.
            if isinstance(value.get(key[: -len("_bytes")]), str) and isinstance(raw, bytes):
                json_name(value, key[: -len("_bytes")], raw)
        for item in value.values():
            json_names_in(item)
    return value


def outside_fd_json(fd: OutsideFd) -> dict[str, object]:
    """A holder outside the tree, in the JSON export (its comm by the rule)."""
    doc: dict[str, object] = {"pid": fd.pid, "comm": fd.comm, "fd": fd.fd, "access": fd.access}
    json_name(doc, "comm", fd.comm_bytes)
    return doc


_NAME_FIELDS: dict[type, tuple[str, ...]] = {
    Header: ("hostname", "freezer_cgroup"),
    MountEntry: ("root", "mount_point", "fstype", "source"),
    File: ("path",),
    Task: ("comm", "root"),
    OutsideFd: ("comm",),
}


def bad_name(record: object) -> str | None:
    """The first name field of a decoded record whose text is not what its ``_bytes``
    say (the escaped form of them), or None.  An image's reader refuses such a record:
    what is printed must be the name that is kept.  ``fdinfo_bytes`` must match
    ``fdinfo`` value for value."""
    for field in _NAME_FIELDS.get(type(record), ()):
        raw = getattr(record, f"{field}_bytes")
        if raw is not None and getattr(record, field) != escape(raw):
            return field
    if isinstance(record, File) and record.fdinfo_bytes is not None:
        values = [value for _, value in record.fdinfo]
        if values != [escape(raw) for raw in record.fdinfo_bytes]:
            return "fdinfo"
    if (
        isinstance(record, Task)
        and record.cmdline_bytes is not None
        and record.cmdline != [escape(raw) for raw in record.cmdline_bytes]
    ):
        return "cmdline"
    return None
