"""show's rows for the files a task holds beyond its fds (cwd, rtd, txt, mem, DEL), its
namespaces and its command line: on literal images, built record by record and read
back through the image reader, as ``show`` reads any image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyckpt._escape import escape
from asyckpt._image import Image, parse_image
from asyckpt._records import (
    FORMAT_VERSION,
    Content,
    Fd,
    FdTable,
    File,
    Header,
    Mapping,
    Thread,
    Trailer,
)
from asyckpt._show import render_table
from asyckpt._show_namespaces import namespace_view
from asyckpt._show_taskfiles import task_file_rows

from .conftest import WORKLOADS
from .crafted import build, seed
from .test_diff import task

ASYCKPT = [sys.executable, "-m", "asyckpt"]
NS = {"cgroup": 4026531835, "ipc": 4026531839, "mnt": 4026531841, "net": 4026531840}
NS |= {"pid": 4026531836, "user": 4026531837, "uts": 4026531838}
OTHER_NET = 4026532300
BLOB = b"mapped, then deleted\n" * 10


def held(id: int, type: str, path: str, **kw: Any) -> File:
    """A file held by reference (``description`` false), as the capture writes one."""
    fields: dict[str, Any] = dict(
        id=id,
        type=type,
        handler=type,
        flags=0,
        access="path",
        pos=0,
        mnt_id=27,
        dev=65024,
        ino=5000 + id,
        path=path,
        path_state="ok",
        ghost="none",
        st_mode=0o40755 if type == "dir" else 0o100755,
        nlink=1,
        size=4096,
        description=False,
    )
    fields.update(kw)
    return File(**fields)


def header(root_pid: int = 100) -> Header:
    return Header(
        format_version=FORMAT_VERSION,
        asyckpt_version="0.1.0",
        kernel="6.1.0",
        machine="x86_64",
        hostname="web1",
        time="2026-12-06T20:00:00.000+00:00",
        root_pid=root_pid,
        freezer="cgroup-v2",
    )


def trailer() -> Trailer:
    # Counts are made to agree by crafted.build.
    return Trailer(tasks=0, fd_tables=0, fds=0, files=0, records=0)


def m(start: int, end: int, perms: str, offset: int, file: int) -> Mapping:
    return Mapping(start=start, end=end, perms=perms, offset=offset, file=file)


def records() -> list[Any]:
    """A server (pid 100, a second thread in a directory of its own) and a child in
    another network namespace."""
    deleted = dict(deleted=True, nlink=0, path_state="deleted", size=len(BLOB))
    return [
        header(),
        FdTable(id=1, owner=100, count=1),
        File(id=1, type="reg", handler="reg", flags=2, access="rw", pos=7, mnt_id=27,
             dev=65024, ino=4001, path="/srv/data.log", path_state="ok", ghost="none"),
        Fd(fd=3, file=1, cloexec=True),
        held(2, "dir", "/srv/work"),
        held(3, "dir", "/"),
        held(4, "reg", "/usr/bin/svc"),
        held(5, "reg", "/usr/lib/libc.so.6"),
        held(6, "reg", "/tmp/blob", ghost="saved", ghost_file=6, **deleted),
        Content(file=6, offset=0, data=BLOB),
        held(7, "reg", "/memfd:cache", ghost="too-big", allocated=1 << 30,
             **(deleted | {"size": 1 << 30})),
        held(8, "dir", "/srv/thread-dir"),
        FdTable(id=2, owner=102, count=0),
        task(
            100, 1, cwd=2, root_file=3, exe=4,
            mappings=[
                m(0x400000, 0x401000, "r--p", 0, 4),
                m(0x401000, 0x405000, "r-xp", 0x1000, 4),
                m(0x7F0000000000, 0x7F0000028000, "r--p", 0, 5),
                m(0x7F0000028000, 0x7F00001BD000, "r-xp", 0x28000, 5),
                m(0x7F00001BD000, 0x7F0000215000, "rw-p", 0x1BD000, 5),
                m(0x7F1000000000, 0x7F1000001000, "rw-s", 0, 6),
                m(0x7F2000000000, 0x7F2000100000, "r--s", 0, 7),
            ],
            namespaces=NS,
            cmdline=["svc", "--name", "a b"],
            threads=[Thread(tid=100, fd_table=1), Thread(tid=101, fd_table=1, cwd=8)],
        ),
        task(102, 2, ppid=100, cwd=2, root_file=3, exe=4, namespaces=NS | {"net": OTHER_NET}),
        trailer(),
    ]  # fmt: skip


def encoded(recs: list[Any] | None = None) -> bytes:
    """The image of ``recs`` (default :func:`records`), its trailer's counts made to
    agree (crafted.build counts maps, so each record goes as the map it encodes to)."""
    recs = recs if recs is not None else records()
    return build([msgspec.msgpack.decode(msgspec.msgpack.encode(r)) for r in recs])


def image(recs: list[Any] | None = None) -> Image:
    return parse_image(encoded(recs))


def rows_of(text: str, pid: int) -> list[list[str]]:
    """The table rows of ``pid``, split into columns (NAME and what follows it kept
    whole)."""
    out = []
    for line in text.splitlines():
        cols = line.split(None, 9)
        if len(cols) == 10 and cols[1] == str(pid) and not line.startswith("#"):
            out.append(cols)
    return out


def test_rows_follow_the_fds_in_lsofs_order() -> None:
    rows = rows_of(render_table(image()), 100)
    assert [r[2] for r in rows] == ["3ue", "cwd", "rtd", "txt", "mem", "DEL", "DEL", "101/cwd"]
    by_fd = {r[2]: r for r in rows}
    # COMMAND PID FD TYPE FLAGS POS OBJ DEVICE NODE NAME
    assert by_fd["cwd"][3:] == ["dir", "-", "-", "2", "254:0", "5002", "/srv/work"]
    assert by_fd["rtd"][9] == "/" and by_fd["rtd"][6] == "3"
    assert by_fd["101/cwd"][9] == "/srv/thread-dir"


def test_the_header_counts_held_files_apart() -> None:
    img = image()
    held = sum(1 for f in img.files.values() if not f.description)
    assert 0 < held < len(img.files)
    counts = render_table(img).splitlines()[2]
    assert f" {len(img.files) - held} open files, {held} files held without an fd, " in counts


def test_a_mapped_file_is_one_row_its_ranges_merged() -> None:
    rows = rows_of(render_table(image()), 100)
    mem = [r for r in rows if r[2] == "mem"]
    assert len(mem) == 1  # libc: three ranges, one row
    assert mem[0][4] == "r--p,r-xp,rw-p" and mem[0][6] == "5"
    assert mem[0][9] == "/usr/lib/libc.so.6 [3 ranges, 2.1 MiB]"
    # The executable's own mappings are its txt row's (lsof skips them in mem).
    txt = next(r for r in rows if r[2] == "txt")
    assert txt[4] == "r--p,r-xp" and txt[9] == "/usr/bin/svc [2 ranges, 20 KiB]"


def test_a_deleted_mapped_file_is_DEL_with_the_id_to_extract(tmp_path: Path) -> None:
    text = render_table(image())
    rows = rows_of(text, 100)
    blob, memfd = (r for r in rows if r[2] == "DEL")
    assert blob[6] == "6" and blob[9].startswith(
        "/tmp/blob (deleted) [1 range, 4 KiB] [content saved: 210 of 210"
    )
    assert memfd[6] == "7" and "content NOT saved: 1 GiB allocated, over the limit" in memfd[9]
    assert "content saved: asyckpt show IMAGE --extract OBJ OUT writes it out" in text
    # ...and that id is what --extract takes: the mapped file's bytes, exactly.
    path, out = tmp_path / "i.ackpt", tmp_path / "blob"
    path.write_bytes(encoded())
    done = run("show", str(path), "--extract", blob[6], str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == BLOB


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ASYCKPT, *args], capture_output=True, text=True, timeout=60)


def test_no_task_files_hides_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "i.ackpt"
    path.write_bytes(encoded())
    shown = run("show", str(path))
    hidden = run("show", str(path), "--no-task-files")
    assert shown.returncode == hidden.returncode == 0, shown.stderr + hidden.stderr
    assert [r[2] for r in rows_of(hidden.stdout, 100)] == ["3ue"]
    assert [r[2] for r in rows_of(hidden.stdout, 102)] == []
    assert [r[2] for r in rows_of(shown.stdout, 102)] == ["cwd", "rtd", "txt"]
    assert "txt: executable" in shown.stdout and "txt: executable" not in hidden.stdout


def format3_seed() -> list[Any]:
    """The seed as format 3 wrote it: every other record kind, no task files."""
    fields = ("cwd", "root_file", "exe", "mappings", "namespaces", "cmdline", "cmdline_bytes")
    recs = [r for r in seed() if not (r["kind"] == "file" and r.get("description") is False)]
    for r in recs:
        if r["kind"] == "task":
            for field in fields:
                r.pop(field, None)
            r["threads"] = [th[:2] for th in r["threads"]]
    recs[0]["format_version"] = 3
    return recs


def test_an_old_image_shows_as_before() -> None:
    text = render_table(parse_image(build(format3_seed(), version=3)))
    assert text.splitlines()[1].startswith("format 3,")
    assert "held without an fd" not in text
    fds = {
        line.split(None, 9)[2] for line in text.splitlines() if line.startswith(("server", "ch"))
    }
    assert fds & {"cwd", "rtd", "txt", "mem", "DEL", "err"} == set()
    assert "namespaces" not in text and "NAMESPACES" not in text
    assert "txt: executable" not in text


def test_what_could_not_be_read_is_an_err_row() -> None:
    recs = records()
    recs[-3] = msgspec.structs.replace(
        recs[-3], mappings=[], exe=None, task_files_error="maps: Permission denied"
    )
    rows = rows_of(render_table(image(recs)), 100)
    assert [r[2] for r in rows] == ["3ue", "cwd", "rtd", "err", "101/cwd"]
    assert rows[3][9] == "[maps: Permission denied]"


def test_a_file_the_image_lacks_is_named_not_a_crash() -> None:
    # The reader refuses such a reference; the rows do not rely on it.
    img = image()
    del img.files[5]
    rows = task_file_rows(img.tasks[0], img.files)
    assert [(r.fd, r.file_id, r.file) for r in rows if r.file_id == 5] == [("mem", 5, None)]
    assert "[file 5 is not in the image]" in render_table(img)


def test_hostile_names_stay_on_their_row() -> None:
    recs = records()
    bad = "/tmp/x\n# pid 1 (systemd) ppid 0\x1b[2J"
    raws = [b"svc", b"evil\n# pid 1 (init)\x1b]0;t\x07", b"bad\xff"]
    recs[7] = msgspec.structs.replace(recs[7], path=bad)  # libc
    recs[-3] = msgspec.structs.replace(
        recs[-3],
        cmdline=[escape(raw) for raw in raws],  # escaped, all, when one is not UTF-8
        cmdline_bytes=raws,
        namespaces=NS | {"net\x1b[2J\n# pid 7": 1},
        task_files_error="stat\n# pid 9 (forged)",
    )
    text = render_table(image(recs))
    lines = text.splitlines()
    assert [line for line in lines if not line.isprintable()] == []
    assert sum(line.startswith("# pid ") for line in lines) == 2
    assert escape(bad) in text
    assert "#   cmdline: svc 'evil\\n# pid 1 (init)\\x1b]0;t\\x07' 'bad\\xff'" in lines


def test_the_command_line_when_captured() -> None:
    text = render_table(image())
    assert "#   cmdline: svc --name 'a b'" in text.splitlines()
    assert text.count("cmdline:") == 1  # pid 102's was not captured


# --- namespaces -----------------------------------------------------------------------


def test_one_line_when_every_task_shares_the_roots() -> None:
    one = namespace_view([task(100, 1, namespaces=NS)], 100)
    assert one.summary == (
        "namespaces: pid 100: cgroup 4026531835, ipc 4026531839, mnt 4026531841, "
        "net 4026531840, pid 4026531836, user 4026531837, uts 4026531838"
    )
    assert (one.task_notes, one.section) == ({}, [])
    tree = namespace_view([task(100, 1, namespaces=NS), task(101, 1, namespaces=NS)], 100)
    assert tree.summary is not None and tree.summary.startswith(
        "namespaces: every task shares pid 100's: cgroup 4026531835,"
    )
    assert tree.section == []


def test_tasks_outside_the_roots_namespaces_stand_out() -> None:
    text = render_table(image())
    lines = text.splitlines()
    assert (
        "namespaces: 1 of 2 tasks and threads not in pid 100's: 102 (net); see NAMESPACES" in lines
    )
    pid102 = next(line for line in lines if line.startswith("# pid 102 "))
    assert pid102.endswith(", namespaces not pid 100's: net")
    section = lines[lines.index("NAMESPACES (the tree's; * = not pid 100's)") :]
    assert section[1].split() == ["TYPE", "INODE", "TASKS"]
    assert [line.split(None, 2) for line in section[2:] if line.startswith("net")] == [
        ["net", "4026531840", "100"],
        ["net*", str(OTHER_NET), "102"],
    ]
    assert ["mnt", "4026531841", "100, 102"] in [line.split(None, 2) for line in section]


def test_a_thread_in_a_namespace_of_its_own_is_named() -> None:
    t = task(
        100,
        1,
        namespaces=NS,
        threads=[
            Thread(tid=100, fd_table=1),
            Thread(tid=103, fd_table=1, namespaces=NS | {"mnt": 9}),
        ],
    )
    view = namespace_view([t, task(101, 1, namespaces=NS)], 100)
    assert view.summary == (
        "namespaces: 1 of 3 tasks and threads not in pid 100's: tid 103 (mnt); see NAMESPACES"
    )
    assert view.task_notes == {}  # the task itself is in the root's
    assert ["mnt*", "9", "tid 103"] in [line.split(None, 2) for line in view.section]


def test_a_zombie_root_leaves_the_reference_to_the_first_task_that_has_namespaces() -> None:
    zombie = task(100, 1, state="Z", fd_table=None, threads=[])
    view = namespace_view([zombie, task(101, 1, namespaces=NS), task(102, 1, namespaces=NS)], 100)
    assert view.summary is not None and "every task shares pid 101's" in view.summary


def test_a_long_list_is_counted() -> None:
    tasks = [task(100, 1, namespaces=NS)] + [
        task(200 + i, 1, namespaces=NS | {"net": OTHER_NET}) for i in range(20)
    ]
    view = namespace_view(tasks, 100)
    assert view.summary is not None and view.summary.endswith("211 (net) (+8 more); see NAMESPACES")
    star = next(line for line in view.section if line.startswith("net*"))
    assert star.endswith("211 (+8 more)")


@pytest.mark.parametrize("state", ["deleted-linked", "deleted"])
def test_unlinked_by_path_state_alone_is_DEL(state: str) -> None:
    recs = records()
    recs[7] = msgspec.structs.replace(recs[7], path_state=state)  # libc
    rows = rows_of(render_table(image(recs)), 100)
    assert [r[2] for r in rows if r[6] == "5"] == ["DEL"]


# --- a real capture, beside lsof ------------------------------------------------------

HELD_FDS = ("cwd", "rtd", "txt", "mem", "DEL")


def lsof_rows(pid: int) -> list[tuple[str, int, str]]:
    """(FD, inode, name) of each cwd/rtd/txt/mem/DEL row ``lsof -p`` prints, in its order
    (its field output: one ``f``, ``i`` and ``n`` line per file)."""
    out = subprocess.run(
        ["lsof", "-w", "-n", "-P", "-p", str(pid), "-F", "fin"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rows, fd, ino = [], "", 0
    for line in out.splitlines():
        if line.startswith("f"):
            fd, ino = line[1:], 0
        elif line.startswith("i"):
            ino = int(line[1:])
        elif line.startswith("n") and fd in HELD_FDS:
            rows.append((fd, ino, line[1:]))
    return rows


def test_a_live_task_shows_the_rows_lsof_prints(spawn: Any, tmp_path: Path) -> None:
    if shutil.which("lsof") is None:
        pytest.skip("lsof is not installed: nothing to compare show's rows with")
    tree = spawn(WORKLOADS / "mapped.py")
    path = tmp_path / "live.ackpt"
    done = run("tree", str(tree.pid), "-o", str(path), "-q")
    assert done.returncode == 0, done.stderr
    table = run("show", str(path))
    assert table.returncode == 0, table.stderr
    held = {}
    for pid in (tree.pid, tree.info["child"]):
        ours = []
        for cols in rows_of(table.stdout, pid):
            if cols[2] in HELD_FDS:
                name = cols[9].split(" [")[0]
                if cols[2] == "DEL":  # lsof drops the suffix there: DEL says it
                    name = name.removesuffix(" (deleted)")
                ours.append((cols[2], int(cols[8]), name, cols[6]))
        # The same files, in the same order, named alike: cwd, rtd, txt, then mem and
        # DEL in the order of their first mapping.
        assert [row[:3] for row in ours] == lsof_rows(pid)
        held |= {(fd, name): obj for fd, _, name, obj in ours}
    assert ("cwd", tree.info["cwd"]) in held
    assert ("mem", tree.info["kept"]) in held
    assert ("DEL", "/memfd:asyckpt-mapped") in held
    # The child: a deleted executable copy, in a removed directory.
    work = os.path.dirname(tree.info["cwd"])
    assert ("txt", os.path.join(work, "sleep-copy (deleted)")) in held
    assert ("cwd", os.path.join(work, "gone-dir (deleted)")) in held
    # The deleted mapped file's OBJ is what --extract takes: its bytes, exactly.
    out = tmp_path / "gone"
    done = run("show", str(path), "--extract", held[("DEL", tree.info["gone"])], str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"mapped, then deleted\n" * 100
