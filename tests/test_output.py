"""Where the image goes: device nodes, FIFOs and sockets at -o are never touched, the
image has no name until it is complete (SIGKILL at any moment leaves nothing), -o -
streams it, and the exit code always agrees with what is at -o, whatever signal comes
when."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asyckpt._errors import ImageError, OutputError
from asyckpt._image import ImageWriter, read_image
from asyckpt._target import path_refusal, stream_refusal

from .conftest import SPAWN_TREE, Tree, asyckpt_cgroups, running, task_state
from .test_image_format import make_body, make_header, make_trailer

ASYCKPT = [sys.executable, "-m", "asyckpt"]

# How many random moments the randomized tests try (ASYCKPT_TEST_TRIALS=100 for a soak;
# ASYCKPT_TEST_SEED to replay one).
TRIALS = int(os.environ.get("ASYCKPT_TEST_TRIALS", "20"))

NOISE = ("Traceback", "Exception ignored", "KeyboardInterrupt")


# --- the judgement, on literal modes ------------------------------------------------------

REG, LNK, DIR = stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFDIR | 0o755
CHR, BLK, FIFO, SOCK = stat.S_IFCHR | 0o666, stat.S_IFBLK | 0o660, stat.S_IFIFO, stat.S_IFSOCK


@pytest.mark.parametrize(
    ("mode", "force", "refusal"),
    [
        (None, False, None),
        (None, True, None),
        (REG, False, "exists; use --force to replace it"),
        (REG, True, None),
        (LNK, False, "exists; use --force to replace it"),
        (LNK, True, None),
        (DIR, False, "is a directory"),
        (DIR, True, "is a directory"),
        (CHR, True, "is a character device; only a regular file or a symlink is ever replaced"),
        (CHR, False, "is a character device; only a regular file or a symlink is ever replaced"),
        (BLK, True, "is a block device; only a regular file or a symlink is ever replaced"),
        (FIFO, True, "is a FIFO; only a regular file or a symlink is ever replaced"),
        (SOCK, True, "is a socket; only a regular file or a symlink is ever replaced"),
    ],
)
def test_path_refusal(mode: int | None, force: bool, refusal: str | None) -> None:
    assert path_refusal(mode, force=force) == refusal


@pytest.mark.parametrize(
    ("mode", "terminal", "refusal"),
    [
        (FIFO, False, None),
        (SOCK, False, None),
        (REG, False, None),
        (CHR, True, "is a terminal; redirect it to a file or a pipe"),
        (CHR, False, "is a character device; only a pipe, a socket or a regular file"),
        (BLK, False, "is a block device; only a pipe, a socket or a regular file"),
        (DIR, False, "is a directory; only a pipe, a socket or a regular file"),
    ],
)
def test_stream_refusal(mode: int, terminal: bool, refusal: str | None) -> None:
    assert stream_refusal(mode, terminal=terminal) == refusal


# --- what is at -o: made by the test, in tmp_path ----------------------------------------


def _char_device(path: Path) -> Path:
    # Made here (major 1, minor 3: what /dev/null is), never the system's own node.
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path, 0o600)
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    made: list[socket.socket] = []

    def bind(path: Path) -> Path:
        s = socket.socket(socket.AF_UNIX)
        made.append(s)
        s.bind(str(path))
        return path

    yield bind
    for s in made:
        s.close()


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return st.st_ino, st.st_mode, st.st_rdev, st.st_mtime_ns


KINDS = ["chardev", "fifo", "socket", "dir"]


def _make(kind: str, path: Path, unix_socket: Callable[[Path], Path]) -> Path:
    if kind == "chardev":
        return _char_device(path)
    if kind == "fifo":
        return _fifo(path)
    if kind == "socket":
        return unix_socket(path)
    path.mkdir()
    return path


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_writer_never_replaces_a_special_file(
    kind: str, force: bool, tmp_path: Path, unix_socket: Callable[[Path], Path]
) -> None:
    dest = _make(kind, tmp_path / "out", unix_socket)
    before = _identity(dest)
    with pytest.raises(OutputError, match="is a ") as info:
        ImageWriter(dest, force=force)
    assert info.value.exit_code == 5
    assert _identity(dest) == before
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("kind", ["chardev", "fifo", "socket", "dir"])
def test_a_special_file_swapped_in_before_the_link_is_left_untouched(
    kind: str, tmp_path: Path, unix_socket: Callable[[Path], Path]
) -> None:
    """Checked again at the link: a regular file at -o when the capture began, replaced
    by a device node (or FIFO, socket, directory) before the image is complete."""
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    writer = ImageWriter(dest, force=True)
    writer.write_body(make_body())
    dest.unlink()
    _make(kind, dest, unix_socket)
    before = _identity(dest)
    with pytest.raises(OutputError, match=r"only a regular file|is a directory"):
        writer.finish(make_header(), make_trailer())
    assert _identity(dest) == before
    assert os.listdir(tmp_path) == ["out"]


def test_a_device_node_swapped_in_after_the_last_check_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest race: a device node takes the name between the last lstat and the
    exchange.  The lstat is made to answer what it saw before the swap; the exchange,
    the judgement of what it took out and the exchange back are the kernel's."""
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    writer = ImageWriter(dest, force=True)
    writer.write_body(make_body())
    stale = os.lstat(dest)
    dest.unlink()
    _char_device(dest)
    before = _identity(dest)
    monkeypatch.setattr(writer.target, "_lstat", lambda: stale)
    with pytest.raises(OutputError, match="is a character device"):
        writer.finish(make_header(), make_trailer())
    assert _identity(dest) == before
    assert os.listdir(tmp_path) == ["out"]


