"""``asyckpt graph``: what is drawn (pure, on literal images and on real captures),
checked against the image's own sharing; the DOT text (quoting hostile names, and
Graphviz reading it back when installed); the command's errors and exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

import asyckpt
from asyckpt import read_image
from asyckpt._escape import escape
from asyckpt._graph import (
    AUTO_SHARED_OBJECTS,
    AUTO_SHARED_TASKS,
    Graph,
    GraphOptions,
    build_graph,
    to_dot,
)
from asyckpt._graph_cmd import output_format, parse_kinds
from asyckpt._image import ImageWriter
from asyckpt._records import FORMAT_VERSION, NO_DATA, Fd, FdTable, File, Header, Task, Trailer

from .conftest import SPAWN_TREE, Tree
from .test_endpoints import literal_image

ASYCKPT = [sys.executable, "-m", "asyckpt"]
DOT = shutil.which("dot")
needs_dot = pytest.mark.skipif(DOT is None, reason="Graphviz's dot is not installed")

# --- checking a graph against the image it was drawn from ------------------------------


def image_fds(image: asyckpt.Image) -> dict[int, list[tuple[int, int, File]]]:
    """pid -> (tid, fd, file) of every fd the task's tables hold, read from the image
    directly (not through the code under test)."""
    out: dict[int, list[tuple[int, int, File]]] = {}
    for task in image.tasks:
        tables = {task.fd_table: task.pid}
        for th in task.threads:
            tables.setdefault(th.fd_table, th.tid)
        for table, tid in tables.items():
            if table is None:
                continue
            for fd in image.fd_tables[table]:
                out.setdefault(task.pid, []).append((tid, fd.fd, image.files[fd.file]))
    return out


def fd_text(tid: int, pid: int, fd: int, f: File) -> str:
    mode = {"r": "r", "w": "w", "rw": "u", "path": "p"}[f.access]
    return f"{fd}{mode}" if tid == pid else f"{tid}/{fd}{mode}"


def check_graph(image: asyckpt.Image, graph: Graph) -> None:
    """Every task once; every description held by several tasks in exactly one object;
    the two ends of a pipe and of a socket pair in one object; each task/object edge
    labelled with exactly that task's fds on it; every other fd counted in its task."""
    fds = image_fds(image)
    assert Counter(t.pid for t in graph.tasks) == Counter(t.pid for t in image.tasks)
    objects = [o for o in graph.objects if not o.outside]
    owner = Counter(fid for o in objects for fid in o.files)
    assert all(n == 1 for n in owner.values()), "a file drawn in two objects"
    object_of = {fid: o for o in objects for fid in o.files}
    holders: dict[int, set[int]] = {}
    for pid, items in fds.items():
        for _, _, f in items:
            holders.setdefault(f.id, set()).add(pid)
    for fid, pids in holders.items():
        if len(pids) > 1:
            assert fid in object_of, f"shared file {fid} not drawn"
    pipes: dict[tuple[int, int], set[str]] = {}
    for f in image.files.values():
        if f.type in ("pipe", "fifo") and f.id in object_of:
            pipes.setdefault((f.dev, f.ino), set()).add(object_of[f.id].id)
    assert all(len(ids) == 1 for ids in pipes.values()), "a pipe's ends in two objects"
    ids = [t.id for t in graph.tasks] + [o.id for o in graph.objects]
    assert len(ids) == len(set(ids))
    fd_edges = {(e.tail, e.head): e for e in graph.edges if e.kind == "fd"}
    assert len(fd_edges) == sum(1 for e in graph.edges if e.kind == "fd"), "edges not grouped"
    node_ids = set(ids)
    assert all(e.tail in node_ids and e.head in node_ids for e in graph.edges)
    for task in graph.tasks:
        expected: dict[str, list[tuple[int, int, File]]] = {}
        private = set()
        for tid, fd, f in fds.get(task.pid, []):
            if f.id in object_of:
                expected.setdefault(object_of[f.id].id, []).append((tid, fd, f))
            else:
                private.add(f.id)
        drawn = {head: e for (tail, head), e in fd_edges.items() if tail == task.id}
        assert set(drawn) == set(expected), f"task {task.pid}'s edges"
        for head, items in expected.items():
            texts = [fd_text(tid, task.pid, fd, f) for tid, fd, f in sorted(items, key=_key)]
            label = " ".join(texts) if len(texts) <= 6 else drawn[head].label
            assert drawn[head].label == label
            assert drawn[head].label.split()[0] == texts[0]
        # One row per private open file description, listed or counted.
        assert len(task.rows) + task.unlisted == len(private), f"task {task.pid}'s rows"


