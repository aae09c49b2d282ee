"""Files a task holds by reference, not through its fds (issue 13): working and root
directories, executable, memory mappings, namespaces, on a real tree
(tests/workloads/task_files.py), and the maps parser on literal text."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

import asyckpt
from asyckpt import FdFacts, File, HandlerContext, read_image
from asyckpt._escape import escape
from asyckpt._parts import NewFile, mappings
from asyckpt._plugins.contract import StatInfo
from asyckpt._procparse import FdInfo, parse_maps
from asyckpt._rows import MapRow, RawFd, TaskFilesRow, ThreadFilesRow, stat_fields
from asyckpt._taskfiles import TaskFileResolver
from asyckpt._taskread import _read_task_files_py, read_task_files
from asyckpt.testing import dispatch_with

from .conftest import WORKLOADS, Tree
from .test_capture import _body, capture
from .test_cli import run
from .test_ghosts import content_of
from .workloads.task_files import DATA, MEMFD_DATA, ODD_NAME

try:
    from asyckpt import _fdscan
except ImportError:  # pragma: no cover - CI builds the accelerator (test_ci)
    _fdscan = None  # type: ignore[assignment]

PARSERS = [pytest.param(parse_maps, id="python")]
if _fdscan is not None:
    PARSERS.append(pytest.param(_fdscan.parse_maps, id="c"))

D = os.makedev
MAPS = [
    # (what, line as the kernel writes it, (start, end, perms, offset, dev, ino, name))
    ("file", b"55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 26723"
     b"                      /usr/bin/python3.11",
     (0x55D0C0A00000, 0x55D0C0A02000, "r--p", 0, D(0xFE, 0), 26723, b"/usr/bin/python3.11")),
    ("spaces in the name", b"7f0000000000-7f0000001000 rw-s 00002000 08:11 12 "
     b"          /tmp/a dir/my  file ",
     (0x7F0000000000, 0x7F0000001000, "rw-s", 0x2000, D(8, 0x11), 12, b"/tmp/a dir/my  file ")),
    ("newline escaped", b"1000-2000 r-xp 00000000 fe:00 7 /tmp/new\\012line",
     (0x1000, 0x2000, "r-xp", 0, D(0xFE, 0), 7, b"/tmp/new\\012line")),
    ("deleted", b"7f829769b000-7f829769f000 r--s 00000000 fe:00 4325409"
     b"                    /tmp/tfw/mapped-data (deleted)",
     (0x7F829769B000, 0x7F829769F000, "r--s", 0, D(0xFE, 0), 4325409,
      b"/tmp/tfw/mapped-data (deleted)")),
    ("heap", b"55d0c1b3c000-55d0c1c5d000 rw-p 00000000 00:00 0"
     b"                          [heap]",
     (0x55D0C1B3C000, 0x55D0C1C5D000, "rw-p", 0, 0, 0, b"[heap]")),
    ("stack", b"7ffc6a3b1000-7ffc6a3d2000 rw-p 00000000 00:00 0 [stack]",
     (0x7FFC6A3B1000, 0x7FFC6A3D2000, "rw-p", 0, 0, 0, b"[stack]")),
    ("vdso", b"7ffc6a3f6000-7ffc6a3f8000 r-xp 00000000 00:00 0 [vdso]",
     (0x7FFC6A3F6000, 0x7FFC6A3F8000, "r-xp", 0, 0, 0, b"[vdso]")),
    ("vsyscall", b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]",
     (0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", 0, 0, 0, b"[vsyscall]")),
    ("anonymous", b"7f8298400000-7f8298403000 rw-p 00000000 00:00 0 ",
     (0x7F8298400000, 0x7F8298403000, "rw-p", 0, 0, 0, b"")),
    ("anonymous, no pad", b"7f8298400000-7f8298403000 ---p 00000000 00:00 0",
     (0x7F8298400000, 0x7F8298403000, "---p", 0, 0, 0, b"")),
    ("memfd", b"7f8298403000-7f8298405000 r--s 00000000 00:01 735"
     b"                        /memfd:tf-memfd (deleted)",
     (0x7F8298403000, 0x7F8298405000, "r--s", 0, D(0, 1), 735, b"/memfd:tf-memfd (deleted)")),
    ("SysV shm", b"7f1e2c000000-7f1e2c100000 rw-s 00000000 00:01 32770 /SYSV0000162e (deleted)",
     (0x7F1E2C000000, 0x7F1E2C100000, "rw-s", 0, D(0, 1), 32770, b"/SYSV0000162e (deleted)")),
    ("not UTF-8", b"400000-401000 r--p 00001000 103:05 99 /srv/\xff\xfe name",
     (0x400000, 0x401000, "r--p", 0x1000, D(0x103, 5), 99, b"/srv/\xff\xfe name")),
    ("anon_inode", b"7f00-8f00 rw-s 00000000 00:0e 1052 anon_inode:[perf_event]",
     (0x7F00, 0x8F00, "rw-s", 0, D(0, 0xE), 1052, b"anon_inode:[perf_event]")),
]  # fmt: skip

MALFORMED = [
    b"not a maps line",
    b"1000-2000 r--p 00000000 fe:00",  # no inode
    b"1000-2000 rwxq 00000000 fe:00 1 /x",  # q is not p or s
    b"1000-2000 r--p 00000000 fe00 1 /x",  # no colon
    b"1000-2000 r--p 00000000 fe:00 x /x",  # inode not a number
    b"1000-2000 r--p 00000000 fe:00 99999999999999999999 /x",  # inode past 64 bits
    b"1000-2000  r--p 00000000 fe:00 1 /x",  # two spaces
    b"1000_2000 r--p 00000000 fe:00 1 /x",
    b"10000000000000000-2000 r--p 00000000 fe:00 1 /x",  # 17 hex digits
    b"1000-2000 r--p 0000000g fe:00 1 /x",
    b"ABCD-EF00 r--p 00000000 fe:00 1 /x",  # the kernel prints lowercase
]


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(("line", "expected"), [m[1:] for m in MAPS], ids=[m[0] for m in MAPS])
def test_maps_lines(parse: Any, line: bytes, expected: tuple[Any, ...]) -> None:
    assert [tuple(r) for r in parse(line + b"\n")] == [expected]


@pytest.mark.parametrize("parse", PARSERS)
def test_maps_text_is_every_line_in_order(parse: Any) -> None:
    text = b"\n".join(line for _, line, _ in MAPS) + b"\n"
    rows = parse(text)
    assert [tuple(r) for r in rows] == [expected for _, _, expected in MAPS]
    assert [r.name for r in rows] == [expected[6] for _, _, expected in MAPS]
    assert parse(b"") == []


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("line", MALFORMED)
def test_malformed_maps_lines_are_refused(parse: Any, line: bytes) -> None:
    with pytest.raises(ValueError, match="maps: malformed line"):
        parse(b"1000-2000 r--p 00000000 fe:00 1 /ok\n" + line + b"\n")


@pytest.fixture
def held_tree(spawn: Any) -> Tree:
    tree: Tree = spawn(WORKLOADS / "task_files.py")
    return tree


def _task(image: asyckpt.Image, pid: int) -> asyckpt.Task:
    return next(t for t in image.tasks if t.pid == pid)


def test_held_files_are_in_the_image(held_tree: Tree, tmp_path: Path) -> None:
    info = held_tree.info
    held, workdir = info["held"], info["workdir"]
    maps_before = Path(f"/proc/{held}/maps").read_bytes()
    capture(held_tree, tmp_path / "t.ackpt")
    # The task never changes its mappings, so these are the maps of the frozen moment.
    assert Path(f"/proc/{held}/maps").read_bytes() == maps_before
    image = read_image(tmp_path / "t.ackpt")
    files = image.files
    task = _task(image, held)
    assert task.task_files_error is None and task.cmdline is None

    assert task.exe is not None and task.cwd is not None and task.root_file is not None
    exe, cwd, root = files[task.exe], files[task.cwd], files[task.root_file]
    assert (exe.type, exe.path, exe.deleted, exe.path_state) == (
        "reg",
        f"{workdir}/python-copy",
        True,
        "deleted",
    )
    assert exe.ghost == "saved" and content_of(image, exe) == Path(info["exe"]).read_bytes()
    assert (cwd.type, cwd.path, cwd.deleted, cwd.path_state, cwd.ghost) == (
        "dir",
        f"{workdir}/gone",
        True,
        "deleted",
        "none",
    )
    assert (root.type, root.path, root.path_state, task.root) == ("dir", "/", "ok", "/")
    for f in (exe, cwd, root):
        assert (f.description, f.access, f.flags, f.pos, f.fdinfo) == (False, "path", 0, 0, [])

    # Every file-backed line of maps, in order, with the file it maps.
    expected = [r for r in parse_maps(maps_before) if (r.dev, r.ino) != (0, 0)]
    assert [(m.start, m.end, m.perms, m.offset) for m in task.mappings] == [
        (r.start, r.end, r.perms, r.offset) for r in expected
    ]
    for m, r in zip(task.mappings, expected, strict=True):
        f = files[m.file]
        assert (f.dev, f.ino, f.description) == (r.dev, r.ino, False)
        name = f.path_bytes if f.path_bytes is not None else os.fsencode(f.path)
        # maps escapes a newline as \012 (seq_file_path); map_files gives the bytes.
        shown = name.replace(b"\n", b"\\012") + (b" (deleted)" if f.deleted else b"")
        assert shown == r.name

    by_start = {m.start: files[m.file] for m in task.mappings}
    mapped, memfd = by_start[info["mapped"]], by_start[info["memfd"]]
    assert (mapped.path, mapped.path_state, mapped.ghost) == (
        f"{workdir}/mapped-data",
        "deleted",
        "saved",
    )
    assert content_of(image, mapped) == DATA
    assert (memfd.path, memfd.deleted, memfd.ghost, memfd.error) == (
        "/memfd:tf-memfd",
        True,
        "saved",
        None,
    )
    assert content_of(image, memfd) == MEMFD_DATA
    odd = by_start[info["odd"]]
    assert odd.path_bytes == os.fsencode(workdir) + b"/" + ODD_NAME
    assert odd.path == escape(odd.path_bytes) and odd.path_state == "ok"
    # The executable is mapped too: one record for its inode, whoever refers to it.
    assert task.exe in {m.file for m in task.mappings}
    held_files = [f for f in files.values() if not f.description]
    assert len({(f.dev, f.ino) for f in held_files}) == len(held_files)

    # The thread that unshared its fs has a working directory of its own.
    own = {th.tid: th for th in task.threads}
    assert own[held].cwd is None and own[held].namespaces is None
    assert own[info["thread"]].cwd is not None
    assert files[own[info["thread"]].cwd].path == f"{workdir}/thread-dir"
    assert own[info["thread"]].root_file is None

    # The grandchild: the same executable record, namespaces of its own.
    child = _task(image, info["ns_child"])
    assert child.exe == task.exe and child.cwd == task.cwd
    for kind in ("net", "uts"):
        assert child.namespaces[kind] != task.namespaces[kind]
        assert child.namespaces[kind] == os.stat(f"/proc/{info['ns_child']}/ns/{kind}").st_ino
    for kind in ("mnt", "pid", "ipc", "user"):
        assert child.namespaces[kind] == task.namespaces[kind]
    # The root: the interpreter itself, not deleted.
    top = _task(image, info["pid"])
    assert top.exe is not None and files[top.exe].path == info["exe"]
    assert files[top.exe].path_state == "ok"


def test_mapped_files_are_extracted_byte_exact(held_tree: Tree, tmp_path: Path) -> None:
    info = held_tree.info
    out = tmp_path / "t.ackpt"
    capture(held_tree, out)
    image = read_image(out)
    task = _task(image, info["held"])
    by_start = {m.start: m.file for m in task.mappings}
    for start, data in ((info["mapped"], DATA), (info["memfd"], MEMFD_DATA)):
        dest = tmp_path / f"{start:x}.out"
        proc = run("show", str(out), "--extract", str(by_start[start]), str(dest))
        assert proc.returncode == 0, proc.stderr
        assert dest.read_bytes() == data


def test_cmdline_only_when_asked(held_tree: Tree, tmp_path: Path) -> None:
    info = held_tree.info
    capture(held_tree, tmp_path / "c.ackpt", cmdline=True)
    image = read_image(tmp_path / "c.ackpt")
    for task in image.tasks:
        raw = Path(f"/proc/{task.pid}/cmdline").read_bytes()
        assert task.cmdline == [os.fsdecode(a) for a in raw.split(b"\0")[:-1]]
    assert _task(image, info["held"]).cmdline[2:4] == [  # type: ignore[index]
        str(WORKLOADS / "task_files.py"),
        "--held",
    ]


def test_c_and_python_readers_agree(held_tree: Tree) -> None:
    if _fdscan is None:
        pytest.skip("built without the C accelerator")
    info = held_tree.info
    pid, tids = info["held"], [info["thread"]]
    c = read_task_files(pid, tids, set(), True)
    py = _read_task_files_py(pid, tids, set(), True)
    assert c == py
    assert isinstance(c.maps, bytes) and c.mapped and c.threads[0].tid == info["thread"]
    assert type(c.cwd) is _fdscan.FdRow and type(py.cwd) is _fdscan.FdRow


@pytest.mark.parametrize("reader", ["c", "python"])
def test_a_mapped_file_is_read_once_per_capture(held_tree: Tree, reader: str) -> None:
    if reader == "c" and _fdscan is None:
        pytest.skip("built without the C accelerator")
    read = read_task_files if reader == "c" else _read_task_files_py
    info = held_tree.info
    known: set[tuple[int, int]] = set()
    first = read(info["held"], [], known, False)
    assert isinstance(first.maps, bytes)
    rows = parse_maps(first.maps)
    keys = {(r.dev, r.ino) for r in rows} - {(0, 0)}
    assert known == keys == first.keys and len(first.mapped) == len(keys)
    # The first range of each file, in address order, with the file read through it.
    firsts: dict[tuple[int, int], MapRow] = {}
    for r in rows:
        if (r.dev, r.ino) != (0, 0):
            firsts.setdefault((r.dev, r.ino), r)
    assert [tuple(m) for m, _ in first.mapped] == [tuple(r) for r in firsts.values()]
    for m, got in first.mapped:
        assert not isinstance(got, int)
        assert (got.st_dev, got.st_ino) == (m.dev, m.ino)
    # The grandchild maps the same files: none is read again.
    assert read(info["ns_child"], [], known, False).mapped == []


def _held_row(ino: int) -> RawFd:
    return RawFd(-1, "/srv", 0o40755, 65024, ino, 0, 2, 0, 0, 4096, 0, 8, 0, os.O_PATH, 27, b"")


def test_unreadable_task_files_are_noted_not_fatal() -> None:
    """What the reader could not read (an EPERM on map_files, an EACCES) costs that
    file, named in task_files_error; a kernel thread's missing exe is no error."""
    made: list[tuple[Any, ...]] = []
    ids = iter(range(1, 100))

    def new_held(*args: Any) -> NewFile:
        made.append(args)
        return cast(NewFile, args)

    resolver = TaskFileResolver(lambda: next(ids), new_held, cmdline=False)
    maps = (
        b"1000-2000 r--p 00000000 fe:00 77 /lib/a\n"
        b"2000-3000 r-xp 00001000 fe:00 77 /lib/a\n"
        b"5000-6000 rw-p 00000000 00:00 0 [heap]\n"
    )
    first = MapRow(0x1000, 0x2000, "r--p", 0, 65024, 77, b"/lib/a")
    row = TaskFilesRow(
        errno.EACCES,
        _held_row(5),
        errno.ENOENT,
        {"net": 9},
        maps,
        {(65024, 77)},
        [(first, errno.EPERM)],
        [],
        None,
    )
    part = resolver.resolve(100, "/", row)
    assert (part.cwd, part.root, part.exe, mappings(part)) == (None, 1, None, [])
    assert part.error == "cwd: Permission denied; map: Operation not permitted"
    assert [args[6] for args in made] == ["/proc/100/root"]
    unreadable_maps = row._replace(maps=errno.EACCES, mapped=[], keys=set(), cwd=_held_row(5))
    again = resolver.resolve(101, "/", unreadable_maps)
    assert (again.cwd, again.root, again.error) == (1, 1, "maps: Permission denied")
    assert len(made) == 1  # the same inode: the record made for task 100
    # A thread whose files could not be read (exiting) is taken to share its task's.
    exiting = ThreadFilesRow(102, errno.ENOENT, errno.ENOENT, {})
    third = resolver.resolve(101, "/", unreadable_maps._replace(threads=[exiting]))
    assert third.threads == {}


