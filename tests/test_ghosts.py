"""Unlinked files (ghosts), stale paths, /proc files and mount namespaces, on a real tree
(tests/workloads/ghosts.py): every field checked against what the tree set up."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions, Content, File, read_image

from .conftest import WORKLOADS, Tree, task_state
from .test_capture import capture, fds_of
from .test_cli import assert_one_line_error, run

MIB = 1 << 20


@pytest.fixture
def ghosts(spawn: Any) -> Tree:
    tree: Tree = spawn(WORKLOADS / "ghosts.py")
    return tree


def fdinfo_pos(pid: int, fd: int) -> int:
    for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("pos:"):
            return int(line.split()[1])
    raise AssertionError("no pos line")


def content_of(image: asyckpt.Image, f: File) -> bytes:
    """The file as the image holds it: its saved runs, zeros in the holes."""
    assert f.ghost == "saved" and f.ghost_file is not None
    out = bytearray(f.size)
    for c in image.contents.get(f.ghost_file, []):
        out[c.offset : c.offset + len(c.data)] = c.data
    return bytes(out)


def sparse_expected() -> bytes:
    data = bytearray(2 * MIB)
    data[0:5000] = b"A" * 5000
    data[MIB : MIB + 3000] = b"B" * 3000
    return bytes(data)


WATCHED = ("sparse", "sparse_again", "memfd", "wronly", "big")


def test_unlinked_files(ghosts: Tree, tmp_path: Path) -> None:
    info = ghosts.info
    pid = info["pid"]
    pos_before = {name: fdinfo_pos(pid, info[name]) for name in WATCHED}
    blocks = {name: os.stat(f"/proc/{pid}/fd/{info[name]}").st_blocks for name in WATCHED}
    summary = capture(ghosts, tmp_path / "g.ackpt")
    # Reading the content never moved the tasks' offsets (shared with the children).
    assert {name: fdinfo_pos(pid, info[name]) for name in WATCHED} == pos_before
    assert pos_before["sparse"] == 123 and pos_before["sparse_again"] == 7
    assert pos_before["memfd"] == 5

    image = read_image(tmp_path / "g.ackpt")
    assert image.header.format_version == asyckpt.FORMAT_VERSION
    fds = fds_of(image, pid)

    _, sparse = fds[info["sparse"]]
    assert (sparse.type, sparse.path, sparse.deleted, sparse.nlink) == (
        "reg",
        f"{info['workdir']}/sparse",
        True,
        0,
    )
    assert (sparse.ghost, sparse.ghost_file, sparse.path_state) == ("saved", sparse.id, "deleted")
    assert (sparse.pos, sparse.size, sparse.allocated) == (123, 2 * MIB, blocks["sparse"] * 512)
    assert content_of(image, sparse) == sparse_expected()
    runs = image.contents[sparse.id]
    # Holes are not stored: only the allocated blocks, nothing between the two runs.
    assert sum(len(c.data) for c in runs) <= sparse.allocated < 16 << 10
    assert all(c.offset + len(c.data) <= 64 << 10 or c.offset >= MIB for c in runs)
    assert [c.offset for c in runs] == sorted(c.offset for c in runs)

    # A dup is the same description; a second open() of the inode is another description,
    # whose content is the first one's (copied once).
    assert fds[info["sparse_dup"]][1].id == sparse.id
    _, again = fds[info["sparse_again"]]
    assert again.id != sparse.id and again.ino == sparse.ino and again.pos == 7
    assert (again.ghost, again.ghost_file) == ("saved", sparse.id)
    assert again.id not in image.contents

    _, big = fds[info["big"]]
    assert (big.ghost, big.ghost_file, big.path_state) == ("too-big", None, "deleted")
    assert big.allocated == blocks["big"] * 512 >= 3 * MIB and big.size == 3 * MIB
    assert big.id not in image.contents
    assert [(n.pid, n.fd, n.state) for n in summary.ghost_notes] == [(pid, info["big"], "too-big")]
    assert summary.ghost_notes[0].message() == (
        f"pid {pid} fd {info['big']}: unlinked file {info['workdir']}/big "
        f"({big.allocated / MIB:.0f} MiB allocated) exceeds --ghost-limit 1 MiB; not saved"
    )

    _, wronly = fds[info["wronly"]]
    assert wronly.access == "w" and wronly.ghost == "saved"
    assert content_of(image, wronly) == b"written, never readable by its owner"

    _, opath = fds[info["opath"]]
    assert (opath.access, opath.ghost, opath.path_state) == ("path", "saved", "deleted")
    assert content_of(image, opath) == b"held only by an O_PATH fd"

    _, memfd = fds[info["memfd"]]
    assert (memfd.path, memfd.deleted, memfd.path_state) == ("/memfd:ghost-test", True, "deleted")
    assert (memfd.ghost, memfd.pos, memfd.size) == ("saved", 5, 1000)
    assert content_of(image, memfd) == b"memfd-data" * 100

    # Renamed over: the old inode is unlinked, a ghost with the old content.
    _, renamed = fds[info["renamed_over"]]
    assert (renamed.path_state, renamed.ghost) == ("deleted", "saved")
    assert content_of(image, renamed) == b"old"

    # Unlinked while another hard link exists: reported, not a ghost.
    _, linked = fds[info["linked"]]
    assert (linked.path, linked.deleted, linked.nlink) == (f"{info['workdir']}/linked", True, 1)
    assert (linked.path_state, linked.ghost, linked.ghost_file) == ("deleted-linked", "none", None)

    assert fds[info["plain"]][1].path_state == "ok"
    assert fds[info["plain"]][1].ghost == "none"
    assert fds[info["live_proc"]][1].path == f"/proc/{info['proc_child']}/status"
    assert fds[info["live_proc"]][1].path_state == "ok"
    _, netns = fds[info["netns"]]
    assert (netns.path_state, netns.ghost) == ("none", "none")
    assert netns.path.startswith("net:[")
    if "ns" in {h.name for h in asyckpt.load_handlers().handlers}:  # plugins/devices
        assert netns.handler == "ns" and netns.error is None

    # Every saved inode once; the trailer counts agree with the summary.
    # (pytest's own capture file, unlinked, is the stderr the tree inherited.)
    saved = {(f.dev, f.ino) for f in image.files.values() if f.ghost == "saved"}
    assert summary.ghosts_saved == len(saved)
    assert set(image.contents) <= {f.id for f in image.files.values() if f.ghost_file == f.id}
    mine = [sparse, wronly, opath, memfd, renamed]
    assert {(f.dev, f.ino) for f in mine} <= saved and len(
        saved - {(f.dev, f.ino) for f in mine}
    ) <= 2
    assert image.trailer.contents == summary.contents == sum(map(len, image.contents.values()))
    assert image.trailer.content_bytes == summary.content_bytes
    assert all(len(c.data) <= MIB for cs in image.contents.values() for c in cs)


def test_proc_file_of_an_exited_process(ghosts: Tree, tmp_path: Path) -> None:
    info = ghosts.info
    capture(ghosts, tmp_path / "g.ackpt")
    image = read_image(tmp_path / "g.ackpt")
    _, f = fds_of(image, info["proc_child"])[info["proc_fd"]]
    assert not Path(f"/proc/{info['grandchild']}").exists()
    assert (f.type, f.path) == ("reg", f"/proc/{info['grandchild']}/status")
    # Not a ghost (procfs "content" is never copied), and said to be of an exited pid.
    assert (f.path_state, f.ghost, f.ghost_file) == ("proc-exited", "none", None)
    assert f.id not in image.contents


def test_private_mount_namespace(ghosts: Tree, tmp_path: Path) -> None:
    info = ghosts.info
    mnt = f"{info['workdir']}/mnt"
    capture(ghosts, tmp_path / "g.ackpt")
    image = read_image(tmp_path / "g.ackpt")
    root, child = image.tasks[0], next(t for t in image.tasks if t.pid == info["mntns_child"])
    assert child.mnt_ns != root.mnt_ns
    tables = {m.id: {e.mnt_id: e for e in m.mounts} for m in image.mounts}
    assert set(tables) == {root.mnt_ns, child.mnt_ns}
    fds = fds_of(image, child.pid)

    # From our namespace the path is an empty directory: only the task's view has it.
    assert not os.path.exists(f"{mnt}/inside")
    _, inside = fds[info["mntns_fd"]]
    assert (inside.path, inside.path_state, inside.size) == (f"{mnt}/inside", "ok", 18)
    mount = tables[child.mnt_ns][inside.mnt_id]
    assert (mount.fstype, mount.mount_point, mount.source) == ("tmpfs", mnt, "asyckpt-test")
    assert inside.mnt_id not in tables[root.mnt_ns]

    _, ghost = fds[info["mntns_ghost"]]
    assert (ghost.path, ghost.path_state, ghost.ghost) == (f"{mnt}/ghost", "deleted", "saved")
    assert ghost.mnt_id == inside.mnt_id
    assert content_of(image, ghost) == b"unlinked in a private tmpfs"

    # Opened before another tmpfs was mounted over their directory.
    _, replaced = fds[info["mntns_replaced"]]
    assert (replaced.path, replaced.path_state) == (f"{mnt}/over/replaced", "replaced")
    assert replaced.mnt_id == inside.mnt_id
    _, missing = fds[info["mntns_missing"]]
    assert (missing.path, missing.path_state) == (f"{mnt}/over/missing", "missing")
    over = [e for e in tables[child.mnt_ns].values() if e.mount_point == f"{mnt}/over"]
    assert [e.source for e in over] == ["asyckpt-over"]


def test_ghost_limit_zero_copies_nothing(ghosts: Tree, tmp_path: Path) -> None:
    summary = capture(ghosts, tmp_path / "g.ackpt", ghost_limit=0)
    image = read_image(tmp_path / "g.ackpt")
    states = {f.ghost for f in image.files.values() if f.deleted and f.nlink == 0}
    assert states == {"off"}
    assert image.contents == {} and summary.ghost_notes == [] and summary.ghosts_saved == 0
    assert image.trailer.contents == image.trailer.content_bytes == 0


def test_larger_limit_saves_the_big_file_in_chunks(ghosts: Tree) -> None:
    info = ghosts.info
    pid, big_fd = info["pid"], info["big"]
    with open(f"/proc/{pid}/fd/{big_fd}", "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()

    async def stream() -> tuple[list[Any], asyckpt.CaptureSummary]:
        options = CaptureOptions(ghost_limit=4 * MIB)
        async with asyckpt.open_capture(pid, options=options) as s:
            records = [r async for r in s]
        assert s.summary is not None
        return records, s.summary

    records, summary = trio.run(stream)
    assert summary.ghost_notes == []
    files = {r.id: r for r in records if isinstance(r, File)}
    # Content records come right after their file, in offset order.
    for i, rec in enumerate(records):
        if isinstance(rec, Content):
            before = records[i - 1]
            assert (isinstance(before, File) and before.id == rec.file) or (
                isinstance(before, Content)
                and before.file == rec.file
                and before.offset + len(before.data) <= rec.offset
            )
    big = next(f for f in files.values() if f.path.endswith("/big"))
    chunks = [r for r in records if isinstance(r, Content) and r.file == big.id]
    assert big.ghost == "saved" and len(chunks) == 3
    assert [len(c.data) for c in chunks] == [MIB] * 3
    assert hashlib.sha256(b"".join(c.data for c in chunks)).hexdigest() == expected
    assert summary.content_bytes == sum(len(r.data) for r in records if isinstance(r, Content))


def test_cli_reports_and_strict(ghosts: Tree, tmp_path: Path) -> None:
    info = ghosts.info
    pid = info["pid"]
    out = tmp_path / "g.ackpt"
    proc = run("tree", str(pid), "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"asyckpt: pid {pid} fd {info['big']}: unlinked file {info['workdir']}/big "
        "(3 MiB allocated) exceeds --ghost-limit 1 MiB; not saved"
    ]
    table = run("show", str(out)).stdout
    assert "content NOT saved: 3 MiB allocated, over the limit" in table
    assert "name unlinked, another hard link remains" in table
    assert "its process has exited" in table and "path now names another file" in table

    # The saved content comes back out as a sparse file; what has none is refused.
    image = read_image(out)
    files = fds_of(image, pid)
    sparse, big = files[info["sparse"]][1], files[info["big"]][1]
    again = files[info["sparse_again"]][1]
    extracted = tmp_path / "sparse.out"
    proc = run("show", str(out), "--extract", str(again.id), str(extracted))
    assert proc.returncode == 0, proc.stderr
    assert extracted.read_bytes() == sparse_expected()
    assert extracted.stat().st_blocks * 512 <= sparse.allocated  # holes stayed holes
    assert_one_line_error(
        run("show", str(out), "--extract", str(big.id), str(tmp_path / "big.out")),
        2,
        f"file {big.id} has no saved content (ghost: too-big)",
    )
    assert_one_line_error(
        run("show", str(out), "--extract", "9999", str(tmp_path / "x.out")), 2, "no file '9999'"
    )
    assert_one_line_error(
        run("show", str(out), "--extract", str(sparse.id), str(extracted)),
        5,
        "exists; use --force to replace it",
    )
    extracted.write_bytes(b"old")
    proc = run("show", str(out), "--extract", str(sparse.id), str(extracted), "--force")
    assert proc.returncode == 0, proc.stderr
    assert extracted.read_bytes() == sparse_expected()
    assert_one_line_error(run("show", str(out), "--force"), 2, "--force is only for --extract")
    # A write that fails half-way (a filesystem with room for one page of the two runs)
    # leaves nothing at OUT.
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "none", str(small)], check=True)
    try:
        assert_one_line_error(
            run("show", str(out), "--extract", str(sparse.id), str(small / "x.out")),
            5,
            "No space left on device",
        )
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
        small.rmdir()
    for name in ("big.out", "x.out", "sparse.out"):
        extracted_path = tmp_path / name
        if name != "sparse.out":
            assert not extracted_path.exists()
        else:
            extracted_path.unlink()

    strict = tmp_path / "strict.ackpt"
    proc = run("tree", str(pid), "-o", str(strict), "--strict")
    assert_one_line_error(proc, 8, "exceeds --ghost-limit 1 MiB; not saved")
    assert f"pid={pid}, fd={info['big']}" in proc.stderr
    assert not strict.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["g.ackpt"]
    assert all(task_state(p) in "SR" for p in ghosts.pids())

    proc = run("tree", str(pid), "-o", str(strict), "--strict", "--ghost-limit", "4M")
    assert proc.returncode == 0, proc.stderr
    assert read_image(strict).trailer.content_bytes >= 3 * MIB


@pytest.mark.parametrize("value", ["1X", "-1", "1.5M", "", "lots"])
def test_bad_ghost_limit_is_a_one_line_usage_error(value: str) -> None:
    proc = run("tree", "1", "--ghost-limit", value)
    assert_one_line_error(proc, 2, f"argument --ghost-limit: {value!r} is not a size")
