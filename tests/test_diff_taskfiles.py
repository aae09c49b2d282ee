"""asyckpt diff, for what a task holds beyond its fds (cwd, root, exe, mapped files) and
its namespaces: the pure core, on constructed images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from asyckpt import diff
from asyckpt._diff import render_diff
from asyckpt._image import Image
from asyckpt._records import File, Mapping

from .test_diff import file, image, task
from .test_show_taskfiles import encoded, records

NS = {"mnt": 4026531841, "net": 4026531840, "pid": 4026531836}
LIBC = dict(path="/usr/lib/libc.so.6", dev=2049, ino=300)


def held(id: int, path: str, **kw: Any) -> File:
    fields: dict[str, Any] = dict(flags=0, access="path", description=False, ino=1000 + id)
    fields.update(kw)
    return file(id, path, **fields)


def m(start: int, end: int, perms: str, file: int, offset: int = 0) -> Mapping:
    return Mapping(start=start, end=end, perms=perms, offset=offset, file=file)


def img(files: list[File], **kw: Any) -> Image:
    """One task (pid 10) holding ``files`` by reference, as ``kw`` says."""
    fields: dict[str, Any] = dict(namespaces=NS)
    fields.update(kw)
    i = image([task(10, 1, **fields)], {1: {}})
    i.files.update({f.id: f for f in files})
    return i


def text(a: Image, b: Image) -> list[str]:
    return render_diff(diff(a, b)).splitlines()


def test_the_same_task_files_are_no_change() -> None:
    files = [held(1, "/srv", type="dir"), held(2, "/usr/bin/svc"), held(3, **LIBC)]
    kw = dict(cwd=1, root_file=1, exe=2, mappings=[m(0x1000, 0x2000, "r-xp", 3)])
    d = diff(img(files, **kw), img(files, **kw))
    assert d.same and d.task_files == [] and render_diff(d) == ""


def test_ids_differ_between_images_files_are_matched_by_inode() -> None:
    # Each capture numbers its files afresh: libc is file 3 in A, file 7 in B.
    a = img([held(3, **LIBC)], mappings=[m(0x1000, 0x2000, "r-xp", 3)])
    b = img([held(7, **LIBC)], mappings=[m(0x1000, 0x2000, "r-xp", 7)])
    assert diff(a, b).same


def test_a_new_working_directory() -> None:
    a = img([held(1, "/srv/a", type="dir")], cwd=1)
    b = img([held(2, "/srv/b", type="dir")], cwd=2)
    d = diff(a, b)
    assert not d.same and d.summary.task_files == 1
    assert text(a, b) == [
        "~ pid 10 cwd: dir /srv/a (ino 1001) -> dir /srv/b (ino 1002)",
        "summary: 1 task files or namespaces changed",
    ]
    doc = json.loads(msgspec.json.encode(d))["task_files"]
    assert doc == [
        {
            "pid": 10,
            "field": "cwd",
            "a": {"type": "dir", "path": "/srv/a", "dev": 2049, "ino": 1001, "path_state": "ok"},
            "b": {"type": "dir", "path": "/srv/b", "dev": 2049, "ino": 1002, "path_state": "ok"},
        }
    ]


def test_an_executable_upgraded_under_a_running_task_is_stale() -> None:
    a = img([held(2, "/usr/bin/svc")], exe=2)
    b = img([held(2, "/usr/bin/svc", path_state="replaced")], exe=2)
    d = diff(a, b)
    assert (d.summary.task_files, d.summary.stale_mapped) == (1, 1)
    assert text(a, b)[0] == (
        "~ pid 10 exe: reg /usr/bin/svc (ino 1002) -> reg /usr/bin/svc (ino 1002, replaced)"
    )
    assert text(a, b)[-1] == (
        "summary: 1 task files or namespaces changed, 1 mapped files or executables newly stale"
    )


def test_mappings_compared_as_a_set_of_ranges_per_file() -> None:
    libc, data, plug = held(3, **LIBC), held(4, "/srv/data"), held(5, "/usr/lib/plug.so")
    a = img(
        [libc, data],
        mappings=[
            m(0x1000, 0x2000, "r--p", 3),
            m(0x2000, 0x5000, "r-xp", 3, 0x1000),
            m(0x9000, 0xA000, "rw-s", 4),
        ],
    )
    b = img(
        [libc, plug],
        mappings=[
            m(0x1000, 0x2000, "r--p", 3),
            m(0x2000, 0x4000, "r-xp", 3, 0x1000),
            m(0x6000, 0x8000, "r-xp", 5),
            m(0x8000, 0x9000, "rw-p", 5, 0x2000),
        ],
    )
    d = diff(a, b)
    assert [(c.field, c.a is None, c.b is None) for c in d.task_files] == [
        ("mapping", False, False),
        ("mapping", True, False),
        ("mapping", False, True),
    ]
    assert d.task_files[0].b == {
        "file": {"type": "reg", "path": "/usr/lib/libc.so.6", "dev": 2049, "ino": 300}
        | {"path_state": "ok"},
        "ranges": [[0x1000, 0x2000, "r--p", 0], [0x2000, 0x4000, "r-xp", 0x1000]],
    }
    assert text(a, b)[:3] == [
        "~ pid 10 mem: reg /usr/lib/libc.so.6 (ino 300): ranges +2000-4000 r-xp 0x1000, "
        "-2000-5000 r-xp 0x1000",
        "+ pid 10 mem: reg /usr/lib/plug.so (ino 1005), 2 ranges",
        "- pid 10 mem: reg /srv/data (ino 1004), 1 range",
    ]


def test_a_mapped_file_deleted_meanwhile() -> None:
    a = img([held(4, "/srv/data")], mappings=[m(0x9000, 0xA000, "rw-s", 4)])
    gone = held(4, "/srv/data", deleted=True, path_state="deleted", nlink=0)
    b = img([gone], mappings=[m(0x9000, 0xA000, "rw-s", 4)])
    d = diff(a, b)
    assert d.summary.stale_mapped == 1
    assert text(a, b)[0] == (
        "~ pid 10 mem: reg /srv/data (ino 1004) -> reg /srv/data (ino 1004, deleted)"
    )
    # Mapped already unlinked in A: nothing newly stale.
    assert diff(b, b).summary.stale_mapped == 0


def test_a_namespace_changed_or_appeared() -> None:
    a = img([])
    b = img([], namespaces=NS | {"net": 4026532300, "time": 4026531834})
    assert text(a, b)[:2] == [
        "~ pid 10 namespace net: 4026531840 -> 4026532300",
        "~ pid 10 namespace time: none -> 4026531834",
    ]
    c = diff(a, b).task_files[0]
    assert (c.field, c.namespace, c.a, c.b) == ("namespace", "net", 4026531840, 4026532300)


def test_what_one_side_could_not_read_is_no_change() -> None:
    files = [held(1, "/srv", type="dir"), held(3, **LIBC)]
    a = img(files, cwd=1, mappings=[m(0x1000, 0x2000, "r-xp", 3)])
    b = img(files, namespaces={"mnt": NS["mnt"]}, task_files_error="maps: Permission denied")
    assert diff(a, b).same
    assert diff(b, a).same


def test_an_older_image_or_a_zombie_has_nothing_to_compare() -> None:
    files = [held(1, "/srv", type="dir")]
    new = img(files, cwd=1)
    old = img([], namespaces={})  # format 3: none of the fields
    assert diff(old, new).same and diff(new, old).same
    zombie = img([], state="Z", fd_table=None, threads=[])  # its namespaces as last read
    assert diff(new, zombie).task_files == []


def test_names_are_escaped() -> None:
    bad = "/tmp/x\n+ task 1 (init)\x1b[2J"
    a = img([])
    b = img([held(4, bad)], mappings=[m(0x9000, 0xA000, "rw-s", 4)])
    lines = text(a, b)
    assert lines[0] == "+ pid 10 mem: reg /tmp/x\\n+ task 1 (init)\\x1b[2J (ino 1004), 1 range"
    assert all(line.isprintable() for line in lines)


def test_through_the_command(tmp_path: Path) -> None:
    """Two images as files: the text, the exit code, the JSON."""
    recs = records()
    a, b = tmp_path / "a.ackpt", tmp_path / "b.ackpt"
    a.write_bytes(encoded(recs))
    server = recs[-3]
    recs[-3] = msgspec.structs.replace(server, mappings=server.mappings[:-1])  # memfd unmapped
    b.write_bytes(encoded(recs))
    argv = [sys.executable, "-m", "asyckpt", "diff", str(a), str(b)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "- pid 100 mem: reg /memfd:cache (ino 5007, deleted), 1 range",
        "summary: 1 task files or namespaces changed",
    ]
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    (change,) = json.loads(done.stdout)["task_files"]
    assert (change["pid"], change["field"], change["b"]) == (100, "mapping", None)
    assert change["a"]["ranges"] == [[0x7F2000000000, 0x7F2000100000, "r--s", 0]]
    same = subprocess.run([*argv[:-1], str(a)], capture_output=True, text=True, timeout=60)
    assert (same.returncode, same.stdout) == (0, "")
