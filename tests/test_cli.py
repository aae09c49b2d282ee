"""The asyckpt command: exit codes, one-line errors, and nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import SPAWN_TREE, Tree, asyckpt_cgroups, running

ASYCKPT = [sys.executable, "-m", "asyckpt"]


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ASYCKPT + list(args), capture_output=True, text=True, timeout=120, **kw)


# asyckpt's own handlers only, whatever plugins are installed: the tests of generic
# records need fds nobody handles (the demo tree's and the zoo's pipes and sockets).
OWN_HANDLERS = {**os.environ, "ASYCKPT_DISABLE_PLUGIN_AUTOLOAD": "1"}


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("asyckpt: error: ") and text in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_demo_tree_without_pid(tmp_path: Path) -> None:
    proc = run("tree", "-o", "demo.ackpt", cwd=tmp_path, env=OWN_HANDLERS)
    assert proc.returncode == 0, proc.stderr
    assert "started a demo tree at pid" in proc.stdout
    assert "the tree was moved into /sys/fs/cgroup/freezer/asyckpt-" in proc.stdout
    demo_pid = int(proc.stdout.split("pid ", 1)[1].split()[0])
    assert not Path(f"/proc/{demo_pid}").exists()  # killed afterwards
    assert "recorded generically" in proc.stderr  # its pipes and sockets
    show = run("show", str(tmp_path / "demo.ackpt"))
    assert show.returncode == 0 and "/etc/hostname" in show.stdout


def test_tree_show_and_json_contract(zoo: Tree, tmp_path: Path) -> None:
    image = tmp_path / "z.ackpt"
    proc = run("tree", str(zoo.pid), "-o", str(image), env=OWN_HANDLERS)
    assert proc.returncode == 0, proc.stderr
    table = run("show", str(image))
    assert table.returncode == 0
    assert f"# pid {zoo.pid}" in table.stdout and "(deleted)" in table.stdout

    doc = json.loads(run("show", str(image), "--json").stdout)
    for key in ("format_version", "root_pid", "freezer", "stats", "tasks", "files"):
        assert key in doc
    assert doc["root_pid"] == zoo.pid and doc["freezer"] == "cgroup-v1"
    assert set(doc["stats"]) >= {"freezing_ms", "frozen_ms", "tasks", "fds", "files"}
    # The warning counts the generic records per kind, as the image does.
    kinds = ", ".join(f"{k} {v}" for k, v in doc["stats"]["generic"].items())
    assert "pipe" in kinds and f"(no handler for them): {kinds}" in proc.stderr
    task = doc["tasks"][0]
    assert set(task) >= {"pid", "ppid", "comm", "fd_table", "fds"}
    assert set(task["fds"][0]) >= {"fd", "file", "cloexec"}
    file = doc["files"][0]
    assert set(file) >= {
        "id",
        "type",
        "handler",
        "flags",
        "pos",
        "path",
        "mnt_id",
        "dev",
        "ino",
        "deleted",
    }
    assert all(isinstance(f["flags"], int) for f in doc["files"])
    # A task whose table is shared (the CLONE_FILES child) still lists its fds.
    clone = next(t for t in doc["tasks"] if t["pid"] == zoo.info["clone"])
    assert clone["fd_table"] == task["fd_table"] and clone["fds"] == task["fds"]


@pytest.mark.parametrize(
    ("pid", "message"),
    [
        ("4194999", "no such process"),
        ("2", "kernel thread"),
        ("1", "init"),
        (str(os.getpid()), "asyckpt itself"),  # pytest is an ancestor of the asyckpt process
        ("0", "not a valid pid"),
    ],
)
def test_bad_target(pid: str, message: str, tmp_path: Path) -> None:
    proc = run("tree", pid, "-o", str(tmp_path / "x.ackpt"))
    assert_one_line_error(proc, 3, message)
    assert list(tmp_path.iterdir()) == []


def test_other_user_without_privilege(zoo: Tree) -> None:
    from asyckpt._cli import main

    # pytest's tmp_path sits in 0700 directories nobody cannot enter.
    out = Path(tempfile.mkdtemp(prefix="asyckpt-test-"))
    out.chmod(0o777)
    try:
        _run_as_nobody(main, zoo, out)
    finally:
        shutil.rmtree(out)


def _run_as_nobody(main: Any, zoo: Tree, out: Path) -> None:
    # The interpreter lives under /root, out of nobody's reach, so fork this already
    # loaded process and drop to nobody in the child instead of exec'ing a new one.
    # Whatever the child will import must be imported before it drops to nobody (the
    # standard library is under /root too): loading the handlers does that.
    import asyckpt._api  # noqa: F401  (and with it trio and the capture pipeline)
    from asyckpt._plugins.loading import load_handlers

    load_handlers()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 99
        try:
            sys.stderr = os.fdopen(w, "w")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(["tree", str(zoo.pid), "-o", str(out / "x.ackpt")])
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    assert_one_line_error(subprocess.CompletedProcess([], code, "", err), 4, "another user")
    assert list(out.iterdir()) == []


def test_unwritable_output(zoo: Tree, tmp_path: Path) -> None:
    proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "missing" / "x.ackpt"))
    assert_one_line_error(proc, 5, "does not exist")
    proc = run("tree", str(zoo.pid), "-o", str(tmp_path))
    assert_one_line_error(proc, 5, "is a directory")
    assert all(running(pid) for pid in zoo.pids())


def test_existing_output_needs_force(zoo: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "x.ackpt"
    dest.write_text("keep me")
    proc = run("tree", str(zoo.pid), "-o", str(dest))
    assert_one_line_error(proc, 5, "--force")
    assert dest.read_text() == "keep me"
    proc = run("tree", str(zoo.pid), "-o", str(dest), "--force", "-q")
    assert proc.returncode == 0 and proc.stdout == ""
    assert dest.read_bytes().startswith(b"\x89ACKPT")
    assert dest.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ackpt"]


def test_strict(zoo: Tree, tmp_path: Path) -> None:
    proc = run("tree", str(zoo.pid), "-o", str(tmp_path / "x.ackpt"), "--strict", env=OWN_HANDLERS)
    assert_one_line_error(proc, 8, "no handler claims this")
    assert f"pid={zoo.pid}" in proc.stderr and "fd=" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (b"", 6, "truncated"),
        (b"hello world\n", 6, "not an asyckpt image"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 6, "not an asyckpt image"),
        (b"\x89ACKPT\r\n\x1a\n\0\0\0\x09", 6, "format version 9"),
        (b"\x89ACKPT\r\n\x1a\n\0\0\0\x01\0\0\0\x10abc", 6, "truncated"),
    ],
)
def test_show_rejects_bad_files(content: bytes, code: int, message: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ackpt"
    bad.write_bytes(content)
    assert_one_line_error(run("show", str(bad)), code, message)


def test_show_rejects_truncated_and_missing(zoo: Tree, tmp_path: Path) -> None:
    image = tmp_path / "z.ackpt"
    assert run("tree", str(zoo.pid), "-o", str(image), "-q").returncode == 0
    data = image.read_bytes()
    image.write_bytes(data[: len(data) - 7])
    assert_one_line_error(run("show", str(image)), 6, "truncated")
    assert_one_line_error(run("show", str(tmp_path / "nope")), 6, "No such file")
    assert_one_line_error(run("show", str(tmp_path)), 6, "is a directory")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_frozen_thaws(signum: int, spawn: Any, tmp_path: Path) -> None:
    tree = spawn(SPAWN_TREE, "4", "1500")
    dest = tmp_path / "x.ackpt"
    proc = subprocess.Popen(
        [*ASYCKPT, "tree", str(tree.pid), "-o", str(dest)], stderr=subprocess.PIPE, text=True
    )
    state = Path(f"/sys/fs/cgroup/freezer/asyckpt-{proc.pid}-{tree.pid}/freezer.state")
    # asyckpt is stopped while the freezer state is read, and signalled only if it is
    # FROZEN then: the signal lands while the tree is frozen however loaded the machine is
    # (read unstopped, the capture could end between the read and the signal).
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail("the capture ended before the tree was seen frozen")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            frozen = state.read_text().strip() == "FROZEN"
        except OSError:
            frozen = False
        if frozen:
            break
        os.kill(proc.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            pytest.fail("the tree was never seen frozen")
    try:
        proc.send_signal(signum)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not asyckpt_cgroups()
    assert all(running(pid) for pid in tree.pids())
    assert list(tmp_path.iterdir()) == []


def test_cli_modes_match_the_freezer() -> None:
    # The CLI lists the modes itself so that `show` need not import the freezer.
    from asyckpt._cli import FREEZER_MODES as cli_modes
    from asyckpt._freeze import FREEZER_MODES

    assert cli_modes == FREEZER_MODES


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--freeze-timeout", "0"], "not a positive number of seconds"),
        (["--freeze-timeout", "soon"], "not a positive number of seconds"),
        (["--freeze", "frozen"], "is not one of auto, cgroup:PATH"),
        (["--freeze", "cgroup:"], "is not one of auto, cgroup:PATH"),
    ],
)
def test_bad_freeze_options_are_usage_errors(args: list[str], message: str) -> None:
    proc = run("tree", "1", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_command_exits_at_once_with_every_byte_written(tmp_path: Path) -> None:
    """The command skips the interpreter's teardown (os._exit): what it printed is all
    there, whatever way it ended, with main's or argparse's exit code."""
    version = run("--version")
    assert (version.returncode, version.stdout.strip()) == (0, "asyckpt 0.1.0")
    helped = run("--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: asyckpt")
    usage = run("bogus")
    assert usage.returncode == 2
    assert "invalid choice" in usage.stderr
    missing = run("show", str(tmp_path / "none.ackpt"))
    assert missing.returncode == 6
    # A long output, through a pipe and to its end (the demo's image, shown as JSON).
    demo = run("tree", "-o", str(tmp_path / "d.ackpt"), "-q")
    assert demo.returncode == 0, demo.stderr
    shown = run("show", str(tmp_path / "d.ackpt"), "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["stats"]["fds"] > 0
    # A reader that leaves early is no error, and no noise.
    head = subprocess.run(
        f"{' '.join(ASYCKPT)} show {tmp_path / 'd.ackpt'} | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert head.stdout == "image: roo"
    assert head.stderr == ""
