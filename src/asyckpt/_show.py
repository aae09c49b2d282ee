"""show: render a verified image as an lsof-like table or as the JSON export.

A handler's record (``File.data``) is shown raw, from its msgpack alone, unless the
handler that wrote it is installed here: then it is decoded with the handler's own
record type and rendered by its optional ``render_json``/``render_text`` hooks.  So an
image stays readable on a machine without its plugins; a note says what was shown raw.
The caller (the CLI) loads the handlers (``_plugins.image_plugins``); this module does
no I/O.

Every name in an image was chosen by whoever owned the captured processes, so the text
renderers pass each line they make through ``_escape.escape`` (a newline in a name cannot
split a row, an escape sequence never reaches the terminal), and the JSON export's handler
data goes through ``_jsondata.json_data`` (no NaN, no key JSON cannot hold).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from ._escape import escape
from ._ghost import format_size
from ._image import Image
from ._jsondata import json_data
from ._names import ESCAPED, json_name, json_names, json_names_in, os_name
from ._plugins.loading import ImagePlugin
from ._records import NO_DATA, File, Lock, MountEntry, Owner, PluginInfo, Task, Thread
from ._show_namespaces import namespace_view
from ._show_taskfiles import TaskFileRow, task_file_rows

__all__ = [
    "FileView",
    "JsonParts",
    "Renderer",
    "cmdline_text",
    "render_table",
    "state_text",
    "to_json_doc",
    "tty_name",
    "tty_names",
]

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


def _lock_text(lock: Lock) -> str:
    if lock.type is None:
        return lock.text
    span = f"{lock.start}-{'EOF' if lock.end is None else lock.end}"
    return f"{lock.type} {lock.access} {span}"


def state_text(locks: list[Lock], owner: Owner | None) -> str:
    """``locks: ...; owner: ...`` for the table, or "" when a file has neither."""
    parts = []
    if locks:
        parts.append("locks: " + ", ".join(_lock_text(lock) for lock in locks))
    if owner is not None:
        text = f"owner: {owner.type} {owner.pid}"
        if owner.signal:
            text += f" sig {owner.signal}"
        if owner.async_io:
            text += " async"
        parts.append(text)
    return "; ".join(parts)


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
        # A file shown on many rows (a library every task maps, a shared description)
        # is rendered once.
        self._texts: dict[int, str | None] = {}

    def plugin_notes(self, name: str) -> tuple[str | None, bool, str | None]:
        """(installed version, loaded, note) of a handler the header lists."""
        if self._plugins is None:
            return None, False, "plugins were not consulted"
        p = self._plugins.get(name)
        if p is None:
            return None, False, "not installed"
        return p.installed, p.loaded is not None, p.note

    def view(self, f: File) -> FileView:
        return self._view(f, True)

    def text(self, f: File) -> str | None:
        """What the table appends to the file's name: ``view(f).text``, without making
        the JSON forms the table does not print."""
        try:
            return self._texts[f.id]
        except KeyError:
            text = self._texts[f.id] = self._view(f, False).text
            return text

    def _view(self, f: File, for_json: bool) -> FileView:
        if f.data == NO_DATA:
            return FileView(None, None, None, None)
        raw = bytes(f.data)
        try:
            # Names first (a name's bytes become its escaped text and encoding), then
            # whatever else JSON has no form for.
            decoded = json_names_in(msgspec.msgpack.decode(raw))
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
            return _raw_view(json_data(decoded, raw), f"raw fields: {why}")
        loaded = plugin.loaded
        try:
            record = loaded.decode(f.data)
        except Exception as exc:  # the handler's own types and hooks may raise anything
            why = f"it does not decode as {loaded.distribution} {loaded.version}'s record: {exc}"
            return _raw_view(json_data(decoded, raw), f"raw fields: {why}")
        rendered = text = None
        try:
            if for_json and loaded.render_json is not None:
                rendered = json_data(json_names_in(loaded.render_json(record)))
            if loaded.render_text is not None:
                text = str(loaded.render_text(record))
        except Exception as exc:
            why = f"handler {name!r} failed to render it: {type(exc).__name__}: {exc}"
            return _raw_view(json_data(decoded, raw), f"raw fields: {why}")
        return FileView(json_data(decoded, raw) if for_json else None, rendered, text, None)


def _raw_view(data: Any, note: str) -> FileView:
    return FileView(data, None, _raw_text(data), note)


def _raw_text(data: Any) -> str:
    if not isinstance(data, dict):
        return f"[{data!r} (raw)]"
    fields = " ".join(f"{k}={v}" for k, v in data.items() if k != "kind")
    return f"[{data.get('kind', '?')}: {fields} (raw)]"


def _file_doc(f: File, renderer: Renderer, image: Image) -> dict[str, Any]:
    doc = msgspec.structs.asdict(f)
    view = renderer.view(f)
    doc["data"] = view.data
    doc["fdinfo"] = [list(kv) for kv in f.fdinfo]
    json_name(doc, "path", f.path_bytes)
    json_names(doc, "fdinfo", f.fdinfo_bytes)
    doc["rendered"] = view.rendered
    doc["note"] = view.note
    # Where the saved data is, not the data itself (show --extract writes that out).
    doc["content"] = [[c.offset, len(c.data)] for c in image.contents.get(f.id, ())]
    doc["locks"] = msgspec.to_builtins(f.locks)
    doc["owner"] = msgspec.to_builtins(f.owner)
    return doc


_PATH_NOTES = {
    "deleted-linked": "name unlinked, another hard link remains",
    "replaced": "path now names another file",
    "missing": "path no longer exists",
    "proc-exited": "its process has exited",
    "too-long": "path longer than PATH_MAX: the kernel does not give it",
    "unchecked": "path not checked",
}


def ghost_text(f: File, image: Image) -> str:
    """What the table says about an unlinked file's content and a stale path."""
    notes = []
    if f.path_state in _PATH_NOTES and not (f.path_state == "unchecked" and f.ghost == "unchecked"):
        notes.append(_PATH_NOTES[f.path_state])
    if f.ghost == "saved":
        if f.ghost_file == f.id:
            saved = sum(len(c.data) for c in image.contents.get(f.id, ()))
            notes.append(f"content saved: {saved} of {f.size} bytes, holes left out")
        else:
            notes.append(f"content saved with file {f.ghost_file}")
    elif f.ghost == "too-big":
        what = f.ghost_error or f"{format_size(f.allocated)} allocated"
        notes.append(f"content NOT saved: {what}, over the limit")
    elif f.ghost == "off":
        notes.append("content not saved (--ghost-limit 0)")
    elif f.ghost == "failed":
        notes.append(f"content NOT saved: {f.ghost_error}")
    return f" [{'; '.join(notes)}]" if notes else ""


