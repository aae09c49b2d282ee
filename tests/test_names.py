"""Names as the kernel has them: bytes, kept exactly from the kernel to the image, its
JSON export and back (docs/image-format.md, "Names").

The rules on literal input, then a real tree (tests/workloads/odd_names.py) holding files,
a comm, a root, a mount, an fdinfo value and socket names that are not UTF-8 or are
made to mislead; and files really named "x (deleted)".
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import asyckpt
from asyckpt import File, ImageCorrupt, name_bytes, os_name, read_image, split_name
from asyckpt._escape import escape, unescape
from asyckpt._image import MAGIC, parse_image
from asyckpt._names import json_name, json_names, json_names_in, split_names, text
from asyckpt._outside import _linked_inos
from asyckpt._procparse import parse_cgroup, parse_fdinfo, parse_fdinfo_rest, parse_mountinfo
from asyckpt._records import Holders, OutsideFd

from .conftest import V2_ROOT, WORKLOADS, Tree, _force_release, move_into
from .test_capture import capture, fds_of
from .test_cli import assert_one_line_error, run
from .test_image_format import assemble, frame, make_body, valid_parts, with_digest

# --- the rule, on literal input --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "exact"),
    [
        (b"plain", "plain", None),
        (b"caf\xc3\xa9", "café", None),
        (b"line\nbreak", "line\nbreak", None),  # valid UTF-8: kept as it is
        (b"esc\x1b[31mred", "esc\x1b[31mred", None),
        (b"bad\xff\xfebytes", "bad\\xff\\xfebytes", b"bad\xff\xfebytes"),
        (b"back\\slash\xff", "back\\\\slash\\xff", b"back\\slash\xff"),
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80", b"\xed\xa0\x80"),  # an encoded surrogate
    ],
)
def test_split_name(raw: bytes, field: str, exact: bytes | None) -> None:
    value = raw.decode("utf-8", "surrogateescape")  # as os.readlink returns it
    assert split_name(value) == (field, exact)
    assert name_bytes(field, exact) == raw
    assert os_name(field, exact) == value
    if exact is not None:
        assert unescape(field) == raw


def test_split_names_all_or_none() -> None:
    assert split_names(["a", "b"]) == (["a", "b"], None)
    odd = "t\udcff"
    assert split_names(["a\\b", odd]) == (["a\\\\b", "t\\xff"], [b"a\\b", b"t\xff"])
    assert text("fine\n") == "fine\n"
    assert text("no such file: /x\udcff") == "no such file: /x\\xff"


def test_json_names() -> None:
    doc: dict[str, Any] = {"path": "bad\\xff", "path_bytes": b"bad\xff", "comm": "c"}
    json_name(doc, "path", b"bad\xff")
    json_name(doc, "comm", None)
    assert doc == {"path": "bad\\xff", "path_encoding": "escaped", "comm": "c"}
    doc = {"fdinfo": [["iff", "t\\xff"], ["x", "1"]], "fdinfo_bytes": [b"t\xff", b"1"]}
    json_names(doc, "fdinfo", doc["fdinfo_bytes"])
    assert doc == {"fdinfo": [["iff", "t\\xff"], ["x", "1"]], "fdinfo_encoding": "escaped"}
    # A plugin's record, however deep; bytes that are not a name's are left alone.
    data = {
        "name": "@x",
        "name_bytes": b"\0x\xff",
        "content": b"\xff",
        "inner": [{"interface": "t", "interface_bytes": None}],
    }
    assert json_names_in(data) == {
        "name": "\\x00x\\xff",
        "name_encoding": "escaped",
        "content": b"\xff",
        "inner": [{"interface": "t", "interface_bytes": None}],  # raw fields, unchanged
    }


def test_version_2_images_are_still_read() -> None:
    """An image written before names had ``_bytes`` companions reads as before, each
    companion None."""
    records, trailer = valid_parts()
    head = MAGIC + struct.pack(">I", 2)
    v2_file = msgspec.msgpack.decode(msgspec.msgpack.encode(make_body()[1]))
    for k in ("path_bytes", "fdinfo_bytes"):
        del v2_file[k]
    for r in records:
        head += frame(msgspec.msgpack.encode(v2_file if r is records[2] else r))
    image = parse_image(with_digest(head + frame(msgspec.msgpack.encode(trailer))))
    f = image.files[1]
    assert (f.path_bytes, f.fdinfo_bytes) == (None, None)
    assert name_bytes(f.path, f.path_bytes) == f.path.encode()


# --- a real tree -----------------------------------------------------------------------


@pytest.fixture
def odd(spawn: Any) -> Tree:
    tree: Tree = spawn(WORKLOADS / "odd_names.py")
    return tree


def _raw(info: Tree, key: str) -> bytes:
    return os.fsencode(info.info["workdir"]) + b"/" + info.info["names"][key].encode("latin-1")


def _data(image: asyckpt.Image, f: File) -> dict[str, Any]:
    data = msgspec.msgpack.decode(f.data)
    assert isinstance(data, dict), f.error
    return data


def test_odd_names_survive_byte_exact(odd: Tree, tmp_path: Path) -> None:
    """Every name that is not UTF-8 is in the image exactly, and in the JSON export
    escaped with its stated encoding; the others as they are."""
    info = odd.info
    out = tmp_path / "odd.ackpt"
    capture(odd, out)
    image = read_image(out)
    fds = fds_of(image, odd.pid)
    for key in ("bad", "line", "esc"):
        f = fds[info[key]][1]
        assert name_bytes(f.path, f.path_bytes) == _raw(odd, key)
        assert os.path.samefile(os_name(f.path, f.path_bytes), f"/proc/{odd.pid}/fd/{info[key]}")
    bad = fds[info["bad"]][1]
    assert bad.path_bytes == _raw(odd, "bad") and "\\xff\\xfe" in bad.path
    assert fds[info["line"]][1].path_bytes is None  # valid UTF-8: the text itself

    child = next(t for t in image.tasks if t.pid == info["odd"]["pid"])
    assert name_bytes(child.comm, child.comm_bytes) == b"c\xff\x1b[2J"
    assert name_bytes(child.root, child.root_bytes) == os.fsencode(info["workdir"]) + b"/mnt\xff"
    child_fds = fds_of(image, child.pid)
    inner = child_fds[info["odd"]["inner"]][1]
    assert (inner.path, inner.path_bytes) == ("/in\\xff", b"/in\xff")
    tun = child_fds[info["odd"]["tun"]][1]
    assert tun.fdinfo_bytes is not None
    values = dict(zip([k for k, _ in tun.fdinfo], tun.fdinfo_bytes, strict=True))
    assert values["iff"] == b"t\xff\xfe"
    sources = [
        name_bytes(m.source, m.source_bytes)
        for table in image.mounts
        for m in table.mounts
        if m.fstype == "tmpfs"
    ]
    assert b"src\xff" in sources

    memfd = fds[info["memfd"]][1]
    assert memfd.handler == "memfd", memfd.error
    assert _data(image, memfd)["name_bytes"] == b"mem\xff"
    inotify = fds[info["inotify"]][1]
    assert inotify.handler == "inotify", inotify.error
    (watch,) = _data(image, inotify)["watches"]
    assert watch["path_bytes"] == os.fsencode(info["workdir"]) + b"/watched\xff"

    listener = _data(image, fds[info["listener"]][1])
    assert listener["name_bytes"] == os.fsencode(info["workdir"]) + b"/sock\xff\xfe"
    assert listener["name_state"] == "ok"  # looked up by its exact bytes
    abstract = _data(image, fds[info["abstract"]][1])
    assert (abstract["name_bytes"], abstract["abstract"]) == (b"\0abs\xff", True)

    # The table: every name on its row, escaped once, whoever printed it (the core, a
    # handler's render_text).
    proc = run("show", str(out))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    for shown in (
        "/bad\\xff\\xfebytes",
        "/line\\nbreak",
        "/esc\\x1b[31mred",
        "(c\\xff\\x1b[2J)",
        "[memfd 'mem\\xff'",
        "=" + info["workdir"] + "/watched\\xff]",
        "name " + info["workdir"] + "/sock\\xff\\xfe,",
        "name @abs\\xff,",
    ):
        assert shown in table, shown
    assert "\\\\" not in table  # nothing escaped twice
    assert "\x1b" not in table and "\n/" not in table

    # The JSON export: valid JSON, every name's bytes recovered exactly.
    proc = run("show", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)

    def exact(d: dict[str, Any], field: str) -> bytes:
        if d.get(f"{field}_encoding") == "escaped":
            return unescape(d[field])
        assert f"{field}_encoding" not in d
        return str(d[field]).encode()

    files = {f["id"]: f for f in doc["files"]}
    for key in ("bad", "line", "esc"):
        assert exact(files[fds[info[key]][1].id], "path") == _raw(odd, key)
    assert files[bad.id]["path_encoding"] == "escaped"
    assert "path_bytes" not in files[bad.id]
    tdoc = next(t for t in doc["tasks"] if t["pid"] == child.pid)
    assert exact(tdoc, "comm") == b"c\xff\x1b[2J"
    tun_doc = files[tun.id]
    assert tun_doc["fdinfo_encoding"] == "escaped"
    assert [unescape(v) for k, v in tun_doc["fdinfo"] if k == "iff"] == [b"t\xff\xfe"]
    for view in ("data", "rendered"):
        sock = files[fds[info["listener"]][1].id][view]
        assert exact(sock, "name") == listener["name_bytes"]
        assert exact(files[fds[info["abstract"]][1].id][view], "name") == b"\0abs\xff"
    proc = run("show", "--json", "--endpoints", str(out))
    fifo = next(e for e in json.loads(proc.stdout)["endpoints"] if e["kind"] == "fifo")
    assert (exact(fifo, "name"), fifo["name_encoding"]) == (_raw(odd, "fifo"), "escaped")
    mount_docs = [e for m in doc["mounts"] for e in m["mounts"] if e["fstype"] == "tmpfs"]
    assert b"src\xff" in [exact(e, "source") for e in mount_docs]


def test_a_name_really_ending_in_deleted(odd: Tree, tmp_path: Path) -> None:
    """The kernel's " (deleted)" suffix is stripped only when it is the kernel's."""
    info, wd = odd.info, odd.info["workdir"]
    out = tmp_path / "odd.ackpt"
    capture(odd, out)
    fds = fds_of(read_image(out), odd.pid)

    def state(key: str) -> tuple[str, bool, str]:
        f = fds[info[key]][1]
        return f.path, f.deleted, f.path_state

    assert state("live_deleted") == (f"{wd}/x (deleted)", False, "ok")
    assert state("dead_deleted") == (f"{wd}/gone/x (deleted)", True, "deleted")
    assert state("plain_deleted") == (f"{wd}/plain", True, "deleted")
    assert state("linked_deleted") == (f"{wd}/gone/y (deleted)", True, "deleted-linked")


@pytest.mark.parametrize("reader", ["c", "python"])
def test_a_path_longer_than_path_max(
    reader: str, odd: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel gives no link text for it (ENAMETOOLONG): the fd is recorded without a
    name, path_state too-long, an unlinked one's content saved; not a failed capture.
    The same with either fd reader."""
    if reader == "python":
        monkeypatch.setattr("asyckpt._procread._read_tables_c", None)
        monkeypatch.setattr("asyckpt._capture.dedup_rows", None)
    info = odd.info
    out = tmp_path / "odd.ackpt"
    capture(odd, out)
    image = read_image(out)
    fds = fds_of(image, odd.pid)
    deep, gone = fds[info["deep"]][1], fds[info["deep_unlinked"]][1]
    assert (deep.path, deep.deleted, deep.path_state, deep.size) == ("", False, "too-long", 8)
    assert (gone.path, gone.deleted, gone.path_state, gone.ghost) == ("", True, "too-long", "saved")
    assert b"".join(c.data for c in image.contents[gone.id]) == b"far down, unlinked"
    chrooted = next(t for t in image.tasks if t.pid == info["deep_root"])
    assert chrooted.root == ""  # its root's path is too long as well
    proc = run("show", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "[path longer than PATH_MAX: the kernel does not give it]" in proc.stdout


def test_sockets_print_as_ss_does(odd: Tree, tmp_path: Path) -> None:
    """IPv6 endpoints in brackets; an unconnected socket UNCONN, its record keeping the
    kernel's state (CLOSE, 7)."""
    info = odd.info
    out = tmp_path / "odd.ackpt"
    capture(odd, out)
    image = read_image(out)
    fds = fds_of(image, odd.pid)
    for key in ("udp", "unbound"):
        data = _data(image, fds[info[key]][1])
        assert (data["state"], data["state_number"]) == ("CLOSE", 7)
    proc = run("show", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {int(line.split()[2].rstrip("rwupe")): line for line in _rows(proc.stdout, odd.pid)}
    assert "[udp UNCONN, 127.0.0.1:" in rows[info["udp"]]
    assert "[unix dgram UNCONN" in rows[info["unbound"]]
    port, client = info["port6"], info["client6_port"]
    assert f"tcp6 ESTABLISHED, [::1]:{client} -> [::1]:{port}," in rows[info["client6"]]


def _rows(table: str, pid: int) -> list[str]:
    return [
        line
        for line in table.splitlines()
        if len(line.split()) > 3 and line.split()[1] == str(pid) and line.split()[2][0].isdigit()
    ]


def test_a_cgroup_whose_name_is_not_utf8(zoo: Tree, tmp_path: Path) -> None:
    """Frozen in place, a delegated cgroup's name (chosen by its delegate) is kept
    exactly in the header."""
    if not V2_ROOT.is_dir():
        pytest.fail(f"{V2_ROOT} is not mounted on this machine")
    cg = V2_ROOT / f"asyckpt-test-{os.getpid()}-odd\udcff"
    cg.mkdir()
    try:
        move_into(cg, zoo.pids())
        capture(zoo, tmp_path / "x.ackpt", freeze=f"cgroup:{cg}")
        header = read_image(tmp_path / "x.ackpt").header
        assert header.freezer_cgroup is not None
        assert name_bytes(header.freezer_cgroup, header.freezer_cgroup_bytes) == bytes(cg)
        assert header.freeze_mode == "cgroup:" + escape(str(cg))  # as asked: a message
    finally:
        _force_release(cg)


# --- ends outside the tree (tree --endpoints=system) ------------------------------------


def _fds_on(pid: int, link: str) -> list[int]:
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == link:
                out.append(int(name))
        except OSError:  # closed, or a path too long to read
            continue
    return sorted(out)


def test_endpoints_system_names_the_process_outside(odd: Tree, tmp_path: Path) -> None:
    """A socketpair's and a pipe's other ends are held only by a process outside the tree:
    the capture names it, pid/comm fd, and says the search was not frozen."""
    info = odd.info
    outsider = info["outsider"]["pid"]
    comm = Path(f"/proc/{outsider}/comm").read_text().strip()
    out = tmp_path / "sys.ackpt"
    summary = capture(odd, out, endpoints="system")
    assert summary.endpoints == "system"
    image = read_image(out)
    assert image.header.endpoint_search == "system"
    fds = fds_of(image, odd.pid)
    pair = _data(image, fds[info["pair"]][1])
    peer = pair["peer_ino"]
    assert pair["peer_in_tree"] is False
    pipe = fds[info["pipe_r"]][1]
    found = {(h.type, h.ino): h for h in image.outside}
    on_peer = found[("socket", peer)].fds
    assert [(o.pid, o.comm, o.fd, o.access) for o in on_peer] == [
        (outsider, comm, fd, "rw") for fd in _fds_on(outsider, f"socket:[{peer}]")
    ]
    on_pipe = [(o.pid, o.fd, o.access) for o in found[("pipe", pipe.ino)].fds]
    assert (outsider, info["outsider"]["pipe_w"], "w") in on_pipe
    assert not any(o.pid == odd.pid for h in image.outside for o in h.fds)  # the tree's own

    proc = run("show", "--endpoints", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "searched for after the thaw (not frozen" in proc.stdout
    fd = on_peer[0].fd
    lines = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    assert f"socket:[{peer}] ! outside the tree: {outsider}/{comm} fd {fd}u" in lines
    assert f"! outside the tree: {outsider}/{comm} fd {info['outsider']['pipe_w']}w" in proc.stdout
    doc = json.loads(run("show", "--endpoints", "--json", str(out)).stdout)
    ends = [e for ep in doc["endpoints"] for e in ep["ends"] if e["ino"] == peer]
    assert ends[0]["outside_fds"] == [{"pid": outsider, "comm": comm, "fd": fd, "access": "rw"}]


def test_endpoints_default_does_not_search(odd: Tree, tmp_path: Path) -> None:
    out = tmp_path / "tree.ackpt"
    capture(odd, out)
    image = read_image(out)
    assert (image.header.endpoint_search, image.outside) == ("tree", [])
    proc = run("show", "--endpoints", str(out))
    assert "! outside the tree (or closed)" in proc.stdout
    assert "searched" not in proc.stdout


def test_holders_records_come_last_and_only_in_version_3() -> None:
    records, trailer = valid_parts()
    holders = Holders(
        type="pipe", dev=15, ino=7, fds=[OutsideFd(pid=9, comm="x", fd=3, access="w")]
    )
    trailer.records += 1
    image = parse_image(assemble([*records, holders], trailer))
    assert image.outside == [holders]
    with pytest.raises(ImageCorrupt, match="after the holders"):
        parse_image(assemble([records[0], holders, *records[1:]], trailer))
    with pytest.raises(ImageCorrupt, match="holders record in a version 2 image"):
        parse_image(assemble([*records, holders], trailer, version=2))


@pytest.mark.parametrize(
    ("data", "inos"),
    [
        (msgspec.Raw(msgspec.msgpack.encode({"peer_ino": 7, "pending": [8, 9]})), [7, 8, 9]),
        ({"peer_ino": 0, "pending": [True, -1, "x", 5]}, [5]),  # not a socket's inode
        (msgspec.Raw(b"\xc1"), []),  # undecodable: no link, not a failure
        (None, []),
    ],
)
def test_the_sockets_a_record_links(data: Any, inos: list[int]) -> None:
    assert _linked_inos(data) == inos


@pytest.mark.parametrize("freeze", ["cgroup-v1", "cgroup-v2", "auto"])
def test_a_tree_in_a_cgroup_whose_name_is_not_utf8(freeze: str, zoo: Tree, tmp_path: Path) -> None:
    """Moved into a transient cgroup and back (or frozen where it is), from a cgroup
    whose name is not UTF-8: back exactly where it was."""
    if not V2_ROOT.is_dir():
        pytest.fail(f"{V2_ROOT} is not mounted on this machine")
    cg = V2_ROOT / f"asyckpt-test-{os.getpid()}-tree\udcff"
    cg.mkdir()
    try:
        move_into(cg, zoo.pids())
        before = {pid: Path(f"/proc/{pid}/cgroup").read_bytes() for pid in zoo.pids()}
        capture(zoo, tmp_path / "x.ackpt", freeze=freeze)
        assert read_image(tmp_path / "x.ackpt").header.consistent
        after = {pid: Path(f"/proc/{pid}/cgroup").read_bytes() for pid in zoo.pids()}
        assert after == before
    finally:
        _force_release(cg)


def test_a_mount_of_asyckpts_own_whose_name_is_not_utf8(zoo: Tree, tmp_path: Path) -> None:
    """asyckpt reads its own mount table to find the freezer: a mount point there that is
    not UTF-8 (any user can make one: a USB stick's label) must not fail every capture.
    asyckpt runs in a mount namespace of its own, gone when it exits."""
    odd = os.fsencode(tmp_path) + b"/usb\xff"
    os.mkdir(odd)
    script = 'mount -t tmpfs asyckpt-test "$1" && exec "$2" -m asyckpt tree "$3" -o "$4" -q'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         odd, sys.executable, str(zoo.pid), str(tmp_path / "x.ackpt")],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert read_image(tmp_path / "x.ackpt").header.consistent


def test_parse_cgroup_keeps_a_name_that_is_not_utf8() -> None:
    assert parse_cgroup(b"0::/user\xff.slice\n4:freezer:/\n") == {
        "": "/user\udcff.slice",
        "freezer": "/",
    }


def test_kernel_lines_end_at_newlines_only() -> None:
    """A name may hold what str.splitlines and str.strip take for line ends and blanks
    (\\x1c, \\x85, \\u2028, \\xa0): the kernel's lines end at "\\n", its padding is blanks
    and tabs."""
    odd = "t\x1ca\u2028b\x85\xa0"
    rest = f"iff:\t{odd}\nlock:\t1: FLOCK  ADVISORY  WRITE 1 00:01:2 0 EOF\n".encode()
    assert parse_fdinfo_rest(rest) == (
        ("iff", odd),
        ("lock", "1: FLOCK  ADVISORY  WRITE 1 00:01:2 0 EOF"),
    )
    assert parse_fdinfo(b"pos:\t0\nflags:\t02\nmnt_id:\t9\nino:\t5\n" + rest).extra[0] == (
        "iff",
        odd,
    )
    line = f"36 35 0:40 / /mnt/{odd} rw,relatime shared:1 - tmpfs src{odd} rw\n"
    (mount,) = parse_mountinfo(line)
    assert (mount.mount_point, mount.source) == (f"/mnt/{odd}", f"src{odd}")
    assert parse_cgroup(f"0::/a{odd}\n".encode()) == {"": f"/a{odd}"}


@pytest.mark.parametrize(
    "changes",
    [
        {"path": "innocent", "path_bytes": b"evil\xff"},
        {"path": "bad\\xff", "path_bytes": b"bad\xfe"},
        {"fdinfo": [("iff", "t")], "fdinfo_bytes": [b"t", b"u"]},
        {"fdinfo": [("iff", "t")], "fdinfo_bytes": [b"t\xff"]},
    ],
)
def test_a_name_that_is_not_its_bytes_is_refused(changes: dict[str, Any]) -> None:
    """What is printed must be the name that is kept: a crafted image whose escaped text
    disagrees with its bytes is corrupt."""
    records, trailer = valid_parts()
    records[2] = msgspec.structs.replace(records[2], **changes)
    with pytest.raises(ImageCorrupt, match="is not its"):
        parse_image(assemble(records, trailer))
    records[2] = msgspec.structs.replace(records[2], path="ok", path_bytes=None, fdinfo_bytes=None)
    parse_image(assemble(records, trailer))


def test_open_capture_streams_the_holders_last(odd: Tree) -> None:
    async def collect() -> list[Any]:
        options = asyckpt.CaptureOptions(endpoints="system")
        async with asyckpt.open_capture(odd.pid, options=options) as stream:
            return [record async for record in stream]

    records = trio.run(collect)
    kinds = [type(r).__name__ for r in records]
    first = kinds.index("Holders")
    assert first > kinds.index("Task") and set(kinds[first:]) == {"Holders"}
    with pytest.raises(ValueError, match="endpoints must be one of tree, system"):
        asyckpt.CaptureOptions(endpoints="everything")


def test_endpoints_option_is_checked() -> None:
    proc = run("tree", "1", "--endpoints", "everything")
    assert_one_line_error(proc, 2, "invalid choice: 'everything'")


def test_diff_shows_names_by_the_rule() -> None:
    """diff prints a name that is not UTF-8 escaped once, and its JSON states the
    encoding, as show's export does."""
    from asyckpt._diff import render_diff

    from .test_diff import file, image, task

    path, path_bytes = split_name("/srv/bad\udcff")
    comm, comm_bytes = split_name("c\udcfe")
    a = image([task(10, 1)], {1: {}})
    b = image(
        [task(10, 1), task(12, 2, comm=comm, comm_bytes=comm_bytes)],
        {1: {4: file(2, path, path_bytes=path_bytes)}, 2: {}},
    )
    d = asyckpt.diff(a, b)
    text = render_diff(d)
    assert "+ task 12 (c\\xfe) ppid 1" in text
    assert "+ pid 10 fd 4: reg /srv/bad\\xff" in text
    doc = json.loads(msgspec.json.encode(d))
    assert doc["tasks_added"][0] == {
        "pid": 12, "starttime": 100, "comm": "c\\xfe", "ppid": 1, "comm_encoding": "escaped"
    }  # fmt: skip
    assert doc["opened"][0]["path_encoding"] == "escaped"
    assert unescape(doc["opened"][0]["path"]) == b"/srv/bad\xff"
    plain = json.loads(
        msgspec.json.encode(asyckpt.diff(a, image([task(10, 1), task(13, 3)], {1: {}, 3: {}})))
    )
    assert plain["tasks_added"] == [{"pid": 13, "starttime": 100, "comm": "svc", "ppid": 1}]


def test_graph_shows_names_escaped_once(odd: Tree, tmp_path: Path) -> None:
    out = tmp_path / "odd.ackpt"
    capture(odd, out)
    proc = run("graph", str(out), "--format", "dot", "-o", str(tmp_path / "g.dot"))
    assert proc.returncode == 0, proc.stderr
    dot = (tmp_path / "g.dot").read_text()
    # In DOT quotes a backslash is doubled: \\xff there is the escaped byte, shown \xff.
    assert "c\\\\xff\\\\x1b[2J" in dot
    assert "\\\\\\\\x" not in dot  # never escaped twice
