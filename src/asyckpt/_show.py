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
from ._names import json_name, json_names, json_names_in, os_name, outside_fd_json
from ._plugins.loading import ImagePlugin
from ._records import NO_DATA, File, Lock, MountEntry, OutsideFd, Owner, PluginInfo

__all__ = [
    "End",
    "Endpoint",
    "FileView",
    "Renderer",
    "endpoints",
    "render_endpoints",
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
        return self._view(f, False).text

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
    handlers installed here (``_plugins.image_plugins``); None renders every record raw."""
    h, t = image.header, image.trailer
    renderer = Renderer(image, plugins)
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
    tasks = []
    ttys = tty_names(image)
    for task in image.tasks:
        tdoc = msgspec.to_builtins(task)
        tdoc.pop("kind", None)
        json_name(tdoc, "comm", task.comm_bytes)
        json_name(tdoc, "root", task.root_bytes)
        tdoc["tty"] = tty_name(task.tty_nr, ttys)
        tdoc["threads"] = [{"tid": th.tid, "fd_table": th.fd_table} for th in task.threads]
        tdoc["fds"] = [
            {"fd": fd.fd, "file": fd.file, "cloexec": fd.cloexec}
            for fd, _ in image.fds(task.fd_table)
        ]
        tasks.append(tdoc)
    doc["tasks"] = tasks
    doc["files"] = [_file_doc(f, renderer, image) for f in image.files.values()]
    return doc


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
    ttys = tty_names(image)
    for task in image.tasks:
        lines.append("")
        comm = os_name(task.comm, task.comm_bytes)
        tty = tty_name(task.tty_nr, ttys)
        shared = [p for p in table_users.get(task.fd_table or 0, []) if p != task.pid]
        note = f", fd table shared with {', '.join(map(str, shared))}" if shared else ""
        unshared = [th.tid for th in task.threads if th.fd_table != task.fd_table]
        if unshared:
            note += f", threads with own fd tables: {', '.join(map(str, unshared))}"
        lines.append(
            f"# pid {task.pid} ({comm}) ppid {task.ppid}, state {task.state}, "
            f"{len(task.threads)} thread(s), fd table {task.fd_table}{note}"
            + (f", session {task.session}" if task.session else "")
            + (f", tty {tty}" if tty else "")
        )
        lines.append(header)
        tables = [(task.pid, task.fd_table)] + [
            (th.tid, th.fd_table) for th in task.threads if th.fd_table != task.fd_table
        ]
        for owner, table in tables:
            for fd, f in image.fds(table):
                # The name as the kernel has it: _text escapes the whole line, once.
                name = os_name(f.path, f.path_bytes) + (" (deleted)" if f.deleted else "")
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
                fdcol = f"{fd.fd}{_fd_mode(f)}{'e' if fd.cloexec else ''}"
                if owner != task.pid:
                    fdcol = f"{owner}/{fdcol}"
                obj = f"{f.id}" + ("*" if refs.get(f.id, 0) > 1 else "")
                lines.append(
                    f"{comm[:15]:<15} {task.pid:>7} {fdcol:>6} {f.type:<6} "
                    f"{flag_names(f.flags):<16} {f.pos:>10} {obj:>6} {_dev(f.dev):>7} "
                    f"{f.ino:>10} {name}"
                )
    lines.append("")
    lines.append(
        "FD: number, then r/w/u(read-write)/p(O_PATH), e = close-on-exec; "
        "OBJ: open file description, * = shared by several fds"
    )
    return _text(lines)


def _text(lines: list[str]) -> str:
    """The lines as one text, each escaped: whatever a name holds stays on its line."""
    # Most lines are printable ASCII without a backslash, which escape leaves as they are:
    # three C-speed checks spare them its regular expression.
    return "\n".join(
        line if line.isascii() and line.isprintable() and "\\" not in line else escape(line)
        for line in lines
    )


# --- endpoints (show --endpoints): who holds each end of a pipe or a connection ------------
#
# Pipes and FIFOs are linked by what the core records for every file (type, dev, ino,
# access); sockets by the raw fields of their handler's record, by convention
# (docs/plugins.md, "Records that link files"): ``peer_ino`` names the socket at the other
# end, ``pending`` the clients whose connections wait on a listener.  Raw fields, so this
# works without the plugin that wrote them.


class Holder(NamedTuple):
    """One fd on an end: the process, the thread whose table holds it, the fd."""

    pid: int
    tid: int
    fd: int
    comm: str


class End(NamedTuple):
    """One end of a pipe or connection: an open file description of the tree, or none
    (``file`` None: the end is outside the tree, or closed)."""

    role: str
    """``read``, ``write`` or ``read-write`` (pipes); ``socket`` (a connection's end)."""
    ino: int
    file: int | None
    holders: tuple[Holder, ...]
    pending_on: int | None = None
    """The server end of a connection not accepted yet: the file id of the listener it
    waits on."""
    outside_fds: tuple[OutsideFd, ...] = ()
    """An end outside the tree: the fds found on it after the thaw (``holders``)."""

    @property
    def outside(self) -> bool:
        return self.file is None and self.pending_on is None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "ino": self.ino,
            "file": self.file,
            "fds": [{"pid": h.pid, "tid": h.tid, "fd": h.fd} for h in self.holders],
            "outside": self.outside,
            "pending_on": self.pending_on,
            "outside_fds": [outside_fd_json(o) for o in self.outside_fds],
        }


class Endpoint(NamedTuple):
    """A pipe, a FIFO, or a connected socket pair, with its ends."""

    kind: str
    """``pipe``, ``fifo`` or ``socket``."""
    name: str
    """``pipe:[ino]``, the FIFO's path, or ``socket:[ino] <-> socket:[peer]``."""
    label: str
    ends: tuple[End, ...]
    name_bytes: bytes | None = None
    """A FIFO's path's exact bytes, when not UTF-8 (``name`` is then escaped)."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, object] = {
            "kind": self.kind,
            "name": self.name,
            "label": self.label,
            "ends": [e.to_json() for e in self.ends],
        }
        json_name(doc, "name", self.name_bytes)
        return doc


def _holders(image: Image) -> dict[int, list[Holder]]:
    """file id -> the fds holding it, task by task in image order (a table shared by
    several tasks lists its fds for each)."""
    out: dict[int, list[Holder]] = {}
    for task in image.tasks:
        comm = os_name(task.comm, task.comm_bytes)
        tables = [(task.pid, task.fd_table)] + [
            (th.tid, th.fd_table) for th in task.threads if th.fd_table != task.fd_table
        ]
        for tid, table in tables:
            for fd, f in image.fds(table):
                out.setdefault(f.id, []).append(Holder(task.pid, tid, fd.fd, comm))
    return out


def _raw(f: File) -> dict[str, Any]:
    if f.data == NO_DATA:
        return {}
    try:
        data = msgspec.msgpack.decode(f.data)
    except msgspec.DecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value else None


_PIPE_ROLES = {"r": "read", "w": "write", "rw": "read-write"}


def endpoints(image: Image) -> list[Endpoint]:
    """Every pipe and FIFO, and every socket with a peer, in order of first appearance,
    with the task/fd at each end (as ``lsof +E`` shows them)."""
    holders = _holders(image)
    outside: dict[tuple[str, int, int], list[OutsideFd]] = {
        (h.type, h.dev, h.ino): h.fds for h in image.outside
    }
    pipes: dict[tuple[int, int], list[File]] = {}
    sockets: dict[int, tuple[File, dict[str, Any]]] = {}
    for f in image.files.values():
        if f.type in ("pipe", "fifo"):
            pipes.setdefault((f.dev, f.ino), []).append(f)
        elif f.type == "socket":
            sockets.setdefault(f.ino, (f, _raw(f)))
    pending: dict[int, int] = {}  # a waiting client's inode -> its listener's file id
    for f, data in sockets.values():
        waiting = data.get("pending")
        for ino in waiting if isinstance(waiting, list) else ():
            if isinstance(ino, int):
                pending.setdefault(ino, f.id)

    def ends_of(ino: int, files: list[File], role: str) -> list[End]:
        return [End(role, ino, f.id, tuple(holders.get(f.id, ()))) for f in files]

    out: list[tuple[int, Endpoint]] = []
    for files in pipes.values():
        first = files[0]
        ends = [
            End(_PIPE_ROLES.get(f.access, f.access), f.ino, f.id, tuple(holders.get(f.id, ())))
            for f in files
        ]
        found = outside.get((first.type, first.dev, first.ino), [])
        for side in ("read", "write"):
            theirs = tuple(o for o in found if o.access in (side[0], "rw"))
            if theirs or not any(e.role in (side, "read-write") for e in ends):
                ends.append(End(side, first.ino, None, (), None, theirs))
        name = f"pipe:[{first.ino}]" if first.type == "pipe" else first.path
        label = "" if first.type == "pipe" else f"FIFO, ino {first.ino}"
        if first.deleted:
            label += ", unlinked"
        exact = first.path_bytes if first.type == "fifo" else None
        out.append((first.id, Endpoint(first.type, name, label, tuple(ends), exact)))
    same_ino: dict[int, list[File]] = {}
    for f in image.files.values():
        if f.type == "socket":
            same_ino.setdefault(f.ino, []).append(f)
    done: set[int] = set()
    for ino, (f, data) in sockets.items():
        peer = _int(data.get("peer_ino"))
        if ino in done or (peer is None and ino not in pending):
            continue
        ends = ends_of(ino, same_ino[ino], "socket")
        if peer is None:  # a client whose connection waits on a listener of the tree
            done.add(ino)
            ends.append(End("socket", 0, None, (), pending[ino]))
            name = f"socket:[{ino}] -> listener socket:[{image.files[pending[ino]].ino}]"
        else:
            done.update((ino, peer))
            if peer in same_ino:
                ends += ends_of(peer, same_ino[peer], "socket")
            else:
                ends.append(End("socket", peer, None, (), None, _held(outside, f, peer)))
            name = f"socket:[{ino}] <-> socket:[{peer}]"
        words = [str(data[k]) for k in ("family", "type") if isinstance(data.get(k), str)]
        out.append((f.id, Endpoint("socket", name, " ".join(words), tuple(ends))))
    # Clients outside the tree whose connections wait on a listener of the tree.
    for ino, listener in pending.items():
        if ino not in done:
            f = image.files[listener]
            words = [str(v) for k in ("family", "type") if isinstance(v := _raw(f).get(k), str)]
            ends = [
                End("socket", ino, None, (), None, _held(outside, f, ino)),
                End("socket", 0, None, (), listener),
            ]
            name = f"socket:[{ino}] -> listener socket:[{f.ino}]"
            out.append((listener, Endpoint("socket", name, " ".join(words), tuple(ends))))
    out.sort(key=lambda pair: pair[0])
    return [e for _, e in out]


def _held(
    outside: Mapping[tuple[str, int, int], list[OutsideFd]], f: File, ino: int
) -> tuple[OutsideFd, ...]:
    """The fds outside the tree on socket ``ino``, of the same sockfs as ``f``."""
    return tuple(outside.get(("socket", f.dev, ino), ()))


def _outside_text(o: OutsideFd) -> str:
    """``pid/comm fd N`` and its mode, as lsof +E names the process at the other end."""
    mode = _FD_MODES.get(o.access, "?")
    return f"{o.pid}/{os_name(o.comm, o.comm_bytes)} fd {o.fd}{mode}"


def _end_text(end: End, image: Image) -> str:
    if end.pending_on is not None:
        listener = image.files[end.pending_on]
        return f"pending on listener socket:[{listener.ino}] (file {listener.id}), not accepted"
    if end.file is None:
        if end.outside_fds:
            return "! outside the tree: " + ", ".join(map(_outside_text, end.outside_fds))
        if image.header.endpoints == "system":
            return "! outside the tree: no holder found (closed)"
        return "! outside the tree (or closed)"
    f = image.files[end.file]
    fds = ", ".join(
        f"{h.comm} {h.pid}{'/' + str(h.tid) if h.tid != h.pid else ''} fd {h.fd}{_fd_mode(f)}"
        for h in end.holders
    )
    return f"{fds} (file {end.file})"


def render_endpoints(image: Image) -> str:
    """``show --endpoints``: each pipe, FIFO and connected socket pair, the task/fd at
    each end, and ``!`` where an end is outside the tree."""
    eps = endpoints(image)
    outside = sum(1 for e in eps if any(end.outside for end in e.ends))
    kinds = {k: sum(1 for e in eps if e.kind == k) for k in ("pipe", "fifo", "socket")}
    lines = [
        f"pipes: {kinds['pipe']}, FIFOs: {kinds['fifo']}, connections: {kinds['socket']}; "
        f"with an end outside the tree (!): {outside}"
    ]
    if image.header.endpoints == "system":
        lines.append(
            "ends outside the tree: searched for after the thaw (not frozen: "
            "they may have changed since the capture)"
        )
    for e in eps:
        lines.append("")
        name = os_name(e.name, e.name_bytes)
        lines.append(f"{e.kind} {name}" + (f"  ({e.label})" if e.label else ""))
        for end in e.ends:
            who = end.role if e.kind != "socket" else f"socket:[{end.ino}]" if end.ino else "peer"
            lines.append(f"  {who:<22} {_end_text(end, image)}")
    return _text(lines)