def test_every_held_file_is_a_file_of_the_image(held_tree: Tree, tmp_path: Path) -> None:
    """The references are checked by the reader: what it accepted resolves."""
    capture(held_tree, tmp_path / "r.ackpt")
    image = read_image(tmp_path / "r.ackpt")
    for task in image.tasks:
        refs = [task.cwd, task.root_file, task.exe, *(m.file for m in task.mappings)]
        refs += [th.cwd for th in task.threads if th.cwd is not None]
        for ref in refs:
            assert ref is not None
            f: File = image.files[ref]
            assert not f.description


class HeldRecord(msgspec.Struct, tag="test.held", tag_field="kind", kw_only=True):
    held: str
    fd: int
    o_path: bool
    size: int


class HeldRecorder:
    """Tells, for every regular file and directory, how the task holds it."""

    name = "heldrec"
    kinds = frozenset({"reg", "dir"})
    priority = 5
    record_type = HeldRecord

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> HeldRecord:
        # take_fd works for both: the description, or an O_PATH descriptor of the file.
        size = os.fstat(ctx.take_fd(facts.fd)).st_size
        o_path = bool(facts.fdinfo.flags & os.O_PATH)
        return HeldRecord(held=ctx.held, fd=facts.fd, o_path=o_path, size=size)