def to_json_doc(image: Image, plugins: Mapping[str, ImagePlugin] | None = None) -> dict[str, Any]:
    """The JSON export: a public contract (README, "JSON export").  ``plugins`` are the
    handlers installed here (``_plugins.image_plugins``); None renders every record raw.
    The whole document at once; ``_jsonexport`` writes the same text record by record."""
    parts = JsonParts(image, plugins)
    doc = parts.head()
    doc["tasks"] = [parts.task(task) for task in image.tasks]
    doc["files"] = [parts.file(f) for f in image.files.values()]
    return doc


class JsonParts:
    """The JSON export's pieces: its head (every key before ``tasks``), then one
    document per task and per file, in the export's order."""

    def __init__(self, image: Image, plugins: Mapping[str, ImagePlugin] | None) -> None:
        self.image = image
        self._renderer = Renderer(image, plugins)
        self._ttys = tty_names(image)

    def head(self) -> dict[str, Any]:
        image, renderer = self.image, self._renderer
        h, t = image.header, image.trailer
        doc: dict[str, Any] = msgspec.to_builtins(h)
        doc.pop("kind", None)
        json_name(doc, "hostname", h.hostname_bytes)
        json_name(doc, "freezer_cgroup", h.freezer_cgroup_bytes)
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
            "contents": t.contents,
            "content_bytes": t.content_bytes,
        }
        doc["checksum"] = f"sha256:{image.checksum}"
        doc["mounts"] = [
            {"id": m.id, "mounts": [_mount_doc(e) for e in m.mounts]} for m in image.mounts
        ]
        return doc

    def task(self, task: Task) -> dict[str, Any]:
        tdoc: dict[str, Any] = msgspec.to_builtins(task)
        tdoc.pop("kind", None)
        json_name(tdoc, "comm", task.comm_bytes)
        json_name(tdoc, "root", task.root_bytes)
        tdoc["tty"] = tty_name(task.tty_nr, self._ttys)
        tdoc["threads"] = [_thread_doc(th) for th in task.threads]
        tdoc["mappings"] = [msgspec.structs.asdict(m) for m in task.mappings]
        tdoc.pop("cmdline_bytes", None)
        if task.cmdline_bytes is not None:
            tdoc["cmdline"] = [escape(arg) for arg in task.cmdline_bytes]
            tdoc["cmdline_encoding"] = ESCAPED
        tdoc["fds"] = [
            {"fd": fd.fd, "file": fd.file, "cloexec": fd.cloexec}
            for fd, _ in self.image.fds(task.fd_table)
        ]
        return tdoc

    def file(self, f: File) -> dict[str, Any]:
        return _file_doc(f, self._renderer, self.image)


