"""``asyckpt restore`` of an unlinked regular file, end to end on real processes: it
comes back as an unnamed file (O_TMPFILE) in the directory it lived in, on its own file
system, with its content, holes, descriptions, access modes, flags and positions; as a
memfd, said on stderr, when that directory is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyckpt._escape import escape
from tests.conftest import WORKLOADS, Tree
from tests.test_restore import ASYCKPT, asyckpt, capture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def holders() -> Iterator[list[int]]:
    """The holders a test started: killed afterwards, by pid."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tmpfs(path: Path) -> bool:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip() == "tmpfs"


@pytest.fixture(params=["tmp", "disk"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory the test made: in its tmp dir (``/tmp``, maybe a tmpfs), or on a disk
    file system (``/var/tmp`` or the checkout, whichever is not a tmpfs)."""
    if request.param == "tmp":
        yield tmp_path
        return
    disks = [p for p in (Path("/var/tmp"), REPO) if p.is_dir() and not _tmpfs(p)]
    if not disks:
        pytest.skip("neither /var/tmp nor the checkout is on a disk file system")
    made = Path(tempfile.mkdtemp(prefix="asyckpt-test-", dir=disks[0]))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def start(spawn: Any, directory: Path, tmp_path: Path, *mode: str) -> tuple[Tree, Any]:
    """The workload's file in ``directory`` (of ``mode``); captured, then killed: the
    restore has only the image's saved content."""
    directory.mkdir()
    tree: Tree = spawn(WORKLOADS / "restore_unlinked.py", str(directory), *mode)
    image = capture(tree.pid, tmp_path / "a.ackpt")
    os.kill(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    return tree, image


def restore(image: Path, pid: int, holders: list[int]) -> tuple[int, str]:
    proc = asyckpt("restore", str(image), "--pid", str(pid), "--hold")
    assert proc.returncode == 0, proc.stderr
    holders.append(int(proc.stdout))
    return holders[-1], proc.stderr


def files(image: Any, pid: int) -> dict[int, Any]:
    (task,) = [t for t in image.tasks if t.pid == pid]
    return {fd.fd: (fd, f) for fd, f in image.fds(task.fd_table)}


def compare(a: dict[int, Any], b: dict[int, Any], names: dict[str, int]) -> None:
    """What the copy must keep of each fd, and the sharing: rw and its dup one
    description, ro and wo one each, all three of one inode; the O_TMPFILE file
    another."""
    assert sorted(a) == sorted(b)
    for fd in names.values():
        (fa, a_), (fb, b_) = a[fd], b[fd]
        # How a file was made (O_TMPFILE) is not kept: the copy is reopened as the file.
        flags = a_.flags & ~os.O_TMPFILE
        want = (a_.type, a_.access, flags, a_.pos, fa.cloexec, a_.size)
        assert (b_.type, b_.access, b_.flags, b_.pos, fb.cloexec, b_.size) == want, fd
        assert b_.path_state == "deleted" and b_.ghost == "saved", b_
    ids = {fd: f.id for fd, (_, f) in b.items() if fd in names.values()}
    assert ids[names["rw"]] == ids[names["rw_dup"]]
    assert len({ids[names[k]] for k in ("rw", "ro", "wo", "tmpfile")}) == 4
    assert len({b[names[k]][1].ino for k in ("rw", "rw_dup", "ro", "wo")}) == 1
    assert b[names["tmpfile"]][1].ino != b[names["rw"]][1].ino
    assert a[names["tmpfile"]][1].flags & os.O_TMPFILE == os.O_TMPFILE
    assert (a[names["ro"]][1].access, a[names["wo"]][1].access) == ("r", "w")
    assert [a[names[k]][1].pos for k in ("rw", "ro", "wo")] == [5, 3, 7]


def extract(image: Path, f: Any, out: Path) -> bytes:
    proc = asyckpt("show", str(image), "--extract", str(f.id), str(out))
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def test_unlinked_file_back_in_its_directory(
    spawn: Any, holders: list[int], base: Path, tmp_path: Path
) -> None:
    directory = base / "db"
    tree, before = start(spawn, directory, tmp_path)
    holder, stderr = restore(tmp_path / "a.ackpt", tree.pid, holders)
    assert stderr == ""  # not a memfd: nothing to say
    after = capture(holder, tmp_path / "b.ackpt")
    names = tree.info["fds"]
    a, b = files(before, tree.pid), files(after, holder)
    compare(a, b, names)
    for fd in names.values():
        f = b[fd][1]
        # The kernel names an O_TMPFILE "/dir/#INODE (deleted)": the directory is the one.
        assert os.path.dirname(f.path) == str(directory.resolve()), f.path
        assert f.deleted and f.nlink == 0
        assert f.dev == a[fd][1].dev  # the same file system
        assert f.st_mode == a[fd][1].st_mode  # 0640, and the O_TMPFILE one's 0600
    assert b[names["rw"]][1].st_mode == 0o100640
    rw_a, rw_b = a[names["rw"]][1], b[names["rw"]][1]
    content = extract(tmp_path / "a.ackpt", rw_a, tmp_path / "a.bin")
    assert content == b"head" + bytes((1 << 20) - 4) + b"tail"
    assert extract(tmp_path / "b.ackpt", rw_b, tmp_path / "b.bin") == content
    assert rw_b.allocated < rw_b.size  # the hole stayed a hole
    tmp_a, tmp_b = a[names["tmpfile"]][1], b[names["tmpfile"]][1]
    assert extract(tmp_path / "a.ackpt", tmp_a, tmp_path / "t.bin") == b"made unnamed"
    assert extract(tmp_path / "b.ackpt", tmp_b, tmp_path / "u.bin") == b"made unnamed"
    assert os.listdir(directory) == []  # and no name was made


def test_directory_gone_restored_as_a_memfd(spawn: Any, holders: list[int], tmp_path: Path) -> None:
    directory = tmp_path / "gone\ndir\x1b[31m"  # printed escaped, on one line
    tree, before = start(spawn, directory, tmp_path)
    directory.rmdir()
    holder, stderr = restore(tmp_path / "a.ackpt", tree.pid, holders)
    names = tree.info["fds"]
    after = capture(holder, tmp_path / "b.ackpt")
    a, b = files(before, tree.pid), files(after, holder)
    # One line per file, naming the fd it was first made for, escaped.
    said = [(names["rw"], a[names["rw"]][1]), (names["tmpfile"], a[names["tmpfile"]][1])]
    assert stderr == "".join(
        f"asyckpt: restore: fd {fd} ({escape(f.path)}): directory gone, restored as a memfd\n"
        for fd, f in said
    )
    assert "gone\\ndir\\x1b[31m/data.bin" in stderr
    compare(a, b, names)
    for fd in names.values():
        assert b[fd][1].path == "/memfd:" + os.path.basename(a[fd][1].path)
    rw_a, rw_b = a[names["rw"]][1], b[names["rw"]][1]
    content = extract(tmp_path / "a.ackpt", rw_a, tmp_path / "a.bin")
    assert extract(tmp_path / "b.ackpt", rw_b, tmp_path / "b.bin") == content


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="root, setpriv")
@pytest.mark.parametrize(
    ("dir_mode", "file_mode", "why"),
    [
        # A directory root made, that nobody may search but not write: a memfd.
        (0o755, "640", "directory not writable"),
        # Writable: the unnamed file, whose mode (none) is set once it was reopened.
        (0o777, "000", None),
    ],
)
def test_restored_as_another_user(
    spawn: Any, holders: list[int], tmp_path: Path, dir_mode: int, file_mode: str, why: str | None
) -> None:
    base = Path(tempfile.mkdtemp(prefix="asyckpt-test-"))
    try:
        base.chmod(0o755)
        tree, before = start(spawn, base / "db", base, file_mode)
        (base / "db").chmod(dir_mode)
        (base / "a.ackpt").chmod(0o644)
        argv = ["restore", str(base / "a.ackpt"), "--pid", str(tree.pid), "--hold"]
        proc = subprocess.run(NOBODY + ASYCKPT + argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        holders.append(int(proc.stdout))
        names = tree.info["fds"]
        a = files(before, tree.pid)
        b = files(capture(holders[-1], tmp_path / "b.ackpt"), holders[-1])
        compare(a, b, names)
        if why is None:
            assert proc.stderr == ""
            assert os.path.dirname(b[names["wo"]][1].path) == str(base / "db")
            assert b[names["wo"]][1].st_mode == 0o100000
            assert b[names["wo"]][1].uid == 65534  # restore's user
            return
        said = [(names["rw"], a[names["rw"]][1]), (names["tmpfile"], a[names["tmpfile"]][1])]
        assert proc.stderr == "".join(
            f"asyckpt: restore: fd {fd} ({escape(f.path)}): {why}, restored as a memfd\n"
            for fd, f in said
        )
        assert b[names["wo"]][1].path == "/memfd:data.bin"
    finally:
        shutil.rmtree(base, ignore_errors=True)
