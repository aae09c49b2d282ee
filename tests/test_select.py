"""``asyckpt tree --name/--user``: the root picked by name or owner, on literal process
lists (the pure choice) and on real processes the tests start (psutil's view)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asyckpt._errors import AmbiguousTarget, NoSuchProcess
from asyckpt._image import read_image
from asyckpt._select import (
    SHOWN_CANDIDATES,
    Criteria,
    ProcView,
    parse_user,
    pick_root,
    process_view,
    select_root,
)

from .conftest import WORKLOADS

ASYCKPT = [sys.executable, "-m", "asyckpt"]
NAMED = WORKLOADS / "named.py"

# pid, ppid, name, uid.  asyckpt runs as 500, under a shell (400) under sshd (300).
SYSTEM = [
    ProcView(1, 0, "systemd", 0),
    ProcView(2, 0, "kthreadd", 0),
    ProcView(3, 2, "nginx", 0),  # a kernel thread, whatever its name
    ProcView(100, 1, "nginx", 0),  # master
    ProcView(101, 100, "nginx", 33),  # workers
    ProcView(102, 100, "nginx", 33),
    ProcView(200, 1, "postgres", 70),
    ProcView(201, 200, "postgres", 70),
    ProcView(202, 1, "postgres", 70),  # a second cluster
    ProcView(300, 1, "sshd", 0),
    ProcView(400, 300, "bash", 1000),
    ProcView(500, 400, "asyckpt", 0),
    ProcView(501, 500, "python3", 0),  # asyckpt's guardian
    ProcView(600, 400, "sleep", 1000),  # a job of that shell
    ProcView(700, 1, "cron", 0),
    ProcView(701, 700, "sh", 1000),
    ProcView(702, 701, "sleep", 1000),
]


@pytest.mark.parametrize(
    ("pattern", "uid", "root"),
    [
        ("nginx", None, 100),  # the master, not its workers nor the kernel thread
        ("ngin?", 0, 100),
        ("cr*", None, 700),
        ("sh", None, 701),
        ("python3", None, None),  # only asyckpt's own guardian: never a candidate
        ("bash", None, None),  # asyckpt's ancestor: never a candidate
        ("systemd", None, None),  # init: never
        ("kthreadd", None, None),
        ("asyckpt", None, None),
        (None, 70, "ambiguous"),
        ("postgres", None, "ambiguous"),
        ("NGINX", None, None),  # case matters, as in the kernel's names
        ("sleep", None, "ambiguous"),  # the shell's job, and cron's
        ("sleep", 1000, "ambiguous"),
        (None, 33, "ambiguous"),  # two workers, siblings: separate trees
        ("*sh*", None, 701),  # not sshd nor bash: asyckpt's ancestors
    ],
)
def test_pick_root(pattern: str | None, uid: int | None, root: int | str | None) -> None:
    criteria = Criteria(pattern, uid)
    if root is None:
        with pytest.raises(NoSuchProcess, match="no process matches"):
            pick_root(SYSTEM, criteria, 500)
    elif root == "ambiguous":
        with pytest.raises(AmbiguousTarget, match="separate process trees"):
            pick_root(SYSTEM, criteria, 500)
    else:
        assert pick_root(SYSTEM, criteria, 500).pid == root


def test_the_user_and_the_name_together() -> None:
    view = [*SYSTEM, ProcView(800, 1, "sleep", 0)]
    assert pick_root(view, Criteria("sleep", 0), 500).pid == 800
    assert pick_root(view, Criteria("sh", 1000), 500).pid == 701
    with pytest.raises(AmbiguousTarget, match=r": 600 .*, 701 "):
        pick_root(view, Criteria(None, 1000), 500)  # 400, asyckpt's shell, is not one


def test_ambiguity_lists_the_candidates_bounded() -> None:
    hostile = "\x1b[31mred\n"
    view = [ProcView(1, 0, "init", 0)] + [
        ProcView(10 + i, 1, hostile, 7) for i in range(SHOWN_CANDIDATES + 3)
    ]
    with pytest.raises(AmbiguousTarget) as info:
        pick_root(view, Criteria("*red*", None), 2**22)
    # Raw in the exception, as every error's names: the command escapes what it prints
    # (test_hostile_names_are_escaped_in_the_refusal).
    message = str(info.value)
    assert f"--name *red* matches 13 separate process trees: 10 ({hostile}, uid 7)" in message
    assert "19 (" in message and "20 (" not in message and "and 3 more" in message


def test_a_loop_in_a_racy_view_ends() -> None:
    # Pids are reused: a view read over time can hold a parent loop, which has no top.
    view = [ProcView(10, 11, "a", 0), ProcView(11, 10, "a", 0), ProcView(12, 12, "a", 0)]
    with pytest.raises(NoSuchProcess):
        pick_root(view, Criteria("a", None), 99)
    assert pick_root([*view, ProcView(13, 1, "a", 0)], Criteria("a", None), 99).pid == 13


def test_parse_user() -> None:
    assert parse_user("root") == 0
    assert parse_user("4242") == 4242
    assert parse_user(pwd.getpwuid(0).pw_name) == 0
    for bad in ("no-such-user-here", "-1", "4294967296", "١٢"):
        with pytest.raises(ValueError, match="no user named"):
            parse_user(bad)


# --- real processes ---------------------------------------------------------------------


def unique(tag: str) -> str:
    return f"ack{os.getpid() % 100000}{tag}"


def test_process_view_sees_real_processes(spawn: Any) -> None:
    uid = 3_000_000 + os.getpid() % 100_000
    tree = spawn(NAMED, unique("v"), str(uid), "2", unique("w"))
    view = {p.pid: p for p in process_view()}
    assert view[tree.pid] == ProcView(tree.pid, os.getpid(), unique("v"), uid)
    for child in tree.info["children"]:
        assert view[child] == ProcView(child, tree.pid, unique("w"), uid)
    assert view[os.getpid()].uid == os.getuid()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ASYCKPT + list(args), capture_output=True, text=True, timeout=120)


def test_tree_by_name_captures_the_topmost_match(spawn: Any, tmp_path: Path) -> None:
    name = unique("n")
    tree = spawn(NAMED, name, "0", "2")  # the children are named alike
    out = tmp_path / "n.ackpt"
    proc = run("tree", "--name", name[:-2] + "*", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"capturing pid {tree.pid} ({name})" in proc.stdout
    image = read_image(out)
    assert image.header.root_pid == tree.pid
    assert {t.pid for t in image.tasks} == {tree.pid, *tree.info["children"]}


def test_tree_by_user(spawn: Any, tmp_path: Path) -> None:
    uid = 3_000_000 + os.getpid() % 100_000
    tree = spawn(NAMED, unique("u"), str(uid), "1")
    out = tmp_path / "u.ackpt"
    proc = run("tree", "--user", str(uid), "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert read_image(out).header.root_pid == tree.pid
    # Another process of that user's, in a tree of its own: which one is ambiguous.
    other = spawn(NAMED, unique("o"), str(uid), "0")
    proc = run("tree", "--user", str(uid), "-o", str(tmp_path / "v.ackpt"))
    assert proc.returncode == 3 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"asyckpt: error: --user {uid} matches 2 separate process trees: ")
    assert f"{tree.pid} ({unique('u')}, uid {uid})" in line
    assert f"{other.pid} ({unique('o')}, uid {uid})" in line
    assert not (tmp_path / "v.ackpt").exists()
    # Narrowed by name, it is not.
    proc = run("tree", "--user", str(uid), "--name", unique("o"), "-o", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert read_image(out).header.root_pid == other.pid


def test_hostile_names_are_escaped_in_the_refusal(spawn: Any, tmp_path: Path) -> None:
    tag = unique("")[:9]
    first = spawn(NAMED, f"{tag}\\x1b[2J", "0", "0")
    second = spawn(NAMED, f"{tag}\\x07\\xff", "0", "0")
    proc = run("tree", "--name", f"{tag}*", "-o", str(tmp_path / "h.ackpt"))
    assert proc.returncode == 3
    (line,) = proc.stderr.splitlines()
    assert line.isprintable()
    assert f"{first.pid} ({tag}\\x1b[2J, uid 0)" in line
    assert f"{second.pid} ({tag}\\x07\\xff, uid 0)" in line


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tree", "--name", "no-such-process-*"], 3, "no process matches --name no-such-"),
        (["tree", "--user", "no-such-user-here"], 2, "no user named 'no-such-user-here'"),
        (["tree", "1", "--name", "x"], 2, "give a PID or --name/--user, not both"),
        (["tree", "1", "--user", "0"], 2, "give a PID or --name/--user, not both"),
        (["tree", "--name", "python*", "--user", "4294967295"], 3, "no process matches"),
    ],
)
def test_selection_errors(args: list[str], code: int, message: str) -> None:
    proc = run(*args)
    assert proc.returncode == code, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("asyckpt: error: ") and message in line


ZOMBIE_MAKER = """\
import ctypes, os, signal, sys
child = os.fork()
if child == 0:
    ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
    os._exit(0)