def _thread_doc(th: Thread) -> dict[str, Any]:
    # cwd, root_file, namespaces: the thread's own (format 4), None for the task's.
    return {
        "tid": th.tid,
        "fd_table": th.fd_table,
        "cwd": th.cwd,
        "root_file": th.root_file,
        "namespaces": th.namespaces,
    }


def _mount_doc(e: MountEntry) -> dict[str, Any]:
    doc = msgspec.structs.asdict(e)
    for field in ("root", "mount_point", "fstype", "source"):
        json_name(doc, field, getattr(e, f"{field}_bytes"))
    return doc


def tty_names(image: Image) -> dict[int, str]:
    """The path of each terminal device (rdev) the image holds an fd on, by device
    number: how a task's controlling terminal (``Task.tty_nr``) is named."""
    names: dict[int, str] = {}
    for f in image.files.values():
        if f.type == "chr" and f.rdev and not f.deleted:
            names.setdefault(f.rdev, f.path)
    return names


def tty_name(tty_nr: int, names: Mapping[int, str]) -> str | None:
    """A task's controlling terminal: its path when the image holds an fd on it (a pty
    slave, a console...), else ``major:minor``; None without one."""
    if not tty_nr:
        return None
    dev = tty_nr & 0xFFFFFFFF  # stat prints this 32-bit number signed
    return names.get(dev) or _dev(dev)


def _files_line(image: Image) -> str:
    """The trailer counts every file record; those held without an fd (format 4: a cwd,
    an executable, a mapped file) are named apart, as ``tree`` reports them."""
    held = sum(1 for f in image.files.values() if not f.description)
    opened = f"{len(image.files) - held} open files"
    return f"{opened}, {held} files held without an fd" if held else opened


def _plugin_line(p: PluginInfo, renderer: Renderer) -> str:
    _, loaded, note = renderer.plugin_notes(p.name)
    text = f"{p.name} ({p.distribution} {p.version}"
    if not loaded:
        return f"{text}; {note}: records shown raw)"
    return f"{text}; {note})" if note else f"{text})"


def _dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


_FD_MODES = {"r": "r", "w": "w", "rw": "u", "path": "p"}


def _fd_mode(f: File) -> str:
    return _FD_MODES[f.access]


def render_table(
    image: Image, plugins: Mapping[str, ImagePlugin] | None = None, *, task_files: bool = True
) -> str:
    """An lsof-like table, one row per fd, grouped by task (``plugins`` as for
    :func:`to_json_doc`); after a task's fds, the files it holds otherwise (``cwd``,
    ``rtd``, ``txt``, ``mem``: ``_show_taskfiles``) unless ``task_files`` is false."""
    h, t = image.header, image.trailer
    renderer = Renderer(image, plugins)
    namespaces = namespace_view(image.tasks, h.root_pid)
    lines = [
        f"image: root pid {h.root_pid} on {h.hostname} ({h.kernel}), {h.time}",
        f"format {h.format_version}, asyckpt {h.asyckpt_version}, freezer {h.freezer}"
        + (
            f" ({h.freezer_scope}{' ' + h.freezer_cgroup if h.freezer_cgroup else ''}"
            f"{', frozen before and left frozen' if h.pre_frozen else ''})"
            if h.consistent
            else " (NOT frozen: the image may be inconsistent)"
        ),
        f"{t.tasks} tasks, {t.fds} fds, {_files_line(image)}, {t.fd_tables} fd tables; "
        f"freezing {t.freezing_ms:.2f} ms, frozen {t.frozen_ms:.2f} ms, "
        f"capture {t.capture_ms:.2f} ms",
    ]
    if h.plugins:
        lines.append("plugins: " + ", ".join(_plugin_line(p, renderer) for p in h.plugins))
    if t.generic:
        lines.append(
            "generic (no handler): " + ", ".join(f"{k} {v}" for k, v in sorted(t.generic.items()))
        )
    if namespaces.summary:
        lines.append(namespaces.summary)
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
    ttys = tty_names(image)
    held = False
    for task in image.tasks:
        lines.append("")
        comm = os_name(task.comm, task.comm_bytes)
        tty = tty_name(task.tty_nr, ttys)
        shared = [p for p in table_users.get(task.fd_table or 0, []) if p != task.pid]
        note = f", fd table shared with {', '.join(map(str, shared))}" if shared else ""
        unshared = [th.tid for th in task.threads if th.fd_table != task.fd_table]
        if unshared:
            note += f", threads with own fd tables: {', '.join(map(str, unshared))}"
        if task.pid in namespaces.task_notes:
            note += f", {namespaces.task_notes[task.pid]}"
        lines.append(
            f"# pid {task.pid} ({comm}) ppid {task.ppid}, state {task.state}, "
            f"{len(task.threads)} thread(s), fd table {task.fd_table}{note}"
            + (f", session {task.session}" if task.session else "")
            + (f", tty {tty}" if tty else "")
        )
        if task.cmdline is not None:
            lines.append(f"#   cmdline: {cmdline_text(task.cmdline, task.cmdline_bytes)}")
        lines.append(header)
        tables = [(task.pid, task.fd_table)] + [
            (th.tid, th.fd_table) for th in task.threads if th.fd_table != task.fd_table
        ]
        for owner, table in tables:
            for fd, f in image.fds(table):
                fdcol = f"{fd.fd}{_fd_mode(f)}{'e' if fd.cloexec else ''}"
                if owner != task.pid:
                    fdcol = f"{owner}/{fdcol}"
                obj = f"{f.id}" + ("*" if refs.get(f.id, 0) > 1 else "")
                lines.append(
                    f"{comm[:15]:<15} {task.pid:>7} {fdcol:>6} {f.type:<6} "
                    f"{flag_names(f.flags):<16} {f.pos:>10} {obj:>6} {_dev(f.dev):>7} "
                    f"{f.ino:>10} {_file_name(f, image, renderer)}"
                )
        if task_files:
            rows = task_file_rows(task, image.files)
            held = held or bool(rows)
            lines += [_task_file_line(comm, task.pid, row, image, renderer) for row in rows]
    if namespaces.section:
        lines += ["", *namespaces.section]
    lines.append("")
    lines.append(
        "FD: number, then r/w/u(read-write)/p(O_PATH), e = close-on-exec; "
        "OBJ: open file description, * = shared by several fds"
    )
    if held:
        lines.append(
            "cwd/rtd: working/root directory, txt: executable, mem: mapped file (its ranges "
            "merged, FLAGS their permissions), DEL: mapped and unlinked; OBJ: the file"
        )
    if any(f.ghost == "saved" for f in image.files.values()):
        lines.append("content saved: asyckpt show IMAGE --extract OBJ OUT writes it out")
    return _text(lines)


