"""``asyckpt restore``, end to end on real processes: capture a workload, rebuild its fd
table in a new process, capture the copy, and compare them field by field; crafted
images and planted symlinks never make it open outside the root, create or truncate."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyckpt._image import read_image
from asyckpt._records import File
from tests.conftest import WORKLOADS, Tree
from tests.crafted import _file, build, seed

ASYCKPT = [sys.executable, "-m", "asyckpt"]


def asyckpt(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ASYCKPT + list(argv), capture_output=True, text=True, timeout=120)


@pytest.fixture
def hold(tmp_path: Path) -> Iterator[Any]:
    """hold(image, pid, *options) runs ``restore --hold`` and returns the holder's pid
    (or the failed command); every holder is killed afterwards, by pid."""
    holders: list[int] = []

    def start(image: Path, pid: int, *options: str) -> int | subprocess.CompletedProcess[str]:
        proc = asyckpt("restore", str(image), "--pid", str(pid), "--hold", *options)
        if proc.returncode != 0:
            assert not proc.stdout, proc.stdout
            return proc
        holder = int(proc.stdout)
        holders.append(holder)
        return holder

    yield start
    for holder in holders:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGKILL)


def capture(pid: int, out: Path) -> Any:
    proc = asyckpt("tree", str(pid), "-o", str(out), "--pipe-data", "1M", "-q")
    assert proc.returncode == 0, proc.stderr
    return read_image(out)


def capture_and_stop(tree: Tree, out: Path) -> Any:
    """Capture the zoo, then kill it: its write lock would keep a copy from taking it."""
    image = capture(tree.pid, out)
    os.kill(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    return image


def _data(f: File) -> dict[str, Any]:
    value = msgspec.msgpack.decode(f.data)
    return value if isinstance(value, dict) else {}


def _content(image: Any, f: File) -> bytes | None:
    if f.ghost != "saved" or f.ghost_file is None:
        return None
    out = bytearray(f.size)
    for run in image.contents.get(f.ghost_file, []):
        out[run.offset : run.offset + len(run.data)] = run.data
    return bytes(out)


def table(image: Any, pid: int) -> dict[str, Any]:
    """What restore promises to keep of task ``pid``'s table, with the kernel's own
    identities (file ids, inodes) replaced by the partitions of fds they make."""
    (task,) = [t for t in image.tasks if t.pid == pid]
    fds = image.fds(task.fd_table)
    by_file: dict[int, set[int]] = {}
    by_object: dict[int, set[int]] = {}
    rows: dict[int, dict[str, Any]] = {}
    left: dict[int, list[int]] = {}
    for fd, f in fds:
        data = _data(f)
        by_file.setdefault(f.id, set()).add(fd.fd)
        if f.type in ("pipe", "fifo", "socket"):
            by_object.setdefault(data["ino"], set()).add(fd.fd)
            if data.get("peer_ino"):
                by_object.setdefault(data["peer_ino"], set()).add(fd.fd)
        row: dict[str, Any] = {
            # A POSIX lock is its process's; the others, the description's (their pid
            # is whoever took them).
            "locks": sorted(
                (lk.type, lk.access, lk.start, lk.end, lk.type != "POSIX" or lk.pid == pid)
                for lk in f.locks
            ),
            "type": f.type,
            "access": f.access,
            "flags": f.flags,
            "pos": f.pos,
            "cloexec": fd.cloexec,
            "content": _content(image, f),
        }
        if f.type in ("reg", "dir", "chr", "fifo") and not f.deleted:
            row |= {"path": f.path, "ino": f.ino, "dev": f.dev}
        keep = {
            "asyckpt.pipe": ("end", "capacity", "queued", "packet_mode", "content", "packets"),
            "asyckpt.eventfd": ("count", "semaphore"),
            "asyckpt.memfd": ("name", "size", "seals"),
            "asyckpt.socket": (
                "family",
                "type",
                "state",
                "shutdown",
                "peer_in_tree",
                "local_address",
                "local_port",
                "backlog",
                "reuseaddr",
            ),
            "asyckpt.signalfd": ("sigmask",),
        }.get(data.get("kind", ""), ())
        row |= {k: data.get(k) for k in keep}
        if data.get("kind") == "asyckpt.timerfd":
            # The time left runs on: armed, and no later than in the original.
            row |= {k: data[k] for k in ("clockid", "ticks", "settime_flags", "it_interval")}
            row["armed"] = data["it_value"] != [0, 0]
            left[fd.fd] = data["it_value"]
        if data.get("kind") == "asyckpt.inotify":
            row["watches"] = [
                (w["wd"], w["mask"], w["ino"], w["dev"], w["path"]) for w in data["watches"]
            ]
        if data.get("kind") == "asyckpt.epoll":
            # A target is its events, user data and the fds of its description (the
            # number it was added with may have been closed since).
            fds_of = {f_.id: sorted(d.fd for d, _ in fds if d.file == f_.id) for _, f_ in fds}
            row["targets"] = sorted(
                (t["events"], t["data"], fds_of[t["file"]]) for t in data["targets"]
            )
        rows[fd.fd] = row
    return {
        "left": left,
        "fds": rows,
        "shared": sorted(sorted(s) for s in by_file.values()),
        "objects": sorted(sorted(s) for s in by_object.values()),
    }


def test_round_trip_every_restored_kind(spawn: Any, hold: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_zoo.py")
    before = capture(tree.pid, tmp_path / "a.ackpt")
    # While the zoo lives, its write lock is its own: the copy cannot take it.
    proc = hold(tmp_path / "a.ackpt", tree.pid)
    one_line_error(proc, 13, f"pid={tree.pid}, fd={tree.info['fds']['reg']}", "ofd write lock")
    os.kill(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    holder = hold(tmp_path / "a.ackpt", tree.pid)
    assert isinstance(holder, int), holder.stderr
    after = capture(holder, tmp_path / "b.ackpt")
    a, b = table(before, tree.pid), table(after, holder)
    fds = tree.info["fds"]
    differ = {
        fd: (row, b["fds"].get(fd)) for fd, row in a["fds"].items() if row != b["fds"].get(fd)
    }
    assert not differ, repr(differ)
    left_a, left_b = a.pop("left"), b.pop("left")
    assert all([0, 0] < left_b[fd] <= left_a[fd] for fd in left_a)
    assert a == b
    # The comparison saw what it should: data in pipes, counters, content with a hole.
    rows = a["fds"]
    assert rows[fds["pipe_r"]]["content"] == b"queued bytes\n"
    assert rows[fds["packet_r"]]["packets"] == [3, 7, 5]
    assert rows[fds["eventfd"]]["count"] == 42 and rows[fds["semaphore"]]["semaphore"]
    memfd = rows[fds["memfd"]]["content"]
    assert memfd[:4] == b"head" and memfd[-4:] == b"tail" and memfd[4:-4] == bytes(len(memfd) - 8)
    assert rows[fds["unlinked"]]["content"] == b"unlinked content"
    assert [fds["reg"], fds["reg_dup"]] in a["shared"]
    assert [fds["sock_a"], fds["sock_b"]] in a["objects"]
    assert rows[fds["epoll"]]["targets"] == sorted(
        # EPOLLERR | EPOLLHUP (0x18) are always watched; the kernel shows them.
        [(0x80000019, 0xDEADBEEFCAFE, [fds["pipe_r"]]), (0x1C, 7, [fds["eventfd"]])]
    )
    assert rows[fds["timerfd"]]["it_interval"] == [90, 0] and rows[fds["timerfd"]]["armed"]
    assert rows[fds["signalfd"]]["sigmask"] == (1 << 9) | (1 << 11)
    assert sorted(w[:2] for w in rows[fds["inotify"]]["watches"]) == [(1, 0x300), (2, 0x2)]
    assert (rows[fds["tcp"]]["state"], rows[fds["tcp"]]["backlog"]) == ("LISTEN", 7)
    assert rows[fds["tcp"]]["local_port"] and rows[fds["udp"]]["local_address"] == "::1"
    assert rows[fds["reg"]]["locks"] == [("OFDLCK", "WRITE", 10, 19, True)]
    assert rows[fds["reg_ro"]]["locks"] == [
        ("FLOCK", "READ", 0, None, True),
        ("POSIX", "READ", 100, None, True),
    ]
    assert rows[fds["fifo_w"]]["type"] == "fifo" and [fds["fifo_r"], fds["fifo_w"]] in a["objects"]


CHILD = """
import json, os, sys
open_fds = []
for fd in range(64):
    try:
        os.fstat(fd)
        open_fds.append(fd)
    except OSError:
        pass
