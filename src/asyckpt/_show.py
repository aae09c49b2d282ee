"""show: render a verified image as an lsof-like table or as the JSON export."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from ._image import Image
from ._records import NO_DATA, File

__all__ = ["render_table", "to_json_doc"]

_FLAG_NAMES = [
    (os.O_APPEND, "APPEND"),
    (os.O_NONBLOCK, "NONBLOCK"),
    (os.O_SYNC, "SYNC"),
    (os.O_DSYNC, "DSYNC"),
    (os.O_DIRECT, "DIRECT"),
    (os.O_NOATIME, "NOATIME"),
    (os.O_PATH, "PATH"),
    (os.O_LARGEFILE, "LARGEFILE"),
    (0o20000, "ASYNC"),  # O_ASYNC / FASYNC
]


def flag_names(flags: int) -> str:
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    return ",".join(names) or "-"


def _data(file: File) -> Any:
    if file.data == NO_DATA:
        return None
    return msgspec.msgpack.decode(file.data)


def _file_doc(f: File) -> dict[str, Any]:
    doc = msgspec.structs.asdict(f)
    doc["data"] = _data(f)  # a Raw: decoded generically, so no plugin is needed to read it
    doc["fdinfo"] = [list(kv) for kv in f.fdinfo]
    return doc


def to_json_doc(image: Image) -> dict[str, Any]:
    """The JSON export: a public contract (README, "JSON export")."""
    h, t = image.header, image.trailer
    doc: dict[str, Any] = msgspec.to_builtins(h)
    doc.pop("kind", None)
    doc["stats"] = {
        "freezing_ms": t.freezing_ms,
        "frozen_ms": t.frozen_ms,
        "capture_ms": t.capture_ms,
        "tasks": t.tasks,
        "fd_tables": t.fd_tables,
        "fds": t.fds,
        "files": t.files,
        "generic": t.generic,
        "handler_errors": t.handler_errors,
    }
    doc["checksum"] = f"sha256:{image.checksum}"
    doc["mounts"] = [
        {"id": m.id, "mounts": [msgspec.structs.asdict(e) for e in m.mounts]} for m in image.mounts
    ]
    tasks = []
    for task in image.tasks:
        tdoc = msgspec.to_builtins(task)
        tdoc.pop("kind", None)
        tdoc["threads"] = [{"tid": th.tid, "fd_table": th.fd_table} for th in task.threads]
        tdoc["fds"] = [
            {"fd": fd.fd, "file": fd.file, "cloexec": fd.cloexec}
            for fd, _ in image.fds(task.fd_table)
        ]
        tasks.append(tdoc)
    doc["tasks"] = tasks
    doc["files"] = [_file_doc(f) for f in image.files.values()]
    return doc


def _dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _fd_mode(f: File) -> str:
    return {"r": "r", "w": "w", "rw": "u", "path": "p"}[f.access]


def render_table(image: Image) -> str:
    """An lsof-like table, one row per fd, grouped by task."""
    h, t = image.header, image.trailer
    lines = [
        f"image: root pid {h.root_pid} on {h.hostname} ({h.kernel}), {h.time}",
        f"format {h.format_version}, asyckpt {h.asyckpt_version}, freezer {h.freezer}"
        + ("" if h.consistent else " (NOT frozen: the image may be inconsistent)"),
        f"{t.tasks} tasks, {t.fds} fds, {t.files} open files, {t.fd_tables} fd tables; "
        f"freezing {t.freezing_ms:.2f} ms, frozen {t.frozen_ms:.2f} ms, "
        f"capture {t.capture_ms:.2f} ms",
    ]
    if h.plugins:
        lines.append(
            "plugins: " + ", ".join(f"{p.name} ({p.distribution} {p.version})" for p in h.plugins)
        )
    if t.generic:
        lines.append(
            "generic (no handler): " + ", ".join(f"{k} {v}" for k, v in sorted(t.generic.items()))
        )
    table_users: dict[int, list[int]] = {}
    for task in image.tasks:
        if task.fd_table is not None:
            table_users.setdefault(task.fd_table, []).append(task.pid)
    refs: dict[int, int] = {}
    for fds in image.fd_tables.values():
        for fd in fds:
            refs[fd.file] = refs.get(fd.file, 0) + 1
    header = (
        f"{'COMMAND':<15} {'PID':>7} {'FD':>6} {'TYPE':<6} {'FLAGS':<16} {'POS':>10} "
        f"{'OBJ':>6} {'DEVICE':>7} {'NODE':>10} NAME"
    )
    for task in image.tasks:
        lines.append("")
        shared = [p for p in table_users.get(task.fd_table or 0, []) if p != task.pid]
        note = f", fd table shared with {', '.join(map(str, shared))}" if shared else ""
        unshared = [th.tid for th in task.threads if th.fd_table != task.fd_table]
        if unshared:
            note += f", threads with own fd tables: {', '.join(map(str, unshared))}"
        lines.append(
            f"# pid {task.pid} ({task.comm}) ppid {task.ppid}, state {task.state}, "
            f"{len(task.threads)} thread(s), fd table {task.fd_table}{note}"
        )
        lines.append(header)
        tables = [(task.pid, task.fd_table)] + [
            (th.tid, th.fd_table) for th in task.threads if th.fd_table != task.fd_table
        ]
        for owner, table in tables:
            for fd, f in image.fds(table):
                name = f.path + (" (deleted)" if f.deleted else "")
                data = _data(f)
                if f.type == "link" and isinstance(data, dict) and "target" in data:
                    name += f" -> {data['target']}"
                if f.handler is None:
                    name += "  [generic" + (f": {f.error}]" if f.error else "]")
                fdcol = f"{fd.fd}{_fd_mode(f)}{'e' if fd.cloexec else ''}"
                if owner != task.pid:
                    fdcol = f"{owner}/{fdcol}"
                obj = f"{f.id}" + ("*" if refs.get(f.id, 0) > 1 else "")
                lines.append(
                    f"{task.comm[:15]:<15} {task.pid:>7} {fdcol:>6} {f.type:<6} "
                    f"{flag_names(f.flags):<16} {f.pos:>10} {obj:>6} {_dev(f.dev):>7} "
                    f"{f.ino:>10} {name}"
                )
    lines.append("")
    lines.append(
        "FD: number, then r/w/u(read-write)/p(O_PATH), e = close-on-exec; "
        "OBJ: open file description, * = shared by several fds"
    )
    return "\n".join(lines)