def _file_name(f: File, image: Image, renderer: Renderer, mapped: str = "") -> str:
    """The NAME column of a file's row: its name as the kernel has it (``_text`` escapes
    the whole line, once), then what the image says about it (``mapped``: its ranges)."""
    name = os_name(f.path, f.path_bytes) + (" (deleted)" if f.deleted else "") + mapped
    name += ghost_text(f, image)
    text = renderer.text(f)
    if text:
        name += f" {text}"
    if f.locks or f.owner is not None:
        name += f" [{state_text(f.locks, f.owner)}]"
    if f.owner_error is not None:
        name += f" [{f.owner_error}]"
    if f.handler is None:
        name += "  [generic" + (f": {f.error}]" if f.error else "]")
    return name


def _task_file_line(comm: str, pid: int, row: TaskFileRow, image: Image, renderer: Renderer) -> str:
    fdcol = row.fd if row.owner == pid else f"{row.owner}/{row.fd}"
    f = row.file
    if f is None:
        what = row.error if row.error is not None else f"file {row.file_id} is not in the image"
        return f"{comm[:15]:<15} {pid:>7} {fdcol:>6} {'-':<6} {'-':<16} {'-':>10} {'-':>6} " + (
            f"{'-':>7} {'-':>10} [{what}]"
        )
    mapped = ""
    if row.ranges:
        mapped = f" [{row.ranges} range{'s' if row.ranges > 1 else ''}, {format_size(row.mapped)}]"
    name = _file_name(f, image, renderer, mapped)
    return (
        f"{comm[:15]:<15} {pid:>7} {fdcol:>6} {f.type:<6} {row.perms or '-':<16} {'-':>10} "
        f"{f.id:>6} {_dev(f.dev):>7} {f.ino:>10} {name}"
    )


def cmdline_text(args: list[str], raws: list[bytes] | None) -> str:
    """A captured command line as one line of the table: each argument as the kernel has
    it, quoted as a shell would need it (so where one ends is unambiguous); the table
    escapes the line."""
    import shlex

    if raws is None or len(raws) != len(args):
        return " ".join(map(shlex.quote, args))
    return " ".join(shlex.quote(os_name(arg, raw)) for arg, raw in zip(args, raws, strict=True))


def _text(lines: list[str]) -> str:
    """The lines as one text, each escaped: whatever a name holds stays on its line."""
    # Most lines are printable ASCII without a backslash, which escape leaves as they are:
    # three C-speed checks spare them its regular expression.
    return "\n".join(
        line if line.isascii() and line.isprintable() and "\\" not in line else escape(line)
        for line in lines
    )


def _raw(f: File) -> dict[str, Any]:
    if f.data == NO_DATA:
        return {}
    try:
        data = msgspec.msgpack.decode(f.data)
    except msgspec.DecodeError:
        return {}
    return data if isinstance(data, dict) else {}
