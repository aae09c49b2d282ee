"""Shown safely: names chosen by whoever owns the processes (or whoever made the image)
reach the reader escaped, one row each, and the JSON export is always JSON."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyckpt._endpoints import render_endpoints
from asyckpt._escape import escape
from asyckpt._image import parse_image
from asyckpt._jsondata import json_data
from asyckpt._show import render_table, to_json_doc

from .conftest import WORKLOADS, Tree
from .crafted import build, seed

ASYCKPT = [sys.executable, "-m", "asyckpt"]
FORGED = "x\n# pid 1 (systemd) ppid 0, state S"
ESCAPES = "\x1b[2J\x1b]0;pwned\x07"


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ASYCKPT, *args], capture_output=True, text=True, timeout=120, **kw)


def strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def assert_safe(text: str, tasks: int) -> None:
    """Every line printable (no control character, no escape sequence), and one
    ``# pid`` row per task: none forged."""
    lines = text.splitlines()
    assert [line for line in lines if not line.isprintable()] == []
    assert sum(line.startswith("# pid ") for line in lines) == tasks


def test_a_hostile_tree_is_shown_escaped(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "hostile_names.py")
    image = tmp_path / "h.ackpt"
    captured = run("tree", str(tree.pid), "-o", str(image))
    assert captured.returncode == 0, captured.stderr
    assert all(line.isprintable() for line in captured.stderr.splitlines())
    workdir, comm = tree.info["workdir"], tree.info["comm"]
    paths = [os.path.join(workdir, name) for name in tree.info["fds"]]

    table = run("show", str(image))
    assert table.returncode == 0, table.stderr
    assert_safe(table.stdout, 1)
    assert f"# pid {tree.pid} ({escape(comm)}) ppid" in table.stdout
    for path in paths:
        assert escape(path) in table.stdout
    assert "\\x1b]0;pwned\\x07" in table.stdout and "c1\\u009b2J" in table.stdout

    shown = run("show", str(image), "--endpoints")
    assert shown.returncode == 0, shown.stderr
    assert_safe(shown.stdout, 0)
    assert f"fifo {escape(os.path.join(workdir, 'fifo' + chr(10) + 'forged'))}" in shown.stdout

    doc = strict_json(run("show", str(image), "--json").stdout)
    assert doc["tasks"][0]["comm"] == comm  # the JSON export keeps names exactly
    assert set(paths) <= {f["path"] for f in doc["files"]}


def hostile_image() -> bytes:
    """The seed with a hostile string in every text field a renderer prints."""
    records = seed()
    header, trailer = records[0], records[-1]
    header.update(hostname=ESCAPES, kernel="6.1\n# pid 1", freezer_cgroup=FORGED)
    header.pop("hostname_bytes")  # its text is now another name: valid UTF-8, hostile
    header["plugins"][0]["name"] = "sockets\x1b[8m"
    trailer["generic"] = {ESCAPES: 1}
    for rec in records:
        if rec["kind"] == "task":
            rec["comm"] = FORGED[:15]
            rec.pop("comm_bytes", None)
            rec["state"] = "S\n"
        elif rec["kind"] == "file":
            rec["path"] = FORGED + ESCAPES
            rec.pop("path_bytes", None)
            rec["error"] = "failed\nhere"
            rec["owner_error"] = ESCAPES
            if rec["id"] == 1:
                rec["locks"][0].update(type="\x1b[31m", access="R\nW", text=ESCAPES)
                rec["owner"]["type"] = "pid\n# pid 1"
            if isinstance(rec["data"], dict):
                rec["data"]["family"] = "unix\n# pid 1"
                rec["data"]["note"] = ESCAPES
            if rec["id"] == 9:
                rec["ghost_error"] = FORGED
    return build(records)


def test_a_crafted_image_cannot_forge_a_row_or_reach_the_terminal(tmp_path: Path) -> None:
    data = hostile_image()
    image = parse_image(data)
    for plugins in (None, {}):
        assert_safe(render_table(image, plugins), len(image.tasks))
    assert_safe(render_endpoints(image), 0)
    path = tmp_path / "hostile.ackpt"
    path.write_bytes(data)
    for args in ([], ["--endpoints"]):
        shown = run("show", str(path), *args)
        assert shown.returncode == 0, shown.stderr
        assert_safe(shown.stdout, 0 if args else len(image.tasks))
        assert "\x1b" not in shown.stdout and "\\x1b[2J\\x1b]0;pwned\\x07" in shown.stdout