def test_a_handler_can_tell_how_a_file_is_held(held_tree: Tree, tmp_path: Path) -> None:
    info = held_tree.info
    capture(held_tree, tmp_path / "h.ackpt", dispatch_with(HeldRecorder))
    image = read_image(tmp_path / "h.ackpt")
    task = _task(image, info["held"])

    def record(file_id: int | None) -> HeldRecord:
        assert file_id is not None
        f = image.files[file_id]
        assert f.handler == "heldrec", f.error
        return msgspec.msgpack.decode(f.data, type=HeldRecord)

    assert record(task.exe) == HeldRecord(held="exe", fd=-1, o_path=True, size=info["exe_size"])
    assert record(task.cwd).held == "cwd" and record(task.root_file).held == "root"
    by_start = {m.start: m.file for m in task.mappings}
    assert record(by_start[info["mapped"]]) == HeldRecord(
        held="map", fd=-1, o_path=True, size=len(DATA)
    )
    fds = [f for f in image.files.values() if f.description and f.type == "reg"]
    assert fds and all(record(f.id).held == "fd" and record(f.id).fd >= 0 for f in fds)


def test_bundled_handlers_take_a_mapped_device(tmp_path: Path) -> None:
    """A device reached through a mapping goes to the devices plugin as an O_PATH fd would:
    described, no ioctl, no crash.  (A node made here: opening it with O_PATH runs no
    driver code.)"""
    node = tmp_path / "null-like"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.stat(node)
    facts = FdFacts(
        os.getpid(),
        os.getpid(),
        -1,
        "chr",
        str(node),
        str(node),
        False,
        StatInfo(*stat_fields(st)),
        FdInfo(0, os.O_PATH, 0, st.st_ino, ()),
    )
    handler = asyckpt.load_handlers().choose(facts)
    assert handler is not None and handler.name in ("mem", "chr")
    ctx = HandlerContext(os.getpid(), held="map", held_path=str(node))
    try:
        record = handler.capture(facts, ctx)
    finally:
        ctx._close()
    assert type(record) is handler.record_type


