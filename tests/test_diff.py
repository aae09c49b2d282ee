"""asyckpt diff: the pure core on constructed images, then real captures of a child
that leaks fds, through the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyckpt import diff
from asyckpt._diff import render_diff
from asyckpt._image import Image
from asyckpt._records import Fd, File, Header, Lock, Task, Thread, Trailer

from .conftest import _ROOTS, Tree

# --- constructed images ---------------------------------------------------------


def file(id: int, path: str = "/srv/log", **kw: Any) -> File:
    fields: dict[str, Any] = dict(
        id=id,
        type="reg",
        handler="reg",
        flags=0o2,
        access="rw",
        pos=0,
        mnt_id=1,
        dev=2049,
        ino=1000 + id,
        path=path,
        path_state="ok",
    )
    fields.update(kw)
    return File(**fields)


def sock(id: int, **data: Any) -> File:
    raw = msgspec.Raw(msgspec.msgpack.encode({"kind": "asyckpt.socket", **data}))
    return file(id, f"socket:[{5000 + id}]", type="socket", dev=8, ino=5000 + id, data=raw)


def pipe(id: int, queued: int) -> File:
    raw = msgspec.Raw(msgspec.msgpack.encode({"kind": "asyckpt.pipe", "queued": queued}))
    return file(id, f"pipe:[{7000 + id}]", type="pipe", dev=13, ino=7000 + id, data=raw)


def task(pid: int, table: int | None, start: int = 100, **kw: Any) -> Task:
    fields: dict[str, Any] = dict(
        pid=pid,
        ppid=1,
        comm="svc",
        starttime=start,
        state="S",
        uid=0,
        gid=0,
        fd_table=table,
        threads=[Thread(tid=pid, fd_table=table)],
    )
    fields.update(kw)
    return Task(**fields)


def image(tasks: list[Task], tables: dict[int, dict[int, File]], cloexec: bool = False) -> Image:
    """An Image of ``tasks`` whose fd tables map fd numbers to files."""
    files = {f.id: f for table in tables.values() for f in table.values()}
    fd_tables = {
        t: [Fd(fd=n, file=f.id, cloexec=cloexec) for n, f in sorted(fds.items())]
        for t, fds in tables.items()
    }
    return Image(
        header=Header(
            format_version=2,
            asyckpt_version="0.1.0",
            kernel="6.1",
            machine="x86_64",
            hostname="h",
            time="2026-12-06T00:00:00.000+00:00",
            root_pid=tasks[0].pid if tasks else 1,
            freezer="cgroup-v1",
        ),
        mounts=[],
        fd_tables=fd_tables,
        table_owner={t: t for t in tables},
        files=files,
        tasks=tasks,
        trailer=Trailer(
            tasks=len(tasks),
            fd_tables=len(tables),
            fds=sum(map(len, fd_tables.values())),
            files=len(files),
            records=0,
        ),
        checksum="00",
    )


def one(fds_a: dict[int, File], fds_b: dict[int, File], **kw: Any) -> Any:
    """The diff of one task whose single table goes from ``fds_a`` to ``fds_b``."""
    return diff(image([task(10, 1)], {1: fds_a}, **kw), image([task(10, 1)], {1: fds_b}, **kw))


def changes(d: Any) -> list[tuple[int, int, str, Any, Any]]:
    return [(c.pid, c.fd, c.field, c.a, c.b) for c in d.changed]


def test_same_image_is_same() -> None:
    img = image([task(10, 1)], {1: {0: file(1), 3: sock(2, state="LISTEN")}})
    d = diff(img, img)
    assert d.same
    assert (d.tasks_added, d.tasks_removed, d.opened, d.closed, d.changed) == ([], [], [], [], [])
    assert render_diff(d) == ""


def test_tasks_by_pid_and_start_time() -> None:
    # pid 11 exited, its pid was reused by another process (same pid, later start),
    # and pid 12 appeared.
    a = image([task(10, 1), task(11, 2, start=200)], {1: {}, 2: {}})
    b = image([task(10, 1), task(11, 2, start=900), task(12, 3)], {1: {}, 2: {}, 3: {}})
    d = diff(a, b)
    assert [(t.pid, t.starttime) for t in d.tasks_added] == [(11, 900), (12, 100)]
    assert [(t.pid, t.starttime) for t in d.tasks_removed] == [(11, 200)]
    assert d.opened == d.closed == []  # a new task's fds are the task's, not "opened"
    assert (d.summary.tasks_added, d.summary.tasks_removed) == (2, 1)


def test_opened_and_closed_by_fd_number() -> None:
    d = one({0: file(1), 4: file(2, "/old")}, {0: file(1), 5: file(3, "/new")})
    assert [(r.pid, r.fd, r.type, r.path) for r in d.opened] == [(10, 5, "reg", "/new")]
    assert [(r.pid, r.fd, r.type, r.path) for r in d.closed] == [(10, 4, "reg", "/old")]
    assert d.changed == []
    assert not d.same


def test_retargeted_fd_is_one_change() -> None:
    # fd 3 closed and reopened on another file (same name, a new inode: a rotated log)
    d = one({3: file(1, "/log", ino=1)}, {3: file(2, "/log", ino=2)})
    assert d.opened == d.closed == []
    assert changes(d) == [
        (
            10,
            3,
            "file",
            {"type": "reg", "path": "/log", "dev": 2049, "ino": 1},
            {"type": "reg", "path": "/log", "dev": 2049, "ino": 2},
        )
    ]


LOCK = Lock(
    type="POSIX",
    mode="ADVISORY",
    access="WRITE",
    pid=10,
    dev=2049,
    ino=1001,
    start=0,
    end=None,
    text="1: POSIX  ADVISORY  WRITE 10 08:01:1001 0 EOF",
)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (file(1, pos=0), file(1, pos=15), [("pos", 0, 15)]),
        (file(1, flags=0o2), file(1, flags=0o2002), [("flags", 0o2, 0o2002)]),
        (file(1, size=1), file(1, size=4096), [("size", 1, 4096)]),
        (file(1), file(1, locks=[LOCK]), [("locks", [], ["POSIX WRITE 0-EOF"])]),
        (
            file(1),
            file(1, path_state="deleted", deleted=True),
            [("path_state", "ok", "deleted")],
        ),
        # socket state and peer compared as they are
        (sock(1, state="CLOSE"), sock(1, state="LISTEN"), [("state", "CLOSE", "LISTEN")]),
        (sock(1), sock(1, peer_ino=77), [("peer_ino", None, 77)]),
        # queues only when they grew
        (sock(1, recv_queue=0), sock(1, recv_queue=10), [("recv_queue", 0, 10)]),
        (sock(1, recv_queue=10), sock(1, recv_queue=0), []),
        (sock(1, accept_queue=1), sock(1, accept_queue=3), [("accept_queue", 1, 3)]),
        (pipe(1, 0), pipe(1, 4096), [("queued", 0, 4096)]),
        (pipe(1, 4096), pipe(1, 10), []),
        # anonymous inodes share one inode: told apart by kind only
        (
            file(1, "anon_inode:[eventfd]", type="anon", ino=9, pos=0),
            file(2, "anon_inode:[eventfd]", type="anon", ino=9, pos=0),
            [],
        ),
    ],
)
def test_fields_of_the_same_file(before: File, after: File, expected: list[Any]) -> None:
    d = one({3: before}, {3: after})
    assert changes(d) == [(10, 3, *e) for e in expected]
    assert d.summary.changed == len(expected)
    assert d.same is not expected


def test_cloexec_change() -> None:
    a = image([task(10, 1)], {1: {3: file(1)}}, cloexec=False)
    b = image([task(10, 1)], {1: {3: file(1)}}, cloexec=True)
    assert changes(diff(a, b)) == [(10, 3, "cloexec", False, True)]


def test_summary_counts_listeners_connections_unlinked_queues() -> None:
    d = one(
        {3: sock(1, state="CLOSE"), 4: file(2, "/data"), 6: pipe(6, 0)},
        {
            3: sock(1, state="LISTEN"),  # put in LISTEN
            4: file(2, "/data", path_state="deleted", deleted=True),  # deleted, still held
            5: sock(3, state="ESTABLISHED", peer_ino=99),  # a new connection
            6: pipe(6, 100),  # its queue grew
            7: sock(4, state="LISTEN"),  # a new listener
            8: file(5, "/tmp/x", path_state="deleted", deleted=True),  # opened unlinked
        },
    )
    s = d.summary
    assert (s.opened, s.listeners, s.connections, s.unlinked_held, s.queues_grown) == (
        3,
        2,
        1,
        2,
        1,
    )


def test_thread_with_its_own_table_compared_under_its_tid() -> None:
    threads = [Thread(tid=10, fd_table=1), Thread(tid=11, fd_table=2)]
    a = image([task(10, 1, threads=threads)], {1: {0: file(1)}, 2: {0: file(1)}})
    b = image([task(10, 1, threads=threads)], {1: {0: file(1)}, 2: {0: file(1), 3: file(2)}})
    assert [(r.pid, r.fd) for r in diff(a, b).opened] == [(11, 3)]


def test_text_is_escaped() -> None:
    hostile = "/tmp/evil\n+ pid 1 fd 0: reg /forged\x1b[2J"
    a = image([task(10, 1)], {1: {}})
    b = image([task(10, 1), task(12, 2, comm="x\x1b]0;pwn\x07")], {1: {4: file(2, hostile)}, 2: {}})
    text = render_diff(diff(a, b))
    assert "\x1b" not in text and "\x07" not in text
    assert "+ pid 10 fd 4: reg /tmp/evil\\n+ pid 1 fd 0: reg /forged\\x1b[2J" in text
    assert text.count("\n") == 2  # task line, fd line, summary: nothing forged
    assert text.splitlines()[-1] == "summary: 1 tasks added, 1 fds opened"


def test_hostile_record_values_still_print() -> None:
    # A socket record whose state is a msgpack extension, not a string: in the stated
    # JSON form of an extension (docs/images.md), as show --json has it.
    ext = msgspec.Raw(b"\x82\xa4kind\xaeasyckpt.socket\xa5state\xd4\x01\x02")
    a = file(1, "socket:[1]", type="socket", ino=1)
    b = file(1, "socket:[1]", type="socket", ino=1, data=ext)
    d = one({3: a}, {3: b})
    assert [(c.field, c.a) for c in d.changed] == [("state", None)]
    doc = json.loads(msgspec.json.encode(d))
    assert doc["changed"][0]["b"] == {"ext": 1, "data": "Ag=="}
    assert "\x1b" not in render_diff(d)


def test_json_contract() -> None:
    d = one({4: file(2, "/old")}, {3: file(1, pos=5), 4: file(2, "/old", pos=9)})
    doc = json.loads(msgspec.json.encode(d))
    assert list(doc) == [
        "a",
        "b",
        "tasks_added",
        "tasks_removed",
        "opened",
        "closed",
        "changed",
        "summary",
        "task_files",
    ]
    assert doc["opened"] == [{"pid": 10, "fd": 3, "type": "reg", "path": "/srv/log"}]
    assert doc["changed"] == [{"pid": 10, "fd": 4, "field": "pos", "a": 0, "b": 9}]
    assert doc["summary"]["opened"] == 1 and doc["summary"]["changed"] == 1
    assert {"root_pid", "time", "hostname", "checksum", "tasks", "fds", "files"} <= set(doc["a"])


# --- real captures, through the command ---------------------------------------------

LEAKER = """
import os, socket, sys
held = []
log = open(os.path.join(sys.argv[1], "app.log"), "a")
print(os.getpid(), flush=True)
for line in sys.stdin:
    if line == "serve\\n":  # a listener and a connected pair
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        held += [srv, *socket.socketpair()]
        print(" ".join(str(h.fileno()) for h in held[-3:]), flush=True)
        continue
    n = int(line)
    for _ in range(n):
        held.append(socket.socket())
    held.append(open(os.path.join(sys.argv[1], "leaked.txt"), "w"))
    print(" ".join(str(h.fileno()) for h in held[-n - 1 :]), flush=True)