def test_force_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    dest = tmp_path / "out.ackpt"
    dest.symlink_to(elsewhere)
    writer = ImageWriter(dest, force=True)
    writer.write_body(make_body())
    writer.finish(make_header(), make_trailer())
    assert not dest.is_symlink()
    assert read_image(dest).trailer.records == 9
    assert elsewhere.read_bytes() == b"untouched"
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "out.ackpt"]


def test_force_onto_a_name_that_appeared_meanwhile(tmp_path: Path) -> None:
    dest = tmp_path / "out.ackpt"
    writer = ImageWriter(dest, force=True)
    writer.write_body(make_body())
    dest.write_bytes(b"someone else's, replaceable with --force")
    writer.finish(make_header(), make_trailer())
    assert read_image(dest).trailer.records == 9
    assert os.listdir(tmp_path) == ["out.ackpt"]


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(ASYCKPT + list(args), stderr=subprocess.PIPE, timeout=120, **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess[bytes], code: int, text: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("asyckpt: error: ") and text in err, err


@pytest.mark.parametrize("force", [[], ["--force"]])
@pytest.mark.parametrize("kind", KINDS)
def test_cli_refuses_a_special_file_before_freezing(
    kind: str,
    force: list[str],
    zoo: Tree,
    tmp_path: Path,
    unix_socket: Callable[[Path], Path],
) -> None:
    dest = _make(kind, tmp_path / "out", unix_socket)
    before = _identity(dest)
    proc = run("tree", str(zoo.pid), "-o", str(dest), *force)
    assert_one_line_error(proc, 5, f"{dest} is a")
    assert _identity(dest) == before
    assert os.listdir(tmp_path) == ["out"]
    assert all(running(pid) for pid in zoo.pids())


# --- -o -: a stream ----------------------------------------------------------------------


def test_stream_through_a_pipe(zoo: Tree, tmp_path: Path) -> None:
    proc = run("tree", str(zoo.pid), "-o", "-")
    assert proc.returncode == 0, proc.stderr
    # The report goes to stderr: standard output is the image's alone.
    assert b"standard output: " in proc.stderr and b"tasks" in proc.stderr
    image = tmp_path / "piped.ackpt"
    image.write_bytes(proc.stdout)
    assert read_image(image).header.root_pid == zoo.pid
    assert os.listdir(tmp_path) == ["piped.ackpt"]


def test_stream_into_a_regular_file(zoo: Tree, tmp_path: Path) -> None:
    image = tmp_path / "redirected.ackpt"
    with image.open("wb") as out:
        proc = run("tree", str(zoo.pid), "-o", "-", "-q", stdout=out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert read_image(image).header.root_pid == zoo.pid


def test_stream_refuses_a_terminal(zoo: Tree, tmp_path: Path) -> None:
    leader, terminal = os.openpty()
    try:
        proc = run("tree", str(zoo.pid), "-o", "-", stdout=terminal)
    finally:
        os.close(terminal)
        os.close(leader)
    assert_one_line_error(proc, 5, "standard output is a terminal")
    assert not asyckpt_cgroups()
    assert all(running(pid) for pid in zoo.pids())


def test_stream_whose_reader_leaves_is_an_output_error(spawn: Any) -> None:
    tree = spawn(SPAWN_TREE, "2", "1500")
    r, w = os.pipe()
    os.close(r)  # nobody will read
    try:
        proc = run("tree", str(tree.pid), "-o", "-", stdout=w)
    finally:
        os.close(w)
    assert_one_line_error(proc, 5, "closed by its reader")
    assert not asyckpt_cgroups()


# --- a filesystem without O_TMPFILE: a hidden name, removed by the guardian -------------


@pytest.fixture(params=["no-rename2", "noreplace"])
def no_tmpfile_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """An empty directory on a filesystem without O_TMPFILE nor RENAME_EXCHANGE, with or
    without RENAME_NOREPLACE: a FUSE filesystem served by tests/notmpfile_fs.py,
    unmounted afterwards."""
    mnt = tmp_path_factory.mktemp("notmpfile")
    flags = ["--noreplace"] if request.param == "noreplace" else []
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "notmpfile_fs.py"), str(mnt), *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n", "the FUSE server did not start"
        yield mnt
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(bytes(mnt), MNT_DETACH)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


MNT_DETACH = 2


def test_the_fallback_filesystem_really_lacks_o_tmpfile(no_tmpfile_dir: Path) -> None:
    with pytest.raises(OSError, match="not supported") as info:
        os.open(no_tmpfile_dir, os.O_TMPFILE | os.O_RDWR, 0o600)
    assert info.value.errno == errno.EOPNOTSUPP


def test_fallback_writes_under_a_hidden_name_until_complete(no_tmpfile_dir: Path) -> None:
    dest = no_tmpfile_dir / "out.ackpt"
    writer = ImageWriter(dest)
    writer.write_body(make_body())
    (temp,) = os.listdir(no_tmpfile_dir)  # the body's spool has no name
    assert temp.startswith(".out.ackpt.asyckpt-") and temp.endswith(".tmp")
    assert stat.S_IMODE(os.stat(no_tmpfile_dir / temp).st_mode) == 0o600
    writer.finish(make_header(), make_trailer())
    assert os.listdir(no_tmpfile_dir) == ["out.ackpt"]
    assert read_image(dest).trailer.records == 9


def test_fallback_abort_and_refusal_leave_nothing(no_tmpfile_dir: Path) -> None:
    writer = ImageWriter(no_tmpfile_dir / "out.ackpt")
    writer.write_body(make_body())
    writer.abort()
    assert os.listdir(no_tmpfile_dir) == []
    writer = ImageWriter(no_tmpfile_dir / "out.ackpt")
    (no_tmpfile_dir / "out.ackpt").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="exists"):
        writer.finish(make_header(), make_trailer())
    assert os.listdir(no_tmpfile_dir) == ["out.ackpt"]
    assert (no_tmpfile_dir / "out.ackpt").read_bytes() == b"someone else's"