def test_tree_cmdline_option(held_tree: Tree, tmp_path: Path) -> None:
    info = held_tree.info
    for flags, expected in (([], None), (["--cmdline"], ["--held"])):
        out = tmp_path / f"c{len(flags)}.ackpt"
        proc = run("tree", str(info["pid"]), "-o", str(out), "-q", *flags)
        assert proc.returncode == 0, proc.stderr
        cmdline = _task(read_image(out), info["held"]).cmdline
        assert (cmdline if cmdline is None else cmdline[3:4]) == expected


def test_held_files_over_the_ghost_limit(held_tree: Tree, tmp_path: Path) -> None:
    """The same rules as an fd's unlinked file: noted and not saved, or --strict fails."""
    info = held_tree.info
    summary = capture(held_tree, tmp_path / "g.ackpt", ghost_limit=4096)
    notes = [n.message() for n in summary.ghost_notes]
    mapped = f"pid {info['held']}: unlinked file {info['workdir']}/mapped-data (16 KiB"
    assert any(n.startswith(mapped) and "exceeds --ghost-limit 4 KiB" in n for n in notes), notes
    image = read_image(tmp_path / "g.ackpt")
    task = _task(image, info["held"])
    assert task.exe is not None and image.files[task.exe].ghost == "too-big"
    proc = run(
        "tree", str(info["pid"]), "-o", str(tmp_path / "s.ackpt"), "--strict", "--ghost-limit", "4K"
    )
    assert proc.returncode == 8, proc.stderr
    assert "--strict: unlinked file" in proc.stderr and "fd=-1" not in proc.stderr
    assert not (tmp_path / "s.ackpt").exists()


