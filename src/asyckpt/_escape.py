"""One escaping for every name asyckpt prints, and its exact inverse.

Names in a process tree (paths, link texts, comms, socket names, fdinfo values) are
bytes chosen by whoever owns the processes, not by the user reading asyckpt's output.
Printed raw, a newline forges a row and an escape sequence reaches the reader's
terminal.  Every text that comes from /proc or from an image goes through
:func:`escape` before it is printed (tables, error messages, warnings), and the JSON
export uses the same form for names that are not valid UTF-8, so one rule is learned
once.

The form, chosen to be unambiguous and reversible (:func:`unescape`):

- ``\\\\`` for a backslash;
- ``\\n``, ``\\t``, ``\\r`` for those three controls;
- ``\\xNN`` for every other C0 control, DEL, and every byte that is not part of valid
  UTF-8 (``bad\\xff\\xfebytes``): ``\\xNN`` is always one byte;
- ``\\uNNNN`` (``\\UNNNNNNNN`` above the BMP) for the characters Python does not call
  printable that UTF-8 encodes in several bytes: C1 controls, line and paragraph
  separators, bidirectional overrides, unassigned code points;
- everything else as it is, non-ASCII letters included.

A ``str`` may carry undecodable bytes as lone surrogates (``os.fsdecode``'s
``surrogateescape``); they are escaped as the bytes they stand for.  This module is
pure: no I/O, no imports beyond the standard library.
"""

from __future__ import annotations

import functools
import re

__all__ = ["escape", "unescape"]

_SHORT = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}

# Runs that may need escaping: backslash, C0, DEL, C1, and any non-ASCII character
# (most are printable and pass through; the check is per character).  Compiled on first
# use: a class spanning all of Unicode takes sre ~4 ms, which a command that prints no
# name (tree -q) should not pay at start-up; the negated class, quick to compile, is
# slower to search.
_SUSPECT_PATTERN = r"[\\\x00-\x1f\x7f-\U0010ffff]"


@functools.cache
def _suspect() -> re.Pattern[str]:
    return re.compile(_SUSPECT_PATTERN)


def _one(match: re.Match[str]) -> str:
    ch = match.group()
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte itself
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0x7F:  # C0 and DEL: one byte each, so \xNN names it exactly
        return f"\\x{code:02x}"
    if ch.isprintable():
        return ch
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(value: str | bytes) -> str:
    """``value`` as one line of printable text, reversible with :func:`unescape`.

    ``bytes`` are decoded as UTF-8 where they are valid; every other byte is shown as
    ``\\xNN``.  A ``str`` is escaped as it is (lone surrogates as the bytes
    ``surrogateescape`` made them from).
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    return _suspect().sub(_one, text)


_ESCAPED = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|([\\ntr]))")
_CONTROL = {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}


def unescape(text: str) -> bytes:
    """The bytes :func:`escape` was given (UTF-8 encoded, for a ``str`` without surrogates).

    Raises ``ValueError`` for a backslash that starts no escape of this form, so a
    mangled name is an error, never a silently different file.
    """
    out = bytearray()
    pos = 0
    for m in _ESCAPED.finditer(text):
        chunk = text[pos : m.start()]
        if "\\" in chunk:
            raise ValueError(f"bad escape at offset {pos + chunk.index(chr(92))}")
        out += chunk.encode("utf-8")
        byte, bmp, astral, short = m.groups()
        if byte is not None:
            out.append(int(byte, 16))
        elif short is not None:
            out += _CONTROL[short]
        else:
            code = int(bmp or astral, 16)
            try:
                out += chr(code).encode("utf-8")
            except (UnicodeEncodeError, ValueError):
                raise ValueError(f"bad escape at offset {m.start()}") from None
        pos = m.end()
    rest = text[pos:]
    if "\\" in rest:
        raise ValueError(f"bad escape at offset {pos + rest.index(chr(92))}")
    out += rest.encode("utf-8")
    return bytes(out)