"""


def asyckpt(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyckpt", *argv], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def leaker(tmp_path: Path) -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAKER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    tree = Tree(proc, {})
    _ROOTS.add(proc.pid)
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == proc.pid
        yield tree
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        tree.kill()


def leak(tree: Tree, n: int | str) -> list[int]:
    assert tree.proc.stdin is not None and tree.proc.stdout is not None
    tree.proc.stdin.write(f"{n}\n")
    tree.proc.stdin.flush()
    return [int(fd) for fd in tree.proc.stdout.readline().split()]


def test_diff_of_a_leaking_child(leaker: Tree, tmp_path: Path) -> None:
    a, b = tmp_path / "a.ackpt", tmp_path / "b.ackpt"
    assert asyckpt("tree", str(leaker.pid), "-o", str(a), "-q").returncode == 0
    leaked = leak(leaker, 3)
    assert asyckpt("tree", str(leaker.pid), "-o", str(b), "-q").returncode == 0

    proc = asyckpt("diff", str(a), str(b), "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(o["pid"], o["fd"]) for o in doc["opened"]] == [(leaker.pid, fd) for fd in leaked]
    assert [o["type"] for o in doc["opened"]] == ["socket"] * 3 + ["reg"]
    assert doc["opened"][-1]["path"] == str(tmp_path / "leaked.txt")
    assert doc["closed"] == doc["changed"] == doc["tasks_added"] == doc["tasks_removed"] == []

    text = asyckpt("diff", str(a), str(b))
    assert text.returncode == 1
    assert text.stdout.splitlines() == [
        *(f"+ pid {o['pid']} fd {o['fd']}: {o['type']} {o['path']}" for o in doc["opened"]),
        "summary: 4 fds opened",
    ]

    same = asyckpt("diff", str(a), str(a))
    assert (same.returncode, same.stdout, same.stderr) == (0, "", "")
    same_json = json.loads(asyckpt("diff", str(b), str(b), "--json").stdout)
    assert all(same_json[k] == [] for k in ("tasks_added", "tasks_removed", "opened", "closed"))
    assert same_json["changed"] == []


def test_diff_counts_a_new_listener_and_connection(leaker: Tree, tmp_path: Path) -> None:
    a, b = tmp_path / "a.ackpt", tmp_path / "b.ackpt"
    assert asyckpt("tree", str(leaker.pid), "-o", str(a), "-q").returncode == 0
    opened = leak(leaker, "serve")
    assert asyckpt("tree", str(leaker.pid), "-o", str(b), "-q").returncode == 0
    proc = asyckpt("diff", str(a), str(b), "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert [o["fd"] for o in doc["opened"]] == opened
    summary = doc["summary"]
    # the listener; both ends of the connected pair (both held by the child)
    assert (summary["listeners"], summary["connections"]) == (1, 2)
    text = asyckpt("diff", str(a), str(b)).stdout.splitlines()[-1]
    assert text == "summary: 3 fds opened, 1 new listeners, 2 new connections"


def test_diff_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an image\n")
    for argv, code in [
        ((str(junk), str(junk)), 6),
        ((str(tmp_path / "missing"), str(junk)), 6),
        ((str(junk),), 2),
    ]:
        proc = asyckpt("diff", *argv)
        assert proc.returncode == code, proc.stderr
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("asyckpt: error: ")
        assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == ["junk"]