def test_a_file_read_by_a_later_tasks_scan_is_read_by_the_resolver(held_tree: Tree) -> None:
    """With two scan workers, a task later in tree order may be scanned first and read a
    shared file: the earlier task's row then lacks it, and the resolver reads it, still
    in address order."""
    info = held_tree.info
    made: list[tuple[Any, ...]] = []
    ids = iter(range(1, 10_000))

    def new_held(*args: Any) -> NewFile:
        made.append(args)
        return cast(NewFile, args)

    resolver = TaskFileResolver(lambda: next(ids), new_held, cmdline=False)
    resolver.read(info["ns_child"], [info["ns_child"]])  # the later task, scanned first
    row = resolver.read(info["held"], [info["held"], info["thread"]])
    assert row.mapped == [] and row.keys
    part = resolver.resolve(info["held"], "/", row)
    assert part.error is None
    ranges = mappings(part)
    assert len(ranges) == len([r for r in parse_maps(cast(bytes, row.maps)) if r.ino])
    # Every mapped file got its record (the executable's as "exe", met first).
    assert {args[0] for args in made} >= {file_id for *_, file_id in ranges}
    assert len({file_id for *_, file_id in ranges}) == len(row.keys)
    # Ids by first range in address order, as a single worker would give them.
    firsts_ids = [ranges_id for *_, ranges_id in ranges]
    assert list(dict.fromkeys(firsts_ids)) == sorted(set(firsts_ids))


