"""Images crafted as plain MessagePack maps, as anyone can make them: any value in any
field, the digest recomputed (sha256 is not a signature).

``seed()`` is a small image that uses every record kind and field the readers and the
renderers look at (threads with their own fd table, a shared table, pipes, a FIFO, a
connected socket pair and a listener with a pending client, epoll, a saved unlinked file
with its content, locks, an owner, a tty, names that are not UTF-8 with their bytes,
holders outside the tree, and files held by reference: cwd, exe, mappings, a thread's own
cwd and namespaces, a command line); ``build()`` frames and digests any list of
records, by default with the trailer's counts made to agree with the body, so that a
mutant reaches the checks past them.
"""

from __future__ import annotations

import copy
import hashlib
import struct
from typing import Any

import msgspec

from asyckpt._image import MAGIC
from asyckpt._records import FORMAT_VERSION

Rec = dict[str, Any]


def _file(id: int, type: str, path: str, **fields: Any) -> Rec:
    rec: Rec = {
        "kind": "file",
        "id": id,
        "type": type,
        "handler": None,
        "flags": 0o2,
        "access": "rw",
        "pos": 0,
        "mnt_id": 27,
        "dev": 65024,
        "ino": 1000 + id,
        "rdev": 0,
        "path": path,
        "deleted": False,
        "uid": 1000,
        "gid": 1000,
        "st_mode": 0o100644,
        "nlink": 1,
        "size": 10,
        "mtime_ns": 1714564800123456789,
        "fdinfo": [["lock", "1: POSIX  ADVISORY  WRITE 100 fe:00:1001 0 EOF"]],
        "data": None,
        "error": None,
        "path_state": "ok",
        "ghost": "none",
        "ghost_file": None,
        "allocated": 4096,
        "ghost_error": None,
        "locks": [],
        "owner": None,
        "owner_error": None,
    }
    rec.update(fields)
    return rec


def _socket(ino: int, **fields: Any) -> Rec:
    data = {
        "kind": "asyckpt.socket",
        "ino": ino,
        "family": "unix",
        "domain": 1,
        "type": "stream",
        "protocol": 0,
        "diag": True,
        "state": "ESTABLISHED",
    }
    data.update(fields)
    return data


