"""The one escaping used wherever a name is printed (pure, table-driven)."""

from __future__ import annotations

import os
import random

import pytest

from asyckpt._escape import escape, unescape

CASES = [
    (b"plain/path.txt", "plain/path.txt"),
    (b"bad\xff\xfebytes", "bad\\xff\\xfebytes"),
    (b"line\nbreak", "line\\nbreak"),
    (b"esc\x1b[31mred", "esc\\x1b[31mred"),
    (b"\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
    (b"tab\there\rcr", "tab\\there\\rcr"),
    (b"back\\slash", "back\\\\slash"),
    (b"lit\\x41", "lit\\\\x41"),
    (b"del\x7f", "del\\x7f"),
    ("caf\u00e9 \u65e5\u672c".encode(), "caf\u00e9 \u65e5\u672c"),
    ("c1\u0085".encode(), "c1\\u0085"),
    ("bidi\u202egnp.exe".encode(), "bidi\\u202egnp.exe"),
    ("sep\u2028x".encode(), "sep\\u2028x"),
    (b"nul\x00", "nul\\x00"),
    (b"", ""),
]


@pytest.mark.parametrize(("raw", "shown"), CASES)
def test_escape_and_back(raw: bytes, shown: str) -> None:
    assert escape(raw) == shown
    assert escape(os.fsdecode(raw)) == shown  # surrogateescape'd str: the same form
    assert unescape(shown) == raw
    assert shown.isprintable()


def test_random_bytes_round_trip() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        shown = escape(raw)
        assert shown.isprintable()
        assert unescape(shown) == raw


@pytest.mark.parametrize("bad", ["trailing\\", "\\q", "\\x4", "\\udc80", "ok\\"])
def test_unescape_refuses_what_escape_never_makes(bad: str) -> None:
    with pytest.raises(ValueError, match="bad escape"):
        unescape(bad)
