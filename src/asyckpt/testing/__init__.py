"""Helpers for testing fd-type handlers (plugins), real rather than mocked.

* :func:`hold_fd` starts a real process holding the fd a handler should claim;
  :func:`capture_fd` captures it through the whole pipeline (freeze, scan, dispatch, the
  handler, the image writer and reader) with the handler installed, and returns what the
  image holds for that fd, rendered as ``asyckpt show`` renders it.
* :func:`roundtrip` writes a record into a real image, reads it back and renders it.
* :func:`facts_of` gives the facts the core would hand a handler for a live fd, and
  :func:`make_facts` builds them from literal values, for the pure parts of a handler
  (``claims``, ``capture`` on facts alone).
* :func:`load_handler` checks a handler against the contract exactly as loading it from
  its entry point does; :func:`dispatch_with` makes a dispatch that holds it as if it
  were installed, for ``checkpoint_tree(..., dispatch=...)``.
* :func:`handler_context` gives a ``HandlerContext`` for calling ``capture`` directly,
  in a capture session of its own (``ctx.state`` runs the handler's ``begin``);
  :func:`link_record` runs the handler's ``link`` on the record in that session, over
  live fds standing for the tree's descriptions, and :func:`finish_record` its
  ``finish``.  (:func:`capture_fd` runs every hook, as a capture does.)

docs/plugins.md shows them in use.  Capturing needs what asyckpt needs: Linux and root.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast, get_args

import msgspec

from .._errors import PluginError
from .._facts import fd_facts
from .._image import Image, ImageWriter, read_image
from .._plugins.contract import FdFacts, LinkRef, StatInfo
from .._plugins.dispatch import Dispatch
from .._plugins.links import CaptureLinks
from .._plugins.loaded import LoadedHandler
from .._plugins.loading import ImagePlugin, load_handlers
from .._plugins.session import CaptureSession, CaptureTree, HandlerContext
from .._procparse import FdInfo, parse_fdinfo
from .._records import FORMAT_VERSION, Fd, FdTable, File, FileType, Header, Task, Trailer
from .._rows import stat_fields
from .._show import Renderer, to_json_doc
from .._validate import check_file

__all__ = [
    "CapturedFd",
    "FdHolder",
    "RoundTrip",
    "capture_fd",
    "dispatch_with",
    "facts_of",
    "finish_record",
    "handler_context",
    "hold_fd",
    "link_record",
    "load_handler",
    "make_facts",
    "restore_fd",
    "roundtrip",
]


def load_handler(
    handler: object, *, distribution: str = "test", version: str = "0"
) -> LoadedHandler:
    """Check ``handler`` (a class, instantiated without arguments, or an instance)
    against the contract, as loading it from an entry point does; PluginError if not."""
    if isinstance(handler, LoadedHandler):
        return handler
    return LoadedHandler(handler() if isinstance(handler, type) else handler, distribution, version)


def dispatch_with(*handlers: object, builtins: bool = True) -> Dispatch:
    """A dispatch holding ``handlers`` as if they were installed, plus asyckpt's own
    (unless ``builtins`` is false).  Other installed plugins are left out, so a test
    does not depend on what else the machine has."""
    loaded = [load_handler(h) for h in handlers]
    if not builtins:
        return Dispatch(loaded)
    return load_handlers(autoload=False, extra=loaded, warn=False)


@contextlib.contextmanager
def handler_context(
    handler: object, pid: int, *, tid: int | None = None, pipe_data: int = 0
) -> Iterator[HandlerContext]:
    """A ``HandlerContext`` for the fds of ``pid`` (of thread ``tid``'s table), bound to
    ``handler``, in a capture session of that one process (not frozen): for calling
    ``capture`` directly on :func:`facts_of` facts.  ``ctx.state`` runs the handler's
    ``begin`` on first use.  Every fd it took is closed when the block ends::

        with handler_context(MyHandler, pid) as ctx:
            record = MyHandler().capture(facts_of(pid, fd), ctx)
    """
    loaded = load_handler(handler)
    tid = pid if tid is None else tid
    session = CaptureSession((pid,), (tid,), pipe_data=pipe_data, consistent=False)
    ctx = HandlerContext(tid, session)
    ctx._handler = loaded
    try:
        yield ctx
    finally:
        ctx._close()


def link_record(
    handler: object,
    record: msgspec.Struct,
    ctx: HandlerContext,
    fd: int,
    *,
    files: Mapping[int, int] | None = None,
    pid: int | None = None,
) -> msgspec.Struct:
    """Run ``handler``'s ``link`` hook on ``record`` (captured from ``fd``) as a capture
    would before the thaw, in ``ctx``'s session (from :func:`handler_context`; not
    frozen, so the fds must not change meanwhile).  ``files`` stands for the tree's
    descriptions: {file id: fd number} of live fds in the table ``ctx`` was made for
    (default: every fd there, numbered by fd).  Returns the record unchanged for a
    handler without ``link``::

        with handler_context(EpollHandler, pid) as ctx:
            record = EpollHandler().capture(facts_of(pid, ep), ctx)
            record = link_record(EpollHandler, record, ctx, ep)
    """
    loaded = load_handler(handler)
    if loaded.link is None:
        return record
    tid = ctx._tid
    if files is None:
        files = {int(n): int(n) for n in os.listdir(f"/proc/{tid}/fd")}
    rows = []
    for file_id, their_fd in files.items():
        try:
            st = os.stat(f"/proc/{tid}/fd/{their_fd}")
        except FileNotFoundError:
            continue  # listdir's own fd, closed since
        rows.append((st.st_dev, st.st_ino, file_id, tid, their_fd))
    numbers = {their_fd: file_id for file_id, their_fd in files.items()}
    links = CaptureLinks(ctx.session, rows, lambda t: numbers if t == tid else {})
    links._handler = ctx._handler or loaded
    links.ref = LinkRef(ctx.session.pids[0] if pid is None else pid, tid, fd)
    linked: msgspec.Struct = loaded.link(record, links)
    return linked


def finish_record(
    handler: object,
    record: msgspec.Struct,
    ctx: HandlerContext,
    *,
    files: Iterable[tuple[str, int, int]] = (),
) -> msgspec.Struct:
    """Run ``handler``'s ``finish`` hook on ``record`` as a capture would after the thaw,
    in ``ctx``'s session (from :func:`handler_context`), with a tree holding ``files``:
    (kind, dev, ino) of each open file "in the tree".  Returns the record unchanged for
    a handler without ``finish``."""
    loaded = load_handler(handler)
    if loaded.finish is None:
        return record
    tree = CaptureTree(ctx.session, list(files))
    tree._handler = ctx._handler or loaded
    finished: msgspec.Struct = loaded.finish(record, tree)
    return finished


# --- a real process holding an fd ---------------------------------------------------------

_HOLDER = """\
import os, signal, sys
{setup}
print(fd, flush=True)
while True:
    signal.pause()
