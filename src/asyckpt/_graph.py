"""graph: an image as a picture of its tree and of what the tasks share (Graphviz DOT).

Pure: an :class:`~asyckpt._image.Image` in, DOT text out; ``_graphviz`` runs ``dot``.

What is drawn:

- every task as a box (comm, pid), under its parent (tree edges, bold);
- every *object* once: an open file description held by several tasks, and each pipe,
  FIFO and socket connection (``_endpoints.endpoints``: both ends of a pipe, both sockets of
  a pair) whose ends are held by several tasks, or that reaches outside the tree; a
  listener that connections wait on; an epoll that watches drawn objects;
- one edge per task and object, labelled with that task's fds on it (``3w 4r``), arrows
  on pipes and FIFOs showing which way the data flows;
- an end outside the tree as a dashed node of its own, next to its object;
- fds on nothing shared ("private": a task's own files) as lines inside the task's box,
  or left out with ``shared_only`` (the default for a large tree), counted there.

Every name (comm, path, hostname) comes from the processes or the image: it is escaped
with ``_escape.escape`` and then quoted for DOT, so no name can end a label, start a
statement, or reach a record shape's ``<>{}|`` syntax (none is used).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from ._endpoints import Endpoint, Holder, _holders, endpoints
from ._escape import escape
from ._image import Image
from ._names import os_name
from ._records import File, Task
from ._show import _fd_mode, _raw

__all__ = [
    "AUTO_SHARED_OBJECTS",
    "AUTO_SHARED_TASKS",
    "KINDS",
    "KIND_COLORS",
    "Edge",
    "Graph",
    "GraphOptions",
    "ObjectNode",
    "TaskNode",
    "build_graph",
    "kind_of",
    "to_dot",
]

# Above either, private fds are left out unless asked for (GraphOptions.shared_only).
AUTO_SHARED_TASKS = 50
AUTO_SHARED_OBJECTS = 500
# Private fds listed in a task's box; the rest are counted.
MAX_ROWS = 12
# Fds written on one edge; the rest are counted.
MAX_EDGE_FDS = 6
# Characters of a name shown (the middle is elided); `asyckpt show` has them whole.
MAX_NAME = 48

# One colour per kind, for object nodes (fill) and their edges (line): Color Brewer
# "Paired", light for fills, dark for lines, told apart without reading the legend.
KIND_COLORS: dict[str, tuple[str, str]] = {
    "pipe": ("#a6cee3", "#1f78b4"),
    "fifo": ("#cab2d6", "#6a3d9a"),
    "socket": ("#b2df8a", "#33a02c"),
    "reg": ("#fdbf6f", "#ff7f00"),
    "dir": ("#ffff99", "#b15928"),
    "link": ("#e0e0e0", "#636363"),
    "chr": ("#fb9a99", "#e31a1c"),
    "blk": ("#fb9a99", "#e31a1c"),
    "epoll": ("#8dd3c7", "#01665e"),
    "anon": ("#d9d9d9", "#525252"),
}
KINDS = tuple(KIND_COLORS)
_KIND_WORDS = {
    "pipe": "pipe",
    "fifo": "FIFO",
    "socket": "socket",
    "reg": "file",
    "dir": "directory",
    "link": "symlink (O_PATH)",
    "chr": "char device",
    "blk": "block device",
    "epoll": "epoll",
    "anon": "anon inode",
}


class GraphOptions(NamedTuple):
    kinds: frozenset[str] | None = None
    """Draw only fds of these kinds (``KINDS``); None: all."""
    pid: int | None = None
    """Draw only this task and its descendants; None: the whole tree."""
    shared_only: bool | None = None
    """Leave private fds out; None: when the drawn tree has more than
    ``AUTO_SHARED_TASKS`` tasks or ``AUTO_SHARED_OBJECTS`` shared objects."""


class TaskNode(NamedTuple):
    id: str
    pid: int
    comm: str
    state: str
    rows: tuple[str, ...]
    """Its private fds (``3u /path``), at most ``MAX_ROWS``."""
    unlisted: int
    """Private fds not listed: past ``MAX_ROWS``, or all of them with ``shared_only``."""


class ObjectNode(NamedTuple):
    id: str
    kind: str
    """A ``KINDS`` word: the file type, or ``epoll``."""
    title: str
    """What it is: ``pipe``, ``unix stream``, ``file 7``..."""
    name: str
    """``pipe:[ino]``, a path, ``socket:[a] <-> socket:[b]`` (not escaped yet)."""
    files: tuple[int, ...]
    """The image's file ids it stands for (the ``OBJ`` column of ``asyckpt show``)."""
    outside: bool = False
    """An end outside the tree (or closed): not an open file of the image."""
    same_fds: str = ""
    """The fds every drawn task holding it holds it by, when they are the same for all
    (inherited, most often) and it has several: written once in the node rather than on
    each edge."""


