"""The pipe handler on a real tree (pipes_tree.py), through the command line as a user
runs it: every field against what the tree set up, with and without ``--pipe-data``,
and the reader still reads everything afterwards.  The tree is killed by process group
after each test, and no cgroup of a capture may be left."""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

HERE = Path(__file__).resolve().parent
ASYCKPT = [sys.executable, "-m", "asyckpt"]
CGROUP_ROOTS = ("/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")


class Tree(NamedTuple):
    proc: subprocess.Popen[str]
    info: dict[str, Any]
    outside_r: int
    tmp: Path

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        assert line, "pipes_tree.py said nothing"
        out: dict[str, Any] = json.loads(line)
        return out

    def capture(self, *args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
        image = str(self.tmp / "p.ackpt")
        run = subprocess.run(
            [*ASYCKPT, "tree", str(self.proc.pid), "-o", image, "--force", *args],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        assert not [p for b in CGROUP_ROOTS for p in Path(b).glob(f"asyckpt-*-{self.proc.pid}")]
        show = subprocess.run([*ASYCKPT, "show", image, "--json"], capture_output=True, text=True)
        assert show.returncode == 0, show.stderr
        return json.loads(show.stdout), run


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    outside_r, outside_w = os.pipe()  # the test keeps the read end
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "pipes_tree.py"), str(tmp_path), str(outside_w)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=(outside_w,),
    )
    try:
        os.close(outside_w)
        t = Tree(proc, {}, outside_r, tmp_path)
        yield t._replace(info=t.line())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        os.close(outside_r)


def by_fd(doc: dict[str, Any], pid: int) -> dict[int, dict[str, Any]]:
    files = {f["id"]: f for f in doc["files"]}
    task = next(t for t in doc["tasks"] if t["pid"] == pid)
    return {fd["fd"]: files[fd["file"]] for fd in task["fds"]}


def pipe(doc: dict[str, Any], pid: int, fd: int) -> dict[str, Any]:
    f = by_fd(doc, pid)[fd]
    assert f["handler"] == "pipes", f
    assert f["ino"] == f["data"]["ino"]
    data: dict[str, Any] = f["data"]
    return data


def test_pipes_and_fifos_without_their_data(tree: Tree) -> None:
    doc, run = tree.capture()
    assert "recorded generically" not in run.stderr
    info, root, child = tree.info, tree.info["root"], tree.info["child"]
    pid, cpid = info["pid"], info["child_pid"]
    # Both ends of the pipe between parent and child: one pipe inode, two descriptions.
    w = pipe(doc, pid, root["pipe_w"])
    r = pipe(doc, cpid, child["pipe_r"])
    common = {
        "kind": "asyckpt.pipe",
        "ino": child["pipe_ino"],
        "capacity": 131072,
        "queued": 10,
        # Without --pipe-data nothing is copied.
        "content": None,
        "content_truncated": False,
        "packets": None,
    }
    assert w == {**common, "end": "write", "packet_mode": False}
    assert r == {**common, "end": "read", "packet_mode": False}
    assert by_fd(doc, pid)[root["pipe_w"]]["id"] != by_fd(doc, cpid)[child["pipe_r"]]["id"]

    pkt = pipe(doc, pid, root["pkt_r"])
    assert pkt == {
        "kind": "asyckpt.pipe",
        "ino": root["pkt_ino"],
        "end": "read",
        "capacity": 65536,
        "queued": 5,  # b"ab" + b"cde"
        # pipe2(O_DIRECT) sets it on the write end only: writes make packets, and the
        # read end reads them one by one from their buffers.
        "packet_mode": False,
        "content": None,
        "content_truncated": False,
        "packets": None,
    }
    pkt_w = pipe(doc, pid, root["pkt_w"])
    assert (pkt_w["end"], pkt_w["packet_mode"], pkt_w["ino"]) == ("write", True, root["pkt_ino"])

    # The FIFO: its path, not unlinked; two read descriptions and a write one.
    fifo_w = by_fd(doc, pid)[root["fifo_w"]]
    assert (fifo_w["type"], fifo_w["path"], fifo_w["deleted"]) == ("fifo", root["fifo_path"], False)
    for holder, fd, end in (
        (pid, root["fifo_w"], "write"),
        (pid, root["fifo_r2"], "read"),
        (cpid, child["fifo_r"], "read"),
    ):
        rec = pipe(doc, holder, fd)
        assert (rec["ino"], rec["end"], rec["queued"]) == (root["fifo_ino"], end, 9)

    gone = by_fd(doc, pid)[root["gone_rw"]]
    assert (gone["type"], gone["path"], gone["deleted"]) == ("fifo", root["gone_path"], True)
    assert gone["data"]["end"] == "read-write"
    assert gone["data"]["queued"] == 100

    big = pipe(doc, pid, root["big_r"])
    assert (big["capacity"], big["queued"]) == (1 << 20, 200_000)
    assert by_fd(doc, pid)[root["big_r"]]["flags"] & os.O_NONBLOCK

    out = pipe(doc, pid, root["outside_w"])
    assert (out["end"], out["queued"]) == ("write", 6)
    assert all(f["data"]["content"] is None for f in doc["files"] if f["handler"] == "pipes")
    assert all(f["data"]["packets"] is None for f in doc["files"] if f["handler"] == "pipes")

    # The packet-mode pipe from the child: its write end (the child's) is O_DIRECT.
    from_child = pipe(doc, cpid, child["packets_w"])
    assert (from_child["end"], from_child["packet_mode"]) == ("write", True)
    assert from_child["ino"] == root["from_child_ino"]
    to_root = pipe(doc, pid, root["from_child_r"])
    assert (to_root["end"], to_root["queued"]) == ("read", 1 + 300 + 4096 + 7000 + 17)


