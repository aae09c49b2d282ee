"""``show --endpoints`` (pure: a literal image, linked by the core's own fields and by
raw record fields, no plugin needed) and the ``--pipe-data`` option (its pure parser
on literal input, the command's errors, and what reaches the handlers)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions, read_image
from asyckpt._cli import PIPE_DATA_MAX, _size
from asyckpt._endpoints import endpoints, render_endpoints
from asyckpt._image import ImageWriter
from asyckpt._records import (
    FORMAT_VERSION,
    NO_DATA,
    Fd,
    FdTable,
    File,
    Header,
    Task,
    Thread,
    Trailer,
)

from .conftest import Tree

ASYCKPT = [sys.executable, "-m", "asyckpt"]
OWN_HANDLERS = {**os.environ, "ASYCKPT_DISABLE_PLUGIN_AUTOLOAD": "1"}


def file(fid: int, kind: str, ino: int, access: str = "rw", **extra: Any) -> File:
    data = extra.pop("data", None)
    return File(
        id=fid,
        type=kind,
        handler="x" if data is not None else None,
        flags={"r": 0, "w": 1, "rw": 2}[access],
        access=access,
        pos=0,
        mnt_id=1,
        dev=extra.pop("dev", 12 if kind == "pipe" else 8),
        ino=ino,
        path=extra.pop("path", f"{kind}:[{ino}]"),
        st_mode=stat.S_IFSOCK if kind == "socket" else stat.S_IFIFO,
        data=NO_DATA if data is None else msgspec.Raw(msgspec.msgpack.encode(data)),
        **extra,
    )


def sock(fid: int, ino: int, **fields: Any) -> File:
    return file(fid, "socket", ino, data={"kind": "x.sock", "family": "unix", **fields})


def literal_image(tmp_path: Path) -> asyckpt.Image:
    """Two tasks: 100 (fds 3-9) and its child 101 (fds 3-5), sharing nothing but what
    fork would, and a thread 102 of 101 with a table of its own (fd 7)."""
    files = [
        file(1, "pipe", 500, "w"),  # 100:3, 101:3  -> read end in 101:4
        file(2, "pipe", 500, "r"),
        file(3, "pipe", 501, "r"),  # no write end in the tree
        sock(4, 600, type="stream", peer_ino=601),  # 100:5 <-> 101:5
        sock(5, 601, type="stream", peer_ino=600),
        sock(6, 602, type="dgram", peer_ino=699),  # 100:6, peer outside
        sock(7, 603, type="stream", pending=[604, 650]),  # listener 100:7
        sock(8, 604, type="stream"),  # a client waiting on it: 102:7
        sock(9, 605),  # no peer: not an endpoint
        file(10, "fifo", 700, "rw", path="/run/q", deleted=True, dev=20),  # 100:9
    ]
    tables = {
        1: [(3, 1), (5, 4), (6, 6), (7, 7), (8, 9), (9, 10), (10, 3)],
        2: [(3, 1), (4, 2), (5, 5)],
        3: [(7, 8)],
    }
    body: list[msgspec.Struct] = []
    written: set[int] = set()
    for tid, owner in ((1, 100), (2, 101), (3, 102)):
        body.append(FdTable(id=tid, owner=owner, count=len(tables[tid])))
        for fd, fid in tables[tid]:
            if fid not in written:
                body.append(files[fid - 1])
                written.add(fid)
            body.append(Fd(fd=fd, file=fid, cloexec=False))
        if tid == 1:
            body.append(
                Task(
                    pid=100,
                    ppid=1,
                    comm="srv",
                    starttime=1,
                    state="S",
                    uid=0,
                    gid=0,
                    fd_table=1,
                    threads=[Thread(tid=100, fd_table=1)],
                )
            )
    body.append(
        Task(
            pid=101,
            ppid=100,
            comm="cli",
            starttime=2,
            state="S",
            uid=0,
            gid=0,
            fd_table=2,
            threads=[Thread(tid=101, fd_table=2), Thread(tid=102, fd_table=3)],
        )
    )
    header = Header(
        format_version=FORMAT_VERSION,
        asyckpt_version="t",
        kernel="k",
        machine="m",
        hostname="h",
        time="t",
        root_pid=100,
        freezer="none",
        consistent=False,
    )
    writer = ImageWriter(tmp_path / "e.ackpt", force=True)
    writer.write_body(body)
    writer.finish(header, Trailer(tasks=2, fd_tables=3, fds=11, files=10, records=0))
    return read_image(tmp_path / "e.ackpt")


def test_endpoints_of_a_literal_image(tmp_path: Path) -> None:
    eps = [e.to_json() for e in endpoints(literal_image(tmp_path))]

    def ends(e: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (
                x["role"],
                x["ino"],
                x["file"],
                [(h["pid"], h["tid"], h["fd"]) for h in x["fds"]],
                x["outside"],
                x["pending_on"],
            )
            for x in e["ends"]
        ]

    assert [(e["kind"], e["name"], e["label"]) for e in eps] == [
        ("pipe", "pipe:[500]", ""),
        ("pipe", "pipe:[501]", ""),
        ("socket", "socket:[600] <-> socket:[601]", "unix stream"),
        ("socket", "socket:[602] <-> socket:[699]", "unix dgram"),
        ("socket", "socket:[650] -> listener socket:[603]", "unix stream"),
        ("socket", "socket:[604] -> listener socket:[603]", "unix stream"),
        ("fifo", "/run/q", "FIFO, ino 700, unlinked"),
    ]
    assert ends(eps[0]) == [
        ("write", 500, 1, [(100, 100, 3), (101, 101, 3)], False, None),
        ("read", 500, 2, [(101, 101, 4)], False, None),
    ]
    assert ends(eps[1]) == [
        ("read", 501, 3, [(100, 100, 10)], False, None),
        ("write", 501, None, [], True, None),
    ]
    assert ends(eps[2]) == [
        ("socket", 600, 4, [(100, 100, 5)], False, None),
        ("socket", 601, 5, [(101, 101, 5)], False, None),
    ]
    assert ends(eps[3])[1] == ("socket", 699, None, [], True, None)
    # A client outside the tree waiting on the listener, and one in it (a thread's table).
    assert ends(eps[4]) == [
        ("socket", 650, None, [], True, None),
        ("socket", 0, None, [], False, 7),
    ]
    assert ends(eps[5]) == [
        ("socket", 604, 8, [(101, 102, 7)], False, None),
        ("socket", 0, None, [], False, 7),
    ]
    assert ends(eps[6]) == [("read-write", 700, 10, [(100, 100, 9)], False, None)]

    text = render_endpoints(literal_image(tmp_path))
    assert text.splitlines()[0] == (
        "pipes: 2, FIFOs: 1, connections: 4; with an end outside the tree (!): 3"
    )
    assert "  write                  srv 100 fd 3w, cli 101 fd 3w (file 1)" in text
    assert "  socket:[604]           cli 101/102 fd 7u (file 8)" in text
    assert (
        "  peer                   pending on listener socket:[603] (file 7), not accepted" in text
    )


def test_endpoints_of_a_capture_without_plugins(zoo: Tree, tmp_path: Path) -> None:
    image = str(tmp_path / "z.ackpt")
    proc = subprocess.run(
        [*ASYCKPT, "tree", str(zoo.pid), "-o", image],
        capture_output=True,
        text=True,
        env=OWN_HANDLERS,
    )
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run(
        [*ASYCKPT, "show", image, "--endpoints", "--json"],
        capture_output=True,
        text=True,
        env=OWN_HANDLERS,
    )
    doc = json.loads(out.stdout)
    info = zoo.info
    pipe_ino = os.stat(f"/proc/{info['pid']}/fd/{info['pipe_r']}").st_ino
    pipe = next(e for e in doc["endpoints"] if e["name"] == f"pipe:[{pipe_ino}]")
    holders = {
        e["role"]: sorted((h["pid"], h["tid"], h["fd"]) for h in e["fds"]) for e in pipe["ends"]
    }
    # The root, its CLONE_FILES sibling (one table), the fork child, and the root's
    # thread that unshared its table (a copy, so with the pipe) hold both ends.
    tables = sorted(
        [(p, p) for p in (info["pid"], info["clone"], info["fork"])]
        + [(info["pid"], info["thread_unshared"])]
    )
    assert holders == {
        "read": [(p, t, info["pipe_r"]) for p, t in tables],
        "write": [(p, t, info["pipe_w"]) for p, t in tables],
    }
    assert not any(e["outside"] for e in pipe["ends"])
    # Sockets without their handler have no peer to link: no connections.
    assert not [e for e in doc["endpoints"] if e["kind"] == "socket"]
    table = subprocess.run(
        [*ASYCKPT, "show", image, "--endpoints"], capture_output=True, text=True
    ).stdout
    assert f"pipe pipe:[{pipe_ino}]" in table


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1", 1),
        ("4096", 4096),
        ("64k", 65536),
        ("64K", 65536),
        ("1M", 1 << 20),
        ("64M", 64 << 20),
        (str(64 << 20), 64 << 20),
    ],
)
def test_pipe_data_sizes(text: str, size: int) -> None:
    assert _size(text) == size


@pytest.mark.parametrize(
    "text", ["", "-1", "1.5", "64MB", "65M", "k", "1G", " 1", "0x10", str((64 << 20) + 1)]
)
def test_pipe_data_sizes_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size from 0 to 64M"):
        _size(text)


def test_pipe_data_bound_and_errors(zoo: Tree, tmp_path: Path) -> None:
    from asyckpt._capture import PIPE_DATA_MAX as CAPTURE_MAX

    assert PIPE_DATA_MAX == CAPTURE_MAX
    with pytest.raises(ValueError, match="pipe_data must be between 0 and"):
        CaptureOptions(pipe_data=PIPE_DATA_MAX + 1)
    proc = subprocess.run(
        [*ASYCKPT, "tree", str(zoo.pid), "-o", str(tmp_path / "x"), "--pipe-data", "1G"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "asyckpt: error: argument --pipe-data: '1G' is not a size from 0 to 64M "
        "(bytes, or with a K or M suffix) (see 'asyckpt tree --help')"
    ]
    assert list(tmp_path.iterdir()) == []


class Seen(msgspec.Struct, tag="test.seen", tag_field="kind"):
    pipe_data: int


class SeePipeData:
    name = "seepipedata"
    kinds = frozenset({"pipe"})
    record_type = Seen

    def capture(self, facts: asyckpt.FdFacts, ctx: asyckpt.HandlerContext) -> Seen:
        return Seen(ctx.session.pipe_data)


@pytest.mark.parametrize("size", [0, 1 << 20])
def test_pipe_data_reaches_the_handlers(size: int, zoo: Tree, tmp_path: Path) -> None:
    from asyckpt.testing import dispatch_with

    dispatch = dispatch_with(SeePipeData)
    trio.run(
        lambda: asyckpt.checkpoint_tree(
            zoo.pid, tmp_path / "p.ackpt", options=CaptureOptions(pipe_data=size), dispatch=dispatch
        )
    )
    image = read_image(tmp_path / "p.ackpt")
    seen = {
        msgspec.msgpack.decode(f.data, type=Seen).pipe_data
        for f in image.files.values()
        if f.handler == "seepipedata"
    }
    assert seen == {size}