class Edge(NamedTuple):
    tail: str
    head: str
    kind: str
    """``tree`` (parent to child), ``fd`` (task to object), ``outside``, ``pending``,
    ``watch`` (an epoll's target)."""
    label: str = ""
    dir: str = "none"
    """Arrowheads, as DOT's ``dir``: ``forward``, ``back``, ``both`` or ``none``."""
    color: str = "black"


class Graph(NamedTuple):
    title: tuple[str, ...]
    tasks: tuple[TaskNode, ...]
    objects: tuple[ObjectNode, ...]
    edges: tuple[Edge, ...]
    shared_only: bool


def _nid(prefix: str, number: int) -> str:
    """A DOT node id, a bare word whatever the number (an image is input: a pid or a
    file id may be negative)."""
    return f"{prefix}{number}" if number >= 0 else f"{prefix}n{-number}"


def kind_of(f: File) -> str:
    """The ``KINDS`` word of a file: its type, or ``epoll`` for an epoll instance."""
    if f.type == "anon" and f.path == "anon_inode:[eventpoll]":
        return "epoll"
    return f.type


def _short(text: str, limit: int = MAX_NAME) -> str:
    """An escaped name of at most ``limit`` characters, its middle elided."""
    text = escape(text)
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return text[:half] + "…" + text[len(text) - (limit - 1 - half) :]


def _fd_text(h: Holder, f: File) -> str:
    text = f"{h.fd}{_fd_mode(f)}"
    return text if h.tid == h.pid else f"{h.tid}/{text}"


def _fds_label(items: list[tuple[Holder, File]]) -> str:
    texts = [_fd_text(h, f) for h, f in sorted(items, key=lambda i: (i[0].tid, i[0].fd))]
    if len(texts) > MAX_EDGE_FDS:
        more = len(texts) - MAX_EDGE_FDS + 1
        texts = [*texts[: MAX_EDGE_FDS - 1], f"(+{more})"]
    return " ".join(texts)


def _data_dir(files: Iterable[File]) -> str:
    """Which way data flows between a task and a pipe, from the ends it holds."""
    modes = {f.access for f in files}
    if modes == {"w"}:
        return "forward"
    if modes == {"r"}:
        return "back"
    return "both"