print(child, flush=True)
signal.pause()  # never reaps it
"""


def test_zombies_are_not_candidates() -> None:
    name = unique("z")
    parent = subprocess.Popen(
        [sys.executable, "-c", ZOMBIE_MAKER, name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        zombie = int(parent.stdout.readline())
        stat = Path(f"/proc/{zombie}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert zombie not in {p.pid for p in process_view()}
        with pytest.raises(NoSuchProcess):
            select_root(name, None)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()


IMPORTS_AFTER = """\
import contextlib, sys
from asyckpt._cli import main
with contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(sorted({m.split(".")[0] for m in sys.modules} & {"psutil", "pyroute2"}), file=sys.stderr)
"""


def imported_after(*argv: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER, *argv], capture_output=True, text=True, timeout=120
    )
    return proc.stderr.strip().splitlines()


def test_psutil_is_imported_only_to_select(spawn: Any, tmp_path: Path) -> None:
    name = unique("i")
    tree = spawn(NAMED, name, "0", "0")
    assert imported_after("--help") == ["[]"]
    assert imported_after("tree", "--help") == ["[]"]
    out = str(tmp_path / "i.ackpt")
    assert imported_after("tree", str(tree.pid), "-o", out, "-q") == ["[]"]
    assert imported_after("show", out) == ["[]"]
    assert imported_after("tree", "--name", name, "-o", out, "-q", "--force") == ["['psutil']"]
