"""show: render a verified image as an lsof-like table or as the JSON export.

A handler's record (``File.data``) is shown raw, from its msgpack alone, unless the
handler that wrote it is installed here: then it is decoded with the handler's own
record type and rendered by its optional ``render_json``/``render_text`` hooks.  So an
image stays readable on a machine without its plugins; a note says what was shown raw.
The caller (the CLI) loads the handlers (``_plugins.image_plugins``); this module does
no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from ._image import Image
from ._plugins import ImagePlugin
from ._records import NO_DATA, File, PluginInfo

__all__ = ["FileView", "Renderer", "render_table", "to_json_doc"]

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


def _jsonable(value: Any) -> Any:
    # bytes become base64 (as msgspec's JSON encoder writes them); whatever JSON has no
    # form for (a msgpack extension) becomes its repr rather than failing the export.
    return msgspec.to_builtins(value, enc_hook=repr)


class FileView(NamedTuple):
    """How ``show`` presents one file's handler record."""

    data: Any
    """The record's fields as JSON values (raw: from the msgpack alone), or None."""
    rendered: Any
    """The handler's ``render_json`` of the record, or None."""
    text: str | None
    """What the table appends to the name: ``render_text``, or the raw fields."""
    note: str | None
    """Why the record is shown raw, or None."""


class Renderer:
    """Presents handler records, through the handlers installed here where it can."""

    def __init__(self, image: Image, plugins: Mapping[str, ImagePlugin] | None) -> None:
        self._plugins = plugins
        self._listed = {p.name for p in image.header.plugins}

    def plugin_notes(self, name: str) -> tuple[str | None, bool, str | None]:
        """(installed version, loaded, note) of a handler the header lists."""
        if self._plugins is None:
            return None, False, "plugins were not consulted"
        p = self._plugins.get(name)
        if p is None:
            return None, False, "not installed"
        return p.installed, p.loaded is not None, p.note

    def view(self, f: File) -> FileView:
        if f.data == NO_DATA:
            return FileView(None, None, None, None)
        try:
            data = _jsonable(msgspec.msgpack.decode(f.data))
        except msgspec.DecodeError as exc:
            return FileView(None, None, "[undecodable record]", f"undecodable record: {exc}")
        name = f.handler
        plugin = self._plugins.get(name) if self._plugins is not None and name else None
        if plugin is None or plugin.loaded is None:
            if self._plugins is None:
                why = "plugins were not consulted"
            elif name not in self._listed:
                why = f"the image header lists no handler {name!r}"
            else:
                why = f"handler {name!r} is {plugin.note if plugin else 'not installed'}"
            return FileView(data, None, _raw_text(data), f"raw fields: {why}")
        loaded = plugin.loaded
        try:
            record = loaded.decode(f.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            why = f"it does not decode as {loaded.distribution} {loaded.version}'s record: {exc}"
            return FileView(data, None, _raw_text(data), f"raw fields: {why}")
        rendered = text = None
        try:
            if loaded.render_json is not None:
                rendered = _jsonable(loaded.render_json(record))
            if loaded.render_text is not None:
                text = str(loaded.render_text(record))
        except Exception as exc:
            why = f"handler {name!r} failed to render it: {type(exc).__name__}: {exc}"
            return FileView(data, None, _raw_text(data), f"raw fields: {why}")
        return FileView(data, rendered, text, None)


def _raw_text(data: Any) -> str:
    if not isinstance(data, dict):
        return f"[{data!r} (raw)]"
    fields = " ".join(f"{k}={v}" for k, v in data.items() if k != "kind")
    return f"[{data.get('kind', '?')}: {fields} (raw)]"


def _file_doc(f: File, renderer: Renderer) -> dict[str, Any]:
    doc = msgspec.structs.asdict(f)
    view = renderer.view(f)
    doc["data"] = view.data
    doc["fdinfo"] = [list(kv) for kv in f.fdinfo]
    doc["rendered"] = view.rendered
    doc["note"] = view.note
    return doc


def to_json_doc(image: Image, plugins: Mapping[str, ImagePlugin] | None = None) -> dict[str, Any]:
    """The JSON export: a public contract (README, "JSON export").  ``plugins`` are the
    handlers installed here (``_plugins.image_plugins``); None renders every record raw."""
    h, t = image.header, image.trailer
    renderer = Renderer(image, plugins)
    doc: dict[str, Any] = msgspec.to_builtins(h)
    doc.pop("kind", None)
    for pdoc in doc["plugins"]:
        installed, loaded, note = renderer.plugin_notes(pdoc["name"])
        pdoc.update(installed=installed, loaded=loaded, note=note)
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
    doc["files"] = [_file_doc(f, renderer) for f in image.files.values()]
    return doc


def _plugin_line(p: PluginInfo, renderer: Renderer) -> str:
    _, loaded, note = renderer.plugin_notes(p.name)
    text = f"{p.name} ({p.distribution} {p.version}"
    if not loaded:
        return f"{text}; {note}: records shown raw)"
    return f"{text}; {note})" if note else f"{text})"


def _dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _fd_mode(f: File) -> str:
    return {"r": "r", "w": "w", "rw": "u", "path": "p"}[f.access]


def render_table(image: Image, plugins: Mapping[str, ImagePlugin] | None = None) -> str:
    """An lsof-like table, one row per fd, grouped by task (``plugins`` as for
    :func:`to_json_doc`)."""
    h, t = image.header, image.trailer
    renderer = Renderer(image, plugins)
    lines = [
        f"image: root pid {h.root_pid} on {h.hostname} ({h.kernel}), {h.time}",
        f"format {h.format_version}, asyckpt {h.asyckpt_version}, freezer {h.freezer}"
        + (
            f" ({h.freezer_scope}{' ' + h.freezer_cgroup if h.freezer_cgroup else ''}"
            f"{', frozen before and left frozen' if h.pre_frozen else ''})"
            if h.consistent
            else " (NOT frozen: the image may be inconsistent)"
        ),
        f"{t.tasks} tasks, {t.fds} fds, {t.files} open files, {t.fd_tables} fd tables; "
        f"freezing {t.freezing_ms:.2f} ms, frozen {t.frozen_ms:.2f} ms, "
        f"capture {t.capture_ms:.2f} ms",
    ]
    if h.plugins:
        lines.append("plugins: " + ", ".join(_plugin_line(p, renderer) for p in h.plugins))
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
                text = renderer.view(f).text
                if text:
                    name += f" {text}"
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
