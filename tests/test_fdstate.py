"""Locks and I/O owners, core fields of every file: a real tree (workloads/fd_state.py)
takes POSIX, flock and OFD locks and a lease, sets owners, signals and O_ASYNC on a
socket, a pipe and a leased file, and is captured frozen; every field is compared with
what it set up.  Then ``show`` presents them, as text and as JSON."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import asyckpt
from asyckpt import CaptureOptions, File, Lock, Owner, read_image
from asyckpt._kernel import _fd_owner_at_py, _fd_owner_py, fd_owner, fd_owner_at
from asyckpt._procparse import parse_lock
from asyckpt._show import state_text

from .conftest import WORKLOADS, Tree

SIGRT3 = signal.SIGRTMIN + 3


def no_text(locks: list[Lock]) -> list[Lock]:
    """Locks without the kernel's line, whose spacing is not the test's to predict."""
    return [msgspec.structs.replace(lock, text="") for lock in locks]


def lock(
    kind: str, access: str, pid: int, node: dict[str, int], start: int, end: int | None
) -> Lock:
    mode = "ACTIVE" if kind == "LEASE" else "ADVISORY"
    return Lock(
        type=kind,
        mode=mode,
        access=access,
        pid=pid,
        dev=node["dev"],
        ino=node["ino"],
        start=start,
        end=end,
        text="",
    )


@pytest.fixture
def state_tree(spawn: Any) -> Tree:
    tree: Tree = spawn(WORKLOADS / "fd_state.py")
    return tree


def capture(tree: Tree, dest: Path, dispatch: asyckpt.Dispatch | None) -> asyckpt.Image:
    trio.run(
        lambda: asyckpt.checkpoint_tree(
            tree.pid, dest, options=CaptureOptions(strict=dispatch is None), dispatch=dispatch
        )
    )
    return read_image(dest)


def files_of(image: asyckpt.Image, pid: int) -> dict[int, File]:
    task = next(t for t in image.tasks if t.pid == pid)
    return {fd.fd: f for fd, f in image.fds(task.fd_table)}


# With every installed handler (the pipe and socket handlers take their fds, and the
# owner is read through the descriptor they took), and with asyckpt's own only (pipes
# and sockets generic: the core takes the descriptor itself).
DISPATCHES = [
    pytest.param(None, id="installed-handlers"),
    pytest.param(False, id="core-handlers-only"),
]


@pytest.mark.parametrize("installed", DISPATCHES)
def test_locks_and_owners(state_tree: Tree, tmp_path: Path, installed: bool | None) -> None:
    dispatch = None if installed is None else asyckpt.load_handlers(autoload=False)
    image = capture(state_tree, tmp_path / "state.ackpt", dispatch)
    info = state_tree.info
    pid, nodes = info["pid"], info["nodes"]
    files = files_of(image, pid)

    def got(name: str) -> File:
        return files[info[name]]

    def node(name: str) -> dict[str, int]:
        return nodes[str(info[name])]

    # Locks, each on the description that holds it; every line parses back the same.
    assert no_text(got("posix").locks) == [lock("POSIX", "WRITE", pid, node("posix"), 0, None)]
    assert no_text(got("flock").locks) == [lock("FLOCK", "READ", pid, node("flock"), 0, None)]
    assert no_text(got("ofd").locks) == [lock("OFDLCK", "WRITE", -1, node("ofd"), 10, 29)]
    for f in image.files.values():
        assert [parse_lock(x.text) for x in f.locks] == f.locks
    # A regular file with locks but neither O_ASYNC nor a lease: its owner is not read.
    assert all(got(name).owner is None for name in ("posix", "flock", "ofd"))

    # The lease, with the owner and signal set after it, and the O_ASYNC it implies.
    lease = got("lease")
    if "lease_refused" in info:
        assert (lease.locks, lease.owner) == ([], None)
    else:
        assert no_text(lease.locks) == [lock("LEASE", "READ", pid, node("lease"), 0, None)]
        uid, euid = info["lease_uids"]
        assert lease.flags & 0o20000
        assert lease.owner == Owner(
            pid=pid, type="tid", signal=SIGRT3, async_io=True, uid=uid, euid=euid
        )

    # A socket owned by a process group, both ends of a pipe, and a socket with none.
    uid, euid = info["sock_uids"]
    assert got("sock").owner == Owner(
        pid=info["pgrp"], type="pgrp", signal=signal.SIGUSR1, async_io=True, uid=uid, euid=euid
    )
    assert got("peer").owner is None
    uid, euid = info["pipe_uids"]
    assert got("pipe_r").owner == Owner(
        pid=pid, type="pid", signal=signal.SIGUSR2, async_io=True, uid=uid, euid=euid
    )
    assert got("pipe_w").owner == Owner(
        pid=pid, type="tid", signal=0, async_io=True, uid=uid, euid=euid
    )
    assert all(got(name).locks == [] for name in ("sock", "peer", "pipe_r", "pipe_w"))
    if installed is None:
        assert (got("sock").handler, got("pipe_r").handler) == ("sockets", "pipes")

    # F_SETOWN alone on a regular file has no effect yet: not read, not recorded.  An
    # O_PATH fd allows no fcntl, and holds no lock (the lock is its file's other open's).
    assert (got("setown").owner, got("setown").locks) == (None, [])
    assert (got("opath").owner, got("opath").locks, got("opath").access) == (None, [], "path")

    # The shared description: the root's flock, and the child's POSIX lock, which only
    # the child's fdinfo lists; each once, though both fds list the flock.
    shared = got("inherited")
    assert files_of(image, info["child"])[info["inherited"]].id == shared.id
    assert no_text(shared.locks) == [
        lock("FLOCK", "WRITE", pid, node("inherited"), 0, None),
        lock("POSIX", "WRITE", info["child"], node("inherited"), 20, 29),
    ]


def test_show_presents_locks_and_owners(state_tree: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "state.ackpt"
    capture(state_tree, dest, None)
    info = state_tree.info
    pid = info["pid"]
    show = [sys.executable, "-m", "asyckpt", "show", str(dest)]
    text = subprocess.run(show, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) > 3 and words[1] == str(pid) and words[2][:-1].rstrip("rwupe").isdigit():
            rows[int(words[2].rstrip("rwupe"))] = line
    assert rows[info["posix"]].endswith("[locks: POSIX WRITE 0-EOF]")
    assert rows[info["ofd"]].endswith("[locks: OFDLCK WRITE 10-29]")
    assert rows[info["inherited"]].endswith("[locks: FLOCK WRITE 0-EOF, POSIX WRITE 20-29]")
    assert f"[owner: pgrp {info['pgrp']} sig {int(signal.SIGUSR1)} async]" in rows[info["sock"]]
    assert f"[owner: tid {pid} async]" in rows[info["pipe_w"]]
    assert "owner" not in rows[info["setown"]] and "locks" not in rows[info["setown"]]

    doc = json.loads(
        subprocess.run([*show, "--json"], capture_output=True, text=True, timeout=60).stdout
    )
    task = next(t for t in doc["tasks"] if t["pid"] == pid)
    by_fd = {e["fd"]: e["file"] for e in task["fds"]}
    jfiles = {f["id"]: f for f in doc["files"]}
    ofd = jfiles[by_fd[info["ofd"]]]
    node = info["nodes"][str(info["ofd"])]
    assert [{k: v for k, v in x.items() if k != "text"} for x in ofd["locks"]] == [
        {
            "type": "OFDLCK",
            "mode": "ADVISORY",
            "access": "WRITE",
            "pid": -1,
            "dev": node["dev"],
            "ino": node["ino"],
            "start": 10,
            "end": 29,
        }
    ]
    assert ofd["owner"] is None
    uid, euid = info["sock_uids"]
    assert jfiles[by_fd[info["sock"]]]["owner"] == {
        "pid": info["pgrp"],
        "type": "pgrp",
        "signal": int(signal.SIGUSR1),
        "async_io": True,
        "uid": uid,
        "euid": euid,
    }


def test_state_text() -> None:
    posix = parse_lock("1: POSIX  ADVISORY  WRITE 14773 fe:00:2146786 5 14")
    flock = parse_lock("2: FLOCK  ADVISORY  READ 19086 00:10:1038 0 EOF")
    owner = Owner(pid=7, type="pid", signal=12, async_io=True, uid=0, euid=0)
    assert state_text([], None) == ""
    assert state_text([posix, flock, parse_lock("garbage")], None) == (
        "locks: POSIX WRITE 5-14, FLOCK READ 0-EOF, garbage"
    )
    assert state_text([posix], owner) == "locks: POSIX WRITE 5-14; owner: pid 7 sig 12 async"
    assert state_text([], Owner(pid=9, type="tid", signal=0, async_io=False)) == "owner: tid 9"


def test_the_fallback_reads_the_same_owner() -> None:
    # The C reader's fd_owner and the fcntl fallback, on one real pipe of ours.
    r, w = os.pipe()
    pidfd = os.pidfd_open(os.getpid())
    try:
        assert fd_owner(r) == _fd_owner_py(r) == (0, 0, 0, None, None)
        fcntl.fcntl(r, 15, struct.pack("ii", 2, os.getpgrp()))  # F_SETOWN_EX, F_OWNER_PGRP
        fcntl.fcntl(r, 10, signal.SIGUSR1)  # F_SETSIG
        want = fd_owner(r)
        assert want[:3] == (2, os.getpgrp(), signal.SIGUSR1)
        assert want[3:] in ((os.getuid(), os.geteuid()), (None, None))
        assert _fd_owner_py(r) == want
        assert fd_owner_at(pidfd, r) == _fd_owner_at_py(pidfd, r) == want
        opath = os.open("/", os.O_PATH)
        try:
            for read in (fd_owner, _fd_owner_py):
                with pytest.raises(OSError, match="Bad file descriptor"):
                    read(opath)
        finally:
            os.close(opath)
    finally:
        for fd in (r, w, pidfd):
            os.close(fd)


@pytest.mark.parametrize("strict", [False, True])
def test_an_owner_that_cannot_be_read_costs_the_owner_not_the_capture(strict: bool) -> None:
    # A real refusal: the owner of an fd of a process that has exited (ESRCH from
    # pidfd_open), as pidfd_getfd's EPERM would be without ptrace access.
    from asyckpt._build import RecordBuilder
    from asyckpt._kernel import kcmp_files
    from asyckpt._plugins.session import HandlerContext

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    builder = RecordBuilder(
        asyckpt.load_handlers(autoload=False),
        compare_files=kcmp_files,
        read_mountinfo=lambda pid: "",
        strict=strict,
    )
    ctx = HandlerContext(child.pid)
    try:
        if strict:
            with pytest.raises(asyckpt.NoSuchProcess) as exc_info:
                builder._io_owner(ctx, child.pid, 3, 0)
            assert (exc_info.value.pid, exc_info.value.fd) == (child.pid, 3)
        else:
            owner, error = builder._io_owner(ctx, child.pid, 3, 0)
            assert owner is None
            assert error == "I/O owner: No such process"
    finally:
        ctx._close()
        builder.close()