def _subtree(tasks: list[Task], pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for t in tasks:
        children.setdefault(t.ppid, []).append(t.pid)
    out, stack = set(), [pid]
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(children.get(p, ()))
    return out


class _Candidate(NamedTuple):
    """An object that may be drawn, before the choice of what is."""

    node: ObjectNode
    endpoint: Endpoint | None
    holders: tuple[tuple[Holder, File], ...]
    pids: frozenset[int]
    reaches_out: bool
    """An end outside the tree, or a connection pending on a listener."""


def _candidates(
    image: Image, holders: Mapping[int, list[Holder]], keep: Callable[[File], bool]
) -> list[_Candidate]:
    """Every object that may be drawn: each pipe, FIFO and connection (its ends
    together), and each other open file description, of the kinds kept."""
    files = image.files
    out: list[_Candidate] = []
    in_endpoint: set[int] = set()
    for ep in endpoints(image):
        ids = tuple(e.file for e in ep.ends if e.file is not None)
        if not ids:
            # A client outside the tree waiting on a listener of the tree: no task of
            # the tree holds anything of it.
            continue
        first = files[ids[0]]
        in_endpoint.update(ids)
        if not keep(first):
            continue
        held = tuple((h, files[e.file]) for e in ep.ends if e.file is not None for h in e.holders)
        reaches_out = any(e.outside or e.pending_on is not None for e in ep.ends)
        title = _KIND_WORDS[kind_of(first)] if ep.kind != "socket" else ep.label or "socket"
        node = ObjectNode(
            _nid("o", ids[0]), kind_of(first), title, os_name(ep.name, ep.name_bytes), ids
        )
        out.append(_Candidate(node, ep, held, frozenset(h.pid for h, _ in held), reaches_out))
    for f in files.values():
        if f.id in in_endpoint or not keep(f):
            continue
        held = tuple((h, f) for h in holders.get(f.id, ()))
        title = f"{_KIND_WORDS.get(kind_of(f), f.type)} #{f.id}"
        name = os_name(f.path, f.path_bytes) + (" (deleted)" if f.deleted else "")
        node = ObjectNode(_nid("o", f.id), kind_of(f), title, name, (f.id,))
        out.append(_Candidate(node, None, held, frozenset(h.pid for h, _ in held), False))
    return out


def _add_linked(
    image: Image,
    candidates: list[_Candidate],
    chosen: set[str],
    drawn_pids: set[int],
    shared_only: bool,
) -> dict[str, list[int]]:
    """Add to ``chosen`` the objects drawn for their links: a listener a drawn
    connection waits on, an epoll watching a drawn object (unless ``shared_only``).
    Returns the file ids each epoll watches, by node id."""
    by_file = {fid: c for c in candidates for fid in c.node.files}
    for c in candidates:
        if c.node.id in chosen and c.endpoint is not None:
            for e in c.endpoint.ends:
                if e.pending_on is not None and e.pending_on in by_file:
                    chosen.add(by_file[e.pending_on].node.id)
    watches: dict[str, list[int]] = {}
    for c in candidates:
        if c.node.kind == "epoll" and c.pids & drawn_pids:
            targets = _raw(image.files[c.node.files[0]]).get("targets")
            found = [t.get("file") for t in targets if isinstance(t, dict)] if targets else []
            ids = watches[c.node.id] = [i for i in found if isinstance(i, int) and i in by_file]
            if not shared_only and any(by_file[i].node.id in chosen for i in ids):
                chosen.add(c.node.id)
    return watches


def build_graph(image: Image, options: GraphOptions | None = None) -> Graph:
    """What to draw.  Raises ``ValueError`` for a ``pid`` the image has no task for."""
    options = options or GraphOptions()
    wanted = options.kinds
    drawn_pids = {t.pid for t in image.tasks}
    if options.pid is not None:
        if options.pid not in drawn_pids:
            raise ValueError(f"the image has no task {options.pid}")
        drawn_pids = _subtree(image.tasks, options.pid)
    tasks = [t for t in image.tasks if t.pid in drawn_pids]

    def keep(f: File) -> bool:
        return wanted is None or kind_of(f) in wanted

    holders = _holders(image)
    candidates = _candidates(image, holders, keep)
    # Shared: held by several tasks of the image (drawn or not: a subtree's link to the
    # rest of the tree is a link too), and by at least one drawn task.
    shared = [c for c in candidates if len(c.pids) > 1 and c.pids & drawn_pids]
    shared_only = options.shared_only
    if shared_only is None:
        shared_only = len(tasks) > AUTO_SHARED_TASKS or len(shared) > AUTO_SHARED_OBJECTS
    chosen = {c.node.id for c in shared}
    if not shared_only:
        chosen.update(c.node.id for c in candidates if c.reaches_out and c.pids & drawn_pids)
    watches = _add_linked(image, candidates, chosen, drawn_pids, shared_only)

    drawn = [c for c in candidates if c.node.id in chosen]
    drawn.sort(key=lambda c: c.node.files[0])
    node_of = {fid: c.node.id for c in drawn for fid in c.node.files}

    edges: list[Edge] = []
    for t in tasks:
        if t.ppid in drawn_pids and t.pid != options.pid:
            edges.append(Edge(_nid("t", t.ppid), _nid("t", t.pid), "tree"))
    objects: list[ObjectNode] = []
    for c in drawn:
        node, line = c.node, KIND_COLORS.get(c.node.kind, KIND_COLORS["anon"])[1]
        others = len(c.pids - drawn_pids)
        if others:
            node = node._replace(title=f"{node.title}; also {others} task(s) not drawn")
        per_task: dict[int, list[tuple[Holder, File]]] = {}
        for h, f in c.holders:
            if h.pid in drawn_pids:
                per_task.setdefault(h.pid, []).append((h, f))
        labels = {pid: _fds_label(items) for pid, items in per_task.items()}
        if len(labels) > 1 and len(set(labels.values())) == 1:
            node = node._replace(same_fds=next(iter(labels.values())))
        objects.append(node)
        piped = node.kind in ("pipe", "fifo")
        for pid in sorted(per_task):
            items = per_task[pid]
            direction = _data_dir(f for _, f in items) if piped else "none"
            edges.append(Edge(_nid("t", pid), node.id, "fd", labels[pid], direction, line))
        if c.endpoint is not None:
            edges += _outside_edges(c.endpoint, node, objects, line, node_of)
        for target in watches.get(node.id, ()):
            if target in node_of:
                edges.append(Edge(node.id, node_of[target], "watch", "", "forward", line))

    task_nodes = []
    privates = _private(image, holders, set(node_of), keep)
    for t in tasks:
        private = privates.get(t.pid, [])
        rows = private[:MAX_ROWS] if not shared_only else []
        task_nodes.append(
            TaskNode(
                _nid("t", t.pid),
                t.pid,
                os_name(t.comm, t.comm_bytes),
                t.state,
                tuple(rows),
                len(private) - len(rows),
            )
        )
    header = image.header
    shown = sum(1 for o in objects if not o.outside)
    heading = (
        f"asyckpt image of pid {header.root_pid} on {header.hostname}, {header.time}",
        f"{_count(len(task_nodes), 'task')}, {_count(shown, 'shared object')}"
        + (
            "; private fds left out (--shared-only)"
            if shared_only
            else "; private fds listed in each task"
        ),
    )
    return Graph(heading, tuple(task_nodes), tuple(objects), tuple(edges), shared_only)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _outside_edges(
    ep: Endpoint,
    node: ObjectNode,
    objects: list[ObjectNode],
    color: str,
    node_of: Mapping[int, str],
) -> list[Edge]:
    """The ends of ``ep`` outside the tree (dashed nodes of their own, added to
    ``objects``) and the edge to a listener it waits on."""
    edges = []
    for n, e in enumerate(ep.ends):
        if e.pending_on is not None:
            if e.pending_on in node_of:
                edges.append(Edge(node.id, node_of[e.pending_on], "pending", "waits", "forward"))
            continue
        if not e.outside:
            continue
        if ep.kind == "socket":
            what, name, direction = "peer outside the tree", f"socket:[{e.ino}]", "none"
        else:
            what, name = f"{e.role} end outside the tree (or closed)", ""
            direction = "forward" if e.role == "read" else "back"
        out = ObjectNode(f"{node.id}x{n}", node.kind, what, name, (), outside=True)
        objects.append(out)
        edges.append(Edge(node.id, out.id, "outside", "", direction, color))
    return edges


def _private(
    image: Image,
    holders: Mapping[int, list[Holder]],
    drawn: set[int],
    keep: Callable[[File], bool],
) -> dict[int, list[str]]:
    """Each task's fds on files not drawn as objects, one line per file (``3u 5u /path``),
    by pid: one pass over the holders, whatever the number of tasks."""
    per_task: dict[int, dict[int, list[Holder]]] = {}
    for fid, hs in holders.items():
        if fid in drawn or not keep(image.files[fid]):
            continue
        for h in hs:
            per_task.setdefault(h.pid, {}).setdefault(fid, []).append(h)
    out: dict[int, list[str]] = {}
    for pid, per_file in per_task.items():
        rows = out[pid] = []
        for fid in sorted(per_file, key=lambda i: min(h.fd for h in per_file[i])):
            f = image.files[fid]
            label = _fds_label([(h, f) for h in per_file[fid]])
            path = os_name(f.path, f.path_bytes)  # escaped once, by _short
            rows.append(f"{label}  {path}" + (" (deleted)" if f.deleted else ""))
    return out


# --- DOT -------------------------------------------------------------------------------


def _quote(text: str) -> str:
    """A DOT quoted string showing ``text`` (already escaped: printable, one line) as it
    is: only ``\\`` and ``"`` are special inside DOT quotes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lines(lines: Iterable[str], *, left: bool = False) -> str:
    r"""A multi-line DOT label from escaped lines: centred, or left-justified (``\l``
    ends each line, the last one included)."""
    sep = "\\l" if left else "\\n"
    body = sep.join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return f'"{body}{sep if left else ""}"'


def _attrs(**attrs: str) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in attrs.items()) + "]"


def _task_dot(t: TaskNode) -> str:
    head = f"{_short(t.comm, 24)}  pid {t.pid}" + ("  (zombie)" if t.state == "Z" else "")
    lines = [head] + [_short(row, MAX_NAME + 12) for row in t.rows]
    if t.unlisted:
        lines.append(f"+{t.unlisted} private fd(s) not shown")
    label = _lines(lines, left=True) if len(lines) > 1 else _quote(head)
    return f"  {t.id} {_attrs(label=label, shape='box', style='bold', penwidth='2')};"


def _object_dot(o: ObjectNode) -> str:
    fill, line = KIND_COLORS.get(o.kind, KIND_COLORS["anon"])
    lines = [escape(o.title)] + ([_short(o.name)] if o.name else [])
    if o.same_fds:
        lines.append(f"fd {o.same_fds} in each task")
    if o.outside:
        return (
            f"  {o.id} "
            + _attrs(
                label=_lines(lines),
                shape="box",
                style='"dashed,rounded"',
                color=_quote(line),
                fontcolor='"#555555"',
            )
            + ";"
        )
    return (
        f"  {o.id} "
        + _attrs(
            label=_lines(lines),
            shape="box",
            style='"filled,rounded"',
            fillcolor=_quote(fill),
            color=_quote(line),
        )
        + ";"
    )


_EDGE_STYLE = {
    "tree": {"penwidth": "2.5", "arrowhead": "none", "weight": "10"},
    "fd": {},
    "outside": {"style": "dashed"},
    "pending": {"style": "dashed", "constraint": "false"},
    "watch": {"style": "dotted", "constraint": "false"},
}


def _edge_dot(e: Edge, same_fds: Mapping[str, str]) -> str:
    attrs = dict(_EDGE_STYLE[e.kind])
    if e.label and same_fds.get(e.head) != e.label:
        attrs["label"] = _quote(e.label)
    if e.kind != "tree":
        attrs["dir"] = e.dir
        attrs["color"] = attrs["fontcolor"] = _quote(e.color)
    return f"  {e.tail} -> {e.head} {_attrs(**attrs)};"


def _legend(kinds: list[str], shared_only: bool) -> list[str]:
    out = [
        "  subgraph cluster_legend {",
        '    label="legend"; fontsize=10; color="#999999"; style=rounded;',
        "    node [fontsize=9, height=0.25];",
        f'    legend_task [label="task: comm  pid{"" if shared_only else chr(92) + "lprivate fds"}'
        f'{chr(92) + "l" if not shared_only else ""}", shape=box, style=bold, penwidth=2];',
    ]
    for k in kinds:
        fill, line = KIND_COLORS[k]
        out.append(
            f"    legend_{k} "
            + _attrs(
                label=_quote(_KIND_WORDS[k]),
                shape="box",
                style='"filled,rounded"',
                fillcolor=_quote(fill),
                color=_quote(line),
            )
            + ";"
        )
    out.append(
        '    legend_out [label="outside the tree", shape=box, style="dashed,rounded", '
        'fontcolor="#555555"];'
    )
    # Invisible edges stack the legend into a column.
    names = ["legend_task", *(f"legend_{k}" for k in kinds), "legend_out"]
    out.append("    " + " -> ".join(names) + " [style=invis];")
    out.append(
        "    legend_note [shape=plaintext, fontsize=8, label=\"edge label: the task's fds on it"
        "\\l(3w = fd 3, written; r read, u read-write, p O_PATH)\\l"
        "fd 3u in each task: the same fds in every task holding it\\l"
        "#7: the OBJ column of asyckpt show\\l"
        "arrows: data flow through a pipe\\lbold line: parent to child\\l"
        "dotted: an epoll watches it\\l"
        'dashed: a connection waiting on a listener\\l"];'
    )
    out.append(f"    {names[-1]} -> legend_note [style=invis];")
    out.append("  }")
    return out


def to_dot(graph: Graph) -> str:
    """The graph as DOT text, for ``dot -Tsvg``.  Deterministic: the same image gives
    the same text."""
    out = [
        "digraph asyckpt {",
        "  graph [rankdir=LR, nodesep=0.25, ranksep=0.8, fontname=Helvetica, fontsize=12,",
        f"         labelloc=t, label={_lines(escape(line) for line in graph.title)}];",
        '  node [fontname=Helvetica, fontsize=10, margin="0.12,0.06"];',
        "  edge [fontname=Helvetica, fontsize=9, arrowsize=0.7];",
    ]
    out += [_task_dot(t) for t in graph.tasks]
    out += [_object_dot(o) for o in graph.objects]
    same_fds = {o.id: o.same_fds for o in graph.objects if o.same_fds}
    out += [_edge_dot(e, same_fds) for e in graph.edges]
    present = {o.kind for o in graph.objects}
    out += _legend([k for k in KINDS if k in present], graph.shared_only)
    out.append("}")
    return "\n".join(out) + "\n"