def seed() -> list[Rec]:
    """Header, body and trailer of a valid image, as maps."""
    lock = {
        "type": "POSIX",
        "mode": "ADVISORY",
        "access": "WRITE",
        "pid": 100,
        "dev": 65024,
        "ino": 1001,
        "start": 0,
        "end": None,
        "text": "1: POSIX  ADVISORY  WRITE 100 fe:00:1001 0 EOF",
    }
    owner = {"pid": 100, "type": "pid", "signal": 0, "async_io": True, "uid": 0, "euid": 0}
    pipe = {"kind": "asyckpt.pipe", "ino": 5000, "end": "read", "capacity": 65536}
    pipe |= {"queued": 3, "packet_mode": False, "content": b"abc", "packets": None}
    plugins = [
        {"name": n, "distribution": d, "version": "0.1.0", "record_tag": t}
        for n, d, t in [
            ("sockets", "asyckpt-sockets", "asyckpt.socket"),
            ("pipes", "asyckpt-pipes", "asyckpt.pipe"),
            ("epoll", "asyckpt-anon", "asyckpt.epoll"),
            ("tty", "asyckpt-devices", "asyckpt.tty"),
        ]
    ]
    header: Rec = {
        "kind": "header",
        "format_version": FORMAT_VERSION,
        "asyckpt_version": "0.1.0",
        "kernel": "6.1.0",
        "machine": "x86_64",
        "hostname": "host\\xff",
        "hostname_bytes": b"host\xff",
        "time": "2024-05-01T12:00:00.000+00:00",
        "root_pid": 100,
        "freezer": "cgroup-v2",
        "freezer_cgroup": "/sys/fs/cgroup/asyckpt-1-100",
        "consistent": True,
        "plugins": plugins,
        "freeze_mode": "auto",
        "freezer_scope": "transient",
        "pre_frozen": False,
        "endpoint_search": "system",
    }
    epoll = {
        "kind": "asyckpt.epoll",
        "targets": [
            {"tfd": 4, "events": 1, "data": 7, "pos": 0, "ino": 5000, "dev": 14, "file": 3}
        ],
        "linked": True,
    }
    sock1, sock2 = _socket(7001, peer_ino=7002), _socket(7002, peer_ino=7001)
    listener = _socket(7003, state="LISTEN", pending=[7004, 7009])
    ghost = {"deleted": True, "nlink": 0, "path_state": "deleted", "ghost": "saved"}
    ghost |= {"ghost_file": 9, "size": 10000}
    tty = {"kind": "asyckpt.tty", "x": 1.5}
    # Held by reference (format 4): a working directory, a mapped executable.
    held = {"description": False, "flags": 0, "access": "path", "fdinfo": [], "locks": []}
    mounts: Rec = {
        "kind": "mounts",
        "id": 4026531841,
        "mounts": [
            [27, 1, "254:0", "/", "/", "rw", "ext4", "/dev/vda1"],
            [28, 27, "0:40", "/", "/mnt\\xff", "rw", "tmpfs", "src", None, b"/mnt\xff"],
        ],
    }
    body: list[Rec] = [
        mounts,
        {"kind": "fdtable", "id": 1, "owner": 100, "count": 9},
        _file(1, "reg", "/tmp/x", handler=None, locks=[lock], owner=owner),
        {"kind": "fd", "fd": 0, "file": 1, "cloexec": False},
        _file(2, "pipe", "pipe:[5000]", handler="pipes", access="r", ino=5000, dev=14, data=pipe),
        {"kind": "fd", "fd": 1, "file": 2, "cloexec": False},
        _file(3, "pipe", "pipe:[5000]", access="w", ino=5000, dev=14),
        {"kind": "fd", "fd": 2, "file": 3, "cloexec": True},
        _file(4, "fifo", "/tmp/fifo\\xff", access="r", ino=6000, path_bytes=b"/tmp/fifo\xff"),
        {"kind": "fd", "fd": 4, "file": 4, "cloexec": False},
        _file(5, "socket", "socket:[7001]", handler="sockets", ino=7001, data=sock1),
        {"kind": "fd", "fd": 5, "file": 5, "cloexec": False},
        _file(6, "socket", "socket:[7002]", handler="sockets", ino=7002, data=sock2),
        {"kind": "fd", "fd": 6, "file": 6, "cloexec": False},
        _file(7, "socket", "socket:[7003]", handler="sockets", ino=7003, data=listener),
        {"kind": "fd", "fd": 7, "file": 7, "cloexec": False},
        _file(8, "anon", "anon_inode:[eventpoll]", handler="epoll", data=epoll),
        {"kind": "fd", "fd": 8, "file": 8, "cloexec": False},
        _file(9, "reg", "/tmp/gone", **ghost),
        {"kind": "content", "file": 9, "offset": 0, "data": b"A" * 100},
        {"kind": "content", "file": 9, "offset": 8192, "data": b"B" * 10},
        {"kind": "fd", "fd": 9, "file": 9, "cloexec": False},
        {"kind": "fdtable", "id": 2, "owner": 101, "count": 2},
        {"kind": "fd", "fd": 0, "file": 1, "cloexec": False},
        _file(10, "chr", "/dev/pts/3", handler="tty", rdev=(136 << 8) | 3, data=tty),
        {"kind": "fd", "fd": 3, "file": 10, "cloexec": False},
        _file(11, "socket", "socket:[7004]", ino=7004, data=None),
        {"kind": "fdtable", "id": 3, "owner": 102, "count": 2},
        {"kind": "fd", "fd": 0, "file": 11, "cloexec": False},
        {"kind": "fd", "fd": 1, "file": 9, "cloexec": False},
        _file(12, "dir", "/srv", **held),
        _file(13, "reg", "/usr/lib/libx\\xff.so", path_bytes=b"/usr/lib/libx\xff.so", **held),
        _file(14, "dir", "/srv/own", **held),
        {
            "kind": "task", "pid": 100, "ppid": 1, "comm": "server", "starttime": 5000,
            "state": "S", "uid": 1000, "gid": 1000, "fd_table": 1,
            "threads": [[100, 1], [101, 2, 14, None, {"net": 4026531999}]],
            "mnt_ns": 4026531841, "root": "/",
            "session": 100, "pgrp": 100, "tty_nr": (136 << 8) | 3,
            "cwd": 12, "root_file": None, "exe": 13,
            "mappings": [[0x400000, 0x401000, "r-xp", 0, 13],
                         [0x401000, 0x402000, "rw-p", 4096, 13]],
            "namespaces": {"mnt": 4026531841, "net": 4026531840},
            "cmdline": ["server", "--name=\\xff"], "cmdline_bytes": [b"server", b"--name=\xff"],
        },
        {
            "kind": "task", "pid": 102, "ppid": 100, "comm": "ch\\xff", "comm_bytes": b"ch\xff",
            "starttime": 5001,
            "state": "S", "uid": 1000, "gid": 1000, "fd_table": 3, "threads": [[102, 3]],
            "mnt_ns": 4026531841, "root": "/", "session": 100, "pgrp": 100, "tty_nr": 0,
        },
        {
            "kind": "task", "pid": 103, "ppid": 100, "comm": "zombie", "starttime": 5002,
            "state": "Z", "uid": 1000, "gid": 1000, "fd_table": None, "threads": [],
        },
        {
            "kind": "holders", "type": "pipe", "dev": 14, "ino": 5000,
            "fds": [[200, "out\\xff", 3, "w", b"out\xff"], [201, "other", 4, "r"]],
        },
        {
            "kind": "holders", "type": "socket", "dev": 65024, "ino": 7009,
            "fds": [[200, "out", 5, "rw"]],
        },
    ]  # fmt: skip
    trailer: Rec = {
        "kind": "trailer",
        "tasks": 0,
        "fd_tables": 0,
        "fds": 0,
        "files": 0,
        "records": 0,
        "generic": {"reg": 2, "pipe": 1},
        "handler_errors": 0,
        "freezing_ms": 1.5,
        "frozen_ms": 3.25,
        "capture_ms": 4.0,
        "contents": 0,
        "content_bytes": 0,
    }
    return [header, *body, trailer]