def test_error_messages_are_escaped(tmp_path: Path) -> None:
    name = tmp_path / f"bad{ESCAPES}\nname.ackpt"
    name.write_bytes(b"hello")
    shown = run("show", str(name))
    assert shown.returncode == 6
    lines = shown.stderr.splitlines()
    assert len(lines) == 1 and lines[0].isprintable(), shown.stderr
    assert lines[0] == f"asyckpt: error: {escape(str(name))} is not an asyckpt image"


def test_a_bad_value_is_echoed_escaped(tmp_path: Path) -> None:
    """msgspec's message quotes the offending value: it reaches the terminal escaped."""
    records = seed()
    next(r for r in records if r["kind"] == "file")["access"] = ESCAPES
    path = tmp_path / "bad.ackpt"
    path.write_bytes(build(records))
    shown = run("show", str(path))
    assert shown.returncode == 6
    (line,) = shown.stderr.splitlines()
    assert line.isprintable() and "access" in line and "\x1b" not in line


def test_the_json_export_is_strict_json(tmp_path: Path) -> None:
    records = seed()
    tty = next(r for r in records if r["kind"] == "file" and r["id"] == 10)
    tty["data"] = {
        "kind": "asyckpt.tty",
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "fine": 1.5,
        "list": [math.nan, {"deep": -math.inf}],
        "by_number": {1: "one", 2.5: "two and a half"},
        "by_array": msgspec.Raw(b"\x81\x92\x01\x02\xa1v"),  # {[1, 2]: "v"}
    }
    path = tmp_path / "floats.ackpt"
    path.write_bytes(build(records))
    shown = run("show", str(path), "--json", "--endpoints")
    assert shown.returncode == 0, shown.stderr
    doc = strict_json(shown.stdout)
    data = next(f for f in doc["files"] if f["id"] == 10)["data"]
    assert (data["nan"], data["inf"], data["ninf"], data["fine"]) == (
        "NaN",
        "Infinity",
        "-Infinity",
        1.5,
    )
    assert data["list"] == ["NaN", {"deep": "-Infinity"}]
    assert data["by_number"] == {"1": "one", "2.5": "two and a half"}
    assert data["by_array"] == {"[1,2]": "v"}
    # The library's export is the same data: json.dumps needs no allow_nan.
    image = parse_image(build(records))
    json.dumps(to_json_doc(image), allow_nan=False)


JSON_DATA = [
    (1.5, 1.5),
    (math.nan, "NaN"),
    (math.inf, "Infinity"),
    (-math.inf, "-Infinity"),
    ({"a": [math.inf]}, {"a": ["Infinity"]}),
    ({1: 2, 2.5: 3}, {"1": 2, "2.5": 3}),
    ({math.inf: 1}, {"Infinity": 1}),
    ({(1, 2): 1, None: 2, True: 3}, {"[1,2]": 1, "null": 2, "true": 3}),
    ({b"\x00": 1}, {"AA==": 1}),
    (b"\xff", "/w=="),
    ((1, math.nan), [1, "NaN"]),
    (msgspec.msgpack.Ext(5, b"x"), {"ext": 5, "data": "eA=="}),
    ({"e": [msgspec.msgpack.Ext(-3, b"")]}, {"e": [{"ext": -3, "data": ""}]}),
    (datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC), "2024-05-01T00:00:00Z"),
    ({"s": "text", "n": None, "b": False, "i": -3}, {"s": "text", "n": None, "b": False, "i": -3}),
]


@pytest.mark.parametrize(("value", "expected"), JSON_DATA)
def test_json_data(value: Any, expected: Any) -> None:
    assert json_data(value) == expected
    json.dumps(json_data(value), allow_nan=False)


@pytest.mark.parametrize(
    "value",
    [{"a": 1.5}, {"a": [math.nan]}, {1: b"x"}, {(1,): math.inf}],
    ids=["float", "nan", "int-key", "array-key"],
)
def test_json_data_from_raw_is_the_same(value: Any) -> None:
    """The shortcut taken when the MessagePack holds no float changes nothing."""
    raw = msgspec.msgpack.encode(value)
    decoded = msgspec.msgpack.decode(raw)
    assert json_data(decoded, raw) == json_data(decoded)