def test_pipe_data_copies_the_queue_and_leaves_it_for_the_reader(tree: Tree) -> None:
    doc, _ = tree.capture("--pipe-data", "64K")
    info, root, child, written = (
        tree.info,
        tree.info["root"],
        tree.info["child"],
        tree.info["written"],
    )
    pid, cpid = info["pid"], info["child_pid"]

    def content(holder: int, fd: int) -> bytes | None:
        rendered = by_fd(doc, holder)[fd]["rendered"]
        if rendered.get("content") is None:
            return None
        assert rendered["content_encoding"] == "utf-8"
        return bytes(rendered["content"], "utf-8")

    assert content(cpid, child["pipe_r"]) == bytes.fromhex(written["pipe"])
    assert pipe(doc, cpid, child["pipe_r"])["packets"] is None  # a plain byte stream
    assert content(pid, root["pipe_w"]) is None  # tee reads from a read end only
    assert content(pid, root["pkt_r"]) == b"abcde"
    assert pipe(doc, pid, root["pkt_r"])["packets"] == [2, 3]  # b"ab", b"cde"
    # The child's packets of 1, 300, 4096, 7000 and 17 bytes, the 7000 as the kernel
    # split them (one page per packet), and every byte of them.
    from_child = pipe(doc, pid, root["from_child_r"])
    assert from_child["packets"] == [1, 300, 4096, 4096, 2904, 17]
    packets = [bytes.fromhex(p) for p in written["from_child"]]
    assert base64.b64decode(from_child["content"]) == b"".join(packets)
    # One FIFO, two read descriptions: copied once, on the first the capture met (the
    # root comes first in the tree).
    assert content(pid, root["fifo_r2"]) == b"fifo data"
    assert content(cpid, child["fifo_r"]) is None
    assert content(pid, root["gone_rw"]) == b"x" * 100
    big = by_fd(doc, pid)[root["big_r"]]
    assert big["rendered"]["content_encoding"] == "base64"  # not text
    assert big["data"]["content_truncated"] is True
    assert big["data"]["packets"] is None
    assert base64.b64decode(big["data"]["content"]) == bytes.fromhex(written["big"])[: 64 << 10]
    assert content(pid, root["outside_w"]) is None  # the read end is the test's
    assert os.read(tree.outside_r, 100) == b"gone!\n"

    # Nothing was consumed: the child reads what the root wrote.
    os.kill(cpid, signal.SIGUSR1)
    drained = tree.line()
    assert bytes.fromhex(drained["pipe"]) == bytes.fromhex(written["pipe"])
    assert bytes.fromhex(drained["fifo"]) == bytes.fromhex(written["fifo"])
    # And the root reads the child's packets one by one, as they were written.
    os.kill(pid, signal.SIGUSR2)
    read = [bytes.fromhex(p) for p in tree.line()["packets"]]
    assert [len(p) for p in read] == [1, 300, 4096, 4096, 2904, 17]
    assert b"".join(read) == b"".join(packets)


def test_endpoints_pair_the_ends_across_tasks(tree: Tree) -> None:
    tree.capture()
    image = str(tree.tmp / "p.ackpt")
    info, root, child = tree.info, tree.info["root"], tree.info["child"]
    doc = json.loads(
        subprocess.run(
            [*ASYCKPT, "show", image, "--json", "--endpoints"], capture_output=True, text=True
        ).stdout
    )
    eps = {e["name"]: e for e in doc["endpoints"]}
    between = eps[f"pipe:[{child['pipe_ino']}]"]
    assert [(e["role"], [(h["pid"], h["fd"]) for h in e["fds"]]) for e in between["ends"]] == [
        ("write", [(info["pid"], root["pipe_w"])]),
        ("read", [(info["child_pid"], child["pipe_r"])]),
    ]
    fifo = eps[root["fifo_path"]]
    assert fifo["kind"] == "fifo"
    assert sorted(e["role"] for e in fifo["ends"]) == ["read", "read", "write"]
    outside = next(
        e
        for e in eps.values()
        if any(
            x["fds"] == [{"pid": info["pid"], "tid": info["pid"], "fd": root["outside_w"]}]
            for x in e["ends"]
        )
    )
    assert [(e["role"], e["outside"]) for e in outside["ends"]] == [
        ("write", False),
        ("read", True),
    ]
    assert eps[root["gone_path"]]["label"] == f"FIFO, ino {root['gone_ino']}, unlinked"

    # The same without the plugin: endpoints need only what the core records.
    text = subprocess.run(
        [*ASYCKPT, "show", image, "--endpoints", "--disable-plugin", "pipes"],
        capture_output=True,
        text=True,
    ).stdout
    assert f"pipe pipe:[{child['pipe_ino']}]" in text
    comm = Path(f"/proc/{info['child_pid']}/comm").read_text().strip()
    assert f"{comm} {info['child_pid']} fd {child['pipe_r']}r" in text
    assert "! outside the tree (or closed)" in text