"""


class FdHolder(NamedTuple):
    """A running process (:func:`hold_fd`) and the fd number it holds."""

    pid: int
    fd: int


@contextlib.contextmanager
def hold_fd(
    path: str | os.PathLike[str] | None = None,
    *,
    flags: int = os.O_RDONLY,
    code: str | None = None,
) -> Iterator[FdHolder]:
    """Run a process that opens ``path`` with ``flags`` (or runs ``code``, Python that
    sets ``fd``) and keeps the fd open; kill it (by pid) when the block ends::

        with hold_fd("/dev/zero") as holder:
            captured = capture_fd(MyHandler, holder.pid, holder.fd)
        with hold_fd(code="fd = os.eventfd(7)") as holder:
            ...
    """
    if code is None:
        if path is None:
            raise TypeError("hold_fd takes a path or code")
        code = f"fd = os.open({os.fspath(path)!r}, {flags})"
    elif path is not None:
        raise TypeError("hold_fd takes a path or code, not both")
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER.format(setup=code)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.wait(timeout=10)
            raise RuntimeError(f"the fd holder failed to start (exit {proc.returncode})")
        yield FdHolder(proc.pid, int(line))
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# --- facts --------------------------------------------------------------------------------


def _stat_info(st: os.stat_result) -> StatInfo:
    return StatInfo(*stat_fields(st))


def facts_of(pid: int, fd: int, *, tid: int | None = None) -> FdFacts:
    """The facts the core hands a handler for the live fd ``fd`` of ``pid`` (of thread
    ``tid``'s table, if it has its own), read from /proc as a capture reads them but
    without freezing.  ``facts_of(os.getpid(), fd)`` works on the test's own fds."""
    tid = pid if tid is None else tid
    magic = f"/proc/{tid}/fd/{fd}"
    link = os.readlink(magic)
    st = os.stat(magic)  # through the magic link: the open file itself
    with open(f"/proc/{tid}/fdinfo/{fd}", "rb") as f:
        info = parse_fdinfo(f.read())
    root = os.readlink(f"/proc/{pid}/root")
    fdinfo = FdInfo(info.pos, info.flags, info.mnt_id, st.st_ino, info.extra)
    return fd_facts(pid, tid, fd, link, _stat_info(st), fdinfo, root)


def make_facts(
    link: str,
    *,
    st_mode: int = stat.S_IFREG | 0o644,
    rdev: int = 0,
    pid: int = 4242,
    tid: int | None = None,
    fd: int = 3,
    pos: int = 0,
    flags: int = os.O_RDONLY,
    mnt_id: int = 1,
    extra: Iterable[tuple[str, str]] = (),
    dev: int = 0,
    ino: int = 1,
    nlink: int = 1,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime_ns: int = 0,
    blocks: int = 0,
    root: str = "/",
) -> FdFacts:
    """Facts from literal values, classified by the core's own (pure) code: ``kind``
    follows from ``st_mode`` and ``link`` as in a capture.  For example
    ``make_facts("/dev/null", st_mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))``."""
    st = StatInfo(st_mode, dev, ino, rdev, nlink, uid, gid, size, mtime_ns, blocks)
    fdinfo = FdInfo(pos, flags, mnt_id, ino, tuple(extra))
    return fd_facts(pid, pid if tid is None else tid, fd, link, st, fdinfo, root)


# --- through the image --------------------------------------------------------------------


def _plugins_for(loaded: LoadedHandler) -> dict[str, ImagePlugin]:
    return {loaded.name: ImagePlugin(loaded, loaded.version, None)}


class RoundTrip(NamedTuple):
    """A record after a trip through an image, and how ``asyckpt show`` presents it."""

    record: msgspec.Struct
    """Decoded from the image with the handler's record_type."""
    data: Any
    """``files[].data`` of ``show --json``: the record's raw fields."""
    rendered: Any
    """``files[].rendered``: the handler's render_json, or None."""
    text: str | None
    """What the table appends to the file's name (render_text), or None."""
    note: str | None
    """Why show would present it raw; None when the handler renders it."""


def roundtrip(
    handler: object, record: msgspec.Struct, *, kind: str = "reg", path: str = "/roundtrip"
) -> RoundTrip:
    """Write ``record`` as the record of one file in a real image (``kind``, ``path``),
    read the image back, verified, and render the file with ``handler`` installed.

    The other files the record names by id (epoll targets: the links a reader checks,
    docs/image-format.md) are in the image too, as placeholders holding nothing, so that
    the image is whole."""
    loaded = load_handler(handler)
    if type(record) is not loaded.record_type:
        raise TypeError(f"{type(record).__name__} is not {loaded.name}'s record_type")
    header = Header(
        format_version=FORMAT_VERSION,
        asyckpt_version="test",
        kernel=platform.release(),
        machine=platform.machine(),
        hostname=socket.gethostname(),
        time="1970-01-01T00:00:00.000+00:00",
        root_pid=1,
        freezer="none",
        consistent=False,
        plugins=[loaded.info()],
    )
    if kind not in get_args(FileType):
        raise ValueError(f"{kind!r} is not a file type an image holds: {get_args(FileType)}")
    file = File(
        id=1,
        type=cast(FileType, kind),
        handler=loaded.name,
        flags=os.O_RDONLY,
        access="r",
        pos=0,
        mnt_id=0,
        dev=0,
        ino=0,
        path=path,
        data=msgspec.Raw(msgspec.msgpack.encode(record)),
    )
    linked = sorted(set(check_file("roundtrip", file, {})) - {1})
    placeholders = [
        File(
            id=i,
            type="anon",
            handler=None,
            flags=os.O_RDONLY,
            access="r",
            pos=0,
            mnt_id=0,
            dev=0,
            ino=0,
            path=f"roundtrip:[linked file {i}]",
        )
        for i in linked
    ]
    body = [
        FdTable(id=1, owner=1, count=1),
        file,
        *placeholders,
        Fd(fd=3, file=1, cloexec=False),
        Task(pid=1, ppid=0, comm="roundtrip", starttime=0, state="S", uid=0, gid=0, fd_table=1),
    ]
    with tempfile.TemporaryDirectory(prefix="asyckpt-roundtrip-") as tmp:
        writer = ImageWriter(Path(tmp) / "roundtrip.ackpt")
        try:
            writer.write_body(body)
            trailer = Trailer(tasks=1, fd_tables=1, fds=1, files=1 + len(placeholders), records=0)
            writer.finish(header, trailer)
        finally:
            writer.abort()
        image = read_image(writer.dest)
    back = image.files[1]
    view = Renderer(image, _plugins_for(loaded)).view(back)
    return RoundTrip(loaded.decode(back.data), view.data, view.rendered, view.text, view.note)


class CapturedFd(NamedTuple):
    """What a capture recorded for one fd (:func:`capture_fd`)."""

    file: File
    """The image's record of the open file; ``file.handler`` names the handler that
    captured it (None if none claimed it, or it failed: then ``file.error`` says why)."""
    record: msgspec.Struct | None
    """The handler's record, decoded with its record_type, if it captured the fd."""
    json: dict[str, Any]
    """The file as ``asyckpt show --json`` prints it, with the handler installed."""
    image: Image


def capture_fd(
    handler: object,
    pid: int,
    fd: int,
    *,
    freeze: str = "auto",
    builtins: bool = True,
    pipe_data: int = 0,
) -> CapturedFd:
    """Capture the process ``pid`` (and its descendants) with ``handler`` installed, as
    ``asyckpt tree`` does (``pipe_data`` as ``--pipe-data``), and return what the image
    holds for its fd ``fd``.

    Runs its own trio event loop, so call it from a plain (not async) test.
    """
    import trio

    from .._api import checkpoint_tree
    from .._capture import CaptureOptions

    loaded = load_handler(handler)
    dispatch = dispatch_with(loaded, builtins=builtins)
    with tempfile.TemporaryDirectory(prefix="asyckpt-capture-fd-") as tmp:
        dest = Path(tmp) / "capture.ackpt"
        options = CaptureOptions(freeze=freeze, pipe_data=pipe_data)
        trio.run(lambda: checkpoint_tree(pid, dest, options=options, dispatch=dispatch))
        image = read_image(dest)
    task = next(t for t in image.tasks if t.pid == pid)
    files = {fdrec.fd: f for fdrec, f in image.fds(task.fd_table)}
    if fd not in files:
        raise LookupError(f"pid {pid} has no fd {fd} in the image")
    file = files[fd]
    record = loaded.decode(file.data) if file.handler == loaded.name else None
    doc = to_json_doc(image, _plugins_for(loaded))
    json = next(f for f in doc["files"] if f["id"] == file.id)
    return CapturedFd(file, record, json, image)


def restore_fd(
    handler: object, captured: CapturedFd, *, root: str = "/", relaxed: bool = False
) -> int:
    """Call the handler's ``restore(record, ctx)`` hook on a captured fd (what
    :func:`capture_fd` returned) exactly as ``asyckpt restore`` does: with a context
    whose ``open`` resolves under ``root`` with restore's checks, the fd it returns
    checked and moved, what the context opened and the hook did not return closed.
    Returns the new fd (close-on-exec), which the caller closes; a refusal is a
    RestoreError naming pid, fd and kind."""
    from .._restore import make, open_root
    from .._restore_hooks import HookHandlers, hook_problem
    from .._restore_model import Description, Hook, RestorePlan
    from .._restore_rules import fd_kind

    if not isinstance(captured, CapturedFd):
        raise TypeError(f"restore_fd takes what capture_fd returned, not {captured!r}")
    loaded = load_handler(handler)
    problem = hook_problem(loaded)
    if problem is not None:
        raise PluginError(problem)
    file, image = captured.file, captured.image
    if file.handler != loaded.name:
        raise ValueError(f"file {file.id} was captured by {file.handler!r}, not {loaded.name!r}")
    task, fd = next(
        (t, d.fd)
        for t in image.tasks
        if t.fd_table is not None
        for d, f in image.fds(t.fd_table)
        if f.id == file.id
    )
    description = Description(
        file=file.id,
        kind=fd_kind(file),
        make=Hook(handler=loaded.name, file=file, task=task),
        setfl=None,
        pos=None,
        pid=task.pid,
        fd=fd,
    )
    plan = RestorePlan(
        pid=task.pid, inodes=[], pipes=[], pairs=[], descriptions=[description], fds=[], skipped=[]
    )
    root_fd = open_root(root)
    try:
        made = make(
            plan, root_fd=root_fd, relaxed=relaxed, hooks=HookHandlers({loaded.name: loaded})
        )
    finally:
        os.close(root_fd)
    return made.fds[0]