def test_fallback_force_replaces_without_rename_exchange(no_tmpfile_dir: Path) -> None:
    dest = no_tmpfile_dir / "out.ackpt"
    dest.write_bytes(b"old")
    writer = ImageWriter(dest, force=True)
    writer.write_body(make_body())
    writer.finish(make_header(), make_trailer())
    assert os.listdir(no_tmpfile_dir) == ["out.ackpt"]
    assert read_image(dest).trailer.records == 9


# --- SIGKILL at random moments: nothing new is left ---------------------------------------


def _settle(asyckpt_pid: int, tree: Tree, directory: Path, allowed: set[str]) -> set[str]:
    """Wait for the guardians of a killed asyckpt: its cgroups gone, the tree running,
    only ``allowed`` names in ``directory``; returns what is there in the end."""
    deadline = time.monotonic() + 10
    while True:
        left = {p.name for p in directory.iterdir()}
        busy = [cg for cg in asyckpt_cgroups() if cg.name.startswith(f"asyckpt-{asyckpt_pid}-")]
        running = all(task_state(pid) in "SR" for pid in tree.pids())
        if (left <= allowed and not busy and running) or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def _timed_run(argv: list[str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - started


def _kill_at_random_moments(tree: Tree, out: Path, existing: bool, trials: int) -> None:
    """Run the capture ``trials`` times into ``out``, each SIGKILLed at a random moment:
    what is left must be the old file (or nothing) or the complete image, nothing else."""
    dest = out / "x.ackpt"
    argv = [*ASYCKPT, "tree", str(tree.pid), "-o", str(dest), "-q", "--force"]
    duration = _timed_run(argv)
    rng = random.Random(os.environ.get("ASYCKPT_TEST_SEED"))
    outcomes = {"nothing": 0, "old": 0, "image": 0}
    for _ in range(trials):
        for p in out.iterdir():
            p.unlink()
        if existing:
            dest.write_bytes(b"old")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, duration * 1.1))
        proc.kill()
        proc.wait()
        left = _settle(proc.pid, tree, out, {"x.ackpt"})
        assert left <= {"x.ackpt"}, f"left behind: {left}"
        assert not [cg for cg in asyckpt_cgroups() if f"-{proc.pid}-" in cg.name]
        if not left:
            assert not existing, "the old file was removed, no image in its place"
            outcomes["nothing"] += 1
        elif dest.read_bytes() == b"old":
            outcomes["old"] += 1
        else:
            read_image(dest)  # complete and valid, never a part
            outcomes["image"] += 1
    print(outcomes)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "force-replace"])