def test_tree_reports_held_files_apart(held_tree: Tree, tmp_path: Path) -> None:
    info = held_tree.info
    out = tmp_path / "r.ackpt"
    summary = capture(held_tree, out)
    image = read_image(out)
    held = [f for f in image.files.values() if not f.description]
    assert summary.held_files == len(held) > 0 and summary.files == len(image.files)
    proc = run("tree", str(info["pid"]), "-o", str(tmp_path / "t.ackpt"))
    assert proc.returncode == 0, proc.stderr
    assert f"{len(image.files) - len(held)} open files, {len(held)} files held without an fd" in (
        proc.stdout
    )


def test_the_same_image_without_the_c_reader(
    held_tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pure-Python readers (no compiler) make the same body, byte for byte, on a tree
    with deleted and mapped files, a thread of its own and a namespace of its own."""
    capture(held_tree, tmp_path / "c.ackpt")
    monkeypatch.setattr("asyckpt._procread._read_tables_c", None)
    monkeypatch.setattr("asyckpt._taskread._read_task_files_c", None)
    monkeypatch.setattr("asyckpt._capture.dedup_rows", None)
    capture(held_tree, tmp_path / "py.ackpt")
    c, py = (_body((tmp_path / name).read_bytes()) for name in ("c.ackpt", "py.ackpt"))
    assert c == py


def test_two_captures_of_the_tree_are_identical(held_tree: Tree, tmp_path: Path) -> None:
    for name in ("a.ackpt", "b.ackpt"):
        capture(held_tree, tmp_path / name)
    a, b = (_body((tmp_path / name).read_bytes()) for name in ("a.ackpt", "b.ackpt"))
    assert a == b