def fix_counts(records: list[Rec]) -> None:
    """Make the last record (when it is a trailer) count the body as it now is."""
    trailer = records[-1]
    if not isinstance(trailer, dict) or trailer.get("kind") != "trailer":
        return
    body = records[1:-1]

    def kinds(kind: str) -> list[Rec]:
        return [r for r in body if isinstance(r, dict) and r.get("kind") == kind]

    contents = kinds("content")
    trailer.update(
        tasks=len(kinds("task")),
        fd_tables=len(kinds("fdtable")),
        fds=len(kinds("fd")),
        files=len(kinds("file")),
        records=len(body),
        contents=len(contents),
        content_bytes=sum(len(c["data"]) for c in contents if isinstance(c.get("data"), bytes)),
    )


def encode(rec: Any) -> bytes:
    """A record's frame payload: a map's ``data`` embedded as MessagePack, as written."""
    return msgspec.msgpack.encode(rec)


def build(records: list[Any], *, counts: bool = True, version: int = FORMAT_VERSION) -> bytes:
    """The image of ``records`` (header first, trailer last), its digest recomputed."""
    records = copy.deepcopy(records)
    if counts:
        fix_counts(records)
    out = bytearray(MAGIC + struct.pack(">I", version))
    for rec in records:
        payload = rec if isinstance(rec, bytes) else encode(rec)
        out += struct.pack(">I", len(payload)) + payload
    return bytes(out) + hashlib.sha256(out).digest()


def nested(depth: int) -> msgspec.Raw:
    """A value nested ``depth`` arrays deep, as MessagePack to embed in a record (neither
    built nor encoded with recursion)."""
    return msgspec.Raw(b"\x91" * depth + b"\xc0")
