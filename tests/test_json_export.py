"""show --json written record by record: the same text as the whole document dumped with
``json.dump(indent=1)`` (a public contract, docs/images.md), without ever holding it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from asyckpt._endpoints import endpoints
from asyckpt._image import read_image
from asyckpt._plugins.loading import image_plugins
from asyckpt._show import to_json_doc

from .conftest import SPAWN_TREE, WORKLOADS
from .crafted import build, seed
from .test_show_safely import hostile_image

ASYCKPT = [sys.executable, "-m", "asyckpt"]


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*ASYCKPT, *args], capture_output=True, timeout=120, check=False)


def whole_document_text(image_path: Path, with_endpoints: bool) -> bytes:
    """The export as it was made before it was streamed: one document, dumped whole."""
    image = read_image(str(image_path))
    doc = to_json_doc(image, image_plugins(image.header.plugins))
    if with_endpoints:
        doc["endpoints"] = [e.to_json() for e in endpoints(image)]
    return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode()


def assert_same_export(image: Path) -> None:
    for flags in ([], ["--endpoints"]):
        shown = run("show", str(image), "--json", *flags)
        assert shown.returncode == 0, shown.stderr
        expected = whole_document_text(image, bool(flags))
        assert json.loads(shown.stdout) == json.loads(expected)
        assert shown.stdout == expected


def test_the_streamed_export_is_the_whole_documents_text(spawn: Any, tmp_path: Path) -> None:
    # Shared descriptions, pipes, socketpairs, a deleted file (spawn_tree), and names
    # with newlines, escapes and non-ASCII text (hostile_names).
    for tree in (spawn(SPAWN_TREE, "2", "60"), spawn(WORKLOADS / "hostile_names.py")):
        image = tmp_path / f"{tree.pid}.ackpt"
        captured = run("tree", str(tree.pid), "-o", str(image), "-q")
        assert captured.returncode == 0, captured.stderr
        assert_same_export(image)


def test_a_crafted_image_exports_the_same_text(tmp_path: Path) -> None:
    # Handler records holding NaN, binary and odd keys, hostile strings everywhere.
    image = tmp_path / "crafted.ackpt"
    image.write_bytes(hostile_image())
    assert_same_export(image)


def test_an_image_with_no_task_exports_empty_arrays(tmp_path: Path) -> None:
    records = [r for r in seed() if r.get("kind") in ("header", "mounts", "trailer")]
    image = tmp_path / "empty.ackpt"
    image.write_bytes(build(records, counts=True))
    shown = run("show", str(image), "--json", "--endpoints")
    assert shown.returncode == 0, shown.stderr
    assert b'"endpoint_search": "system",' in shown.stdout  # the header's, apart from the array
    assert shown.stdout.endswith(b'"tasks": [],\n "files": [],\n "endpoints": []\n}\n')
    assert shown.stdout == whole_document_text(image, True)


PEAK = """
import contextlib, sys, tracemalloc
from asyckpt._cli import main
from asyckpt._image import read_image
from asyckpt._plugins.loading import image_plugins
from asyckpt._show import to_json_doc

def peak(fn):
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    return tracemalloc.get_traced_memory()[1] - base

def show():
    with open("/dev/null", "w") as out, contextlib.redirect_stdout(out):
        main(["show", sys.argv[1], "--json"])

def whole():
    image = read_image(sys.argv[1])
    to_json_doc(image, image_plugins(image.header.plugins))

show()  # imports and plugin loading out of the way
tracemalloc.start()
print(peak(lambda: read_image(sys.argv[1])), peak(show), peak(whole))
"""


def test_the_export_never_holds_the_whole_document(spawn: Any, tmp_path: Path) -> None:
    tree = spawn(SPAWN_TREE, "1", "1500")
    image = tmp_path / "big.ackpt"
    captured = run("tree", str(tree.pid), "-o", str(image), "-q")
    assert captured.returncode == 0, captured.stderr
    peaks = subprocess.run(
        [sys.executable, "-c", PEAK, str(image)], capture_output=True, text=True, timeout=120
    )
    assert peaks.returncode == 0, peaks.stderr
    reading, streamed, whole = map(int, peaks.stdout.split())
    # Reading the image is the floor; the whole document (held while it was dumped,
    # before the export was streamed) costs about as much again on top of it, a record
    # at a time next to nothing.
    assert streamed - reading < 0.25 * (whole - reading), (reading, streamed, whole)


def test_task_files_in_the_export(tmp_path: Path) -> None:
    """Format 4's fields: file ids into files[], mappings as objects, a thread's own."""
    path = tmp_path / "seed.ackpt"
    path.write_bytes(build(seed()))
    proc = run("show", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    task = next(t for t in doc["tasks"] if t["pid"] == 100)
    assert (task["root"], task["root_file"], task["cwd"], task["exe"]) == ("/", None, 12, 13)
    assert task["mappings"] == [
        {"start": 0x400000, "end": 0x401000, "perms": "r-xp", "offset": 0, "file": 13},
        {"start": 0x401000, "end": 0x402000, "perms": "rw-p", "offset": 4096, "file": 13},
    ]
    assert task["namespaces"] == {"mnt": 4026531841, "net": 4026531840}
    assert task["cmdline"] == ["server", "--name=\\xff"]
    assert task["cmdline_encoding"] == "escaped" and "cmdline_bytes" not in task
    assert task["threads"] == [
        {"tid": 100, "fd_table": 1, "cwd": None, "root_file": None, "namespaces": None},
        {
            "tid": 101,
            "fd_table": 2,
            "cwd": 14,
            "root_file": None,
            "namespaces": {"net": 4026531999},
        },
    ]
    files = {f["id"]: f for f in doc["files"]}
    assert files[13]["description"] is False and files[13]["access"] == "path"
    assert files[13]["path"] == "/usr/lib/libx\\xff.so"
    assert files[1]["description"] is True
    other = next(t for t in doc["tasks"] if t["pid"] == 102)
    assert (other["cwd"], other["exe"], other["mappings"], other["namespaces"]) == (
        None,
        None,
        [],
        {},
    )
    assert other["cmdline"] is None and "cmdline_encoding" not in other