def test_sigkill_at_random_moments_leaves_nothing_new(
    existing: bool, spawn: Any, tmp_path: Path
) -> None:
    tree = spawn(SPAWN_TREE, "3", "1500")
    # The common case gets every trial, the replacement a quarter.
    _kill_at_random_moments(tree, tmp_path, existing, TRIALS // 4 if existing else TRIALS)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "force-replace"])
def test_sigkill_without_o_tmpfile_leaves_nothing_new(
    existing: bool, spawn: Any, no_tmpfile_dir: Path
) -> None:
    """The hidden temporary name is removed by the guardian."""
    tree = spawn(SPAWN_TREE, "3", "1500")
    _kill_at_random_moments(tree, no_tmpfile_dir, existing, max(TRIALS // 8, 2))


# --- signals at random moments: the exit code tells the truth -------------------------------


def _handles_signals(pid: int) -> bool:
    """asyckpt's own handlers are in place (SIGHUP caught: only they catch it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught & (1 << (signal.SIGHUP - 1)))


def test_signals_at_random_moments(spawn: Any, tmp_path: Path) -> None:
    tree = spawn(SPAWN_TREE, "3", "1500")
    dest = tmp_path / "x.ackpt"
    argv = [*ASYCKPT, "tree", str(tree.pid), "-o", str(dest)]
    duration = _timed_run(argv)
    dest.unlink()
    rng = random.Random(os.environ.get("ASYCKPT_TEST_SEED"))
    outcomes: dict[tuple[str, int], int] = {}
    for trial in range(TRIALS):
        signum = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)[trial % 3]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started = time.monotonic()
        while not _handles_signals(proc.pid) and proc.poll() is None:
            time.sleep(0.001)
        # Half over the whole run, half over its last part (the final write and link).
        elapsed = time.monotonic() - started
        rest = max(duration - elapsed, 0.01)
        time.sleep(rng.uniform(0, rest) if trial % 2 else rng.uniform(rest * 0.6, rest * 1.1))
        if proc.poll() is None:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        text = err.decode()
        assert not any(n in text for n in NOISE), text
        if proc.returncode == 130:
            assert not dest.exists(), "exit 130, but an image was written"
            assert text == "asyckpt: interrupted; nothing was written and the tree is thawed\n"
        else:
            assert proc.returncode == 0, text
            read_image(dest)
            for line in text.splitlines():
                assert "came after the image was complete; it is kept" in line, text
            dest.unlink()
        assert not asyckpt_cgroups()
        assert all(running(pid) for pid in tree.pids())
        outcomes[(signal.Signals(signum).name, proc.returncode)] = (
            outcomes.get((signal.Signals(signum).name, proc.returncode), 0) + 1
        )
    print(outcomes)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_just_after_the_link_keeps_the_image(
    signum: int, zoo: Tree, tmp_path: Path
) -> None:
    dest = tmp_path / "x.ackpt"
    for _ in range(10):  # until the signal is sent before asyckpt has exited
        proc = subprocess.Popen(
            [*ASYCKPT, "tree", str(zoo.pid), "-o", str(dest), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        while not dest.exists() and proc.poll() is None:
            pass
        sent = proc.poll() is None
        if sent:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        read_image(dest)
        dest.unlink()
        if sent:
            break
    # Unless it came after the last word too: then nothing at all is said.
    name = signal.Signals(signum).name
    late = f"asyckpt: note: {name} came after the image was complete; it is kept\n"
    assert err.decode() in ("", late)


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_graph_output_never_replaces_a_device_node(force: list[str], tmp_path: Path) -> None:
    """``graph -o`` writes its pictures the same way as the image."""
    from .test_endpoints import literal_image

    literal_image(tmp_path)
    dest = _char_device(tmp_path / "x.dot")
    before = _identity(dest)
    proc = run("graph", str(tmp_path / "e.ackpt"), "-o", str(dest), *force)
    assert_one_line_error(proc, 5, "is a character device")
    assert _identity(dest) == before
    assert sorted(os.listdir(tmp_path)) == ["e.ackpt", "x.dot"]


def test_fallback_keeps_other_spools_out_of_the_directory(
    no_tmpfile_dir: Path, tmp_path: Path
) -> None:
    writer = ImageWriter(tmp_path / "x.ackpt")
    assert writer.spool_dir == str(tmp_path)
    writer.abort()
    writer = ImageWriter(no_tmpfile_dir / "x.ackpt")
    assert writer.spool_dir is None  # the temporary directory
    writer.abort()


def test_a_stream_whose_reader_stalls_still_stops_at_a_signal(spawn: Any, tmp_path: Path) -> None:
    """The image (megabytes) is far larger than the pipe: asyckpt waits for room, and a
    signal then still ends it (exit 130), the stream cut short of its digest."""
    tree = spawn(SPAWN_TREE, "2", "1500")
    proc = subprocess.Popen(
        [*ASYCKPT, "tree", str(tree.pid), "-o", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        # Readable: the image has begun; it cannot all fit, so asyckpt waits for room.
        assert select.select([proc.stdout], [], [], 60)[0], "no image began"
        time.sleep(0.2)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)  # without reading: the reader stays stalled
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:  # stuck: the test fails, but leaves nothing running
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.decode() == "asyckpt: interrupted; nothing was written and the tree is thawed\n"
    cut = tmp_path / "cut.ackpt"
    cut.write_bytes(out)
    with pytest.raises(ImageError):
        read_image(cut)
    assert not asyckpt_cgroups()


def test_stream_into_a_socket(zoo: Tree, tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen(
            [*ASYCKPT, "tree", str(zoo.pid), "-o", "-", "-q"], stdout=theirs.fileno()
        )
        theirs.close()
        data = b"".join(iter(lambda: ours.recv(1 << 16), b""))
        assert proc.wait(timeout=60) == 0
    image = tmp_path / "socket.ackpt"
    image.write_bytes(data)
    assert read_image(image).header.root_pid == zoo.pid


def test_tree_into_show_through_a_pipe(zoo: Tree) -> None:
    """``asyckpt tree PID -o - | asyckpt show -``: two real processes and a real pipe."""
    tree = subprocess.Popen(
        [*ASYCKPT, "tree", str(zoo.pid), "-o", "-", "-q"], stdout=subprocess.PIPE
    )
    assert tree.stdout is not None
    show = subprocess.run([*ASYCKPT, "show", "-"], stdin=tree.stdout, capture_output=True)
    tree.stdout.close()
    assert tree.wait(timeout=60) == 0
    assert show.returncode == 0, show.stderr
    assert f"# pid {zoo.pid}".encode() in show.stdout


def test_undo_removes_only_the_temporary_it_was_told_of(tmp_path: Path) -> None:
    """The guardian's (and ``recover``'s) side: a name is removed while it holds the
    inode asyckpt made there, in the directory it wrote in; a dry run only says so."""
    from asyckpt._guardian import undo

    d = os.stat(tmp_path)
    ours = tmp_path / ".x.ackpt.asyckpt-0123456789ab.tmp"
    ours.write_bytes(b"partial")
    theirs = tmp_path / ".x.ackpt.asyckpt-ba9876543210.tmp"
    theirs.write_bytes(b"someone else's, under a name asyckpt noted")
    st = os.stat(ours)
    steps = [
        ["unlink", str(tmp_path), d.st_dev, d.st_ino, ours.name, st.st_dev, st.st_ino],
        ["unlink", str(tmp_path), d.st_dev, d.st_ino, theirs.name, 0, 0],  # not its inode
    ]
    said: list[tuple[str, str]] = []
    assert undo(steps, act=False, say=lambda verb, path, pid, error: said.append((verb, path)))
    assert said == [("remove", str(ours))]
    assert ours.exists()
    assert undo(steps)
    assert not ours.exists() and theirs.exists()


WRITER = """
import os, sys, time
from asyckpt._image import ImageWriter
writer = ImageWriter(sys.argv[1])
print(writer.target._guard._guardian.pid, flush=True)
time.sleep(600)
"""


def test_recover_removes_a_temporary_whose_writer_and_guardian_both_died(
    no_tmpfile_dir: Path, tmp_path: Path
) -> None:
    """The hidden name's removal is in the undo plan on disk too: when asyckpt and its
    guardian both die, ``asyckpt recover`` removes it."""
    env = {**os.environ, "ASYCKPT_RUN_DIR": str(tmp_path / "run")}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(no_tmpfile_dir / "x.ackpt")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout is not None
        guardian = int(writer.stdout.readline())
        (temp,) = os.listdir(no_tmpfile_dir)
        # Ours, by pid; both stopped first, so neither sees the other die and undoes.
        os.kill(guardian, signal.SIGSTOP)
        os.kill(writer.pid, signal.SIGSTOP)
        writer.kill()
        os.kill(guardian, signal.SIGKILL)
        writer.wait()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{guardian}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # reaped by init once it is gone
    assert os.listdir(no_tmpfile_dir) == [temp]  # nobody removed it
    proc = subprocess.run(
        [*ASYCKPT, "recover"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert f"removed {no_tmpfile_dir / temp}" in proc.stdout
    assert os.listdir(no_tmpfile_dir) == []