def _key(item: tuple[int, int, File]) -> tuple[int, int]:
    return item[0], item[1]


# --- DOT read back: statements, and Graphviz's own reading --------------------------------

_NODE = re.compile(r"^  (\w+) \[", re.M)
_EDGE = re.compile(r"^  (\w+) -> (\w+) \[", re.M)
_QUOTED = re.compile(r'label="((?:[^"\\]|\\.)*)"')


def dot_nodes(dot: str) -> Counter[str]:
    body = dot.split("subgraph cluster_legend")[0]
    found = Counter(m.group(1) for m in _NODE.finditer(body))
    for word in ("graph", "node", "edge"):  # default attributes, not nodes
        found.pop(word)
    return found


def graphviz_json(dot: str) -> dict[str, Any]:
    assert DOT is not None
    proc = subprocess.run(
        [DOT, "-Tjson0"], input=dot.encode(), capture_output=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert not proc.stderr, proc.stderr.decode()  # no warning either
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def check_dot(graph: Graph) -> str:
    dot = to_dot(graph)
    nodes = dot_nodes(dot)
    assert all(n == 1 for n in nodes.values())
    assert set(nodes) == {t.id for t in graph.tasks} | {o.id for o in graph.objects}
    body = dot.split("subgraph cluster_legend")[0]
    assert len(_EDGE.findall(body)) == len(graph.edges)
    if DOT is not None:
        doc = graphviz_json(dot)
        names = [o["name"] for o in doc.get("objects", []) if "nodes" not in o]
        drawn = [n for n in names if not n.startswith("legend_")]
        assert sorted(drawn) == sorted(nodes)
        subprocess.run([DOT, "-Tcanon"], input=dot.encode(), capture_output=True, check=True)
    return dot


# --- literal images ------------------------------------------------------------------------


def test_literal_image_every_task_and_object_once(tmp_path: Path) -> None:
    image = literal_image(tmp_path)
    graph = build_graph(image, GraphOptions(shared_only=False))
    check_graph(image, graph)
    check_dot(graph)
    objects = {o.id: o for o in graph.objects}
    # pipe 500 (files 1, 2) and socket pair 600/601 (4, 5) are shared by 100 and 101;
    # pipe 501 and socket 602 reach outside; 604 waits on listener 603 (file 7).
    assert sorted(objects) == ["o1", "o3", "o3x1", "o4", "o6", "o6x1", "o7", "o8"]
    assert objects["o1"].files == (1, 2)
    assert objects["o4"].files == (4, 5)
    assert objects["o3x1"].outside and objects["o3x1"].title.startswith("write end")
    assert objects["o6x1"].name == "socket:[699]"
    edges = {(e.tail, e.head): e for e in graph.edges}
    assert edges["t100", "t101"].kind == "tree"
    # Data flows into the pipe from 100's write end, and both ways for 101 (3w and 4r).
    assert (edges["t100", "o1"].label, edges["t100", "o1"].dir) == ("3w", "forward")
    assert (edges["t101", "o1"].label, edges["t101", "o1"].dir) == ("3w 4r", "both")
    assert (edges["t100", "o3"].label, edges["t100", "o3"].dir) == ("10r", "back")
    assert edges["t101", "o8"].label == "102/7u"  # the thread's own table
    assert edges["o8", "o7"].kind == "pending"
    assert objects["o4"].same_fds == "5u"
    rows = {t.pid: t.rows for t in graph.tasks}
    assert rows == {100: ("8u  socket:[605]", "9u  /run/q (deleted)"), 101: ()}


def test_literal_image_shared_only(tmp_path: Path) -> None:
    image = literal_image(tmp_path)
    graph = build_graph(image, GraphOptions(shared_only=True))
    check_graph(image, graph)
    check_dot(graph)
    assert [o.id for o in graph.objects] == ["o1", "o4"]
    assert {t.pid: (t.rows, t.unlisted) for t in graph.tasks} == {100: ((), 5), 101: ((), 1)}


def test_kinds_and_pid(tmp_path: Path) -> None:
    image = literal_image(tmp_path)
    graph = build_graph(image, GraphOptions(kinds=frozenset({"pipe"}), shared_only=False))
    check_dot(graph)
    assert {o.kind for o in graph.objects} == {"pipe"}
    sub = build_graph(image, GraphOptions(pid=101, shared_only=False))
    check_dot(sub)
    assert [t.pid for t in sub.tasks] == [101]
    assert not [e for e in sub.edges if e.kind == "tree"]
    # Shared with a task not drawn: still an object, saying so.
    assert "also 1 task(s) not drawn" in {o.id: o for o in sub.objects}["o1"].title
    with pytest.raises(ValueError, match="no task 7"):
        build_graph(image, GraphOptions(pid=7))


def write_image(path: Path, tasks: list[tuple[int, int, str, list[tuple[int, File]]]]) -> Path:
    """A literal image: tasks (pid, ppid, comm, [(fd, file)]), each with its own table."""
    body: list[msgspec.Struct] = []
    written: set[int] = set()
    nfds = 0
    for n, (pid, ppid, comm, fds) in enumerate(tasks, 1):
        body.append(FdTable(id=n, owner=pid, count=len(fds)))
        for fd, f in sorted(fds, key=lambda pair: pair[0]):  # the format: ascending fds
            if f.id not in written:
                body.append(f)
                written.add(f.id)
            body.append(Fd(fd=fd, file=f.id, cloexec=False))
        nfds += len(fds)
        body.append(
            Task(pid=pid, ppid=ppid, comm=comm, starttime=n, state="S", uid=0, gid=0, fd_table=n)
        )
    header = Header(
        format_version=FORMAT_VERSION,
        asyckpt_version="t",
        kernel="k",
        machine="m",
        hostname='host"\n}',
        time="t",
        root_pid=tasks[0][0],
        freezer="none",
        consistent=False,
    )
    writer = ImageWriter(path, force=True)
    writer.write_body(body)
    trailer = Trailer(
        tasks=len(tasks), fd_tables=len(tasks), fds=nfds, files=len(written), records=0
    )
    writer.finish(header, trailer)
    return path


def reg(fid: int, path: str) -> File:
    return File(
        id=fid,
        type="reg",
        handler=None,
        flags=2,
        access="rw",
        pos=0,
        mnt_id=1,
        dev=8,
        ino=1000 + fid,
        path=path,
        st_mode=stat.S_IFREG | 0o644,
        data=NO_DATA,
    )


HOSTILE = 'a"b\\c\nd}{|<x> \\l \\N\u202e\x1b[31m'
HOSTILE_COMM = 'a"b\\c\n}{|<\x1b>'


def test_hostile_names_are_escaped_and_quoted(tmp_path: Path) -> None:
    shared = reg(1, "/tmp/" + HOSTILE)
    private = reg(2, HOSTILE + "/private")
    path = write_image(
        tmp_path / "h.ackpt",
        [
            (10, 1, HOSTILE_COMM, [(3, shared), (4, private)]),
            (11, 10, HOSTILE_COMM, [(3, shared)]),
        ],
    )
    graph = build_graph(read_image(path), GraphOptions(shared_only=False))
    dot = check_dot(graph)
    # Statements are one per line: no name can break a line, close a quote or open a
    # statement of its own.
    assert all(
        line.startswith(("  ", "digraph", "}")) or line.startswith("         ")
        for line in dot.splitlines()
    )
    labels = [_unquote(m.group(1)) for m in _QUOTED.finditer(dot)]
    assert not any("\x1b" in label or "\u202e" in label for label in labels)
    want = escape(HOSTILE_COMM)
    assert any(label.startswith(want) for label in labels)  # the task's box
    assert any(escape("/tmp/" + HOSTILE) in label for label in labels)
    assert any(escape(HOSTILE + "/private") in label for label in labels)  # a row
    if DOT is not None:
        doc = graphviz_json(dot)
        drawn = {o["name"]: o["label"] for o in doc["objects"] if "label" in o}
        # Graphviz shows the escaped name as it is: its backslashes and quotes are text.
        assert drawn["t10"].startswith(want.replace("\\", "\\\\"))


def test_negative_ids_never_reach_the_graph(tmp_path: Path) -> None:
    # An image is input, but the reader bounds pids and ids (docs/image-format.md, "What a
    # reader checks"): an image with a negative one is refused before anything draws it.
    shared = reg(-4, "/x")
    path = write_image(
        tmp_path / "n.ackpt", [(-7, 1, "a", [(3, shared)]), (8, -7, "b", [(3, shared)])]
    )
    with pytest.raises(asyckpt.ImageCorrupt, match="Expected `int` >= "):
        read_image(path)


def _unquote(text: str) -> str:
    """A DOT quoted string's text: ``\\"`` is a quote; a doubled backslash one backslash
    (``\\l``, ``\\n`` between lines are left as they are)."""
    return re.sub(r'\\(["\\])', r"\1", text)


@pytest.mark.parametrize(
    ("ntasks", "nshared", "auto"),
    [
        (AUTO_SHARED_TASKS, 1, False),
        (AUTO_SHARED_TASKS + 1, 1, True),
        (2, AUTO_SHARED_OBJECTS, False),
        (2, AUTO_SHARED_OBJECTS + 1, True),
    ],
)
def test_shared_only_by_default_for_large_trees(
    tmp_path: Path, ntasks: int, nshared: int, auto: bool
) -> None:
    shared = [reg(i, f"/s{i}") for i in range(1, nshared + 1)]
    tasks = [
        (100 + n, 99 + n if n else 1, "t", [(3 + i, f) for i, f in enumerate(shared)])
        for n in range(ntasks)
    ]
    tasks[0][3].append((2, reg(nshared + 1, "/private")))
    image = read_image(write_image(tmp_path / "n.ackpt", tasks))
    graph = build_graph(image)
    assert graph.shared_only is auto
    check_graph(image, graph)
    assert ({t.pid: t.rows for t in graph.tasks}[100] == ()) is auto


# --- real captures -------------------------------------------------------------------------


def capture(pid: int, dest: Path) -> asyckpt.Image:
    proc = subprocess.run(
        [*ASYCKPT, "tree", str(pid), "-o", str(dest)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return read_image(dest)


def test_capture_with_inherited_pipes_and_socketpairs(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(SPAWN_TREE, "3", "6")
    image = capture(tree.pid, tmp_path / "t.ackpt")
    graph = build_graph(image, GraphOptions(shared_only=False))
    check_graph(image, graph)
    check_dot(graph)
    assert len(graph.tasks) == 4
    kinds = Counter(o.kind for o in graph.objects if not o.outside)
    # The root's pipe and socketpair (fill: i % 6 == 4, 5), inherited by its 3 children:
    # each one object, with its two ends, held by all 4 tasks.
    # (Not stdin, stdout or stderr: the test's own pipes.)
    inherited = [
        o
        for o in graph.objects
        if o.kind in ("pipe", "socket") and o.same_fds and int(o.same_fds.split()[0][:-1]) > 2
    ]
    assert {o.kind for o in inherited} == {"pipe", "socket"}, kinds
    for o in inherited:
        assert len(o.files) == 2
        assert sum(1 for e in graph.edges if e.head == o.id and e.kind == "fd") == 4
    # Each child's own pipe and socketpair are private: rows in its box.
    for t in graph.tasks:
        if t.pid != tree.pid:
            assert sum("pipe:[" in row for row in t.rows) == 2
            assert sum("socket:[" in row for row in t.rows) == 2


def test_capture_with_threads_and_shared_tables(zoo: Tree, tmp_path: Path) -> None:
    image = capture(zoo.pid, tmp_path / "z.ackpt")
    for shared_only in (False, True):
        graph = build_graph(image, GraphOptions(shared_only=shared_only))
        check_graph(image, graph)
        check_dot(graph)
    info = zoo.info
    # The thread with its own table holds the pipe too: its fds are named tid/fd.
    labels = [e.label for e in graph.edges if e.tail == f"t{info['pid']}"]
    assert any(f"{info['thread_unshared']}/{info['pipe_r']}r" in label for label in labels)


# --- the command ---------------------------------------------------------------------------


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ASYCKPT, "graph", *argv], capture_output=True, text=True, env=env, timeout=120
    )


def test_format_from_suffix_and_kinds() -> None:
    assert output_format(None, "x.PNG") == "png"
    assert output_format(None, "x.gv") == "dot"
    assert output_format(None, "x") == "svg"
    assert output_format("dot", "x.svg") == "dot"
    assert parse_kinds("pipe, socket") == frozenset({"pipe", "socket"})
    assert parse_kinds(None) is None
    with pytest.raises(asyckpt.AsyckptError, match="'tcp' is not a kind"):
        parse_kinds("pipe,tcp")


def test_cli_without_dot(tmp_path: Path) -> None:
    image = literal_image(tmp_path)
    del image
    out = tmp_path / "e.svg"
    env = {**os.environ, "PATH": str(tmp_path / "nothing-here")}
    proc = run(str(tmp_path / "e.ackpt"), "-o", str(out), env=env)
    assert proc.returncode == 11, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "apt-get install graphviz" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".e.svg*"))
    # DOT needs no Graphviz.
    proc = run(str(tmp_path / "e.ackpt"), "--format", "dot", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digraph asyckpt {")


def test_cli_errors(tmp_path: Path) -> None:
    literal_image(tmp_path)
    image = str(tmp_path / "e.ackpt")
    (tmp_path / "old.dot").write_text("mine")
    cases = [
        ((image, "-o", str(tmp_path / "old.dot")), 5, "exists; use --force"),
        ((image, "-o", str(tmp_path / "no" / "x.dot")), 5, "does not exist"),
        ((str(tmp_path / "old.dot"),), 6, "not an asyckpt image"),
        ((image, "--pid", "7"), 2, "no task 7"),
        ((image, "--kinds", "tcp"), 2, "'tcp' is not a kind"),
        ((image, "--format", "gif"), 2, "invalid choice"),
    ]
    for argv, code, text in cases:
        proc = run(*argv)
        assert (proc.returncode, proc.stderr.count("\n")) == (code, 1), (argv, proc.stderr)
        assert text in proc.stderr
        assert proc.stdout == ""
    assert (tmp_path / "old.dot").read_text() == "mine"
    proc = run(image, "-o", str(tmp_path / "old.dot"), "--force")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "old.dot").read_text().startswith("digraph asyckpt {")


def test_cli_no_png_to_a_terminal(tmp_path: Path) -> None:
    literal_image(tmp_path)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [*ASYCKPT, "graph", str(tmp_path / "e.ackpt"), "--format", "png"],
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert "a PNG is not for a terminal" in proc.stderr


@needs_dot
def test_cli_svg_and_png(tmp_path: Path) -> None:
    literal_image(tmp_path)
    image = str(tmp_path / "e.ackpt")
    proc = run(image, "-o", str(tmp_path / "e.svg"))
    assert proc.returncode == 0, proc.stderr
    svg = (tmp_path / "e.svg").read_text()
    assert "<svg" in svg and "pid 100" in svg
    proc = run(image, "-o", str(tmp_path / "e.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert stat.S_IMODE((tmp_path / "e.png").stat().st_mode) == 0o644