fds = json.loads(sys.argv[1])
seen = {
    "open": open_fds,
    "semaphore": os.eventfd_read(fds["semaphore"]),
    "packet": os.read(fds["packet_r"], 100).decode(),
    "memfd": os.pread(fds["memfd"], 4, 0).decode(),
    "pos": os.lseek(fds["reg"], 0, os.SEEK_CUR),
}
with open(sys.argv[2], "w") as out:
    json.dump(seen, out)
sys.exit(7)
"""


def test_exec_closes_cloexec_fds_and_passes_the_rest(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_zoo.py")
    image = capture_and_stop(tree, tmp_path / "a.ackpt")
    (task,) = image.tasks
    inherited = sorted(fd.fd for fd, _ in image.fds(task.fd_table) if not fd.cloexec)
    fds = tree.info["fds"]
    out = tmp_path / "seen.json"
    argv = [sys.executable, "-c", CHILD, json.dumps(fds), str(out)]
    proc = asyckpt("restore", str(tmp_path / "a.ackpt"), "--pid", str(tree.pid), "--", *argv)
    assert proc.returncode == 7, proc.stderr  # CMD's own exit status
    seen = json.loads(out.read_text())
    assert seen["open"] == inherited
    assert fds["reg_dup"] not in seen["open"] and fds["reg"] in seen["open"]
    assert seen == seen | {"semaphore": 1, "packet": "one", "memfd": "head", "pos": 123}


def test_exit_status_of_cmd_killed_by_a_signal(tmp_path: Path) -> None:
    ok = tmp_path / "ok.txt"
    ok.write_text("ok")
    image = str(crafted(tmp_path, reg_of(ok, access="r")))
    proc = asyckpt("restore", image, "--pid", "100", "--", "sh", "-c", "kill -TERM $$")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    # SIGPIPE at its default in CMD (Python, which restore is, ignores it).
    pipe_cmd = "yes | head -c1 >/dev/null; exit ${PIPESTATUS[0]}"
    proc = asyckpt("restore", image, "--pid", "100", "--", "bash", "-c", pipe_cmd)
    assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
    proc = asyckpt("restore", image, "--pid", "100", "--", str(tmp_path / "no-such-cmd"))
    one_line_error(proc, 13, "cannot run", "No such file or directory")


def test_hold_stops_on_sigterm(spawn: Any, hold: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_zoo.py")
    capture_and_stop(tree, tmp_path / "a.ackpt")
    holder = hold(tmp_path / "a.ackpt", tree.pid)
    assert isinstance(holder, int)
    os.kill(holder, signal.SIGTERM)
    for _ in range(200):
        if not Path(f"/proc/{holder}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{holder}").exists()


# Crafted images: any value, digest recomputed.


def crafted(tmp_path: Path, *files: dict[str, Any], fd: int = 3) -> Path:
    """An image of one task (pid 100) whose table holds ``files`` at fd, fd+1..."""
    first, *_, last = seed()
    body: list[dict[str, Any]] = [{"kind": "fdtable", "id": 1, "owner": 100, "count": len(files)}]
    for n, rec in enumerate(files):
        body += [rec, {"kind": "fd", "fd": fd + n, "file": rec["id"], "cloexec": False}]
    body.append(
        {
            "kind": "task", "pid": 100, "ppid": 1, "comm": "t", "starttime": 1, "state": "S",
            "uid": 0, "gid": 0, "fd_table": 1, "threads": [[100, 1]],
        }
    )  # fmt: skip
    path = tmp_path / "crafted.ackpt"
    path.write_bytes(build([first, *body, last]))
    return path


def reg_of(path: Path, id: int = 1, *, name: str | None = None, **fields: Any) -> dict[str, Any]:
    """A regular file record naming ``name`` (default: ``path``) with ``path``'s inode."""
    st = path.stat()
    return _file(
        id, "reg", name or str(path), dev=st.st_dev, ino=st.st_ino, size=st.st_size, **fields
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("asyckpt: error: ")
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert not proc.stdout


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_planted_symlink_never_leads_outside_the_root(
    hold: Any, tmp_path: Path, target: str
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not yours")
    root = tmp_path / "root"
    (root / "srv").mkdir(parents=True)
    link = root / "srv" / "data.txt"
    link.symlink_to(secret if target == "absolute" else Path("../../outside/secret.txt"))
    # The image names the secret's very inode: followed out of the root, it would pass.
    image = crafted(tmp_path, reg_of(secret, name="/srv/data.txt", access="r", flags=0))
    for options in ((), ("--relaxed",)):
        proc = hold(image, 100, "--root", str(root), *options)
        assert not isinstance(proc, int), "opened a file outside the root"
        one_line_error(proc, 13, "pid=100, fd=3", "No such file or directory")
    # The same image, with the secret linked in the root: restored (the test can fail).
    other = tmp_path / "other"
    (other / "srv").mkdir(parents=True)
    (other / "srv" / "data.txt").hardlink_to(secret)
    assert isinstance(hold(image, 100, "--root", str(other)), int)


def test_dotdot_in_an_image_path_stays_in_the_root(hold: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    root = tmp_path / "root"
    root.mkdir()
    name = "/../../../../../../" + str(secret)
    proc = hold(crafted(tmp_path, reg_of(secret, name=name, access="r")), 100, "--root", str(root))
    one_line_error(proc, 13, "No such file or directory")


def test_never_creates_or_truncates(hold: Any, tmp_path: Path) -> None:
    kept = tmp_path / "kept.txt"
    kept.write_text("precious")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL
    holder = hold(crafted(tmp_path, reg_of(kept, access="w", flags=flags)), 100)
    assert isinstance(holder, int), holder.stderr
    link = os.readlink(f"/proc/{holder}/fd/3")
    assert link == str(kept) and kept.read_text() == "precious"
    missing = tmp_path / "missing.txt"
    rec = reg_of(kept, name=str(missing), access="w", flags=flags)
    one_line_error(hold(crafted(tmp_path, rec), 100), 13, "No such file or directory")
    assert not missing.exists()


def test_another_file_at_the_path_is_refused_unless_relaxed(hold: Any, tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("1234")
    rec = reg_of(path, access="r") | {"ino": path.stat().st_ino + 1}
    one_line_error(hold(crafted(tmp_path, rec), 100), 13, "another file now", "--relaxed")
    assert isinstance(hold(crafted(tmp_path, rec), 100, "--relaxed"), int)
    rec["size"] = 5
    one_line_error(hold(crafted(tmp_path, rec), 100, "--relaxed"), 13, "size 4, not 5")
    rec = reg_of(tmp_path, access="r") | {"type": "reg"}  # a directory there now
    one_line_error(hold(crafted(tmp_path, rec), 100), 13, "directory now")


def test_unrestorable_kind_refused_before_anything_or_skipped(hold: Any, tmp_path: Path) -> None:
    ok = tmp_path / "ok.txt"
    ok.write_text("ok")
    epoll = _file(2, "anon", "anon_inode:[eventpoll]")
    image = crafted(tmp_path, reg_of(ok, access="r"), epoll)
    one_line_error(hold(image, 100), 13, "pid=100, fd=4", "epoll", "--skip epoll")
    proc = asyckpt("restore", str(image), "--pid", "100", "--hold", "--skip", "epoll")
    holder = int(proc.stdout)
    try:
        assert "skipped fd 4 (epoll anon_inode:[eventpoll])" in proc.stderr
        assert sorted(os.listdir(f"/proc/{holder}/fd")) == ["3"]
    finally:
        os.kill(holder, signal.SIGKILL)


def test_hostile_names_and_numbers(hold: Any, tmp_path: Path) -> None:
    ok = tmp_path / "ok.txt"
    ok.write_text("ok")
    hostile = reg_of(ok, access="r", name="/no\n\x1b]0;owned\x07/such")
    proc = hold(crafted(tmp_path, hostile), 100)
    one_line_error(proc, 13, "\\n", "\\x1b")
    assert "\x1b" not in proc.stderr
    proc = hold(crafted(tmp_path, reg_of(ok, access="r"), fd=2**30), 100)
    one_line_error(proc, 13, "RLIMIT_NOFILE", f"fd={2**30}")
    proc = asyckpt("restore", str(crafted(tmp_path, reg_of(ok))), "--pid", "100")
    one_line_error(proc, 2, "--hold or -- CMD")
    (tmp_path / "bad.ackpt").write_bytes(b"\x89ACKPT\r\n\x1a\n" + bytes(4))
    one_line_error(hold(tmp_path / "bad.ackpt", 100), 6)


LIBRARY = """
import fcntl, json, os, sys
import asyckpt
out = fcntl.fcntl(os.open(sys.argv[3], os.O_WRONLY), fcntl.F_DUPFD_CLOEXEC, 500)
plan = asyckpt.restore_table(asyckpt.read_image(sys.argv[1]), int(sys.argv[2]))
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
seen = {"restored": [s.fd for s in plan.fds], "fds": fds, "reg": os.lseek(3, 0, os.SEEK_CUR)}
os.write(out, json.dumps(seen).encode())
"""


def test_restore_table_in_the_calling_process(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_zoo.py")
    image = capture_and_stop(tree, tmp_path / "a.ackpt")
    (task,) = image.tasks
    out = tmp_path / "seen.json"
    out.touch()
    argv = [sys.executable, "-c", LIBRARY, str(tmp_path / "a.ackpt"), str(tree.pid), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    numbers = [fd.fd for fd, _ in image.fds(task.fd_table)]
    assert seen["restored"] == numbers
    assert set(numbers) <= set(seen["fds"])  # and the caller's own (500, listdir's) stay
    assert 500 in seen["fds"] and seen["reg"] == 123


def across(image: Any) -> dict[str, Any]:
    """The sharing between the tasks of an image, tasks named by their place in it."""
    by_file: dict[int, set[tuple[int, int]]] = {}
    by_pipe: dict[int, set[tuple[int, int]]] = {}
    for n, task in enumerate(image.tasks):
        for fd, f in image.fds(task.fd_table):
            by_file.setdefault(f.id, set()).add((n, fd.fd))
            if f.type == "pipe":
                by_pipe.setdefault(_data(f)["ino"], set()).add((n, fd.fd))
    parents = [
        next((m for m, p in enumerate(image.tasks) if p.pid == t.ppid), None) for t in image.tasks
    ]
    return {
        "parents": parents,
        "files": sorted(sorted(s) for s in by_file.values()),
        "pipes": sorted(sorted(s) for s in by_pipe.values()),
    }


def hold_tree_and_capture(before: Any, tmp_path: Path) -> Any:
    """``restore tmp_path/a.ackpt --tree --hold``, the new tree captured (and killed):
    every task's table as in ``before``, checked; returns the copy's image."""
    proc = asyckpt("restore", str(tmp_path / "a.ackpt"), "--tree", "--hold")
    assert proc.returncode == 0, proc.stderr
    root = int(proc.stdout)
    try:
        after = capture(root, tmp_path / "b.ackpt")
    finally:
        os.killpg(root, signal.SIGKILL)
    assert len(after.tasks) == len(before.tasks)
    for old, new in zip(before.tasks, after.tasks, strict=True):
        assert table(before, old.pid) == table(after, new.pid)
    return after


def test_tree_round_trip_shares_across_tasks(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_tree.py")
    before = capture(tree.pid, tmp_path / "a.ackpt")
    os.killpg(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    after = hold_tree_and_capture(before, tmp_path)
    a, b = across(before), across(after)
    assert a == b
    assert a["parents"] == [None, 0]
    shared = tree.info["shared"]
    assert [(0, shared), (1, shared)] in a["files"]  # one position, inherited
    rows = table(after, after.tasks[1].pid)["fds"]
    assert rows[shared]["pos"] == 42
    assert any(len({n for n, _ in s}) == 2 for s in a["pipes"])  # parent writes, child reads


def test_tree_refused_before_anything_starts(spawn: Any, tmp_path: Path) -> None:
    tree: Tree = spawn(WORKLOADS / "restore_tree.py")
    capture(tree.pid, tmp_path / "a.ackpt")
    # The child's eventfd, skipped; an unknown word, a usage error; --tree with a CMD too.
    proc = asyckpt("restore", str(tmp_path / "a.ackpt"), "--tree", "--hold", "--skip", "pipe")
    assert proc.returncode == 0, proc.stderr
    try:
        assert proc.stderr.count("skipped fd") >= 2
    finally:
        os.killpg(int(proc.stdout), signal.SIGKILL)
    for argv in (("--tree", "--", "true"), ("--tree", "--pid", "1", "--hold"), ("--hold",)):
        proc = asyckpt("restore", str(tmp_path / "a.ackpt"), *argv)
        one_line_error(
            proc, 2, "one of them" if "--pid" in argv or argv == ("--hold",) else "--tree"
        )


def test_restore_tree_from_trio(spawn: Any, tmp_path: Path) -> None:
    import trio

    import asyckpt

    tree: Tree = spawn(WORKLOADS / "restore_tree.py")
    before = capture(tree.pid, tmp_path / "a.ackpt")
    os.killpg(tree.pid, signal.SIGKILL)
    tree.proc.wait(timeout=10)
    root = trio.run(asyckpt.restore_tree, before)
    try:
        after = capture(root, tmp_path / "b.ackpt")
        assert across(after) == across(before)
        os.kill(root, signal.SIGTERM)  # the root ends the tree
        assert os.waitpid(root, 0)[1] == 0
        child = after.tasks[1].pid
        for _ in range(200):
            if not Path(f"/proc/{child}").exists():
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(root, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(root, 0)


def test_busy_address_is_a_clear_error(hold: Any, tmp_path: Path) -> None:
    import socket

    from tests.crafted import _socket

    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        fields = {"family": "inet", "domain": 2, "protocol": 6, "proto": "tcp", "state": "LISTEN"}
        fields |= {"local_address": "127.0.0.1", "local_port": port, "backlog": 5}
        rec = _file(1, "socket", "socket:[7001]", flags=os.O_RDWR, data=_socket(7001, **fields))
        proc = hold(crafted(tmp_path, rec), 100)
        one_line_error(proc, 13, "pid=100, fd=3", f"address 127.0.0.1 port {port} is in use")
    finally:
        busy.close()
    holder = hold(crafted(tmp_path, rec), 100)  # free now: bound and listening again
    assert isinstance(holder, int), holder.stderr
    assert os.readlink(f"/proc/{holder}/fd/3").startswith("socket:")


def test_pty_slave_reopened_by_path_other_devices_refused(hold: Any, tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        st = os.stat(name)
        rec = _file(
            1, "chr", name, dev=st.st_dev, ino=st.st_ino, rdev=st.st_rdev, st_mode=st.st_mode
        )
        holder = hold(crafted(tmp_path, rec), 100)
        assert isinstance(holder, int), holder.stderr
        assert os.readlink(f"/proc/{holder}/fd/3") == name
        # Not its controlling terminal: opened O_NOCTTY (and it is in a session of its own).
        assert Path(f"/proc/{holder}/stat").read_text().rsplit(")", 1)[1].split()[4] == "0"
    finally:
        os.close(slave)
        os.close(master)
    # A device the test made, of a kind whose open may act: refused before anything.
    node = tmp_path / "sda-like"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    st = node.stat()
    rec = _file(1, "blk", str(node), dev=st.st_dev, ino=st.st_ino, rdev=st.st_rdev)
    one_line_error(hold(crafted(tmp_path, rec), 100), 13, "cannot restore the blk")


def test_a_name_that_is_not_utf8_opens_its_very_bytes(hold: Any, tmp_path: Path) -> None:
    from asyckpt._escape import escape

    raw = os.fsencode(tmp_path) + b"/caf\xe9.txt"
    with open(raw, "wb") as f:
        f.write(b"x")
    st = os.stat(raw)
    rec = _file(1, "reg", escape(raw), path_bytes=raw, dev=st.st_dev, ino=st.st_ino, size=1)
    rec |= {"access": "r", "flags": 0}
    holder = hold(crafted(tmp_path, rec), 100)
    assert isinstance(holder, int), holder.stderr
    assert os.readlink(os.fsencode(f"/proc/{holder}/fd/3")) == raw
    os.unlink(raw)  # gone: the error quotes the name escaped once
    proc = hold(crafted(tmp_path, rec), 100)
    one_line_error(proc, 13, "caf\\xe9.txt")
    assert "\\\\xe9" not in proc.stderr
